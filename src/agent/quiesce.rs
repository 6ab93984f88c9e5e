//! Quiesce: stop every thread of the process in the checkpoint signal handler, and let them go.
//!
//! The control thread signals each thread with [`CR_SIGNUM`] (queued with a per-process cookie, so
//! no other sender can trigger it). The handler records what the restart needs (its `ucontext`,
//! `fs` base, robust list) and parks in [`park`] through [`arch::save_and_call`], which also
//! records a resumable stack pointer. Everything here runs in signal context: atomics and raw
//! system calls only — no allocation, no locks, no stdio.
//!
//! A thread interrupted in a blocking system call would otherwise see a spurious `EINTR` (the
//! kernel never restarts `nanosleep`, `poll`, `epoll_wait`, `pause`, timed futex waits … once a
//! handler ran). When the handler finds the thread stopped right after a `syscall` instruction
//! with `-EINTR`, it reads the call's number from the instruction that loaded it (glibc's
//! wrappers: `mov $NR,%eax` just before) and, for the calls of [`REISSUE`], rewinds the saved
//! context to issue the call again when the handler returns (with the remaining time for relative
//! sleeps). The same happens in a restored process, where the kernel state of the call is gone
//! anyway, and for a signal that arrives after its checkpoint gave up on the thread.
//!
//! Earlier the control thread read `/proc/self/task/TID/syscall` before signalling each thread.
//! That was wrong twice (found by the signal-storm test, tests/load.rs): a thread that was
//! running at the read and entered `epoll_wait` before the signal came saw `EINTR`; and the read
//! waits in the kernel (`wait_task_inactive`) until the thread is off its CPU, which under load
//! took up to 17 s for a thread that wakes every millisecond, failing the checkpoint with "did not
//! stop". Calls made through the generic `syscall()` function (its number comes from a register
//! that is overwritten) cannot be decoded: those the kernel does not restart itself (a futex wait
//! with a timeout) may return `EINTR`, which their manual pages allow.

use crate::arch;
use crate::sys::{self, StackBuf};
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// The checkpoint signal: the highest real-time signal (as BLCR; the program sees SIGRTMAX-1).
pub const CR_SIGNUM: i32 = 64;
/// Most threads one process may have for a checkpoint.
pub const MAX_THREADS: usize = 1024;

/// Slot states.
const FREE: u32 = 0;
const SIGNALLED: u32 = 1;
const PARKED: u32 = 2;

/// Per-thread checkpoint state. Lives in the agent's static memory, so it is part of the image
/// and the restored agent finds it again.
pub struct Slot {
    /// Thread id (at checkpoint time; updated at restart).
    pub tid: AtomicI32,
    state: AtomicU32,
    /// Stack pointer recorded by `save_and_call`.
    pub ctx_rsp: AtomicUsize,
    /// `fs` base (glibc `struct pthread *`).
    pub fs_base: AtomicUsize,
    /// Robust futex list head and length.
    pub robust_head: AtomicUsize,
    /// Length argument of `set_robust_list`.
    pub robust_len: AtomicUsize,
    /// Whether this is the control thread.
    pub is_control: AtomicU32,
    /// Thread name (`comm`), 16 bytes.
    pub comm: [AtomicU64; 2],
    /// What else the kernel keeps for this thread (timer slack, personality, ...).
    pub kstate: super::process::ThreadState,
    /// The thread's signal mask where the checkpoint signal interrupted it (`uc_sigmask`: the
    /// mask its program code runs with once released), for `pending::requeue`.
    pub program_mask: AtomicU64,
    entry_ns: AtomicU64,
    release_seq: AtomicU32,
    /// The last [`WORK_REQ`] this thread served while parked.
    work_seen: AtomicU32,
    sleep_ts: [AtomicI64; 2],
}

impl Slot {
    const fn new() -> Self {
        Slot {
            tid: AtomicI32::new(0),
            state: AtomicU32::new(FREE),
            ctx_rsp: AtomicUsize::new(0),
            fs_base: AtomicUsize::new(0),
            robust_head: AtomicUsize::new(0),
            robust_len: AtomicUsize::new(0),
            is_control: AtomicU32::new(0),
            comm: [AtomicU64::new(0), AtomicU64::new(0)],
            kstate: super::process::ThreadState::new(),
            program_mask: AtomicU64::new(!0),
            entry_ns: AtomicU64::new(0),
            release_seq: AtomicU32::new(0),
            work_seen: AtomicU32::new(0),
            sleep_ts: [AtomicI64::new(0), AtomicI64::new(0)],
        }
    }

    /// The thread name as bytes (NUL padded).
    pub fn comm_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.comm[0].load(Relaxed).to_ne_bytes());
        out[8..].copy_from_slice(&self.comm[1].load(Relaxed).to_ne_bytes());
        out
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT_INIT: Slot = Slot::new();
/// All slots; `0..NSLOTS` are in use during a checkpoint. Slot 0 is the control thread.
pub static SLOTS: [Slot; MAX_THREADS] = [SLOT_INIT; MAX_THREADS];
/// Number of slots in use.
#[link_section = ".data1"]
pub static NSLOTS: AtomicUsize = AtomicUsize::new(0);
/// Futex word: threads that reached [`park`].
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// Bumped to release parked threads.
pub static RELEASE: AtomicU32 = AtomicU32::new(0);
/// Futex word parked threads sleep on: bumped on release and on every work request.
static PARK_WORD: AtomicU32 = AtomicU32::new(0);
/// Bumped by the control thread to have every parked thread capture its pending signals.
static WORK_REQ: AtomicU32 = AtomicU32::new(0);
/// Futex word: parked threads that served the current work request.
static WORK_ACK: AtomicU32 = AtomicU32::new(0);
/// Nonzero while a quiesce is in progress (accepting arrivals).
static ACTIVE: AtomicU32 = AtomicU32::new(0);
/// Threads currently inside the handler (the next checkpoint waits for zero).
static IN_HANDLER: AtomicU32 = AtomicU32::new(0);
/// Cookie carried in `si_value` of our signal.
#[link_section = ".data1"]
pub static COOKIE: AtomicU64 = AtomicU64::new(0);
/// CLOCK_MONOTONIC at the moment memory was captured (for remaining sleep times at restart).
pub static CAPTURE_NS: AtomicU64 = AtomicU64::new(0);
/// Outcome of the last checkpoint, as `cr_checkpoint()` reports it: 0 = continuing after a
/// successful checkpoint, < 0 = -errno (cancelled), > 0 = restarted by that pid. Set by the
/// control thread before it lets the threads go.
pub static OUTCOME: AtomicI64 = AtomicI64::new(0);
/// Futex word: bumped when a checkpoint request is finished (whatever its outcome).
pub static DONE_GEN: AtomicU32 = AtomicU32::new(0);
/// An abort requested by a callback (`CR_CHECKPOINT_TEMP/PERM_FAILURE`, `OMIT`): the flag in the
/// high 32 bits, the user code (or 0) in the low 32; 0 = none. The first one wins.
pub static ABORT: AtomicI64 = AtomicI64::new(0);

/// Records an abort request from a callback (first one wins).
pub fn request_abort(flag: i32, code: i32) {
    let v = ((flag as i64) << 32) | (code as u32 as i64);
    let _ = ABORT.compare_exchange(0, v, AcqRel, Acquire);
}

/// Parks the calling thread, which is in the checkpoint handler in slot `idx`, until the
/// checkpoint is over; returns the outcome (see [`OUTCOME`]).
pub fn park_here(idx: usize) -> i64 {
    let slot = &SLOTS[idx];
    if arch::save_and_call(&slot.ctx_rsp, park, idx) == arch::RESUMED {
        // A re-created thread in a restored process: wait until the agent is ready.
        wait_release(slot.release_seq.load(Relaxed));
        return crate::agent::control::RESTARTER.load(Acquire).max(1);
    }
    OUTCOME.load(Acquire)
}

/// Finishes a request: publishes its outcome and wakes everyone waiting for it.
pub fn finish(outcome: i64) {
    OUTCOME.store(outcome, Release);
    DONE_GEN.fetch_add(1, AcqRel);
    sys::futex_wake_all(&DONE_GEN);
}

/// Waits until [`DONE_GEN`] moves past `seen`.
pub fn wait_done(seen: u32) {
    while DONE_GEN.load(Acquire) == seen {
        let _ = sys::futex_wait(&DONE_GEN, seen, None);
    }
}

/// The signal handler for [`CR_SIGNUM`].
///
/// # Safety
/// Called by the kernel with valid `info` and `uc` pointers.
pub unsafe extern "C" fn on_signal(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo.
    let si = unsafe { &*info };
    // SAFETY: the kernel's siginfo.
    if unsafe { super::ctlstart::on_socket_signal(info, uc) } {
        reissue_after_async_signal(uc as *mut libc::ucontext_t);
        return;
    }
    // SAFETY: for SI_QUEUE the union holds si_pid/si_uid/si_value; reading them is defined.
    let (pid, value) = unsafe { (si.si_pid(), si.si_value().sival_ptr as u64) };
    if si.si_code != libc::SI_QUEUE || pid != sys::getpid() || value != COOKIE.load(Relaxed) {
        // Not a checkpoint request: the program's signal 64.
        // SAFETY: the kernel's arguments, passed on.
        unsafe { super::interpose::deliver_to_program(sig, info, uc) };
        return;
    }
    IN_HANDLER.fetch_add(1, AcqRel);
    handle(uc as *mut libc::ucontext_t);
    IN_HANDLER.fetch_sub(1, AcqRel);
}

fn find_slot(tid: i32) -> Option<usize> {
    let n = NSLOTS.load(Acquire);
    (0..n).find(|&i| SLOTS[i].tid.load(Relaxed) == tid)
}

/// Whether the calling thread `tid` runs inside the checkpoint handler of the checkpoint in
/// progress (`execgate`: a signal-context callback that execs must not wait for that
/// checkpoint's end). Its slot alone does not tell: it is marked before the signal is sent, so
/// also the signal must be blocked, as it is in the handler (the program cannot block it).
pub fn stopping_here(tid: i32) -> bool {
    find_slot(tid).is_some_and(|i| i > 0 && SLOTS[i].state.load(Acquire) != FREE)
        && sys::sigprocmask_raw(libc::SIG_BLOCK, None) & bit(CR_SIGNUM) != 0
}

/// Offsets in the kernel's x86-64 signal frame (`struct rt_sigframe`: return address, then
/// `struct ucontext`, then `siginfo`) and in its `ucontext` (glibc's `ucontext_t` starts alike).
const FRAME_UC: usize = 8;
const UC_RSP: usize = 40 + 15 * 8;
const UC_RIP: usize = 40 + 16 * 8;
const UC_SIGMASK: usize = 296;
const FRAME_INFO: usize = FRAME_UC + 304;
const _: () = assert!(core::mem::offset_of!(libc::ucontext_t, uc_sigmask) == UC_SIGMASK);

/// The signal mask the program code this thread interrupted runs with once the handlers in
/// its way return (for `pending::requeue`). Under load the kernel often delivers several
/// pending signals in one go, each handler's frame stacked on the last before any of them runs:
/// the checkpoint signal's context is then the first instruction of the program's handler for
/// another signal (a queued real-time one), which is blocked there. Such frames are walked
/// down (the interrupted instruction is the entry of the handler of a signal blocked there,
/// the word at the stack pointer its restorer, the frame's `siginfo` that signal) and the
/// mask of the context below them is taken. Anything else: the interrupted context's own mask.
fn program_mask(uc: *mut libc::ucontext_t) -> u64 {
    let ucp = uc as usize;
    // SAFETY: uc is the kernel's ucontext for this handler invocation.
    let word = |at: usize| unsafe { core::ptr::read_unaligned(at as *const u64) };
    let mut mask = word(ucp + UC_SIGMASK);
    let (mut rip, mut rsp) = (word(ucp + UC_RIP), word(ucp + UC_RSP) as usize);
    for _ in 0..8 {
        let entered = (1..=64).find_map(|sig: i32| {
            if mask & (1u64 << (sig - 1)) == 0 || sig == CR_SIGNUM {
                return None;
            }
            let a = super::process::current_action(sig)?;
            (a.handler == rip && a.handler > 1).then_some((sig, a.restorer))
        });
        let Some((sig, restorer)) = entered else {
            break;
        };
        // The interrupted instruction is that handler's first: rsp holds its return address
        // (the frame's, if the kernel entered it), readable as the top of a stack in use.
        if word(rsp) != restorer {
            break;
        }
        // SAFETY: a kernel signal frame starts at rsp (its restorer is there): its ucontext
        // and siginfo follow.
        let signo = unsafe { core::ptr::read_unaligned((rsp + FRAME_INFO) as *const i32) };
        if signo != sig {
            break;
        }
        let inner = rsp + FRAME_UC;
        mask = word(inner + UC_SIGMASK);
        rip = word(inner + UC_RIP);
        rsp = word(inner + UC_RSP) as usize;
    }
    mask
}

fn handle(uc: *mut libc::ucontext_t) {
    let seq = RELEASE.load(Acquire);
    let me = find_slot(sys::gettid());
    let slot = match me {
        Some(idx) if ACTIVE.load(Acquire) != 0 && SLOTS[idx].state.load(Acquire) == SIGNALLED => {
            &SLOTS[idx]
        }
        _ => {
            // No checkpoint wants this thread (any more): the signal came after its quiesce gave
            // up (seen under load: a thread that did not run within the time limit). It may
            // still have interrupted a call, and that must not show either.
            if let Some(nr) = detect_interrupted_call(uc) {
                reissue_now(uc, nr);
            }
            return;
        }
    };
    let idx = me.unwrap_or(0);
    slot.release_seq.store(seq, Relaxed);
    slot.entry_ns.store(sys::monotonic_ns(), Relaxed);
    // Every thread's: the leader's for `pending::requeue`, each one's for
    // `let_ignored_through` again in a restored process.
    slot.program_mask.store(program_mask(uc), Relaxed);
    slot.fs_base.store(sys::get_fs_base(), Relaxed);
    let (mut head, mut len) = (0usize, 0usize);
    let _ = sys::sys3(
        libc::SYS_get_robust_list as usize,
        0,
        &mut head as *mut usize as usize,
        &mut len as *mut usize as usize,
    );
    slot.robust_head.store(head, Relaxed);
    slot.robust_len.store(len, Relaxed);
    slot.kstate.capture();
    let fixup = detect_interrupted_call(uc);
    let_ignored_through(slot.program_mask.load(Relaxed));

    // The thread's signal-context callbacks (if it has any) run here; the innermost
    // cr_checkpoint() parks the thread (park_here). Without callbacks it parks right away.
    let outcome = crate::api::callbacks::signal_phase(idx);
    let restarted = outcome > 0;
    if let Some(nr) = fixup {
        reissue_call(slot, uc, nr, restarted);
    }
}

/// Signals whose default action is to ignore them.
const DEFAULT_IGNORED: [i32; 4] = [libc::SIGCHLD, libc::SIGCONT, libc::SIGURG, libc::SIGWINCH];

/// The bit of signal `sig` in a kernel signal mask.
const fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// The signals known to be ignored now (`SIG_DFL` of [`DEFAULT_IGNORED`], or `SIG_IGN`) as the
/// agent saw them set: the checkpoint handler's mask leaves them out ([`handler_mask`]), so the
/// kernel does not block them when the handler starts. Blocked, an ignored signal sent to the
/// process is queued instead of dropped, and wakes a thread that lets it through: its
/// `epoll_wait` returns EINTR with nothing delivered (tests/load.rs
/// `restarts_while_ignored_signals_arrive`). [`let_ignored_through`] used to open them only
/// some system calls into the handler; a SIGCONT storm still hit that window now and then.
/// Never the wake-up signal (`SIGURG`): the agent owns it, its handler may run the program's.
static IGNORED_NOW: AtomicU64 =
    AtomicU64::new(bit(libc::SIGCHLD) | bit(libc::SIGCONT) | bit(libc::SIGWINCH));
/// Held (1) while a thread changes [`IGNORED_NOW`] and installs the handler to match.
static IGNORED_LOCK: AtomicU32 = AtomicU32::new(0);

/// Whether a disposition with `handler` ignores `sig`.
pub fn ignores(sig: i32, handler: u64) -> bool {
    handler == libc::SIG_IGN as u64
        || (handler == libc::SIG_DFL as u64 && DEFAULT_IGNORED.contains(&sig))
}

/// The checkpoint handler's `sa_mask`: everything but the signals ignored now.
pub fn handler_mask() -> u64 {
    !IGNORED_NOW.load(Acquire)
}

/// Blocks every signal in this thread but those ignored now (which run nothing, and blocked
/// would be queued and wake another thread's `epoll_wait` with EINTR); returns the old mask.
/// For the agent's short sections on a program thread that must not run a program handler
/// (and for a thread it creates, which blocks the rest itself first thing). Adds to the mask,
/// never opens one the thread blocks: an ignored signal the program holds blocked stays
/// pending for it (unblocked here, the thread itself would take and drop it).
pub fn block_all_but_ignored() -> u64 {
    sys::sigprocmask_raw(libc::SIG_BLOCK, Some(handler_mask()))
}

/// At start-up: which of the signals ignored by default still are (a program linked with libcr
/// may have given one a handler before it called `cr_init`).
pub fn find_ignored() {
    let mut set = 0;
    for sig in DEFAULT_IGNORED {
        if sig != crate::protocol::WAKE_SIGNAL
            && super::process::current_action(sig).is_some_and(|a| ignores(sig, a.handler))
        {
            set |= bit(sig);
        }
    }
    IGNORED_NOW.store(set, Release);
}

/// Records that the program's disposition for `sig` (not the checkpoint signal) ignores it or
/// not, and installs the checkpoint handler with the mask to match. Called before a disposition
/// that stops ignoring `sig` is set (so the handler blocks it from then on: a program handler
/// never runs inside ours) and after one that ignores it is set. Every signal is blocked
/// meanwhile, so a program handler that changes dispositions cannot wait on the lock.
pub fn note_ignored(sig: i32, ignored: bool) {
    if !(1..=63).contains(&sig)
        || sig == libc::SIGKILL
        || sig == libc::SIGSTOP
        || sig == crate::protocol::WAKE_SIGNAL
    {
        return;
    }
    let now = IGNORED_NOW.load(Acquire);
    if (now & bit(sig) != 0) == ignored || !super::active() {
        return;
    }
    let old_mask = block_all_but_ignored();
    while IGNORED_LOCK
        .compare_exchange(0, 1, Acquire, Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    if ignored {
        IGNORED_NOW.fetch_or(bit(sig), AcqRel);
    } else {
        IGNORED_NOW.fetch_and(!bit(sig), AcqRel);
    }
    super::install_handler();
    IGNORED_LOCK.store(0, Release);
    sys::sigprocmask_raw(libc::SIG_SETMASK, Some(old_mask));
}

/// Unblocks, in this thread (inside the checkpoint handler, whose mask blocks everything), the
/// signals that are ignored now (`SIG_IGN`, or `SIG_DFL` for those ignored by default) and that
/// the program's mask `program` lets through, as they were before the checkpoint.
///
/// Blocked, such a signal is not dropped when it is sent but queued (the kernel never ignores a
/// blocked signal): a SIGCHLD from an exiting child, or cr_checkpoint's own `--cont`, sent while
/// the main thread was parked then stayed pending for the process, and once the checkpoint let
/// the threads go, the kernel woke a thread that does not block it: a thread in `epoll_wait`
/// returned EINTR (nothing is delivered for an ignored signal, and the kernel never restarts
/// `epoll_wait`): 1-3 in 40-60 runs of the signal storm test with a CPU hog beside it
/// (tests/load.rs). Nothing of the program runs meanwhile, and while every thread is parked
/// nobody changes the dispositions.
///
/// A restored process has the same window at its own release: its threads are re-created with
/// every signal blocked (`resume`), so each calls this again with its saved program mask once
/// the program's dispositions are back, before the control thread lets anyone go.
pub fn let_ignored_through(program: u64) {
    let_ignored_through_now(program);
}

/// [`let_ignored_through`] in an agent handler that is not the checkpoint's (the wake-up, the
/// control socket's first connection), with the mask of the code it interrupted (`uc`): such a
/// handler blocks every signal while it binds the socket or creates the control thread, which
/// under load takes milliseconds; an ignored signal sent to the process meanwhile was queued
/// and woke another thread's `epoll_wait` with EINTR (tests/load.rs
/// `restarts_while_ignored_signals_arrive`: 50 EINTRs in one checkpoint at load 40, with the
/// control socket bound on a wake-up).
pub(crate) fn let_ignored_through_in_handler(uc: *mut libc::c_void) {
    // SAFETY: uc is the kernel's ucontext of this handler invocation.
    let mask = unsafe { core::ptr::read_unaligned((uc as usize + UC_SIGMASK) as *const u64) };
    let_ignored_through_now(mask);
}

fn let_ignored_through_now(program: u64) {
    let assumed = IGNORED_NOW.load(Acquire);
    // The signals ignored by default first (SIGCHLD, SIGCONT: the ones sent most), let through
    // after 4 `rt_sigaction` calls rather than after all 63: the window in which one is queued
    // is as short as it can be.
    let check = |sig: i32| -> u64 {
        let bit = 1u64 << (sig - 1);
        if program & bit != 0 || sig == libc::SIGKILL || sig == libc::SIGSTOP {
            return 0;
        }
        let Some(a) = super::process::current_action(sig) else {
            return 0;
        };
        let ignored = a.handler == libc::SIG_IGN as u64
            || (a.handler == libc::SIG_DFL as u64 && DEFAULT_IGNORED.contains(&sig));
        if ignored {
            bit
        } else {
            0
        }
    };
    let first = DEFAULT_IGNORED
        .iter()
        .fold(0u64, |open, &sig| open | check(sig));
    if first != 0 {
        sys::sigprocmask_raw(libc::SIG_UNBLOCK, Some(first));
    }
    let rest = (1..=63)
        .filter(|sig| !DEFAULT_IGNORED.contains(sig))
        .fold(0u64, |open, sig| open | check(sig));
    if rest != 0 {
        sys::sigprocmask_raw(libc::SIG_UNBLOCK, Some(rest));
    }
    let open = first | rest;
    // A signal the handler's mask left open that has a handler now (set by a raw system call
    // the wrappers did not see): blocked here, so the program's handler cannot run inside ours.
    let stale = assumed & !open & !program;
    if stale != 0 {
        sys::sigprocmask_raw(libc::SIG_BLOCK, Some(stale));
    }
}

extern "C" fn park(idx: usize) -> usize {
    let slot = &SLOTS[idx];
    let seq = slot.release_seq.load(Relaxed);
    slot.work_seen.store(WORK_REQ.load(Acquire), Relaxed);
    slot.state.store(PARKED, Release);
    ARRIVED.fetch_add(1, AcqRel);
    sys::futex_wake_all(&ARRIVED);
    let leader = sys::gettid() == sys::getpid();
    loop {
        let word = PARK_WORD.load(Acquire);
        if RELEASE.load(Acquire) != seq {
            break;
        }
        let req = WORK_REQ.load(Acquire);
        if req != slot.work_seen.load(Relaxed) {
            // Every thread is parked now: what is pending is what the image gets.
            slot.work_seen.store(req, Relaxed);
            super::pending::capture_thread(idx, leader);
            WORK_ACK.fetch_add(1, AcqRel);
            sys::futex_wake_all(&WORK_ACK);
            let late = PARK_LATE_NS.load(Relaxed);
            if late != 0 {
                run_late(late);
            }
            continue;
        }
        let _ = sys::futex_wait(&PARK_WORD, word, None);
    }
    0
}

/// TEST ONLY (tests/faults.rs `checkpoint_while_a_parked_thread_runs_late`): with
/// `LIBCR_TEST_PARK_LATE_MS=N` in the program's environment (read at start-up), each parked
/// thread keeps writing its own stack for N ms after it took its pending signals, before it
/// sleeps again: what a thread a loaded machine runs late does for a few instructions, made
/// long and certain. 0: off.
static PARK_LATE_NS: AtomicU64 = AtomicU64::new(0);

/// At start-up: reads `LIBCR_TEST_PARK_LATE_MS` (see [`PARK_LATE_NS`]).
pub fn init_test_knobs() {
    PARK_LATE_NS.store(super::env_ms_at_init(c"LIBCR_TEST_PARK_LATE_MS"), Relaxed);
}

/// [`PARK_LATE_NS`]: writes a counter on our stack for `ns` nanoseconds.
#[inline(never)]
fn run_late(ns: u64) {
    let until = sys::monotonic_ns() + ns;
    let mut x = [0u64; 8];
    while sys::monotonic_ns() < until {
        x[0] = x[0].wrapping_add(1);
        core::hint::black_box(&mut x);
    }
}

fn wait_release(seq: u32) {
    loop {
        let word = PARK_WORD.load(Acquire);
        if RELEASE.load(Acquire) != seq {
            return;
        }
        let _ = sys::futex_wait(&PARK_WORD, word, None);
    }
}

/// Records the interval timers, then has every parked thread take its pending signals (and the
/// leader the process-wide ones) into agent memory and queue them again (see `pending`); waits
/// until all did, at most until `deadline_ns`. Control thread, every other thread parked.
pub fn capture_pending(deadline_ns: u64) {
    super::process::capture_timers();
    super::pending::reset();
    let pid = sys::getpid();
    let mut parked = 0u32;
    let mut leader_parked = false;
    for s in &SLOTS[1..NSLOTS.load(Acquire)] {
        if s.state.load(Acquire) == PARKED {
            parked += 1;
            leader_parked |= s.tid.load(Relaxed) == pid;
        }
    }
    WORK_ACK.store(0, Release);
    WORK_REQ.fetch_add(1, AcqRel);
    PARK_WORD.fetch_add(1, AcqRel);
    sys::futex_wake_all(&PARK_WORD);
    loop {
        let done = WORK_ACK.load(Acquire);
        let now = sys::monotonic_ns();
        if done >= parked || now >= deadline_ns {
            break;
        }
        let _ = sys::futex_wait(&WORK_ACK, done, Some((deadline_ns - now).min(20_000_000)));
    }
    if !leader_parked {
        super::pending::capture_shared_without_leader();
    }
    wait_asleep(parked as usize, deadline_ns);
}

/// Waits (at most until `deadline_ns`) until `parked` threads sleep on [`PARK_WORD`] in the
/// kernel. A parked thread that has counted itself in ([`ARRIVED`], [`WORK_ACK`]) still runs
/// the rest of its loop in [`park`] before it sleeps again: calls that write its stack, and
/// system calls on whose return the kernel writes its rseq area (in its TLS) when it was
/// preempted or moved to another CPU meanwhile. Its stack and TLS are in the image, whose
/// pages are hashed and then read by the disk: a thread that runs late (a loaded machine
/// keeps a woken thread waiting for a CPU) would change them in between, and the image would
/// fail its checksum at restart. Once it sleeps it touches nothing until it is released.
fn wait_asleep(parked: usize, deadline_ns: u64) {
    let idle = AtomicU32::new(0);
    while sleeping_on_park_word() < parked && sys::monotonic_ns() < deadline_ns {
        let _ = sys::futex_wait(&idle, 0, Some(50_000));
    }
}

/// How many threads wait on [`PARK_WORD`] now: a `FUTEX_REQUEUE` of all its waiters onto the
/// same word wakes and moves none and returns their number (`usize::MAX` if refused).
fn sleeping_on_park_word() -> usize {
    let w = PARK_WORD.as_ptr() as usize;
    sys::sys6(
        libc::SYS_futex as usize,
        w,
        (libc::FUTEX_REQUEUE | libc::FUTEX_PRIVATE_FLAG) as usize,
        0,
        i32::MAX as usize,
        w,
        0,
    )
    .unwrap_or(usize::MAX)
}

/// System calls whose `EINTR` caused by our signal is hidden by issuing them again.
const REISSUE: &[i64] = &[
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_futex,
    libc::SYS_pause,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
];

fn detect_interrupted_call(uc: *mut libc::ucontext_t) -> Option<i64> {
    // SAFETY: uc is the kernel-provided context of this handler invocation.
    let g = unsafe { &(*uc).uc_mcontext.gregs };
    let rip = g[libc::REG_RIP as usize] as usize;
    let rax = g[libc::REG_RAX as usize];
    if rax != -(libc::EINTR as i64) || rip < 2 {
        return None;
    }
    // SAFETY: rip points just after an instruction the thread executed, so rip-2 is mapped code.
    let insn = unsafe { core::ptr::read_unaligned((rip - 2) as *const [u8; 2]) };
    if insn != [0x0f, 0x05] {
        return None;
    }
    // The number is gone from the registers (the kernel put -EINTR in rax): read it from the
    // code that loaded it.
    decode_syscall_nr(rip - 2).filter(|nr| REISSUE.contains(nr))
}

/// The system call number loaded by the instructions just before the `syscall` at `at`: glibc's
/// wrappers end in `mov $NR,%eax` right before it, sometimes with one register move between
/// (`mov 0x4(%rsp),%edi; syscall`). Anything else gives `None` (the call is not re-issued).
fn decode_syscall_nr(at: usize) -> Option<i64> {
    // Only bytes of the page that holds the `syscall` are read (it is mapped: it just ran).
    let avail = (at & 0xfff).min(16);
    let mut code = [0u8; 16];
    // SAFETY: [at - avail, at) lies in the same page as `at`, which is mapped executable code.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (at - avail) as *const u8,
            code[16 - avail..].as_mut_ptr(),
            avail,
        )
    };
    let code = &code[16 - avail..];
    // `b8 imm32` (mov $imm32,%eax) ending `skip` bytes before the syscall, where the `skip` bytes
    // are one move that does not write %eax.
    for skip in [0usize, 2, 3, 4, 5, 6, 7, 8] {
        let end = avail.checked_sub(skip)?;
        if end < 5 {
            return None;
        }
        let mov = &code[end - 5..end];
        // A REX prefix before b8 would make it a move to r8d..r15d, an operand-size prefix a
        // 16-bit move: refuse both (the bytes may also be the tail of another instruction).
        let prefix = if end >= 6 { code[end - 6] } else { 0 };
        if mov[0] != 0xb8 || (0x40..=0x4f).contains(&prefix) || prefix == 0x66 {
            continue;
        }
        if skip == 0 || is_move_not_to_eax(&code[end..]) {
            return Some(i64::from(u32::from_le_bytes([
                mov[1], mov[2], mov[3], mov[4],
            ])));
        }
    }
    None
}

/// Whether `insn` is exactly one `mov` between general registers or from memory that leaves
/// %eax/%rax alone (opcodes 89 and 8b, optional REX, ModRM with SIB and displacement).
fn is_move_not_to_eax(insn: &[u8]) -> bool {
    let (rex, rest) = match insn.first() {
        Some(&b) if (0x40..=0x4f).contains(&b) => (b, &insn[1..]),
        _ => (0, insn),
    };
    let [op, modrm, tail @ ..] = rest else {
        return false;
    };
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    let dest_is_rax = match op {
        0x89 => md == 3 && rm == 0 && rex & 1 == 0,
        0x8b => reg == 0 && rex & 4 == 0,
        _ => return false,
    };
    if dest_is_rax {
        return false;
    }
    let sib = md != 3 && rm == 4;
    let disp = match md {
        0 if rm == 5 => 4,
        0 if sib && tail.first().is_some_and(|s| s & 7 == 5) => 4,
        1 => 1,
        2 => 4,
        _ => 0,
    };
    tail.len() == usize::from(sib) + disp
}

/// After the signal that starts the control thread (`ctlstart`): a call it interrupted with
/// `EINTR` (one that `SA_RESTART` does not restart, [`REISSUE`]) is issued again, as after a
/// checkpoint, so the program never sees the agent's signal. Nobody read the call's number
/// before the signal came, so it is recognized by glibc's code before the `syscall`
/// instruction: `mov $NR, %eax` right before it, or with one 4-byte `mov` from the stack into
/// `%edi`/`%esi` between. A relative sleep continues with the time the kernel wrote back into
/// `*rem` (the full time again when the program passed no `rem`); any other code keeps its
/// `EINTR` (docs/ARCHITECTURE.md).
pub(crate) fn reissue_after_async_signal(uc: *mut libc::ucontext_t) {
    // SAFETY: uc is this handler's context; the thread owns it.
    let g = unsafe { &mut (*uc).uc_mcontext.gregs };
    let rip = g[libc::REG_RIP as usize] as usize;
    if g[libc::REG_RAX as usize] != -(libc::EINTR as i64) || rip & 0xfff < 11 {
        return;
    }
    // SAFETY: the thread just executed the instruction ending at rip, and rip - 11 lies in the
    // same (mapped, executable) page.
    let b = unsafe { core::ptr::read_unaligned((rip - 11) as *const [u8; 11]) };
    if b[9..] != [0x0f, 0x05] {
        return;
    }
    let imm = |i: usize| -> Option<i64> {
        (b[i] == 0xb8 && b[i + 3] == 0 && b[i + 4] == 0)
            .then(|| u16::from_le_bytes([b[i + 1], b[i + 2]]) as i64)
    };
    let nr = match imm(4) {
        Some(nr) => nr,
        None if b[5] == 0x8b && matches!(b[6], 0x74 | 0x7c) && b[7] == 0x24 => match imm(0) {
            Some(nr) => nr,
            None => return,
        },
        None => return,
    };
    if !REISSUE.contains(&nr) {
        return;
    }
    let (req_reg, rem_reg) = match nr {
        libc::SYS_nanosleep => (libc::REG_RDI, libc::REG_RSI),
        libc::SYS_clock_nanosleep
            if g[libc::REG_RSI as usize] & libc::TIMER_ABSTIME as i64 == 0 =>
        {
            (libc::REG_RDX, libc::REG_R10)
        }
        _ => (-1, -1),
    };
    if req_reg >= 0 && g[rem_reg as usize] != 0 {
        g[req_reg as usize] = g[rem_reg as usize];
    }
    g[libc::REG_RIP as usize] -= 2;
    g[libc::REG_RAX as usize] = nr;
}

/// Rewinds the saved context so the interrupted call runs again after the handler returns.
fn reissue_call(slot: &Slot, uc: *mut libc::ucontext_t, nr: i64, restarted: bool) {
    // SAFETY: uc is this handler's context; the thread owns it.
    let g = unsafe { &mut (*uc).uc_mcontext.gregs };
    let (req_reg, rem_reg) = match nr {
        libc::SYS_nanosleep => (libc::REG_RDI, libc::REG_RSI),
        libc::SYS_clock_nanosleep => {
            if g[libc::REG_RSI as usize] & libc::TIMER_ABSTIME as i64 != 0 {
                (-1, -1) // absolute deadline: same call again
            } else {
                (libc::REG_RDX, libc::REG_R10)
            }
        }
        _ => (-1, -1),
    };
    if req_reg >= 0 {
        // Relative sleep: the kernel wrote the time left at interruption into *rem (if given).
        let rem = g[rem_reg as usize] as usize;
        let src = if rem != 0 {
            rem
        } else {
            g[req_reg as usize] as usize
        };
        // SAFETY: the program passed these pointers to the kernel, which accessed them.
        let left = unsafe { core::ptr::read(src as *const libc::timespec) };
        let left_ns = left.tv_sec as i64 * 1_000_000_000 + left.tv_nsec as i64;
        let entry = slot.entry_ns.load(Relaxed);
        // Time the thread would have slept meanwhile: until release in the original process,
        // until the capture instant for a restored one.
        let until = if restarted {
            CAPTURE_NS.load(Relaxed)
        } else {
            sys::monotonic_ns()
        };
        let spent = until.saturating_sub(entry) as i64;
        let ns = (left_ns - spent).max(0);
        slot.sleep_ts[0].store(ns / 1_000_000_000, Relaxed);
        slot.sleep_ts[1].store(ns % 1_000_000_000, Relaxed);
        g[req_reg as usize] = slot.sleep_ts.as_ptr() as i64;
    }
    g[libc::REG_RIP as usize] -= 2;
    g[libc::REG_RAX as usize] = nr;
}

/// Rewinds the saved context so the interrupted call runs again when the handler returns, for a
/// thread that is not stopping (no slot time to account for): a relative sleep goes on with the
/// time the kernel wrote back into its `rem` argument (the full time again when it has none:
/// never shorter), as `SA_RESTART` would.
fn reissue_now(uc: *mut libc::ucontext_t, nr: i64) {
    // SAFETY: uc is this handler's context; the thread owns it.
    let g = unsafe { &mut (*uc).uc_mcontext.gregs };
    let relative = match nr {
        libc::SYS_nanosleep => Some((libc::REG_RDI, libc::REG_RSI)),
        libc::SYS_clock_nanosleep
            if g[libc::REG_RSI as usize] & libc::TIMER_ABSTIME as i64 == 0 =>
        {
            Some((libc::REG_RDX, libc::REG_R10))
        }
        _ => None,
    };
    if let Some((req, rem)) = relative {
        if g[rem as usize] != 0 {
            g[req as usize] = g[rem as usize];
        }
    }
    g[libc::REG_RIP as usize] -= 2;
    g[libc::REG_RAX as usize] = nr;
}

/// Errors of [`quiesce`].
#[derive(Clone, Copy, Debug)]
pub enum QuiesceError {
    /// Thread did not reach the handler in time.
    Timeout(i32),
    /// More threads than [`MAX_THREADS`].
    TooManyThreads,
    /// Reading `/proc/self/task` failed.
    Proc(sys::Errno),
    /// The requester hung up while we waited (`image::requester_gone`).
    Cancelled,
    /// This many threads were still inside an exec at the time limit (`execgate`).
    InExec(u32),
}

/// Scratch buffer for directory listings (control thread only).
pub struct DirBuf(pub [u8; 8192]);

/// Lists the thread ids of this process into `out`; returns how many.
fn list_tasks(buf: &mut DirBuf, out: &mut [i32]) -> Result<usize, sys::Errno> {
    let fd = sys::open(
        b"/proc/self/task\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )? as i32;
    let mut n = 0;
    let res = loop {
        let len = match sys::getdents64(fd, &mut buf.0) {
            Ok(0) => break Ok(n),
            Ok(l) => l,
            Err(e) => break Err(e),
        };
        let mut pos = 0;
        while pos < len {
            let reclen = u16::from_ne_bytes([buf.0[pos + 16], buf.0[pos + 17]]) as usize;
            let name = &buf.0[pos + 19..pos + reclen];
            let tid = parse_dec(name);
            if tid > 0 && n < out.len() {
                out[n] = tid as i32;
                n += 1;
            }
            pos += reclen;
        }
    };
    sys::close(fd);
    res
}

/// Parses leading decimal digits.
pub fn parse_dec(s: &[u8]) -> i64 {
    let mut v: i64 = 0;
    let mut any = false;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        any = true;
        v = v.wrapping_mul(10).wrapping_add((b - b'0') as i64);
    }
    if any {
        v
    } else {
        -1
    }
}

fn task_path(tid: i32, leaf: &[u8]) -> StackBuf<64> {
    let mut p = StackBuf::<64>::new();
    p.push(b"/proc/self/task/")
        .num(tid as u64)
        .push(b"/")
        .push(leaf);
    p
}

/// Whether thread `tid` is a zombie (an exited group leader) or gone.
fn is_dead(tid: i32) -> bool {
    let mut p = task_path(tid, b"stat");
    let mut buf = [0u8; 512];
    match sys::read_file(p.as_cstr(), &mut buf) {
        Ok(n) => {
            let s = &buf[..n];
            match s.iter().rposition(|&b| b == b')') {
                Some(i) if i + 2 < n => matches!(s[i + 2], b'Z' | b'X'),
                _ => true,
            }
        }
        Err(_) => true,
    }
}

fn read_comm(tid: i32, slot: &Slot) {
    let mut p = task_path(tid, b"comm");
    let mut buf = [0u8; 32];
    let n = sys::read_file(p.as_cstr(), &mut buf).unwrap_or(0);
    let mut c = [0u8; 16];
    let n = n.min(15);
    c[..n].copy_from_slice(&buf[..n]);
    if n > 0 && c[n - 1] == b'\n' {
        c[n - 1] = 0;
    }
    slot.comm[0].store(
        u64::from_ne_bytes(c[..8].try_into().unwrap_or([0; 8])),
        Relaxed,
    );
    slot.comm[1].store(
        u64::from_ne_bytes(c[8..].try_into().unwrap_or([0; 8])),
        Relaxed,
    );
}

/// Stops every thread but the caller (the control thread, which takes slot 0).
pub fn quiesce(buf: &mut DirBuf, timeout_ns: u64) -> Result<(), QuiesceError> {
    // Threads from the previous checkpoint must have left the handler before slots are reused.
    let t0 = sys::monotonic_ns();
    while IN_HANDLER.load(Acquire) != 0 && sys::monotonic_ns() - t0 < 1_000_000_000 {
        let _ = sys::sys3(libc::SYS_sched_yield as usize, 0, 0, 0);
    }
    // No stop signal may reach a thread inside `execve`: it would stay pending across the exec
    // and kill the new program (the handler is the default then). Wait for the execs in flight
    // and keep new ones from starting until the release (`execgate`).
    let deadline = sys::monotonic_ns() + timeout_ns;
    super::execgate::close_for_stop(deadline, || {
        crate::agent::control::turn_away_busy();
        super::image::requester_gone()
    })
    .map_err(|n| match n {
        0 => QuiesceError::Cancelled,
        n => QuiesceError::InExec(n),
    })?;
    let me = sys::gettid();
    let pid = sys::getpid();
    let control = &SLOTS[0];
    control.tid.store(me, Relaxed);
    control.is_control.store(1, Relaxed);
    control.state.store(PARKED, Relaxed);
    control.fs_base.store(sys::get_fs_base(), Relaxed);
    control.kstate.capture();
    read_comm(me, control);
    NSLOTS.store(1, Release);
    ARRIVED.store(0, Release);
    ACTIVE.store(1, Release);

    // SAFETY: all-zero is a valid siginfo; we fill the SI_QUEUE fields through the raw layout
    // (si_signo, si_errno, si_code, pad, si_pid, si_uid, si_value).
    let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
    {
        let raw = &mut info as *mut libc::siginfo_t as *mut u8;
        // SAFETY: offsets of the kernel's siginfo layout for SI_QUEUE on x86-64.
        unsafe {
            *(raw as *mut i32) = CR_SIGNUM;
            *(raw.add(8) as *mut i32) = libc::SI_QUEUE;
            *(raw.add(16) as *mut i32) = pid;
            *(raw.add(20) as *mut u32) = libc::getuid();
            *(raw.add(24) as *mut u64) = COOKIE.load(Relaxed);
        }
    }

    let mut tids = [0i32; MAX_THREADS];
    loop {
        let n = list_tasks(buf, &mut tids).map_err(QuiesceError::Proc)?;
        let mut new = 0;
        // The main thread last: in the handler it blocks every signal until it lets the
        // ignored ones through (`let_ignored_through`), and meanwhile an ignored signal sent to
        // the process (SIGCHLD, SIGCONT) is queued instead of dropped and wakes a thread that
        // does not block it: an `epoll_wait` returned EINTR with nothing delivered
        // (tests/load.rs `restarts_while_ignored_signals_arrive`, 1 run of 5 with the main
        // thread signalled first). Signalled last, every other thread has the checkpoint signal
        // pending by then: woken, it runs the handler, which hides the EINTR.
        let main_last = tids[..n]
            .iter()
            .filter(|&&t| t != pid)
            .chain(tids[..n].iter().filter(|&&t| t == pid));
        for &tid in main_last {
            if tid == me || find_slot(tid).is_some() || is_dead(tid) {
                continue;
            }
            let idx = NSLOTS.load(Relaxed);
            if idx >= MAX_THREADS {
                return Err(QuiesceError::TooManyThreads);
            }
            let slot = &SLOTS[idx];
            slot.tid.store(tid, Relaxed);
            slot.is_control.store(0, Relaxed);
            read_comm(tid, slot);
            slot.state.store(SIGNALLED, Release);
            NSLOTS.store(idx + 1, Release);
            if sys::tgsigqueueinfo(pid, tid, CR_SIGNUM, &info).is_err() {
                slot.state.store(FREE, Release);
                slot.tid.store(0, Relaxed);
                continue;
            }
            new += 1;
        }
        // Wait for every signalled thread to park.
        loop {
            let want = (1..NSLOTS.load(Acquire))
                .filter(|&i| SLOTS[i].state.load(Acquire) != FREE)
                .count() as u32;
            let got = ARRIVED.load(Acquire);
            if got >= want {
                break;
            }
            let now = sys::monotonic_ns();
            if now >= deadline {
                let late = (1..NSLOTS.load(Acquire))
                    .find(|&i| SLOTS[i].state.load(Acquire) == SIGNALLED)
                    .map_or(0, |i| SLOTS[i].tid.load(Relaxed));
                if late != 0 && is_dead(late) {
                    // exited before it could take the signal: forget it
                    let i = find_slot(late).unwrap_or(0);
                    SLOTS[i].state.store(FREE, Release);
                    continue;
                }
                return Err(QuiesceError::Timeout(late));
            }
            let _ = sys::futex_wait(&ARRIVED, got, Some((deadline - now).min(20_000_000)));
            crate::agent::control::turn_away_busy();
            if super::image::requester_gone() {
                return Err(QuiesceError::Cancelled);
            }
            // a signalled thread may have exited: drop it
            for s in &SLOTS[1..NSLOTS.load(Acquire)] {
                if s.state.load(Acquire) == SIGNALLED && is_dead(s.tid.load(Relaxed)) {
                    s.state.store(FREE, Release);
                }
            }
        }
        if new == 0 {
            break;
        }
    }
    ACTIVE.store(0, Release);
    Ok(())
}

/// Whether slot `i` holds a thread that is part of the checkpoint.
pub fn slot_in_use(i: usize) -> bool {
    i < NSLOTS.load(Acquire) && SLOTS[i].state.load(Acquire) != FREE
}

/// Lets every parked thread continue (after a checkpoint, or after a failed quiesce).
pub fn release() {
    ACTIVE.store(0, Release);
    super::execgate::open();
    for s in SLOTS.iter().take(NSLOTS.load(Acquire)).skip(1) {
        s.state.store(FREE, Release);
    }
    RELEASE.fetch_add(1, AcqRel);
    PARK_WORD.fetch_add(1, AcqRel);
    sys::futex_wake_all(&PARK_WORD);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Places `code` so that it ends at a `syscall` well inside a page; returns its address.
    fn syscall_after(buf: &mut [u8], code: &[u8]) -> usize {
        let base = buf.as_ptr() as usize;
        let off = (0..buf.len())
            .find(|&i| (base + i) & 0xfff == 0x100)
            .unwrap();
        buf[off - code.len()..off].copy_from_slice(code);
        buf[off..off + 2].copy_from_slice(&[0x0f, 0x05]);
        base + off
    }

    fn decode(code: &[u8]) -> Option<i64> {
        let mut buf = vec![0x90u8; 3 * 4096];
        let at = syscall_after(&mut buf, code);
        decode_syscall_nr(at)
    }

    #[test]
    fn decodes_glibc_wrappers() {
        // epoll_wait: mov $0xe8,%eax; syscall
        assert_eq!(decode(&[0xb8, 0xe8, 0, 0, 0]), Some(232));
        // epoll_pwait: mov $0x119,%eax; mov 0x4(%rsp),%edi; syscall
        assert_eq!(
            decode(&[0xb8, 0x19, 1, 0, 0, 0x8b, 0x7c, 0x24, 0x04]),
            Some(281)
        );
        // mov $0x7,%eax; mov %ecx,%r10d; syscall
        assert_eq!(decode(&[0xb8, 7, 0, 0, 0, 0x41, 0x89, 0xca]), Some(7));
        // mov $0x10e,%eax; mov %r12,%rsi
        assert_eq!(decode(&[0xb8, 0x0e, 1, 0, 0, 0x4c, 0x89, 0xe6]), Some(270));
    }

    #[test]
    fn refuses_what_it_cannot_be_sure_of() {
        // mov $0x7,%r8d (41 b8): not %eax
        assert_eq!(decode(&[0x41, 0xb8, 7, 0, 0, 0]), None);
        // glibc's syscall(): mov %rdi,%rax ... the number is not in the code
        assert_eq!(decode(&[0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7]), None);
        // mov $0xe8,%eax; mov %rdi,%rax (overwrites it)
        assert_eq!(decode(&[0xb8, 0xe8, 0, 0, 0, 0x48, 0x89, 0xf8]), None);
        // mov $0xe8,%eax; mov (%rdi),%eax
        assert_eq!(decode(&[0xb8, 0xe8, 0, 0, 0, 0x8b, 0x07]), None);
    }
}
