//! Critical sections: while any thread holds one, the whole process's checkpoint waits; a new
//! outermost section waits while a checkpoint is pending; leaving the last section lets a pending
//! checkpoint run before `cr_leave_cs` returns (reference §1.5).
//!
//! One futex word carries both facts, so "no section held" and "pending" are decided atomically:
//! bit 31 = a checkpoint is pending, bits 0–30 = sections held (nesting included).

use super::state;
use super::types::*;
use crate::agent::quiesce;
use crate::sys;
use core::sync::atomic::{AtomicU32, Ordering::*};
use libc::c_int;

const PENDING: u32 = 1 << 31;
const COUNT: u32 = PENDING - 1;
#[link_section = ".data1"]
static CS_STATE: AtomicU32 = AtomicU32::new(0);

/// `cr_enter_cs` (`try_only`: `cr_tryenter_cs`). Returns 0 when entered, 1 when it would block.
pub fn enter(try_only: bool) -> Result<c_int, c_int> {
    let ts = state::require()?;
    if !ts.level.get().is_null() {
        return Ok(0); // inside a callback: sections do not apply
    }
    if ts.cs_depth.get() > 0 {
        CS_STATE.fetch_add(1, AcqRel);
        ts.cs_depth.set(ts.cs_depth.get() + 1);
        return Ok(0);
    }
    loop {
        let s = CS_STATE.load(Acquire);
        if s & PENDING != 0 {
            if try_only {
                return Ok(1);
            }
            let _ = sys::futex_wait(&CS_STATE, s, None);
            continue;
        }
        if CS_STATE.compare_exchange(s, s + 1, AcqRel, Acquire).is_ok() {
            ts.cs_depth.set(1);
            return Ok(0);
        }
    }
}

/// `cr_leave_cs`.
pub fn leave() -> Result<c_int, c_int> {
    let ts = state::require()?;
    if !ts.level.get().is_null() {
        return Ok(0);
    }
    let depth = ts.cs_depth.get();
    if depth == 0 {
        return Err(libc::EINVAL);
    }
    ts.cs_depth.set(depth - 1);
    let seen = quiesce::DONE_GEN.load(Acquire);
    let prev = CS_STATE.fetch_sub(1, AcqRel);
    if depth == 1 && prev & COUNT == 1 && prev & PENDING != 0 {
        // The last section is left and a checkpoint waits for it: let it run, and return only
        // once it is over (this thread takes part in it meanwhile).
        sys::futex_wake_all(&CS_STATE);
        quiesce::wait_done(seen);
    }
    Ok(0)
}

/// `cr_status`.
pub fn status() -> Result<c_int, c_int> {
    let ts = state::require()?;
    Ok(if !ts.level.get().is_null() {
        CR_STATE_ACTIVE
    } else if CS_STATE.load(Acquire) & PENDING != 0 {
        CR_STATE_PENDING
    } else {
        CR_STATE_IDLE
    })
}

/// Whether the calling thread holds a critical section.
pub fn in_section() -> bool {
    state::current().is_some_and(|t| t.cs_depth.get() > 0)
}

/// Control thread: marks a checkpoint pending, calls `accepted`, and waits until no section is
/// held (new outermost sections wait meanwhile). Returns false (and clears the mark) if
/// `deadline_ns` passes.
pub fn begin_pending(
    deadline_ns: u64,
    accepted: impl FnOnce(),
    abandoned: impl Fn() -> bool,
) -> bool {
    CS_STATE.fetch_or(PENDING, AcqRel);
    // From here on no new outermost section starts: tell the requester (BLCR's kernel marks the
    // request pending before cr_request_checkpoint returns).
    accepted();
    loop {
        let s = CS_STATE.load(Acquire);
        if s & COUNT == 0 {
            return true;
        }
        let now = sys::monotonic_ns();
        if now >= deadline_ns || abandoned() {
            end_pending();
            return false;
        }
        let _ = sys::futex_wait(&CS_STATE, s, Some((deadline_ns - now).min(20_000_000)));
        crate::agent::control::turn_away_busy();
    }
}

/// Control thread: the checkpoint is over; waiting sections may enter.
pub fn end_pending() {
    CS_STATE.fetch_and(!PENDING, AcqRel);
    sys::futex_wake_all(&CS_STATE);
}

/// Fork child: no sections, nothing pending.
#[link_section = ".text.hot.libcr_start"]
pub fn reset_after_fork() {
    if CS_STATE.load(Acquire) != 0 {
        CS_STATE.store(0, Release);
    }
}
