//! `cr_run --checkpoint-dir`: the batch-cluster workflow. A counting job (`c-tests/counter_job.c`,
//! which checks at its end that its state equals an uninterrupted run's) is started by the
//! supervisor, checkpointed periodically and on request, preempted (SIGTERM: checkpoint, end,
//! exit code), and resumed by running the same command again — also after its pids were taken,
//! from an older generation when the newest is damaged, after a "node death" without a final
//! checkpoint, and in HTCondor's exit-after-checkpoint style. Runs as root and as nobody.
//! With `--store`: resumes in an empty directory from a `file://` store and from a WebDAV store
//! served by a real nginx (also on "another machine": a new user + UTS + pid namespace), and
//! goes on when the store is unreachable.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Steps of the counting job and milliseconds per step.
const STEPS: u32 = 300;
const STEP_MS: u32 = 10;

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

/// The checkpoint directory of the scenario (owned by its user).
fn ckpt_dir(sc: &Scenario) -> PathBuf {
    let d = sc.root().join("ckpt");
    fs::create_dir_all(&d).expect("create checkpoint dir");
    if let Some((uid, gid)) = sc.user() {
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).expect("chown checkpoint dir");
    }
    d
}

/// `cr_run --checkpoint-dir DIR OPTS -- counter_job STEPS STEP_MS [CODE]`, started.
fn supervise(sc: &Scenario, dir: &Path, opts: &[&str], job_args: &[&str]) -> Job {
    supervise_env(sc, dir, opts, job_args, &[])
}

/// [`supervise`] with more environment variables for cr_run (a store's credentials).
fn supervise_env(
    sc: &Scenario,
    dir: &Path,
    opts: &[&str],
    job_args: &[&str],
    env: &[(String, String)],
) -> Job {
    let mut cmd = supervise_command(sc, dir, opts, job_args);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    sc.start("cr_run --checkpoint-dir", cmd)
}

/// The command line of [`supervise`], not started.
fn supervise_command(
    sc: &Scenario,
    dir: &Path,
    opts: &[&str],
    job_args: &[&str],
) -> std::process::Command {
    let prog = sc.program("counter_job");
    let mut argv: Vec<OsString> = vec![
        sc.tools().cr_run.clone().into(),
        "--checkpoint-dir".into(),
        dir.into(),
    ];
    argv.extend(opts.iter().map(OsString::from));
    argv.push("--".into());
    argv.extend(prog.argv.iter().cloned());
    argv.extend(job_args.iter().map(OsString::from));
    sc.command(&argv)
}

fn default_args() -> Vec<String> {
    vec![STEPS.to_string(), STEP_MS.to_string()]
}

/// The step numbers a run printed.
fn steps(out: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.strip_prefix("step ")?.trim().parse().ok())
        .collect()
}

/// The generation files of `dir`.
fn generations(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ckpt"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until `dir` holds at least `n` generations.
fn wait_generations(sc: &Scenario, job: &Job, dir: &Path, n: usize) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while generations(dir).len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} generations in {} after {READY_TIMEOUT:?}: {:?}\n{}\n{}",
            dir.display(),
            generations(dir),
            job.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the job to its end with the same command (it resumes); asserts it finishes correct,
/// continuing the count where the last image left it; returns its output and its errors.
fn finish(sc: &Scenario, dir: &Path, opts: &[&str], last_before: u32) -> (String, String) {
    finish_env(sc, dir, opts, last_before, &[])
}

/// [`finish`] with more environment variables for cr_run.
fn finish_env(
    sc: &Scenario,
    dir: &Path,
    opts: &[&str],
    last_before: u32,
    env: &[(String, String)],
) -> (String, String) {
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise_env(sc, dir, opts, &args, env);
    let st = job.wait_exit(RESTART_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    let out = job.stdout();
    let seen = steps(&out);
    assert!(
        st.success() && out.contains(&format!("PASS counter_job {STEPS}")),
        "the resumed job should finish correct ({st}):\n{}\n{}",
        job.diag(),
        sc.log()
    );
    let first = *seen.first().unwrap_or(&0);
    assert!(
        first > 0 && first <= last_before + 1,
        "the resumed job should continue from its image (first step {first}, the preempted \
         run printed up to {last_before}):\n{}",
        job.diag()
    );
    assert_eq!(
        seen.last().copied(),
        Some(STEPS - 1),
        "the resumed job should count to its end:\n{}",
        job.diag()
    );
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "the resumed job's steps should be consecutive:\n{}",
        job.diag()
    );
    (out, job.stderr())
}

/// Preemption (SIGTERM) after periodic checkpoints, then resume by running the same command
/// again: the count continues and the job ends correct; its images are gone afterwards.
fn preempt_and_resume(name: &str, user: Option<(u32, u32)>) {
    let Some(sc) = scenario(name, user) else {
        return;
    };
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let opts = ["--every", "1s", "-v"];
    let mut job = supervise(&sc, &dir, &opts, &args);
    job.wait_line("step 20", READY_TIMEOUT);
    wait_generations(&sc, &job, &dir, 1);
    signal_pid(job.pid(), SIGTERM);
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert_eq!(
        st.code(),
        Some(0),
        "a preempted job exits 0 (--exit-after-checkpoint's default):\n{}",
        job.diag()
    );
    let before = steps(&job.stdout());
    let last = *before.last().expect("the first run printed steps");
    assert!(
        last < STEPS - 1,
        "the job must not have finished before its preemption:\n{}",
        job.diag()
    );
    let gens = generations(&dir);
    assert!(
        !gens.is_empty() && gens.len() <= 2,
        "--keep 2 (default): {gens:?}"
    );
    // The supervisor said where the job's images are; the status lists them as good.
    let status = sc.cr_run_status(&dir);
    assert!(
        status.stdout.contains("good") && status.stdout.contains("counter_job"),
        "{}",
        status.describe()
    );
    let out = finish(&sc, &dir, &["-v"], last);
    let _ = out;
    assert!(
        generations(&dir).is_empty(),
        "a finished job's images are removed: {:?}",
        generations(&dir)
    );
}

#[test]
fn preempted_job_resumes() {
    preempt_and_resume("sup-preempt", None);
}

#[test]
fn preempted_job_resumes_unprivileged() {
    preempt_and_resume("sup-preempt-nobody", Some(NOBODY));
}

/// `--checkpoint-signal` (USR2) takes a checkpoint and the job goes on; then the node "dies"
/// (everything SIGKILLed, no final checkpoint) and the same command resumes from that image.
#[test]
fn checkpoint_on_request_then_node_death() {
    let sc = Scenario::new("sup-node-death");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(&sc, &dir, &[], &args);
    job.wait_line("step 20", READY_TIMEOUT);
    signal_pid(job.pid(), 12); // SIGUSR2
    wait_generations(&sc, &job, &dir, 1);
    job.wait_line("step 60", READY_TIMEOUT);
    assert!(
        job.is_running(),
        "the job goes on after a requested checkpoint"
    );
    let before = steps(&job.stdout());
    job.kill();
    let last = *before.last().unwrap_or(&0);
    finish(&sc, &dir, &[], last);
}

/// A damaged newest generation is reported and the next older one is used.
#[test]
fn damaged_newest_generation_falls_back() {
    let sc = Scenario::new("sup-damaged");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(&sc, &dir, &["--keep", "2"], &args);
    job.wait_line("step 10", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    wait_generations(&sc, &job, &dir, 1);
    job.wait_line("step 40", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    wait_generations(&sc, &job, &dir, 2);
    let before = steps(&job.stdout());
    job.kill();
    let gens = generations(&dir);
    let newest = dir.join(gens.last().expect("two generations"));
    let mut bytes = fs::read(&newest).expect("read newest");
    let at = bytes.len() - 4096 - 100; // page data just before the trailer
    bytes[at] ^= 0xff;
    fs::write(&newest, &bytes).expect("damage newest");
    // --status tells the damaged generation from the good one, for a person.
    let status = sc.cr_run_status(&dir);
    let lines: Vec<&str> = status.stdout.lines().collect();
    assert!(
        lines.len() == 3
            && lines[0].starts_with("job counter_job-")
            && lines[1].contains("DAMAGED")
            && lines[2].contains("good, 1 process")
            && lines[1..]
                .iter()
                .all(|l| l.contains(" UTC ") && l.contains(" bytes ")),
        "one job, its newest generation damaged, the older good, each with time and size:\n{}",
        status.describe()
    );
    let mut rerun = supervise(&sc, &dir, &[], &args);
    let st = rerun.wait_exit(RESTART_TIMEOUT);
    rerun.wait_output_closed(Duration::from_secs(5));
    assert!(
        st.success() && rerun.stderr().contains("damaged image skipped"),
        "the damaged newest image must be reported and skipped:\n{}",
        rerun.diag()
    );
    let seen = steps(&rerun.stdout());
    let first = *seen.first().unwrap_or(&0);
    assert!(
        first > 0 && first <= 41 && first + 5 < *before.last().unwrap_or(&0),
        "resumed from the older generation (first step {first}):\n{}",
        rerun.diag()
    );
}

/// HTCondor's self-checkpointing: with `--exit-after-checkpoint 85 --every`, the job checkpoints
/// and exits 85; run again it resumes; eventually it finishes and exits 0.
#[test]
fn exit_after_checkpoint_cycles() {
    let sc = Scenario::new("sup-condor");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let opts = ["--every", "1s", "--exit-after-checkpoint", "85"];
    let mut runs = 0;
    let mut all = Vec::new();
    loop {
        runs += 1;
        assert!(runs < 30, "the job never finished:\n{}", sc.log());
        let mut job = supervise(&sc, &dir, &opts, &args);
        let st = job.wait_exit(RESTART_TIMEOUT);
        job.wait_output_closed(Duration::from_secs(5));
        all.extend(steps(&job.stdout()));
        match st.code() {
            Some(85) => continue,
            Some(0) => {
                assert!(job.stdout().contains("PASS counter_job"), "{}", job.diag());
                break;
            }
            _ => panic!("unexpected end ({st}):\n{}", job.diag()),
        }
    }
    assert!(
        runs >= 2,
        "the job should have been checkpointed and resumed"
    );
    assert_eq!(all.last().copied(), Some(STEPS - 1));
}

/// A job that ends by itself: cr_run exits with its code and removes its images; --no-resume
/// starts afresh even though images exist.
#[test]
fn exit_code_and_no_resume() {
    let sc = Scenario::new("sup-exit");
    let dir = ckpt_dir(&sc);
    let mut job = supervise(&sc, &dir, &["--keep-final"], &["30", "10", "3"]);
    job.wait_line("step 5", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    let st = job.wait_exit(RESTART_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(3),
        "cr_run exits as the job did:\n{}",
        job.diag()
    );
    assert!(
        !generations(&dir).is_empty(),
        "--keep-final keeps the images"
    );
    let mut again = supervise(&sc, &dir, &["--no-resume"], &["30", "10", "3"]);
    let st = again.wait_exit(RESTART_TIMEOUT);
    again.wait_output_closed(Duration::from_secs(5));
    assert_eq!(st.code(), Some(3), "{}", again.diag());
    assert_eq!(
        steps(&again.stdout()).first().copied(),
        Some(0),
        "--no-resume starts afresh:\n{}",
        again.diag()
    );
    assert!(generations(&dir).is_empty(), "images removed at the end");
}

/// Pids never block a resume: as root, the job's original pid is taken by another process when
/// it resumes; the supervisor restores it in a private pid namespace anyway.
#[test]
fn resume_while_original_pids_are_taken() {
    if !is_root() {
        println!("note: not root: pid namespaces are always used without root");
        return;
    }
    let sc = Scenario::new("sup-pid-taken");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(&sc, &dir, &[], &args);
    job.wait_line("step 10", READY_TIMEOUT);
    let program_pid = children_of(job.pid())
        .into_iter()
        .next()
        .expect("the job runs under cr_run");
    signal_pid(job.pid(), SIGTERM);
    assert_eq!(
        job.wait_exit(TOOL_TIMEOUT).code(),
        Some(0),
        "{}",
        job.diag()
    );
    let before = steps(&job.stdout());
    // Take the program's pid.
    let holder_prog = sc.program("tree_holdpid");
    let mut argv = holder_prog.argv.clone();
    argv.push(program_pid.to_string().into());
    let mut holder = sc.start("tree_holdpid", sc.command(&argv));
    holder.wait_ready();
    assert!(pid_alive(program_pid), "pid {program_pid} is held");
    let (_, err) = finish(&sc, &dir, &["-v"], *before.last().unwrap_or(&0));
    assert!(
        err.contains("restoring the job in a private pid namespace"),
        "-v says where the job's pids come from:\n{err}"
    );
    holder.kill();
}

// ---- --store URL: images shipped off the node and fetched back ----

/// The generation files under a store directory (a `file://` store's or the WebDAV root's).
fn stored(dir: &Path) -> Vec<String> {
    generations(dir)
}

/// Waits until `dir` (a store's directory) holds at least `n` generations.
fn wait_stored(sc: &Scenario, job: &Job, dir: &Path, n: usize) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while stored(dir).len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} generations reached the store {} after {READY_TIMEOUT:?}: {:?}\n{}\n{}",
            dir.display(),
            stored(dir),
            job.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The node dies after two requested checkpoints and a preemption, all shipped to the store
/// `url` (whose files are in `store_dir`); the newest image in the store is damaged; the job
/// resumes elsewhere (an empty checkpoint directory) from the older one in the store, finishes
/// correct, and its images leave the store.
fn resume_from_store(sc: &Scenario, url: &str, store_dir: &Path) {
    let dir = ckpt_dir(sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let opts = ["--store", url, "-v"];
    let mut job = supervise(sc, &dir, &opts, &args);
    job.wait_line("step 10", READY_TIMEOUT);
    signal_pid(job.pid(), 12); // SIGUSR2: a checkpoint, the job goes on
    wait_stored(sc, &job, store_dir, 1);
    job.wait_line("step 40", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    wait_stored(sc, &job, store_dir, 2);
    job.wait_line("step 60", READY_TIMEOUT);
    signal_pid(job.pid(), SIGTERM); // preemption: checkpoint, ship, exit
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{}", job.diag());
    let before = steps(&job.stdout());
    assert!(
        job.stderr().contains("shipped"),
        "uploads are reported under -v:\n{}",
        job.diag()
    );
    let in_store = stored(store_dir);
    assert_eq!(
        in_store.len(),
        2,
        "the store keeps the newest --keep (2) generations, the preemption's included: \
         {in_store:?}\n{}",
        job.diag()
    );
    // The node is gone: a new, empty checkpoint directory elsewhere.
    fs::remove_dir_all(&dir).expect("remove the dead node's directory");
    let newest = store_dir.join(in_store.last().expect("two generations"));
    let mut bytes = fs::read(&newest).expect("read newest");
    let at = bytes.len() - 4096 - 100;
    bytes[at] ^= 0xff;
    fs::write(&newest, &bytes).expect("damage the newest generation in the store");
    let dir2 = sc.root().join("elsewhere");
    fs::create_dir_all(&dir2).expect("create");
    if let Some((uid, gid)) = sc.user() {
        std::os::unix::fs::chown(&dir2, Some(uid), Some(gid)).expect("chown");
    }
    let mut rerun = supervise(sc, &dir2, &opts, &args);
    let st = rerun.wait_exit(RESTART_TIMEOUT);
    rerun.wait_output_closed(Duration::from_secs(5));
    let err = rerun.stderr();
    assert!(
        st.success()
            && err.contains("damaged image in")
            && err.contains("fetched")
            && rerun
                .stdout()
                .contains(&format!("PASS counter_job {STEPS}")),
        "the job resumes from the older good image in the store:\n{}\n{}",
        rerun.diag(),
        sc.log()
    );
    let seen = steps(&rerun.stdout());
    let first = *seen.first().unwrap_or(&0);
    let last = *before.last().unwrap_or(&0);
    // The second generation was asked for once step 40 was printed (it is taken a few steps
    // later on a loaded machine); the damaged third one was taken at the preemption.
    assert!(
        first > 40 && first < last,
        "resumed from the second generation (first step {first}, preempted at {last}):\n{}",
        rerun.diag()
    );
    assert!(
        stored(store_dir).is_empty() && generations(&dir2).is_empty(),
        "a finished job's images leave the store and the node: {:?} {:?}",
        stored(store_dir),
        generations(&dir2)
    );
}

/// A `file://` store (a shared file system's directory).
#[test]
fn store_file_url_resume_elsewhere() {
    let sc = Scenario::new("sup-store-file");
    let store_dir = sc.root().join("store/jobs");
    let url = format!("file://{}", store_dir.display());
    resume_from_store(&sc, &url, &store_dir);
}

/// The same unprivileged.
#[test]
fn store_file_url_resume_elsewhere_unprivileged() {
    let Some(sc) = scenario("sup-store-file-nobody", Some(NOBODY)) else {
        return;
    };
    let store = sc.root().join("store");
    fs::create_dir_all(&store).expect("create");
    std::os::unix::fs::chown(&store, Some(NOBODY.0), Some(NOBODY.1)).expect("chown");
    let store_dir = store.join("jobs");
    let url = format!("file://{}", store_dir.display());
    resume_from_store(&sc, &url, &store_dir);
}

/// A store that cannot be reached never harms the job: failures are reported and retried, the
/// local copies stay (beyond --keep, as none is confirmed), and the job ends as it would.
#[test]
fn store_unreachable_job_goes_on() {
    let sc = Scenario::new("sup-store-down");
    let dir = ckpt_dir(&sc);
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/jobs");
    let mut job = supervise(
        &sc,
        &dir,
        &["--store", &url, "--keep", "1", "--keep-final"],
        &["200", "20"],
    );
    job.wait_line("step 10", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    wait_generations(&sc, &job, &dir, 1);
    job.wait_line("step 40", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    wait_generations(&sc, &job, &dir, 2);
    let st = job.wait_exit(RESTART_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert!(
        st.success()
            && job.stdout().contains("PASS counter_job 200")
            && job.stderr().contains("failed (attempt 1 of"),
        "the job ends correct and the failed uploads are reported:\n{}",
        job.diag()
    );
    assert_eq!(
        generations(&dir).len(),
        2,
        "unshipped generations are kept beyond --keep 1"
    );
}

/// nginx from Debian as a WebDAV store on 127.0.0.1, with a private configuration; stopped when
/// dropped (also when the test fails).
struct Nginx {
    child: std::process::Child,
    /// The files it serves.
    root: PathBuf,
    port: u16,
    base: PathBuf,
}

/// The dav_ext module (PROPFIND, which object_store's HTTP store lists with): Debian's
/// libnginx-mod-http-dav-ext.
const DAV_EXT: &str = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so";

impl Nginx {
    /// Starts it, or `None` (with a note) when nginx is not installed outside CI.
    fn start(name: &str) -> Option<Nginx> {
        let have = have_command("nginx") || Path::new("/usr/sbin/nginx").exists();
        if !have || !Path::new(DAV_EXT).exists() {
            assert!(
                !in_ci(),
                "CI must install nginx and libnginx-mod-http-dav-ext (.ci/run)"
            );
            println!("note: nginx or its dav_ext module is not installed: test skipped");
            return None;
        }
        let base = std::env::temp_dir().join(format!("cr-nginx-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("root");
        for d in [&root, &base.join("tmp")] {
            fs::create_dir_all(d).expect("create");
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).expect("chmod");
        // As root, nginx's workers run as nobody: the served tree is theirs.
        let user_line = if is_root() {
            for d in [&root, &base.join("tmp")] {
                std::os::unix::fs::chown(d, Some(NOBODY.0), Some(NOBODY.1)).expect("chown");
            }
            "user nobody nogroup;"
        } else {
            ""
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let b = base.display();
        let conf = format!(
            "load_module {DAV_EXT};
daemon off;
pid {b}/nginx.pid;
error_log {b}/error.log info;
{user_line}
worker_processes 1;
events {{ worker_connections 64; }}
http {{
  access_log {b}/access.log;
  client_body_temp_path {b}/tmp/body;
  proxy_temp_path {b}/tmp/proxy;
  fastcgi_temp_path {b}/tmp/fastcgi;
  uwsgi_temp_path {b}/tmp/uwsgi;
  scgi_temp_path {b}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {b}/root;
    client_max_body_size 0;
    location / {{
      dav_methods PUT DELETE MKCOL COPY MOVE;
      dav_ext_methods PROPFIND OPTIONS;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }}
  }}
}}
"
        );
        fs::write(base.join("nginx.conf"), conf).expect("write nginx.conf");
        let nginx = if have_command("nginx") {
            "nginx"
        } else {
            "/usr/sbin/nginx"
        };
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(nginx)
            .arg("-p")
            .arg(&base)
            .arg("-c")
            .arg(base.join("nginx.conf"))
            .arg("-e")
            .arg(base.join("error.log"))
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start nginx");
        let n = Nginx {
            child,
            root,
            port,
            base,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on port {port}: {}",
                fs::read_to_string(n.base.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(n)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pg = self.child.id() as i32;
        // SAFETY: ending the process group of the nginx we started (master and worker).
        unsafe { libc::kill(-pg, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above, for whatever did not end.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// A WebDAV store served by a real nginx: ship, die, resume elsewhere from the store.
#[test]
fn store_webdav_nginx_resume_elsewhere() {
    let Some(nginx) = Nginx::start("dav") else {
        return;
    };
    let sc = Scenario::new("sup-store-dav");
    let url = nginx.url("cluster/jobs");
    let store_dir = nginx.root.join("cluster/jobs");
    resume_from_store(&sc, &url, &store_dir);
}

/// HTCondor's self-checkpointing (contrib/htcondor/job.sub) without the daemons: the job runs in
/// a scratch directory with a relative `--checkpoint-dir`; on the vacate signal (TERM) it
/// checkpoints and exits 85 (`checkpoint_exit_code`); the checkpoint directory is "transferred"
/// (copied) into a new scratch directory elsewhere, the old one is gone, and the same command
/// started there resumes the count (its working directory relocated to the new scratch
/// directory) and ends correct with exit status 0.
#[test]
fn htcondor_self_checkpoint_elsewhere() {
    let sc = Scenario::new("sup-htcondor");
    let prog = sc.program("counter_job");
    let args = default_args();
    let command = |sandbox: &Path| {
        let mut argv: Vec<OsString> = vec![
            sc.tools().cr_run.clone().into(),
            "--checkpoint-dir".into(),
            "libcr-ckpt".into(),
            "--every".into(),
            "30m".into(),
            "--exit-after-checkpoint".into(),
            "85".into(),
            "--".into(),
        ];
        argv.extend(prog.argv.iter().cloned());
        argv.extend(args.iter().map(OsString::from));
        let mut cmd = sc.command(&argv);
        cmd.current_dir(sandbox);
        cmd
    };
    let first = sc.root().join("execute/dir_1001");
    let second = sc.root().join("execute/dir_2002");
    fs::create_dir_all(&first).expect("create");
    let mut job = sc.start("condor run 1", command(&first));
    job.wait_line("step 30", READY_TIMEOUT);
    signal_pid(job.pid(), SIGTERM); // condor_vacate
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    assert_eq!(
        st.code(),
        Some(85),
        "a vacated job exits with checkpoint_exit_code:\n{}",
        job.diag()
    );
    let before = steps(&job.stdout());
    // transfer_checkpoint_files = libcr-ckpt: to the submit side, then into the new sandbox.
    fs::create_dir_all(second.join("libcr-ckpt")).expect("create");
    let mut moved = 0;
    for e in fs::read_dir(first.join("libcr-ckpt"))
        .expect("checkpoint dir")
        .flatten()
    {
        fs::copy(e.path(), second.join("libcr-ckpt").join(e.file_name())).expect("transfer");
        moved += 1;
    }
    assert!(moved >= 1 && !generations(&second.join("libcr-ckpt")).is_empty());
    fs::remove_dir_all(&first).expect("the first machine's sandbox is gone");
    let mut again = sc.start("condor run 2", command(&second));
    let st = again.wait_exit(RESTART_TIMEOUT);
    again.wait_output_closed(Duration::from_secs(5));
    assert!(
        st.code() == Some(0)
            && again
                .stdout()
                .contains(&format!("PASS counter_job {STEPS}"))
            && again
                .stderr()
                .contains("is gone: paths under it now lead to"),
        "the job resumed in the new sandbox (its working directory relocated there) ends \
         correct with 0:\n{}\n{}",
        again.diag(),
        sc.log()
    );
    let seen = steps(&again.stdout());
    let last = *before.last().unwrap_or(&0);
    assert!(
        seen.first().is_some_and(|&f| f > 0 && f <= last + 1),
        "the count continues from the checkpoint (run 1 ended at {last}):\n{}",
        again.diag()
    );
    assert!(
        generations(&second.join("libcr-ckpt")).is_empty(),
        "the finished job's images are removed"
    );
}

/// A program killed by a signal (as Slurm's `scontrol requeue` signals every process of a job
/// at once) did not finish: its images stay, cr_run says so and ends the same way, and the
/// next run resumes from them.
#[test]
fn program_killed_by_signal_keeps_images() {
    let sc = Scenario::new("sup-killed");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(&sc, &dir, &[], &args);
    job.wait_line("step 20", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    wait_generations(&sc, &job, &dir, 1);
    job.wait_line("step 40", READY_TIMEOUT);
    let program = children_of(job.pid())
        .into_iter()
        .next()
        .expect("the program runs under cr_run");
    signal_pid(program, SIGTERM);
    let st = job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    use std::os::unix::process::ExitStatusExt;
    assert!(
        st.signal() == Some(SIGTERM) && job.stderr().contains("killed by signal 15"),
        "cr_run ends as its program did and says why the images stay:\n{}",
        job.diag()
    );
    assert!(!generations(&dir).is_empty(), "the images are kept");
    let last = *steps(&job.stdout()).last().unwrap_or(&0);
    finish(&sc, &dir, &[], last);
}

/// The node died and the job starts on "another machine": a new user + UTS + pid namespace
/// made by the test (another hostname, other pids, an empty checkpoint directory), the images
/// reached only through a WebDAV store served by a real nginx. The job resumes from the store
/// and ends correct.
#[test]
fn resume_on_another_machine_through_webdav() {
    if !have_command("unshare") {
        assert!(!in_ci(), "CI has util-linux's unshare");
        println!("note: unshare is not installed: test skipped");
        return;
    }
    let Some(nginx) = Nginx::start("other") else {
        return;
    };
    let sc = Scenario::new("sup-other-machine");
    let url = nginx.url("site/jobs");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut job = supervise(&sc, &dir, &["--store", &url], &args);
    job.wait_line("step 40", READY_TIMEOUT);
    signal_pid(job.pid(), SIGTERM);
    assert_eq!(
        job.wait_exit(TOOL_TIMEOUT).code(),
        Some(0),
        "{}",
        job.diag()
    );
    job.wait_output_closed(Duration::from_secs(5));
    let last = *steps(&job.stdout()).last().unwrap_or(&0);
    assert_eq!(
        stored(&nginx.root.join("site/jobs")).len(),
        1,
        "the preemption's image reached the store before cr_run exited"
    );
    fs::remove_dir_all(&dir).expect("the first node is gone");
    let elsewhere = sc.root().join("node2");
    fs::create_dir_all(&elsewhere).expect("create");
    let prog = sc.program("counter_job");
    let mut inner = vec![
        sc.tools().cr_run.display().to_string(),
        "--checkpoint-dir".into(),
        elsewhere.display().to_string(),
        "--store".into(),
        url.clone(),
        "-v".into(),
        "--".into(),
    ];
    inner.extend(prog.argv.iter().map(|a| a.to_string_lossy().into_owned()));
    inner.extend(args.iter().map(|a| a.to_string()));
    let script = format!(
        "hostname node2.elsewhere && [ \"$(hostname)\" = node2.elsewhere ] && [ $$ = 1 ] && \
         echo on node2 >&2 && exec {}",
        inner.join(" ")
    );
    let argv = [
        "unshare",
        "--user",
        "--map-root-user",
        "--uts",
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        &script,
    ];
    let mut rerun = sc.start("cr_run on another machine", sc.command(&argv));
    let st = rerun.wait_exit(RESTART_TIMEOUT);
    rerun.wait_output_closed(Duration::from_secs(5));
    let err = rerun.stderr();
    assert!(
        st.success()
            && err.contains("on node2")
            && err.contains("fetched")
            && rerun
                .stdout()
                .contains(&format!("PASS counter_job {STEPS}")),
        "the job resumes on the other machine from the store and ends correct:\n{}\n{}",
        rerun.diag(),
        sc.log()
    );
    let first = *steps(&rerun.stdout()).first().unwrap_or(&0);
    assert!(
        first > 0 && first <= last + 1,
        "the count continues (first step {first}, the first node printed up to {last}):\n{}",
        rerun.diag()
    );
    assert!(
        stored(&nginx.root.join("site/jobs")).is_empty(),
        "the finished job's images left the store"
    );
}

/// Periodic checkpoints are copy-on-write (said under -v), the preemption's is written stopped
/// (the job ends anyway); a resumed job (restored in its own pid namespace) is checkpointed
/// copy-on-write too, and its images resume correctly.
#[test]
fn periodic_checkpoints_are_copy_on_write() {
    let sc = Scenario::new("sup-cow");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let opts = ["--every", "1s", "-v"];
    let mut job = supervise(&sc, &dir, &opts, &args);
    job.wait_line("step 20", READY_TIMEOUT);
    wait_generations(&sc, &job, &dir, 1);
    signal_pid(job.pid(), SIGTERM);
    job.wait_exit(TOOL_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(5));
    let err = job.stderr();
    let modes: Vec<&str> = err.lines().filter(|l| l.contains(" mode=")).collect();
    assert!(
        modes.len() >= 2
            && modes[..modes.len() - 1]
                .iter()
                .all(|l| l.contains("mode=cow stop="))
            && modes[modes.len() - 1].contains("mode=stopped"),
        "periodic checkpoints copy-on-write, the preemption's stopped:\n{}",
        job.diag()
    );
    let last = *steps(&job.stdout()).last().expect("steps");
    // Resumed, with periodic checkpoints again: copy-on-write in the restored job.
    let mut job = supervise(&sc, &dir, &opts, &args);
    let deadline = Instant::now() + READY_TIMEOUT;
    while !job.stderr().contains("mode=cow stop=") {
        assert!(
            Instant::now() < deadline && job.is_running(),
            "no copy-on-write checkpoint of the resumed job:\n{}",
            job.diag()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal_pid(job.pid(), SIGTERM);
    job.wait_exit(TOOL_TIMEOUT);
    let last2 = *steps(&job.stdout()).last().expect("steps");
    assert!(last2 >= last, "{}", job.diag());
    finish(&sc, &dir, &["-v"], last2);
}

/// The path a descriptor of a process leads to.
fn fd_path(pid: u32, fd: i32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default()
}

/// Waits until `file` holds `want`.
fn wait_file_contains(sc: &Scenario, job: &mut Job, file: &Path, want: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !fs::read_to_string(file).unwrap_or_default().contains(want) {
        assert!(
            Instant::now() < deadline && job.is_running(),
            "no '{want}' in {}:\n{}\n{}\n{}",
            file.display(),
            fs::read_to_string(file).unwrap_or_default(),
            job.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A resumed program's standard input, output and error are the new cr_run's own, whatever
/// they were at checkpoint time: the first run writes into files of its own (truncated), the
/// second run is started with another input file and output files opened for appending that
/// already hold something. The resumed program's descriptors 0-2 are the second run's files,
/// its output is appended after what was there (not written at its old offset, not into the
/// first run's file), and the count goes on.
#[test]
fn resumed_job_has_the_new_runs_stdio() {
    let sc = Scenario::new("sup-stdio");
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let prog = sc.program("counter_job");
    let at = |f: &str| sc.root().join(f);
    let run = |redirect: String| {
        let mut argv: Vec<OsString> = vec![
            "sh".into(),
            "-c".into(),
            format!("exec \"$0\" \"$@\" {redirect}").into(),
            sc.tools().cr_run.clone().into(),
            "--checkpoint-dir".into(),
            dir.clone().into(),
            "--".into(),
        ];
        argv.extend(prog.argv.iter().cloned());
        argv.extend(args.iter().map(OsString::from));
        sc.start("cr_run, stdio to files", sc.command(&argv))
    };
    let q = |f: &str| format!("'{}'", at(f).display());
    let mut first = run(format!("</dev/null >{} 2>{}", q("run1.out"), q("run1.err")));
    wait_file_contains(&sc, &mut first, &at("run1.out"), "step 20\n");
    signal_pid(first.pid(), SIGTERM);
    assert_eq!(
        first.wait_exit(TOOL_TIMEOUT).code(),
        Some(0),
        "{}",
        first.diag()
    );
    let out1 = fs::read_to_string(at("run1.out")).expect("run1.out");
    let last = *steps(&out1).last().expect("the first run counted");
    fs::write(at("run2.in"), "input of the second run\n").expect("write");
    fs::write(at("run2.out"), "earlier output\n").expect("write");
    fs::write(at("run2.err"), "earlier errors\n").expect("write");
    if let Some((uid, gid)) = sc.user() {
        for f in ["run2.in", "run2.out", "run2.err"] {
            std::os::unix::fs::chown(at(f), Some(uid), Some(gid)).expect("chown");
        }
    }
    let mut second = run(format!(
        "<{} >>{} 2>>{}",
        q("run2.in"),
        q("run2.out"),
        q("run2.err")
    ));
    // A step line of the resumed program in the second run's output.
    let deadline = Instant::now() + READY_TIMEOUT;
    while steps(&fs::read_to_string(at("run2.out")).unwrap_or_default()).is_empty() {
        assert!(
            Instant::now() < deadline && second.is_running(),
            "the resumed program wrote no step into the second run's output:\n{}\n{}",
            second.diag(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // cr_run -> the init of the job's pid namespace -> the program.
    let program = children_of(second.pid())
        .into_iter()
        .flat_map(children_of)
        .next();
    if let Some(p) = program {
        for (fd, f) in [(0, "run2.in"), (1, "run2.out"), (2, "run2.err")] {
            let got = fd_path(p, fd);
            // The program may end (and its fds go) meanwhile: only a readable link counts.
            assert!(
                got.as_os_str().is_empty() || got == at(f),
                "fd {fd} of the resumed program leads to {} instead of {}",
                got.display(),
                at(f).display()
            );
        }
    }
    let st = second.wait_exit(RESTART_TIMEOUT);
    assert!(st.success(), "{}", second.diag());
    let out2 = fs::read_to_string(at("run2.out")).expect("run2.out");
    let seen = steps(&out2);
    assert!(
        out2.starts_with("earlier output\nstep ")
            && out2.contains(&format!("PASS counter_job {STEPS}"))
            && seen.first().is_some_and(|&f| f > 0 && f <= last + 1)
            && seen.last() == Some(&(STEPS - 1)),
        "the resumed program appends its count to the second run's output (the first ended \
         at step {last}):\n{out2}\n{}",
        second.diag()
    );
    assert_eq!(
        fs::read_to_string(at("run1.out")).expect("run1.out"),
        out1,
        "nothing more goes into the first run's output"
    );
    let err2 = fs::read_to_string(at("run2.err")).expect("run2.err");
    assert!(
        err2.starts_with("earlier errors\n") && err2.contains("cr_run: job counter_job-"),
        "the second run's errors are appended:\n{err2}"
    );
}

// ---- the object-store schemes: S3 for real (moto), GCS and Azure routed and refused ----

/// An S3-compatible endpoint on 127.0.0.1 (`tests/store/moto_s3.py`: moto's server, in
/// memory); stopped when dropped.
struct Moto {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    port: u16,
    bucket: String,
}

impl Moto {
    /// Starts it, or `None` (with a note) when moto is not installed outside CI.
    fn start() -> Option<Moto> {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("python3")
            .arg(manifest_dir().join("tests/store/moto_s3.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut m = Moto {
            child,
            stdin,
            lines,
            port: 0,
            bucket: String::new(),
        };
        match m.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => {
                let w: Vec<&str> = l.split_whitespace().collect();
                assert!(w.len() == 3 && w[0] == "READY", "moto_s3.py said '{l}'");
                m.port = w[1].parse().expect("port");
                m.bucket = w[2].to_string();
                Some(m)
            }
            Err(_) => {
                let code = m.child.wait().ok().and_then(|s| s.code());
                assert_eq!(code, Some(77), "moto_s3.py did not start");
                assert!(!in_ci(), "CI must install moto[server] (.ci/run)");
                println!("note: moto is not installed: test skipped");
                None
            }
        }
    }

    /// cr_run's environment for this endpoint (the usual AWS variables).
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The objects under `prefix`: key and size.
    fn list(&mut self, prefix: &str) -> Vec<(String, u64)> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "list {prefix}").expect("ask moto_s3.py");
        stdin.flush().expect("flush");
        let mut out = Vec::new();
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("moto_s3.py answers");
            if l == "END" {
                return out;
            }
            let (k, n) = l.rsplit_once(' ').expect("KEY SIZE");
            out.push((k.to_string(), n.parse().expect("size")));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stdin = None; // end of input: the server stops
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: ending the process group of the server we started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `--store s3://BUCKET/PREFIX` against a real S3 API (moto's server on 127.0.0.1, credentials
/// and endpoint from the AWS variables the README names): two generations shipped, the node
/// dies, the job resumes in an empty directory from the store and ends correct, and its
/// images leave the store.
#[test]
fn store_s3_resume_elsewhere() {
    let Some(mut s3) = Moto::start() else {
        return;
    };
    let sc = Scenario::new("sup-store-s3");
    let url = format!("s3://{}/cluster/jobs", s3.bucket);
    let env = s3.env();
    let dir = ckpt_dir(&sc);
    let args = default_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let opts = ["--store", url.as_str(), "-v"];
    let mut job = supervise_env(&sc, &dir, &opts, &args, &env);
    job.wait_line("step 10", READY_TIMEOUT);
    signal_pid(job.pid(), 12); // SIGUSR2: a checkpoint, the job goes on
    let deadline = Instant::now() + READY_TIMEOUT;
    while s3.list("cluster/jobs/").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no generation reached the S3 store:\n{}",
            job.diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    job.wait_line("step 40", READY_TIMEOUT);
    signal_pid(job.pid(), SIGTERM);
    assert_eq!(
        job.wait_exit(TOOL_TIMEOUT).code(),
        Some(0),
        "{}",
        job.diag()
    );
    job.wait_output_closed(Duration::from_secs(5));
    let last = *steps(&job.stdout()).last().expect("steps");
    let objects = s3.list("cluster/jobs/");
    let local: Vec<u64> = generations(&dir)
        .iter()
        .map(|g| fs::metadata(dir.join(g)).expect("stat").len())
        .collect();
    assert!(
        objects.len() == 2
            && objects
                .iter()
                .all(|(k, n)| k.starts_with("cluster/jobs/counter_job-")
                    && k.ends_with(".ckpt")
                    && local.contains(n))
            && job.stderr().contains("shipped"),
        "both generations are in the bucket under the URL's prefix, with their sizes: \
         {objects:?} (local sizes {local:?})\n{}",
        job.diag()
    );
    fs::remove_dir_all(&dir).expect("the node is gone");
    let dir2 = sc.root().join("elsewhere");
    fs::create_dir_all(&dir2).expect("create");
    let out = finish_env(&sc, &dir2, &opts, last, &env);
    let _ = out;
    assert!(
        s3.list("cluster/jobs/").is_empty(),
        "the finished job's images left the bucket: {:?}",
        s3.list("cluster/jobs/")
    );
}

/// Environment variables for cr_run.
type Env = Vec<(String, String)>;

/// A fake cloud endpoint on 127.0.0.1: refuses every request (403) and records its request
/// line; stops when dropped.
struct Refuser {
    port: u16,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Refuser {
    fn start() -> Refuser {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l2, s2) = (lines.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                // Headers, then the body (Content-Length) read and dropped.
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    match conn.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let len: u64 = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let _ = std::io::copy(&mut (&mut conn).take(len), &mut std::io::sink());
                if let Some(first) = text.lines().next() {
                    l2.lock().unwrap().push(percent_decoded(first));
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Refuser {
            port,
            lines,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// `s` with its `%XX` escapes decoded (GCS's client escapes every '/' and '-' of a key).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `gs://` and `az://` are accepted and reach their services' APIs: with the endpoint each
/// backend can be pointed at (a GCS key's `gcs_base_url`, the Azure emulator's URL) on a fake
/// server that refuses everything, each generation's upload arrives as a PUT of
/// `PREFIX/NAME.NNNNNN.ckpt` in the URL's bucket or container, the refusal is reported and
/// retried, and the job ends correct all the same. Without the Azure account, `az://` is one
/// clear line and the job is not started.
#[test]
fn store_gs_and_az_reach_their_services() {
    let sc = Scenario::new("sup-store-clouds");
    let cloud = Refuser::start();
    let base = format!("http://127.0.0.1:{}", cloud.port);
    let gcs_key = format!(
        "{{\"private_key\":\"\",\"private_key_id\":\"\",\"client_email\":\"test@example.invalid\",\
         \"gcs_base_url\":\"{base}\",\"disable_oauth\":true}}"
    );
    let cases: [(&str, &str, Env); 2] = [
        (
            "gs://libcr-bucket/cluster/jobs",
            "/libcr-bucket/cluster/jobs/counter_job-",
            vec![("GOOGLE_SERVICE_ACCOUNT_KEY".into(), gcs_key)],
        ),
        (
            "az://libcr-container/cluster/jobs",
            "/devstoreaccount1/libcr-container/cluster/jobs/counter_job-",
            vec![
                ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
                ("AZURITE_BLOB_STORAGE_URL".into(), base.clone()),
            ],
        ),
    ];
    for (url, want, env) in cases {
        let before = cloud.requests().len();
        let dir = sc.root().join(format!("ckpt-{}", &url[..2]));
        fs::create_dir_all(&dir).expect("create");
        let opts = ["--store", url, "-v"];
        let mut job = supervise_env(&sc, &dir, &opts, &["200", "15"], &env);
        job.wait_line("step 10", READY_TIMEOUT);
        signal_pid(job.pid(), 12);
        let deadline = Instant::now() + READY_TIMEOUT;
        let put = loop {
            let reqs = cloud.requests();
            if let Some(p) = reqs[before..]
                .iter()
                .find(|l| l.starts_with("PUT ") && l.contains(want))
            {
                break p.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no upload of {url} reached the endpoint: {:?}\n{}",
                &reqs[before..],
                job.diag()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let st = job.wait_exit(RESTART_TIMEOUT);
        job.wait_output_closed(Duration::from_secs(5));
        assert!(
            put.contains(".000001.ckpt")
                && st.success()
                && job.stdout().contains("PASS counter_job 200")
                && job
                    .stderr()
                    .contains(&format!("to {url} failed (attempt 1 of")),
            "{url}: the upload ({put}) is refused, reported, and the job ends correct:\n{}",
            job.diag()
        );
    }
    // No account for az:// (and no emulator): refused before anything starts.
    let dir = sc.root().join("ckpt-noaccount");
    let mut cmd = supervise_command(&sc, &dir, &["--store", "az://c/jobs"], &["10", "10"]);
    for v in [
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_USE_EMULATOR",
        "AZURE_STORAGE_ACCOUNT_KEY",
    ] {
        cmd.env_remove(v);
    }
    let res = sc.run_tool("cr_run --store az:// without an account", cmd);
    let line = res.assert_failure_code(22);
    assert!(
        line.contains("az://c/jobs") && !res.stdout.contains("step 0"),
        "{}",
        res.describe()
    );
}

/// `--id NAME` names the job's images (instead of the default name derived from the program
/// and its arguments, which cr_run prints at start) and `--status` lists the job under it; a
/// name that cannot be a file name is one clear line, and nothing starts.
#[test]
fn job_id_names_the_images() {
    let sc = Scenario::new("sup-id");
    let dir = ckpt_dir(&sc);
    let mut job = supervise(
        &sc,
        &dir,
        &["--id", "sim-7.a", "--keep-final"],
        &["40", "10", "0"],
    );
    job.wait_line("step 5", READY_TIMEOUT);
    signal_pid(job.pid(), 12);
    let st = job.wait_exit(RESTART_TIMEOUT);
    assert!(st.success(), "{}", job.diag());
    let gens = generations(&dir);
    assert!(
        !gens.is_empty()
            && gens.iter().all(|g| g.starts_with("sim-7.a.0000"))
            && job.stderr().contains("cr_run: job sim-7.a, checkpoints in"),
        "images named after --id: {gens:?}\n{}",
        job.diag()
    );
    let status = sc.cr_run_status(&dir);
    assert!(
        status.stdout.starts_with("job sim-7.a: ") && status.stdout.contains("counter_job 40 10 0"),
        "{}",
        status.describe()
    );
    for bad in ["../x", "a/b", ".hidden", ""] {
        let cmd = supervise_command(&sc, &dir, &["--id", bad], &["10", "10"]);
        let res = sc.run_tool("cr_run --id BAD", cmd);
        let line = res.assert_failure_code(22);
        assert!(
            line.contains("invalid --id") && !res.stdout.contains("step"),
            "{}",
            res.describe()
        );
    }
}
