//! Open file descriptors: one record per fd, with what the restart loader needs to reopen it,
//! which descriptors share one open file description (`kcmp`), and the bytes buffered in every
//! pipe (copied with `tee`, so the program's data stays where it was). (The restore side is
//! `restore::fds`.)

use crate::image::format::*;
use crate::image::writer::MetaWriter;
use crate::kinds;
use crate::sys::{self, Errno, StackBuf};

fn is_tty_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143)
}

/// Appends an `REC_FD` record for every open descriptor except those in `skip`; descriptors of
/// the same file as `image_fd` (the program's own handle on its context file) are marked. Files
/// under temporary directories are saved by content up to `tmp_limit` bytes in all (`None`:
/// none is).
pub fn capture(
    w: &mut MetaWriter,
    skip: &[i32],
    image_fd: i32,
    tmp_limit: Option<i64>,
) -> Result<(), Errno> {
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
                || crate::api::requests::is_request_socket(fd)
            {
                continue;
            }
            one(w, fd, image, &mut seen)?;
        }
    })();
    sys::close(dir);
    res
}

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
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    sys::sys3(libc::SYS_poll as usize, &mut p as *mut _ as usize, 1, 0).is_ok()
        && p.revents & libc::POLLHUP != 0
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

/// Saves the contents of the file behind `fd` (read with `pread`: the offset stays; a
/// descriptor open only for writing or `O_PATH` is read through a new one opened by
/// `/proc/self/fd`).
fn save_file_data(w: &mut MetaWriter, fd: i32, st: &libc::stat) -> Result<(), Errno> {
    let rec = FileDataRec {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    let size = st.st_size.max(0) as usize;
    let fl = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
    let own = if fl & libc::O_ACCMODE == libc::O_WRONLY || fl & libc::O_PATH != 0 {
        let mut link = StackBuf::<64>::new();
        link.push(b"/proc/self/fd/").num(fd as u64);
        sys::open(link.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .ok()
            .map(|r| r as i32)
    } else {
        None
    };
    let reader = own.unwrap_or(fd);
    let res = w
        .record_fill(REC_FILE_DATA, &rec, size, |buf| {
            let mut got = 0;
            while got < buf.len() {
                let r = sys::sys6(
                    libc::SYS_pread64 as usize,
                    reader as usize,
                    buf[got..].as_mut_ptr() as usize,
                    buf.len() - got,
                    got,
                    0,
                    0,
                );
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            got
        })
        .map_err(|_| Errno(libc::ENOMEM));
    if let Some(r) = own {
        sys::close(r);
    }
    res
}

/// Whether `path` is inside directory `dir` (given without a trailing slash).
fn inside(path: &[u8], dir: &[u8]) -> bool {
    !dir.is_empty() && path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

/// Whether `path` lies under a temporary directory: /tmp, /var/tmp, /dev/shm, /run/user/UID or
/// the process's `$TMPDIR`.
fn is_temporary(path: &[u8]) -> bool {
    if [&b"/tmp"[..], b"/var/tmp", b"/dev/shm"]
        .iter()
        .any(|d| inside(path, d))
    {
        return true;
    }
    let mut run = StackBuf::<64>::new();
    // SAFETY: getuid cannot fail.
    run.push(b"/run/user/")
        .num(unsafe { libc::getuid() } as u64);
    if inside(path, run.as_bytes()) {
        return true;
    }
    // SAFETY: getenv reads the environment in place (no allocation, no lock) and returns a
    // NUL-terminated string or null.
    let tmpdir = unsafe { libc::getenv(c"TMPDIR".as_ptr()) };
    if tmpdir.is_null() {
        return false;
    }
    // SAFETY: non-null, NUL-terminated (above).
    let mut dir = unsafe { core::ffi::CStr::from_ptr(tmpdir) }.to_bytes();
    while dir.len() > 1 && dir.ends_with(b"/") {
        dir = &dir[..dir.len() - 1];
    }
    dir.starts_with(b"/") && dir != b"/" && inside(path, dir)
}

/// What becomes of a regular file under a temporary directory: saved by content (its data
/// written now or with an earlier descriptor), or left to be reopened by path with a warning.
fn save_temporary(
    w: &mut MetaWriter,
    fd: i32,
    st: &libc::stat,
    seen: &mut Seen,
) -> Result<Option<&'static [u8]>, Errno> {
    if seen.has_saved(st) {
        return Ok(None);
    }
    let limit = seen.tmp_limit.unwrap_or(0);
    let size = st.st_size.max(0);
    // Room for the rest of the metadata: the buffer also holds every later record.
    let room = w.room() as i64 - (8 << 20);
    if size > MAX_SAVED_TMP_FILE {
        return Ok(Some(
            b"is a temporary file larger than 16 MiB: not saved, it must still exist at restart",
        ));
    }
    if seen.tmp_bytes + size > limit || size > room {
        return Ok(Some(
            b"is a temporary file over the limit of temporary files an image saves \
              (--save-tmp-limit, 32 MiB per process by default): not saved, it must still exist \
              at restart",
        ));
    }
    if !seen.first_time(st) {
        return Ok(Some(
            b"is a temporary file over the number of files an image saves: not saved",
        ));
    }
    seen.tmp_bytes += size;
    save_file_data(w, fd, st)?;
    Ok(None)
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
    let mut state = [0u8; kinds::MAX_STATE];
    // A socket on 0-2 is inherited from cr_restart, as BLCR did, unless its other end is in
    // the restart job (a launcher's socket pair on a child's stdin): its state goes with it.
    let stdio_socket = stdio && path.starts_with(b"socket:");
    let classified = kinds::classify(fd, path, fmt);
    let object_kind = classified.filter(|_| !stdio_socket);
    let stdio_kobj = match classified.filter(|_| stdio_socket) {
        Some(k) => k.capture(fd, &mut state).ok().map(|n| (k, n)),
        None => None,
    };
    let (kobj, refused) = match object_kind.map(|k| (k, k.capture(fd, &mut state))) {
        Some((k, Ok(n))) => (Some((k, n)), None),
        Some((k, Err(e))) => (None, Some(k.refusal(e))),
        None => (None, None),
    };
    let (kind, warn): (FdKind, Option<&[u8]>) = match fmt {
        _ if kobj.is_some() => (
            FdKind::Kernel,
            kobj.and_then(|(k, n)| k.checkpoint_warning(&state[..n])),
        ),
        _ if refused.is_some() => (FdKind::Unsupported, refused),
        libc::S_IFREG if is_image => (FdKind::CheckpointFile, None),
        libc::S_IFREG if deleted && st.st_size <= MAX_UNLINKED_FILE => (FdKind::Unlinked, None),
        libc::S_IFREG if deleted => (
            FdKind::Unsupported,
            Some(b"is an unlinked file larger than 16 MiB; it will be closed at restart"),
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
    if let Some((k, len)) = kobj {
        let head = KobjRec { fd, kind: k.id() };
        w.record(REC_KOBJ, &head, &state[..len])
            .map_err(|_| Errno(libc::ENOMEM))?;
    }
    if let (FdKind::Inherited, Some((k, len))) = (kind, stdio_kobj) {
        let head = KobjRec { fd, kind: k.id() };
        w.record(REC_STDIO_KOBJ, &head, &state[..len])
            .map_err(|_| Errno(libc::ENOMEM))?;
    }
    if kind != FdKind::Unsupported {
        save_owner(w, fd)?;
    }
    let mut warn = warn;
    if kind == FdKind::Regular && seen.tmp_limit.is_some() && is_temporary(path) {
        match save_temporary(w, fd, &st, seen)? {
            Some(text) => warn = Some(text),
            None => {
                let saved = FdSavedRec {
                    fd,
                    mode: st.st_mode & 0o7777,
                    size: st.st_size,
                    mtime_sec: st.st_mtime,
                    mtime_nsec: st.st_mtime_nsec,
                };
                w.record(REC_FD_SAVED, &saved, &[])
                    .map_err(|_| Errno(libc::ENOMEM))?;
            }
        }
    }
    if kind == FdKind::Unlinked && seen.first_time(&st) {
        save_file_data(w, fd, &st)?;
    }
    if kind == FdKind::Pipe && seen.first_time(&st) {
        // A pipe we cannot copy keeps running; only its buffered bytes are not in the image.
        let _ = save_pipe_data(w, fd, st.st_ino, pipe_size);
    }
    if let Some((before, n, after)) =
        kobj.and_then(|(k, n)| k.checkpoint_count_warning(&state[..n]))
    {
        let mut msg = StackBuf::<512>::new();
        msg.push(b"fd ")
            .num(fd as u64)
            .push(b" (")
            .push(path)
            .push(b") ")
            .push(before)
            .num(n)
            .push(after);
        w.raw(REC_WARNING, msg.as_bytes())
            .map_err(|_| Errno(libc::ENOMEM))?;
    }
    if let Some(text) = warn {
        let mut msg = StackBuf::<512>::new();
        msg.push(b"fd ")
            .num(fd as u64)
            .push(b" (")
            .push(path)
            .push(b") ")
            .push(text);
        w.raw(REC_WARNING, msg.as_bytes())
            .map_err(|_| Errno(libc::ENOMEM))?;
    }
    Ok(())
}
