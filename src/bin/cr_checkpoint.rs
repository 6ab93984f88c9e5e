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
    about = "Checkpoint a running process to a file"
)]
struct Args {
    /// Write the image to FILE (default: context.PID in the current directory).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send SIGTERM to the process once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    term: bool,
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
    /// Store every mapped file by content, not by reference.
    #[arg(long = "save-all", action = ArgAction::SetTrue)]
    save_all: bool,
    /// Write the image directly into FILE (no temporary file and rename).
    #[arg(long, action = ArgAction::SetTrue)]
    clobber: bool,
    /// Give up if the process does not stop for the checkpoint within SEC seconds.
    #[arg(short = 't', long = "time", value_name = "SEC")]
    time: Option<u32>,
    /// Print nothing but errors.
    #[arg(short = 'q', long = "quiet", action = ArgAction::SetTrue)]
    quiet: bool,
    /// The process to checkpoint.
    pid: i32,
}

/// The post-checkpoint signal: the last of --term/--kill/--stop/--cont/--signal given wins.
fn chosen_signal(m: &clap::ArgMatches, a: &Args) -> i32 {
    let opts = [
        ("term", libc::SIGTERM),
        ("kill", libc::SIGKILL),
        ("stop", libc::SIGSTOP),
        ("cont", libc::SIGCONT),
        ("signal", a.signal.unwrap_or(0)),
    ];
    opts.iter()
        .filter(|(id, _)| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .filter_map(|(id, sig)| {
            m.indices_of(id)
                .and_then(|mut i| i.next_back())
                .map(|i| (i, *sig))
        })
        .max_by_key(|(i, _)| *i)
        .map_or(0, |(_, s)| s)
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

fn main() {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let pid = args.pid;
    let signal = chosen_signal(&matches, &args);
    if pid <= 0 {
        fail(TOOL, libc::EINVAL, &format!("invalid pid {pid}"));
    }
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
    let sock = connect(pid);

    let dest = args
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("context.{pid}")));
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = dest
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Atomic by default: write beside the destination, rename once complete.
    let tmp = if args.clobber {
        dest.clone()
    } else {
        dir.join(format!(".{base}.tmp"))
    };
    let file = OpenOptions::new()
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
    let flags = if args.save_all {
        protocol::FLAG_SAVE_ALL
    } else {
        0
    };
    let mut req = Request::new(protocol::REQ_CHECKPOINT);
    req.flags = flags;
    req.timeout_ms = args.time.map_or(0, |s| s.saturating_mul(1000));
    req.requester = std::process::id() as i32;
    req.target = pid;
    req.scope = cr::api::types::CR_SCOPE_TREE; // BLCR's default scope (trees: see the process-tree work)
    let abs_dest = std::path::absolute(&dest).unwrap_or_else(|_| dest.clone());
    req.set_dest(abs_dest.as_os_str().as_encoded_bytes());
    let cleanup = |errno: i32, msg: String| -> ! {
        let _ = std::fs::remove_file(&tmp);
        fail(TOOL, errno, &msg)
    };
    if let Err(e) = protocol::send(sock, &req, Some(file.as_raw_fd())) {
        cleanup(
            e,
            format!("cannot send the request to {pid}: {}", strerror(e)),
        );
    }
    let Ok(Some(reply)) = protocol::recv_reply(sock, 0) else {
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
    let commit = file.sync_all().and_then(|_| std::fs::rename(&tmp, &dest));
    drop(file);
    let release = Request::new(protocol::REQ_RELEASE);

    if let Err(e) = commit {
        let _ = protocol::send(sock, &release, None);
        cleanup(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot commit {}: {e}", dest.display()),
        );
    }
    fsync_dir(&dir);
    if signal != 0 {
        // SAFETY: sending the requested post-checkpoint signal to the target.
        unsafe { libc::kill(pid, signal) };
    }
    let _ = protocol::send(sock, &release, None);
    if !args.quiet {
        if let Ok(f) = std::fs::File::open(&dest) {
            if let Ok(img) = cr::image::reader::Image::open(&f) {
                for w in &img.warnings {
                    eprintln!("{TOOL}: warning: {w}");
                }
            }
        }
    }
}
