//! Files mapped from tmpfs are saved by content and mapped from their path again at restart
//! (issue 9, "files the program mapped from volatile places"): `c-tests/tmpfs_map.c` maps a tmpfs
//! file shared and another private; `deleted` removes both when it is terminated (as a JVM
//! removes /tmp/hsperfdata_USER/PID at exit), `kept` leaves them. A real JVM (`c-tests/Counter.java`,
//! compiled here) is checkpointed with `--term` and restarted, its count going on.
//!
//! The tmpfs is a private mount in the scenario when the test runs as root (else /dev/shm, when
//! that is a tmpfs); the JVM's perf-data directory is put on tmpfs by a bind mount in a mount
//! namespace of cr_run's and cr_restart's own (root), or used as it is when /tmp is a tmpfs.

mod common;

use common::*;
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TMPFS_MAGIC: i64 = 0x0102_1994;

fn is_tmpfs(p: &Path) -> bool {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: all-zero bytes are a valid statfs; statfs with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type == TMPFS_MAGIC
}

/// A directory on tmpfs for one scenario: a tmpfs mounted in the scenario (root; unmounted on
/// drop) or a directory in /dev/shm (removed on drop).
struct TmpfsDir {
    mount: Option<PathBuf>,
    dir: PathBuf,
}

impl TmpfsDir {
    fn new(sc: &Scenario, mode: &str) -> Option<TmpfsDir> {
        let owner = sc.user().unwrap_or((
            // SAFETY: getuid/getgid cannot fail.
            unsafe { libc::getuid() },
            unsafe { libc::getgid() },
        ));
        if is_root() {
            let m = sc.root().join("tmpfs");
            fs::create_dir_all(&m).expect("mkdir tmpfs");
            let opts = format!("size=16m,mode={mode},uid={},gid={}", owner.0, owner.1);
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                .arg(&m)
                .status()
                .expect("run mount");
            assert!(st.success(), "mount -t tmpfs {} failed", m.display());
            sc.note(&format!("tmpfs mounted at {}", m.display()));
            return Some(TmpfsDir {
                mount: Some(m.clone()),
                dir: m,
            });
        }
        let shm = Path::new("/dev/shm");
        if !is_tmpfs(shm) {
            return None;
        }
        let d = shm.join(format!(
            "libcr-test-{}-{}",
            std::process::id(),
            sc.root().file_name()?.to_string_lossy()
        ));
        fs::create_dir_all(&d).expect("mkdir in /dev/shm");
        Some(TmpfsDir {
            mount: None,
            dir: d,
        })
    }
}

impl Drop for TmpfsDir {
    fn drop(&mut self) {
        match &self.mount {
            Some(m) => {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
            None => {
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// `tmpfs_map MODE` in `sub` of a tmpfs, checkpointed with `--term`; returns the image, the
/// directory and the scenario.
fn checkpointed(
    name: &str,
    user: Option<(u32, u32)>,
    mode: &str,
) -> Option<(Scenario, TmpfsDir, PathBuf, PathBuf)> {
    let sc = match user {
        Some(u) => Scenario::as_user(name, u),
        None => Scenario::new(name),
    };
    let Some(t) = TmpfsDir::new(&sc, "0755") else {
        println!("note: skipped: not root and /dev/shm is not a tmpfs");
        return None;
    };
    let sub = t.dir.join("sub");
    fs::create_dir_all(&sub).expect("mkdir sub");
    if let Some((u, g)) = user {
        std::os::unix::fs::chown(&sub, Some(u), Some(g)).expect("chown sub");
    }
    let prog = sc.program("tmpfs_map");
    let mut cmd = sc.under_cr_run(&prog);
    cmd.arg(mode).env("CR_TEST_TMPFS", &sub);
    let mut job = sc.start("tmpfs_map", cmd);
    job.wait_ready();
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    Some((sc, t, sub, img))
}

fn cycle(name: &str, user: Option<(u32, u32)>, mode: &str) {
    let Some((sc, _t, sub, img)) = checkpointed(name, user, mode) else {
        return;
    };
    let gone = !sub.join("shared.dat").exists();
    assert_eq!(
        gone,
        mode == "deleted",
        "shared.dat after --term\n{}",
        sc.log()
    );
    let info = sc.run_tool(
        "cr_info",
        sc.command(&[cr_restart().with_file_name("cr_info"), img.clone()]),
    );
    info.assert_success();
    assert!(
        info.stdout.contains("tmpfs-shared") && info.stdout.contains("tmpfs-private"),
        "cr_info must show the tmpfs regions:\n{}",
        info.stdout
    );
    assert!(
        info.stdout.contains("Files on tmpfs, saved by content (2)"),
        "cr_info must list the tmpfs files:\n{}",
        info.stdout
    );
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

#[test]
fn tmpfs_files_removed_at_exit_are_recreated() {
    cycle("tmpfs-deleted", None, "deleted");
}

#[test]
fn tmpfs_files_kept_are_mapped_as_they_are() {
    cycle("tmpfs-kept", None, "kept");
}

#[test]
fn tmpfs_files_removed_at_exit_unprivileged() {
    if !is_root() {
        println!("note: not root: the plain cycle already runs unprivileged");
        return;
    }
    cycle("nobody-tmpfs-deleted", Some(NOBODY), "deleted");
}

/// A file that is gone and whose directory is gone too (Open MPI's `--term` removes its whole
/// session directory): the directory is created again and the image restarts.
#[test]
fn tmpfs_file_without_its_directory_is_re_created() {
    let Some((sc, _t, sub, img)) = checkpointed("tmpfs-nodir", None, "deleted") else {
        return;
    };
    fs::remove_dir_all(&sub).expect("remove sub");
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
    assert!(sub.is_dir(), "{} was not re-created", sub.display());
}

/// The same as nobody.
#[test]
fn tmpfs_file_without_its_directory_is_re_created_unprivileged() {
    if !is_root() {
        println!("note: not root: the plain test already runs unprivileged");
        return;
    }
    let Some((sc, _t, sub, img)) = checkpointed("nobody-tmpfs-nodir", Some(NOBODY), "deleted")
    else {
        return;
    };
    fs::remove_dir_all(&sub).expect("remove sub");
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
    assert!(sub.is_dir(), "{} was not re-created", sub.display());
}

/// A file still there but changed since the checkpoint: refused (116, ESTALE), naming it.
#[test]
fn tmpfs_file_changed_since_the_checkpoint_is_refused() {
    let Some((sc, _t, sub, img)) = checkpointed("tmpfs-changed", None, "kept") else {
        return;
    };
    let f = sub.join("shared.dat");
    let mut data = fs::read(&f).expect("read shared.dat");
    data.push(b'x');
    fs::write(&f, &data).expect("grow shared.dat");
    let mut job = sc.restart(&img);
    let st = job.wait_exit(RESTART_TIMEOUT);
    job.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    assert_eq!(st.code(), Some(116), "exit status {st}\n{}", sc.log());
    assert!(
        job.stderr()
            .contains("shared.dat changed since the checkpoint"),
        "{:?}",
        job.stderr()
    );
    // Removed, it is re-created from the image.
    fs::remove_file(&f).expect("rm shared.dat");
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

/// The last `count N` in `text`.
fn last_count(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
}

/// A JVM maps /tmp/hsperfdata_USER/PID shared and removes it at exit: checkpointed with --term,
/// it restarts (without --save-all) and its count goes on from where it was.
#[test]
fn java_counter_continues_after_term() {
    if !have_command("java") || !have_command("javac") {
        assert!(
            !in_ci(),
            "java and javac must be installed in CI (default-jdk-headless)"
        );
        println!("note: skipped: java/javac not installed");
        return;
    }
    let sc = Scenario::new("java-counter");
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let user = if uid == 0 {
        "root".to_string()
    } else {
        std::env::var("USER").unwrap_or_default()
    };
    let perf = PathBuf::from(format!("/tmp/hsperfdata_{user}"));
    let mut launcher: Vec<String> = Vec::new();
    let _tmpfs = if is_tmpfs(Path::new("/tmp")) {
        None
    } else if is_root() && have_command("unshare") {
        let t = TmpfsDir::new(&sc, "0700").expect("tmpfs as root");
        if !perf.exists() {
            fs::create_dir(&perf).expect("mkdir hsperfdata dir");
        }
        let script = format!(
            "mount --bind {} {} && exec \"$@\"",
            t.dir.display(),
            perf.display()
        );
        launcher = ["unshare", "-m", "sh", "-c", &script, "sh"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Some(t)
    } else {
        println!("note: skipped: /tmp is not a tmpfs and not root (cannot put the JVM's perf data on one)");
        return;
    };
    let sc = sc.launch_with(&launcher);
    // Declared after the scenario so that it is unmounted first: the scenario's directory (the
    // mount point inside it) can then be removed.
    let _tmpfs = _tmpfs;
    let classes = sc.root().join("java");
    fs::create_dir_all(&classes).expect("mkdir java");
    let st = Command::new("javac")
        .arg("-d")
        .arg(&classes)
        .arg(c_tests_dir().join("Counter.java"))
        .status()
        .expect("run javac");
    assert!(st.success(), "javac failed");
    let mut argv: Vec<std::ffi::OsString> = launcher.iter().map(Into::into).collect();
    argv.push(sc.tools().cr_run.clone().into());
    for a in [
        "--",
        "java",
        "-Xmx64m",
        "-XX:+UseSerialGC",
        "-XX:+UsePerfData",
        "-cp",
    ] {
        argv.push(a.into());
    }
    argv.push(classes.clone().into());
    argv.push("Counter".into());
    argv.push(sc.go_file().into());
    let cmd = sc.command(&argv);
    let mut job = sc.start("java Counter", cmd);
    job.wait_line("count 20", READY_TIMEOUT);
    let mapped = fs::read_to_string(format!("/proc/{}/maps", job.pid())).unwrap_or_default();
    let perf_file = format!("{}/{}", perf.display(), job.pid());
    assert!(
        mapped
            .lines()
            .any(|l| l.contains(&perf_file) && l.contains("rw-s")),
        "the JVM must map {perf_file} shared:\n{mapped}"
    );
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.wait_exit(DEATH_TIMEOUT);
    let before = last_count(&job.stdout()).expect("counts before the checkpoint");
    let mut restarted = sc.restart(&img);
    restarted.wait_line(&format!("count {}", before + 20), RESTART_TIMEOUT);
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
    // The restored JVM goes on from the checkpoint (at least count 20, at most one past the
    // original's last line: the original may have printed a few more before SIGTERM ended it),
    // one by one.
    let out = restarted.stdout();
    let counts: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
        .collect();
    let first = *counts.first().expect("counts after the restart");
    assert!(
        (20..=before + 1).contains(&first),
        "the restored JVM must go on from the checkpoint (original's last count {before}), first {first}:\n{out}"
    );
    assert!(
        counts.windows(2).all(|w| w[1] == w[0] + 1),
        "counts after the restart are not consecutive:\n{out}"
    );
}
