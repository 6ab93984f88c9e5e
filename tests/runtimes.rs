//! Event-loop runtimes survive checkpoint --term and restart (issue 12): a Node.js HTTP server,
//! a Python asyncio TCP server and a Java NIO server with a Selector (their epoll, eventfd,
//! pipes, socket pairs and listening socket come back).
//! Each answers before the checkpoint and after the restart, on the same port, with a counter
//! its own timer advances (the Node server asked with curl); then GO and PASS. Skipped with a
//! message where the runtime is not installed (CI installs them).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// The port a server printed as `port P` before READY.
fn port_of(job: &Job) -> u16 {
    job.stdout()
        .lines()
        .find_map(|l| l.strip_prefix("port ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port line:\n{}", job.diag()))
}

/// Keeps asking until `ask` answers (a restored server may take a moment to listen again).
fn answer(what: &str, job: &Job, ask: impl Fn() -> std::io::Result<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ask() {
            Ok(n) => return n,
            Err(e) if Instant::now() > deadline => {
                panic!("{what} does not answer: {e}\n{}", job.diag())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn http_count(port: u16) -> std::io::Result<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    body.lines()
        .find_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no count in {body:?}")))
}

/// As [`http_count`], asked with `curl`, as issue 12 asks.
fn curl_count(port: u16) -> std::io::Result<u64> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("curl: {}", out.status)));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no count in curl's answer"))
}

fn echo_count(port: u16) -> std::io::Result<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let rest = line
        .strip_prefix("count ")
        .ok_or_else(|| std::io::Error::other(format!("bad answer {line:?}")))?;
    let (n, echo) = rest.split_once(' ').unwrap_or((rest, ""));
    if echo.trim() != "hello" {
        return Err(std::io::Error::other(format!("bad echo {line:?}")));
    }
    n.trim().parse().map_err(std::io::Error::other)
}

/// Start `argv` under cr_run, ask it, checkpoint --term, restart, ask again twice (the counter
/// must go on from where it was), GO, PASS. With `hold_open`, a client connection stays open
/// across the checkpoint: it comes back reset, and the server must drop it and go on serving.
fn serve_across_restart(
    name: &str,
    argv: &[&str],
    ask: fn(u16) -> std::io::Result<u64>,
    hold_open: bool,
) {
    let sc = Scenario::new(name);
    let cr_run = sc.tools().cr_run.to_string_lossy().into_owned();
    let mut full = vec![cr_run.as_str(), "--"];
    full.extend_from_slice(argv);
    let mut job = sc.start(name, sc.command(&full));
    job.wait_ready();
    let port = port_of(&job);
    let before = answer(name, &job, || ask(port));
    let held =
        hold_open.then(|| TcpStream::connect(("127.0.0.1", port)).expect("hold a connection"));
    let img = sc.checkpoint(job.pid(), &["--term"]);
    // A JVM takes SIGTERM itself and exits 143 (128 + 15); the others die of it.
    let st = job.wait_exit(DEATH_TIMEOUT);
    assert!(
        st.signal() == Some(SIGTERM) || st.code() == Some(128 + SIGTERM),
        "{name} must end on the checkpoint's SIGTERM, not {st}:\n{}",
        job.diag()
    );

    let mut restored = sc.restart(&img);
    let pid = restored.wait_child(READY_TIMEOUT);
    wait_address_space_switched(&sc, pid, Duration::from_secs(10));
    let after = answer(&format!("restored {name}"), &restored, || ask(port));
    assert!(
        after >= before,
        "the counter went back from {before} to {after}:\n{}",
        restored.diag()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while answer(name, &restored, || ask(port)) <= after {
        assert!(
            Instant::now() < deadline,
            "the restored {name}'s timer does not run (counter stays {after}):\n{}",
            restored.diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    sc.go();
    restored.expect_pass(RESTART_TIMEOUT);
}

#[test]
fn node_http_server() {
    if !have_command("node") {
        assert!(
            !in_ci(),
            "node must be installed in CI (.ci/run installs nodejs)"
        );
        println!("note: node is not installed: skipped");
        return;
    }
    // Asked with curl (CI installs it); without it, by hand, with a plain HTTP request.
    let ask: fn(u16) -> std::io::Result<u64> = if have_command("curl") {
        curl_count
    } else {
        assert!(
            !in_ci(),
            "curl must be installed in CI (.ci/run installs it)"
        );
        println!("note: curl is not installed: asking with a plain HTTP request");
        http_count
    };
    let script = c_tests_dir().join("node_server.js");
    serve_across_restart(
        "node-server",
        &["node", &script.to_string_lossy()],
        ask,
        false,
    );
}

#[test]
fn python_asyncio_server() {
    if !have_command("python3") {
        assert!(!in_ci(), "python3 must be installed in CI");
        println!("note: python3 is not installed: skipped");
        return;
    }
    let script = c_tests_dir().join("asyncio_server.py");
    serve_across_restart(
        "asyncio-server",
        &["python3", &script.to_string_lossy()],
        echo_count,
        false,
    );
}

#[test]
fn java_nio_selector_server() {
    if !have_command("java") || !have_command("javac") {
        assert!(
            !in_ci(),
            "java and javac must be installed in CI (default-jdk-headless)"
        );
        println!("note: java/javac are not installed: skipped");
        return;
    }
    let sc = Scenario::new("java-nio-build");
    let classes = sc.root().join("classes");
    std::fs::create_dir_all(&classes).expect("classes dir");
    let st = std::process::Command::new("javac")
        .arg("-d")
        .arg(&classes)
        .arg(c_tests_dir().join("NioServer.java"))
        .stdin(std::process::Stdio::null())
        .status()
        .expect("run javac");
    assert!(st.success(), "javac failed");
    // No perf-data file in /tmp (it is removed at exit, and saved by content only on tmpfs).
    serve_across_restart(
        "java-nio",
        &[
            "java",
            "-XX:-UsePerfData",
            "-Xshare:off",
            "-cp",
            &classes.to_string_lossy(),
            "NioServer",
        ],
        echo_count,
        true,
    );
}
