//! Delta images and their parent chains (see `REC_PARENT` in docs/IMAGE-FORMAT.md).
//!
//! A delta image names its parent by path (relative to the delta's own directory, or
//! absolute), total length and trailer hash. [`resolve`] follows the names back to the full
//! image that ends the chain and checks every link, so a missing, replaced or truncated parent
//! is one clear line before anything is restored. A delta of one process of a tree image names
//! the parent tree file: its parent is the process image in it with the recorded length and
//! trailer hash.

use super::format::ParentRec;
use super::reader::Image;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest chain followed (a loop of links could otherwise never end).
pub const MAX_CHAIN: usize = 10_000;

/// Why a chain cannot be used: its errno and one line.
#[derive(Debug, Clone)]
pub struct ChainError {
    /// `ENOENT` (missing), `ESTALE` (replaced or truncated), `EINVAL` (unreadable).
    pub errno: i32,
    /// One line naming the link and the problem.
    pub msg: String,
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// The file a delta image at `child` names as its parent (`recorded`: relative to `child`'s
/// directory, or absolute).
pub fn parent_path(child: &Path, recorded: &[u8]) -> PathBuf {
    let p = Path::new(std::ffi::OsStr::from_bytes(recorded));
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let dir = child
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(p)
}

/// The file a delta image at `child` names as its parent: looked up by its file name in
/// `chain_dir` when given (a chain shipped apart from its delta, `cr_restart --chain-dir`), else
/// [`parent_path`].
pub fn parent_path_in(child: &Path, recorded: &[u8], chain_dir: Option<&Path>) -> PathBuf {
    let p = Path::new(std::ffi::OsStr::from_bytes(recorded));
    match (chain_dir, p.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => parent_path(child, recorded),
    }
}

/// What a link's file was when it was opened and checked: device, inode, size, modification and
/// change times. A restart compares it with the file it opens again to read the link's pages
/// ([`FileId::of`]), instead of reading and checking the link's header, metadata and trailer a
/// second time: any write, truncation or replacement since changes one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Status change time (seconds, nanoseconds).
    pub ctime: (i64, i64),
}

impl FileId {
    /// The identity of a file from its metadata.
    pub fn of(md: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// One checked link of a chain.
#[derive(Debug, Clone)]
pub struct Link {
    /// Its file.
    pub path: PathBuf,
    /// The image (header, metadata and trailer checked).
    pub img: Image,
    /// Its file as it was when it was checked.
    pub id: FileId,
}

/// Opens the parent that `child` (an image at `child_path`) names and checks that it is that
/// image: same total length and trailer hash, one image (not a tree), the expected depth.
pub fn open_parent(child: &Image, child_path: &Path) -> Result<Option<Link>, ChainError> {
    open_parent_in(child, child_path, None)
}

/// [`open_parent`], looking the parent up in `chain_dir` when given ([`parent_path_in`]).
pub fn open_parent_in(
    child: &Image,
    child_path: &Path,
    chain_dir: Option<&Path>,
) -> Result<Option<Link>, ChainError> {
    let Some((rec, recorded)) = &child.parent else {
        return Ok(None);
    };
    let path = parent_path_in(child_path, recorded, chain_dir);
    open_link(rec, &path, &child_path.display().to_string()).map(Some)
}

/// Opens the image at `path` and checks that it is the parent `rec` names (`of`: the child,
/// for messages).
pub fn open_link(rec: &ParentRec, path: &Path, of: &str) -> Result<Link, ChainError> {
    let name = path.display();
    let file = File::open(path).map_err(|e| ChainError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        msg: if e.kind() == std::io::ErrorKind::NotFound {
            format!("{name}: the parent image of {of} is missing (a delta image needs every image of its chain)")
        } else {
            format!("{name}: cannot open the parent image of {of}: {e}")
        },
    })?;
    let md = file.metadata().map_err(|e| ChainError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        msg: format!("{name}: cannot stat the parent image of {of}: {e}"),
    })?;
    let (id, len) = (FileId::of(&md), md.len());
    let stale = |what: String| ChainError {
        errno: libc::ESTALE,
        msg: format!("{name}: the parent image of {of} was {what}"),
    };
    // One image first (the usual parent), a tree image's manifest only when it is not one.
    let img = match Image::open(&file) {
        Err(super::reader::ImageError::NotAnImage)
            if matches!(super::tree::read_manifest(&file), Ok(Some(_))) =>
        {
            let img = open_in_tree(rec, &file, &name.to_string(), of)?;
            return Ok(Link {
                path: path.to_path_buf(),
                img,
                id,
            });
        }
        r => r,
    }
    .map_err(|e| ChainError {
        errno: libc::ESTALE,
        msg: if len != rec.size {
            format!(
                "{name}: the parent image of {of} was replaced or truncated ({len} bytes, the \
                 delta was taken against {} bytes): {e}",
                rec.size
            )
        } else {
            format!("{name}: the parent image of {of} is unusable (replaced or damaged?): {e}")
        },
    })?;
    // A compressed parent is named by the raw image it was made from.
    if img.identity() != (rec.trailer_hash, rec.size) {
        return Err(stale(if len != rec.size && img.origin.is_none() {
            format!(
                "replaced or truncated ({len} bytes, the delta was taken against {} bytes)",
                rec.size
            )
        } else {
            "replaced (its trailer hash differs from the one the delta recorded)".into()
        }));
    }
    let depth = img.parent.as_ref().map_or(0, |p| p.0.depth);
    if depth + 1 != rec.depth {
        return Err(stale(format!(
            "replaced (it is {depth} links deep, the delta expects {})",
            rec.depth - 1
        )));
    }
    Ok(Link {
        path: path.to_path_buf(),
        img,
        id,
    })
}

/// Opens the file of `link` again (a restart reading the pages it supplies) and checks that it
/// is still the file that was checked ([`FileId`]); `of`: the image whose parent it is, for
/// messages.
pub fn reopen(link: &Link, of: &str) -> Result<File, ChainError> {
    let name = link.path.display();
    let file = File::open(&link.path).map_err(|e| ChainError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        msg: if e.kind() == std::io::ErrorKind::NotFound {
            format!("{name}: the parent image of {of} is missing (removed while the restart was reading its chain)")
        } else {
            format!("{name}: cannot open the parent image of {of}: {e}")
        },
    })?;
    match file.metadata() {
        Ok(md) if FileId::of(&md) == link.id => Ok(file),
        Ok(_) => Err(ChainError {
            errno: libc::ESTALE,
            msg: format!(
                "{name}: the parent image of {of} was replaced or changed while the restart was \
                 reading its chain (its inode, size or times differ from when it was checked)"
            ),
        }),
        Err(e) => Err(ChainError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            msg: format!("{name}: cannot stat the parent image of {of}: {e}"),
        }),
    }
}

/// The process image of the tree image `file` (at `name`) that `rec` names: the one with its
/// total length and trailer hash (a delta of one process of a tree names the tree file).
fn open_in_tree(rec: &ParentRec, file: &File, name: &str, of: &str) -> Result<Image, ChainError> {
    let (_, images) = super::tree::open_all(file).map_err(|e| ChainError {
        errno: libc::ESTALE,
        msg: format!("{name}: the parent image of {of} is unusable (replaced or damaged?): {e}"),
    })?;
    let img = images
        .into_iter()
        .find(|i| i.identity() == (rec.trailer_hash, rec.size))
        .ok_or_else(|| ChainError {
            errno: libc::ESTALE,
            msg: format!(
                "{name}: the parent image of {of} was replaced (no process image in it has the \
                 length and trailer hash the delta recorded)"
            ),
        })?;
    let depth = img.parent.as_ref().map_or(0, |p| p.0.depth);
    if depth + 1 != rec.depth {
        return Err(ChainError {
            errno: libc::ESTALE,
            msg: format!(
                "{name}: the parent image of {of} was replaced (it is {depth} links deep, the \
                 delta expects {})",
                rec.depth - 1
            ),
        });
    }
    Ok(img)
}

/// Follows the chain of `img` (the image at `path`): its parent, grandparent, … up to the full
/// image, each checked by [`open_parent`]. Empty for a full image.
pub fn resolve(img: &Image, path: &Path) -> Result<Vec<Link>, ChainError> {
    resolve_in(img, path, None)
}

/// [`resolve`], every link looked up in `chain_dir` when given ([`parent_path_in`]).
pub fn resolve_in(
    img: &Image,
    path: &Path,
    chain_dir: Option<&Path>,
) -> Result<Vec<Link>, ChainError> {
    let mut links: Vec<Link> = Vec::new();
    loop {
        let (child, child_path) = match links.last() {
            Some(l) => (&l.img, l.path.as_path()),
            None => (img, path),
        };
        match open_parent_in(child, child_path, chain_dir)? {
            Some(l) if links.len() < MAX_CHAIN => links.push(l),
            Some(_) => {
                return Err(ChainError {
                    errno: libc::ELOOP,
                    msg: format!("{}: parent chain longer than {MAX_CHAIN}", path.display()),
                })
            }
            None => return Ok(links),
        }
    }
}

/// [`resolve_in`] with every link's path made absolute (a restart reads the links from a
/// process whose working directory is the program's), for `Image::chain`.
pub fn resolve_abs_in(
    img: &Image,
    path: &Path,
    chain_dir: Option<&Path>,
) -> Result<Vec<Link>, ChainError> {
    let mut links = resolve_in(img, path, chain_dir)?;
    for l in &mut links {
        if let Ok(p) = std::path::absolute(&l.path) {
            l.path = p;
        }
    }
    Ok(links)
}

/// A piece of a link's page data that a delta takes: data offset, length, address.
pub type Piece = (u64, u64, u64);

/// What each link of `img`'s chain (`links`, newest first) supplies to `img`'s incremental
/// regions: per link, its pieces (data offset, length, address), empty for a link that
/// supplies nothing (every page it holds is newer in a later image, or outside what is needed).
/// Metadata only: nothing is read. `Err`: pages of an incremental region are in no image.
pub fn supply(img: &Image, links: &[Link]) -> Result<Vec<Vec<Piece>>, ChainError> {
    let mut need = Vec::new();
    for r in &img.regions {
        needed_from_parents(r, &mut need);
    }
    let mut out = Vec::with_capacity(links.len());
    for l in links {
        if need.is_empty() {
            break;
        }
        let mut copies = Vec::new();
        need = split(&l.img, &need, &mut copies);
        out.push(copies);
    }
    if !need.is_empty() {
        return Err(ChainError {
            errno: libc::EINVAL,
            msg: "corrupt image chain: pages of an incremental region are in no image".into(),
        });
    }
    Ok(out)
}

/// The pages of an incremental region (`r.incr` set) that its parents must supply: the region
/// minus the runs the delta holds and its zero ranges, appended to `out`. Nothing for a region
/// saved in full.
pub fn needed_from_parents(r: &super::reader::Region, out: &mut Vec<(u64, u64)>) {
    let Some(holes) = &r.incr else { return };
    let mut have: Vec<(u64, u64)> = r
        .extents
        .iter()
        .map(|e| (e.addr, e.addr + e.len))
        .chain(holes.iter().copied())
        .collect();
    have.sort_unstable();
    subtract(r.rec.start, r.rec.end, &have, out);
}

/// `(a, b)` minus the sorted, disjoint `cut` ranges, appended to `out`.
pub fn subtract(a: u64, b: u64, cut: &[(u64, u64)], out: &mut Vec<(u64, u64)>) {
    let mut p = a;
    let first = cut.partition_point(|&(_, e)| e <= a);
    for &(s, e) in &cut[first..] {
        if s >= b {
            break;
        }
        if p < s {
            out.push((p, s));
        }
        p = p.max(e);
    }
    if p < b {
        out.push((p, b));
    }
}

/// Splits `need` over `link`'s regions: data pieces to copy (`copies`), and what its
/// incremental regions leave to the next parent (returned). Pages in no region of the link,
/// or in a full region's unsaved pages, are zero.
pub fn split(
    link: &Image,
    need: &[(u64, u64)],
    copies: &mut Vec<(u64, u64, u64)>,
) -> Vec<(u64, u64)> {
    let mut next = Vec::new();
    let regions: &[super::reader::Region] = &link.regions;
    for &(a, b) in need {
        let first = regions.partition_point(|r| r.rec.end <= a);
        for r in &regions[first..] {
            if r.rec.start >= b {
                break;
            }
            let (x, y) = (a.max(r.rec.start), b.min(r.rec.end));
            if x >= y {
                continue;
            }
            let mut p = x;
            let mut rest = Vec::new();
            let e0 = r.extents.partition_point(|e| e.addr + e.len <= x);
            for e in &r.extents[e0..] {
                if e.addr >= y {
                    break;
                }
                let (ex, ey) = (x.max(e.addr), y.min(e.addr + e.len));
                if p < ex {
                    rest.push((p, ex));
                }
                copies.push((e.file_off + (ex - e.addr), ey - ex, ex));
                p = ey;
            }
            if p < y {
                rest.push((p, y));
            }
            if let Some(holes) = &r.incr {
                for (s, e) in rest {
                    subtract(s, e, holes, &mut next);
                }
            }
        }
    }
    next
}
