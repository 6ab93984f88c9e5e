//! BLCR API semantics: the `c-tests/api_*.c` programs, run the way BLCR's own SEQ tests are run.
//!
//! Each program calls the libcr API on itself (callbacks, critical sections, self-checkpoints,
//! hooks, info getters, restart through the API) and reports on stdout in the protocol of BLCR's
//! `seq_wrapper` (`tests/seq_wrapper.c`):
//!
//! * every line that is not a comment starts with the next sequence number, `000`, `001`, … (no
//!   leading blanks); the last one is `<n> DONE` and nothing may follow it;
//! * lines starting with `#` are comments; `#ST_ALARM:<s>` (kill the process group after `s`
//!   seconds: failure; default [`DEFAULT_ALARM`]), `#ST_IGNORE:<regex>` (ignore matching lines),
//!   `#ST_SIGNAL:<n>` (the program must die of signal `n`), `#ST_RETURN:<n>` (expected exit code,
//!   default 0) are directives;
//! * a line starting with `XXX` is a failure.
//!
//! Every program is compiled once per run (warnings are failures) against `include/` and the
//! freshly built `libcr.so`, and runs in its own process group, in its own temporary directory
//! (its cwd: context files land there), with stdin null. The group is killed afterwards. The
//! environment has `CR_CHECKPOINT`/`CR_RESTART` (the built tools) and `LIBCR_DISABLE_NSCD=1`.
//! A failure prints the whole output, stderr, the exit status and the rule that was broken.
//!
//! Run one test with e.g. `cargo test --release --test api order -- --nocapture`.

mod common;

use common::*;
use std::collections::HashMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Seconds a program may run when it prints no `#ST_ALARM`.
const DEFAULT_ALARM: u64 = 60;

// ---------------------------------------------------------------------------------------------
// Building the programs
// ---------------------------------------------------------------------------------------------

/// `gcc -O1 -Wall -Wextra -pthread -I include -o OUT c-tests/NAME.c -L$LIBDIR -lcr
/// -Wl,-rpath,$LIBDIR` plus `extra`.
fn gcc(name: &str, out: &Path, extra: &[&str]) -> Command {
    let lib = lib_dir();
    let mut cmd = Command::new("gcc");
    cmd.args(["-O1", "-Wall", "-Wextra", "-pthread", "-I"])
        .arg(include_dir())
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(c_tests_dir().join(format!("{name}.c")))
        .arg(format!("-L{}", lib.display()))
        .arg("-lcr")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .current_dir(build_dir())
        .stdin(Stdio::null());
    cmd
}

fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The compiled program `name` (built on first use; compiler errors and warnings panic).
fn program(name: &str) -> PathBuf {
    type Slot = Arc<OnceLock<Result<PathBuf, String>>>;
    static SLOTS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    let slot: Slot = SLOTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_string())
        .or_default()
        .clone();
    let res = slot.get_or_init(|| {
        let out = build_dir().join(name);
        let tmp = build_dir().join(format!(".{name}.building"));
        let extra: &[&str] = if name == "api_deprecated" {
            &["-Wno-deprecated-declarations"]
        } else {
            &[]
        };
        let mut cmd = gcc(name, &tmp, extra);
        let line = command_line(&cmd);
        let o = cmd
            .output()
            .map_err(|e| format!("cannot run `{line}`: {e}"))?;
        let diag = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if !o.status.success() || !diag.trim().is_empty() {
            return Err(format!(
                "building {name} failed or warned ({}):\n$ {line}\n{diag}",
                o.status
            ));
        }
        fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
        Ok(out)
    });
    match res {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The SEQ rules
// ---------------------------------------------------------------------------------------------

/// How a program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Code(i32),
    Signal(i32),
    /// Killed by the harness when its `#ST_ALARM` expired.
    Alarm(u64),
}

impl End {
    fn of(st: ExitStatus) -> End {
        match (st.code(), st.signal()) {
            (Some(c), _) => End::Code(c),
            (None, Some(s)) => End::Signal(s),
            _ => End::Code(-1),
        }
    }
}

/// `#ST_ALARM:<s>` of the output so far (the first one).
fn alarm_of(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix("#ST_ALARM:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A minimal regular expression matcher for `#ST_IGNORE` (Kernighan & Pike): literal characters,
/// `.`, `*` (after a character or `.`), `^`, `$`, and `\` to quote the next character.
fn regex_match(re: &str, text: &str) -> bool {
    fn atoms(re: &str) -> Vec<(Option<char>, bool)> {
        // (Some(c) literal / None any, starred)
        let mut v = Vec::new();
        let mut it = re.chars().peekable();
        while let Some(c) = it.next() {
            let atom = match c {
                '.' => None,
                '\\' => Some(it.next().unwrap_or('\\')),
                c => Some(c),
            };
            let star = it.peek() == Some(&'*');
            if star {
                it.next();
            }
            v.push((atom, star));
        }
        v
    }
    fn here(re: &[(Option<char>, bool)], anchored_end: bool, text: &[char]) -> bool {
        match re.first() {
            None => !anchored_end || text.is_empty(),
            Some(&(atom, true)) => {
                let mut i = 0;
                loop {
                    if here(&re[1..], anchored_end, &text[i..]) {
                        return true;
                    }
                    if i < text.len() && atom.is_none_or(|c| c == text[i]) {
                        i += 1;
                    } else {
                        return false;
                    }
                }
            }
            Some(&(atom, false)) => {
                !text.is_empty()
                    && atom.is_none_or(|c| c == text[0])
                    && here(&re[1..], anchored_end, &text[1..])
            }
        }
    }
    let (re, start) = match re.strip_prefix('^') {
        Some(r) => (r, true),
        None => (re, false),
    };
    let (re, end) = if re.ends_with('$') && !re.ends_with("\\$") {
        (&re[..re.len() - 1], true)
    } else {
        (re, false)
    };
    let re = atoms(re);
    let text: Vec<char> = text.chars().collect();
    if start {
        return here(&re, end, &text);
    }
    (0..=text.len()).any(|i| here(&re, end, &text[i..]))
}

/// Check a program's output and end against the SEQ rules; `Err` names the first broken rule.
fn check_seq(out: &str, end: End) -> Result<(), String> {
    let mut ignore: Vec<String> = Vec::new();
    let mut want_signal: Option<i32> = None;
    let mut want_return = 0;
    let mut next = 0usize;
    let mut done_at: Option<usize> = None;
    let mut problems: Vec<String> = Vec::new();

    if !out.is_empty() && !out.ends_with('\n') {
        problems.push("the output does not end with a newline (incomplete last line)".into());
    }
    for (i, line) in out.lines().enumerate() {
        let n = i + 1;
        if let Some(d) = line.strip_prefix('#') {
            if let Some(v) = d.strip_prefix("ST_IGNORE:") {
                ignore.push(v.to_string());
            } else if let Some(v) = d.strip_prefix("ST_SIGNAL:") {
                match v.trim().parse() {
                    Ok(s) => want_signal = Some(s),
                    Err(_) => problems.push(format!("line {n}: bad directive {line:?}")),
                }
            } else if let Some(v) = d.strip_prefix("ST_RETURN:") {
                match v.trim().parse() {
                    Ok(r) => want_return = r,
                    Err(_) => problems.push(format!("line {n}: bad directive {line:?}")),
                }
            } else if let Some(v) = d.strip_prefix("ST_ALARM:") {
                if v.trim().parse::<u64>().is_err() {
                    problems.push(format!("line {n}: bad directive {line:?}"));
                }
            }
            if done_at.is_some() {
                problems.push(format!("line {n}: {line:?} after DONE"));
            }
            continue;
        }
        if ignore.iter().any(|re| regex_match(re, line)) {
            continue;
        }
        if line.starts_with("XXX") {
            problems.push(format!("line {n}: failure reported: {line}"));
            continue;
        }
        if let Some(d) = done_at {
            problems.push(format!("line {n}: {line:?} after the DONE line (line {d})"));
            continue;
        }
        let digits: String = line.chars().take_while(|c| c.is_ascii_digit()).collect();
        let rest = &line[digits.len()..];
        if digits.len() < 3 || !(rest.is_empty() || rest.starts_with(' ')) {
            problems.push(format!("line {n}: not a numbered line: {line:?}"));
            continue;
        }
        let num: usize = digits.parse().unwrap_or(usize::MAX);
        if num != next {
            problems.push(format!(
                "line {n}: sequence number {num}, expected {next:03}: {line:?}"
            ));
        }
        next = num.saturating_add(1);
        if rest.trim() == "DONE" {
            done_at = Some(n);
        }
    }
    if done_at.is_none() {
        problems.push(format!(
            "no DONE line (last number seen: {})",
            next.checked_sub(1)
                .map_or("none".into(), |v| format!("{v:03}"))
        ));
    }
    match (end, want_signal) {
        (End::Alarm(s), _) => problems.push(format!(
            "#ST_ALARM: still running after {s} s; the process group was killed"
        )),
        (End::Signal(s), Some(w)) if s == w => {}
        (End::Signal(s), _) => problems.push(format!(
            "killed by signal {s}, expected {}",
            want_signal.map_or(format!("exit code {want_return}"), |w| format!(
                "signal {w}"
            ))
        )),
        (End::Code(c), Some(w)) => problems.push(format!(
            "exited with code {c}, expected death by signal {w} (#ST_SIGNAL)"
        )),
        (End::Code(c), None) if c != want_return => {
            problems.push(format!("exit code {c}, expected {want_return}"))
        }
        (End::Code(_), None) => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

// ---------------------------------------------------------------------------------------------
// Running a program
// ---------------------------------------------------------------------------------------------

struct SeqRun {
    what: String,
    end: End,
    stdout: String,
    stderr: String,
    log: String,
}

impl SeqRun {
    fn describe(&self, why: &str) -> String {
        format!(
            "{} broke the SEQ rules:\n{why}\nend: {:?}\n--- stdout ---\n{}--- stderr ---\n{}\n--- scenario log ---\n{}",
            self.what, self.end, self.stdout, self.stderr, self.log
        )
    }

    /// Panic with the full output unless the run followed the SEQ rules.
    fn assert_seq(&self) {
        if let Err(why) = check_seq(&self.stdout, self.end) {
            panic!("{}", self.describe(&why));
        }
    }
}

/// The environment and cwd every program gets.
fn seq_command(sc: &Scenario, argv: &[std::ffi::OsString]) -> Command {
    let mut cmd = sc.command(argv);
    cmd.env("CR_CHECKPOINT", cr_checkpoint())
        .env("CR_RESTART", cr_restart())
        .env("LIBCR_DISABLE_NSCD", "1");
    cmd
}

/// Run `cmd` in its own process group (via [`Scenario::start`]) until it exits or its
/// `#ST_ALARM` expires; then kill whatever is left of the group.
fn run_job(sc: &Scenario, what: &str, cmd: Command) -> SeqRun {
    let mut job = sc.start(what, cmd);
    let started = Instant::now();
    let end = loop {
        if let Some(st) = job.try_wait_exit(Duration::from_millis(20)) {
            break End::of(st);
        }
        let alarm = alarm_of(&job.stdout()).unwrap_or(DEFAULT_ALARM);
        if started.elapsed() >= Duration::from_secs(alarm) {
            job.kill();
            break End::Alarm(alarm);
        }
    };
    // Let the output drain (a forked helper may still hold the pipe), then kill the group.
    job.wait_output_closed(Duration::from_secs(2));
    job.kill();
    job.wait_output_closed(Duration::from_secs(2));
    SeqRun {
        what: what.to_string(),
        end,
        stdout: job.stdout(),
        stderr: job.stderr(),
        log: sc.log(),
    }
}

/// Run `c-tests/NAME.c` with `args` in the scenario's directory.
fn run_in(sc: &Scenario, name: &str, args: &[&str]) -> SeqRun {
    let exe = program(name);
    let mut argv = vec![exe.into_os_string()];
    argv.extend(args.iter().map(Into::into));
    let what = std::iter::once(name)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    run_job(sc, &what, seq_command(sc, &argv))
}

/// One program, one fresh directory, the SEQ rules.
fn seq(name: &str, args: &[&str]) {
    let sc = Scenario::new(name);
    run_in(&sc, name, args).assert_seq();
}

// ---------------------------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------------------------

/// The checker accepts exactly what seq_wrapper accepts (so a broken program cannot pass).
#[test]
fn seq_rules_are_enforced() {
    let ok = "#ST_ALARM:5\n000 a\n001 b\n# comment\n002 DONE\n";
    assert_eq!(check_seq(ok, End::Code(0)), Ok(()));
    let bad: &[(&str, End, &str)] = &[
        ("000 a\n002 DONE\n", End::Code(0), "sequence"),
        ("001 a\n002 DONE\n", End::Code(0), "sequence"),
        ("000 a\n001 b\n", End::Code(0), "no DONE"),
        ("000 a\n001 DONE\n002 c\n", End::Code(0), "after the DONE"),
        ("000 a\n001 DONE\n#x\n", End::Code(0), "after DONE"),
        (
            "000 a\nXXX boom\n001 DONE\n",
            End::Code(0),
            "failure reported",
        ),
        ("000 a\n 001 b\n002 DONE\n", End::Code(0), "not a numbered"),
        ("000 a\nhello\n001 DONE\n", End::Code(0), "not a numbered"),
        ("000 a\n01 b\n002 DONE\n", End::Code(0), "not a numbered"),
        ("000 a\n001 DONE\n", End::Code(1), "exit code 1"),
        ("000 a\n001 DONE\n", End::Signal(9), "signal 9"),
        ("#ST_SIGNAL:9\n000 a\n001 DONE\n", End::Code(0), "signal 9"),
        (
            "#ST_SIGNAL:9\n000 a\n001 DONE\n",
            End::Signal(6),
            "signal 6",
        ),
        ("#ST_RETURN:3\n000 DONE\n", End::Code(0), "expected 3"),
        ("000 a\n001 DONE\n", End::Alarm(5), "ST_ALARM"),
        ("000 a\n001 DONE", End::Code(0), "newline"),
        ("", End::Code(0), "no DONE"),
    ];
    for (out, end, want) in bad {
        match check_seq(out, *end) {
            Ok(()) => panic!("accepted {out:?} ({end:?})"),
            Err(e) => assert!(e.contains(want), "{out:?}: {e:?} should mention {want:?}"),
        }
    }
    assert_eq!(
        check_seq("#ST_SIGNAL:9\n000 a\n001 DONE\n", End::Signal(9)),
        Ok(())
    );
    assert_eq!(check_seq("#ST_RETURN:3\n000 DONE\n", End::Code(3)), Ok(()));
    assert_eq!(
        check_seq(
            "#ST_IGNORE:^noise.*$\n000 a\nnoise 17\n001 DONE\nnoise\n",
            End::Code(0)
        ),
        Ok(())
    );
    assert!(regex_match("^a.c$", "abc"));
    assert!(!regex_match("^a.c$", "abcd"));
    assert!(regex_match("b*c", "xxc"));
    assert!(regex_match("^x\\.y", "x.y"));
    assert!(!regex_match("^x\\.y", "xzy"));
    assert_eq!(alarm_of("000 a\n#ST_ALARM:17\n"), Some(17));
}

/// `#ST_ALARM` is enforced: a program still running after its alarm fails, and its whole
/// process group (here a background child too) is killed.
#[test]
fn seq_alarm_kills_the_group() {
    let sc = Scenario::new("seq_alarm");
    let script = "echo '#ST_ALARM:1'; echo '000 started'; sleep 60 & echo \"#child=$!\"; sleep 60";
    let argv: Vec<std::ffi::OsString> = vec!["sh".into(), "-c".into(), script.into()];
    let started = Instant::now();
    let run = run_job(&sc, "alarm test", seq_command(&sc, &argv));
    assert_eq!(run.end, End::Alarm(1), "{}", run.describe("alarm"));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the alarm took {:?}",
        started.elapsed()
    );
    assert!(check_seq(&run.stdout, run.end)
        .unwrap_err()
        .contains("ST_ALARM"));
    let child: u32 = report_value(&run.stdout, "child")
        .and_then(|v| v.parse().ok())
        .expect("the script printed its child's pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !pid_alive(child),
        "the background child {child} survived the alarm"
    );
}

// ---------------------------------------------------------------------------------------------
// The programs
// ---------------------------------------------------------------------------------------------

/// stage0004 and argument checking: errors before `cr_init`, outside callbacks, bad arguments.
#[test]
fn noinit() {
    seq("api_noinit", &[]);
}

/// stage0001: signal-context callback, CS postpones a self-request, immediate checkpoint, TEMP.
#[test]
fn stage0001() {
    seq("api_stage0001", &[]);
}

/// replace_cb and §1.6: LIFO/FIFO order of both lists, thread context first, replacements.
#[test]
fn order() {
    seq("api_order", &[]);
}

/// critical_sections/stage0002: CS against self, other-thread and cr_checkpoint-tool requests.
#[test]
fn critical_sections() {
    seq("api_cs", &[]);
}

/// hooks (continue path): which hook runs in which thread; none after a failure.
#[test]
fn hooks() {
    seq("api_hooks", &[]);
}

/// get_info (continue path): checkpoint info in both contexts, /dev/null, cr_signal, the tool.
#[test]
fn get_info() {
    seq("api_info", &[]);
}

/// edeadlk + overlap: PROHIBIT_SELF on ourselves (EDEADLK) and on a child (fine), EBUSY for a
/// request of ourselves from inside our callback.
#[test]
fn edeadlk() {
    seq("api_edeadlk", &["basic"]);
}

/// edeadlk, forwarding half: a child's callback forwards the checkpoint to the requester:
/// allowed without PROHIBIT_SELF, EDEADLK with it.
#[test]
fn edeadlk_forward() {
    seq("api_edeadlk", &["forward"]);
}

/// The request handle calls: wait/poll timeouts, EAGAIN from reap, log, poll_msg, failing
/// restart requests.
#[test]
fn requests() {
    seq("api_requests", &["basic"]);
}

/// CR_CHKPT_ASYNC_ERR: request errors (EDEADLK, ESRCH) are reported by the reap, not the request.
#[test]
fn requests_async_err() {
    seq("api_requests", &["async"]);
}

/// fork(): clean libcr state in children; the parent keeps working.
#[test]
fn fork() {
    seq("api_fork", &[]);
}

/// The deprecated cr_request/cr_request_file/cr_request_fd; their declarations are deprecated.
#[test]
fn deprecated() {
    seq("api_deprecated", &[]);
    // _CR_DEPRECATED must be on the three declarations: with the warning as an error the
    // program must not compile, naming one of them.
    let out = build_dir().join("api_deprecated.must-not-build");
    let o = gcc("api_deprecated", &out, &["-Werror=deprecated-declarations"])
        .output()
        .expect("run gcc");
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && text.contains("deprecated")
            && ["cr_request", "cr_request_file", "cr_request_fd"]
                .iter()
                .any(|f| text.contains(&format!("'{f}'")) || text.contains(&format!("‘{f}’"))),
        "cr_request/cr_request_file/cr_request_fd must be declared deprecated in libcr.h; gcc said ({}):\n{text}",
        o.status
    );
}

// failed_cb (signal context) and failed_cb2 (thread context), one variant per test.

#[test]
fn failed_sig_temp() {
    seq("api_failed", &["sig-temp"]);
}
#[test]
fn failed_sig_omit() {
    seq("api_failed", &["sig-omit"]);
}
#[test]
fn failed_sig_tempcode() {
    seq("api_failed", &["sig-tempcode"]);
}
#[test]
fn failed_sig_perm() {
    seq("api_failed", &["sig-perm"]);
}
#[test]
fn failed_thr_temp() {
    seq("api_failed", &["thr-temp"]);
}
#[test]
fn failed_thr_omit() {
    seq("api_failed", &["thr-omit"]);
}
#[test]
fn failed_thr_tempcode() {
    seq("api_failed", &["thr-tempcode"]);
}
#[test]
fn failed_thr_perm() {
    seq("api_failed", &["thr-perm"]);
}

/// cs_enter_leave: 30 s of /dev/null checkpoints from a second thread against enter/leave loops.
#[test]
fn cs_enter_leave() {
    seq("api_cs_stress", &["30", "thread"]);
}

/// cs_enter_leave2: the same with a signal-context callback in the requesting thread.
#[test]
fn cs_enter_leave2() {
    seq("api_cs_stress", &["15", "signal"]);
}

/// cr_tryenter_cs: the same with the main thread retrying cr_tryenter_cs.
#[test]
fn cr_tryenter_cs() {
    seq("api_cs_stress", &["15", "tryenter"]);
}

// ---------------------------------------------------------------------------------------------
// Restart through the API (and through the tool)
// ---------------------------------------------------------------------------------------------

const IMAGE: &str = "context.api_restart";
const REPORT: &str = "restored.out";

/// The `#key=value` comment of the restored process's report.
fn report_value(report: &str, key: &str) -> Option<String> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#{key}=")))
        .map(str::to_string)
}

/// The restored process's report must itself follow the SEQ rules.
fn assert_report(sc: &Scenario, context: &str) -> String {
    let path = sc.root().join(REPORT);
    let report = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{context}: the restored process wrote no {}: {e}\n{}",
            path.display(),
            sc.log()
        )
    });
    if let Err(why) = check_seq(&report, End::Code(0)) {
        panic!(
            "{context}: the restored process's report broke the SEQ rules:\n{why}\n--- {REPORT} ---\n{report}\n--- scenario log ---\n{}",
            sc.log()
        );
    }
    report
}

/// Whether `cr_restart --help` lists `opt`.
fn cr_restart_has_option(opt: &str) -> bool {
    Command::new(cr_restart())
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                .any(|w| w == opt)
        })
        .unwrap_or(false)
}

/// hooks/get_info (restart halves) and cr_request_restart: `api_restart save` checkpoints itself
/// and goes on; `api_restart restart` restores the image as its child with cr_request_restart and
/// checks the restored process's report; then `cr_restart` (fresh pid) restores a copy of
/// the image the same way (the requester is then cr_restart).
#[test]
fn restart_api() {
    let sc = Scenario::new("api_restart");
    let save = run_in(&sc, "api_restart", &["save"]);
    save.assert_seq();
    let image = sc.root().join(IMAGE);
    let bytes = fs::read(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    assert!(!bytes.is_empty(), "{} is empty", image.display());
    // cr_restart gets its own copy: the restored process reopens the image it was writing.
    let copy = sc.root().join(format!("{IMAGE}.copy"));
    fs::write(&copy, &bytes).expect("copy the image");
    let _ = fs::remove_file(sc.root().join(REPORT));

    // 1. cr_request_restart from a program of ours.
    let run = run_in(&sc, "api_restart", &["restart"]);
    if let Err(why) = check_seq(&run.stdout, run.end) {
        let report = fs::read_to_string(sc.root().join(REPORT)).unwrap_or_default();
        panic!(
            "{}\n--- {REPORT} (written by the restored process) ---\n{report}",
            run.describe(&why)
        );
    }
    let report = assert_report(&sc, "cr_request_restart");
    let src = report_value(&report, "src").unwrap_or_default();
    let want = fs::canonicalize(&image).expect("canonical image path");
    assert_eq!(
        Path::new(&src),
        want,
        "restart info src of the API restart\n{report}"
    );
    match fs::read(&image) {
        Ok(b) if b == bytes => {}
        Ok(b) => eprintln!(
            "note: {IMAGE} changed during its restart ({} -> {} bytes): the restored process \
             reopened its checkpoint destination for writing",
            bytes.len(),
            b.len()
        ),
        Err(e) => eprintln!("note: {IMAGE} is gone after its restart: {e}"),
    }

    // 2. The same image (copy) through the real cr_restart tool, with a fresh pid like the API
    //    restart above (BLCR's --no-restore-pid, when the tool has that option).
    let _ = fs::remove_file(sc.root().join(REPORT));
    let mut argv = vec![cr_restart().into_os_string()];
    if cr_restart_has_option("--no-restore-pid") {
        argv.push("--no-restore-pid".into());
    }
    argv.push(copy.clone().into_os_string());
    let what = argv[1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut job = sc.start(&format!("cr_restart {what}"), seq_command(&sc, &argv));
    let st = job.wait_exit(RESTART_TIMEOUT);
    job.wait_output_closed(Duration::from_secs(2));
    let tool_pid = job.pid();
    let diag = job.diag();
    job.kill();
    assert!(
        st.success(),
        "cr_restart of the image should exit 0 (the restored program's status):\n{diag}\n--- {REPORT} ---\n{}",
        fs::read_to_string(sc.root().join(REPORT)).unwrap_or_default()
    );
    let report = assert_report(&sc, "cr_restart");
    let requester: u32 = report_value(&report, "requester")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ppid: u32 = report_value(&report, "ppid")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        requester, tool_pid,
        "after cr_restart, cr_checkpoint() should return cr_restart's pid\n{report}"
    );
    assert_eq!(
        ppid, tool_pid,
        "the process restored by cr_restart should be its child\n{report}"
    );
    let src = report_value(&report, "src").unwrap_or_default();
    assert_eq!(
        Path::new(&src),
        fs::canonicalize(&copy).expect("canonical copy path"),
        "restart info src after cr_restart\n{report}"
    );

    // 3. cr_request_restart with CR_RSTRT_RESTORE_PID (0x2): as root the restored process gets
    //    its original pid (clone3 set_tid) and is still our child.
    if is_root() {
        fs::write(&image, &bytes).expect("restore the image");
        let _ = fs::remove_file(sc.root().join(REPORT));
        let run = run_in(&sc, "api_restart", &["restart", "2"]);
        if let Err(why) = check_seq(&run.stdout, run.end) {
            let report = fs::read_to_string(sc.root().join(REPORT)).unwrap_or_default();
            panic!(
                "{}\n--- {REPORT} (written by the restored process) ---\n{report}",
                run.describe(&why)
            );
        }
        assert_report(&sc, "cr_request_restart with CR_RSTRT_RESTORE_PID");
        // 4. CR_RSTRT_RESTORE_PGID (0x4), with CR_RSTRT_RESTORE_SID (0x8), without
        //    CR_RSTRT_RESTORE_PID: fresh pid, saved group (made again by a placeholder leader
        //    that the caller never sees as a child) and session (the caller's own).
        for flags in ["4", "12"] {
            fs::write(&image, &bytes).expect("restore the image");
            let _ = fs::remove_file(sc.root().join(REPORT));
            let run = run_in(&sc, "api_restart", &["restart", flags]);
            if let Err(why) = check_seq(&run.stdout, run.end) {
                let report = fs::read_to_string(sc.root().join(REPORT)).unwrap_or_default();
                panic!(
                    "{}\n--- {REPORT} (written by the restored process) ---\n{report}",
                    run.describe(&why)
                );
            }
            assert_report(&sc, &format!("cr_request_restart with cr_flags {flags}"));
        }
    }
}
