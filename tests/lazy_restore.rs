//! Lazy restore (issue 11, "resume at once"): cr_restart maps long runs of private page data
//! straight from the image file, and the kernel reads pages when the program first touches them.
//! c-tests/lazymem.c checks its whole region after the restart (pattern, never-touched and
//! zero-written chunks still zero, anonymous `MADV_DONTNEED` semantics, rewrites).

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// MiB of lazymem's region per process: above `restore::memory::LAZY_MIN_DATA` (32 MiB).
const MB: &str = "48";

/// Starts test program `name` with `args` under cr_run and checkpoints it with `--term` (and
/// `-T`, the whole tree, when `tree`); the image.
fn term_image(sc: &Scenario, name: &str, args: &[&str], tree: bool) -> PathBuf {
    let mut prog = sc.program(name);
    prog.argv.extend(args.iter().map(Into::into));
    let mut job = sc.start(name, sc.under_cr_run(&prog));
    job.wait_ready();
    let flags: &[&str] = if tree { &["-T", "--term"] } else { &["--term"] };
    let img = sc.checkpoint(job.pid(), flags);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    img
}

/// Starts lazymem (with `children` children), checkpoints it (the whole tree) with --term.
fn lazymem_image(sc: &Scenario, children: u32) -> PathBuf {
    term_image(sc, "lazymem", &[MB, &children.to_string()], children > 0)
}

/// Waits until cr_restart --verbose says every process runs again; returns its stderr.
fn wait_running(sc: &Scenario, restart: &mut Job) -> String {
    let deadline = Instant::now() + RESTART_TIMEOUT;
    loop {
        let err = restart.stderr();
        if err.contains("running again") {
            return err;
        }
        assert!(
            Instant::now() < deadline && restart.is_running(),
            "cr_restart did not report the program running:\n{}\n{}",
            restart.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The restored processes (the restart's descendants) that map `img`'s file, deleted.
fn mapping_deleted_image(restart: &Job, img: &Path) -> usize {
    let name = format!("{} (deleted)", img.display());
    descendants(restart.pid())
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/maps"))
                .is_ok_and(|m| m.lines().any(|l| l.ends_with(&name)))
        })
        .count()
}

/// The restored process (a descendant of the restart) that maps `img`'s file.
fn restored_mapping(restart: &Job, img: &Path) -> u32 {
    let name = img.display().to_string();
    descendants(restart.pid())
        .into_iter()
        .find(|p| {
            fs::read_to_string(format!("/proc/{p}/maps"))
                .is_ok_and(|m| m.lines().any(|l| l.ends_with(&name)))
        })
        .unwrap_or_else(|| panic!("no restored process maps {name}:\n{}", restart.diag()))
}

/// Restarts `img` (lazy unless `eager`), removes the image as soon as the program runs again,
/// and expects PASS. `procs`: processes in the image.
fn restart_delete_pass(sc: &Scenario, img: &Path, eager: bool, procs: usize) {
    let args: &[&str] = if eager {
        &["--verbose", "--eager"]
    } else {
        &["--verbose"]
    };
    let mut restart = sc.restart_with(img, args);
    let err = wait_running(sc, &mut restart);
    fs::remove_file(img).expect("remove the image");
    let want = if eager {
        "read in full and checked"
    } else {
        "page data mapped from the image"
    };
    assert_eq!(
        err.matches(want).count(),
        procs,
        "cr_restart --verbose must say, for each process, '{want}':\n{err}"
    );
    let mapping = mapping_deleted_image(&restart, img);
    if eager {
        assert_eq!(mapping, 0, "an eager restore must not map the image");
    } else {
        assert!(
            mapping >= procs,
            "{mapping} restored process(es) map the deleted image, {procs} expected:\n{}",
            restart.diag()
        );
    }
    sc.go();
    restart.expect_pass(RESTART_TIMEOUT);
}

/// Lazy restore of one process; the image is deleted right after the program runs again.
#[test]
fn lazy_restore_image_deleted() {
    let sc = Scenario::new("lazy-deleted");
    let img = lazymem_image(&sc, 0);
    restart_delete_pass(&sc, &img, false, 1);
}

/// The same as an unprivileged user (the restore runs in a private user + pid namespace).
#[test]
fn lazy_restore_image_deleted_nobody() {
    if !is_root() {
        eprintln!("skipped: needs root to run as nobody");
        return;
    }
    let sc = Scenario::as_user("lazy-deleted-nobody", NOBODY);
    let img = lazymem_image(&sc, 0);
    restart_delete_pass(&sc, &img, false, 1);
}

/// `--eager` reads everything (and checks the page data's checksum) before the program runs.
#[test]
fn eager_restore_image_deleted() {
    let sc = Scenario::new("lazy-eager");
    let img = lazymem_image(&sc, 0);
    restart_delete_pass(&sc, &img, true, 1);
}

/// `--eager` reads page data on a thread per core; when no reader thread can be created it
/// reads everything on the restoring thread, and `--verbose` must say so (issue 11: never
/// degrade silently). `LIBCR_TEST_NO_READER_THREADS=1` is a test knob (cr_restart's
/// `restore::memory`) that makes every reader thread fail to start with EAGAIN, as a process
/// or user out of threads would (`RLIMIT_NPROC` is per user: unreliable here).
#[test]
fn eager_restore_without_reader_threads_says_so() {
    let sc = Scenario::new("lazy-eager-nothreads");
    let img = lazymem_image(&sc, 0);
    let mut argv = vec![sc.tools().cr_restart.clone().into_os_string()];
    argv.extend(["--verbose", "--eager"].map(std::ffi::OsString::from));
    argv.push(img.clone().into_os_string());
    let mut cmd = sc.command(&argv);
    cmd.env("LIBCR_TEST_NO_READER_THREADS", "1");
    let mut restart = sc.start("cr_restart --eager (no reader threads)", cmd);
    let err = wait_running(&sc, &mut restart);
    assert!(
        err.contains("read in full and checked"),
        "an eager restore reads everything:\n{err}"
    );
    assert!(
        err.contains(
            "page data of 1 process(es) read with fewer reader threads than cores, 1 of them on the restoring thread alone: a thread could not be created"
        ),
        "cr_restart --verbose must say that no reader thread could be created:\n{err}"
    );
    sc.go();
    restart.expect_pass(RESTART_TIMEOUT);
    // Without the knob: nothing to say.
    let img = lazymem_image(&sc, 0);
    let mut restart = sc.restart_with(&img, &["--verbose", "--eager"]);
    let err = wait_running(&sc, &mut restart);
    assert!(
        !err.contains("fewer reader threads"),
        "reader threads were created, nothing to say:\n{err}"
    );
    sc.go();
    restart.expect_pass(RESTART_TIMEOUT);
}

/// A tree image: each process maps its own part of the one file.
#[test]
fn lazy_restore_tree() {
    let sc = Scenario::new("lazy-tree");
    let img = lazymem_image(&sc, 2);
    restart_delete_pass(&sc, &img, false, 3);
}

/// glibc's `realloc` of a large block after a lazy restart: glibc grows a block it mapped by
/// itself with its internal `mremap`, which over memory mapped from the image added the file's
/// next bytes or SIGBUS past its end (the program died with signal 7); the preload stub's
/// `realloc` grows such blocks by copying. The program checks the old bytes and the grown block.
#[test]
fn lazily_restored_block_grows_with_realloc() {
    let sc = Scenario::new("lazy-realloc");
    let img = term_image(&sc, "lazy_realloc", &[MB, "256"], false);
    let mut restart = sc.restart_with(&img, &["--verbose"]);
    let err = wait_running(&sc, &mut restart);
    assert!(
        err.contains("page data mapped from the image"),
        "the restart must be lazy for this test:\n{err}"
    );
    sc.go();
    restart.expect_pass(RESTART_TIMEOUT);
}

/// A lazily restored program checkpointed again: the memory mapped from the first image is
/// saved by content as anonymous memory, so the second image does not need the first.
#[test]
fn lazy_restored_program_checkpoints_by_content() {
    let sc = Scenario::new("lazy-again");
    let first = lazymem_image(&sc, 0);
    let mut restart = sc.restart_with(&first, &["--verbose"]);
    wait_running(&sc, &mut restart);
    let pid = restored_mapping(&restart, &first);
    let second = sc.checkpoint_restored(pid, &["--term"]);
    restart.wait_exit(DEATH_TIMEOUT);
    fs::remove_file(&first).expect("remove the first image");
    restart_delete_pass(&sc, &second, false, 1);
}

/// A small image (under 32 MiB of page data) is read and checked in full, and says so.
#[test]
fn small_image_is_read_in_full() {
    let sc = Scenario::new("lazy-small");
    let img = term_image(&sc, "lazymem", &["4"], false);
    let mut restart = sc.restart_with(&img, &["--verbose"]);
    let err = wait_running(&sc, &mut restart);
    assert!(
        err.contains("read in full") && err.contains("is small"),
        "cr_restart --verbose must say why the page data is read:\n{err}"
    );
    sc.go();
    restart.expect_pass(RESTART_TIMEOUT);
}

/// A lazily restored program checkpointed with `--clobber` to the very image it runs from: the
/// old file is replaced, not truncated under the program (which would read its memory from the
/// truncated file: SIGBUS in the agent while it writes, or in the program).
#[test]
fn clobber_of_the_image_a_program_runs_from() {
    let sc = Scenario::new("lazy-clobber");
    let img = lazymem_image(&sc, 0);
    let mut restart = sc.restart_with(&img, &["--verbose"]);
    wait_running(&sc, &mut restart);
    let pid = restored_mapping(&restart, &img);
    sc.checkpoint_to(pid, &["--clobber", "--term"], &img)
        .assert_success();
    restart.expect_signal(SIGTERM, DEATH_TIMEOUT);
    restart_delete_pass(&sc, &img, false, 1);
}

/// Flips the CPU affinity of every thread of `pid` between two CPUs until `stop` is set, so that
/// each thread that runs is moved to the other CPU again and again.
fn migrate_threads(pid: u32, cpus: (usize, usize), stop: &std::sync::atomic::AtomicBool) {
    let mut first = true;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let cpu = if first { cpus.0 } else { cpus.1 };
        first = !first;
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                    // SAFETY: sched_setaffinity with a valid set of the right size.
                    unsafe {
                        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
                    };
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Two CPUs this test may run threads on, or None (then the test cannot provoke anything).
fn two_cpus() -> Option<(usize, usize)> {
    // SAFETY: a zeroed cpu_set_t, filled by sched_getaffinity for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return None;
    }
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    Some((cpus.next()?, cpus.next()?))
}

/// Checkpoints `pid` `n` times while its threads are moved between two CPUs all along, and
/// checks each image's page data with `cr_info --check`.
fn checkpoints_while_migrating(sc: &Scenario, pid: u32, cpus: (usize, usize), n: usize) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        std::thread::spawn(move || migrate_threads(pid, cpus, &stop))
    };
    let mut bad = Vec::new();
    for _ in 0..n {
        let img = sc.checkpoint(pid, &["-v"]);
        let mut argv: Vec<std::ffi::OsString> = vec![env!("CARGO_BIN_EXE_cr_info").into()];
        argv.push("--check".into());
        argv.push("-q".into());
        argv.push(img.clone().into());
        let res = sc.run_tool("cr_info --check", sc.command(&argv));
        if !res.success() {
            bad.push(res.describe());
        }
        fs::remove_file(&img).expect("remove the image");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper
        .join()
        .expect("the thread moving the program's threads");
    assert!(
        bad.is_empty(),
        "{} of {n} images failed their check:\n{}\n{}",
        bad.len(),
        bad.join("\n"),
        sc.log()
    );
}

/// The kernel writes a thread's rseq area (the CPU number fields, in the thread's TLS) each time
/// the thread comes back to user space after it was preempted or moved to another CPU. The
/// control thread's TLS is part of the image, and a restored process's control thread has an
/// rseq area registered: when it was moved between two CPUs while it wrote the page data, those
/// bytes changed between the hash of a piece and its write, and the image failed its checksum
/// at restart ("page data checksum mismatch"; trees `checkpoint_through_cr_restart_unprivileged`
/// failed so under load, most often with the asynchronous writes, whose disk reads a piece while
/// it is hashed). The agent now suspends the control thread's registration while it writes.
#[test]
fn restored_process_checkpoints_while_moved_between_cpus() {
    let Some(cpus) = two_cpus() else {
        eprintln!("skipped: needs two CPUs to move threads between");
        return;
    };
    let sc = Scenario::new("lazy-migrate");
    let first = lazymem_image(&sc, 0);
    let mut restart = sc.restart_with(&first, &["--verbose"]);
    wait_running(&sc, &mut restart);
    let pid = descendants(restart.pid())
        .into_iter()
        .find(|&p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "lazymem")
        })
        .unwrap_or_else(|| panic!("no restored lazymem:\n{}", restart.diag()));
    checkpoints_while_migrating(&sc, pid, cpus, 16);
    sc.go();
    restart.expect_pass(RESTART_TIMEOUT);
}

/// The same for a control thread that is a pthread from the start (`LIBCR_CONTROL_EAGER=1`),
/// whose rseq area glibc registered.
#[test]
fn pthread_control_thread_checkpoints_while_moved_between_cpus() {
    let Some(cpus) = two_cpus() else {
        eprintln!("skipped: needs two CPUs to move threads between");
        return;
    };
    let sc = Scenario::new("lazy-migrate-eager");
    let mut prog = sc.program("lazymem");
    prog.argv.push(MB.into());
    let mut cmd = sc.under_cr_run(&prog);
    cmd.env("LIBCR_CONTROL_EAGER", "1");
    let mut job = sc.start("lazymem", cmd);
    job.wait_ready();
    checkpoints_while_migrating(&sc, job.pid(), cpus, 16);
    sc.go();
    job.expect_pass(RESTART_TIMEOUT);
}

/// Whether a direct write can be opened in `dir` (the file system takes `O_DIRECT`).
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-probe");
    let ok = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(0o40000) // O_DIRECT
        .open(&probe)
        .is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// c-tests/scattered.c (64 MiB whose pages are not physically contiguous, with its own
/// checksum) checkpointed with `--term` and `-v` (with `env` for cr_run, and `--cow` when
/// `cow`); returns the image and the line of `-v` that says how it was written.
fn scattered_image(sc: &Scenario, env: &[(&str, &str)], cow: bool) -> (PathBuf, String) {
    let mut prog = sc.program("scattered");
    prog.argv.push("64".into());
    let mut cmd = sc.under_cr_run(&prog);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut job = sc.start("scattered", cmd);
    job.wait_ready();
    let img = sc.next_image_path();
    let flags: &[&str] = if cow {
        &["-v", "--term", "--cow"]
    } else {
        &["-v", "--term"]
    };
    let res = sc.checkpoint_to(job.pid(), flags, &img);
    res.assert_success();
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let line = res
        .stderr
        .lines()
        .find(|l| l.contains("checkpointed to") && l.contains("io="))
        .unwrap_or_else(|| panic!("-v names the I/O mode:\n{}", res.describe()))
        .to_string();
    (img, line)
}

/// The page data of a stopped checkpoint goes through the bounce ring of huge pages
/// (`agent::bounce`: `write=aio+bounce(thp)`, said by `-v`) where the file system takes direct
/// I/O and the kernel gives huge pages; the image of a program whose pages are scattered in
/// physical memory restarts lazily and eagerly with its memory and checksum intact.
#[test]
fn scattered_memory_through_the_bounce_ring() {
    let thp_never = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map_or(true, |s| s.contains("[never]"));
    for eager in [false, true] {
        let sc = Scenario::new(if eager { "bounce-eager" } else { "bounce-lazy" });
        let (img, line) = scattered_image(&sc, &[], false);
        if !direct_io_works(&sc.img_dir()) {
            println!("note: no O_DIRECT here, no AIO ring: {line}");
        } else if line.contains(" write=aio+bounce(thp") {
        } else if thp_never || line.contains("(no bounce: thp ") {
            // (THP off, or the kernel could not give 2 MiB pages now: said, and written
            // straight from the program's memory.)
            println!("note: no huge pages for the bounce ring: {line}");
            assert!(line.contains(" write=aio(no bounce: "), "{line}");
        } else {
            panic!("the page data should go through the bounce ring: {line}");
        }
        restart_delete_pass(&sc, &img, eager, 1);
    }
}

/// A copy-on-write writer (`--cow`) copies the page data through a bounce ring of its own in
/// huge pages (`agent::bounce::for_writer`: `write=aio+bounce(thp)`, said by `-v`) where the
/// file system takes direct I/O and the kernel gives huge pages, else through its one-piece
/// buffer and says why; the image of a program whose pages are scattered in physical memory
/// restarts lazily and eagerly byte-exact (its checksum, and every step replayed).
#[test]
fn scattered_memory_cow_through_the_writers_ring() {
    let thp_never = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map_or(true, |s| s.contains("[never]"));
    for eager in [false, true] {
        let sc = Scenario::new(if eager {
            "cowring-eager"
        } else {
            "cowring-lazy"
        });
        let (img, line) = scattered_image(&sc, &[], true);
        assert!(line.contains(" mode=cow "), "not copy-on-write: {line}");
        if !direct_io_works(&sc.img_dir()) {
            println!("note: no O_DIRECT here, no AIO ring: {line}");
        } else if line.contains(" write=aio+bounce(thp") {
        } else if thp_never || line.contains("; no ring: thp ") {
            println!("note: no huge pages for the writer's ring: {line}");
            assert!(
                line.contains(" write=sync(bounce buffer; no ring: thp "),
                "{line}"
            );
        } else {
            panic!("the writer's page data should go through its bounce ring: {line}");
        }
        restart_delete_pass(&sc, &img, eager, 1);
    }
}

/// `LIBCR_BOUNCE=0` turns the bounce ring off, and `-v` says so; the image is as good. So for
/// a copy-on-write writer, which writes through its one-piece buffer then.
#[test]
fn bounce_ring_turned_off_says_so() {
    for cow in [false, true] {
        let sc = Scenario::new(if cow { "bounce-off-cow" } else { "bounce-off" });
        let (img, line) = scattered_image(&sc, &[("LIBCR_BOUNCE", "0")], cow);
        if direct_io_works(&sc.img_dir()) {
            let said = if cow {
                " write=sync(bounce buffer; no ring: LIBCR_BOUNCE=0)"
            } else {
                " write=aio(no bounce: LIBCR_BOUNCE=0)"
            };
            assert!(
                line.contains(said),
                "-v must say the bounce ring was turned off: {line}"
            );
        }
        if cow {
            assert!(line.contains(" mode=cow "), "not copy-on-write: {line}");
        }
        restart_delete_pass(&sc, &img, true, 1);
    }
}
