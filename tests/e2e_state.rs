//! End-to-end checkpoint/restart of process state beyond plain memory, through the real tools,
//! with the self-verifying programs `c-tests/mappings.c` (every kind of memory mapping and
//! protection), `c-tests/fds.c` (file descriptors, cwd, umask, rlimits) and `c-tests/signals.c`
//! (dispositions, masks, alternate stacks, interval timers, the reserved signal).
//!
//! The programs are not in the shared build table of `common`: each test compiles its program
//! with gcc into its scenario's `bin/` directory.
//!
//! Run with e.g. `cargo test --test e2e_state -- --nocapture`.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A scenario plus the compiled program and the prefix `cr_run` runs through.
struct Setup {
    sc: Scenario,
    exe: PathBuf,
    prefix: Vec<OsString>,
    env: Vec<(String, String)>,
}

impl Setup {
    /// A scenario `scenario` with `c-tests/<prog>.c` compiled into it.
    fn new(scenario: &str, prog: &str) -> Setup {
        let sc = Scenario::new(scenario);
        let exe = compile(&sc, prog);
        Setup {
            sc,
            exe,
            prefix: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Both `cr_run` and `cr_restart` run through `setarch <machine> -R` (ASLR off).
    fn no_aslr(mut self) -> Setup {
        assert!(have_command("setarch"), "setarch (util-linux) is needed");
        let prefix = ["setarch", machine(), "-R"];
        self.prefix = prefix.iter().map(OsString::from).collect();
        self.sc = self.sc.launch_with(&prefix);
        self
    }

    /// `[prefix] cr_run -- EXE` with the test protocol's environment; READY seen.
    fn start(&self) -> Job {
        let mut argv = self.prefix.clone();
        argv.push(self.sc.tools().cr_run.clone().into());
        argv.push("--".into());
        argv.push(self.exe.clone().into());
        let mut cmd = self.sc.command(&argv);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let name = self.exe.file_name().unwrap_or_default().to_string_lossy();
        let mut job = self.sc.start(&name, cmd);
        job.wait_ready();
        if !self.prefix.is_empty() {
            if let Some(p) = personality(job.pid()) {
                assert_ne!(
                    p & ADDR_NO_RANDOMIZE,
                    0,
                    "setarch -R did not disable ASLR for pid {} (personality {p:#x})",
                    job.pid()
                );
            }
        }
        job
    }

    /// The standard cycle: start, checkpoint --term, the original dies of SIGTERM, GO, restart,
    /// PASS. Returns the image path.
    fn cycle(&self) -> PathBuf {
        let mut job = self.start();
        let img = self.sc.checkpoint(job.pid(), &["--term"]);
        job.expect_signal(SIGTERM, DEATH_TIMEOUT);
        self.sc.go();
        let mut restarted = self.sc.restart(&img);
        restarted.expect_pass(RESTART_TIMEOUT);
        img
    }

    /// Checkpoint without --term and restart while the original still runs; after GO both must
    /// PASS.
    fn twin(&self) {
        let mut orig = self.start();
        let img = self.sc.checkpoint(orig.pid(), &[]);
        orig.assert_running("after a checkpoint without --term");
        // Two copies at once need fresh pids (the original's is in use).
        let mut copy = self.sc.restart_with(&img, &["--no-restore-pid"]);
        let pid2 = copy.wait_child(READY_TIMEOUT);
        assert_ne!(pid2, orig.pid(), "the restored copy must have a fresh pid");
        wait_address_space_switched(&self.sc, pid2, Duration::from_secs(10));
        orig.assert_running("while its restored copy runs");
        self.sc.go();
        orig.expect_pass(RESTART_TIMEOUT);
        copy.expect_pass(RESTART_TIMEOUT);
    }
}

/// `gcc -O2 -Wall -Wextra -pthread -o <scenario>/bin/NAME c-tests/NAME.c`; panics with the
/// compiler's output on failure.
fn compile(sc: &Scenario, name: &str) -> PathBuf {
    let src = c_tests_dir().join(format!("{name}.c"));
    assert!(src.is_file(), "missing test program {}", src.display());
    let out = sc.root().join("bin").join(name);
    let res = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc for {name}: {e}"));
    assert!(
        res.status.success(),
        "building {name} failed ({}):\n{}{}",
        res.status,
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    sc.note(&format!(
        "compiled {} into {}",
        src.display(),
        out.display()
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// mappings
// ---------------------------------------------------------------------------------------------

/// Private anonymous memory with a hole, shared anonymous, memfd, shared and private file
/// mappings, deleted files, a read-only mapping at an offset, PROT_NONE data, a guard page and
/// 128 MiB of zero pages; the image must not hold the zero pages.
#[test]
fn mappings() {
    let s = Setup::new("mappings", "mappings");
    let img = s.cycle();
    let len = fs::metadata(&img).expect("image").len();
    assert!(
        len < 32 << 20,
        "image {} is {len} bytes: the 128 MiB of zero pages must not be saved\n{}",
        img.display(),
        s.sc.log()
    );
}

/// The same with ASLR off: the program's and cr_restart's default addresses collide.
#[test]
fn mappings_no_aslr() {
    Setup::new("mappings-noaslr", "mappings").no_aslr().cycle();
}

/// The original and a restored copy at once. They share the mapped files: the program only
/// writes shared.dat after GO, each process into its own page (the first to create a claim file
/// takes one, the other the other), and the rest of the files is never written after setup.
#[test]
fn mappings_restart_while_original_runs() {
    Setup::new("mappings-twin", "mappings").twin();
}

/// One memfd mapped twice back to back (a "magic ring buffer"): after restart a write through
/// one view must show in the other.
#[test]
fn mappings_memfd_mapped_twice_stays_one_object() {
    Setup::new("mappings-alias", "mappings").cycle();
}

// ---------------------------------------------------------------------------------------------
// fds
// ---------------------------------------------------------------------------------------------

/// Regular files (offsets, O_APPEND, O_RDWR), a dup at fd 100, devices, a directory fd, a pipe
/// with both ends, close-on-exec flags, cwd, umask and rlimits.
#[test]
fn fds() {
    Setup::new("fds", "fds").cycle();
}

#[test]
fn fds_no_aslr() {
    Setup::new("fds-noaslr", "fds").no_aslr().cycle();
}

/// Both copies use the same files: what they write after GO is tolerant of the other one
/// (identical bytes at the same place in rw.dat, one line each in out.log, tagged by who created
/// a claim file first; each checks that its own line is there once). Nothing is written between the checkpoint and GO, so the restart's
/// truncation of files open for writing back to their checkpoint size changes nothing.
#[test]
fn fds_restart_while_original_runs() {
    Setup::new("fds-twin", "fds").twin();
}

/// The read end of a pipe had O_NONBLOCK at checkpoint time: the restored one must have it too.
#[test]
fn fds_pipe_keeps_nonblock() {
    Setup::new("fds-pipe-nonblock", "fds").cycle();
}

/// Pipes whose writers had exited (one with 3000 bytes buffered, one empty): after restart the
/// reader gets the bytes, then end of file (was: connected to cr_restart's stdin, bytes lost).
#[test]
fn pipe_without_writers_keeps_bytes_and_eof() {
    Setup::new("pipe-eof", "pipe_eof").cycle();
}

// ---------------------------------------------------------------------------------------------
// signals
// ---------------------------------------------------------------------------------------------

/// Dispositions (handlers, SIG_IGN, sa_flags, sa_mask), per-thread masks and alternate stacks,
/// interval timers with their time left, SIGRTMAX == 63 and signal 64 never blocked.
#[test]
fn signals() {
    Setup::new("signals", "signals").cycle();
}

#[test]
fn signals_no_aslr() {
    Setup::new("signals-noaslr", "signals").no_aslr().cycle();
}
