//! POSIX message queues (`mq_open`): descriptors of the kernel's mqueue file system, found by
//! `fstatfs` (their link text is just the queue's name, `/NAME`, and their mode a regular
//! file's). Saved: the name, access mode, permission bits and attributes (`mq_maxmsg`,
//! `mq_msgsize`), and how many messages were queued.
//!
//! A queue has a name and outlives its processes, like a file: at restart it is opened again
//! by name as it is then (with the messages it holds then; after `--term` those are the
//! checkpoint's). A queue that is gone is created again with its attributes and permission bits,
//! empty: the messages are not saved (reading them would take them from the queue), and the
//! checkpoint warns when there were some.

use super::{get, put, Kind, KindError, MQUEUE};
use crate::sys::{self, Errno, StackBuf};
use bytemuck::{Pod, Zeroable};
use std::os::fd::{AsRawFd, OwnedFd};

/// `MQUEUE_MAGIC`, the mqueue file system's `f_type`.
pub const MQUEUE_MAGIC: i64 = 0x1980_0202;
/// Longest queue name saved (`NAME_MAX` + the slash).
const NAME: usize = 256;

/// The saved state of a message queue descriptor.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct MqueueState {
    /// `mq_maxmsg`.
    pub maxmsg: i64,
    /// `mq_msgsize`.
    pub msgsize: i64,
    /// `mq_curmsgs` at the checkpoint.
    pub curmsgs: i64,
    /// `O_RDONLY`, `O_WRONLY` or `O_RDWR`.
    pub access: u32,
    /// Permission bits of the queue.
    pub mode: u32,
    /// Length of `name`.
    pub name_len: u32,
    /// Reserved (0).
    pub _pad: u32,
    /// The queue's name with its leading slash.
    pub name: [u8; NAME],
}
const _: () = assert!(core::mem::size_of::<MqueueState>() == 296);

/// The message queue kind.
pub struct Mqueue;

/// Whether `fd` (of file type `fmt`) is a POSIX message queue.
pub fn is_mqueue(fd: i32, fmt: u32) -> bool {
    fmt == libc::S_IFREG && sys::fstatfs_type(fd) == Ok(MQUEUE_MAGIC)
}

impl MqueueState {
    fn name(&self) -> &[u8] {
        &self.name[..(self.name_len as usize).min(NAME)]
    }
}

impl Kind for Mqueue {
    fn id(&self) -> u32 {
        MQUEUE
    }
    fn name(&self) -> &'static str {
        "message queue"
    }
    fn link(&self) -> &'static [u8] {
        b""
    }
    fn matches(&self, _link: &[u8]) -> bool {
        false // found by its file system (`is_mqueue`), not by its link text
    }
    fn checkpoint_warning(&self, state: &[u8]) -> Option<&'static [u8]> {
        get::<MqueueState>(state)
            .filter(|s| s.curmsgs > 0)
            .map(|_| &b"is a POSIX message queue holding messages, which are not saved: the restart opens the queue by name, and if it is gone by then it comes back empty"[..])
    }

    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
        let a = sys::mq_getattr(fd)?;
        let st = sys::fstat(fd)?;
        let mut link = StackBuf::<64>::new();
        link.push(b"/proc/self/fd/").num(fd as u64);
        let mut s = MqueueState::zeroed();
        let n = sys::readlink(link.as_cstr(), &mut s.name)?;
        if n == 0 || n >= NAME || s.name[0] != b'/' {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        s.name_len = n as u32;
        s.maxmsg = a.mq_maxmsg;
        s.msgsize = a.mq_msgsize;
        s.curmsgs = a.mq_curmsgs;
        s.access = (sys::fcntl(fd, libc::F_GETFL, 0)? as i32 & libc::O_ACCMODE) as u32;
        s.mode = st.st_mode & 0o777;
        put(out, &s)
    }

    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError> {
        let s: MqueueState = get(state).ok_or_else(|| KindError::malformed("message queue"))?;
        let name = std::ffi::CString::new(&s.name()[1..])
            .map_err(|_| KindError::malformed("message queue"))?;
        let shown = String::from_utf8_lossy(s.name()).into_owned();
        let flags = s.access as i32 | libc::O_CLOEXEC;
        // SAFETY: mq_open reads the NUL-terminated name; no attributes without O_CREAT.
        let fd =
            unsafe { libc::syscall(libc::SYS_mq_open, name.as_ptr(), flags, 0, 0usize) } as i32;
        if fd >= 0 {
            return super::owned(fd, "mq_open");
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
            return Err(KindError::last(&format!(
                "cannot open POSIX message queue {shown}"
            )));
        }
        // Gone: made again, empty, with its attributes and permission bits.
        // SAFETY: all-zero bytes are a valid `mq_attr`.
        let mut attr: libc::mq_attr = unsafe { core::mem::zeroed() };
        attr.mq_maxmsg = s.maxmsg;
        attr.mq_msgsize = s.msgsize;
        // SAFETY: mq_open reads the name and the attributes, both locals.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_mq_open,
                name.as_ptr(),
                flags | libc::O_CREAT | libc::O_EXCL,
                s.mode,
                &attr as *const libc::mq_attr,
            )
        } as i32;
        let f = super::owned(
            fd,
            &format!("cannot create POSIX message queue {shown} again"),
        )?;
        // The creation mode went through our umask: the saved bits exactly.
        // SAFETY: fchmod on the queue just created.
        unsafe { libc::fchmod(f.as_raw_fd(), s.mode) };
        Ok(f)
    }

    fn describe(&self, state: &[u8]) -> String {
        match get::<MqueueState>(state) {
            Some(s) => format!(
                "POSIX message queue {} ({}), up to {} messages of {} bytes, mode {:04o}, {} queued at the checkpoint (not saved)",
                String::from_utf8_lossy(s.name()),
                match s.access as i32 {
                    libc::O_RDONLY => "read",
                    libc::O_WRONLY => "write",
                    _ => "read-write",
                },
                s.maxmsg,
                s.msgsize,
                s.mode,
                s.curmsgs
            ),
            None => "message queue (malformed state)".into(),
        }
    }
}
