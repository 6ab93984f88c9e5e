//! `cr_info [--check] [-q] FILE`: prints what a checkpoint image contains and, with `--check`,
//! whether it would restart here.

use clap::Parser;
use cr::image::format::{
    FdKind, RegionKind, FS_HUGETLB, FS_TEMPDIR, FS_TMPFS, PAGE, SAVED_DIR, SAVED_TMP, SAVED_WRITTEN,
};
use cr::image::reader::Image;
use cr::tool::{fail, strerror};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

cr::tool_marker!();

const TOOL: &str = "cr_info";

#[derive(Parser, Debug)]
#[command(
    name = "cr_info",
    version,
    about = "Describe a checkpoint image and check whether it would restart"
)]
struct Args {
    /// Also verify the page data and that every referenced file and the working directory are
    /// unchanged; exit 1 if the image would not restart.
    #[arg(long)]
    check: bool,
    /// Do not print the contents (with --check: print only the problems found).
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Fold a delta image and its chain into one full image OUT (the chain is left as it is).
    #[arg(long, value_name = "OUT")]
    merge: Option<PathBuf>,
    /// The image to describe.
    file: PathBuf,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn nul_str(b: &[u8]) -> String {
    lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())])
}

/// "12.0 KiB".
fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// "12.0 KiB (12288 bytes)".
fn size(n: u64) -> String {
    if n < 1024 {
        return format!("{n} bytes");
    }
    format!("{} ({n} bytes)", human(n))
}

/// Seconds since the epoch (UTC) as RFC 3339, with nanoseconds when there are any.
fn rfc3339(sec: i64, nsec: i64) -> String {
    let (days, rem) = (sec.div_euclid(86_400), sec.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = if nsec != 0 {
        format!(".{nsec:09}")
    } else {
        String::new()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn prot(p: u32) -> String {
    let bit = |b: i32, c: char| if p & b as u32 != 0 { c } else { '-' };
    [
        bit(libc::PROT_READ, 'r'),
        bit(libc::PROT_WRITE, 'w'),
        bit(libc::PROT_EXEC, 'x'),
    ]
    .iter()
    .collect()
}

/// `F_GETFL` flags in words: "O_WRONLY|O_APPEND".
fn open_flags(f: i32) -> String {
    let mut words = vec![match f & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_ACCMODE",
    }
    .to_string()];
    let mut rest = f & !libc::O_ACCMODE;
    let named = [
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DSYNC, "O_DSYNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_ASYNC, "O_ASYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (0o100000, "O_LARGEFILE"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
    ];
    for (bits, name) in named {
        if bits != 0 && rest & bits == bits {
            words.push(name.to_string());
            rest &= !bits;
        }
    }
    if rest != 0 {
        words.push(format!("{rest:#o}"));
    }
    words.join("|")
}

fn region_kind(r: &cr::image::reader::Region) -> &'static str {
    if r.sysv.is_some() {
        return "sysv-shm";
    }
    match (r.kind, r.fs.map(|f| f.fs)) {
        (RegionKind::SharedContent, Some(FS_TMPFS)) => return "tmpfs-shared",
        (RegionKind::PrivateContent, Some(FS_TMPFS)) => return "tmpfs-private",
        (RegionKind::SharedContent, Some(FS_TEMPDIR)) => return "tempdir-shared",
        (RegionKind::PrivateContent, Some(FS_TEMPDIR)) => return "tempdir-private",
        (RegionKind::SharedContent | RegionKind::FileShared, Some(FS_HUGETLB)) => {
            return "hugetlb-shared"
        }
        (_, Some(FS_HUGETLB)) => return "hugetlb-private",
        _ => {}
    }
    match r.kind {
        // Transparent huge pages mapped part of it (`REC_REGION_THP`).
        RegionKind::Anon if r.huge_bytes > 0 => "anon-thp",
        RegionKind::Stack if r.huge_bytes > 0 => "stack-thp",
        RegionKind::Anon => "anon",
        RegionKind::Stack => "stack",
        RegionKind::FilePrivate => "file-private",
        RegionKind::FileShared => "file-shared",
        RegionKind::SharedContent => "shared-content",
        RegionKind::PrivateContent => "private-content",
        RegionKind::Vdso => "vdso",
        RegionKind::Vvar => "vvar",
        RegionKind::VvarVclock => "vvar-vclock",
    }
}

fn fd_kind(k: FdKind) -> &'static str {
    match k {
        FdKind::Regular => "file",
        FdKind::Directory => "directory",
        FdKind::CharDevice => "chardev",
        FdKind::Inherited => "inherited",
        FdKind::Pipe => "pipe",
        FdKind::Unsupported => "unsupported",
        FdKind::CheckpointFile => "checkpoint-file",
        FdKind::Unlinked => "unlinked-file",
        FdKind::Kernel => "kernel-object",
    }
}

/// A file mapped by reference: path, recorded size, mtime (seconds, nanoseconds).
struct FileRef<'a> {
    path: &'a [u8],
    size: u64,
    mtime: (i64, i64),
}

fn referenced_files(img: &Image) -> Vec<FileRef<'_>> {
    let mut out: Vec<FileRef> = Vec::new();
    for r in &img.regions {
        let by_ref = matches!(r.kind, RegionKind::FilePrivate | RegionKind::FileShared);
        if by_ref && !out.iter().any(|f| f.path == r.path.as_slice()) {
            out.push(FileRef {
                path: &r.path,
                size: r.rec.file_size,
                mtime: (r.rec.mtime_sec, r.rec.mtime_nsec),
            });
        }
    }
    out
}

/// Every file whose contents travel in the image: (path, size, why it was saved), each once.
fn saved_files(img: &Image) -> Vec<(String, u64, &'static str)> {
    let mut out: Vec<(String, u64, &'static str)> = Vec::new();
    let mut add = |path: &[u8], size: u64, why: &'static str| {
        let p = lossy(path);
        if !out.iter().any(|(q, ..)| *q == p) {
            out.push((p, size, why));
        }
    };
    for f in &img.fds {
        if let Some(sv) = &f.saved {
            let why = match sv.why {
                SAVED_TMP => "open under a temporary directory",
                SAVED_DIR => "open under a --save-dir directory",
                SAVED_WRITTEN => "open for writing (--save-written)",
                _ => "saved for a reason this cr_info does not know",
            };
            add(&f.path, sv.size.max(0) as u64, why);
        } else if f.kind == FdKind::Unlinked {
            add(&f.path, f.rec.size.max(0) as u64, "open and unlinked");
        }
    }
    for (c, path) in &img.created {
        add(
            path,
            c.saved.size.max(0) as u64,
            "created with mkstemp under a temporary directory, closed",
        );
    }
    for r in img
        .regions
        .iter()
        .filter(|r| cr::restore::memory::tmpfs_file(r))
    {
        let why = match (r.fs.map(|f| f.fs), r.kind) {
            (Some(FS_TEMPDIR), RegionKind::SharedContent) => {
                "shared-mapped under a temporary directory"
            }
            (Some(FS_TEMPDIR), _) => "private-mapped under a temporary directory (its pages)",
            (_, RegionKind::SharedContent) => "shared-mapped from tmpfs",
            _ => "private-mapped from tmpfs (its pages)",
        };
        add(&r.path, r.rec.file_size, why);
    }
    out
}

fn print_contents(path: &Path, file: &std::fs::File, img: &Image, len: u64) {
    let h = &img.header;
    let p = &img.process;
    println!("Image {}", path.display());
    println!("  format version   {}", h.version);
    println!("  architecture     x86-64 (ELF machine {})", h.arch);
    println!("  kernel release   {}", nul_str(&h.kernel_release));
    println!("  pid              {}", h.pid);
    let t = h.time_ns as i64;
    println!("  checkpointed at  {}", rfc3339(t / 1_000_000_000, 0));
    println!(
        "  XCR0             {:#x} (xsave area {} bytes)",
        h.xcr0, h.xsave_size
    );
    println!("  total size       {}", size(len));
    println!("  page data        {}", size(h.data_len));
    if img.compressed() {
        let z: Vec<_> = img
            .zframes
            .iter()
            .filter(|f| f.method == cr::image::format::ZFRAME_ZSTD)
            .collect();
        let (raw, stored) = z
            .iter()
            .fold((0, 0), |(r, s), f| (r + f.raw_len as u64, s + f.stored_len));
        println!(
            "  compressed       zstd: memory pages {} raw, {} stored; {} frames compressed ({} to {}), {} stored raw (incompressible); decompressed in parallel at restart",
            size(img.memory_len()),
            size(img.stored_memory_len()),
            z.len(),
            size(raw),
            size(stored),
            img.zframes.len() - z.len()
        );
    }
    print_chain(path, img);
    // How cr_restart (without --eager) will restore it here, and the rule that comes with it.
    match cr::restore::memory::lazy_refusal(file, img) {
        Some(why) => println!("  restart          page data read in full: {why}"),
        None => println!(
            "  restart          {} of page data mapped from this file (lazy): while a program restored from it runs, remove or rename it freely but never change it in place",
            size(cr::restore::memory::lazy_plan(img).0)
        ),
    }

    println!("\nProcess");
    println!(
        "  pid {}  ppid {}  pgid {}  sid {}",
        p.pid, p.ppid, p.pgid, p.sid
    );
    println!("  cwd              {}", lossy(&img.cwd));
    println!("  umask            {:04o}", p.umask);
    match &img.creds {
        Some((c, groups)) => {
            let ids = |v: &[u32; 4]| format!("{} {} {} {}", v[0], v[1], v[2], v[3]);
            println!(
                "  uids             {} (real effective saved fs)",
                ids(&c.uid)
            );
            println!("  gids             {}", ids(&c.gid));
            let g: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            println!("  groups           {}", g.join(" "));
            println!(
                "  capabilities     effective {:#x} permitted {:#x} inheritable {:#x} bounding {:#x} ambient {:#x}",
                c.cap_eff, c.cap_prm, c.cap_inh, c.cap_bnd, c.cap_amb
            );
        }
        None => println!("  credentials      not recorded (older writer)"),
    }
    println!(
        "  brk              {:#x} (heap starts at {:#x})",
        p.mm.brk, p.mm.start_brk
    );
    println!("  start_stack      {:#x}", p.mm.start_stack);
    println!("  threads          {}", p.nthreads);

    println!("\nThreads ({})", img.threads.len());
    for t in &img.threads {
        let ctl = if t.is_control != 0 {
            "  (libcr control thread)"
        } else {
            ""
        };
        println!("  tid {:<8} {}{ctl}", t.tid, nul_str(&t.comm));
    }

    println!("\nMemory regions ({})", img.regions.len());
    println!(
        "  {:<27} {:<4} {:<15} {:>9} {:>12} {:>10}  PATH",
        "ADDRESS RANGE", "PROT", "KIND", "SIZE", "BYTES", "SAVED"
    );
    for r in &img.regions {
        let saved: u64 = r.extents.iter().map(|e| e.len).sum();
        let len = r.rec.end - r.rec.start;
        let line = format!(
            "  {:012x}-{:012x}   {:<4} {:<15} {:>9} {:>12} {:>10}  {}",
            r.rec.start,
            r.rec.end,
            prot(r.rec.prot),
            region_kind(r),
            human(len),
            len,
            saved,
            lossy(&r.path)
        );
        println!("{}", line.trim_end());
    }

    println!("\nFile descriptors ({})", img.fds.len());
    println!(
        "  {:>4} {:<15} {:<32} {:>12}  PATH",
        "FD", "KIND", "FLAGS", "OFFSET"
    );
    let in_flight = img.in_flight.iter().map(|f| (f, true));
    for (f, flying) in img.fds.iter().map(|f| (f, false)).chain(in_flight) {
        if flying && f.rec.fd == img.in_flight[0].rec.fd {
            println!(
                "\nDescriptors in flight in unix sockets' queues ({}; sent again at restart)",
                img.in_flight.len()
            );
        }
        let mut flags = open_flags(f.rec.flags);
        if f.rec.fd_flags & libc::FD_CLOEXEC != 0 {
            flags.push_str(" FD_CLOEXEC");
        }
        if let Some(o) = &f.owner {
            if o.owner_pid != 0 {
                let kind = ["tid", "pid", "pgrp"]
                    .get(o.owner_type as usize)
                    .unwrap_or(&"?");
                flags.push_str(&format!(" owner={kind}:{}", o.owner_pid));
            }
            if o.signal != 0 {
                flags.push_str(&format!(" sig={}", o.signal));
            }
        }
        if f.kind == FdKind::Pipe && f.rec.pipe_size != 0 {
            flags.push_str(&format!(" size={}", f.rec.pipe_size));
        }
        println!(
            "  {:>4} {:<15} {:<32} {:>12}  {}",
            f.rec.fd,
            fd_kind(f.kind),
            flags,
            f.rec.offset,
            lossy(&f.path)
        );
        if let Some((id, state)) = &f.kobj {
            match cr::kinds::by_id(*id) {
                Some(k) => println!("  {:>4} {}", "", k.describe(state)),
                None => println!("  {:>4} kernel object of unknown kind {id}", ""),
            }
        }
    }

    let files = referenced_files(img);
    println!("\nReferenced files ({})", files.len());
    for f in &files {
        println!(
            "  {}  size {}, mtime {}",
            lossy(f.path),
            f.size,
            rfc3339(f.mtime.0, f.mtime.1)
        );
    }

    if !img.sems.is_empty() {
        println!("\nSysV semaphore sets ({})", img.sems.len());
        for (s, vals) in &img.sems {
            let key = if s.key == 0 {
                "IPC_PRIVATE".to_string()
            } else {
                format!("key {:#x}", s.key)
            };
            let vals: Vec<String> = vals.iter().map(|v| v.to_string()).collect();
            println!(
                "  set {}, {key}, mode {:04o}, values {}",
                s.semid,
                s.mode,
                vals.join(" ")
            );
        }
    }

    if !img.msgqs.is_empty() {
        println!("\nSysV message queues ({})", img.msgqs.len());
        for q in &img.msgqs {
            let h = &q.head;
            let key = if h.key == 0 {
                "IPC_PRIVATE".to_string()
            } else {
                format!("key {:#x}", h.key)
            };
            let bytes: usize = q.msgs.iter().map(|m| m.1.len()).sum();
            println!(
                "  queue {}, {key}, mode {:04o}, owner {}:{}, capacity {} bytes, {} messages ({bytes} bytes)",
                h.msqid,
                h.mode,
                h.uid,
                h.gid,
                h.qbytes,
                q.msgs.len()
            );
        }
    }

    let sysv: Vec<_> = img.regions.iter().filter(|r| r.sysv.is_some()).collect();
    if !sysv.is_empty() {
        println!("\nSysV shared memory segments ({})", sysv.len());
        for r in sysv {
            let Some(s) = r.sysv else { continue };
            let key = if s.mode & cr::restore::sysv::SHM_DEST != 0 {
                "removed (IPC_RMID), re-created private".to_string()
            } else if s.key == 0 {
                "IPC_PRIVATE".to_string()
            } else {
                format!("key {:#x}", s.key)
            };
            println!(
                "  {:#x}  segment {}, {key}, size {}, mode {:04o}",
                r.rec.start,
                s.shmid,
                s.size,
                s.mode & 0o777
            );
        }
    }

    let saved = saved_files(img);
    if !saved.is_empty() {
        println!("\nSaved files ({})", saved.len());
        for (p, n, why) in &saved {
            println!("  {p}  size {n}  ({why})");
        }
    }

    let tmpfs: Vec<_> = img
        .regions
        .iter()
        .filter(|r| cr::restore::memory::tmpfs_file(r) && r.fs.is_some_and(|f| f.fs == FS_TMPFS))
        .collect();
    if !tmpfs.is_empty() {
        println!("\nFiles on tmpfs, saved by content ({})", tmpfs.len());
        for r in tmpfs {
            let how = if r.kind == RegionKind::SharedContent {
                "shared: mapped again from this path, re-created with the saved contents if gone"
            } else {
                "private: the file if still unchanged, else memory, with the saved pages"
            };
            println!(
                "  {}  size {}, mode {:04o}  ({how})",
                lossy(&r.path),
                r.rec.file_size,
                r.fs.map_or(0, |f| f.mode)
            );
        }
    }

    if !img.warnings.is_empty() {
        println!("\nWarnings ({})", img.warnings.len());
        for w in &img.warnings {
            println!("  {w}");
        }
    }
}

/// The reasons the image would not restart on this machine (one line each).
/// A delta image's chain: each link with what it holds, newest first (or why it is broken).
fn print_chain(path: &Path, img: &Image) {
    let Some((rec, _)) = &img.parent else {
        return;
    };
    let incr = img.regions.iter().filter(|r| r.incr.is_some()).count();
    println!(
        "  delta image      {} link(s) behind it; {incr} incremental region(s) take their other pages from the chain",
        rec.depth
    );
    println!("\nChain (newest first)");
    println!("  {:<5} {:>12} {:>12}  FILE", "KIND", "SIZE", "PAGE DATA");
    let row = |p: &Path, i: &Image| {
        let kind = if i.parent.is_some() { "delta" } else { "full" };
        let total = i.trailer.total_len;
        println!(
            "  {kind:<5} {:>12} {:>12}  {}",
            human(total),
            human(i.header.data_len),
            p.display()
        );
    };
    row(path, img);
    match cr::image::chain::resolve(img, path) {
        Ok(links) => links.iter().for_each(|l| row(&l.path, &l.img)),
        Err(e) => println!("  broken: {e}"),
    }
}

fn problems(path: &Path, img: &Image) -> Vec<String> {
    let mut out = Vec::new();
    if img.parent.is_some() {
        if let Err(e) = cr::image::chain::resolve(img, path) {
            out.push(e.msg);
        }
    }
    for f in referenced_files(img) {
        let name = lossy(f.path);
        match std::fs::metadata(OsStr::from_bytes(f.path)) {
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::ENOENT);
                out.push(format!("mapped file {name}: {}", strerror(errno)));
            }
            Ok(md) => {
                let now = (md.size(), md.mtime(), md.mtime_nsec());
                if now != (f.size, f.mtime.0, f.mtime.1) {
                    out.push(format!(
                        "mapped file {name} changed since the checkpoint: size {} (was {}), mtime {} (was {})",
                        now.0,
                        f.size,
                        rfc3339(now.1, now.2),
                        rfc3339(f.mtime.0, f.mtime.1)
                    ));
                }
            }
        }
    }
    for r in &img.regions {
        if r.kind == RegionKind::SharedContent && cr::restore::memory::tmpfs_file(r) {
            if let Err(e) = cr::restore::memory::check_tmpfs_shared(r) {
                out.push(e.msg);
            }
        }
    }
    let cwd = OsStr::from_bytes(&img.cwd);
    if !Path::new(cwd).is_dir() {
        out.push(format!(
            "working directory {} no longer exists",
            lossy(&img.cwd)
        ));
    }
    let (xcr0, _) = cr::agent::image::cpu_xsave();
    if img.header.xcr0 != xcr0 {
        out.push(format!(
            "CPU vector state differs: image XCR0 {:#x}, this CPU {xcr0:#x}",
            img.header.xcr0
        ));
    }
    out
}

fn main() {
    // Like any Unix filter: a closed pipe (`cr_info IMG | head`) ends us quietly.
    // SAFETY: restoring the default disposition of SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = Args::parse();
    if let Some(out) = &args.merge {
        match cr::image::merge::merge(&args.file, out) {
            Ok(n) => {
                if !args.quiet {
                    println!(
                        "merged {} and its chain into {} ({n} bytes)",
                        args.file.display(),
                        out.display()
                    );
                }
                return;
            }
            Err(e) => fail(TOOL, e.errno, &e.msg),
        }
    }
    let path = &args.file;
    let file = std::fs::File::open(path).unwrap_or_else(|e| {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        fail(
            TOOL,
            errno,
            &format!("{}: {}", path.display(), strerror(errno)),
        )
    });
    let len = match file.metadata() {
        Ok(md) if md.is_dir() => fail(
            TOOL,
            libc::EISDIR,
            &format!("{}: is a directory, not an image", path.display()),
        ),
        Ok(md) => md.len(),
        Err(e) => fail(TOOL, libc::EIO, &format!("{}: {e}", path.display())),
    };
    let (manifest, images) = cr::image::tree::open_all(&file)
        .unwrap_or_else(|e| fail(TOOL, e.errno(), &format!("{}: {e}", path.display())));
    if args.check {
        for img in &images {
            if let Err(e) = img.verify_data(&file) {
                fail(TOOL, e.errno(), &format!("{}: {e}", path.display()));
            }
        }
    }
    if !args.quiet {
        if let Some(m) = &manifest {
            let pids: Vec<String> = m.procs.iter().map(|p| p.pid.to_string()).collect();
            println!("Tree image {}", path.display());
            println!("  processes        {} ({})", m.header.nproc, pids.join(" "));
            println!(
                "  in this file     {} image(s), from process #{}",
                m.header.count, m.header.first
            );
            println!(
                "  shared fds       {} descriptor(s) in groups",
                m.shares.len()
            );
            println!();
        }
        for (i, img) in images.iter().enumerate() {
            if i > 0 {
                println!();
            }
            let img_len = img.header.trailer_offset + PAGE as u64 - img.base;
            print_contents(
                path,
                &file,
                img,
                if manifest.is_some() { img_len } else { len },
            );
        }
    }
    if !args.check {
        return;
    }
    let found: Vec<String> = images.iter().flat_map(|i| problems(path, i)).collect();
    let pages: u64 = images.iter().map(|i| i.header.data_len / PAGE as u64).sum();

    if !args.quiet {
        println!("\nCheck");
        println!("  page data        checksum ok ({pages} pages)");
    }
    for p in &found {
        if args.quiet {
            println!("{p}");
        } else {
            println!("  problem: {p}");
        }
    }
    if found.is_empty() {
        if !args.quiet {
            println!("  result           would restart on this machine");
        }
    } else {
        if !args.quiet {
            println!(
                "  result           would NOT restart: {} problem(s)",
                found.len()
            );
        }
        std::process::exit(1);
    }
}
