//! The coordinator's transport for a job across nodes (`checkpoint::nodes`, docs/MPI.md
//! "The coordinator over TCP"): where the coordinator listens ([`Endpoint`]: a unix socket path,
//! or `HOST:PORT` over TCP), the stream either way ([`Stream`], [`Listener`]), and the job
//! secret that authenticates both ends over TCP, where `SO_PEERCRED` does not exist.
//!
//! The secret ([`Secret`], a file every part of the job reads: `--secret FILE`) is never sent.
//! Each side proves it knows it by a challenge–response with HMAC-SHA256 over the other side's
//! fresh nonce (32 bytes from `getrandom`): the node sends its nonce with its name, the
//! coordinator answers with its own nonce and its proof ([`proof`] with [`Role::Coordinator`]),
//! the node checks it and answers with its proof ([`Role::Node`]). Each proof covers the node's
//! name and both nonces, under a label of its role, so neither a proof replayed from another
//! session nor one reflected back to its sender passes. After that every line either way
//! carries an HMAC under a session key of both nonces ([`Sealer`]) and its sequence number, so
//! a line injected, changed, replayed or reordered on the way is refused.
//!
//! Runs in the tools (`cr_checkpoint`), never in the agent: it may allocate.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a nonce and of a proof.
pub const NONCE_LEN: usize = 32;
/// The shortest secret accepted.
pub const MIN_SECRET: usize = 16;

/// Where the coordinator listens and the nodes connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix stream socket at this path (nodes of one machine, or a shared file system).
    Unix(PathBuf),
    /// `HOST:PORT` over TCP (`[V6]:PORT` for an IPv6 address).
    Tcp(String),
}

impl Endpoint {
    /// `HOST:PORT` (no `/`, a port number after the last colon) is TCP; anything else is a
    /// unix socket path (write `./NAME:1` for a socket file named like that).
    pub fn parse(s: &str) -> Endpoint {
        if !s.contains('/') {
            if let Some((host, port)) = s.rsplit_once(':') {
                if !host.is_empty()
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && port.parse::<u16>().is_ok()
                {
                    return Endpoint::Tcp(s.to_string());
                }
            }
        }
        Endpoint::Unix(PathBuf::from(s))
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, Endpoint::Tcp(_))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

/// A connection between the coordinator and a node, either way.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    /// The unix stream, for `SO_PEERCRED`.
    pub fn unix(&self) -> Option<&UnixStream> {
        match self {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// The coordinator's listening socket (a unix one's path is removed when dropped).
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Listens at `ep` (non-blocking accepts); a unix socket path left over is replaced.
    pub fn bind(ep: &Endpoint) -> std::io::Result<Listener> {
        let l = match ep {
            Endpoint::Unix(p) => {
                let _ = std::fs::remove_file(p);
                Listener::Unix(UnixListener::bind(p)?, p.clone())
            }
            Endpoint::Tcp(a) => Listener::Tcp(TcpListener::bind(a.as_str())?),
        };
        match &l {
            Listener::Unix(u, _) => u.set_nonblocking(true)?,
            Listener::Tcp(t) => t.set_nonblocking(true)?,
        }
        Ok(l)
    }

    /// Where it listens (a TCP port 0 asked for: the port the system chose).
    pub fn local(&self) -> String {
        match self {
            Listener::Unix(_, p) => p.display().to_string(),
            Listener::Tcp(t) => t
                .local_addr()
                .map_or_else(|e| format!("?({e})"), |a| a.to_string()),
        }
    }

    /// The next connection (blocking from then on) and who it comes from, or `WouldBlock`.
    pub fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Unix(u, _) => {
                let (s, _) = u.accept()?;
                s.set_nonblocking(false)?;
                Ok((Stream::Unix(s), "a local process".into()))
            }
            Listener::Tcp(t) => {
                let (s, from) = t.accept()?;
                s.set_nonblocking(false)?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), from.to_string()))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Connects to the coordinator at `ep`. Over TCP, again while refused (the coordinator may
/// not listen yet: the parts of a job start together) until `deadline`; a unix socket once.
pub fn connect(ep: &Endpoint, deadline: Instant) -> std::io::Result<Stream> {
    match ep {
        Endpoint::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p)?)),
        Endpoint::Tcp(a) => loop {
            let mut last = None;
            for addr in a.as_str().to_socket_addrs()? {
                let left = deadline.saturating_duration_since(Instant::now());
                match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(100))) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            let e = last
                .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"));
            if e.kind() != std::io::ErrorKind::ConnectionRefused || Instant::now() > deadline {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        },
    }
}

/// The job secret: the bytes of a file every part of the job reads.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// The secret in `path`: a regular file only its owner can read or write, of at least
    /// [`MIN_SECRET`] bytes (e.g. `head -c 32 /dev/urandom > FILE; chmod 600 FILE`).
    pub fn read(path: &Path) -> Result<Secret, String> {
        use std::os::unix::fs::MetadataExt;
        let what = format!("secret file {}", path.display());
        let mut f = std::fs::File::open(path).map_err(|e| format!("{what}: {e}"))?;
        let md = f.metadata().map_err(|e| format!("{what}: {e}"))?;
        if !md.is_file() {
            return Err(format!("{what}: not a regular file"));
        }
        if md.mode() & 0o077 != 0 {
            return Err(format!(
                "{what}: others may read or change it (mode {:o}): chmod 600 it",
                md.mode() & 0o777
            ));
        }
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| format!("{what}: {e}"))?;
        Secret::from_bytes(bytes).map_err(|e| format!("{what}: {e}"))
    }

    /// A secret of these bytes (at least [`MIN_SECRET`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Secret, String> {
        if bytes.len() < MIN_SECRET {
            return Err(format!(
                "{} bytes, too short: at least {MIN_SECRET} (e.g. head -c 32 /dev/urandom > FILE)",
                bytes.len()
            ));
        }
        Ok(Secret(bytes))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length.
        <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// A fresh nonce from `getrandom`.
pub fn nonce() -> std::io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    let mut done = 0;
    while done < n.len() {
        // SAFETY: getrandom writes at most the given length into the rest of `n`.
        let rc = unsafe { libc::getrandom(n[done..].as_mut_ptr().cast(), n.len() - done, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += rc as usize;
    }
    Ok(n)
}

/// Which side proves: each side's proof has its own label, so one side's proof never passes
/// as the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Node,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Coordinator => b"libcr-nodes 1 coordinator proof\0",
            Role::Node => b"libcr-nodes 1 node proof\0",
        }
    }
}

/// The MAC of `parts`, each preceded by its length (no two different lists give one input).
fn mac_of(key: HmacSha256, parts: &[&[u8]]) -> HmacSha256 {
    let mut m = key;
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m
}

/// `role`'s proof that it knows `secret`, in the session of node `name` with the node's nonce
/// `node_nonce` and the coordinator's `coord_nonce`.
pub fn proof(
    secret: &Secret,
    role: Role,
    name: &str,
    node_nonce: &[u8; NONCE_LEN],
    coord_nonce: &[u8; NONCE_LEN],
) -> [u8; 32] {
    mac_of(
        secret.mac(),
        &[role.label(), name.as_bytes(), node_nonce, coord_nonce],
    )
    .finalize()
    .into_bytes()
    .into()
}

/// Whether `tag` is `role`'s proof (compared in constant time).
pub fn verify(
    secret: &Secret,
    role: Role,
    name: &str,
    node_nonce: &[u8; NONCE_LEN],
    coord_nonce: &[u8; NONCE_LEN],
    tag: &[u8],
) -> bool {
    mac_of(
        secret.mac(),
        &[role.label(), name.as_bytes(), node_nonce, coord_nonce],
    )
    .verify_slice(tag)
    .is_ok()
}

/// The lines of one authenticated session: each carries the HMAC, under a key of the
/// session's nonces, of its direction, its sequence number and its text.
pub struct Sealer {
    key: [u8; 32],
    /// Which side this is (its lines go one way, the other side's the other).
    me: Role,
    sent: u64,
    received: u64,
}

impl Sealer {
    pub fn new(
        secret: &Secret,
        me: Role,
        name: &str,
        node_nonce: &[u8; NONCE_LEN],
        coord_nonce: &[u8; NONCE_LEN],
    ) -> Sealer {
        let key = mac_of(
            secret.mac(),
            &[
                b"libcr-nodes 1 session key\0",
                name.as_bytes(),
                node_nonce,
                coord_nonce,
            ],
        )
        .finalize()
        .into_bytes()
        .into();
        Sealer {
            key,
            me,
            sent: 0,
            received: 0,
        }
    }

    fn tag(&self, from: Role, seq: u64, line: &str) -> HmacSha256 {
        let k = <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("32-byte key");
        mac_of(k, &[from.label(), &seq.to_be_bytes(), line.as_bytes()])
    }

    /// `line` with its tag (the next of this side's lines).
    pub fn seal(&mut self, line: &str) -> String {
        let t = self.tag(self.me, self.sent, line).finalize().into_bytes();
        self.sent += 1;
        format!("{line} {}", hex(&t))
    }

    /// The text of the other side's next line, if its tag is right.
    pub fn open<'a>(&mut self, sealed: &'a str) -> Option<&'a str> {
        let (line, t) = sealed.rsplit_once(' ')?;
        let t = unhex(t)?;
        let from = match self.me {
            Role::Coordinator => Role::Node,
            Role::Node => Role::Coordinator,
        };
        self.tag(from, self.received, line).verify_slice(&t).ok()?;
        self.received += 1;
        Some(line)
    }
}

/// Lower-case hexadecimal.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes from hexadecimal (`None` if not).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A nonce from hexadecimal.
pub fn nonce_from_hex(s: &str) -> Option<[u8; NONCE_LEN]> {
    unhex(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes(vec![b; 32]).unwrap()
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("10.0.0.1:7316"),
            Endpoint::Tcp("10.0.0.1:7316".into())
        );
        assert_eq!(
            Endpoint::parse("head-node:7316"),
            Endpoint::Tcp("head-node:7316".into())
        );
        assert_eq!(
            Endpoint::parse("[::1]:7316"),
            Endpoint::Tcp("[::1]:7316".into())
        );
        assert_eq!(
            Endpoint::parse("/shared/job.sock"),
            Endpoint::Unix("/shared/job.sock".into())
        );
        assert_eq!(
            Endpoint::parse("job.sock"),
            Endpoint::Unix("job.sock".into())
        );
        assert_eq!(Endpoint::parse("./x:1"), Endpoint::Unix("./x:1".into()));
        assert_eq!(Endpoint::parse("x:99999"), Endpoint::Unix("x:99999".into()));
        assert_eq!(Endpoint::parse(":1"), Endpoint::Unix(":1".into()));
    }

    #[test]
    fn challenge_response_both_ways() {
        let (k, n, c) = (secret(7), [1u8; 32], [2u8; 32]);
        let pc = proof(&k, Role::Coordinator, "nodeb", &n, &c);
        let pn = proof(&k, Role::Node, "nodeb", &n, &c);
        assert!(verify(&k, Role::Coordinator, "nodeb", &n, &c, &pc));
        assert!(verify(&k, Role::Node, "nodeb", &n, &c, &pn));
        // A proof reflected back as the other side's does not pass.
        assert!(!verify(&k, Role::Node, "nodeb", &n, &c, &pc));
        assert!(!verify(&k, Role::Coordinator, "nodeb", &n, &c, &pn));
        // Another secret, another nonce (a replayed proof), another name: refused.
        assert!(!verify(&secret(8), Role::Node, "nodeb", &n, &c, &pn));
        assert!(!verify(&k, Role::Node, "nodeb", &n, &[3u8; 32], &pn));
        assert!(!verify(&k, Role::Node, "nodeb", &[3u8; 32], &c, &pn));
        assert!(!verify(&k, Role::Node, "nodea", &n, &c, &pn));
        // A truncated or altered tag: refused.
        assert!(!verify(&k, Role::Node, "nodeb", &n, &c, &pn[..31]));
        let mut bad = pn;
        bad[0] ^= 1;
        assert!(!verify(&k, Role::Node, "nodeb", &n, &c, &bad));
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231, test case 2 ("Jefe"): the crate computes HMAC-SHA256.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sealed_lines() {
        let (k, n, c) = (secret(9), [4u8; 32], [5u8; 32]);
        let mut coord = Sealer::new(&k, Role::Coordinator, "nodea", &n, &c);
        let mut node = Sealer::new(&k, Role::Node, "nodea", &n, &c);
        let a = coord.seal("PREPARE 9 /x/nodea.ckpt");
        let b = coord.seal("DRAIN 100");
        assert_eq!(node.open(&a), Some("PREPARE 9 /x/nodea.ckpt"));
        // Replayed, or out of order: refused.
        assert_eq!(node.open(&a), None);
        assert_eq!(node.open(&b), Some("DRAIN 100"));
        // A line reflected back to its sender: refused.
        let w = node.seal("WRITTEN 10");
        let mut coord2 = Sealer::new(&k, Role::Coordinator, "nodea", &n, &c);
        assert_eq!(coord2.open(&a), None);
        assert_eq!(coord.open(&w), Some("WRITTEN 10"));
        // Changed text, no tag, another session: refused.
        let x = node.seal("DONE");
        assert_eq!(coord.open(&x.replace("DONE", "DONF")), None);
        assert_eq!(coord.open("DONE"), None);
        let mut other = Sealer::new(&k, Role::Node, "nodea", &n, &[6u8; 32]);
        assert_eq!(coord.open(&other.seal("DONE")), None);
        assert_eq!(coord.open(&x), Some("DONE"));
    }

    #[test]
    fn secrets() {
        assert!(Secret::from_bytes(vec![1; MIN_SECRET - 1]).is_err());
        assert!(Secret::from_bytes(vec![1; MIN_SECRET]).is_ok());
        assert_eq!(format!("{:?}", secret(1)), "Secret(32 bytes)");
        let dir = std::env::temp_dir().join(format!("coord-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, [7u8; 32]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Secret::read(&f).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Secret::read(&f).is_ok());
        assert!(Secret::read(&dir.join("none")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nonces_and_hex() {
        let a = nonce().unwrap();
        let b = nonce().unwrap();
        assert_ne!(a, b);
        assert_eq!(nonce_from_hex(&hex(&a)), Some(a));
        assert_eq!(nonce_from_hex("abc"), None);
        assert_eq!(nonce_from_hex(&hex(&a[..31])), None);
        assert_eq!(unhex("zz"), None);
    }
}
