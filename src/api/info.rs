//! `cr_get_checkpoint_info` / `cr_get_restart_info`: what callbacks may learn about the request
//! in progress and about a restart. The control thread fills the records before any callback runs.

use super::state;
use super::types::*;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI32, Ordering::*};
use libc::c_char;

struct Record<T> {
    info: UnsafeCell<T>,
    path: UnsafeCell<[u8; 4097]>,
}

// SAFETY: written only by the control thread while no callback reads (before phase 1, or while
// the threads are stopped after a restart); read only by callbacks.
unsafe impl<T> Sync for Record<T> {}

static CHECKPOINT: Record<cr_checkpoint_info> = Record {
    info: UnsafeCell::new(cr_checkpoint_info {
        signal: 0,
        dest: core::ptr::null(),
        requester: 0,
        target: 0,
        scope: 0,
    }),
    path: UnsafeCell::new([0; 4097]),
};
static RESTART: Record<cr_restart_info> = Record {
    info: UnsafeCell::new(cr_restart_info {
        requester: 0,
        src: core::ptr::null(),
    }),
    path: UnsafeCell::new([0; 4097]),
};
/// Whether RESTART holds a restart's data.
static RESTARTED: AtomicI32 = AtomicI32::new(0);

fn fill_path(rec_path: &UnsafeCell<[u8; 4097]>, p: &[u8]) -> *const c_char {
    // SAFETY: see `Record`: no reader runs while the control thread writes.
    let buf = unsafe { &mut *rec_path.get() };
    let n = p.len().min(4096);
    buf[..n].copy_from_slice(&p[..n]);
    buf[n] = 0;
    buf.as_ptr() as *const c_char
}

/// Control thread: the request about to run.
pub fn set_checkpoint(signal: i32, dest: &[u8], requester: i32, target: i32, scope: i32) {
    let dest = fill_path(&CHECKPOINT.path, dest);
    // SAFETY: see `Record`.
    unsafe {
        *CHECKPOINT.info.get() = cr_checkpoint_info {
            signal,
            dest,
            requester,
            target,
            scope,
        }
    };
}

/// Restored agent: who restarted us from which file.
pub fn set_restart(requester: i32, src: &[u8]) {
    let src = fill_path(&RESTART.path, src);
    // SAFETY: see `Record`.
    unsafe { *RESTART.info.get() = cr_restart_info { requester, src } };
    RESTARTED.store(1, Release);
}

/// `cr_get_checkpoint_info`: only in a callback, before its `cr_checkpoint()`.
pub fn checkpoint_info() -> *const cr_checkpoint_info {
    let Some(ts) = state::current() else {
        return core::ptr::null();
    };
    let lp = ts.level.get();
    // SAFETY: lp points at the running Level on this thread's stack.
    if lp.is_null() || unsafe { (*lp).result.get().is_some() } {
        return core::ptr::null();
    }
    CHECKPOINT.info.get()
}

/// `cr_get_restart_info`: only in a callback whose `cr_checkpoint()` returned > 0.
pub fn restart_info() -> *const cr_restart_info {
    let Some(ts) = state::current() else {
        return core::ptr::null();
    };
    let lp = ts.level.get();
    // SAFETY: as above.
    let restarted = !lp.is_null() && unsafe { (*lp).result.get() }.is_some_and(|r| r > 0);
    if !restarted || RESTARTED.load(Acquire) == 0 {
        return core::ptr::null();
    }
    RESTART.info.get()
}
