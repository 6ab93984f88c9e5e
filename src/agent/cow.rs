//! Copy-on-write checkpoints (`cr_checkpoint --cow`): the program is stopped only while its
//! state is recorded; a forked writer writes the page data while the program runs on.
//!
//! In the stop (control thread, every other thread parked) the agent records everything memory
//! does not carry — process state, threads, descriptors with pipe contents, pending signals,
//! SysV semaphores — and copies the pages of shared memory (shared anonymous, memfd, SysV
//! segments, tmpfs files; a fork shares them with the program instead of copying them) into a
//! mapping of its own. Then it creates the writer with `clone3` (no `CLONE_VM`): a process whose
//! private memory is a copy-on-write snapshot of the program's at that instant, and whose only
//! thread is the control thread's copy. The program's threads are released at once.
//!
//! The writer (on a stack in the scratch area, which is shared with the parent) closes every
//! descriptor but the image's and the requester's connection, then does what a stopped
//! checkpoint does after the stop: it reads its own `/proc/self/maps` and pagemap (its address
//! space is the snapshot: same regions, same pages; the scratch area and the copy are left out),
//! takes the shared regions' pages from the copy, appends the records captured in the stop, and
//! writes and syncs the image, its page data through a bounce ring of its own and the AIO ring
//! (`agent::bounce::for_writer`), as a stopped checkpoint writes. It uses raw system calls
//! only (no allocation, no lock: it is a one-thread copy of a process whose other threads may
//! have held any lock). Done, it signals an eventfd before its exit (which tears down its copy
//! of the address space: tens of ms per GiB), so that the requester is answered at once.
//!
//! It is invisible to the program (in a session of its own, so that neither signals to the
//! program's process group nor an exact-pid restart meet it): its exit signal is 0 (no `SIGCHLD`, and `waitpid(-1)` without
//! `__WALL` never sees such a child), it is reaped through its pidfd, and it dies with the
//! program (`PR_SET_PDEATHSIG`: the control thread that created it) or when the requester goes
//! away (the writer checks the connection every 64 MiB, the control thread kills it; a killed
//! writer still waiting in the kernel 20 ms later, an `O_DIRECT` write the destination does not
//! answer, is left behind and reaped when it ends: `agent::offload`). The
//! requester commits (rename) and sends `--term`/`--kill`/`--stop` only after the writer
//! succeeded; a writer that fails fails the checkpoint like any other failure.
//!
//! One member of a cut written at once (`protocol::FLAG_PLACED`, docs/ARCHITECTURE.md
//! "Copy-on-write of several processes"): the program is released only when the requester
//! says every member's writer exists (`protocol::REQ_RUN`, `control::finish_cow`), and the
//! writer's image length and offset go through the control thread, the only reader of the
//! connection ([`writer_place`], [`wait`]).

use super::image::{self, io_report, Job};
use super::memory::{self, ExtentList, Precopy, SaveByContent, Unreadable};
use super::scratch::Scratch;
use crate::image::writer::MetaWriter;
use crate::sys::{self, Errno, StackBuf};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};

/// Most bytes of shared memory copied in the stop; with more, the checkpoint is written stopped
/// (copying takes about as long as writing them would).
pub const PRECOPY_LIMIT: u64 = 1 << 30;

/// A copy-on-write checkpoint was written stopped: its shared memory is over [`PRECOPY_LIMIT`].
pub const NOTE_SHARED_LIMIT: u32 = 1;
/// … its shared memory could not be listed or copied.
pub const NOTE_PRECOPY: u32 = 2;
/// … the writer process could not be created.
pub const NOTE_CLONE: u32 = 3;
/// … the checkpoint was forwarded to other processes, or is an API request.
pub const NOTE_FORWARD: u32 = 4;
/// … its SysV semaphores or message queues could not be recorded in the stop.
pub const NOTE_SEM: u32 = 5;
/// … it has memory a fork does not copy (`MADV_DONTFORK`).
pub const NOTE_DONTFORK: u32 = 7;
/// … it saves files by content (under temporary directories, `--save-written`, unlinked): they
/// are copied while the program is stopped, so that it cannot change them meanwhile.
pub const NOTE_FILES: u32 = 8;
/// … it is one of several processes written at once and its writer's eventfd could not be
/// made (the writer's length goes to the control thread through it).
pub const NOTE_EVENTFD: u32 = 9;

/// Why a `--cow` request was written stopped, for `-v`.
pub fn note_text(note: u32) -> &'static [u8] {
    match note {
        NOTE_SHARED_LIMIT => b"over 1 GiB of shared memory",
        NOTE_PRECOPY => b"its shared memory could not be copied",
        NOTE_CLONE => b"the writer process could not be created",
        NOTE_FORWARD => b"forwarded or API checkpoints are written stopped",
        NOTE_SEM => b"its SysV semaphores or message queues could not be recorded",
        NOTE_DONTFORK => b"it has memory a fork does not copy (MADV_DONTFORK)",
        NOTE_FILES => b"it saves files by content, which are copied while it is stopped",
        NOTE_EVENTFD => b"its writer's eventfd could not be made",
        _ => b"",
    }
}

/// The regions a prebuilt incremental checkpoint must make readable while the writer writes
/// them (agent memory: the writer's snapshot holds the copy made before it was created). Only
/// the control thread touches it, one checkpoint at a time.
static mut PREBUILT_UNREADABLE: Unreadable = Unreadable::new();

/// How [`start`] ended without a writer.
pub struct NotStarted {
    /// Why (`NOTE_*`), for `-v`.
    pub note: u32,
    /// An incremental checkpoint's memory records are in the metadata and the extents in
    /// `ext` already (its scans protected the written pages again, so they cannot be made
    /// twice): the caller writes the image stopped from them, then unmaps `copy`.
    pub prebuilt: bool,
    /// The copy of the shared memory the prebuilt extents refer to (address, length).
    pub copy: (u64, u64),
    /// Building the memory records in the stop failed with this errno (0: it did not): the
    /// checkpoint fails.
    pub failed: i32,
}

/// The unreadable regions of a prebuilt checkpoint (see [`NotStarted::prebuilt`]).
pub fn prebuilt_unreadable() -> &'static Unreadable {
    // SAFETY: only the control thread uses it, and not while [`start`] fills it.
    unsafe { &*core::ptr::addr_of!(PREBUILT_UNREADABLE) }
}

/// Unmaps the copy of a prebuilt checkpoint written stopped (see [`NotStarted`]).
pub fn unmap_copy(copy: (u64, u64)) {
    if copy.1 > 0 {
        sys::munmap(copy.0 as usize, copy.1 as usize);
    }
}

/// The page of the scratch area shared by the control thread and its writer: the writer's
/// arguments, then its report.
#[repr(C)]
struct WriterPage {
    scratch: usize,
    fd: i32,
    conn: i32,
    /// An eventfd the writer signals once its report is in this page and the image durable
    /// (-1: none): the control thread answers then, not when the writer's exit has torn down
    /// its copy of the program's address space (44 ms for 1 GiB, strace).
    done_fd: i32,
    pid: i32,
    parent: i32,
    save: u32,
    deadline_ns: u64,
    /// `SaveByContent::tmp_left` (-1: `None`).
    tmp_left: i64,
    /// `SaveByContent::files` (the request's, on the control thread's stack: our snapshot
    /// holds it).
    files: usize,
    meta_len: u64,
    side_len: u64,
    pre_n: u64,
    pre_base: u64,
    pre_len: u64,
    regions: u64,
    /// The memory records are in the metadata already, with `ext_n` extents (`ext_data_len`
    /// bytes) in the scratch area's extent list and the unreadable regions in
    /// [`PREBUILT_UNREADABLE`] (an incremental checkpoint: built in the stop, see [`start`]).
    prebuilt: u32,
    ext_n: u64,
    ext_data_len: u64,
    /// The writer's first verdict: 0 not yet, [`EARLY_OK`], [`EARLY_MISSING`] (a shared futex).
    early: AtomicU32,
    /// The control thread's verdict on the writer's snapshot, which the writer waits for before
    /// anything else: 0 not yet, [`EARLY_OK`], [`EARLY_MISSING`], or [`CHECK_YOURSELF`] (the
    /// control thread could not read `/proc/WRITER/maps`: the writer checks and answers in
    /// `early`). A shared futex.
    checked: AtomicU32,
    bytes: AtomicU64,
    errno: AtomicI32,
    step: AtomicU32,
    mode: AtomicU32,
    mode_errno: AtomicI32,
    at: AtomicU64,
    /// The writer's `io_report::AIO_ERRNO` (why its page data did not go through a ring).
    aio_errno: AtomicI32,
    /// The writer's `io_report::AIO` and `io_report::BOUNCED`, and how its bounce ring went
    /// (`bounce::WriterBuf::state`, `detail`).
    aio: AtomicU32,
    bounced: AtomicU32,
    ring_state: AtomicU32,
    ring_detail: AtomicI32,
    /// [`DONE_OK`] once the report above is complete and the image durable, just before
    /// `done_fd` is signalled.
    done: AtomicU32,
    phase: [AtomicU64; 4],
    /// `protocol::FLAG_PLACED` and `FLAG_PLACED_NOSYNC` of the write order: the image is
    /// written at once with the other members' of a cut, at an offset the requester gives.
    placed: u32,
    /// A placed image's exchange ([`writer_place`]): 0, then [`PLACE_SIZED`] (the writer's
    /// length is in `place_len`, `done_fd` signalled), then [`PLACE_GIVEN`] (the control thread
    /// put the requester's offset in `place_at`; a shared futex).
    place_state: AtomicU32,
    place_len: AtomicU64,
    place_at: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<WriterPage>() <= crate::image::format::PAGE);

/// [`WriterPage::done`]: the writer succeeded (its exit status will be 0).
const DONE_OK: u32 = 1;

/// [`WriterPage::place_state`]: the writer's length is in `place_len`.
const PLACE_SIZED: u32 = 1;
/// [`WriterPage::place_state`]: its offset is in `place_at`.
const PLACE_GIVEN: u32 = 2;

/// The writer's snapshot has every region of the program.
const EARLY_OK: u32 = 1;
/// The writer's snapshot lacks regions (`MADV_DONTFORK`): it exits, the checkpoint is written
/// stopped.
const EARLY_MISSING: u32 = 2;
/// The control thread could not read the writer's maps (a program that is not dumpable): the
/// writer reads its own.
const CHECK_YOURSELF: u32 = 3;

/// `futex(2)` on a word shared between processes (no `FUTEX_PRIVATE_FLAG`).
fn futex_shared(word: &AtomicU32, op: i32, val: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as i64,
        tv_nsec: (timeout_ns % 1_000_000_000) as i64,
    };
    let _ = sys::sys6(
        libc::SYS_futex as usize,
        word.as_ptr() as usize,
        op as usize,
        val as usize,
        if op == libc::FUTEX_WAIT {
            &ts as *const _ as usize
        } else {
            0
        },
        0,
        0,
    );
}

/// Reaps the writer `pidfd` (already ended or killed) and closes it; returns its `waitid` result.
pub fn reap(pidfd: i32) -> (Result<usize, Errno>, libc::siginfo_t) {
    let (r, info) = loop {
        match sys::waitid(libc::P_PIDFD, pidfd, libc::WEXITED | libc::__WALL) {
            (Err(Errno(libc::EINTR)), _) => continue,
            r => break r,
        }
    };
    sys::close(pidfd);
    (r, info)
}

fn page(scratch: &Scratch) -> &WriterPage {
    // SAFETY: the writer page is a page of the scratch area, zero or written by `start`, and
    // WriterPage is plain data and atomics (all-zero valid).
    unsafe { &*(scratch.writer_page() as *const WriterPage) }
}

/// In the stop, after the state records are in `w`: copies the shared memory, records what the
/// writer cannot, and starts the writer; returns its pidfd, or why the checkpoint must be
/// written stopped (`NOTE_*`: nothing was changed then, unless [`NotStarted::prebuilt`]).
///
/// With `ext` (an incremental checkpoint) the memory records are built here, in the stop:
/// the scans of `agent::incremental` must see and protect again the pages written up to this
/// instant, in the program's own address space; then every eligible region is armed
/// (`incremental::arm_now`) before the writer is created, so a write after the snapshot is
/// never missed. The writer only writes the image from them.
pub fn start(
    job: &Job,
    scratch: &Scratch,
    w: &mut MetaWriter,
    save: SaveByContent,
    pid: i32,
    ext: Option<&mut ExtentList>,
) -> Result<i32, NotStarted> {
    let stopped = |note| NotStarted {
        note,
        prebuilt: false,
        copy: (0, 0),
        failed: 0,
    };
    let mut pre = ExtentList::new(scratch.precopy());
    let regions =
        memory::find_precopy(scratch, &mut pre, save).map_err(|_| stopped(NOTE_PRECOPY))?;
    let len = pre.data_len;
    if len > PRECOPY_LIMIT {
        return Err(stopped(NOTE_SHARED_LIMIT));
    }
    let base = if len > 0 {
        // Shared, so the kernel never merges it with the program's memory, and the writer's
        // mapping keeps the pages once ours is gone.
        sys::mmap(
            0,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
        .map_err(|_| stopped(NOTE_PRECOPY))? as u64
    } else {
        0
    };
    let unmap = || unmap_copy((base, len));
    if memory::copy_precopied(pre.all(), base).is_err() {
        unmap();
        return Err(stopped(NOTE_PRECOPY));
    }
    // SysV semaphores and message queues: their state is the system's, not the snapshot's (and
    // the writer's pid is not the program's).
    let mut side = MetaWriter::new(scratch.side());
    if super::sysvsem::capture(&mut side).is_err() || super::sysvmsg::capture(&mut side).is_err() {
        unmap();
        return Err(stopped(NOTE_SEM));
    }
    let side_len = side.len() as u64;
    let prebuilt = ext.is_some();
    let (mut ext_n, mut ext_data_len) = (0, 0);
    if let Some(ext) = ext {
        let copy = Precopy {
            extents: pre.all(),
            base,
            len,
        };
        // SAFETY: only the control thread uses it, one checkpoint at a time.
        let unreadable = unsafe { &mut *core::ptr::addr_of_mut!(PREBUILT_UNREADABLE) };
        *unreadable = Unreadable::new();
        if let Err(e) = memory::capture(w, scratch, ext, unreadable, save, Some(&copy)) {
            unmap();
            // The scans may have protected pages again: the checkpoint fails (the next
            // incremental one is a full image).
            return Err(NotStarted {
                note: NOTE_PRECOPY,
                prebuilt: true,
                copy: (0, 0),
                failed: e.0,
            });
        }
        super::incremental::arm_now();
        ext_n = ext.count() as u64;
        ext_data_len = ext.data_len;
    }
    let fallback = |note| NotStarted {
        note,
        prebuilt,
        copy: (base, len),
        failed: 0,
    };
    // (Without it, the writer's end is seen from its pidfd alone, as before.)
    let done_fd = sys::sys3(
        libc::SYS_eventfd2 as usize,
        0,
        (libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) as usize,
        0,
    )
    .map_or(-1, |fd| fd as i32);
    // (The writer is not started, or ended without writing: nobody signals it.)
    let close_done = || {
        if done_fd >= 0 {
            sys::close(done_fd);
        }
    };
    let placed = job.flags & (crate::protocol::FLAG_PLACED | crate::protocol::FLAG_PLACED_NOSYNC);
    if placed != 0 && done_fd < 0 {
        // (A placed writer's length reaches the control thread through it.)
        if !prebuilt {
            unmap();
            return Err(stopped(NOTE_EVENTFD));
        }
        return Err(fallback(NOTE_EVENTFD));
    }
    let p = scratch.writer_page() as *mut WriterPage;
    // SAFETY: the writer page is ours (scratch), page sized, and no writer runs yet.
    unsafe {
        p.write(WriterPage {
            scratch: scratch as *const Scratch as usize,
            fd: job.fd,
            conn: image::REQUESTER_CONN.load(Relaxed),
            done_fd,
            pid,
            parent: sys::getpid(),
            save: save.exe as u32 | (save.private as u32) << 1 | (save.shared as u32) << 2,
            deadline_ns: job.deadline_ns,
            tmp_left: save.tmp_left.unwrap_or(-1),
            files: save.files as *const crate::protocol::SaveFiles as usize,
            meta_len: w.len() as u64,
            side_len,
            pre_n: pre.all().len() as u64,
            pre_base: base,
            pre_len: len,
            regions,
            prebuilt: prebuilt as u32,
            ext_n,
            ext_data_len,
            early: AtomicU32::new(0),
            checked: AtomicU32::new(0),
            bytes: AtomicU64::new(0),
            errno: AtomicI32::new(0),
            step: AtomicU32::new(0),
            mode: AtomicU32::new(0),
            mode_errno: AtomicI32::new(0),
            at: AtomicU64::new(0),
            aio_errno: AtomicI32::new(0),
            aio: AtomicU32::new(0),
            bounced: AtomicU32::new(0),
            ring_state: AtomicU32::new(0),
            ring_detail: AtomicI32::new(0),
            done: AtomicU32::new(0),
            phase: [const { AtomicU64::new(0) }; 4],
            placed,
            place_state: AtomicU32::new(0),
            place_len: AtomicU64::new(0),
            place_at: AtomicU64::new(0),
        })
    };
    let mut pidfd: i32 = -1;
    let (stack, stack_size) = scratch.writer_stack();
    let args = crate::arch::CloneArgs {
        flags: (libc::CLONE_PIDFD as u64) | CLONE_CLEAR_SIGHAND,
        pidfd: &mut pidfd as *mut i32 as u64,
        exit_signal: 0,
        stack: stack as u64,
        stack_size: stack_size as u64,
        ..Default::default()
    };
    let t0 = sys::monotonic_ns();
    // SAFETY: the writer's stack is in the scratch area and used by nobody else; writer_main
    // never returns.
    let r = unsafe { crate::arch::clone3_call(&args, writer_main, p as usize) };
    let t1 = sys::monotonic_ns();
    FORK_NS.store(t1 - t0, Relaxed);
    if r < 0 {
        // A prebuilt checkpoint is written stopped from its copy (the caller unmaps it).
        if !prebuilt {
            unmap();
        }
        close_done();
        return Err(fallback(NOTE_CLONE));
    }
    // Our copy of the shared memory is not needed any more once the writer has its snapshot
    // (a prebuilt checkpoint keeps it until the writer's verdict: written stopped, it needs it).
    if !prebuilt {
        unmap();
    }
    // Before the program runs on: does the snapshot hold all of it? The control thread reads
    // the writer's maps itself, at once: waiting for the writer to be scheduled and read its own
    // cost up to 566 ms of stop on this loaded 2-core machine (docs/PERFORMANCE.md). The writer
    // touches nothing before this verdict.
    let a = page(scratch);
    let mut path = StackBuf::<32>::new();
    path.push(b"/proc/").num(r as u64).push(b"/maps\0");
    let verdict = match memory::count_regions_of(path.as_bytes(), scratch, (base, len)) {
        Ok(n) if n == regions => EARLY_OK,
        Ok(_) => EARLY_MISSING,
        Err(_) => CHECK_YOURSELF,
    };
    a.checked.store(verdict, Release);
    futex_shared(&a.checked, libc::FUTEX_WAKE, 1, 0);
    // What a verdict (ours, or the writer's own) means: the program runs on with the writer, or
    // (the writer exits on it) is written stopped from its copy or falls back; `None`: none yet.
    let settle = |verdict: u32| match verdict {
        EARLY_OK => {
            CHECK_NS.store(sys::monotonic_ns() - t1, Relaxed);
            if prebuilt {
                unmap();
            }
            Some(Ok(pidfd))
        }
        EARLY_MISSING => {
            let _ = reap(pidfd);
            close_done();
            Some(Err(if prebuilt {
                fallback(NOTE_DONTFORK)
            } else {
                stopped(NOTE_DONTFORK)
            }))
        }
        _ => None,
    };
    if let Some(done) = settle(verdict) {
        return done;
    }
    // (The writer's first step now: a read of its own maps.)
    loop {
        if let Some(done) = settle(a.early.load(Acquire)) {
            return done;
        }
        if sys::poll_one(pidfd, libc::POLLIN, 0) != 0 {
            // It ended before its verdict (it could not read its maps).
            let _ = reap(pidfd);
            close_done();
            if !prebuilt {
                return Err(stopped(NOTE_CLONE));
            }
            return Err(fallback(NOTE_CLONE));
        }
        futex_shared(&a.early, libc::FUTEX_WAIT, 0, 1_000_000);
    }
}

/// How long the last writer's `clone3` took (copying the page tables), in ns.
pub static FORK_NS: AtomicU64 = AtomicU64::new(0);
/// How long the program then waited for the writer's check of its snapshot, in ns.
pub static CHECK_NS: AtomicU64 = AtomicU64::new(0);

/// `CLONE_CLEAR_SIGHAND`: the writer starts with every handler reset (and every signal blocked,
/// as the control thread has them).
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// The writer process's only thread.
extern "C" fn writer_main(page_addr: usize) -> ! {
    // SAFETY: `start` wrote the page before creating us; it stays mapped in our address space.
    let a = unsafe { &*(page_addr as *const WriterPage) };
    let _ = sys::sys3(
        libc::SYS_prctl as usize,
        libc::PR_SET_PDEATHSIG as usize,
        libc::SIGKILL as usize,
        0,
    );
    // Our copy of the program's memory is not tracked: nothing to arm here.
    super::incremental::in_writer();
    // Our writes are our own (the program runs on): no helper (`agent::offload`).
    super::offload::disable();
    super::aio::in_writer();
    if sys::sys3(libc::SYS_getppid as usize, 0, 0, 0).unwrap_or(0) as i32 != a.parent {
        sys::exit_group(1); // the program died before we were set up
    }
    let _ = sys::sys3(
        libc::SYS_prctl as usize,
        libc::PR_SET_NAME as usize,
        c"cr-writer".as_ptr() as usize,
        0,
    );
    // A session of our own: left behind (a write the destination does not answer), we or our
    // zombie once the program is gone must not keep its pid in use as our process group's id
    // (an exact-pid restart needs it), nor get the signals sent to its group.
    let _ = sys::sys3(libc::SYS_setsid as usize, 0, 0, 0);
    // Hold none of the program's descriptors open (a pipe's reader would not see EOF, a port
    // would stay bound) while we write.
    let mut keep = [a.fd, a.conn, a.done_fd];
    keep.sort_unstable();
    let mut from = 0u32;
    for k in keep.into_iter().filter(|&k| k >= 0) {
        if k as u32 > from {
            let _ = sys::sys3(
                libc::SYS_close_range as usize,
                from as usize,
                k as usize - 1,
                0,
            );
        }
        from = from.max(k as u32 + 1);
    }
    let _ = sys::sys3(
        libc::SYS_close_range as usize,
        from as usize,
        u32::MAX as usize,
        0,
    );
    // SAFETY: the Scratch value lives on the control thread's stack, which our snapshot holds.
    let scratch = unsafe { &*(a.scratch as *const Scratch) };
    // The control thread's verdict on our snapshot first (it may be reading our maps into the
    // scratch area).
    let mut checked = a.checked.load(Acquire);
    while checked == 0 {
        futex_shared(&a.checked, libc::FUTEX_WAIT, 0, 100_000_000);
        checked = a.checked.load(Acquire);
    }
    let complete = match checked {
        EARLY_OK => true,
        EARLY_MISSING => false,
        _ => {
            let complete = memory::count_regions(scratch, (a.pre_base, a.pre_len))
                .is_ok_and(|n| n == a.regions);
            a.early
                .store(if complete { EARLY_OK } else { EARLY_MISSING }, Release);
            futex_shared(&a.early, libc::FUTEX_WAKE, 1, 0);
            complete
        }
    };
    if !complete {
        sys::exit_group(3);
    }
    let r = write_rest(a);
    a.mode.store(io_report::MODE.load(Relaxed), Relaxed);
    a.mode_errno.store(io_report::ERRNO.load(Relaxed), Relaxed);
    a.at.store(io_report::AT.load(Relaxed), Relaxed);
    a.aio_errno
        .store(io_report::AIO_ERRNO.load(Relaxed), Relaxed);
    a.aio.store(io_report::AIO.load(Relaxed), Relaxed);
    a.bounced.store(io_report::BOUNCED.load(Relaxed), Relaxed);
    for (d, s) in a.phase.iter().zip(io_report::PHASE_NS.iter()) {
        d.store(s.load(Relaxed), Relaxed);
    }
    match r {
        Ok(n) => {
            a.bytes.store(n, Release);
            // The image is durable and the report complete: the control thread may answer
            // now, while our exit tears down our copy of the address space (and the AIO
            // context, see `aio::in_writer`).
            a.done.store(DONE_OK, Release);
            if a.done_fd >= 0 {
                let one = 1u64;
                let _ = sys::sys3(
                    libc::SYS_write as usize,
                    a.done_fd as usize,
                    &one as *const u64 as usize,
                    8,
                );
            }
            sys::exit_group(0)
        }
        Err((step, e)) => {
            a.errno.store(e.0, Relaxed);
            a.step.store(step, Release);
            sys::exit_group(2)
        }
    }
}

/// The writer's work: the memory records (from its own snapshot), the records captured in the
/// stop, then the image.
fn write_rest(a: &WriterPage) -> Result<u64, (u32, Errno)> {
    // SAFETY: the Scratch value lives on the control thread's stack, which our snapshot holds.
    let scratch = unsafe { &*(a.scratch as *const Scratch) };
    let mut w = MetaWriter::continue_at(scratch.meta(), a.meta_len as usize);
    let pre = Precopy {
        extents: &scratch.precopy()[..a.pre_n as usize],
        base: a.pre_base,
        len: a.pre_len,
    };
    // SAFETY: the request's SaveFiles lives on the control thread's stack, which our snapshot
    // holds.
    let files = unsafe { &*(a.files as *const crate::protocol::SaveFiles) };
    let save = SaveByContent {
        exe: a.save & 1 != 0,
        private: a.save & 2 != 0,
        shared: a.save & 4 != 0,
        tmp_left: (a.tmp_left >= 0).then_some(a.tmp_left),
        files,
    };
    let mut unreadable = Unreadable::new();
    let ext = if a.prebuilt != 0 {
        // Built in the stop (an incremental checkpoint): the records are in the metadata.
        ExtentList::prebuilt(scratch.extents(), a.ext_n as usize, a.ext_data_len)
    } else {
        let mut ext = ExtentList::new(scratch.extents());
        memory::capture(&mut w, scratch, &mut ext, &mut unreadable, save, Some(&pre))
            .map_err(|e| (3, e))?;
        ext
    };
    let unreadable = if a.prebuilt != 0 {
        prebuilt_unreadable()
    } else {
        &unreadable
    };
    w.append(&scratch.side()[..a.side_len as usize])
        .map_err(|_| (1, Errno(libc::ENOMEM)))?;
    // Buffers of our own (private, populated now) to write the page data from: pages the
    // fork shares would be copied by the direct writes that pin them (memory::BOUNCE_LEN). A
    // ring of `bounce::SLOTS` pieces in transparent huge pages, as a stopped checkpoint's
    // (`agent::bounce`): each piece is copied and hashed while the disk writes the ones before
    // it, and goes to the disk as a few physically contiguous runs (scattered 4 KiB pages went
    // to this virtio disk as requests of 254 pages and of 2). Where the ring is refused, one
    // piece's buffer, written synchronously, as before (`-v` says why).
    let wb = super::bounce::for_writer().map_err(|e| (0, e))?;
    a.ring_state.store(wb.state, Relaxed);
    a.ring_detail.store(wb.detail, Relaxed);
    let bounce = wb.buf;
    let out = image::Dest {
        fd: a.fd,
        // (The writer keeps to the pipe: see ARCHITECTURE.md, "Compressed images".)
        raw_fd: -1,
        split_ok: false,
        adapt: true,
        pace: false,
        ack_fd: -1,
        pack: 0,
        deadline_ns: a.deadline_ns,
        bounce: Some(bounce),
        placed: a.placed,
        via_writer: a.placed != 0,
    };
    // No saved files: a request that has some is written stopped (`NOTE_FILES`).
    let mut spans = super::fds::Spans::new(&mut [], &mut []);
    image::finish(out, scratch, w, &ext, unreadable, &mut spans, a.pid)
}

/// How long a placed writer waits for its offset (bounded by `--time` too), as
/// `image::await_place` does.
const PLACE_WAIT_NS: u64 = 600_000_000_000;

/// In the writer of a placed image (`protocol::FLAG_PLACED`, several processes written at
/// once): our image's length (`total`) to the control thread, which passes it on to the
/// requester (`protocol::STATUS_SIZED`; the control thread is the only reader of the
/// connection, where `protocol::REQ_RUN` comes too), and the offset it answers
/// (`protocol::REQ_PLACE`). A cut given up kills us (the control thread sees the release).
/// Raw system calls, on the stack.
pub fn writer_place(scratch: &Scratch, total: u64, deadline_ns: u64) -> Result<u64, Errno> {
    let a = page(scratch);
    if a.done_fd < 0 {
        return Err(Errno(libc::EINVAL));
    }
    a.place_len.store(total, Relaxed);
    a.place_state.store(PLACE_SIZED, Release);
    let one = 1u64;
    sys::sys3(
        libc::SYS_write as usize,
        a.done_fd as usize,
        &one as *const u64 as usize,
        8,
    )?;
    let limit = deadline_ns.min(sys::monotonic_ns().saturating_add(PLACE_WAIT_NS));
    loop {
        if a.place_state.load(Acquire) == PLACE_GIVEN {
            return Ok(a.place_at.load(Relaxed));
        }
        let now = sys::monotonic_ns();
        if now >= limit {
            return Err(Errno(libc::ETIMEDOUT));
        }
        futex_shared(
            &a.place_state,
            libc::FUTEX_WAIT,
            PLACE_SIZED,
            (limit - now).min(100_000_000),
        );
    }
}

/// How a writer ended, when it failed.
pub enum WriterError {
    /// It failed at `STEPS[step]` with this errno.
    Step(u32, i32),
    /// It was killed by this signal.
    Killed(i32),
    /// The requester went away (the writer was killed).
    RequesterGone,
    /// `--time` ran out (the writer was killed).
    Timeout,
    /// As [`WriterError::Timeout`] (true) or [`WriterError::RequesterGone`] (false), but the
    /// killed writer has not ended: it waits in the kernel (a write the destination does not
    /// answer). Not reaped: its pidfd is the caller's (see `offload::leave_behind`).
    Lingering(bool),
}

/// How long a killed writer gets to end before it is left behind (`WriterError::Lingering`).
const KILLED_GRACE_MS: i32 = 20;

impl WriterError {
    /// The errno the requester gets.
    pub fn errno(&self) -> i32 {
        match self {
            WriterError::Step(_, e) => *e,
            WriterError::Killed(_) => libc::EIO,
            WriterError::RequesterGone | WriterError::Lingering(false) => libc::ECANCELED,
            WriterError::Timeout | WriterError::Lingering(true) => libc::ETIMEDOUT,
        }
    }
    /// One line for the requester.
    pub fn describe(&self, out: &mut StackBuf<240>) {
        match self {
            WriterError::Step(step, _) => {
                out.push(b"the copy-on-write writer failed at ")
                    .push(image::STEPS[*step as usize % image::STEPS.len()].as_bytes());
            }
            WriterError::Killed(sig) => {
                out.push(b"the copy-on-write writer was killed by signal ")
                    .num(*sig as u64);
            }
            WriterError::RequesterGone | WriterError::Lingering(false) => {
                out.push(b"the requester went away");
            }
            WriterError::Timeout | WriterError::Lingering(true) => {
                out.push(b"the image was not written in time");
            }
        }
    }
}

/// A writer that succeeded ([`wait`]).
pub struct Written {
    /// The image's length.
    pub bytes: u64,
    /// It said so before its exit (`WriterPage::done_fd`): its pidfd is still to be reaped
    /// ([`reap`]), once the requester was answered.
    pub exiting: bool,
}

/// After the program was released: waits for the writer (answering other requests `EBUSY`
/// meanwhile), kills it if the requester goes away or `deadline_ns` passes, reaps it, and closes
/// `pidfd` — unless it succeeded and said so before its exit ([`Written::exiting`]) — and its
/// eventfd (`forget_done_fd` first). Returns the image's length; the writer's I/O report is
/// copied into `io_report`.
///
/// A placed image (several processes written at once, `WriterPage::placed`) is also the
/// requester's exchange with the writer, on the connection that only we read: the writer's
/// length goes out (`STATUS_SIZED`), its offset comes in (`REQ_PLACE`), and `REQ_RUN` (every
/// member's writer exists) calls `run`, which lets the program go; any other message (the
/// release of a cut given up) or a hang-up kills the writer.
pub fn wait(
    pidfd: i32,
    scratch: &Scratch,
    conn: i32,
    deadline_ns: u64,
    forget_done_fd: impl FnOnce(),
    run: &mut dyn FnMut(),
) -> Result<Written, WriterError> {
    let a = page(scratch);
    let r = wait_writer(pidfd, a, conn, deadline_ns, run);
    forget_done_fd();
    if a.done_fd >= 0 {
        sys::close(a.done_fd);
    }
    r
}

/// The eventfd of the running writer (see `WriterPage::done_fd`; -1: none), which [`wait`]
/// closes (a child the program forks meanwhile must close its copy: `control::REQUEST_FDS`).
pub fn done_fd(scratch: &Scratch) -> i32 {
    page(scratch).done_fd
}

fn wait_writer(
    pidfd: i32,
    a: &WriterPage,
    conn: i32,
    deadline_ns: u64,
    run: &mut dyn FnMut(),
) -> Result<Written, WriterError> {
    let mut verdict = None;
    let mut exiting = false;
    let placed = a.placed != 0;
    let mut sized_sent = false;
    let mut ran = false;
    loop {
        let lfd = super::control::LISTEN_FD.load(Acquire);
        let mut p = [
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: conn,
                events: if placed {
                    libc::POLLIN | libc::POLLRDHUP
                } else {
                    libc::POLLRDHUP
                },
                revents: 0,
            },
            libc::pollfd {
                fd: lfd,
                events: libc::POLLIN,
                revents: 0,
            },
            // (-1: ignored by poll.)
            libc::pollfd {
                fd: a.done_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let now = sys::monotonic_ns();
        if now >= deadline_ns {
            verdict = Some(WriterError::Timeout);
            break;
        }
        let ms = ((deadline_ns - now) / 1_000_000).clamp(1, 1000) as usize;
        let _ = sys::sys3(libc::SYS_poll as usize, p.as_mut_ptr() as usize, 4, ms);
        if p[0].revents != 0 {
            break;
        }
        if p[3].revents != 0 && placed {
            // (Signalled twice: once sized, once done. Read, so that it is not seen again.)
            let mut n = 0u64;
            let _ = sys::sys3(
                libc::SYS_read as usize,
                a.done_fd as usize,
                &mut n as *mut u64 as usize,
                8,
            );
            if !sized_sent && a.place_state.load(Acquire) == PLACE_SIZED {
                sized_sent = true;
                let len = a.place_len.load(Relaxed);
                if !super::control::send_reply(conn, crate::protocol::STATUS_SIZED, len, b"") {
                    verdict = Some(WriterError::RequesterGone);
                    break;
                }
            }
        }
        if p[3].revents != 0 && a.done.load(Acquire) == DONE_OK {
            exiting = true;
            break;
        }
        if placed && p[1].revents & libc::POLLIN != 0 {
            let mut req: crate::protocol::Request = bytemuck::Zeroable::zeroed();
            let n = sys::sys6(
                libc::SYS_recvfrom as usize,
                conn as usize,
                &mut req as *mut crate::protocol::Request as usize,
                core::mem::size_of::<crate::protocol::Request>(),
                libc::MSG_DONTWAIT as usize,
                0,
                0,
            );
            let whole = n == Ok(core::mem::size_of::<crate::protocol::Request>())
                && req.magic == crate::protocol::MAGIC;
            match n {
                Err(Errno(libc::EINTR)) | Err(Errno(libc::EAGAIN)) => continue,
                _ if whole && req.kind == crate::protocol::REQ_RUN && !ran => {
                    ran = true;
                    run();
                    continue;
                }
                _ if whole
                    && req.kind == crate::protocol::REQ_PLACE
                    && a.place_state.load(Acquire) == PLACE_SIZED =>
                {
                    a.place_at.store(req.place_offset(), Relaxed);
                    a.place_state.store(PLACE_GIVEN, Release);
                    futex_shared(&a.place_state, libc::FUTEX_WAKE, 1, 0);
                    continue;
                }
                // A release (the cut was given up), anything else, or the requester gone.
                _ => {
                    verdict = Some(WriterError::RequesterGone);
                    break;
                }
            }
        }
        if p[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            verdict = Some(WriterError::RequesterGone);
            break;
        }
        if p[2].revents != 0 {
            super::control::turn_away_busy();
        }
    }
    if let Some(v) = &verdict {
        let _ = sys::sys6(
            libc::SYS_pidfd_send_signal as usize,
            pidfd as usize,
            libc::SIGKILL as usize,
            0,
            0,
            0,
            0,
        );
        // A writer waiting uninterruptibly in the kernel (an O_DIRECT write on FUSE) ends
        // only when its write returns: not waited for (the next checkpoint must not wait).
        let ended = sys::poll_one(pidfd, libc::POLLIN, KILLED_GRACE_MS) != 0;
        if !ended {
            return Err(WriterError::Lingering(matches!(v, WriterError::Timeout)));
        }
    }
    let status = if exiting {
        0
    } else {
        let (r, info) = reap(pidfd);
        if let Some(v) = verdict {
            return Err(v);
        }
        // SAFETY: waitid filled a SIGCHLD siginfo.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        if r.is_err() || code != libc::CLD_EXITED {
            return Err(WriterError::Killed(if r.is_err() { 0 } else { status }));
        }
        status
    };
    io_report::MODE.store(a.mode.load(Relaxed), Relaxed);
    io_report::ERRNO.store(a.mode_errno.load(Relaxed), Relaxed);
    io_report::AT.store(a.at.load(Relaxed), Relaxed);
    io_report::AIO_ERRNO.store(a.aio_errno.load(Relaxed), Relaxed);
    io_report::AIO.store(a.aio.load(Relaxed), Relaxed);
    io_report::BOUNCED.store(a.bounced.load(Relaxed), Relaxed);
    super::bounce::set_writer_report(a.ring_state.load(Relaxed), a.ring_detail.load(Relaxed));
    if placed && a.place_state.load(Acquire) == PLACE_GIVEN {
        // (For the report's `placed`; `io_report::begin` clears it at the next image.)
        image::PLACED_AT.store(a.place_at.load(Relaxed), Relaxed);
    }
    for (d, s) in io_report::PHASE_NS.iter().zip(a.phase.iter()).skip(1) {
        d.store(s.load(Relaxed), Relaxed);
    }
    if status != 0 {
        return Err(WriterError::Step(
            a.step.load(Acquire),
            a.errno.load(Relaxed),
        ));
    }
    Ok(Written {
        bytes: a.bytes.load(Acquire),
        exiting,
    })
}
