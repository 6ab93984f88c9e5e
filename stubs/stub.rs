// Shared source of BLCR's preload stubs, `libcr_run.so.0` and `libcr_omit.so.0` (each crate sets
// `OMIT` and its link anchor, then includes this file).
//
// A stub exports no API (BLCR's `dlopen` test checks `cr_init` is not globally visible under
// `cr_run`). Its constructor loads the one real agent, `libcr.so.0`, *locally* from the stub's
// own directory, so a program that later links or `dlopen`s libcr gets the same, single agent.
// The omit stub marks the process so every checkpoint request leaves it out. The stub also
// forwards the signal-API wrappers to libcr's, so the checkpoint signal stays invisible, and
// the exec calls (through libcr's `cri_exec_table`, looked up once at start), so a checkpoint's
// stop signal never reaches a thread inside `execve` (libcr's `agent::execgate`).

use core::ffi::{c_int, c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering::*};

/// BLCR's checkpoint signal number.
#[no_mangle]
#[used]
pub static cri_signum: c_int = 64;

static LIBCR: AtomicUsize = AtomicUsize::new(0);

fn libcr_sym(name: &CStr) -> usize {
    let h = LIBCR.load(Acquire);
    if h == 0 {
        return 0;
    }
    // SAFETY: dlsym on the handle we opened, with a NUL-terminated name.
    unsafe { libc::dlsym(h as *mut c_void, name.as_ptr()) as usize }
}

fn next_sym(name: &CStr) -> usize {
    // SAFETY: dlsym with a NUL-terminated name.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) as usize }
}

/// libcr's wrapper when the agent is loaded, else the C library's own function.
fn target(name: &CStr) -> usize {
    match libcr_sym(name) {
        0 => next_sym(name),
        f => f,
    }
}

/// `dlopen`s `path` (NUL-terminated) locally; true when it loaded.
#[link_section = ".text.hot.libcr_start"]
fn open_local(path: &[u8]) -> bool {
    // SAFETY: dlopen with a NUL-terminated path.
    let h = unsafe { libc::dlopen(path.as_ptr() as *const core::ffi::c_char, libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return false;
    }
    LIBCR.store(h as usize, Release);
    true
}

/// Loads libcr from the stub's own directory, else by the library search path. Runs in every
/// process started under cr_run, so it allocates nothing and makes no system call of its own on
/// the way that succeeds (issue 11, idle cost: each page it touches is a fault in every exec).
#[link_section = ".text.hot.libcr_start"]
fn load_libcr() {
    // SAFETY: all-zero is a valid Dl_info.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr on one of our own symbols.
    if unsafe { libc::dladdr(&cri_signum as *const c_int as *const c_void, &mut info) } != 0 && !info.dli_fname.is_null() {
        // SAFETY: dladdr returned a NUL-terminated file name.
        let me = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
        if let Some(slash) = me.iter().rposition(|&b| b == b'/') {
            let mut path = [0u8; 4096];
            for name in [&b"libcr.so.0\0"[..], &b"libcr.so\0"[..]] {
                let len = slash + 1 + name.len();
                if len <= path.len() {
                    path[..=slash].copy_from_slice(&me[..=slash]);
                    path[slash + 1..len].copy_from_slice(name);
                    if open_local(&path[..len]) {
                        return;
                    }
                }
            }
        }
    }
    if open_local(b"libcr.so.0\0") {
        return;
    }
    // SAFETY: dlerror returns a message or NULL.
    let err = unsafe { libc::dlerror() };
    let msg = if err.is_null() {
        "not found".into()
    } else {
        // SAFETY: dlerror returned a NUL-terminated message.
        unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned()
    };
    eprintln!("{}: cannot load libcr.so.0 (no checkpoint support): {msg}", if OMIT { "libcr_omit" } else { "libcr_run" });
}

#[link_section = ".text.hot.libcr_start"]
extern "C" fn constructor() {
    // A program that links libcr itself keeps the full library's behaviour (BLCR: the full
    // handler replaces a stub's).
    // SAFETY: dlsym with a NUL-terminated name.
    let program_has_libcr = !unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cr_init".as_ptr()) }.is_null();
    load_libcr();
    // libcr's exec calls (`agent::execgate`), looked up here once: a fork child inherits them,
    // where a lookup at its exec would touch the loader's cold pages in every one.
    EXEC_TABLE.store(libcr_sym(c"cri_exec_table"), Release);
    if OMIT && !program_has_libcr {
        let f = libcr_sym(c"cri_agent_omit");
        if f != 0 {
            // SAFETY: libcr exports cri_agent_omit as extern "C" fn(c_int).
            let f: extern "C" fn(c_int) = unsafe { core::mem::transmute(f) };
            f(1);
        }
    }
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

/// `sigaction`, forwarded to libcr's (which keeps the checkpoint signal reserved).
///
/// # Safety
/// As `sigaction(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    type F = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
    match target(c"sigaction") {
        0 => -1,
        // SAFETY: the symbol has sigaction's signature.
        f => unsafe { core::mem::transmute::<usize, F>(f)(sig, act, old) },
    }
}

/// `inotify_add_watch`, forwarded to libcr's (which keeps the watched path for the checkpoint).
///
/// # Safety
/// As `inotify_add_watch(2)`.
#[no_mangle]
pub unsafe extern "C" fn inotify_add_watch(fd: c_int, path: *const core::ffi::c_char, mask: u32) -> c_int {
    type F = unsafe extern "C" fn(c_int, *const core::ffi::c_char, u32) -> c_int;
    match target(c"inotify_add_watch") {
        0 => -1,
        // SAFETY: the symbol has inotify_add_watch's signature.
        f => unsafe { core::mem::transmute::<usize, F>(f)(fd, path, mask) },
    }
}

/// `signal`, forwarded to libcr's.
#[no_mangle]
pub extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    type F = extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    match target(c"signal") {
        0 => libc::SIG_ERR,
        // SAFETY (below): the symbol has signal's signature.
        f => {
            // SAFETY: see above.
            let f: F = unsafe { core::mem::transmute::<usize, F>(f) };
            f(sig, handler)
        }
    }
}

/// Declares `$name`, forwarded to libcr's wrapper of that name (which keeps the checkpoint
/// signal the program's own business), else the C library's.
macro_rules! forward {
    ($(#[$doc:meta])* $name:ident, $cname:literal, ($($arg:ident: $ty:ty),*) -> $ret:ty, $err:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) -> $ret {
            type F = extern "C" fn($($ty),*) -> $ret;
            match target($cname) {
                0 => $err,
                // SAFETY (below): the symbol has this signature.
                f => {
                    // SAFETY: see above.
                    let f: F = unsafe { core::mem::transmute::<usize, F>(f) };
                    f($($arg),*)
                }
            }
        }
    };
}

forward!(
    /// `bsd_signal`, forwarded to libcr's.
    bsd_signal, c"bsd_signal", (sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t, libc::SIG_ERR
);
forward!(
    /// `ssignal`, forwarded to libcr's.
    ssignal, c"ssignal", (sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t, libc::SIG_ERR
);
forward!(
    /// `sysv_signal`, forwarded to libcr's.
    sysv_signal, c"sysv_signal", (sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t, libc::SIG_ERR
);
forward!(
    /// `__sysv_signal` (`signal` under strict ISO C), forwarded to libcr's.
    __sysv_signal, c"__sysv_signal", (sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t, libc::SIG_ERR
);
forward!(
    /// `sigset`, forwarded to libcr's.
    sigset, c"sigset", (sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t, libc::SIG_ERR
);
forward!(
    /// `sigignore`, forwarded to libcr's.
    sigignore, c"sigignore", (sig: c_int) -> c_int, -1
);
forward!(
    /// `sighold`, forwarded to libcr's.
    sighold, c"sighold", (sig: c_int) -> c_int, -1
);
forward!(
    /// `sigrelse`, forwarded to libcr's.
    sigrelse, c"sigrelse", (sig: c_int) -> c_int, -1
);
forward!(
    /// `siginterrupt`, forwarded to libcr's.
    siginterrupt, c"siginterrupt", (sig: c_int, interrupt: c_int) -> c_int, -1
);

forward!(
    /// `sigsuspend`, forwarded to libcr's (which never waits with the checkpoint signal blocked).
    sigsuspend, c"sigsuspend", (set: *const libc::sigset_t) -> c_int, -1
);
forward!(
    /// `ppoll`, forwarded to libcr's.
    ppoll, c"ppoll", (fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: *const libc::timespec, set: *const libc::sigset_t) -> c_int, -1
);
forward!(
    /// `pselect`, forwarded to libcr's.
    pselect, c"pselect", (n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, timeout: *const libc::timespec, set: *const libc::sigset_t) -> c_int, -1
);
forward!(
    /// `epoll_pwait`, forwarded to libcr's.
    epoll_pwait, c"epoll_pwait", (epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int, set: *const libc::sigset_t) -> c_int, -1
);

/// `sigprocmask`, forwarded to libcr's (which never blocks the checkpoint signal).
#[no_mangle]
pub extern "C" fn sigprocmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    type F = extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;
    match target(c"sigprocmask") {
        0 => -1,
        // SAFETY: the symbol has sigprocmask's signature.
        f => {
            // SAFETY: see above.
            let f: F = unsafe { core::mem::transmute::<usize, F>(f) };
            f(how, set, old)
        }
    }
}

/// `pthread_sigmask`, forwarded to libcr's.
#[no_mangle]
pub extern "C" fn pthread_sigmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    type F = extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;
    match target(c"pthread_sigmask") {
        0 => libc::ENOSYS,
        // SAFETY: the symbol has pthread_sigmask's signature.
        f => {
            // SAFETY: see above.
            let f: F = unsafe { core::mem::transmute::<usize, F>(f) };
            f(how, set, old)
        }
    }
}

/// `SIGRTMAX` as the program sees it.
#[no_mangle]
pub extern "C" fn __libc_current_sigrtmax() -> c_int {
    type F = extern "C" fn() -> c_int;
    match target(c"__libc_current_sigrtmax") {
        0 => 64,
        // SAFETY: the symbol has this signature.
        f => {
            // SAFETY: see above.
            let f: F = unsafe { core::mem::transmute::<usize, F>(f) };
            f()
        }
    }
}

/// libcr's `madvise` once looked up (0: not yet).
static MADVISE: AtomicUsize = AtomicUsize::new(0);

/// `madvise`, forwarded to libcr's (which gives memory a lazy restart mapped from its image the
/// anonymous-memory meaning of `MADV_DONTNEED`/`MADV_FREE`).
///
/// # Safety
/// As `madvise(2)`.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: libc::size_t, advice: c_int) -> c_int {
    type F = unsafe extern "C" fn(*mut c_void, libc::size_t, c_int) -> c_int;
    let mut f = MADVISE.load(Acquire);
    if f == 0 {
        // Remembered once libcr is loaded (it never goes away); the C library's until then.
        f = libcr_sym(c"madvise");
        if f != 0 {
            MADVISE.store(f, Release);
        } else {
            f = next_sym(c"madvise");
        }
    }
    if f == 0 {
        // SAFETY: __errno_location returns this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    }
    // SAFETY: the symbol has madvise's signature; the caller's promise is passed on.
    unsafe { core::mem::transmute::<usize, F>(f)(addr, len, advice) }
}

/// `cr_run --huge-pages` (`LIBCR_HUGE_PAGES=1`): 0 not looked at yet, 1 off, 2 on.
static HUGE_PAGES: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// The smallest private anonymous mapping `--huge-pages` advises: one huge page (x86-64's PMD).
const HUGE_MIN: libc::size_t = 2 << 20;

/// Whether `cr_run --huge-pages` asked for transparent huge pages (read once, from the
/// environment: a restored process keeps the answer with the rest of our memory).
fn huge_pages() -> bool {
    match HUGE_PAGES.load(Relaxed) {
        0 => {
            // SAFETY: getenv with a NUL-terminated name; the value is only read.
            let v = unsafe { libc::getenv(c"LIBCR_HUGE_PAGES".as_ptr()) };
            // SAFETY: getenv returned a NUL-terminated value.
            let on = !v.is_null() && unsafe { CStr::from_ptr(v) }.to_bytes() == b"1";
            HUGE_PAGES.store(if on { 2 } else { 1 }, Relaxed);
            on
        }
        n => n == 2,
    }
}

/// `mmap`: the system call, as the C library makes it (x86-64 and aarch64 have no offset
/// translation or flag change by default); with `cr_run --huge-pages`, a new private anonymous
/// writable mapping of at least [`HUGE_MIN`] (not a stack, not `MAP_HUGETLB`) is then advised
/// `MADV_HUGEPAGE`, so its memory is faulted in transparent huge pages where the system allows
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`), which makes the page-table copy
/// of `cr_checkpoint --cow` about 500 times smaller. The C library's own allocations do not come
/// here (malloc calls its internal mmap): `cr_run` sets `glibc.malloc.hugetlb=1` for them. No
/// `dlsym` here: an allocator that calls `mmap` must not recurse through `dlsym`'s allocation.
///
/// # Safety
/// As `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: libc::size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // Every argument as a full register (the kernel reads 64 bits of each).
    let l = |x: i64| x as libc::c_long;
    // SAFETY: the caller's promise (mmap's arguments) is passed on; syscall sets errno.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            l(addr as i64),
            l(len as i64),
            l(prot as i64),
            l(flags as i64),
            l(fd as i64),
            l(off),
        )
    };
    if r == -1 {
        return libc::MAP_FAILED;
    }
    let advise = flags & libc::MAP_TYPE == libc::MAP_PRIVATE
        && flags & libc::MAP_ANONYMOUS != 0
        && flags & (libc::MAP_HUGETLB | libc::MAP_STACK | libc::MAP_GROWSDOWN) == 0
        && prot & libc::PROT_WRITE != 0
        && len >= HUGE_MIN;
    if advise && huge_pages() {
        // SAFETY: __errno_location returns this thread's errno; the range was just mapped.
        unsafe {
            let e = *libc::__errno_location();
            libc::syscall(libc::SYS_madvise, r, l(len as i64), l(libc::MADV_HUGEPAGE as i64));
            *libc::__errno_location() = e;
        }
    }
    r as *mut c_void
}

/// `mmap64`: the same as [`mmap`] (`off_t` is 64 bits here).
///
/// # Safety
/// As `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: libc::size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: as mmap.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// libcr's `mremap` once looked up (0: not yet).
static MREMAP: AtomicUsize = AtomicUsize::new(0);

/// `mremap`, forwarded to libcr's (which makes the part a growing call adds to memory a lazy
/// restart mapped from its image read as zero, as anonymous memory does). The C prototype is
/// variadic; `new_address` is passed on as the fifth argument (only read with `MREMAP_FIXED`).
///
/// # Safety
/// As `mremap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old_address: *mut c_void,
    old_size: libc::size_t,
    new_size: libc::size_t,
    flags: c_int,
    new_address: *mut c_void,
) -> *mut c_void {
    type F = unsafe extern "C" fn(
        *mut c_void,
        libc::size_t,
        libc::size_t,
        c_int,
        *mut c_void,
    ) -> *mut c_void;
    let mut f = MREMAP.load(Acquire);
    if f == 0 {
        // Remembered once libcr is loaded (it never goes away); the C library's until then.
        f = libcr_sym(c"mremap");
        if f != 0 {
            MREMAP.store(f, Release);
        } else {
            f = next_sym(c"mremap");
        }
    }
    if f == 0 {
        // SAFETY: __errno_location returns this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return libc::MAP_FAILED;
    }
    // SAFETY: the symbol has mremap's signature (its variadic fifth argument passed as a fixed
    // one, as the x86-64 and aarch64 calling conventions allow); the caller's promise is passed
    // on.
    unsafe { core::mem::transmute::<usize, F>(f)(old_address, old_size, new_size, flags, new_address) }
}

/// Tells libcr the name of a file `mkstemp` and its kin just created (see libcr's
/// `agent::created`); errno is kept.
fn note_created(template: *const core::ffi::c_char, fd: c_int) {
    if fd < 0 {
        return;
    }
    let f = libcr_sym(c"cri_note_created");
    if f != 0 {
        // SAFETY: libcr exports cri_note_created as unsafe extern "C" fn(*const c_char); the
        // template holds the created file's NUL-terminated name.
        unsafe { core::mem::transmute::<usize, unsafe extern "C" fn(*const core::ffi::c_char)>(f)(template) };
    }
}

/// `mkstemp`, the C library's, the created file noted for the checkpoint.
///
/// # Safety
/// As `mkstemp(3)`.
#[no_mangle]
pub unsafe extern "C" fn mkstemp(template: *mut core::ffi::c_char) -> c_int {
    type F = unsafe extern "C" fn(*mut core::ffi::c_char) -> c_int;
    let fd = match next_sym(c"mkstemp") {
        0 => return -1,
        // SAFETY: the symbol has mkstemp's signature.
        f => unsafe { core::mem::transmute::<usize, F>(f)(template) },
    };
    note_created(template, fd);
    fd
}

/// `mkostemp`, the C library's, the created file noted for the checkpoint.
///
/// # Safety
/// As `mkostemp(3)`.
#[no_mangle]
pub unsafe extern "C" fn mkostemp(template: *mut core::ffi::c_char, flags: c_int) -> c_int {
    type F = unsafe extern "C" fn(*mut core::ffi::c_char, c_int) -> c_int;
    let fd = match next_sym(c"mkostemp") {
        0 => return -1,
        // SAFETY: the symbol has mkostemp's signature.
        f => unsafe { core::mem::transmute::<usize, F>(f)(template, flags) },
    };
    note_created(template, fd);
    fd
}

/// `mkstemps`, the C library's, the created file noted for the checkpoint (gcc makes its
/// temporary files with it).
///
/// # Safety
/// As `mkstemps(3)`.
#[no_mangle]
pub unsafe extern "C" fn mkstemps(template: *mut core::ffi::c_char, suffixlen: c_int) -> c_int {
    type F = unsafe extern "C" fn(*mut core::ffi::c_char, c_int) -> c_int;
    let fd = match next_sym(c"mkstemps") {
        0 => return -1,
        // SAFETY: the symbol has mkstemps's signature.
        f => unsafe { core::mem::transmute::<usize, F>(f)(template, suffixlen) },
    };
    note_created(template, fd);
    fd
}

/// `mkostemps`, the C library's, the created file noted for the checkpoint.
///
/// # Safety
/// As `mkostemps(3)`.
#[no_mangle]
pub unsafe extern "C" fn mkostemps(template: *mut core::ffi::c_char, suffixlen: c_int, flags: c_int) -> c_int {
    type F = unsafe extern "C" fn(*mut core::ffi::c_char, c_int, c_int) -> c_int;
    let fd = match next_sym(c"mkostemps") {
        0 => return -1,
        // SAFETY: the symbol has mkostemps's signature.
        f => unsafe { core::mem::transmute::<usize, F>(f)(template, suffixlen, flags) },
    };
    note_created(template, fd);
    fd
}

/// Declares `$name`, forwarded to libcr's address-translating wrapper of that name (after a
/// restart with `cr_restart --map-address`, docs/MPI.md), else the C library's. The target is
/// looked up once the agent is loaded, then kept.
macro_rules! forward_cached {
    ($(#[$doc:meta])* $name:ident, $cname:literal, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C library's function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            type F = unsafe extern "C" fn($($ty),*) -> $ret;
            static CACHE: AtomicUsize = AtomicUsize::new(0);
            let mut f = CACHE.load(Acquire);
            if f == 0 {
                f = target($cname);
                if LIBCR.load(Acquire) != 0 {
                    CACHE.store(f, Release);
                }
            }
            if f == 0 {
                // SAFETY: __errno_location returns this thread's errno.
                unsafe { *libc::__errno_location() = libc::ENOSYS };
                return -1 as $ret;
            }
            // SAFETY: the symbol has this signature; the arguments are the caller's.
            unsafe { core::mem::transmute::<usize, F>(f)($($arg),*) }
        }
    };
}

forward_cached!(
    /// `connect`, forwarded to libcr's.
    connect, c"connect", (fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int
);
forward_cached!(
    /// `bind`, forwarded to libcr's.
    bind, c"bind", (fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int
);
forward_cached!(
    /// `sendto`, forwarded to libcr's.
    sendto, c"sendto", (fd: c_int, buf: *const c_void, n: libc::size_t, flags: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> libc::ssize_t
);
forward_cached!(
    /// `accept`, forwarded to libcr's.
    accept, c"accept", (fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int
);
forward_cached!(
    /// `accept4`, forwarded to libcr's.
    accept4, c"accept4", (fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, flags: c_int) -> c_int
);
forward_cached!(
    /// `getpeername`, forwarded to libcr's.
    getpeername, c"getpeername", (fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int
);
forward_cached!(
    /// `getsockname`, forwarded to libcr's.
    getsockname, c"getsockname", (fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int
);

extern "C" {
    /// glibc's own `realloc` (exported by libc.so.6 beside `realloc`).
    fn __libc_realloc(p: *mut c_void, size: libc::size_t) -> *mut c_void;
}

/// The `realloc` after the stub's (0: not looked up yet).
static NEXT_REALLOC: AtomicUsize = AtomicUsize::new(0);

/// Looks up the `realloc` after the stub's (glibc's, `glibc`, where there is none). A call made
/// while the lookup runs (`dlsym` may allocate) gets glibc's.
fn next_realloc(glibc: usize) -> usize {
    static LOOKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if LOOKING.swap(true, AcqRel) {
        return glibc;
    }
    let f = match next_sym(c"realloc") {
        0 => glibc,
        f => f,
    };
    NEXT_REALLOC.store(f, Release);
    f
}
/// libcr's `cri_lazily_mapped` once looked up (0: not yet, 1: libcr has none).
static LAZILY_MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Whether libcr says a lazy restart mapped this process's memory from an image.
fn lazily_mapped() -> bool {
    let mut f = LAZILY_MAPPED.load(Acquire);
    if f == 0 {
        if LIBCR.load(Acquire) == 0 {
            return false;
        }
        f = match libcr_sym(c"cri_lazily_mapped") {
            0 => 1,
            f => f,
        };
        LAZILY_MAPPED.store(f, Release);
    }
    // SAFETY: libcr exports cri_lazily_mapped as extern "C" fn() -> c_int.
    f != 1 && unsafe { core::mem::transmute::<usize, extern "C" fn() -> c_int>(f)() } != 0
}

/// `realloc`: the C library's, except for a block glibc's malloc made with its own `mmap` in a
/// process a lazy restart mapped from its image. glibc grows such a block with its internal
/// `mremap`, which, over memory mapped from the image file, adds the image's next bytes or
/// SIGBUS past the file's end (libcr's `agent::lazy`); it is grown here by allocating, copying
/// and freeing instead. Only where the next `realloc` is glibc's (another malloc preloaded
/// after the stub keeps its own blocks).
///
/// # Safety
/// As `realloc(3)`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: libc::size_t) -> *mut c_void {
    type F = unsafe extern "C" fn(*mut c_void, libc::size_t) -> *mut c_void;
    let glibc = __libc_realloc as F as usize;
    let next = match NEXT_REALLOC.load(Acquire) {
        0 => next_realloc(glibc),
        f => f,
    };
    /// glibc's chunk header bit for a block mapped by itself (`IS_MMAPPED`).
    const IS_MMAPPED: usize = 2;
    if !p.is_null() && size > 0 && next == glibc && lazily_mapped() {
        // SAFETY: `p` is a live block of glibc's malloc (the caller's promise, and glibc's
        // realloc is the one in use), whose size word sits just before it.
        let header = unsafe { *(p as *const usize).sub(1) };
        // SAFETY: as above.
        let have = unsafe { libc::malloc_usable_size(p) };
        if header & IS_MMAPPED != 0 && size > have {
            // SAFETY: plain allocation; on failure `p` is left untouched, as realloc does.
            let q = unsafe { libc::malloc(size) };
            if !q.is_null() {
                // SAFETY: both blocks hold at least `have` bytes and do not overlap.
                unsafe {
                    core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, have);
                    libc::free(p);
                }
            }
            return q;
        }
    }
    // SAFETY: the symbol has realloc's signature; the caller's promise is passed on.
    unsafe { core::mem::transmute::<usize, F>(next)(p, size) }
}

/// libcr's `cri_exec_table` (its length, then its exec calls), 0 when libcr did not load.
#[link_section = ".data1"]
static EXEC_TABLE: AtomicUsize = AtomicUsize::new(0);

/// The exec call `i` of libcr's table (which waits while a checkpoint stops the process, so that
/// its stop signal never reaches a thread inside `execve`: libcr's `agent::execgate`), else the
/// C library's `name`.
#[link_section = ".text.hot.libcr_start"]
fn exec_target(i: usize, name: &CStr) -> usize {
    let t = EXEC_TABLE.load(Acquire);
    if t != 0 {
        // SAFETY: libcr's cri_exec_table: a length, then that many function addresses.
        let len = unsafe { *(t as *const usize) };
        if i < len {
            // SAFETY: as above, i < len.
            return unsafe { *(t as *const usize).add(1 + i) };
        }
    }
    match next_sym(name) {
        0 => exec_enosys as *const () as usize,
        f => f,
    }
}

/// An exec call that cannot be found: -1, `ENOSYS`.
extern "C" fn exec_enosys() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

type ExecArgv = *const *const core::ffi::c_char;

/// Declares exec call `$name`, forwarded to entry `$i` of libcr's exec table.
macro_rules! forward_exec {
    ($(#[$doc:meta])* $name:ident, $cname:literal, $i:expr, ($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C library's function.
        #[no_mangle]
        #[link_section = ".text.hot.libcr_start"]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            type F = unsafe extern "C" fn($($ty),*) -> c_int;
            // SAFETY: the table's entry `$i` (or the C library's function) has this signature.
            unsafe { core::mem::transmute::<usize, F>(exec_target($i, $cname))($($arg),*) }
        }
    };
}

forward_exec!(
    /// `execve`, forwarded to libcr's.
    execve, c"execve", 0, (path: *const core::ffi::c_char, argv: ExecArgv, envp: ExecArgv)
);
forward_exec!(
    /// `execv`, forwarded to libcr's.
    execv, c"execv", 1, (path: *const core::ffi::c_char, argv: ExecArgv)
);
forward_exec!(
    /// `execvp`, forwarded to libcr's.
    execvp, c"execvp", 2, (file: *const core::ffi::c_char, argv: ExecArgv)
);
forward_exec!(
    /// `execvpe`, forwarded to libcr's.
    execvpe, c"execvpe", 3, (file: *const core::ffi::c_char, argv: ExecArgv, envp: ExecArgv)
);
forward_exec!(
    /// `fexecve`, forwarded to libcr's.
    fexecve, c"fexecve", 7, (fd: c_int, argv: ExecArgv, envp: ExecArgv)
);
forward_exec!(
    /// `execveat`, forwarded to libcr's.
    execveat, c"execveat", 8, (dirfd: c_int, path: *const core::ffi::c_char, argv: ExecArgv, envp: ExecArgv, flags: c_int)
);

/// The target of the variadic exec call `which` (0 `execl`, 1 `execle`, 2 `execlp`).
#[link_section = ".text.hot.libcr_start"]
extern "C" fn execl_target(which: usize) -> usize {
    match which {
        0 => exec_target(4, c"execl"),
        1 => exec_target(5, c"execle"),
        _ => exec_target(6, c"execlp"),
    }
}

/// Declares a variadic exec call that jumps to its target with every argument register (and
/// `%al`) as the caller left them and the stack arguments in place (stable Rust cannot define
/// a variadic function).
macro_rules! forward_execl {
    ($(#[$doc:meta])* $name:ident, $which:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C library's function: a NULL-terminated argument list.
        #[no_mangle]
        #[unsafe(naked)]
        #[link_section = ".text.hot.libcr_start"]
        pub unsafe extern "C" fn $name(_path: *const core::ffi::c_char, _arg: *const core::ffi::c_char) -> c_int {
            core::arch::naked_asm!(
                "push rax",
                "push rdi",
                "push rsi",
                "push rdx",
                "push rcx",
                "push r8",
                "push r9",
                "mov edi, {which}",
                "call {target}",
                "mov r11, rax",
                "pop r9",
                "pop r8",
                "pop rcx",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "pop rax",
                "jmp r11",
                which = const $which,
                target = sym execl_target,
            )
        }
    };
}

forward_execl!(
    /// `execl`, forwarded to libcr's.
    execl, 0
);
forward_execl!(
    /// `execle`, forwarded to libcr's.
    execle, 1
);
forward_execl!(
    /// `execlp`, forwarded to libcr's.
    execlp, 2
);
