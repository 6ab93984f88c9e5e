//! The blocking system calls of a stopped checkpoint's write, issued by a helper process, and the
//! writers the agent leaves behind (issue 13: a destination that stops answering must not keep
//! the program stopped, nor delay its next checkpoint).
//!
//! **Why.** On a destination that stops answering (a FUSE server that holds writes, an NFS
//! server gone away) a write waits in the kernel, often uninterruptibly: an `O_DIRECT` write on
//! FUSE waits in `fuse_direct_IO`, and `io_submit` waits in `fuse_get_req` for a free
//! background slot. The control thread, stuck in it, could check neither the requester nor
//! `--time`, so the program stayed stopped until the server answered.
//!
//! **How.** While a stopped checkpoint writes to a regular file, every call that may wait on the
//! destination (`write`, `pwrite64`, `ftruncate`, `fdatasync`, `io_submit`, `io_getevents`,
//! `io_destroy`) goes to [`sys6`], which hands it to a helper: a process created on the first
//! such call with `clone3(CLONE_VM | CLONE_FILES)` (the program's memory and descriptor table,
//! not its thread group: it is no thread of the program, an `exec` or an exit of the program
//! does not wait for it, signals to the program never reach it; its exit signal is 0, as the
//! copy-on-write writer's). It starts a session of its own (not in the program's process
//! group: once the program is gone it, or its zombie, must not keep the program's pid in use
//! for an exact-pid restart). The control thread waits for the answer on a futex, 10 ms at a
//! time, and checks the requester and `--time` between waits. When it must give up it marks
//! the call abandoned and returns `ECANCELED`/`ETIMEDOUT`: the image fails as any other
//! failure, and the program is released while the helper still waits in the kernel. Every
//! later call of that image fails at once without being issued.
//!
//! **What an abandoned helper still does.** It finishes the call it is in, then only cleans up:
//! it drops its reference to the program's descriptor table (closing nothing, so no `flush`
//! waits on the destination), destroys the AIO context the image used (`io_destroy`, which
//! waits for the other pieces in flight), removes the temporary file if it is still the
//! image's (device and inode; it was given the name when it was created) and exits. Its
//! parent-death signal is caught ([`PDEATH_SIG`]): a program that exits or execs meanwhile
//! interrupts an `io_getevents` wait and does not take the removal with it (the helper still
//! waits in `io_destroy` until the server answers, holding no descriptor of the program; a
//! call that waits uninterruptibly keeps the shared table until it returns). An idle helper
//! whose control thread is gone (the program killed while stopped) cleans up likewise. It never
//! touches the program's state, nor the agent's outside its own block (its stack, the call's
//! arguments and an `io_getevents` result buffer, all in its own mapping), and never names the
//! final path. Until the server answers, the writes in flight still **read the program's
//! memory** they were given: at most [`super::aio::MAX_SLOTS`] pieces of page data (up to 8 MiB
//! each) with the AIO ring (or of its bounce ring, `agent::bounce`, unmapped once the image is
//! given up: pinned pages stay until the write ends), or one synchronous write; with
//! `O_DIRECT` those pages are pinned,
//! so the write reads them as they are by then (the program runs and may have changed them; it
//! never sees a difference). What they read goes only into the abandoned temporary file,
//! which is removed once the helper is done. A later checkpoint to the same destination never
//! writes into that file (cr_checkpoint removes the old name and creates a new file,
//! `checkpoint::dest::create_fresh`), so those late writes cannot reach its image.
//!
//! **Lingering writers.** A helper that was given up, and a copy-on-write writer whose checkpoint
//! was given up while it waits in the kernel (state D: SIGKILL is pending but the write waits
//! uninterruptibly), are kept in a small table ([`linger`]) with their pidfd, the image
//! descriptors (closed only once the writer is gone: a `close` is a `flush` on FUSE, which
//! can wait behind the stuck write) and the temporary file to remove. The control thread
//! polls their pidfds with its listening socket and reaps each as it exits ([`reap_done`]), so
//! neither zombies nor descriptors are left, and the next checkpoint does not wait for them:
//! its fd list and memory map leave them out ([`owns_fd`], [`contains`]). A copy-on-write
//! writer that succeeded and is exiting joins the same table ([`reap_later`]: its exit tears
//! down its copy of the address space, which the next request must not wait for).
//!
//! No allocation, no lock, raw system calls only (the program is stopped while [`sys6`] runs).

use crate::image::format::PAGE;
use crate::sys::{self, Errno};
use core::sync::atomic::{AtomicI32, AtomicIsize, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// One helper's (or lingering writer's) mapping: the control page, a page of `iovec`s, a page
/// for the temporary file's path, then the helper's stack.
const BLOCK_LEN: usize = 64 * 1024;
const IOV_OFF: usize = PAGE;
const PATH_OFF: usize = 2 * PAGE;
const STACK_OFF: usize = 3 * PAGE;

/// Most writers left behind at once; with more, the oldest is waited for.
const MAX_LINGER: usize = 8;

/// [`Block::state`]: nothing asked.
const IDLE: u32 = 0;
/// A call is posted for the helper.
const REQ: u32 = 1;
/// The helper answered ([`Block::ret`]).
const DONE: u32 = 2;
/// The control thread gave the call up: the helper cleans up and exits once it returns.
const ABANDONED: u32 = 3;
/// The image is done: the helper exits.
const EXIT: u32 = 4;

/// Most `io_event`s one `io_getevents` returns here (the AIO ring's depth).
const MAX_EVENTS: usize = 4;

/// The control page of a block.
#[repr(C)]
struct Block {
    state: AtomicU32,
    nr: AtomicUsize,
    args: [AtomicUsize; 6],
    ret: AtomicIsize,
    /// The AIO context of the image (0: none), destroyed by an abandoned helper.
    aio_ctx: AtomicU64,
    /// `io_getevents` results (4 words each), copied out by the control thread.
    events: [AtomicU64; 4 * MAX_EVENTS],
    /// A copy of the `iocb` an `io_submit` passes (8 words) and the pointer array to it.
    iocb: [AtomicU64; 8],
    iocb_list: AtomicU64,
    /// Lingering: the writer's pidfd (-1: none).
    pidfd: AtomicI32,
    /// Lingering: descriptors to close once the writer is gone (-1: none).
    fds: [AtomicI32; 2],
    /// Lingering: remove the temporary file (path on the path page, `path_len` bytes) if it is
    /// still the file of device `dev`, inode `ino`.
    remove: AtomicU32,
    path_len: AtomicU32,
    dev: AtomicU64,
    ino: AtomicU64,
    /// The block was given a helper process (its stack is in use).
    helper: AtomicU32,
    /// The program's pid and the control thread's id when the helper was created: once that
    /// thread is gone, nobody posts or waits for a call any more.
    parent: AtomicI32,
    control: AtomicI32,
}

const _: () = assert!(core::mem::size_of::<Block>() <= PAGE);

/// The current image's helper block (0: none yet).
static BLOCK: AtomicUsize = AtomicUsize::new(0);
/// Set by the control thread around a stopped checkpoint's write ([`begin`], [`end`]).
static ENABLED: AtomicU32 = AtomicU32::new(0);
/// The image's regular-file descriptors (-1: none): only their calls go to the helper (a
/// stream destination is non-blocking, see `image::NonBlocking`).
static FILES: [AtomicI32; 2] = [const { AtomicI32::new(-1) }; 2];
/// The temporary file of the image being written ([`begin`] to [`end`]; 0: none): a helper is
/// given its name when it is created, and removes it itself once given up.
static TMP: AtomicUsize = AtomicUsize::new(0);
/// `--time` of the image (CLOCK_MONOTONIC; `u64::MAX`: none).
static DEADLINE: AtomicU64 = AtomicU64::new(u64::MAX);
/// Why the last image could not have a helper (errno; 0: it had one or needed none;
/// [`HELPER_OFF`]: turned off), for `-v`.
pub static HELPER_ERRNO: AtomicI32 = AtomicI32::new(0);
/// [`HELPER_ERRNO`]: `LIBCR_WRITE_HELPER=0` turned the helper off.
pub const HELPER_OFF: i32 = -1;
/// `LIBCR_WRITE_HELPER=0` at start-up: the control thread issues every write itself (as before
/// the helper; for measurements).
static OFF: AtomicU32 = AtomicU32::new(0);

/// At start-up: reads `LIBCR_WRITE_HELPER`.
pub fn init() {
    if super::env_at_init(c"LIBCR_WRITE_HELPER") == Some(b"0") {
        OFF.store(1, Relaxed);
    }
}
/// Blocks of the writers left behind (0: free slot).
static LINGER: [AtomicUsize; MAX_LINGER] = [const { AtomicUsize::new(0) }; MAX_LINGER];
/// How many writers were left behind so far (for tests and `-v`).
pub static LEFT_BEHIND: AtomicU64 = AtomicU64::new(0);

fn block(addr: usize) -> &'static Block {
    // SAFETY: `addr` is a block we mapped (BLOCK_LEN bytes, page 0 zeroed or written by us) and
    // not unmapped while referenced (only `reap_done`/`forget_in_child` unmap, after removing it
    // from every table). Block is atomics only (all-zero valid).
    unsafe { &*(addr as *const Block) }
}

fn new_block() -> Result<usize, Errno> {
    let b = sys::mmap(
        0,
        BLOCK_LEN,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    )?;
    let blk = block(b);
    blk.pidfd.store(-1, Relaxed);
    for f in &blk.fds {
        f.store(-1, Relaxed);
    }
    Ok(b)
}

/// A stopped checkpoint's write to `fd` begins (control thread, in the stop): blocking calls on
/// a regular file go through a helper from now on, giving up at `deadline_ns` or when the
/// requester is gone.
pub fn begin(fds: [i32; 2], deadline_ns: u64, tmp: &TmpName) {
    HELPER_ERRNO.store(0, Relaxed);
    TMP.store(tmp as *const TmpName as usize, Release);
    let mut any = false;
    for (slot, fd) in FILES.iter().zip(fds) {
        let regular =
            fd >= 0 && sys::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        slot.store(if regular { fd } else { -1 }, Relaxed);
        any |= regular;
    }
    DEADLINE.store(deadline_ns, Relaxed);
    if any && OFF.load(Relaxed) != 0 {
        HELPER_ERRNO.store(HELPER_OFF, Relaxed);
        any = false;
    }
    ENABLED.store(any as u32, Release);
}

/// [`sys6`] for a call on descriptor `fd` (its first argument): through the helper only for
/// the image's regular files.
pub fn fd_call(nr: usize, fd: i32, b: usize, c: usize, d: usize) -> sys::SysResult {
    if fd < 0 || !FILES.iter().any(|f| f.load(Relaxed) == fd) {
        return sys::sys6(nr, fd as usize, b, c, d, 0, 0);
    }
    sys6(nr, fd as usize, b, c, d, 0, 0)
}

/// In a copy-on-write writer (a fork of the control thread): its writes are its own, direct.
pub fn disable() {
    ENABLED.store(0, Relaxed);
    TMP.store(0, Relaxed);
}

/// The write is over (control thread): returns the block of a helper that was given up in the
/// middle of a call (the caller hands the image's descriptors to [`leave_behind`]); a helper
/// that is not busy is told to exit and reaped.
pub fn end() -> Option<usize> {
    ENABLED.store(0, Relaxed);
    TMP.store(0, Release);
    let b = BLOCK.swap(0, AcqRel);
    if b == 0 {
        return None;
    }
    let blk = block(b);
    if blk.state.load(Acquire) == ABANDONED {
        return Some(b);
    }
    // The image is complete (or failed with the helper idle): its file is the requester's.
    blk.remove.store(0, Release);
    blk.state.store(EXIT, Release);
    sys::futex_wake_all(&blk.state);
    // Gone in a few microseconds: reaped now, before the program runs again (a `--kill` or
    // `--term` after the checkpoint would leave it a zombie of init, whose process group keeps
    // the program's pid in use for a restart).
    wait_exit(blk.pidfd.load(Acquire));
    reap(b);
    None
}

/// Whether the current image's helper was given up (its later calls are not issued).
pub fn abandoned() -> bool {
    let b = BLOCK.load(Acquire);
    b != 0 && block(b).state.load(Acquire) == ABANDONED
}

/// The current image's helper, created on first use.
fn helper() -> Option<&'static Block> {
    if ENABLED.load(Acquire) == 0 {
        return None;
    }
    let b = BLOCK.load(Acquire);
    if b != 0 {
        return Some(block(b));
    }
    match start_helper() {
        Ok(b) => {
            BLOCK.store(b, Release);
            Some(block(b))
        }
        Err(e) => {
            // Written by the control thread itself, as before (said under -v).
            HELPER_ERRNO.store(e.0, Relaxed);
            ENABLED.store(0, Relaxed);
            None
        }
    }
}

/// `CLONE_CLEAR_SIGHAND`.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

fn start_helper() -> Result<usize, Errno> {
    let b = new_block()?;
    let blk = block(b);
    let t = TMP.load(Acquire);
    if t != 0 {
        // SAFETY: `begin` stored a TmpName that lives on the serving stack until `end`.
        record_tmp(b, unsafe { &*(t as *const TmpName) });
    }
    blk.parent.store(sys::getpid(), Relaxed);
    blk.control.store(sys::gettid(), Relaxed);
    let mut pidfd: i32 = -1;
    let args = crate::arch::CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_PIDFD) as u64
            | CLONE_CLEAR_SIGHAND,
        pidfd: &mut pidfd as *mut i32 as u64,
        exit_signal: 0,
        stack: (b + STACK_OFF) as u64,
        stack_size: (BLOCK_LEN - STACK_OFF) as u64,
        ..Default::default()
    };
    blk.helper.store(1, Relaxed);
    // SAFETY: the stack lies in our fresh block, used by nobody else; helper_main never
    // returns, and touches nothing but its block (no TLS: it shares the control thread's).
    let r = unsafe { crate::arch::clone3_call(&args, helper_main, b) };
    if r < 0 {
        sys::munmap(b, BLOCK_LEN);
        return Err(Errno(-r as i32));
    }
    blk.pidfd.store(pidfd, Release);
    Ok(b)
}

/// `close_range` flag: unshare the descriptor table first, copying only the descriptors below
/// the range (none for a range from 0: nothing is closed, no `flush` is sent).
const CLOSE_RANGE_UNSHARE: usize = 1 << 1;

/// How long an idle helper waits for a call before it checks that the control thread is still
/// there (its death also interrupts it at once: [`PDEATH_SIG`]).
const IDLE_CHECK_NS: u64 = 200_000_000;

/// The helper's parent-death signal: caught (an empty handler), so that a call waiting
/// interruptibly (`io_getevents`) returns `EINTR` when the control thread dies (the program's
/// exit or `exec`, or a kill while stopped), and the helper cleans up instead of dying with the
/// file left behind.
const PDEATH_SIG: i32 = libc::SIGUSR2;

extern "C" fn on_pdeath(_sig: i32) {}

/// The helper: issues the calls posted in its block until told to exit; once a call was given
/// up, or the control thread is gone (the program ended or ran `exec`), it lets go of the
/// program's descriptor table, destroys the image's AIO context (if any, which waits for the
/// writes still in flight), removes the temporary file if it is still the image's (device and
/// inode), and exits.
///
/// It starts a session of its own: neither it nor its zombie keeps the program's pid in use as
/// a process group's id once the program is gone (an exact-pid restart needs that pid), and
/// signals to the program's group do not reach it. It shares the program's descriptor table
/// while it works (closing the program's descriptors in a table of its own would `flush`
/// each, which waits on a destination that stopped answering, the image of an earlier
/// checkpoint left behind included); given up, it drops its reference to the table without
/// closing anything (`close_range(0, ~0, CLOSE_RANGE_UNSHARE)`), as soon as its call returns.
extern "C" fn helper_main(b: usize) -> ! {
    let blk = block(b);
    let _ = sys::sys3(
        libc::SYS_prctl as usize,
        libc::PR_SET_NAME as usize,
        c"cr-io".as_ptr() as usize,
        0,
    );
    let _ = sys::sys3(libc::SYS_setsid as usize, 0, 0, 0);
    catch_pdeath();
    let mut gone = false;
    loop {
        match blk.state.load(Acquire) {
            REQ => {
                let nr = blk.nr.load(Relaxed);
                let a: [usize; 6] = core::array::from_fn(|i| blk.args[i].load(Relaxed));
                let r = sys::raw6(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
                if nr == libc::SYS_io_destroy as usize && r == 0 {
                    let _ = blk
                        .aio_ctx
                        .compare_exchange(a[0] as u64, 0, AcqRel, Relaxed);
                }
                blk.ret.store(r, Relaxed);
                if blk
                    .state
                    .compare_exchange(REQ, DONE, AcqRel, Acquire)
                    .is_ok()
                {
                    sys::futex_wake_all(&blk.state);
                    if control_gone(blk) {
                        // Nobody will read the answer (the program was killed while stopped).
                        gone = true;
                        break;
                    }
                    continue;
                }
                break;
            }
            EXIT | ABANDONED => break,
            s => {
                let _ = sys::futex_wait(&blk.state, s, Some(IDLE_CHECK_NS));
                if blk.state.load(Acquire) == s && control_gone(blk) {
                    gone = true;
                    break;
                }
            }
        }
    }
    if gone || blk.state.load(Acquire) == ABANDONED {
        // Not one of the program's pipes or sockets stays open for our sake while we wait.
        let _ = sys::sys3(
            libc::SYS_close_range as usize,
            0,
            u32::MAX as usize,
            CLOSE_RANGE_UNSHARE,
        );
        let ctx = blk.aio_ctx.swap(0, AcqRel);
        if ctx != 0 {
            let _ = sys::raw6(libc::SYS_io_destroy as usize, ctx as usize, 0, 0, 0, 0, 0);
        }
        // The image was given up: its temporary file goes now that no write of ours waits on
        // it (the control thread, if the program still runs, tries too once we are gone).
        remove_recorded(b);
    }
    loop {
        let _ = sys::raw6(libc::SYS_exit as usize, 0, 0, 0, 0, 0, 0);
    }
}

/// In the helper: [`PDEATH_SIG`] caught by an empty handler (our own signal handlers:
/// `CLONE_CLEAR_SIGHAND`) and let through our mask (the control thread's, which blocks all).
fn catch_pdeath() {
    // The kernel's `struct sigaction`: handler, flags, restorer, mask.
    let act: [usize; 4] = [
        on_pdeath as *const () as usize,
        0x0400_0000, // SA_RESTORER (no SA_RESTART: a waiting call returns EINTR)
        crate::arch::sigreturn_restorer(),
        !0,
    ];
    let _ = sys::sys6(
        libc::SYS_rt_sigaction as usize,
        PDEATH_SIG as usize,
        act.as_ptr() as usize,
        0,
        8,
        0,
        0,
    );
    let set: u64 = 1 << (PDEATH_SIG - 1);
    let _ = sys::sys6(
        libc::SYS_rt_sigprocmask as usize,
        libc::SIG_UNBLOCK as usize,
        &set as *const u64 as usize,
        0,
        8,
        0,
        0,
    );
    let _ = sys::sys3(
        libc::SYS_prctl as usize,
        libc::PR_SET_PDEATHSIG as usize,
        PDEATH_SIG as usize,
        0,
    );
}

/// Whether the control thread that created the helper has ended (the program exited, was
/// killed, or ran `exec`, which ends every thread but the one that calls it).
fn control_gone(blk: &Block) -> bool {
    sys::sys3(
        libc::SYS_tgkill as usize,
        blk.parent.load(Relaxed) as usize,
        blk.control.load(Relaxed) as usize,
        0,
    ) == Err(Errno(libc::ESRCH))
}

/// The errno an abandoned image's calls fail with.
static GAVE_UP: AtomicI32 = AtomicI32::new(libc::ECANCELED);

/// A system call that may wait on the destination: through the helper while a stopped
/// checkpoint writes to a regular file, else directly. Gives up (marking the helper abandoned)
/// when `--time` runs out or the requester is gone while it waits.
pub fn sys6(
    nr: usize,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
    f: usize,
) -> sys::SysResult {
    let Some(blk) = helper() else {
        return sys::sys6(nr, a, b, c, d, e, f);
    };
    if blk.state.load(Acquire) == ABANDONED {
        return Err(Errno(GAVE_UP.load(Relaxed)));
    }
    blk.nr.store(nr, Relaxed);
    for (slot, v) in blk.args.iter().zip([a, b, c, d, e, f]) {
        slot.store(v, Relaxed);
    }
    blk.state.store(REQ, Release);
    sys::futex_wake_all(&blk.state);
    let deadline = DEADLINE.load(Relaxed);
    loop {
        let now = sys::monotonic_ns();
        let wait = deadline.saturating_sub(now).clamp(1_000_000, 10_000_000);
        let _ = sys::futex_wait(&blk.state, REQ, Some(wait));
        if blk.state.load(Acquire) == DONE {
            break;
        }
        if let Err(e) = super::image::write_must_stop(deadline) {
            if blk
                .state
                .compare_exchange(REQ, ABANDONED, AcqRel, Acquire)
                .is_ok()
            {
                GAVE_UP.store(e.0, Relaxed);
                return Err(e);
            }
            // (It answered meanwhile.)
            break;
        }
    }
    let r = blk.ret.load(Relaxed);
    blk.state.store(IDLE, Release);
    if r < 0 {
        Err(Errno(-r as i32))
    } else {
        Ok(r as usize)
    }
}

/// Records the image's AIO context, destroyed by the helper if it is given up.
pub fn set_aio_ctx(ctx: u64) {
    if let Some(blk) = helper() {
        blk.aio_ctx.store(ctx, Release);
    }
}

/// `io_submit` of one `iocb` (8 words) whose `iovec`s (`n` of them at `iov`) the kernel reads,
/// copied into the helper's block first: once given up, the helper reads nothing of ours.
pub fn io_submit(ctx: u64, iocb: &[u64; 8], iov: usize, n: usize) -> sys::SysResult {
    let Some(blk) = helper() else {
        let list = [iocb.as_ptr() as usize];
        return sys::sys3(
            libc::SYS_io_submit as usize,
            ctx as usize,
            1,
            list.as_ptr() as usize,
        );
    };
    let b = BLOCK.load(Acquire);
    let n = n.min(PAGE / core::mem::size_of::<libc::iovec>());
    // SAFETY: `iov` holds `n` iovecs (the caller's), the block's iovec page holds a page.
    unsafe {
        core::ptr::copy_nonoverlapping(
            iov as *const libc::iovec,
            (b + IOV_OFF) as *mut libc::iovec,
            n,
        )
    };
    for (i, w) in iocb.iter().enumerate() {
        blk.iocb[i].store(*w, Relaxed);
    }
    // Word 3 holds `buf` (after data, key/rw_flags, opcode/reqprio/fildes): our iovec copy.
    blk.iocb[3].store((b + IOV_OFF) as u64, Relaxed);
    blk.iocb_list.store(blk.iocb.as_ptr() as u64, Relaxed);
    sys6(
        libc::SYS_io_submit as usize,
        ctx as usize,
        1,
        blk.iocb_list.as_ptr() as usize,
        0,
        0,
        0,
    )
}

/// `io_getevents` into `out` (4 words an event), through the helper's own buffer.
pub fn io_getevents(ctx: u64, min: usize, out: &mut [[u64; 4]]) -> sys::SysResult {
    let max = out.len().min(MAX_EVENTS);
    let Some(blk) = helper() else {
        return sys::sys6(
            libc::SYS_io_getevents as usize,
            ctx as usize,
            min,
            max,
            out.as_mut_ptr() as usize,
            0,
            0,
        );
    };
    let n = sys6(
        libc::SYS_io_getevents as usize,
        ctx as usize,
        min,
        max,
        blk.events.as_ptr() as usize,
        0,
        0,
    )?;
    for (i, ev) in out.iter_mut().enumerate().take(n.min(max)) {
        for (k, w) in ev.iter_mut().enumerate() {
            *w = blk.events[i * 4 + k].load(Relaxed);
        }
    }
    Ok(n)
}

/// The temporary file a checkpoint writes (`protocol::FLAG_TMP_NAMED`): its path and the
/// device and inode of the descriptor the agent was given (an empty path: none).
pub struct TmpName {
    path: [u8; PAGE],
    len: usize,
    dev: u64,
    ino: u64,
}

impl TmpName {
    /// The temporary file of a request with `flags` and final path `dest` whose image
    /// descriptor is `fd` (none unless `FLAG_TMP_NAMED`, and `fd` is a regular file).
    pub fn of(flags: u32, dest: &[u8], fd: i32) -> TmpName {
        let mut t = TmpName {
            path: [0; PAGE],
            len: 0,
            dev: 0,
            ino: 0,
        };
        if flags & crate::protocol::FLAG_TMP_NAMED == 0 {
            return t;
        }
        if let Ok(st) = sys::fstat(fd) {
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                // The name the descriptor has (`.NAME.tmp`, or `.NAME.PID.tmp` when an earlier
                // checkpoint's file held that one), else the usual one.
                let mut link = crate::sys::StackBuf::<64>::new();
                link.push(b"/proc/self/fd/").num(fd as u64);
                t.len = match sys::readlink(link.as_cstr(), &mut t.path[..PAGE - 1]) {
                    Ok(n) if crate::protocol::is_tmp_name_of(dest, &t.path[..n]) => n,
                    _ => crate::protocol::tmp_name_of(dest, &mut t.path[..PAGE - 1]),
                };
                t.dev = st.st_dev;
                t.ino = st.st_ino;
            }
        }
        t
    }

    /// Removes the file now if its name is still the descriptor's file.
    pub fn remove(&self) {
        if self.len > 0 {
            remove_tmp(&self.path[..self.len], self.dev, self.ino);
        }
    }
}

/// Hands a writer's block over to the table of writers left behind: `fds` (-1: none) are
/// closed and `tmp` is removed once it is gone. `b` is a helper's block ([`end`]), or 0 for a
/// copy-on-write writer (`pidfd`).
pub fn leave_behind(b: usize, pidfd: i32, fds: [i32; 2], tmp: &TmpName) {
    let b = if b != 0 {
        b
    } else {
        match new_block() {
            Ok(nb) => {
                block(nb).pidfd.store(pidfd, Release);
                nb
            }
            Err(_) => {
                // No memory for the record: wait for it here, as before.
                wait_exit(pidfd);
                let _ = sys::waitid(libc::P_PIDFD, pidfd, libc::WEXITED | libc::__WALL);
                sys::close(pidfd);
                for f in fds {
                    if f >= 0 {
                        sys::close(f);
                    }
                }
                tmp.remove();
                return;
            }
        }
    };
    let blk = block(b);
    for (slot, f) in blk.fds.iter().zip(fds) {
        slot.store(f, Relaxed);
    }
    if blk.remove.load(Acquire) == 0 {
        // (A helper's block has it from its start.)
        record_tmp(b, tmp);
    }
    LEFT_BEHIND.fetch_add(1, Relaxed);
    linger(b);
}

/// A copy-on-write writer that succeeded and is exiting (its image durable, the requester
/// answered): reaped from the control thread's poll once its exit has torn down its copy of
/// the address space, which took 250-470 ms of the next request's time when waited for here
/// (five 160 MiB processes checkpointed back to back at load 25-31: the member still reaping
/// began its stop that much after the others, which waited for it in the cut's barrier,
/// docs/PERFORMANCE.md). Not counted as left behind. Without memory for the record: reaped
/// here, as before.
pub fn reap_later(pidfd: i32) {
    match new_block() {
        Ok(b) => {
            block(b).pidfd.store(pidfd, Release);
            linger(b);
        }
        Err(_) => {
            let _ = super::cow::reap(pidfd);
        }
    }
}

/// Writes temporary file `tmp` (if any) into block `b`: removed once its writer is gone.
fn record_tmp(b: usize, tmp: &TmpName) {
    if tmp.len == 0 {
        return;
    }
    let blk = block(b);
    let n = tmp.len.min(PAGE - 1);
    // SAFETY: the block's path page is ours, a page long.
    let dst = unsafe { core::slice::from_raw_parts_mut((b + PATH_OFF) as *mut u8, PAGE) };
    dst[..n].copy_from_slice(&tmp.path[..n]);
    dst[n] = 0;
    blk.path_len.store(n as u32, Relaxed);
    blk.dev.store(tmp.dev, Relaxed);
    blk.ino.store(tmp.ino, Relaxed);
    blk.remove.store(1, Release);
}

/// Removes the temporary file recorded in block `b` ([`record_tmp`]) if it is still the
/// image's file.
fn remove_recorded(b: usize) {
    let blk = block(b);
    if blk.remove.load(Acquire) != 0 {
        let n = blk.path_len.load(Relaxed) as usize;
        // SAFETY: the block's path page, written by `record_tmp`.
        let p = unsafe { core::slice::from_raw_parts((b + PATH_OFF) as *const u8, n) };
        remove_tmp(p, blk.dev.load(Relaxed), blk.ino.load(Relaxed));
    }
}

/// Puts block `b` into the table of writers to reap; with the table full, the oldest is waited
/// for first.
fn linger(b: usize) {
    while !try_linger(b) {
        let oldest = LINGER[0].load(Acquire);
        wait_exit(block(oldest).pidfd.load(Acquire));
        reap_done();
    }
}

/// Puts block `b` into a free slot of the table; false when it is full.
fn try_linger(b: usize) -> bool {
    LINGER
        .iter()
        .any(|slot| slot.compare_exchange(0, b, AcqRel, Acquire).is_ok())
}

/// Waits until the process of `pidfd` has ended (not reaping it).
fn wait_exit(pidfd: i32) {
    if pidfd < 0 {
        return;
    }
    sys::poll_one(pidfd, libc::POLLIN, -1);
}

/// Removes the temporary file at `path` if it is still the file of `dev`/`ino` (never another
/// file that took its name since, never the final path: the requester named it).
fn remove_tmp(path: &[u8], dev: u64, ino: u64) {
    let mut buf = [0u8; PAGE];
    let n = path.len().min(PAGE - 1);
    buf[..n].copy_from_slice(&path[..n]);
    // SAFETY: all-zero is a valid stat.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    let r = sys::sys6(
        libc::SYS_newfstatat as usize,
        libc::AT_FDCWD as usize,
        buf.as_ptr() as usize,
        &mut st as *mut _ as usize,
        libc::AT_SYMLINK_NOFOLLOW as usize,
        0,
        0,
    );
    if r.is_ok() && st.st_dev == dev && st.st_ino == ino {
        let _ = sys::sys3(
            libc::SYS_unlinkat as usize,
            libc::AT_FDCWD as usize,
            buf.as_ptr() as usize,
            0,
        );
    }
}

/// The pidfds of the writers left behind (for the control thread's poll); returns how many.
pub fn pidfds(out: &mut [libc::pollfd]) -> usize {
    let mut n = 0;
    for slot in &LINGER {
        let b = slot.load(Acquire);
        if b != 0 && n < out.len() {
            out[n] = libc::pollfd {
                fd: block(b).pidfd.load(Acquire),
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
    }
    n
}

/// After an `exec`, the helpers and writers the program left behind are children of the new
/// program (the kernel moved them to the thread that ran `exec`, keeping exit signal 0: no
/// `SIGCHLD`, invisible to `waitpid(-1)` without `__WALL`, so the new program never reaps
/// them). Called when a checkpoint request comes (control thread): those that ended are
/// reaped now, the others watched and reaped as our own ([`linger`]). They are found among the
/// main thread's children only (ours, made by the control thread, are not there), by name
/// (`cr-io`, `cr-writer`) and exit signal 0. Allocation-free.
pub fn adopt_orphans() {
    if LINGER.iter().any(|s| s.load(Acquire) != 0) {
        // (Writers of our own are left behind: this program has not run exec since.)
        return;
    }
    let mut path = crate::sys::StackBuf::<64>::new();
    let me = sys::getpid();
    path.push(b"/proc/self/task/")
        .num(me as u64)
        .push(b"/children");
    let mut buf = [0u8; 2048];
    let Ok(n) = sys::read_file(path.as_cstr(), &mut buf) else {
        return;
    };
    for tok in buf[..n].split(|&c| c == b' ' || c == b'\n') {
        let Some(pid) = parse_pid(tok) else {
            continue;
        };
        let Some(zombie) = orphan_writer(pid) else {
            continue;
        };
        if zombie {
            let _ = sys::waitid(
                libc::P_PID,
                pid,
                libc::WEXITED | libc::__WALL | libc::WNOHANG,
            );
            continue;
        }
        let Ok(pidfd) = sys::sys3(libc::SYS_pidfd_open as usize, pid as usize, 0, 0) else {
            continue;
        };
        match new_block() {
            Ok(b) => {
                block(b).pidfd.store(pidfd as i32, Release);
                if !try_linger(b) {
                    sys::close(pidfd as i32);
                    sys::munmap(b, BLOCK_LEN);
                }
            }
            Err(_) => sys::close(pidfd as i32),
        }
    }
}

fn parse_pid(tok: &[u8]) -> Option<i32> {
    if tok.is_empty() || tok.len() > 10 || !tok.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(tok.iter().fold(0i64, |v, &c| v * 10 + (c - b'0') as i64) as i32).filter(|&p| p > 0)
}

/// Whether child `pid` is an agent's writer (`cr-io`, `cr-writer`, exit signal 0): `Some(true)`
/// if it has ended (a zombie), `Some(false)` if it still runs, `None` if it is no writer.
fn orphan_writer(pid: i32) -> Option<bool> {
    let mut path = crate::sys::StackBuf::<64>::new();
    path.push(b"/proc/").num(pid as u64).push(b"/stat");
    let mut buf = [0u8; 1024];
    let n = sys::read_file(path.as_cstr(), &mut buf).ok()?;
    let s = &buf[..n];
    let open = s.iter().position(|&c| c == b'(')?;
    let close = s.iter().rposition(|&c| c == b')')?;
    let comm = &s[open + 1..close];
    if comm != b"cr-io" && comm != b"cr-writer" {
        return None;
    }
    // Fields after the name: state is the first, exit_signal the 36th.
    let mut fields = s[close + 1..]
        .split(|&c| c == b' ')
        .filter(|f| !f.is_empty());
    let state = fields.next()?;
    let exit_signal = fields.nth(34)?;
    if exit_signal != b"0" {
        return None;
    }
    Some(state == b"Z")
}

/// Reaps every writer left behind that has ended: closes the descriptors it held, removes its
/// temporary file, closes its pidfd and unmaps its block. Never waits.
pub fn reap_done() {
    for slot in &LINGER {
        let b = slot.load(Acquire);
        if b != 0 && reap(b) {
            slot.store(0, Release);
        }
    }
}

/// Reaps the writer of block `b` if it has ended, then does what it left to do and unmaps the
/// block; returns whether it had ended.
fn reap(b: usize) -> bool {
    {
        let blk = block(b);
        let pidfd = blk.pidfd.load(Acquire);
        if pidfd >= 0 {
            let (r, info) = sys::waitid(
                libc::P_PIDFD,
                pidfd,
                libc::WEXITED | libc::__WALL | libc::WNOHANG,
            );
            // SAFETY: waitid filled the siginfo (si_pid 0: not ended yet).
            if r.is_ok() && unsafe { info.si_pid() } == 0 {
                return false;
            }
            sys::close(pidfd);
        }
        for f in &blk.fds {
            let f = f.swap(-1, AcqRel);
            if f >= 0 {
                sys::close(f);
            }
        }
        remove_recorded(b);
    }
    sys::munmap(b, BLOCK_LEN);
    true
}

/// Whether `fd` is one of the agent's for a writer left behind (its pidfd, or an image
/// descriptor it may still be writing): left out of the next image.
pub fn owns_fd(fd: i32) -> bool {
    LINGER.iter().any(|slot| {
        let b = slot.load(Acquire);
        b != 0 && {
            let blk = block(b);
            blk.pidfd.load(Acquire) == fd || blk.fds.iter().any(|f| f.load(Acquire) == fd)
        }
    }) || {
        let b = BLOCK.load(Acquire);
        b != 0 && block(b).pidfd.load(Acquire) == fd
    }
}

/// Whether `addr` starts a mapping of ours: a helper's or a lingering writer's block, or the
/// ring of the AIO context a given-up helper has not destroyed yet (its address is the context's
/// id). Left out of the image. The ring is a shared mapping (`/[aio] (deleted)`) the kernel
/// writes whenever one of the old image's pieces completes, which it did while the next image
/// was written (an image taken just after a checkpoint was given up, its helper still
/// submitting: `page data checksum mismatch` at restart, in `destination_fuse_server_stalls`
/// 1 of 20 runs); and the helper may unmap it at any moment (`io_destroy`).
pub fn contains(addr: u64) -> bool {
    let inside = |b: usize| {
        b != 0
            && ((b as u64..(b + BLOCK_LEN) as u64).contains(&addr)
                || block(b).aio_ctx.load(Acquire) == addr)
    };
    inside(BLOCK.load(Acquire)) || LINGER.iter().any(|s| inside(s.load(Acquire)))
}

/// In a fork child: the writers left behind are the parent's. Their pidfds and blocks (copies)
/// are let go; the image descriptors are close-on-exec and stay (closing one could wait on the
/// destination, as the parent's would).
pub fn forget_in_child() {
    // (Only what differs is written: a child that execs at once copies none of our pages.)
    if BLOCK.load(Relaxed) != 0 {
        BLOCK.store(0, Release);
    }
    if ENABLED.load(Relaxed) != 0 {
        ENABLED.store(0, Release);
    }
    if TMP.load(Relaxed) != 0 {
        TMP.store(0, Release);
    }
    for slot in &LINGER {
        let b = slot.load(Acquire);
        if b == 0 {
            continue;
        }
        let pidfd = block(b).pidfd.load(Acquire);
        if pidfd >= 0 {
            sys::close(pidfd);
        }
        slot.store(0, Release);
        sys::munmap(b, BLOCK_LEN);
    }
}

/// In a restored process: the helpers and writers of the checkpointed process are not ours
/// (their blocks, pidfds and descriptors were never part of the image).
pub fn forget_restored() {
    for slot in &LINGER {
        slot.store(0, Release);
    }
    BLOCK.store(0, Release);
    ENABLED.store(0, Release);
    TMP.store(0, Release);
}
