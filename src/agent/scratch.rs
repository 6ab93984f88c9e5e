//! Scratch memory for one checkpoint, mapped before the threads are stopped and left out of the
//! image. It is a shared anonymous mapping so the kernel never merges it with program memory.
//!
//! A child the program forks while the area is mapped (a thread not stopped yet, or a callback
//! that forks: tests/faults.rs `target_forks_during_its_checkpoint`) unmaps its copy in its fork
//! handler ([`forget_in_child`]). It is shared memory the parent's control thread goes on writing
//! (the metadata, the header, the image writer's stack), and the child's agent does not know it
//! for its own: the child's checkpoint saved it as shared memory of the program
//! (`SharedContent`, "/dev/zero (deleted)", 296 MiB of address space), and a tree image written
//! at once, where the parent writes its image while the child hashes and writes the same pages,
//! failed its page data checksum at restart (docs/RELIABILITY.md).
//!
//! A child forked while the area is being mapped (after the `mmap`, before its address is
//! recorded) or unmapped gets [`IN_FLUX`] instead of an address: it looks for a mapping of the
//! area's shape in its `/proc/self/maps` and unmaps that ([`unmap_found`]).

use crate::image::format::{Extent, PAGE};
use core::sync::atomic::{AtomicUsize, Ordering::*};

/// Where the scratch area of the request being served is mapped (0: none; [`IN_FLUX`]: being
/// mapped or unmapped), for a fork child to unmap ([`forget_in_child`]).
#[link_section = ".data1"]
static MAPPED_AT: AtomicUsize = AtomicUsize::new(0);

/// [`MAPPED_AT`] from just before the area's `mmap` until its address is recorded, and from
/// just before its `munmap` until it is gone: a child forked then may or may not have it, and
/// where is not known yet (1: never a page address).
const IN_FLUX: usize = 1;

/// In a restored process (control thread, before the program's threads go): the area of the
/// request the image was taken in was never part of the image, and its address may hold the
/// program's memory now: forgotten, not unmapped.
pub fn forget_restored() {
    MAPPED_AT.store(0, Release);
}

/// In a fork child: unmaps the scratch area of the parent's request in progress (see the
/// module comment). Only a glibc `fork` runs it, never the copy-on-write writer (`clone3`),
/// which shares the area with its parent on purpose.
#[link_section = ".text.hot.libcr_start"]
pub fn forget_in_child() {
    // (Read first, written only when set: a child that execs at once copies no page of ours.)
    if MAPPED_AT.load(Acquire) != 0 {
        let base = MAPPED_AT.swap(0, AcqRel);
        if base == IN_FLUX {
            unmap_found();
        } else if base != 0 {
            sys::munmap(base, TOTAL);
        }
    }
}

/// In a fork child of a parent that was mapping or unmapping its scratch area ([`IN_FLUX`]):
/// unmaps the one mapping of the area's shape in `/proc/self/maps` (shared anonymous, read and
/// write, [`TOTAL`] bytes), if the fork copied it. Two of that shape (one the program's own): none
/// is unmapped. Raw system calls, a buffer on the stack (a fork handler).
#[cold]
fn unmap_found() {
    let Ok(fd) = sys::open(b"/proc/self/maps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return;
    };
    let fd = fd as i32;
    let mut buf = [0u8; 4096];
    let (mut have, mut skip) = (0, false);
    let (mut at, mut found) = (0, 0);
    loop {
        let n = match sys::read(fd, &mut buf[have..]) {
            Err(Errno(libc::EINTR)) => continue,
            r => r.unwrap_or(0),
        };
        have += n;
        let mut from = 0;
        while let Some(i) = buf[from..have].iter().position(|&b| b == b'\n') {
            if let (false, Some(a)) = (skip, scratch_line(&buf[from..from + i])) {
                at = a;
                found += 1;
            }
            skip = false;
            from += i + 1;
        }
        if n == 0 {
            break;
        }
        if from == 0 && have == buf.len() {
            // A line longer than the buffer (a long path): not ours.
            skip = true;
            have = 0;
            continue;
        }
        buf.copy_within(from..have, 0);
        have -= from;
    }
    sys::close(fd);
    if found == 1 {
        sys::munmap(at, TOTAL);
    }
}

/// The start of the mapping on `line` of `/proc/self/maps` when it has the scratch area's shape
/// (see [`unmap_found`]).
fn scratch_line(line: &[u8]) -> Option<usize> {
    let m = super::memory::parse_line(line)?;
    (m.end.wrapping_sub(m.start) == TOTAL as u64
        && m.shared
        && m.prot == (libc::PROT_READ | libc::PROT_WRITE) as u32
        && m.offset == 0
        && m.path == b"/dev/zero (deleted)")
        .then_some(m.start as usize)
}

/// Most files whose contents one image saves.
pub const MAX_SPANS: usize = 1024;

/// One saved file whose contents go into the image's data area after the memory pages: the
/// descriptor it is read through, its size, where its (page-padded) bytes go in the saved-file
/// area and the hash recorded for them.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FileSpan {
    /// The program's descriptor of the file.
    pub fd: i32,
    /// Zero.
    pub _pad: u32,
    /// Bytes of contents.
    pub size: u64,
    /// xxh3-64 of the contents, as recorded in the metadata.
    pub hash: u64,
    /// Offset in the saved-file area.
    pub data_off: u64,
}
use crate::sys::{self, Errno};

/// `n` rounded up to whole pages: every buffer starts page aligned, so the ones written with
/// `O_DIRECT` (header, metadata, trailer) are aligned as direct I/O requires.
const fn pages(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

const MAPS_LEN: usize = pages(8 << 20);
const PAGEMAP_LEN: usize = pages(4096 * 8);
const PROBE_LEN: usize = pages(1 << 20);
/// One `mincore` byte per page of a probe chunk (256 bytes), padded to a page.
const MINCORE_LEN: usize = pages(PROBE_LEN / PAGE);
const EXTENTS_LEN: usize = pages(24 << 20); // a multiple of size_of::<Extent>() (24)
/// Metadata, sockets' queued bytes included (`kinds::socket::MAX_QUEUED` each): address space
/// only, populated as written.
const META_LEN: usize = pages(256 << 20);
const STACK_LEN: usize = pages(1 << 20);
/// Extents of the shared memory a copy-on-write checkpoint copies while the program is stopped.
const PRECOPY_LEN: usize = pages(3 << 20); // a multiple of size_of::<Extent>() (24)
/// Records captured in the stop that a copy-on-write writer appends after the memory regions.
const SIDE_LEN: usize = pages(1 << 20);
/// The copy-on-write writer's arguments and report (shared with the parent).
const WRITER_LEN: usize = PAGE;
/// The copy-on-write writer's stack.
const WSTACK_LEN: usize = pages(1 << 20);
/// Saved files are copied into the image through this buffer (a page multiple, for `O_DIRECT`).
const FILEBUF_LEN: usize = pages(1 << 20);
/// The saved files of one image (`FileSpan`s).
const SPANS_LEN: usize = pages(MAX_SPANS * core::mem::size_of::<FileSpan>());

const MAPS_OFF: usize = 0;
const PAGEMAP_OFF: usize = MAPS_OFF + MAPS_LEN;
const PROBE_OFF: usize = PAGEMAP_OFF + PAGEMAP_LEN;
const MINCORE_OFF: usize = PROBE_OFF + PROBE_LEN;
const EXTENTS_OFF: usize = MINCORE_OFF + MINCORE_LEN;
const HEADER_OFF: usize = EXTENTS_OFF + EXTENTS_LEN;
const TRAILER_OFF: usize = HEADER_OFF + PAGE;
const META_OFF: usize = TRAILER_OFF + PAGE;
const STACK_OFF: usize = META_OFF + META_LEN;
const PRECOPY_OFF: usize = STACK_OFF + STACK_LEN;
const SIDE_OFF: usize = PRECOPY_OFF + PRECOPY_LEN;
const WRITER_OFF: usize = SIDE_OFF + SIDE_LEN;
const WSTACK_OFF: usize = WRITER_OFF + WRITER_LEN;
const FILEBUF_OFF: usize = WSTACK_OFF + WSTACK_LEN;
const SPANS_OFF: usize = FILEBUF_OFF + FILEBUF_LEN;
const TOTAL: usize = SPANS_OFF + SPANS_LEN;

// Every buffer page aligned (direct I/O needs at least 512-byte aligned buffers: a 256-byte
// mincore buffer once put the header, metadata and trailer off alignment, and O_DIRECT was
// dropped for the whole image).
const _: () = assert!(
    MAPS_OFF.is_multiple_of(PAGE)
        && PAGEMAP_OFF.is_multiple_of(PAGE)
        && PROBE_OFF.is_multiple_of(PAGE)
        && MINCORE_OFF.is_multiple_of(PAGE)
        && EXTENTS_OFF.is_multiple_of(PAGE)
        && HEADER_OFF.is_multiple_of(PAGE)
        && TRAILER_OFF.is_multiple_of(PAGE)
        && META_OFF.is_multiple_of(PAGE)
        && STACK_OFF.is_multiple_of(PAGE)
        && PRECOPY_OFF.is_multiple_of(PAGE)
        && SIDE_OFF.is_multiple_of(PAGE)
        && WRITER_OFF.is_multiple_of(PAGE)
        && WSTACK_OFF.is_multiple_of(PAGE)
        && FILEBUF_OFF.is_multiple_of(PAGE)
        && SPANS_OFF.is_multiple_of(PAGE)
        && TOTAL.is_multiple_of(PAGE)
);
const _: () = assert!(EXTENTS_LEN.is_multiple_of(core::mem::size_of::<Extent>()));
const _: () = assert!(PRECOPY_LEN.is_multiple_of(core::mem::size_of::<Extent>()));
const _: () = assert!(MINCORE_LEN >= PROBE_LEN / PAGE);

/// A reserved, lazily populated scratch area.
pub struct Scratch {
    base: usize,
}

impl Scratch {
    /// Maps the area (address space only; pages are populated as they are touched).
    pub fn new() -> Result<Scratch, Errno> {
        // Before the mapping exists: a child forked from now on looks for it (see IN_FLUX).
        MAPPED_AT.store(IN_FLUX, Release);
        let r = sys::mmap(
            0,
            TOTAL,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        MAPPED_AT.store(*r.as_ref().unwrap_or(&0), Release);
        Ok(Scratch { base: r? })
    }

    /// Whether `addr` lies inside the scratch area.
    pub fn contains(&self, addr: u64) -> bool {
        (self.base as u64..(self.base + TOTAL) as u64).contains(&addr)
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes(&self, off: usize, len: usize) -> &mut [u8] {
        // SAFETY: the range lies inside our private mapping; each accessor hands out a distinct
        // sub-range, and only the control thread uses the scratch area.
        unsafe { core::slice::from_raw_parts_mut((self.base + off) as *mut u8, len) }
    }

    /// Buffer for `/proc/self/maps`.
    #[allow(clippy::mut_from_ref)]
    pub fn maps(&self) -> &mut [u8] {
        self.bytes(MAPS_OFF, MAPS_LEN)
    }
    /// Buffer for pagemap entries.
    #[allow(clippy::mut_from_ref)]
    pub fn pagemap(&self) -> &mut [u8] {
        self.bytes(PAGEMAP_OFF, PAGEMAP_LEN)
    }
    /// Buffer for probing shared memory.
    #[allow(clippy::mut_from_ref)]
    pub fn probe(&self) -> &mut [u8] {
        self.bytes(PROBE_OFF, PROBE_LEN)
    }
    /// Buffer for `mincore` results of one probe chunk.
    #[allow(clippy::mut_from_ref)]
    pub fn mincore(&self) -> &mut [u8] {
        self.bytes(MINCORE_OFF, MINCORE_LEN)
    }
    /// Storage for the extent list.
    #[allow(clippy::mut_from_ref)]
    pub fn extents(&self) -> &mut [Extent] {
        let b = self.bytes(EXTENTS_OFF, EXTENTS_LEN);
        bytemuck::cast_slice_mut(b)
    }
    /// The header page.
    #[allow(clippy::mut_from_ref)]
    pub fn header(&self) -> &mut [u8] {
        self.bytes(HEADER_OFF, PAGE)
    }
    /// The trailer page.
    #[allow(clippy::mut_from_ref)]
    pub fn trailer(&self) -> &mut [u8] {
        self.bytes(TRAILER_OFF, PAGE)
    }
    /// The buffer saved files are copied through (page aligned).
    #[allow(clippy::mut_from_ref)]
    pub fn filebuf(&self) -> &mut [u8] {
        self.bytes(FILEBUF_OFF, FILEBUF_LEN)
    }
    /// Storage for the saved files of the image.
    #[allow(clippy::mut_from_ref)]
    pub fn spans(&self) -> &mut [FileSpan] {
        let b = self.bytes(SPANS_OFF, MAX_SPANS * core::mem::size_of::<FileSpan>());
        bytemuck::cast_slice_mut(b)
    }
    /// The metadata buffer (page aligned, zero beyond what is written).
    #[allow(clippy::mut_from_ref)]
    pub fn meta(&self) -> &mut [u8] {
        self.bytes(META_OFF, META_LEN)
    }
    /// Storage for the extents of shared memory copied in the stop (copy-on-write mode).
    #[allow(clippy::mut_from_ref)]
    pub fn precopy(&self) -> &mut [Extent] {
        bytemuck::cast_slice_mut(self.bytes(PRECOPY_OFF, PRECOPY_LEN))
    }
    /// Records captured in the stop that the copy-on-write writer appends (SysV semaphores).
    #[allow(clippy::mut_from_ref)]
    pub fn side(&self) -> &mut [u8] {
        self.bytes(SIDE_OFF, SIDE_LEN)
    }
    /// The page shared with the copy-on-write writer (its arguments and report).
    pub fn writer_page(&self) -> usize {
        self.base + WRITER_OFF
    }
    /// Lowest address and size of the copy-on-write writer's stack.
    pub fn writer_stack(&self) -> (usize, usize) {
        (self.base + WSTACK_OFF, WSTACK_LEN)
    }
}

impl Scratch {
    /// Bytes of the area in memory (`mincore`: its pages are shared memory, populated as they
    /// are touched): what this checkpoint's scratch costs (`agent::deltabuf` leaves room for it
    /// beside the delta buffer).
    pub fn resident(&self) -> u64 {
        resident_at(self.base)
    }

    /// The area's address (for [`resident_at`] once it is no longer borrowed).
    pub fn base(&self) -> usize {
        self.base
    }

    /// Top of the stack the image writer runs on (inside the excluded scratch area).
    pub fn stack_top(&self) -> usize {
        self.base + STACK_OFF + STACK_LEN - 64
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Until it is gone, a child forked meanwhile looks for it (see IN_FLUX).
        let ours = MAPPED_AT
            .compare_exchange(self.base, IN_FLUX, AcqRel, Acquire)
            .is_ok();
        sys::munmap(self.base, TOTAL);
        if ours {
            let _ = MAPPED_AT.compare_exchange(IN_FLUX, 0, AcqRel, Acquire);
        }
    }
}

/// [`Scratch::resident`] of the area at `base` (0 if it is not mapped).
pub fn resident_at(base: usize) -> u64 {
    const CHUNK: usize = 1024 * PAGE;
    let mut vec = [0u8; 1024];
    let mut n = 0u64;
    for off in (0..TOTAL).step_by(CHUNK) {
        let len = CHUNK.min(TOTAL - off);
        let ok = sys::sys3(
            libc::SYS_mincore as usize,
            base + off,
            len,
            vec.as_mut_ptr() as usize,
        )
        .is_ok();
        if ok {
            let pages = len / PAGE;
            n += vec[..pages].iter().filter(|&&b| b & 1 != 0).count() as u64;
        }
    }
    n * PAGE as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `/proc/self/maps` a fork child takes for its parent's scratch area.
    #[test]
    fn scratch_line_matches_only_the_areas_shape() {
        let line = |start: usize, len: usize, perms: &str, off: u64, path: &str| {
            format!(
                "{start:x}-{:x} {perms} {off:08x} 00:01 4242                       {path}",
                start + len
            )
        };
        let at = 0x7f12_3400_0000;
        let zero = "/dev/zero (deleted)";
        let ours = line(at, TOTAL, "rw-s", 0, zero);
        assert_eq!(scratch_line(ours.as_bytes()), Some(at));
        for other in [
            line(at, TOTAL - PAGE, "rw-s", 0, zero),
            line(at, TOTAL, "rw-p", 0, zero),
            line(at, TOTAL, "r--s", 0, zero),
            line(at, TOTAL, "rw-s", 4096, zero),
            line(at, TOTAL, "rw-s", 0, "/memfd:x (deleted)"),
            line(at, TOTAL, "rw-s", 0, ""),
        ] {
            assert_eq!(scratch_line(other.as_bytes()), None, "{other}");
        }
    }

    /// The area has that shape in `/proc/self/maps`, and a fork child that got [`IN_FLUX`]
    /// (forked while the area was being mapped) finds it and unmaps it; the parent keeps it.
    #[test]
    fn a_child_forked_in_flux_unmaps_the_area() {
        let s = Scratch::new().unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let found: Vec<usize> = maps
            .lines()
            .filter_map(|l| scratch_line(l.as_bytes()))
            .collect();
        assert_eq!(found, [s.base()], "{maps}");
        let mapped = |base: usize| {
            let mut v = [0u8; 1];
            // SAFETY: mincore writes one byte per page into `v`.
            unsafe { libc::mincore(base as *mut libc::c_void, PAGE, v.as_mut_ptr()) == 0 }
        };
        MAPPED_AT.store(IN_FLUX, Release);
        // SAFETY: the child makes raw system calls only, then _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            forget_in_child();
            // SAFETY: leaving the child.
            unsafe { libc::_exit(if mapped(s.base()) { 1 } else { 0 }) };
        }
        MAPPED_AT.store(s.base(), Release);
        let mut status = 0;
        // SAFETY: our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(status, 0, "the child still had the parent's scratch area");
        assert!(mapped(s.base()), "the parent lost its scratch area");
    }
}
