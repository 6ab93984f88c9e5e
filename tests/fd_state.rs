//! Descriptors across checkpoint/restart, through the real tools, with self-verifying programs:
//! `c-tests/outside.c` (pipes, a unix socket and a TCP connection leading outside the job take
//! cr_restart's descriptor of the same number, BLCR's rule), `c-tests/fdflags.c` (file status flags, async owner and signal, pipe
//! sizes), `c-tests/fifo1.c` (named FIFOs held by one process: `O_RDWR`, both ends, renamed or
//! linked after open or renamed before the restart, only one end with the other outside the
//! job).
//!
//! Each case runs as the current user and, when the tests run as root, as nobody (the restart
//! goes through cr_restart's user + pid namespace).

mod common;

use common::*;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
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

/// Moves `fd` to a number of 100 or more, close-on-exec (clear of the numbers the commands get
/// descriptors at).
fn high<T: FromRawFd + AsRawFd>(s: T) -> T {
    // SAFETY: duplicating a descriptor we own; the original is dropped (closed) after.
    let fd = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    assert!(fd >= 100, "cannot move a socket high");
    drop(s);
    // SAFETY: fd is new and ours.
    unsafe { T::from_raw_fd(fd) }
}

/// A connected unix stream socket pair and a loopback TCP connection (client, accepted end):
/// (unix end given away, unix end kept, TCP end given away, TCP end kept).
fn sockets() -> (UnixStream, UnixStream, TcpStream, TcpStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a TCP listener");
    let c = TcpStream::connect(l.local_addr().expect("listener address")).expect("connect");
    let (d, _) = l.accept().expect("accept");
    (high(a), high(b), high(c), high(d))
}

/// A pseudo-terminal: (master, slave), both close-on-exec, at numbers of 100 and more.
fn pty() -> (File, File) {
    let (mut m, mut sl) = (-1, -1);
    // SAFETY: openpty into two locals (no name, settings or size asked for).
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut sl,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and ours.
    let (m, sl) = unsafe { (File::from_raw_fd(m), File::from_raw_fd(sl)) };
    (high(m), high(sl))
}

/// `outside` under cr_run with fd 5 and 6 on pipes of the test (and, with `sockets`, fd 7 on a
/// unix socket, fd 8 on a TCP connection whose other ends the test holds and fd 9 on a terminal)
/// (READY seen), checkpointed with `--term`; returns the image and that terminal's master.
fn checkpoint_outside(sc: &Scenario, sockets: bool) -> (std::path::PathBuf, File) {
    let prog = sc.program("outside");
    let (_r5, w5) = pipe();
    let (r6, _w6) = pipe();
    let (u7, _u7_peer, t8, _t8_peer) = self::sockets();
    let (master, slave) = pty();
    let mut fds = vec![(w5.as_raw_fd(), 5), (r6.as_raw_fd(), 6)];
    if sockets {
        fds.extend([
            (u7.as_raw_fd(), 7),
            (t8.as_raw_fd(), 8),
            (slave.as_raw_fd(), 9),
        ]);
    }
    let mut cmd = sc.under_cr_run(&prog);
    with_fds(&mut cmd, fds);
    let mut job = sc.start("outside", cmd);
    job.wait_ready();
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    (img, master)
}

/// `cr_restart IMG` with `pairs` placed as its descriptors.
fn restart_with_fds(sc: &Scenario, img: &Path, pairs: Vec<(i32, i32)>) -> Job {
    let argv = [sc.tools().cr_restart.clone(), img.to_path_buf()];
    let mut cmd = sc.command(&argv);
    with_fds(&mut cmd, pairs);
    sc.start("cr_restart outside", cmd)
}

/// cr_restart started with its stdout, stderr, fd 5 and fd 6 on new pipes and fd 7 and 8 on a
/// new unix socket and TCP connection: each restored descriptor uses the restarter's of its
/// number (the sockets were a unix socket that read end of file and a reset connection).
fn outside_takes_restarters(sc: &Scenario) {
    // The first terminal stays open: reopened by its path, fd 9 would still reach it.
    let (img, mut old_tty) = checkpoint_outside(sc, true);
    let (mut new_tty, tty9) = pty();
    let (mut r5, w5) = pipe();
    let (r6, mut w6) = pipe();
    w6.write_all(b"outside fd6\n").expect("fill the fd 6 pipe");
    let (u7, mut u7_peer, t8, mut t8_peer) = sockets();
    u7_peer
        .write_all(b"reply fd7\n")
        .expect("write to the fd 7 socket");
    t8_peer
        .write_all(b"reply fd8\n")
        .expect("write to the fd 8 connection");
    let mut restarted = restart_with_fds(
        sc,
        &img,
        vec![
            (w5.as_raw_fd(), 5),
            (r6.as_raw_fd(), 6),
            (u7.as_raw_fd(), 7),
            (t8.as_raw_fd(), 8),
            (tty9.as_raw_fd(), 9),
        ],
    );
    drop((w5, r6, w6, u7, t8, tty9));
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
    let five = drain(&mut r5);
    assert_eq!(
        five,
        "outside fd5\n",
        "fd 5 must write to cr_restart's fd 5\n{}",
        restarted.diag()
    );
    for (what, want, peer) in [
        (
            "fd 7 (unix socket)",
            "outside fd7\n",
            &mut u7_peer as &mut dyn Read,
        ),
        (
            "fd 8 (TCP connection)",
            "outside fd8\n",
            &mut t8_peer as &mut dyn Read,
        ),
    ] {
        let mut got = String::new();
        peer.read_to_string(&mut got)
            .expect("read the socket's peer");
        assert_eq!(
            got,
            want,
            "{what} must be cr_restart's\n{}",
            restarted.diag()
        );
    }
    // (A terminal turns "\n" into "\r\n".)
    let nine = drain(&mut new_tty);
    assert!(
        nine.contains("outside fd9"),
        "fd 9 (a terminal) must be cr_restart's, got {nine:?}\n{}",
        restarted.diag()
    );
    let old_nine = drain(&mut old_tty);
    assert!(
        !old_nine.contains("outside fd9"),
        "fd 9 went to the checkpointed program's terminal\n{}",
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
    let (img, _tty) = checkpoint_outside(sc, false);
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

// ---------------------------------------------------------------------------------------------
// named FIFOs opened by one process
// ---------------------------------------------------------------------------------------------

/// The byte at position `i` of `c-tests/fifo1.c`'s pattern.
fn pat(i: usize) -> u8 {
    (i * 7 + i / 251) as u8
}

fn pattern(from: usize, n: usize) -> Vec<u8> {
    (from..from + n).map(pat).collect()
}

/// `fifo1 ARGS` under cr_run.
fn start_fifo1(sc: &Scenario, args: &[&str]) -> Job {
    let mut prog = sc.program("fifo1");
    prog.argv.extend(args.iter().map(std::ffi::OsString::from));
    sc.start(&format!("fifo1 {}", args[0]), sc.under_cr_run(&prog))
}

/// Opens the scenario's FIFO once the program made it (the program is in its open).
fn open_fifo(sc: &Scenario, flags: i32) -> File {
    use std::os::unix::fs::FileTypeExt;
    let path = sc.work_dir().join("fifo");
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while !std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_fifo()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: the descriptor is new and ours.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads until EOF (every writer closed), waiting with poll; panics after 30 s.
fn read_to_eof(r: &mut File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut p = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one live pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 30_000) };
        assert!(
            n == 1,
            "no EOF on the FIFO within 30 s ({} bytes read)",
            out.len()
        );
        match r.read(&mut buf) {
            Ok(0) => return out,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
}

/// Modes whose other end, if any, is in the process itself: checkpoint `--term`, GO, restart,
/// PASS.
fn fifo_cycle(sc: &Scenario, mode: &str) {
    let mut job = start_fifo1(sc, &[mode]);
    job.wait_ready();
    sc.checkpoint_term_restart_pass(job);
}

#[test]
fn fifo_rdwr() {
    fifo_cycle(&Scenario::new("fifo-rdwr"), "rdwr");
}

#[test]
fn fifo_reader_and_writer() {
    fifo_cycle(&Scenario::new("fifo-both"), "both");
}

#[test]
fn fifo_renamed_after_open() {
    fifo_cycle(&Scenario::new("fifo-renamed"), "renamed");
}

#[test]
fn fifo_linked_after_open() {
    fifo_cycle(&Scenario::new("fifo-linked"), "linked");
}

/// Renamed between checkpoint and restart: the descriptor is that FIFO again, found by inode.
#[test]
fn fifo_renamed_before_restart() {
    let sc = Scenario::new("fifo-moved");
    let mut job = start_fifo1(&sc, &["moved"]);
    job.wait_ready();
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    std::fs::rename(sc.work_dir().join("fifo"), sc.work_dir().join("fifo.b"))
        .expect("rename the FIFO");
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
    assert!(
        !sc.work_dir().join("fifo").exists(),
        "cr_restart made a new FIFO at the old name"
    );
}

#[test]
fn fifo_rdwr_unlinked() {
    fifo_cycle(&Scenario::new("fifo-unlinked"), "unlinked");
}

#[test]
fn fifo_unprivileged() {
    if !is_root() {
        println!("note: not root: the plain cases already run unprivileged");
        return;
    }
    for mode in ["rdwr", "linked", "unlinked", "both"] {
        fifo_cycle(
            &Scenario::as_user(&format!("nobody-fifo-{mode}"), NOBODY),
            mode,
        );
    }
}

/// Only the read end in the job; the test writes 3000 bytes before the checkpoint and keeps
/// its write end open: after the restart the reader gets those bytes once, then 1000 more
/// written now, then EOF.
#[test]
fn fifo_reader_with_writer_outside() {
    let sc = Scenario::new("fifo-reader");
    let mut job = start_fifo1(&sc, &["reader", "4000"]);
    job.wait_ready();
    let mut w = open_fifo(&sc, libc::O_WRONLY);
    w.write_all(&pattern(0, 3000)).expect("write into the FIFO");
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let mut restarted = sc.restart(&img);
    // Once the restored reader exists (the restart holds the FIFO open from then on).
    let pid2 = restarted.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid2, std::time::Duration::from_secs(10));
    w.write_all(&pattern(3000, 1000))
        .expect("write into the FIFO");
    drop(w);
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

/// Only the write end in the job, the test reads (its read end open throughout): it reads the
/// 3000 bytes written before the checkpoint once, then the 1000 the restored writer writes,
/// and the writer gets no SIGPIPE.
#[test]
fn fifo_writer_with_reader_outside() {
    let sc = Scenario::new("fifo-writer");
    let mut job = start_fifo1(&sc, &["writer", "1000"]);
    let mut r = open_fifo(&sc, libc::O_RDONLY | libc::O_NONBLOCK);
    job.wait_ready();
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let mut restarted = sc.restart(&img);
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
    let got = read_to_eof(&mut r);
    assert!(
        got == pattern(0, 4000),
        "the reader outside got {} bytes, expected the 4000 of the pattern once\n{}",
        got.len(),
        restarted.diag()
    );
}
