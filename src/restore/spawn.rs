//! Creates the processes of a restart job with their parent/child links, sessions, process
//! groups and, when asked, their original pids; each then restores itself (`restore::run`).
//!
//! The caller (cr_restart, or the namespace's init) creates the job's roots; every process,
//! while it is still restart-loader code, first becomes a session leader if it was one
//! (`--restore-sid`), then creates its own children (so they inherit what they must), and only
//! then rebuilds itself. Parents move their children into their saved process groups
//! (`--restore-pgid`), group leaders first.
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

/// Holds the restored processes back until every copy of the job's pool is closed: each
/// process, once it closed its own, writes a byte to the "closed" pipe and waits for EOF on the
/// gate; the process that built the pool closes its copy, counts one byte per process and then
/// closes the gate's write end.
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
            if libc::pipe2(gate.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                libc::close(closed[0]);
                libc::close(closed[1]);
                return Err(RestoreError::new(errno(), "cannot create a pipe".into()));
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

    /// Spawning failed: closes everything (whoever waits at the gate goes on, to be killed).
    pub fn abandon(&self) {
        for fd in self.closed.iter().chain(&self.gate) {
            // SAFETY: closing our pipe ends.
            unsafe { libc::close(*fd) };
        }
    }

    /// In the process that built the pool, after spawning and closing its pool copy: waits
    /// until `n` processes closed theirs (a process that dies counts as closed: EOF), then
    /// opens the gate.
    pub fn open_after(&self, n: usize) {
        // SAFETY: closing our copies of the processes' ends, reading, closing the gate.
        unsafe {
            libc::close(self.closed[1]);
            libc::close(self.gate[0]);
            let mut seen = 0;
            let mut b = [0u8; 64];
            while seen < n {
                let r = libc::read(self.closed[0], b.as_mut_ptr() as *mut _, b.len());
                if r > 0 {
                    seen += r as usize;
                } else if r == 0 || errno() != libc::EINTR {
                    break;
                }
            }
            libc::close(self.closed[0]);
            libc::close(self.gate[1]);
        }
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

/// Before anything is created: every original pid and tid must be free (BLCR: `EBUSY`); ids
/// still held by exiting processes or zombies are waited for a few seconds (see
/// [`super::ids`]).
pub fn check_ids_free(members: &[Member], quiet: bool) -> Result<(), RestoreError> {
    super::ids::check_free(&super::ids::pids_of(members), super::ids::BUSY_WAIT, quiet)
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
    parents: Vec<Option<usize>>,
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
            parents,
        }
    }

    /// Creates the roots of the job (and through them every member); returns (index, pid) of
    /// each root, eldest first.
    pub fn spawn_roots(&self) -> Result<Vec<(usize, i32)>, RestoreError> {
        children_of(self.members, &self.parents, None)
            .into_iter()
            .map(|i| self.create(i, self.root_flags).map(|pid| (i, pid)))
            .collect()
    }

    /// Creates member `i` as a child of the caller; returns its pid.
    fn create(&self, i: usize, flags: u64) -> Result<i32, RestoreError> {
        let p = &self.members[i].img.process;
        let want = self.opts.pids.then_some(p.pid);
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
            self.child(i);
        }
        write_report(self.notify, &Report::Created(pid));
        let leads_session = self.opts.sid && p.sid == p.pid;
        if self.opts.pgid && !leads_session && flags == 0 {
            let target = if p.pgid == p.pid { pid } else { p.pgid };
            // SAFETY: setpgid on our own child, which has not exec'd.
            if unsafe { libc::setpgid(pid, target) } != 0 && !self.opts.quiet {
                eprintln!(
                    "cr_restart: warning: process {} stays out of its process group {} (the group's leader is not part of the restart)",
                    p.pid, p.pgid
                );
            }
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
                let _ = crate::sys::write_all(closed, b"c");
            }
            // SAFETY: leaving this half-built process without running atexit handlers.
            unsafe { libc::_exit(1) }
        };
        // SAFETY: setsid in this new process (not a group leader: its pgid is inherited).
        if self.opts.sid && p.sid == p.pid && unsafe { libc::setsid() } < 0 {
            fail(RestoreError::new(
                errno(),
                format!("cannot restore the session of process {}", p.pid),
            ));
        }
        // A group leader makes its own group at once (its parent does too, where it can).
        if self.opts.pgid && p.pgid == p.pid && !(self.opts.sid && p.sid == p.pid) {
            // SAFETY: setpgid on ourselves.
            unsafe { libc::setpgid(0, 0) };
        }
        for c in children_of(self.members, &self.parents, Some(i)) {
            if let Err(e) = self.create(c, 0) {
                fail(e);
            }
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
    })?;
    if pid == 0 {
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
