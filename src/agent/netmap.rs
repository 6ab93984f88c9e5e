//! Address translation for a job restarted on other hosts (`cr_restart --map-address`,
//! docs/MPI.md): programs keep the addresses they learned before the checkpoint (an MPI
//! library's modex), which are the old hosts'. After such a restart the agent holds a table of
//! (original address → address now) pairs and translates in the calls that name an address:
//! `connect`, `bind` and `sendto` get the new address for an original one, `accept`, `accept4`,
//! `getpeername` and `getsockname` report the original address for a new one. Ports are kept.
//!
//! The table lives in agent memory (it travels in later images); a later restart with a map
//! composes with it (original → the newest address). It is empty unless a restart installed
//! one: then every wrapper is one load and the C library's call. Not translated: `sendmsg`,
//! `sendmmsg`, `recvfrom`, `recvmsg` (addresses of datagram sockets), and a program `exec`ed
//! after the restart starts with an empty table.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use libc::{c_int, c_void, size_t, sockaddr, socklen_t, ssize_t};

/// Most address pairs a process holds.
pub const MAX_PAIRS: usize = 32;
/// Bytes of one encoded pair: family (u64, little-endian), original address (16 bytes, an IPv4
/// address in the first 4), new address (16).
pub const PAIR_BYTES: usize = 40;

/// One pair: family, then the two addresses as two words each.
static PAIRS: [[AtomicU64; 5]; MAX_PAIRS] = [const { [const { AtomicU64::new(0) }; 5] }; MAX_PAIRS];
/// Pairs in use.
static NPAIRS: AtomicUsize = AtomicUsize::new(0);

/// An address pair: family (`AF_INET`, `AF_INET6`), original, new.
pub type Pair = (u64, [u8; 16], [u8; 16]);

fn load(i: usize) -> Pair {
    let w = |k: usize| PAIRS[i][k].load(Relaxed).to_le_bytes();
    let mut old = [0u8; 16];
    let mut new = [0u8; 16];
    old[..8].copy_from_slice(&w(1));
    old[8..].copy_from_slice(&w(2));
    new[..8].copy_from_slice(&w(3));
    new[8..].copy_from_slice(&w(4));
    (PAIRS[i][0].load(Relaxed), old, new)
}

fn word(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The pairs in force.
pub fn pairs() -> ([Pair; MAX_PAIRS], usize) {
    let n = NPAIRS.load(Acquire).min(MAX_PAIRS);
    let mut out = [(0, [0; 16], [0; 16]); MAX_PAIRS];
    for (i, p) in out.iter_mut().enumerate().take(n) {
        *p = load(i);
    }
    (out, n)
}

/// Encodes `p` as [`PAIR_BYTES`] bytes.
pub fn encode(p: &Pair, out: &mut [u8]) {
    out[..8].copy_from_slice(&p.0.to_le_bytes());
    out[8..24].copy_from_slice(&p.1);
    out[24..40].copy_from_slice(&p.2);
}

/// Decodes [`PAIR_BYTES`] bytes.
pub fn decode(b: &[u8]) -> Pair {
    let mut old = [0u8; 16];
    let mut new = [0u8; 16];
    old.copy_from_slice(&b[8..24]);
    new.copy_from_slice(&b[24..40]);
    (word(b), old, new)
}

/// Installs the map a restart gave (`bytes`: encoded pairs, old address = the address at the
/// checkpoint), composed with the table already held: an original address whose current one
/// moves follows it; a moved address that is nobody's current one is added. Pairs whose
/// addresses end up equal are dropped. Runs in the control thread while every program thread
/// is parked (no reader).
pub fn install(bytes: &[u8]) {
    let (held, n) = pairs();
    let (out, m) = compose(&held[..n], bytes);
    for (i, p) in out.iter().enumerate().take(m) {
        PAIRS[i][0].store(p.0, Relaxed);
        PAIRS[i][1].store(word(&p.1[..8]), Relaxed);
        PAIRS[i][2].store(word(&p.1[8..]), Relaxed);
        PAIRS[i][3].store(word(&p.2[..8]), Relaxed);
        PAIRS[i][4].store(word(&p.2[8..]), Relaxed);
    }
    NPAIRS.store(m, Release);
}

/// The table `held` followed by the encoded map `bytes` (see [`install`]).
fn compose(held: &[Pair], bytes: &[u8]) -> ([Pair; MAX_PAIRS], usize) {
    let given = |fam: u64, a: &[u8; 16]| {
        bytes
            .chunks_exact(PAIR_BYTES)
            .map(decode)
            .find(|p| p.0 == fam && p.1 == *a)
    };
    let mut out = [(0, [0; 16], [0; 16]); MAX_PAIRS];
    let mut m = 0;
    for p in held {
        let now = given(p.0, &p.2).map_or(p.2, |g| g.2);
        if now != p.1 && m < MAX_PAIRS {
            out[m] = (p.0, p.1, now);
            m += 1;
        }
    }
    for g in bytes.chunks_exact(PAIR_BYTES).map(decode) {
        let known = held.iter().any(|p| p.0 == g.0 && p.1 == g.1);
        if !known && g.1 != g.2 && m < MAX_PAIRS {
            out[m] = g;
            m += 1;
        }
    }
    (out, m)
}

/// Rewrites the address in `sa` (a `sockaddr_in` or `sockaddr_in6`, an IPv4-mapped IPv6
/// address as IPv4) through `pairs`: original → new when `forward`, new → original otherwise.
/// Returns whether it changed.
pub fn translate(sa: &mut [u8], pairs: &[Pair], forward: bool) -> bool {
    if sa.len() < 8 {
        return false;
    }
    let family = i32::from(u16::from_ne_bytes([sa[0], sa[1]]));
    let (fam, at, len) = match family {
        libc::AF_INET => (libc::AF_INET, 4, 4),
        libc::AF_INET6 if sa.len() >= 24 => {
            if sa[8..18].iter().all(|&b| b == 0) && sa[18] == 0xff && sa[19] == 0xff {
                (libc::AF_INET, 20, 4)
            } else {
                (libc::AF_INET6, 8, 16)
            }
        }
        _ => return false,
    };
    for p in pairs {
        if p.0 != fam as u64 {
            continue;
        }
        let (from, to) = if forward { (&p.1, &p.2) } else { (&p.2, &p.1) };
        if sa[at..at + len] == from[..len] {
            sa[at..at + len].copy_from_slice(&to[..len]);
            return true;
        }
    }
    false
}

/// Largest address copied for translation (`sockaddr_storage`).
const SA_MAX: usize = 128;

/// `addr` translated original → new into `buf`, or `None` to pass the caller's unchanged.
fn forward(addr: *const sockaddr, len: socklen_t, buf: &mut [u8; SA_MAX]) -> bool {
    if NPAIRS.load(Acquire) == 0 || addr.is_null() || len < 8 || len as usize > SA_MAX {
        return false;
    }
    let (p, n) = pairs();
    // SAFETY: the caller passed `len` readable bytes at `addr`.
    let src = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
    buf[..src.len()].copy_from_slice(src);
    translate(&mut buf[..src.len()], &p[..n], true)
}

/// Rewrites the address the kernel returned in `addr` (new → original).
fn back(addr: *mut sockaddr, len: *const socklen_t, cap: socklen_t) {
    if NPAIRS.load(Acquire) == 0 || addr.is_null() || len.is_null() {
        return;
    }
    // SAFETY: the caller passed a valid length pointer.
    let got = unsafe { *len }.min(cap) as usize;
    if got < 8 {
        return;
    }
    let (p, n) = pairs();
    // SAFETY: the kernel wrote `got` bytes (at most the caller's buffer) at `addr`.
    let s = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, got) };
    translate(s, &p[..n], false);
}

static REAL_CONNECT: AtomicUsize = AtomicUsize::new(0);
static REAL_BIND: AtomicUsize = AtomicUsize::new(0);
static REAL_SENDTO: AtomicUsize = AtomicUsize::new(0);
static REAL_ACCEPT: AtomicUsize = AtomicUsize::new(0);
static REAL_ACCEPT4: AtomicUsize = AtomicUsize::new(0);
static REAL_GETPEERNAME: AtomicUsize = AtomicUsize::new(0);
static REAL_GETSOCKNAME: AtomicUsize = AtomicUsize::new(0);

type AddrFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type NameFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
type Accept4Fn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
type SendtoFn = unsafe extern "C" fn(
    c_int,
    *const c_void,
    size_t,
    c_int,
    *const sockaddr,
    socklen_t,
) -> ssize_t;

/// The C library's `name`, or `None` (the call then fails with `ENOSYS`).
fn real<F: Copy>(cache: &AtomicUsize, name: &core::ffi::CStr) -> Option<F> {
    let p = super::interpose::next_fn(cache, name);
    // SAFETY: p is the address of the C library's function of that name, whose type is F
    // (a function pointer of the same size as usize).
    (p != 0).then(|| unsafe { core::mem::transmute_copy::<usize, F>(&p) })
}

fn enosys() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

/// Calls `f` with the address translated original → new when the table names it.
///
/// # Safety
/// `addr`/`len` as the caller of `connect`/`bind` passed them.
unsafe fn with_forward(f: AddrFn, fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let mut buf = [0u8; SA_MAX];
    if forward(addr, len, &mut buf) {
        // SAFETY: buf holds `len` bytes of a valid address.
        unsafe { f(fd, buf.as_ptr().cast(), len) }
    } else {
        // SAFETY: forwarding the caller's arguments unchanged.
        unsafe { f(fd, addr, len) }
    }
}

/// `connect(2)` to the address now of an original one.
///
/// # Safety
/// As `connect(2)`.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match real::<AddrFn>(&REAL_CONNECT, c"connect") {
        // SAFETY: as the caller's.
        Some(f) => unsafe { with_forward(f, fd, addr, len) },
        None => enosys(),
    }
}

/// `bind(2)` to the address now of an original one.
///
/// # Safety
/// As `bind(2)`.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match real::<AddrFn>(&REAL_BIND, c"bind") {
        // SAFETY: as the caller's.
        Some(f) => unsafe { with_forward(f, fd, addr, len) },
        None => enosys(),
    }
}

/// `sendto(2)` to the address now of an original one.
///
/// # Safety
/// As `sendto(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    data: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    let Some(f) = real::<SendtoFn>(&REAL_SENDTO, c"sendto") else {
        return enosys() as ssize_t;
    };
    let mut buf = [0u8; SA_MAX];
    if forward(addr, len, &mut buf) {
        // SAFETY: buf holds `len` bytes of a valid address; the rest as the caller's.
        unsafe { f(fd, data, n, flags, buf.as_ptr().cast(), len) }
    } else {
        // SAFETY: forwarding the caller's arguments unchanged.
        unsafe { f(fd, data, n, flags, addr, len) }
    }
}

/// Calls a `getpeername`-like `f`, then reports the original address for a new one.
///
/// # Safety
/// As the caller of `getpeername(2)`.
unsafe fn name_back(
    f: impl FnOnce(*mut sockaddr, *mut socklen_t) -> c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    let cap = if len.is_null() {
        0
    } else {
        // SAFETY: the caller passed a valid length pointer.
        unsafe { *len }
    };
    let r = f(addr, len);
    if r >= 0 {
        back(addr, len, cap);
    }
    r
}

/// `accept(2)`, the peer reported with its original address.
///
/// # Safety
/// As `accept(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match real::<NameFn>(&REAL_ACCEPT, c"accept") {
        // SAFETY: as the caller's.
        Some(f) => unsafe { name_back(|a, l| f(fd, a, l), addr, len) },
        None => enosys(),
    }
}

/// `accept4(2)`, the peer reported with its original address.
///
/// # Safety
/// As `accept4(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    match real::<Accept4Fn>(&REAL_ACCEPT4, c"accept4") {
        // SAFETY: as the caller's.
        Some(f) => unsafe { name_back(|a, l| f(fd, a, l, flags), addr, len) },
        None => enosys(),
    }
}

/// `getpeername(2)`, reported with the original address.
///
/// # Safety
/// As `getpeername(2)`.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match real::<NameFn>(&REAL_GETPEERNAME, c"getpeername") {
        // SAFETY: as the caller's.
        Some(f) => unsafe { name_back(|a, l| f(fd, a, l), addr, len) },
        None => enosys(),
    }
}

/// `getsockname(2)`, reported with the original address.
///
/// # Safety
/// As `getsockname(2)`.
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match real::<NameFn>(&REAL_GETSOCKNAME, c"getsockname") {
        // SAFETY: as the caller's.
        Some(f) => unsafe { name_back(|a, l| f(fd, a, l), addr, len) },
        None => enosys(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut o = [0u8; 16];
        o[..4].copy_from_slice(&a);
        o
    }

    fn sin(a: [u8; 4], port: u16) -> Vec<u8> {
        let mut s = vec![0u8; 16];
        s[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        s[2..4].copy_from_slice(&port.to_be_bytes());
        s[4..8].copy_from_slice(&a);
        s
    }

    #[test]
    fn translates_both_ways_and_keeps_the_port() {
        let f = libc::AF_INET as u64;
        let pairs = [
            (f, v4([10, 99, 0, 1]), v4([10, 99, 0, 2])),
            (f, v4([10, 99, 0, 2]), v4([10, 99, 0, 1])),
        ];
        let mut s = sin([10, 99, 0, 1], 4242);
        assert!(translate(&mut s, &pairs, true));
        assert_eq!(s, sin([10, 99, 0, 2], 4242));
        assert!(translate(&mut s, &pairs, false));
        assert_eq!(s, sin([10, 99, 0, 1], 4242));
        let mut other = sin([127, 0, 0, 1], 1);
        assert!(!translate(&mut other, &pairs, true));
        // IPv4-mapped IPv6.
        let mut s6 = vec![0u8; 28];
        s6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        s6[18] = 0xff;
        s6[19] = 0xff;
        s6[20..24].copy_from_slice(&[10, 99, 0, 2]);
        assert!(translate(&mut s6, &pairs, true));
        assert_eq!(&s6[20..24], &[10, 99, 0, 1]);
    }

    #[test]
    fn a_second_map_composes_with_the_first() {
        let f = libc::AF_INET as u64;
        let (a, b, c) = (v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), v4([10, 0, 0, 3]));
        let enc = |ps: &[Pair]| {
            let mut v = vec![0u8; ps.len() * PAIR_BYTES];
            for (p, o) in ps.iter().zip(v.chunks_exact_mut(PAIR_BYTES)) {
                encode(p, o);
            }
            v
        };
        // Swapped, then swapped back: nothing left to translate.
        let (t, n) = compose(&[], &enc(&[(f, a, b), (f, b, a)]));
        assert_eq!(n, 2);
        let (_, n) = compose(&t[..n], &enc(&[(f, b, a), (f, a, b)]));
        assert_eq!(n, 0);
        // a -> b, then b -> c: a -> c (and b -> c for addresses learned since).
        let (t, n) = compose(&[], &enc(&[(f, a, b)]));
        let (t, n) = compose(&t[..n], &enc(&[(f, b, c)]));
        assert_eq!(&t[..n], &[(f, a, c), (f, b, c)]);
    }

    #[test]
    fn encoding_round_trips() {
        let p = (libc::AF_INET6 as u64, [7u8; 16], [9u8; 16]);
        let mut b = [0u8; PAIR_BYTES];
        encode(&p, &mut b);
        assert_eq!(decode(&b), p);
    }
}
