//! eventfd: its counter and whether it counts as a semaphore (`EFD_SEMAPHORE`). Its
//! `O_NONBLOCK` is a status flag, saved with every descriptor.

use super::{fdinfo, field, get, owned, parse_u64, put, Kind, KindError, EVENTFD};
use crate::sys::Errno;
use bytemuck::{Pod, Zeroable};
use std::os::fd::{AsRawFd, OwnedFd};

/// The saved state of an eventfd.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct EventFdState {
    /// The counter.
    pub count: u64,
    /// 1 for `EFD_SEMAPHORE`.
    pub semaphore: u32,
    /// Reserved (0).
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EventFdState>() == 16);

/// The eventfd kind.
pub struct EventFd;

impl Kind for EventFd {
    fn id(&self) -> u32 {
        EVENTFD
    }
    fn name(&self) -> &'static str {
        "eventfd"
    }
    fn link(&self) -> &'static [u8] {
        b"anon_inode:[eventfd]"
    }

    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
        let mut buf = [0u8; 512];
        let info = fdinfo(fd, &mut buf)?;
        let count = field(info, b"eventfd-count:")
            .and_then(|v| parse_u64(v, 16))
            .ok_or(Errno(libc::EPROTO))?;
        // Kernels before 6.6 do not show it: such eventfds are taken as counters.
        let semaphore = field(info, b"eventfd-semaphore:").and_then(|v| parse_u64(v, 10));
        put(
            out,
            &EventFdState {
                count,
                semaphore: u32::from(semaphore == Some(1)),
                _pad: 0,
            },
        )
    }

    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError> {
        let s: EventFdState = get(state).ok_or_else(|| KindError::malformed("eventfd"))?;
        let mut flags = libc::EFD_CLOEXEC;
        if s.semaphore != 0 {
            flags |= libc::EFD_SEMAPHORE;
        }
        // SAFETY: eventfd takes no pointers.
        let fd = owned(
            unsafe { libc::eventfd(0, flags) },
            "cannot create an eventfd",
        )?;
        if s.count > 0 {
            // The counter can exceed eventfd()'s unsigned int initial value: write it.
            let bytes = s.count.to_ne_bytes();
            // SAFETY: writing 8 bytes from a local array to our own eventfd.
            let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), 8) };
            if n != 8 {
                return Err(KindError::last("cannot set an eventfd's counter"));
            }
        }
        Ok(fd)
    }

    fn describe(&self, state: &[u8]) -> String {
        match get::<EventFdState>(state) {
            Some(s) if s.semaphore != 0 => format!("eventfd count {} (semaphore)", s.count),
            Some(s) => format!("eventfd count {}", s.count),
            None => "eventfd (malformed state)".into(),
        }
    }
}
