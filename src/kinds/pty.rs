//! Pseudo-terminal masters (`/dev/ptmx`). A launcher that gives its children a pseudo-terminal
//! as standard output (Open MPI's `mpirun` does, for every rank) holds the master and the child
//! the slave `/dev/pts/N`. The master is saved with its terminal number `N`, the terminal's
//! settings (`termios2`), window size and packet mode. At restart the master is a new
//! pseudo-terminal with those settings, and every descriptor of the job that had `/dev/pts/N`
//! open (standard output included, which would otherwise be cr_restart's own) gets the new
//! slave instead (`restore::pool`): the launcher reads what the child writes, and sees the end
//! of it when the child exits. Bytes written to the slave and not read yet from the master are
//! not saved (reading them would take them from the program; the checkpoint warns).

use super::{get, owned, put, Kind, KindError, PTY};
use crate::sys::{self, Errno};
use bytemuck::{Pod, Zeroable};
use std::os::fd::{AsRawFd, OwnedFd};

/// The saved state of a pseudo-terminal master.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct PtyState {
    /// The terminal number `N` of its slave `/dev/pts/N` (`TIOCGPTN`).
    pub index: u32,
    /// `TIOCGPKT`: packet mode on (1) or off (0).
    pub packet: u32,
    /// Bytes that were waiting to be read at the master (not saved; for the warning).
    pub unread: u32,
    /// Reserved (0).
    pub _pad: u32,
    /// The kernel's `struct termios2` (`TCGETS2`, 44 bytes), zero-padded.
    pub termios: [u8; 48],
    /// `struct winsize` (`TIOCGWINSZ`).
    pub winsize: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<PtyState>() == 72);

const TERMIOS2_LEN: usize = 44;

fn ioctl(fd: i32, req: libc::c_ulong, arg: usize) -> Result<usize, Errno> {
    sys::sys3(libc::SYS_ioctl as usize, fd as usize, req as usize, arg)
}

/// The terminal number of a slave path `/dev/pts/N`.
pub fn slave_index(path: &[u8]) -> Option<u32> {
    let n = path.strip_prefix(b"/dev/pts/")?;
    let v = super::parse_u64(n, 10)?;
    u32::try_from(v).ok()
}

/// The saved terminal number of a master's state.
pub fn index_of(state: &[u8]) -> Option<u32> {
    get::<PtyState>(state).map(|s| s.index)
}

/// The pseudo-terminal master kind.
pub struct Pty;

impl Kind for Pty {
    fn id(&self) -> u32 {
        PTY
    }
    fn name(&self) -> &'static str {
        "pty"
    }
    fn link(&self) -> &'static [u8] {
        b"/dev/ptmx"
    }
    fn matches(&self, link: &[u8]) -> bool {
        link == b"/dev/ptmx" || link == b"/dev/pts/ptmx"
    }
    fn checkpoint_warning(&self, state: &[u8]) -> Option<&'static [u8]> {
        let s: PtyState = get(state)?;
        (s.unread > 0).then_some(
            b"is a pseudo-terminal master with unread bytes; they are not saved (the restarted program does not read them)",
        )
    }

    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
        let mut s = PtyState::zeroed();
        ioctl(fd, libc::TIOCGPTN, &mut s.index as *mut u32 as usize)?;
        ioctl(fd, libc::TCGETS2, s.termios.as_mut_ptr() as usize)?;
        let _ = ioctl(fd, libc::TIOCGWINSZ, s.winsize.as_mut_ptr() as usize);
        let mut packet: i32 = 0;
        if ioctl(fd, libc::TIOCGPKT, &mut packet as *mut i32 as usize).is_ok() {
            s.packet = u32::from(packet != 0);
        }
        s.unread = sys::bytes_waiting(fd).unwrap_or(0) as u32;
        put(out, &s)
    }

    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError> {
        let s: PtyState = get(state).ok_or_else(|| KindError::malformed("pty"))?;
        // SAFETY: open with a literal path.
        let fd = owned(
            unsafe {
                libc::open(
                    c"/dev/ptmx".as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
            },
            "cannot open /dev/ptmx",
        )?;
        let raw = fd.as_raw_fd();
        let unlock: i32 = 0;
        ioctl(raw, libc::TIOCSPTLCK, &unlock as *const i32 as usize)
            .map_err(|e| KindError::last(&format!("cannot unlock a new pty ({e:?})")))?;
        let _ = ioctl(
            raw,
            libc::TCSETS2,
            s.termios[..TERMIOS2_LEN].as_ptr() as usize,
        );
        let _ = ioctl(raw, libc::TIOCSWINSZ, s.winsize.as_ptr() as usize);
        if s.packet != 0 {
            let on: i32 = 1;
            let _ = ioctl(raw, libc::TIOCPKT, &on as *const i32 as usize);
        }
        Ok(fd)
    }

    fn describe(&self, state: &[u8]) -> String {
        match get::<PtyState>(state) {
            Some(s) => format!(
                "pty master of /dev/pts/{}{}{}",
                s.index,
                if s.packet != 0 { ", packet mode" } else { "" },
                if s.unread > 0 {
                    format!(", {} unread bytes (not saved)", s.unread)
                } else {
                    String::new()
                }
            ),
            None => "pty (malformed state)".into(),
        }
    }
}

/// The terminal number of the new master `fd`.
pub fn new_index(fd: &OwnedFd) -> Result<u32, KindError> {
    let mut n: u32 = 0;
    ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n as *mut u32 as usize)
        .map_err(|_| KindError::last("cannot read a new pty's number"))?;
    Ok(n)
}
