//! Process-wide state: identity, mm fields, auxv, cwd, umask, rlimits (into the image, for the
//! restart loader), and signal dispositions, interval timers and `prctl` settings (kept in agent
//! memory, which the image carries, for the restored agent to re-apply); the `prctl` settings and
//! the personality the kernel keeps per thread are captured and re-applied by each thread
//! ([`ThreadState`]).

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

/// The kernel's disposition of `sig` now (raw system call; async-signal-safe).
pub fn current_action(sig: i32) -> Option<KSigaction> {
    let mut a = KSigaction::default();
    rt_sigaction(sig, None, Some(&mut a)).ok().map(|_| a)
}

/// Records every signal disposition in agent memory.
pub fn capture_signals() {
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
}

/// Records the interval timers in agent memory, as they are the moment every thread stopped
/// (before the pending signals are taken: taking a SIGALRM re-arms ITIMER_REAL).
///
/// A periodic ITIMER_REAL that expired reads 0: the kernel sends SIGALRM and re-arms the timer
/// only when that SIGALRM is taken, which a stopped process (every signal blocked) never does.
/// `setitimer` with a value of 0 would disarm it for good, so such a timer is recorded as due
/// in one interval (its pending SIGALRM travels with the pending signals).
pub fn capture_timers() {
    for (which, row) in ITIMERS.iter().enumerate() {
        let mut v = [0i64; 4];
        let _ = sys::sys3(
            libc::SYS_getitimer as usize,
            which,
            v.as_mut_ptr() as usize,
            0,
        );
        let v = expired_rearmed(which as i32, v);
        for (slot, val) in row.iter().zip(v) {
            slot.store(val, Relaxed);
        }
    }
}

/// `[interval sec, usec, value sec, usec]` of a timer as it must be re-armed: an expired periodic
/// ITIMER_REAL (value 0, interval not) is due in one interval.
fn expired_rearmed(which: i32, v: [i64; 4]) -> [i64; 4] {
    if which == libc::ITIMER_REAL && v[2] == 0 && v[3] == 0 && (v[0] != 0 || v[1] != 0) {
        [v[0], v[1], v[0], v[1]]
    } else {
        v
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

fn prctl(op: i32, a: usize) -> sys::SysResult {
    sys::sys6(libc::SYS_prctl as usize, op as usize, a, 0, 0, 0, 0)
}

/// `prctl(op, &int)`: a setting the kernel writes through a pointer.
fn prctl_get_int(op: i32) -> Option<i32> {
    let mut v: i32 = 0;
    prctl(op, &mut v as *mut i32 as usize).ok().map(|_| v)
}

/// Says on the program's stderr that a setting could not be restored (the restart goes on).
fn warn_restore(what: &[u8], value: u64, e: sys::Errno) {
    let mut m = sys::StackBuf::<160>::new();
    m.push(b"libcr: warning: restart: ")
        .push(what)
        .push(b" ")
        .num(value)
        .push(b" not restored (errno ")
        .num(e.0 as u64)
        .push(b")\n");
    let _ = sys::write_all(2, m.as_bytes());
}

/// Unset marker of a captured setting (never a valid value).
const UNSET: u64 = u64::MAX;

/// What the kernel keeps per thread and memory does not carry: timer slack, parent-death signal,
/// `no_new_privs`, keep-capabilities and the personality. Each thread captures its own while it
/// is stopped and re-applies it in the restored process.
pub struct ThreadState {
    timer_slack: AtomicU64,
    pdeathsig: AtomicU64,
    no_new_privs: AtomicU64,
    keepcaps: AtomicU64,
    personality: AtomicU64,
}

impl ThreadState {
    /// Nothing captured.
    pub const fn new() -> Self {
        ThreadState {
            timer_slack: AtomicU64::new(UNSET),
            pdeathsig: AtomicU64::new(UNSET),
            no_new_privs: AtomicU64::new(UNSET),
            keepcaps: AtomicU64::new(UNSET),
            personality: AtomicU64::new(UNSET),
        }
    }

    /// Records the calling thread's settings (raw system calls only).
    pub fn capture(&self) {
        let got = |r: sys::SysResult| r.map_or(UNSET, |v| v as u64);
        self.timer_slack
            .store(got(prctl(libc::PR_GET_TIMERSLACK, 0)), Relaxed);
        self.pdeathsig.store(
            prctl_get_int(libc::PR_GET_PDEATHSIG).map_or(UNSET, |v| v as u64),
            Relaxed,
        );
        self.no_new_privs
            .store(got(prctl(libc::PR_GET_NO_NEW_PRIVS, 0)), Relaxed);
        self.keepcaps
            .store(got(prctl(libc::PR_GET_KEEPCAPS, 0)), Relaxed);
        self.personality.store(
            got(sys::sys3(libc::SYS_personality as usize, 0xffff_ffff, 0, 0)),
            Relaxed,
        );
    }

    /// Applies the recorded settings to the calling thread (restored process); a setting the
    /// kernel refuses is reported on stderr and left as it is.
    pub fn restore(&self) {
        let want = |a: &AtomicU64| Some(a.load(Relaxed)).filter(|&v| v != UNSET);
        if let Some(v) = want(&self.timer_slack) {
            if let Err(e) = prctl(libc::PR_SET_TIMERSLACK, v as usize) {
                warn_restore(b"timer slack", v, e);
            }
        }
        // Always set: a restored process was created with SIGKILL as its parent-death signal
        // (it must not outlive a restarter that dies half-way); none saved means none.
        let v = match self.pdeathsig.load(Relaxed) {
            UNSET => 0,
            v => v,
        };
        if let Err(e) = prctl(libc::PR_SET_PDEATHSIG, v as usize) {
            warn_restore(b"parent-death signal", v, e);
        }
        if let Some(v) = want(&self.keepcaps) {
            if let Err(e) = prctl(libc::PR_SET_KEEPCAPS, v as usize) {
                warn_restore(b"PR_SET_KEEPCAPS", v, e);
            }
        }
        if let Some(v) = want(&self.personality) {
            if let Err(e) = sys::sys3(libc::SYS_personality as usize, v as usize, 0, 0) {
                warn_restore(b"personality", v, e);
            }
        }
        if let Some(v) = want(&self.no_new_privs) {
            // Only ever set: the kernel has no way back (a restarter that runs with it set
            // keeps it for the program).
            let now = prctl(libc::PR_GET_NO_NEW_PRIVS, 0).unwrap_or(0) as u64;
            if v != now {
                let r = if v == 1 {
                    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
                } else {
                    Err(sys::Errno(libc::EPERM))
                };
                if let Err(e) = r {
                    warn_restore(b"no_new_privs", v, e);
                }
            }
        }
    }
}

impl Default for ThreadState {
    fn default() -> Self {
        Self::new()
    }
}

/// Process-wide `prctl` settings at checkpoint time: dumpable, child subreaper, THP disable
/// (as `PR_GET_THP_DISABLE` reports it, flags included).
static PROCESS_PRCTL: [AtomicU64; 3] = [const { AtomicU64::new(UNSET) }; 3];

/// `PR_GET_DUMPABLE` when the current request began (before [`Dumpable`] changed it).
static DUMPABLE_AT_REQUEST: AtomicU64 = AtomicU64::new(UNSET);

/// While alive, a process that was not dumpable (`PR_SET_DUMPABLE` 0) is: the kernel makes
/// `/proc/self` files of a non-dumpable process root's, so the agent could not read its own
/// `auxv`, `pagemap` or `task/*/syscall`, nor `cr_checkpoint` find its pid namespace. Only root
/// gets this far for a non-dumpable process (`control::peer_refusal`). Restored to 0 when
/// dropped (also in a restored process, whose control thread leaves the request through here).
pub struct Dumpable {
    restore: bool,
}

impl Dumpable {
    /// Records the setting and makes the process dumpable if it was 0 (2, root-only core
    /// dumps, is left alone: it could not be set back).
    pub fn for_request() -> Self {
        let cur = prctl(libc::PR_GET_DUMPABLE, 0).map_or(UNSET, |v| v as u64);
        DUMPABLE_AT_REQUEST.store(cur, Relaxed);
        let restore = cur == 0 && prctl(libc::PR_SET_DUMPABLE, 1).is_ok();
        MADE_DUMPABLE.store(restore, Relaxed);
        Dumpable { restore }
    }
}

/// Whether the process is dumpable as its owner set it: while a request runs the agent makes
/// it dumpable ([`Dumpable`]), so then the setting recorded when the request began counts.
pub fn dumpable_before_request() -> bool {
    let now = prctl(libc::PR_GET_DUMPABLE, 0).map_or(0, |v| v as u64);
    now == 1 && !MADE_DUMPABLE.load(Relaxed)
}

/// Set while [`Dumpable`] holds a non-dumpable process dumpable.
static MADE_DUMPABLE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

impl Drop for Dumpable {
    fn drop(&mut self) {
        if self.restore {
            let _ = prctl(libc::PR_SET_DUMPABLE, 0);
            MADE_DUMPABLE.store(false, Relaxed);
        }
    }
}

/// Records the process-wide `prctl` settings in agent memory.
pub fn capture_prctl() {
    let got = |r: sys::SysResult| r.map_or(UNSET, |v| v as u64);
    let dumpable = match DUMPABLE_AT_REQUEST.load(Relaxed) {
        UNSET => got(prctl(libc::PR_GET_DUMPABLE, 0)),
        v => v,
    };
    PROCESS_PRCTL[0].store(dumpable, Relaxed);
    PROCESS_PRCTL[1].store(
        prctl_get_int(libc::PR_GET_CHILD_SUBREAPER).map_or(UNSET, |v| v as u64),
        Relaxed,
    );
    PROCESS_PRCTL[2].store(got(prctl(libc::PR_GET_THP_DISABLE, 0)), Relaxed);
}

/// Re-applies the process-wide `prctl` settings (restored process). `PR_GET_DUMPABLE` may say 2
/// (`suid_dumpable`), which `PR_SET_DUMPABLE` refuses: that is reported on stderr.
pub fn restore_prctl() {
    let want = |i: usize| Some(PROCESS_PRCTL[i].load(Relaxed)).filter(|&v| v != UNSET);
    if let Some(v) = want(0) {
        if let Err(e) = prctl(libc::PR_SET_DUMPABLE, v as usize) {
            warn_restore(b"PR_SET_DUMPABLE", v, e);
        }
    }
    if let Some(v) = want(1) {
        if let Err(e) = prctl(libc::PR_SET_CHILD_SUBREAPER, v as usize) {
            warn_restore(b"PR_SET_CHILD_SUBREAPER", v, e);
        }
    }
    if let Some(v) = want(2) {
        // Bit 0: disabled; the other bits are the flags PR_SET_THP_DISABLE takes as arg3.
        let r = sys::sys6(
            libc::SYS_prctl as usize,
            libc::PR_SET_THP_DISABLE as usize,
            (v & 1) as usize,
            (v & !1) as usize,
            0,
            0,
            0,
        );
        if let Err(e) = r {
            warn_restore(b"PR_SET_THP_DISABLE", v, e);
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

/// Most supplementary groups a `REC_CREDS` record holds (the kernel's `NGROUPS_MAX`).
const MAX_GROUPS: usize = 65536;

/// Appends the credentials record (`REC_CREDS`) of thread `tid` (the main thread: the control
/// thread, started with raw `clone3`, is not among the threads glibc's `setuid` & co. change),
/// read from `/proc/self/task/TID/status` (else `/proc/self/status`). The status text is read
/// into the metadata buffer past where the record's groups go (no allocation, no large stack).
/// Returns false when it could not be read (no record: the restart keeps the restarter's ids).
pub fn capture_creds(w: &mut crate::image::writer::MetaWriter, tid: i32) -> bool {
    use crate::image::format::{CredsRec, RecordHeader, REC_CREDS};
    let head = core::mem::size_of::<RecordHeader>() + core::mem::size_of::<CredsRec>();
    let area = w.ahead(head);
    if area.len() < 4 * MAX_GROUPS + (1 << 20) {
        return false;
    }
    let (groups, text) = area.split_at_mut(4 * MAX_GROUPS);
    let text = &mut text[..1 << 20];
    let mut path = sys::StackBuf::<64>::new();
    path.push(b"/proc/self/task/")
        .num(tid.max(0) as u64)
        .push(b"/status");
    let n = match sys::read_file(path.as_cstr(), text) {
        Ok(n) => n,
        Err(_) => match sys::read_file(b"/proc/self/status\0", text) {
            Ok(n) => n,
            Err(_) => return false,
        },
    };
    let Some(rec) = parse_status_creds(&text[..n], groups) else {
        return false;
    };
    w.record_placed(REC_CREDS, &rec, rec.ngroups as usize * 4)
        .is_ok()
}

/// The credentials in a `/proc/PID/status` text; the groups are written to `groups` (4 bytes
/// each, little-endian, as many as fit). `None` without `Uid:` and `Gid:` lines.
fn parse_status_creds(text: &[u8], groups: &mut [u8]) -> Option<crate::image::format::CredsRec> {
    let mut rec = crate::image::format::CredsRec::default();
    let (mut have_uid, mut have_gid) = (false, false);
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, rest) = (&line[..colon], &line[colon + 1..]);
        let mut words = rest
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty());
        let hex = |w: Option<&[u8]>| {
            w.map_or(0u64, |w| {
                w.iter().fold(0u64, |v, &b| {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    v.wrapping_shl(4) | d
                })
            })
        };
        match key {
            b"Uid" | b"Gid" => {
                let mut v = [0u32; 4];
                for (slot, w) in v.iter_mut().zip(&mut words) {
                    *slot = super::quiesce::parse_dec(w).max(0) as u32;
                }
                if key == b"Uid" {
                    rec.uid = v;
                    have_uid = true;
                } else {
                    rec.gid = v;
                    have_gid = true;
                }
            }
            b"Groups" => {
                let mut n = 0;
                for w in words {
                    let Some(slot) = groups.get_mut(4 * n..4 * n + 4) else {
                        break;
                    };
                    let g = super::quiesce::parse_dec(w).max(0) as u32;
                    slot.copy_from_slice(&g.to_le_bytes());
                    n += 1;
                }
                rec.ngroups = n as u32;
            }
            b"CapInh" => rec.cap_inh = hex(words.next()),
            b"CapPrm" => rec.cap_prm = hex(words.next()),
            b"CapEff" => rec.cap_eff = hex(words.next()),
            b"CapBnd" => rec.cap_bnd = hex(words.next()),
            b"CapAmb" => rec.cap_amb = hex(words.next()),
            _ => {}
        }
    }
    (have_uid && have_gid).then_some(rec)
}

/// Reads the working directory into `buf`; returns its length.
pub fn capture_cwd(buf: &mut [u8]) -> Result<usize, Errno> {
    sys::readlink(b"/proc/self/cwd\0", buf)
}

#[cfg(test)]
mod tests {
    use super::{expired_rearmed, parse_status_creds};

    #[test]
    fn credentials_from_status() {
        let text = b"Name:\tx\nUid:\t0\t65534\t0\t65534\nGid:\t1\t2\t3\t4\nGroups:\t10 20 \n\
CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000000400\n\
CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        let mut groups = [0u8; 16];
        let r = parse_status_creds(text, &mut groups).expect("parsed");
        assert_eq!(r.uid, [0, 65534, 0, 65534]);
        assert_eq!(r.gid, [1, 2, 3, 4]);
        assert_eq!(r.ngroups, 2);
        assert_eq!(&groups[..8], &[10, 0, 0, 0, 20, 0, 0, 0]);
        assert_eq!(r.cap_prm, 0x1ff_ffff_ffff);
        assert_eq!(r.cap_eff, 0x400);
        assert_eq!(r.cap_inh, 0);
        let empty = b"Uid:\t5\t5\t5\t5\nGid:\t6\t6\t6\t6\nGroups:\t\n";
        let r = parse_status_creds(empty, &mut groups).expect("parsed");
        assert_eq!(r.ngroups, 0);
        assert!(parse_status_creds(b"Name:\tx\n", &mut groups).is_none());
    }

    #[test]
    fn expired_periodic_real_timer_is_rearmed() {
        let real = libc::ITIMER_REAL;
        // Expired, periodic: due in one interval.
        assert_eq!(
            expired_rearmed(real, [0, 10_000, 0, 0]),
            [0, 10_000, 0, 10_000]
        );
        // Armed, or one-shot and expired, or off: unchanged.
        assert_eq!(
            expired_rearmed(real, [0, 10_000, 0, 4_000]),
            [0, 10_000, 0, 4_000]
        );
        assert_eq!(expired_rearmed(real, [0, 0, 0, 0]), [0, 0, 0, 0]);
        // CPU-time timers are re-armed by the kernel when they fire.
        let virt = libc::ITIMER_VIRTUAL;
        assert_eq!(expired_rearmed(virt, [1, 0, 0, 0]), [1, 0, 0, 0]);
    }
}
