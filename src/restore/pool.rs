//! What the processes of one restart job share, created once before any of them is forked:
//! open file descriptions (files, directories, devices, pipes and FIFOs with their buffered
//! bytes) and shared memory objects (filled with their saved pages).
//!
//! Every process of the job inherits the pool across `fork`, `dup2`s the descriptions it had
//! onto its own descriptor numbers (`fds::restore`) and closes the rest, so descriptors that
//! shared a description before the checkpoint (dup'd, inherited across fork: found by the agent
//! and `cr_checkpoint` with `kcmp`) share one again, with its offset and status flags, and a pipe
//! between two processes is one pipe again. Pipes with only one end in the job lead outside it:
//! they are not pooled (the process gets the restarter's descriptors of those numbers instead,
//! `fds::restore`), except a pipe whose writers had all exited (`PIPE_NO_WRITERS`): its readers
//! get its bytes, then EOF.

use super::RestoreError;
use crate::image::format::{FdKind, RegionKind};
use crate::image::reader::{Fd, Image};
use crate::image::tree::ShareRec;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

/// The shared objects of a job.
#[derive(Default)]
pub struct Pool {
    /// (image index, descriptor number) → pool descriptor holding its open file description.
    pub fds: HashMap<(usize, i32), i32>,
    /// Shared memory objects by `memory::shared_key` → memfd (for a region with `sysv`: the
    /// SysV segment's id).
    pub shm: HashMap<(u64, u64), i32>,
    /// Attachments keeping alive SysV segments removed before the checkpoint (`sysv::finish`).
    pub sysv_keep: Vec<u64>,
    /// Every descriptor of the pool.
    pub all: Vec<i32>,
    /// SysV message queues made again: saved id → id now (`sysv::message_queues`).
    pub msgq: HashMap<i32, i32>,
    /// SysV semaphore sets made again: saved id → id now (`sysv::semaphores`).
    pub sems: HashMap<i32, i32>,
}

/// Which open file description a saved descriptor had.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Key {
    /// A group found by `cr_checkpoint` (shared across processes).
    Group(u32),
    /// Its own (or that of the lowest descriptor of its process it was dup'd from).
    Own(usize, i32),
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn fail(what: String) -> RestoreError {
    let e = last_errno();
    RestoreError::new(
        e,
        format!("{what}: {}", std::io::Error::from_raw_os_error(e)),
    )
}

fn cpath(p: &[u8]) -> CString {
    CString::new(p.to_vec()).unwrap_or_default()
}

fn is_read_end(f: &Fd) -> bool {
    f.rec.flags & libc::O_ACCMODE == libc::O_RDONLY
}

/// Whether the pipe behind `fd` holds unread bytes (`FIONREAD`).
fn fifo_holds_bytes(fd: i32) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) == 0 && n > 0 }
}

fn is_rdwr(f: &Fd) -> bool {
    f.rec.flags & libc::O_ACCMODE == libc::O_RDWR
}

/// The path of the named FIFO behind `f`, if it is one that can be opened by name: the saved
/// path when it is still that FIFO (same device and inode), else another name of it in the same
/// directory (a FIFO renamed, or linked and unlinked, after the checkpoint or after it was
/// opened: `/proc` shows the name it was opened by, "(deleted)" once that name is gone), else
/// the saved path when it was not deleted (re-created with `mkfifo` if it is missing). `None`:
/// an anonymous pipe, or a FIFO with no name left (re-created as an anonymous pipe).
fn fifo_path(f: &Fd) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if f.path.first() != Some(&b'/') || f.rec.mode & libc::S_IFMT != libc::S_IFIFO {
        return None;
    }
    let deleted = f.path.ends_with(b" (deleted)");
    let base = f.path.strip_suffix(b" (deleted)").unwrap_or(&f.path);
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(base));
    let same = |m: &std::fs::Metadata| {
        m.file_type().is_fifo() && m.dev() == f.rec.dev && m.ino() == f.rec.ino
    };
    if std::fs::symlink_metadata(path).is_ok_and(|m| same(&m)) {
        return Some(base.to_vec());
    }
    let other = path.parent().and_then(|dir| {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let p = e.path();
            std::fs::symlink_metadata(&p)
                .is_ok_and(|m| same(&m))
                .then(|| p.into_os_string().into_encoded_bytes())
        })
    });
    match other {
        Some(p) => Some(p),
        None if deleted => None,
        None => Some(base.to_vec()),
    }
}

/// Whether the pipe behind `f` has both ends in the job (a descriptor open for reading and
/// writing is both) or is a named FIFO: then it is pooled.
pub fn pipe_is_pooled(images: &[&Image], f: &Fd) -> bool {
    if fifo_path(f).is_some() {
        return true;
    }
    let ends = |read: bool| {
        images.iter().any(|img| {
            all_fds(img).any(|g| {
                g.kind == FdKind::Pipe
                    && g.rec.ino == f.rec.ino
                    && (is_rdwr(g) || is_read_end(g) == read)
            })
        })
    };
    ends(true) && (ends(false) || writerless(images, f.rec.ino))
}

/// Whether nobody could write to pipe `ino` any more at checkpoint time: restored with its
/// read ends only (its saved bytes, then end of file), not as a pipe leading outside.
fn writerless(images: &[&Image], ino: u64) -> bool {
    images.iter().any(|img| img.writerless_pipes.contains(&ino))
}

struct PipeObj {
    /// Read and write ends (both the same O_RDWR handle for a named FIFO).
    ends: [i32; 2],
    /// Whether the original end of each direction was handed out already.
    used: [bool; 2],
}

impl Pool {
    /// Creates every shared object of the job. `images[i]` is read from `files[i]`; `shares` is
    /// the tree manifest's share table (empty for a single image); `reconnect`: TCP
    /// connections whose other end is not in the job are made again to their saved peer
    /// address within that time ([`super::reconnect`]), else they come back reset.
    pub fn build(
        images: &[&Image],
        files: &[&File],
        shares: &[ShareRec],
        reconnect: Option<std::time::Duration>,
    ) -> Result<Pool, RestoreError> {
        let mut pool = Pool::default();
        let floor = fd_floor(images.iter().copied());
        let res = pool.fill(images, files, shares, floor, reconnect);
        if res.is_err() {
            pool.close();
        }
        res.map(|_| pool)
    }

    fn fill(
        &mut self,
        images: &[&Image],
        files: &[&File],
        shares: &[ShareRec],
        floor: i32,
        reconnect: Option<std::time::Duration>,
    ) -> Result<(), RestoreError> {
        let groups: HashMap<(usize, i32), u32> = shares
            .iter()
            .map(|s| ((s.proc as usize, s.fd), s.group))
            .collect();
        let mut descs: HashMap<Key, i32> = HashMap::new();
        let mut pipes: HashMap<u64, PipeObj> = HashMap::new();
        let mut unlinked: HashMap<(u64, u64), i32> = HashMap::new();
        // The other ends of unix socket pairs made for an end met earlier, by socket inode.
        let mut unix_ends: HashMap<u64, std::os::fd::OwnedFd> = HashMap::new();
        // Likewise for TCP connections of the job, by (local, peer) address of the other end.
        // Connections to peers outside the job, made again first when asked, and the job's
        // listeners they were accepted on, by saved address (see `reconnect`).
        let (mut tcp_ends, mut listeners) = match reconnect {
            Some(wait) => super::reconnect::reconnect(images, wait),
            None => (HashMap::new(), HashMap::new()),
        };
        // Pseudo-terminals whose master is in the job, by saved terminal number: the new
        // master (until its own descriptor is met) and the new terminal number.
        let mut ptys: HashMap<u32, (Option<std::os::fd::OwnedFd>, u32)> = HashMap::new();
        super::saved::put_back_created(images, files)?;
        // The descriptors in flight in unix sockets first, so that each socket's queue can be
        // filled with them when it is made.
        let passes = images
            .iter()
            .enumerate()
            .flat_map(|(i, img)| img.in_flight.iter().map(move |f| (i, img, f, true)))
            .chain(
                images
                    .iter()
                    .enumerate()
                    .flat_map(|(i, img)| img.fds.iter().map(move |f| (i, img, f, false))),
            );
        for (i, img, f, in_flight) in passes {
            let pooled = match f.kind {
                // A descriptor in flight is made to be sent: never the restarter's.
                FdKind::Kernel if in_flight => true,
                FdKind::Regular | FdKind::Directory | FdKind::CheckpointFile => true,
                // A terminal outside the job takes the restarter's descriptor too.
                FdKind::CharDevice => !terminal_leads_outside(images, f),
                FdKind::Pipe => pipe_is_pooled(images, f),
                FdKind::Unlinked => true,
                // A socket connected outside the job takes the restarter's descriptor.
                FdKind::Kernel => !socket_leads_outside(images, f),
                // A pseudo-terminal slave whose master is in the job gets the new slave.
                // So does a socket on 0-2 whose other end is in the job.
                FdKind::Inherited => {
                    pty_slave_in_job(images, f).is_some() || socket_peer_in_job(images, f)
                }
                FdKind::Unsupported => false,
            };
            if !pooled {
                continue;
            }
            let key = key_of(img, i, f, &groups);
            let fd = match descs.get(&key) {
                Some(&fd) => fd,
                None => {
                    // Made with the file-system ids and groups of the process it belongs to
                    // (the first one, when several share it): a privileged restarter opens
                    // nothing for a user's image that the user could not.
                    let _fs = super::creds::FsGuard::assume(img);
                    let fd = if f.kind == FdKind::Pipe {
                        self.pipe_description(images, &mut pipes, f, floor)?
                    } else if f.kind == FdKind::Unlinked {
                        self.unlinked_description(images, files, &mut unlinked, f, floor)?
                    } else if let Some(master) = pty_slave_in_job(images, f) {
                        let fd = pty_slave(&mut ptys, master, f)?;
                        self.keep(fd, floor)?
                    } else if is_pty_master(f) {
                        let fd = pty_master(&mut ptys, f)?;
                        self.keep(fd.into_raw_fd(), floor)?
                    } else if f.kind == FdKind::Kernel || f.kind == FdKind::Inherited {
                        let state = f.kobj.as_ref().map(|(_, st)| st.as_slice());
                        let made = state
                            .and_then(crate::kinds::socket::listening_addr)
                            .and_then(|a| listeners.remove(a));
                        let fd = match made {
                            Some(fd) => fd,
                            None => kernel_description(
                                images,
                                (i, &self.fds),
                                &mut unix_ends,
                                &mut tcp_ends,
                                f,
                            )?,
                        };
                        self.keep(fd.into_raw_fd(), floor)?
                    } else {
                        if let Some(s) = &f.saved {
                            super::saved::put_back(images, files, f, s)?;
                        }
                        self.keep(open_file(f)?, floor)?
                    };
                    set_status_flags(fd, f);
                    descs.insert(key, fd);
                    fd
                }
            };
            self.fds.insert((i, f.rec.fd), fd);
        }
        self.sems = super::sysv::semaphores(images)?;
        self.msgq = super::sysv::message_queues(images)?;
        self.shared_memory(images, files, floor)
    }

    /// Moves `fd` to the pool's range and records it.
    fn keep(&mut self, fd: i32, floor: i32) -> Result<i32, RestoreError> {
        // SAFETY: duplicating and closing a descriptor we own.
        let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        if high < 0 {
            return Err(fail("cannot keep a shared descriptor".into()));
        }
        self.all.push(high);
        Ok(high)
    }

    /// A new open file description of the pipe behind `f` (re-creating the pipe, its capacity and
    /// its buffered bytes on first use).
    fn pipe_description(
        &mut self,
        images: &[&Image],
        pipes: &mut HashMap<u64, PipeObj>,
        f: &Fd,
        floor: i32,
    ) -> Result<i32, RestoreError> {
        let ino = f.rec.ino;
        let obj = match pipes.entry(ino) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(self.create_pipe(images, f, floor)?)
            }
        };
        let dir = if is_read_end(f) { 0 } else { 1 };
        let named = obj.ends[0] == obj.ends[1];
        if !named && !is_rdwr(f) && !obj.used[dir] {
            obj.used[dir] = true;
            return Ok(obj.ends[dir]);
        }
        // Another description of the same pipe: open it again through /proc (one open for
        // reading and writing at once, as it was).
        let link = cpath(format!("/proc/self/fd/{}", obj.ends[dir]).as_bytes());
        let mode = if is_rdwr(f) {
            libc::O_RDWR
        } else if dir == 0 {
            libc::O_RDONLY
        } else {
            libc::O_WRONLY
        };
        // SAFETY: open with a valid C string; O_NONBLOCK so a FIFO open never waits.
        let fd = unsafe { libc::open(link.as_ptr(), mode | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(fail(format!("cannot reopen pipe of fd {}", f.rec.fd)));
        }
        self.keep(fd, floor)
    }

    fn create_pipe(
        &mut self,
        images: &[&Image],
        f: &Fd,
        floor: i32,
    ) -> Result<PipeObj, RestoreError> {
        let ino = f.rec.ino;
        let fifo = fifo_path(f);
        let ends = if let Some(path) = &fifo {
            let p = cpath(path);
            // A FIFO whose directory is gone too (Open MPI removes its session directory on
            // SIGTERM): the directories again, with their saved modes.
            let dir_gone = std::path::Path::new(std::ffi::OsStr::from_bytes(path))
                .parent()
                .is_some_and(|d| std::fs::symlink_metadata(d).is_err());
            if dir_gone {
                super::saved::make_parents(
                    images,
                    std::path::Path::new(std::ffi::OsStr::from_bytes(path)),
                )
                .map_err(|e| {
                    RestoreError::new(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!(
                            "cannot re-create the directory of FIFO {}: {e}",
                            String::from_utf8_lossy(path)
                        ),
                    )
                })?;
            }
            // SAFETY: stat/mkfifo/open with a valid C string.
            unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::stat(p.as_ptr(), &mut st) != 0
                    && libc::mkfifo(p.as_ptr(), f.rec.mode & 0o7777) != 0
                {
                    return Err(fail(format!(
                        "cannot re-create FIFO {}",
                        String::from_utf8_lossy(path)
                    )));
                }
                let fd = libc::open(
                    p.as_ptr(),
                    libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    return Err(fail(format!(
                        "cannot open FIFO {}",
                        String::from_utf8_lossy(path)
                    )));
                }
                let fd = self.keep(fd, floor)?;
                [fd, fd]
            }
        } else {
            let mut p = [0i32; 2];
            // SAFETY: pipe2 with a valid array.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(fail("cannot create a pipe".into()));
            }
            [self.keep(p[0], floor)?, self.keep(p[1], floor)?]
        };
        let size = images
            .iter()
            .flat_map(|img| img.fds.iter())
            .filter(|g| g.kind == FdKind::Pipe && g.rec.ino == ino)
            .map(|g| g.rec.pipe_size)
            .max()
            .unwrap_or(0);
        let mut data = images
            .iter()
            .find_map(|img| img.pipe_data.iter().find(|(i, _)| *i == ino))
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&[]);
        if fifo.is_some() && fifo_holds_bytes(ends[0]) {
            // The FIFO stayed open outside the job (a reader or writer that was not checkpointed
            // kept it) and still holds the bytes: they are not put in a second time.
            data = &[];
        }
        // SAFETY: fcntl and write on the pipe just created.
        unsafe {
            if size > 0 && libc::fcntl(ends[1], libc::F_GETPIPE_SZ) < size as i32 {
                // Above /proc/sys/fs/pipe-max-size this fails without privilege: keep the default.
                libc::fcntl(ends[1], libc::F_SETPIPE_SZ, size as i32);
            }
            let fl = libc::fcntl(ends[1], libc::F_GETFL);
            libc::fcntl(ends[1], libc::F_SETFL, fl | libc::O_NONBLOCK);
            let mut done = 0;
            while done < data.len() {
                let n = libc::write(
                    ends[1],
                    data[done..].as_ptr() as *const _,
                    data.len() - done,
                );
                if n <= 0 {
                    return Err(RestoreError::new(
                        libc::ENOSPC,
                        format!(
                            "cannot put back the {} bytes buffered in a pipe (fd {}): it holds less now",
                            data.len(),
                            f.rec.fd
                        ),
                    ));
                }
                done += n as usize;
            }
            libc::fcntl(ends[1], libc::F_SETFL, fl);
        }
        let mut ends = ends;
        if ends[0] != ends[1] && writerless(images, ino) {
            // Its writers had exited: the readers get the bytes, then end of file.
            self.all.retain(|&fd| fd != ends[1]);
            // SAFETY: closing the write end we created; no process of the job had one.
            unsafe { libc::close(ends[1]) };
            ends[1] = -1;
        }
        Ok(PipeObj {
            ends,
            used: [false; 2],
        })
    }

    /// A new open file description of the unlinked file behind `f` (re-created on first use as
    /// a new unlinked file, `O_TMPFILE`, beside where it was, with its saved contents).
    fn unlinked_description(
        &mut self,
        images: &[&Image],
        image_files: &[&File],
        files: &mut HashMap<(u64, u64), i32>,
        f: &Fd,
        floor: i32,
    ) -> Result<i32, RestoreError> {
        let key = (f.rec.dev, f.rec.ino);
        let tmp = match files.get(&key) {
            Some(&fd) => fd,
            None => {
                let fd = self.keep(create_unlinked(images, image_files, f)?, floor)?;
                files.insert(key, fd);
                fd
            }
        };
        let link = cpath(format!("/proc/self/fd/{tmp}").as_bytes());
        // O_SYNC/O_DSYNC cannot be set later (F_SETFL ignores them): at open, as the original.
        let flags = f.rec.flags & (libc::O_ACCMODE | libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC);
        // SAFETY: open with a valid C string; lseek on the descriptor just opened.
        let fd = unsafe {
            let fd = libc::open(link.as_ptr(), flags | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::lseek(fd, f.rec.offset, libc::SEEK_SET);
            }
            fd
        };
        if fd < 0 {
            return Err(fail(format!(
                "cannot reopen the unlinked file {} (fd {})",
                String::from_utf8_lossy(&f.path),
                f.rec.fd
            )));
        }
        self.keep(fd, floor)
    }

    /// One memfd per shared memory object of the job, holding the union of the pages every
    /// process saved of it.
    fn shared_memory(
        &mut self,
        images: &[&Image],
        files: &[&File],
        floor: i32,
    ) -> Result<(), RestoreError> {
        let mut sizes: HashMap<(u64, u64), u64> = HashMap::new();
        for img in images {
            for r in img
                .regions
                .iter()
                .filter(|r| r.kind == RegionKind::SharedContent)
            {
                if let Some(k) = super::memory::shared_key(r) {
                    let end = r.rec.offset + (r.rec.end - r.rec.start);
                    let e = sizes.entry(k).or_insert(0);
                    *e = (*e).max(end);
                }
            }
        }
        let mut buf = Vec::new();
        for (key, size) in sizes {
            let tmpfs_of = images.iter().find_map(|img| {
                img.regions
                    .iter()
                    .find(|r| {
                        r.kind == RegionKind::SharedContent
                            && super::memory::tmpfs_file(r)
                            && super::memory::shared_key(r) == Some(key)
                    })
                    .map(|r| (*img, r))
            });
            let tmpfs = tmpfs_of.map(|(_, r)| r);
            let huge = images.iter().find_map(|img| {
                img.regions
                    .iter()
                    .filter(|r| super::memory::shared_key(r) == Some(key))
                    .find_map(super::memory::huge_page_size)
            });
            let sysv = images.iter().find_map(|img| {
                img.regions
                    .iter()
                    .filter(|r| super::memory::shared_key(r) == Some(key))
                    .find_map(|r| r.sysv)
            });
            if let Some(seg) = sysv {
                let (id, taken_over) = super::sysv::create(&seg)?;
                let len = super::sysv::page_up(seg.size) as usize;
                let p = super::sysv::attach(id, 0, false)? as *mut u8;
                if taken_over {
                    // SAFETY: the attachment just made is `len` bytes long.
                    unsafe { std::ptr::write_bytes(p, 0, len) };
                }
                fill_shared(images, files, key, u64::MAX, &Sink::Map(p, len), &mut buf)?;
                if let Some(keep) = super::sysv::finish(id, &seg)? {
                    self.sysv_keep.push(keep);
                }
                self.shm.insert(key, id);
                continue;
            }
            let (fd, fill) = match (tmpfs, huge) {
                (Some(r), _) => {
                    // With the file-system ids of (the first) process that maps it.
                    let _fs = tmpfs_of.and_then(|(img, _)| super::creds::FsGuard::assume(img));
                    tmpfs_file(images, r)?
                }
                (None, Some(page)) => (huge_memfd(size, page)?, true),
                (None, None) => {
                    // SAFETY: memfd_create with a literal name, sized below.
                    let fd =
                        unsafe { libc::memfd_create(c"libcr-shm".as_ptr(), libc::MFD_CLOEXEC) };
                    // SAFETY: sizing the memfd we own.
                    if fd < 0 || unsafe { libc::ftruncate(fd, size as i64) } < 0 {
                        return Err(fail("cannot create shared memory".into()));
                    }
                    (fd, true)
                }
            };
            let fd = self.keep(fd, floor)?;
            if !fill {
                self.shm.insert(key, fd);
                continue;
            }
            // Pages past the end of a re-created file are not written (that would grow it).
            let limit = tmpfs.map_or(u64::MAX, |r| r.rec.file_size);
            let sink = Sink::new(fd, huge.map(|page| (size.div_ceil(page) * page, page)))?;
            fill_shared(images, files, key, limit, &sink, &mut buf)?;
            if let Some(r) = tmpfs {
                // Last (the writes above changed it): the recorded modification time, so that a
                // later restart of this image finds the re-created file unchanged.
                let times = [
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                    libc::timespec {
                        tv_sec: r.rec.mtime_sec,
                        tv_nsec: r.rec.mtime_nsec,
                    },
                ];
                // SAFETY: fd is the file just re-created; `times` outlives the call.
                unsafe { libc::futimens(fd, times.as_ptr()) };
            }
            self.shm.insert(key, fd);
        }
        Ok(())
    }

    /// Closes every descriptor of the pool (each process does, once it took its own).
    pub fn close(&self) {
        for &a in &self.sysv_keep {
            super::sysv::detach(a);
        }
        for &fd in &self.all {
            // SAFETY: closing pool descriptors of this process.
            unsafe { libc::close(fd) };
        }
    }
}

/// Writes the saved pages of shared memory object `key` (from every image) through `sink`,
/// nothing at or past `limit`.
fn fill_shared(
    images: &[&Image],
    files: &[&File],
    key: (u64, u64),
    limit: u64,
    sink: &Sink,
    buf: &mut Vec<u8>,
) -> Result<(), RestoreError> {
    for (img, file) in images.iter().zip(files) {
        for r in img.regions.iter().filter(|r| {
            r.kind == RegionKind::SharedContent && super::memory::shared_key(r) == Some(key)
        }) {
            for e in &r.extents {
                let mut done = 0u64;
                while done < e.len {
                    let n = (e.len - done).min(4 << 20) as usize;
                    buf.resize(n, 0u8);
                    let io = |e: std::io::Error| {
                        RestoreError::new(
                            e.raw_os_error().unwrap_or(libc::EIO),
                            format!("reading shared memory pages: {e}"),
                        )
                    };
                    img.read_pages(file, e.file_off + done, buf).map_err(|e| {
                        RestoreError::new(e.errno(), format!("reading shared memory pages: {e}"))
                    })?;
                    let at = r.rec.offset + (e.addr - r.rec.start) + done;
                    let keep = limit.saturating_sub(at).min(n as u64) as usize;
                    sink.write_at(&buf[..keep], at).map_err(io)?;
                    done += n as u64;
                }
            }
        }
    }
    Ok(())
}

/// A memfd of huge pages of `page` bytes, at least `size` bytes long.
fn huge_memfd(size: u64, page: u64) -> Result<i32, RestoreError> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | super::memory::huge_flag(page) as u32;
    // SAFETY: memfd_create with a literal name; sizing the memfd we own.
    let fd = unsafe { libc::memfd_create(c"libcr-shm".as_ptr(), flags) };
    if fd < 0 || unsafe { libc::ftruncate(fd, (size.div_ceil(page) * page) as i64) } < 0 {
        let e = fail(format!(
            "cannot create shared memory of huge pages of {} KiB ({} bytes; are enough free: vm.nr_hugepages?)",
            page >> 10,
            size
        ));
        if fd >= 0 {
            // SAFETY: closing the memfd just created.
            unsafe { libc::close(fd) };
        }
        return Err(e);
    }
    Ok(fd)
}

/// Where the saved pages of a shared memory object go: its file (`pwrite`), or a mapping of it
/// for hugetlbfs, which has no `write`.
enum Sink {
    File(std::mem::ManuallyDrop<File>),
    Map(*mut u8, usize),
}

impl Sink {
    /// A sink for `fd` (not closed by it); `mapped`: map that many bytes of it instead (huge
    /// pages of that size).
    fn new(fd: i32, mapped: Option<(u64, u64)>) -> Result<Sink, RestoreError> {
        let Some((len, page)) = mapped else {
            // SAFETY: fd is open; ManuallyDrop keeps File from closing it.
            return Ok(Sink::File(std::mem::ManuallyDrop::new(unsafe {
                <File as std::os::unix::io::FromRawFd>::from_raw_fd(fd)
            })));
        };
        // SAFETY: a new shared mapping of the memfd, unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(fail(format!(
                "cannot map {len} bytes of shared memory of huge pages of {} KiB (are enough free: vm.nr_hugepages?)",
                page >> 10
            )));
        }
        Ok(Sink::Map(p as *mut u8, len as usize))
    }

    fn write_at(&self, buf: &[u8], at: u64) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all_at(buf, at),
            Sink::Map(p, len) => {
                if at as usize + buf.len() > *len {
                    return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
                }
                // SAFETY: the range lies inside the mapping (checked above).
                unsafe {
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), p.add(at as usize), buf.len())
                };
                Ok(())
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::Map(p, len) = *self {
            // SAFETY: unmapping the mapping made in `Sink::new`.
            unsafe { libc::munmap(p as *mut _, len) };
        }
    }
}

/// The file of a shared tmpfs mapping (`FS_TMPFS`) and whether it must be filled with the saved
/// pages: a file still at its path is opened as it is (BLCR's rule for shared file mappings:
/// the file as it is now; preflight checked its size and modification time); a file that is gone
/// is re-created there (its missing directories too, see [`super::saved::make_parents`]) with the recorded mode (owner too, as root), size and modification time
/// (so a later restart of the same image finds it unchanged).
fn tmpfs_file(
    images: &[&Image],
    r: &crate::image::reader::Region,
) -> Result<(i32, bool), RestoreError> {
    let p = cpath(&r.path);
    let name = String::from_utf8_lossy(&r.path).into_owned();
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd >= 0 {
        return Ok((fd, false));
    }
    if last_errno() != libc::ENOENT {
        // SAFETY: as above.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(fail(format!("cannot open mapped temporary file {name}")));
        }
        return Ok((fd, false));
    }
    let fs = r.fs.unwrap_or_default();
    let path = std::path::Path::new(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&r.path),
    );
    super::saved::make_parents(images, path).map_err(|e| {
        RestoreError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot re-create the directory of mapped temporary file {name}: {e}"),
        )
    })?;
    // SAFETY: creating a new file with a valid C string.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(fail(format!(
            "cannot re-create mapped temporary file {name}"
        )));
    }
    // SAFETY: fd is the file just created.
    let ok = unsafe {
        if libc::geteuid() == 0 {
            libc::fchown(fd, fs.uid, fs.gid); // best effort: the restarting user owns it else
        }
        libc::fchmod(fd, fs.mode as libc::mode_t) == 0
            && libc::ftruncate(fd, r.rec.file_size as i64) == 0
    };
    if !ok {
        let e = fail(format!("cannot re-create mapped temporary file {name}"));
        // SAFETY: closing and removing the file just created.
        unsafe {
            libc::close(fd);
            libc::unlink(p.as_ptr());
        }
        return Err(e);
    }
    Ok((fd, true))
}

/// A new unlinked file (`O_TMPFILE`) with the saved contents of `f`'s file: in the directory it
/// was in when that still exists, else in /tmp.
fn create_unlinked(images: &[&Image], image_files: &[&File], f: &Fd) -> Result<i32, RestoreError> {
    let path = f.path.strip_suffix(b" (deleted)").unwrap_or(&f.path);
    let dir =
        std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path))
            .parent()
            .filter(|d| d.is_dir())
            .map(|d| d.as_os_str().as_encoded_bytes().to_vec())
            .unwrap_or_else(|| b"/tmp".to_vec());
    let mode = f.rec.mode & 0o7777;
    let mut fd = -1;
    for d in [dir.as_slice(), b"/tmp"] {
        let c = cpath(d);
        // SAFETY: open with a valid C string.
        fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                mode,
            )
        };
        if fd >= 0 {
            break;
        }
    }
    if fd < 0 {
        return Err(fail(format!(
            "cannot re-create the unlinked file {}",
            String::from_utf8_lossy(path)
        )));
    }
    // SAFETY: fd is ours; File::from_raw_fd is undone by into_raw_fd.
    let file = unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
    let name = String::from_utf8_lossy(path).into_owned();
    if let Err(e) =
        super::saved::write_contents(images, image_files, (f.rec.dev, f.rec.ino), &file, &name)
    {
        drop(file);
        return Err(e);
    }
    Ok(std::os::unix::io::IntoRawFd::into_raw_fd(file))
}

/// The lowest descriptor number clear of every saved descriptor of the job (with room to spare):
/// where the pool's and the restart's own descriptors go, so placing the program's descriptors
/// at their numbers never overwrites them.
pub fn fd_floor<'a>(images: impl Iterator<Item = &'a Image>) -> i32 {
    images
        .flat_map(|img| img.fds.iter().map(|f| f.rec.fd))
        .max()
        .unwrap_or(2)
        .max(2)
        + 16
}

fn key_of(img: &Image, i: usize, f: &Fd, groups: &HashMap<(usize, i32), u32>) -> Key {
    if let Some(&g) = groups.get(&(i, f.rec.fd)) {
        return Key::Group(g);
    }
    let first = f.rec.dup_of;
    if first != f.rec.fd {
        if let Some(g) = img.fds.iter().find(|g| g.rec.fd == first) {
            if let Some(&grp) = groups.get(&(i, first)) {
                return Key::Group(grp);
            }
            return Key::Own(i, g.rec.fd);
        }
    }
    Key::Own(i, f.rec.fd)
}

/// Status flags that can be set on an open description (`O_NONBLOCK`, `O_APPEND`, …), as saved.
/// `O_ASYNC` waits until the description is at its number in its process (`fds::restore`): the
/// kernel names the descriptor that turned it on in every signal (`si_fd`).
fn set_status_flags(fd: i32, f: &Fd) {
    let settable = libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME;
    if f.kind != FdKind::Directory {
        // SAFETY: F_SETFL on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFL, f.rec.flags & settable) };
    }
}

/// Every descriptor of an image: the program's and those in flight in its unix sockets.
fn all_fds(img: &Image) -> impl Iterator<Item = &Fd> {
    img.fds.iter().chain(img.in_flight.iter())
}

/// The open file description of kernel object `f` of image `at.0`: a connected unix socket is
/// one end of a new pair with its peer when the peer is in the job (made with the first of the
/// two met); a unix socket's queue gets the descriptors that were in flight in it from the
/// pool's descriptions (`at.1`, made first).
fn kernel_description(
    images: &[&Image],
    at: (usize, &HashMap<(usize, i32), i32>),
    unix_ends: &mut HashMap<u64, std::os::fd::OwnedFd>,
    tcp_ends: &mut HashMap<(Vec<u8>, Vec<u8>), std::os::fd::OwnedFd>,
    f: &Fd,
) -> Result<std::os::fd::OwnedFd, RestoreError> {
    use crate::kinds::unix;
    let (i, pool_fds) = at;
    let state = f.kobj.as_ref().map(|(_, st)| st.as_slice()).unwrap_or(&[]);
    if let Some((local, peer, _)) = crate::kinds::socket::tcp_connection(state) {
        return tcp_description(images, tcp_ends, f, state, local, peer);
    }
    let fail = |e: crate::kinds::KindError| {
        RestoreError::new(e.errno, format!("fd {} (unix socket): {e}", f.rec.fd))
    };
    let resolver = |img: usize| move |fd: i32| pool_fds.get(&(img, fd)).copied();
    let warn_missing = |missing: usize| {
        if missing > 0 {
            eprintln!(
                "cr_restart: warning: fd {}: {missing} descriptors in flight in its unix socket's queue could not be made again; its data comes back without them",
                f.rec.fd
            );
        }
    };
    let Some((ino, peer)) = f.kobj.as_ref().and_then(|(_, st)| unix::connection(st)) else {
        if unix::is_unix(state)
            && f.kobj
                .as_ref()
                .is_some_and(|(k, _)| *k == crate::kinds::SOCKET)
        {
            let (fd, missing) = unix::restore_single_with(state, &resolver(i)).map_err(fail)?;
            warn_missing(missing);
            return Ok(fd);
        }
        return kernel_object(f);
    };
    if let Some(end) = unix_ends.remove(&ino) {
        return Ok(end);
    }
    let peer_state = images.iter().enumerate().find_map(|(j, img)| {
        all_fds(img)
            .filter_map(|g| g.kobj.as_ref().map(|(_, st)| st.as_slice()))
            .find(|st| unix::connection(st).is_some_and(|(n, _)| n == peer))
            .map(|st| (j, st))
    });
    let resolve_a = resolver(i);
    let resolve_b = peer_state.map(|(j, _)| resolver(j));
    let b = match (peer_state, &resolve_b) {
        (Some((_, st)), Some(r)) => Some((st, r as unix::Resolve<'_>)),
        _ => None,
    };
    let ((end, other), missing) = unix::restore_pair((state, &resolve_a), b).map_err(fail)?;
    warn_missing(missing);
    match other {
        Some(other) => {
            unix_ends.insert(peer, other);
        }
        None => eprintln!(
            "cr_restart: warning: fd {}: the other end of its unix socket is not part of the restart; it reads end of file",
            f.rec.fd
        ),
    }
    Ok(end)
}

/// A TCP connection of the job: when its peer (the socket whose local and peer addresses are
/// its peer and local ones) is in the job too, both come back as one new loopback connection
/// with their waiting bytes; else it comes back reset.
fn tcp_description(
    images: &[&Image],
    tcp_ends: &mut HashMap<(Vec<u8>, Vec<u8>), std::os::fd::OwnedFd>,
    f: &Fd,
    state: &[u8],
    local: &[u8],
    peer: &[u8],
) -> Result<std::os::fd::OwnedFd, RestoreError> {
    use crate::kinds::socket;
    if let Some(end) = tcp_ends.remove(&(local.to_vec(), peer.to_vec())) {
        return Ok(end);
    }
    let partner = images
        .iter()
        .flat_map(|img| all_fds(img))
        .filter_map(|g| g.kobj.as_ref().map(|(_, st)| st.as_slice()))
        .find(|st| socket::tcp_connection(st).is_some_and(|(l, p, _)| l == peer && p == local));
    let Some(partner) = partner else {
        eprintln!(
            "cr_restart: warning: fd {}: TCP connection {} to {} comes back reset: its peer is not part of the restart (its next read or write fails with ECONNRESET)",
            f.rec.fd,
            socket::describe_addr(local),
            socket::describe_addr(peer)
        );
        return kernel_object(f);
    };
    let (mine, theirs) = socket::restore_tcp_pair(state, partner).map_err(|e| {
        RestoreError::new(e.errno, format!("fd {} (tcp connection): {e}", f.rec.fd))
    })?;
    tcp_ends.insert((peer.to_vec(), local.to_vec()), theirs);
    Ok(mine)
}

/// Whether `f` is a socket on 0-2 (`Inherited`, with its state) whose other end is in the job:
/// a connected unix socket whose peer's state is in an image, or a TCP connection whose
/// partner is.
fn socket_peer_in_job(images: &[&Image], f: &Fd) -> bool {
    f.kind == FdKind::Inherited && connected_peer_in_job(images, f) == Some(true)
}

/// Whether `f` is a connected socket above 2 (a unix socket or a TCP connection) whose other end
/// is no process of the job, while the restarter has a descriptor of its number: BLCR's rule
/// gives it the restarter's (as a pipe leading outside), so the pool makes nothing for it.
/// Without one it comes back as before (a unix socket reading end of file, a reset connection).
pub fn socket_leads_outside(images: &[&Image], f: &Fd) -> bool {
    f.kind == FdKind::Kernel
        && f.rec.fd > 2
        && connected_peer_in_job(images, f) == Some(false)
        && super::fds::restarter_has(f.rec.fd)
}

/// Whether `f` is a terminal above 2 (`/dev/pts/N` whose master is not in the job, `/dev/ttyN`,
/// `/dev/tty`, `/dev/console`) while the restarter has a descriptor of its number: BLCR's rule
/// gives it the restarter's (a job restarted from another terminal talks to that one). Without
/// one it is reopened by its path, as any device.
pub fn terminal_leads_outside(images: &[&Image], f: &Fd) -> bool {
    f.kind == FdKind::CharDevice
        && f.rec.fd > 2
        && is_terminal_path(&f.path)
        && pty_slave_in_job(images, f).is_none()
        && super::fds::restarter_has(f.rec.fd)
}

/// Whether `path` names a terminal device (by its name: the image keeps no device number).
fn is_terminal_path(path: &[u8]) -> bool {
    path.starts_with(b"/dev/pts/") || path.starts_with(b"/dev/tty") || path == b"/dev/console"
}

/// For a connected socket (unix, or a TCP connection): whether its other end is in the job.
/// None for anything else.
fn connected_peer_in_job(images: &[&Image], f: &Fd) -> Option<bool> {
    use crate::kinds::{socket, unix};
    let (_, state) = f.kobj.as_ref()?;
    let states = || {
        images
            .iter()
            .flat_map(|img| all_fds(img))
            .filter_map(|g| g.kobj.as_ref().map(|(_, st)| st.as_slice()))
    };
    if let Some((local, peer, _)) = socket::tcp_connection(state) {
        return Some(states().any(|st| {
            socket::tcp_connection(st).is_some_and(|(l, p, _)| l == peer && p == local)
        }));
    }
    // Peer 0: a connection not yet accepted, or a peer already gone: it leads nowhere (it
    // comes back reading end of file), not outside.
    let (_, peer) = unix::connection(state).filter(|&(_, p)| p != 0)?;
    Some(states().any(|st| unix::connection(st).is_some_and(|(i, _)| i == peer)))
}

/// Whether `f` is a pseudo-terminal master.
fn is_pty_master(f: &Fd) -> bool {
    f.kind == FdKind::Kernel && matches!(&f.kobj, Some((id, _)) if *id == crate::kinds::PTY)
}

/// For a descriptor of `/dev/pts/N` whose master is in the job: that master's saved state.
fn pty_slave_in_job<'a>(images: &[&'a Image], f: &Fd) -> Option<&'a [u8]> {
    use crate::kinds::pty;
    if !matches!(f.kind, FdKind::Inherited | FdKind::CharDevice) {
        return None;
    }
    let n = pty::slave_index(&f.path)?;
    images
        .iter()
        .flat_map(|img| img.fds.iter())
        .filter(|g| is_pty_master(g))
        .filter_map(|g| g.kobj.as_ref().map(|(_, st)| st.as_slice()))
        .find(|st| pty::index_of(st) == Some(n))
}

/// The new pseudo-terminal for a saved master (made on first use), by saved terminal number.
fn new_pty<'m>(
    ptys: &'m mut HashMap<u32, (Option<std::os::fd::OwnedFd>, u32)>,
    state: &[u8],
) -> Result<&'m mut (Option<std::os::fd::OwnedFd>, u32), RestoreError> {
    use crate::kinds::{pty, Kind};
    let old = pty::index_of(state).ok_or_else(|| {
        RestoreError::new(libc::EINVAL, "corrupt image: malformed pty state".into())
    })?;
    match ptys.entry(old) {
        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::hash_map::Entry::Vacant(e) => {
            let fail = |err: crate::kinds::KindError| {
                RestoreError::new(err.errno, format!("pty /dev/pts/{old}: {err}"))
            };
            let master = pty::Pty.restore(state).map_err(fail)?;
            let new = pty::new_index(&master).map_err(fail)?;
            Ok(e.insert((Some(master), new)))
        }
    }
}

/// The open file description of a pseudo-terminal master of the job.
fn pty_master(
    ptys: &mut HashMap<u32, (Option<std::os::fd::OwnedFd>, u32)>,
    f: &Fd,
) -> Result<std::os::fd::OwnedFd, RestoreError> {
    let state = f.kobj.as_ref().map(|(_, st)| st.as_slice()).unwrap_or(&[]);
    let entry = new_pty(ptys, state)?;
    match entry.0.take() {
        Some(master) => Ok(master),
        // A second description of the same master: another open of /dev/ptmx cannot reach
        // this terminal; the saved one is given once, and this one is a copy of it.
        None => Err(RestoreError::new(
            libc::EINVAL,
            format!(
                "fd {}: a second open description of pseudo-terminal master {} cannot be restored",
                f.rec.fd, entry.1
            ),
        )),
    }
}

/// A new open file description of the new slave of a pseudo-terminal of the job (never the
/// opener's controlling terminal).
fn pty_slave(
    ptys: &mut HashMap<u32, (Option<std::os::fd::OwnedFd>, u32)>,
    master_state: &[u8],
    f: &Fd,
) -> Result<i32, RestoreError> {
    let new = new_pty(ptys, master_state)?.1;
    let path = cpath(format!("/dev/pts/{new}").as_bytes());
    let flags = (f.rec.flags & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND))
        | libc::O_NOCTTY
        | libc::O_CLOEXEC;
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        let e = last_errno();
        return Err(RestoreError::new(
            e,
            format!(
                "cannot open the new pty slave /dev/pts/{new} for fd {} (was {}): {}",
                f.rec.fd,
                String::from_utf8_lossy(&f.path),
                std::io::Error::from_raw_os_error(e)
            ),
        ));
    }
    Ok(fd)
}

/// A new kernel object (eventfd, timerfd, …) with the state saved for `f`.
pub(super) fn kernel_object(f: &Fd) -> Result<std::os::fd::OwnedFd, RestoreError> {
    let (id, state) = f.kobj.as_ref().ok_or_else(|| {
        RestoreError::new(
            libc::EINVAL,
            format!("corrupt image: fd {} has no kernel object state", f.rec.fd),
        )
    })?;
    let kind = crate::kinds::by_id(*id).ok_or_else(|| {
        RestoreError::new(
            libc::EINVAL,
            format!(
                "incompatible image: fd {} is a kernel object of unknown kind {id}",
                f.rec.fd
            ),
        )
    })?;
    kind.restore(state)
        .map_err(|e| RestoreError::new(e.errno, format!("fd {} ({}): {e}", f.rec.fd, kind.name())))
}

/// Opens a saved file, directory or device as it was: flags, offset; a file being written is cut
/// back to its checkpoint size (as BLCR), so output is neither lost nor doubled.
fn open_file(f: &Fd) -> Result<i32, RestoreError> {
    let r = &f.rec;
    let mut flags = r.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
    if f.kind == FdKind::Directory {
        flags = libc::O_RDONLY | libc::O_DIRECTORY;
    }
    let p = cpath(&f.path);
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = last_errno();
        // A file the program was writing and removed (its own cleanup on --term): say how a
        // checkpoint keeps it.
        let hint = if e == libc::ENOENT
            && f.kind == FdKind::Regular
            && f.saved.is_none()
            && r.flags & libc::O_ACCMODE != libc::O_RDONLY
        {
            " (it was open for writing: checkpoint with --save-written to store such files, or \
             with --kill so the program cannot remove them)"
        } else {
            ""
        };
        return Err(RestoreError::new(
            e,
            format!(
                "cannot reopen {} (fd {}): {}{hint}",
                String::from_utf8_lossy(&f.path),
                r.fd,
                std::io::Error::from_raw_os_error(e)
            ),
        ));
    }
    // SAFETY: fstat/ftruncate/lseek on the descriptor just opened.
    unsafe {
        if f.kind == FdKind::Regular {
            let writable = r.flags & libc::O_ACCMODE != libc::O_RDONLY;
            let mut st: libc::stat = std::mem::zeroed();
            if writable && libc::fstat(fd, &mut st) == 0 && st.st_size > r.size {
                libc::ftruncate(fd, r.size);
            }
        }
        match f.kind {
            FdKind::Regular | FdKind::Directory => {
                libc::lseek(fd, r.offset, libc::SEEK_SET);
            }
            // The image was written through this descriptor: it stands at the image's end.
            FdKind::CheckpointFile => {
                libc::lseek(fd, 0, libc::SEEK_END);
            }
            _ => {}
        }
    }
    Ok(fd)
}
