//! The exported C functions of `libcr.h` (cbindgen reads this file). Each is a thin, guarded
//! call into the module that implements it: no panic crosses the C boundary.

use super::types::{
    cr_callback_id_t, cr_callback_t, cr_checkpoint_args_t, cr_checkpoint_handle_t,
    cr_checkpoint_info, cr_client_id_t, cr_hook_event_t, cr_hook_fn_t, cr_restart_args_t,
    cr_restart_handle_t, cr_restart_info, cr_scope_t, cr_spinlock_t, cr_version_t,
};
use super::{callbacks, cs, errors, guard, info, misc, requests, result, state, types};
use libc::{c_char, c_int, c_uint, c_void, pid_t, timeval};

/// Initialises libcr in the calling thread (and the process, once); returns a client id
/// (0, 1, 2, … per thread) or -1 with errno set.
#[no_mangle]
pub extern "C" fn cr_init() -> cr_client_id_t {
    guard(-1, super::init_thread)
}

/// Backs `cr_initialize_checkpoint_args_t(p)`: fills `*args` with the defaults of `version`.
#[no_mangle]
pub extern "C" fn cri_init_checkpoint_args_t(
    version: cr_version_t,
    args: *mut cr_checkpoint_args_t,
) -> c_int {
    guard(-1, || {
        if version != types::CR_CHECKPOINT_ARGS_VERSION || args.is_null() {
            return state::fail(libc::EINVAL);
        }
        // SAFETY: non-null pointer to the caller's struct.
        unsafe {
            *args = cr_checkpoint_args_t {
                cr_version: version,
                cr_scope: -1,
                cr_target: 0,
                cr_fd: -1,
                cr_signal: 0,
                cr_timeout: 0,
                cr_flags: 0,
            }
        };
        0
    })
}

/// Starts a checkpoint of `args->cr_target` in `args->cr_scope`, written to `args->cr_fd`.
#[no_mangle]
pub extern "C" fn cr_request_checkpoint(
    args: *mut cr_checkpoint_args_t,
    handle: *mut cr_checkpoint_handle_t,
) -> c_int {
    guard(-1, || {
        result(requests::request_checkpoint(args, handle).map(|_| 0))
    })
}

/// From a callback: adds more processes to the request in progress (see `agent::forward`).
#[no_mangle]
pub extern "C" fn cr_forward_checkpoint(scope: cr_scope_t, target: pid_t) -> c_int {
    guard(-1, || result(super::forward(scope, target)))
}

/// Waits until the request is done: >0 done, 0 timeout, <0 error.
#[no_mangle]
pub extern "C" fn cr_wait_checkpoint(
    handle: *mut cr_checkpoint_handle_t,
    timeout: *mut timeval,
) -> c_int {
    guard(-1, || result(requests::wait(handle, timeout)))
}

/// Copies up to `len` bytes of the request's messages; returns the size needed (0 = none).
#[no_mangle]
pub extern "C" fn cr_log_checkpoint(
    handle: *mut cr_checkpoint_handle_t,
    len: c_uint,
    msg: *mut c_char,
) -> c_int {
    guard(-1, || result(requests::log(handle, len, msg)))
}

/// Collects the result and frees the handle: >0 success, -1 with errno otherwise.
#[no_mangle]
pub extern "C" fn cr_reap_checkpoint(handle: *mut cr_checkpoint_handle_t) -> c_int {
    guard(-1, || result(requests::reap_checkpoint(handle)))
}

/// Wait + log (malloc'd, caller frees) + reap.
#[no_mangle]
pub extern "C" fn cr_poll_checkpoint_msg(
    handle: *mut cr_checkpoint_handle_t,
    timeout: *mut timeval,
    msg_p: *mut *mut c_char,
) -> c_int {
    guard(-1, || requests::poll(handle, timeout, msg_p, false))
}

/// `cr_poll_checkpoint_msg(handle, timeout, NULL)`.
#[no_mangle]
pub extern "C" fn cr_poll_checkpoint(
    handle: *mut cr_checkpoint_handle_t,
    timeout: *mut timeval,
) -> c_int {
    guard(-1, || {
        requests::poll(handle, timeout, core::ptr::null_mut(), false)
    })
}

/// Backs `cr_initialize_restart_args_t(p)`.
#[no_mangle]
pub extern "C" fn cri_init_restart_args_t(
    version: cr_version_t,
    args: *mut cr_restart_args_t,
) -> c_int {
    guard(-1, || {
        if version != types::CR_RESTART_ARGS_VERSION || args.is_null() {
            return state::fail(libc::EINVAL);
        }
        // SAFETY: non-null pointer to the caller's struct.
        unsafe {
            *args = cr_restart_args_t {
                cr_version: version,
                cr_fd: -1,
                cr_signal: 0,
                cr_flags: types::CR_RSTRT_RESTORE_PID,
                cr_relocate: core::ptr::null(),
            }
        };
        0
    })
}

/// Starts a restart from `args->cr_fd`; the restored process is a child of the caller.
/// `CR_RSTRT_RESTORE_PGID`/`CR_RSTRT_RESTORE_SID` work with or without `CR_RSTRT_RESTORE_PID`;
/// ids in use give `EBUSY` (an exiting process or a zombie holding one is waited for up to 5 s).
#[no_mangle]
pub extern "C" fn cr_request_restart(
    args: *mut cr_restart_args_t,
    handle: *mut cr_restart_handle_t,
) -> c_int {
    guard(-1, || {
        result(requests::request_restart(args, handle).map(|_| 0))
    })
}

/// As `cr_wait_checkpoint`, for a restart.
#[no_mangle]
pub extern "C" fn cr_wait_restart(
    handle: *mut cr_restart_handle_t,
    timeout: *mut timeval,
) -> c_int {
    guard(-1, || result(requests::wait(handle, timeout)))
}

/// As `cr_log_checkpoint`, for a restart.
#[no_mangle]
pub extern "C" fn cr_log_restart(
    handle: *mut cr_restart_handle_t,
    len: c_uint,
    msg: *mut c_char,
) -> c_int {
    guard(-1, || result(requests::log(handle, len, msg)))
}

/// Collects a restart: the pid of the restored process, or -1 with errno.
#[no_mangle]
pub extern "C" fn cr_reap_restart(handle: *mut cr_restart_handle_t) -> c_int {
    guard(-1, || result(requests::reap_restart(handle)))
}

/// Wait + log + reap for a restart; returns the restored pid on success.
#[no_mangle]
pub extern "C" fn cr_poll_restart_msg(
    handle: *mut cr_restart_handle_t,
    timeout: *mut timeval,
    msg_p: *mut *mut c_char,
) -> c_int {
    guard(-1, || requests::poll(handle, timeout, msg_p, true))
}

/// `cr_poll_restart_msg(handle, timeout, NULL)`.
#[no_mangle]
pub extern "C" fn cr_poll_restart(
    handle: *mut cr_restart_handle_t,
    timeout: *mut timeval,
) -> c_int {
    guard(-1, || {
        requests::poll(handle, timeout, core::ptr::null_mut(), true)
    })
}

/// Registers a callback; `flags` holds exactly one of `CR_SIGNAL_CONTEXT` / `CR_THREAD_CONTEXT`.
#[no_mangle]
pub extern "C" fn cr_register_callback(
    func: cr_callback_t,
    arg: *mut c_void,
    flags: c_int,
) -> cr_callback_id_t {
    guard(-1, || result(callbacks::register(func, arg, flags)))
}

/// Replaces callback `id` in place (NULL `func` disables it).
#[no_mangle]
pub extern "C" fn cr_replace_callback(
    id: cr_callback_id_t,
    func: cr_callback_t,
    arg: *mut c_void,
    flags: c_int,
) -> c_int {
    guard(-1, || {
        result(callbacks::replace(id, func, arg, flags).map(|_| 0))
    })
}

/// From inside a callback: replaces the running callback.
#[no_mangle]
pub extern "C" fn cr_replace_self(func: cr_callback_t, arg: *mut c_void, flags: c_int) -> c_int {
    guard(-1, || {
        result(callbacks::replace_self(func, arg, flags).map(|_| 0))
    })
}

/// Enters a critical section: checkpoints wait until it is left.
#[no_mangle]
pub extern "C" fn cr_enter_cs(id: cr_client_id_t) -> c_int {
    let _ = id;
    guard(-1, || result(cs::enter(false)))
}

/// Non-blocking `cr_enter_cs`: 0 entered, 1 would block, -1 error.
#[no_mangle]
pub extern "C" fn cr_tryenter_cs(id: cr_client_id_t) -> c_int {
    let _ = id;
    guard(-1, || result(cs::enter(true)))
}

/// Leaves a critical section; a pending checkpoint runs before the last one returns.
#[no_mangle]
pub extern "C" fn cr_leave_cs(id: cr_client_id_t) -> c_int {
    let _ = id;
    guard(-1, || result(cs::leave()))
}

/// `CR_STATE_ACTIVE` in a callback, `CR_STATE_PENDING` while a checkpoint waits, else idle.
#[no_mangle]
pub extern "C" fn cr_status() -> c_int {
    guard(-1, || result(cs::status()))
}

/// From a callback: 0 = continuing, >0 = restarted (the restarter's pid), <0 = -errno.
#[no_mangle]
pub extern "C" fn cr_checkpoint(flags: c_int) -> c_int {
    // The callback's FPU/vector state, x87 stack and control words included, is what it was at
    // this call when it returns, also after a restart.
    crate::arch::call_preserving_fpu(checkpoint_entry, flags as u32 as usize) as u32 as c_int
}

extern "C" fn checkpoint_entry(flags: usize) -> usize {
    guard(-types::CR_ENOTCB, || {
        callbacks::checkpoint(flags as u32 as c_int)
    }) as u32 as usize
}

/// From a callback before its `cr_checkpoint()`: the request's details; NULL elsewhere.
#[no_mangle]
pub extern "C" fn cr_get_checkpoint_info() -> *const cr_checkpoint_info {
    guard(core::ptr::null(), info::checkpoint_info)
}

/// From a callback whose `cr_checkpoint()` returned > 0: who restarted us from what; NULL elsewhere.
#[no_mangle]
pub extern "C" fn cr_get_restart_info() -> *const cr_restart_info {
    guard(core::ptr::null(), info::restart_info)
}

/// Initialises a spin lock (unlocked).
#[no_mangle]
pub extern "C" fn cr_spinlock_init(lock: *mut cr_spinlock_t) {
    guard((), || misc::spin_init(lock))
}

/// Takes a spin lock (signal-safe, yielding).
#[no_mangle]
pub extern "C" fn cr_spinlock_lock(lock: *mut cr_spinlock_t) {
    guard((), || misc::spin_lock(lock))
}

/// Releases a spin lock.
#[no_mangle]
pub extern "C" fn cr_spinlock_unlock(lock: *mut cr_spinlock_t) {
    guard((), || misc::spin_unlock(lock))
}

/// Tries a spin lock: non-zero if taken.
#[no_mangle]
pub extern "C" fn cr_spinlock_trylock(lock: *mut cr_spinlock_t) -> c_int {
    guard(0, || misc::spin_trylock(lock))
}

/// Text for an error number (BLCR's own codes included).
#[no_mangle]
pub extern "C" fn cr_strerror(errnum: c_int) -> *const c_char {
    guard(c"unknown error".as_ptr(), || errors::strerror(errnum))
}

/// Installs a process-wide hook for `event`; returns the previous one (or `CR_HOOK_FN_ERROR`).
#[no_mangle]
pub extern "C" fn cr_register_hook(event: cr_hook_event_t, hook_fn: cr_hook_fn_t) -> cr_hook_fn_t {
    // SAFETY: CR_HOOK_FN_ERROR is (cr_hook_fn_t)~0UL in BLCR's header.
    let error: cr_hook_fn_t = unsafe { core::mem::transmute::<usize, cr_hook_fn_t>(!0usize) };
    guard(error, || match callbacks::register_hook(event, hook_fn) {
        Ok(old) => old,
        Err(e) => {
            state::set_errno(e);
            error
        }
    })
}

/// Reads or sets whether threads wait for each other after their callbacks.
#[no_mangle]
pub extern "C" fn cr_hold_ctrl(scope: c_int, flags: c_int) -> c_int {
    guard(-1, || result(misc::hold_ctrl(scope, flags)))
}

/// Increments this thread's persist count; returns the previous one.
#[no_mangle]
pub extern "C" fn cr_inc_persist() -> c_int {
    guard(-1, || result(misc::persist(1)))
}

/// Decrements this thread's persist count; returns the previous one.
#[no_mangle]
pub extern "C" fn cr_dec_persist() -> c_int {
    guard(-1, || result(misc::persist(-1)))
}

/// Deprecated: self-checkpoint to `./context.<pid>`.
#[deprecated]
#[no_mangle]
pub extern "C" fn cr_request() {
    guard((), || {
        let name = format!("context.{}\0", std::process::id());
        super::request_to_file(name.as_bytes())
    })
}

/// Deprecated: self-checkpoint to the named file.
#[deprecated]
#[no_mangle]
pub extern "C" fn cr_request_file(filename: *const c_char) {
    guard((), || {
        if filename.is_null() {
            // SAFETY: BLCR aborts on bad arguments of the deprecated calls.
            unsafe { libc::abort() };
        }
        // SAFETY: the caller passes a NUL-terminated name.
        let name = unsafe { core::ffi::CStr::from_ptr(filename) }.to_bytes_with_nul();
        super::request_to_file(name)
    })
}

/// Deprecated: self-checkpoint to a descriptor.
#[deprecated]
#[no_mangle]
pub extern "C" fn cr_request_fd(fd: c_int) {
    guard((), || requests::deprecated_request(fd))
}
