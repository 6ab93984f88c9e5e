//! `cr_run --checkpoint-dir --incremental` (issue 14): each generation is a delta of the one
//! before (one delta per process of the job's tree image), a full one every `--max-chain`;
//! `--keep` keeps the generations a kept delta needs; the job resumes from a chain; with
//! `--store` the chain is shipped and fetched back with it. The job is the counting job of
//! tests/supervise.rs (`c-tests/counter_job.c`), which checks at its end that its state equals
//! an uninterrupted run's, here with 16 MiB of ballast that only the chain's full image holds.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Steps of the counting job and milliseconds per step.
const STEPS: u32 = 800;
const STEP_MS: u32 = 10;
/// MiB of memory the job fills at its start and checks at its end (only full images hold it).
const BALLAST_MB: u32 = 16;

/// The checkpoint directory of the scenario.
fn ckpt_dir(sc: &Scenario, name: &str) -> PathBuf {
    let d = sc.root().join(name);
    fs::create_dir_all(&d).expect("create checkpoint dir");
    d
}

/// `cr_run --checkpoint-dir DIR -v --incremental OPTS -- counter_job STEPS STEP_MS`, started.
fn supervise(sc: &Scenario, dir: &Path, opts: &[&str]) -> Job {
    let prog = sc.program("counter_job");
    let mut argv: Vec<OsString> = vec![
        sc.tools().cr_run.clone().into(),
        "--checkpoint-dir".into(),
        dir.into(),
        "-v".into(),
        "--incremental".into(),
    ];
    argv.extend(opts.iter().map(OsString::from));
    argv.push("--".into());
    argv.extend(prog.argv.iter().cloned());
    argv.push(STEPS.to_string().into());
    argv.push(STEP_MS.to_string().into());
    argv.push("0".into());
    argv.push(BALLAST_MB.to_string().into());
    sc.start("cr_run --checkpoint-dir --incremental", sc.command(&argv))
}

/// The step numbers a run printed.
fn steps(out: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.strip_prefix("step ")?.trim().parse().ok())
        .collect()
}

/// The generation files of `dir`, sorted (oldest first).
fn generations(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ckpt") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The sequence numbers of the generations in `dir`.
fn seqs(dir: &Path) -> Vec<u64> {
    generations(dir)
        .iter()
        .filter_map(|n| n.strip_suffix(".ckpt")?.rsplit('.').next()?.parse().ok())
        .collect()
}

/// The size of generation `seq` in `dir`.
fn size_of(dir: &Path, seq: u64) -> u64 {
    generations(dir)
        .iter()
        .find(|n| n.ends_with(&format!(".{seq:06}.ckpt")))
        .and_then(|n| fs::metadata(dir.join(n)).ok())
        .map_or(0, |m| m.len())
}

/// Asks for a checkpoint (SIGUSR2) and waits until the supervisor reported generation `seq`
/// (after pruning); returns its line about the job's process.
fn checkpoint(sc: &Scenario, job: &mut Job, seq: u64) -> String {
    signal_pid(job.pid(), 12);
    let want = format!("checkpoint {seq}: process");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let err = job.stderr();
        if let Some(l) = err.lines().find(|l| l.contains(&want)) {
            // The supervisor prunes before it reports the checkpoint.
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline && job.is_running(),
            "no checkpoint {seq}:\n{}\n{}",
            job.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the job to its end with the same command (it resumes); asserts it finishes correct,
/// continuing the count where the last image left it.
fn finish(sc: &Scenario, dir: &Path, opts: &[&str], last_before: u32) -> String {
    let mut job = supervise(sc, dir, opts);
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
    job.stderr()
}

/// Full, delta, delta, full (`--max-chain 3`), delta at the preemption; `--keep 1` keeps the
/// chain the newest generation needs and drops what no kept one needs; the deltas are small;
/// `cr_run --status` says which generation each delta is of; the job resumes from the chain.
#[test]
fn incremental_generations_keep_their_chain_and_resume() {
    let sc = Scenario::new("sup-incr-chain");
    let dir = ckpt_dir(&sc, "ckpt");
    let opts = ["--max-chain", "3", "--keep", "1"];
    let mut job = supervise(&sc, &dir, &opts);
    job.wait_line("step 10", READY_TIMEOUT);
    let l1 = checkpoint(&sc, &mut job, 1);
    assert!(
        l1.contains("incr=full("),
        "the first generation is a full image:\n{}",
        job.diag()
    );
    job.wait_line("step 60", READY_TIMEOUT);
    let l2 = checkpoint(&sc, &mut job, 2);
    job.wait_line("step 110", READY_TIMEOUT);
    let l3 = checkpoint(&sc, &mut job, 3);
    for l in [&l2, &l3] {
        assert!(
            l.contains("incr=delta("),
            "generations 2 and 3 are deltas:\n{}",
            job.diag()
        );
    }
    assert_eq!(
        seqs(&dir),
        vec![1, 2, 3],
        "--keep 1 keeps generation 3 and the chain it needs:\n{}",
        job.diag()
    );
    let (full, d2, d3) = (size_of(&dir, 1), size_of(&dir, 2), size_of(&dir, 3));
    // The job writes ~50 pages between two checkpoints; the full image holds its ballast.
    assert!(
        full > u64::from(BALLAST_MB) << 20 && d2 < 4 << 20 && d3 < 4 << 20,
        "deltas of {d2} and {d3} bytes (full image: {full})"
    );
    let status = sc.cr_run_status(&dir);
    assert!(
        status.stdout.contains("delta of 2") && status.stdout.contains("delta of 1"),
        "{}",
        status.describe()
    );
    job.wait_line("step 160", READY_TIMEOUT);
    let l4 = checkpoint(&sc, &mut job, 4);
    assert!(
        l4.contains("incr=full(--max-chain 3 reached)"),
        "every third generation is full:\n{}",
        job.diag()
    );
    assert_eq!(
        seqs(&dir),
        vec![4],
        "a full generation frees its predecessors:\n{}",
        job.diag()
    );
    job.wait_line("step 210", READY_TIMEOUT);
    signal_pid(job.pid(), SIGTERM); // preemption: a delta of 4, the job ends
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{}", job.diag());
    let err = job.stderr();
    assert!(
        err.lines()
            .any(|l| l.contains("checkpoint 5: process") && l.contains("incr=delta(")),
        "the preemption's image is a delta:\n{}",
        job.diag()
    );
    assert_eq!(seqs(&dir), vec![4, 5], "{}", job.diag());
    let last = *steps(&job.stdout()).last().expect("steps");
    finish(&sc, &dir, &opts, last);
    assert!(generations(&dir).is_empty(), "{:?}", generations(&dir));
}

/// With `--store` and `--keep 1`, the store holds the whole chain of its newest generation; a
/// job resuming on a node with an empty directory fetches the chain and finishes correct.
#[test]
fn incremental_chain_ships_and_resumes_elsewhere() {
    let sc = Scenario::new("sup-incr-store");
    let dir = ckpt_dir(&sc, "ckpt");
    let store_dir = sc.root().join("store/jobs");
    let url = format!("file://{}", store_dir.display());
    let opts = ["--keep", "1", "--store", url.as_str()];
    let mut job = supervise(&sc, &dir, &opts);
    job.wait_line("step 10", READY_TIMEOUT);
    checkpoint(&sc, &mut job, 1);
    job.wait_line("step 60", READY_TIMEOUT);
    let l2 = checkpoint(&sc, &mut job, 2);
    assert!(l2.contains("incr=delta("), "{}", job.diag());
    job.wait_line("step 110", READY_TIMEOUT);
    signal_pid(job.pid(), SIGTERM); // a delta of 2, shipped before cr_run exits
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{}", job.diag());
    assert_eq!(
        seqs(&store_dir),
        vec![1, 2, 3],
        "the store keeps the chain of its newest generation:\n{}",
        job.diag()
    );
    let last = *steps(&job.stdout()).last().expect("steps");
    fs::remove_dir_all(&dir).expect("remove the dead node's directory");
    let dir2 = ckpt_dir(&sc, "elsewhere");
    let err = finish(&sc, &dir2, &opts, last);
    assert!(
        err.contains("fetched"),
        "the chain came from the store:\n{err}"
    );
    let first_resumed = err.contains("resuming") || err.contains("restoring");
    assert!(first_resumed, "{err}");
    assert!(
        seqs(&store_dir).is_empty(),
        "a finished job's images leave the store: {:?}",
        seqs(&store_dir)
    );
}
