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
/// Control sockets of the forwarded processes this agent stopped (-1: none).
static SOCKS: [AtomicI32; MAX] = [const { AtomicI32::new(-1) }; MAX];
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
}

/// In a restored process: the lists belong to the checkpointed one (the sockets too).
pub fn forget() {
    COUNT.store(0, Release);
    for s in &SOCKS {
        s.store(-1, Release);
    }
}

/// Records a target (from a callback). `EDEADLK` when it is the requester of a
/// `CR_CHKPT_PROHIBIT_SELF` request; `ENOSYS` for a group scope in a one-process checkpoint.
pub fn add(scope: i32, pid: i32) -> Result<i32, i32> {
    let flags = FLAGS.load(Acquire);
    if flags & protocol::FLAG_PROHIBIT_SELF != 0 && pid == REQUESTER.load(Acquire) {
        return Err(libc::EDEADLK);
    }
    if flags & protocol::FLAG_BARRIER == 0 && scope != crate::api::types::CR_SCOPE_PROC {
        // A one-process checkpoint adds single processes itself; finding trees, groups and
        // sessions is cr_checkpoint's job (it does, in multi-process checkpoints).
        return Err(libc::ENOSYS);
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

/// An API request for a tree, process group or session reaches one process (the tree's root,
/// the group's or session's leader): every other process of the scope is added here, as if
/// forwarded, before anything is stopped (so reading `/proc` may allocate).
pub fn add_scope(scope: i32, id: i32) -> Result<(), i32> {
    use crate::api::types::{CR_SCOPE_PGRP, CR_SCOPE_PROC, CR_SCOPE_SESS};
    // Fields of /proc/PID/stat after the command: 0 state, 1 ppid, 2 pgrp, 3 session.
    let field = match scope {
        CR_SCOPE_PGRP => Some(2),
        CR_SCOPE_SESS => Some(3),
        _ => None,
    };
    let stat_field = |pid: i32, n: usize| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(n)?
            .parse()
            .ok()
    };
    let children = |pid: i32| -> Vec<i32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|t| {
                std::fs::read_to_string(t.path().join("children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    };
    let mut todo: Vec<i32> = match field {
        Some(n) => std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| stat_field(p, n) == Some(id))
            .collect(),
        None if scope == CR_SCOPE_PROC => return Ok(()),
        None => vec![id],
    };
    let me = crate::sys::getpid();
    let mut seen = Vec::new();
    while let Some(p) = todo.pop() {
        if seen.contains(&p) || stat_field(p, 1).is_none() {
            continue;
        }
        seen.push(p);
        todo.extend(children(p));
        // Zombies have nothing to save.
        let zombie = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if p != me && !zombie {
            add(CR_SCOPE_PROC, p)?;
        }
    }
    Ok(())
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

/// Connects to process `pid` of our own pid namespace (no allocation).
fn connect(pid: i32) -> Result<i32, i32> {
    let (ns, _) = protocol::own_identity();
    let (addr, len) = protocol::socket_addr(ns, pid);
    // SAFETY: socket calls on a descriptor we own, with a valid address.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(libc::EMFILE);
        }
        if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
            libc::close(fd);
            return Err(crate::api::types::CR_ENOSUPPORT);
        }
        Ok(fd)
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
    for (i, slot) in SOCKS.iter().enumerate().take(count()) {
        let (_, pid) = target(i);
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
    for (i, s) in SOCKS.iter().enumerate().take(count()) {
        let (_, pid) = target(i);
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
    for (i, s) in SOCKS.iter().enumerate().take(count()) {
        if s.load(Acquire) >= 0 {
            // SAFETY: signalling a process that took part in our checkpoint.
            unsafe { libc::kill(target(i).1, sig) };
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
}
