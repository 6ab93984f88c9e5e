! fortran_api.f90 - the libcr API from Fortran through include/libcr.f90:
! cr_init(), a signal-context callback written in Fortran, and a checkpoint
! of the program itself (scope CR_SCOPE_PROC) written to ./context.fortran.
!
! The callback calls cr_checkpoint(CR_CHECKPOINT_READY) and records what it
! returned:
!   0  continuing after the checkpoint: prints
!        001 continue path: callback saw 0
!        PASS fortran_api
!   >0 running in a process restarted from context.fortran (cr_restart
!      context.fortran); the value is the restarter's pid: prints
!        002 restart path: callback saw restarter pid
!        PASS fortran_api restarted
! Anything wrong prints "FAIL fortran_api: ..." (stdout and stderr), exit 1.
!
! Build (from the repository root, LIBDIR = directory holding libcr.so;
! -J keeps the .mod files out of the source tree):
!   gfortran -O0 -o fortran_api include/libcr.f90 c-tests/fortran_api.f90 \
!       -L$LIBDIR -lcr -Wl,-rpath,$LIBDIR -J <builddir>
! Run in a writable directory: ./fortran_api; then: cr_restart context.fortran
module fortran_api_state
  use, intrinsic :: iso_c_binding
  use libcr
  implicit none

  ! Written by the callback (no I/O there: it may run in a signal handler).
  integer(c_int), target :: marker = 4242
  integer(c_int) :: cb_calls = 0
  integer(c_int) :: cb_saw = -999          ! what cr_checkpoint() returned
  integer(c_int) :: cb_status = -1         ! cr_status() inside the callback
  logical :: cb_arg_ok = .false.           ! the registered arg came back
  logical :: cb_info_ok = .false.          ! cr_get_checkpoint_info() /= NULL
  integer(c_int) :: cb_info_scope = -1
  integer(c_int) :: cb_info_requester = -1
  logical :: cb_rinfo_ok = .false.         ! cr_get_restart_info() /= NULL (restart)
  integer(c_int) :: cb_rinfo_requester = -1

contains

  function checkpoint_callback(arg) result(rc) bind(C)
    type(c_ptr), value :: arg
    integer(c_int) :: rc
    type(cr_checkpoint_info), pointer :: info
    type(cr_restart_info), pointer :: rinfo
    type(c_ptr) :: p

    cb_calls = cb_calls + 1
    cb_arg_ok = c_associated(arg, c_loc(marker))
    cb_status = cr_status()
    p = cr_get_checkpoint_info()
    if (c_associated(p)) then
      call c_f_pointer(p, info)
      cb_info_ok = .true.
      cb_info_scope = info%scope
      cb_info_requester = info%requester
    end if

    cb_saw = cr_checkpoint(CR_CHECKPOINT_READY)

    if (cb_saw > 0) then
      p = cr_get_restart_info()
      if (c_associated(p)) then
        call c_f_pointer(p, rinfo)
        cb_rinfo_ok = .true.
        cb_rinfo_requester = rinfo%requester
      end if
    end if
    rc = 0
  end function checkpoint_callback

  subroutine fail(what)
    character(len=*), intent(in) :: what
    write (6, '(a)') 'FAIL fortran_api: '//what
    flush (6)
    write (0, '(a)') 'FAIL fortran_api: '//what
    error stop 1
  end subroutine fail

  subroutine check(ok, what)
    logical, intent(in) :: ok
    character(len=*), intent(in) :: what
    if (.not. ok) call fail(what)
  end subroutine check

  function str(i) result(s)
    integer(c_int), intent(in) :: i
    character(len=:), allocatable :: s
    character(len=24) :: buf
    write (buf, '(i0)') i
    s = trim(buf)
  end function str

end module fortran_api_state

program fortran_api
  use, intrinsic :: iso_c_binding
  use libcr
  use fortran_api_state
  implicit none

  interface
    ! creat(path, mode) == open(path, O_WRONLY|O_CREAT|O_TRUNC, mode), not variadic
    function c_creat(path, mode) bind(C, name='creat')
      import :: c_char, c_int
      character(kind=c_char), dimension(*), intent(in) :: path
      integer(c_int), value :: mode
      integer(c_int) :: c_creat
    end function c_creat
    function c_close(fd) bind(C, name='close')
      import :: c_int
      integer(c_int), value :: fd
      integer(c_int) :: c_close
    end function c_close
    function c_getpid() bind(C, name='getpid')
      import :: c_int
      integer(c_int) :: c_getpid
    end function c_getpid
  end interface

  type(cr_checkpoint_args_t) :: args
  type(cr_restart_args_t) :: rargs
  integer(c_long) :: handle
  integer(c_int) :: id, cb_id, fd, rc, poll_rc, poll_errno

  ! The derived types match the C layouts.
  call check(c_sizeof(args) == 28_c_size_t, 'sizeof(cr_checkpoint_args_t) /= 28')
  call check(c_sizeof(rargs) == 24_c_size_t, 'sizeof(cr_restart_args_t) /= 24')
  call check(cr_checkpoint_temp_failure_code(5_c_int) == ior(1, ishft(5, 16)), 'TEMP_FAILURE_CODE')
  call check(cr_rstrt_relocate_size(2_c_int) == 40_c_size_t, 'cr_rstrt_relocate_size')

  id = cr_init()
  call check(id >= 0, 'cr_init() returned '//str(id))
  call check(cr_status() == CR_STATE_IDLE, 'cr_status() is not CR_STATE_IDLE before the request')
  rc = cr_checkpoint(CR_CHECKPOINT_READY)
  call check(rc == -CR_ENOTCB, 'cr_checkpoint() outside a callback returned '//str(rc))
  call check(cr_error_message(CR_ENOINIT) /= '', 'cr_strerror(CR_ENOINIT) is empty')

  rc = cr_initialize_restart_args(rargs)
  call check(rc == 0 .and. rargs%cr_flags == CR_RSTRT_RESTORE_PID .and. &
             .not. c_associated(rargs%cr_relocate), 'cr_initialize_restart_args defaults')

  cb_id = cr_register_callback(c_funloc(checkpoint_callback), c_loc(marker), CR_SIGNAL_CONTEXT)
  call check(cb_id >= 0, 'cr_register_callback returned '//str(cb_id)//', errno '//str(cr_errno()))
  call check(iand(cb_id, CR_SIGNAL_CONTEXT) /= 0, 'callback id lacks CR_SIGNAL_CONTEXT')

  fd = c_creat('context.fortran'//c_null_char, int(o'600', c_int))
  call check(fd >= 0, 'cannot create context.fortran, errno '//str(cr_errno()))

  rc = cr_initialize_checkpoint_args(args)
  call check(rc == 0, 'cr_initialize_checkpoint_args returned '//str(rc))
  call check(args%cr_version == CR_CHECKPOINT_ARGS_VERSION .and. args%cr_scope == -1 .and. &
             args%cr_target == 0 .and. args%cr_fd == -1 .and. args%cr_signal == 0 .and. &
             args%cr_timeout == 0 .and. args%cr_flags == 0, 'cr_initialize_checkpoint_args defaults')
  args%cr_scope = CR_SCOPE_PROC
  args%cr_target = 0
  args%cr_fd = fd

  ! Nothing may sit in the output buffer when the image is taken.
  flush (6)
  rc = cr_request_checkpoint(args, handle)
  call check(rc == 0, 'cr_request_checkpoint returned '//str(rc)//': '//cr_error_message(cr_errno()))
  poll_rc = cr_poll_checkpoint(handle, c_null_ptr)
  poll_errno = cr_errno()
  rc = c_close(fd)

  call check(cb_calls == 1, 'the callback ran '//str(cb_calls)//' times')
  call check(cb_arg_ok, 'the callback did not get its registered argument')
  call check(cb_status == CR_STATE_ACTIVE, 'cr_status() in the callback was '//str(cb_status))
  call check(cb_info_ok, 'cr_get_checkpoint_info() was NULL in the callback')
  call check(cb_info_scope == CR_SCOPE_PROC, 'checkpoint info scope '//str(cb_info_scope))

  if (cb_saw == 0) then
    call check(poll_rc > 0, 'cr_poll_checkpoint returned '//str(poll_rc)//': '// &
               cr_error_message(poll_errno))
    call check(cb_info_requester == c_getpid(), 'checkpoint info requester '// &
               str(cb_info_requester)//' is not this process')
    call check(cr_status() == CR_STATE_IDLE, 'cr_status() is not CR_STATE_IDLE afterwards')
    write (6, '(a)') '001 continue path: callback saw 0'
    write (6, '(a)') 'PASS fortran_api'
  else if (cb_saw > 0) then
    call check(cb_rinfo_ok, 'cr_get_restart_info() was NULL after the restart')
    call check(cb_rinfo_requester == cb_saw, 'restart info requester '//str(cb_rinfo_requester)// &
               ' differs from cr_checkpoint() result '//str(cb_saw))
    call check(poll_rc == CR_POLL_CHKPT_ERR_POST .and. poll_errno == CR_ERESTARTED, &
               'after the restart cr_poll_checkpoint returned '//str(poll_rc)//', errno '// &
               str(poll_errno)//' (want CR_POLL_CHKPT_ERR_POST, CR_ERESTARTED)')
    write (6, '(a)') '002 restart path: callback saw restarter pid'
    write (6, '(a)') 'PASS fortran_api restarted'
  else
    call fail('cr_checkpoint() in the callback returned '//str(cb_saw)//': '// &
              cr_error_message(-cb_saw))
  end if
  flush (6)
end program fortran_api
