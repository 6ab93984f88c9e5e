//! Whole MPI jobs on one node (issue 16): `cr_run mpirun -np 4 ring` (c-tests/mpi/ring.c: ring
//! messages of 8 bytes to 256 KiB, an allreduce and a broadcast each iteration, every result
//! checked) is checkpointed as one tree mid-run with `--kill` or `--term`, restarted with
//! `cr_restart`, and must finish with correct results (`PASS ring`, exit 0), for Open MPI
//! (Debian's 4.1: mpirun, its out-of-band TCP connections and listener, the ranks' standard
//! output on pseudo-terminals mpirun reads, vader shared memory with cross-memory attach) and
//! MPICH (Debian's 4.0 with UCX: hydra's mpiexec and proxy, PMI over unix socket pairs, one on
//! the proxy's fd 0, a listener all processes inherit, UCX shared memory in /dev/shm).
//!
//! Skipped with a message where an MPI is not installed; CI installs both (.ci/run).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One MPI implementation: its compiler wrapper and launcher (full paths: both are installed
/// side by side, `mpirun` is whichever update-alternatives chose).
#[derive(Clone, Copy)]
struct Mpi {
    name: &'static str,
    mpicc: &'static str,
    mpirun: &'static str,
}

const OPEN_MPI: Mpi = Mpi {
    name: "openmpi",
    mpicc: "/usr/bin/mpicc.openmpi",
    mpirun: "/usr/bin/mpirun.openmpi",
};

const MPICH: Mpi = Mpi {
    name: "mpich",
    mpicc: "/usr/bin/mpicc.mpich",
    mpirun: "/usr/bin/mpirun.mpich",
};

/// Ranks of every job.
const RANKS: &str = "4";

impl Mpi {
    /// Whether it is installed; in CI it must be.
    fn available(&self) -> bool {
        let have = Path::new(self.mpicc).exists() && Path::new(self.mpirun).exists();
        if !have {
            assert!(
                !in_ci(),
                "{} must be installed in CI (.ci/run installs openmpi-bin libopenmpi-dev mpich libmpich-dev)",
                self.name
            );
            println!(
                "note: {} or {} is not installed: skipped",
                self.mpicc, self.mpirun
            );
        }
        have
    }

    /// c-tests/mpi/ring.c built with this MPI's mpicc (once per test binary run).
    fn ring(&self) -> PathBuf {
        static BUILT: OnceLock<Mutex<Vec<(&'static str, PathBuf)>>> = OnceLock::new();
        let built = BUILT.get_or_init(Default::default);
        let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = built.iter().find(|(n, _)| *n == self.name) {
            return p.clone();
        }
        let out = build_dir().join(format!("ring-{}", self.name));
        let o = Command::new(self.mpicc)
            .args(["-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(c_tests_dir().join("mpi/ring.c"))
            .output()
            .expect("run mpicc");
        assert!(
            o.status.success(),
            "{} failed on c-tests/mpi/ring.c:\n{}{}",
            self.mpicc,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        built.push((self.name, out.clone()));
        out
    }

    /// `cr_run mpirun … -np 4 RING` as the scenario's user.
    fn start(&self, sc: &Scenario) -> Job {
        let ring = sc_program(sc, &self.ring());
        let cr_run = sc.tools().cr_run.to_string_lossy().into_owned();
        let mut argv = vec![cr_run, "--".into(), self.mpirun.into()];
        if self.name == "openmpi" {
            // 4 ranks on a 2-core machine; root only when asked.
            argv.push("--oversubscribe".into());
            if sc.user().is_none() && is_root() {
                argv.push("--allow-run-as-root".into());
            }
        }
        argv.extend([
            "-np".into(),
            RANKS.into(),
            ring.to_string_lossy().into_owned(),
        ]);
        let mut cmd = sc.command(&argv);
        if self.name == "openmpi" {
            // Shared memory between the ranks (the default too, said to be sure), no probing
            // of network interfaces for a one-node job.
            cmd.env("OMPI_MCA_btl", "self,vader");
        }
        let mut job = sc.start(&format!("mpirun ({})", self.name), cmd);
        job.wait_ready();
        job
    }
}

/// The ring program where the scenario's user can run it.
fn sc_program(sc: &Scenario, ring: &Path) -> PathBuf {
    if sc.user().is_none() {
        return ring.to_path_buf();
    }
    let dest = sc.root().join("bin").join(ring.file_name().expect("name"));
    if !dest.exists() {
        std::fs::copy(ring, &dest).expect("copy ring for the scenario's user");
    }
    dest
}

/// Every process of the job (mpirun and its descendants) has gone, not even a zombie left (the
/// restart takes their pids back).
fn wait_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| proc_stat(p).is_some()) {
        assert!(
            Instant::now() < deadline,
            "{what}: processes of the checkpointed job still exist: {:?}",
            pids.iter()
                .filter(|&&p| proc_stat(p).is_some())
                .map(|&p| proc_summary(p))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start the job, checkpoint it with `signal_flag` mid-run (after READY: 20 iterations done),
/// see it end, restart it, GO, and expect `PASS ring` and exit 0.
fn checkpoint_restart(mpi: Mpi, sc: &Scenario, signal_flag: &str) {
    let t0 = Instant::now();
    let mut job = mpi.start(sc);
    let mut pids = vec![job.pid()];
    pids.extend(descendants(job.pid()));
    assert!(
        pids.len() > RANKS.parse::<usize>().expect("ranks"),
        "mpirun and its ranks should be running:\n{}",
        job.diag()
    );
    let t1 = Instant::now();
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(job.pid(), &[signal_flag], &img);
    let ckpt = t1.elapsed();
    res.assert_success();
    sc.assert_image_file(&img);
    // Every descriptor of the job comes back (MPICH's UCX keeps unix datagram sockets, some
    // with a queued wake-up message).
    assert!(
        !res.stderr.contains("closed at restart"),
        "the {} job's checkpoint must save every descriptor:\n{}",
        mpi.name,
        res.describe()
    );
    job.wait_exit(DEATH_TIMEOUT);
    wait_gone(&pids, signal_flag);
    let t2 = Instant::now();
    let mut restarted = sc.restart(&img);
    restarted.wait_child(READY_TIMEOUT);
    sc.go();
    let st = restarted.wait_exit(RESTART_TIMEOUT);
    restarted.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    // Rank 0's PASS comes through mpirun (Open MPI: from the pseudo-terminal it reads) or
    // straight from the rank (MPICH forwards through the proxy's pipes): either way on the
    // restarted job's standard output.
    let out = restarted.stdout();
    assert!(
        st.success() && out.lines().any(|l| l.starts_with("PASS ring")),
        "the restarted {} job must finish correct (PASS ring, exit 0):\n{}",
        mpi.name,
        restarted.diag()
    );
    assert!(
        !out.contains("FAIL"),
        "the restarted job printed FAIL:\n{}",
        restarted.diag()
    );
    let image_mb = std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
    let line = format!(
        "{} {signal_flag}: checkpoint {:.2} s ({image_mb:.1} MiB), restart to exit {:.2} s, whole test {:.2} s",
        mpi.name,
        ckpt.as_secs_f64(),
        t2.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    sc.note(&line);
    println!("{line}");
}

#[test]
fn openmpi_kill() {
    if OPEN_MPI.available() {
        checkpoint_restart(OPEN_MPI, &Scenario::new("mpi-openmpi-kill"), "--kill");
    }
}

#[test]
fn mpich_kill() {
    if MPICH.available() {
        checkpoint_restart(MPICH, &Scenario::new("mpi-mpich-kill"), "--kill");
    }
}

#[test]
fn mpich_term() {
    if MPICH.available() {
        checkpoint_restart(MPICH, &Scenario::new("mpi-mpich-term"), "--term");
    }
}

/// The same as an unprivileged user (the restart creates the job in a private user + pid
/// namespace to get its pids back). Needs root to become that user.
fn as_nobody(mpi: Mpi, name: &str, signal_flag: &str) {
    if !mpi.available() {
        return;
    }
    if !is_root() {
        println!("note: not root, cannot run as nobody: skipped");
        return;
    }
    checkpoint_restart(mpi, &Scenario::as_user(name, NOBODY), signal_flag);
}

#[test]
fn openmpi_kill_unprivileged() {
    as_nobody(OPEN_MPI, "mpi-openmpi-kill-nobody", "--kill");
}

#[test]
fn mpich_term_unprivileged() {
    as_nobody(MPICH, "mpi-mpich-term-nobody", "--term");
}

/// `cr_run --checkpoint-dir DIR --every 1s -- mpirun …`: periodic checkpoints of the whole job,
/// then SIGTERM to cr_run (a preemption: checkpoint, end the job, exit 0); the same command
/// again resumes the job from its newest generation (in a private user + pid namespace) — it
/// does not print READY again, as a fresh start would — and it finishes correct.
#[test]
fn openmpi_supervised() {
    if OPEN_MPI.available() {
        supervised(OPEN_MPI, &Scenario::new("mpi-openmpi-supervised"));
    }
}

/// The same as an unprivileged user. Needs root to become that user.
#[test]
fn openmpi_supervised_unprivileged() {
    if !OPEN_MPI.available() {
        return;
    }
    if !is_root() {
        println!("note: not root, cannot run as nobody: skipped");
        return;
    }
    supervised(
        OPEN_MPI,
        &Scenario::as_user("mpi-openmpi-supervised-nobody", NOBODY),
    );
}

/// [`openmpi_supervised`]'s run of `mpi` in `sc`.
fn supervised(mpi: Mpi, sc: &Scenario) {
    let dir = sc.root().join("ckpt");
    std::fs::create_dir_all(&dir).expect("checkpoint dir");
    if let Some((uid, gid)) = sc.user() {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the checkpoint dir");
    }
    let ring = mpi.ring();
    let mut argv: Vec<String> = vec![
        sc.tools().cr_run.to_string_lossy().into_owned(),
        "--checkpoint-dir".into(),
        dir.to_string_lossy().into_owned(),
        "--every".into(),
        "1s".into(),
        "--".into(),
        mpi.mpirun.into(),
        "--oversubscribe".into(),
    ];
    if sc.user().is_none() && is_root() {
        argv.push("--allow-run-as-root".into());
    }
    argv.extend([
        "-np".into(),
        RANKS.into(),
        ring.to_string_lossy().into_owned(),
    ]);
    let generations = || {
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".ckpt"))
                    .count()
            })
            .unwrap_or(0)
    };
    let start = |what: &str| {
        let mut cmd = sc.command(&argv);
        cmd.env("OMPI_MCA_btl", "self,vader");
        sc.start(what, cmd)
    };
    let mut first = start("cr_run --checkpoint-dir (first)");
    first.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(30);
    while generations() == 0 {
        assert!(
            Instant::now() < deadline && first.is_running(),
            "no periodic checkpoint was written:\n{}",
            first.diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal_pid(first.pid(), SIGTERM);
    let st = first.wait_exit(DEATH_TIMEOUT);
    assert!(
        st.success() && generations() > 0,
        "a preempted cr_run must exit 0 and leave its generations:\n{}",
        first.diag()
    );
    let mut second = start("cr_run --checkpoint-dir (resume)");
    second.wait_child(READY_TIMEOUT);
    sc.go();
    let st = second.wait_exit(RESTART_TIMEOUT);
    second.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    let out = second.stdout();
    assert!(
        st.success() && out.lines().any(|l| l.starts_with("PASS ring")),
        "the resumed job must finish correct:\n{}",
        second.diag()
    );
    assert!(
        !out.lines().any(|l| l.trim() == "READY"),
        "the second cr_run started the job afresh instead of resuming it:\n{}",
        second.diag()
    );
}

/// c-tests/mpi/launcher.c, built with gcc for the scenario's user.
fn launcher(sc: &Scenario) -> PathBuf {
    let out = sc.root().join("bin").join("launcher");
    std::fs::create_dir_all(out.parent().expect("bin")).expect("create bin dir");
    let o = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg(c_tests_dir().join("mpi/launcher.c"))
        .output()
        .expect("run gcc");
    assert!(
        o.status.success(),
        "gcc failed on c-tests/mpi/launcher.c:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A launcher's listening port after `--term` (no MPI needed): c-tests/mpi/launcher.c closes
/// the connections it accepted before its ranks close theirs, as Open MPI's mpirun does on
/// SIGTERM, so its ends would wait in TIME_WAIT on the listener's port, and a listener without
/// `SO_REUSEADDR` could not be bound there again at restart (`Address already in use`, every
/// time): the agent makes those connections close with a reset (`SO_LINGER` 0) before a
/// post-checkpoint SIGTERM as before a SIGKILL. The restored launcher's listener accepts a new
/// rank and every connection carries checked messages.
fn launcher_term(sc: Scenario) {
    let exe = launcher(&sc);
    let cr_run = sc.tools().cr_run.clone();
    let cmd = sc.command(&[cr_run.as_os_str(), "--".as_ref(), exe.as_os_str()]);
    let mut job = sc.start("launcher", cmd);
    job.wait_ready();
    let mut pids = vec![job.pid()];
    pids.extend(descendants(job.pid()));
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.wait_exit(DEATH_TIMEOUT);
    wait_gone(&pids, "--term");
    let mut restarted = sc.restart(&img);
    restarted.wait_child(READY_TIMEOUT);
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn launcher_listener_after_term() {
    launcher_term(Scenario::new("mpi-launcher-term"));
}

#[test]
fn launcher_listener_after_term_unprivileged() {
    if !is_root() {
        println!("note: not root: launcher_listener_after_term already ran unprivileged");
        return;
    }
    launcher_term(Scenario::as_user("mpi-launcher-term-nobody", NOBODY));
}
/// Open MPI's mpirun deletes its session directory under /tmp on SIGTERM: the files the job
/// mapped from it and its debugger FIFO are made again at restart.
#[test]
fn openmpi_term() {
    if OPEN_MPI.available() {
        checkpoint_restart(OPEN_MPI, &Scenario::new("mpi-openmpi-term"), "--term");
    }
}

#[test]
fn openmpi_term_unprivileged() {
    as_nobody(OPEN_MPI, "mpi-openmpi-term-nobody", "--term");
}
