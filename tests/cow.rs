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
        // Frozen before it is looked at: a writer that already said it succeeded is still
        // listed until the control thread reaps it, and its requester may have committed by
        // then (once seen at load 33: "an image was committed without its requester").
        // SAFETY: stopping our own child process.
        unsafe { libc::kill(req.pid() as i32, libc::SIGSTOP) };
        let frozen_by = Instant::now() + Duration::from_secs(10);
        while !matches!(proc_stat(req.pid()), Some(st) if st.state == 'T' || st.state == 'Z')
            && Instant::now() < frozen_by
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if img.exists() {
            req.kill();
            req.wait_exit(TOOL_TIMEOUT);
            sc.note("the checkpoint was committed before its requester was frozen: trying again");
            continue;
        }
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
/// (said under -v) and restores completely. A stopped checkpoint through the program's bounce
/// ring (`LIBCR_BOUNCE=1`: whatever its size) comes first: the `--cow` one's `-v` says why it
/// had no ring itself (`write=aio(no bounce: --cow)` when written through the AIO ring), not
/// how the last one's ring went.
#[test]
fn cow_dontfork_falls_back_to_stopped() {
    let sc = Scenario::new("cow-dontfork");
    let mut job = start_with(&sc, 1, 32, &[("COW_DONTFORK", "1"), ("LIBCR_BOUNCE", "1")]);
    let first = sc.next_image_path();
    let res = sc.checkpoint_to(job.pid(), &["-v"], &first);
    res.assert_success();
    let ring_used = res.stderr.contains(" write=aio+bounce(thp");
    sc.note(&format!(
        "stopped checkpoint first (ring used: {ring_used}):\n{}",
        res.stderr
    ));
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(job.pid(), &["-v", "--cow", "--term"], &img);
    res.assert_success();
    assert!(
        res.stderr
            .contains("mode=stopped(no copy-on-write: it has memory a fork does not copy"),
        "-v must say why the checkpoint was written stopped:\n{}",
        res.describe()
    );
    assert!(
        !res.stderr.contains(" write=aio") || res.stderr.contains(" write=aio(no bounce: --cow)"),
        "-v must say why this checkpoint had no bounce ring (a --cow request), not how the \
         last one's went:\n{}",
        res.describe()
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

/// AnonHugePages of `pid` in KiB (`/proc/PID/smaps_rollup`).
fn anon_huge_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `cr_run --huge-pages`: the program's 64 MiB private mapping is in transparent huge pages, a
/// `--cow` checkpoint of it restores with its sums intact, lazily, with `--eager` and with
/// `--eager --huge-pages`; after `--eager --huge-pages` the memory is in huge pages again (the
/// image records the regions that had them, `REC_REGION_THP`), after a lazy restart in 4 KiB
/// pages of the image file, after `--eager` alone in 4 KiB pages advised once read (noted).
#[test]
fn cow_huge_pages() {
    let sc = Scenario::new("cow-huge-pages");
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if mode.is_empty() || mode.contains("[never]") {
        eprintln!("note: transparent huge pages are off here ({mode:?}): test skipped");
        return;
    }
    let mut prog = sc.program("cow_mutate");
    prog.env.push(("COW_MIB".into(), "64".into()));
    let mut job = sc.start(
        "cow_mutate --huge-pages",
        sc.under_cr_run_with(&prog, &["--huge-pages"]),
    );
    job.wait_ready();
    let pid = job.pid();
    let huge = anon_huge_kib(pid);
    sc.note(&format!("AnonHugePages of the program: {huge} kB"));
    // Best effort in the kernel (a free 2 MiB block at each first touch), but with the memory
    // of a test machine at least one of the 32 huge pages of the mapping comes.
    assert!(
        huge >= 2048,
        "cr_run --huge-pages: the program has no memory in huge pages (AnonHugePages {huge} kB, \
         THP {mode:?}): {}",
        proc_summary(pid)
    );
    let img = cow_checkpoint(&sc, pid, &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    // The image says which regions had huge pages (`REC_REGION_THP`), and cr_info shows it.
    let info = sc.run_tool(
        "cr_info",
        sc.command(&[
            std::ffi::OsString::from(env!("CARGO_BIN_EXE_cr_info")),
            img.clone().into(),
        ]),
    );
    assert!(
        info.stdout.contains(" anon-thp "),
        "cr_info does not show the region in huge pages as anon-thp:\n{}",
        info.stdout
    );
    for args in [
        &["--verbose"][..],
        &["--eager", "--verbose"][..],
        &["--eager", "--huge-pages", "--verbose"][..],
    ] {
        let _ = std::fs::remove_file(sc.go_file());
        let mut restored = sc.restart_with(&img, args);
        let pid2 = restored.wait_child(READY_TIMEOUT);
        assert!(
            wait_address_space_switched(&sc, pid2, RESTART_TIMEOUT),
            "cr_restart {args:?}: the restored program did not start: {}",
            restored.diag()
        );
        let after = anon_huge_kib(pid2);
        eprintln!(
            "note: cr_restart {args:?}: AnonHugePages {after} kB after restore ({huge} kB before)"
        );
        sc.note(&format!("restart {args:?}: AnonHugePages {after} kB"));
        let before_read = args.contains(&"--huge-pages");
        if before_read {
            // The image says which regions had huge pages (`REC_REGION_THP`): an eager restart
            // with --huge-pages advises them MADV_HUGEPAGE before reading them in (best effort
            // in the kernel, as above). A lazy one maps them from the image: 4 KiB file pages;
            // an eager one without it reads them into 4 KiB pages and advises them after.
            assert!(
                after >= 2048,
                "cr_restart --eager: the restored program has no memory in huge pages \
                 (AnonHugePages {after} kB, {huge} kB before the checkpoint): {}",
                proc_summary(pid2)
            );
        }
        sc.go();
        restored.expect_pass(RESTART_TIMEOUT);
        let err = restored.stderr();
        assert!(
            err.contains("advised MADV_HUGEPAGE again"),
            "cr_restart {args:?} does not say it advised the huge-page region again:\n{err}"
        );
        assert_eq!(
            err.contains("after it was restored in 4 KiB pages"),
            !before_read,
            "cr_restart {args:?}: when the advice came (before the read only with --huge-pages):\n{err}"
        );
    }
}
