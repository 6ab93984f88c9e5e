//! SysV message queues: like semaphore sets (`sysvsem`), not descriptors and not tied to a
//! process. The rule: a queue is saved by the process that operated on it last — `lrpid` when
//! its last receive is later than its last send (`rtime` > `stime`), else `lspid` (so a queue
//! nobody used is saved by nobody) — from `/proc/sysvipc/msg`, with its key, mode, owner and
//! capacity (`IPC_STAT`) and its messages in queue order, copied without taking them
//! (`msgrcv` with `MSG_COPY | IPC_NOWAIT`, which leaves the queue and its times untouched).
//! Runs in the control thread while the others are parked: raw syscalls, stack buffers, the
//! metadata buffer itself as the copy's destination, no heap.

use crate::image::format::{SysvMsgRec, REC_SYSV_MSG, REC_WARNING};
use crate::image::writer::MetaWriter;
use crate::kinds::{parse_i64, parse_u64};
use crate::sys::{self, Errno, StackBuf};

/// `MSG_COPY` (Linux 3.8, `CONFIG_CHECKPOINT_RESTORE`): `msgtyp` is the position of the message
/// to copy; the message stays queued.
const MSG_COPY: usize = 0o40000;

/// What `/proc/sysvipc/msg` says of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgLine {
    /// Key.
    pub key: i32,
    /// Id.
    pub msqid: i32,
    /// Permission bits.
    pub mode: u32,
    /// Bytes queued.
    pub cbytes: u64,
    /// Messages queued.
    pub qnum: u64,
    /// Last sender.
    pub lspid: i32,
    /// Last receiver.
    pub lrpid: i32,
    /// Owner.
    pub uid: u32,
    /// Owner group.
    pub gid: u32,
    /// Time of the last send (seconds).
    pub stime: u64,
    /// Time of the last receive (seconds).
    pub rtime: u64,
}

/// One line of `/proc/sysvipc/msg`:
/// `key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime`.
pub fn parse_line(line: &[u8]) -> Option<MsgLine> {
    let mut f = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty());
    let key = parse_i64(f.next()?)? as i32;
    let msqid = parse_u64(f.next()?, 10)? as i32;
    let mode = parse_u64(f.next()?, 8)? as u32 & 0o777;
    let cbytes = parse_u64(f.next()?, 10)?;
    let qnum = parse_u64(f.next()?, 10)?;
    let lspid = parse_u64(f.next()?, 10)? as i32;
    let lrpid = parse_u64(f.next()?, 10)? as i32;
    let uid = parse_u64(f.next()?, 10)? as u32;
    let gid = parse_u64(f.next()?, 10)? as u32;
    let _cuid = f.next()?;
    let _cgid = f.next()?;
    let stime = parse_u64(f.next()?, 10)?;
    let rtime = parse_u64(f.next()?, 10)?;
    Some(MsgLine {
        key,
        msqid,
        mode,
        cbytes,
        qnum,
        lspid,
        lrpid,
        uid,
        gid,
        stime,
        rtime,
    })
}

/// The process that saves the queue: the one that operated on it last (0: nobody).
pub fn last_user(q: &MsgLine) -> i32 {
    if q.rtime > q.stime || q.lspid == 0 {
        q.lrpid
    } else {
        q.lspid
    }
}

/// Bytes the messages of `q` need in the record (each: length, type, text padded to 8).
pub fn tail_size(q: &MsgLine) -> usize {
    (q.qnum as usize)
        .saturating_mul(16 + 7)
        .saturating_add(q.cbytes as usize)
}

fn msgctl_stat(id: i32) -> Result<libc::msqid_ds, Errno> {
    // SAFETY: msqid_ds is plain data.
    let mut ds: libc::msqid_ds = unsafe { core::mem::zeroed() };
    sys::sys6(
        libc::SYS_msgctl as usize,
        id as usize,
        libc::IPC_STAT as usize,
        &mut ds as *mut libc::msqid_ds as usize,
        0,
        0,
        0,
    )?;
    Ok(ds)
}

/// Copies message `index` of queue `id` into `buf` (`mtype`, then the text); the text's length.
fn copy_message(id: i32, buf: &mut [u8], index: usize) -> Result<usize, Errno> {
    if buf.len() < 8 {
        return Err(Errno(libc::E2BIG));
    }
    sys::sys6(
        libc::SYS_msgrcv as usize,
        id as usize,
        buf.as_mut_ptr() as usize,
        buf.len() - 8,
        index,
        libc::IPC_NOWAIT as usize | MSG_COPY,
        0,
    )
}

fn hex(out: &mut StackBuf<256>, v: u32) {
    out.push(b"0x");
    let mut started = false;
    for i in (0..8).rev() {
        let d = (v >> (i * 4)) & 0xf;
        if d != 0 || started || i == 0 {
            started = true;
            out.push(&[b"0123456789abcdef"[d as usize]]);
        }
    }
}

/// Writes a `REC_SYSV_MSG` record for every queue this process operated on last (a
/// `REC_WARNING` for one whose messages cannot be copied).
pub fn capture(w: &mut MetaWriter) -> Result<(), Errno> {
    let me = sys::getpid();
    let mut res = Ok(());
    let _ = crate::kinds::each_line(b"/proc/sysvipc/msg\0", |line| {
        let Some(q) = parse_line(line) else {
            return Ok(());
        };
        if last_user(&q) != me {
            return Ok(());
        }
        if let Err(e) = save_queue(w, &q) {
            let mut msg = StackBuf::<256>::new();
            msg.push(b"SysV message queue of key ");
            hex(&mut msg, q.key as u32);
            msg.push(b" (id ")
                .num(q.msqid as u64)
                .push(b", ")
                .num(q.qnum)
                .push(b" messages) is not saved: ");
            msg.push(if e.0 == libc::ENOSPC {
                b"too large for the image's metadata".as_slice()
            } else if e.0 == libc::ENOSYS || e.0 == libc::EINVAL {
                b"this kernel cannot copy its messages (MSG_COPY)".as_slice()
            } else {
                b"its messages cannot be read (errno "
            });
            if e.0 != libc::ENOSPC && e.0 != libc::ENOSYS && e.0 != libc::EINVAL {
                msg.num(e.0 as u64).push(b")");
            }
            if w.raw(REC_WARNING, msg.as_bytes()).is_err() {
                res = Err(Errno(libc::ENOMEM));
            }
        }
        Ok(())
    });
    res
}

/// One queue's record; on failure nothing of it is left in `w`.
fn save_queue(w: &mut MetaWriter, q: &MsgLine) -> Result<(), Errno> {
    let ds = msgctl_stat(q.msqid)?;
    let head = SysvMsgRec {
        key: q.key,
        msqid: q.msqid,
        mode: q.mode,
        uid: ds.msg_perm.uid,
        gid: ds.msg_perm.gid,
        _pad: 0,
        qbytes: ds.msg_qbytes,
    };
    // Room for what the queue holds now plus one more largest message (others may send).
    let want = tail_size(q).saturating_add(16 + 8192);
    let max_tail = want.min(
        w.room()
            .saturating_sub(64 + core::mem::size_of::<SysvMsgRec>()),
    );
    let start = w.len();
    let mut err = None;
    let filled = w.record_fill(REC_SYSV_MSG, &head, max_tail, |tail| {
        let mut at = 0;
        let mut index = 0;
        loop {
            if at + 16 > tail.len() {
                err = Some(Errno(libc::ENOSPC));
                break;
            }
            match copy_message(q.msqid, &mut tail[at + 8..], index) {
                Ok(n) => {
                    tail[at..at + 8].copy_from_slice(&(n as u64).to_ne_bytes());
                    let end = at + 16 + n;
                    let padded = (end + 7) & !7;
                    if padded > tail.len() {
                        err = Some(Errno(libc::ENOSPC));
                        break;
                    }
                    tail[end..padded].fill(0);
                    at = padded;
                    index += 1;
                }
                Err(Errno(libc::ENOMSG)) => break,
                Err(Errno(libc::E2BIG)) => {
                    err = Some(Errno(libc::ENOSPC));
                    break;
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        at
    });
    if filled.is_err() {
        err = Some(Errno(libc::ENOSPC));
    }
    match err {
        Some(e) => {
            w.truncate(start);
            Err(e)
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_lines_parse() {
        assert!(parse_line(b"       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime").is_none());
        let q = parse_line(b"1818951680          2   640         312          4  4242  4243  1000  1000  1000  1000 1765000010 1765000009 1765000000").unwrap();
        assert_eq!(
            (q.key, q.msqid, q.mode, q.cbytes, q.qnum, q.lspid, q.lrpid),
            (0x6c6b_0000, 2, 0o640, 312, 4, 4242, 4243)
        );
        assert_eq!(
            (q.uid, q.gid, q.stime, q.rtime),
            (1000, 1000, 1765000010, 1765000009)
        );
        let neg = parse_line(b"-7 3 600 0 0 0 0 0 0 0 0 0 0 5").unwrap();
        assert_eq!(neg.key, -7);
    }

    #[test]
    fn the_last_operator_saves_the_queue() {
        let q = |lspid, lrpid, stime, rtime| MsgLine {
            lspid,
            lrpid,
            stime,
            rtime,
            ..MsgLine::default()
        };
        assert_eq!(last_user(&q(10, 11, 5, 6)), 11, "a later receive");
        assert_eq!(last_user(&q(10, 11, 6, 5)), 10, "a later send");
        assert_eq!(last_user(&q(10, 11, 6, 6)), 10, "same second: the sender");
        assert_eq!(last_user(&q(0, 11, 0, 6)), 11, "only received");
        assert_eq!(last_user(&q(10, 0, 6, 0)), 10, "only sent");
        assert_eq!(last_user(&q(0, 0, 0, 0)), 0, "never used: nobody");
    }
}
