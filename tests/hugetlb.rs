//! Huge page memory across checkpoint → restart (issue 9): `c-tests/hugetlb.c` maps
//! `MAP_HUGETLB` anonymous memory (private and shared), a `MFD_HUGETLB` memfd and, on a hugetlbfs
//! mount, a file shared and private; after the restart every byte is back and every region still
//! uses huge pages (smaps `KernelPageSize` and `VmFlags ht`), shared ones still shared.
//!
//! As root the test reserves huge pages itself (`vm.nr_hugepages` raised by 16, the previous
//! value restored at the end) and mounts a hugetlbfs in the scenario; the tests hold one lock so
//! they never change the setting under one another. Without root it runs only when enough huge
//! pages are free already (anonymous ones only), else it says why it skips.

mod common;

use common::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

const NR: &str = "/proc/sys/vm/nr_hugepages";
/// Huge pages the program needs with a hugetlbfs file (4 without), plus what a restart maps
/// while the original's are not yet returned.
const NEEDED: u64 = 8;

static LOCK: Mutex<()> = Mutex::new(());

fn free_huge_pages() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Huge pages for one test: as root `vm.nr_hugepages` raised (restored on drop) and a hugetlbfs
/// mounted in the scenario (unmounted on drop).
struct Huge {
    _lock: MutexGuard<'static, ()>,
    prev: Option<String>,
    mount: Option<PathBuf>,
}

impl Huge {
    fn new(sc: &Scenario) -> Option<Huge> {
        let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !is_root() {
            if free_huge_pages() < NEEDED {
                println!(
                    "note: skipped: not root and fewer than {NEEDED} free huge pages (vm.nr_hugepages)"
                );
                return None;
            }
            return Some(Huge {
                _lock: lock,
                prev: None,
                mount: None,
            });
        }
        let prev = fs::read_to_string(NR).expect("read nr_hugepages");
        let n: u64 = prev.trim().parse().expect("nr_hugepages");
        let mut huge = Huge {
            _lock: lock,
            prev: Some(prev.clone()),
            mount: None,
        };
        fs::write(NR, format!("{}\n", n + 2 * NEEDED)).expect("raise nr_hugepages");
        sc.note(&format!(
            "vm.nr_hugepages {} -> {}",
            prev.trim(),
            n + 2 * NEEDED
        ));
        if free_huge_pages() < NEEDED {
            println!("note: skipped: the kernel gave fewer than {NEEDED} free huge pages");
            return None;
        }
        let m = sc.root().join("huge");
        fs::create_dir_all(&m).expect("mkdir huge");
        let (uid, gid) = sc.user().unwrap_or((0, 0));
        let opts = format!("pagesize=2M,uid={uid},gid={gid},mode=0755");
        let st = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", &opts, "none"])
            .arg(&m)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t hugetlbfs failed");
        huge.mount = Some(m);
        Some(huge)
    }

    fn set_nr(&self, n: u64) {
        fs::write(NR, format!("{n}\n")).expect("set nr_hugepages");
    }
}

impl Drop for Huge {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if let Some(prev) = &self.prev {
            let _ = fs::write(NR, prev);
        }
    }
}

fn start(sc: &Scenario, huge: &Huge) -> Job {
    let prog = sc.program("hugetlb");
    let mut cmd = sc.under_cr_run(&prog);
    if let Some(m) = &huge.mount {
        cmd.env("CR_TEST_HUGETLBFS", m);
    }
    let mut job = sc.start("hugetlb", cmd);
    job.wait_ready();
    job
}

fn cycle(sc: Scenario) {
    let Some(huge) = Huge::new(&sc) else { return };
    let job = start(&sc, &huge);
    let img = sc.checkpoint(job.pid(), &["--term"]);
    let mut job = job;
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let info = sc.run_tool(
        "cr_info",
        sc.command(&[cr_restart().with_file_name("cr_info"), img.clone()]),
    );
    info.assert_success();
    assert!(
        info.stdout.contains("hugetlb-private") && info.stdout.contains("hugetlb-shared"),
        "cr_info must show the hugetlb regions:\n{}",
        info.stdout
    );
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}

#[test]
fn hugetlb_memory_survives() {
    cycle(Scenario::new("hugetlb"));
}

#[test]
fn hugetlb_memory_survives_unprivileged() {
    if !is_root() {
        println!("note: not root: the plain cycle already runs unprivileged");
        return;
    }
    cycle(Scenario::as_user("nobody-hugetlb", NOBODY));
}

/// Not enough huge pages at restart: one line that says so, exit 12 (ENOMEM), nothing runs;
/// with them back the same image restarts.
#[test]
fn too_few_huge_pages_is_a_clear_error() {
    if !is_root() {
        println!("note: skipped: changing vm.nr_hugepages needs root");
        return;
    }
    let sc = Scenario::new("hugetlb-short");
    let Some(huge) = Huge::new(&sc) else { return };
    let mut job = start(&sc, &huge);
    let img = sc.checkpoint(job.pid(), &["--term"]);
    job.expect_signal(SIGTERM, DEATH_TIMEOUT);
    let raised: u64 = fs::read_to_string(NR)
        .expect("nr")
        .trim()
        .parse()
        .expect("nr");
    // The hugetlbfs file keeps its 2 pages; nothing else is left.
    huge.set_nr(0);
    let mut short = sc.restart(&img);
    let st = short.wait_exit(RESTART_TIMEOUT);
    short.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    let err = short.stderr();
    assert_eq!(st.code(), Some(12), "exit status {st}: {err}\n{}", sc.log());
    assert!(
        err.contains("vm.nr_hugepages") && err.trim_end().lines().count() == 1,
        "want one line about huge pages: {err:?}"
    );
    // Raising the pool again may take the kernel a moment (compaction; the failed restart's
    // processes ending): wait until enough pages are free.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while free_huge_pages() < NEEDED {
        huge.set_nr(raised);
        assert!(
            std::time::Instant::now() < deadline,
            "only {} free huge pages after raising vm.nr_hugepages again",
            free_huge_pages()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    sc.go();
    sc.restart(&img).expect_pass(RESTART_TIMEOUT);
}
