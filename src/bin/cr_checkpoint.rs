//! `cr_checkpoint [options] PID`: asks a process's agent for an image and commits it atomically.

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use cr::image::tree::ShareRec;
use cr::protocol::{self, Request};
use cr::tool::{children, fail, strerror};
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
    after_help = "Scopes: -T (default) saves the process and its descendants, -g every process of the group and -s of the session (with their descendants), all stopped together (one consistent cut), in one image file or with -d one file per process. Zombie children of saved processes are saved as zombies; so is the child through which a program checkpoints itself (system(\"cr_checkpoint $PPID\")), as exited with status 0.\n\nExit status: 0 on success, else errno & 0xff: 3 no such process or everything omitted, 7 more than 256 processes, 13 permission, 17 file exists (--noclobber), 22 bad arguments, 52 a process without checkpoint support, 56/57 ptraced/ptracer, 110 timed out."
)]
struct Args {
    /// Checkpoint the process and its descendants (default).
    #[arg(short = 'T', long = "tree", action = ArgAction::SetTrue)]
    tree: bool,
    /// Checkpoint only the process ID.
    #[arg(short = 'p', long = "pid", visible_alias = "process", action = ArgAction::SetTrue)]
    pid_scope: bool,
    /// ID is a process group.
    #[arg(short = 'g', long = "pgid", visible_alias = "group", action = ArgAction::SetTrue)]
    pgid: bool,
    /// ID is a session.
    #[arg(short = 's', long = "sid", visible_alias = "session", action = ArgAction::SetTrue)]
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
    /// BLCR's undocumented "early" SIGSTOP: here every signal is already sent before any thread
    /// of the target runs again, so this is --stop.
    #[arg(long = "early-stop", action = ArgAction::SetTrue)]
    early_stop: bool,
    /// BLCR's undocumented "early" SIGABRT (as --abort, see --early-stop).
    #[arg(long = "early-abrt", action = ArgAction::SetTrue)]
    early_abrt: bool,
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
        ("early_stop", libc::SIGSTOP),
        ("early_abrt", libc::SIGABRT),
        ("signal", a.signal.unwrap_or(0)),
    ];
    last_given(m, &opts, 0)
}

/// This process and its ancestors: never part of a checkpoint it makes (they wait for it).
fn ourselves() -> std::collections::HashSet<i32> {
    let mut set = std::collections::HashSet::new();
    let mut up = std::process::id() as i32;
    while up > 1 && set.insert(up) {
        up = parent(up);
    }
    set
}

/// A cr_restart that only waits for the job it restored (the tool itself, or the init of the pid
/// namespace it made), as opposed to one of its children still being restored. It has no agent
/// and is never saved: as BLCR's `--omit-maybe`, a checkpoint that reaches it takes its
/// restored descendants instead.
fn is_waiting_restarter(pid: i32) -> bool {
    comm(pid) == "cr_restart"
        && (comm(parent(pid)) != "cr_restart" || protocol::target_identity(pid).1 == 1)
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

/// How long a process that is loading the agent may take to open its control socket.
const AGENT_START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `pid` maps libcr or will (its environment preloads it).
fn agent_coming(pid: i32) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if maps.lines().any(|l| l.contains("/libcr")) {
        return true;
    }
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|v| v.starts_with(b"LD_PRELOAD=") && v.windows(5).any(|w| w == b"libcr"))
}

fn connect(pid: i32) -> i32 {
    try_connect(pid)
        .unwrap_or_else(|| fail(TOOL, libc::ESRCH, &format!("no process with pid {pid}")))
}

/// Whether `pid` has ended (gone, or a zombie).
fn ended(pid: i32) -> bool {
    matches!(state_of(pid), None | Some('Z') | Some('X'))
}

/// Connects to `pid`'s agent; `None` when the process ended meanwhile (a member of a tree that
/// exits before it is stopped is simply not part of the cut).
fn try_connect(pid: i32) -> Option<i32> {
    let started = std::time::Instant::now();
    let fd = loop {
        match protocol::connect(pid) {
            Ok(fd) => break fd,
            Err(_) if ended(pid) => return None,
            // A child of cr_restart that is still being restored has no control socket yet.
            Err(_) if comm(pid) == "cr_restart" && !is_waiting_restarter(pid) => {
                if started.elapsed() > RESTORE_WAIT {
                    fail(TOOL, libc::EAGAIN, &format!("process {pid} is still being restored; try again later"));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // A process whose agent is starting (a fresh fork child, or one in the middle of an
            // exec whose new image preloads libcr) has no socket yet: give it a moment.
            Err(_) if started.elapsed() < AGENT_START_WAIT && agent_coming(pid) => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) if comm(pid) == "cr_restart" => fail(TOOL, CR_ENOSUPPORT, &format!(
                "process {pid} is cr_restart itself; checkpoint the restored program (its child) instead")),
            Err(_) => fail(TOOL, CR_ENOSUPPORT, &format!(
                "process {pid} ({}) has no checkpoint support (start it with cr_run or link it with -lcr)", comm(pid))),
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
        Some(fd)
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

/// Fails unless process `pid` exists and may be signalled by us.
fn check_signalable(pid: i32) {
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
}

/// What a checkpoint request covers.
struct Scope {
    /// The processes to checkpoint, parents before children.
    pids: Vec<i32>,
    /// `CR_SCOPE_*`.
    scope: i32,
    /// Zombies met while collecting them (warned about once the checkpoint goes ahead).
    zombies: Vec<i32>,
    /// When we run on behalf of a process of the scope (`system("cr_checkpoint $$")`, or a
    /// fork and exec of cr_checkpoint): the topmost process of the requester chain, which that
    /// process waits for, and that process (see [`requester_chain`]).
    requester: Option<(i32, i32)>,
}

/// The requester chain: cr_checkpoint and those of its ancestors that are below the highest
/// ancestor that is one of `roots` (a program that runs `system("cr_checkpoint $$")`: the shell
/// between it and us, if the shell did not exec us). They wait for us, so they are never saved;
/// the chain's topmost process is recorded instead as a child of that ancestor that exited with
/// status 0, which is how the saved program sees it once the checkpoint is over (BLCR saved the
/// waiting tool's parent half, whose `wait` then returned 0). Returns the chain and, when there
/// is such an ancestor, (the chain's topmost process, that ancestor).
fn requester_chain(roots: &[i32]) -> (std::collections::HashSet<i32>, Option<(i32, i32)>) {
    let me = std::process::id() as i32;
    let mut line = vec![me];
    let mut up = parent(me);
    while up > 1 && !line.contains(&up) {
        line.push(up);
        up = parent(up);
    }
    match (1..line.len()).rev().find(|&k| roots.contains(&line[k])) {
        Some(k) => (
            line[..k].iter().copied().collect(),
            Some((line[k - 1], line[k])),
        ),
        None => ([me].into_iter().collect(), None),
    }
}

/// `pids` with every waiting cr_restart replaced by the processes it restored (its children, or
/// those of the init of its pid namespace).
fn past_restarters(pids: Vec<i32>) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo: Vec<i32> = pids.into_iter().rev().collect();
    while let Some(p) = todo.pop() {
        if is_waiting_restarter(p) {
            todo.extend(children(p).into_iter().rev());
        } else if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The processes to checkpoint, parents before children, and the scope (`CR_SCOPE_*`):
/// `-p` the process; `-T` (default) the process and its descendants; `-g`/`-s` every process
/// of the group or session and their descendants. cr_checkpoint itself and the processes
/// waiting for it (the requester chain) are never among them, zombies are left out (and
/// returned, for a warning once the checkpoint goes ahead), and the ptrace rules are applied to
/// each.
fn resolve_scope(m: &clap::ArgMatches, a: &Args) -> Scope {
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
    let me = std::process::id() as i32;
    let roots: Vec<i32> = match scope {
        CR_SCOPE_PGRP | CR_SCOPE_SESS => {
            let (field, what) = if scope == CR_SCOPE_PGRP {
                (5, "process group")
            } else {
                (6, "session")
            };
            // A waiting cr_restart is no part of the program it restored (its restored children
            // are); one still restoring a process (a child of cr_restart) is.
            let procs: Vec<i32> = members(field, id)
                .into_iter()
                .filter(|&p| p != me)
                .filter(|&p| !is_waiting_restarter(p))
                .collect();
            if procs.is_empty() {
                fail(TOOL, libc::ESRCH, &format!("no process in {what} {id}"));
            }
            procs
        }
        _ => {
            check_signalable(id);
            vec![id]
        }
    };
    let (chain, requester) = requester_chain(&past_restarters(roots.clone()));
    if scope == CR_SCOPE_PROC {
        check_ptrace(m, id);
        return Scope {
            pids: vec![id],
            scope,
            zombies: Vec::new(),
            requester,
        };
    }
    // The members and all their descendants, once each. The requester chain (a program that
    // runs `system("cr_checkpoint $$")`: the shell waiting for us, and we) stays out.
    let ancestors = ourselves();
    let mut seen = std::collections::HashSet::new();
    let mut all = Vec::new();
    let mut stack: Vec<i32> = roots.iter().rev().copied().collect();
    while let Some(p) = stack.pop() {
        let waits_for_us = chain.contains(&p) || (ancestors.contains(&p) && !roots.contains(&p));
        if p == me || waits_for_us || !seen.insert(p) {
            continue;
        }
        if is_waiting_restarter(p) {
            stack.extend(children(p).into_iter().rev());
            continue;
        }
        all.push(p);
        stack.extend(children(p).into_iter().rev());
    }
    let mut zombies = Vec::new();
    all.retain(|&p| match state_of(p) {
        Some('Z') | Some('X') => {
            zombies.push(p);
            false
        }
        // Gone since it was listed.
        None => false,
        _ => true,
    });
    if all.is_empty() {
        let why = if zombies.is_empty() {
            String::new()
        } else {
            format!(" (zombies: {zombies:?})")
        };
        fail(
            TOOL,
            libc::ESRCH,
            &format!("no process to checkpoint for id {id}{why}"),
        );
    }
    for &p in &all {
        check_signalable(p);
    }
    if all.len() == 1 {
        check_ptrace(m, all[0]);
    } else {
        let tracers = tracers();
        all.retain(|&p| match ptrace_rule(m, p, &tracers) {
            Ptrace::Ok => true,
            Ptrace::Skip(msg) => {
                if a.verbose > 0 && !a.quiet {
                    eprintln!("{TOOL}: {msg}");
                }
                false
            }
            Ptrace::Fail(e, msg) => fail(TOOL, e, &msg),
        });
        if all.is_empty() {
            fail(
                TOOL,
                libc::ESRCH,
                "every process was skipped (ptrace): nothing to checkpoint",
            );
        }
    }
    if all.len() > cr::image::tree::MAX_PROCS {
        fail(
            TOOL,
            libc::E2BIG,
            &format!(
                "{} processes to checkpoint; one checkpoint holds at most {}",
                all.len(),
                cr::image::tree::MAX_PROCS
            ),
        );
    }
    Scope {
        pids: parents_first(&all),
        scope,
        zombies,
        requester,
    }
}

/// Pid → the pid of its tracer, for every traced process.
fn tracers() -> std::collections::HashMap<i32, i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .map(|p| (p, tracer_of(p)))
        .filter(|&(_, t)| t != 0)
        .collect()
}

/// `procs` ordered breadth first from the roots (members whose parent is not a member), roots and
/// siblings by pid.
fn parents_first(procs: &[i32]) -> Vec<i32> {
    use std::collections::{HashSet, VecDeque};
    let set: HashSet<i32> = procs.iter().copied().collect();
    let mut sorted = procs.to_vec();
    sorted.sort_unstable();
    let mut queue: VecDeque<i32> = sorted
        .iter()
        .copied()
        .filter(|&p| !set.contains(&parent(p)))
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(procs.len());
    while let Some(p) = queue.pop_front() {
        if !seen.insert(p) {
            continue;
        }
        out.push(p);
        let mut kids: Vec<i32> = children(p)
            .into_iter()
            .filter(|k| set.contains(k) && !seen.contains(k))
            .collect();
        kids.sort_unstable();
        queue.extend(kids);
    }
    // Processes reparented while we looked (no root reaches them): last, by pid.
    out.extend(sorted.into_iter().filter(|p| !seen.contains(p)));
    out
}

/// What BLCR's ptrace rules say about one process.
enum Ptrace {
    Ok,
    /// Leave it out (--ptraced-skip, --ptracer-skip); the message says why.
    Skip(String),
    /// Fail with this errno and message.
    Fail(i32, String),
}

/// BLCR's ptrace rules: a ptraced process fails with CR_EPTRACED unless allowed or skipped; a
/// process that ptraces others fails with CR_EPTRACER unless skipped.
fn ptrace_rule(
    m: &clap::ArgMatches,
    pid: i32,
    tracers: &std::collections::HashMap<i32, i32>,
) -> Ptrace {
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
    if tracers.contains_key(&pid) {
        match traced {
            1 => {}
            2 => return Ptrace::Skip(format!("process {pid} is ptraced and was skipped")),
            _ => {
                return Ptrace::Fail(
                    2360,
                    format!(
                        "process {pid} is being ptraced (use --ptraced-allow or --ptraced-skip)"
                    ),
                )
            }
        }
    }
    if tracers.values().any(|&t| t == pid) {
        if tracer_skip {
            return Ptrace::Skip(format!("process {pid} ptraces others and was skipped"));
        }
        return Ptrace::Fail(
            2361,
            format!("process {pid} ptraces other processes (use --ptracer-skip)"),
        );
    }
    Ptrace::Ok
}

/// The ptrace rules for a checkpoint of one process: skipping it leaves nothing to checkpoint
/// (ESRCH, exit 3).
fn check_ptrace(m: &clap::ArgMatches, pid: i32) {
    match ptrace_rule(m, pid, &tracers()) {
        Ptrace::Ok => {}
        Ptrace::Skip(msg) => fail(TOOL, libc::ESRCH, &format!("{msg}: nothing to checkpoint")),
        Ptrace::Fail(e, msg) => fail(TOOL, e, &msg),
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

/// One file or stream the images go to.
struct Out {
    /// Descriptor the manifest and the images are written through.
    fd: i32,
    /// The file we created, for a file destination.
    file: Option<std::fs::File>,
    /// The name written now (removed if the checkpoint fails) …
    tmp: Option<PathBuf>,
    /// … and the final name it is committed to, by `commit`.
    path: Option<PathBuf>,
    commit: Commit,
    /// For messages.
    what: String,
}

/// Creates the file (its temporary name, unless --clobber) of a destination.
fn open_out(dest: &Dest) -> Result<Out, (i32, String)> {
    match dest {
        Dest::Stream { fd, what } => Ok(Out {
            fd: *fd,
            file: None,
            tmp: None,
            path: None,
            commit: Commit::Clobber,
            what: what.clone(),
        }),
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
                .map_err(|e| {
                    (
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("cannot create {}: {e}", tmp.display()),
                    )
                })?;
            Ok(Out {
                fd: f.as_raw_fd(),
                file: Some(f),
                tmp: Some(tmp),
                path: Some(path.clone()),
                commit: commit.clone(),
                what: path.display().to_string(),
            })
        }
    }
}

impl Out {
    /// Removes the partial file (a failed checkpoint).
    fn discard(&mut self) {
        if let Some(t) = self.tmp.take() {
            let _ = std::fs::remove_file(t);
        }
    }

    /// Makes the complete image durable (unless `!sync`).
    fn sync(&self, sync: bool) -> std::io::Result<()> {
        match &self.file {
            Some(f) if sync => f.sync_all(),
            _ => Ok(()),
        }
    }

    /// Moves an existing file aside (--backup) and renames the new one into place.
    fn rename(&mut self) -> std::io::Result<()> {
        let (Some(tmp), Some(path)) = (&self.tmp, &self.path) else {
            return Ok(());
        };
        if let Commit::Backup(name) = &self.commit {
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
        self.tmp = None;
        Ok(())
    }

    /// Syncs the directory of the committed file.
    fn sync_dir(&self, sync: bool) {
        if let (true, Some(path)) = (sync, &self.path) {
            fsync_dir(
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            );
        }
    }
}

/// The checkpoint request for `target` writing to `out`.
fn request(m: &clap::ArgMatches, a: &Args, scope: i32, out: &Out) -> Request {
    let mut req = Request::new(protocol::REQ_CHECKPOINT);
    req.flags = save_flags(m);
    req.timeout_ms = a.time.map_or(0, |s| s.saturating_mul(1000));
    req.requester = std::process::id() as i32;
    req.target = a.id;
    req.scope = scope;
    // For cr_get_checkpoint_info() (we send it ourselves; an agent passes it on only to the
    // processes its callbacks forwarded the checkpoint to).
    req.signal = chosen_signal(m, a);
    if let Some(p) = &out.path {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        req.set_dest(abs.as_os_str().as_encoded_bytes());
    }
    req
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
    let found = resolve_scope(&matches, &args);
    let (pids, scope) = (&found.pids, found.scope);
    // Zombies are reported once every process to checkpoint has been found to have an agent.
    let warn_zombies = || {
        if !args.quiet {
            for z in &found.zombies {
                eprintln!("{TOOL}: warning: process {z} is a zombie; skipped");
            }
        }
    };
    // Tree, group and session scopes take the multi-process path even when they find one
    // process: children forked while it stops join the cut, and unreaped children are saved as
    // zombies (a single process still gets a plain image).
    if let ([pid], cr::api::types::CR_SCOPE_PROC) = (&pids[..], scope) {
        let pid = *pid;
        let chain = found
            .requester
            .filter(|&(_, parent)| parent == pid)
            .map(|(top, _)| top);
        checkpoint_one(&matches, &args, pid, scope, signal, chain, warn_zombies);
    } else {
        // Zombies whose parents are saved are saved as zombies (warned about then).
        checkpoint_many(&matches, &args, pids, scope, signal, found.requester);
    }
}

/// The zombie record of the requester chain's topmost process `top`, a child of the saved
/// process `parent`: a child that exited with status 0 (see [`requester_chain`]).
fn requester_zombie(args: &Args, top: i32, parent: i32) -> cr::image::tree::ZombieRec {
    if args.verbose > 0 && !args.quiet {
        eprintln!(
            "{TOOL}: process {top} ({}), which runs this checkpoint for process {parent}, is saved as a child of it that exited with status 0",
            comm(top)
        );
    }
    cr::image::tree::ZombieRec {
        pid: protocol::target_identity(top).1,
        ppid: protocol::target_identity(parent).1,
        status: 0,
        flags: cr::image::tree::ZOMBIE_SIGCHLD_DUE,
    }
}

/// The image warnings of every process in the file at `path` ("process PID: " before each when
/// there are several).
fn print_warnings(path: &Path) {
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    let Ok((_, images)) = cr::image::tree::open_all(&f) else {
        return;
    };
    for img in &images {
        for w in &img.warnings {
            if images.len() > 1 {
                eprintln!("{TOOL}: warning: process {}: {w}", img.header.pid);
            } else {
                eprintln!("{TOOL}: warning: {w}");
            }
        }
    }
}

/// Checkpoint of one process: a plain image, or, when the process is the one that runs us and
/// waits for `chain` (see [`requester_chain`]), a one-process tree image whose zombie table
/// holds `chain`.
fn checkpoint_one(
    m: &clap::ArgMatches,
    args: &Args,
    pid: i32,
    scope: i32,
    signal: i32,
    chain: Option<i32>,
    warn_zombies: impl FnOnce(),
) {
    let dest = resolve_dest(m, args, pid);
    let sync = last_given(m, &[("sync", true), ("nosync", false)], true);
    let sock = connect(pid);
    warn_zombies();
    // A stopped process cannot take part: continue it for the checkpoint and stop it again
    // afterwards (BLCR: SIGSTOP after the checkpoint if the process was stopped), unless another
    // signal was asked for.
    let was_stopped = state_of(pid) == Some('T');
    if was_stopped {
        // SAFETY: continuing the target; it is stopped again below.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    let signal = if was_stopped && signal == 0 && !matches_given(m, "cont") {
        libc::SIGSTOP
    } else {
        signal
    };
    let mut out = open_out(&dest).unwrap_or_else(|(e, msg)| fail(TOOL, e, &msg));
    let req = request(m, args, scope, &out);
    let tmp = out.tmp.clone();
    let cleanup = |errno: i32, msg: String| -> ! {
        if let Some(t) = &tmp {
            let _ = std::fs::remove_file(t);
        }
        fail(TOOL, errno, &msg)
    };
    if let Some(top) = chain {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let inner = protocol::target_identity(pid).1;
        let zombie = requester_zombie(args, top, pid);
        let bytes = cr::image::tree::manifest_bytes(&[inner], &[], &[zombie], scope, (0, 1), now);
        if let Err(e) = write_aligned(out.fd, &bytes) {
            cleanup(e, format!("cannot write to {}: {}", out.what, strerror(e)));
        }
    }
    if let Err(e) = protocol::send(sock, &req, Some(out.fd)) {
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
    if let Err(e) = out.sync(sync).and_then(|_| out.rename()) {
        let _ = protocol::send(sock, &release, None);
        let path = out.what.clone();
        out.discard();
        fail(
            TOOL,
            e.raw_os_error().unwrap_or(libc::EIO),
            &format!("cannot commit {path}: {e}"),
        );
    }
    out.sync_dir(sync);
    drop(out.file.take());
    if signal != 0 {
        // SAFETY: sending the requested post-checkpoint signal to the target, now that the image
        // is complete (and durable, unless --nosync).
        unsafe { libc::kill(pid, signal) };
    }
    let _ = protocol::send(sock, &release, None);
    if args.verbose > 0 && !args.quiet {
        eprintln!(
            "{TOOL}: process {pid} checkpointed to {} ({} bytes)",
            out.what, reply.bytes
        );
    }
    if !args.quiet {
        if let Some(path) = &out.path {
            print_warnings(path);
        }
    }
}

/// One process of a multi-process checkpoint.
struct Member {
    pid: i32,
    /// Its control socket.
    sock: i32,
    /// Index of its destination in `Job::outs`.
    out: usize,
    /// It was stopped (SIGSTOP) before: continued for the checkpoint, stopped again after.
    stopped: bool,
    /// It has our request (and must hear RELEASE if we give up).
    contacted: bool,
    /// Its callbacks or `cr_run --omit` left it out of the checkpoint.
    omitted: bool,
    /// Bytes of its image.
    bytes: u64,
}

/// A multi-process checkpoint in progress.
struct Job {
    members: Vec<Member>,
    outs: Vec<Out>,
    /// (scope, pid) pairs members' callbacks forwarded the checkpoint to
    /// (`cr_forward_checkpoint`), pids as our /proc names them.
    forwarded: Vec<(i32, i32)>,
}

impl Job {
    /// Gives up: every process we asked is released (those stopped before are stopped again),
    /// partial files are removed, and we exit with `errno`.
    fn abandon(&mut self, errno: i32, msg: &str) -> ! {
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
        fail(TOOL, errno, msg)
    }
}

/// Longest wait for every process to stop when no --time is given (below the agent's own limit
/// for the wait between its QUIESCED and our WRITE).
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(50);

/// The next message on `sock`, waiting until `deadline` (`None`: as long as it takes).
/// `Ok(None)`: the deadline passed.
fn recv_by(
    sock: i32,
    deadline: Option<std::time::Instant>,
) -> Result<Option<protocol::Reply>, i32> {
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
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

/// Writes all of `bytes` (a page multiple) to `fd` from a page-aligned buffer, so that a
/// descriptor opened with O_DIRECT takes it too.
fn write_aligned(fd: i32, bytes: &[u8]) -> Result<(), i32> {
    let layout =
        std::alloc::Layout::from_size_align(bytes.len().max(1), 4096).map_err(|_| libc::EINVAL)?;
    // SAFETY: a non-zero-sized layout; the buffer is freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return Err(libc::ENOMEM);
    }
    // SAFETY: `buf` holds `bytes.len()` bytes.
    let aligned = unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len());
        std::slice::from_raw_parts(buf, bytes.len())
    };
    let mut done = 0;
    let mut res = Ok(());
    while done < aligned.len() {
        // SAFETY: writing from a valid buffer.
        let n = unsafe {
            libc::write(
                fd,
                aligned[done..].as_ptr() as *const _,
                aligned.len() - done,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if e == libc::EINTR {
                continue;
            }
            res = Err(e);
            break;
        }
        if n == 0 {
            res = Err(libc::EIO);
            break;
        }
        done += n as usize;
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    res
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
/// compared with kcmp within a group. Sockets and the image descriptors we passed (`out_fds`,
/// ours) are left out. Without kcmp: none (with a warning).
fn shared_descriptions(pids: &[i32], out_fds: &[i32], quiet: bool) -> Vec<ShareRec> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let me = std::process::id() as i32;
    let unavailable = |e: i32| -> Vec<ShareRec> {
        if !quiet {
            eprintln!(
                "{TOOL}: warning: cannot compare descriptors (kcmp: {}); descriptions shared between processes will be separate after a restart",
                strerror(e)
            );
        }
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
            if md.file_type().is_socket() {
                continue;
            }
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

/// Checkpoint of several processes as one consistent cut: every process is stopped before any
/// is written. One tree image (manifest, then the images), or with -d one file per process.
fn checkpoint_many(
    m: &clap::ArgMatches,
    args: &Args,
    pids: &[i32],
    scope: i32,
    signal: i32,
    requester: Option<(i32, i32)>,
) {
    let sync = last_given(m, &[("sync", true), ("nosync", false)], true);
    let per_proc = args.dir.is_some();
    // Every process must have an agent: fail before anything is stopped. Those that ended since
    // they were listed are left out.
    let first = pids[0];
    let (pids, socks): (Vec<i32>, Vec<i32>) = pids
        .iter()
        .filter_map(|&p| try_connect(p).map(|s| (p, s)))
        .unzip();
    if pids.is_empty() {
        fail(
            TOOL,
            libc::ESRCH,
            &format!("process {first} ended: nothing to checkpoint"),
        );
    }
    let dests: Vec<Dest> = if per_proc {
        pids.iter().map(|&p| resolve_dest(m, args, p)).collect()
    } else {
        vec![resolve_dest(m, args, first)]
    };
    let mut job = Job {
        members: Vec::new(),
        outs: Vec::new(),
        forwarded: Vec::new(),
    };
    for d in &dests {
        match open_out(d) {
            Ok(o) => job.outs.push(o),
            Err((e, msg)) => job.abandon(e, &msg),
        }
    }
    for (i, (&pid, &sock)) in pids.iter().zip(&socks).enumerate() {
        let stopped = state_of(pid) == Some('T');
        if stopped {
            // SAFETY: continuing a member for the checkpoint; it is stopped again afterwards.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        job.members.push(Member {
            pid,
            sock,
            out: if per_proc { i } else { 0 },
            stopped,
            contacted: false,
            omitted: false,
            bytes: 0,
        });
    }

    // 1. Ask everybody to stop; 2. wait until every process is stopped. Processes forked while
    // we did (their parents are stopped now, so the set cannot grow for ever) join the cut.
    let limit = args.time.map_or(STOP_WAIT, |s| {
        std::time::Duration::from_secs(u64::from(s) + 2)
    });
    let deadline = std::time::Instant::now() + limit;
    let mut from = 0;
    while from < job.members.len() {
        let to = job.members.len();
        stop_members(m, args, scope, &mut job, from..to, deadline, limit);
        from = to;
        let mut known = ourselves();
        known.extend(job.members.iter().map(|mb| mb.pid));
        let forwarded: Vec<i32> = std::mem::take(&mut job.forwarded)
            .into_iter()
            .flat_map(|(scope, pid)| forward_scope(scope, pid))
            .collect();
        let mut newcomers: Vec<i32> = job
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
            if job.members.len() >= cr::image::tree::MAX_PROCS {
                job.abandon(libc::E2BIG, "too many processes to checkpoint");
            }
            let Some(sock) = try_connect(c) else { continue };
            let out = if per_proc {
                match open_out(&resolve_dest(m, args, c)) {
                    Ok(o) => {
                        job.outs.push(o);
                        job.outs.len() - 1
                    }
                    Err((e, msg)) => job.abandon(e, &msg),
                }
            } else {
                0
            };
            let stopped = state_of(c) == Some('T');
            if stopped {
                // SAFETY: continuing a member for the checkpoint; it is stopped again afterwards.
                unsafe { libc::kill(c, libc::SIGCONT) };
            }
            job.members.push(Member {
                pid: c,
                sock,
                out,
                stopped,
                contacted: false,
                omitted: false,
                bytes: 0,
            });
        }
    }
    let live: Vec<usize> = (0..job.members.len())
        .filter(|&i| !job.members[i].omitted)
        .collect();
    if live.is_empty() {
        job.abandon(
            libc::ESRCH,
            "every process was omitted: nothing to checkpoint",
        );
    }
    if per_proc {
        for mb in job.members.iter().filter(|mb| mb.omitted) {
            let o = &mut job.outs[mb.out];
            o.discard();
            o.path = None;
            o.file = None;
        }
    }

    // 3. Everything is stopped: record what the processes share, write the manifest(s), then
    // let each process write its image in turn.
    let live_pids: Vec<i32> = live.iter().map(|&i| job.members[i].pid).collect();
    let mut zombies = zombie_children(&live_pids, args.quiet);
    if let Some((top, parent)) = requester.filter(|(_, p)| live_pids.contains(p)) {
        zombies.push(requester_zombie(args, top, parent));
    }
    let tree = live.len() > 1 || !zombies.is_empty();
    let shares = if tree {
        let fds: Vec<i32> = job.outs.iter().map(|o| o.fd).collect();
        shared_descriptions(&live_pids, &fds, args.quiet)
    } else {
        Vec::new()
    };
    let inner: Vec<i32> = live_pids
        .iter()
        .map(|&p| protocol::target_identity(p).1)
        .collect();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut manifest_bytes = 0u64;
    if tree {
        let n = live.len() as u32;
        let heads: Vec<(usize, Vec<u8>)> = if per_proc {
            live.iter()
                .enumerate()
                .map(|(k, &i)| {
                    let bytes = cr::image::tree::manifest_bytes(
                        &inner,
                        &shares,
                        &zombies,
                        scope,
                        (k as u32, 1),
                        now,
                    );
                    (job.members[i].out, bytes)
                })
                .collect()
        } else {
            vec![(
                0,
                cr::image::tree::manifest_bytes(&inner, &shares, &zombies, scope, (0, n), now),
            )]
        };
        for (o, bytes) in heads {
            if let Err(e) = write_aligned(job.outs[o].fd, &bytes) {
                let what = job.outs[o].what.clone();
                job.abandon(e, &format!("cannot write to {what}: {}", strerror(e)));
            }
            manifest_bytes += bytes.len() as u64;
        }
    }
    for &i in &live {
        let (pid, sock) = (job.members[i].pid, job.members[i].sock);
        if let Err(e) = protocol::send(sock, &Request::new(protocol::REQ_WRITE), None) {
            job.abandon(
                e,
                &format!("cannot send the request to {pid}: {}", strerror(e)),
            );
        }
        let reply = loop {
            match recv_by(sock, None) {
                Ok(Some(r)) if r.status < 0 => {}
                Ok(Some(r)) => break r,
                _ => job.abandon(
                    libc::EIO,
                    &format!(
                        "process {pid} ended or closed its control socket during the checkpoint"
                    ),
                ),
            }
        };
        if reply.status != 0 {
            // It released itself; the others are released by abandon.
            job.members[i].omitted = true;
            job.abandon(
                reply.status,
                &format!(
                    "checkpoint of {pid} failed: {}: {}",
                    reply.message(),
                    strerror(reply.status)
                ),
            );
        }
        job.members[i].bytes = reply.bytes;
    }

    // 4. Commit: every file durable first, then renamed into place.
    for k in 0..job.outs.len() {
        if let Err(e) = job.outs[k].sync(sync) {
            let what = job.outs[k].what.clone();
            job.abandon(
                e.raw_os_error().unwrap_or(libc::EIO),
                &format!("cannot commit {what}: {e}"),
            );
        }
    }
    for k in 0..job.outs.len() {
        if let Err(e) = job.outs[k].rename() {
            let what = job.outs[k].what.clone();
            job.abandon(
                e.raw_os_error().unwrap_or(libc::EIO),
                &format!("cannot commit {what}: {e}"),
            );
        }
    }
    let mut dirs_synced = Vec::new();
    for o in &job.outs {
        let dir = o
            .path
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        if !dirs_synced.contains(&dir) {
            o.sync_dir(sync);
            dirs_synced.push(dir);
        }
    }
    for o in &mut job.outs {
        drop(o.file.take());
    }

    // 5. The post-checkpoint signal to every process, then release them all.
    for &i in &live {
        let mb = &job.members[i];
        let sig = if mb.stopped && signal == 0 && !matches_given(m, "cont") {
            libc::SIGSTOP
        } else {
            signal
        };
        if sig != 0 {
            // SAFETY: the requested post-checkpoint signal, now that every image is complete
            // (and durable, unless --nosync).
            unsafe { libc::kill(mb.pid, sig) };
        }
    }
    let release = Request::new(protocol::REQ_RELEASE);
    for &i in &live {
        let _ = protocol::send(job.members[i].sock, &release, None);
    }

    if args.verbose > 0 && !args.quiet {
        let mut total = manifest_bytes;
        for &i in &live {
            let mb = &job.members[i];
            total += mb.bytes;
            eprintln!(
                "{TOOL}: process {} checkpointed to {} ({} bytes)",
                mb.pid, job.outs[mb.out].what, mb.bytes
            );
        }
        let what = match &args.dir {
            Some(d) => d.display().to_string(),
            None => job.outs[0].what.clone(),
        };
        let n = live.len();
        let s = if n == 1 { "" } else { "es" };
        eprintln!("{TOOL}: {n} process{s} checkpointed to {what} ({total} bytes)");
    }
    if !args.quiet {
        for (k, o) in job.outs.iter().enumerate() {
            let Some(path) = &o.path else { continue };
            let Ok(f) = std::fs::File::open(path) else {
                continue;
            };
            let Ok((_, images)) = cr::image::tree::open_all(&f) else {
                continue;
            };
            let owners = live
                .iter()
                .map(|&i| &job.members[i])
                .filter(|mb| mb.out == k);
            for (mb, img) in owners.zip(&images) {
                for w in &img.warnings {
                    eprintln!("{TOOL}: warning: process {}: {w}", mb.pid);
                }
            }
        }
    }
}

/// The wait status of zombie `pid` (field 52 of /proc/PID/stat).
fn exit_status(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(49)?
        .parse()
        .ok()
}

/// Unreaped children (zombies) of the stopped processes `pids`: their parents may still collect
/// them, so they are saved as zombies (pid, parent, wait status) and re-created as such.
fn zombie_children(pids: &[i32], quiet: bool) -> Vec<cr::image::tree::ZombieRec> {
    let mut out = Vec::new();
    for &p in pids {
        for c in children(p) {
            if state_of(c) != Some('Z') {
                continue;
            }
            let Some(status) = exit_status(c) else {
                continue;
            };
            if !quiet {
                eprintln!("{TOOL}: warning: process {c} (a child of {p}) is a zombie; it is saved as one, for its parent to collect");
            }
            out.push(cr::image::tree::ZombieRec {
                pid: protocol::target_identity(c).1,
                ppid: protocol::target_identity(p).1,
                status,
                flags: 0,
            });
        }
    }
    out
}

/// The pid of `inner` (a pid in the pid namespace of `member`) as our /proc names it.
fn outer_pid(member: i32, inner: i32) -> Option<i32> {
    let (ns, _) = protocol::target_identity(member);
    let (own, _) = protocol::own_identity();
    if ns == own {
        return Some(inner);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&p| protocol::target_identity(p) == (ns, inner))
}

/// The processes of a forwarded scope: the process, its group or session, with descendants.
fn forward_scope(scope: i32, pid: i32) -> Vec<i32> {
    use cr::api::types::{CR_SCOPE_PGRP, CR_SCOPE_PROC, CR_SCOPE_SESS};
    let roots = match scope {
        CR_SCOPE_PGRP => members(5, pid),
        CR_SCOPE_SESS => members(6, pid),
        _ => vec![pid],
    };
    if scope == CR_SCOPE_PROC {
        return roots;
    }
    let mut out = Vec::new();
    let mut stack = roots;
    while let Some(p) = stack.pop() {
        if !out.contains(&p) {
            out.push(p);
            stack.extend(children(p));
        }
    }
    out
}

/// How often a member that keeps exec'ing during the stop is asked again.
const EXEC_RETRIES: u32 = 20;

/// Connects again to member `i` (after an exec) and resends the barrier request; false when it
/// ended meanwhile (then it is left out).
fn ask_again(m: &clap::ArgMatches, args: &Args, scope: i32, job: &mut Job, i: usize) -> bool {
    let pid = job.members[i].pid;
    // SAFETY: closing our socket to the old image's agent.
    unsafe { libc::close(job.members[i].sock) };
    let Some(sock) = try_connect(pid) else {
        job.members[i].omitted = true;
        job.members[i].contacted = false;
        return false;
    };
    job.members[i].sock = sock;
    let out = &job.outs[job.members[i].out];
    let mut req = request(m, args, scope, out);
    req.flags |= protocol::FLAG_BARRIER;
    match protocol::send(sock, &req, Some(out.fd)) {
        Ok(()) => {
            job.members[i].contacted = true;
            true
        }
        Err(_) if ended(pid) => {
            job.members[i].omitted = true;
            job.members[i].contacted = false;
            false
        }
        Err(e) => job.abandon(
            e,
            &format!("cannot send the request to {pid}: {}", strerror(e)),
        ),
    }
}

/// Sends the barrier request to members `range` and waits until each is stopped (or omitted).
fn stop_members(
    m: &clap::ArgMatches,
    args: &Args,
    scope: i32,
    job: &mut Job,
    range: std::ops::Range<usize>,
    deadline: std::time::Instant,
    limit: std::time::Duration,
) {
    // 1. Ask everybody to stop.
    for i in range.clone() {
        let (pid, sock) = (job.members[i].pid, job.members[i].sock);
        let out = &job.outs[job.members[i].out];
        let mut req = request(m, args, scope, out);
        req.flags |= protocol::FLAG_BARRIER;
        match protocol::send(sock, &req, Some(out.fd)) {
            Ok(()) => job.members[i].contacted = true,
            // It exited since we connected: not part of the cut.
            Err(_) if ended(pid) => job.members[i].omitted = true,
            // It exec'd since we connected: its new image's agent is asked below.
            Err(_) => {}
        }
    }
    for i in range.clone() {
        let pid = job.members[i].pid;
        if job.members[i].omitted {
            continue;
        }
        let mut attempts = 0;
        if !job.members[i].contacted && !ask_again(m, args, scope, job, i) {
            continue;
        }
        loop {
            let sock = job.members[i].sock;
            match recv_by(sock, Some(deadline)) {
                Ok(Some(r)) if r.status == protocol::STATUS_ACCEPTED => {}
                Ok(Some(r)) if r.status == protocol::STATUS_QUIESCED => {
                    // "fwd S:P ...": its callbacks forwarded the checkpoint to more processes.
                    let msg = r.message();
                    if let Some(list) = msg.strip_prefix("fwd") {
                        for item in list.split_whitespace() {
                            let Some((s, p)) = item.split_once(':') else {
                                continue;
                            };
                            if let (Ok(s), Ok(p)) = (s.parse::<i32>(), p.parse::<i32>()) {
                                let p = outer_pid(pid, p).unwrap_or(p);
                                job.forwarded.push((s, p));
                            }
                        }
                    }
                    break;
                }
                Ok(Some(r)) if r.status == libc::ESRCH => {
                    // Omitted (cr_run --omit, or a callback's CR_CHECKPOINT_OMIT): left out.
                    if args.verbose > 0 && !args.quiet {
                        eprintln!("{TOOL}: process {pid} was omitted from the checkpoint");
                    }
                    job.members[i].omitted = true;
                    break;
                }
                Ok(Some(r)) => {
                    let e = if r.status > 0 { r.status } else { libc::EPROTO };
                    job.abandon(
                        e,
                        &format!(
                            "checkpoint of {pid} failed: {}: {}",
                            r.message(),
                            strerror(e)
                        ),
                    );
                }
                Ok(None) => job.abandon(
                    libc::ETIMEDOUT,
                    &format!(
                        "process {pid} did not stop for the checkpoint within {} s",
                        limit.as_secs()
                    ),
                ),
                // It exited before it stopped: not part of the cut (if its parent is, it is
                // saved as the zombie it is now).
                Err(_) if ended(pid) => {
                    job.members[i].omitted = true;
                    break;
                }
                // It exec'd before it stopped (the old image's socket closed): ask the new
                // image's agent.
                Err(_) if attempts < EXEC_RETRIES => {
                    attempts += 1;
                    if !ask_again(m, args, scope, job, i) {
                        break;
                    }
                }
                Err(_) => job.abandon(
                    libc::EIO,
                    &format!(
                        "process {pid} ended or closed its control socket during the checkpoint"
                    ),
                ),
            }
        }
    }
}
