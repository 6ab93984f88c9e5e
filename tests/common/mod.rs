//! Helpers shared by the end-to-end tests (`tests/e2e.rs`, `tests/bad_input.rs`).
//!
//! They drive the real tools (`cr_run`, `cr_checkpoint`, `cr_restart`) on the self-checking
//! programs in `c-tests/`, which follow one protocol: read `CR_TEST_GO` (a path) and
//! `CR_TEST_DIR` (a scratch dir), print `READY` after setup, work until the GO file exists,
//! verify themselves, print `PASS <name>` and exit 0 (or `FAIL ...` and exit 1).
//!
//! The API, in the order a test uses it:
//!
//! ```text
//! let sc = Scenario::new("single");              // private temp dir, removed on drop
//! let mut job = sc.start_program("single");      // cr_run -- prog, own process group, READY seen
//! let img = sc.checkpoint(job.pid(), &["--term"]); // cr_checkpoint ... -f <dir>/img/ctx.N PID, checked
//! job.expect_signal(SIGTERM, DEATH_TIMEOUT);
//! sc.go();                                       // create the GO file
//! sc.restart(&img).expect_pass(RESTART_TIMEOUT); // cr_restart <img>: exit 0 and PASS
//! ```
//!
//! Every process is started in its own process group and wrapped in a [`Job`] whose `Drop` kills
//! the whole group (and any descendant that left it) with SIGKILL and reaps the leader, so a failing
//! or panicking test leaves nothing behind. Every wait has a timeout; a failed assertion prints the
//! outputs of the processes involved and a log of every tool run of the scenario.
//!
//! Only `std` is used: signals are sent by running `kill`, process state is read from `/proc`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a program may take from start to its `READY` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to die after `--term`.
pub const DEATH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `cr_restart` may take to restore the program and let it finish after GO.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one run of `cr_checkpoint` (or a failing `cr_restart`) may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long output pipes may stay open after the process that owns them exited.
pub const PIPE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval of every wait loop.
const POLL: Duration = Duration::from_millis(5);

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// `nobody`/`nogroup`: the unprivileged user the root-only tests run as.
pub const NOBODY: (u32, u32) = (65534, 65534);
/// A second unprivileged identity (needs no passwd entry: setpriv takes numeric ids).
pub const OTHER_USER: (u32, u32) = (12345, 12345);

// ---------------------------------------------------------------------------------------------
// Paths and environment
// ---------------------------------------------------------------------------------------------

pub fn cr_run() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cr_run"))
}
pub fn cr_checkpoint() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cr_checkpoint"))
}
pub fn cr_restart() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cr_restart"))
}
/// `target/<profile>`: where `libcr.so` and `libcr.a` are, next to the binaries.
pub fn lib_dir() -> PathBuf {
    sync_library();
    cr_run()
        .parent()
        .expect("cr_run has a parent dir")
        .to_path_buf()
}

/// `cargo test` builds the library only into `target/<profile>/deps/` (it uplifts it to
/// `target/<profile>/` only for `cargo build`), so `libcr.so`/`libcr.a` next to the binaries are
/// missing, or stale from an earlier `cargo build`. Put the fresh ones in place, once per run.
fn sync_library() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_cr_run"))
            .parent()
            .expect("cr_run has a parent dir");
        for name in ["libcr.so", "libcr.a"] {
            let src = dir.join("deps").join(name);
            let dst = dir.join(name);
            let Ok(src_md) = fs::metadata(&src) else {
                continue;
            };
            let fresh = match fs::metadata(&dst) {
                Ok(d) => {
                    (d.mtime(), d.mtime_nsec()) >= (src_md.mtime(), src_md.mtime_nsec())
                        && d.len() == src_md.len()
                }
                Err(_) => false,
            };
            if fresh {
                continue;
            }
            let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
            match fs::copy(&src, &tmp).and_then(|_| fs::rename(&tmp, &dst)) {
                Ok(()) => eprintln!(
                    "note: copied {} to {} (cargo test does not put it there)",
                    src.display(),
                    dst.display()
                ),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    eprintln!(
                        "note: cannot copy {} to {}: {e}",
                        src.display(),
                        dst.display()
                    );
                }
            }
        }
        // Programs linked with -lcr record the library's soname (libcr.so.0), which cargo
        // does not create: make it a symlink to libcr.so.
        if let Some(soname) = soname(&dir.join("libcr.so")).filter(|s| s != "libcr.so") {
            let link = dir.join(&soname);
            if fs::read_link(&link).ok().as_deref() != Some(Path::new("libcr.so")) {
                let tmp = dir.join(format!(".{soname}.{}.tmp", std::process::id()));
                let _ = fs::remove_file(&tmp);
                let res = std::os::unix::fs::symlink("libcr.so", &tmp)
                    .and_then(|_| fs::rename(&tmp, &link));
                if let Err(e) = res {
                    let _ = fs::remove_file(&tmp);
                    eprintln!("note: cannot create {}: {e}", link.display());
                }
            }
        }
    });
}

/// The `DT_SONAME` of a shared library (via `readelf -d`).
fn soname(lib: &Path) -> Option<String> {
    let out = Command::new("readelf").arg("-d").arg(lib).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("(SONAME)"))?;
    let start = line.find('[')? + 1;
    let end = line.rfind(']')?;
    Some(line[start..end].to_string())
}
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
pub fn c_tests_dir() -> PathBuf {
    manifest_dir().join("c-tests")
}
pub fn include_dir() -> PathBuf {
    manifest_dir().join("include")
}

/// True when running under CI (`CI` set and not empty/"false"/"0"): optional things become
/// mandatory there.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI"), Ok(v) if !v.is_empty() && v != "false" && v != "0")
}

/// Real and effective uid are 0.
pub fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|ids| ids.split_whitespace().take(2).all(|id| id == "0"))
        .unwrap_or(false)
}

/// Whether `name` is an executable found in `PATH` (or is an existing path itself).
pub fn have_command(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).exists();
    }
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p).any(|d| {
                fs::metadata(d.join(name))
                    .map(|m| m.is_file() && m.mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// The machine name `setarch` wants (`uname -m`).
pub fn machine() -> &'static str {
    std::env::consts::ARCH
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn os<S: AsRef<OsStr>>(s: S) -> OsString {
    s.as_ref().to_owned()
}

fn shell_words<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    words
        .into_iter()
        .map(|w| w.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Only `std` is used, so signals are sent with the `kill` program.
fn send_kill(sig: i32, targets: &[String]) {
    if targets.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .args(targets)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Send `sig` to one process.
pub fn signal_pid(pid: u32, sig: i32) {
    send_kill(sig, &[pid.to_string()]);
}

// ---------------------------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` the tests need.
#[derive(Clone, Debug)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let mut f = s[close + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
        pgrp,
    })
}

/// The process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(st) if st.state != 'Z' && st.state != 'X')
}

fn all_pids() -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Whether any process of process group `pgid`, zombies included, still holds its pid (a killed
/// job's orphans are reaped by pid 1, in some sandboxes only after a while).
pub fn group_holds_pids(pgid: u32) -> bool {
    all_pids()
        .into_iter()
        .any(|p| proc_stat(p).is_some_and(|st| st.pgrp == pgid))
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| matches!(proc_stat(p), Some(st) if st.pgrp == pgid && st.state != 'Z' && st.state != 'X'))
        .collect()
}

/// Children of `pid` (of every one of its threads), from `/proc/PID/task/*/children`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every descendant of `pid` (not `pid` itself), parents before children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            if !out.contains(&c) && c != pid {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// One line describing a process for diagnostics: comm, state, wchan, thread count.
pub fn proc_summary(pid: u32) -> String {
    let Some(st) = proc_stat(pid) else {
        return format!("{pid}: gone");
    };
    let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let threads = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|r| r.count())
        .unwrap_or(0);
    format!(
        "{pid} ({}) state={} ppid={} pgrp={} threads={threads} wchan={}",
        st.comm,
        st.state,
        st.ppid,
        st.pgrp,
        wchan.trim()
    )
}

/// The personality flags of a process (`/proc/PID/personality`), if readable.
pub fn personality(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/personality")).ok()?;
    u64::from_str_radix(s.trim(), 16).ok()
}
/// `ADDR_NO_RANDOMIZE`, set by `setarch -R`.
pub const ADDR_NO_RANDOMIZE: u64 = 0x0040000;

// ---------------------------------------------------------------------------------------------
// Test programs (compiled once per test binary run)
// ---------------------------------------------------------------------------------------------

/// How to run one test program: an argv (binary, or interpreter + script) and extra env.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub argv: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// Index in `argv` of the file that belongs to the test (the binary or the script).
    file_idx: usize,
}

impl Program {
    /// The compiled program (or script) named `name`; builds it on first use. Panics with the
    /// compiler's output if the build fails.
    pub fn get(name: &str) -> Program {
        match name {
            "worker.py" => {
                let script = c_tests_dir().join("worker.py");
                assert!(
                    script.is_file(),
                    "missing test program {}",
                    script.display()
                );
                let python = if Path::new("/usr/bin/python3").exists() {
                    "/usr/bin/python3"
                } else {
                    "python3"
                };
                Program {
                    name: name.into(),
                    argv: vec![os(python), os(&script)],
                    env: Vec::new(),
                    file_idx: 1,
                }
            }
            _ => {
                let exe = built(name);
                let env = if name.starts_with("omp") {
                    vec![("OMP_NUM_THREADS".into(), "4".into())]
                } else {
                    Vec::new()
                };
                Program {
                    name: name.into(),
                    argv: vec![os(exe)],
                    env,
                    file_idx: 0,
                }
            }
        }
    }

    /// The program's own file (binary or script).
    pub fn file(&self) -> &Path {
        Path::new(&self.argv[self.file_idx])
    }

    /// A copy of this program whose file lives in `dir` (mode 0755), for other users.
    pub fn copied_to(&self, dir: &Path) -> Program {
        let dest = dir.join(self.file().file_name().expect("program file name"));
        if !dest.exists() {
            fs::copy(self.file(), &dest).unwrap_or_else(|e| {
                panic!("copy {} to {}: {e}", self.file().display(), dest.display())
            });
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
                .expect("chmod program copy");
        }
        let mut p = self.clone();
        p.argv[self.file_idx] = os(&dest);
        p
    }
}

/// `target/tmp/c-tests-<pid>`: compiled programs of this test binary run. Directories of earlier
/// runs whose process is gone are removed.
pub fn build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(rd) = fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name
                    .strip_prefix("c-tests-")
                    .and_then(|p| p.parse::<u32>().ok())
                {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = base.join(format!("c-tests-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create build dir");
        dir
    })
}

/// The compile command of each program, as documented in the c-tests protocol.
fn compile_command(name: &str, out: &Path) -> Command {
    let src = |f: &str| os(c_tests_dir().join(f));
    let lib = lib_dir();
    let inc = include_dir();
    let mut cmd;
    match name {
        "single" | "sleeper" | "fileio" | "spinner" | "threads" | "omp" => {
            cmd = Command::new("gcc");
            cmd.args(["-O2", "-Wall"]);
            match name {
                "threads" | "sleeper" => {
                    cmd.arg("-pthread");
                }
                "omp" => {
                    cmd.arg("-fopenmp");
                }
                _ => {}
            }
            cmd.arg("-o").arg(out).arg(src(&format!("{name}.c")));
            if name == "threads" {
                cmd.arg("-lm");
            }
        }
        "omp_f" => {
            cmd = Command::new("gfortran");
            cmd.args(["-O2", "-fopenmp", "-o"])
                .arg(out)
                .arg(src("omp_f.f90"));
        }
        // Programs that call libcr's API themselves: linked with -lcr.
        "linked" | "forward" | "api_tree" | "api_driver" | "cb_exit" | "secure" => {
            cmd = Command::new("gcc");
            // secure.c calls nothing of libcr: keep the library (and its agent) linked in.
            cmd.args(["-O2", "-Wl,--no-as-needed"])
                .arg("-I")
                .arg(&inc)
                .arg("-o")
                .arg(out)
                .arg(src(&format!("{name}.c")));
            cmd.arg(format!("-L{}", lib.display()))
                .arg("-lcr")
                .arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        // A FUSE server (libfuse3: Debian's libfuse3-dev, which .ci/run installs).
        "stallfs" => {
            cmd = Command::new("gcc");
            cmd.args([
                "-O2",
                "-Wall",
                "-D_FILE_OFFSET_BITS=64",
                "-I/usr/include/fuse3",
                "-o",
            ])
            .arg(out)
            .arg(src("stallfs.c"))
            .args(["-lfuse3", "-lpthread"]);
        }
        "linked_static" => {
            cmd = Command::new("gcc");
            cmd.arg("-O2")
                .arg("-I")
                .arg(&inc)
                .arg("-o")
                .arg(out)
                .arg(src("linked.c"));
            cmd.arg(lib.join("libcr.a"));
            cmd.args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"]);
        }
        other => {
            // Any other C program in c-tests/: threads and libm available.
            cmd = Command::new("gcc");
            cmd.args(["-O2", "-Wall", "-pthread", "-o"])
                .arg(out)
                .arg(src(&format!("{other}.c")))
                .arg("-lm");
        }
    }
    // In the build dir: gfortran writes its .mod files into the working directory.
    cmd.current_dir(build_dir());
    cmd
}

/// Build `name` once per test binary run; every caller gets the same result.
fn built(name: &str) -> PathBuf {
    type Slot = Arc<OnceLock<Result<PathBuf, String>>>;
    static SLOTS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    let slot: Slot = lock(SLOTS.get_or_init(Default::default))
        .entry(name.to_string())
        .or_default()
        .clone();
    let result = slot.get_or_init(|| {
        let out = build_dir().join(name);
        let tmp = build_dir().join(format!(".{name}.building"));
        let mut cmd = compile_command(name, &tmp);
        let line = command_line(&cmd);
        let res = cmd.stdin(Stdio::null()).output();
        match res {
            Ok(o) if o.status.success() => {
                fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
                Ok(out)
            }
            Ok(o) => Err(format!(
                "building test program {name} failed ({}):\n$ {line}\n{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Err(format!(
                "building test program {name}: cannot run `{line}`: {e}"
            )),
        }
    });
    match result {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: a private directory, an optional user to run as, a log of everything run
// ---------------------------------------------------------------------------------------------

static SCENARIO_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Paths of the three tools a scenario runs (copies, when the build dir is not reachable by the
/// scenario's user).
#[derive(Clone, Debug)]
pub struct Tools {
    pub cr_run: PathBuf,
    pub cr_checkpoint: PathBuf,
    pub cr_restart: PathBuf,
}

/// One test's world: `root/` (its temp dir) with `work/` (`CR_TEST_DIR`), `img/` (images),
/// `bin/` (program copies for other users) and the GO file `root/GO`.
pub struct Scenario {
    name: String,
    root: PathBuf,
    user: Option<(u32, u32)>,
    launcher: Vec<OsString>,
    tools: Tools,
    images: AtomicUsize,
    started: Instant,
    log: Arc<Mutex<String>>,
}

impl Scenario {
    /// A scenario run as the current user.
    pub fn new(name: &str) -> Scenario {
        Scenario::create(name, None)
    }

    /// A scenario whose processes (programs and tools) all run as `uid:gid` through
    /// `setpriv --reuid --regid --clear-groups`. Needs root. The scenario dir is chowned to the user.
    pub fn as_user(name: &str, (uid, gid): (u32, u32)) -> Scenario {
        assert!(is_root(), "Scenario::as_user needs root");
        assert!(
            have_command("setpriv"),
            "setpriv (util-linux) is needed to run as another user"
        );
        Scenario::create(name, Some((uid, gid)))
    }

    fn create(name: &str, user: Option<(u32, u32)>) -> Scenario {
        sync_library();
        let n = SCENARIO_COUNTER.fetch_add(1, Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("libcr-test-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut sc = Scenario {
            name: name.to_string(),
            root,
            user,
            launcher: Vec::new(),
            tools: Tools {
                cr_run: cr_run(),
                cr_checkpoint: cr_checkpoint(),
                cr_restart: cr_restart(),
            },
            images: AtomicUsize::new(0),
            started: Instant::now(),
            log: Arc::new(Mutex::new(String::new())),
        };
        // From here on a panic removes the directory again (Drop).
        let root = sc.root.clone();
        for d in ["", "work", "img", "bin"] {
            fs::create_dir_all(root.join(d))
                .unwrap_or_else(|e| panic!("create {}: {e}", root.join(d).display()));
            fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755))
                .expect("chmod scenario dir");
        }
        if let Some((uid, gid)) = user {
            for d in ["", "work", "img"] {
                std::os::unix::fs::chown(root.join(d), Some(uid), Some(gid))
                    .expect("chown scenario dir");
            }
            sc.tools = reachable_tools(&root.join("bin"));
        }
        let who = match user {
            Some((u, g)) => format!(" as {u}:{g}"),
            None => String::new(),
        };
        sc.note(&format!("scenario {name}{who} in {}", sc.root.display()));
        sc
    }

    /// Run `cr_run` and `cr_restart` (not `cr_checkpoint`) through `prefix`, e.g.
    /// `["setarch", machine(), "-R"]`. The prefix must exec its argument (pid preserved).
    pub fn launch_with<S: AsRef<OsStr>>(mut self, prefix: &[S]) -> Scenario {
        self.launcher = prefix.iter().map(os).collect();
        let line = format!(
            "launching cr_run/cr_restart through: {}",
            shell_words(&self.launcher)
        );
        self.note(&line);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `CR_TEST_DIR` of the programs.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }
    /// Where [`Scenario::checkpoint`] puts images.
    pub fn img_dir(&self) -> PathBuf {
        self.root.join("img")
    }
    pub fn go_file(&self) -> PathBuf {
        self.root.join("GO")
    }
    pub fn user(&self) -> Option<(u32, u32)> {
        self.user
    }
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Create the GO file: every program of the scenario finishes its work and verifies itself.
    pub fn go(&self) {
        fs::write(self.go_file(), b"go\n").expect("create GO file");
        self.note("GO file created");
    }

    /// Append a line to the scenario log (printed with every failure).
    pub fn note(&self, line: &str) {
        note(&self.log, self.started, line);
    }

    /// Everything run in this scenario so far, with exit statuses and tool outputs.
    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    /// The test program `name`, copied into the scenario when it runs as another user.
    pub fn program(&self, name: &str) -> Program {
        let p = Program::get(name);
        match self.user {
            Some(_) => p.copied_to(&self.root.join("bin")),
            None => p,
        }
    }

    /// A command for `argv`, run as the scenario's user, with the test protocol's environment,
    /// in the scenario dir.
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        self.command_as(self.user, argv)
    }

    /// Like [`Scenario::command`], run as `user` (`None`: as the test itself). Other users than
    /// the test's need root.
    pub fn command_as<S: AsRef<OsStr>>(&self, user: Option<(u32, u32)>, argv: &[S]) -> Command {
        assert!(!argv.is_empty(), "empty argv");
        let mut full: Vec<OsString> = Vec::new();
        if let Some((uid, gid)) = user {
            full.extend(
                [
                    "setpriv".to_string(),
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                    "--".into(),
                ]
                .iter()
                .map(os),
            );
        }
        full.extend(argv.iter().map(os));
        let mut cmd = Command::new(&full[0]);
        cmd.args(&full[1..]);
        cmd.env("CR_TEST_GO", self.go_file());
        cmd.env("CR_TEST_DIR", self.work_dir());
        cmd.env_remove("LD_PRELOAD");
        if user.is_some() {
            // Root's runtime dir and home are not the other user's.
            cmd.env_remove("XDG_RUNTIME_DIR");
            cmd.env("HOME", &self.root);
        }
        cmd.current_dir(&self.root);
        cmd
    }

    /// `[launcher] cr_run -- PROGRAM ARGS` as the scenario's user.
    pub fn under_cr_run(&self, prog: &Program) -> Command {
        self.under_cr_run_with(prog, &[])
    }

    /// [`Scenario::under_cr_run`] with cr_run options (`--huge-pages`).
    pub fn under_cr_run_with(&self, prog: &Program, opts: &[&str]) -> Command {
        let mut argv = self.launcher.clone();
        argv.push(os(&self.tools.cr_run));
        argv.extend(opts.iter().map(os));
        argv.push(os("--"));
        argv.extend(prog.argv.iter().cloned());
        let mut cmd = self.command(&argv);
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The program on its own (no cr_run, no launcher), as the scenario's user.
    pub fn plain(&self, prog: &Program) -> Command {
        let mut cmd = self.command(&prog.argv);
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Start `cmd` in its own process group; stdin null, stdout and stderr captured.
    pub fn start(&self, what: &str, cmd: Command) -> Job {
        Job::spawn(what, cmd, self.log.clone(), self.started)
    }

    /// Start the test program `name` under cr_run and wait for its READY line.
    pub fn start_program(&self, name: &str) -> Job {
        let prog = self.program(name);
        let mut job = self.start(name, self.under_cr_run(&prog));
        job.wait_ready();
        job
    }

    /// `cr_run --status DIR` run to completion, asserted successful: what a person sees of a
    /// supervised job's images.
    pub fn cr_run_status(&self, dir: &Path) -> ToolResult {
        let res = self.run_tool(
            "cr_run --status",
            self.command(&[
                self.tools.cr_run.clone().into_os_string(),
                "--status".into(),
                dir.as_os_str().to_owned(),
            ]),
        );
        res.assert_success();
        res
    }

    /// Run a command to completion (own process group, timeout [`TOOL_TIMEOUT`]); panics if it
    /// does not finish in time.
    pub fn run_tool(&self, what: &str, cmd: Command) -> ToolResult {
        let mut job = self.start(what, cmd);
        let status = job.wait_exit(TOOL_TIMEOUT);
        job.wait_output_closed(PIPE_CLOSE_TIMEOUT);
        let res = ToolResult {
            what: what.to_string(),
            status,
            stdout: job.stdout(),
            stderr: job.stderr(),
            log: self.log.clone(),
        };
        self.note(&format!(
            "  -> {what} {status}; stdout: {:?}; stderr: {:?}",
            res.stdout.trim_end(),
            res.stderr.trim_end()
        ));
        res
    }

    /// `cr_checkpoint ARGS` as the scenario's user, to completion.
    pub fn cr_checkpoint<S: AsRef<OsStr>>(&self, args: &[S]) -> ToolResult {
        let mut argv = vec![os(&self.tools.cr_checkpoint)];
        argv.extend(args.iter().map(os));
        self.run_tool("cr_checkpoint", self.command(&argv))
    }

    /// A fresh image path in [`Scenario::img_dir`].
    pub fn next_image_path(&self) -> PathBuf {
        let n = self.images.fetch_add(1, Ordering::SeqCst) + 1;
        self.img_dir().join(format!("ctx.{n}"))
    }

    /// `cr_checkpoint FLAGS -f <img_dir>/ctx.N PID`; asserts exit 0 and a well-formed result
    /// (see [`Scenario::assert_image_file`]). Returns the image path.
    pub fn checkpoint(&self, pid: u32, flags: &[&str]) -> PathBuf {
        let img = self.next_image_path();
        let res = self.checkpoint_to(pid, flags, &img);
        res.assert_success();
        self.assert_image_file(&img);
        img
    }

    /// `cr_checkpoint FLAGS -f IMG PID`, whatever the result.
    pub fn checkpoint_to(&self, pid: u32, flags: &[&str], img: &Path) -> ToolResult {
        let mut args: Vec<OsString> = flags.iter().map(os).collect();
        args.push(os("-f"));
        args.push(os(img));
        args.push(os(pid.to_string()));
        self.cr_checkpoint(&args)
    }

    /// Checkpoint a process that was just restored (not our child): a request that fails while
    /// the restore is still in progress is retried (for at most 10 s, while the process lives);
    /// each failure is printed. Returns the image path.
    pub fn checkpoint_restored(&self, pid: u32, flags: &[&str]) -> PathBuf {
        self.checkpoint_restored_by(None, pid, flags)
    }

    /// [`Scenario::checkpoint_restored`] of a process the cr_restart `restart` restored: a
    /// failure also shows that restart's exit status (or that it still runs), stdout and stderr.
    pub fn checkpoint_restored_of(&self, restart: &mut Job, pid: u32, flags: &[&str]) -> PathBuf {
        self.checkpoint_restored_by(Some(restart), pid, flags)
    }

    fn checkpoint_restored_by(
        &self,
        mut restart: Option<&mut Job>,
        pid: u32,
        flags: &[&str],
    ) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut attempt = 1;
        loop {
            let img = self.next_image_path();
            let res = self.checkpoint_to(pid, flags, &img);
            if res.success() {
                self.assert_image_file(&img);
                return img;
            }
            let msg = format!(
                "note: checkpoint attempt {attempt} of freshly restored pid {pid} failed ({}): {}",
                res.status,
                res.stderr.trim()
            );
            eprintln!("{msg}");
            self.note(&msg);
            if !pid_alive(pid) || Instant::now() >= deadline {
                // The restart's own status and output, and the scenario's log (how and when the
                // restart and every other job ended).
                let summary = proc_summary(pid);
                let more = match restart.as_deref_mut() {
                    Some(job) => {
                        // Its exit status, if it ended (give it a moment once its child is gone).
                        job.try_wait_exit(Duration::from_millis(500));
                        format!("--- the restart ---\n{}", job.diag())
                    }
                    None => self.log(),
                };
                panic!(
                    "cannot checkpoint the restored process {pid} ({summary}) after {attempt} attempts; last:\n{}\n{more}",
                    res.describe(),
                );
            }
            attempt += 1;
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// An image written by cr_checkpoint: a non-empty regular file, no access for group/others,
    /// owned by the scenario's user, and no `*.tmp` file left beside it.
    pub fn assert_image_file(&self, img: &Path) {
        let md = fs::metadata(img).unwrap_or_else(|e| {
            panic!(
                "image {} missing after checkpoint: {e}\n{}",
                img.display(),
                self.log()
            )
        });
        assert!(
            md.is_file() && md.len() > 0,
            "image {} is not a non-empty file\n{}",
            img.display(),
            self.log()
        );
        assert_eq!(
            md.mode() & 0o077,
            0,
            "image {} has mode {:o}: group/others must have no access\n{}",
            img.display(),
            md.mode() & 0o7777,
            self.log()
        );
        if let Some((uid, _)) = self.user {
            assert_eq!(
                md.uid(),
                uid,
                "image {} must be owned by the requesting user",
                img.display()
            );
        }
        assert_no_tmp_files(img.parent().expect("image dir"));
        self.note(&format!("image {} ok ({} bytes)", img.display(), md.len()));
    }

    /// `[launcher] cr_restart IMG` as the scenario's user, in its own process group.
    pub fn restart(&self, img: &Path) -> Job {
        self.restart_with(img, &[])
    }

    /// `[launcher] cr_restart ARGS IMG` as the scenario's user, in its own process group.
    pub fn restart_with(&self, img: &Path, args: &[&str]) -> Job {
        let mut argv = self.launcher.clone();
        argv.push(os(&self.tools.cr_restart));
        argv.extend(args.iter().map(OsString::from));
        argv.push(os(img));
        let what = format!(
            "cr_restart {}",
            img.file_name().unwrap_or_default().to_string_lossy()
        );
        self.start(&what, self.command(&argv))
    }

    /// The usual cycle on a started (READY) job: checkpoint with --term, see the original die of
    /// SIGTERM, create GO, restart and expect PASS.
    pub fn checkpoint_term_restart_pass(&self, mut job: Job) {
        let img = self.checkpoint(job.pid(), &["--term"]);
        job.expect_signal(SIGTERM, DEATH_TIMEOUT);
        self.go();
        let mut restarted = self.restart(&img);
        restarted.expect_pass(RESTART_TIMEOUT);
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::env::var_os("LIBCR_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.root.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn note(log: &Mutex<String>, started: Instant, line: &str) {
    let mut l = lock(log);
    let _ = writeln!(l, "[{:8.3}s] {line}", started.elapsed().as_secs_f64());
}

/// No `*.tmp` file (cr_checkpoint's temporary image) in `dir`.
pub fn assert_no_tmp_files(dir: &Path) {
    let leftovers: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "temporary files left in {}: {leftovers:?}",
        dir.display()
    );
}

/// True if every directory above `p` is searchable by others and `p` is readable by others.
fn reachable_by_others(p: &Path) -> bool {
    let Ok(md) = fs::metadata(p) else {
        return false;
    };
    if md.mode() & 0o004 == 0 {
        return false;
    }
    p.ancestors().skip(1).all(|d| {
        fs::metadata(d)
            .map(|m| m.mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// The tools, as paths another user can run: the originals if the build dir is reachable by
/// others, else copies (with libcr.so beside them) in `dir`.
fn reachable_tools(dir: &Path) -> Tools {
    let originals = Tools {
        cr_run: cr_run(),
        cr_checkpoint: cr_checkpoint(),
        cr_restart: cr_restart(),
    };
    // The agent and the two preload stubs cr_run finds beside itself (they load the agent from
    // their own directory).
    let so = lib_dir().join("libcr.so");
    let run_stub = lib_dir().join("libcr_run.so");
    let omit_stub = lib_dir().join("libcr_omit.so");
    let all = [
        &originals.cr_run,
        &originals.cr_checkpoint,
        &originals.cr_restart,
        &so,
        &run_stub,
        &omit_stub,
    ];
    if all.iter().all(|p| reachable_by_others(p)) {
        return originals;
    }
    for p in all.into_iter().filter(|p| p.exists()) {
        let dest = dir.join(p.file_name().expect("tool file name"));
        fs::copy(p, &dest).unwrap_or_else(|e| panic!("copy {} for another user: {e}", p.display()));
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod tool copy");
    }
    Tools {
        cr_run: dir.join("cr_run"),
        cr_checkpoint: dir.join("cr_checkpoint"),
        cr_restart: dir.join("cr_restart"),
    }
}

// ---------------------------------------------------------------------------------------------
// ToolResult
// ---------------------------------------------------------------------------------------------

/// A finished tool run.
pub struct ToolResult {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    log: Arc<Mutex<String>>,
}

impl ToolResult {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Status, outputs and the scenario log, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- scenario log ---\n{}",
            self.what,
            self.status,
            self.stdout,
            self.stderr,
            lock(&self.log)
        )
    }

    pub fn assert_success(&self) {
        assert!(self.success(), "{} failed:\n{}", self.what, self.describe());
    }

    /// Exited normally (not killed by a signal) with a non-zero code, and wrote exactly one
    /// non-empty line on stderr. Returns that line.
    pub fn assert_one_line_failure(&self) -> String {
        assert!(
            matches!(self.code(), Some(c) if c != 0),
            "{} should fail with a non-zero exit code:\n{}",
            self.what,
            self.describe()
        );
        one_line(&self.what, &self.stderr, &self.describe())
    }

    /// [`ToolResult::assert_one_line_failure`] with this exact exit code.
    pub fn assert_failure_code(&self, code: i32) -> String {
        let line = self.assert_one_line_failure();
        assert_eq!(
            self.code(),
            Some(code),
            "{} should exit with {code}:\n{}",
            self.what,
            self.describe()
        );
        line
    }
}

fn one_line(what: &str, stderr: &str, describe: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what} should write exactly one non-empty line on stderr:\n{describe}"
    );
    lines[0].to_string()
}

// ---------------------------------------------------------------------------------------------
// Job: a process in its own process group, killed with its group on drop
// ---------------------------------------------------------------------------------------------

/// A started process (the leader of its own process group) with captured stdout/stderr.
pub struct Job {
    what: String,
    child: Child,
    pid: u32,
    status: Option<ExitStatus>,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    open_pipes: Arc<AtomicUsize>,
    log: Arc<Mutex<String>>,
    started: Instant,
}

impl Job {
    fn spawn(what: &str, mut cmd: Command, log: Arc<Mutex<String>>, started: Instant) -> Job {
        let line = command_line(&cmd);
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: `{line}`: {e}\n{}", lock(&log)));
        let pid = child.id();
        note(
            &log,
            started,
            &format!("started {what} (pid {pid}): {line}"),
        );
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let open_pipes = Arc::new(AtomicUsize::new(2));
        let (tx, rx) = mpsc::channel();
        spawn_reader(
            child.stdout.take().expect("stdout piped"),
            stdout.clone(),
            Some(tx),
            open_pipes.clone(),
        );
        spawn_reader(
            child.stderr.take().expect("stderr piped"),
            stderr.clone(),
            None,
            open_pipes.clone(),
        );
        Job {
            what: what.to_string(),
            child,
            pid,
            status: None,
            lines: rx,
            stdout,
            stderr,
            open_pipes,
            log,
            started,
        }
    }

    /// Pid of the started process (for cr_run, setarch and setpriv: the program's pid, as they
    /// exec).
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Everything the process (group) wrote on stdout so far.
    pub fn stdout(&self) -> String {
        lock(&self.stdout).clone()
    }
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Notes the exit in the scenario log, with the last lines of stderr read so far (a
    /// cr_restart's own messages: how a restart ended, for a test that fails later).
    fn note_exit(&self, st: ExitStatus) {
        let err = self.stderr();
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let mut line = format!("{} (pid {}) exited: {st}", self.what, self.pid);
        if !tail.is_empty() {
            let _ = write!(line, "; stderr so far ends: {:?}", tail.join("\n"));
        }
        note(&self.log, self.started, &line);
    }

    /// Status, outputs, the state of the process group and the scenario log.
    pub fn diag(&self) -> String {
        let mut s = format!("{} (pid {}): ", self.what, self.pid);
        match self.status {
            Some(st) => {
                let _ = write!(s, "{st}");
            }
            None => {
                let _ = write!(s, "running");
            }
        }
        let _ = write!(
            s,
            "\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- processes ---\n",
            self.stdout(),
            self.stderr()
        );
        let mut pids = if self.status.is_none() {
            vec![self.pid]
        } else {
            Vec::new()
        };
        pids.extend(descendants(self.pid));
        for p in group_members(self.pid) {
            if !pids.contains(&p) {
                pids.push(p);
            }
        }
        for p in pids {
            let _ = writeln!(s, "{}", proc_summary(p));
        }
        let _ = write!(s, "--- scenario log ---\n{}", lock(&self.log));
        s
    }

    /// Wait for the line `READY` on stdout ([`READY_TIMEOUT`]).
    pub fn wait_ready(&mut self) {
        self.wait_line("READY", READY_TIMEOUT);
    }

    /// Wait for a stdout line equal to `want` (surrounding blanks ignored).
    pub fn wait_line(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l.trim() == want => {
                    note(
                        &self.log,
                        self.started,
                        &format!("{} (pid {}) printed {want}", self.what, self.pid),
                    );
                    return;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out after {timeout:?} waiting for {want:?} from {}",
                        self.diag()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.try_wait_exit(PIPE_CLOSE_TIMEOUT);
                    panic!(
                        "stdout closed before {want:?} was printed by {}",
                        self.diag()
                    )
                }
            }
        }
    }

    /// Wait up to `timeout` for the process to exit (reaps it); `None` if it is still running.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.status = Some(st);
                    self.note_exit(st);
                    return Some(st);
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Wait for the process to exit; panics with diagnostics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout) {
            Some(st) => st,
            None => panic!(
                "{} did not exit within {timeout:?}:\n{}",
                self.what,
                self.diag()
            ),
        }
    }

    /// Wait until nobody holds the write ends of the stdout/stderr pipes any more (all output
    /// read). False after `timeout`.
    pub fn wait_output_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.open_pipes.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
        true
    }

    /// The process has neither exited nor become a zombie.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        if let Ok(Some(st)) = self.child.try_wait() {
            self.status = Some(st);
            self.note_exit(st);
            return false;
        }
        pid_alive(self.pid)
    }

    pub fn assert_running(&mut self, context: &str) {
        assert!(
            self.is_running(),
            "{} should still be running {context}:\n{}",
            self.what,
            self.diag()
        );
    }

    /// Wait for exit (within `timeout`) and all output; assert exit code 0 and a `PASS` line.
    pub fn expect_pass(&mut self, timeout: Duration) {
        let st = self.wait_exit(timeout);
        self.wait_output_closed(PIPE_CLOSE_TIMEOUT);
        let out = self.stdout();
        assert!(
            st.success() && out.lines().any(|l| l.starts_with("PASS")),
            "{} should exit 0 after printing PASS:\n{}",
            self.what,
            self.diag()
        );
        assert!(
            !out.lines().any(|l| l.starts_with("FAIL")),
            "{} printed FAIL:\n{}",
            self.what,
            self.diag()
        );
    }

    /// Wait for the process to die of signal `sig`.
    pub fn expect_signal(&mut self, sig: i32, timeout: Duration) {
        let st = self.wait_exit(timeout);
        assert_eq!(
            st.signal(),
            Some(sig),
            "{} should have been killed by signal {sig}:\n{}",
            self.what,
            self.diag()
        );
    }

    /// The pid of this process's child (for cr_restart: the restored program), waiting up to
    /// `timeout` for it to appear. Panics if the process exits first or has several children.
    ///
    /// When that child is the init of a pid namespace (cr_restart restoring original pids
    /// without privilege), the restored process is the init's child: that one is returned.
    pub fn wait_child(&mut self, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        let mut parent = self.pid;
        loop {
            let kids: Vec<u32> = children_of(parent)
                .into_iter()
                .filter(|&p| pid_alive(p))
                .collect();
            match kids.len() {
                0 => {}
                1 if ns_pid(kids[0]) == 1 => parent = kids[0],
                1 => {
                    note(
                        &self.log,
                        self.started,
                        &format!("{} (pid {}) has child {}", self.what, self.pid, kids[0]),
                    );
                    return kids[0];
                }
                _ => panic!(
                    "{} has several children {kids:?}, expected one:\n{}",
                    self.what,
                    self.diag()
                ),
            }
            if let Some(st) = self.try_wait_exit(Duration::ZERO) {
                panic!(
                    "{} exited ({st}) before its child appeared:\n{}",
                    self.what,
                    self.diag()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} had no child after {timeout:?}:\n{}",
                    self.what,
                    self.diag()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The live members of this job's process group (the leader included while it runs).
    pub fn group_members(&self) -> Vec<u32> {
        group_members(self.pid)
    }

    /// Kill the whole process group (and descendants that left it) with SIGKILL and reap.
    pub fn kill(&mut self) {
        let mut targets: Vec<String> = Vec::new();
        let members = group_members(self.pid);
        if self.status.is_none() || !members.is_empty() {
            // While the leader is unreaped, or any member lives, the pgid cannot have been reused.
            targets.push(format!("-{}", self.pid));
        }
        if self.status.is_none() {
            targets.extend(descendants(self.pid).iter().map(|p| p.to_string()));
        }
        send_kill(SIGKILL, &targets);
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    r: R,
    buf: Arc<Mutex<String>>,
    tx: Option<Sender<String>>,
    open: Arc<AtomicUsize>,
) {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&line).into_owned();
                    lock(&buf).push_str(&s);
                    if let Some(tx) = &tx {
                        let _ = tx.send(s.trim_end_matches(['\n', '\r']).to_string());
                    }
                }
            }
        }
        open.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Runs cr_restart on `img`, which must be refused: it exits with a non-zero code (not by a
/// signal) and exactly one non-empty line on stderr, nothing holds its output any more, and the
/// program never ran (no READY or PASS). Returns the finished job, its exit code and that line,
/// for the caller's further checks (processes left, the image unchanged).
pub fn restart_refused(sc: &Scenario, img: &Path, what: &str) -> (Job, i32, String) {
    let mut job = sc.restart(img);
    let st = job.wait_exit(TOOL_TIMEOUT);
    let closed = job.wait_output_closed(Duration::from_secs(5));
    let ctx = format!("cr_restart on {what} ({})", img.display());
    let code = match st.code() {
        Some(c) if c != 0 => c,
        _ => panic!(
            "{ctx} should fail with a non-zero exit code:\n{}",
            job.diag()
        ),
    };
    let lines: Vec<String> = job
        .stderr()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{ctx} should write exactly one non-empty line on stderr:\n{}",
        job.diag()
    );
    assert!(
        closed,
        "{ctx}: some process still holds cr_restart's stdout/stderr:\n{}",
        job.diag()
    );
    let out = job.stdout();
    assert!(
        !out.contains("PASS") && !out.contains("READY"),
        "{ctx}: the program ran:\n{}",
        job.diag()
    );
    let line = lines[0].clone();
    (job, code, line)
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// Best effort: wait until the restored process `pid` no longer maps cr_restart's executable
/// (the restore trampoline unmaps all of cr_restart when it switches to the restored address
/// space). Returns false (after printing a note) if that did not happen within `timeout`.
pub fn wait_address_space_switched(sc: &Scenario, pid: u32, timeout: Duration) -> bool {
    let exe =
        fs::canonicalize(&sc.tools().cr_restart).unwrap_or_else(|_| sc.tools().cr_restart.clone());
    let exe = exe.to_string_lossy().into_owned();
    let deadline = Instant::now() + timeout;
    loop {
        match fs::read_to_string(format!("/proc/{pid}/maps")) {
            Ok(maps) if !maps.is_empty() && !maps.lines().any(|l| l.ends_with(&exe)) => {
                sc.note(&format!("restored pid {pid} no longer maps {exe}"));
                return true;
            }
            Ok(_) => {}
            Err(_) if !pid_alive(pid) => return false,
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            let msg =
                format!("note: restored pid {pid} still maps {exe} after {timeout:?}; going on");
            eprintln!("{msg}");
            sc.note(&msg);
            return false;
        }
        thread::sleep(POLL);
    }
}

/// The pid of `pid` as its own pid namespace sees it (the last `NSpid` entry; `pid` itself when
/// it runs in ours).
pub fn ns_pid(pid: u32) -> u32 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().and_then(|p| p.parse().ok()))
        })
        .unwrap_or(pid)
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// CLOCK_MONOTONIC now, in ns (the clock the C test programs stamp their ticks and gaps with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A pid that no process has: a reaped child's, else the highest possible pid.
pub fn unused_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("reap true");
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return pid;
    }
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let pid = max - 1;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} unexpectedly exists"
    );
    pid
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |rd| rd.count())
}

/// Open descriptors of `pid` once its agent's control socket is bound: the agent binds it only
/// when a requester first wakes it (docs/ARCHITECTURE.md, "Start-up"), so this wakes it and
/// waits for the one descriptor more.
pub fn woken_fd_count(pid: u32) -> usize {
    let before = fd_count(pid);
    cr::protocol::wake(pid as i32).expect("wake the agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fd_count(pid) == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        fd_count(pid),
        before + 1,
        "the woken agent's control socket"
    );
    before + 1
}
