//! Images read from a stream (`cr_restart -`, `cr_restart -F FD` on a pipe or socket,
//! `cr_request_restart` given one): every reader of the image format reads by offset (header,
//! trailer, metadata, then each process's page data, the chain's links, saved files), which a
//! pipe cannot do. A source that is not a regular file is therefore read to its end once, into
//! an unnamed in-memory file (a `memfd`, sealed against changes once full), and the restart reads
//! that. Its page data is then read in full before the program runs, never mapped from it
//! (`crate::restore::memory::lazy_refusal`), so the memory the stream took is given back as soon
//! as the restart is done; `cr_restart --verbose` says so. No file is written anywhere.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd};

/// Name of the in-memory file a stream is read into (shows in `/proc/PID/fd` as `/memfd:NAME`).
const MEMFD_NAME: &[u8] = b"libcr-stream\0";

/// The seals that make a filled in-memory image immutable.
const SEALS: i32 = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Whether `file` can be read by offset as an image: a regular file (or a directory, which
/// the caller refuses itself).
pub fn is_seekable(file: &File) -> bool {
    file.metadata()
        .map(|m| m.file_type().is_file() || m.is_dir())
        .unwrap_or(true)
}

/// Reads the stream `src` to its end into a sealed in-memory file; returns it and its length.
pub fn spool(mut src: &File) -> io::Result<(File, u64)> {
    // SAFETY: a NUL-terminated name and valid flags; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            MEMFD_NAME.as_ptr().cast(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is ours.
    let mut mem = unsafe { File::from_raw_fd(fd) };
    let len = io::copy(&mut src, &mut mem)?;
    // SAFETY: F_ADD_SEALS takes an int.
    if unsafe { libc::fcntl(mem.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((mem, len))
}

/// Whether `file` is an image read from a stream by [`spool`] (an in-memory file sealed
/// against writes).
pub fn is_spooled(file: &File) -> bool {
    // SAFETY: F_GET_SEALS takes no argument; a file that is not a memfd gives EINVAL.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_WRITE != 0
}

/// What a stream source is, for messages ("a pipe", "a socket", ...).
pub fn kind(file: &File) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match file.metadata().map(|m| m.file_type()) {
        Ok(t) if t.is_fifo() => "a pipe",
        Ok(t) if t.is_socket() => "a socket",
        Ok(t) if t.is_char_device() => "a character device",
        _ => "a stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_pipe_is_spooled_into_a_sealed_memory_file() {
        let mut fds = [0i32; 2];
        // SAFETY: a valid array for pipe2.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are ours.
        let (r, mut w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        assert!(!is_seekable(&r));
        let writer = std::thread::spawn(move || {
            let chunk = vec![7u8; 1 << 20];
            for _ in 0..3 {
                w.write_all(&chunk).unwrap();
            }
        });
        let (mem, len) = spool(&r).expect("spool");
        writer.join().unwrap();
        assert_eq!(len, 3 << 20);
        assert!(is_seekable(&mem) && is_spooled(&mem));
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut b, (3 << 20) - 4).unwrap();
        assert_eq!(b, [7; 4]);
        assert!((&mem).write_all(b"x").is_err(), "sealed against writes");
        assert_eq!(kind(&r), "a pipe");
    }
}
