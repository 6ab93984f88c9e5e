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
//! handler ran). The control thread reads `/proc/self/task/TID/syscall` before signalling; if the
//! handler then finds the thread stopped right after that `syscall` instruction with `-EINTR`, it
//! rewinds the saved context to issue the call again when the handler returns (with the remaining
//! time for relative sleeps). The same happens in a restored process, where the kernel state of
//! the call is gone anyway.

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
    pre_nr: AtomicI64,
    pre_pc: AtomicUsize,
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
            pre_nr: AtomicI64::new(-1),
            pre_pc: AtomicUsize::new(0),
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
    if si.si_code == POLL_IN {
        // SAFETY: an O_ASYNC signal's siginfo holds si_band (a long) then si_fd at offset 24.
        let fd = unsafe { core::ptr::read((info as *const u8).add(24) as *const i32) };
        if super::ctlstart::on_connection(fd) {
            reissue_after_async_signal(uc as *mut libc::ucontext_t);
            return;
        }
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

/// `si_code` of a signal an `O_ASYNC` descriptor sent for input (`POLL_IN`).
const POLL_IN: i32 = 1;

fn find_slot(tid: i32) -> Option<usize> {
    let n = NSLOTS.load(Acquire);
    (0..n).find(|&i| SLOTS[i].tid.load(Relaxed) == tid)
}

fn handle(uc: *mut libc::ucontext_t) {
    let seq = RELEASE.load(Acquire);
    if ACTIVE.load(Acquire) == 0 {
        return;
    }
    let Some(idx) = find_slot(sys::gettid()) else {
        return;
    };
    let slot = &SLOTS[idx];
    if slot.state.load(Acquire) != SIGNALLED {
        return;
    }
    slot.release_seq.store(seq, Relaxed);
    slot.entry_ns.store(sys::monotonic_ns(), Relaxed);
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
    let fixup = detect_interrupted_call(slot, uc);

    // The thread's signal-context callbacks (if it has any) run here; the innermost
    // cr_checkpoint() parks the thread (park_here). Without callbacks it parks right away.
    let outcome = crate::api::callbacks::signal_phase(idx);
    let restarted = outcome > 0;
    if let Some(nr) = fixup {
        reissue_call(slot, uc, nr, restarted);
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
            continue;
        }
        let _ = sys::futex_wait(&PARK_WORD, word, None);
    }
    0
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

fn detect_interrupted_call(slot: &Slot, uc: *mut libc::ucontext_t) -> Option<i64> {
    // SAFETY: uc is the kernel-provided context of this handler invocation.
    let g = unsafe { &(*uc).uc_mcontext.gregs };
    let rip = g[libc::REG_RIP as usize] as usize;
    let rax = g[libc::REG_RAX as usize];
    let nr = slot.pre_nr.load(Relaxed);
    if rax != -(libc::EINTR as i64) || rip != slot.pre_pc.load(Relaxed) || !REISSUE.contains(&nr) {
        return None;
    }
    // SAFETY: rip points just after an instruction the thread executed, so rip-2 is mapped code.
    let insn = unsafe { core::ptr::read_unaligned((rip - 2) as *const [u8; 2]) };
    (insn == [0x0f, 0x05]).then_some(nr)
}

/// After the signal that starts the control thread (`ctlstart`): a call it interrupted with
/// `EINTR` (one that `SA_RESTART` does not restart, [`REISSUE`]) is issued again, as after a
/// checkpoint, so the program never sees the agent's signal. Nobody read the call's number
/// before the signal came, so it is recognized by glibc's code before the `syscall`
/// instruction: `mov $NR, %eax` right before it, or with one 4-byte `mov` from the stack into
/// `%edi`/`%esi` between. A relative sleep continues with the time the kernel wrote back into
/// `*rem` (the full time again when the program passed no `rem`); any other code keeps its
/// `EINTR` (docs/ARCHITECTURE.md).
fn reissue_after_async_signal(uc: *mut libc::ucontext_t) {
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

/// Reads the system call a thread is blocked in, and the pc after it.
fn read_syscall(tid: i32) -> (i64, usize) {
    let mut p = task_path(tid, b"syscall");
    let mut buf = [0u8; 256];
    let Ok(n) = sys::read_file(p.as_cstr(), &mut buf) else {
        return (-1, 0);
    };
    let s = &buf[..n];
    if s.starts_with(b"running") {
        return (-1, 0);
    }
    let nr = parse_dec(s);
    // last field is the pc in hex ("0x…")
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = s[..end]
        .iter()
        .rposition(|&b| b == b' ')
        .map_or(0, |i| i + 1);
    let hex = &s[start..end];
    let hex = hex.strip_prefix(b"0x").unwrap_or(hex);
    let mut pc = 0usize;
    for &b in hex {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return (-1, 0),
        };
        pc = pc * 16 + d as usize;
    }
    (nr, pc)
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
    let deadline = sys::monotonic_ns() + timeout_ns;
    loop {
        let n = list_tasks(buf, &mut tids).map_err(QuiesceError::Proc)?;
        let mut new = 0;
        for &tid in &tids[..n] {
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
            let (nr, pc) = read_syscall(tid);
            slot.pre_nr.store(nr, Relaxed);
            slot.pre_pc.store(pc, Relaxed);
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
    for s in SLOTS.iter().take(NSLOTS.load(Acquire)).skip(1) {
        s.state.store(FREE, Release);
    }
    RELEASE.fetch_add(1, AcqRel);
    PARK_WORD.fetch_add(1, AcqRel);
    sys::futex_wake_all(&PARK_WORD);
}
