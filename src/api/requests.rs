//! Checkpoint and restart requests and their handles (`cr_request_*`, `cr_wait_*`, `cr_log_*`,
//! `cr_reap_*`, `cr_poll_*`, and the deprecated `cr_request*`).
//!
//! A checkpoint handle is the descriptor of a connection to the target's control socket (as in
//! BLCR, where it was a descriptor of the kernel's control file): the agent answers on it when
//! the request is over. A restart handle is the read end of the pipe the restarting child
//! reports on. Handles of a process that has since been restarted from an image (the descriptor
//! did not survive) are recognised by the restart generation and answer `CR_ERESTARTED`.

use super::state::{self, fail};
use super::types::*;
use crate::agent::quiesce;
use crate::protocol::{self, Reply, Request};
use core::sync::atomic::{AtomicU32, Ordering::*};
use libc::{c_char, c_int, c_uint, timeval};
use std::collections::HashMap;
use std::sync::Mutex;

/// Bumped each time this process is restarted from an image.
pub static RESTART_GEN: AtomicU32 = AtomicU32::new(0);

enum Kind {
    Checkpoint,
    /// A request that failed at once with `CR_CHKPT_ASYNC_ERR`: reaps with this errno.
    Failed(c_int),
    Restart {
        pid: libc::pid_t,
        report: Option<Vec<u8>>,
    },
}

struct Handle {
    gen: u32,
    kind: Kind,
}

static HANDLES: Mutex<Option<HashMap<u64, Handle>>> = Mutex::new(None);

fn with_handles<R>(f: impl FnOnce(&mut HashMap<u64, Handle>) -> R) -> R {
    let mut g = HANDLES.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

fn errno() -> c_int {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn own_target(scope: c_int, target: libc::pid_t) -> libc::pid_t {
    if target != 0 {
        return target;
    }
    // SAFETY: plain identity queries.
    unsafe {
        match scope {
            CR_SCOPE_PGRP => libc::getpgrp(),
            CR_SCOPE_SESS => libc::getsid(0),
            _ => libc::getpid(),
        }
    }
}

/// `cr_request_checkpoint`.
pub fn request_checkpoint(
    args: *const cr_checkpoint_args_t,
    handle: *mut cr_checkpoint_handle_t,
) -> Result<(), c_int> {
    let ts = state::require()?;
    if args.is_null() || handle.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: non-null pointer to the caller's args.
    let a = unsafe { *args };
    let both = CR_CHKPT_PTRACED_ALLOW | CR_CHKPT_PTRACED_SKIP;
    if a.cr_version != CR_CHECKPOINT_ARGS_VERSION
        || !(CR_SCOPE_PROC..=CR_SCOPE_TREE).contains(&a.cr_scope)
        || a.cr_flags & !CR_CHKPT_VALID != 0
        || a.cr_flags & both == both
    {
        return Err(libc::EINVAL);
    }
    // SAFETY: probing the destination descriptor.
    if a.cr_fd < 0 || unsafe { libc::fcntl(a.cr_fd, libc::F_GETFD) } < 0 {
        return Err(libc::EBADF);
    }
    let target = own_target(a.cr_scope, a.cr_target);
    match start_checkpoint(ts, &a, target, handle) {
        Err(e) if a.cr_flags & CR_CHKPT_ASYNC_ERR != 0 => deferred_failure(e, handle),
        r => r,
    }
}

/// `CR_CHKPT_ASYNC_ERR`: the request "succeeds" and its handle reports `errno` at reap time.
fn deferred_failure(errno: c_int, handle: *mut cr_checkpoint_handle_t) -> Result<(), c_int> {
    // An eventfd is readable at once: cr_wait_checkpoint reports the request done.
    // SAFETY: creating a descriptor we own.
    let fd = unsafe { libc::eventfd(1, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(errno);
    }
    with_handles(|h| {
        h.insert(
            fd as u64,
            Handle {
                gen: RESTART_GEN.load(Acquire),
                kind: Kind::Failed(errno),
            },
        )
    });
    // SAFETY: non-null pointer to the caller's handle (checked by the caller).
    unsafe { *handle = fd as cr_checkpoint_handle_t };
    Ok(())
}

fn start_checkpoint(
    ts: &super::state::ThreadState,
    a: &cr_checkpoint_args_t,
    target: libc::pid_t,
    handle: *mut cr_checkpoint_handle_t,
) -> Result<(), c_int> {
    // SAFETY: signal 0 only checks existence and permission.
    if unsafe { libc::kill(target, 0) } != 0 {
        return Err(errno());
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let self_in_scope = target == me;
    if self_in_scope && a.cr_flags & CR_CHKPT_PROHIBIT_SELF != 0 {
        return Err(libc::EDEADLK);
    }
    if self_in_scope && !ts.level.get().is_null() {
        return Err(libc::EBUSY); // this process is in a checkpoint already
    }
    let sock = protocol::connect(target).map_err(|_| CR_ENOSUPPORT)?;
    let mut req = Request::new(protocol::REQ_CHECKPOINT);
    let dump = |bit: c_uint, flag: u32| if a.cr_flags & bit != 0 { flag } else { 0 };
    req.flags = protocol::FLAG_API
        | dump(CR_CHKPT_PROHIBIT_SELF, protocol::FLAG_PROHIBIT_SELF)
        | dump(CR_CHKPT_DUMP_EXEC, protocol::FLAG_SAVE_EXE)
        | dump(CR_CHKPT_DUMP_PRIVATE, protocol::FLAG_SAVE_PRIVATE)
        | dump(CR_CHKPT_DUMP_SHARED, protocol::FLAG_SAVE_SHARED);
    req.timeout_ms = a.cr_timeout.saturating_mul(1000);
    req.signal = a.cr_signal;
    req.requester = me;
    req.target = target;
    req.scope = a.cr_scope;
    let seen = quiesce::DONE_GEN.load(Acquire);
    // Registered before sending: the checkpoint may happen the moment the request is sent.
    with_handles(|h| {
        h.insert(
            sock as u64,
            Handle {
                gen: RESTART_GEN.load(Acquire),
                kind: Kind::Checkpoint,
            },
        )
    });
    if let Err(e) = protocol::send(sock, &req, Some(a.cr_fd)) {
        with_handles(|h| h.remove(&(sock as u64)));
        // SAFETY: closing our socket.
        unsafe { libc::close(sock) };
        return Err(e);
    }
    // SAFETY: non-null pointer to the caller's handle.
    unsafe { *handle = sock as cr_checkpoint_handle_t };
    // Return only once the target marked the checkpoint pending (as BLCR's kernel did before
    // the request call returned), or answered at once (refused: the answer stays for reap).
    let refused = protocol::await_accepted(sock, true).map_or(true, |r| r.is_some());
    if self_in_scope && !refused && !super::cs::in_section() {
        // Our own callbacks run before we return (we are signalled meanwhile).
        quiesce::wait_done(seen);
    }
    Ok(())
}

fn lookup(handle: *const u64) -> Result<(u64, bool), c_int> {
    if handle.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: non-null pointer to the caller's handle.
    let h = unsafe { *handle };
    with_handles(|t| match t.get(&h) {
        Some(rec) => Ok((h, rec.gen != RESTART_GEN.load(Acquire))),
        None => Err(libc::ENOTTY),
    })
}

/// `cr_wait_*`: >0 ready, 0 timed out.
pub fn wait(handle: *const u64, timeout: *mut timeval) -> Result<c_int, c_int> {
    let (h, restarted) = lookup(handle)?;
    if restarted {
        return Ok(1);
    }
    let fd = h as c_int;
    // SAFETY: select on our descriptor; timeout is the caller's (may be NULL), updated as Linux does.
    unsafe {
        let mut set: libc::fd_set = core::mem::zeroed();
        libc::FD_ZERO(&mut set);
        libc::FD_SET(fd, &mut set);
        let r = libc::select(
            fd + 1,
            &mut set,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            timeout,
        );
        if r < 0 {
            return Err(errno());
        }
        Ok(r)
    }
}

fn peek_reply(fd: c_int) -> Result<Option<Reply>, c_int> {
    protocol::recv_reply(fd, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// Reads a restart handle's report once it is complete (the child closed its end).
fn restart_report(h: u64) -> Result<Option<Vec<u8>>, c_int> {
    let fd = h as c_int;
    let done = with_handles(|t| match t.get(&h).map(|r| &r.kind) {
        Some(Kind::Restart {
            report: Some(r), ..
        }) => Some(r.clone()),
        _ => None,
    });
    if done.is_some() {
        return Ok(done);
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling our descriptor without waiting.
    if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
        return Ok(None);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr() as *mut _, chunk.len()) };
        if n <= 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n as usize]);
        let (reports, _) = crate::restore::parse_reports(&buf);
        if reports.iter().any(|r| {
            matches!(
                r,
                crate::restore::Report::Running(_) | crate::restore::Report::Failed(..)
            )
        }) {
            break; // the program keeps the pipe open a moment longer
        }
    }
    with_handles(|t| {
        if let Some(Handle {
            kind: Kind::Restart { report, .. },
            ..
        }) = t.get_mut(&h)
        {
            *report = Some(buf.clone());
        }
    });
    Ok(Some(buf))
}

/// `cr_log_*`: copies the request's messages; returns the size needed (0 = none).
pub fn log(handle: *const u64, len: c_uint, msg: *mut c_char) -> Result<c_int, c_int> {
    let (h, restarted) = lookup(handle)?;
    if restarted {
        return Ok(0);
    }
    let is_restart =
        with_handles(|t| matches!(t.get(&h).map(|r| &r.kind), Some(Kind::Restart { .. })));
    let text: Vec<u8> = if is_restart {
        match restart_report(h)?.map(|r| outcome(&r)) {
            Some(Err((_, msg))) => msg.into_bytes(),
            _ => Vec::new(),
        }
    } else if with_handles(|t| matches!(t.get(&h).map(|r| &r.kind), Some(Kind::Failed(_)))) {
        Vec::new()
    } else {
        match peek_reply(h as c_int)? {
            Some(r) => r.message().into_bytes(),
            None => Vec::new(),
        }
    };
    if text.is_empty() {
        return Ok(0);
    }
    if len > 0 && !msg.is_null() {
        let n = text.len().min(len as usize - 1);
        // SAFETY: the caller gave `len` writable bytes at msg.
        unsafe {
            core::ptr::copy_nonoverlapping(text.as_ptr(), msg as *mut u8, n);
            *msg.add(n) = 0;
        }
    }
    Ok(text.len() as c_int + 1)
}

fn free_handle(handle: *mut u64, h: u64, close: bool) {
    with_handles(|t| t.remove(&h));
    if close {
        // SAFETY: closing our descriptor.
        unsafe { libc::close(h as c_int) };
    }
    // SAFETY: the caller's handle pointer was checked non-null by lookup.
    unsafe { *handle = u64::MAX };
}

/// `cr_reap_checkpoint`: > 0 success.
pub fn reap_checkpoint(handle: *mut u64) -> Result<c_int, c_int> {
    let (h, restarted) = lookup(handle)?;
    if let Some(e) = with_handles(|t| match t.get(&h).map(|r| &r.kind) {
        Some(Kind::Failed(e)) => Some(*e),
        _ => None,
    }) {
        free_handle(handle, h, true);
        return Err(e);
    }
    if restarted {
        free_handle(handle, h, false); // the descriptor did not survive the restart
        return Err(CR_ERESTARTED);
    }
    match peek_reply(h as c_int) {
        Ok(None) => Err(libc::EAGAIN),
        Ok(Some(r)) => {
            free_handle(handle, h, true);
            if r.status == 0 {
                Ok(1)
            } else {
                Err(r.status)
            }
        }
        Err(e) => {
            free_handle(handle, h, true);
            Err(e)
        }
    }
}

/// `cr_reap_restart`: the pid of the restored process.
pub fn reap_restart(handle: *mut u64) -> Result<c_int, c_int> {
    let (h, _) = lookup(handle)?;
    let pid = with_handles(|t| match t.get(&h).map(|r| &r.kind) {
        Some(Kind::Restart { pid, .. }) => Ok(*pid),
        _ => Err(libc::EINVAL),
    })?;
    let Some(report) = restart_report(h)? else {
        return Err(libc::EAGAIN);
    };
    free_handle(handle, h, true);
    match outcome(&report) {
        Ok(created) => Ok(if pid > 0 { pid } else { created }),
        Err((e, _)) => {
            // The restart failed before the program ran: collect the child, report its error.
            let mut st = 0;
            if pid > 0 {
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
            }
            Err(e)
        }
    }
}

/// A restart's reports: Ok(pid of the created process, or 0) once it runs, or its error.
fn outcome(report: &[u8]) -> Result<i32, (c_int, String)> {
    use crate::restore::Report;
    let (reports, _) = crate::restore::parse_reports(report);
    let created = reports
        .iter()
        .find_map(|r| match r {
            Report::Created(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    for r in reports {
        match r {
            Report::Running(_) => return Ok(created),
            Report::Failed(e, m) => return Err((e, m)),
            Report::Created(_) => {}
        }
    }
    Err((
        libc::EIO,
        "the restored process ended during the restore".into(),
    ))
}

/// `cr_poll_*_msg`.
pub fn poll(
    handle: *mut u64,
    timeout: *mut timeval,
    msg_p: *mut *mut c_char,
    restart: bool,
) -> c_int {
    match wait(handle, timeout) {
        Err(e) => return fail(e).min(CR_POLL_ERR_PRE),
        Ok(0) => return 0,
        Ok(_) => {}
    }
    if !msg_p.is_null() {
        match log(handle, 0, core::ptr::null_mut()) {
            Err(e) => {
                state::set_errno(e);
                return CR_POLL_ERR_LOG;
            }
            Ok(0) => {
                // SAFETY: the caller's out pointer.
                unsafe { *msg_p = core::ptr::null_mut() };
            }
            Ok(n) => {
                // SAFETY: malloc'd for the caller, who frees it with free().
                let buf = unsafe { libc::malloc(n as usize) } as *mut c_char;
                if !buf.is_null() {
                    let _ = log(handle, n as c_uint, buf);
                }
                // SAFETY: the caller's out pointer.
                unsafe { *msg_p = buf };
            }
        }
    }
    let r = if restart {
        reap_restart(handle)
    } else {
        reap_checkpoint(handle)
    };
    match r {
        Ok(v) => v,
        Err(e) => {
            state::set_errno(e);
            CR_POLL_ERR_POST
        }
    }
}

thread_local! {
    /// Set around the fork of `cr_request_restart`, so the child skips the agent's fork handler.
    pub static FORKING_FOR_RESTORE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// `cr_request_restart`: forks a child that becomes the restored program (a child of the caller).
pub fn request_restart(
    args: *const cr_restart_args_t,
    handle: *mut cr_restart_handle_t,
) -> Result<(), c_int> {
    state::require()?;
    if args.is_null() || handle.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: non-null pointer to the caller's args.
    let a = unsafe { *args };
    if a.cr_version != CR_RESTART_ARGS_VERSION || a.cr_flags & !0xf != 0 {
        return Err(libc::EINVAL);
    }
    let opts = crate::restore::spawn::Options {
        pids: a.cr_flags & CR_RSTRT_RESTORE_PID != 0,
        pgid: a.cr_flags & CR_RSTRT_RESTORE_PGID != 0,
        sid: a.cr_flags & CR_RSTRT_RESTORE_SID != 0,
        early_signal: 0,
        quiet: false,
    };
    if (opts.pgid || opts.sid) && !opts.pids {
        // A group or session id of a process that no longer exists cannot be made in user space
        // without that process's pid; never pretend.
        return Err(libc::ENOSYS);
    }
    // SAFETY: geteuid has no preconditions.
    if opts.pids && unsafe { libc::geteuid() } != 0 {
        // Original pids need CAP_SYS_ADMIN in our pid namespace (cr_restart uses a namespace of
        // its own instead, but then the restored process could not be our child).
        return Err(libc::EPERM);
    }
    // SAFETY: duplicating the caller's descriptor.
    let dup = unsafe { libc::fcntl(a.cr_fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(libc::EBADF);
    }
    let src = std::fs::read_link(format!("/proc/self/fd/{}", a.cr_fd)).unwrap_or_default();
    // SAFETY: we own dup.
    let file = unsafe { <std::fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(dup) };
    let img = crate::image::reader::Image::open(&file).map_err(|e| e.errno())?;
    crate::restore::preflight(&img).map_err(|e| e.errno)?;
    let mut p = [0 as c_int; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    FORKING_FOR_RESTORE.with(|f| f.set(true));
    // SAFETY: fork; the child only restores and never returns here.
    let pid = unsafe { libc::fork() };
    FORKING_FOR_RESTORE.with(|f| f.set(false));
    if pid == 0 {
        // SAFETY: closing the read end in the child.
        unsafe { libc::close(p[0]) };
        let src = src.as_os_str().as_encoded_bytes().to_vec();
        let handover = crate::restore::Handover {
            notify_fd: p[1],
            restarter: me,
            src: &src,
            early_signal: 0,
            gate: None,
        };
        let err = match crate::restore::pool::Pool::build(&[&img], &[&file], &[]) {
            Ok(pool) if opts.pids => {
                // The restored process needs its original pid: created with clone3 as our
                // caller's child (CLONE_PARENT); this helper leaves at once.
                let members = [crate::restore::spawn::Member {
                    img: &img,
                    file: &file,
                    src: &src,
                }];
                let gate = crate::restore::spawn::Gate::new();
                let mut spawner =
                    crate::restore::spawn::Spawner::new(&members, &pool, opts, p[1], me);
                spawner.root_flags = libc::CLONE_PARENT as u64;
                spawner.gate = gate.as_ref().ok();
                match spawner.spawn_roots() {
                    Ok(_) => {
                        pool.close();
                        if let Ok(g) = &gate {
                            g.open_after(1);
                        }
                        // SAFETY: leaving the helper.
                        unsafe { libc::_exit(0) }
                    }
                    Err(e) => {
                        if let Ok(g) = &gate {
                            g.abandon();
                        }
                        let r = crate::restore::Report::Failed(e.errno, e.msg.clone());
                        crate::restore::write_report(p[1], &r);
                        e
                    }
                }
            }
            Ok(pool) => match crate::restore::run(&img, 0, file, &pool, &handover) {
                Ok(never) => match never {},
                Err(e) => e, // already reported
            },
            Err(e) => {
                let r = crate::restore::Report::Failed(e.errno, e.msg.clone());
                crate::restore::write_report(p[1], &r);
                e
            }
        };
        // SAFETY: leaving the child; run() already reported the error.
        unsafe { libc::_exit(err.errno & 0xff) }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(p[1]) };
    if pid < 0 {
        // SAFETY: closing the read end.
        unsafe { libc::close(p[0]) };
        return Err(libc::EAGAIN);
    }
    let pid = if opts.pids {
        // The helper exits once it created the restored process (reported as `Created`).
        let mut st = 0;
        // SAFETY: reaping the helper, our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        0
    } else {
        pid
    };
    with_handles(|t| {
        t.insert(
            p[0] as u64,
            Handle {
                gen: RESTART_GEN.load(Acquire),
                kind: Kind::Restart { pid, report: None },
            },
        )
    });
    // SAFETY: non-null pointer to the caller's handle.
    unsafe { *handle = p[0] as cr_restart_handle_t };
    Ok(())
}

/// The deprecated self-checkpoint calls: scope PROC to `fd`; `abort()` on any error.
pub fn deprecated_request(fd: c_int) {
    if state::current().is_none() {
        // SAFETY: BLCR aborts when cr_init was not called.
        unsafe { libc::abort() };
    }
    let args = cr_checkpoint_args_t {
        cr_version: CR_CHECKPOINT_ARGS_VERSION,
        cr_scope: CR_SCOPE_PROC,
        cr_target: 0,
        cr_fd: fd,
        cr_signal: 0,
        cr_timeout: 0,
        cr_flags: 0,
    };
    let mut h: cr_checkpoint_handle_t = 0;
    if request_checkpoint(&args, &mut h).is_err() {
        // SAFETY: BLCR aborts on errors of the deprecated calls.
        unsafe { libc::abort() };
    }
    if !super::cs::in_section() {
        let r = poll(&mut h, core::ptr::null_mut(), core::ptr::null_mut(), false);
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(CR_ERESTARTED) {
            // SAFETY: as above.
            unsafe { libc::abort() };
        }
    }
}
