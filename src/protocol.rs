//! The control-socket protocol between a requester (`cr_checkpoint`) and the agent.
//!
//! Each process with the agent listens on the abstract unix socket `@libcr-ctl.<ns>.<pid>`
//! (`SOCK_SEQPACKET`), bound when a requester first wakes it ([`wake`], [`connect`]: `SIGURG`
//! with [`WAKE_MAGIC`]; docs/ARCHITECTURE.md, "Start-up"). Both ends check the peer's credentials: the agent accepts root, and its
//! owner only for a process the owner could `ptrace` (not set-uid/set-gid, dumpable; see
//! `agent::control`), answering anyone else `EPERM` with the reason;
//! the requester checks that the listener's pid is the target. The exchange is:
//!
//! 1. requester → agent: [`Request`] `CHECKPOINT`, with the open image file as `SCM_RIGHTS`;
//! 2. agent quiesces, writes and syncs the image, replies [`Reply`] (status 0 or an errno);
//! 3. requester renames the file into place, sends the post-checkpoint signal, then sends
//!    [`Request`] `RELEASE`; the agent lets the program's threads go (also if the requester
//!    disappears or does not answer in time).

use bytemuck::{Pod, Zeroable};

/// Protocol magic ("LCRP").
pub const MAGIC: u32 = 0x5052_434c;
/// Protocol version.
pub const VERSION: u32 = 1;
/// Request: take a checkpoint into the passed fd.
pub const REQ_CHECKPOINT: u32 = 1;
/// Request: the image is committed; resume the program.
pub const REQ_RELEASE: u32 = 2;
/// Request (after [`STATUS_QUIESCED`] of a [`FLAG_BARRIER`] request): write the image now.
pub const REQ_WRITE: u32 = 3;
/// Request (after [`STATUS_SIZED`] of a [`FLAG_PLACED`] write): the image's offset in the file,
/// in `parent_size` ([`Request::place`]); the agent then writes it there.
pub const REQ_PLACE: u32 = 4;
/// Request (after every member of a copy-on-write cut answered [`STATUS_FORKED`]): every
/// member's writer exists, the program may run on while its writer writes. Sent only to an
/// agent whose [`STATUS_QUIESCED`] carried [`CAP_COW_PLACED`].
pub const REQ_RUN: u32 = 5;

/// Request flag: store the executable's mappings by content (`--save-exe`).
pub const FLAG_SAVE_EXE: u32 = 0x10;
/// Request flag: store private file mappings by content (`--save-private`).
pub const FLAG_SAVE_PRIVATE: u32 = 0x20;
/// Request flag: store shared file mappings by content (`--save-shared`).
pub const FLAG_SAVE_SHARED: u32 = 0x40;
/// Request flag: all of the above (`--save-all`).
pub const FLAG_SAVE_ALL: u32 = FLAG_SAVE_EXE | FLAG_SAVE_PRIVATE | FLAG_SAVE_SHARED;
/// Request flag: files under temporary directories are not stored by content
/// (`--save-tmp-limit none`).
pub const FLAG_SAVE_TMP_NONE: u32 = 0x80;
/// Every flag a forwarded checkpoint passes on to the other processes of a tree (with
/// [`Request::files`]).
pub const FLAGS_SAVE: u32 = FLAG_SAVE_ALL | FLAG_SAVE_TMP_NONE;

/// The bytes of files under temporary directories a request lets one process save (`None`:
/// none, `FLAG_SAVE_TMP_NONE`; else `files.tmp_limit`, or the default
/// `image::format::MAX_SAVED_TMP_TOTAL`).
pub fn tmp_limit(flags: u32, files: &SaveFiles) -> Option<i64> {
    if flags & FLAG_SAVE_TMP_NONE != 0 {
        return None;
    }
    match files.tmp_limit {
        0 => Some(crate::image::format::MAX_SAVED_TMP_TOTAL),
        n => Some((n - 1).min(i64::MAX as u64) as i64),
    }
}

/// Request flag: one process of a multi-process checkpoint. After every thread is stopped the
/// agent replies [`STATUS_QUIESCED`] and waits for [`REQ_WRITE`] (write, then the usual final
/// reply and RELEASE) or [`REQ_RELEASE`] (abandon: nothing is written, the final reply is
/// `ECANCELED`). So a requester can stop every process of a tree before any is written: one
/// consistent cut.
pub const FLAG_BARRIER: u32 = 0x4;

/// Request flag: the requester asked `CR_CHKPT_PROHIBIT_SELF` (a callback that forwards the
/// checkpoint to the requester gets `EDEADLK`).
pub const FLAG_PROHIBIT_SELF: u32 = 0x8;

/// Request flag: an API request (`cr_request_checkpoint`): the agent sends the post-checkpoint
/// signal itself and does not wait for a RELEASE.
pub const FLAG_API: u32 = 0x2;

/// Request flag (`REQ_CHECKPOINT`, and `REQ_WRITE` of a cut of one process): copy-on-write
/// (`cr_checkpoint --cow`): the program is stopped only while its state is recorded and its
/// shared memory copied; a forked writer writes the page data while it runs on. The final reply
/// still comes once the image is written and synced.
pub const FLAG_COW: u32 = 0x100;

/// Request flag: an incremental checkpoint (`cr_checkpoint --incremental`): the agent writes a
/// delta image against the parent named by [`Request::parent_hash`] and
/// [`Request::parent_size`] when it armed write-tracking for exactly that image, else a full
/// image (saying why); either way it arms write-tracking for the image it writes (see
/// `agent::incremental`).
pub const FLAG_INCREMENTAL: u32 = 0x1000;

/// Request flag (`REQ_WRITE` only): this process is the whole cut of a multi-process
/// checkpoint (no other process is stopped with it, no node barrier), so, like a one-process
/// request, it may let the program run before its image is written: a delta image whose page
/// data it copied into its delta buffer in the stop (`agent::deltabuf`).
pub const FLAG_SOLE: u32 = 0x8000;

/// Request flag: the requester shows progress (`cr_checkpoint` on a terminal): while the image
/// is written the agent sends [`STATUS_PROGRESS`] messages ([`Reply::progress`]), at most one
/// every [`PROGRESS_INTERVAL_MS`], before the final reply. Other requesters never see one.
pub const FLAG_PROGRESS: u32 = 0x2000;

/// Request flag: the image descriptor is a file the requester created under a temporary name
/// beside [`Request::dest`] (where the file system has no `O_TMPFILE`), renamed into place at
/// commit: `.NAME.tmp`, or `.NAME.PID.tmp` when an earlier checkpoint's file still holds that
/// name ([`is_tmp_name_of`]; the agent reads the name from the descriptor). When the checkpoint is given up (the requester gone, `--time` ran
/// out, or the requester gone before its commit) the agent removes that name if it is still
/// the descriptor's file (same device and inode), once no write of its own waits on it
/// (`agent::offload`); never the final path, never another file.
pub const FLAG_TMP_NAMED: u32 = 0x20000;

/// What an agent's failure message says when a writer of the image was left behind, still
/// waiting on the destination (`agent::offload`): with [`FLAG_TMP_NAMED`] the agent removes
/// the temporary file itself once that write is over, and the requester must not try (its
/// removal would wait behind the stuck write, holding the directory's lock).
pub const LEFT_BEHIND: &str = "still waits on the destination";

/// The temporary name [`FLAG_TMP_NAMED`] means for the final path `dest`: `DIR/.NAME.tmp`
/// (`checkpoint::dest` creates it so). Written into `out`; returns its length (0: `dest` is
/// not an absolute path with a file name, or the result does not fit).
pub fn tmp_name_of(dest: &[u8], out: &mut [u8]) -> usize {
    let Some(slash) = dest.iter().rposition(|&b| b == b'/') else {
        return 0;
    };
    let (dir, name) = (&dest[..=slash], &dest[slash + 1..]);
    let n = dir.len() + 1 + name.len() + 4;
    if dest.first() != Some(&b'/') || name.is_empty() || n > out.len() {
        return 0;
    }
    out[..dir.len()].copy_from_slice(dir);
    out[dir.len()] = b'.';
    out[dir.len() + 1..dir.len() + 1 + name.len()].copy_from_slice(name);
    out[n - 4..n].copy_from_slice(b".tmp");
    n
}

/// Whether `path` (a descriptor's name, from `/proc/self/fd`) is a temporary name
/// [`FLAG_TMP_NAMED`] allows for the final path `dest`: its file name is `.NAME.tmp` or
/// `.NAME.PID.tmp` / `.NAME.PID-N.tmp` (`checkpoint::dest`), NAME being `dest`'s.
pub fn is_tmp_name_of(dest: &[u8], path: &[u8]) -> bool {
    let base = |p: &[u8]| p.iter().rposition(|&b| b == b'/').map(|i| i + 1);
    let (Some(d), Some(b)) = (base(dest), base(path)) else {
        return false;
    };
    let (name, file) = (&dest[d..], &path[b..]);
    if path.first() != Some(&b'/') || name.is_empty() || file.first() != Some(&b'.') {
        return false;
    }
    let Some(rest) = file[1..].strip_prefix(name) else {
        return false;
    };
    let Some(mid) = rest.strip_suffix(b".tmp") else {
        return false;
    };
    mid.is_empty()
        || (mid.len() > 1
            && mid[0] == b'.'
            && mid[1].is_ascii_digit()
            && mid[1..].iter().all(|&c| c.is_ascii_digit() || c == b'-'))
}

/// `REQ_WRITE` flag (a cut of several processes): this process's image is alone in its file (no
/// tree manifest, no other image), so the raw path of a compressed checkpoint (the second
/// descriptor of `send_fds`) may be taken.
pub const FLAG_RAW_OK: u32 = 0x4000;

/// Request flag (`cr_checkpoint --compress` to a file): the second descriptor of `send_fds` is
/// the very file the compressed image is written to (not a stream destination, which is
/// compressed into a temporary file first), so the agent may write pieces of its page data
/// there itself: those that look incompressible, and any other while the compressor is behind
/// (a split image, see `image::compress`). (Was 0x10000 before 2026-12-07 04:40: an agent of
/// then splits on that flag with a plan, `REC_ZPLAN` kind 36, this `cr_checkpoint` no longer
/// reads; it no longer sends 0x10000, so such an agent pipes its image whole.)
pub const FLAG_ZSPLIT: u32 = 0x40000;

/// Request flag with [`FLAG_ZSPLIT`]: every piece that looks compressible is compressed, the
/// compressor waited for (none goes raw because it is behind). `CR_COMPRESS_ADAPT=0` in
/// `cr_checkpoint`'s environment (for tests and comparisons).
pub const FLAG_ZWAIT: u32 = 0x80000;

/// Request flag with [`FLAG_ZSPLIT`]: the split image is paced by the disk rate the agent
/// measured in an earlier plain checkpoint (`agent::memory::write_split`): a piece whose turn
/// comes while the compressor is behind waits for it while the agent is ahead of a plain
/// checkpoint. `CR_COMPRESS_PACE=1` in `cr_checkpoint`'s environment (not the default: not
/// yet measured on an idle machine, docs/PERFORMANCE.md).
pub const FLAG_ZPACE: u32 = 0x100000;

/// Request flag with [`FLAG_ZSPLIT`] (`cr_checkpoint --compress` to a file, issue 14): the
/// request's third descriptor is the read end of an acknowledgement pipe, and `cr_checkpoint`
/// reads the pieces the agent hands to the compressor from the stopped process's memory
/// itself (`process_vm_readv`): the agent sends each piece's index with
/// `image::format::ZPLAN_PULL` set and no bytes, and `cr_checkpoint` answers every such piece
/// with one byte on that pipe once it has copied it ([`ZPULL_DONE`]), or, for the first, that
/// it may not read the process ([`ZPULL_REFUSED`]: the agent then writes that piece's bytes and
/// every later one's into the pipe, as without this flag). The agent keeps the program stopped
/// until every piece it handed over is acknowledged (`agent::memory::write_split`).
/// `CR_COMPRESS_PULL=0` in `cr_checkpoint`'s environment leaves it out.
pub const FLAG_ZPULL: u32 = 0x200000;

/// Request flag with [`FLAG_ZSPLIT`] (`cr_checkpoint --compress` to a file at a level of at
/// most `agent::zpack::MAX_LEVEL`, issue 14): the agent may compress the pieces it gives to the
/// compressor itself, on helper threads in the stopped program (`agent::zpack`), at the level
/// in bits [`ZPACK_LEVEL_SHIFT`].. of the flags, and send each as its index with
/// `image::format::ZPLAN_PACKED`, the frame's length and the frame; `cr_checkpoint` stores
/// them as they are. An agent that cannot (its helpers or their contexts cannot be made) says
/// why under `-v` and pulls ([`FLAG_ZPULL`]) or pipes the pieces as without this flag; an agent
/// of before 2026-12-07 ignores it. `CR_COMPRESS_PACK=0` in `cr_checkpoint`'s environment
/// leaves it out.
pub const FLAG_ZPACK: u32 = 0x400000;

/// Where [`FLAG_ZPACK`]'s zstd level is in the request flags (5 bits).
pub const ZPACK_LEVEL_SHIFT: u32 = 24;

/// The zstd level a request asks its agent to compress at ([`FLAG_ZPACK`]; 0: none).
pub const fn pack_level(flags: u32) -> i32 {
    if flags & FLAG_ZPACK == 0 {
        0
    } else {
        ((flags >> ZPACK_LEVEL_SHIFT) & 0x1f) as i32
    }
}

/// [`FLAG_ZPULL`]: the acknowledgement of a piece copied out of the process.
pub const ZPULL_DONE: u8 = b'P';

/// [`FLAG_ZPULL`]: the first piece could not be read (`EPERM`: another user's or a
/// non-dumpable process, or a security module's rule): its bytes and every later piece's come
/// through the pipe.
pub const ZPULL_REFUSED: u8 = b'R';

/// [`REQ_WRITE`] flag: the images of a cut are written at once (docs/ARCHITECTURE.md "Checkpoint
/// of several processes"): the agent builds its metadata, answers [`STATUS_SIZED`] with its
/// image's exact length, waits for [`REQ_PLACE`] with the offset, and writes its image there
/// with positioned writes only (the description is shared with the other members: its file
/// position means nothing), leaving `O_DIRECT` set. Sent only to an agent whose
/// [`STATUS_QUIESCED`] carried [`CAP_PLACED`] (an older agent's did not: it writes in turn).
pub const FLAG_PLACED: u32 = 0x800000;

/// With [`FLAG_PLACED`]: no `fdatasync` of the image by the agent; the requester syncs the
/// whole file once every image is written. (0x1000000 for its first hour on main, where it
/// was also bit 0 of [`FLAG_ZPACK`]'s level: the agent skipped the `fdatasync` of a
/// `--compress` image at levels 1 and 3 — harmless, `cr_checkpoint` syncs the file at the
/// commit anyway. The agent takes the checkpoint request's and the
/// write order's flags together, so every flag must have a bit of its own: checked below.)
pub const FLAG_PLACED_NOSYNC: u32 = 0x200;

/// Every single-bit request flag (the agent ORs the checkpoint request's flags with the write
/// order's: `agent::control`): no two may share a bit, nor take one of [`FLAG_ZPACK`]'s level
/// bits, nor 0x1 (`FLAG_SAVE_ALL` before the three `FLAG_SAVE_*`) or 0x10000 (`FLAG_ZSPLIT`
/// and `FLAG_TMP_NAMED` before), which older requesters may still send.
const REQUEST_FLAGS: [u32; 20] = [
    FLAG_API,
    FLAG_BARRIER,
    FLAG_PROHIBIT_SELF,
    FLAG_SAVE_EXE,
    FLAG_SAVE_PRIVATE,
    FLAG_SAVE_SHARED,
    FLAG_SAVE_TMP_NONE,
    FLAG_COW,
    FLAG_PLACED_NOSYNC,
    FLAG_INCREMENTAL,
    FLAG_PROGRESS,
    FLAG_RAW_OK,
    FLAG_SOLE,
    FLAG_TMP_NAMED,
    FLAG_ZSPLIT,
    FLAG_ZWAIT,
    FLAG_ZPACE,
    FLAG_ZPULL,
    FLAG_ZPACK,
    FLAG_PLACED,
];
const _: () = {
    let reserved = 0x1 | 0x10000 | (0x1f << ZPACK_LEVEL_SHIFT);
    let mut seen = 0u32;
    let mut i = 0;
    while i < REQUEST_FLAGS.len() {
        let f = REQUEST_FLAGS[i];
        assert!(f.count_ones() == 1, "a request flag is one bit");
        assert!(f & seen == 0, "two request flags share a bit");
        assert!(f & reserved == 0, "a request flag takes a reserved bit");
        seen |= f;
        i += 1;
    }
};

/// `Reply::bytes` bit of [`STATUS_QUIESCED`]: this agent knows [`FLAG_PLACED`] (and has no
/// forwarded processes whose images it would append to its own).
pub const CAP_PLACED: u64 = 1;

/// `Reply::bytes` bit of [`STATUS_QUIESCED`]: this agent also writes a placed image from a
/// copy-on-write writer ([`FLAG_PLACED`] with `FLAG_COW` on [`REQ_WRITE`]): it answers
/// [`STATUS_FORKED`] once its writer exists (the program still stopped), waits for [`REQ_RUN`]
/// to let the program go, and passes the writer's length ([`STATUS_SIZED`]) and its offset
/// ([`REQ_PLACE`]) on. Older agents leave it 0: the cut is written stopped.
pub const CAP_COW_PLACED: u64 = 2;

/// Progress messages ([`FLAG_PROGRESS`]) are sent at most this often (and once when the page
/// data starts).
pub const PROGRESS_INTERVAL_MS: u64 = 100;

/// A request message.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Request {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u32,
    /// `REQ_*`.
    pub kind: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Timeout in milliseconds (0 = default).
    pub timeout_ms: u32,
    /// Signal to send after the checkpoint (API requests).
    pub signal: i32,
    /// Pid of the requester.
    pub requester: i32,
    /// Target id of the request.
    pub target: i32,
    /// Scope of the request (`CR_SCOPE_*`).
    pub scope: i32,
    /// Length of `dest`.
    pub dest_len: u32,
    /// Absolute path of the final context file ("" = derive it from the descriptor).
    pub dest: [u8; 4096],
    /// [`FLAG_INCREMENTAL`]: the parent image's `trailer_hash` (0: no parent, write a full
    /// image and arm).
    pub parent_hash: u64,
    /// [`FLAG_INCREMENTAL`]: the parent image's total length.
    pub parent_size: u64,
    /// [`FLAG_INCREMENTAL`]: links behind the parent (0: the parent is a full image).
    pub parent_depth: u32,
    /// Length of `parent_path`.
    pub parent_path_len: u32,
    /// [`FLAG_INCREMENTAL`]: the parent's path as the delta image records it (relative to the
    /// delta's directory, or absolute).
    pub parent_path: [u8; 1024],
    /// Files saved by content beyond the defaults (`--save-dir`, `--save-written`).
    pub files: SaveFiles,
}

/// Most bytes of `--save-dir` directories a request carries (NUL-terminated, back to back).
pub const SAVE_DIRS_LEN: usize = 1024;

/// Which further files a checkpoint saves by content (all zero: only those under the default
/// temporary directories). Part of [`Request`], passed on by forwarded tree checkpoints.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct SaveFiles {
    /// The most bytes of files under temporary directories one process saves
    /// (`--save-tmp-limit SIZE`), plus one; 0: the default (see [`tmp_limit`]).
    pub tmp_limit: u64,
    /// Regular files open for writing anywhere (`--save-written[=SIZE]`): the most bytes of them
    /// one process saves, plus one; 0: none is.
    pub written: u64,
    /// Bytes used in `dirs`.
    pub dirs_len: u32,
    /// Zero.
    pub _pad: u32,
    /// Further temporary directories (`--save-dir DIR`): absolute paths without a trailing
    /// slash, each NUL-terminated, back to back.
    pub dirs: [u8; SAVE_DIRS_LEN],
}

impl Default for SaveFiles {
    fn default() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

impl SaveFiles {
    /// The most bytes of files open for writing one process saves (`None`: none is).
    pub fn written_limit(&self) -> Option<i64> {
        (self.written > 0).then(|| (self.written - 1).min(i64::MAX as u64) as i64)
    }

    /// The `--save-dir` directories.
    pub fn dirs(&self) -> impl Iterator<Item = &[u8]> {
        let n = (self.dirs_len as usize).min(SAVE_DIRS_LEN);
        self.dirs[..n].split(|&b| b == 0).filter(|d| !d.is_empty())
    }

    /// Adds directory `dir` (absolute; trailing slashes dropped); false when it does not fit.
    pub fn add_dir(&mut self, dir: &[u8]) -> bool {
        let mut d = dir;
        while d.len() > 1 && d.ends_with(b"/") {
            d = &d[..d.len() - 1];
        }
        let at = self.dirs_len as usize;
        if at + d.len() + 1 > SAVE_DIRS_LEN {
            return false;
        }
        self.dirs[at..at + d.len()].copy_from_slice(d);
        self.dirs[at + d.len()] = 0;
        self.dirs_len = (at + d.len() + 1) as u32;
        true
    }
}

impl Request {
    /// A request of `kind` with everything else zero.
    pub fn new(kind: u32) -> Request {
        Request {
            magic: MAGIC,
            version: VERSION,
            kind,
            ..bytemuck::Zeroable::zeroed()
        }
    }
    /// Sets the parent of an incremental request (`path` truncated to the field).
    pub fn set_parent(&mut self, path: &[u8], size: u64, trailer_hash: u64, depth: u32) {
        let n = path.len().min(self.parent_path.len());
        self.parent_path[..n].copy_from_slice(&path[..n]);
        self.parent_path_len = n as u32;
        self.parent_size = size;
        self.parent_hash = trailer_hash;
        self.parent_depth = depth;
    }
    /// Sets the destination path (truncated to the field).
    pub fn set_dest(&mut self, path: &[u8]) {
        let n = path.len().min(self.dest.len());
        self.dest[..n].copy_from_slice(&path[..n]);
        self.dest_len = n as u32;
    }

    /// A [`REQ_PLACE`] request: the image goes at `offset` of the file.
    pub fn place(offset: u64) -> Request {
        let mut r = Request::new(REQ_PLACE);
        r.parent_size = offset;
        r
    }

    /// The offset of a [`REQ_PLACE`] request.
    pub fn place_offset(&self) -> u64 {
        self.parent_size
    }
}

/// `Reply::status` of the first message of an accepted request: the checkpoint is now pending
/// (no new critical section starts). The final reply follows.
pub const STATUS_ACCEPTED: i32 = -1;

/// `Reply::status` of the message a [`FLAG_BARRIER`] request gets once every thread of the
/// process is stopped; the agent then waits for [`REQ_WRITE`] or [`REQ_RELEASE`].
pub const STATUS_QUIESCED: i32 = -2;

/// `Reply::status` of a progress message ([`FLAG_PROGRESS`]): `bytes` of the image are written,
/// of [`Reply::progress_total`]. The final reply follows.
pub const STATUS_PROGRESS: i32 = -3;

/// `Reply::status` of the message a [`FLAG_PLACED`] write sends once its metadata is built:
/// `bytes` is the image's exact length; the agent then waits for [`REQ_PLACE`] (or a release).
pub const STATUS_SIZED: i32 = -4;

/// `Reply::status` of the message a copy-on-write placed write ([`CAP_COW_PLACED`]) sends once
/// its writer exists: the program stays stopped until [`REQ_RUN`] (or, without one, until the
/// final release); the writer's [`STATUS_SIZED`] follows. An agent that wrote stopped after
/// all (copy-on-write refused, its report says why) answers [`STATUS_SIZED`] at once instead.
pub const STATUS_FORKED: i32 = -5;

/// Waits for the agent to accept a request: consumes the [`STATUS_ACCEPTED`] message and returns
/// `Ok(None)`, or returns a final reply that came instead (left unread when `keep` is set).
pub fn await_accepted(sock: i32, keep: bool) -> Result<Option<Reply>, i32> {
    loop {
        match recv_reply(sock, libc::MSG_PEEK) {
            Ok(Some(r)) if r.status == STATUS_ACCEPTED => {
                let _ = recv_reply(sock, 0);
                return Ok(None);
            }
            Ok(Some(r)) => {
                if !keep {
                    let _ = recv_reply(sock, 0);
                }
                return Ok(Some(r));
            }
            Ok(None) => {}
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The agent's answer to a checkpoint request.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Reply {
    /// [`MAGIC`].
    pub magic: u32,
    /// 0 on success, else a positive errno.
    pub status: i32,
    /// Bytes written.
    pub bytes: u64,
    /// NUL-terminated detail for errors ("thread 1234 did not stop", …).
    pub msg: [u8; 240],
}

impl Reply {
    /// A progress message ([`STATUS_PROGRESS`]): `done` bytes of an image of `total` bytes are
    /// written. Built on the stack: the agent sends it while the program is stopped.
    pub fn progress(done: u64, total: u64) -> Reply {
        let mut r = Reply {
            magic: MAGIC,
            status: STATUS_PROGRESS,
            bytes: done,
            msg: [0; 240],
        };
        r.msg[..8].copy_from_slice(&total.to_le_bytes());
        r
    }

    /// The image's total length a progress message announces.
    pub fn progress_total(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.msg[..8]);
        u64::from_le_bytes(b)
    }

    /// The message as text.
    pub fn message(&self) -> String {
        let end = self
            .msg
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.msg.len());
        String::from_utf8_lossy(&self.msg[..end]).into_owned()
    }
}

/// Parses the inode out of a namespace link text such as `pid:[4026531836]` (0 if malformed).
#[link_section = ".text.hot.libcr_start"]
pub fn ns_inode(link: &[u8]) -> u64 {
    let mut n = 0u64;
    let mut inside = false;
    for &b in link {
        match b {
            b'[' => inside = true,
            b'0'..=b'9' if inside => n = n * 10 + (b - b'0') as u64,
            _ => {}
        }
    }
    n
}

/// The calling process's control-socket identity: (inode of its pid namespace, its pid there).
/// Allocation-free (the agent calls it in fork children and after a restart).
#[link_section = ".text.hot.libcr_start"]
pub fn own_identity() -> (u64, i32) {
    let mut link = [0u8; 64];
    let n = crate::sys::readlink(b"/proc/self/ns/pid\0", &mut link).unwrap_or(0);
    (ns_inode(&link[..n.min(64)]), crate::sys::getpid())
}

/// The control-socket identity of process `pid` as the caller's `/proc` shows it: the inode of
/// its pid namespace and its pid inside that namespace (the last `NSpid` entry). A process that
/// cr_restart restored into its own pid namespace listens under its original pid there.
pub fn target_identity(pid: i32) -> (u64, i32) {
    let nspids = ns_pids(pid);
    let inner = nspids.last().copied().unwrap_or(pid);
    (pid_ns_of(pid, nspids.len()), inner)
}

/// The `NSpid` entries of `pid` (outermost first) and its parent, from `/proc/PID/status`.
fn status_ids(pid: i32) -> (Vec<i32>, i32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
    };
    let ids = field("NSpid:")
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    (ids, field("PPid:").trim().parse().unwrap_or(0))
}

fn ns_pids(pid: i32) -> Vec<i32> {
    status_ids(pid).0
}

/// The inode of `pid`'s pid namespace. A process that is not dumpable (`PR_SET_DUMPABLE` 0)
/// hides its `ns/pid` link from other processes of its user: then the nearest ancestor at the
/// same namespace depth (so in the same namespace; e.g. the init of cr_restart's namespace) or,
/// at depth 1, our own namespace answers.
fn pid_ns_of(pid: i32, depth: usize) -> u64 {
    let link = |p: i32| {
        std::fs::read_link(format!("/proc/{p}/ns/pid"))
            .ok()
            .map(|l| ns_inode(l.as_os_str().as_encoded_bytes()))
    };
    if let Some(ns) = link(pid) {
        return ns;
    }
    let mut p = status_ids(pid).1;
    while p > 0 {
        let (ids, parent) = status_ids(p);
        if ids.len() < depth {
            break;
        }
        if ids.len() == depth {
            if let Some(ns) = link(p) {
                return ns;
            }
        }
        p = parent;
    }
    if depth == 1 {
        own_identity().0
    } else {
        0
    }
}

/// Builds the abstract socket address `@libcr-ctl.<ns>.<pid>`; returns it and its length.
#[link_section = ".text.hot.libcr_start"]
pub fn socket_addr(ns: u64, pid: i32) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let mut name = crate::sys::StackBuf::<64>::new();
    name.push(b"libcr-ctl.").num(ns).push(b".").num(pid as u64);
    let bytes = name.as_bytes();
    // sun_path[0] stays 0: abstract namespace.
    for (i, &b) in bytes.iter().enumerate() {
        addr.sun_path[i + 1] = b as libc::c_char;
    }
    let len = core::mem::size_of::<libc::sa_family_t>() + 1 + bytes.len();
    (addr, len as libc::socklen_t)
}

/// The signal that wakes a lazy agent: a process whose agent has not bound its control socket
/// yet binds it when this signal arrives with [`WAKE_MAGIC`] as its `si_value` and `si_code`
/// `SI_QUEUE` (`rt_sigqueueinfo`). Its default action is to be ignored, so a wake-up that reaches
/// a process between `exec` and its new image's constructor (when every handler is the default
/// again) is lost harmlessly; the requester sends it again. Every other `SIGURG` goes to the
/// program's own disposition (`agent::interpose`). See docs/ARCHITECTURE.md, "Start-up".
pub const WAKE_SIGNAL: i32 = libc::SIGURG;
/// The `si_value` of a wake-up ("libcr-wk").
pub const WAKE_MAGIC: u64 = 0x6b77_2d72_6362_696c;
/// How long a requester waits for a woken agent's socket (it sends the wake-up again meanwhile).
pub const WAKE_WAIT_NS: u64 = 3_000_000_000;
/// How often a requester that finds no socket sends the wake-up again.
pub const WAKE_AGAIN_NS: u64 = 20_000_000;

/// What `/proc/PID/status` (`SigCgt`) says about process `pid`'s agent (no allocation: the
/// agent's control thread calls it too).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AgentSign {
    /// It catches the checkpoint signal and the wake-up: an agent that binds its control socket
    /// when woken ([`wake`]).
    Wakeable,
    /// It catches the checkpoint signal but not the wake-up signal: an agent that binds at once
    /// (or none; it never gets a wake-up).
    Eager,
    /// It does not catch the checkpoint signal: no agent (yet); or the process is gone or a
    /// zombie (which shows its handlers until it is reaped).
    None,
}

/// Reads the caught-signal mask of process `pid` from `/proc/PID/status`.
pub fn agent_sign(pid: i32) -> AgentSign {
    let mut path = crate::sys::StackBuf::<40>::new();
    path.push(b"/proc/").num(pid as u64).push(b"/status");
    let Ok(fd) = crate::sys::open(path.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return AgentSign::None;
    };
    let fd = fd as i32;
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match crate::sys::read(fd, &mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    crate::sys::close(fd);
    let text = &buf[..n];
    // A zombie keeps its handlers until it is reaped, but never handles a signal again.
    let state = b"State:";
    if let Some(at) = text.windows(state.len()).position(|w| w == state) {
        let s = text[at + state.len()..]
            .iter()
            .find(|c| !c.is_ascii_whitespace());
        if matches!(s, Some(b'Z') | Some(b'X')) {
            return AgentSign::None;
        }
    }
    let Some(mask) = crate::sys::status_hex_field(text, b"SigCgt:") else {
        return AgentSign::None;
    };
    let has = |sig: i32| mask & (1u64 << (sig - 1)) != 0;
    match (has(crate::agent::quiesce::CR_SIGNUM), has(WAKE_SIGNAL)) {
        (true, true) => AgentSign::Wakeable,
        (true, false) => AgentSign::Eager,
        _ => AgentSign::None,
    }
}

/// Sends process `pid` the wake-up ([`WAKE_SIGNAL`] with [`WAKE_MAGIC`], `SI_QUEUE`), to its
/// main thread (the thread whose tid is the pid: `rt_tgsigqueueinfo`), never to the process as a
/// whole. A signal sent to the process while the thread the kernel would pick blocks it (the
/// main thread in the handler of the wake-up before, which blocks its own signal) or has a
/// signal pending already is aimed at another thread, which the kernel wakes at once; when the
/// main thread then takes the signal first, the woken thread finds nothing: an `epoll_wait` (or
/// any call the kernel does not restart) it was in returns `EINTR`, with no handler run to hide
/// it (tests/load.rs `restarts_while_ignored_signals_arrive`, caught by tracing: the wake-up sent
/// again while the main thread still ran the first one's handler). Sent to the main thread, it
/// waits in that thread's own queue and wakes no other. A main thread that has ended (a zombie
/// leader) shows no agent ([`agent_sign`]) and is never woken; one that blocks the wake-up
/// signal by a raw system call gets it late or never: requesters fall back to
/// [`wake_process`] after half of [`WAKE_WAIT_NS`].
pub fn wake(pid: i32) -> Result<(), i32> {
    send_wake(pid, true)
}

/// [`wake`] sent to the process as a whole (`rt_sigqueueinfo`): the kernel picks the thread. The
/// requesters' fallback when the main thread did not bind the socket in half of
/// [`WAKE_WAIT_NS`].
pub fn wake_process(pid: i32) -> Result<(), i32> {
    send_wake(pid, false)
}

fn send_wake(pid: i32, main_thread: bool) -> Result<(), i32> {
    // SAFETY: all-zero is a valid siginfo_t.
    let mut si: libc::siginfo_t = unsafe { core::mem::zeroed() };
    si.si_signo = WAKE_SIGNAL;
    si.si_code = libc::SI_QUEUE;
    // The SI_QUEUE layout: si_pid (int) at 16, si_uid (uint) at 20, si_value at 24.
    let base = &mut si as *mut libc::siginfo_t as *mut u8;
    // SAFETY: these offsets lie inside the 128-byte siginfo_t.
    unsafe {
        core::ptr::write_unaligned(base.add(16) as *mut i32, crate::sys::getpid());
        core::ptr::write_unaligned(base.add(20) as *mut u32, libc::getuid());
        core::ptr::write_unaligned(base.add(24) as *mut u64, WAKE_MAGIC);
    }
    let info = &si as *const _ as usize;
    let sent = if main_thread {
        crate::sys::sys6(
            libc::SYS_rt_tgsigqueueinfo as usize,
            pid as usize,
            pid as usize,
            WAKE_SIGNAL as usize,
            info,
            0,
            0,
        )
    } else {
        crate::sys::sys3(
            libc::SYS_rt_sigqueueinfo as usize,
            pid as usize,
            WAKE_SIGNAL as usize,
            info,
        )
    };
    sent.map(|_| ()).map_err(|e| e.0)
}

/// What the restart loader hands the restored agent (in the trampoline's argument block).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub struct RestartInfo {
    /// [`RESTART_MAGIC`].
    pub magic: i64,
    /// Pid of cr_restart (what `cr_checkpoint()` returns in callbacks after a restart).
    pub restarter_pid: i64,
    /// Descriptor the agent writes one byte to, then closes, once the program runs again.
    pub notify_fd: i64,
    /// Trampoline data block (argument block and stack) to unmap.
    pub block_addr: i64,
    /// Its length.
    pub block_len: i64,
    /// Trampoline code block to unmap.
    pub code_addr: i64,
    /// Its length.
    pub code_len: i64,
    /// Result of `prctl(PR_SET_MM_MAP)` in the trampoline (0 or -errno).
    pub mm_result: i64,
    /// Address of the image's path (in the block), for `cr_get_restart_info`.
    pub src_addr: i64,
    /// Its length.
    pub src_len: i64,
    /// Signal the restored process sends itself before its threads run again (cr_restart's
    /// `--early-stop`/`--early-abrt`), or 0.
    pub early_signal: i64,
    /// Descriptor of the program's executable, to become `/proc/self/exe` again (-1: none).
    pub exe_fd: i64,
    /// Device (`makedev`, as `/proc/self/maps` shows it) of the image file whose pages are
    /// mapped into the restored memory by a lazy restore; 0 with `image_ino` 0: none.
    pub image_dev: i64,
    /// Its inode.
    pub image_ino: i64,
    /// Device and inode pairs (as `image_dev`, `image_ino`) of the images of a delta's chain
    /// whose pages a lazy restore mapped too (`restore::chain`); unused pairs are 0.
    pub chain_ids: [i64; 2 * RESTART_CHAIN_IDS],
    /// The image a lazy restore mapped memory from (`image_dev` or `chain_ids` set; else 0):
    /// its `Trailer::trailer_hash`, so that the restored process's first incremental checkpoint
    /// naming that image as its parent can be a delta (`agent::incremental::restored`).
    pub image_hash: i64,
    /// Its `Trailer::total_len`.
    pub image_size: i64,
    /// Its depth (links behind it: 0 for a full image).
    pub image_depth: i64,
    /// Address of the restart's address map (`cr_restart --map-address`: encoded pairs of
    /// `agent::netmap`, in the block), 0: none.
    pub addr_map_addr: i64,
    /// Its length in bytes.
    pub addr_map_len: i64,
}

/// Size of [`RestartInfo`] in words.
pub const RESTART_INFO_WORDS: usize = 14 + 2 * RESTART_CHAIN_IDS + 3 + 2;
/// Most chain links a lazy restore maps pages from ([`RestartInfo::chain_ids`]); pages of
/// further links are read.
pub const RESTART_CHAIN_IDS: usize = 8;
/// Word index of [`RestartInfo::chain_ids`].
pub const RESTART_INFO_CHAIN_IDS: usize = 14;
/// Word index of [`RestartInfo::image_dev`] (`image_ino` follows).
pub const RESTART_INFO_IMAGE_DEV: usize = 12;
/// Word index of [`RestartInfo::image_hash`] (`image_size`, `image_depth` follow).
pub const RESTART_INFO_IMAGE_HASH: usize = RESTART_INFO_CHAIN_IDS + 2 * RESTART_CHAIN_IDS;

/// Magic of [`RestartInfo`].
pub const RESTART_MAGIC: i64 = 0x4352_5253_5452_4e31;

impl RestartInfo {
    /// The fields as words, in order.
    pub fn as_words(&self) -> [i64; RESTART_INFO_WORDS] {
        bytemuck::cast(*self)
    }
    /// Rebuilds from words.
    pub fn from_words(w: [i64; RESTART_INFO_WORDS]) -> Self {
        bytemuck::cast(w)
    }
}

/// Connects to the control socket of process `pid` (as the caller's `/proc` names it); returns
/// the socket or the errno of the failure (`ECONNREFUSED`/`ENOENT`: no agent listens there).
pub fn connect(pid: i32) -> Result<i32, i32> {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    let (ns, inner) = target_identity(pid);
    let (addr, len) = socket_addr(ns, inner);
    let once = || {
        // SAFETY: socket calls on a descriptor we own.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(errno());
            }
            if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
                let e = errno();
                libc::close(fd);
                return Err(e);
            }
            Ok(fd)
        }
    };
    let first = once();
    if !matches!(first, Err(libc::ECONNREFUSED) | Err(libc::ENOENT)) {
        return first;
    }
    connect_woken(pid, first, once)
}

/// After `connect` found no control socket for `pid`: while the process shows a lazy agent
/// ([`AgentSign::Wakeable`]), wakes it ([`wake`], again every [`WAKE_AGAIN_NS`]: a process in
/// the middle of an `exec` loses it; [`wake_process`] after half of [`WAKE_WAIT_NS`]) and tries
/// `once` until the socket is there. Gives up with
/// `ETIMEDOUT` after [`WAKE_WAIT_NS`] (the program blocks the wake-up signal in every thread, or
/// replaced the agent's handler by a raw system call); returns `first` when the process has no
/// lazy agent (none at all: the caller's clear error, not a wait).
pub fn connect_woken(
    pid: i32,
    first: Result<i32, i32>,
    mut once: impl FnMut() -> Result<i32, i32>,
) -> Result<i32, i32> {
    let start = crate::sys::monotonic_ns();
    let mut last_wake = 0u64;
    let mut woke = false;
    loop {
        let now = crate::sys::monotonic_ns();
        if now - start > WAKE_WAIT_NS {
            return Err(libc::ETIMEDOUT);
        }
        if !woke || now - last_wake >= WAKE_AGAIN_NS {
            // Checked again before each wake-up: the process may have exec'd a program without
            // the agent meanwhile (its own SIGURG handler must not get ours).
            if agent_sign(pid) != AgentSign::Wakeable {
                return if woke { once() } else { first };
            }
            // To the main thread ([`wake`]); to the process once half the wait is over.
            let sent = if now - start < WAKE_WAIT_NS / 2 {
                wake(pid)
            } else {
                wake_process(pid)
            };
            if let Err(e) = sent {
                return if woke { Err(e) } else { first };
            }
            woke = true;
            last_wake = now;
        }
        // SAFETY: a plain sleep of 0.5 ms.
        unsafe { libc::usleep(500) };
        match once() {
            Err(libc::ECONNREFUSED) | Err(libc::ENOENT) => {}
            r => return r,
        }
    }
}

/// Sends a request, passing `fd` along (`SCM_RIGHTS`) when given.
pub fn send(sock: i32, req: &Request, fd: Option<i32>) -> Result<(), i32> {
    match fd {
        Some(fd) => send_fds(sock, req, &[fd]),
        None => send_fds(sock, req, &[]),
    }
}

/// Sends a request with up to three descriptors (`SCM_RIGHTS`): the image descriptor and, for a
/// compressed checkpoint of one process, the destination itself, where the agent writes its
/// image raw when a sample of its page data shows it incompressible (see
/// `agent::image::finish`; the first descriptor is then a pipe to cr_checkpoint's compressor),
/// and with [`FLAG_ZPULL`] the read end of the acknowledgement pipe of pulled pieces.
pub fn send_fds(sock: i32, req: &Request, fds: &[i32]) -> Result<(), i32> {
    let bytes = bytemuck::bytes_of(req);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 4];
    let fds = &fds[..fds.len().min(3)];
    // SAFETY: a msghdr over local buffers carrying at most three descriptors (CMSG_SPACE(12)
    // is 32 bytes, `cbuf`'s size).
    unsafe {
        let mut msg: libc::msghdr = core::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let n = 4 * fds.len() as u32;
            msg.msg_control = cbuf.as_mut_ptr() as *mut _;
            msg.msg_controllen = libc::CMSG_SPACE(n) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(n) as usize;
            for (k, &fd) in fds.iter().enumerate() {
                core::ptr::write_unaligned((libc::CMSG_DATA(c) as *mut i32).add(k), fd);
            }
        }
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
    }
    Ok(())
}

/// Receives the agent's reply (`flags`: e.g. `MSG_PEEK | MSG_DONTWAIT`). `Ok(None)`: nothing yet
/// (with `MSG_DONTWAIT`); `Err(EIO)`: the agent went away without answering.
pub fn recv_reply(sock: i32, flags: i32) -> Result<Option<Reply>, i32> {
    let mut r: Reply = bytemuck::Zeroable::zeroed();
    // SAFETY: receiving into a valid buffer.
    let n = unsafe {
        libc::recv(
            sock,
            &mut r as *mut _ as *mut _,
            core::mem::size_of::<Reply>(),
            flags,
        )
    };
    if n == core::mem::size_of::<Reply>() as isize && r.magic == MAGIC {
        return Ok(Some(r));
    }
    let e = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    match n {
        n if n < 0 && e == libc::EAGAIN => Ok(None),
        n if n < 0 => Err(e),
        _ => Err(libc::EIO),
    }
}

const _: () = assert!(
    core::mem::offset_of!(RestartInfo, image_dev) == RESTART_INFO_IMAGE_DEV * 8
        && core::mem::offset_of!(RestartInfo, chain_ids) == RESTART_INFO_CHAIN_IDS * 8
        && core::mem::offset_of!(RestartInfo, image_hash) == RESTART_INFO_IMAGE_HASH * 8
        && core::mem::size_of::<RestartInfo>() == RESTART_INFO_WORDS * 8
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's name for a request's temporary file (`FLAG_TMP_NAMED`) is the one
    /// `checkpoint::dest` creates: `DIR/.NAME.tmp`; nothing for a path without a file name.
    #[test]
    fn tmp_name_of_matches_the_requester() {
        let mut out = [0u8; 64];
        let n = tmp_name_of(b"/a/b/ctx.img", &mut out);
        assert_eq!(&out[..n], b"/a/b/.ctx.img.tmp");
        let n = tmp_name_of(b"/ctx", &mut out);
        assert_eq!(&out[..n], b"/.ctx.tmp");
        assert_eq!(tmp_name_of(b"/a/b/", &mut out), 0);
        assert_eq!(tmp_name_of(b"rel/ctx", &mut out), 0);
        assert_eq!(tmp_name_of(&[b'/'; 70], &mut out), 0);
    }

    #[test]
    fn tmp_names_the_requester_may_use() {
        let d = b"/a/b/ctx.img";
        assert!(is_tmp_name_of(d, b"/a/b/.ctx.img.tmp"));
        assert!(is_tmp_name_of(d, b"/real/b/.ctx.img.4242.tmp"));
        assert!(is_tmp_name_of(d, b"/a/b/.ctx.img.4242-3.tmp"));
        assert!(!is_tmp_name_of(d, b"/a/b/ctx.img"));
        assert!(!is_tmp_name_of(d, b"/a/b/.ctx.img"));
        assert!(!is_tmp_name_of(d, b"/a/b/.ctx.img.x.tmp"));
        assert!(!is_tmp_name_of(d, b"/a/b/.other.tmp"));
        assert!(!is_tmp_name_of(d, b"/a/b/.ctx.img.tmp (deleted)"));
        assert!(!is_tmp_name_of(d, b"rel/.ctx.img.tmp"));
    }

    /// The default limit of files under temporary directories is 1 GiB per process, as
    /// `cr_checkpoint` and `cr_run --checkpoint-dir` (`checkpoint::Options::new`) ask by
    /// default; `--save-tmp-limit none` is no saving, `SIZE` is SIZE bytes.
    #[test]
    fn tmp_limit_default_and_none() {
        let opts = crate::checkpoint::Options::new(crate::api::types::CR_SCOPE_TREE, 1);
        assert_eq!(tmp_limit(opts.save, &opts.files), Some(1 << 30));
        assert_eq!(tmp_limit(FLAG_SAVE_TMP_NONE, &SaveFiles::default()), None);
        let files = SaveFiles {
            tmp_limit: 100 * 1024 + 1,
            ..SaveFiles::default()
        };
        assert_eq!(tmp_limit(0, &files), Some(100 * 1024));
        assert_eq!(SaveFiles::default().written_limit(), None);
    }
}
