//! Internet sockets (TCP and UDP over IPv4 and IPv6). A listening socket is bound to its
//! address again and listens (connections that were waiting to be accepted are lost); a bound
//! or connected UDP socket is bound and connected again. A TCP connection whose other end is in
//! the job too comes back as a new loopback connection between the two with the bytes that were
//! waiting at each end (no privileges needed: both ends are ours; the port numbers change):
//! megabytes too — a writer's bytes still in its send queue behind a full reader are let into
//! the reader's queue before it is peeked ([`drain_peer`]), and the restart raises the new
//! connection's buffers to hold them again ([`put_back_queued`]; docs/MPI.md "Megabytes in
//! flight"). Any other TCP connection cannot be kept without privileges: it comes back as a
//! socket whose next operation fails with `ECONNRESET`, as if the peer had reset the
//! connection, which network programs handle (the checkpoint warns).
//! The options programs set on servers come back: `SO_REUSEADDR`, `SO_REUSEPORT`,
//! `SO_KEEPALIVE`, `SO_RCVBUF`/`SO_SNDBUF` (as set: the kernel doubles what it is given),
//! `TCP_NODELAY`, `IPV6_V6ONLY`. Unix sockets are in [`super::unix`]; netlink, raw and other
//! sockets are refused (closed, with a warning).

use super::{get, owned, put, Kind, KindError, SOCKET};
use crate::sys::{self, Errno};
use bytemuck::{Pod, Zeroable};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Not bound.
pub const ROLE_UNBOUND: u32 = 0;
/// Bound, not listening nor connected.
pub const ROLE_BOUND: u32 = 1;
/// Listening (TCP).
pub const ROLE_LISTENING: u32 = 2;
/// Connected.
pub const ROLE_CONNECTED: u32 = 3;

/// The saved state of an internet socket.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct SocketState {
    /// `AF_INET` or `AF_INET6`.
    pub domain: i32,
    /// `SOCK_STREAM` or `SOCK_DGRAM`.
    pub sock_type: i32,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: i32,
    /// `ROLE_*`.
    pub role: u32,
    /// `SO_REUSEADDR`, `SO_REUSEPORT`, `SO_KEEPALIVE`, `TCP_NODELAY`, `IPV6_V6ONLY` (0/1 each).
    pub reuseaddr: u8,
    /// See `reuseaddr`.
    pub reuseport: u8,
    /// See `reuseaddr`.
    pub keepalive: u8,
    /// See `reuseaddr`.
    pub nodelay: u8,
    /// See `reuseaddr`.
    pub v6only: u8,
    /// Reserved (0).
    pub _pad: [u8; 3],
    /// `SO_RCVBUF` as read (half of it is set again: the kernel doubles it).
    pub rcvbuf: i32,
    /// `SO_SNDBUF` likewise.
    pub sndbuf: i32,
    /// Length of `addr`.
    pub addr_len: u32,
    /// Length of `peer`.
    pub peer_len: u32,
    /// Local address (`getsockname`).
    pub addr: [u8; 32],
    /// Peer address (`getpeername`) of a connected socket.
    pub peer: [u8; 32],
    /// Bytes that were waiting to be read on a TCP connection (they follow this record).
    pub queued: u32,
    /// Bytes on the way to a TCP connection that could not be saved (more than
    /// [`MAX_QUEUED`] or than the metadata area holds, or its peer's unsent bytes that did
    /// not drain into it): `peer_len` is then 0 and it comes back reset (0 in older images).
    pub lost: u32,
}
const _: () = assert!(core::mem::size_of::<SocketState>() == 112);

/// Most bytes waiting on a connection (TCP here, unix in [`super::unix`]) that are saved:
/// far above what a socket's buffers hold with the default limits (a few MiB); more, or more
/// than is left of the metadata area they are captured into, and a TCP connection comes back
/// reset (a unix socket is closed), with a warning.
pub const MAX_QUEUED: usize = 64 << 20;

/// `SO_BUF_LOCK` (Linux 5.14): whether `SO_RCVBUF`/`SO_SNDBUF` were set (bit 0 send, bit 1
/// receive), which turns TCP's buffer auto-tuning off; settable, so it can be put back.
pub const SO_BUF_LOCK: i32 = 72;
/// `SO_SNDBUFFORCE`: `SO_SNDBUF` above `wmem_max` (`CAP_NET_ADMIN`).
pub const SO_SNDBUFFORCE: i32 = 32;
/// `SO_RCVBUFFORCE`: `SO_RCVBUF` above `rmem_max` (`CAP_NET_ADMIN`).
pub const SO_RCVBUFFORCE: i32 = 33;
/// Longest wait for a peer's unsent bytes to drain into a connection being saved.
const DRAIN_NS: u64 = 2_000_000_000;
const _: () = assert!(core::mem::size_of::<libc::sockaddr_in6>() <= 32);

/// `getsockname`/`getpeername` into `out`; the length.
fn name(nr: libc::c_long, fd: i32, out: &mut [u8; 32]) -> u32 {
    let mut len: libc::socklen_t = 32;
    match sys::sys3(
        nr as usize,
        fd as usize,
        out.as_mut_ptr() as usize,
        &mut len as *mut _ as usize,
    ) {
        Ok(_) => len.min(32),
        Err(_) => 0,
    }
}

/// `TCP_CLOSE` of `tcpi_state`.
const TCP_CLOSE: u8 = 7;

/// The TCP state of a stream socket (`TCP_INFO`'s first byte), 0 when unknown.
fn tcp_state(fd: i32) -> u8 {
    let mut info = [0u8; 8];
    let mut len: libc::socklen_t = info.len() as libc::socklen_t;
    match sys::sys6(
        libc::SYS_getsockopt as usize,
        fd as usize,
        libc::IPPROTO_TCP as usize,
        libc::TCP_INFO as usize,
        info.as_mut_ptr() as usize,
        &mut len as *mut _ as usize,
        0,
    ) {
        Ok(_) => info[0],
        Err(_) => 0,
    }
}

/// Whether the address in `a` is bound (a port or an address that is not the wildcard).
fn is_bound(a: &[u8]) -> bool {
    // sa_family (2 bytes), port (2 bytes), then the address: all zero means unbound.
    a.len() > 2 && a[2..].iter().any(|&b| b != 0)
}

/// The socket kind.
pub struct Socket;

impl Kind for Socket {
    fn id(&self) -> u32 {
        SOCKET
    }
    fn name(&self) -> &'static str {
        "socket"
    }
    fn link(&self) -> &'static [u8] {
        b"socket:["
    }
    fn matches(&self, link: &[u8]) -> bool {
        link.starts_with(b"socket:[")
    }
    fn refusal(&self, _e: Errno) -> &'static [u8] {
        b"is a socket libcr cannot restore (netlink, raw, or a unix socket with more queued data than an image saves: 64 MiB or what is left of the checkpoint's 256 MiB metadata area, 1024 messages); it will be closed at restart"
    }
    fn checkpoint_count_warning(
        &self,
        state: &[u8],
    ) -> Option<(&'static [u8], u64, &'static [u8])> {
        if super::unix::is_unix(state) {
            return super::unix::lost_warning(state);
        }
        None
    }
    fn checkpoint_warning(&self, state: &[u8]) -> Option<&'static [u8]> {
        if super::unix::is_unix(state) {
            return None;
        }
        let s: SocketState = get(state)?;
        if s.lost > 0 {
            return Some(
                b"is a TCP connection with more bytes on the way to it than a checkpoint keeps (over 64 MiB, or its peer's unsent bytes did not drain into it within 2 s); it comes back reset (ECONNRESET)",
            );
        }
        (s.role == ROLE_CONNECTED && s.sock_type == libc::SOCK_STREAM).then_some(
            b"is a TCP connection; after restart it is connected again only if its peer is part of the restart, else it fails with ECONNRESET as if the peer had reset it",
        )
    }

    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
        let domain = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
        if domain == libc::AF_UNIX {
            return super::unix::capture(fd, out);
        }
        let sock_type = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
        let protocol = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
        let family_ok = domain == libc::AF_INET || domain == libc::AF_INET6;
        let proto_ok = matches!(
            (sock_type, protocol),
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP)
        );
        if !family_ok || !proto_ok {
            return Err(Errno(libc::EAFNOSUPPORT));
        }
        let opt =
            |level, name| sys::getsockopt_int(fd, level, name).map_or(0, |v| u8::from(v != 0));
        let mut s = SocketState {
            domain,
            sock_type,
            protocol,
            role: ROLE_UNBOUND,
            reuseaddr: opt(libc::SOL_SOCKET, libc::SO_REUSEADDR),
            reuseport: opt(libc::SOL_SOCKET, libc::SO_REUSEPORT),
            keepalive: opt(libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            nodelay: if sock_type == libc::SOCK_STREAM {
                opt(libc::IPPROTO_TCP, libc::TCP_NODELAY)
            } else {
                0
            },
            v6only: if domain == libc::AF_INET6 {
                opt(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
            } else {
                0
            },
            _pad: [0; 3],
            rcvbuf: sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0),
            sndbuf: sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0),
            addr_len: 0,
            peer_len: 0,
            addr: [0; 32],
            peer: [0; 32],
            queued: 0,
            lost: 0,
        };
        s.addr_len = name(libc::SYS_getsockname, fd, &mut s.addr);
        s.peer_len = name(libc::SYS_getpeername, fd, &mut s.peer);
        let listening =
            sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
        let bound = is_bound(&s.addr[..s.addr_len as usize]);
        s.role = if listening {
            ROLE_LISTENING
        } else if s.peer_len > 0 {
            ROLE_CONNECTED
        } else if sock_type == libc::SOCK_STREAM && bound && tcp_state(fd) == TCP_CLOSE {
            // A connection that was reset or closed (a restored one, too): it stays one.
            ROLE_CONNECTED
        } else if bound {
            ROLE_BOUND
        } else {
            ROLE_UNBOUND
        };
        let head = core::mem::size_of::<SocketState>();
        if s.role == ROLE_CONNECTED && sock_type == libc::SOCK_STREAM && s.peer_len > 0 {
            // Its peer may be part of the job: then it comes back connected with these bytes.
            let room = out.len().saturating_sub(head).min(MAX_QUEUED);
            let unsent = drain_peer(fd, &s, room);
            let inq = sys::bytes_waiting(fd).unwrap_or(0);
            if unsent > 0 || inq > room {
                // Not all of it can be kept: its peer cannot get it back in order either.
                s.lost = (unsent + inq).min(u32::MAX as usize) as u32;
                s.peer_len = 0;
            } else if inq > 0 {
                s.queued = sys::peek(fd, &mut out[head..head + inq]).unwrap_or(0) as u32;
            }
        }
        put(out, &s)?;
        Ok(head + s.queued as usize)
    }

    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError> {
        if super::unix::is_unix(state) {
            return super::unix::restore_single(state);
        }
        let s: SocketState = get(state).ok_or_else(|| KindError::malformed("socket"))?;
        if s.role == ROLE_CONNECTED && s.sock_type == libc::SOCK_STREAM {
            return reset_connection(s.domain);
        }
        // SAFETY: socket takes no pointers.
        let fd = owned(
            unsafe { libc::socket(s.domain, s.sock_type | libc::SOCK_CLOEXEC, s.protocol) },
            "cannot create a socket",
        )?;
        let raw = fd.as_raw_fd();
        let set = |level, name, v: i32| {
            // SAFETY: setsockopt reads one int from a local.
            unsafe {
                libc::setsockopt(raw, level, name, (&v as *const i32).cast(), 4);
            }
        };
        set(libc::SOL_SOCKET, libc::SO_REUSEADDR, s.reuseaddr.into());
        set(libc::SOL_SOCKET, libc::SO_REUSEPORT, s.reuseport.into());
        set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, s.keepalive.into());
        if s.sock_type == libc::SOCK_STREAM {
            set(libc::IPPROTO_TCP, libc::TCP_NODELAY, s.nodelay.into());
        }
        if s.domain == libc::AF_INET6 {
            set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, s.v6only.into());
        }
        if s.rcvbuf > 0 {
            set(libc::SOL_SOCKET, libc::SO_RCVBUF, s.rcvbuf / 2);
        }
        if s.sndbuf > 0 {
            set(libc::SOL_SOCKET, libc::SO_SNDBUF, s.sndbuf / 2);
        }
        if s.role != ROLE_UNBOUND {
            let saved = &s.addr[..(s.addr_len as usize).min(32)];
            // On other hosts (`cr_restart --map-address`): an old address of the job's hosts
            // becomes the new one (the wildcard stays).
            let mapped = crate::restore::addrmap::map_raw(saved);
            if mapped != saved {
                crate::restore::addrmap::note(&format!(
                    "a socket bound to {} is bound to {}",
                    describe_addr(saved),
                    describe_addr(&mapped)
                ));
            }
            let addr = mapped.as_slice();
            // Connections of the checkpointed program may linger in TIME_WAIT on this port:
            // they must not keep its own server from coming back (a port with a live listener
            // is still refused). The program's own setting is put back after the bind.
            set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
            // SAFETY: bind reads `addr_len` bytes of the saved address.
            let bind = || unsafe { libc::bind(raw, addr.as_ptr().cast(), addr.len() as u32) };
            let errno = || {
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO)
            };
            let mut rc = bind();
            let mut err = if rc != 0 { errno() } else { 0 };
            let mut hint = "";
            if rc != 0
                && err == libc::EADDRINUSE
                && s.sock_type == libc::SOCK_STREAM
                && addr.len() >= 4
            {
                // Connections closed within the last minute may hold the port in TIME_WAIT
                // (see `timewait`): closed for good where we may, then bound again.
                let port = u16::from_be_bytes([addr[2], addr[3]]);
                if super::timewait::destroy_on_port(s.domain, port) > 0 {
                    rc = bind();
                    err = if rc != 0 { errno() } else { 0 };
                } else {
                    hint = " (a connection closed within the last minute may hold the port in TIME_WAIT: try again later, or as root)";
                }
            }
            set(libc::SOL_SOCKET, libc::SO_REUSEADDR, s.reuseaddr.into());
            if rc != 0 {
                return Err(KindError {
                    errno: err,
                    msg: format!(
                        "cannot bind a socket to {} again: {}{hint}",
                        describe_addr(addr),
                        std::io::Error::from_raw_os_error(err)
                    ),
                });
            }
        }
        if s.role == ROLE_LISTENING {
            // The backlog cannot be read back: the system's maximum.
            // SAFETY: listen takes no pointers.
            if unsafe { libc::listen(raw, libc::SOMAXCONN) } != 0 {
                return Err(KindError::last("cannot listen on a socket again"));
            }
        }
        if s.role == ROLE_CONNECTED {
            let peer = crate::restore::addrmap::map_raw(&s.peer[..(s.peer_len as usize).min(32)]);
            // SAFETY: connect reads the saved peer address (UDP: no packet is sent).
            if unsafe { libc::connect(raw, peer.as_ptr().cast(), peer.len() as u32) } != 0 {
                return Err(KindError::last("cannot connect a UDP socket again"));
            }
        }
        Ok(fd)
    }

    fn describe(&self, state: &[u8]) -> String {
        if super::unix::is_unix(state) {
            return super::unix::describe(state);
        }
        let Some(s) = get::<SocketState>(state) else {
            return "socket (malformed state)".into();
        };
        let proto = if s.sock_type == libc::SOCK_STREAM {
            "tcp"
        } else {
            "udp"
        };
        let local = describe_addr(&s.addr[..(s.addr_len as usize).min(32)]);
        let peer = describe_addr(&s.peer[..(s.peer_len as usize).min(32)]);
        match s.role {
            ROLE_LISTENING => format!("{proto} socket listening on {local}"),
            ROLE_BOUND => format!("{proto} socket bound to {local}"),
            ROLE_CONNECTED if s.sock_type == libc::SOCK_STREAM => {
                format!("tcp connection {local} -> {peer} (restored as reset)")
            }
            ROLE_CONNECTED => format!("udp socket {local} connected to {peer}"),
            _ => format!("{proto} socket, not bound"),
        }
    }
}

/// The exact-socket request of `NETLINK_SOCK_DIAG` for internet sockets (`struct nlmsghdr`,
/// `struct inet_diag_req_v2` with its `struct inet_diag_sockid`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct InetDiagReq {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<InetDiagReq>() == 72);

/// The port and address bytes (4 for IPv4, 16 for IPv6) of a saved `sockaddr_in`/`_in6`.
fn port_and_ip(a: &[u8], domain: i32) -> Option<([u8; 2], [u8; 16])> {
    let mut ip = [0u8; 16];
    let port = [*a.get(2)?, *a.get(3)?];
    if domain == libc::AF_INET6 {
        ip.copy_from_slice(a.get(8..24)?);
    } else {
        ip[..4].copy_from_slice(a.get(4..8)?);
    }
    Some((port, ip))
}

/// Bytes the TCP socket at `local` connected to `remote` (this network namespace) has not had
/// acknowledged yet (`write_seq - snd_una`, its unsent and unacknowledged bytes, which
/// `SIOCOUTQ` gives its owner), or `None` when there is no such socket here (its peer is on
/// another host, or gone). Allocation-free (`NETLINK_SOCK_DIAG`, no privilege needed).
pub fn unacked_of(domain: i32, local: &[u8], remote: &[u8]) -> Option<usize> {
    let (sport, src) = port_and_ip(local, domain)?;
    let (dport, dst) = port_and_ip(remote, domain)?;
    let req = InetDiagReq {
        len: 72,
        kind: 20, // SOCK_DIAG_BY_FAMILY
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family: domain as u8,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: !0,
        sport,
        dport,
        src,
        dst,
        ifindex: 0,
        cookie: [!0, !0],
    };
    let nl = sys::sys3(
        libc::SYS_socket as usize,
        libc::AF_NETLINK as usize,
        (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize,
        libc::NETLINK_SOCK_DIAG as usize,
    )
    .ok()? as i32;
    let mut answer = [0u8; 512];
    let res = sys::write_all(nl, bytemuck::bytes_of(&req)).and_then(|_| sys::read(nl, &mut answer));
    sys::close(nl);
    let n = res.ok()?.min(answer.len());
    // nlmsghdr (16), then inet_diag_msg: family, state, timer, retrans, the id (48 bytes),
    // expires, rqueue, wqueue (at 60).
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if n < 16 + 64 || kind != 20 {
        return None;
    }
    // The lookup falls back to a listener on the port (one of another connection's end that
    // listens on the same port number in this namespace, where the peer itself is on another
    // host): only that very connection counts (its ports and addresses, not listening).
    let m = &answer[16..];
    const TCP_LISTEN: u8 = 10;
    // A v4-mapped IPv6 request may find an IPv4 socket (the other end of a dual-stack
    // listener's connection): its addresses come back in the IPv4 form.
    let as_v4 = |a: [u8; 16]| {
        let mut v = [0u8; 16];
        v[..4].copy_from_slice(&a[12..16]);
        v
    };
    let (src, dst) = if i32::from(m[0]) == libc::AF_INET && domain == libc::AF_INET6 {
        (as_v4(src), as_v4(dst))
    } else {
        (src, dst)
    };
    if m[1] == TCP_LISTEN
        || m[4..6] != sport
        || m[6..8] != dport
        || m[8..24] != src
        || m[24..40] != dst
    {
        return None;
    }
    let w = &answer[16 + 60..16 + 64];
    Some(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as usize)
}

/// `SO_RCVBUF` (or, where allowed, `SO_RCVBUFFORCE` past `rmem_max`) of `fd` raised to hold
/// at least `bytes` (never lowered). Allocation-free.
pub fn raise_rcvbuf(fd: i32, bytes: usize) {
    raise_buf(fd, bytes, libc::SO_RCVBUF, SO_RCVBUFFORCE);
}

/// `SO_SNDBUF` (or `SO_SNDBUFFORCE`) of `fd` raised to hold at least `bytes`.
pub fn raise_sndbuf(fd: i32, bytes: usize) {
    raise_buf(fd, bytes, libc::SO_SNDBUF, SO_SNDBUFFORCE);
}

fn raise_buf(fd: i32, bytes: usize, name: i32, force: i32) {
    // The kernel doubles the value for its bookkeeping; the data's own overhead (a buffer per
    // packet) is below that, and a margin covers small amounts.
    let want = bytes.saturating_add(256 << 10).min(i32::MAX as usize / 2) as i32;
    let now = sys::getsockopt_int(fd, libc::SOL_SOCKET, name).unwrap_or(0);
    if now / 2 >= want {
        return;
    }
    if sys::setsockopt_int(fd, libc::SOL_SOCKET, force, want).is_err() {
        let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, name, want);
    }
}

/// Sleeps `ns` nanoseconds (raw `nanosleep`, allocation-free).
fn nap(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    let _ = sys::sys3(
        libc::SYS_nanosleep as usize,
        &ts as *const libc::timespec as usize,
        0,
        0,
    );
}

/// Before TCP connection `fd` (state `s`) is saved: bytes its peer has written and not yet
/// delivered (its send queue, which cannot be read without privileges: the receiver's window
/// was full, its program not reading) are let in — its receive buffer raised to hold them (at
/// most `room` waiting bytes in all), a window update provoked with a peek — and waited for
/// (up to 2 s). The peer is looked up in this network namespace (one node: both ends of a
/// connection of the job are here; a peer elsewhere is the cross-node drain's, docs/MPI.md).
/// The buffer lock (`SO_BUF_LOCK`, auto-tuning) is put back; the larger buffer stays (a
/// smaller one than the window already offered would drop the peer's next packets). Returns
/// the bytes that did not drain (0: every byte on the way is waiting at `fd`).
/// Allocation-free (the agent, threads parked).
fn drain_peer(fd: i32, s: &SocketState, room: usize) -> usize {
    let local = &s.addr[..(s.addr_len as usize).min(32)];
    let peer = &s.peer[..(s.peer_len as usize).min(32)];
    let Some(mut unsent) = unacked_of(s.domain, peer, local) else {
        return 0;
    };
    if unsent == 0 {
        return 0;
    }
    let inq = sys::bytes_waiting(fd).unwrap_or(0);
    if inq + unsent > room {
        return unsent;
    }
    let lock = sys::getsockopt_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK).ok();
    raise_rcvbuf(fd, inq + unsent);
    let deadline = sys::monotonic_ns() + DRAIN_NS;
    let mut byte = [0u8; 1];
    loop {
        // Reading (a peek too) tells the peer the window opened (`tcp_cleanup_rbuf`), rather
        // than its next zero-window probe, which backs off to minutes.
        let _ = sys::peek(fd, &mut byte);
        nap(1_000_000);
        unsent = unacked_of(s.domain, peer, local).unwrap_or(0);
        if unsent == 0 || sys::monotonic_ns() > deadline {
            break;
        }
    }
    if let Some(l) = lock {
        let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK, l);
    }
    unsent
}

/// `a.b.c.d:port` or `[v6]:port` of a saved `sockaddr_in`/`sockaddr_in6`.
pub fn describe_addr(a: &[u8]) -> String {
    if a.len() < 4 {
        return "(none)".into();
    }
    let family = u16::from_ne_bytes([a[0], a[1]]) as i32;
    let port = u16::from_be_bytes([a[2], a[3]]);
    if family == libc::AF_INET && a.len() >= 8 {
        let ip = std::net::Ipv4Addr::new(a[4], a[5], a[6], a[7]);
        format!("{ip}:{port}")
    } else if family == libc::AF_INET6 && a.len() >= 24 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&a[8..24]);
        format!("[{}]:{port}", std::net::Ipv6Addr::from(b))
    } else {
        format!("(family {family})")
    }
}

/// (local, peer) addresses of a saved TCP connection that may come back connected, and the bytes
/// that were waiting to be read at it.
pub fn tcp_connection(state: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    if super::unix::is_unix(state) {
        return None;
    }
    let s: SocketState = get(state)?;
    if s.role != ROLE_CONNECTED || s.sock_type != libc::SOCK_STREAM || s.peer_len == 0 {
        return None;
    }
    let head = core::mem::size_of::<SocketState>();
    let addr_at = core::mem::offset_of!(SocketState, addr);
    let peer_at = core::mem::offset_of!(SocketState, peer);
    Some((
        &state[addr_at..addr_at + (s.addr_len as usize).min(32)],
        &state[peer_at..peer_at + (s.peer_len as usize).min(32)],
        state.get(head..head + s.queued as usize)?,
    ))
}

/// The local address of a saved listening TCP socket.
pub fn listening_addr(state: &[u8]) -> Option<&[u8]> {
    if super::unix::is_unix(state) {
        return None;
    }
    let s: SocketState = get(state)?;
    if s.role != ROLE_LISTENING || s.sock_type != libc::SOCK_STREAM {
        return None;
    }
    let addr_at = core::mem::offset_of!(SocketState, addr);
    Some(&state[addr_at..addr_at + (s.addr_len as usize).min(32)])
}

/// A saved `sockaddr_in`/`sockaddr_in6` as an address.
pub fn to_socket_addr(a: &[u8]) -> Option<std::net::SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*a.first()?, *a.get(1)?]));
    let port = u16::from_be_bytes([*a.get(2)?, *a.get(3)?]);
    match family {
        libc::AF_INET => {
            let o: [u8; 4] = a.get(4..8)?.try_into().ok()?;
            Some((std::net::Ipv4Addr::from(o), port).into())
        }
        libc::AF_INET6 => {
            let o: [u8; 16] = a.get(8..24)?.try_into().ok()?;
            Some((std::net::Ipv6Addr::from(o), port).into())
        }
        _ => None,
    }
}

/// The options of saved connection `state` that matter to a connection, set on `fd` (a new
/// connection that takes its place).
pub fn set_connection_options(fd: &OwnedFd, state: &[u8]) {
    if let Some(s) = get::<SocketState>(state) {
        set_options(fd, &s);
    }
}

/// Most connections of a process [`reset_accepted_on_close`] changes.
const MAX_RESET: usize = 256;
/// The descriptors [`reset_accepted_on_close`] changed (`-1`: free) and their `SO_LINGER`
/// before (`l_onoff` in bit 31, `l_linger` below), for [`undo_reset_on_close`].
static RESET_FDS: [AtomicI32; MAX_RESET] = [const { AtomicI32::new(-1) }; MAX_RESET];
static RESET_OLD: [AtomicI32; MAX_RESET] = [const { AtomicI32::new(0) }; MAX_RESET];

/// The local port of inet socket `fd` (0: none or not inet).
fn local_port(fd: i32) -> u16 {
    let mut a = [0u8; 32];
    let n = name(libc::SYS_getsockname, fd, &mut a);
    let family = i32::from(u16::from_ne_bytes([a[0], a[1]]));
    if n >= 4 && (family == libc::AF_INET || family == libc::AF_INET6) {
        u16::from_be_bytes([a[2], a[3]])
    } else {
        0
    }
}

/// `SO_LINGER` of `fd`, or sets it.
fn linger(fd: i32, set: Option<libc::linger>) -> Option<libc::linger> {
    let mut l = set.unwrap_or(libc::linger {
        l_onoff: 0,
        l_linger: 0,
    });
    let mut len = core::mem::size_of::<libc::linger>() as libc::socklen_t;
    let nr = if set.is_some() {
        libc::SYS_setsockopt
    } else {
        libc::SYS_getsockopt
    };
    sys::sys6(
        nr as usize,
        fd as usize,
        libc::SOL_SOCKET as usize,
        libc::SO_LINGER as usize,
        &mut l as *mut libc::linger as usize,
        if set.is_some() {
            len as usize
        } else {
            &mut len as *mut libc::socklen_t as usize
        },
        0,
    )
    .ok()
    .map(|_| l)
}

/// Before a post-checkpoint `SIGKILL` or `SIGTERM` (agent side, allocation-free): every TCP
/// connection of this process on the port of one of its own listening sockets (the
/// connections it accepted) is made to send a reset when the kill, or the program's own exit
/// on `SIGTERM`, closes it (`SO_LINGER` 0) instead of the usual close. A closing end that
/// sends its FIN first stays in `TIME_WAIT` on the listener's port for a minute, and a
/// listener without `SO_REUSEADDR` (Open MPI's and MPICH's launchers) could not be bound to it
/// again at restart (`EADDRINUSE`); a reset leaves nothing behind. The bytes in flight are in
/// the image already; bytes the program writes before it closes are delivered before the
/// reset on loopback. [`undo_reset_on_close`] puts the old setting back when the process is
/// released without the signal (the checkpoint was abandoned).
pub fn reset_accepted_on_close() {
    let mut ports = [0u16; 64];
    let mut nports = 0;
    sys::each_open_fd(|fd| {
        let listening =
            sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
        let tcp =
            sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Ok(libc::IPPROTO_TCP);
        if listening && tcp && nports < ports.len() {
            let port = local_port(fd);
            if port != 0 {
                ports[nports] = port;
                nports += 1;
            }
        }
    });
    if nports == 0 {
        return;
    }
    let mut n = 0;
    sys::each_open_fd(|fd| {
        if n == MAX_RESET
            || sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) != Ok(libc::IPPROTO_TCP)
            || sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(1) != 0
            || !ports[..nports].contains(&local_port(fd))
        {
            return;
        }
        let Some(old) = linger(fd, None) else {
            return;
        };
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        if linger(fd, Some(abort)).is_some() {
            let packed = (i32::from(old.l_onoff != 0) << 31) | (old.l_linger & 0x7fff_ffff);
            RESET_OLD[n].store(packed, Ordering::Relaxed);
            RESET_FDS[n].store(fd, Ordering::Release);
            n += 1;
        }
    });
}

/// Puts back the `SO_LINGER` settings [`reset_accepted_on_close`] changed (the process was
/// released, not killed), or with `keep` (a `SIGTERM` follows: the program ends itself) only
/// forgets them: the connections keep closing with a reset, also in a program that handles
/// `SIGTERM` and goes on.
pub fn undo_reset_on_close(keep: bool) {
    for (fd, old) in RESET_FDS.iter().zip(&RESET_OLD) {
        let fd = fd.swap(-1, Ordering::AcqRel);
        if fd < 0 || keep {
            continue;
        }
        let old = old.load(Ordering::Relaxed);
        let _ = linger(
            fd,
            Some(libc::linger {
                l_onoff: i32::from(old < 0),
                l_linger: old & 0x7fff_ffff,
            }),
        );
    }
}

/// A new connected loopback pair for a TCP connection of the job and its peer: each end gets
/// the bytes that were waiting to be read at it, and the options of its saved socket.
pub fn restore_tcp_pair(a: &[u8], b: &[u8]) -> Result<(OwnedFd, OwnedFd), KindError> {
    let sa: SocketState = get(a).ok_or_else(|| KindError::malformed("socket"))?;
    let sb: SocketState = get(b).ok_or_else(|| KindError::malformed("socket"))?;
    let (_, _, qa) = tcp_connection(a).ok_or_else(|| KindError::malformed("socket"))?;
    let (_, _, qb) = tcp_connection(b).ok_or_else(|| KindError::malformed("socket"))?;
    let io = |e: std::io::Error, what: &str| KindError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        msg: format!("cannot connect a TCP connection of the job again ({what}): {e}"),
    };
    let at = if sa.domain == libc::AF_INET6 {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let listener = std::net::TcpListener::bind(at).map_err(|e| io(e, "listen"))?;
    let addr = listener.local_addr().map_err(|e| io(e, "listen"))?;
    let end_a = std::net::TcpStream::connect(addr).map_err(|e| io(e, "connect"))?;
    let (end_b, _) = listener.accept().map_err(|e| io(e, "accept"))?;
    let end_a = OwnedFd::from(end_a);
    let end_b = OwnedFd::from(end_b);
    put_back_queued(&end_a, &end_b, qa, qb).map_err(|e| io(e, "queued bytes"))?;
    set_options(&end_a, &sa);
    set_options(&end_b, &sb);
    Ok((end_a, end_b))
}

/// Puts the bytes that were waiting at each end of a connection back, `qa` waiting at `a` and
/// `qb` at `b` (a new connection between the two): each is written by the other end, whose
/// send buffer and the receiver's receive buffer are raised to hold them first (megabytes do
/// not fit a new connection's defaults, and nobody reads until the program runs), without
/// blocking, both directions at once. Then waits (up to 10 s) until each end's bytes have
/// arrived, so a program that reads without waiting finds them. Where the receive buffer could
/// not be raised that far (`rmem_max` without `CAP_NET_ADMIN`), the rest waits in order in the
/// writer's send queue, as it did in the original (delivered as the program reads). The
/// buffer locks are then cleared (`SO_BUF_LOCK` 0: auto-tuning on, as on a new connection).
pub fn put_back_queued(a: &OwnedFd, b: &OwnedFd, qa: &[u8], qb: &[u8]) -> std::io::Result<()> {
    let (ra, rb) = (a.as_raw_fd(), b.as_raw_fd());
    for (reader, writer, q) in [(ra, rb, qa), (rb, ra, qb)] {
        if !q.is_empty() {
            raise_rcvbuf(reader, q.len());
            raise_sndbuf(writer, q.len());
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut da, mut db) = (0usize, 0usize);
    while da < qa.len() || db < qb.len() {
        let mut progress = false;
        for (writer, q, done) in [(rb, qa, &mut da), (ra, qb, &mut db)] {
            if *done < q.len() {
                // SAFETY: sending from a slice we hold on a socket we own.
                let n = unsafe {
                    libc::send(
                        writer,
                        q[*done..].as_ptr().cast(),
                        q.len() - *done,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n > 0 {
                    *done += n as usize;
                    progress = true;
                } else if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EAGAIN) {
                        return Err(e);
                    }
                }
            }
        }
        // Nobody reads these ends yet: a peek makes each reader advertise its window again at
        // once, rather than at the writer's zero-window probes, which back off to seconds.
        for fd in [ra, rb] {
            let _ = sys::peek(fd, &mut [0u8; 1]);
        }
        if !progress {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} of {} and {} of {} bytes written in 10 s",
                        da,
                        qa.len(),
                        db,
                        qb.len()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    // Both ends' bytes arrive at once on loopback, unless a receive buffer is too small: then
    // the rest stays in the writer's send queue (its `SIOCOUTQ` does not fall).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for (reader, writer, want) in [(ra, rb, qa.len()), (rb, ra, qb.len())] {
        let mut last = (usize::MAX, std::time::Instant::now());
        loop {
            let _ = sys::peek(reader, &mut [0u8; 1]);
            let inq = sys::bytes_waiting(reader).unwrap_or(0);
            let outq = outq(writer);
            if inq >= want || outq == 0 || std::time::Instant::now() > deadline {
                break;
            }
            if outq != last.0 {
                last = (outq, std::time::Instant::now());
            } else if last.1.elapsed() > std::time::Duration::from_millis(300) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    for fd in [ra, rb] {
        let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK, 0);
    }
    Ok(())
}

/// Bytes of TCP socket `fd` not yet acknowledged by its peer (`SIOCOUTQ`).
fn outq(fd: i32) -> usize {
    let mut n: i32 = 0;
    // SAFETY: SIOCOUTQ writes one int.
    unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    n.max(0) as usize
}

/// The options of saved socket `s` on `fd` (those that matter to a connection).
fn set_options(fd: &OwnedFd, s: &SocketState) {
    let raw = fd.as_raw_fd();
    let set = |level, name, v: i32| {
        // SAFETY: setsockopt reads one int from a local.
        unsafe {
            libc::setsockopt(raw, level, name, (&v as *const i32).cast(), 4);
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, s.keepalive.into());
    set(libc::IPPROTO_TCP, libc::TCP_NODELAY, s.nodelay.into());
}

/// A TCP socket whose connection was reset: its next read or write fails with `ECONNRESET`.
/// Made on loopback without privileges: connect to a private listener, then the accepted end
/// closes with a zero linger time, which sends a reset.
fn reset_connection(domain: i32) -> Result<OwnedFd, KindError> {
    let v6 = domain == libc::AF_INET6;
    let listener = if v6 {
        std::net::TcpListener::bind("[::1]:0")
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
    }
    .map_err(|e| KindError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        msg: format!("cannot make a reset connection (loopback listener): {e}"),
    })?;
    let addr = listener.local_addr().map_err(|e| KindError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        msg: format!("cannot make a reset connection: {e}"),
    })?;
    let stream = std::net::TcpStream::connect(addr).map_err(|e| KindError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        msg: format!("cannot make a reset connection (connect): {e}"),
    })?;
    let (peer, _) = listener.accept().map_err(|e| KindError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        msg: format!("cannot make a reset connection (accept): {e}"),
    })?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a local linger struct.
    unsafe {
        libc::setsockopt(
            peer.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            core::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(peer);
    // The reset has arrived once the socket reports an error or hang-up.
    let mut p = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 1000) };
    Ok(OwnedFd::from(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback connection whose reader does not read: the writer's unsent bytes are seen
    /// from the reader's side (`unacked_of`, as `SIOCOUTQ` gives them to the writer), the drain
    /// lets them all into the reader's queue, and `put_back_queued` puts megabytes back into a
    /// new connection each way without blocking, in order.
    #[test]
    fn peer_send_queue_drains_and_megabytes_go_back() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let w = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (r, _) = l.accept().unwrap();
        w.set_nonblocking(true).unwrap();
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
        let mut sent = 0;
        let start = std::time::Instant::now();
        while sent < data.len() && start.elapsed() < std::time::Duration::from_secs(2) {
            match (&w).write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        assert!(sent > 1 << 20, "only {sent} bytes taken");
        let fd = r.as_raw_fd();
        let mut s: SocketState = Zeroable::zeroed();
        s.domain = libc::AF_INET;
        s.addr_len = name(libc::SYS_getsockname, fd, &mut s.addr);
        s.peer_len = name(libc::SYS_getpeername, fd, &mut s.peer);
        let peer = &s.peer[..s.peer_len as usize];
        let local = &s.addr[..s.addr_len as usize];
        let unsent = unacked_of(libc::AF_INET, peer, local).unwrap();
        assert_eq!(unsent, outq(w.as_raw_fd()));
        assert!(unsent > 0, "the reader's window must be full");
        assert_eq!(drain_peer(fd, &s, MAX_QUEUED), 0);
        assert_eq!(sys::bytes_waiting(fd).unwrap(), sent);
        // The same bytes into a new connection, 3 MiB one way and 1 MiB the other.
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = OwnedFd::from(std::net::TcpStream::connect(l2.local_addr().unwrap()).unwrap());
        let b = OwnedFd::from(l2.accept().unwrap().0);
        let back = &data[..1 << 20];
        put_back_queued(&a, &b, &data[..sent], back).unwrap();
        for (fd, want) in [(&a, &data[..sent]), (&b, back)] {
            let mut got = vec![0u8; want.len()];
            let mut s = std::net::TcpStream::from(fd.try_clone().unwrap());
            s.read_exact(&mut got).unwrap();
            assert!(got == want, "bytes differ");
            s.set_nonblocking(true).unwrap();
            assert!(s.read(&mut [0u8; 1]).is_err(), "nothing more");
        }
    }
}
