//! Open file descriptors: one record per fd, with what the restart loader needs to reopen it,
//! which descriptors share one open file description (`kcmp`), and the bytes buffered in every
//! pipe (copied with `tee`, so the program's data stays where it was). (The restore side is
//! `restore::fds`.)

use super::scratch::FileSpan;
use crate::image::format::*;
use crate::image::writer::MetaWriter;
use crate::kinds;
use crate::protocol::SaveFiles;
use crate::sys::{self, Errno, StackBuf};

fn is_tty_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143)
}

/// Appends an `REC_FD` record for every open descriptor except those in `skip`; descriptors of
/// the same file as `image_fd` (the program's own handle on its context file) are marked. Files
/// under temporary directories (and `files`' further directories) are saved by content up to
/// `tmp_limit` bytes in all (`None`: none is), files open for writing as `files` says. Returns
/// the bytes of temporary files saved (mapped ones share the limit).
pub fn capture(
    w: &mut MetaWriter,
    skip: &[i32],
    image_fd: i32,
    tmp_limit: Option<i64>,
    files: &SaveFiles,
    spans: &mut Spans,
) -> Result<i64, Errno> {
    let image = sys::fstat(image_fd).ok().map(|s| (s.st_dev, s.st_ino));
    let dir = sys::open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )? as i32;
    let mut buf = [0u8; 4096];
    let mut seen = Seen {
        list: [(0, 0, 0); SEEN_MAX],
        n: 0,
        saved: [(0, 0); SEEN_MAX],
        nsaved: 0,
        tmp_bytes: 0,
        tmp_limit,
        written_bytes: 0,
        written_limit: files.written_limit(),
    };
    let res = (|| loop {
        let len = sys::getdents64(dir, &mut buf)?;
        if len == 0 {
            return Ok(());
        }
        let mut pos = 0;
        while pos < len {
            let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
            let fd = super::quiesce::parse_dec(&buf[pos + 19..pos + reclen]) as i32;
            pos += reclen;
            if fd < 0
                || fd == dir
                || skip.contains(&fd)
                || super::incremental::is_own_fd(fd)
                || super::forward::owns(fd)
                || super::offload::owns_fd(fd)
                || crate::api::requests::is_request_socket(fd)
                || kinds::unix::is_in_flight(fd)
            {
                continue;
            }
            one(w, fd, image, &mut seen, files, spans)?;
        }
    })();
    sys::close(dir);
    res?;
    // The descriptors in flight in unix sockets that their peeks installed (more may be met
    // while they are recorded: a socket in flight with descriptors in its own queue), each
    // after a marker that it is not the program's.
    let mut i = 0;
    while let Some(fd) = kinds::unix::in_flight(i) {
        i += 1;
        if sys::fstat(fd).is_err() {
            continue;
        }
        let mut mark = [0u8; 8];
        mark[..4].copy_from_slice(&fd.to_ne_bytes());
        w.raw(REC_FD_IN_FLIGHT, &mark)
            .map_err(|_| Errno(libc::ENOMEM))?;
        one(w, fd, image, &mut seen, files, spans)?;
    }
    save_created(w, &mut seen, files, spans)?;
    Ok(seen.tmp_bytes)
}

/// Saves the files this process created with `mkstemp` & co. ([`super::created`]) that are
/// still there under a temporary directory and were not saved with a descriptor: a
/// [`REC_CREATED_SAVED`] record each (over the limit: a warning naming it). The agent's own
/// read-only descriptor of each is closed once the contents are written (`write_spans`).
fn save_created(
    w: &mut MetaWriter,
    seen: &mut Seen,
    files: &SaveFiles,
    spans: &mut Spans,
) -> Result<(), Errno> {
    if seen.tmp_limit.is_none() {
        return Ok(());
    }
    let mut res = Ok(());
    super::created::each(|path| {
        if res.is_err() {
            return;
        }
        let Some(why) = temporary_reason(path, files) else {
            return;
        };
        let mut c = StackBuf::<4096>::new();
        c.push(path);
        let st = match sys::stat(c.as_cstr(), libc::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG && !seen.has_saved(&st) => st,
            _ => return,
        };
        let Ok(fd) = sys::open(c.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
            return;
        };
        let fd = fd as i32;
        let n = spans.n;
        res = (|| {
            match save_temporary(w, fd, &st, seen, why, spans)? {
                Some(text) => {
                    let mut m = StackBuf::<1024>::new();
                    m.push(b"created file ").push(path).push(b" ").push(text);
                    w.raw(REC_WARNING, m.as_bytes())
                        .map_err(|_| Errno(libc::ENOMEM))?;
                }
                None => {
                    let rec = CreatedSavedRec {
                        saved: FdSavedRec {
                            fd: -1,
                            mode: st.st_mode & 0o7777,
                            size: st.st_size,
                            mtime_sec: st.st_mtime,
                            mtime_nsec: st.st_mtime_nsec,
                            why,
                            _pad: 0,
                        },
                        dev: st.st_dev,
                        ino: st.st_ino,
                        path_len: path.len() as u32,
                        _pad: 0,
                    };
                    w.record(REC_CREATED_SAVED, &rec, path)
                        .map_err(|_| Errno(libc::ENOMEM))?;
                    save_parent_dirs(w, path, files)?;
                }
            }
            Ok(())
        })();
        if spans.n > n {
            spans.list[n]._pad = SPAN_OWN_FD;
        } else {
            sys::close(fd);
        }
    });
    res?;
    let lost = super::created::forgotten();
    if lost > 0 {
        let mut m = StackBuf::<320>::new();
        m.num(lost as u64)
            .push(b" files this process made with mkstemp & co. are no longer tracked (it keeps ")
            .num(super::created::SLOTS as u64)
            .push(
                b" still there at a time): one that nobody has open is not saved and, if the \
                  program deletes it, missing at restart",
            );
        w.raw(REC_WARNING, m.as_bytes())
            .map_err(|_| Errno(libc::ENOMEM))?;
    }
    Ok(())
}

/// `FileSpan::_pad`: the descriptor is the agent's own, closed once the contents are written.
const SPAN_OWN_FD: u32 = 1;

/// How many descriptors (and pipes) are compared for shared descriptions per checkpoint.
const SEEN_MAX: usize = 1024;

/// Descriptors recorded so far: (dev, ino, fd), and the objects (pipes, unlinked files) whose
/// contents are saved: (dev, ino).
struct Seen {
    list: [(u64, u64, i32); SEEN_MAX],
    n: usize,
    saved: [(u64, u64); SEEN_MAX],
    nsaved: usize,
    /// Bytes of files under temporary directories saved so far (at most `tmp_limit`).
    tmp_bytes: i64,
    /// The most bytes of such files saved (`None`: none is).
    tmp_limit: Option<i64>,
    /// Bytes of other files open for writing saved so far (`--save-written`).
    written_bytes: i64,
    /// The most bytes of those saved (`None`: none is).
    written_limit: Option<i64>,
}

impl Seen {
    /// The lowest earlier descriptor with the same open file description as `fd`, else `fd`.
    fn dup_of(&mut self, fd: i32, st: &libc::stat) -> i32 {
        let me = sys::getpid() as usize;
        let found = self.list[..self.n]
            .iter()
            .filter(|&&(d, i, _)| d == st.st_dev && i == st.st_ino)
            .map(|&(_, _, other)| other)
            .find(|&other| {
                // kcmp(pid, pid, KCMP_FILE, a, b) == 0: the same struct file.
                sys::sys6(
                    libc::SYS_kcmp as usize,
                    me,
                    me,
                    0,
                    other as usize,
                    fd as usize,
                    0,
                ) == Ok(0)
            });
        if self.n < SEEN_MAX {
            self.list[self.n] = (st.st_dev, st.st_ino, fd);
            self.n += 1;
        }
        found.unwrap_or(fd)
    }

    /// Whether the contents of the object behind `st` are saved already.
    fn has_saved(&self, st: &libc::stat) -> bool {
        self.saved[..self.nsaved].contains(&(st.st_dev, st.st_ino))
    }

    /// Whether the object behind `st` (a pipe or unlinked file) is met for the first time (its
    /// contents still to be saved).
    fn first_time(&mut self, st: &libc::stat) -> bool {
        let key = (st.st_dev, st.st_ino);
        if self.saved[..self.nsaved].contains(&key) || self.nsaved == SEEN_MAX {
            return false;
        }
        self.saved[self.nsaved] = key;
        self.nsaved += 1;
        true
    }
}

/// Whether nobody has the pipe behind read end `fd` open for writing any more (its writers
/// exited, e.g. `seq` of `seq | cksum` before `cksum` read it all): `poll` says `POLLHUP`. Only
/// the process's own descriptor can tell: a reader opened now would not see the hang-up of
/// writers that were gone before it opened. A write end means there is a writer: us.
fn no_writers(fd: i32) -> bool {
    let fl = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
    if fl & libc::O_ACCMODE != libc::O_RDONLY {
        return false;
    }
    sys::poll_one(fd, libc::POLLIN, 0) & libc::POLLHUP != 0
}

/// Copies the bytes buffered in the pipe behind `fd` into the tail of a `REC_PIPE_DATA` record
/// without consuming them: `tee` from a read end (opened through /proc when `fd` is the write
/// end) into a private pipe of the same capacity, then read from that one.
fn save_pipe_data(w: &mut MetaWriter, fd: i32, ino: u64, size: u32) -> Result<(), Errno> {
    let mut link = StackBuf::<64>::new();
    link.push(b"/proc/self/fd/").num(fd as u64);
    let reader = sys::open(
        link.as_cstr(),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        0,
    )? as i32;
    let mut tmp = [0i32; 2];
    if sys::sys3(
        libc::SYS_pipe2 as usize,
        tmp.as_mut_ptr() as usize,
        (libc::O_NONBLOCK | libc::O_CLOEXEC) as usize,
        0,
    )
    .is_err()
    {
        sys::close(reader);
        return Err(Errno(libc::EMFILE));
    }
    let _ = sys::fcntl(tmp[1], libc::F_SETPIPE_SZ, size as usize);
    let copied = sys::sys6(
        libc::SYS_tee as usize,
        reader as usize,
        tmp[1] as usize,
        size as usize,
        libc::SPLICE_F_NONBLOCK as usize,
        0,
        0,
    )
    .unwrap_or(0);
    let rec = PipeDataRec {
        ino,
        pipe_size: size,
        flags: if no_writers(fd) { PIPE_NO_WRITERS } else { 0 },
    };
    let res = if copied == 0 && rec.flags == 0 {
        Ok(())
    } else if copied == 0 {
        w.record(REC_PIPE_DATA, &rec, &[])
            .map_err(|_| Errno(libc::ENOMEM))
    } else {
        w.record_fill(REC_PIPE_DATA, &rec, copied, |buf| {
            let mut got = 0;
            while got < buf.len() {
                match sys::read(tmp[0], &mut buf[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            got
        })
        .map_err(|_| Errno(libc::ENOMEM))
    };
    sys::close(tmp[0]);
    sys::close(tmp[1]);
    sys::close(reader);
    res
}

/// The files one image saves by content: their descriptors and where their bytes go in the
/// saved-file area, which follows the memory pages in the data area ([`REC_FILE_SPAN`]).
pub struct Spans<'a> {
    list: &'a mut [FileSpan],
    n: usize,
    /// Bytes of the saved-file area so far (each file padded to a page multiple).
    pub total: u64,
    buf: &'a mut [u8],
}

impl Drop for Spans<'_> {
    /// Closes the agent's own descriptors of saved files whose contents were not written (a
    /// checkpoint that failed first).
    fn drop(&mut self) {
        for s in &mut self.list[..self.n] {
            if s._pad == SPAN_OWN_FD {
                sys::close(s.fd);
                s._pad = 0;
            }
        }
    }
}

impl<'a> Spans<'a> {
    /// An empty set kept in `list`, copying through `buf` (page aligned, a page multiple).
    pub fn new(list: &'a mut [FileSpan], buf: &'a mut [u8]) -> Self {
        Spans {
            list,
            n: 0,
            total: 0,
            buf,
        }
    }

    /// Whether no file is saved.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// A descriptor that reads the file behind `fd` from its start without moving `fd`'s offset:
/// `fd` itself (read with `pread`) unless it is open only for writing or `O_PATH`, else a new
/// one opened through `/proc/self/fd` (`Some`: to be closed).
fn file_reader(fd: i32) -> (i32, Option<i32>) {
    let fl = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
    if fl & libc::O_ACCMODE != libc::O_WRONLY && fl & libc::O_PATH == 0 {
        return (fd, None);
    }
    let mut link = StackBuf::<64>::new();
    link.push(b"/proc/self/fd/").num(fd as u64);
    match sys::open(link.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        Ok(r) => (r as i32, Some(r as i32)),
        Err(_) => (fd, None),
    }
}

/// Reads up to `buf.len()` bytes of `reader` at `off` (fewer only at the end of the file).
fn pread_full(reader: i32, buf: &mut [u8], off: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        let r = sys::sys6(
            libc::SYS_pread64 as usize,
            reader as usize,
            buf[got..].as_mut_ptr() as usize,
            buf.len() - got,
            off as usize + got,
            0,
            0,
        );
        match r {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

/// Hashes the first `size` bytes of the file behind `reader` (zeros past its end), `buf` at a
/// time.
fn hash_file(reader: i32, size: u64, buf: &mut [u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut off = 0u64;
    while off < size {
        let n = ((size - off) as usize).min(buf.len());
        let got = pread_full(reader, &mut buf[..n], off);
        buf[got..n].fill(0);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.digest()
}

/// Saves the contents of the file behind `fd`: a [`REC_FILE_SPAN`] record with their size and
/// hash now (read with `pread`: the offset stays), the bytes themselves into the data area when
/// the image is written ([`write_spans`]). Returns false when the image saves no more files.
fn save_file_data(
    w: &mut MetaWriter,
    fd: i32,
    st: &libc::stat,
    spans: &mut Spans,
) -> Result<bool, Errno> {
    if spans.n == spans.list.len() {
        return Ok(false);
    }
    let size = st.st_size.max(0) as u64;
    let (reader, own) = file_reader(fd);
    let hash = hash_file(reader, size, spans.buf);
    if let Some(r) = own {
        sys::close(r);
    }
    let rec = FileSpanRec {
        dev: st.st_dev,
        ino: st.st_ino,
        size,
        data_off: spans.total,
        hash,
    };
    w.record(REC_FILE_SPAN, &rec, &[])
        .map_err(|_| Errno(libc::ENOMEM))?;
    spans.list[spans.n] = FileSpan {
        fd,
        _pad: 0,
        size,
        hash,
        data_off: spans.total,
    };
    spans.n += 1;
    spans.total += page_align(size);
    Ok(true)
}

/// Writes the saved files' contents (the saved-file area, after the memory pages), each padded
/// with zeros to a page multiple, through the copy buffer. A file whose contents changed since
/// they were hashed (a writer outside the checkpoint) fails the checkpoint (`EAGAIN`), as the
/// image would not restore. `deadline_ns` as for the memory pages.
pub fn write_spans(out: i32, spans: &mut Spans, deadline_ns: u64) -> Result<(), Errno> {
    for i in 0..spans.n {
        let s = spans.list[i];
        let (reader, own) = file_reader(s.fd);
        let res = (|| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            let len = page_align(s.size);
            let mut off = 0u64;
            while off < len {
                super::image::write_must_stop(deadline_ns)?;
                let n = ((len - off) as usize).min(spans.buf.len());
                let content = (s.size.saturating_sub(off) as usize).min(n);
                let got = pread_full(reader, &mut spans.buf[..content], off);
                spans.buf[got..n].fill(0);
                h.update(&spans.buf[..content]);
                super::image::write_mem(out, spans.buf.as_ptr() as usize, n)?;
                off += n as u64;
            }
            if h.digest() != s.hash {
                return Err(Errno(libc::EAGAIN));
            }
            Ok(())
        })();
        if let Some(r) = own {
            sys::close(r);
        }
        if s._pad == SPAN_OWN_FD {
            sys::close(s.fd);
            spans.list[i]._pad = 0;
        }
        res?;
    }
    Ok(())
}

/// Whether `path` is inside directory `dir` (given without a trailing slash).
fn inside(path: &[u8], dir: &[u8]) -> bool {
    !dir.is_empty() && path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

/// Why a file at `path` is saved by content when it lies under a temporary directory:
/// [`SAVED_TMP`] under /tmp, /var/tmp, /dev/shm, /run/user/UID or the process's `$TMPDIR`,
/// [`SAVED_DIR`] under a `--save-dir` directory of `files`. Allocation-free.
pub fn temporary_reason(path: &[u8], files: &SaveFiles) -> Option<u32> {
    if [&b"/tmp"[..], b"/var/tmp", b"/dev/shm"]
        .iter()
        .any(|d| inside(path, d))
    {
        return Some(SAVED_TMP);
    }
    let mut run = StackBuf::<64>::new();
    // SAFETY: getuid cannot fail.
    run.push(b"/run/user/")
        .num(unsafe { libc::getuid() } as u64);
    if inside(path, run.as_bytes()) {
        return Some(SAVED_TMP);
    }
    // SAFETY: getenv reads the environment in place (no allocation, no lock) and returns a
    // NUL-terminated string or null.
    let tmpdir = unsafe { libc::getenv(c"TMPDIR".as_ptr()) };
    if !tmpdir.is_null() {
        // SAFETY: non-null, NUL-terminated (above).
        let mut dir = unsafe { core::ffi::CStr::from_ptr(tmpdir) }.to_bytes();
        while dir.len() > 1 && dir.ends_with(b"/") {
            dir = &dir[..dir.len() - 1];
        }
        if dir.starts_with(b"/") && dir != b"/" && inside(path, dir) {
            return Some(SAVED_TMP);
        }
    }
    files
        .dirs()
        .any(|d| d.starts_with(b"/") && (d == b"/" || inside(path, d)))
        .then_some(SAVED_DIR)
}

/// Writes a [`REC_SAVED_DIR`] record for each directory between a temporary directory and the
/// saved file at `path` that `w` has none for yet (its mode and owner, for a restart after the
/// program's cleanup removed them). Allocation-free.
pub fn save_parent_dirs(w: &mut MetaWriter, path: &[u8], files: &SaveFiles) -> Result<(), Errno> {
    let mut end = path.len();
    while let Some(i) = path[..end].iter().rposition(|&b| b == b'/') {
        let dir = &path[..i];
        if i == 0 || temporary_reason(dir, files).is_none() {
            break;
        }
        end = i;
        if w.has_record(REC_SAVED_DIR, core::mem::size_of::<SavedDirRec>(), dir) {
            continue;
        }
        let mut c = StackBuf::<4096>::new();
        c.push(dir);
        let Ok(st) = sys::stat(c.as_cstr(), libc::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            continue;
        }
        let rec = SavedDirRec {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            path_len: dir.len() as u32,
        };
        w.record(REC_SAVED_DIR, &rec, dir)
            .map_err(|_| Errno(libc::ENOMEM))?;
    }
    Ok(())
}

/// What becomes of a regular file saved by content for reason `why` ([`SAVED_TMP`],
/// [`SAVED_DIR`], [`SAVED_WRITTEN`]): saved (its data written now or with an earlier
/// descriptor), or left to be reopened by path with a warning.
fn save_temporary(
    w: &mut MetaWriter,
    fd: i32,
    st: &libc::stat,
    seen: &mut Seen,
    why: u32,
    spans: &mut Spans,
) -> Result<Option<&'static [u8]>, Errno> {
    if seen.has_saved(st) {
        return Ok(None);
    }
    let written = why == SAVED_WRITTEN;
    let (used, limit) = if written {
        (seen.written_bytes, seen.written_limit.unwrap_or(0))
    } else {
        (seen.tmp_bytes, seen.tmp_limit.unwrap_or(0))
    };
    let size = st.st_size.max(0);
    if used + size > limit {
        return Ok(Some(if written {
            b"is a file open for writing over the limit of such files an image saves \
              (--save-written=SIZE, 1 GiB per process by default): not saved, it must still \
              exist at restart"
        } else {
            b"is a temporary file over the limit of temporary files an image saves \
              (--save-tmp-limit, 1 GiB per process by default): not saved, it must still exist \
              at restart"
        }));
    }
    if !seen.first_time(st) || !save_file_data(w, fd, st, spans)? {
        return Ok(Some(
            b"is a file over the number of files an image saves: not saved",
        ));
    }
    if written {
        seen.written_bytes += size;
    } else {
        seen.tmp_bytes += size;
    }
    let owner = SavedOwnerRec {
        dev: st.st_dev,
        ino: st.st_ino,
        uid: st.st_uid,
        gid: st.st_gid,
    };
    w.record(REC_SAVED_OWNER, &owner, &[])
        .map_err(|_| Errno(libc::ENOMEM))?;
    Ok(None)
}

/// The largest unlinked open file saved: 16 MiB, or `--save-tmp-limit` when that is larger.
fn unlinked_limit(seen: &Seen) -> i64 {
    MAX_UNLINKED_FILE.max(seen.tmp_limit.unwrap_or(0))
}

/// Records who gets the async-I/O signals of `fd` (`F_SETOWN`) and which (`F_SETSIG`), when
/// either was set.
fn save_owner(w: &mut MetaWriter, fd: i32) -> Result<(), Errno> {
    // struct f_owner_ex { int type; pid_t pid; }
    let mut owner = [0i32; 2];
    if sys::fcntl(fd, sys::fcntl_cmd::F_GETOWN_EX, owner.as_mut_ptr() as usize).is_err() {
        owner = [0, 0];
    }
    let signal = sys::fcntl(fd, sys::fcntl_cmd::F_GETSIG, 0).unwrap_or(0) as i32;
    if owner[1] == 0 && signal == 0 {
        return Ok(());
    }
    let rec = FdOwnerRec {
        fd,
        owner_type: owner[0],
        owner_pid: owner[1],
        signal,
    };
    w.record(REC_FD_OWNER, &rec, &[])
        .map_err(|_| Errno(libc::ENOMEM))
}

fn one(
    w: &mut MetaWriter,
    fd: i32,
    image: Option<(u64, u64)>,
    seen: &mut Seen,
    files: &SaveFiles,
    spans: &mut Spans,
) -> Result<(), Errno> {
    let Ok(st) = sys::fstat(fd) else {
        return Ok(());
    };
    let is_image = image == Some((st.st_dev, st.st_ino));
    let mut link = StackBuf::<64>::new();
    link.push(b"/proc/self/fd/").num(fd as u64);
    let mut path = [0u8; 4096];
    let plen = sys::readlink(link.as_cstr(), &mut path).unwrap_or(0);
    let path = &path[..plen];
    let flags = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
    let fd_flags = sys::fcntl(fd, libc::F_GETFD, 0).unwrap_or(0) as i32;
    let fmt = st.st_mode & libc::S_IFMT;
    let stdio = fd <= 2;
    let deleted = path.ends_with(b" (deleted)");
    // A kernel object one of `kinds` saves: its state first (a failure makes it unsupported).
    // It is captured straight into the metadata, where the tail of its `REC_KOBJ` (or
    // `REC_STDIO_KOBJ`) record will be once the `REC_FD` record before it is written: a
    // socket's queued bytes (megabytes) need no buffer of their own. Other kinds keep to
    // `kinds::MAX_STATE`.
    let hsize = core::mem::size_of::<RecordHeader>();
    let skip = hsize
        + align8(core::mem::size_of::<FdRec>() + path.len())
        + hsize
        + core::mem::size_of::<KobjRec>();
    // A socket on 0-2 is inherited from cr_restart, as BLCR did, unless its other end is in
    // the restart job (a launcher's socket pair on a child's stdin): its state goes with it.
    let stdio_socket = stdio && path.starts_with(b"socket:");
    let classified = kinds::classify(fd, path, fmt);
    let object_kind = classified.filter(|_| !stdio_socket);
    let capture = |w: &mut MetaWriter, k: &'static dyn kinds::Kind| {
        let room = w.ahead(skip);
        let most = if k.id() == kinds::SOCKET {
            room.len()
        } else {
            room.len().min(kinds::MAX_STATE)
        };
        let out = &mut room[..most];
        k.capture(fd, out).map(|n| {
            let n = n.min(most);
            let st = &out[..n];
            let warnings = (k.checkpoint_warning(st), k.checkpoint_count_warning(st));
            (k, n, warnings)
        })
    };
    let stdio_kobj = match classified.filter(|_| stdio_socket) {
        Some(k) => capture(w, k).ok(),
        None => None,
    };
    let (kobj, refused) = match object_kind.map(|k| (k, capture(w, k))) {
        Some((_, Ok(c))) => (Some(c), None),
        Some((k, Err(e))) => (None, Some(k.refusal(e))),
        None => (None, None),
    };
    let (kind, warn): (FdKind, Option<&[u8]>) = match fmt {
        _ if kobj.is_some() => (FdKind::Kernel, kobj.and_then(|(_, _, (w, _))| w)),
        _ if refused.is_some() => (FdKind::Unsupported, refused),
        libc::S_IFREG if is_image => (FdKind::CheckpointFile, None),
        libc::S_IFREG if deleted && st.st_size <= unlinked_limit(seen) => (FdKind::Unlinked, None),
        libc::S_IFREG if deleted => (
            FdKind::Unsupported,
            Some(
                b"is an unlinked file larger than the limit of files an image saves (16 MiB, or \
                  --save-tmp-limit when larger); it will be closed at restart",
            ),
        ),
        libc::S_IFREG => (FdKind::Regular, None),
        libc::S_IFDIR => (FdKind::Directory, None),
        libc::S_IFCHR if is_tty_major(libc::major(st.st_rdev)) && stdio => {
            (FdKind::Inherited, None)
        }
        libc::S_IFCHR => (FdKind::CharDevice, None),
        // Pipes on 0-2 too: in a tree their other end may be another process of the job.
        libc::S_IFIFO => (FdKind::Pipe, None),
        _ if stdio => (FdKind::Inherited, None),
        libc::S_IFSOCK => (
            FdKind::Unsupported,
            Some(b"is a socket; it will be closed at restart"),
        ),
        _ => (
            FdKind::Unsupported,
            Some(b"is not a file libcr can restore; it will be closed at restart"),
        ),
    };
    let offset = match kind {
        FdKind::Regular | FdKind::Directory | FdKind::Unlinked => {
            sys::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(0) as i64
        }
        _ => 0,
    };
    let pipe_size = if kind == FdKind::Pipe {
        sys::fcntl(fd, libc::F_GETPIPE_SZ, 0).unwrap_or(0) as u32
    } else {
        0
    };
    let rec = FdRec {
        dup_of: seen.dup_of(fd, &st),
        pipe_size,
        fd,
        kind: kind as u32,
        flags,
        fd_flags,
        offset,
        size: st.st_size,
        dev: st.st_dev,
        ino: st.st_ino,
        mode: st.st_mode,
        path_len: path.len() as u32,
    };
    w.record(REC_FD, &rec, path)
        .map_err(|_| Errno(libc::ENOMEM))?;
    // The state is in place already (`capture` above): only the head is written.
    if let Some((k, len, _)) = kobj {
        let head = KobjRec { fd, kind: k.id() };
        w.record_placed(REC_KOBJ, &head, len)
            .map_err(|_| Errno(libc::ENOMEM))?;
    }
    if let (FdKind::Inherited, Some((k, len, _))) = (kind, stdio_kobj) {
        let head = KobjRec { fd, kind: k.id() };
        w.record_placed(REC_STDIO_KOBJ, &head, len)
            .map_err(|_| Errno(libc::ENOMEM))?;
    }
    if kind != FdKind::Unsupported {
        save_owner(w, fd)?;
    }
    let mut warn = warn;
    // Saved by content: under a temporary directory, or open for writing (--save-written).
    let why = if kind == FdKind::Regular {
        temporary_reason(path, files)
            .filter(|_| seen.tmp_limit.is_some())
            .or_else(|| {
                (flags & libc::O_ACCMODE != libc::O_RDONLY && seen.written_limit.is_some())
                    .then_some(SAVED_WRITTEN)
            })
    } else {
        None
    };
    if let Some(why) = why {
        match save_temporary(w, fd, &st, seen, why, spans)? {
            Some(text) => warn = Some(text),
            None => {
                let saved = FdSavedRec {
                    fd,
                    mode: st.st_mode & 0o7777,
                    size: st.st_size,
                    mtime_sec: st.st_mtime,
                    mtime_nsec: st.st_mtime_nsec,
                    why,
                    _pad: 0,
                };
                w.record(REC_FD_SAVED, &saved, &[])
                    .map_err(|_| Errno(libc::ENOMEM))?;
                save_parent_dirs(w, path, files)?;
            }
        }
    }
    if kind == FdKind::Unlinked && seen.first_time(&st) && !save_file_data(w, fd, &st, spans)? {
        warn = Some(b"is an unlinked file over the number of files an image saves: not saved");
    }
    if kind == FdKind::Pipe && seen.first_time(&st) {
        // A pipe we cannot copy keeps running; only its buffered bytes are not in the image.
        let _ = save_pipe_data(w, fd, st.st_ino, pipe_size);
    }
    if kind == FdKind::Pipe && path.first() == Some(&b'/') {
        // A named FIFO under a temporary directory (Open MPI's debugger FIFO in its session
        // directory, removed on SIGTERM): its directories' modes, to make them again.
        save_parent_dirs(w, path, files)?;
    }
    if let Some((before, n, after)) = kobj.and_then(|(_, _, (_, count))| count) {
        warn_about_fd(w, fd, path, |m| {
            m.push(before).num(n).push(after);
        })?;
    }
    if let Some(text) = warn {
        warn_about_fd(w, fd, path, |m| {
            m.push(text);
        })?;
    }
    Ok(())
}

/// Records the warning "fd N (PATH) ..." whose rest `text` writes (allocation-free).
fn warn_about_fd(
    w: &mut MetaWriter,
    fd: i32,
    path: &[u8],
    text: impl FnOnce(&mut StackBuf<512>),
) -> Result<(), Errno> {
    let mut msg = StackBuf::<512>::new();
    msg.push(b"fd ")
        .num(fd as u64)
        .push(b" (")
        .push(path)
        .push(b") ");
    text(&mut msg);
    w.raw(REC_WARNING, msg.as_bytes())
        .map_err(|_| Errno(libc::ENOMEM))
}
