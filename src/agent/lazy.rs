//! Memory a lazy restart mapped from its image (`restore::memory`): private mappings of the
//! image file (`RestartInfo::image_dev`/`image_ino`, kept in `resume::INFO`) that stand for the
//! program's anonymous memory.
//!
//! Two things tell such memory from anonymous memory, and both are made right here:
//! - a checkpoint must save all of it by content, touched since the restart or not (pages not
//!   yet faulted in are absent from `pagemap`), and record it as anonymous memory
//!   (`agent::memory`);
//! - `madvise(MADV_DONTNEED)` on a private file mapping brings the file's pages back, where
//!   anonymous memory reads zeros afterwards (allocators such as jemalloc rely on that), and
//!   `MADV_FREE` is refused on file mappings: [`madvise`] first replaces the image-backed parts
//!   of the range with fresh anonymous memory (zero pages, the same protection), which is what
//!   both advices leave behind in anonymous memory;
//! - `mremap(2)` that grows a private file mapping maps the file's next pages into the part it
//!   adds (old bytes of the image, or SIGBUS past its end), where anonymous memory grows by
//!   zero pages: [`mremap`] replaces the image-backed part of what it added with fresh
//!   anonymous memory before it returns.
//!
//! - glibc's `realloc` grows a large (mmapped) block with its internal `__mremap`, which no
//!   preload can see: grown over an image-backed block it read the image's next bytes, or got
//!   SIGBUS past the file's end. The preload stub's `realloc` (`stubs/stub.rs`) asks
//!   [`cri_lazily_mapped`] and, in a lazily restored process, grows such blocks by allocating,
//!   copying and freeing instead. A program linked with libcr (no stub) does not get this.
//!
//! Other calls that bypass the C library's `madvise` and `mremap` (raw system calls) are not
//! seen.

use super::memory::{parse_line, MapLine};
use crate::sys;
use core::sync::atomic::Ordering::Relaxed;
use libc::{c_int, c_void, size_t};

/// Device and inode of the image this process was lazily restored from ((0, 0): none).
pub fn image_id() -> (u64, u64) {
    let info = &super::resume::INFO;
    let at = crate::protocol::RESTART_INFO_IMAGE_DEV;
    (
        info[at].load(Relaxed) as u64,
        info[at + 1].load(Relaxed) as u64,
    )
}

/// The `k`th image of a delta's chain the restart mapped pages from ((0, 0): none).
fn chain_id(k: usize) -> (u64, u64) {
    let info = &super::resume::INFO;
    let at = crate::protocol::RESTART_INFO_CHAIN_IDS + 2 * k;
    (
        info[at].load(Relaxed) as u64,
        info[at + 1].load(Relaxed) as u64,
    )
}

/// Whether a lazy restart mapped anything from an image into this process.
fn any_backed() -> bool {
    image_id().1 != 0 || chain_id(0).1 != 0
}

/// Whether a lazy restart mapped memory of this process from an image (1) or not (0); asked by
/// the preload stub's `realloc` (see the module documentation).
#[no_mangle]
pub extern "C" fn cri_lazily_mapped() -> c_int {
    c_int::from(any_backed())
}

/// Whether `m` is a private mapping of the image this process was lazily restored from (or of
/// an image of its chain, for a delta).
pub fn image_backed(m: &MapLine) -> bool {
    if m.shared || m.inode == 0 {
        return false;
    }
    let dev = libc::makedev(m.major, m.minor);
    let is = |(d, i): (u64, u64)| i != 0 && m.inode == i && dev == d;
    is(image_id()) || (0..crate::protocol::RESTART_CHAIN_IDS).any(|k| is(chain_id(k)))
}

/// Replaces the image-backed parts of `[start, end)` by anonymous zero pages with the same
/// protection (allocation-free: a fixed list, raw system calls).
fn unback(start: u64, end: u64) {
    // Mappings are not changed while maps is read: collect, replace, and scan again while the
    // list was full.
    loop {
        let mut list = [(0u64, 0u64, 0u32); 64];
        let mut n = 0;
        let _ = crate::kinds::each_line(b"/proc/self/maps\0", |line| {
            if let Some(m) = parse_line(line) {
                if m.start < end && start < m.end && image_backed(&m) && n < list.len() {
                    list[n] = (m.start.max(start), m.end.min(end), m.prot);
                    n += 1;
                }
            }
            Ok(())
        });
        for &(s, e, prot) in &list[..n] {
            let _ = sys::mmap(
                s as usize,
                (e - s) as usize,
                prot as i32,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
        }
        if n < list.len() {
            return;
        }
    }
}

/// `mremap(2)`, with anonymous-memory semantics kept for memory a lazy restart mapped from its
/// image: the part a growing call adds reads as zero (see the module documentation). Otherwise
/// exactly the system call. `new_address` is only read with `MREMAP_FIXED` (the C prototype is
/// variadic; on x86-64 and aarch64 Linux the fifth argument is passed as a fixed one would be).
///
/// # Safety
/// As `mremap(2)`: the caller owns the mapping it changes.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old_address: *mut c_void,
    old_size: size_t,
    new_size: size_t,
    flags: c_int,
    new_address: *mut c_void,
) -> *mut c_void {
    const MREMAP_FIXED: c_int = 2;
    let new_address = if flags & MREMAP_FIXED != 0 {
        new_address as usize
    } else {
        0
    };
    match sys::sys6(
        libc::SYS_mremap as usize,
        old_address as usize,
        old_size,
        new_size,
        flags as u32 as usize,
        new_address,
        0,
    ) {
        Ok(at) => {
            if new_size > old_size && old_size > 0 && any_backed() {
                unback((at + old_size) as u64, (at + new_size) as u64);
            }
            at as *mut c_void
        }
        Err(e) => {
            // SAFETY: __errno_location returns this thread's errno.
            unsafe { *libc::__errno_location() = e.0 };
            libc::MAP_FAILED
        }
    }
}

/// `madvise(2)`, with anonymous-memory semantics kept for memory a lazy restart mapped from
/// its image (see the module documentation). Otherwise exactly the system call.
///
/// # Safety
/// As `madvise(2)`: the caller owns the range it gives advice on.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    const MADV_DONTNEED_LOCKED: c_int = 24;
    let discards = matches!(
        advice,
        libc::MADV_DONTNEED | libc::MADV_FREE | MADV_DONTNEED_LOCKED
    );
    if discards && any_backed() && len > 0 {
        let start = addr as u64;
        unback(start, start.saturating_add(len as u64));
    }
    match sys::sys3(
        libc::SYS_madvise as usize,
        addr as usize,
        len,
        advice as usize,
    ) {
        Ok(_) => 0,
        Err(e) => {
            // SAFETY: __errno_location returns this thread's errno.
            unsafe { *libc::__errno_location() = e.0 };
            -1
        }
    }
}
