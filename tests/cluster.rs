//! The batch schedulers, for real (`make check-cluster`, which sets `CR_CLUSTER_TESTS=1`; CI
//! runs it after `make check`, as root, with Debian's gridengine-* and slurm-wlm/munge
//! installed by .ci/run). Each test runs a script of tests/cluster/ that starts the scheduler's
//! daemons on this host, runs a counting job (`c-tests/counter_job.c`) as an unprivileged user
//! through the recipe of contrib/, forces it off its node mid-run (Grid Engine: `qmod -sj`
//! migration; Slurm: `scontrol requeue`, then preemption by a job of a higher-priority
//! partition with `PreemptMode=REQUEUE`) and checks that the job's next run resumed its count
//! from a checkpoint and ended correct. The scripts stop the daemons also when they fail.
//! Without `CR_CLUSTER_TESTS` the tests only say that they were skipped.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// The daemons of one scheduler at a time (CPU and ports).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn enabled() -> bool {
    matches!(std::env::var("CR_CLUSTER_TESTS"), Ok(v) if v == "1")
}

/// Runs `tests/cluster/SCRIPT` with the tools and the counting program reachable by `nobody`;
/// returns false when the script skipped (scheduler not installed, outside CI).
fn run_script(name: &str, script: &str, contrib: &str, limit: Duration) -> bool {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(is_root(), "the cluster tests start daemons and need root");
    let sc = Scenario::as_user(name, NOBODY);
    let prog = sc.program("counter_job");
    let tools_dir = sc
        .tools()
        .cr_run
        .parent()
        .expect("cr_run's directory")
        .to_path_buf();
    let work = sc.root().join("cluster");
    std::fs::create_dir_all(&work).expect("create work dir");
    let mut cmd = Command::new("bash");
    cmd.arg(manifest_dir().join("tests/cluster").join(script))
        .env("CR_RUN_DIR", &tools_dir)
        .env("COUNTER_JOB", prog.file())
        .env("WORK", &work)
        .env("CONTRIB", manifest_dir().join("contrib").join(contrib))
        .env("JOB_USER", "nobody")
        .stdin(std::process::Stdio::null());
    let started = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the script");
    let out = std::thread::spawn({
        let mut so = child.stdout.take().expect("stdout");
        move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut so, &mut s);
            s
        }
    });
    let err = std::thread::spawn({
        let mut se = child.stderr.take().expect("stderr");
        move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut se, &mut s);
            s
        }
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if started.elapsed() > limit {
            // The script's trap stops the daemons.
            // SAFETY: signalling the script we started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    println!("{out}{err}");
    if status.code() == Some(77) {
        assert!(
            !in_ci(),
            "CI must install the scheduler (.ci/run):\n{out}{err}"
        );
        println!("note: {script} skipped: the scheduler is not installed");
        return false;
    }
    assert!(
        status.success(),
        "{script} failed ({status}) after {:.0} s:\n{out}\n{err}",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{script} passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    true
}

/// Grid Engine: `qsub -ckpt libcr`, migrated with `qmod -sj`, resumes its count (RESTARTED=2).
#[test]
fn grid_engine_migrated_job_resumes() {
    if !enabled() {
        println!("note: set CR_CLUSTER_TESTS=1 (make check-cluster) to run the Grid Engine test");
        return;
    }
    run_script("cluster-sge", "sge.sh", "sge", Duration::from_secs(600));
}

/// Slurm: `--requeue --signal=B:USR1@60` batch script, `scontrol requeue`d, resumes its count
/// (SLURM_RESTART_COUNT=1); a second one preempted (PreemptMode=REQUEUE) does the same.
#[test]
fn slurm_requeued_job_resumes() {
    if !enabled() {
        println!("note: set CR_CLUSTER_TESTS=1 (make check-cluster) to run the Slurm test");
        return;
    }
    run_script(
        "cluster-slurm",
        "slurm.sh",
        "slurm",
        Duration::from_secs(600),
    );
}
