//! The small pieces: spin locks, hold control, persist counts.

use super::callbacks::{HOLD_INIT, HOLD_UNINIT};
use super::state;
use super::types::*;
use core::sync::atomic::{AtomicU32, Ordering::*};
use libc::c_int;

const LOCKED: u32 = 0x2718_2818;

fn as_atomic(l: *mut cr_spinlock_t) -> Option<&'static AtomicU32> {
    // SAFETY: cr_spinlock_t is an unsigned int the caller owns; AtomicU32 has the same layout.
    (!l.is_null()).then(|| unsafe { &*(l as *const AtomicU32) })
}

/// `cr_spinlock_init`.
pub fn spin_init(l: *mut cr_spinlock_t) {
    if let Some(a) = as_atomic(l) {
        a.store(0, Release);
    }
}

/// `cr_spinlock_lock`: busy-waits, yielding, until the lock is taken (signal-safe).
pub fn spin_lock(l: *mut cr_spinlock_t) {
    if let Some(a) = as_atomic(l) {
        while a
            .compare_exchange_weak(0, LOCKED, Acquire, Relaxed)
            .is_err()
        {
            let _ = crate::sys::sys3(libc::SYS_sched_yield as usize, 0, 0, 0);
        }
    }
}

/// `cr_spinlock_unlock`.
pub fn spin_unlock(l: *mut cr_spinlock_t) {
    if let Some(a) = as_atomic(l) {
        a.store(0, Release);
    }
}

/// `cr_spinlock_trylock`: non-zero if the lock was taken.
pub fn spin_trylock(l: *mut cr_spinlock_t) -> c_int {
    as_atomic(l).is_some_and(|a| a.compare_exchange(0, LOCKED, Acquire, Relaxed).is_ok()) as c_int
}

/// `cr_hold_ctrl`: reads or sets the hold-barrier behaviour; returns the previous value.
pub fn hold_ctrl(scope: c_int, flags: c_int) -> Result<c_int, c_int> {
    let ts = state::require()?;
    let valid = (CR_HOLD_READ..=CR_HOLD_DFLT).contains(&flags);
    if !valid || (flags == CR_HOLD_DFLT && scope != CR_HOLD_SCOPE_THREAD) {
        return Err(libc::EINVAL);
    }
    let set = |cur: c_int| if flags == CR_HOLD_READ { cur } else { flags };
    match scope {
        CR_HOLD_SCOPE_THREAD => {
            let old = ts.hold.get();
            ts.hold.set(set(old));
            Ok(old)
        }
        CR_HOLD_SCOPE_INIT => {
            let old = HOLD_INIT.load(Acquire);
            HOLD_INIT.store(set(old), Release);
            Ok(old)
        }
        CR_HOLD_SCOPE_UNINIT => {
            let old = HOLD_UNINIT.load(Acquire);
            HOLD_UNINIT.store(set(old), Release);
            Ok(old)
        }
        _ => Err(libc::EINVAL),
    }
}

/// `cr_inc_persist` / `cr_dec_persist`: returns the previous count.
pub fn persist(delta: i32) -> Result<c_int, c_int> {
    let ts = state::require()?;
    let old = ts.persist.get();
    let new = (old as i64) + delta as i64;
    if !(0..=c_int::MAX as i64).contains(&new) {
        return Err(libc::ERANGE);
    }
    ts.persist.set(new as u32);
    Ok(old as c_int)
}
