//! Unix sockets (the `AF_UNIX` half of [`super::socket`]). A connected socket whose peer is in
//! the restart job comes back as one end of a new socket pair with the other, with what was
//! queued for reading at each end: the bytes of a stream socket, the messages of a datagram or
//! seqpacket socket one by one (boundaries kept). They are peeked, not consumed, message after
//! message with `SO_PEEK_OFF` (put back afterwards). One whose peer is not in the job comes back
//! with its peer gone (end of file, `EPIPE`) and its queued data, with a warning. A bound
//! datagram socket is bound again and the messages waiting at it are sent to it again (from an
//! unnamed socket: their sender's address is not kept). A listening socket is bound to its path
//! or abstract name again (a stale socket file of the original is replaced) and listens:
//! connections that waited to be accepted are dropped, and the checkpoint says how many.
//! Descriptors in flight (`SCM_RIGHTS` in a queued message) are saved where a peek can read
//! them: a peek installs copies of them in the process, which the agent keeps (one per open
//! file description, [`keep_in_flight`]) until the image is written, records like any other
//! descriptor (marked `REC_FD_IN_FLIGHT`: not placed in the restored process) and lists in the
//! socket's state with the message (or, on a stream socket, the bytes) they came with; the
//! restart sends them again with `SCM_RIGHTS` in that place. Those it cannot keep are counted
//! in `lost` and named in a checkpoint warning. The peer of a
//! socket and a listener's backlog are found with the `NETLINK_SOCK_DIAG` request `ss -x` uses
//! (no privilege needed).

use super::{get, owned, put, KindError};
use crate::sys::{self, Errno};
use bytemuck::{Pod, Zeroable};
use core::sync::atomic::{AtomicI32, AtomicUsize, Ordering::Relaxed};
use std::os::fd::{AsRawFd, OwnedFd};

/// Not bound, not connected.
pub const ROLE_UNCONNECTED: u32 = 0;
/// Listening on `name`.
pub const ROLE_LISTENING: u32 = 1;
/// Connected to socket `peer`.
pub const ROLE_CONNECTED: u32 = 2;
/// Bound to `name`, not listening or connected (a datagram socket).
pub const ROLE_BOUND: u32 = 3;

/// Most bytes a socket may have queued for reading to be saved (with 4 bytes of length per
/// message of a datagram or seqpacket socket): as for TCP, far above what a unix socket's
/// buffers hold (its sender's `SO_SNDBUF`, at most twice `wmem_max` without privileges), and
/// bounded by what is left of the metadata area the state is captured into.
pub const MAX_QUEUED: usize = super::socket::MAX_QUEUED;
/// Most messages saved per socket.
pub const MAX_MESSAGES: usize = 1024;

/// The saved state of a Unix socket; the bytes queued for reading follow (`queued`), then
/// `messages` messages, each `len: u32` and `len` bytes (a reader that does not know `messages`
/// sees no queued data), then, when descriptors were in flight in them, `n: u32` and `n`
/// [`InFlight`] entries (a reader that does not know them stops before).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct UnixState {
    /// `AF_UNIX` (first, as in every socket state).
    pub domain: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub sock_type: i32,
    /// `ROLE_*`.
    pub role: u32,
    /// Bytes queued for reading on a stream socket (they follow this record; 0 for datagram and
    /// seqpacket sockets).
    pub queued: u32,
    /// This socket's inode.
    pub ino: u64,
    /// The connected peer's inode (0: none).
    pub peer: u64,
    /// Length of `name` (0: unnamed; abstract names start with a NUL byte).
    pub name_len: u32,
    /// Messages queued for reading on a datagram or seqpacket socket (after the `queued`
    /// bytes; 0 in older images).
    pub messages: u32,
    /// `sun_path` of the bound name.
    pub name: [u8; 108],
    /// What is lost (0 in older images): for a listening socket, the connections that waited to
    /// be accepted; for others, the descriptors in flight in its queued data (`SCM_RIGHTS`).
    pub lost: u32,
}
const _: () = assert!(core::mem::size_of::<UnixState>() == 152);

/// A descriptor in flight in a saved socket's queue.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// The message it came with (datagram and seqpacket sockets: its index), or the end of the
    /// bytes it came with (stream sockets: an offset into the queued bytes; it came with the
    /// bytes from the end of the previous such group on).
    pub at: u32,
    /// The descriptor it is recorded under in the image (`REC_FD` marked `REC_FD_IN_FLIGHT`).
    pub fd: i32,
}

/// Most descriptors in flight saved per socket.
pub const MAX_IN_FLIGHT_PER_SOCKET: usize = 128;
/// Most descriptors in flight one checkpoint of a process keeps.
pub const MAX_IN_FLIGHT: usize = 256;

static IN_FLIGHT: [AtomicI32; MAX_IN_FLIGHT] = [const { AtomicI32::new(-1) }; MAX_IN_FLIGHT];
static N_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Keeps `got`, a copy of a descriptor in flight that a peek installed in this process (agent,
/// allocation-free): the number it is recorded under — an earlier kept one of the same open
/// file description (`kcmp`; `got` is closed), else `got` itself (moved to 3 or above, where
/// it cannot pass for standard input or output) — or `None` when the table is full (closed).
pub fn keep_in_flight(got: i32) -> Option<i32> {
    let me = sys::getpid() as usize;
    let n = N_IN_FLIGHT.load(Relaxed).min(MAX_IN_FLIGHT);
    for slot in &IN_FLIGHT[..n] {
        let kept = slot.load(Relaxed);
        // kcmp(pid, pid, KCMP_FILE, a, b) == 0: the same struct file.
        if sys::sys6(
            libc::SYS_kcmp as usize,
            me,
            me,
            0,
            kept as usize,
            got as usize,
            0,
        ) == Ok(0)
        {
            sys::close(got);
            return Some(kept);
        }
    }
    if n == MAX_IN_FLIGHT {
        sys::close(got);
        return None;
    }
    let fd = if got < 3 {
        let moved = sys::fcntl(got, libc::F_DUPFD_CLOEXEC, 3);
        sys::close(got);
        moved.ok()? as i32
    } else {
        got
    };
    IN_FLIGHT[n].store(fd, Relaxed);
    N_IN_FLIGHT.store(n + 1, Relaxed);
    Some(fd)
}

/// The `i`th descriptor in flight kept by this checkpoint (in the order they were kept; the
/// list may grow while it is walked: a kept socket's own queue may hold more).
pub fn in_flight(i: usize) -> Option<i32> {
    (i < N_IN_FLIGHT.load(Relaxed).min(MAX_IN_FLIGHT)).then(|| IN_FLIGHT[i].load(Relaxed))
}

/// Whether `fd` is a descriptor in flight kept by this checkpoint (not the program's).
pub fn is_in_flight(fd: i32) -> bool {
    let n = N_IN_FLIGHT.load(Relaxed).min(MAX_IN_FLIGHT);
    IN_FLIGHT[..n].iter().any(|s| s.load(Relaxed) == fd)
}

/// Starts a checkpoint's list of descriptors in flight empty. The list lives in the agent's
/// memory, which the image saves while it is filled: a restored process (or one whose last
/// checkpoint's writer was forked) may hold a stale list, whose numbers are not ours to close.
pub fn begin_in_flight() {
    N_IN_FLIGHT.store(0, Relaxed);
}

/// Closes every descriptor in flight this checkpoint kept (once the image is written).
pub fn close_in_flight() {
    let n = N_IN_FLIGHT.swap(0, Relaxed).min(MAX_IN_FLIGHT);
    for slot in &IN_FLIGHT[..n] {
        sys::close(slot.swap(-1, Relaxed));
    }
}

/// The descriptors in flight met while peeking one socket.
struct FlightList {
    list: [InFlight; MAX_IN_FLIGHT_PER_SOCKET],
    n: usize,
}

impl FlightList {
    /// Keeps the descriptors of peek `p` as having come with message or offset `at`; those
    /// that cannot be kept are counted in `s.lost`.
    fn take(&mut self, p: &sys::Peeked, at: u32, s: &mut UnixState) {
        for &got in &p.fd_list[..p.fds as usize] {
            if self.n == MAX_IN_FLIGHT_PER_SOCKET {
                sys::close(got);
                s.lost += 1;
                continue;
            }
            match keep_in_flight(got) {
                Some(fd) => {
                    self.list[self.n] = InFlight { at, fd };
                    self.n += 1;
                }
                None => s.lost += 1,
            }
        }
        s.lost += u32::from(p.more_fds);
    }
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_RQLEN: u32 = 16;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const TCP_ESTABLISHED: u8 = 1;

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

/// What `NETLINK_SOCK_DIAG` tells of a Unix socket.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Diag {
    /// The inode of its peer (0: none).
    peer: u64,
    /// A listener's connections waiting to be accepted (else bytes queued for reading).
    rqueue: u32,
    /// Its state (`TCP_ESTABLISHED` 1: connected, even when its peer has no inode: a
    /// connection not yet accepted, or a peer that is gone).
    state: u8,
}

/// The peer and queue length of socket `ino`, through `NETLINK_SOCK_DIAG`.
fn diag(ino: u64) -> Result<Diag, Errno> {
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
        show: UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN,
        cookie: [!0, !0],
    };
    let mut answer = [0u8; 512];
    let res = sys::write_all(nl, bytemuck::bytes_of(&req)).and_then(|_| sys::read(nl, &mut answer));
    sys::close(nl);
    let n = res?;
    parse_diag(&answer[..n.min(answer.len())])
}

/// Parses the answer to a `SOCK_DIAG_BY_FAMILY` request for one Unix socket.
fn parse_diag(msg: &[u8]) -> Result<Diag, Errno> {
    let n = msg.len();
    // nlmsghdr (16) + unix_diag_msg (16), then attributes { len: u16, type: u16, data }.
    let kind = u16::from_ne_bytes([
        msg.get(4).copied().unwrap_or(0),
        msg.get(5).copied().unwrap_or(0),
    ]);
    if n < 32 || kind != SOCK_DIAG_BY_FAMILY {
        return Err(Errno(libc::EPROTO));
    }
    let mut d = Diag {
        state: msg[18],
        ..Diag::default()
    };
    let mut at = 32;
    while at + 4 <= msg.len() {
        let alen = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let atype = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
        if alen < 4 {
            break;
        }
        let word = |o: usize| {
            msg.get(at + o..at + o + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        match atype {
            UNIX_DIAG_PEER if alen >= 8 => d.peer = word(4).unwrap_or(0) as u64,
            UNIX_DIAG_RQLEN if alen >= 12 => d.rqueue = word(4).unwrap_or(0),
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(d)
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
        messages: 0,
        name: [0; 108],
        lost: 0,
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
    let d = diag(st.st_ino)?;
    if sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0 {
        s.role = ROLE_LISTENING;
        s.lost = d.rqueue;
        return put(out, &s);
    }
    s.peer = d.peer;
    // A stream or seqpacket socket connected to a connection not yet accepted, or whose peer
    // is gone, is still connected (it reads end of file once its data is read).
    let connected = d.peer != 0 || (sock_type != libc::SOCK_DGRAM && d.state == TCP_ESTABLISHED);
    s.role = if connected {
        ROLE_CONNECTED
    } else if s.name_len > 0 {
        ROLE_BOUND
    } else {
        ROLE_UNCONNECTED
    };
    // What is queued for reading, peeked (not consumed).
    let head = core::mem::size_of::<UnixState>();
    let room = out.len().saturating_sub(head).min(MAX_QUEUED);
    let mut flights = FlightList {
        list: [InFlight { at: 0, fd: -1 }; MAX_IN_FLIGHT_PER_SOCKET],
        n: 0,
    };
    let len = peek_queued(
        fd,
        sock_type,
        &mut s,
        &mut out[head..head + room],
        &mut flights,
    )?;
    put(out, &s)?;
    let mut end = head + len;
    if flights.n > 0 {
        end += put(&mut out[end..], &(flights.n as u32))?;
        for f in &flights.list[..flights.n] {
            end += put(&mut out[end..], f)?;
        }
    }
    Ok(end)
}

/// Peeks everything queued for reading on `fd` into `out`, from its first byte on with
/// `SO_PEEK_OFF` (the socket's own setting is put back): a stream socket's bytes (`s.queued`),
/// or a datagram or seqpacket socket's messages (`s.messages`, each `len: u32` then its bytes);
/// keeps the descriptors in flight (`flights`; those it cannot keep are counted in `s.lost`).
/// The length written; `EMSGSIZE` when it does not fit.
fn peek_queued(
    fd: i32,
    sock_type: i32,
    s: &mut UnixState,
    out: &mut [u8],
    flights: &mut FlightList,
) -> Result<usize, Errno> {
    let inq = sys::bytes_waiting(fd)?;
    // A datagram socket says only the length of its first message, a seqpacket socket the
    // bytes of all: either may hold empty messages only.
    if inq == 0 && sock_type == libc::SOCK_STREAM {
        return Ok(0);
    }
    if sock_type == libc::SOCK_STREAM && inq > out.len() {
        return Err(Errno(libc::EMSGSIZE));
    }
    let old = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    // A seqpacket socket whose peer is gone reads end of file (0 bytes) after its last
    // message, as an empty message does; with `SO_PASSCRED` on, a message comes with
    // credentials and the end of file without.
    let mut passcred = None;
    if sock_type == libc::SOCK_SEQPACKET {
        if let Ok(was) = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED) {
            if sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1).is_ok() {
                passcred = Some(was);
            }
        }
    }
    let res = peek_from(fd, sock_type, inq, passcred.is_some(), s, out, flights);
    if let Some(was) = passcred {
        let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, was);
    }
    let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    res
}

fn peek_from(
    fd: i32,
    sock_type: i32,
    inq: usize,
    passcred: bool,
    s: &mut UnixState,
    out: &mut [u8],
    flights: &mut FlightList,
) -> Result<usize, Errno> {
    let stream = sock_type == libc::SOCK_STREAM;
    let seqpacket = sock_type == libc::SOCK_SEQPACKET;
    let mut at = 0;
    let mut total = 0;
    loop {
        if stream && at >= inq {
            break;
        }
        // Without credentials to tell an empty message from the end of file, a seqpacket
        // socket's bytes (`inq` counts them all) end it.
        if seqpacket && !passcred && total >= inq && s.messages > 0 {
            break;
        }
        if !stream && s.messages as usize == MAX_MESSAGES {
            return Err(Errno(libc::EMSGSIZE));
        }
        let body = if stream { at } else { at + 4 };
        let Some(buf) = out.get_mut(body..) else {
            return Err(Errno(libc::EMSGSIZE));
        };
        let p = match sys::peek_msg(fd, buf) {
            Ok(p) => p,
            Err(Errno(libc::EAGAIN)) => break,
            Err(e) => return Err(e),
        };
        if p.truncated {
            for &got in &p.fd_list[..p.fds as usize] {
                sys::close(got);
            }
            return Err(Errno(libc::EMSGSIZE));
        }
        if stream {
            if p.len == 0 {
                for &got in &p.fd_list[..p.fds as usize] {
                    sys::close(got);
                }
                break;
            }
            at += p.len;
            flights.take(&p, at as u32, s);
        } else {
            let eof = p.len == 0 && seqpacket && if passcred { !p.creds } else { total >= inq };
            if eof {
                break;
            }
            flights.take(&p, s.messages, s);
            out[at..at + 4].copy_from_slice(&(p.len as u32).to_ne_bytes());
            at += 4 + p.len;
            total += p.len;
            s.messages += 1;
        }
    }
    if stream {
        s.queued = at as u32;
    }
    Ok(at)
}

/// What was queued for reading at a saved Unix socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queued<'a> {
    /// The bytes of a stream socket.
    pub bytes: &'a [u8],
    /// The messages of a datagram or seqpacket socket, in order.
    pub messages: Vec<&'a [u8]>,
    /// The descriptors in flight with them, in order.
    pub fds: Vec<InFlight>,
}

impl Queued<'_> {
    /// Total bytes.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.messages.iter().map(|m| m.len()).sum::<usize>()
    }
    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.messages.is_empty()
    }
}

/// The state and what was queued at a saved Unix socket.
pub fn parse(state: &[u8]) -> Result<(UnixState, Queued<'_>), KindError> {
    let bad = || KindError::malformed("unix socket");
    let s: UnixState = get(state).ok_or_else(bad)?;
    let head = core::mem::size_of::<UnixState>();
    let mut at = head + s.queued as usize;
    let bytes = state.get(head..at).ok_or_else(bad)?;
    let mut messages = Vec::with_capacity((s.messages as usize).min(MAX_MESSAGES));
    for _ in 0..s.messages {
        let len = state
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(bad)?;
        messages.push(state.get(at + 4..at + 4 + len).ok_or_else(bad)?);
        at += 4 + len;
    }
    let mut fds = Vec::new();
    if at < state.len() {
        let n: u32 = get(&state[at..]).ok_or_else(bad)?;
        at += 4;
        let each = core::mem::size_of::<InFlight>();
        for _ in 0..(n as usize).min(MAX_IN_FLIGHT_PER_SOCKET + 1) {
            fds.push(get::<InFlight>(state.get(at..at + each).ok_or_else(bad)?).ok_or_else(bad)?);
            at += each;
        }
        if n as usize > MAX_IN_FLIGHT_PER_SOCKET {
            return Err(bad());
        }
    }
    Ok((
        s,
        Queued {
            bytes,
            messages,
            fds,
        },
    ))
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

/// Finds the descriptor a restart made for a descriptor in flight recorded under `fd`
/// (`None`: none was made; it is left out, and counted).
pub type Resolve<'r> = &'r dyn Fn(i32) -> Option<i32>;

/// Sends what was queued at a socket through `to`, which is connected to the new socket (or,
/// with `dest`, sends each message to that address), with the descriptors that were in flight
/// in their places (`resolve` gives them). Returns how many of those could not be sent.
fn write_queued(
    to: &OwnedFd,
    q: &Queued<'_>,
    dest: Option<(&libc::sockaddr_un, libc::socklen_t)>,
    resolve: Resolve<'_>,
) -> Result<usize, KindError> {
    let mut missing = 0;
    if !q.is_empty() {
        // The bytes are charged to the sending socket until they are read: its send buffer
        // must hold them all (megabytes need more than the default), with room for each
        // message's own buffer.
        super::socket::raise_sndbuf(to.as_raw_fd(), q.len() + q.messages.len() * 1024);
    }
    // The descriptors of one message or group of bytes, resolved, and how many were not.
    let group = |at: u32| -> (Vec<i32>, usize) {
        let all: Vec<Option<i32>> = q
            .fds
            .iter()
            .filter(|f| f.at == at)
            .map(|f| resolve(f.fd))
            .collect();
        let missing = all.iter().filter(|r| r.is_none()).count();
        (all.into_iter().flatten().collect(), missing)
    };
    // Stream bytes: each group of bytes that carried descriptors is sent with them.
    let mut done = 0usize;
    let mut ends: Vec<u32> = q.fds.iter().map(|f| f.at).collect();
    ends.dedup();
    if !q.bytes.is_empty() {
        for end in ends {
            let end = (end as usize).min(q.bytes.len());
            let (fds, lost) = group(end as u32);
            missing += lost;
            if end <= done {
                missing += fds.len();
                continue;
            }
            let n = send_with_fds(to, &q.bytes[done..end], &fds, None).map_err(|e| {
                KindError::last(&format!(
                    "cannot put back the bytes and descriptors queued in a unix socket: {e}"
                ))
            })?;
            write_bytes(to, &q.bytes[done + n..end])?;
            done = end;
        }
        write_bytes(to, &q.bytes[done..])?;
        return Ok(missing);
    }
    for (i, m) in q.messages.iter().enumerate() {
        let (fds, lost) = group(i as u32);
        missing += lost;
        let n = send_with_fds(to, m, &fds, dest);
        if n.as_ref().map_or(true, |&n| n != m.len()) {
            return Err(KindError::last(&format!(
                "cannot put back message {} of {} ({} bytes) queued in a unix socket",
                i + 1,
                q.messages.len(),
                m.len()
            )));
        }
    }
    Ok(missing)
}

/// `sendmsg` of `bytes` through `to` (to `dest` when given), with `fds` as `SCM_RIGHTS`; the
/// bytes sent.
fn send_with_fds(
    to: &OwnedFd,
    bytes: &[u8],
    fds: &[i32],
    dest: Option<(&libc::sockaddr_un, libc::socklen_t)>,
) -> std::io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = if fds.is_empty() {
        0
    } else {
        unsafe { libc::CMSG_SPACE(payload) as usize }
    };
    // 8-byte aligned, as struct cmsghdr needs.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some((a, len)) = dest {
        msg.msg_name = (a as *const libc::sockaddr_un).cast_mut().cast();
        msg.msg_namelen = len;
    }
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds CMSG_SPACE(payload) bytes, so the first header and
        // its data fit; the descriptors are copied from a slice we hold.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as usize;
            core::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                payload as usize,
            );
        }
    }
    // SAFETY: sendmsg reads the message, the address and the control data built above.
    let n = unsafe {
        libc::sendmsg(
            to.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn write_bytes(to: &OwnedFd, bytes: &[u8]) -> Result<(), KindError> {
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

/// What [`restore_pair`] and [`restore_single_with`] made: the descriptor(s), and how many
/// descriptors in flight could not be sent again.
pub type Restored<T> = Result<(T, usize), KindError>;

/// A new connected pair for `a` and its peer `b` (`None`: the peer is not in the job, it is
/// closed at once); each end gets the bytes that were queued for reading at it, with the
/// descriptors that were in flight in them (each state's own `Resolve`).
pub fn restore_pair(
    a: (&[u8], Resolve<'_>),
    b: Option<(&[u8], Resolve<'_>)>,
) -> Restored<(OwnedFd, Option<OwnedFd>)> {
    let (a, resolve_a) = a;
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
    let mut missing = write_queued(&end_b, &qa, None, resolve_a)?;
    match b {
        Some((b, resolve_b)) => {
            let (_, qb) = parse(b)?;
            missing += write_queued(&end_a, &qb, None, resolve_b)?;
            Ok(((end_a, Some(end_b)), missing))
        }
        None => Ok(((end_a, None), missing)),
    }
}

/// A Unix socket that is not connected in the job: listening, bound or unnamed (descriptors
/// that were in flight in it are left out).
pub fn restore_single(state: &[u8]) -> Result<OwnedFd, KindError> {
    Ok(restore_single_with(state, &|_| None)?.0)
}

/// A Unix socket that is not connected in the job: listening, bound or unnamed, with the
/// descriptors that were in flight in its queue (`resolve` gives them).
pub fn restore_single_with(state: &[u8], resolve: Resolve<'_>) -> Restored<OwnedFd> {
    let (s, q) = parse(state)?;
    // Connected to a peer not in the job, or whose peer was gone at the checkpoint with data
    // still to read: one end of a pair whose other end is closed, holding that data.
    if s.role == ROLE_CONNECTED || (s.role == ROLE_UNCONNECTED && !q.is_empty()) {
        let ((end, _), missing) = restore_pair((state, resolve), None)?;
        return Ok((end, missing));
    }
    let mut missing = 0;
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
        if s.role == ROLE_BOUND && !q.is_empty() {
            // The datagrams that waited at it, sent to it again in order by an unnamed socket.
            // SAFETY: socket takes no pointers.
            let from = owned(
                unsafe { libc::socket(libc::AF_UNIX, s.sock_type | libc::SOCK_CLOEXEC, 0) },
                "cannot create a unix socket",
            )?;
            missing = write_queued(&from, &q, Some((&addr, len)), resolve)?;
        }
    }
    Ok((fd, missing))
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
        ROLE_LISTENING => format!(
            "unix {t} socket listening on {}{}",
            describe_name(&s),
            if s.lost > 0 {
                format!(", {} connections waiting to be accepted (dropped)", s.lost)
            } else {
                String::new()
            }
        ),
        ROLE_BOUND => format!(
            "unix {t} socket bound to {}{}",
            describe_name(&s),
            queued_text(&s, &q)
        ),
        ROLE_CONNECTED => format!(
            "unix {t} socket {} connected to socket {}{}",
            s.ino,
            s.peer,
            queued_text(&s, &q)
        ),
        _ => format!("unix {t} socket, not connected{}", queued_text(&s, &q)),
    }
}

fn queued_text(s: &UnixState, q: &Queued<'_>) -> String {
    let mut t = if s.messages > 0 {
        format!(", {} messages ({} bytes) queued", q.messages.len(), q.len())
    } else {
        format!(", {} bytes queued", q.len())
    };
    if !q.fds.is_empty() {
        let fds: Vec<String> = q.fds.iter().map(|f| f.fd.to_string()).collect();
        t.push_str(&format!(
            ", {} descriptors in flight (saved as fds {})",
            q.fds.len(),
            fds.join(" ")
        ));
    }
    if s.lost > 0 {
        t.push_str(&format!(", {} descriptors in flight not saved", s.lost));
    }
    t
}

/// The checkpoint's warning about what of a saved Unix socket does not come back: (text before,
/// number, text after).
pub fn lost_warning(state: &[u8]) -> Option<(&'static [u8], u64, &'static [u8])> {
    let s: UnixState = get(state)?;
    if s.lost == 0 {
        return None;
    }
    Some(if s.role == ROLE_LISTENING {
        (
            b"is a listening unix socket with connections waiting to be accepted (",
            s.lost as u64,
            b"); they are dropped at restart: it is bound and listens again, their clients see the connection closed",
        )
    } else {
        (
            b"is a unix socket with descriptors in flight in its queued data that cannot be saved (SCM_RIGHTS: ",
            s.lost as u64,
            b"; over 64 in one message or 128 in one socket or 256 in the process): the data comes back without them",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(s: UnixState, tail: &[u8]) -> Vec<u8> {
        let mut v = bytemuck::bytes_of(&s).to_vec();
        v.extend_from_slice(tail);
        v
    }

    fn blank() -> UnixState {
        UnixState {
            domain: libc::AF_UNIX,
            sock_type: libc::SOCK_DGRAM,
            role: ROLE_CONNECTED,
            queued: 0,
            ino: 7,
            peer: 8,
            name_len: 0,
            messages: 0,
            name: [0; 108],
            lost: 0,
        }
    }

    #[test]
    fn messages_parse_with_their_boundaries() {
        let mut s = blank();
        s.messages = 3;
        let mut tail = Vec::new();
        for m in [&b"one"[..], b"", b"three"] {
            tail.extend_from_slice(&(m.len() as u32).to_ne_bytes());
            tail.extend_from_slice(m);
        }
        let st = state(s, &tail);
        let (_, q) = parse(&st).unwrap();
        assert_eq!(q.messages, vec![&b"one"[..], b"", b"three"]);
        assert!(q.bytes.is_empty());
        assert_eq!(q.len(), 8);
        // Cut short: malformed, not a panic.
        assert!(parse(&st[..st.len() - 1]).is_err());
        // An older reader's view: the bytes after the fixed part are not stream bytes.
        assert_eq!(get::<UnixState>(&st).unwrap().queued, 0);
        assert!(describe(&st).contains("3 messages (8 bytes) queued"));
    }

    #[test]
    fn descriptors_in_flight_parse_after_the_messages() {
        let mut s = blank();
        s.messages = 2;
        let mut tail = Vec::new();
        for m in [&b"m1"[..], b""] {
            tail.extend_from_slice(&(m.len() as u32).to_ne_bytes());
            tail.extend_from_slice(m);
        }
        tail.extend_from_slice(&2u32.to_ne_bytes());
        for f in [InFlight { at: 0, fd: 9 }, InFlight { at: 0, fd: 11 }] {
            tail.extend_from_slice(bytemuck::bytes_of(&f));
        }
        let st = state(s, &tail);
        let (_, q) = parse(&st).unwrap();
        assert_eq!(q.messages, vec![&b"m1"[..], b""]);
        assert_eq!(
            q.fds,
            vec![InFlight { at: 0, fd: 9 }, InFlight { at: 0, fd: 11 }]
        );
        assert!(describe(&st).contains("2 descriptors in flight (saved as fds 9 11)"));
        // Cut short inside the list: malformed, not a panic.
        assert!(parse(&st[..st.len() - 3]).is_err());
        // A count beyond what a writer saves: malformed.
        let mut big = state(s, &tail[..tail.len() - 20]);
        big.extend_from_slice(&100_000u32.to_ne_bytes());
        assert!(parse(&big).is_err());
    }

    #[test]
    fn diag_answer_gives_peer_and_backlog() {
        let mut msg = vec![0u8; 32];
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[18] = TCP_ESTABLISHED;
        // UNIX_DIAG_PEER (8 bytes), then UNIX_DIAG_RQLEN (12 bytes).
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        msg.extend_from_slice(&4321u32.to_ne_bytes());
        msg.extend_from_slice(&12u16.to_ne_bytes());
        msg.extend_from_slice(&UNIX_DIAG_RQLEN.to_ne_bytes());
        msg.extend_from_slice(&3u32.to_ne_bytes());
        msg.extend_from_slice(&128u32.to_ne_bytes());
        assert_eq!(
            parse_diag(&msg),
            Ok(Diag {
                peer: 4321,
                rqueue: 3,
                state: TCP_ESTABLISHED
            })
        );
        assert!(parse_diag(&msg[..20]).is_err());
    }

    #[test]
    fn lost_things_are_warned_about() {
        let mut s = blank();
        assert!(lost_warning(&state(s, &[])).is_none());
        s.lost = 2;
        let w = lost_warning(&state(s, &[])).unwrap();
        assert_eq!(w.1, 2);
        assert!(String::from_utf8_lossy(w.0).contains("SCM_RIGHTS"));
        s.role = ROLE_LISTENING;
        let w = lost_warning(&state(s, &[])).unwrap();
        assert!(String::from_utf8_lossy(w.0).contains("waiting to be accepted"));
    }
}
