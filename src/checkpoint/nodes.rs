//! A job across nodes checkpointed as one consistent cut (issue 16, docs/MPI.md "Across
//! nodes"): a **coordinator** ([`coordinate`]) and one **node part** per node ([`join`]), each
//! a checkpoint of that node's processes (a tree) run inside the node, joined to the
//! coordinator through a [`super::Barrier`].
//!
//! The cut: `PREPARE` (where the node's image goes, the post-checkpoint signal) → every node
//! stops its processes and answers `STOPPED` with its connection table (every TCP connection
//! of its processes whose other end is not one of them: local and remote address, bytes not
//! yet acknowledged by the peer, bytes waiting to be read) → once every node is stopped,
//! `DRAIN`: the kernels still run, so bytes on the wire land in the receivers' queues; each node
//! waits until none of its connections has unacknowledged bytes (`/proc/net/tcp`'s
//! `tx_queue`, what `SIOCOUTQ` says) and answers `DRAINED` with its table again (every byte in
//! flight is now waiting at a receiver, where its image keeps it) → `WRITE`: each node writes
//! and commits its image into the generation being made and answers `FINAL` with its table
//! once more (a node's `DRAINED` table can miss bytes another node was still sending; by now
//! every node has drained) and `WRITTEN` → the coordinator writes `MANIFEST` (nodes, images,
//! the connections between nodes matched by their addresses, with the `FINAL` tables' bytes
//! waiting) and renames the generation into place: that is the commit → `RELEASE`
//! (each node sends its post-checkpoint signal, then releases). Any failure, or a node that
//! goes away before the commit: `ABORT` to every node (each releases its processes, no
//! signal) and the unfinished generation is removed. A node that loses the coordinator
//! releases its processes.
//!
//! The transport (`nodelink`) is a unix stream socket whose path every node can reach (nodes
//! of one machine in network namespaces of their own, or a shared file system; only the
//! coordinator's user or root may join, by `SO_PEERCRED`), or TCP (`HOST:PORT`) between
//! machines, where a job secret is required: both sides prove they know it by HMAC-SHA256
//! challenge–response before anything else is said, and every later line carries an HMAC
//! (a secret may be given on a unix socket too). A node that fails the proof (or refuses the
//! coordinator's) calls the cut off for every node. A connection between nodes with more
//! bytes waiting than an image keeps fails the cut (`EAGAIN`: the job goes on; try again).
//! Each node's image is restarted with `cr_restart --reconnect` (`restore::reconnect`), all
//! at once, on the same addresses or (`--map-address`) other ones.

use super::nodelink::{self, Endpoint, Listener, Role, Sealer, Secret, Stream};
use super::{Barrier, CheckpointError, Destination, Note, Options, Outcome};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The first line of a generation's `MANIFEST`.
pub const MANIFEST_MAGIC: &str = "libcr-nodes 1";
/// Name of the manifest file in a generation directory.
pub const MANIFEST: &str = "MANIFEST";
/// Most bytes waiting on a connection an image keeps (`kinds::socket::MAX_QUEUED`).
const KEPT: u64 = crate::kinds::socket::MAX_QUEUED as u64;
/// How long the coordinator waits for the nodes to join, and a node for the coordinator's
/// next word, when no time limit is given.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

fn err(errno: i32, msg: String) -> CheckpointError {
    CheckpointError { errno, msg }
}

fn io_err(what: &str, e: std::io::Error) -> CheckpointError {
    let errno = match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        _ => e.raw_os_error().unwrap_or(libc::EIO),
    };
    err(errno, format!("{what}: {e}"))
}

/// The coordinator said ABORT (another node failed, or the coordinator did).
fn called_off() -> CheckpointError {
    err(
        libc::ECANCELED,
        "the coordinator called the checkpoint off (another node failed?): released".into(),
    )
}

/// One TCP connection of a node's processes whose other end is not one of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    /// Its local address.
    pub local: SocketAddr,
    /// Its peer's address.
    pub remote: SocketAddr,
    /// Bytes sent and not yet acknowledged by the peer (`SIOCOUTQ`).
    pub unacked: u64,
    /// Bytes received and not yet read (`FIONREAD`).
    pub waiting: u64,
}

impl Conn {
    fn line(&self) -> String {
        format!(
            "CONN {} {} {} {}",
            self.local, self.remote, self.unacked, self.waiting
        )
    }

    fn parse(line: &str) -> Option<Conn> {
        let mut f = line.strip_prefix("CONN ")?.split(' ');
        Some(Conn {
            local: f.next()?.parse().ok()?,
            remote: f.next()?.parse().ok()?,
            unacked: f.next()?.parse().ok()?,
            waiting: f.next()?.parse().ok()?,
        })
    }
}

/// `HEX:PORT` of `/proc/net/tcp{,6}`: the address as the kernel's words in memory order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The socket inodes `pids` hold.
fn socket_inodes(pids: &[i32]) -> HashSet<u64> {
    let mut set = HashSet::new();
    for pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            let l = link.to_string_lossy();
            if let Some(ino) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(ino) = ino.parse() {
                    set.insert(ino);
                }
            }
        }
    }
    set
}

/// The TCP connections of `pids` (read in the network namespace of the first) whose other end
/// is not a socket of theirs: the connections that leave the node.
pub fn connection_table(pids: &[i32]) -> Vec<Conn> {
    let Some(first) = pids.first() else {
        return Vec::new();
    };
    let inodes = socket_inodes(pids);
    let mut all = Vec::new();
    for file in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{first}/net/{file}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] == "0A" {
                continue;
            }
            let Ok(ino) = f[9].parse::<u64>() else {
                continue;
            };
            if !inodes.contains(&ino) {
                continue;
            }
            let (Some(local), Some(remote)) = (parse_proc_addr(f[1]), parse_proc_addr(f[2])) else {
                continue;
            };
            let Some((tx, rx)) = f[4].split_once(':') else {
                continue;
            };
            if remote.port() == 0 {
                continue;
            }
            all.push(Conn {
                local,
                remote,
                unacked: u64::from_str_radix(tx, 16).unwrap_or(0),
                waiting: u64::from_str_radix(rx, 16).unwrap_or(0),
            });
        }
    }
    let locals: HashSet<SocketAddr> = all.iter().map(|c| c.local).collect();
    all.retain(|c| !locals.contains(&c.remote));
    all.sort_by_key(|c| (c.local, c.remote));
    all
}

/// A receiving socket of the node's processes whose receive buffer [`open_receivers`] raised
/// for the drain: our own descriptor of it (`pidfd_getfd`) and its `SO_BUF_LOCK` before.
pub struct Receiver {
    fd: std::os::fd::OwnedFd,
    lock: Option<i32>,
}

impl Receiver {
    /// Peeks one byte: a read makes the kernel tell the peer its window opened at once
    /// (rather than at its next zero-window probe, which backs off to minutes).
    fn poke(&self) {
        let mut b = [0u8; 1];
        let _ = crate::sys::peek(std::os::fd::AsRawFd::as_raw_fd(&self.fd), &mut b);
    }
}

impl Drop for Receiver {
    /// Puts the buffer lock back (auto-tuning as before); the larger buffer stays (shrinking
    /// it under the window already offered would drop the peer's next packets).
    fn drop(&mut self) {
        if let Some(l) = self.lock {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&self.fd);
            let _ = crate::sys::setsockopt_int(
                fd,
                libc::SOL_SOCKET,
                crate::kinds::socket::SO_BUF_LOCK,
                l,
            );
        }
    }
}

/// The most a peer can have sent and not had acknowledged: its send buffer, at most the larger
/// of `tcp_wmem`'s maximum (auto-tuned) and twice `wmem_max` (set by the program).
fn largest_send_buffer() -> usize {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let tcp = read("/proc/sys/net/ipv4/tcp_wmem")
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    let set = read("/proc/sys/net/core/wmem_max")
        .trim()
        .parse::<usize>()
        .unwrap_or(0)
        * 2;
    tcp.max(set)
}

/// Lets every byte on its way into the node in: each connection of `pids` leaving the node
/// with bytes waiting to be read (its receiver may be full: its program stopped, or not
/// reading) gets a receive buffer that holds them and all its peer can still send (its send
/// buffer: [`largest_send_buffer`]), through a descriptor of our own (`pidfd_getfd`, which
/// needs the right to trace the process: same user, or root). Without it a stopped rank's
/// full buffer kept a whole MPI message in its peer's send queue, which an image cannot hold
/// without privileges (`TCP_REPAIR`), and the drain ran out of time. One that cannot be
/// reached is left as it is (the drain then waits for it as before).
pub fn open_receivers(pids: &[i32]) -> Vec<Receiver> {
    let Some(first) = pids.first() else {
        return Vec::new();
    };
    // Inode → bytes waiting, for the node's connections that leave it with bytes waiting.
    let inodes = socket_inodes(pids);
    let mut waiting: HashMap<u64, u64> = HashMap::new();
    for file in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{first}/net/{file}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let (Ok(ino), Some((_, rx))) = (f[9].parse::<u64>(), f[4].split_once(':')) else {
                continue;
            };
            let rx = u64::from_str_radix(rx, 16).unwrap_or(0);
            if rx > 0 && inodes.contains(&ino) {
                waiting.insert(ino, rx);
            }
        }
    }
    let room = largest_send_buffer();
    let mut out = Vec::new();
    for &pid in pids {
        if waiting.is_empty() {
            break;
        }
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        // SAFETY: pidfd_open takes no pointers.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if pidfd < 0 {
            continue;
        }
        for e in rd.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            let l = link.to_string_lossy();
            let Some(ino) = l
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(rx) = waiting.remove(&ino) else {
                continue;
            };
            let Some(target) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: pidfd_getfd takes no pointers; the descriptor it returns is ours.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) } as i32;
            if fd < 0 {
                continue;
            }
            // SAFETY: a descriptor the kernel just gave us.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            let lock = crate::sys::getsockopt_int(
                raw,
                libc::SOL_SOCKET,
                crate::kinds::socket::SO_BUF_LOCK,
            )
            .ok();
            crate::kinds::socket::raise_rcvbuf(raw, rx as usize + room);
            let r = Receiver { fd, lock };
            r.poke();
            out.push(r);
        }
        // SAFETY: our own pidfd.
        unsafe { libc::close(pidfd) };
    }
    out
}

/// Waits until no connection of `pids` leaving the node has unacknowledged bytes; the table
/// then. Fails naming a connection that did not drain by `deadline`. `receivers` (this
/// node's, [`open_receivers`]) are poked now and then so that their peers, on other nodes,
/// learn at once that their windows opened.
pub fn drain(
    pids: &[i32],
    deadline: Instant,
    receivers: &[Receiver],
) -> Result<Vec<Conn>, CheckpointError> {
    let mut round = 0u32;
    loop {
        if round.is_multiple_of(5) {
            receivers.iter().for_each(Receiver::poke);
        }
        round += 1;
        let table = connection_table(pids);
        let Some(stuck) = table.iter().find(|c| c.unacked > 0) else {
            return Ok(table);
        };
        if Instant::now() > deadline {
            return Err(err(
                libc::ETIMEDOUT,
                format!(
                    "the connection from {} to {} still has {} bytes in flight (is its receiver's buffer full?)",
                    stuck.local, stuck.remote, stuck.unacked
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One end of the coordinator's connection: lines in, lines out, each read with a deadline;
/// once the job secret is proven, each line sealed with its HMAC.
struct Wire {
    out: Stream,
    inp: BufReader<Stream>,
    /// Who is at the other end (for messages).
    peer: String,
    /// The session's seals, once authenticated.
    seal: Option<Sealer>,
}

impl Wire {
    fn new(s: Stream, peer: String) -> Result<Wire, CheckpointError> {
        let inp = s
            .try_clone()
            .map_err(|e| io_err("cannot use the connection", e))?;
        Ok(Wire {
            out: s,
            inp: BufReader::new(inp),
            peer,
            seal: None,
        })
    }

    /// Sends `line` (several lines when it holds newlines), in one write.
    fn send(&mut self, line: &str) -> Result<(), CheckpointError> {
        let mut text = String::new();
        for l in line.split('\n') {
            match &mut self.seal {
                Some(s) => text.push_str(&s.seal(l)),
                None => text.push_str(l),
            }
            text.push('\n');
        }
        self.out
            .write_all(text.as_bytes())
            .map_err(|e| io_err(&format!("cannot talk to {}", self.peer), e))
    }

    /// The next line, by `deadline`.
    fn recv(&mut self, deadline: Instant) -> Result<String, CheckpointError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.inp
            .get_ref()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| io_err("cannot wait", e))?;
        let mut l = String::new();
        match self.inp.read_line(&mut l) {
            Ok(0) => Err(err(libc::EPIPE, format!("{} went away", self.peer))),
            Ok(_) => {
                let l = l.trim_end_matches('\n');
                match &mut self.seal {
                    None => Ok(l.to_string()),
                    Some(s) => s.open(l).map(str::to_string).ok_or_else(|| {
                        err(
                            libc::EPROTO,
                            format!(
                                "a line from {} does not carry the session's HMAC (changed or injected on the way?): refused",
                                self.peer
                            ),
                        )
                    }),
                }
            }
            Err(e) => Err(io_err(&format!("no word from {}", self.peer), e)),
        }
    }

    /// The next line, which must start with `word`; a `FAILED why` line fails with why.
    fn expect(&mut self, word: &str, deadline: Instant) -> Result<String, CheckpointError> {
        let l = self.recv(deadline)?;
        if let Some(why) = l.strip_prefix("FAILED ") {
            return Err(err(libc::EIO, format!("{}: {why}", self.peer)));
        }
        if l == "ABORT" {
            return Err(called_off());
        }
        match l.strip_prefix(word) {
            Some(rest) => Ok(rest.trim_start().to_string()),
            None => Err(err(
                libc::EPROTO,
                format!("{} said {l:?}, expected {word}", self.peer),
            )),
        }
    }

    /// `WORD N` followed by N connection lines.
    fn table(&mut self, word: &str, deadline: Instant) -> Result<Vec<Conn>, CheckpointError> {
        let n: usize = self
            .expect(word, deadline)?
            .parse()
            .map_err(|_| err(libc::EPROTO, format!("{}: bad {word} line", self.peer)))?;
        (0..n)
            .map(|_| {
                let l = self.recv(deadline)?;
                Conn::parse(&l).ok_or_else(|| {
                    err(
                        libc::EPROTO,
                        format!("{}: bad connection line {l:?}", self.peer),
                    )
                })
            })
            .collect()
    }

    fn send_table(&mut self, word: &str, t: &[Conn]) -> Result<(), CheckpointError> {
        let mut s = format!("{word} {}", t.len());
        for c in t {
            s.push('\n');
            s.push_str(&c.line());
        }
        self.send(&s)
    }
}

/// Whether `name` can name a node (and its image file).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !name.starts_with('.')
}

/// The node side of the cut (a [`Barrier`] of the node's checkpoint).
struct NodeBarrier<'a> {
    wire: &'a mut Wire,
    wait: Duration,
    /// The node's receivers whose buffers the drain raised ([`open_receivers`]).
    receivers: Vec<Receiver>,
    /// The processes of the node's part (for the table sent with `WRITTEN`).
    pids: Vec<i32>,
}

impl Barrier for NodeBarrier<'_> {
    fn stopped(&mut self, pids: &[i32]) -> Result<(), CheckpointError> {
        let deadline = Instant::now() + self.wait;
        self.pids = pids.to_vec();
        self.wire.send_table("STOPPED", &connection_table(pids))?;
        let ms: u64 = self
            .wire
            .expect("DRAIN", deadline)?
            .parse()
            .map_err(|_| err(libc::EPROTO, "bad DRAIN line".into()))?;
        // Bytes on their way in (a peer's send queue behind a full receiver) are let in now;
        // the buffers stay raised until the images are written.
        self.receivers = open_receivers(pids);
        let drained = match drain(
            pids,
            Instant::now() + Duration::from_millis(ms),
            &self.receivers,
        ) {
            Ok(t) => t,
            Err(e) => {
                let _ = self.wire.send(&format!("FAILED {}", e.msg));
                return Err(e);
            }
        };
        self.wire.send_table("DRAINED", &drained)?;
        match self
            .wire
            .recv(deadline + Duration::from_millis(ms))?
            .as_str()
        {
            "WRITE" => Ok(()),
            _ => Err(called_off()),
        }
    }

    fn written(&mut self, bytes: u64) -> Result<(), CheckpointError> {
        // The table again, now that every node has drained (a `DRAINED` table was taken when
        // this node's own bytes were in, while other nodes' could still be arriving): what
        // waits at this node's receivers is final, and the manifest records it.
        self.wire
            .send_table("FINAL", &connection_table(&self.pids))?;
        self.wire.send(&format!("WRITTEN {bytes}"))?;
        match self.wire.recv(Instant::now() + self.wait)?.as_str() {
            "RELEASE" => Ok(()),
            _ => Err(called_off()),
        }
    }
}

/// What [`join`] and [`join_on`] check before anything is sent: the node's name, a secret over
/// TCP. Returns how long to wait for the coordinator.
fn join_checks(
    coord: &Endpoint,
    secret: Option<&Secret>,
    name: &str,
    opts: &Options,
) -> Result<Duration, CheckpointError> {
    if !valid_name(name) {
        return Err(err(
            libc::EINVAL,
            format!("node name {name:?}: use letters, digits, '.', '-' and '_'"),
        ));
    }
    if coord.is_tcp() && secret.is_none() {
        return Err(no_secret_over_tcp("--node", coord));
    }
    Ok(opts
        .time
        .map_or(DEFAULT_WAIT, |s| Duration::from_secs(u64::from(s))))
}

/// One node's part: joins the coordinator listening at `coord` as node `name` and
/// checkpoints `opts` (a tree, group or session of this node; its destination and
/// post-checkpoint signal are the coordinator's) as part of the job's cut. With `secret`,
/// both sides prove they know it before anything else (required over TCP).
pub fn join(
    coord: &Endpoint,
    secret: Option<&Secret>,
    name: &str,
    opts: &Options,
    note: &mut dyn FnMut(Note),
) -> Result<Outcome, CheckpointError> {
    let wait = join_checks(coord, secret, name, opts)?;
    let s = nodelink::connect(coord, Instant::now() + wait)
        .map_err(|e| io_err(&format!("cannot reach the coordinator at {coord}"), e))?;
    join_checked(s, coord, secret, name, opts, wait, note)
}

/// [`join`] through `s`, a connection to the coordinator at `coord` already made (a node
/// agent that waits for the coordinator connects by itself: `supervise::node`).
pub fn join_on(
    s: Stream,
    coord: &Endpoint,
    secret: Option<&Secret>,
    name: &str,
    opts: &Options,
    note: &mut dyn FnMut(Note),
) -> Result<Outcome, CheckpointError> {
    let wait = join_checks(coord, secret, name, opts)?;
    join_checked(s, coord, secret, name, opts, wait, note)
}

/// [`join_on`] once [`join_checks`] has passed (and said how long to `wait`).
fn join_checked(
    s: Stream,
    coord: &Endpoint,
    secret: Option<&Secret>,
    name: &str,
    opts: &Options,
    wait: Duration,
    note: &mut dyn FnMut(Note),
) -> Result<Outcome, CheckpointError> {
    let mut wire = Wire::new(s, "the coordinator".into())?;
    match secret {
        None => wire.send(&format!("HELLO {name}"))?,
        Some(k) => prove_to_coordinator(&mut wire, k, name, coord, Instant::now() + wait)?,
    }
    let prep = wire.expect("PREPARE", Instant::now() + wait)?;
    let (signal, path) = prep
        .split_once(' ')
        .and_then(|(s, p)| Some((s.parse::<i32>().ok()?, PathBuf::from(p))))
        .ok_or_else(|| err(libc::EPROTO, format!("bad PREPARE line {prep:?}")))?;
    let opts = Options {
        dest: Destination::File(path),
        commit: super::Commit::Atomic,
        signal,
        ..opts.clone()
    };
    let mut barrier = NodeBarrier {
        wire: &mut wire,
        wait,
        receivers: Vec::new(),
        pids: Vec::new(),
    };
    match super::checkpoint_part(&opts, &mut barrier, note) {
        Ok(out) => {
            let _ = wire.send("DONE");
            Ok(out)
        }
        Err(e) => {
            let _ = wire.send(&format!("FAILED {}", e.msg));
            Err(e)
        }
    }
}

/// Over TCP nothing tells who connected (no `SO_PEERCRED`): a job secret is required.
fn no_secret_over_tcp(opt: &str, ep: &Endpoint) -> CheckpointError {
    err(
        libc::EINVAL,
        format!(
            "{opt} {ep}: over TCP a job secret is required (--secret FILE, the same file for the coordinator and every node)"
        ),
    )
}

/// The node's side of the authentication: `HELLO NAME AUTH NONCE` → the coordinator's
/// `CHALLENGE NONCE PROOF`, checked (else `REFUSED`) → `PROOF` → `WELCOME` (or `REFUSED`);
/// then every line is sealed.
fn prove_to_coordinator(
    wire: &mut Wire,
    k: &Secret,
    name: &str,
    coord: &Endpoint,
    deadline: Instant,
) -> Result<(), CheckpointError> {
    let n = nodelink::nonce().map_err(|e| io_err("cannot make a nonce (getrandom)", e))?;
    wire.send(&format!("HELLO {name} AUTH {}", nodelink::hex(&n)))?;
    let refused = |why: &str| {
        err(
            libc::EACCES,
            format!("the coordinator at {coord} refused this node: {why}"),
        )
    };
    let l = wire.recv(deadline)?;
    if let Some(why) = l.strip_prefix("REFUSED ") {
        return Err(refused(why));
    }
    if l == "ABORT" {
        return Err(called_off());
    }
    let challenge = l
        .strip_prefix("CHALLENGE ")
        .and_then(|r| r.split_once(' '))
        .and_then(|(c, p)| Some((nodelink::nonce_from_hex(c)?, nodelink::unhex(p)?)));
    let Some((c, p)) = challenge else {
        return Err(err(
            libc::EPROTO,
            format!("the coordinator at {coord} said {l:?}, expected its proof of the job secret"),
        ));
    };
    if !nodelink::verify(k, Role::Coordinator, name, &n, &c, &p) {
        let _ = wire.send("REFUSED the coordinator's proof of the job secret is wrong");
        return Err(err(
            libc::EACCES,
            format!(
                "the coordinator at {coord} did not prove the job secret (not the same --secret file?): refused, nothing was checkpointed"
            ),
        ));
    }
    let mine = nodelink::proof(k, Role::Node, name, &n, &c);
    wire.send(&format!("PROOF {}", nodelink::hex(&mine)))?;
    let l = wire.recv(deadline)?;
    if let Some(why) = l.strip_prefix("REFUSED ") {
        return Err(refused(why));
    }
    if l != "WELCOME" {
        return Err(err(
            libc::EPROTO,
            format!("the coordinator at {coord} said {l:?}, expected WELCOME"),
        ));
    }
    wire.seal = Some(Sealer::new(k, Role::Node, name, &n, &c));
    Ok(())
}

/// The coordinator's side of the authentication of node `name` (which sent its nonce
/// `nonce`, hexadecimal, from `from`): see [`prove_to_coordinator`].
fn authenticate_node(
    wire: &mut Wire,
    k: &Secret,
    name: &str,
    nonce: &str,
    from: &str,
    deadline: Instant,
) -> Result<(), CheckpointError> {
    let refused = |why: &str| {
        err(
            libc::EACCES,
            format!("node {name} (from {from}) {why}: refused, the checkpoint is called off"),
        )
    };
    let Some(n) = nodelink::nonce_from_hex(nonce) else {
        let _ = wire.send("REFUSED a bad nonce");
        return Err(refused("sent a bad nonce"));
    };
    let c = nodelink::nonce().map_err(|e| io_err("cannot make a nonce (getrandom)", e))?;
    let mine = nodelink::proof(k, Role::Coordinator, name, &n, &c);
    wire.send(&format!(
        "CHALLENGE {} {}",
        nodelink::hex(&c),
        nodelink::hex(&mine)
    ))?;
    let l = wire.recv(deadline)?;
    if l.starts_with("REFUSED") {
        return Err(refused(
            "did not accept this coordinator's proof of the job secret (not the same --secret file?)",
        ));
    }
    let proven = l
        .strip_prefix("PROOF ")
        .and_then(nodelink::unhex)
        .is_some_and(|p| nodelink::verify(k, Role::Node, name, &n, &c, &p));
    if !proven {
        let _ = wire.send("REFUSED wrong proof of the job secret (not the same --secret file?)");
        return Err(refused(
            "did not prove the job secret (not the same --secret file?)",
        ));
    }
    wire.send("WELCOME")?;
    wire.seal = Some(Sealer::new(k, Role::Coordinator, name, &n, &c));
    Ok(())
}

/// What the coordinator asks for.
#[derive(Clone, Debug)]
pub struct Coordination {
    /// Where the node parts join (a unix socket made here, or `HOST:PORT` over TCP).
    pub listen: Endpoint,
    /// The job secret the nodes must prove (required over TCP).
    pub secret: Option<Secret>,
    /// How many node parts make the job.
    pub nodes: usize,
    /// The job's checkpoint directory: each checkpoint is a generation `gen.N` in it.
    pub dir: PathBuf,
    /// The post-checkpoint signal every node sends its processes after the commit (0: none).
    pub signal: i32,
    /// Seconds each phase may take (the nodes joining, stopping, draining, writing).
    pub time: Option<u32>,
}

/// A committed generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Its directory (`DIR/gen.N`).
    pub dir: PathBuf,
    /// Each node's name and its image's bytes.
    pub nodes: Vec<(String, u64)>,
    /// The connections between nodes (each seen from both ends, counted once).
    pub links: usize,
}

/// The next generation number in `dir`.
fn next_generation(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("gen.")?.parse::<u64>().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1
}

/// Only our own user (or root) may join.
fn peer_allowed(s: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt on a connected socket into a ucred of the size given.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    rc == 0 && (cred.uid == me || cred.uid == 0)
}

/// A node part that joined.
struct Node {
    name: String,
    wire: Wire,
    table: Vec<Conn>,
    bytes: u64,
}

/// The generation being made: removed unless committed; the nodes hear ABORT unless released.
struct Pending<'a> {
    tmp: PathBuf,
    nodes: &'a mut Vec<Node>,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            for n in self.nodes.iter_mut() {
                let _ = n.wire.send("ABORT");
            }
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// The coordinator: waits for `c.nodes` node parts at `c.listen`, takes one consistent cut of
/// them all, and commits it as a new generation in `c.dir`.
pub fn coordinate(
    c: &Coordination,
    note: &mut dyn FnMut(Note),
) -> Result<Generation, CheckpointError> {
    if c.nodes == 0 {
        return Err(err(libc::EINVAL, "--nodes 0: give 1 or more".into()));
    }
    if !(0..=64).contains(&c.signal) {
        return Err(err(
            libc::EINVAL,
            format!("invalid signal number {}", c.signal),
        ));
    }
    let wait = c
        .time
        .map_or(DEFAULT_WAIT, |s| Duration::from_secs(u64::from(s)));
    if c.listen.is_tcp() && c.secret.is_none() {
        return Err(no_secret_over_tcp("--coordinator", &c.listen));
    }
    std::fs::create_dir_all(&c.dir)
        .map_err(|e| io_err(&format!("cannot make {}", c.dir.display()), e))?;
    let listener = Listener::bind(&c.listen)
        .map_err(|e| io_err(&format!("cannot listen at {}", c.listen), e))?;
    if c.listen.is_tcp() {
        note(Note::Info(format!("listening on {}", listener.local())));
    }
    let mut nodes: Vec<Node> = Vec::new();
    if let Err(e) = accept_nodes(&listener, c, &mut nodes, Instant::now() + wait, note) {
        // The nodes that joined are told (their processes were not stopped yet).
        for n in nodes.iter_mut() {
            let _ = n.wire.send("ABORT");
        }
        return Err(e);
    }
    // Every node is in: anyone else connecting now is refused, not left waiting (a node agent
    // trying again for the next checkpoint).
    drop(listener);
    // Nodes in name order: the manifest's order, and the order their answers are read in.
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let number = next_generation(&c.dir);
    let tmp = c.dir.join(format!(".gen.{number}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io_err(&format!("cannot make {}", tmp.display()), e))?;
    let mut p = Pending {
        tmp: tmp.clone(),
        nodes: &mut nodes,
        done: false,
    };
    let t0 = Instant::now();
    for n in p.nodes.iter_mut() {
        let img = tmp.join(format!("{}.ckpt", n.name));
        n.wire
            .send(&format!("PREPARE {} {}", c.signal, img.display()))?;
    }
    // Every node stopped before any drains or writes.
    let deadline = Instant::now() + wait;
    for n in p.nodes.iter_mut() {
        n.table = n.wire.table("STOPPED", deadline)?;
    }
    let stopped = t0.elapsed();
    let drain_ms = wait.as_millis().min(u128::from(u32::MAX)) as u64;
    for n in p.nodes.iter_mut() {
        n.wire.send(&format!("DRAIN {drain_ms}"))?;
    }
    let deadline = Instant::now() + wait;
    for n in p.nodes.iter_mut() {
        n.table = n.wire.table("DRAINED", deadline)?;
    }
    let drained = t0.elapsed();
    let links = match_links(p.nodes, note);
    // A connection between nodes with more waiting than an image keeps could only come back
    // reset, which the job would not survive: no generation (the job goes on; try again).
    if let Some(l) = links
        .iter()
        .find(|l| l.peer.is_some() && l.conn.waiting > KEPT)
    {
        return Err(err(
            libc::EAGAIN,
            format!(
                "node {}: the connection from {} to {} has {} bytes waiting, more than an image keeps ({} MiB): no checkpoint, the job goes on; try again",
                p.nodes[l.node].name,
                l.conn.local,
                l.conn.remote,
                l.conn.waiting,
                KEPT >> 20
            ),
        ));
    }
    for n in p.nodes.iter_mut() {
        n.wire.send("WRITE")?;
    }
    let deadline = Instant::now() + wait;
    for n in p.nodes.iter_mut() {
        n.table = n.wire.table("FINAL", deadline)?;
        let b = n.wire.expect("WRITTEN", deadline)?;
        n.bytes = b
            .parse()
            .map_err(|_| err(libc::EPROTO, format!("{}: bad WRITTEN line", n.wire.peer)))?;
    }
    // The commit: the manifest (with what waits at each receiver now that every node drained),
    // durable, then the generation renamed into place.
    let links = match_links(p.nodes, &mut |_| {});
    let manifest = manifest_text(p.nodes, &links);
    let mpath = tmp.join(MANIFEST);
    write_durable(&mpath, manifest.as_bytes())
        .map_err(|e| io_err(&format!("cannot write {}", mpath.display()), e))?;
    let dest = c.dir.join(format!("gen.{number}"));
    std::fs::rename(&tmp, &dest)
        .map_err(|e| io_err(&format!("cannot commit {}", dest.display()), e))?;
    if let Ok(d) = std::fs::File::open(&c.dir) {
        let _ = d.sync_all();
    }
    p.done = true;
    for n in p.nodes.iter_mut() {
        // A node gone now has its image committed; its processes release themselves.
        let _ = n.wire.send("RELEASE");
    }
    for n in p.nodes.iter_mut() {
        if let Err(e) = n.wire.expect("DONE", Instant::now() + wait) {
            note(Note::Warning(format!("after the commit: {e}")));
        }
    }
    note(Note::Info(format!(
        "every node stopped after {:.1} ms, drained after {:.1} ms, committed after {:.1} ms",
        stopped.as_secs_f64() * 1e3,
        drained.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3
    )));
    let out = Generation {
        dir: dest,
        nodes: p.nodes.iter().map(|n| (n.name.clone(), n.bytes)).collect(),
        links: links.iter().filter(|l| l.peer.is_some()).count() / 2,
    };
    Ok(out)
}

/// Waits for `c.nodes` node parts at `listener` until `deadline`, each authenticated (its
/// user's by `SO_PEERCRED` on a unix socket; the job secret when `c.secret` is given).
fn accept_nodes(
    listener: &Listener,
    c: &Coordination,
    nodes: &mut Vec<Node>,
    deadline: Instant,
    note: &mut dyn FnMut(Note),
) -> Result<(), CheckpointError> {
    while nodes.len() < c.nodes {
        match listener.accept() {
            Ok((s, from)) => {
                if let Some(u) = s.unix() {
                    if !peer_allowed(u) {
                        note(Note::Warning(
                            "a process of another user tried to join: refused".into(),
                        ));
                        continue;
                    }
                }
                let mut wire = Wire::new(s, "a node".into())?;
                let hello = wire.expect("HELLO", deadline)?;
                let (name, nonce) = match hello.split_once(" AUTH ") {
                    Some((n, a)) => (n.to_string(), Some(a.to_string())),
                    None => (hello, None),
                };
                if !valid_name(&name) || nodes.iter().any(|n| n.name == name) {
                    let _ = wire.send("ABORT");
                    return Err(err(
                        libc::EINVAL,
                        format!("a node joined as {name:?}: not a name, or taken"),
                    ));
                }
                wire.peer = format!("node {name}");
                match (&c.secret, nonce) {
                    (None, None) => {}
                    (Some(k), Some(n)) => {
                        authenticate_node(&mut wire, k, &name, &n, &from, deadline)?
                    }
                    (Some(_), None) => {
                        let _ = wire.send(
                            "REFUSED this coordinator requires the job secret (--secret FILE)",
                        );
                        return Err(err(
                            libc::EACCES,
                            format!("node {name} (from {from}) gave no proof of the job secret (no --secret?): refused, the checkpoint is called off"),
                        ));
                    }
                    (None, Some(_)) => {
                        let _ = wire.send("REFUSED this coordinator has no job secret (give it --secret FILE too)");
                        return Err(err(
                            libc::EACCES,
                            format!("node {name} (from {from}) proves a job secret but this coordinator has none (--secret FILE): refused, the checkpoint is called off"),
                        ));
                    }
                }
                note(Note::Info(if c.listen.is_tcp() {
                    format!("node {name} joined from {from}")
                } else {
                    format!("node {name} joined")
                }));
                nodes.push(Node {
                    name,
                    wire,
                    table: Vec::new(),
                    bytes: 0,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(err(
                        libc::ETIMEDOUT,
                        format!("{} of {} nodes joined in time", nodes.len(), c.nodes),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("cannot accept a node", e)),
        }
    }
    Ok(())
}

/// A connection of a node as the manifest records it: its peer node, if its other end is one.
struct Link {
    node: usize,
    conn: Conn,
    peer: Option<usize>,
}

/// Matches every node's connections with the other nodes' by their addresses; warns about
/// those leading outside the job and those with more bytes waiting than an image keeps.
fn match_links(nodes: &[Node], note: &mut dyn FnMut(Note)) -> Vec<Link> {
    let mut ends: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for c in &n.table {
            ends.insert((c.local, c.remote), i);
        }
    }
    let mut links = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for c in &n.table {
            let peer = ends.get(&(c.remote, c.local)).copied().filter(|&j| j != i);
            if peer.is_none() {
                note(Note::Warning(format!(
                    "node {}: the connection from {} to {} leads outside the job",
                    n.name, c.local, c.remote
                )));
            }
            if c.waiting > KEPT && peer.is_none() {
                note(Note::Warning(format!(
                    "node {}: the connection from {} to {} has {} bytes waiting, more than an image keeps ({} MiB): it cannot come back connected",
                    n.name, c.local, c.remote, c.waiting, KEPT >> 20
                )));
            }
            links.push(Link {
                node: i,
                conn: c.clone(),
                peer,
            });
        }
    }
    links
}

/// The generation's `MANIFEST`: its nodes with their images and sizes, then every connection
/// between nodes (or leading outside the job) with the bytes waiting at that end.
fn manifest_text(nodes: &[Node], links: &[Link]) -> String {
    let mut s = format!("{MANIFEST_MAGIC}\nnodes {}\n", nodes.len());
    for n in nodes {
        s.push_str(&format!("node {} {}.ckpt {}\n", n.name, n.name, n.bytes));
    }
    for l in links {
        let peer = l.peer.map_or("outside", |j| nodes[j].name.as_str());
        s.push_str(&format!(
            "conn {} {} {} waiting {} peer {}\n",
            nodes[l.node].name, l.conn.local, l.conn.remote, l.conn.waiting, peer
        ));
    }
    s
}

fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses() {
        assert_eq!(
            parse_proc_addr("0100630A:1F90"),
            Some("10.99.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000100007F:0050"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0016"),
            Some("[::1]:22".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz"), None);
    }

    #[test]
    fn conn_lines() {
        let c = Conn {
            local: "10.99.0.1:1024".parse().unwrap(),
            remote: "[::1]:7".parse().unwrap(),
            unacked: 3,
            waiting: 9,
        };
        assert_eq!(Conn::parse(&c.line()), Some(c));
        assert_eq!(Conn::parse("CONN x"), None);
    }

    /// Both sides of the authentication over a connected pair: `node`'s secret against the
    /// coordinator's `coord`; each side's result and, when both passed, a sealed line each way.
    fn handshake(node: u8, coord: u8) -> (Result<(), String>, Result<(), String>) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let k = Secret::from_bytes(vec![node; 32]).unwrap();
            let mut w = Wire::new(Stream::Unix(a), "the coordinator".into()).unwrap();
            let ep = Endpoint::Tcp("127.0.0.1:1".into());
            let deadline = Instant::now() + Duration::from_secs(5);
            prove_to_coordinator(&mut w, &k, "nodeb", &ep, deadline)?;
            w.send("STOPPED 0")?;
            w.expect("DRAIN", deadline).map(|_| ())
        });
        let k = Secret::from_bytes(vec![coord; 32]).unwrap();
        let mut w = Wire::new(Stream::Unix(b), "a node".into()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let hello = w.expect("HELLO", deadline).unwrap();
        let (name, nonce) = hello.split_once(" AUTH ").unwrap();
        assert_eq!(name, "nodeb");
        let c = authenticate_node(&mut w, &k, name, nonce, "10.0.0.2:999", deadline)
            .and_then(|()| w.expect("STOPPED", deadline))
            .and_then(|_| w.send("DRAIN 5"));
        drop(w);
        let n = t.join().unwrap();
        (n.map_err(|e| e.msg), c.map_err(|e| e.msg))
    }

    #[test]
    fn authentication_both_ways() {
        let (n, c) = handshake(1, 1);
        assert_eq!((n, c), (Ok(()), Ok(())));
        let (n, c) = handshake(1, 2);
        let n = n.unwrap_err();
        let c = c.unwrap_err();
        assert!(
            n.contains("did not prove the job secret") && n.contains("127.0.0.1:1"),
            "{n}"
        );
        assert!(
            c.contains("node nodeb (from 10.0.0.2:999)") && c.contains("called off"),
            "{c}"
        );
    }

    #[test]
    fn sealed_wire_refuses_a_forged_line() {
        let (a, b) = UnixStream::pair().unwrap();
        let k = Secret::from_bytes(vec![3; 32]).unwrap();
        let (n, c) = ([1u8; 32], [2u8; 32]);
        let mut node = Wire::new(Stream::Unix(a), "the coordinator".into()).unwrap();
        node.seal = Some(Sealer::new(&k, Role::Node, "x", &n, &c));
        let mut raw = b;
        raw.write_all(b"RELEASE\n").unwrap();
        let e = node
            .recv(Instant::now() + Duration::from_secs(5))
            .unwrap_err();
        assert!(e.msg.contains("HMAC"), "{}", e.msg);
    }

    #[test]
    fn node_names() {
        assert!(valid_name("nodea"));
        assert!(valid_name("n-1.example_2"));
        assert!(!valid_name(""));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a b"));
    }
}
