//! BLCR's preload stubs and link anchors: `cr_run` preloads `libcr_run.so.0` (or
//! `libcr_omit.so.0` with `--omit`), which export no API; `dlopen("libcr.so.0")` works plainly and
//! under both; `-u cr_link_me` makes static links checkpointable without
//! `cr_run`, and `--no-as-needed` keeps `-lcr` in `--as-needed` links; an omitted process makes a checkpoint exit 3 without being signalled.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `c-tests/<src>` with extra arguments into the scenario's bin dir.
fn compile(sc: &Scenario, src: &str, out: &str, extra: &[&str]) -> PathBuf {
    let bin = sc.root().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let exe = bin.join(out);
    let lib = lib_dir();
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-Wall", "-I"])
        .arg(include_dir())
        .arg("-o")
        .arg(&exe);
    cmd.arg(c_tests_dir().join(src));
    for a in extra {
        cmd.arg(a.replace("$LIBDIR", &lib.display().to_string()));
    }
    let o = cmd.output().expect("run gcc");
    assert!(
        o.status.success(),
        "building {out} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    exe
}

fn run_to_pass(sc: &Scenario, what: &str, mut cmd: Command) {
    cmd.current_dir(sc.root());
    let mut job = sc.start(what, cmd);
    job.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn run_stub_exports_no_api() {
    for stub in ["libcr_run.so", "libcr_omit.so"] {
        let path = lib_dir().join(stub);
        let out = Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(&path)
            .output()
            .expect("nm");
        let syms = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "nm {}", path.display());
        assert!(
            !syms.contains(" cr_init"),
            "{stub} must not export cr_init:\n{syms}"
        );
        let anchor = if stub.contains("omit") {
            "cr_omit_link_me"
        } else {
            "cr_run_link_me"
        };
        assert!(
            syms.contains(anchor),
            "{stub} must export {anchor}:\n{syms}"
        );
    }
}

/// Every process under cr_run loads the stub and libcr: neither may pull in libgcc_s.so.1, whose
/// constructor alone (CPUID probes, trapping to the hypervisor in a VM) cost about 0.3 ms per
/// exec. The build links the unwinder statically (build/static_unwinder.rs); this catches a build
/// that silently fell back to libgcc_s.
#[test]
fn preloaded_libraries_do_not_need_libgcc_s() {
    for lib in ["libcr.so", "libcr_run.so", "libcr_omit.so"] {
        let path = lib_dir().join(lib);
        let out = Command::new("readelf")
            .arg("-d")
            .arg(&path)
            .output()
            .expect("readelf (binutils)");
        assert!(out.status.success(), "readelf -d {}", path.display());
        let dynamic = String::from_utf8_lossy(&out.stdout);
        assert!(
            dynamic.contains("(NEEDED)") && !dynamic.contains("libgcc_s"),
            "{lib} needs libgcc_s.so.1 (the static unwinder was not linked):\n{dynamic}"
        );
    }
}

/// `readelf ARGS lib`'s output (binutils).
fn readelf(args: &[&str], lib: &Path) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(lib)
        .output()
        .expect("readelf (binutils)");
    assert!(out.status.success(), "readelf {args:?} {}", lib.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first hexadecimal number of `line` after `skip` fields.
fn hex_field(line: &str, skip: usize) -> Option<u64> {
    let f = line.split_whitespace().nth(skip)?;
    u64::from_str_radix(f.trim_start_matches("0x"), 16).ok()
}

/// Every process under cr_run loads the stub and libcr, and each page their start-up touches is a
/// page fault (5-8 us here). build/startup.ld gathers that code after `.init` and the data the
/// loader writes outside RELRO on the page that starts `.bss` (issue 11, idle cost); this
/// catches a build where the script no longer applies or a new relocated word landed elsewhere
/// (each one more fault in every exec).
#[test]
fn preloaded_libraries_keep_start_up_on_few_pages() {
    const PAGE: u64 = 4096;
    for lib in ["libcr.so", "libcr_run.so", "libcr_omit.so"] {
        let path = lib_dir().join(lib);
        let sections = readelf(&["-SW"], &path);
        // `[Nr] Name Type Address Off Size ...`: the fields after the closing bracket.
        let section = |name: &str| -> Option<(u64, u64)> {
            sections.lines().find_map(|l| {
                let rest = l.split_once(']')?.1;
                let mut f = rest.split_whitespace();
                if f.next()? != name {
                    return None;
                }
                Some((hex_field(rest, 2)?, hex_field(rest, 4)?))
            })
        };
        let need = |name: &str| {
            section(name).unwrap_or_else(|| {
                panic!("{lib}: no {name} section (build/startup.ld not applied?):\n{sections}")
            })
        };
        let (init, init_len) = need(".init");
        let (text, text_len) = need(".text.libcr_start");
        let (plt, plt_len) = need(".plt");
        let (data, data_len) = need(".data.libcr_start");
        let (bss, _) = need(".bss");
        assert!(
            init < text && text < plt && plt + plt_len - init < 0x10000 && text - (init + init_len) < 64,
            "{lib}: .init {init:#x}, .text.libcr_start {text:#x}+{text_len:#x}, .plt {plt:#x} are not together"
        );
        assert!(
            data % PAGE == 0 && data + data_len <= bss && bss / PAGE == data / PAGE,
            "{lib}: .data.libcr_start {data:#x}+{data_len:#x} is not one page that starts .bss ({bss:#x})"
        );
        let relro = readelf(&["-lW"], &path)
            .lines()
            .find(|l| l.trim_start().starts_with("GNU_RELRO"))
            .and_then(|l| Some((hex_field(l, 2)?, hex_field(l, 5)?)))
            .unwrap_or_else(|| panic!("{lib}: no GNU_RELRO segment"));
        let relocs = readelf(&["-rW"], &path);
        let mut outside = Vec::new();
        for l in relocs.lines().filter(|l| l.contains(" R_")) {
            let Some(at) = hex_field(l, 0) else { continue };
            if (relro.0..relro.0 + relro.1).contains(&at) {
                continue;
            }
            if at / PAGE != data / PAGE {
                outside.push(l.to_string());
            }
        }
        assert!(
            outside.is_empty(),
            "{lib}: relocations outside RELRO and off the .data.libcr_start page {data:#x} (add their \
             sections to build/startup.ld):\n{}",
            outside.join("\n")
        );
        // std's `.init_array` argument capture runs in every process (symbols kept: debug = 1).
        let symbols = readelf(&["-sW"], &path);
        if let Some(at) = symbols
            .lines()
            .find(|l| l.contains("ARGV_INIT_ARRAY") && l.contains("init_wrapper"))
            .and_then(|l| hex_field(l, 1))
        {
            assert!(
                (text..text + text_len).contains(&at),
                "{lib}: std's init_wrapper at {at:#x} is outside .text.libcr_start"
            );
        }
    }
}

#[test]
fn dlopen_libcr_plain_and_under_cr_run() {
    let sc = Scenario::new("dlopen");
    let exe = compile(
        &sc,
        "dlopen_check.c",
        "dlopen_check",
        &["-ldl", "-Wl,-rpath,$LIBDIR"],
    );
    run_to_pass(&sc, "dlopen_check (plain)", sc.command(&[&exe]));
    for mode in ["--run", "--omit"] {
        let cmd = sc.command(&[
            sc.tools().cr_run.as_os_str(),
            mode.as_ref(),
            "--".as_ref(),
            exe.as_os_str(),
        ]);
        run_to_pass(&sc, &format!("dlopen_check under cr_run {mode}"), cmd);
    }
}

/// `cr_run --omit`: the checkpoint exits 3 (ESRCH: nothing was checkpointed), writes no image
/// and does not signal the target, even with --term; `--omit --run` (last wins) checkpoints.
#[test]
fn omitted_process_gives_exit_3_without_signal() {
    let sc = Scenario::new("omit");
    let prog = sc.program("spinner");
    let tools = sc.tools().clone();
    let mut omitted = sc.start(
        "spinner under cr_run --run --omit",
        sc.command(&[
            tools.cr_run.as_os_str(),
            "--run".as_ref(),
            "--omit".as_ref(),
            prog.file().as_os_str(),
        ]),
    );
    omitted.wait_ready();
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(omitted.pid(), &["--term"], &img);
    res.assert_failure_code(3);
    assert!(
        !img.exists(),
        "no image may be written for an omitted process"
    );
    omitted.assert_running("after a checkpoint of an omitted process");

    let mut included = sc.start(
        "spinner under cr_run --omit --run",
        sc.command(&[
            tools.cr_run.as_os_str(),
            "--omit".as_ref(),
            "--run".as_ref(),
            prog.file().as_os_str(),
        ]),
    );
    included.wait_ready();
    let img2 = sc.next_image_path();
    sc.checkpoint_to(included.pid(), &[], &img2)
        .assert_success();
    sc.go();
    omitted.expect_pass(RESTART_TIMEOUT);
    included.expect_pass(RESTART_TIMEOUT);
}

fn checkpoint_restart_pass(sc: &Scenario, exe: &Path, what: &str) {
    let mut job = sc.start(what, sc.command(&[exe]));
    job.wait_ready();
    sc.checkpoint_term_restart_pass(job);
}

/// A program that never calls libcr, linked statically with `-u cr_link_me`, is checkpointable
/// without cr_run (the anchor pulls the agent and its constructor into the link).
#[test]
fn static_link_with_link_anchor() {
    let sc = Scenario::new("static-anchor");
    let exe = compile(
        &sc,
        "spinner.c",
        "spinner_static_anchor",
        &[
            "-Wl,-u,cr_link_me",
            "$LIBDIR/libcr.a",
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
        ],
    );
    checkpoint_restart_pass(&sc, &exe, "spinner linked with libcr.a -u cr_link_me");
}

/// With `--as-needed`, a program that never calls libcr drops it: the checkpoint then fails with
/// exit 52 (no support). GNU ld does not count `-u cr_link_me` as a use of a shared library, so
/// the README's recipe is to wrap `-lcr` in `--no-as-needed`; that program is checkpointable.
#[test]
fn as_needed_link_keeps_libcr_with_no_as_needed() {
    let sc = Scenario::new("as-needed");
    let dropped = compile(
        &sc,
        "spinner.c",
        "spinner_as_needed",
        &["-Wl,--as-needed", "-L$LIBDIR", "-lcr", "-Wl,-rpath,$LIBDIR"],
    );
    let mut job = sc.start("spinner --as-needed", sc.command(&[&dropped]));
    job.wait_ready();
    let img = sc.next_image_path();
    sc.checkpoint_to(job.pid(), &[], &img)
        .assert_failure_code(52);

    let kept = compile(
        &sc,
        "spinner.c",
        "spinner_as_needed_kept",
        &[
            "-Wl,--as-needed",
            "-L$LIBDIR",
            "-Wl,--no-as-needed",
            "-lcr",
            "-Wl,--as-needed",
            "-Wl,-rpath,$LIBDIR",
        ],
    );
    checkpoint_restart_pass(
        &sc,
        &kept,
        "spinner --as-needed with -lcr in --no-as-needed",
    );
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}
