//! One restart job: every image a restart takes (a plain image, a tree image of several
//! processes, images written back to back by a forwarded checkpoint, or the files of a `-d`
//! directory), loaded, relocated and checked as one set; and the creation of its processes.
//!
//! `cr_restart` and `cr_request_restart` are both thin callers: they pick the sources, call
//! [`load`], then either [`create`] the processes directly (fresh pids, or original pids as
//! root) or start a namespace whose init ([`namespace_init`]) creates them (original pids
//! without privileges).

use super::relocate::Pair;
use super::spawn::{Gate, Member, Options, Spawner};
use super::RestoreError;
use crate::image::reader::{Image, ImageError};
use crate::image::tree::{ShareRec, ZombieRec};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Most images `-d DIR` (or a directory descriptor given to `cr_request_restart`) restarts as
/// one job.
pub const MAX_JOB: usize = 64;

/// BLCR's classes of restart failure (each has its own `cr_restart --run-on-fail-*` hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailClass {
    /// The arguments or the image source are unusable.
    Args,
    /// A temporary condition (no memory, a pid in use).
    Temp,
    /// The environment does not suit the image (missing or changed files, permissions).
    Env,
    /// A permanent failure (corrupt or incompatible image, …).
    Perm,
}

impl FailClass {
    /// The class of a restore failure with this errno.
    pub fn of(errno: i32) -> FailClass {
        match errno {
            libc::ENOMEM | libc::EBUSY => FailClass::Temp,
            libc::EACCES
            | libc::EPERM
            | libc::ENOENT
            | libc::EEXIST
            | libc::EISDIR
            | libc::ENOTDIR
            | libc::ESTALE => FailClass::Env,
            _ => FailClass::Perm,
        }
    }
}

/// Why a job could not be loaded: one line, its errno and its failure class.
#[derive(Debug)]
pub struct JobError {
    /// The failure class.
    pub class: FailClass,
    /// errno for the exit code.
    pub errno: i32,
    /// One line naming the problem.
    pub msg: String,
}

impl JobError {
    fn new(class: FailClass, errno: i32, msg: String) -> Self {
        JobError { class, errno, msg }
    }
}

impl From<RestoreError> for JobError {
    fn from(e: RestoreError) -> Self {
        JobError::new(
            FailClass::of(e.errno),
            e.errno,
            format!("restart failed: {e}"),
        )
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// The images of one restart, in tree order, with what they share.
pub struct Job {
    /// Every process image.
    pub images: Vec<Image>,
    /// The file each image is read from.
    pub files: Vec<File>,
    /// The absolute path of each image's file (for `cr_get_restart_info`).
    pub srcs: Vec<Vec<u8>>,
    /// Open file descriptions shared between processes (from the tree manifest).
    pub shares: Vec<ShareRec>,
    /// Unreaped children that had exited (re-created as zombies).
    pub zombies: Vec<ZombieRec>,
    /// `cr_restart --reconnect`: TCP connections whose other end is not in this restart are
    /// made again to their saved peer address, within this time ([`super::reconnect`]).
    pub reconnect: Option<std::time::Duration>,
}

impl Job {
    /// Bytes of page data the restore reads (all of it with `eager`; else what is not mapped
    /// from the image), for cr_restart's progress bar.
    pub fn page_data_to_read(&self, eager: bool) -> u64 {
        self.images
            .iter()
            .zip(&self.files)
            .map(|(img, file)| {
                let (mapped, read) = super::memory::lazy_plan(img);
                if eager || super::memory::lazy_refusal(file, img).is_some() {
                    mapped + read
                } else {
                    read
                }
            })
            .sum()
    }

    /// One line per image saying with which credentials its process will run
    /// (`cr_restart --verbose`; `restore::creds`).
    pub fn credentials_plan(&self) -> Vec<String> {
        self.images.iter().map(super::creds::describe).collect()
    }

    /// One line per image saying how its page data will be restored (`cr_restart --verbose`):
    /// mapped from the image (lazy) or read in full, and why.
    pub fn page_data_plan(&self, eager: bool) -> Vec<String> {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let chains = self.images.iter().filter(|i| !i.chain.is_empty()).map(|img| {
            let pid = img.process.pid;
            let n = img.chain.len();
            match crate::image::chain::supply(img, &img.chain) {
                Ok(plan) => {
                    let used: Vec<u64> = plan
                        .iter()
                        .filter(|c| !c.is_empty())
                        .map(|c| c.iter().map(|p| p.1).sum())
                        .collect();
                    format!(
                        "process {pid}: delta image, {n} link(s) behind it checked (header, metadata, trailer); pages from {} of them ({:.1} MiB), the other {} supply none and are not opened again",
                        used.len(),
                        mib(used.iter().sum()),
                        n - used.len()
                    )
                }
                Err(e) => format!("process {pid}: {e}"),
            }
        });
        let chains: Vec<String> = chains.collect();
        self.images
            .iter()
            .zip(&self.files)
            .map(|(img, file)| {
                let pid = img.process.pid;
                let total = mib(img.header.data_len);
                if eager {
                    return format!("process {pid}: page data read in full and checked before the program runs ({total:.1} MiB, --eager)");
                }
                match super::memory::lazy_refusal(file, img) {
                    Some(why) => format!("process {pid}: page data read in full ({total:.1} MiB): {why}"),
                    None => {
                        let (mapped, read) = super::memory::lazy_plan(img);
                        let fs = super::memory::local_fs_name(file).unwrap_or("?");
                        format!(
                            "process {pid}: page data mapped from the image ({:.1} MiB, {fs}; pages are read when first touched; its checksum is not checked: --eager checks it), {:.1} MiB read (short runs, stacks, executable or moved memory); the image must not be changed in place while the program runs",
                            mib(mapped),
                            mib(read)
                        )
                    }
                }
            })
            .chain(chains)
            .collect()
    }

    /// Makes the job's standard input, output and error those of the process that restores it
    /// (`cr_run --checkpoint-dir` resuming a job: its new output files or pipes), whatever they
    /// were at checkpoint time: descriptors 0-2 of the first (root) process, unless they are a
    /// pipe within the job, and every other process's descriptor 0-2 that referred to the same
    /// file as the root's.
    pub fn inherit_stdio(&mut self) {
        use crate::image::format::FdKind;
        let Some(root) = self.images.first() else {
            return;
        };
        let all: Vec<&Image> = self.images.iter().collect();
        let stdio: Vec<(i32, u64, u64)> = root
            .fds
            .iter()
            .filter(|f| f.rec.fd <= 2)
            .filter(|f| !(f.kind == FdKind::Pipe && super::pool::pipe_is_pooled(&all, f)))
            .map(|f| (f.rec.fd, f.rec.dev, f.rec.ino))
            .collect();
        for (i, img) in self.images.iter_mut().enumerate() {
            for f in img.fds.iter_mut().filter(|f| f.rec.fd <= 2) {
                let same = stdio.iter().any(|&(fd, dev, ino)| {
                    fd == f.rec.fd && (i == 0 || (dev, ino) == (f.rec.dev, f.rec.ino))
                });
                if same {
                    f.kind = FdKind::Inherited;
                }
            }
        }
    }

    /// Descriptors leading outside the job whose number the restarter has not open (see
    /// `fds::restore`): (pid at checkpoint time, descriptor, what it gets instead).
    pub fn outside_fallbacks(&self) -> Vec<(i32, i32, &'static str)> {
        let images: Vec<&Image> = self.images.iter().collect();
        images
            .iter()
            .flat_map(|img| {
                super::fds::outside_without_restarter_fd(&images, img)
                    .into_iter()
                    .map(|(fd, what)| (img.process.pid, fd, what))
            })
            .collect()
    }

    /// The job's processes as the spawner takes them.
    pub fn members(&self) -> Vec<Member<'_>> {
        (0..self.images.len())
            .map(|i| Member {
                img: &self.images[i],
                file: &self.files[i],
                src: &self.srcs[i],
            })
            .collect()
    }
}

/// Every image file in `dir` (sorted by name); files that are not images are skipped.
pub fn sources_in_dir(dir: &Path) -> Result<Vec<(File, PathBuf)>, JobError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            JobError::new(
                FailClass::Args,
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("{}: {e}", dir.display()),
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let images: Vec<_> = paths
        .into_iter()
        .filter_map(|p| {
            let f = File::open(&p).ok()?;
            crate::image::tree::open_all(&f).ok()?;
            Some((f, p))
        })
        .collect();
    if images.is_empty() {
        return Err(JobError::new(
            FailClass::Args,
            libc::ENOENT,
            format!("{}: no checkpoint images in this directory", dir.display()),
        ));
    }
    if images.len() > MAX_JOB {
        return Err(JobError::new(
            FailClass::Args,
            libc::E2BIG,
            format!("{}: more than {MAX_JOB} images", dir.display()),
        ));
    }
    Ok(images)
}

/// Opens every image of the given files (a tree image holds several; with `-d` each file holds
/// one process of a tree, or a plain image), relocates them with `pairs` and checks that this
/// machine can run them ([`super::preflight`]).
pub fn load(sources: Vec<(File, PathBuf)>, pairs: &[Pair]) -> Result<Job, JobError> {
    load_in(sources, pairs, None)
}

/// [`load`], with the parent chains of delta images looked up in `chain_dir` when given
/// (`cr_restart --chain-dir DIR`: each link by its file name there). A source that is not a
/// regular file (a pipe, a socket) is read to its end into memory first
/// (`crate::image::stream`).
pub fn load_in(
    sources: Vec<(File, PathBuf)>,
    pairs: &[Pair],
    chain_dir: Option<&Path>,
) -> Result<Job, JobError> {
    let mut found: Vec<(usize, Image, File, Vec<u8>, bool)> = Vec::new();
    let mut shares = Vec::new();
    let mut zombies = Vec::new();
    let mut nproc = None;
    for (file, path) in sources {
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(JobError::new(
                FailClass::Args,
                libc::EISDIR,
                format!("{}: is a directory, not an image", path.display()),
            ));
        }
        let streamed = !crate::image::stream::is_seekable(&file);
        let file = if !streamed {
            file
        } else {
            let what = crate::image::stream::kind(&file);
            crate::image::stream::spool(&file)
                .map_err(|e| {
                    JobError::new(
                        FailClass::Temp,
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!(
                            "{}: cannot read the image from {what} into memory: {e}",
                            path.display()
                        ),
                    )
                })?
                .0
        };
        let src = std::path::absolute(&path)
            .unwrap_or_else(|_| path.clone())
            .into_os_string()
            .into_encoded_bytes();
        let (manifest, images) = crate::image::tree::open_all(&file).map_err(|e| {
            let class = if matches!(e, ImageError::Io(_)) {
                FailClass::Args
            } else {
                FailClass::Perm
            };
            JobError::new(class, e.errno(), format!("{}: {e}", path.display()))
        })?;
        let first = match &manifest {
            Some(m) => {
                nproc = Some(m.header.nproc as usize);
                shares.clone_from(&m.shares);
                zombies.clone_from(&m.zombies);
                m.header.first as usize
            }
            None => found.len(),
        };
        // Images of a forwarded checkpoint follow the first one back to back: it says which
        // descriptions they share.
        if let Some(img) = images.first() {
            let base = shares.iter().map(|s| s.group).max().unwrap_or(0);
            shares.extend(img.shares.iter().map(|s| ShareRec {
                proc: s.proc + first as u32,
                group: s.group + base,
                ..*s
            }));
        }
        for (k, img) in images.into_iter().enumerate() {
            let f = file
                .try_clone()
                .map_err(|e| JobError::new(FailClass::Temp, libc::EMFILE, format!("{e}")))?;
            found.push((first + k, img, f, src.clone(), streamed));
        }
    }
    found.sort_by_key(|f| f.0);
    found.dedup_by_key(|f| f.0);
    if let Some(n) = nproc {
        if found.len() != n {
            return Err(JobError::new(
                FailClass::Args,
                libc::ENOENT,
                format!(
                    "incomplete process tree: {} of its {n} process images found",
                    found.len()
                ),
            ));
        }
    }
    let mut job = Job {
        images: Vec::new(),
        files: Vec::new(),
        srcs: Vec::new(),
        shares,
        zombies,
        reconnect: None,
    };
    for (_, mut img, file, src, streamed) in found {
        if img.parent.is_some() {
            // A delta image: every link of its chain must be there, unchanged.
            let path = Path::new(std::ffi::OsStr::from_bytes(&src));
            img.chain = crate::image::chain::resolve_abs_in(&img, path, chain_dir).map_err(
                |e| {
                    let hint = if streamed && chain_dir.is_none() {
                        " (the delta image came from a stream: its chain is looked up in the current directory unless --chain-dir DIR says where)"
                    } else {
                        ""
                    };
                    JobError::new(FailClass::of(e.errno), e.errno, format!("{}{hint}", e.msg))
                },
            )?;
        }
        super::relocate::relocate(&mut img, pairs);
        super::preflight(&img)?;
        job.images.push(img);
        job.files.push(file);
        job.srcs.push(src);
    }
    Ok(job)
}

/// Builds the job's pool and creates its processes (the roots as children of the caller, or
/// with `root_flags` = `CLONE_PARENT` as children of the caller's parent), holding them at the
/// gate until every copy of the pool is closed; returns the roots' pids, eldest first.
/// `restarter` is what `cr_checkpoint()` returns in the restored callbacks. Placeholder
/// leaders of groups and sessions (see [`super::spawn`]) created with `CLONE_PARENT`, which
/// the caller's parent must reap, are added to `reap` (also on failure); the others are reaped
/// here.
pub fn create(
    members: &[Member],
    job: &Job,
    opts: Options,
    notify: i32,
    restarter: i32,
    root_flags: u64,
    reap: &mut Vec<i32>,
) -> Result<Vec<i32>, RestoreError> {
    let images: Vec<&Image> = job.images.iter().collect();
    let files: Vec<&File> = job.files.iter().collect();
    let pool = super::pool::Pool::build(&images, &files, &job.shares, job.reconnect)?;
    let gate = Gate::new().inspect_err(|_| pool.close())?;
    let mut spawner = Spawner::new(members, &pool, opts, notify, restarter);
    spawner.zombies.clone_from(&job.zombies);
    spawner.gate = Some(&gate);
    spawner.root_flags = root_flags;
    let roots = spawner.spawn_roots();
    reap.extend(spawner.placeholders.borrow().iter());
    pool.close();
    match roots {
        Ok(r) => {
            // Shut when a process failed or ended without saying: every process then leaves,
            // and the caller learns it from the job's reports (the failed process's own line,
            // or none and the report pipe's end of file), as for a failure past the gate.
            let _opened = gate.open_after(members.len());
            Ok(r.into_iter().map(|(_, pid)| pid).collect())
        }
        Err(e) => {
            gate.abandon();
            Err(e)
        }
    }
}

/// What the init of a namespace restart does once the eldest restored process has ended.
pub enum InitEnd {
    /// Writes the eldest's wait status (4 bytes, little-endian) to this pipe at once (cr_restart
    /// mimics it), then reaps until nothing is left and exits 0.
    Report(i32),
    /// Reaps until nothing is left, then ends the way the eldest did (`cr_request_restart`:
    /// the init is the caller's child, so the caller's `waitpid` sees the eldest's status).
    Mimic,
}

/// The init of the restored job's pid namespace (pid 1 there): creates the job (`on_roots` gets
/// the roots' pids: cr_restart forwards its signals to them), reaps until nothing is left (when
/// it exits, the kernel kills whatever still runs in the namespace), and ends as `end` says.
pub fn namespace_init(
    members: &[Member],
    job: &Job,
    opts: Options,
    notify: i32,
    end: InitEnd,
    on_roots: impl FnOnce(&[i32]),
) -> ! {
    use super::{write_report, Report};
    let roots = match create(members, job, opts, notify, 1, 0, &mut Vec::new()) {
        Ok(r) => {
            // The job no longer dies with our creator (set in `enter_namespace`): dropped
            // already just before the gate opened (`spawn::commit_to_job`), unless it stayed
            // shut; then the job's processes leave on their own and we reap them.
            // SAFETY: prctl on ourselves with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
            r
        }
        Err(e) => {
            write_report(notify, &Report::Failed(e.errno, e.msg));
            // SAFETY: leaving the init; the namespace dies with it.
            unsafe { libc::_exit(1) }
        }
    };
    // SAFETY: closing the report pipe: the restored processes hold their own copies.
    unsafe { libc::close(notify) };
    on_roots(&roots);
    let eldest = roots[0];
    let mut eldest_status = None;
    loop {
        let mut st = 0;
        // SAFETY: reaping children of the init.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if r == eldest && eldest_status.is_none() {
            eldest_status = Some(st);
            if let InitEnd::Report(pipe) = end {
                let _ = crate::sys::write_all(pipe, &st.to_le_bytes());
                // SAFETY: closing the status pipe.
                unsafe { libc::close(pipe) };
            }
        }
    }
    match (end, eldest_status) {
        (InitEnd::Mimic, Some(st)) => super::spawn::end_like(st),
        // SAFETY: nothing is left in the namespace.
        _ => unsafe { libc::_exit(0) },
    }
}
