//! Where an image goes and how it is committed: a file written under a temporary name and
//! renamed into place once durable (BLCR's `--atomic`, the default), with a backup of the old
//! one (`--backup`), or written in place (`--clobber`); or a stream (a FIFO, a socket, standard
//! output, a passed descriptor) written as it comes.

use super::CheckpointError;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The destination a request names (BLCR's `-c`, `-f`, `-F`, `-d`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Destination {
    /// `context.ID` in the working directory (the default).
    #[default]
    Cwd,
    /// This file (a regular file, a FIFO or a socket; "-" = standard output).
    File(PathBuf),
    /// An open descriptor.
    Fd(i32),
    /// One file per process, `context.PID`, in this directory.
    Dir(PathBuf),
}

/// How a file destination is committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Commit {
    /// Written as `.NAME.tmp`, renamed into place once complete (the default).
    #[default]
    Atomic,
    /// As `Atomic`, keeping an existing file as NAME (empty: rotating `FILE.~N~`).
    Backup(String),
    /// Written in place.
    Clobber,
    /// As `Atomic`, but an existing file is an error (EEXIST).
    NoClobber,
}

/// A destination resolved for one process: where its bytes go.
pub(super) enum Dest {
    /// A file in the file system, committed per `commit`.
    File { path: PathBuf, commit: Commit },
    /// A stream (standard output, a passed descriptor, a FIFO or socket): written as is.
    Stream { fd: i32, what: String },
}

fn err(errno: i32, msg: String) -> CheckpointError {
    CheckpointError { errno, msg }
}

/// The destination of process `pid` (`id`: the request's id, which names `context.ID`).
pub(super) fn resolve(
    dest: &Destination,
    commit: &Commit,
    id: i32,
    pid: i32,
) -> Result<Dest, CheckpointError> {
    let path = match dest {
        Destination::Fd(fd) => {
            let fd = *fd;
            // SAFETY: probing the descriptor.
            if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(err(libc::EBADF, format!("descriptor {fd} is not open")));
            }
            return Ok(Dest::Stream {
                fd,
                what: format!("descriptor {fd}"),
            });
        }
        Destination::File(f) if f.as_os_str() == "-" => {
            return Ok(Dest::Stream {
                fd: 1,
                what: "standard output".into(),
            })
        }
        Destination::File(f) => f.clone(),
        Destination::Dir(d) => {
            if !d.is_dir() {
                return Err(err(
                    libc::ENOTDIR,
                    format!("{}: not a directory", d.display()),
                ));
            }
            d.join(format!("context.{pid}"))
        }
        Destination::Cwd => PathBuf::from(format!("context.{id}")),
    };
    if let Ok(md) = std::fs::metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        let t = md.file_type();
        if t.is_fifo() || t.is_socket() || t.is_char_device() {
            // Not a regular file: open it and write the image straight into it.
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| {
                    err(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("cannot open {}: {e}", path.display()),
                    )
                })?;
            let fd = f.as_raw_fd();
            std::mem::forget(f);
            return Ok(Dest::Stream {
                fd,
                what: path.display().to_string(),
            });
        }
    }
    if *commit == Commit::NoClobber && path.exists() {
        return Err(err(
            libc::EEXIST,
            format!("{} exists (--noclobber)", path.display()),
        ));
    }
    let commit = match commit {
        Commit::NoClobber => Commit::Atomic,
        c => c.clone(),
    };
    Ok(Dest::File { path, commit })
}

/// The directory of `path` (`.` when it has none) and its file name.
fn dir_and_name(path: &Path) -> (&Path, String) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}

/// Next rotating backup name FILE.~N~ (one past the highest existing).
pub(super) fn next_backup(path: &Path) -> PathBuf {
    let (dir, base) = dir_and_name(path);
    let prefix = format!("{base}.~");
    let highest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(&prefix)?
                .strip_suffix('~')?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    dir.join(format!("{base}.~{}~", highest + 1))
}

/// Creates the temporary file of a destination (where the file system has no `O_TMPFILE`):
/// `.NAME.tmp` (`tmp`) as a new file, or, when that name is taken, `.NAME.PID.tmp`; returns the
/// file and the name it got. Never the file an earlier checkpoint left under the name (issue
/// 13): a writer of a checkpoint given up while its write waited on a destination that stopped
/// answering (`agent::offload`, a `--cow` writer) still holds it, and once the server answers
/// its late writes land in it. Opened with `O_TRUNC` (the same inode, as before) it became
/// this checkpoint's file, and those writes overwrote this image's page data, after its commit
/// too. Nor is the old name removed first: a removal (or a truncation) can wait on the server
/// as long as the old write does (a FUSE server's path lock, NFS), with no `--time` to end it;
/// the old file is its writer's agent's to remove (by device and inode) once its write is over.
/// `O_EXCL` also refuses a symlink planted under the name.
fn create_fresh(tmp: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    let open = |p: &Path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(p)
    };
    let first = match open(tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => e,
        r => return r.map(|f| (f, tmp.to_path_buf())),
    };
    let name = tmp.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(stem) = name.as_deref().and_then(|n| n.strip_suffix(".tmp")) else {
        return Err(first);
    };
    let pid = std::process::id();
    for n in 0..16 {
        let alt = tmp.with_file_name(if n == 0 {
            format!("{stem}.{pid}.tmp")
        } else {
            format!("{stem}.{pid}-{n}.tmp")
        });
        match open(&alt) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            r => return r.map(|f| (f, alt)),
        }
    }
    Err(first)
}

/// Syncs a directory (after a rename into it).
fn fsync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// One file or stream the images go to.
pub(super) struct Out {
    /// Descriptor the manifest and the images are written through.
    pub fd: i32,
    /// The file we created, for a file destination.
    pub file: Option<std::fs::File>,
    /// The file has no name yet (`O_TMPFILE`): it is linked in as `tmp` at commit, so a
    /// checkpoint that never commits (the requester killed mid-write) leaves nothing behind.
    anonymous: bool,
    /// The name written now (removed if the checkpoint fails) …
    pub tmp: Option<PathBuf>,
    /// … and the final name it is committed to, by `commit`.
    pub path: Option<PathBuf>,
    commit: Commit,
    /// For messages.
    pub what: String,
    /// `--compress`: the agents write into a pipe (`fd`), a thread compresses into the file.
    zip: Option<Compressing>,
}

/// The errno in a compressor's error message (Rust's " (os error N)" of the system call that
/// failed, which the tools strip when they print), else `EIO`: the exit code follows it.
fn errno_in(m: &str) -> i32 {
    m.rfind(" (os error ")
        .and_then(|i| m[i + 11..].split(')').next()?.parse().ok())
        .unwrap_or(libc::EIO)
}

/// Why compressing `what` failed (`m`: the compressor's reason), as the checkpoint reports it:
/// the errno of the system call that failed when `m` carries one ([`errno_in`]), and the line.
fn compress_failed(what: &str, m: &str) -> (i32, String) {
    (errno_in(m), format!("cannot compress {what}: {m}"))
}

/// Waits for the compression thread of `what`: what it did, or why it failed
/// ([`compress_failed`]).
fn join_compressor(
    thread: std::thread::JoinHandle<Result<Stats, String>>,
    what: &str,
) -> Result<Stats, (i32, String)> {
    thread
        .join()
        .unwrap_or_else(|_| Err("the compression thread failed".into()))
        .map_err(|m| compress_failed(what, &m))
}

/// The compression behind an [`Out`] (`--compress`).
struct Compressing {
    /// The thread reading the pipe and writing the compressed images.
    thread: std::thread::JoinHandle<Result<Stats, String>>,
    /// Set once every agent has replied: its image is in the pipe.
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the thread once `done` is set (`PipeSource::finish`).
    wake: std::sync::Arc<std::os::fd::OwnedFd>,
    /// A stream destination's descriptor: the compressed images are written to a temporary
    /// file first (their headers come last) and copied to it at the end.
    stream: Option<(i32, std::fs::File)>,
    /// When it started.
    start: std::time::Instant,
    /// The pieces of a split image are pulled from the process (`protocol::FLAG_ZPULL`): the
    /// process to read (set by the cut before the request goes), and the read end of the
    /// acknowledgement pipe the request passes. `None`: a stream destination, or
    /// `CR_COMPRESS_PULL=0`.
    pull: Option<(
        std::sync::Arc<std::sync::atomic::AtomicI32>,
        std::os::fd::OwnedFd,
    )>,
}

use crate::image::compress::Stats;

impl Out {
    /// Creates the file (its temporary name, unless `Clobber`) of a destination; with
    /// `compress` (a zstd level) the descriptor the agents get is a pipe to a compressing
    /// thread instead.
    pub fn open(dest: &Dest, compress: Option<i32>) -> Result<Out, CheckpointError> {
        let mut out = Self::open_raw(dest)?;
        if let Some(level) = compress {
            out.start_compressing(level)?;
        }
        Ok(out)
    }

    /// Puts a pipe between the agents and the destination, and starts the thread that
    /// compresses what comes through it.
    fn start_compressing(&mut self, level: i32) -> Result<(), CheckpointError> {
        let io = |e: std::io::Error, what: &str| {
            err(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("--compress: {what}: {e}"),
            )
        };
        let (target, stream) = match &self.file {
            Some(f) => (
                f.try_clone().map_err(|e| io(e, "cannot use the file"))?,
                None,
            ),
            None => {
                // A stream: compressed into an unnamed temporary file, then copied.
                let tmp = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .mode(0o600)
                    .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
                    .open(std::env::temp_dir())
                    .map_err(|e| io(e, "cannot create a temporary file"))?;
                let t2 = tmp.try_clone().map_err(|e| io(e, "temporary file"))?;
                (t2, Some((self.fd, tmp)))
            }
        };
        let mut p = [0i32; 2];
        // SAFETY: pipe2 fills the two descriptors.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io(std::io::Error::last_os_error(), "cannot create a pipe"));
        }
        // SAFETY: a bigger pipe means fewer wake-ups; failure (over pipe-max-size) is harmless.
        unsafe { libc::fcntl(p[0], libc::F_SETPIPE_SZ, 1 << 20) };
        // SAFETY: the read end is ours; the File owns it from here on.
        let file = unsafe { <std::fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(p[0]) };
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let wake = crate::image::compress::PipeSource::new_wake()
            .map_err(|e| io(e, "cannot create an eventfd"))?;
        let mut reader = crate::image::compress::PipeSource {
            file,
            done: done.clone(),
            wake: wake.clone(),
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // A file: the compressor may read the pieces from the process itself.
        let mut pull = None;
        let mut puller = None;
        let mut a = [0i32; 2];
        // (No pipe for it: the pieces come through the image pipe, as they did before.)
        if stream.is_none()
            && std::env::var_os("CR_COMPRESS_PULL").is_none_or(|v| v != "0")
            // SAFETY: pipe2 fills the two descriptors.
            && unsafe { libc::pipe2(a.as_mut_ptr(), libc::O_CLOEXEC) } == 0
        {
            use std::os::fd::FromRawFd;
            // SAFETY: both descriptors are new and ours.
            let (r, w) = unsafe {
                (
                    std::os::fd::OwnedFd::from_raw_fd(a[0]),
                    std::os::fd::OwnedFd::from_raw_fd(a[1]),
                )
            };
            let pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
            puller = Some(crate::image::compress::Pull {
                pid: pid.clone(),
                ack: w,
                knob: crate::image::compress::Pull::knob_from_env(),
            });
            pull = Some((pid, r));
        }
        let thread = std::thread::spawn(move || {
            crate::image::compress::compress_stream(
                &mut reader,
                &target,
                level,
                threads,
                puller.as_ref(),
            )
        });
        self.fd = p[1];
        self.zip = Some(Compressing {
            thread,
            done,
            wake,
            stream,
            start: std::time::Instant::now(),
            pull,
        });
        Ok(())
    }

    /// `--compress` to a file: the compressor reads the pieces the agent hands over from the
    /// process's memory itself (`protocol::FLAG_ZPULL`; not with `CR_COMPRESS_PULL=0`).
    pub fn pull_ok(&self) -> bool {
        self.split_ok() && self.zip.as_ref().is_some_and(|z| z.pull.is_some())
    }

    /// The process whose pieces are pulled ([`Out::pull_ok`]): `pid` as we see it.
    pub fn pull_from(&self, pid: i32) {
        if let Some((p, _)) = self.zip.as_ref().and_then(|z| z.pull.as_ref()) {
            p.store(pid, std::sync::atomic::Ordering::Release);
        }
    }

    /// `--compress`: the destination itself (the file, or the stream's descriptor), which the
    /// agent of a one-process checkpoint also gets: it writes its image there raw, as without
    /// `--compress`, when a sample of its page data shows it incompressible
    /// (`agent::image::finish`). `None` without `--compress`.
    pub fn raw_target(&self) -> Option<i32> {
        let z = self.zip.as_ref()?;
        match (&z.stream, &self.file) {
            (Some((fd, _)), _) => Some(*fd),
            (None, Some(f)) => Some(f.as_raw_fd()),
            (None, None) => None,
        }
    }

    /// `--compress` to a file: [`Out::raw_target`] is the file the compressed image is written
    /// to, so an agent may write its incompressible pieces, and those whose turn comes while
    /// the compressor is behind, there itself (`protocol::FLAG_ZSPLIT`).
    /// `CR_COMPRESS_NO_SPLIT=1` in the environment turns that off (every image that is not
    /// written raw is piped whole, as before split images: for comparing the two,
    /// bench/bench.py).
    pub fn split_ok(&self) -> bool {
        self.zip.as_ref().is_some_and(|z| z.stream.is_none())
            && self.file.is_some()
            && std::env::var_os("CR_COMPRESS_NO_SPLIT").is_none_or(|v| v != "1")
    }

    /// The descriptors a checkpoint request passes: the image's, and with `--compress` the
    /// destination itself ([`Out::raw_target`]), and the read end of the acknowledgement
    /// pipe of pulled pieces ([`Out::pull_ok`]).
    pub fn request_fds(&self) -> Vec<i32> {
        let mut v = vec![self.fd];
        v.extend(self.raw_target());
        if self.pull_ok() && v.len() == 2 {
            if let Some((_, r)) = self.zip.as_ref().and_then(|z| z.pull.as_ref()) {
                v.push(r.as_raw_fd());
            }
        }
        v
    }

    /// `--compress`: once every image is in the pipe, waits for the compression to end (and
    /// copies a stream destination's images out); returns what it did and how long it took.
    pub fn finish_compressing(&mut self) -> Result<Option<(Stats, f64)>, CheckpointError> {
        let Some(z) = self.zip.take() else {
            return Ok(None);
        };
        // SAFETY: our write end of the pipe (the agents hold theirs until they are released).
        unsafe { libc::close(self.fd) };
        crate::image::compress::PipeSource::finish(&z.done, &z.wake);
        let fail = |m: String| {
            let (errno, m) = compress_failed(&self.what, &m);
            err(errno, m)
        };
        let stats = join_compressor(z.thread, &self.what).map_err(|(errno, m)| err(errno, m))?;
        let secs = z.start.elapsed().as_secs_f64();
        if let Some((fd, tmp)) = z.stream {
            self.fd = fd;
            // The compressor may have made the file O_DIRECT (one description): read it plainly.
            let tfd = tmp.as_raw_fd();
            // SAFETY: F_GETFL/F_SETFL on our own descriptor.
            unsafe {
                let fl = libc::fcntl(tfd, libc::F_GETFL);
                if fl >= 0 {
                    libc::fcntl(tfd, libc::F_SETFL, fl & !libc::O_DIRECT);
                }
            }
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0u64;
            loop {
                let n = std::os::unix::fs::FileExt::read_at(&tmp, &mut buf, at)
                    .map_err(|e| fail(e.to_string()))?;
                if n == 0 {
                    break;
                }
                crate::sys::write_all(fd, &buf[..n])
                    .map_err(|e| fail(std::io::Error::from_raw_os_error(e.0).to_string()))?;
                at += n as u64;
            }
        } else if let Some(f) = &self.file {
            self.fd = f.as_raw_fd();
        }
        Ok(Some((stats, secs)))
    }

    fn open_raw(dest: &Dest) -> Result<Out, CheckpointError> {
        match dest {
            Dest::Stream { fd, what } => Ok(Out {
                fd: *fd,
                file: None,
                anonymous: false,
                tmp: None,
                path: None,
                commit: Commit::Clobber,
                what: what.clone(),
                zip: None,
            }),
            Dest::File { path, commit } => {
                let (dir, base) = dir_and_name(path);
                let tmp = if *commit == Commit::Clobber {
                    path.clone()
                } else {
                    dir.join(format!(".{base}.tmp"))
                };
                if *commit != Commit::Clobber {
                    // An unnamed file in the destination's directory (where the file system
                    // has them), named only at commit.
                    let anon = OpenOptions::new()
                        .write(true)
                        .mode(0o600)
                        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
                        .open(dir);
                    if let Ok(f) = anon {
                        return Ok(Out {
                            fd: f.as_raw_fd(),
                            file: Some(f),
                            anonymous: true,
                            tmp: Some(tmp),
                            path: Some(path.clone()),
                            commit: commit.clone(),
                            what: path.display().to_string(),
                            zip: None,
                        });
                    }
                }
                if *commit == Commit::Clobber
                    && std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_file())
                {
                    // A new file in its place, not the old one truncated: a program lazily
                    // restored from the old image (this very process, perhaps) still reads its
                    // memory from it (cr_restart(1), "Lazy restore").
                    let _ = std::fs::remove_file(&tmp);
                }
                let opened = if *commit == Commit::Clobber {
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(&tmp)
                        .map(|f| (f, tmp.clone()))
                } else {
                    create_fresh(&tmp)
                };
                let (f, tmp) = opened.map_err(|e| {
                    err(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("cannot create {}: {e}", tmp.display()),
                    )
                })?;
                Ok(Out {
                    fd: f.as_raw_fd(),
                    file: Some(f),
                    anonymous: false,
                    tmp: Some(tmp),
                    path: Some(path.clone()),
                    commit: commit.clone(),
                    what: path.display().to_string(),
                    zip: None,
                })
            }
        }
    }

    /// `--compress`: why the compressor stopped reading, when it did. An agent whose write into
    /// the pipe failed with `EPIPE` only knows that the reader went away; the reason (a frame
    /// it refused, the destination full) is the compressor's. Waits at most 0.5 s for the
    /// thread (a compressor that gave up has already returned: that closed the pipe). The
    /// compression is over either way: the checkpoint has failed. With the errno of the
    /// system call that failed when the message carries one (Rust's " (os error N)", which
    /// the tools strip when they print), else `EIO`.
    pub fn compressor_error(&mut self) -> Option<(i32, String)> {
        let z = self.zip.as_ref()?;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while !z.thread.is_finished() {
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let z = self.zip.take()?;
        // SAFETY: our write end of the pipe (as in `discard`, which now has nothing to close).
        unsafe { libc::close(self.fd) };
        self.fd = -1;
        join_compressor(z.thread, &self.what).err()
    }

    /// Removes the partial file (a failed checkpoint; an unnamed one goes with its descriptor).
    pub fn discard(&mut self) {
        if self.zip.take().is_some() {
            // SAFETY: our write end of the pipe; the thread ends (and is left to) on its own.
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
        if let Some(t) = self.tmp.take() {
            if !self.anonymous {
                // At most 2 s: on a destination that stopped answering (a FUSE or NFS server,
                // the agent's write of this very file stuck in it) the removal waits with it,
                // and a --time limit must still end us. Then the file stays (a thread waiting
                // in the file system ends with the process).
                let (tx, rx) = std::sync::mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name("discard".into())
                    .spawn(move || {
                        let _ = std::fs::remove_file(t);
                        let _ = tx.send(());
                    });
                if spawned.is_ok() {
                    let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
                }
            }
        }
    }

    /// The agent was told this file's temporary name (`protocol::FLAG_TMP_NAMED`) and left a
    /// write of it behind, or does not answer at all (its write is stuck): it removes
    /// `.NAME.tmp` itself once that write is over (`agent::offload`), so [`Out::discard`] does
    /// not. Ours would wait behind the stuck write (holding the directory's lock, so that no
    /// file could be created or removed there meanwhile) and hold up our exit past `--time`.
    pub fn leave_to_agent(&mut self) {
        if self.named_tmp() {
            self.tmp = None;
        }
    }

    /// Whether the agents write a file named `.NAME.tmp` beside the final path (not unnamed,
    /// not written in place, not through a compressing pipe): `protocol::FLAG_TMP_NAMED`.
    pub fn named_tmp(&self) -> bool {
        !self.anonymous
            && self.zip.is_none()
            && self.file.is_some()
            && matches!((&self.tmp, &self.path), (Some(t), Some(p)) if t != p)
    }

    /// Whether the file is written unnamed (`O_TMPFILE`), for `-v`.
    pub fn unnamed(&self) -> bool {
        self.anonymous
    }

    /// Makes the complete image durable (unless `!sync`).
    pub fn sync(&self, sync: bool) -> std::io::Result<()> {
        match &self.file {
            Some(f) if sync => f.sync_all(),
            _ => Ok(()),
        }
    }

    /// Moves an existing file aside (`Backup`) and renames the new one into place.
    pub fn rename(&mut self) -> std::io::Result<()> {
        let (Some(tmp), Some(path)) = (&self.tmp, &self.path) else {
            return Ok(());
        };
        if self.anonymous {
            // Give the unnamed file its temporary name (the rename below is the atomic step).
            let _ = std::fs::remove_file(tmp);
            let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", self.fd))
                .map_err(std::io::Error::other)?;
            let name = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes())
                .map_err(std::io::Error::other)?;
            // SAFETY: linkat with two NUL-terminated paths.
            let r = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc_path.as_ptr(),
                    libc::AT_FDCWD,
                    name.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            self.anonymous = false;
        }
        if let Commit::Backup(name) = &self.commit {
            if path.exists() {
                let backup = if name.is_empty() {
                    next_backup(path)
                } else {
                    PathBuf::from(name)
                };
                std::fs::rename(path, backup)?;
            }
        }
        if tmp != path {
            // Only our own file goes into place: not one another checkpoint to the same
            // destination put under the temporary name since (see `create_fresh`).
            if let Some(f) = &self.file {
                use std::os::unix::fs::MetadataExt;
                let ours = f.metadata()?;
                let named = std::fs::symlink_metadata(tmp)?;
                if (ours.dev(), ours.ino()) != (named.dev(), named.ino()) {
                    return Err(std::io::Error::other(format!(
                        "{} is no longer this checkpoint's file (replaced meanwhile)",
                        tmp.display()
                    )));
                }
            }
            std::fs::rename(tmp, path)?;
        }
        self.tmp = None;
        Ok(())
    }

    /// Syncs the directory of the committed file.
    pub fn sync_dir(&self, sync: bool) {
        if let (true, Some(path)) = (sync, &self.path) {
            fsync_dir(
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            );
        }
    }

    /// Writes all of `bytes` (a page multiple) from a page-aligned buffer, so that a descriptor
    /// opened with `O_DIRECT` takes it too.
    pub fn write_aligned(&self, bytes: &[u8]) -> Result<(), CheckpointError> {
        write_aligned(self.fd, bytes).map_err(|e| {
            err(
                e,
                format!(
                    "cannot write to {}: {}",
                    self.what,
                    crate::tool::strerror(e)
                ),
            )
        })
    }
}

/// Writes all of `bytes` (a page multiple) to `fd` from a page-aligned buffer.
fn write_aligned(fd: i32, bytes: &[u8]) -> Result<(), i32> {
    let layout =
        std::alloc::Layout::from_size_align(bytes.len().max(1), 4096).map_err(|_| libc::EINVAL)?;
    // SAFETY: a non-zero-sized layout; the buffer is freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return Err(libc::ENOMEM);
    }
    // SAFETY: buf has room for bytes.len() bytes.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
    let res = crate::sys::write_all(fd, {
        // SAFETY: the buffer was just filled with bytes.len() bytes.
        unsafe { core::slice::from_raw_parts(buf, bytes.len()) }
    })
    .map_err(|e| e.0);
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    res
}
