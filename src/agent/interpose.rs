//! Keeps the checkpoint signal invisible to the program: the program's own `sigprocmask`,
//! `pthread_sigmask`, `sigaction` and `signal` calls (and the older `sysv_signal`,
//! `__sysv_signal`, `bsd_signal`, `ssignal`, `sigset`, `sigignore`, `siginterrupt`, `sighold`,
//! `sigrelse`) cannot block or replace it, nor can the masks of `sigsuspend`, `ppoll`,
//! `pselect` and `epoll_pwait` hold it back while the program waits, and `SIGRTMAX`
//! reports one less (as with BLCR). These wrappers are only on signal-setup paths, never hot.
//!
//! Signal 64 still belongs to the program too (as under BLCR): `sigaction`/`signal` on it set
//! and return the program's own disposition, kept here in agent memory (so it also travels in
//! the image); the kernel keeps ours. A signal 64 that is not a checkpoint request (anyone's
//! `kill`, `raise`, `sigqueue`) is passed on by the handler ([`deliver_to_program`]) as the kernel
//! would have delivered it: to the program's handler with its flags and mask, ignored, or (the
//! default) terminating the process with signal 64.
//!
//! The wake-up signal (`SIGURG`, `protocol::WAKE_SIGNAL`) is shared the same way where the agent
//! binds its control socket only when woken (docs/ARCHITECTURE.md, "Start-up"): its handler binds
//! the socket for a wake-up (`SI_QUEUE` with `protocol::WAKE_MAGIC`) and passes every other
//! `SIGURG` (out-of-band data, anyone's `kill`) to the program's own disposition, whose default
//! is to ignore it. Unlike signal 64 the program may block it: a program that does (through
//! these wrappers, or inherited across `exec`) gets its socket bound at once, so a blocked
//! wake-up never leaves a requester waiting. The kernel's `SA_RESTART` and `SA_ONSTACK` for it
//! follow the program's handler.

use super::quiesce::CR_SIGNUM;
use crate::sys;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use libc::{c_int, sigset_t};

/// The program's dispositions for signal 64 (slot 0) and the wake-up signal (slot 1) in the
/// kernel's layout: handler, flags, restorer, mask. Initially SIG_DFL (all zero), as the kernel
/// reports an untouched signal.
static PROGRAM_ACT: [[AtomicU64; 4]; 2] = [const { [const { AtomicU64::new(0) }; 4] }; 2];
/// The kernel's `SA_RESTORER` flag (x86-64).
const SA_RESTORER: u64 = 0x0400_0000;
/// Sequence locks of [`PROGRAM_ACT`]: odd while a writer changes it.
static PROGRAM_ACT_SEQ: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
/// Whether the agent's handler for the wake-up signal is installed (set at init).
#[link_section = ".data1"]
static WAKE_HANDLER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
use crate::protocol::WAKE_SIGNAL;

/// The slot of `sig` in [`PROGRAM_ACT`].
fn slot(sig: c_int) -> usize {
    usize::from(sig == WAKE_SIGNAL)
}

/// The program's disposition for the checkpoint signal or the wake-up signal (a consistent copy).
fn program_action(sig: c_int) -> super::process::KSigaction {
    let (act, seqlock) = (&PROGRAM_ACT[slot(sig)], &PROGRAM_ACT_SEQ[slot(sig)]);
    loop {
        let seq = seqlock.load(Acquire);
        if seq & 1 == 1 {
            core::hint::spin_loop();
            continue;
        }
        let a = super::process::KSigaction {
            handler: act[0].load(Acquire),
            flags: act[1].load(Acquire),
            restorer: act[2].load(Acquire),
            mask: act[3].load(Acquire),
        };
        if seqlock.load(Acquire) == seq {
            return a;
        }
    }
}

/// Replaces the program's disposition for the checkpoint signal. The writing thread blocks
/// every signal meanwhile, so no handler of its own can wait for it; writers in several threads
/// take turns.
fn set_program_action(sig: c_int, a: &super::process::KSigaction) {
    let (act, seqlock) = (&PROGRAM_ACT[slot(sig)], &PROGRAM_ACT_SEQ[slot(sig)]);
    let old_mask = super::quiesce::block_all_but_ignored();
    loop {
        let seq = seqlock.load(Acquire);
        if seq & 1 == 0
            && seqlock
                .compare_exchange(seq, seq + 1, AcqRel, Acquire)
                .is_ok()
        {
            break;
        }
        core::hint::spin_loop();
    }
    act[0].store(a.handler, Release);
    act[1].store(a.flags, Release);
    act[2].store(a.restorer, Release);
    act[3].store(a.mask, Release);
    seqlock.fetch_add(1, AcqRel);
    if sig == WAKE_SIGNAL {
        set_wake_action(a);
    }
    sys::sigprocmask_raw(libc::SIG_SETMASK, Some(old_mask));
}

/// Flags of the agent's handler for the wake-up signal: `SA_RESTART` and `SA_ONSTACK` as the
/// program's handler has them (with `SA_RESTART` while the program has none), so that its
/// `SIGURG` interrupts the program's calls as it would without the agent.
#[link_section = ".text.hot.libcr_start"]
fn wake_flags(program: &super::process::KSigaction) -> u64 {
    let follow = (libc::SA_RESTART | libc::SA_ONSTACK) as u64;
    let own = match program.handler as usize {
        libc::SIG_DFL | libc::SIG_IGN => libc::SA_RESTART as u64,
        _ => program.flags & follow,
    };
    (libc::SA_SIGINFO as u64) | SA_RESTORER | own
}

/// Installs (again) the agent's handler for the wake-up signal, its flags after `program`'s; or,
/// where the program ignores the signal, `SIG_IGN` (which `exec` keeps, as without the agent),
/// with the control socket bound at once since no wake-up can arrive.
#[link_section = ".text.hot.libcr_start"]
fn set_wake_action(program: &super::process::KSigaction) {
    if program.handler == libc::SIG_IGN as u64 {
        super::control::bind_now_and_in_children();
        let ign = super::process::KSigaction {
            handler: libc::SIG_IGN as u64,
            ..Default::default()
        };
        let _ = sys::sys6(
            libc::SYS_rt_sigaction as usize,
            WAKE_SIGNAL as usize,
            &ign as *const _ as usize,
            0,
            8,
            0,
            0,
        );
        return;
    }
    let act = super::process::KSigaction {
        handler: on_wake as *const () as usize as u64,
        flags: wake_flags(program),
        restorer: crate::arch::sigreturn_restorer() as u64,
        // Not the signals ignored now: blocked, one sent meanwhile would be queued and wake
        // another thread's `epoll_wait` with EINTR (`quiesce::handler_mask`).
        mask: super::quiesce::handler_mask(),
    };
    let _ = sys::sys6(
        libc::SYS_rt_sigaction as usize,
        WAKE_SIGNAL as usize,
        &act as *const _ as usize,
        0,
        8,
        0,
        0,
    );
}

/// At init, where the control socket is to be bound on a wake-up: installs the agent's handler
/// for the wake-up signal, keeping the disposition the process had (`SIG_IGN` survives `exec`;
/// a late `cr_init()` finds the program's own handler) as the program's. Binds the socket at
/// once where it is ignored (`set_wake_action`). False when the handler could not be installed
/// (the socket is then bound at once, as before). The caller has set `control::lazy_socket`.
#[link_section = ".text.hot.libcr_start"]
pub(super) fn install_wake_handler() -> bool {
    let act = super::process::KSigaction {
        handler: on_wake as *const () as usize as u64,
        flags: wake_flags(&super::process::KSigaction::default()),
        restorer: crate::arch::sigreturn_restorer() as u64,
        // Not the signals ignored now: blocked, one sent meanwhile would be queued and wake
        // another thread's `epoll_wait` with EINTR (`quiesce::handler_mask`).
        mask: super::quiesce::handler_mask(),
    };
    let mut old = super::process::KSigaction::default();
    if sys::sys6(
        libc::SYS_rt_sigaction as usize,
        WAKE_SIGNAL as usize,
        &act as *const _ as usize,
        &mut old as *mut _ as usize,
        8,
        0,
        0,
    )
    .is_err()
    {
        return false;
    }
    WAKE_HANDLER.store(true, Release);
    if old.handler != libc::SIG_DFL as u64 {
        set_program_action(WAKE_SIGNAL, &old);
    }
    true
}

/// Whether the wake-up signal is the agent's in this process (shared with the program).
fn wake_ours() -> bool {
    WAKE_HANDLER.load(Acquire)
}

/// The wake-up signal's handler: binds the control socket for a wake-up (`SI_QUEUE` with
/// `protocol::WAKE_MAGIC`); any other `SIGURG` goes to the program's disposition.
///
/// # Safety
/// Called by the kernel only, as an `SA_SIGINFO` handler.
pub unsafe extern "C" fn on_wake(sig: c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for SI_QUEUE the union holds si_value.
    let (code, value) = unsafe { ((*info).si_code, (*info).si_value().sival_ptr as u64) };
    if code == libc::SI_QUEUE && value == crate::protocol::WAKE_MAGIC {
        if super::execgate::in_vfork_child() {
            // Ours, and nothing to do here: the child execs or exits soon (the requester then
            // asks the new program), and the agent's state here is its parent's.
            return;
        }
        super::quiesce::let_ignored_through_in_handler(uc);
        super::control::ensure_bound_woken();
        // (A wake-up sent again while the socket's signal was pending took its place.)
        super::ctlstart::start_if_waiting();
        super::quiesce::reissue_after_async_signal(uc as *mut libc::ucontext_t);
        return;
    }
    // The control socket's first connection (`control::socket_signal`).
    // SAFETY: the kernel's siginfo.
    if unsafe { super::ctlstart::on_socket_signal(info, uc) } {
        super::quiesce::reissue_after_async_signal(uc as *mut libc::ucontext_t);
        return;
    }
    // SIGURG is a standard signal, one pending at a time: the socket's may have merged with
    // the program's.
    super::ctlstart::start_if_waiting();
    // SAFETY: the kernel's arguments, passed on.
    unsafe { deliver_to_program(sig, info, uc) };
}

/// Called by the checkpoint signal handler for a signal 64 that is not a checkpoint request:
/// does what the kernel would have done with the program's disposition. Runs in the handler
/// (every signal blocked; `uc` holds the mask of the interrupted code).
///
/// # Safety
/// `info` and `uc` are the handler's arguments from the kernel.
pub unsafe fn deliver_to_program(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let act = program_action(sig);
    match act.handler as usize {
        // An ignored SIGURG (its default too) interrupts nothing: a call our handler cut short
        // goes on as if it never came.
        libc::SIG_IGN | libc::SIG_DFL if sig == WAKE_SIGNAL => {
            super::quiesce::reissue_after_async_signal(uc as *mut libc::ucontext_t);
        }
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // The default action of a real-time signal: the process ends, killed by it.
            let dfl = super::process::KSigaction::default();
            let _ = sys::sys6(
                libc::SYS_rt_sigaction as usize,
                sig as usize,
                &dfl as *const _ as usize,
                0,
                8,
                0,
                0,
            );
            let _ = sys::sys3(
                libc::SYS_tgkill as usize,
                sys::getpid() as usize,
                sys::gettid() as usize,
                sig as usize,
            );
            sys::sigprocmask_raw(libc::SIG_UNBLOCK, Some(1u64 << (sig - 1)));
            // Not reached: the signal killed us. Should it not have, go on as before.
            super::install_handler();
        }
        h => {
            if act.flags & libc::SA_RESETHAND as u64 != 0 {
                set_program_action(
                    sig,
                    &super::process::KSigaction {
                        handler: libc::SIG_DFL as u64,
                        ..act
                    },
                );
            }
            // The mask the kernel would have set: the interrupted code's, the handler's
            // sa_mask, and the signal itself unless SA_NODEFER.
            // SAFETY: uc is the kernel's ucontext for this handler invocation.
            let interrupted = unsafe {
                core::ptr::read_unaligned(
                    &(*(uc as *const libc::ucontext_t)).uc_sigmask as *const _ as *const u64,
                )
            };
            let mut mask = interrupted | act.mask;
            if act.flags & libc::SA_NODEFER as u64 == 0 {
                mask |= 1u64 << (sig - 1);
            }
            sys::sigprocmask_raw(libc::SIG_SETMASK, Some(mask));
            if act.flags & libc::SA_SIGINFO as u64 != 0 {
                // SAFETY: the program installed this as an SA_SIGINFO handler.
                let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { core::mem::transmute(h) };
                f(sig, info, uc);
            } else {
                // SAFETY: the program installed this as a plain handler.
                let f: extern "C" fn(c_int) = unsafe { core::mem::transmute(h) };
                f(sig);
            }
        }
    }
}

/// glibc-internal signals (SIGCANCEL, SIGSETXID) that glibc itself never lets a program block.
const GLIBC_INTERNAL: u64 = (1 << 31) | (1 << 32);

fn filtered(how: c_int, set: *const sigset_t) -> Option<u64> {
    if set.is_null() {
        return None;
    }
    // SAFETY: the caller passed a valid sigset_t; its first 8 bytes are the kernel mask.
    let mut k = unsafe { core::ptr::read_unaligned(set as *const u64) };
    if how != libc::SIG_UNBLOCK && k & (1u64 << (WAKE_SIGNAL - 1)) != 0 && wake_ours() {
        // A blocked wake-up would leave a requester waiting: bind the socket now instead.
        super::control::bind_now_and_in_children();
    }
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

/// `inotify_add_watch(2)`, which also keeps the watched path for the checkpoint
/// (`kinds::inotify::note_watch`: the kernel's fdinfo has only the inode).
///
/// # Safety
/// As `inotify_add_watch(2)`: `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn inotify_add_watch(
    fd: c_int,
    path: *const libc::c_char,
    mask: u32,
) -> c_int {
    match sys::sys3(
        libc::SYS_inotify_add_watch as usize,
        fd as usize,
        path as usize,
        mask as usize,
    ) {
        Ok(wd) => {
            // SAFETY: the kernel accepted `path`, so it is NUL-terminated.
            unsafe { crate::kinds::inotify::note_watch(path, mask) };
            wd as c_int
        }
        Err(e) => {
            set_errno(e.0);
            -1
        }
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

/// `sigaction(2)`; for the checkpoint signal it sets and returns the program's own disposition
/// (the kernel keeps the agent's).
///
/// # Safety
/// As `sigaction(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if ours(sig) {
        let cur = program_action(sig);
        if !act.is_null() {
            // SAFETY: the caller passed a valid struct sigaction.
            let a = unsafe { &*act };
            // SAFETY: sa_mask's first 8 bytes are the kernel mask.
            let mask = unsafe { core::ptr::read_unaligned(&a.sa_mask as *const _ as *const u64) };
            // As glibc: SA_RESTORER with its own restorer (ours here; it is never used).
            set_program_action(
                sig,
                &super::process::KSigaction {
                    handler: a.sa_sigaction as u64,
                    flags: a.sa_flags as u32 as u64 | SA_RESTORER,
                    restorer: crate::arch::sigreturn_restorer() as u64,
                    mask: mask & !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1))),
                },
            );
        }
        if !old.is_null() {
            // SAFETY: all-zero is a valid sigaction; the caller passed a valid pointer.
            unsafe {
                let mut o: libc::sigaction = core::mem::zeroed();
                o.sa_sigaction = cur.handler as usize;
                o.sa_flags = cur.flags as c_int;
                o.sa_restorer =
                    core::mem::transmute::<usize, Option<extern "C" fn()>>(cur.restorer as usize);
                core::ptr::write_unaligned(&mut o.sa_mask as *mut _ as *mut u64, cur.mask);
                *old = o;
            }
        }
        return 0;
    }
    // SAFETY: the caller passed a valid struct sigaction or null.
    let handler = (!act.is_null()).then(|| unsafe { (*act).sa_sigaction } as u64);
    with_ignored_noted(sig, handler, || match real_sigaction() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(sig, act, old) },
        None => {
            set_errno(libc::ENOSYS);
            -1
        }
    })
}

/// Runs `set`, the C library's call that gives `sig` (not the checkpoint signal) the
/// disposition `handler` (`None`: it only reads it), with the checkpoint handler's mask kept
/// right (`quiesce::note_ignored`): a signal that stops being ignored is blocked in our handler
/// before its new handler can run, one that becomes ignored is let through once it is.
fn with_ignored_noted<R>(sig: c_int, handler: Option<u64>, set: impl FnOnce() -> R) -> R {
    let ignored = handler.map(|h| super::quiesce::ignores(sig, h));
    if ignored == Some(false) {
        super::quiesce::note_ignored(sig, false);
    }
    let r = set();
    if ignored == Some(true) {
        super::quiesce::note_ignored(sig, true);
    }
    r
}

/// `signal(2)` through [`sigaction`] (BSD semantics, as glibc's).
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

/// The C library's own definition of `name` (the next one after libcr), looked up once into
/// `cache`; 0 when there is none.
pub(super) fn next_fn(cache: &AtomicUsize, name: &core::ffi::CStr) -> usize {
    let mut p = cache.load(Acquire);
    if p == 0 {
        // SAFETY: dlsym with a NUL-terminated name.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        cache.store(p, Release);
    }
    p
}

/// Whether `sig` is the checkpoint signal of a process whose agent runs: the calls below then
/// work on the program's own disposition through [`sigaction`]; otherwise they are the C
/// library's. (glibc's versions call its internal sigaction, which no wrapper sees: on signal
/// 64 they replaced the agent's handler, and checkpoints stopped working.)
fn ours(sig: c_int) -> bool {
    (sig == CR_SIGNUM || (sig == WAKE_SIGNAL && wake_ours())) && super::active()
}

/// Blocks (`how` `SIG_BLOCK`) or unblocks the wake-up signal through [`sigprocmask`] (which
/// binds the control socket first when it blocks).
fn mask_wake(how: c_int) -> c_int {
    let set = 1u64 << (WAKE_SIGNAL - 1);
    // SAFETY: a sigset_t's first 8 bytes are the kernel mask; the rest may stay zero.
    let mut s: sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    unsafe { core::ptr::write_unaligned(&mut s as *mut sigset_t as *mut u64, set) };
    sigprocmask(how, &s, core::ptr::null_mut())
}

/// Installs `handler` for the checkpoint signal with `flags` and an empty mask through
/// [`sigaction`]; returns the previous handler (`SIG_ERR` on failure).
fn set_handler(sig: c_int, handler: libc::sighandler_t, flags: c_int) -> libc::sighandler_t {
    // SAFETY: all-zero is a valid sigaction.
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    // SAFETY: all-zero is a valid sigaction.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: valid pointers to local structs.
    if unsafe { sigaction(sig, &act, &mut old) } < 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// Declares a wrapper `$name(sig, handler) -> old handler` that does `$ours` for the checkpoint
/// signal and calls the C library's `$name` for every other.
macro_rules! handler_fn {
    ($(#[$doc:meta])* $name:ident, $cname:literal, |$sig:ident, $h:ident| $ours:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub extern "C" fn $name($sig: c_int, $h: libc::sighandler_t) -> libc::sighandler_t {
            if ours($sig) {
                return $ours;
            }
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            type F = extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
            // `sigset`'s SIG_HOLD blocks the signal, leaving its disposition alone.
            let handler = ($h != SIG_HOLD).then_some($h as u64);
            with_ignored_noted($sig, handler, || match next_fn(&NEXT, $cname) {
                0 => {
                    set_errno(libc::ENOSYS);
                    libc::SIG_ERR
                }
                // SAFETY: the C library's function of this name has this signature.
                f => (unsafe { core::mem::transmute::<usize, F>(f) })($sig, $h),
            })
        }
    };
}

handler_fn!(
    /// `bsd_signal(3)`: `signal` (BSD semantics).
    bsd_signal, c"bsd_signal", |sig, h| signal(sig, h)
);
handler_fn!(
    /// `ssignal(3)`: glibc's other name for `signal`.
    ssignal, c"ssignal", |sig, h| signal(sig, h)
);
handler_fn!(
    /// `sysv_signal(3)`: a one-shot handler that does not block its signal.
    sysv_signal, c"sysv_signal", |sig, h| set_handler(sig, h, libc::SA_RESETHAND | libc::SA_NODEFER)
);
handler_fn!(
    /// `__sysv_signal`: what `signal()` calls in a program built for strict ISO C (`-std=c99`).
    __sysv_signal, c"__sysv_signal", |sig, h| set_handler(sig, h, libc::SA_RESETHAND | libc::SA_NODEFER)
);
handler_fn!(
    /// `sigset(3)`: installs a handler (flags 0); `SIG_HOLD` would block the signal, which the
    /// checkpoint signal never is (as with `sigprocmask`), so it only returns the handler.
    sigset, c"sigset", |sig, h| {
        if h == SIG_HOLD {
            if sig == WAKE_SIGNAL {
                mask_wake(libc::SIG_BLOCK);
            }
            program_action(sig).handler as libc::sighandler_t
        } else {
            set_handler(sig, h, 0)
        }
    }
);

/// `SIG_HOLD` of `sigset(3)`.
const SIG_HOLD: libc::sighandler_t = 2;

/// Declares a wrapper `$name(sig) -> 0/-1` that does `$ours` for the checkpoint signal and calls
/// the C library's `$name` for every other, noting the disposition `$sets` it gives (if any).
macro_rules! sig_fn {
    ($(#[$doc:meta])* $name:ident, $cname:literal, sets $sets:expr, |$sig:ident| $ours:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub extern "C" fn $name($sig: c_int) -> c_int {
            if ours($sig) {
                return $ours;
            }
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            type F = extern "C" fn(c_int) -> c_int;
            with_ignored_noted($sig, $sets, || match next_fn(&NEXT, $cname) {
                0 => {
                    set_errno(libc::ENOSYS);
                    -1
                }
                // SAFETY: the C library's function of this name has this signature.
                f => (unsafe { core::mem::transmute::<usize, F>(f) })($sig),
            })
        }
    };
}

sig_fn!(
    /// `sigignore(3)`: the program's disposition becomes `SIG_IGN`.
    sigignore, c"sigignore", sets Some(libc::SIG_IGN as u64), |sig| if set_handler(sig, libc::SIG_IGN, 0) == libc::SIG_ERR { -1 } else { 0 }
);
sig_fn!(
    /// `sighold(3)`: the checkpoint signal is never blocked (as with `sigprocmask`); the wake-up
    /// signal is, once the control socket is bound.
    sighold, c"sighold", sets None, |sig| if sig == WAKE_SIGNAL { mask_wake(libc::SIG_BLOCK) } else { 0 }
);
sig_fn!(
    /// `sigrelse(3)`: the checkpoint signal is never blocked.
    sigrelse, c"sigrelse", sets None, |sig| if sig == WAKE_SIGNAL { mask_wake(libc::SIG_UNBLOCK) } else { 0 }
);

/// `siginterrupt(3)`: sets or clears `SA_RESTART` in the program's disposition.
#[no_mangle]
pub extern "C" fn siginterrupt(sig: c_int, interrupt: c_int) -> c_int {
    if ours(sig) {
        // SAFETY: all-zero is a valid sigaction.
        let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: a valid pointer to a local struct; a query only.
        unsafe { sigaction(sig, core::ptr::null(), &mut act) };
        if interrupt != 0 {
            act.sa_flags &= !libc::SA_RESTART;
        } else {
            act.sa_flags |= libc::SA_RESTART;
        }
        // SAFETY: a valid pointer to a local struct.
        return unsafe { sigaction(sig, &act, core::ptr::null_mut()) };
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    type F = extern "C" fn(c_int, c_int) -> c_int;
    match next_fn(&NEXT, c"siginterrupt") {
        0 => {
            set_errno(libc::ENOSYS);
            -1
        }
        // SAFETY: the C library's siginterrupt has this signature.
        f => (unsafe { core::mem::transmute::<usize, F>(f) })(sig, interrupt),
    }
}

/// A copy of the program's signal mask `set` without the checkpoint signal, when the agent runs
/// and `set` holds it: a wait with that mask would hold back every checkpoint request.
fn mask_without_ours(set: *const sigset_t) -> Option<sigset_t> {
    if set.is_null() || !super::active() {
        return None;
    }
    // SAFETY: the caller passed a valid sigset_t.
    let mut copy = unsafe { core::ptr::read_unaligned(set) };
    // SAFETY: copy is a valid sigset_t.
    if wake_ours() && unsafe { libc::sigismember(&copy, WAKE_SIGNAL) } == 1 {
        // A wait with the wake-up signal blocked: bind the control socket first (as `filtered`).
        super::control::bind_now_and_in_children();
    }
    // SAFETY: copy is a valid sigset_t.
    if unsafe { libc::sigismember(&copy, CR_SIGNUM) } != 1 {
        return None;
    }
    // SAFETY: as above.
    unsafe { libc::sigdelset(&mut copy, CR_SIGNUM) };
    Some(copy)
}

/// `sigsuspend(2)`, never with the checkpoint signal blocked while it waits.
///
/// # Safety
/// As `sigsuspend(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigsuspend(set: *const sigset_t) -> c_int {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    type F = unsafe extern "C" fn(*const sigset_t) -> c_int;
    let copy = mask_without_ours(set);
    let set = copy.as_ref().map_or(set, |c| c as *const sigset_t);
    match next_fn(&NEXT, c"sigsuspend") {
        0 => {
            set_errno(libc::ENOSYS);
            -1
        }
        // SAFETY: the C library's sigsuspend, with the caller's (or a filtered) mask.
        f => unsafe { core::mem::transmute::<usize, F>(f)(set) },
    }
}

/// `ppoll(2)`, never with the checkpoint signal blocked while it waits.
///
/// # Safety
/// As `ppoll(2)`.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const libc::timespec,
    set: *const sigset_t,
) -> c_int {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    type F = unsafe extern "C" fn(
        *mut libc::pollfd,
        libc::nfds_t,
        *const libc::timespec,
        *const sigset_t,
    ) -> c_int;
    let copy = mask_without_ours(set);
    let set = copy.as_ref().map_or(set, |c| c as *const sigset_t);
    match next_fn(&NEXT, c"ppoll") {
        0 => {
            set_errno(libc::ENOSYS);
            -1
        }
        // SAFETY: the C library's ppoll, with the caller's arguments (or a filtered mask).
        f => unsafe { core::mem::transmute::<usize, F>(f)(fds, nfds, timeout, set) },
    }
}

/// `pselect(2)`, never with the checkpoint signal blocked while it waits.
///
/// # Safety
/// As `pselect(2)`.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    set: *const sigset_t,
) -> c_int {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *const libc::timespec,
        *const sigset_t,
    ) -> c_int;
    let copy = mask_without_ours(set);
    let set = copy.as_ref().map_or(set, |c| c as *const sigset_t);
    match next_fn(&NEXT, c"pselect") {
        0 => {
            set_errno(libc::ENOSYS);
            -1
        }
        // SAFETY: the C library's pselect, with the caller's arguments (or a filtered mask).
        f => unsafe { core::mem::transmute::<usize, F>(f)(n, r, w, e, timeout, set) },
    }
}

/// `epoll_pwait(2)`, never with the checkpoint signal blocked while it waits.
///
/// # Safety
/// As `epoll_pwait(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    set: *const sigset_t,
) -> c_int {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    type F =
        unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int, *const sigset_t) -> c_int;
    let copy = mask_without_ours(set);
    let set = copy.as_ref().map_or(set, |c| c as *const sigset_t);
    match next_fn(&NEXT, c"epoll_pwait") {
        0 => {
            set_errno(libc::ENOSYS);
            -1
        }
        // SAFETY: the C library's epoll_pwait, with the caller's arguments (or a filtered mask).
        f => unsafe { core::mem::transmute::<usize, F>(f)(epfd, events, max, timeout, set) },
    }
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
