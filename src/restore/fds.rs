//! Re-opens the saved file descriptors at their numbers (in the restart child, before memory is
//! touched). The capture side is `agent::fds`.

use super::RestoreError;
use crate::image::format::FdKind;
use crate::image::reader::Image;
use std::sync::Mutex;

/// The descriptors the restarter was given by whoever started it (see [`note_restarter_fds`]).
static RESTARTER_FDS: Mutex<Option<Vec<i32>>> = Mutex::new(None);

/// Records the descriptors open now without close-on-exec: those the restarter was given by
/// whoever started it (what an exec'd `cr_restart` would have). Restored descriptors that lead
/// outside the job take the restarter's descriptor of the same number. Call before opening
/// anything (first thing in `cr_restart`, at the start of `cr_request_restart`). Without it,
/// only the open ones of 0-2 count.
pub fn note_restarter_fds() {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // The directory's own descriptor is closed again by now: F_GETFD fails on it.
    // SAFETY: probing descriptor numbers.
    fds.retain(|&fd| {
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        fl >= 0 && fl & libc::FD_CLOEXEC == 0
    });
    fds.sort_unstable();
    *RESTARTER_FDS.lock().unwrap_or_else(|e| e.into_inner()) = Some(fds);
}

/// Whether the restarter was given descriptor `fd` (and it is still open): a restored
/// descriptor of that number that leads outside the job takes it.
pub fn restarter_has(fd: i32) -> bool {
    let given = match &*RESTARTER_FDS.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(list) => list.contains(&fd),
        None => (0..=2).contains(&fd),
    };
    // SAFETY: probing a descriptor number.
    given && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// The descriptors of `img` (one process of the job `images`) that lead outside the job (pipe
/// ends whose other end is no process of the job, inherited terminals and sockets on 0-2) and
/// whose number the restarter does not have open, each with what it gets instead: for the
/// restarter to say so before it starts the job.
pub fn outside_without_restarter_fd(images: &[&Image], img: &Image) -> Vec<(i32, &'static str)> {
    img.fds
        .iter()
        .filter(|f| {
            let pooled = match f.kind {
                FdKind::Pipe => super::pool::pipe_is_pooled(images, f),
                FdKind::Kernel => !super::pool::socket_leads_outside(images, f),
                // Only a terminal the restarter has is not pooled (else: by its path).
                FdKind::CharDevice => true,
                _ => false,
            };
            leads_outside(f.kind, pooled) && !restarter_has(f.rec.fd)
        })
        .map(|f| (f.rec.fd, fallback_name(f)))
        .collect()
}

/// Gives `fd`'s open file description its async-I/O signal and owner back: the process itself
/// (or its group) when it owned it, whatever its pid is now; any other owner by its id. An
/// owner that cannot be set (a thread not re-created yet, a process that is gone) is said on
/// the program's standard error.
fn set_owner(img: &Image, fd: i32, o: &crate::image::format::FdOwnerRec) {
    use crate::sys::fcntl_cmd::*;
    if o.signal != 0 {
        // SAFETY: fcntl on a descriptor of this process.
        unsafe { libc::fcntl(fd, F_SETSIG, o.signal) };
    }
    if o.owner_pid == 0 {
        return;
    }
    let me = &img.process;
    // SAFETY: getpid/getpgrp have no preconditions.
    let pid = match o.owner_type {
        F_OWNER_PGRP if o.owner_pid == me.pgid => unsafe { libc::getpgrp() },
        F_OWNER_PID | F_OWNER_TID if o.owner_pid == me.pid => unsafe { libc::getpid() },
        _ => o.owner_pid,
    };
    let ex = [o.owner_type, pid];
    // SAFETY: F_SETOWN_EX reads a struct f_owner_ex (two ints) from a live array.
    if unsafe { libc::fcntl(fd, F_SETOWN_EX, ex.as_ptr()) } != 0 {
        eprintln!(
            "cr_restart: warning: fd {fd}: cannot give its async-I/O signals to {} {} again: {}",
            match o.owner_type {
                F_OWNER_PGRP => "process group",
                F_OWNER_TID => "thread",
                _ => "process",
            },
            o.owner_pid,
            std::io::Error::last_os_error()
        );
    }
}

fn leads_outside(kind: FdKind, pooled: bool) -> bool {
    // (An inherited pseudo-terminal slave whose master is in the job is pooled; a kernel object
    // or a device is not pooled only when it is a socket connected outside the job, or a
    // terminal, that the restarter has a descriptor for, see `pool::socket_leads_outside` and
    // `pool::terminal_leads_outside`.)
    matches!(
        kind,
        FdKind::Inherited | FdKind::Pipe | FdKind::Kernel | FdKind::CharDevice
    ) && !pooled
}

fn fallback_name(f: &crate::image::reader::Fd) -> &'static str {
    if f.rec.fd <= 2 {
        "/dev/null"
    } else if f.rec.flags & libc::O_ACCMODE == libc::O_RDONLY {
        "cr_restart's standard input"
    } else {
        "cr_restart's standard output"
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Moves `fd` to a number above every saved descriptor; returns the new number.
pub fn move_high(fd: i32, img: &Image) -> Result<i32, RestoreError> {
    let max = img.fds.iter().map(|f| f.rec.fd).max().unwrap_or(2).max(2);
    // SAFETY: fcntl on a descriptor we own.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, max + 10) };
    if n < 0 {
        return Err(RestoreError::new(
            last_errno(),
            "cannot move a descriptor out of the way".into(),
        ));
    }
    // SAFETY: closing the old number of a descriptor we own.
    unsafe { libc::close(fd) };
    Ok(n)
}

/// Puts every saved descriptor of process `idx` at its number: shared descriptions from the
/// `pool`; those leading out of the job (pipe ends and connected sockets whose other end is not in
/// the job, stdio terminals and sockets) are the restarter's own of the same number (see
/// [`note_restarter_fds`]), else its stdin/stdout (pipes above 2) or `/dev/null`. Closes all other descriptors but `keep` and the pool's (closed after the memory is
/// mapped: shared memory comes from the pool too).
pub fn restore(
    img: &Image,
    idx: usize,
    pool: &super::pool::Pool,
    keep: &[i32],
) -> Result<(), RestoreError> {
    let wanted: Vec<i32> = img
        .fds
        .iter()
        .filter(|f| f.kind != FdKind::Unsupported)
        .map(|f| f.rec.fd)
        .collect();
    // What the restarter's own descriptor `fd` stands in for (BLCR's rule: a descriptor leading
    // outside the job takes the restarter's of the same number): kept as it is.
    let from_restarter = |fd: i32| {
        restarter_has(fd)
            && img
                .fds
                .iter()
                .any(|f| f.rec.fd == fd && leads_outside(f.kind, pool.fds.contains_key(&(idx, fd))))
    };
    // Where a pipe end leading outside goes when the restarter has no descriptor of its number:
    // the restarter's stdin (read ends) or stdout (write ends), copied before anything is placed
    // over them.
    let fallback_needed = |read: bool| {
        img.fds.iter().any(|f| {
            f.rec.fd > 2
                && f.kind == FdKind::Pipe
                && !pool.fds.contains_key(&(idx, f.rec.fd))
                && !restarter_has(f.rec.fd)
                && (f.rec.flags & libc::O_ACCMODE == libc::O_RDONLY) == read
        })
    };
    let high = wanted.iter().copied().max().unwrap_or(2).max(2) + 10;
    let copy_of = |src: i32, needed: bool| {
        if needed {
            // SAFETY: duplicating the restarter's descriptor above every saved number.
            unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, high) }
        } else {
            -1
        }
    };
    let fallback = [
        copy_of(0, fallback_needed(true)),
        copy_of(1, fallback_needed(false)),
    ];
    let res = place(img, idx, pool, keep, &wanted, &from_restarter, fallback);
    for fd in fallback.into_iter().filter(|&fd| fd >= 0) {
        // SAFETY: closing our own copies.
        unsafe { libc::close(fd) };
    }
    res
}

fn place(
    img: &Image,
    idx: usize,
    pool: &super::pool::Pool,
    keep: &[i32],
    wanted: &[i32],
    from_restarter: &dyn Fn(i32) -> bool,
    fallback: [i32; 2],
) -> Result<(), RestoreError> {
    // Close what the program did not have (the restarter's other descriptors, and the stdio
    // the program had closed).
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let open: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for fd in open {
            let stays = keep.contains(&fd)
                || fallback.contains(&fd)
                || pool.all.contains(&fd)
                || from_restarter(fd)
                || (fd <= 2 && wanted.contains(&fd) && pool.fds.contains_key(&(idx, fd)));
            if !stays {
                // SAFETY: closing descriptors of this (child) process.
                unsafe { libc::close(fd) };
            }
        }
    }
    for f in &img.fds {
        let r = &f.rec;
        let pooled = pool.fds.get(&(idx, r.fd)).copied();
        let newfd = match (f.kind, pooled) {
            (FdKind::Unsupported, _) => None,
            (_, Some(src)) => {
                // SAFETY: duplicating a pool descriptor onto the saved number.
                if unsafe { libc::dup2(src, r.fd) } < 0 {
                    return Err(RestoreError::new(
                        last_errno(),
                        format!("cannot place fd {}", r.fd),
                    ));
                }
                None
            }
            // Leads outside: the restarter's own descriptor of that number, left where it is.
            _ if from_restarter(r.fd) => None,
            (FdKind::Pipe, None) if r.fd > 2 => {
                // The restarter has no such descriptor: its stdin or stdout (/dev/null if that
                // is closed too).
                let src = fallback[usize::from(r.flags & libc::O_ACCMODE != libc::O_RDONLY)];
                Some(if src >= 0 {
                    // SAFETY: duplicating our copy of the restarter's stdin/stdout.
                    unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 0) }
                } else {
                    // SAFETY: open with a literal path.
                    unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }
                })
            }
            _ => {
                // Inherited stdio (terminal, outside pipe, socket) the restarter does not have.
                // SAFETY: open with a literal path.
                Some(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
            }
        };
        if let Some(fd) = newfd {
            if fd < 0 {
                return Err(RestoreError::new(
                    last_errno(),
                    format!("cannot recreate fd {}", r.fd),
                ));
            }
            if fd != r.fd {
                // SAFETY: dup2 onto the saved number, then drop the temporary.
                unsafe {
                    if libc::dup2(fd, r.fd) < 0 {
                        return Err(RestoreError::new(
                            last_errno(),
                            format!("cannot place fd {}", r.fd),
                        ));
                    }
                    libc::close(fd);
                }
            }
        }
        if f.kind != FdKind::Unsupported {
            // SAFETY: setting the close-on-exec flag as saved.
            unsafe { libc::fcntl(r.fd, libc::F_SETFD, r.fd_flags & libc::FD_CLOEXEC) };
        }
        // The job's own descriptions only: one leading outside is the restarter's, left alone.
        if pooled.is_some() {
            if let Some(o) = &f.owner {
                set_owner(img, r.fd, o);
            }
            if r.flags & libc::O_ASYNC != 0 {
                // Turned on here, at its number (the signals name it in si_fd); once per open
                // file description (descriptors sharing it see it on already).
                // SAFETY: F_GETFL/F_SETFL on a descriptor of this process.
                unsafe {
                    let fl = libc::fcntl(r.fd, libc::F_GETFL);
                    if fl >= 0 && fl & libc::O_ASYNC == 0 {
                        libc::fcntl(r.fd, libc::F_SETFL, fl | libc::O_ASYNC);
                    }
                }
            }
        }
    }
    kernel_objects_settle(img)
}

/// Every descriptor is in place: kernel objects that refer to others (an epoll's targets) are
/// completed, once per open file description of the process.
fn kernel_objects_settle(img: &Image) -> Result<(), RestoreError> {
    for f in img.fds.iter().filter(|f| f.kind == FdKind::Kernel) {
        let Some((id, state)) = &f.kobj else { continue };
        let Some(kind) = crate::kinds::by_id(*id) else {
            continue;
        };
        if f.rec.dup_of != f.rec.fd {
            continue;
        }
        let warnings = kind.post_restore(f.rec.fd, state).map_err(|e| {
            RestoreError::new(e.errno, format!("fd {} ({}): {e}", f.rec.fd, kind.name()))
        })?;
        for w in warnings {
            eprintln!("cr_restart: warning: {w}");
        }
    }
    Ok(())
}
