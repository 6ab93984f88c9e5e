//! BLCR's API used by a driver program that checkpoints and restarts other processes and never
//! calls `cr_init()` (`c-tests/api_driver.c`): `cr_request_checkpoint`/`cr_poll_checkpoint` of
//! another process's tree, then `cr_request_restart`/`cr_poll_restart` of every kind of image
//! `cr_restart` takes (one process, a tree written by the API as back-to-back images, a tree
//! image with its manifest, a `-d` directory), with BLCR's default flags (original pids: as root
//! directly, unprivileged through a private pid namespace whose init is the driver's child) and
//! with fresh pids. The restored processes are the driver's descendants: it waits for the pid the
//! poll returned and sees the program's exit status.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Where the images come from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    /// `api_driver checkpoint` (the API's tree scope: the reached agent appends the others).
    Api,
    /// `cr_checkpoint PID` (a tree image with its manifest).
    Tool,
    /// `cr_checkpoint -d DIR PID` (one file per process), restarted through a directory fd.
    ToolDir,
}

/// `pid` and every descendant, as pids.
fn tree_of(pid: u32) -> Vec<u32> {
    let mut v = vec![pid];
    v.extend(descendants(pid));
    v
}

/// Waits until no process (not even a zombie) has any of `pids`.
fn wait_gone(sc: &Scenario, pids: &[u32]) {
    let deadline = Instant::now() + DEATH_TIMEOUT;
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            Instant::now() < deadline,
            "pids {pids:?} still in use after {DEATH_TIMEOUT:?}\n{}",
            sc.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `api_driver ARGS` as the scenario's user to its end; returns its stdout.
fn driver(sc: &Scenario, args: &[OsString]) -> String {
    let prog = sc.program("api_driver");
    let mut argv = prog.argv.clone();
    argv.extend(args.iter().cloned());
    let what = format!("api_driver {}", args[0].to_string_lossy());
    let mut job = sc.start(&what, sc.command(&argv));
    let st = job.wait_exit(RESTART_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    let out = job.stdout();
    assert!(
        st.success() && !out.contains("FAIL"),
        "{what} failed ({st}):\n{}\n--- scenario log ---\n{}",
        job.diag(),
        sc.log()
    );
    out
}

/// Start the program (`tree 1`: a root and a child; else a spinner), checkpoint it with
/// SIGKILL from `src`, restart it with the driver (`flags`: the restart flags, None = BLCR's
/// default), touch GO: the driver must see the restored program pass and exit 0.
fn cycle(name: &str, user: Option<(u32, u32)>, tree: bool, src: Source, flags: Option<&str>) {
    let sc = match user {
        None => Scenario::new(name),
        Some(_) if !is_root() => {
            println!("note: not root: the other tests already run unprivileged");
            return;
        }
        Some(u) => Scenario::as_user(name, u),
    };
    let mut prog = sc.program(if tree { "tree" } else { "spinner" });
    if tree {
        prog.argv.push("1".into());
    }
    let mut job = sc.start(&prog.name, sc.under_cr_run(&prog));
    job.wait_ready();
    let pids = tree_of(job.pid());
    assert_eq!(pids.len(), if tree { 2 } else { 1 }, "{}", job.diag());
    let img: PathBuf = match src {
        Source::Api => {
            let img = sc.img_dir().join("api.img");
            let out = driver(
                &sc,
                &[
                    "checkpoint".into(),
                    job.pid().to_string().into(),
                    img.clone().into(),
                    SIGKILL.to_string().into(),
                ],
            );
            assert!(
                out.contains(&format!("checkpointed {}", job.pid())),
                "{out}"
            );
            img
        }
        Source::Tool => sc.checkpoint(job.pid(), &["--kill"]),
        Source::ToolDir => {
            let dir = sc.img_dir().join("tree.d");
            fs::create_dir(&dir).expect("image dir");
            if let Some((uid, gid)) = sc.user() {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown image dir");
            }
            sc.cr_checkpoint(&[
                OsString::from("--kill"),
                "-d".into(),
                dir.clone().into(),
                job.pid().to_string().into(),
            ])
            .assert_success();
            assert_eq!(
                fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0),
                pids.len(),
                "one image per process in {}",
                dir.display()
            );
            dir
        }
    };
    job.expect_signal(SIGKILL, DEATH_TIMEOUT);
    wait_gone(&sc, &pids);
    sc.go();
    let mut args: Vec<OsString> = vec!["restart".into(), img.into()];
    if let Some(f) = flags {
        args.push(f.into());
    }
    let out = driver(&sc, &args);
    let want_pass = if tree { "PASS tree" } else { "PASS spinner" };
    assert!(
        out.contains(want_pass) && out.contains("job exit 0"),
        "the restored program should pass and the driver see it exit 0:\n{out}\n{}",
        sc.log()
    );
}

#[test]
fn one_process_checkpointed_and_restarted_by_a_driver() {
    cycle("drv-one", None, false, Source::Api, None);
}

#[test]
fn one_process_fresh_pid() {
    cycle("drv-one-fresh", None, false, Source::Api, Some("0"));
}

#[test]
fn api_tree_images_back_to_back() {
    cycle("drv-tree-api", None, true, Source::Api, None);
}

#[test]
fn tree_image_with_manifest() {
    cycle("drv-tree-tool", None, true, Source::Tool, None);
}

#[test]
fn tree_image_directory() {
    cycle("drv-tree-dir", None, true, Source::ToolDir, None);
}

#[test]
fn tree_fresh_pids() {
    cycle("drv-tree-fresh", None, true, Source::Tool, Some("0"));
}

#[test]
fn unprivileged_one_process() {
    cycle("drv-one-nobody", Some(NOBODY), false, Source::Api, None);
}

#[test]
fn unprivileged_tree_back_to_back() {
    cycle("drv-tree-api-nobody", Some(NOBODY), true, Source::Api, None);
}

#[test]
fn unprivileged_tree_directory() {
    cycle(
        "drv-tree-dir-nobody",
        Some(NOBODY),
        true,
        Source::ToolDir,
        None,
    );
}

/// A restart that cannot be done fails with its errno: from `cr_request_restart` itself, or with
/// `CR_RSTRT_ASYNC_ERR` from the poll (the request succeeds). Here: a file that is not an image
/// (EINVAL), and an image whose original pid is still taken by the running original (EBUSY, root
/// only: without root the original pids are restored in a namespace of their own).
#[test]
fn restart_errors_at_once_or_deferred() {
    let sc = Scenario::new("drv-errors");
    let junk = sc.root().join("junk.img");
    fs::write(&junk, vec![b'x'; 8192]).expect("write junk");
    for flags in ["0x2", "0x3"] {
        let out = driver(
            &sc,
            &[
                "restart-fails".into(),
                junk.clone().into(),
                flags.into(),
                libc_errno::EINVAL.to_string().into(),
            ],
        );
        assert!(out.contains("failed as expected"), "{out}");
    }
    if !is_root() {
        return;
    }
    let prog = sc.program("spinner");
    let mut job = sc.start("spinner", sc.under_cr_run(&prog));
    job.wait_ready();
    let img = sc.checkpoint(job.pid(), &[]);
    for flags in ["0x2", "0x3"] {
        let out = driver(
            &sc,
            &[
                "restart-fails".into(),
                img.clone().into(),
                flags.into(),
                libc_errno::EBUSY.to_string().into(),
            ],
        );
        assert!(out.contains("failed as expected"), "{out}");
    }
    job.assert_running("after the refused restarts");
}

/// The errno values the driver is asked to expect (std has no libc constants).
mod libc_errno {
    pub const EBUSY: i32 = 16;
    pub const EINVAL: i32 = 22;
}
