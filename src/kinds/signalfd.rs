//! signalfd: the set of signals it reads. Its `O_NONBLOCK` is a status flag, saved with every
//! descriptor; the signals pending then are the process's, restored with its signal state.

use super::{fdinfo, field, get, owned, parse_u64, put, Kind, KindError, SIGNALFD};
use crate::sys::Errno;
use bytemuck::{Pod, Zeroable};
use std::os::fd::OwnedFd;

/// The saved state of a signalfd.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct SignalFdState {
    /// Signal set (bit `n - 1` for signal `n`), as the kernel's `sigset_t` holds it.
    pub mask: u64,
}
const _: () = assert!(core::mem::size_of::<SignalFdState>() == 8);

/// The signalfd kind.
pub struct SignalFd;

impl Kind for SignalFd {
    fn id(&self) -> u32 {
        SIGNALFD
    }
    fn name(&self) -> &'static str {
        "signalfd"
    }
    fn link(&self) -> &'static [u8] {
        b"anon_inode:[signalfd]"
    }

    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
        let mut buf = [0u8; 512];
        let info = fdinfo(fd, &mut buf)?;
        let mask = field(info, b"sigmask:")
            .and_then(|v| parse_u64(v, 16))
            .ok_or(Errno(libc::EPROTO))?;
        put(out, &SignalFdState { mask })
    }

    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError> {
        let s: SignalFdState = get(state).ok_or_else(|| KindError::malformed("signalfd"))?;
        // SAFETY: signalfd4 reads 8 bytes of mask from a local.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_signalfd4,
                -1,
                &s.mask as *const u64,
                8usize,
                libc::SFD_CLOEXEC,
            )
        } as i32;
        owned(fd, "cannot create a signalfd")
    }

    fn describe(&self, state: &[u8]) -> String {
        match get::<SignalFdState>(state) {
            Some(s) => {
                let sigs: Vec<String> = (1..=64)
                    .filter(|n| s.mask & (1u64 << (n - 1)) != 0)
                    .map(|n: u32| n.to_string())
                    .collect();
                format!("signalfd for signals {}", sigs.join(","))
            }
            None => "signalfd (malformed state)".into(),
        }
    }
}
