//! Files a process created with `mkstemp` and its kin (forwarded by the preload stub): their
//! paths, kept so that a checkpoint saves them by content when they lie under a temporary
//! directory even though nobody has them open any more. gcc makes its `/tmp/cc*.s` with
//! `mkstemps`, cc1 writes it and exits, then `as` reads it: between the two nobody holds it,
//! and gcc deletes it on `SIGTERM`. Lock-free and allocation-free: a fixed table whose oldest
//! entry is replaced when it is full.

use crate::sys;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::*};

/// Entries kept (the newest ones).
const SLOTS: usize = 32;
/// Longest path kept.
const PATH_KEPT: usize = 512;
const FREE: u32 = 0;
const BUSY: u32 = 1;
const READY: u32 = 2;

struct Slot {
    state: AtomicU32,
    len: AtomicUsize,
    path: UnsafeCell<[u8; PATH_KEPT]>,
}

struct Table([Slot; SLOTS]);

// SAFETY: a slot's path is written only by the thread that moved its state to BUSY (compare-
// exchange) and read only while the state is READY, published with Release after the write.
unsafe impl Sync for Table {}

static TABLE: Table = Table(
    [const {
        Slot {
            state: AtomicU32::new(FREE),
            len: AtomicUsize::new(0),
            path: UnsafeCell::new([0; PATH_KEPT]),
        }
    }; SLOTS],
);
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Called by the preload stub after `mkstemp`, `mkostemp`, `mkstemps` or `mkostemps` created a
/// file from `template` (now its name, NUL-terminated): keeps its absolute path (relative ones
/// joined to the working directory). A path too long is not kept.
///
/// # Safety
/// `template` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cri_note_created(template: *const libc::c_char) {
    if template.is_null() {
        return;
    }
    // SAFETY: the caller's promise.
    let rel = unsafe { core::ffi::CStr::from_ptr(template) }.to_bytes();
    let mut abs = [0u8; PATH_KEPT];
    let Some(len) = sys::absolute_path(rel, &mut abs) else {
        return;
    };
    for _ in 0..2 * SLOTS {
        let s = &TABLE.0[NEXT.fetch_add(1, Relaxed) % SLOTS];
        let from = s.state.load(Acquire);
        if from == BUSY
            || s.state
                .compare_exchange(from, BUSY, Acquire, Relaxed)
                .is_err()
        {
            continue;
        }
        // SAFETY: this thread owns the slot while it is BUSY.
        unsafe { (&mut *s.path.get())[..len].copy_from_slice(&abs[..len]) };
        s.len.store(len, Relaxed);
        s.state.store(READY, Release);
        return;
    }
}

/// Calls `f` with each kept path (the program's threads are parked: no slot changes meanwhile).
pub fn each(mut f: impl FnMut(&[u8])) {
    for s in &TABLE.0 {
        if s.state.load(Acquire) == READY {
            let len = s.len.load(Relaxed).min(PATH_KEPT);
            // SAFETY: READY: written and published (see `Table`).
            f(unsafe { &(&*s.path.get())[..len] });
        }
    }
}
