//! How the control thread comes to exist: lazily, on the first connection to the control socket
//! (issue 11, idle cost), or at once as a glibc thread where the lazy way cannot be prepared.
//!
//! Most processes are never checkpointed, and most fork children exec at once: a thread created
//! in every one of them (and torn down again by `execve`) was most of the agent's cost per
//! fork+exec. So [`prepare`] (at init, a safe context) records the layout of the static TLS
//! (`dl_iterate_phdr`), the listening socket is bound with `O_ASYNC` and `F_SETSIG` = the
//! checkpoint signal, and nothing else happens until a requester connects: the kernel then
//! signals the process, and the checkpoint signal's handler ([`on_connection`]) creates the
//! control thread with raw `clone3` on memory it maps itself.
//!
//! A signal handler may not call `pthread_create` (it allocates, and the interrupted thread may
//! hold the allocator's lock), so the thread is not one glibc made: it runs on a thread block
//! built here the way glibc builds one (static TLS copied from each module's initial image, a
//! `dtv` of its own, the `self` pointers, stack and pointer guards, the tid where glibc keeps it).
//! glibc does not list it among its threads; the control thread calls no allocator and no stdio
//! (it already did not, between quiesce and release), only raw syscalls and libc's thin wrappers
//! (errno lives in its own static TLS). `cr_checkpoint -v` says which way the thread was started.

use crate::sys;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::*};

/// No lazy start armed (the thread runs, or was never wanted in this process).
const IDLE: u32 = 0;
/// The socket signals the first connection; no thread yet.
const ARMED: u32 = 1;
/// A handler is creating the thread.
const STARTING: u32 = 2;
/// The thread was started lazily and runs.
const RUNNING: u32 = 3;

#[link_section = ".data1"]
static STATE: AtomicU32 = AtomicU32::new(IDLE);
/// How the control thread of this process was started (for `-v`): 0 not yet, 1 at once
/// (pthread), 2 on the first connection.
#[link_section = ".data1"]
static HOW: AtomicU32 = AtomicU32::new(0);

/// Modules with static TLS we copy the initial image of.
const MAX_MODULES: usize = 32;
/// Room above the thread pointer for glibc's `struct pthread` (about 2.3 KiB in glibc 2.36).
const TCB_SPACE: usize = 16 * 1024;
/// Entries of the thread's own `dtv` (module ids run from 1; generous, so glibc never grows it).
const DTV_ENTRIES: usize = 256;
/// Stack of the lazily started thread (as the pthread one's).
const STACK: usize = 256 * 1024;
const PAGE: usize = 4096;
/// `TLS_DTV_UNALLOCATED`.
const DTV_UNALLOCATED: usize = usize::MAX;

struct Module {
    /// Thread pointer minus the block's address.
    offset: AtomicUsize,
    image: AtomicUsize,
    filesz: AtomicUsize,
    modid: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_MODULE: Module = Module {
    offset: AtomicUsize::new(0),
    image: AtomicUsize::new(0),
    filesz: AtomicUsize::new(0),
    modid: AtomicUsize::new(0),
};
#[link_section = ".data1"]
static MODULES: [Module; MAX_MODULES] = [NO_MODULE; MAX_MODULES];
#[link_section = ".data1"]
static NMODULES: AtomicUsize = AtomicUsize::new(0);
/// Bytes of static TLS below the thread pointer (page-rounded); 0 = no plan: start at once.
#[link_section = ".data1"]
static STATIC_BELOW: AtomicUsize = AtomicUsize::new(0);
/// `LIBCR_CONTROL_EAGER` asked for a start at once.
#[link_section = ".data1"]
static EAGER_ASKED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// The `dtv` generation the modules were recorded at.
#[link_section = ".data1"]
static DTV_GEN: AtomicUsize = AtomicUsize::new(0);
/// The memory of a lazily started thread (stack, TLS, thread block), to unmap in fork children.
#[link_section = ".data1"]
static REGION: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// glibc's `struct dl_phdr_info` up to the TLS fields.
#[repr(C)]
struct PhdrInfo {
    addr: usize,
    name: *const libc::c_char,
    phdr: *const Phdr,
    phnum: u16,
    adds: u64,
    subs: u64,
    tls_modid: usize,
    tls_data: usize,
}

/// `Elf64_Phdr`.
#[repr(C)]
struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_vaddr: u64,
    p_paddr: u64,
    p_filesz: u64,
    p_memsz: u64,
    p_align: u64,
}

const PT_TLS: u32 = 7;

extern "C" {
    fn dl_iterate_phdr(
        cb: extern "C" fn(*mut PhdrInfo, usize, *mut libc::c_void) -> libc::c_int,
        data: *mut libc::c_void,
    ) -> libc::c_int;
}

/// What [`prepare`] gathers.
struct Scan {
    tp: usize,
    limit: usize,
    below: usize,
    n: usize,
    ok: bool,
}

#[link_section = ".text.hot.libcr_start"]
extern "C" fn each_module(info: *mut PhdrInfo, size: usize, data: *mut libc::c_void) -> i32 {
    // SAFETY: `data` is the Scan `prepare` passed; `info` is glibc's, valid for the call.
    let (scan, info) = unsafe { (&mut *(data as *mut Scan), &*info) };
    if size < core::mem::size_of::<PhdrInfo>() {
        scan.ok = false;
        return 1;
    }
    if info.tls_modid == 0 || info.tls_data == 0 {
        return 0; // no TLS, or TLS not (yet) allocated in this thread: dynamic TLS, left out
    }
    let offset = scan.tp.wrapping_sub(info.tls_data);
    if offset == 0 || offset > scan.limit {
        return 0; // a dynamic TLS block (outside the static area)
    }
    let mut tls = None;
    for i in 0..info.phnum as usize {
        // SAFETY: glibc's program header table of this object, phnum entries.
        let ph = unsafe { &*info.phdr.add(i) };
        if ph.p_type == PT_TLS {
            tls = Some(ph);
        }
    }
    let Some(ph) = tls else { return 0 };
    if scan.n == MAX_MODULES || info.tls_modid >= DTV_ENTRIES || (ph.p_memsz as usize) > offset {
        scan.ok = false;
        return 1;
    }
    let m = &MODULES[scan.n];
    m.offset.store(offset, Relaxed);
    m.image.store(info.addr + ph.p_vaddr as usize, Relaxed);
    m.filesz.store(ph.p_filesz as usize, Relaxed);
    m.modid.store(info.tls_modid, Relaxed);
    scan.n += 1;
    scan.below = scan.below.max(offset);
    0
}

/// Records the static TLS layout (at init, in a safe context), so that the control thread can be
/// started later from a signal handler. Without a layout the thread starts at once.
#[link_section = ".text.hot.libcr_start"]
pub fn prepare() {
    STATIC_BELOW.store(0, Release);
    // SAFETY: getenv with a NUL-terminated name (at init, before the program's threads).
    if !unsafe { libc::getenv(c"LIBCR_CONTROL_EAGER".as_ptr()) }.is_null() {
        EAGER_ASKED.store(true, Release);
        return;
    }
    let tp = sys::get_fs_base();
    if tp == 0 {
        return;
    }
    // glibc's static TLS size bounds which blocks are static (dynamic ones are malloc'd).
    let (mut size, mut align) = (0usize, 0usize);
    // SAFETY: dlsym with a NUL-terminated name; the function, if glibc has it, fills two words.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"_dl_get_tls_static_info".as_ptr());
        if f.is_null() {
            return;
        }
        let f: extern "C" fn(*mut usize, *mut usize) = core::mem::transmute(f);
        f(&mut size, &mut align);
    }
    if size == 0 || align > PAGE {
        return;
    }
    let mut scan = Scan {
        tp,
        limit: size,
        below: 0,
        n: 0,
        ok: true,
    };
    // SAFETY: the callback only reads glibc's records and writes `scan` and MODULES.
    unsafe { dl_iterate_phdr(each_module, &mut scan as *mut Scan as *mut libc::c_void) };
    if !scan.ok || scan.n == 0 {
        return;
    }
    // The generation glibc's dtv of this thread is at (fs:8 points at dtv[0]).
    // SAFETY: the TCB's second word is glibc's dtv pointer; dtv[0] its generation counter.
    let gen = unsafe {
        let dtv = core::ptr::read_volatile((tp + 8) as *const usize);
        if dtv == 0 {
            return;
        }
        core::ptr::read_volatile(dtv as *const usize)
    };
    DTV_GEN.store(gen, Relaxed);
    NMODULES.store(scan.n, Relaxed);
    STATIC_BELOW.store((scan.below.max(size) + PAGE - 1) & !(PAGE - 1), Release);
}

/// Whether the control thread can be started on the first connection in this process.
#[link_section = ".text.hot.libcr_start"]
pub fn lazy_possible() -> bool {
    STATIC_BELOW.load(Acquire) != 0
}

/// The listening socket that signals the first connection (-1: none).
#[link_section = ".data1"]
static ASYNC_FD: AtomicI32 = AtomicI32::new(-1);

/// Socket `fd` signals the first connection from now on (called before it listens).
#[link_section = ".text.hot.libcr_start"]
pub fn arm(fd: i32) {
    ASYNC_FD.store(fd, Release);
    STATE.store(ARMED, Release);
}

/// In a fork child that binds its socket only when woken: the parent's socket (if it had one)
/// is not armed here (only what differs is written).
#[link_section = ".text.hot.libcr_start"]
pub fn forget_socket() {
    if STATE.load(Acquire) != IDLE {
        STATE.store(IDLE, Release);
    }
    if ASYNC_FD.load(Acquire) != -1 {
        ASYNC_FD.store(-1, Release);
    }
}

/// The socket that was armed could not listen.
pub fn disarm() {
    STATE.store(IDLE, Release);
    ASYNC_FD.store(-1, Release);
}

/// Notes that the control thread was started at once (a pthread).
pub fn started_at_once() {
    STATE.store(IDLE, Release);
    HOW.store(1, Release);
}

/// In a fork child: the parent's lazily started thread does not exist here; its memory goes.
#[link_section = ".text.hot.libcr_start"]
pub fn after_fork_child() {
    // (`control::start` arms again; nothing written that is already right.)
    if HOW.load(Acquire) != 0 {
        HOW.store(0, Release);
    }
    if REGION[0].load(Acquire) != 0 {
        let (addr, len) = (REGION[0].swap(0, AcqRel), REGION[1].swap(0, AcqRel));
        sys::munmap(addr, len);
    }
}

/// Appends how the control thread was started to a `-v` report.
pub fn describe(out: &mut sys::StackBuf<240>) {
    out.push(match HOW.load(Acquire) {
        2 => b"control=lazy ".as_slice(),
        1 if !lazy_possible() && !EAGER_ASKED.load(Acquire) => b"control=thread(no TLS layout) ",
        _ => b"control=thread ",
    });
    // The socket is bound on a wake-up (nothing said: the reply has 240 bytes), or at once
    // where the program blocks or ignores the wake-up signal.
    if super::control::lazy_socket() && super::control::bound_at_once() {
        out.push(b"sock=eager ");
    }
}

/// `si_code` of a signal an `O_ASYNC` descriptor sent for input (`POLL_IN`).
const POLL_IN: i32 = 1;

/// Called by the handler of the signal the control socket raises (the wake-up signal or the
/// checkpoint signal, see `control::socket_signal`) with the kernel's `info`: if the signal is
/// the control socket's (`POLL_IN`, `si_fd`), starts the control thread (once) and returns
/// true; false when the signal is the program's. While it does, the signals the program
/// ignores are let through (`quiesce::let_ignored_through_in_handler`, with the handler's `uc`).
///
/// # Safety
/// `info` and `uc` are the kernel's siginfo and ucontext for this handler invocation.
pub unsafe fn on_socket_signal(info: *const libc::siginfo_t, uc: *mut libc::c_void) -> bool {
    // SAFETY: the kernel's siginfo; an O_ASYNC signal's holds si_band (a long) then si_fd at
    // offset 24.
    let (code, fd) = unsafe {
        (
            (*info).si_code,
            core::ptr::read((info as *const u8).add(24) as *const i32),
        )
    };
    if code != POLL_IN || fd < 0 || fd != ASYNC_FD.load(Acquire) {
        return false;
    }
    super::quiesce::let_ignored_through_in_handler(uc);
    on_connection(fd)
}

/// Starts the control thread if the armed socket has a connection waiting (a non-blocking
/// `poll`): for a socket signal that the kernel merged with another of the same standard
/// signal, or dropped when the program set that signal to be ignored. False when nothing was
/// waiting (or no socket is armed).
pub fn start_if_waiting() -> bool {
    let fd = ASYNC_FD.load(Acquire);
    if fd < 0 || STATE.load(Acquire) != ARMED {
        return false;
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let n = sys::sys3(libc::SYS_poll as usize, &mut p as *mut _ as usize, 1, 0);
    n == Ok(1) && p.revents & libc::POLLIN != 0 && on_connection(fd)
}

/// The control socket was switched from signal 64 to the wake-up signal for an exec
/// ([`before_exec`]).
static SWITCHED_FOR_EXEC: AtomicU32 = AtomicU32::new(0);

/// Before an exec (`execgate`, the calling thread counted in flight): a socket armed to raise
/// signal 64 on its first connection (the program ignores or blocks the wake-up signal, so it
/// was bound at once) raises the wake-up signal until [`after_failed_exec`]: signal 64 from a
/// connection that meets the exec would stay pending across it and kill the new program (the
/// handler is the default then), the wake-up signal is ignored or held, and dropped by the new
/// program's default. A connection meanwhile is served when the exec fails, and closed by it
/// when it succeeds (the requester then asks the new program).
#[link_section = ".text.hot.libcr_start"]
pub fn before_exec() {
    let fd = ASYNC_FD.load(Acquire);
    if fd < 0 || STATE.load(Acquire) != ARMED {
        return;
    }
    if sys::fcntl(fd, sys::fcntl_cmd::F_GETSIG, 0) != Ok(super::quiesce::CR_SIGNUM as usize) {
        return;
    }
    SWITCHED_FOR_EXEC.store(1, Release);
    let _ = sys::fcntl(
        fd,
        sys::fcntl_cmd::F_SETSIG,
        crate::protocol::WAKE_SIGNAL as usize,
    );
}

/// After a failed exec with none in flight any more: signal 64 again for a socket
/// [`before_exec`] switched, and a connection that came meanwhile is served.
pub fn after_failed_exec() {
    if SWITCHED_FOR_EXEC.swap(0, AcqRel) == 0 {
        return;
    }
    signal_connections_with_64(ASYNC_FD.load(Acquire));
}

/// Has control socket `fd` (if any, -1: none) raise signal 64 for its connections from now on,
/// and serves a connection that came while it raised another signal (or none).
pub fn signal_connections_with_64(fd: i32) {
    if fd >= 0 {
        let _ = sys::fcntl(
            fd,
            sys::fcntl_cmd::F_SETSIG,
            super::quiesce::CR_SIGNUM as usize,
        );
        start_if_waiting();
    }
}

/// Starts the control thread for a connection on descriptor `fd` if it is the armed control
/// socket (once) and returns true; false when `fd` is not the control socket.
pub fn on_connection(fd: i32) -> bool {
    if fd < 0 || fd != ASYNC_FD.load(Acquire) {
        return false;
    }
    if super::execgate::in_vfork_child() {
        return true; // the parent's socket and state: its own thread starts it
    }
    if STATE
        .compare_exchange(ARMED, STARTING, AcqRel, Acquire)
        .is_ok()
        && !spawn()
    {
        STATE.store(ARMED, Release); // the next connection tries again
    }
    true
}

/// Creates the control thread on memory of its own (async-signal-safe: raw syscalls only).
fn spawn() -> bool {
    let below = STATIC_BELOW.load(Acquire);
    if below == 0 {
        return false;
    }
    let dtv_bytes = (DTV_ENTRIES + 2) * 16;
    let len = PAGE + STACK + below + TCB_SPACE + ((dtv_bytes + PAGE - 1) & !(PAGE - 1));
    let Ok(base) = sys::mmap_anon(len) else {
        return false;
    };
    // A guard page under the stack.
    let _ = sys::sys3(libc::SYS_mprotect as usize, base, PAGE, 0);
    let stack = base + PAGE;
    let tp = stack + STACK + below;
    let dtv = tp + TCB_SPACE;
    // SAFETY: every address written below lies in the fresh mapping [base, base + len); the
    // initial images are the modules' read-only PT_TLS contents, `filesz` bytes each.
    unsafe {
        for m in &MODULES[..NMODULES.load(Relaxed)] {
            let (off, img, n) = (
                m.offset.load(Relaxed),
                m.image.load(Relaxed),
                m.filesz.load(Relaxed),
            );
            core::ptr::copy_nonoverlapping(img as *const u8, (tp - off) as *mut u8, n);
        }
        let w = |addr: usize, v: usize| core::ptr::write(addr as *mut usize, v);
        // dtv[-1] = its length, dtv[0] = generation, dtv[i] = {block, to_free}.
        w(dtv, DTV_ENTRIES);
        w(dtv + 16, DTV_GEN.load(Relaxed));
        for i in 1..DTV_ENTRIES {
            w(dtv + 16 + i * 16, DTV_UNALLOCATED);
        }
        for m in &MODULES[..NMODULES.load(Relaxed)] {
            let id = m.modid.load(Relaxed);
            w(dtv + 16 + id * 16, tp - m.offset.load(Relaxed));
        }
        // glibc's tcbhead_t: tcb, dtv, self, multiple_threads, gscope_flag, sysinfo,
        // stack_guard (0x28), pointer_guard (0x30).
        let cur = sys::get_fs_base();
        w(tp, tp);
        w(tp + 8, dtv + 16);
        w(tp + 16, tp);
        w(tp + 24, 1);
        w(tp + 0x28, core::ptr::read((cur + 0x28) as *const usize));
        w(tp + 0x30, core::ptr::read((cur + 0x30) as *const usize));
    }
    let tid_off = super::TID_OFFSET.load(Relaxed);
    let mut flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS) as u64;
    if tid_off != 0 && tid_off + 4 <= TCB_SPACE {
        flags |= libc::CLONE_PARENT_SETTID as u64;
    }
    let args = crate::arch::CloneArgs {
        flags,
        parent_tid: (tp + tid_off) as u64,
        stack: stack as u64,
        stack_size: STACK as u64,
        tls: tp as u64,
        ..Default::default()
    };
    REGION[0].store(base, Release);
    REGION[1].store(len, Release);
    // The new thread inherits this mask: every signal blocked but the ignored ones (blocked,
    // one sent meanwhile would be queued and wake another thread's `epoll_wait` with EINTR:
    // clone3 takes milliseconds under load); the control thread blocks them too first thing.
    let mask = super::quiesce::block_all_but_ignored();
    // SAFETY: the stack is ours and unused; `entry` never returns.
    let r = unsafe { crate::arch::clone3_call(&args, entry, 0) };
    sys::sigprocmask_raw(libc::SIG_SETMASK, Some(mask));
    if r < 0 {
        REGION[0].store(0, Release);
        sys::munmap(base, len);
        return false;
    }
    true
}

extern "C" fn entry(_: usize) -> ! {
    HOW.store(2, Release);
    STATE.store(RUNNING, Release);
    // No more signals per connection: the thread accepts them now. (The signal may have come
    // before `control::start` stored the descriptor.)
    let fd = ASYNC_FD.load(Acquire);
    let _ = super::control::LISTEN_FD.compare_exchange(-1, fd, AcqRel, Acquire);
    if let Ok(fl) = sys::fcntl(fd, libc::F_GETFL, 0) {
        let _ = sys::fcntl(fd, libc::F_SETFL, fl & !(libc::O_ASYNC as usize));
    }
    super::control::control_main(core::ptr::null_mut());
    loop {
        // Only this thread ends (its memory stays: it is tiny, and nothing else knows it).
        let _ = sys::sys3(libc::SYS_exit as usize, 0, 0, 0);
    }
}
