//! inotify: its watches, each as (watch descriptor, mask, device, inode, file handle) from
//! `/proc/self/fdinfo` (which has no path), and each watch's path where the agent saw it added:
//! the agent's `inotify_add_watch` ([`note_watch`]) keeps the absolute path of every watched
//! inode in a small lock-free table, and the capture saves the path of a watch when it still
//! leads to the watched inode. Captured in the agent, allocation-free, by streaming the fdinfo
//! text through a stack buffer. Events queued but not yet read cannot be read without taking
//! them: their byte count (`FIONREAD`) is saved and the checkpoint warns that they are lost.
//!
//! At restart (`post_restore`, in the restored process before its memory comes back, once its
//! descriptors are in place and its working directory entered) a watch with a saved path is
//! added again by that path when it exists (`--relocate` rewrites it, so a moved or copied
//! tree is watched at its new place); otherwise its inode is found again: by its file handle (`open_by_handle_at`, which needs `CAP_DAC_READ_SEARCH`, so only
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
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
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

/// The saved state of an inotify instance: this, then `n` × [`Watch`], then (optional: older
/// images end after the watches) a path per watch in the same order, each `len: u16` and `len`
/// bytes (0: none saved), as many as fitted.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct InotifyState {
    /// Number of watches.
    pub n: u32,
    /// Bytes of events queued unread at the checkpoint (`FIONREAD`; lost: 0 in older images).
    pub queued: u32,
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

/// The saved path of each watch of a saved state, in the order of [`watches`] (`None`: no path
/// saved; missing entries at the end are `None` too).
pub fn paths(state: &[u8]) -> Vec<Option<Vec<u8>>> {
    let Some(head) = get::<InotifyState>(state) else {
        return Vec::new();
    };
    let n = head.n as usize;
    let mut at = HEAD + n * WATCH;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let Some(len) = state.get(at..at + 2) else {
            break;
        };
        let len = u16::from_ne_bytes([len[0], len[1]]) as usize;
        let Some(p) = state.get(at + 2..at + 2 + len) else {
            break;
        };
        out.push((len > 0).then(|| p.to_vec()));
        at += 2 + len;
    }
    out.resize(n, None);
    out
}

/// `state` with every saved path rewritten by `map` (`--relocate`).
pub fn map_paths(state: &[u8], map: impl Fn(&[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    let Some(head) = get::<InotifyState>(state) else {
        return state.to_vec();
    };
    let ps = paths(state);
    if ps.iter().all(|p| p.is_none()) {
        return state.to_vec();
    }
    let mut out = state[..HEAD + head.n as usize * WATCH].to_vec();
    for p in ps {
        let p = p.map(|p| map(&p).unwrap_or(p)).unwrap_or_default();
        let p = if p.len() > u16::MAX as usize {
            Vec::new()
        } else {
            p
        };
        out.extend_from_slice(&(p.len() as u16).to_ne_bytes());
        out.extend_from_slice(&p);
    }
    out
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
    fn checkpoint_count_warning(
        &self,
        state: &[u8],
    ) -> Option<(&'static [u8], u64, &'static [u8])> {
        get::<InotifyState>(state)
            .filter(|s| s.queued > 0)
            .map(|s| {
                (
                    &b"is an inotify instance with "[..],
                    s.queued as u64,
                    &b" bytes of queued unread events, which are lost (they cannot be read without taking them): the restored instance has none"[..],
                )
            })
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
        let queued = sys::bytes_waiting(fd).unwrap_or(0).min(u32::MAX as usize) as u32;
        put(
            out,
            &InotifyState {
                n: n as u32,
                queued,
            },
        )?;
        // The paths, as many as fit.
        let mut at = HEAD + n * WATCH;
        for i in 0..n {
            let w: Watch = bytemuck::pod_read_unaligned(&out[HEAD + i * WATCH..][..WATCH]);
            let mut buf = [0u8; PATH_SAVED + 1];
            let len = registry_path(w.sdev, w.ino, &mut buf);
            let Some(dst) = out.get_mut(at..at + 2 + len) else {
                break;
            };
            dst[..2].copy_from_slice(&(len as u16).to_ne_bytes());
            dst[2..].copy_from_slice(&buf[..len]);
            at += 2 + len;
        }
        Ok(at)
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
        let mut gone_paths: HashMap<i32, String> = HashMap::new();
        let ws = watches(state).ok_or_else(|| KindError::malformed("inotify"))?;
        // A saved path that exists now is used as it is (relocated by `--relocate`).
        let mut by_path: HashMap<i32, String> = HashMap::new();
        for (w, p) in ws.iter().zip(paths(state)) {
            let Some(p) = p else { continue };
            let p = String::from_utf8_lossy(&p).into_owned();
            if Path::new(&p).exists() {
                by_path.insert(w.wd, p);
            } else {
                gone_paths.insert(w.wd, p);
            }
        }
        let mut ws = ws;
        ws.sort_by_key(|w| w.wd);
        let mut warnings = Vec::new();
        let mut by_handle: HashMap<i32, OwnedFd> = HashMap::new();
        let mut wanted = HashSet::new();
        for w in ws.iter().filter(|w| !by_path.contains_key(&w.wd)) {
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
            // A file found by the search whose saved path is gone must at least have kept its
            // name (inode numbers are reused: another file may have it now).
            let searched = found.get(&dev_ino(w)).filter(|p| {
                gone_paths
                    .get(&w.wd)
                    .is_none_or(|g| Path::new(g).file_name() == p.file_name())
            });
            let by_inode = (by_handle.get(&w.wd), searched);
            let (path, flags) = match (by_path.get(&w.wd), by_inode) {
                (Some(p), _) => (p.clone(), 0),
                (None, (Some(f), _)) => (format!("/proc/self/fd/{}", f.as_raw_fd()), 0),
                (None, (None, Some(p))) => (p.to_string_lossy().into_owned(), libc::IN_DONT_FOLLOW),
                (None, (None, None)) => {
                    let was = gone_paths
                        .get(&w.wd)
                        .map(|p| format!(" on {p}, which is gone,"))
                        .unwrap_or_default();
                    warnings.push(format!(
                        "inotify watch {}{was} (device {}:{}, inode {}) not found (searched the working directory, the directories of open files, /tmp, $HOME and /, {SEARCH_DEPTH} levels deep); it gets no more events",
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
                let ps = paths(state);
                let list: Vec<String> = ws
                    .iter()
                    .zip(ps)
                    .map(|(w, p)| {
                        let p = p
                            .map(|p| format!(" {}", String::from_utf8_lossy(&p)))
                            .unwrap_or_default();
                        format!(
                            "wd {}{p} inode {} on {}:{} mask {:#x}",
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

/// Longest watch path kept (bytes, without its NUL); a longer one is not kept.
pub const PATH_SAVED: usize = 512;
/// Watched inodes whose path is kept; beyond that the oldest entries are replaced.
const SLOTS: usize = 64;
const FREE: u32 = 0;
const BUSY: u32 = 1;
const READY: u32 = 2;

/// One kept path: the watched inode (device as fdinfo's `sdev`, inode) and its absolute path.
struct Slot {
    state: AtomicU32,
    sdev: AtomicU32,
    ino: AtomicU64,
    len: AtomicUsize,
    path: UnsafeCell<[u8; PATH_SAVED]>,
}

struct Registry([Slot; SLOTS]);

// SAFETY: a slot's `path` is written only by the thread that moved its `state` to BUSY (a
// compare-exchange, so one thread at a time), and read only while the state is READY, which the
// writer publishes with Release after writing and which readers load with Acquire.
unsafe impl Sync for Registry {}

static REGISTRY: Registry = Registry(
    [const {
        Slot {
            state: AtomicU32::new(FREE),
            sdev: AtomicU32::new(0),
            ino: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            path: UnsafeCell::new([0; PATH_SAVED]),
        }
    }; SLOTS],
);
static EVICT: AtomicUsize = AtomicUsize::new(0);

/// fdinfo's `sdev` (the kernel's `MAJOR << 20 | MINOR`) of a `stat` device number.
fn kernel_dev(dev: u64) -> u32 {
    (libc::major(dev) << 20) | libc::minor(dev)
}

/// Called by the agent's `inotify_add_watch` after the kernel added a watch on `path` (as the
/// program gave it, NUL-terminated): keeps its absolute path (relative ones joined to the working
/// directory) for the inode it names. Lock-free and allocation-free; a path too long is not kept.
///
/// # Safety
/// `path` is NUL-terminated (the kernel just read it).
pub unsafe fn note_watch(path: *const libc::c_char, mask: u32) {
    if path.is_null() {
        return;
    }
    // SAFETY: the caller's promise.
    let rel = unsafe { core::ffi::CStr::from_ptr(path) }.to_bytes();
    let mut abs = [0u8; PATH_SAVED + 1];
    // (One byte kept for the NUL.)
    let Some(len) = sys::absolute_path(rel, &mut abs[..PATH_SAVED]) else {
        return;
    };
    abs[len] = 0;
    let flags = if mask & libc::IN_DONT_FOLLOW != 0 {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    let Ok(st) = sys::stat(&abs[..=len], flags) else {
        return;
    };
    keep(kernel_dev(st.st_dev), st.st_ino, &abs[..len]);
}

/// Puts (`sdev`, `ino`) → `path` in the table: over the inode's own entry, else in a free slot,
/// else over the next one in turn.
fn keep(sdev: u32, ino: u64, path: &[u8]) {
    let slots = &REGISTRY.0;
    let same = |s: &Slot| {
        s.state.load(Acquire) == READY && s.sdev.load(Relaxed) == sdev && s.ino.load(Relaxed) == ino
    };
    for _ in 0..2 * SLOTS {
        let (i, from) = match slots.iter().position(same) {
            Some(i) => (i, READY),
            None => match slots.iter().position(|s| s.state.load(Relaxed) == FREE) {
                Some(i) => (i, FREE),
                None => (EVICT.fetch_add(1, Relaxed) % SLOTS, READY),
            },
        };
        let s = &slots[i];
        if s.state
            .compare_exchange(from, BUSY, Acquire, Relaxed)
            .is_err()
        {
            continue;
        }
        s.sdev.store(sdev, Relaxed);
        s.ino.store(ino, Relaxed);
        // SAFETY: this thread moved the slot to BUSY: nobody else writes or reads `path`.
        unsafe { (&mut *s.path.get())[..path.len()].copy_from_slice(path) };
        s.len.store(path.len(), Relaxed);
        s.state.store(READY, Release);
        return;
    }
}

/// Copies the kept path of inode (`sdev`, `ino`) into `buf` (NUL-terminated) if it still leads
/// to that inode; its length (0: none).
fn registry_path(sdev: u32, ino: u64, buf: &mut [u8; PATH_SAVED + 1]) -> usize {
    for s in &REGISTRY.0 {
        if s.state.load(Acquire) != READY
            || s.sdev.load(Relaxed) != sdev
            || s.ino.load(Relaxed) != ino
        {
            continue;
        }
        let len = s.len.load(Relaxed).min(PATH_SAVED);
        // SAFETY: READY: no writer (the program's threads are parked; see `Registry`).
        buf[..len].copy_from_slice(unsafe { &(&*s.path.get())[..len] });
        buf[len] = 0;
        let leads_there = [0, libc::AT_SYMLINK_NOFOLLOW].iter().any(|&f| {
            sys::stat(&buf[..=len], f)
                .is_ok_and(|st| kernel_dev(st.st_dev) == sdev && st.st_ino == ino)
        });
        if leads_there {
            return len;
        }
    }
    0
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
    fn paths_follow_the_watches_and_relocate() {
        let mut state = bytemuck::bytes_of(&InotifyState { n: 2, queued: 32 }).to_vec();
        state.extend_from_slice(&[0u8; 2 * WATCH]);
        assert_eq!(
            paths(&state),
            vec![None, None],
            "an older image has no paths"
        );
        state.extend_from_slice(&5u16.to_ne_bytes());
        state.extend_from_slice(b"/a/bc");
        assert_eq!(
            paths(&state),
            vec![Some(b"/a/bc".to_vec()), None],
            "cut short"
        );
        state.extend_from_slice(&0u16.to_ne_bytes());
        assert_eq!(paths(&state), vec![Some(b"/a/bc".to_vec()), None]);
        let moved = map_paths(&state, |p| {
            p.strip_prefix(b"/a")
                .map(|rest| [b"/new".as_slice(), rest].concat())
        });
        assert_eq!(paths(&moved), vec![Some(b"/new/bc".to_vec()), None]);
        assert_eq!(get::<InotifyState>(&moved).map(|s| s.queued), Some(32));
    }

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
