//! A program that checkpoints itself through a child `cr_checkpoint` (BLCR's save_aux and
//! reloc_aux, and the save_exe/save_priv/save_share/save_all/reloc_*/run_on tests built on them):
//! `system("cr_checkpoint ... $PPID")` (dash forks a child for the command),
//! `system("exec cr_checkpoint ... PID")`, or fork + exec + waitpid. The program
//! (`c-tests/self_ckpt.c`) runs to PASS; then, after whatever the test does to its files, the
//! restart from its image continues inside that `system()`/`waitpid()`, which must report the
//! child's exit status 0 with exactly one SIGCHLD, and the program checks its maps, files, FIFO,
//! working directory, heap and forked child again.
//!
//! Every case runs as root (original pids in our pid namespace) and as `nobody` (original pids in
//! cr_restart's private namespace).

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

/// The scenario, as `user` (`None` when that needs root and we are not).
fn scenario(name: &str, user: Option<(u32, u32)>) -> Option<Scenario> {
    match user {
        None => Some(Scenario::new(name)),
        Some(_) if !is_root() => {
            println!("note: not root: cannot run as another user");
            None
        }
        Some(u) => Some(Scenario::as_user(name, u)),
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// The program, copied into `root/exe/` (so it can be moved, deleted or overwritten).
fn program_in_exe_dir(sc: &Scenario) -> Program {
    let dir = sc.root().join("exe");
    fs::create_dir_all(&dir).expect("create exe dir");
    sc.program("self_ckpt").copied_to(&dir)
}

/// Runs `self_ckpt HOW 'ARGS -f IMG' ITEMS` under cr_run with GO already there: it checkpoints
/// itself and must PASS. Returns the image.
fn first_run(sc: &Scenario, prog: &Program, how: &str, args: &[&str], items: &[&str]) -> PathBuf {
    let img = sc.next_image_path();
    let mut ckpt: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    ckpt.extend(["-f".to_string(), s(&img)]);
    let mut prog = prog.clone();
    prog.argv.push(how.into());
    prog.argv.push(ckpt.join(" ").into());
    prog.argv.extend(items.iter().map(|i| i.into()));
    if !sc.go_file().exists() {
        sc.go();
    }
    let mut cmd = sc.under_cr_run(&prog);
    cmd.env("CR_CHECKPOINT", &sc.tools().cr_checkpoint);
    let mut job = sc.start(&format!("self_ckpt {how}"), cmd);
    job.expect_pass(RESTART_TIMEOUT);
    sc.assert_image_file(&img);
    img
}

/// `cr_restart OPTS IMG` must PASS (the restored program's own wait saw its child exit 0).
fn restart_passes(sc: &Scenario, img: &Path, opts: &[&str]) {
    let mut rs = sc.restart_with(img, opts);
    rs.expect_pass(RESTART_TIMEOUT);
}

/// The process the image was taken of, and the zombie table of its manifest.
fn image_pid_and_zombies(img: &Path) -> (u32, Vec<cr::image::tree::ZombieRec>) {
    let f = fs::File::open(img).expect("open the image");
    let (manifest, images) = cr::image::tree::open_all(&f).expect("read the image");
    let zombies = manifest.map(|m| m.zombies).unwrap_or_default();
    (images[0].header.pid, zombies)
}

/// The basic flow: the image records the child the program waits for as exited with status 0.
fn flow(name: &str, user: Option<(u32, u32)>, how: &str, args: &[&str], items: &[&str]) {
    let Some(sc) = scenario(name, user) else {
        return;
    };
    let prog = sc.program("self_ckpt");
    let img = first_run(&sc, &prog, how, args, items);
    restart_passes(&sc, &img, &[]);
    let (pid, zombies) = image_pid_and_zombies(&img);
    assert!(
        zombies.len() == 1 && zombies[0].ppid as u32 == pid && zombies[0].status == 0,
        "the image must record one child of {pid} that exited 0 (the checkpoint command), not {zombies:?}\n{}",
        sc.log()
    );
}

/// Declares a test as root and one as `nobody`.
macro_rules! both {
    ($root:ident, $nobody:ident, $f:expr) => {
        #[test]
        fn $root() {
            $f(stringify!($root), None)
        }
        #[test]
        fn $nobody() {
            $f(stringify!($nobody), Some(NOBODY))
        }
    };
}

both!(system_tree, system_tree_unprivileged, |n, u| flow(
    n,
    u,
    "system",
    &[],
    &["child", "S", "P", "file", "fifo", "cwd"]
));
both!(
    system_one_process,
    system_one_process_unprivileged,
    |n, u| { flow(n, u, "system", &["-p"], &["S", "P", "file"]) }
);
both!(exec_one_process, exec_one_process_unprivileged, |n, u| {
    flow(n, u, "exec", &["-p"], &["S", "file", "cwd"])
});
// `-g $PPID`: the program leads its process group (the harness starts it in its own); the
// shell of system() is a member of it too, and is left out as the one that waits.
both!(system_group, system_group_unprivileged, |n, u| {
    flow(n, u, "system", &["-g"], &["child", "S"])
});
both!(fork_exec_waitpid, fork_exec_waitpid_unprivileged, |n, u| {
    flow(n, u, "fork", &[], &["child", "P", "fifo"])
});

// ---------------------------------------------------------------------------------------------
// --save-*: files gone or changed before the restart
// ---------------------------------------------------------------------------------------------

/// Checkpoint with `opt`, then remove the mapped files named in `gone` and do `exe` to the
/// executable ("keep" it, "delete" it, or "overwrite" it: deleted and replaced by an empty
/// file); the restart must PASS.
fn save(name: &str, user: Option<(u32, u32)>, opt: &str, items: &[&str], gone: &[&str], exe: &str) {
    let Some(sc) = scenario(name, user) else {
        return;
    };
    let prog = program_in_exe_dir(&sc);
    let img = first_run(&sc, &prog, "system", &[opt], items);
    let file = prog.file().to_path_buf();
    if exe != "keep" {
        fs::remove_file(&file).expect("delete the executable");
    }
    if exe == "overwrite" {
        fs::write(&file, b"").expect("overwrite the executable");
    }
    for f in gone {
        let p = sc.work_dir().join(f);
        fs::remove_file(&p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }
    restart_passes(&sc, &img, &[]);
}

both!(save_exe, save_exe_unprivileged, |n, u| save(
    n,
    u,
    "--save-exe",
    &["child"],
    &[],
    "overwrite"
));
both!(save_private, save_private_unprivileged, |n, u| save(
    n,
    u,
    "--save-private",
    &["P"],
    &["map.P"],
    "delete"
));
both!(save_shared, save_shared_unprivileged, |n, u| save(
    n,
    u,
    "--save-shared",
    &["child", "S"],
    &["map.S"],
    "keep"
));
both!(save_all, save_all_unprivileged, |n, u| save(
    n,
    u,
    "--save-all",
    &["S", "P"],
    &["map.S", "map.P"],
    "overwrite"
));

// ---------------------------------------------------------------------------------------------
// --relocate: the executable, a file, a FIFO, the working directory or everything moved
// ---------------------------------------------------------------------------------------------

/// `--relocate OLD=NEW`.
fn relocate(old: &Path, new: &Path) -> String {
    format!("--relocate={}={}", s(old), s(new))
}

/// Moves `old` to `new` (both under the scenario root) after the first run; without
/// `--relocate` the restart fails with ENOENT (2) unless `refound` (a FIFO is re-created where it
/// was); with `--relocate old=new` (and with `extra`, a pair that matches nothing) it passes.
fn reloc(name: &str, user: Option<(u32, u32)>, items: &[&str], old: &str, new: &str, extra: bool) {
    let Some(sc) = scenario(name, user) else {
        return;
    };
    let prog = program_in_exe_dir(&sc);
    // The scenario lives in /tmp: its open files would travel in the image and come back at
    // their old path, so the move would not matter.
    let img = first_run(&sc, &prog, "system", &["--save-tmp-limit", "none"], items);
    let (old, new) = (sc.root().join(old), sc.root().join(new));
    fs::rename(&old, &new).unwrap_or_else(|e| panic!("move {}: {e}", old.display()));
    let mut opts = vec![relocate(&old, &new)];
    if extra {
        opts.push(relocate(
            &sc.root().join("nowhere"),
            &sc.root().join("elsewhere"),
        ));
    }
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    if !items.contains(&"fifo") || items.len() > 1 {
        let argv = vec![s(&sc.tools().cr_restart), s(&img)];
        let res = sc.run_tool("cr_restart", sc.command(&argv));
        res.assert_failure_code(2);
    }
    restart_passes(&sc, &img, &opts);
}

both!(reloc_exe, reloc_exe_unprivileged, |n, u| reloc(
    n,
    u,
    &["child"],
    "exe",
    "exe.moved",
    false
));
both!(reloc_file, reloc_file_unprivileged, |n, u| reloc(
    n,
    u,
    &["file"],
    "work/data",
    "work/data.moved",
    false
));
both!(reloc_fifo, reloc_fifo_unprivileged, |n, u| reloc(
    n,
    u,
    &["fifo"],
    "work/fifo",
    "work/fifo.moved",
    false
));
both!(reloc_dir, reloc_dir_unprivileged, |n, u| reloc(
    n,
    u,
    &["cwd"],
    "work/cwd",
    "work/cwd.moved",
    false
));
both!(reloc_all, reloc_all_unprivileged, |n, u| reloc(
    n,
    u,
    &["child", "S", "P", "file", "fifo", "cwd"],
    "work",
    "work.moved",
    true
));

// ---------------------------------------------------------------------------------------------
// --run-on-*
// ---------------------------------------------------------------------------------------------

/// BLCR's run_on through a self-checkpoint image: a plain restart passes; a moved mapped file
/// runs the fail-env hook (and --run-on-failure's); a bad option the fail-args hook; a damaged
/// copy of the image the fail-perm hook; a pid in use (root: by a restored
/// copy still running) the fail-temp hook; a success hook's code is cr_restart's. Each hook's 42 is
/// the exit code, and nothing of the image runs on failure.
fn run_on(name: &str, user: Option<(u32, u32)>) {
    let Some(sc) = scenario(name, user) else {
        return;
    };
    let prog = sc.program("self_ckpt");
    // The scenario lives under /tmp, whose files would travel by content: with the limit at
    // none the mapped file stays by reference, so moving it fails the restart.
    let img = first_run(&sc, &prog, "system", &["--save-tmp-limit", "none"], &["P"]);
    let restart_from = |args: &[&str], img: &Path| {
        let mut argv = vec![s(&sc.tools().cr_restart)];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.push(s(img));
        sc.run_tool("cr_restart", sc.command(&argv))
    };
    let restart = |args: &[&str]| restart_from(args, &img);
    let hook_42 = |res: &ToolResult| {
        assert_eq!(res.code(), Some(42), "{}", res.describe());
        assert!(!res.stdout.contains("PASS"), "{}", res.describe());
    };
    restart_passes(&sc, &img, &[]);
    let map = sc.work_dir().join("map.P");
    let moved = sc.work_dir().join("map.P.moved");
    fs::rename(&map, &moved).expect("move the mapped file");
    hook_42(&restart(&["--run-on-fail-env=exit 42"]));
    // --run-on-failure sets every failure hook.
    hook_42(&restart(&["--run-on-failure=exit 42"]));
    fs::rename(&moved, &map).expect("move the mapped file back");
    // A copy of the image with its first byte changed is no image (BLCR's run_on gives
    // /dev/null): the fail-perm hook.
    let mut bytes = fs::read(&img).expect("read the image");
    bytes[0] ^= 0xff;
    let bad = sc.root().join("bad.img");
    fs::write(&bad, &bytes).expect("write the damaged copy");
    hook_42(&restart_from(&["--run-on-fail-perm=exit 42"], &bad));
    hook_42(&restart(&["--bad-argument", "--run-on-fail-args=exit 42"]));
    if user.is_none() {
        // A restored copy waits for GO (after its system() returned 0) and holds the pid.
        fs::remove_file(sc.go_file()).expect("remove GO");
        let mut running = sc.restart(&img);
        let (pid, _) = image_pid_and_zombies(&img);
        assert_eq!(
            running.wait_child(RESTART_TIMEOUT),
            pid,
            "{}",
            running.diag()
        );
        hook_42(&restart(&["--run-on-fail-temp=exit 42"]));
        sc.go();
        running.expect_pass(RESTART_TIMEOUT);
    }
    // Last: cr_restart exits at once, the restored program runs on (it passes, GO exists).
    let res = restart(&["--run-on-success=exit 42"]);
    assert_eq!(res.code(), Some(42), "{}", res.describe());
}

both!(run_on_hooks, run_on_hooks_unprivileged, run_on);
