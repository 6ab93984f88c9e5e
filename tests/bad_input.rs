//! The tools refuse bad input cleanly: a one-line message on stderr, a non-zero exit code, and no
//! harm to anything else — a checkpoint target keeps running and still PASSes after GO, and a
//! rejected image never starts a process.
//!
//! Run one test with e.g. `cargo test --test bad_input restart_truncated -- --nocapture`.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The target is alive after a failed request and finishes normally after GO.
fn assert_unharmed(sc: &Scenario, target: &mut Job, context: &str) {
    target.assert_running(context);
    sc.go();
    target.expect_pass(RESTART_TIMEOUT);
}

/// Nothing at `path`, and no temporary image beside it.
fn assert_nothing_written(path: &Path) {
    assert!(
        !path.exists(),
        "{} must not exist after a failed checkpoint",
        path.display()
    );
    if let Some(dir) = path.parent().filter(|d| d.is_dir()) {
        assert_no_tmp_files(dir);
    }
}

// -------------------------------------------------------------------------------------------
// cr_checkpoint
// -------------------------------------------------------------------------------------------

#[test]
fn checkpoint_nonexistent_pid() {
    let sc = Scenario::new("no-such-pid");
    for pid in [unused_pid(), 4_194_303] {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let img = sc.next_image_path();
        let res = sc.checkpoint_to(pid, &["--term"], &img);
        res.assert_failure_code(3);
        assert_nothing_written(&img);
    }
}

/// A process without the agent (not under cr_run, not linked with libcr): exit 52
/// (CR_ENOSUPPORT), the process is untouched, an earlier image at the destination is kept.
#[test]
fn checkpoint_process_without_agent() {
    let sc = Scenario::new("no-agent");
    let prog = sc.program("spinner");
    let mut target = sc.start("spinner (no agent)", sc.plain(&prog));
    target.wait_ready();

    let img = sc.next_image_path();
    fs::write(&img, b"an earlier image\n").unwrap();
    let res = sc.checkpoint_to(target.pid(), &["--term"], &img);
    res.assert_failure_code(52);
    assert_eq!(
        fs::read(&img).unwrap(),
        b"an earlier image\n",
        "a failed checkpoint must not replace an earlier file"
    );
    assert_no_tmp_files(&sc.img_dir());
    assert_unharmed(&sc, &mut target, "after a refused checkpoint");
}

/// As root: the target runs as nobody, the requester as another unprivileged uid.
#[test]
fn checkpoint_other_users_process() {
    if !is_root() {
        println!("note: not root: cannot run processes as two other users; skipped");
        return;
    }
    let sc = Scenario::as_user("other-user", NOBODY);
    let mut target = sc.start_program("spinner");

    // A destination the requester may write, so that only the target's owner is in the way.
    let drop_dir = sc.root().join("drop");
    fs::create_dir(&drop_dir).unwrap();
    fs::set_permissions(&drop_dir, fs::Permissions::from_mode(0o1777)).unwrap();
    let img = drop_dir.join("ctx");

    let argv = [
        sc.tools().cr_checkpoint.clone().into_os_string(),
        "--term".into(),
        "-f".into(),
        img.clone().into_os_string(),
        target.pid().to_string().into(),
    ];
    let res = sc.run_tool(
        "cr_checkpoint (other uid)",
        sc.command_as(Some(OTHER_USER), &argv),
    );
    let line = res.assert_one_line_failure();
    let lower = line.to_lowercase();
    assert!(
        lower.contains("permi") || lower.contains("eperm") || lower.contains("eacces"),
        "the message should say permission was denied: {line:?}\n{}",
        res.describe()
    );
    assert_nothing_written(&img);
    assert_unharmed(&sc, &mut target, "after another user's checkpoint request");
}

/// `-f` into a directory that does not exist: refused, and --term not applied.
#[test]
fn checkpoint_to_missing_dir() {
    let sc = Scenario::new("missing-dir");
    let mut target = sc.start_program("spinner");
    let img = PathBuf::from("/nonexistent-dir/x");
    assert!(!img.parent().unwrap().exists());
    let res = sc.checkpoint_to(target.pid(), &["--term"], &img);
    res.assert_one_line_failure();
    assert_unharmed(
        &sc,
        &mut target,
        "after a checkpoint to a missing directory",
    );
}

/// `-f` into a directory the (non-root) requester cannot write: EACCES (13), --term not applied.
/// As root, target and requester run as nobody and the directory is root's.
#[test]
fn checkpoint_to_readonly_dir() {
    let sc = if is_root() {
        Scenario::as_user("readonly-dir", NOBODY)
    } else {
        Scenario::new("readonly-dir")
    };
    let mut target = sc.start_program("spinner");
    let ro = sc.root().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(
        &ro,
        fs::Permissions::from_mode(if is_root() { 0o755 } else { 0o555 }),
    )
    .unwrap();
    let img = ro.join("ctx");

    let res = sc.checkpoint_to(target.pid(), &["--term"], &img);
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    res.assert_failure_code(13);
    assert_nothing_written(&img);
    assert!(
        fs::read_dir(&ro).unwrap().next().is_none(),
        "nothing may be created in the read-only dir"
    );
    assert_unharmed(
        &sc,
        &mut target,
        "after a checkpoint to a read-only directory",
    );
}

// -------------------------------------------------------------------------------------------
// cr_restart
// -------------------------------------------------------------------------------------------

/// A good image of a spinner (checkpointed with --term; GO not created yet).
fn spinner_image(sc: &Scenario) -> PathBuf {
    let mut sp = sc.start_program("spinner");
    let img = sc.checkpoint(sp.pid(), &["--term"]);
    sp.expect_signal(SIGTERM, DEATH_TIMEOUT);
    img
}

/// Write `bytes` as a bad image named `name` (mode 0600, like a real one).
fn bad_image(sc: &Scenario, name: &str, bytes: &[u8]) -> PathBuf {
    let p = sc.img_dir().join(name);
    fs::write(&p, bytes).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// cr_restart on `img` exits non-zero (not by a signal) with one line on stderr, and no process
/// from the image ran or runs: nothing printed PASS/READY, nothing holds cr_restart's stdout, its
/// process group is empty.
fn assert_restart_rejected(sc: &Scenario, img: &Path, what: &str) {
    let (job, _, line) = restart_refused(sc, img, what);
    let ctx = format!("cr_restart on {what} ({})", img.display());
    let left = job.group_members();
    assert!(
        left.is_empty(),
        "{ctx}: processes left in cr_restart's group: {left:?}\n{}",
        job.diag()
    );
    sc.note(&format!("{ctx} rejected: {line}"));
}

/// The good image still restarts (so the rejections above were about the damage).
fn assert_good_image_restarts(sc: &Scenario, img: &Path) {
    sc.go();
    sc.restart(img).expect_pass(RESTART_TIMEOUT);
}

#[test]
fn restart_random_bytes() {
    let sc = Scenario::new("random-bytes");
    let random = bad_image(&sc, "random", &pseudo_random_bytes(256 * 1024, 0x1234_5678));
    assert_restart_rejected(&sc, &random, "random bytes");
    let small = bad_image(&sc, "random-small", &pseudo_random_bytes(100, 42));
    assert_restart_rejected(&sc, &small, "100 random bytes");
    let text = bad_image(&sc, "text", b"this is not a checkpoint image\n");
    assert_restart_rejected(&sc, &text, "a text file");
}

#[test]
fn restart_empty_file() {
    let sc = Scenario::new("empty-image");
    let empty = bad_image(&sc, "empty", b"");
    assert_restart_rejected(&sc, &empty, "an empty file");
}

#[test]
fn restart_missing_file() {
    let sc = Scenario::new("missing-image");
    let missing = sc.img_dir().join("does-not-exist");
    assert_restart_rejected(&sc, &missing, "a missing file");
}

#[test]
fn restart_truncated_image() {
    let sc = Scenario::new("truncated-image");
    let img = spinner_image(&sc);
    let good = fs::read(&img).unwrap();
    let half = bad_image(&sc, "half", &good[..good.len() / 2]);
    assert_restart_rejected(&sc, &half, "an image truncated to half");
    let head = bad_image(&sc, "head", &good[..100.min(good.len())]);
    assert_restart_rejected(&sc, &head, "the first 100 bytes of an image");
    let no_last = bad_image(&sc, "no-last-byte", &good[..good.len() - 1]);
    assert_restart_rejected(&sc, &no_last, "an image without its last byte");
    // Random bytes behind a real header: only the checksums can tell.
    let mut fake = good[..4096.min(good.len())].to_vec();
    fake.extend(pseudo_random_bytes(good.len() - fake.len(), 7));
    let fake = bad_image(&sc, "real-header-random-body", &fake);
    assert_restart_rejected(&sc, &fake, "a real header followed by random bytes");
    assert_good_image_restarts(&sc, &img);
}

/// Index of the first non-zero byte at or after `from` (so the flip hits data, not padding).
fn non_zero_at_or_after(bytes: &[u8], from: usize) -> usize {
    (from..bytes.len())
        .find(|&i| bytes[i] != 0)
        .expect("a non-zero byte in the image")
}

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= 0xff;
    v
}

#[test]
fn restart_flipped_byte_in_page_data() {
    let sc = Scenario::new("flip-data");
    let img = spinner_image(&sc);
    let good = fs::read(&img).unwrap();
    let at = non_zero_at_or_after(&good, good.len() / 2);
    let bad = bad_image(&sc, "flip-middle", &flipped(&good, at));
    assert_restart_rejected(
        &sc,
        &bad,
        &format!("an image with byte {at} of {} flipped", good.len()),
    );
    assert_good_image_restarts(&sc, &img);
}

#[test]
fn restart_flipped_byte_in_header() {
    let sc = Scenario::new("flip-header");
    let img = spinner_image(&sc);
    let good = fs::read(&img).unwrap();
    // The magic, and the last non-zero byte of the first 4 KiB (header fields, not padding).
    let first_page = &good[..4096.min(good.len())];
    let last = first_page
        .iter()
        .rposition(|&b| b != 0)
        .expect("a non-zero byte in the first 4 KiB");
    for at in [0, last] {
        let bad = bad_image(&sc, &format!("flip-{at}"), &flipped(&good, at));
        assert_restart_rejected(&sc, &bad, &format!("an image with byte {at} flipped"));
    }
    assert_good_image_restarts(&sc, &img);
}

/// A thread that blocks every signal behind the agent's back cannot be stopped: with `--time 1`
/// the checkpoint fails after about a second with a message naming that thread, writes nothing,
/// and the program (all of its threads) carries on and still PASSes.
#[test]
fn checkpoint_thread_that_cannot_stop_times_out() {
    let sc = Scenario::new("stubborn");
    let mut target = sc.start_program("stubborn");
    let img = sc.next_image_path();
    let started = std::time::Instant::now();
    let res = sc.checkpoint_to(target.pid(), &["--term", "--time", "1"], &img);
    let msg = res.assert_failure_code(libc_etimedout());
    assert!(
        msg.contains("thread") && msg.contains("did not stop"),
        "message must name the thread that did not stop: {msg}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "--time 1 must give up quickly, took {:?}",
        started.elapsed()
    );
    assert_nothing_written(&img);
    assert_unharmed(&sc, &mut target, "after a timed-out checkpoint");
}

/// ETIMEDOUT on Linux.
fn libc_etimedout() -> i32 {
    110
}
