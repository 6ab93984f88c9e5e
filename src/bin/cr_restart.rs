//! `cr_restart FILE`: restores the program in a child, forwards signals to it, and exits as it does.

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
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
    /// The image to restart from ("-": standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file_opt: Option<PathBuf>,
    /// Read the image from an open descriptor (a file, or a pipe or socket: read to its end
    /// into memory first).
    #[arg(short = 'F', long = "fd", value_name = "FD")]
    fd: Option<i32>,
    /// Look up the parent chain of a delta image in DIR (each link by its file name) instead
    /// of beside the image: for a delta read from a stream, or a chain moved elsewhere.
    #[arg(long = "chain-dir", value_name = "DIR")]
    chain_dir: Option<PathBuf>,
    /// Restart every image in DIR as one job.
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The image to restart from ("-": standard input).
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
    /// Stop the restored processes before their callbacks run (BLCR: undocumented).
    #[arg(long = "early-stop", action = ArgAction::SetTrue)]
    early_stop: bool,
    /// Send SIGABRT to the restored processes before their callbacks run (BLCR: undocumented).
    #[arg(long = "early-abrt", action = ArgAction::SetTrue)]
    early_abrt: bool,
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
    /// Restore the original pids and thread ids (the default, as in BLCR).
    #[arg(long = "restore-pid", action = ArgAction::SetTrue)]
    restore_pid: bool,
    /// Give the restored processes fresh pids and thread ids.
    #[arg(long = "no-restore-pid", action = ArgAction::SetTrue)]
    no_restore_pid: bool,
    /// Restore the process group ids (also with fresh pids; ids in use: exit 16).
    #[arg(long = "restore-pgid", action = ArgAction::SetTrue)]
    restore_pgid: bool,
    /// Join cr_restart's process group (default).
    #[arg(long = "no-restore-pgid", action = ArgAction::SetTrue)]
    no_restore_pgid: bool,
    /// Restore the session ids (also with fresh pids; ids in use: exit 16).
    #[arg(long = "restore-sid", action = ArgAction::SetTrue)]
    restore_sid: bool,
    /// Join cr_restart's session (default).
    #[arg(long = "no-restore-sid", action = ArgAction::SetTrue)]
    no_restore_sid: bool,
    /// Print nothing but errors.
    #[arg(short = 'q', long = "quiet", action = ArgAction::SetTrue)]
    quiet: bool,
    /// One node's part of a job across nodes (docs/MPI.md): TCP connections whose other end
    /// is not in this restart are made again between their saved addresses (the peer's part
    /// restarted at the same time, with the same addresses) with the bytes that were waiting,
    /// within SEC seconds (default 30); else they come back reset.
    #[arg(long = "reconnect", value_name = "SEC", num_args = 0..=1, require_equals = true, default_missing_value = "30")]
    reconnect: Option<u64>,
    /// The job comes back on hosts with other addresses: OLD (an address of a host at the
    /// checkpoint) is now NEW. Sockets bound to OLD are bound to NEW, --reconnect connects
    /// between the new addresses, and the restored programs' connect/bind/accept/getpeername/
    /// getsockname calls translate (they keep seeing OLD). Give every pair to every node's
    /// restart. Repeatable.
    #[arg(long = "map-address", value_name = "OLD=NEW")]
    map_address: Vec<String>,
    /// Read all of the program's memory from the image and check its checksum before the
    /// program runs, instead of mapping it from the image file (faulted in as it is touched).
    #[arg(long = "eager", action = ArgAction::SetTrue)]
    eager: bool,
    /// With --eager: read memory that had transparent huge pages at the checkpoint into huge
    /// pages again (advised MADV_HUGEPAGE before it is read), so that a later --cow checkpoint
    /// stops the program for milliseconds. Off by default: where the kernel must compact memory
    /// to give huge pages the read is several times slower (the advice is then given after the
    /// read, for what the program maps later).
    #[arg(long = "huge-pages", action = ArgAction::SetTrue)]
    huge_pages: bool,
    /// Say how the page data is restored (mapped or read, and why) and how long it took.
    #[arg(long = "verbose", action = ArgAction::SetTrue)]
    verbose: bool,
    /// Print the version (BLCR: -v).
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: Option<bool>,
}

use cr::restore::job::{self, FailClass as Class, Job};

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
    for c in CHILDREN.iter().chain(&CREATED) {
        let child = c.load(Ordering::Relaxed);
        if child > 0 {
            // SAFETY: killing a restored child of ours.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
    }
    for c in &CHILDREN {
        let child = c.load(Ordering::Relaxed);
        if child > 0 {
            // SAFETY: reaping the child just killed (no zombie outlives us).
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
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

/// The post-restart signal: the last of --run/--signal/--stop/--term/--abort/--kill/--cont and
/// (negative) --early-stop/--early-abrt.
fn chosen_signal(m: &clap::ArgMatches, a: &Args) -> i32 {
    let opts = [
        ("run", 0),
        ("signal", a.signal.unwrap_or(0)),
        ("stop", libc::SIGSTOP),
        ("term", libc::SIGTERM),
        ("abort", libc::SIGABRT),
        ("kill", libc::SIGKILL),
        ("cont", libc::SIGCONT),
        // "Early" signals are negative, as in BLCR: sent before the callbacks run.
        ("early_stop", -libc::SIGSTOP),
        ("early_abrt", -libc::SIGABRT),
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
static CHILDREN: [AtomicI32; cr::image::tree::MAX_PROCS] =
    [const { AtomicI32::new(0) }; cr::image::tree::MAX_PROCS];

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
    for c in CHILDREN.iter().chain(&CREATED) {
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
    cr::restore::spawn::end_like(status)
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

/// When cr_restart started (for `--verbose`).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
/// Milliseconds from the start to: the images opened and checked (a delta's whole chain), the
/// first process reported created (for `--verbose`).
static LOADED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
static CREATED_AT: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Milliseconds since cr_restart started.
fn since_start() -> f64 {
    STARTED
        .get()
        .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3)
}

fn main() {
    let _ = STARTED.set(std::time::Instant::now());
    // Before anything is opened: the descriptors whoever started us gave us.
    cr::restore::fds::note_restarter_fds();
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
    let pairs = cr::restore::relocate::parse_all(&args.relocate)
        .unwrap_or_else(|e| failed(&args, Class::Args, libc::EINVAL, &e));
    let images: Vec<(std::fs::File, PathBuf)> =
        match (&args.dir, &args.file_opt, &args.file, args.fd) {
            (Some(dir), None, None, None) => {
                job::sources_in_dir(dir).unwrap_or_else(|e| failed(&args, e.class, e.errno, &e.msg))
            }
            (Some(_), ..) => failed(
                &args,
                Class::Args,
                libc::EINVAL,
                "give exactly one image source: FILE, -f, -F or -d",
            ),
            _ => {
                let stdin = |p: &PathBuf| p.as_os_str() == "-";
                let fd = match (&args.file_opt, &args.file, args.fd) {
                    (Some(p), None, None) | (None, Some(p), None) if stdin(p) => Some(0),
                    _ => args.fd,
                };
                let (file, path) = match (&args.file_opt, &args.file, fd) {
                    (Some(p), None, Some(0)) | (None, Some(p), Some(0)) if stdin(p) => {
                        // SAFETY: duplicating our standard input; we own the copy.
                        let dup = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
                        if dup < 0 {
                            failed(
                                &args,
                                Class::Args,
                                libc::EBADF,
                                "-: standard input is not open",
                            );
                        }
                        // SAFETY: dup is ours.
                        (unsafe { std::fs::File::from_raw_fd(dup) }, p.clone())
                    }
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
    if let Some(d) = &args.chain_dir {
        if !d.is_dir() {
            failed(
                &args,
                Class::Args,
                libc::ENOTDIR,
                &format!("--chain-dir {}: not a directory", d.display()),
            );
        }
    }
    let mut job = job::load_in(images, &pairs, args.chain_dir.as_deref())
        .unwrap_or_else(|e| failed(&args, e.class, e.errno, &e.msg));
    let _ = LOADED.set(since_start());
    job.reconnect = args.reconnect.map(std::time::Duration::from_secs);
    if !args.map_address.is_empty() {
        let pairs = args
            .map_address
            .iter()
            .map(|s| cr::restore::addrmap::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|p| cr::restore::addrmap::set(&p));
        if let Err(e) = pairs {
            failed(&args, Class::Args, libc::EINVAL, &e);
        }
        cr::restore::addrmap::set_verbose(args.verbose);
    }
    cr::restore::test_stop_at("loaded");
    if !args.quiet {
        for (pid, fd, what) in job.outside_fallbacks() {
            eprintln!(
                "{TOOL}: fd {fd} of process {pid} led outside the checkpoint and descriptor {fd} is not open here: it gets {what}"
            );
        }
    }
    let opts = cr::restore::spawn::Options {
        pids: !args.no_restore_pid || args.restore_pid,
        pgid: args.restore_pgid && !args.no_restore_pgid,
        sid: args.restore_sid && !args.no_restore_sid,
        early_signal: (-signal).max(0),
        quiet: args.quiet,
        eager: args.eager,
        huge_pages: args.huge_pages,
    };
    if args.verbose {
        for line in job.credentials_plan() {
            eprintln!("{TOOL}: {line}");
        }
        for line in job.page_data_plan(args.eager) {
            eprintln!("{TOOL}: {line}");
        }
    }
    // Page data read so far by the processes, counted in a page they share with us: a progress
    // bar on a terminal, the final figures under --verbose.
    let counted = cr::restore::memory::count_reads().map(|c| Counted {
        read: c,
        total: job.page_data_to_read(args.eager),
        bar: cr::progress::Bar::with_output(
            TOOL,
            !args.quiet && cr::progress::stderr_is_terminal(),
        ),
    });
    run_job(&args, &job, opts, signal.max(0), counted)
}

/// Page data read by the restore, for the progress bar and `--verbose`.
struct Counted {
    read: &'static std::sync::atomic::AtomicU64,
    total: u64,
    bar: cr::progress::Bar,
}

/// Every process created for the job (pids as cr_restart sees them), to kill on failure.
static CREATED: [AtomicI32; cr::image::tree::MAX_PROCS] =
    [const { AtomicI32::new(0) }; cr::image::tree::MAX_PROCS];

fn pipe() -> [i32; 2] {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 with a valid array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        fail(TOOL, libc::EMFILE, "cannot create a pipe");
    }
    p
}

/// Restores the job's processes, waits for them to run, then forwards signals and exits as the
/// eldest does.
fn run_job(
    args: &Args,
    job: &Job,
    opts: cr::restore::spawn::Options,
    signal: i32,
    mut counted: Option<Counted>,
) -> ! {
    use cr::restore::spawn;
    let members = job.members();
    // SAFETY: geteuid has no preconditions.
    let in_namespace = spawn::takes_ids(&opts) && unsafe { libc::geteuid() } != 0;
    if !in_namespace {
        if let Err(e) = spawn::check_ids_free(&members, &job.zombies, &opts) {
            failed(
                args,
                Class::Temp,
                e.errno,
                &format!("restart failed: {}", e.msg),
            );
        }
    }
    let notify = pipe();
    let status = pipe();
    let me = std::process::id() as i32;
    let top: Vec<i32> = if in_namespace {
        let init = spawn::enter_namespace(opts.quiet, 0).unwrap_or_else(|e| {
            failed(
                args,
                Class::of(e.errno),
                e.errno,
                &format!("restart failed: {}", e.msg),
            )
        });
        if init == 0 {
            job::namespace_init(
                &members,
                job,
                opts,
                notify[1],
                job::InitEnd::Report(status[1]),
                |roots| {
                    for (slot, &pid) in CHILDREN.iter().zip(roots) {
                        slot.store(pid, Ordering::Relaxed);
                    }
                    install_forwarding();
                },
            );
        }
        CHILDREN[0].store(init, Ordering::Relaxed);
        vec![init]
    } else {
        job::create(&members, job, opts, notify[1], me, 0, &mut Vec::new()).unwrap_or_else(|e| {
            kill_created(&read_reports_now(notify[0]));
            failed(
                args,
                Class::of(e.errno),
                e.errno,
                &format!("restart failed: {}", e.msg),
            )
        })
    };
    for (slot, &pid) in CHILDREN.iter().zip(&top) {
        slot.store(pid, Ordering::Relaxed);
    }
    // SAFETY: closing our copies of the write ends: EOF once every process is done with them.
    unsafe {
        libc::close(notify[1]);
        libc::close(status[1]);
    }
    // Wait until every process runs again (or one failed).
    // SAFETY: notify[0] is ours.
    let mut reports = unsafe { std::fs::File::from_raw_fd(notify[0]) };
    let mut buf = Vec::new();
    let mut running = 0;
    let mut created = Vec::new();
    let mut failure = None;
    let mut chunk = [0u8; 4096];
    while running < members.len() && failure.is_none() {
        if let Some(c) = &mut counted {
            // Redraw the bar at least every REDRAW while the processes restore.
            let mut p = libc::pollfd {
                fd: notify[0],
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = cr::progress::REDRAW.as_millis() as i32;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut p, 1, ms) } > 0;
            c.bar.update(c.read.load(Ordering::Relaxed), c.total);
            if !ready {
                continue;
            }
        }
        let n = match reports.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        let (list, used) = cr::restore::parse_reports(&buf);
        buf.drain(..used);
        for r in list {
            match r {
                cr::restore::Report::Created(pid) => {
                    let _ = CREATED_AT.set(since_start());
                    created.push(pid)
                }
                cr::restore::Report::Running(_) => running += 1,
                cr::restore::Report::Failed(e, m) => failure = Some((e, m)),
                cr::restore::Report::Top(_) => {}
            }
        }
    }
    if let Some(c) = &mut counted {
        if running < members.len() {
            c.bar.clear();
        } else {
            let read = c.read.load(Ordering::Relaxed);
            c.bar.finish(read, c.total.max(read));
        }
    }
    if running < members.len() {
        if !in_namespace {
            kill_created(&created);
        }
        let (errno, why) = failure.unwrap_or_else(|| {
            (
                libc::EIO,
                "a restored process ended during the restore".to_string(),
            )
        });
        failed(
            args,
            Class::of(errno),
            errno,
            &format!("restart failed: {why}"),
        );
    }
    drop(reports);
    if args.verbose {
        // --eager reads on a thread per core: said when a process could not make them (before
        // "running again", which tests wait for).
        let short = cr::restore::memory::reader_shortfall();
        if short.short > 0 {
            eprintln!(
                "{TOOL}: page data of {} process(es) read with fewer reader threads than cores, {} of them on the restoring thread alone: a thread could not be created ({})",
                short.short,
                short.none,
                std::io::Error::from_raw_os_error(short.errno)
            );
        }
        let huge = cr::restore::memory::huge_pages();
        if huge.advised > 0 || huge.errno != 0 {
            eprintln!(
                "{TOOL}: memory that had transparent huge pages at the checkpoint: {} advised MADV_HUGEPAGE again{}{}",
                cr::progress::human(huge.advised),
                if huge.after > 0 {
                    " after it was restored in 4 KiB pages (for what the program maps there later; --eager --huge-pages reads it into huge pages, slower where the kernel must compact memory for them)".to_string()
                } else if huge.lazy > 0 {
                    format!(
                        ", of which {} mapped lazily from the image stays in 4 KiB pages (--eager --huge-pages reads it into huge pages)",
                        cr::progress::human(huge.lazy)
                    )
                } else {
                    String::new()
                },
                if huge.errno != 0 {
                    format!(
                        "; the kernel refused the advice for some of it ({})",
                        std::io::Error::from_raw_os_error(huge.errno)
                    )
                } else {
                    String::new()
                },
            );
        }
        eprintln!(
            "{TOOL}: {} process(es) running again {:.1} ms after cr_restart started (images opened and checked at {:.1} ms, first process created at {:.1} ms)",
            members.len(),
            since_start(),
            LOADED.get().copied().unwrap_or(0.0),
            CREATED_AT.get().copied().unwrap_or(0.0),
        );
        if let Some(c) = &counted {
            let read = c.read.load(Ordering::Relaxed);
            let secs = STARTED.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
            eprintln!(
                "{TOOL}: page data read: {} in {secs:.2} s ({}/s)",
                cr::progress::human(read),
                cr::progress::human((read as f64 / secs.max(1e-3)) as u64)
            );
        }
    }
    install_forwarding();
    if signal != 0 {
        let all = if in_namespace {
            descendants(top[0])
        } else {
            created.clone()
        };
        for pid in all {
            // SAFETY: signalling a restored process of ours.
            unsafe { libc::kill(pid, signal) };
        }
    }
    if let Some(cmd) = &args.on_success {
        let code = run_hook(cmd);
        if code != 0 {
            std::process::exit(code & 0xff); // BLCR: exit at once, without waiting for the job
        }
    }
    if in_namespace {
        // The init reports the eldest's wait status, then stays to reap the others.
        // SAFETY: status[0] is ours.
        let mut st = unsafe { std::fs::File::from_raw_fd(status[0]) };
        let mut word = [0u8; 4];
        loop {
            match st.read_exact(&mut word) {
                Ok(()) => mimic(i32::from_le_bytes(word)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        mimic(wait_child(top[0]))
    }
    // Exit as the first (eldest) restored process did, once every root has ended.
    let statuses: Vec<i32> = top.iter().map(|&p| wait_child(p)).collect();
    mimic(statuses[0])
}

/// The reports already in the pipe (without waiting), as pids of created processes.
fn read_reports_now(fd: i32) -> Vec<i32> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: non-blocking read into a valid buffer.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr() as *mut _,
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let n = if n < 0 {
        // SAFETY: a pipe: set it non-blocking and read.
        unsafe {
            libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
            libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len())
        }
    } else {
        n
    };
    let (list, _) = cr::restore::parse_reports(&buf[..n.max(0) as usize]);
    list.into_iter()
        .filter_map(|r| match r {
            cr::restore::Report::Created(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn kill_created(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: killing a half-restored process we created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for (slot, &pid) in CREATED.iter().zip(pids) {
        slot.store(pid, Ordering::Relaxed);
    }
}

/// Every descendant of `pid` (children files of all its threads, recursively).
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in cr::tool::children(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
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
