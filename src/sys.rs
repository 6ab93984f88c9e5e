//! Thin raw-syscall layer: the only place the agent talks to the kernel.
//!
//! Everything here is async-signal-safe: no libc calls, no `errno`, no heap. Functions return
//! `Result<usize, Errno>` where the error is the positive kernel error number. The checkpoint path
//! between quiesce and release and the restart path before threads are released use only this.

use core::arch::asm;

/// A positive kernel error number (`EINTR`, `ENOENT`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

/// Result of a raw system call.
pub type SysResult = Result<usize, Errno>;

#[inline]
fn check(ret: isize) -> SysResult {
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

/// Issues system call `nr` with six arguments and returns the raw kernel result (negative errno on
/// failure).
#[inline]
pub fn raw6(nr: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY: a plain syscall instruction; the kernel clobbers rcx and r11 only. Memory the
    // arguments point at is the caller's responsibility, documented on each wrapper.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    ret
}

/// Checked variant of [`raw6`].
#[inline]
pub fn sys6(nr: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> SysResult {
    check(raw6(nr, a, b, c, d, e, f))
}

/// Checked system call with up to three arguments.
#[inline]
pub fn sys3(nr: usize, a: usize, b: usize, c: usize) -> SysResult {
    sys6(nr, a, b, c, 0, 0, 0)
}

use libc::{
    SYS_arch_prctl, SYS_close, SYS_exit_group, SYS_fcntl, SYS_fdatasync, SYS_fstat, SYS_futex,
    SYS_getdents64, SYS_getpid, SYS_gettid, SYS_lseek, SYS_mmap, SYS_munmap, SYS_openat,
    SYS_pread64, SYS_pwrite64, SYS_read, SYS_readlinkat, SYS_rt_sigprocmask, SYS_rt_tgsigqueueinfo,
    SYS_write,
};

/// `getpid()`.
#[link_section = ".text.hot.libcr_start"]
pub fn getpid() -> i32 {
    raw6(SYS_getpid as usize, 0, 0, 0, 0, 0, 0) as i32
}

/// `getppid()`.
#[link_section = ".text.hot.libcr_start"]
pub fn getppid() -> i32 {
    raw6(libc::SYS_getppid as usize, 0, 0, 0, 0, 0, 0) as i32
}

/// `gettid()`.
#[link_section = ".text.hot.libcr_start"]
pub fn gettid() -> i32 {
    raw6(SYS_gettid as usize, 0, 0, 0, 0, 0, 0) as i32
}

/// `openat(AT_FDCWD, path, flags, mode)`; `path` must be NUL-terminated.
pub fn open(path: &[u8], flags: i32, mode: u32) -> SysResult {
    debug_assert!(path.last() == Some(&0));
    sys6(
        SYS_openat as usize,
        libc::AT_FDCWD as usize,
        path.as_ptr() as usize,
        flags as usize,
        mode as usize,
        0,
        0,
    )
}

/// `close(fd)`.
#[link_section = ".text.hot.libcr_start"]
pub fn close(fd: i32) {
    let _ = sys3(SYS_close as usize, fd as usize, 0, 0);
}

/// `read(fd, buf)`.
pub fn read(fd: i32, buf: &mut [u8]) -> SysResult {
    sys3(
        SYS_read as usize,
        fd as usize,
        buf.as_mut_ptr() as usize,
        buf.len(),
    )
}

/// `pread64(fd, buf, off)`.
pub fn pread(fd: i32, buf: &mut [u8], off: u64) -> SysResult {
    sys6(
        SYS_pread64 as usize,
        fd as usize,
        buf.as_mut_ptr() as usize,
        buf.len(),
        off as usize,
        0,
        0,
    )
}

/// `write(fd, ptr, len)` from raw memory (used to write program memory with no copy).
///
/// # Safety
/// `ptr..ptr+len` must be memory the kernel may read (it faults cleanly with `EFAULT` otherwise).
pub unsafe fn write_raw(fd: i32, ptr: usize, len: usize) -> SysResult {
    sys3(SYS_write as usize, fd as usize, ptr, len)
}

/// `pwrite64(fd, ptr, len, off)` from raw memory.
///
/// # Safety
/// As [`write_raw`].
pub unsafe fn pwrite_raw(fd: i32, ptr: usize, len: usize, off: u64) -> SysResult {
    sys6(
        SYS_pwrite64 as usize,
        fd as usize,
        ptr,
        len,
        off as usize,
        0,
        0,
    )
}

/// Writes the whole buffer, retrying on `EINTR` and short writes.
pub fn write_all(fd: i32, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid slice.
        match unsafe { write_raw(fd, buf.as_ptr() as usize, buf.len()) } {
            Ok(0) => return Err(Errno(libc::EIO)),
            Ok(n) => buf = &buf[n..],
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a whole (small, procfs) file into `buf`; returns the length read.
pub fn read_file(path: &[u8], buf: &mut [u8]) -> SysResult {
    let fd = open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0)? as i32;
    let mut len = 0;
    let res = loop {
        if len == buf.len() {
            break Err(Errno(libc::EFBIG));
        }
        match read(fd, &mut buf[len..]) {
            Ok(0) => break Ok(len),
            Ok(n) => len += n,
            Err(Errno(libc::EINTR)) => {}
            Err(e) => break Err(e),
        }
    };
    close(fd);
    res
}

/// Calls `f` with every open descriptor of the process (allocation-free: `/proc/self/fd` read
/// with `getdents64` into a stack buffer; the directory's own descriptor is left out).
pub fn each_open_fd(mut f: impl FnMut(i32)) {
    let Ok(dir) = open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) else {
        return;
    };
    let dir = dir as i32;
    let mut buf = [0u8; 2048];
    while let Ok(len) = getdents64(dir, &mut buf) {
        if len == 0 {
            break;
        }
        let mut pos = 0;
        while pos < len {
            let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
            let name = &buf[pos + 19..pos + reclen];
            pos += reclen;
            let digits = name.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                continue; // "." and ".."
            }
            let fd = name[..digits]
                .iter()
                .fold(0i32, |v, &b| v * 10 + i32::from(b - b'0'));
            if fd != dir {
                f(fd);
            }
        }
    }
    close(dir);
}

/// `getsockopt(fd, level, name)` of an `int` option.
pub fn getsockopt_int(fd: i32, level: i32, name: i32) -> Result<i32, Errno> {
    let mut v: i32 = 0;
    let mut len: libc::socklen_t = 4;
    sys6(
        libc::SYS_getsockopt as usize,
        fd as usize,
        level as usize,
        name as usize,
        &mut v as *mut i32 as usize,
        &mut len as *mut _ as usize,
        0,
    )?;
    Ok(v)
}

/// `setsockopt(fd, level, name, &value)` of an `int` option.
pub fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> Result<(), Errno> {
    sys6(
        libc::SYS_setsockopt as usize,
        fd as usize,
        level as usize,
        name as usize,
        &value as *const i32 as usize,
        4,
        0,
    )?;
    Ok(())
}

/// Most descriptors one peeked message may carry that [`peek_msg`] hands back.
pub const PEEK_MAX_FDS: usize = 64;

/// One message peeked from socket `fd` by [`peek_msg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peeked {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// The message was longer than the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// Descriptors it carries (`SCM_RIGHTS`): the first `fds` of `fd_list`, the copies the peek
    /// installed in this process (close-on-exec), now the caller's to keep or close.
    pub fds: u32,
    /// The descriptors the peek installed.
    pub fd_list: [i32; PEEK_MAX_FDS],
    /// It carries more descriptors than were handed back (`MSG_CTRUNC`: the kernel dropped the
    /// copies that did not fit).
    pub more_fds: bool,
    /// The peek came with credentials (`SCM_CREDENTIALS`, only when `SO_PASSCRED` is on): a
    /// message was there. A seqpacket socket whose peer is gone reads 0 bytes without them
    /// at its end, as an empty message reads 0 bytes with them.
    pub creds: bool,
}

/// Copies the next message (or, on a stream socket, the next bytes up to one carrying
/// descriptors) waiting on socket `fd` into `buf` without consuming it
/// (`recvmsg(MSG_PEEK | MSG_DONTWAIT)`; where it starts follows `SO_PEEK_OFF`). Descriptors in
/// flight with it are handed back: the kernel installs copies of them in this process for a
/// peek (allocation-free).
pub fn peek_msg(fd: i32, buf: &mut [u8]) -> Result<Peeked, Errno> {
    // Room for 64 descriptors (CMSG_SPACE(256)) and credentials (CMSG_SPACE(12)), 8-byte
    // aligned.
    let mut control = [0u64; 38];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data (all zero: no name).
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = core::mem::size_of_val(&control);
    let n = sys3(
        libc::SYS_recvmsg as usize,
        fd as usize,
        &mut msg as *mut libc::msghdr as usize,
        (libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) as usize,
    )?;
    let mut out = Peeked {
        len: n.min(buf.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds: 0,
        fd_list: [-1; PEEK_MAX_FDS],
        more_fds: msg.msg_flags & libc::MSG_CTRUNC != 0,
        creds: false,
    };
    let bytes: &[u8] = bytemuck::cast_slice(&control);
    let clen = msg.msg_controllen.min(bytes.len());
    let mut at = 0;
    // struct cmsghdr { len: usize, level: i32, type: i32 }, then data, each padded to 8.
    while at + 16 <= clen {
        let len = usize::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let level = i32::from_ne_bytes(bytes[at + 8..at + 12].try_into().unwrap_or([0; 4]));
        let kind = i32::from_ne_bytes(bytes[at + 12..at + 16].try_into().unwrap_or([0; 4]));
        if len < 16 || at + len > clen {
            break;
        }
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for d in bytes[at + 16..at + len].chunks_exact(4) {
                let got = i32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
                match out.fd_list.get_mut(out.fds as usize) {
                    Some(slot) => {
                        *slot = got;
                        out.fds += 1;
                    }
                    None => {
                        close(got);
                        out.more_fds = true;
                    }
                }
            }
        }
        if level == libc::SOL_SOCKET && kind == libc::SCM_CREDENTIALS {
            out.creds = true;
        }
        at += (len + 7) & !7;
    }
    Ok(out)
}

/// Bytes waiting to be read on socket `fd` (`FIONREAD`).
pub fn bytes_waiting(fd: i32) -> Result<usize, Errno> {
    let mut n: i32 = 0;
    sys3(
        libc::SYS_ioctl as usize,
        fd as usize,
        libc::FIONREAD as usize,
        &mut n as *mut i32 as usize,
    )?;
    Ok(n.max(0) as usize)
}

/// Copies what is waiting on socket `fd` into `buf` without consuming it
/// (`recv(MSG_PEEK | MSG_DONTWAIT)`); the byte count.
pub fn peek(fd: i32, buf: &mut [u8]) -> SysResult {
    sys6(
        libc::SYS_recvfrom as usize,
        fd as usize,
        buf.as_mut_ptr() as usize,
        buf.len(),
        (libc::MSG_PEEK | libc::MSG_DONTWAIT) as usize,
        0,
        0,
    )
}

/// Writes `path` as an absolute path into `out` (a relative one joined to the working
/// directory, as the kernel resolved it); its length, or None when it does not fit or the
/// working directory is unreachable. Allocation-free, for the agent's interposed calls.
pub fn absolute_path(path: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    if path.first() != Some(&b'/') {
        let n = sys3(
            libc::SYS_getcwd as usize,
            out.as_mut_ptr() as usize,
            out.len(),
            0,
        )
        .ok()?;
        len = n.saturating_sub(1); // without the NUL
        if out.first() != Some(&b'/') {
            return None; // "(unreachable)": not under our root
        }
        if len > 1 {
            *out.get_mut(len)? = b'/';
            len += 1;
        }
    }
    out.get_mut(len..len + path.len())?.copy_from_slice(path);
    Some(len + path.len())
}

/// `readlinkat(AT_FDCWD, path, buf)`; `path` NUL-terminated. Returns the length (not terminated).
#[link_section = ".text.hot.libcr_start"]
pub fn readlink(path: &[u8], buf: &mut [u8]) -> SysResult {
    sys6(
        SYS_readlinkat as usize,
        libc::AT_FDCWD as usize,
        path.as_ptr() as usize,
        buf.as_mut_ptr() as usize,
        buf.len(),
        0,
        0,
    )
}

/// `fstat(fd)`.
pub fn fstat(fd: i32) -> Result<libc::stat, Errno> {
    // SAFETY: all-zero bytes are a valid `stat`.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    sys3(
        SYS_fstat as usize,
        fd as usize,
        &mut st as *mut _ as usize,
        0,
    )?;
    Ok(st)
}

/// `newfstatat(AT_FDCWD, path, flags)`; `path` NUL-terminated.
pub fn stat(path: &[u8], flags: i32) -> Result<libc::stat, Errno> {
    // SAFETY: all-zero bytes are a valid `stat`.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    sys6(
        libc::SYS_newfstatat as usize,
        libc::AT_FDCWD as usize,
        path.as_ptr() as usize,
        &mut st as *mut _ as usize,
        flags as usize,
        0,
        0,
    )?;
    Ok(st)
}

/// `statfs(path)`'s `f_type` (the file system's magic number); `path` NUL-terminated.
pub fn statfs_type(path: &[u8]) -> Result<i64, Errno> {
    // SAFETY: all-zero bytes are a valid `statfs`.
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    sys3(
        libc::SYS_statfs as usize,
        path.as_ptr() as usize,
        &mut st as *mut _ as usize,
        0,
    )?;
    Ok(st.f_type)
}

/// `fstatfs(fd)`'s `f_type` (the file system's magic number).
pub fn fstatfs_type(fd: i32) -> Result<i64, Errno> {
    // SAFETY: all-zero bytes are a valid `statfs`.
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    sys3(
        libc::SYS_fstatfs as usize,
        fd as usize,
        &mut st as *mut _ as usize,
        0,
    )?;
    Ok(st.f_type)
}

/// `mq_getsetattr(fd, NULL, &attr)`: a POSIX message queue's attributes.
pub fn mq_getattr(fd: i32) -> Result<libc::mq_attr, Errno> {
    // SAFETY: all-zero bytes are a valid `mq_attr`.
    let mut a: libc::mq_attr = unsafe { core::mem::zeroed() };
    sys3(
        libc::SYS_mq_getsetattr as usize,
        fd as usize,
        0,
        &mut a as *mut _ as usize,
    )?;
    Ok(a)
}

/// `fcntl` commands the `libc` crate does not define for x86-64 glibc.
pub mod fcntl_cmd {
    /// Sets the signal sent for async I/O.
    pub const F_SETSIG: i32 = 10;
    /// Gets the signal sent for async I/O (0: `SIGIO`).
    pub const F_GETSIG: i32 = 11;
    /// Sets the async-I/O owner from a `struct f_owner_ex`.
    pub const F_SETOWN_EX: i32 = 15;
    /// Gets the async-I/O owner into a `struct f_owner_ex`.
    pub const F_GETOWN_EX: i32 = 16;
    /// `f_owner_ex.type`: a thread.
    pub const F_OWNER_TID: i32 = 0;
    /// `f_owner_ex.type`: a process.
    pub const F_OWNER_PID: i32 = 1;
    /// `f_owner_ex.type`: a process group.
    pub const F_OWNER_PGRP: i32 = 2;
}

/// `fcntl(fd, cmd, arg)`.
#[link_section = ".text.hot.libcr_start"]
pub fn fcntl(fd: i32, cmd: i32, arg: usize) -> SysResult {
    sys3(SYS_fcntl as usize, fd as usize, cmd as usize, arg)
}

/// `waitid(idtype, id, &info, options)` (`P_PID`, `P_PIDFD`, …); returns the call's result and
/// the `siginfo_t` it filled (all zero, `si_pid` 0, when `WNOHANG` found nothing ended).
pub fn waitid(idtype: u32, id: i32, options: i32) -> (SysResult, libc::siginfo_t) {
    // SAFETY: all-zero is a valid siginfo_t.
    let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
    let r = sys6(
        libc::SYS_waitid as usize,
        idtype as usize,
        id as usize,
        &mut info as *mut _ as usize,
        options as usize,
        0,
        0,
    );
    (r, info)
}

/// `lseek(fd, off, whence)`.
pub fn lseek(fd: i32, off: i64, whence: i32) -> SysResult {
    sys3(
        SYS_lseek as usize,
        fd as usize,
        off as usize,
        whence as usize,
    )
}

/// Polls one descriptor for `events`, waiting up to `timeout_ms` (-1: without limit); the
/// events it reports (0: none before the timeout, or the call failed).
pub fn poll_one(fd: i32, events: i16, timeout_ms: i32) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    match sys3(
        libc::SYS_poll as usize,
        &mut p as *mut _ as usize,
        1,
        timeout_ms as isize as usize,
    ) {
        Ok(n) if n > 0 => p.revents,
        _ => 0,
    }
}

/// [`poll_one`] with a timeout in nanoseconds (`ppoll`).
pub fn ppoll_one(fd: i32, events: i16, timeout_ns: u64) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    match sys6(
        libc::SYS_ppoll as usize,
        &mut p as *mut _ as usize,
        1,
        &ts as *const _ as usize,
        0,
        0,
        0,
    ) {
        Ok(n) if n > 0 => p.revents,
        _ => 0,
    }
}

/// `fdatasync(fd)`.
pub fn fdatasync(fd: i32) -> SysResult {
    sys3(SYS_fdatasync as usize, fd as usize, 0, 0)
}

/// `mmap` of anonymous private memory, kernel-chosen address.
pub fn mmap_anon(len: usize) -> SysResult {
    sys6(
        SYS_mmap as usize,
        0,
        len,
        (libc::PROT_READ | libc::PROT_WRITE) as usize,
        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as usize,
        usize::MAX,
        0,
    )
}

/// Full `mmap`.
pub fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: u64) -> SysResult {
    sys6(
        SYS_mmap as usize,
        addr,
        len,
        prot as usize,
        flags as usize,
        fd as usize,
        off as usize,
    )
}

/// `munmap(addr, len)`.
#[link_section = ".text.hot.libcr_start"]
pub fn munmap(addr: usize, len: usize) {
    let _ = sys3(SYS_munmap as usize, addr, len, 0);
}

/// `getdents64(fd, buf)`.
pub fn getdents64(fd: i32, buf: &mut [u8]) -> SysResult {
    sys3(
        SYS_getdents64 as usize,
        fd as usize,
        buf.as_mut_ptr() as usize,
        buf.len(),
    )
}

/// Private futex wait while `*word == val`, with an optional relative timeout in nanoseconds.
pub fn futex_wait(
    word: &core::sync::atomic::AtomicU32,
    val: u32,
    timeout_ns: Option<u64>,
) -> SysResult {
    let ts;
    let tsp = match timeout_ns {
        Some(ns) => {
            ts = libc::timespec {
                tv_sec: (ns / 1_000_000_000) as i64,
                tv_nsec: (ns % 1_000_000_000) as i64,
            };
            &ts as *const _ as usize
        }
        None => 0,
    };
    sys6(
        SYS_futex as usize,
        word.as_ptr() as usize,
        (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as usize,
        val as usize,
        tsp,
        0,
        0,
    )
}

/// Wakes every waiter on a private futex.
pub fn futex_wake_all(word: &core::sync::atomic::AtomicU32) {
    let _ = sys6(
        SYS_futex as usize,
        word.as_ptr() as usize,
        (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize,
        i32::MAX as usize,
        0,
        0,
        0,
    );
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let _ = sys3(
        libc::SYS_clock_gettime as usize,
        libc::CLOCK_MONOTONIC as usize,
        &mut ts as *mut _ as usize,
        0,
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sets this thread's signal mask to `set` (raw 64-bit kernel sigset) and returns the old one.
#[link_section = ".text.hot.libcr_start"]
pub fn sigprocmask_raw(how: i32, set: Option<u64>) -> u64 {
    let mut old: u64 = 0;
    let newp = set.as_ref().map_or(0, |s| s as *const u64 as usize);
    let _ = sys6(
        SYS_rt_sigprocmask as usize,
        how as usize,
        newp,
        &mut old as *mut u64 as usize,
        8,
        0,
        0,
    );
    old
}

/// Queues signal `sig` to thread `tid` of process `tgid` with a caller-chosen `siginfo`.
pub fn tgsigqueueinfo(tgid: i32, tid: i32, sig: i32, info: &libc::siginfo_t) -> SysResult {
    sys6(
        SYS_rt_tgsigqueueinfo as usize,
        tgid as usize,
        tid as usize,
        sig as usize,
        info as *const _ as usize,
        0,
        0,
    )
}

/// `arch_prctl(code, addr)`.
pub fn arch_prctl(code: i32, addr: usize) -> SysResult {
    sys3(SYS_arch_prctl as usize, code as usize, addr, 0)
}

/// Reads this thread's `fs` base (its TLS / glibc `struct pthread` pointer).
#[link_section = ".text.hot.libcr_start"]
pub fn get_fs_base() -> usize {
    let mut fs: usize = 0;
    let _ = arch_prctl(0x1003, &mut fs as *mut usize as usize);
    fs
}

/// Ends the whole process.
pub fn exit_group(code: i32) -> ! {
    loop {
        raw6(SYS_exit_group as usize, code as usize, 0, 0, 0, 0, 0);
    }
}

/// A small fixed buffer for formatting numbers and paths without the heap.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> StackBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }
    /// Appends bytes (truncating silently at capacity - 1, keeping room for a NUL).
    #[inline(always)]
    pub fn push(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            if self.len + 1 < N {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }
    /// Appends a decimal number.
    #[inline(always)]
    pub fn num(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&tmp[i..])
    }
    /// Appends `ns` nanoseconds as milliseconds with one decimal (`12.3`).
    pub fn ms(&mut self, ns: u64) -> &mut Self {
        self.num(ns / 1_000_000).push(b".").num(ns / 100_000 % 10)
    }
    /// The bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// The bytes plus a terminating NUL (for paths passed to the kernel).
    pub fn as_cstr(&mut self) -> &[u8] {
        self.buf[self.len] = 0;
        &self.buf[..=self.len]
    }
}

/// Parses a `Name:\t%016x` line of a `/proc` status file (the first `name` in it).
pub fn status_hex_field(status: &[u8], name: &[u8]) -> Option<u64> {
    let at = status.windows(name.len()).position(|w| w == name)?;
    let mut v = 0u64;
    for &b in status[at + name.len()..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
    {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => break,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}
