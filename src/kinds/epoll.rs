//! epoll: the interest list (target descriptor, events with their `EPOLLET`/`EPOLLONESHOT`/
//! `EPOLLEXCLUSIVE` bits, user data). Targets are re-added once every descriptor of the process
//! is in place, by the number that refers to the same open file in the restored process; the
//! readiness state is the targets' own (level-triggered events come back by themselves; an
//! edge already reported is not reported again, a disarmed one-shot entry stays disarmed).

use super::{fdinfo, get, owned, parse_u64, put, Kind, KindError, EPOLL};
use crate::sys::{self, Errno};
use bytemuck::{Pod, Zeroable};
use std::os::fd::OwnedFd;

/// The head of an epoll's saved state; `n` [`EpollTarget`]s follow.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct EpollState {
    /// Number of targets.
    pub n: u32,
    /// Targets the agent could not place on a descriptor of the process (closed since they
    /// were added): not restored.
    pub lost: u32,
}
const _: () = assert!(core::mem::size_of::<EpollState>() == 8);

/// One entry of the interest list.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct EpollTarget {
    /// The descriptor number it was added with.
    pub tfd: i32,
    /// The descriptor of the process that refers to the same open file now (usually `tfd`).
    pub fd: i32,
    /// Events and flags as the kernel holds them.
    pub events: u32,
    /// Reserved (0).
    pub _pad: u32,
    /// User data.
    pub data: u64,
}
const _: () = assert!(core::mem::size_of::<EpollTarget>() == 24);

/// `KCMP_EPOLL_TFD` (linux/kcmp.h).
const KCMP_EPOLL_TFD: usize = 7;

/// `struct kcmp_epoll_slot`.
#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// Highest descriptor searched for a target whose number was closed.
const SCAN_FDS: i32 = 4096;

/// Whether descriptor `fd` of this process is target `tfd` of epoll `epfd`.
fn is_target(epfd: i32, tfd: i32, fd: i32) -> bool {
    let me = sys::getpid() as usize;
    let slot = KcmpEpollSlot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff: 0,
    };
    sys::sys6(
        libc::SYS_kcmp as usize,
        me,
        me,
        KCMP_EPOLL_TFD,
        fd as usize,
        &slot as *const _ as usize,
        0,
    ) == Ok(0)
}

/// The (tfd, events, data) of one `tfd:` line of an epoll's fdinfo.
fn parse_line(line: &[u8]) -> Option<(i32, u32, u64)> {
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let mut after = |name: &[u8]| -> Option<&[u8]> {
        words.by_ref().find(|w| *w == name)?;
        words.next()
    };
    let tfd = parse_u64(after(b"tfd:")?, 10)? as i32;
    let events = parse_u64(after(b"events:")?, 16)? as u32;
    let data = parse_u64(after(b"data:")?, 16)?;
    Some((tfd, events, data))
}

/// The epoll kind.
pub struct Epoll;

impl Kind for Epoll {
    fn id(&self) -> u32 {
        EPOLL
    }
    fn name(&self) -> &'static str {
        "epoll"
    }
    fn link(&self) -> &'static [u8] {
        b"anon_inode:[eventpoll]"
    }

    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
        let mut buf = [0u8; 32 * 1024];
        let info = fdinfo(fd, &mut buf)?;
        let head = core::mem::size_of::<EpollState>();
        let mut state = EpollState { n: 0, lost: 0 };
        let mut at = head;
        for line in info
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"tfd:"))
        {
            let (tfd, events, data) = parse_line(line).ok_or(Errno(libc::EPROTO))?;
            let local = if is_target(fd, tfd, tfd) {
                tfd
            } else {
                // The number was closed (or reused) since: another descriptor of the same file?
                (0..SCAN_FDS)
                    .find(|&other| other != fd && is_target(fd, tfd, other))
                    .unwrap_or(-1)
            };
            if local < 0 {
                state.lost += 1;
                continue;
            }
            let t = EpollTarget {
                tfd,
                fd: local,
                events,
                _pad: 0,
                data,
            };
            at += put(out.get_mut(at..).ok_or(Errno(libc::ENOSPC))?, &t)?;
            state.n += 1;
        }
        put(out, &state)?;
        Ok(at)
    }

    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError> {
        targets(state)?;
        // SAFETY: epoll_create1 takes no pointers.
        owned(
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
            "cannot create an epoll instance",
        )
    }

    fn post_restore(&self, fd: i32, state: &[u8]) -> Result<Vec<String>, KindError> {
        let mut warnings = Vec::new();
        for t in targets(state)? {
            let mut ev = libc::epoll_event {
                events: t.events,
                u64: t.data,
            };
            // SAFETY: epoll_ctl reads `ev`, a local.
            let rc = unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, t.fd, &mut ev) };
            if rc == 0 {
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // Added already by another process sharing this epoll instance.
                Some(libc::EEXIST) => {}
                // The target was not restored (a kind libcr cannot restore): said at checkpoint.
                Some(libc::EBADF) => warnings.push(format!(
                    "epoll fd {fd}: its target fd {} was not restored; not watched",
                    t.fd
                )),
                _ => {
                    return Err(KindError {
                        errno: e.raw_os_error().unwrap_or(libc::EIO),
                        msg: format!("cannot watch fd {} with epoll fd {fd}: {e}", t.fd),
                    })
                }
            }
        }
        Ok(warnings)
    }

    fn describe(&self, state: &[u8]) -> String {
        match (get::<EpollState>(state), targets(state)) {
            (Some(s), Ok(list)) => {
                let items: Vec<String> = list
                    .iter()
                    .map(|t| format!("fd {} events {:#x} data {:#x}", t.fd, t.events, t.data))
                    .collect();
                let lost = if s.lost > 0 {
                    format!(" ({} closed targets dropped)", s.lost)
                } else {
                    String::new()
                };
                format!("epoll watching {}{lost}: {}", list.len(), items.join(", "))
            }
            _ => "epoll (malformed state)".into(),
        }
    }
}

/// The targets of a saved epoll state.
fn targets(state: &[u8]) -> Result<Vec<EpollTarget>, KindError> {
    let s: EpollState = get(state).ok_or_else(|| KindError::malformed("epoll"))?;
    let head = core::mem::size_of::<EpollState>();
    let size = core::mem::size_of::<EpollTarget>();
    let body = &state[head..];
    if body.len() != s.n as usize * size {
        return Err(KindError::malformed("epoll"));
    }
    Ok(body
        .chunks_exact(size)
        .map(bytemuck::pod_read_unaligned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_parse() {
        let line = b"tfd:        4 events: 40000019 data:       1200000004  pos:0 ino:1a sdev:10";
        assert_eq!(parse_line(line), Some((4, 0x4000_0019, 0x12_0000_0004)));
        assert_eq!(parse_line(b"tfd: x events: 1 data: 2"), None);
    }

    #[test]
    fn state_round_trips_and_bad_lengths_are_refused() {
        let mut out = [0u8; 64];
        let t = EpollTarget {
            tfd: 3,
            fd: 3,
            events: 1,
            _pad: 0,
            data: 9,
        };
        let n = put(&mut out[8..], &t).unwrap();
        put(&mut out, &EpollState { n: 1, lost: 0 }).unwrap();
        assert_eq!(targets(&out[..8 + n]).unwrap(), vec![t]);
        assert!(targets(&out[..8 + n - 1]).is_err());
        assert!(targets(&out[..4]).is_err());
    }
}
