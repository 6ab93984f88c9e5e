//! Keeps the checkpoint signal invisible to the program: the program's own `sigprocmask`,
//! `pthread_sigmask`, `sigaction` and `signal` calls cannot block or replace it, and `SIGRTMAX`
//! reports one less (as with BLCR). These wrappers are only on signal-setup paths, never hot.

use super::quiesce::CR_SIGNUM;
use core::sync::atomic::{AtomicUsize, Ordering::*};
use libc::{c_int, sigset_t};

/// glibc-internal signals (SIGCANCEL, SIGSETXID) that glibc itself never lets a program block.
const GLIBC_INTERNAL: u64 = (1 << 31) | (1 << 32);

fn filtered(how: c_int, set: *const sigset_t) -> Option<u64> {
    if set.is_null() {
        return None;
    }
    // SAFETY: the caller passed a valid sigset_t; its first 8 bytes are the kernel mask.
    let mut k = unsafe { core::ptr::read_unaligned(set as *const u64) };
    if how != libc::SIG_UNBLOCK {
        k &= !GLIBC_INTERNAL;
        if super::active() {
            k &= !(1u64 << (CR_SIGNUM - 1));
        }
    }
    Some(k)
}

fn set_mask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    let k = filtered(how, set);
    let mut o = 0u64;
    let r = crate::sys::sys6(
        libc::SYS_rt_sigprocmask as usize,
        how as usize,
        k.as_ref().map_or(0, |v| v as *const u64 as usize),
        &mut o as *mut u64 as usize,
        8,
        0,
        0,
    );
    match r {
        Ok(_) => {
            if !old.is_null() {
                // SAFETY: the caller passed a valid sigset_t to receive the old mask.
                unsafe { core::ptr::write_unaligned(old as *mut u64, o) };
            }
            0
        }
        Err(e) => e.0,
    }
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// `pthread_sigmask(3)` that never blocks the checkpoint signal.
#[no_mangle]
pub extern "C" fn pthread_sigmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    set_mask(how, set, old)
}

/// `sigprocmask(2)` that never blocks the checkpoint signal.
#[no_mangle]
pub extern "C" fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    match set_mask(how, set, old) {
        0 => 0,
        e => {
            set_errno(e);
            -1
        }
    }
}

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);

fn real_sigaction() -> Option<SigactionFn> {
    let mut p = REAL_SIGACTION.load(Acquire);
    if p == 0 {
        // SAFETY: dlsym with NUL-terminated names.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) } as usize;
        if p == 0 {
            // SAFETY: as above.
            p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__sigaction".as_ptr()) } as usize;
        }
        REAL_SIGACTION.store(p, Release);
    }
    // SAFETY: p is the address of glibc's sigaction, whose type is SigactionFn.
    (p != 0).then(|| unsafe { core::mem::transmute::<usize, SigactionFn>(p) })
}

/// `sigaction(2)` that refuses to touch the checkpoint signal.
///
/// # Safety
/// As `sigaction(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if sig == CR_SIGNUM && super::active() {
        set_errno(libc::EINVAL);
        return -1;
    }
    match real_sigaction() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(sig, act, old) },
        None => {
            set_errno(libc::ENOSYS);
            -1
        }
    }
}

/// `signal(2)` that refuses to touch the checkpoint signal (BSD semantics, as glibc's).
#[no_mangle]
pub extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: all-zero is a valid sigaction.
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: all-zero is a valid sigaction.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: valid pointers to local structs.
    if unsafe { sigaction(sig, &act, &mut old) } < 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// `SIGRTMAX` as the program sees it: the checkpoint signal is reserved.
#[no_mangle]
pub extern "C" fn __libc_current_sigrtmax() -> c_int {
    if super::active() {
        CR_SIGNUM - 1
    } else {
        CR_SIGNUM
    }
}
