//! Kernel objects behind descriptors that are neither files nor pipes: one module per kind,
//! each with its saved state, an allocation-free `capture` (run by the agent while the
//! program's threads are parked), a `restore` that makes a new descriptor with that state
//! (cr_restart, normal context), an optional `post_restore` once every descriptor of the
//! process is in place (epoll needs its targets), and `describe` for cr_info.
//!
//! Such descriptors are saved as an [`FdKind::Kernel`](crate::image::format::FdKind) `REC_FD`
//! followed by a `REC_KOBJ` record: [`KobjRec`](crate::image::format::KobjRec) naming the kind,
//! then the kind's state. They are told apart by their `/proc/self/fd` link text (all anonymous
//! inodes share one inode number, so `st_mode`/`st_ino` cannot tell them apart).

pub mod epoll;
pub mod eventfd;
pub mod inotify;
pub mod mqueue;
pub mod pty;
pub mod signalfd;
pub mod socket;
pub mod timerfd;
pub mod timewait;
pub mod unix;

use crate::sys::{self, Errno, StackBuf};
use std::os::fd::OwnedFd;

/// Largest saved state of one object (an epoll instance with about 680 targets).
pub const MAX_STATE: usize = 16 * 1024;

/// `KobjRec::kind` of an eventfd.
pub const EVENTFD: u32 = 1;
/// `KobjRec::kind` of a timerfd.
pub const TIMERFD: u32 = 2;
/// `KobjRec::kind` of a signalfd.
pub const SIGNALFD: u32 = 3;
/// `KobjRec::kind` of an epoll instance.
pub const EPOLL: u32 = 4;
/// `KobjRec::kind` of a TCP or UDP socket.
pub const SOCKET: u32 = 5;
/// `KobjRec::kind` of an inotify instance.
pub const INOTIFY: u32 = 6;
/// `KobjRec::kind` of a POSIX message queue descriptor.
pub const MQUEUE: u32 = 7;
/// `KobjRec::kind` of a pseudo-terminal master.
pub const PTY: u32 = 8;

/// A restore that failed: errno and one line naming the problem.
#[derive(Debug)]
pub struct KindError {
    /// errno describing the failure.
    pub errno: i32,
    /// One line naming the problem.
    pub msg: String,
}

impl KindError {
    /// The error of the last failed libc call, with what was being done.
    pub fn last(what: &str) -> Self {
        let e = std::io::Error::last_os_error();
        KindError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            msg: format!("{what}: {e}"),
        }
    }

    /// A saved state that does not parse.
    pub fn malformed(kind: &str) -> Self {
        KindError {
            errno: libc::EINVAL,
            msg: format!("corrupt image: malformed {kind} state"),
        }
    }
}

impl std::fmt::Display for KindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// One kind of kernel object.
pub trait Kind: Sync {
    /// Its `KobjRec::kind` value.
    fn id(&self) -> u32;
    /// Its name in messages and cr_info.
    fn name(&self) -> &'static str;
    /// The `/proc/self/fd` link text of its descriptors.
    fn link(&self) -> &'static [u8];
    /// Whether a descriptor with link text `link` is of this kind.
    fn matches(&self, link: &[u8]) -> bool {
        link == self.link()
    }
    /// The checkpoint's warning when `capture` failed with `e` (the descriptor is closed at
    /// restart).
    fn refusal(&self, _e: Errno) -> &'static [u8] {
        b"could not be read (its state is too large or unreadable); it will be closed at restart"
    }
    /// A warning the checkpoint gives about a saved object that will not come back as it was.
    fn checkpoint_warning(&self, _state: &[u8]) -> Option<&'static [u8]> {
        None
    }
    /// A warning with a number the checkpoint gives about a saved object: (text before, number,
    /// text after), e.g. how many bytes of queued events are lost.
    fn checkpoint_count_warning(
        &self,
        _state: &[u8],
    ) -> Option<(&'static [u8], u64, &'static [u8])> {
        None
    }
    /// Writes the state of the object behind `fd` into `out`; returns its length. Runs in the
    /// agent while the threads are parked: no allocation, no locks.
    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno>;
    /// A new descriptor of a new object with the saved `state` (its status flags are set by the
    /// caller).
    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError>;
    /// Runs in the restored process once all its descriptors are in place, on the lowest
    /// descriptor of each restored description; returns warnings.
    fn post_restore(&self, _fd: i32, _state: &[u8]) -> Result<Vec<String>, KindError> {
        Ok(Vec::new())
    }
    /// One line describing the saved state.
    fn describe(&self, state: &[u8]) -> String;
}

/// Every kind, by `id`.
pub static KINDS: &[&dyn Kind] = &[
    &eventfd::EventFd,
    &timerfd::TimerFd,
    &signalfd::SignalFd,
    &epoll::Epoll,
    &socket::Socket,
    &inotify::Inotify,
    &mqueue::Mqueue,
    &pty::Pty,
];

/// The kind whose descriptors have link text `link`.
pub fn by_link(link: &[u8]) -> Option<&'static dyn Kind> {
    KINDS.iter().copied().find(|k| k.matches(link))
}

/// The kind of descriptor `fd` with link text `link` and file type `fmt` (`S_IFMT` bits), if
/// one of `KINDS` saves it: by link text, or (message queues) by file system.
pub fn classify(fd: i32, link: &[u8], fmt: u32) -> Option<&'static dyn Kind> {
    by_link(link).or_else(|| mqueue::is_mqueue(fd, fmt).then_some(&mqueue::Mqueue as &dyn Kind))
}

/// The kind with `KobjRec::kind` `id`.
pub fn by_id(id: u32) -> Option<&'static dyn Kind> {
    KINDS.iter().copied().find(|k| k.id() == id)
}

/// Reads `/proc/self/fdinfo/FD` into `buf` (allocation-free); returns the text.
pub fn fdinfo(fd: i32, buf: &mut [u8]) -> Result<&[u8], Errno> {
    let mut path = StackBuf::<64>::new();
    path.push(b"/proc/self/fdinfo/").num(fd as u64);
    let n = sys::read_file(path.as_cstr(), buf)?;
    Ok(&buf[..n.min(buf.len())])
}

/// Streams the file at `path` (NUL-terminated) line by line through `line`, allocation-free
/// (lines up to 2 KiB; a longer one is `EPROTO`).
pub fn each_line(
    path: &[u8],
    mut line: impl FnMut(&[u8]) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let f = sys::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0)? as i32;
    let mut buf = [0u8; 2048];
    let mut have = 0;
    let res = loop {
        let n = match sys::read(f, &mut buf[have..]) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        have += n;
        let mut start = 0;
        let mut bad = Ok(());
        while let Some(nl) = buf[start..have].iter().position(|&b| b == b'\n') {
            if let Err(e) = line(&buf[start..start + nl]) {
                bad = Err(e);
                break;
            }
            start += nl + 1;
        }
        if bad.is_err() {
            break bad;
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if n == 0 {
            break if have > 0 { line(&buf[..have]) } else { Ok(()) };
        }
        if have == buf.len() {
            break Err(Errno(libc::EPROTO));
        }
    };
    sys::close(f);
    res
}

/// The value after `name` on the first line of `text` that starts with it, blanks trimmed.
pub fn field<'a>(text: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    text.split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(name))
        .map(trim)
}

/// `s` without leading and trailing blanks.
pub fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// Parses an unsigned number in `radix` (no sign, no prefix).
pub fn parse_u64(s: &[u8], radix: u32) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = (b as char).to_digit(radix)?;
        v = v.checked_mul(radix as u64)?.checked_add(d as u64)?;
    }
    Some(v)
}

/// Parses a decimal number with an optional leading `-` (SysV IPC keys in /proc/sysvipc).
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    match s.strip_prefix(b"-") {
        Some(d) => parse_u64(d, 10).map(|v| -(v as i64)),
        None => parse_u64(s, 10).map(|v| v as i64),
    }
}

/// Copies the plain-data `value` into the front of `out`; its size, or `ENOSPC`.
pub fn put<T: bytemuck::Pod>(out: &mut [u8], value: &T) -> Result<usize, Errno> {
    let bytes = bytemuck::bytes_of(value);
    out.get_mut(..bytes.len())
        .ok_or(Errno(libc::ENOSPC))?
        .copy_from_slice(bytes);
    Ok(bytes.len())
}

/// Reads a plain-data value from the front of `state`.
pub fn get<T: bytemuck::Pod>(state: &[u8]) -> Option<T> {
    let n = core::mem::size_of::<T>();
    state.get(..n).map(bytemuck::pod_read_unaligned)
}

/// Takes ownership of a descriptor a libc call returned (or the error it set).
pub fn owned(fd: i32, what: &str) -> Result<OwnedFd, KindError> {
    if fd < 0 {
        return Err(KindError::last(what));
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_and_parsed() {
        let text = b"pos:\t0\nflags:\t04002\neventfd-count:               1a\nsigmask:\t0000000800000200\n";
        assert_eq!(field(text, b"flags:"), Some(&b"04002"[..]));
        assert_eq!(
            parse_u64(field(text, b"eventfd-count:").unwrap(), 16),
            Some(26)
        );
        assert_eq!(
            parse_u64(field(text, b"sigmask:").unwrap(), 16),
            Some(0x800000200)
        );
        assert_eq!(field(text, b"missing:"), None);
        assert_eq!(parse_u64(b"", 10), None);
        assert_eq!(parse_u64(b"12x", 10), None);
        assert_eq!(parse_u64(b"ffffffffffffffffff", 16), None);
        assert_eq!(parse_i64(b"-1234"), Some(-1234));
        assert_eq!(parse_i64(b"77"), Some(77));
        assert_eq!(parse_i64(b"-"), None);
    }

    #[test]
    fn every_kind_is_found_by_link_and_id() {
        for k in KINDS.iter().filter(|k| k.id() != MQUEUE) {
            assert_eq!(by_link(k.link()).map(|x| x.id()), Some(k.id()));
            assert_eq!(by_id(k.id()).map(|x| x.name()), Some(k.name()));
        }
        assert!(by_link(b"anon_inode:[io_uring]").is_none());
        assert_eq!(by_link(b"socket:[1234]").map(|k| k.id()), Some(SOCKET));
    }
}
