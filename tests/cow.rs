//! Copy-on-write checkpoints (`cr_checkpoint --cow`): the program runs on while a forked writer
//! writes its memory, and the image restores to the state of the stop.
//!
//! The target, `c-tests/cow_mutate.c`, rewrites its private and MAP_SHARED memory without pause
//! (keeping a sum of each thread's words) and keeps bytes queued in a pipe to itself: an image
//! whose pages were taken at different instants, or whose shared memory or pipe bytes were read
//! after the program went on, restores to sums that do not match (FAIL).

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Starts cow_mutate under cr_run with `threads` worker threads and `mib` MiB of private memory.
fn start(sc: &Scenario, threads: u32, mib: u32) -> Job {
    start_with(sc, threads, mib, &[])
}

/// [`start`] with more environment.
fn start_with(sc: &Scenario, threads: u32, mib: u32, env: &[(&str, &str)]) -> Job {
    let mut prog = sc.program("cow_mutate");
    prog.env.push(("COW_THREADS".into(), threads.to_string()));
    prog.env.push(("COW_MIB".into(), mib.to_string()));
    prog.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut job = sc.start("cow_mutate", sc.under_cr_run(&prog));
    job.wait_ready();
    job
}

/// `cr_checkpoint -v --cow FLAGS`: must succeed, in copy-on-write mode (said under -v).
fn cow_checkpoint(sc: &Scenario, pid: u32, flags: &[&str]) -> std::path::PathBuf {
    let img = sc.next_image_path();
    let mut all = vec!["-v", "--cow"];
    all.extend_from_slice(flags);
    let res = sc.checkpoint_to(pid, &all, &img);
    res.assert_success();
    assert!(
        res.stderr.contains("mode=cow stop="),
        "-v must say the checkpoint was copy-on-write:\n{}",
        res.describe()
    );
    sc.assert_image_file(&img);
    img
}

/// --cow --term: the program is killed only once the image is durable; the restored program's
/// memory, shared memory and pipe add up.
#[test]
fn cow_term_restores_the_stop() {
    let sc = Scenario::new("cow-term");
    let mut job = start(&sc, 0, 64);
    let img = cow_checkpoint(&sc, job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

/// --cow --cont: the program went on during the write and is consistent itself; the image still
/// restores to the state of the stop.
#[test]
fn cow_cont_both_pass() {
    let sc = Scenario::new("cow-cont");
    let mut job = start(&sc, 0, 64);
    let img = cow_checkpoint(&sc, job.pid(), &["--cont"]);
    job.assert_running("after a copy-on-write checkpoint");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
    // GO is there: the restored program verifies at once.
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

/// Threads rewriting their memory while the writer writes; two checkpoints of the same
/// process, the second of a process that changed since the first.
#[test]
fn cow_threads() {
    let sc = Scenario::new("cow-threads");
    let mut job = start(&sc, 4, 96);
    let first = cow_checkpoint(&sc, job.pid(), &[]);
    let second = cow_checkpoint(&sc, job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&second).expect_pass(RESTART_TIMEOUT);
    sc.restart(&first).expect_pass(RESTART_TIMEOUT);
}

/// The writer of a checkpoint whose requester is killed goes away too; the program runs on
/// untouched and no image is left. (The write must last long enough to see the writer: up to
/// three tries with more memory each.)
#[test]
fn cow_requester_killed_kills_the_writer() {
    let sc = Scenario::new("cow-requester-killed");
    let mut job = start(&sc, 0, 256);
    let pid = job.pid();
    let mut seen = false;
    for _ in 0..3 {
        let img = sc.next_image_path();
        let cmd = sc.command(&[
            sc.tools().cr_checkpoint.as_os_str(),
            "--cow".as_ref(),
            "-f".as_ref(),
            img.as_os_str(),
            pid.to_string().as_ref(),
        ]);
        let mut req = sc.start("cr_checkpoint --cow", cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut writer = None;
        while writer.is_none() && Instant::now() < deadline && req.is_running() {
            writer = children_of(pid).into_iter().find(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|s| s.trim() == "cr-writer")
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(w) = writer else {
            req.wait_exit(TOOL_TIMEOUT);
            sc.note("the checkpoint finished before its writer was seen: trying again");
            continue;
        };
        seen = true;
        req.kill();
        let gone_by = Instant::now() + Duration::from_secs(10);
        while pid_alive(w) && Instant::now() < gone_by {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !pid_alive(w),
            "the writer {w} outlived its requester: {}",
            proc_summary(w)
        );
        assert!(
            !img.exists(),
            "an image was committed without its requester"
        );
        assert_no_tmp_files(&sc.img_dir());
        break;
    }
    if !seen {
        eprintln!("note: every checkpoint finished before its writer was seen");
    }
    job.assert_running("after its checkpoint's requester was killed");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// Memory marked MADV_DONTFORK is not in a fork's snapshot: the checkpoint is written stopped
/// (said under -v) and restores completely.
#[test]
fn cow_dontfork_falls_back_to_stopped() {
    let sc = Scenario::new("cow-dontfork");
    let mut job = start_with(&sc, 1, 32, &[("COW_DONTFORK", "1")]);
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(job.pid(), &["-v", "--cow", "--term"], &img);
    res.assert_success();
    assert!(
        res.stderr
            .contains("mode=stopped(no copy-on-write: it has memory a fork does not copy"),
        "-v must say why the checkpoint was written stopped:\n{}",
        res.describe()
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}
