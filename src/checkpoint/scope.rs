//! Which processes a checkpoint covers: BLCR's scopes (process, tree, process group, session),
//! the requester chain that waits for the checkpoint (never saved), cr_restart's waiting
//! processes (replaced by the processes they restored), zombies and the ptrace rules.

use super::procfs::{
    children, is_agent_writer, is_waiting_restarter, members, ourselves, parent, state_of, tracers,
};
use super::{CheckpointError, Note, Options, Ptraced};
use crate::api::types::{CR_SCOPE_PGRP, CR_SCOPE_PROC, CR_SCOPE_SESS};

/// What a checkpoint request covers.
#[derive(Debug)]
pub struct Scope {
    /// The processes to checkpoint, parents before children.
    pub pids: Vec<i32>,
    /// `CR_SCOPE_*`.
    pub scope: i32,
    /// Zombies met while collecting them (saved as zombies of their parents, if those are).
    pub zombies: Vec<i32>,
    /// When we run on behalf of a process of the scope (`system("cr_checkpoint $$")`, or a
    /// fork and exec of cr_checkpoint): the topmost process of the requester chain, which that
    /// process waits for, and that process (see [`requester_chain`]).
    pub requester: Option<(i32, i32)>,
}

fn err(errno: i32, msg: String) -> CheckpointError {
    CheckpointError { errno, msg }
}

/// Fails unless process `pid` exists and may be signalled by us.
pub fn check_signalable(pid: i32) -> Result<(), CheckpointError> {
    // SAFETY: kill with signal 0 only checks existence and permission.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::ESRCH);
    Err(match e {
        libc::ESRCH => err(e, format!("no process with pid {pid}")),
        libc::EPERM => err(
            e,
            format!("process {pid} belongs to another user: permission denied"),
        ),
        _ => err(
            e,
            format!("cannot signal process {pid}: {}", crate::tool::strerror(e)),
        ),
    })
}

/// The requester chain: this process and those of its ancestors that are below the highest
/// ancestor that is one of `roots` (a program that runs `system("cr_checkpoint $$")`: the shell
/// between it and us, if the shell did not exec us). They wait for us, so they are never saved;
/// the chain's topmost process is recorded instead as a child of that ancestor that exited with
/// status 0, which is how the saved program sees it once the checkpoint is over (BLCR saved the
/// waiting tool's parent half, whose `wait` then returned 0). Returns the chain and, when there
/// is such an ancestor, (the chain's topmost process, that ancestor).
pub fn requester_chain(roots: &[i32]) -> (std::collections::HashSet<i32>, Option<(i32, i32)>) {
    let me = std::process::id() as i32;
    let mut line = vec![me];
    let mut up = parent(me);
    while up > 1 && !line.contains(&up) {
        line.push(up);
        up = parent(up);
    }
    match (1..line.len()).rev().find(|&k| roots.contains(&line[k])) {
        Some(k) => (
            line[..k].iter().copied().collect(),
            Some((line[k - 1], line[k])),
        ),
        None => ([me].into_iter().collect(), None),
    }
}

/// `pids` with every waiting cr_restart replaced by the processes it restored (its children, or
/// those of the init of its pid namespace).
fn past_restarters(pids: Vec<i32>) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo: Vec<i32> = pids.into_iter().rev().collect();
    while let Some(p) = todo.pop() {
        if is_waiting_restarter(p) {
            todo.extend(children(p).into_iter().rev());
        } else if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The processes to checkpoint, parents before children, and the scope (`CR_SCOPE_*`):
/// `PROC` the process; `TREE` the process and its descendants; `PGRP`/`SESS` every process of
/// the group or session and their descendants. The requester (this process) and the processes
/// waiting for it (the requester chain) are never among them, zombies are left out (and
/// returned, for a warning once the checkpoint goes ahead), and the ptrace rules are applied to
/// each.
pub fn resolve(opts: &Options, note: &mut dyn FnMut(Note)) -> Result<Scope, CheckpointError> {
    let (scope, id) = (opts.scope, opts.id);
    if id <= 0 {
        return Err(err(libc::EINVAL, format!("invalid id {id}")));
    }
    let me = std::process::id() as i32;
    let roots: Vec<i32> = match scope {
        CR_SCOPE_PGRP | CR_SCOPE_SESS => {
            let (field, what) = if scope == CR_SCOPE_PGRP {
                (5, "process group")
            } else {
                (6, "session")
            };
            // A waiting cr_restart is no part of the program it restored (its restored children
            // are); one still restoring a process (a child of cr_restart) is.
            let procs: Vec<i32> = members(field, id)
                .into_iter()
                .filter(|&p| p != me)
                .filter(|&p| !is_waiting_restarter(p))
                .filter(|&p| !is_agent_writer(p))
                .collect();
            if procs.is_empty() {
                return Err(err(libc::ESRCH, format!("no process in {what} {id}")));
            }
            procs
        }
        _ => {
            check_signalable(id)?;
            vec![id]
        }
    };
    let (chain, requester) = requester_chain(&past_restarters(roots.clone()));
    if scope == CR_SCOPE_PROC {
        check_ptrace(opts, id)?;
        return Ok(Scope {
            pids: vec![id],
            scope,
            zombies: Vec::new(),
            requester,
        });
    }
    // The members and all their descendants, once each. The requester chain (a program that
    // runs `system("cr_checkpoint $$")`: the shell waiting for us, and we) stays out.
    let ancestors = ourselves();
    let mut seen = std::collections::HashSet::new();
    let mut all = Vec::new();
    let mut stack: Vec<i32> = roots.iter().rev().copied().collect();
    while let Some(p) = stack.pop() {
        let waits_for_us = chain.contains(&p) || (ancestors.contains(&p) && !roots.contains(&p));
        if p == me || waits_for_us || !seen.insert(p) {
            continue;
        }
        if is_waiting_restarter(p) {
            stack.extend(children(p).into_iter().rev());
            continue;
        }
        all.push(p);
        stack.extend(children(p).into_iter().rev());
    }
    let mut zombies = Vec::new();
    all.retain(|&p| match state_of(p) {
        Some('Z') | Some('X') => {
            zombies.push(p);
            false
        }
        // Gone since it was listed.
        None => false,
        _ => true,
    });
    if all.is_empty() {
        let why = if zombies.is_empty() {
            String::new()
        } else {
            format!(" (zombies: {zombies:?})")
        };
        return Err(err(
            libc::ESRCH,
            format!("no process to checkpoint for id {id}{why}"),
        ));
    }
    // A descendant that exited and was reaped since it was listed (a program forking short-lived
    // children) is simply not part of the cut; the roots must be there.
    let mut alive = Vec::with_capacity(all.len());
    for p in all {
        match check_signalable(p) {
            Ok(()) => alive.push(p),
            Err(e) if e.errno == libc::ESRCH && !roots.contains(&p) => {}
            Err(e) => return Err(e),
        }
    }
    let mut all = alive;
    if all.len() == 1 {
        check_ptrace(opts, all[0])?;
    } else {
        let tracers = tracers();
        let mut kept = Vec::with_capacity(all.len());
        for p in all {
            match ptrace_rule(opts, p, &tracers) {
                Ptrace::Ok => kept.push(p),
                Ptrace::Skip(msg) => note(Note::Info(msg)),
                Ptrace::Fail(e, msg) => return Err(err(e, msg)),
            }
        }
        all = kept;
        if all.is_empty() {
            return Err(err(
                libc::ESRCH,
                "every process was skipped (ptrace): nothing to checkpoint".into(),
            ));
        }
    }
    if all.len() > crate::image::tree::MAX_PROCS {
        return Err(err(
            libc::E2BIG,
            format!(
                "{} processes to checkpoint; one checkpoint holds at most {}",
                all.len(),
                crate::image::tree::MAX_PROCS
            ),
        ));
    }
    Ok(Scope {
        pids: parents_first(&all),
        scope,
        zombies,
        requester,
    })
}

/// `procs` ordered breadth first from the roots (members whose parent is not a member), roots and
/// siblings by pid.
pub fn parents_first(procs: &[i32]) -> Vec<i32> {
    use std::collections::{HashSet, VecDeque};
    let set: HashSet<i32> = procs.iter().copied().collect();
    let mut sorted = procs.to_vec();
    sorted.sort_unstable();
    let mut queue: VecDeque<i32> = sorted
        .iter()
        .copied()
        .filter(|&p| !set.contains(&parent(p)))
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(procs.len());
    while let Some(p) = queue.pop_front() {
        if !seen.insert(p) {
            continue;
        }
        out.push(p);
        let mut kids: Vec<i32> = children(p)
            .into_iter()
            .filter(|k| set.contains(k) && !seen.contains(k))
            .collect();
        kids.sort_unstable();
        queue.extend(kids);
    }
    // Processes reparented while we looked (no root reaches them): last, by pid.
    out.extend(sorted.into_iter().filter(|p| !seen.contains(p)));
    out
}

/// What BLCR's ptrace rules say about one process.
enum Ptrace {
    Ok,
    /// Leave it out (ptraced skip, ptracer skip); the message says why.
    Skip(String),
    /// Fail with this errno and message.
    Fail(i32, String),
}

/// BLCR's ptrace rules: a ptraced process fails with CR_EPTRACED unless allowed or skipped; a
/// process that ptraces others fails with CR_EPTRACER unless skipped.
fn ptrace_rule(opts: &Options, pid: i32, tracers: &std::collections::HashMap<i32, i32>) -> Ptrace {
    use crate::api::types::{CR_EPTRACED, CR_EPTRACER};
    if tracers.contains_key(&pid) {
        match opts.ptraced {
            Ptraced::Allow => {}
            Ptraced::Skip => {
                return Ptrace::Skip(format!("process {pid} is ptraced and was skipped"))
            }
            Ptraced::Error => {
                return Ptrace::Fail(
                    CR_EPTRACED,
                    format!(
                        "process {pid} is being ptraced (use --ptraced-allow or --ptraced-skip)"
                    ),
                )
            }
        }
    }
    if tracers.values().any(|&t| t == pid) {
        if opts.ptracer_skip {
            return Ptrace::Skip(format!("process {pid} ptraces others and was skipped"));
        }
        return Ptrace::Fail(
            CR_EPTRACER,
            format!("process {pid} ptraces other processes (use --ptracer-skip)"),
        );
    }
    Ptrace::Ok
}

/// The ptrace rules for a checkpoint of one process: skipping it leaves nothing to checkpoint
/// (ESRCH, exit 3).
fn check_ptrace(opts: &Options, pid: i32) -> Result<(), CheckpointError> {
    match ptrace_rule(opts, pid, &tracers()) {
        Ptrace::Ok => Ok(()),
        Ptrace::Skip(msg) => Err(err(libc::ESRCH, format!("{msg}: nothing to checkpoint"))),
        Ptrace::Fail(e, msg) => Err(err(e, msg)),
    }
}

/// The processes of a forwarded scope: the process, its group or session, with descendants.
pub fn forward_scope(scope: i32, pid: i32) -> Vec<i32> {
    let roots = match scope {
        CR_SCOPE_PGRP => members(5, pid),
        CR_SCOPE_SESS => members(6, pid),
        _ => vec![pid],
    };
    if scope == CR_SCOPE_PROC {
        return roots;
    }
    let mut out = Vec::new();
    let mut stack = roots;
    while let Some(p) = stack.pop() {
        if !out.contains(&p) {
            out.push(p);
            stack.extend(children(p));
        }
    }
    out
}
