//! `--compress` inside the stopped program (issue 14, `protocol::FLAG_ZPACK`): the pieces of a
//! split image that go to the compressor are compressed here, in the program's own address
//! space, by helper threads of the agent, and only the zstd frames cross the pipe to
//! cr_checkpoint, which stores them (docs/IMAGE-FORMAT.md "Packed pieces"). No byte of page data
//! is copied before it is compressed (the pipe and `process_vm_readv` each cost about as much
//! CPU per MiB as zstd's long-distance matching on the benchmark's pattern).
//!
//! **The helpers.** One per CPU the agent may run on (at most [`MAX_HELPERS`]), made by the
//! writer with `clone3(CLONE_VM | CLONE_THREAD | …)` when a split image starts, in a mapping
//! of their own made then (after the capture: it is never in the image) and unmapped before the
//! program is released: threads of the program's thread group (a program killed meanwhile takes
//! them with it), with every signal blocked (the writer's mask, inherited), no TLS of their own
//! (they share the writer's thread pointer and use none: zstd's C code and raw system calls
//! only), named `cr-zstd`. Each has a [`Slot`]: a control page, its stack, an output buffer of
//! `ZSTD_compressBound(1 MiB)`, and two zstd compression contexts made static in that mapping
//! (`ZSTD_initStaticCCtx`, sized by [`ctx_lens`]: zstd never allocates then), set up exactly as
//! cr_checkpoint's `image::compress::Packer` (same level, content checksum, the second with
//! long-distance matching and one entry per hash bucket) and used by the same rule
//! (`image::compress::pack_by_rule`), so the frames are the ones cr_checkpoint would have made.
//!
//! **How they are driven.** The writer ([`Pack`], on its stack) gives a piece (address, length)
//! to an idle slot (`IDLE` → `WORK`, futex wake); the helper compresses it from the program's
//! memory into its buffer and marks it `DONE` (a frame's length, or 0: store it raw), bumping a
//! shared event counter the writer waits on. The writer takes the slots back in the order it
//! gave them (the stream's pieces are in increasing order). No lock: each slot word has one
//! writer at a time by its state. When the image ends, fails, or gives up (`--time`, the
//! requester gone), [`Pack`]'s drop tells every helper to exit and waits for each to be gone
//! (`CLONE_CHILD_CLEARTID`: the kernel clears its id word and wakes it once the thread no longer
//! uses its stack), then unmaps the mapping: no helper outlives the stop. A helper busy with
//! a frame finishes it first (level 1: about a millisecond).
//!
//! Memory: per helper the two contexts' estimates (level 1: 0.56 + 9.1 MiB; most of the
//! long-distance table is never touched for 1 MiB frames), 1 MiB of output and a 256 KiB stack;
//! two helpers map ~22.6 MiB, touch less. Levels above [`MAX_LEVEL`] are not compressed here
//! (their contexts take 20-700 MiB): cr_checkpoint pulls or gets the pieces as before.

use crate::image::format::PAGE;
use crate::sys::{self, Errno};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::*};
use zstd::zstd_safe::zstd_sys as zs;

/// Most helpers (and slots).
pub const MAX_HELPERS: usize = 4;
/// Highest level compressed in the process (see [`ctx_lens`]).
pub const MAX_LEVEL: i32 = 4;

/// `ZSTD_estimateCCtxSize_usingCCtxParams` of the two contexts at levels 1 to [`MAX_LEVEL`]
/// (content checksum on; the second with long-distance matching, bucket size log 1), zstd
/// 1.6.0 as vendored by zstd-sys 2.2.0, rounded up to pages. No allocation (the estimate needs
/// a `ZSTD_CCtx_params`, which only `ZSTD_createCCtxParams` makes): checked against zstd's own
/// estimate by `image::compress`'s tests.
pub const fn ctx_lens(level: i32) -> Option<(usize, usize)> {
    let (f, l) = match level {
        1 => (582_688, 9_520_160),
        2 => (779_296, 9_716_768),
        3 => (1_303_584, 10_241_056),
        4 => (2_614_304, 11_551_776),
        _ => return None,
    };
    Some((page_up(f), page_up(l)))
}

const fn page_up(n: usize) -> usize {
    (n + PAGE - 1) & !(PAGE - 1)
}

/// A helper's stack.
const STACK_LEN: usize = 256 << 10;
/// A helper's output buffer: `ZSTD_compressBound(1 MiB)` and more.
const OUT_LEN: usize = page_up(crate::image::compress::FRAME + (64 << 10));

const IDLE: u32 = 0;
const WORK: u32 = 1;
const DONE: u32 = 2;
const EXIT: u32 = 3;

/// How long [`Pack`]'s drop waits for the helpers to be gone before it leaves their mapping
/// (never unmapped under a running thread).
const EXIT_WAIT_NS: u64 = 60_000_000_000;

/// A helper's control page (the first page of its part of the mapping).
#[repr(C)]
struct Slot {
    state: AtomicU32,
    /// The helper's thread id; cleared by the kernel once it is gone (`CLONE_CHILD_CLEARTID`).
    tid: AtomicI32,
    /// The piece: address and length in the program's memory.
    addr: AtomicUsize,
    len: AtomicUsize,
    /// [`DONE`]: the frame's length in `out` (0: store the piece raw).
    result: AtomicUsize,
    out: usize,
    fast: usize,
    long: usize,
    /// The shared event counter (bumped at every `DONE`), in the first slot's page.
    events: usize,
    /// The writer's ids (a helper whose writer is gone exits).
    pid: i32,
    control: i32,
    /// `LIBCR_TEST_PACK=stall` (tests): after its first frame the helper takes no more.
    stall: bool,
}

const _: () = assert!(core::mem::size_of::<Slot>() + 8 <= PAGE);

fn slot(addr: usize) -> &'static Slot {
    // SAFETY: `addr` is a slot page of a live mapping (the helpers and the writer only use it
    // while it is mapped: the drop unmaps it once every helper is gone).
    unsafe { &*(addr as *const Slot) }
}

/// `LIBCR_TEST_PACK` in the environment at start-up: 1 `fail` (the contexts "cannot be made":
/// the fallback is taken), 2 `stall` (a helper stops after its first frame, named
/// `cr-zstd-stall`, until told to exit). Tests only.
static KNOB: AtomicU32 = AtomicU32::new(0);

/// `LIBCR_PACK_HELPERS=N` in the environment at start-up (1..=[`MAX_HELPERS`]): this many
/// helpers instead of one per CPU (0: not set). For measuring; documented in cr_checkpoint(1).
static HELPERS_WANTED: AtomicU32 = AtomicU32::new(0);

/// Reads [`KNOB`] and [`HELPERS_WANTED`] (at init, before the program's threads).
pub fn init() {
    if let Some([d @ b'1'..=b'9']) = super::env_at_init(c"LIBCR_PACK_HELPERS") {
        HELPERS_WANTED.store(u32::from(d - b'0').min(MAX_HELPERS as u32), Relaxed);
    }
    let Some(v) = super::env_at_init(c"LIBCR_TEST_PACK") else {
        return;
    };
    KNOB.store(
        match v {
            b"fail" => 1,
            b"stall" => 2,
            _ => 0,
        },
        Relaxed,
    );
}

/// CPUs this thread may run on (`sched_getaffinity`), at least 1.
fn cpus() -> usize {
    let mut set = [0u64; 16];
    match sys::sys3(
        libc::SYS_sched_getaffinity as usize,
        0,
        core::mem::size_of_val(&set),
        set.as_mut_ptr() as usize,
    ) {
        Ok(_) => (set.iter().map(|w| w.count_ones() as usize).sum::<usize>()).max(1),
        Err(_) => 1,
    }
}

/// The writer's side: the helpers, their mapping, and the pieces given out in order.
pub struct Pack {
    base: usize,
    len: usize,
    per: usize,
    /// Helpers started (slots `0..n`).
    n: usize,
    /// The slots given a piece, oldest first (`ring[(head + k) % MAX_HELPERS]`), and each
    /// one's piece index.
    ring: [(usize, usize); MAX_HELPERS],
    head: usize,
    count: usize,
    /// Bytes mapped for the helpers (for `-v` and the docs: the agent's memory in the stop).
    pub mapped: usize,
}

/// A piece back from a helper: its index, address and length, and the frame (address and
/// length in the helper's buffer) or `None`: store it raw.
pub type Packed = (usize, usize, usize, Option<(usize, usize)>);

impl Pack {
    /// Maps the helpers' memory, makes their contexts at `level` and starts them. `Err`: the
    /// errno of what could not be done (nothing is left behind then).
    pub fn start(level: i32) -> Result<Pack, Errno> {
        let Some((fast_len, long_len)) = ctx_lens(level) else {
            return Err(Errno(libc::ERANGE));
        };
        if KNOB.load(Relaxed) == 1 {
            return Err(Errno(libc::ENOMEM));
        }
        let n = match HELPERS_WANTED.load(Relaxed) {
            0 => cpus().min(MAX_HELPERS),
            w => w as usize,
        };
        let per = PAGE + STACK_LEN + OUT_LEN + fast_len + long_len;
        let len = per * n;
        let base = sys::mmap(
            0,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )?;
        let mut p = Pack {
            base,
            len,
            per,
            n: 0,
            ring: [(0, 0); MAX_HELPERS],
            head: 0,
            count: 0,
            mapped: len,
        };
        let events = base + core::mem::size_of::<Slot>();
        let pid = sys::getpid();
        let control = sys::gettid();
        let stall = KNOB.load(Relaxed) == 2;
        for k in 0..n {
            let at = base + k * per;
            let out = at + PAGE + STACK_LEN;
            let fast = make_ctx(out + OUT_LEN, fast_len, level, false);
            let long = make_ctx(out + OUT_LEN + fast_len, long_len, level, true);
            let (Some(fast), Some(long)) = (fast, long) else {
                if k == 0 {
                    return Err(Errno(libc::ENOMEM));
                }
                break;
            };
            // SAFETY: a fresh page of our mapping, used by nobody yet.
            unsafe {
                core::ptr::write(
                    at as *mut Slot,
                    Slot {
                        state: AtomicU32::new(IDLE),
                        tid: AtomicI32::new(0),
                        addr: AtomicUsize::new(0),
                        len: AtomicUsize::new(0),
                        result: AtomicUsize::new(0),
                        out,
                        fast,
                        long,
                        events,
                        pid,
                        control,
                        stall,
                    },
                )
            };
            let s = slot(at);
            let args = crate::arch::CloneArgs {
                flags: (libc::CLONE_VM
                    | libc::CLONE_FS
                    | libc::CLONE_FILES
                    | libc::CLONE_SIGHAND
                    | libc::CLONE_THREAD
                    | libc::CLONE_SYSVSEM
                    | libc::CLONE_CHILD_SETTID
                    | libc::CLONE_CHILD_CLEARTID) as u64,
                child_tid: s.tid.as_ptr() as u64,
                stack: (at + PAGE) as u64,
                stack_size: STACK_LEN as u64,
                ..Default::default()
            };
            // The id word is set before the thread runs (CLONE_CHILD_SETTID sets it in the
            // child; set it here too, so a wait that comes first sees it).
            // Every signal blocked in the new thread (it inherits this mask).
            let mask = sys::sigprocmask_raw(libc::SIG_SETMASK, Some(!0));
            // SAFETY: the stack lies in our fresh mapping, used by nobody else; helper_main
            // never returns and touches nothing but its slot, its buffer and contexts, and the
            // program's memory it is given to read (no TLS: it uses none).
            let r = unsafe { crate::arch::clone3_call(&args, helper_main, at) };
            sys::sigprocmask_raw(libc::SIG_SETMASK, Some(mask));
            if r < 0 {
                if k == 0 {
                    drop(p);
                    return Err(Errno(-r as i32));
                }
                break;
            }
            // (The child may have run and set it already: same value.)
            s.tid.store(r as i32, Release);
            p.n += 1;
        }
        Ok(p)
    }

    fn slot(&self, k: usize) -> &'static Slot {
        slot(self.base + k * self.per)
    }

    fn events(&self) -> &'static AtomicU32 {
        // SAFETY: in the first slot's page, past the slot, while mapped.
        unsafe { &*((self.base + core::mem::size_of::<Slot>()) as *const AtomicU32) }
    }

    /// Whether a slot is idle (a piece may be given now).
    pub fn has_room(&self) -> bool {
        self.count < self.n
    }

    /// Whether pieces are out (given, not taken back).
    pub fn outstanding(&self) -> bool {
        self.count > 0
    }

    /// Gives piece `i` (`len` bytes at `addr`) to an idle helper ([`Pack::has_room`]).
    pub fn give(&mut self, i: usize, addr: usize, len: usize) {
        let Some(k) = (0..self.n).find(|&k| self.slot(k).state.load(Acquire) == IDLE) else {
            return;
        };
        let s = self.slot(k);
        s.addr.store(addr, Relaxed);
        s.len.store(len, Relaxed);
        s.state.store(WORK, Release);
        sys::futex_wake_all(&s.state);
        self.ring[(self.head + self.count) % MAX_HELPERS] = (k, i);
        self.count += 1;
    }

    /// The oldest piece given out, once its helper is done with it; its slot is idle again
    /// when the caller is done with the frame (the next call, or [`Pack::release`]).
    pub fn take(&mut self) -> Option<Packed> {
        if self.count == 0 {
            return None;
        }
        let (k, i) = self.ring[self.head];
        let s = self.slot(k);
        if s.state.load(Acquire) != DONE {
            return None;
        }
        let n = s.result.load(Relaxed);
        let frame = (n > 0).then_some((s.out, n));
        Some((i, s.addr.load(Relaxed), s.len.load(Relaxed), frame))
    }

    /// The oldest piece's slot is idle again (after [`Pack::take`], its frame written).
    pub fn release(&mut self) {
        if self.count == 0 {
            return;
        }
        let (k, _) = self.ring[self.head];
        let s = self.slot(k);
        if s.state.load(Acquire) == DONE {
            s.state.store(IDLE, Release);
            self.head = (self.head + 1) % MAX_HELPERS;
            self.count -= 1;
        }
    }

    /// Waits up to `ns` for a helper to finish a piece.
    pub fn wait(&self, ns: u64) {
        let ev = self.events();
        let v = ev.load(Acquire);
        if self.count == 0 {
            return;
        }
        let (k, _) = self.ring[self.head];
        if self.slot(k).state.load(Acquire) == DONE {
            return;
        }
        let _ = sys::futex_wait(ev, v, Some(ns));
    }

    /// The helpers started.
    pub fn helpers(&self) -> usize {
        self.n
    }
}

impl Drop for Pack {
    /// Tells every helper to exit, waits for each to be gone, and unmaps their memory (left
    /// mapped, with a helper still running, only past [`EXIT_WAIT_NS`]).
    fn drop(&mut self) {
        for k in 0..self.n {
            let s = self.slot(k);
            s.state.store(EXIT, Release);
            sys::futex_wake_all(&s.state);
        }
        let until = sys::monotonic_ns() + EXIT_WAIT_NS;
        for k in 0..self.n {
            let s = self.slot(k);
            loop {
                let t = s.tid.load(Acquire);
                if t == 0 {
                    break;
                }
                if sys::monotonic_ns() > until {
                    // (Never unmapped under a running thread.)
                    return;
                }
                // The kernel's wake at the thread's exit is a shared futex wake.
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                let _ = sys::sys6(
                    libc::SYS_futex as usize,
                    s.tid.as_ptr() as usize,
                    libc::FUTEX_WAIT as usize,
                    t as u32 as usize,
                    &ts as *const _ as usize,
                    0,
                    0,
                );
            }
        }
        sys::munmap(self.base, self.len);
    }
}

/// A static compression context in `len` bytes at `at`, set up as `Packer`'s: `level`, content
/// checksum, and (`long`) long-distance matching with one entry per hash bucket.
fn make_ctx(at: usize, len: usize, level: i32, long: bool) -> Option<usize> {
    use zs::ZSTD_cParameter::*;
    // SAFETY: `len` bytes of our fresh mapping at `at` (8-byte aligned: page aligned), given
    // to zstd for good; it never allocates with a static context.
    let c = unsafe { zs::ZSTD_initStaticCCtx(at as *mut core::ffi::c_void, len) };
    if c.is_null() {
        return None;
    }
    let set = |p, v| {
        // SAFETY: a valid context; setting a parameter allocates nothing.
        let r = unsafe { zs::ZSTD_CCtx_setParameter(c, p, v) };
        // SAFETY: a pure function of the code.
        unsafe { zs::ZSTD_isError(r) == 0 }
    };
    // zstd's defaults first, as `ZSTD_createCCtx` sets them (a static context starts with
    // every parameter zero: no content size in its frames, unlike cr_checkpoint's).
    // SAFETY: a valid context; a reset allocates nothing.
    let r = unsafe { zs::ZSTD_CCtx_reset(c, zs::ZSTD_ResetDirective::ZSTD_reset_parameters) };
    // SAFETY: a pure function of the code.
    if unsafe { zs::ZSTD_isError(r) } != 0 {
        return None;
    }
    let ok = set(ZSTD_c_compressionLevel, level)
        && set(ZSTD_c_checksumFlag, 1)
        && (!long
            || (set(ZSTD_c_enableLongDistanceMatching, 1) && set(ZSTD_c_ldmBucketSizeLog, 1)));
    ok.then_some(c as usize)
}

/// One frame: `src` into `s`'s buffer with its fast or long context.
fn compress(s: &Slot, long: bool, src: &[u8]) -> Option<usize> {
    let c = if long { s.long } else { s.fast };
    // SAFETY: a context of ours, our own output buffer of OUT_LEN bytes, and `src` readable
    // program memory (the program is stopped).
    let n = unsafe {
        zs::ZSTD_compress2(
            c as *mut zs::ZSTD_CCtx,
            s.out as *mut core::ffi::c_void,
            OUT_LEN,
            src.as_ptr().cast(),
            src.len(),
        )
    };
    // SAFETY: a pure function of the code.
    (unsafe { zs::ZSTD_isError(n) } == 0).then_some(n)
}

/// Whether the writer's thread has ended (it always tells us to exit first; this is for a
/// thread that vanished otherwise).
fn writer_gone(s: &Slot) -> bool {
    sys::sys3(
        libc::SYS_tgkill as usize,
        s.pid as usize,
        s.control as usize,
        0,
    ) == Err(Errno(libc::ESRCH))
}

/// A helper: compresses the pieces given to its slot until told to exit.
extern "C" fn helper_main(at: usize) -> ! {
    let s = slot(at);
    let _ = sys::sys3(
        libc::SYS_prctl as usize,
        libc::PR_SET_NAME as usize,
        c"cr-zstd".as_ptr() as usize,
        0,
    );
    // SAFETY: the shared counter in the first slot's page.
    let events = unsafe { &*(s.events as *const AtomicU32) };
    let mut stalled = false;
    loop {
        match s.state.load(Acquire) {
            WORK if !stalled => {
                let (a, n) = (s.addr.load(Relaxed), s.len.load(Relaxed));
                // SAFETY: readable program memory the writer gave us (the program is stopped,
                // its unreadable regions opened for the write).
                let raw = unsafe { core::slice::from_raw_parts(a as *const u8, n) };
                let r =
                    crate::image::compress::pack_by_rule(raw, |long, src| compress(s, long, src));
                s.result.store(r.unwrap_or(0), Relaxed);
                // Not a plain store: the writer may have said EXIT while we packed (it gave
                // up: a failed write), and overwriting that with DONE left us waiting for the
                // next piece while its `Drop` waited 60 s for us to exit.
                if s.state
                    .compare_exchange(WORK, DONE, Release, Acquire)
                    .is_err()
                {
                    break;
                }
                events.fetch_add(1, Release);
                sys::futex_wake_all(events);
                if s.stall {
                    stalled = true;
                    let _ = sys::sys3(
                        libc::SYS_prctl as usize,
                        libc::PR_SET_NAME as usize,
                        c"cr-zstd-stall".as_ptr() as usize,
                        0,
                    );
                }
            }
            EXIT => break,
            st => {
                let _ = sys::futex_wait(&s.state, st, Some(1_000_000_000));
                if s.state.load(Acquire) == st && writer_gone(s) {
                    break;
                }
            }
        }
    }
    loop {
        let _ = sys::raw6(libc::SYS_exit as usize, 0, 0, 0, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ctx_lens`] holds zstd's own estimate at every level it allows, and a static context
    /// made as the helpers make theirs packs the very frames cr_checkpoint's `Packer` makes.
    #[test]
    fn static_contexts_fit_and_make_packers_frames() {
        use zs::ZSTD_cParameter::*;
        for level in 1..=MAX_LEVEL {
            let (f, l) = ctx_lens(level).unwrap();
            for (long, have) in [(false, f), (true, l)] {
                // SAFETY: zstd's own parameter object, freed below.
                let est = unsafe {
                    let p = zs::ZSTD_createCCtxParams();
                    zs::ZSTD_CCtxParams_setParameter(p, ZSTD_c_compressionLevel, level);
                    zs::ZSTD_CCtxParams_setParameter(p, ZSTD_c_checksumFlag, 1);
                    if long {
                        zs::ZSTD_CCtxParams_setParameter(p, ZSTD_c_enableLongDistanceMatching, 1);
                        zs::ZSTD_CCtxParams_setParameter(p, ZSTD_c_ldmBucketSizeLog, 1);
                    }
                    let e = zs::ZSTD_estimateCCtxSize_usingCCtxParams(p);
                    zs::ZSTD_freeCCtxParams(p);
                    e
                };
                assert!(est <= have, "level {level} long {long}: {est} > {have}");
            }
        }
        assert!(ctx_lens(MAX_LEVEL + 1).is_none());
        // The benchmark's pattern (long-distance matching) and text (the fast context).
        let mut pattern = vec![0u8; crate::image::compress::FRAME];
        for (k, w) in pattern.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(0x0101_0101_0101_0101u64 * (k as u64 % 8 + 1)).to_le_bytes());
        }
        let mut text = Vec::new();
        let mut i = 0u64;
        while text.len() < crate::image::compress::FRAME {
            let x = i.wrapping_mul(2654435761);
            text.extend_from_slice(format!("{i:08} w{} n={} ok\n", x % 15, x % 1000).as_bytes());
            i += 1;
        }
        text.truncate(crate::image::compress::FRAME);
        for level in 1..=MAX_LEVEL {
            let (f, l) = ctx_lens(level).unwrap();
            let mut mem = vec![0u64; (OUT_LEN + f + l) / 8];
            let base = mem.as_mut_ptr() as usize;
            let s = Slot {
                state: AtomicU32::new(0),
                tid: AtomicI32::new(0),
                addr: AtomicUsize::new(0),
                len: AtomicUsize::new(0),
                result: AtomicUsize::new(0),
                out: base,
                fast: make_ctx(base + OUT_LEN, f, level, false).unwrap(),
                long: make_ctx(base + OUT_LEN + f, l, level, true).unwrap(),
                events: 0,
                pid: 0,
                control: 0,
                stall: false,
            };
            let mut p = crate::image::compress::Packer::new(level).unwrap();
            for raw in [&pattern[..], &text[..]] {
                let mut want = Vec::new();
                let n = p.pack(raw, &mut want).unwrap();
                let got =
                    crate::image::compress::pack_by_rule(raw, |lg, src| compress(&s, lg, src))
                        .unwrap();
                // SAFETY: the frame just written into our buffer.
                let got = unsafe { core::slice::from_raw_parts(s.out as *const u8, got) };
                assert_eq!(got, &want[..n], "level {level}");
            }
        }
    }
}
