//! Faults around a checkpoint (issue 13's suite): whatever fails, the program keeps running
//! unchanged, no partial file is left at the final path or beside it, and the previous image
//! still restores.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// User + system CPU time of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rfind(')').map(|i| &s[i + 1..]).unwrap_or("");
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// The size of the largest regular file `pid` has open (its image, for cr_checkpoint).
fn largest_open_file(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// cr_checkpoint SIGKILLed while it writes a large image: the agent notices at its next piece,
/// stops writing and lets the program go (within a second here, under any load), nothing is
/// left in the image directory (the image was an unnamed O_TMPFILE file, linked in only at
/// commit), and the previous image still restores.
#[test]
fn requester_killed_mid_write() {
    let sc = Scenario::new("fault-requester-killed");
    let mut prog = sc.program("bigmem");
    prog.argv.push("384".into());
    let mut job = sc.start("bigmem", sc.under_cr_run(&prog));
    job.wait_ready();
    let old = sc.checkpoint(job.pid(), &[]);
    let before = names(&sc.img_dir());

    let new = sc.img_dir().join("new.img");
    let argv: Vec<OsString> = vec![
        sc.tools().cr_checkpoint.clone().into(),
        "-f".into(),
        new.clone().into(),
        job.pid().to_string().into(),
    ];
    let mut tool = sc.start("cr_checkpoint (to be killed)", sc.command(&argv));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let mut caught = false;
    while Instant::now() < deadline {
        if largest_open_file(tool.pid()) >= 16 << 20 {
            caught = true;
            break;
        }
        if tool.try_wait_exit(Duration::ZERO).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        caught,
        "cr_checkpoint finished before it could be killed mid-write:\n{}",
        tool.diag()
    );
    let killed_at = Instant::now();
    tool.kill();
    // The program runs again: its CPU time grows.
    let t0 = cpu_ticks(job.pid());
    let mut resumed = None;
    while killed_at.elapsed() < Duration::from_secs(10) {
        if cpu_ticks(job.pid()) > t0 + 1 {
            resumed = Some(killed_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let resumed = resumed.unwrap_or_else(|| {
        panic!(
            "the program did not run again after its requester died:\n{}",
            job.diag()
        )
    });
    sc.note(&format!(
        "program ran again {resumed:?} after the requester was killed"
    ));
    assert!(
        resumed < Duration::from_secs(2),
        "the program stayed stopped {resumed:?} after its requester died"
    );
    job.assert_running("after the requester was killed");
    assert_eq!(
        names(&sc.img_dir()),
        before,
        "nothing may be left by the killed checkpoint"
    );
    assert_no_tmp_files(&sc.img_dir());
    assert!(!new.exists(), "no partial image at the final path");

    // The program is unharmed, and the older image still restores.
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
    sc.restart(&old).expect_pass(RESTART_TIMEOUT);
}
