//! What the coordinator reads about other processes from `/proc` (normal context: allocation is
//! fine here, these run in the requesting tool, never in a stopped program).

use crate::protocol;

/// The children of `pid` that are processes of the program: an agent's own writers
/// ([`is_agent_writer`]) are left out (they are never part of a checkpoint).
pub fn children(pid: i32) -> Vec<i32> {
    let mut kids = crate::tool::children(pid);
    kids.retain(|&k| !is_agent_writer(k));
    kids
}

/// The command name of `pid` (`comm`), or "" when it is gone.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The fields of `/proc/PID/stat` after the command (field 3, the state, first).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// The parent of `pid` (0 when it is gone).
pub fn parent(pid: i32) -> i32 {
    stat_fields(pid)
        .and_then(|f| f.get(1)?.parse().ok())
        .unwrap_or(0)
}

/// The state letter of /proc/PID/stat (R, S, T, Z, …).
pub fn state_of(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Whether `pid` has ended (gone, or a zombie).
pub fn ended(pid: i32) -> bool {
    matches!(state_of(pid), None | Some('Z') | Some('X'))
}

/// How `pid` ended, while it is a zombie its parent has not reaped yet (its wait status is
/// field 52 of /proc/PID/stat): "was killed by signal 9" or "exited with status 3".
pub fn zombie_end(pid: i32) -> Option<String> {
    if state_of(pid)? != 'Z' {
        return None;
    }
    let st = exit_status(pid)?;
    Some(if st & 0x7f != 0 {
        format!("was killed by signal {}", st & 0x7f)
    } else {
        format!("exited with status {}", (st >> 8) & 0xff)
    })
}

/// [`zombie_end`] of a process that has just ended: its descriptors (the agent's connection) close
/// before it becomes a zombie, so it is looked at for up to 200 ms until it is one (or is gone,
/// reaped by its parent: then `None`).
pub fn zombie_end_soon(pid: i32) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    while state_of(pid).is_some_and(|s| s != 'Z') && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    zombie_end(pid)
}

/// Whether `pid` is on its way out (`PF_EXITING` in the flags of /proc/PID/stat): its memory
/// and descriptors may be gone already, though it is not a zombie yet.
pub fn exiting(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    stat_fields(pid)
        .and_then(|f| f.get(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0)
}

/// Pids of the processes in process group or session `id` (field 5 or 6 of /proc/PID/stat).
pub fn members(field: usize, id: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let value = stat_fields(pid).and_then(|f| f.get(field - 3)?.parse::<i32>().ok());
        if value == Some(id) {
            out.push(pid);
        }
    }
    out
}

/// The pid of the process tracing `pid` (0: none).
pub fn tracer_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Pid → the pid of its tracer, for every traced process.
pub fn tracers() -> std::collections::HashMap<i32, i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .map(|p| (p, tracer_of(p)))
        .filter(|&(_, t)| t != 0)
        .collect()
}

/// The wait status of zombie `pid` (field 52 of /proc/PID/stat).
pub fn exit_status(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(49)?.parse().ok()
}

/// Whether `pid` maps libcr or will (its environment preloads it).
pub fn agent_coming(pid: i32) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if maps.lines().any(|l| l.contains("/libcr")) {
        return true;
    }
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|v| v.starts_with(b"LD_PRELOAD=") && v.windows(5).any(|w| w == b"libcr"))
}

/// A cr_restart that only waits for the job it restored (the tool itself, or the init of the pid
/// namespace it made), as opposed to one of its children still being restored. It has no agent
/// and is never saved: as BLCR's `--omit-maybe`, a checkpoint that reaches it takes its
/// restored descendants instead.
pub fn is_waiting_restarter(pid: i32) -> bool {
    comm(pid) == "cr_restart"
        && (comm(parent(pid)) != "cr_restart" || protocol::target_identity(pid).1 == 1)
}

/// Whether `pid` is an agent's own writer, no process of the program: a copy-on-write writer
/// (`cr-writer`) or the helper of a stopped write (`cr-io`, `agent::offload`), which may outlive
/// a given-up checkpoint while its write waits on the destination. Both are created with exit
/// signal 0 (field 38 of /proc/PID/stat), which no fork of the program has.
pub fn is_agent_writer(pid: i32) -> bool {
    matches!(comm(pid).as_str(), "cr-writer" | "cr-io")
        && stat_fields(pid).is_some_and(|f| f.get(35).map(String::as_str) == Some("0"))
}

/// The pid of `inner` (a pid in the pid namespace of `member`) as our /proc names it.
pub fn outer_pid(member: i32, inner: i32) -> Option<i32> {
    let (ns, _) = protocol::target_identity(member);
    let (own, _) = protocol::own_identity();
    if ns == own {
        return Some(inner);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&p| protocol::target_identity(p) == (ns, inner))
}

/// This process and its ancestors: never part of a checkpoint it makes (they wait for it).
pub fn ourselves() -> std::collections::HashSet<i32> {
    let mut set = std::collections::HashSet::new();
    let mut up = std::process::id() as i32;
    while up > 1 && set.insert(up) {
        up = parent(up);
    }
    set
}

/// Why a woken agent may not have bound its control socket, from `/proc/PID/task/*/status`:
/// whether the process catches the wake-up signal, in how many of its threads it is blocked,
/// where one is pending, and the main thread's state, e.g. "signal 23 caught, blocked in 3 of
/// 4 threads, pending in the process, main thread S". For the error message of a wake-up that
/// went unanswered (it tells a program that blocks the signal everywhere from a stopped or
/// starved one).
pub fn wake_diagnosis(pid: i32) -> String {
    let sig = protocol::WAKE_SIGNAL;
    let bit = 1u64 << (sig - 1);
    let field = |text: &str, name: &str| -> u64 {
        crate::sys::status_hex_field(text.as_bytes(), name.as_bytes()).unwrap_or(0)
    };
    let Ok(main) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return format!("process {pid} is gone");
    };
    let caught = field(&main, "SigCgt:") & bit != 0;
    let mut threads = 0;
    let mut blocked = 0;
    let mut pending_in = Vec::new();
    if field(&main, "ShdPnd:") & bit != 0 {
        pending_in.push("the process".to_string());
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for t in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        threads += 1;
        if field(&text, "SigBlk:") & bit != 0 {
            blocked += 1;
        }
        if field(&text, "SigPnd:") & bit != 0 {
            pending_in.push(format!("thread {}", t.file_name().to_string_lossy()));
        }
    }
    let state = state_of(pid).map_or('?', |c| c);
    format!(
        "signal {sig} {}, blocked in {blocked} of {threads} threads, {}, main thread {state}",
        if caught { "caught" } else { "not caught" },
        if pending_in.is_empty() {
            "pending nowhere".to_string()
        } else {
            format!("pending in {}", pending_in.join(", "))
        }
    )
}
