//! Pending signals: taken out of the kernel while the threads are parked, kept in agent memory
//! (so they travel in the image) and queued again — at once in the process that continues, and
//! by the restored agent before any thread is released.
//!
//! The only way to read a queued signal's `siginfo` is to dequeue it. Every parked thread does
//! that itself (it runs with every signal blocked): it drains its private queue first, signal by
//! signal (`rt_sigtimedwait` with a zero timeout takes a thread's private instance before the
//! process-wide one; `/proc/thread-self/status`' `SigPnd` says when the private ones are gone),
//! and the thread whose tid is the pid then drains the process-wide queue. Each thread queues its
//! own signals back (`rt_tgsigqueueinfo` to itself; the leader `rt_sigqueueinfo` to its process):
//! the kernel accepts a caller-made `siginfo` with any `si_code` (`SI_USER`, `SI_TKILL`, kernel
//! codes) only when the caller is the target thread, so nobody else could. Queued again in the
//! order they were taken, real-time signals keep their order; standard signals have one instance
//! each. `rt_sigpending` comes first, so a thread with nothing pending pays one system call.
//!
//! A process-wide real-time signal another process sends while the leader queues the taken
//! ones again lands in the process-wide queue ahead of those not yet queued (the kernel only
//! appends; under load the leader can be preempted in the middle for milliseconds). So the
//! leader queues the process-wide real-time signals it took to *its own* queue when its
//! program mask lets them through: the kernel hands a thread its private signals before the
//! process-wide ones, so everything taken is delivered before anything that arrived meanwhile,
//! whatever the timing (the leader takes them as soon as it is released: nothing else can).
//! A signal the leader blocks goes back to the process-wide queue as before (another thread
//! takes it, or a `sigwait`), where a signal arriving meanwhile can still get ahead of it.
//!
//! Runs between quiesce and release: atomics, raw system calls and stack buffers only.

use crate::sys;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// Most pending signals one checkpoint keeps; more are left in the kernel (not in the image,
/// with a warning).
pub const MAX_PENDING: usize = 4096;

/// `owner` of an entry that holds nothing.
const EMPTY: u32 = u32::MAX;
/// `owner` of a process-wide (shared) signal.
const SHARED: u32 = u32::MAX - 1;
/// Words of a `siginfo_t`.
const INFO_WORDS: usize = 16;
const _: () = assert!(core::mem::size_of::<libc::siginfo_t>() == INFO_WORDS * 8);

/// One saved signal: who it was pending for (a thread slot, or [`SHARED`]) and its `siginfo`.
struct Entry {
    owner: AtomicU32,
    info: [AtomicU64; INFO_WORDS],
}

#[allow(clippy::declare_interior_mutable_const)]
const ENTRY: Entry = Entry {
    owner: AtomicU32::new(EMPTY),
    info: [const { AtomicU64::new(0) }; INFO_WORDS],
};
/// The saved signals of the last checkpoint, in the order they were taken.
static POOL: [Entry; MAX_PENDING] = [ENTRY; MAX_PENDING];
/// Entries of [`POOL`] handed out (may exceed [`MAX_PENDING`] while threads race for the last).
static USED: AtomicUsize = AtomicUsize::new(0);
/// Signals left in the kernel because [`POOL`] was full.
static LOST: AtomicUsize = AtomicUsize::new(0);

/// Signals that cannot be taken out of a queue.
const UNTAKEABLE: u64 = (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1));

/// Forgets the signals of the previous checkpoint (control thread, before the parked threads
/// capture).
pub fn reset() {
    let n = USED.load(Acquire).min(MAX_PENDING);
    for e in &POOL[..n] {
        e.owner.store(EMPTY, Relaxed);
    }
    USED.store(0, Release);
    LOST.store(0, Release);
}

/// Signals the last capture had to leave out of the image.
pub fn lost() -> usize {
    LOST.load(Acquire)
}

/// How many signals the last capture saved.
pub fn saved() -> usize {
    USED.load(Acquire).min(MAX_PENDING)
}

fn sigpending() -> u64 {
    let mut set = 0u64;
    let _ = sys::sys3(
        libc::SYS_rt_sigpending as usize,
        &mut set as *mut u64 as usize,
        8,
        0,
    );
    set
}

/// This thread's private and its process's shared pending sets.
fn pending_sets() -> Option<(u64, u64)> {
    let mut buf = [0u8; 4096];
    let n = sys::read_file(b"/proc/thread-self/status\0", &mut buf).ok()?;
    let s = &buf[..n];
    Some((
        crate::sys::status_hex_field(s, b"\nSigPnd:")?,
        crate::sys::status_hex_field(s, b"\nShdPnd:")?,
    ))
}

/// Takes one pending instance of `sig` (private before shared) into `info`.
fn dequeue(sig: i32, info: &mut [u64; INFO_WORDS]) -> bool {
    let set: u64 = 1 << (sig - 1);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    sys::sys6(
        libc::SYS_rt_sigtimedwait as usize,
        &set as *const u64 as usize,
        info.as_mut_ptr() as usize,
        &zero as *const _ as usize,
        8,
        0,
        0,
    ) == Ok(sig as usize)
}

/// Queues `info` (signal `sig`) again: to the calling thread, or (`shared`) to its process.
fn queue(sig: i32, info: &[u64; INFO_WORDS], shared: bool) -> sys::SysResult {
    let pid = sys::getpid();
    if shared {
        sys::sys3(
            libc::SYS_rt_sigqueueinfo as usize,
            pid as usize,
            sig as usize,
            info.as_ptr() as usize,
        )
    } else {
        sys::sys6(
            libc::SYS_rt_tgsigqueueinfo as usize,
            pid as usize,
            sys::gettid() as usize,
            sig as usize,
            info.as_ptr() as usize,
            0,
            0,
        )
    }
}

/// Signal number of a saved `siginfo` (`si_signo`, the first int).
fn signo(info: &[u64; INFO_WORDS]) -> i32 {
    info[0] as u32 as i32
}

/// Stores a taken signal; false (and the signal queued again at once) when the pool is full.
fn store(owner: u32, info: &[u64; INFO_WORDS]) -> bool {
    let i = USED.fetch_add(1, AcqRel);
    if i >= MAX_PENDING {
        LOST.fetch_add(1, AcqRel);
        let _ = queue(signo(info), info, owner == SHARED);
        return false;
    }
    let e = &POOL[i];
    for (w, &v) in e.info.iter().zip(info) {
        w.store(v, Relaxed);
    }
    e.owner.store(owner, Release);
    true
}

/// Drains the signals of `set` from the calling thread's queues into the pool. `private`: stop
/// each real-time signal once the thread has no private instance left (the rest is shared).
fn drain(owner: u32, set: u64, private: bool) -> bool {
    let mut info = [0u64; INFO_WORDS];
    for sig in 1..=64 {
        let bit = 1u64 << (sig - 1);
        if set & bit == 0 {
            continue;
        }
        while dequeue(sig, &mut info) {
            if !store(owner, &info) {
                return false;
            }
            if sig < 32 {
                break; // standard signals have one instance per queue
            }
            if private && pending_sets().is_none_or(|(p, _)| p & bit == 0) {
                break;
            }
        }
    }
    true
}

/// Takes the pending signals of the calling (parked) thread in slot `idx` into the pool — its
/// private ones, and the process-wide ones when it is the leader (`tid == pid`) — and queues
/// them again at once, so the process that continues finds them as they were.
pub fn capture_thread(idx: usize, leader: bool) {
    if sigpending() == 0 {
        return;
    }
    let Some((private, shared)) = pending_sets() else {
        return;
    };
    let (private, shared) = (private & !UNTAKEABLE, shared & !UNTAKEABLE);
    if drain(idx as u32, private, true) && leader {
        drain(SHARED, shared, false);
    }
    requeue(idx, leader);
}

/// For a process whose leader thread is gone (called by the control thread after the parked
/// threads captured theirs): takes the process-wide signals and queues them again. The kernel
/// accepts back from us only the `si_code`s a process may send; the others (`SI_USER`, kernel
/// codes) come back as `SI_QUEUE` with the same fields.
pub fn capture_shared_without_leader() {
    let Some((_, shared)) = pending_sets() else {
        return;
    };
    let start = USED.load(Acquire).min(MAX_PENDING);
    drain(SHARED, shared & !UNTAKEABLE, false);
    let end = USED.load(Acquire).min(MAX_PENDING);
    for e in &POOL[start..end] {
        if e.owner.load(Acquire) != SHARED {
            continue;
        }
        let mut info: [u64; INFO_WORDS] = core::array::from_fn(|i| e.info[i].load(Relaxed));
        if queue(signo(&info), &info, true) == Err(sys::Errno(libc::EPERM)) {
            // si_code: the low half of the second word.
            info[1] = (info[1] & !0xffff_ffff) | libc::SI_QUEUE as u32 as u64;
            let _ = queue(signo(&info), &info, true);
        }
    }
}

/// Queues the saved signals of slot `idx` (and, for the leader, the process-wide ones) again,
/// in their order: in the process that continues right after capture, and in a restored one by
/// each re-created thread before it is released.
pub fn requeue(idx: usize, leader: bool) {
    let n = USED.load(Acquire).min(MAX_PENDING);
    let mask = super::quiesce::SLOTS[idx].program_mask.load(Relaxed);
    for e in &POOL[..n] {
        let owner = e.owner.load(Acquire);
        let shared = owner == SHARED;
        if owner != idx as u32 && !(shared && leader) {
            continue;
        }
        let info: [u64; INFO_WORDS] = core::array::from_fn(|i| e.info[i].load(Relaxed));
        let sig = signo(&info);
        let _ = queue(sig, &info, shared && !to_leader(sig, mask));
    }
}

/// Whether a process-wide signal `sig` goes back to the leader's own queue (see the module
/// doc): a real-time signal its program `mask` does not block.
fn to_leader(sig: i32, mask: u64) -> bool {
    (32..=64).contains(&sig) && mask & (1u64 << (sig - 1)) == 0
}

#[cfg(test)]
mod tests {
    use crate::sys::status_hex_field as hex_field;

    #[test]
    fn leader_takes_unblocked_real_time_signals() {
        let rt1 = 35;
        assert!(super::to_leader(rt1, 0));
        assert!(!super::to_leader(rt1, 1 << (rt1 - 1)));
        assert!(!super::to_leader(libc::SIGUSR1, 0));
        assert!(super::to_leader(64, 0));
    }

    #[test]
    fn status_fields() {
        let s = b"Name:\tx\nSigQ:\t3/63451\nSigPnd:\t0000000000000202\nShdPnd:\t8000000000010000\n";
        assert_eq!(hex_field(s, b"\nSigPnd:"), Some(0x202));
        assert_eq!(hex_field(s, b"\nShdPnd:"), Some(0x8000_0000_0001_0000));
        assert_eq!(hex_field(s, b"\nSigBlk:"), None);
    }
}
