//! Re-opens the saved file descriptors at their numbers (in the restart child, before memory is
//! touched). The capture side is `agent::fds`.

use super::RestoreError;
use crate::image::format::FdKind;
use crate::image::reader::Image;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

fn cpath(p: &[u8]) -> CString {
    CString::new(p.to_vec()).unwrap_or_default()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Moves `fd` to a number above every saved descriptor; returns the new number.
pub fn move_high(fd: i32, img: &Image) -> Result<i32, RestoreError> {
    let max = img.fds.iter().map(|f| f.rec.fd).max().unwrap_or(2).max(2);
    // SAFETY: fcntl on a descriptor we own.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, max + 10) };
    if n < 0 {
        return Err(RestoreError::new(
            last_errno(),
            "cannot move a descriptor out of the way".into(),
        ));
    }
    // SAFETY: closing the old number of a descriptor we own.
    unsafe { libc::close(fd) };
    Ok(n)
}

/// Opens every saved descriptor at its number and closes all others but `keep`.
pub fn restore(img: &Image, keep: &[i32]) -> Result<(), RestoreError> {
    let wanted: Vec<i32> = img
        .fds
        .iter()
        .filter(|f| f.kind != FdKind::Unsupported)
        .map(|f| f.rec.fd)
        .collect();
    // Close what the program did not have (cr_restart's own descriptors beyond 0-2 and the
    // stdio the program had closed).
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let open: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for fd in open {
            let inherited_stdio = fd <= 2
                && img
                    .fds
                    .iter()
                    .any(|f| f.rec.fd == fd && matches!(f.kind, FdKind::Inherited));
            if !keep.contains(&fd) && !inherited_stdio && (fd > 2 || !wanted.contains(&fd)) {
                // SAFETY: closing descriptors of this (child) process.
                unsafe { libc::close(fd) };
            }
        }
    }
    // Pipes with both ends in the image are re-created as one pipe; the others lead outside.
    let mut pipes: std::collections::HashMap<u64, [i32; 2]> = std::collections::HashMap::new();
    for f in img.fds.iter().filter(|f| f.kind == FdKind::Pipe) {
        let reads = img.fds.iter().any(|g| {
            g.kind == FdKind::Pipe
                && g.rec.ino == f.rec.ino
                && g.rec.flags & libc::O_ACCMODE == libc::O_RDONLY
        });
        let writes = img.fds.iter().any(|g| {
            g.kind == FdKind::Pipe
                && g.rec.ino == f.rec.ino
                && g.rec.flags & libc::O_ACCMODE != libc::O_RDONLY
        });
        if reads && writes && !pipes.contains_key(&f.rec.ino) {
            let mut p = [0i32; 2];
            // SAFETY: pipe2 with a valid array; the ends are moved above the saved numbers.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(RestoreError::new(
                    last_errno(),
                    "cannot create a pipe".into(),
                ));
            }
            pipes.insert(f.rec.ino, [move_high(p[0], img)?, move_high(p[1], img)?]);
        }
    }
    for f in &img.fds {
        let r = &f.rec;
        let newfd = match f.kind {
            FdKind::Regular | FdKind::CharDevice | FdKind::Directory | FdKind::CheckpointFile => {
                let mut flags =
                    r.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
                if f.kind == FdKind::Directory {
                    flags = libc::O_RDONLY | libc::O_DIRECTORY;
                }
                let p = cpath(&f.path);
                // SAFETY: open with a valid C string.
                let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
                if fd < 0 {
                    let e = last_errno();
                    return Err(RestoreError::new(
                        e,
                        format!(
                            "cannot reopen {} (fd {}): {}",
                            std::ffi::OsStr::from_bytes(&f.path).to_string_lossy(),
                            r.fd,
                            std::io::Error::from_raw_os_error(e)
                        ),
                    ));
                }
                if f.kind == FdKind::Regular {
                    let writable = r.flags & libc::O_ACCMODE != libc::O_RDONLY;
                    // SAFETY: fstat/ftruncate/lseek on the descriptor just opened.
                    unsafe {
                        let mut st: libc::stat = std::mem::zeroed();
                        // Files being written are cut back to their checkpoint size (as BLCR):
                        // output appended after the checkpoint is what the program will write again.
                        if writable && libc::fstat(fd, &mut st) == 0 && st.st_size > r.size {
                            libc::ftruncate(fd, r.size);
                        }
                    }
                }
                if matches!(f.kind, FdKind::Regular | FdKind::Directory) {
                    // SAFETY: as above.
                    unsafe { libc::lseek(fd, r.offset, libc::SEEK_SET) };
                }
                if f.kind == FdKind::CheckpointFile {
                    // The image was written through this descriptor: it stands at the image's
                    // end, as in the original process after the checkpoint.
                    // SAFETY: as above.
                    unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
                }
                Some(fd)
            }
            FdKind::Inherited => {
                // SAFETY: probing a descriptor number.
                if unsafe { libc::fcntl(r.fd, libc::F_GETFD) } >= 0 {
                    None
                } else {
                    // SAFETY: open with a literal path.
                    Some(unsafe {
                        libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC)
                    })
                }
            }
            FdKind::Pipe => {
                let read_end = r.flags & libc::O_ACCMODE == libc::O_RDONLY;
                let src = match pipes.get(&r.ino) {
                    Some(p) => p[if read_end { 0 } else { 1 }],
                    None if read_end => 0,
                    None => 1,
                };
                // SAFETY: duplicating cr_restart's stdin/stdout.
                Some(unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 0) })
            }
            FdKind::Unsupported => None,
        };
        if let Some(fd) = newfd {
            if fd < 0 {
                return Err(RestoreError::new(
                    last_errno(),
                    format!("cannot recreate fd {}", r.fd),
                ));
            }
            if fd != r.fd {
                // SAFETY: dup2 onto the saved number, then drop the temporary.
                unsafe {
                    if libc::dup2(fd, r.fd) < 0 {
                        return Err(RestoreError::new(
                            last_errno(),
                            format!("cannot place fd {}", r.fd),
                        ));
                    }
                    libc::close(fd);
                }
            }
        }
        if f.kind != FdKind::Unsupported {
            // SAFETY: setting the close-on-exec flag as saved.
            unsafe { libc::fcntl(r.fd, libc::F_SETFD, r.fd_flags & libc::FD_CLOEXEC) };
            if matches!(
                f.kind,
                FdKind::Regular | FdKind::CharDevice | FdKind::Pipe | FdKind::CheckpointFile
            ) {
                // Status flags (O_NONBLOCK, O_APPEND, …) as saved.
                let settable = libc::O_APPEND
                    | libc::O_NONBLOCK
                    | libc::O_ASYNC
                    | libc::O_DIRECT
                    | libc::O_NOATIME;
                // SAFETY: F_SETFL on a descriptor we own.
                unsafe { libc::fcntl(r.fd, libc::F_SETFL, r.flags & settable) };
            }
        }
    }
    for p in pipes.values() {
        // SAFETY: closing the temporary pipe ends; the program's numbers hold duplicates.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }
    Ok(())
}
