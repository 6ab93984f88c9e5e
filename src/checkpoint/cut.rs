//! One checkpoint in progress: the connections to the agents, the consistent cut (every process
//! stopped before any is written), the manifest, the images, the commit, the post-checkpoint
//! signal and the release. A [`Cut`] that ends without being committed releases every process
//! it stopped (stopping again those it continued) and removes its partial files, so every `?`
//! leaves the programs running as before and earlier images untouched.

use super::dest::{self, Dest, Out};
use super::procfs::{
    agent_coming, children, comm, ended, exit_status, exiting, is_waiting_restarter, ourselves,
    outer_pid, state_of, zombie_end,
};
use super::{CheckpointError, Note, Options, Outcome, Saved};
use crate::image::tree::{ShareRec, ZombieRec, ZOMBIE_SIGCHLD_DUE};
use crate::protocol::{self, Request};
use crate::tool::strerror;
use std::path::Path;
use std::time::{Duration, Instant};

/// BLCR's `CR_ENOSUPPORT`: a process without checkpoint support.
const CR_ENOSUPPORT: i32 = crate::api::types::CR_ENOSUPPORT;
/// How long to wait for a process that cr_restart is still restoring.
const RESTORE_WAIT: Duration = Duration::from_secs(60);
/// How long a process that shows no agent is looked at again: one in the middle of an exec
/// shows none for a moment (`tests/faults.rs` `checkpoint_during_fork_exec_churn`).
const EXEC_SETTLE: Duration = Duration::from_millis(100);
/// How long a process that is loading the agent may take to open its control socket.
const AGENT_START_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for every process to stop when no time limit is given (below the agent's own
/// limit for the wait between its QUIESCED and our WRITE).
const STOP_WAIT: Duration = Duration::from_secs(50);
/// How often a member that keeps exec'ing during the stop is asked again.
const EXEC_RETRIES: u32 = 20;
/// How long a process whose control socket closed may take to be seen ended.
const END_WAIT: Duration = Duration::from_secs(2);

/// How often, and after what pause, a member of a tree that answers "busy" is asked again.
const BUSY_RETRIES: u32 = 25;
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Whether `pid` ends (or has ended) within `limit`.
fn ends_within(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while !ended(pid) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Whether `pid` has ended, or is exiting and ends within `END_WAIT` (its socket closes before
/// it becomes a zombie: a subshell whose pipeline just finished).
fn gone(pid: i32) -> bool {
    ended(pid) || (exiting(pid) && ends_within(pid, END_WAIT))
}

/// "checkpoint of PID failed: WHAT: WHY", where WHY is `--time N ran out` for the agent's
/// ETIMEDOUT when a time limit was given (its text, "Connection timed out", says nothing).
fn failed_msg(pid: i32, what: &str, e: i32, time: Option<u32>) -> String {
    match time {
        Some(s) if e == libc::ETIMEDOUT => {
            format!("checkpoint of {pid} failed: {what}: --time {s} ran out")
        }
        _ => format!("checkpoint of {pid} failed: {what}: {}", strerror(e)),
    }
}

fn err(errno: i32, msg: String) -> CheckpointError {
    CheckpointError { errno, msg }
}

/// TEST ONLY (tests/faults.rs): with `LIBCR_TEST_STOP_AT=PHASE` in its environment the
/// requester stops itself (`SIGSTOP`) on reaching `PHASE` — `quiesced` (every process stopped,
/// nothing written yet; multi-process path), `written` (every image written, not committed) or
/// `committed` (renamed into place, no signal sent, nothing released) — so that a test can kill
/// it or the target exactly there, or change the destination, and then continue it.
fn test_stop_at(phase: &str) {
    if std::env::var_os("LIBCR_TEST_STOP_AT").is_some_and(|p| p == phase) {
        // SAFETY: stopping ourselves; a test continues or kills us.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// Connects to `pid`'s agent and checks that the socket is really that process's; `None` when
/// the process ended meanwhile (a member of a tree that exits before it is stopped is simply
/// not part of the cut).
fn try_connect(pid: i32) -> Result<Option<i32>, CheckpointError> {
    let started = Instant::now();
    let fd = loop {
        match protocol::connect(pid) {
            Ok(fd) => break fd,
            Err(_) if ended(pid) => return Ok(None),
            // One that is exiting (a callback called exit()) has lost its memory and socket
            // already: it is about to end, not without an agent.
            Err(_) if exiting(pid) && ends_within(pid, END_WAIT) => return Ok(None),
            // A child of cr_restart that is still being restored has no control socket yet.
            Err(_) if comm(pid) == "cr_restart" && !is_waiting_restarter(pid) => {
                if started.elapsed() > RESTORE_WAIT {
                    return Err(err(
                        libc::EAGAIN,
                        format!("process {pid} is still being restored; try again later"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // A process whose agent is starting (a fresh fork child, or one in the middle of an
            // exec whose new image preloads libcr) has no socket yet: give it a moment.
            Err(_) if started.elapsed() < AGENT_START_WAIT && agent_coming(pid) => {
                std::thread::sleep(Duration::from_millis(2));
            }
            // Its memory went while we looked (it started exiting after the checks above):
            // not a process without an agent.
            Err(_) if gone(pid) => return Ok(None),
            // A lazy agent that was woken (`protocol::connect`) and never bound its socket.
            Err(libc::ETIMEDOUT) => {
                return Err(err(libc::ETIMEDOUT, format!(
                    "process {pid} ({}) has the agent but did not bind its control socket when woken ({})",
                    comm(pid), super::procfs::wake_diagnosis(pid))))
            }
            Err(_) if comm(pid) == "cr_restart" => {
                return Err(err(CR_ENOSUPPORT, format!(
                    "process {pid} is cr_restart itself; checkpoint the restored program (its child) instead")))
            }
            // In the middle of an exec a process shows neither the agent's handlers nor, until
            // the kernel has laid out the new stack, its environment (`agent_coming`): looked at
            // again for a moment before it is called a process without an agent.
            Err(_) if started.elapsed() < EXEC_SETTLE => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => {
                return Err(err(CR_ENOSUPPORT, format!(
                    "process {pid} ({}) has no checkpoint support (start it with cr_run or link it with -lcr)",
                    comm(pid))))
            }
        }
    };
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut clen = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt on the connected socket with a valid ucred buffer.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut _,
            &mut clen,
        )
    };
    if cred.pid != pid {
        // SAFETY: closing the socket we opened.
        unsafe { libc::close(fd) };
        return Err(err(
            CR_ENOSUPPORT,
            format!(
                "process {pid} has no checkpoint support (its control socket belongs to pid {})",
                cred.pid
            ),
        ));
    }
    Ok(Some(fd))
}

/// The next message on `sock`, waiting until `deadline` (`None`: as long as it takes).
/// `Ok(None)`: the deadline passed.
fn recv_by(sock: i32, deadline: Option<Instant>) -> Result<Option<protocol::Reply>, i32> {
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        let mut p = libc::pollfd {
            fd: sock,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        match protocol::recv_reply(sock, libc::MSG_DONTWAIT) {
            Ok(Some(reply)) => return Ok(Some(reply)),
            Ok(None) | Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// `--time` ran out and the agent of `pid` did not say so itself (2 s after): its write of the
/// image does not return (a destination that stopped answering). The process stays stopped
/// until the write returns; it then finds its requester gone and lets the program go.
fn write_stuck(pid: i32, time: Option<u32>) -> CheckpointError {
    err(
        libc::ETIMEDOUT,
        format!(
            "checkpoint of {pid} failed: --time {} ran out, and the process does not answer: its write of the image is stuck (a destination that stopped answering?); it stays stopped until that write returns",
            time.unwrap_or(0)
        ),
    )
}

/// The note of progress message `r` of process `pid`.
fn progress(pid: i32, r: &protocol::Reply) -> Note {
    Note::Progress {
        pid,
        done: r.bytes,
        total: r.progress_total(),
    }
}

/// Opens a destination; says under `-v` when a file must be written under its temporary name
/// (no `O_TMPFILE` there: a requester killed mid-write would leave `.NAME.tmp` behind).
fn open_out(
    d: &Dest,
    compress: Option<i32>,
    note: &mut dyn FnMut(Note),
) -> Result<Out, CheckpointError> {
    let out = Out::open(d, compress)?;
    if let (Some(tmp), false) = (&out.tmp, out.unnamed()) {
        if out.path.as_ref() != Some(tmp) {
            note(Note::Info(format!(
                "no unnamed files (O_TMPFILE) where {} goes: writing {} and renaming it",
                out.what,
                tmp.display()
            )));
        }
    }
    Ok(out)
}

/// The pid of the process at the other end of control connection `sock`, as our pid namespace
/// sees it (`SO_PEERCRED`: the agent's process, also when it runs in a pid namespace of its
/// own after a restart); what `--compress`'s compressor reads pulled pieces from.
fn peer_pid(sock: i32) -> Option<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt fills at most `len` bytes of `cred`.
    let r = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

/// The checkpoint request for `opts.id` in `scope` writing to `out`.
fn request(opts: &Options, scope: i32, out: &Out) -> Request {
    let mut req = Request::new(protocol::REQ_CHECKPOINT);
    req.flags = opts.save;
    if opts.cow {
        req.flags |= protocol::FLAG_COW;
    }
    if opts.progress {
        req.flags |= protocol::FLAG_PROGRESS;
    }
    if out.split_ok() {
        req.flags |= protocol::FLAG_ZSPLIT;
        if std::env::var_os("CR_COMPRESS_ADAPT").is_some_and(|v| v == "0") {
            req.flags |= protocol::FLAG_ZWAIT;
        }
        // The compressor reads the pieces from the process itself where it may (its agent
        // says `via=pull` or `via=pipe(pull refused)`): paced by default then (the agent
        // hands pieces over while it is ahead of a plain checkpoint's pace);
        // `CR_COMPRESS_PACE=0` turns that off, `=1` asks for it on the pipe too.
        let pull = out.pull_ok();
        if pull {
            req.flags |= protocol::FLAG_ZPULL;
        }
        // The agent compresses the pieces itself where it can (`via=pack`, `agent::zpack`),
        // at the same level; else it pulls or pipes them as above, saying why.
        // `CR_COMPRESS_PACK=0` never asks.
        let level = opts.compress.unwrap_or(0);
        let pack = (1..=crate::agent::zpack::MAX_LEVEL).contains(&level)
            && std::env::var_os("CR_COMPRESS_PACK").is_none_or(|v| v != "0");
        if pack {
            req.flags |= protocol::FLAG_ZPACK | (level as u32) << protocol::ZPACK_LEVEL_SHIFT;
        }
        let pace = std::env::var_os("CR_COMPRESS_PACE");
        if pace.as_ref().is_some_and(|v| v == "1")
            || ((pull || pack) && pace.is_none_or(|v| v != "0"))
        {
            req.flags |= protocol::FLAG_ZPACE;
        }
    }
    req.files = opts.files;
    req.timeout_ms = opts.time.map_or(0, |s| s.saturating_mul(1000));
    req.requester = std::process::id() as i32;
    req.target = opts.id;
    req.scope = scope;
    // For cr_get_checkpoint_info() (we send it ourselves; an agent passes it on only to the
    // processes its callbacks forwarded the checkpoint to).
    req.signal = opts.signal;
    if let Some(p) = &out.path {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        req.set_dest(abs.as_os_str().as_encoded_bytes());
        // A named temporary file (no O_TMPFILE here): the agent removes it if the checkpoint
        // is given up while we cannot (killed, or its write stuck past our --time).
        if out.named_tmp() {
            req.flags |= protocol::FLAG_TMP_NAMED;
        }
    }
    req
}

/// The signal a member gets after the checkpoint: the requested one; a process that was stopped
/// before (and was continued for the checkpoint) is stopped again when none was asked for.
fn signal_for(opts: &Options, was_stopped: bool) -> i32 {
    if was_stopped && opts.signal == 0 && opts.stop_again {
        libc::SIGSTOP
    } else {
        opts.signal
    }
}

/// The zombie record of the requester chain's topmost process `top`, a child of the saved
/// process `parent`: a child that exited with status 0 (see `scope::requester_chain`).
fn requester_zombie(top: i32, parent: i32, note: &mut dyn FnMut(Note)) -> ZombieRec {
    note(Note::Info(format!(
        "process {top} ({}), which runs this checkpoint for process {parent}, is saved as a child of it that exited with status 0",
        comm(top)
    )));
    ZombieRec {
        pid: protocol::target_identity(top).1,
        ppid: protocol::target_identity(parent).1,
        status: 0,
        flags: ZOMBIE_SIGCHLD_DUE,
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The warnings recorded in the images of the file at `path`, as notes ("process PID: " before
/// each when there are several processes, or when `pids` names them).
fn image_warnings(path: &Path, pids: Option<&[i32]>, note: &mut dyn FnMut(Note)) {
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    let Ok((_, images)) = crate::image::tree::open_all(&f) else {
        return;
    };
    for (k, img) in images.iter().enumerate() {
        for w in &img.warnings {
            let who = match pids {
                Some(p) => p.get(k).copied(),
                None if images.len() > 1 => Some(img.header.pid as i32),
                None => None,
            };
            note(Note::Warning(match who {
                Some(pid) => format!("process {pid}: {w}"),
                None => w.clone(),
            }));
        }
    }
}

/// Checkpoint of one process (`-p`): a plain image, or, when the process is the one that runs
/// us and waits for `chain` (the requester chain's topmost process), a one-process tree image
/// whose zombie table holds `chain`.
pub(super) fn checkpoint_one(
    opts: &Options,
    pid: i32,
    scope: i32,
    chain: Option<i32>,
    plan: Option<&super::incremental::Plan>,
    note: &mut dyn FnMut(Note),
) -> Result<Outcome, CheckpointError> {
    let started = Instant::now();
    let dest = dest::resolve(&opts.dest, &opts.commit, opts.id, pid)?;
    let sock =
        try_connect(pid)?.ok_or_else(|| err(libc::ESRCH, format!("no process with pid {pid}")))?;
    let mut cut = Cut::new(opts);
    cut.outs.push(open_out(&dest, opts.compress, note)?);
    // A stopped process cannot take part: continue it for the checkpoint and stop it again
    // afterwards (BLCR: SIGSTOP after the checkpoint if the process was stopped), unless another
    // signal was asked for.
    let stopped = state_of(pid) == Some('T');
    if stopped {
        // SAFETY: continuing the target; it is stopped again afterwards.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    cut.members.push(Member::new(pid, sock, 0, stopped));
    let mut req = request(opts, scope, &cut.outs[0]);
    super::incremental::apply(&mut req, plan, pid);
    if let Some(top) = chain {
        let inner = protocol::target_identity(pid).1;
        let zombie = requester_zombie(top, pid, note);
        let bytes =
            crate::image::tree::manifest_bytes(&[inner], &[], &[zombie], scope, (0, 1), now_ns());
        cut.outs[0].write_aligned(&bytes)?;
    }
    // `--compress` of an image that is the file's sole content: the agent may write it raw to
    // the file itself (a tree manifest before it keeps it in the pipe).
    let fds = if chain.is_none() {
        cut.outs[0].pull_from(peer_pid(sock).unwrap_or(pid));
        cut.outs[0].request_fds()
    } else {
        vec![cut.outs[0].fd]
    };
    if let Err(e) = protocol::send_fds(sock, &req, &fds) {
        return Err(err(
            e,
            format!("cannot send the request to {pid}: {}", strerror(e)),
        ));
    }
    // A one-process request releases itself when it fails; on success it waits for RELEASE.
    let first = protocol::await_accepted(sock, false);
    // With --time, not past its end and 2 s more (see `write_stuck`).
    let deadline = opts
        .time
        .map(|s| started + Duration::from_secs(u64::from(s) + 2));
    let final_reply = match first {
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => loop {
            match recv_by(sock, deadline) {
                Ok(Some(r)) if r.status == protocol::STATUS_PROGRESS => note(progress(pid, &r)),
                Ok(None) => {
                    cut.outs[0].leave_to_agent();
                    return Err(write_stuck(pid, opts.time));
                }
                other => break other,
            }
        },
        Err(e) => Err(e),
    };
    let Ok(Some(reply)) = final_reply else {
        // It closed the socket: it is ending (its descriptors go before it is a zombie), e.g.
        // a callback called exit(). BLCR: ESRCH, as for a process that is gone.
        if ends_within(pid, END_WAIT) {
            let msg = match zombie_end(pid) {
                Some(end) => format!("process {pid} {end} during the checkpoint: nothing to checkpoint"),
                None => format!("process {pid} ended during the checkpoint (in its callbacks or a critical section?): nothing to checkpoint"),
            };
            return Err(err(libc::ESRCH, msg));
        }
        // Alive and not ending: it closed the socket, which exec does (it is close-on-exec); a
        // new program with an agent answers on the same pid.
        if let Ok(Some(again)) = try_connect(pid) {
            // SAFETY: closing the connection just made.
            unsafe { libc::close(again) };
            return Err(err(
                libc::EIO,
                format!("process {pid} ran exec during the checkpoint (in a callback, or a thread was inside exec when the request came): the program it was is gone, nothing was written; checkpoint the new program again, or without -p (a tree checkpoint asks the new program at once)"),
            ));
        }
        return Err(err(
            libc::EIO,
            format!("process {pid} closed its control socket during the checkpoint (did it exec?)"),
        ));
    };
    if reply.status != 0 {
        return Err(cut.failed(0, &reply));
    }
    cut.members[0].contacted = true;
    cut.members[0].bytes = reply.bytes;
    cut.members[0].report = reply.message();
    test_stop_at("written");
    cut.commit()?;
    test_stop_at("committed");
    let outcome = cut.finish(&[0]);
    if let Some(path) = &outcome.path {
        image_warnings(path, None, note);
    }
    Ok(outcome)
}

/// One process of a checkpoint.
struct Member {
    pid: i32,
    /// Its control socket.
    sock: i32,
    /// Index of its destination in `Cut::outs`.
    out: usize,
    /// It was stopped (SIGSTOP) before: continued for the checkpoint, stopped again after.
    stopped: bool,
    /// It has our request (and must hear RELEASE if we give up).
    contacted: bool,
    /// Its callbacks or `cr_run --omit` left it out of the checkpoint, or it ended.
    omitted: bool,
    /// It ended before it stopped for the checkpoint (while its callbacks ran, say).
    ended: bool,
    /// Bytes of its image.
    bytes: u64,
    /// Its agent's report on the write (see `Saved::report`).
    report: String,
    /// Its agent can write its image at a place we give (`protocol::CAP_PLACED` in its
    /// `STATUS_QUIESCED`), at once with the others.
    placeable: bool,
    /// … also from a copy-on-write writer (`protocol::CAP_COW_PLACED`).
    cow_placeable: bool,
}

impl Member {
    fn new(pid: i32, sock: i32, out: usize, stopped: bool) -> Self {
        Member {
            pid,
            sock,
            out,
            stopped,
            contacted: false,
            omitted: false,
            ended: false,
            bytes: 0,
            report: String::new(),
            placeable: false,
            cow_placeable: false,
        }
    }
}

/// A checkpoint in progress (see the module documentation).
struct Cut<'a> {
    opts: &'a Options,
    members: Vec<Member>,
    outs: Vec<Out>,
    /// (scope, pid) pairs members' callbacks forwarded the checkpoint to
    /// (`cr_forward_checkpoint`), pids as our /proc names them.
    forwarded: Vec<(i32, i32)>,
    /// Every image is committed: nothing to undo any more.
    committed: bool,
    /// The processes were released (`finish`).
    released: bool,
    /// An incremental checkpoint's parent (for its one process).
    plan: Option<&'a super::incremental::Plan>,
    /// `--compress`: what the compression did, and its wall time.
    compressed: Option<(crate::image::compress::Stats, f64)>,
}

impl Drop for Cut<'_> {
    /// A checkpoint that did not commit: every process we asked is released (those stopped
    /// before are stopped again) and partial files are removed. One committed but not
    /// finished (its larger cut failed: [`super::Barrier::written`]) is released without the
    /// post-checkpoint signal.
    fn drop(&mut self) {
        if self.committed && !self.released {
            let release = Request::new(protocol::REQ_RELEASE);
            for mb in self.members.iter().filter(|mb| mb.contacted && !mb.omitted) {
                let _ = protocol::send(mb.sock, &release, None);
            }
        }
        if !self.committed {
            let release = Request::new(protocol::REQ_RELEASE);
            for mb in &self.members {
                if mb.contacted && !mb.omitted {
                    let _ = protocol::send(mb.sock, &release, None);
                }
            }
            for mb in &self.members {
                if mb.stopped {
                    // SAFETY: stopping again a process we continued for the checkpoint.
                    unsafe { libc::kill(mb.pid, libc::SIGSTOP) };
                }
            }
            for o in &mut self.outs {
                o.discard();
            }
        }
        for mb in &self.members {
            // SAFETY: closing our sockets to the agents.
            unsafe { libc::close(mb.sock) };
        }
    }
}

impl<'a> Cut<'a> {
    fn new(opts: &'a Options) -> Self {
        Cut {
            opts,
            members: Vec::new(),
            outs: Vec::new(),
            forwarded: Vec::new(),
            committed: false,
            released: false,
            plan: None,
            compressed: None,
        }
    }

    /// Adds `pid` (with its socket) as a member; a stopped process is continued for the
    /// checkpoint. With one file per process its destination is opened too.
    fn add(&mut self, pid: i32, sock: i32, per_proc: bool) -> Result<(), CheckpointError> {
        let out = if per_proc {
            let d = dest::resolve(&self.opts.dest, &self.opts.commit, self.opts.id, pid);
            // The socket is ours to close from here on.
            let opened = d.and_then(|d| Out::open(&d, self.opts.compress));
            match opened {
                Ok(o) => {
                    self.outs.push(o);
                    self.outs.len() - 1
                }
                Err(e) => {
                    // SAFETY: closing the socket of a process that never became a member.
                    unsafe { libc::close(sock) };
                    return Err(e);
                }
            }
        } else {
            0
        };
        let stopped = state_of(pid) == Some('T');
        if stopped {
            // SAFETY: continuing a member for the checkpoint; it is stopped again afterwards.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        self.members.push(Member::new(pid, sock, out, stopped));
        Ok(())
    }

    /// Connects again to member `i` (after an exec) and resends the barrier request; false when
    /// it ended meanwhile (then it is left out).
    fn ask_again(&mut self, scope: i32, i: usize) -> Result<bool, CheckpointError> {
        let pid = self.members[i].pid;
        // SAFETY: closing our socket to the old image's agent (-1 marks it closed).
        unsafe { libc::close(self.members[i].sock) };
        self.members[i].sock = -1;
        let Some(sock) = try_connect(pid)? else {
            self.members[i].omitted = true;
            self.members[i].ended = true;
            self.members[i].contacted = false;
            return Ok(false);
        };
        self.members[i].sock = sock;
        let out = &self.outs[self.members[i].out];
        let mut req = request(self.opts, scope, out);
        req.flags |= protocol::FLAG_BARRIER;
        super::incremental::apply(&mut req, self.plan, pid);
        out.pull_from(peer_pid(sock).unwrap_or(pid));
        match protocol::send_fds(sock, &req, &out.request_fds()) {
            Ok(()) => {
                self.members[i].contacted = true;
                Ok(true)
            }
            Err(_) if gone(pid) => {
                self.members[i].omitted = true;
                self.members[i].ended = true;
                self.members[i].contacted = false;
                Ok(false)
            }
            Err(e) => Err(err(
                e,
                format!("cannot send the request to {pid}: {}", strerror(e)),
            )),
        }
    }

    /// Sends the barrier request to members `range` and waits until each is stopped (or
    /// omitted).
    fn stop_members(
        &mut self,
        scope: i32,
        range: std::ops::Range<usize>,
        deadline: Instant,
        limit: Duration,
        note: &mut dyn FnMut(Note),
    ) -> Result<(), CheckpointError> {
        for i in range.clone() {
            let (pid, sock) = (self.members[i].pid, self.members[i].sock);
            let out = &self.outs[self.members[i].out];
            let mut req = request(self.opts, scope, out);
            req.flags |= protocol::FLAG_BARRIER;
            super::incremental::apply(&mut req, self.plan, pid);
            out.pull_from(peer_pid(sock).unwrap_or(pid));
            match protocol::send_fds(sock, &req, &out.request_fds()) {
                Ok(()) => self.members[i].contacted = true,
                // It exited since we connected: not part of the cut.
                Err(_) if gone(pid) => {
                    self.members[i].omitted = true;
                    self.members[i].ended = true;
                }
                // It exec'd since we connected: its new image's agent is asked below.
                Err(_) => {}
            }
        }
        for i in range {
            let pid = self.members[i].pid;
            if self.members[i].omitted {
                continue;
            }
            let mut attempts = 0;
            let mut busy = 0;
            if !self.members[i].contacted && !self.ask_again(scope, i)? {
                continue;
            }
            loop {
                let sock = self.members[i].sock;
                match recv_by(sock, Some(deadline)) {
                    Ok(Some(r)) if r.status == protocol::STATUS_ACCEPTED => {}
                    Ok(Some(r)) if r.status == protocol::STATUS_QUIESCED => {
                        self.members[i].placeable = r.bytes & protocol::CAP_PLACED != 0;
                        self.members[i].cow_placeable = r.bytes & protocol::CAP_COW_PLACED != 0;
                        // "fwd S:P ...": its callbacks forwarded the checkpoint to more processes.
                        let msg = r.message();
                        if let Some(list) = msg.strip_prefix("fwd") {
                            for item in list.split_whitespace() {
                                let Some((s, p)) = item.split_once(':') else {
                                    continue;
                                };
                                if let (Ok(s), Ok(p)) = (s.parse::<i32>(), p.parse::<i32>()) {
                                    let p = outer_pid(pid, p).unwrap_or(p);
                                    self.forwarded.push((s, p));
                                }
                            }
                        }
                        break;
                    }
                    Ok(Some(r)) if r.status == libc::ESRCH => {
                        // Omitted (cr_run --omit, or a callback's CR_CHECKPOINT_OMIT): left out.
                        note(Note::Info(format!(
                            "process {pid} was omitted from the checkpoint"
                        )));
                        self.members[i].omitted = true;
                        break;
                    }
                    // A process found in the tree is busy with another checkpoint (e.g. a
                    // supervisor's periodic one) or still finishing one: ask again shortly.
                    Ok(Some(r)) if r.status == libc::EBUSY && i > 0 && busy < BUSY_RETRIES => {
                        busy += 1;
                        note(Note::Info(format!(
                            "process {pid} is busy with another checkpoint; asking again"
                        )));
                        std::thread::sleep(BUSY_PAUSE);
                        if !self.ask_again(scope, i)? {
                            break;
                        }
                    }
                    Ok(Some(r)) => {
                        let e = if r.status > 0 { r.status } else { libc::EPROTO };
                        return Err(err(e, failed_msg(pid, &r.message(), e, self.opts.time)));
                    }
                    Ok(None) => {
                        return Err(err(
                            libc::ETIMEDOUT,
                            format!(
                                "process {pid} did not stop for the checkpoint within {} s",
                                limit.as_secs()
                            ),
                        ))
                    }
                    // It exited before it stopped: not part of the cut (if its parent is, it is
                    // saved as the zombie it is now). One that is exiting has closed its socket
                    // but is not a zombie yet (a subshell whose pipeline just finished).
                    Err(_) if gone(pid) => {
                        self.members[i].omitted = true;
                        self.members[i].ended = true;
                        break;
                    }
                    // It exec'd before it stopped (the old image's socket closed): ask the new
                    // image's agent.
                    Err(_) if attempts < EXEC_RETRIES => {
                        attempts += 1;
                        if !self.ask_again(scope, i)? {
                            break;
                        }
                    }
                    Err(_) => {
                        return Err(err(
                            libc::EIO,
                            format!(
                        "process {pid} ended or closed its control socket during the checkpoint"
                    ),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Member `i` answered its write order with failure `reply`: it released itself (the
    /// others are released when the cut is dropped). A write of it still stuck on the
    /// destination: the temporary file is left for its agent to remove.
    fn failed(&mut self, i: usize, reply: &protocol::Reply) -> CheckpointError {
        let pid = self.members[i].pid;
        self.members[i].omitted = true;
        let msg = reply.message();
        let o = self.members[i].out;
        if msg.contains(protocol::LEFT_BEHIND) {
            self.outs[o].leave_to_agent();
        }
        // A broken compressing pipe: the compressor's own reason, not the agent's EPIPE.
        if reply.status == libc::EPIPE {
            if let Some((errno, why)) = self.outs[o].compressor_error() {
                return err(errno, format!("checkpoint of {pid} failed: {why}"));
            }
        }
        err(
            reply.status,
            failed_msg(pid, &msg, reply.status, self.opts.time),
        )
    }

    /// Every file durable first, then renamed into place, then the directories synced.
    fn commit(&mut self) -> Result<(), CheckpointError> {
        let sync = self.opts.sync;
        for o in &mut self.outs {
            if let Some((st, secs)) = o.finish_compressing()? {
                let (mut all, t) = self.compressed.unwrap_or_default();
                all.raw += st.raw;
                all.stored += st.stored;
                all.zstd_frames += st.zstd_frames;
                all.raw_frames += st.raw_frames;
                all.agent_frames += st.agent_frames;
                all.pulled += st.pulled;
                all.packed += st.packed;
                if st.pull_refused != 0 {
                    all.pull_refused = st.pull_refused;
                }
                all.gap += st.gap;
                all.gap_closed = all.gap_closed.max(st.gap_closed);
                all.images += st.images;
                all.direct = if all.images == st.images {
                    st.direct
                } else {
                    all.direct && st.direct
                };
                self.compressed = Some((all, t.max(secs)));
            }
        }
        for o in &self.outs {
            o.sync(sync).map_err(|e| {
                err(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("cannot commit {}: {e}", o.what),
                )
            })?;
        }
        for o in &mut self.outs {
            o.rename().map_err(|e| {
                err(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("cannot commit {}: {e}", o.what),
                )
            })?;
        }
        let mut dirs_synced = Vec::new();
        for o in &self.outs {
            let dir = o
                .path
                .as_ref()
                .and_then(|p| p.parent().map(Path::to_path_buf));
            if !dirs_synced.contains(&dir) {
                o.sync_dir(sync);
                dirs_synced.push(dir);
            }
        }
        for o in &mut self.outs {
            drop(o.file.take());
        }
        self.committed = true;
        Ok(())
    }

    /// After the commit: the post-checkpoint signal to every saved member (`live`), then the
    /// release; returns what was saved where.
    fn finish(&mut self, live: &[usize]) -> Outcome {
        for &i in live {
            let mb = &self.members[i];
            let sig = signal_for(self.opts, mb.stopped);
            if sig != 0 {
                // SAFETY: the requested post-checkpoint signal, now that every image is complete
                // (and durable, unless sync is off).
                unsafe { libc::kill(mb.pid, sig) };
            }
        }
        let release = Request::new(protocol::REQ_RELEASE);
        for &i in live {
            let _ = protocol::send(self.members[i].sock, &release, None);
        }
        self.released = true;
        let saved = live
            .iter()
            .map(|&i| {
                let mb = &self.members[i];
                Saved {
                    pid: mb.pid,
                    dest: self.outs[mb.out].what.clone(),
                    bytes: mb.bytes,
                    report: mb.report.clone(),
                }
            })
            .collect();
        Outcome {
            saved,
            total: 0,
            what: self
                .outs
                .first()
                .map(|o| o.what.clone())
                .unwrap_or_default(),
            path: self.outs.first().and_then(|o| o.path.clone()),
            compressed: self.compressed,
        }
    }
}

/// `kcmp(p1, p2, KCMP_FILE, fd1, fd2)`: whether the two descriptors are one open file
/// description.
fn same_description(p1: i32, p2: i32, fd1: i32, fd2: i32) -> Result<bool, i32> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp only compares kernel objects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            p1 as libc::c_long,
            p2 as libc::c_long,
            KCMP_FILE,
            fd1 as libc::c_long,
            fd2 as libc::c_long,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOSYS))
    } else {
        Ok(r == 0)
    }
}

/// A descriptor of a process being checkpointed: (index in the checkpoint, pid, fd).
type Holder = (u32, i32, i32);

/// The open file descriptions that more than one descriptor of the (stopped) processes `pids`
/// refer to: one group number each. Candidates are grouped by the file's (device, inode) and
/// compared with kcmp within a group (sockets too: a listener or a socket pair end several
/// processes inherited is one socket again after a restart). The image descriptors we passed
/// (`out_fds`, ours) are left out. Without kcmp: none (with a warning).
fn shared_descriptions(pids: &[i32], out_fds: &[i32], note: &mut dyn FnMut(Note)) -> Vec<ShareRec> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id() as i32;
    let mut unavailable = |e: i32| -> Vec<ShareRec> {
        note(Note::Warning(format!(
            "cannot compare descriptors (kcmp: {}); descriptions shared between processes will be separate after a restart",
            strerror(e)
        )));
        Vec::new()
    };
    // (device, inode) → descriptions → their (process index, pid, fd).
    let mut by_file: std::collections::BTreeMap<(u64, u64), Vec<Vec<Holder>>> = Default::default();
    for (i, &pid) in pids.iter().enumerate() {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        fds.sort_unstable();
        'fd: for fd in fds {
            let Ok(md) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
                continue;
            };
            for &o in out_fds {
                match same_description(pid, me, fd, o) {
                    Ok(true) => continue 'fd,
                    Ok(false) | Err(libc::EBADF) => {}
                    Err(e) => return unavailable(e),
                }
            }
            let descs = by_file.entry((md.dev(), md.ino())).or_default();
            let mut placed = false;
            for d in descs.iter_mut() {
                let (_, p0, fd0) = d[0];
                match same_description(p0, pid, fd0, fd) {
                    Ok(true) => {
                        d.push((i as u32, pid, fd));
                        placed = true;
                        break;
                    }
                    Ok(false) | Err(libc::EBADF) => {}
                    Err(e) => return unavailable(e),
                }
            }
            if !placed {
                descs.push(vec![(i as u32, pid, fd)]);
            }
        }
    }
    let mut shares = Vec::new();
    for (k, d) in by_file
        .values()
        .flatten()
        .filter(|d| d.len() > 1)
        .enumerate()
    {
        let group = k as u32 + 1;
        shares.extend(d.iter().map(|&(proc, _, fd)| ShareRec {
            proc,
            fd,
            group,
            _pad: 0,
        }));
    }
    shares.sort_by_key(|s| (s.proc, s.fd));
    shares
}

/// Unreaped children (zombies) of the stopped processes `pids`: their parents may still collect
/// them, so they are saved as zombies (pid, parent, wait status) and re-created as such.
fn zombie_children(pids: &[i32], note: &mut dyn FnMut(Note)) -> Vec<ZombieRec> {
    let mut out = Vec::new();
    for &p in pids {
        for c in children(p) {
            if state_of(c) != Some('Z') {
                continue;
            }
            let Some(status) = exit_status(c) else {
                continue;
            };
            note(Note::Warning(format!(
                "process {c} (a child of {p}) is a zombie; it is saved as one, for its parent to collect"
            )));
            out.push(ZombieRec {
                pid: protocol::target_identity(c).1,
                ppid: protocol::target_identity(p).1,
                status,
                flags: 0,
            });
        }
    }
    out
}

/// The error for member `pid` that failed to answer (`e`, `how`): a member killed while stopped,
/// or while it writes, says so (ESRCH), not how we noticed. Stopped for the checkpoint (every
/// signal blocked), nothing but SIGKILL ends it; its parent may not have reaped it yet, then its
/// wait status says.
fn lost(pid: i32, e: i32, how: String) -> CheckpointError {
    if gone(pid) {
        let end = zombie_end(pid).unwrap_or_else(|| "was killed (SIGKILL)".into());
        err(
            libc::ESRCH,
            format!("process {pid} {end} while it was stopped for the checkpoint: no image"),
        )
    } else {
        err(e, how)
    }
}

/// Whether the images of members `live` can be written at once (`protocol::FLAG_PLACED`), or
/// why not: each must go to a regular file we created (not a stream: there bytes go out in
/// order; not `O_APPEND`), uncompressed (`--compress` pipes them through one compressor), not
/// an incremental checkpoint's, and every agent must know the request (an older agent, e.g.
/// of a process restored from an older image, does not say `protocol::CAP_PLACED`; nor does
/// one whose callbacks forwarded the checkpoint, which appends those images to its own).
/// The default: `CR_TREE_WRITE=turn` in our environment asks for the images in turn. (It was
/// not the default from 5ade31d to this change: under load, tests/faults.rs
/// `target_forks_during_its_checkpoint` restarted a tree image written at once with "page data
/// checksum mismatch". The member forked in its parent's callback had inherited the parent's
/// scratch area, shared memory its agent saved as the program's while the parent, writing its
/// own image at the same time, changed it: `agent::scratch::forget_in_child`,
/// docs/RELIABILITY.md.)
fn placement(cut: &Cut, live: &[usize], incremental: bool) -> Result<(), String> {
    if std::env::var_os("CR_TREE_WRITE").is_some_and(|v| v == "turn") {
        return Err("CR_TREE_WRITE=turn asks for it".into());
    }
    if cut.opts.compress.is_some() {
        return Err("--compress pipes them through one compressor".into());
    }
    if incremental {
        return Err("an incremental checkpoint".into());
    }
    for &i in live {
        let o = &cut.outs[cut.members[i].out];
        let regular = o.file.is_some()
            && crate::sys::fstat(o.fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        if !regular {
            return Err(format!("{} is not a file of ours (a stream)", o.what));
        }
        if crate::sys::fcntl(o.fd, libc::F_GETFL, 0)
            .is_ok_and(|fl| fl & libc::O_APPEND as usize != 0)
        {
            return Err(format!("{} is open with O_APPEND", o.what));
        }
        let mb = &cut.members[i];
        if !mb.placeable {
            return Err(format!(
                "process {}'s agent does not write at a given place (an older agent, or its callbacks forwarded the checkpoint)",
                mb.pid
            ));
        }
    }
    Ok(())
}

/// Asks members `live` to write their images one after the other (each after the previous
/// one, at the file position), waiting for each reply.
fn write_in_turn(
    cut: &mut Cut,
    live: &[usize],
    write: &Request,
    deadline: Instant,
    note: &mut dyn FnMut(Note),
) -> Result<(), CheckpointError> {
    for &i in live {
        let (pid, sock) = (cut.members[i].pid, cut.members[i].sock);
        if let Err(e) = protocol::send(sock, write, None) {
            return Err(lost(
                pid,
                e,
                format!("cannot send the request to {pid}: {}", strerror(e)),
            ));
        }
        // With --time, not past its end (and 2 s for the agent to say so itself): a write
        // that never returns (a destination that stops answering: a FUSE or NFS server) keeps
        // the agent from answering at all.
        let reply = loop {
            match recv_by(sock, cut.opts.time.map(|_| deadline)) {
                Ok(Some(r)) if r.status == protocol::STATUS_PROGRESS => note(progress(pid, &r)),
                Ok(Some(r)) if r.status < 0 => {}
                Ok(Some(r)) => break r,
                Ok(None) => {
                    let o = cut.members[i].out;
                    cut.outs[o].leave_to_agent();
                    return Err(write_stuck(pid, cut.opts.time));
                }
                _ => {
                    return Err(lost(
                        pid,
                        libc::EIO,
                        format!("process {pid} closed its control socket during the checkpoint"),
                    ))
                }
            }
        };
        if reply.status != 0 {
            return Err(cut.failed(i, &reply));
        }
        cut.members[i].bytes = reply.bytes;
        cut.members[i].report = reply.message();
    }
    Ok(())
}

/// Members `live` write their images at once (`protocol::FLAG_PLACED`): each builds its
/// metadata and says its image's length (`STATUS_SIZED`); each is then given its offset (after
/// its file's manifest, in the manifest's order: the file's bytes are those of a write in
/// turn), the file is extended to its end, and all write at the same time, with positioned
/// writes through the one description. The agents do not sync: the commit syncs the file once.
///
/// With `FLAG_COW` (every member's agent said `protocol::CAP_COW_PLACED`): each member forks
/// its writer in the stop and answers `STATUS_FORKED`; once all have, `REQ_RUN` lets them all
/// run on (`stopped_at`: when the stop began, for `-v`), and their writers' lengths and
/// offsets go as above, through each control thread.
fn write_at_once(
    cut: &mut Cut,
    live: &[usize],
    mut write: Request,
    deadline: Instant,
    stopped_at: Instant,
    note: &mut dyn FnMut(Note),
) -> Result<(), CheckpointError> {
    let cow = write.flags & protocol::FLAG_COW != 0;
    write.flags |= protocol::FLAG_PLACED;
    if cut.opts.sync {
        write.flags |= protocol::FLAG_PLACED_NOSYNC;
    }
    for &i in live {
        let (pid, sock) = (cut.members[i].pid, cut.members[i].sock);
        if let Err(e) = protocol::send(sock, &write, None) {
            return Err(lost(
                pid,
                e,
                format!("cannot send the request to {pid}: {}", strerror(e)),
            ));
        }
    }
    let mut sizes = if cow {
        collect_replies(cut, live, Want::Forked, deadline, note)?
    } else {
        collect_replies(cut, live, Want::Sized, deadline, note)?
    };
    if cow {
        // Every member's writer exists (each answered STATUS_FORKED), or a member is written
        // stopped after all (it answered STATUS_SIZED at once; its report says why).
        let forked: Vec<usize> = (0..live.len())
            .filter(|&k| sizes[k].status == protocol::STATUS_FORKED)
            .collect();
        if forked.len() == live.len() {
            // Only now may any of them run: one released earlier could have sent bytes to a
            // member whose state was not recorded yet.
            let run = Request::new(protocol::REQ_RUN);
            for &i in live {
                send_order(cut, i, &run)?;
            }
            note(Note::Info(format!(
                "copy-on-write: the {} processes run on after {} ms stopped (every writer exists; the images are written meanwhile)",
                live.len(),
                stopped_at.elapsed().as_millis()
            )));
        } else {
            let stopped: Vec<String> = (0..live.len())
                .filter(|k| !forked.contains(k))
                .map(|k| cut.members[live[k]].pid.to_string())
                .collect();
            note(Note::Info(format!(
                "copy-on-write: process(es) {} written stopped (their reports say why): the {} processes stay stopped until the images are written",
                stopped.join(", "),
                live.len()
            )));
        }
        if !forked.is_empty() {
            let who: Vec<usize> = forked.iter().map(|&k| live[k]).collect();
            let more = collect_replies(cut, &who, Want::Sized, deadline, note)?;
            for (r, &k) in more.into_iter().zip(&forked) {
                sizes[k] = r;
            }
        }
    }
    // Where each image goes: after what its file holds already (the manifest), in order.
    let mut next: Vec<u64> = cut
        .outs
        .iter()
        // SAFETY: lseek on our own descriptor.
        .map(|o| unsafe { libc::lseek(o.fd, 0, libc::SEEK_CUR) }.max(0) as u64)
        .collect();
    let mut places = Vec::with_capacity(live.len());
    for (k, &i) in live.iter().enumerate() {
        let o = cut.members[i].out;
        places.push(next[o]);
        next[o] += sizes[k].bytes;
    }
    // Every image's range inside the file before any is written: no agent's write extends it
    // (ext4 waits inside `io_submit` for a direct write that does), and none shrinks it.
    for (o, out) in cut.outs.iter().enumerate() {
        if !live.iter().any(|&i| cut.members[i].out == o) {
            continue;
        }
        // SAFETY: ftruncate of our own file.
        if unsafe { libc::ftruncate(out.fd, next[o] as libc::off_t) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(err(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot extend {}: {e}", out.what),
            ));
        }
    }
    for (k, &i) in live.iter().enumerate() {
        send_order(cut, i, &Request::place(places[k]))?;
    }
    let done = collect_replies(cut, live, Want::Final, deadline, note)?;
    for (k, &i) in live.iter().enumerate() {
        let pid = cut.members[i].pid;
        if done[k].bytes != sizes[k].bytes {
            return Err(err(
                libc::EIO,
                format!(
                    "process {pid} wrote {} bytes of its image, not the {} it announced",
                    done[k].bytes, sizes[k].bytes
                ),
            ));
        }
        cut.members[i].bytes = done[k].bytes;
        cut.members[i].report = done[k].message();
    }
    Ok(())
}

/// Sends `req` to member `i` of a write at once. Where it cannot (the member failed, answered
/// and closed its connection: its writer was killed, say), the failure it answered is the
/// error, not the broken connection.
fn send_order(cut: &mut Cut, i: usize, req: &Request) -> Result<(), CheckpointError> {
    let (pid, sock) = (cut.members[i].pid, cut.members[i].sock);
    let Err(e) = protocol::send(sock, req, None) else {
        return Ok(());
    };
    while let Ok(Some(r)) = protocol::recv_reply(sock, libc::MSG_DONTWAIT) {
        if r.status > 0 {
            return Err(cut.failed(i, &r));
        }
    }
    Err(lost(
        pid,
        e,
        format!("cannot send the request to {pid}: {}", strerror(e)),
    ))
}

/// What [`collect_replies`] waits for.
#[derive(Clone, Copy, PartialEq)]
enum Want {
    /// The first answer to a copy-on-write placed write order: `STATUS_FORKED` (its writer
    /// exists) or `STATUS_SIZED` (written stopped after all).
    Forked,
    /// `STATUS_SIZED`.
    Sized,
    /// The final reply.
    Final,
}

/// The replies of members `live` to a write order, all watched at once (see [`Want`]). The
/// first failure ends the wait (the others are released, and stop writing, when the cut is
/// dropped).
fn collect_replies(
    cut: &mut Cut,
    live: &[usize],
    want: Want,
    deadline: Instant,
    note: &mut dyn FnMut(Note),
) -> Result<Vec<protocol::Reply>, CheckpointError> {
    let sized = want != Want::Final;
    let mut got: Vec<Option<protocol::Reply>> = vec![None; live.len()];
    let timed = cut.opts.time.is_some();
    while got.iter().any(Option::is_none) {
        let pending: Vec<usize> = (0..live.len()).filter(|&k| got[k].is_none()).collect();
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|&k| libc::pollfd {
                fd: cut.members[live[k]].sock,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = if timed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // (With --time, 2 s after its end: the agent did not say so itself.)
                let i = live[pending[0]];
                let o = cut.members[i].out;
                cut.outs[o].leave_to_agent();
                return Err(write_stuck(cut.members[i].pid, cut.opts.time));
            }
            left.as_millis().clamp(1, i32::MAX as u128) as i32
        } else {
            -1
        };
        // SAFETY: `fds` holds `fds.len()` valid pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if e == libc::EINTR {
                continue;
            }
            return Err(err(e, format!("poll: {}", strerror(e))));
        }
        for (p, &k) in fds.iter().zip(&pending) {
            if p.revents == 0 {
                continue;
            }
            let i = live[k];
            let pid = cut.members[i].pid;
            loop {
                match protocol::recv_reply(p.fd, libc::MSG_DONTWAIT) {
                    Ok(Some(r)) if r.status == protocol::STATUS_PROGRESS => note(progress(pid, &r)),
                    Ok(Some(r)) if sized && r.status == protocol::STATUS_SIZED => {
                        got[k] = Some(r);
                        break;
                    }
                    Ok(Some(r)) if want == Want::Forked && r.status == protocol::STATUS_FORKED => {
                        got[k] = Some(r);
                        break;
                    }
                    Ok(Some(r)) if r.status < 0 => {}
                    Ok(Some(r)) if r.status > 0 => return Err(cut.failed(i, &r)),
                    Ok(Some(r)) if sized => {
                        return Err(err(
                            libc::EPROTO,
                            format!(
                                "process {pid} answered {} before it was given its place",
                                r.status
                            ),
                        ))
                    }
                    Ok(Some(r)) => {
                        got[k] = Some(r);
                        break;
                    }
                    Ok(None) | Err(libc::EINTR) => break,
                    Err(_) => {
                        return Err(lost(
                            pid,
                            libc::EIO,
                            format!(
                                "process {pid} closed its control socket during the checkpoint"
                            ),
                        ))
                    }
                }
            }
        }
    }
    Ok(got.into_iter().flatten().collect())
}

/// Checkpoint of several processes as one consistent cut: every process is stopped before any
/// is written. One tree image (manifest, then the images), or with one file per process a
/// manifest in each.
pub(super) fn checkpoint_many(
    opts: &Options,
    pids: &[i32],
    scope: i32,
    requester: Option<(i32, i32)>,
    plan: Option<&super::incremental::Plan>,
    mut barrier: Option<&mut dyn super::Barrier>,
    note: &mut dyn FnMut(Note),
) -> Result<Outcome, CheckpointError> {
    let per_proc = matches!(opts.dest, super::Destination::Dir(_));
    // Every process must have an agent: fail before anything is stopped. Those that ended since
    // they were listed are left out.
    let first = pids[0];
    let mut cut = Cut::new(opts);
    cut.plan = plan;
    if !per_proc {
        let d = dest::resolve(&opts.dest, &opts.commit, opts.id, first)?;
        cut.outs.push(open_out(&d, opts.compress, note)?);
    }
    for &p in pids {
        if let Some(sock) = try_connect(p)? {
            cut.add(p, sock, per_proc)?;
        }
    }
    if cut.members.is_empty() {
        return Err(err(
            libc::ESRCH,
            format!("process {first} ended: nothing to checkpoint"),
        ));
    }

    // 1. Ask everybody to stop; 2. wait until every process is stopped. Processes forked while
    // we did (their parents are stopped now, so the set cannot grow for ever) join the cut.
    let limit = opts
        .time
        .map_or(STOP_WAIT, |s| Duration::from_secs(u64::from(s) + 2));
    let deadline = Instant::now() + limit;
    let stopped_at = Instant::now();
    let mut from = 0;
    while from < cut.members.len() {
        let to = cut.members.len();
        cut.stop_members(scope, from..to, deadline, limit, note)?;
        from = to;
        let mut known = ourselves();
        known.extend(cut.members.iter().map(|mb| mb.pid));
        let forwarded: Vec<i32> = std::mem::take(&mut cut.forwarded)
            .into_iter()
            .flat_map(|(scope, pid)| super::scope::forward_scope(scope, pid))
            .collect();
        let mut newcomers: Vec<i32> = cut
            .members
            .iter()
            .filter(|mb| !mb.omitted)
            .flat_map(|mb| children(mb.pid))
            .chain(forwarded)
            .filter(|c| !known.contains(c) && !ended(*c))
            .collect();
        newcomers.sort_unstable();
        newcomers.dedup();
        for c in newcomers {
            if cut.members.len() >= crate::image::tree::MAX_PROCS {
                return Err(err(libc::E2BIG, "too many processes to checkpoint".into()));
            }
            let Some(sock) = try_connect(c)? else {
                continue;
            };
            cut.add(c, sock, per_proc)?;
        }
    }
    let live: Vec<usize> = (0..cut.members.len())
        .filter(|&i| !cut.members[i].omitted)
        .collect();
    if live.is_empty() {
        let gone: Vec<String> = cut
            .members
            .iter()
            .filter(|mb| mb.ended)
            .map(|mb| mb.pid.to_string())
            .collect();
        let msg = match gone.len() {
            0 => "every process was omitted: nothing to checkpoint".to_string(),
            1 => match gone[0].parse().ok().and_then(super::procfs::zombie_end_soon) {
                Some(end) => format!("process {} {end} before it stopped for the checkpoint (in its callbacks or a critical section): nothing to checkpoint", gone[0]),
                None => format!("process {} ended during the checkpoint (in its callbacks or a critical section?): nothing to checkpoint", gone[0]),
            },
            _ => format!("processes {} ended or were omitted during the checkpoint: nothing to checkpoint", gone.join(", ")),
        };
        return Err(err(libc::ESRCH, msg));
    }
    if per_proc {
        for mb in cut.members.iter().filter(|mb| mb.omitted) {
            let o = &mut cut.outs[mb.out];
            o.discard();
            o.path = None;
            o.file = None;
        }
    }

    test_stop_at("quiesced");
    if let Some(b) = barrier.as_deref_mut() {
        let pids: Vec<i32> = live.iter().map(|&i| cut.members[i].pid).collect();
        b.stopped(&pids)?;
    }
    // 3. Everything is stopped: record what the processes share, write the manifest(s), then
    // let the processes write their images, at once where they can (`write_at_once`).
    let live_pids: Vec<i32> = live.iter().map(|&i| cut.members[i].pid).collect();
    let mut zombies = zombie_children(&live_pids, note);
    if let Some((top, parent)) = requester.filter(|(_, p)| live_pids.contains(p)) {
        zombies.push(requester_zombie(top, parent, note));
    }
    let tree = live.len() > 1 || !zombies.is_empty();
    let shares = if tree {
        let fds: Vec<i32> = cut.outs.iter().map(|o| o.fd).collect();
        shared_descriptions(&live_pids, &fds, note)
    } else {
        Vec::new()
    };
    let inner: Vec<i32> = live_pids
        .iter()
        .map(|&p| protocol::target_identity(p).1)
        .collect();
    let now = now_ns();
    let mut manifest_bytes = 0u64;
    if tree {
        let n = live.len() as u32;
        let heads: Vec<(usize, Vec<u8>)> = if per_proc {
            live.iter()
                .enumerate()
                .map(|(k, &i)| {
                    let bytes = crate::image::tree::manifest_bytes(
                        &inner,
                        &shares,
                        &zombies,
                        scope,
                        (k as u32, 1),
                        now,
                    );
                    (cut.members[i].out, bytes)
                })
                .collect()
        } else {
            vec![(
                0,
                crate::image::tree::manifest_bytes(&inner, &shares, &zombies, scope, (0, n), now),
            )]
        };
        for (o, bytes) in heads {
            cut.outs[o].write_aligned(&bytes)?;
            manifest_bytes += bytes.len() as u64;
        }
    }
    let mut write = Request::new(protocol::REQ_WRITE);
    if !tree {
        // One image alone in its file: `--compress` may write it raw (`Out::raw_target`).
        write.flags |= protocol::FLAG_RAW_OK;
    }
    if live.len() == 1 && barrier.is_none() {
        // Alone in the cut: its agent may release it before its image is written (a buffered
        // delta: agent::deltabuf).
        write.flags |= protocol::FLAG_SOLE;
    }
    if opts.cow && live.len() == 1 {
        write.flags |= protocol::FLAG_COW;
    }
    // The images are written at once where each can be given its place in the file before it
    // writes (its length is known once its metadata is built), else one after the other.
    let placed = if live.len() > 1 {
        placement(&cut, &live, plan.is_some())
    } else {
        Err(String::new())
    };
    if opts.cow && live.len() > 1 {
        // Copy-on-write for several processes: each forks its writer in the stop, all run on
        // once every writer exists, and the writers write at once (`write_at_once`).
        let old = live
            .iter()
            .map(|&i| &cut.members[i])
            .find(|mb| !mb.cow_placeable);
        match (&placed, old) {
            (Ok(()), None) => write.flags |= protocol::FLAG_COW,
            (Ok(()), Some(mb)) => note(Note::Info(format!(
                "copy-on-write: {} processes are written stopped (process {}'s agent writes copy-on-write only alone: an older agent)",
                live.len(),
                mb.pid
            ))),
            (Err(why), _) => note(Note::Info(format!(
                "copy-on-write: {} processes are written stopped (copy-on-write of several needs their images written at once: {why})",
                live.len()
            ))),
        }
    }
    let at_once = if live.len() > 1 {
        match placed {
            Ok(()) => {
                note(Note::Info(format!(
                    "writing the {} images at once (each at its place in the file)",
                    live.len()
                )));
                true
            }
            Err(why) => {
                note(Note::Info(format!(
                    "writing the {} images one after the other: {why}",
                    live.len()
                )));
                false
            }
        }
    } else {
        false
    };
    if at_once {
        write_at_once(&mut cut, &live, write, deadline, stopped_at, note)?;
    } else {
        write_in_turn(&mut cut, &live, &write, deadline, note)?;
    }

    // 4. Commit; 5. the post-checkpoint signal to every process, then release them all.
    test_stop_at("written");
    cut.commit()?;
    test_stop_at("committed");
    if let Some(b) = barrier {
        let bytes = manifest_bytes + live.iter().map(|&i| cut.members[i].bytes).sum::<u64>();
        b.written(bytes)?;
    }
    let mut outcome = cut.finish(&live);
    outcome.total = manifest_bytes + outcome.saved.iter().map(|s| s.bytes).sum::<u64>();
    if let super::Destination::Dir(d) = &opts.dest {
        outcome.what = d.display().to_string();
    }
    for (k, o) in cut.outs.iter().enumerate() {
        let Some(path) = &o.path else { continue };
        let owners: Vec<i32> = live
            .iter()
            .map(|&i| &cut.members[i])
            .filter(|mb| mb.out == k)
            .map(|mb| mb.pid)
            .collect();
        image_warnings(path, Some(&owners), note);
    }
    Ok(outcome)
}
