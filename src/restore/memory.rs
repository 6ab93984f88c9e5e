//! Rebuilds the program's memory in the restart child: every region is mapped at its final
//! address when that is free, else at a temporary one the trampoline later moves into place, and
//! filled from the image.
//!
//! Two ways to fill private memory (`cr_restart --eager` chooses the second):
//! - **lazy** (the default where it is safe, see [`lazy_refusal`]): each long run of saved pages
//!   of private memory is mapped straight from the image file, `MAP_PRIVATE|MAP_FIXED` over the
//!   region's fresh anonymous memory (every image page run is page aligned in the file). The
//!   kernel faults pages in from the page cache or the disk when the program first touches them,
//!   and copies a page only when the program writes it. The program runs at once whatever the
//!   image's size. Pages the image does not hold stay anonymous zero pages. The mapping holds the
//!   file (not its path): the image may be removed or renamed, not changed in place. The page
//!   data checksum cannot be checked before the program runs (that would read everything), so a
//!   lazy restart checks header, metadata and trailer only.
//! - **eager**: everything is read into place and the data hash checked before anything runs.

use super::RestoreError;
use crate::agent::memory::parse_line;
use crate::image::format::*;
use crate::image::reader::{Image, Region};
use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Page data is read (and counted for cr_restart's progress bar) in pieces of this size.
const READ_CHUNK: u64 = 8 << 20;

/// Bytes of page data read so far by every process of a restart, for cr_restart's progress bar:
/// a counter in a shared page cr_restart maps before it creates the processes (null: nobody
/// counts). The restored program never sees it: it goes with cr_restart's other mappings.
static READ_COUNTER: std::sync::atomic::AtomicPtr<std::sync::atomic::AtomicU64> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Maps the shared counter of page data read (see [`READ_COUNTER`]); `None` when it cannot be
/// mapped (no progress is shown then).
pub fn count_reads() -> Option<&'static std::sync::atomic::AtomicU64> {
    // SAFETY: a fresh shared anonymous page, never unmapped by this process.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let c = p as *mut std::sync::atomic::AtomicU64;
    READ_COUNTER.store(c, std::sync::atomic::Ordering::Release);
    // SAFETY: the page is mapped for the rest of the process and zero (a valid AtomicU64).
    Some(unsafe { &*c })
}

/// The shared page's words after the byte count (see [`READ_COUNTER`]): how many processes read
/// their page data with fewer reader threads than they meant to, how many of those with none
/// at all (everything on the restoring thread), and the errno of the last failed creation.
const SHORT_OF_READERS: usize = 1;
const NO_READERS: usize = 2;
const READERS_ERRNO: usize = 3;
/// Bytes of regions advised `MADV_HUGEPAGE` again (`REC_REGION_THP`), of those bytes the ones
/// mapped lazily from the image (private file pages: not huge pages), and the errno of a
/// refused advice.
const THP_ADVISED: usize = 4;
const THP_LAZY: usize = 5;
const THP_ERRNO: usize = 6;
/// Of [`THP_ADVISED`], bytes advised only once read (without `cr_restart --huge-pages`).
const THP_AFTER: usize = 7;

/// What the restored processes did with their regions that had transparent huge pages at the
/// checkpoint (`REC_REGION_THP`), for cr_restart --verbose (zero when no shared page was
/// mapped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugePages {
    /// Bytes of regions advised `MADV_HUGEPAGE` again.
    pub advised: u64,
    /// Of those, bytes mapped from the image (a lazy restart): 4 KiB pages of the image file.
    pub lazy: u64,
    /// Of those, bytes advised only after they were read (no `cr_restart --huge-pages`): read
    /// into 4 KiB pages.
    pub after: u64,
    /// The errno of the last advice the kernel refused (0: none).
    pub errno: i32,
}

/// What the processes of this restart did with their huge-page regions so far (cr_restart,
/// after they run).
pub fn huge_pages() -> HugePages {
    let get = shared_value;
    HugePages {
        advised: get(THP_ADVISED),
        lazy: get(THP_LAZY),
        after: get(THP_AFTER),
        errno: get(THP_ERRNO) as i32,
    }
}

/// Advises the region at `at` (`len` bytes) `MADV_HUGEPAGE` again (`REC_REGION_THP`), before
/// its pages are read in or, `after`, once they are; counted in the shared page
/// ([`huge_pages`]); a refusal is counted there too, never silent.
fn advise_huge(at: u64, len: u64, after: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: advice on our own new mapping; no memory is changed.
    let r = unsafe { libc::madvise(at as *mut _, len as usize, libc::MADV_HUGEPAGE) };
    if r == 0 {
        if let Some(w) = shared_word(THP_ADVISED) {
            w.fetch_add(len, Relaxed);
        }
        if let Some(w) = shared_word(THP_AFTER).filter(|_| after) {
            w.fetch_add(len, Relaxed);
        }
    } else if let Some(w) = shared_word(THP_ERRNO) {
        w.store(errno() as u64, Relaxed);
    }
}

/// What the restored processes reported about their reader threads (`--eager`), read by
/// cr_restart from the shared page once they run: never a silent fallback (issue 11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderShortfall {
    /// Processes that made fewer reader threads than they meant to.
    pub short: u64,
    /// Of those, the ones that made none (their page data was read on the restoring thread).
    pub none: u64,
    /// The errno of the last thread that could not be made.
    pub errno: i32,
}

/// The word `i` of the shared page, if cr_restart mapped one.
fn shared_word(i: usize) -> Option<&'static std::sync::atomic::AtomicU64> {
    let c = READ_COUNTER.load(std::sync::atomic::Ordering::Acquire);
    // SAFETY: set by count_reads to a page mapped for the life of the process, which holds
    // PAGE / 8 words.
    (!c.is_null() && i < PAGE / 8).then(|| unsafe { &*c.add(i) })
}

/// The value of word `i` of the shared page (0 when cr_restart mapped none).
fn shared_value(i: usize) -> u64 {
    shared_word(i).map_or(0, |w| w.load(std::sync::atomic::Ordering::Relaxed))
}

/// Records (in the shared page) that this process made `started` of the `wanted` reader
/// threads (raw reads or decompression), the last failure with `errno`; a process is counted
/// once, at its first shortfall (a compressed image restored eagerly has both kinds of
/// threads).
fn note_readers(wanted: usize, started: usize, errno: i32) {
    use std::sync::atomic::Ordering::Relaxed;
    static COUNTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if started >= wanted {
        return;
    }
    let add = |i: usize| shared_word(i).map(|w| w.fetch_add(1, Relaxed));
    if !COUNTED.swap(true, Relaxed) {
        add(SHORT_OF_READERS);
        if started == 0 {
            add(NO_READERS);
        }
    }
    if let Some(w) = shared_word(READERS_ERRNO) {
        w.store(errno as u64, Relaxed);
    }
}

/// Starts up to `wanted` threads running `f` in scope `s`: a thread that cannot be made
/// (or none, with the test knob [`test_no_reader_threads`]) is left out and counted in the
/// shared page ([`note_readers`]), so cr_restart --verbose says so: never a silent fallback.
fn spawn_readers<'scope, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    wanted: usize,
    f: impl FnOnce() -> T + Send + Copy + 'scope,
) -> Vec<std::thread::ScopedJoinHandle<'scope, T>> {
    let mut errno = 0;
    let no_threads = test_no_reader_threads();
    let started: Vec<_> = (0..wanted)
        .filter_map(|_| {
            let r = if no_threads {
                Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
            } else {
                std::thread::Builder::new().spawn_scoped(s, f)
            };
            r.map_err(|e| errno = e.raw_os_error().unwrap_or(libc::EAGAIN))
                .ok()
        })
        .collect();
    note_readers(wanted, started.len(), errno);
    started
}

/// What the processes of this restart reported about their reader threads so far (cr_restart,
/// after they run; zero when no shared page was mapped).
pub fn reader_shortfall() -> ReaderShortfall {
    let get = shared_value;
    ReaderShortfall {
        short: get(SHORT_OF_READERS),
        none: get(NO_READERS),
        errno: get(READERS_ERRNO) as i32,
    }
}

/// TEST ONLY: `LIBCR_TEST_NO_READER_THREADS=1` in cr_restart's environment makes every reader
/// thread of an eager restore fail to start (`EAGAIN`, as when the process or user is out of
/// threads), so that tests/lazy_restore.rs can check that `--verbose` says so.
fn test_no_reader_threads() -> bool {
    std::env::var_os("LIBCR_TEST_NO_READER_THREADS").is_some_and(|v| v == "1")
}

fn count_read(n: u64) {
    let c = READ_COUNTER.load(std::sync::atomic::Ordering::Acquire);
    if !c.is_null() {
        // SAFETY: set by count_reads to a page mapped for the life of the process.
        unsafe { (*c).fetch_add(n, std::sync::atomic::Ordering::Relaxed) };
    }
}

/// Page data below this size is read (and its checksum checked) even in lazy mode: it takes
/// milliseconds.
pub const LAZY_MIN_DATA: u64 = 32 << 20;
/// Page runs shorter than this are read, not mapped (each mapping costs a kernel VMA).
pub const LAZY_MIN_EXTENT: u64 = 64 << 10;
/// At most this many page runs of one process are mapped (`vm.max_map_count` is 65530).
pub const LAZY_MAX_MAPPINGS: usize = 8192;

/// `statfs` types of local file systems whose files may be mapped for a lazy restore: their
/// page cache is the file's only truth (unlike NFS, CIFS or FUSE, whose files can change
/// under a private mapping's unread pages, or vanish with `ESTALE`).
const LOCAL_FS: [(i64, &str); 9] = [
    (0xEF53, "ext2/3/4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58F6, "ramfs"),
    (0xF2F5_2010, "f2fs"),
    (0x2FC1_2FC1, "zfs"),
    (0x794C_7630, "overlay"),
    (0x6165_6673, "aufs"),
];

/// Why the page data of `img` in `file` will be read in full rather than mapped (None: lazy
/// restore is possible), for `cr_restart --verbose` and the restore itself.
pub fn lazy_refusal(file: &File, img: &Image) -> Option<String> {
    if crate::image::stream::is_spooled(file) {
        return Some(
            "the image came from a stream (held in memory until the restart has read it): read in full and checked".into(),
        );
    }
    // A delta's own page data is small by nature: its chain's is what lazy restore maps.
    if img.header.data_len < LAZY_MIN_DATA && img.parent.is_none() {
        return Some(format!(
            "the page data is small ({:.1} MiB, under {} MiB): read and checked in full",
            img.header.data_len as f64 / (1 << 20) as f64,
            LAZY_MIN_DATA >> 20
        ));
    }
    file_refusal(file)
}

/// Why pages cannot be mapped from `file` at all (not a regular file, not readable, not on a
/// known local file system); `None`: they can.
pub fn file_refusal(file: &File) -> Option<String> {
    let fd = file.as_raw_fd();
    match crate::sys::fstat(fd) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {}
        Ok(_) => return Some("the image is not a regular file (pipe, socket or device)".into()),
        Err(e) => return Some(format!("cannot stat the image (errno {})", e.0)),
    }
    // SAFETY: F_GETFL takes no pointer.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 || fl & libc::O_ACCMODE == libc::O_WRONLY {
        return Some("the image descriptor is not open for reading".into());
    }
    match crate::sys::fstatfs_type(fd) {
        Ok(t) if LOCAL_FS.iter().any(|&(m, _)| m == t) => None,
        Ok(t) => Some(format!(
            "the image's file system (statfs type {t:#x}) is not a known local one (NFS, CIFS and FUSE files may change under a mapping)"
        )),
        Err(e) => Some(format!("cannot statfs the image (errno {})", e.0)),
    }
}

/// The name of the local file system of `file`, if it is one lazy restore maps from.
pub fn local_fs_name(file: &File) -> Option<&'static str> {
    let t = crate::sys::fstatfs_type(file.as_raw_fd()).ok()?;
    LOCAL_FS.iter().find(|&&(m, _)| m == t).map(|&(_, n)| n)
}

/// Whether page run `e` of region `r` may be mapped from the image (lazy restore): private
/// memory restored as anonymous memory (not stacks, which grow down, not huge pages, not
/// regions mapped from a tmpfs file, not executable memory: the image may be on a `noexec`
/// mount), readable, page aligned, and long enough to be worth a mapping.
pub fn lazy_extent(r: &Region, e: &Extent) -> bool {
    let private = match r.kind {
        RegionKind::Anon => true,
        RegionKind::PrivateContent => huge_page_size(r).is_none() && !tmpfs_file(r),
        _ => false,
    };
    private
        && r.fs.is_none()
        && r.rec.prot & libc::PROT_READ as u32 != 0
        && r.rec.prot & libc::PROT_EXEC as u32 == 0
        && e.len >= LAZY_MIN_EXTENT
        && e.addr.is_multiple_of(PAGE as u64)
        && e.len.is_multiple_of(PAGE as u64)
        && e.file_off.is_multiple_of(PAGE as u64)
}

/// A compressed image's page data for the extents `todo` (each with the address it goes to),
/// decompressed straight into place by a thread per core (each frame checks its own content
/// checksum).
fn inflate_into(img: &Image, file: &File, todo: &[(u64, Extent)]) -> Result<(), RestoreError> {
    // Every frame of those extents, with its destination.
    let mut jobs: Vec<(ZFrame, u64)> = Vec::new();
    for &(at, e) in todo {
        let i = img
            .zframes
            .partition_point(|f| f.raw_off + f.raw_len as u64 <= e.file_off);
        for f in img.zframes[i..]
            .iter()
            .take_while(|f| f.raw_off < e.file_off + e.len)
        {
            jobs.push((*f, at + (f.raw_off - e.file_off)));
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let run = || -> Result<(), String> {
        let mut z = crate::image::compress::Inflater::new()?;
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(f, dst)) = jobs.get(k) else {
                return Ok(());
            };
            // SAFETY: the destination lies inside the writable mapping made for the extent's
            // region (frames never cross an extent); no two frames overlap.
            let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, f.raw_len as usize) };
            img.read_frame(file, &f, out, &mut z)
                .map_err(|e| e.to_string())?;
        }
    };
    let res: Vec<Result<(), String>> = std::thread::scope(|s| {
        // A thread that cannot be made leaves its share to the others; with none, this thread
        // decompresses everything (said by cr_restart --verbose, as for the raw reads).
        let hs = spawn_readers(s, threads, run);
        if hs.is_empty() {
            return vec![run()];
        }
        // Joined here, not left to the scope (see read_and_hash).
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("decompression failed".into()))
            })
            .collect()
    });
    for r in res {
        r.map_err(|m| RestoreError::new(libc::EINVAL, format!("reading page data: {m}")))?;
    }
    Ok(())
}

/// A piece of raw page data to read: `len` bytes at file offset `off`, into place at `dst`, or
/// (`None`: pooled shared memory, filled before) only for the hash.
#[derive(Clone, Copy)]
struct Piece {
    dst: Option<u64>,
    off: u64,
    len: u64,
}

/// Reads `pieces` into place and feeds all of them to `h` in their order (the image's page data
/// order). The reads into place run on a thread per core: most of an eager restore's time is
/// the first touch of fresh memory (allocating and zeroing each page), which spreads over cores
/// (1 GiB, 8 MiB reads, hot: 0.63-0.65 s on one thread, 0.33-0.37 s on two, here); this thread
/// hashes each piece as soon as it is in, and reads the pooled ones itself.
fn read_and_hash(
    file: &File,
    pieces: &[Piece],
    h: &mut xxhash_rust::xxh3::Xxh3,
) -> Result<(), RestoreError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    let to_place: Vec<usize> = (0..pieces.len())
        .filter(|&k| pieces[k].dst.is_some())
        .collect();
    let in_place: Vec<AtomicBool> = pieces.iter().map(|_| AtomicBool::new(false)).collect();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<std::io::Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let (lock, arrived) = (Mutex::new(()), Condvar::new());
    let place = |k: usize| -> std::io::Result<()> {
        let p = pieces[k];
        let dst = p.dst.unwrap_or_default();
        // SAFETY: the destination lies inside the writable mapping made for its region; no two
        // pieces overlap, and nothing else touches it until this piece is marked in place.
        let buf = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, p.len as usize) };
        file.read_exact_at(buf, p.off)
    };
    let reader = || {
        while !stop.load(Ordering::Relaxed) {
            let Some(&k) = to_place.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            match place(k) {
                Ok(()) => {
                    count_read(pieces[k].len);
                    in_place[k].store(true, Ordering::Release);
                }
                Err(e) => {
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    stop.store(true, Ordering::Release);
                }
            }
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            arrived.notify_all();
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(to_place.len());
    let mut spare = Vec::new();
    let hashed = std::thread::scope(|s| -> std::io::Result<()> {
        // A thread that cannot be made leaves its share to the others (or to the loop below).
        let readers = spawn_readers(s, threads, reader);
        let started = readers.len();
        let res = (|| {
            for (k, p) in pieces.iter().enumerate() {
                let Some(dst) = p.dst else {
                    spare.resize(p.len as usize, 0u8);
                    file.read_exact_at(&mut spare, p.off)?;
                    count_read(p.len);
                    h.update(&spare);
                    continue;
                };
                if started == 0 {
                    place(k)?;
                    count_read(p.len);
                } else {
                    let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
                    while !in_place[k].load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
                        g = arrived.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                    if !in_place[k].load(Ordering::Acquire) {
                        return Ok(()); // a reader failed: its error is reported below
                    }
                }
                // SAFETY: the piece is in place (read above or by a reader, Acquire).
                h.update(unsafe { std::slice::from_raw_parts(dst as *const u8, p.len as usize) });
            }
            Ok(())
        })();
        stop.store(true, Ordering::Release);
        // Joined here, not left to the scope: the scope's end only waits for the closures to
        // return, while a thread may still run its exit in the C library, which this process
        // unmaps soon after (with the rest of cr_restart).
        for r in readers {
            let _ = r.join();
        }
        res
    });
    let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    hashed.and(failed.map_or(Ok(()), Err)).map_err(|e| {
        RestoreError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("reading page data: {e}"),
        )
    })
}

/// The hash of a compressed image's page data once it is in place (pooled shared memory is
/// read again from the image), in file order.
fn hash_in_place(
    img: &Image,
    file: &File,
    placed: &[Option<Placed>],
    shm: &SharedObjects,
) -> Result<xxhash_rust::xxh3::Xxh3, RestoreError> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut spare = Vec::new();
    for (i, r) in img.regions.iter().enumerate() {
        let Some(p) = placed[i] else { continue };
        let pooled = shm.pooled(r);
        for e in &r.extents {
            if pooled {
                spare.resize(e.len as usize, 0u8);
                img.read_pages(file, e.file_off, &mut spare)
                    .map_err(|e| RestoreError::new(e.errno(), format!("reading page data: {e}")))?;
                h.update(&spare);
            } else {
                let at = p.cur + (e.addr - r.rec.start);
                // SAFETY: the extent was filled inside the mapping made for its region.
                h.update(unsafe { std::slice::from_raw_parts(at as *const u8, e.len as usize) });
            }
        }
    }
    Ok(h)
}

/// Bytes of page data a lazy restore of `img` would map and read: (mapped, read). Regions that
/// must first be mapped elsewhere and moved (their address is taken in cr_restart) are read
/// instead; this count does not know about those.
pub fn lazy_plan(img: &Image) -> (u64, u64) {
    let (mut mapped, mut read, mut n) = (0, 0, 0);
    for r in &img.regions {
        for e in &r.extents {
            if n < LAZY_MAX_MAPPINGS
                && lazy_extent(r, e)
                && img.raw_file_offset(e.file_off, e.len).is_some()
            {
                mapped += e.len;
                n += 1;
            } else {
                read += e.len;
            }
        }
    }
    (mapped, read)
}

/// What [`build`] did with the page data.
#[derive(Debug, Default, Clone, Copy)]
pub struct Filled {
    /// Bytes mapped from the image file.
    pub mapped: u64,
    /// Bytes read into place.
    pub read: u64,
    /// Device and inode of the image as `/proc/self/maps` shows its mappings (0, 0: none).
    pub image_id: (u64, u64),
    /// The same for the images of a delta's chain pages were mapped from (unused: (0, 0)).
    pub chain_ids: [(u64, u64); crate::protocol::RESTART_CHAIN_IDS],
    /// An address mapped from the image (0: none), until [`Filled::resolve_ids`].
    pub image_at: u64,
    /// The same for each image of `chain_ids`.
    pub chain_at: [u64; crate::protocol::RESTART_CHAIN_IDS],
}

impl Filled {
    /// Sets `image_id` and `chain_ids` from the mappings at `image_at` and `chain_at`, with one
    /// read of `/proc/self/maps` (its device numbers are what the restored agent compares; a
    /// file's `st_dev` may differ from them, e.g. on btrfs or overlayfs).
    pub fn resolve_ids(&mut self) {
        let mut addrs = vec![self.image_at];
        addrs.extend(self.chain_at.iter().copied().take_while(|&a| a != 0));
        if addrs.iter().all(|&a| a == 0) {
            return;
        }
        let ids = mapping_ids(&addrs);
        self.image_id = ids[0];
        for (k, &id) in ids[1..].iter().enumerate() {
            self.chain_ids[k] = id;
        }
    }
}

/// A region as mapped in the child.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    /// Where it is now.
    pub cur: u64,
    /// Where it must end up.
    pub dst: u64,
    /// Length.
    pub len: u64,
}

/// Result of [`build`]: what the trampoline must move, and what must survive the unmapping.
#[derive(Debug, Default)]
pub struct Layout {
    /// Moves, in order: (from, len, to).
    pub moves: Vec<[u64; 3]>,
    /// Ranges to keep mapped when cr_restart's mappings are removed.
    pub keep: Vec<(u64, u64)>,
}

/// A mapping of the current process.
#[derive(Debug, Clone)]
pub struct CurMap {
    /// Start.
    pub start: u64,
    /// End.
    pub end: u64,
    /// Name.
    pub path: Vec<u8>,
}

/// Reads this process's `/proc/self/maps`.
pub fn current_maps() -> Vec<CurMap> {
    let text = std::fs::read("/proc/self/maps").unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter_map(|l| {
            parse_line(l).map(|m| CurMap {
                start: m.start,
                end: m.end,
                path: m.path.to_vec(),
            })
        })
        .collect()
}

fn overlaps(maps: &[CurMap], s: u64, e: u64) -> bool {
    maps.iter().any(|m| m.start < e && s < m.end)
}

/// The parts of `[s, e)` not covered by any mapping in `maps`.
fn gaps(maps: &[CurMap], s: u64, e: u64) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = maps
        .iter()
        .filter(|m| m.start < e && s < m.end)
        .map(|m| (m.start.max(s), m.end.min(e)))
        .collect();
    covered.sort_unstable();
    let mut out = Vec::new();
    let mut at = s;
    for (cs, ce) in covered {
        if cs > at {
            out.push((at, cs));
        }
        at = at.max(ce);
    }
    if at < e {
        out.push((at, e));
    }
    out
}

/// Maps an inaccessible placeholder over free address space `[s, e)`.
fn reserve(s: u64, e: u64) {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    unsafe {
        libc::mmap(
            s as *mut _,
            (e - s) as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_FIXED_NOREPLACE
                | libc::MAP_NORESERVE,
            -1,
            0,
        );
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn err(msg: String) -> RestoreError {
    RestoreError::new(errno(), msg)
}

fn path_str(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// The shared memory objects of the job (`pool::Pool::shm`: one memfd per object, keyed by
/// [`shared_key`], filled before any process forked). A region without an identity gets a memfd
/// of its own.
struct SharedObjects<'a> {
    pool: &'a std::collections::HashMap<(u64, u64), i32>,
}

impl SharedObjects<'_> {
    /// Whether `r`'s contents come from the pool (already filled before any process forked).
    fn pooled(&self, r: &Region) -> bool {
        r.kind == RegionKind::SharedContent
            && shared_key(r).is_some_and(|k| self.pool.contains_key(&k))
    }

    /// The memfd for `r`'s object and whether the caller must close it.
    fn fd_for(&self, r: &Region) -> Result<(i32, bool), RestoreError> {
        if let Some(k) = shared_key(r) {
            return match self.pool.get(&k) {
                Some(&fd) => Ok((fd, false)),
                None => Err(RestoreError::new(
                    libc::EINVAL,
                    format!(
                        "shared memory of {:#x} is missing from the job",
                        r.rec.start
                    ),
                )),
            };
        }
        // SAFETY: memfd_create with a literal name.
        let fd = unsafe { libc::memfd_create(c"libcr-shm".as_ptr(), libc::MFD_CLOEXEC) };
        let size = r.rec.offset + (r.rec.end - r.rec.start);
        // SAFETY: sizing the memfd we own.
        if fd < 0 || unsafe { libc::ftruncate(fd, size as i64) } < 0 {
            return Err(err("cannot create shared memory".into()));
        }
        Ok((fd, true))
    }
}

/// The identity of a shared memory object: the device and inode `/proc/PID/maps` showed
/// (regions with the same identity map the same object, e.g. a memfd mapped twice).
pub fn shared_key(r: &Region) -> Option<(u64, u64)> {
    // (A SysV segment's inode is its id, and 0 is a valid id.)
    (r.rec.ino != 0 || r.sysv.is_some()).then_some((r.rec.dev, r.rec.ino))
}

/// Maps one region at `addr` (0 = anywhere); returns where it landed.
fn map_region(shm: &SharedObjects, r: &Region, addr: u64) -> Result<u64, RestoreError> {
    let len = (r.rec.end - r.rec.start) as usize;
    let fixed = if addr != 0 {
        libc::MAP_FIXED_NOREPLACE
    } else {
        0
    };
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let (prot, flags, fd, off, close) = match r.kind {
        RegionKind::PrivateContent if huge_page_size(r).is_some() => (
            rw,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_HUGETLB
                | huge_flag(huge_page_size(r).unwrap_or(0)),
            -1,
            0,
            false,
        ),
        RegionKind::PrivateContent if tmpfs_file(r) => match open_unchanged(r) {
            // The file is still there as it was: a private mapping of it again (same name and
            // offset in /proc/PID/maps), the program's own pages on top.
            Some(fd) => (rw, libc::MAP_PRIVATE, fd, r.rec.offset as i64, true),
            None => (rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0, false),
        },
        RegionKind::Anon | RegionKind::PrivateContent => {
            (rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0, false)
        }
        RegionKind::Stack => (
            rw,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN,
            -1,
            0,
            false,
        ),
        RegionKind::SharedContent if r.sysv.is_some() => {
            let (id, _) = shm.fd_for(r)?;
            let readonly = r.rec.prot & libc::PROT_WRITE as u32 == 0;
            return super::sysv::attach(id, addr, readonly);
        }
        RegionKind::SharedContent => {
            let (fd, close) = shm.fd_for(r)?;
            // A tmpfs file may have been opened read-only (as the program had it).
            let prot = if tmpfs_file(r) { r.rec.prot as i32 } else { rw };
            (prot, libc::MAP_SHARED, fd, r.rec.offset as i64, close)
        }

        RegionKind::FilePrivate | RegionKind::FileShared => {
            let shared = r.kind == RegionKind::FileShared;
            let write = shared && r.rec.prot & libc::PROT_WRITE as u32 != 0;
            let p = CString::new(r.path.clone()).unwrap_or_default();
            let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
            // SAFETY: open with a valid C string.
            let fd = unsafe { libc::open(p.as_ptr(), mode | libc::O_CLOEXEC) };
            if fd < 0 {
                let e = errno();
                return Err(RestoreError::new(
                    e,
                    format!(
                        "cannot open mapped file {}: {}",
                        path_str(&r.path),
                        std::io::Error::from_raw_os_error(e)
                    ),
                ));
            }
            let prot = if shared { r.rec.prot as i32 } else { rw };
            let flags = if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
            (prot, flags, fd, r.rec.offset as i64, true)
        }
        _ => unreachable!("special regions are not mapped"),
    };
    // SAFETY: mapping new memory; with MAP_FIXED_NOREPLACE nothing existing is replaced.
    let p = unsafe { libc::mmap(addr as *mut _, len, prot, flags | fixed, fd, off) };
    if close {
        // SAFETY: the mapping keeps its own reference to the file.
        unsafe { libc::close(fd) };
    }
    if p == libc::MAP_FAILED || (addr != 0 && p as u64 != addr) {
        let huge = match huge_page_size(r) {
            Some(size) => format!(
                ", huge pages of {} KiB: are enough free (vm.nr_hugepages)?",
                size >> 10
            ),
            None => String::new(),
        };
        return Err(err(format!(
            "cannot map {:#x}-{:#x} ({}){huge}",
            r.rec.start,
            r.rec.end,
            path_str(&r.path)
        )));
    }
    Ok(p as u64)
}

/// Whether the file at `path` has the size and modification time `r` recorded.
fn unchanged(md: &std::fs::Metadata, r: &Region) -> bool {
    use std::os::unix::fs::MetadataExt;
    md.size() == r.rec.file_size
        && md.mtime() == r.rec.mtime_sec
        && md.mtime_nsec() == r.rec.mtime_nsec
}

/// The huge page size of a region of hugetlb memory (`FS_HUGETLB`).
pub fn huge_page_size(r: &Region) -> Option<u64> {
    r.fs.filter(|f| f.fs == FS_HUGETLB).map(|f| f.page_size)
}

/// `MAP_HUGE_*`/`MFD_HUGE_*` bits for `page_size` (log2 at bit 26); 0 (the default size) when it
/// is not a power of two.
pub fn huge_flag(page_size: u64) -> i32 {
    if page_size.is_power_of_two() {
        (page_size.trailing_zeros() as i32) << libc::MAP_HUGE_SHIFT
    } else {
        0
    }
}

/// A region saved by content that is mapped from its file again at restart: a file of tmpfs
/// (`FS_TMPFS`) or one shared-mapped under a temporary directory (`FS_TEMPDIR`).
pub fn tmpfs_file(r: &Region) -> bool {
    r.fs.is_some_and(|f| f.fs == FS_TMPFS || f.fs == FS_TEMPDIR) && !r.path.is_empty()
}

/// Checks a shared tmpfs file mapping: a file still at its path must be the one checkpointed
/// (it is mapped as it is now); a file that is gone must be re-creatable (its nearest existing
/// directory is writable: missing ones are created).
pub fn check_tmpfs_shared(r: &Region) -> Result<(), RestoreError> {
    let p = path_str(&r.path);
    match std::fs::metadata(&p) {
        Ok(md) if unchanged(&md, r) => Ok(()),
        Ok(_) => Err(RestoreError::new(
            libc::ESTALE,
            format!("mapped temporary file {p} changed since the checkpoint (size or modification time differs); remove it to restore the saved contents"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = std::path::Path::new(&p)
                .ancestors()
                .skip(1)
                .find(|d| d.as_os_str().is_empty() || std::fs::symlink_metadata(d).is_ok())
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let c = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: access with a valid C string.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                let e = errno();
                return Err(RestoreError::new(
                    e,
                    format!(
                        "mapped temporary file {p} is gone and cannot be re-created: directory {}: {}",
                        dir.display(),
                        std::io::Error::from_raw_os_error(e)
                    ),
                ));
            }
            Ok(())
        }
        Err(e) => Err(RestoreError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("mapped temporary file {p}: {e}"),
        )),
    }
}

/// The file of a private tmpfs region, opened read-only, when it still has the recorded size
/// and modification time.
fn open_unchanged(r: &Region) -> Option<i32> {
    let md = std::fs::metadata(std::ffi::OsStr::from_bytes(&r.path)).ok()?;
    if !unchanged(&md, r) {
        return None;
    }
    let p = CString::new(r.path.clone()).ok()?;
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    (fd >= 0).then_some(fd)
}

/// Checks that every file mapped by reference is still the one that was checkpointed.
pub fn check_files(img: &Image) -> Result<(), RestoreError> {
    for r in &img.regions {
        if r.kind == RegionKind::SharedContent && tmpfs_file(r) {
            check_tmpfs_shared(r)?;
            continue;
        }
        if !matches!(r.kind, RegionKind::FilePrivate | RegionKind::FileShared) {
            continue;
        }
        let p = path_str(&r.path);
        let md = std::fs::metadata(&p).map_err(|e| {
            RestoreError::new(
                e.raw_os_error().unwrap_or(libc::ENOENT),
                format!("mapped file {p}: {e}"),
            )
        })?;
        use std::os::unix::fs::MetadataExt;
        let same = md.size() == r.rec.file_size
            && md.mtime() == r.rec.mtime_sec
            && md.mtime_nsec() == r.rec.mtime_nsec;
        if !same {
            return Err(RestoreError::new(
                libc::ESTALE,
                format!("mapped file {p} changed since the checkpoint (size or modification time differs)"),
            ));
        }
    }
    Ok(())
}

/// Maps and fills every region; returns the trampoline's moves and the ranges to keep.
/// `shared`: memfds of the job's shared memory objects, by [`shared_key`] (filled already).
/// `lazy`: map long page runs of private memory from the image instead of reading them (the
/// caller checked [`lazy_refusal`]); `filled` says what was done.
pub fn build(
    img: &Image,
    file: &File,
    shared: &std::collections::HashMap<(u64, u64), i32>,
    lazy: bool,
    huge_before: bool,
    filled: &mut Filled,
) -> Result<Layout, RestoreError> {
    let cur = current_maps();
    let mut layout = Layout::default();
    let mut placed: Vec<Option<Placed>> = vec![None; img.regions.len()];

    // Special mappings: sizes must match this kernel's, they move to their saved addresses.
    let special_names: [(RegionKind, &[u8]); 3] = [
        (RegionKind::Vvar, b"[vvar]"),
        (RegionKind::VvarVclock, b"[vvar_vclock]"),
        (RegionKind::Vdso, b"[vdso]"),
    ];
    let mut specials = Vec::new();
    for (kind, name) in special_names {
        let saved = img.regions.iter().find(|r| r.kind == kind);
        let now = cur.iter().find(|m| m.path == name);
        match (saved, now) {
            (None, None) => {}
            (Some(s), Some(n)) if s.rec.end - s.rec.start == n.end - n.start => {
                specials.push((n.start, n.end - n.start, s.rec.start));
            }
            _ => {
                return Err(RestoreError::new(
                    libc::EINVAL,
                    "incompatible image: the kernel's vdso layout differs (image from a different kernel)".into(),
                ))
            }
        }
    }
    let specials_move = specials.iter().any(|&(from, _, to)| from != to);
    if specials_move {
        for &(_, len, to) in &specials {
            // Placeholders so no temporary mapping lands where the vdso goes.
            for (gs, ge) in gaps(&cur, to, to + len) {
                reserve(gs, ge);
            }
        }
    }

    let shm = SharedObjects { pool: shared };
    // Pass 1: regions whose final range is free go straight there.

    for (i, r) in img.regions.iter().enumerate() {
        if r.kind.is_special() || overlaps(&cur, r.rec.start, r.rec.end) {
            continue;
        }
        let at = map_region(&shm, r, r.rec.start)?;
        placed[i] = Some(Placed {
            cur: at,
            dst: r.rec.start,
            len: r.rec.end - r.rec.start,
        });
    }
    // Destinations of the remaining regions are only partly occupied by cr_restart: reserve their
    // free parts so no temporary mapping or trampoline block lands there. The placeholders are
    // unmapped with cr_restart's mappings before the moves.
    let now = current_maps();
    for (i, r) in img.regions.iter().enumerate() {
        if r.kind.is_special() || placed[i].is_some() {
            continue;
        }
        for (gs, ge) in gaps(&now, r.rec.start, r.rec.end) {
            reserve(gs, ge);
        }
    }
    // Pass 2: the rest at temporary addresses.
    for (i, r) in img.regions.iter().enumerate() {
        if r.kind.is_special() || placed[i].is_some() {
            continue;
        }
        let at = map_region(&shm, r, 0)?;
        placed[i] = Some(Placed {
            cur: at,
            dst: r.rec.start,
            len: r.rec.end - r.rec.start,
        });
    }

    // Regions that had transparent huge pages get the advice again (the program's, where THP
    // is `madvise`): with `cr_restart --huge-pages` before their pages are read in (an eager
    // restart fills them with huge pages; a lazy one maps most of them from the image, whose
    // file pages are 4 KiB, counted for --verbose), else once they are filled, for what the
    // program maps there later: huge pages given at the read cost this VM 3-10 times the read
    // of 4 KiB pages (4 GiB: 8.9 and 25.6 s against 2.3 and 2.6 s, docs/PERFORMANCE.md).
    let huge_regions: Vec<Placed> = img
        .regions
        .iter()
        .enumerate()
        .filter(|(_, r)| r.huge_bytes > 0 && matches!(r.kind, RegionKind::Anon | RegionKind::Stack))
        .filter_map(|(i, _)| placed[i])
        .collect();
    if huge_before {
        for p in &huge_regions {
            advise_huge(p.cur, p.len, false);
        }
    }

    // Fill from the image, hashing in file order. Pooled shared memory was filled before any
    // process of the job was forked (another may already run and write to it): its pages are
    // only read for the checksum.
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut n_mapped = 0;
    let mut deferred: Vec<(u64, Extent)> = Vec::new();
    for (i, r) in img.regions.iter().enumerate() {
        let Some(p) = placed[i] else { continue };
        let pooled = shm.pooled(r);
        for e in &r.extents {
            let at = p.cur + (e.addr - r.rec.start);
            // A region that moves later must stay one mapping (mremap moves one VMA): read.
            if lazy
                && p.cur == p.dst
                && n_mapped < LAZY_MAX_MAPPINGS
                && lazy_extent(r, e)
                && img
                    .raw_file_offset(e.file_off, e.len)
                    .is_some_and(|off| map_from_image(file, at, e.len, off))
            {
                n_mapped += 1;
                filled.mapped += e.len;
                if r.huge_bytes > 0 {
                    if let Some(w) = shared_word(THP_LAZY) {
                        w.fetch_add(e.len, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                if filled.image_at == 0 {
                    filled.image_at = at;
                }
                continue;
            }
            filled.read += e.len;
            if img.compressed() {
                // Decompressed below, in parallel, and hashed in order after that.
                if !pooled {
                    deferred.push((at, *e));
                }
                continue;
            }
            // Pooled extents are read (for the hash only) into a spare buffer, the others into
            // place, in pieces of READ_CHUNK.
            let mut done = 0u64;
            while done < e.len {
                let n = (e.len - done).min(READ_CHUNK);
                pieces.push(Piece {
                    dst: (!pooled).then_some(at + done),
                    off: img.header.data_offset + e.file_off + done,
                    len: n,
                });
                done += n;
            }
        }
    }
    read_and_hash(file, &pieces, &mut h)?;
    if img.compressed() {
        inflate_into(img, file, &deferred)?;
        if filled.mapped == 0 {
            h = hash_in_place(img, file, &placed, &shm)?;
        }
    }
    // Mapped page data is not read now: its checksum cannot be checked.
    if filled.mapped == 0 && h.digest() != img.trailer.data_hash {
        return Err(RestoreError::new(
            libc::EINVAL,
            "corrupt image: page data checksum mismatch".into(),
        ));
    }
    if img.parent.is_some() {
        // A delta image: the other pages of its incremental regions from its parent chain,
        // mapped from the links too where this image's own pages could be (lazy).
        let mut places: Vec<super::chain::Place> = img
            .regions
            .iter()
            .zip(&placed)
            .filter_map(|(r, p)| {
                p.map(|p| {
                    let probe = Extent {
                        addr: r.rec.start,
                        len: LAZY_MIN_EXTENT,
                        file_off: 0,
                    };
                    let mappable = lazy && p.cur == p.dst && lazy_extent(r, &probe);
                    (r.rec.start, r.rec.end, p.cur, mappable)
                })
            })
            .collect();
        places.sort_unstable();
        super::chain::fill(img, &places, lazy, filled)?;
    }
    filled.resolve_ids();
    if !huge_before {
        for p in &huge_regions {
            advise_huge(p.cur, p.len, true);
        }
    }
    // Final protections (mremap keeps them).
    for (i, r) in img.regions.iter().enumerate() {
        let Some(p) = placed[i] else { continue };
        if r.kind != RegionKind::FileShared
            && !(r.kind == RegionKind::SharedContent && tmpfs_file(r))
        {
            // SAFETY: changing protection of our own new mapping.
            unsafe { libc::mprotect(p.cur as *mut _, p.len as usize, r.rec.prot as i32) };
        }
        layout.keep.push((p.cur, p.cur + p.len));
        if p.cur != p.dst {
            layout.moves.push([p.cur, p.len, p.dst]);
        }
    }

    if specials_move {
        let total: u64 = specials.iter().map(|s| s.1).sum();
        // SAFETY: reserving a scratch range for the two-step move of the special mappings.
        let scratch = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if scratch == libc::MAP_FAILED {
            return Err(err("cannot reserve address space".into()));
        }
        let scratch = scratch as u64;
        layout.keep.push((scratch, scratch + total));
        // vdso/vvar go first (to the scratch range, then home) so that neither they nor the
        // region moves can land on one another.
        let mut off = 0;
        let mut first = Vec::new();
        let mut second = Vec::new();
        for &(from, len, to) in &specials {
            layout.keep.push((from, from + len));
            first.push([from, len, scratch + off]);
            second.push([scratch + off, len, to]);
            off += len;
        }
        let regions = std::mem::take(&mut layout.moves);
        layout.moves = first.into_iter().chain(second).chain(regions).collect();
    } else {
        for &(from, len, _) in &specials {
            layout.keep.push((from, from + len));
        }
    }
    Ok(layout)
}

/// Maps `len` bytes of the image at file offset `off` over `[at, at + len)` (private,
/// copy-on-write); false (nothing changed) when the kernel refuses.
pub(super) fn map_from_image(file: &File, at: u64, len: u64, off: u64) -> bool {
    // SAFETY: `[at, at + len)` lies inside a private anonymous mapping this restore just made
    // and nothing refers to yet; MAP_FIXED replaces exactly that range.
    let p = unsafe {
        libc::mmap(
            at as *mut _,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            off as i64,
        )
    };
    p as u64 == at
}

/// Device (`makedev`) and inode of the mapping at each of `addrs`, as `/proc/self/maps` shows
/// them ((0, 0): address 0, or no such mapping).
fn mapping_ids(addrs: &[u64]) -> Vec<(u64, u64)> {
    let text = std::fs::read("/proc/self/maps").unwrap_or_default();
    let maps: Vec<_> = text.split(|&b| b == b'\n').filter_map(parse_line).collect();
    addrs
        .iter()
        .map(|&a| {
            maps.iter()
                .find(|m| a != 0 && m.start <= a && a < m.end)
                .map(|m| (libc::makedev(m.major, m.minor), m.inode))
                .unwrap_or((0, 0))
        })
        .collect()
}

/// Every mapped range of this process not covered by `keep` (to be unmapped by the trampoline).
pub fn unmap_list(keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for m in current_maps() {
        if m.path == b"[vsyscall]" {
            continue;
        }
        let mut pieces = vec![(m.start, m.end)];
        for &(ks, ke) in keep {
            let mut next = Vec::new();
            for (s, e) in pieces {
                if ke <= s || e <= ks {
                    next.push((s, e));
                    continue;
                }
                if s < ks {
                    next.push((s, ks));
                }
                if ke < e {
                    next.push((ke, e));
                }
            }
            pieces = next;
        }
        out.extend(pieces.into_iter().map(|(s, e)| (s, e - s)));
    }
    out
}
