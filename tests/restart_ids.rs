//! cr_restart and the ids it takes over (BLCR's pid rules), through the real tools on
//! `c-tests/spinner.c`, `c-tests/tree.c` and `c-tests/tree_holdpid.c`:
//!
//! * a pid still held by an unreaped zombie (right after `cr_checkpoint --term`, or under a
//!   container init that reaps slowly) is waited for a few seconds: a zombie reaped meanwhile
//!   lets the restart go on; one that stays gives EBUSY (16), naming the zombie and its parent;
//! * so is a pid held by a process on its way out that cannot be reaped yet (its main thread
//!   ended, another thread still runs): the message says so, and the restart goes on once it
//!   is gone;
//!
//! Ids can only be taken over as root (unprivileged restarts run in a private pid namespace
//! where every id is free): these tests say so and return without root.
//!
//! Run one test with e.g. `cargo test --test restart_ids zombie -- --nocapture`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a restored spinner that should just run (GO already there) may take to PASS.
const PASS_TIMEOUT: Duration = Duration::from_secs(20);
/// cr_restart's bounded wait for ids held by processes on their way out (`ids::BUSY_WAIT`).
const BUSY_WAIT: Duration = Duration::from_secs(5);
const SIGUSR1: i32 = 10;

fn s(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
        .to_string()
}

fn not_root() -> bool {
    if is_root() {
        return false;
    }
    println!("note: not root: original ids are restored in a private pid namespace, never in use");
    true
}

/// `cr_restart ARGS` as a command of the scenario.
fn restart_cmd(sc: &Scenario, args: &[&str]) -> std::process::Command {
    let mut argv = vec![s(&sc.tools().cr_restart)];
    argv.extend(args.iter().map(|a| a.to_string()));
    sc.command(&argv)
}

/// A spinner checkpointed with --term (GO not there yet), gone: its image and its pid.
fn spinner_image(sc: &Scenario) -> (PathBuf, u32) {
    let mut sp = sc.start_program("spinner");
    let pid = sp.pid();
    let img = sc.checkpoint(pid, &["--term"]);
    sp.expect_signal(SIGTERM, DEATH_TIMEOUT);
    assert!(
        wait_until(DEATH_TIMEOUT, || proc_stat(pid).is_none()),
        "the checkpointed spinner {pid} should be gone:\n{}",
        sc.log()
    );
    (img, pid)
}

/// `tree_holdpid -z PID`: pid PID held by its unreaped zombie child (READY once it is one).
fn zombie_holder(sc: &Scenario, pid: u32) -> Job {
    holder(sc, "-z", pid)
}

/// `tree_holdpid MODE PID` (READY seen); the pid must show as a zombie child of it.
fn holder(sc: &Scenario, mode: &str, pid: u32) -> Job {
    let mut prog = sc.program("tree_holdpid");
    prog.argv.push(mode.into());
    prog.argv.push(pid.to_string().into());
    let mut h = sc.start(&format!("tree_holdpid {mode}"), sc.plain(&prog));
    h.wait_ready();
    let st = proc_stat(pid);
    assert!(
        matches!(&st, Some(st) if st.state == 'Z' && st.ppid == h.pid()),
        "pid {pid} should be a zombie of tree_holdpid {}: {st:?}\n{}",
        h.pid(),
        h.diag()
    );
    h
}

/// Polls `cond` until it holds; false after `timeout`.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The spinner's pid is held by a zombie that its parent reaps while cr_restart waits: the
/// restart says what it waits for (the zombie, its state and parent), then goes on.
#[test]
fn zombie_reaped_within_the_wait() {
    if not_root() {
        return;
    }
    let sc = Scenario::new("ids-zombie-reaped");
    let (img, pid) = spinner_image(&sc);
    let mut holder = zombie_holder(&sc, pid);
    let mut rs = sc.start("cr_restart", restart_cmd(&sc, &[&s(&img)]));
    let want = format!(
        "pid {pid} is in use by zombie {pid} (tree_holdpid, state Z: zombie, parent {} (tree_holdpid)",
        holder.pid()
    );
    assert!(
        wait_until(BUSY_WAIT, || rs.stderr().contains(&want)),
        "cr_restart should say it waits for the zombie ({want}):\n{}",
        rs.diag()
    );
    assert!(
        rs.stderr().contains("waiting up to"),
        "the message should say that cr_restart waits:\n{}",
        rs.diag()
    );
    signal_pid(holder.pid(), SIGUSR1);
    holder.wait_line("REAPED", DEATH_TIMEOUT);
    sc.go();
    rs.expect_pass(PASS_TIMEOUT);
    holder.kill();
}

/// A zombie that nobody reaps: after the bounded wait the restart fails with EBUSY (16) naming
/// the zombie, its state and its parent; nothing of the image ran, the zombie is left alone.
#[test]
fn zombie_that_stays_is_named() {
    if not_root() {
        return;
    }
    let sc = Scenario::new("ids-zombie-stays");
    let (img, pid) = spinner_image(&sc);
    let mut holder = zombie_holder(&sc, pid);
    let started = Instant::now();
    let r = sc.run_tool("cr_restart -q", restart_cmd(&sc, &["-q", &s(&img)]));
    let took = started.elapsed();
    let line = r.assert_failure_code(16);
    let want = format!(
        "pid {pid} is in use by zombie {pid} (tree_holdpid, state Z: zombie, parent {} (tree_holdpid)",
        holder.pid()
    );
    assert!(
        line.contains(&want),
        "the error should name the zombie ({want}): {line}"
    );
    assert!(
        took >= BUSY_WAIT - Duration::from_millis(500),
        "cr_restart should wait about {BUSY_WAIT:?} for the zombie (took {took:?})"
    );
    assert!(
        !r.stdout.contains("READY") && !r.stdout.contains("PASS"),
        "the restored program must not have run:\n{}",
        r.describe()
    );
    assert_eq!(
        proc_stat(pid).map(|st| (st.state, st.ppid)),
        Some(('Z', holder.pid())),
        "the zombie must be left alone"
    );
    holder.kill();
}

/// The spinner's pid is held by a process whose main thread has ended while another thread still
/// runs (it shows as a zombie its parent cannot reap yet): cr_restart names it as exiting, with
/// its running thread, waits, and goes on once the thread ends and the process is reaped.
#[test]
fn exiting_process_within_the_wait() {
    if not_root() {
        return;
    }
    let sc = Scenario::new("ids-exiting");
    let (img, pid) = spinner_image(&sc);
    let mut holder = holder(&sc, "-x", pid);
    let mut rs = sc.start("cr_restart", restart_cmd(&sc, &[&s(&img)]));
    let want = format!(
        "pid {pid} is in use by process {pid} (tree_holdpid, state Z: zombie, exiting: its main thread has ended, 1 other thread still runs, parent {} (tree_holdpid))",
        holder.pid()
    );
    assert!(
        wait_until(BUSY_WAIT, || rs.stderr().contains(&want)),
        "cr_restart should say it waits for the exiting process ({want}):\n{}",
        rs.diag()
    );
    signal_pid(holder.pid(), SIGUSR1);
    holder.wait_line("REAPED", DEATH_TIMEOUT);
    sc.go();
    rs.expect_pass(PASS_TIMEOUT);
    holder.kill();
}
