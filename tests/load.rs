//! Load (issue 13): many checkpoints in a row of one program, checkpoints during a signal storm
//! (standard and queued real-time signals) with threads blocked in system calls, checkpoints
//! during a fork storm, many threads under full CPU load, and restart
//! semantics (one image restored twice at once, a restore while the original runs).
//!
//! `LOAD_CHECKPOINTS` sets the number of checkpoints in a row (default 100; `make soak` runs
//! 1000). Each test prints its figures on stderr (`--nocapture` shows them).

mod common;

use common::*;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: each loads the machine on purpose, and the
/// figures of one must not be the load of another.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What /proc says about a process, compared before and after many checkpoints.
#[derive(Debug, PartialEq, Clone)]
struct Footprint {
    fds: usize,
    threads: usize,
    maps: usize,
    vm_kb: u64,
}

#[derive(Debug)]
struct Memory {
    rss_kb: u64,
}

fn status_kb(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn footprint(pid: u32) -> (Footprint, Memory) {
    let count = |d: String| fs::read_dir(d).map_or(0, |r| r.count());
    (
        Footprint {
            fds: count(format!("/proc/{pid}/fd")),
            threads: count(format!("/proc/{pid}/task")),
            maps: fs::read_to_string(format!("/proc/{pid}/maps")).map_or(0, |m| m.lines().count()),
            vm_kb: status_kb(pid, "VmSize:"),
        },
        Memory {
            rss_kb: status_kb(pid, "VmRSS:"),
        },
    )
}

/// The footprint once the agent has closed what a request left open (it closes the
/// connection and the image just after answering, and its write helper, a `CLONE_VM` child
/// whose stack is in the program's memory map and whose pidfd is in its table, exits and is
/// reaped after that): waits up to 10 s for the helper to be gone, then up to 2 s for the
/// footprint to equal `want` (`None`: to read the same twice, 20 ms apart).
fn settled(pid: u32, want: Option<&Footprint>) -> (Footprint, Memory) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && children_of(pid).into_iter().any(|c| {
            fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| matches!(n.trim(), "cr-io" | "cr-writer"))
        })
    {
        thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = footprint(pid);
    loop {
        thread::sleep(Duration::from_millis(if want.is_some() { 2 } else { 20 }));
        let f = footprint(pid);
        let done = match want {
            Some(w) => f.0 == *w,
            None => f.0 == last.0,
        };
        if done || Instant::now() >= deadline {
            return f;
        }
        last = f;
    }
}

fn checkpoints() -> usize {
    std::env::var("LOAD_CHECKPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn mean_ms(v: &[Duration]) -> f64 {
    v.iter().map(|d| d.as_secs_f64() * 1000.0).sum::<f64>() / v.len().max(1) as f64
}

/// N checkpoints in a row (`--cont`, one image overwritten each time) of a program with 8
/// computing threads: each succeeds, the program runs on; its descriptors, threads, mappings
/// and address-space size are the same after the last as after the first (RSS is printed);
/// the time per checkpoint of the last tenth (the last 100 of 1000) is not much above the
/// first's; the last image restores to PASS.
#[test]
fn many_checkpoints_in_a_row() {
    let _serial = serial();
    let n = checkpoints();
    let sc = Scenario::new("load-many");
    let mut job = sc.start_program("threads");
    let pid = job.pid();
    let img = sc.img_dir().join("many.img");
    let mut times = Vec::with_capacity(n);
    let mut first: Option<(Footprint, Memory)> = None;
    for i in 0..n {
        let t0 = Instant::now();
        let res = sc.checkpoint_to(pid, &["--cont"], &img);
        times.push(t0.elapsed());
        res.assert_success();
        job.assert_running(&format!("after checkpoint {i}"));
        if i == 0 {
            sc.assert_image_file(&img);
            // After the first one: what the agent allocates once (its scratch area, the
            // control thread's buffers) is there from now on.
            first = Some(settled(pid, None));
        }
    }
    let (f0, m0) = first.expect("one checkpoint at least");
    let (f1, m1) = settled(pid, Some(&f0));
    let tenth = (n / 10).max(1);
    let (head, tail) = (mean_ms(&times[..tenth]), mean_ms(&times[n - tenth..]));
    let size = fs::metadata(&img).map_or(0, |m| m.len());
    let line = format!(
        "{n} checkpoints of threads ({} KiB image): {head:.1} ms each for the first {tenth}, \
         {tail:.1} ms for the last {tenth}; after the first: {f0:?} RSS {} KiB; after the last: \
         {f1:?} RSS {} KiB",
        size >> 10,
        m0.rss_kb,
        m1.rss_kb
    );
    eprintln!("{line}");
    sc.note(&line);
    assert_eq!(f1, f0, "the program's footprint changed: {line}");
    // Timing on a shared machine is noisy: only a clear trend fails.
    assert!(tail < head * 3.0 + 50.0, "checkpoints got slower: {line}");
    assert!(
        m1.rss_kb < m0.rss_kb + 8 * 1024,
        "resident memory grew by more than 8 MiB: {line}"
    );
    let fin = sc.checkpoint(pid, &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&fin).expect_pass(RESTART_TIMEOUT);
}

/// Sends SIGUSR1 to `pid` from a thread of this process as fast as it can with a pause of
/// 50 µs, and at most once a millisecond one queued SIGRTMIN+1 carrying the next number from
/// `first` on (`sigqueue`; a full queue is waited out, the same number sent again), until
/// stopped; counts what was sent. (Faster, the program's handler falls behind on this loaded
/// machine and more than the 4096 signals a checkpoint keeps pile up: see RELIABILITY.md.)
struct Storm {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    started: Instant,
    handle: Option<thread::JoinHandle<()>>,
}

/// The first number of a restored program's queued signals (`RT_RESTART_BASE` in blocked.c).
const RT_RESTART_BASE: i32 = 1_000_000_000;

impl Storm {
    fn start(pid: u32, first: i32) -> Storm {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        let (s, c, q) = (stop.clone(), sent.clone(), queued.clone());
        let handle = thread::spawn(move || {
            let mut next = first;
            let mut last_rt = Instant::now();
            while !s.load(Ordering::Relaxed) {
                for _ in 0..10 {
                    // SAFETY: kill with a pid the test started and a valid signal.
                    if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
                        return;
                    }
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if last_rt.elapsed() < Duration::from_millis(1) {
                    thread::sleep(Duration::from_micros(50));
                    continue;
                }
                last_rt = Instant::now();
                let value = libc::sigval {
                    sival_ptr: next as usize as *mut libc::c_void,
                };
                // SAFETY: sigqueue with a pid the test started, a valid signal and a value.
                if unsafe { libc::sigqueue(pid as i32, libc::SIGRTMIN() + 1, value) } == 0 {
                    next += 1;
                    q.fetch_add(1, Ordering::Relaxed);
                } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                    return;
                }
                thread::sleep(Duration::from_micros(50));
            }
        });
        Storm {
            stop,
            sent,
            queued,
            started: Instant::now(),
            handle: Some(handle),
        }
    }

    /// Stops the storm; signals sent (SIGUSR1, queued SIGRTMIN+1) and SIGUSR1 per second.
    fn finish(mut self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let n = self.sent.load(Ordering::Relaxed);
        let q = self.queued.load(Ordering::Relaxed);
        (n, q, n as f64 / self.started.elapsed().as_secs_f64())
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `c-tests/blocked.c`: threads blocked in read, pipe write, poll, epoll_wait, futex, accept,
/// waitpid, nanosleep and flock, each woken now and then with numbered data. N checkpoints
/// (`LOAD_STORM_CHECKPOINTS`, default 10; `make soak` runs 40) with `--cont` while another
/// process sends SIGUSR1 without pause and numbered SIGRTMIN+1 (the program takes them in its
/// main thread and checks that each number came exactly once), then one
/// with `--term`; restored, checkpointed 5 more times under a storm; GO: the program checks that
/// no call ever returned EINTR, no sleep was short and no number was lost, repeated or taken out
/// of order, in the original's run up to its checkpoint and in the restored one (before the
/// leader queued the process-wide real-time signals it took back to its own queue, 2-6 numbers
/// came out of order in 4 of 13 runs: one sent while they were queued again got ahead). A connection waiting in the
/// listener's backlog at the `--term` checkpoint is lost by the restart (documented): the
/// program's client then connects again, at most once.
///
/// It found four bugs, fixed (docs/RELIABILITY.md): an EINTR from epoll_wait (the interrupted
/// call's number was read from /proc before the signal, and a thread could enter the call in
/// between), a thread that "did not stop" (that /proc read waited up to 17 s under load), a
/// restart failing with EADDRINUSE (an accepted connection whose client had closed was bound to
/// the listener's name again), and a tree checkpoint failing with "no process with pid N" (a
/// fork child reaped between the listing and the check).
///
/// After the restart it also found the agent closing a descriptor of the restored program (the
/// control thread closed the checkpointed process's connection number once more): fixed, 0 of
/// 80 runs failed after the fix (4 of 82 before).
#[test]
fn checkpoints_during_signal_storm_with_blocked_calls() {
    let _serial = serial();
    let n: usize = std::env::var("LOAD_STORM_CHECKPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let sc = Scenario::new("load-storm");
    let mut job = sc.start_program("blocked");
    let pid = job.pid();
    let storm = Storm::start(pid, 1);
    let mut times = Vec::new();
    for i in 0..n {
        let img = sc.img_dir().join(format!("storm-{i}.img"));
        let t0 = Instant::now();
        let res = sc.checkpoint_to(pid, &["--cont"], &img);
        times.push(t0.elapsed());
        res.assert_success();
        job.assert_running(&format!("after checkpoint {i} in the storm"));
        fs::remove_file(&img).expect("remove image");
    }
    let img = sc.checkpoint(pid, &["--term"]);
    let (sent, queued, rate) = storm.finish();
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    // The waitpid thread's child of the moment is in the image: its pid must be free again (it
    // outlives its parent by up to 10 ms, then must be reaped) before the restart takes it.
    let deadline = Instant::now() + DEATH_TIMEOUT;
    while group_holds_pids(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let line = format!(
        "{}: {} checkpoints during {sent} SIGUSR1 ({rate:.0}/s) and {queued} queued SIGRTMIN+1, {:.1} ms each on average",
        sc.name(),
        n + 1,
        mean_ms(&times)
    );
    eprintln!("{line}");
    sc.note(&line);
    let mut restarted = sc.restart(&img);
    let pid2 = restarted.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid2, Duration::from_secs(10));
    let storm = Storm::start(pid2, RT_RESTART_BASE);
    for i in 0..5 {
        let img = if i == 0 {
            sc.checkpoint_restored(pid2, &["--cont"])
        } else {
            sc.checkpoint(pid2, &["--cont"])
        };
        fs::remove_file(&img).expect("remove image");
    }
    let (sent2, queued2, rate2) = storm.finish();
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
    let line = format!(
        "{}: restored, 5 checkpoints during {sent2} SIGUSR1 ({rate2:.0}/s) and {queued2} queued SIGRTMIN+1; program: {}",
        sc.name(),
        restarted
            .stderr()
            .lines()
            .filter(|l| l.starts_with("info"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    eprintln!("{line}");
    sc.note(&line);
    let reconnects: u32 = restarted
        .stderr()
        .lines()
        .find_map(|l| l.strip_prefix("info accept reconnects "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the program prints its reconnects");
    assert!(
        reconnects <= 1,
        "one restart loses at most the one connection in the backlog: {line}"
    );
}

/// Sends SIGCONT (ignored by default) to the pid in `target` without pause (10 at a time, then
/// 50 µs), whatever process holds it or whether one does, until stopped; counts those
/// delivered.
struct IgnoredStorm {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl IgnoredStorm {
    fn start(target: Arc<AtomicU32>) -> IgnoredStorm {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), sent.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let pid = target.load(Ordering::Relaxed) as i32;
                for _ in 0..10 {
                    // SAFETY: kill with a pid the test started (or restored) and a valid signal.
                    if pid > 0 && unsafe { libc::kill(pid, libc::SIGCONT) } == 0 {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_micros(50));
            }
        });
        IgnoredStorm {
            stop,
            sent,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for IgnoredStorm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `PROG` checkpointed with `--term` and restarted `LOAD_IGNORED_RESTARTS` times (default 6)
/// while the test sends it SIGCONT without pause (ignored by default); each restored process is
/// checkpointed once with `--cont` too; GO, PASS. Returns the program's `info` lines.
fn restarts_during_sigcont(name: &str, prog: &str) -> String {
    let restarts: usize = std::env::var("LOAD_IGNORED_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let sc = Scenario::new(name);
    let mut job = sc.start_program(prog);
    let orig = job.pid();
    let target = Arc::new(AtomicU32::new(orig));
    let storm = IgnoredStorm::start(target.clone());
    let mut pid = orig;
    for i in 0..restarts {
        let img = if i == 0 {
            sc.checkpoint(pid, &["--term"])
        } else {
            sc.checkpoint_restored_of(&mut job, pid, &["--term"])
        };
        job.expect_signal(SIGTERM, DEATH_TIMEOUT);
        // A child of the moment is in the image: its pid must be free again.
        let deadline = Instant::now() + DEATH_TIMEOUT;
        while group_holds_pids(orig) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        job = sc.restart(&img);
        pid = job.wait_child(READY_TIMEOUT);
        target.store(pid, Ordering::Relaxed);
        wait_address_space_switched(&sc, pid, Duration::from_secs(10));
        let cont = sc.checkpoint_restored_of(&mut job, pid, &["--cont"]);
        fs::remove_file(&cont).expect("remove image");
        fs::remove_file(&img).expect("remove image");
    }
    let sent = storm.finish();
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
    let line = format!(
        "{}: {restarts} restarts and {restarts} checkpoints of restored processes during {sent} SIGCONT; program: {}",
        sc.name(),
        job.stderr()
            .lines()
            .filter(|l| l.starts_with("info"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    eprintln!("{line}");
    sc.note(&line);
    line
}

/// `c-tests/ignored.c`: a thread in `epoll_wait(-1)` beside the main thread, restarted 6 times
/// (`LOAD_IGNORED_RESTARTS`) while the test sends SIGCONT (ignored) without pause. A restored
/// process's threads were let go while its main thread still blocked every signal (the
/// restart's own release): an ignored signal sent to the process then was not dropped but
/// queued, and woke the one thread that does not block it: its `epoll_wait` returned EINTR with
/// nothing delivered (the checkpoint's release had the same, fixed by
/// `quiesce::let_ignored_through`; now each restored thread calls it too, `resume`). GO: no
/// EINTR, PASS.
///
/// The last EINTRs it showed (1-3 in about 1 run of 10, `#[ignore]`d for that from 2026-12-07
/// until the fix) were no ignored signal: the first checkpoint's wake-up (`SIGURG`), sent to
/// the process while the main thread still ran the handler of the one before (which blocks its
/// own signal), was aimed by the kernel at the worker, which it woke at once; the main thread
/// then took it first, and the worker's `epoll_wait` returned EINTR with nothing delivered
/// (seen by tracing). The wake-up and the socket's connection signal now go to the main
/// thread only (`protocol::wake`, `control::bind_socket`).
#[test]
fn restarts_while_ignored_signals_arrive() {
    let _serial = serial();
    restarts_during_sigcont("load-ignored", "ignored");
}

/// `c-tests/blocked.c` (threads in nine blocking calls, a child forked every 10 ms) restarted 6
/// times the same way. It found the restart losing a zombie: a child that had exited, unreaped,
/// is saved as a zombie and re-created at its pid, which the previous generation's zombie (its
/// parent killed by `--term`, its new parent the init, which reaps slowly) could still hold;
/// the zombie was not re-created (a warning) and the restored program's `waitpid` for it failed
/// with ECHILD, in 3 of 3 runs. cr_restart now waits for a zombie's pid as for the others.
#[test]
fn blocked_calls_restarted_again_and_again() {
    let _serial = serial();
    restarts_during_sigcont("load-restarted-blocked", "blocked");
}

/// `c-tests/crowd.c`: 200 threads computing without pause (the CPU fully loaded). Three
/// checkpoints with `--cont`, then `--term`, restart: every thread's rounds check out. Each of
/// the 201 threads must be scheduled once to stop: on an idle 2-core machine that is well under
/// a second, but with dozens of runnable processes besides it took up to 6.5 s here, so the
/// checkpoints allow 30 s (`--time`) rather than the default 10 and the quiesce times are
/// printed (`-v`).
#[test]
fn two_hundred_threads_under_full_load() {
    let _serial = serial();
    let sc = Scenario::new("load-crowd");
    let mut job = sc.start_program("crowd");
    let pid = job.pid();
    let mut times = Vec::new();
    let mut quiesce = Vec::new();
    for i in 0..3 {
        let img = sc.img_dir().join(format!("crowd-{i}.img"));
        let t0 = Instant::now();
        let res = sc.checkpoint_to(pid, &["--cont", "-v", "--time", "30"], &img);
        times.push(t0.elapsed());
        res.assert_success();
        quiesce.extend(
            res.stderr
                .split("quiesce=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .map(str::to_string),
        );
        job.assert_running(&format!("after checkpoint {i}"));
        fs::remove_file(&img).expect("remove image");
    }
    let threads = footprint(pid).0.threads;
    let img = sc.checkpoint(pid, &["--term", "--time", "30"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    let mut restarted = sc.restart(&img);
    restarted.expect_pass(RESTART_TIMEOUT);
    let line = format!(
        "{}: {threads} threads, checkpoints took {:?} (quiesce {quiesce:?}); {}",
        sc.name(),
        times,
        restarted.stderr().trim()
    );
    eprintln!("{line}");
    sc.note(&line);
    assert!(threads >= 201, "expected 200 threads and main: {threads}");
}

/// One image restored twice at the same time with `--no-restore-pid`: both run to PASS. While
/// the original runs, a restore with its pids is refused with exit 16 (EBUSY, as BLCR) and one
/// line, and the original is unharmed.
#[test]
fn restored_twice_at_once_and_while_the_original_runs() {
    let _serial = serial();
    let sc = Scenario::new("load-twice");
    let mut orig = sc.start_program("single");
    let img = sc.checkpoint(orig.pid(), &[]);
    let (_busy, code, line) = restart_refused(&sc, &img, "a restore while the original runs");
    assert_eq!(code, 16, "exit code for pids in use: {line}");
    orig.assert_running("after a refused restore of its image");
    let mut a = sc.restart_with(&img, &["--no-restore-pid"]);
    let mut b = sc.restart_with(&img, &["--no-restore-pid"]);
    let pa = a.wait_child(READY_TIMEOUT);
    let pb = b.wait_child(READY_TIMEOUT);
    assert_ne!(pa, pb);
    wait_address_space_switched(&sc, pa, Duration::from_secs(10));
    wait_address_space_switched(&sc, pb, Duration::from_secs(10));
    sc.go();
    orig.expect_pass(RESTART_TIMEOUT);
    a.expect_pass(RESTART_TIMEOUT);
    b.expect_pass(RESTART_TIMEOUT);
    eprintln!("{}: refused with pids in use: {line}", sc.name());
}

/// Forks since boot, machine-wide (`processes` in /proc/stat).
fn forks_so_far() -> u64 {
    fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Checkpoints during a fork storm: two shells forking subshells without pause beside the
/// program (thousands of forks a second; with this machine's pid_max of 32768 the pids wrap
/// every few seconds), and the program itself forking children that exit at once and creating
/// threads without pause (`c-tests/churn.c`, so every checkpoint is of a changing tree). Five
/// checkpoints with `--cont` (each must succeed, the program runs on with the same descriptors),
/// one with `--term`; the storm stopped, the image restores, is checkpointed twice more in a
/// new storm, and PASSes (no child status or thread lost).
#[test]
fn checkpoints_during_fork_storm() {
    let _serial = serial();
    let sc = Scenario::new("load-fork-storm");
    let mut job = sc.start_program("churn");
    let pid = job.pid();
    let storm = |sc: &Scenario| -> Vec<Job> {
        (0..2)
            .map(|k| {
                let cmd = sc.command(&["sh", "-c", "while :; do ( : ); done"]);
                sc.start(&format!("fork storm {k}"), cmd)
            })
            .collect()
    };
    // With its control socket, which the agent binds when the first requester wakes it.
    let fds = woken_fd_count(pid);
    let (forks0, t0) = (forks_so_far(), Instant::now());
    let mut shells = storm(&sc);
    let mut times = Vec::new();
    for i in 0..5 {
        let img = sc.img_dir().join(format!("fork-storm-{i}.img"));
        let t = Instant::now();
        let res = sc.checkpoint_to(pid, &["--cont", "--time", "20"], &img);
        times.push(t.elapsed());
        res.assert_success();
        sc.assert_image_file(&img);
        job.assert_running(&format!("after checkpoint {i} in the fork storm"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while fd_count(pid) != fds && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(
            fd_count(pid),
            fds,
            "descriptors changed after checkpoint {i}"
        );
        fs::remove_file(&img).expect("remove image");
    }
    let img = sc.checkpoint(pid, &["--term", "--time", "20"]);
    let rate = (forks_so_far() - forks0) as f64 / t0.elapsed().as_secs_f64();
    for s in &mut shells {
        s.kill();
    }
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let deadline = Instant::now() + DEATH_TIMEOUT;
    while group_holds_pids(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let mut restarted = sc.restart(&img);
    let pid2 = restarted.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid2, Duration::from_secs(10));
    let mut shells = storm(&sc);
    for i in 0..2 {
        let img = if i == 0 {
            sc.checkpoint_restored(pid2, &["--cont", "--time", "20"])
        } else {
            sc.checkpoint(pid2, &["--cont", "--time", "20"])
        };
        fs::remove_file(&img).expect("remove image");
    }
    for s in &mut shells {
        s.kill();
    }
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
    let line = format!(
        "{}: 6 checkpoints during a fork storm of {rate:.0} forks/s (machine-wide), {:.1} ms each on average; restored, 2 more",
        sc.name(),
        mean_ms(&times)
    );
    eprintln!("{line}");
    sc.note(&line);
}
