! libcr.f90: Fortran 2003 bindings (ISO_C_BINDING) for libcr, the BLCR
! checkpoint/restart library (libcr-rs).  The C API is documented in libcr.h
! and blcr_common.h; this module mirrors it one to one:
!
!  * every constant of blcr_common.h / blcr_errcodes.h as a parameter, with the
!    C name (Fortran is case-insensitive; _CR_CHECKPOINT_STUB is
!    CR_CHECKPOINT_STUB, cr_format_vmadump is CR_FORMAT_VMADUMP);
!  * the interoperable derived types cr_checkpoint_args_t, cr_restart_args_t,
!    cr_checkpoint_info, cr_restart_info, cr_rstrt_relocate_pair and
!    cr_timeval (struct timeval);
!  * an interface for each of the 38 C functions, with C types mapped as
!      int, pid_t, cr_scope_t, unsigned, cr_*_id_t   -> integer(c_int)
!      cr_checkpoint_handle_t *, cr_restart_handle_t * -> integer(c_long), by reference
!      cr_spinlock_t *                              -> integer(c_int), by reference
!      args structure *                             -> the derived type, by reference
!      struct timeval *, char *, char **, void *    -> type(c_ptr), value (c_null_ptr = NULL)
!      cr_callback_t, cr_hook_fn_t                  -> type(c_funptr), value (c_funloc(f))
!      const char * result                          -> type(c_ptr) (see cr_f_string)
!  * the two C initializer macros as cr_initialize_checkpoint_args(a) and
!    cr_initialize_restart_args(a), and a few helpers: cr_errno(),
!    cr_error_message(e), cr_f_string(p), cr_checkpoint_temp_failure_code(v),
!    cr_checkpoint_perm_failure_code(v), cr_rstrt_relocate_size(n),
!    cr_is_hook_fn_error(f).
!
! A callback is a bind(C) function:
!     integer(c_int) function my_callback(arg) bind(C)
!       type(c_ptr), value :: arg
! registered with cr_register_callback(c_funloc(my_callback), arg, CR_SIGNAL_CONTEXT).
! Signal-context callbacks may run inside a signal handler: do no Fortran I/O
! there.  A hook is a bind(C) subroutine taking integer(c_int), value.
!
! Build: gfortran -c libcr.f90 (or compile it with the program), link -lcr.
module libcr
  use, intrinsic :: iso_c_binding
  implicit none

  ! ---------------------------------------------------------------- versions
  integer(c_int), parameter :: CR_RELEASE_MAJOR = 0
  integer(c_int), parameter :: CR_RELEASE_MINOR = 8
  character(len=*), parameter :: CR_RELEASE_PATCH = '6_b4'
  character(len=*), parameter :: CR_RELEASE_VERSION = '0.8.6_b4'
  integer(c_int), parameter :: LIBCR_MAJOR = 0
  integer(c_int), parameter :: LIBCR_MINOR = 5
  integer(c_int), parameter :: LIBCR_PATCH = 5
  character(len=*), parameter :: LIBCR_VERSION = '0.5.5'
  integer(c_int), parameter :: CR_MODULE_MAJOR = 0
  integer(c_int), parameter :: CR_MODULE_MINOR = 10
  integer(c_int), parameter :: CR_MODULE_PATCH = 3
  character(len=*), parameter :: CR_MODULE_VERSION = '0.10.3'
  integer(c_int), parameter :: CR_CHECKPOINT_ARGS_VERSION = 1
  integer(c_int), parameter :: CR_RESTART_ARGS_VERSION = 1

  ! ---------------------------------------------------------------- misc.
  integer(c_int), parameter :: CR_SIGNUM = 64
  integer(c_int), parameter :: CR_MAX_CALLBACKS = int(z'1FFFFFF', c_int)
  integer(c_int), parameter :: CR_ID_CALLBACK = -1
  integer(c_int), parameter :: CR_SPINLOCK_INITIALIZER = 0
  integer(c_int), parameter :: CR_DEST_CWD = -4096
  character(len=*), parameter :: CR_CTRL_FILE = '/proc/checkpoint/ctrl'
  integer(c_int), parameter :: CR_MAX_RSTRT_RELOC = 16
  integer(c_int), parameter :: CR_SIGNAL_CONTEXT = int(z'2000000', c_int)
  integer(c_int), parameter :: CR_THREAD_CONTEXT = int(z'4000000', c_int)

  ! cr_poll_*_msg() / cr_poll_*() error returns
  integer(c_int), parameter :: CR_POLL_CHKPT_ERR_PRE = -1
  integer(c_int), parameter :: CR_POLL_CHKPT_ERR_POST = -2
  integer(c_int), parameter :: CR_POLL_CHKPT_ERR_LOG = -3
  integer(c_int), parameter :: CR_POLL_RSTRT_ERR_PRE = -1
  integer(c_int), parameter :: CR_POLL_RSTRT_ERR_POST = -2
  integer(c_int), parameter :: CR_POLL_RSTRT_ERR_LOG = -3

  ! ---------------------------------------------------------------- error codes (errno values)
  integer(c_int), parameter :: CR_MIN_ERRCODE = 2353
  integer(c_int), parameter :: CR_ETEMPFAIL = 2354
  integer(c_int), parameter :: CR_EPERMFAIL = 2355
  integer(c_int), parameter :: CR_ENOSUPPORT = 2356
  integer(c_int), parameter :: CR_EVERSION = 2357
  integer(c_int), parameter :: CR_EOMITTED = 2358
  integer(c_int), parameter :: CR_EBADARCH = 2359
  integer(c_int), parameter :: CR_EPTRACED = 2360
  integer(c_int), parameter :: CR_EPTRACER = 2361
  integer(c_int), parameter :: CR_ERSTRTABRT = 2362
  integer(c_int), parameter :: CR_ERESTARTED = 2363
  integer(c_int), parameter :: CR_ENOTCB = 2364
  integer(c_int), parameter :: CR_ENOINIT = 2365
  integer(c_int), parameter :: CR_MAX_ERRCODE = 2366

  ! ---------------------------------------------------------------- enums and flags
  ! cr_scope_t
  integer(c_int), parameter :: CR_SCOPE_PROC = 0
  integer(c_int), parameter :: CR_SCOPE_PGRP = 1
  integer(c_int), parameter :: CR_SCOPE_SESS = 2
  integer(c_int), parameter :: CR_SCOPE_TREE = 3
  ! cr_format_t
  integer(c_int), parameter :: CR_FORMAT_VMADUMP = 0

  ! cr_checkpoint() flags
  integer(c_int), parameter :: CR_CHECKPOINT_READY = 0
  integer(c_int), parameter :: CR_CHECKPOINT_TEMP_FAILURE = 1
  integer(c_int), parameter :: CR_CHECKPOINT_PERM_FAILURE = 2
  integer(c_int), parameter :: CR_CHECKPOINT_OMIT = 4
  integer(c_int), parameter :: CR_CHECKPOINT_STUB = int(z'4000', c_int) ! C: _CR_CHECKPOINT_STUB (internal)
  integer(c_int), parameter :: CR_CHECKPOINT_ABORT_MASK = 7

  ! cr_checkpoint_args_t%cr_flags
  integer(c_int), parameter :: CR_CHKPT_PROHIBIT_SELF = int(z'1', c_int)
  integer(c_int), parameter :: CR_CHKPT_PTRACED_ALLOW = int(z'2', c_int)
  integer(c_int), parameter :: CR_CHKPT_PTRACED_SKIP = int(z'4', c_int)
  integer(c_int), parameter :: CR_CHKPT_PTRACER_SKIP = int(z'8', c_int)
  integer(c_int), parameter :: CR_CHKPT_ASYNC_ERR = int(z'10', c_int)
  integer(c_int), parameter :: CR_CHKPT_DUMP_EXEC = int(z'200', c_int)
  integer(c_int), parameter :: CR_CHKPT_DUMP_PRIVATE = int(z'400', c_int)
  integer(c_int), parameter :: CR_CHKPT_DUMP_SHARED = int(z'800', c_int)
  integer(c_int), parameter :: CR_CHKPT_DUMP_ALL = int(z'E00', c_int)

  ! cr_restart_args_t%cr_flags
  integer(c_int), parameter :: CR_RSTRT_ASYNC_ERR = int(z'1', c_int)
  integer(c_int), parameter :: CR_RSTRT_RESTORE_PID = int(z'2', c_int)
  integer(c_int), parameter :: CR_RSTRT_RESTORE_PGID = int(z'4', c_int)
  integer(c_int), parameter :: CR_RSTRT_RESTORE_SID = int(z'8', c_int)

  ! cr_status()
  integer(c_int), parameter :: CR_STATE_IDLE = 0
  integer(c_int), parameter :: CR_STATE_PENDING = 1
  integer(c_int), parameter :: CR_STATE_ACTIVE = 2

  ! cr_hold_ctrl() flags and scopes
  integer(c_int), parameter :: CR_HOLD_READ = -1
  integer(c_int), parameter :: CR_HOLD_NONE = 0
  integer(c_int), parameter :: CR_HOLD_CONT = 1
  integer(c_int), parameter :: CR_HOLD_RSTRT = 2
  integer(c_int), parameter :: CR_HOLD_BOTH = 3
  integer(c_int), parameter :: CR_HOLD_DFLT = 4
  integer(c_int), parameter :: CR_HOLD_SCOPE_THREAD = 0
  integer(c_int), parameter :: CR_HOLD_SCOPE_INIT = 1
  integer(c_int), parameter :: CR_HOLD_SCOPE_UNINIT = 2

  ! cr_hook_event_t
  integer(c_int), parameter :: CR_HOOK_CONT_SIGNAL_CONTEXT = 0
  integer(c_int), parameter :: CR_HOOK_CONT_THREAD_CONTEXT = 1
  integer(c_int), parameter :: CR_HOOK_CONT_NO_CALLBACKS = 2
  integer(c_int), parameter :: CR_HOOK_RSTRT_SIGNAL_CONTEXT = 3
  integer(c_int), parameter :: CR_HOOK_RSTRT_THREAD_CONTEXT = 4
  integer(c_int), parameter :: CR_HOOK_RSTRT_NO_CALLBACKS = 5
  integer(c_int), parameter :: CR_NUM_HOOKS = 6

  ! ---------------------------------------------------------------- types
  ! cr_checkpoint_args_t (28 bytes); initialise with cr_initialize_checkpoint_args
  type, bind(C) :: cr_checkpoint_args_t
    integer(c_int) :: cr_version  ! CR_CHECKPOINT_ARGS_VERSION
    integer(c_int) :: cr_scope    ! CR_SCOPE_* (initializer: -1, must be set)
    integer(c_int) :: cr_target   ! pid, pgid or sid; 0 = self
    integer(c_int) :: cr_fd       ! destination fd (initializer: -1, must be set)
    integer(c_int) :: cr_signal   ! signal sent after the checkpoint; 0 = none
    integer(c_int) :: cr_timeout  ! seconds (unsigned); 0 = unbounded
    integer(c_int) :: cr_flags    ! CR_CHKPT_* (unsigned)
  end type cr_checkpoint_args_t

  ! cr_restart_args_t (24 bytes); initialise with cr_initialize_restart_args
  type, bind(C) :: cr_restart_args_t
    integer(c_int) :: cr_version  ! CR_RESTART_ARGS_VERSION
    integer(c_int) :: cr_fd       ! source fd
    integer(c_int) :: cr_signal   ! signal sent after the restart; 0 = none
    integer(c_int) :: cr_flags    ! CR_RSTRT_* (unsigned)
    type(c_ptr) :: cr_relocate    ! struct cr_rstrt_relocate *, or c_null_ptr
  end type cr_restart_args_t

  ! struct cr_checkpoint_info (32 bytes): c_f_pointer(cr_get_checkpoint_info(), info)
  type, bind(C) :: cr_checkpoint_info
    integer(c_int) :: signal
    type(c_ptr) :: dest           ! const char *: cr_f_string(info%dest)
    integer(c_int) :: requester
    integer(c_int) :: target
    integer(c_int) :: scope
  end type cr_checkpoint_info

  ! struct cr_restart_info (16 bytes): c_f_pointer(cr_get_restart_info(), info)
  type, bind(C) :: cr_restart_info
    integer(c_int) :: requester    ! pid of the restarter
    type(c_ptr) :: src             ! const char *
  end type cr_restart_info

  ! struct cr_rstrt_relocate_pair (16 bytes); struct cr_rstrt_relocate is an
  ! unsigned count followed (at byte 8) by count pairs: allocate
  ! cr_rstrt_relocate_size(n) bytes on the C side.
  type, bind(C) :: cr_rstrt_relocate_pair
    type(c_ptr) :: oldpath
    type(c_ptr) :: newpath
  end type cr_rstrt_relocate_pair

  ! struct timeval, for the timeouts of cr_wait_*/cr_poll_* (pass c_loc(tv))
  type, bind(C) :: cr_timeval
    integer(c_long) :: tv_sec
    integer(c_long) :: tv_usec
  end type cr_timeval

  ! ---------------------------------------------------------------- the 38 functions
  interface
    ! cr_client_id_t cr_init(void)
    function cr_init() bind(C, name='cr_init')
      import :: c_int
      integer(c_int) :: cr_init
    end function cr_init

    ! int cri_init_checkpoint_args_t(cr_version_t, cr_checkpoint_args_t *)
    function cri_init_checkpoint_args_t(version, args) bind(C, name='cri_init_checkpoint_args_t')
      import :: c_int, cr_checkpoint_args_t
      integer(c_int), value :: version
      type(cr_checkpoint_args_t), intent(inout) :: args
      integer(c_int) :: cri_init_checkpoint_args_t
    end function cri_init_checkpoint_args_t

    ! int cr_request_checkpoint(cr_checkpoint_args_t *, cr_checkpoint_handle_t *)
    function cr_request_checkpoint(args, handle) bind(C, name='cr_request_checkpoint')
      import :: c_int, c_long, cr_checkpoint_args_t
      type(cr_checkpoint_args_t), intent(in) :: args
      integer(c_long), intent(out) :: handle
      integer(c_int) :: cr_request_checkpoint
    end function cr_request_checkpoint

    ! int cr_forward_checkpoint(cr_scope_t, pid_t)
    function cr_forward_checkpoint(scope, target) bind(C, name='cr_forward_checkpoint')
      import :: c_int
      integer(c_int), value :: scope
      integer(c_int), value :: target
      integer(c_int) :: cr_forward_checkpoint
    end function cr_forward_checkpoint

    ! int cr_wait_checkpoint(cr_checkpoint_handle_t *, struct timeval *)
    function cr_wait_checkpoint(handle, timeout) bind(C, name='cr_wait_checkpoint')
      import :: c_int, c_long, c_ptr
      integer(c_long), intent(inout) :: handle
      type(c_ptr), value :: timeout
      integer(c_int) :: cr_wait_checkpoint
    end function cr_wait_checkpoint

    ! int cr_log_checkpoint(cr_checkpoint_handle_t *, unsigned int len, char *msg)
    function cr_log_checkpoint(handle, len, msg) bind(C, name='cr_log_checkpoint')
      import :: c_int, c_long, c_ptr
      integer(c_long), intent(inout) :: handle
      integer(c_int), value :: len
      type(c_ptr), value :: msg
      integer(c_int) :: cr_log_checkpoint
    end function cr_log_checkpoint

    ! int cr_reap_checkpoint(cr_checkpoint_handle_t *)
    function cr_reap_checkpoint(handle) bind(C, name='cr_reap_checkpoint')
      import :: c_int, c_long
      integer(c_long), intent(inout) :: handle
      integer(c_int) :: cr_reap_checkpoint
    end function cr_reap_checkpoint

    ! int cr_poll_checkpoint_msg(cr_checkpoint_handle_t *, struct timeval *, char **msg_p)
    function cr_poll_checkpoint_msg(handle, timeout, msg_p) bind(C, name='cr_poll_checkpoint_msg')
      import :: c_int, c_long, c_ptr
      integer(c_long), intent(inout) :: handle
      type(c_ptr), value :: timeout
      type(c_ptr), value :: msg_p
      integer(c_int) :: cr_poll_checkpoint_msg
    end function cr_poll_checkpoint_msg

    ! int cr_poll_checkpoint(cr_checkpoint_handle_t *, struct timeval *)
    function cr_poll_checkpoint(handle, timeout) bind(C, name='cr_poll_checkpoint')
      import :: c_int, c_long, c_ptr
      integer(c_long), intent(inout) :: handle
      type(c_ptr), value :: timeout
      integer(c_int) :: cr_poll_checkpoint
    end function cr_poll_checkpoint

    ! int cri_init_restart_args_t(cr_version_t, cr_restart_args_t *)
    function cri_init_restart_args_t(version, args) bind(C, name='cri_init_restart_args_t')
      import :: c_int, cr_restart_args_t
      integer(c_int), value :: version
      type(cr_restart_args_t), intent(inout) :: args
      integer(c_int) :: cri_init_restart_args_t
    end function cri_init_restart_args_t

    ! int cr_request_restart(cr_restart_args_t *, cr_restart_handle_t *)
    function cr_request_restart(args, handle) bind(C, name='cr_request_restart')
      import :: c_int, c_long, cr_restart_args_t
      type(cr_restart_args_t), intent(in) :: args
      integer(c_long), intent(out) :: handle
      integer(c_int) :: cr_request_restart
    end function cr_request_restart

    ! int cr_wait_restart(cr_restart_handle_t *, struct timeval *)
    function cr_wait_restart(handle, timeout) bind(C, name='cr_wait_restart')
      import :: c_int, c_long, c_ptr
      integer(c_long), intent(inout) :: handle
      type(c_ptr), value :: timeout
      integer(c_int) :: cr_wait_restart
    end function cr_wait_restart

    ! int cr_log_restart(cr_restart_handle_t *, unsigned int len, char *msg)
    function cr_log_restart(handle, len, msg) bind(C, name='cr_log_restart')
      import :: c_int, c_long, c_ptr
      integer(c_long), intent(inout) :: handle
      integer(c_int), value :: len
      type(c_ptr), value :: msg
      integer(c_int) :: cr_log_restart
    end function cr_log_restart

    ! int cr_reap_restart(cr_restart_handle_t *)
    function cr_reap_restart(handle) bind(C, name='cr_reap_restart')
      import :: c_int, c_long
      integer(c_long), intent(inout) :: handle
      integer(c_int) :: cr_reap_restart
    end function cr_reap_restart

    ! int cr_poll_restart_msg(cr_restart_handle_t *, struct timeval *, char **msg_p)
    function cr_poll_restart_msg(handle, timeout, msg_p) bind(C, name='cr_poll_restart_msg')
      import :: c_int, c_long, c_ptr
      integer(c_long), intent(inout) :: handle
      type(c_ptr), value :: timeout
      type(c_ptr), value :: msg_p
      integer(c_int) :: cr_poll_restart_msg
    end function cr_poll_restart_msg

    ! int cr_poll_restart(cr_restart_handle_t *, struct timeval *)
    function cr_poll_restart(handle, timeout) bind(C, name='cr_poll_restart')
      import :: c_int, c_long, c_ptr
      integer(c_long), intent(inout) :: handle
      type(c_ptr), value :: timeout
      integer(c_int) :: cr_poll_restart
    end function cr_poll_restart

    ! cr_callback_id_t cr_register_callback(cr_callback_t, void *arg, int flags)
    function cr_register_callback(func, arg, flags) bind(C, name='cr_register_callback')
      import :: c_int, c_ptr, c_funptr
      type(c_funptr), value :: func
      type(c_ptr), value :: arg
      integer(c_int), value :: flags
      integer(c_int) :: cr_register_callback
    end function cr_register_callback

    ! int cr_replace_callback(cr_callback_id_t, cr_callback_t, void *arg, int flags)
    function cr_replace_callback(id, func, arg, flags) bind(C, name='cr_replace_callback')
      import :: c_int, c_ptr, c_funptr
      integer(c_int), value :: id
      type(c_funptr), value :: func
      type(c_ptr), value :: arg
      integer(c_int), value :: flags
      integer(c_int) :: cr_replace_callback
    end function cr_replace_callback

    ! int cr_replace_self(cr_callback_t, void *arg, int flags)
    function cr_replace_self(func, arg, flags) bind(C, name='cr_replace_self')
      import :: c_int, c_ptr, c_funptr
      type(c_funptr), value :: func
      type(c_ptr), value :: arg
      integer(c_int), value :: flags
      integer(c_int) :: cr_replace_self
    end function cr_replace_self

    ! int cr_enter_cs(cr_client_id_t)
    function cr_enter_cs(id) bind(C, name='cr_enter_cs')
      import :: c_int
      integer(c_int), value :: id
      integer(c_int) :: cr_enter_cs
    end function cr_enter_cs

    ! int cr_tryenter_cs(cr_client_id_t)
    function cr_tryenter_cs(id) bind(C, name='cr_tryenter_cs')
      import :: c_int
      integer(c_int), value :: id
      integer(c_int) :: cr_tryenter_cs
    end function cr_tryenter_cs

    ! int cr_leave_cs(cr_client_id_t)
    function cr_leave_cs(id) bind(C, name='cr_leave_cs')
      import :: c_int
      integer(c_int), value :: id
      integer(c_int) :: cr_leave_cs
    end function cr_leave_cs

    ! int cr_status(void)
    function cr_status() bind(C, name='cr_status')
      import :: c_int
      integer(c_int) :: cr_status
    end function cr_status

    ! int cr_checkpoint(int flags)
    function cr_checkpoint(flags) bind(C, name='cr_checkpoint')
      import :: c_int
      integer(c_int), value :: flags
      integer(c_int) :: cr_checkpoint
    end function cr_checkpoint

    ! const struct cr_checkpoint_info *cr_get_checkpoint_info(void)
    function cr_get_checkpoint_info() bind(C, name='cr_get_checkpoint_info')
      import :: c_ptr
      type(c_ptr) :: cr_get_checkpoint_info
    end function cr_get_checkpoint_info

    ! const struct cr_restart_info *cr_get_restart_info(void)
    function cr_get_restart_info() bind(C, name='cr_get_restart_info')
      import :: c_ptr
      type(c_ptr) :: cr_get_restart_info
    end function cr_get_restart_info

    ! void cr_spinlock_init(cr_spinlock_t *)
    subroutine cr_spinlock_init(lock) bind(C, name='cr_spinlock_init')
      import :: c_int
      integer(c_int), intent(inout) :: lock
    end subroutine cr_spinlock_init

    ! void cr_spinlock_lock(cr_spinlock_t *)
    subroutine cr_spinlock_lock(lock) bind(C, name='cr_spinlock_lock')
      import :: c_int
      integer(c_int), intent(inout) :: lock
    end subroutine cr_spinlock_lock

    ! void cr_spinlock_unlock(cr_spinlock_t *)
    subroutine cr_spinlock_unlock(lock) bind(C, name='cr_spinlock_unlock')
      import :: c_int
      integer(c_int), intent(inout) :: lock
    end subroutine cr_spinlock_unlock

    ! int cr_spinlock_trylock(cr_spinlock_t *)
    function cr_spinlock_trylock(lock) bind(C, name='cr_spinlock_trylock')
      import :: c_int
      integer(c_int), intent(inout) :: lock
      integer(c_int) :: cr_spinlock_trylock
    end function cr_spinlock_trylock

    ! const char *cr_strerror(int)   (see also cr_error_message)
    function cr_strerror(errnum) bind(C, name='cr_strerror')
      import :: c_int, c_ptr
      integer(c_int), value :: errnum
      type(c_ptr) :: cr_strerror
    end function cr_strerror

    ! cr_hook_fn_t cr_register_hook(cr_hook_event_t, cr_hook_fn_t)
    function cr_register_hook(event, hook_fn) bind(C, name='cr_register_hook')
      import :: c_int, c_funptr
      integer(c_int), value :: event
      type(c_funptr), value :: hook_fn
      type(c_funptr) :: cr_register_hook
    end function cr_register_hook

    ! int cr_hold_ctrl(int scope, int flags)
    function cr_hold_ctrl(scope, flags) bind(C, name='cr_hold_ctrl')
      import :: c_int
      integer(c_int), value :: scope
      integer(c_int), value :: flags
      integer(c_int) :: cr_hold_ctrl
    end function cr_hold_ctrl

    ! int cr_inc_persist(void)
    function cr_inc_persist() bind(C, name='cr_inc_persist')
      import :: c_int
      integer(c_int) :: cr_inc_persist
    end function cr_inc_persist

    ! int cr_dec_persist(void)
    function cr_dec_persist() bind(C, name='cr_dec_persist')
      import :: c_int
      integer(c_int) :: cr_dec_persist
    end function cr_dec_persist

    ! void cr_request(void)                      (deprecated)
    subroutine cr_request() bind(C, name='cr_request')
    end subroutine cr_request

    ! void cr_request_file(const char *filename) (deprecated; pass 'name'//c_null_char)
    subroutine cr_request_file(filename) bind(C, name='cr_request_file')
      import :: c_char
      character(kind=c_char), dimension(*), intent(in) :: filename
    end subroutine cr_request_file

    ! void cr_request_fd(int fd)                  (deprecated)
    subroutine cr_request_fd(fd) bind(C, name='cr_request_fd')
      import :: c_int
      integer(c_int), value :: fd
    end subroutine cr_request_fd

  end interface

contains

  ! C macro cr_initialize_checkpoint_args_t(&args): defaults of version 1.
  function cr_initialize_checkpoint_args(args) result(rc)
    type(cr_checkpoint_args_t), intent(inout) :: args
    integer(c_int) :: rc
    rc = cri_init_checkpoint_args_t(CR_CHECKPOINT_ARGS_VERSION, args)
  end function cr_initialize_checkpoint_args

  ! C macro cr_initialize_restart_args_t(&args): defaults of version 1.
  function cr_initialize_restart_args(args) result(rc)
    type(cr_restart_args_t), intent(inout) :: args
    integer(c_int) :: rc
    rc = cri_init_restart_args_t(CR_RESTART_ARGS_VERSION, args)
  end function cr_initialize_restart_args

  ! C macro CR_CHECKPOINT_TEMP_FAILURE_CODE(v): flag for cr_checkpoint().
  elemental function cr_checkpoint_temp_failure_code(v) result(flags)
    integer(c_int), intent(in) :: v
    integer(c_int) :: flags
    flags = ior(CR_CHECKPOINT_TEMP_FAILURE, ishft(v, 16))
  end function cr_checkpoint_temp_failure_code

  ! C macro CR_CHECKPOINT_PERM_FAILURE_CODE(v): flag for cr_checkpoint().
  elemental function cr_checkpoint_perm_failure_code(v) result(flags)
    integer(c_int), intent(in) :: v
    integer(c_int) :: flags
    flags = ior(CR_CHECKPOINT_PERM_FAILURE, ishft(v, 16))
  end function cr_checkpoint_perm_failure_code

  ! C macro CR_RSTRT_RELOCATE_SIZE(n): bytes of a relocation list of n pairs.
  elemental function cr_rstrt_relocate_size(n) result(bytes)
    integer(c_int), intent(in) :: n
    integer(c_size_t) :: bytes
    bytes = 8_c_size_t + 16_c_size_t * int(n, c_size_t)
  end function cr_rstrt_relocate_size

  ! True if a cr_register_hook() result is CR_HOOK_FN_ERROR ((cr_hook_fn_t)~0UL).
  function cr_is_hook_fn_error(fn) result(is_error)
    type(c_funptr), intent(in) :: fn
    logical :: is_error
    is_error = transfer(fn, 0_c_intptr_t) == -1_c_intptr_t
  end function cr_is_hook_fn_error

  ! The calling thread's errno (after a libcr call returned an error).
  function cr_errno() result(e)
    integer(c_int) :: e
    integer(c_int), pointer :: p
    interface
      function c_errno_location() bind(C, name='__errno_location')
        import :: c_ptr
        type(c_ptr) :: c_errno_location
      end function c_errno_location
    end interface
    call c_f_pointer(c_errno_location(), p)
    e = p
  end function cr_errno

  ! A NUL-terminated C string as a Fortran string ('' for a NULL pointer).
  function cr_f_string(p) result(s)
    type(c_ptr), intent(in) :: p
    character(len=:), allocatable :: s
    character(kind=c_char), pointer :: chars(:)
    integer :: i, n
    interface
      function c_strlen(str) bind(C, name='strlen')
        import :: c_ptr, c_size_t
        type(c_ptr), value :: str
        integer(c_size_t) :: c_strlen
      end function c_strlen
    end interface
    if (.not. c_associated(p)) then
      s = ''
      return
    end if
    n = int(c_strlen(p))
    call c_f_pointer(p, chars, [n])
    allocate (character(len=n) :: s)
    do i = 1, n
      s(i:i) = chars(i)
    end do
  end function cr_f_string

  ! cr_strerror(errnum) as a Fortran string.
  function cr_error_message(errnum) result(s)
    integer(c_int), intent(in) :: errnum
    character(len=:), allocatable :: s
    s = cr_f_string(cr_strerror(errnum))
  end function cr_error_message

end module libcr
