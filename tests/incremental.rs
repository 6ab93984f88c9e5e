//! Incremental checkpoints (issue 14): `cr_checkpoint --incremental` writes delta images that
//! hold only the pages written since their parent; `cr_restart` assembles the chain; a missing,
//! replaced or truncated parent is one clear line; every fallback to a full image is said.
//!
//! The target, c-tests/incr.c, changes a 64 MiB region by known steps (one word in every 64th
//! page, a dropped page in every 1024, a new mapping, a region mapped again at its address, a
//! heap block) and checks every byte after GO.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size of the big region of incr (MiB).
const MB: u64 = 64;

/// Asks the running incr to take its steps up to `k` and waits for its acknowledgement.
fn step(sc: &Scenario, k: u32) {
    step_of(sc, k, None)
}

/// [`step`], failing at once with `job`'s diagnostics if it ends meanwhile.
fn step_of(sc: &Scenario, k: u32, mut job: Option<&mut Job>) {
    let go = sc.go_file();
    let stepf = PathBuf::from(format!("{}.step", go.display()));
    let ack = PathBuf::from(format!("{}.ack", go.display()));
    let tmp = PathBuf::from(format!("{}.step.tmp", go.display()));
    fs::write(&tmp, format!("{k}\n")).expect("write step");
    fs::rename(&tmp, &stepf).expect("rename step");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let done = fs::read_to_string(&ack)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if done == Some(k) {
            return;
        }
        if let Some(j) = job.as_deref_mut() {
            if j.try_wait_exit(Duration::ZERO).is_some() {
                panic!("incr ended before step {k}:\n{}\n{}", j.diag(), sc.log());
            }
        }
        assert!(
            Instant::now() < deadline,
            "incr did not acknowledge step {k}\n{}\n{}",
            job.map(|j| j.diag()).unwrap_or_default(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `cr_checkpoint -v --incremental[=..] ARGS -f IMG PID`, asserted successful; returns stderr.
fn incremental(sc: &Scenario, pid: u32, img: &Path, args: &[&str]) -> String {
    let mut flags = vec!["-v"];
    if !args.iter().any(|a| a.starts_with("--incremental")) {
        flags.push("--incremental");
    }
    flags.extend_from_slice(args);
    let res = sc.checkpoint_to(pid, &flags, img);
    res.assert_success();
    sc.assert_image_file(img);
    res.stderr
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Starts incr under cr_run and waits for READY.
fn start(sc: &Scenario) -> Job {
    let mut prog = sc.program("incr");
    prog.argv.push(MB.to_string().into());
    let mut job = sc.start("incr", sc.under_cr_run(&prog));
    job.wait_ready();
    job
}

/// A full image, then two deltas (the last with --term), each delta small; the restart of the
/// newest assembles the chain and incr finds every byte as it left it, and goes on changing
/// memory after the restart.
fn chain_restores(sc: &Scenario) {
    let mut job = start(sc);
    let img = sc.img_dir().join("img");
    let out = incremental(sc, job.pid(), &img, &[]);
    assert!(
        out.contains("incr=full(no parent yet"),
        "the first incremental checkpoint must say it is full and why:\n{out}"
    );
    let full = size(&img);
    assert!(full > MB << 20, "full image of {full} bytes\n{}", sc.log());
    step(sc, 1);
    let out = incremental(sc, job.pid(), &img, &[]);
    assert!(
        out.contains("incr=delta("),
        "expected a delta image:\n{out}"
    );
    let parent = sc.img_dir().join("img.~1~");
    assert_eq!(size(&parent), full, "the parent is kept as img.~1~");
    // Step 1 wrote 1 MiB of the big region (one word in each of 256 pages… of 16384: 1/64),
    // mapped 1 MiB anew, mapped 256 KiB again and allocated a 1 MiB heap block: ~3.3 MiB, plus
    // the metadata, stacks and the libraries' data.
    let delta1 = size(&img);
    assert!(
        delta1 < 8 << 20 && delta1 < full / 8,
        "delta image of {delta1} bytes (full: {full})\n{}",
        sc.log()
    );
    step(sc, 2);
    let out = incremental(sc, job.pid(), &img, &["--term"]);
    assert!(
        out.contains("incr=delta("),
        "expected a delta image:\n{out}"
    );
    let delta2 = size(&img);
    assert!(
        delta2 < 8 << 20,
        "second delta image of {delta2} bytes\n{}",
        sc.log()
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.note(&format!(
        "sizes: full {full}, delta {delta1}, delta {delta2}"
    ));
    let mut restarted = sc.restart(&img);
    // A lazy restart maps the pages the full image at the end of the chain supplies from it.
    let deadline = Instant::now() + READY_TIMEOUT;
    while !descendants(restarted.pid()).into_iter().any(|p| {
        fs::read_to_string(format!("/proc/{p}/maps")).is_ok_and(|m| m.contains("/img.~1~"))
    }) {
        assert!(
            Instant::now() < deadline && restarted.try_wait_exit(Duration::ZERO).is_none(),
            "no restored process maps the chain's full image img.~1~:\n{}\n{}",
            restarted.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    step_of(sc, 3, Some(&mut restarted));
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

/// The hot pages a delta reported (`N hot pages` in `cr_checkpoint -v`; none: 0).
fn hot_pages(out: &str) -> u64 {
    out.split(" hot pages")
        .next()
        .filter(|head| head.len() < out.len())
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Hot pages: a page written in each of the last two intervals is left unprotected and saved
/// in every delta until every 8th delta protects everything again. incr's hot window (every
/// page written at every step, moved at step 7 so that half of it is written no more, one page
/// of it dropped per step) next to its cold writes: ten deltas (one of them the 8th), each
/// small; the chain restarts and incr finds every byte.
#[test]
fn hot_pages_stay_unprotected_and_deltas_restore() {
    hot_pages_deltas(&Scenario::new("incr-hot"));
}

#[test]
fn hot_pages_stay_unprotected_and_deltas_restore_as_nobody() {
    hot_pages_deltas(&Scenario::as_user("incr-hot-nobody", NOBODY));
}

fn hot_pages_deltas(sc: &Scenario) {
    let mut prog = sc.program("incr");
    prog.argv.push(MB.to_string().into());
    prog.argv.push("hot".into());
    let mut job = sc.start("incr", sc.under_cr_run(&prog));
    job.wait_ready();
    let img = sc.img_dir().join("img");
    incremental(sc, job.pid(), &img, &["--max-chain", "16"]);
    let mut outs = Vec::new();
    for k in 1..=10u32 {
        step_of(sc, k, Some(&mut job));
        let mut args = vec!["--max-chain", "16"];
        if k == 10 {
            args.push("--term");
        }
        let out = incremental(sc, job.pid(), &img, &args);
        assert!(
            out.contains("incr=delta("),
            "delta {k} is not a delta:\n{out}"
        );
        let len = size(&img);
        assert!(
            len < 8 << 20,
            "delta {k} of {len} bytes\n{out}\n{}",
            sc.log()
        );
        outs.push(out);
    }
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let hot: Vec<u64> = outs.iter().map(|o| hot_pages(o)).collect();
    sc.note(&format!("hot pages per delta: {hot:?}"));
    let all = |o: &String| o.contains("all protected again");
    // The first delta: nothing was written twice yet. Deltas 2-7: the hot window (256 pages)
    // and whatever else the program writes every time (stack, libc's data). The 8th protects
    // everything again; the 9th and 10th find the window's pages still written hot again.
    assert_eq!(hot[0], 0, "first delta:\n{}", outs[0]);
    for (k, (&h, o)) in hot.iter().zip(&outs).enumerate() {
        let k = k + 1;
        if k == 8 {
            assert!(
                h == 0 && all(o),
                "the 8th delta must protect everything again:\n{o}"
            );
        } else {
            assert!(!all(o), "delta {k} must not protect everything again:\n{o}");
            if k > 1 {
                assert!(
                    h >= 250,
                    "delta {k}: {h} hot pages, expected the window's 256:\n{o}"
                );
            }
        }
    }
    let mut restarted = sc.restart(&img);
    let deadline = Instant::now() + READY_TIMEOUT;
    while !descendants(restarted.pid())
        .into_iter()
        .any(|p| fs::read_to_string(format!("/proc/{p}/maps")).is_ok_and(|m| m.contains("/img.~")))
    {
        assert!(
            Instant::now() < deadline && restarted.try_wait_exit(Duration::ZERO).is_none(),
            "no restored process maps the chain's images:\n{}\n{}",
            restarted.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    step_of(sc, 11, Some(&mut restarted));
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn delta_chain_restores() {
    chain_restores(&Scenario::new("incr-chain"));
}

#[test]
fn delta_chain_restores_as_nobody() {
    chain_restores(&Scenario::as_user("incr-chain-nobody", NOBODY));
}

/// A full image and a delta of a process that is then killed.
fn full_and_delta(sc: &Scenario) -> (PathBuf, PathBuf) {
    let mut job = start(sc);
    let img = sc.img_dir().join("img");
    incremental(sc, job.pid(), &img, &[]);
    step(sc, 1);
    incremental(sc, job.pid(), &img, &["--kill"]);
    job.expect_signal(SIGKILL, DEATH_TIMEOUT);
    (img.clone(), sc.img_dir().join("img.~1~"))
}

#[test]
fn missing_replaced_or_truncated_parent_is_refused() {
    let sc = Scenario::new("incr-parent-gone");
    let (img, parent) = full_and_delta(&sc);
    let aside = sc.img_dir().join("aside");
    fs::rename(&parent, &aside).expect("move parent");
    let (_, _, line) = restart_refused(&sc, &img, "a delta whose parent is missing");
    assert!(
        line.contains("img.~1~") && line.contains("missing"),
        "the error must name the missing parent: {line}"
    );
    // Replaced: another image of the same length (the delta itself, padded) is not the parent.
    let mut other = fs::read(&img).expect("read delta");
    other.resize(size(&aside) as usize, 0);
    fs::write(&parent, &other).expect("write other");
    let (_, _, line) = restart_refused(&sc, &img, "a delta whose parent was replaced");
    assert!(
        line.contains("img.~1~") && line.contains("replaced"),
        "the error must say the parent was replaced: {line}"
    );
    // Truncated.
    let mut cut = fs::read(&aside).expect("read parent");
    cut.truncate(cut.len() - 4096);
    fs::write(&parent, &cut).expect("write truncated");
    let (_, _, line) = restart_refused(&sc, &img, "a delta whose parent was truncated");
    assert!(
        line.contains("img.~1~") && line.contains("truncated"),
        "the error must say the parent was truncated: {line}"
    );
    // Damaged page data (a byte in the middle of the full image): a lazy restart cannot see it
    // (it maps the pages), --eager reads every link in full and refuses it by name.
    let mut bad = fs::read(&aside).expect("read parent");
    let mid = bad.len() / 2;
    bad[mid] ^= 0x5a;
    fs::write(&parent, &bad).expect("write damaged");
    let mut job = sc.restart_with(&img, &["--eager"]);
    let st = job.wait_exit(TOOL_TIMEOUT);
    // All of its stderr, not what was read when it exited.
    job.wait_output_closed(Duration::from_secs(5));
    let err = job.stderr();
    assert!(
        !st.success() && err.contains("img.~1~") && err.contains("checksum mismatch"),
        "--eager must refuse a chain whose parent's page data is damaged:\n{}",
        job.diag()
    );
    // Back in place, the chain restores.
    fs::rename(&aside, &parent).expect("restore parent");
    let mut restarted = sc.restart(&img);
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

/// A parent replaced after cr_restart checked the chain (stopped at `LIBCR_TEST_STOP_AT=loaded`)
/// is refused by name, lazily and with --eager: the restart reads a link's pages from the file
/// it checked (same device, inode, size and times), without reading its metadata again. `--verbose`
/// says which links supply pages.
#[test]
fn parent_replaced_after_the_chain_was_checked_is_refused() {
    let sc = Scenario::new("incr-parent-swapped");
    let (img, parent) = full_and_delta(&sc);
    let copy = sc.img_dir().join("copy");
    for args in [&["--verbose"][..], &["--verbose", "--eager"][..]] {
        let mut argv: Vec<std::ffi::OsString> = vec![sc.tools().cr_restart.clone().into()];
        argv.extend(args.iter().map(std::ffi::OsString::from));
        argv.push(img.clone().into());
        let mut cmd = sc.command(&argv);
        cmd.env("LIBCR_TEST_STOP_AT", "loaded");
        let mut job = sc.start("cr_restart (stops once loaded)", cmd);
        let deadline = Instant::now() + RESTART_TIMEOUT;
        while proc_stat(job.pid()).is_none_or(|st| st.state != 'T') {
            assert!(
                Instant::now() < deadline && job.try_wait_exit(Duration::ZERO).is_none(),
                "cr_restart {args:?} never stopped once loaded:\n{}",
                job.diag()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The same bytes under a new inode: not the file that was checked.
        fs::copy(&parent, &copy).expect("copy parent");
        fs::rename(&copy, &parent).expect("replace parent");
        // SAFETY: continuing our own stopped child.
        unsafe { libc::kill(job.pid() as i32, libc::SIGCONT) };
        let st = job.wait_exit(TOOL_TIMEOUT);
        job.wait_output_closed(Duration::from_secs(5));
        let err = job.stderr();
        assert!(
            err.contains("pages from 1 of them") && err.contains("the other 0 supply none"),
            "cr_restart {args:?} --verbose must say which links supply pages:\n{}",
            job.diag()
        );
        assert!(
            !st.success()
                && err.lines().any(|l| l.contains("img.~1~")
                    && l.contains("replaced or changed while the restart was reading its chain")),
            "cr_restart {args:?} must refuse a parent replaced after it was checked:\n{}",
            job.diag()
        );
    }
    // Left as it is now, the chain restores.
    let mut restarted = sc.restart(&img);
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

/// Every fallback to a full image is said (under -v and in the result line): after an eager
/// restart nothing is armed; a parent that is not the image tracking was armed for; --max-chain.
#[test]
fn fallbacks_to_full_images_are_said() {
    let sc = Scenario::new("incr-fallbacks");
    let mut job = start(&sc);
    let a = sc.img_dir().join("a");
    let b = sc.img_dir().join("b");
    let c = sc.img_dir().join("c");
    incremental(&sc, job.pid(), &a, &[]);
    // A plain checkpoint in between leaves tracking armed for a.
    let res = sc.checkpoint_to(job.pid(), &["-v"], &b);
    res.assert_success();
    let b_arg = format!("--incremental={}", b.display());
    let out = incremental(&sc, job.pid(), &c, &[&b_arg]);
    assert!(
        out.contains("incr=full(the parent is not the image write-tracking was armed for)"),
        "{out}"
    );
    // --max-chain 2: full c, delta d, then full again.
    step(&sc, 1);
    let d = sc.img_dir().join("d");
    let c_arg = format!("--incremental={}", c.display());
    let out = incremental(&sc, job.pid(), &d, &[&c_arg, "--max-chain", "2"]);
    assert!(out.contains("incr=delta("), "{out}");
    let e = sc.img_dir().join("e");
    let d_arg = format!("--incremental={}", d.display());
    let out = incremental(&sc, job.pid(), &e, &[&d_arg, "--max-chain", "2"]);
    assert!(out.contains("incr=full(--max-chain 2 reached)"), "{out}");
    step(&sc, 2);
    incremental(&sc, job.pid(), &e, &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    // After an eager restart nothing is armed: the next incremental checkpoint is full, and
    // says so (after a lazy one, the image restarted from, or a copy of it, can be the parent:
    // `lazily_restored_process_takes_small_deltas`).
    let restarted = sc.restart_with(&e, &["--eager"]);
    let f = sc.img_dir().join("f");
    fs::copy(&e, &f).expect("copy");
    let pid = restarted.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let res = sc.checkpoint_to(pid, &["-v", "--incremental"], &f);
        if res.success() {
            break res.stderr;
        }
        assert!(Instant::now() < deadline, "{}", res.describe());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.contains("incr=full(nothing armed here"), "{out}");
    let mut restarted = restarted;
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

/// `cr_info --merge OUT` folds a chain into one full image that restarts with the chain gone;
/// `cr_info` shows the chain; merging a full image is one clear line.
#[test]
fn merged_chain_restores_without_the_chain() {
    let sc = Scenario::new("incr-merge");
    let (img, parent) = full_and_delta(&sc);
    let cr_info = PathBuf::from(env!("CARGO_BIN_EXE_cr_info"));
    let res = sc.run_tool(
        "cr_info",
        sc.command(&[cr_info.as_os_str(), img.as_os_str()]),
    );
    res.assert_success();
    assert!(
        res.stdout.contains("delta image      1 link(s) behind it")
            && res.stdout.contains("img.~1~"),
        "cr_info must show the chain:\n{}",
        res.stdout
    );
    let merged = sc.img_dir().join("merged");
    let res = sc.run_tool(
        "cr_info --merge",
        sc.command(&[
            cr_info.as_os_str(),
            "--merge".as_ref(),
            merged.as_os_str(),
            img.as_os_str(),
        ]),
    );
    res.assert_success();
    let res = sc.run_tool(
        "cr_info --merge (full image)",
        sc.command(&[
            cr_info.as_os_str(),
            "--merge".as_ref(),
            sc.img_dir().join("again").as_os_str(),
            merged.as_os_str(),
        ]),
    );
    let line = res.assert_one_line_failure();
    assert!(line.contains("not a delta image"), "{line}");
    fs::remove_file(&img).expect("remove delta");
    fs::remove_file(&parent).expect("remove parent");
    let mut restarted = sc.restart(&merged);
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

/// Every process of `pid`'s tree (children from /proc), `pid` first.
fn tree_pids(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let kids = fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        out.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok()),
        );
        i += 1;
    }
    out
}

/// One delta per process of a tree: two incremental checkpoints of tree.c (a root and a child
/// streaming through pipes) write a tree image of full images, then a tree image of deltas,
/// each naming its process's image in the parent tree; the restart assembles both chains and
/// every process checks its state after GO.
#[test]
fn tree_checkpoint_gets_one_delta_per_process() {
    let sc = Scenario::new("incr-tree");
    let mut prog = sc.program("tree");
    prog.argv.push("1".into());
    let mut job = sc.start("tree", sc.under_cr_run(&prog));
    job.wait_ready();
    let pids = tree_pids(job.pid());
    assert_eq!(pids.len(), 2, "tree 1 runs as two processes: {pids:?}");
    let img = sc.img_dir().join("tree");
    let out = incremental(&sc, job.pid(), &img, &[]);
    assert_eq!(
        out.matches("incr=full(no parent yet").count(),
        2,
        "a full image of each process first:\n{out}"
    );
    let out = incremental(&sc, job.pid(), &img, &["--term"]);
    assert_eq!(
        out.matches("incr=delta(").count(),
        2,
        "then a delta of each process:\n{out}"
    );
    let full = size(&sc.img_dir().join("tree.~1~"));
    let delta = size(&img);
    assert!(delta < full, "delta tree {delta} bytes, full tree {full}");
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let deadline = Instant::now() + DEATH_TIMEOUT;
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            Instant::now() < deadline,
            "the tree did not end:\n{}",
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut restarted = sc.restart(&img);
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

/// `cr_info --merge` keeps the contents of the files a delta saved (they follow the memory pages
/// in the data area): `c-tests/tmp_scratch.c` has a scratch file under /tmp that its SIGTERM
/// handler deletes; the merged image restarts with the chain gone and the file comes back.
#[test]
fn merged_chain_keeps_saved_files() {
    let sc = Scenario::new("incr-merge-files");
    let dir = PathBuf::from(format!("/tmp/libcr-incr-merge-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir in /tmp");
    let prog = sc.program("tmp_scratch");
    let mut cmd = sc.under_cr_run(&prog);
    cmd.env("CR_TEST_SCRATCH", &dir);
    let mut job = sc.start("tmp_scratch", cmd);
    job.wait_ready();
    let img = sc.img_dir().join("img");
    incremental(&sc, job.pid(), &img, &[]);
    let out = incremental(&sc, job.pid(), &img, &["--term"]);
    assert!(out.contains("incr=delta("), "{out}");
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let merged = sc.img_dir().join("merged");
    let cr_info = PathBuf::from(env!("CARGO_BIN_EXE_cr_info"));
    sc.run_tool(
        "cr_info --merge",
        sc.command(&[
            cr_info.as_os_str(),
            "--merge".as_ref(),
            merged.as_os_str(),
            img.as_os_str(),
        ]),
    )
    .assert_success();
    fs::remove_file(&img).expect("remove delta");
    fs::remove_file(sc.img_dir().join("img.~1~")).expect("remove parent");
    sc.go();
    let mut restarted = sc.restart(&merged);
    restarted.expect_pass(RESTART_TIMEOUT);
    let _ = fs::remove_dir_all(&dir);
}

/// `sh -c SCRIPT` as the scenario's user, started (`$CR_CHECKPOINT`, `$CR_RESTART` set).
fn shell(sc: &Scenario, what: &str, script: &str) -> Job {
    let mut cmd = sc.command(&["sh", "-c", script]);
    cmd.env("CR_CHECKPOINT", &sc.tools().cr_checkpoint);
    cmd.env("CR_RESTART", &sc.tools().cr_restart);
    sc.note(&format!("{what}: {script}"));
    sc.start(what, cmd)
}

/// [`shell`] to completion; asserts success and returns its stderr.
fn shell_ok(sc: &Scenario, what: &str, script: &str) -> String {
    let mut job = shell(sc, what, script);
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    assert!(st.success(), "{what} failed ({st}):\n{}", job.diag());
    job.stderr()
}

/// Streaming (issue 14): a full image written to a pipe (`cr_checkpoint --incremental -f - PID |
/// cat > full`) and a delta written to a pipe on descriptor 3 (`--incremental=full -F 3
/// 3>pipe`) restart from a pipe (`cat IMG | cr_restart -`), the delta with its chain shipped to
/// another directory (`--chain-dir DIR`); without `--chain-dir` the missing parent is one line
/// that says how to give it. The restart reads the stream into memory and says so under
/// `--verbose`.
fn streamed_images_restart_from_pipes(sc: &Scenario) {
    let mut job = start(sc);
    let pid = job.pid();
    let dir = sc.img_dir();
    let full = dir.join("full");
    let delta = dir.join("delta");
    let out = shell_ok(
        sc,
        "cr_checkpoint -f - | cat",
        &format!(
            "\"$CR_CHECKPOINT\" -v --incremental -f - {pid} | cat > '{}'",
            full.display()
        ),
    );
    assert!(
        out.contains("incr=full(no parent: the destination is a stream"),
        "a stream has no default parent, and says so:\n{out}"
    );
    step(sc, 1);
    let out = shell_ok(
        sc,
        "cr_checkpoint -F 3 3>pipe | cat",
        &format!(
            "\"$CR_CHECKPOINT\" -v --incremental='{}' --term -F 3 {pid} 3>&1 1>&2 | cat > '{}'",
            full.display(),
            delta.display()
        ),
    );
    assert!(
        out.contains("incr=delta("),
        "expected a delta image:\n{out}"
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let (f, d) = (size(&full), size(&delta));
    assert!(
        f > MB << 20 && d < 8 << 20,
        "full {f} bytes, delta {d} bytes\n{}",
        sc.log()
    );
    // The chain "shipped" elsewhere: the delta names its parent by its absolute path, which is
    // gone; --chain-dir says where the chain is now.
    let shipped = sc.root().join("shipped");
    fs::create_dir_all(&shipped).expect("mkdir shipped");
    fs::rename(&full, shipped.join("full")).expect("move parent");
    let mut refused = shell(
        sc,
        "cat delta | cr_restart - (no --chain-dir)",
        &format!("cat '{}' | \"$CR_RESTART\" -", delta.display()),
    );
    let st = refused.wait_exit(TOOL_TIMEOUT);
    refused.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    let err = refused.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !st.success()
            && lines.len() == 1
            && lines[0].contains("missing")
            && lines[0].contains("--chain-dir"),
        "a streamed delta whose chain is not where it names it: one line naming --chain-dir:\n{}",
        refused.diag()
    );
    sc.go();
    // The full image from a pipe.
    let mut restarted = shell(
        sc,
        "cat full | cr_restart -",
        &format!(
            "cat '{}' | \"$CR_RESTART\" --verbose -",
            shipped.join("full").display()
        ),
    );
    restarted.expect_pass(RESTART_TIMEOUT);
    assert!(
        restarted.stderr().contains("the image came from a stream"),
        "--verbose says the streamed image is read in full:\n{}",
        restarted.diag()
    );
    // The delta from a pipe, its chain from --chain-dir.
    let mut restarted = shell(
        sc,
        "cat delta | cr_restart --chain-dir DIR -",
        &format!(
            "cat '{}' | \"$CR_RESTART\" --chain-dir '{}' -",
            delta.display(),
            shipped.display()
        ),
    );
    restarted.expect_pass(RESTART_TIMEOUT);
    // And from a descriptor (-F 5 on a pipe).
    let mut restarted = shell(
        sc,
        "cr_restart --chain-dir DIR -F 5 5<pipe",
        &format!(
            "cat '{}' | \"$CR_RESTART\" --chain-dir '{}' -F 5 5<&0 </dev/null",
            delta.display(),
            shipped.display()
        ),
    );
    restarted.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn streamed_images_restart_from_pipes_as_root() {
    streamed_images_restart_from_pipes(&Scenario::new("incr-stream"));
}

#[test]
fn streamed_images_restart_from_pipes_as_nobody() {
    streamed_images_restart_from_pipes(&Scenario::as_user("incr-stream-nobody", NOBODY));
}

/// Tracking after an eager restart (issue 14): a restored process's first incremental
/// checkpoint (even against the image it was restored from: its memory is anonymous, nothing
/// tells what the program wrote since) is a full image, said under -v ("nothing armed here"),
/// and arms write-tracking; the next one is a small delta of the restored process against it,
/// whose chain restarts with every byte right.
#[test]
fn restored_process_takes_deltas_again() {
    restored_takes_deltas(&Scenario::new("incr-after-restart"), true);
}

/// After a lazy restart (the default) from a delta's chain, the restored memory is mapped from
/// the chain's images. The first incremental checkpoint that names the image restarted from as
/// its parent is a delta all the same, and small: the pages the program wrote since the restart
/// are no longer the image's file pages, the others are what the image holds. Write-tracking
/// is armed afterwards (image-backed memory included), so the next delta is small too. The
/// newest delta (a chain of four images) and the first one (three) each restart with every
/// byte right.
#[test]
fn lazily_restored_process_takes_small_deltas() {
    lazily_restored_takes_deltas(&Scenario::new("incr-after-lazy-restart"), true);
}

/// [`lazily_restored_process_takes_small_deltas`] as an unprivileged user (the restart runs in
/// a private user and pid namespace).
#[test]
fn lazily_restored_process_takes_small_deltas_as_nobody() {
    lazily_restored_takes_deltas(
        &Scenario::as_user("incr-after-lazy-restart-nobody", NOBODY),
        true,
    );
}

/// [`lazily_restored_process_takes_small_deltas`] after a lazy restart of a full image.
#[test]
fn lazily_restored_full_image_takes_small_deltas() {
    lazily_restored_takes_deltas(&Scenario::new("incr-after-lazy-full"), false);
}

/// See [`lazily_restored_process_takes_small_deltas`]; `chain`: the image restarted from is a
/// delta (else a full image).
fn lazily_restored_takes_deltas(sc: &Scenario, chain: bool) {
    let mut job = start(sc);
    let a = sc.img_dir().join("a");
    if chain {
        incremental(sc, job.pid(), &a, &[]);
        step(sc, 1);
        incremental(sc, job.pid(), &a, &["--term"]);
    } else {
        step(sc, 1);
        incremental(sc, job.pid(), &a, &["--term"]);
    }
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let full = size(&sc.img_dir().join(if chain { "a.~1~" } else { "a" }));
    let mut restarted = sc.restart(&a);
    let pid = restarted.pid();
    // Restored (its memory maps the image) before it is asked for a step, as in chain_restores:
    // a step file written while cr_restart still restored it went unanswered for 30 s in 2 of
    // about 60 runs (not diagnosed; the process sat in its 1 ms polling loop).
    let deadline = Instant::now() + READY_TIMEOUT;
    while !descendants(pid)
        .into_iter()
        .any(|p| fs::read_to_string(format!("/proc/{p}/maps")).is_ok_and(|m| m.contains("/img/a")))
    {
        assert!(
            Instant::now() < deadline && restarted.try_wait_exit(Duration::ZERO).is_none(),
            "no restored process maps the image a:\n{}\n{}",
            restarted.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Written since the restart: the pages of the mapped image it changes are the delta's.
    step_of(sc, 2, Some(&mut restarted));
    let b = sc.img_dir().join("b");
    let a_arg = format!("--incremental={}", a.display());
    let out = incremental(sc, pid, &b, &[&a_arg]);
    assert!(
        out.contains("incr=delta(") && out.contains("lazily restored"),
        "the first incremental checkpoint after a lazy restart is a delta of the image restarted from:\n{out}"
    );
    let first = size(&b);
    step_of(sc, 3, Some(&mut restarted));
    let out = incremental(sc, pid, &b, &["--term"]);
    assert!(
        out.contains("incr=delta(") && !out.contains("lazily restored"),
        "the next one is a delta against the first:\n{out}"
    );
    let second = size(&b);
    sc.note(&format!(
        "full {full} bytes, first delta after the restart {first}, second {second}"
    ));
    for (what, d) in [("first", first), ("second", second)] {
        assert!(
            d < 8 << 20 && d < full / 8,
            "{what} delta after a lazy restart: {d} bytes, full {full}\n{}",
            sc.log()
        );
    }
    restarted.expect_signal(SIGTERM, DEATH_TIMEOUT);
    // The newest delta: b, b.~1~, a (and a.~1~).
    let mut again = sc.restart(&b);
    step_of(sc, 4, Some(&mut again));
    sc.go();
    again.expect_pass(RESTART_TIMEOUT);
    // The first delta after the lazy restart alone (its state: step 2).
    let mut first_again = sc.restart(&sc.img_dir().join("b.~1~"));
    step_of(sc, 4, Some(&mut first_again));
    sc.go();
    first_again.expect_pass(RESTART_TIMEOUT);
}

/// See [`restored_process_takes_deltas_again`]; `eager`: the first restart reads its memory
/// (`--eager`) and the delta must be small.
fn restored_takes_deltas(sc: &Scenario, eager: bool) {
    let mut job = start(sc);
    let a = sc.img_dir().join("a");
    incremental(sc, job.pid(), &a, &[]);
    step(sc, 1);
    incremental(sc, job.pid(), &a, &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let restarted = if eager {
        sc.restart_with(&a, &["--eager"])
    } else {
        sc.restart(&a)
    };
    let pid = restarted.pid();
    let mut restarted = restarted;
    let b = sc.img_dir().join("b");
    // The restored process answers once its restart is done.
    let a_arg = format!("--incremental={}", a.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let res = sc.checkpoint_to(pid, &["-v", &a_arg], &b);
        if res.success() {
            break res.stderr;
        }
        assert!(Instant::now() < deadline, "{}", res.describe());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        out.contains("incr=full(nothing armed here"),
        "the first incremental checkpoint after a restart is full, and says why:\n{out}"
    );
    step_of(sc, 2, Some(&mut restarted));
    let out = incremental(sc, pid, &b, &["--term"]);
    assert!(
        out.contains("incr=delta("),
        "the next one is a delta of the restored process:\n{out}"
    );
    let (full, delta) = (size(&sc.img_dir().join("b.~1~")), size(&b));
    sc.note(&format!("delta {delta} bytes, full {full}"));
    assert!(
        !eager || (delta < 8 << 20 && delta < full / 8),
        "delta {delta} bytes, full {full}\n{}",
        sc.log()
    );
    restarted.expect_signal(SIGTERM, DEATH_TIMEOUT);
    // The first restart mapped memory from a's chain (lazily): b's images hold it by content,
    // so a's chain may go.
    fs::remove_file(&a).expect("remove a");
    fs::remove_file(sc.img_dir().join("a.~1~")).expect("remove a.~1~");
    let mut again = sc.restart(&b);
    step_of(sc, 3, Some(&mut again));
    sc.go();
    again.expect_pass(RESTART_TIMEOUT);
}

/// Deltas with the copy-on-write mode (`--incremental --cow`, issue 14): the scans of the
/// written pages and the arming of write-tracking happen in the stop, the forked writer writes
/// the image while the program runs on. A full image and two deltas, each written by a writer
/// (`mode=cow`), the program changing memory after each; the chain restarts with every byte
/// right. With `--compress` (`compress`), each image is compressed by cr_checkpoint from the
/// writer's pipe (the deltas name their parents by the raw images the writers wrote).
fn cow_deltas(sc: &Scenario, compress: bool) {
    // incr polls its step file under /tmp every millisecond: a checkpoint that finds it open
    // would save it by content, which a copy-on-write checkpoint does stopped.
    const COW3: &[&str] = &["--cow", "--save-tmp-limit", "none", "--compress"];
    let cow = &COW3[..if compress { 4 } else { 3 }];
    let mut job = start(sc);
    let img = sc.img_dir().join("img");
    let out = incremental(sc, job.pid(), &img, cow);
    assert!(
        out.contains("mode=cow") && out.contains("incr=full(no parent yet"),
        "a full image written by a copy-on-write writer:\n{out}"
    );
    step(sc, 1);
    let out = incremental(sc, job.pid(), &img, cow);
    assert!(
        out.contains("mode=cow") && out.contains("incr=delta("),
        "a delta written by a copy-on-write writer:\n{out}"
    );
    let delta1 = size(&img);
    assert!(delta1 < 8 << 20, "delta of {delta1} bytes\n{}", sc.log());
    // Written after the snapshot: the next delta must hold it.
    step(sc, 2);
    let last: Vec<&str> = cow.iter().copied().chain(["--term"]).collect();
    let out = incremental(sc, job.pid(), &img, &last);
    assert!(
        out.contains("mode=cow") && out.contains("incr=delta("),
        "a second copy-on-write delta:\n{out}"
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    if compress {
        for link in [img.clone(), sc.img_dir().join("img.~1~")] {
            let f = fs::File::open(&link).expect("open a link");
            let parsed = cr::image::reader::Image::open(&f).expect("the link reads");
            assert!(
                parsed.compressed(),
                "{} must be a compressed image\n{out}",
                link.display()
            );
        }
    }
    let mut restarted = sc.restart(&img);
    step_of(sc, 3, Some(&mut restarted));
    sc.go();
    restarted.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn cow_deltas_restore() {
    cow_deltas(&Scenario::new("incr-cow"), false);
}

#[test]
fn cow_deltas_restore_as_nobody() {
    cow_deltas(&Scenario::as_user("incr-cow-nobody", NOBODY), false);
}

/// `--compress --incremental --cow`: compressed deltas written by the forked writer.
#[test]
fn compressed_cow_deltas_restore() {
    cow_deltas(&Scenario::new("incr-cow-zstd"), true);
}

#[test]
fn compressed_cow_deltas_restore_as_nobody() {
    cow_deltas(&Scenario::as_user("incr-cow-zstd-nobody", NOBODY), true);
}

/// Ranges that read as zero without a write the scan sees, and pages that move: incr's "holes"
/// mode (c-tests/incr.c: a whole 2 MiB transparent huge page dropped with MADV_DONTNEED, which
/// leaves no page table; the same with 4 KiB pages; a region unmapped and mapped again at its
/// address; pages moved with mremap to another region and back; a region shrunk and grown back
/// in place; MADV_FREE pages reclaimed). A full image and four deltas (one step each), killed;
/// the chain restarts lazily, takes two more steps and deltas of the restored process (its
/// image-backed memory), killed again; the newest chain restarts and incr checks every byte of
/// the arena against its copy of what it must hold.
fn holes_deltas(sc: &Scenario) {
    let mut prog = sc.program("incr");
    prog.argv.push("16".into());
    prog.argv.push("holes".into());
    let mut job = sc.start("incr", sc.under_cr_run(&prog));
    job.wait_ready();
    let img = sc.img_dir().join("img");
    let full = incremental(sc, job.pid(), &img, &["--max-chain", "16"]);
    assert!(full.contains("incr=full("), "the first is full:\n{full}");
    if job.stdout().contains("GUARD installed") {
        assert!(
            full.contains("1 guard pages (madvise MADV_GUARD_INSTALL) are not saved"),
            "a guard page left out must be said:\n{full}"
        );
    } else {
        sc.note("no guard page (MADV_GUARD_INSTALL refused): that part is not tested");
    }
    let full_len = size(&img);
    let mut sizes = Vec::new();
    for k in 1..=4u32 {
        step_of(sc, k, Some(&mut job));
        let mut args = vec!["--max-chain", "16"];
        if k == 4 {
            args.push("--kill");
        }
        let out = incremental(sc, job.pid(), &img, &args);
        assert!(out.contains("incr=delta("), "step {k}: not a delta:\n{out}");
        sizes.push(size(&img));
    }
    job.expect_signal(SIGKILL, DEATH_TIMEOUT);
    let thp: Vec<String> = job
        .stdout()
        .lines()
        .filter(|l| l.starts_with("THP"))
        .map(str::to_string)
        .collect();
    sc.note(&format!("full {full_len} bytes, deltas {sizes:?}; {thp:?}"));
    eprintln!("holes: {thp:?}");
    assert!(
        sizes.iter().all(|&d| d < full_len / 2),
        "deltas {sizes:?} of a full image of {full_len}\n{}",
        sc.log()
    );
    let mut restarted = sc.restart(&img);
    let pid = restarted.pid();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !descendants(pid)
        .into_iter()
        .any(|p| fs::read_to_string(format!("/proc/{p}/maps")).is_ok_and(|m| m.contains("/img.~")))
    {
        assert!(
            Instant::now() < deadline && restarted.try_wait_exit(Duration::ZERO).is_none(),
            "no restored process maps the chain's images:\n{}\n{}",
            restarted.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let b = sc.img_dir().join("b");
    let parent = format!("--incremental={}", img.display());
    for k in 5..=6u32 {
        step_of(sc, k, Some(&mut restarted));
        let mut args = vec!["--max-chain", "16"];
        if k == 5 {
            args.push(&parent);
        } else {
            args.push("--kill");
        }
        let out = incremental(sc, pid, &b, &args);
        assert!(
            out.contains("incr=delta("),
            "step {k} after the restart: not a delta:\n{out}"
        );
    }
    restarted.expect_signal(SIGKILL, DEATH_TIMEOUT);
    let mut again = sc.restart(&b);
    step_of(sc, 7, Some(&mut again));
    sc.go();
    again.expect_pass(RESTART_TIMEOUT);
    let out = again.stdout();
    sc.note(&format!(
        "{:?}",
        out.lines().find(|l| l.starts_with("MADV_FREE"))
    ));
}

#[test]
fn dropped_huge_pages_and_moved_ranges_restore() {
    holes_deltas(&Scenario::new("incr-holes"));
}

#[test]
fn dropped_huge_pages_and_moved_ranges_restore_as_nobody() {
    holes_deltas(&Scenario::as_user("incr-holes-nobody", NOBODY));
}

/// Deltas through the delta buffer (`agent::deltabuf`): the page data of a delta is copied into
/// a buffer in the stop and written after the program was released. cow_mutate (one worker
/// thread besides the main one, `mib` MiB of private memory it rewrites without pause, keeping
/// sums) writes to its pages right after the release, while the image is written: the image
/// must still hold every page as it was in the stop, or the restored program's sums do not add
/// up. A full image, a first delta (written stopped: no buffer yet, said under -v), then a
/// buffered delta (said under -v: with `spill`, the part of the page data over the buffer,
/// which is under 64 MiB, is written in the stop, into the page cache or direct, also said,
/// and what the agent held is within its 64 MiB), checked by `cr_info --check`; the original
/// goes on and passes; the buffered delta restarts and passes; a delta with `--term` is written
/// stopped (said).
/// CPU time (user + system, clock ticks) process `pid` has used, all its threads.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name's closing parenthesis: state is field 3, utime and stime 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// Waits until `job` has used `ticks` more clock ticks of CPU: cow_mutate has then rewritten
/// every page of its memory many times over (millions of random words a second), whatever
/// the load on the machine.
fn wait_cpu(sc: &Scenario, job: &mut Job, ticks: u64) {
    let start = cpu_ticks(job.pid());
    let deadline = Instant::now() + READY_TIMEOUT;
    while cpu_ticks(job.pid()) < start + ticks {
        assert!(
            Instant::now() < deadline && job.try_wait_exit(Duration::ZERO).is_none(),
            "cow_mutate did not run for {ticks} ticks of CPU:\n{}\n{}",
            job.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `spill`: how -v must say the page data over the buffer was written in the stop (`None`: it
/// all fits; "cache": into the page cache, "direct").
fn buffered_deltas(sc: &Scenario, mib: u32, spill: Option<&str>) {
    let mut prog = sc.program("cow_mutate");
    prog.env.push(("COW_THREADS".into(), "1".into()));
    prog.env.push(("COW_MIB".into(), mib.to_string()));
    let mut job = sc.start("cow_mutate", sc.under_cr_run(&prog));
    job.wait_ready();
    let dir = sc.img_dir();
    let (full, first, buffered, last) = (
        dir.join("full"),
        dir.join("first"),
        dir.join("buffered"),
        dir.join("last"),
    );
    // (Its stdout, a file under /tmp, would be saved by content, which is done stopped.)
    let flags = |parent: &Path| {
        vec![
            format!("--incremental={}", parent.display()),
            "--save-tmp-limit".to_string(),
            "none".to_string(),
        ]
    };
    let out = incremental(sc, job.pid(), &full, &["--save-tmp-limit", "none"]);
    assert!(out.contains("incr=full("), "a full image first:\n{out}");
    // Every page written between two checkpoints: the deltas (so the buffer, sized from the
    // first) are the same size each time.
    wait_cpu(sc, &mut job, 20);
    let f = flags(&full);
    let out = incremental(sc, job.pid(), &first, &[&f[0], &f[1], &f[2]]);
    assert!(
        out.contains("incr=delta(")
            && out.contains("mode=stopped(not buffered: first delta, no buffer yet"),
        "the first delta is written stopped, and -v says why:\n{out}"
    );
    wait_cpu(sc, &mut job, 20);
    let f = flags(&first);
    let out = incremental(sc, job.pid(), &buffered, &[&f[0], &f[1], &f[2]]);
    assert!(
        out.contains("incr=delta(") && out.contains("mode=buffered stop="),
        "the second delta goes through the delta buffer, and -v says so:\n{out}"
    );
    let said = out
        .split_once(", spill=")
        .and_then(|(_, r)| r.split_once("MiB "))
        .and_then(|(_, r)| r.split_once(' '))
        .map(|(how, _)| how);
    assert_eq!(
        said, spill,
        "-v must say whether and how page data over the buffer was written in the stop:\n{out}"
    );
    assert!(
        out.contains(", agent=") && !out.contains("MiB!)"),
        "-v says what the agent held, within its 64 MiB:\n{out}"
    );
    let cr_info = PathBuf::from(env!("CARGO_BIN_EXE_cr_info"));
    let res = sc.run_tool(
        "cr_info --check",
        sc.command(&[
            cr_info.as_os_str(),
            "--check".as_ref(),
            buffered.as_os_str(),
        ]),
    );
    res.assert_success();
    assert!(
        res.stdout.contains("checksum ok") && res.stdout.contains("would restart"),
        "cr_info --check of the buffered delta:\n{}",
        res.stdout
    );
    let f = flags(&buffered);
    let out = incremental(sc, job.pid(), &last, &[&f[0], &f[1], &f[2], "--term"]);
    assert!(
        out.contains("mode=stopped(not buffered: the program ends after it"),
        "a delta with --term is written stopped, and -v says why:\n{out}"
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    let mut restarted = sc.restart(&buffered);
    restarted.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn buffered_delta_restores_the_stop() {
    buffered_deltas(&Scenario::new("incr-buffered"), 16, None);
}

/// 96 MiB written, a buffer of under 64 MiB: a spill over `deltabuf::SPILL_CACHED_MAX`, written
/// direct in the stop.
#[test]
fn buffered_delta_over_the_buffer_restores_the_stop() {
    buffered_deltas(&Scenario::new("incr-buffered-over"), 96, Some("direct"));
}

/// 72 MiB written: 8-10 MiB over the buffer, written into the page cache in the stop, the
/// header, metadata and buffer after the release.
#[test]
fn buffered_delta_spilled_to_the_cache_restores_the_stop() {
    buffered_deltas(&Scenario::new("incr-buffered-spill"), 72, Some("cache"));
}

#[test]
fn buffered_delta_restores_the_stop_as_nobody() {
    buffered_deltas(&Scenario::as_user("incr-buffered-nobody", NOBODY), 16, None);
}
