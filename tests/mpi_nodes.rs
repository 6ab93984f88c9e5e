//! MPI jobs across nodes (issue 16, "Across nodes"), with two "nodes" simulated on this machine:
//! two network namespaces joined by a veth pair (10.99.0.1 and 10.99.0.2), each with its own
//! UTS namespace and hostname (`nodea`, `nodeb`: with one hostname Open MPI takes both for one
//! node). mpirun runs in node a with Open MPI's tcp BTL between the nodes; its launcher agent
//! (`--mca plm_rsh_agent`, a script standing for ssh) starts node b's `orted` under cr_run inside
//! node b, detached from mpirun's tree as sshd would start it (its pid in `node-b.pid`).
//! c-tests/mpi/ring.c checks every message.
//!
//! Root only (namespaces); skipped with a message when not root, or when `ip`, `unshare` or
//! Open MPI are missing. The namespaces are named per test run and removed, and every process
//! in them killed, on every exit path (`TwoNodes`'s drop).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const MPICC: &str = "/usr/bin/mpicc.openmpi";
const MPIRUN: &str = "/usr/bin/mpirun.openmpi";

/// Whether this machine can run the tests; says why not.
fn available() -> bool {
    if !is_root() {
        println!("note: not root: two network namespaces cannot be made: skipped");
        return false;
    }
    for tool in ["ip", "unshare", "setsid", MPICC, MPIRUN] {
        if !have_command(tool) {
            assert!(
                !in_ci(),
                "{tool} must be installed in CI (.ci/run installs iproute2, util-linux, openmpi-bin, libopenmpi-dev)"
            );
            println!("note: {tool} is not installed: skipped");
            return false;
        }
    }
    true
}

/// c-tests/mpi/ring.c built with Open MPI's mpicc (once per test binary run; its own name, as
/// tests/mpi.rs builds its own copy at the same time).
fn ring() -> PathBuf {
    static BUILT: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.as_ref() {
        return p.clone();
    }
    let out = build_dir().join("ring-openmpi-nodes");
    let o = Command::new(MPICC)
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(c_tests_dir().join("mpi/ring.c"))
        .output()
        .expect("run mpicc");
    assert!(
        o.status.success(),
        "mpicc failed on c-tests/mpi/ring.c:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    *built = Some(out.clone());
    out
}

/// Runs `ip ARGS`; its output, or the failure as text.
fn ip(args: &[&str]) -> Result<String, String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The two simulated nodes: network namespaces `names[0]` (10.99.0.1, hostname nodea) and
/// `names[1]` (10.99.0.2, nodeb), joined by a veth pair. Dropping it kills every process left
/// in either namespace and removes both.
struct TwoNodes {
    names: [String; 2],
}

/// Addresses of the nodes.
const ADDRS: [&str; 2] = ["10.99.0.1", "10.99.0.2"];
/// Hostnames of the nodes.
const HOSTS: [&str; 2] = ["nodea", "nodeb"];

impl TwoNodes {
    /// Makes the namespaces; `None` (with a note) when the system refuses (no `CAP_SYS_ADMIN`
    /// in a container).
    fn new() -> Option<TwoNodes> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("crmpi-{}-{n}", std::process::id());
        let nodes = TwoNodes {
            names: [format!("{base}-a"), format!("{base}-b")],
        };
        if let Err(e) = ip(&["netns", "add", &nodes.names[0]]) {
            println!("note: cannot make a network namespace ({e}): skipped");
            // Nothing was made: no namespace to remove.
            std::mem::forget(nodes);
            return None;
        }
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &nodes.names[1]])?;
            ip(&[
                "link",
                "add",
                "name",
                "eth0",
                "netns",
                &nodes.names[0],
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &nodes.names[1],
            ])?;
            for (ns, addr) in nodes.names.iter().zip(ADDRS) {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
                ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            }
            Ok(())
        };
        // On failure the drop removes what was made.
        setup().unwrap_or_else(|e| panic!("cannot make the two nodes: {e}"));
        Some(nodes)
    }

    /// `argv` run inside node `i`'s network namespace, in a UTS namespace of its own with the
    /// node's hostname (`ip netns exec` and `unshare` exec, `sh` execs: the pid is argv's).
    fn inside(&self, i: usize, argv: &[String]) -> Vec<String> {
        let mut v: Vec<String> = [
            "ip",
            "netns",
            "exec",
            &self.names[i],
            "unshare",
            "--uts",
            "/bin/sh",
            "-c",
            &format!("hostname {}; exec \"$@\"", HOSTS[i]),
            "sh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(argv.iter().cloned());
        v
    }

    /// Pids of the processes in node `i`'s network namespace.
    fn pids(&self, i: usize) -> Vec<u32> {
        ip(&["netns", "pids", &self.names[i]])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        // Every process still in a namespace is this test's (the names are the run's own).
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..2 {
            loop {
                let left = self.pids(i);
                if left.is_empty() || Instant::now() > deadline {
                    break;
                }
                for p in left {
                    signal_pid(p, SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for ns in &self.names {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// One job across the two nodes: mpirun in node a with 2 ranks there and 2 in node b.
struct TwoNodeJob {
    mpirun: Job,
    /// node b's part (the shell running orted, under cr_run), started by the launcher agent.
    part_b: u32,
}

/// The launcher agent (`plm_rsh_agent`): `rsh HOST CMD…`, where CMD is the orted command line
/// Open MPI would give ssh (with quotes for a shell). It starts CMD under cr_run inside node b,
/// detached (its own session, standard input from /dev/null, output into `node-b.log`), and
/// returns at once; the pid of the shell running CMD (orted's parent) goes to `node-b.pid`.
fn write_rsh(sc: &Scenario, nodes: &TwoNodes) -> PathBuf {
    let dir = sc.root();
    let node_b = dir.join("node-b.sh");
    let cr_run = sc.tools().cr_run.display().to_string();
    let pidfile = dir.join("node-b.pid");
    std::fs::write(
        &node_b,
        format!(
            "#!/bin/sh\n# node b's part: its hostname, then CMD ($1, a shell command line: Open MPI sets PATH first) run by a shell under cr_run in a new session\n\
             hostname {host}\n\
             exec setsid /bin/sh -c 'echo $$ > {pid}.tmp && mv {pid}.tmp {pid} && exec {cr_run} -- /bin/sh -c \"$0\"' \"$1\"\n",
            host = HOSTS[1],
            pid = pidfile.display(),
        ),
    )
    .expect("write node-b.sh");
    let rsh = dir.join("rsh");
    std::fs::write(
        &rsh,
        format!(
            "#!/bin/sh\n# plm_rsh_agent: HOST CMD... (an ssh that starts CMD in node b)\nshift\n\
             ip netns exec {ns} unshare --uts /bin/sh {node_b} \"$*\" </dev/null >>{log} 2>&1 &\n",
            ns = nodes.names[1],
            node_b = node_b.display(),
            log = dir.join("node-b.log").display(),
        ),
    )
    .expect("write rsh");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rsh, std::fs::Permissions::from_mode(0o755)).expect("chmod rsh");
    rsh
}

impl TwoNodeJob {
    /// Starts `cr_run mpirun … -np 4 ring` in node a and waits for READY (20 iterations done
    /// across both nodes).
    fn start(sc: &Scenario, nodes: &TwoNodes) -> TwoNodeJob {
        let rsh = write_rsh(sc, nodes);
        let ring = ring().display().to_string();
        let net = "10.99.0.0/24";
        let argv: Vec<String> = [
            &sc.tools().cr_run.display().to_string(),
            "--",
            MPIRUN,
            "--allow-run-as-root",
            "--oversubscribe",
            "--mca",
            "plm_rsh_agent",
            &rsh.display().to_string(),
            "--mca",
            "btl",
            "self,vader,tcp",
            "--mca",
            "btl_tcp_if_include",
            net,
            "--mca",
            "oob_tcp_if_include",
            net,
            "--host",
            &format!("{}:2,{}:2", ADDRS[0], ADDRS[1]),
            "-np",
            "4",
            "-x",
            "CR_TEST_GO",
            &ring,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cmd = sc.command(&nodes.inside(0, &argv));
        let mut mpirun = sc.start("mpirun across two nodes", cmd);
        let log = sc.root().join("node-b.log");
        sc.note(&format!("node b's output goes to {}", log.display()));
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mpirun.wait_ready())).is_err() {
            panic!("node-b.log:\n{}", TwoNodeJob::node_b_log(sc));
        }
        let pidfile = sc.root().join("node-b.pid");
        let part_b = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "node b's orted did not write {}:\n{}\nnode-b.log:\n{}",
                    pidfile.display(),
                    mpirun.diag(),
                    std::fs::read_to_string(sc.root().join("node-b.log")).unwrap_or_default()
                )
            });
        TwoNodeJob { mpirun, part_b }
    }

    /// node b's log (orted's output).
    fn node_b_log(sc: &Scenario) -> String {
        std::fs::read_to_string(sc.root().join("node-b.log")).unwrap_or_default()
    }
}

/// Names of the processes among `pids`.
fn comms(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

/// The TCP connections between the two nodes' addresses held by `pid`'s network namespace
/// (`/proc/PID/net/tcp`: local and remote address, hex), established.
fn cross_node_connections(pid: u32) -> usize {
    // The kernel prints the address in memory order as one native-endian word.
    let ha = format!("{:08X}", u32::from_le_bytes([10, 99, 0, 1]));
    let hb = format!("{:08X}", u32::from_le_bytes([10, 99, 0, 2]));
    std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && ((f[1].starts_with(&ha) && f[2].starts_with(&hb))
                    || (f[1].starts_with(&hb) && f[2].starts_with(&ha)))
        })
        .count()
}

/// The harness itself: the ring runs across both namespaces (2 ranks and an orted in node b,
/// outside mpirun's tree, talking to node a over TCP) and finishes correct; everything is gone
/// afterwards.
#[test]
fn openmpi_ring_across_two_namespaces() {
    if !available() {
        return;
    }
    let sc = Scenario::new("mpi-nodes-ring");
    let Some(nodes) = TwoNodes::new() else {
        return;
    };
    let names = nodes.names.clone();
    let mut job = TwoNodeJob::start(&sc, &nodes);
    let in_b = nodes.pids(1);
    let b_comms = comms(&in_b);
    assert!(
        b_comms.iter().filter(|c| *c == "ring-openmpi-no").count() == 2
            && b_comms.iter().any(|c| c == "orted"),
        "node b should hold an orted and 2 ranks, holds {b_comms:?}:\n{}\n{}",
        job.mpirun.diag(),
        TwoNodeJob::node_b_log(&sc)
    );
    assert!(
        !descendants(job.mpirun.pid()).contains(&job.part_b),
        "node b's orted must not be in mpirun's tree (ssh would not put it there)"
    );
    let links = cross_node_connections(job.part_b);
    assert!(
        links >= 2,
        "the nodes should be connected over TCP (orted's and the ranks' tcp BTL), found {links}"
    );
    sc.go();
    job.mpirun.expect_pass(RESTART_TIMEOUT);
    drop(nodes);
    for ns in &names {
        assert!(
            !ip(&["netns", "list"])
                .unwrap_or_default()
                .contains(ns.as_str()),
            "namespace {ns} was not removed"
        );
    }
}
