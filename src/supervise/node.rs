//! `cr_run --node COORD -- PROGRAM`: the node agent of a job across nodes (docs/MPI.md
//! "cr_run --node"). It starts PROGRAM (this node's part: mpirun on the head node, `orted` or
//! hydra's proxy on the others, as the launcher's remote agent starts it), stays its parent,
//! passes the usual signals on to it and exits as it does; meanwhile a thread joins every
//! checkpoint the job's coordinator (`cr_checkpoint --coordinator COORD`) takes: it connects
//! to COORD (again every [`RETRY`] while nobody listens there), checkpoints PROGRAM's tree as
//! this node's part of the cut (`checkpoint::nodes::join_on`), and connects again for the
//! next one. So the batch system's launch (one node part per node, started by the launcher)
//! is all a job needs to be checkpointable across nodes: a checkpoint is one `cr_checkpoint
//! --coordinator` anywhere.
//!
//! Runs in the tools (cr_run), never in the agent.

use crate::checkpoint::nodelink::{self, Endpoint, Secret};
use crate::checkpoint::{self, Note};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How often a node agent tries the coordinator's address while nobody listens there.
pub const RETRY: Duration = Duration::from_millis(250);

/// What `cr_run --node` was asked for.
#[derive(Clone, Debug)]
pub struct NodeAgent {
    /// The coordinator's address (a unix socket path, or `HOST:PORT` over TCP).
    pub coord: Endpoint,
    /// The job secret (required over TCP).
    pub secret: Option<Secret>,
    /// This node's name in the generations (its image's name).
    pub name: String,
    /// Say each checkpoint joined.
    pub verbose: bool,
}

fn say(msg: &str) {
    eprintln!("cr_run: {msg}");
}

/// Joins the checkpoints of `pid`'s tree until `pid` is gone or `stop` is set.
fn serve(cfg: &NodeAgent, pid: i32, stop: &AtomicBool) {
    let alive = || {
        // SAFETY: signal 0 only checks that our child still exists.
        !stop.load(Ordering::SeqCst) && unsafe { libc::kill(pid, 0) == 0 }
    };
    let mut quiet_refusals = false;
    while alive() {
        let s = match nodelink::connect(&cfg.coord, Instant::now()) {
            Ok(s) => s,
            Err(e) => {
                // Nobody listens between checkpoints: that is the normal case, said once.
                if !quiet_refusals && cfg.verbose {
                    say(&format!(
                        "node {}: waiting for the coordinator at {} ({e})",
                        cfg.name, cfg.coord
                    ));
                }
                quiet_refusals = true;
                std::thread::sleep(RETRY);
                continue;
            }
        };
        quiet_refusals = false;
        let opts = checkpoint::Options::new(crate::api::types::CR_SCOPE_TREE, pid);
        let mut note = |n: Note| match n {
            Note::Warning(w) => say(&format!("warning: node {}: {w}", cfg.name)),
            Note::Info(i) if cfg.verbose => say(&format!("node {}: {i}", cfg.name)),
            _ => {}
        };
        match checkpoint::nodes::join_on(
            s,
            &cfg.coord,
            cfg.secret.as_ref(),
            &cfg.name,
            &opts,
            &mut note,
        ) {
            Ok(o) => {
                if cfg.verbose {
                    say(&format!(
                        "node {}: {} process(es) checkpointed ({} bytes)",
                        cfg.name,
                        o.saved.len(),
                        o.total
                    ));
                }
            }
            // A coordinator that went away before asking anything (it had all its nodes, or
            // ended): try again, quietly.
            Err(e) if e.errno == libc::EPIPE || e.errno == libc::ECONNRESET => {
                std::thread::sleep(RETRY);
            }
            Err(e) => say(&format!(
                "node {}: checkpoint across nodes: {} (the program goes on)",
                cfg.name, e.msg
            )),
        }
    }
}

/// Starts the program (`start()`), serves the coordinator's checkpoints of it, passes signals
/// on, and returns its wait status when it ends.
pub fn run(
    cfg: &NodeAgent,
    start: &dyn Fn() -> std::process::Command,
) -> Result<i32, super::SuperviseError> {
    const FORWARD: [i32; 9] = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGCONT,
        libc::SIGWINCH,
    ];
    // SAFETY: building a signal set and blocking it while this process is single-threaded
    // (the serving thread inherits the mask); the program starts with an empty mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in FORWARD {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut cmd = start();
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only async-signal-safe calls (an empty signal mask).
        unsafe {
            cmd.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(|e| super::SuperviseError {
        errno: e.raw_os_error().unwrap_or(libc::ENOENT),
        msg: format!("cannot start {:?}: {e}", cmd.get_program()),
    })?;
    let pid = child.id() as i32;
    // Reaped with waitpid below.
    std::mem::forget(child);
    let c = cfg.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (done, serving_ended) = mpsc::channel();
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            serve(&c, pid, &stop);
            let _ = done.send(());
        });
    }
    loop {
        // SAFETY: waiting for one of the signals blocked above.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig == libc::SIGCHLD || sig < 0 {
            let mut st = 0;
            // SAFETY: non-blocking wait for our own child.
            if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid {
                // A checkpoint that killed the program ends with our DONE to the coordinator:
                // let it be said (bounded: a coordinator still gathering nodes is not waited
                // for).
                stop.store(true, Ordering::SeqCst);
                let _ = serving_ended.recv_timeout(Duration::from_secs(2));
                return Ok(st);
            }
            continue;
        }
        // SAFETY: passing the signal on to our child.
        unsafe { libc::kill(pid, sig) };
    }
}
