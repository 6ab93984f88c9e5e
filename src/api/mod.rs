//! BLCR's C API (`libcr.h`; reference §1), built on the agent.
//!
//! - [`exports`]: the 38 exported functions (cbindgen generates `include/libcr.h` from it);
//! - [`types`]: BLCR's types and constants under their C names;
//! - [`state`]: what `cr_init` creates per thread;
//! - [`callbacks`]: registration, the nested LIFO/FIFO run, `cr_checkpoint()`, hooks, the helper
//!   thread for thread-context callbacks, the hold barrier;
//! - [`cs`]: critical sections and `cr_status`;
//! - [`requests`]: checkpoint and restart requests and their handles;
//! - [`info`], [`errors`], [`misc`]: info getters, `cr_strerror`, spin locks, hold and persist.

// Every exported function takes C pointers whose validity is the C caller's contract (as in
// BLCR's libcr); they are checked for NULL and dereferenced in small `unsafe` blocks.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod callbacks;

pub mod cs;
pub mod errors;
pub mod exports;
pub mod info;
pub mod misc;
pub mod requests;
pub mod state;
pub mod types;

use libc::c_int;

/// Link anchor: `-u cr_link_me` pulls libcr (and its constructor) into static and `--as-needed`
/// links.
#[no_mangle]
#[used]
pub static cr_link_me: c_int = 0;

/// The checkpoint signal number, as BLCR exports it.
#[no_mangle]
#[used]
pub static cri_signum: c_int = crate::agent::SIGNUM;

/// Runs `f`, turning a panic into `on_panic` (no unwinding across the C boundary).
pub(crate) fn guard<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// Maps a result to BLCR's convention: the value, or -1 with errno.
pub(crate) fn result(r: Result<c_int, c_int>) -> c_int {
    r.unwrap_or_else(state::fail)
}

fn init_thread() -> c_int {
    crate::agent::init();
    let ts = state::init_thread();
    let id = ts.next_id.get();
    ts.next_id.set(id + 1);
    id
}

/// `cr_forward_checkpoint`: only from a callback, before its `cr_checkpoint()`.
fn forward(scope: c_int, target: libc::pid_t) -> Result<c_int, c_int> {
    let ts = state::require()?;
    let lp = ts.level.get();
    // SAFETY: lp points at the running Level on this thread's stack.
    if lp.is_null() || unsafe { (*lp).result.get().is_some() } {
        return Err(types::CR_ENOTCB);
    }
    if !(types::CR_SCOPE_PROC..=types::CR_SCOPE_TREE).contains(&scope) || target < 0 {
        return Err(libc::EINVAL);
    }
    // SAFETY: plain identity queries and a permission probe.
    let (me, exists) = unsafe { (libc::getpid(), libc::kill(target, 0)) };
    if target == 0 || target == me {
        return Ok(0); // already part of the request
    }
    if exists != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ESRCH));
    }
    if target == 1 {
        return Err(libc::EPERM);
    }
    crate::agent::forward::add(scope, target)
}

/// Deprecated calls: self-checkpoint to a named file (removed again if the request fails).
fn request_to_file(name_nul: &[u8]) {
    // SAFETY: opening the caller's file name.
    let fd = unsafe {
        libc::open(
            name_nul.as_ptr() as *const libc::c_char,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        // SAFETY: BLCR aborts on errors of the deprecated calls.
        unsafe { libc::abort() };
    }
    requests::deprecated_request(fd);
    // SAFETY: closing our descriptor.
    unsafe { libc::close(fd) };
}

/// Called by the restored agent (threads still stopped): restart bookkeeping of the API.
pub fn on_restart(restarter: i32, src: &[u8]) {
    requests::RESTART_GEN.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
    info::set_restart(restarter, src);
}

/// Called in a fork child: BLCR children start with clean libcr state.
#[link_section = ".text.hot.libcr_start"]
pub fn reset_after_fork() {
    state::forget_thread();
    callbacks::reset_after_fork();
    cs::reset_after_fork();
}
