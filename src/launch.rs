//! How `cr_run` starts a program with the checkpoint agent preloaded: where the preload stub
//! of this installation is, which file a program name leads to, whether LD_PRELOAD can reach
//! it at all (not setuid, not statically linked), and the LD_PRELOAD value that puts the stub
//! first and keeps the caller's other entries.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The preload stub (`libcr_run.so.0`, or `libcr_omit.so.0` when `omit`) of the installation
/// whose tools are in `tools_dir`: in its prefix (`bin/../lib`), or beside the tools in a
/// build directory.
pub fn preload_library(tools_dir: &Path, omit: bool) -> Option<PathBuf> {
    let stem = if omit { "libcr_omit" } else { "libcr_run" };
    [
        tools_dir.join(format!("../lib/{stem}.so.0")),
        tools_dir.join(format!("{stem}.so.0")),
        tools_dir.join(format!("{stem}.so")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .map(|p| p.canonicalize().unwrap_or(p))
}

/// The file program `name` leads to: itself when it has a '/', else the first executable
/// regular file of that name in `path` (a PATH value).
pub fn find_program(name: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    let p = Path::new(name);
    if name.as_bytes().contains(&b'/') {
        return Some(p.to_path_buf());
    }
    std::env::split_paths(path?).map(|d| d.join(p)).find(|c| {
        c.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Whether `data` (a file's start and program headers) is a 64-bit ELF executable without a
/// program interpreter, i.e. statically linked.
pub fn is_static_elf(data: &[u8]) -> bool {
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16at(54), u16at(56));
    !(0..phnum).any(|i| {
        let o = phoff.saturating_add(i * phentsize);
        o + 4 <= data.len() && u32::from_le_bytes(data[o..o + 4].try_into().unwrap_or([0; 4])) == 3
        // PT_INTERP
    })
}

/// Why LD_PRELOAD cannot bring the agent into the program at `path` (errno and one line), or
/// `None` when it can.
pub fn unreachable_by_preload(path: &Path) -> Option<(i32, String)> {
    if let Ok(md) = path.metadata() {
        if md.permissions().mode() & 0o6000 != 0 {
            return Some((
                libc::EPERM,
                format!(
                    "{}: setuid/setgid programs ignore LD_PRELOAD; link it with -lcr instead",
                    path.display()
                ),
            ));
        }
    }
    let data = std::fs::read(path).unwrap_or_default();
    is_static_elf(&data).then(|| {
        (
            libc::ENOEXEC,
            format!(
                "{}: statically linked, so LD_PRELOAD cannot load the checkpoint agent; link it \
                 with libcr.a (-lcr) instead",
                path.display()
            ),
        )
    })
}

/// The LD_PRELOAD value for the program: `lib` first, then the entries of `old` (the caller's
/// LD_PRELOAD, ':' or ' ' separated) except empty ones and any libcr library (a nested cr_run
/// must not load the agent twice).
pub fn preload_value(lib: &Path, old: Option<&OsStr>) -> OsString {
    let mut preload = lib.as_os_str().to_os_string();
    for entry in old
        .map(|o| o.as_bytes())
        .unwrap_or_default()
        .split(|&b| b == b':' || b == b' ')
    {
        let name = Path::new(OsStr::from_bytes(entry));
        let base = name.file_name().map(|f| f.as_bytes()).unwrap_or(b"");
        if entry.is_empty()
            || base.starts_with(b"libcr.so")
            || base.starts_with(b"libcr_run.so")
            || base.starts_with(b"libcr_omit.so")
        {
            continue;
        }
        preload.push(":");
        preload.push(OsStr::from_bytes(entry));
    }
    preload
}

/// The system's transparent huge page mode for `cr_run --huge-pages`: the bracketed word of
/// `/sys/kernel/mm/transparent_hugepage/enabled` (`always`, `madvise`, `never`), `None` when
/// the file is missing (a kernel without THP).
pub fn thp_mode(sysfs: &Path) -> Option<String> {
    let text = std::fs::read_to_string(sysfs.join("enabled")).ok()?;
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// The `GLIBC_TUNABLES` value for `cr_run --huge-pages`: the caller's `old` value with
/// `glibc.malloc.hugetlb=1` added (malloc then advises its heap and its mmapped chunks
/// `MADV_HUGEPAGE`), and whether the caller had set that tunable already (then kept as given).
pub fn huge_pages_tunables(old: Option<&OsStr>) -> (OsString, bool) {
    let old = old.map(|o| o.to_os_string()).unwrap_or_default();
    let had = old
        .as_bytes()
        .split(|&b| b == b':')
        .any(|t| t.starts_with(b"glibc.malloc.hugetlb="));
    if had {
        return (old, true);
    }
    let mut v = old;
    if !v.is_empty() {
        v.push(":");
    }
    v.push("glibc.malloc.hugetlb=1");
    (v, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_tunables_keep_the_callers() {
        assert_eq!(
            huge_pages_tunables(None),
            (OsString::from("glibc.malloc.hugetlb=1"), false)
        );
        assert_eq!(
            huge_pages_tunables(Some(OsStr::new("glibc.malloc.arena_max=2"))),
            (
                OsString::from("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
                false
            )
        );
        let theirs = OsStr::new("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2");
        assert_eq!(
            huge_pages_tunables(Some(theirs)),
            (theirs.to_os_string(), true)
        );
    }

    #[test]
    fn thp_mode_is_the_bracketed_word() {
        let dir = std::env::temp_dir().join(format!("cowthp-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled"), "always [madvise] never\n").unwrap();
        assert_eq!(thp_mode(&dir).as_deref(), Some("madvise"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(thp_mode(&dir), None);
    }

    #[test]
    fn preload_keeps_other_entries_once() {
        let v = preload_value(
            Path::new("/p/lib/libcr_run.so.0"),
            Some(OsStr::new(
                "/x/libfoo.so /old/libcr_run.so.0::/y/libcr.so.0:/z/libbar.so",
            )),
        );
        assert_eq!(v, "/p/lib/libcr_run.so.0:/x/libfoo.so:/z/libbar.so");
        assert_eq!(preload_value(Path::new("/l.so"), None), "/l.so");
    }

    #[test]
    fn static_and_dynamic_elf_told_apart() {
        assert!(!is_static_elf(b"#!/bin/sh\n"), "a script");
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me), "the test binary has an interpreter");
        // The same headers with the PT_INTERP entry turned into PT_NULL.
        let mut no_interp = me.clone();
        let phoff = u64::from_le_bytes(me[32..40].try_into().unwrap()) as usize;
        let (ent, num) = (
            u16::from_le_bytes([me[54], me[55]]) as usize,
            u16::from_le_bytes([me[56], me[57]]) as usize,
        );
        for i in 0..num {
            let o = phoff + i * ent;
            if no_interp[o..o + 4] == 3u32.to_le_bytes() {
                no_interp[o..o + 4].copy_from_slice(&0u32.to_le_bytes());
            }
        }
        assert!(is_static_elf(&no_interp));
    }

    #[test]
    fn programs_found_by_path() {
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = find_program(OsStr::new("sh"), Some(path)).expect("sh");
        assert!(sh.ends_with("sh") && sh.is_file());
        assert_eq!(
            find_program(OsStr::new("./x"), None),
            Some(PathBuf::from("./x"))
        );
        assert_eq!(
            find_program(OsStr::new("no-such-program-cr"), Some(path)),
            None
        );
        assert_eq!(find_program(OsStr::new("sh"), None), None);
    }
}
