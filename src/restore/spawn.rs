//! Creates the processes of a restart job with their parent/child links, sessions, process
//! groups and, when asked, their original pids; each then restores itself (`restore::run`).
//!
//! The caller (cr_restart, or the namespace's init) creates the job's roots; every process,
//! while it is still restart-loader code, first becomes a session leader if it was one
//! (`--restore-sid`), then creates its own children (so they inherit what they must), and only
//! then rebuilds itself. Parents move their children into their saved process groups
//! (`--restore-pgid`), group leaders first.
//!
//! A saved group or session whose leader gets no process of its own id in the restart (not part
//! of the job, or `--no-restore-pid`) is made by a *placeholder leader*: a short-lived process
//! created at that id (so it needs the id free, and privilege over the pid namespace), which
//! calls `setsid`/`setpgid`, creates the members that belong there (`CLONE_PARENT`: they stay
//! the children of the process that creates them) and exits; the process that created it reaps
//! it before any restored process runs. The group or session lives on in its members (the kernel
//! keeps the id taken while one lives), so the program sees its saved `getpgrp`/`getsid`, no
//! extra child to wait for and no stranger in its group. Ids the restarter itself is in (its own
//! session and group) are joined instead.
//!
//! Original pids come from `clone3` with `set_tid`. That needs `CAP_SYS_ADMIN` over the pid
//! namespace: as root it is done in the caller's namespace (a pid in use fails with `EBUSY`);
//! without privilege [`enter_namespace`] first creates a user + pid namespace (and a mount
//! namespace with its own `/proc`), whose init is a small cr_restart process: there every pid
//! is free.

use super::pool::Pool;
use super::{write_report, Report, RestoreError};
use crate::arch::CloneArgs;
use crate::image::reader::Image;
use crate::image::tree::{ZombieRec, ZOMBIE_SIGCHLD_DUE};
use std::fs::File;
use std::sync::atomic::{AtomicI32, Ordering};

/// Holds the restored processes back until every copy of the job's pool is closed: each
/// process, once it closed its own, writes a byte to the "closed" pipe ([`CLOSED_OK`], or
/// [`CLOSED_FAILED`] when it failed) and waits at the gate; the process that built the pool
/// closes its copy, counts one byte per process, then opens the gate: it sends one byte on the
/// gate's stream socket, which every waiting process peeks (`MSG_PEEK`, so one byte serves them
/// all), and closes its end. When a process failed, or ended without its byte, the gate is
/// closed without being opened instead: nothing of the program runs.
///
/// A process clears the restart's parent-death signal (`SIGKILL`, see [`die_with_parent`])
/// just before it writes its byte, so from then on only the gate decides: opened, every
/// process of the job runs, whatever happens to the restarter afterwards; not opened, every
/// process leaves. With the signal still set after the gate, cr_restart killed in the
/// milliseconds between its "open" and the moment each process sets the signal back to the
/// program's (`agent::process::ThreadState`) killed those not yet there, and their children
/// that were ran on orphaned: part of a tree survived. Before its byte a process still dies
/// with its parent (a restarter killed while the job is built takes it along).
///
/// End of file without that byte means the holder died (cr_restart SIGKILLed at the gate) or
/// gave up ([`Gate::abandon`]): the waiting process then leaves at once ([`Gate::wait`]).
/// End of file alone cannot tell the two apart: a dying process's descriptors are closed before
/// the kernel sends its children their parent-death signal, and a process that took that end
/// of file for "open" went on and, restored, set its parent-death signal back to its saved one
/// (none) before the signal came: the whole tree ran on with its restarter gone.
/// A process's byte on the gate's "closed" pipe: its restore went well, it waits at the gate.
pub const CLOSED_OK: &[u8] = b"c";
/// A process's byte on the gate's "closed" pipe: it failed (and reported why); the gate must
/// stay shut.
pub const CLOSED_FAILED: &[u8] = b"f";

pub struct Gate {
    closed: [i32; 2],
    gate: [i32; 2],
}

impl Gate {
    /// Two pipes.
    pub fn new() -> Result<Gate, RestoreError> {
        let mut closed = [0i32; 2];
        let mut gate = [0i32; 2];
        // SAFETY: pipe2 with valid arrays.
        unsafe {
            if libc::pipe2(closed.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(RestoreError::new(errno(), "cannot create a pipe".into()));
            }
            let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
            if libc::socketpair(libc::AF_UNIX, kind, 0, gate.as_mut_ptr()) != 0 {
                libc::close(closed[0]);
                libc::close(closed[1]);
                return Err(RestoreError::new(
                    errno(),
                    "cannot create a socket pair".into(),
                ));
            }
        }
        Ok(Gate { closed, gate })
    }

    /// In a process of the job: drops the controller's ends and moves ours to `floor` or above
    /// (clear of every saved descriptor); returns (closed write end, gate read end).
    fn process_side(&self, floor: i32) -> (i32, i32) {
        // SAFETY: closing and duplicating descriptors of this new process.
        unsafe {
            libc::close(self.closed[0]);
            libc::close(self.gate[1]);
            let closed = libc::fcntl(self.closed[1], libc::F_DUPFD_CLOEXEC, floor);
            let open = libc::fcntl(self.gate[0], libc::F_DUPFD_CLOEXEC, floor);
            libc::close(self.closed[1]);
            libc::close(self.gate[0]);
            (closed, open)
        }
    }

    /// Spawning failed: closes everything (whoever waits at the gate sees it closed without
    /// being opened and leaves).
    pub fn abandon(&self) {
        for fd in self.closed.iter().chain(&self.gate) {
            // SAFETY: closing our pipe ends.
            unsafe { libc::close(*fd) };
        }
    }

    /// In the process that built the pool, after spawning and closing its pool copy: waits
    /// until `n` processes closed theirs, then opens the gate; returns whether it did. It stays
    /// shut (closed without its byte: every process leaves) when one of them failed, or ended
    /// without saying (end of file before `n` bytes).
    pub fn open_after(&self, n: usize) -> bool {
        // SAFETY: closing our copies of the processes' ends, reading, closing the gate.
        unsafe {
            libc::close(self.closed[1]);
            libc::close(self.gate[0]);
            let mut seen = 0;
            let mut failed = false;
            let mut b = [0u8; 64];
            while seen < n {
                let r = libc::read(self.closed[0], b.as_mut_ptr() as *mut _, b.len());
                if r > 0 {
                    seen += r as usize;
                    failed |= b[..r as usize].iter().any(|&c| c != CLOSED_OK[0]);
                } else if r == 0 || errno() != libc::EINTR {
                    break;
                }
            }
            libc::close(self.closed[0]);
            if failed || seen < n {
                libc::close(self.gate[1]);
                return false;
            }
            if super::test_phase("gate-dropped") {
                // What a holder SIGKILLed at the gate looks like to the job until the kernel
                // signals its death: its descriptors are closed, and it is still there.
                libc::close(self.gate[1]);
                super::test_stop_at("gate-dropped");
                return false;
            }
            super::test_stop_at("gated");
            if !commit_to_job() {
                libc::close(self.gate[1]);
                return false;
            }
            // The byte that says "open"; a restarter killed before it leaves only end of file.
            libc::send(
                self.gate[1],
                b"o".as_ptr() as *const _,
                1,
                libc::MSG_NOSIGNAL,
            );
            libc::close(self.gate[1]);
            // TEST ONLY: held with the gate open (the job's roots hold themselves just past
            // it: `restore::run`), so a test can kill the restarter in that instant.
            super::test_stop_at("opened");
            true
        }
    }

    /// In a process of the job, its restore done, just before it waits at the gate: from now
    /// on the gate alone decides whether it runs (see [`Gate`]), not the restarter's death.
    /// Writes [`CLOSED_OK`] to the "closed" pipe `closed` and closes it.
    pub fn ready(closed: i32) {
        // SAFETY: prctl on ourselves with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
        let _ = crate::sys::write_all(closed, CLOSED_OK);
        crate::sys::close(closed);
    }

    /// In a restored process, with its pool copies closed: waits at the gate (read end `open`,
    /// from [`Gate::process_side`]) and closes it. Returns true when the gate was opened; false
    /// when its holder died or gave up first (end of file, or an error, without the byte): the
    /// caller must not run the program.
    pub fn wait(open: i32) -> bool {
        let mut b = [0u8; 1];
        let opened = loop {
            // SAFETY: peeking one byte into a valid buffer.
            let r = unsafe { libc::recv(open, b.as_mut_ptr() as *mut _, 1, libc::MSG_PEEK) };
            if r == 1 {
                break true;
            }
            if r == 0 || errno() != libc::EINTR {
                break false;
            }
        };
        crate::sys::close(open);
        opened
    }
}

/// One process of the job.
pub struct Member<'a> {
    /// Its image.
    pub img: &'a Image,
    /// The file the image is read from.
    pub file: &'a File,
    /// The image's path (for `cr_get_restart_info`).
    pub src: &'a [u8],
}

/// What to restore besides the processes themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Original pids and tids.
    pub pids: bool,
    /// Original process groups (where the leader is part of the job).
    pub pgid: bool,
    /// Original sessions (where the leader is part of the job).
    pub sid: bool,
    /// Signal each restored process sends itself before its threads run again (0: none).
    pub early_signal: i32,
    /// Print no warnings (`cr_restart -q`).
    pub quiet: bool,
    /// Read all page data before the programs run (`cr_restart --eager`) instead of mapping
    /// it from the image where that is safe (`restore::memory`).
    pub eager: bool,
    /// Memory that had transparent huge pages is advised `MADV_HUGEPAGE` before it is read
    /// (`cr_restart --huge-pages`), not after (`restore::memory::build`).
    pub huge_pages: bool,
}

/// Parent of each member within the job (`None`: a root, created by the caller).
pub fn parents(members: &[Member]) -> Vec<Option<usize>> {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ppid = m.img.process.ppid;
            members
                .iter()
                .enumerate()
                .position(|(j, o)| j != i && o.img.process.pid == ppid)
        })
        .collect()
}

/// Members with parent `parent`, process-group leaders first (their groups must exist before
/// the others join them).
fn children_of(members: &[Member], parents: &[Option<usize>], parent: Option<usize>) -> Vec<usize> {
    let mut kids: Vec<usize> = (0..members.len())
        .filter(|&i| parents[i] == parent)
        .collect();
    kids.sort_by_key(|&i| {
        let p = &members[i].img.process;
        (p.pgid != p.pid, i)
    });
    kids
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `fork` through `clone3`: with `pid`, the child gets exactly that pid (in the innermost pid
/// namespace); `flags` may add namespaces. Returns 0 in the child.
pub fn clone_process(pid: Option<i32>, flags: u64) -> Result<i32, i32> {
    let want: [libc::pid_t; 1] = [pid.unwrap_or(0)];
    let args = CloneArgs {
        flags,
        // With CLONE_PARENT the kernel wants 0 here: the child inherits our exit signal.
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        set_tid: if pid.is_some() {
            want.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: pid.is_some() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child runs on a copy of this
    // address space and returns 0 here. The caller is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as i32)
    }
}

/// Before anything is created: every original pid and tid, and the pid of every zombie to
/// re-create (with `opts.pids`), and every group and session id a placeholder leader must take
/// (`opts.pgid`, `opts.sid`) must be free (BLCR: `EBUSY`); ids still held by exiting processes
/// or zombies are waited for a few seconds (see [`super::ids`]).
pub fn check_ids_free(
    members: &[Member],
    zombies: &[ZombieRec],
    opts: &Options,
) -> Result<(), RestoreError> {
    let needs = super::ids::needs(members, zombies, opts);
    super::ids::check_free(&needs, super::ids::BUSY_WAIT, opts.quiet)
}

/// Whether a restart with `opts` takes ids over (original pids, or group and session ids made
/// by placeholder leaders): without privilege that happens in a private pid namespace.
pub fn takes_ids(opts: &Options) -> bool {
    opts.pids || opts.pgid || opts.sid
}

/// The job being created, shared by every process that creates members.
pub struct Spawner<'a> {
    /// Every member, in image order.
    pub members: &'a [Member<'a>],
    /// The job's shared objects.
    pub pool: &'a Pool,
    /// What to restore.
    pub opts: Options,
    /// The job's report pipe (write end).
    pub notify: i32,
    /// What `cr_checkpoint()` returns in the restored callbacks (the restarter's pid).
    pub restarter: i32,
    /// Extra `clone3` flags for the roots (`CLONE_PARENT`: make them the caller's siblings).
    pub root_flags: u64,
    /// Unreaped children that had exited: re-created as zombies of their parents.
    pub zombies: Vec<ZombieRec>,
    /// The job's gate (see [`Gate`]); `None`: processes run as soon as they are restored.
    pub gate: Option<&'a Gate>,
    /// This process's ends of the gate once moved clear of the saved descriptors (children
    /// forked afterwards inherit them as they are).
    moved_gate: std::cell::Cell<Option<(i32, i32)>>,
    /// In a placeholder leader: the write end of the pipe its creator reads (closed in every
    /// process created after it).
    result_fd: std::cell::Cell<i32>,
    /// Placeholder leaders created by [`Spawner::spawn_roots`] as children of the caller's
    /// parent (`root_flags` with `CLONE_PARENT`): that process must reap them.
    pub placeholders: std::cell::RefCell<Vec<i32>>,
    parents: Vec<Option<usize>>,
}

/// Members created, as (index, pid), and the placeholder leaders the creating process cannot
/// reap (created with `CLONE_PARENT`: its parent's children).
type Made = (Vec<(usize, i32)>, Vec<i32>);

/// What a placeholder leader tells the process that created it (records on a pipe).
enum Told {
    /// A member it created: (index, pid).
    Kid(usize, i32),
    /// A placeholder it created with `CLONE_PARENT` (a sibling: someone above must reap it).
    Placeholder(i32),
    /// Done: 0, or the errno and message of its failure.
    End(i32, String),
}

fn tell(fd: i32, t: &Told) {
    let mut b = Vec::with_capacity(16);
    match t {
        Told::Kid(i, pid) => {
            b.push(b'K');
            b.extend_from_slice(&(*i as u32).to_le_bytes());
            b.extend_from_slice(&pid.to_le_bytes());
        }
        Told::Placeholder(pid) => {
            b.push(b'Q');
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&pid.to_le_bytes());
        }
        Told::End(e, msg) => {
            let m = &msg.as_bytes()[..msg.len().min(4000)];
            b.push(b'E');
            b.extend_from_slice(&(m.len() as u32).to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
            b.extend_from_slice(m);
        }
    }
    let _ = crate::sys::write_all(fd, &b);
}

fn read_exact(fd: i32, buf: &mut [u8]) -> bool {
    let mut at = 0;
    while at < buf.len() {
        // SAFETY: reading into the unfilled part of a valid buffer.
        let r = unsafe { libc::read(fd, buf[at..].as_mut_ptr() as *mut _, buf.len() - at) };
        if r > 0 {
            at += r as usize;
        } else if r == 0 || errno() != libc::EINTR {
            return false;
        }
    }
    true
}

fn heard(fd: i32) -> Told {
    let mut h = [0u8; 9];
    if !read_exact(fd, &mut h) {
        return Told::End(libc::EIO, "a placeholder leader ended early".into());
    }
    let n = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    let v = i32::from_le_bytes([h[5], h[6], h[7], h[8]]);
    match h[0] {
        b'K' => Told::Kid(n as usize, v),
        b'Q' => Told::Placeholder(v),
        _ => {
            let mut m = vec![0u8; n as usize];
            read_exact(fd, &mut m);
            Told::End(v, String::from_utf8_lossy(&m).into_owned())
        }
    }
}

fn own_sid() -> i32 {
    // SAFETY: getsid(0) has no preconditions.
    unsafe { libc::getsid(0) }
}

fn own_pgrp() -> i32 {
    // SAFETY: getpgrp has no preconditions.
    unsafe { libc::getpgrp() }
}

/// Whether process group `g` exists (in this pid namespace).
fn group_exists(g: i32) -> bool {
    // SAFETY: signal 0 to a process group only checks that it exists.
    g > 0 && (unsafe { libc::kill(-g, 0) } == 0 || errno() == libc::EPERM)
}

/// In a process just created by `creator` (its parent): a half-restored process must not
/// outlive the process restoring it, so it gets `SIGKILL` when that parent dies (the restored
/// program's own parent-death signal comes back from its image once it runs, see
/// `agent::process::ThreadState`). If the parent already died before that was set, it leaves.
pub fn die_with_parent(creator: i32) {
    // SAFETY: prctl on ourselves with integer arguments, getppid has no preconditions.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != creator {
            libc::_exit(1);
        }
    }
}

fn reap(pid: i32) {
    loop {
        // SAFETY: reaping our own child.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        if r >= 0 || errno() != libc::EINTR {
            break;
        }
    }
}

impl<'a> Spawner<'a> {
    /// Prepares the creation of `members`.
    pub fn new(
        members: &'a [Member<'a>],
        pool: &'a Pool,
        opts: Options,
        notify: i32,
        restarter: i32,
    ) -> Self {
        let parents = parents(members);
        Spawner {
            members,
            pool,
            opts,
            notify,
            restarter,
            root_flags: 0,
            zombies: Vec::new(),
            gate: None,
            moved_gate: std::cell::Cell::new(None),
            result_fd: std::cell::Cell::new(-1),
            placeholders: std::cell::RefCell::new(Vec::new()),
            parents,
        }
    }

    /// Creates the roots of the job (and through them every member); returns (index, pid) of
    /// each root, eldest first.
    pub fn spawn_roots(&self) -> Result<Vec<(usize, i32)>, RestoreError> {
        let roots = children_of(self.members, &self.parents, None);
        let (kids, placeholders) = self.create_all(&roots, self.root_flags)?;
        self.placeholders.borrow_mut().extend(placeholders);
        Ok(kids)
    }

    /// Whether the process with pid `id` is part of the restart under that pid.
    fn leader_in_job(&self, id: i32) -> bool {
        self.opts.pids && self.members.iter().any(|m| m.img.process.pid == id)
    }

    /// The placeholder leader member `i` needs when this process creates it: `(id, session)`.
    /// None when it makes its group or session itself (its own original pid), inherits it from
    /// this process, or joins a group that exists.
    fn placeholder_for(&self, i: usize) -> Option<(i32, bool)> {
        let p = &self.members[i].img.process;
        if self.opts.sid && p.sid > 0 && own_sid() != p.sid && !self.leader_in_job(p.sid) {
            return Some((p.sid, true));
        }
        let new_group = self.opts.pgid
            && p.pgid > 0
            && own_pgrp() != p.pgid
            && !self.leader_in_job(p.pgid)
            && !group_exists(p.pgid);
        new_group.then_some((p.pgid, false))
    }

    /// Creates `kids` with `flags` (children of this process, or with `CLONE_PARENT` of its
    /// parent), each in its saved session and group, through placeholder leaders where those
    /// must be made. Returns (index, pid) of each in the order of `kids`, and the placeholders
    /// this process cannot reap (created with `CLONE_PARENT`); those it created as its own
    /// children are reaped.
    fn create_all(&self, kids: &[usize], flags: u64) -> Result<Made, RestoreError> {
        let mut made = Vec::new();
        let mut up = Vec::new();
        let mut done = vec![false; kids.len()];
        for k in 0..kids.len() {
            if done[k] {
                continue;
            }
            let Some(key) = self.placeholder_for(kids[k]) else {
                done[k] = true;
                made.push((kids[k], self.create(kids[k], flags)?));
                continue;
            };
            let mut batch = Vec::new();
            for j in k..kids.len() {
                if !done[j] && self.placeholder_for(kids[j]) == Some(key) {
                    done[j] = true;
                    batch.push(kids[j]);
                }
            }
            let (m, u) = self.through_placeholder(key, &batch, flags)?;
            made.extend(m);
            up.extend(u);
        }
        made.sort_by_key(|(i, _)| kids.iter().position(|k| k == i));
        Ok((made, up))
    }

    /// Creates `batch` through a placeholder leader at `id` (a session leader if `session`,
    /// else a group leader), itself created with `flags`.
    fn through_placeholder(
        &self,
        (id, session): (i32, bool),
        batch: &[usize],
        flags: u64,
    ) -> Result<Made, RestoreError> {
        let what = if session {
            super::ids::Use::Sid
        } else {
            super::ids::Use::Pgid
        };
        let mut pipe = [0i32; 2];
        // SAFETY: pipe2 with a valid array.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(RestoreError::new(errno(), "cannot create a pipe".into()));
        }
        let close_pipe = || {
            // SAFETY: closing our pipe ends.
            unsafe {
                libc::close(pipe[0]);
                libc::close(pipe[1]);
            }
        };
        let pid = match clone_process(Some(id), flags) {
            Ok(pid) => pid,
            Err(e) => {
                close_pipe();
                let need = super::ids::Need { id, what };
                let busy = super::ids::check_free(&[need], std::time::Duration::ZERO, true);
                return Err(match (e, busy) {
                    (libc::EEXIST, Err(b)) => b,
                    (libc::EEXIST, Ok(())) => RestoreError::new(
                        libc::EBUSY,
                        format!("{} is in use", super::ids::describe_need(&need)),
                    ),
                    (e, _) => RestoreError::new(
                        e,
                        format!(
                            "cannot create a leader for {}: {}",
                            super::ids::describe_need(&need),
                            std::io::Error::from_raw_os_error(e)
                        ),
                    ),
                });
            }
        };
        if pid == 0 {
            self.placeholder(pipe, session, batch);
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(pipe[1]) };
        let mut made = Vec::new();
        let mut nested = Vec::new();
        let end = loop {
            match heard(pipe[0]) {
                Told::Kid(i, p) => made.push((i, p)),
                Told::Placeholder(p) => nested.push(p),
                Told::End(e, m) => break (e, m),
            }
        };
        // SAFETY: closing the read end.
        unsafe { libc::close(pipe[0]) };
        let mut up = Vec::new();
        if flags & libc::CLONE_PARENT as u64 == 0 {
            // It and the placeholders it made (CLONE_PARENT) are our children.
            reap(pid);
            nested.iter().for_each(|&q| reap(q));
        } else {
            up.push(pid);
            up.extend(nested);
        }
        match end {
            (0, _) => Ok((made, up)),
            (e, m) => {
                // Our parent reaps what we could not.
                self.placeholders.borrow_mut().extend(up);
                Err(RestoreError::new(e, m))
            }
        }
    }

    /// In a new placeholder leader: makes its session or group, creates `batch` as siblings,
    /// tells its creator and leaves.
    fn placeholder(&self, pipe: [i32; 2], session: bool, batch: &[usize]) -> ! {
        self.enter_process();
        self.placeholders.borrow_mut().clear();
        // SAFETY: closing the read end, our creator's.
        unsafe { libc::close(pipe[0]) };
        self.result_fd.set(pipe[1]);
        // SAFETY: setsid/setpgid on ourselves.
        let made = unsafe {
            if session {
                libc::setsid() >= 0
            } else {
                libc::setpgid(0, 0) == 0
            }
        };
        let res = if made {
            self.create_all(batch, libc::CLONE_PARENT as u64)
        } else {
            Err(RestoreError::new(
                errno(),
                "a placeholder leader cannot make its session or group".into(),
            ))
        };
        // Our copies of the job's pool and gate go now, not when we are reaped.
        self.pool.close();
        match self.moved_gate.get() {
            Some((closed, open)) => {
                // SAFETY: closing our copies of the gate's ends.
                unsafe {
                    libc::close(closed);
                    libc::close(open);
                }
            }
            None => {
                if let Some(g) = self.gate {
                    g.abandon();
                }
            }
        }
        match res {
            Ok((made, up)) => {
                made.iter()
                    .for_each(|&(i, p)| tell(pipe[1], &Told::Kid(i, p)));
                up.iter()
                    .for_each(|&q| tell(pipe[1], &Told::Placeholder(q)));
                tell(pipe[1], &Told::End(0, String::new()));
            }
            Err(e) => {
                let up = self.placeholders.borrow().clone();
                up.iter()
                    .for_each(|&q| tell(pipe[1], &Told::Placeholder(q)));
                tell(pipe[1], &Told::End(e.errno, e.msg));
            }
        }
        // SAFETY: leaving the placeholder without running atexit handlers.
        unsafe { libc::_exit(0) }
    }

    /// First thing in every process created here: drop the placeholder pipe inherited from
    /// the process that created it.
    fn enter_process(&self) {
        let fd = self.result_fd.replace(-1);
        if fd >= 0 {
            // SAFETY: closing an inherited pipe end that is not ours to write.
            unsafe { libc::close(fd) };
        }
    }

    /// Creates member `i` as a child of the caller; returns its pid.
    fn create(&self, i: usize, flags: u64) -> Result<i32, RestoreError> {
        let p = &self.members[i].img.process;
        let want = self.opts.pids.then_some(p.pid);
        // SAFETY: getpid has no preconditions.
        let creator = unsafe { libc::getpid() };
        let pid = match clone_process(want, flags) {
            Ok(pid) => pid,
            Err(libc::EEXIST) => {
                return Err(RestoreError::new(
                    libc::EBUSY,
                    format!("pid {} is in use", p.pid),
                ))
            }
            Err(e) => {
                return Err(RestoreError::new(
                    e,
                    format!(
                        "cannot create process {}: {}",
                        p.pid,
                        std::io::Error::from_raw_os_error(e)
                    ),
                ))
            }
        };
        if pid == 0 {
            if flags & libc::CLONE_PARENT as u64 == 0 {
                die_with_parent(creator);
            }
            self.child(i);
        }
        write_report(self.notify, &Report::Created(pid));
        let leads_session = self.opts.sid && self.opts.pids && p.sid == p.pid;
        if self.opts.pgid && !leads_session && flags == 0 {
            let target = if self.opts.pids && p.pgid == p.pid {
                pid
            } else {
                p.pgid
            };
            // The child does it too (and warns if it cannot): whoever comes first, the group
            // exists before a sibling that joins it is created.
            // SAFETY: setpgid on our own child, which has not exec'd.
            unsafe { libc::setpgid(pid, target) };
        }
        Ok(pid)
    }

    /// Re-creates an exited, unreaped child: a process that ends at once the way it ended, and
    /// stays a zombie until the restored parent collects it. Returns its pid once it has ended.
    fn create_zombie(&self, z: &ZombieRec) -> Option<i32> {
        match clone_process(self.opts.pids.then_some(z.pid), 0) {
            Ok(0) => end_like(z.status),
            Ok(pid) => {
                loop {
                    // SAFETY: waiting, without reaping, for our own child to end.
                    let r = unsafe {
                        let mut info: libc::siginfo_t = std::mem::zeroed();
                        let how = libc::WEXITED | libc::WNOWAIT;
                        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, how)
                    };
                    if r == 0 || errno() != libc::EINTR {
                        break Some(pid);
                    }
                }
            }
            Err(e) => {
                if !self.opts.quiet {
                    eprintln!(
                        "cr_restart: warning: cannot re-create zombie {} (a child of {}): {}",
                        z.pid,
                        z.ppid,
                        std::io::Error::from_raw_os_error(e)
                    );
                }
                None
            }
        }
    }

    /// Re-creates the zombies of the member whose saved pid is `ppid`. The `SIGCHLD` of those
    /// that had ended before the checkpoint is discarded (the parent had it then); that of a
    /// child that ended after it ([`ZOMBIE_SIGCHLD_DUE`]: the requester chain of a
    /// self-checkpoint) stays pending, blocked, for the restored program's own mask and handler.
    fn create_zombies(&self, ppid: i32) {
        let mine: Vec<&ZombieRec> = self.zombies.iter().filter(|z| z.ppid == ppid).collect();
        if mine.is_empty() {
            return;
        }
        // SAFETY: SIG_DFL (an ignored SIGCHLD inherited through exec would reap them at once)
        // and our own signal mask; the restored program's are put back later.
        unsafe {
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        }
        for due in [false, true] {
            // SAFETY: a valid sigset for our own mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGCHLD);
                let how = if due {
                    libc::SIG_BLOCK
                } else {
                    libc::SIG_UNBLOCK
                };
                libc::sigprocmask(how, &set, std::ptr::null_mut());
            }
            for z in mine
                .iter()
                .filter(|z| (z.flags & ZOMBIE_SIGCHLD_DUE != 0) == due)
            {
                self.create_zombie(z);
            }
        }
    }

    /// In the new process of member `i`: session, children, then its own restore.
    fn child(&self, i: usize) -> ! {
        self.enter_process();
        let m = &self.members[i];
        let p = &m.img.process;
        let floor = super::pool::fd_floor(self.members.iter().map(|m| m.img));
        let gate = match self.moved_gate.get() {
            Some(g) => Some(g),
            None => self.gate.map(|g| g.process_side(floor)),
        };
        self.moved_gate.set(gate);
        let fail = |e: RestoreError| -> ! {
            write_report(self.notify, &Report::Failed(e.errno, e.msg));
            if let Some((closed, _)) = gate {
                let _ = crate::sys::write_all(closed, CLOSED_FAILED);
            }
            // SAFETY: leaving this half-built process without running atexit handlers.
            unsafe { libc::_exit(1) }
        };
        // With its original pid, a session or group leader makes its own; anything else is
        // inherited (from its creator, maybe a placeholder leader) or joined.
        let leads_session = self.opts.sid && self.opts.pids && p.sid == p.pid;
        // SAFETY: setsid in this new process (not a group leader: its pgid is inherited).
        if leads_session && own_sid() != p.sid && unsafe { libc::setsid() } < 0 {
            fail(RestoreError::new(
                errno(),
                format!("cannot restore the session of process {}", p.pid),
            ));
        }
        if self.opts.pgid && own_pgrp() != p.pgid {
            let target = if self.opts.pids && p.pgid == p.pid {
                0
            } else {
                p.pgid
            };
            // SAFETY: setpgid on ourselves.
            if unsafe { libc::setpgid(0, target) } != 0 && !self.opts.quiet {
                eprintln!(
                    "cr_restart: warning: process {} stays out of its process group {} ({})",
                    p.pid,
                    p.pgid,
                    std::io::Error::last_os_error()
                );
            }
        }
        let kids = children_of(self.members, &self.parents, Some(i));
        if let Err(e) = self.create_all(&kids, 0) {
            fail(e);
        }
        self.create_zombies(p.pid);
        let file = match m.file.try_clone() {
            Ok(f) => f,
            Err(e) => fail(RestoreError::new(
                e.raw_os_error().unwrap_or(libc::EMFILE),
                format!("cannot reopen the image: {e}"),
            )),
        };
        let handover = super::Handover {
            notify_fd: self.notify,
            restarter: self.restarter,
            src: m.src,
            early_signal: self.opts.early_signal,
            gate,
            eager: self.opts.eager,
            huge_pages: self.opts.huge_pages,
        };
        let err = match super::run(m.img, i, file, self.pool, &handover) {
            Ok(never) => match never {},
            Err(e) => e, // already reported
        };
        // SAFETY: as above.
        unsafe { libc::_exit(err.errno & 0xff) }
    }
}

/// Ends the calling process the way `status` (a wait status) says: that exit code, or death by
/// that signal (without a core dump). Used by cr_restart to mimic the restored program, and by
/// re-created zombies.
pub fn end_like(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: resetting our own disposition and limits, then sending the signal to ourselves.
        unsafe {
            let nocore = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &nocore);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
        // SAFETY: not reached for deadly signals; a signal that did not kill us ends us here.
        unsafe { libc::_exit(128 + sig) }
    }
    // SAFETY: ending with the saved exit code (stderr is unbuffered; nothing else to flush).
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

fn write_file(path: &str, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Starts the init of a new user + pid namespace (with its own mount namespace and `/proc`) in
/// which every pid is free; cr_restart's uid and gid map to themselves, so files and
/// permissions look the same. `extra_flags` go to `clone3` too (`CLONE_PARENT`: the init becomes
/// a child of the caller's parent). Returns the init's pid in the caller, 0 in the init.
pub fn enter_namespace(quiet: bool, extra_flags: u64) -> Result<i32, RestoreError> {
    let mut sync = [0i32; 2];
    // SAFETY: pipe2 with a valid array.
    if unsafe { libc::pipe2(sync.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(RestoreError::new(errno(), "cannot create a pipe".into()));
    }
    let dies_with_creator = extra_flags & libc::CLONE_PARENT as u64 == 0;
    // For the init to see at the gate whether we are still there (`commit_to_job`): our pid is
    // not in its namespace, so the descriptor is opened here and inherited.
    let creator = if dies_with_creator {
        pidfd_of_self()
    } else {
        NO_CREATOR
    };
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let flags = (libc::CLONE_NEWUSER | libc::CLONE_NEWPID) as u64 | extra_flags;
    let pid = clone_process(None, flags).map_err(|e| {
        RestoreError::new(
            e,
            format!(
                "cannot create a user and pid namespace for the original pids: {} (--no-restore-pid restarts with fresh pids)",
                std::io::Error::from_raw_os_error(e)
            ),
        )
    });
    if pid.is_err() && creator >= 0 {
        crate::sys::close(creator);
    }
    let pid = pid?;
    if pid == 0 {
        CREATOR.store(creator, Ordering::Relaxed);
        if dies_with_creator {
            // Killed with its creator until the gate opens (`commit_to_job` clears it): its
            // namespace, half-restored processes included, dies with it. A creator that died
            // before this was set never writes the byte read below: we leave.
            // SAFETY: prctl on ourselves with integer arguments.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
        }
        // The init: wait until the parent has written our id maps.
        let mut b = [0u8; 1];
        // SAFETY: closing our copy of the write end, then reading one byte.
        let n = unsafe {
            libc::close(sync[1]);
            let n = libc::read(sync[0], b.as_mut_ptr() as *mut _, 1);
            libc::close(sync[0]);
            n
        };
        if n != 1 {
            // SAFETY: the parent failed to set us up; leave.
            unsafe { libc::_exit(1) };
        }
        private_proc(quiet);
        return Ok(0);
    }
    if creator >= 0 {
        crate::sys::close(creator);
    }
    let res = write_file(&format!("/proc/{pid}/uid_map"), &format!("{uid} {uid} 1\n"))
        .and_then(|_| write_file(&format!("/proc/{pid}/setgroups"), "deny"))
        .and_then(|_| write_file(&format!("/proc/{pid}/gid_map"), &format!("{gid} {gid} 1\n")));
    // SAFETY: closing the read end and releasing (or, on failure, dropping) the child.
    unsafe {
        libc::close(sync[0]);
        if res.is_ok() {
            libc::write(sync[1], b"g".as_ptr() as *const _, 1);
        }
        libc::close(sync[1]);
    }
    if let Err(e) = res {
        if extra_flags & libc::CLONE_PARENT as u64 == 0 {
            let mut status = 0;
            // SAFETY: reaping the child that exits on the closed pipe.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
        return Err(RestoreError::new(
            e.raw_os_error().unwrap_or(libc::EPERM),
            format!("cannot map our user id into the new namespace: {e}"),
        ));
    }
    Ok(pid)
}

/// [`CREATOR`] in a process that is not a namespace's init, or whose creator it does not die with.
const NO_CREATOR: i32 = -2;
/// [`CREATOR`] when the kernel gave no pidfd: the init cannot see its creator's death.
const CREATOR_UNSEEN: i32 = -1;

/// In a namespace's init made by [`enter_namespace`] without `CLONE_PARENT`: a pidfd of its
/// creator (the restarter), [`CREATOR_UNSEEN`] when there is none; else [`NO_CREATOR`].
static CREATOR: AtomicI32 = AtomicI32::new(NO_CREATOR);

/// A pidfd of the calling process, or [`CREATOR_UNSEEN`] (a kernel before 5.3, which cannot
/// restart with original pids anyway: `clone3`'s `set_tid` is 5.5; the init then only could
/// not tell that its creator died in the instant before the gate opened).
fn pidfd_of_self() -> i32 {
    // SAFETY: pidfd_open of our own pid; getpid has no preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if fd < 0 {
        return CREATOR_UNSEEN;
    }
    fd as i32 // close-on-exec, as every pidfd
}

/// Whether the creator whose pidfd is `fd` has ended, waiting up to `timeout_ms` (-1: for ever).
fn creator_ended(fd: i32, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 || errno() != libc::EINTR {
            return r > 0;
        }
    }
}

/// In the process that opens the job's gate, all the job's processes ready and waiting at it:
/// the point from which the job no longer depends on the restarter. A namespace's init drops
/// the parent-death signal its creator gave it ([`enter_namespace`]) *before* it opens the
/// gate: once the program runs, a restarter killed leaves it running (as root, where the
/// restarter itself opens the gate, that holds by construction). Returns false when the
/// creator died already (its parent-death signal may not have been sent yet): the gate must
/// then stay shut and the job leave. Elsewhere does nothing and returns true.
pub fn commit_to_job() -> bool {
    let creator = CREATOR.load(Ordering::Relaxed);
    if creator == NO_CREATOR {
        return true;
    }
    // SAFETY: prctl on ourselves with integer arguments. A creator that died before this has
    // sent its SIGKILL already, which ends us on the way back from the call.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    creator < 0 || !creator_ended(creator, 0)
}

/// TEST ONLY (`opened`, see [`super::test_stop_at`]): in a namespace's init past
/// [`commit_to_job`], waits until its creator has ended and returns true; false elsewhere.
pub fn test_wait_creator_ended() -> bool {
    let creator = CREATOR.load(Ordering::Relaxed);
    creator >= 0 && creator_ended(creator, -1)
}

/// In the namespace's init: a private mount namespace with a `/proc` of the new pid namespace, so
/// restored agents see their own pids and threads there. Without it they would still run, but
/// could not be checkpointed again: a warning says so.
fn private_proc(quiet: bool) {
    // SAFETY: unshare and mount with literal arguments.
    let ok = unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
            && libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) == 0
    };
    if !ok && !quiet {
        eprintln!(
            "cr_restart: warning: cannot mount /proc for the restored pid namespace ({}); the restored job cannot be checkpointed again",
            std::io::Error::last_os_error()
        );
    }
}
