//! Asynchronous direct writes of the page data (Linux native AIO: `io_setup`, `io_submit`,
//! `io_getevents`), so that the disk writes one piece while the control thread hashes the next.
//!
//! Written one `write(2)` at a time, a checkpoint took the raw write's time plus the page
//! data's hashing (xxh3 over every byte, which on a loaded 2-core machine waits for a core while
//! the disk idles). Here up to [`DEPTH`] pieces of up to 8 MiB (each a `pwritev` of up to
//! [`MAX_IOV`] extents contiguous in the file) are in flight at once; each is hashed after it is
//! submitted. Direct writes that extend a file are waited for inside `io_submit` on ext4
//! (`IOMAP_DIO_FORCE_WAIT`), so the file is first extended to the end of the page data
//! (`ftruncate`; the rest of the image follows it). No allocation, no lock, no thread: the ring
//! lives on the writer's stack. Its kernel AIO context is destroyed when the ring is dropped if
//! anything is still in flight (which waits for it); otherwise the control thread destroys it
//! once the program runs again ([`destroy_deferred`]), since `io_destroy` always waits for an
//! RCU grace period (26-30 ms here), which was part of every stop.
//!
//! While pieces are in flight nothing of the program's memory may change, the agent's own
//! statics included (they are in the image, and the disk reads a piece after it was hashed): the
//! ring counts the bytes written and the time of the last progress message itself, and the
//! I/O report's statics are updated once everything is written. Nor may the kernel write the
//! control thread's rseq area in its TLS (which it does after each preemption or move to
//! another CPU): `image::write_callback` suspends that registration while the image is
//! written (`agent::RseqPause`; tests/lazy_restore.rs `*_moved_between_cpus`). Without that,
//! a restored process's image (its control thread has an rseq area) failed its checksum under
//! load in 2 of 8 runs of trees `checkpoint_through_cr_restart_unprivileged`.

use crate::sys::{self, Errno};

/// Pieces in flight at once: two keep the disk busy while the next one is hashed. Each more
/// would delay the release of a program whose requester died (or whose `--time` ran out) by
/// a piece's write: everything in flight is waited for (a direct write cannot be cancelled).
pub const DEPTH: usize = 2;
/// Slots of a ring at most: [`DEPTH`], or one more when the pieces are copied into a bounce
/// ring first (`agent::bounce`: [`DEPTH`] on the disk while the next one is copied).
pub const MAX_SLOTS: usize = super::bounce::SLOTS;
/// Extents in one piece (`pwritev`), at most.
pub const MAX_IOV: usize = 256;

const IOCB_CMD_PWRITEV: u16 = 8;

/// The kernel's `struct iocb` (x86-64, little endian).
#[repr(C)]
#[derive(Clone, Copy)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: u32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// The kernel's `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const NO_IOV: libc::iovec = libc::iovec {
    iov_base: core::ptr::null_mut(),
    iov_len: 0,
};

/// One piece: extents contiguous in the file, written with one `pwritev`.
struct Slot {
    iov: [libc::iovec; MAX_IOV],
    n: usize,
    off: u64,
    len: u64,
    busy: bool,
    iocb: Iocb,
}

/// A ring of [`DEPTH`] (or `depth`) pieces on one descriptor.
pub struct Ring {
    ctx: u64,
    fd: i32,
    slots: [Slot; MAX_SLOTS],
    /// Slots in use (at most [`MAX_SLOTS`]).
    depth: usize,
    /// The piece being filled.
    cur: usize,
    /// File offset where the next piece goes.
    next_off: u64,
    /// Image bytes written before the ring started ([`io_report::WRITTEN`]).
    base: u64,
    /// Bytes the ring wrote.
    done: u64,
    /// CLOCK_MONOTONIC of the last progress message.
    last_ns: u64,
    /// `--time` (CLOCK_MONOTONIC; `u64::MAX`: none), checked as pieces complete.
    deadline_ns: u64,
    /// File offset of a piece the kernel refused with `EINVAL` under `O_DIRECT` (rewritten
    /// without it), for the I/O report.
    dropped_at: Option<u64>,
    /// 0: the context may be destroyed after the release ([`DEFERRED`]), its ring's mapping
    /// is not copied by a fork; else why that mapping could not be marked so ([`dont_fork`]).
    no_mark: i32,
}

use super::image::io_report;

impl Ring {
    /// Sets up an AIO context of `depth` slots (at most [`MAX_SLOTS`]) for writes to `fd`
    /// starting at its current offset (a placed image: at its place, `image::PLACED_AT`), the
    /// file extended to hold `len` more bytes; the errno when AIO is not available (the caller
    /// writes synchronously then, and says so).
    pub fn new(fd: i32, len: u64, deadline_ns: u64, depth: usize) -> Result<Ring, Errno> {
        use core::sync::atomic::Ordering::Relaxed;
        let depth = depth.clamp(1, MAX_SLOTS);
        let placed = super::image::PLACED_AT.load(Relaxed);
        let off = if placed == u64::MAX {
            sys::lseek(fd, 0, libc::SEEK_CUR)? as u64
        } else {
            placed + io_report::WRITTEN.load(Relaxed)
        };
        let mut ctx = 0u64;
        sys::sys3(
            libc::SYS_io_setup as usize,
            depth,
            &mut ctx as *mut u64 as usize,
            0,
        )?;
        // Not an extending write any more (see the module comment); where the file cannot be
        // extended the writes are still right, only waited for one by one. (A placed image's
        // file was extended by the requester to hold every image of the cut: its size is never
        // lowered here by a process whose place comes before another's.)
        // (Destroyed by the helper if the image is given up while a piece waits on the
        // destination: `agent::offload`.)
        super::offload::set_aio_ctx(ctx);
        let no_mark = dont_fork(ctx);
        if sys::fstat(fd).is_ok_and(|st| (st.st_size as u64) < off + len) {
            let _ = super::offload::fd_call(
                libc::SYS_ftruncate as usize,
                fd,
                (off + len) as usize,
                0,
                0,
            );
        }
        const EMPTY: Slot = Slot {
            iov: [NO_IOV; MAX_IOV],
            n: 0,
            off: 0,
            len: 0,
            busy: false,
            iocb: Iocb {
                data: 0,
                key: 0,
                rw_flags: 0,
                opcode: 0,
                reqprio: 0,
                fildes: 0,
                buf: 0,
                nbytes: 0,
                offset: 0,
                reserved2: 0,
                flags: 0,
                resfd: 0,
            },
        };
        Ok(Ring {
            ctx,
            fd,
            slots: [EMPTY; MAX_SLOTS],
            depth,
            cur: 0,
            next_off: off,
            base: io_report::WRITTEN.load(core::sync::atomic::Ordering::Relaxed),
            done: 0,
            last_ns: 0,
            deadline_ns,
            dropped_at: None,
            no_mark,
        })
    }

    /// Whether the piece being filled can take `len` more bytes (a piece holds at most `max`).
    pub fn fits(&self, len: u64, max: u64) -> bool {
        let s = &self.slots[self.cur];
        s.n < MAX_IOV && (s.n == 0 || s.len + len <= max)
    }

    /// Adds `len` bytes of memory at `addr` to the piece being filled (check [`Ring::fits`]).
    pub fn add(&mut self, addr: usize, len: u64) {
        let s = &mut self.slots[self.cur];
        s.iov[s.n] = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len as usize,
        };
        s.n += 1;
        s.len += len;
    }

    /// Submits the piece being filled (if any); returns its extents, to be hashed while the disk
    /// writes them. Waits first for a free slot when every other one is in flight.
    pub fn submit(&mut self) -> Result<&[libc::iovec], Errno> {
        let i = self.cur;
        if self.slots[i].n == 0 {
            return Ok(&[]);
        }
        let ctx = self.ctx;
        let fd = self.fd;
        let s = &mut self.slots[i];
        s.off = self.next_off;
        self.next_off += s.len;
        s.iocb = Iocb {
            data: i as u64,
            key: 0,
            rw_flags: 0,
            opcode: IOCB_CMD_PWRITEV,
            reqprio: 0,
            fildes: fd as u32,
            buf: s.iov.as_ptr() as u64,
            nbytes: s.n as u64,
            offset: s.off as i64,
            reserved2: 0,
            flags: 0,
            resfd: 0,
        };
        s.busy = true;
        // SAFETY: Iocb is 8 plain words (repr(C), no padding).
        let words: [u64; 8] = unsafe { core::mem::transmute(s.iocb) };
        match super::offload::io_submit(ctx, &words, s.iov.as_ptr() as usize, s.n) {
            Ok(1) => {}
            Err(Errno(libc::EINTR)) | Err(Errno(libc::EAGAIN)) | Ok(_) => {
                // (EAGAIN: the kernel is short of resources: write it ourselves.)
                s.busy = false;
                sync_write(fd, &s.iov[..s.n], s.off, 0)?;
                let len = s.len;
                self.written(len);
            }
            Err(e) => {
                s.busy = false;
                return Err(e);
            }
        }
        // The next piece goes into the next slot, once that one is written (pieces may
        // complete in any order: reaping one is not reaping that one).
        self.cur = (i + 1) % self.depth;
        while self.slots[self.cur].busy {
            self.reap(1)?;
        }
        let next = &mut self.slots[self.cur];
        next.n = 0;
        next.len = 0;
        let s = &self.slots[i];
        Ok(&s.iov[..s.n])
    }

    /// Whether [`Ring::submit`] would wait for the disk now (the slot after the one being
    /// filled still in flight), once what has completed is reaped without waiting.
    pub fn would_wait(&mut self) -> Result<bool, Errno> {
        let next = (self.cur + 1) % self.depth;
        if self.slots[next].busy {
            self.reap(0)?;
        }
        Ok(self.slots[next].busy)
    }

    /// Waits for at least `min` pieces in flight to complete (0: none, only reaps); a piece written short is finished
    /// with plain writes, one the kernel refused with `EINVAL` under `O_DIRECT` is written
    /// again without it (said in the I/O report, as for synchronous writes).
    fn reap(&mut self, min: usize) -> Result<(), Errno> {
        let mut words = [[0u64; 4]; MAX_SLOTS];
        let n = loop {
            match super::offload::io_getevents(self.ctx, min, &mut words) {
                Err(Errno(libc::EINTR)) => {}
                r => break r?,
            }
        };
        // SAFETY: IoEvent is 4 plain words (repr(C), no padding).
        let events: [IoEvent; MAX_SLOTS] = unsafe { core::mem::transmute(words) };
        // A piece is done: past --time, or with the requester gone, give up (what is still in
        // flight is waited for when the ring is dropped).
        super::image::write_must_stop(self.deadline_ns)?;
        let mut failed = None;
        for ev in &events[..n] {
            let i = (ev.data as usize) % self.depth;
            self.slots[i].busy = false;
            let (len, off) = (self.slots[i].len, self.slots[i].off);
            let res = ev.res;
            if res == len as i64 {
                self.written(len);
                continue;
            }
            let from = if res >= 0 {
                res as u64
            } else if res == -(libc::EINVAL as i64)
                && (self.dropped_at.is_some() || super::image::drop_direct(self.fd))
            {
                self.dropped_at.get_or_insert(off);
                0
            } else {
                failed = Some(Errno(-res as i32));
                continue;
            };
            let s = &self.slots[i];
            match sync_write(self.fd, &s.iov[..s.n], off, from) {
                Ok(()) => self.written(len),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Submits what is left, waits for everything, and leaves the descriptor's offset after the
    /// last piece (not for a placed image: the offset is shared).
    pub fn finish(&mut self) -> Result<(), Errno> {
        self.submit()?;
        while self.slots.iter().any(|s| s.busy) {
            self.reap(1)?;
        }
        // Nothing is in flight any more: the statics may change.
        use core::sync::atomic::Ordering::Relaxed;
        if super::image::PLACED_AT.load(Relaxed) == u64::MAX {
            sys::lseek(self.fd, self.next_off as i64, libc::SEEK_SET)?;
        }
        io_report::WRITTEN.store(self.base + self.done, Relaxed);
        if let Some(at) = self.dropped_at {
            io_report::MODE.store(io_report::DROPPED, Relaxed);
            io_report::AT.store(at, Relaxed);
        }
        Ok(())
    }

    /// The slot being filled (its buffer in a bounce ring: `agent::bounce::slot`).
    pub fn slot(&self) -> usize {
        self.cur
    }

    /// `n` more bytes are written: a progress message when it is time.
    fn written(&mut self, n: u64) {
        self.done += n;
        super::image::progress::tick_from(self.base + self.done, &mut self.last_ns);
    }
}

/// Set in a copy-on-write writer (`agent::cow`): a ring with nothing in flight keeps its
/// kernel context, which the writer's exit destroys once the control thread has its report.
/// (`io_destroy` waits for an RCU grace period before it returns: 33 ms of a 1 GiB writer's
/// page data phase on this machine, strace.)
static IN_WRITER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// In a copy-on-write writer, before anything is written: see [`IN_WRITER`].
pub fn in_writer() {
    IN_WRITER.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// The kernel context of the last ring of a stopped checkpoint, with nothing in flight, left for
/// the control thread to destroy once the program runs again ([`destroy_deferred`]):
/// `io_destroy` waits for an RCU grace period before it returns, 26-30 ms of every stopped
/// checkpoint's stop on this machine (strace, 256 MiB), whatever the image's size. 0: none.
/// (In `.data1`, the page the loader writes anyway: the fork handler reads it.)
#[link_section = ".data1"]
static DEFERRED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Once the program runs again (the control thread, at the end of a request): destroys the
/// context [`Ring`]'s drop left ([`DEFERRED`]).
pub fn destroy_deferred() {
    use core::sync::atomic::Ordering::AcqRel;
    let ctx = DEFERRED.swap(0, AcqRel);
    if ctx != 0 {
        let _ = sys::sys6(libc::SYS_io_destroy as usize, ctx as usize, 0, 0, 0, 0, 0);
    }
}

/// In a fork child, and in a restored process: a context left by [`Ring`]'s drop is the
/// parent's (the child has no copy of its ring: [`dont_fork`]) or the image's, not ours; its
/// id (the address of its ring's mapping) could name one of the program's own later.
/// Forgotten, never destroyed. (Read first, written only when set.)
#[link_section = ".text.hot.libcr_start"]
pub fn forget_deferred() {
    use core::sync::atomic::Ordering::{Acquire, Release};
    if DEFERRED.load(Acquire) != 0 {
        DEFERRED.store(0, Release);
    }
}

/// The kernel's `struct aio_ring` header at the start of a context's ring mapping (its id):
/// `nr` events of 32 bytes follow the 32-byte header (the layout libaio reads too).
const AIO_RING_MAGIC: u32 = 0xa10a_10a1;

/// Marks a new context's ring mapping `MADV_DONTFORK`: 0 when done, else why not (the
/// `madvise` errno, or [`io_report::CTX_HEADER`]). The ring's mapping (`/[aio] (deleted)`,
/// shared) would otherwise be copied into a child the program forks between its release and
/// [`destroy_deferred`], whose own checkpoint would save it as the program's shared memory: a
/// context is left for later only when no fork can copy it.
fn dont_fork(ctx: u64) -> i32 {
    // SAFETY: the header of the ring the kernel has just mapped for this context at `ctx`.
    let h = unsafe { core::slice::from_raw_parts(ctx as *const u32, 8) };
    if h[4] != AIO_RING_MAGIC || h[7] != 32 {
        return io_report::CTX_HEADER;
    }
    let len = (32 + 32 * h[1] as usize).next_multiple_of(crate::image::format::PAGE);
    match sys::sys3(
        libc::SYS_madvise as usize,
        ctx as usize,
        len,
        libc::MADV_DONTFORK as usize,
    ) {
        Ok(_) => 0,
        Err(e) => e.0,
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
        let idle = !self.slots.iter().any(|s| s.busy);
        if idle && IN_WRITER.load(Relaxed) {
            return;
        }
        // Nothing in flight and the image not given up (its helper may still be in a call on
        // the context): destroyed after the release. Written only now, with every piece on
        // the disk: the image holds this static's page as it was (0), like every static.
        if idle && !super::offload::abandoned() {
            if self.no_mark == 0
                && DEFERRED
                    .compare_exchange(0, self.ctx, AcqRel, Acquire)
                    .is_ok()
            {
                return;
            }
            // Destroyed below, in the stop (an RCU grace period): said under -v.
            io_report::CTX_IN_STOP.store(
                if self.no_mark != 0 {
                    self.no_mark
                } else {
                    io_report::CTX_TAKEN
                },
                Relaxed,
            );
        }
        // Waits for (or cancels) whatever is still in flight: the memory it reads is the
        // program's, which runs again once we return.
        // Through the helper while the image is written stopped: if the image was given up,
        // this fails at once and the helper destroys the context once its call returns.
        let _ = super::offload::sys6(
            libc::SYS_io_destroy as usize,
            self.ctx as usize,
            0,
            0,
            0,
            0,
            0,
        );
    }
}

/// A ring for writing `extents` to `fd`, when that helps and works: a regular file written
/// with `O_DIRECT` (buffered writes gain nothing), not `O_APPEND` (where `pwritev` ignores the
/// offset). Records in the I/O report whether it was used, and why not.
pub fn ring_for(
    fd: i32,
    extents: &[crate::image::format::Extent],
    deadline_ns: u64,
    depth: usize,
) -> Option<Ring> {
    ring_for_len(fd, extents.iter().map(|e| e.len).sum(), deadline_ns, depth)
}

/// [`ring_for`] `len` bytes (a split image's pieces, `memory::write_split`).
pub fn ring_for_len(fd: i32, len: u64, deadline_ns: u64, depth: usize) -> Option<Ring> {
    use core::sync::atomic::Ordering::Relaxed;
    // (Not direct: `-v` says why in its `io=`; nothing to write: nothing to say.)
    if io_report::MODE.load(Relaxed) != io_report::DIRECT || len == 0 {
        return None;
    }
    if sys::fcntl(fd, libc::F_GETFL, 0).is_ok_and(|fl| fl & libc::O_APPEND as usize != 0) {
        io_report::AIO_ERRNO.store(io_report::AIO_APPEND, Relaxed);
        return None;
    }
    match Ring::new(fd, len, deadline_ns, depth) {
        Ok(r) => {
            io_report::AIO.store(1, Relaxed);
            Some(r)
        }
        Err(e) => {
            io_report::AIO_ERRNO.store(e.0, Relaxed);
            None
        }
    }
}

/// Writes `len` bytes of the program's memory at `addr` to file offset `off` of `fd` with
/// `pwrite` (no ring). Returns whether `O_DIRECT` was dropped for it (refused with `EINVAL`,
/// written again without): the caller says so in the I/O report once the page data is
/// written (no static of the image changes between a piece's hash and its write).
pub fn pwrite_mem(fd: i32, addr: usize, len: u64, off: u64) -> Result<bool, Errno> {
    let iov = [libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len as usize,
    }];
    match sync_write(fd, &iov, off, 0) {
        Err(Errno(libc::EINVAL)) if super::image::drop_direct(fd) => {
            sync_write(fd, &iov, off, 0).map(|_| true)
        }
        r => r.map(|_| false),
    }
}

/// Writes the extents `iov` at file offset `off`, from byte `from` of them on, with `pwrite`.
fn sync_write(fd: i32, iov: &[libc::iovec], off: u64, from: u64) -> Result<(), Errno> {
    let mut at = 0u64;
    for v in iov {
        let len = v.iov_len as u64;
        if at + len > from {
            let skip = from.saturating_sub(at);
            let mut done = skip;
            while done < len {
                // (The extent is readable memory of the program, see memory::write_data.)
                match super::offload::fd_call(
                    libc::SYS_pwrite64 as usize,
                    fd,
                    v.iov_base as usize + done as usize,
                    (len - done) as usize,
                    (off + at + done) as usize,
                ) {
                    Ok(0) => return Err(Errno(libc::EIO)),
                    Ok(n) => done += n as u64,
                    Err(Errno(libc::EINTR)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        at += len;
    }
    Ok(())
}
