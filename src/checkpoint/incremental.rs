//! `cr_checkpoint --incremental[=PARENT]` on the requester's side: which image is the parent,
//! how the delta names it, and when a full image is taken instead (see `agent::incremental`
//! for the agent's side and docs/IMAGE-FORMAT.md, `REC_PARENT`).
//!
//! The parent is PARENT, or else the image at the destination, which the commit then keeps
//! under its backup name (`--backup`'s rotating `FILE.~N~` unless a name was given) so the
//! delta can refer to it. The delta records the parent's path relative to its own directory
//! when both are in one directory, else absolute; its total length; its trailer hash; and
//! how many links are behind it. A full image (still arming write-tracking) is asked for, with
//! a note, when there is no parent yet, when the destination is a stream or written in place
//! (`--clobber`), when `--max-chain` is reached, and for a process without an image in the
//! parent (a tree's parent is a tree image: each process's delta names the image in it with
//! the pid the process sees itself under); the agent itself falls back when it did not arm for this parent.

use super::dest::{self, Commit, Destination};
use super::{CheckpointError, Note, Options};
use crate::image::reader::Image;
use crate::protocol::{self, Request};
use std::path::{Path, PathBuf};

/// What the user asked (`--incremental[=PARENT]`, `--max-chain N`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incremental {
    /// The parent image (default: the image at the destination).
    pub parent: Option<PathBuf>,
    /// Every Nth checkpoint of a chain is a full one (0: no limit).
    pub max_chain: u32,
}

/// The parent a request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    /// Its path as the delta records it.
    pub recorded: Vec<u8>,
    /// Total length.
    pub size: u64,
    /// Trailer hash.
    pub trailer_hash: u64,
    /// Links behind it (0: a full image).
    pub depth: u32,
}

/// The plan for one incremental checkpoint.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Each process's parent (pid as our /proc names it). A process of the checkpoint not
    /// listed gets a full image (still arming write-tracking), for [`Plan::why_full`].
    pub parents: Vec<(i32, Parent)>,
    /// Why a full image is asked for (every process without a parent).
    pub why_full: String,
    /// The commit to use (the parent kept under its backup name).
    pub commit: Commit,
}

impl Plan {
    /// The parent of `pid`, if it gets a delta.
    pub fn parent_of(&self, pid: i32) -> Option<&Parent> {
        self.parents.iter().find(|(p, _)| *p == pid).map(|(_, p)| p)
    }
}

fn err(errno: i32, msg: String) -> CheckpointError {
    CheckpointError { errno, msg }
}

/// `p` as a delta in `dir` records it: its name when it is in `dir`, else absolute.
fn recorded(p: &Path, dir: &Path) -> Vec<u8> {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let canon_dir = |d: &Path| std::fs::canonicalize(d).ok();
    let pdir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
    match (canon_dir(&pdir), canon_dir(dir), abs.file_name()) {
        (Some(a), Some(b), Some(name)) if a == b => name.as_encoded_bytes().to_vec(),
        _ => abs.into_os_string().into_encoded_bytes(),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Decides the parents of an incremental checkpoint of `pids` (the processes of the scope,
/// eldest first): one plain image's process, or each process of a tree image whose pid (as the
/// process itself sees it) has an image in the parent tree.
pub fn plan(opts: &Options, inc: &Incremental, pids: &[i32]) -> Result<Plan, CheckpointError> {
    let full = |why: &str, commit: Commit| Plan {
        parents: Vec::new(),
        why_full: why.to_string(),
        commit,
    };
    let first = pids.first().copied().unwrap_or(0);
    let dest_path = match &opts.dest {
        Destination::Fd(_) => None,
        Destination::File(f) if f.as_os_str() == "-" => None,
        Destination::File(f) => Some(f.clone()),
        Destination::Dir(_) if pids.len() > 1 => {
            return Ok(full(
                "one file per process (--dir): give each process its own checkpoint",
                opts.commit.clone(),
            ))
        }
        Destination::Dir(d) => Some(d.join(format!("context.{first}"))),
        Destination::Cwd => Some(PathBuf::from(format!("context.{}", opts.id))),
    };
    let is_file = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file());
    let dest_dir = dest_path
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let explicit = inc
        .parent
        .clone()
        .filter(|p| !dest_path.as_ref().is_some_and(|d| same_file(p, d)));
    let (path, rec, commit) = match (explicit, &dest_path) {
        (Some(p), _) => {
            if !p.exists() {
                return Err(err(
                    libc::ENOENT,
                    format!("--incremental={}: no such parent image", p.display()),
                ));
            }
            let rec = recorded(&p, &dest_dir);
            (p, rec, opts.commit.clone())
        }
        (None, None) => {
            return Ok(full(
                "no parent: the destination is a stream (give --incremental=PARENT)",
                opts.commit.clone(),
            ))
        }
        (None, Some(d)) if !is_file(d) => {
            return Ok(full(
                "no parent yet: first checkpoint at this destination",
                opts.commit.clone(),
            ))
        }
        (None, Some(d)) => {
            // The image at the destination is the parent: the commit keeps it as a backup.
            let backup = match &opts.commit {
                Commit::Clobber => {
                    return Ok(full(
                        "--clobber writes over the parent",
                        opts.commit.clone(),
                    ))
                }
                Commit::Backup(name) if !name.is_empty() => PathBuf::from(name),
                _ => dest::next_backup(d),
            };
            let rec = recorded(&backup, &dest_dir);
            let name = backup.as_os_str().to_string_lossy().into_owned();
            (d.clone(), rec, Commit::Backup(name))
        }
    };
    let file = std::fs::File::open(&path).map_err(|e| {
        err(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("{}: {e}", path.display()),
        )
    })?;
    let (manifest, images) = crate::image::tree::open_all(&file).map_err(|e| {
        err(
            e.errno(),
            format!("--incremental: parent {}: {e}", path.display()),
        )
    })?;
    if manifest.is_none() && images.len() != 1 {
        return Ok(full(
            &format!(
                "the parent {} holds forwarded processes: not one process image",
                path.display()
            ),
            commit,
        ));
    }
    // Each process's image in the parent: the only one of a plain image, else the one with the
    // pid the process sees itself under (a job restored in its own pid namespace keeps them).
    let matched: Vec<(i32, &Image)> = if manifest.is_none() {
        vec![(first, &images[0])]
    } else {
        pids.iter()
            .filter_map(|&pid| {
                let inner = protocol::target_identity(pid).1;
                images
                    .iter()
                    .find(|i| i.header.pid as i32 == inner)
                    .map(|i| (pid, i))
            })
            .collect()
    };
    if matched.is_empty() {
        return Ok(full(
            &format!(
                "no process of this checkpoint has an image in {}",
                path.display()
            ),
            commit,
        ));
    }
    let depth_of = |img: &Image| img.parent.as_ref().map_or(0, |p| p.0.depth);
    let deepest = matched.iter().map(|(_, i)| depth_of(i)).max().unwrap_or(0);
    if inc.max_chain > 0 && deepest + 1 >= inc.max_chain {
        return Ok(full(
            &format!("--max-chain {} reached", inc.max_chain),
            commit,
        ));
    }
    Ok(Plan {
        parents: matched
            .into_iter()
            .map(|(pid, img)| {
                (
                    pid,
                    Parent {
                        recorded: rec.clone(),
                        size: img.identity().1,
                        trailer_hash: img.identity().0,
                        depth: depth_of(img),
                    },
                )
            })
            .collect(),
        why_full: format!("no image of this process in {}", path.display()),
        commit,
    })
}

/// Marks `req` (to process `pid`) incremental, with its parent if it has one.
pub fn apply(req: &mut Request, plan: Option<&Plan>, pid: i32) {
    let Some(plan) = plan else {
        return;
    };
    req.flags |= protocol::FLAG_INCREMENTAL;
    if let Some(p) = plan.parent_of(pid) {
        req.set_parent(&p.recorded, p.size, p.trailer_hash, p.depth);
    }
}

/// The agent's report of a full image the plan asked for (process `pid`) says why
/// ("incr=full(asked)").
pub fn explain(report: &mut String, plan: &Plan, pid: i32, note: &mut dyn FnMut(Note)) {
    if plan.parent_of(pid).is_none() {
        *report = report.replace("incr=full(asked)", &format!("incr=full({})", plan.why_full));
    }
    if let Some(i) = report.find("incr=full(") {
        let rest = &report[i + 10..];
        let why = rest.strip_suffix(')').unwrap_or(rest);
        note(Note::Info(format!(
            "incremental checkpoint: full image of {pid} ({why})"
        )));
    }
}
