//! `cr_run --checkpoint-dir`: the batch-cluster workflow. A counting job (`c-tests/counter_job.c`,
//! which checks at its end that its state equals an uninterrupted run's) is started by the
//! supervisor, checkpointed periodically and on request, preempted (SIGTERM: checkpoint, end,
//! exit code), and resumed by running the same command again — also after its pids were taken,
//! from an older generation when the newest is damaged, after a "node death" without a final
//! checkpoint, and in HTCondor's exit-after-checkpoint style. Runs as root and as nobody.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Steps of the counting job and milliseconds per step.
const STEPS: u32 = 300;
const STEP_MS: u32 = 10;

fn scenario(name: &str, user: Option<(u32, u32)>) -> Option<Scenario> {
    match user {
        None => Some(Scenario::new(name)),
        Some(_) if !is_root() => {
            println!("note: not root: the other tests already run unprivileged");
            None
        }
        Some(u) => Some(Scenario::as_user(name, u)),
    }
}

/// The checkpoint directory of the scenario (owned by its user).
fn ckpt_dir(sc: &Scenario) -> PathBuf {
    let d = sc.root().join("ckpt");
    fs::create_dir_all(&d).expect("create checkpoint dir");
    if let Some((uid, gid)) = sc.user() {
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).expect("chown checkpoint dir");
    }
    d
}

/// `cr_run --checkpoint-dir DIR OPTS -- counter_job STEPS STEP_MS [CODE]`, started.
fn supervise(sc: &Scenario, dir: &Path, opts: &[&str], job_args: &[&str]) -> Job {
    let prog = sc.program("counter_job");
    let mut argv: Vec<OsString> = vec![
        sc.tools().cr_run.clone().into(),
        "--checkpoint-dir".into(),
        dir.into(),
    ];
    argv.extend(opts.iter().map(OsString::from));
    argv.push("--".into());
    argv.extend(prog.argv.iter().cloned());
    argv.extend(job_args.iter().map(OsString::from));
    sc.start("cr_run --checkpoint-dir", sc.command(&argv))
}

fn default_args() -> Vec<String> {
    vec![STEPS.to_string(), STEP_MS.to_string()]
}

/// The step numbers a run printed.
fn steps(out: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.strip_prefix("step ")?.trim().parse().ok())
        .collect()
}

/// The generation files of `dir`.
fn generations(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ckpt"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until `dir` holds at least `n` generations.
fn wait_generations(sc: &Scenario, job: &Job, dir: &Path, n: usize) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while generations(dir).len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} generations in {} after {READY_TIMEOUT:?}: {:?}\n{}\n{}",
            dir.display(),
            generations(dir),
            job.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the job to its end with the same command (it resumes); asserts it finishes correct,
/// continuing the count where the last image left it; returns its output.
fn finish(sc: &Scenario, dir: &Path, opts: &[&str], last_before: u32) -> String {
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(sc, dir, opts, &args);
    let st = job.wait_exit(RESTART_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    let out = job.stdout();
    let seen = steps(&out);
    assert!(
        st.success() && out.contains(&format!("PASS counter_job {STEPS}")),
        "the resumed job should finish correct ({st}):\n{}\n{}",
        job.diag(),
        sc.log()
    );
    let first = *seen.first().unwrap_or(&0);
    assert!(
        first > 0 && first <= last_before + 1,
        "the resumed job should continue from its image (first step {first}, the preempted \
         run printed up to {last_before}):\n{}",
        job.diag()
    );
    assert_eq!(
        seen.last().copied(),
        Some(STEPS - 1),
        "the resumed job should count to its end:\n{}",
        job.diag()
    );
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "the resumed job's steps should be consecutive:\n{}",
        job.diag()
    );
    out
}

/// Preemption (SIGTERM) after periodic checkpoints, then resume by running the same command
/// again: the count continues and the job ends correct; its images are gone afterwards.
fn preempt_and_resume(name: &str, user: Option<(u32, u32)>) {
    let Some(sc) = scenario(name, user) else {
        return;
    };
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let opts = ["--every", "1s", "-v"];
    let mut job = supervise(&sc, &dir, &opts, &args);
    job.wait_line("step 20", READY_TIMEOUT);
    wait_generations(&sc, &job, &dir, 1);
    signal_pid(job.pid(), SIGTERM);
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert_eq!(
        st.code(),
        Some(0),
        "a preempted job exits 0 (--exit-after-checkpoint's default):\n{}",
        job.diag()
    );
    let before = steps(&job.stdout());
    let last = *before.last().expect("the first run printed steps");
    assert!(
        last < STEPS - 1,
        "the job must not have finished before its preemption:\n{}",
        job.diag()
    );
    let gens = generations(&dir);
    assert!(
        !gens.is_empty() && gens.len() <= 2,
        "--keep 2 (default): {gens:?}"
    );
    // The supervisor said where the job's images are; the status lists them as good.
    let status = sc.run_tool(
        "cr_run --status",
        sc.command(&[
            sc.tools().cr_run.clone().into_os_string(),
            "--status".into(),
            dir.clone().into_os_string(),
        ]),
    );
    status.assert_success();
    assert!(
        status.stdout.contains("good") && status.stdout.contains("counter_job"),
        "{}",
        status.describe()
    );
    let out = finish(&sc, &dir, &["-v"], last);
    let _ = out;
    assert!(
        generations(&dir).is_empty(),
        "a finished job's images are removed: {:?}",
        generations(&dir)
    );
}

#[test]
fn preempted_job_resumes() {
    preempt_and_resume("sup-preempt", None);
}

#[test]
fn preempted_job_resumes_unprivileged() {
    preempt_and_resume("sup-preempt-nobody", Some(NOBODY));
}

/// `--checkpoint-signal` (USR2) takes a checkpoint and the job goes on; then the node "dies"
/// (everything SIGKILLed, no final checkpoint) and the same command resumes from that image.
#[test]
fn checkpoint_on_request_then_node_death() {
    let sc = Scenario::new("sup-node-death");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(&sc, &dir, &[], &args);
    job.wait_line("step 20", READY_TIMEOUT);
    signal_pid(job.pid(), 12); // SIGUSR2
    wait_generations(&sc, &job, &dir, 1);
    job.wait_line("step 60", READY_TIMEOUT);
    assert!(
        job.is_running(),
        "the job goes on after a requested checkpoint"
    );
    let before = steps(&job.stdout());
    job.kill();
    let last = *before.last().unwrap_or(&0);
    finish(&sc, &dir, &[], last);
}

/// A damaged newest generation is reported and the next older one is used.
#[test]
fn damaged_newest_generation_falls_back() {
    let sc = Scenario::new("sup-damaged");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(&sc, &dir, &["--keep", "2"], &args);
    job.wait_line("step 10", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    wait_generations(&sc, &job, &dir, 1);
    job.wait_line("step 40", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    wait_generations(&sc, &job, &dir, 2);
    let before = steps(&job.stdout());
    job.kill();
    let gens = generations(&dir);
    let newest = dir.join(gens.last().expect("two generations"));
    let mut bytes = fs::read(&newest).expect("read newest");
    let at = bytes.len() - 4096 - 100; // page data just before the trailer
    bytes[at] ^= 0xff;
    fs::write(&newest, &bytes).expect("damage newest");
    let mut rerun = supervise(&sc, &dir, &[], &args);
    let st = rerun.wait_exit(RESTART_TIMEOUT);
    rerun.wait_output_closed(Duration::from_secs(5));
    assert!(
        st.success() && rerun.stderr().contains("damaged image skipped"),
        "the damaged newest image must be reported and skipped:\n{}",
        rerun.diag()
    );
    let seen = steps(&rerun.stdout());
    let first = *seen.first().unwrap_or(&0);
    assert!(
        first > 0 && first <= 41 && first + 5 < *before.last().unwrap_or(&0),
        "resumed from the older generation (first step {first}):\n{}",
        rerun.diag()
    );
}

/// HTCondor's self-checkpointing: with `--exit-after-checkpoint 85 --every`, the job checkpoints
/// and exits 85; run again it resumes; eventually it finishes and exits 0.
#[test]
fn exit_after_checkpoint_cycles() {
    let sc = Scenario::new("sup-condor");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let opts = ["--every", "1s", "--exit-after-checkpoint", "85"];
    let mut runs = 0;
    let mut all = Vec::new();
    loop {
        runs += 1;
        assert!(runs < 30, "the job never finished:\n{}", sc.log());
        let mut job = supervise(&sc, &dir, &opts, &args);
        let st = job.wait_exit(RESTART_TIMEOUT);
        job.wait_output_closed(Duration::from_secs(5));
        all.extend(steps(&job.stdout()));
        match st.code() {
            Some(85) => continue,
            Some(0) => {
                assert!(job.stdout().contains("PASS counter_job"), "{}", job.diag());
                break;
            }
            _ => panic!("unexpected end ({st}):\n{}", job.diag()),
        }
    }
    assert!(
        runs >= 2,
        "the job should have been checkpointed and resumed"
    );
    assert_eq!(all.last().copied(), Some(STEPS - 1));
}

/// A job that ends by itself: cr_run exits with its code and removes its images; --no-resume
/// starts afresh even though images exist.
#[test]
fn exit_code_and_no_resume() {
    let sc = Scenario::new("sup-exit");
    let dir = ckpt_dir(&sc);
    let mut job = supervise(&sc, &dir, &["--keep-final"], &["30", "10", "3"]);
    job.wait_line("step 5", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    let st = job.wait_exit(RESTART_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(3),
        "cr_run exits as the job did:\n{}",
        job.diag()
    );
    assert!(
        !generations(&dir).is_empty(),
        "--keep-final keeps the images"
    );
    let mut again = supervise(&sc, &dir, &["--no-resume"], &["30", "10", "3"]);
    let st = again.wait_exit(RESTART_TIMEOUT);
    again.wait_output_closed(Duration::from_secs(5));
    assert_eq!(st.code(), Some(3), "{}", again.diag());
    assert_eq!(
        steps(&again.stdout()).first().copied(),
        Some(0),
        "--no-resume starts afresh:\n{}",
        again.diag()
    );
    assert!(generations(&dir).is_empty(), "images removed at the end");
}

/// Pids never block a resume: as root, the job's original pid is taken by another process when
/// it resumes; the supervisor restores it in a private pid namespace anyway.
#[test]
fn resume_while_original_pids_are_taken() {
    if !is_root() {
        println!("note: not root: pid namespaces are always used without root");
        return;
    }
    let sc = Scenario::new("sup-pid-taken");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(&sc, &dir, &[], &args);
    job.wait_line("step 10", READY_TIMEOUT);
    let program_pid = children_of(job.pid())
        .into_iter()
        .next()
        .expect("the job runs under cr_run");
    signal_pid(job.pid(), SIGTERM);
    assert_eq!(
        job.wait_exit(TOOL_TIMEOUT).code(),
        Some(0),
        "{}",
        job.diag()
    );
    let before = steps(&job.stdout());
    // Take the program's pid.
    let holder_prog = sc.program("tree_holdpid");
    let mut argv = holder_prog.argv.clone();
    argv.push(program_pid.to_string().into());
    let mut holder = sc.start("tree_holdpid", sc.command(&argv));
    holder.wait_ready();
    assert!(pid_alive(program_pid), "pid {program_pid} is held");
    finish(&sc, &dir, &[], *before.last().unwrap_or(&0));
    holder.kill();
}
