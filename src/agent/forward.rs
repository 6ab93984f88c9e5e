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
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

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

/// The post-checkpoint signal of the request being served (0: none).
pub fn post_signal() -> i32 {
    SIGNAL.load(Acquire)
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
    let start = crate::sys::monotonic_ns();
    let deadline = start + AGENT_START_NS;
    let mut next_wake = 0u64;
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
            let now = crate::sys::monotonic_ns();
            if libc::kill(pid, 0) != 0 || now > deadline {
                return Err(crate::api::types::CR_ENOSUPPORT);
            }
            // An agent that binds its socket only when woken: wake it (again, now and then: a
            // process in the middle of an exec loses the wake-up), its main thread only
            // (`protocol::wake`), the process once half the wait is over.
            if now >= next_wake && protocol::agent_sign(pid) == protocol::AgentSign::Wakeable {
                let _ = if now - start < AGENT_START_NS / 2 {
                    protocol::wake(pid)
                } else {
                    protocol::wake_process(pid)
                };
                next_wake = now + protocol::WAKE_AGAIN_NS;
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
            r.flags = (req.flags & protocol::FLAGS_SAVE) | protocol::FLAG_BARRIER;
            r.timeout_ms = req.timeout_ms;
            r.requester = req.requester;
            r.target = pid;
            r.scope = crate::api::types::CR_SCOPE_PROC;
            r.dest = req.dest;
            r.dest_len = req.dest_len;
            r.files = req.files;
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

/// Most shared-description entries a forwarded checkpoint records.
const MAX_SHARES: usize = 4096;
/// Descriptors of the forwarded checkpoint's processes that share an open file description:
/// `proc << 48 | group << 32 | fd` (proc: 0 = us, then each process in the order the images
/// follow ours). Written into our image as `REC_SHARES` (see [`write_shares`]).
static SHARES: [AtomicU64; MAX_SHARES] = [const { AtomicU64::new(0) }; MAX_SHARES];
static NSHARES: AtomicUsize = AtomicUsize::new(0);

/// One descriptor met while looking for shared descriptions (in caller-provided scratch memory).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Held {
    dev: u64,
    ino: u64,
    pid: i32,
    fd: i32,
    proc: u32,
    group: u32,
}

/// `kcmp(p1, p2, KCMP_FILE, fd1, fd2) == 0`: one open file description.
fn same_description(p1: i32, p2: i32, fd1: i32, fd2: i32) -> bool {
    const KCMP_FILE: usize = 0;
    crate::sys::sys6(
        libc::SYS_kcmp as usize,
        p1 as usize,
        p2 as usize,
        KCMP_FILE,
        fd1 as usize,
        fd2 as usize,
        0,
    ) == Ok(0)
}

/// One-process checkpoint, once every forwarded process is stopped: finds the open file
/// descriptions that descriptors of different processes (or several of one) share, as
/// `cr_checkpoint` does for a tree, so a restart gives them one description again (shared
/// offset and flags). Sockets and the image's own description are left out. `buf` is scratch
/// memory for the candidates. Raw syscalls and fixed buffers only.
pub fn find_shares(img_fd: i32, buf: &mut [u8]) {
    NSHARES.store(0, Release);
    let whole = buf.len() / core::mem::size_of::<Held>() * core::mem::size_of::<Held>();
    // The scratch buffer is page aligned, so the cast cannot fail.
    let Ok(held) = bytemuck::try_cast_slice_mut::<u8, Held>(&mut buf[..whole]) else {
        return;
    };
    let me = crate::sys::getpid();
    let mut n = 0usize;
    let mut proc = 0u32;
    let mut add_process = |pid: i32, proc: u32, n: &mut usize| {
        let mut dir = StackBuf::<64>::new();
        dir.push(b"/proc/").num(pid as u64).push(b"/fd");
        each_number(dir.as_cstr(), |fd| {
            let mut path = StackBuf::<96>::new();
            path.push(b"/proc/")
                .num(pid as u64)
                .push(b"/fd/")
                .num(fd as u64);
            let Ok(st) = crate::sys::stat(path.as_cstr(), 0) else {
                return;
            };
            // Our own control sockets are sockets too.
            if st.st_mode & libc::S_IFMT == libc::S_IFSOCK
                || same_description(pid, me, fd, img_fd)
                || *n == held.len()
            {
                return;
            }
            held[*n] = Held {
                dev: st.st_dev,
                ino: st.st_ino,
                pid,
                fd,
                proc,
                group: 0,
            };
            *n += 1;
        });
    };
    add_process(me, proc, &mut n);
    for (i, s) in SOCKS.iter().enumerate().take(NPIDS.load(Acquire)) {
        if s.load(Acquire) >= 0 {
            proc += 1;
            add_process(PIDS[i].load(Acquire), proc, &mut n);
        }
    }
    let mut group = 0u32;
    let mut out = 0usize;
    for i in 0..n {
        if held[i].group != 0 {
            continue;
        }
        let a = held[i];
        let mut members = 1;
        for j in i + 1..n {
            let b = held[j];
            if b.group == 0
                && (b.dev, b.ino) == (a.dev, a.ino)
                && same_description(a.pid, b.pid, a.fd, b.fd)
            {
                if members == 1 {
                    group += 1;
                    held[i].group = group;
                }
                held[j].group = group;
                members += 1;
            }
        }
    }
    for h in held[..n].iter().filter(|h| h.group != 0) {
        if out == MAX_SHARES {
            break;
        }
        let word = (h.proc as u64) << 48 | (h.group as u64 & 0xffff) << 32 | h.fd as u32 as u64;
        SHARES[out].store(word, Relaxed);
        out += 1;
    }
    NSHARES.store(out, Release);
}

/// Writes the descriptions [`find_shares`] found into our image (a forwarded checkpoint only).
pub fn write_shares(
    w: &mut crate::image::writer::MetaWriter,
) -> Result<(), crate::image::writer::Full> {
    let n = NSHARES.load(Acquire);
    if n == 0 || count() == 0 {
        return Ok(());
    }
    let mut buf = [crate::image::tree::ShareRec {
        proc: 0,
        fd: 0,
        group: 0,
        _pad: 0,
    }; 256];
    // One record per chunk of entries: the reader appends them.
    let mut start = 0;
    while start < n {
        let k = (n - start).min(buf.len());
        for (j, slot) in buf.iter_mut().take(k).enumerate() {
            let w = SHARES[start + j].load(Relaxed);
            *slot = crate::image::tree::ShareRec {
                proc: (w >> 48) as u32,
                fd: w as u32 as i32,
                group: ((w >> 32) & 0xffff) as u32,
                _pad: 0,
            };
        }
        w.raw(
            crate::image::format::REC_SHARES,
            bytemuck::cast_slice(&buf[..k]),
        )?;
        start += k;
    }
    Ok(())
}
