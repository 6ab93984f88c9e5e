//! Signal and per-thread kernel state across checkpoint/restart, through the real tools, with
//! self-verifying programs: `c-tests/pending.c` (pending signals, private and process-wide,
//! standard and queued real-time ones with their siginfo), `c-tests/prctl.c` (per-thread and
//! per-process `prctl` settings, thread names and the personality), `c-tests/fpu_callback.c`
//! (a callback's x87/SSE/AVX state across its `cr_checkpoint()`; linked with libcr),
//! `c-tests/sig64.c` (the program's own disposition for the checkpoint signal), `c-tests/sigurg.c`
//! (the program's own SIGURG, which the agent's wake-up shares), `c-tests/itimer.c`
//! (a periodic ITIMER_REAL that expired while the program was stopped).
//!
//! Each case runs the usual cycle (checkpoint `--term`, restart, GO, PASS); the `_continues`
//! cases check that a checkpoint leaves the original's state alone (a checkpoint without
//! `--term`, a restored copy beside it, both PASS); `_unprivileged` runs everything as nobody
//! (the restart goes through cr_restart's user + pid namespace); `_chain` checkpoints the
//! restored process again (the state must survive two generations).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Checkpoint `--term`, GO, restart: PASS.
fn cycle(sc: &Scenario, name: &str) {
    let job = sc.start_program(name);
    sc.checkpoint_term_restart_pass(job);
}

/// Checkpoint without `--term`: the original goes on; a restored copy (fresh pid) runs beside
/// it; after GO both PASS.
fn continues(name: &str) {
    let sc = Scenario::new(&format!("{name}-continues"));
    let mut orig = sc.start_program(name);
    let img = sc.checkpoint(orig.pid(), &[]);
    orig.assert_running("after a checkpoint without --term");
    let mut copy = sc.restart_with(&img, &["--no-restore-pid"]);
    let pid2 = copy.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid2, Duration::from_secs(10));
    sc.go();
    orig.expect_pass(RESTART_TIMEOUT);
    copy.expect_pass(RESTART_TIMEOUT);
}

/// As nobody: cr_restart restores through its own user + pid namespace.
fn unprivileged(name: &str) {
    if !is_root() {
        println!("note: not root: the plain cycle already runs unprivileged");
        return;
    }
    cycle(&Scenario::as_user(&format!("nobody-{name}"), NOBODY), name);
}

/// Two generations: the restored process is checkpointed again before GO.
fn chain(name: &str) {
    chain_in(&Scenario::new(&format!("chain-{name}")), name);
}

/// [`chain`] as nobody (restored in cr_restart's namespace, checkpointed there again).
fn chain_unprivileged(name: &str) {
    if !is_root() {
        println!("note: not root: the plain chain already runs unprivileged");
        return;
    }
    chain_in(
        &Scenario::as_user(&format!("nobody-chain-{name}"), NOBODY),
        name,
    );
}

fn chain_in(sc: &Scenario, name: &str) {
    let mut gen1 = sc.start_program(name);
    let img1 = sc.checkpoint(gen1.pid(), &["--term"]);
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let mut gen2 = sc.restart(&img1);
    let pid2 = gen2.wait_child(READY_TIMEOUT);
    wait_address_space_switched(sc, pid2, Duration::from_secs(10));
    let img2 = sc.checkpoint_restored(pid2, &["--term"]);
    gen2.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&img2).expect_pass(RESTART_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// pending signals
// ---------------------------------------------------------------------------------------------

/// Blocked standard signals (one instance each) and queued real-time signals with their
/// siginfo and order, pending for one thread or for the process.
#[test]
fn pending_signals() {
    cycle(&Scenario::new("pending"), "pending");
}

#[test]
fn pending_signals_continues() {
    continues("pending");
}

#[test]
fn pending_signals_unprivileged() {
    unprivileged("pending");
}

#[test]
fn pending_signals_chain() {
    chain("pending");
}

// ---------------------------------------------------------------------------------------------
// prctl settings and personality
// ---------------------------------------------------------------------------------------------

/// Per thread: names, timer slack, parent-death signal, no_new_privs, keep-caps, personality;
/// per process: dumpable, child subreaper, THP disable.
#[test]
fn prctl_state() {
    cycle(&Scenario::new("prctl"), "prctl");
}

#[test]
fn prctl_state_continues() {
    continues("prctl");
}

#[test]
fn prctl_state_unprivileged() {
    unprivileged("prctl");
}

#[test]
fn prctl_state_chain() {
    chain("prctl");
}

/// Not dumpable, as nobody, in cr_restart's namespace: cr_checkpoint still finds the process.
#[test]
fn prctl_state_unprivileged_chain() {
    chain_unprivileged("prctl");
}

// ---------------------------------------------------------------------------------------------
// FPU state across cr_checkpoint() in callbacks
// ---------------------------------------------------------------------------------------------

/// `c-tests/NAME.c` linked with libcr (`-lcr`, rpath to the build's library), built into the
/// scenario's `bin/`.
fn build_linked(sc: &Scenario, name: &str) -> PathBuf {
    let out = sc.root().join("bin").join(name);
    let lib = lib_dir();
    let res = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-I"])
        .arg(include_dir())
        .arg("-o")
        .arg(&out)
        .arg(c_tests_dir().join(format!("{name}.c")))
        .arg(format!("-L{}", lib.display()))
        .arg("-lcr")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc for {name}: {e}"));
    assert!(
        res.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

/// The linked program `name`, started plainly (the agent is linked in); READY seen.
fn start_linked(sc: &Scenario, name: &str) -> Job {
    let exe = build_linked(sc, name);
    let mut job = sc.start(name, sc.command(&[exe]));
    job.wait_ready();
    job
}

/// A signal-context and a thread-context callback leave values on the x87 stack, set the x87
/// control word and MXCSR and fill XMM/YMM0-15, then call cr_checkpoint(): after a restart
/// they find all of it again.
#[test]
fn fpu_state_in_callbacks() {
    let sc = Scenario::new("fpu-callback");
    let job = start_linked(&sc, "fpu_callback");
    sc.checkpoint_term_restart_pass(job);
}

/// The same in the process that continues after the checkpoint (and its restored copy).
#[test]
fn fpu_state_in_callbacks_continues() {
    let sc = Scenario::new("fpu-callback-continues");
    let mut orig = start_linked(&sc, "fpu_callback");
    let img = sc.checkpoint(orig.pid(), &[]);
    orig.assert_running("after a checkpoint without --term");
    let mut copy = sc.restart_with(&img, &["--no-restore-pid"]);
    let pid2 = copy.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid2, Duration::from_secs(10));
    sc.go();
    orig.expect_pass(RESTART_TIMEOUT);
    copy.expect_pass(RESTART_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// signal 64 belongs to the program too
// ---------------------------------------------------------------------------------------------

/// `cr_run ./sig64 MODE`; READY seen.
fn start_sig64(sc: &Scenario, mode: &str) -> Job {
    let mut prog = sc.program("sig64");
    prog.argv.push(mode.into());
    let mut job = sc.start("sig64", sc.under_cr_run(&prog));
    job.wait_ready();
    job
}

/// The program queries, ignores and handles signal 64 (raise, sigqueue from itself and from a
/// child; SA_SIGINFO, sa_mask, SA_RESETHAND, SA_NODEFER, a garbage sa_restorer); its handler is
/// still installed after a restart, never sees a checkpoint request, and checkpoints work.
#[test]
fn sig64_handler() {
    let sc = Scenario::new("sig64-handler");
    sc.checkpoint_term_restart_pass(start_sig64(&sc, "handler"));
}

/// SIG_IGN for signal 64 survives the restart (and the checkpoint ignores it).
#[test]
fn sig64_ignored() {
    let sc = Scenario::new("sig64-ign");
    sc.checkpoint_term_restart_pass(start_sig64(&sc, "ign"));
}

/// SIG_DFL: a signal 64 from anyone terminates the process with signal 64, after a restart too.
#[test]
fn sig64_default() {
    let sc = Scenario::new("sig64-dfl");
    sc.checkpoint_term_restart_pass(start_sig64(&sc, "dfl"));
}

/// The restored process, with the program's handler on signal 64, is checkpointed again.
#[test]
fn sig64_handler_chain() {
    let sc = Scenario::new("sig64-chain");
    let mut gen1 = start_sig64(&sc, "handler");
    let img1 = sc.checkpoint(gen1.pid(), &["--term"]);
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let mut gen2 = sc.restart(&img1);
    let pid2 = gen2.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid2, Duration::from_secs(10));
    let img2 = sc.checkpoint_restored(pid2, &["--term"]);
    gen2.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&img2).expect_pass(RESTART_TIMEOUT);
}

#[test]
fn sig64_handler_unprivileged() {
    if !is_root() {
        println!("note: not root: sig64_handler already runs unprivileged");
        return;
    }
    let sc = Scenario::as_user("nobody-sig64", NOBODY);
    sc.checkpoint_term_restart_pass(start_sig64(&sc, "handler"));
}

// ---------------------------------------------------------------------------------------------
// SIGURG, the lazy agent's wake-up signal, belongs to the program as before
// ---------------------------------------------------------------------------------------------

/// `cr_run ./sigurg MODE`; READY seen.
fn start_sigurg(sc: &Scenario, mode: &str) -> Job {
    let mut prog = sc.program("sigurg");
    prog.argv.push(mode.into());
    let mut job = sc.start("sigurg", sc.under_cr_run(&prog));
    job.wait_ready();
    job
}

/// The program's SIGURG handler gets raise, sigqueue, a child's kill and out-of-band TCP data
/// as without the agent, interrupts a read without SA_RESTART, never sees the checkpoint's
/// wake-up, and is still installed after a restart.
#[test]
fn sigurg_handler() {
    let sc = Scenario::new("sigurg-handler");
    sc.checkpoint_term_restart_pass(start_sigurg(&sc, "handler"));
}

/// SIG_DFL: SIGURG is ignored, before and after a restart; the wake-up works.
#[test]
fn sigurg_default() {
    let sc = Scenario::new("sigurg-dfl");
    sc.checkpoint_term_restart_pass(start_sigurg(&sc, "dfl"));
}

/// SIG_IGN set by the program survives its exec (as without the agent); the process and its
/// fork child, which cannot be woken, are checkpointed.
#[test]
fn sigurg_ignored_across_exec() {
    let sc = Scenario::new("sigurg-ign");
    sc.checkpoint_term_restart_pass(start_sigurg(&sc, "ign"));
}

/// SIGURG blocked across exec: the new image binds its control socket at once.
#[test]
fn sigurg_blocked_across_exec() {
    let sc = Scenario::new("sigurg-blocked");
    sc.checkpoint_term_restart_pass(start_sigurg(&sc, "blocked"));
}

/// SIGURG blocked with sigprocmask (and inherited by a fork child): both are checkpointed.
#[test]
fn sigurg_masked() {
    let sc = Scenario::new("sigurg-masked");
    sc.checkpoint_term_restart_pass(start_sigurg(&sc, "masked"));
}

/// SIGURG blocked by a raw system call (no wrapper sees it): the wake-up cannot arrive, and
/// cr_checkpoint says so (ETIMEDOUT, exit 110) within a few seconds instead of waiting; the
/// program goes on unharmed, and the wake-up still pending when it unblocks SIGURG never reaches
/// its handler.
#[test]
fn sigurg_raw_block_fails_clearly() {
    let sc = Scenario::new("sigurg-rawblock");
    let mut job = start_sigurg(&sc, "rawblock");
    let img = sc.next_image_path();
    let started = std::time::Instant::now();
    let res = sc.checkpoint_to(job.pid(), &[], &img);
    let line = res.assert_failure_code(110);
    assert!(
        line.contains("did not bind its control socket when woken")
            && line.contains("signal 23 caught, blocked in 1 of 1 threads"),
        "unexpected message: {line}\n{}",
        res.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the refusal took {:?}",
        started.elapsed()
    );
    job.assert_running("after the refused checkpoint");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// the periodic ITIMER_REAL after a restart (issue 13's "lost interval timer")
// ---------------------------------------------------------------------------------------------

/// `cr_run ./itimer MODE` through checkpoint `--term`, GO, restart: PASS (at least 20 more
/// SIGALRMs of the 10 ms timer after the restart).
fn itimer_cycle(sc: &Scenario, mode: &str) {
    let mut prog = sc.program("itimer");
    prog.argv.push(mode.into());
    let mut job = sc.start("itimer", sc.under_cr_run(&prog));
    job.wait_ready();
    sc.checkpoint_term_restart_pass(job);
}

/// SIGALRM blocked and pending at checkpoint time: the expired periodic timer (it reads 0 until
/// its SIGALRM is taken) must come back armed, not disarmed.
#[test]
fn itimer_expired_while_blocked() {
    itimer_cycle(&Scenario::new("itimer-blocked"), "blocked");
}

/// The case, repeated: a 10 ms timer with a handler (plus a SIGUSR1 handler on an
/// alternate stack and SIGUSR2 blocked), checkpointed with --term; sometimes the timer expires
/// while the program is stopped. As root and as nobody (restart through the namespace).
#[test]
fn itimer_running_repeated() {
    for i in 0..8 {
        itimer_cycle(&Scenario::new(&format!("itimer-running-{i}")), "running");
    }
}

#[test]
fn itimer_running_repeated_unprivileged() {
    if !is_root() {
        println!("note: not root: itimer_running_repeated already runs unprivileged");
        return;
    }
    for i in 0..8 {
        itimer_cycle(
            &Scenario::as_user(&format!("nobody-itimer-{i}"), NOBODY),
            "running",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// waits whose mask blocks the checkpoint signal
// ---------------------------------------------------------------------------------------------

/// `cr_run ./mask_wait MODE` waits with every signal but SIGUSR1 blocked: a checkpoint still
/// reaches it (the mask passed to the wait leaves signal 64 out); SIGUSR1 ends the wait (PASS),
/// in the original and in a restored copy.
#[test]
fn checkpoint_reaches_waits_with_a_full_mask() {
    const SIGUSR1: i32 = 10;
    for mode in ["sigsuspend", "ppoll", "pselect", "epoll_pwait"] {
        let sc = Scenario::new(&format!("mask-wait-{mode}"));
        let mut prog = sc.program("mask_wait");
        prog.argv.push(mode.into());
        let mut job = sc.start(mode, sc.under_cr_run(&prog));
        job.wait_ready();
        let img = sc.checkpoint(job.pid(), &[]);
        signal_pid(job.pid(), SIGUSR1);
        job.expect_pass(RESTART_TIMEOUT);
        let mut copy = sc.restart_with(&img, &["--no-restore-pid"]);
        let pid2 = copy.wait_child(READY_TIMEOUT);
        wait_address_space_switched(&sc, pid2, Duration::from_secs(10));
        signal_pid(pid2, SIGUSR1);
        copy.expect_pass(RESTART_TIMEOUT);
    }
}
