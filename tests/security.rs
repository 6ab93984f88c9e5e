//! Who may checkpoint what, and with which rights a restored process runs (issue 13,
//! security). Only root or the owner may checkpoint a process; the owner only when the process
//! is one it could read with `ptrace` (not set-uid, not a process that changed its user, not
//! `PR_SET_DUMPABLE 0`): such memory must not land in a file the requester can read. The
//! agent's control socket itself refuses other users (not only cr_checkpoint's early check).
//! Images are created mode 0600 whatever the umask. A normal user restarting a root process's
//! image gets a process running as that user, never more.
//!
//! Everything here needs root (to run processes as two users); without root each test says
//! so and returns.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn need_root() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root to run processes as other users");
        return false;
    }
    true
}

/// `(real, effective, saved)` uid of `pid`, from /proc/PID/status.
fn uids(pid: u32) -> Option<(u32, u32, u32)> {
    ids(pid, "Uid:")
}

fn ids(pid: u32, key: &str) -> Option<(u32, u32, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find_map(|l| l.strip_prefix(key))?;
    let v: Vec<u32> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*v.first()?, *v.get(1)?, *v.get(2)?))
}

/// A drop directory anyone may write (mode 1777), so that only the target is in the way.
fn drop_dir(sc: &Scenario) -> PathBuf {
    let d = sc.root().join("drop");
    fs::create_dir_all(&d).expect("mkdir drop");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).expect("chmod drop");
    d
}

/// `cr_checkpoint --term -f IMG PID` run as `user` (`None`: root).
fn checkpoint_as(sc: &Scenario, user: Option<(u32, u32)>, pid: u32, img: &Path) -> ToolResult {
    let argv: Vec<OsString> = vec![
        sc.tools().cr_checkpoint.clone().into(),
        "--term".into(),
        "-f".into(),
        img.into(),
        pid.to_string().into(),
    ];
    sc.run_tool(
        &format!("cr_checkpoint as {user:?}"),
        sc.command_as(user, &argv),
    )
}

/// `api_driver checkpoint PID IMG SIGKILL` (cr_request_checkpoint) run as `user`.
fn api_checkpoint_as(sc: &Scenario, user: Option<(u32, u32)>, pid: u32, img: &Path) -> ToolResult {
    let driver = sc.program("api_driver");
    let mut argv = driver.argv.clone();
    argv.extend([
        "checkpoint".into(),
        pid.to_string().into(),
        img.into(),
        SIGKILL.to_string().into(),
    ]);
    sc.run_tool(
        &format!("api_driver as {user:?}"),
        sc.command_as(user, &argv),
    )
}

/// A refused request: one line saying permission was denied, nothing written, the target
/// unharmed (still running; it PASSes later).
fn assert_refused(res: &ToolResult, img: &Path, target: &mut Job, what: &str) -> String {
    let line = res.assert_one_line_failure();
    assert!(
        line.to_lowercase().contains("permission"),
        "{what}: the message should say permission was denied: {line:?}\n{}",
        res.describe()
    );
    assert!(
        !img.exists() || fs::metadata(img).map(|m| m.len() == 0).unwrap_or(false),
        "{what}: an image was written: {}",
        img.display()
    );
    assert_no_tmp_files(img.parent().expect("image dir"));
    target.assert_running(&format!("after {what}"));
    eprintln!("{what}: {line}");
    line
}

/// Through the API the driver prints a FAIL line naming EPERM/permission, exits 1, writes
/// nothing into the image it opened.
fn assert_api_refused(res: &ToolResult, img: &Path, target: &mut Job, what: &str) {
    assert_eq!(res.code(), Some(1), "{what}:\n{}", res.describe());
    let out = res.stdout.to_lowercase();
    assert!(
        out.contains("fail api_driver: cr_request_checkpoint") && out.contains("permi"),
        "{what}: cr_request_checkpoint should fail with a permission error:\n{}",
        res.describe()
    );
    assert_eq!(
        fs::metadata(img).map(|m| m.len()).unwrap_or(0),
        0,
        "{what}: the image got data"
    );
    target.assert_running(&format!("after {what}"));
}

/// The secure.c target in `mode`, started as `user` (`None`: root), READY seen.
fn start_secure(sc: &Scenario, user: Option<(u32, u32)>, exe: &Path, mode: &str) -> Job {
    let argv: Vec<OsString> = vec![exe.into(), mode.into()];
    let mut job = sc.start(&format!("secure {mode}"), sc.command_as(user, &argv));
    job.wait_ready();
    job
}

/// Root's process: nobody may not checkpoint it, neither with cr_checkpoint nor through
/// cr_request_checkpoint; root's own checkpoint works. Then the other way round: root may
/// checkpoint nobody's process (both ways), and the image is root's, mode 0600.
#[test]
fn only_owner_or_root_may_checkpoint() {
    if !need_root() {
        return;
    }
    let sc = Scenario::as_user("sec-owner", NOBODY);
    let drop = drop_dir(&sc);
    let spinner = sc.program("spinner");
    let argv: Vec<OsString> = vec![sc.tools().cr_run.clone().into(), "--".into()]
        .into_iter()
        .chain(spinner.argv.iter().cloned())
        .collect();
    let mut roots = sc.start("spinner (root)", sc.command_as(None, &argv));
    roots.wait_ready();
    let img = drop.join("root-by-nobody");
    let res = checkpoint_as(&sc, Some(NOBODY), roots.pid(), &img);
    assert_refused(
        &res,
        &img,
        &mut roots,
        "nobody's cr_checkpoint of root's process",
    );
    let img = drop.join("root-by-nobody-api");
    let res = api_checkpoint_as(&sc, Some(NOBODY), roots.pid(), &img);
    assert_api_refused(
        &res,
        &img,
        &mut roots,
        "nobody's cr_request_checkpoint of root's process",
    );

    // Nobody's process, checkpointed by root: allowed, both ways.
    let mut nobodys = sc.start_program("spinner");
    let img = drop.join("nobody-by-root-api");
    let res = api_checkpoint_as(&sc, None, nobodys.pid(), &img);
    res.assert_success();
    nobodys.expect_signal(SIGKILL, DEATH_TIMEOUT);
    let mut nobodys = sc.start_program("spinner");
    let img = drop.join("nobody-by-root");
    checkpoint_as(&sc, None, nobodys.pid(), &img).assert_success();
    nobodys.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let md = fs::metadata(&img).expect("root's image");
    assert_eq!(md.uid(), 0, "the image belongs to the requester");
    assert_eq!(md.mode() & 0o077, 0, "image mode {:o}", md.mode() & 0o777);

    sc.go();
    roots.expect_pass(RESTART_TIMEOUT);
}

/// Processes their owner may not read: not dumpable, changed from root to nobody, set-uid root
/// started by nobody. nobody's requests are refused (cr_checkpoint and the API), with a message
/// that says why; root's succeeds; the target is unharmed.
#[test]
fn unreadable_processes_only_root_may_checkpoint() {
    if !need_root() {
        return;
    }
    let sc = Scenario::as_user("sec-unreadable", NOBODY);
    let drop = drop_dir(&sc);
    let exe = sc.program("secure").file().to_path_buf();
    // The set-uid copy: root's, mode 4755.
    let suid = sc.root().join("bin").join("secure-suid");
    fs::copy(&exe, &suid).expect("copy secure");
    std::os::unix::fs::chown(&suid, Some(0), Some(0)).expect("chown");
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).expect("chmod 4755");
    // (mode, started as, program, what the refusal must say)
    type Case<'a> = (&'a str, Option<(u32, u32)>, &'a Path, &'a str);
    let cases: [Case; 3] = [
        ("nodump", Some(NOBODY), &exe, "not dumpable"),
        ("dropuid", None, &exe, "not dumpable"),
        ("suid", Some(NOBODY), &suid, "another user's rights"),
    ];
    for (mode, user, prog, why) in cases {
        let mut job = start_secure(&sc, user, prog, mode);
        let (r, e, s) = uids(job.pid()).expect("uids");
        sc.note(&format!("secure {mode}: uids {r} {e} {s}"));
        if mode == "suid" {
            assert_eq!((r, e, s), (NOBODY.0, 0, 0), "the set-uid bit took effect");
        } else {
            assert_eq!((r, e, s), (NOBODY.0, NOBODY.0, NOBODY.0));
        }
        let img = drop.join(format!("{mode}-by-nobody"));
        let res = checkpoint_as(&sc, Some(NOBODY), job.pid(), &img);
        let line = assert_refused(
            &res,
            &img,
            &mut job,
            &format!("nobody's checkpoint of {mode}"),
        );
        assert!(
            line.contains(why) && line.contains("only root"),
            "{mode}: the message should say why ({why}) and that only root may: {line:?}"
        );
        let img = drop.join(format!("{mode}-by-nobody-api"));
        let res = api_checkpoint_as(&sc, Some(NOBODY), job.pid(), &img);
        assert_api_refused(
            &res,
            &img,
            &mut job,
            &format!("nobody's API checkpoint of {mode}"),
        );
        // Root may.
        let img = drop.join(format!("{mode}-by-root"));
        let res = checkpoint_as(&sc, None, job.pid(), &img);
        res.assert_success();
        job.expect_signal(SIGTERM, DEATH_TIMEOUT);
        let md = fs::metadata(&img).expect("root's image");
        assert_eq!(
            (md.uid(), md.mode() & 0o077),
            (0, 0),
            "{mode}: root's 0600 image"
        );
    }
    // The control case: the same program, plain, is nobody's to checkpoint.
    let mut job = start_secure(&sc, Some(NOBODY), &exe, "plain");
    let img = drop.join("plain-by-nobody");
    checkpoint_as(&sc, Some(NOBODY), job.pid(), &img).assert_success();
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

/// The agent's control socket, reached directly (not through cr_checkpoint, whose `kill(pid,
/// 0)` check stops another user first; nor could another uid wake the agent to bind its socket):
/// a request from another uid gets `EPERM` and the reason, and the program is not stopped. The client is this test binary run again as that user
/// (`LIBCR_SOCKET_CLIENT=PID`, see [`socket_client`]).
#[test]
fn control_socket_refuses_other_users() {
    if !need_root() {
        return;
    }
    let sc = Scenario::as_user("sec-socket", NOBODY);
    let mut target = sc.start_program("spinner");
    let exe = sc.root().join("bin").join("security-test");
    fs::copy(std::env::current_exe().expect("test binary"), &exe).expect("copy test binary");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod");
    let argv: Vec<OsString> = vec![
        exe.into(),
        "--exact".into(),
        "socket_client".into(),
        "--nocapture".into(),
    ];
    // The agent binds its socket when a requester first wakes it, which another uid cannot (the
    // kernel's permission check on the wake-up signal refuses it): root connects once (which
    // wakes it), so that the other uid finds the socket and the agent's own check is tested.
    let sock = cr::protocol::connect(target.pid() as i32).expect("root wakes the agent");
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(sock) };
    let mut cmd = sc.command_as(Some(OTHER_USER), &argv);
    cmd.env("LIBCR_SOCKET_CLIENT", target.pid().to_string());
    let res = sc.run_tool("socket client as another uid", cmd);
    res.assert_success();
    let reply = res
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("reply "))
        .unwrap_or_else(|| panic!("no reply printed:\n{}", res.describe()))
        .to_string();
    assert!(
        reply.starts_with(&format!("status {} ", libc::EPERM)) && reply.contains("another user"),
        "another uid's request should get EPERM naming the reason: {reply}\n{}",
        res.describe()
    );
    eprintln!("control socket, another uid: {reply}");
    target.assert_running("after another user's request on its socket");
    sc.go();
    target.expect_pass(RESTART_TIMEOUT);
}

/// The client half of [`control_socket_refuses_other_users`]: does nothing unless
/// `LIBCR_SOCKET_CLIENT` names a pid; then connects to that process's control socket, sends a
/// checkpoint request without an image descriptor and prints the reply's status and message.
#[test]
fn socket_client() {
    let Some(pid) = std::env::var("LIBCR_SOCKET_CLIENT")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    let ns = fs::metadata("/proc/self/ns/pid").expect("pid ns").ino();
    let (addr, len) = cr::protocol::socket_addr(ns, pid);
    // SAFETY: plain socket calls on our own descriptor and buffers.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let rc = libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        let req = cr::protocol::Request::new(cr::protocol::REQ_CHECKPOINT);
        let b = bytemuck::bytes_of(&req);
        let n = libc::send(fd, b.as_ptr() as *const _, b.len(), 0);
        assert_eq!(n, b.len() as isize, "send");
        let mut reply: cr::protocol::Reply = bytemuck::Zeroable::zeroed();
        let rb = bytemuck::bytes_of_mut(&mut reply);
        let n = libc::recv(fd, rb.as_mut_ptr() as *mut _, rb.len(), 0);
        assert!(n > 0, "no reply: {}", std::io::Error::last_os_error());
        println!("reply status {} {}", reply.status, reply.message());
        libc::close(fd);
    }
}

/// Images are mode 0600 even when cr_checkpoint runs with umask 000, as root and as nobody.
#[test]
fn images_are_private_whatever_the_umask() {
    if !need_root() {
        return;
    }
    let sc = Scenario::as_user("sec-umask", NOBODY);
    for user in [Some(NOBODY), None] {
        let mut job = sc.start_program("spinner");
        let img = sc
            .img_dir()
            .join(format!("umask-{}", user.map_or(0, |u| u.0)));
        let line = format!(
            "umask 000 && exec {} -f {} {}",
            sc.tools().cr_checkpoint.display(),
            img.display(),
            job.pid()
        );
        let res = sc.run_tool(
            "cr_checkpoint with umask 000",
            sc.command_as(user, &["sh", "-c", &line]),
        );
        res.assert_success();
        let md = fs::metadata(&img).expect("image");
        assert_eq!(
            md.mode() & 0o777,
            0o600,
            "image mode {:o} with umask 000",
            md.mode() & 0o777
        );
        job.assert_running("after a checkpoint without a signal");
        drop(job);
    }
}

/// An image of a root process restarted by nobody: the restored process runs as nobody (real,
/// effective and saved uid and gid), in cr_restart's namespace or with fresh pids; it never
/// gets root's ids back.
#[test]
fn root_image_restarted_by_nobody_runs_as_nobody() {
    if !need_root() {
        return;
    }
    let sc = Scenario::as_user("sec-restart", NOBODY);
    let spinner = sc.program("spinner");
    let argv: Vec<OsString> = vec![sc.tools().cr_run.clone().into(), "--".into()]
        .into_iter()
        .chain(spinner.argv.iter().cloned())
        .collect();
    let mut job = sc.start("spinner (root)", sc.command_as(None, &argv));
    job.wait_ready();
    assert_eq!(uids(job.pid()), Some((0, 0, 0)));
    let img = sc.img_dir().join("root.img");
    let res = checkpoint_as(&sc, None, job.pid(), &img);
    res.assert_success();
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    // Handed to nobody (root's image is 0600 root's).
    std::os::unix::fs::chown(&img, Some(NOBODY.0), Some(NOBODY.1)).expect("chown image");
    for args in [&[][..], &["--no-restore-pid"][..]] {
        let mut restart = sc.restart_with(&img, args);
        let pid = restart.wait_child(READY_TIMEOUT);
        // Until its address space is switched it is still cr_restart (nobody's anyway).
        wait_address_space_switched(&sc, pid, Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while Instant::now() < deadline && pid_alive(pid) {
            seen.push((uids(pid), ids(pid, "Gid:")));
            std::thread::sleep(Duration::from_millis(20));
            if seen.len() > 10 {
                break;
            }
        }
        let nob = Some((NOBODY.0, NOBODY.0, NOBODY.0));
        let nog = Some((NOBODY.1, NOBODY.1, NOBODY.1));
        assert!(
            !seen.is_empty() && seen.iter().all(|&(u, g)| u == nob && g == nog),
            "{args:?}: the restored process must run as nobody: {seen:?}\n{}",
            restart.diag()
        );
        let groups = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Groups:").map(|g| g.trim().to_string()))
            .unwrap_or_default();
        assert!(
            !groups.split_whitespace().any(|g| g == "0"),
            "{args:?}: root's group: {groups}"
        );
        restart.kill();
    }
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

/// The credentials of `pid` from /proc/PID/status: the `Uid:`, `Gid:`, `Groups:`, `CapPrm:`
/// and `CapEff:` lines, whitespace normalised.
fn creds(pid: u32) -> Option<[String; 5]> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    Some([
        line("Uid:")?,
        line("Gid:")?,
        line("Groups:")?,
        line("CapPrm:")?,
        line("CapEff:")?,
    ])
}

/// Waits until restored process `pid` has credentials `want` (it runs cr_restart's until the
/// trampoline switches them), then checks they stay so for a few samples.
fn wait_creds(sc: &Scenario, rs: &Job, pid: u32, want: &[String; 5], what: &str) {
    let deadline = Instant::now() + RESTART_TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        last = creds(pid);
        if last.as_ref() == Some(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        last.as_ref(),
        Some(want),
        "{what} (pid {pid})\n{}",
        rs.diag()
    );
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            creds(pid).as_ref(),
            Some(want),
            "{what} (pid {pid}) changed"
        );
    }
    sc.note(&format!("{what}: pid {pid} has {want:?}"));
}

/// `setpriv` as nobody with supplementary groups 100 and 65534, then `argv` (run by root).
fn as_nobody_with_groups(sc: &Scenario, argv: &[OsString]) -> std::process::Command {
    let mut full: Vec<OsString> = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--groups=100,65534",
        "--",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    full.extend(argv.iter().cloned());
    let mut cmd = sc.command_as(None, &full);
    cmd.env_remove("XDG_RUNTIME_DIR");
    cmd.env("HOME", sc.root());
    cmd
}

/// BLCR's rule (issue 13): root restarting a normal user's image gets the user's process back,
/// not a root process. A two-process tree of nobody's (groups 100 and 65534, a file only
/// nobody may read kept open), checkpointed by nobody, restarted by root: every process runs
/// with nobody's real/effective/saved/fs uid and gid and groups and no capabilities; while the
/// file is root's (0600) root's restart is refused, as nobody's would be; the restored tree
/// is nobody's to checkpoint again, and nobody (same groups, fresh pids) restarts that image
/// to PASS.
#[test]
fn root_restart_gives_the_users_process_its_ids() {
    if !need_root() {
        return;
    }
    let sc = Scenario::as_user("sec-creds", NOBODY);
    let exe = sc.program("secure").file().to_path_buf();
    // In a directory of root's (0755): the file, under a temporary directory and so saved by
    // content, cannot be replaced by a restart with nobody's rights either.
    let locked = sc.root().join("locked");
    fs::create_dir(&locked).expect("mkdir locked");
    let data = locked.join("nobodys.dat");
    fs::write(&data, b"nobody's own").expect("write data");
    std::os::unix::fs::chown(&data, Some(NOBODY.0), Some(NOBODY.1)).expect("chown data");
    fs::set_permissions(&data, fs::Permissions::from_mode(0o600)).expect("chmod data");
    let mut cmd = as_nobody_with_groups(&sc, &[exe.into(), "tree".into()]);
    cmd.env("CR_TEST_FILE", &data);
    let mut job = sc.start("secure tree (nobody, groups 100 65534)", cmd);
    job.wait_ready();
    let want: [String; 5] = [
        "65534 65534 65534 65534".into(),
        "65534 65534 65534 65534".into(),
        "100 65534".into(),
        "0000000000000000".into(),
        "0000000000000000".into(),
    ];
    let child = {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let [c] = children_of(job.pid())[..] {
                break c;
            }
            assert!(Instant::now() < deadline, "no child:\n{}", job.diag());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for pid in [job.pid(), child] {
        assert_eq!(creds(pid).as_ref(), Some(&want), "before the checkpoint");
    }
    let img = sc.img_dir().join("nobody.img");
    checkpoint_as(&sc, Some(NOBODY), job.pid(), &img).assert_success();
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    // The child's pid must be free again (its zombie reaped by whoever inherited it).
    let deadline = Instant::now() + DEATH_TIMEOUT;
    while Path::new(&format!("/proc/{child}")).exists() {
        assert!(Instant::now() < deadline, "{}", proc_summary(child));
        std::thread::sleep(Duration::from_millis(10));
    }
    let restart_argv: Vec<OsString> =
        vec![sc.tools().cr_restart.clone().into(), img.clone().into()];

    // Root's restart opens the program's files with nobody's rights: not a root-only file.
    std::os::unix::fs::chown(&data, Some(0), Some(0)).expect("chown data to root");
    let mut refused = sc.start(
        "cr_restart (root, file root's)",
        sc.command_as(None, &restart_argv),
    );
    let st = refused.wait_exit(TOOL_TIMEOUT);
    refused.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    assert!(
        st.code().is_some_and(|c| c != 0)
            && refused.stderr().contains("nobodys.dat")
            && !refused.stdout().contains("PASS"),
        "root's restart must not open a file nobody may not read:\n{}",
        refused.diag()
    );
    std::os::unix::fs::chown(&data, Some(NOBODY.0), Some(NOBODY.1)).expect("chown data back");

    let mut rs = sc.start("cr_restart (root)", sc.command_as(None, &restart_argv));
    let top = rs.wait_child(READY_TIMEOUT);
    assert_eq!(top, job.pid(), "original pids (root)");
    wait_creds(&sc, &rs, top, &want, "restored parent");
    wait_creds(&sc, &rs, child, &want, "restored child");

    // The restored tree is nobody's: checkpointed again by nobody, restarted by nobody.
    let again = sc.img_dir().join("again.img");
    checkpoint_as(&sc, Some(NOBODY), top, &again).assert_success();
    rs.wait_exit(DEATH_TIMEOUT);
    sc.go();
    // With fresh pids: in cr_restart's own user namespace (original pids without privilege)
    // only the user's own gid is mapped, and group 100 would read as 65534 there.
    let argv: Vec<OsString> = vec![
        sc.tools().cr_restart.clone().into(),
        "--no-restore-pid".into(),
        again.into(),
    ];
    let mut last = sc.start(
        "cr_restart (nobody, groups 100 65534)",
        as_nobody_with_groups(&sc, &argv),
    );
    last.expect_pass(RESTART_TIMEOUT);
}

/// A root process that dropped its effective uid for a while (`setresuid(0, 65534, 0)`),
/// restarted by root, comes back with the same three ids (and no effective capabilities, as
/// before), and PASSes (its ids and dumpable setting unchanged). Restarted by nobody it runs as
/// nobody (`root_image_restarted_by_nobody_runs_as_nobody` for a plain root process).
#[test]
fn dropped_effective_uid_comes_back() {
    if !need_root() {
        return;
    }
    let sc = Scenario::as_user("sec-seteuid", NOBODY);
    let exe = sc.program("secure").file().to_path_buf();
    let mut job = start_secure(&sc, None, &exe, "seteuid");
    let before = creds(job.pid()).expect("creds");
    assert_eq!(before[0], "0 65534 0 65534", "{before:?}");
    assert_eq!(before[4], "0000000000000000", "{before:?}");
    let img = sc.img_dir().join("seteuid.img");
    checkpoint_as(&sc, None, job.pid(), &img).assert_success();
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let argv: Vec<OsString> = vec![sc.tools().cr_restart.clone().into(), img.clone().into()];
    let mut rs = sc.start("cr_restart (root)", sc.command_as(None, &argv));
    let pid = rs.wait_child(READY_TIMEOUT);
    wait_creds(&sc, &rs, pid, &before, "restored by root");
    rs.kill();
    // Nobody's restart: nobody's ids only.
    std::os::unix::fs::chown(&img, Some(NOBODY.0), Some(NOBODY.1)).expect("chown image");
    let mut rs = sc.restart(&img);
    let pid = rs.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid, Duration::from_secs(10));
    assert_eq!(
        uids(pid),
        Some((NOBODY.0, NOBODY.0, NOBODY.0)),
        "restored by nobody\n{}",
        rs.diag()
    );
    rs.kill();
    sc.go();
    let mut rs = sc.start("cr_restart (root) GO", sc.command_as(None, &argv));
    rs.expect_pass(RESTART_TIMEOUT);
}
