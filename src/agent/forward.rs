//! `cr_forward_checkpoint`: processes a callback adds to the checkpoint in progress.
//!
//! The program's callbacks record (scope, pid) pairs here ([`add`]). In a multi-process
//! checkpoint (`FLAG_BARRIER`) the agent hands the list to `cr_checkpoint` with its "stopped"
//! reply ([`describe`]) and the tool adds those processes to the cut. In a one-process checkpoint
//! (an API request, `cr_checkpoint -p`) this agent coordinates them itself: it stops each one
//! with a barrier request that carries the same image descriptor ([`stop_all`]), writes its own
//! image, lets each append its image in turn ([`write_all`]), and releases them when it is
//! released itself ([`release_all`]); the file is then the images back to back. Everything after
//! the program's threads are stopped uses raw syscalls and fixed buffers only.

use crate::protocol::{self, Request};
use crate::sys::StackBuf;
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicUsize, Ordering::*};

/// Most forwarded targets per checkpoint.
const MAX: usize = 16;

/// Forwarded targets: `scope << 32 | pid`.
static TARGETS: [AtomicI64; MAX] = [const { AtomicI64::new(0) }; MAX];
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// Most processes a one-process checkpoint adds (targets with their trees, groups, sessions).
const MAX_PROCS: usize = 128;
/// The processes the targets stand for (a one-process checkpoint), and our control sockets to
/// those we stopped (-1: none).
static PIDS: [AtomicI32; MAX_PROCS] = [const { AtomicI32::new(0) }; MAX_PROCS];
static NPIDS: AtomicUsize = AtomicUsize::new(0);
static SOCKS: [AtomicI32; MAX_PROCS] = [const { AtomicI32::new(-1) }; MAX_PROCS];
/// Flags and requester of the request being served.
static FLAGS: AtomicU32 = AtomicU32::new(0);
static REQUESTER: AtomicI32 = AtomicI32::new(0);
/// The request's post-checkpoint signal (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The control thread starts serving a request: no targets yet.
pub fn begin(flags: u32, requester: i32, signal: i32) {
    FLAGS.store(flags, Release);
    REQUESTER.store(requester, Release);
    SIGNAL.store(signal, Release);
    COUNT.store(0, Release);
    NPIDS.store(0, Release);
}

/// In a restored process: the lists belong to the checkpointed one (the sockets too).
pub fn forget() {
    COUNT.store(0, Release);
    NPIDS.store(0, Release);
    for s in &SOCKS {
        s.store(-1, Release);
    }
}

/// Records a target (from a callback). `EDEADLK` when it is the requester of a
/// `CR_CHKPT_PROHIBIT_SELF` request.
pub fn add(scope: i32, pid: i32) -> Result<i32, i32> {
    let flags = FLAGS.load(Acquire);
    if flags & protocol::FLAG_PROHIBIT_SELF != 0 && pid == REQUESTER.load(Acquire) {
        return Err(libc::EDEADLK);
    }
    let word = (scope as i64) << 32 | pid as i64;
    let n = COUNT.load(Acquire);
    if TARGETS[..n].iter().any(|t| t.load(Relaxed) == word) {
        return Ok(0);
    }
    if n == MAX {
        return Err(libc::E2BIG);
    }
    TARGETS[n].store(word, Release);
    COUNT.store(n + 1, Release);
    Ok(0)
}

/// Number of recorded targets.
pub fn count() -> usize {
    COUNT.load(Acquire)
}

fn target(i: usize) -> (i32, i32) {
    let w = TARGETS[i].load(Acquire);
    ((w >> 32) as i32, w as i32)
}

/// The targets as text for the "stopped" reply of a multi-process checkpoint: `fwd S:PID ...`.
pub fn describe(out: &mut StackBuf<240>) {
    let n = count();
    if n == 0 {
        return;
    }
    out.push(b"fwd");
    for i in 0..n {
        let (scope, pid) = target(i);
        out.push(b" ").num(scope as u64).push(b":").num(pid as u64);
    }
}

/// How long a process whose agent is still starting (a fresh fork child) may take to listen.
const AGENT_START_NS: u64 = 2_000_000_000;

/// Connects to process `pid` of our own pid namespace (no allocation). A live process whose
/// agent does not listen yet (just forked) gets a moment.
fn connect(pid: i32) -> Result<i32, i32> {
    let (ns, _) = protocol::own_identity();
    let (addr, len) = protocol::socket_addr(ns, pid);
    let deadline = crate::sys::monotonic_ns() + AGENT_START_NS;
    loop {
        // SAFETY: socket calls on a descriptor we own, with a valid address.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(libc::EMFILE);
            }
            if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) == 0 {
                return Ok(fd);
            }
            libc::close(fd);
            if libc::kill(pid, 0) != 0 || crate::sys::monotonic_ns() > deadline {
                return Err(crate::api::types::CR_ENOSUPPORT);
            }
            let ms = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            libc::nanosleep(&ms, core::ptr::null_mut());
        }
    }
}

/// The next reply on `sock` within `timeout_ms`.
fn reply_within(sock: i32, timeout_ms: i32) -> Result<protocol::Reply, i32> {
    let mut p = libc::pollfd {
        fd: sock,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, timeout_ms) } <= 0 {
        return Err(libc::ETIMEDOUT);
    }
    match protocol::recv_reply(sock, 0) {
        Ok(Some(r)) => Ok(r),
        _ => Err(libc::EIO),
    }
}

/// One-process checkpoint: stops every forwarded process (each answers "stopped" and waits).
/// On failure returns (errno, pid) after releasing those already stopped.
pub fn stop_all(img_fd: i32, req: &Request, timeout_ms: i32) -> Result<(), (i32, i32)> {
    expand();
    let requester = REQUESTER.load(Acquire);
    let n = NPIDS.load(Acquire);
    if FLAGS.load(Acquire) & protocol::FLAG_PROHIBIT_SELF != 0
        && PIDS[..n].iter().any(|p| p.load(Relaxed) == requester)
    {
        return Err((libc::EDEADLK, requester));
    }
    for (i, slot) in SOCKS.iter().enumerate().take(n) {
        let pid = PIDS[i].load(Acquire);
        let res = (|| {
            let sock = connect(pid)?;
            slot.store(sock, Release);
            let mut r = Request::new(protocol::REQ_CHECKPOINT);
            r.flags = (req.flags & protocol::FLAG_SAVE_ALL) | protocol::FLAG_BARRIER;
            r.timeout_ms = req.timeout_ms;
            r.requester = req.requester;
            r.target = pid;
            r.scope = crate::api::types::CR_SCOPE_PROC;
            r.dest = req.dest;
            r.dest_len = req.dest_len;
            protocol::send(sock, &r, Some(img_fd))?;
            loop {
                let rep = reply_within(sock, timeout_ms)?;
                match rep.status {
                    protocol::STATUS_ACCEPTED => {}
                    protocol::STATUS_QUIESCED => return Ok(()),
                    // Omitted (cr_run --omit, a callback's OMIT): left out.
                    libc::ESRCH => {
                        slot.store(-1, Release);
                        // SAFETY: closing our socket to that process.
                        unsafe { libc::close(sock) };
                        return Ok(());
                    }
                    e if e > 0 => return Err(e),
                    _ => return Err(libc::EPROTO),
                }
            }
        })();
        if let Err(e) = res {
            release_all();
            return Err((e, pid));
        }
    }
    Ok(())
}

/// One-process checkpoint, after our own image: each forwarded process appends its image
/// through the same file description. Returns the bytes written, or (errno, pid).
pub fn write_all() -> Result<u64, (i32, i32)> {
    let mut bytes = 0;
    for (i, s) in SOCKS.iter().enumerate().take(NPIDS.load(Acquire)) {
        let pid = PIDS[i].load(Acquire);
        let sock = s.load(Acquire);
        if sock < 0 {
            continue; // omitted
        }
        let write = Request::new(protocol::REQ_WRITE);
        protocol::send(sock, &write, None).map_err(|e| (e, pid))?;
        loop {
            let rep = reply_within(sock, -1).map_err(|e| (e, pid))?;
            match rep.status {
                s if s < 0 => {}
                0 => {
                    bytes += rep.bytes;
                    break;
                }
                e => return Err((e, pid)),
            }
        }
    }
    Ok(bytes)
}

/// Whether `fd` is one of our sockets to a forwarded process (never part of our image).
pub fn owns(fd: i32) -> bool {
    SOCKS.iter().any(|s| s.load(Acquire) == fd)
}

/// After a successful checkpoint: the request's post-checkpoint signal goes to every forwarded
/// process too (as to every process of a BLCR request), before they are released.
pub fn deliver_signal() {
    let sig = SIGNAL.load(Acquire);
    if sig <= 0 {
        return;
    }
    for (i, s) in SOCKS.iter().enumerate().take(NPIDS.load(Acquire)) {
        if s.load(Acquire) >= 0 {
            // SAFETY: signalling a process that took part in our checkpoint.
            unsafe { libc::kill(PIDS[i].load(Acquire), sig) };
        }
    }
}

/// Lets every forwarded process go and forgets them.
pub fn release_all() {
    let release = Request::new(protocol::REQ_RELEASE);
    for s in &SOCKS {
        let sock = s.swap(-1, AcqRel);
        if sock >= 0 {
            let _ = protocol::send(sock, &release, None);
            // SAFETY: closing our socket to that process.
            unsafe { libc::close(sock) };
        }
    }
    COUNT.store(0, Release);
    NPIDS.store(0, Release);
}

/// Adds `pid` to [`PIDS`] once (never ourselves); false when full.
fn push_pid(pid: i32) -> bool {
    let n = NPIDS.load(Acquire);
    if pid <= 0 || pid == crate::sys::getpid() || PIDS[..n].iter().any(|p| p.load(Relaxed) == pid) {
        return true;
    }
    if n == MAX_PROCS {
        return false;
    }
    PIDS[n].store(pid, Release);
    NPIDS.store(n + 1, Release);
    true
}

/// Calls `f` with every numeric entry of directory `path` (NUL-terminated).
fn each_number(path: &[u8], mut f: impl FnMut(i32)) {
    let Ok(dir) = crate::sys::open(
        path,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) else {
        return;
    };
    let dir = dir as i32;
    let mut buf = [0u8; 4096];
    while let Ok(len) = crate::sys::getdents64(dir, &mut buf) {
        if len == 0 {
            break;
        }
        let mut pos = 0;
        while pos < len {
            let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
            let n = super::quiesce::parse_dec(&buf[pos + 19..pos + reclen]);
            pos += reclen;
            if n > 0 {
                f(n as i32);
            }
        }
    }
    crate::sys::close(dir);
}

/// Reads a small /proc file into `buf`; returns the bytes read.
fn read_small(path: &[u8], buf: &mut [u8]) -> usize {
    let Ok(fd) = crate::sys::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return 0;
    };
    let n = crate::sys::read(fd as i32, buf).unwrap_or(0);
    crate::sys::close(fd as i32);
    n
}

/// Numeric field `n` after the command of /proc/PID/stat (1 ppid, 2 pgrp, 3 session), or -1; also
/// -1 for a zombie (nothing to save).
fn stat_field(pid: i32, n: usize) -> i64 {
    let mut path = StackBuf::<64>::new();
    path.push(b"/proc/").num(pid as u64).push(b"/stat");
    let mut buf = [0u8; 512];
    let len = read_small(path.as_cstr(), &mut buf);
    let Some(close) = buf[..len].iter().rposition(|&b| b == b')') else {
        return -1;
    };
    let mut fields = buf[close + 1..len]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    if fields.clone().next() == Some(&b"Z"[..]) {
        return -1;
    }
    fields.nth(n).map_or(-1, super::quiesce::parse_dec)
}

/// Adds the children of `pid` (of all its threads).
fn push_children(pid: i32) -> bool {
    let mut tasks = StackBuf::<64>::new();
    tasks.push(b"/proc/").num(pid as u64).push(b"/task");
    let mut ok = true;
    each_number(tasks.as_cstr(), |tid| {
        let mut path = StackBuf::<96>::new();
        path.push(b"/proc/")
            .num(pid as u64)
            .push(b"/task/")
            .num(tid as u64)
            .push(b"/children");
        let mut buf = [0u8; 1024];
        let len = read_small(path.as_cstr(), &mut buf);
        for c in buf[..len].split(|&b| b == b' ') {
            let n = super::quiesce::parse_dec(c);
            if n > 0 && stat_field(n as i32, 1) != -1 {
                ok &= push_pid(n as i32);
            }
        }
    });
    ok
}

/// Turns the recorded targets into processes: the process itself, or the members of its group
/// or session, each with its descendants (BLCR's scopes). Raw syscalls and fixed buffers only:
/// this runs while the program's threads are stopped.
fn expand() {
    use crate::api::types::{CR_SCOPE_PGRP, CR_SCOPE_PROC, CR_SCOPE_SESS};
    NPIDS.store(0, Release);
    for i in 0..count() {
        let (scope, id) = target(i);
        let start = NPIDS.load(Acquire);
        match scope {
            CR_SCOPE_PGRP | CR_SCOPE_SESS => {
                let field = if scope == CR_SCOPE_PGRP { 2 } else { 3 };
                each_number(b"/proc\0", |p| {
                    if stat_field(p, field) == id as i64 {
                        push_pid(p);
                    }
                });
            }
            _ => {
                push_pid(id);
            }
        }
        if scope != CR_SCOPE_PROC {
            // Descendants, breadth first over what was added (the list grows as we go).
            if scope != CR_SCOPE_PGRP && scope != CR_SCOPE_SESS && id == crate::sys::getpid() {
                push_children(id);
            }
            let mut j = start;
            while j < NPIDS.load(Acquire) {
                push_children(PIDS[j].load(Acquire));
                j += 1;
            }
        }
    }
}
