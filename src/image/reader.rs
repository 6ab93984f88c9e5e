//! Reads and validates an image for the tools (`cr_restart`, `cr_info`). Allocation is fine here.

use super::format::*;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Why an image cannot be used. Each renders as one line naming the problem.
#[derive(Debug)]
pub enum ImageError {
    /// Reading the file failed.
    Io(std::io::Error),
    /// The file does not start with the image magic.
    NotAnImage,
    /// The image was written by another format version.
    Version(u32),
    /// The image is for another architecture.
    Arch(u32),
    /// The file is shorter than the header says.
    Truncated {
        /// Bytes the header and trailer require.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// A checksum does not match: the named part is corrupt.
    Corrupt(&'static str),
    /// The metadata is structurally invalid.
    Malformed(String),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Io(e) => write!(f, "cannot read image: {e}"),
            ImageError::NotAnImage => write!(f, "not a libcr checkpoint image (bad magic)"),
            ImageError::Version(v) => {
                write!(
                    f,
                    "incompatible image: format version {v}, this build reads {MIN_VERSION} to {VERSION}"
                )
            }
            ImageError::Arch(a) => {
                write!(f, "incompatible image: architecture {a}, expected x86-64")
            }
            ImageError::Truncated { expected, actual } => {
                write!(f, "truncated image: {actual} bytes, expected {expected}")
            }
            ImageError::Corrupt(what) => write!(f, "corrupt image: {what} checksum mismatch"),
            ImageError::Malformed(m) => write!(f, "corrupt image: {m}"),
        }
    }
}

impl std::error::Error for ImageError {}

impl From<std::io::Error> for ImageError {
    fn from(e: std::io::Error) -> Self {
        ImageError::Io(e)
    }
}

impl ImageError {
    /// The errno a tool should exit with for this error.
    pub fn errno(&self) -> i32 {
        match self {
            ImageError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EINVAL,
        }
    }
}

/// A memory region with its path and extents.
#[derive(Debug, Clone)]
pub struct Region {
    /// The fixed part.
    pub rec: RegionRec,
    /// Decoded kind.
    pub kind: RegionKind,
    /// Mapped path (empty for anonymous memory).
    pub path: Vec<u8>,
    /// Saved page runs.
    pub extents: Vec<Extent>,
    /// The file system detail of a `REC_REGION_FS` record, if the writer added one.
    pub fs: Option<RegionFsRec>,
    /// The SysV segment it is (`REC_REGION_SYSV`), if the writer added one.
    pub sysv: Option<SysvShmRec>,
    /// Bytes of it in transparent huge pages at the checkpoint (`REC_REGION_THP`; 0: none, or
    /// an older writer).
    pub huge_bytes: u64,
    /// In a delta image, an incremental region (`REC_REGION_INCR`): the `[start, end)` ranges
    /// that read as zero now; its pages outside these and its extents are the parent chain's.
    pub incr: Option<Vec<(u64, u64)>>,
}

/// An open file descriptor with its path.
#[derive(Debug, Clone)]
pub struct Fd {
    /// The fixed part.
    pub rec: FdRec,
    /// Decoded kind.
    pub kind: FdKind,
    /// Path (from `/proc/self/fd`).
    pub path: Vec<u8>,
    /// Async-I/O owner and signal, when one was set (`REC_FD_OWNER`).
    pub owner: Option<FdOwnerRec>,
    /// For [`FdKind::Kernel`]: the `crate::kinds` id and the object's saved state.
    pub kobj: Option<(u32, Vec<u8>)>,
    /// For a file under a temporary directory saved by content (`REC_FD_SAVED`): its size,
    /// modification time and mode at checkpoint time (the contents are in
    /// [`Image::file_data`]).
    pub saved: Option<FdSavedRec>,
}

/// A SysV message queue of [`REC_SYSV_MSG`]: its head and its messages (type, text) in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysvMsgQueue {
    /// Key, id, mode, owner and capacity.
    pub head: SysvMsgRec,
    /// The queued messages: (`mtype`, text).
    pub msgs: Vec<(i64, Vec<u8>)>,
}

/// Parses the payload of a `REC_SYSV_MSG` record.
pub fn parse_msg_queue(body: &[u8]) -> Result<SysvMsgQueue, ImageError> {
    let bad = || ImageError::Malformed("SysV message queue".into());
    let head: SysvMsgRec = read_pod(body, "SysV message queue")?;
    let mut msgs = Vec::new();
    let mut at = core::mem::size_of::<SysvMsgRec>();
    while at < body.len() {
        let word = |o: usize| -> Result<u64, ImageError> {
            let b = body.get(o..o + 8).ok_or_else(bad)?;
            Ok(u64::from_ne_bytes(b.try_into().map_err(|_| bad())?))
        };
        let len = word(at)? as usize;
        let mtype = word(at + 8)? as i64;
        let end = (at + 16).checked_add(len).ok_or_else(bad)?;
        let text = body.get(at + 16..end).ok_or_else(bad)?;
        if mtype <= 0 {
            return Err(bad());
        }
        msgs.push((mtype, text.to_vec()));
        at = (end + 7) & !7;
    }
    Ok(SysvMsgQueue { head, msgs })
}

/// A parsed, header-validated image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Header page.
    pub header: FileHeader,
    /// Trailer page.
    pub trailer: Trailer,
    /// Process state.
    pub process: ProcessRec,
    /// Raw auxv words.
    pub auxv: Vec<u8>,
    /// Working directory.
    pub cwd: Vec<u8>,
    /// Memory regions in address order.
    pub regions: Vec<Region>,
    /// SysV semaphore sets (`REC_SYSV_SEM`) with their values.
    pub sems: Vec<(SysvSemRec, Vec<u16>)>,
    /// SysV message queues (`REC_SYSV_MSG`) with their messages in queue order.
    pub msgqs: Vec<SysvMsgQueue>,
    /// Open descriptors.
    pub fds: Vec<Fd>,
    /// Descriptors in flight in unix sockets' queues (`REC_FD_IN_FLIGHT`): not the program's,
    /// made again only to be sent with the queued data (`kinds::unix::InFlight`).
    pub in_flight: Vec<Fd>,
    /// Threads.
    pub threads: Vec<ThreadRec>,
    /// Warnings recorded at checkpoint time.
    pub warnings: Vec<String>,
    /// Bytes that were buffered in pipes at checkpoint time: (pipe inode, contents).
    pub pipe_data: Vec<(u64, Vec<u8>)>,
    /// Inodes of the pipes nobody could write to any more at checkpoint time (`PIPE_NO_WRITERS`).
    pub writerless_pipes: Vec<u64>,
    /// Contents of unlinked open files: ((device, inode), contents).
    pub file_data: Vec<((u64, u64), Vec<u8>)>,
    /// Saved files whose contents are in the data area, after the memory pages
    /// (`REC_FILE_SPAN`; see [`Image::saved_contents`]).
    pub file_spans: Vec<FileSpanRec>,
    /// Directories above saved temporary files (`REC_SAVED_DIR`): mode and owner, path.
    pub saved_dirs: Vec<(SavedDirRec, Vec<u8>)>,
    /// Files created with `mkstemp` & co. and saved without a descriptor (`REC_CREATED_SAVED`).
    pub created: Vec<(CreatedSavedRec, Vec<u8>)>,
    /// Owners of files saved by content (`REC_SAVED_OWNER`).
    pub saved_owners: Vec<SavedOwnerRec>,
    /// The process's credentials and supplementary groups (`REC_CREDS`; `None` from older
    /// writers).
    pub creds: Option<(CredsRec, Vec<u32>)>,
    /// File offset where this image starts (0 unless it is one process of a tree image).
    pub base: u64,
    /// Descriptions shared with the images that follow this one back to back (a forwarded
    /// checkpoint; `proc` counts from this image = 0).
    pub shares: Vec<crate::image::tree::ShareRec>,
    /// A delta image's parent (`REC_PARENT`) and its path as recorded.
    pub parent: Option<(ParentRec, Vec<u8>)>,
    /// A delta image's parent chain, newest first, once resolved and checked
    /// ([`crate::image::chain::resolve_abs_in`]: each link's absolute path, parsed image and
    /// file identity, so the restart reads no link's metadata twice); empty otherwise.
    pub chain: Vec<crate::image::chain::Link>,
    /// A compressed image's raw original (`REC_ZORIGIN`): what a delta names as its parent.
    pub origin: Option<ZOrigin>,
    /// How the page data is stored in a compressed image (`REC_ZFRAMES`, in raw order);
    /// empty: stored as the extents say.
    pub zframes: Vec<ZFrame>,
}

fn read_pod<T: bytemuck::Pod>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    let n = core::mem::size_of::<T>();
    if bytes.len() < n {
        return Err(ImageError::Malformed(format!("short {what} record")));
    }
    Ok(bytemuck::pod_read_unaligned(&bytes[..n]))
}

/// Reads the fixed part of a record written by format `version` (which may be shorter than
/// today's `T`: the missing fields read as zero) and returns it with the bytes after it.
fn read_fixed<'a, T: bytemuck::Pod>(
    body: &'a [u8],
    kind: u32,
    version: u32,
    what: &str,
) -> Result<(T, &'a [u8]), ImageError> {
    let n = fixed_size(kind, version).unwrap_or(core::mem::size_of::<T>());
    if body.len() < n || n > core::mem::size_of::<T>() {
        return Err(ImageError::Malformed(format!("short {what} record")));
    }
    let mut v: T = bytemuck::Zeroable::zeroed();
    bytemuck::bytes_of_mut(&mut v)[..n].copy_from_slice(&body[..n]);
    Ok((v, &body[n..]))
}

impl Image {
    /// Reads the header, metadata and trailer of `file` and checks their checksums, sizes, version
    /// and architecture. Page data is checked separately ([`Image::verify_data`]) or while it is
    /// loaded.
    pub fn open(file: &File) -> Result<Image, ImageError> {
        Self::open_at(file, 0)
    }

    /// Like [`Image::open`] for an image that starts `base` bytes into `file` (one process of a
    /// tree image). The offsets in the returned header are absolute file offsets.
    pub fn open_at(file: &File, base: u64) -> Result<Image, ImageError> {
        let actual = file.metadata()?.len();
        let mut page = vec![0u8; PAGE];
        let n = read_at_most(file, &mut page, base)?;
        if n < 8 || page[..8] != MAGIC {
            return Err(ImageError::NotAnImage);
        }
        if n < PAGE {
            return Err(ImageError::Truncated {
                expected: PAGE as u64,
                actual,
            });
        }
        let mut header: FileHeader = read_pod(&page, "header")?;
        if page_hash(&page, core::mem::size_of::<FileHeader>()) != header.header_hash {
            return Err(ImageError::Corrupt("header"));
        }
        if !(MIN_VERSION..=VERSION).contains(&header.version) {
            return Err(ImageError::Version(header.version));
        }
        if header.arch != ARCH_X86_64 {
            return Err(ImageError::Arch(header.arch));
        }
        // The layout, before anything is allocated from it: metadata after the header page and
        // before the page-aligned data, the data right before the trailer, nothing overflowing.
        let layout = (|| {
            let meta_end = header.meta_offset.checked_add(header.meta_len)?;
            let data_end = header.data_offset.checked_add(header.data_len)?;
            let ok = header.page_size == PAGE as u32
                && header.meta_offset >= PAGE as u64
                && meta_end <= header.data_offset
                && header.data_offset.is_multiple_of(PAGE as u64)
                && data_end == header.trailer_offset
                && header
                    .trailer_offset
                    .checked_add(PAGE as u64)?
                    .checked_add(base)?
                    <= actual;
            ok.then_some(())
        })();
        if layout.is_none() {
            let expected = header
                .trailer_offset
                .saturating_add(PAGE as u64)
                .saturating_add(base);
            if header.trailer_offset.is_multiple_of(PAGE as u64) && expected > actual {
                return Err(ImageError::Truncated { expected, actual });
            }
            return Err(ImageError::Malformed(
                "header offsets and lengths disagree".into(),
            ));
        }
        header.meta_offset += base;
        header.data_offset += base;
        header.trailer_offset += base;
        let expected = header.trailer_offset + PAGE as u64;
        let mut tpage = vec![0u8; PAGE];
        file.read_exact_at(&mut tpage, header.trailer_offset)?;
        let trailer: Trailer = read_pod(&tpage, "trailer")?;
        if trailer.magic != TRAILER_MAGIC
            || page_hash(&tpage, core::mem::size_of::<Trailer>()) != trailer.trailer_hash
        {
            return Err(ImageError::Corrupt("trailer"));
        }
        if trailer.total_len + base != expected {
            return Err(ImageError::Malformed(
                "trailer length disagrees with header".into(),
            ));
        }
        let mut meta = vec![0u8; header.meta_len as usize];
        file.read_exact_at(&mut meta, header.meta_offset)?;
        if hash(&meta) != header.meta_hash {
            return Err(ImageError::Corrupt("metadata"));
        }
        let mut img = Image {
            header,
            trailer,
            process: bytemuck::Zeroable::zeroed(),
            auxv: Vec::new(),
            cwd: Vec::new(),
            regions: Vec::new(),
            sems: Vec::new(),
            msgqs: Vec::new(),
            fds: Vec::new(),
            in_flight: Vec::new(),
            threads: Vec::new(),
            warnings: Vec::new(),
            pipe_data: Vec::new(),
            writerless_pipes: Vec::new(),
            file_data: Vec::new(),
            file_spans: Vec::new(),
            saved_dirs: Vec::new(),
            created: Vec::new(),
            saved_owners: Vec::new(),
            creds: None,
            base,
            shares: Vec::new(),
            parent: None,
            chain: Vec::new(),
            zframes: Vec::new(),
            origin: None,
        };
        img.parse_meta(&meta)?;
        img.check_extents()?;
        Ok(img)
    }

    fn parse_meta(&mut self, meta: &[u8]) -> Result<(), ImageError> {
        let v = self.header.version;
        let mut pos = 0usize;
        let mut saw_process = false;
        // The descriptors `REC_FD_IN_FLIGHT` records named whose `REC_FD` is still to come, and
        // the indexes in `fds` of those met (moved to `in_flight` at the end).
        let mut flight_next: Vec<i32> = Vec::new();
        let mut flights: Vec<usize> = Vec::new();
        loop {
            let rh: RecordHeader = read_pod(&meta[pos.min(meta.len())..], "record header")?;
            pos += core::mem::size_of::<RecordHeader>();
            let len = rh.len as usize;
            if pos + len > meta.len() {
                return Err(ImageError::Malformed("record runs past metadata".into()));
            }
            let body = &meta[pos..pos + len];
            pos += align8(len);
            match rh.kind {
                REC_PROCESS => {
                    let (p, tail): (ProcessRec, _) = read_fixed(body, rh.kind, v, "process")?;
                    self.auxv = tail[..(p.auxv_len as usize).min(tail.len())].to_vec();
                    self.process = p;
                    saw_process = true;
                }
                REC_CWD => self.cwd = body.to_vec(),
                REC_REGION => {
                    let (r, tail): (RegionRec, _) = read_fixed(body, rh.kind, v, "region")?;
                    let kind = RegionKind::from_u32(r.kind)
                        .ok_or_else(|| ImageError::Malformed(format!("region kind {}", r.kind)))?;
                    let path = tail.to_vec();
                    self.regions.push(Region {
                        rec: r,
                        kind,
                        path,
                        extents: Vec::new(),
                        fs: None,
                        sysv: None,
                        huge_bytes: 0,
                        incr: None,
                    });
                }
                REC_EXTENTS => {
                    let region = self
                        .regions
                        .last_mut()
                        .ok_or_else(|| ImageError::Malformed("extents before region".into()))?;
                    let n = len / core::mem::size_of::<Extent>();
                    region.extents = (0..n)
                        .map(|i| read_pod(&body[i * core::mem::size_of::<Extent>()..], "extent"))
                        .collect::<Result<_, _>>()?;
                }
                REC_FD => {
                    let (r, tail): (FdRec, _) = read_fixed(body, rh.kind, v, "fd")?;
                    let kind = FdKind::from_u32(r.kind)
                        .ok_or_else(|| ImageError::Malformed(format!("fd kind {}", r.kind)))?;
                    let path = tail.to_vec();
                    if let Some(at) = flight_next.iter().position(|&f| f == r.fd) {
                        flight_next.swap_remove(at);
                        flights.push(self.fds.len());
                    }
                    self.fds.push(Fd {
                        rec: r,
                        kind,
                        path,
                        owner: None,
                        kobj: None,
                        saved: None,
                    });
                }
                REC_KOBJ => {
                    let (r, state): (KobjRec, _) = read_fixed(body, rh.kind, v, "kernel object")?;
                    match self.fds.last_mut() {
                        Some(f) if f.rec.fd == r.fd && f.kind == FdKind::Kernel => {
                            f.kobj = Some((r.kind, state.to_vec()));
                        }
                        _ => {
                            return Err(ImageError::Malformed(format!(
                                "kernel object state for fd {} without its descriptor",
                                r.fd
                            )))
                        }
                    }
                }
                REC_STDIO_KOBJ => {
                    let (r, state): (KobjRec, _) =
                        read_fixed(body, rh.kind, v, "inherited socket")?;
                    match self.fds.last_mut() {
                        Some(f) if f.rec.fd == r.fd && f.kind == FdKind::Inherited => {
                            f.kobj = Some((r.kind, state.to_vec()));
                        }
                        _ => {
                            return Err(ImageError::Malformed(format!(
                                "inherited socket state for fd {} without its descriptor",
                                r.fd
                            )))
                        }
                    }
                }
                REC_THREAD => self.threads.push(read_fixed(body, rh.kind, v, "thread")?.0),
                REC_PIPE_DATA => {
                    let (r, bytes): (PipeDataRec, _) = read_fixed(body, rh.kind, v, "pipe data")?;
                    if r.flags & PIPE_NO_WRITERS != 0 {
                        self.writerless_pipes.push(r.ino);
                    }
                    if !bytes.is_empty() {
                        self.pipe_data.push((r.ino, bytes.to_vec()));
                    }
                }
                REC_FILE_DATA => {
                    let (r, bytes): (FileDataRec, _) = read_fixed(body, rh.kind, v, "file data")?;
                    self.file_data.push(((r.dev, r.ino), bytes.to_vec()));
                }
                REC_FILE_SPAN => self.file_spans.push(read_pod(body, "file span")?),
                REC_WARNING => self
                    .warnings
                    .push(String::from_utf8_lossy(body).into_owned()),
                REC_SHARES => {
                    let n = len / core::mem::size_of::<crate::image::tree::ShareRec>();
                    for i in 0..n {
                        let at = i * core::mem::size_of::<crate::image::tree::ShareRec>();
                        self.shares.push(read_pod(&body[at..], "shares")?);
                    }
                }
                REC_REGION_FS => {
                    let region = self.regions.last_mut().ok_or_else(|| {
                        ImageError::Malformed("region detail before region".into())
                    })?;
                    region.fs = Some(read_pod(body, "region file system")?);
                }
                REC_REGION_THP => {
                    let region = self.regions.last_mut().ok_or_else(|| {
                        ImageError::Malformed("huge page detail before region".into())
                    })?;
                    let t: RegionThpRec = read_pod(body, "region huge pages")?;
                    region.huge_bytes = t.huge_bytes;
                }
                REC_REGION_SYSV => {
                    let region = self.regions.last_mut().ok_or_else(|| {
                        ImageError::Malformed("SysV segment detail before region".into())
                    })?;
                    region.sysv = Some(read_pod(body, "SysV segment")?);
                }
                REC_SYSV_SEM => {
                    let head: SysvSemRec = read_pod(body, "SysV semaphore set")?;
                    let vals = body
                        .get(16..16 + head.nsems as usize * 2)
                        .ok_or_else(|| ImageError::Malformed("SysV semaphore set".into()))?;
                    let vals = vals
                        .chunks_exact(2)
                        .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                        .collect();
                    self.sems.push((head, vals));
                }
                REC_SYSV_MSG => self.msgqs.push(parse_msg_queue(body)?),
                REC_FD_OWNER => {
                    let o: FdOwnerRec = read_pod(body, "fd owner")?;
                    if let Some(f) = self.fds.iter_mut().rev().find(|f| f.rec.fd == o.fd) {
                        f.owner = Some(o);
                    }
                }
                REC_CREATED_SAVED => {
                    let r: CreatedSavedRec = read_pod(body, "created file")?;
                    let path = &body[core::mem::size_of::<CreatedSavedRec>()..];
                    if path.len() != r.path_len as usize || !path.starts_with(b"/") {
                        return Err(ImageError::Malformed("created file path".into()));
                    }
                    self.created.push((r, path.to_vec()));
                }
                REC_SAVED_OWNER => {
                    let r: SavedOwnerRec = read_pod(body, "saved file owner")?;
                    self.saved_owners.push(r);
                }
                REC_CREDS => {
                    let r: CredsRec = read_pod(body, "credentials")?;
                    let groups = &body[core::mem::size_of::<CredsRec>()..];
                    if groups.len() != r.ngroups as usize * 4 {
                        return Err(ImageError::Malformed("credentials groups".into()));
                    }
                    let groups = groups
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    self.creds = Some((r, groups));
                }
                REC_SAVED_DIR => {
                    let r: SavedDirRec = read_pod(body, "saved directory")?;
                    let path = &body[core::mem::size_of::<SavedDirRec>()..];
                    if path.len() != r.path_len as usize || !path.starts_with(b"/") {
                        return Err(ImageError::Malformed("saved directory path".into()));
                    }
                    if !self.saved_dirs.iter().any(|(_, p)| p == path) {
                        self.saved_dirs.push((r, path.to_vec()));
                    }
                }
                REC_FD_SAVED => {
                    // The first records were 32 bytes long (no `why`: SAVED_TMP).
                    if body.len() < 32 {
                        return Err(ImageError::Malformed("short saved file record".into()));
                    }
                    let mut r: FdSavedRec = bytemuck::Zeroable::zeroed();
                    let n = body.len().min(core::mem::size_of::<FdSavedRec>());
                    bytemuck::bytes_of_mut(&mut r)[..n].copy_from_slice(&body[..n]);
                    if let Some(f) = self.fds.last_mut().filter(|f| f.rec.fd == r.fd) {
                        f.saved = Some(r);
                    }
                }
                REC_PARENT if v >= 5 => {
                    let p: ParentRec = read_pod(body, "parent")?;
                    let path = body
                        .get(24..24 + p.path_len as usize)
                        .ok_or_else(|| ImageError::Malformed("short parent record".into()))?;
                    if p.depth == 0 || path.is_empty() {
                        return Err(ImageError::Malformed("bad parent record".into()));
                    }
                    self.parent = Some((p, path.to_vec()));
                }
                REC_REGION_INCR if v >= 5 => {
                    let region = self.regions.last_mut().ok_or_else(|| {
                        ImageError::Malformed("incremental detail before region".into())
                    })?;
                    let (s, e) = (region.rec.start, region.rec.end);
                    let holes: Vec<(u64, u64)> = body
                        .chunks_exact(16)
                        .map(|c| {
                            let a = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
                            let b = u64::from_le_bytes(c[8..].try_into().unwrap_or([0; 8]));
                            (a, b)
                        })
                        .collect();
                    if holes
                        .iter()
                        .any(|&(a, b)| a >= b || a < s || b > e || a % PAGE as u64 != 0)
                    {
                        return Err(ImageError::Malformed("bad incremental region".into()));
                    }
                    region.incr = Some(holes);
                }
                REC_FD_IN_FLIGHT => {
                    flight_next.push(read_pod::<i32>(body, "descriptor in flight")?);
                }
                REC_ZFRAMES if v >= VERSION_COMPRESSED => {
                    let n = len / core::mem::size_of::<ZFrame>();
                    self.zframes = (0..n)
                        .map(|i| read_pod(&body[i * core::mem::size_of::<ZFrame>()..], "frame"))
                        .collect::<Result<_, _>>()?;
                }
                REC_ZORIGIN if v >= VERSION_COMPRESSED => {
                    self.origin = Some(read_pod(body, "origin")?);
                }
                REC_END => break,
                k if k & REC_OPTIONAL != 0 => {} // detail a newer writer added: skip
                other => return Err(ImageError::Malformed(format!("unknown record {other}"))),
            }
        }
        if !saw_process {
            return Err(ImageError::Malformed("no process record".into()));
        }
        for &i in flights.iter().rev() {
            let f = self.fds.remove(i);
            self.in_flight.insert(0, f);
        }
        if self.parent.is_none() && self.regions.iter().any(|r| r.incr.is_some()) {
            return Err(ImageError::Malformed(
                "incremental region in an image without a parent".into(),
            ));
        }
        Ok(())
    }

    /// Extents must be page aligned, inside their region, and tile the data area in order.
    fn check_extents(&self) -> Result<(), ImageError> {
        let mut off = 0u64;
        for r in &self.regions {
            if r.rec.start >= r.rec.end || r.rec.start % PAGE as u64 != 0 {
                return Err(ImageError::Malformed("bad region bounds".into()));
            }
            for e in &r.extents {
                let ok = e.addr >= r.rec.start
                    && e.addr + e.len <= r.rec.end
                    && e.len % PAGE as u64 == 0
                    && e.file_off == off;
                if !ok {
                    return Err(ImageError::Malformed("bad extent".into()));
                }
                off += e.len;
            }
        }
        // The saved files' contents follow, each padded to whole pages, in order.
        let mut files = 0u64;
        for sp in &self.file_spans {
            if sp.data_off != files {
                return Err(ImageError::Malformed("bad file span".into()));
            }
            files = sp
                .size
                .checked_add(PAGE as u64 - 1)
                .map(|n| n & !(PAGE as u64 - 1))
                .and_then(|n| files.checked_add(n))
                .ok_or_else(|| ImageError::Malformed("bad file span".into()))?;
        }
        if !self.zframes.is_empty() {
            self.check_frames(off)?;
        }
        let off = self
            .stored_memory_len()
            .checked_add(files)
            .ok_or_else(|| ImageError::Malformed("bad file span".into()))?;
        if off != self.header.data_len
            || self.header.trailer_offset != self.header.data_offset + off
        {
            return Err(ImageError::Malformed(
                "data area size disagrees with extents".into(),
            ));
        }
        Ok(())
    }

    /// Frames must tile the raw page data (`raw_len` bytes) in order without crossing an
    /// extent, and lie inside the stored page data without overlapping, raw ones page aligned
    /// (in any order there: a split image's pieces the agent wrote come first).
    fn check_frames(&self, raw_len: u64) -> Result<(), ImageError> {
        let bad = |m: &str| Err(ImageError::Malformed(format!("bad compressed frame: {m}")));
        let mut bounds: Vec<u64> = self
            .regions
            .iter()
            .flat_map(|r| &r.extents)
            .map(|e| e.file_off + e.len)
            .collect();
        bounds.reverse();
        let mut raw = 0u64;
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(self.zframes.len());
        for f in &self.zframes {
            let raw_end = f.raw_off.checked_add(f.raw_len as u64);
            let stored_end = f.stored_off.checked_add(f.stored_len);
            let (Some(raw_end), Some(stored_end)) = (raw_end, stored_end) else {
                return bad("overflow");
            };
            while bounds.last().is_some_and(|&b| b <= raw) {
                bounds.pop();
            }
            if f.raw_off != raw || f.raw_len == 0 || !(f.raw_len as u64).is_multiple_of(PAGE as u64)
            {
                return bad("raw offsets");
            }
            if bounds.last().is_some_and(|&b| raw_end > b) {
                return bad("crosses an extent");
            }
            spans.push((f.stored_off, stored_end));
            match f.method {
                ZFRAME_RAW
                    if f.stored_len == f.raw_len as u64
                        && f.stored_off.is_multiple_of(PAGE as u64) => {}
                ZFRAME_ZSTD if f.stored_len > 0 => {}
                _ => return bad("method"),
            }
            raw = raw_end;
        }
        if raw != raw_len {
            return bad("they do not cover the page data");
        }
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[1].0 < w[0].1) {
            return bad("stored offsets");
        }
        Ok(())
    }

    /// What a delta image names this image by (`REC_PARENT`'s trailer hash and size): the
    /// trailer's, or for a compressed image those of the raw image it was made from.
    pub fn identity(&self) -> (u64, u64) {
        match self.origin {
            Some(o) => (o.trailer_hash, o.total_len),
            None => (self.trailer.trailer_hash, self.trailer.total_len),
        }
    }

    /// Whether the page data is compressed (`REC_ZFRAMES`).
    pub fn compressed(&self) -> bool {
        !self.zframes.is_empty()
    }

    /// Bytes the memory pages take in the data area: [`Image::memory_len`], or in a compressed
    /// image the stored frames, padded to a page.
    pub fn stored_memory_len(&self) -> u64 {
        if self.zframes.is_empty() {
            return self.memory_len();
        }
        // (The frames in raw order; a split image's last one may lie before others.)
        self.zframes
            .iter()
            .map(|f| page_align(f.stored_off + f.stored_len))
            .max()
            .unwrap_or(0)
    }

    /// The file offset of the raw page data `[off, off + len)` when it is stored as it is in
    /// one piece (always in an uncompressed image), for mapping it.
    pub fn raw_file_offset(&self, off: u64, len: u64) -> Option<u64> {
        if !self.compressed() {
            return Some(self.header.data_offset + off);
        }
        let i = self
            .zframes
            .partition_point(|f| f.raw_off + f.raw_len as u64 <= off);
        let first = self.zframes.get(i)?;
        let start = first.stored_off + (off - first.raw_off);
        let mut f = first;
        let mut k = i;
        loop {
            if f.method != ZFRAME_RAW
                || f.stored_off - f.raw_off != first.stored_off - first.raw_off
            {
                return None;
            }
            if f.raw_off + f.raw_len as u64 >= off + len {
                return Some(self.header.data_offset + start);
            }
            k += 1;
            f = self.zframes.get(k)?;
        }
    }

    /// Decompresses (or reads) frame `f` into `out` (`f.raw_len` bytes), checking it, with the
    /// reusable context `z`.
    pub fn read_frame(
        &self,
        file: &File,
        f: &ZFrame,
        out: &mut [u8],
        z: &mut super::compress::Inflater,
    ) -> Result<(), ImageError> {
        let at = self.header.data_offset + f.stored_off;
        if f.method == ZFRAME_RAW {
            file.read_exact_at(out, at)?;
            return Ok(());
        }
        z.frame(file, at, f.stored_len as usize, out)
            .map_err(|e| match e {
                super::compress::FrameError::Io(e) => e.into(),
                super::compress::FrameError::Bad(e) => ImageError::Malformed(format!(
                    "compressed frame at data offset {} (raw {}): {e}",
                    f.stored_off, f.raw_off
                )),
            })
    }

    /// Reads raw page data `[off, off + buf.len())` (offsets as an extent's `file_off`),
    /// decompressing the frames it lies in.
    pub fn read_pages(&self, file: &File, off: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        if !self.compressed() {
            file.read_exact_at(buf, self.header.data_offset + off)?;
            return Ok(());
        }
        let mut done = 0usize;
        let mut tmp = Vec::new();
        let mut z = super::compress::Inflater::new().map_err(ImageError::Malformed)?;
        while done < buf.len() {
            let at = off + done as u64;
            let i = self
                .zframes
                .partition_point(|f| f.raw_off + f.raw_len as u64 <= at);
            let f = self
                .zframes
                .get(i)
                .ok_or_else(|| ImageError::Malformed("page data past the frames".into()))?;
            let skip = (at - f.raw_off) as usize;
            let n = (f.raw_len as usize - skip).min(buf.len() - done);
            if f.method == ZFRAME_RAW {
                file.read_exact_at(
                    &mut buf[done..done + n],
                    self.header.data_offset + f.stored_off + skip as u64,
                )?;
            } else {
                tmp.resize(f.raw_len as usize, 0);
                self.read_frame(file, f, &mut tmp, &mut z)?;
                buf[done..done + n].copy_from_slice(&tmp[skip..skip + n]);
            }
            done += n;
        }
        Ok(())
    }

    /// Bytes of memory pages at the start of the data area (the saved files' contents follow).
    pub fn memory_len(&self) -> u64 {
        self.regions
            .iter()
            .flat_map(|r| &r.extents)
            .map(|e| e.len)
            .sum()
    }

    /// Where the saved contents of the file `(dev, ino)` are: in the metadata (older images,
    /// `REC_FILE_DATA`) or in the data area.
    pub fn saved_contents(&self, key: (u64, u64)) -> Option<SavedContents<'_>> {
        if let Some((_, d)) = self.file_data.iter().find(|(k, _)| *k == key) {
            return Some(SavedContents::Bytes(d));
        }
        let sp = self.file_spans.iter().find(|s| (s.dev, s.ino) == key)?;
        Some(SavedContents::Span {
            offset: self.header.data_offset + self.stored_memory_len() + sp.data_off,
            size: sp.size,
            hash: sp.hash,
        })
    }

    /// Streams all data and checks it: the memory pages against the trailer hash, each saved
    /// file's contents against its own.
    pub fn verify_data(&self, file: &File) -> Result<(), ImageError> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        let end = self.memory_len();
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            self.read_pages(file, off, &mut buf[..n])?;
            h.update(&buf[..n]);
            off += n as u64;
        }
        if h.digest() != self.trailer.data_hash {
            return Err(ImageError::Corrupt("page data"));
        }
        for sp in &self.file_spans {
            let Some(SavedContents::Span { offset, size, hash }) =
                self.saved_contents((sp.dev, sp.ino))
            else {
                continue;
            };
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            let mut done = 0u64;
            while done < size {
                let n = ((size - done) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], offset + done)?;
                h.update(&buf[..n]);
                done += n as u64;
            }
            if h.digest() != hash {
                return Err(ImageError::Corrupt("saved file contents"));
            }
        }
        Ok(())
    }
}

/// Where a saved file's contents are (see [`Image::saved_contents`]).
#[derive(Debug, Clone, Copy)]
pub enum SavedContents<'a> {
    /// In the metadata.
    Bytes(&'a [u8]),
    /// In the image file: `size` bytes at `offset`, whose xxh3-64 is `hash`.
    Span {
        /// Absolute offset in the image file.
        offset: u64,
        /// Bytes of contents.
        size: u64,
        /// xxh3-64 of them.
        hash: u64,
    },
}

fn read_at_most(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::writer::MetaWriter;
    use std::io::Write;

    #[test]
    fn msg_queue_records_parse() {
        let head = SysvMsgRec {
            key: 7,
            msqid: 3,
            mode: 0o640,
            qbytes: 4000,
            ..Default::default()
        };
        let mut body = bytemuck::bytes_of(&head).to_vec();
        for (t, text) in [(2i64, &b"two-a"[..]), (1, b""), (9, b"12345678")] {
            body.extend_from_slice(&(text.len() as u64).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(text);
            body.resize(body.len().div_ceil(8) * 8, 0);
        }
        let q = parse_msg_queue(&body).unwrap();
        assert_eq!(q.head, head);
        assert_eq!(
            q.msgs,
            vec![
                (2, b"two-a".to_vec()),
                (1, vec![]),
                (9, b"12345678".to_vec())
            ]
        );
        assert!(
            parse_msg_queue(&body[..body.len() - 9]).is_err(),
            "cut short"
        );
        let mut zero_type = bytemuck::bytes_of(&head).to_vec();
        zero_type.extend_from_slice(&[0u8; 16]);
        assert!(parse_msg_queue(&zero_type).is_err(), "type 0");
    }

    /// A minimal image (no memory) of format `version` with `extra` records before `REC_END`.
    fn image_file(version: u32, extra: &[(u32, &[u8])]) -> File {
        let mut meta = vec![0u8; 1 << 16];
        let mut w = MetaWriter::new(&mut meta);
        let p: ProcessRec = bytemuck::Zeroable::zeroed();
        w.record(REC_PROCESS, &p, &[]).unwrap();
        let mut fd: FdRec = bytemuck::Zeroable::zeroed();
        fd.kind = FdKind::Regular as u32;
        fd.fd = 7;
        fd.path_len = 4;
        // A version 2 writer's FdRec ends where version 2's fixed part ends.
        let fixed = fixed_size(REC_FD, version).unwrap();
        let mut fd_body = bytemuck::bytes_of(&fd)[..fixed].to_vec();
        fd_body.extend_from_slice(b"/tmp");
        w.raw(REC_FD, &fd_body).unwrap();
        for (kind, body) in extra {
            w.raw(*kind, body).unwrap();
        }
        w.raw(REC_END, &[]).unwrap();
        let meta_len = w.len();
        let meta = &meta[..meta_len];
        let data_offset = PAGE as u64 + page_align(meta_len as u64);
        let mut h: FileHeader = bytemuck::Zeroable::zeroed();
        h.magic = MAGIC;
        h.version = version;
        h.header_size = core::mem::size_of::<FileHeader>() as u32;
        h.arch = ARCH_X86_64;
        h.page_size = PAGE as u32;
        h.meta_offset = PAGE as u64;
        h.meta_len = meta_len as u64;
        h.meta_hash = hash(meta);
        h.data_offset = data_offset;
        h.trailer_offset = data_offset;
        let mut page = vec![0u8; PAGE];
        page[..core::mem::size_of::<FileHeader>()].copy_from_slice(bytemuck::bytes_of(&h));
        h.header_hash = page_hash(&page, core::mem::size_of::<FileHeader>());
        page[..core::mem::size_of::<FileHeader>()].copy_from_slice(bytemuck::bytes_of(&h));
        let mut t: Trailer = bytemuck::Zeroable::zeroed();
        t.magic = TRAILER_MAGIC;
        t.data_hash = hash(&[]);
        t.total_len = data_offset + PAGE as u64;
        let mut tpage = vec![0u8; PAGE];
        tpage[..core::mem::size_of::<Trailer>()].copy_from_slice(bytemuck::bytes_of(&t));
        t.trailer_hash = page_hash(&tpage, core::mem::size_of::<Trailer>());
        tpage[..core::mem::size_of::<Trailer>()].copy_from_slice(bytemuck::bytes_of(&t));
        // Tests run in parallel threads of one process: a counter keeps the names apart.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "libcr-reader-test-{}-{version}-{n}",
            std::process::id()
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(&page).unwrap();
        let mut m = meta.to_vec();
        m.resize((data_offset - PAGE as u64) as usize, 0);
        f.write_all(&m).unwrap();
        f.write_all(&tpage).unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn reads_every_version_from_the_oldest_supported() {
        for v in MIN_VERSION..=VERSION {
            let img = Image::open(&image_file(v, &[])).unwrap();
            assert_eq!(img.fds.len(), 1);
            assert_eq!(img.fds[0].rec.fd, 7);
            assert_eq!(img.fds[0].path, b"/tmp");
        }
        for v in [MIN_VERSION - 1, VERSION + 1] {
            assert!(matches!(
                Image::open(&image_file(v, &[])),
                Err(ImageError::Version(x)) if x == v
            ));
        }
    }

    #[test]
    fn unknown_optional_records_are_skipped_required_ones_refused() {
        let img = Image::open(&image_file(VERSION, &[(REC_OPTIONAL | 0x7777, b"later")]));
        assert!(img.is_ok());
        let img = Image::open(&image_file(VERSION, &[(0x7777, b"later")]));
        assert!(matches!(img, Err(ImageError::Malformed(m)) if m.contains("unknown record")));
    }

    #[test]
    fn fd_owner_record_attaches_to_its_descriptor() {
        let o = FdOwnerRec {
            fd: 7,
            owner_type: 1,
            owner_pid: 1234,
            signal: 37,
        };
        let img = Image::open(&image_file(
            VERSION,
            &[(REC_FD_OWNER, bytemuck::bytes_of(&o))],
        ))
        .unwrap();
        assert_eq!(img.fds[0].owner, Some(o));
        let img = Image::open(&image_file(VERSION, &[])).unwrap();
        assert_eq!(img.fds[0].owner, None);
    }
    #[test]
    fn file_spans_must_tile_the_data_after_the_memory_pages() {
        let key = (3, 4);
        let span = FileSpanRec {
            dev: 3,
            ino: 4,
            size: 0,
            data_off: 0,
            hash: hash(&[]),
        };
        let img = Image::open(&image_file(
            VERSION,
            &[(REC_FILE_SPAN, bytemuck::bytes_of(&span))],
        ))
        .unwrap();
        match img.saved_contents(key) {
            Some(SavedContents::Span { offset, size, .. }) => {
                assert_eq!((offset, size), (img.header.data_offset, 0));
            }
            other => panic!("want the span, got {other:?}"),
        }
        // A span the data area does not hold, or one out of place: refused.
        for bad in [
            FileSpanRec { size: 1, ..span },
            FileSpanRec {
                data_off: 4096,
                ..span
            },
            FileSpanRec {
                size: u64::MAX,
                ..span
            },
        ] {
            assert!(matches!(
                Image::open(&image_file(
                    VERSION,
                    &[(REC_FILE_SPAN, bytemuck::bytes_of(&bad))]
                )),
                Err(ImageError::Malformed(_))
            ));
        }
    }

    #[test]
    fn saved_directories_are_read_once_each() {
        let rec = |path: &[u8], mode| {
            let r = SavedDirRec {
                mode,
                uid: 1,
                gid: 2,
                path_len: path.len() as u32,
            };
            let mut b = bytemuck::bytes_of(&r).to_vec();
            b.extend_from_slice(path);
            b
        };
        let (a, b) = (rec(b"/tmp/ompi.x", 0o700), rec(b"/tmp/ompi.x/jf.1", 0o750));
        let again = rec(b"/tmp/ompi.x", 0o755);
        let img = Image::open(&image_file(
            VERSION,
            &[
                (REC_SAVED_DIR, &a),
                (REC_SAVED_DIR, &b),
                (REC_SAVED_DIR, &again),
            ],
        ))
        .unwrap();
        let got: Vec<(u32, &[u8])> = img
            .saved_dirs
            .iter()
            .map(|(r, p)| (r.mode, p.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0o700, &b"/tmp/ompi.x"[..]),
                (0o750, &b"/tmp/ompi.x/jf.1"[..])
            ]
        );
        let mut bad = rec(b"/tmp/x", 0o700);
        bad.push(b'y');
        assert!(matches!(
            Image::open(&image_file(VERSION, &[(REC_SAVED_DIR, &bad)])),
            Err(ImageError::Malformed(_))
        ));
    }

    #[test]
    fn saved_file_record_attaches_to_its_descriptor_with_its_data() {
        let saved = FdSavedRec {
            fd: 7,
            mode: 0o640,
            size: 3,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            why: SAVED_WRITTEN,
            _pad: 0,
        };
        let data = FileDataRec { dev: 0, ino: 0 };
        let mut body = bytemuck::bytes_of(&data).to_vec();
        body.extend_from_slice(b"abc");
        let img = Image::open(&image_file(
            VERSION,
            &[
                (REC_FILE_DATA, &body),
                (REC_FD_SAVED, bytemuck::bytes_of(&saved)),
            ],
        ))
        .unwrap();
        assert_eq!(img.fds[0].saved, Some(saved));
        assert_eq!(img.file_data, vec![((0, 0), b"abc".to_vec())]);
        // For another descriptor: ignored.
        let other = FdSavedRec { fd: 8, ..saved };
        let img = Image::open(&image_file(
            VERSION,
            &[(REC_FD_SAVED, bytemuck::bytes_of(&other))],
        ))
        .unwrap();
        assert_eq!(img.fds[0].saved, None);
        // A first-version record (32 bytes, no `why`): saved for being temporary.
        let img = Image::open(&image_file(
            VERSION,
            &[(REC_FD_SAVED, &bytemuck::bytes_of(&saved)[..32])],
        ))
        .unwrap();
        assert_eq!(
            img.fds[0].saved,
            Some(FdSavedRec {
                why: SAVED_TMP,
                ..saved
            })
        );
    }
}
