//! End-to-end tests of `cr_restart`'s options, through the real tools on `c-tests/spinner.c`,
//! `c-tests/fileio.c` and `c-tests/exiter.c`:
//!
//! * the `--run-on-*` hooks (BLCR's `run_on` test): each failure class runs its own hook, whose
//!   non-zero exit code becomes cr_restart's (without an error message); a hook exiting 0 leaves
//!   the normal failure alone; a non-zero success hook makes cr_restart exit at once while the
//!   restored job runs on;
//! * `--relocate OLD=NEW` for a moved executable, open files, the working directory and a whole
//!   tree, and its argument checks;
//! * the signal sent to the restored process after the restart (`--stop`, `--term`, `--kill`,
//!   `-S NUM`, last one wins);
//! * exit status mimicking (exit code, death by the same signal, no core dump);
//! * pid options, `-F FD`, two images, the accepted no-op options.
//!
//! Run one test with e.g. `cargo test --test tools_restart relocate -- --nocapture`.

mod common;

use common::*;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// How long a restored process may take to reach a state the test waits for (stopped, cwd set).
const STATE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a restored spinner that should just run (GO already there) may take to PASS.
const PASS_TIMEOUT: Duration = Duration::from_secs(20);

const SIGABRT: i32 = 6;
const SIGUSR1: i32 = 10;
const SIGCONT: i32 = 18;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn s(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
        .to_string()
}

/// `cr_restart ARGS` as a command of the scenario (its user, env and working directory).
fn restart_cmd<A: AsRef<str>>(sc: &Scenario, args: &[A]) -> Command {
    let mut argv = vec![s(&sc.tools().cr_restart)];
    argv.extend(args.iter().map(|a| a.as_ref().to_string()));
    sc.command(&argv)
}

fn describe_args<A: AsRef<str>>(args: &[A]) -> String {
    let words: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    format!("cr_restart {}", words.join(" "))
}

/// `cr_restart ARGS` to completion.
fn run_restart<A: AsRef<str>>(sc: &Scenario, args: &[A]) -> ToolResult {
    sc.run_tool(&describe_args(args), restart_cmd(sc, args))
}

/// `cr_restart ARGS` started in its own process group.
fn start_restart<A: AsRef<str>>(sc: &Scenario, args: &[A]) -> Job {
    sc.start(&describe_args(args), restart_cmd(sc, args))
}

/// A good image of a spinner (checkpointed with --term; GO not created yet).
fn spinner_image(sc: &Scenario) -> PathBuf {
    let mut sp = sc.start_program("spinner");
    let img = sc.checkpoint(sp.pid(), &["--term"]);
    sp.expect_signal(SIGTERM, DEATH_TIMEOUT);
    img
}

/// Starts `cmd` (a `cr_run` command), waits for READY, checkpoints it with --term and sees it
/// die of SIGTERM. Returns the image.
fn image_of(sc: &Scenario, what: &str, cmd: Command) -> PathBuf {
    image_with(sc, what, cmd, &["--term"])
}

/// As [`image_of`], with cr_checkpoint `flags` (which must make the program die of SIGTERM).
fn image_with(sc: &Scenario, what: &str, cmd: Command, flags: &[&str]) -> PathBuf {
    let mut job = sc.start(what, cmd);
    job.wait_ready();
    let img = sc.checkpoint(job.pid(), flags);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    img
}

/// Checkpoint flags for the relocation tests: the scenario lives in /tmp, whose open files
/// would travel in the image and come back at their old path, so the move would not matter.
const NO_TMP: &[&str] = &["--term", "--save-tmp-limit", "none"];

/// Polls `cond` until it holds; false after `timeout`.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Nothing from the image ran: no READY/PASS on cr_restart's stdout.
fn assert_nothing_ran(res: &ToolResult) {
    assert!(
        !res.stdout.contains("READY") && !res.stdout.contains("PASS"),
        "the restored program must not have run:\n{}",
        res.describe()
    );
}

/// The run exited with the hook's `code` (not by a signal) and printed nothing on stderr (the
/// hook's code replaces cr_restart's error message); nothing from the image ran.
fn assert_hook_code(res: &ToolResult, code: i32) {
    assert_eq!(
        res.code(),
        Some(code),
        "{} should exit with its hook's code {code}:\n{}",
        res.what,
        res.describe()
    );
    assert!(
        res.stderr.trim().is_empty(),
        "a failing hook suppresses cr_restart's error message:\n{}",
        res.describe()
    );
    assert_nothing_ran(res);
}

/// Every failure hook with its own code, so the one that ran can be told from the exit status:
/// args 41, temp 40, env 43, perm 44 — except `class`, whose hook exits 42.
fn class_hooks(class: &str) -> Vec<String> {
    [("args", 41), ("temp", 40), ("env", 43), ("perm", 44)]
        .iter()
        .map(|&(c, code)| {
            let code = if c == class { 42 } else { code };
            format!("--run-on-fail-{c}=exit {code}")
        })
        .collect()
}

/// `args` followed by `tail`.
fn with<A: AsRef<str>>(args: &[A], tail: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string())
        .chain(tail.iter().map(|t| t.to_string()))
        .collect()
}

/// A hook that exits 0 (after creating `marker`) leaves the failure as it is without a hook:
/// same exit code, same stderr. `hook` is e.g. `--run-on-fail-env`; `tail` the rest of the
/// arguments. Returns the failure's stderr.
fn assert_zero_hook_changes_nothing(sc: &Scenario, hook: &str, tail: &[&str]) -> String {
    let plain = run_restart(sc, tail);
    assert!(
        matches!(plain.code(), Some(c) if c != 0),
        "{} should fail:\n{}",
        plain.what,
        plain.describe()
    );
    let marker = sc
        .root()
        .join(format!("hook-ran{}", hook.replace('-', "_")));
    let _ = fs::remove_file(&marker);
    let hook_arg = format!("{hook}=touch '{}'; exit 0", s(&marker));
    let hooked = run_restart(sc, &with(&[hook_arg.as_str()], tail));
    assert!(
        marker.exists(),
        "the hook {hook} did not run:\n{}",
        hooked.describe()
    );
    // clap's usage line lists the options given, so a usage error is compared by its first line
    // and length; every other message by its whole text.
    let lines = |e: &str| -> Vec<String> {
        e.lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    };
    let (want, got) = (lines(&plain.stderr), lines(&hooked.stderr));
    let same = if want.len() == 1 {
        got == want
    } else {
        got.len() == want.len() && got.first() == want.first()
    };
    assert!(
        hooked.code() == plain.code() && same,
        "a hook exiting 0 must not change the exit code ({:?}) or the message ({:?}):\n{}",
        plain.code(),
        plain.stderr,
        hooked.describe()
    );
    assert_nothing_ran(&hooked);
    plain.stderr
}

/// `\` and `=` escaped for `--relocate`.
fn reloc_escape(p: &Path) -> String {
    s(p).replace('\\', "\\\\").replace('=', "\\=")
}

/// `--relocate OLD=NEW` as two arguments.
fn relocate(old: &Path, new: &Path) -> [String; 2] {
    [
        "--relocate".to_string(),
        format!("{}={}", reloc_escape(old), reloc_escape(new)),
    ]
}

/// `/proc/PID/cwd` of a process.
fn cwd_of(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Waits until the restored process `pid` has `dir` as its working directory.
fn expect_cwd(job: &Job, pid: u32, dir: &Path) {
    assert!(
        wait_until(STATE_TIMEOUT, || cwd_of(pid).as_deref() == Some(dir)),
        "the restored process {pid} should have the working directory {} (has {:?}):\n{}",
        dir.display(),
        cwd_of(pid),
        job.diag()
    );
}

/// What the descriptors of process `pid` lead to.
fn open_paths(pid: u32) -> Vec<PathBuf> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the restored process `pid` maps `file` (e.g. its relocated executable).
fn expect_mapped(job: &Job, pid: u32, file: &Path) {
    let want = s(file);
    let maps = || fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    assert!(
        wait_until(STATE_TIMEOUT, || maps()
            .lines()
            .any(|l| l.ends_with(want.as_str()))),
        "the restored process {pid} should map {want}:\n{}\n{}",
        maps(),
        job.diag()
    );
}

/// Copies the spinner binary to `dir/spinner` (dir created) and returns that program.
fn spinner_copy_in(sc: &Scenario, dir: &Path) -> Program {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    sc.program("spinner").copied_to(dir)
}

// ---------------------------------------------------------------------------------------------
// --run-on-* hooks
// ---------------------------------------------------------------------------------------------

/// fail-args: an unknown option, an unopenable image file. Each runs the fail-args hook (or
/// --run-on-failure's), never another class's; a hook exiting 0 changes nothing. The same
/// hooks do not run when the restart succeeds.
#[test]
fn hook_fail_args_returns_its_code() {
    let sc = Scenario::new("hook-args");
    let img = s(&spinner_image(&sc));
    let missing = s(&sc.img_dir().join("no-such-image"));

    // BLCR's run_on: an unknown option with --run-on-fail-args.
    let r = run_restart(
        &sc,
        &["--no-such-option", "--run-on-fail-args=exit 42", &img],
    );
    assert_hook_code(&r, 42);
    assert_hook_code(
        &run_restart(&sc, &with(&class_hooks("args"), &["--bogus", &img])),
        42,
    );
    assert_hook_code(
        &run_restart(&sc, &["--run-on-failure=exit 42", "--bogus", &img]),
        42,
    );
    // An image file that cannot be opened.
    assert_hook_code(
        &run_restart(&sc, &with(&class_hooks("args"), &[&missing])),
        42,
    );
    assert_hook_code(
        &run_restart(&sc, &["--run-on-failure=exit 42", &missing]),
        42,
    );

    // A hook exiting 0: the usual usage error, and the usual "missing file" failure.
    assert_zero_hook_changes_nothing(&sc, "--run-on-fail-args", &["--bogus", &img]);
    let line = assert_zero_hook_changes_nothing(&sc, "--run-on-fail-args", &[&missing]);
    let plain = run_restart(&sc, &[&missing]);
    plain.assert_failure_code(2);
    assert!(
        line.contains("no-such-image"),
        "the message should name the missing image: {line}"
    );

    // No failure hook runs on success, and the image was fine all along.
    sc.go();
    let mut ok = start_restart(
        &sc,
        &with(
            &class_hooks("args"),
            &["--run-on-failure=exit 42", img.as_str()],
        ),
    );
    ok.expect_pass(PASS_TIMEOUT);
}

/// fail-perm: `/dev/null` (BLCR's run_on) and a file of random bytes are not images.
#[test]
fn hook_fail_perm_returns_its_code() {
    let sc = Scenario::new("hook-perm");
    let random = sc.img_dir().join("random");
    fs::write(&random, pseudo_random_bytes(64 * 1024, 0x5eed)).expect("write random image");
    let random = s(&random);
    for img in ["/dev/null", random.as_str()] {
        let plain = run_restart(&sc, &[img]);
        plain.assert_failure_code(22);
        assert_nothing_ran(&plain);
        assert_hook_code(&run_restart(&sc, &with(&class_hooks("perm"), &[img])), 42);
        assert_hook_code(&run_restart(&sc, &["--run-on-failure=exit 42", img]), 42);
        // The specific hook given after --run-on-failure is the one that runs.
        assert_hook_code(
            &run_restart(
                &sc,
                &[
                    "--run-on-failure=exit 41",
                    "--run-on-fail-perm=exit 42",
                    img,
                ],
            ),
            42,
        );
        // ... and one given before it is replaced by it (options apply left to right).
        assert_hook_code(
            &run_restart(
                &sc,
                &[
                    "--run-on-fail-perm=exit 42",
                    "--run-on-failure=exit 41",
                    img,
                ],
            ),
            41,
        );
        assert_zero_hook_changes_nothing(&sc, "--run-on-fail-perm", &[img]);
        assert_zero_hook_changes_nothing(&sc, "--run-on-failure", &[img]);
    }
}

/// fail-env: the program file of the image (a copy run under cr_run) was deleted (ENOENT), or
/// replaced by a different file (ESTALE).
#[test]
fn hook_fail_env_returns_its_code() {
    let sc = Scenario::new("hook-env");
    let prog = spinner_copy_in(&sc, &sc.root().join("exe"));
    let exe = prog.file().to_path_buf();
    let img = s(&image_of(&sc, "spinner copy", sc.under_cr_run(&prog)));
    fs::remove_file(&exe).expect("delete the program copy");

    let plain = run_restart(&sc, &[&img]);
    let line = plain.assert_failure_code(2);
    assert!(
        line.contains(&s(&exe)),
        "the message should name the missing program file {}: {line}",
        exe.display()
    );
    assert_nothing_ran(&plain);
    assert_hook_code(&run_restart(&sc, &with(&class_hooks("env"), &[&img])), 42);
    assert_hook_code(&run_restart(&sc, &["--run-on-failure=exit 42", &img]), 42);
    assert_zero_hook_changes_nothing(&sc, "--run-on-fail-env", &[&img]);

    // A different file at the same path (fresh modification time): ESTALE, also fail-env.
    fs::copy(Program::get("spinner").file(), &exe).expect("copy the program again");
    let plain = run_restart(&sc, &[&img]);
    plain.assert_failure_code(116);
    assert_nothing_ran(&plain);
    assert_hook_code(&run_restart(&sc, &with(&class_hooks("env"), &[&img])), 42);
    assert_hook_code(&run_restart(&sc, &["--run-on-failure=exit 42", &img]), 42);
}

/// fail-temp: a restart whose pid is still in use (as root the original pids are restored in our
/// own pid namespace) fails with EBUSY (16), as BLCR, and runs the fail-temp hook.
#[test]
fn hook_fail_temp_pid_in_use() {
    if !is_root() {
        println!("note: not root: original pids are restored in a private namespace, never in use");
        return;
    }
    let sc = Scenario::new("hook-temp");
    let mut sp = sc.start_program("spinner");
    let img = s(&sc.checkpoint(sp.pid(), &[]));
    let plain = run_restart(&sc, &[&img]);
    let line = plain.assert_failure_code(16);
    assert!(
        line.contains(&format!("pid {} is in use", sp.pid())),
        "{line}"
    );
    assert_nothing_ran(&plain);
    assert_hook_code(&run_restart(&sc, &with(&class_hooks("temp"), &[&img])), 42);
    sp.assert_running("after the refused restarts");
    sp.kill();
}

/// A success hook exiting 42: cr_restart exits 42 at once, without waiting for the restored job,
/// which keeps running (it was cr_restart's child, in its process group) and finishes after GO.
#[test]
fn hook_success_nonzero_exits_without_waiting() {
    let sc = Scenario::new("hook-success");
    let img = s(&spinner_image(&sc));
    let mut job = start_restart(
        &sc,
        &with(&class_hooks("none"), &["--run-on-success=exit 42", &img]),
    );
    let st = job.wait_exit(TOOL_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(42),
        "cr_restart should exit with the success hook's code:\n{}",
        job.diag()
    );
    assert!(
        job.stderr().trim().is_empty(),
        "no error message expected:\n{}",
        job.diag()
    );
    // (Without root the spinner runs in cr_restart's private pid namespace, whose init stays.)
    let members: Vec<u32> = job
        .group_members()
        .into_iter()
        .filter(|&p| ns_pid(p) != 1)
        .collect();
    assert_eq!(
        members.len(),
        1,
        "exactly the restored spinner should be left in cr_restart's process group:\n{}",
        job.diag()
    );
    let pid = members[0];
    assert_eq!(
        proc_stat(pid).map(|st| st.comm).as_deref(),
        Some("spinner"),
        "the restored spinner should run on:\n{}",
        job.diag()
    );
    assert!(
        !job.stdout().contains("PASS"),
        "the spinner must not have finished before GO:\n{}",
        job.diag()
    );
    sc.go();
    job.wait_line("PASS spinner", PASS_TIMEOUT);
    assert!(
        wait_until(PASS_TIMEOUT, || !pid_alive(pid)),
        "the restored spinner {pid} should have exited after PASS:\n{}",
        job.diag()
    );
}

/// A success hook exiting 0 runs while the restored job runs; cr_restart then waits for the job
/// and exits as it does.
#[test]
fn hook_success_zero_waits_for_the_job() {
    let sc = Scenario::new("hook-success-0");
    let img = s(&spinner_image(&sc));
    let marker = sc.root().join("success-hook-ran");
    let hook = format!("--run-on-success=touch '{}'", s(&marker));
    let mut job = start_restart(&sc, &[hook.as_str(), &img]);
    // While the hook runs, its shell is a second child of cr_restart: wait until it is done.
    let kids = || -> Vec<u32> {
        children_of(job.pid())
            .into_iter()
            .filter(|&p| pid_alive(p))
            .collect()
    };
    assert!(
        wait_until(STATE_TIMEOUT, || marker.exists() && kids().len() == 1),
        "the success hook should have run, leaving the restored spinner as the only child:\n{}",
        job.diag()
    );
    // The spinner (through the init of cr_restart's private pid namespace without root).
    let pid = job.wait_child(STATE_TIMEOUT);
    job.assert_running("after its success hook exited 0");
    assert_eq!(
        proc_stat(pid).map(|st| st.comm).as_deref(),
        Some("spinner"),
        "cr_restart's remaining child should be the restored spinner:\n{}",
        job.diag()
    );
    sc.go();
    job.expect_pass(PASS_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// --relocate
// ---------------------------------------------------------------------------------------------

/// The program's directory was renamed after the checkpoint: without --relocate the restart
/// fails naming the missing file; with `--relocate OLD=NEW` the restored process maps the new file
/// and passes.
#[test]
fn relocate_moved_executable() {
    let sc = Scenario::new("reloc-exe");
    let a = sc.root().join("exe-a");
    let b = sc.root().join("exe-b");
    let prog = spinner_copy_in(&sc, &a);
    let img = s(&image_of(&sc, "spinner copy", sc.under_cr_run(&prog)));
    fs::rename(&a, &b).expect("rename the program dir");

    let plain = run_restart(&sc, &[&img]);
    let line = plain.assert_failure_code(2);
    let old_exe = s(&a.join("spinner"));
    assert!(
        line.contains(&old_exe),
        "the message should name the missing file {old_exe}: {line}"
    );
    assert_nothing_ran(&plain);

    let mut job = start_restart(&sc, &with(&relocate(&a, &b), &[&img]));
    let pid = job.wait_child(READY_TIMEOUT);
    expect_mapped(&job, pid, &b.join("spinner"));
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// fileio's input.dat and output.log live in a directory that was renamed: their descriptors
/// are reopened at the new place (offsets and O_APPEND kept: fileio checks them).
///
/// fileio re-opens `$CR_TEST_DIR/output.log` by name after GO, and its environment (the image's)
/// still names the old directory, which no relocation can change: once the restored descriptors
/// are seen to point into the new directory, the old name becomes a symlink to it.
#[test]
fn relocate_open_files() {
    let sc = Scenario::new("reloc-files");
    let x = sc.root().join("data-x");
    let y = sc.root().join("data-y");
    fs::create_dir(&x).expect("create data dir");
    let mut cmd = sc.under_cr_run(&sc.program("fileio"));
    cmd.env("CR_TEST_DIR", &x);
    let img = s(&image_with(&sc, "fileio", cmd, NO_TMP));
    fs::rename(&x, &y).expect("rename the data dir");

    let plain = run_restart(&sc, &[&img]);
    let line = plain.assert_failure_code(2);
    assert!(
        line.contains(&s(&x)),
        "the message should name the missing file in {}: {line}",
        x.display()
    );
    assert_nothing_ran(&plain);
    assert!(!x.exists(), "a failed restart must not recreate {x:?}");

    let mut job = start_restart(&sc, &with(&relocate(&x, &y), &[&img]));
    let pid = job.wait_child(READY_TIMEOUT);
    let want = [y.join("input.dat"), y.join("output.log")];
    let fds = || open_paths(pid);
    assert!(
        wait_until(STATE_TIMEOUT, || want.iter().all(|w| fds().contains(w))),
        "the restored fileio should have {want:?} open (has {:?}):\n{}",
        fds(),
        job.diag()
    );
    assert!(!x.exists(), "the restart must not recreate {x:?}");
    std::os::unix::fs::symlink(&y, &x).expect("symlink the old dir name to the new dir");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// A named FIFO between two processes (c-tests/tree.c `fifo`, 30000 bytes buffered) in a
/// directory that was renamed: without --relocate the restart fails naming the FIFO's old path
/// (it cannot be made again there); with it the FIFO is opened at its new path, bytes included.
#[test]
fn relocate_fifo() {
    let sc = Scenario::new("reloc-fifo");
    let x = sc.root().join("fifo-x");
    let y = sc.root().join("fifo-y");
    fs::create_dir(&x).expect("create data dir");
    let mut prog = sc.program("tree");
    prog.argv
        .extend(["2", "fifo"].map(std::ffi::OsString::from));
    let mut cmd = sc.under_cr_run(&prog);
    cmd.env("CR_TEST_DIR", &x);
    let img = s(&image_with(&sc, "tree with a FIFO", cmd, NO_TMP));
    fs::rename(&x, &y).expect("rename the data dir");

    // Fresh pids: the subject is the path (the children may still be dying).
    let plain = run_restart(&sc, &["--no-restore-pid", &img]);
    let line = plain.assert_failure_code(2);
    assert!(
        line.contains(&s(&x)),
        "the message should name the FIFO's old path in {}: {line}",
        x.display()
    );
    assert_nothing_ran(&plain);

    let mut args = relocate(&x, &y).to_vec();
    args.push("--no-restore-pid".into());
    let mut job = start_restart(&sc, &with(&args, &[&img]));
    let pid = job.wait_child(READY_TIMEOUT);
    let want = y.join("tree.fifo");
    let fds = || open_paths(pid);
    assert!(
        wait_until(STATE_TIMEOUT, || fds().contains(&want)),
        "the restored root should have {want:?} open (has {:?}):\n{}",
        fds(),
        job.diag()
    );
    // tree.c checks the FIFO by its (old) name after GO.
    std::os::unix::fs::symlink(&y, &x).expect("symlink the old dir name to the new dir");
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// The working directory was renamed (its names contain `=` and `\`, escaped in the option):
/// the restored process runs in the new one.
#[test]
fn relocate_cwd() {
    let sc = Scenario::new("reloc-cwd");
    let z = sc.root().join("cwd=1");
    let z2 = sc.root().join("cwd\\2");
    fs::create_dir(&z).expect("create cwd");
    let mut cmd = sc.under_cr_run(&sc.program("spinner"));
    cmd.current_dir(&z);
    let img = s(&image_of(&sc, "spinner in cwd", cmd));
    fs::rename(&z, &z2).expect("rename the cwd");

    let plain = run_restart(&sc, &[&img]);
    plain.assert_failure_code(2);
    assert_nothing_ran(&plain);

    let mut job = start_restart(&sc, &with(&relocate(&z, &z2), &[&img]));
    let pid = job.wait_child(READY_TIMEOUT);
    expect_cwd(&job, pid, &z2);
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// Executable and working directory under one tree that was renamed. Four pairs: one that
/// matches nothing, one that is a string prefix but no whole component of the tree's path, the
/// right one, and one after it that also matches the cwd but must lose (first match wins).
#[test]
fn relocate_whole_tree() {
    let sc = Scenario::new("reloc-tree");
    let t = sc.root().join("tree");
    let t2 = sc.root().join("moved");
    let prog = spinner_copy_in(&sc, &t.join("bin"));
    fs::create_dir(t.join("cwd")).expect("create cwd");
    let mut cmd = sc.under_cr_run(&prog);
    cmd.current_dir(t.join("cwd"));
    let img = s(&image_of(&sc, "spinner in tree", cmd));
    fs::rename(&t, &t2).expect("rename the tree");

    let mut args: Vec<String> = Vec::new();
    args.extend(relocate(Path::new("/nonexistent"), Path::new("/elsewhere")));
    args.extend(relocate(&sc.root().join("tre"), Path::new("/wrong-prefix")));
    args.extend(relocate(&t, &t2));
    args.extend(relocate(&t.join("cwd"), Path::new("/wrong-second")));
    args.push(img);
    let mut job = start_restart(&sc, &args);
    let pid = job.wait_child(READY_TIMEOUT);
    expect_mapped(&job, pid, &t2.join("bin").join("spinner"));
    expect_cwd(&job, pid, &t2.join("cwd"));
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// Malformed pairs and more than 16 are rejected (EINVAL, one line naming --relocate) before
/// anything runs, through the fail-args hook; 16 pairs are fine.
#[test]
fn relocate_invalid() {
    let sc = Scenario::new("reloc-invalid");
    let img = s(&spinner_image(&sc));
    for bad in ["relative=/x", "/x=relative", "/a=/b=/c", "/no-equals-sign"] {
        let r = run_restart(&sc, &["--relocate", bad, &img]);
        let line = r.assert_failure_code(22);
        assert!(
            line.contains("relocate"),
            "the message for --relocate {bad} should mention --relocate: {line}"
        );
        assert_nothing_ran(&r);
    }
    assert_hook_code(
        &run_restart(
            &sc,
            &with(&class_hooks("args"), &["--relocate", "relative=/x", &img]),
        ),
        42,
    );

    let pairs = |n: usize| -> Vec<String> {
        (0..n)
            .flat_map(|i| {
                [
                    "--relocate".to_string(),
                    format!("/unused{i}=/elsewhere{i}"),
                ]
            })
            .collect()
    };
    let r = run_restart(&sc, &with(&pairs(17), &[&img]));
    let line = r.assert_failure_code(22);
    assert!(
        line.contains("relocate") && line.contains("16"),
        "the message for 17 pairs should mention --relocate and the limit: {line}"
    );
    assert_nothing_ran(&r);

    sc.go();
    let mut job = start_restart(&sc, &with(&pairs(16), &[&img]));
    job.expect_pass(PASS_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// Signal after restart
// ---------------------------------------------------------------------------------------------

/// `--stop`: the restored process is stopped (even after GO); SIGCONT lets it finish.
#[test]
fn signal_stop_then_cont() {
    let sc = Scenario::new("sig-stop");
    let img = s(&spinner_image(&sc));
    let mut job = start_restart(&sc, &["--stop", &img]);
    let pid = job.wait_child(READY_TIMEOUT);
    let state = || proc_stat(pid).map(|st| st.state);
    assert!(
        wait_until(STATE_TIMEOUT, || state() == Some('T')),
        "the restored process should be stopped (state {:?}):\n{}",
        state(),
        job.diag()
    );
    sc.go();
    // A running spinner notices GO within a millisecond; a stopped one must not.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(state(), Some('T'), "still stopped:\n{}", job.diag());
    assert!(
        !job.stdout().contains("PASS"),
        "a stopped spinner cannot pass:\n{}",
        job.diag()
    );
    job.assert_running("while the restored process is stopped");
    signal_pid(pid, SIGCONT);
    job.expect_pass(PASS_TIMEOUT);
}

/// `--freeze` is `--stop`.
#[test]
fn signal_freeze_is_stop() {
    let sc = Scenario::new("sig-freeze");
    let img = s(&spinner_image(&sc));
    let mut job = start_restart(&sc, &["--freeze", &img]);
    let pid = job.wait_child(READY_TIMEOUT);
    assert!(
        wait_until(STATE_TIMEOUT, || proc_stat(pid).map(|st| st.state)
            == Some('T')),
        "the restored process should be stopped:\n{}",
        job.diag()
    );
    sc.go();
    signal_pid(pid, SIGCONT);
    job.expect_pass(PASS_TIMEOUT);
}

/// cr_restart `opts` IMG: the restored spinner (GO not there) dies of `sig` and cr_restart dies
/// of the same signal; nothing is left.
fn restart_dies_of(name: &str, opts: &[&str], sig: i32) {
    let sc = Scenario::new(name);
    let img = s(&spinner_image(&sc));
    let mut job = start_restart(&sc, &with(opts, &[&img]));
    job.expect_signal(sig, RESTART_TIMEOUT);
    assert!(
        job.wait_output_closed(Duration::from_secs(5)),
        "the restored process should be gone:\n{}",
        job.diag()
    );
    assert!(
        !job.stdout().contains("PASS") && job.group_members().is_empty(),
        "the restored spinner must have died:\n{}",
        job.diag()
    );
    assert!(
        !job.wait_exit(Duration::ZERO).core_dumped(),
        "cr_restart must not dump core:\n{}",
        job.diag()
    );
}

#[test]
fn signal_term() {
    restart_dies_of("sig-term", &["--term"], SIGTERM);
}

#[test]
fn signal_kill() {
    restart_dies_of("sig-kill", &["--kill"], SIGKILL);
}

#[test]
fn signal_s15_is_term() {
    restart_dies_of("sig-s15", &["-S", "15"], SIGTERM);
}

/// Last one wins: `--run --stop --term` sends SIGTERM only (with SIGSTOP too the process would
/// stay stopped with SIGTERM pending).
#[test]
fn signal_last_wins_term() {
    restart_dies_of("sig-last-term", &["--run", "--stop", "--term"], SIGTERM);
}

/// Last one wins: `--stop --run` and `--kill --cont` run normally to PASS.
#[test]
fn signal_last_wins_run() {
    let sc = Scenario::new("sig-last-run");
    let img = s(&spinner_image(&sc));
    sc.go();
    for opts in [["--stop", "--run"], ["--kill", "--cont"]] {
        let mut job = start_restart(&sc, &with(&opts, &[&img]));
        job.expect_pass(PASS_TIMEOUT);
    }
}

// ---------------------------------------------------------------------------------------------
// Exit status mimicking
// ---------------------------------------------------------------------------------------------

/// An image of `exiter` started with `EXITER_MODE=mode` (the restored process has the image's
/// environment).
fn exiter_image(sc: &Scenario, mode: &str) -> PathBuf {
    let mut cmd = sc.under_cr_run(&sc.program("exiter"));
    cmd.env("EXITER_MODE", mode);
    image_of(sc, &format!("exiter {mode}"), cmd)
}

/// Waits for `job` (a cr_restart of exiter) to end; checks the restored exiter got to its end.
fn exiter_status(job: &mut Job, mode: &str) -> std::process::ExitStatus {
    let st = job.wait_exit(RESTART_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert!(
        job.stdout().contains(&format!("DONE exiter {mode}")) && !job.stdout().contains("FAIL"),
        "the restored exiter should have reached its end:\n{}",
        job.diag()
    );
    st
}

#[test]
fn exit_code_is_mimicked() {
    let sc = Scenario::new("exit-code");
    let img = exiter_image(&sc, "code:7");
    sc.go();
    let mut job = sc.restart(&img);
    let st = exiter_status(&mut job, "code:7");
    assert_eq!(
        st.code(),
        Some(7),
        "cr_restart should exit 7:\n{}",
        job.diag()
    );
}

#[test]
fn exit_signal_is_mimicked() {
    let sc = Scenario::new("exit-signal");
    let img = exiter_image(&sc, "signal:10");
    sc.go();
    let mut job = sc.restart(&img);
    let st = exiter_status(&mut job, "signal:10");
    assert_eq!(
        st.signal(),
        Some(SIGUSR1),
        "cr_restart should die of SIGUSR1:\n{}",
        job.diag()
    );
    assert!(!st.core_dumped(), "no core dump:\n{}", job.diag());
}

/// A core-dumping signal (SIGABRT) is mimicked without a core dump, even when cr_restart may dump
/// core (soft RLIMIT_CORE raised to the hard limit before it starts).
#[test]
fn exit_core_signal_is_mimicked_without_core() {
    let sc = Scenario::new("exit-abort");
    let img = exiter_image(&sc, "signal:6");
    sc.go();
    let cmd = sc.command(&[
        "/bin/sh".to_string(),
        "-c".to_string(),
        r#"ulimit -S -c "$(ulimit -H -c)" && exec "$0" "$@""#.to_string(),
        s(&sc.tools().cr_restart),
        s(&img),
    ]);
    let mut job = sc.start("cr_restart (core limit raised)", cmd);
    let st = exiter_status(&mut job, "signal:6");
    assert_eq!(
        st.signal(),
        Some(SIGABRT),
        "cr_restart should die of SIGABRT:\n{}",
        job.diag()
    );
    assert!(!st.core_dumped(), "cr_restart dumped core:\n{}", job.diag());
    let cores: Vec<String> = fs::read_dir(sc.root())
        .expect("read scenario dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("core"))
        .collect();
    assert!(cores.is_empty(), "core files left: {cores:?}");
}

// ---------------------------------------------------------------------------------------------
// Pid options, -F, image arguments
// ---------------------------------------------------------------------------------------------

/// The pid options and the `--omit-*` options are accepted; `--restore-pgid`/`--restore-sid`
/// work with `--no-restore-pid` too (BLCR allows it: as root the group is made again at its id,
/// without root in a private pid namespace).
#[test]
fn pid_options() {
    let sc = Scenario::new("pid-options");
    let img = s(&spinner_image(&sc));
    sc.go();
    for opts in [
        ["--no-restore-pid", "--omit-maybe", "-f"],
        ["--restore-pid", "--omit-never", "--file"],
        ["--no-restore-sid", "--omit-always", "--"],
        ["--restore-pgid", "--restore-sid", "-f"],
        ["--no-restore-pid", "--restore-pgid", "-f"],
        ["--no-restore-pid", "--restore-sid", "--"],
        ["--no-restore-pid", "--restore-pgid", "--restore-sid"],
    ] {
        let mut job = start_restart(&sc, &with(&opts, &[&img]));
        job.expect_pass(PASS_TIMEOUT);
    }
}

/// `-F FD` reads the image from an inherited descriptor; a descriptor that is not open, or two
/// images, are usage errors.
#[test]
fn image_from_fd_and_two_images() {
    let sc = Scenario::new("image-args");
    let img = s(&spinner_image(&sc));
    let via_fd = |extra: &str| {
        sc.command(&[
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!(r#"exec "$0" -F 3 {extra} 3<"$1""#),
            s(&sc.tools().cr_restart),
            img.clone(),
        ])
    };

    let r = run_restart(&sc, &[img.as_str(), "-f", &img]);
    r.assert_failure_code(22);
    assert_nothing_ran(&r);
    let r = sc.run_tool("cr_restart -F 3 IMG", via_fd(r#""$1""#));
    r.assert_failure_code(22);
    assert_nothing_ran(&r);
    let r = run_restart(&sc, &["-F", "200"]);
    r.assert_failure_code(9);
    assert_nothing_ran(&r);

    sc.go();
    let mut job = sc.start("cr_restart -F 3", via_fd(""));
    job.expect_pass(PASS_TIMEOUT);
}
