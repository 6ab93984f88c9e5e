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
fn write_rsh(sc: &Scenario, nodes: &TwoNodes, agent: &[String]) -> PathBuf {
    let dir = sc.root();
    let node_b = dir.join("node-b.sh");
    let cr_run = sc.tools().cr_run.display().to_string();
    let pidfile = dir.join("node-b.pid");
    std::fs::write(
        &node_b,
        format!(
            "#!/bin/sh\n# node b's part: its hostname, then CMD ($1, a shell command line: Open MPI sets PATH first) run by a shell under cr_run in a new session\n\
             hostname {host}\n\
             exec setsid /bin/sh -c 'echo $$ > {pid}.tmp && mv {pid}.tmp {pid} && exec {cr_run} {agent} -- /bin/sh -c \"$0\"' \"$1\"\n",
            host = HOSTS[1],
            pid = pidfile.display(),
            agent = agent.join(" "),
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
        TwoNodeJob::start_with(sc, nodes, &[])
    }

    /// [`TwoNodeJob::start`] with `agent` (options of cr_run, e.g. `--node ADDR --secret FILE`)
    /// given to both nodes' cr_run, followed by `--node-name` and the node's hostname when not
    /// empty. Then `mpirun` is node a's cr_run and `part_b` node b's.
    fn start_with(sc: &Scenario, nodes: &TwoNodes, agent: &[String]) -> TwoNodeJob {
        let with_name = |i: usize| -> Vec<String> {
            let mut v = agent.to_vec();
            if !v.is_empty() {
                v.extend(["--node-name".to_string(), HOSTS[i].to_string()]);
            }
            v
        };
        let rsh = write_rsh(sc, nodes, &with_name(1));
        let ring = ring().display().to_string();
        let net = "10.99.0.0/24";
        let mut argv: Vec<String> = vec![sc.tools().cr_run.display().to_string()];
        argv.extend(with_name(0));
        argv.extend(
            [
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
            .map(|s| s.to_string()),
        );
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

/// What a checkpoint across the nodes left: the coordinator's and each node part's results.
struct Across {
    coordinator: ToolResult,
    parts: Vec<ToolResult>,
}

impl Across {
    fn describe(&self) -> String {
        let mut s = self.coordinator.describe();
        for p in &self.parts {
            s.push('\n');
            s.push_str(&p.describe());
        }
        s
    }
}

/// How the node parts reach the coordinator.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// A unix socket path in the scenario (outside both nodes: reachable from every network
    /// namespace through the shared file system).
    Socket,
    /// TCP: the coordinator runs in node a listening on `ADDRS[0]:COORD_PORT`, both nodes
    /// connect there (node b over the veth), with this job secret.
    Tcp(&'a std::path::Path),
}

/// `cr_restart --reconnect GEN/HOST_i.ckpt`, with the two nodes' addresses swapped by
/// `--map-address` when `swapped` (the image restarted on the other node).
fn reconnect_argv(sc: &Scenario, gen: &std::path::Path, i: usize, swapped: bool) -> Vec<String> {
    let mut argv = vec![
        sc.tools().cr_restart.display().to_string(),
        "--reconnect".into(),
    ];
    if swapped {
        for (old, new) in [(ADDRS[0], ADDRS[1]), (ADDRS[1], ADDRS[0])] {
            argv.push("--map-address".into());
            argv.push(format!("{old}={new}"));
        }
    }
    argv.push(gen.join(format!("{}.ckpt", HOSTS[i])).display().to_string());
    argv
}

/// Waits until both restarts run their jobs' processes; fails with both restarts' output if not.
fn both_started(a: &mut Job, b: &mut Job) {
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.wait_child(READY_TIMEOUT);
        b.wait_child(READY_TIMEOUT);
    }));
    if started.is_err() {
        panic!(
            "the restarts did not both start their jobs:\n{}\n{}",
            a.diag(),
            b.diag()
        );
    }
}

/// The two halves' restarts (`start(i)`: image i's cr_restart) started at once; once both run,
/// GO; both must pass, node b's (the client's) first: it fails at once if its late connection
/// goes astray; no connection may come back reset. The two restarts.
fn both_restarted_pass(sc: &Scenario, start: impl Fn(usize) -> Job) -> (Job, Job) {
    let (mut a, mut b) = (start(0), start(1));
    both_started(&mut a, &mut b);
    sc.go();
    b.expect_pass(RESTART_TIMEOUT);
    a.expect_pass(RESTART_TIMEOUT);
    assert!(
        !a.stderr().contains("comes back reset") && !b.stderr().contains("comes back reset"),
        "the connection must be made again, not reset:\n{}\n{}",
        a.diag(),
        b.diag()
    );
    (a, b)
}

/// The coordinator's port in node a's namespace (the namespace is the test run's own).
const COORD_PORT: u16 = 7316;

/// A job secret (32 bytes, mode 600) at `path`.
fn write_secret(path: &std::path::Path, byte: u8) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, [byte; 32]).expect("write the secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod secret");
}

/// `cr_checkpoint --coordinator SOCK --nodes 2 -d DIR FLAGS` (outside both nodes: the socket is
/// a path, reachable from every network namespace), and in each node `cr_checkpoint --node SOCK
/// --node-name HOST PID`, `pids[i]` being node i's part, all at once.
fn checkpoint_across(
    sc: &Scenario,
    nodes: Option<&TwoNodes>,
    pids: [u32; 2],
    dir: &std::path::Path,
    flags: &[&str],
) -> Across {
    checkpoint_across_via(sc, nodes, pids, dir, flags, Via::Socket)
}

/// [`checkpoint_across`] with the coordinator reached `via` a unix socket or TCP.
fn checkpoint_across_via(
    sc: &Scenario,
    nodes: Option<&TwoNodes>,
    pids: [u32; 2],
    dir: &std::path::Path,
    flags: &[&str],
    via: Via,
) -> Across {
    let sock = sc.root().join("coord.sock");
    let tool = sc.tools().cr_checkpoint.display().to_string();
    let (listen, secret) = match via {
        Via::Socket => (sock.display().to_string(), None),
        Via::Tcp(secret) => (
            format!("{}:{COORD_PORT}", ADDRS[0]),
            Some(secret.display().to_string()),
        ),
    };
    let with_secret = |argv: &mut Vec<String>| {
        if let Some(s) = &secret {
            argv.push("--secret".into());
            argv.push(s.clone());
        }
    };
    let mut argv: Vec<String> = vec![
        tool.clone(),
        "-v".into(),
        "--coordinator".into(),
        listen.clone(),
        "--nodes".into(),
        "2".into(),
        "-d".into(),
        dir.display().to_string(),
    ];
    with_secret(&mut argv);
    argv.extend(flags.iter().map(|s| s.to_string()));
    // Over TCP the coordinator runs in node a (its address is node a's).
    let argv = match (via, nodes) {
        (Via::Tcp(_), Some(n)) => n.inside(0, &argv),
        _ => argv,
    };
    std::thread::scope(|s| {
        let coord = s.spawn(|| sc.run_tool("coordinator", sc.command(&argv)));
        // The node parts retry until the coordinator listens over TCP, not on a unix socket.
        if let Via::Socket = via {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sock.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let parts: Vec<_> = (0..2)
            .map(|i| {
                let mut part = vec![
                    tool.clone(),
                    "--node".into(),
                    listen.clone(),
                    "--node-name".into(),
                    HOSTS[i].into(),
                ];
                with_secret(&mut part);
                part.push(pids[i].to_string());
                let argv = match nodes {
                    Some(n) => n.inside(i, &part),
                    None => part.to_vec(),
                };
                let cmd = sc.command(&argv);
                s.spawn(move || sc.run_tool(&format!("node part {}", HOSTS[i]), cmd))
            })
            .collect();
        Across {
            coordinator: coord.join().expect("coordinator thread"),
            parts: parts
                .into_iter()
                .map(|p| p.join().expect("node part thread"))
                .collect(),
        }
    })
}

/// [`checkpoint_across`] again while the coordinator refuses because a connection between the
/// nodes holds more bytes than an image keeps (a whole 256 KiB message of the ring can be
/// waiting at the cut; the job goes on), at most 10 times.
fn checkpoint_across_retrying(
    sc: &Scenario,
    nodes: Option<&TwoNodes>,
    pids: [u32; 2],
    dir: &std::path::Path,
    flags: &[&str],
    via: Via,
) -> Across {
    for attempt in 1.. {
        let r = checkpoint_across_via(sc, nodes, pids, dir, flags, via);
        if r.coordinator.success() || !r.coordinator.stderr.contains("try again") || attempt == 10 {
            return r;
        }
        sc.note(&format!(
            "attempt {attempt}: {}",
            r.coordinator.stderr.trim()
        ));
        println!("attempt {attempt} refused: {}", r.coordinator.stderr.trim());
    }
    unreachable!()
}

/// The `conn` lines of a generation's MANIFEST: (node, local, remote, peer).
fn manifest_links(manifest: &str) -> Vec<(String, String, String, String)> {
    manifest
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 8 && f[0] == "conn").then(|| {
                (
                    f[1].to_string(),
                    f[2].to_string(),
                    f[3].to_string(),
                    f[7].to_string(),
                )
            })
        })
        .collect()
}

/// One consistent cut of the job across both nodes (no post-checkpoint signal): the
/// coordinator stops both parts, drains the bytes in flight between them, has each write its
/// image into the new generation and commits it with a MANIFEST that pairs every connection
/// between the nodes from both ends; then both parts are released together and the ring
/// finishes correct (every message checked).
#[test]
fn openmpi_two_nodes_consistent_cut() {
    if !available() {
        return;
    }
    let sc = Scenario::new("mpi-nodes-cut");
    let Some(nodes) = TwoNodes::new() else {
        return;
    };
    let mut job = TwoNodeJob::start(&sc, &nodes);
    let dir = sc.root().join("ckpt");
    let t = Instant::now();
    let r = checkpoint_across_retrying(
        &sc,
        Some(&nodes),
        [job.mpirun.pid(), job.part_b],
        &dir,
        &[],
        Via::Socket,
    );
    let took = t.elapsed();
    println!("{}", r.describe());
    assert!(
        r.coordinator.success() && r.parts.iter().all(|p| p.success()),
        "the checkpoint across the nodes failed:\n{}\n{}",
        r.describe(),
        TwoNodeJob::node_b_log(&sc)
    );
    let gen = std::path::PathBuf::from(r.coordinator.stdout.trim());
    assert_eq!(gen, dir.join("gen.1"), "{}", r.describe());
    let manifest = std::fs::read_to_string(gen.join("MANIFEST")).expect("MANIFEST");
    println!("{manifest}");
    for h in HOSTS {
        let img = gen.join(format!("{h}.ckpt"));
        let len = std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 0 && manifest.contains(&format!("node {h} {h}.ckpt {len}\n")),
            "{} missing or not in the MANIFEST:\n{manifest}",
            img.display()
        );
        let info = sc.run_tool(
            "cr_info",
            sc.command(&[
                manifest_dir().join("target/release/cr_info").as_os_str(),
                img.as_os_str(),
            ]),
        );
        assert!(
            info.success(),
            "cr_info {}:\n{}",
            img.display(),
            info.describe()
        );
    }
    // Every connection between the nodes is recorded from both ends.
    let links = manifest_links(&manifest);
    let between: Vec<_> = links.iter().filter(|l| l.3 != "outside").collect();
    assert!(
        between.len() >= 4,
        "the MANIFEST should list the TCP connections between the nodes:\n{manifest}"
    );
    for (node, local, remote, peer) in &between {
        assert!(
            between
                .iter()
                .any(|(n, l, r, p)| n == peer && p == node && l == remote && r == local),
            "{node}'s connection {local} -> {remote} has no other end in {peer}:\n{manifest}"
        );
    }
    let entries: Vec<String> = std::fs::read_dir(&dir)
        .expect("checkpoint dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["gen.1"], "only the committed generation is left");
    let line = format!(
        "checkpoint across 2 nodes: {:.2} s, {} connections between the nodes",
        took.as_secs_f64(),
        between.len() / 2
    );
    sc.note(&line);
    println!("{line}");
    // Released together: the ring goes on and finishes correct.
    sc.go();
    job.mpirun.expect_pass(RESTART_TIMEOUT);
}

/// A node part that fails after the other node has stopped (here: node b is asked for a
/// process without checkpoint support): the coordinator calls the cut off, node a's processes
/// are released without any signal, no generation is left, and the ring finishes correct.
#[test]
fn openmpi_two_nodes_abort_releases_all() {
    if !available() {
        return;
    }
    let sc = Scenario::new("mpi-nodes-abort");
    let Some(nodes) = TwoNodes::new() else {
        return;
    };
    let mut job = TwoNodeJob::start(&sc, &nodes);
    // A process in node b without an agent.
    let plain = nodes.inside(1, &["sleep".into(), "600".into()]);
    let sleeper = sc.start("sleep in node b", sc.command(&plain));
    let dir = sc.root().join("ckpt");
    let r = checkpoint_across(
        &sc,
        Some(&nodes),
        [job.mpirun.pid(), sleeper.pid()],
        &dir,
        &["--kill"],
    );
    println!("{}", r.describe());
    assert!(
        !r.coordinator.success()
            && r.coordinator.stderr.contains("nodeb")
            && !r.parts[1].success()
            && r.parts[0].stderr.contains("called the checkpoint off"),
        "the coordinator must fail naming node b, and call node a's part off:\n{}",
        r.describe()
    );
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nothing may be left in {}: {left:?}",
        dir.display()
    );
    job.mpirun
        .assert_running("after the abort (no --kill may be sent)");
    sc.go();
    job.mpirun.expect_pass(RESTART_TIMEOUT);
    drop(sleeper);
}

/// Checkpoint across both nodes with `--kill`, then both halves restarted at once, each in its
/// own namespace (same addresses) with `cr_restart --reconnect`: the connections between the
/// nodes are made again between their saved addresses with the bytes that were waiting, and
/// the ring finishes correct (every message checked).
#[test]
fn openmpi_two_nodes_kill_restart() {
    kill_restart("mpi-nodes-restart", false, Parts::Socket);
}

/// As [`openmpi_two_nodes_kill_restart`], with the coordinator reached over TCP instead of a
/// unix socket in the shared file system: it runs in node a listening on 10.99.0.1, node b's
/// part connects to it over the veth, both proving the job secret (`--secret`, HMAC-SHA256
/// challenge-response both ways; no `SO_PEERCRED` over TCP). The coordinator must see node b
/// join from 10.99.0.2, and the restarted job finish correct.
#[test]
fn openmpi_two_nodes_tcp_coordinator_kill_restart() {
    kill_restart("mpi-nodes-tcp-coord", false, Parts::Tcp);
}

/// As [`openmpi_two_nodes_kill_restart`], but each half restarted in the other namespace (the
/// job back on other hosts: node a's part at 10.99.0.2, node b's at 10.99.0.1) with
/// `--map-address 10.99.0.1=10.99.0.2 --map-address 10.99.0.2=10.99.0.1`: the connections
/// between the nodes are made between the new addresses, listeners bound to a node's old
/// address are bound to its new one, the programs' own connect/bind/accept/getpeername calls
/// are translated (Open MPI keeps the old addresses in its modex), and the ring finishes
/// correct.
#[test]
fn openmpi_two_nodes_kill_restart_swapped() {
    kill_restart("mpi-nodes-swapped", true, Parts::Socket);
}

/// As [`openmpi_two_nodes_tcp_coordinator_kill_restart`], but the node parts are the
/// long-lived node agents the batch system's launch starts: node a's mpirun runs under
/// `cr_run --node 10.99.0.1:7316 --secret FILE`, and the launcher agent starts node b's orted
/// the same way; the checkpoint is the coordinator alone (`cr_checkpoint --coordinator
/// 10.99.0.1:7316 --secret FILE --nodes 2 -d DIR --kill`), which both agents join (node b's
/// over the veth). Both agents exit with their killed parts; both halves restarted with
/// `--reconnect`, the ring finishes correct.
#[test]
fn openmpi_node_agents_kill_restart() {
    kill_restart("mpi-nodes-agents", false, Parts::Agents);
}

/// How the node parts of a checkpoint across nodes are run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// `cr_checkpoint --node` per node, the coordinator on a unix socket.
    Socket,
    /// `cr_checkpoint --node` per node, the coordinator over TCP with a job secret.
    Tcp,
    /// The node agents `cr_run --node` the job was started under, over TCP with a job secret.
    Agents,
}

/// `cr_checkpoint --coordinator ADDRS[0]:COORD_PORT --secret SECRET --nodes 2 -d DIR FLAGS` in
/// node a, alone (the node agents join), again while it says "try again" (at most 10 times).
fn coordinator_alone(
    sc: &Scenario,
    nodes: &TwoNodes,
    dir: &std::path::Path,
    secret: &std::path::Path,
    flags: &[&str],
) -> ToolResult {
    let mut argv: Vec<String> = vec![
        sc.tools().cr_checkpoint.display().to_string(),
        "-v".into(),
        "--coordinator".into(),
        format!("{}:{COORD_PORT}", ADDRS[0]),
        "--secret".into(),
        secret.display().to_string(),
        "--nodes".into(),
        "2".into(),
        "-d".into(),
        dir.display().to_string(),
    ];
    argv.extend(flags.iter().map(|s| s.to_string()));
    for attempt in 1.. {
        let r = sc.run_tool("coordinator", sc.command(&nodes.inside(0, &argv)));
        if r.success() || !r.stderr.contains("try again") || attempt == 10 {
            return r;
        }
        println!("attempt {attempt} refused: {}", r.stderr.trim());
    }
    unreachable!()
}

/// Runs the job across both nodes, checkpoints it with `--kill` (`parts`: how the node parts
/// are run and reach the coordinator) and restarts both halves at once, in their own
/// namespaces or (`swapped`) each in the other's.
fn kill_restart(name: &str, swapped: bool, parts: Parts) {
    if !available() {
        return;
    }
    let sc = Scenario::new(name);
    let Some(nodes) = TwoNodes::new() else {
        return;
    };
    let secret = sc.root().join("job.secret");
    write_secret(&secret, 0x5a);
    let agent: Vec<String> = match parts {
        Parts::Agents => vec![
            "-v".into(),
            "--node".into(),
            format!("{}:{COORD_PORT}", ADDRS[0]),
            "--secret".into(),
            secret.display().to_string(),
        ],
        _ => Vec::new(),
    };
    let mut job = TwoNodeJob::start_with(&sc, &nodes, &agent);
    let mut pids = nodes.pids(0);
    pids.extend(nodes.pids(1));
    let dir = sc.root().join("ckpt");
    let coordinator = if parts == Parts::Agents {
        let r = coordinator_alone(&sc, &nodes, &dir, &secret, &["--kill"]);
        println!("{}", r.describe());
        assert!(
            r.success(),
            "the checkpoint across the node agents failed:\n{}\nnode b:\n{}",
            r.describe(),
            TwoNodeJob::node_b_log(&sc)
        );
        r
    } else {
        let via = if parts == Parts::Tcp {
            Via::Tcp(&secret)
        } else {
            Via::Socket
        };
        let r = checkpoint_across_retrying(
            &sc,
            Some(&nodes),
            [job.mpirun.pid(), job.part_b],
            &dir,
            &["--kill"],
            via,
        );
        println!("{}", r.describe());
        assert!(
            r.coordinator.success() && r.parts.iter().all(|p| p.success()),
            "the checkpoint across the nodes failed:\n{}",
            r.describe()
        );
        r.coordinator
    };
    if parts != Parts::Socket {
        assert!(
            coordinator
                .stderr
                .contains(&format!("listening on {}:{COORD_PORT}", ADDRS[0]))
                && coordinator
                    .stderr
                    .contains(&format!("node {} joined from {}:", HOSTS[1], ADDRS[1]))
                && !sc.root().join("coord.sock").exists(),
            "node b must reach the coordinator over TCP from its own address:\n{}",
            coordinator.describe()
        );
    }
    let gen = std::path::PathBuf::from(coordinator.stdout.trim());
    job.mpirun.wait_exit(DEATH_TIMEOUT);
    let deadline = Instant::now() + DEATH_TIMEOUT;
    while pids.iter().any(|&p| proc_stat(p).is_some()) {
        assert!(
            Instant::now() < deadline,
            "processes of the checkpointed job still exist: {:?}",
            pids.iter()
                .filter(|&&p| proc_stat(p).is_some())
                .map(|&p| proc_summary(p))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Image i restarted in namespace `at(i)`.
    let at = |i: usize| if swapped { 1 - i } else { i };
    let restart = |i: usize| {
        let mut argv = reconnect_argv(&sc, &gen, i, swapped);
        argv.insert(1, "--verbose".into());
        let argv = nodes.inside(at(i), &argv);
        sc.start(
            &format!("cr_restart {} in namespace {}", HOSTS[i], at(i)),
            sc.command(&argv),
        )
    };
    let t = Instant::now();
    let (mut a, mut b) = (restart(0), restart(1));
    both_started(&mut a, &mut b);
    let line = format!(
        "restart across 2 nodes{}: both parts running after {:.2} s",
        if swapped { " (swapped)" } else { "" },
        t.elapsed().as_secs_f64()
    );
    sc.note(&line);
    println!("{line}");
    if swapped {
        // Node a's processes (mpirun and its ranks) now run in namespace 1, node b's in 0
        // (once restored: the ring waits for GO).
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let in_1 = comms(&nodes.pids(1));
            let in_0 = comms(&nodes.pids(0));
            let ranks = |v: &[String]| v.iter().filter(|c| *c == "ring-openmpi-no").count();
            if in_1.iter().any(|c| c.starts_with("mpirun"))
                && in_0.iter().any(|c| c == "orted")
                && ranks(&in_0) == 2
                && ranks(&in_1) == 2
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the halves must run swapped: namespace 0 holds {in_0:?}, namespace 1 {in_1:?}\n{}\n{}",
                a.diag(),
                b.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    sc.go();
    let st = a.wait_exit(RESTART_TIMEOUT);
    a.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    let out = a.stdout();
    assert!(
        st.success() && out.lines().any(|l| l.starts_with("PASS ring")) && !out.contains("FAIL"),
        "the restarted job must finish correct (PASS ring, exit 0):\n{}\nnode b:\n{}",
        a.diag(),
        b.diag()
    );
    let st = b.wait_exit(RESTART_TIMEOUT);
    assert!(st.success(), "node b's part must exit 0:\n{}", b.diag());
    for p in [&a, &b] {
        assert!(
            !p.stderr().contains("comes back reset"),
            "every connection between the nodes must be made again:\n{}",
            p.diag()
        );
    }
}

/// The reconnection on its own, without MPI or namespaces (any user): c-tests/tcp_peers.c's
/// server and client, each its own job under cr_run joined by one loopback TCP connection, are
/// checkpointed as two node parts of one cut with `--kill`, then restarted separately and at
/// once with `cr_restart --reconnect`: the connection is made again between its saved
/// addresses (the server's restart accepts on its listener's port, the client's connects from
/// its saved port) with the bytes that were waiting at each end, and both finish correct
/// (every message checked, in order).
#[test]
fn tcp_peers_two_parts_kill_restart() {
    let sc = Scenario::new("nodes-tcp-peers");
    let prog = sc.program("tcp_peers");
    let portfile = sc.root().join("port");
    let start = |role: &str| {
        let mut cmd = sc.under_cr_run(&prog);
        cmd.arg(role).arg(&portfile);
        sc.start(&format!("tcp_peers {role}"), cmd)
    };
    let mut server = start("server");
    let mut client = start("client");
    server.wait_ready();
    client.wait_ready();
    let dir = sc.root().join("ckpt");
    let r = checkpoint_across(&sc, None, [server.pid(), client.pid()], &dir, &["--kill"]);
    println!("{}", r.describe());
    assert!(
        r.coordinator.success() && r.parts.iter().all(|p| p.success()),
        "the checkpoint of both parts failed:\n{}",
        r.describe()
    );
    let gen = std::path::PathBuf::from(r.coordinator.stdout.trim());
    let manifest = std::fs::read_to_string(gen.join("MANIFEST")).expect("MANIFEST");
    println!("{manifest}");
    assert_eq!(
        manifest_links(&manifest)
            .iter()
            .filter(|l| l.3 != "outside")
            .count(),
        2,
        "one connection between the parts, seen from both ends:\n{manifest}"
    );
    server.wait_exit(DEATH_TIMEOUT);
    client.wait_exit(DEATH_TIMEOUT);
    both_restarted_pass(&sc, |i| {
        let argv = reconnect_argv(&sc, &gen, i, false);
        sc.start(&format!("cr_restart {}", HOSTS[i]), sc.command(&argv))
    });
}

/// The node agents on their own (any user, no namespaces): c-tests/tcp_peers.c's server and
/// client, joined by one loopback TCP connection, each started under `cr_run --node SOCK
/// --node-name NAME` (a unix socket path the coordinator will listen at; nobody listens yet).
/// The checkpoint is `cr_checkpoint --coordinator SOCK --nodes 2 -d DIR --kill` alone: both
/// agents join it, their programs are killed after the commit and both agents exit as their
/// programs did (each having told the coordinator it is done: no warning after the commit);
/// both images restarted at once with `--reconnect`, both finish correct. Also:
/// `cr_run --node HOST:PORT` without `--secret`, and `--secret` without `--node`, are refused
/// with one line.
#[test]
fn node_agents_two_parts_kill_restart() {
    let sc = Scenario::new("nodes-agents");
    let cr_run = sc.tools().cr_run.clone();
    for (what, args) in [
        (
            "cr_run --node over TCP without --secret",
            vec!["--node", "127.0.0.1:9"],
        ),
        (
            "cr_run --secret without --node",
            vec!["--secret", "/nonexistent"],
        ),
    ] {
        let mut argv = vec![cr_run.display().to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.extend(["--".to_string(), "true".to_string()]);
        let r = sc.run_tool(what, sc.command(&argv));
        r.assert_failure_code(EINVAL_STATUS);
    }
    let prog = sc.program("tcp_peers");
    let portfile = sc.root().join("port");
    let sock = sc.root().join("coord.sock");
    let start = |role: &str, name: &str| {
        let mut argv = vec![
            cr_run.display().to_string(),
            "--node".into(),
            sock.display().to_string(),
            "--node-name".into(),
            name.into(),
            "--".into(),
        ];
        argv.extend(prog.argv.iter().map(|a| a.to_string_lossy().into_owned()));
        argv.extend([role.to_string(), portfile.display().to_string()]);
        let mut cmd = sc.command(&argv);
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        sc.start(&format!("tcp_peers {role} under cr_run --node"), cmd)
    };
    let mut server = start("server", HOSTS[0]);
    let mut client = start("client", HOSTS[1]);
    server.wait_ready();
    client.wait_ready();
    let dir = sc.root().join("ckpt");
    let coord = sc.run_tool(
        "coordinator",
        sc.command(&[
            sc.tools().cr_checkpoint.as_os_str(),
            "-v".as_ref(),
            "--coordinator".as_ref(),
            sock.as_os_str(),
            "--nodes".as_ref(),
            "2".as_ref(),
            "-d".as_ref(),
            dir.as_os_str(),
            "--kill".as_ref(),
        ]),
    );
    assert!(
        coord.success()
            && coord.stderr.contains("node nodea joined")
            && coord.stderr.contains("node nodeb joined")
            && !coord.stderr.contains("after the commit"),
        "both node agents must join the coordinator's checkpoint:\n{}\n{}\n{}",
        coord.describe(),
        server.diag(),
        client.diag()
    );
    let gen = std::path::PathBuf::from(coord.stdout.trim());
    // Each agent ends as its program did: killed.
    for (p, what) in [(&mut server, "server"), (&mut client, "client")] {
        let st = p.wait_exit(DEATH_TIMEOUT);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            st.signal(),
            Some(SIGKILL),
            "the {what}'s agent must end as its killed program:\n{}",
            p.diag()
        );
    }
    both_restarted_pass(&sc, |i| {
        let argv = reconnect_argv(&sc, &gen, i, false);
        sc.start(&format!("cr_restart {}", HOSTS[i]), sc.command(&argv))
    });
}

/// The coordinator over TCP refuses a node with the wrong job secret (any user, loopback):
/// c-tests/tcp_peers.c's server and client under cr_run; the coordinator listens on
/// 127.0.0.1 (a port the system chooses, read from its `-v` output) with one secret, the
/// server's node part joins with the same, then the client's with another. The client's part
/// fails (the coordinator did not prove the secret it holds), the coordinator fails naming
/// node b, the server's part hears the checkpoint called off before anything was stopped, no
/// generation is left, and both programs run on unharmed and finish correct. Without
/// `--secret` over TCP both the coordinator and a node part refuse at once with one line.
#[test]
fn tcp_coordinator_refuses_a_wrong_secret() {
    let sc = Scenario::new("nodes-tcp-wrong-secret");
    let prog = sc.program("tcp_peers");
    let portfile = sc.root().join("port");
    let start = |role: &str| {
        let mut cmd = sc.under_cr_run(&prog);
        cmd.arg(role).arg(&portfile);
        sc.start(&format!("tcp_peers {role}"), cmd)
    };
    let mut server = start("server");
    let mut client = start("client");
    server.wait_ready();
    client.wait_ready();
    let tool = sc.tools().cr_checkpoint.clone();
    let dir = sc.root().join("ckpt");
    // No secret over TCP: one line, EINVAL, nothing started.
    let no_secret = sc.run_tool(
        "coordinator without --secret",
        sc.command(&[
            tool.as_os_str(),
            "--coordinator".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--nodes".as_ref(),
            "2".as_ref(),
            "-d".as_ref(),
            dir.as_os_str(),
        ]),
    );
    let line = no_secret.assert_failure_code(EINVAL_STATUS);
    assert!(line.contains("--secret FILE"), "{line}");
    let no_secret = sc.run_tool(
        "node part without --secret",
        sc.command(&[
            tool.as_os_str(),
            "--node".as_ref(),
            "127.0.0.1:9".as_ref(),
            server.pid().to_string().as_ref(),
        ]),
    );
    let line = no_secret.assert_failure_code(EINVAL_STATUS);
    assert!(line.contains("job secret is required"), "{line}");
    let good = sc.root().join("good.secret");
    let wrong = sc.root().join("wrong.secret");
    write_secret(&good, 1);
    write_secret(&wrong, 2);
    let coordinator = sc.start(
        "coordinator",
        sc.command(&[
            tool.as_os_str(),
            "-v".as_ref(),
            "--coordinator".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--secret".as_ref(),
            good.as_os_str(),
            "--nodes".as_ref(),
            "2".as_ref(),
            "-d".as_ref(),
            dir.as_os_str(),
            "--kill".as_ref(),
        ]),
    );
    let wait_for = |job: &Job, what: &str| -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let err = job.stderr();
            if let Some(l) = err.lines().find(|l| l.contains(what)) {
                return l.to_string();
            }
            assert!(Instant::now() < deadline, "no {what:?} from {}", job.diag());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let listening = wait_for(&coordinator, "listening on 127.0.0.1:");
    let addr = listening
        .rsplit(' ')
        .next()
        .expect("the address")
        .to_string();
    let part = |name: &str, secret: &std::path::Path, pid: u32| {
        sc.command(&[
            tool.as_os_str(),
            "--node".as_ref(),
            addr.as_ref(),
            "--node-name".as_ref(),
            name.as_ref(),
            "--secret".as_ref(),
            secret.as_os_str(),
            pid.to_string().as_ref(),
        ])
    };
    let mut node_a = sc.start("node part nodea", part("nodea", &good, server.pid()));
    wait_for(&coordinator, "node nodea joined from 127.0.0.1:");
    let b = sc.run_tool("node part nodeb", part("nodeb", &wrong, client.pid()));
    let line = b.assert_failure_code(13);
    assert!(
        line.contains(&format!(
            "the coordinator at {addr} did not prove the job secret"
        )),
        "{line}"
    );
    let mut coordinator = coordinator;
    let st = coordinator.wait_exit(TOOL_TIMEOUT);
    // Its last line may still be on the way from the pipe.
    coordinator.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    assert_eq!(st.code(), Some(13), "{}", coordinator.diag());
    assert!(
        coordinator.stderr().contains("node nodeb (from 127.0.0.1:")
            && coordinator
                .stderr()
                .contains("did not accept this coordinator's proof of the job secret"),
        "the coordinator must name the refused node:\n{}",
        coordinator.diag()
    );
    let st = node_a.wait_exit(TOOL_TIMEOUT);
    node_a.wait_output_closed(PIPE_CLOSE_TIMEOUT);
    assert!(
        !st.success() && node_a.stderr().contains("called the checkpoint off"),
        "node a's part must be called off:\n{}",
        node_a.diag()
    );
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nothing may be left in the directory: {left:?}"
    );
    // Unharmed: neither was stopped or killed (--kill was asked for), both finish correct.
    for (p, what) in [(&mut server, "server"), (&mut client, "client")] {
        p.assert_running(&format!("the {what} after the refusal"));
        let state = proc_stat(p.pid()).map(|s| s.state);
        assert!(
            !matches!(state, Some('T') | Some('t')),
            "the {what} must not be left stopped: {state:?}"
        );
    }
    sc.go();
    client.expect_pass(RESTART_TIMEOUT);
    server.expect_pass(RESTART_TIMEOUT);
}

/// The exit status of a refused command line (EINVAL).
const EINVAL_STATUS: i32 = 22;

/// The address translation on its own (root: namespaces): c-tests/tcp_peers.c's server in node
/// a listening on 10.99.0.1 (a listener bound to the node's own address), its client in node b,
/// checkpointed as two node parts with `--kill` and restarted swapped (the server in node b at
/// 10.99.0.2, the client in node a) with `--map-address`. The connection between them is made
/// again between the new addresses with its waiting bytes; the server's listener is bound to
/// 10.99.0.2; then the client opens a late connection to the address it holds in memory
/// (10.99.0.1, now its own host: the agent's `connect` sends it to 10.99.0.2), the server
/// checks that `accept` reports it from the client's original address and the client that
/// `getsockname` reports its original local address, and both finish correct.
#[test]
fn tcp_peers_two_namespaces_swapped() {
    if !available() {
        return;
    }
    let sc = Scenario::new("nodes-tcp-peers-swapped");
    let Some(nodes) = TwoNodes::new() else {
        return;
    };
    let prog = sc.program("tcp_peers");
    let portfile = sc.root().join("port");
    let start = |i: usize, role: &str| {
        let mut argv = vec![sc.tools().cr_run.display().to_string(), "--".into()];
        argv.extend(prog.argv.iter().map(|a| a.to_string_lossy().into_owned()));
        argv.extend([
            role.to_string(),
            portfile.display().to_string(),
            ADDRS[0].to_string(),
        ]);
        let mut cmd = sc.command(&nodes.inside(i, &argv));
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        sc.start(&format!("tcp_peers {role} in {}", HOSTS[i]), cmd)
    };
    let mut server = start(0, "server");
    let mut client = start(1, "client");
    server.wait_ready();
    client.wait_ready();
    let dir = sc.root().join("ckpt");
    let r = checkpoint_across(
        &sc,
        Some(&nodes),
        [server.pid(), client.pid()],
        &dir,
        &["--kill"],
    );
    println!("{}", r.describe());
    assert!(
        r.coordinator.success() && r.parts.iter().all(|p| p.success()),
        "the checkpoint of both parts failed:\n{}",
        r.describe()
    );
    let gen = std::path::PathBuf::from(r.coordinator.stdout.trim());
    server.wait_exit(DEATH_TIMEOUT);
    client.wait_exit(DEATH_TIMEOUT);
    // Image i restarted in the other namespace.
    both_restarted_pass(&sc, |i| {
        let argv = reconnect_argv(&sc, &gen, i, true);
        let cmd = sc.command(&nodes.inside(1 - i, &argv));
        sc.start(&format!("cr_restart {} in {}", HOSTS[i], HOSTS[1 - i]), cmd)
    });
}

/// Megabytes in flight between the two halves at the cut (any user; with `nodes`, root: one
/// half in each network namespace, over the veth pair): c-tests/tcp_bulk.c's client queues
/// 3 MiB and its server 1 MiB on their one connection and neither reads (most of it waits in
/// the writer's send queue behind the reader's full receive buffer, as a large MPI message
/// at a rank that is not reading). The cut's drain raises the readers' receive buffers so
/// every byte moves into a receive queue, the images keep them (the MANIFEST says 3 MiB and
/// 1 MiB waiting: the cut is not refused), both halves are killed and restarted with
/// `cr_restart --reconnect` (each in its own namespace), and each reads the other's block
/// whole and in order (every byte, the length and a checksum checked).
fn bulk_kill_restart(sc: &Scenario, nodes: Option<&TwoNodes>) {
    let t0 = Instant::now();
    let prog = sc.program("tcp_bulk");
    let portfile = sc.root().join("port");
    let start = |i: usize, role: &str| {
        let mut argv = vec![sc.tools().cr_run.display().to_string(), "--".into()];
        argv.extend(prog.argv.iter().map(|a| a.to_string_lossy().into_owned()));
        argv.extend([role.to_string(), portfile.display().to_string()]);
        if nodes.is_some() {
            argv.push(ADDRS[0].to_string());
        }
        let argv = match nodes {
            Some(n) => n.inside(i, &argv),
            None => argv,
        };
        let mut cmd = sc.command(&argv);
        cmd.envs(prog.env.iter().map(|(k, v)| (k, v)));
        sc.start(&format!("tcp_bulk {role} in {}", HOSTS[i]), cmd)
    };
    let mut server = start(0, "server");
    let mut client = start(1, "client");
    server.wait_ready();
    client.wait_ready();
    println!("{:.2}s: both halves ready", t0.elapsed().as_secs_f64());
    let dir = sc.root().join("ckpt");
    let r = checkpoint_across(sc, nodes, [server.pid(), client.pid()], &dir, &["--kill"]);
    println!("{:.2}s: checkpointed", t0.elapsed().as_secs_f64());
    println!("{}", r.describe());
    assert!(
        r.coordinator.success() && r.parts.iter().all(|p| p.success()),
        "the checkpoint of both halves failed:\n{}",
        r.describe()
    );
    let gen = std::path::PathBuf::from(r.coordinator.stdout.trim());
    let manifest = std::fs::read_to_string(gen.join("MANIFEST")).expect("MANIFEST");
    println!("{manifest}");
    let waiting: Vec<u64> = manifest
        .lines()
        .filter(|l| l.starts_with("conn "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|&w| w == "waiting")
                .and_then(|i| f.get(i + 1))
                .and_then(|v| v.parse().ok())
        })
        .collect();
    let mut sorted = waiting.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![(1 << 20) + 16, (3 << 20) + 16],
        "every byte in flight must wait at its receiver in the images:\n{manifest}"
    );
    server.wait_exit(DEATH_TIMEOUT);
    client.wait_exit(DEATH_TIMEOUT);
    let (a, b) = both_restarted_pass(sc, |i| {
        let argv = reconnect_argv(sc, &gen, i, false);
        let argv = match nodes {
            Some(n) => n.inside(i, &argv),
            None => argv,
        };
        sc.start(&format!("cr_restart {}", HOSTS[i]), sc.command(&argv))
    });
    println!("{:.2}s: both passed", t0.elapsed().as_secs_f64());
    assert!(
        a.stdout().contains(&format!("PASS tcp_bulk {}", 3 << 20))
            && b.stdout().contains(&format!("PASS tcp_bulk {}", 1 << 20)),
        "each half must read the other's whole block:\n{}\n{}",
        a.diag(),
        b.diag()
    );
}

#[test]
fn tcp_bulk_two_parts_kill_restart() {
    let sc = Scenario::new("nodes-tcp-bulk");
    bulk_kill_restart(&sc, None);
}

#[test]
fn tcp_bulk_two_namespaces_kill_restart() {
    if !available() {
        return;
    }
    let sc = Scenario::new("nodes-tcp-bulk-ns");
    let Some(nodes) = TwoNodes::new() else {
        return;
    };
    bulk_kill_restart(&sc, Some(&nodes));
}
