//! `cr_restart FILE`: restores the program in a child, forwards signals to it, and exits as it does.

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use cr::image::reader::Image;
use cr::tool::fail;
use std::io::Read;
use std::os::unix::io::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

cr::tool_marker!();

const TOOL: &str = "cr_restart";

#[derive(Parser, Debug)]
#[command(
    name = "cr_restart",
    version,
    disable_version_flag = true,
    about = "Restart a process from a checkpoint image",
    after_help = "Exit status: the restored program's (or death by the same signal); on failure errno & 0xff (2 missing file, 16 pid in use, 22 corrupt image, 116 a mapped file changed), or the exit code of a --run-on-* hook."
)]
struct Args {
    /// The image to restart from.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file_opt: Option<PathBuf>,
    /// Read the image from an open descriptor.
    #[arg(short = 'F', long = "fd", value_name = "FD")]
    fd: Option<i32>,
    /// Restart every image in DIR as one job.
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The image to restart from.
    file: Option<PathBuf>,
    /// After restarting, send no signal (default).
    #[arg(long, action = ArgAction::SetTrue)]
    run: bool,
    /// After restarting, send signal NUM to the restored process.
    #[arg(short = 'S', long = "signal", value_name = "NUM")]
    signal: Option<i32>,
    /// After restarting, stop the restored process (SIGSTOP).
    #[arg(long, visible_alias = "freeze", action = ArgAction::SetTrue)]
    stop: bool,
    /// After restarting, send SIGTERM.
    #[arg(long, action = ArgAction::SetTrue)]
    term: bool,
    /// After restarting, send SIGABRT.
    #[arg(long, action = ArgAction::SetTrue)]
    abort: bool,
    /// After restarting, send SIGKILL.
    #[arg(long, action = ArgAction::SetTrue)]
    kill: bool,
    /// After restarting, send SIGCONT.
    #[arg(long, action = ArgAction::SetTrue)]
    cont: bool,
    /// Later checkpoints of the restored job may omit cr_restart (default).
    #[arg(long = "omit-maybe", action = ArgAction::SetTrue)]
    omit_maybe: bool,
    /// Later checkpoints of the restored job always omit cr_restart.
    #[arg(long = "omit-always", action = ArgAction::SetTrue)]
    omit_always: bool,
    /// Later checkpoints of the restored job never omit cr_restart.
    #[arg(long = "omit-never", action = ArgAction::SetTrue)]
    omit_never: bool,
    /// Command run (with sh -c) once the restart succeeded; its non-zero exit becomes ours.
    #[arg(long = "run-on-success", value_name = "CMD")]
    on_success: Option<String>,
    /// Command run when the arguments or the image file are unusable.
    #[arg(long = "run-on-fail-args", value_name = "CMD")]
    on_fail_args: Option<String>,
    /// Command run on a temporary failure (ENOMEM, EBUSY: e.g. a pid in use).
    #[arg(long = "run-on-fail-temp", value_name = "CMD")]
    on_fail_temp: Option<String>,
    /// Command run when the environment is unsuitable (missing or changed files, permissions).
    #[arg(long = "run-on-fail-env", value_name = "CMD")]
    on_fail_env: Option<String>,
    /// Command run on a permanent failure (corrupt or incompatible image, ...).
    #[arg(long = "run-on-fail-perm", value_name = "CMD")]
    on_fail_perm: Option<String>,
    /// Sets all four --run-on-fail-* commands.
    #[arg(long = "run-on-failure", value_name = "CMD")]
    on_failure: Option<String>,
    /// Replace the path prefix OLD by NEW in the image's files and directories (up to 16).
    #[arg(long = "relocate", value_name = "OLD=NEW")]
    relocate: Vec<String>,
    /// Restore the original pids and thread ids (BLCR's default; not available yet).
    #[arg(long = "restore-pid", action = ArgAction::SetTrue)]
    restore_pid: bool,
    /// Give the restored process a fresh pid (the current default).
    #[arg(long = "no-restore-pid", action = ArgAction::SetTrue)]
    no_restore_pid: bool,
    /// Restore the process group id (not available yet).
    #[arg(long = "restore-pgid", action = ArgAction::SetTrue)]
    restore_pgid: bool,
    /// Join cr_restart's process group (default).
    #[arg(long = "no-restore-pgid", action = ArgAction::SetTrue)]
    no_restore_pgid: bool,
    /// Restore the session id (not available yet).
    #[arg(long = "restore-sid", action = ArgAction::SetTrue)]
    restore_sid: bool,
    /// Join cr_restart's session (default).
    #[arg(long = "no-restore-sid", action = ArgAction::SetTrue)]
    no_restore_sid: bool,
    /// Print nothing but errors.
    #[arg(short = 'q', long = "quiet", action = ArgAction::SetTrue)]
    quiet: bool,
    /// Print the version (BLCR: -v).
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: Option<bool>,
}

/// BLCR's classes of restart failure, each with its own `--run-on-fail-*` hook.
#[derive(Clone, Copy)]
enum Class {
    Args,
    Temp,
    Env,
    Perm,
}

fn classify(errno: i32) -> Class {
    match errno {
        libc::ENOMEM | libc::EBUSY => Class::Temp,
        libc::EACCES
        | libc::EPERM
        | libc::ENOENT
        | libc::EEXIST
        | libc::EISDIR
        | libc::ENOTDIR
        | libc::ESTALE => Class::Env,
        _ => Class::Perm,
    }
}

/// Runs a hook command with `sh -c`; returns its exit code (a signal counts as 128+N).
fn run_hook(cmd: &str) -> i32 {
    match std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .status()
    {
        Ok(st) => st.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
        }),
        Err(_) => 127,
    }
}

/// The restart failed: run the class's hook (its non-zero code replaces ours and the message).
fn failed(args: &Args, class: Class, errno: i32, msg: &str) -> ! {
    // With -d, images restored before the failing one must not live on alone.
    for c in &CHILDREN {
        let child = c.load(Ordering::Relaxed);
        if child > 0 {
            // SAFETY: killing a restored child of ours.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
    }
    let hook = match class {
        Class::Args => &args.on_fail_args,
        Class::Temp => &args.on_fail_temp,
        Class::Env => &args.on_fail_env,
        Class::Perm => &args.on_fail_perm,
    }
    .as_ref()
    .or(args.on_failure.as_ref());
    if let Some(cmd) = hook {
        let code = run_hook(cmd);
        if code != 0 {
            std::process::exit(code & 0xff);
        }
    }
    fail(TOOL, errno, msg)
}

/// `--run-on-failure` sets all four failure hooks where it stands on the command line: a
/// specific `--run-on-fail-*` given before it is replaced, one given after it wins.
fn order_failure_hooks(m: &clap::ArgMatches, a: &mut Args) {
    let last = |id: &str| m.indices_of(id).and_then(|mut i| i.next_back());
    let Some(all_at) = last("on_failure") else {
        return;
    };
    let all = a.on_failure.clone();
    for (id, hook) in [
        ("on_fail_args", &mut a.on_fail_args),
        ("on_fail_temp", &mut a.on_fail_temp),
        ("on_fail_env", &mut a.on_fail_env),
        ("on_fail_perm", &mut a.on_fail_perm),
    ] {
        if last(id).is_none_or(|at| at < all_at) {
            hook.clone_from(&all);
        }
    }
}

/// The post-restart signal: the last of --run/--signal/--stop/--term/--abort/--kill/--cont.
fn chosen_signal(m: &clap::ArgMatches, a: &Args) -> i32 {
    let opts = [
        ("run", 0),
        ("signal", a.signal.unwrap_or(0)),
        ("stop", libc::SIGSTOP),
        ("term", libc::SIGTERM),
        ("abort", libc::SIGABRT),
        ("kill", libc::SIGKILL),
        ("cont", libc::SIGCONT),
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

/// The restored processes (children), for signal forwarding.
static CHILDREN: [AtomicI32; MAX_JOB] = [const { AtomicI32::new(0) }; MAX_JOB];
/// Most images `-d DIR` restarts as one job.
const MAX_JOB: usize = 64;

extern "C" fn forward(sig: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo.
    let code = unsafe { (*info).si_code };
    let fault = matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
    ) && code > 0;
    if fault {
        return;
    }
    for c in &CHILDREN {
        let child = c.load(Ordering::Relaxed);
        if child > 0 {
            // SAFETY: kill is async-signal-safe.
            unsafe { libc::kill(child, sig) };
        }
    }
}

fn install_forwarding() {
    for sig in 1..=31 {
        if matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD) {
            continue;
        }
        // SAFETY: installing a SA_SIGINFO handler with a valid sigaction struct.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = forward as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// Exits the way the restored program did: same exit code, or death by the same signal.
fn mimic(status: i32) -> ! {
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let sig = libc::WTERMSIG(status);
    // SAFETY: resetting our own disposition and limits, then raising the signal on ourselves.
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
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

fn wait_child(pid: i32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            fail(TOOL, libc::ECHILD, "lost track of the restored process");
        }
    }
}

fn main() {
    let parsed = Args::command()
        .try_get_matches()
        .and_then(|m| Args::from_arg_matches(&m).map(|a| (m, a)));
    let (matches, mut args) = parsed.unwrap_or_else(|e| {
        // Bad arguments are the fail-args class (BLCR): its hook's code replaces clap's exit.
        let wants_output = matches!(
            e.kind(),
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
        );
        if !wants_output {
            if let Some(cmd) = fail_args_hook_from_argv() {
                let code = run_hook(&cmd);
                if code != 0 {
                    std::process::exit(code & 0xff);
                }
            }
        }
        e.exit()
    });
    order_failure_hooks(&matches, &mut args);
    let signal = chosen_signal(&matches, &args);
    if args.restore_pid || args.restore_pgid || args.restore_sid {
        failed(
            &args,
            Class::Perm,
            libc::ENOSYS,
            "restoring the original pid, pgid or sid is not available yet (use --no-restore-pid; \
             the restored process gets a fresh pid)",
        );
    }
    let pairs = cr::restore::relocate::parse_all(&args.relocate)
        .unwrap_or_else(|e| failed(&args, Class::Args, libc::EINVAL, &e));
    let images: Vec<(std::fs::File, PathBuf)> =
        match (&args.dir, &args.file_opt, &args.file, args.fd) {
            (Some(dir), None, None, None) => images_in(&args, dir),
            (Some(_), ..) => failed(
                &args,
                Class::Args,
                libc::EINVAL,
                "give exactly one image source: FILE, -f, -F or -d",
            ),
            _ => {
                let (file, path) = match (&args.file_opt, &args.file, args.fd) {
                    (Some(p), None, None) | (None, Some(p), None) => {
                        let f = std::fs::File::open(p).unwrap_or_else(|e| {
                            failed(
                                &args,
                                Class::Args,
                                e.raw_os_error().unwrap_or(libc::EIO),
                                &format!("{}: {e}", p.display()),
                            )
                        });
                        (f, p.clone())
                    }
                    (None, None, Some(fd)) if fd >= 0 => {
                        // SAFETY: duplicating the caller's descriptor; we own the copy.
                        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
                        if dup < 0 {
                            failed(
                                &args,
                                Class::Args,
                                libc::EBADF,
                                &format!("descriptor {fd} is not open"),
                            );
                        }
                        let link =
                            std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
                        // SAFETY: dup is ours.
                        (unsafe { std::fs::File::from_raw_fd(dup) }, link)
                    }
                    (None, None, None) => failed(
                        &args,
                        Class::Args,
                        libc::EINVAL,
                        "no image given (usage: cr_restart FILE)",
                    ),
                    _ => failed(
                        &args,
                        Class::Args,
                        libc::EINVAL,
                        "give exactly one image: FILE, -f FILE or -F FD",
                    ),
                };
                vec![(file, path)]
            }
        };
    let pids: Vec<i32> = images
        .into_iter()
        .zip(&CHILDREN)
        .map(|((file, path), slot)| {
            let pid = start(&args, &pairs, file, path);
            slot.store(pid, Ordering::Relaxed);
            pid
        })
        .collect();
    install_forwarding();
    for &pid in &pids {
        if signal != 0 {
            // SAFETY: signalling a restored process, our child.
            unsafe { libc::kill(pid, signal) };
        }
    }
    if let Some(cmd) = &args.on_success {
        let code = run_hook(cmd);
        if code != 0 {
            std::process::exit(code & 0xff); // BLCR: exit at once, without waiting for the job
        }
    }
    // Exit as the first (eldest) restored process did, once every one has ended.
    let statuses: Vec<i32> = pids.iter().map(|&p| wait_child(p)).collect();
    mimic(statuses[0])
}

/// Every image file in `dir` (sorted by name); files that are not images are skipped.
fn images_in(args: &Args, dir: &std::path::Path) -> Vec<(std::fs::File, PathBuf)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            failed(
                args,
                Class::Args,
                e.raw_os_error().unwrap_or(libc::EIO),
                &format!("{}: {e}", dir.display()),
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let images: Vec<_> = paths
        .into_iter()
        .filter_map(|p| {
            let f = std::fs::File::open(&p).ok()?;
            Image::open(&f).ok()?;
            Some((f, p))
        })
        .collect();
    if images.is_empty() {
        failed(
            args,
            Class::Args,
            libc::ENOENT,
            &format!("{}: no checkpoint images in this directory", dir.display()),
        );
    }
    if images.len() > MAX_JOB {
        failed(
            args,
            Class::Args,
            libc::E2BIG,
            &format!("{}: more than {MAX_JOB} images", dir.display()),
        );
    }
    images
}

/// Validates one image and restores it in a forked child; returns the child's pid once the
/// program runs again (any failure before that exits through the matching hook).
fn start(
    args: &Args,
    pairs: &[cr::restore::relocate::Pair],
    file: std::fs::File,
    path: PathBuf,
) -> i32 {
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        failed(
            args,
            Class::Args,
            libc::EISDIR,
            &format!("{}: is a directory, not an image", path.display()),
        );
    }
    let src = std::path::absolute(&path)
        .unwrap_or_else(|_| path.clone())
        .into_os_string()
        .into_encoded_bytes();
    let mut img = Image::open(&file).unwrap_or_else(|e| {
        let class = if matches!(e, cr::image::reader::ImageError::Io(_)) {
            Class::Args
        } else {
            Class::Perm
        };
        failed(args, class, e.errno(), &format!("{}: {e}", path.display()))
    });
    cr::restore::relocate::relocate(&mut img, pairs);
    if let Err(e) = cr::restore::preflight(&img) {
        failed(
            args,
            classify(e.errno),
            e.errno,
            &format!("restart failed: {e}"),
        );
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        failed(args, Class::Temp, libc::EMFILE, "cannot create a pipe");
    }
    let me = std::process::id() as i32;
    // SAFETY: fork in a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        failed(args, Class::Temp, libc::EAGAIN, "cannot fork");
    }
    if pid == 0 {
        // SAFETY: closing the read end in the child.
        unsafe { libc::close(fds[0]) };
        let err = match cr::restore::run(&img, file, fds[1], me, &src) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        // run() already reported the error to the parent through the pipe.
        // SAFETY: leaving the child without running atexit handlers.
        unsafe { libc::_exit(err.errno & 0xff) }
    }
    drop(file);
    // SAFETY: closing our copy of the write end; the read end becomes a File.
    let mut notify = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut msg = Vec::new();
    let _ = notify.read_to_end(&mut msg);
    if msg.first() != Some(&b'R') {
        let status = wait_child(pid);
        let report = cr::restore::parse_report(&msg);
        let why = if let Some((_, text)) = &report {
            text.clone()
        } else if libc::WIFSIGNALED(status) {
            format!(
                "the restored process died of signal {} during the restore",
                libc::WTERMSIG(status)
            )
        } else {
            format!(
                "the restored process exited with status {} during the restore",
                libc::WEXITSTATUS(status)
            )
        };
        let code = report.map_or(libc::EIO, |(errno, _)| errno);
        failed(
            args,
            classify(code),
            code,
            &format!("restart failed: {why}"),
        );
    }
    pid
}

/// The fail-args hook when clap rejected the arguments (so `Args` could not be built).
fn fail_args_hook_from_argv() -> Option<String> {
    let argv: Vec<String> = std::env::args().collect();
    let find = |name: &str| {
        argv.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("{name}="))
                .map(str::to_string)
                .or_else(|| (a == name).then(|| argv.get(i + 1).cloned()).flatten())
        })
    };
    find("--run-on-fail-args").or_else(|| find("--run-on-failure"))
}
