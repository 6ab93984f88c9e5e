//! Compressed images (issue 14, "Compression"): `cr_checkpoint --compress[=LEVEL]` stores the
//! page data as zstd frames (incompressible pieces raw), and `cr_restart` (eager and lazy) and
//! `cr_info` read them transparently. c-tests/zmem.c fills compressible text and random memory
//! and compares both after the restart.
//!
//! Run one test with e.g. `cargo test --release --test compress -- --nocapture`.

mod common;
use common::*;
use cr::image::format::{ZFRAME_RAW, ZFRAME_ZSTD};
use cr::image::reader::Image;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn cr_info() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cr_info"))
}

/// `cr_info ARGS IMG`, to completion.
fn info(sc: &Scenario, args: &[&str], img: &Path) -> ToolResult {
    let mut argv: Vec<OsString> = vec![cr_info().into()];
    argv.extend(args.iter().map(OsString::from));
    argv.push(img.into());
    sc.run_tool("cr_info", sc.command(&argv))
}

/// Starts zmem (TEXT_MB, RANDOM_MB, CHILDREN) under cr_run and waits for READY.
fn zmem(sc: &Scenario, text: u32, random: u32, children: u32) -> Job {
    zmem_mixed(sc, text, random, children, 0)
}

/// [`zmem`] with MIXED_MB MiB of 1 MiB blocks of text and random data in turn.
fn zmem_mixed(sc: &Scenario, text: u32, random: u32, children: u32, mixed: u32) -> Job {
    let mut prog = sc.program("zmem");
    for a in [text, random, children, mixed] {
        prog.argv.push(a.to_string().into());
    }
    let mut job = sc.start("zmem", sc.under_cr_run(&prog));
    job.wait_ready();
    job
}

/// Restarts `img` with `args`, creates GO, expects PASS, removes GO again; returns cr_restart's
/// stderr.
fn restart_pass(sc: &Scenario, img: &Path, args: &[&str]) -> String {
    // GO before the restart: the restored program finds it at once and checks its memory.
    sc.go();
    let mut r = sc.restart_with(img, args);
    r.expect_pass(RESTART_TIMEOUT);
    let err = r.stderr();
    fs::remove_file(sc.go_file()).expect("remove GO");
    err
}

/// `cr_checkpoint FLAGS -f IMG PID` with `CR_COMPRESS_ADAPT=0`: every piece that looks
/// compressible is compressed, however far behind the compressor is (by default a split
/// image's pieces go raw while it is behind, so its size depends on the machine's load; the
/// tests that compare sizes ask for this).
fn checkpoint_waiting(sc: &Scenario, pid: u32, flags: &[&str], img: &Path) -> ToolResult {
    let mut argv: Vec<OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
    argv.extend(flags.iter().map(OsString::from));
    argv.extend(["-f".into(), img.into(), pid.to_string().into()]);
    let mut cmd = sc.command(&argv);
    cmd.env("CR_COMPRESS_ADAPT", "0");
    sc.run_tool("cr_checkpoint", cmd)
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).expect("image").len()
}

/// A compressed image is smaller than a raw one of the same process, says so in cr_info (sizes,
/// version 6), passes `cr_info --check`, and restarts both eagerly and lazily (the random
/// region, stored raw, is mapped from the image) with both regions intact.
#[test]
fn compressed_image_restarts_eager_and_lazy() {
    let sc = Scenario::new("zstd-restart");
    let mut job = zmem(&sc, 40, 40, 0);
    let raw = sc.checkpoint(job.pid(), &[]);
    let img = sc.next_image_path();
    checkpoint_waiting(&sc, job.pid(), &["--compress", "--term", "-v"], &img).assert_success();
    sc.assert_image_file(&img);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let (zs, rs) = (size(&img), size(&raw));
    assert!(
        zs < rs * 3 / 4,
        "compressed image {zs} bytes, raw {rs}: not smaller\n{}",
        sc.log()
    );
    let f = fs::File::open(&img).expect("open");
    let parsed = Image::open(&f).expect("compressed image reads");
    assert_eq!(parsed.header.version, 6);
    let zstd = parsed.zframes.iter().filter(|f| f.method == ZFRAME_ZSTD);
    let raw_frames = parsed.zframes.iter().filter(|f| f.method == ZFRAME_RAW);
    assert!(
        zstd.count() >= 40,
        "the text must be compressed\n{}",
        sc.log()
    );
    assert!(
        raw_frames.count() >= 40,
        "the random region must be stored raw\n{}",
        sc.log()
    );

    let res = info(&sc, &[], &img);
    res.assert_success();
    assert!(
        res.stdout.contains("format version   6") && res.stdout.contains("compressed       zstd"),
        "cr_info must show the compression:\n{}",
        res.describe()
    );
    info(&sc, &["--check"], &img).assert_success();

    let err = restart_pass(&sc, &img, &["--verbose", "--eager"]);
    assert!(err.contains("read in full and checked"), "{err}");
    let err = restart_pass(&sc, &img, &["--verbose"]);
    // The 40 MiB random region is stored raw: mapped from the image.
    assert!(
        err.contains("page data mapped from the image (40.0 MiB"),
        "the raw extent must be mapped lazily:\n{err}"
    );
    assert!(!err.contains("fewer reader threads"), "{err}");

    // No thread can be made (test knob): the restoring thread decompresses and reads
    // everything itself, the memory is intact, and --verbose says so once for the process.
    for args in [&["--verbose", "--eager"][..], &["--verbose"][..]] {
        sc.go();
        let mut argv: Vec<OsString> = vec![sc.tools().cr_restart.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push(img.clone().into());
        let mut cmd = sc.command(&argv);
        cmd.env("LIBCR_TEST_NO_READER_THREADS", "1");
        let mut r = sc.start("cr_restart (no threads)", cmd);
        r.expect_pass(RESTART_TIMEOUT);
        let err = r.stderr();
        fs::remove_file(sc.go_file()).expect("remove GO");
        assert!(
            err.contains(
                "page data of 1 process(es) read with fewer reader threads than cores, 1 of them on the restoring thread alone"
            ),
            "{args:?}: cr_restart --verbose must say no thread could be made:\n{err}"
        );
    }
}

/// A mixed image that is mostly incompressible (48 MiB random, 2 MiB text): the agent's sample
/// of its page data decides, and the image is written raw straight to the file as an
/// uncompressed checkpoint writes it (no pipe, no compressor: `-v` says `zstd=skipped(`): a
/// plain image that passes `cr_info --check` and restarts lazily (its page data mapped from the
/// file) and eagerly with both regions intact (zmem compares every word); the same to standard
/// output (`-f -`). The tree and half-text images of the other tests keep the compressed path.
#[test]
fn incompressible_image_is_written_raw() {
    incompressible_raw(&Scenario::new("zstd-raw"));
}

/// The same as an unprivileged user.
#[test]
fn incompressible_image_is_written_raw_as_nobody() {
    incompressible_raw(&Scenario::as_user("zstd-raw-nobody", NOBODY));
}

fn incompressible_raw(sc: &Scenario) {
    let mut job = zmem(sc, 2, 48, 0);
    let pid = job.pid();
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(pid, &["-v", "--compress"], &img);
    res.assert_success();
    sc.assert_image_file(&img);
    assert!(
        res.stderr.contains("zstd=skipped(") && res.stderr.contains("not compressed"),
        "expected the raw path:\n{}",
        res.stderr
    );
    let streamed = sc.next_image_path();
    let out = fs::File::create(&streamed).expect("create");
    let argv: Vec<OsString> = vec![
        sc.tools().cr_checkpoint.clone().into(),
        "-v".into(),
        "--compress".into(),
        "--term".into(),
        "-f".into(),
        "-".into(),
        pid.to_string().into(),
    ];
    let mut cmd = sc.command(&argv);
    cmd.stdout(out).stderr(std::process::Stdio::piped());
    let res = cmd.output().expect("run cr_checkpoint");
    let err = String::from_utf8_lossy(&res.stderr).into_owned();
    assert!(
        res.status.success() && err.contains("zstd=skipped("),
        "cr_checkpoint --compress -f - of random memory: {err}\n{}",
        sc.log()
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    for i in [&img, &streamed] {
        let f = fs::File::open(i).expect("open");
        let parsed = Image::open(&f).expect("the image reads");
        assert!(
            !parsed.compressed() && parsed.header.version < 6,
            "{}: a plain image expected (version {})",
            i.display(),
            parsed.header.version
        );
        info(sc, &["--check"], i).assert_success();
    }
    let err = restart_pass(sc, &img, &["--verbose"]);
    assert!(
        err.contains("page data mapped from the image"),
        "the raw image must restart lazily:\n{err}"
    );
    restart_pass(sc, &img, &["--eager"]);
    restart_pass(sc, &streamed, &["--eager"]);
}

/// A mixed image (40 MiB random, 4 MiB text, 16 MiB of 1 MiB blocks of both in turn: about
/// 4/5 incompressible) is split: the agent writes the pieces whose sample looks incompressible
/// to the file itself (`-v`: `zstd=split(`), at the start of the data area, the rest is piped
/// and compressed. The image is version 6 with raw frames stored before the zstd ones, passes
/// `cr_info --check`, and restarts lazily (the random region and blocks mapped from the image)
/// and eagerly with every region intact (zmem compares every word). The same process to
/// standard output (`-f -`, compressed into a temporary file first) is not split, says so, and
/// restarts too.
#[test]
fn mixed_image_is_split() {
    let sc = Scenario::new("zstd-split");
    let mut job = zmem_mixed(&sc, 4, 40, 0, 16);
    let pid = job.pid();
    let img = sc.next_image_path();
    let res = checkpoint_waiting(&sc, pid, &["-v", "--compress"], &img);
    res.assert_success();
    assert!(
        res.stderr.contains("zstd=split("),
        "expected a split image:\n{}",
        res.stderr
    );
    let streamed = sc.next_image_path();
    let out = fs::File::create(&streamed).expect("create");
    let argv: Vec<OsString> = vec![
        sc.tools().cr_checkpoint.clone().into(),
        "-v".into(),
        "--compress".into(),
        "--term".into(),
        "-f".into(),
        "-".into(),
        pid.to_string().into(),
    ];
    let mut cmd = sc.command(&argv);
    cmd.stdout(out).stderr(std::process::Stdio::piped());
    let out = cmd.output().expect("run cr_checkpoint");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && err.contains("cannot split here"),
        "cr_checkpoint --compress -f - of mixed memory: {err}\n{}",
        sc.log()
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let f = fs::File::open(&img).expect("open");
    let parsed = Image::open(&f).expect("the split image reads");
    assert_eq!(parsed.header.version, 6);
    let raw: Vec<_> = parsed
        .zframes
        .iter()
        .filter(|f| f.method == ZFRAME_RAW)
        .collect();
    let zstd: Vec<_> = parsed
        .zframes
        .iter()
        .filter(|f| f.method == ZFRAME_ZSTD)
        .collect();
    assert!(raw.len() >= 48 && zstd.len() >= 12, "{raw:?}\n{zstd:?}");
    let first_zstd = zstd.iter().map(|f| f.stored_off).min().unwrap_or(0);
    assert!(
        raw.iter().filter(|f| f.stored_off < first_zstd).count() >= 48,
        "the agent's pieces come first in the data area"
    );
    assert!(
        size(&img) < size(&streamed) + (1 << 20) && size(&img) < 56 << 20,
        "the split image must be compressed: {} bytes",
        size(&img)
    );
    for i in [&img, &streamed] {
        info(&sc, &["--check"], i).assert_success();
    }
    let err = restart_pass(&sc, &img, &["--verbose"]);
    assert!(
        err.contains("page data mapped from the image"),
        "the raw pieces must be mapped lazily:\n{err}"
    );
    restart_pass(&sc, &img, &["--eager"]);
    restart_pass(&sc, &streamed, &["--eager"]);
}

/// A mixed image whose compressor falls behind (`--compress=19`, some MB/s): the agent writes
/// the pieces whose turn comes while the pipe is full raw, with the incompressible ones; `-v`
/// says how many went raw and why (`zstd=split(raw: I/N incompressible, B compressor behind)`,
/// and cr_checkpoint's `A of them written by the agent`). The image (raw pieces of the agent's
/// first in the data area, the compressed ones moved down after them, in any order) passes
/// `cr_info --check` and restarts lazily and eagerly with every region intact (zmem compares
/// every word); the same with the default level (whatever this machine's load makes of it).
/// Asked to pace (`CR_COMPRESS_PACE=1`), the first split image is unpaced (no disk rate known),
/// the one after a plain checkpoint paced by that checkpoint's rate (`pace=…MB/s waited=…ms`);
/// not asked (`CR_COMPRESS_PACE=0`), `-v` says nothing of it.
#[test]
fn mixed_image_with_slow_compressor_restores() {
    let sc = Scenario::new("zstd-behind");
    // 56 MiB (a lazy restart maps page data from 32 MiB on).
    let mut job = zmem_mixed(&sc, 24, 16, 0, 16);
    let pid = job.pid();
    // Asked to pace (`CR_COMPRESS_PACE=1`), a first split image has no disk rate to pace it
    // by: unpaced (`pace=none`).
    let paced = |flags: &[&str], img: &Path| {
        let mut argv: Vec<OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
        argv.extend(flags.iter().map(OsString::from));
        argv.extend(["-f".into(), img.into(), pid.to_string().into()]);
        let mut cmd = sc.command(&argv);
        cmd.env("CR_COMPRESS_PACE", "1");
        sc.run_tool("cr_checkpoint", cmd)
    };
    let first = sc.next_image_path();
    let res = paced(&["-v", "--compress"], &first);
    res.assert_success();
    assert!(res.stderr.contains(") pace=none"), "{}", res.stderr);
    fs::remove_file(&first).expect("remove the first image");
    // A plain checkpoint measures the disk: the next split image is paced by it (its agent
    // waits for the pipe while it is ahead of a plain checkpoint).
    let plain = sc.next_image_path();
    let res = sc.checkpoint_to(pid, &["-v"], &plain);
    res.assert_success();
    // (Only a direct, asynchronous write measures the disk: not on tmpfs, say.)
    let measured = res.stderr.contains("io=direct write=aio");
    fs::remove_file(&plain).expect("remove the plain image");
    let slow = sc.next_image_path();
    let res = paced(&["-v", "--compress=19"], &slow);
    res.assert_success();
    assert!(
        if measured {
            res.stderr.contains(") pace=") && res.stderr.contains("MB/s waited=")
        } else {
            res.stderr.contains(") pace=none")
        },
        "expected a split image paced by the plain checkpoint (measured: {measured}):\n{}",
        res.stderr
    );
    let behind = |err: &str| -> u64 {
        let at = err.find("zstd=split(raw: ").expect("a split image") + 16;
        let part = &err[at..err[at..].find(')').map_or(err.len(), |e| at + e)];
        part.split(", ")
            .nth(1)
            .and_then(|b| b.strip_suffix(" compressor behind"))
            .map_or(0, |n| n.parse().expect("a count"))
    };
    assert!(
        res.stderr.contains("zstd=split(raw: ")
            && behind(&res.stderr) > 0
            && res.stderr.contains("of them written by the agent"),
        "expected pieces written raw while the compressor was behind:\n{}",
        res.stderr
    );
    // Not asked to pace (`CR_COMPRESS_PACE=0`; the default paces where the compressor pulls
    // the pieces, below), `-v` says nothing of it.
    let img = sc.next_image_path();
    let mut argv: Vec<OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
    argv.extend(["-v", "--compress", "--term", "-f"].map(OsString::from));
    argv.extend([img.clone().into(), pid.to_string().into()]);
    let mut cmd = sc.command(&argv);
    cmd.env("CR_COMPRESS_PACE", "0");
    let res = sc.run_tool("cr_checkpoint", cmd);
    res.assert_success();
    assert!(res.stderr.contains("zstd=split(raw: "), "{}", res.stderr);
    assert!(
        !res.stderr.contains("pace="),
        "not asked to pace: {}",
        res.stderr
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    for i in [&slow, &img] {
        let f = fs::File::open(i).expect("open");
        let parsed = Image::open(&f).expect("the split image reads");
        assert_eq!(parsed.header.version, 6);
        let raw = parsed.zframes.iter().filter(|f| f.method == ZFRAME_RAW);
        assert!(raw.count() >= 16, "the random pieces are stored raw");
        info(&sc, &["--check"], i).assert_success();
        let err = restart_pass(&sc, i, &["--verbose"]);
        assert!(
            err.contains("page data mapped from the image"),
            "the raw pieces must be mapped lazily:\n{err}"
        );
        restart_pass(&sc, i, &["--eager"]);
    }
}

/// A tree (-T: parent and child) compressed into one file, and a compressed image written to
/// standard output, restart.
#[test]
fn compressed_tree_and_stream_restart() {
    let sc = Scenario::new("zstd-tree");
    let mut job = zmem(&sc, 8, 4, 1);
    let img = sc.checkpoint(job.pid(), &["-T", "--compress=3"]);
    let streamed = sc.next_image_path();
    let out = fs::File::create(&streamed).expect("create");
    let argv: Vec<OsString> = vec![
        sc.tools().cr_checkpoint.clone().into(),
        "--compress".into(),
        "-T".into(),
        "-f".into(),
        "-".into(),
        job.pid().to_string().into(),
    ];
    let mut cmd = sc.command(&argv);
    cmd.stdout(out).stderr(std::process::Stdio::piped());
    let res = cmd.output().expect("run cr_checkpoint");
    assert!(
        res.status.success(),
        "cr_checkpoint -f - failed: {}\n{}",
        String::from_utf8_lossy(&res.stderr),
        sc.log()
    );
    job.kill();
    for i in [&img, &streamed] {
        let f = fs::File::open(i).expect("open");
        let (_, images) = cr::image::tree::open_all(&f).expect("tree image");
        assert_eq!(images.len(), 2);
        assert!(images.iter().all(|m| m.compressed()));
    }
    restart_pass(&sc, &img, &[]);
    restart_pass(&sc, &streamed, &["--eager"]);
}

/// A damaged zstd frame: cr_info --check and cr_restart (eager and lazy) fail with a one-line
/// error naming it, no crash.
#[test]
fn corrupt_compressed_frame_is_a_clear_error() {
    let sc = Scenario::new("zstd-corrupt");
    let mut job = zmem(&sc, 8, 0, 0);
    let img = sc.checkpoint(job.pid(), &["--compress"]);
    job.kill();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("open");
    let parsed = Image::open(&f).expect("image");
    let fr = parsed
        .zframes
        .iter()
        .filter(|f| f.method == ZFRAME_ZSTD)
        .max_by_key(|f| f.raw_len)
        .expect("a compressed frame");
    let at = parsed.header.data_offset + fr.stored_off + fr.stored_len / 2;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).expect("read");
    for x in &mut b {
        *x ^= 0x5a;
    }
    f.write_all_at(&b, at).expect("write");
    drop(f);
    let line = info(&sc, &["--check"], &img).assert_one_line_failure();
    assert!(line.contains("compressed frame"), "{line}");
    for args in [&["--eager"][..], &[][..]] {
        let mut r = sc.restart_with(&img, args);
        let st = r.wait_exit(RESTART_TIMEOUT);
        r.wait_output_closed(PIPE_CLOSE_TIMEOUT);
        assert!(
            matches!(st.code(), Some(c) if c != 0),
            "cr_restart {args:?} must fail, not crash: {st}\n{}",
            r.diag()
        );
        let err = r.stderr();
        // (A note that a pid is still held by a zombie, under load, is not the error.)
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("waiting up to"))
            .collect();
        assert!(
            lines.len() == 1 && lines[0].contains("compressed frame"),
            "one line naming the frame expected:\n{err}"
        );
    }
}

/// A level out of range or not a number: one line, exit 22, nothing written.
#[test]
fn bad_compress_options_are_refused() {
    let sc = Scenario::new("zstd-bad");
    let pid = std::process::id().to_string();
    for (args, want) in [
        (&["--compress=0"][..], "compression level 0"),
        (&["--compress=99"][..], "compression level 99"),
        (&["--compress=fast"][..], "compression level 'fast'"),
    ] {
        let img = sc.next_image_path();
        let mut a: Vec<&str> = args.to_vec();
        let path = img.to_string_lossy().into_owned();
        a.extend(["-f", &path, &pid]);
        let line = sc.cr_checkpoint(&a).assert_failure_code(22);
        assert!(line.contains(want), "{args:?}: {line}");
        assert!(!img.exists(), "{args:?} must write nothing");
    }
}

/// `--compress --incremental`: a compressed full image, then two compressed deltas (each names
/// its parent by the raw image the agent wrote: `REC_ZORIGIN`); the chain restarts lazily (raw
/// frames of the links mapped, compressed ones decompressed) and eagerly, `cr_info` shows it,
/// and `cr_info --merge` folds it into one image that restarts with the links gone.
#[test]
fn compressed_delta_chain_restarts() {
    let sc = Scenario::new("zstd-incr");
    let mut job = zmem(&sc, 16, 16, 0);
    let pid = job.pid();
    let img = sc.next_image_path();
    let ck = |extra: &[&str]| {
        let mut flags = vec!["-v", "--compress", "--incremental"];
        flags.extend_from_slice(extra);
        let res = checkpoint_waiting(&sc, pid, &flags, &img);
        res.assert_success();
        sc.assert_image_file(&img);
        res.stderr
    };
    let first = ck(&[]);
    let full = size(&img);
    for extra in [&[][..], &["--term"][..]] {
        let out = ck(extra);
        assert!(
            out.contains("incr=delta("),
            "expected a compressed delta image:\n{first}\n{out}\n{}",
            sc.log()
        );
    }
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let delta = size(&img);
    assert!(
        delta < full / 4,
        "delta {delta} bytes, full {full}\n{}",
        sc.log()
    );
    let f = fs::File::open(&img).expect("open");
    let parsed = Image::open(&f).expect("the delta reads");
    assert_eq!(parsed.header.version, 6);
    assert!(
        parsed.origin.is_some(),
        "a compressed image records its origin"
    );
    let (rec, _) = parsed.parent.clone().expect("a delta image");
    assert_eq!(rec.depth, 2, "two links behind the second delta");
    let res = info(&sc, &[], &img);
    res.assert_success();
    assert!(
        res.stdout.contains("2 link(s) behind it"),
        "cr_info must show the chain:\n{}",
        res.stdout
    );
    restart_pass(&sc, &img, &[]);
    restart_pass(&sc, &img, &["--eager"]);
    let merged = sc.img_dir().join("merged");
    let res = info(&sc, &["--merge", &merged.to_string_lossy()], &img);
    res.assert_success();
    for link in fs::read_dir(sc.img_dir()).expect("image dir") {
        let p = link.expect("entry").path();
        if p != merged {
            fs::remove_file(&p).expect("remove a link");
        }
    }
    restart_pass(&sc, &merged, &["--eager"]);
}

/// `cr_checkpoint FLAGS -f IMG PID` with `CR_COMPRESS_ADAPT=0` (every compressible piece
/// compressed) and `env`, to completion.
fn checkpoint_env(
    sc: &Scenario,
    pid: u32,
    flags: &[&str],
    img: &Path,
    env: &[(&str, &str)],
) -> ToolResult {
    let mut argv: Vec<OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
    argv.extend(flags.iter().map(OsString::from));
    argv.extend(["-f".into(), img.into(), pid.to_string().into()]);
    let mut cmd = sc.command(&argv);
    cmd.env("CR_COMPRESS_ADAPT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    sc.run_tool("cr_checkpoint", cmd)
}

/// The pieces of a split image that go to the compressor are read from the stopped process by
/// cr_checkpoint itself (`process_vm_readv`, `protocol::FLAG_ZPULL`): the agent says
/// `via=pull`, cr_checkpoint how many it pulled. A pull refused (`CR_COMPRESS_PULL=refuse`: the
/// first pull fails as the kernel would refuse it) falls back to the pipe, and both say so
/// (`via=pipe(pull refused)`, `was refused`); `CR_COMPRESS_PULL=0` never asks (no `via=`).
/// Every image has the compressible pieces compressed, passes `cr_info --check` and restarts
/// with every region intact (zmem compares every word).
#[test]
fn pulled_split_image_restores() {
    let sc = Scenario::new("zstd-pull");
    let mut job = zmem_mixed(&sc, 24, 8, 0, 16);
    let pid = job.pid();
    let pulled = sc.next_image_path();
    let res = checkpoint_env(
        &sc,
        pid,
        &["-v", "--compress"],
        &pulled,
        &[("CR_COMPRESS_PACK", "0")],
    );
    res.assert_success();
    assert!(
        res.stderr.contains("zstd=split(")
            && res.stderr.contains(" via=pull")
            && res.stderr.contains("pieces pulled from the process"),
        "expected a split image whose pieces cr_checkpoint pulled:\n{}",
        res.stderr
    );
    let refused = sc.next_image_path();
    let res = checkpoint_env(
        &sc,
        pid,
        &["-v", "--compress"],
        &refused,
        &[("CR_COMPRESS_PULL", "refuse"), ("CR_COMPRESS_PACK", "0")],
    );
    res.assert_success();
    assert!(
        res.stderr.contains(" via=pipe(pull refused)")
            && res
                .stderr
                .contains("reading the process's memory was refused"),
        "expected the refused pull's fallback, said:\n{}",
        res.stderr
    );
    let piped = sc.next_image_path();
    let res = checkpoint_env(
        &sc,
        pid,
        &["-v", "--compress", "--term"],
        &piped,
        &[("CR_COMPRESS_PULL", "0"), ("CR_COMPRESS_PACK", "0")],
    );
    res.assert_success();
    assert!(
        res.stderr.contains("zstd=split(") && !res.stderr.contains("via="),
        "not asked to pull:\n{}",
        res.stderr
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    for i in [&pulled, &refused, &piped] {
        sc.assert_image_file(i);
        let f = fs::File::open(i).expect("open");
        let parsed = Image::open(&f).expect("the split image reads");
        assert_eq!(parsed.header.version, 6);
        let zstd = parsed.zframes.iter().filter(|f| f.method == ZFRAME_ZSTD);
        assert!(zstd.count() >= 24 + 8, "the text pieces are compressed");
        assert!(
            size(i) < 24 << 20,
            "{}: {} bytes, not compressed",
            i.display(),
            size(i)
        );
        info(&sc, &["--check"], i).assert_success();
        restart_pass(&sc, i, &["--eager"]);
    }
    // (Lazily too: the page data is under 32 MiB, so read in full.)
    restart_pass(&sc, &pulled, &[]);
}

/// As an unprivileged user (the restart goes into a user and pid namespace of its own): the
/// first checkpoint pulls; the restored process, whose pid inside its namespace is not the one
/// cr_checkpoint sees, is checkpointed with pulls again (the pid comes from `SO_PEERCRED`), and
/// that image restarts intact.
#[test]
fn pulled_split_image_restores_as_nobody() {
    let sc = Scenario::as_user("zstd-pull-nobody", NOBODY);
    let mut gen1 = zmem_mixed(&sc, 16, 8, 0, 8);
    let img1 = sc.next_image_path();
    let no_pack = [("CR_COMPRESS_PACK", "0")];
    let res = checkpoint_env(
        &sc,
        gen1.pid(),
        &["-v", "--compress", "--term"],
        &img1,
        &no_pack,
    );
    res.assert_success();
    assert!(res.stderr.contains(" via=pull"), "{}", res.stderr);
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let mut gen2 = sc.restart(&img1);
    let pid2 = gen2.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid2, std::time::Duration::from_secs(10));
    // (A request while the restore finishes may fail: retried for 10 s, as checkpoint_restored.)
    let img2 = sc.next_image_path();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let res = loop {
        let res = checkpoint_env(&sc, pid2, &["-v", "--compress", "--term"], &img2, &no_pack);
        if res.success() || std::time::Instant::now() >= deadline || !pid_alive(pid2) {
            break res;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    res.assert_success();
    assert!(
        res.stderr.contains(" via=pull") && res.stderr.contains("pieces pulled from the process"),
        "the restored process (pid {pid2} here, {} in its namespace) must be pulled from:\n{}",
        ns_pid(pid2),
        res.stderr
    );
    gen2.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.assert_image_file(&img2);
    info(&sc, &["--check"], &img2).assert_success();
    restart_pass(&sc, &img2, &["--eager"]);
    restart_pass(&sc, &img2, &[]);
}

/// cr_checkpoint killed while the agent waits for it to pull a piece it handed over
/// (`CR_COMPRESS_PULL=stall`: nothing is pulled after the first piece): the checkpoint fails,
/// nothing is left behind, the program runs on, and a later checkpoint succeeds and restarts
/// intact.
#[test]
fn killed_puller_lets_the_program_go() {
    let sc = Scenario::new("zstd-pull-killed");
    let mut job = zmem_mixed(&sc, 24, 8, 0, 16);
    let pid = job.pid();
    let lost = sc.next_image_path();
    let mut argv: Vec<OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
    argv.extend(["-v", "--compress", "-f"].map(OsString::from));
    argv.extend([lost.clone().into(), pid.to_string().into()]);
    let mut cmd = sc.command(&argv);
    cmd.env("CR_COMPRESS_ADAPT", "0");
    cmd.env("CR_COMPRESS_PULL", "stall");
    cmd.env("CR_COMPRESS_PACK", "0");
    let mut ck = sc.start("cr_checkpoint (stalls)", cmd);
    ck.wait_line("pulls stalled", TOOL_TIMEOUT);
    ck.kill();
    assert!(!lost.exists(), "the killed checkpoint committed an image");
    assert!(pid_alive(pid), "the program must run on");
    let img = sc.next_image_path();
    // (The agent may still be letting the program go: EBUSY is retried for 10 s.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let res = loop {
        let res = checkpoint_env(&sc, pid, &["-v", "--compress", "--term"], &img, &[]);
        if res.success() || std::time::Instant::now() >= deadline || !pid_alive(pid) {
            break res;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    res.assert_success();
    assert!(res.stderr.contains(" via=pack("), "{}", res.stderr);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.assert_image_file(&img);
    restart_pass(&sc, &img, &["--eager"]);
}

/// [`zmem_mixed`] with `env` in the program's environment (the agent's test knobs).
fn zmem_env(sc: &Scenario, text: u32, random: u32, mixed: u32, env: &[(&str, &str)]) -> Job {
    let mut prog = sc.program("zmem");
    for a in [text, random, 0, mixed] {
        prog.argv.push(a.to_string().into());
    }
    let mut cmd = sc.under_cr_run(&prog);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut job = sc.start("zmem", cmd);
    job.wait_ready();
    job
}

/// The names of `pid`'s threads that are the agent's compression helpers (`cr-zstd…`).
fn pack_threads(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("cr-zstd"))
        .collect()
}

/// Waits up to 10 s for `f`; whether it held.
fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}

/// The pieces of a split image that go to the compressor are compressed by the agent's helper
/// threads in the stopped program (`protocol::FLAG_ZPACK`, `agent::zpack`): the agent says
/// `via=pack(N threads, M MiB)`, cr_checkpoint how many frames it got; the frames are the
/// image's zstd frames (the text pieces all compressed), the image passes `cr_info --check` and
/// restarts intact eagerly and lazily; no helper thread is left in the program. The restored
/// process packs again (its own agent and helpers). An agent whose helpers cannot be made
/// (`LIBCR_TEST_PACK=fail`) says so and the pieces are pulled instead.
#[test]
fn packed_split_image_restores() {
    let sc = Scenario::new("zstd-pack");
    let mut job = zmem_mixed(&sc, 24, 8, 0, 16);
    let pid = job.pid();
    let img = sc.next_image_path();
    let res = checkpoint_env(&sc, pid, &["-v", "--compress", "--term"], &img, &[]);
    res.assert_success();
    assert!(
        res.stderr.contains("zstd=split(")
            && res.stderr.contains(" via=pack(")
            && res.stderr.contains("frames compressed by the agent")
            && !res.stderr.contains("not packed"),
        "expected a split image the agent compressed:\n{}",
        res.stderr
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.assert_image_file(&img);
    let f = fs::File::open(&img).expect("open");
    let parsed = Image::open(&f).expect("the packed image reads");
    assert_eq!(parsed.header.version, 6);
    let zstd = parsed.zframes.iter().filter(|f| f.method == ZFRAME_ZSTD);
    assert!(zstd.count() >= 24 + 8, "the text pieces are compressed");
    assert!(
        size(&img) < 24 << 20,
        "{} bytes, not compressed",
        size(&img)
    );
    info(&sc, &["--check"], &img).assert_success();
    restart_pass(&sc, &img, &["--eager"]);
    restart_pass(&sc, &img, &[]);

    // The restored process packs too.
    let mut gen2 = sc.restart(&img);
    let pid2 = gen2.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid2, std::time::Duration::from_secs(10));
    let img2 = sc.next_image_path();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let res = loop {
        let res = checkpoint_env(&sc, pid2, &["-v", "--compress"], &img2, &[]);
        if res.success() || std::time::Instant::now() >= deadline || !pid_alive(pid2) {
            break res;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    res.assert_success();
    assert!(res.stderr.contains(" via=pack("), "{}", res.stderr);
    assert!(
        pack_threads(pid2).is_empty(),
        "helper threads left: {:?}",
        pack_threads(pid2)
    );
    sc.assert_image_file(&img2);
    info(&sc, &["--check"], &img2).assert_success();
    drop(gen2);

    // Helpers that cannot be made: pulled, and said.
    let mut job = zmem_env(&sc, 16, 8, 8, &[("LIBCR_TEST_PACK", "fail")]);
    let img3 = sc.next_image_path();
    let res = checkpoint_env(&sc, job.pid(), &["-v", "--compress", "--term"], &img3, &[]);
    res.assert_success();
    assert!(
        res.stderr.contains(" via=pull") && res.stderr.contains("(not packed: errno 12)"),
        "expected the pull fallback, said:\n{}",
        res.stderr
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.assert_image_file(&img3);
    restart_pass(&sc, &img3, &["--eager"]);
}

/// cr_checkpoint killed, and `--time` running out, while the agent waits for its compression
/// helpers (`LIBCR_TEST_PACK=stall`: a helper takes no piece after its first, named
/// `cr-zstd-stall`): the checkpoint fails, no image is left, every helper thread is gone, the
/// program runs on, and a later checkpoint succeeds and restarts intact.
#[test]
fn killed_packer_lets_the_program_go() {
    let sc = Scenario::new("zstd-pack-killed");
    let mut job = zmem_env(&sc, 24, 8, 16, &[("LIBCR_TEST_PACK", "stall")]);
    let pid = job.pid();
    let lost = sc.next_image_path();
    let mut argv: Vec<OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
    argv.extend(["-v", "--compress", "-f"].map(OsString::from));
    argv.extend([lost.clone().into(), pid.to_string().into()]);
    let mut cmd = sc.command(&argv);
    cmd.env("CR_COMPRESS_ADAPT", "0");
    let mut ck = sc.start("cr_checkpoint (stalls)", cmd);
    assert!(
        wait_for(|| pack_threads(pid).iter().any(|t| t == "cr-zstd-stall")),
        "no helper stalled: {:?}",
        pack_threads(pid)
    );
    ck.kill();
    assert!(
        wait_for(|| pack_threads(pid).is_empty()),
        "helper threads left after the requester died: {:?}",
        pack_threads(pid)
    );
    assert!(!lost.exists(), "the killed checkpoint committed an image");
    assert!(pid_alive(pid), "the program must run on");
    // --time runs out while the helpers stall.
    let timed = sc.next_image_path();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let res = loop {
        let res = checkpoint_env(&sc, pid, &["-v", "--compress", "--time", "2"], &timed, &[]);
        if !res.stderr.contains("busy") || std::time::Instant::now() >= deadline {
            break res;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        !res.success(),
        "the stalled checkpoint must fail:\n{}",
        res.stderr
    );
    assert!(
        wait_for(|| pack_threads(pid).is_empty()),
        "helper threads left after --time: {:?}",
        pack_threads(pid)
    );
    assert!(
        !timed.exists(),
        "the timed-out checkpoint committed an image"
    );
    assert!(pid_alive(pid), "the program must run on");
    let img = sc.next_image_path();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let res = loop {
        let res = checkpoint_env(
            &sc,
            pid,
            &["-v", "--compress", "--term"],
            &img,
            &[("CR_COMPRESS_PACK", "0")],
        );
        if res.success() || std::time::Instant::now() >= deadline || !pid_alive(pid) {
            break res;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    res.assert_success();
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.assert_image_file(&img);
    restart_pass(&sc, &img, &["--eager"]);
}
