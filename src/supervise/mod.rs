//! `cr_run --checkpoint-dir DIR …`: the batch-cluster workflow BLCR was deployed for, in one
//! command. The supervisor (the `cr_run` process) starts the program — or, when DIR holds a
//! good image of the same job, resumes it from the newest one — and stays its parent: it takes
//! a checkpoint of the whole job every `--every`, on `--checkpoint-signal`, and on a preemption
//! signal (`--on-signal`, after which the job ends and cr_run exits with
//! `--exit-after-checkpoint`), keeps the newest `--keep` generations, and exits as the program
//! does (removing its images, unless `--keep-final`).
//!
//! A resumed job always runs in a private user + pid namespace (also as root), so its original
//! pids are free wherever and whenever it resumes; its standard input, output and error are
//! cr_run's own. Images are tree images of the whole job (`generations`); shipping them off the
//! node, and fetching them back where DIR has none, is `store`'s job (`--store URL`). With
//! `--incremental` each generation is a delta of the one before (one delta per process, see
//! `checkpoint::incremental`), a full one every `--max-chain`; pruning, resuming and shipping
//! follow the chains (`generations::kept`).

pub mod generations;
pub mod node;
pub mod store;

use crate::checkpoint::{self, Commit, Destination, Note};
use crate::restore::{job, spawn};
use generations::Generation;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `--max-chain` of `cr_run --incremental` when not given: a full image every 8 generations.
pub const DEFAULT_MAX_CHAIN: u32 = 8;

/// What `cr_run --checkpoint-dir` was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the job's images live.
    pub dir: PathBuf,
    /// Periodic checkpoints.
    pub every: Option<Duration>,
    /// Generations kept (at least 1).
    pub keep: usize,
    /// The job's name (default: [`generations::default_name`]).
    pub id: Option<String>,
    /// Signals that mean "checkpoint, then end the job" (preemption).
    pub on_signal: Vec<i32>,
    /// cr_run's exit code after such a checkpoint.
    pub exit_after_checkpoint: i32,
    /// Whether `--exit-after-checkpoint` was given: then periodic checkpoints end the job too
    /// (HTCondor's self-checkpointing).
    pub exit_after_periodic: bool,
    /// A signal that only asks for a checkpoint (the job goes on).
    pub checkpoint_signal: Option<i32>,
    /// Start afresh even when images exist (they are replaced by the new run's).
    pub no_resume: bool,
    /// Keep the images when the program finishes by itself.
    pub keep_final: bool,
    /// Say what happens, on stderr.
    pub verbose: bool,
    /// Where generations are shipped to and fetched from (`--store URL`).
    pub store: Option<String>,
    /// `--incremental`: each generation a delta of the previous one where possible, a full one
    /// every this many (`--max-chain`).
    pub incremental: Option<u32>,
    /// The program and its arguments.
    pub argv: Vec<OsString>,
}

/// Why the supervisor could not do its job: errno (cr_run exits with its low byte) and a line.
#[derive(Debug)]
pub struct SuperviseError {
    /// errno.
    pub errno: i32,
    /// One line.
    pub msg: String,
}

fn err(errno: i32, msg: String) -> SuperviseError {
    SuperviseError { errno, msg }
}

/// How the job is running.
enum Running {
    /// Started afresh: the program is our child.
    Fresh(i32),
    /// Resumed: the init of its pid namespace is our child, the job's root its child.
    Resumed { init: i32 },
}

impl Running {
    /// Our child, whose end is the job's end.
    fn child(&self) -> i32 {
        match self {
            Running::Fresh(p) => *p,
            Running::Resumed { init } => *init,
        }
    }

    /// The root of the job (what a checkpoint covers, with its descendants); `None` when it has
    /// ended.
    fn root(&self) -> Option<i32> {
        match self {
            Running::Fresh(p) => Some(*p),
            Running::Resumed { init } => checkpoint::procfs::children(*init)
                .into_iter()
                .find(|&c| !checkpoint::procfs::ended(c)),
        }
    }
}

/// Prints a supervisor message on stderr.
fn say(msg: &str) {
    eprintln!("cr_run: {msg}");
}

/// The supervisor. `start` builds the command that starts the program afresh (with the agent
/// preloaded). Returns the wait status the job ended with (cr_run ends the same way), or the
/// exit code to leave with after a preemption checkpoint (`Ok(Err(code))`).
/// `open_store` opens `--store`'s URL (cr_run passes the `libcr-store` backend).
pub fn run(
    cfg: &Config,
    start: &dyn Fn() -> std::process::Command,
    open_store: store::Opener,
) -> Result<Result<i32, i32>, SuperviseError> {
    let name = match &cfg.id {
        Some(n) if generations::valid_name(n) => n.clone(),
        Some(n) => {
            return Err(err(
                libc::EINVAL,
                format!("invalid --id '{n}' (letters, digits, '-', '_' and '.' only)"),
            ))
        }
        None => generations::default_name(&cfg.argv),
    };
    // Blocked before the store's threads exist, so that they inherit the mask. The store is
    // opened before anything is created or said: a bad URL is one line and nothing else.
    let signals = Signals::block(cfg);
    let store = match &cfg.store {
        Some(url) => Some(open_store(url).map_err(|m| err(libc::EINVAL, m))?),
        None => None,
    };
    std::fs::create_dir_all(&cfg.dir).map_err(|e| {
        err(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot create {}: {e}", cfg.dir.display()),
        )
    })?;
    let dir = cfg.dir.canonicalize().unwrap_or_else(|_| cfg.dir.clone());
    let _ = std::fs::write(dir.join("cr_run.pid"), format!("{}\n", std::process::id()));
    let info: Vec<String> = cfg
        .argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let _ = std::fs::write(dir.join(format!("{name}.info")), info.join(" ") + "\n");
    say(&format!("job {name}, checkpoints in {}", dir.display()));

    let remote = match &store {
        Some(s) => store::list(&**s, &name).unwrap_or_else(|e| {
            say(&format!(
                "warning: {e}: going on without the store's images"
            ));
            Vec::new()
        }),
        None => Vec::new(),
    };
    let gens = generations::list(&dir, &name);
    let newest_remote = remote.first().map_or(0, |r| r.seq);
    let mut next_seq = gens.first().map_or(1, |g| g.seq + 1).max(newest_remote + 1);
    let mut resume_from = if cfg.no_resume {
        None
    } else {
        newest_good(&gens, cfg.verbose)
    };
    if let (None, Some(s), false) = (&resume_from, &store, cfg.no_resume) {
        if !remote.is_empty() {
            if gens.is_empty() {
                say(&format!(
                    "no image in {}: looking in {}",
                    dir.display(),
                    s.url()
                ));
            }
            resume_from = store::fetch_newest_good(&**s, &dir, &name, &remote, &say);
        }
    }
    // Local generations newer than the store's newest (a previous supervisor ended before it
    // shipped them) are shipped first.
    let unshipped: Vec<u64> = gens
        .iter()
        .filter(|g| g.seq > newest_remote && !cfg.no_resume)
        .map(|g| g.seq)
        .rev()
        .collect();
    let shipper = store.map(|s| {
        store::Shipper::start(
            s,
            dir.clone(),
            name.clone(),
            cfg.keep,
            remote.iter().map(|r| r.seq),
            cfg.verbose,
        )
    });
    if let Some(sh) = &shipper {
        for seq in unshipped {
            sh.ship(seq);
        }
    }
    let running = match &resume_from {
        Some(g) => resume(g, cfg.verbose)?,
        None => {
            if !gens.is_empty() && !cfg.no_resume {
                say("no usable image of this job: starting it afresh");
            }
            let mut cmd = start();
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: between fork and exec only async-signal-safe calls: the program starts
                // with no signal blocked (it must not inherit the signals the supervisor takes
                // with sigtimedwait: TERM, INT, HUP… would never reach it).
                unsafe {
                    cmd.pre_exec(|| {
                        let mut none: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut none);
                        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                        Ok(())
                    });
                }
            }
            let child = cmd.spawn().map_err(|e| {
                err(
                    e.raw_os_error().unwrap_or(libc::ENOENT),
                    format!("cannot start {}: {e}", info.join(" ")),
                )
            })?;
            let pid = child.id() as i32;
            // The std handle would not reap it for us; we wait with waitpid below.
            std::mem::forget(child);
            Running::Fresh(pid)
        }
    };

    let mut next_periodic = cfg.every.map(|d| Instant::now() + d);
    loop {
        let timeout = next_periodic.map(|t| t.saturating_duration_since(Instant::now()));
        let event = signals.wait(timeout);
        if let Some(status) = reaped(running.child()) {
            // The program ended. Its images go only when it exited by itself: a job killed
            // by a signal (a scheduler that signals every process of the job at once, a
            // crash) may want to resume from them.
            let finished = libc::WIFEXITED(status) && !cfg.keep_final;
            if libc::WIFSIGNALED(status) && !cfg.keep_final {
                say(&format!(
                    "the job was killed by signal {}: its images are kept (--no-resume starts \
                     it afresh)",
                    libc::WTERMSIG(status)
                ));
            }
            if let Some(sh) = shipper {
                if finished {
                    sh.forget();
                } else {
                    sh.finish();
                }
            }
            if finished {
                for g in generations::list(&dir, &name) {
                    let _ = std::fs::remove_file(&g.path);
                }
                let _ = std::fs::remove_file(dir.join(format!("{name}.info")));
            }
            let _ = std::fs::remove_file(dir.join("cr_run.pid"));
            return Ok(Ok(status));
        }
        let why = match event {
            Some(sig) if cfg.on_signal.contains(&sig) => Why::Preempt(sig),
            Some(sig) if Some(sig) == cfg.checkpoint_signal => Why::Asked,
            Some(libc::SIGCHLD) => continue,
            Some(sig) => {
                if let Some(root) = running.root() {
                    // SAFETY: passing a signal on to the job's root.
                    unsafe { libc::kill(root, sig) };
                }
                continue;
            }
            None if next_periodic.is_some_and(|t| Instant::now() >= t) => Why::Periodic,
            None => continue,
        };
        let end_job = matches!(why, Why::Preempt(_))
            || (matches!(why, Why::Periodic) && cfg.exit_after_periodic);
        let Some(root) = running.root() else {
            continue; // ending: the next wait reaps it
        };
        let seq = next_seq;
        next_seq += 1;
        if let Some(sh) = &shipper {
            sh.hold(true);
        }
        let res = take_checkpoint(cfg, &dir, &name, seq, root, end_job, shipper.as_ref());
        if let Some(sh) = &shipper {
            sh.hold(false);
            if res.is_ok() {
                sh.ship(seq);
            }
        }
        if let Some(d) = cfg.every {
            next_periodic = Some(Instant::now() + d);
        }
        match res {
            Ok(()) if end_job => {
                wait_end(running.child());
                if let Some(sh) = shipper {
                    if cfg.verbose {
                        say("waiting for the images to reach the store");
                    }
                    sh.finish();
                }
                let _ = std::fs::remove_file(dir.join("cr_run.pid"));
                return Ok(Err(cfg.exit_after_checkpoint));
            }
            Ok(()) => {}
            Err(e) => {
                say(&format!("checkpoint {seq} of {name} failed: {}", e.msg));
                if let Why::Preempt(sig) = why {
                    // No new image: the job gets the signal as if we were not there (the last
                    // good generation, if any, stays).
                    // SAFETY: passing the signal on to the job's root.
                    unsafe { libc::kill(root, sig) };
                }
            }
        }
    }
}

/// Why a checkpoint is taken.
#[derive(Clone, Copy, Debug)]
enum Why {
    Periodic,
    Asked,
    Preempt(i32),
}

/// The newest generation whose every checksum is right; damaged newer ones are reported.
fn newest_good(gens: &[Generation], verbose: bool) -> Option<Generation> {
    for g in gens {
        match generations::validate(&g.path) {
            Ok(n) => {
                if verbose {
                    say(&format!(
                        "resuming from {} ({n} process{})",
                        g.path.display(),
                        if n == 1 { "" } else { "es" }
                    ));
                }
                return Some(g.clone());
            }
            Err(e) => say(&format!("damaged image skipped: {e}; trying an older one")),
        }
    }
    None
}

/// Restores generation `g` in a private pid namespace whose init is our child; returns once
/// every process of the job runs again.
fn resume(g: &Generation, verbose: bool) -> Result<Running, SuperviseError> {
    let file = std::fs::File::open(&g.path).map_err(|e| {
        err(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("{}: {e}", g.path.display()),
        )
    })?;
    let pairs = moved_workdir(&g.path);
    let mut loaded =
        job::load(vec![(file, g.path.clone())], &pairs).map_err(|e| err(e.errno, e.msg))?;
    loaded.inherit_stdio();
    let members = loaded.members();
    let opts = spawn::Options {
        pids: true,
        quiet: !verbose,
        ..Default::default()
    };
    if verbose {
        say("restoring the job in a private pid namespace (its original pids)");
    }
    let mut p = [0i32; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(err(libc::EMFILE, "cannot create a pipe".into()));
    }
    let init = spawn::enter_namespace(!verbose, 0).map_err(|e| err(e.errno, e.msg))?;
    if init == 0 {
        // SAFETY: the init: every signal the supervisor blocks is unblocked again only for the
        // restored processes (they set their own masks); we just create them and reap.
        unsafe { libc::close(p[0]) };
        job::namespace_init(&members, &loaded, opts, p[1], job::InitEnd::Mimic, |_| {});
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(p[1]) };
    let n = members.len();
    match wait_running(p[0], n) {
        Ok(()) => Ok(Running::Resumed { init }),
        Err(e) => {
            // SAFETY: the init gives up by itself; make sure, then collect it.
            unsafe {
                libc::kill(init, libc::SIGKILL);
                libc::waitpid(init, core::ptr::null_mut(), 0);
            }
            Err(err(
                e.errno,
                format!("cannot resume from {}: {}", g.path.display(), e.msg),
            ))
        }
    }
}

/// When the job's working directory no longer exists (a scheduler's scratch directory: the job
/// now runs in a new one, HTCondor's file transfer brought its checkpoint files there), paths
/// under it are relocated to cr_run's working directory, and this is said on stderr.
fn moved_workdir(path: &std::path::Path) -> Vec<crate::restore::relocate::Pair> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let Ok((_, images)) = crate::image::tree::open_all(&file) else {
        return Vec::new();
    };
    let Some(old) = images.first().map(|i| i.cwd.clone()) else {
        return Vec::new();
    };
    let gone = !old.is_empty() && !std::path::Path::new(std::ffi::OsStr::from_bytes(&old)).is_dir();
    let Ok(here) = std::env::current_dir() else {
        return Vec::new();
    };
    let new = here.into_os_string().into_vec();
    if !gone || new == old || old.first() != Some(&b'/') {
        return Vec::new();
    }
    say(&format!(
        "the job's working directory {} is gone: paths under it now lead to {} (cr_run's)",
        String::from_utf8_lossy(&old),
        String::from_utf8_lossy(&new)
    ));
    vec![crate::restore::relocate::Pair { old, new }]
}

/// Reads the job's report pipe until `n` processes run again (or one failed).
fn wait_running(fd: i32, n: usize) -> Result<(), crate::restore::RestoreError> {
    use crate::restore::{parse_reports, Report, RestoreError};
    use std::io::Read;
    use std::os::unix::io::FromRawFd;
    // SAFETY: the read end is ours.
    let mut reports = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut running = 0;
    loop {
        let k = match reports.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..k]);
        let (list, used) = parse_reports(&buf);
        buf.drain(..used);
        for r in list {
            match r {
                Report::Running(_) => running += 1,
                Report::Failed(e, m) => return Err(RestoreError::new(e, m)),
                _ => {}
            }
        }
        if running >= n {
            return Ok(());
        }
    }
    Err(RestoreError::new(
        libc::EIO,
        "a restored process ended during the restore".into(),
    ))
}

/// One checkpoint of the job rooted at `root` as generation `seq`; the job is killed once the
/// image is durable when `end_job`. Older generations beyond `keep` are removed afterwards.
fn take_checkpoint(
    cfg: &Config,
    dir: &std::path::Path,
    name: &str,
    seq: u64,
    root: i32,
    end_job: bool,
    shipper: Option<&store::Shipper>,
) -> Result<(), checkpoint::CheckpointError> {
    let path = dir.join(generations::file_name(name, seq));
    // The parent of a delta: the newest generation (the agent falls back to a full image when
    // it is not the one it armed write-tracking for: after a resume, or a failed checkpoint).
    let incremental = cfg
        .incremental
        .map(|max_chain| checkpoint::incremental::Incremental {
            parent: generations::list(dir, name)
                .into_iter()
                .find(|g| g.seq < seq)
                .map(|g| g.path),
            max_chain,
        });
    let opts = checkpoint::Options {
        dest: Destination::File(path.clone()),
        incremental,
        commit: Commit::Atomic,
        signal: if end_job { libc::SIGKILL } else { 0 },
        // A checkpoint the job goes on after stops it only while its state is recorded; one
        // that ends the job is written stopped (it would not run on anyway).
        cow: !end_job,
        ..checkpoint::Options::new(crate::api::types::CR_SCOPE_TREE, root)
    };
    let started = Instant::now();
    let mut note = |n: Note| match n {
        Note::Warning(w) => say(&format!("warning: {w}")),
        Note::Info(i) if cfg.verbose => say(&i),
        Note::Info(_) | Note::Progress { .. } => {}
    };
    let outcome = checkpoint::checkpoint(&opts, &mut note)?;
    // With a store, a local copy stays until its upload is confirmed.
    let removed = generations::prune_if(dir, name, cfg.keep, &|s| {
        shipper.is_none_or(|sh| sh.stored(s))
    });
    if cfg.verbose {
        say(&format!(
            "checkpoint {seq} of {name}: {} process{}, {} bytes in {:.2} s -> {}",
            outcome.saved.len(),
            if outcome.saved.len() == 1 { "" } else { "es" },
            outcome.total,
            started.elapsed().as_secs_f64(),
            path.display()
        ));
        for s in &outcome.saved {
            let mode = match s.mode() {
                "" => "not reported",
                m => m,
            };
            say(&format!("checkpoint {seq}: process {} mode={mode}", s.pid));
        }
        for r in removed {
            say(&format!("removed old generation {}", r.display()));
        }
    }
    Ok(())
}

/// The wait status of our child `pid` if it has ended (reaped now), else `None`.
fn reaped(pid: i32) -> Option<i32> {
    let mut st = 0;
    // SAFETY: non-blocking wait for our own child.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    (r == pid).then_some(st)
}

/// Waits (bounded) for our child to end after its job was killed.
fn wait_end(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reaped(pid).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The signals the supervisor takes itself (blocked, then waited for): preemption and
/// checkpoint signals, SIGCHLD, and the usual job-control and termination signals it passes on
/// to the job.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Signals passed on to the job when they are not ours.
    const FORWARD: [i32; 9] = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGCONT,
        libc::SIGWINCH,
    ];

    fn block(cfg: &Config) -> Signals {
        // SAFETY: building a signal set and blocking it in this (still single-threaded)
        // process; the program is started with an empty mask again (pre_exec in `run`).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for &s in cfg
                .on_signal
                .iter()
                .chain(cfg.checkpoint_signal.iter())
                .chain(Self::FORWARD.iter())
            {
                libc::sigaddset(&mut set, s);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Signals { set }
        }
    }

    /// The next signal, or `None` when `timeout` passed.
    fn wait(&self, timeout: Option<Duration>) -> Option<i32> {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        loop {
            // SAFETY: waiting for a blocked signal of our set, with an optional timeout.
            let r = unsafe {
                libc::sigtimedwait(
                    &self.set,
                    std::ptr::null_mut(),
                    ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
                )
            };
            if r > 0 {
                return Some(r);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => return None,
            }
        }
    }
}

/// `cr_run --status DIR`: every job's generations with time, size and whether it would resume.
pub fn status(dir: &std::path::Path) -> Result<String, SuperviseError> {
    use std::fmt::Write as _;
    if !dir.is_dir() {
        return Err(err(
            libc::ENOENT,
            format!("{}: not a directory", dir.display()),
        ));
    }
    let mut out = String::new();
    let jobs = generations::jobs(dir);
    if jobs.is_empty() {
        let _ = writeln!(out, "{}: no checkpoints", dir.display());
    }
    for name in jobs {
        let program = std::fs::read_to_string(dir.join(format!("{name}.info"))).unwrap_or_default();
        let _ = writeln!(out, "job {name}: {}", program.trim());
        for g in generations::list(dir, &name) {
            let when = g
                .time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let delta = match generations::parents(&g.path, &name) {
                Ok(p) if !p.is_empty() => format!(
                    ", delta of {}",
                    p.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
                ),
                _ => String::new(),
            };
            let valid = match generations::validate(&g.path) {
                Ok(n) => format!("good, {n} process{}{delta}", if n == 1 { "" } else { "es" }),
                Err(e) => format!("DAMAGED: {e}"),
            };
            let _ = writeln!(
                out,
                "  generation {:6}  {}  {:>12} bytes  {valid}",
                g.seq,
                format_time(when),
                g.size
            );
        }
    }
    Ok(out)
}

/// A UTC time stamp `YYYY-MM-DD HH:MM:SS`.
fn format_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_stamps() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::format_time(1_798_761_600), "2027-01-01 00:00:00 UTC");
        assert_eq!(
            super::format_time(951_782_400 + 3661),
            "2000-02-29 01:01:01 UTC"
        );
    }
}
