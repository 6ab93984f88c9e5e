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
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering::*};
use libc::{c_char, c_int, c_uint, timeval};
use std::collections::HashMap;
use std::sync::Mutex;

/// Bumped each time this process is restarted from an image.
pub static RESTART_GEN: AtomicU32 = AtomicU32::new(0);

enum Kind {
    Checkpoint,
    /// A request that failed at once with `CR_CHKPT_ASYNC_ERR`: reaps with this errno.
    Failed(c_int),
    /// A restart of `nproc` processes; `report` once every one runs (or one failed).
    Restart {
        nproc: usize,
        report: Option<Vec<u8>>,
    },
}

struct Handle {
    gen: u32,
    kind: Kind,
}

static HANDLES: Mutex<Option<HashMap<u64, Handle>>> = Mutex::new(None);

/// The sockets of checkpoint requests in flight, readable without a lock: the agent leaves
/// them out of the image (they are its own, like its control socket; a restored process's
/// request has no socket any more, `reap_checkpoint` knows).
static REQUEST_SOCKS: [AtomicI32; 32] = [const { AtomicI32::new(-1) }; 32];

fn remember_socket(sock: c_int) {
    // More requests in flight than slots: that socket is saved (and comes back dead).
    let _ = REQUEST_SOCKS
        .iter()
        .find(|s| s.compare_exchange(-1, sock, AcqRel, Acquire).is_ok());
}

fn forget_socket(sock: c_int) {
    for s in &REQUEST_SOCKS {
        let _ = s.compare_exchange(sock, -1, AcqRel, Acquire);
    }
}

/// Whether `fd` is the socket of one of this process's checkpoint requests (allocation- and
/// lock-free: called by the agent while the threads are parked).
pub fn is_request_socket(fd: c_int) -> bool {
    REQUEST_SOCKS.iter().any(|s| s.load(Acquire) == fd)
}

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
    // No cr_init() needed (BLCR's only opened the control device): a driver program may
    // checkpoint other processes without being checkpointable itself.
    let in_callback = state::current().is_some_and(|ts| !ts.level.get().is_null());
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
    match start_checkpoint(in_callback, &a, target, handle) {
        Err(e) if a.cr_flags & CR_CHKPT_ASYNC_ERR != 0 => deferred_failure(e, handle),
        r => r,
    }
}

/// `CR_CHKPT_ASYNC_ERR` / `CR_RSTRT_ASYNC_ERR`: the request "succeeds" and its handle reports
/// `errno` at reap time.
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
    in_callback: bool,
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
    if self_in_scope && in_callback {
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
    remember_socket(sock);
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
        forget_socket(sock);
        // SAFETY: closing our socket.
        unsafe { libc::close(sock) };
        return Err(e);
    }
    // SAFETY: non-null pointer to the caller's handle.
    unsafe { *handle = sock as cr_checkpoint_handle_t };
    // Return only once the target marked the checkpoint pending (as BLCR's kernel did before
    // the request call returned), or answered at once (refused: the answer stays for reap).
    let answer = protocol::await_accepted(sock, true);
    if matches!(&answer, Ok(Some(r)) if r.status == libc::EPERM) {
        // The agent refused the requester (another user, or a process only root may
        // checkpoint): BLCR's request call itself failed with EPERM.
        with_handles(|h| h.remove(&(sock as u64)));
        forget_socket(sock);
        // SAFETY: closing our socket.
        unsafe { libc::close(sock) };
        return Err(libc::EPERM);
    }
    let refused = answer.map_or(true, |r| r.is_some());
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

/// Reads a restart handle's reports once the restart is complete: every process runs again, or
/// one failed (the restored processes keep their copies of the pipe a moment longer).
fn restart_report(h: u64) -> Result<Option<Vec<u8>>, c_int> {
    let fd = h as c_int;
    let (done, nproc) = with_handles(|t| match t.get(&h).map(|r| &r.kind) {
        Some(Kind::Restart { report, nproc }) => (report.clone(), *nproc),
        _ => (None, 1),
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
        let running = reports
            .iter()
            .filter(|r| matches!(r, crate::restore::Report::Running(_)))
            .count();
        let failed = reports
            .iter()
            .any(|r| matches!(r, crate::restore::Report::Failed(..)));
        if failed || (running >= nproc && top_of(&buf).is_some()) {
            break;
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
        let nproc = with_handles(|t| match t.get(&h).map(|r| &r.kind) {
            Some(Kind::Restart { nproc, .. }) => *nproc,
            _ => 1,
        });
        match restart_report(h)?.map(|r| outcome(&r, nproc)) {
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
    forget_socket(h as c_int);
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

/// `cr_reap_restart`: the pid of the restored (eldest) process, or of the namespace init that
/// holds the job when original pids needed one.
pub fn reap_restart(handle: *mut u64) -> Result<c_int, c_int> {
    let (h, _) = lookup(handle)?;
    if let Some(e) = with_handles(|t| match t.get(&h).map(|r| &r.kind) {
        Some(Kind::Failed(e)) => Some(*e),
        _ => None,
    }) {
        free_handle(handle, h, true);
        return Err(e);
    }
    let nproc = with_handles(|t| match t.get(&h).map(|r| &r.kind) {
        Some(Kind::Restart { nproc, .. }) => Ok(*nproc),
        _ => Err(libc::EINVAL),
    })?;
    let Some(report) = restart_report(h)? else {
        return Err(libc::EAGAIN);
    };
    free_handle(handle, h, true);
    match outcome(&report, nproc) {
        Ok(pid) => Ok(pid),
        Err((e, _)) => {
            collect_failed(&report);
            Err(e)
        }
    }
}

/// After a failed restart: nothing of the job may run on or stay a zombie of ours. A namespace
/// init gives up by itself (the namespace dies with it): collect it. Processes created in our
/// own pid namespace are killed, and those that are our children collected.
fn collect_failed(report: &[u8]) {
    use crate::restore::Report;
    let (reports, _) = crate::restore::parse_reports(report);
    let created: Vec<i32> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Created(p) => Some(*p),
            _ => None,
        })
        .collect();
    match top_of(report) {
        Some(init) if !created.contains(&init) => {
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(init, core::ptr::null_mut(), 0) };
        }
        _ => {
            for &p in &created {
                // SAFETY: killing a half-restored process created for this request.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            for &p in &created {
                // SAFETY: reaping it if it is our child (ECHILD otherwise).
                unsafe { libc::waitpid(p, core::ptr::null_mut(), 0) };
            }
        }
    }
}

/// The process a restart reported as the one the caller knows the job by.
fn top_of(report: &[u8]) -> Option<i32> {
    let (reports, _) = crate::restore::parse_reports(report);
    reports.iter().find_map(|r| match r {
        crate::restore::Report::Top(p) => Some(*p),
        _ => None,
    })
}

/// A restart's reports: Ok(the pid the caller knows the job by) once all `nproc` processes run,
/// or the first error.
fn outcome(report: &[u8], nproc: usize) -> Result<i32, (c_int, String)> {
    use crate::restore::Report;
    let (reports, _) = crate::restore::parse_reports(report);
    if let Some((e, m)) = reports.iter().find_map(|r| match r {
        Report::Failed(e, m) => Some((*e, m.clone())),
        _ => None,
    }) {
        return Err((e, m));
    }
    let running = reports
        .iter()
        .filter(|r| matches!(r, Report::Running(_)))
        .count();
    if running < nproc {
        return Err((
            libc::EIO,
            "a restored process ended during the restore".into(),
        ));
    }
    let created = reports.iter().find_map(|r| match r {
        Report::Created(p) => Some(*p),
        _ => None,
    });
    Ok(top_of(report).or(created).unwrap_or(0))
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

/// The thread pointer of the thread that forks for `cr_request_restart` (0: none), so its child
/// skips the agent's fork handler. (Not a thread-local: reading one in every fork child made
/// glibc allocate this library's TLS block there.)
#[link_section = ".data1"]
pub static FORKING_FOR_RESTORE: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(0);

/// Whether the calling thread (or the fork child of that thread) forks for a restore.
#[link_section = ".text.hot.libcr_start"]
pub fn forking_for_restore() -> bool {
    let fs = FORKING_FOR_RESTORE.load(core::sync::atomic::Ordering::Acquire);
    fs != 0 && fs == crate::sys::get_fs_base()
}

/// The relocation pairs of a `cr_restart_args_t` (BLCR's `cr_relocate`).
fn relocation_pairs(
    rel: *const cr_rstrt_relocate,
) -> Result<Vec<crate::restore::relocate::Pair>, c_int> {
    if rel.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: the caller's relocation table: a count, then that many pairs of C strings.
    let count = unsafe { (*rel).count } as usize;
    if count > crate::restore::relocate::MAX_PAIRS {
        return Err(libc::EINVAL);
    }
    let mut args = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: pair i of the flexible array the caller allocated (CR_RSTRT_RELOCATE_SIZE).
        let pair = unsafe { &*(*rel).path.as_ptr().add(i) };
        if pair.oldpath.is_null() || pair.newpath.is_null() {
            return Err(libc::EINVAL);
        }
        // SAFETY: NUL-terminated strings of the caller.
        let (old, new) = unsafe {
            (
                std::ffi::CStr::from_ptr(pair.oldpath),
                std::ffi::CStr::from_ptr(pair.newpath),
            )
        };
        // BLCR's pairs are taken literally: escape what the command-line syntax would parse.
        let esc = |c: &std::ffi::CStr| {
            c.to_string_lossy()
                .replace('\\', "\\\\")
                .replace('=', "\\=")
        };
        args.push(format!("{}={}", esc(old), esc(new)));
    }
    crate::restore::relocate::parse_all(&args).map_err(|_| libc::EINVAL)
}

/// The images behind a restart source descriptor: the image file itself (a plain image, a tree
/// image, or images written back to back), or every image of a directory.
fn restart_sources(fd: c_int) -> Result<Vec<(std::fs::File, std::path::PathBuf)>, c_int> {
    // SAFETY: duplicating the caller's descriptor.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(libc::EBADF);
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
    // SAFETY: we own dup.
    let file = unsafe { <std::fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(dup) };
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        // Read through our own descriptor: the directory may have been renamed meanwhile.
        let sources = crate::restore::job::sources_in_dir(std::path::Path::new(&format!(
            "/proc/self/fd/{dup}"
        )))
        .map_err(|e| e.errno)?;
        return Ok(sources
            .into_iter()
            .map(|(f, p)| {
                let name = p
                    .file_name()
                    .map(std::path::PathBuf::from)
                    .unwrap_or_default();
                (f, path.join(name))
            })
            .collect());
    }
    Ok(vec![(file, path)])
}

/// `cr_request_restart`: restores every process of the image(s) behind `cr_fd` (as `cr_restart`
/// does: a tree image, back-to-back images of a forwarded checkpoint, or a directory of
/// images) as descendants of the caller. The roots are the caller's children, with their
/// original pids as root; without privileges, original pids need a private pid namespace, whose
/// init becomes the caller's child (it ends the way the eldest restored process ends, and the
/// handle reports its pid).
pub fn request_restart(
    args: *const cr_restart_args_t,
    handle: *mut cr_restart_handle_t,
) -> Result<(), c_int> {
    if args.is_null() || handle.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: non-null pointer to the caller's args.
    let a = unsafe { *args };
    if a.cr_version != CR_RESTART_ARGS_VERSION || a.cr_flags & !0xf != 0 {
        return Err(libc::EINVAL);
    }
    match start_restart(&a, handle) {
        Err(e) if a.cr_flags & CR_RSTRT_ASYNC_ERR != 0 => deferred_failure(e, handle),
        r => r,
    }
}

/// The restart itself (arguments checked): loads the job and has a helper create it.
fn start_restart(a: &cr_restart_args_t, handle: *mut cr_restart_handle_t) -> Result<(), c_int> {
    use crate::restore::{fds, job, spawn, write_report, Report};
    // The caller's descriptors an exec'd cr_restart would have been given.
    fds::note_restarter_fds();
    let opts = spawn::Options {
        pids: a.cr_flags & CR_RSTRT_RESTORE_PID != 0,
        pgid: a.cr_flags & CR_RSTRT_RESTORE_PGID != 0,
        sid: a.cr_flags & CR_RSTRT_RESTORE_SID != 0,
        early_signal: 0,
        quiet: false,
        eager: false,
        huge_pages: false,
    };
    let pairs = relocation_pairs(a.cr_relocate)?;
    let job = job::load(restart_sources(a.cr_fd)?, &pairs).map_err(|e| e.errno)?;
    let members = job.members();
    // SAFETY: geteuid has no preconditions.
    let in_namespace = spawn::takes_ids(&opts) && unsafe { libc::geteuid() } != 0;
    if !in_namespace {
        spawn::check_ids_free(&members, &job.zombies, &opts).map_err(|e| e.errno)?;
    }
    let mut p = [0 as c_int; 2];
    let mut r = [0 as c_int; 2];
    // SAFETY: pipe2 into local arrays (the second one's read end non-blocking: read once the
    // helper has gone, while the restored processes may still hold its write end).
    unsafe {
        if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(errno());
        }
        if libc::pipe2(r.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            let e = errno();
            libc::close(p[0]);
            libc::close(p[1]);
            return Err(e);
        }
        libc::fcntl(r[0], libc::F_SETFL, libc::O_NONBLOCK);
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    FORKING_FOR_RESTORE.store(
        crate::sys::get_fs_base(),
        core::sync::atomic::Ordering::Release,
    );
    // SAFETY: fork; the helper only creates the job and never returns here.
    let helper = unsafe { libc::fork() };
    FORKING_FOR_RESTORE.store(0, core::sync::atomic::Ordering::Release);
    if helper == 0 {
        // SAFETY: closing the read ends in the helper.
        unsafe {
            libc::close(p[0]);
            libc::close(r[0]);
        }
        let parent = libc::CLONE_PARENT as u64;
        let res = if in_namespace {
            match spawn::enter_namespace(true, parent) {
                Ok(0) => {
                    job::namespace_init(&members, &job, opts, p[1], job::InitEnd::Mimic, |_| {})
                }
                Ok(init) => {
                    write_report(p[1], &Report::Top(init));
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            // The roots become the caller's children (CLONE_PARENT); this helper leaves. So do
            // placeholder leaders of groups and sessions: the caller reaps them below.
            let mut reap = Vec::new();
            let res = job::create(&members, &job, opts, p[1], me, parent, &mut reap)
                .map(|roots| write_report(p[1], &Report::Top(roots[0])));
            let words: Vec<u8> = reap.iter().flat_map(|q| q.to_le_bytes()).collect();
            let _ = crate::sys::write_all(r[1], &words);
            res
        };
        let code = match res {
            Ok(()) => 0,
            Err(e) => {
                write_report(p[1], &Report::Failed(e.errno, e.msg.clone()));
                e.errno & 0xff
            }
        };
        // SAFETY: leaving the helper.
        unsafe { libc::_exit(code) }
    }
    // SAFETY: closing our copies of the write ends.
    unsafe {
        libc::close(p[1]);
        libc::close(r[1]);
    }
    if helper < 0 {
        // SAFETY: closing the read ends.
        unsafe {
            libc::close(p[0]);
            libc::close(r[0]);
        }
        return Err(libc::EAGAIN);
    }
    // The helper exits as soon as the job's roots exist.
    let mut st = 0;
    // SAFETY: reaping the helper, our child.
    unsafe { libc::waitpid(helper, &mut st, 0) };
    // Placeholder leaders of groups and sessions were our children too (they have exited once
    // the helper has): reap them, so the program never sees them.
    let mut words = [0u8; 4 * 64];
    // SAFETY: a non-blocking read into a local buffer, then closing the read end.
    let n = unsafe {
        let n = libc::read(r[0], words.as_mut_ptr() as *mut _, words.len());
        libc::close(r[0]);
        n.max(0) as usize
    };
    for w in words[..n].chunks_exact(4) {
        let q = i32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        // SAFETY: reaping a placeholder leader, our child.
        unsafe { libc::waitpid(q, std::ptr::null_mut(), 0) };
    }
    with_handles(|t| {
        t.insert(
            p[0] as u64,
            Handle {
                gen: RESTART_GEN.load(Acquire),
                kind: Kind::Restart {
                    nproc: job.images.len(),
                    report: None,
                },
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
