//! SysV semaphore sets: not descriptors nor memory, and not tied to a process. The rule: a set
//! is saved by the process that was the last to operate on one of its semaphores (`GETPID`),
//! with its key, mode and values (`GETALL`), from `/proc/sysvipc/sem`. Runs in the control
//! thread while the others are parked: raw syscalls, stack buffers, no heap.

use crate::image::format::{SysvSemRec, REC_SYSV_SEM};
use crate::image::writer::MetaWriter;
use crate::kinds::parse_u64;
use crate::sys::{self, Errno};

/// Largest set saved (semaphores); a larger one is left out.
const MAX_SEMS: usize = 1024;

fn semctl(id: i32, num: usize, cmd: i32, arg: usize) -> Result<usize, Errno> {
    sys::sys6(
        libc::SYS_semctl as usize,
        id as usize,
        num,
        cmd as usize,
        arg,
        0,
        0,
    )
}

/// One line of `/proc/sysvipc/sem`: `key semid perms nsems …`.
pub fn parse_line(line: &[u8]) -> Option<SysvSemRec> {
    let mut f = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty());
    let k = crate::kinds::parse_i64(f.next()?)?;
    Some(SysvSemRec {
        key: k as i32,
        semid: parse_u64(f.next()?, 10)? as i32,
        mode: parse_u64(f.next()?, 8)? as u32 & 0o777,
        nsems: parse_u64(f.next()?, 10)? as u32,
    })
}

/// Writes a `REC_SYSV_SEM` record for every set this process operated on last.
pub fn capture(w: &mut MetaWriter) -> Result<(), Errno> {
    let me = sys::getpid() as usize;
    let mut res = Ok(());
    let _ = crate::kinds::each_line(b"/proc/sysvipc/sem\0", |line| {
        let Some(s) = parse_line(line) else {
            return Ok(());
        };
        let n = s.nsems as usize;
        if n == 0 || n > MAX_SEMS {
            return Ok(());
        }
        let ours = (0..n).any(|i| semctl(s.semid, i, libc::GETPID, 0) == Ok(me));
        if !ours {
            return Ok(());
        }
        let mut vals = [0u16; MAX_SEMS];
        if semctl(s.semid, 0, libc::GETALL, vals.as_mut_ptr() as usize).is_err() {
            return Ok(());
        }
        let mut body = [0u8; 16 + 2 * MAX_SEMS];
        body[..16].copy_from_slice(bytemuck::bytes_of(&s));
        body[16..16 + 2 * n].copy_from_slice(bytemuck::cast_slice(&vals[..n]));
        if w.raw(REC_SYSV_SEM, &body[..16 + 2 * n]).is_err() {
            res = Err(Errno(libc::ENOMEM));
        }
        Ok(())
    });
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn sem_lines_parse() {
        assert!(super::parse_line(b"       key      semid perms      nsems").is_none());
        let s = super::parse_line(b"1818842614          3   640          3     0").unwrap();
        assert_eq!((s.key, s.semid, s.mode, s.nsems), (0x6c6955f6, 3, 0o640, 3));
    }
}
