//! Kernel objects behind descriptors (`src/kinds`): one small self-checking program per kind in
//! `c-tests/static/` (eventfd00, timerfd00, signalfd00, epoll00, epoll01, socket00, unix00, unix01, unix02, unix03, unix04, inotify00, inotify01, sysvshm00, mqueue00, sem00, msg00), each run through three
//! generations: start under cr_run, checkpoint --term, restart, checkpoint the restored process
//! --term, restart again, GO, PASS. Compile flags come from the program's `/* cr-test: cflags=…
//! */` line. Each also runs unprivileged (as nobody) when the tests run as root.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn static_dir() -> PathBuf {
    c_tests_dir().join("static")
}

/// `gcc -O2 -Wall -Wextra CFLAGS -o <scenario>/bin/NAME c-tests/static/NAME.c`.
fn compile(sc: &Scenario, name: &str) -> PathBuf {
    let src = static_dir().join(format!("{name}.c"));
    let text = fs::read_to_string(&src)
        .unwrap_or_else(|e| panic!("missing test program {}: {e}", src.display()));
    let cflags: Vec<&str> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("/* cr-test: cflags="))
        .map(|rest| rest.trim_end_matches("*/").split_whitespace().collect())
        .unwrap_or_default();
    let bin = sc.root().join("bin");
    fs::create_dir_all(&bin).expect("create bin dir");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod bin dir");
    let out = bin.join(name);
    let res = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg(&src)
        .args(&cflags)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc for {name}: {e}"));
    assert!(
        res.status.success(),
        "building {name} failed ({}):\n{}{}",
        res.status,
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

/// Starts `name` (compiled from c-tests/static) under cr_run; the caller waits for its READY.
fn start_under_cr_run(sc: &Scenario, name: &str) -> Job {
    let exe = compile(sc, name);
    let cr_run = sc.tools().cr_run.clone();
    let cmd = sc.command(&[cr_run.as_os_str(), "--".as_ref(), exe.as_os_str()]);
    sc.start(name, cmd)
}

/// Restarts `img` with cr_restart's `args` and waits until the restored process runs its own
/// program again; the restart job and that process's pid.
fn restart_ready(sc: &Scenario, img: &Path, args: &[&str]) -> (Job, u32) {
    let mut job = sc.restart_with(img, args);
    let pid = job.wait_child(READY_TIMEOUT);
    wait_address_space_switched(sc, pid, Duration::from_secs(10));
    (job, pid)
}

/// What `cr_info IMG` prints.
fn cr_info(sc: &Scenario, img: &Path) -> String {
    sc.run_tool(
        "cr_info",
        sc.command(&[env!("CARGO_BIN_EXE_cr_info").as_ref(), img.as_os_str()]),
    )
    .stdout
}

/// One test as root and one as nobody (skipped, saying so, when the tests are not root: the
/// first then ran unprivileged already) of `body`, each with its own scenario named `tag` and
/// `tag-nobody`.
macro_rules! root_and_nobody {
    ($($test:ident, $nobody:ident => $body:expr, $tag:literal;)*) => {$(
        #[test]
        fn $test() {
            $body(Scenario::new($tag));
        }

        #[test]
        fn $nobody() {
            if !is_root() {
                println!("note: not root: {} already ran unprivileged", stringify!($test));
                return;
            }
            $body(Scenario::as_user(concat!($tag, "-nobody"), NOBODY));
        }
    )*};
}

/// Runs `ipcrm FLAG KEY`, quietly (the object may be gone already).
fn ipcrm(flag: &str, key: u32) {
    let _ = Command::new("ipcrm")
        .args([flag, &format!("{key:#x}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes what a failed run of program `.0`, started as process `.1`, leaves behind: the keyed
/// SysV segment of sysvshm00 (key 0x6c69xxxx, the low 16 bits of its pid), the semaphore set of
/// sem00 (0x6c6axxxx), the SysV message queue of msg00 (0x6c6bxxxx), the message queue
/// of mqueue00 (`/mqueue00-PID`); all00's segment, set and queue (0x6c6c…, 0x6c6d…, 0x6c6e…),
/// message queue and named semaphore (`/all00-PID`). The programs remove their own when they
/// pass.
struct Leftovers(&'static str, u32);

impl Drop for Leftovers {
    fn drop(&mut self) {
        match self.0 {
            "sysvshm00" => ipcrm("-M", 0x6c69_0000 | (self.1 & 0xffff)),
            "sem00" => ipcrm("-S", 0x6c6a_0000 | (self.1 & 0xffff)),
            "msg00" => ipcrm("-Q", 0x6c6b_0000 | (self.1 & 0xffff)),
            "mqueue00" => {
                let name = std::ffi::CString::new(format!("/mqueue00-{}", self.1)).unwrap();
                // SAFETY: mq_unlink reads the NUL-terminated name.
                unsafe { libc::mq_unlink(name.as_ptr()) };
            }
            "all00" => {
                let low = self.1 & 0xffff;
                ipcrm("-M", 0x6c6c_0000 | low);
                ipcrm("-S", 0x6c6d_0000 | low);
                ipcrm("-Q", 0x6c6e_0000 | low);
                let name = std::ffi::CString::new(format!("/all00-{}", self.1)).unwrap();
                // SAFETY: mq_unlink reads the NUL-terminated name.
                unsafe { libc::mq_unlink(name.as_ptr()) };
                let _ = fs::remove_file(format!("/dev/shm/sem.all00-{}", self.1));
            }
            _ => {}
        }
    }
}

/// Three generations of `name`; no warning may say one of its objects is not restored.
fn three_generations(sc: Scenario, name: &'static str) {
    three_generations_with(sc, name, "--term", SIGTERM)
}

/// Three generations of `name`, each checkpoint ending the process with `flag` (`--term`,
/// `--kill`), which it dies of (`sig`).
fn three_generations_with(sc: Scenario, name: &'static str, flag: &str, sig: i32) {
    let mut gen1 = start_under_cr_run(&sc, name);
    let _left = Leftovers(name, gen1.pid());
    gen1.wait_ready();
    let img1 = sc.next_image_path();
    let res = sc.checkpoint_to(gen1.pid(), &[flag], &img1);
    res.assert_success();
    assert!(
        !res.stderr.contains("closed at restart") && !res.stderr.contains("comes back reset"),
        "every object of {name} must be saved:\n{}",
        res.describe()
    );
    gen1.expect_signal(sig, DEATH_TIMEOUT);

    let (mut gen2, pid2) = restart_ready(&sc, &img1, &[]);
    let img2 = sc.checkpoint_restored(pid2, &[flag]);
    gen2.expect_signal(sig, DEATH_TIMEOUT);
    assert!(
        !gen2.stdout().contains("PASS") && !gen2.stdout().contains("FAIL"),
        "generation 2 must not have finished:\n{}",
        gen2.diag()
    );

    let (mut gen3, _) = restart_ready(&sc, &img2, &[]);
    sc.go();
    gen3.expect_pass(RESTART_TIMEOUT);
    assert!(
        !gen3.stderr().contains("warning"),
        "the restart of {name} must not warn:\n{}",
        gen3.diag()
    );
}

/// The root and nobody tests of [`three_generations`] of each program.
macro_rules! kind_tests {
    ($($test:ident, $nobody:ident => $prog:literal;)*) => {
        root_and_nobody! {
            $($test, $nobody => |sc| three_generations(sc, $prog), $prog;)*
        }
    };
}

kind_tests! {
    eventfd, eventfd_unprivileged => "eventfd00";
    timerfd, timerfd_unprivileged => "timerfd00";
    signalfd, signalfd_unprivileged => "signalfd00";
    epoll, epoll_unprivileged => "epoll00";
    epoll_shared, epoll_shared_unprivileged => "epoll01";
    socket, socket_unprivileged => "socket00";
    unix, unix_unprivileged => "unix00";
    unix_messages, unix_messages_unprivileged => "unix01";
    unix_between_processes, unix_between_processes_unprivileged => "unix03";
    inotify, inotify_unprivileged => "inotify00";
    inotify_paths, inotify_paths_unprivileged => "inotify01";
    sysvshm, sysvshm_unprivileged => "sysvshm00";
    mqueue, mqueue_unprivileged => "mqueue00";
    all_together, all_together_unprivileged => "all00";
    sem, sem_unprivileged => "sem00";
    msg, msg_unprivileged => "msg00";
}

/// Megabytes waiting in a unix stream pair and a TCP connection on loopback between a parent
/// and its child (the reader not reading), and 200 KiB and 100 KiB messages in a seqpacket
/// and a datagram pair (unix04.c): checkpointed with `--kill`, restarted, checkpointed again
/// (the restored TCP connection holds part of its bytes in the writer's send queue: drained
/// into the image again), restarted; every byte comes back in order (checked against its
/// sequence and checksum, counts too).
fn megabytes_queued(sc: Scenario) {
    three_generations_with(sc, "unix04", "--kill", SIGKILL);
}

root_and_nobody! {
    unix_megabytes_queued, unix_megabytes_queued_unprivileged => megabytes_queued, "unix04";
}

/// Every program in c-tests/static has its test above.
#[test]
fn every_static_program_is_tested() {
    let known = [
        "eventfd00",
        "timerfd00",
        "signalfd00",
        "epoll00",
        "epoll01",
        "socket00",
        "unix00",
        "unix01",
        "unix02",
        "unix03",
        "unix04",
        "inotify00",
        "inotify01",
        "sysvshm00",
        "mqueue00",
        "all00",
        "sem00",
        "msg00",
    ];
    for e in fs::read_dir(static_dir()).expect("c-tests/static") {
        let path = e.expect("dir entry").path();
        if path.extension().is_some_and(|x| x == "c") {
            let stem = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            assert!(
                known.contains(&stem.as_str()),
                "c-tests/static/{stem}.c has no test in tests/kinds.rs"
            );
        }
    }
}

/// A SysV key still in use by a live object at restart (the checkpointed program `prog` still
/// runs and uses it): one clear line naming the key and how to free it (`fix`, e.g.
/// "ipcrm -M 0x6c69"), non-zero exit, nothing started; the original finishes normally.
fn key_in_use_is_refused(prog: &'static str, fix: &str) {
    let sc = Scenario::new(&format!("{prog}-key-in-use"));
    let mut orig = start_under_cr_run(&sc, prog);
    orig.wait_ready();
    let img = sc.next_image_path();
    sc.checkpoint_to(orig.pid(), &[], &img).assert_success();
    let _left = Leftovers(prog, orig.pid());
    let mut again = sc.restart_with(&img, &["--no-restore-pid"]);
    let status = again.wait_exit(RESTART_TIMEOUT);
    assert!(
        !status.success(),
        "the restart must fail:\n{}",
        again.diag()
    );
    again.wait_output_closed(RESTART_TIMEOUT);
    let err = again.stderr();
    assert!(
        err.contains("is in use") && err.contains(fix),
        "the error must name the key in use:\n{}",
        again.diag()
    );
    assert!(
        !again.stdout().contains("PASS"),
        "nothing may run:\n{}",
        again.diag()
    );
    sc.go();
    orig.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn sysvshm_key_in_use_is_refused() {
    key_in_use_is_refused("sysvshm00", "ipcrm -M 0x6c69");
}

#[test]
fn sem_key_in_use_is_refused() {
    key_in_use_is_refused("sem00", "ipcrm -S 0x6c6a");
}

#[test]
fn msg_key_in_use_is_refused() {
    key_in_use_is_refused("msg00", "ipcrm -Q 0x6c6b");
}

/// A message queue removed between checkpoint and restart is made again by name, empty, with
/// its attributes and mode; the checkpoint warned that its messages are not saved.
#[test]
fn mqueue_gone_is_made_again() {
    let sc = Scenario::new("mqueue00-gone");
    let mut gen1 = start_under_cr_run(&sc, "mqueue00");
    let _left = Leftovers("mqueue00", gen1.pid());
    gen1.wait_ready();
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(gen1.pid(), &["--term"], &img);
    res.assert_success();
    assert!(
        res.stderr.contains("holding messages, which are not saved"),
        "the checkpoint must warn about the queued messages:\n{}",
        res.describe()
    );
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let name = std::ffi::CString::new(format!("/mqueue00-{}", gen1.pid())).unwrap();
    // SAFETY: mq_unlink reads the NUL-terminated name.
    assert_eq!(
        unsafe { libc::mq_unlink(name.as_ptr()) },
        0,
        "remove the queue"
    );

    let (mut gen2, _) = restart_ready(&sc, &img, &[]);
    // SAFETY: mq_open reads the name; mq_getattr/fstat write locals; the descriptor is closed.
    let (attr, mode) = unsafe {
        let q = libc::mq_open(name.as_ptr(), libc::O_RDONLY);
        assert!(q >= 0, "the queue must exist again:\n{}", gen2.diag());
        let mut a: libc::mq_attr = std::mem::zeroed();
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::mq_getattr(q, &mut a), 0);
        assert_eq!(libc::fstat(q, &mut st), 0);
        libc::mq_close(q);
        (a, st.st_mode & 0o777)
    };
    assert_eq!(
        (attr.mq_maxmsg, attr.mq_msgsize, attr.mq_curmsgs, mode),
        (5, 64, 0, 0o640),
        "attributes and mode of the queue made again"
    );
    assert!(
        !gen2.stderr().contains("warning"),
        "the restart must not warn:\n{}",
        gen2.diag()
    );
    gen2.kill();
}

/// An inotify watch whose file is gone at restart: cr_restart warns, naming the watch, and the
/// others come back.
#[test]
fn inotify_watch_gone_is_warned() {
    let sc = Scenario::new("inotify00-gone");
    let mut gen1 = start_under_cr_run(&sc, "inotify00");
    gen1.wait_ready();
    let dir = gen1
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("DIR ").map(PathBuf::from))
        .expect("inotify00 prints its directory");
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    let img = sc.next_image_path();
    sc.checkpoint_to(gen1.pid(), &["--term"], &img)
        .assert_success();
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    fs::remove_dir(dir.join("sub")).expect("remove the watched subdirectory");

    let (mut gen2, _) = restart_ready(&sc, &img, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let warned = |e: &str| {
        e.contains("inotify watch 5 on ")
            && e.contains("/sub, which is gone")
            && e.contains("not found")
    };
    while !warned(&gen2.stderr()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = gen2.stderr();
    assert!(
        warned(&err),
        "the restart must warn about watch 5:\n{}",
        gen2.diag()
    );
    assert!(
        !err.contains("inotify watch 2") && !err.contains("inotify watch 4"),
        "the other watches come back:\n{}",
        gen2.diag()
    );
    gen2.kill();
}

/// Removes SysV message queue `key` (as the tests' user: root, or the queue's owner).
fn remove_msg_queue(key: u32) {
    // SAFETY: msgget and msgctl(IPC_RMID) take no buffers.
    let gone = unsafe {
        let id = libc::msgget(key as i32, 0);
        id >= 0 && libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) == 0
    };
    assert!(gone, "remove SysV message queue {key:#x}");
}

/// The queue of msg00 removed after each checkpoint (so nothing is left to take over): the
/// restart makes it again from the image with its mode, capacity and messages, and the restored
/// process saves it again at its own checkpoint (it is the queue's last user again), so it comes
/// back a second time; cr_info lists it.
fn msg_queue_made_again(sc: Scenario) {
    let mut gen1 = start_under_cr_run(&sc, "msg00");
    let _left = Leftovers("msg00", gen1.pid());
    let key = 0x6c6b_0000u32 | (gen1.pid() & 0xffff);
    gen1.wait_ready();
    let img1 = sc.next_image_path();
    sc.checkpoint_to(gen1.pid(), &["--term"], &img1)
        .assert_success();
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let info = cr_info(&sc, &img1);
    assert!(
        info.contains(&format!("key {key:#x}, mode 0640"))
            && info.contains("5 messages (1013 bytes)"),
        "cr_info must list the queue:\n{info}"
    );
    remove_msg_queue(key);

    let (mut gen2, pid2) = restart_ready(&sc, &img1, &[]);
    let img2 = sc.checkpoint_restored(pid2, &["--term"]);
    gen2.expect_signal(SIGTERM, DEATH_TIMEOUT);
    remove_msg_queue(key);

    let (mut gen3, _) = restart_ready(&sc, &img2, &[]);
    sc.go();
    gen3.expect_pass(RESTART_TIMEOUT);
    assert!(
        !gen3.stderr().contains("warning"),
        "the restart must not warn:\n{}",
        gen3.diag()
    );
}

root_and_nobody! {
    msg_queue_gone_is_made_again, msg_queue_gone_is_made_again_unprivileged => msg_queue_made_again, "msg00-gone";
}

/// inotify01's directory copied elsewhere (new inodes) and the original removed: restarted with
/// `--relocate OLD=NEW`, its watches are added again by their relocated paths and give events
/// there; the checkpoint said that the 32 bytes of queued events are lost.
fn inotify_relocated(sc: Scenario) {
    let mut gen1 = start_under_cr_run(&sc, "inotify01");
    gen1.wait_ready();
    let old = gen1
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("DIR ").map(PathBuf::from))
        .expect("inotify01 prints its directory");
    let new = PathBuf::from(format!("{}-moved", old.display()));
    struct Gone(Vec<PathBuf>);
    impl Drop for Gone {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
    let _gone = Gone(vec![old.clone(), new.clone()]);
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(gen1.pid(), &["--term"], &img);
    res.assert_success();
    assert!(
        res.stderr
            .contains("inotify instance with 32 bytes of queued unread events, which are lost"),
        "the checkpoint must say the queued events are lost:\n{}",
        res.describe()
    );
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&old)
        .arg(&new)
        .status()
        .expect("run cp");
    assert!(cp.success(), "copy the watched directory");
    fs::remove_dir_all(&old).expect("remove the original directory");

    let reloc = format!("{}={}", old.display(), new.display());
    let (mut gen2, _) = restart_ready(&sc, &img, &["--relocate", &reloc]);
    sc.go();
    gen2.expect_pass(RESTART_TIMEOUT);
    assert!(
        !gen2.stderr().contains("warning"),
        "the relocated restart must not warn:\n{}",
        gen2.diag()
    );
}

root_and_nobody! {
    inotify_watches_follow_relocate, inotify_watches_follow_relocate_unprivileged => inotify_relocated, "inotify01-relocate";
}

/// Removes SysV semaphore set `key` (as the tests' user: root, or the set's owner).
fn remove_sem_set(key: u32) {
    // SAFETY: semget and semctl(IPC_RMID) take no buffers.
    let gone = unsafe {
        let id = libc::semget(key as i32, 0, 0);
        id >= 0 && libc::semctl(id, 0, libc::IPC_RMID) == 0
    };
    assert!(gone, "remove SysV semaphore set {key:#x}");
}

/// The set of sem00 removed after each checkpoint (so nothing is left to take over): the
/// restart makes it again from the image with its values, and the restored process, not the
/// restart's pool, is its last operator again, so its own checkpoint saves the set a second
/// time and the values 0 4 2 come back across both generations.
fn sem_set_made_again(sc: Scenario) {
    let mut gen1 = start_under_cr_run(&sc, "sem00");
    let _left = Leftovers("sem00", gen1.pid());
    let key = 0x6c6a_0000u32 | (gen1.pid() & 0xffff);
    gen1.wait_ready();
    let img1 = sc.next_image_path();
    sc.checkpoint_to(gen1.pid(), &["--term"], &img1)
        .assert_success();
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);
    remove_sem_set(key);

    let (mut gen2, pid2) = restart_ready(&sc, &img1, &[]);
    let img2 = sc.checkpoint_restored(pid2, &["--term"]);
    gen2.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let info = cr_info(&sc, &img2);
    assert!(
        info.contains(&format!("key {key:#x}, mode 0640, values 0 4 2")),
        "the second generation's image must hold the semaphore set {key:#x}:\n{info}"
    );
    remove_sem_set(key);

    let (mut gen3, _) = restart_ready(&sc, &img2, &[]);
    sc.go();
    gen3.expect_pass(RESTART_TIMEOUT);
    assert!(
        !gen3.stderr().contains("warning"),
        "the restart must not warn:\n{}",
        gen3.diag()
    );
}

root_and_nobody! {
    sem_set_gone_is_made_again, sem_set_gone_is_made_again_unprivileged => sem_set_made_again, "sem00-gone";
}

/// unix02: the checkpoint names what a Unix socket cannot keep, the listener's connection
/// waiting to be accepted, with its fd and socket, and nothing about the descriptors in flight,
/// which are saved (cr_info lists them); the restart says the waiting connection's client lost
/// its other end; the program then sees the connection dropped, the listener working, the
/// pairs' bytes and messages with their descriptors in their places (a pipe end, an eventfd,
/// one of the program's own sockets), and an empty seqpacket message at the end of a queue.
fn unix_losses(sc: Scenario) {
    let mut gen1 = start_under_cr_run(&sc, "unix02");
    gen1.wait_ready();
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(gen1.pid(), &["--term"], &img);
    res.assert_success();
    let warned = |what: &str| {
        res.stderr
            .lines()
            .any(|l| l.contains("(socket:[") && l.contains(what) && l.split("fd ").nth(1).is_some())
    };
    assert!(
        warned("with connections waiting to be accepted (1); they are dropped at restart"),
        "the checkpoint must name the listener's waiting connection:\n{}",
        res.describe()
    );
    assert!(
        !res.stderr.contains("SCM_RIGHTS"),
        "the descriptors in flight are saved:\n{}",
        res.describe()
    );
    let info = cr_info(&sc, &img);
    assert!(
        info.contains("unix stream socket")
            && info.contains("1 descriptors in flight (saved as fds")
            && info.contains("unix seqpacket socket")
            && info.contains("3 messages (4 bytes) queued, 3 descriptors in flight (saved as fds"),
        "cr_info must list the descriptors in flight:\n{info}"
    );
    assert!(
        !res.stderr.contains("closed at restart"),
        "every socket of unix02 must be saved:\n{}",
        res.describe()
    );
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);

    let (mut gen2, _) = restart_ready(&sc, &img, &[]);
    sc.go();
    gen2.expect_pass(RESTART_TIMEOUT);
    assert!(
        gen2.stderr()
            .contains("the other end of its unix socket is not part of the restart"),
        "the restart must say the waiting connection's client lost its peer:\n{}",
        gen2.diag()
    );
    assert!(
        !gen2.stderr().contains("in flight"),
        "every descriptor in flight comes back:\n{}",
        gen2.diag()
    );
}

root_and_nobody! {
    unix_losses_are_warned, unix_losses_are_warned_unprivileged => unix_losses, "unix02";
}

/// socket00's connection to a process outside the job comes back reset, and the restart says
/// so naming the descriptor and both addresses (the connection inside the job is not named);
/// the checkpoint warned about each TCP connection that it comes back only if its peer does.
fn tcp_reset_named(sc: Scenario) {
    let mut gen1 = start_under_cr_run(&sc, "socket00");
    gen1.wait_ready();
    let img = sc.next_image_path();
    let res = sc.checkpoint_to(gen1.pid(), &["--term"], &img);
    res.assert_success();
    // Both ends of the connection inside the job and the one to the outside are named.
    let warned = res
        .stderr
        .lines()
        .filter(|l| {
            l.contains("(socket:[")
                && l.contains("is a TCP connection; after restart it is connected again only if its peer is part of the restart, else it fails with ECONNRESET")
        })
        .count();
    assert_eq!(
        warned,
        3,
        "the checkpoint must warn about each TCP connection:\n{}",
        res.describe()
    );
    gen1.expect_signal(SIGTERM, DEATH_TIMEOUT);

    let (mut gen2, _) = restart_ready(&sc, &img, &[]);
    let resets = |e: &str| {
        e.lines()
            .filter(|l| {
                l.contains("cr_restart: warning: fd ")
                    && l.contains(": TCP connection 127.0.0.1:")
                    && l.contains(" to 127.0.0.1:")
                    && l.contains("comes back reset")
            })
            .count()
    };
    sc.go();
    gen2.expect_pass(RESTART_TIMEOUT);
    assert_eq!(
        resets(&gen2.stderr()),
        1,
        "the restart must name the one connection it resets:\n{}",
        gen2.diag()
    );
}

root_and_nobody! {
    tcp_reset_is_named, tcp_reset_is_named_unprivileged => tcp_reset_named, "socket00-reset";
}

/// cr_info lists every kernel object of all00's image, one line each, with its state.
#[test]
fn cr_info_lists_kernel_objects() {
    let sc = Scenario::new("all00-cr-info");
    let mut job = start_under_cr_run(&sc, "all00");
    let _left = Leftovers("all00", job.pid());
    job.wait_ready();
    let img = sc.next_image_path();
    sc.checkpoint_to(job.pid(), &[], &img).assert_success();
    job.kill();
    let info = cr_info(&sc, &img);
    let low = job.pid() & 0xffff;
    for want in [
        "eventfd count 3".to_string(),
        "timerfd clock 1 expires in ".into(),
        ", interval 0.030000000 s".into(),
        "signalfd for signals ".into(),
        "epoll watching 12: ".into(),
        "inotify, 1 watches: ".into(),
        "tcp socket listening on 127.0.0.1:".into(),
        "tcp connection 127.0.0.1:".into(),
        "udp socket 127.0.0.1:".into(),
        "unix stream socket listening on ".into(),
        "/all00.sock".into(),
        "unix stream socket ".into(),
        "6 bytes queued".into(),
        "1 messages (3 bytes) queued, 1 descriptors in flight (saved as fds ".into(),
        "Descriptors in flight in unix sockets' queues (1; sent again at restart)".into(),
        format!("POSIX message queue /all00-{}", job.pid()),
        format!("key {:#x}, mode 0640, values 6 1", 0x6c6d_0000 | low),
        format!("key {:#x}, mode 0640, owner", 0x6c6e_0000 | low),
        "1 messages (8 bytes)".into(),
        format!("key {:#x}, size 4096, mode 0640", 0x6c6c_0000 | low),
        // glibc maps a named semaphore through a temporary name it then links as sem.NAME.
        "/dev/shm/sem.".into(),
    ] {
        assert!(info.contains(&want), "cr_info must list {want:?}:\n{info}");
    }
}
