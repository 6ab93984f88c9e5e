//! Descriptors across checkpoint/restart, through the real tools, with self-verifying programs:
//! `c-tests/outside.c` (pipes leading outside the job take cr_restart's descriptor of the same
//! number, BLCR's rule), `c-tests/fdflags.c` (file status flags, async owner and signal, pipe
//! sizes).
//!
//! Each case runs as the current user and, when the tests run as root, as nobody (the restart
//! goes through cr_restart's user + pid namespace).

mod common;

use common::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// A pipe: (read end, write end), both close-on-exec, at numbers of 100 and more (clear of the
/// numbers the commands get them at).
fn pipe() -> (File, File) {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 into a local array; moving the new descriptors high and closing the low ones.
    unsafe {
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        for fd in &mut p {
            let high = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
            assert!(high >= 100, "cannot move a pipe end high");
            libc::close(*fd);
            *fd = high;
        }
    }
    // SAFETY: both descriptors are new and ours.
    unsafe {
        (
            File::from(OwnedFd::from_raw_fd(p[0])),
            File::from(OwnedFd::from_raw_fd(p[1])),
        )
    }
}

/// Gives the command's process `from` at descriptor number `to` (each pair), after its stdio
/// is set up.
fn with_fds(cmd: &mut Command, pairs: Vec<(i32, i32)>) {
    // SAFETY: only dup2 (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &(from, to) in &pairs {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Everything buffered in the pipe behind `r` now (every writer is gone or done).
fn drain(r: &mut File) -> String {
    // SAFETY: F_SETFL on our own descriptor.
    unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `outside` under cr_run with fd 5 and 6 on pipes of the test (READY seen), checkpointed with
/// `--term`; returns the image.
fn checkpoint_outside(sc: &Scenario) -> std::path::PathBuf {
    let prog = sc.program("outside");
    let (_r5, w5) = pipe();
    let (r6, _w6) = pipe();
    let mut cmd = sc.under_cr_run(&prog);
    with_fds(&mut cmd, vec![(w5.as_raw_fd(), 5), (r6.as_raw_fd(), 6)]);
    let mut job = sc.start("outside", cmd);
    job.wait_ready();
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    img
}

/// `cr_restart IMG` with `pairs` placed as its descriptors.
fn restart_with_fds(sc: &Scenario, img: &Path, pairs: Vec<(i32, i32)>) -> Job {
    let argv = [sc.tools().cr_restart.clone(), img.to_path_buf()];
    let mut cmd = sc.command(&argv);
    with_fds(&mut cmd, pairs);
    sc.start("cr_restart outside", cmd)
}

/// cr_restart started with its stdout, stderr, fd 5 and fd 6 on new pipes: each restored
/// descriptor uses the pipe of its number.
fn outside_takes_restarters(sc: &Scenario) {
    let img = checkpoint_outside(sc);
    let (mut r5, w5) = pipe();
    let (r6, mut w6) = pipe();
    w6.write_all(b"outside fd6\n").expect("fill the fd 6 pipe");
    let mut restarted = restart_with_fds(sc, &img, vec![(w5.as_raw_fd(), 5), (r6.as_raw_fd(), 6)]);
    drop((w5, r6, w6));
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
    let five = drain(&mut r5);
    assert_eq!(
        five,
        "outside fd5\n",
        "fd 5 must write to cr_restart's fd 5\n{}",
        restarted.diag()
    );
    assert!(
        restarted
            .stderr()
            .lines()
            .any(|l| l == "info outside stderr"),
        "fd 2 must write to cr_restart's stderr\n{}",
        restarted.diag()
    );
    assert!(
        !restarted.stdout().contains("outside fd5"),
        "fd 5 went to cr_restart's stdout\n{}",
        restarted.diag()
    );
    assert!(
        !restarted.stderr().contains("is not open here"),
        "no fallback expected\n{}",
        restarted.diag()
    );
}

/// cr_restart without fd 5 and 6: the write end goes to its stdout, the read end to its stdin,
/// and it says so on stderr.
fn outside_fallback(sc: &Scenario) {
    let img = checkpoint_outside(sc);
    let (r0, mut w0) = pipe();
    w0.write_all(b"outside fd6\n").expect("fill the stdin pipe");
    let mut restarted = restart_with_fds(sc, &img, vec![(r0.as_raw_fd(), 0)]);
    drop((r0, w0));
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
    let out = restarted.stdout();
    let err = restarted.stderr();
    assert!(
        out.lines().any(|l| l == "outside fd5"),
        "fd 5 must fall back to cr_restart's stdout\n{}",
        restarted.diag()
    );
    for (fd, what) in [(5, "standard output"), (6, "standard input")] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("fd {fd} of process"))
                    && l.contains("is not open here")
                    && l.contains(what)),
            "cr_restart must say where fd {fd} goes\n{}",
            restarted.diag()
        );
    }
}

#[test]
fn outside_pipes_take_restarters_fds() {
    outside_takes_restarters(&Scenario::new("outside"));
}

#[test]
fn outside_pipes_take_restarters_fds_unprivileged() {
    if !is_root() {
        println!("note: not root: the plain case already runs unprivileged");
        return;
    }
    outside_takes_restarters(&Scenario::as_user("nobody-outside", NOBODY));
}

#[test]
fn outside_pipes_fallback() {
    outside_fallback(&Scenario::new("outside-fallback"));
}

#[test]
fn outside_pipes_fallback_unprivileged() {
    if !is_root() {
        println!("note: not root: the plain case already runs unprivileged");
        return;
    }
    outside_fallback(&Scenario::as_user("nobody-outside-fallback", NOBODY));
}

// ---------------------------------------------------------------------------------------------
// file status flags
// ---------------------------------------------------------------------------------------------

/// O_SYNC, O_DSYNC, O_DIRECT, O_NOATIME, O_APPEND, O_NONBLOCK on files (one unlinked), O_ASYNC
/// with its owner and signal on a pipe and a FIFO, F_SETPIPE_SZ sizes: checkpoint `--term`,
/// GO, restart, PASS.
#[test]
fn status_flags() {
    let sc = Scenario::new("fdflags");
    let job = sc.start_program("fdflags");
    sc.checkpoint_term_restart_pass(job);
}

#[test]
fn status_flags_unprivileged() {
    if !is_root() {
        println!("note: not root: the plain case already runs unprivileged");
        return;
    }
    let sc = Scenario::as_user("nobody-fdflags", NOBODY);
    let job = sc.start_program("fdflags");
    sc.checkpoint_term_restart_pass(job);
}

/// With fresh pids the owner is still the process itself.
#[test]
fn status_flags_fresh_pid() {
    let sc = Scenario::new("fdflags-fresh-pid");
    let mut job = sc.start_program("fdflags");
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart_with(&img, &["--no-restore-pid"])
        .expect_pass(RESTART_TIMEOUT);
}
