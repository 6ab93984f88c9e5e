//! End-to-end checkpoint/restart of the self-verifying programs in `c-tests/`, through the real
//! tools: start under `cr_run`, wait for READY, `cr_checkpoint --term`, see the original die of
//! SIGTERM, create GO, `cr_restart`, expect exit 0 and PASS.
//!
//! Run one test with e.g. `cargo test --test e2e threads -- --nocapture`.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

/// The standard cycle for the program `name`.
fn basic(name: &str) {
    let sc = Scenario::new(name);
    let job = sc.start_program(name);
    sc.checkpoint_term_restart_pass(job);
}

#[test]
fn single() {
    basic("single");
}

#[test]
fn threads() {
    basic("threads");
}

#[test]
fn omp() {
    basic("omp");
}

#[test]
fn omp_fortran() {
    if !have_command("gfortran") {
        assert!(
            !in_ci(),
            "gfortran is missing, and CI must run the Fortran OpenMP test"
        );
        println!("note: gfortran not found: skipping omp_f");
        return;
    }
    basic("omp_f");
}

#[test]
fn python_worker() {
    basic("worker.py");
}

/// The main thread is inside a 4 s nanosleep when the checkpoint hits (right after READY); after
/// restart it must keep sleeping, not fail.
#[test]
fn sleeper() {
    basic("sleeper");
}

/// Files open for reading and appending at checkpoint time; the program checks that output.log
/// has no duplicated or lost lines.
#[test]
fn fileio() {
    basic("fileio");
}

/// Three generations: checkpoint, restart, checkpoint the restored program (before GO, while it
/// is still in its work loop), restart again, then GO.
fn chain(name: &str) {
    let sc = Scenario::new(&format!("chain-{name}"));
    let mut gen1 = sc.start_program(name);
    let img1 = sc.checkpoint(gen1.pid(), &["--term"]);
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);

    let mut gen2 = sc.restart(&img1);
    let pid2 = gen2.wait_child(READY_TIMEOUT);
    assert_eq!(
        ns_pid(pid2),
        gen1.pid(),
        "the restored program must have its original pid (cr_restart --restore-pid is the default)"
    );
    wait_address_space_switched(&sc, pid2, Duration::from_secs(10));
    // /proc/PID/exe is the program again, not cr_restart (root may set it). The trampoline sets
    // it a few system calls after cr_restart's mappings are gone: wait for it (under load a
    // single look can fall in between).
    let exe_now = || std::fs::read_link(format!("/proc/{pid2}/exe")).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while exe_now().file_name() != Some(std::ffi::OsStr::new(name))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let exe = exe_now();
    assert!(
        exe.file_name() == Some(std::ffi::OsStr::new(name)),
        "/proc/{pid2}/exe of the restored program is {}, expected the program {name}",
        exe.display()
    );
    let img2 = sc.checkpoint_restored(pid2, &["--term"]);
    // The restored program dies of SIGTERM, and cr_restart dies of the same signal.
    gen2.expect_signal(SIGTERM, DEATH_TIMEOUT);
    assert!(
        !gen2.stdout().contains("PASS"),
        "generation 2 must not have finished:\n{}",
        gen2.diag()
    );

    let mut gen3 = sc.restart(&img2);
    let pid3 = gen3.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid3, Duration::from_secs(10));
    sc.go();
    gen3.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn chain_single() {
    chain("single");
}

#[test]
fn chain_threads() {
    chain("threads");
}

/// Checkpoint without --term and restart while the original still runs. As root the original
/// pid is restored in our pid namespace, where it is in use: cr_restart fails with EBUSY (16),
/// as BLCR. With --no-restore-pid two copies of one program run at once; after GO both PASS.
fn restart_while_original_runs(name: &str) {
    let sc = Scenario::new(&format!("twin-{name}"));
    let mut orig = sc.start_program(name);
    let img = sc.checkpoint(orig.pid(), &[]);
    orig.assert_running("after a checkpoint without --term");

    if is_root() {
        let argv = [sc.tools().cr_restart.as_os_str(), img.as_os_str()];
        let res = sc.run_tool("cr_restart (pid in use)", sc.command(&argv));
        let msg = res.assert_failure_code(16);
        assert!(
            msg.contains(&format!("pid {} is in use", orig.pid())),
            "the error must name the pid in use: {msg}"
        );
        orig.assert_running("after a refused restart");
    }
    let mut copy = sc.restart_with(&img, &["--no-restore-pid"]);
    let pid2 = copy.wait_child(READY_TIMEOUT);
    assert_ne!(pid2, orig.pid(), "the restored copy must have a fresh pid");
    wait_address_space_switched(&sc, pid2, Duration::from_secs(10));
    orig.assert_running("while its restored copy runs");

    sc.go();
    orig.expect_pass(RESTART_TIMEOUT);
    copy.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn restart_while_original_runs_single() {
    restart_while_original_runs("single");
}

#[test]
fn restart_while_original_runs_threads() {
    restart_while_original_runs("threads");
}

/// Address-space collisions: with ASLR off (`setarch -R`) the program and cr_restart use the same
/// default addresses (ld.so, vdso, stack, heap), so the loader must move out of the way.
fn no_aslr(name: &str) {
    assert!(have_command("setarch"), "setarch (util-linux) is needed");
    let sc = Scenario::new(&format!("noaslr-{name}")).launch_with(&["setarch", machine(), "-R"]);
    let job = sc.start_program(name);
    if let Some(p) = personality(job.pid()) {
        assert_ne!(
            p & ADDR_NO_RANDOMIZE,
            0,
            "setarch -R did not disable ASLR for pid {} (personality {p:#x})",
            job.pid()
        );
    }
    sc.checkpoint_term_restart_pass(job);
}

#[test]
fn no_aslr_single() {
    no_aslr("single");
}

#[test]
fn no_aslr_threads() {
    no_aslr("threads");
}

/// As root: every process (program, cr_run, cr_checkpoint, cr_restart) runs as nobody. As
/// another user the other tests already cover this.
fn unprivileged(name: &str) {
    if !is_root() {
        println!("note: not root: the other tests already run unprivileged");
        return;
    }
    let sc = Scenario::as_user(&format!("nobody-{name}"), NOBODY);
    let job = sc.start_program(name);
    sc.checkpoint_term_restart_pass(job);
}

#[test]
fn unprivileged_single() {
    unprivileged("single");
}

#[test]
fn unprivileged_threads() {
    unprivileged("threads");
}

/// A program linked with libcr (no cr_run, no LD_PRELOAD) is checkpointable.
fn linked(name: &str) {
    let sc = Scenario::new(name);
    let prog = sc.program(name);
    let mut job = sc.start(name, sc.plain(&prog));
    job.wait_ready();
    sc.checkpoint_term_restart_pass(job);
}

#[test]
fn linked_shared() {
    linked("linked");
}

#[test]
fn linked_static() {
    linked("linked_static");
}

/// Without -f the image is `context.PID` in cr_checkpoint's working directory.
#[test]
fn default_context_file_name() {
    let sc = Scenario::new("default-name");
    let mut job = sc.start_program("spinner");
    let pid = job.pid();
    let mut cmd = sc.command(&[
        sc.tools().cr_checkpoint.as_os_str(),
        "--term".as_ref(),
        pid.to_string().as_ref(),
    ]);
    cmd.current_dir(sc.img_dir());
    sc.run_tool("cr_checkpoint", cmd).assert_success();
    let img = sc.img_dir().join(format!("context.{pid}"));
    sc.assert_image_file(&img);
    let names: Vec<String> = fs::read_dir(sc.img_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec![format!("context.{pid}")],
        "only the image should be in the directory"
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}
