//! timerfd: clock, interval, time to the next expiry and expirations not yet read. A timer set
//! with `TFD_TIMER_ABSTIME` on a real-time clock keeps its absolute expiry (a wall-clock
//! deadline stays one); every other timer keeps the time it had left, as the process's interval
//! timers do (the time between checkpoint and restart does not count).

use super::{fdinfo, field, get, owned, parse_u64, put, Kind, KindError, TIMERFD};
use crate::sys::{self, Errno};
use bytemuck::{Pod, Zeroable};
use std::os::fd::{AsRawFd, OwnedFd};

/// `TFD_IOC_SET_TICKS`: `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// The saved state of a timerfd.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct TimerFdState {
    /// Clock (`CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_BOOTTIME`, …).
    pub clockid: i32,
    /// `timerfd_settime` flags for the restore: `TFD_TIMER_ABSTIME` (and
    /// `TFD_TIMER_CANCEL_ON_SET`) only for real-time clocks.
    pub flags: u32,
    /// Next expiry: absolute with `TFD_TIMER_ABSTIME`, else time left; 0 when disarmed.
    pub value_sec: i64,
    /// Nanoseconds of `value_sec`.
    pub value_nsec: i64,
    /// Interval of a periodic timer (0: one-shot).
    pub interval_sec: i64,
    /// Nanoseconds of `interval_sec`.
    pub interval_nsec: i64,
    /// Expirations not read yet.
    pub ticks: u64,
}
const _: () = assert!(core::mem::size_of::<TimerFdState>() == 48);

fn is_realtime(clock: i32) -> bool {
    clock == libc::CLOCK_REALTIME || clock == libc::CLOCK_REALTIME_ALARM
}

/// The timerfd kind.
pub struct TimerFd;

impl Kind for TimerFd {
    fn id(&self) -> u32 {
        TIMERFD
    }
    fn name(&self) -> &'static str {
        "timerfd"
    }
    fn link(&self) -> &'static [u8] {
        b"anon_inode:[timerfd]"
    }

    fn capture(&self, fd: i32, out: &mut [u8]) -> Result<usize, Errno> {
        let mut buf = [0u8; 512];
        let info = fdinfo(fd, &mut buf)?;
        let num = |name: &[u8], radix| field(info, name).and_then(|v| parse_u64(v, radix));
        let clockid = num(b"clockid:", 10).ok_or(Errno(libc::EPROTO))? as i32;
        let ticks = num(b"ticks:", 10).unwrap_or(0);
        let set_flags = num(b"settime flags:", 8).unwrap_or(0) as u32;
        // SAFETY: itimerspec is plain data; the kernel fills it.
        let mut cur: libc::itimerspec = unsafe { core::mem::zeroed() };
        sys::sys3(
            libc::SYS_timerfd_gettime as usize,
            fd as usize,
            &mut cur as *mut _ as usize,
            0,
        )?;
        let mut s = TimerFdState {
            clockid,
            flags: 0,
            value_sec: cur.it_value.tv_sec,
            value_nsec: cur.it_value.tv_nsec,
            interval_sec: cur.it_interval.tv_sec,
            interval_nsec: cur.it_interval.tv_nsec,
            ticks,
        };
        let armed = s.value_sec != 0 || s.value_nsec != 0;
        if armed && is_realtime(clockid) && set_flags & libc::TFD_TIMER_ABSTIME as u32 != 0 {
            // A wall-clock deadline: keep it absolute.
            // SAFETY: timespec is plain data; the kernel fills it.
            let mut now: libc::timespec = unsafe { core::mem::zeroed() };
            sys::sys3(
                libc::SYS_clock_gettime as usize,
                libc::CLOCK_REALTIME as usize, // CLOCK_REALTIME_ALARM reads the same clock
                &mut now as *mut _ as usize,
                0,
            )?;
            let mut nsec = now.tv_nsec + s.value_nsec;
            let mut sec = now.tv_sec + s.value_sec;
            if nsec >= 1_000_000_000 {
                nsec -= 1_000_000_000;
                sec += 1;
            }
            s.value_sec = sec;
            s.value_nsec = nsec;
            s.flags =
                set_flags & (libc::TFD_TIMER_ABSTIME as u32 | libc::TFD_TIMER_CANCEL_ON_SET as u32);
        }
        put(out, &s)
    }

    fn restore(&self, state: &[u8]) -> Result<OwnedFd, KindError> {
        let s: TimerFdState = get(state).ok_or_else(|| KindError::malformed("timerfd"))?;
        // SAFETY: timerfd_create takes no pointers.
        let fd = owned(
            unsafe { libc::timerfd_create(s.clockid, libc::TFD_CLOEXEC) },
            "cannot create a timerfd",
        )?;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: s.interval_sec,
                tv_nsec: s.interval_nsec,
            },
            it_value: libc::timespec {
                tv_sec: s.value_sec,
                tv_nsec: s.value_nsec,
            },
        };
        if s.value_sec != 0 || s.value_nsec != 0 {
            // SAFETY: settime reads `spec`, a local.
            let rc = unsafe {
                libc::timerfd_settime(fd.as_raw_fd(), s.flags as i32, &spec, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(KindError::last("cannot arm a timerfd"));
            }
        }
        if s.ticks > 0 {
            // SAFETY: the ioctl reads one u64 from a local.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &s.ticks) };
            if rc != 0 {
                return Err(KindError::last(
                    "cannot put back a timerfd's unread expirations (TFD_IOC_SET_TICKS)",
                ));
            }
        }
        Ok(fd)
    }

    fn describe(&self, state: &[u8]) -> String {
        let Some(s) = get::<TimerFdState>(state) else {
            return "timerfd (malformed state)".into();
        };
        let t = |sec: i64, nsec: i64| format!("{}.{:09}", sec, nsec);
        let next = if s.value_sec == 0 && s.value_nsec == 0 {
            "disarmed".to_string()
        } else if s.flags & libc::TFD_TIMER_ABSTIME as u32 != 0 {
            format!("expires at {} s", t(s.value_sec, s.value_nsec))
        } else {
            format!("expires in {} s", t(s.value_sec, s.value_nsec))
        };
        format!(
            "timerfd clock {} {next}, interval {} s, {} unread expirations",
            s.clockid,
            t(s.interval_sec, s.interval_nsec),
            s.ticks
        )
    }
}
