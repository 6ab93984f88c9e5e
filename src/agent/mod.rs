//! The in-process agent: everything that runs inside a checkpointable program.
//!
//! Data flow of a checkpoint (see docs/ARCHITECTURE.md):
//! `control` (request on the control socket) → `quiesce` (every thread parks in the signal
//! handler) → `image` (process state, `fds`, `memory` written to the passed descriptor) → commit
//! and release. A restored process enters at `resume::restart_entry` and goes back through
//! `quiesce`'s handler, which returns into the program.

pub mod aio;
pub mod bounce;
pub mod control;
pub mod cow;
pub mod created;
pub mod ctlstart;
pub mod deltabuf;
pub mod execgate;
pub mod fds;
pub mod forward;
pub mod image;
pub mod incremental;
pub mod interpose;
pub mod lazy;
pub mod memory;
pub mod netmap;
pub mod offload;
pub mod pending;
pub mod process;
pub mod quiesce;
pub mod resume;
pub mod scratch;
pub mod sysvmsg;
pub mod sysvsem;
pub mod zpack;

use crate::sys;
use core::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicUsize, Ordering::*};

/// Offset of the tid field in glibc's `struct pthread` (found at init; 0 = unknown).
#[link_section = ".data1"]
pub static TID_OFFSET: AtomicUsize = AtomicUsize::new(0);
/// glibc's `__rseq_offset` (thread pointer to rseq area).
#[link_section = ".data1"]
pub static RSEQ_OFFSET: AtomicIsize = AtomicIsize::new(0);
/// glibc's `__rseq_size` (0 = rseq not registered by glibc).
#[link_section = ".data1"]
pub static RSEQ_SIZE: AtomicU32 = AtomicU32::new(0);
/// The signature glibc registers rseq areas with.
pub const RSEQ_SIG: u32 = 0x5305_3053;
/// The calling thread's rseq registration, suspended while it is alive.
///
/// The kernel writes a registered thread's rseq area (`cpu_id_start`, `cpu_id`, `node_id`,
/// `mm_cid`) each time the thread returns to user space after it was preempted or moved to
/// another CPU. The control thread's area lies in its TLS, which is part of the image: while it
/// writes the page data on a busy machine, those bytes change between the moment a piece is
/// hashed and the moment the disk (or a pipe) reads it, and the image fails its checksum at
/// restart. The control thread of a restored process has a registration (`resume` registers
/// one for every thread), and so has a control thread that is a pthread (glibc registers it).
/// Unregistering stops the kernel's writes (it leaves `cpu_id` at -1, "not registered", which
/// is what glibc's readers expect then); the registration comes back when this is dropped.
pub struct RseqPause {
    /// The area and the length it was registered with (0: nothing was registered).
    area: usize,
    len: usize,
}

/// `rseq(2)`'s flag to unregister.
const RSEQ_FLAG_UNREGISTER: usize = 1;

impl RseqPause {
    /// Unregisters the calling thread's rseq area (glibc's place in its TLS), if it has one.
    pub fn suspend() -> RseqPause {
        let size = RSEQ_SIZE.load(Relaxed) as usize;
        let fs = sys::get_fs_base();
        if size == 0 || fs == 0 {
            return RseqPause { area: 0, len: 0 };
        }
        let area = (fs as isize + RSEQ_OFFSET.load(Relaxed)) as usize;
        // glibc and `resume` register max(__rseq_size, 32) bytes; glibc before 2.40 always 32.
        for len in [size.max(32), 32] {
            let r = sys::sys6(
                libc::SYS_rseq as usize,
                area,
                len,
                RSEQ_FLAG_UNREGISTER,
                RSEQ_SIG as usize,
                0,
                0,
            );
            if r.is_ok() {
                return RseqPause { area, len };
            }
        }
        RseqPause { area: 0, len: 0 }
    }
}

impl Drop for RseqPause {
    fn drop(&mut self) {
        if self.area != 0 {
            let _ = sys::sys6(
                libc::SYS_rseq as usize,
                self.area,
                self.len,
                0,
                RSEQ_SIG as usize,
                0,
                0,
            );
        }
    }
}

/// Whether the agent is set up in this process.
#[link_section = ".data1"]
pub static INITIALIZED: AtomicBool = AtomicBool::new(false);

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

#[link_section = ".text.hot.libcr_start"]
extern "C" fn constructor() {
    if !is_tool() {
        init();
    }
}

/// Whether this process is one of our own tools: the agent stays dormant there, also when
/// LD_PRELOAD brings libcr in. The executable's name is checked first (no cost for programs);
/// only a tool's name is confirmed by the `libcr_tool_marker` symbol the tools export.
#[link_section = ".text.hot.libcr_start"]
fn is_tool() -> bool {
    // SAFETY: getauxval has no preconditions; AT_EXECFN is a NUL-terminated string or 0.
    let execfn = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const libc::c_char;
    if execfn.is_null() {
        return false;
    }
    // SAFETY: the kernel put a NUL-terminated path there.
    let path = unsafe { core::ffi::CStr::from_ptr(execfn) }.to_bytes();
    let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    if !matches!(base, b"cr_run" | b"cr_checkpoint" | b"cr_restart") && !base.starts_with(b"cr_") {
        return false;
    }
    // SAFETY: dlsym with a NUL-terminated name.
    !unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"libcr_tool_marker".as_ptr()) }.is_null()
}

extern "C" {
    /// glibc's fork handler registration behind `pthread_atfork`.
    fn __register_atfork(
        prepare: Option<extern "C" fn()>,
        parent: Option<extern "C" fn()>,
        child: Option<extern "C" fn()>,
        dso: *const u8,
    ) -> libc::c_int;
    /// This module's handle (the C runtime's start files define it), for `__register_atfork`.
    static __dso_handle: u8;
    /// glibc (2.35+): offset of the rseq area from the thread pointer.
    static __rseq_offset: isize;
    /// glibc (2.35+): size of the registered rseq area (0 if glibc did not register one).
    static __rseq_size: u32;
}

/// glibc's rseq area offset (from the thread pointer) and size (0 = not registered).
pub fn glibc_rseq() -> (isize, u32) {
    // SAFETY: glibc's exported read-only variables, set before any constructor runs.
    unsafe { (__rseq_offset, __rseq_size) }
}

/// Finds the offset of the tid in the calling thread's TCB.
#[link_section = ".text.hot.libcr_start"]
fn find_tid_offset(fs: usize, tid: i32, start: usize) -> usize {
    let mut off = start;
    while off < 2048 {
        // SAFETY: glibc's struct pthread spans well over 2 KiB from the thread pointer.
        if unsafe { core::ptr::read_volatile((fs + off) as *const i32) } == tid {
            return off;
        }
        off += 4;
    }
    0
}

/// Checks the tid offset in a second thread (the control thread); searches again if it differs.
pub(crate) fn verify_tid_offset() {
    let fs = sys::get_fs_base();
    let tid = sys::gettid();
    let off = TID_OFFSET.load(Relaxed);
    // SAFETY: as in find_tid_offset.
    if off != 0 && unsafe { core::ptr::read_volatile((fs + off) as *const i32) } == tid {
        return;
    }
    TID_OFFSET.store(find_tid_offset(fs, tid, 16), Relaxed);
}

/// [`env_at_init`] read as a number of milliseconds (its leading digits), in nanoseconds; 0
/// when unset. For the `LIBCR_TEST_*_MS` knobs.
pub fn env_ms_at_init(name: &core::ffi::CStr) -> u64 {
    env_at_init(name).map_or(0, |s| {
        s.iter()
            .take_while(|c| c.is_ascii_digit())
            .fold(0u64, |v, &c| {
                v.saturating_mul(10).saturating_add((c - b'0') as u64)
            })
            .saturating_mul(1_000_000)
    })
}

/// The value of environment variable `name` as the agent's knobs read it at start-up (before
/// the program's threads: `getenv` is not safe beside a `setenv`), `None` when unset.
pub fn env_at_init(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv with a NUL-terminated name (at init, before the program's threads).
    let v = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated string, left in place by the
    // program's environment for as long as nobody changes that variable.
    (!v.is_null()).then(|| unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes())
}

/// Sets the agent up (idempotent): checkpoint signal handler, fork handling, control thread.
#[link_section = ".text.hot.libcr_start"]
pub fn init() -> bool {
    if INITIALIZED.swap(true, AcqRel) {
        return true;
    }
    let mut cookie = [0u8; 8];
    let _ = sys::sys3(
        libc::SYS_getrandom as usize,
        cookie.as_mut_ptr() as usize,
        8,
        0,
    );
    let cookie = u64::from_ne_bytes(cookie) | 1;
    quiesce::COOKIE.store(cookie, Relaxed);
    let (off, size) = glibc_rseq();
    RSEQ_OFFSET.store(off, Relaxed);

    RSEQ_SIZE.store(size, Relaxed);

    let fs = sys::get_fs_base();
    if fs != 0 {
        TID_OFFSET.store(find_tid_offset(fs, sys::gettid(), 16), Relaxed);
    }
    quiesce::find_ignored();
    install_handler();
    // SAFETY: registering plain functions as the fork handlers, for this library
    // (`__dso_handle`): what `pthread_atfork` (a libc_nonshared.a stub linked elsewhere in our
    // text) does, without touching one more page of code in every process.
    unsafe {
        __register_atfork(
            Some(control::before_fork),
            None,
            Some(after_fork_child),
            &__dso_handle,
        )
    };
    ctlstart::prepare();
    offload::init();
    zpack::init();
    bounce::init();
    quiesce::init_test_knobs();
    control::init_test_knobs();
    // The control socket is bound on the first wake-up where the control thread can start on
    // the first connection (issue 11, idle cost; docs/ARCHITECTURE.md, "Start-up").
    if ctlstart::lazy_possible() {
        control::set_lazy_socket(true);
        if !interpose::install_wake_handler() {
            control::set_lazy_socket(false);
        }
    }
    control::start(false);
    // A wake-up signal blocked since before exec would never arrive: bind now.
    if control::lazy_socket()
        && sys::sigprocmask_raw(libc::SIG_BLOCK, None)
            & (1u64 << (crate::protocol::WAKE_SIGNAL - 1))
            != 0
    {
        control::bind_now_and_in_children();
    }
    true
}

/// Installs the checkpoint signal handler (raw `rt_sigaction`, our own restorer).
#[link_section = ".text.hot.libcr_start"]
pub(crate) fn install_handler() {
    let act = process::KSigaction {
        handler: quiesce::on_signal as *const () as usize as u64,
        flags: (libc::SA_SIGINFO | libc::SA_RESTART | 0x0400_0000) as u64,
        restorer: crate::arch::sigreturn_restorer() as u64,
        mask: quiesce::handler_mask(),
    };
    let _ = sys::sys6(
        libc::SYS_rt_sigaction as usize,
        quiesce::CR_SIGNUM as usize,
        &act as *const _ as usize,
        0,
        8,
        0,
        0,
    );
}

#[link_section = ".text.hot.libcr_start"]
extern "C" fn after_fork_child() {
    if !INITIALIZED.load(Acquire) {
        return;
    }
    // Only what differs is written (here and in the calls below): a fork child that execs at once
    // then copies none of our pages (issue 11, idle cost).
    if quiesce::NSLOTS.load(Acquire) != 0 {
        quiesce::NSLOTS.store(0, Release);
    }
    ctlstart::after_fork_child();
    execgate::after_fork_child();
    control::forget_request_fds();
    scratch::forget_in_child();
    aio::forget_deferred();
    offload::forget_in_child();
    incremental::after_fork_child();
    crate::api::reset_after_fork();
    // A child forked to become a restored process must stay single-threaded.
    if !crate::api::requests::forking_for_restore() {
        control::start(true);
    }
}

/// Whether every checkpoint request leaves this process out (`cr_run --omit`).
pub static OMITTED: AtomicBool = AtomicBool::new(false);

/// Called by `libcr_omit.so.0`: from now on this process is left out of every checkpoint.
#[no_mangle]
pub extern "C" fn cri_agent_omit(on: libc::c_int) {
    OMITTED.store(on != 0, Release);
}

/// Tells whether the checkpoint signal is reserved (the agent is active) in this process.
pub fn active() -> bool {
    INITIALIZED.load(Acquire)
}

/// Pid the agent signals use (kept for the API's `cri_signum`).
pub const SIGNUM: i32 = quiesce::CR_SIGNUM;
