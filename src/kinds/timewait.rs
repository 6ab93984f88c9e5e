//! Connections in `TIME_WAIT` that keep a listener's port from being bound again at restart.
//!
//! A TCP connection that the program (or the checkpointed job, killed after its checkpoint)
//! closed first stays in `TIME_WAIT` for a minute on its local port. When that port is a
//! listener's and the listener had no `SO_REUSEADDR`, the kernel refuses to bind it again, also
//! to a socket that sets `SO_REUSEADDR` itself (the waiting connection was not "reusable").
//! Open MPI's tcp BTL closes one of two connections two ranks opened to each other at once, so
//! a restart within a minute of the checkpoint failed (`cannot bind a socket to 0.0.0.0:1025
//! again: Address already in use`, about 1 restart in 5 of the two-node test).
//!
//! With `CAP_NET_ADMIN` (root) those connections are closed for good through the kernel's
//! socket-diagnostics interface (`SOCK_DESTROY`, as `ss -K` does): nothing of them remains in
//! use, they are a previous run's leftovers that only wait out their timer. Without it the bind
//! fails as before, with a hint.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DESTROY` (linux/sock_diag.h).
const SOCK_DESTROY: u16 = 21;
/// `NETLINK_SOCK_DIAG`.
const NETLINK_SOCK_DIAG: i32 = 4;
/// The kernel's `TCP_TIME_WAIT` state number.
const TCP_TIME_WAIT: u32 = 6;

/// The (local, remote) 4-tuples of the `TIME_WAIT` connections on local `port` of `family`
/// in this network namespace, as the kernel's raw words (`/proc/net/tcp{,6}`): local address
/// words, remote address words, remote port.
fn time_waits(family: i32, port: u16) -> Vec<([u32; 4], [u32; 4], u16)> {
    let file = if family == libc::AF_INET6 {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    };
    let words = |hex: &str| -> Option<[u32; 4]> {
        let mut w = [0u32; 4];
        for (i, c) in hex.as_bytes().chunks(8).enumerate().take(4) {
            w[i] = u32::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok()?;
        }
        Some(w)
    };
    let split = |s: &str| -> Option<([u32; 4], u16)> {
        let (a, p) = s.split_once(':')?;
        Some((words(a)?, u16::from_str_radix(p, 16).ok()?))
    };
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let st = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let (la, lp) = split(f.get(1)?)?;
            let (ra, rp) = split(f.get(2)?)?;
            (st == TCP_TIME_WAIT && lp == port).then_some((la, ra, rp))
        })
        .collect()
}

/// Closes for good every `TIME_WAIT` connection on local `port` of `family` (needs
/// `CAP_NET_ADMIN`). Returns how many the kernel closed.
pub fn destroy_on_port(family: i32, port: u16) -> usize {
    let waiting = time_waits(family, port);
    if waiting.is_empty() {
        return 0;
    }
    // SAFETY: socket takes no pointers.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return 0;
    }
    // SAFETY: a descriptor we just made and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut closed = 0;
    for (seq, (local, remote, rport)) in waiting.into_iter().enumerate() {
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        let mut m = [0u8; 72];
        m[0..4].copy_from_slice(&72u32.to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DESTROY.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        m[6..8].copy_from_slice(&flags.to_ne_bytes());
        m[8..12].copy_from_slice(&(seq as u32 + 1).to_ne_bytes());
        m[16] = family as u8;
        m[17] = libc::IPPROTO_TCP as u8;
        m[20..24].copy_from_slice(&(1u32 << TCP_TIME_WAIT).to_ne_bytes());
        // inet_diag_sockid at 24: sport, dport (big-endian), src[4], dst[4] (as the kernel
        // printed them), interface, cookie (none: ~0, ~0).
        m[24..26].copy_from_slice(&port.to_be_bytes());
        m[26..28].copy_from_slice(&rport.to_be_bytes());
        for i in 0..4 {
            m[28 + 4 * i..32 + 4 * i].copy_from_slice(&local[i].to_ne_bytes());
            m[44 + 4 * i..48 + 4 * i].copy_from_slice(&remote[i].to_ne_bytes());
        }
        m[64..72].copy_from_slice(&[0xff; 8]);
        // SAFETY: sockaddr_nl all zero but its family addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { core::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sendto reads the message and the address from locals.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                m.as_ptr().cast(),
                m.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                core::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            break;
        }
        let mut ack = [0u8; 256];
        // SAFETY: recv writes at most ack.len() bytes into a local buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
        // NLMSG_ERROR (2) with error 0: done.
        if n >= 20
            && u16::from_ne_bytes([ack[4], ack[5]]) == libc::NLMSG_ERROR as u16
            && i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]) == 0
        {
            closed += 1;
        }
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TIME_WAIT connection on a listener's port without SO_REUSEADDR keeps the port from
    /// being bound; as root it is destroyed and the bind succeeds.
    #[test]
    fn a_time_wait_on_a_listener_port_is_destroyed_as_root() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = l.local_addr().expect("addr").port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (a, _) = l.accept().expect("accept");
        // The accepted end closes first: it goes to TIME_WAIT once the client closes too.
        drop(a);
        let mut buf = [0u8; 1];
        let _ = (&c).read(&mut buf);
        drop(c);
        drop(l);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while time_waits(libc::AF_INET, port).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!time_waits(libc::AF_INET, port).is_empty(), "no TIME_WAIT");
        // SAFETY: geteuid takes no arguments.
        if unsafe { libc::geteuid() } != 0 {
            println!("note: not root: SOCK_DESTROY not tried");
            return;
        }
        assert_eq!(destroy_on_port(libc::AF_INET, port), 1);
        assert!(time_waits(libc::AF_INET, port).is_empty());
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind again");
    }
}
