//! SysV shared memory segments (`REC_REGION_SYSV`): made again by the pool before any process
//! of the job forks, with their key (or `IPC_PRIVATE`), size and mode, filled with the saved
//! pages; each process attaches it at its address with `shmat`. A segment removed with
//! `IPC_RMID` before the checkpoint is made private, kept alive by an attachment of the pool
//! (each process drops its inherited copy once it attached its own) and removed again at once.
//!
//! A key that is in use is an error, except by the very segment that was saved (same id, same
//! size, attached by nobody: the one the checkpointed program left behind when it ended), which
//! is taken over and its contents set back to the image's.
//!
//! Semaphore sets (`REC_SYSV_SEM`, saved by the process that operated on them last) are made
//! again the same way, once per set of the job, with their key, mode and values; the same
//! rules for a key in use (the saved set itself, left behind, is taken over and its values set).
//! The process whose image saved a set then sets the values once more itself
//! ([`own_semaphores`]), so that it is the set's last operator again for its next checkpoint.
//!
//! Message queues (`REC_SYSV_MSG`, saved by the process that operated on them last) are made
//! again by the pool with their key and capacity (or the saved queue itself, left behind, is
//! taken over and emptied); the process whose image saved a queue then sends the saved messages
//! in order before anything of the program runs (so it is again the queue's last sender, and
//! saves it at its next checkpoint by the same rule) and sets the saved mode and owner.

use super::RestoreError;
use crate::image::format::{SysvMsgRec, SysvSemRec, SysvShmRec};
use crate::image::reader::Image;
use std::collections::HashMap;

/// `SHM_DEST` in `shm_perm.mode`: removed with `IPC_RMID`, destroyed at the last detach.
pub const SHM_DEST: u32 = 0o1000;

fn last(msg: String) -> RestoreError {
    let e = std::io::Error::last_os_error();
    RestoreError::new(e.raw_os_error().unwrap_or(libc::EIO), format!("{msg}: {e}"))
}

/// `n` rounded up to whole pages.
pub fn page_up(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}

fn stat(id: i32) -> Option<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain data; IPC_STAT writes one.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == 0).then_some(ds)
}

/// A segment like `seg` (owner read/write until [`finish`]); its id and whether it is the
/// saved segment taken over (its old contents must be cleared before the saved pages go in).
pub fn create(seg: &SysvShmRec) -> Result<(i32, bool), RestoreError> {
    let key = if seg.mode & SHM_DEST != 0 {
        libc::IPC_PRIVATE
    } else {
        seg.key
    };
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (seg.mode & 0o777) as i32 | 0o600;
    // SAFETY: shmget takes no pointers.
    let id = unsafe { libc::shmget(key, seg.size as usize, flags) };
    if id >= 0 {
        return Ok((id, false));
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return Err(last(format!(
            "cannot create SysV shared memory segment of key {:#x} ({} bytes)",
            seg.key, seg.size
        )));
    }
    // SAFETY: as above.
    let id = unsafe { libc::shmget(key, 0, 0) };
    let ds = stat(id);
    if id == seg.shmid && ds.is_some_and(|d| d.shm_nattch == 0 && d.shm_segsz as u64 == seg.size) {
        return Ok((id, true));
    }
    Err(RestoreError::new(
        libc::EEXIST,
        format!(
            "SysV shared memory key {:#x} is in use (segment {id}, {}, attached by {}): remove it (ipcrm -M {:#x}) and restart again",
            seg.key,
            ds.map_or("size unknown".into(), |d| format!("{} bytes", d.shm_segsz)),
            ds.map_or(0, |d| d.shm_nattch),
            seg.key
        ),
    ))
}

/// Attaches segment `id` at `addr` (0: anywhere), read-only if `readonly`; where it landed.
pub fn attach(id: i32, addr: u64, readonly: bool) -> Result<u64, RestoreError> {
    let flags = if readonly { libc::SHM_RDONLY } else { 0 };
    // SAFETY: shmat maps new memory; at a given address it fails rather than replace a mapping.
    let p = unsafe { libc::shmat(id, addr as *const libc::c_void, flags) };
    if p as isize == -1 {
        return Err(last(format!(
            "cannot attach SysV shared memory segment {id} at {addr:#x}"
        )));
    }
    Ok(p as u64)
}

/// After the fill: the saved mode back, and a segment removed before the checkpoint removed
/// again (kept alive by an attachment returned for the pool to detach).
pub fn finish(id: i32, seg: &SysvShmRec) -> Result<Option<u64>, RestoreError> {
    if let Some(mut ds) = stat(id) {
        if ds.shm_perm.mode as u32 & 0o777 != seg.mode & 0o777 {
            ds.shm_perm.mode = (seg.mode & 0o777) as _;
            // SAFETY: IPC_SET reads the shmid_ds.
            unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) };
        }
    }
    if seg.mode & SHM_DEST == 0 {
        return Ok(None);
    }
    let keep = attach(id, 0, true)?;
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    Ok(Some(keep))
}

/// Detaches a pool attachment.
pub fn detach(addr: u64) {
    // SAFETY: `addr` is an attachment the pool made.
    unsafe { libc::shmdt(addr as *const libc::c_void) };
}

/// Every semaphore set of the job made again (or taken over) with its saved values: saved id →
/// id now. The pool's `SETALL` makes the pool the sets' last operator: each process whose image
/// saved a set takes that back with [`own_semaphores`].
pub fn semaphores(images: &[&Image]) -> Result<HashMap<i32, i32>, RestoreError> {
    let mut ids = HashMap::new();
    for (s, vals) in images.iter().flat_map(|img| img.sems.iter()) {
        if ids.contains_key(&s.semid) {
            continue;
        }
        let id = create_sem(s)?;
        ids.insert(s.semid, id);
        let mut v = vals.clone();
        // SAFETY: SETALL reads `nsems` values from the vector, which holds that many.
        if v.len() != s.nsems as usize
            || unsafe { libc::semctl(id, 0, libc::SETALL, v.as_mut_ptr()) } != 0
        {
            return Err(last(format!(
                "cannot set the values of SysV semaphore set {id} (key {:#x})",
                s.key
            )));
        }
    }
    Ok(ids)
}

/// In the restored process, before the program runs: the saved values of every set its image
/// saved are set again by this process (`SETALL` records the caller as each semaphore's last
/// operator, `GETPID`), so its next checkpoint saves the set again by the same rule as the
/// first. Every process of a tree does this before the gate opens, so no program code has
/// changed a value yet; the values are the ones the pool set.
pub fn own_semaphores(img: &Image, ids: &HashMap<i32, i32>) {
    for (s, vals) in &img.sems {
        let Some(&id) = ids.get(&s.semid) else {
            continue;
        };
        let mut v = vals.clone();
        // SAFETY: SETALL reads `nsems` values from the vector, which holds that many (checked
        // by the pool, which set the same values).
        if v.len() != s.nsems as usize
            || unsafe { libc::semctl(id, 0, libc::SETALL, v.as_mut_ptr()) } != 0
        {
            eprintln!(
                "cr_restart: warning: SysV semaphore set {id} (key {:#x}): cannot set its values from the restored process ({}); its next checkpoint may not save it",
                s.key,
                std::io::Error::last_os_error()
            );
        }
    }
}

fn create_sem(s: &SysvSemRec) -> Result<i32, RestoreError> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (s.mode & 0o777) as i32;
    // SAFETY: semget takes no pointers.
    let id = unsafe { libc::semget(s.key, s.nsems as i32, flags) };
    if id >= 0 {
        return Ok(id);
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return Err(last(format!(
            "cannot create SysV semaphore set of key {:#x} ({} semaphores)",
            s.key, s.nsems
        )));
    }
    // SAFETY: as above.
    let id = unsafe { libc::semget(s.key, 0, 0) };
    // SAFETY: semid_ds is plain data; IPC_STAT writes one.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) } == 0;
    // Taken over only when nobody still uses it: every process that operated on it last is gone.
    let unused = (0..s.nsems as i32).all(|i| {
        // SAFETY: GETPID takes no buffer; kill with signal 0 only checks.
        let pid = unsafe { libc::semctl(id, i, libc::GETPID) };
        pid <= 0
            || unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    });
    if id == s.semid && ok && ds.sem_nsems as u32 == s.nsems && unused {
        return Ok(id);
    }
    Err(RestoreError::new(
        libc::EEXIST,
        format!(
            "SysV semaphore key {:#x} is in use (set {id}): remove it (ipcrm -S {:#x}) and restart again",
            s.key, s.key
        ),
    ))
}

/// Whether process `pid` (as `IPC_STAT` shows it) is gone or was never there.
fn gone(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks.
    pid <= 0
        || unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

fn msg_stat(id: i32) -> Option<libc::msqid_ds> {
    // SAFETY: msqid_ds is plain data; IPC_STAT writes one.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } == 0).then_some(ds)
}

/// Every message queue of the job made again (or taken over and emptied) with its key and
/// capacity, empty: saved id → the id it has now. The messages are sent by the process that
/// saved the queue ([`send_messages`]).
pub fn message_queues(images: &[&Image]) -> Result<HashMap<i32, i32>, RestoreError> {
    let mut ids = HashMap::new();
    for q in images.iter().flat_map(|img| img.msgqs.iter()) {
        if ids.contains_key(&q.head.msqid) {
            continue;
        }
        let id = create_msg(&q.head)?;
        if let Some(mut ds) = msg_stat(id) {
            if ds.msg_qbytes != q.head.qbytes {
                ds.msg_qbytes = q.head.qbytes as _;
                // SAFETY: IPC_SET reads the msqid_ds. Raising the capacity above `msgmnb` needs
                // CAP_SYS_RESOURCE: without it the queue keeps the default, and a send that no
                // longer fits fails with a clear error.
                unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) };
            }
        }
        ids.insert(q.head.msqid, id);
    }
    Ok(ids)
}

fn create_msg(q: &SysvMsgRec) -> Result<i32, RestoreError> {
    // Owner read/write until the owning process has sent the messages and set the saved mode.
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    // SAFETY: msgget takes no pointers.
    let id = unsafe { libc::msgget(q.key, flags) };
    if id >= 0 {
        return Ok(id);
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return Err(last(format!(
            "cannot create SysV message queue of key {:#x}",
            q.key
        )));
    }
    // SAFETY: as above.
    let id = unsafe { libc::msgget(q.key, 0) };
    let ds = msg_stat(id);
    // Taken over only when nobody still uses it: its last sender and receiver are gone.
    if id == q.msqid && ds.is_some_and(|d| gone(d.msg_lspid) && gone(d.msg_lrpid)) {
        let mut buf = vec![0u8; 8 + 65536];
        loop {
            // SAFETY: msgrcv writes at most the buffer's length (type and text) into it.
            let n = unsafe {
                libc::msgrcv(
                    id,
                    buf.as_mut_ptr().cast(),
                    buf.len() - 8,
                    0,
                    libc::IPC_NOWAIT | libc::MSG_NOERROR,
                )
            };
            if n < 0 {
                break;
            }
        }
        return Ok(id);
    }
    Err(RestoreError::new(
        libc::EEXIST,
        format!(
            "SysV message queue key {:#x} is in use (queue {id}): remove it (ipcrm -Q {:#x}) and restart again",
            q.key, q.key
        ),
    ))
}

/// Sends the saved messages of every queue `img` saved, in order, into the queue the pool made
/// (`ids`: saved id → id now), then gives the queue its saved mode and owner. A queue saved
/// empty gets one empty message sent and received, so this process is its last user again.
pub fn send_messages(img: &Image, ids: &HashMap<i32, i32>) -> Result<(), RestoreError> {
    for q in &img.msgqs {
        let Some(&id) = ids.get(&q.head.msqid) else {
            continue;
        };
        let dummy = [(1i64, Vec::new())];
        let msgs = if q.msgs.is_empty() {
            &dummy[..]
        } else {
            &q.msgs[..]
        };
        for (i, (mtype, text)) in msgs.iter().enumerate() {
            let mut buf = Vec::with_capacity(8 + text.len());
            buf.extend_from_slice(&mtype.to_ne_bytes());
            buf.extend_from_slice(text);
            // SAFETY: msgsnd reads the type and `text.len()` bytes of text from the buffer.
            let rc = unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) };
            if rc != 0 {
                return Err(last(format!(
                    "cannot put message {} of {} ({} bytes) back into SysV message queue {id} (key {:#x}, capacity {} bytes saved)",
                    i + 1,
                    q.msgs.len(),
                    text.len(),
                    q.head.key,
                    q.head.qbytes
                )));
            }
        }
        if q.msgs.is_empty() {
            let mut buf = [0u8; 16];
            // SAFETY: msgrcv writes at most 8 + 8 bytes into the 16-byte buffer.
            unsafe { libc::msgrcv(id, buf.as_mut_ptr().cast(), 8, 1, libc::IPC_NOWAIT) };
        }
        let Some(mut ds) = msg_stat(id) else {
            continue;
        };
        ds.msg_perm.mode = (q.head.mode & 0o777) as _;
        ds.msg_perm.uid = q.head.uid;
        ds.msg_perm.gid = q.head.gid;
        // SAFETY: IPC_SET reads the msqid_ds.
        if unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } != 0 {
            eprintln!(
                "cr_restart: warning: SysV message queue {id} (key {:#x}): cannot give it mode {:o}, owner {}:{} again: {}",
                q.head.key,
                q.head.mode & 0o777,
                q.head.uid,
                q.head.gid,
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}
