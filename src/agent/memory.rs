//! Memory capture: every line of `/proc/self/maps` becomes a region record; the pages worth
//! saving become extents; the page data is written straight from the program's memory.
//!
//! Which pages are saved, per region kind (see `image::format::RegionKind`):
//! - private anonymous memory, heap, stacks: pages present or swapped (`/proc/self/pagemap`) that
//!   are not all zero — pages never written map the shared zero page and are skipped;
//! - private file mappings: only pages that became anonymous (copy-on-write), zero or not;
//! - shared file mappings: nothing (the file holds the data);
//! - shared memory with no file (shared anonymous, memfd, deleted files, SysV): resident pages
//!   (tmpfs-backed: `mincore`) or every readable page (disk-backed deleted files), zeros skipped;
//! - files of tmpfs (`statfs`), which may vanish with the program: by content (shared: as shared
//!   memory; private: every non-zero page and the copy-on-write ones), marked with a
//!   `REC_REGION_FS` record so the restart maps them from their path again;
//! - hugetlb memory (smaps `ht`): as its kind says, marked with its page size in a
//!   `REC_REGION_FS` record so the restart uses huge pages again;
//! - `[vdso]`/`[vvar]`/`[vvar_vclock]`: recorded, never saved.
//!
//! Runs in the control thread while every other thread is parked: raw syscalls, scratch memory
//! from `mmap`, no heap.

use super::lazy::image_backed;
use super::scratch::Scratch;
use crate::image::format::*;
use crate::image::writer::MetaWriter;
use crate::sys::{self, Errno, StackBuf};

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
/// `pagemap`: the page is a guard region (`MADV_GUARD_INSTALL`, Linux 6.13; this bit 6.14):
/// reading it faults, so it is never read nor saved ([`note_guard`]).
const PM_GUARD_REGION: u64 = 1 << 58;

/// Guard pages (`MADV_GUARD_INSTALL`) this checkpoint left out: they are restored as ordinary
/// zero pages, which a warning says (a guard region is not recorded by the image format).
static GUARD_PAGES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts `n` guard pages left out of the image being written.
pub fn note_guard(n: u64) {
    GUARD_PAGES.fetch_add(n, core::sync::atomic::Ordering::Relaxed);
}
/// Pagemap entries read per system call.
const PM_CHUNK: usize = 4096;

/// One parsed line of `/proc/self/maps`.
pub struct MapLine<'a> {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// Shared (`s`) rather than private (`p`).
    pub shared: bool,
    /// File offset.
    pub offset: u64,
    /// Device major.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Inode.
    pub inode: u64,
    /// Path or pseudo-name (may be empty).
    pub path: &'a [u8],
}

fn hex(s: &[u8]) -> u64 {
    s.iter().fold(0u64, |v, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => 0,
        };
        v.wrapping_mul(16).wrapping_add(d as u64)
    })
}

/// Parses one maps line (without the newline).
pub fn parse_line(line: &[u8]) -> Option<MapLine<'_>> {
    let mut fields = [&line[..0]; 5];
    let mut rest = line;
    for f in fields.iter_mut() {
        let sp = rest.iter().position(|&b| b == b' ')?;
        *f = &rest[..sp];
        rest = &rest[sp + 1..];
    }
    let path_start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let path = &rest[path_start..];
    let dash = fields[0].iter().position(|&b| b == b'-')?;
    let colon = fields[3].iter().position(|&b| b == b':')?;
    let perms = fields[1];
    if perms.len() < 4 {
        return None;
    }
    let mut prot = 0;
    if perms[0] == b'r' {
        prot |= libc::PROT_READ as u32;
    }
    if perms[1] == b'w' {
        prot |= libc::PROT_WRITE as u32;
    }
    if perms[2] == b'x' {
        prot |= libc::PROT_EXEC as u32;
    }
    Some(MapLine {
        start: hex(&fields[0][..dash]),
        end: hex(&fields[0][dash + 1..]),
        prot,
        shared: perms[3] == b's',
        offset: hex(fields[2]),
        major: hex(&fields[3][..colon]) as u32,
        minor: hex(&fields[3][colon + 1..]) as u32,
        inode: super::quiesce::parse_dec(fields[4]).max(0) as u64,
        path,
    })
}

/// Which mapped files are stored by content instead of by reference (`--save-*`).
#[derive(Clone, Copy, Debug)]
pub struct SaveByContent<'a> {
    /// The executable's mappings.
    pub exe: bool,
    /// Every private file mapping, the executable's included (BLCR's `--save-private`).
    pub private: bool,
    /// Shared file mappings (restored as shared memory).
    pub shared: bool,
    /// Bytes of files shared-mapped under temporary directories that may still be saved (the
    /// rest of `--save-tmp-limit` after the open ones; `None`: none is).
    pub tmp_left: Option<i64>,
    /// The further temporary directories (`--save-dir`).
    pub files: &'a crate::protocol::SaveFiles,
}

/// `statfs` `f_type` of tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Decides how a region is stored, from its maps line (and a `stat` of its file, left in `st`);
/// `fs` gets the file system detail of RAM-backed memory ([`REC_REGION_FS`]). `maps`: all of
/// `/proc/self/maps`.
/// For a shared mapping of a tmpfs file whose name was removed (`… (deleted)`) while the file
/// has another name in the same directory (glibc's `sem_open` maps a temporary name, links it
/// as `sem.NAME` and removes the temporary one): that name, written into `out`
/// (allocation-free), so that the region is saved and restored as that file.
fn live_name<'b>(m: &MapLine<'_>, out: &'b mut StackBuf<4096>) -> Option<&'b [u8]> {
    if !m.shared || m.major != 0 {
        return None;
    }
    let p = m.path.strip_suffix(b" (deleted)")?;
    // A file in a directory (not "/memfd:…", "/SYSV…", "/dev/zero": their own kinds).
    let slash = p.iter().rposition(|&b| b == b'/').filter(|&s| s > 0)?;
    if p.starts_with(b"/dev/zero") {
        return None;
    }
    let dir = &p[..slash];
    let mut d = StackBuf::<4096>::new();
    d.push(dir);
    let fd = sys::open(
        d.as_cstr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )
    .ok()? as i32;
    let mut buf = [0u8; 2048];
    let mut found = false;
    'dir: while let Ok(n) = sys::getdents64(fd, &mut buf) {
        if n == 0 {
            break;
        }
        let mut pos = 0;
        // struct linux_dirent64 { ino: u64, off: i64, reclen: u16, type: u8, name[] }
        while pos + 19 <= n {
            let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap_or([0; 8]));
            let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
            if reclen == 0 || pos + reclen > n {
                break 'dir;
            }
            let raw = &buf[pos + 19..pos + reclen];
            let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
            if ino == m.inode && name != b"." && name != b".." {
                out.push(dir).push(b"/").push(name);
                found = true;
                break 'dir;
            }
            pos += reclen;
        }
    }
    sys::close(fd);
    // The same file: device too (inode numbers repeat across file systems).
    let same = found
        && sys::stat(out.as_cstr(), 0)
            .is_ok_and(|s| s.st_ino == m.inode && s.st_dev == libc::makedev(m.major, m.minor));
    same.then(|| out.as_bytes())
}

fn classify(
    m: &MapLine,
    maps: &[u8],
    save: SaveByContent,
    exe: Option<(u64, u64)>,
    st: &mut Option<libc::stat>,
    fs: &mut Option<RegionFsRec>,
) -> Option<RegionKind> {
    let p = m.path;
    match p {
        b"[vsyscall]" => return None,
        b"[vdso]" => return Some(RegionKind::Vdso),
        b"[vvar]" => return Some(RegionKind::Vvar),
        b"[vvar_vclock]" => return Some(RegionKind::VvarVclock),
        b"[stack]" => return Some(RegionKind::Stack),
        _ => {}
    }
    let anonymous = p.is_empty() || p.starts_with(b"[heap]") || p.starts_with(b"[anon:");
    if anonymous || p.starts_with(b"[anon_shmem:") {
        return Some(if m.shared || p.starts_with(b"[anon_shmem:") {
            RegionKind::SharedContent
        } else {
            RegionKind::Anon
        });
    }
    if p.starts_with(b"[") {
        return Some(RegionKind::Anon); // other kernel-named anonymous memory
    }
    let content = if m.shared {
        RegionKind::SharedContent
    } else {
        RegionKind::PrivateContent
    };
    if image_backed(m) {
        // Memory a lazy restart mapped from its image: the program's own memory, saved by
        // content (the next image must not refer to the old one).
        return Some(RegionKind::PrivateContent);
    }
    if p.ends_with(b" (deleted)") || p.starts_with(b"/memfd:") || p.starts_with(b"/SYSV") {
        return Some(content);
    }
    let mut path = StackBuf::<4096>::new();
    path.push(p);
    let s = match sys::stat(path.as_cstr(), 0) {
        Ok(s) if s.st_ino == m.inode && s.st_dev == libc::makedev(m.major, m.minor) => {
            *st = Some(s);
            s
        }
        _ => return Some(content), // replaced or unreachable: keep what the program sees
    };
    // A file of tmpfs cannot be assumed to outlive the program (a JVM removes its
    // /tmp/hsperfdata_USER/PID at exit, a reboot empties /dev/shm): saved by content, and
    // mapped from its path again at restart (see `image::format::FS_TMPFS`).
    if sys::statfs_type(path.as_cstr()) == Ok(TMPFS_MAGIC) && !(m.shared && save.shared) {
        *fs = Some(fs_rec(FS_TMPFS, Some(&s), PAGE as u64));
        return Some(content);
    }
    // A file shared-mapped under a temporary directory on disk (an MPI library's session
    // segments in /tmp, a JVM's hsperfdata): the program's own cleanup or a new node takes it
    // away just as on tmpfs, so it is saved and restored the same way (`FS_TEMPDIR`).
    // (Device major 0 is memory: tmpfs above, hugetlbfs below.)
    if m.shared
        && !save.shared
        && m.major != 0
        && m.prot & libc::PROT_EXEC as u32 == 0
        && save.tmp_left.is_some()
        && super::fds::temporary_reason(p, save.files).is_some()
    {
        *fs = Some(fs_rec(FS_TEMPDIR, Some(&s), PAGE as u64));
        return Some(content);
    }
    // A file mapped privately under a temporary directory (a data file the program maps and
    // deletes on SIGTERM): saved by content too, mapped from its file again at restart when it
    // is still there unchanged (as `FS_TMPFS`). Not a program or library run from there: a file
    // this process maps executable anywhere stays by reference.
    if !m.shared
        && !save.private
        && m.major != 0
        && save.tmp_left.is_some()
        && super::fds::temporary_reason(p, save.files).is_some()
        && !mapped_executable(maps, m.major, m.minor, m.inode)
    {
        *fs = Some(fs_rec(FS_TEMPDIR, Some(&s), PAGE as u64));
        return Some(content);
    }
    let is_exe = exe == Some((libc::makedev(m.major, m.minor), m.inode));
    Some(if m.shared {
        if save.shared {
            RegionKind::SharedContent
        } else {
            RegionKind::FileShared
        }
    } else if save.private || (is_exe && save.exe) {
        RegionKind::PrivateContent
    } else {
        RegionKind::FilePrivate
    })
}

/// Whether some mapping of `maps` maps the file `major:minor inode` executable (allocation-free).
fn mapped_executable(maps: &[u8], major: u32, minor: u32, inode: u64) -> bool {
    maps.split(|&b| b == b'\n').filter_map(parse_line).any(|o| {
        o.prot & libc::PROT_EXEC as u32 != 0
            && o.inode == inode
            && o.major == major
            && o.minor == minor
    })
}

/// `n` rounded up to whole pages.
fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE as u64) * PAGE as u64
}

/// The SysV shared memory segment with id `shmid`, from `/proc/sysvipc/shm` (allocation-free).
fn sysv_segment(shmid: u64) -> Option<SysvShmRec> {
    let mut found = None;
    let _ = crate::kinds::each_line(b"/proc/sysvipc/shm\0", |line| {
        if found.is_none() {
            found = parse_sysv_line(line).filter(|s| s.shmid as u64 == shmid);
        }
        Ok(())
    });
    found
}

/// One line of `/proc/sysvipc/shm`: `key shmid perms size …` (key signed decimal, perms octal).
pub fn parse_sysv_line(line: &[u8]) -> Option<SysvShmRec> {
    let mut f = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty());
    let k = crate::kinds::parse_i64(f.next()?)?;
    let shmid = crate::kinds::parse_u64(f.next()?, 10)?;
    let mode = crate::kinds::parse_u64(f.next()?, 8)?;
    let size = crate::kinds::parse_u64(f.next()?, 10)?;
    Some(SysvShmRec {
        key: k as i32,
        shmid: shmid as i32,
        mode: mode as u32,
        _pad: 0,
        size,
    })
}

/// How far ahead of the page [`page_is_zero`] reads the zero scan of a run of populated pages
/// asks for the first line of a page ([`prefetch`]): each page is read once, one cache line of
/// it for most, so the scan waits on one page walk and one miss per page unless they overlap.
/// A copy-on-write writer's first read of each page through its fresh page tables cost ~150 ns
/// more than the program's own (tens of ms per GiB, docs/PERFORMANCE.md 2026-12-07); in C,
/// 1 GiB, prefetching 4 pages ahead: the fork child's first pass 60 → 27-34 ms, the parent's
/// 10-12 → 6.5-10 ms.
const ZERO_SCAN_AHEAD: u64 = 4 * PAGE as u64;

/// A hint that the cache line at `addr` will be read soon (no fault whatever `addr` is).
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes nothing the program can see.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Whether the 4 KiB page at `addr` is all zero.
fn page_is_zero(addr: usize) -> bool {
    let p = addr as *const u64;
    let mut i = 0;
    while i < PAGE / 8 {
        let mut acc = 0u64;
        for k in 0..8 {
            // SAFETY: the page is mapped and readable (pagemap or a probe said so); the program's
            // threads are parked, so nothing writes it concurrently.
            acc |= unsafe { core::ptr::read_volatile(p.add(i + k)) };
        }
        if acc != 0 {
            return false;
        }
        i += 8;
    }
    true
}

/// Collects extents (global, in file order) while regions are scanned.
pub struct ExtentList<'a> {
    buf: &'a mut [Extent],
    n: usize,
    region_first: usize,
    /// Bytes of page data assigned so far (next relative file offset).
    pub data_len: u64,
}

impl<'a> ExtentList<'a> {
    /// Empty list over scratch storage.
    pub fn new(buf: &'a mut [Extent]) -> Self {
        ExtentList {
            buf,
            n: 0,
            region_first: 0,
            data_len: 0,
        }
    }

    fn push_page(&mut self, addr: u64) -> Result<(), Errno> {
        if self.n > self.region_first {
            let last = &mut self.buf[self.n - 1];
            if last.addr + last.len == addr {
                last.len += PAGE as u64;
                self.data_len += PAGE as u64;
                return Ok(());
            }
        }
        if self.n == self.buf.len() {
            return Err(Errno(libc::ENOMEM));
        }
        self.buf[self.n] = Extent {
            addr,
            len: PAGE as u64,
            file_off: self.data_len,
        };
        self.n += 1;
        self.data_len += PAGE as u64;
        Ok(())
    }

    /// Appends a run of `len` bytes of pages at `addr` (merged with the last extent of the
    /// region when it continues it).
    pub fn push_range(&mut self, addr: u64, len: u64) -> Result<(), Errno> {
        if self.n > self.region_first {
            let last = &mut self.buf[self.n - 1];
            if last.addr + last.len == addr {
                last.len += len;
                self.data_len += len;
                return Ok(());
            }
        }
        self.push_extent(addr, len)
    }

    /// Appends one extent of `len` bytes at `addr` as it is (never merged with the last one).
    fn push_extent(&mut self, addr: u64, len: u64) -> Result<(), Errno> {
        if self.n == self.buf.len() {
            return Err(Errno(libc::ENOMEM));
        }
        self.buf[self.n] = Extent {
            addr,
            len,
            file_off: self.data_len,
        };
        self.n += 1;
        self.data_len += len;
        Ok(())
    }

    /// Drops the extents of the current region.
    fn rollback_region(&mut self) {
        if self.n > self.region_first {
            self.data_len = self.buf[self.region_first].file_off;
            self.n = self.region_first;
        }
    }

    fn begin_region(&mut self) {
        self.region_first = self.n;
    }

    fn region_extents(&self) -> &[Extent] {
        &self.buf[self.region_first..self.n]
    }

    /// All extents so far.
    pub fn all(&self) -> &[Extent] {
        &self.buf[..self.n]
    }

    /// The list whose first `n` extents (`data_len` bytes) are already in `buf` (built by
    /// another process sharing the scratch area: a copy-on-write writer's, see `agent::cow`).
    pub fn prebuilt(buf: &'a mut [Extent], n: usize, data_len: u64) -> Self {
        let n = n.min(buf.len());
        ExtentList {
            buf,
            n,
            region_first: n,
            data_len,
        }
    }

    /// How many extents the list holds.
    pub fn count(&self) -> usize {
        self.n
    }
}

/// Shared memory of a copy-on-write checkpoint, copied while the program is stopped (a forked
/// writer shares those pages with the running program, so it cannot write them from memory).
pub struct Precopy<'a> {
    /// The copied pages: `addr` and `len` as in the program, `file_off` the offset in the copy.
    pub extents: &'a [Extent],
    /// Address of the copy (a mapping of its own, left out of the image).
    pub base: u64,
    /// Its length.
    pub len: u64,
}

impl Precopy<'_> {
    /// Whether `kind` is memory a forked writer cannot read as it was at the stop.
    pub fn covers(kind: RegionKind) -> bool {
        matches!(kind, RegionKind::SharedContent | RegionKind::PrivateContent)
    }
    fn in_range(&self, start: u64, end: u64) -> impl Iterator<Item = &Extent> {
        self.extents
            .iter()
            .filter(move |e| e.addr >= start && e.addr < end)
    }
}

/// Finds, like [`capture`] would, the pages of shared memory (and other memory stored by
/// content) to save and lists them in `out` (`file_off`: their offset in a copy); the caller
/// copies them with [`copy_precopied`].
/// Returns how many regions the program has (the scratch area left out), for
/// [`count_regions`] in the writer.
pub fn find_precopy(
    scratch: &Scratch,
    out: &mut ExtentList,
    save: SaveByContent,
) -> Result<u64, Errno> {
    let exe = sys::stat(b"/proc/self/exe\0", 0)
        .ok()
        .map(|s| (s.st_dev, s.st_ino));
    let maps = scratch.maps();
    let n = sys::read_file(b"/proc/self/maps\0", maps)?;
    let pagemap_fd =
        sys::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)? as i32;
    GUARD_PAGES.store(0, core::sync::atomic::Ordering::Relaxed);
    let res = (|| {
        let mut regions = 0;
        for line in scratch.maps()[..n].split(|&b| b == b'\n') {
            let Some(m) = parse_line(line) else { continue };
            if agent_own(scratch, m.start, m.end) {
                continue;
            }
            let mut live = StackBuf::<4096>::new();
            let m = match live_name(&m, &mut live) {
                Some(path) => MapLine { path, ..m },
                None => m,
            };
            regions += 1;
            let (mut st, mut fs) = (None, None);
            let Some(kind) = classify(&m, &scratch.maps()[..n], save, exe, &mut st, &mut fs) else {
                continue;
            };
            if Precopy::covers(kind) {
                out.begin_region();
                scan_region(&m, kind, fs, pagemap_fd, scratch, out, &mut 0)?;
            }
        }
        Ok(regions)
    })();
    sys::close(pagemap_fd);
    res
}

/// How many regions this address space has, leaving out the scratch area and `skip` (start,
/// length): in a copy-on-write writer, fewer than the program had at the fork means memory the
/// program marked `MADV_DONTFORK`, which the snapshot lacks.
pub fn count_regions(scratch: &Scratch, skip: (u64, u64)) -> Result<u64, Errno> {
    count_regions_of(b"/proc/self/maps\0", scratch, skip)
}

/// [`count_regions`] of the maps file at `path` (NUL-terminated): the control thread counts its
/// writer's (`/proc/PID/maps`) as soon as `clone3` returns.
pub fn count_regions_of(path: &[u8], scratch: &Scratch, skip: (u64, u64)) -> Result<u64, Errno> {
    let maps = scratch.maps();
    let n = sys::read_file(path, maps)?;
    Ok(scratch.maps()[..n]
        .split(|&b| b == b'\n')
        .filter_map(parse_line)
        .filter(|m| {
            !agent_own(scratch, m.start, m.end) && !(skip.0..skip.0 + skip.1).contains(&m.start)
        })
        .count() as u64)
}

/// Copies every extent of `extents` to `base + file_off` (`process_vm_readv`: a page that cannot
/// be read fails with `EFAULT` instead of a signal).
pub fn copy_precopied(extents: &[Extent], base: u64) -> Result<(), Errno> {
    for e in extents {
        // SAFETY: the copy mapping holds `file_off + len` bytes for every extent.
        let dst = unsafe {
            core::slice::from_raw_parts_mut((base + e.file_off) as *mut u8, e.len as usize)
        };
        if read_self(e.addr as usize, dst) != e.len as usize {
            return Err(Errno(libc::EFAULT));
        }
    }
    Ok(())
}

/// Regions whose pages must be made readable while they are written.
pub struct Unreadable {
    list: [(u64, u64, u32); 256],
    n: usize,
}

impl Unreadable {
    /// Empty.
    pub const fn new() -> Self {
        Unreadable {
            list: [(0, 0, 0); 256],
            n: 0,
        }
    }
    fn add(&mut self, start: u64, end: u64, prot: u32) -> Result<(), Errno> {
        if self.n == self.list.len() {
            return Err(Errno(libc::ENOMEM));
        }
        self.list[self.n] = (start, end, prot);
        self.n += 1;
        Ok(())
    }
    /// Temporarily grants (`open = true`) or restores the original protections.
    pub fn set(&self, open: bool) {
        for &(s, e, prot) in &self.list[..self.n] {
            let p = if open {
                prot | libc::PROT_READ as u32
            } else {
                prot
            };
            let _ = sys::sys3(
                libc::SYS_mprotect as usize,
                s as usize,
                (e - s) as usize,
                p as usize,
            );
        }
    }
}

impl Default for Unreadable {
    fn default() -> Self {
        Self::new()
    }
}

/// Scans one region and appends its extents. `huge` gets the bytes of it that transparent
/// huge pages map (anonymous memory scanned with `PAGEMAP_SCAN` only; else left as it is).
fn scan_region(
    m: &MapLine,
    kind: RegionKind,
    fs: Option<RegionFsRec>,
    pagemap_fd: i32,
    scratch: &Scratch,
    ext: &mut ExtentList,
    huge: &mut u64,
) -> Result<(), Errno> {
    match kind {
        RegionKind::Anon | RegionKind::Stack
            if super::incremental::populated_runs(
                pagemap_fd,
                m.start,
                m.end,
                scratch.pagemap(),
                |start, end, zero, in_huge| {
                    if in_huge {
                        *huge += end - start;
                    }
                    if m.prot & libc::PROT_READ as u32 == 0 {
                        // Not readable: every populated page, as below.
                        return ext.push_range(start, end - start);
                    }
                    if zero {
                        return Ok(()); // the shared zero page: nothing to save
                    }
                    let mut page = start;
                    while page < end {
                        let ahead = page + ZERO_SCAN_AHEAD;
                        if ahead < end {
                            prefetch(ahead as usize);
                        }
                        if !page_is_zero(page as usize) {
                            ext.push_page(page)?;
                        }
                        page += PAGE as u64;
                    }
                    Ok(())
                },
            )? => {}
        RegionKind::Anon | RegionKind::Stack | RegionKind::FilePrivate => {
            let pm = scratch.pagemap();
            let mut addr = m.start;
            while addr < m.end {
                let pages = (((m.end - addr) / PAGE as u64) as usize).min(PM_CHUNK);
                let bytes = &mut pm[..pages * 8];
                let got = sys::pread(pagemap_fd, bytes, (addr / PAGE as u64) * 8)?;
                let pages = got / 8;
                if pages == 0 {
                    break;
                }
                for i in 0..pages {
                    let e =
                        u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
                    let page = addr + (i * PAGE) as u64;
                    if e & PM_GUARD_REGION != 0 {
                        note_guard(1);
                        continue;
                    }
                    let populated = e & (PM_PRESENT | PM_SWAPPED) != 0;
                    let save = if kind == RegionKind::FilePrivate {
                        populated && (e & PM_FILE == 0 || e & PM_SWAPPED != 0)
                    } else {
                        populated
                            && (m.prot & libc::PROT_READ as u32 == 0
                                || !page_is_zero(page as usize))
                    };
                    if save {
                        ext.push_page(page)?;
                    }
                }
                addr += (pages * PAGE) as u64;
            }
        }
        RegionKind::SharedContent | RegionKind::PrivateContent => {
            // tmpfs/shmem objects (device major 0): only resident pages hold data (not so the
            // image a lazy restart mapped: its pages not yet touched are not resident).
            let shmem = m.major == 0 && !image_backed(m);
            // A private mapping that may be re-created from its file (tmpfs): the pages that
            // became the program's own (copy-on-write) are saved even when zero, since the file
            // may hold data there.
            let own_zero = kind == RegionKind::PrivateContent
                && fs.is_some_and(|f| f.fs == FS_TMPFS || f.fs == FS_TEMPDIR);
            let probe = scratch.probe();
            let mut addr = m.start;
            while addr < m.end {
                let len = ((m.end - addr) as usize).min(probe.len());
                let readable = read_self(addr as usize, &mut probe[..len]);
                let resident = scratch.mincore();
                let pages = len / PAGE;
                if shmem {
                    sys::sys3(
                        libc::SYS_mincore as usize,
                        addr as usize,
                        len,
                        resident.as_mut_ptr() as usize,
                    )?;
                }
                let pm = scratch.pagemap();
                if own_zero {
                    let got =
                        sys::pread(pagemap_fd, &mut pm[..pages * 8], (addr / PAGE as u64) * 8)?;
                    pm[got..pages * 8].fill(0);
                }
                for i in 0..pages {
                    if (i + 1) * PAGE > readable {
                        return Ok(()); // past the end of the file: nothing more to read
                    }
                    if own_zero {
                        let e =
                            u64::from_ne_bytes(pm[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
                        if e & PM_PRESENT != 0 && e & PM_FILE == 0 {
                            ext.push_page(addr + (i * PAGE) as u64)?;
                            continue;
                        }
                    }
                    if shmem && resident[i] & 1 == 0 {
                        continue;
                    }
                    if probe[i * PAGE..(i + 1) * PAGE].iter().any(|&b| b != 0) {
                        ext.push_page(addr + (i * PAGE) as u64)?;
                    }
                }
                addr += len as u64;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `--compress`: samples [`PIECE_SAMPLE`](crate::image::compress::PIECE_SAMPLE) bytes from
/// the middle of every piece of the page data of `extents`
/// ([`for_each_piece`](crate::image::compress::for_each_piece)) without faulting, and sets bit
/// `i` of `bits` (zeroed first; one bit per piece) when piece `i` looks incompressible
/// (`looks_incompressible`; an unreadable sample counts as compressible). Returns (pieces that
/// look incompressible, their bytes). No allocation.
pub fn sample_pieces(extents: &[Extent], bits: &mut [u8]) -> (u64, u64) {
    use crate::image::compress::{for_each_piece, looks_incompressible, PIECE_SAMPLE};
    bits.fill(0);
    let mut buf = [0u8; PIECE_SAMPLE];
    let (mut bad, mut bad_len, mut i) = (0u64, 0u64, 0usize);
    for_each_piece(extents, |addr, _, len| {
        let n = (len as usize).min(PIECE_SAMPLE);
        let at = addr + (len - n as u64) / 2;
        if read_self(at as usize, &mut buf[..n]) == n && looks_incompressible(&buf[..n]) {
            if let Some(b) = bits.get_mut(i / 8) {
                *b |= 1 << (i % 8);
                bad += 1;
                bad_len += len;
            }
        }
        i += 1;
    });
    (bad, bad_len)
}

/// Copies this process's memory at `addr` into `buf` without faulting the caller; returns how
/// many bytes were readable from the start.
fn read_self(addr: usize, buf: &mut [u8]) -> usize {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut _,
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: buf.len(),
    };
    sys::sys6(
        libc::SYS_process_vm_readv as usize,
        sys::getpid() as usize,
        &local as *const _ as usize,
        1,
        &remote as *const _ as usize,
        1,
        0,
    )
    .unwrap_or(0)
}

/// Regions backed by huge pages (`VmFlags` `ht` in `/proc/self/smaps`): start and page size.
pub struct HugeRegions {
    list: [(u64, u64); 64],
    n: usize,
}

impl HugeRegions {
    /// The page size of the hugetlb region starting at `start`, if it is one.
    fn page_size(&self, start: u64) -> Option<u64> {
        self.list[..self.n]
            .iter()
            .find(|r| r.0 == start)
            .map(|r| r.1)
    }

    /// Reads `/proc/self/smaps` in pieces through `buf`. Only called when some region could be
    /// hugetlb memory (device major 0 with a path: `/anon_hugepage`, memfds, files): maps does
    /// not tell, and smaps walks every page table, so it is not read otherwise.
    fn scan(buf: &mut [u8]) -> HugeRegions {
        let mut out = HugeRegions {
            list: [(0, 0); 64],
            n: 0,
        };
        let Ok(fd) = sys::open(b"/proc/self/smaps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
            return out;
        };
        let fd = fd as i32;
        let (mut have, mut cur, mut kps) = (0usize, 0u64, 0u64);
        while let Ok(n @ 1..) = sys::read(fd, &mut buf[have..]) {
            have += n;
            let mut used = 0;
            while let Some(nl) = buf[used..have].iter().position(|&b| b == b'\n') {
                let line = &buf[used..used + nl];
                used += nl + 1;
                match line.first() {
                    Some(b'0'..=b'9' | b'a'..=b'f') => {
                        let dash = line.iter().position(|&b| b == b'-').unwrap_or(0);
                        cur = hex(&line[..dash]);
                        kps = 0;
                    }
                    _ if line.starts_with(b"KernelPageSize:") => {
                        let digits = line[15..].iter().filter(|b| b.is_ascii_digit());
                        kps = digits.fold(0u64, |v, &d| v * 10 + (d - b'0') as u64) * 1024;
                    }
                    _ if line.starts_with(b"VmFlags:")
                        && line.windows(3).any(|w| w == b" ht")
                        && out.n < out.list.len() =>
                    {
                        out.list[out.n] = (cur, kps.max(PAGE as u64));
                        out.n += 1;
                    }
                    _ => {}
                }
            }
            buf.copy_within(used..have, 0);
            have -= used;
            if have == buf.len() {
                have = 0; // a line longer than the buffer: drop it
            }
        }
        sys::close(fd);
        out
    }
}

/// Whether the maps line could be hugetlb memory (see [`HugeRegions::scan`]).
fn maybe_huge(m: &MapLine) -> bool {
    m.major == 0 && m.path.first() == Some(&b'/')
}

/// Whether the region at `start` is the agent's own memory, never part of an image: the
/// scratch area of this checkpoint, the delta buffer kept between checkpoints
/// (`agent::deltabuf`), or the block of a write helper or of a writer left behind, or the AIO
/// ring of a given-up helper (`agent::offload`), or this checkpoint's bounce ring
/// (`agent::bounce`: only a region that lies wholly in it, so that program memory the kernel
/// merged with it is never left out).
fn agent_own(scratch: &Scratch, start: u64, end: u64) -> bool {
    scratch.contains(start)
        || super::deltabuf::contains(start)
        || super::offload::contains(start)
        || super::bounce::contains(start) && super::bounce::contains(end - 1)
}

/// Scans `/proc/self/maps` and appends a region record (and an extents record) per region.
pub fn capture(
    w: &mut MetaWriter,
    scratch: &Scratch,
    ext: &mut ExtentList,
    unreadable: &mut Unreadable,
    save: SaveByContent,
    pre: Option<&Precopy>,
) -> Result<(), Errno> {
    let exe = sys::stat(b"/proc/self/exe\0", 0)
        .ok()
        .map(|s| (s.st_dev, s.st_ino));
    let mut tmp_left = save.tmp_left;
    plain::clear();
    let maps = scratch.maps();
    let n = sys::read_file(b"/proc/self/maps\0", maps)?;
    let pagemap_fd =
        sys::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)? as i32;
    let res = (|| {
        let maps = &scratch.maps()[..n];
        let huge = if maps
            .split(|&b| b == b'\n')
            .filter_map(parse_line)
            // Not our own scratch area (shared anonymous memory, "/dev/zero (deleted)"): it
            // made every checkpoint read smaps, which walks every page table (0.3 s for 4 GiB).
            .any(|m| {
                maybe_huge(&m)
                    && !agent_own(scratch, m.start, m.end)
                    && !pre.is_some_and(|p| (p.base..p.base + p.len).contains(&m.start))
            }) {
            HugeRegions::scan(scratch.probe())
        } else {
            HugeRegions {
                list: [(0, 0); 64],
                n: 0,
            }
        };
        for line in maps.split(|&b| b == b'\n') {
            let Some(m) = parse_line(line) else { continue };
            if agent_own(scratch, m.start, m.end)
                || pre.is_some_and(|p| (p.base..p.base + p.len).contains(&m.start))
            {
                continue;
            }
            // A removed name of a tmpfs file that has another: saved as that file.
            let mut live = StackBuf::<4096>::new();
            let m = match live_name(&m, &mut live) {
                Some(path) => MapLine { path, ..m },
                None => m,
            };
            let mut st = None;
            let mut fs = None;
            let Some(mut kind) = classify(&m, maps, save, exe, &mut st, &mut fs) else {
                continue;
            };
            if fs.is_some_and(|f| f.fs == FS_TMPFS) {
                super::fds::save_parent_dirs(w, m.path, save.files)?;
            }
            if fs.is_some_and(|f| f.fs == FS_TEMPDIR) {
                let len = (m.end - m.start) as i64;
                if tmp_left.unwrap_or(0) < len {
                    // Over --save-tmp-limit: by reference, as before; said at checkpoint time.
                    kind = if m.shared {
                        RegionKind::FileShared
                    } else {
                        RegionKind::FilePrivate
                    };
                    fs = None;
                    let mut msg = StackBuf::<512>::new();
                    msg.push(b"mapped temporary file ")
                        .push(m.path)
                        .push(b" is over the limit of temporary files an image saves (--save-tmp-limit): not saved, it must still exist at restart");
                    w.raw(REC_WARNING, msg.as_bytes())
                        .map_err(|_| Errno(libc::ENOMEM))?;
                } else {
                    tmp_left = tmp_left.map(|l| l - len);
                    super::fds::save_parent_dirs(w, m.path, save.files)?;
                }
            }
            if let Some(page_size) = huge.page_size(m.start).filter(|_| maybe_huge(&m)) {
                // Re-created with huge pages of this size (see `FS_HUGETLB`).
                fs = Some(fs_rec(FS_HUGETLB, st.as_ref(), page_size));
            }
            if matches!(kind, RegionKind::Anon | RegionKind::Stack)
                && !m.shared
                && m.inode == 0
                && fs.is_none()
            {
                plain::add(m.start, m.end);
            }
            ext.begin_region();
            // Bytes of the region in transparent huge pages (`REC_REGION_THP`).
            let mut huge_bytes = 0u64;
            let from_copy = pre.filter(|_| Precopy::covers(kind));
            // An incremental checkpoint's tracked region: only the pages written since.
            let tracked = if from_copy.is_some() {
                None
            } else {
                super::incremental::scan_region(
                    m.start,
                    m.end,
                    m.prot,
                    m.shared,
                    kind,
                    image_backed(&m).then_some(super::incremental::ImageMapping {
                        dev: libc::makedev(m.major, m.minor),
                        ino: m.inode,
                        offset: m.offset,
                    }),
                    pagemap_fd,
                    |a, l| ext.push_range(a, l),
                )?
            };
            if let Some(p) = from_copy {
                for e in p.in_range(m.start, m.end) {
                    ext.push_extent(e.addr, e.len)?;
                }
            } else if tracked.is_none() {
                ext.rollback_region();
                scan_region(&m, kind, fs, pagemap_fd, scratch, ext, &mut huge_bytes)?;
            }
            let extents = ext.region_extents();
            if !extents.is_empty() && m.prot & libc::PROT_READ as u32 == 0 {
                unreadable.add(m.start, m.end, m.prot)?;
            }
            let (size, msec, mnsec) = st.map_or((0, 0, 0), |s| {
                (s.st_size as u64, s.st_mtime, s.st_mtime_nsec)
            });
            // Memory a lazy restart mapped from its image is recorded as the anonymous memory
            // it was (no file, no identity), saved by content.
            let backed = image_backed(&m);
            let path: &[u8] = if backed { b"" } else { m.path };
            let rec = RegionRec {
                start: m.start,
                end: m.end,
                offset: if backed { 0 } else { m.offset },
                dev: if backed {
                    0
                } else {
                    libc::makedev(m.major, m.minor)
                },
                ino: if backed { 0 } else { m.inode },
                file_size: size,
                mtime_sec: msec,
                mtime_nsec: mnsec,
                prot: m.prot,
                kind: kind as u32,
                n_extents: extents.len() as u32,
                path_len: path.len() as u32,
            };
            w.record(REC_REGION, &rec, path)
                .map_err(|_| Errno(libc::ENOMEM))?;
            if !extents.is_empty() {
                w.raw(REC_EXTENTS, bytemuck::cast_slice(extents))
                    .map_err(|_| Errno(libc::ENOMEM))?;
            }
            if let Some(p) = from_copy {
                // The image records the program's addresses; the pages are written from the copy.
                let first = ext.region_first;
                for (e, src) in ext.buf[first..ext.n]
                    .iter_mut()
                    .zip(p.in_range(m.start, m.end))
                {
                    e.addr = p.base + src.file_off;
                }
            }
            if let Some(fs) = fs {
                w.raw(REC_REGION_FS, bytemuck::bytes_of(&fs))
                    .map_err(|_| Errno(libc::ENOMEM))?;
            }
            if huge_bytes > 0 {
                // The restart advises the region MADV_HUGEPAGE again (the program asked for
                // huge pages, or the system gives them to all: either way it had them).
                let thp = RegionThpRec { huge_bytes };
                w.raw(REC_REGION_THP, bytemuck::bytes_of(&thp))
                    .map_err(|_| Errno(libc::ENOMEM))?;
            }
            let sysv = if m.path.starts_with(b"/SYSV") {
                sysv_segment(m.inode)
                    .filter(|s| m.offset == 0 && m.end - m.start == page_up(s.size))
            } else {
                None
            };
            if let Some(t) = &tracked {
                w.raw(REC_REGION_INCR, bytemuck::cast_slice(t.holes))
                    .map_err(|_| Errno(libc::ENOMEM))?;
            }
            if let Some(seg) = sysv {
                w.raw(REC_REGION_SYSV, bytemuck::bytes_of(&seg))
                    .map_err(|_| Errno(libc::ENOMEM))?;
            } else if m.path.starts_with(b"/SYSV") {
                // Only part of it mapped here (or not found): plain shared memory; say so now.
                let mut msg = StackBuf::<512>::new();
                msg.push(b"SysV shared memory segment ")
                    .push(m.path)
                    .push(b" is only partly mapped here: it is saved by content and after restart it is shared memory of the restored processes, not a SysV segment (shmget/shmctl will not find it)");
                w.raw(REC_WARNING, msg.as_bytes())
                    .map_err(|_| Errno(libc::ENOMEM))?;
            }
        }
        let guard = GUARD_PAGES.load(core::sync::atomic::Ordering::Relaxed);
        if guard > 0 {
            let mut msg = StackBuf::<512>::new();
            msg.num(guard)
                .push(b" guard pages (madvise MADV_GUARD_INSTALL) are not saved as guards: after restart they are ordinary zero pages");
            w.raw(REC_WARNING, msg.as_bytes())
                .map_err(|_| Errno(libc::ENOMEM))?;
        }
        Ok(())
    })();
    sys::close(pagemap_fd);
    res
}

/// Writes every extent, in order, from memory to `fd`, hashing as it goes; returns the hash.
/// `deadline_ns` (CLOCK_MONOTONIC, `u64::MAX`: none) is `--time`: past it the write stops with
/// `ETIMEDOUT` (checked every [`WRITE_CHUNK`] bytes). With `bounce` (page aligned, a page
/// multiple) the data is copied into it and written from there (see [`BOUNCE_LEN`]): through
/// the AIO ring when it is a copy-on-write writer's ring (`bounce::RING_LEN` bytes or more,
/// `bounce::for_writer`), else synchronously, [`BOUNCE_LEN`] bytes at a time.
pub fn write_data(
    fd: i32,
    extents: &[Extent],
    deadline_ns: u64,
    bounce: Option<&mut [u8]>,
) -> Result<u64, Errno> {
    write_data_from(
        fd,
        extents,
        deadline_ns,
        bounce,
        xxhash_rust::xxh3::Xxh3::new(),
    )
    .map(|h| h.digest())
}

/// [`write_data`] continuing the hash `h` of the page data before `extents` (a delta written
/// in two parts, see `agent::deltabuf`); returns the hash state after them.
pub fn write_data_from(
    fd: i32,
    extents: &[Extent],
    deadline_ns: u64,
    bounce: Option<&mut [u8]>,
    mut h: xxhash_rust::xxh3::Xxh3,
) -> Result<xxhash_rust::xxh3::Xxh3, Errno> {
    use super::image::io_report;
    use core::sync::atomic::Ordering::Relaxed;
    if bounce.is_none() {
        // Through the bounce ring of this checkpoint when it has one (`agent::bounce`), else
        // straight from the program's memory.
        let ring_at = super::bounce::get();
        let depth = ring_at.map_or(super::aio::DEPTH, |_| super::bounce::SLOTS);
        if let Some(ring) = super::aio::ring_for(fd, extents, deadline_ns, depth) {
            return match ring_at {
                Some(at) => write_data_bounced(ring, at, extents, deadline_ns, h),
                None => write_data_async(ring, extents, deadline_ns, h),
            };
        }
    } else if let Some(b) = bounce
        .as_ref()
        .filter(|b| b.len() >= super::bounce::RING_LEN)
    {
        // A copy-on-write writer's ring of its own (`bounce::for_writer`): copied into it and
        // written through the AIO ring as a stopped checkpoint does, the copy of one piece
        // while the disk writes the pieces before it.
        let at = b.as_ptr() as usize;
        if let Some(ring) = super::aio::ring_for(fd, extents, deadline_ns, super::bounce::SLOTS) {
            return write_data_bounced(ring, at, extents, deadline_ns, h);
        }
        // (No AIO ring: `ring_for` said why; the ring's first piece is the one-piece buffer.)
        if io_report::MODE.load(Relaxed) == io_report::DIRECT
            && io_report::AIO_ERRNO.load(Relaxed) == 0
        {
            io_report::AIO_ERRNO.store(io_report::AIO_BOUNCE, Relaxed);
        }
    } else if io_report::MODE.load(Relaxed) == io_report::DIRECT {
        io_report::AIO_ERRNO.store(io_report::AIO_BOUNCE, Relaxed);
    }
    let (bounce_ptr, bounce_len) = match bounce {
        Some(b) => (b.as_mut_ptr(), b.len().min(BOUNCE_LEN) as u64),
        None => (core::ptr::null_mut(), 0),
    };
    let mut filled = 0u64;
    let mut since_check = WRITE_CHUNK;
    // Nothing of the program's memory (the agent's statics included) may change between a
    // piece's hash and its write: the I/O report is counted here and stored at the end.
    let mut c = super::image::Counted::start();
    for e in extents {
        let mut done = 0;
        while done < e.len {
            if since_check >= WRITE_CHUNK {
                since_check = 0;
                // Past --time, or the requester gone (killed mid-checkpoint): nobody will commit
                // this image, so stop writing and let the program go (a piece takes a few milliseconds; a
                // stream that takes no more is watched in `write_mem`).
                super::image::write_must_stop(deadline_ns)?;
            }
            let mut n = (e.len - done).min(WRITE_CHUNK);
            if bounce_len > 0 {
                n = n.min(bounce_len - filled);
            }
            let at = (e.addr + done) as usize;
            // SAFETY: the extent lies in a mapped, readable region (made readable if needed), and
            // the program's threads are parked (or this is a copy-on-write writer's snapshot).
            let mem = unsafe { core::slice::from_raw_parts(at as *const u8, n as usize) };
            h.update(mem);
            if bounce_len > 0 {
                // SAFETY: `filled + n <= bounce_len`; the bounce buffer is ours alone.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        mem.as_ptr(),
                        bounce_ptr.add(filled as usize),
                        n as usize,
                    )
                };
                filled += n;
                if filled == bounce_len {
                    super::image::write_counted(fd, bounce_ptr as usize, filled as usize, &mut c)?;
                    filled = 0;
                }
            } else {
                // The kernel reads the program's memory directly: no copy through a buffer.
                super::image::write_counted(fd, at, n as usize, &mut c)?;
            }
            done += n;
            since_check += n;
        }
    }
    if filled > 0 {
        super::image::write_counted(fd, bounce_ptr as usize, filled as usize, &mut c)?;
    }
    c.store();
    Ok(h)
}

/// The private anonymous regions (no file, not hugetlb) of the image being built: reading any
/// page of them never raises a signal (a swapped page is read in, a page never touched reads
/// as zero), so a delta's page data in them is copied with `memcpy` (four times as fast as
/// `process_vm_readv` here: 13 against 50 ms for 64 MiB). Control thread only, in the stop.
mod plain {
    use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

    const MAX: usize = 4096;
    static RANGES: [[AtomicU64; 2]; MAX] = [const { [AtomicU64::new(0), AtomicU64::new(0)] }; MAX];
    static N: AtomicUsize = AtomicUsize::new(0);

    pub fn clear() {
        N.store(0, Relaxed);
    }

    /// Adds `[start, end)` (regions come in address order; past the table they are read the
    /// safe way).
    pub fn add(start: u64, end: u64) {
        let n = N.load(Relaxed);
        if n < MAX {
            RANGES[n][0].store(start, Relaxed);
            RANGES[n][1].store(end, Relaxed);
            N.store(n + 1, Relaxed);
        }
    }

    /// Whether `[addr, addr + len)` lies in one of the ranges (`hint`: where to start looking,
    /// advanced as extents come in address order).
    pub fn covers(addr: u64, len: u64, hint: &mut usize) -> bool {
        let n = N.load(Relaxed).min(MAX);
        while *hint < n && RANGES[*hint][1].load(Relaxed) <= addr {
            *hint += 1;
        }
        *hint < n
            && RANGES[*hint][0].load(Relaxed) <= addr
            && addr + len <= RANGES[*hint][1].load(Relaxed)
    }
}

/// Copies the page data of `extents` (in file order, which is address order) into `buf` back
/// to back, for a delta buffered in the stop (`agent::deltabuf`): pages of private anonymous
/// memory with `memcpy` ([`plain`]), the others with `process_vm_readv` (many extents a call),
/// where a page that cannot be read (a file mapping past the end of its file) fails with
/// `EFAULT` instead of a signal.
pub fn copy_extents(extents: &[Extent], buf: &mut [u8]) -> Result<(), Errno> {
    const BATCH: usize = 512;
    let mut remote = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // Unsafe extents gathered for one `process_vm_readv` into `buf[from..at]`.
    let mut batch = 0usize;
    let mut from = 0usize;
    let mut at = 0usize;
    let mut hint = 0usize;
    let flush = |remote: &[libc::iovec], buf: &mut [u8], from: usize, at: usize| {
        if remote.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf[from..at].as_mut_ptr() as *mut _,
            iov_len: at - from,
        };
        let n = sys::sys6(
            libc::SYS_process_vm_readv as usize,
            sys::getpid() as usize,
            &local as *const _ as usize,
            1,
            remote.as_ptr() as usize,
            remote.len(),
            0,
        )?;
        if n != at - from {
            return Err(Errno(libc::EFAULT));
        }
        Ok(())
    };
    for e in extents {
        let len = e.len as usize;
        if at + len > buf.len() {
            return Err(Errno(libc::ENOSPC));
        }
        if plain::covers(e.addr, e.len, &mut hint) {
            flush(&remote[..batch], buf, from, at)?;
            batch = 0;
            // SAFETY: private anonymous memory of the stopped program, readable (made so for
            // the write where it was not), and `len` bytes of our buffer at `at`.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    e.addr as usize as *const u8,
                    buf[at..].as_mut_ptr(),
                    len,
                )
            };
            at += len;
            from = at;
            continue;
        }
        if batch == BATCH {
            flush(&remote[..batch], buf, from, at)?;
            batch = 0;
            from = at;
        }
        remote[batch] = libc::iovec {
            iov_base: e.addr as usize as *mut _,
            iov_len: len,
        };
        batch += 1;
        at += len;
    }
    flush(&remote[..batch], buf, from, at)
}

/// [`write_data`] through an AIO ring: each piece (up to [`WRITE_CHUNK`] bytes of extents
/// contiguous in the file) is hashed once it is submitted, while the disk writes it.
fn write_data_async(
    mut ring: super::aio::Ring,
    extents: &[Extent],
    deadline_ns: u64,
    mut h: xxhash_rust::xxh3::Xxh3,
) -> Result<xxhash_rust::xxh3::Xxh3, Errno> {
    let mut since_check = WRITE_CHUNK;
    let mut hash_piece = |iov: &[libc::iovec]| {
        for v in iov {
            // SAFETY: as in write_data: readable program memory, the program parked.
            h.update(unsafe { core::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
        }
    };
    for e in extents {
        let mut done = 0;
        while done < e.len {
            if since_check >= WRITE_CHUNK {
                since_check = 0;
                super::image::write_must_stop(deadline_ns)?;
            }
            let n = (e.len - done).min(WRITE_CHUNK);
            if !ring.fits(n, WRITE_CHUNK) {
                hash_piece(ring.submit()?);
            }
            ring.add((e.addr + done) as usize, n);
            done += n;
            since_check += n;
        }
    }
    hash_piece(ring.submit()?);
    ring.finish()?;
    Ok(h)
}

/// [`write_data`] through an AIO ring whose pieces are copied into the bounce ring at `at`
/// first (`agent::bounce`: buffers in huge pages, so that each piece goes to the disk as a few
/// physically contiguous runs whatever the program's pages are): [`bounce::COPY`] bytes at a
/// time, each hashed from the cache right after its copy; a full buffer is submitted while
/// the ring's other pieces are on the disk.
///
/// [`bounce::COPY`]: super::bounce::COPY
fn write_data_bounced(
    mut ring: super::aio::Ring,
    at: usize,
    extents: &[Extent],
    deadline_ns: u64,
    mut h: xxhash_rust::xxh3::Xxh3,
) -> Result<xxhash_rust::xxh3::Xxh3, Errno> {
    use super::bounce::{slot, COPY, PIECE};
    let piece = PIECE as u64;
    let mut fill = 0u64;
    let mut since_check = WRITE_CHUNK;
    for e in extents {
        let mut done = 0;
        while done < e.len {
            if since_check >= WRITE_CHUNK {
                since_check = 0;
                super::image::write_must_stop(deadline_ns)?;
            }
            let n = (e.len - done).min(COPY as u64).min(piece - fill);
            let dst = slot(at, ring.slot()) + fill as usize;
            // SAFETY: the extent lies in readable program memory, the program parked (as in
            // write_data); `dst` has `n` bytes of the free slot's buffer (`fill + n <= PIECE`),
            // ours alone until it is submitted.
            let copy = unsafe {
                core::ptr::copy_nonoverlapping(
                    (e.addr + done) as usize as *const u8,
                    dst as *mut u8,
                    n as usize,
                );
                core::slice::from_raw_parts(dst as *const u8, n as usize)
            };
            h.update(copy);
            fill += n;
            done += n;
            since_check += n;
            if fill == piece {
                ring.add(slot(at, ring.slot()), fill);
                ring.submit()?;
                fill = 0;
            }
        }
    }
    if fill > 0 {
        ring.add(slot(at, ring.slot()), fill);
        ring.submit()?;
    }
    ring.finish()?;
    super::image::io_report::BOUNCED.store(1, core::sync::atomic::Ordering::Relaxed);
    Ok(h)
}

/// The pieces of the page data of extents (as `image::compress::for_each_piece` cuts them),
/// one after the other: `(index, address, length)`.
struct Pieces<'a> {
    extents: &'a [Extent],
    e: usize,
    o: u64,
    i: usize,
}

impl<'a> Pieces<'a> {
    fn new(extents: &'a [Extent]) -> Self {
        Pieces {
            extents,
            e: 0,
            o: 0,
            i: 0,
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = (usize, usize, u64);
    fn next(&mut self) -> Option<(usize, usize, u64)> {
        while self.extents.get(self.e).is_some_and(|x| self.o >= x.len) {
            self.e += 1;
            self.o = 0;
        }
        let x = self.extents.get(self.e)?;
        let n = (x.len - self.o).min(crate::image::compress::FRAME as u64);
        let item = (self.i, (x.addr + self.o) as usize, n);
        self.o += n;
        self.i += 1;
        Some(item)
    }
}

/// `--compress`, a split image (see `image::finish`, docs/IMAGE-FORMAT.md "Compressed images"):
/// the pieces of the page data of `extents` whose bit in `bits` is set (they look
/// incompressible) are written to `raw_fd` back to back from its offset `raw_at` on (through an
/// AIO ring when the file is direct, as a plain image's page data); the others go to the
/// compressor ([`Feed`]): into the pipe `pipe`, each after its index (a `u64`, `REC_ZPLAN`),
/// or, with an acknowledgement pipe `ack` (`protocol::FLAG_ZPULL`), only their index (with
/// `ZPLAN_PULL`), cr_checkpoint reading the bytes from our memory itself — **unless the
/// compressor is behind**: pieces go to it without blocking, as far as it takes them (the pipe
/// is full, or two handed-over pieces are not pulled yet, while cr_checkpoint's compression
/// threads and their short queue are busy), and a piece whose turn comes while the compressor
/// is behind is written raw with the others instead, so that the checkpoint never waits for
/// the compressor while the disk could take the piece, unless (`pace`, `protocol::FLAG_ZPACE`)
/// the agent is ahead of a plain checkpoint's pace: with the disk's rate known from an earlier
/// plain write ([`DISK_NS_PER_MIB`]), a piece whose turn comes before a plain checkpoint would
/// have reached it waits for the compressor until then (so the image is as compressed as a
/// plain checkpoint's time allows, not only as the compressor keeps up at each moment). The
/// page data in the pipe ends with [`ZPLAN_END`](crate::image::format::ZPLAN_END), written
/// once the ring is done (every piece of the agent's is in the file then); pulled pieces are
/// then waited for (every one acknowledged) before this returns: the program stays stopped
/// until cr_checkpoint has them all. Returns the hash of all the page data in file order (the
/// image's `data_hash`), that of what went to the compressor, and the pieces (and bytes)
/// written raw because the compressor was behind, the pace and the wait for the compressor,
/// and how the pieces went (`io_report::PULL`) ([`Split`]). Not `adapt`
/// (`protocol::FLAG_ZWAIT`): every piece that looks compressible goes to the compressor, which
/// is waited for. With `pack_level` > 0 (`protocol::FLAG_ZPACK`) the pieces for the compressor
/// are compressed here first, by the helpers of [`super::zpack`], and only their frames go into
/// the pipe ("the compressor is behind": every helper holds a piece); where the helpers cannot
/// be made, pulled or piped as above (`io_report::PACK_ERRNO`, said under `-v`).
///
/// The disk and the compressor work at once: whenever the ring is full (the next submission
/// would wait for the disk), the next piece for the compressor is handed over ahead of its
/// turn while the compressor takes it (hashed for the compressor then, and for `data_hash`
/// again when its turn comes: a second read at hash speed, only of the pieces handed ahead).
#[allow(clippy::too_many_arguments)]
pub fn write_split(
    pipe: i32,
    raw_fd: i32,
    extents: &[Extent],
    bits: &[u8],
    raw_at: u64,
    adapt: bool,
    pace: bool,
    ack: i32,
    pack_level: i32,
    deadline_ns: u64,
) -> Result<Split, Errno> {
    use crate::image::format::ZPLAN_END;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let agent = |i: usize| bits.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1);
    sys::lseek(raw_fd, raw_at as i64, libc::SEEK_SET)?;
    // Any piece may go raw: room for all of them (the file is extended to that; cr_checkpoint
    // stores the compressed pieces at its end and closes the gap afterwards).
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let mut ring = super::aio::ring_for_len(raw_fd, total, deadline_ns, super::aio::DEPTH);
    // Pieces go to the compressor without blocking, as far as it takes them: the rest goes on
    // between the ring's pieces, and a piece whose turn comes while it is behind goes raw. So
    // the compressor's backlog is at most what cr_checkpoint holds (its threads' pieces and a
    // short queue) and the pipe (1 MiB) and one piece, or two pieces not pulled yet. (Waiting
    // for the pipe to take a whole piece stalled the disk for a compression.)
    // Nothing of the program's memory may change between a piece's hash and its write or pull
    // (see `write_data_from`): the figures are counted here and stored at the end.
    let mut feed = Feed::new(pipe, ack, adapt, deadline_ns, pack_level)?;
    // The pieces for the compressor started so far (ahead of their turn, or in it) and those
    // gone raw because the compressor was behind: those before index `piped`.
    let mut ahead = Pieces::new(extents);
    let mut piped = 0usize;
    let mut since_check = WRITE_CHUNK;
    let mut at = raw_at;
    let mut dropped_at = None;
    let mut behind = (0u64, 0u64);
    // Paced (`adapt` and `pace`, `protocol::FLAG_ZPACE`, and a disk rate known from an
    // earlier direct write, [`DISK_NS_PER_MIB`]):
    // a plain checkpoint would have written the page data before byte `done` by
    // `t0 + done * ns_per_mib / MiB`; a piece whose turn comes earlier than that while the
    // compressor is behind waits for it (at most until then) instead of going raw, so the
    // image is as compressed as the time of a plain checkpoint allows (not merely as the
    // compressor keeps up at each moment). Unpaced: raw at once.
    let ns_per_mib = if adapt && pace {
        DISK_NS_PER_MIB.load(core::sync::atomic::Ordering::Relaxed)
    } else {
        0
    };
    let t0 = sys::monotonic_ns();
    let mut done = 0u64;
    let mut waited_ns = 0u64;
    for (i, addr, n) in Pieces::new(extents) {
        if since_check >= WRITE_CHUNK {
            since_check = 0;
            super::image::write_must_stop(deadline_ns)?;
        }
        since_check += n;
        // SAFETY: as in write_data: readable program memory, the program parked.
        let mem = unsafe { core::slice::from_raw_parts(addr as *const u8, n as usize) };
        // Hashed in file order before being written (the ring's pieces too: a piece of the
        // ring is not submitted at each piece for the pipe, 1 MiB writes each waited for).
        h.update(mem);
        // (A 1/32 margin for what follows the page data: the last pieces in the compressor.)
        let due = t0 + ((done as u128 * ns_per_mib as u128 * 31 / 32) >> 20) as u64;
        done += n;
        if !agent(i) {
            if i < piped {
                // Started ahead of its turn.
                continue;
            }
            piped = i + 1;
            let busy = feed.busy()?;
            let from = if busy && ns_per_mib > 0 {
                sys::monotonic_ns()
            } else {
                u64::MAX
            };
            let mut busy = busy;
            if from < due {
                // Ahead of a plain checkpoint: the disk gets what is ready for it (only then: a
                // piece submitted before it is full is a shorter write), then the compressor is
                // waited for while there is time.
                if let Some(r) = ring.as_mut() {
                    if !r.would_wait()? {
                        r.submit()?;
                    }
                }
                let mut now = from;
                while busy && now < due {
                    feed.wait(due - now);
                    busy = feed.busy()?;
                    now = sys::monotonic_ns();
                }
                waited_ns += now - from;
            }
            if !busy {
                feed.start(i, addr, n, deadline_ns)?;
                continue;
            }
            // The compressor is behind: raw, with the agent's own pieces.
            behind.0 += 1;
            behind.1 += n;
        }
        let Some(r) = ring.as_mut() else {
            // No ring: written where it goes with pwrite.
            if super::aio::pwrite_mem(raw_fd, addr, n, at)? {
                dropped_at.get_or_insert(at);
            }
            at += n;
            continue;
        };
        if !r.fits(n, WRITE_CHUNK) {
            // The piece being filled goes to the disk now; while the disk is busy with every
            // other one, pieces for the compressor go ahead (while it takes them).
            while r.would_wait()? {
                if feed.busy()? {
                    // The compressor is full: wait for it, or (1 ms at most) for the disk.
                    feed.wait(1_000_000);
                    continue;
                }
                let next = ahead.by_ref().find(|&(k, _, _)| k >= piped && !agent(k));
                let Some((k, a, m)) = next else { break };
                feed.start(k, a, m, deadline_ns)?;
                piped = k + 1;
            }
            r.submit()?;
        }
        r.add(addr, n);
        at += n;
    }
    if let Some(r) = ring.as_mut() {
        r.finish()?;
    }
    // The rest of the piece in the pipe, waiting for the pipe now; every piece of ours is in
    // the file: the end of the page data in the stream; and every pulled piece read.
    feed.flush()?;
    // (Every helper gone before anything else: `zpack::Pack`'s drop.)
    feed.pack = None;
    let end = ZPLAN_END.to_le_bytes();
    super::image::write_counted(pipe, end.as_ptr() as usize, 8, &mut feed.c)?;
    feed.all_pulled(deadline_ns)?;
    // (The ring's figures are in the report already: the pipe's plus what the ring wrote;
    // the indices are not image bytes.)
    let (pull, piped_hash) = (feed.pull, feed.hp.digest());
    let mut c = feed.c;
    c.written = c.written + (at - raw_at) - (feed.tags + 1) * 8;
    c.store();
    if let Some(at) = dropped_at {
        use super::image::io_report;
        use core::sync::atomic::Ordering::Relaxed;
        io_report::MODE.store(io_report::DROPPED, Relaxed);
        io_report::AT.store(at, Relaxed);
    }
    let pace = if adapt && pace {
        ns_per_mib
    } else {
        super::image::io_report::NOT_PACED
    };
    Ok((h, piped_hash, behind, (pace, waited_ns), pull))
}

/// The disk's rate as the last plain direct write of page data measured it (nanoseconds per
/// MiB; 0: none yet), for pacing a split image ([`write_split`]). Updated after an image is
/// written (`image::finish`), never while page data is in flight.
pub static DISK_NS_PER_MIB: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// What [`write_split`] did: the hash of the page data in file order, that of what went to the
/// compressor, the pieces (and bytes) written raw because the compressor was behind, the pace
/// (ns per MiB; 0: no rate known; `io_report::NOT_PACED`: not asked to) and how long the agent
/// waited for the compressor (ns), and how its pieces went (`io_report::PULL`).
pub type Split = (xxhash_rust::xxh3::Xxh3, u64, (u64, u64), (u64, u64), u32);

/// A piece going into the pipe of a split image ([`write_split`]): its index, then its bytes.
struct Pending {
    tag: [u8; 8],
    /// Bytes of `tag` written.
    tag_done: usize,
    /// The rest of the piece.
    addr: usize,
    left: u64,
}

/// Pieces handed over to be pulled ([`Feed`]) that may wait for cr_checkpoint at once: one
/// it is reading, one next (more is a backlog: the compressor is behind).
const PULL_AHEAD: u64 = 2;

/// Longest a split image's agent waits for cr_checkpoint to pull a piece it handed over
/// (`protocol::FLAG_ZPULL`) without any being pulled: a stuck requester fails the checkpoint
/// and the program runs on. (A dead one is seen at once: the acknowledgement pipe hangs up;
/// `--compress=19` takes well under a second a piece.)
const PULL_STALL_NS: u64 = 30_000_000_000;

/// The compressor's side of a split image ([`write_split`]): pieces into the pipe, each after
/// its index, as far as the pipe takes them; or (`ack` ≥ 0, `protocol::FLAG_ZPULL`) only their
/// index with `ZPLAN_PULL`, cr_checkpoint reading the bytes from our memory and answering each
/// with a byte on `ack`. Lives on the writer's stack (not in the image: nothing of the
/// program's memory changes while pieces are being pulled).
struct Feed {
    pipe: i32,
    /// The acknowledgement pipe (-1: the bytes go through `pipe`).
    ack: i32,
    adapt: bool,
    /// `--time` (CLOCK_MONOTONIC; `u64::MAX`: none).
    deadline_ns: u64,
    /// A piece partly in the pipe.
    pending: Option<Pending>,
    /// Pieces handed over to be pulled, and those acknowledged.
    handed: u64,
    acked: u64,
    /// `io_report::PULL`.
    pull: u32,
    c: super::image::Counted,
    /// Pieces given to the compressor (their indices are in the stream, not image bytes).
    tags: u64,
    /// The hash of the page data given to the compressor, in file order (of a packed piece:
    /// its frame).
    hp: xxhash_rust::xxh3::Xxh3,
    /// `protocol::FLAG_ZPACK`: the helpers that compress the pieces here (`agent::zpack`);
    /// `None`: pulled or piped.
    pack: Option<super::zpack::Pack>,
}

impl Feed {
    fn new(
        pipe: i32,
        ack: i32,
        adapt: bool,
        deadline_ns: u64,
        pack_level: i32,
    ) -> Result<Feed, Errno> {
        use super::image::io_report;
        use core::sync::atomic::Ordering::Relaxed;
        // Compressed here where asked and possible; else (said under -v) pulled or piped.
        let pack = if pack_level > 0 {
            match super::zpack::Pack::start(pack_level) {
                Ok(p) => {
                    io_report::PACK_HELPERS.store(p.helpers() as u64, Relaxed);
                    io_report::PACK_MAPPED.store(p.mapped as u64, Relaxed);
                    Some(p)
                }
                Err(e) => {
                    io_report::PACK_ERRNO.store(e.0, Relaxed);
                    None
                }
            }
        } else {
            None
        };
        if ack >= 0 {
            // Acknowledgements are taken as they come, never waited for in a read.
            let fl = sys::fcntl(ack, libc::F_GETFL, 0)?;
            sys::fcntl(ack, libc::F_SETFL, fl | libc::O_NONBLOCK as usize)?;
        }
        Ok(Feed {
            pipe,
            ack,
            adapt,
            deadline_ns,
            pending: None,
            handed: 0,
            acked: 0,
            pull: if pack.is_some() {
                io_report::PACKED
            } else if ack >= 0 {
                io_report::PULLED
            } else {
                io_report::PULL_NONE
            },
            c: super::image::Counted::start(),
            tags: 0,
            hp: xxhash_rust::xxh3::Xxh3::new(),
            pack,
        })
    }

    /// Packed: sends the pieces the helpers are done with, in the order they were given (the
    /// stream's order): each its index with `ZPLAN_PACKED`, the frame's length and the frame;
    /// or, when the frame would not save enough, its index and its bytes as a piped piece
    /// (cr_checkpoint stores it raw).
    fn emit(&mut self) -> Result<(), Errno> {
        use super::image::write_counted;
        use crate::image::format::ZPLAN_PACKED;
        let Some(p) = self.pack.as_mut() else {
            return Ok(());
        };
        while let Some((i, addr, n, frame)) = p.take() {
            match frame {
                Some((at, len)) => {
                    let tag = (i as u64 | ZPLAN_PACKED).to_le_bytes();
                    write_counted(self.pipe, tag.as_ptr() as usize, 8, &mut self.c)?;
                    // (The frame is not image bytes: the piece counts as written, as a pulled
                    // one does.)
                    let mut aside = super::image::Counted::start();
                    let head = (len as u64).to_le_bytes();
                    write_counted(self.pipe, head.as_ptr() as usize, 8, &mut aside)?;
                    write_counted(self.pipe, at, len, &mut aside)?;
                    // SAFETY: the helper's buffer, `len` bytes of its frame (it is DONE and
                    // untouched until released).
                    self.hp
                        .update(unsafe { core::slice::from_raw_parts(at as *const u8, len) });
                    self.c.written += n as u64;
                }
                None => {
                    let tag = (i as u64).to_le_bytes();
                    write_counted(self.pipe, tag.as_ptr() as usize, 8, &mut self.c)?;
                    // SAFETY: as in write_data: readable program memory, the program parked.
                    self.hp
                        .update(unsafe { core::slice::from_raw_parts(addr as *const u8, n) });
                    write_counted(self.pipe, addr, n, &mut self.c)?;
                }
            }
            p.release();
        }
        Ok(())
    }

    /// Takes the acknowledgements there are; true when cr_checkpoint refused the first piece
    /// (`protocol::ZPULL_REFUSED`). `EPIPE`: cr_checkpoint is gone.
    fn take_acks(&mut self) -> Result<bool, Errno> {
        let mut buf = [0u8; 64];
        loop {
            match sys::read(self.ack, &mut buf) {
                Ok(0) => return Err(Errno(libc::EPIPE)),
                Ok(k) => {
                    let mut refused = false;
                    for &b in &buf[..k] {
                        match b {
                            crate::protocol::ZPULL_DONE => self.acked += 1,
                            crate::protocol::ZPULL_REFUSED if self.handed == 1 => refused = true,
                            _ => return Err(Errno(libc::EPROTO)),
                        }
                    }
                    if refused || k < buf.len() {
                        return Ok(refused);
                    }
                }
                Err(Errno(libc::EINTR)) => {}
                Err(Errno(libc::EAGAIN)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves what it can on and tells whether the compressor is behind: the pipe still holds
    /// the piece before, or [`PULL_AHEAD`] pieces are not pulled yet. (Not `adapt`: never
    /// behind, the compressor is waited for.)
    fn busy(&mut self) -> Result<bool, Errno> {
        if self.pack.is_some() {
            loop {
                self.emit()?;
                let Some(p) = self.pack.as_ref() else {
                    return Ok(false);
                };
                if p.has_room() {
                    return Ok(false);
                }
                if self.adapt {
                    return Ok(true);
                }
                super::image::write_must_stop(self.deadline_ns)?;
                p.wait(10_000_000);
            }
        }
        if self.ack < 0 {
            self.push()?;
            return Ok(self.pending.is_some());
        }
        let mut last = sys::monotonic_ns();
        loop {
            let before = self.acked;
            self.take_acks()?;
            if self.handed - self.acked < PULL_AHEAD {
                return Ok(false);
            }
            if self.adapt {
                return Ok(true);
            }
            if self.acked != before {
                last = sys::monotonic_ns();
            }
            self.wait_ack(self.deadline_ns, last)?;
        }
    }

    /// Waits up to `ns` for the compressor to take more.
    fn wait(&self, ns: u64) {
        if let Some(p) = self.pack.as_ref() {
            p.wait(ns);
        } else if self.ack >= 0 {
            sys::ppoll_one(self.ack, libc::POLLIN, ns);
        } else {
            sys::ppoll_one(self.pipe, libc::POLLOUT, ns);
        }
    }

    /// Writes what the pipe takes of the pending piece now (all of it, waiting, not `adapt`).
    fn push(&mut self) -> Result<(), Errno> {
        let Some(p) = self.pending.as_mut() else {
            return Ok(());
        };
        if !self.adapt {
            let tag = p.tag;
            let (addr, left) = (p.addr, p.left);
            let from = p.tag_done;
            self.pending = None;
            super::image::write_counted(
                self.pipe,
                tag[from..].as_ptr() as usize,
                8 - from,
                &mut self.c,
            )?;
            return super::image::write_counted(self.pipe, addr, left as usize, &mut self.c);
        }
        loop {
            let (a, n) = if p.tag_done < 8 {
                (p.tag[p.tag_done..].as_ptr() as usize, 8 - p.tag_done)
            } else if p.left > 0 {
                (p.addr, p.left as usize)
            } else {
                self.pending = None;
                return Ok(());
            };
            match super::offload::fd_call(libc::SYS_write as usize, self.pipe, a, n, 0) {
                Ok(0) => return Err(Errno(libc::EIO)),
                Ok(k) if p.tag_done < 8 => {
                    p.tag_done += k;
                    self.c.written += k as u64;
                }
                Ok(k) => {
                    p.addr += k;
                    p.left -= k as u64;
                    self.c.written += k as u64;
                }
                Err(Errno(libc::EINTR)) => {}
                Err(Errno(libc::EAGAIN)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives piece `i` (`n` bytes at `addr`) to the compressor: its index, then as much of it
    /// as the pipe takes; or its index for cr_checkpoint to pull it. The first piece handed
    /// over is waited for: refused (cr_checkpoint may not read us), its bytes and every later
    /// piece's go through the pipe.
    fn start(&mut self, i: usize, addr: usize, n: u64, deadline_ns: u64) -> Result<(), Errno> {
        use crate::image::format::ZPLAN_PULL;
        self.tags += 1;
        if let Some(p) = self.pack.as_mut() {
            // (Hashed when it is sent, `emit`: the stream's hash covers the frame.)
            p.give(i, addr, n as usize);
            return Ok(());
        }
        // SAFETY: as in write_data: readable program memory, the program parked.
        self.hp
            .update(unsafe { core::slice::from_raw_parts(addr as *const u8, n as usize) });
        if self.ack < 0 {
            self.pending = Some(Pending {
                tag: (i as u64).to_le_bytes(),
                tag_done: 0,
                addr,
                left: n,
            });
            return self.push();
        }
        let tag = (i as u64 | ZPLAN_PULL).to_le_bytes();
        super::image::write_counted(self.pipe, tag.as_ptr() as usize, 8, &mut self.c)?;
        // (Image bytes, though not through the pipe.)
        self.c.written += n;
        self.handed += 1;
        if self.handed > 1 {
            return Ok(());
        }
        // The first: pulled, or refused?
        let last = sys::monotonic_ns();
        loop {
            if self.take_acks()? {
                use super::image::io_report;
                self.c.written -= n;
                self.ack = -1;
                self.pull = io_report::PULL_REFUSED;
                return super::image::write_counted(self.pipe, addr, n as usize, &mut self.c);
            }
            if self.acked > 0 {
                return Ok(());
            }
            self.wait_ack(deadline_ns, last)?;
        }
    }

    /// Waits (10 ms at most) for an acknowledgement; fails past `--time`, once the requester
    /// is gone, or when nothing was pulled for [`PULL_STALL_NS`] since `last`.
    fn wait_ack(&self, deadline_ns: u64, last: u64) -> Result<(), Errno> {
        sys::ppoll_one(self.ack, libc::POLLIN, 10_000_000);
        super::image::write_must_stop(deadline_ns)?;
        if sys::monotonic_ns().saturating_sub(last) > PULL_STALL_NS {
            return Err(Errno(libc::ETIMEDOUT));
        }
        Ok(())
    }

    /// The rest of a piece in the pipe, waiting for the pipe now; packed, every piece the
    /// helpers have, waiting for them (not past `--time`, nor once the requester is gone).
    fn flush(&mut self) -> Result<(), Errno> {
        loop {
            self.emit()?;
            let Some(p) = self.pack.as_ref() else { break };
            if !p.outstanding() {
                break;
            }
            super::image::write_must_stop(self.deadline_ns)?;
            p.wait(10_000_000);
        }
        if let Some(p) = self.pending.take() {
            let tag = p.tag;
            super::image::write_counted(
                self.pipe,
                tag[p.tag_done..].as_ptr() as usize,
                8 - p.tag_done,
                &mut self.c,
            )?;
            super::image::write_counted(self.pipe, p.addr, p.left as usize, &mut self.c)?;
        }
        Ok(())
    }

    /// Waits until cr_checkpoint has pulled every piece handed over (the program may change
    /// its memory only then).
    fn all_pulled(&mut self, deadline_ns: u64) -> Result<(), Errno> {
        if self.ack < 0 {
            return Ok(());
        }
        let mut last = sys::monotonic_ns();
        loop {
            let before = self.acked;
            if self.take_acks()? {
                return Err(Errno(libc::EPROTO));
            }
            if self.acked == self.handed {
                return Ok(());
            }
            if self.acked != before {
                last = sys::monotonic_ns();
            }
            self.wait_ack(deadline_ns, last)?;
        }
    }
}

/// One-piece bounce buffer of a copy-on-write writer whose ring is refused
/// (`bounce::for_writer`). Its memory is shared with the program (a fork's copy-on-write
/// pages), and the kernel copies such a page when direct I/O pins it (a pin of a page that is
/// not exclusively ours "unshares" it since Linux 5.19/6.0): written straight from memory,
/// every page would be copied into fresh memory (slow here, and as much memory again). Copied
/// into buffers of its own first, it is only read.
pub const BOUNCE_LEN: usize = 8 << 20;

/// Page data is written (and the deadline and the requester checked) in pieces of this size (a
/// page multiple; ~5 ms at this machine's direct-I/O rate, so a requester killed mid-write is
/// noticed well within 100 ms even when the disk is shared).
const WRITE_CHUNK: u64 = 8 << 20;

/// The [`RegionFsRec`] of a region re-created on file system `fs`, with the mapped file's
/// permission bits and owner (zero when the file could not be looked at).
fn fs_rec(fs: u32, st: Option<&libc::stat>, page_size: u64) -> RegionFsRec {
    RegionFsRec {
        fs,
        mode: st.map_or(0, |s| s.st_mode & 0o7777),
        uid: st.map_or(0, |s| s.st_uid),
        gid: st.map_or(0, |s| s.st_gid),
        page_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysvipc_shm_lines_parse() {
        let head = b"       key      shmid perms                  size  cpid  lpid nattch   uid";
        assert!(parse_sysv_line(head).is_none());
        let l = b"1818842614         29  1640                 65536  1234  1234      2     0";
        let s = parse_sysv_line(l).unwrap();
        assert_eq!(
            (s.key, s.shmid, s.mode, s.size),
            (0x6c6955f6, 29, 0o1640, 65536)
        );
        let neg = parse_sysv_line(b"-5 3 600 4096").unwrap();
        assert_eq!(neg.key, -5);
        assert_eq!(page_up(65537), 69632);
    }
}
