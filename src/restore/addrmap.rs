//! `cr_restart --map-address OLD=NEW`: the job comes back on hosts with other addresses
//! (docs/MPI.md). The restart itself makes sockets at the new addresses (listeners and bound
//! sockets bound to an old address, `--reconnect`'s connections between nodes), and hands the
//! map to every restored process, whose agent translates the addresses the program still holds
//! (`agent::netmap`).

use crate::agent::netmap::{self, Pair, PAIR_BYTES};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

static MAP: OnceLock<Vec<Pair>> = OnceLock::new();

fn raw(ip: IpAddr) -> (u64, [u8; 16]) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            (libc::AF_INET as u64, b)
        }
        IpAddr::V6(a) => (libc::AF_INET6 as u64, a.octets()),
    }
}

/// Parses `OLD=NEW` (two IPv4 or two IPv6 addresses).
pub fn parse(s: &str) -> Result<(IpAddr, IpAddr), String> {
    let (o, n) = s
        .split_once('=')
        .ok_or_else(|| format!("--map-address {s}: expected OLD=NEW"))?;
    let ip = |t: &str| {
        t.trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .map_err(|_| format!("--map-address {s}: {t:?} is not an IP address"))
    };
    let (o, n) = (ip(o)?, ip(n)?);
    if o.is_ipv4() != n.is_ipv4() {
        return Err(format!(
            "--map-address {s}: both addresses must be IPv4 or both IPv6"
        ));
    }
    Ok((o, n))
}

/// Sets the map of this restart (once; an old address given twice is refused).
pub fn set(pairs: &[(IpAddr, IpAddr)]) -> Result<(), String> {
    if pairs.len() > netmap::MAX_PAIRS {
        return Err(format!(
            "--map-address: at most {} pairs",
            netmap::MAX_PAIRS
        ));
    }
    for (i, (o, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(p, _)| p == o) {
            return Err(format!("--map-address: {o} is given twice"));
        }
    }
    let v = pairs
        .iter()
        .map(|&(o, n)| {
            let (f, o) = raw(o);
            (f, o, raw(n).1)
        })
        .collect();
    MAP.set(v)
        .map_err(|_| "the address map is already set".to_string())
}

fn pairs() -> &'static [Pair] {
    MAP.get().map(|v| v.as_slice()).unwrap_or(&[])
}

/// The map encoded for a restored process (`RestartInfo::addr_map_*`); empty: none.
pub fn encoded() -> Vec<u8> {
    let p = pairs();
    let mut v = vec![0u8; p.len() * PAIR_BYTES];
    for (p, o) in p.iter().zip(v.chunks_exact_mut(PAIR_BYTES)) {
        netmap::encode(p, o);
    }
    v
}

/// A saved `sockaddr_in`/`sockaddr_in6` with its address mapped to the new one.
pub fn map_raw(a: &[u8]) -> Vec<u8> {
    let mut v = a.to_vec();
    netmap::translate(&mut v, pairs(), true);
    v
}

/// `a` with its address mapped to the new one.
pub fn map_addr(a: SocketAddr) -> SocketAddr {
    // An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is looked up as the IPv4 address it holds,
    // as `agent::netmap::translate` does, and stays IPv4-mapped.
    let (f, o) = raw(a.ip().to_canonical());
    let Some(p) = pairs().iter().find(|p| p.0 == f && p.1 == o) else {
        return a;
    };
    let new = match (a.ip(), f == libc::AF_INET as u64) {
        (IpAddr::V4(_), _) => IpAddr::from([p.2[0], p.2[1], p.2[2], p.2[3]]),
        (IpAddr::V6(_), true) => {
            IpAddr::V6(std::net::Ipv4Addr::from([p.2[0], p.2[1], p.2[2], p.2[3]]).to_ipv6_mapped())
        }
        (IpAddr::V6(_), false) => IpAddr::from(p.2),
    };
    SocketAddr::new(new, a.port())
}

/// Whether a map was given.
pub fn any() -> bool {
    !pairs().is_empty()
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say each address the restart maps (`cr_restart --verbose`).
pub fn set_verbose(v: bool) {
    VERBOSE.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// Says `what` under `--verbose`.
pub fn note(what: &str) {
    if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("cr_restart: {what} (--map-address)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_ipv4_ipv6_and_ipv4_mapped_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        set(&[
            (ip("10.99.0.1"), ip("10.99.0.2")),
            (ip("fd00::1"), ip("fd00::2")),
        ])
        .unwrap();
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(map_addr(sa("10.99.0.1:7")), sa("10.99.0.2:7"));
        assert_eq!(map_addr(sa("[fd00::1]:7")), sa("[fd00::2]:7"));
        assert_eq!(
            map_addr(sa("[::ffff:10.99.0.1]:7")),
            sa("[::ffff:10.99.0.2]:7")
        );
        assert_eq!(map_addr(sa("10.99.0.3:7")), sa("10.99.0.3:7"));
        assert_eq!(
            map_addr(sa("[::ffff:10.99.0.3]:7")),
            sa("[::ffff:10.99.0.3]:7")
        );
    }
}
