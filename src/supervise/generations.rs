//! The checkpoint directory of a supervised job: one image file per generation,
//! `NAME.NNNNNN.ckpt` (a tree image of the whole job, committed atomically, so a file with
//! that name is always complete), the newest `keep` kept; `NAME.info` says what runs.
//!
//! With `cr_run --incremental` a generation may be a delta of an older one (its images name
//! their parent generation by file name): the generations a kept one needs are kept with it
//! ([`kept`]), and a generation is only good when its whole chain is.

use crate::image::tree;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Suffix of generation files.
const SUFFIX: &str = ".ckpt";

/// One generation of a job's images.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Its sequence number (higher is newer).
    pub seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// When it was committed (the file's modification time).
    pub time: SystemTime,
}

/// The stable default name of a job: the program's file name and a hash of its arguments.
pub fn default_name(argv: &[std::ffi::OsString]) -> String {
    let mut bytes = Vec::new();
    for a in argv {
        bytes.extend_from_slice(a.as_encoded_bytes());
        bytes.push(0);
    }
    let base = argv
        .first()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".into());
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}-{:08x}", crate::image::format::hash(&bytes) as u32)
}

/// Whether `name` may name a job (it becomes part of file names and store keys).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The file name of generation `seq` of job `name`.
pub fn file_name(name: &str, seq: u64) -> String {
    format!("{name}.{seq:06}{SUFFIX}")
}

/// The sequence number in a generation file name of job `name`, if it is one.
pub fn parse_name(name: &str, file: &str) -> Option<u64> {
    let rest = file.strip_prefix(name)?.strip_prefix('.')?;
    let digits = rest.strip_suffix(SUFFIX)?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Every generation of job `name` in `dir`, newest first.
pub fn list(dir: &Path, name: &str) -> Vec<Generation> {
    let mut out: Vec<Generation> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let seq = parse_name(name, &file)?;
            let md = e.metadata().ok()?;
            md.is_file().then(|| Generation {
                seq,
                path: e.path(),
                size: md.len(),
                time: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.seq));
    out
}

/// Every job name with generations in `dir`, sorted.
pub fn jobs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let stem = file.strip_suffix(SUFFIX)?;
            let (name, digits) = stem.rsplit_once('.')?;
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && valid_name(name))
                .then(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Checks a generation completely: header, metadata, trailer and page data checksums of every
/// process image in it, that the process table is complete, and, for a delta, that every image
/// of its chain is there, unchanged. `Err` names the problem.
pub fn validate(path: &Path) -> Result<usize, String> {
    let n = validate_self(path)?;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, images) = tree::open_all(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    for img in images.iter().filter(|i| i.parent.is_some()) {
        crate::image::chain::resolve(img, path).map_err(|e| e.msg)?;
    }
    Ok(n)
}

/// [`validate`] without the chain: the generation's own file only.
pub fn validate_self(path: &Path) -> Result<usize, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (manifest, images) =
        tree::open_all(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(m) = &manifest {
        if images.len() != m.header.nproc as usize {
            return Err(format!(
                "{}: incomplete: {} of {} process images",
                path.display(),
                images.len(),
                m.header.nproc
            ));
        }
    }
    if images.is_empty() {
        return Err(format!("{}: no process image", path.display()));
    }
    for img in &images {
        img.verify_data(&file)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(images.len())
}

/// The generations of job `name` that the images of the generation at `path` are deltas of
/// (their parents), sorted. A file that is not an image has none. `Err` when a parent is not a
/// generation of this job (a delta taken by hand against another file).
pub fn parents(path: &Path, name: &str) -> Result<Vec<u64>, String> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(Vec::new());
    };
    let Ok((_, images)) = tree::open_all(&file) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (_, recorded) in images.iter().filter_map(|i| i.parent.as_ref()) {
        let p = crate::image::chain::parent_path(path, recorded);
        let seq = p
            .file_name()
            .and_then(|f| parse_name(name, &f.to_string_lossy()))
            .ok_or_else(|| {
                format!(
                    "{}: its parent {} is not a generation of job {name}",
                    path.display(),
                    p.display()
                )
            })?;
        out.push(seq);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Generation `seq` of `name` in `dir` and every generation its chain needs, oldest first;
/// `None` when a link is not in `dir` (or names a file that is not a generation).
pub fn chain(dir: &Path, name: &str, seq: u64) -> Option<Vec<u64>> {
    let mut out = vec![seq];
    let mut todo = vec![seq];
    while let Some(s) = todo.pop() {
        let path = dir.join(file_name(name, s));
        if !path.is_file() {
            return None;
        }
        for p in parents(&path, name).ok()? {
            if !out.contains(&p) {
                if out.len() > crate::image::chain::MAX_CHAIN {
                    return None;
                }
                out.push(p);
                todo.push(p);
            }
        }
    }
    out.sort_unstable();
    Some(out)
}

/// The generations to keep of `seqs` (newest first): the newest `keep` and every generation
/// their chains need (read from the files in `dir`). When a kept generation's chain cannot be
/// read there, every older one is kept too: a parent it needs is never removed.
pub fn kept(dir: &Path, name: &str, seqs: &[u64], keep: usize) -> std::collections::HashSet<u64> {
    let mut out = std::collections::HashSet::new();
    for &s in seqs.iter().take(keep.max(1)) {
        match chain(dir, name, s) {
            Some(c) => out.extend(c),
            None => out.extend(seqs.iter().copied().filter(|&o| o <= s)),
        }
    }
    out
}

/// Removes every generation of `name` but the newest `keep` (and those their chains need);
/// returns the removed paths.
pub fn prune(dir: &Path, name: &str, keep: usize) -> Vec<PathBuf> {
    prune_if(dir, name, keep, &|_| true)
}

/// As [`prune`], but only generations for which `may_go(seq)` holds are removed (with a store,
/// those whose upload is confirmed).
pub fn prune_if(dir: &Path, name: &str, keep: usize, may_go: &dyn Fn(u64) -> bool) -> Vec<PathBuf> {
    let gens = list(dir, name);
    let seqs: Vec<u64> = gens.iter().map(|g| g.seq).collect();
    let kept = kept(dir, name, &seqs, keep);
    let mut removed = Vec::new();
    for g in gens.into_iter().filter(|g| !kept.contains(&g.seq)) {
        if may_go(g.seq) && std::fs::remove_file(&g.path).is_ok() {
            removed.push(g.path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(file_name("job-1", 7), "job-1.000007.ckpt");
        assert_eq!(parse_name("job-1", "job-1.000007.ckpt"), Some(7));
        assert_eq!(parse_name("job-1", "job-1.1234567.ckpt"), Some(1_234_567));
        assert_eq!(parse_name("job-1", "job-12.000007.ckpt"), None);
        assert_eq!(parse_name("job-1", ".job-1.000007.ckpt.tmp"), None);
        assert_eq!(parse_name("job-1", "job-1..ckpt"), None);
        let a = default_name(&["/bin/prog".into(), "x".into()]);
        let b = default_name(&["/bin/prog".into(), "y".into()]);
        assert!(a.starts_with("prog-") && b.starts_with("prog-") && a != b);
        assert_eq!(a, default_name(&["/bin/prog".into(), "x".into()]));
        assert!(valid_name(&a));
        assert!(!valid_name("../x") && !valid_name("") && !valid_name(".hidden"));
    }
}
