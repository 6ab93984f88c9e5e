//! The C, C++ and Fortran faces of libcr: the hand-written headers (`include/blcr_common.h`,
//! `include/blcr_errcodes.h`) with the generated `include/libcr.h`, and the Fortran module
//! `include/libcr.f90`, compiled by the real compilers and linked against the real library.
//!
//! * `c-tests/abi_layout.c`: every constant, type, struct layout and function type of the BLCR
//!   API (compile time), the initializer defaults and `cr_strerror` (run time).
//! * `c-tests/cxx_caller.cpp`: the same headers from C++ (`-Wall -Wextra -Werror`), callbacks as
//!   an `extern "C"` function and a lambda, all 38 functions linked with C linkage.
//! * `c-tests/fortran_api.f90`: a Fortran program checkpoints itself from a Fortran callback, and
//!   `cr_restart` brings it back on the restart path.
//!
//! Compiler errors or warnings fail the test with the compiler's output. Run one test with e.g.
//! `cargo test --test abi cxx_caller -- --nocapture`.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `-L<libdir> -lcr -Wl,-rpath,<libdir>`.
fn link_libcr(cmd: &mut Command) {
    let lib = lib_dir();
    cmd.arg(format!("-L{}", lib.display()))
        .arg("-lcr")
        .arg(format!("-Wl,-rpath,{}", lib.display()));
}

fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a compiler; panic with its full output if it fails.
fn compile(what: &str, mut cmd: Command) {
    let line = command_line(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run `{line}`: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n$ {line}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a compiler that must fail; returns its output.
fn compile_fails(what: &str, mut cmd: Command) -> String {
    let line = command_line(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run `{line}`: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "{what} should have failed:\n$ {line}\n{text}"
    );
    text
}

/// True if `compiler` can be used; without it the test is skipped, except under CI.
fn have_compiler(compiler: &str, test: &str) -> bool {
    if have_command(compiler) {
        return true;
    }
    assert!(
        !in_ci(),
        "{compiler} is missing, and CI must run the test {test}"
    );
    println!("note: {compiler} not found: skipping {test}");
    false
}

/// A scratch directory `build/` in the scenario (removed with it).
fn build_dir(sc: &Scenario) -> PathBuf {
    let dir = sc.root().join("build");
    fs::create_dir_all(&dir).expect("create build dir");
    dir
}

/// `gcc -Wall -Wextra -Werror -I include` (plus `flags`) in the scenario's build dir.
fn cc(sc: &Scenario, compiler: &str, flags: &[&str]) -> Command {
    let mut cmd = Command::new(compiler);
    cmd.args(["-Wall", "-Wextra", "-Werror", "-I"])
        .arg(include_dir())
        .args(flags)
        .current_dir(build_dir(sc));
    cmd
}

/// Run a built program as the scenario's user in its directory; expect exit 0 and the line
/// `pass`, and no FAIL line. Returns stdout.
fn run_expect_pass(sc: &Scenario, what: &str, exe: &Path, pass: &str) -> String {
    let res = sc.run_tool(what, sc.command(&[exe.as_os_str()]));
    assert!(
        res.success()
            && res.stdout.lines().any(|l| l.trim() == pass)
            && !res.stdout.lines().any(|l| l.starts_with("FAIL")),
        "{what} should exit 0 after printing {pass:?}:\n{}",
        res.describe()
    );
    res.stdout
}

fn write_source(sc: &Scenario, name: &str, text: &str) -> PathBuf {
    let path = build_dir(sc).join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/// Each header on its own and all together, twice (include guards), as strict C and C++.
#[test]
fn headers_compile_as_c_and_cxx() {
    let sc = Scenario::new("abi-headers");
    let variants: [(&str, &str); 4] = [
        (
            "errcodes_alone",
            "#include <blcr_errcodes.h>\nint x = CR_ENOINIT;\n",
        ),
        (
            "common_alone",
            "#include <blcr_common.h>\ncr_checkpoint_args_t a;\nstruct cr_restart_info r;\n",
        ),
        (
            "libcr_alone",
            "#include <libcr.h>\nint f(void) { return cr_status() + CR_SIGNUM; }\n",
        ),
        (
            "all_twice",
            "#include <libcr.h>\n#include <blcr_common.h>\n#include <blcr_errcodes.h>\n\
             #include <libcr.h>\n#include <blcr_common.h>\n#include <blcr_errcodes.h>\n\
             int f(void) { return cr_init() + CR_MAX_ERRCODE; }\n",
        ),
    ];
    let have_cxx = have_compiler("g++", "headers_compile_as_c_and_cxx (C++ part)");
    for (name, text) in variants {
        let c = write_source(&sc, &format!("{name}.c"), text);
        for std in ["-std=c99", "-std=c11", "-std=gnu17"] {
            let mut cmd = cc(&sc, "gcc", &[std, "-pedantic", "-c", "-o", "/dev/null"]);
            cmd.arg(&c);
            compile(&format!("gcc {std} {name}.c"), cmd);
        }
        if have_cxx {
            let cpp = write_source(&sc, &format!("{name}.cpp"), text);
            for std in ["-std=c++11", "-std=c++17"] {
                let mut cmd = cc(&sc, "g++", &[std, "-c", "-o", "/dev/null"]);
                cmd.arg(&cpp);
                compile(&format!("g++ {std} {name}.cpp"), cmd);
            }
        }
    }
}

/// The three legacy calls carry `_CR_DEPRECATED`: using them warns.
#[test]
fn legacy_calls_are_deprecated() {
    let sc = Scenario::new("abi-deprecated");
    for call in ["cr_request()", "cr_request_file(\"x\")", "cr_request_fd(3)"] {
        let src = write_source(
            &sc,
            "legacy.c",
            &format!("#include <libcr.h>\nvoid f(void) {{ {call}; }}\n"),
        );
        let mut cmd = cc(&sc, "gcc", &["-c", "-o", "/dev/null"]);
        cmd.arg(&src);
        let out = compile_fails(&format!("gcc -Werror on a call of {call}"), cmd);
        assert!(
            out.contains("deprecated"),
            "calling {call} should warn about deprecation:\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// abi_layout.c
// ---------------------------------------------------------------------------------------------

/// The compile-time checks of abi_layout.c alone (no library needed), strict C11.
#[test]
fn abi_layout_compile_time() {
    let sc = Scenario::new("abi-static");
    let exe = build_dir(&sc).join("abi_layout_static");
    let mut cmd = cc(
        &sc,
        "gcc",
        &["-std=c11", "-pedantic", "-DABI_STATIC_ONLY", "-o"],
    );
    cmd.arg(&exe).arg(c_tests_dir().join("abi_layout.c"));
    compile("gcc abi_layout.c -DABI_STATIC_ONLY", cmd);
    run_expect_pass(
        &sc,
        "abi_layout_static",
        &exe,
        "PASS abi_layout (compile-time part only)",
    );
}

/// abi_layout.c linked with libcr: compile-time checks plus the library's defaults and texts.
#[test]
fn abi_layout() {
    let sc = Scenario::new("abi-layout");
    let exe = build_dir(&sc).join("abi_layout");
    let mut cmd = cc(&sc, "gcc", &["-o"]);
    cmd.arg(&exe).arg(c_tests_dir().join("abi_layout.c"));
    link_libcr(&mut cmd);
    compile("gcc abi_layout.c", cmd);
    run_expect_pass(&sc, "abi_layout", &exe, "PASS abi_layout");
}

// ---------------------------------------------------------------------------------------------
// C++
// ---------------------------------------------------------------------------------------------

#[test]
fn cxx_caller() {
    if !have_compiler("g++", "cxx_caller") {
        return;
    }
    let sc = Scenario::new("abi-cxx");
    let exe = build_dir(&sc).join("cxx_caller");
    let mut cmd = cc(&sc, "g++", &["-std=c++17", "-o"]);
    cmd.arg(&exe).arg(c_tests_dir().join("cxx_caller.cpp"));
    link_libcr(&mut cmd);
    compile("g++ cxx_caller.cpp", cmd);
    run_expect_pass(&sc, "cxx_caller", &exe, "PASS cxx_caller");
}

// ---------------------------------------------------------------------------------------------
// Fortran
// ---------------------------------------------------------------------------------------------

/// The module on its own, as strict Fortran 2008 with warnings as errors.
#[test]
fn fortran_module_compiles() {
    if !have_compiler("gfortran", "fortran_module_compiles") {
        return;
    }
    let sc = Scenario::new("abi-fmod");
    let dir = build_dir(&sc);
    let mut cmd = Command::new("gfortran");
    cmd.args([
        "-c",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-std=f2008",
        "-pedantic",
    ])
    .arg("-J")
    .arg(&dir)
    .arg("-o")
    .arg(dir.join("libcr.o"))
    .arg(include_dir().join("libcr.f90"))
    .current_dir(&dir);
    compile("gfortran -c include/libcr.f90", cmd);
    assert!(dir.join("libcr.mod").is_file(), "libcr.mod was not written");
}

/// fortran_api checkpoints itself from a Fortran callback (continue path), then `cr_restart`
/// on its image runs the restart path.
#[test]
fn fortran_api_checkpoint_and_restart() {
    if !have_compiler("gfortran", "fortran_api_checkpoint_and_restart") {
        return;
    }
    let sc = Scenario::new("abi-fortran");
    let dir = build_dir(&sc);
    let exe = dir.join("fortran_api");
    let mut cmd = Command::new("gfortran");
    cmd.args(["-O0", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(include_dir().join("libcr.f90"))
        .arg(c_tests_dir().join("fortran_api.f90"))
        .arg("-J")
        .arg(&dir)
        .current_dir(&dir);
    link_libcr(&mut cmd);
    compile("gfortran fortran_api.f90", cmd);

    // Continue path (runs in the scenario root: the image is <root>/context.fortran).
    let out = run_expect_pass(&sc, "fortran_api", &exe, "PASS fortran_api");
    assert!(
        out.lines()
            .any(|l| l.trim() == "001 continue path: callback saw 0"),
        "fortran_api should report the continue path:\n{out}"
    );
    let img = sc.root().join("context.fortran");
    let len = fs::metadata(&img)
        .unwrap_or_else(|e| panic!("{} missing: {e}\n{}", img.display(), sc.log()))
        .len();
    assert!(len > 0, "{} is empty\n{}", img.display(), sc.log());

    // Restart path.
    let mut restarted = sc.restart(&img);
    restarted.expect_pass(RESTART_TIMEOUT);
    let out = restarted.stdout();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(
        lines.contains(&"002 restart path: callback saw restarter pid")
            && lines.contains(&"PASS fortran_api restarted")
            && !lines.contains(&"001 continue path: callback saw 0"),
        "the restarted fortran_api should report the restart path only:\n{}",
        restarted.diag()
    );
}

/// The sources this file compiles exist where the build commands expect them.
#[test]
fn sources_present() {
    for p in [
        include_dir().join("blcr_common.h"),
        include_dir().join("blcr_errcodes.h"),
        include_dir().join("libcr.h"),
        include_dir().join("libcr.f90"),
        c_tests_dir().join("abi_layout.c"),
        c_tests_dir().join("cxx_caller.cpp"),
        c_tests_dir().join("fortran_api.f90"),
    ] {
        assert!(p.is_file(), "{} is missing", p.display());
    }
}
