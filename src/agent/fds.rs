//! Open file descriptors: one record per fd, with what the restart loader needs to reopen it.
//! (The restore side is `restore::fds`.)

use crate::image::format::*;
use crate::image::writer::MetaWriter;
use crate::sys::{self, Errno, StackBuf};

fn is_tty_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143)
}

/// Appends an `REC_FD` record for every open descriptor except those in `skip`; descriptors of
/// the same file as `image_fd` (the program's own handle on its context file) are marked.
pub fn capture(w: &mut MetaWriter, skip: &[i32], image_fd: i32) -> Result<(), Errno> {
    let image = sys::fstat(image_fd).ok().map(|s| (s.st_dev, s.st_ino));
    let dir = sys::open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )? as i32;
    let mut buf = [0u8; 4096];
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
            if fd < 0 || fd == dir || skip.contains(&fd) {
                continue;
            }
            one(w, fd, image)?;
        }
    })();
    sys::close(dir);
    res
}

fn one(w: &mut MetaWriter, fd: i32, image: Option<(u64, u64)>) -> Result<(), Errno> {
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
    let (kind, warn): (FdKind, Option<&[u8]>) = match fmt {
        libc::S_IFREG if is_image => (FdKind::CheckpointFile, None),
        libc::S_IFREG if deleted => (
            FdKind::Unsupported,
            Some(b"is an unlinked file; it will be closed at restart"),
        ),
        libc::S_IFREG => (FdKind::Regular, None),
        libc::S_IFDIR => (FdKind::Directory, None),
        libc::S_IFCHR if is_tty_major(libc::major(st.st_rdev)) && stdio => {
            (FdKind::Inherited, None)
        }
        libc::S_IFCHR => (FdKind::CharDevice, None),
        libc::S_IFIFO if stdio => (FdKind::Inherited, None),
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
        FdKind::Regular | FdKind::Directory => {
            sys::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(0) as i64
        }
        _ => 0,
    };
    let rec = FdRec {
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
