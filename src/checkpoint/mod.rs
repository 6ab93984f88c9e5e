//! The checkpoint coordinator: takes a checkpoint of a process, a tree, a process group or a
//! session the way `cr_checkpoint` does, for every caller (`cr_checkpoint`, `cr_run`'s
//! supervisor). It runs in the requesting tool, never inside the checkpointed program.
//!
//! Data flow: [`scope::resolve`] (which processes) → `cut` (connect to each agent, stop them all
//! as one consistent cut, record what they share, manifest, each agent writes its image) →
//! commit (`dest`: durable, then renamed into place) → the post-checkpoint signal → release.
//! Every failure releases the processes as they were and leaves earlier images untouched.

mod cut;
pub mod dest;
pub mod incremental;
pub mod nodelink;
pub mod nodes;
pub mod procfs;
pub mod scope;

pub use dest::{Commit, Destination};

use crate::api::types::CR_SCOPE_PROC;

/// BLCR's ptrace rule for traced processes (`--ptraced-*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ptraced {
    /// Fail with `CR_EPTRACED` (the default).
    #[default]
    Error,
    /// Checkpoint it anyway.
    Allow,
    /// Leave it out.
    Skip,
}

/// What to checkpoint, where, and what to do afterwards.
#[derive(Clone, Debug)]
pub struct Options {
    /// `CR_SCOPE_*` of `id`.
    pub scope: i32,
    /// The process, process group or session.
    pub id: i32,
    /// Where the image goes.
    pub dest: Destination,
    /// How a file destination is committed.
    pub commit: Commit,
    /// `protocol::FLAG_SAVE_*`: mapped files stored by content; `FLAG_SAVE_TMP_NONE`: files
    /// under temporary directories are not.
    pub save: u32,
    /// Further files saved by content (`--save-tmp-limit SIZE`, `--save-dir`,
    /// `--save-written`).
    pub files: crate::protocol::SaveFiles,
    /// Give up after this many seconds (the program goes on).
    pub time: Option<u32>,
    /// Signal sent to every saved process once the image is durable (0: none).
    pub signal: i32,
    /// A process that was stopped before is stopped again afterwards when no signal was asked
    /// for (BLCR; `cr_checkpoint --cont` turns it off).
    pub stop_again: bool,
    /// The rule for ptraced processes.
    pub ptraced: Ptraced,
    /// Leave out processes that ptrace others (else fail with `CR_EPTRACER`).
    pub ptracer_skip: bool,
    /// Sync the image and its directory before reporting success.
    pub sync: bool,
    /// Copy-on-write (`--cow`): the program is stopped only while its state is recorded; a
    /// forked writer writes its memory while it runs on (one-process checkpoints and cuts of
    /// one process; others are written stopped, with a note).
    pub cow: bool,
    /// An incremental checkpoint (`--incremental`, `--max-chain`): a delta image against a
    /// parent where possible (one delta per process; see [`incremental`]).
    pub incremental: Option<incremental::Incremental>,
    /// Ask the agents for progress messages while they write ([`Note::Progress`]).
    pub progress: bool,
    /// `--compress[=LEVEL]`: the page data compressed with zstd at this level (see
    /// `crate::image::compress`).
    pub compress: Option<i32>,
}

impl Options {
    /// A checkpoint of `id` in `scope` with BLCR's defaults (`context.ID` in the working
    /// directory, committed atomically and synced, no signal).
    pub fn new(scope: i32, id: i32) -> Self {
        Options {
            scope,
            id,
            dest: Destination::Cwd,
            commit: Commit::Atomic,
            save: 0,
            files: Default::default(),
            time: None,
            signal: 0,
            stop_again: true,
            ptraced: Ptraced::Error,
            ptracer_skip: false,
            sync: true,
            cow: false,
            incremental: None,
            progress: false,
            compress: None,
        }
    }
}

/// Something the caller may show while a checkpoint goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// Always shown (unless the user asked for quiet): something will not come back as it was.
    Warning(String),
    /// Shown on request (`-v`): what happened.
    Info(String),
    /// With [`Options::progress`]: process `pid` has written `done` bytes of its image of
    /// `total` bytes (about every 100 ms while it writes).
    Progress {
        /// The process.
        pid: i32,
        /// Bytes of its image written so far.
        done: u64,
        /// Its image's length.
        total: u64,
    },
}

/// A failed checkpoint: the errno for the exit code (`errno & 0xff`) and one line.
#[derive(Debug, Clone)]
pub struct CheckpointError {
    /// errno (or a BLCR `CR_E*` code).
    pub errno: i32,
    /// One line naming the problem.
    pub msg: String,
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for CheckpointError {}

/// One saved process.
#[derive(Clone, Debug)]
pub struct Saved {
    /// Its pid.
    pub pid: i32,
    /// Where its image went.
    pub dest: String,
    /// Bytes of its image.
    pub bytes: u64,
    /// How its agent wrote it: direct I/O or why not, and where the time went
    /// (`quiesce=…ms io=direct meta=…ms data=…ms sync=…ms`).
    pub report: String,
}

impl Saved {
    /// How the process was written, from its agent's report: `cow stop=…ms` (copy-on-write, and
    /// how long the program was stopped), `stopped`, or `stopped(no copy-on-write: why)`; empty
    /// when the agent did not say.
    pub fn mode(&self) -> &str {
        self.report
            .find("mode=")
            .map_or("", |i| &self.report[i + "mode=".len()..])
    }
}

/// What a successful checkpoint saved.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Every saved process, parents first.
    pub saved: Vec<Saved>,
    /// Total bytes written (manifests included).
    pub total: u64,
    /// The destination, for messages (the directory with one file per process).
    pub what: String,
    /// The committed file (none for streams and directories).
    pub path: Option<std::path::PathBuf>,
    /// `--compress`: what the compression did (all destinations together) and its wall time
    /// in seconds (from the request to the last byte).
    pub compressed: Option<(crate::image::compress::Stats, f64)>,
}

/// A larger cut a checkpoint is one part of (one node's part of a job across nodes: see
/// [`nodes`]): the checkpoint waits for it at two points.
pub trait Barrier {
    /// Every process is stopped and nothing is written yet (`pids`: those to be saved). An
    /// error releases them all and nothing is written.
    fn stopped(&mut self, pids: &[i32]) -> Result<(), CheckpointError>;
    /// Every image is durable at its destination (`bytes` in all) and nothing is released yet.
    /// An error releases every process without the post-checkpoint signal (the images stay:
    /// the caller's commit decides whether they count).
    fn written(&mut self, bytes: u64) -> Result<(), CheckpointError>;
}

/// Takes the checkpoint `opts` describes; `note` hears warnings and progress as they come.
pub fn checkpoint(opts: &Options, note: &mut dyn FnMut(Note)) -> Result<Outcome, CheckpointError> {
    checkpoint_with(opts, None, note)
}

/// Like [`checkpoint`], as one part of a larger cut: `barrier` hears when every process is
/// stopped and when every image is written (a process, group, session or tree of several
/// processes; not incremental).
pub fn checkpoint_part(
    opts: &Options,
    barrier: &mut dyn Barrier,
    note: &mut dyn FnMut(Note),
) -> Result<Outcome, CheckpointError> {
    if opts.incremental.is_some() {
        return Err(CheckpointError {
            errno: libc::EINVAL,
            msg: "a node's part of a job is not checkpointed incrementally".into(),
        });
    }
    checkpoint_with(opts, Some(barrier), note)
}

fn checkpoint_with(
    opts: &Options,
    barrier: Option<&mut dyn Barrier>,
    note: &mut dyn FnMut(Note),
) -> Result<Outcome, CheckpointError> {
    if !(0..=64).contains(&opts.signal) {
        return Err(CheckpointError {
            errno: libc::EINVAL,
            msg: format!("invalid signal number {}", opts.signal),
        });
    }
    if let Some(level) = opts.compress {
        let range = crate::image::compress::level_range();
        if !range.contains(&level) {
            return Err(CheckpointError {
                errno: libc::EINVAL,
                msg: format!(
                    "invalid compression level {level} (zstd levels {} to {})",
                    range.start(),
                    range.end()
                ),
            });
        }
    }
    let found = scope::resolve(opts, note)?;
    // Incremental: each process's parent (one delta per process of a tree).
    let plan = match &opts.incremental {
        Some(inc) => Some(incremental::plan(opts, inc, &found.pids)?),
        None => None,
    };
    let adjusted;
    let opts = match &plan {
        Some(p) if p.commit != opts.commit => {
            adjusted = Options {
                commit: p.commit.clone(),
                ..opts.clone()
            };
            &adjusted
        }
        _ => opts,
    };
    let mut outcome = checkpoint_planned(opts, found, plan.as_ref(), barrier, note)?;
    if let Some(p) = &plan {
        for s in outcome.saved.iter_mut() {
            incremental::explain(&mut s.report, p, s.pid, note);
        }
    }
    Ok(outcome)
}

fn checkpoint_planned(
    opts: &Options,
    found: scope::Scope,
    plan: Option<&incremental::Plan>,
    barrier: Option<&mut dyn Barrier>,
    note: &mut dyn FnMut(Note),
) -> Result<Outcome, CheckpointError> {
    // A part of a larger cut takes the multi-process path (its barrier is there).
    if barrier.is_some() && found.scope == CR_SCOPE_PROC {
        return Err(CheckpointError {
            errno: libc::EINVAL,
            msg: "a node's part of a job is a tree, a process group or a session, not one process"
                .into(),
        });
    }
    // Tree, group and session scopes take the multi-process path even when they find one
    // process: children forked while it stops join the cut, and unreaped children are saved as
    // zombies (a single process still gets a plain image).
    if let ([pid], CR_SCOPE_PROC) = (&found.pids[..], found.scope) {
        let pid = *pid;
        let chain = found
            .requester
            .filter(|&(_, parent)| parent == pid)
            .map(|(top, _)| top);
        let mut outcome = cut::checkpoint_one(opts, pid, found.scope, chain, plan, note)?;
        outcome.total = outcome.saved.iter().map(|s| s.bytes).sum();
        Ok(outcome)
    } else {
        // Zombies whose parents are saved are saved as zombies (and warned about then).
        cut::checkpoint_many(
            opts,
            &found.pids,
            found.scope,
            found.requester,
            plan,
            barrier,
            note,
        )
    }
}
