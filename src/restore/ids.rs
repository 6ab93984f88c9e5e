//! The ids a restart takes over (original pids and tids; process group and session ids) and
//! who holds them now.
//!
//! Before anything is created every such id must be free (BLCR: `EBUSY`, exit 16). A holder
//! that is on its way out — an exiting process, an unreaped zombie (common right after
//! `cr_checkpoint --term` of a tree, and in containers whose init reaps slowly) — gets a
//! bounded wait ([`BUSY_WAIT`]), said once on stderr; the error names what holds the id.

use super::spawn::Member;
use super::RestoreError;
use crate::image::tree::ZombieRec;
use std::time::{Duration, Instant};

/// How long a restart waits for exiting processes and zombies to free the ids it needs.
pub const BUSY_WAIT: Duration = Duration::from_secs(5);
/// How often the ids are looked at again meanwhile (no notification exists for a pid that
/// becomes free when someone else reaps a zombie).
const POLL: Duration = Duration::from_millis(10);
/// `PF_EXITING` in `/proc/PID/stat`'s flags: the process is exiting.
const PF_EXITING: u64 = 0x4;

/// What an id is needed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// The pid of a restored process.
    Pid,
    /// A thread id of restored process `pid`.
    Tid(i32),
    /// The pid of an exited child of restored process `ppid`, re-created as a zombie.
    Zombie(i32),
    /// A process group id (`--restore-pgid`) made by a placeholder leader.
    Pgid,
    /// A session id (`--restore-sid`) made by a placeholder leader.
    Sid,
}

/// One id the restart needs free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The id.
    pub id: i32,
    /// What it is needed as.
    pub what: Use,
}

/// One line of `/proc/PID/stat` (the fields used here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Its pid (or tid).
    pub pid: i32,
    /// Its command name.
    pub comm: String,
    /// Its state letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Its parent.
    pub ppid: i32,
    /// Its process group.
    pub pgrp: i32,
    /// Its session.
    pub session: i32,
    /// The kernel's task flags.
    pub flags: u64,
    /// Its number of threads when known (0: not read): a "zombie" whose threads still run is a
    /// process whose main thread ended first; it cannot be reaped before they end.
    pub threads: u32,
}

impl Stat {
    /// Parses the text of `/proc/PID/stat`.
    pub fn parse(text: &str) -> Option<Stat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let pid = text[..open].trim().parse().ok()?;
        let comm = text[open + 1..close].to_string();
        let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
        Some(Stat {
            pid,
            comm,
            state: f.first()?.chars().next()?,
            ppid: f.get(1)?.parse().ok()?,
            pgrp: f.get(2)?.parse().ok()?,
            session: f.get(3)?.parse().ok()?,
            flags: f.get(6)?.parse().ok()?,
            threads: 0,
        })
    }

    /// Reads `/proc/PID/stat` (a tid works too).
    pub fn of(pid: i32) -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Whether it is going away by itself: exiting, dead, or a zombie its parent may still reap.
    pub fn going_away(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x') || self.flags & PF_EXITING != 0
    }

    fn state_word(&self) -> &'static str {
        match self.state {
            'R' => "running",
            'S' => "sleeping",
            'D' => "in uninterruptible sleep",
            'T' => "stopped",
            't' => "traced",
            'Z' => "zombie",
            'X' | 'x' => "dead",
            'I' => "idle",
            _ => "unknown state",
        }
    }

    /// "12 (prog, state S: sleeping)", with the parent for a zombie or an exiting process.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} ({}, state {}: {}",
            self.pid,
            self.comm,
            self.state,
            self.state_word()
        );
        let threads_run = self.state == 'Z' && self.threads > 1;
        if threads_run {
            let n = self.threads - 1;
            s.push_str(&format!(
                ", exiting: its main thread has ended, {n} other thread{} still run{}",
                if n == 1 { "" } else { "s" },
                if n == 1 { "s" } else { "" }
            ));
        } else if self.flags & PF_EXITING != 0 && self.state != 'Z' {
            s.push_str(", exiting");
        }
        if self.going_away() {
            let parent = Stat::of(self.ppid).map(|p| p.comm).unwrap_or_default();
            s.push_str(&format!(", parent {} ({parent})", self.ppid));
            if self.state == 'Z' && !threads_run {
                s.push_str(" has not reaped it");
            }
        }
        s.push(')');
        s
    }
}

/// Every process of this pid namespace (as `/proc` shows them).
fn all_processes() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Stat::of)
        .collect()
}

/// What holds `id` now: the process or thread with that id, else a member of a process group or
/// session with that id (whose leader is gone: the id stays taken while they live).
fn holder(id: i32, all: &mut Option<Vec<Stat>>) -> Option<(String, Stat)> {
    if id <= 0 {
        return None;
    }
    if let Some(mut st) = Stat::of(id) {
        let status = std::fs::read_to_string(format!("/proc/{id}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        };
        let tgid = field("Tgid:").unwrap_or(id);
        st.threads = field("Threads:").map_or(0, |n: i32| n.max(0) as u32);
        let what = if tgid == id {
            match st.state {
                'Z' if st.threads <= 1 => "zombie".to_string(),
                _ => "process".to_string(),
            }
        } else {
            format!("a thread of process {tgid}:")
        };
        return Some((what, st));
    }
    // SAFETY: signal 0 to a process group only checks that it exists.
    let group = unsafe { libc::kill(-id, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    let all = all.get_or_insert_with(all_processes);
    let member = all
        .iter()
        .find(|p| (group && p.pgrp == id) || p.session == id)?;
    let what = if member.pgrp == id {
        format!("process group {id}, whose member is")
    } else {
        format!("session {id}, whose member is")
    };
    Some((what, member.clone()))
}

/// Every original pid and tid of `members`.
pub fn pids_of(members: &[Member]) -> Vec<Need> {
    let mut out = Vec::new();
    for m in members {
        let pid = m.img.process.pid;
        out.push(Need {
            id: pid,
            what: Use::Pid,
        });
        out.extend(m.img.threads.iter().filter(|t| t.tid != pid).map(|t| Need {
            id: t.tid,
            what: Use::Tid(pid),
        }));
    }
    out
}

/// Every id a restart of `members` with `opts` takes over, seen from the calling process: the
/// original pids and tids (`opts.pids`), the pids of the exited children it re-creates as
/// zombies (`zombies`, also with `opts.pids`: taken by one not yet reaped — its parent killed
/// by `--term`, its new parent the init — the zombie was not re-created and the restored
/// parent's `waitpid` for it failed with `ECHILD`: tests/load.rs
/// `restarts_while_ignored_signals_arrive`); the saved session (`opts.sid`) and process group
/// (`opts.pgid`) ids a placeholder leader must take: those of no member that gets its original
/// pid, other than the caller's own session and group (which are joined).
pub fn needs(members: &[Member], zombies: &[ZombieRec], opts: &super::spawn::Options) -> Vec<Need> {
    let mut out = if opts.pids {
        pids_of(members)
    } else {
        Vec::new()
    };
    if opts.pids {
        out.extend(zombies.iter().map(|z| Need {
            id: z.pid,
            what: Use::Zombie(z.ppid),
        }));
    }
    // SAFETY: getsid(0) and getpgrp have no preconditions.
    let (own_sid, own_pgrp) = unsafe { (libc::getsid(0), libc::getpgrp()) };
    let leader = |id: i32| opts.pids && members.iter().any(|m| m.img.process.pid == id);
    for m in members {
        let p = &m.img.process;
        let wanted = [
            (opts.sid, p.sid, own_sid, Use::Sid),
            (opts.pgid, p.pgid, own_pgrp, Use::Pgid),
        ];
        for (on, id, own, what) in wanted {
            if on && id > 0 && id != own && !leader(id) && !out.iter().any(|n| n.id == id) {
                out.push(Need { id, what });
            }
        }
    }
    out
}

/// "pid 12", "session id 12", … for messages.
pub fn describe_need(n: &Need) -> String {
    match n.what {
        Use::Pid => format!("pid {}", n.id),
        Use::Tid(pid) => format!("thread id {} (of pid {pid})", n.id),
        Use::Zombie(ppid) => format!("pid {} (an exited child of {ppid}, a zombie)", n.id),
        Use::Pgid => format!("process group id {}", n.id),
        Use::Sid => format!("session id {}", n.id),
    }
}

/// Before anything is created: every id in `needs` must be free (BLCR: `EBUSY`). Ids held by
/// exiting processes or zombies are waited for, up to `wait` (said once on stderr unless
/// `quiet`); the error names the holder.
pub fn check_free(needs: &[Need], wait: Duration, quiet: bool) -> Result<(), RestoreError> {
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        let mut all = None;
        let busy: Vec<(&Need, String, Stat)> = needs
            .iter()
            .filter_map(|n| holder(n.id, &mut all).map(|(w, st)| (n, w, st)))
            .collect();
        let Some((need, what, st)) = busy
            .iter()
            .find(|(_, _, st)| !st.going_away())
            .or(busy.first())
        else {
            return Ok(());
        };
        let passing = busy.iter().all(|(_, _, st)| st.going_away());
        let line = format!(
            "{} is in use by {what} {}",
            describe_need(need),
            st.describe()
        );
        if !passing || Instant::now() >= deadline {
            let hint = if passing {
                format!(" after waiting {} s", wait.as_secs())
            } else if matches!(need.what, Use::Pid | Use::Tid(_) | Use::Zombie(_)) {
                ": is the checkpointed program still running? (--no-restore-pid restarts it with fresh pids)".to_string()
            } else {
                ": is the checkpointed program still running?".to_string()
            };
            return Err(RestoreError::new(libc::EBUSY, format!("{line}{hint}")));
        }
        if !said && !quiet {
            eprintln!(
                "cr_restart: {line}; waiting up to {} s for it to go away",
                wait.as_secs()
            );
            said = true;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let st = Stat::parse("42 (a) b (c)) Z 7 42 40 0 -1 4194564 0 0").unwrap();
        assert_eq!(st.pid, 42);
        assert_eq!(st.comm, "a) b (c)");
        assert_eq!((st.state, st.ppid, st.pgrp, st.session), ('Z', 7, 42, 40));
        assert_eq!(st.flags, 4194564);
        assert!(st.going_away());
        let running = Stat::parse("5 (x) S 1 5 5 0 -1 4194560 0").unwrap();
        assert!(!running.going_away());
        let exiting = Stat::parse("5 (x) R 1 5 5 0 -1 4194564 0").unwrap();
        assert!(exiting.going_away());
        let threads_run = Stat {
            threads: 3,
            ..Stat::parse("6 (x) Z 1 6 6 0 -1 4194564 0").unwrap()
        };
        assert!(threads_run.going_away());
        let d = threads_run.describe();
        assert!(
            d.contains("exiting: its main thread has ended, 2 other threads still run")
                && !d.contains("has not reaped it"),
            "{d}"
        );
    }
}
