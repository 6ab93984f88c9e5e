//! cr_checkpoint's options, driving the real tools: destinations (-c default, -f file/FIFO/stdout,
//! -F, -d, conflicts), commit rules (--atomic, --backup, --clobber, --noclobber; a failed
//! checkpoint leaves an existing file alone and makes no backup), post-checkpoint signals seen
//! on the target, --save-* with the executable or a mapped file gone before restart, ptrace rules.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn tool(sc: &Scenario, args: &[&str]) -> ToolResult {
    let mut argv: Vec<std::ffi::OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
    argv.extend(args.iter().map(|a| a.into()));
    sc.run_tool("cr_checkpoint", sc.command(&argv))
}

/// Restarts `img` and expects the restored spinner to PASS once GO exists.
fn restart_passes(sc: &Scenario, img: &Path) {
    sc.go();
    sc.restart(img).expect_pass(RESTART_TIMEOUT);
}

fn wait_state(pid: u32, want: char) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if proc_stat(pid).is_some_and(|s| s.state == want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn default_destination_and_dir() {
    let sc = Scenario::new("dest-default");
    let mut job = sc.start_program("spinner");
    let pid = job.pid().to_string();
    tool(&sc, &[&pid]).assert_success();
    let img = sc.root().join(format!("context.{pid}"));
    sc.assert_image_file(&img);
    let dir = sc.root().join("imgs");
    fs::create_dir(&dir).unwrap();
    tool(&sc, &["-d", dir.to_str().unwrap(), &pid]).assert_success();
    sc.assert_image_file(&dir.join(format!("context.{pid}")));
    tool(&sc, &["-f", "x", "-d", dir.to_str().unwrap(), &pid]).assert_failure_code(22);
    tool(&sc, &["-c", "-F", "1", &pid]).assert_failure_code(22);
    job.assert_running("after checkpoints without a signal");
    signal_pid(job.pid(), 15);
    job.expect_signal(15, DEATH_TIMEOUT); // its pid must be free for the restart
    restart_passes(&sc, &img);
}

#[test]
fn stdout_fd_and_fifo_destinations() {
    let sc = Scenario::new("dest-streams");
    let mut job = sc.start_program("spinner");
    let pid = job.pid().to_string();
    // -f - : the image on standard output
    let out = Command::new(&sc.tools().cr_checkpoint)
        .args(["-f", "-", &pid])
        .current_dir(sc.root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cr_checkpoint -f -: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let streamed = sc.root().join("streamed.img");
    fs::write(&streamed, &out.stdout).unwrap();
    // -F FD
    let fd_img = sc.root().join("fd.img");
    let cmd = format!(
        "exec {} -F 7 {pid} 7>{}",
        sc.tools().cr_checkpoint.display(),
        fd_img.display()
    );
    let st = Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
    // -f FIFO: a reader drains it into a file
    let fifo = sc.root().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let fifo_img = sc.root().join("fifo.img");
    let mut reader = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "exec cat {} > {}",
            fifo.display(),
            fifo_img.display()
        ))
        .spawn()
        .unwrap();
    tool(&sc, &["-f", fifo.to_str().unwrap(), &pid]).assert_success();
    assert!(reader.wait().unwrap().success());
    job.assert_running("after streaming checkpoints");
    signal_pid(job.pid(), 9);
    job.expect_signal(9, DEATH_TIMEOUT); // its pid must be free for the restarts
    sc.go();
    for img in [&streamed, &fd_img, &fifo_img] {
        sc.restart(img).expect_pass(RESTART_TIMEOUT);
    }
}

#[test]
fn clobber_noclobber_backup_rules() {
    let sc = Scenario::new("commit-rules");
    let mut job = sc.start_program("spinner");
    let pid = job.pid().to_string();
    let img = sc.root().join("ctx");
    let imgs = img.to_str().unwrap();
    tool(&sc, &["--noclobber", "-f", imgs, &pid]).assert_success();
    tool(&sc, &["--noclobber", "-f", imgs, &pid]).assert_failure_code(17);
    tool(&sc, &["--clobber", "-f", imgs, &pid]).assert_success();
    tool(&sc, &["--atomic", "-f", imgs, &pid]).assert_success();
    tool(&sc, &["--backup", "-f", imgs, &pid]).assert_success();
    tool(&sc, &["--backup", "-f", imgs, &pid]).assert_success();
    let b1 = sc.root().join("ctx.~1~");
    let b2 = sc.root().join("ctx.~2~");
    assert!(
        b1.is_file() && b2.is_file(),
        "rotating backups ctx.~1~ and ctx.~2~ expected"
    );
    let m1 = fs::metadata(&b1).unwrap().modified().unwrap();
    let m2 = fs::metadata(&b2).unwrap().modified().unwrap();
    let m0 = fs::metadata(&img).unwrap().modified().unwrap();
    assert!(m1 <= m2 && m2 <= m0, "backup timestamps must be ordered");
    let named = sc.root().join("named.bak");
    tool(
        &sc,
        &[
            "--backup=".to_string() + named.to_str().unwrap(),
            "-f".into(),
            imgs.into(),
            pid.clone(),
        ]
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    )
    .assert_success();
    assert!(named.is_file(), "--backup=NAME keeps the old image as NAME");
    // A failed checkpoint (pid 1 has no agent) leaves the existing file and makes no backup.
    let before = fs::read(&img).unwrap();
    for mode in ["--atomic", "--backup"] {
        tool(&sc, &[mode, "-f", imgs, "1"]).assert_one_line_failure();
        assert_eq!(
            fs::read(&img).unwrap(),
            before,
            "{mode}: the existing image must be untouched"
        );
        assert!(
            !sc.root().join("ctx.~3~").exists(),
            "{mode}: no backup for a failed checkpoint"
        );
    }
    assert_no_tmp_files(sc.root());
    job.assert_running("after the commit-rule checkpoints");
    signal_pid(job.pid(), 9);
    job.expect_signal(9, DEATH_TIMEOUT); // its pid must be free for the restart
    restart_passes(&sc, &img);
}

#[test]
fn post_checkpoint_signals_reach_the_target() {
    let sc = Scenario::new("signals");
    // --stop: stopped after the checkpoint; --cont lets it go on.
    let mut job = sc.start_program("spinner");
    let pid = job.pid().to_string();
    let img = sc.next_image_path();
    tool(&sc, &["--stop", "-f", img.to_str().unwrap(), &pid]).assert_success();
    assert!(
        wait_state(job.pid(), 'T'),
        "--stop must leave the target stopped"
    );
    // A stopped process is checkpointed too, and stays stopped afterwards (BLCR) ...
    tool(&sc, &["-f", img.to_str().unwrap(), &pid]).assert_success();
    assert!(
        wait_state(job.pid(), 'T'),
        "a stopped target must be stopped again after the checkpoint"
    );
    // ... unless --cont is given.
    tool(&sc, &["--cont", "-f", img.to_str().unwrap(), &pid]).assert_success();
    assert!(
        wait_state(job.pid(), 'S') || wait_state(job.pid(), 'R'),
        "--cont resumes it"
    );
    // --kill and -S 9 (last of several signal options wins): dies of SIGKILL.
    tool(
        &sc,
        &["--term", "-S", "9", "-f", img.to_str().unwrap(), &pid],
    )
    .assert_success();
    job.expect_signal(9, RESTART_TIMEOUT);
    // --term --run: last wins, no signal.
    let mut job2 = sc.start_program("spinner");
    tool(
        &sc,
        &[
            "--term",
            "--run",
            "-f",
            img.to_str().unwrap(),
            &job2.pid().to_string(),
        ],
    )
    .assert_success();
    job2.assert_running("--term --run sends nothing");
    sc.go();
    job2.expect_pass(RESTART_TIMEOUT);
}

/// --save-exe / --save-private / --save-all: the program file (and a mapped data file) may be
/// deleted or overwritten before the restart.
#[test]
fn save_options_survive_deleted_and_overwritten_files() {
    for (opt, damage) in [
        ("--save-exe", "delete"),
        ("--save-all", "overwrite"),
        ("--save-private", "delete"),
    ] {
        let sc = Scenario::new(&format!("save{opt}"));
        let prog = sc.program("spinner").copied_to(&sc.root().join("bin"));
        let mut job = sc.start(&format!("spinner copy {opt}"), sc.under_cr_run(&prog));
        job.wait_ready();
        let img = sc.next_image_path();
        tool(
            &sc,
            &[
                opt,
                "--kill",
                "-f",
                img.to_str().unwrap(),
                &job.pid().to_string(),
            ],
        )
        .assert_success();
        job.expect_signal(9, RESTART_TIMEOUT);
        let exe = prog.file().to_path_buf();
        match damage {
            "delete" => fs::remove_file(&exe).unwrap(),
            _ => fs::write(&exe, b"#!/bin/sh\nexit 99\n").unwrap(),
        }
        restart_passes(&sc, &img);
    }
}

/// Without --save-*, a deleted executable makes the restart fail with a one-line error naming it.
#[test]
fn by_reference_needs_the_file() {
    let sc = Scenario::new("save-none");
    let prog = sc.program("spinner").copied_to(&sc.root().join("bin"));
    let mut job = sc.start("spinner copy", sc.under_cr_run(&prog));
    job.wait_ready();
    let img = sc.next_image_path();
    tool(
        &sc,
        &[
            "--save-none",
            "--kill",
            "-f",
            img.to_str().unwrap(),
            &job.pid().to_string(),
        ],
    )
    .assert_success();
    job.expect_signal(9, RESTART_TIMEOUT);
    fs::remove_file(prog.file()).unwrap();
    let mut argv: Vec<PathBuf> = vec![sc.tools().cr_restart.clone()];
    argv.push(img.clone());
    let res = sc.run_tool("cr_restart", sc.command(&argv));
    let line = res.assert_failure_code(2);
    assert!(
        line.contains("spinner"),
        "the message must name the missing file: {line}"
    );
}

/// A ptraced target: exit 56 (CR_EPTRACED) by default, 3 with --ptraced-skip, success with
/// --ptraced-allow.
#[test]
fn ptraced_target_rules() {
    if !have_command("gdb") && !have_command("strace") {
        eprintln!("note: neither strace nor gdb available; ptrace rules not tested");
        return;
    }
    let sc = Scenario::new("ptraced");
    let mut job = sc.start_program("spinner");
    let pid = job.pid();
    let mut tracer = Command::new("strace")
        .args([
            "-o",
            "/dev/null",
            "-e",
            "trace=none",
            "-p",
            &pid.to_string(),
        ])
        .spawn()
        .expect("strace");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status
            .lines()
            .any(|l| l.starts_with("TracerPid:") && l.trim() != "TracerPid:\t0")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let img = sc.next_image_path();
    let p = pid.to_string();
    tool(&sc, &["-f", img.to_str().unwrap(), &p]).assert_failure_code(56);
    tool(&sc, &["--ptraced-skip", "-f", img.to_str().unwrap(), &p]).assert_failure_code(3);
    let _ = tracer.kill();
    let _ = tracer.wait();
    job.assert_running("after refused checkpoints of a ptraced process");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// `cr_checkpoint -d DIR` for two processes, then `cr_restart -d DIR` restarts both images as one
/// job (files that are not images are skipped); cr_restart exits once both have passed.
#[test]
fn dir_of_images_restarts_as_one_job() {
    let sc = Scenario::new("dir-job");
    let dir = sc.root().join("job");
    fs::create_dir(&dir).unwrap();
    let mut a = sc.start_program("spinner");
    let mut b = sc.start_program("spinner");
    for job in [&a, &b] {
        tool(
            &sc,
            &[
                "--kill",
                "-d",
                dir.to_str().unwrap(),
                &job.pid().to_string(),
            ],
        )
        .assert_success();
    }
    a.expect_signal(9, RESTART_TIMEOUT);
    b.expect_signal(9, RESTART_TIMEOUT);
    fs::write(dir.join("README"), b"not an image").unwrap();
    sc.go();
    let argv = [
        sc.tools().cr_restart.clone(),
        PathBuf::from("-d"),
        dir.clone(),
    ];
    let mut job = sc.start("cr_restart -d", sc.command(&argv));
    job.expect_pass(RESTART_TIMEOUT);
    let passes = job
        .stdout()
        .lines()
        .filter(|l| l.starts_with("PASS"))
        .count();
    assert_eq!(
        passes,
        2,
        "both restored spinners must pass:\n{}",
        job.stdout()
    );
}

/// `--time` bounds the write too: a FIFO destination whose reader never reads blocks the image
/// after a few pages; past the time the checkpoint is cancelled with ETIMEDOUT (110), and the
/// target runs on unharmed and passes.
#[test]
fn time_bounds_a_stuck_write() {
    let sc = Scenario::new("time-write");
    let mut job = sc.start_program("spinner");
    let pid = job.pid().to_string();
    let fifo = sc.root().join("stuck.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A reader that holds the FIFO open and never reads (its own job: killed on drop).
    let mut reader = sc.start(
        "stuck reader",
        sc.command(&[
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!(r#"exec 3<"{}"; echo READY; exec sleep 60"#, fifo.display()),
        ]),
    );
    let started = Instant::now();
    let res = tool(&sc, &["--time", "2", "-f", fifo.to_str().unwrap(), &pid]);
    let took = started.elapsed();
    res.assert_failure_code(110);
    assert!(
        took < Duration::from_secs(15),
        "--time 2 must give up on a stuck write soon, took {took:?}"
    );
    job.assert_running("after a checkpoint cancelled by --time");
    reader.kill();
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// BLCR's long scope aliases (--process, --group, --session) and its undocumented
/// --early-stop (a SIGSTOP sent before any thread of the target runs again).
#[test]
fn scope_aliases_and_early_stop() {
    let sc = Scenario::new("aliases");
    let mut job = sc.start_program("spinner");
    let pid = job.pid().to_string();
    let img = sc.root().join("alias.ctx");
    let imgs = img.to_str().unwrap();
    tool(&sc, &["--process", "--early-stop", "-f", imgs, &pid]).assert_success();
    assert!(
        wait_state(job.pid(), 'T'),
        "--early-stop must leave the target stopped\n{}",
        sc.log()
    );
    signal_pid(job.pid(), libc_sigcont());
    // (--session would reach the test runner's whole session.)
    tool(&sc, &["--group", "-f", imgs, &pid]).assert_success();
    let line =
        tool(&sc, &["--session", "-f", imgs, &unused_pid().to_string()]).assert_failure_code(3);
    assert!(line.contains("session"), "{line}");
    job.assert_running("after the checkpoints");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// SIGCONT's number on x86-64 Linux.
fn libc_sigcont() -> i32 {
    18
}

/// Whether the file system of `dir` takes O_DIRECT writes of aligned buffers.
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-probe");
    let ok = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(0o40000) // O_DIRECT
        .open(&probe)
        .is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// `-v` says how every image was written; on a file system that takes direct I/O the image is
/// written with O_DIRECT from start to end (a silent fallback once cost 3× in speed unseen).
#[test]
fn verbose_reports_direct_io() {
    let sc = Scenario::new("direct-io");
    let mut job = sc.start_program("spinner");
    let img = sc.img_dir().join("direct.img");
    let r = tool(
        &sc,
        &["-v", "-f", img.to_str().unwrap(), &job.pid().to_string()],
    );
    r.assert_success();
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("checkpointed to") && l.contains("io="))
        .unwrap_or_else(|| panic!("-v names the I/O mode:\n{}", r.describe()))
        .to_string();
    for phase in ["quiesce=", "meta=", "data=", "sync="] {
        assert!(line.contains(phase), "{phase} missing in {line}");
    }
    if direct_io_works(&sc.img_dir()) {
        assert!(
            line.contains("io=direct"),
            "the image should be written with O_DIRECT here: {line}"
        );
        // The page data through the AIO ring (agent::aio), or said why not.
        assert!(
            line.contains(" write=aio") || line.contains(" write=sync(io_setup errno "),
            "-v must say how the page data was written: {line}"
        );
    } else {
        println!("note: no O_DIRECT on this file system: {line}");
        assert!(line.contains("io=buffered"), "{line}");
    }
    job.assert_running("after the checkpoint");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// A target that ends while its checkpoint callbacks run (`c-tests/cb_exit.c`, linked with libcr,
/// whose signal- or thread-context callback calls `exit(7)`): cr_checkpoint exits 3 (ESRCH), as
/// BLCR did, with one line naming the process, and leaves no file behind; for `-p` and for the
/// default tree scope.
#[test]
fn target_exiting_in_its_callbacks_gives_esrch() {
    for ctx in ["signal", "thread"] {
        for scope in [&["-p"][..], &[][..]] {
            let sc = Scenario::new(&format!("cb-exit-{ctx}-{}", scope.len()));
            let mut prog = sc.program("cb_exit");
            prog.argv.push(ctx.into());
            let mut job = sc.start("cb_exit", sc.plain(&prog));
            job.wait_ready();
            let img = sc.next_image_path();
            let res = sc.checkpoint_to(job.pid(), scope, &img);
            let line = res.assert_failure_code(3);
            assert!(
                line.contains(&job.pid().to_string()),
                "the message must name process {}: {line}",
                job.pid()
            );
            let st = job.wait_exit(DEATH_TIMEOUT);
            job.wait_output_closed(Duration::from_secs(5));
            assert!(
                st.code() == Some(7) && job.stderr().contains("EXITING"),
                "the callback should have ended the program with exit(7):\n{}",
                job.diag()
            );
            assert!(!img.exists(), "no image may be left: {}", img.display());
            assert_no_tmp_files(&sc.img_dir());
        }
    }
}

/// A stream whose reader lags behind: the destination is non-blocking while the image is
/// written, so a piece of page data may take several writes. The agent's I/O counters are in
/// the image and must not change between a piece's hash and its last write (they are counted
/// aside, `image::Counted`, and stored once the page data is written): every image passes
/// `cr_info --check` and restarts. (A guard: this test also passed with the counters stored
/// between the writes, so that path was not shown to corrupt an image.)
#[test]
fn stream_to_a_slow_reader_keeps_page_data_whole() {
    let sc = Scenario::new("dest-slow-stream");
    let mut job = sc.start_program("spinner");
    let pid = job.pid();
    let mut imgs = Vec::new();
    for i in 0..4 {
        let img = sc.root().join(format!("slow{i}.img"));
        let cmd = format!(
            "'{}' -f - {pid} | (sleep 0.2; exec cat) > '{}'",
            sc.tools().cr_checkpoint.display(),
            img.display()
        );
        let st = Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
        let check = Command::new(env!("CARGO_BIN_EXE_cr_info"))
            .args(["--check", "-q"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "image {i} streamed to a slow reader: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        imgs.push(img);
    }
    job.assert_running("after streaming checkpoints");
    signal_pid(pid, 9);
    job.expect_signal(9, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&imgs[3]).expect_pass(RESTART_TIMEOUT);
}
