//! The exec gate (issue 13): the checkpoint's stop signal never reaches a thread inside `execve`.
//!
//! The control thread stops the program by queueing signal 64 to each of its threads
//! (`quiesce`). A thread inside `execve` when it arrives keeps it pending across the exec, the
//! exec resets every handler to the default, and the new program is killed by "Real-time signal
//! 30" before its first instruction: a child of the user's job lost (a shell's child
//! checkpointed as it exec'd its command). So the exec calls take part in the stop. One futex
//! word, [`GATE`], holds how many threads are inside an exec ("in flight") and a bit,
//! [`STOPPING`], that a stop is in progress:
//! - an exec wrapper, before the real call: while the bit is set, waits on the word (signal 64
//!   is never blocked there, so the stop parks the thread in the handler as usual, and it goes
//!   on once the checkpoint releases it); else counts itself in (compare-and-swap) and calls
//!   the kernel; when the call fails, counts itself out and wakes the control thread;
//! - the control thread, before it sends any stop signal ([`close_for_stop`], from
//!   `quiesce::quiesce`): sets the bit only while the count is 0; while an exec is in flight it
//!   waits for it. Either the exec fails (the count drops) or the process is replaced and the
//!   control thread with it: the requester sees the exec (`cr_checkpoint -p`: "ran exec during
//!   the checkpoint", one line; a tree checkpoint asks the new program again);
//! - `quiesce::release` clears the bit ([`open`]) on every way out (a checkpoint written,
//!   failed, given up, its requester killed, a restart finished); a fork child starts with the
//!   word clear ([`after_fork_child`]), as does a restored process at its release (its image
//!   has the bit set, never a count: the bit is only set at count 0).
//!
//! Not through the gate: a `vfork` child (it shares its parent's memory: its count would stay
//! the parent's when its exec succeeds; told by glibc's thread block, which holds the parent
//! thread's tid there, [`owns_thread_block`]), a thread inside the checkpoint handler of the
//! stop in progress (a signal-context callback that execs: it already took its signal), and
//! `posix_spawn`/`system`/`popen`, whose child glibc creates with its own internal calls (it is
//! another process: the stop signal to our threads cannot reach it).
//!
//! The exec family is implemented here on the system calls themselves, as glibc 2.36 does it
//! (`execve`, `execveat` are the calls; `execv`, `execl`, `execle` the same with `environ` or
//! the argument list; `execvp`, `execvpe`, `execlp` search `PATH` with glibc's rules, `ENOEXEC`
//! running the file with `/bin/sh`; `fexecve` is `execveat(fd, "", …, AT_EMPTY_PATH)`): glibc's
//! own versions call its internal `__execve`, which no wrapper sees, and looking up the next
//! definition (`dlsym`) takes the loader's lock, in a fork or vfork child too. So a library
//! preloaded after libcr does not see the program's exec calls. No allocation (an argument list
//! longer than 256 for `execl*` or a `/bin/sh` fallback is built in memory mapped for it), no
//! lock, `errno` as glibc sets it. The preload stubs forward these calls to libcr's through
//! [`cri_exec_table`], looked up once at their start.

use crate::sys;
use core::ffi::{c_char, c_int, CStr};
use core::sync::atomic::{AtomicU32, Ordering::*};

/// Bit of [`GATE`]: a stop is in progress (no exec may start).
const STOPPING: u32 = 1 << 31;
/// Bits of [`GATE`]: the threads inside an exec.
const IN_FLIGHT: u32 = STOPPING - 1;

/// Futex word: execs in flight ([`IN_FLIGHT`]) and [`STOPPING`].
#[link_section = ".data1"]
static GATE: AtomicU32 = AtomicU32::new(0);

type Argv = *const *const c_char;

extern "C" {
    /// The C library's environment (what `execv`, `execl`, `execvp` and `execlp` pass on).
    static environ: Argv;
}

/// Whether the calling thread runs on its own glibc thread block: glibc's `fork` and
/// `pthread_create` have the kernel write the new tid there, `vfork` (and `posix_spawn`'s
/// clone) leave the parent thread's. False also where the tid's place is unknown.
#[link_section = ".text.hot.libcr_start"]
fn owns_thread_block() -> bool {
    let off = super::TID_OFFSET.load(Relaxed);
    let fs = sys::get_fs_base();
    // SAFETY: glibc's struct pthread spans well over TID_OFFSET from the thread pointer.
    off != 0
        && fs != 0
        && unsafe { core::ptr::read_volatile((fs + off) as *const i32) } == sys::gettid()
}

/// Whether the calling task is a `vfork` child (or `posix_spawn`'s): it runs on its parent's
/// thread block (the parent thread's tid is there, see [`owns_thread_block`]) and shares the
/// parent's memory, so a signal handler of ours there must leave the agent's state alone. A tree
/// checkpoint's wake-up reached such a child (a member of the tree for a moment): its handler
/// found the parent's armed control socket (the same open file description) with a connection
/// waiting and started the parent's control thread inside the child, whose exec then ended it;
/// the parent's lazy start stayed "starting" for good and never served a request again
/// (tests/faults.rs `checkpoint_during_vfork_exec_churn`, docs/RELIABILITY.md). False where the
/// tid's place is unknown.
#[link_section = ".text.hot.libcr_start"]
pub(crate) fn in_vfork_child() -> bool {
    let off = super::TID_OFFSET.load(Relaxed);
    let fs = sys::get_fs_base();
    // SAFETY: glibc's struct pthread spans well over TID_OFFSET from the thread pointer.
    off != 0
        && fs != 0
        && unsafe { core::ptr::read_volatile((fs + off) as *const i32) } != sys::gettid()
}

/// Counts the calling thread in as about to exec, after any stop in progress released it;
/// returns whether it did (then it counts itself out with [`leave`] if the exec fails).
#[link_section = ".text.hot.libcr_start"]
fn enter() -> bool {
    if !super::active() || !owns_thread_block() {
        return false;
    }
    let mut tid = 0;
    loop {
        let w = GATE.load(Acquire);
        if w & STOPPING == 0 {
            if GATE
                .compare_exchange_weak(w, w + 1, AcqRel, Acquire)
                .is_ok()
            {
                return true;
            }
            continue;
        }
        if tid == 0 {
            tid = sys::gettid();
        }
        // Inside the checkpoint handler of this stop (a signal-context callback): its signal
        // was taken, no other comes; waiting here would hold the stop up.
        if super::quiesce::stopping_here(tid) {
            return false;
        }
        // Signal 64 reaches the thread here (never blocked by the program's calls): it parks
        // in the handler, and goes on when the checkpoint releases it.
        let _ = sys::futex_wait(&GATE, w, None);
    }
}

/// Counts the calling thread out after a failed exec and wakes a control thread waiting for it.
#[link_section = ".text.hot.libcr_start"]
fn leave() {
    GATE.fetch_sub(1, AcqRel);
    sys::futex_wake_all(&GATE);
}

/// Closes the gate for a stop (the control thread, before its first stop signal): waits until
/// no exec is in flight, at most until `deadline_ns`, then sets [`STOPPING`]. `Err(n)`: `n`
/// execs still in flight at the deadline; `Err(0)`: `give_up` said to stop waiting.
pub(crate) fn close_for_stop(
    deadline_ns: u64,
    mut give_up: impl FnMut() -> bool,
) -> Result<(), u32> {
    loop {
        let w = GATE.load(Acquire);
        if w & IN_FLIGHT == 0 {
            if GATE
                .compare_exchange(w, w | STOPPING, AcqRel, Acquire)
                .is_ok()
            {
                return Ok(());
            }
            continue;
        }
        let now = sys::monotonic_ns();
        if now >= deadline_ns {
            return Err(w & IN_FLIGHT);
        }
        // Woken by a failed exec; a successful one ends this thread with the process image.
        let _ = sys::futex_wait(&GATE, w, Some((deadline_ns - now).min(20_000_000)));
        if give_up() {
            return Err(0);
        }
    }
}

/// Opens the gate after a stop (`quiesce::release`): waiting execs go on.
pub(crate) fn open() {
    if GATE.fetch_and(!STOPPING, AcqRel) & STOPPING != 0 {
        sys::futex_wake_all(&GATE);
    }
}

/// In a fork child: no exec of the parent's other threads is this process's (written only when
/// not clear already: a child that execs at once copies none of our pages).
#[link_section = ".text.hot.libcr_start"]
pub(crate) fn after_fork_child() {
    if GATE.load(Relaxed) != 0 {
        GATE.store(0, Release);
    }
}

/// Sets `errno`.
#[link_section = ".text.hot.libcr_start"]
fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// Runs `exec` (system calls that return only on failure, with `-errno`) through the gate;
/// returns -1 with `errno` set, as the C library's exec calls do.
#[link_section = ".text.hot.libcr_start"]
fn gated(exec: impl FnOnce() -> isize) -> c_int {
    let counted = enter();
    if counted {
        // A control socket that raises signal 64 on its first connection raises the wake-up
        // signal while the exec runs (`ctlstart::before_exec`).
        super::ctlstart::before_exec();
    }
    let r = exec();
    if counted {
        leave();
        if GATE.load(Acquire) & IN_FLIGHT == 0 {
            super::ctlstart::after_failed_exec();
        }
    }
    set_errno(-r as c_int);
    -1
}

/// `execve(2)` itself: `-errno` (it returns only on failure).
#[link_section = ".text.hot.libcr_start"]
fn sys_execve(path: *const c_char, argv: Argv, envp: Argv) -> isize {
    sys::raw6(
        libc::SYS_execve as usize,
        path as usize,
        argv as usize,
        envp as usize,
        0,
        0,
        0,
    )
}

/// `execveat(2)` itself: `-errno`.
#[link_section = ".text.hot.libcr_start"]
fn sys_execveat(dirfd: c_int, path: *const c_char, argv: Argv, envp: Argv, flags: c_int) -> isize {
    sys::raw6(
        libc::SYS_execveat as usize,
        dirfd as isize as usize,
        path as usize,
        argv as usize,
        envp as usize,
        flags as usize,
        0,
    )
}

/// Pointers of an argument list built for a call: on the stack up to [`ON_STACK`], else in
/// memory mapped for it (unmapped when the exec failed).
const ON_STACK: usize = 256;

/// Calls `f` with room for `n` pointers; `-ENOMEM` when it cannot be had.
#[link_section = ".text.hot.libcr_start"]
fn with_pointers(n: usize, f: impl FnOnce(&mut [*const c_char]) -> isize) -> isize {
    if n <= ON_STACK {
        let mut buf = [core::ptr::null::<c_char>(); ON_STACK];
        return f(&mut buf[..n]);
    }
    let Some(len) = n.checked_mul(8) else {
        return -(libc::E2BIG as isize);
    };
    let Ok(addr) = sys::mmap_anon(len) else {
        return -(libc::ENOMEM as isize);
    };
    // SAFETY: `len` bytes just mapped, readable and writable, aligned for pointers.
    let buf = unsafe { core::slice::from_raw_parts_mut(addr as *mut *const c_char, n) };
    let r = f(buf);
    sys::munmap(addr, len);
    r
}

/// glibc's `maybe_script_execute`: a file the kernel would not run (`ENOEXEC`) is run by
/// `/bin/sh` with the file and the rest of the arguments; returns its `-errno`.
#[link_section = ".text.hot.libcr_start"]
fn run_with_shell(file: *const c_char, argv: Argv, envp: Argv) -> isize {
    let mut argc = 0usize;
    // SAFETY: argv is the caller's NULL-terminated list (the kernel read it already).
    while !unsafe { *argv.add(argc) }.is_null() {
        argc += 1;
        if argc == i32::MAX as usize - 1 {
            return -(libc::E2BIG as isize);
        }
    }
    // /bin/sh, the file, argv[1..], NULL.
    let n = if argc > 1 { argc + 2 } else { 3 };
    with_pointers(n, |new| {
        new[0] = c"/bin/sh".as_ptr();
        new[1] = file;
        for (i, slot) in new[2..n - 1].iter_mut().enumerate() {
            // SAFETY: i + 1 < argc, inside the caller's list.
            *slot = unsafe { *argv.add(i + 1) };
        }
        new[n - 1] = core::ptr::null();
        sys_execve(new[0], new.as_ptr(), envp)
    })
}

/// glibc's `__execvpe_common` with scripts run by `/bin/sh`: `file` as it is when it holds a
/// `/`, else each entry of `PATH` (`/bin:/usr/bin` without one; an empty entry is the working
/// directory) until one runs; `EACCES` if one was found but refused, else the last error.
#[link_section = ".text.hot.libcr_start"]
fn search_and_exec(file: *const c_char, argv: Argv, envp: Argv) -> isize {
    // SAFETY: the caller's NUL-terminated file name.
    let name = unsafe { CStr::from_ptr(file) }.to_bytes();
    if name.is_empty() {
        return -(libc::ENOENT as isize);
    }
    if name.contains(&b'/') {
        let mut r = sys_execve(file, argv, envp);
        if r == -(libc::ENOEXEC as isize) {
            r = run_with_shell(file, argv, envp);
        }
        return r;
    }
    // NAME_MAX (glibc's bound too: its buffer is on the stack).
    if name.len() > 255 {
        return -(libc::ENAMETOOLONG as isize);
    }
    // SAFETY: getenv reads the environment in place (no lock, no allocation).
    let p = unsafe { libc::getenv(c"PATH".as_ptr()) };
    let path: &[u8] = if p.is_null() {
        b"/bin:/usr/bin"
    } else {
        // SAFETY: getenv returned a NUL-terminated value.
        unsafe { CStr::from_ptr(p) }.to_bytes()
    };
    let mut buf = [0u8; libc::PATH_MAX as usize + 256 + 2];
    let mut got_eacces = false;
    let mut last = -(libc::ENOENT as isize);
    for dir in path.split(|&b| b == b':') {
        // An entry too long for a path (glibc skips it too).
        if dir.len() >= libc::PATH_MAX as usize {
            continue;
        }
        let mut len = dir.len();
        buf[..len].copy_from_slice(dir);
        if len > 0 {
            buf[len] = b'/';
            len += 1;
        }
        buf[len..len + name.len()].copy_from_slice(name);
        buf[len + name.len()] = 0;
        let candidate = buf.as_ptr() as *const c_char;
        let mut r = sys_execve(candidate, argv, envp);
        if r == -(libc::ENOEXEC as isize) {
            r = run_with_shell(candidate, argv, envp);
        }
        last = r;
        match (-r) as c_int {
            libc::EACCES => got_eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return r,
        }
    }
    if got_eacces {
        -(libc::EACCES as isize)
    } else {
        last
    }
}

/// Declares exec call `$name` (exported: the program's calls come here under `-lcr` or a
/// direct preload) and `$inner`, the same, not exported: [`cri_exec_table`] holds it, as an
/// address of the exported name would be resolved to the first definition in the process (the
/// preload stub's, which forwards to the table: a loop).
macro_rules! exec_call {
    ($(#[$doc:meta])* $name:ident, $inner:ident, ($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C library's function.
        #[no_mangle]
        #[link_section = ".text.hot.libcr_start"]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            // SAFETY: the caller's promise, passed on.
            unsafe { $inner($($arg),*) }
        }

        #[link_section = ".text.hot.libcr_start"]
        unsafe extern "C" fn $inner($($arg: $ty),*) -> c_int $body
    };
}

exec_call!(
    /// `execve(2)` through the exec gate.
    execve, execve_inner, (path: *const c_char, argv: Argv, envp: Argv) {
        gated(|| sys_execve(path, argv, envp))
    }
);

exec_call!(
    /// `execv(3)` through the exec gate.
    execv, execv_inner, (path: *const c_char, argv: Argv) {
        // SAFETY: reading the C library's environment pointer.
        let envp = unsafe { environ };
        gated(|| sys_execve(path, argv, envp))
    }
);

exec_call!(
    /// `execvpe(3)` through the exec gate.
    execvpe, execvpe_inner, (file: *const c_char, argv: Argv, envp: Argv) {
        gated(|| search_and_exec(file, argv, envp))
    }
);

exec_call!(
    /// `execvp(3)` through the exec gate.
    execvp, execvp_inner, (file: *const c_char, argv: Argv) {
        // SAFETY: reading the C library's environment pointer.
        let envp = unsafe { environ };
        gated(|| search_and_exec(file, argv, envp))
    }
);

exec_call!(
    /// `fexecve(3)` through the exec gate: `execveat(fd, "", …, AT_EMPTY_PATH)`, or
    /// `/proc/self/fd/FD` where the kernel has no `execveat`.
    fexecve, fexecve_inner, (fd: c_int, argv: Argv, envp: Argv) {
        if fd < 0 || argv.is_null() || envp.is_null() {
            set_errno(libc::EINVAL);
            return -1;
        }
        gated(|| {
            let r = sys_execveat(fd, c"".as_ptr(), argv, envp, libc::AT_EMPTY_PATH);
            if r != -(libc::ENOSYS as isize) {
                return r;
            }
            let mut p = sys::StackBuf::<64>::new();
            p.push(b"/proc/self/fd/").num(fd as u64);
            let r = sys_execve(p.as_cstr().as_ptr() as *const c_char, argv, envp);
            match sys::stat(b"/proc/self/fd\0", 0) {
                Err(sys::Errno(libc::ENOENT)) => -(libc::ENOSYS as isize),
                _ => r,
            }
        })
    }
);

exec_call!(
    /// `execveat(2)` through the exec gate.
    execveat, execveat_inner, (dirfd: c_int, path: *const c_char, argv: Argv, envp: Argv, flags: c_int) {
        gated(|| sys_execveat(dirfd, path, argv, envp, flags))
    }
);

/// Which of `execl`, `execle`, `execlp` [`execl_common`] serves.
const EXECL: u32 = 0;
const EXECLE: u32 = 1;
const EXECLP: u32 = 2;

/// The variadic calls, after their entry (below) stored the five arguments that came in
/// registers at `regs` and passed where the rest are (`stack`, the caller's): the argument list
/// up to its NULL (`execle`: then the environment) is copied into an array, and `execv`,
/// `execve` or `execvp` runs it.
#[link_section = ".text.hot.libcr_start"]
unsafe extern "C" fn execl_common(
    which: u32,
    path: *const c_char,
    regs: *const *const c_char,
    stack: *const *const c_char,
) -> c_int {
    // SAFETY: the i-th variadic argument: the first five were stored at `regs`, the rest are
    // the caller's stack arguments; the caller ends the list with NULL (and, for execle, passes
    // the environment after it), as execl(3) requires.
    let arg = |i: usize| unsafe {
        if i < 5 {
            *regs.add(i)
        } else {
            *stack.add(i - 5)
        }
    };
    let mut argc = 0usize;
    while !arg(argc).is_null() {
        argc += 1;
        if argc == i32::MAX as usize {
            set_errno(libc::E2BIG);
            return -1;
        }
    }
    let envp = if which == EXECLE {
        arg(argc + 1) as Argv
    } else {
        // SAFETY: reading the C library's environment pointer.
        unsafe { environ }
    };
    gated(|| {
        with_pointers(argc + 1, |argv| {
            for (i, a) in argv.iter_mut().enumerate().take(argc) {
                *a = arg(i);
            }
            argv[argc] = core::ptr::null();
            if which == EXECLP {
                search_and_exec(path, argv.as_ptr(), envp)
            } else {
                sys_execve(path, argv.as_ptr(), envp)
            }
        })
    })
}

/// Defines a variadic exec call: its entry (`$inner`, not exported, for [`cri_exec_table`])
/// stores the five register arguments after the first next to each other and calls
/// [`execl_common`] with where the others are on the caller's stack (stable Rust cannot define
/// a variadic function); the exported `$name` jumps to it.
macro_rules! execl_entry {
    ($(#[$doc:meta])* $name:ident, $inner:ident, $which:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C library's function: a NULL-terminated argument list.
        #[no_mangle]
        #[unsafe(naked)]
        #[link_section = ".text.hot.libcr_start"]
        pub unsafe extern "C" fn $name(_path: *const c_char, _arg: *const c_char) -> c_int {
            core::arch::naked_asm!("jmp {inner}", inner = sym $inner)
        }

        #[unsafe(naked)]
        #[link_section = ".text.hot.libcr_start"]
        unsafe extern "C" fn $inner(_path: *const c_char, _arg: *const c_char) -> c_int {
            core::arch::naked_asm!(
                "push rbp",
                "mov rbp, rsp",
                "sub rsp, 48",
                "mov [rsp], rsi",
                "mov [rsp + 8], rdx",
                "mov [rsp + 16], rcx",
                "mov [rsp + 24], r8",
                "mov [rsp + 32], r9",
                "mov rsi, rdi",
                "mov edi, {which}",
                "mov rdx, rsp",
                "lea rcx, [rbp + 16]",
                "call {common}",
                "leave",
                "ret",
                which = const $which,
                common = sym execl_common,
            )
        }
    };
}

execl_entry!(
    /// `execl(3)` through the exec gate.
    execl,
    execl_inner,
    EXECL
);
execl_entry!(
    /// `execle(3)` through the exec gate.
    execle,
    execle_inner,
    EXECLE
);
execl_entry!(
    /// `execlp(3)` through the exec gate.
    execlp,
    execlp_inner,
    EXECLP
);

/// The exec calls in the order of [`cri_exec_table`].
#[repr(C)]
pub struct ExecTable {
    /// How many entries follow.
    pub len: usize,
    /// `execve`, `execv`, `execvp`, `execvpe`, `execl`, `execle`, `execlp`, `fexecve`,
    /// `execveat`.
    pub calls: [*const (); 9],
}

// SAFETY: read-only function addresses.
unsafe impl Sync for ExecTable {}

/// libcr's exec calls for the preload stubs (one `dlsym` at their start instead of one in every
/// process that execs: most fork children, where the loader's pages are cold).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static cri_exec_table: ExecTable = ExecTable {
    len: 9,
    calls: [
        execve_inner as *const (),
        execv_inner as *const (),
        execvp_inner as *const (),
        execvpe_inner as *const (),
        execl_inner as *const (),
        execle_inner as *const (),
        execlp_inner as *const (),
        fexecve_inner as *const (),
        execveat_inner as *const (),
    ],
};
