//! BLCR's callback model (reference §1.6).
//!
//! Thread-context callbacks run in a helper thread libcr starts on the first registration; all of
//! them reach their `cr_checkpoint()` before the control thread stops the threads (phase 1).
//! Signal-context callbacks run in their own thread, inside the checkpoint signal handler
//! (phase 2). Within a list the newest callback runs first; its `cr_checkpoint()` runs the next
//! one, and the innermost call performs the checkpoint (parks the thread, or for the helper,
//! waits for the outcome). So the "before" parts run newest→oldest and the "after" parts
//! oldest→newest as the nesting unwinds. After its list, a thread runs the matching hook and
//! waits at the hold barrier.

use super::state::{self, Callback, Level};
use super::types::*;
use crate::agent::quiesce;
use crate::sys;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering::*};
use libc::{c_int, c_void};
use std::sync::Mutex;

/// Process-wide thread-context callbacks.
static THREAD_CALLBACKS: Mutex<Vec<Callback>> = Mutex::new(Vec::new());
/// Whether any thread-context callback exists (read by the control thread).
#[link_section = ".data1"]
static HAVE_THREAD_CALLBACKS: AtomicBool = AtomicBool::new(false);
/// Whether the helper thread runs.
#[link_section = ".data1"]
static HELPER: AtomicBool = AtomicBool::new(false);
/// Futex word: bumped by the control thread to start phase 1.
static PHASE1_REQ: AtomicU32 = AtomicU32::new(0);
/// Futex word: set to the request number by the helper when its list reached the checkpoint.
static PHASE1_ACK: AtomicU32 = AtomicU32::new(0);
/// Hooks, index = event.
static HOOKS: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];
/// Threads still running callbacks of the current checkpoint (hold barrier).
#[link_section = ".data1"]
static IN_CALLBACKS: AtomicU32 = AtomicU32::new(0);
/// Hold settings for threads that called cr_init and for those that did not.
pub static HOLD_INIT: AtomicI32 = AtomicI32::new(CR_HOLD_BOTH);
/// Hold setting for threads that did not call cr_init.
pub static HOLD_UNINIT: AtomicI32 = AtomicI32::new(CR_HOLD_BOTH);

fn with_signal_blocked<R>(f: impl FnOnce() -> R) -> R {
    let old = sys::sigprocmask_raw(libc::SIG_BLOCK, Some(1u64 << (quiesce::CR_SIGNUM - 1)));
    let r = f();
    sys::sigprocmask_raw(libc::SIG_SETMASK, Some(old));
    r
}

/// `cr_register_callback`.
pub fn register(
    func: cr_callback_t,
    arg: *mut c_void,
    flags: c_int,
) -> Result<cr_callback_id_t, c_int> {
    let ts = state::require()?;
    let context = flags & (CR_SIGNAL_CONTEXT | CR_THREAD_CONTEXT);
    if context != CR_SIGNAL_CONTEXT && context != CR_THREAD_CONTEXT {
        return Err(libc::EINVAL);
    }
    if !ts.level.get().is_null() {
        return Err(libc::EBUSY);
    }
    let cb = Callback { func, arg, flags };
    if context == CR_SIGNAL_CONTEXT {
        with_signal_blocked(|| {
            // SAFETY: only this thread touches its list, and the handler (same thread) cannot
            // run while the checkpoint signal is blocked.
            let list = unsafe { &mut *ts.sig_callbacks.get() };
            if list.len() >= CR_MAX_CALLBACKS as usize {
                return Err(libc::ENOSPC);
            }
            list.push(cb);
            Ok((list.len() - 1) as c_int | CR_SIGNAL_CONTEXT)
        })
    } else {
        let mut list = THREAD_CALLBACKS.lock().map_err(|_| libc::EAGAIN)?;
        if list.len() >= CR_MAX_CALLBACKS as usize {
            return Err(libc::ENOSPC);
        }
        list.push(cb);
        let id = (list.len() - 1) as c_int | CR_THREAD_CONTEXT;
        drop(list);
        HAVE_THREAD_CALLBACKS.store(true, Release);
        start_helper()?;
        Ok(id)
    }
}

/// `cr_replace_callback` (not from inside a callback: that is what `cr_replace_self` is for).
pub fn replace(
    id: cr_callback_id_t,
    func: cr_callback_t,
    arg: *mut c_void,
    flags: c_int,
) -> Result<(), c_int> {
    if state::require()?.level.get().is_null() {
        replace_entry(id, func, arg, flags)
    } else {
        Err(libc::EBUSY)
    }
}

fn replace_entry(
    id: cr_callback_id_t,
    func: cr_callback_t,
    arg: *mut c_void,
    flags: c_int,
) -> Result<(), c_int> {
    let ts = state::require()?;
    let context = id & (CR_SIGNAL_CONTEXT | CR_THREAD_CONTEXT);
    if flags & (CR_SIGNAL_CONTEXT | CR_THREAD_CONTEXT) != context {
        return Err(libc::EINVAL);
    }
    let idx = (id & CR_MAX_CALLBACKS) as usize;
    let cb = Callback { func, arg, flags };
    if context == CR_SIGNAL_CONTEXT {
        with_signal_blocked(|| {
            // SAFETY: as in register.
            let list = unsafe { &mut *ts.sig_callbacks.get() };
            match list.get_mut(idx) {
                Some(slot) => {
                    *slot = cb;
                    Ok(())
                }
                None => Err(libc::EINVAL),
            }
        })
    } else if context == CR_THREAD_CONTEXT {
        let mut list = THREAD_CALLBACKS.lock().map_err(|_| libc::EAGAIN)?;
        match list.get_mut(idx) {
            Some(slot) => {
                *slot = cb;
                Ok(())
            }
            None => Err(libc::EINVAL),
        }
    } else {
        Err(libc::EINVAL)
    }
}

/// `cr_replace_self`: replaces the callback that is running in this thread.
pub fn replace_self(func: cr_callback_t, arg: *mut c_void, flags: c_int) -> Result<(), c_int> {
    let ts = state::require()?;
    let level = ts.level.get();
    if level.is_null() {
        return Err(CR_ENOTCB);
    }
    // SAFETY: level points at the Level on this thread's stack while its list runs.
    let level = unsafe { &*level };
    if flags & (CR_SIGNAL_CONTEXT | CR_THREAD_CONTEXT) != level.context || level.current.get() < 0 {
        return Err(libc::EINVAL);
    }
    replace_entry(
        level.current.get() as c_int | level.context,
        func,
        arg,
        flags,
    )
}

/// Runs the callbacks of `level` from `level.next` down; the innermost performs the checkpoint.
fn run(level: &Level) -> i64 {
    while level.next.get() >= 0 {
        let i = level.next.get();
        level.next.set(i - 1);
        // SAFETY: i < len; the list outlives the run (snapshot or the thread's own list, whose
        // entries are only replaced in place).
        let cb = unsafe { *level.list.add(i as usize) };
        let Some(func) = cb.func else { continue };
        let (saved_current, saved_entered) = (level.current.get(), level.entered.get());
        level.current.set(i);
        level.entered.set(false);
        // SAFETY: calling the program's callback with its own argument, as BLCR does.
        let rc = unsafe { func(cb.arg) };
        let entered = level.entered.get();
        level.current.set(saved_current);
        level.entered.set(saved_entered);
        if entered {
            return level.result.get().unwrap_or(0);
        }
        if rc != 0 {
            // BLCR: a callback returning non-zero (before its checkpoint) is a permanent failure.
            quiesce::request_abort(CR_CHECKPOINT_PERM_FAILURE, 0);
            level.next.set(-1);
        }
    }
    let r = (level.checkpoint)(level);
    level.result.set(Some(r));
    r
}

/// `cr_checkpoint(flags)` from a callback.
pub fn checkpoint(flags: c_int) -> c_int {
    let Some(ts) = state::current() else {
        return -CR_ENOTCB;
    };
    let lp = ts.level.get();
    if lp.is_null() {
        return -CR_ENOTCB;
    }
    // SAFETY: lp points at the running Level on this thread's stack (shared, Cell fields).
    let level = unsafe { &*lp };
    if level.entered.get() {
        return -libc::EINVAL; // a callback may call cr_checkpoint() once
    }
    level.entered.set(true);
    let abort = flags & CR_CHECKPOINT_ABORT_MASK;
    let r = if abort != 0 {
        let code = (flags >> 16) & 0xffff;
        let kind = if abort & CR_CHECKPOINT_PERM_FAILURE != 0 {
            CR_CHECKPOINT_PERM_FAILURE
        } else if abort & CR_CHECKPOINT_TEMP_FAILURE != 0 {
            CR_CHECKPOINT_TEMP_FAILURE
        } else {
            CR_CHECKPOINT_OMIT
        };
        quiesce::request_abort(kind, code);
        level.next.set(-1); // the remaining (older) callbacks are skipped
        let r = (level.checkpoint)(level);
        level.result.set(Some(r));
        r
    } else {
        run(level)
    };
    if r > 0 {
        ts.saw_restart.set(true);
    }
    r.clamp(i32::MIN as i64, i32::MAX as i64) as c_int
}

fn run_hook(event: c_int) {
    let f = HOOKS[event as usize].load(Acquire);
    if f != 0 {
        // SAFETY: f was registered as a cr_hook_fn_t.
        let hook: unsafe extern "C" fn(cr_hook_event_t) = unsafe { core::mem::transmute(f) };
        // SAFETY: calling the program's hook.
        unsafe { hook(event) };
    }
}

fn hold_barrier(ts: Option<&state::ThreadState>, restarted: bool) {
    let setting = match ts {
        Some(t) if t.hold.get() != CR_HOLD_DFLT => t.hold.get(),
        Some(_) => HOLD_INIT.load(Relaxed),
        None => HOLD_UNINIT.load(Relaxed),
    };
    let want = if restarted {
        CR_HOLD_RSTRT
    } else {
        CR_HOLD_CONT
    };
    let round = BARRIER_ROUND.load(Acquire);
    IN_CALLBACKS.fetch_sub(1, AcqRel);
    sys::futex_wake_all(&IN_CALLBACKS);
    if setting & want == 0 {
        return;
    }
    // Bounded: a thread that never finishes its callbacks must not hang the others forever.
    // A new round (the next request already started) also ends the wait.
    let deadline = sys::monotonic_ns() + HOLD_LIMIT_NS;
    loop {
        let n = IN_CALLBACKS.load(Acquire);
        if n == 0
            || n > 1 << 30
            || BARRIER_ROUND.load(Acquire) != round
            || sys::monotonic_ns() > deadline
        {
            break;
        }
        let _ = sys::futex_wait(&IN_CALLBACKS, n, Some(100_000_000));
    }
}

/// Bumped when a new request starts counting callbacks.
static BARRIER_ROUND: AtomicU32 = AtomicU32::new(0);

/// Longest a thread waits at the hold barrier.
const HOLD_LIMIT_NS: u64 = 30_000_000_000;

fn park_checkpoint(level: &Level) -> i64 {
    quiesce::park_here(level.slot)
}

/// Phase 2 in one thread (called by the checkpoint signal handler, slot `idx`): runs the
/// thread's signal-context callbacks (the innermost parks), then hook and hold barrier.
/// Returns the outcome (> 0: restarted).
pub fn signal_phase(idx: usize) -> i64 {
    if sys::gettid() == HELPER_TID.load(Relaxed) {
        // The helper takes part in the hold barrier (and hooks) with its thread-context list;
        // here it only stops.
        return quiesce::park_here(idx);
    }
    let ts = state::current();
    let list = ts.map(|t| {
        // SAFETY: the list is only changed with this signal blocked, so not now.
        let l = unsafe { &*t.sig_callbacks.get() };
        (l.as_ptr(), l.len())
    });
    IN_CALLBACKS.fetch_add(1, AcqRel);
    let outcome = match (ts, list) {
        (Some(t), Some((ptr, len))) if len > 0 => {
            let level = Level::new(ptr, len, park_checkpoint, idx, CR_SIGNAL_CONTEXT);
            t.level.set(&level);
            let r = run(&level);
            t.level.set(core::ptr::null());
            if r >= 0 {
                run_hook(if r > 0 {
                    CR_HOOK_RSTRT_SIGNAL_CONTEXT
                } else {
                    CR_HOOK_CONT_SIGNAL_CONTEXT
                });
            }
            r
        }
        (Some(_), _) => {
            // BLCR: a thread that called cr_init has the full handler, callbacks or not.
            let r = quiesce::park_here(idx);
            if r >= 0 {
                run_hook(if r > 0 {
                    CR_HOOK_RSTRT_SIGNAL_CONTEXT
                } else {
                    CR_HOOK_CONT_SIGNAL_CONTEXT
                });
            }
            r
        }
        (None, _) => {
            // BLCR: threads without libcr state get the NO_CALLBACKS hooks too.
            let r = quiesce::park_here(idx);
            if r >= 0 {
                run_hook(if r > 0 {
                    CR_HOOK_RSTRT_NO_CALLBACKS
                } else {
                    CR_HOOK_CONT_NO_CALLBACKS
                });
            }
            r
        }
    };
    hold_barrier(ts, outcome > 0);
    outcome
}

/// Waits (at most `ns`) for the callback count to change.
pub fn wait_callbacks_done(ns: u64) {
    let n = IN_CALLBACKS.load(Acquire);
    if n != 0 {
        let _ = sys::futex_wait(&IN_CALLBACKS, n, Some(ns));
    }
}

/// Whether threads are still running callbacks of the last checkpoint.
pub fn in_progress() -> bool {
    let n = IN_CALLBACKS.load(Acquire);
    n != 0 && n < 1 << 30
}

/// Before the first checkpoint in a process (and after each), the barrier count restarts.
pub fn reset_barrier() {
    BARRIER_ROUND.fetch_add(1, AcqRel);
    IN_CALLBACKS.store(0, Release);
    sys::futex_wake_all(&IN_CALLBACKS);
}

// ----- phase 1: the helper thread -------------------------------------------------------------

/// [`quiesce::DONE_GEN`] when the current phase 1 began: a callback that reaches its
/// `cr_checkpoint()` only after the control thread gave the checkpoint up (timed out, or the
/// requester died) gets that outcome at once instead of waiting for the next checkpoint.
static PHASE1_GEN: AtomicU32 = AtomicU32::new(0);

fn helper_checkpoint(_level: &Level) -> i64 {
    let seen = PHASE1_GEN.load(Acquire);
    PHASE1_ACK.store(PHASE1_REQ.load(Acquire), Release);
    sys::futex_wake_all(&PHASE1_ACK);
    quiesce::wait_done(seen);
    quiesce::OUTCOME.load(Acquire)
}

/// Thread id of the helper thread.
static HELPER_TID: AtomicI32 = AtomicI32::new(0);

extern "C" fn helper_main(arg: *mut c_void) -> *mut c_void {
    HELPER_TID.store(sys::gettid(), Release);
    let _ = sys::sys3(
        libc::SYS_prctl as usize,
        libc::PR_SET_NAME as usize,
        c"cr-callbacks".as_ptr() as usize,
        0,
    );
    // Requests counted from the moment the thread was created (not from when it first runs).
    let mut seen = arg as usize as u32;
    loop {
        while PHASE1_REQ.load(Acquire) == seen {
            let _ = sys::futex_wait(&PHASE1_REQ, seen, None);
        }
        seen = PHASE1_REQ.load(Acquire);
        // Again each round: after a restart this thread has a new tid.
        HELPER_TID.store(sys::gettid(), Release);
        let snapshot: Vec<Callback> = THREAD_CALLBACKS
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let ts = state::init_thread();
        let level = Level::new(
            snapshot.as_ptr(),
            snapshot.len(),
            helper_checkpoint,
            0,
            CR_THREAD_CONTEXT,
        );
        ts.level.set(&level);
        let r = run(&level);
        ts.level.set(core::ptr::null());
        if r >= 0 {
            run_hook(if r > 0 {
                CR_HOOK_RSTRT_THREAD_CONTEXT
            } else {
                CR_HOOK_CONT_THREAD_CONTEXT
            });
        }
        hold_barrier(Some(ts), r > 0);
    }
}

fn start_helper() -> Result<(), c_int> {
    if HELPER.swap(true, AcqRel) {
        return Ok(());
    }
    let mut th: libc::pthread_t = 0;
    // The helper never takes the program's signals; the checkpoint signal is unblocked by the
    // handler machinery as for every thread.
    let old = sys::sigprocmask_raw(libc::SIG_SETMASK, Some(!(1u64 << (quiesce::CR_SIGNUM - 1))));
    // SAFETY: creating a detached thread with a static entry function.
    let rc = unsafe {
        libc::pthread_create(
            &mut th,
            core::ptr::null(),
            helper_main,
            PHASE1_REQ.load(Acquire) as usize as *mut c_void,
        )
    };
    sys::sigprocmask_raw(libc::SIG_SETMASK, Some(old));
    if rc != 0 {
        HELPER.store(false, Release);
        return Err(rc);
    }
    // SAFETY: detaching the thread we created.
    unsafe { libc::pthread_detach(th) };
    Ok(())
}

/// Phase 1 (control thread): lets the thread-context callbacks run down to their checkpoint.
/// `Err(ETIMEDOUT)` if they did not in time, `Err(ECANCELED)` if the requester went away
/// meanwhile (checked every 20 ms).
pub fn run_thread_phase(timeout_ns: u64) -> Result<(), i32> {
    if !HAVE_THREAD_CALLBACKS.load(Acquire) || !HELPER.load(Acquire) {
        return Ok(());
    }
    IN_CALLBACKS.fetch_add(1, AcqRel); // the helper's share of the hold barrier
    PHASE1_GEN.store(quiesce::DONE_GEN.load(Acquire), Release);
    let req = PHASE1_REQ.fetch_add(1, AcqRel).wrapping_add(1);
    sys::futex_wake_all(&PHASE1_REQ);
    let deadline = sys::monotonic_ns().saturating_add(timeout_ns);
    loop {
        let ack = PHASE1_ACK.load(Acquire);
        if ack == req {
            return Ok(());
        }
        let now = sys::monotonic_ns();
        if now >= deadline {
            return Err(libc::ETIMEDOUT);
        }
        let _ = sys::futex_wait(&PHASE1_ACK, ack, Some((deadline - now).min(20_000_000)));
        crate::agent::control::turn_away_busy();
        if crate::agent::image::requester_gone() {
            return Err(libc::ECANCELED);
        }
    }
}

/// `cr_register_hook`.
pub fn register_hook(event: cr_hook_event_t, f: cr_hook_fn_t) -> Result<cr_hook_fn_t, c_int> {
    state::require()?;
    if !(0..CR_NUM_HOOKS).contains(&event) || f.is_some_and(|f| f as usize == !0usize) {
        return Err(libc::EINVAL); // an unknown event, or CR_HOOK_FN_ERROR passed as a hook
    }
    let new = f.map_or(0, |f| f as usize);
    let old = HOOKS[event as usize].swap(new, AcqRel);
    // SAFETY: old was stored from a cr_hook_fn_t (or is 0 = None).
    Ok(unsafe { core::mem::transmute::<usize, cr_hook_fn_t>(old) })
}

/// Forgets all callbacks and the helper (fork child: BLCR's clean state).
#[link_section = ".text.hot.libcr_start"]
pub fn reset_after_fork() {
    // Only what differs is written: a fork child that execs at once then copies no page of ours.
    if HAVE_THREAD_CALLBACKS.load(Acquire) {
        if let Ok(mut l) = THREAD_CALLBACKS.lock() {
            l.clear();
        }
        HAVE_THREAD_CALLBACKS.store(false, Release);
    }
    if HELPER.load(Acquire) {
        HELPER.store(false, Release);
    }
    if IN_CALLBACKS.load(Acquire) != 0 {
        IN_CALLBACKS.store(0, Release);
    }
}
