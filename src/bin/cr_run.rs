//! `cr_run [--] PROGRAM ARGS…`: runs PROGRAM with the checkpoint agent preloaded.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

cr::tool_marker!();

const TOOL: &str = "cr_run";

/// The preload stub (`libcr_run.so.0` or `libcr_omit.so.0`) of this installation: next to the
/// tools' prefix (`bin/../lib`), or beside the tools in a build directory.
fn library(omit: bool) -> Option<PathBuf> {
    let stem = if omit { "libcr_omit" } else { "libcr_run" };
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join(format!("../lib/{stem}.so.0")),
        dir.join(format!("{stem}.so.0")),
        dir.join(format!("{stem}.so")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .map(|p| p.canonicalize().unwrap_or(p))
}

fn find_program(name: &OsString) -> Option<PathBuf> {
    let p = Path::new(name);
    if name.as_bytes().contains(&b'/') {
        return Some(p.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(p))
        .find(|c| {
            c.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Whether the file is an ELF executable without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16at(54), u16at(56));
    !(0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= data.len() && u32::from_le_bytes(data[o..o + 4].try_into().unwrap_or([0; 4])) == 3
    })
}

fn usage() -> ! {
    println!("Usage: cr_run [--run|--omit] [--] PROGRAM [ARGS...]\nRuns PROGRAM with the libcr checkpoint agent preloaded.");
    std::process::exit(0)
}

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut omit = false;
    while let Some(a) = args.first() {
        match a.to_str() {
            Some("--") => {
                args.remove(0);
                break;
            }
            Some("-?") | Some("--help") | Some("-h") => usage(),
            Some("--version") => {
                println!("cr_run: version {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            Some("--run") => {
                omit = false;
                args.remove(0);
            }
            Some("--omit") => {
                omit = true;
                args.remove(0);
            }
            Some(s) if s.starts_with('-') => {
                cr::tool::fail(TOOL, libc::EINVAL, &format!("unknown option {s}"))
            }
            _ => break,
        }
    }
    if args.is_empty() {
        cr::tool::fail(
            TOOL,
            libc::EINVAL,
            "no program given (usage: cr_run [--] PROGRAM [ARGS...])",
        );
    }
    let Some(lib) = library(omit) else {
        cr::tool::fail(
            TOOL,
            libc::ENOENT,
            "cannot find the libcr preload library next to cr_run's installation",
        )
    };
    let prog = &args[0];
    let Some(path) = find_program(prog) else {
        cr::tool::fail(
            TOOL,
            libc::ENOENT,
            &format!("{}: command not found", prog.to_string_lossy()),
        )
    };
    if let Ok(md) = path.metadata() {
        if md.permissions().mode() & 0o6000 != 0 {
            cr::tool::fail(
                TOOL,
                libc::EPERM,
                &format!(
                    "{}: setuid/setgid programs ignore LD_PRELOAD; link it with -lcr instead",
                    path.display()
                ),
            );
        }
    }
    if is_static_elf(&path) {
        cr::tool::fail(TOOL, libc::ENOEXEC, &format!(
            "{}: statically linked, so LD_PRELOAD cannot load the checkpoint agent; link it with libcr.a (-lcr) instead",
            path.display()));
    }
    let mut preload = lib.as_os_str().to_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD") {
        for entry in old.as_bytes().split(|&b| b == b':' || b == b' ') {
            let name = Path::new(std::ffi::OsStr::from_bytes(entry));
            let base = name.file_name().map(|f| f.as_bytes()).unwrap_or(b"");
            if entry.is_empty()
                || base.starts_with(b"libcr.so")
                || base.starts_with(b"libcr_run.so")
                || base.starts_with(b"libcr_omit.so")
            {
                continue;
            }
            preload.push(":");
            preload.push(std::ffi::OsStr::from_bytes(entry));
        }
    }
    let err = std::process::Command::new(&path)
        .arg0(prog)
        .args(&args[1..])
        .env("LD_PRELOAD", preload)
        .exec();
    cr::tool::fail(
        TOOL,
        err.raw_os_error().unwrap_or(1),
        &format!("cannot run {}: {err}", path.display()),
    );
}
