//! The delta buffer: memory the agent keeps between incremental checkpoints, into which a delta
//! image's page data is copied while the program is stopped, so that the program runs again
//! before the image is written (issue 14: a 4 GiB process that wrote 64 MiB stops ≤ 0.1 s; the
//! stop of a stopped delta is the disk's write of its bytes, 82-190 ms here).
//!
//! In the stop (`image::write_image`, a delta of a process that is its checkpoint's whole cut,
//! see [`NOT_ALONE`] and the other reasons below) the records are built as for any delta (the
//! scans protect the written pages again), then the page data: the part that does not fit the
//! buffer (the first extents: the spill) from the program's memory, the rest copied into the
//! buffer (`process_vm_readv` where a page could raise a signal: such a page fails the
//! checkpoint instead), and every eligible region is armed (`incremental::arm_now`). Then the program is released
//! (`control::finish_held`) and the control thread writes the header and metadata (ours, in the
//! scratch area), the buffer, the trailer, syncs, and answers; the requester commits and sends
//! `--stop` only once the image is durable. The image holds the memory as it was in the stop,
//! byte for byte what a stopped delta would hold.
//!
//! The spill of an image in a regular file, up to [`SPILL_CACHED_MAX`], is written in the stop
//! into the page cache at its place in the file (`pwrite` without `O_DIRECT`: a copy, 0.3-0.7 ms
//! for 0.8-1.3 MiB here, once 10 ms under load, which does not wait for the disk unless the
//! machine is over its dirty-page limits);
//! the rest of the image is written direct after the release, and the sync at the end writes
//! the spill back. A larger spill, or an image on a pipe, is written direct in the stop with
//! the header and metadata before it (a stopped delta's cost for those bytes: 60 ms to 7 s on
//! this shared disk, behind other writes' writeback). `cr_checkpoint -v` says how much was
//! spilled and how (`spill=…MiB cache …ms` or `direct …ms`).
//!
//! The buffer is fresh memory faulted in advance (first touch costs 3–17 µs per page here, as
//! much as the write it saves): it is mapped, populated and resized only after a checkpoint,
//! while the program runs ([`settle`]), to the last delta's page data plus a quarter, at most
//! [`BUDGET`] (issue 11: 64 MiB for the agent during a checkpoint, whatever the process size)
//! less what the last checkpoint's scratch area held (`Scratch::resident`, 0.2-0.3 MiB for the
//! benchmark's 4 GiB process) and [`SLACK`] for the agent's other memory. So a process that
//! wrote 64 MiB spills 1-2 MiB. The first delta of a process is written stopped (no buffer
//! yet); `cr_checkpoint -v` says which (`mode=buffered(…)`, `mode=stopped(not buffered: why)`)
//! and what the agent held (`agent=…MiB`: the buffer and the scratch area). A checkpoint that
//! is not incremental, or copy-on-write, frees it; a full incremental one keeps it.
//!
//! It is private anonymous memory marked `MADV_DONTFORK` (a fork child never has it, and a
//! copy-on-write writer's snapshot lacks it as it lacks the scratch area), left out of every
//! image (`memory::capture` skips it like the scratch area), and forgotten, not unmapped, in a
//! restored process (it was never part of the image).

use crate::image::format::PAGE;
use crate::sys::{self, StackBuf};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};

/// What the agent may hold during a checkpoint (issue 11): the buffer, the scratch area and
/// the rest of its memory. (A 68 MiB buffer, as first built, put the agent at 68.7 MiB during
/// the benchmark's delta; a 64 MiB one with the spill written direct in the stop took that
/// stop to 60 ms-7 s on this shared disk.)
pub const BUDGET: u64 = 64 << 20;

/// Room left in [`BUDGET`] besides the buffer and the last scratch area's pages: the agent's
/// other memory during a checkpoint (measured with `smaps` for the benchmark's process: 0.55
/// MiB of `libcr.so`'s code and 0.1 MiB of its data and the control thread's stack, touched
/// by its first checkpoint) and the scratch area growing from one checkpoint to the next.
pub const SLACK: u64 = 1 << 20;

/// The most spilled page data written into the page cache in the stop (more is written direct
/// there): the agent does not turn a large delta into as much dirty page cache.
pub const SPILL_CACHED_MAX: u64 = 16 << 20;

/// Bytes of the scratch area in memory at the end of the last checkpoint (before the first:
/// a guess, replaced before any buffer is sized).
static SCRATCH_LAST: AtomicU64 = AtomicU64::new(1 << 20);

/// The buffer's address and length (0: none) in the process [`PID`] (a fork child, which has
/// no buffer, sees another pid: nothing in its fork handler).
static ADDR: AtomicU64 = AtomicU64::new(0);
static LEN: AtomicU64 = AtomicU64::new(0);
static PID: AtomicI32 = AtomicI32::new(0);

/// What the checkpoint being served asks of the buffer afterwards ([`settle`]).
static AFTER: AtomicU32 = AtomicU32::new(KEEP);
/// Leave it as it is (nothing written, a full incremental image, a failure).
const KEEP: u32 = 0;
/// Size it for the next delta from [`LAST_DATA`].
const SIZE: u32 = 1;
/// Free it (not incremental, or copy-on-write).
const FREE: u32 = 2;
/// Page data of the last delta image written (bytes).
static LAST_DATA: AtomicU64 = AtomicU64::new(0);

/// Why a delta was written stopped although it is a delta (for `-v`), or [`BUFFERED`].
static NOTE: AtomicU32 = AtomicU32::new(NOT_DELTA);
/// Not a delta, or copy-on-write: nothing to say.
pub const NOT_DELTA: u32 = 0;
/// Its page data went (at least in part) through the buffer.
pub const BUFFERED: u32 = 1;
/// Written stopped: no buffer yet (the first delta of this process, or the first after a
/// checkpoint that freed it).
pub const NO_BUFFER: u32 = 2;
/// Written stopped: other processes are in the same cut (or it is an API or forwarded request).
pub const NOT_ALONE: u32 = 3;
/// Written stopped: the program ends after the checkpoint (`--term`, `--kill`).
pub const ENDS: u32 = 4;
/// Written stopped: it saves files by content, which must be read while it is stopped.
pub const FILES: u32 = 5;
/// Written stopped: the buffer could not be read into (a page of the program could not be read).
pub const COPY_FAILED: u32 = 6;

/// Written stopped: it has no page data.
pub const EMPTY: u32 = 7;
/// Written stopped: no room for a buffer (the last checkpoint's scratch area left none).
pub const NO_ROOM: u32 = 8;

/// Bytes of the last delta copied into the buffer, and written in the stop.
static HELD: AtomicU64 = AtomicU64::new(0);
static STOPPED: AtomicU64 = AtomicU64::new(0);
/// How long the copy took (ns).
pub static COPY_NS: AtomicU64 = AtomicU64::new(0);
/// How long the spill's write took in the stop (ns), and whether into the page cache.
static SPILL_NS: AtomicU64 = AtomicU64::new(0);
static SPILL_CACHED: AtomicU32 = AtomicU32::new(0);
/// The scratch area's bytes in memory when the buffered delta's report was made.
static SCRATCH_NOW: AtomicU64 = AtomicU64::new(0);

/// The buffer of this process (address, length), if it has one.
pub fn get() -> Option<(usize, usize)> {
    let (a, l) = (ADDR.load(Acquire), LEN.load(Acquire));
    (a != 0 && l != 0 && PID.load(Acquire) == sys::getpid()).then_some((a as usize, l as usize))
}

/// Whether `addr` lies in the buffer (left out of images like the scratch area).
pub fn contains(addr: u64) -> bool {
    get().is_some_and(|(a, l)| (a as u64..(a + l) as u64).contains(&addr))
}

/// In a restored process: the buffer was never part of the image; forget it (never unmap: the
/// address may be the program's now).
pub fn after_restart() {
    ADDR.store(0, Release);
    LEN.store(0, Release);
    AFTER.store(KEEP, Release);
}

/// A checkpoint starts: nothing to do afterwards unless said ([`plan`]).
pub fn begin() {
    AFTER.store(KEEP, Relaxed);
    NOTE.store(NOT_DELTA, Relaxed);
    HELD.store(0, Relaxed);
    STOPPED.store(0, Relaxed);
    COPY_NS.store(0, Relaxed);
    SPILL_NS.store(0, Relaxed);
    SPILL_CACHED.store(0, Relaxed);
}

/// Records how much of the scratch area the checkpoint ending held (`Scratch::resident`): the
/// next buffer leaves room for as much.
pub fn note_scratch(bytes: u64) {
    SCRATCH_LAST.store(bytes, Relaxed);
    SCRATCH_NOW.store(bytes, Relaxed);
}

/// Most bytes the buffer may have: [`BUDGET`] less the last scratch area and [`SLACK`] (0: no
/// room), whole pages.
pub fn cap() -> u64 {
    let scratch = SCRATCH_LAST.load(Relaxed).div_ceil(PAGE as u64) * PAGE as u64;
    BUDGET.saturating_sub(scratch + SLACK) / PAGE as u64 * PAGE as u64
}

/// What the image being written does to the buffer afterwards: `incremental` (not: freed),
/// `cow` (copy-on-write: freed, it does not use it), `delta_data` (a delta's page data: the
/// buffer is sized for the next one; `None`: a full image, kept).
pub fn plan(incremental: bool, cow: bool, delta_data: Option<u64>) {
    let after = match (incremental && !cow, delta_data) {
        (false, _) => FREE,
        (true, Some(n)) => {
            LAST_DATA.store(n, Relaxed);
            SIZE
        }
        (true, None) => KEEP,
    };
    AFTER.store(after, Relaxed);
}

/// Records why a delta was written stopped (one of the constants above).
pub fn note(why: u32) {
    NOTE.store(why, Relaxed);
}

/// Records a delta whose last `held` bytes of page data went through the buffer, `stopped`
/// bytes before them (the spill) were written in the stop, in `spill_ns`, into the page cache
/// if `cached`.
pub fn note_held(held: u64, stopped: u64, copy_ns: u64, spill_ns: u64, cached: bool) {
    NOTE.store(BUFFERED, Relaxed);
    HELD.store(held, Relaxed);
    STOPPED.store(stopped, Relaxed);
    COPY_NS.store(copy_ns, Relaxed);
    SPILL_NS.store(spill_ns, Relaxed);
    SPILL_CACHED.store(cached as u32, Relaxed);
}

/// The buffer's length for a delta of `data` bytes of page data: a quarter more, whole pages,
/// at most [`cap`].
fn target_for(data: u64) -> u64 {
    (data + data / 4)
        .div_ceil(PAGE as u64)
        .saturating_mul(PAGE as u64)
        .min(cap())
}

/// After a checkpoint, the program running: frees, grows or shrinks the buffer as the
/// checkpoint asked ([`plan`]). Growing populates the new pages now (`MADV_POPULATE_WRITE`),
/// so the next stop copies at memory speed. Shrinking unmaps the tail (at most half is kept
/// idle).
pub fn settle() {
    let after = AFTER.swap(KEEP, AcqRel);
    let cur = get();
    match after {
        FREE => free(),
        SIZE => {
            let want = target_for(LAST_DATA.load(Relaxed));
            match cur {
                _ if want == 0 => free(),
                // (Also shrunk when over the cap: the scratch area grew.)
                Some((a, l)) if (want as usize) < l / 2 || l as u64 > cap() => {
                    sys::munmap(a + want as usize, l - want as usize);
                    LEN.store(want, Release);
                }
                Some((_, l)) if want as usize <= l => {}
                _ => grow(cur, want as usize),
            }
        }
        _ => {}
    }
}

fn free() {
    if let Some((a, l)) = get() {
        ADDR.store(0, Release);
        LEN.store(0, Release);
        sys::munmap(a, l);
    }
}

/// Maps (or extends) the buffer to `want` bytes and faults every page in.
fn grow(cur: Option<(usize, usize)>, want: usize) {
    let (addr, from) = match cur {
        Some((a, l)) => {
            // Moved where needed, its pages kept (and its MADV_DONTFORK).
            let r = sys::sys6(
                libc::SYS_mremap as usize,
                a,
                l,
                want,
                libc::MREMAP_MAYMOVE as usize,
                0,
                0,
            );
            match r {
                Ok(n) => (n, l),
                Err(_) => return, // kept as it is
            }
        }
        None => {
            let Ok(a) = sys::mmap(
                0,
                want,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            ) else {
                return;
            };
            if sys::sys3(
                libc::SYS_madvise as usize,
                a,
                want,
                libc::MADV_DONTFORK as usize,
            )
            .is_err()
            {
                sys::munmap(a, want);
                return;
            }
            (a, 0)
        }
    };
    // Faulted now, while the program runs (MADV_POPULATE_WRITE: Linux 5.14; else one write
    // per page).
    const MADV_POPULATE_WRITE: usize = 23;
    if sys::sys3(
        libc::SYS_madvise as usize,
        addr + from,
        want - from,
        MADV_POPULATE_WRITE,
    )
    .is_err()
    {
        for p in (from..want).step_by(PAGE) {
            // SAFETY: inside our own fresh mapping.
            unsafe { core::ptr::write_volatile((addr + p) as *mut u8, 0) };
        }
    }
    PID.store(sys::getpid(), Release);
    LEN.store(want as u64, Release);
    ADDR.store(addr as u64, Release);
}

/// Appends how the delta's page data was written to the `-v` report: ` mode=buffered(…)`
/// (the stop and copy are added by the caller) or `(not buffered: why)` after
/// `mode=stopped`.
pub fn describe_fallback(out: &mut StackBuf<240>) {
    let why: &[u8] = match NOTE.load(Relaxed) {
        // (Short: with `--compress` the report was cut at 240 bytes before `incr=`.)
        NO_BUFFER => b"first delta, no buffer yet",
        NO_ROOM => b"no room for a delta buffer in the agent's 64 MiB",
        NOT_ALONE => b"other processes share the cut",
        ENDS => b"the program ends after it",
        FILES => b"it saves files by content",
        COPY_FAILED => b"a page could not be copied",
        EMPTY => b"no page data",
        _ => return,
    };
    out.push(b"(not buffered: ").push(why).push(b")");
}

/// `(copy=…ms 62.9MiB[, spill=1.3MiB cache 0.4ms], agent=63.9MiB)` of a buffered delta: the
/// copy and the bytes buffered, the spill written in the stop (into the page cache, see
/// [`SPILL_CACHED_MAX`], or `direct`) and what the agent held (the buffer and the scratch
/// area; `!` past [`BUDGET`]). (Short: the whole `-v` report is 239 bytes at most.)
pub fn describe_held(out: &mut StackBuf<240>) {
    let mib = |out: &mut StackBuf<240>, b: u64| {
        out.num(b >> 20)
            .push(b".")
            .num(((b & ((1 << 20) - 1)) * 10) >> 20);
    };
    out.push(b"(copy=");
    out.ms(COPY_NS.load(Relaxed));
    out.push(b"ms ");
    mib(out, HELD.load(Relaxed));
    out.push(b"MiB");
    let stopped = STOPPED.load(Relaxed);
    if stopped > 0 {
        out.push(b", spill=");
        mib(out, stopped);
        out.push(if SPILL_CACHED.load(Relaxed) != 0 {
            b"MiB cache "
        } else {
            b"MiB direct "
        });
        out.ms(SPILL_NS.load(Relaxed));
        out.push(b"ms");
    }
    let agent = get().map_or(0, |(_, l)| l as u64) + SCRATCH_NOW.load(Relaxed);
    out.push(b", agent=");
    mib(out, agent);
    out.push(if agent > BUDGET { b"MiB!)" } else { b"MiB)" });
}
