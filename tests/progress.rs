//! The progress bar of cr_checkpoint and cr_restart (issue 11, "On a terminal"): drawn on
//! standard error when it is a terminal (bytes done of the total, rate, time left), nothing
//! otherwise. The tests open their own pseudo-terminal (CI has none).
//! `LIBCR_PROGRESS_AFTER_MS=0` shows the bar from the first figure instead of after a second,
//! so the test does not depend on how fast this machine writes.

mod common;
use common::*;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// MiB of lazymem's region: big enough for a few 8 MiB pieces of page data.
const MB: &str = "96";

/// A command whose standard error is the slave of a new pseudo-terminal; everything written to
/// it is collected until the last slave descriptor closes.
struct OnPty {
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl OnPty {
    fn start(mut cmd: Command) -> OnPty {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty with valid out-pointers and no name, termios or window size.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty failed: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are ours.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(slave));
        let child = cmd
            .spawn()
            .expect("start the command on the pseudo-terminal");
        drop(cmd); // our copy of the slave
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::from(master);
            let mut buf = [0u8; 4096];
            // EIO once no process has the slave open any more.
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        OnPty {
            child,
            out,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits until the terminal shows `want` (or the command ends); panics after `timeout`.
    fn wait_for(&mut self, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text();
            if t.contains(want) {
                return t;
            }
            if Instant::now() >= deadline || self.child.try_wait().ok().flatten().is_some() {
                self.kill();
                panic!("the terminal never showed {want:?}:\n{t:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the command to end (killed, with its process group, after `timeout`); returns
    /// its status and everything written to the terminal.
    fn finish(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("the command did not end in time:\n{:?}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            // The slave closes with the last process of the group; a restored program that
            // outlives its restarter is not ours to wait for.
            let until = Instant::now() + PIPE_CLOSE_TIMEOUT;
            while !r.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        (status, self.text())
    }

    fn kill(&mut self) {
        signal_pid_group(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

fn signal_pid_group(pid: u32) {
    // SAFETY: killing the process group we created for the command.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}

/// lazymem (MB MiB) under cr_run, READY.
fn lazymem(sc: &Scenario) -> Job {
    let mut prog = sc.program("lazymem");
    prog.argv.push(MB.into());
    let mut job = sc.start("lazymem", sc.under_cr_run(&prog));
    job.wait_ready();
    job
}

fn tool(sc: &Scenario, path: PathBuf, args: &[&str], img: &Path) -> Command {
    let mut argv: Vec<std::ffi::OsString> = vec![path.into()];
    argv.extend(args.iter().map(|a| a.into()));
    argv.push(img.into());
    let mut cmd = sc.command(&argv);
    cmd.env("LIBCR_PROGRESS_AFTER_MS", "0");
    cmd
}

/// What a drawn bar looks like: "TOOL: [====   ] 48.0 MiB / 96.1 MiB  400.0 MiB/s  0:00 left"
/// (the first one drawn may not know the rate yet: "? B/s  ? left").
fn assert_bar(tool: &str, text: &str) {
    let bars: Vec<&str> = text
        .split(['\r', '\n'])
        .filter(|l| l.starts_with(&format!("{tool}: [")) && l.contains(" left"))
        .collect();
    assert!(
        !bars.is_empty(),
        "no progress bar of {tool} on the terminal:\n{text:?}"
    );
    assert!(
        bars.iter()
            .any(|b| b.contains(" / ") && b.contains("iB/s") && b.contains("MiB")),
        "no bar shows bytes done of the total and a rate: {bars:?}"
    );
}

/// cr_checkpoint and cr_restart --eager on a terminal draw the bar; --verbose prints the final
/// figures; the restored program passes.
#[test]
fn progress_bar_on_a_terminal() {
    let sc = Scenario::new("progress-tty");
    let mut job = lazymem(&sc);
    let img = sc.next_image_path();
    let pid = job.pid().to_string();
    let mut ck = OnPty::start(tool(
        &sc,
        cr_checkpoint(),
        &["-v", "--term", "-f", img.to_str().expect("path")],
        Path::new(&pid),
    ));
    let (status, text) = ck.finish(TOOL_TIMEOUT);
    assert!(status.success(), "cr_checkpoint failed: {status}\n{text:?}");
    assert_bar("cr_checkpoint", &text);
    assert!(
        text.contains("written in"),
        "cr_checkpoint -v must print the final figures:\n{text:?}"
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.assert_image_file(&img);

    sc.go();
    let mut rs = OnPty::start(tool(&sc, cr_restart(), &["--eager", "--verbose"], &img));
    let text = rs.wait_for("page data read:", RESTART_TIMEOUT);
    assert_bar("cr_restart", &text);
    let (status, text) = rs.finish(RESTART_TIMEOUT);
    assert!(
        status.success(),
        "the restored lazymem failed: {status}\n{text:?}"
    );
}

/// Standard error not a terminal: nothing is drawn, and the output is what it was (nothing
/// without -v/--verbose).
#[test]
fn no_progress_bar_without_a_terminal() {
    let sc = Scenario::new("progress-pipe");
    let mut job = lazymem(&sc);
    let img = sc.next_image_path();
    let pid = job.pid().to_string();
    let res = sc.run_tool(
        "cr_checkpoint",
        tool(
            &sc,
            cr_checkpoint(),
            &["--term", "-f", img.to_str().expect("path")],
            Path::new(&pid),
        ),
    );
    res.assert_success();
    assert_eq!(
        res.stderr, "",
        "cr_checkpoint printed without -v and without a terminal"
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);

    sc.go();
    let mut rs = sc.start("cr_restart", tool(&sc, cr_restart(), &["--eager"], &img));
    rs.expect_pass(RESTART_TIMEOUT);
    let err = rs.stderr();
    assert!(
        !err.contains('\r') && !err.contains(" left"),
        "cr_restart drew a progress bar on a pipe:\n{err:?}"
    );
}
