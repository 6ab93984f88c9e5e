//! `cr_restart --reconnect`: TCP connections whose other end is not in this restart (a job
//! across nodes restarted one node at a time, docs/MPI.md) are made again between the saved
//! addresses, before any process of the job runs: the end whose image holds a listening socket
//! on its local port accepts (on that listener, made here first and then given to the job: a
//! listener cannot be bound again next to connections on its port), the other binds its saved local address and connects
//! to the saved peer address (again until the peer's restart listens). So the connection keeps
//! its addresses. Then each end sends the bytes that were waiting at it when the image was
//! written (length first); each echoes the other's back raw, so those bytes end up waiting at
//! the end they came from again, in order, before the program reads. Every restart takes the
//! connections in one order (by their addresses), so two restarts never wait for each other in
//! a cycle. With `--map-address` (the job back on hosts with other addresses) each address
//! of the job's old hosts is its new host's: the connection is made between the new addresses
//! (the programs still see the old ones, `agent::netmap`). A connection not re-made within the time given comes back reset, with a warning;
//! so does one whose ends both or neither had a listener on their port (a listener closed
//! since it accepted).

use crate::image::reader::{Fd, Image};
use crate::kinds::socket;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// One end to re-make: its saved local and peer addresses (raw and parsed), the bytes that
/// were waiting at it, its saved state.
struct End<'a> {
    local_raw: &'a [u8],
    peer_raw: &'a [u8],
    local: SocketAddr,
    peer: SocketAddr,
    queued: &'a [u8],
    state: &'a [u8],
}

/// Every TCP connection end of `images` whose other end is not in them, each once.
fn ends<'a>(images: &[&'a Image]) -> Vec<End<'a>> {
    let states: Vec<&'a [u8]> = images
        .iter()
        .flat_map(|img| img.fds.iter())
        .filter_map(|f| f.kobj.as_ref().map(|(_, st)| st.as_slice()))
        .collect();
    let mut out: Vec<End<'a>> = Vec::new();
    for st in &states {
        let Some((l, p, q)) = socket::tcp_connection(st) else {
            continue;
        };
        let inside = states
            .iter()
            .any(|o| socket::tcp_connection(o).is_some_and(|(ol, op, _)| ol == p && op == l));
        if inside || out.iter().any(|e| e.local_raw == l && e.peer_raw == p) {
            continue;
        }
        let (Some(local), Some(peer)) = (socket::to_socket_addr(l), socket::to_socket_addr(p))
        else {
            continue;
        };
        out.push(End {
            local_raw: l,
            peer_raw: p,
            local,
            peer,
            queued: q,
            state: st,
        });
    }
    // One order for every restart: by the connection's two addresses, smaller first.
    out.sort_by_key(|e| (e.local.min(e.peer), e.local.max(e.peer)));
    out
}

/// The listening socket of `images` on `a`'s port (its address, or the wildcard), if any, of
/// `a`'s family: an IPv6 listener and an IPv4 one on the same port number can belong to two
/// processes (Open MPI's ranks bind both families' ports independently), and a connection
/// accepted by an IPv6 listener has an IPv6 (IPv4-mapped) local address.
fn listener_on<'a>(images: &[&'a Image], a: SocketAddr) -> Option<&'a Fd> {
    images.iter().flat_map(|img| img.fds.iter()).find(|f| {
        f.kobj
            .as_ref()
            .and_then(|(_, st)| socket::listening_addr(st))
            .and_then(socket::to_socket_addr)
            .is_some_and(|l| {
                l.port() == a.port()
                    && l.is_ipv4() == a.is_ipv4()
                    && (l.ip() == a.ip() || l.ip().is_unspecified())
            })
    })
}

/// Connects from `local` to `peer` (raw saved addresses), again while the peer refuses, until
/// `deadline`.
fn connect_from(local: &[u8], peer: &[u8], deadline: Instant) -> std::io::Result<TcpStream> {
    let family = i32::from(u16::from_ne_bytes([local[0], local[1]]));
    loop {
        // SAFETY: socket takes no pointers.
        let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just made and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: i32 = 1;
        // SAFETY: setsockopt reads one int; bind and connect read the saved addresses' bytes.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const i32).cast(),
                4,
            );
            if libc::bind(raw, local.as_ptr().cast(), local.len() as u32) != 0 {
                -1
            } else {
                libc::connect(raw, peer.as_ptr().cast(), peer.len() as u32)
            }
        };
        if rc == 0 {
            return Ok(TcpStream::from(fd));
        }
        let e = std::io::Error::last_os_error();
        let again = matches!(
            e.raw_os_error(),
            Some(libc::ECONNREFUSED | libc::EADDRINUSE | libc::EADDRNOTAVAIL | libc::ETIMEDOUT)
        );
        if !again || Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The job's listeners made so far (by their saved address) and the connections they accepted
/// that were not yet asked for.
#[derive(Default)]
struct Accepting {
    listeners: HashMap<Vec<u8>, TcpListener>,
    early: HashMap<(SocketAddr, SocketAddr), TcpStream>,
}

impl Accepting {
    /// The connection from `peer` to `local`, accepted by `deadline` on the job's listener
    /// `lf`.
    fn accept(
        &mut self,
        lf: &Fd,
        local: SocketAddr,
        peer: SocketAddr,
        deadline: Instant,
    ) -> std::io::Result<TcpStream> {
        // On other hosts the peer connects from its new address.
        let peer = super::addrmap::map_addr(peer);
        if let Some(s) = self.early.remove(&(local, peer)) {
            return Ok(s);
        }
        let key = lf
            .kobj
            .as_ref()
            .and_then(|(_, st)| socket::listening_addr(st))
            .unwrap_or_default()
            .to_vec();
        if !self.listeners.contains_key(&key) {
            let fd = super::pool::kernel_object(lf)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno))?;
            let l = TcpListener::from(fd);
            // The pool sets the saved status flags again.
            l.set_nonblocking(true)?;
            self.listeners.insert(key.clone(), l);
        }
        let l = &self.listeners[&key];
        loop {
            match l.accept() {
                Ok((s, from)) => {
                    s.set_nonblocking(false)?;
                    if from == peer {
                        return Ok(s);
                    }
                    self.early.insert((local, from), s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Puts back the bytes waiting at each end: each sends its own (length first) while it reads
/// the other's, then echoes those back raw; then waits until its own have arrived. Megabytes
/// each way: the receive buffer is first raised to hold this end's own bytes (the echo), the
/// send buffer to hold what it sends, and both directions move at once without blocking, so
/// two ends that each send more than a new connection's buffers hold never wait for each
/// other.
fn exchange(s: &TcpStream, mine: &[u8], deadline: Instant) -> std::io::Result<()> {
    let fd = s.as_raw_fd();
    socket::raise_rcvbuf(fd, mine.len());
    socket::raise_sndbuf(fd, mine.len() + 4);
    s.set_nonblocking(true)?;
    let mut out = (mine.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(mine);
    let mut len = [0u8; 4];
    let mut got_len = 0;
    let mut theirs: Vec<u8> = Vec::new();
    let mut got = 0;
    let mut sent = 0;
    // Theirs in, ours out.
    while sent < out.len() || got_len < 4 || got < theirs.len() {
        let mut progress = false;
        if sent < out.len() {
            progress |= step(send_some(fd, &out[sent..]), &mut sent)?;
        }
        if got_len < 4 {
            progress |= step(recv_some(fd, &mut len[got_len..]), &mut got_len)?;
            if got_len == 4 {
                theirs = vec![0u8; u32::from_le_bytes(len) as usize];
                // They come back out through here: room for them in the send buffer.
                socket::raise_sndbuf(fd, mine.len() + 4 + theirs.len());
            }
        } else if got < theirs.len() {
            progress |= step(recv_some(fd, &mut theirs[got..]), &mut got)?;
        }
        idle(progress, deadline)?;
    }
    // Theirs back (the other end raised its receive buffer for them).
    let mut echoed = 0;
    while echoed < theirs.len() {
        let progress = step(send_some(fd, &theirs[echoed..]), &mut echoed)?;
        poke(fd);
        idle(progress, deadline)?;
    }
    loop {
        // Nobody reads here any more: a peek tells the other end at once that the window
        // opened (else it waits for its zero-window probes, which back off to seconds).
        poke(fd);
        let waiting = crate::sys::bytes_waiting(fd).unwrap_or(0);
        if waiting >= mine.len() {
            // The program's own blocking mode and timeouts (a new socket's).
            s.set_nonblocking(false)?;
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
            let _ = crate::sys::setsockopt_int(fd, libc::SOL_SOCKET, socket::SO_BUF_LOCK, 0);
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Peeks one byte of `fd`: a read makes the kernel advertise the receive window again now.
fn poke(fd: i32) {
    let mut b = [0u8; 1];
    let _ = crate::sys::peek(fd, &mut b);
}

/// A non-blocking `send` of `b` on `fd`: the bytes sent (0: it would block).
fn send_some(fd: i32, b: &[u8]) -> std::io::Result<usize> {
    // SAFETY: sending from a slice we hold on a socket we own.
    let n = unsafe {
        libc::send(
            fd,
            b.as_ptr().cast(),
            b.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    would_block(n)
}

/// A non-blocking `recv` into `b`: the bytes read (0: nothing yet); end of file is an error.
fn recv_some(fd: i32, b: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a slice we hold from a socket we own.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
    if n == 0 && !b.is_empty() {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    would_block(n)
}

fn would_block(n: isize) -> std::io::Result<usize> {
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted {
        Ok(0)
    } else {
        Err(e)
    }
}

/// Adds the bytes of one step to `at`; whether there were any.
fn step(r: std::io::Result<usize>, at: &mut usize) -> std::io::Result<bool> {
    let n = r?;
    *at += n;
    Ok(n > 0)
}

/// After a round without `progress`: a pause, or `ETIMEDOUT` past `deadline`.
fn idle(progress: bool, deadline: Instant) -> std::io::Result<()> {
    if progress {
        return Ok(());
    }
    if Instant::now() > deadline {
        return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    std::thread::sleep(Duration::from_micros(200));
    Ok(())
}

/// The new connections by (saved local, saved peer) address, as the pool keys TCP ends.
pub type Connections = HashMap<(Vec<u8>, Vec<u8>), OwnedFd>;
/// The job's listeners made to accept them, by saved local address.
pub type Listeners = HashMap<Vec<u8>, OwnedFd>;

/// Re-makes every connection of `images` whose other end is not in them, within `wait`.
/// Those that could not be re-made are left out (they come back reset), each with a warning.
pub fn reconnect(images: &[&Image], wait: Duration) -> (Connections, Listeners) {
    let deadline = Instant::now() + wait;
    let mut acc = Accepting::default();
    let mut made = HashMap::new();
    for e in ends(images) {
        let listener = listener_on(images, e.local);
        let accepts = listener.is_some();
        let res = if let Some(lf) = listener {
            acc.accept(lf, e.local, e.peer, deadline)
        } else {
            connect_from(
                &super::addrmap::map_raw(e.local_raw),
                &super::addrmap::map_raw(e.peer_raw),
                deadline,
            )
        }
        .and_then(|s| exchange(&s, e.queued, deadline).map(|_| s));
        match res {
            Ok(s) => {
                let fd = OwnedFd::from(s);
                socket::set_connection_options(&fd, e.state);
                made.insert((e.local_raw.to_vec(), e.peer_raw.to_vec()), fd);
            }
            Err(err) => eprintln!(
                "cr_restart: warning: the TCP connection {} to {} could not be made again ({} it: {err}); it comes back reset",
                e.local,
                e.peer,
                if accepts { "accepting" } else { "connecting" }
            ),
        }
    }
    for (_, s) in acc.early.drain() {
        // Nobody asked for it: it will not be mistaken for a connection of the program.
        drop(s);
    }
    let listeners = acc
        .listeners
        .into_iter()
        .map(|(k, l)| (k, OwnedFd::from(l)))
        .collect();
    (made, listeners)
}
