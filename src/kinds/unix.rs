//! Unix sockets (the `AF_UNIX` half of [`super::socket`]). A connected socket whose peer is in
//! the restart job comes back as one end of a new socket pair with the other, with the bytes
//! queued for reading at each end (stream sockets; a datagram or seqpacket socket with queued
//! messages is refused at checkpoint); one whose peer is not in the job comes back with its
//! peer gone (end of file, `EPIPE`), with a warning. A listening socket is bound to its path or
//! abstract name again (a stale socket file of the original is replaced) and listens:
//! connections that waited to be accepted are lost. The peer of a socket is found with the
//! `NETLINK_SOCK_DIAG` request `ss -x` uses (no privilege needed).

use super::{get, owned, put, KindError};
use crate::sys::{self, Errno};
use bytemuck::{Pod, Zeroable};
use std::os::fd::{AsRawFd, OwnedFd};

/// Not bound, not connected.
pub const ROLE_UNCONNECTED: u32 = 0;
/// Listening on `name`.
pub const ROLE_LISTENING: u32 = 1;
/// Connected to socket `peer`.
pub const ROLE_CONNECTED: u32 = 2;
/// Bound to `name`, not listening or connected (a datagram socket).
pub const ROLE_BOUND: u32 = 3;

/// Most bytes a stream socket may have queued for reading to be saved.
pub const MAX_QUEUED: usize = 12 * 1024;

/// The saved state of a Unix socket; the bytes queued for reading follow (`queued`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct UnixState {
    /// `AF_UNIX` (first, as in every socket state).
    pub domain: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub sock_type: i32,
    /// `ROLE_*`.
    pub role: u32,
    /// Bytes queued for reading (they follow this record).
    pub queued: u32,
    /// This socket's inode.
    pub ino: u64,
    /// The connected peer's inode (0: none).
    pub peer: u64,
    /// Length of `name` (0: unnamed; abstract names start with a NUL byte).
    pub name_len: u32,
    /// Reserved (0).
    pub _pad: u32,
    /// `sun_path` of the bound name.
    pub name: [u8; 108],
    /// Reserved (0).
    pub _pad2: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<UnixState>() == 152);

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_PEER: u16 = 2;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DiagRequest {
    // struct nlmsghdr
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    // struct unix_diag_req
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<DiagRequest>() == 40);

/// The inode of the peer of socket `ino` (0: none), through `NETLINK_SOCK_DIAG`.
fn peer_of(ino: u64) -> Result<u64, Errno> {
    let nl = sys::sys3(
        libc::SYS_socket as usize,
        libc::AF_NETLINK as usize,
        (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize,
        libc::NETLINK_SOCK_DIAG as usize,
    )? as i32;
    let req = DiagRequest {
        len: 40,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: !0,
        ino: ino as u32,
        show: UDIAG_SHOW_PEER,
        cookie: [!0, !0],
    };
    let mut answer = [0u8; 512];
    let res = sys::write_all(nl, bytemuck::bytes_of(&req)).and_then(|_| sys::read(nl, &mut answer));
    sys::close(nl);
    let n = res?;
    let msg = &answer[..n.min(answer.len())];
    // nlmsghdr (16) + unix_diag_msg (16), then attributes { len: u16, type: u16, data }.
    let kind = u16::from_ne_bytes([
        msg.get(4).copied().unwrap_or(0),
        msg.get(5).copied().unwrap_or(0),
    ]);
    if n < 32 || kind != SOCK_DIAG_BY_FAMILY {
        return Err(Errno(libc::EPROTO));
    }
    let mut at = 32;
    while at + 4 <= msg.len() {
        let alen = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let atype = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
        if alen < 4 {
            break;
        }
        if atype == UNIX_DIAG_PEER && alen >= 8 && at + 8 <= msg.len() {
            let v = u32::from_ne_bytes([msg[at + 4], msg[at + 5], msg[at + 6], msg[at + 7]]);
            return Ok(v as u64);
        }
        at += (alen + 3) & !3;
    }
    Ok(0)
}

/// Saves the Unix socket `fd` (allocation-free; the threads are parked).
pub fn capture(fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
    let sock_type = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let st = sys::fstat(fd)?;
    let mut s = UnixState {
        domain: libc::AF_UNIX,
        sock_type,
        role: ROLE_UNCONNECTED,
        queued: 0,
        ino: st.st_ino,
        peer: 0,
        name_len: 0,
        _pad: 0,
        name: [0; 108],
        _pad2: [0; 4],
    };
    let mut addr = [0u8; 110];
    let mut len: libc::socklen_t = 110;
    if sys::sys3(
        libc::SYS_getsockname as usize,
        fd as usize,
        addr.as_mut_ptr() as usize,
        &mut len as *mut _ as usize,
    )
    .is_ok()
        && len as usize > 2
    {
        let n = (len as usize - 2).min(108);
        s.name[..n].copy_from_slice(&addr[2..2 + n]);
        s.name_len = n as u32;
    }
    if sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0 {
        s.role = ROLE_LISTENING;
        return put(out, &s);
    }
    s.peer = peer_of(st.st_ino)?;
    s.role = if s.peer != 0 {
        ROLE_CONNECTED
    } else if s.name_len > 0 {
        ROLE_BOUND
    } else {
        ROLE_UNCONNECTED
    };
    // What is queued for reading, peeked (not consumed).
    let head = core::mem::size_of::<UnixState>();
    let room = out.len().saturating_sub(head).min(MAX_QUEUED);
    let inq = sys::bytes_waiting(fd)?;
    if inq > 0 {
        if sock_type != libc::SOCK_STREAM || inq > room {
            return Err(Errno(libc::EMSGSIZE));
        }
        s.queued = sys::peek(fd, &mut out[head..head + inq])? as u32;
    }
    put(out, &s)?;
    Ok(head + s.queued as usize)
}

/// The state and the queued bytes of a saved Unix socket.
pub fn parse(state: &[u8]) -> Result<(UnixState, &[u8]), KindError> {
    let s: UnixState = get(state).ok_or_else(|| KindError::malformed("unix socket"))?;
    let head = core::mem::size_of::<UnixState>();
    let bytes = state
        .get(head..head + s.queued as usize)
        .ok_or_else(|| KindError::malformed("unix socket"))?;
    Ok((s, bytes))
}

/// Whether a saved socket state is a Unix one.
pub fn is_unix(state: &[u8]) -> bool {
    get::<i32>(state) == Some(libc::AF_UNIX)
}

/// (own inode, peer inode) of a connected Unix socket.
pub fn connection(state: &[u8]) -> Option<(u64, u64)> {
    let (s, _) = parse(state).ok()?;
    (s.role == ROLE_CONNECTED).then_some((s.ino, s.peer))
}

fn write_queued(to: &OwnedFd, bytes: &[u8]) -> Result<(), KindError> {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: writing from a slice we own to our own socket.
        let n = unsafe {
            libc::send(
                to.as_raw_fd(),
                bytes[done..].as_ptr().cast(),
                bytes.len() - done,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            return Err(KindError::last(
                "cannot put back the bytes queued in a unix socket",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// A new connected pair for `a` and its peer `b` (`None`: the peer is not in the job, it is
/// closed at once); each end gets the bytes that were queued for reading at it.
pub fn restore_pair(a: &[u8], b: Option<&[u8]>) -> Result<(OwnedFd, Option<OwnedFd>), KindError> {
    let (sa, qa) = parse(a)?;
    let mut sv = [0i32; 2];
    // SAFETY: socketpair fills a local array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            sa.sock_type | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(KindError::last("cannot create a unix socket pair"));
    }
    let end_a = owned(sv[0], "socketpair")?;
    let end_b = owned(sv[1], "socketpair")?;
    write_queued(&end_b, qa)?;
    match b {
        Some(b) => {
            let (_, qb) = parse(b)?;
            write_queued(&end_a, qb)?;
            Ok((end_a, Some(end_b)))
        }
        None => Ok((end_a, None)),
    }
}

/// A Unix socket that is not connected in the job: listening, bound or unnamed.
pub fn restore_single(state: &[u8]) -> Result<OwnedFd, KindError> {
    let (s, _) = parse(state)?;
    if s.role == ROLE_CONNECTED {
        return Ok(restore_pair(state, None)?.0);
    }
    // SAFETY: socket takes no pointers.
    let fd = owned(
        unsafe { libc::socket(libc::AF_UNIX, s.sock_type | libc::SOCK_CLOEXEC, 0) },
        "cannot create a unix socket",
    )?;
    if s.role == ROLE_LISTENING || s.role == ROLE_BOUND {
        let n = (s.name_len as usize).min(108);
        // SAFETY: sockaddr_un is plain data.
        let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as u16;
        for (d, &c) in addr.sun_path.iter_mut().zip(&s.name[..n]) {
            *d = c as libc::c_char;
        }
        let len = (2 + n) as libc::socklen_t;
        if n > 0 && s.name[0] != 0 {
            // A path: the original's socket file is in the way (it is not removed at exit).
            let path = std::ffi::CString::new(
                s.name[..n]
                    .split(|&c| c == 0)
                    .next()
                    .unwrap_or(&[])
                    .to_vec(),
            )
            .unwrap_or_default();
            let mut st: libc::stat = unsafe { core::mem::zeroed() };
            // SAFETY: lstat and unlink with a valid C string.
            unsafe {
                if libc::lstat(path.as_ptr(), &mut st) == 0
                    && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
                {
                    libc::unlink(path.as_ptr());
                }
            }
        }
        // SAFETY: bind reads `len` bytes of a local sockaddr_un.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        } != 0
        {
            return Err(KindError::last(&format!(
                "cannot bind a unix socket to {} again",
                describe_name(&s)
            )));
        }
        // SAFETY: listen takes no pointers.
        if s.role == ROLE_LISTENING && unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) } != 0
        {
            return Err(KindError::last("cannot listen on a unix socket again"));
        }
    }
    Ok(fd)
}

fn describe_name(s: &UnixState) -> String {
    let n = (s.name_len as usize).min(108);
    match s.name[..n].first() {
        None => "(unnamed)".into(),
        Some(0) => format!("@{}", String::from_utf8_lossy(&s.name[1..n])),
        Some(_) => String::from_utf8_lossy(s.name[..n].split(|&c| c == 0).next().unwrap_or(&[]))
            .into_owned(),
    }
}

/// One line for cr_info.
pub fn describe(state: &[u8]) -> String {
    let Ok((s, q)) = parse(state) else {
        return "unix socket (malformed state)".into();
    };
    let t = match s.sock_type {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "other",
    };
    match s.role {
        ROLE_LISTENING => format!("unix {t} socket listening on {}", describe_name(&s)),
        ROLE_BOUND => format!("unix {t} socket bound to {}", describe_name(&s)),
        ROLE_CONNECTED => format!(
            "unix {t} socket {} connected to socket {}, {} bytes queued",
            s.ino,
            s.peer,
            q.len()
        ),
        _ => format!("unix {t} socket, not connected"),
    }
}
