//! Re-opens the saved file descriptors at their numbers (in the restart child, before memory is
//! touched). The capture side is `agent::fds`.

use super::RestoreError;
use crate::image::format::FdKind;
use crate::image::reader::Image;
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

/// Puts every saved descriptor of process `idx` at its number: shared descriptions from the
/// `pool`, the standard descriptors (and pipe ends leading out of the job) from cr_restart's
/// own. Closes all other descriptors but `keep` and the pool's (closed after the memory is
/// mapped: shared memory comes from the pool too).
pub fn restore(
    img: &Image,
    idx: usize,
    pool: &super::pool::Pool,
    keep: &[i32],
) -> Result<(), RestoreError> {
    let wanted: Vec<i32> = img
        .fds
        .iter()
        .filter(|f| f.kind != FdKind::Unsupported)
        .map(|f| f.rec.fd)
        .collect();
    // What cr_restart's standard descriptor `fd` stands in for: kept as it is.
    let from_restarter = |fd: i32| {
        fd <= 2
            && img.fds.iter().any(|f| {
                f.rec.fd == fd
                    && (f.kind == FdKind::Inherited
                        || (f.kind == FdKind::Pipe && !pool.fds.contains_key(&(idx, fd))))
            })
    };
    // Close what the program did not have (cr_restart's own descriptors beyond 0-2 and the
    // stdio the program had closed).
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let open: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for fd in open {
            let stays = keep.contains(&fd)
                || pool.all.contains(&fd)
                || from_restarter(fd)
                || (fd <= 2 && wanted.contains(&fd) && pool.fds.contains_key(&(idx, fd)));
            if !stays {
                // SAFETY: closing descriptors of this (child) process.
                unsafe { libc::close(fd) };
            }
        }
    }
    for f in &img.fds {
        let r = &f.rec;
        let pooled = pool.fds.get(&(idx, r.fd)).copied();
        let newfd = match (f.kind, pooled) {
            (FdKind::Unsupported, _) => None,
            (_, Some(src)) => {
                // SAFETY: duplicating a pool descriptor onto the saved number.
                if unsafe { libc::dup2(src, r.fd) } < 0 {
                    return Err(RestoreError::new(
                        last_errno(),
                        format!("cannot place fd {}", r.fd),
                    ));
                }
                None
            }
            (FdKind::Pipe, None) if r.fd > 2 => {
                // A pipe end leading out of the job: cr_restart's stdin or stdout.
                let src = if r.flags & libc::O_ACCMODE == libc::O_RDONLY {
                    0
                } else {
                    1
                };
                // SAFETY: duplicating cr_restart's stdin/stdout.
                Some(unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 0) })
            }
            _ => {
                // Inherited stdio (terminal, outside pipe, socket): cr_restart's, if open.
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
        }
    }
    Ok(())
}
