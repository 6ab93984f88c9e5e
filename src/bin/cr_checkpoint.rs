//! `cr_checkpoint [options] PID`: asks a process's agent for an image and commits it atomically.

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use cr::protocol::{self, Request};
use cr::tool::{fail, strerror};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

cr::tool_marker!();

const TOOL: &str = "cr_checkpoint";
/// BLCR's CR_ENOSUPPORT (2356); tools exit with its low byte, 52.
const CR_ENOSUPPORT: i32 = 2356;

#[derive(Parser, Debug)]
#[command(
    name = "cr_checkpoint",
    version,
    about = "Checkpoint a running process to a file",
    after_help = "Exit status: 0 on success, else errno & 0xff: 3 no such process or everything omitted, 13 permission, 17 file exists (--noclobber), 22 bad arguments, 38 not available yet, 52 no checkpoint support, 56/57 ptraced/ptracer, 110 timed out."
)]
struct Args {
    /// Checkpoint the process and its descendants (default).
    #[arg(short = 'T', long = "tree", action = ArgAction::SetTrue)]
    tree: bool,
    /// Checkpoint only the process ID.
    #[arg(short = 'p', long = "pid", action = ArgAction::SetTrue)]
    pid_scope: bool,
    /// ID is a process group.
    #[arg(short = 'g', long = "pgid", action = ArgAction::SetTrue)]
    pgid: bool,
    /// ID is a session.
    #[arg(short = 's', long = "sid", action = ArgAction::SetTrue)]
    sid: bool,
    /// Write context.ID in the current directory (default).
    #[arg(short = 'c', long = "cwd", action = ArgAction::SetTrue)]
    cwd: bool,
    /// Write the image to FILE (a regular file, a FIFO or a socket; "-" = standard output).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Write the image to the open descriptor FD.
    #[arg(short = 'F', long = "fd", value_name = "FD")]
    fd: Option<i32>,
    /// Write one file per process, context.PID, into DIR.
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Write a temporary file and rename it into place once complete (default).
    #[arg(long, action = ArgAction::SetTrue)]
    atomic: bool,
    /// Keep an existing file as NAME (default: rotating FILE.~N~) once the new one is complete.
    #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    backup: Option<String>,
    /// Write the image directly into FILE (no temporary file and rename).
    #[arg(long, action = ArgAction::SetTrue)]
    clobber: bool,
    /// Refuse to replace an existing FILE (exit 17).
    #[arg(long, action = ArgAction::SetTrue)]
    noclobber: bool,
    /// Sync the image and its directory to disk before reporting success (default).
    #[arg(long, action = ArgAction::SetTrue)]
    sync: bool,
    /// Do not sync the image to disk.
    #[arg(long, action = ArgAction::SetTrue)]
    nosync: bool,
    /// After the checkpoint, leave the process running (default).
    #[arg(long, action = ArgAction::SetTrue)]
    run: bool,
    /// Send SIGTERM to the process once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    term: bool,
    /// Send SIGABRT once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    abort: bool,
    /// Send SIGKILL once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    kill: bool,
    /// Send SIGSTOP once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    stop: bool,
    /// Send SIGCONT once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    cont: bool,
    /// Send signal NUM once the image is safely on disk.
    #[arg(short = 'S', long = "signal", value_name = "NUM")]
    signal: Option<i32>,
    /// Store the executable by content, not by reference.
    #[arg(long = "save-exe", action = ArgAction::SetTrue)]
    save_exe: bool,
    /// Store private mapped files by content.
    #[arg(long = "save-private", action = ArgAction::SetTrue)]
    save_private: bool,
    /// Store shared mapped files by content.
    #[arg(long = "save-shared", action = ArgAction::SetTrue)]
    save_shared: bool,
    /// Store every mapped file by content.
    #[arg(long = "save-all", action = ArgAction::SetTrue)]
    save_all: bool,
    /// Store mapped files by reference (default).
    #[arg(long = "save-none", action = ArgAction::SetTrue)]
    save_none: bool,
    /// Checkpoint a ptraced process anyway.
    #[arg(long = "ptraced-allow", action = ArgAction::SetTrue)]
    ptraced_allow: bool,
    /// Leave a ptraced process out.
    #[arg(long = "ptraced-skip", action = ArgAction::SetTrue)]
    ptraced_skip: bool,
    /// Fail if a process is ptraced (default).
    #[arg(long = "ptraced-error", action = ArgAction::SetTrue)]
    ptraced_error: bool,
    /// Leave out processes that ptrace others.
    #[arg(long = "ptracer-skip", action = ArgAction::SetTrue)]
    ptracer_skip: bool,
    /// Fail if a process ptraces others (default).
    #[arg(long = "ptracer-error", action = ArgAction::SetTrue)]
    ptracer_error: bool,
    /// Kernel message verbosity (accepted for BLCR compatibility).
    #[arg(long = "kmsg-none", action = ArgAction::SetTrue, hide = true)]
    kmsg_none: bool,
    /// Kernel message verbosity (accepted for BLCR compatibility).
    #[arg(long = "kmsg-error", action = ArgAction::SetTrue, hide = true)]
    kmsg_error: bool,
    /// Kernel message verbosity (accepted for BLCR compatibility).
    #[arg(long = "kmsg-warning", action = ArgAction::SetTrue, hide = true)]
    kmsg_warning: bool,
    /// Give up if the checkpoint does not complete within SEC seconds (the process goes on).
    #[arg(short = 't', long = "time", value_name = "SEC")]
    time: Option<u32>,
    /// More messages (repeatable).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
    /// Print nothing but errors.
    #[arg(short = 'q', long = "quiet", action = ArgAction::SetTrue)]
    quiet: bool,
    /// The process (or group or session) to checkpoint.
    id: i32,
}

/// The last of several options given (BLCR: "last one wins").
fn last_given<T: Copy>(m: &clap::ArgMatches, opts: &[(&str, T)], default: T) -> T {
    opts.iter()
        .filter(|(id, _)| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .filter_map(|(id, v)| {
            m.indices_of(id)
                .and_then(|mut i| i.next_back())
                .map(|i| (i, *v))
        })
        .max_by_key(|(i, _)| *i)
        .map_or(default, |(_, v)| v)
}

/// Where the image goes.
enum Dest {
    /// A file in the file system, committed per `commit`.
    File { path: PathBuf, commit: Commit },
    /// A stream (standard output, a passed descriptor, a FIFO or socket): written as is.
    Stream { fd: i32, what: String },
}

#[derive(Clone, PartialEq, Eq)]
enum Commit {
    Atomic,
    Backup(String),
    Clobber,
}

/// The post-checkpoint signal: the last of --run/--term/--abort/--kill/--stop/--cont/--signal.
fn chosen_signal(m: &clap::ArgMatches, a: &Args) -> i32 {
    let opts = [
        ("run", 0),
        ("term", libc::SIGTERM),
        ("abort", libc::SIGABRT),
        ("kill", libc::SIGKILL),
        ("stop", libc::SIGSTOP),
        ("cont", libc::SIGCONT),
        ("signal", a.signal.unwrap_or(0)),
    ];
    last_given(m, &opts, 0)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn parent(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    after
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// How long to wait for a process that cr_restart is still restoring.
const RESTORE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn connect(pid: i32) -> i32 {
    let started = std::time::Instant::now();
    let fd = loop {
        match protocol::connect(pid) {
            Ok(fd) => break fd,
            // A child of cr_restart that is still being restored has no control socket yet.
            Err(_) if comm(pid) == "cr_restart" && comm(parent(pid)) == "cr_restart" => {
                if started.elapsed() > RESTORE_WAIT {
                    fail(TOOL, libc::EAGAIN, &format!("process {pid} is still being restored; try again later"));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(_) if comm(pid) == "cr_restart" => fail(TOOL, CR_ENOSUPPORT, &format!(
                "process {pid} is cr_restart itself; checkpoint the restored program (its child) instead")),
            Err(_) => fail(TOOL, CR_ENOSUPPORT, &format!(
                "process {pid} has no checkpoint support (start it with cr_run or link it with -lcr)")),
        }
    };
    // SAFETY: getsockopt on the connected socket with a valid ucred buffer.
    unsafe {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut clen = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut _,
            &mut clen,
        );
        if cred.pid != pid {
            fail(TOOL, CR_ENOSUPPORT, &format!("process {pid} has no checkpoint support (its control socket belongs to pid {})", cred.pid));
        }
        fd
    }
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Pids of the processes in process group or session `id` (field 5 or 6 of /proc/PID/stat).
fn members(field: usize, id: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        if after
            .split_whitespace()
            .nth(field - 3)
            .and_then(|v| v.parse::<i32>().ok())
            == Some(id)
        {
            out.push(pid);
        }
    }
    out
}

/// Children of `pid` (all threads' children files).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    out
}

/// The state letter of /proc/PID/stat (R, S, T, …).
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn matches_given(m: &clap::ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
}

fn tracer_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether some process is ptraced by `pid`.
fn is_tracer(pid: i32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                .is_some_and(|p| p != pid && tracer_of(p) == pid)
        })
}

/// The process to checkpoint for the scope; errors for scopes that would need one image of
/// several processes (that comes with the process-tree work).
fn resolve_target(m: &clap::ArgMatches, a: &Args) -> (i32, i32) {
    use cr::api::types::{CR_SCOPE_PGRP, CR_SCOPE_PROC, CR_SCOPE_SESS, CR_SCOPE_TREE};
    let scope = last_given(
        m,
        &[
            ("tree", CR_SCOPE_TREE),
            ("pid_scope", CR_SCOPE_PROC),
            ("pgid", CR_SCOPE_PGRP),
            ("sid", CR_SCOPE_SESS),
        ],
        CR_SCOPE_TREE,
    );
    let id = a.id;
    if id <= 0 {
        fail(TOOL, libc::EINVAL, &format!("invalid id {id}"));
    }
    let pid = match scope {
        CR_SCOPE_PGRP | CR_SCOPE_SESS => {
            let (field, what) = if scope == CR_SCOPE_PGRP {
                (5, "process group")
            } else {
                (6, "session")
            };
            let me = std::process::id() as i32;
            let procs: Vec<i32> = members(field, id)
                .into_iter()
                .filter(|&p| p != me)
                .collect();
            match procs.as_slice() {
                [] => fail(TOOL, libc::ESRCH, &format!("no process in {what} {id}")),
                [one] => *one,
                _ => fail(TOOL, libc::ENOSYS, &format!(
                    "{what} {id} has {} processes; one image of several processes is not available yet", procs.len())),
            }
        }
        _ => id,
    };
    // SAFETY: kill with signal 0 only checks existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ESRCH);
        match e {
            libc::ESRCH => fail(TOOL, e, &format!("no process with pid {pid}")),
            libc::EPERM => fail(
                TOOL,
                e,
                &format!("process {pid} belongs to another user: permission denied"),
            ),
            _ => fail(
                TOOL,
                e,
                &format!("cannot signal process {pid}: {}", strerror(e)),
            ),
        }
    }
    (pid, scope)
}

/// BLCR's ptrace rules: a ptraced target fails with CR_EPTRACED unless allowed or skipped; a
/// target that ptraces others fails with CR_EPTRACER unless skipped. Skipping our only process
/// leaves nothing to checkpoint (ESRCH, exit 3).
fn check_ptrace(m: &clap::ArgMatches, a: &Args, pid: i32) {
    let traced = last_given(
        m,
        &[
            ("ptraced_allow", 1),
            ("ptraced_skip", 2),
            ("ptraced_error", 0),
        ],
        0,
    );
    let tracer_skip = last_given(
        m,
        &[("ptracer_skip", true), ("ptracer_error", false)],
        false,
    );
    let _ = a;
    if tracer_of(pid) != 0 {
        match traced {
            1 => {}
            2 => fail(
                TOOL,
                libc::ESRCH,
                &format!("process {pid} is ptraced and was skipped: nothing to checkpoint"),
            ),
            _ => fail(
                TOOL,
                2360,
                &format!("process {pid} is being ptraced (use --ptraced-allow or --ptraced-skip)"),
            ),
        }
    }
    if is_tracer(pid) {
        if tracer_skip {
            fail(
                TOOL,
                libc::ESRCH,
                &format!("process {pid} ptraces others and was skipped: nothing to checkpoint"),
            );
        }
        fail(
            TOOL,
            2361,
            &format!("process {pid} ptraces other processes (use --ptracer-skip)"),
        );
    }
}

/// The destination chosen by -c/-f/-F/-d (only one of them), and its commit rule.
fn resolve_dest(m: &clap::ArgMatches, a: &Args, pid: i32) -> Dest {
    let given = [a.cwd, a.file.is_some(), a.fd.is_some(), a.dir.is_some()]
        .iter()
        .filter(|&&g| g)
        .count();
    if given > 1 {
        fail(
            TOOL,
            libc::EINVAL,
            "conflicting destinations: give only one of -c, -f, -F and -d",
        );
    }
    if let Some(fd) = a.fd {
        // SAFETY: probing the descriptor.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            fail(TOOL, libc::EBADF, &format!("descriptor {fd} is not open"));
        }
        return Dest::Stream {
            fd,
            what: format!("descriptor {fd}"),
        };
    }
    let path = match (&a.file, &a.dir) {
        (Some(f), _) if f.as_os_str() == "-" => {
            return Dest::Stream {
                fd: 1,
                what: "standard output".into(),
            }
        }
        (Some(f), _) => f.clone(),
        (None, Some(d)) => {
            if !d.is_dir() {
                fail(
                    TOOL,
                    libc::ENOTDIR,
                    &format!("{}: not a directory", d.display()),
                );
            }
            d.join(format!("context.{pid}"))
        }
        (None, None) => PathBuf::from(format!("context.{}", a.id)),
    };
    if let Ok(md) = std::fs::metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        let t = md.file_type();
        if t.is_fifo() || t.is_socket() || t.is_char_device() {
            // Not a regular file: open it and write the image straight into it.
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .unwrap_or_else(|e| {
                    fail(
                        TOOL,
                        e.raw_os_error().unwrap_or(libc::EIO),
                        &format!("cannot open {}: {e}", path.display()),
                    )
                });
            let fd = f.as_raw_fd();
            std::mem::forget(f);
            return Dest::Stream {
                fd,
                what: path.display().to_string(),
            };
        }
    }
    let commit = last_given(
        m,
        &[
            ("atomic", 0u8),
            ("backup", 1),
            ("clobber", 2),
            ("noclobber", 3),
        ],
        0,
    );
    if commit == 3 && path.exists() {
        fail(
            TOOL,
            libc::EEXIST,
            &format!("{} exists (--noclobber)", path.display()),
        );
    }
    let commit = match commit {
        1 => Commit::Backup(a.backup.clone().unwrap_or_default()),
        2 => Commit::Clobber,
        _ => Commit::Atomic,
    };
    Dest::File { path, commit }
}

/// The `--save-*` options applied left to right (`--save-none` clears what came before).
fn save_flags(m: &clap::ArgMatches) -> u32 {
    let opts = [
        ("save_exe", protocol::FLAG_SAVE_EXE),
        ("save_private", protocol::FLAG_SAVE_PRIVATE),
        ("save_shared", protocol::FLAG_SAVE_SHARED),
        ("save_all", protocol::FLAG_SAVE_ALL),
        ("save_none", 0),
    ];
    let mut given: Vec<(usize, u32)> = opts
        .iter()
        .filter(|(id, _)| matches_given(m, id))
        .flat_map(|(id, f)| m.indices_of(id).into_iter().flatten().map(move |i| (i, *f)))
        .collect();
    given.sort_unstable();
    given
        .into_iter()
        .fold(0, |acc, (_, f)| if f == 0 { 0 } else { acc | f })
}

/// The directory of `path` (`.` when it has none) and its file name.
fn dir_and_name(path: &Path) -> (&Path, String) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}

/// Next rotating backup name FILE.~N~ (one past the highest existing).
fn next_backup(path: &Path) -> PathBuf {
    let (dir, base) = dir_and_name(path);
    let prefix = format!("{base}.~");
    let highest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(&prefix)?
                .strip_suffix('~')?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    dir.join(format!("{base}.~{}~", highest + 1))
}

fn main() {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let signal = chosen_signal(&matches, &args);
    if !(0..=64).contains(&signal) {
        fail(
            TOOL,
            libc::EINVAL,
            &format!("invalid signal number {signal}"),
        );
    }
    let (pid, scope) = resolve_target(&matches, &args);
    check_ptrace(&matches, &args, pid);
    let dest = resolve_dest(&matches, &args, pid);
    let sync = last_given(&matches, &[("sync", true), ("nosync", false)], true);
    let sock = connect(pid);
    // A stopped process cannot take part: continue it for the checkpoint and stop it again
    // afterwards (BLCR: SIGSTOP after the checkpoint if the process was stopped), unless another
    // signal was asked for.
    let was_stopped = state_of(pid) == Some('T');
    if was_stopped {
        // SAFETY: continuing the target; it is stopped again below.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    let signal = if was_stopped && signal == 0 && !matches_given(&matches, "cont") {
        libc::SIGSTOP
    } else {
        signal
    };

    // For a file: the path written now, and the final path it is renamed to.
    let (out_fd, file, tmp, final_path) = match &dest {
        Dest::Stream { fd, .. } => (*fd, None, None, None),
        Dest::File { path, commit } => {
            let (dir, base) = dir_and_name(path);
            let tmp = if *commit == Commit::Clobber {
                path.clone()
            } else {
                dir.join(format!(".{base}.tmp"))
            };
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&tmp)
                .unwrap_or_else(|e| {
                    fail(
                        TOOL,
                        e.raw_os_error().unwrap_or(libc::EIO),
                        &format!("cannot create {}: {e}", tmp.display()),
                    )
                });
            (f.as_raw_fd(), Some(f), Some(tmp), Some(path.clone()))
        }
    };
    let mut req = Request::new(protocol::REQ_CHECKPOINT);
    req.flags = save_flags(&matches);
    req.timeout_ms = args.time.map_or(0, |s| s.saturating_mul(1000));
    req.requester = std::process::id() as i32;
    req.target = args.id;
    req.scope = scope;
    if let Some(p) = &final_path {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        req.set_dest(abs.as_os_str().as_encoded_bytes());
    }
    let cleanup = |errno: i32, msg: String| -> ! {
        if let Some(t) = &tmp {
            let _ = std::fs::remove_file(t);
        }
        fail(TOOL, errno, &msg)
    };
    if let Err(e) = protocol::send(sock, &req, Some(out_fd)) {
        cleanup(
            e,
            format!("cannot send the request to {pid}: {}", strerror(e)),
        );
    }
    let first = protocol::await_accepted(sock, false);
    let final_reply = match first {
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => protocol::recv_reply(sock, 0),
        Err(e) => Err(e),
    };
    let Ok(Some(reply)) = final_reply else {
        cleanup(
            libc::EIO,
            format!("process {pid} ended or closed its control socket during the checkpoint"),
        )
    };
    if reply.status != 0 {
        let detail = reply.message();
        cleanup(
            reply.status,
            format!(
                "checkpoint of {pid} failed: {detail}: {}",
                strerror(reply.status)
            ),
        );
    }
    let release = Request::new(protocol::REQ_RELEASE);
    if let (Some(f), Some(tmp), Some(path), Dest::File { commit, .. }) =
        (&file, &tmp, &final_path, &dest)
    {
        let commit_result = (|| -> std::io::Result<()> {
            if sync {
                f.sync_all()?;
            }
            if let Commit::Backup(name) = commit {
                if path.exists() {
                    let backup = if name.is_empty() {
                        next_backup(path)
                    } else {
                        PathBuf::from(name)
                    };
                    std::fs::rename(path, backup)?;
                }
            }
            if tmp != path {
                std::fs::rename(tmp, path)?;
            }
            Ok(())
        })();
        if let Err(e) = commit_result {
            let _ = protocol::send(sock, &release, None);
            cleanup(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot commit {}: {e}", path.display()),
            );
        }
        if sync {
            fsync_dir(
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            );
        }
    }
    drop(file);
    if signal != 0 {
        // SAFETY: sending the requested post-checkpoint signal to the target, now that the image
        // is complete (and durable, unless --nosync).
        unsafe { libc::kill(pid, signal) };
    }
    let _ = protocol::send(sock, &release, None);
    if args.verbose > 0 && !args.quiet {
        let what = match &dest {
            Dest::File { path, .. } => path.display().to_string(),
            Dest::Stream { what, .. } => what.clone(),
        };
        eprintln!(
            "{TOOL}: process {pid} checkpointed to {what} ({} bytes)",
            reply.bytes
        );
    }
    if !args.quiet && scope == cr::api::types::CR_SCOPE_TREE && !children(pid).is_empty() {
        eprintln!("{TOOL}: warning: process {pid} has children; only {pid} itself was saved (process trees are not available yet)");
    }
    if !args.quiet {
        if let Some(path) = &final_path {
            if let Ok(f) = std::fs::File::open(path) {
                if let Ok(img) = cr::image::reader::Image::open(&f) {
                    for w in &img.warnings {
                        eprintln!("{TOOL}: warning: {w}");
                    }
                }
            }
        }
    }
}
