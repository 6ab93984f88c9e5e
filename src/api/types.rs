//! BLCR's C types and constants, under their C names (the header `blcr_common.h` defines the
//! same; tests compare both against BLCR's x86-64 layouts).

use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void, pid_t};

/// Version of an argument structure.
pub type cr_version_t = c_int;
/// Client id returned by `cr_init`.
pub type cr_client_id_t = c_int;
/// Callback id: list index OR'ed with the context bit.
pub type cr_callback_id_t = c_int;
/// A signal-safe spin lock.
pub type cr_spinlock_t = c_uint;
/// Handle of a checkpoint request.
pub type cr_checkpoint_handle_t = c_ulong;
/// Handle of a restart request.
pub type cr_restart_handle_t = c_ulong;
/// A checkpoint callback.
pub type cr_callback_t = Option<unsafe extern "C" fn(*mut c_void) -> c_int>;
/// Scope of a request (`CR_SCOPE_*`).
pub type cr_scope_t = c_int;
/// Hook event (`CR_HOOK_*`).
pub type cr_hook_event_t = c_int;
/// A hook function.
pub type cr_hook_fn_t = Option<unsafe extern "C" fn(cr_hook_event_t)>;
/// BLCR's boolean.
pub type cr_bool_t = c_long;

/// Arguments of `cr_request_checkpoint` (28 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct cr_checkpoint_args_t {
    /// Must be [`CR_CHECKPOINT_ARGS_VERSION`].
    pub cr_version: cr_version_t,
    /// `CR_SCOPE_*`.
    pub cr_scope: cr_scope_t,
    /// Target id (0 = self).
    pub cr_target: pid_t,
    /// Destination descriptor.
    pub cr_fd: c_int,
    /// Signal sent after the checkpoint (0 = none).
    pub cr_signal: c_int,
    /// Seconds (0 = unbounded).
    pub cr_timeout: c_uint,
    /// `CR_CHKPT_*`.
    pub cr_flags: c_uint,
}

/// One relocation pair.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cr_rstrt_relocate_pair {
    /// Old path prefix.
    pub oldpath: *const c_char,
    /// New path prefix.
    pub newpath: *const c_char,
}

/// Relocation table header (`path[]` follows at offset 8).
#[repr(C)]
#[derive(Debug)]
pub struct cr_rstrt_relocate {
    /// Number of pairs.
    pub count: c_uint,
    /// The pairs (flexible array).
    pub path: [cr_rstrt_relocate_pair; 0],
}

/// Arguments of `cr_request_restart` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cr_restart_args_t {
    /// Must be [`CR_RESTART_ARGS_VERSION`].
    pub cr_version: cr_version_t,
    /// Source descriptor.
    pub cr_fd: c_int,
    /// Signal sent after the restart.
    pub cr_signal: c_int,
    /// `CR_RSTRT_*`.
    pub cr_flags: c_uint,
    /// Relocations (may be NULL).
    pub cr_relocate: *const cr_rstrt_relocate,
}

/// What a callback learns about the checkpoint in progress (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cr_checkpoint_info {
    /// Signal to be sent after the checkpoint.
    pub signal: c_int,
    /// Absolute path of the context file ("" if not in the file system).
    pub dest: *const c_char,
    /// Pid of the requester.
    pub requester: pid_t,
    /// Target id of the request.
    pub target: pid_t,
    /// Scope of the request.
    pub scope: cr_scope_t,
}

/// What a callback learns about the restart (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cr_restart_info {
    /// Pid of the restarter.
    pub requester: pid_t,
    /// Path of the context file.
    pub src: *const c_char,
}

/// Version of `cr_checkpoint_args_t` this library accepts.
pub const CR_CHECKPOINT_ARGS_VERSION: c_int = 1;
/// Version of `cr_restart_args_t` this library accepts.
pub const CR_RESTART_ARGS_VERSION: c_int = 1;

/// Scopes.
pub const CR_SCOPE_PROC: c_int = 0;
/// Process group.
pub const CR_SCOPE_PGRP: c_int = 1;
/// Session.
pub const CR_SCOPE_SESS: c_int = 2;
/// Process and its descendants.
pub const CR_SCOPE_TREE: c_int = 3;

/// `cr_checkpoint` flags.
pub const CR_CHECKPOINT_READY: c_int = 0;
/// Cancel the request; everyone continues.
pub const CR_CHECKPOINT_TEMP_FAILURE: c_int = 1;
/// Cancel the request and kill every process in it.
pub const CR_CHECKPOINT_PERM_FAILURE: c_int = 2;
/// Leave this process out.
pub const CR_CHECKPOINT_OMIT: c_int = 4;
/// Internal stub flag.
pub const CR_CHECKPOINT_STUB: c_int = 0x4000;
/// Any of the aborting flags.
pub const CR_CHECKPOINT_ABORT_MASK: c_int = 1 | 2 | 4;

/// Request flags.
pub const CR_CHKPT_PROHIBIT_SELF: c_uint = 0x1;
/// Allow ptraced targets.
pub const CR_CHKPT_PTRACED_ALLOW: c_uint = 0x2;
/// Skip ptraced targets.
pub const CR_CHKPT_PTRACED_SKIP: c_uint = 0x4;
/// Skip tracers.
pub const CR_CHKPT_PTRACER_SKIP: c_uint = 0x8;
/// Report errors at reap time.
pub const CR_CHKPT_ASYNC_ERR: c_uint = 0x10;
/// Store the executable by content.
pub const CR_CHKPT_DUMP_EXEC: c_uint = 0x200;
/// Store private mapped files by content.
pub const CR_CHKPT_DUMP_PRIVATE: c_uint = 0x400;
/// Store shared mapped files by content.
pub const CR_CHKPT_DUMP_SHARED: c_uint = 0x800;
/// All of the above.
pub const CR_CHKPT_DUMP_ALL: c_uint = 0xe00;
/// Every valid request flag.
pub const CR_CHKPT_VALID: c_uint = 0x1f | CR_CHKPT_DUMP_ALL;

/// Restart flags.
pub const CR_RSTRT_ASYNC_ERR: c_uint = 0x1;
/// Restore pids (as root in the caller's pid namespace: `EBUSY` when one is in use; without
/// root in a private pid namespace).
pub const CR_RSTRT_RESTORE_PID: c_uint = 0x2;
/// Restore process group ids, also without [`CR_RSTRT_RESTORE_PID`]: a group whose leader does
/// not get its own pid back is made again at its id by a placeholder leader (as root; `EBUSY`
/// when the id is in use; without root in a private pid namespace).
pub const CR_RSTRT_RESTORE_PGID: c_uint = 0x4;
/// Restore session ids, also without [`CR_RSTRT_RESTORE_PID`] (as [`CR_RSTRT_RESTORE_PGID`]).
pub const CR_RSTRT_RESTORE_SID: c_uint = 0x8;

/// `cr_status` values.
pub const CR_STATE_IDLE: c_int = 0;
/// A checkpoint is pending.
pub const CR_STATE_PENDING: c_int = 1;
/// This thread is in a callback.
pub const CR_STATE_ACTIVE: c_int = 2;

/// Callback context bits.
pub const CR_SIGNAL_CONTEXT: c_int = 0x200_0000;
/// Thread-context callbacks run in libcr's helper thread.
pub const CR_THREAD_CONTEXT: c_int = 0x400_0000;
/// Most callbacks per list.
pub const CR_MAX_CALLBACKS: c_int = 0x1ff_ffff;
/// Client id for calls made from callbacks.
pub const CR_ID_CALLBACK: c_int = -1;

/// Hold flags and scopes.
pub const CR_HOLD_READ: c_int = -1;
/// Do not wait.
pub const CR_HOLD_NONE: c_int = 0;
/// Wait on continue.
pub const CR_HOLD_CONT: c_int = 1;
/// Wait on restart.
pub const CR_HOLD_RSTRT: c_int = 2;
/// Wait on both.
pub const CR_HOLD_BOTH: c_int = 3;
/// Use the process default.
pub const CR_HOLD_DFLT: c_int = 4;
/// Hold scope: this thread.
pub const CR_HOLD_SCOPE_THREAD: c_int = 0;
/// Hold scope: threads that called cr_init.
pub const CR_HOLD_SCOPE_INIT: c_int = 1;
/// Hold scope: threads that did not.
pub const CR_HOLD_SCOPE_UNINIT: c_int = 2;

/// Hook events.
pub const CR_HOOK_CONT_SIGNAL_CONTEXT: c_int = 0;
/// Continue, thread context.
pub const CR_HOOK_CONT_THREAD_CONTEXT: c_int = 1;
/// Continue, thread without callbacks.
pub const CR_HOOK_CONT_NO_CALLBACKS: c_int = 2;
/// Restart, signal context.
pub const CR_HOOK_RSTRT_SIGNAL_CONTEXT: c_int = 3;
/// Restart, thread context.
pub const CR_HOOK_RSTRT_THREAD_CONTEXT: c_int = 4;
/// Restart, thread without callbacks.
pub const CR_HOOK_RSTRT_NO_CALLBACKS: c_int = 5;
/// Number of hook events.
pub const CR_NUM_HOOKS: c_int = 6;

/// `cr_poll_*_msg` error returns.
pub const CR_POLL_ERR_PRE: c_int = -1;
/// Reap reported an error.
pub const CR_POLL_ERR_POST: c_int = -2;
/// Fetching the log failed.
pub const CR_POLL_ERR_LOG: c_int = -3;

/// BLCR's private error numbers.
pub const CR_MIN_ERRCODE: c_int = 2353;
/// Temporary failure.
pub const CR_ETEMPFAIL: c_int = 2354;
/// Permanent failure.
pub const CR_EPERMFAIL: c_int = 2355;
/// No checkpoint support.
pub const CR_ENOSUPPORT: c_int = 2356;
/// Interface version.
pub const CR_EVERSION: c_int = 2357;
/// Omitted.
pub const CR_EOMITTED: c_int = 2358;
/// Wrong architecture.
pub const CR_EBADARCH: c_int = 2359;
/// Target ptraced.
pub const CR_EPTRACED: c_int = 2360;
/// Target is a tracer.
pub const CR_EPTRACER: c_int = 2361;
/// Restart aborted.
pub const CR_ERSTRTABRT: c_int = 2362;
/// Request invalid across a restart.
pub const CR_ERESTARTED: c_int = 2363;
/// Only valid from a callback.
pub const CR_ENOTCB: c_int = 2364;
/// cr_init not called.
pub const CR_ENOINIT: c_int = 2365;
/// Sentinel.
pub const CR_MAX_ERRCODE: c_int = 2366;

/// `cr_strerror` texts for `CR_ETEMPFAIL..=CR_ENOINIT`.
pub const ERROR_TEXT: [&core::ffi::CStr; 12] = [
    c"Temporary error: checkpoint cancelled",
    c"Permanent failure: checkpoint cancelled and job killed",
    c"Checkpoint support not linked into one or more processes",
    c"Requested kernel interface version not supported",
    c"Process omitted from checkpoint at a callback's request",
    c"Context file does not match the architecture",
    c"A target process is being ptraced",
    c"A target process has ptrace children",
    c"Restart aborted and job killed",
    c"Request invalid across a restart",
    c"Call only valid from a checkpoint callback",
    c"Calling thread has not called cr_init()",
];

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// BLCR's x86-64 layouts (reference §1.4).
    #[test]
    fn layouts_match_blcr() {
        assert_eq!(size_of::<cr_checkpoint_args_t>(), 28);
        assert_eq!(offset_of!(cr_checkpoint_args_t, cr_timeout), 20);
        assert_eq!(offset_of!(cr_checkpoint_args_t, cr_flags), 24);
        assert_eq!(size_of::<cr_restart_args_t>(), 24);
        assert_eq!(offset_of!(cr_restart_args_t, cr_relocate), 16);
        assert_eq!(size_of::<cr_checkpoint_info>(), 32);
        assert_eq!(offset_of!(cr_checkpoint_info, dest), 8);
        assert_eq!(offset_of!(cr_checkpoint_info, requester), 16);
        assert_eq!(offset_of!(cr_checkpoint_info, scope), 24);
        assert_eq!(size_of::<cr_restart_info>(), 16);
        assert_eq!(offset_of!(cr_restart_info, src), 8);
        assert_eq!(size_of::<cr_rstrt_relocate_pair>(), 16);
        assert_eq!(offset_of!(cr_rstrt_relocate, path), 8);
        assert_eq!(size_of::<cr_checkpoint_handle_t>(), 8);
    }
}
