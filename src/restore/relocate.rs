//! `--relocate OLD=NEW`: prefix replacement of the paths an image refers to (open files, mapped
//! files including the executable, directories, the working directory), as BLCR's cr_restart.
//!
//! Rules (BLCR): both sides must start with `/`; trailing `/` are trimmed; `\=` and `\\` escape a
//! literal `=` and `\`; only whole leading path components match; the first matching pair wins;
//! pairs whose two sides are equal are dropped; at most [`MAX_PAIRS`].

use crate::image::format::{FdKind, RegionKind};
use crate::image::reader::Image;

/// BLCR's `CR_MAX_RSTRT_RELOC`.
pub const MAX_PAIRS: usize = 16;

/// One `OLD=NEW` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Prefix to replace.
    pub old: Vec<u8>,
    /// Replacement.
    pub new: Vec<u8>,
}

fn trim(mut p: Vec<u8>) -> Vec<u8> {
    while p.len() > 1 && p.last() == Some(&b'/') {
        p.pop();
    }
    p
}

/// Parses one `OLD=NEW` argument (escapes `\=` and `\\`); `None` for an invalid one.
pub fn parse(arg: &str) -> Option<Pair> {
    let mut old = Vec::new();
    let mut new = Vec::new();
    let mut seen_eq = false;
    let mut bytes = arg.bytes();
    while let Some(b) = bytes.next() {
        let out = if seen_eq { &mut new } else { &mut old };
        match b {
            b'\\' => out.push(bytes.next()?),
            b'=' if !seen_eq => seen_eq = true,
            b'=' => return None, // a second unescaped '='
            _ => out.push(b),
        }
    }
    let (old, new) = (trim(old), trim(new));
    (seen_eq && old.first() == Some(&b'/') && new.first() == Some(&b'/'))
        .then_some(Pair { old, new })
}

/// Parses all arguments; drops identity pairs; errors on a bad one or more than [`MAX_PAIRS`].
pub fn parse_all(args: &[String]) -> Result<Vec<Pair>, String> {
    let mut pairs = Vec::new();
    for a in args {
        let p = parse(a).ok_or_else(|| format!("invalid --relocate '{a}' (expected /OLD=/NEW)"))?;
        if p.old != p.new {
            pairs.push(p);
        }
    }
    if pairs.len() > MAX_PAIRS {
        return Err(format!("too many --relocate pairs (at most {MAX_PAIRS})"));
    }
    Ok(pairs)
}

/// `path` with the first matching pair applied (whole leading components only).
pub fn apply(pairs: &[Pair], path: &[u8]) -> Option<Vec<u8>> {
    pairs.iter().find_map(|p| {
        let rest = path.strip_prefix(p.old.as_slice())?;
        let boundary = rest.is_empty() || rest[0] == b'/' || p.old == b"/";
        boundary.then(|| [p.new.as_slice(), rest].concat())
    })
}

/// Rewrites every path of `img` the pairs match.
pub fn relocate(img: &mut Image, pairs: &[Pair]) {
    if pairs.is_empty() {
        return;
    }
    for r in &mut img.regions {
        if matches!(r.kind, RegionKind::FilePrivate | RegionKind::FileShared)
            || super::memory::tmpfs_file(r)
        {
            if let Some(p) = apply(pairs, &r.path) {
                r.path = p;
            }
        }
    }
    for (_, d) in &mut img.saved_dirs {
        if let Some(p) = apply(pairs, d) {
            *d = p;
        }
    }
    for f in &mut img.fds {
        // Named FIFOs too (anonymous pipes have no path: `pipe:[ino]`).
        let by_path = matches!(
            f.kind,
            FdKind::Regular
                | FdKind::Directory
                | FdKind::CharDevice
                | FdKind::CheckpointFile
                | FdKind::Unlinked
        ) || (f.kind == FdKind::Pipe && f.path.first() == Some(&b'/'));
        if by_path {
            if let Some(p) = apply(pairs, &f.path) {
                f.path = p;
            }
        }
        // inotify watches with their path.
        if let Some((kind, state)) = &mut f.kobj {
            if *kind == crate::kinds::INOTIFY {
                *state = crate::kinds::inotify::map_paths(state, |p| apply(pairs, p));
            }
        }
    }
    if let Some(p) = apply(pairs, &img.cwd) {
        img.cwd = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escapes_and_trims() {
        let p = parse(r"/a\=b/=/c\\d/").unwrap();
        assert_eq!(p.old, b"/a=b");
        assert_eq!(p.new, br"/c\d");
        assert!(parse("relative=/x").is_none());
        assert!(parse("/x").is_none());
        assert!(parse("/a=/b=/c").is_none());
    }

    #[test]
    fn whole_components_only_and_first_match_wins() {
        let pairs = parse_all(&[
            "/data=/new".into(),
            "/data/sub=/other".into(),
            "/same=/same".into(),
        ])
        .unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(apply(&pairs, b"/data/sub/f").unwrap(), b"/new/sub/f");
        assert_eq!(apply(&pairs, b"/data"), Some(b"/new".to_vec()));
        assert_eq!(apply(&pairs, b"/database/f"), None);
    }

    #[test]
    fn at_most_sixteen_pairs() {
        let many: Vec<String> = (0..17).map(|i| format!("/a{i}=/b{i}")).collect();
        assert!(parse_all(&many).is_err());
    }
}
