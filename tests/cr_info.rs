//! `cr_info` describes an image, and `cr_info --check` tells whether it would restart: exit 0 if
//! so, 1 when a referenced file changed, and a one-line error (exit 22) for a corrupt image or a
//! file that is not an image.
//!
//! Run one test with e.g. `cargo test --test cr_info info_lists -- --nocapture`.

mod common;

use common::*;
use cr::image::format::FileHeader;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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

/// The lines of the section whose title starts with `title` (up to the next blank line).
fn section<'a>(out: &'a str, title: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| !l.starts_with(title))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

/// The header page of an image.
fn header(img: &Path) -> FileHeader {
    let bytes = fs::read(img).expect("read image");
    bytemuck::pod_read_unaligned(&bytes[..std::mem::size_of::<FileHeader>()])
}

/// (a) + (b): the listing names the process, its heap, its executable, its stdout and its threads;
/// `--check` on a fresh image passes.
#[test]
fn info_lists_a_spinner_image() {
    let sc = Scenario::new("info-list");
    let mut job = sc.start_program("spinner");
    let img = sc.checkpoint(job.pid(), &[]);

    let res = info(&sc, &[], &img);
    res.assert_success();
    let out = &res.stdout;
    let why = res.describe();
    assert!(
        out.contains(&format!("pid {}", job.pid())),
        "no pid {}:\n{why}",
        job.pid()
    );
    let regions = section(out, "Memory regions");
    assert!(
        regions.iter().any(|l| l.ends_with("[heap]")),
        "no [heap] region:\n{why}"
    );
    let exe = fs::canonicalize(sc.program("spinner").file()).expect("spinner path");
    let exe = exe.to_string_lossy();
    assert!(
        regions.iter().any(|l| l.ends_with(&*exe)),
        "no region of {exe}:\n{why}"
    );
    assert!(
        section(out, "Referenced files")
            .iter()
            .any(|l| l.contains(&*exe)),
        "{exe} not among the referenced files:\n{why}"
    );
    assert!(
        section(out, "File descriptors")
            .iter()
            .any(|l| l.split_whitespace().next() == Some("1")),
        "no fd 1:\n{why}"
    );
    let threads = section(out, "Threads");
    assert!(
        threads
            .iter()
            .any(|l| l.trim_start().starts_with(&format!("tid {} ", job.pid()))),
        "main thread missing:\n{why}"
    );

    let res = info(&sc, &["--check"], &img);
    res.assert_success();
    assert!(
        res.stdout.contains("would restart"),
        "no verdict:\n{}",
        res.describe()
    );
    let res = info(&sc, &["--check", "-q"], &img);
    res.assert_success();
    assert_eq!(res.stdout, "", "-q --check prints only problems");

    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// (c): a flipped byte in the page data passes the header/metadata checks (plain listing works)
/// but `--check` reports it on one line and exits 22.
#[test]
fn check_detects_corrupt_page_data() {
    let sc = Scenario::new("info-corrupt");
    let mut job = sc.start_program("spinner");
    let img = sc.checkpoint(job.pid(), &[]);
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);

    let h = header(&img);
    assert!(h.data_len > 0, "the image saved no pages");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("open image");
    let at = h.data_offset + h.data_len / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read data byte");
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).expect("write data byte");
    drop(f);

    info(&sc, &[], &img).assert_success();
    let line = info(&sc, &["--check"], &img).assert_failure_code(22);
    assert!(line.contains("page data"), "unexpected message: {line}");
    info(&sc, &["--check", "-q"], &img).assert_failure_code(22);
}

/// (d): the program's executable (a private copy) gets a new mtime after the checkpoint:
/// `--check` exits 1 and names it, as cr_restart refuses the image (ESTALE).
#[test]
fn check_detects_changed_mapped_file() {
    let sc = Scenario::new("info-changed");
    let prog = sc.program("spinner").copied_to(&sc.root().join("bin"));
    let mut job = sc.start("spinner copy", sc.under_cr_run(&prog));
    job.wait_ready();
    let img = sc.checkpoint(job.pid(), &[]);
    info(&sc, &["--check"], &img).assert_success();

    // The executable is busy (ETXTBSY for writing), but its times can change.
    let exe = fs::canonicalize(prog.file()).expect("copy path");
    fs::File::open(&exe)
        .and_then(|f| f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)))
        .expect("set mtime of the program copy");

    let name = exe.to_string_lossy().into_owned();
    let res = info(&sc, &["--check"], &img);
    assert_eq!(res.code(), Some(1), "{}", res.describe());
    assert!(
        section(&res.stdout, "Check")
            .iter()
            .any(|l| l.contains("problem") && l.contains(&name)),
        "{name} not named as a problem:\n{}",
        res.describe()
    );
    let res = info(&sc, &["--check", "-q"], &img);
    assert_eq!(res.code(), Some(1), "{}", res.describe());
    let lines: Vec<&str> = res.stdout.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].contains(&name),
        "-q: exactly one problem line naming {name}:\n{}",
        res.describe()
    );

    let restart = sc.run_tool("cr_restart", sc.command(&[cr_restart(), img.clone()]));
    restart.assert_failure_code(116);

    sc.go();
    job.expect_pass(RESTART_TIMEOUT);

    // Changed size too (the program has exited, so the file can be written now).
    let mut data = fs::read(&exe).expect("read copy");
    data.push(0);
    fs::write(&exe, data).expect("append to copy");
    let res = info(&sc, &["--check", "-q"], &img);
    assert_eq!(res.code(), Some(1), "{}", res.describe());
    assert!(res.stdout.contains(&name), "{}", res.describe());
}

/// (e): a file that is not an image, an empty file, a missing file.
#[test]
fn rejects_non_images() {
    let sc = Scenario::new("info-not-image");
    let text = sc.img_dir().join("notes.txt");
    fs::write(&text, "just some text, not a checkpoint\n").unwrap();
    let line = info(&sc, &[], &text).assert_failure_code(22);
    assert!(line.contains("not a libcr checkpoint image"), "{line}");
    info(&sc, &["--check"], &text).assert_failure_code(22);

    let empty = sc.img_dir().join("empty");
    fs::write(&empty, "").unwrap();
    info(&sc, &["--check"], &empty).assert_failure_code(22);

    let missing = sc.img_dir().join("missing");
    info(&sc, &[], &missing).assert_failure_code(2);
}

#[test]
fn help_and_version() {
    let sc = Scenario::new("info-help");
    for flag in ["--help", "--version"] {
        let res = sc.run_tool("cr_info", sc.command(&[cr_info(), flag.into()]));
        res.assert_success();
        assert!(res.stdout.contains("cr_info"), "{}", res.describe());
    }
}
