//! The restart loader behind `cr_restart` and `cr_request_restart`.
//!
//! The parent validates the image ([`preflight`]); a forked child then rebuilds the process in
//! itself ([`run`]): file descriptors (`fds`), working directory, umask, memory (`memory`),
//! resource limits; then it drops its own kernel registrations and jumps through the
//! `trampoline`, which swaps the address space and enters the restored agent.

pub mod addrmap;
pub mod chain;
pub mod creds;
pub mod fds;
pub mod ids;
pub mod job;
pub mod memory;
pub mod pool;
pub mod reconnect;
pub mod relocate;
pub mod saved;
pub mod spawn;
pub mod sysv;
pub mod trampoline;

use crate::image::format::page_align;
use crate::image::reader::Image;
use crate::protocol::{RestartInfo, RESTART_MAGIC};
use std::convert::Infallible;
use std::fs::File;
use std::os::unix::io::{FromRawFd, IntoRawFd};

/// TEST ONLY (tests/faults.rs): with `LIBCR_TEST_STOP_AT=PHASE` in its environment the process
/// restoring a job stops itself (`SIGSTOP`) on reaching `PHASE` — `loaded` (cr_restart: every
/// image read and checked by [`preflight`], no process created yet) or `gated` (the process that
/// built the job's pool: every process of the job has rebuilt its memory and waits at the gate,
/// none runs yet) — so that a test can kill it or change the files exactly there, then continue it.
/// The init of a pid namespace cannot stop itself (the kernel drops the signal): it names
/// itself `stopped-at-hook` and waits for good, to be killed with its creator; at `opened`,
/// where it no longer dies with its creator, it waits until its creator has ended and goes on.
/// `gate-dropped` is `gated` with the gate's descriptor closed before the stop, without opening
/// it (what a holder killed there looks like to the job until its death is signalled).
/// `opened` stops the holder just after it opened the gate, and (as root) holds the job's roots
/// (the holder's children) just past it, named `held-past-gate`, until their parent is gone,
/// before anything of the program runs in them; the other processes run on.
pub fn test_stop_at(phase: &str) {
    if test_phase(phase) {
        // SAFETY: getpid, prctl with a NUL-terminated name, pause and raise on ourselves.
        unsafe {
            if libc::getpid() == 1 {
                libc::prctl(libc::PR_SET_NAME, c"stopped-at-hook".as_ptr(), 0, 0, 0);
                if spawn::test_wait_creator_ended() {
                    return;
                }
                loop {
                    libc::pause();
                }
            }
            libc::raise(libc::SIGSTOP);
        }
    }
}

/// TEST ONLY: whether `LIBCR_TEST_STOP_AT` names `phase` (see [`test_stop_at`]).
pub fn test_phase(phase: &str) -> bool {
    std::env::var_os("LIBCR_TEST_STOP_AT").is_some_and(|p| p == phase)
}

/// A failed restart: an errno (for the exit code and hook classification) and one line of text.
#[derive(Debug)]
pub struct RestoreError {
    /// errno describing the failure class.
    pub errno: i32,
    /// One-line description naming the problem.
    pub msg: String,
}

impl RestoreError {
    /// Creates an error.
    pub fn new(errno: i32, msg: String) -> Self {
        RestoreError { errno, msg }
    }
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// Checks, before anything is created, that this machine can run the image.
pub fn preflight(img: &Image) -> Result<(), RestoreError> {
    let (xcr0, _) = crate::agent::image::cpu_xsave();
    if img.header.xcr0 != xcr0 {
        return Err(RestoreError::new(
            libc::EINVAL,
            format!(
                "incompatible image: CPU vector state differs (image XCR0 {:#x}, this CPU {:#x})",
                img.header.xcr0, xcr0
            ),
        ));
    }
    memory::check_files(img)?;
    let cwd = String::from_utf8_lossy(&img.cwd).into_owned();
    if !std::path::Path::new(&cwd).is_dir() {
        return Err(RestoreError::new(
            libc::ENOENT,
            format!("working directory {cwd} no longer exists"),
        ));
    }
    Ok(())
}

fn sys_err(what: &str) -> RestoreError {
    let e = std::io::Error::last_os_error();
    RestoreError::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

fn mmap_rw(len: usize) -> Result<u64, RestoreError> {
    // SAFETY: fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(sys_err("mmap"));
    }
    Ok(p as u64)
}

/// Drops the kernel registrations that point into this (cr_restart) thread's memory.
fn drop_thread_registrations() {
    let fs = crate::sys::get_fs_base();
    let (off, size) = crate::agent::glibc_rseq();
    // SAFETY: unregistering this thread's rseq area and dropping the other registrations; the
    // memory they point into is about to be replaced.
    unsafe {
        if size != 0 {
            let area = (fs as isize + off) as usize;
            libc::syscall(
                libc::SYS_rseq,
                area,
                size.max(32),
                1,
                crate::agent::RSEQ_SIG,
            );
        }
        libc::syscall(libc::SYS_set_robust_list, 0usize, 24usize);
        libc::syscall(libc::SYS_set_tid_address, 0usize);
        let ss = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        libc::sigaltstack(&ss, std::ptr::null_mut());
    }
}

/// The program's executable (the file mapped at its text), opened for the restored agent to make
/// it `/proc/self/exe` again.
fn open_executable(img: &Image) -> Option<i32> {
    let text = img.process.mm.start_code;
    let r = img.regions.iter().find(|r| {
        r.rec.start <= text
            && text < r.rec.end
            && r.path.first() == Some(&b'/')
            && matches!(
                r.kind,
                crate::image::format::RegionKind::FilePrivate
                    | crate::image::format::RegionKind::PrivateContent
            )
    })?;
    let path = r.path.strip_suffix(b" (deleted)").unwrap_or(&r.path);
    let c = std::ffi::CString::new(path.to_vec()).ok()?;
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    (fd >= 0).then_some(fd)
}

fn apply_rlimits(img: &Image) {
    for (r, lim) in img.process.rlimits.iter().enumerate() {
        let mut want = libc::rlimit {
            rlim_cur: lim[0],
            rlim_max: lim[1],
        };
        // SAFETY: setrlimit/getrlimit with valid structs.
        unsafe {
            if libc::setrlimit(r as _, &want) != 0 {
                let mut now = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(r as _, &mut now);
                want.rlim_max = now.rlim_max;
                want.rlim_cur = want.rlim_cur.min(now.rlim_max);
                libc::setrlimit(r as _, &want);
            }
        }
    }
}

/// One message on the job's report pipe (see [`write_report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `P`: a process of the job was created (pid as its creator sees it).
    Created(i32),
    /// `R`: a restored process runs again (its pid).
    Running(i32),
    /// `E`: restoring a process failed (errno, one line).
    Failed(i32, String),
    /// `T`: the process the requester of `cr_request_restart` knows the job by (its pid as the
    /// requester sees it): the eldest root, its child; or the init of the job's private pid
    /// namespace, its child too, which ends as the eldest does.
    Top(i32),
}

/// Writes one report in a single `write` (atomic on a pipe): `P`/`R` + pid, or `E` + errno +
/// length + text. Every process of a job writes to the same pipe.
pub fn write_report(fd: i32, r: &Report) {
    let mut b = Vec::with_capacity(64);
    match r {
        Report::Created(pid) => {
            b.push(b'P');
            b.extend_from_slice(&pid.to_le_bytes());
        }
        Report::Running(pid) => {
            b.push(b'R');
            b.extend_from_slice(&pid.to_le_bytes());
        }
        Report::Top(pid) => {
            b.push(b'T');
            b.extend_from_slice(&pid.to_le_bytes());
        }
        Report::Failed(e, msg) => {
            let m = &msg.as_bytes()[..msg.len().min(1000)];
            b.push(b'E');
            b.extend_from_slice(&e.to_le_bytes());
            b.extend_from_slice(&(m.len() as u16).to_le_bytes());
            b.extend_from_slice(m);
        }
    }
    let _ = crate::sys::write_all(fd, &b);
}

/// Decodes the reports read so far; returns them and the number of bytes consumed.
pub fn parse_reports(bytes: &[u8]) -> (Vec<Report>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let int = |o: usize| i32::from_le_bytes([rest[o], rest[o + 1], rest[o + 2], rest[o + 3]]);
        match rest[0] {
            b'P' | b'R' | b'T' if rest.len() >= 5 => {
                let pid = int(1);
                out.push(match rest[0] {
                    b'P' => Report::Created(pid),
                    b'R' => Report::Running(pid),
                    _ => Report::Top(pid),
                });
                at += 5;
            }
            b'E' if rest.len() >= 7 => {
                let len = u16::from_le_bytes([rest[5], rest[6]]) as usize;
                if rest.len() < 7 + len {
                    break;
                }
                out.push(Report::Failed(
                    int(1),
                    String::from_utf8_lossy(&rest[7..7 + len]).into_owned(),
                ));
                at += 7 + len;
            }
            b'P' | b'R' | b'T' | b'E' => break,
            _ => {
                out.push(Report::Failed(libc::EIO, "garbled restart report".into()));
                at = bytes.len();
            }
        }
    }
    (out, at)
}

/// What a restored process is told by its restarter (through `RestartInfo`).
#[derive(Clone, Copy, Debug)]
pub struct Handover<'a> {
    /// The job's report pipe (write end).
    pub notify_fd: i32,
    /// What `cr_checkpoint()` returns in the restored callbacks (the restarter's pid).
    pub restarter: i32,
    /// The image's path, for `cr_get_restart_info`.
    pub src: &'a [u8],
    /// Signal the process sends itself before its threads run again (0: none).
    pub early_signal: i32,
    /// The job's gate (`spawn::Gate`): (write end of its "closed" pipe, our end of the gate),
    /// at numbers above every saved descriptor; `None` when this process is the whole job.
    pub gate: Option<(i32, i32)>,
    /// Read all page data before the program runs (`cr_restart --eager`) instead of mapping it
    /// from the image where that is safe (see `memory`).
    pub eager: bool,
    /// Advise memory that had transparent huge pages before it is read, not after
    /// (`cr_restart --huge-pages`).
    pub huge_pages: bool,
}

/// Rebuilds process `idx` of a job from `img` in the calling (freshly forked, single-threaded)
/// process and jumps into it. Descriptions and shared memory come from the job's `pool`. Returns
/// only on failure, before anything of the program has run, after reporting it on the job's
/// report pipe (wherever that descriptor has been moved by then); on success the restored agent
/// reports [`Report::Running`].
pub fn run(
    img: &Image,
    idx: usize,
    file: File,
    pool: &pool::Pool,
    h: &Handover,
) -> Result<Infallible, RestoreError> {
    let mut notify = h.notify_fd;
    let res = rebuild(img, idx, file, pool, &mut notify, h);
    if let Err(e) = &res {
        write_report(notify, &Report::Failed(e.errno, e.msg.clone()));
        if let Some((closed, _)) = h.gate {
            // Our pool copies go with us: do not keep the others waiting, and keep the gate
            // shut (past the gate, the holder no longer reads this: nothing is written).
            let _ = crate::sys::write_all(closed, spawn::CLOSED_FAILED);
        }
    }
    res
}

fn rebuild(
    img: &Image,
    idx: usize,
    file: File,
    pool: &pool::Pool,
    notify: &mut i32,
    h: &Handover,
) -> Result<Infallible, RestoreError> {
    let (restarter, src, early_signal) = (h.restarter, h.src, h.early_signal);
    crate::sys::sigprocmask_raw(libc::SIG_SETMASK, Some(!0));
    let img_fd = fds::move_high(file.into_raw_fd(), img)?;
    *notify = fds::move_high(*notify, img)?;
    let notify_fd = *notify;

    // SAFETY: img_fd is the image descriptor we own.
    let file = unsafe { File::from_raw_fd(img_fd) };
    // The image's groups, gids and file-system ids before anything is opened or mapped (the
    // uids follow in the trampoline: `creds`).
    let creds = creds::plan_for(img);
    if let Some(p) = &creds {
        creds::apply_early(p)?;
    }
    let exe_fd = open_executable(img)
        .and_then(|fd| fds::move_high(fd, img).ok())
        .unwrap_or(-1);
    let (gate_closed, gate_open) = h.gate.unwrap_or((-1, -1));
    // The working directory first: kernel objects look for their files from it (inotify).
    let cwd = std::ffi::CString::new(img.cwd.clone()).unwrap_or_default();
    // SAFETY: chdir with a valid C string.
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return Err(sys_err(&format!(
            "cannot enter {}",
            String::from_utf8_lossy(&img.cwd)
        )));
    }
    fds::restore(
        img,
        idx,
        pool,
        &[img_fd, notify_fd, exe_fd, gate_closed, gate_open],
    )?;
    sysv::send_messages(img, &pool.msgq)?;
    sysv::own_semaphores(img, &pool.sems);
    // SAFETY: umask takes no pointers.
    unsafe { libc::umask(img.process.umask) };
    let lazy = !h.eager && memory::lazy_refusal(&file, img).is_none();
    let mut filled = memory::Filled::default();
    let mut layout = memory::build(img, &file, &pool.shm, lazy, h.huge_pages, &mut filled)?;
    drop(file);
    pool.close();
    // Trampoline code.
    let code = trampoline::code();
    let code_len = page_align(code.len() as u64) as usize;
    let code_addr = mmap_rw(code_len)?;
    // SAFETY: copying the code into the fresh mapping, then making it executable.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), code_addr as *mut u8, code.len());
        if libc::mprotect(
            code_addr as *mut _,
            code_len,
            libc::PROT_READ | libc::PROT_EXEC,
        ) != 0
        {
            return Err(sys_err("mprotect"));
        }
    }
    // Argument block: header, unmap pairs, moves, prctl map, auxv, info, then a stack.
    let max_unmaps = memory::current_maps().len() + 64;
    let stack_len = 64 * 1024;
    let hdr_len = std::mem::size_of::<trampoline::TrampArgs>();
    let data_len = hdr_len
        + 16 * max_unmaps
        + 24 * layout.moves.len()
        + 128
        + img.auxv.len()
        + std::mem::size_of::<RestartInfo>()
        + 64
        + src.len()
        + 8
        + addrmap::encoded().len()
        + std::mem::size_of::<creds::TrampCreds>()
        + 8;
    let block_len = page_align(data_len as u64) as usize + stack_len;
    let block = mmap_rw(block_len)?;
    layout.keep.push((code_addr, code_addr + code_len as u64));
    layout.keep.push((block, block + block_len as u64));

    apply_rlimits(img);
    let unmaps = memory::unmap_list(&layout.keep);
    if unmaps.len() > max_unmaps {
        return Err(RestoreError::new(
            libc::ENOMEM,
            "too many mappings to remove".into(),
        ));
    }
    let mut at = block + hdr_len as u64;
    let mut put = |bytes: &[u8]| -> u64 {
        let p = at;
        // SAFETY: the block was sized for everything written here.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p as *mut u8, bytes.len()) };
        at = (at + bytes.len() as u64 + 7) & !7;
        p
    };
    let unmap_words: Vec<u64> = unmaps.iter().flat_map(|&(a, l)| [a, l]).collect();
    let unmap_ptr = put(bytemuck::cast_slice(&unmap_words));
    let move_words: Vec<u64> = layout.moves.iter().flatten().copied().collect();
    let moves_ptr = put(bytemuck::cast_slice(&move_words));
    let auxv_ptr = put(&img.auxv);
    let m = &img.process.mm;
    let map = trampoline::PrctlMmMap {
        fields: [
            m.start_code,
            m.end_code,
            m.start_data,
            m.end_data,
            m.start_brk,
            m.brk,
            m.start_stack,
            m.arg_start,
            m.arg_end,
            m.env_start,
            m.env_end,
        ],
        auxv: auxv_ptr,
        auxv_size: img.auxv.len() as u32,
        // /proc/self/exe becomes the program's again where we may (CAP_CHECKPOINT_RESTORE in
        // our user namespace: cr_restart's private namespace, or a privileged root).
        exe_fd: if exe_fd >= 0 { exe_fd as u32 } else { u32::MAX },
    };
    // SAFETY: PrctlMmMap is plain data.
    let map_bytes = unsafe {
        std::slice::from_raw_parts(
            &map as *const _ as *const u8,
            std::mem::size_of::<trampoline::PrctlMmMap>(),
        )
    };
    let map_ptr = put(map_bytes);
    let info = RestartInfo {
        magic: RESTART_MAGIC,
        restarter_pid: restarter as i64,
        notify_fd: notify_fd as i64,
        block_addr: block as i64,
        block_len: block_len as i64,
        code_addr: code_addr as i64,
        code_len: code_len as i64,
        mm_result: 0,
        src_addr: 0,
        src_len: 0,
        early_signal: early_signal as i64,
        exe_fd: exe_fd as i64,
        image_dev: filled.image_id.0 as i64,
        image_ino: filled.image_id.1 as i64,
        chain_ids: {
            let mut ids = [0i64; 2 * crate::protocol::RESTART_CHAIN_IDS];
            for (k, &(dev, ino)) in filled.chain_ids.iter().enumerate() {
                ids[2 * k] = dev as i64;
                ids[2 * k + 1] = ino as i64;
            }
            ids
        },
        image_hash: 0,
        image_size: 0,
        image_depth: 0,
        addr_map_addr: 0,
        addr_map_len: 0,
    };
    let mut info = info;
    if filled.image_id != (0, 0) || filled.chain_ids[0] != (0, 0) {
        // Lazily restored: memory still maps the image, which its next delta may name.
        // (A compressed image is named by the raw image it was made from.)
        info.image_hash = img.identity().0 as i64;
        info.image_size = img.identity().1 as i64;
        info.image_depth = img.parent.as_ref().map_or(0, |p| p.0.depth) as i64;
    }
    let info_ptr = put(bytemuck::bytes_of(&info));
    let src_ptr = put(src);
    let addr_map = addrmap::encoded();
    if !addr_map.is_empty() {
        let addr_map_ptr = put(&addr_map);
        // SAFETY: info_ptr points at the RestartInfo just written into the block.
        unsafe {
            let i = info_ptr as *mut RestartInfo;
            (*i).addr_map_addr = addr_map_ptr as i64;
            (*i).addr_map_len = addr_map.len() as i64;
        }
    }
    // SAFETY: info_ptr points at the RestartInfo just written into the block.
    unsafe {
        let i = info_ptr as *mut RestartInfo;
        (*i).src_addr = src_ptr as i64;
        (*i).src_len = src.len() as i64;
    }

    let creds_ptr = match &creds {
        Some(p) => put(bytemuck::bytes_of(&creds::TrampCreds::of(p))),
        None => 0,
    };
    let args = trampoline::TrampArgs {
        n_unmap: unmaps.len() as u64,
        unmap: unmap_ptr,
        n_moves: layout.moves.len() as u64,
        moves: moves_ptr,
        mm_map: map_ptr,
        mm_map_size: map_bytes.len() as u64,
        fs_base: img.process.leader_fs,
        stack_top: img.process.restore_stack_top,
        entry: img.process.entry,
        entry_arg: info_ptr,
        result_ptr: info_ptr + 56,
        creds: creds_ptr,
    };
    // SAFETY: writing the header at the start of the block.
    unsafe { std::ptr::write(block as *mut trampoline::TrampArgs, args) };
    if let Some((closed, open)) = h.gate {
        // Our copies of the job's pipes and files are gone: say so, then wait until every other
        // process (and the restarter) has closed its own, so no pipe end stays open behind the
        // program's back once it runs (a reader would miss its EOF). Everything above that can
        // fail (the trampoline's mappings, its argument block) is done: past the gate the
        // restarter may be gone, and a process failing here would leave the others running
        // without it. What may still fail is the kernel's part (the trampoline's `mremap`,
        // exit 125; a thread `clone` in the restored agent, exit 127): docs/RELIABILITY.md.
        // The restart's parent-death signal goes here: past this point the gate decides.
        spawn::Gate::ready(closed);
        if !spawn::Gate::wait(open) {
            // The restarter died (or gave up, or another process failed) before opening the
            // gate: nothing of the program may run. Not a failure to report: nobody reads the
            // report, or the failed process has reported its own.
            // SAFETY: leaving this half-built process without running atexit handlers.
            unsafe { libc::_exit(1) }
        }
        // TEST ONLY (`opened`): the job's roots hold themselves just past the gate, named
        // `held-past-gate`, until their parent is gone, while the holder stops with the gate
        // open: a test kills the restarter in that instant (the other processes run on, as
        // they may). Not stopped: a stopped process whose group is orphaned gets SIGHUP.
        // Not in a namespace (restarter 1, the init): the init outlives the restarter there.
        // SAFETY: getppid has no preconditions.
        if test_phase("opened") && h.restarter != 1 && unsafe { libc::getppid() } == h.restarter {
            // SAFETY: prctl with a NUL-terminated name; getppid and nanosleep on ourselves.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, c"held-past-gate".as_ptr(), 0, 0, 0);
                let ms = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 1_000_000,
                };
                while libc::getppid() == h.restarter {
                    libc::nanosleep(&ms, std::ptr::null_mut());
                }
            }
        }
    }

    if creds_ptr != 0 {
        // The parent-death signal as it is now (the gate may have cleared it), for the
        // trampoline to set again after the ids change.
        // SAFETY: creds_ptr is the TrampCreds written into the block above.
        unsafe { creds::TrampCreds::note_pdeathsig(creds_ptr as *mut creds::TrampCreds) };
    }
    drop_thread_registrations();
    let stack_top = (block + block_len as u64 - 64) & !15;
    // SAFETY: the block holds everything the trampoline reads; this is the point of no return.
    unsafe { trampoline::jump(code_addr as usize, block as usize, stack_top as usize) }
}
