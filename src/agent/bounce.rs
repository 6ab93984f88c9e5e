//! The bounce ring of a stopped checkpoint's page data (issue 11 target 1): [`SLOTS`] buffers of
//! [`PIECE`] bytes in transparent huge pages, mapped and populated before the program is
//! stopped, left out of the image ([`contains`], `memory::agent_own`), unmapped once the
//! checkpoint is done.
//!
//! **Why.** A direct write reads the program's pages where they are in physical memory. Fresh
//! memory filled in order is physically contiguous on this kernel, and the virtio disk takes it
//! as ~4 MiB requests; a long-running process's pages are scattered, and a 1 MiB bio of 256
//! scattered 4 KiB pages is cut at the disk's 254 segments: 4 GiB went as ~8 200 requests of
//! 512 KiB, 1.5-2× the time of the same bytes contiguous (docs/PERFORMANCE.md, "What remains: a
//! stopped checkpoint of memory that is not physically contiguous"). Copied first into 2 MiB
//! pages, each 8 MiB piece is four physically contiguous runs: the contiguous memory's rate
//! again, for a copy the CPU does while the disk writes the pieces before it.
//!
//! **How** (`memory::write_data_from`): the AIO ring (`agent::aio`) gets one slot per buffer;
//! a piece is copied into the free slot's buffer in chunks of [`COPY`] bytes, each hashed right
//! after its copy (from the cache: the page data is read from memory once, as before), then
//! submitted, while up to `SLOTS - 1` pieces before it are on the disk. The hash is that of
//! the bytes written. No allocation, no lock, no stdio in the stop: the ring is mapped before
//! it ([`Bounce::map`], control thread), its address in the statics below.
//!
//! **When not.** `LIBCR_BOUNCE=0` at start-up turns it off (for measurements); a process with
//! less than [`MIN_RSS`] in memory does not map one (its write is short either way); where the
//! kernel does not give huge pages for the whole ring (THP `never`, `madvise` refused,
//! compaction failed: checked with `PAGEMAP_SCAN`'s `PAGE_IS_HUGE`), the page data is written
//! straight from the program's memory as before. `cr_checkpoint -v` says which:
//! `write=aio+bounce(thp)`, or `write=aio(no bounce: …)` and why. A `--cow` request maps no
//! ring in the program ([`not_mapped_for_cow`]); written stopped after all, it says
//! `(no bounce: --cow)`, never how the last checkpoint's ring went.
//!
//! **A copy-on-write writer** (`agent::cow`) maps a ring of its own, after the fork
//! ([`for_writer`]: the same buffers and checks, never unmapped, the writer exits), and passes
//! it to `memory::write_data_from`, which writes through it as above; where it is refused, the
//! writer's one-piece buffer of before (synchronous writes), and `-v` says
//! `write=sync(bounce buffer; no ring: …)`. The control thread gets how it went through the
//! writer's page ([`set_writer_report`]).
//!
//! **What it does not cover.** `--compress` split images (`memory::write_split`) and
//! the pieces of a delta copied into the delta buffer (`agent::deltabuf`) are written from
//! where they are. A delta written stopped from memory (`memory::write_data_from`) goes through
//! the ring like a full image.
//!
//! **A write given up** (`agent::offload`): the pieces in flight read the ring, whose pages a
//! direct write pins, so unmapping it while they are still on their way is safe; what a helper
//! that has not pinned them yet reads instead goes only into the abandoned file, which is
//! removed.

use crate::sys;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::*};

/// Bytes of one buffer: a piece of the AIO ring (`memory::WRITE_CHUNK`).
pub const PIECE: usize = 8 << 20;
/// Buffers: `aio::DEPTH` pieces on the disk while the next one is copied.
pub const SLOTS: usize = super::aio::DEPTH + 1;
/// Bytes copied (then hashed from the cache) at a time.
pub const COPY: usize = 256 << 10;
/// A process with less than this in memory (`/proc/self/statm`) writes without the ring.
pub const MIN_RSS: u64 = 32 << 20;
const HUGE: usize = 2 << 20;
/// Bytes of the ring: a buffer of at least this length given to `memory::write_data_from` (a
/// copy-on-write writer's, [`for_writer`]) is a ring of [`SLOTS`] pieces.
pub const RING_LEN: usize = PIECE * SLOTS;

/// The ring of this checkpoint (aligned address; 0: none), and the mapping it lies in.
static BASE: AtomicUsize = AtomicUsize::new(0);
static MAP: AtomicUsize = AtomicUsize::new(0);
/// Why there is no ring ([`Why`] as a number), or how it is ([`THP`], [`UNCHECKED`]).
static STATE: AtomicU32 = AtomicU32::new(OFF_NONE);
/// The errno of [`OFF_MAP`] / [`UNCHECKED`], or the MiB in huge pages of [`OFF_SMALL_PAGES`].
static DETAIL: AtomicI32 = AtomicI32::new(0);
/// `LIBCR_BOUNCE` at start-up: 0 off, 1 on (even for a small process), 2 default.
static KNOB: AtomicU32 = AtomicU32::new(2);

/// [`STATE`]: no ring was asked for (not yet, or a restored process).
const OFF_NONE: u32 = 0;
/// Turned off with `LIBCR_BOUNCE=0`.
const OFF_KNOB: u32 = 1;
/// The process has less than [`MIN_RSS`] in memory.
const OFF_SMALL: u32 = 2;
/// `mmap` (or `madvise(MADV_DONTFORK)`) failed ([`DETAIL`]: errno).
const OFF_MAP: u32 = 3;
/// Not all of the ring is in huge pages ([`DETAIL`]: MiB that are).
const OFF_SMALL_PAGES: u32 = 4;
/// The ring is in huge pages.
const THP: u32 = 5;
/// The kernel could not say whether it is (`PAGEMAP_SCAN` failed, [`DETAIL`]: errno): used.
const UNCHECKED: u32 = 6;
/// A `--cow` request: no ring in the program (its writer maps one of its own). Said when it is
/// written stopped after all (`agent::cow`'s notes): `write=aio(no bounce: --cow)`.
const OFF_COW: u32 = 7;

/// At start-up: reads `LIBCR_BOUNCE` (`0`: never, `1`: always, also for a small process).
pub fn init() {
    match super::env_at_init(c"LIBCR_BOUNCE") {
        Some(b"0") => KNOB.store(0, Relaxed),
        Some(b"1") => KNOB.store(1, Relaxed),
        _ => {}
    }
}

/// The ring's buffers, if this checkpoint has them: the address of the first ([`slot`]).
pub fn get() -> Option<usize> {
    let b = BASE.load(Acquire);
    (b != 0).then_some(b)
}

/// The buffer of slot `i` of the ring at `base`.
pub fn slot(base: usize, i: usize) -> usize {
    base + (i % SLOTS) * PIECE
}

/// Whether `addr` lies in the ring's mapping (left out of images like the scratch area).
pub fn contains(addr: u64) -> bool {
    let m = MAP.load(Acquire) as u64;
    m != 0 && (m..m + (RING_LEN + HUGE) as u64).contains(&addr)
}

/// The ring of one checkpoint: mapped by [`Bounce::map`], unmapped when dropped.
pub struct Bounce(());

impl Bounce {
    /// Maps and populates the ring, before the program is stopped (control thread), unless
    /// turned off or not worth it; [`STATE`] says how it went.
    pub fn map() -> Bounce {
        forget_ring();
        let (state, detail) = map_ring();
        STATE.store(state, Relaxed);
        DETAIL.store(detail, Relaxed);
        Bounce(())
    }
}

/// [`Bounce::map`]'s work: the ring's state and detail.
fn map_ring() -> (u32, i32) {
    if let Some(off) = refused_by_knob() {
        return (off, 0);
    }
    let (map, base) = match map_populated(RING_LEN, Owner::Program) {
        Ok(m) => m,
        Err(e) => return (OFF_MAP, e.0),
    };
    // Left out of images from now on (`memory::agent_own`; the program is not stopped yet).
    MAP.store(map, Release);
    let (state, detail) = huge_verdict(base, RING_LEN);
    if state == OFF_SMALL_PAGES {
        // Scattered 4 KiB pages of our own would gain nothing: written straight from the
        // program's memory.
        unmap();
    } else {
        BASE.store(base, Release);
    }
    (state, detail)
}

/// Why no ring is mapped at all, whatever the kernel would give: turned off (`LIBCR_BOUNCE=0`),
/// or a process with less than [`MIN_RSS`] in memory (unless `LIBCR_BOUNCE=1`). `None`: a ring
/// is wanted.
fn refused_by_knob() -> Option<u32> {
    match KNOB.load(Relaxed) {
        0 => Some(OFF_KNOB),
        2 if resident() < MIN_RSS => Some(OFF_SMALL),
        _ => None,
    }
}

/// Whether the `len` bytes at `base` came in transparent huge pages: ([`THP`], 0), or
/// ([`OFF_SMALL_PAGES`], the MiB that did), or ([`UNCHECKED`], errno) where the kernel cannot
/// say (`PAGEMAP_SCAN`).
fn huge_verdict(base: usize, len: usize) -> (u32, i32) {
    match super::incremental::huge_bytes(base as u64, (base + len) as u64) {
        Ok(n) if n >= len as u64 => (THP, 0),
        Ok(n) => (OFF_SMALL_PAGES, (n >> 20) as i32),
        Err(e) => (UNCHECKED, e.0),
    }
}

/// A `--cow` request (control thread, before the stop): no ring is mapped in the program.
/// [`STATE`] says why for this request ([`OFF_COW`], or what would have refused a ring anyway),
/// not how the last checkpoint's ring went (a `--cow` request written stopped after all said
/// that); the writer's report replaces it once it ends ([`set_writer_report`]).
pub fn not_mapped_for_cow() {
    forget_ring();
    STATE.store(refused_by_knob().unwrap_or(OFF_COW), Relaxed);
    DETAIL.store(0, Relaxed);
}

impl Drop for Bounce {
    fn drop(&mut self) {
        unmap();
    }
}

/// The page data buffer of a copy-on-write writer (`agent::cow`): a ring of its own, as
/// [`Bounce::map`] makes one (mapped and populated in the writer, after the fork: the
/// program's ring is `MADV_DONTFORK`, and pages a fork shares would be unshared, copied, by
/// the direct writes that pin them), or, where the ring is refused (turned off, a small
/// process, no huge pages for all of it, `mmap` failed), the writer's one-piece buffer of
/// [`memory::BOUNCE_LEN`](super::memory::BOUNCE_LEN) bytes. Never unmapped: the writer exits.
pub struct WriterBuf {
    /// The ring's [`SLOTS`] buffers ([`RING_LEN`] bytes: `memory::write_data_from` writes
    /// through the AIO ring from them), or the one-piece buffer.
    pub buf: &'static mut [u8],
    /// How the ring went ([`THP`], [`UNCHECKED`], or why not), and its detail, for the
    /// control thread's `-v` ([`set_writer_report`]).
    pub state: u32,
    pub detail: i32,
}

/// Maps [`WriterBuf`] (in the writer process, one thread, raw system calls only). Err: not
/// even the one-piece buffer could be mapped.
pub fn for_writer() -> Result<WriterBuf, sys::Errno> {
    let one = super::memory::BOUNCE_LEN;
    let fallback = |state: u32, detail: i32| -> Result<WriterBuf, sys::Errno> {
        let base = map_populated(one, Owner::Writer)?.1;
        // SAFETY: a fresh private mapping of `one` bytes from `base`, the writer's alone.
        let buf = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, one) };
        Ok(WriterBuf { buf, state, detail })
    };
    if let Some(off) = refused_by_knob() {
        return fallback(off, 0);
    }
    let (map, base) = match map_populated(RING_LEN, Owner::Writer) {
        Ok(m) => m,
        Err(e) => return fallback(OFF_MAP, e.0),
    };
    let (state, detail) = huge_verdict(base, RING_LEN);
    // Scattered 4 KiB pages: the one-piece buffer of before, out of the ring's first piece
    // (the rest given back).
    let len = if state == OFF_SMALL_PAGES {
        one
    } else {
        RING_LEN
    };
    if len < RING_LEN {
        sys::munmap(base + len, map + RING_LEN + HUGE - (base + len));
    }
    // SAFETY: a fresh private mapping, `len` bytes from `base` lie inside it; the writer's alone.
    let buf = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, len) };
    Ok(WriterBuf { buf, state, detail })
}

/// Whose buffer [`map_populated`] maps.
#[derive(Clone, Copy, PartialEq)]
enum Owner {
    /// A stopped checkpoint's ring, in the program's address space ([`Bounce::map`]):
    /// `MAP_NORESERVE` (as since the ring's first version, 771801b; the writer's never was),
    /// and the whole mapping `MADV_DONTFORK` before it is populated. A private anonymous mapping next to one of the program's with the same
    /// flags is merged with it by the kernel (one line of /proc/self/maps), and a region that
    /// starts in the ring would have been left out of the image whole, program memory
    /// included (a restored tree crashed so in tests/faults.rs). `MADV_DONTFORK` gives the
    /// ring flags of its own (split from any neighbour it was merged with at `mmap`), and a
    /// fork of the program (the copy-on-write writer) does not get it; a region is left out
    /// only when it lies wholly in the ring (`memory::agent_own`). Where that mark is refused,
    /// no ring.
    Program,
    /// A copy-on-write writer's ([`for_writer`]): a fork already, which forks no one, whose
    /// address space is read before its buffer is mapped.
    Writer,
}

/// A private anonymous mapping with `len` bytes at a 2 MiB boundary, advised `MADV_HUGEPAGE`
/// there and populated, for `owner`: (mapping, aligned address). The mapping is `len` +
/// 2 MiB long.
fn map_populated(len: usize, owner: Owner) -> Result<(usize, usize), sys::Errno> {
    let noreserve = if owner == Owner::Program {
        libc::MAP_NORESERVE
    } else {
        0
    };
    let map = sys::mmap(
        0,
        len + HUGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | noreserve,
        -1,
        0,
    )?;
    if owner == Owner::Program {
        if let Err(e) = sys::sys3(
            libc::SYS_madvise as usize,
            map,
            len + HUGE,
            libc::MADV_DONTFORK as usize,
        ) {
            sys::munmap(map, len + HUGE);
            return Err(e);
        }
    }
    let base = (map + HUGE - 1) & !(HUGE - 1);
    // (Refused where there are no transparent huge pages: the verdict says so,
    // [`huge_verdict`].)
    let _ = sys::sys3(
        libc::SYS_madvise as usize,
        base,
        len,
        libc::MADV_HUGEPAGE as usize,
    );
    // Populated now, outside the stop (a page never written would be the shared zero page).
    // SAFETY: our fresh mapping, `len` bytes from `base` lie inside it.
    unsafe { core::ptr::write_bytes(base as *mut u8, 0, len) };
    Ok((map, base))
}

/// The control thread, once its copy-on-write writer ended: how the writer's ring went
/// ([`WriterBuf::state`], `detail`), for [`describe`].
pub fn set_writer_report(state: u32, detail: i32) {
    STATE.store(state, Relaxed);
    DETAIL.store(detail, Relaxed);
}

/// Unmaps the ring (if any) and forgets it.
fn unmap() {
    let m = MAP.load(Acquire);
    forget_ring();
    if m != 0 {
        sys::munmap(m, RING_LEN + HUGE);
    }
}

/// Forgets the ring without unmapping it.
fn forget_ring() {
    BASE.store(0, Release);
    MAP.store(0, Release);
}

/// In a restored process: the ring was never part of the image; forget it (never unmap: the
/// address may be the program's now). The [`Bounce`] of the checkpoint is forgotten too.
pub fn after_restart(b: Bounce) {
    core::mem::forget(b);
    forget_ring();
    STATE.store(OFF_NONE, Relaxed);
}

/// Bytes of this process in memory (`/proc/self/statm`'s resident pages; 0 if unknown).
fn resident() -> u64 {
    let mut buf = [0u8; 128];
    let Ok(fd) = sys::open(b"/proc/self/statm\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return 0;
    };
    let n = sys::read(fd as i32, &mut buf).unwrap_or(0);
    sys::close(fd as i32);
    let mut fields = buf[..n].split(|&c| c == b' ');
    let _size = fields.next();
    let pages = fields.next().map_or(0, |f| {
        f.iter()
            .take_while(|c| c.is_ascii_digit())
            .fold(0u64, |a, &c| a * 10 + u64::from(c - b'0'))
    });
    pages * crate::image::format::PAGE as u64
}

/// Appends how the page data went through the AIO ring to `-v`'s `write=aio`: `+bounce(thp)`
/// when it was copied through the ring (`used`), else why not (nothing for a small process:
/// not a path refused, and the whole report is one reply of 240 bytes).
pub fn describe(used: bool, out: &mut crate::sys::StackBuf<240>) {
    let st = STATE.load(Relaxed);
    let d = DETAIL.load(Relaxed);
    if used {
        out.push(b"+bounce(thp");
        if st == UNCHECKED {
            out.push(b"? errno ").num(d as u64);
        }
        out.push(b")");
        return;
    }
    if why_not(st, d, b"(no bounce: ", out) {
        out.push(b")");
    }
}

/// Appends `prefix` and why there is no ring, unless there is nothing to say (a small process,
/// a ring used, none asked for); returns whether it did.
fn why_not(st: u32, d: i32, prefix: &[u8], out: &mut crate::sys::StackBuf<240>) -> bool {
    match st {
        OFF_KNOB => {
            out.push(prefix).push(b"LIBCR_BOUNCE=0");
        }
        OFF_MAP => {
            out.push(prefix).push(b"mmap errno ").num(d as u64);
        }
        OFF_COW => {
            out.push(prefix).push(b"--cow");
        }
        OFF_SMALL_PAGES => {
            out.push(prefix)
                .push(b"thp ")
                .num(d as u64)
                .push(b"/")
                .num((RING_LEN >> 20) as u64)
                .push(b" MiB");
        }
        _ => return false,
    }
    true
}

/// A copy-on-write writer that wrote through its one-piece buffer (`write=sync(bounce buffer`):
/// appends why not through a ring of its own (`; no ring: …`), when it was refused.
pub fn describe_writer_refused(out: &mut crate::sys::StackBuf<240>) {
    let _ = why_not(
        STATE.load(Relaxed),
        DETAIL.load(Relaxed),
        b"; no ring: ",
        out,
    );
}
