//! Process-wide state: identity, mm fields, auxv, cwd, umask, rlimits (into the image, for the
//! restart loader), and signal dispositions and interval timers (kept in agent memory, which the
//! image carries, for the restored agent to re-apply).

use crate::image::format::{MmFields, ProcessRec};
use crate::sys::{self, Errno};
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Kernel `struct sigaction` for `rt_sigaction` on x86-64.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct KSigaction {
    /// Handler address or SIG_DFL/SIG_IGN.
    pub handler: u64,
    /// SA_* flags.
    pub flags: u64,
    /// Restorer trampoline.
    pub restorer: u64,
    /// Blocked mask while the handler runs.
    pub mask: u64,
}

#[allow(clippy::declare_interior_mutable_const)]
const A0: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicU64; 4] = [A0; 4];
/// Dispositions at checkpoint time, index = signal number.
static SIGACTIONS: [[AtomicU64; 4]; 65] = [ROW; 65];
#[allow(clippy::declare_interior_mutable_const)]
const I0: AtomicI64 = AtomicI64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const TROW: [AtomicI64; 4] = [I0; 4];
/// ITIMER_REAL/VIRTUAL/PROF at checkpoint time (interval sec/usec, value sec/usec).
static ITIMERS: [[AtomicI64; 4]; 3] = [TROW; 3];

fn rt_sigaction(
    sig: i32,
    new: Option<&KSigaction>,
    old: Option<&mut KSigaction>,
) -> sys::SysResult {
    sys::sys6(
        libc::SYS_rt_sigaction as usize,
        sig as usize,
        new.map_or(0, |n| n as *const _ as usize),
        old.map_or(0, |o| o as *mut _ as usize),
        8,
        0,
        0,
    )
}

/// Records every signal disposition and interval timer in agent memory.
pub fn capture_signals_and_timers() {
    for sig in 1..=64 {
        let mut a = KSigaction::default();
        if rt_sigaction(sig, None, Some(&mut a)).is_ok() {
            let row = &SIGACTIONS[sig as usize];
            row[0].store(a.handler, Relaxed);
            row[1].store(a.flags, Relaxed);
            row[2].store(a.restorer, Relaxed);
            row[3].store(a.mask, Relaxed);
        }
    }
    for (which, row) in ITIMERS.iter().enumerate() {
        let mut v = [0i64; 4];
        let _ = sys::sys3(
            libc::SYS_getitimer as usize,
            which,
            v.as_mut_ptr() as usize,
            0,
        );
        for (slot, val) in row.iter().zip(v) {
            slot.store(val, Relaxed);
        }
    }
}

/// Re-installs the recorded dispositions (restored process, all signals blocked).
pub fn restore_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let row = &SIGACTIONS[sig as usize];
        let a = KSigaction {
            handler: row[0].load(Relaxed),
            flags: row[1].load(Relaxed),
            restorer: row[2].load(Relaxed),
            mask: row[3].load(Relaxed),
        };
        let _ = rt_sigaction(sig, Some(&a), None);
    }
}

/// Re-arms the recorded interval timers with the time they had left.
pub fn restore_timers() {
    for (which, row) in ITIMERS.iter().enumerate() {
        let v: [i64; 4] = core::array::from_fn(|i| row[i].load(Relaxed));
        if v.iter().any(|&x| x != 0) {
            let _ = sys::sys3(libc::SYS_setitimer as usize, which, v.as_ptr() as usize, 0);
        }
    }
}

/// Parses `/proc/self/stat` fields (1-based numbering of proc(5)).
fn stat_fields(buf: &[u8], out: &mut [u64; 53]) {
    let Some(close) = buf.iter().rposition(|&b| b == b')') else {
        return;
    };
    for (field, tok) in (3..out.len()).zip(buf[close + 2..].split(|&b| b == b' ')) {
        out[field] = super::quiesce::parse_dec(tok).max(0) as u64;
    }
}

/// Fills the process record; returns the auxv length stored in `auxv`.
pub fn capture_process(rec: &mut ProcessRec, auxv: &mut [u8]) -> Result<usize, Errno> {
    let mut buf = [0u8; 2048];
    let n = sys::read_file(b"/proc/self/stat\0", &mut buf)?;
    let mut f = [0u64; 53];
    stat_fields(&buf[..n], &mut f);
    let brk = sys::sys3(libc::SYS_brk as usize, 0, 0, 0).unwrap_or(0) as u64;
    rec.mm = MmFields {
        start_code: f[26],
        end_code: f[27],
        start_data: f[45],
        end_data: f[46],
        start_brk: f[47],
        brk,
        start_stack: f[28],
        arg_start: f[48],
        arg_end: f[49],
        env_start: f[50],
        env_end: f[51],
    };
    rec.pid = sys::getpid();
    rec.ppid = sys::sys3(libc::SYS_getppid as usize, 0, 0, 0).unwrap_or(0) as i32;
    rec.pgid = sys::sys3(libc::SYS_getpgid as usize, 0, 0, 0).unwrap_or(0) as i32;
    rec.sid = sys::sys3(libc::SYS_getsid as usize, 0, 0, 0).unwrap_or(0) as i32;
    let old = sys::sys3(libc::SYS_umask as usize, 0o022, 0, 0).unwrap_or(0o022);
    let _ = sys::sys3(libc::SYS_umask as usize, old, 0, 0);
    rec.umask = old as u32;
    for (r, lim) in rec.rlimits.iter_mut().enumerate() {
        let mut v = [0u64; 2];
        let _ = sys::sys6(
            libc::SYS_prlimit64 as usize,
            0,
            r,
            0,
            v.as_mut_ptr() as usize,
            0,
            0,
        );
        *lim = v;
    }
    sys::read_file(b"/proc/self/auxv\0", auxv)
}

/// Reads the working directory into `buf`; returns its length.
pub fn capture_cwd(buf: &mut [u8]) -> Result<usize, Errno> {
    sys::readlink(b"/proc/self/cwd\0", buf)
}
