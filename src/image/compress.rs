//! Compressed images (`cr_checkpoint --compress`): the tool side turns the raw image stream the
//! agents write (a tree manifest, then images back to back) into compressed images, one zstd
//! frame per piece of an extent run, compressed by a thread per core; and the reader side
//! decompresses a frame. See docs/IMAGE-FORMAT.md "Compressed images".
//!
//! The agents are not involved: they write raw images to a pipe (allocation-free, as ever), and
//! `cr_checkpoint`, a normal process, compresses. (A split image's agent hands the pieces for
//! the compressor over by index only where it may: they are read from its memory here, [`Pull`],
//! `protocol::FLAG_ZPULL`; or, at levels 1-4, compresses them itself on helper threads with
//! static contexts, `agent::zpack`, `protocol::FLAG_ZPACK`: its frames are stored as they come.)

use super::format::*;
use super::tree::TREE_MAGIC;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Raw bytes per frame at most (frames never cross an extent).
pub const FRAME: usize = 1 << 20;
/// Bytes of a frame compressed first to tell incompressible data (stored raw without
/// compressing the rest).
const SAMPLE: usize = 16 << 10;
/// The level of a bare `--compress` (zstd's fastest level: it keeps up with the disk).
pub const DEFAULT_LEVEL: i32 = 1;

/// The levels `--compress=LEVEL` takes.
pub fn level_range() -> std::ops::RangeInclusive<i32> {
    1..=*zstd::compression_level_range().end()
}

/// Bytes a `--compress` checkpoint's agent samples from the middle of each piece of its page
/// data (see [`for_each_piece`], [`looks_incompressible`]) to tell the pieces it writes to the
/// file itself from those it pipes to the compressor (~4 µs a piece: ~4 ms per GiB).
pub const PIECE_SAMPLE: usize = 1024;

/// Calls `f(addr, file_off, len)` for every piece of the page data of `extents` in file order:
/// each extent cut into pieces of [`FRAME`] bytes from its start (the last one shorter). One
/// frame per piece; the agent's split plan (`REC_ZPLAN`) has one bit per piece. No allocation.
pub fn for_each_piece(extents: &[Extent], mut f: impl FnMut(u64, u64, u64)) {
    for e in extents {
        let mut o = 0;
        while o < e.len {
            let n = (e.len - o).min(FRAME as u64);
            f(e.addr + o, e.file_off + o, n);
            o += n;
        }
    }
}

/// The length of a compressed image's metadata made from a raw image's whose records before
/// `REC_END` (and without `REC_ZPLAN`) take `records` bytes, with `npieces` frames: the records,
/// `REC_ZFRAMES`, `REC_ZORIGIN`, `REC_END`. The agent of a split image needs it to know where
/// the data area will start.
pub const fn compressed_meta_len(records: usize, npieces: usize) -> usize {
    records
        + 8
        + align8(npieces * core::mem::size_of::<ZFrame>())
        + 8
        + core::mem::size_of::<ZOrigin>()
        + 8
}

/// Whether `s` (a sample of page data, at most 64 KiB) looks incompressible to zstd's fast
/// levels: its byte entropy is at least 7 bits (literal coding saves under 1/8) and fewer than
/// 1/8 of its bytes repeat an earlier 8-byte string of the sample (few matches). No allocation:
/// the agent calls it on its own pages while the program is stopped.
pub fn looks_incompressible(s: &[u8]) -> bool {
    if s.len() < 64 || s.len() > 1 << 16 {
        return false;
    }
    // Collision entropy (-log2 of the sum of p², never above Shannon's) of at least 7 bits: the
    // sum of the squared counts at most n²/128 (random bytes: about n²/256 + n).
    let mut hist = [0u32; 256];
    for &b in s {
        hist[b as usize] += 1;
    }
    let squares: u64 = hist.iter().map(|&c| c as u64 * c as u64).sum();
    let n = s.len() as u64;
    if squares * 128 > n * n {
        return false;
    }
    // Repeats: positions (+1) of 8-byte strings by a 12-bit hash; a match skips its 8 bytes.
    let mut seen = [0u16; 4096];
    let word = |i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or([0; 8]));
    let mut covered = 0usize;
    let mut i = 0usize;
    while i + 8 <= s.len() {
        let w = word(i);
        let h = (w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize;
        let j = seen[h] as usize;
        seen[h] = (i + 1) as u16;
        if j > 0 && word(j - 1) == w {
            covered += 8;
            i += 8;
        } else {
            i += 1;
        }
    }
    covered * 8 < s.len()
}

/// A decompression context and a buffer for the stored bytes, made once and reused for every
/// frame a thread decompresses (a new context and buffer per frame cost fresh memory each).
pub struct Inflater {
    d: zstd::bulk::Decompressor<'static>,
    src: Vec<u8>,
}

impl Inflater {
    /// A new context.
    pub fn new() -> Result<Inflater, String> {
        Ok(Inflater {
            d: zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?,
            src: Vec::new(),
        })
    }

    /// Reads the zstd frame of `len` bytes at `at` in `file` and decompresses it into `out`,
    /// which it must fill exactly (its content checksum is checked too).
    pub fn frame(
        &mut self,
        file: &File,
        at: u64,
        len: usize,
        out: &mut [u8],
    ) -> Result<(), FrameError> {
        self.src.resize(len, 0);
        file.read_exact_at(&mut self.src, at)
            .map_err(FrameError::Io)?;
        let n = self
            .d
            .decompress_to_buffer(&self.src[..], out)
            .map_err(|e| FrameError::Bad(format!("cannot decompress: {e}")))?;
        if n != out.len() {
            return Err(FrameError::Bad(format!(
                "{n} bytes decompressed, {} expected",
                out.len()
            )));
        }
        Ok(())
    }
}

/// Why [`Inflater::frame`] failed.
#[derive(Debug)]
pub enum FrameError {
    /// Reading the stored bytes.
    Io(std::io::Error),
    /// The frame does not decompress to what it should.
    Bad(String),
}

/// What a compression did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Page data bytes read (raw).
    pub raw: u64,
    /// Page data bytes stored.
    pub stored: u64,
    /// Frames stored compressed.
    pub zstd_frames: u64,
    /// Frames stored raw (incompressible, or written raw by the agent).
    pub raw_frames: u64,
    /// Of [`Stats::raw_frames`], the pieces a split image's agent wrote itself (they looked
    /// incompressible, or the compressor was behind).
    pub agent_frames: u64,
    /// A split image's gap closed between the agent's pieces and the compressed ones (bytes).
    pub gap: u64,
    /// How: [`GAP_COLLAPSED`] or [`GAP_COPIED`].
    pub gap_closed: u8,
    /// Images compressed.
    pub images: u64,
    /// The file was written with `O_DIRECT` (at least at first: a refused write drops it).
    pub direct: bool,
    /// Pieces read from the process's memory ([`Pull`], `protocol::FLAG_ZPULL`).
    pub pulled: u64,
    /// The errno of a refused first pull (0: none; the pieces came through the pipe then).
    pub pull_refused: i32,
    /// Frames the agent compressed itself (`ZPLAN_PACKED`, `protocol::FLAG_ZPACK`), stored as
    /// they came.
    pub packed: u64,
}

/// `--compress` to a file (`protocol::FLAG_ZPULL`): the pieces a split image's agent hands
/// over by index (`ZPLAN_PULL`) are read from the stopped process's memory here
/// (`process_vm_readv`, the same rule as the agent's own access check: same user and
/// dumpable, or root), each acknowledged on `ack` (`protocol::ZPULL_DONE`) once copied; the
/// first one refused is answered `protocol::ZPULL_REFUSED` and its bytes read from the stream
/// after all (and the later pieces' too: the agent pipes them).
pub struct Pull {
    /// The process (its pid as we see it: `SO_PEERCRED` of its control connection); set by
    /// the cut before its request is sent.
    pub pid: Arc<std::sync::atomic::AtomicI32>,
    /// The write end of the acknowledgement pipe (closed when the compression ends, so an
    /// agent waiting for a pull that never comes sees it hang up).
    pub ack: std::os::fd::OwnedFd,
    /// `CR_COMPRESS_PULL` in the environment (tests): [`PULL_REFUSE`], [`PULL_STALL`] or 0.
    pub knob: u8,
}

/// [`Pull::knob`] `CR_COMPRESS_PULL=refuse`: the first pull fails as if the kernel refused it
/// (`EPERM`), so the refused-pull path can be tested.
pub const PULL_REFUSE: u8 = 1;
/// [`Pull::knob`] `CR_COMPRESS_PULL=stall`: after the first piece nothing more is pulled (the
/// agent waits; a test kills us then). Says `pulls stalled` on standard output once stalled.
pub const PULL_STALL: u8 = 2;

impl Pull {
    /// The knob `CR_COMPRESS_PULL` sets (see [`Pull::knob`]).
    pub fn knob_from_env() -> u8 {
        match std::env::var("CR_COMPRESS_PULL").as_deref() {
            Ok("refuse") => PULL_REFUSE,
            Ok("stall") => PULL_STALL,
            _ => 0,
        }
    }

    /// Copies `buf.len()` bytes at `addr` of the process into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let pid = self.pid.load(std::sync::atomic::Ordering::Acquire);
        let mut done = 0usize;
        while done < buf.len() {
            let local = libc::iovec {
                iov_base: buf[done..].as_mut_ptr().cast(),
                iov_len: buf.len() - done,
            };
            let remote = libc::iovec {
                iov_base: (addr + done as u64) as usize as *mut libc::c_void,
                iov_len: buf.len() - done,
            };
            // SAFETY: one local iovec over our own buffer; the remote one is only read by
            // the kernel, in the other process.
            let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::EFAULT));
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Answers the agent: `byte` on the acknowledgement pipe.
    fn answer(&self, byte: u8) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: a one-byte write from a local.
            let n = unsafe { libc::write(self.ack.as_raw_fd(), (&byte as *const u8).cast(), 1) };
            if n == 1 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("cannot answer the agent's pull: {e}"));
            }
        }
    }
}

/// The source of the raw stream: read until end of file.
pub trait Source {
    /// Reads exactly `buf.len()` bytes; `Ok(false)` at a clean end of the stream before any.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, String>;
}

/// Reads exactly `buf.len()` bytes with `read`, asking `more` before each read whether the
/// stream goes on (`false`: it ended there); `Ok(false)` at a clean end before any byte.
fn fill_exact(
    buf: &mut [u8],
    mut more: impl FnMut() -> Result<bool, String>,
    mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> Result<bool, String> {
    let mut done = 0;
    while done < buf.len() {
        let got = if more()? {
            read(&mut buf[done..])
        } else {
            Ok(0)
        };
        match got {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err("the image stream ended inside an image".into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the image stream: {e}")),
        }
    }
    Ok(true)
}

impl<R: Read> Source for R {
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, String> {
        fill_exact(buf, || Ok(true), |b| self.read(b))
    }
}

/// A pipe the agents write into: the stream ends where an image ends and the pipe is empty
/// once `done` is set (every agent has replied, so every byte is in the pipe), or at end of
/// file. The agents keep their descriptors until they are released, after the commit.
pub struct PipeSource {
    /// The read end.
    pub file: File,
    /// Set once every image is in the pipe.
    pub done: Arc<std::sync::atomic::AtomicBool>,
    /// An eventfd written once `done` is set ([`PipeSource::wake`]): the reader waits on it
    /// with the pipe, so the end of the stream is seen at once (a 100 ms poll added 0-100 ms
    /// to every `--compress` checkpoint, even one written raw by its agent).
    pub wake: Arc<std::os::fd::OwnedFd>,
}

impl PipeSource {
    /// A new eventfd for [`PipeSource::wake`].
    pub fn new_wake() -> std::io::Result<Arc<std::os::fd::OwnedFd>> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor is new and ours.
        Ok(Arc::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Sets `done` and wakes the reader.
    pub fn finish(done: &std::sync::atomic::AtomicBool, wake: &std::os::fd::OwnedFd) {
        use std::os::fd::AsRawFd;
        done.store(true, std::sync::atomic::Ordering::Release);
        let one = 1u64;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits until the pipe is readable (`Ok(true)`) or, once `done`, empty (`Ok(false)`).
    fn wait(&self) -> Result<bool, String> {
        use std::os::unix::io::AsRawFd;
        let mut p = [
            libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            let finished = self.done.load(std::sync::atomic::Ordering::Acquire);
            // Once finished only the pipe is asked (the eventfd stays readable).
            let (ms, nfds) = if finished { (0, 1) } else { (1000, 2) };
            // SAFETY: `nfds` valid pollfds.
            let n = unsafe { libc::poll(p.as_mut_ptr(), nfds, ms) };
            if n > 0 && p[0].revents != 0 {
                return Ok(true);
            }
            if n > 0 {
                continue;
            }
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return Err(format!(
                    "waiting for the image stream: {}",
                    std::io::Error::last_os_error()
                ));
            }
            if n == 0 && finished {
                return Ok(false);
            }
        }
    }
}

impl Source for PipeSource {
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, String> {
        let this = &*self;
        fill_exact(buf, || this.wait(), |b| (&this.file).read(b))
    }
}

fn need(src: &mut dyn Source, buf: &mut [u8]) -> Result<(), String> {
    if src.fill(buf)? {
        Ok(())
    } else {
        Err("the image stream ended inside an image".into())
    }
}

/// Writes `bytes` at `at`; a descriptor in `O_DIRECT` mode that refuses the buffer (`EINVAL`:
/// not aligned) is switched to buffered writes and the write retried.
fn put(out: &File, bytes: &[u8], at: u64) -> Result<(), String> {
    match out.write_all_at(bytes, at) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && set_direct(out, false) => {
            out.write_all_at(bytes, at)
        }
        r => r,
    }
    .map_err(|e| format!("cannot write the compressed image: {e}"))
}

/// [`put`] through a page-aligned copy of `bytes` (a page multiple at a page-aligned offset).
fn put_aligned(out: &File, bytes: &[u8], at: u64) -> Result<(), String> {
    let mut buf = vec![0u8; bytes.len() + PAGE];
    let start = buf.as_ptr().align_offset(PAGE);
    buf[start..start + bytes.len()].copy_from_slice(bytes);
    put(out, &buf[start..start + bytes.len()], at)
}

/// Turns `O_DIRECT` on or off for `out`; returns whether it was changed.
fn set_direct(out: &File, on: bool) -> bool {
    use std::os::unix::io::AsRawFd;
    let fd = out.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on our own descriptor.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 || (fl & libc::O_DIRECT != 0) == on {
        return false;
    }
    let new = if on {
        fl | libc::O_DIRECT
    } else {
        fl & !libc::O_DIRECT
    };
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFL, new) == 0 }
}

/// The data area written front to back through a page-aligned buffer, so that a file in
/// `O_DIRECT` mode takes it without first-touching page cache (as the agent writes raw images).
struct SeqWriter<'a> {
    out: &'a File,
    /// File offset of the buffer's first byte (page aligned).
    at: u64,
    buf: Vec<u8>,
    /// Index of the first page-aligned byte of `buf`.
    start: usize,
    len: usize,
}

const SEQ_BUF: usize = 8 << 20;

impl<'a> SeqWriter<'a> {
    fn new(out: &'a File, at: u64) -> Self {
        let buf = vec![0u8; SEQ_BUF + PAGE];
        let start = buf.as_ptr().align_offset(PAGE);
        SeqWriter {
            out,
            at,
            buf,
            start,
            len: 0,
        }
    }

    /// File offset of the next byte.
    fn pos(&self) -> u64 {
        self.at + self.len as u64
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let n = bytes.len().min(SEQ_BUF - self.len);
            let s = self.start + self.len;
            self.buf[s..s + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == SEQ_BUF {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Zeros up to the next page boundary.
    fn pad(&mut self) -> Result<(), String> {
        let n = (page_align(self.pos()) - self.pos()) as usize;
        self.push(&[0u8; PAGE][..n])
    }

    /// Writes what is buffered (a page multiple: call [`SeqWriter::pad`] first at the end).
    fn flush(&mut self) -> Result<(), String> {
        put(
            self.out,
            &self.buf[self.start..self.start + self.len],
            self.at,
        )?;
        self.at += self.len as u64;
        self.len = 0;
        Ok(())
    }
}

/// [`Stats::gap_closed`]: `fallocate(FALLOC_FL_COLLAPSE_RANGE)` took the gap out of the file.
pub const GAP_COLLAPSED: u8 = 1;
/// [`Stats::gap_closed`]: the file system cannot collapse a range: the compressed pieces were
/// copied down.
pub const GAP_COPIED: u8 = 2;

/// A split image's compressed pieces, written back from the end of the space its raw page data
/// would take (`end`) in blocks of up to [`SEQ_BUF`] bytes (each a page multiple, its frames
/// packed front to back in it, a raw frame page aligned), so that they never meet the agent's
/// pieces written forward from the data area's start, whatever their number.
struct BackWriter<'a> {
    out: &'a File,
    /// File offset of the lowest byte written so far (page aligned).
    end: u64,
    /// The data area's start (frames' `stored_off` are relative to it).
    data_at: u64,
    buf: Vec<u8>,
    start: usize,
    len: usize,
    /// Frames in the buffer, `stored_off` relative to it.
    pending: Vec<(usize, ZFrame)>,
    /// Every piece's frame once written, by piece.
    placed: Vec<Option<ZFrame>>,
}

impl<'a> BackWriter<'a> {
    fn new(out: &'a File, end: u64, data_at: u64, npieces: usize) -> Self {
        BackWriter {
            out,
            end,
            data_at,
            buf: Vec::new(),
            start: 0,
            len: 0,
            pending: Vec::new(),
            placed: vec![None; npieces],
        }
    }

    /// Adds piece `seq`'s frame `f` (its bytes `bytes`).
    fn push(&mut self, seq: usize, mut f: ZFrame, bytes: &[u8]) -> Result<(), String> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; SEQ_BUF + PAGE];
            self.start = self.buf.as_ptr().align_offset(PAGE);
        }
        let raw = f.method == ZFRAME_RAW;
        let at = |len: usize| {
            if raw {
                page_align(len as u64) as usize
            } else {
                len
            }
        };
        if at(self.len) + bytes.len() > SEQ_BUF {
            self.flush()?;
        }
        let from = at(self.len);
        self.buf[self.start + self.len..self.start + from].fill(0);
        self.buf[self.start + from..self.start + from + bytes.len()].copy_from_slice(bytes);
        f.stored_off = from as u64;
        self.pending.push((seq, f));
        self.len = from + bytes.len();
        Ok(())
    }

    /// Writes the buffer (zero padded to a page multiple) below what is written.
    fn flush(&mut self) -> Result<(), String> {
        if self.len == 0 {
            return Ok(());
        }
        let n = page_align(self.len as u64) as usize;
        self.buf[self.start + self.len..self.start + n].fill(0);
        self.end -= n as u64;
        put(self.out, &self.buf[self.start..self.start + n], self.end)?;
        for (seq, mut f) in self.pending.drain(..) {
            f.stored_off += self.end - self.data_at;
            self.placed[seq] = Some(f);
        }
        self.len = 0;
        Ok(())
    }
}

/// Closes a split image's gap: the `len` bytes at `from` (its compressed pieces) end up at `to`
/// (the end of the agent's pieces), and the file is `from - to` shorter. Collapsed out of the
/// file where the file system can (ext4, XFS: no data moves), else copied down.
fn close_gap(out: &File, to: u64, from: u64, len: u64) -> Result<u8, String> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fallocate on our own descriptor; page-aligned offsets.
    let r = unsafe {
        libc::fallocate(
            out.as_raw_fd(),
            libc::FALLOC_FL_COLLAPSE_RANGE,
            to as i64,
            (from - to) as i64,
        )
    };
    if r == 0 {
        return Ok(GAP_COLLAPSED);
    }
    // (The destination is open for writing only: read through a descriptor of our own.)
    let back = File::open(format!("/proc/self/fd/{}", out.as_raw_fd()))
        .map_err(|e| format!("cannot read the compressed image back: {e}"))?;
    let mut buf = vec![0u8; (len as usize).min(SEQ_BUF) + PAGE];
    let start = buf.as_ptr().align_offset(PAGE);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(SEQ_BUF as u64) as usize;
        let b = &mut buf[start..start + n];
        back.read_exact_at(b, from + done)
            .map_err(|e| format!("cannot read the compressed image back: {e}"))?;
        put(out, &buf[start..start + n], to + done)?;
        done += n as u64;
    }
    Ok(GAP_COPIED)
}

/// A compressed piece (`packed[..n]`), or the raw bytes back when they did not compress.
struct Done {
    /// Its place in the stream (the writer takes them in that order).
    k: usize,
    /// The piece.
    seq: usize,
    raw: Vec<u8>,
    packed: Vec<u8>,
    n: Option<usize>,
    /// The piece could not be pulled from the process.
    err: Option<String>,
    /// Compressed by the agent (`ZPLAN_PACKED`): `packed[..n]` is the frame, `raw` empty; the
    /// frame's bytes count in the stream's hash.
    pre: bool,
}

/// A compression thread's zstd contexts, made once and reused for every frame.
pub(crate) struct Packer {
    /// `level`, content checksum on.
    fast: zstd::bulk::Compressor<'static>,
    /// The same with long-distance matching: for frames whose sample compresses very well.
    long: zstd::bulk::Compressor<'static>,
}

/// A sample that compresses better than 1/`LONG_RATIO` picks [`Packer::long`].
const LONG_RATIO: usize = 10;

impl Packer {
    pub(crate) fn new(level: i32) -> Option<Packer> {
        use zstd::zstd_safe::CParameter;
        let mut fast = zstd::bulk::Compressor::new(level).ok()?;
        fast.set_parameter(CParameter::ChecksumFlag(true)).ok()?;
        let mut long = zstd::bulk::Compressor::new(level).ok()?;
        long.set_parameter(CParameter::ChecksumFlag(true)).ok()?;
        long.set_parameter(CParameter::EnableLongDistanceMatching(true))
            .ok()?;
        // One entry per hash bucket instead of zstd's default 8: on such data every entry holds
        // the same match, and scanning fewer halves long-distance matching's time (measured:
        // 512 MiB of the benchmark's pattern 0.46 s -> 0.27 s of CPU, the same size).
        long.set_parameter(CParameter::LdmBucketSizeLog(1)).ok()?;
        Some(Packer { fast, long })
    }

    /// Compresses `raw` into `out` by [`pack_by_rule`].
    pub(crate) fn pack(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let bound = zstd::zstd_safe::compress_bound(raw.len());
        out.clear();
        out.reserve(bound);
        let (fast, long) = (&mut self.fast, &mut self.long);
        pack_by_rule(raw, |l, src| {
            out.clear();
            let c = if l { &mut *long } else { &mut *fast };
            c.compress_to_buffer(src, out).ok()
        })
    }
}

/// The rule both compressors follow (cr_checkpoint's [`Packer`] and the agent's helpers,
/// `agent::zpack`): `z(long, src)` compresses `src` with the fast context or (`long`) the one
/// with long-distance matching and returns the frame's length. `None`: store `raw` raw, as a
/// sample shows it incompressible (a 16 KiB sample from the middle of the piece, compressed
/// first, saves less than 1/8) or the frame saves less than 1/16. A sample that compresses
/// more than [`LONG_RATIO`] times (long runs of a short pattern) has the frame compressed with
/// long-distance matching: zstd's fast levels match such data a few bytes at a time (about
/// 20:1 at 0.3 GB/s), long-distance matching in whole runs (thousands to one, several times
/// faster). No allocation, no panic (the agent's helpers call it in the stop).
pub fn pack_by_rule(raw: &[u8], mut z: impl FnMut(bool, &[u8]) -> Option<usize>) -> Option<usize> {
    let mut long = false;
    if raw.len() > 4 * SAMPLE {
        // The middle of the frame: its start is often a header of sorts.
        let s = raw.get(raw.len() / 2 - SAMPLE / 2..raw.len() / 2 + SAMPLE / 2)?;
        let n = z(false, s)?;
        if n > SAMPLE - SAMPLE / 8 {
            return None;
        }
        long = n < SAMPLE / LONG_RATIO;
    }
    let n = z(long, raw)?;
    (n < raw.len() - raw.len() / 16).then_some(n)
}

/// Checks a frame the agent compressed (`ZPLAN_PACKED`) for a piece of `raw_len` bytes: one
/// whole zstd frame of that content size, with its content checksum (what restart checks).
fn check_packed(frame: &[u8], raw_len: u64) -> Result<(), &'static str> {
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        _ => return Err("not one whole zstd frame"),
    }
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n == raw_len => {}
        _ => return Err("its content size is not the piece's"),
    }
    // The frame header descriptor (after the 4-byte magic): Content_Checksum_flag, bit 2.
    if frame.get(4).is_none_or(|d| d & 4 == 0) {
        return Err("no content checksum");
    }
    Ok(())
}

/// Reads the raw image stream from `src` and writes it, each image's page data compressed, to
/// `out` from offset 0 (positioned writes). `threads` compress at once.
pub fn compress_stream(
    src: &mut dyn Source,
    out: &File,
    level: i32,
    threads: usize,
    pull: Option<&Pull>,
) -> Result<Stats, String> {
    let mut stats = Stats::default();
    let mut at = 0u64;
    let mut page = vec![0u8; PAGE];
    // Direct I/O where the file system takes it (every piece is page aligned); else buffered.
    stats.direct = set_direct(out, true);
    loop {
        if !src.fill(&mut page)? {
            return Ok(stats);
        }
        if page[..8] == TREE_MAGIC {
            // A manifest: copied as it is (it holds no image offsets).
            let len = u64::from_le_bytes(page[40..48].try_into().unwrap_or([0; 8]));
            if len < PAGE as u64 || !len.is_multiple_of(PAGE as u64) || len > 1 << 30 {
                return Err("bad tree manifest in the image stream".into());
            }
            let mut rest = vec![0u8; len as usize - PAGE];
            need(src, &mut rest)?;
            put_aligned(out, &page, at)?;
            put_aligned(out, &rest, at + PAGE as u64)?;
            at += len;
            continue;
        }
        if page[..8] != MAGIC {
            return Err("the image stream holds something that is not an image".into());
        }
        at += one_image(src, out, at, &page, level, threads, pull, &mut stats)?;
        stats.images += 1;
    }
}

/// Compresses one image whose header page is `hpage`; returns its compressed length.
#[allow(clippy::too_many_arguments)]
fn one_image(
    src: &mut dyn Source,
    out: &File,
    base: u64,
    hpage: &[u8],
    level: i32,
    threads: usize,
    pull: Option<&Pull>,
    stats: &mut Stats,
) -> Result<u64, String> {
    let bad = |m: &str| Err(format!("bad image in the stream: {m}"));
    let hsize = core::mem::size_of::<FileHeader>();
    let mut hdr: FileHeader = bytemuck::pod_read_unaligned(&hpage[..hsize]);
    if page_hash(hpage, hsize) != hdr.header_hash {
        return bad("header checksum");
    }
    if hdr.meta_offset != PAGE as u64
        || hdr.data_offset < PAGE as u64
        || hdr.data_offset - PAGE as u64 > 1 << 30
        || hdr.meta_len > hdr.data_offset - PAGE as u64
        || hdr.meta_len < 8
    {
        return bad("header offsets");
    }
    let mut meta = vec![0u8; (hdr.data_offset - PAGE as u64) as usize];
    need(src, &mut meta)?;
    meta.truncate(hdr.meta_len as usize);
    if hash(&meta) != hdr.meta_hash {
        return bad("metadata checksum");
    }
    // The extents, in order; the last record must be REC_END. A split image's plan
    // (`REC_ZPLAN`) is taken out of the records kept.
    let mut extents: Vec<Extent> = Vec::new();
    let mut pos = 0usize;
    let mut last = (0u32, 0usize);
    let mut new_meta = Vec::with_capacity(meta.len());
    let mut plan: Option<(ZPlan, Vec<u8>)> = None;
    while pos + 8 <= meta.len() {
        let rh: RecordHeader = bytemuck::pod_read_unaligned(&meta[pos..pos + 8]);
        let body = meta.get(pos + 8..pos + 8 + rh.len as usize);
        let Some(body) = body else {
            return bad("record runs past metadata");
        };
        if rh.kind == REC_EXTENTS {
            for c in body.chunks_exact(core::mem::size_of::<Extent>()) {
                extents.push(bytemuck::pod_read_unaligned(c));
            }
        }
        if rh.kind == REC_ZFRAMES {
            return bad("already compressed");
        }
        let end = (pos + 8 + align8(rh.len as usize)).min(meta.len());
        if rh.kind == REC_ZPLAN {
            let Some(head) = body.get(..core::mem::size_of::<ZPlan>()) else {
                return bad("short split plan");
            };
            let bits = body[head.len()..].to_vec();
            plan = Some((bytemuck::pod_read_unaligned(head), bits));
        } else if rh.kind != REC_END {
            new_meta.extend_from_slice(&meta[pos..end]);
        }
        last = (rh.kind, pos);
        pos += 8 + align8(rh.len as usize);
        if rh.kind == REC_END {
            break;
        }
    }
    if last.0 != REC_END {
        return bad("no end record");
    }
    let mem_len: u64 = extents.iter().map(|e| e.len).sum();
    if mem_len > hdr.data_len {
        return bad("extents longer than the data");
    }
    // Pieces: every extent cut into frames of at most FRAME bytes.
    let mut pieces: Vec<(u64, u32)> = Vec::new();
    // (Where each piece is in the process's memory: for pulls.)
    let mut addrs: Vec<u64> = Vec::new();
    for_each_piece(&extents, |addr, off, n| {
        pieces.push((off, n as u32));
        addrs.push(addr);
    });
    // A split image: the pieces that looked incompressible to the agent (`sampled[i]`); it
    // wrote those, and any other not in the stream, back to back from the data area on.
    let split = plan.is_some();
    let mut sampled = vec![false; pieces.len()];
    if let Some((p, bits)) = &plan {
        if p.npieces != pieces.len() as u64 || (bits.len() as u64) < p.npieces.div_ceil(8) {
            return bad("split plan does not match the extents");
        }
        if base != 0 {
            return bad("a split image that is not alone in its file");
        }
        let mut len = 0u64;
        for (i, a) in sampled.iter_mut().enumerate() {
            *a = bits[i / 8] >> (i % 8) & 1 == 1;
            if *a {
                len += pieces[i].1 as u64;
            }
        }
        if len != p.raw_len {
            return bad("split plan length");
        }
    }
    // The new metadata: the frames record before REC_END; its size is known now.
    let frames_len = pieces.len() * core::mem::size_of::<ZFrame>();
    if frames_len > u32::MAX as usize {
        return bad("too many frames");
    }
    let new_meta_len = compressed_meta_len(new_meta.len(), pieces.len());
    let data_offset = PAGE as u64 + page_align(new_meta_len as u64);
    let data_at = base + data_offset;
    if plan
        .as_ref()
        .is_some_and(|(p, _)| p.data_offset != data_offset)
    {
        return bad("split plan's data offset");
    }
    // A split image's compressed pieces are stored back from where its raw page data would
    // end (`top`), the agent's forward from `data_at`: they never meet, and the gap between
    // them is closed at the end (`close_gap`). The file is that long already (the agent's ring
    // extends it), or made so.
    let top = data_at + mem_len;
    if split && out.metadata().is_ok_and(|m| m.len() < top) {
        out.set_len(top)
            .map_err(|e| format!("cannot extend the compressed image: {e}"))?;
    }

    // Readers (this thread) -> compressors -> the writer (in the stream's order). A split
    // image keeps the compressors' queue short: a piece waiting in it is one the agent could
    // have written raw (it writes raw while the pipe is full), and the queue is the time the
    // compression goes on once the agent is done.
    let queue = if split { 1 } else { threads * 2 };
    // (Pulled pieces: one more buffer, the reader's for the next piece while the queue is
    // full, so that a thread that is free finds a piece to pull at once.)
    let max_held = if split {
        threads + 1 + usize::from(pull.is_some())
    } else {
        threads * 4 + 2
    };
    // (k, piece, its buffer, and the piece's address in the process when it is to be pulled
    // into the buffer first.)
    type Job = (usize, usize, Vec<u8>, Option<u64>);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(queue);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    // A split image's page data ended in the stream (the agent is done): the pieces not yet
    // compressed are stored raw, not compressed after the disk is done (at most the queue and
    // the reader's pieces; those being compressed finish).
    // (Not with `CR_COMPRESS_ADAPT=0`, `protocol::FLAG_ZWAIT`: everything compressed.)
    let adapt = std::env::var_os("CR_COMPRESS_ADAPT").is_none_or(|v| v != "0");
    let ending = std::sync::atomic::AtomicBool::new(false);
    // Pieces pulled from the process (the first by the reader, the rest by the compression
    // threads, each as it takes the piece: the copy out of the process, about as costly as
    // the compression here, runs on every core), and the errno of a refused first pull.
    let npulled = std::sync::atomic::AtomicU64::new(0);
    // Pieces the agent compressed itself (`ZPLAN_PACKED`).
    let npacked = std::sync::atomic::AtomicU64::new(0);
    let (frames, raw_hash, hi) = std::thread::scope(|s| -> Result<_, String> {
        // Owned here, and dropped once the threads have their clones: when they are gone (the
        // writer failed, so each ended at its next piece) the reader's send fails instead of
        // waiting for room in the queue for ever.
        let job_rx = job_rx;
        // Buffers of compressed frames, back from the writer for reuse (no fresh memory per
        // frame).
        let spare: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        // A thread that cannot be made leaves its share to the others; none at all is an error
        // (never a panic).
        let mut started = 0;
        let mut spawn_err = None;
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let spare = Arc::clone(&spare);
            let ending = &ending;
            let npulled = &npulled;
            let made = std::thread::Builder::new().spawn_scoped(s, move || {
                let Some(mut p) = Packer::new(level) else {
                    return;
                };
                loop {
                    let job = job_rx.lock().map(|r| r.recv());
                    let Ok(Ok((k, seq, mut raw, from))) = job else {
                        return;
                    };
                    // A piece to pull first (its address in the process).
                    let mut err = None;
                    if let (Some(addr), Some(pl)) = (from, pull) {
                        if pl.knob == PULL_STALL {
                            // (A test's: the agent waits for this piece until we are killed.)
                            use std::io::Write;
                            let mut o = std::io::stdout();
                            let _ = writeln!(o, "pulls stalled");
                            let _ = o.flush();
                            loop {
                                std::thread::sleep(std::time::Duration::from_secs(1));
                            }
                        }
                        match pl.read(addr, &mut raw) {
                            Ok(()) => {
                                npulled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if let Err(e) = pl.answer(crate::protocol::ZPULL_DONE) {
                                    err = Some(e);
                                }
                            }
                            Err(e) => {
                                err = Some(format!(
                                    "cannot read piece {seq} of the process's memory: {e}"
                                ))
                            }
                        }
                    }
                    let mut packed = spare
                        .lock()
                        .ok()
                        .and_then(|mut v| v.pop())
                        .unwrap_or_default();
                    let n = if err.is_some() || ending.load(std::sync::atomic::Ordering::Relaxed) {
                        None
                    } else {
                        p.pack(&raw, &mut packed)
                    };
                    if done_tx
                        .send(Done {
                            k,
                            seq,
                            raw,
                            packed,
                            n,
                            err,
                            pre: false,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            });
            match made {
                Ok(_) => started += 1,
                Err(e) => spawn_err = Some(e),
            }
        }
        drop(job_rx);
        if let (0, Some(e)) = (started, spawn_err) {
            return Err(format!("cannot create a compression thread: {e}"));
        }
        // (The reader's, for the frames the agent compressed: they go to the writer directly.)
        let done_rd = done_tx.clone();
        drop(done_tx);
        let pieces_ref = &pieces;
        let spare_w = Arc::clone(&spare);
        type Written = (Vec<Option<ZFrame>>, Stats, u64, u64);
        let writer =
            std::thread::Builder::new().spawn_scoped(s, move || -> Result<Written, String> {
                let mut pending = BTreeMap::new();
                let mut next = 0usize;
                let mut st = Stats::default();
                // The raw page data that came, in the stream's order, hashed as the agent did (for
                // a pulled piece: what was read from the process and compressed).
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                // Not split: front to back from the data area's start, in order; split: back
                // from `top`.
                let mut fw = (!split).then(|| SeqWriter::new(out, data_at));
                let mut bw = BackWriter::new(out, top, data_at, pieces_ref.len());
                let mut stored = 0u64;
                for d in done_rx {
                    pending.insert(d.k, d);
                    while let Some(d) = pending.remove(&next) {
                        if let Some(e) = d.err {
                            return Err(e);
                        }
                        if d.pre {
                            h.update(d.packed.get(..d.n.unwrap_or(0)).unwrap_or_default());
                            st.packed += 1;
                        } else {
                            h.update(&d.raw);
                        }
                        let (raw_off, raw_len) = pieces_ref[d.seq];
                        let (bytes, method) = match d.n {
                            Some(n) => (&d.packed[..n], ZFRAME_ZSTD),
                            None => (&d.raw[..], ZFRAME_RAW),
                        };
                        if method == ZFRAME_ZSTD {
                            st.zstd_frames += 1;
                        } else {
                            st.raw_frames += 1;
                        }
                        st.raw += raw_len as u64;
                        let mut f = ZFrame {
                            raw_off,
                            stored_off: 0,
                            stored_len: bytes.len() as u64,
                            raw_len,
                            method,
                        };
                        match fw.as_mut() {
                            Some(w) => {
                                if method == ZFRAME_RAW {
                                    w.pad()?;
                                    stored = page_align(stored);
                                }
                                f.stored_off = stored;
                                w.push(bytes)?;
                                stored += f.stored_len;
                                bw.placed[d.seq] = Some(f);
                            }
                            None => bw.push(d.seq, f, bytes)?,
                        }
                        if d.raw.capacity() > 0 {
                            let _ = free_tx.send(d.raw);
                        }
                        if let Ok(mut v) = spare_w.lock() {
                            v.push(d.packed);
                        }
                        next += 1;
                    }
                }
                let hi = match fw {
                    Some(mut w) => {
                        w.pad()?;
                        w.flush()?;
                        data_at + page_align(stored)
                    }
                    None => {
                        bw.flush()?;
                        bw.end
                    }
                };
                Ok((bw.placed, st, hi, h.digest()))
            });
        let writer = writer
            .map_err(|e| format!("cannot create the compressed image's writer thread: {e}"))?;
        // Read every piece in the stream (or, to be pulled, its index).
        let mut held = 0usize;
        let mut k = 0usize;
        let mut refused = 0i32;
        let mut read = || -> Result<(), String> {
            let npieces = pieces.len() as u64;
            // The next piece's index, whether it is to be pulled (`ZPLAN_PULL`), and whether
            // the agent compressed it (`ZPLAN_PACKED`).
            type Tag = (u64, bool, bool);
            let next_tag = |src: &mut dyn Source, after: Option<usize>| -> Result<Tag, String> {
                let mut tag = [0u8; 8];
                need(src, &mut tag)?;
                let t = u64::from_le_bytes(tag);
                let pulled = t != ZPLAN_END && t & ZPLAN_PULL != 0;
                let packed = t != ZPLAN_END && t & ZPLAN_PACKED != 0;
                let t = if t == ZPLAN_END {
                    t
                } else {
                    t & !(ZPLAN_PULL | ZPLAN_PACKED)
                };
                let ok = t == ZPLAN_END
                    || (t < npieces && after.is_none_or(|a| t > a as u64) && !(pulled && packed));
                if !ok {
                    return Err("bad image in the stream: piece index out of order".into());
                }
                Ok((t, pulled, packed))
            };
            let (mut tagged, mut pulled, mut packed) = if split {
                next_tag(src, None)?
            } else {
                (0, false, false)
            };
            let mut first = true;
            for (seq, &(_, n)) in pieces.iter().enumerate() {
                if split && tagged != seq as u64 {
                    // Written by the agent.
                    continue;
                }
                if sampled[seq] {
                    return Err("bad image in the stream: a piece of the agent's piped".into());
                }
                if packed {
                    // Compressed by the agent: its frame, checked and stored as it is.
                    let mut len = [0u8; 8];
                    need(src, &mut len)?;
                    let len = u64::from_le_bytes(len);
                    if len == 0 || len > ZPACK_MAX {
                        return Err("bad image in the stream: a packed piece's length".into());
                    }
                    let mut frame = spare
                        .lock()
                        .ok()
                        .and_then(|mut v| v.pop())
                        .unwrap_or_default();
                    frame.resize(len as usize, 0);
                    need(src, &mut frame)?;
                    check_packed(&frame, n as u64)
                        .map_err(|m| format!("bad image in the stream: packed piece {seq}: {m}"))?;
                    npacked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let d = Done {
                        k,
                        seq,
                        raw: Vec::new(),
                        packed: frame,
                        n: Some(len as usize),
                        err: None,
                        pre: true,
                    };
                    if done_rd.send(d).is_err() {
                        return Ok(());
                    }
                    k += 1;
                    (tagged, pulled, packed) = next_tag(src, Some(seq))?;
                    continue;
                }
                // At most a few pieces per thread in flight: reuse the buffers that came back.
                let mut buf = match free_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if held < max_held => {
                        held += 1;
                        Vec::new()
                    }
                    Err(_) => match free_rx.recv() {
                        Ok(b) => b,
                        Err(_) => return Ok(()),
                    },
                };
                buf.resize(n as usize, 0);
                let mut from = None;
                match (pulled, pull) {
                    (false, _) => need(src, &mut buf)?,
                    (true, None) => {
                        return Err("bad image in the stream: a piece to pull, not asked".into())
                    }
                    (true, Some(_)) if !first => from = Some(addrs[seq]),
                    (true, Some(p)) => {
                        // The first, read here: refused, the agent sends its bytes, and every
                        // later piece's.
                        let r = if p.knob == PULL_REFUSE {
                            Err(std::io::Error::from_raw_os_error(libc::EPERM))
                        } else {
                            p.read(addrs[seq], &mut buf)
                        };
                        match r {
                            Ok(()) => {
                                npulled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                p.answer(crate::protocol::ZPULL_DONE)?;
                            }
                            Err(e) => {
                                refused = e.raw_os_error().unwrap_or(libc::EPERM);
                                p.answer(crate::protocol::ZPULL_REFUSED)?;
                                need(src, &mut buf)?;
                            }
                        }
                    }
                }
                if pulled {
                    first = false;
                }
                if job_tx.send((k, seq, buf, from)).is_err() {
                    return Ok(());
                }
                k += 1;
                if split {
                    (tagged, pulled, packed) = next_tag(src, Some(seq))?;
                    // (Not once pieces were pulled: the agent kept to a plain checkpoint's
                    // time already, and waits for nothing compressed; the few pieces held
                    // here take milliseconds.)
                    if tagged == ZPLAN_END
                        && adapt
                        && npulled.load(std::sync::atomic::Ordering::Relaxed) == 0
                        && npacked.load(std::sync::atomic::Ordering::Relaxed) == 0
                    {
                        ending.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            if split && tagged != ZPLAN_END {
                return Err("bad image in the stream: its page data does not end".into());
            }
            Ok(())
        };
        let result = read();
        if refused != 0 {
            stats.pull_refused = refused;
        }
        drop(job_tx);
        drop(done_rd);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("a compression thread failed".into()));
        stats.pulled += npulled.load(std::sync::atomic::Ordering::Relaxed);
        result?;
        let (placed, st, hi, digest) = written?;
        stats.raw += st.raw;
        stats.zstd_frames += st.zstd_frames;
        stats.raw_frames += st.raw_frames;
        stats.packed += st.packed;
        Ok((placed, digest, hi))
    })?;

    // The frames in order: those compressed (placed), the agent's raw ones back to back from
    // the data area's start.
    let mut zframes = Vec::with_capacity(pieces.len());
    let mut agent_len = 0u64;
    for (seq, f) in frames.into_iter().enumerate() {
        if let Some(f) = f {
            zframes.push(f);
            continue;
        }
        if !split {
            return Err("a compression thread failed".into());
        }
        let (raw_off, raw_len) = pieces[seq];
        zframes.push(ZFrame {
            raw_off,
            stored_off: agent_len,
            stored_len: raw_len as u64,
            raw_len,
            method: ZFRAME_RAW,
        });
        agent_len += raw_len as u64;
        stats.raw_frames += 1;
        stats.agent_frames += 1;
        stats.raw += raw_len as u64;
    }
    let frames = zframes;
    let stored_mem = if split {
        // The compressed pieces [hi, top) move down to the end of the agent's.
        let held = top - hi;
        let gap = hi - (data_at + agent_len);
        let mut frames = frames;
        if gap > 0 && held > 0 {
            stats.gap = gap;
            stats.gap_closed = close_gap(out, data_at + agent_len, hi, held)?;
            for f in frames.iter_mut().filter(|f| f.stored_off >= agent_len) {
                f.stored_off -= gap;
            }
        }
        stats.stored += agent_len + held;
        (agent_len + held, frames)
    } else {
        let m = frames
            .iter()
            .map(|f| page_align(f.stored_off + f.stored_len))
            .max()
            .unwrap_or(0);
        stats.stored += m;
        (m, frames)
    };
    let (stored_mem, frames) = stored_mem;
    if !frames.is_empty() && frames.len() != pieces.len() {
        return Err("a compression thread failed".into());
    }

    // The saved files' contents and the trailer follow the page data as they are.
    let rest = hdr.data_len - mem_len;
    let mut w = SeqWriter::new(out, data_at + stored_mem);
    let mut buf = vec![0u8; FRAME];
    let mut done = 0u64;
    while done < rest {
        let n = (rest - done).min(FRAME as u64) as usize;
        need(src, &mut buf[..n])?;
        w.push(&buf[..n])?;
        done += n as u64;
    }
    w.pad()?;
    w.flush()?;
    let mut tpage = vec![0u8; PAGE];
    need(src, &mut tpage)?;
    let tsize = core::mem::size_of::<Trailer>();
    let mut tr: Trailer = bytemuck::pod_read_unaligned(&tpage[..tsize]);
    if tr.magic != TRAILER_MAGIC || page_hash(&tpage, tsize) != tr.trailer_hash {
        return bad("trailer checksum");
    }
    // What came through the pipe is what the agent wrote into it: all the page data, or in a
    // split image the pieces it did not write itself (their hash is in the trailer page).
    let want = match plan {
        Some(_) => u64::from_le_bytes(
            tpage[ZPLAN_HASH_AT..ZPLAN_HASH_AT + 8]
                .try_into()
                .unwrap_or([0; 8]),
        ),
        None => tr.data_hash,
    };
    if !frames.is_empty() && raw_hash != want {
        return bad("page data checksum");
    }

    // The new metadata, header and trailer.
    let rh = RecordHeader {
        kind: REC_ZFRAMES,
        len: frames_len as u32,
    };
    new_meta.extend_from_slice(bytemuck::bytes_of(&rh));
    new_meta.extend_from_slice(bytemuck::cast_slice(&frames));
    new_meta.resize(align8(new_meta.len()), 0);
    // What a delta of this process names as its parent: the raw image the agent wrote.
    new_meta.extend_from_slice(bytemuck::bytes_of(&RecordHeader {
        kind: REC_ZORIGIN,
        len: core::mem::size_of::<ZOrigin>() as u32,
    }));
    new_meta.extend_from_slice(bytemuck::bytes_of(&ZOrigin {
        trailer_hash: tr.trailer_hash,
        total_len: tr.total_len,
    }));
    new_meta.extend_from_slice(bytemuck::bytes_of(&RecordHeader {
        kind: REC_END,
        len: 0,
    }));
    debug_assert_eq!(new_meta.len(), new_meta_len);
    hdr.version = VERSION_COMPRESSED;
    hdr.meta_len = new_meta.len() as u64;
    hdr.meta_hash = hash(&new_meta);
    hdr.data_offset = data_offset;
    hdr.data_len = stored_mem + rest;
    hdr.trailer_offset = hdr.data_offset + hdr.data_len;
    hdr.header_hash = 0;
    let mut head = vec![0u8; data_offset as usize];
    head[..hsize].copy_from_slice(bytemuck::bytes_of(&hdr));
    hdr.header_hash = page_hash(&head[..PAGE], hsize);
    head[..hsize].copy_from_slice(bytemuck::bytes_of(&hdr));
    head[PAGE..PAGE + new_meta.len()].copy_from_slice(&new_meta);
    tr.total_len = hdr.trailer_offset + PAGE as u64;
    tr.trailer_hash = 0;
    let mut tp = vec![0u8; PAGE];
    tp[..tsize].copy_from_slice(bytemuck::bytes_of(&tr));
    tr.trailer_hash = page_hash(&tp, tsize);
    tp[..tsize].copy_from_slice(bytemuck::bytes_of(&tr));
    put_aligned(out, &tp, base + hdr.trailer_offset)?;
    put_aligned(out, &head, base)?;
    if split {
        // (Longer still where the gap was copied down.)
        out.set_len(base + tr.total_len)
            .map_err(|e| format!("cannot end the compressed image: {e}"))?;
    }
    Ok(tr.total_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mem` filled as the benchmark's compressible workload: a repeating 64-byte pattern.
    fn pattern(mem: &mut [u8]) {
        for (k, w) in mem.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(0x0101_0101_0101_0101u64 * (k as u64 % 8 + 1)).to_le_bytes());
        }
    }

    /// Numbered text lines (compressible as logs are, a few times).
    fn text(mem: &mut [u8]) {
        let mut s = String::new();
        let mut i = 0u64;
        while s.len() < mem.len() {
            let x = i.wrapping_mul(2_654_435_761);
            s.push_str(&format!(
                "{i:08} item{} count={} state=ok\n",
                x % 15,
                x % 1000
            ));
            i += 1;
        }
        mem.copy_from_slice(&s.as_bytes()[..mem.len()]);
    }

    /// Packs `raw` and decompresses it again with a reused context; returns the packed size.
    fn round_trip(p: &mut Packer, z: &mut Inflater, raw: &[u8], name: &str) -> Option<usize> {
        let mut out = Vec::new();
        let n = p.pack(raw, &mut out)?;
        let path =
            std::env::temp_dir().join(format!("libcr-compress-unit-{}-{name}", std::process::id()));
        std::fs::write(&path, &out[..n]).expect("write the frame");
        let f = File::open(&path).expect("open the frame");
        let mut back = vec![0u8; raw.len()];
        let r = z.frame(&f, 0, n, &mut back);
        let _ = std::fs::remove_file(&path);
        assert!(r.is_ok(), "{name}: {r:?}");
        assert!(back == raw, "{name}: decompressed bytes differ");
        Some(n)
    }

    /// Long runs of a short pattern take long-distance matching: a 1 MiB frame of the
    /// benchmark's pattern packs into less than 1 KiB (zstd's fast level alone gave ~48 KiB);
    /// text still compresses and random data is stored raw, all through one reused context
    /// per side.
    #[test]
    fn frames_pack_by_kind_and_round_trip() {
        let mut p = Packer::new(DEFAULT_LEVEL).expect("compressor");
        let mut z = Inflater::new().expect("decompressor");
        let mut raw = vec![0u8; FRAME];
        pattern(&mut raw);
        let n = round_trip(&mut p, &mut z, &raw, "pattern").expect("pattern compresses");
        assert!(n < 1024, "1 MiB of a 64-byte pattern packed into {n} bytes");
        text(&mut raw);
        let n = round_trip(&mut p, &mut z, &raw, "text").expect("text compresses");
        assert!(n < FRAME / 3, "1 MiB of text packed into {n} bytes");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for w in raw.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        assert!(
            p.pack(&raw, &mut Vec::new()).is_none(),
            "random data stored raw"
        );
        pattern(&mut raw);
        round_trip(&mut p, &mut z, &raw, "pattern2").expect("the contexts are reusable");
    }

    /// The agent's per-page test: random pages are incompressible; text, the benchmark's
    /// pattern, zeros, and a random block repeated (flat bytes, but matches) are not; and the
    /// verdicts agree with what zstd does to the same 1 MiB.
    #[test]
    fn page_samples_tell_incompressible_data() {
        let mut raw = vec![0u8; FRAME];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for w in raw.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        assert!(
            raw.chunks_exact(PAGE).all(looks_incompressible),
            "random pages"
        );
        let t = std::time::Instant::now();
        let all = raw.chunks_exact(PAGE).all(looks_incompressible);
        let per_page = t.elapsed() / (FRAME / PAGE) as u32;
        assert!(all, "random pages");
        eprintln!("looks_incompressible: {per_page:?} per page");
        let mut p = Packer::new(DEFAULT_LEVEL).expect("compressor");
        assert!(p.pack(&raw, &mut Vec::new()).is_none());
        let block = raw[..256].to_vec();
        let mut rep = vec![0u8; PAGE];
        for c in rep.chunks_exact_mut(256) {
            c.copy_from_slice(&block);
        }
        assert!(!looks_incompressible(&rep), "a repeated random block");
        assert!(!looks_incompressible(&[0u8; PAGE]), "zeros");
        pattern(&mut raw);
        assert!(!looks_incompressible(&raw[..PAGE]), "the pattern");
        text(&mut raw);
        assert!(
            !raw.chunks_exact(PAGE).any(looks_incompressible),
            "text pages"
        );
        assert!(p.pack(&raw, &mut Vec::new()).is_some());
    }
}
