//! `cr_run [--] PROGRAM ARGS…`: runs PROGRAM with the checkpoint agent preloaded.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

cr::tool_marker!();

const TOOL: &str = "cr_run";

/// The object-store backend (`libcr-store`) as the supervisor's storage.
struct Backend(cr_store::Store);

impl cr::supervise::store::Storage for Backend {
    fn url(&self) -> &str {
        self.0.url()
    }
    fn list(&self) -> Result<Vec<(String, u64)>, String> {
        self.0.list()
    }
    fn upload(&self, path: &Path, file: &str, gate: &dyn Fn()) -> Result<u64, String> {
        self.0.upload(path, file, gate)
    }
    fn download(&self, file: &str, to: &Path) -> Result<u64, String> {
        self.0.download(file, to)
    }
    fn delete(&self, file: &str) -> Result<(), String> {
        self.0.delete(file)
    }
}

fn open_store(url: &str) -> Result<Box<dyn cr::supervise::store::Storage>, String> {
    Ok(Box::new(Backend(cr_store::Store::open(url)?)))
}

fn usage() -> ! {
    println!(
        "Usage: cr_run [--run|--omit] [--huge-pages] [-v] [--] PROGRAM [ARGS...]
Runs PROGRAM with the libcr checkpoint agent preloaded. --huge-pages puts its large private
anonymous memory (malloc, mmap of 2 MiB or more) in transparent huge pages where the system
allows: `cr_checkpoint --cow` then stops it about a millisecond per GiB instead of tens.

       cr_run --checkpoint-dir DIR [--every DURATION] [--keep N] [--id NAME]
              [--on-signal SIG[,SIG...]] [--exit-after-checkpoint CODE]
              [--checkpoint-signal SIG] [--store URL] [--no-resume] [--keep-final] [-v]
              [--incremental [--max-chain N]] [--] PROGRAM [ARGS...]
Starts PROGRAM, or resumes it from the newest good image of the same job in DIR; checkpoints
the whole job every DURATION (90s, 30m, 2h), on SIG of --checkpoint-signal (default USR2), and
on a preemption signal of --on-signal (default TERM: checkpoint, end the job, exit with CODE,
default 0); keeps the newest N generations (default 2); exits as PROGRAM does.
--store URL ships each generation to file:///PATH, s3://, gs://, az:// or http(s):// (WebDAV)
in the background, and fetches the newest good one from there when DIR has none.
--incremental writes delta images (only the pages written since the previous generation), a
full one every N (--max-chain, default 8); kept generations keep the images their chains need.

       cr_run --node SOCKET|HOST:PORT [--secret FILE] [--node-name NAME] [-v] [--] PROGRAM [ARGS...]
Runs PROGRAM (this node's part of a job across nodes) and stays its parent (signals passed on,
exits as it does); joins every checkpoint of the job's coordinator (cr_checkpoint
--coordinator) listening there, PROGRAM's tree being this node's part. Over TCP --secret is
required (the coordinator's file). NAME defaults to the host name.

       cr_run --status DIR
Lists the jobs and generations in DIR."
    );
    std::process::exit(0)
}

/// The value of option `name` at `args[0]` (`--name=V` or `--name V`), removing what it used.
fn take_value(args: &mut Vec<OsString>, name: &str) -> Option<String> {
    let first = args.remove(0).to_string_lossy().into_owned();
    if let Some(v) = first.strip_prefix(&format!("{name}=")) {
        return Some(v.to_string());
    }
    if args.is_empty() {
        cr::tool::fail(TOOL, libc::EINVAL, &format!("{name} needs a value"));
    }
    Some(args.remove(0).to_string_lossy().into_owned())
}

/// Whether `arg` is option `name`, with or without `=VALUE`.
fn is_opt(arg: &str, name: &str) -> bool {
    arg == name || arg.starts_with(&format!("{name}="))
}

/// `--huge-pages`: the program's `GLIBC_TUNABLES`, or `None` when the system has no transparent
/// huge pages (said on stderr: the program then runs with 4 KiB pages). With `verbose`, says
/// what is done.
fn huge_pages_env(verbose: bool) -> Option<OsString> {
    let sysfs = Path::new("/sys/kernel/mm/transparent_hugepage");
    let mode = cr::launch::thp_mode(sysfs);
    match mode.as_deref() {
        None | Some("never") => {
            eprintln!(
                "{TOOL}: --huge-pages: transparent huge pages are {} on this system \
                 ({}/enabled): the program runs with 4 KiB pages, and `cr_checkpoint --cow` \
                 stops it in proportion to its resident memory (the page-table copy)",
                if mode.is_some() {
                    "disabled"
                } else {
                    "not available"
                },
                sysfs.display()
            );
            return None;
        }
        _ => {}
    }
    let (tunables, theirs) =
        cr::launch::huge_pages_tunables(std::env::var_os("GLIBC_TUNABLES").as_deref());
    if verbose {
        let defrag = std::fs::read_to_string(sysfs.join("defrag"))
            .ok()
            .and_then(|t| {
                let s = t.find('[')? + 1;
                Some(t[s..s + t[s..].find(']')?].to_string())
            })
            .unwrap_or_else(|| "?".into());
        eprintln!(
            "{TOOL}: --huge-pages: private anonymous mappings of 2 MiB or more are advised \
             MADV_HUGEPAGE (mmap through the preload stub; malloc through GLIBC_TUNABLES={}{}); \
             transparent huge pages: enabled={}, defrag={defrag}; the kernel gives them where \
             it finds free 2 MiB blocks (AnonHugePages in /proc/PID/smaps_rollup says how much)",
            tunables.to_string_lossy(),
            if theirs {
                ", your glibc.malloc.hugetlb kept"
            } else {
                ""
            },
            mode.unwrap_or_default()
        );
    }
    Some(tunables)
}

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut omit = false;
    let mut huge_pages = false;
    let mut sup = cr::supervise::Config {
        dir: PathBuf::new(),
        every: None,
        keep: 2,
        id: None,
        on_signal: vec![libc::SIGTERM],
        exit_after_checkpoint: 0,
        exit_after_periodic: false,
        checkpoint_signal: Some(libc::SIGUSR2),
        no_resume: false,
        keep_final: false,
        verbose: false,
        store: None,
        incremental: None,
        argv: Vec::new(),
    };
    let mut max_chain: Option<u32> = None;
    let mut supervised = false;
    let mut node: Option<String> = None;
    let mut node_name: Option<String> = None;
    let mut secret: Option<String> = None;
    let bad = |what: &str, v: &str| -> ! {
        cr::tool::fail(TOOL, libc::EINVAL, &format!("invalid {what} '{v}'"))
    };
    while let Some(a) = args.first() {
        let a = a.to_string_lossy().into_owned();
        match a.as_str() {
            "--" => {
                args.remove(0);
                break;
            }
            "-?" | "--help" | "-h" => usage(),
            "--version" => {
                println!("cr_run: version {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            "--run" => {
                omit = false;
                args.remove(0);
            }
            "--omit" => {
                omit = true;
                args.remove(0);
            }
            "--huge-pages" => {
                huge_pages = true;
                args.remove(0);
            }
            "-v" | "--verbose" => {
                sup.verbose = true;
                args.remove(0);
            }
            "--no-resume" => {
                sup.no_resume = true;
                args.remove(0);
            }
            "--keep-final" => {
                sup.keep_final = true;
                args.remove(0);
            }
            "--incremental" => {
                sup.incremental = Some(cr::supervise::DEFAULT_MAX_CHAIN);
                args.remove(0);
            }
            s if is_opt(s, "--max-chain") => {
                let v = take_value(&mut args, "--max-chain").unwrap_or_default();
                max_chain = Some(
                    v.parse()
                        .ok()
                        .filter(|&n: &u32| n >= 1)
                        .unwrap_or_else(|| bad("--max-chain count", &v)),
                );
            }
            s if is_opt(s, "--status") => {
                let dir = take_value(&mut args, "--status").unwrap_or_default();
                match cr::supervise::status(Path::new(&dir)) {
                    Ok(text) => {
                        print!("{text}");
                        return;
                    }
                    Err(e) => cr::tool::fail(TOOL, e.errno, &e.msg),
                }
            }
            s if is_opt(s, "--checkpoint-dir") => {
                sup.dir =
                    PathBuf::from(take_value(&mut args, "--checkpoint-dir").unwrap_or_default());
                supervised = true;
            }
            s if is_opt(s, "--every") => {
                let v = take_value(&mut args, "--every").unwrap_or_default();
                sup.every = Some(
                    cr::tool::parse_duration(&v).unwrap_or_else(|| bad("--every duration", &v)),
                );
            }
            s if is_opt(s, "--keep") => {
                let v = take_value(&mut args, "--keep").unwrap_or_default();
                sup.keep = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .unwrap_or_else(|| bad("--keep count", &v));
            }
            s if is_opt(s, "--node") => node = take_value(&mut args, "--node"),
            s if is_opt(s, "--node-name") => node_name = take_value(&mut args, "--node-name"),
            s if is_opt(s, "--secret") => secret = take_value(&mut args, "--secret"),
            s if is_opt(s, "--id") => sup.id = take_value(&mut args, "--id"),
            s if is_opt(s, "--store") => sup.store = take_value(&mut args, "--store"),
            s if is_opt(s, "--on-signal") => {
                let v = take_value(&mut args, "--on-signal").unwrap_or_default();
                sup.on_signal = v
                    .split(',')
                    .map(|x| cr::tool::parse_signal(x.trim()).unwrap_or_else(|| bad("signal", x)))
                    .collect();
            }
            s if is_opt(s, "--checkpoint-signal") => {
                let v = take_value(&mut args, "--checkpoint-signal").unwrap_or_default();
                sup.checkpoint_signal = if v == "none" {
                    None
                } else {
                    Some(cr::tool::parse_signal(&v).unwrap_or_else(|| bad("signal", &v)))
                };
            }
            s if is_opt(s, "--exit-after-checkpoint") => {
                let v = take_value(&mut args, "--exit-after-checkpoint").unwrap_or_default();
                sup.exit_after_checkpoint = v
                    .parse()
                    .ok()
                    .filter(|c| (0..=255).contains(c))
                    .unwrap_or_else(|| bad("exit code", &v));
                sup.exit_after_periodic = true;
            }
            s if s.starts_with('-') => {
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
    let tools_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let Some(lib) = cr::launch::preload_library(&tools_dir, omit) else {
        cr::tool::fail(
            TOOL,
            libc::ENOENT,
            "cannot find the libcr preload library next to cr_run's installation",
        )
    };
    let prog = &args[0];
    let path_var = std::env::var_os("PATH");
    let Some(path) = cr::launch::find_program(prog, path_var.as_deref()) else {
        cr::tool::fail(
            TOOL,
            libc::ENOENT,
            &format!("{}: command not found", prog.to_string_lossy()),
        )
    };
    if let Some((errno, why)) = cr::launch::unreachable_by_preload(&path) {
        cr::tool::fail(TOOL, errno, &why);
    }
    let preload = cr::launch::preload_value(&lib, std::env::var_os("LD_PRELOAD").as_deref());
    let huge_env = huge_pages.then(|| huge_pages_env(sup.verbose)).flatten();
    let command = || {
        let mut c = std::process::Command::new(&path);
        c.arg0(prog).args(&args[1..]).env("LD_PRELOAD", &preload);
        if let Some(tunables) = &huge_env {
            c.env("LIBCR_HUGE_PAGES", "1")
                .env("GLIBC_TUNABLES", tunables);
        }
        c
    };
    if let Some(n) = max_chain {
        if sup.incremental.is_none() {
            cr::tool::fail(TOOL, libc::EINVAL, "--max-chain needs --incremental");
        }
        sup.incremental = Some(n);
    }
    if !supervised && sup.incremental.is_some() {
        cr::tool::fail(TOOL, libc::EINVAL, "--incremental needs --checkpoint-dir");
    }
    if !supervised && sup.store.is_some() {
        cr::tool::fail(TOOL, libc::EINVAL, "--store needs --checkpoint-dir");
    }
    if node.is_none() && (node_name.is_some() || secret.is_some()) {
        cr::tool::fail(TOOL, libc::EINVAL, "--node-name and --secret need --node");
    }
    if let Some(coord) = node {
        if supervised || omit {
            cr::tool::fail(
                TOOL,
                libc::EINVAL,
                "--node excludes --checkpoint-dir and --omit",
            );
        }
        let coord = cr::checkpoint::nodelink::Endpoint::parse(&coord);
        let secret = secret.map(|f| {
            cr::checkpoint::nodelink::Secret::read(Path::new(&f))
                .unwrap_or_else(|e| cr::tool::fail(TOOL, libc::EINVAL, &e))
        });
        if coord.is_tcp() && secret.is_none() {
            cr::tool::fail(
                TOOL,
                libc::EINVAL,
                &format!("--node {coord}: over TCP a job secret is required (--secret FILE, the coordinator's)"),
            );
        }
        let name = node_name.unwrap_or_else(cr::tool::host_name);
        if !cr::checkpoint::nodes::valid_name(&name) {
            cr::tool::fail(
                TOOL,
                libc::EINVAL,
                &format!("node name {name:?}: use letters, digits, '.', '-' and '_'"),
            );
        }
        let agent = cr::supervise::node::NodeAgent {
            coord,
            secret,
            name,
            verbose: sup.verbose,
        };
        match cr::supervise::node::run(&agent, &command) {
            Ok(status) => cr::restore::spawn::end_like(status),
            Err(e) => cr::tool::fail(TOOL, e.errno, &e.msg),
        }
    }
    if supervised {
        if omit {
            cr::tool::fail(
                TOOL,
                libc::EINVAL,
                "--omit and --checkpoint-dir exclude each other",
            );
        }
        if sup
            .on_signal
            .iter()
            .any(|&s| Some(s) == sup.checkpoint_signal)
        {
            cr::tool::fail(
                TOOL,
                libc::EINVAL,
                "a signal cannot be both in --on-signal and --checkpoint-signal",
            );
        }
        sup.argv = args.clone();
        match cr::supervise::run(&sup, &command, &open_store) {
            Ok(Ok(status)) => cr::restore::spawn::end_like(status),
            Ok(Err(code)) => std::process::exit(code),
            Err(e) => cr::tool::fail(TOOL, e.errno, &e.msg),
        }
    }
    let err = command().exec();
    cr::tool::fail(
        TOOL,
        err.raw_os_error().unwrap_or(1),
        &format!("cannot run {}: {err}", path.display()),
    );
}
