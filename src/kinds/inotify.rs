//! inotify: its watches, each as (watch descriptor, mask, device, inode, file handle) from
//! `/proc/self/fdinfo` (which has no path). Captured in the agent, allocation-free, by streaming
//! the fdinfo text through a stack buffer. Events queued but not yet read are not saved.
//!
//! At restart (`post_restore`, in the restored process before its memory comes back, once its
//! descriptors are in place and its working directory entered) each watched inode is found
//! again: by its file handle (`open_by_handle_at`, which needs `CAP_DAC_READ_SEARCH`, so only
//! where cr_restart runs as root outside a user namespace), else by searching for its device and
//! inode number under the working directory, the directories of the process's descriptors, `/tmp`,
//! `$HOME` and `/` (three levels deep, at most [`SEARCH_BUDGET`] entries in all). Watches are added
//! again in ascending order of their descriptor: the kernel hands them out cyclically from 1, so
//! a gap (a removed watch) is skipped by adding and removing a watch on a scratch memfd, and the
//! `IN_IGNORED` events that leaves are read off. A watch whose inode is not found is a warning;
//! its number is skipped all the same so the others keep theirs.

use super::{get, parse_u64, put, Kind, KindError, INOTIFY};
use crate::sys::{self, Errno, StackBuf};
use bytemuck::{Pod, Zeroable};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directory entries the restart's search looks at, in all, before it gives up.
pub const SEARCH_BUDGET: usize = 200_000;
/// Directory levels below each starting point the search goes down.
const SEARCH_DEPTH: usize = 3;
/// Largest file handle saved (bytes); a larger one is left out (the search still works).
const MAX_HANDLE: usize = 32;

/// The saved state of an inotify instance: this, then `n` × [`Watch`].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct InotifyState {
    /// Number of watches.
    pub n: u32,
    /// Reserved (0).
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<InotifyState>() == 8);

/// One watch.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Its watch descriptor.
    pub wd: i32,
    /// Its mask (events, `IN_ONESHOT`, `IN_EXCL_UNLINK`).
    pub mask: u32,
    /// Inode number of the watched file.
    pub ino: u64,
    /// Device of its filesystem, as the kernel encodes it (major << 20 | minor).
    pub sdev: u32,
    /// File handle type (`fhandle-type`).
    pub handle_type: i32,
    /// File handle length; 0 when none was saved.
    pub handle_len: u32,
    /// Reserved (0).
    pub _pad: u32,
    /// File handle bytes.
    pub handle: [u8; MAX_HANDLE],
}
const _: () = assert!(core::mem::size_of::<Watch>() == 64);

const HEAD: usize = core::mem::size_of::<InotifyState>();
const WATCH: usize = core::mem::size_of::<Watch>();

/// The inotify kind.
pub struct Inotify;

/// Parses one fdinfo line `inotify wd:N ino:I sdev:D mask:M ignored_mask:0 fhandle-bytes:B
/// fhandle-type:T f_handle:H` (numbers hex but `wd`); `None` for other lines.
pub fn parse_watch(line: &[u8]) -> Option<Result<Watch, Errno>> {
    let rest = line.strip_prefix(b"inotify ")?;
    let mut w = Watch::zeroed();
    let (mut wd, mut ino, mut sdev, mut mask) = (None, None, None, None);
    for tok in rest.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        let Some(colon) = tok.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, val) = (&tok[..colon], &tok[colon + 1..]);
        match name {
            b"wd" => wd = parse_u64(val, 10),
            b"ino" => ino = parse_u64(val, 16),
            b"sdev" => sdev = parse_u64(val, 16),
            b"mask" => mask = parse_u64(val, 16),
            b"fhandle-type" => w.handle_type = parse_u64(val, 16).unwrap_or(0) as i32,
            b"f_handle" if val.len() % 2 == 0 && val.len() / 2 <= MAX_HANDLE => {
                let mut ok = true;
                for (i, pair) in val.chunks(2).enumerate() {
                    match parse_u64(pair, 16) {
                        Some(b) => w.handle[i] = b as u8,
                        None => ok = false,
                    }
                }
                w.handle_len = if ok { (val.len() / 2) as u32 } else { 0 };
            }
            _ => {}
        }
    }
    let (Some(wd), Some(ino), Some(sdev), Some(mask)) = (wd, ino, sdev, mask) else {
        return Some(Err(Errno(libc::EPROTO)));
    };
    w.wd = wd as i32;
    w.ino = ino;
    w.sdev = sdev as u32;
    w.mask = mask as u32;
    Some(Ok(w))
}

/// The watches of a saved state.
pub fn watches(state: &[u8]) -> Option<Vec<Watch>> {
    let head: InotifyState = get(state)?;
    let body = state.get(HEAD..HEAD + head.n as usize * WATCH)?;
    Some(
        body.chunks_exact(WATCH)
            .map(bytemuck::pod_read_unaligned)
            .collect(),
    )
}

impl Kind for Inotify {
    fn id(&self) -> u32 {
        INOTIFY
    }
    fn name(&self) -> &'static str {
        "inotify"
    }
    fn link(&self) -> &'static [u8] {
        b"anon_inode:inotify"
    }
    fn refusal(&self, e: Errno) -> &'static [u8] {
        if e.0 == libc::ENOSPC {
            b"is an inotify instance with more than 255 watches; it will be closed at restart"
        } else {
            b"is an inotify instance whose watches could not be read; it will be closed at restart"
        }
    }

    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
        let mut n = 0usize;
        let mut path = StackBuf::<64>::new();
        path.push(b"/proc/self/fdinfo/").num(fd as u64);
        super::each_line(path.as_cstr(), |line| {
            let Some(w) = parse_watch(line) else {
                return Ok(());
            };
            let at = HEAD + n * WATCH;
            put(out.get_mut(at..).ok_or(Errno(libc::ENOSPC))?, &w?)?;
            n += 1;
            Ok(())
        })?;
        put(
            out,
            &InotifyState {
                n: n as u32,
                _pad: 0,
            },
        )?;
        Ok(HEAD + n * WATCH)
    }

    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError> {
        watches(state).ok_or_else(|| KindError::malformed("inotify"))?;
        // SAFETY: inotify_init1 takes no pointers.
        super::owned(
            unsafe { libc::inotify_init1(libc::IN_CLOEXEC) },
            "cannot create an inotify instance",
        )
    }

    fn post_restore(&self, fd: i32, state: &[u8]) -> Result<Vec<String>, KindError> {
        let mut ws = watches(state).ok_or_else(|| KindError::malformed("inotify"))?;
        ws.sort_by_key(|w| w.wd);
        let mut warnings = Vec::new();
        let mut by_handle: HashMap<i32, OwnedFd> = HashMap::new();
        let mut wanted = HashSet::new();
        for w in &ws {
            match open_by_handle(w) {
                Some(f) => {
                    by_handle.insert(w.wd, f);
                }
                None => {
                    wanted.insert(dev_ino(w));
                }
            }
        }
        let found = if wanted.is_empty() {
            HashMap::new()
        } else {
            search(&wanted)
        };
        let scratch = Scratch::new()?;
        let mut next = 1;
        let mut skipped = false;
        for w in &ws {
            while next < w.wd {
                scratch.skip(fd)?;
                skipped = true;
                next += 1;
            }
            let (path, flags) = match (by_handle.get(&w.wd), found.get(&dev_ino(w))) {
                (Some(f), _) => (format!("/proc/self/fd/{}", f.as_raw_fd()), 0),
                (None, Some(p)) => (p.to_string_lossy().into_owned(), libc::IN_DONT_FOLLOW),
                (None, None) => {
                    warnings.push(format!(
                        "inotify watch {} (device {}:{}, inode {}) not found (searched the working directory, the directories of open files, /tmp, $HOME and /, {SEARCH_DEPTH} levels deep); it gets no more events",
                        w.wd, w.sdev >> 20, w.sdev & 0xfffff, w.ino
                    ));
                    scratch.skip(fd)?;
                    skipped = true;
                    next += 1;
                    continue;
                }
            };
            let c = CString::new(path.clone()).unwrap_or_default();
            // SAFETY: inotify_add_watch reads the NUL-terminated path.
            let got = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), w.mask | flags) };
            if got < 0 {
                warnings.push(format!(
                    "inotify watch {} on {path}: {}; it gets no more events",
                    w.wd,
                    std::io::Error::last_os_error()
                ));
                scratch.skip(fd)?;
                skipped = true;
            } else if got != w.wd {
                warnings.push(format!(
                    "inotify watch {} on {path} came back as watch {got}",
                    w.wd
                ));
            }
            next += 1;
        }
        if skipped {
            drain(fd);
        }
        Ok(warnings)
    }

    fn describe(&self, state: &[u8]) -> String {
        match watches(state) {
            Some(ws) => {
                let list: Vec<String> = ws
                    .iter()
                    .map(|w| {
                        format!(
                            "wd {} inode {} on {}:{} mask {:#x}",
                            w.wd,
                            w.ino,
                            w.sdev >> 20,
                            w.sdev & 0xfffff,
                            w.mask
                        )
                    })
                    .collect();
                format!("inotify, {} watches: {}", ws.len(), list.join(", "))
            }
            None => "inotify (malformed state)".into(),
        }
    }
}

/// (major, minor, inode) of a watch, as `stat` numbers devices.
fn dev_ino(w: &Watch) -> (u32, u32, u64) {
    (w.sdev >> 20, w.sdev & 0xfffff, w.ino)
}

/// The watched inode opened `O_PATH` from its file handle, where the kernel lets us (root).
fn open_by_handle(w: &Watch) -> Option<OwnedFd> {
    if w.handle_len == 0 {
        return None;
    }
    let (major, minor, ino) = dev_ino(w);
    let mount = mount_point(major, minor)?;
    let m = std::fs::File::open(&mount).ok()?;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; MAX_HANDLE],
    }
    let mut h = Handle {
        bytes: w.handle_len,
        kind: w.handle_type,
        data: w.handle,
    };
    // SAFETY: the handle is a local `struct file_handle` with `bytes` valid bytes after it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            &mut h as *mut Handle,
            libc::O_PATH | libc::O_CLOEXEC,
        )
    } as i32;
    let f = super::owned(fd, "open_by_handle_at").ok()?;
    let st = sys::fstat(f.as_raw_fd()).ok()?;
    let same = libc::major(st.st_dev) == major && libc::minor(st.st_dev) == minor;
    (same && st.st_ino == ino).then_some(f)
}

/// A mount point of device `major:minor` (from /proc/self/mountinfo).
fn mount_point(major: u32, minor: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dev = format!("{major}:{minor}");
    text.lines().find_map(|l| {
        let mut f = l.split(' ');
        let (_, _, d, _, mnt) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        (d == dev).then(|| PathBuf::from(unescape(mnt)))
    })
}

/// mountinfo's octal escapes (`\040` for a blank) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = parse_u64(&b[i + 1..i + 4], 8) {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Paths of the inodes `wanted` ((major, minor, inode)) found by a bounded breadth-first search.
fn search(wanted: &HashSet<(u32, u32, u64)>) -> HashMap<(u32, u32, u64), PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            if target.is_absolute() && target.exists() {
                let dir = if target.is_dir() {
                    Some(target.clone())
                } else {
                    target.parent().map(Path::to_path_buf)
                };
                roots.push(target);
                roots.extend(dir);
            }
        }
    }
    roots.push("/tmp".into());
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(home.into());
    }
    roots.push("/".into());
    search_from(&roots, wanted, SEARCH_DEPTH, SEARCH_BUDGET)
}

/// The search of [`search`] from `roots`.
pub fn search_from(
    roots: &[PathBuf],
    wanted: &HashSet<(u32, u32, u64)>,
    depth: usize,
    budget: usize,
) -> HashMap<(u32, u32, u64), PathBuf> {
    let mut found = HashMap::new();
    let mut seen_dirs = HashSet::new();
    let mut queue: VecDeque<(PathBuf, usize)> = roots.iter().map(|r| (r.clone(), 0)).collect();
    let mut left = budget;
    let note = |p: &Path, md: &std::fs::Metadata, found: &mut HashMap<_, _>| {
        let key = (libc::major(md.dev()), libc::minor(md.dev()), md.ino());
        if wanted.contains(&key) {
            found.entry(key).or_insert_with(|| p.to_path_buf());
        }
    };
    while let Some((dir, level)) = queue.pop_front() {
        if found.len() == wanted.len() || left == 0 {
            break;
        }
        let Ok(md) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        note(&dir, &md, &mut found);
        if !md.is_dir() || !seen_dirs.insert((md.dev(), md.ino())) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if left == 0 {
                break;
            }
            left -= 1;
            let p = e.path();
            let Ok(md) = e.metadata() else { continue };
            note(&p, &md, &mut found);
            if md.is_dir() && level < depth && !p.starts_with("/proc") && !p.starts_with("/sys") {
                queue.push_back((p, level + 1));
            }
        }
    }
    found
}

/// A memfd whose watch, added and removed, uses up one watch descriptor.
struct Scratch(OwnedFd, CString);

impl Scratch {
    fn new() -> Result<Self, KindError> {
        // SAFETY: memfd_create reads the NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"cr-inotify-skip".as_ptr(), libc::MFD_CLOEXEC) };
        let f = super::owned(fd, "cannot create a memfd to number inotify watches")?;
        let path = CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
        Ok(Scratch(f, path))
    }

    /// Uses up the next watch descriptor of inotify instance `fd`.
    fn skip(&self, fd: i32) -> Result<(), KindError> {
        // SAFETY: inotify_add_watch reads the NUL-terminated path; rm_watch takes no pointers.
        let wd = unsafe { libc::inotify_add_watch(fd, self.1.as_ptr(), libc::IN_ATTRIB) };
        if wd < 0 {
            return Err(KindError::last("cannot number inotify watches"));
        }
        // SAFETY: as above.
        unsafe { libc::inotify_rm_watch(fd, wd) };
        let _ = &self.0;
        Ok(())
    }
}

/// Reads off the events queued on inotify instance `fd` (the `IN_IGNORED` of skipped numbers).
fn drain(fd: i32) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 || n <= 0 {
            return;
        }
        let len = (n as usize).min(buf.len());
        // SAFETY: reading at most `len` bytes into our buffer.
        if unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) } <= 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_parse() {
        let line = b"inotify wd:2 ino:3c4a7 sdev:fe00000 mask:80000002 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000";
        let w = parse_watch(line).unwrap().unwrap();
        assert_eq!(
            (w.wd, w.ino, w.sdev, w.mask),
            (2, 0x3c4a7, 0xfe00000, 0x80000002)
        );
        assert_eq!((w.handle_type, w.handle_len), (1, 8));
        assert_eq!(&w.handle[..3], &[0xa7, 0xc4, 0x03]);
        assert_eq!(dev_ino(&w), (254, 0, 0x3c4a7));
        assert!(parse_watch(b"pos:\t0").is_none());
        assert!(parse_watch(b"inotify wd:x").unwrap().is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
