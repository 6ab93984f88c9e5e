//! Writes one image, in the control thread, while every other thread is parked.
//!
//! The image is written strictly sequentially (header, metadata, page data, trailer), so the
//! destination may be a regular file, a FIFO or a pipe. On files that support it the descriptor is
//! switched to `O_DIRECT`: every piece is page aligned, so page data goes from the program's
//! memory to the disk without passing through (and first-touch-allocating) the page cache.

use super::memory::{self, ExtentList, Unreadable};
use super::process;
use super::quiesce::{self, SLOTS};
use super::scratch::Scratch;
use crate::image::format::*;
use crate::image::writer::MetaWriter;
use crate::sys::{self, Errno};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};

/// What the control thread asks [`write_callback`] to do.
pub struct Job {
    /// Destination descriptor.
    pub fd: i32,
    /// A compressed checkpoint's destination file (-1: none), where the image is written raw
    /// instead of into `fd` (a pipe to the compressor) when a sample of the page data shows it
    /// incompressible (see [`finish`]).
    pub raw_fd: i32,
    /// `protocol::FLAG_ZPULL`: the acknowledgement pipe of the pieces of a split image that
    /// cr_checkpoint reads from our memory itself (-1: none, they go through the pipe `fd`).
    pub ack_fd: i32,
    /// `protocol::FLAG_*`.
    pub flags: u32,
    /// Descriptors of the agent itself, left out of the image.
    pub skip_fds: [i32; 5],
    /// Bytes written (output).
    pub bytes: AtomicU64,
    /// Errno of a failure (output).
    pub errno: AtomicI32,
    /// Which step failed (output, for the error message).
    pub step: AtomicU32,
    /// Scratch memory mapped before the threads were stopped.
    pub scratch: *const Scratch,
    /// CLOCK_MONOTONIC time past which the write is abandoned (`--time`), or `u64::MAX`.
    pub deadline_ns: u64,
    /// Write with a forked copy-on-write writer (`--cow`) where possible.
    pub cow: bool,
    /// The writer's pidfd once started (output; -1: none).
    pub writer: AtomicI32,
    /// Why a copy-on-write request was written stopped (`cow::NOTE_*`, output).
    pub cow_note: AtomicU32,
    /// The request (its incremental parent).
    pub req: *const crate::protocol::Request,
    /// Further files saved by content (`--save-dir`, `--save-written`).
    pub files: crate::protocol::SaveFiles,
    /// The process is its checkpoint's whole cut (no other process stopped with it, not an API
    /// request): a delta may be released before it is written (`agent::deltabuf`).
    pub sole: bool,
    /// A delta whose page data [`write_callback`] copied into the delta buffer (it returned
    /// [`HELD`]): the rest of the image, for [`write_held`] once the program runs again.
    pub held: core::cell::Cell<Option<Held>>,
}

/// Steps, for error messages.
pub const STEPS: [&str; 6] = [
    "scratch memory",
    "process state",
    "file descriptors",
    "memory map",
    "writing the image",
    "syncing the image",
];

/// What [`write_callback`] returns when a copy-on-write writer was started ([`Job::writer`]).
pub const FORKED: usize = 3;
/// What [`write_callback`] returns when a delta's page data is in the delta buffer
/// ([`Job::held`]): the program may run, then [`write_held`] writes the rest.
pub const HELD: usize = 4;

/// Entry called through `arch::save_and_call`: returns 0 on success, 2 on failure, [`FORKED`]
/// (never
/// [`crate::arch::RESUMED`], which marks the restored process).
pub extern "C" fn write_callback(job: usize) -> usize {
    // SAFETY: the control thread passes a pointer to a live Job on its stack.
    let job = unsafe { &*(job as *const Job) };
    // The kernel must not write our TLS (part of the image) while the image is written.
    let rseq = super::RseqPause::suspend();
    let written = write_image(job);
    drop(rseq);
    match written {
        Ok(Written::Bytes(n)) => {
            job.bytes.store(n, Release);
            0
        }
        Ok(Written::Forked) => FORKED,
        Ok(Written::Held(h)) => {
            job.held.set(Some(h));
            HELD
        }
        Err((step, e)) => {
            super::incremental::failed();
            job.errno.store(e.0, Release);
            job.step.store(step, Release);
            2
        }
    }
}

/// Where the image being written starts in its file when the requester placed it there
/// (`protocol::FLAG_PLACED`, `u64::MAX`: not placed): every write is then positioned, at this
/// plus the image bytes written before it (`io_report::WRITTEN`, [`Counted::written`]), since
/// the other processes of the cut write through the same file description at once. Set once
/// the metadata is built (before any page data is hashed), cleared by `io_report::begin`.
pub static PLACED_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// `--time` of the image being written (CLOCK_MONOTONIC; `u64::MAX`: none), for [`write_mem`].
static WRITE_DEADLINE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);

/// While alive, a stream destination (pipe, FIFO, socket) is non-blocking, so a reader that
/// stops reading cannot hold the program stopped past `--time`, nor after the requester died.
struct NonBlocking {
    fd: i32,
    old: Option<usize>,
}

impl NonBlocking {
    fn new(fd: i32, deadline_ns: u64) -> Self {
        WRITE_DEADLINE.store(deadline_ns, Relaxed);
        let stream = sys::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFREG);
        let old = if stream {
            sys::fcntl(fd, libc::F_GETFL, 0).ok()
        } else {
            None
        };
        if let Some(fl) = old {
            let _ = sys::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK as usize);
        }
        NonBlocking { fd, old }
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if let Some(fl) = self.old {
            let _ = sys::fcntl(self.fd, libc::F_SETFL, fl);
        }
        WRITE_DEADLINE.store(u64::MAX, Relaxed);
    }
}

/// How the last image was written, for the requester (never silently: a dropped `O_DIRECT` once
/// cost 3× in checkpoint speed unseen).
pub mod io_report {
    use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};

    /// Not a regular file: streamed through the page cache or a pipe (no direct I/O).
    pub const STREAM: u32 = 0;
    /// Written with `O_DIRECT` from start to end.
    pub const DIRECT: u32 = 1;
    /// The file system refused `O_DIRECT` (`F_SETFL` failed with [`ERRNO`]).
    pub const REFUSED: u32 = 2;
    /// `O_DIRECT` was dropped after a write failed with `EINVAL` at byte [`AT`].
    pub const DROPPED: u32 = 3;

    /// One of the constants above.
    pub static MODE: AtomicU32 = AtomicU32::new(STREAM);
    /// errno of [`REFUSED`].
    pub static ERRNO: AtomicI32 = AtomicI32::new(0);
    /// Image offset of the write that made us drop `O_DIRECT` ([`DROPPED`]).
    pub static AT: AtomicU64 = AtomicU64::new(0);
    /// 1: the page data went through an AIO ring (`agent::aio`), 0: it did not.
    pub static AIO: AtomicU32 = AtomicU32::new(0);
    /// Why a direct write's page data did not go through an AIO ring: the errno of `io_setup`,
    /// or one of the negative reasons below (0: it did, or the write was not direct).
    pub static AIO_ERRNO: AtomicI32 = AtomicI32::new(0);
    /// [`AIO_ERRNO`]: the file is open with `O_APPEND` (where `pwritev` ignores the offset).
    pub const AIO_APPEND: i32 = -2;
    /// [`AIO_ERRNO`]: the page data is copied through a bounce buffer first (a copy-on-write
    /// writer, see `memory::BOUNCE_LEN`), and written one piece at a time from there.
    pub const AIO_BOUNCE: i32 = -3;
    /// 1: the page data was copied through the bounce ring (`agent::bounce`) on its way to the
    /// AIO ring.
    pub static BOUNCED: AtomicU32 = AtomicU32::new(0);
    /// Why an AIO context of this stopped checkpoint was destroyed in the stop (`io_destroy`
    /// waits for an RCU grace period: about 30 ms here) rather than after the release
    /// (`aio::destroy_deferred`): the errno of `madvise(MADV_DONTFORK)` on its ring's mapping,
    /// [`CTX_HEADER`] or [`CTX_TAKEN`]; 0: none was (`-v`'s `aio_ctx=in-stop(…)`).
    pub static CTX_IN_STOP: AtomicI32 = AtomicI32::new(0);
    /// [`CTX_IN_STOP`]: the ring mapping's header is not the one expected (magic, event size),
    /// so its length is not known: not marked.
    pub const CTX_HEADER: i32 = -1;
    /// [`CTX_IN_STOP`]: another context of this checkpoint is left for after the release
    /// already (one at a time).
    pub const CTX_TAKEN: i32 = -2;
    /// Image bytes written so far (where the next write goes).
    pub static WRITTEN: AtomicU64 = AtomicU64::new(0);
    /// `--compress`: pieces whose sample looks incompressible (high 32 bits) of the pieces
    /// sampled (low 32 bits); 0: none sampled (not compressed, or not a one-image destination).
    pub static SAMPLED: AtomicU64 = AtomicU64::new(0);
    /// What `--compress` did with the page data, by the samples (see `image::finish`):
    /// [`PIPED`], [`SKIPPED`], [`SPLIT`], [`NO_PLAN`].
    pub static STORED_RAW: AtomicU32 = AtomicU32::new(0);
    /// [`STORED_RAW`]: all of it through the pipe, compressed by cr_checkpoint.
    pub const PIPED: u32 = 0;
    /// [`STORED_RAW`]: written raw to the file, a plain image (`zstd=skipped`).
    pub const SKIPPED: u32 = 1;
    /// [`STORED_RAW`]: the incompressible pieces (and those whose turn came while the
    /// compressor was behind, [`BEHIND`]) written to the file, the rest piped (a split image,
    /// `zstd=split`).
    pub const SPLIT: u32 = 2;
    /// [`STORED_RAW`]: a split was due, but its plan did not fit the metadata area: piped.
    pub const NO_PLAN: u32 = 3;
    /// [`STORED_RAW`]: a split was due, but this image cannot be split (a delta kept in the
    /// delta buffer, or the destination is a stream): piped.
    pub const NO_SPLIT: u32 = 4;
    /// [`SPLIT`]: pieces that looked compressible but were written raw by the agent, as the
    /// compressor was behind (`memory::write_split`).
    pub static BEHIND: AtomicU64 = AtomicU64::new(0);
    /// [`SPLIT`]: the disk rate it was paced at (ns per MiB, `memory::DISK_NS_PER_MIB`; 0:
    /// none known, unpaced; [`NOT_PACED`]: not asked to, `protocol::FLAG_ZPACE`), and how long
    /// the agent waited for the pipe (ns).
    pub static PACE: AtomicU64 = AtomicU64::new(0);
    pub static WAITED_NS: AtomicU64 = AtomicU64::new(0);
    /// [`SPLIT`]: how the pieces for the compressor went: [`PULL_NONE`] (its bytes through the
    /// pipe, not asked to pull), [`PULLED`] (cr_checkpoint read them from our memory,
    /// `protocol::FLAG_ZPULL`), [`PULL_REFUSED`] (it asked, and could not read us: the pipe).
    pub static PULL: AtomicU32 = AtomicU32::new(0);
    /// [`PULL`]: not asked to.
    pub const PULL_NONE: u32 = 0;
    /// [`PULL`]: pulled by cr_checkpoint.
    pub const PULLED: u32 = 1;
    /// [`PULL`]: refused by the kernel (cr_checkpoint's `process_vm_readv` of the first
    /// piece): through the pipe.
    pub const PULL_REFUSED: u32 = 2;
    /// [`PULL`]: compressed here by the agent's helpers (`protocol::FLAG_ZPACK`,
    /// `agent::zpack`), only the frames piped.
    pub const PACKED: u32 = 3;
    /// [`PACKED`]: helpers started, and the bytes mapped for them.
    pub static PACK_HELPERS: AtomicU64 = AtomicU64::new(0);
    pub static PACK_MAPPED: AtomicU64 = AtomicU64::new(0);
    /// Asked to compress here (`protocol::FLAG_ZPACK`) and could not: the errno (`ERANGE`: the
    /// level is too high for it; 0: not asked, or done).
    pub static PACK_ERRNO: AtomicI32 = AtomicI32::new(0);
    /// [`PACE`]: not asked to pace.
    pub const NOT_PACED: u64 = u64::MAX;
    /// CLOCK_MONOTONIC at: start of the write, metadata built, page data written, synced.
    pub static PHASE_NS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

    /// Records the start of a new image.
    pub fn begin(now: u64) {
        MODE.store(STREAM, Relaxed);
        ERRNO.store(0, Relaxed);
        AT.store(0, Relaxed);
        AIO.store(0, Relaxed);
        AIO_ERRNO.store(0, Relaxed);
        BOUNCED.store(0, Relaxed);
        CTX_IN_STOP.store(0, Relaxed);
        WRITTEN.store(0, Relaxed);
        SAMPLED.store(0, Relaxed);
        STORED_RAW.store(0, Relaxed);
        BEHIND.store(0, Relaxed);
        PACE.store(NOT_PACED, Relaxed);
        WAITED_NS.store(0, Relaxed);
        PULL.store(PULL_NONE, Relaxed);
        PACK_HELPERS.store(0, Relaxed);
        PACK_MAPPED.store(0, Relaxed);
        PACK_ERRNO.store(0, Relaxed);
        super::PLACED_AT.store(u64::MAX, Relaxed);
        for p in &PHASE_NS {
            p.store(now, Relaxed);
        }
    }

    /// Appends ` aio_ctx=in-stop(why)` when an AIO context was destroyed in the stop
    /// ([`CTX_IN_STOP`] = `why`), nothing otherwise.
    fn describe_ctx(why: i32, out: &mut crate::sys::StackBuf<240>) {
        match why {
            0 => {}
            CTX_HEADER => {
                out.push(b" aio_ctx=in-stop(ring header unknown)");
            }
            CTX_TAKEN => {
                out.push(b" aio_ctx=in-stop(another one deferred)");
            }
            e => {
                out.push(b" aio_ctx=in-stop(MADV_DONTFORK errno ")
                    .num(e as u64)
                    .push(b")");
            }
        }
    }

    /// Appends the report ("io=direct meta=…ms data=…ms sync=…ms" and, when direct I/O was not
    /// used, why) to `out`.
    pub fn describe(out: &mut crate::sys::StackBuf<240>) {
        let ms = |a: usize, b: usize| {
            let d = PHASE_NS[b]
                .load(Relaxed)
                .saturating_sub(PHASE_NS[a].load(Relaxed));
            (d / 1_000_000, d / 10_000 % 100)
        };
        out.push(b"io=");
        match MODE.load(Relaxed) {
            DIRECT => {
                out.push(b"direct");
            }
            REFUSED => {
                out.push(b"buffered(O_DIRECT refused: errno ")
                    .num(ERRNO.load(Relaxed) as u64)
                    .push(b")");
            }
            DROPPED => {
                out.push(b"buffered(O_DIRECT dropped: EINVAL at byte ")
                    .num(AT.load(Relaxed))
                    .push(b")");
            }
            _ => {
                out.push(b"stream");
            }
        }
        if super::PLACED_AT.load(Relaxed) != u64::MAX {
            // (Written at once with the other images of its tree file.)
            out.push(b" placed");
        }
        if AIO.load(Relaxed) == 1 {
            out.push(b" write=aio");
            super::super::bounce::describe(BOUNCED.load(Relaxed) == 1, out);
        } else if AIO_ERRNO.load(Relaxed) == AIO_APPEND {
            out.push(b" write=sync(O_APPEND)");
        } else if AIO_ERRNO.load(Relaxed) == AIO_BOUNCE {
            out.push(b" write=sync(bounce buffer");
            super::super::bounce::describe_writer_refused(out);
            out.push(b")");
        } else if AIO_ERRNO.load(Relaxed) > 0 {
            out.push(b" write=sync(io_setup errno ")
                .num(AIO_ERRNO.load(Relaxed) as u64)
                .push(b")");
        }
        describe_ctx(CTX_IN_STOP.load(Relaxed), out);
        let helper = super::super::offload::HELPER_ERRNO.load(Relaxed);
        if helper == super::super::offload::HELPER_OFF {
            // (A write stuck on the destination then keeps the program stopped.)
            out.push(b" helper=off(LIBCR_WRITE_HELPER=0)");
        } else if helper != 0 {
            out.push(b" helper=none(errno ")
                .num(helper as u64)
                .push(b")");
        }
        let sampled = SAMPLED.load(Relaxed);
        if sampled != 0 {
            let how = STORED_RAW.load(Relaxed);
            let behind = BEHIND.load(Relaxed);
            // (Short: the whole report is one reply of 240 bytes.)
            out.push(match how {
                SKIPPED => b" zstd=skipped(".as_slice(),
                SPLIT => b" zstd=split(raw: ",
                _ => b" zstd=piped(",
            })
            .num(sampled >> 32)
            .push(b"/")
            .num(sampled & 0xffff_ffff)
            .push(match how {
                SPLIT => b" incompressible".as_slice(),
                _ => b" pieces incompressible",
            });
            if how == SPLIT && behind > 0 {
                out.push(b", ").num(behind).push(b" compressor behind");
            }
            out.push(match how {
                NO_PLAN => b"; no room for the split plan)".as_slice(),
                NO_SPLIT => b"; cannot split here)",
                _ => b")",
            });
            if how == SPLIT {
                // Paced at the disk rate of the last plain write (MB/s), and the wait for the
                // compressor that bought; or no rate known yet.
                match PACE.load(Relaxed) {
                    NOT_PACED => {}
                    0 => {
                        out.push(b" pace=none");
                    }
                    p => {
                        out.push(b" pace=")
                            .num((1u64 << 20) * 1000 / p)
                            .push(b"MB/s waited=")
                            .num(WAITED_NS.load(Relaxed) / 1_000_000)
                            .push(b"ms");
                    }
                }
                // Never silently: which way the compressor got its pieces.
                match PULL.load(Relaxed) {
                    PACKED => {
                        out.push(b" via=pack(")
                            .num(PACK_HELPERS.load(Relaxed))
                            .push(b" threads, ")
                            .num(PACK_MAPPED.load(Relaxed) >> 20)
                            .push(b" MiB)");
                    }
                    PULLED => {
                        out.push(b" via=pull");
                    }
                    PULL_REFUSED => {
                        out.push(b" via=pipe(pull refused)");
                    }
                    _ => {}
                }
                let e = PACK_ERRNO.load(Relaxed);
                if e != 0 {
                    // Asked to compress here and could not: never silently.
                    out.push(b" (not packed: errno ").num(e as u64).push(b")");
                }
            }
        }
        for (name, a, b) in [(&b" meta="[..], 0, 1), (b" data=", 1, 2), (b" sync=", 2, 3)] {
            let (whole, frac) = ms(a, b);
            out.push(name).num(whole).push(b".");
            if frac < 10 {
                out.push(b"0");
            }
            out.num(frac).push(b"ms");
        }
    }

    #[cfg(test)]
    mod tests {
        use crate::sys::StackBuf;

        fn said(why: i32) -> String {
            let mut out = StackBuf::<240>::new();
            super::describe_ctx(why, &mut out);
            String::from_utf8_lossy(out.as_bytes()).into_owned()
        }

        /// A context destroyed in the stop is said under -v, with why (no test hook can make
        /// `madvise(MADV_DONTFORK)` fail on a real ring: the wording is tested here).
        #[test]
        fn context_destroyed_in_the_stop_is_said() {
            assert_eq!(said(0), "");
            assert_eq!(
                said(libc::EINVAL),
                " aio_ctx=in-stop(MADV_DONTFORK errno 22)"
            );
            assert_eq!(
                said(super::CTX_HEADER),
                " aio_ctx=in-stop(ring header unknown)"
            );
            assert_eq!(
                said(super::CTX_TAKEN),
                " aio_ctx=in-stop(another one deferred)"
            );
        }
    }
}

/// Progress messages to a requester that asked for them (`protocol::FLAG_PROGRESS`), sent while
/// the image is written: a `Reply` built on the stack, sent without waiting (a requester that
/// does not read loses messages, never holds the write up), at most one every
/// `protocol::PROGRESS_INTERVAL_MS`. No allocation, no lock: the program is stopped.
pub mod progress {
    use crate::sys;
    use core::sync::atomic::{AtomicI32, AtomicU64, Ordering::*};

    /// The connection to report on (-1: the requester did not ask).
    pub static CONN: AtomicI32 = AtomicI32::new(-1);
    /// Total length of the image being written (0: not known yet).
    pub static TOTAL: AtomicU64 = AtomicU64::new(0);
    /// CLOCK_MONOTONIC of the last message sent.
    static LAST_NS: AtomicU64 = AtomicU64::new(0);

    /// Reports on `conn` (-1: nobody) for the next image.
    pub fn arm(conn: i32) {
        CONN.store(conn, Relaxed);
        TOTAL.store(0, Relaxed);
        LAST_NS.store(0, Relaxed);
    }

    /// Sends "bytes written so far of TOTAL" when asked for, the total is known, and the last
    /// message is at least the interval old (`force`: whatever the interval).
    pub fn tick(force: bool) {
        let conn = CONN.load(Relaxed);
        let total = TOTAL.load(Relaxed);
        if conn < 0 || total == 0 {
            return;
        }
        let now = sys::monotonic_ns();
        let interval = crate::protocol::PROGRESS_INTERVAL_MS * 1_000_000;
        if !force && now.saturating_sub(LAST_NS.load(Relaxed)) < interval {
            return;
        }
        LAST_NS.store(now, Relaxed);
        send(conn, super::io_report::WRITTEN.load(Relaxed), total);
    }

    /// CLOCK_MONOTONIC of the last message sent (for [`super::Counted`]).
    pub fn last_ns() -> u64 {
        LAST_NS.load(Relaxed)
    }

    /// Records when the last message was sent (see [`super::Counted`]).
    pub fn set_last_ns(ns: u64) {
        LAST_NS.store(ns, Relaxed);
    }

    /// [`tick`] for a writer that must not change the program's memory while it writes (the
    /// asynchronous writes of `agent::aio`, whose pieces the disk reads after they were hashed):
    /// `done` bytes of the image are written, `last_ns` is the writer's own record of the last
    /// message. Writes no static (nor `errno`).
    pub fn tick_from(done: u64, last_ns: &mut u64) {
        let conn = CONN.load(Relaxed);
        let total = TOTAL.load(Relaxed);
        if conn < 0 || total == 0 {
            return;
        }
        let now = sys::monotonic_ns();
        if now.saturating_sub(*last_ns) < crate::protocol::PROGRESS_INTERVAL_MS * 1_000_000 {
            return;
        }
        *last_ns = now;
        send(conn, done, total);
    }

    /// Sends one progress message without waiting (raw system call: no `errno`).
    fn send(conn: i32, done: u64, total: u64) {
        let r = crate::protocol::Reply::progress(done, total);
        let b = bytemuck::bytes_of(&r);
        let _ = sys::sys6(
            libc::SYS_sendto as usize,
            conn as usize,
            b.as_ptr() as usize,
            b.len(),
            (libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) as usize,
            0,
            0,
        );
    }
}

/// The connection of the request whose image is being written (-1: none), watched while the
/// image is written: a requester that dies mid-checkpoint must not keep the program stopped.
pub static REQUESTER_CONN: AtomicI32 = AtomicI32::new(-1);

/// Whether the requester of the image being written hung up (a poll without waiting).
pub fn requester_gone() -> bool {
    let conn = REQUESTER_CONN.load(Relaxed);
    if conn < 0 {
        return false;
    }
    sys::poll_one(conn, libc::POLLRDHUP, 0) & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
}

/// Checked between pieces of a write: `ETIMEDOUT` when `--time` ran out (`deadline_ns`;
/// `u64::MAX`: none), `ECANCELED` when the requester is gone (nobody will commit the image).
pub fn write_must_stop(deadline_ns: u64) -> Result<(), Errno> {
    if deadline_ns != u64::MAX && sys::monotonic_ns() > deadline_ns {
        return Err(Errno(libc::ETIMEDOUT));
    }
    if requester_gone() {
        return Err(Errno(libc::ECANCELED));
    }
    Ok(())
}

/// Clears `O_DIRECT` on `fd`; returns whether it was set (so a failed write can be retried).
pub fn drop_direct(fd: i32) -> bool {
    let fl = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
    if fl & libc::O_DIRECT == 0 {
        return false;
    }
    sys::fcntl(fd, libc::F_SETFL, (fl & !libc::O_DIRECT) as usize).is_ok()
}

/// Writes `len` bytes of memory at `addr` to the current position of `fd`.
pub fn write_mem(fd: i32, addr: usize, len: usize) -> Result<(), Errno> {
    let mut c = Counted::start();
    let r = write_counted(fd, addr, len, &mut c);
    c.store();
    r
}

/// The I/O report's figures of a write of the program's memory, kept out of the agent's statics
/// until [`Counted::store`]: the statics are in the image, and a pipe takes a piece in several
/// writes, so a count stored between two of them changed a page after it was hashed and before
/// it was written (the image then failed its checksum at restart).
pub struct Counted {
    /// Image bytes written so far ([`io_report::WRITTEN`]).
    pub written: u64,
    /// CLOCK_MONOTONIC of the last progress message.
    last_ns: u64,
    /// Image offset where `O_DIRECT` was dropped after an `EINVAL` ([`io_report::DROPPED`]).
    dropped_at: Option<u64>,
}

impl Counted {
    /// The figures so far.
    pub fn start() -> Counted {
        Counted {
            written: io_report::WRITTEN.load(Relaxed),
            last_ns: progress::last_ns(),
            dropped_at: None,
        }
    }

    /// Stores the figures into the I/O report (once nothing of the program's memory is being
    /// written any more).
    pub fn store(&self) {
        io_report::WRITTEN.store(self.written, Relaxed);
        progress::set_last_ns(self.last_ns);
        if let Some(at) = self.dropped_at {
            io_report::MODE.store(io_report::DROPPED, Relaxed);
            io_report::AT.store(at, Relaxed);
        }
    }
}

/// [`write_mem`] counting into `c` instead of the I/O report's statics: for the program's
/// memory (see [`Counted`]).
pub fn write_counted(fd: i32, addr: usize, len: usize, c: &mut Counted) -> Result<(), Errno> {
    let mut done = 0;
    while done < len {
        // (Callers pass readable memory: scratch buffers, or program memory in extents. A
        // regular file's write goes through `agent::offload` in the stop.) A placed image:
        // at its own offset (see `PLACED_AT`), never at the shared file position.
        let at = PLACED_AT.load(Relaxed);
        let r = if at == u64::MAX {
            super::offload::fd_call(libc::SYS_write as usize, fd, addr + done, len - done, 0)
        } else {
            super::offload::fd_call(
                libc::SYS_pwrite64 as usize,
                fd,
                addr + done,
                len - done,
                (at + c.written) as usize,
            )
        };
        match r {
            Ok(0) => return Err(Errno(libc::EIO)),
            Ok(n) => {
                done += n;
                c.written += n as u64;
                progress::tick_from(c.written, &mut c.last_ns);
            }
            Err(Errno(libc::EINTR)) => {}
            // A stream destination (made non-blocking): wait for room, not past --time, and
            // not once the requester is gone (its hang-up wakes the poll).
            Err(Errno(libc::EAGAIN)) => {
                let deadline = WRITE_DEADLINE.load(Relaxed);
                let now = sys::monotonic_ns();
                if now >= deadline {
                    return Err(Errno(libc::ETIMEDOUT));
                }
                if requester_gone() {
                    return Err(Errno(libc::ECANCELED));
                }
                let conn = REQUESTER_CONN.load(Relaxed);
                let mut p = [
                    libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: conn,
                        events: libc::POLLRDHUP,
                        revents: 0,
                    },
                ];
                let n = if conn >= 0 { 2 } else { 1 };
                let ms = ((deadline - now) / 1_000_000).clamp(1, 100) as usize;
                let _ = sys::sys3(libc::SYS_poll as usize, p.as_mut_ptr() as usize, n, ms);
            }
            Err(Errno(libc::EINVAL)) if drop_direct(fd) => {
                c.dropped_at.get_or_insert(c.written);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn xsave_info() -> (u64, u32) {
    let c = core::arch::x86_64::__cpuid_count(1, 0);
    if c.ecx & (1 << 27) == 0 {
        return (0, 512); // no OSXSAVE: legacy FXSAVE frames
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so xgetbv with ecx=0 is valid.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    let d = core::arch::x86_64::__cpuid_count(0xd, 0);
    (((hi as u64) << 32) | lo as u64, d.ebx)
}

/// XCR0 and xsave size of this CPU (also used by the restart loader to compare).
pub fn cpu_xsave() -> (u64, u32) {
    xsave_info()
}

fn kernel_release(out: &mut [u8; 64]) {
    // SAFETY: all-zero is a valid utsname.
    let mut u: libc::utsname = unsafe { core::mem::zeroed() };
    let _ = sys::sys3(libc::SYS_uname as usize, &mut u as *mut _ as usize, 0, 0);
    for (o, &c) in out.iter_mut().zip(u.release.iter()) {
        *o = c as u8;
    }
}

fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let _ = sys::sys3(
        libc::SYS_clock_gettime as usize,
        libc::CLOCK_REALTIME as usize,
        &mut ts as *mut _ as usize,
        0,
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What [`write_image`] did. (`Held` is large, the hash state: no heap in the stop.)
#[allow(clippy::large_enum_variant)]
enum Written {
    /// The image is written and synced: its length.
    Bytes(u64),
    /// A copy-on-write writer was started ([`Job::writer`]).
    Forked,
    /// A delta's page data is in the delta buffer: the rest is written after the release.
    Held(Held),
}

fn write_image(job: &Job) -> Result<Written, (u32, Errno)> {
    // SAFETY: the control thread keeps the scratch alive for the whole call.
    let scratch = unsafe { &*job.scratch };
    // SAFETY: the control thread keeps the request alive for the whole call.
    let req = unsafe { &*job.req };
    super::incremental::begin(job.flags, req.parent_hash, req.parent_size);
    super::deltabuf::begin();
    super::deltabuf::plan(super::incremental::active(), job.cow, None);
    process::capture_signals();
    process::capture_prctl();
    quiesce::CAPTURE_NS.store(sys::monotonic_ns(), Release);
    io_report::begin(sys::monotonic_ns());
    let full = |_| (1, Errno(libc::ENOMEM));

    let meta = scratch.meta();
    let mut w = MetaWriter::new(meta);
    let mut rec: ProcessRec = bytemuck::Zeroable::zeroed();
    let mut auxv = [0u8; 1024];
    let auxv_len = process::capture_process(&mut rec, &mut auxv).map_err(|e| (1, e))?;
    let nslots = quiesce::NSLOTS.load(Acquire);
    let pid = rec.pid;
    let leader = (0..nslots)
        .find(|&i| quiesce::slot_in_use(i) && SLOTS[i].tid.load(Relaxed) == pid)
        .unwrap_or(0);
    super::resume::LEADER.store(leader, Relaxed);
    rec.nthreads = (0..nslots).filter(|&i| quiesce::slot_in_use(i)).count() as u32;
    rec.entry = super::resume::restart_entry as *const () as usize as u64;
    rec.restore_stack_top = super::resume::restore_stack_top() as u64;
    rec.leader_fs = SLOTS[leader].fs_base.load(Relaxed) as u64;
    rec.auxv_len = auxv_len as u32;
    w.record(REC_PROCESS, &rec, &auxv[..auxv_len])
        .map_err(full)?;
    let mut cwd = [0u8; 4096];
    let n = process::capture_cwd(&mut cwd).map_err(|e| (1, e))?;
    w.raw(REC_CWD, &cwd[..n]).map_err(full)?;
    for i in (0..nslots).filter(|&i| quiesce::slot_in_use(i)) {
        let s = &SLOTS[i];
        let t = ThreadRec {
            tid: s.tid.load(Relaxed),
            is_control: s.is_control.load(Relaxed),
            fs_base: s.fs_base.load(Relaxed) as u64,
            ctx_rsp: s.ctx_rsp.load(Relaxed) as u64,
            comm: s.comm_bytes(),
        };
        w.record(REC_THREAD, &t, &[]).map_err(full)?;
    }
    // Best effort: without it a restart keeps the restarter's ids, as before the record existed.
    let _ = process::capture_creds(&mut w, SLOTS[leader].tid.load(Relaxed));
    let lost = super::pending::lost();
    if lost > 0 {
        let mut msg = crate::sys::StackBuf::<160>::new();
        msg.num(lost as u64)
            .push(b" pending signals are not in the image (it keeps at most ")
            .num(super::pending::MAX_PENDING as u64)
            .push(b")");
        w.raw(REC_WARNING, msg.as_bytes()).map_err(full)?;
    }
    let tmp_limit = crate::protocol::tmp_limit(job.flags, &job.files);
    let mut spans = super::fds::Spans::new(scratch.spans(), scratch.filebuf());
    // Declared after `spans`, dropped before it: the descriptors in flight a checkpoint kept
    // (`kinds::unix`) are closed when the image is written or given up.
    let _in_flight = InFlightGuard::begin();
    let tmp_used = super::fds::capture(
        &mut w,
        &job.skip_fds,
        job.fd,
        tmp_limit,
        &job.files,
        &mut spans,
    )
    .map_err(|e| (2, e))?;
    super::forward::write_shares(&mut w).map_err(full)?;
    let delta = super::incremental::is_delta();
    if delta {
        let p = super::incremental::parent_record(req);
        let path = &req.parent_path[..p.path_len as usize];
        w.record(REC_PARENT, &p, path).map_err(full)?;
    }
    let save = memory::SaveByContent {
        exe: job.flags & crate::protocol::FLAG_SAVE_EXE != 0,
        private: job.flags & crate::protocol::FLAG_SAVE_PRIVATE != 0,
        shared: job.flags & crate::protocol::FLAG_SAVE_SHARED != 0,
        tmp_left: tmp_limit.map(|l| l - tmp_used),
        files: &job.files,
    };
    let mut ext = ExtentList::new(scratch.extents());
    let incremental = super::incremental::active();
    if job.cow && !spans.is_empty() {
        job.cow_note.store(super::cow::NOTE_FILES, Release);
    } else if job.cow {
        // Copy-on-write: the rest is written by a forked writer while the program runs on. An
        // incremental checkpoint builds its memory records here first (`cow::start`).
        match super::cow::start(
            job,
            scratch,
            &mut w,
            save,
            pid,
            incremental.then_some(&mut ext),
        ) {
            Ok(pidfd) => {
                job.writer.store(pidfd, Release);
                return Ok(Written::Forked);
            }
            Err(n) if n.failed != 0 => return Err((3, Errno(n.failed))),
            Err(n) if n.prebuilt => {
                // The memory records are built (and the written pages protected again):
                // written stopped from them.
                job.cow_note.store(n.note, Release);
                super::sysvsem::capture(&mut w).map_err(|e| (3, e))?;
                super::sysvmsg::capture(&mut w).map_err(|e| (3, e))?;
                let out = Dest {
                    fd: job.fd,
                    raw_fd: job.raw_fd,
                    split_ok: job.flags & crate::protocol::FLAG_ZSPLIT != 0,
                    adapt: job.flags & crate::protocol::FLAG_ZWAIT == 0,
                    pace: job.flags & crate::protocol::FLAG_ZPACE != 0,
                    ack_fd: job.ack_fd,
                    pack: crate::protocol::pack_level(job.flags),
                    deadline_ns: job.deadline_ns,
                    bounce: None,
                    placed: job.flags
                        & (crate::protocol::FLAG_PLACED | crate::protocol::FLAG_PLACED_NOSYNC),
                    via_writer: false,
                };
                let unreadable = super::cow::prebuilt_unreadable();
                let r = finish(out, scratch, w, &ext, unreadable, &mut spans, pid);
                super::cow::unmap_copy(n.copy);
                return r.map(Written::Bytes);
            }
            Err(n) => job.cow_note.store(n.note, Release),
        }
    }
    let mut unreadable = Unreadable::new();
    memory::capture(&mut w, scratch, &mut ext, &mut unreadable, save, None).map_err(|e| (3, e))?;
    super::sysvsem::capture(&mut w).map_err(|e| (3, e))?;
    super::sysvmsg::capture(&mut w).map_err(|e| (3, e))?;
    let out = Dest {
        fd: job.fd,
        raw_fd: job.raw_fd,
        split_ok: job.flags & crate::protocol::FLAG_ZSPLIT != 0,
        adapt: job.flags & crate::protocol::FLAG_ZWAIT == 0,
        pace: job.flags & crate::protocol::FLAG_ZPACE != 0,
        ack_fd: job.ack_fd,
        pack: crate::protocol::pack_level(job.flags),
        deadline_ns: job.deadline_ns,
        bounce: None,
        placed: job.flags & (crate::protocol::FLAG_PLACED | crate::protocol::FLAG_PLACED_NOSYNC),
        via_writer: false,
    };
    // A delta (not copy-on-write): through the delta buffer when it may be (see
    // `agent::deltabuf`), else written stopped, saying why.
    let hold = if super::incremental::is_delta() && !job.cow {
        use super::deltabuf as db;
        db::plan(true, false, Some(ext.data_len));
        let buf = db::get();
        let why = if !job.sole {
            db::NOT_ALONE
        } else if req.signal == libc::SIGTERM || req.signal == libc::SIGKILL {
            db::ENDS
        } else if !spans.is_empty() {
            db::FILES
        } else if buf.is_none() && db::cap() == 0 {
            db::NO_ROOM
        } else if buf.is_none() {
            db::NO_BUFFER
        } else {
            db::BUFFERED
        };
        db::note(why);
        buf.filter(|_| why == db::BUFFERED)
    } else {
        None
    };
    match finish_or_hold(out, scratch, w, &ext, &unreadable, &mut spans, pid, hold)? {
        Finished::Bytes(n) => Ok(Written::Bytes(n)),
        Finished::Held(h) => Ok(Written::Held(h)),
    }
}

/// The page data of a delta with the delta buffer `buf` (address, length): what does not fit
/// it (the first extents: the spill) written from memory, the rest copied into it; returns the
/// hash so far and the bytes copied. With `spill_at` (where the page data starts in the file)
/// the spill goes into the page cache at its place ([`write_cached`]), else it is written
/// (direct) at the current offset. When the copy fails, the rest is written from memory too
/// (0 copied), after the header and metadata when they were left for later (`head`: the
/// scratch area and the metadata's length).
fn hold_data(
    fd: i32,
    all: &[Extent],
    deadline_ns: u64,
    buf: (usize, usize),
    head: Option<(&Scratch, u64)>,
    spill_at: Option<u64>,
) -> Result<(xxhash_rust::xxh3::Xxh3, u64), Errno> {
    use super::deltabuf as db;
    let data: u64 = all.iter().map(|e| e.len).sum();
    if data == 0 {
        db::note(db::EMPTY);
        return Ok((xxhash_rust::xxh3::Xxh3::new(), 0));
    }
    let spill = |exts: &[Extent], h| match spill_at {
        Some(at) => write_cached(fd, exts, at, h),
        None => memory::write_data_from(fd, exts, deadline_ns, None, h),
    };
    // (Extents and the buffer are whole pages: so is the split.)
    let held = data.min(buf.1 as u64);
    let stopped = data - held;
    let split = all.partition_point(|e| e.file_off + e.len <= stopped);
    let t_spill = sys::monotonic_ns();
    let mut h = spill(&all[..split], xxhash_rust::xxh3::Xxh3::new())?;
    let mut rest = &all[split..];
    // The extent across the split: its first part written, the rest copied.
    let mut across = None;
    if let Some(e) = rest.first().filter(|e| e.file_off < stopped) {
        let part = stopped - e.file_off;
        let first = [Extent {
            addr: e.addr,
            len: part,
            file_off: e.file_off,
        }];
        h = spill(&first, h)?;
        across = Some(Extent {
            addr: e.addr + part,
            len: e.len - part,
            file_off: stopped,
        });
        rest = &rest[1..];
    }
    let t0 = sys::monotonic_ns();
    // SAFETY: the delta buffer is ours, mapped, and `held` bytes long at least.
    let dst = unsafe { core::slice::from_raw_parts_mut(buf.0 as *mut u8, held as usize) };
    let first_len = across.map_or(0, |e| e.len as usize);
    let copied = match across {
        Some(e) => memory::copy_extents(&[e], &mut dst[..first_len]),
        None => Ok(()),
    }
    .and_then(|_| memory::copy_extents(rest, &mut dst[first_len..]));
    if copied.is_err() {
        // Written stopped from memory after all (a page the copy could not read: the write
        // fails the same way if it really cannot be read).
        db::note(db::COPY_FAILED);
        if let Some((scratch, meta_len)) = head {
            write_head(fd, scratch, meta_len)?;
        }
        if let Some(at) = spill_at {
            sys::lseek(fd, (at + stopped) as i64, libc::SEEK_SET)?;
        }
        if let Some(e) = across {
            h = memory::write_data_from(fd, &[e], deadline_ns, None, h)?;
        }
        h = memory::write_data_from(fd, rest, deadline_ns, None, h)?;
        return Ok((h, 0));
    }
    let now = sys::monotonic_ns();
    db::note_held(held, stopped, now - t0, t0 - t_spill, spill_at.is_some());
    Ok((h, held))
}

/// Writes the page data of `extents` (program memory, the program stopped) into the page cache
/// of `fd` (`O_DIRECT` dropped meanwhile) at `at` plus each extent's offset in the page data,
/// hashing as it goes: a delta's spill (`agent::deltabuf`), written back by the image's sync
/// after the release. Returns the hash state after them.
fn write_cached(
    fd: i32,
    extents: &[Extent],
    at: u64,
    mut h: xxhash_rust::xxh3::Xxh3,
) -> Result<xxhash_rust::xxh3::Xxh3, Errno> {
    let direct = drop_direct(fd);
    let mut c = Counted::start();
    let r = (|| {
        for e in extents {
            // SAFETY: as in memory::write_data: readable program memory, the program parked.
            let mem = unsafe {
                core::slice::from_raw_parts(e.addr as usize as *const u8, e.len as usize)
            };
            h.update(mem);
            let mut done = 0usize;
            while done < mem.len() {
                // (`mem[done..]` is readable, above; through `agent::offload` in the stop.)
                match super::offload::fd_call(
                    libc::SYS_pwrite64 as usize,
                    fd,
                    mem.as_ptr() as usize + done,
                    mem.len() - done,
                    (at + e.file_off + done as u64) as usize,
                ) {
                    Ok(0) => return Err(Errno(libc::EIO)),
                    Ok(n) => done += n,
                    Err(Errno(libc::EINTR)) => {}
                    Err(e) => return Err(e),
                }
            }
            c.written += e.len;
        }
        Ok(())
    })();
    c.store();
    if direct {
        let fl = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0);
        if let Err(e) = sys::fcntl(fd, libc::F_SETFL, fl | libc::O_DIRECT as usize) {
            // (The rest is written through the page cache then, and `-v` says why.)
            io_report::MODE.store(io_report::REFUSED, Relaxed);
            io_report::ERRNO.store(e.0, Relaxed);
        }
    }
    r.map(|_| h)
}

/// Ends an image whose page data is written: the trailer at `trailer_offset` (with `data_hash`
/// and its own hash), then `fdatasync` (file systems and pipes that cannot sync are fine), and
/// direct I/O dropped. Marks the page-data and sync phases for `-v`. Returns the trailer.
/// `piped`: a split image's hash of the page data in the stream (at `ZPLAN_HASH_AT` of the
/// trailer page).
fn write_trailer(
    fd: i32,
    scratch: &Scratch,
    data_hash: u64,
    trailer_offset: u64,
    piped: Option<u64>,
    placed: u32,
) -> Result<Trailer, (u32, Errno)> {
    io_report::PHASE_NS[2].store(sys::monotonic_ns(), Relaxed);
    let mut tr = Trailer {
        magic: TRAILER_MAGIC,
        data_hash,
        total_len: trailer_offset + PAGE as u64,
        trailer_hash: 0,
    };
    let tpage = scratch.trailer();
    let tsize = core::mem::size_of::<Trailer>();
    tpage[ZPLAN_HASH_AT..ZPLAN_HASH_AT + 8].copy_from_slice(&piped.unwrap_or(0).to_le_bytes());
    tpage[..tsize].copy_from_slice(bytemuck::bytes_of(&tr));
    tr.trailer_hash = page_hash(tpage, tsize);
    tpage[..tsize].copy_from_slice(bytemuck::bytes_of(&tr));
    write_mem(fd, tpage.as_ptr() as usize, PAGE).map_err(|e| (4, e))?;
    // A placed image (written at once with others through one description): the requester
    // syncs the whole file once, and `O_DIRECT` stays for the images still being written.
    if placed & crate::protocol::FLAG_PLACED_NOSYNC == 0 {
        match super::offload::fd_call(libc::SYS_fdatasync as usize, fd, 0, 0, 0) {
            Ok(_) | Err(Errno(libc::EINVAL)) | Err(Errno(libc::EROFS)) => {}
            Err(e) => return Err((5, e)),
        }
    }
    io_report::PHASE_NS[3].store(sys::monotonic_ns(), Relaxed);
    if placed & crate::protocol::FLAG_PLACED == 0 {
        drop_direct(fd);
    }
    Ok(tr)
}

/// Writes the rest of a delta image whose page data is in the delta buffer ([`HELD`]), with the
/// program running again: the buffer, the trailer, sync; then names the image as the next
/// delta's parent. Returns the image's length.
pub fn write_held(held: Held, scratch: &Scratch) -> Result<u64, (u32, Errno)> {
    let io = |e| (4, e);
    let fd = held.fd;
    let _nonblocking = NonBlocking::new(fd, held.deadline_ns);
    if let Some(meta_len) = held.head_meta_len {
        write_head(fd, scratch, meta_len).map_err(io)?;
    }
    if let Some(at) = held.data_at {
        // After the spill, in the page cache already (`write_cached`).
        sys::lseek(fd, at as i64, libc::SEEK_SET).map_err(io)?;
    }
    let from_buf = [Extent {
        addr: held.buf as u64,
        len: held.held,
        file_off: 0,
    }];
    let hash = memory::write_data_from(fd, &from_buf, held.deadline_ns, None, held.hash);
    let data_hash = hash.map_err(io)?.digest();
    let tr = write_trailer(fd, scratch, data_hash, held.trailer_offset, None, 0)?;
    // Armed in the stop (`finish_or_hold`): the next delta may name this image.
    super::incremental::remember(tr.trailer_hash, tr.total_len);
    Ok(tr.total_len)
}

/// Closes the descriptors in flight the checkpoint kept ([`crate::kinds::unix::keep_in_flight`])
/// when dropped.
struct InFlightGuard;

impl InFlightGuard {
    /// An empty list (a stale one from the saved memory forgotten, not closed).
    fn begin() -> Self {
        crate::kinds::unix::begin_in_flight();
        InFlightGuard
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        crate::kinds::unix::close_in_flight();
    }
}

/// Where [`finish`] writes.
pub struct Dest<'a> {
    /// The image descriptor.
    pub fd: i32,
    /// [`Job::raw_fd`] (-1: none).
    pub raw_fd: i32,
    /// `raw_fd` is the file the compressed image goes to (`protocol::FLAG_ZSPLIT`): a split
    /// image may be written (not when it is a stream destination, compressed elsewhere first).
    pub split_ok: bool,
    /// A split image's compressible pieces go raw while the compressor is behind (not with
    /// `protocol::FLAG_ZWAIT`).
    pub adapt: bool,
    /// With `adapt`: paced by the disk rate of an earlier plain write (`protocol::FLAG_ZPACE`,
    /// `memory::write_split`).
    pub pace: bool,
    /// [`Job::ack_fd`]: a split image's pieces for the compressor are read from our memory by
    /// cr_checkpoint (`protocol::FLAG_ZPULL`); -1: piped.
    pub ack_fd: i32,
    /// `protocol::FLAG_ZPACK`: the zstd level a split image's pieces for the compressor are
    /// compressed at here (`agent::zpack`); 0: not asked.
    pub pack: i32,
    /// `--time` (CLOCK_MONOTONIC; `u64::MAX`: none).
    pub deadline_ns: u64,
    /// A buffer the page data is copied through (`memory::write_data`), or none.
    pub bounce: Option<&'a mut [u8]>,
    /// `protocol::FLAG_PLACED` and `FLAG_PLACED_NOSYNC` of the write order (0: written in turn
    /// at the file position).
    pub placed: u32,
    /// A copy-on-write writer writes it: a placed image's length and offset go through the
    /// control thread (`cow::writer_place`), not the connection.
    pub via_writer: bool,
}

/// Ends the metadata and writes the whole image (header, metadata, page data of `ext`, trailer),
/// then syncs it; returns its length. Page data goes through `bounce` when given
/// (`memory::write_data`). The contents of the saved files of `spans` follow the page data.
pub fn finish(
    out: Dest,
    scratch: &Scratch,
    w: MetaWriter,
    ext: &ExtentList,
    unreadable: &Unreadable,
    spans: &mut super::fds::Spans,
    pid: i32,
) -> Result<u64, (u32, Errno)> {
    match finish_or_hold(out, scratch, w, ext, unreadable, spans, pid, None)? {
        Finished::Bytes(n) => Ok(n),
        // (Never without a buffer.)
        Finished::Held(_) => Err((4, Errno(libc::EINVAL))),
    }
}

/// What [`finish_or_hold`] did. (`Held` is large, the hash state: no heap in the stop.)
#[allow(clippy::large_enum_variant)]
enum Finished {
    /// The image is written and synced: its length.
    Bytes(u64),
    /// Its page data is in the delta buffer (or written): the rest is for [`write_held`].
    Held(Held),
}

/// The rest of a delta image whose page data went into the delta buffer in the stop: written by
/// [`write_held`] once the program runs again.
pub struct Held {
    fd: i32,
    deadline_ns: u64,
    /// The page data's hash so far (the part written in the stop).
    hash: xxhash_rust::xxh3::Xxh3,
    /// The buffer and the bytes of page data it holds.
    buf: usize,
    held: u64,
    /// Where the trailer goes.
    trailer_offset: u64,
    /// The header and metadata (of this length) are still to be written: the page data all
    /// fits the buffer, or its spill went into the page cache.
    head_meta_len: Option<u64>,
    /// Where the buffer's bytes go in the file, after a spill written into the page cache
    /// (else at the current offset).
    data_at: Option<u64>,
}

/// How long a placed image waits for its offset (bounded by `--time` too): the requester sends
/// it once every process of the cut has built its metadata.
const PLACE_WAIT_NS: u64 = 600_000_000_000;

/// `protocol::FLAG_PLACED`: tells the requester our image's length (`total`,
/// `protocol::STATUS_SIZED`) and waits for its offset in the file (`protocol::REQ_PLACE`).
/// `ECANCELED` when the requester releases us instead (another process of the cut failed) or
/// goes away, `ETIMEDOUT` past `--time` (`deadline_ns`). Raw system calls, on the stack.
fn await_place(total: u64, deadline_ns: u64) -> Result<u64, Errno> {
    use crate::protocol::{self, Reply, Request};
    let conn = REQUESTER_CONN.load(Relaxed);
    if conn < 0 {
        return Err(Errno(libc::EINVAL));
    }
    let r = Reply {
        magic: protocol::MAGIC,
        status: protocol::STATUS_SIZED,
        bytes: total,
        msg: [0; 240],
    };
    let b = bytemuck::bytes_of(&r);
    let n = sys::sys6(
        libc::SYS_sendto as usize,
        conn as usize,
        b.as_ptr() as usize,
        b.len(),
        libc::MSG_NOSIGNAL as usize,
        0,
        0,
    )?;
    if n != b.len() {
        return Err(Errno(libc::ECANCELED));
    }
    let limit = deadline_ns.min(sys::monotonic_ns().saturating_add(PLACE_WAIT_NS));
    loop {
        let now = sys::monotonic_ns();
        if now >= limit {
            return Err(Errno(libc::ETIMEDOUT));
        }
        let ms = ((limit - now) / 1_000_000).clamp(1, 100) as i32;
        let ev = sys::poll_one(conn, libc::POLLIN | libc::POLLRDHUP, ms);
        if ev & libc::POLLIN != 0 {
            let mut req: Request = bytemuck::Zeroable::zeroed();
            let n = sys::sys6(
                libc::SYS_recvfrom as usize,
                conn as usize,
                &mut req as *mut Request as usize,
                core::mem::size_of::<Request>(),
                0,
                0,
                0,
            );
            return match n {
                Ok(n)
                    if n == core::mem::size_of::<Request>()
                        && req.magic == protocol::MAGIC
                        && req.kind == protocol::REQ_PLACE =>
                {
                    Ok(req.place_offset())
                }
                Err(Errno(libc::EINTR)) => continue,
                // A release (the cut was given up), or the requester is gone.
                _ => Err(Errno(libc::ECANCELED)),
            };
        }
        if ev & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
            return Err(Errno(libc::ECANCELED));
        }
    }
}

/// Writes the header page and the metadata (`meta_len` bytes, page padded) from the scratch
/// area, and sends the first progress message.
fn write_head(fd: i32, scratch: &Scratch, meta_len: u64) -> Result<(), Errno> {
    write_mem(fd, scratch.header().as_ptr() as usize, PAGE)?;
    write_mem(
        fd,
        scratch.meta().as_ptr() as usize,
        page_align(meta_len) as usize,
    )?;
    progress::tick(true);
    Ok(())
}

/// [`finish`], or, with `hold` (the delta buffer; the image has no saved files), in the stop
/// only: the header, metadata and the page data that does not fit the buffer are written, the
/// rest of the page data is copied into the buffer, and every eligible region is armed for
/// the next delta; [`write_held`] writes the rest after the release. A copy that fails
/// writes the rest from memory instead, stopped (and says so).
#[allow(clippy::too_many_arguments)]
fn finish_or_hold(
    out: Dest,
    scratch: &Scratch,
    mut w: MetaWriter,
    ext: &ExtentList,
    unreadable: &Unreadable,
    spans: &mut super::fds::Spans,
    pid: i32,
    hold: Option<(usize, usize)>,
) -> Result<Finished, (u32, Errno)> {
    let Dest {
        mut fd,
        raw_fd,
        split_ok,
        adapt,
        pace,
        ack_fd,
        pack,
        deadline_ns,
        bounce,
        placed,
        via_writer,
    } = out;
    let full = |_| (1, Errno(libc::ENOMEM));
    // `--compress` with the destination at hand (`raw_fd`): every piece of the page data is
    // sampled; pieces that look incompressible go straight to the file, as an uncompressed
    // checkpoint writes them (direct, asynchronous), not through the pipe: the whole image
    // (a plain image) when they are at least 7/8 of the page data, else only they and the
    // pieces whose turn comes while the compressor is behind (a split image: the rest goes
    // through the pipe to be compressed, each piece after its index, with a plan saying which
    // pieces looked incompressible, `REC_ZPLAN`). See docs/IMAGE-FORMAT.md "Compressed images".
    // split: (the plan's bits in the metadata, the data area's offset in the compressed image).
    let mut split: Option<(core::ops::Range<usize>, u64)> = None;
    if raw_fd >= 0 {
        let records = w.len();
        let mut npieces = 0usize;
        crate::image::compress::for_each_piece(ext.all(), |_, _, _| npieces += 1);
        let nbytes = npieces.div_ceil(8);
        let head = core::mem::size_of::<RecordHeader>() + core::mem::size_of::<ZPlan>();
        let room = w.ahead(head).len() >= align8(nbytes) + 8;
        let bits = &mut w.ahead(head)[..if room { nbytes } else { 0 }];
        let (bad, bad_len) = if room {
            memory::sample_pieces(ext.all(), bits)
        } else {
            // (No room for the plan: sampled all the same, into nothing, for the verdict.)
            memory::sample_pieces(ext.all(), &mut [])
        };
        io_report::SAMPLED.store(bad << 32 | npieces as u64, Relaxed);
        let total = ext.data_len;
        let splittable = hold.is_none()
            && bounce.is_none()
            && split_ok
            && sys::fstat(raw_fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        if bad_len > 0 && bad_len * 8 >= total * 7 {
            fd = raw_fd;
            io_report::STORED_RAW.store(io_report::SKIPPED, Relaxed);
        } else if total > 0 && !splittable {
            io_report::STORED_RAW.store(io_report::NO_SPLIT, Relaxed);
        } else if total > 0 && !room {
            io_report::STORED_RAW.store(io_report::NO_PLAN, Relaxed);
        } else if total > 0 {
            // Split even when every piece looks compressible: those whose turn comes while
            // the compressor is behind are written raw too (`memory::write_split`).
            let meta = crate::image::compress::compressed_meta_len(records, npieces);
            let data_offset = PAGE as u64 + page_align(meta as u64);
            let plan = ZPlan {
                npieces: npieces as u64,
                raw_len: bad_len,
                data_offset,
            };
            w.record_placed(REC_ZPLAN, &plan, nbytes).map_err(full)?;
            let at = records + head;
            split = Some((at..at + nbytes, data_offset));
            io_report::STORED_RAW.store(io_report::SPLIT, Relaxed);
        }
        // (A split's bits were sampled into the metadata area past its end: the padding
        // below zeroes them when no plan record holds them.)
    }
    w.raw(REC_END, &[]).map_err(full)?;
    // The metadata goes out in whole pages: what lies past its end in the last one (state a
    // capture wrote ahead and gave up, `MetaWriter::ahead`) is zeroed, not written out.
    let pad = page_align(w.len() as u64) as usize - w.len();
    let _ = w.ahead(0).get_mut(..pad).map(|tail| tail.fill(0));

    let meta_len = w.len() as u64;
    let meta_hash = hash(w.bytes());
    io_report::PHASE_NS[1].store(sys::monotonic_ns(), Relaxed);
    let (xcr0, xsave_size) = xsave_info();
    let mut hdr = FileHeader {
        magic: MAGIC,
        version: if super::incremental::is_delta() {
            VERSION_DELTA
        } else {
            VERSION_FULL
        },
        header_size: core::mem::size_of::<FileHeader>() as u32,
        arch: ARCH_X86_64,
        page_size: PAGE as u32,
        meta_offset: PAGE as u64,
        meta_len,
        meta_hash,
        data_offset: PAGE as u64 + page_align(meta_len),
        // The memory pages, then the saved files' contents.
        data_len: ext.data_len + spans.total,
        trailer_offset: 0,
        xcr0,
        xsave_size,
        pid: pid as u32,
        time_ns: realtime_ns(),
        kernel_release: [0; 64],
        header_hash: 0,
    };
    hdr.trailer_offset = hdr.data_offset + hdr.data_len;
    kernel_release(&mut hdr.kernel_release);
    let hpage = scratch.header();
    let hsize = core::mem::size_of::<FileHeader>();
    hpage[..hsize].copy_from_slice(bytemuck::bytes_of(&hdr));
    hdr.header_hash = page_hash(hpage, hsize);
    hpage[..hsize].copy_from_slice(bytemuck::bytes_of(&hdr));
    if placed & crate::protocol::FLAG_PLACED != 0 {
        // Written at once with the other images of the tree file: our length to the requester,
        // which answers with our offset. (Only a plain image can be placed: the requester
        // never asks with `--compress`, nor for a delta.) A copy-on-write writer's length and
        // offset go through its control thread, the only reader of the connection.
        if raw_fd >= 0 || hold.is_some() {
            return Err((4, Errno(libc::EINVAL)));
        }
        let total = hdr.trailer_offset + PAGE as u64;
        let at = if via_writer {
            super::cow::writer_place(scratch, total, deadline_ns)
        } else {
            await_place(total, deadline_ns)
        }
        .map_err(|e| (4, e))?;
        PLACED_AT.store(at, Relaxed);
    }

    // O_DIRECT only on regular files: on a pipe it means packet mode, where a reader with a
    // smaller buffer than a packet silently loses the rest of it. (A split image: on the file,
    // which gets the pieces the agent writes.)
    let regular = |fd| sys::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    // A delta's spill (its page data over the buffer) goes into the page cache in the stop
    // when it is small and the image a regular file (`agent::deltabuf`): where the page data
    // starts in the file then.
    let spill_at = hold
        .map(|b| ext.data_len.saturating_sub(b.1 as u64))
        .filter(|&n| n > 0 && n <= super::deltabuf::SPILL_CACHED_MAX && regular(fd))
        .filter(|_| {
            sys::fcntl(fd, libc::F_GETFL, 0).is_ok_and(|fl| fl & libc::O_APPEND as usize == 0)
        })
        .and_then(|_| sys::lseek(fd, 0, libc::SEEK_CUR).ok())
        .map(|pos| pos as u64 + hdr.data_offset);
    let direct_fd = if split.is_some() { raw_fd } else { fd };
    if regular(direct_fd) {
        let fl = sys::fcntl(direct_fd, libc::F_GETFL, 0).unwrap_or(0);
        match sys::fcntl(direct_fd, libc::F_SETFL, fl | libc::O_DIRECT as usize) {
            Ok(_) => io_report::MODE.store(io_report::DIRECT, Relaxed),
            Err(e) => {
                io_report::MODE.store(io_report::REFUSED, Relaxed);
                io_report::ERRNO.store(e.0, Relaxed);
            }
        }
    }
    let io = |e| (4, e);
    progress::TOTAL.store(hdr.trailer_offset + PAGE as u64, Relaxed);
    let _nonblocking = NonBlocking::new(fd, deadline_ns);
    // A delta whose page data all fits the buffer, or whose spill goes into the page cache: the
    // header and metadata (ours, in the scratch area: they do not change once the program
    // runs) are written after the release too; else they go first, with the spill.
    let head_later = hold
        .is_some_and(|b| ext.data_len > 0 && (ext.data_len <= b.1 as u64 || spill_at.is_some()));
    if let Some((bits, raw_at)) = split {
        // A split image: the pieces the agent writes go to the file, the rest, the header,
        // metadata, saved files and trailer through the pipe (`write_split`).
        write_head(fd, scratch, meta_len).map_err(io)?;
        unreadable.set(true);
        let data = memory::write_split(
            fd,
            raw_fd,
            ext.all(),
            &w.bytes()[bits],
            raw_at,
            adapt,
            pace,
            ack_fd,
            pack,
            deadline_ns,
        );
        unreadable.set(false);
        let (hash, piped, behind, (pace, waited), pull) = data.map_err(io)?;
        io_report::BEHIND.store(behind.0, Relaxed);
        io_report::PULL.store(pull, Relaxed);
        io_report::PACE.store(pace, Relaxed);
        io_report::WAITED_NS.store(waited, Relaxed);
        super::fds::write_spans(fd, spans, deadline_ns).map_err(io)?;
        let tr = write_trailer(
            fd,
            scratch,
            hash.digest(),
            hdr.trailer_offset,
            Some(piped),
            0,
        )?;
        super::incremental::written(tr.trailer_hash, tr.total_len);
        return Ok(Finished::Bytes(tr.total_len));
    }
    if !head_later {
        write_head(fd, scratch, meta_len).map_err(io)?;
    }
    unreadable.set(true);
    let data = match hold {
        Some(buf) => hold_data(
            fd,
            ext.all(),
            deadline_ns,
            buf,
            head_later.then_some((scratch, meta_len)),
            spill_at,
        ),
        None => memory::write_data_from(
            fd,
            ext.all(),
            deadline_ns,
            bounce,
            xxhash_rust::xxh3::Xxh3::new(),
        )
        .map(|h| (h, 0)),
    };
    unreadable.set(false);
    let (hash, held) = data.map_err(io)?;
    if let Some((buf, _)) = hold.filter(|_| held > 0) {
        // The page data is all in the image or the buffer: everything written from now on is
        // seen by the next delta (the scans protected the written pages again already).
        super::incremental::arm_now();
        return Ok(Finished::Held(Held {
            fd,
            deadline_ns,
            hash,
            buf,
            held,
            trailer_offset: hdr.trailer_offset,
            head_meta_len: if head_later { Some(meta_len) } else { None },
            data_at: spill_at.map(|at| at + ext.data_len - held),
        }));
    }
    let data_hash = hash.digest();
    let data_ns = sys::monotonic_ns().saturating_sub(io_report::PHASE_NS[1].load(Relaxed));
    super::fds::write_spans(fd, spans, deadline_ns).map_err(io)?;
    let tr = write_trailer(fd, scratch, data_hash, hdr.trailer_offset, None, placed)?;
    // The page data written straight from memory to the file, direct and asynchronous, as a
    // plain checkpoint does, and enough of it to tell: its rate paces the next split image
    // (`memory::write_split`). (After the trailer: nothing is in flight.)
    if hold.is_none()
        && ext.data_len >= 32 << 20
        && io_report::MODE.load(Relaxed) == io_report::DIRECT
        && io_report::AIO.load(Relaxed) == 1
        && data_ns > 0
    {
        let per_mib = ((data_ns as u128) << 20) / ext.data_len as u128;
        memory::DISK_NS_PER_MIB.store(per_mib as u64, Relaxed);
    }
    // Written stopped: arm write-tracking for the next incremental checkpoint (a copy-on-write
    // writer does nothing here: the program armed itself in the stop, see `cow::start`).
    super::incremental::written(tr.trailer_hash, tr.total_len);
    Ok(Finished::Bytes(tr.total_len))
}
