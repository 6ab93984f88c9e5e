//! `cr_checkpoint [options] PID`: asks a process's agent for an image and commits it atomically.

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use cr::checkpoint::{self, Commit, Destination, Note, Ptraced};
use cr::protocol;
use cr::tool::fail;
use std::path::PathBuf;

cr::tool_marker!();

const TOOL: &str = "cr_checkpoint";

#[derive(Parser, Debug)]
#[command(
    name = "cr_checkpoint",
    version,
    about = "Checkpoint a running process to a file",
    after_help = "Scopes: -T (default) saves the process and its descendants, -g every process of the group and -s of the session (with their descendants), all stopped together (one consistent cut), in one image file or with -d one file per process. Zombie children of saved processes are saved as zombies; so is the child through which a program checkpoints itself (system(\"cr_checkpoint $PPID\")), as exited with status 0.\n\nExit status: 0 on success, else errno & 0xff: 3 no such process, everything omitted or ended during the checkpoint, 7 more than 256 processes, 13 permission, 17 file exists (--noclobber), 22 bad arguments, 52 a process without checkpoint support, 56/57 ptraced/ptracer, 110 timed out."
)]
struct Args {
    /// Checkpoint the process and its descendants (default).
    #[arg(short = 'T', long = "tree", action = ArgAction::SetTrue)]
    tree: bool,
    /// Checkpoint only the process ID.
    #[arg(short = 'p', long = "pid", visible_alias = "process", action = ArgAction::SetTrue)]
    pid_scope: bool,
    /// ID is a process group.
    #[arg(short = 'g', long = "pgid", visible_alias = "group", action = ArgAction::SetTrue)]
    pgid: bool,
    /// ID is a session.
    #[arg(short = 's', long = "sid", visible_alias = "session", action = ArgAction::SetTrue)]
    sid: bool,
    /// Write context.ID in the current directory (default).
    #[arg(short = 'c', long = "cwd", action = ArgAction::SetTrue)]
    cwd: bool,
    /// Write the image to FILE (a regular file, a FIFO or a socket; "-" = standard output).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Write the image to the open descriptor FD.
    #[arg(short = 'F', long = "fd", value_name = "FD")]
    fd: Option<i32>,
    /// Write one file per process, context.PID, into DIR.
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Write a temporary file and rename it into place once complete (default).
    #[arg(long, action = ArgAction::SetTrue)]
    atomic: bool,
    /// Keep an existing file as NAME (default: rotating FILE.~N~) once the new one is complete.
    #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    backup: Option<String>,
    /// Write the image directly into FILE (no temporary file and rename).
    #[arg(long, action = ArgAction::SetTrue)]
    clobber: bool,
    /// Refuse to replace an existing FILE (exit 17).
    #[arg(long, action = ArgAction::SetTrue)]
    noclobber: bool,
    /// Sync the image and its directory to disk before reporting success (default).
    #[arg(long, action = ArgAction::SetTrue)]
    sync: bool,
    /// Do not sync the image to disk.
    #[arg(long, action = ArgAction::SetTrue)]
    nosync: bool,
    /// Copy-on-write: stop the program only while its state is recorded, and write its memory
    /// from a forked snapshot while it runs on (one process at a time; -v says which mode ran).
    #[arg(long, action = ArgAction::SetTrue)]
    cow: bool,
    /// After the checkpoint, leave the process running (default).
    #[arg(long, action = ArgAction::SetTrue)]
    run: bool,
    /// Send SIGTERM to the process once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    term: bool,
    /// Send SIGABRT once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    abort: bool,
    /// Send SIGKILL once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    kill: bool,
    /// Send SIGSTOP once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    stop: bool,
    /// Send SIGCONT once the image is safely on disk.
    #[arg(long, action = ArgAction::SetTrue)]
    cont: bool,
    /// BLCR's undocumented "early" SIGSTOP: here every signal is already sent before any thread
    /// of the target runs again, so this is --stop.
    #[arg(long = "early-stop", action = ArgAction::SetTrue)]
    early_stop: bool,
    /// BLCR's undocumented "early" SIGABRT (as --abort, see --early-stop).
    #[arg(long = "early-abrt", action = ArgAction::SetTrue)]
    early_abrt: bool,
    /// Send signal NUM once the image is safely on disk.
    #[arg(short = 'S', long = "signal", value_name = "NUM")]
    signal: Option<i32>,
    /// Store the executable by content, not by reference.
    #[arg(long = "save-exe", action = ArgAction::SetTrue)]
    save_exe: bool,
    /// Store private mapped files by content.
    #[arg(long = "save-private", action = ArgAction::SetTrue)]
    save_private: bool,
    /// Store shared mapped files by content.
    #[arg(long = "save-shared", action = ArgAction::SetTrue)]
    save_shared: bool,
    /// Store every mapped file by content.
    #[arg(long = "save-all", action = ArgAction::SetTrue)]
    save_all: bool,
    /// Store mapped files by reference (default).
    #[arg(long = "save-none", action = ArgAction::SetTrue)]
    save_none: bool,
    /// Store at most SIZE bytes (K, M, G suffixes; 1G by default) of files open or
    /// shared-mapped under temporary directories per process; none: store none.
    #[arg(long = "save-tmp-limit", value_name = "SIZE|none")]
    save_tmp_limit: Option<String>,
    /// Write a delta image: only the pages written since PARENT (default: the image at the
    /// destination, kept as its backup FILE.~N~) was taken; a full image (said under -v) when
    /// that cannot be done. One process only.
    #[arg(long, value_name = "PARENT", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    incremental: Option<String>,
    /// Compress the page data with zstd at LEVEL (1 to 22; 1 by default), a thread per core;
    /// pieces that do not compress are stored raw, and an image whose sampled page data does not
    /// compress is written raw (as without --compress). With --incremental the deltas are
    /// compressed.
    #[arg(long, value_name = "LEVEL", num_args = 0..=1, require_equals = true,
          default_missing_value = "")]
    compress: Option<String>,
    /// With --incremental: every Nth image of a chain is a full one.
    #[arg(long = "max-chain", value_name = "N")]
    max_chain: Option<u32>,
    /// Treat DIR as a temporary directory too: files open or shared-mapped under it are stored
    /// by content (repeatable).
    #[arg(long = "save-dir", value_name = "DIR", action = ArgAction::Append)]
    save_dir: Vec<PathBuf>,
    /// Store files open for writing anywhere by content, at most SIZE per process (K, M, G
    /// suffixes; 1G by default).
    #[arg(long = "save-written", value_name = "SIZE", num_args = 0..=1, require_equals = true,
          default_missing_value = "1G")]
    save_written: Option<String>,
    /// Checkpoint a ptraced process anyway.
    #[arg(long = "ptraced-allow", action = ArgAction::SetTrue)]
    ptraced_allow: bool,
    /// Leave a ptraced process out.
    #[arg(long = "ptraced-skip", action = ArgAction::SetTrue)]
    ptraced_skip: bool,
    /// Fail if a process is ptraced (default).
    #[arg(long = "ptraced-error", action = ArgAction::SetTrue)]
    ptraced_error: bool,
    /// Leave out processes that ptrace others.
    #[arg(long = "ptracer-skip", action = ArgAction::SetTrue)]
    ptracer_skip: bool,
    /// Fail if a process ptraces others (default).
    #[arg(long = "ptracer-error", action = ArgAction::SetTrue)]
    ptracer_error: bool,
    /// Kernel message verbosity (accepted for BLCR compatibility).
    #[arg(long = "kmsg-none", action = ArgAction::SetTrue, hide = true)]
    kmsg_none: bool,
    /// Kernel message verbosity (accepted for BLCR compatibility).
    #[arg(long = "kmsg-error", action = ArgAction::SetTrue, hide = true)]
    kmsg_error: bool,
    /// Kernel message verbosity (accepted for BLCR compatibility).
    #[arg(long = "kmsg-warning", action = ArgAction::SetTrue, hide = true)]
    kmsg_warning: bool,
    /// Give up if the checkpoint does not complete within SEC seconds (the process goes on).
    #[arg(short = 't', long = "time", value_name = "SEC")]
    time: Option<u32>,
    /// More messages (repeatable).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
    /// Print nothing but errors.
    #[arg(short = 'q', long = "quiet", action = ArgAction::SetTrue)]
    quiet: bool,
    /// Checkpoint this node's part of a job across nodes (a tree, group or session) as part of
    /// one cut: join the coordinator (cr_checkpoint --coordinator) listening at SOCKET (a unix
    /// socket path) or at HOST:PORT over TCP (then with --secret), which chooses the
    /// destination and the post-checkpoint signal.
    #[arg(long = "node", value_name = "SOCKET|HOST:PORT", conflicts_with_all = ["file", "fd", "dir", "cwd", "coordinator"])]
    node: Option<String>,
    /// With --node: this node's name, its image's name in the generation (default: the host
    /// name).
    #[arg(long = "node-name", value_name = "NAME", requires = "node")]
    node_name: Option<String>,
    /// Coordinate a checkpoint of a job across nodes: listen at SOCKET (a unix socket path) or
    /// on HOST:PORT over TCP (then with --secret) for --nodes node parts (cr_checkpoint --node
    /// SOCKET|HOST:PORT PID, one per node), stop them all, drain the bytes in flight between
    /// them, and commit one generation DIR/gen.N (-d DIR: an image per node and a MANIFEST);
    /// prints its directory. --term, --kill etc. go to every node after the commit.
    #[arg(long = "coordinator", value_name = "SOCKET|HOST:PORT", requires_all = ["nodes", "dir"])]
    coordinator: Option<String>,
    /// With --coordinator or --node: the job secret, a file of at least 16 bytes only its owner
    /// may read (the same for the coordinator and every node). Both sides prove they know it
    /// (HMAC-SHA256 challenge-response) before anything else; required over TCP.
    #[arg(long = "secret", value_name = "FILE")]
    secret: Option<PathBuf>,
    /// With --coordinator: how many nodes make the job.
    #[arg(long = "nodes", value_name = "N", requires = "coordinator")]
    nodes: Option<usize>,
    /// The process (or group or session) to checkpoint.
    #[arg(
        required_unless_present = "coordinator",
        conflicts_with = "coordinator"
    )]
    id: Option<i32>,
}

/// The last of several options given (BLCR: "last one wins").
fn last_given<T: Copy>(m: &clap::ArgMatches, opts: &[(&str, T)], default: T) -> T {
    opts.iter()
        .filter(|(id, _)| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .filter_map(|(id, v)| {
            m.indices_of(id)
                .and_then(|mut i| i.next_back())
                .map(|i| (i, *v))
        })
        .max_by_key(|(i, _)| *i)
        .map_or(default, |(_, v)| v)
}

/// The post-checkpoint signal: the last of --run/--term/--abort/--kill/--stop/--cont/--signal.
fn chosen_signal(m: &clap::ArgMatches, a: &Args) -> i32 {
    let opts = [
        ("run", 0),
        ("term", libc::SIGTERM),
        ("abort", libc::SIGABRT),
        ("kill", libc::SIGKILL),
        ("stop", libc::SIGSTOP),
        ("cont", libc::SIGCONT),
        ("early_stop", libc::SIGSTOP),
        ("early_abrt", libc::SIGABRT),
        ("signal", a.signal.unwrap_or(0)),
    ];
    last_given(m, &opts, 0)
}

/// The `--save-*` options applied left to right (`--save-none` clears what came before).
fn save_flags(m: &clap::ArgMatches) -> u32 {
    let opts = [
        ("save_exe", protocol::FLAG_SAVE_EXE),
        ("save_private", protocol::FLAG_SAVE_PRIVATE),
        ("save_shared", protocol::FLAG_SAVE_SHARED),
        ("save_all", protocol::FLAG_SAVE_ALL),
        ("save_none", 0),
    ];
    let mut given: Vec<(usize, u32)> = opts
        .iter()
        .filter(|(id, _)| matches_given(m, id))
        .flat_map(|(id, f)| m.indices_of(id).into_iter().flatten().map(move |i| (i, *f)))
        .collect();
    given.sort_unstable();
    given
        .into_iter()
        .fold(0, |acc, (_, f)| if f == 0 { 0 } else { acc | f })
}

/// A size option's value in bytes (K, M, G suffixes); else one clear line naming `opt`.
fn parse_size(opt: &str, v: &str) -> u64 {
    let (num, unit) = match v.as_bytes().last() {
        Some(b'K' | b'k') => (&v[..v.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&v[..v.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)) {
        Some(b) if b < u64::MAX / 2 => b,
        _ => fail(
            TOOL,
            libc::EINVAL,
            &format!("{opt} {v}: not a size (bytes, or with a K, M or G suffix)"),
        ),
    }
}

/// `--incremental[=PARENT]` and `--max-chain N`.
fn incremental(a: &Args) -> Option<checkpoint::incremental::Incremental> {
    if a.max_chain.is_some() && a.incremental.is_none() {
        fail(TOOL, libc::EINVAL, "--max-chain needs --incremental");
    }
    if a.max_chain == Some(0) {
        fail(TOOL, libc::EINVAL, "--max-chain 0: give 1 or more");
    }
    let parent = a.incremental.clone()?;
    Some(checkpoint::incremental::Incremental {
        parent: (!parent.is_empty()).then(|| PathBuf::from(parent)),
        max_chain: a.max_chain.unwrap_or(0),
    })
}

/// `--save-tmp-limit none` as request flags (0 otherwise).
fn tmp_limit_flags(a: &Args) -> u32 {
    match a.save_tmp_limit.as_deref() {
        Some("none") => protocol::FLAG_SAVE_TMP_NONE,
        _ => 0,
    }
}

/// `--save-dir` and `--save-written` for the request.
fn save_files(a: &Args) -> protocol::SaveFiles {
    use std::os::unix::ffi::OsStrExt;
    let mut f = protocol::SaveFiles::default();
    match a.save_tmp_limit.as_deref() {
        None | Some("none") => {}
        Some(v) => f.tmp_limit = parse_size("--save-tmp-limit", v) + 1,
    }
    if let Some(v) = a.save_written.as_deref() {
        f.written = parse_size("--save-written", v) + 1;
    }
    for d in &a.save_dir {
        let abs = std::path::absolute(d).unwrap_or_else(|_| d.clone());
        let bytes = abs.as_os_str().as_bytes();
        if bytes.contains(&0) || !f.add_dir(bytes) {
            fail(
                TOOL,
                libc::EINVAL,
                &format!(
                    "--save-dir {}: the directories given take more than {} bytes",
                    d.display(),
                    protocol::SAVE_DIRS_LEN
                ),
            );
        }
    }
    f
}

fn matches_given(m: &clap::ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
}

/// The coordinator's options from the command line (BLCR: the last of conflicting options
/// wins).
fn options(m: &clap::ArgMatches, a: &Args) -> checkpoint::Options {
    use cr::api::types::{CR_SCOPE_PGRP, CR_SCOPE_PROC, CR_SCOPE_SESS, CR_SCOPE_TREE};
    let scope = last_given(
        m,
        &[
            ("tree", CR_SCOPE_TREE),
            ("pid_scope", CR_SCOPE_PROC),
            ("pgid", CR_SCOPE_PGRP),
            ("sid", CR_SCOPE_SESS),
        ],
        CR_SCOPE_TREE,
    );
    let given = [a.cwd, a.file.is_some(), a.fd.is_some(), a.dir.is_some()]
        .iter()
        .filter(|&&g| g)
        .count();
    if given > 1 {
        fail(
            TOOL,
            libc::EINVAL,
            "conflicting destinations: give only one of -c, -f, -F and -d",
        );
    }
    let dest = match (&a.file, a.fd, &a.dir) {
        (Some(f), ..) => Destination::File(f.clone()),
        (_, Some(fd), _) => Destination::Fd(fd),
        (.., Some(d)) => Destination::Dir(d.clone()),
        _ => Destination::Cwd,
    };
    let commit = match last_given(
        m,
        &[
            ("atomic", 0u8),
            ("backup", 1),
            ("clobber", 2),
            ("noclobber", 3),
        ],
        0,
    ) {
        1 => Commit::Backup(a.backup.clone().unwrap_or_default()),
        2 => Commit::Clobber,
        3 => Commit::NoClobber,
        _ => Commit::Atomic,
    };
    let ptraced = last_given(
        m,
        &[
            ("ptraced_allow", Ptraced::Allow),
            ("ptraced_skip", Ptraced::Skip),
            ("ptraced_error", Ptraced::Error),
        ],
        Ptraced::Error,
    );
    checkpoint::Options {
        dest,
        commit,
        save: save_flags(m) | tmp_limit_flags(a),
        files: save_files(a),
        time: a.time,
        signal: chosen_signal(m, a),
        stop_again: !matches_given(m, "cont"),
        ptraced,
        ptracer_skip: last_given(
            m,
            &[("ptracer_skip", true), ("ptracer_error", false)],
            false,
        ),
        sync: last_given(m, &[("sync", true), ("nosync", false)], true),
        cow: a.cow,
        incremental: incremental(a),
        compress: a.compress.as_deref().map(|l| {
            if l.is_empty() {
                return cr::image::compress::DEFAULT_LEVEL;
            }
            l.parse::<i32>().unwrap_or_else(|_| {
                fail(
                    TOOL,
                    libc::EINVAL,
                    &format!("invalid compression level '{l}' (a number, 1 to 22)"),
                )
            })
        }),
        ..checkpoint::Options::new(scope, a.id.unwrap_or(0))
    }
}

/// `--secret FILE`, read (exits with a one-line error when it cannot be used).
fn job_secret(a: &Args) -> Option<checkpoint::nodelink::Secret> {
    let path = a.secret.as_ref()?;
    Some(checkpoint::nodelink::Secret::read(path).unwrap_or_else(|e| fail(TOOL, libc::EINVAL, &e)))
}

/// `--coordinator SOCKET|HOST:PORT --nodes N -d DIR`: one generation of a job across nodes.
fn coordinate(m: &clap::ArgMatches, a: &Args, note: &mut dyn FnMut(Note)) {
    let c = checkpoint::nodes::Coordination {
        listen: checkpoint::nodelink::Endpoint::parse(a.coordinator.as_deref().unwrap_or("")),
        secret: job_secret(a),
        nodes: a.nodes.unwrap_or(0),
        dir: a.dir.clone().unwrap_or_default(),
        signal: chosen_signal(m, a),
        time: a.time,
    };
    let g = checkpoint::nodes::coordinate(&c, note).unwrap_or_else(|e| fail(TOOL, e.errno, &e.msg));
    if a.verbose > 0 && !a.quiet {
        for (name, bytes) in &g.nodes {
            eprintln!("{TOOL}: node {name}: {bytes} bytes");
        }
        eprintln!(
            "{TOOL}: {} nodes, {} connections between them",
            g.nodes.len(),
            g.links
        );
    }
    println!("{}", g.dir.display());
}

fn main() {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let started = std::time::Instant::now();
    let mut opts = options(&matches, &args);
    let verbose = args.verbose > 0 && !args.quiet;
    // A progress bar on a terminal (each process's bytes written of its image, summed).
    let mut bar = cr::progress::Bar::new(TOOL);
    opts.progress = cr::progress::stderr_is_terminal() && !args.quiet;
    let mut figures = std::collections::BTreeMap::new();
    let mut note = |n: Note| match n {
        Note::Warning(w) if !args.quiet => {
            bar.clear();
            eprintln!("{TOOL}: warning: {w}")
        }
        Note::Info(i) if verbose => {
            bar.clear();
            eprintln!("{TOOL}: {i}")
        }
        Note::Progress { pid, done, total } => {
            figures.insert(pid, (done, total));
            let (d, t) = figures
                .values()
                .fold((0, 0), |(d, t), &(a, b)| (d + a, t + b));
            bar.update(d, t);
        }
        _ => {}
    };
    if args.secret.is_some() && args.node.is_none() && args.coordinator.is_none() {
        fail(
            TOOL,
            libc::EINVAL,
            "--secret goes with --coordinator or --node",
        );
    }
    if args.coordinator.is_some() {
        coordinate(&matches, &args, &mut note);
        return;
    }
    let outcome = match &args.node {
        Some(coord) => {
            if opts.signal != 0 {
                fail(
                    TOOL,
                    libc::EINVAL,
                    "--node: the coordinator chooses the post-checkpoint signal",
                );
            }
            let name = args.node_name.clone().unwrap_or_else(cr::tool::host_name);
            let secret = job_secret(&args);
            let coord = checkpoint::nodelink::Endpoint::parse(coord);
            checkpoint::nodes::join(&coord, secret.as_ref(), &name, &opts, &mut note)
        }
        None => checkpoint::checkpoint(&opts, &mut note),
    };
    match &outcome {
        Ok(o) => bar.finish(o.total, o.total),
        Err(_) => bar.clear(),
    }
    let outcome = outcome.unwrap_or_else(|e| fail(TOOL, e.errno, &e.msg));
    let secs = started.elapsed().as_secs_f64();
    if verbose {
        for s in &outcome.saved {
            eprintln!(
                "{TOOL}: process {} checkpointed to {} ({} bytes; {})",
                s.pid, s.dest, s.bytes, s.report
            );
        }
        if let Some((st, _)) = outcome.compressed.filter(|(st, _)| st.images == 0) {
            debug_assert_eq!(st.raw, 0);
            eprintln!(
                "{TOOL}: not compressed: a sample of the page data was incompressible, so the image was written raw (zstd=skipped above)"
            );
        } else if let Some((st, secs)) = outcome.compressed {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            let agent = if st.agent_frames > 0 {
                format!(", {} of them written by the agent", st.agent_frames)
            } else {
                String::new()
            };
            let gap = match st.gap_closed {
                cr::image::compress::GAP_COLLAPSED => {
                    format!("; a gap of {:.1} MiB collapsed", mib(st.gap))
                }
                cr::image::compress::GAP_COPIED => format!(
                    "; a gap of {:.1} MiB closed by copying (the file system cannot collapse)",
                    mib(st.gap)
                ),
                _ => String::new(),
            };
            // How the pieces for the compressor came: read from the process (`via=pull`), or
            // through the pipe because that was refused.
            let via = if st.pull_refused != 0 {
                format!(
                    "; reading the process's memory was refused ({}): pieces came through the pipe",
                    cr::tool::strerror(st.pull_refused)
                )
            } else if st.pulled > 0 {
                format!("; {} pieces pulled from the process", st.pulled)
            } else if st.packed > 0 {
                format!("; {} frames compressed by the agent", st.packed)
            } else {
                String::new()
            };
            eprintln!(
                "{TOOL}: compressed {:.1} MiB of page data to {:.1} MiB ({} frames zstd, {} stored raw{agent}{via}; {}{gap}) in {:.2} s",
                mib(st.raw),
                mib(st.stored),
                st.zstd_frames,
                st.raw_frames,
                if st.direct { "io=direct" } else { "io=buffered" },
                secs
            );
        }
        let n = outcome.saved.len();
        if n > 1 || opts.scope != cr::api::types::CR_SCOPE_PROC {
            let s = if n == 1 { "" } else { "es" };
            eprintln!(
                "{TOOL}: {n} process{s} checkpointed to {} ({} bytes)",
                outcome.what, outcome.total
            );
        }
        eprintln!(
            "{TOOL}: {} written in {secs:.2} s ({}/s), request to durable image",
            cr::progress::human(outcome.total),
            cr::progress::human((outcome.total as f64 / secs.max(1e-3)) as u64)
        );
    }
}
