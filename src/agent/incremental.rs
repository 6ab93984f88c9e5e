//! Incremental checkpoints: which pages were written since the last checkpoint.
//!
//! After a checkpoint asked with [`protocol::FLAG_INCREMENTAL`] the agent arms
//! write-tracking, while the program's threads are still stopped, on every private writable
//! anonymous region (heap, stacks, anonymous mappings): a userfaultfd in asynchronous
//! write-protect mode (`UFFD_FEATURE_WP_ASYNC`, with `UFFD_FEATURE_WP_UNPOPULATED`, opened with
//! `UFFD_USER_MODE_ONLY` so no privilege is needed) registers the region and write-protects it
//! (`UFFDIO_WRITEPROTECT`). The program's first write to a protected page then only clears the
//! protection in the kernel (no fault reaches anybody). The next incremental checkpoint asks
//! `PAGEMAP_SCAN` on `/proc/self/pagemap` for the pages with `PAGE_IS_WRITTEN` and write-protects
//! them again in the same call (`PM_SCAN_WP_MATCHING`); `PM_SCAN_CHECK_WPASYNC` makes the scan
//! fail with `EPERM` for a region that is not registered (mapped again since, moved by
//! `mremap`), which is then saved in full. A written page that is neither present nor swapped
//! (dropped with `MADV_DONTNEED`, or part of a brk that grew) or maps the zero page reads as
//! zero: it becomes a hole of the region's `REC_REGION_INCR` record, the others are saved.
//!
//! Pages that read as zero are recorded whether the kernel reports them written or not. Arming
//! (`UFFD_FEATURE_WP_UNPOPULATED`) gives every page of the range a page-table entry (a
//! write-protect marker where nothing is populated), so a page that is neither present nor
//! swapped in a tracked region lost its entry since: dropped (`MADV_DONTNEED`, a `MADV_FREE`
//! page reclaimed) or added (the region grew). The kernel reports an empty entry as written,
//! but a range with no page table at all (a 2 MiB transparent huge page dropped whole, which
//! clears its PMD; a page table freed with its last page; a region grown past its page
//! tables) goes through `pagemap_scan_pte_hole`, which reports it unwritten in the kernels a
//! patch posted in July 2026 corrects (Fixes: `UFFD_FEATURE_WP_UNPOPULATED`, 6.7; 6.18.44 here
//! reports it written): a delta would then keep the parent's bytes there. So the scan asks for the pages that are written *or not present*
//! (`category_inverted` PAGE_IS_PRESENT, `category_anyof_mask` WRITTEN|PRESENT): the same
//! single walk, whose extra output is only the not-present ranges (swapped pages and markers,
//! skipped when not written; merged into runs, so it costs something only for memory where
//! present and unpopulated pages alternate); `PM_SCAN_WP_MATCHING` arms the holes too, so a
//! hole is reported once. `cr_checkpoint -v` counts the pages a kernel did not report
//! (`N unreported pages with no page table`).
//!
//! Hot pages: a page reported written by the last two scans (written in each of the last two
//! intervals) is not protected again, so the program's next writes to it cost no fault: the
//! scan of a range written last time ([`RUNS`], the candidates) leaves out
//! `PM_SCAN_WP_MATCHING`. A page that is not protected reads as written in every later scan
//! (`PAGE_IS_WRITTEN` means "not write-protected"), so it is in every delta, written or not,
//! until a scan protects it again: every [`PROBE_EVERY`]th delta scans with no candidates
//! (everything written is protected again, and the next scan sees which pages the program
//! still writes), and a full image protects everything. A candidate page that was not written
//! is still protected (only a write clears it), so the candidates may be any set of pages:
//! they only decide which pages stay unprotected. The lists live in static memory (no
//! allocation in the stop); runs past [`MAX_RUNS`] are simply protected again.
//!
//! Only regions that overlap a range armed after the parent, and whose scan succeeds, are
//! tracked; every other region (new mappings, file mappings, shared memory, regions that were
//! not writable when armed) is saved in full, as in a full image. A failed checkpoint
//! disarms (the written state it consumed is gone): the next one is a full image. So is the
//! first one, one after a restart or in a fork child (nothing is armed there), and one whose
//! parent is not the image tracking was armed for (its size and trailer hash differ).
//!
//! After a lazy restart the restored memory is mostly private mappings of the image restarted
//! from (and of its chain's images: `agent::lazy`). A page of such a mapping that was written
//! since became the program's own (copy-on-write: `PAGE_IS_FILE` clear); every other page is
//! still the image's, i.e. what the image holds at that address. So the first incremental
//! checkpoint that names that image as its parent ([`restored`]: its trailer hash and size
//! come in `RestartInfo`) is a delta too: an image-backed region still where the restart
//! mapped it (same file, same offset for its address: checked against the mappings recorded
//! at restart) saves only its pages that are not file pages, any other region is saved in full,
//! and everything eligible is armed afterwards, image-backed regions included (asynchronous
//! write-protection works on private file mappings too), so later deltas track them page by
//! page like anonymous memory.
//!
//! A copy-on-write checkpoint (`--cow`) scans and arms in the stop, before its writer is forked
//! ([`arm_now`]), and names its image as the next parent once the writer succeeded
//! ([`remember`]); the writer itself arms nothing ([`in_writer`]).
//!
//! Runs in the control thread while every other thread is parked: raw system calls, static
//! tables, no heap.

use crate::image::format::*;
use crate::protocol::{self, Request};
use crate::sys::{self, Errno, StackBuf};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

// --- Kernel interface (Debian 12's headers lack the newer parts; values from the kernel's
// include/uapi/linux/userfaultfd.h and fs.h, checked against its ioctl encoding below). ---

/// `userfaultfd(2)` flag: handle faults from user space only (allowed without privilege when
/// `vm.unprivileged_userfaultfd` is 0).
const UFFD_USER_MODE_ONLY: usize = 1;
/// `uffdio_api.api`.
const UFFD_API: u64 = 0xaa;
/// Unpopulated pages are write-protected too (marked), so a later first write is seen.
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// Write faults on protected pages are resolved by the kernel (no handler).
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `uffdio_register.mode`: write-protect tracking.
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `uffdio_writeprotect.mode`: protect (not clear).
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct page_region` (PAGEMAP_SCAN output).
#[repr(C)]
#[derive(Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

impl PmScanArg {
    /// A scan of `start..end` into `vec` that asks nothing yet: callers set the flags and the
    /// categories.
    fn over(start: u64, end: u64, vec: &mut [PageRegion]) -> PmScanArg {
        PmScanArg {
            size: core::mem::size_of::<PmScanArg>() as u64,
            flags: 0,
            start,
            end,
            walk_end: 0,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: 0,
            category_anyof_mask: 0,
            return_mask: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(core::mem::size_of::<UffdioRange>() == 16);
const _: () = assert!(core::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(core::mem::size_of::<UffdioWriteprotect>() == 24);
const _: () = assert!(core::mem::size_of::<PageRegion>() == 24);
const _: () = assert!(core::mem::size_of::<PmScanArg>() == 96);

/// `_IOWR(ty, nr, size)`.
const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const UFFDIO_API: u64 = iowr(0xaa, 0x3f, core::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0xaa, 0x00, core::mem::size_of::<UffdioRegister>());
const UFFDIO_WRITEPROTECT: u64 = iowr(0xaa, 0x06, core::mem::size_of::<UffdioWriteprotect>());
const PAGEMAP_SCAN: u64 = iowr(b'f' as u64, 16, core::mem::size_of::<PmScanArg>());
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
const _: () = assert!(PAGEMAP_SCAN == 0xc060_6610);

/// `PM_SCAN_WP_MATCHING`: write-protect the pages that match.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail (`EPERM`) on a region not registered for async write-protect.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// Mapped by a huge page table entry (a transparent huge page, or hugetlb).
const PAGE_IS_HUGE: u64 = 1 << 6;
/// A guard region page (`MADV_GUARD_INSTALL`): reading it faults; recorded as a hole.
const PAGE_IS_GUARD: u64 = 1 << 8;
/// The kernel refused `PAGE_IS_GUARD` (`EINVAL`: older than the category): scans go without.
static NO_GUARD_CATEGORY: AtomicBool = AtomicBool::new(false);

// --- State kept between checkpoints (agent memory; reset after fork and restart). ---

/// Our userfaultfd (-1: none), and the process that opened it.
#[link_section = ".data1"]
static UFFD: AtomicI32 = AtomicI32::new(-1);
static UFFD_PID: AtomicI32 = AtomicI32::new(0);
/// errno of the last failure to open or set up the userfaultfd (0: none).
static KERNEL_ERRNO: AtomicI32 = AtomicI32::new(0);
/// Write-tracking is armed for the image named by the three below.
#[link_section = ".data1"]
static ARMED: AtomicBool = AtomicBool::new(false);
static ARMED_HASH: AtomicU64 = AtomicU64::new(0);
static ARMED_SIZE: AtomicU64 = AtomicU64::new(0);
/// Links behind the armed image (0: it is a full image).
static ARMED_DEPTH: AtomicU32 = AtomicU32::new(0);

/// The image this process was lazily restored from: a delta may name it as its parent
/// ([`restored`]); its trailer hash, size and depth.
#[link_section = ".data1"]
static RESTORED: AtomicBool = AtomicBool::new(false);
static RESTORED_HASH: AtomicU64 = AtomicU64::new(0);
static RESTORED_SIZE: AtomicU64 = AtomicU64::new(0);
static RESTORED_DEPTH: AtomicU32 = AtomicU32::new(0);
/// The checkpoint being written is a delta against the image restored from.
static AFTER_RESTORE: AtomicBool = AtomicBool::new(false);
/// Most image-backed mappings recorded at restart; more are saved in full.
const MAX_BACKED: usize = 4096;
/// The image-backed mappings as the restart left them: start, end, file offset, device, inode.
static BACKED: [[AtomicU64; 5]; MAX_BACKED] = [const {
    [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]
}; MAX_BACKED];
static N_BACKED: AtomicUsize = AtomicUsize::new(0);

/// Most regions tracked at once; more are saved in full every time.
const MAX_RANGES: usize = 4096;
/// Ranges armed after the parent checkpoint (valid while [`ARMED`]).
static RANGES: [[AtomicU64; 2]; MAX_RANGES] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; MAX_RANGES];
static N_RANGES: AtomicUsize = AtomicUsize::new(0);
/// Regions of the checkpoint being written to arm afterwards: start, end, and whether the scan
/// already protected them again (tracked).
static NEXT: [[AtomicU64; 3]; MAX_RANGES] =
    [const { [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)] }; MAX_RANGES];
static N_NEXT: AtomicUsize = AtomicUsize::new(0);

/// What the checkpoint being written does.
static MODE: AtomicU32 = AtomicU32::new(OFF);
/// Not incremental.
const OFF: u32 = 0;
/// A full image, then arm.
const FULL: u32 = 1;
/// A delta image against the armed parent, then arm.
const DELTA: u32 = 2;
/// Why [`FULL`] (one of the `WHY_*`).
static WHY: AtomicU32 = AtomicU32::new(0);
const WHY_ASKED: u32 = 0;
const WHY_NOT_ARMED: u32 = 1;
const WHY_OTHER_PARENT: u32 = 2;
const WHY_KERNEL: u32 = 3;
/// This checkpoint's counts: regions tracked, regions saved in full although eligible.
static N_TRACKED: AtomicU32 = AtomicU32::new(0);
static N_UNTRACKED: AtomicU32 = AtomicU32::new(0);

/// Most runs of written pages remembered per scan; more are protected again as usual.
const MAX_RUNS: usize = 4096;
/// Every this many deltas, a scan protects every written page again (hot pages included).
const PROBE_EVERY: u32 = 8;
/// Runs `[start, end)` of the pages reported written by a scan, ascending: two lists, the
/// candidates ([`CAND`]: the last successful delta's) and the one being recorded.
static mut RUNS: [[[u64; 2]; MAX_RUNS]; 2] = [[[0; 2]; MAX_RUNS]; 2];
/// Runs in each list.
static N_RUNS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// Which list of [`RUNS`] holds the candidates.
static CAND: AtomicUsize = AtomicUsize::new(0);
/// This scan protects everything written again (no candidates).
static PROBE: AtomicBool = AtomicBool::new(false);
/// Deltas since everything was last protected (a full image or a probe).
static SINCE_PROBE: AtomicU32 = AtomicU32::new(0);
/// This checkpoint's pages left unprotected (hot).
static N_HOT: AtomicU64 = AtomicU64::new(0);
/// This checkpoint's pages that read as zero (or as the image's, in an image-backed region)
/// without being reported written: ranges without page table on a kernel that reports them
/// unwritten (see the module documentation).
static N_UNWRITTEN_ZERO: AtomicU64 = AtomicU64::new(0);

/// Holes of the region being scanned (`[start, end)` pairs), the body of its
/// `REC_REGION_INCR` record.
static mut HOLES: [u64; 2 * MAX_HOLES] = [0; 2 * MAX_HOLES];
/// Most holes one region records; a region with more is saved in full.
const MAX_HOLES: usize = 4096;
/// PAGEMAP_SCAN output buffer.
static mut VEC: [PageRegion; 1024] = [PageRegion {
    start: 0,
    end: 0,
    categories: 0,
}; 1024];

/// Whether `fd` is the agent's own userfaultfd (left out of images).
pub fn is_own_fd(fd: i32) -> bool {
    fd >= 0 && fd == UFFD.load(Relaxed) && UFFD_PID.load(Relaxed) == sys::getpid()
}

/// In a fork child: the parent's userfaultfd tracks nothing here (the child's regions are not
/// registered); close the inherited descriptor and forget the armed state.
#[link_section = ".text.hot.libcr_start"]
pub fn after_fork_child() {
    if UFFD.load(Acquire) >= 0 {
        let fd = UFFD.swap(-1, AcqRel);
        if fd >= 0 {
            sys::close(fd);
        }
    }
    if ARMED.load(Acquire) {
        ARMED.store(false, Release);
    }
    if RESTORED.load(Acquire) {
        RESTORED.store(false, Release);
    }
    forget_runs();
}

/// No candidates for hot pages (nothing is known about this address space's writes).
fn forget_runs() {
    for n in &N_RUNS {
        if n.load(Relaxed) != 0 {
            n.store(0, Relaxed);
        }
    }
}

/// In a restored process: nothing is registered, and the saved descriptor number means
/// nothing any more (it may be one of the program's now): forget it without closing.
pub fn after_restart() {
    UFFD.store(-1, Release);
    ARMED.store(false, Release);
    RESTORED.store(false, Release);
    N_RANGES.store(0, Release);
    forget_runs();
}

/// In a restored process, before its threads run again: when the restart was lazy (memory
/// mapped from the image `hash`, `size`, `depth` links deep; `hash` 0: not lazy), records the
/// image-backed mappings as they are now, so the first delta naming that image as its parent
/// saves only what the program wrote into them (see the module documentation).
pub fn restored(hash: u64, size: u64, depth: u32) {
    RESTORED.store(false, Release);
    if hash == 0 {
        return;
    }
    let mut n = 0usize;
    let mut full = false;
    let res = crate::kinds::each_line(b"/proc/self/maps\0", |line| {
        if let Some(m) = super::memory::parse_line(line) {
            if super::lazy::image_backed(&m) {
                if n == MAX_BACKED {
                    full = true;
                    return Ok(());
                }
                let dev = libc::makedev(m.major, m.minor);
                for (slot, v) in BACKED[n]
                    .iter()
                    .zip([m.start, m.end, m.offset, dev, m.inode])
                {
                    slot.store(v, Relaxed);
                }
                n += 1;
            }
        }
        Ok(())
    });
    // Mappings past the table are not found in it: saved in full, which is right too.
    let _ = full;
    if res.is_err() {
        return;
    }
    N_BACKED.store(n, Relaxed);
    RESTORED_HASH.store(hash, Relaxed);
    RESTORED_SIZE.store(size, Relaxed);
    RESTORED_DEPTH.store(depth, Relaxed);
    RESTORED.store(true, Release);
}

/// Where a private mapping of an image (of a lazy restart) is: its file and the file offset
/// at its start.
#[derive(Clone, Copy)]
pub struct ImageMapping {
    /// Device (`makedev`) of the image file.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
    /// File offset at the mapping's start.
    pub offset: u64,
}

/// Whether the image-backed mapping `[start, end)` at `im` is where the restart mapped it: each
/// of its addresses maps the file offset the restart gave it.
fn as_restored(start: u64, end: u64, im: &ImageMapping) -> bool {
    let n = N_BACKED.load(Relaxed).min(MAX_BACKED);
    BACKED[..n].iter().any(|b| {
        let [s, e, off, dev, ino] = core::array::from_fn(|k| b[k].load(Relaxed));
        dev == im.dev
            && ino == im.ino
            && s <= start
            && end <= e
            && off.wrapping_add(start - s) == im.offset
    })
}

/// Opens and sets up our userfaultfd in this process if needed.
fn ensure_uffd() -> Result<i32, Errno> {
    let pid = sys::getpid();
    let fd = UFFD.load(Acquire);
    if fd >= 0 && UFFD_PID.load(Acquire) == pid {
        return Ok(fd);
    }
    let flags = libc::O_CLOEXEC as usize | libc::O_NONBLOCK as usize | UFFD_USER_MODE_ONLY;
    let fd = sys::sys3(libc::SYS_userfaultfd as usize, flags, 0, 0)? as i32;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
        ioctls: 0,
    };
    if let Err(e) = ioctl(fd, UFFDIO_API, &mut api as *mut _ as usize) {
        sys::close(fd);
        return Err(e);
    }
    // Out of the program's way, as the control socket is.
    let high = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, super::control::high_fd_floor())
        .map(|h| h as i32)
        .unwrap_or(fd);
    if high != fd {
        sys::close(fd);
    }
    UFFD.store(high, Release);
    UFFD_PID.store(pid, Release);
    Ok(high)
}

fn ioctl(fd: i32, req: u64, arg: usize) -> Result<usize, Errno> {
    sys::sys3(libc::SYS_ioctl as usize, fd as usize, req as usize, arg)
}

/// Bytes of `start..end` (our own memory) in huge pages, by `PAGEMAP_SCAN` (`agent::bounce`
/// checks its ring with it); the errno where the kernel cannot say (older than 6.7).
pub fn huge_bytes(start: u64, end: u64) -> Result<u64, Errno> {
    let fd = sys::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)? as i32;
    let mut vec = [PageRegion {
        start: 0,
        end: 0,
        categories: 0,
    }; 16];
    let mut at = start;
    let mut huge = 0u64;
    let r = loop {
        if at >= end {
            break Ok(huge);
        }
        let mut arg = PmScanArg {
            category_mask: PAGE_IS_HUGE,
            return_mask: PAGE_IS_HUGE,
            ..PmScanArg::over(at, end, &mut vec)
        };
        match ioctl(fd, PAGEMAP_SCAN, &mut arg as *mut _ as usize) {
            Ok(n) => {
                huge += vec[..n.min(vec.len())]
                    .iter()
                    .map(|r| r.end - r.start)
                    .sum::<u64>();
            }
            Err(e) => break Err(e),
        }
        if arg.walk_end <= at {
            break Ok(huge);
        }
        at = arg.walk_end;
    };
    sys::close(fd);
    r
}

/// Decides, before anything is written, whether this checkpoint is a delta image (see the
/// module documentation).
pub fn begin(req_flags: u32, parent_hash: u64, parent_size: u64) {
    N_NEXT.store(0, Relaxed);
    N_TRACKED.store(0, Relaxed);
    N_UNTRACKED.store(0, Relaxed);
    N_HOT.store(0, Relaxed);
    N_UNWRITTEN_ZERO.store(0, Relaxed);
    N_RUNS[1 - CAND.load(Relaxed)].store(0, Relaxed);
    PROBE.store(false, Relaxed);
    AFTER_RESTORE.store(false, Relaxed);
    WHY.store(WHY_ASKED, Relaxed);
    if req_flags & protocol::FLAG_INCREMENTAL == 0 {
        MODE.store(OFF, Relaxed);
        return;
    }
    if let Err(e) = ensure_uffd() {
        KERNEL_ERRNO.store(e.0, Relaxed);
        WHY.store(WHY_KERNEL, Relaxed);
        MODE.store(OFF, Relaxed);
        return;
    }
    let why = if parent_hash == 0 {
        WHY_ASKED
    } else if ARMED.load(Acquire)
        && ARMED_HASH.load(Acquire) == parent_hash
        && ARMED_SIZE.load(Acquire) == parent_size
    {
        PROBE.store(SINCE_PROBE.load(Relaxed) + 1 >= PROBE_EVERY, Relaxed);
        MODE.store(DELTA, Relaxed);
        return;
    } else if RESTORED.load(Acquire)
        && RESTORED_HASH.load(Relaxed) == parent_hash
        && RESTORED_SIZE.load(Relaxed) == parent_size
    {
        // The image this process was lazily restored from (see the module documentation).
        ARMED_DEPTH.store(RESTORED_DEPTH.load(Relaxed), Relaxed);
        AFTER_RESTORE.store(true, Relaxed);
        MODE.store(DELTA, Relaxed);
        return;
    } else if !ARMED.load(Acquire) {
        WHY_NOT_ARMED
    } else {
        WHY_OTHER_PARENT
    };
    WHY.store(why, Relaxed);
    MODE.store(FULL, Relaxed);
}

/// Whether the image being written is a delta image.
pub fn is_delta() -> bool {
    MODE.load(Relaxed) == DELTA
}

/// The `REC_PARENT` record of a delta image.
pub fn parent_record(req: &Request) -> ParentRec {
    ParentRec {
        size: req.parent_size,
        trailer_hash: req.parent_hash,
        depth: ARMED_DEPTH.load(Relaxed) + 1,
        path_len: req.parent_path_len.min(req.parent_path.len() as u32),
    }
}

/// Whether a region of `kind` with protection `prot` is write-tracked (`image`: it maps the
/// image of a lazy restart, which stands for anonymous memory).
fn eligible(kind: RegionKind, prot: u32, shared: bool, image: bool) -> bool {
    (matches!(kind, RegionKind::Anon | RegionKind::Stack) || image)
        && !shared
        && prot & libc::PROT_WRITE as u32 != 0
}

fn was_armed(start: u64, end: u64) -> bool {
    let n = N_RANGES.load(Relaxed).min(MAX_RANGES);
    RANGES[..n]
        .iter()
        .any(|r| r[0].load(Relaxed) < end && start < r[1].load(Relaxed))
}

fn note_next(start: u64, end: u64, tracked: bool) {
    let i = N_NEXT.load(Relaxed);
    if i < MAX_RANGES {
        NEXT[i][0].store(start, Relaxed);
        NEXT[i][1].store(end, Relaxed);
        NEXT[i][2].store(tracked as u64, Relaxed);
        N_NEXT.store(i + 1, Relaxed);
    }
}

/// What a delta image records for a tracked region besides its extents.
pub struct Tracked {
    /// `[start, end)` pairs of written pages that read as zero now (`REC_REGION_INCR`).
    pub holes: &'static [u64],
}

/// Scans one region of the image being written. For a tracked region of a delta image, calls
/// `push(addr, len)` for every run of written pages that hold data and returns the holes (the
/// body of its `REC_REGION_INCR`); `None`: the caller saves the region in full. Either way the
/// region is noted for arming once the image is written, when it is eligible. When it returns
/// `None` after calling `push`, the caller drops what was pushed. `image`: the region is a
/// private mapping of the image of a lazy restart (`agent::lazy`).
#[allow(clippy::too_many_arguments)]
pub fn scan_region(
    start: u64,
    end: u64,
    prot: u32,
    shared: bool,
    kind: RegionKind,
    image: Option<ImageMapping>,
    pagemap_fd: i32,
    mut push: impl FnMut(u64, u64) -> Result<(), Errno>,
) -> Result<Option<Tracked>, Errno> {
    let mode = MODE.load(Relaxed);
    if mode == OFF {
        return Ok(None);
    }
    let ok = eligible(kind, prot, shared, image.is_some());
    if mode == DELTA && AFTER_RESTORE.load(Relaxed) {
        return match image.filter(|im| ok && as_restored(start, end, im)) {
            Some(_) => scan_own_pages(start, end, pagemap_fd, push).map(Some),
            None => {
                if ok {
                    note_next(start, end, false);
                    N_UNTRACKED.fetch_add(1, Relaxed);
                }
                Ok(None)
            }
        };
    }
    if mode != DELTA || !ok || !was_armed(start, end) {
        if ok {
            note_next(start, end, false);
            if mode == DELTA {
                N_UNTRACKED.fetch_add(1, Relaxed);
            }
        }
        return Ok(None);
    }
    // SAFETY: only the control thread, one checkpoint at a time, uses these buffers.
    let (vec, holes) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(VEC),
            &mut *core::ptr::addr_of_mut!(HOLES),
        )
    };
    let mut nholes = 0usize;
    let mut at = start;
    let mut first = true;
    let cand = candidates();
    let mut ci = cand.partition_point(|r| r[1] <= start);
    // The pieces of the region: runs written last time (candidates: scanned without protecting
    // again, so what is written in them now stays unprotected, hot) and the rest.
    let mut piece_end = start;
    let mut hot = false;
    while at < end {
        if at >= piece_end {
            while ci < cand.len() && cand[ci][1] <= at {
                ci += 1;
            }
            (hot, piece_end) = match cand.get(ci) {
                Some(r) if r[0] <= at => (true, r[1].min(end)),
                Some(r) => (false, r[0].min(end)),
                None => (false, end),
            };
        }
        let wp = if hot { 0 } else { PM_SCAN_WP_MATCHING };
        let guard_mask = if NO_GUARD_CATEGORY.load(Relaxed) {
            0
        } else {
            PAGE_IS_GUARD
        };
        // The pages written, and every page that is not present (see the module
        // documentation): with `category_inverted` PAGE_IS_PRESENT, "any of WRITTEN, PRESENT"
        // is "written or not present". Swapped pages (and the kernel's write-protect markers of
        // pages never populated, which count as swapped) that are not written are reported too
        // and skipped.
        let mut arg = PmScanArg {
            flags: wp | PM_SCAN_CHECK_WPASYNC,
            category_inverted: PAGE_IS_PRESENT,
            category_anyof_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
            return_mask: PAGE_IS_WRITTEN
                | PAGE_IS_PRESENT
                | PAGE_IS_SWAPPED
                | PAGE_IS_PFNZERO
                | guard_mask,
            ..PmScanArg::over(at, piece_end, vec)
        };
        let n = match ioctl(pagemap_fd, PAGEMAP_SCAN, &mut arg as *mut _ as usize) {
            Ok(n) => n.min(vec.len()),
            // A kernel without the guard category: the same piece again without it.
            Err(Errno(libc::EINVAL)) if guard_mask != 0 => {
                NO_GUARD_CATEGORY.store(true, Relaxed);
                continue;
            }
            // Not registered (mapped again, moved) before anything of it was protected again:
            // saved in full.
            Err(Errno(libc::EPERM)) if first => {
                note_next(start, end, false);
                N_UNTRACKED.fetch_add(1, Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        first = false;
        for r in &vec[..n] {
            let c = r.categories;
            let populated = c & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) != 0;
            if c & PAGE_IS_WRITTEN != 0 {
                note_run(r.start, r.end);
                if hot {
                    N_HOT.fetch_add((r.end - r.start) / PAGE as u64, Relaxed);
                }
            } else if populated {
                // Swapped out (or never populated, protected) and not written: the parent's.
                continue;
            } else {
                // Neither present nor swapped, yet not reported written: a range without page
                // table that this kernel does not count as written (see the module documentation).
                N_UNWRITTEN_ZERO.fetch_add((r.end - r.start) / PAGE as u64, Relaxed);
            }
            // A page of an image mapping that is not present reads as the file's page (dropped
            // by a raw MADV_DONTNEED): saved as it reads, not as zero.
            // A guard page (MADV_GUARD_INSTALL) faults when read: never read, a hole (zero
            // after restart, as a full image leaves it: `memory::note_guard`).
            let guard = c & PAGE_IS_GUARD != 0;
            if guard {
                super::memory::note_guard((r.end - r.start) / PAGE as u64);
            }
            let data = !guard && (image.is_some() || c & PAGE_IS_PFNZERO == 0 && populated);
            if data {
                push(r.start, r.end - r.start)?;
            } else if nholes > 0 && holes[2 * nholes - 1] == r.start {
                holes[2 * nholes - 1] = r.end;
            } else if nholes < MAX_HOLES {
                holes[2 * nholes] = r.start;
                holes[2 * nholes + 1] = r.end;
                nholes += 1;
            } else {
                // Too many holes to record: the written pages of this region are protected
                // again already (or left unprotected as hot, reported again by the next scan),
                // which is right for a region saved in full too.
                note_next(start, end, true);
                N_UNTRACKED.fetch_add(1, Relaxed);
                return Ok(None);
            }
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    note_next(start, end, true);
    N_TRACKED.fetch_add(1, Relaxed);
    Ok(Some(Tracked {
        holes: &holes[..2 * nholes],
    }))
}

/// `PAGEMAP_SCAN` failed on this kernel for [`populated_runs`] (none, or without the guard
/// category): `/proc/self/pagemap` is read instead.
static NO_POPULATED_SCAN: AtomicBool = AtomicBool::new(false);

/// The runs of `start..end` whose pages are present or swapped out, given to
/// `f(start, end, zero, huge)` in address order (`zero`: every page of the run maps the shared
/// zero page; `huge`: the run is mapped by transparent huge pages, `PAGE_IS_HUGE`); guard pages are counted (`memory::note_guard`) and left out. One `PAGEMAP_SCAN`
/// answers for many pages from their page table entries alone, where a read of
/// `/proc/self/pagemap` looks up each page's `struct page` and writes 8 bytes for it (2/3 of a
/// 4 GiB checkpoint's metadata phase: `vm_normal_page` and `pagemap_pmd_range`, perf).
/// `buf` (8-byte aligned) holds the scan's output. `Ok(false)`: this kernel cannot (no
/// `PAGEMAP_SCAN`, or no `PAGE_IS_GUARD`), nothing was reported: read pagemap instead.
pub fn populated_runs(
    pagemap_fd: i32,
    start: u64,
    end: u64,
    buf: &mut [u8],
    mut f: impl FnMut(u64, u64, bool, bool) -> Result<(), Errno>,
) -> Result<bool, Errno> {
    if NO_POPULATED_SCAN.load(Relaxed) {
        return Ok(false);
    }
    let n_vec = buf.len() / core::mem::size_of::<PageRegion>();
    if n_vec == 0 || !(buf.as_ptr() as usize).is_multiple_of(8) {
        return Ok(false);
    }
    // SAFETY: `buf` is ours, 8-byte aligned and holds `n_vec` PageRegions (three u64s, any bit
    // pattern valid).
    let vec =
        unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut PageRegion, n_vec) };
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_GUARD,
            return_mask: PAGE_IS_PRESENT
                | PAGE_IS_SWAPPED
                | PAGE_IS_PFNZERO
                | PAGE_IS_GUARD
                | PAGE_IS_HUGE,
            ..PmScanArg::over(at, end, vec)
        };
        let n = match ioctl(pagemap_fd, PAGEMAP_SCAN, &mut arg as *mut _ as usize) {
            Ok(n) => n.min(vec.len()),
            Err(Errno(libc::EINVAL)) | Err(Errno(libc::ENOTTY)) if at == start => {
                NO_POPULATED_SCAN.store(true, Relaxed);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        for r in &vec[..n] {
            if r.categories & PAGE_IS_GUARD != 0 {
                super::memory::note_guard((r.end - r.start) / PAGE as u64);
                continue;
            }
            f(
                r.start,
                r.end,
                r.categories & PAGE_IS_PFNZERO != 0,
                r.categories & PAGE_IS_HUGE != 0,
            )?;
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(true)
}

/// The candidates for hot pages of the delta being written: the runs the last successful
/// delta's scans reported written (none in a probe, see the module documentation).
fn candidates() -> &'static [[u64; 2]] {
    if PROBE.load(Relaxed) {
        return &[];
    }
    let c = CAND.load(Relaxed);
    let n = N_RUNS[c].load(Relaxed).min(MAX_RUNS);
    // SAFETY: only the control thread, one checkpoint at a time, uses these lists; the
    // candidates are not written during a checkpoint.
    unsafe { &(&*core::ptr::addr_of!(RUNS))[c][..n] }
}

/// Records the written run `[start, end)` in the list being built (ascending; merged with the
/// run before it when adjacent). Past [`MAX_RUNS`] runs, or out of order, it is left out: it
/// is then protected again next time as any page outside the candidates.
fn note_run(start: u64, end: u64) {
    let l = 1 - CAND.load(Relaxed);
    let n = N_RUNS[l].load(Relaxed);
    // SAFETY: as in `candidates`; this list is not the candidates.
    let runs = unsafe { &mut (*core::ptr::addr_of_mut!(RUNS))[l] };
    if n > 0 && runs[n - 1][1] == start {
        runs[n - 1][1] = end;
    } else if n < MAX_RUNS && (n == 0 || runs[n - 1][1] < start) {
        runs[n] = [start, end];
        N_RUNS[l].store(n + 1, Relaxed);
    }
}

/// The first delta after a lazy restart, for an image-backed region where the restart mapped
/// it: pushes the pages that are the program's own now (not file pages: written since the
/// restart); the others are the parent's (the image restarted from). Notes the region for
/// arming.
fn scan_own_pages(
    start: u64,
    end: u64,
    pagemap_fd: i32,
    mut push: impl FnMut(u64, u64) -> Result<(), Errno>,
) -> Result<Tracked, Errno> {
    // SAFETY: only the control thread, one checkpoint at a time, uses this buffer.
    let vec = unsafe { &mut *core::ptr::addr_of_mut!(VEC) };
    let mut at = start;
    while at < end {
        let guard_mask = if NO_GUARD_CATEGORY.load(Relaxed) {
            0
        } else {
            PAGE_IS_GUARD
        };
        let mut arg = PmScanArg {
            category_inverted: PAGE_IS_FILE,
            category_mask: PAGE_IS_FILE,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | guard_mask,
            ..PmScanArg::over(at, end, vec)
        };
        let n = match ioctl(pagemap_fd, PAGEMAP_SCAN, &mut arg as *mut _ as usize) {
            Ok(n) => n.min(vec.len()),
            Err(Errno(libc::EINVAL)) if guard_mask != 0 => {
                NO_GUARD_CATEGORY.store(true, Relaxed);
                continue;
            }
            Err(e) => return Err(e),
        };
        for r in &vec[..n] {
            if r.categories & PAGE_IS_GUARD != 0 {
                // Faults when read: left out (the parent's page stands there).
                super::memory::note_guard((r.end - r.start) / PAGE as u64);
                continue;
            }
            push(r.start, r.end - r.start)?;
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    note_next(start, end, false);
    N_TRACKED.fetch_add(1, Relaxed);
    Ok(Tracked { holes: &[] })
}

/// Set in a copy-on-write writer (a forked copy of the program, whose memory nobody tracks):
/// [`written`] does nothing there; the program arms itself in the stop ([`arm_now`]) and
/// remembers the image once the writer succeeded ([`remember`]).
static IN_WRITER: AtomicBool = AtomicBool::new(false);

/// [`arm_now`] armed this checkpoint's regions (our userfaultfd was usable).
static ARM_DONE: AtomicBool = AtomicBool::new(false);

/// Called first thing in a copy-on-write writer (its own copy of this variable).
pub fn in_writer() {
    IN_WRITER.store(true, Relaxed);
}

/// Whether this checkpoint is incremental (a delta, or a full image that arms tracking).
pub fn active() -> bool {
    MODE.load(Relaxed) != OFF
}

/// The image is written: arm every eligible region that is not protected yet, and remember
/// the image (`trailer_hash`, `size`) the next delta may name as its parent.
pub fn written(trailer_hash: u64, size: u64) {
    if IN_WRITER.load(Relaxed) || MODE.load(Relaxed) == OFF {
        return;
    }
    arm_now();
    remember(trailer_hash, size);
}

/// A copy-on-write incremental checkpoint, in the stop, once its memory records are built
/// (the scans protected the written pages again): arms every eligible region not protected
/// yet, so that every write after the snapshot is seen. Nothing is armed for a parent until
/// [`remember`] names the image.
pub fn arm_now() {
    ARMED.store(false, Release);
    ARM_DONE.store(false, Relaxed);
    if MODE.load(Relaxed) == OFF {
        return;
    }
    let Ok(fd) = ensure_uffd() else {
        return;
    };
    ARM_DONE.store(true, Relaxed);
    let n = N_NEXT.load(Relaxed).min(MAX_RANGES);
    let mut armed = 0usize;
    for r in &NEXT[..n] {
        let (start, end, tracked) = (r[0].load(Relaxed), r[1].load(Relaxed), r[2].load(Relaxed));
        let ok = tracked != 0 || arm(fd, start, end).is_ok();
        if ok {
            RANGES[armed][0].store(start, Relaxed);
            RANGES[armed][1].store(end, Relaxed);
            armed += 1;
        }
    }
    N_RANGES.store(armed, Relaxed);
}

/// The image armed for by [`arm_now`] is written and committed by its writer: the next delta
/// may name it (`trailer_hash`, `size`) as its parent.
pub fn remember(trailer_hash: u64, size: u64) {
    let mode = MODE.load(Relaxed);
    if mode == OFF || !ARM_DONE.load(Relaxed) {
        return;
    }
    let depth = if mode == DELTA {
        ARMED_DEPTH.load(Relaxed) + 1
    } else {
        0
    };
    ARMED_DEPTH.store(depth, Relaxed);
    if mode == DELTA && !AFTER_RESTORE.load(Relaxed) {
        // This delta's written runs are the next one's candidates for hot pages.
        CAND.store(1 - CAND.load(Relaxed), Relaxed);
        let probed = PROBE.load(Relaxed);
        SINCE_PROBE.store(
            if probed {
                0
            } else {
                SINCE_PROBE.load(Relaxed) + 1
            },
            Relaxed,
        );
    } else {
        // A full image protected everything (the candidates stay: they are as good a guess of
        // what is written next as any).
        SINCE_PROBE.store(0, Relaxed);
    }
    ARMED_HASH.store(trailer_hash, Relaxed);
    ARMED_SIZE.store(size, Relaxed);
    ARMED.store(true, Release);
}

/// The checkpoint failed after its scans protected pages again: what was written since the
/// parent is not known any more, so the next incremental checkpoint is a full image.
pub fn failed() {
    if MODE.load(Relaxed) != OFF {
        ARMED.store(false, Release);
    }
}

fn arm(fd: i32, start: u64, end: u64) -> Result<(), Errno> {
    let range = UffdioRange {
        start,
        len: end - start,
    };
    let mut reg = UffdioRegister {
        range,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    ioctl(fd, UFFDIO_REGISTER, &mut reg as *mut _ as usize)?;
    let mut wp = UffdioWriteprotect {
        range,
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    ioctl(fd, UFFDIO_WRITEPROTECT, &mut wp as *mut _ as usize)?;
    Ok(())
}

/// Appends what this checkpoint did (" incr=delta(…)" or " incr=full(why)") to the report
/// `cr_checkpoint -v` prints and the result carries.
pub fn describe(out: &mut StackBuf<240>) {
    match MODE.load(Relaxed) {
        DELTA => {
            out.push(b" incr=delta(tracked ")
                .num(N_TRACKED.load(Relaxed) as u64)
                .push(b" regions, ")
                .num(N_UNTRACKED.load(Relaxed) as u64)
                .push(b" in full");
            let hot = N_HOT.load(Relaxed);
            if hot > 0 {
                out.push(b", ").num(hot).push(b" hot pages");
            }
            if PROBE.load(Relaxed) {
                out.push(b", all protected again");
            }
            let zero = N_UNWRITTEN_ZERO.load(Relaxed);
            if zero > 0 {
                out.push(b", ")
                    .num(zero)
                    .push(b" unreported pages with no page table");
            }
            if AFTER_RESTORE.load(Relaxed) {
                out.push(b", of the image lazily restored from");
            }
            out.push(b")");
        }
        FULL => {
            out.push(b" incr=full(");
            out.push(match WHY.load(Relaxed) {
                WHY_NOT_ARMED => b"nothing armed here: first incremental checkpoint of this process, or after a restart or fork".as_slice(),
                WHY_OTHER_PARENT => b"the parent is not the image write-tracking was armed for",
                _ => b"asked",
            });
            out.push(b")");
        }
        _ if WHY.load(Relaxed) == WHY_KERNEL => {
            out.push(b" incr=full(userfaultfd write-protect unavailable: errno ")
                .num(KERNEL_ERRNO.load(Relaxed) as u64)
                .push(b")");
        }
        _ => {}
    }
}
