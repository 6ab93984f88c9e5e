//! Process trees across checkpoint/restart, through the real tools: `cr_checkpoint` of a process
//! and its descendants (the default tree scope, `-g` and `-s`) into one file or, with `-d`, one
//! file per process; `cr_restart` of the whole tree with its original pids (the default), fresh
//! pids, or restored process groups and sessions.
//!
//! The targets are `c-tests/tree.c` (a tree of 2 to 6 processes linked by pipes with data in
//! flight, a shared anonymous region, inherited and dup()ed files, optionally a named FIFO;
//! every process verifies itself after GO), `c-tests/tree_loop.sh` (a bash loop running `seq`,
//! `cksum` and `sleep`) and `c-tests/tree_pipeline.sh` (`producer | awk | consumer`).
//!
//! Every process a test sees (the original tree, what cr_restart restored, anything that still
//! has the scenario's `CR_TEST_GO` in its environment) is SIGKILLed when the test ends.
//!
//! Run with e.g. `cargo test --release --test trees -- --nocapture`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How long a restored program may run before it is checkpointed again or told to finish.
const SETTLE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// The start time of a process (field 22 of `/proc/PID/stat`), to recognize it later.
fn start_time(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The session of a process (field 6 of `/proc/PID/stat`).
fn session_of(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Live processes whose environment holds `CR_TEST_GO=<go>` (a scenario's programs, its tools
/// and what they started; restored processes may not show their environment).
fn processes_with_go(go: &Path) -> Vec<u32> {
    let want = format!("CR_TEST_GO={}", go.display()).into_bytes();
    let me = std::process::id();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        if let Ok(env) = fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|&b| b == 0).any(|v| v == want.as_slice()) {
                out.push(pid);
            }
        }
    }
    out
}

fn scenario_processes(sc: &Scenario) -> Vec<u32> {
    processes_with_go(&sc.go_file())
}

/// Everything a test started or restored: SIGKILLed when the test ends (a pid is only killed if
/// it is still the same process), and every process of the scenario.
struct Reaper {
    go: PathBuf,
    pids: Mutex<Vec<(u32, u64)>>,
}

impl Reaper {
    fn new(sc: &Scenario) -> Reaper {
        Reaper {
            go: sc.go_file(),
            pids: Mutex::new(Vec::new()),
        }
    }

    fn watch(&self, pids: &[u32]) {
        let mut l = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        for &p in pids {
            if let Some(t) = start_time(p) {
                if !l.contains(&(p, t)) {
                    l.push((p, t));
                }
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let l = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for _ in 0..3 {
            let mut left: Vec<u32> = l
                .iter()
                .filter(|&&(p, t)| start_time(p) == Some(t) && pid_alive(p))
                .map(|&(p, _)| p)
                .collect();
            left.extend(processes_with_go(&self.go));
            if left.is_empty() {
                return;
            }
            for p in left {
                signal_pid(p, SIGKILL);
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "note: processes of the scenario with {} may be left",
            self.go.display()
        );
    }
}

/// Every pid in use: processes (zombies too) and the ids of process groups and sessions (a pid
/// can only be had again once no process has it as its group or session either).
fn pids_in_use() -> BTreeSet<u32> {
    let mut used = BTreeSet::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        used.insert(pid);
        if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            let rest = s.rfind(')').map(|i| &s[i + 1..]).unwrap_or("");
            // state ppid pgrp session
            used.extend(
                rest.split_whitespace()
                    .skip(2)
                    .take(2)
                    .filter_map(|v| v.parse::<u32>().ok()),
            );
        }
    }
    used
}

/// Wait until none of `pids` is in use any more: no process (not even a zombie), thread, process
/// group or session has it.
fn wait_gone(sc: &Scenario, pids: &[u32], what: &str) {
    let deadline = Instant::now() + DEATH_TIMEOUT;
    loop {
        let used = pids_in_use();
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| used.contains(p) || Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let procs: Vec<String> = left.iter().map(|&p| proc_summary(p)).collect();
            panic!(
                "{what}: pids still in use (as a process, group or session) after \
                 {DEATH_TIMEOUT:?}: {left:?}\n{}\n--- scenario log ---\n{}",
                procs.join("\n"),
                sc.log()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The pids `cr_info` lists for a tree image (`processes N (P1 P2 ...)`); empty if none.
fn image_pids(img: &Path) -> Vec<u32> {
    let out = Command::new(env!("CARGO_BIN_EXE_cr_info"))
        .arg(img)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.trim_start().strip_prefix("processes"))
        .filter_map(|l| Some(&l[l.find('(')? + 1..l.rfind(')')?]))
        .flat_map(|l| l.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect()
}

/// After a checkpoint with --term: wait until every process in the image is gone, as root (the
/// pids are then restored in our namespace; the image also names processes that appeared after
/// a test looked at the tree). Without root they are restored in a new namespace: no wait.
fn wait_image_gone(sc: &Scenario, img: &Image) {
    if !is_root() {
        return;
    }
    let files = match img {
        Image::File(f) => vec![f.clone()],
        Image::Dir(d) => fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let pids: Vec<u32> = files.iter().flat_map(|f| image_pids(f)).collect();
    sc.note(&format!("processes in the image: {pids:?}"));
    wait_gone(sc, &pids, "the processes of the image after --term");
}

/// `pid` and its descendants.
fn tree_of(pid: u32) -> Vec<u32> {
    let mut v = vec![pid];
    v.extend(descendants(pid));
    v
}

/// The processes cr_restart (`job`) restored whose name is `comm`, root first: waits until the
/// root (cr_restart's child, or the child of the init of a new pid namespace) is there and, with
/// `want`, until there are that many.
fn restored(job: &mut Job, reaper: &Reaper, comm: &str, want: Option<usize>) -> Vec<u32> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let all = descendants(job.pid());
        reaper.watch(&all);
        let named: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&p| matches!(proc_stat(p), Some(st) if st.comm == comm && st.state != 'Z'))
            .collect();
        let is_root = |p: u32| {
            let Some(parent) = proc_stat(p).map(|st| st.ppid) else {
                return false;
            };
            parent == job.pid()
                || (ns_pid(parent) == 1 && proc_stat(parent).map(|st| st.ppid) == Some(job.pid()))
        };
        if let Some(root) = named.iter().copied().find(|&p| is_root(p)) {
            if want.is_none_or(|w| named.len() == w) {
                let mut v = vec![root];
                v.extend(named.iter().copied().filter(|&p| p != root));
                return v;
            }
        }
        if let Some(st) = job.try_wait_exit(Duration::ZERO) {
            panic!(
                "cr_restart exited ({st}) before the restored {comm} processes appeared:\n{}",
                job.diag()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "no restored tree of {} {comm} processes under cr_restart after {READY_TIMEOUT:?} \
                 (found {named:?}):\n{}",
                want.map_or("some".to_string(), |w| w.to_string()),
                job.diag()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// With `restore_pid` the restored processes have the original pids (in our pid namespace as
/// root, in a new one otherwise); without it, fresh pids in our namespace.
fn assert_pids(job: &Job, restored: &[u32], original: &[u32], restore_pid: bool) {
    let orig: BTreeSet<u32> = original.iter().copied().collect();
    let seen: BTreeSet<u32> = restored.iter().map(|&p| ns_pid(p)).collect();
    if restore_pid {
        assert_eq!(
            seen,
            orig,
            "the restored processes (pids {restored:?}) must have their original pids:\n{}",
            job.diag()
        );
        assert_eq!(
            ns_pid(restored[0]),
            original[0],
            "the restored root must have the original root's pid:\n{}",
            job.diag()
        );
    } else {
        assert!(
            restored.iter().all(|&p| ns_pid(p) == p),
            "--no-restore-pid must not use a pid namespace:\n{}",
            job.diag()
        );
        assert!(
            seen.is_disjoint(&orig),
            "--no-restore-pid: restored pids {seen:?} must be fresh (original {orig:?}):\n{}",
            job.diag()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Starting, checkpointing, restarting
// ---------------------------------------------------------------------------------------------

/// The scenario, run as `user` when given (needs root: `None` is returned, with a note, when
/// not root).
fn scenario(name: &str, user: Option<(u32, u32)>) -> Option<Scenario> {
    match user {
        None => Some(Scenario::new(name)),
        Some(_) if !is_root() => {
            println!("note: not root: the other tests already run unprivileged");
            None
        }
        Some(u) => Some(Scenario::as_user(name, u)),
    }
}

/// How `c-tests/tree.c` runs: its arguments and environment.
#[derive(Clone, Debug)]
struct Tree {
    args: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
}

impl Tree {
    /// `tree ARGS` with `CR_TEST_SAME_PIDS=1`.
    fn new(args: &[&'static str]) -> Tree {
        Tree {
            args: args.to_vec(),
            env: vec![("CR_TEST_SAME_PIDS", "1")],
        }
    }
    fn env(mut self, key: &'static str, value: &'static str) -> Tree {
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value));
        self
    }
    fn fresh_pids(mut self) -> Tree {
        self.env.retain(|(k, _)| *k != "CR_TEST_SAME_PIDS");
        self
    }
    fn has(&self, key: &str) -> bool {
        self.env.iter().any(|&(k, v)| k == key && v == "1")
    }
    /// Processes it runs as: the root, NCHILD children, a grandchild with `deep`, and the
    /// launcher with `CR_TEST_SETSID`.
    fn processes(&self) -> usize {
        let n: usize = self.args[0].parse().expect("NCHILD");
        1 + n + usize::from(self.args.contains(&"deep")) + usize::from(self.has("CR_TEST_SETSID"))
    }
}

/// `cr_run -- tree ARGS`; READY seen. Returns the job and every process of the tree, the root
/// first.
fn start_tree(sc: &Scenario, reaper: &Reaper, tree: &Tree) -> (Job, Vec<u32>) {
    let mut prog = sc.program("tree");
    prog.argv.extend(tree.args.iter().map(OsString::from));
    prog.env.extend(
        tree.env
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string())),
    );
    let mut job = sc.start("tree", sc.under_cr_run(&prog));
    reaper.watch(&[job.pid()]);
    job.wait_ready();
    let pids: Vec<u32> = tree_of(job.pid())
        .into_iter()
        .filter(|&p| matches!(proc_stat(p), Some(st) if st.comm == "tree"))
        .collect();
    reaper.watch(&pids);
    assert_eq!(
        pids.len(),
        tree.processes(),
        "tree {:?} should run as {} processes, found {pids:?}:\n{}",
        tree.args,
        tree.processes(),
        job.diag()
    );
    sc.note(&format!("tree {:?}: pids {pids:?}", tree.args));
    (job, pids)
}

/// The path of a script in `c-tests/`, copied into the scenario when it runs as another user.
fn script(sc: &Scenario, name: &str) -> PathBuf {
    let src = c_tests_dir().join(name);
    assert!(src.is_file(), "missing test script {}", src.display());
    if sc.user().is_none() {
        return src;
    }
    let dest = sc.root().join("bin").join(name);
    fs::copy(&src, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    dest
}

/// `cr_run -- bash SCRIPT`; READY seen.
fn start_script(sc: &Scenario, reaper: &Reaper, name: &str) -> Job {
    let bash = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "bash"
    };
    let argv: Vec<OsString> = vec![
        sc.tools().cr_run.clone().into(),
        "--".into(),
        bash.into(),
        script(sc, name).into(),
    ];
    let mut job = sc.start(name, sc.command(&argv));
    reaper.watch(&[job.pid()]);
    job.wait_ready();
    job
}

/// A checkpoint: one file, or a directory with one file per process.
enum Image {
    File(PathBuf),
    Dir(PathBuf),
}

impl Image {
    /// The image arguments of cr_restart.
    fn args(&self) -> Vec<OsString> {
        match self {
            Image::File(f) => vec![f.into()],
            Image::Dir(d) => vec!["-d".into(), d.into()],
        }
    }
}

/// `cr_checkpoint FLAGS -d <img>/tree.N PID`; asserts success and well-formed files.
fn checkpoint_dir(sc: &Scenario, pid: u32, flags: &[&str]) -> PathBuf {
    let dir = sc.next_image_path().with_extension("d");
    fs::create_dir(&dir).expect("create image dir");
    if let Some((uid, gid)) = sc.user() {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown image dir");
    }
    let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
    args.extend(["-d".into(), dir.clone().into(), pid.to_string().into()]);
    sc.cr_checkpoint(&args).assert_success();
    for e in fs::read_dir(&dir).expect("read image dir").flatten() {
        sc.assert_image_file(&e.path());
    }
    dir
}

/// Checkpoint the tree of `pid` with FLAGS into a file or, with `to_dir`, a directory.
fn checkpoint_tree(sc: &Scenario, pid: u32, flags: &[&str], to_dir: bool) -> Image {
    if to_dir {
        Image::Dir(checkpoint_dir(sc, pid, flags))
    } else {
        Image::File(sc.checkpoint(pid, flags))
    }
}

/// The file names in `dir`, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `cr_restart OPTS IMAGE` in its own process group.
/// Restarts the tree image `img` (`n` processes) and waits for it to PASS and end.
fn restart_tree_to_pass(sc: &Scenario, reaper: &Reaper, img: &Image, n: usize) {
    let mut rs = start_restart(sc, reaper, &[], img);
    let back = restored(&mut rs, reaper, "tree", Some(n));
    rs.expect_pass(RESTART_TIMEOUT);
    wait_gone(sc, &back, "the restored tree after PASS");
}

fn start_restart(sc: &Scenario, reaper: &Reaper, opts: &[&str], img: &Image) -> Job {
    let mut argv: Vec<OsString> = vec![sc.tools().cr_restart.clone().into()];
    argv.extend(opts.iter().map(OsString::from));
    argv.extend(img.args());
    let job = sc.start("cr_restart", sc.command(&argv));
    reaper.watch(&[job.pid()]);
    job
}

// ---------------------------------------------------------------------------------------------
// tree.c: checkpoint with --term, restart, PASS
// ---------------------------------------------------------------------------------------------

/// Start the tree, checkpoint it with --term (to a file or a directory), see every process die,
/// restart with `opts`, check the restored pids, GO, PASS, and nothing left running.
fn cycle(name: &str, user: Option<(u32, u32)>, tree: Tree, to_dir: bool, opts: &[&str]) {
    let Some(sc) = scenario(name, user) else {
        return;
    };
    let reaper = Reaper::new(&sc);
    let (mut job, pids) = start_tree(&sc, &reaper, &tree);
    let img = checkpoint_tree(&sc, job.pid(), &["--term"], to_dir);
    if let Image::Dir(dir) = &img {
        let mut want: Vec<String> = pids.iter().map(|p| format!("context.{p}")).collect();
        want.sort();
        assert_eq!(
            file_names(dir),
            want,
            "-d must write one context.PID per process of the tree\n{}",
            sc.log()
        );
    }
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "the checkpointed tree after --term");
    wait_image_gone(&sc, &img);

    let mut rs = start_restart(&sc, &reaper, opts, &img);
    let back = restored(&mut rs, &reaper, "tree", Some(pids.len()));
    let exact = !opts.contains(&"--no-restore-pid");
    assert_pids(&rs, &back, &pids, exact);
    if exact {
        // With original pids (root, or cr_restart's private namespace) /proc/PID/exe is the
        // program again.
        for &p in &back {
            let exe = fs::read_link(format!("/proc/{p}/exe")).unwrap_or_default();
            assert!(
                exe.file_name() == Some(OsStr::new("tree")),
                "/proc/{p}/exe of a restored process is {}, expected the program\n{}",
                exe.display(),
                rs.diag()
            );
        }
    }
    thread::sleep(SETTLE);
    sc.go();
    rs.expect_pass(RESTART_TIMEOUT);
    wait_gone(&sc, &back, "the restored tree after PASS");
}

const TWO: &[&str] = &["1"];
/// Root, child, grandchild.
const THREE: &[&str] = &["1", "deep"];
/// Root, three children, a grandchild.
const FIVE: &[&str] = &["3", "deep"];

/// Threads of `pid` named `cr-control` (the agent's control thread).
fn control_threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "cr-control")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Issue 11 (idle cost): the control thread starts on the first request. Before any checkpoint
/// the root and its fork children run no thread of the agent's; a tree checkpoint works, `-v`
/// says how each control thread was started, and every process has one afterwards (and a
/// second checkpoint uses it). With `LIBCR_CONTROL_EAGER=1` it starts at once, as before.
#[test]
fn control_thread_starts_on_first_request() {
    for eager in [false, true] {
        let sc = Scenario::new(if eager {
            "control-eager"
        } else {
            "control-lazy"
        });
        let reaper = Reaper::new(&sc);
        let mut tree = Tree::new(THREE);
        if eager {
            tree = tree.env("LIBCR_CONTROL_EAGER", "1");
        }
        let (_job, pids) = start_tree(&sc, &reaper, &tree);
        let want = usize::from(eager);
        let deadline = Instant::now() + TOOL_TIMEOUT;
        while eager && pids.iter().any(|&p| control_threads(p) != 1) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        for &p in &pids {
            assert_eq!(
                control_threads(p),
                want,
                "process {p}, eager {eager}\n{}",
                sc.log()
            );
        }
        for run in 0..2 {
            let img = sc.next_image_path();
            let args: Vec<OsString> = vec![
                "-v".into(),
                "-f".into(),
                img.clone().into(),
                pids[0].to_string().into(),
            ];
            let res = sc.cr_checkpoint(&args);
            res.assert_success();
            sc.assert_image_file(&img);
            let how = if eager {
                "control=thread"
            } else {
                "control=lazy"
            };
            assert_eq!(
                res.stderr.matches(how).count(),
                pids.len(),
                "run {run}, eager {eager}: every process should say {how}:\n{}",
                res.stderr
            );
            for &p in &pids {
                assert_eq!(
                    control_threads(p),
                    1,
                    "process {p} after run {run}, eager {eager}"
                );
            }
        }
    }
}

#[test]
fn two_processes_file() {
    cycle("two-file", None, Tree::new(TWO), false, &[]);
}

#[test]
fn two_processes_dir() {
    cycle("two-dir", None, Tree::new(TWO), true, &[]);
}

#[test]
fn three_processes_file() {
    cycle("three-file", None, Tree::new(THREE), false, &[]);
}

#[test]
fn three_processes_dir() {
    cycle("three-dir", None, Tree::new(THREE), true, &[]);
}

#[test]
fn five_processes_file() {
    cycle("five-file", None, Tree::new(FIVE), false, &[]);
}

#[test]
fn five_processes_dir() {
    cycle("five-dir", None, Tree::new(FIVE), true, &[]);
}

/// As nobody (from root): the original pids are restored in a new user+pid namespace.
#[test]
fn two_processes_file_unprivileged() {
    cycle("two-file-nobody", Some(NOBODY), Tree::new(TWO), false, &[]);
}

#[test]
fn two_processes_dir_unprivileged() {
    cycle("two-dir-nobody", Some(NOBODY), Tree::new(TWO), true, &[]);
}

#[test]
fn three_processes_file_unprivileged() {
    cycle(
        "three-file-nobody",
        Some(NOBODY),
        Tree::new(THREE),
        false,
        &[],
    );
}

#[test]
fn three_processes_dir_unprivileged() {
    cycle(
        "three-dir-nobody",
        Some(NOBODY),
        Tree::new(THREE),
        true,
        &[],
    );
}

#[test]
fn five_processes_file_unprivileged() {
    cycle(
        "five-file-nobody",
        Some(NOBODY),
        Tree::new(FIVE),
        false,
        &[],
    );
}

#[test]
fn five_processes_dir_unprivileged() {
    cycle("five-dir-nobody", Some(NOBODY), Tree::new(FIVE), true, &[]);
}

/// --no-restore-pid: fresh pids, no namespace; parents still wait for their children (by their
/// new pids) and every getppid() is the parent's new pid.
#[test]
fn fresh_pids() {
    let tree = Tree::new(&["2", "deep"]).fresh_pids();
    cycle("fresh-pids", None, tree, false, &["--no-restore-pid"]);
}

/// The root makes its own session (behind a launcher process), child 1 its own process group,
/// child 2 joins it: with --restore-pgid --restore-sid every getpgid(0)/getsid(0) is unchanged.
fn pgid_sid(name: &str, user: Option<(u32, u32)>) {
    let tree = Tree::new(&["2"])
        .env("CR_TEST_SETSID", "1")
        .env("CR_TEST_SETPGID", "1")
        .env("CR_TEST_SAME_PGID", "1")
        .env("CR_TEST_SAME_SID", "1");
    cycle(
        name,
        user,
        tree,
        false,
        &["--restore-pgid", "--restore-sid"],
    );
}

#[test]
fn pgid_and_sid_restored() {
    pgid_sid("pgid-sid", None);
}

/// The same tree with fresh pids (BLCR allows --restore-pgid/--restore-sid with
/// --no-restore-pid): the launcher's group, the root's session and child 1's group are made
/// again at their saved ids by placeholder leaders (root only: the ids are taken in our pid
/// namespace), and every getpgid(0)/getsid(0) is unchanged. The launcher's waitpid(-1) and each
/// parent's wait for its children see no placeholder.
#[test]
fn pgid_and_sid_restored_with_fresh_pids() {
    if !is_root() {
        println!("note: not root: group and session ids are only taken over as root");
        return;
    }
    let sc = Scenario::new("pgid-sid-fresh");
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(&["2"])
        .fresh_pids()
        .env("CR_TEST_SETSID", "1")
        .env("CR_TEST_SETPGID", "1")
        .env("CR_TEST_SAME_PGID", "1")
        .env("CR_TEST_SAME_SID", "1");
    let (mut job, pids) = start_tree(&sc, &reaper, &tree);
    let ids_of = |set: &[u32]| {
        let mut v: Vec<(u32, u32)> = set.iter().map(|&p| (pgrp_of(p), sid_of(p))).collect();
        v.sort_unstable();
        v
    };
    let before = ids_of(&pids);
    let img = checkpoint_tree(&sc, job.pid(), &["--term"], false);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "the checkpointed tree after --term");
    wait_image_gone(&sc, &img);
    let opts = ["--no-restore-pid", "--restore-pgid", "--restore-sid"];
    let mut rs = start_restart(&sc, &reaper, &opts, &img);
    let back = restored(&mut rs, &reaper, "tree", Some(pids.len()));
    assert_pids(&rs, &back, &pids, false);
    assert_eq!(
        ids_of(&back),
        before,
        "the restored processes must be in their saved groups and sessions:\n{}",
        rs.diag()
    );
    let all = descendants(rs.pid());
    assert_eq!(
        all.len(),
        pids.len(),
        "only the restored tree may be left under cr_restart (no placeholder):\n{}",
        rs.diag()
    );
    thread::sleep(SETTLE);
    sc.go();
    rs.expect_pass(RESTART_TIMEOUT);
    wait_gone(&sc, &back, "the restored tree after PASS");
}

/// The same as nobody: restoring group and session ids runs the job in cr_restart's private pid
/// namespace, also with --no-restore-pid (fresh pids there); the groups and sessions are made
/// again there at their saved ids, and tree.c finds every getpgid(0)/getsid(0) unchanged.
#[test]
fn pgid_and_sid_restored_with_fresh_pids_unprivileged() {
    let Some(sc) = scenario("pgid-sid-fresh-nobody", Some(NOBODY)) else {
        return;
    };
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(&["2"])
        .fresh_pids()
        .env("CR_TEST_SETSID", "1")
        .env("CR_TEST_SETPGID", "1")
        .env("CR_TEST_SAME_PGID", "1")
        .env("CR_TEST_SAME_SID", "1");
    let (mut job, pids) = start_tree(&sc, &reaper, &tree);
    let img = checkpoint_tree(&sc, job.pid(), &["--term"], false);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "the checkpointed tree after --term");
    wait_image_gone(&sc, &img);
    let opts = ["--no-restore-pid", "--restore-pgid", "--restore-sid"];
    let mut rs = start_restart(&sc, &reaper, &opts, &img);
    let back = restored(&mut rs, &reaper, "tree", Some(pids.len()));
    assert!(
        back.iter().all(|&p| ns_pid(p) != p),
        "the restored tree should run in a private pid namespace:\n{}",
        rs.diag()
    );
    thread::sleep(SETTLE);
    sc.go();
    rs.expect_pass(RESTART_TIMEOUT);
    wait_gone(&sc, &back, "the restored tree after PASS");
}

/// Field `n` (1-based, after the command name: 1 is the state) of /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> u32 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rfind(')').map_or("", |i| &s[i + 1..]);
    rest.split_whitespace()
        .nth(n - 1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pgrp_of(pid: u32) -> u32 {
    stat_field(pid, 3)
}

fn sid_of(pid: u32) -> u32 {
    stat_field(pid, 4)
}

/// The tree still running: with fresh pids, restoring its group or session ids is refused with
/// EBUSY (16) before anything runs, naming the id and what holds it; nothing is left behind.
#[test]
fn pgid_and_sid_in_use() {
    if !is_root() {
        println!("note: not root: group and session ids are only taken over as root");
        return;
    }
    let sc = Scenario::new("pgid-sid-in-use");
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(&["2"])
        .fresh_pids()
        .env("CR_TEST_SETSID", "1")
        .env("CR_TEST_SETPGID", "1");
    let (mut job, pids) = start_tree(&sc, &reaper, &tree);
    let img = Image::File(sc.checkpoint(job.pid(), &[]));
    // pids[0] is the launcher (its own group), the root (a session leader) comes next.
    let launcher = job.pid();
    let root = *pids
        .iter()
        .find(|&&p| proc_stat(p).is_some_and(|st| st.ppid == launcher))
        .expect("the root of the tree");
    for (opt, want) in [
        (
            "--restore-pgid",
            format!("process group id {launcher} is in use by process {launcher} (tree"),
        ),
        (
            "--restore-sid",
            format!("session id {root} is in use by process {root} (tree"),
        ),
    ] {
        let line = refused_restart_with(&sc, &reaper, &["--no-restore-pid", opt], &img, &pids);
        assert!(
            line.contains(&want),
            "{opt}: the error must say {want:?}: {line}"
        );
    }
    job.assert_running("after the refused restarts");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn pgid_and_sid_restored_unprivileged() {
    pgid_sid("pgid-sid-nobody", Some(NOBODY));
}

/// A named FIFO between the root (write end) and child 1 (read end), 30000 bytes buffered.
#[test]
fn named_fifo() {
    cycle("fifo", None, Tree::new(&["2", "fifo"]), false, &[]);
}

/// The same with the FIFO unlinked before the checkpoint: it must come back without a name.
#[test]
fn named_fifo_unlinked() {
    cycle(
        "fifo-unlinked",
        None,
        Tree::new(&["2", "fifo-unlinked"]),
        false,
        &[],
    );
}

/// A named FIFO whose read end is O_NONBLOCK: the flag comes back with the bytes.
#[test]
fn named_fifo_nonblocking() {
    cycle(
        "fifo-nonblock",
        None,
        Tree::new(&["2", "fifo-nonblock"]),
        false,
        &[],
    );
}

/// A named FIFO removed after the checkpoint (before the restart): cr_restart makes it again at
/// its path, and the restored descriptors lead to it (tree.c checks the inode).
#[test]
fn named_fifo_removed_before_restart() {
    let sc = Scenario::new("fifo-removed");
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(&["2", "fifo"]);
    let (mut job, pids) = start_tree(&sc, &reaper, &tree);
    let img = checkpoint_tree(&sc, job.pid(), &["--term"], false);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "the checkpointed tree after --term");
    let fifo = sc.work_dir().join("tree.fifo");
    std::fs::remove_file(&fifo)
        .unwrap_or_else(|e| panic!("remove {}: {e}\n{}", fifo.display(), sc.log()));
    let mut rs = start_restart(&sc, &reaper, &[], &img);
    let back = restored(&mut rs, &reaper, "tree", Some(pids.len()));
    assert_pids(&rs, &back, &pids, true);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata(&fifo).is_ok_and(|m| m.file_type().is_fifo()),
        "cr_restart must re-create the FIFO {}\n{}",
        fifo.display(),
        sc.log()
    );
    thread::sleep(SETTLE);
    sc.go();
    rs.expect_pass(RESTART_TIMEOUT);
    wait_gone(&sc, &back, "the restored tree after PASS");
}

/// File mappings shared by the tree (MAP_SHARED at an offset, a read-only view, an unlinked
/// file) stay shared after restart; private ones (a file with a copy-on-write page, anonymous
/// memory) stay private; every byte is checked.
#[test]
fn shared_and_private_mappings() {
    cycle(
        "mmaps",
        None,
        Tree::new(&["2", "deep", "mmaps"]),
        false,
        &[],
    );
}

#[test]
fn shared_and_private_mappings_unprivileged() {
    cycle(
        "mmaps-nobody",
        Some(NOBODY),
        Tree::new(&["2", "deep", "mmaps"]),
        true,
        &[],
    );
}

/// Pipes of 256 KiB (F_SETPIPE_SZ) holding 100 KiB, read ends O_NONBLOCK.
#[test]
fn big_nonblocking_pipes() {
    cycle(
        "bigpipe",
        None,
        Tree::new(&["2", "deep", "bigpipe"]),
        false,
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// Other scopes
// ---------------------------------------------------------------------------------------------

/// `cr_checkpoint -g PGID`: the root (the group leader) and its child.
#[test]
fn process_group_scope() {
    let sc = Scenario::new("pgid-scope");
    let reaper = Reaper::new(&sc);
    let (mut job, pids) = start_tree(&sc, &reaper, &Tree::new(TWO));
    for &p in &pids {
        assert_eq!(
            proc_stat(p).map(|st| st.pgrp),
            Some(job.pid()),
            "pid {p} should be in the root's process group"
        );
    }
    let img = sc.next_image_path();
    let pgid = job.pid().to_string();
    let args: Vec<&OsStr> = vec![
        "--term".as_ref(),
        "-g".as_ref(),
        "-f".as_ref(),
        img.as_os_str(),
        pgid.as_ref(),
    ];
    sc.cr_checkpoint(&args).assert_success();
    sc.assert_image_file(&img);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "the checkpointed group after --term");
    let img = Image::File(img);
    wait_image_gone(&sc, &img);
    let mut rs = start_restart(&sc, &reaper, &[], &img);
    let back = restored(&mut rs, &reaper, "tree", Some(pids.len()));
    assert_pids(&rs, &back, &pids, true);
    sc.go();
    rs.expect_pass(RESTART_TIMEOUT);
}

/// `cr_checkpoint -s SID`: the root made its own session (behind a launcher, which is not in
/// it); the session (root and two children) is checkpointed and restarted without the launcher.
#[test]
fn session_scope() {
    let sc = Scenario::new("sid-scope");
    let reaper = Reaper::new(&sc);
    // The launcher is not restored: the root's getppid() changes, so the pids are checked here.
    let tree = Tree::new(&["2"]).fresh_pids().env("CR_TEST_SETSID", "1");
    let (mut launcher, pids) = start_tree(&sc, &reaper, &tree);
    let root = pids[1];
    assert_eq!(
        session_of(root),
        Some(root),
        "the tree's root should lead its session"
    );
    let members: Vec<u32> = pids[1..].to_vec();
    let img = sc.next_image_path();
    let sid = root.to_string();
    let args: Vec<&OsStr> = vec![
        "--term".as_ref(),
        "-s".as_ref(),
        "-f".as_ref(),
        img.as_os_str(),
        sid.as_ref(),
    ];
    sc.cr_checkpoint(&args).assert_success();
    sc.assert_image_file(&img);
    // The launcher passes its child's death by SIGTERM on.
    launcher.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "the checkpointed session after --term");
    let img = Image::File(img);
    wait_image_gone(&sc, &img);
    let mut rs = start_restart(&sc, &reaper, &[], &img);
    let back = restored(&mut rs, &reaper, "tree", Some(members.len()));
    assert_pids(&rs, &back, &members, true);
    sc.go();
    rs.expect_pass(RESTART_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// Images written at once
// ---------------------------------------------------------------------------------------------

/// `bigmem 24 4`: four processes, each with 24 MiB of a pattern of its own that it keeps
/// changing until GO. A `--compress` checkpoint writes their images one after the other (`-v`
/// says why), and so does one with `CR_TREE_WRITE=turn`; the `--term` one (the default) writes
/// them at once, each at its place in the tree file (`-v`
/// says so, and each agent's report says `placed`); cr_restart brings all four back from it,
/// and after GO every process compares its whole buffer with what it computes it should hold
/// (the parent PASSes only when its own and its three children's match).
#[test]
fn images_written_at_once_restore_every_process_memory() {
    let sc = Scenario::new("tree-at-once");
    let reaper = Reaper::new(&sc);
    let mut prog = sc.program("bigmem");
    prog.argv.extend(["24".into(), "4".into()]);
    let mut job = sc.start("bigmem", sc.under_cr_run(&prog));
    reaper.watch(&[job.pid()]);
    job.wait_ready();
    let pids = tree_of(job.pid());
    reaper.watch(&pids);
    assert_eq!(
        pids.len(),
        4,
        "bigmem 24 4 should run as 4 processes: {pids:?}"
    );

    // (At once by default; `CR_TREE_WRITE=turn` asks for the old order: cut.rs `placement`.)
    let ckpt = |flags: &[&str], img: &std::path::Path, tree_write: Option<&str>| {
        let mut argv: Vec<std::ffi::OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
        argv.extend(flags.iter().map(std::ffi::OsString::from));
        argv.extend(["-f".into(), img.into(), job.pid().to_string().into()]);
        let mut cmd = sc.command(&argv);
        cmd.env_remove("CR_TREE_WRITE");
        if let Some(v) = tree_write {
            cmd.env("CR_TREE_WRITE", v);
        }
        sc.run_tool("cr_checkpoint", cmd)
    };
    let zimg = sc.next_image_path();
    let res = ckpt(&["-v", "--compress"], &zimg, None);
    res.assert_success();
    assert!(
        res.stderr
            .contains("writing the 4 images one after the other: --compress"),
        "-v should say the compressed tree is written in turn, and why:\n{}",
        res.describe()
    );
    fs::remove_file(&zimg).expect("remove the compressed image");
    let timg = sc.next_image_path();
    let res = ckpt(&["-v"], &timg, Some("turn"));
    res.assert_success();
    assert!(
        res.stderr
            .contains("writing the 4 images one after the other: CR_TREE_WRITE=turn asks for it")
            && !res.stderr.contains(" placed "),
        "-v should say CR_TREE_WRITE=turn wrote the tree in turn:\n{}",
        res.describe()
    );
    fs::remove_file(&timg).expect("remove the image written in turn");

    let img = sc.next_image_path();
    let res = ckpt(&["-v", "--term"], &img, None);
    res.assert_success();
    sc.assert_image_file(&img);
    assert!(
        res.stderr.contains("writing the 4 images at once"),
        "-v should say the images were written at once:\n{}",
        res.describe()
    );
    assert_eq!(
        res.stderr.matches(" placed ").count(),
        4,
        "every agent should report its image placed:\n{}",
        res.describe()
    );
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "the checkpointed tree after --term");
    let img = Image::File(img);
    wait_image_gone(&sc, &img);
    let mut rs = start_restart(&sc, &reaper, &[], &img);
    let back = restored(&mut rs, &reaper, "bigmem", Some(4));
    assert_pids(&rs, &back, &pids, true);
    sc.go();
    rs.expect_pass(RESTART_TIMEOUT);
    wait_gone(&sc, &back, "the restored tree after PASS");
}

// ---------------------------------------------------------------------------------------------
// Twice in a row
// ---------------------------------------------------------------------------------------------

/// Checkpoint (--term) the running job whose root is `root` (processes named `comm`), wait
/// until they are gone, restart it and return the new cr_restart job with the restored root.
/// `original_root` is the first generation's root pid (restored every time).
fn generation(
    sc: &Scenario,
    reaper: &Reaper,
    restart: &mut Job,
    root: u32,
    comm: &str,
    want: Option<usize>,
    original_root: u32,
) -> (Job, Vec<u32>) {
    let mut gone = tree_of(root);
    reaper.watch(&gone);
    let img = Image::File(sc.checkpoint_restored_of(restart, root, &["--term"]));
    // And whatever else appeared under the root until the end of the checkpoint.
    gone.extend(descendants(root));
    wait_gone(sc, &gone, "the checkpointed processes after --term");
    wait_image_gone(sc, &img);
    let mut rs = start_restart(sc, reaper, &[], &img);
    let back = restored(&mut rs, reaper, comm, want);
    assert_eq!(
        ns_pid(back[0]),
        original_root,
        "the restored root must have the original pid:\n{}",
        rs.diag()
    );
    (rs, back)
}

/// tree.c: checkpoint, restart, checkpoint the restored tree (before GO), restart again, GO.
#[test]
fn twice_tree() {
    let sc = Scenario::new("twice-tree");
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(&["2", "deep"]);
    let (mut gen1, pids) = start_tree(&sc, &reaper, &tree);
    let img = Image::File(sc.checkpoint(gen1.pid(), &["--term"]));
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "generation 1 after --term");
    wait_image_gone(&sc, &img);

    let mut gen2 = start_restart(&sc, &reaper, &[], &img);
    let back2 = restored(&mut gen2, &reaper, "tree", Some(pids.len()));
    assert_pids(&gen2, &back2, &pids, true);
    thread::sleep(SETTLE);
    let (mut gen3, back3) = generation(
        &sc,
        &reaper,
        &mut gen2,
        back2[0],
        "tree",
        Some(pids.len()),
        pids[0],
    );
    gen2.expect_signal(SIGTERM, DEATH_TIMEOUT);
    assert!(
        !gen2.stdout().contains("PASS"),
        "generation 2 must not have finished:\n{}",
        gen2.diag()
    );
    assert_pids(&gen3, &back3, &pids, true);
    thread::sleep(SETTLE);
    sc.go();
    gen3.expect_pass(RESTART_TIMEOUT);
}

/// BLCR's `--omit-maybe`: `cr_checkpoint CR_RESTART_PID` leaves the waiting cr_restart (and the
/// init of its pid namespace) out and saves the restored tree below it; that image restarts.
fn through_restarter(name: &str, user: Option<(u32, u32)>) {
    let Some(sc) = scenario(name, user) else {
        return;
    };
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(&["2", "deep"]);
    let (mut gen1, pids) = start_tree(&sc, &reaper, &tree);
    let img = Image::File(sc.checkpoint(gen1.pid(), &["--term"]));
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "generation 1 after --term");
    wait_image_gone(&sc, &img);

    let mut gen2 = start_restart(&sc, &reaper, &[], &img);
    let back2 = restored(&mut gen2, &reaper, "tree", Some(pids.len()));
    thread::sleep(SETTLE);
    let img2 = Image::File(sc.checkpoint_restored(gen2.pid(), &["--term"]));
    gen2.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &back2, "generation 2 after --term");
    wait_image_gone(&sc, &img2);
    let mut gen3 = start_restart(&sc, &reaper, &[], &img2);
    let back3 = restored(&mut gen3, &reaper, "tree", Some(pids.len()));
    assert_pids(&gen3, &back3, &pids, true);
    thread::sleep(SETTLE);
    sc.go();
    gen3.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn checkpoint_through_cr_restart() {
    through_restarter("through-restarter", None);
}

#[test]
fn checkpoint_through_cr_restart_unprivileged() {
    through_restarter("through-restarter-nobody", Some(NOBODY));
}

/// A script: checkpoint the bash process's tree with --term (whatever children it has at that
/// moment), restart; with `twice`, checkpoint the restored tree and restart again; GO, PASS.
fn script_cycle(name: &str, file: &str, twice: bool) {
    let sc = Scenario::new(name);
    let reaper = Reaper::new(&sc);
    let mut gen1 = start_script(&sc, &reaper, file);
    thread::sleep(SETTLE);
    let before = tree_of(gen1.pid());
    reaper.watch(&before);
    let img = Image::File(sc.checkpoint(gen1.pid(), &["--term"]));
    let mut gone = before;
    gone.extend(descendants(gen1.pid()));
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &gone, "the script's tree after --term");
    let left = scenario_processes(&sc);
    wait_gone(&sc, &left, "processes of the scenario after --term");
    wait_image_gone(&sc, &img);

    let mut rs = start_restart(&sc, &reaper, &[], &img);
    let back = restored(&mut rs, &reaper, "bash", None);
    assert_eq!(
        ns_pid(back[0]),
        gen1.pid(),
        "the restored bash must have its original pid:\n{}",
        rs.diag()
    );
    if twice {
        thread::sleep(SETTLE);
        let (gen3, _) = generation(&sc, &reaper, &mut rs, back[0], "bash", None, gen1.pid());
        rs.expect_signal(SIGTERM, DEATH_TIMEOUT);
        assert!(
            !rs.stdout().contains("PASS"),
            "generation 2 must not have finished:\n{}",
            rs.diag()
        );
        rs = gen3;
    }
    thread::sleep(SETTLE);
    sc.go();
    rs.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn loop_script() {
    script_cycle("loop", "tree_loop.sh", false);
}

#[test]
fn twice_loop_script() {
    script_cycle("twice-loop", "tree_loop.sh", true);
}

#[test]
fn pipeline_script() {
    script_cycle("pipeline", "tree_pipeline.sh", false);
}

#[test]
fn twice_pipeline_script() {
    script_cycle("twice-pipeline", "tree_pipeline.sh", true);
}

// ---------------------------------------------------------------------------------------------
// Pids in use (root: original pids are restored in our own pid namespace)
// ---------------------------------------------------------------------------------------------

/// `cr_restart IMAGE` while some of its pids are in use: exit 16 with one line on stderr, and
/// nothing left running but `allowed`. Returns the line.
fn refused_restart(sc: &Scenario, reaper: &Reaper, img: &Image, allowed: &[u32]) -> String {
    refused_restart_with(sc, reaper, &[], img, allowed)
}

/// [`refused_restart`] with cr_restart options.
fn refused_restart_with(
    sc: &Scenario,
    reaper: &Reaper,
    opts: &[&str],
    img: &Image,
    allowed: &[u32],
) -> String {
    let mut job = start_restart(sc, reaper, opts, img);
    let st = job.wait_exit(TOOL_TIMEOUT);
    reaper.watch(&descendants(job.pid()));
    job.wait_output_closed(Duration::from_secs(5));
    assert_eq!(
        st.code(),
        Some(16),
        "cr_restart must fail with EBUSY (16) while a pid is in use:\n{}",
        job.diag()
    );
    let stderr = job.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "cr_restart should print exactly one line on stderr:\n{}",
        job.diag()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut extra: Vec<u32> = scenario_processes(sc)
            .into_iter()
            .filter(|p| !allowed.contains(p))
            .collect();
        extra.extend(job.group_members());
        reaper.watch(&extra);
        if extra.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let procs: Vec<String> = extra.iter().map(|&p| proc_summary(p)).collect();
            panic!(
                "the refused cr_restart left processes behind:\n{}\n{}",
                procs.join("\n"),
                job.diag()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    lines[0].to_string()
}

/// A single program checkpointed without --term: restarting it while it runs must be refused,
/// naming its pid (or one of its threads, "of pid PID"); it keeps running and passes.
fn pid_in_use(name: &str) {
    if !is_root() {
        println!("note: not root: original pids are restored in a private namespace, never in use");
        return;
    }
    let sc = Scenario::new(&format!("in-use-{name}"));
    let reaper = Reaper::new(&sc);
    let mut orig = sc.start_program(name);
    reaper.watch(&[orig.pid()]);
    let img = Image::File(sc.checkpoint(orig.pid(), &[]));
    orig.assert_running("after a checkpoint without --term");
    let line = refused_restart(&sc, &reaper, &img, &[orig.pid()]);
    assert!(
        line.contains("in use") && line.contains(&format!("pid {}", orig.pid())),
        "the error must name the pid in use ({}): {line}",
        orig.pid()
    );
    orig.assert_running("after the refused restart");
    sc.go();
    orig.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn pid_in_use_single() {
    pid_in_use("single");
}

#[test]
fn pid_in_use_threads() {
    pid_in_use("threads");
}

/// A whole tree checkpointed without --term: restarting it while it runs is refused, naming
/// one of its pids; the original tree keeps running and passes.
#[test]
fn pid_in_use_tree() {
    if !is_root() {
        println!("note: not root: original pids are restored in a private namespace, never in use");
        return;
    }
    let sc = Scenario::new("in-use-tree");
    let reaper = Reaper::new(&sc);
    let (mut job, pids) = start_tree(&sc, &reaper, &Tree::new(&["2", "deep"]));
    let img = Image::File(sc.checkpoint(job.pid(), &[]));
    job.assert_running("after a checkpoint without --term");
    let line = refused_restart(&sc, &reaper, &img, &pids);
    assert!(
        line.contains("in use") && pids.iter().any(|p| line.contains(&format!("pid {p}"))),
        "the error must name a pid of the tree {pids:?}: {line}"
    );
    job.assert_running("after the refused restart");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// A tree of a root and three children, checkpointed with --term; then another process takes
/// child 2's pid (`c-tests/tree_holdpid.c`, clone3 with set_tid): the restart must be refused
/// naming that pid, and create nothing. (The original child cannot be the one kept: stopped, it
/// gets SIGHUP when its process group is orphaned; running, it dies of SIGPIPE.)
#[test]
fn pid_in_use_one_child() {
    if !is_root() {
        println!("note: not root: original pids are restored in a private namespace, never in use");
        return;
    }
    let sc = Scenario::new("in-use-child");
    let reaper = Reaper::new(&sc);
    let (mut job, pids) = start_tree(&sc, &reaper, &Tree::new(&["3"]));
    let img = Image::File(sc.checkpoint(job.pid(), &["--term"]));
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &pids, "the checkpointed tree after --term");
    wait_image_gone(&sc, &img);

    let keep = pids[2];
    let mut prog = sc.program("tree_holdpid");
    prog.argv.push(keep.to_string().into());
    let mut holder = sc.start("tree_holdpid", sc.plain(&prog));
    reaper.watch(&[holder.pid()]);
    holder.wait_ready();
    reaper.watch(&[keep]);
    assert_eq!(
        proc_stat(keep).map(|st| st.ppid),
        Some(holder.pid()),
        "pid {keep} should be held by tree_holdpid:\n{}",
        holder.diag()
    );

    let line = refused_restart(&sc, &reaper, &img, &[holder.pid(), keep]);
    assert!(
        line.contains(&format!("pid {keep} is in use")),
        "the error must name the pid in use ({keep}): {line}"
    );
    holder.assert_running("after the refused restart");
    assert!(
        pid_alive(keep),
        "the refused restart must leave pid {keep} alone"
    );
    holder.kill();
    wait_gone(&sc, &[keep], "the pid holder after SIGKILL");
}

// ---------------------------------------------------------------------------------------------
// Resources that are not restored
// ---------------------------------------------------------------------------------------------

/// Netlink sockets and a pidfd: the checkpoint names each in a warning (as BLCR did, never a
/// silent surprise at restart), and the program restarts with its SysV segment's contents
/// (removed with IPC_RMID: re-created as a private segment).
#[test]
fn unsupported_resources_are_named() {
    let sc = Scenario::new("unsupported");
    let mut job = sc.start_program("unsupported");
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(job.pid(), &["--term"], &img);
    res.assert_success();
    for want in ["fd 40", "fd 41", "fd 42", "socket"] {
        assert!(
            res.stderr.contains(want),
            "the checkpoint's warnings must mention {want:?}:\n{}",
            res.describe()
        );
    }
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// cr_forward_checkpoint
// ---------------------------------------------------------------------------------------------

/// A child's callback forwards every checkpoint to its parent (c-tests/forward.c). A checkpoint
/// of the child alone, `-p` (the child's agent stops and saves the parent itself) or the default
/// tree scope (cr_checkpoint adds the parent to the cut), saves both: `--term` reaches both, and
/// the restart brings back both, the parent collecting the child after GO.
fn forward_cycle(name: &str, scope: &[&str], mode: &str) {
    let down = mode == "down";
    let sc = Scenario::new(name);
    let reaper = Reaper::new(&sc);
    let mut prog = sc.program("forward");
    if !mode.is_empty() {
        prog.argv.push(mode.into());
    }
    let mut job = sc.start(&format!("forward {name}"), sc.under_cr_run(&prog));
    job.wait_ready();
    // "child PID" is printed with READY.
    let deadline = Instant::now() + READY_TIMEOUT;
    let child: u32 = loop {
        let found = job
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("child ")?.trim().parse().ok());
        match found {
            Some(c) => break c,
            None if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            None => panic!("forward printed no child pid:\n{}", job.diag()),
        }
    };
    reaper.watch(&[job.pid(), child]);
    let mut flags = scope.to_vec();
    flags.push("--term");
    let img = sc.checkpoint(if down { job.pid() } else { child }, &flags);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    wait_gone(&sc, &[job.pid(), child], "both processes after --term");
    let (_, images) = {
        let f = std::fs::File::open(&img).expect("open the image");
        cr::image::tree::open_all(&f).expect("read the image")
    };
    let mut pids: Vec<u32> = images.iter().map(|i| i.header.pid).collect();
    pids.sort_unstable();
    let mut want = vec![job.pid(), child];
    want.sort_unstable();
    assert_eq!(
        pids, want,
        "the image must hold the child and the parent it forwarded to"
    );
    sc.go();
    let mut rs = sc.restart(&img);
    reaper.watch(&[rs.pid()]);
    rs.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn forward_to_parent_single_process_scope() {
    forward_cycle("forward-p", &["-p"], "");
}

#[test]
fn forward_to_parent_tree_scope() {
    forward_cycle("forward-tree", &[], "");
}

/// The parent's callback forwards to its child; `-p` of the parent saves both.
#[test]
fn forward_to_child() {
    forward_cycle("forward-down", &["-p"], "down");
}

/// The child forwards to its parent's whole tree (CR_SCOPE_TREE, from signal context): the
/// child's agent finds the tree itself (`-p`).
#[test]
fn forward_to_parent_tree() {
    forward_cycle("forward-parent-tree", &["-p"], "tree");
}

/// `cr_request_checkpoint(CR_SCOPE_TREE)` of the caller's own tree: the image holds the caller
/// and its child; restarted, the caller sees `CR_ERESTARTED` and its child is back as its child.
#[test]
fn api_tree_scope() {
    let sc = Scenario::new("api-tree");
    let reaper = Reaper::new(&sc);
    let img = sc.root().join("tree.ctx");
    let mut prog = sc.program("api_tree");
    prog.argv.push(img.clone().into_os_string());
    let mut job = sc.start("api_tree", sc.plain(&prog));
    reaper.watch(&[job.pid()]);
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert!(
        st.success() && job.stdout().contains("PASS api_tree checkpointed"),
        "api_tree should checkpoint its tree and pass:\n{}",
        job.diag()
    );
    let f = fs::File::open(&img).expect("open the image");
    let (_, images) = cr::image::tree::open_all(&f).expect("read the image");
    assert_eq!(
        images.len(),
        2,
        "the image of the tree must hold the caller and its child\n{}",
        sc.log()
    );
    let mut rs = sc.restart(&img);
    reaper.watch(&[rs.pid()]);
    let st = rs.wait_exit(RESTART_TIMEOUT);
    rs.wait_output_closed(Duration::from_secs(5));
    assert!(
        st.success() && rs.stdout().contains("PASS api_tree restarted"),
        "the restarted api_tree should pass:\n{}",
        rs.diag()
    );
}

/// A fork child (no exec) that its parent moved into a new pid namespace binds its control
/// socket for the namespace it is in, where it is pid 1: it is found and checkpointed. (A fork
/// child reuses its parent's namespace identity only while its parent is visible to it, issue 11.)
#[test]
fn fork_child_in_new_pid_namespace() {
    let sc = Scenario::new("pidns-fork");
    let reaper = Reaper::new(&sc);
    let mut job = sc.start_program("pidns_fork");
    reaper.watch(&[job.pid()]);
    if let Some(why) = job.stdout().lines().find(|l| l.starts_with("NOPIDNS")) {
        assert!(!in_ci(), "CI (root) can make a pid namespace: {why}");
        println!("note: {why}: test skipped");
        sc.go();
        job.wait_exit(TOOL_TIMEOUT);
        return;
    }
    assert!(
        job.stdout().contains("child pid 1"),
        "the child is pid 1 of its namespace:\n{}",
        job.diag()
    );
    // (Not `wait_child`: that one looks past a namespace's pid 1.)
    let kids = children_of(job.pid());
    assert_eq!(kids.len(), 1, "one child:\n{}", job.diag());
    let child = kids[0];
    reaper.watch(&[child]);
    assert_eq!(ns_pid(child), 1, "pid 1 of its namespace:\n{}", job.diag());
    let img = sc.checkpoint(child, &[]);
    sc.note(&format!(
        "checkpointed the namespace's pid 1 into {}",
        img.display()
    ));
    sc.go();
    job.expect_pass(TOOL_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// --cow of a tree: one stop, a writer per member, all run on once every writer exists
// ---------------------------------------------------------------------------------------------

/// Each member's longest gap between two turns of its loop that overlaps `[from, to]`
/// (CLOCK_MONOTONIC ns), in ns (`c-tests/tree.c`, `CR_TEST_MIB`: `gap.NODE`).
fn turn_gaps(sc: &Scenario, nodes: usize, from: u64, to: u64) -> Vec<u64> {
    (0..nodes)
        .map(|k| {
            let p = sc.work_dir().join(format!("gap.{k}"));
            let s = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            s.lines()
                .filter_map(|l| {
                    let (at, len) = l.split_once(' ')?;
                    Some((at.parse::<u64>().ok()?, len.parse::<u64>().ok()?))
                })
                .filter(|&(at, len)| at < to && at + len > from)
                .map(|(_, len)| len)
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// Files under temporary directories (the scenario's) are saved by content, and a process that
/// saves files is written stopped (`cow::NOTE_FILES`): they stay where they are here.
const COW_TREE: &[&str] = &["-v", "--cow", "--save-tmp-limit", "none"];

/// The members' `cr-writer` children (not zombies: a writer that succeeded is reaped after
/// the commit).
fn tree_writers(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .flat_map(|&p| children_of(p))
        .filter(|&c| matches!(proc_stat(c), Some(st) if st.comm == "cr-writer" && st.state != 'Z'))
        .collect()
}

/// `--cow` of a running tree of five processes (pipes streaming between them, 48 MiB of memory
/// each that they rewrite without pause): every member forks its writer in the one stop, all
/// run on once every writer exists, and the writers write their images at once into the tree
/// file meanwhile (`-v` says so, `mode=cow` for every member). Three checkpoints: in one at
/// least (the machine's load can keep a member from running after its release as long as
/// its stop: the writers take the CPUs), the longest gap in any member's loop during the
/// checkpoint, and the stop cr_checkpoint reports, are under half of the checkpoint's time.
/// No writer, nor its zombie, is left once they are done. The tree passes, and so do its first
/// and last images restarted.
#[test]
fn cow_tree_runs_on_and_restores() {
    let Some(sc) = scenario("cow-tree", None) else {
        return;
    };
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(FIVE).env("CR_TEST_MIB", "48");
    let (mut job, pids) = start_tree(&sc, &reaper, &tree);
    // (image, CLOCK_MONOTONIC before and after, ms cr_checkpoint says the tree stopped)
    let mut runs = Vec::new();
    for _ in 0..3 {
        let img = sc.next_image_path();
        let from = monotonic_ns();
        let res = sc.checkpoint_to(job.pid(), COW_TREE, &img);
        let to = monotonic_ns();
        res.assert_success();
        sc.assert_image_file(&img);
        let stop_ms: u64 = res
            .stderr
            .split("copy-on-write: the 5 processes run on after ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "-v must say the five processes ran on once every writer existed:\n{}",
                    res.describe()
                )
            });
        assert!(
            res.stderr.contains("writing the 5 images at once"),
            "-v must say the five images were written at once:\n{}",
            res.describe()
        );
        assert_eq!(
            res.stderr.matches("mode=cow stop=").count(),
            pids.len(),
            "every member is written copy-on-write:\n{}",
            res.describe()
        );
        assert!(
            !res.stderr.contains("stop=whole"),
            "no member stayed stopped for the write:\n{}",
            res.describe()
        );
        job.assert_running("after a copy-on-write checkpoint of its tree");
        runs.push((img, from, to, stop_ms));
    }
    // The writers, reaped from their control threads' poll once their exits are over
    // (`offload::reap_later`), leave no zombie.
    let writer_children = || -> Vec<u32> {
        pids.iter()
            .flat_map(|&p| children_of(p))
            .filter(|&c| matches!(proc_stat(c), Some(st) if st.comm == "cr-writer"))
            .collect()
    };
    let by = Instant::now() + Duration::from_secs(10);
    while !writer_children().is_empty() && Instant::now() < by {
        thread::sleep(Duration::from_millis(5));
    }
    let left = writer_children();
    assert!(
        left.is_empty(),
        "writers (or their zombies) {left:?} were not reaped\n{}",
        sc.log()
    );
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
    wait_gone(&sc, &pids, "the tree after PASS");
    let mut short = false;
    for (img, from, to, stop_ms) in &runs {
        let took_ms = (to - from) / 1_000_000;
        let gaps = turn_gaps(&sc, pids.len(), *from, *to);
        let longest = gaps.iter().copied().max().unwrap_or(0) / 1_000_000;
        let line = format!(
            "{}: stopped {stop_ms} ms (cr_checkpoint), longest gap of a member {longest} ms \
             (each member's: {:?} us), the checkpoint {took_ms} ms",
            img.display(),
            gaps.iter().map(|g| g / 1000).collect::<Vec<_>>(),
        );
        sc.note(&line);
        println!("note: {line}");
        short |= longest * 2 < took_ms && stop_ms * 2 < took_ms;
    }
    assert!(
        short,
        "in no checkpoint was the stop much shorter than the write\n{}",
        sc.log()
    );
    for (img, ..) in [runs.first(), runs.last()].into_iter().flatten() {
        restart_tree_to_pass(&sc, &reaper, &Image::File(img.clone()), pids.len());
    }
}

/// A member's writer killed while the tree's `--cow` checkpoint is written: the checkpoint
/// fails, saying so; the earlier image stays as it was (no temporary file left), every other
/// writer goes too, and every member runs on (the tree passes); the earlier image restores.
/// (The kill must come while the writers write: up to three tries.)
#[test]
fn cow_tree_writer_killed_keeps_the_old_image() {
    use std::os::unix::fs::MetadataExt;
    let Some(sc) = scenario("cow-tree-killed", None) else {
        return;
    };
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(FIVE).env("CR_TEST_MIB", "64");
    let (mut job, pids) = start_tree(&sc, &reaper, &tree);
    let img = sc.next_image_path();
    sc.checkpoint_to(job.pid(), COW_TREE, &img).assert_success();
    sc.assert_image_file(&img);
    let stamp = |p: &Path| {
        let m = fs::metadata(p).expect("the image");
        (m.ino(), m.len(), m.mtime(), m.mtime_nsec())
    };
    let mut before = stamp(&img);
    let mut seen = false;
    for _ in 0..3 {
        let mut argv: Vec<OsString> = vec![sc.tools().cr_checkpoint.clone().into()];
        argv.extend(COW_TREE.iter().map(OsString::from));
        argv.extend([
            "-f".into(),
            img.clone().into(),
            job.pid().to_string().into(),
        ]);
        // (The last checkpoint's writers may still be ending.)
        let old = tree_writers(&pids);
        let mut req = sc.start("cr_checkpoint --cow (a writer killed)", sc.command(&argv));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut writer = None;
        while writer.is_none() && Instant::now() < deadline && req.is_running() {
            writer = tree_writers(&pids).into_iter().find(|w| !old.contains(w));
            thread::sleep(Duration::from_millis(1));
        }
        let Some(w) = writer else {
            req.wait_exit(TOOL_TIMEOUT);
            sc.note("the checkpoint finished before a writer was seen: trying again");
            continue;
        };
        // SAFETY: SIGKILL to the writer process we found.
        unsafe { libc::kill(w as i32, libc::SIGKILL) };
        let st = req.wait_exit(TOOL_TIMEOUT);
        req.wait_output_closed(PIPE_CLOSE_TIMEOUT);
        if st.success() {
            sc.note("the killed writer had finished its image: trying again");
            // (The image was replaced by a complete one.)
            before = stamp(&img);
            continue;
        }
        seen = true;
        let why = req.stderr();
        println!(
            "note: writer {w} killed: {}",
            why.trim_end().lines().last().unwrap_or("")
        );
        assert!(
            why.contains("writer was killed"),
            "cr_checkpoint must say the writer was killed:\n{}",
            req.diag()
        );
        assert_eq!(
            stamp(&img),
            before,
            "the earlier image must stay as it was\n{}",
            sc.log()
        );
        assert_no_tmp_files(&sc.img_dir());
        let gone_by = Instant::now() + Duration::from_secs(10);
        while tree_writers(&pids).iter().any(|w| !old.contains(w)) && Instant::now() < gone_by {
            thread::sleep(Duration::from_millis(5));
        }
        let left: Vec<u32> = tree_writers(&pids)
            .into_iter()
            .filter(|w| !old.contains(w))
            .collect();
        assert!(
            left.is_empty(),
            "writers {left:?} outlived the failed checkpoint\n{}",
            sc.log()
        );
        break;
    }
    if !seen {
        println!("note: every checkpoint finished before its writer was killed");
    }
    for &p in &pids {
        assert!(pid_alive(p), "member {p} must run on\n{}", sc.log());
    }
    job.assert_running("after a failed copy-on-write checkpoint of its tree");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
    wait_gone(&sc, &pids, "the tree after PASS");
    restart_tree_to_pass(&sc, &reaper, &Image::File(img), pids.len());
}

/// `--cow` of a tree one of whose members cannot be written copy-on-write (node 2's memory is
/// `MADV_DONTFORK`: a fork lacks it): that member is written stopped, saying why, and so no
/// member runs on before the commit (its memory, read while it writes, must be the cut's):
/// the others' writers write meanwhile, their reports say `stop=whole`. The tree passes, and
/// so does its image restarted.
#[test]
fn cow_tree_with_a_member_written_stopped() {
    let Some(sc) = scenario("cow-tree-one-stopped", None) else {
        return;
    };
    let reaper = Reaper::new(&sc);
    let tree = Tree::new(FIVE)
        .env("CR_TEST_MIB", "16")
        .env("CR_TEST_DONTFORK", "2");
    let (mut job, pids) = start_tree(&sc, &reaper, &tree);
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(job.pid(), COW_TREE, &img);
    res.assert_success();
    sc.assert_image_file(&img);
    assert!(
        res.stderr
            .contains("written stopped (their reports say why)")
            && res
                .stderr
                .contains("no copy-on-write: it has memory a fork does not copy")
            && !res.stderr.contains("run on after"),
        "-v must say one member was written stopped, and the tree with it:\n{}",
        res.describe()
    );
    assert_eq!(
        res.stderr.matches("mode=cow stop=whole(").count(),
        pids.len() - 1,
        "the other members are written by their writers, stopped until the commit:\n{}",
        res.describe()
    );
    job.assert_running("after a copy-on-write checkpoint of its tree");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
    wait_gone(&sc, &pids, "the tree after PASS");
    restart_tree_to_pass(&sc, &reaper, &Image::File(img), pids.len());
}
