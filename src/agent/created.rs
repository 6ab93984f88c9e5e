//! Files a process created with `mkstemp` and its kin (forwarded by the preload stub): their
//! paths, kept so that a checkpoint saves them by content when they lie under a temporary
//! directory even though nobody has them open any more. gcc makes its `/tmp/cc*.s` with
//! `mkstemps`, cc1 writes it and exits, then `as` reads it: between the two nobody holds it,
//! and gcc deletes it on `SIGTERM`. Lock-free and allocation-free: a fixed table. A new name
//! takes a free slot, else one whose file is gone (a program that makes and deletes many), else
//! the oldest one's: that file is forgotten, and the next checkpoint warns ([`forgotten`]).
use crate::sys;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// Entries kept.
pub const SLOTS: usize = 32;
/// Longest path kept.
const PATH_KEPT: usize = 512;
const FREE: u32 = 0;
const BUSY: u32 = 1;
const READY: u32 = 2;
/// Kept, its path unchanged, while a thread looks whether its file is gone.
const CHECKING: u32 = 3;

struct Slot {
    state: AtomicU32,
    /// When it was written (from `NEXT`): the lowest is the oldest.
    seq: AtomicU64,
    len: AtomicUsize,
    path: UnsafeCell<[u8; PATH_KEPT]>,
}

struct Table([Slot; SLOTS]);

// SAFETY: a slot's path is written only by the thread that moved its state to BUSY (compare-
// exchange) and read only while the state is READY or CHECKING (CHECKING: taken from READY by
// compare-exchange, the path not written), published with Release after the write.
unsafe impl Sync for Table {}

static TABLE: Table = Table(
    [const {
        Slot {
            state: AtomicU32::new(FREE),
            seq: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            path: UnsafeCell::new([0; PATH_KEPT]),
        }
    }; SLOTS],
);
static NEXT: AtomicU64 = AtomicU64::new(1);
/// Created files no longer kept while they may still exist (their slot was taken by a newer
/// one), or not kept at all (every slot busy).
static FORGOTTEN: AtomicUsize = AtomicUsize::new(0);

/// How many created files were forgotten while they could still exist: a checkpoint saves none
/// of them (it warns).
pub fn forgotten() -> usize {
    FORGOTTEN.load(Relaxed)
}

fn claim(s: &Slot, from: u32) -> bool {
    s.state
        .compare_exchange(from, BUSY, Acquire, Relaxed)
        .is_ok()
}

/// A slot whose file no longer exists (the program deleted it), taken (BUSY).
fn claim_gone() -> Option<&'static Slot> {
    for s in &TABLE.0 {
        if s.state
            .compare_exchange(READY, CHECKING, Acquire, Relaxed)
            .is_err()
        {
            continue;
        }
        let len = s.len.load(Relaxed).min(PATH_KEPT);
        let mut c = sys::StackBuf::<{ PATH_KEPT + 8 }>::new();
        // SAFETY: CHECKING: this thread took the slot from READY; nobody writes its path.
        c.push(unsafe { &(&*s.path.get())[..len] });
        let gone = matches!(
            sys::stat(c.as_cstr(), libc::AT_SYMLINK_NOFOLLOW),
            Err(sys::Errno(libc::ENOENT | libc::ENOTDIR))
        );
        // Only this thread moves a slot out of CHECKING.
        s.state.store(if gone { BUSY } else { READY }, Release);
        if gone {
            return Some(s);
        }
    }
    None
}

/// The slot of the oldest kept file, taken (BUSY): that file is forgotten.
fn claim_oldest() -> Option<&'static Slot> {
    for _ in 0..SLOTS {
        let s = TABLE
            .0
            .iter()
            .filter(|s| s.state.load(Relaxed) == READY)
            .min_by_key(|s| s.seq.load(Relaxed))?;
        if claim(s, READY) {
            FORGOTTEN.fetch_add(1, Relaxed);
            return Some(s);
        }
    }
    None
}

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
    let slot = TABLE
        .0
        .iter()
        .find(|s| claim(s, FREE))
        .or_else(claim_gone)
        .or_else(claim_oldest);
    let Some(s) = slot else {
        FORGOTTEN.fetch_add(1, Relaxed);
        return;
    };
    // SAFETY: this thread owns the slot while it is BUSY.
    unsafe { (&mut *s.path.get())[..len].copy_from_slice(&abs[..len]) };
    s.len.store(len, Relaxed);
    s.seq.store(NEXT.fetch_add(1, Relaxed), Relaxed);
    s.state.store(READY, Release);
}

/// Calls `f` with each kept path (the program's threads are parked: no slot changes meanwhile).
pub fn each(mut f: impl FnMut(&[u8])) {
    for s in &TABLE.0 {
        if matches!(s.state.load(Acquire), READY | CHECKING) {
            let len = s.len.load(Relaxed).min(PATH_KEPT);
            // SAFETY: READY or CHECKING: written and published (see `Table`).
            f(unsafe { &(&*s.path.get())[..len] });
        }
    }
}
