//! On-disk layout of a checkpoint image, version [`VERSION`]. See docs/IMAGE-FORMAT.md.
//!
//! ```text
//! offset 0          FileHeader (one 4 KiB page, zero padded)
//! meta_offset       metadata: a sequence of records, each RecordHeader + payload (8-byte aligned)
//! data_offset       page data: every saved extent, page aligned, in metadata order
//! trailer_offset    Trailer (one 4 KiB page): hash of all page data, total length
//! ```
//! Every structure is `#[repr(C)]`, little-endian, with explicit padding, so it can be written
//! from and read into memory without a serialisation step (and without allocation in the agent).

use bytemuck::{Pod, Zeroable};

/// A `u32` enum stored in an image, with `from_u32` decoding exactly its listed values (any
/// other value is `None`: a newer or damaged image).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)* }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant = $value,)* }

        impl $name {
            /// Decodes the on-disk value.
            pub fn from_u32(v: u32) -> Option<Self> {
                match v {
                    $($value => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

/// First eight bytes of every image.
pub const MAGIC: [u8; 8] = *b"LIBCRIMG";
/// First eight bytes of the trailer page.
pub const TRAILER_MAGIC: [u8; 8] = *b"LIBCREND";
/// Newest image format version this build reads (and writes for compressed images, see
/// [`REC_ZFRAMES`]).
pub const VERSION: u32 = 6;
/// Image format version this build writes for delta images (see [`REC_PARENT`]).
pub const VERSION_DELTA: u32 = 5;
/// Image format version of compressed images (`cr_checkpoint --compress`, [`REC_ZFRAMES`]):
/// older readers refuse them by their version instead of reading frames as pages.
pub const VERSION_COMPRESSED: u32 = 6;
/// Image format version this build writes for full (self-contained) images: version-4 readers
/// keep reading them. Only delta images, which such readers could not restore, carry
/// [`VERSION`] 5.
pub const VERSION_FULL: u32 = 4;
/// Oldest image format version this build still reads. A newer version only adds: new record
/// kinds, new enum values, and fields appended to a record's fixed part (see
/// [`fixed_size`]); readers of an older image take the missing fields as zero.
pub const MIN_VERSION: u32 = 2;
/// Flag bit of [`RecordHeader::kind`]: a reader that does not know the record may skip it (it
/// only adds detail). Records without it are required: an unknown one makes the image unreadable.
pub const REC_OPTIONAL: u32 = 0x8000_0000;
/// Page size every offset and extent is aligned to.
pub const PAGE: usize = 4096;
/// ELF machine number of x86-64, recorded as the image architecture.
pub const ARCH_X86_64: u32 = 62;

/// The header page.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct FileHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// `size_of::<FileHeader>()` of the writer.
    pub header_size: u32,
    /// [`ARCH_X86_64`].
    pub arch: u32,
    /// [`PAGE`].
    pub page_size: u32,
    /// Byte offset of the metadata records.
    pub meta_offset: u64,
    /// Length of the metadata in bytes (without padding).
    pub meta_len: u64,
    /// xxh3-64 of the metadata bytes.
    pub meta_hash: u64,
    /// Byte offset of the first page of data.
    pub data_offset: u64,
    /// Total length of page data in bytes.
    pub data_len: u64,
    /// Byte offset of the trailer page.
    pub trailer_offset: u64,
    /// XCR0 of the checkpointing CPU (which xsave components the saved FPU frames contain).
    pub xcr0: u64,
    /// Size in bytes of the signal frame's xsave area on the checkpointing CPU.
    pub xsave_size: u32,
    /// Pid of the checkpointed process.
    pub pid: u32,
    /// CLOCK_REALTIME of the checkpoint, nanoseconds.
    pub time_ns: u64,
    /// `uname -r` of the checkpointing kernel, NUL padded.
    pub kernel_release: [u8; 64],
    /// xxh3-64 of this struct with this field zero.
    pub header_hash: u64,
}

/// The trailer page.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Trailer {
    /// [`TRAILER_MAGIC`].
    pub magic: [u8; 8],
    /// xxh3-64 over all page data in file order.
    pub data_hash: u64,
    /// Total image length, trailer included.
    pub total_len: u64,
    /// xxh3-64 of this struct with this field zero.
    pub trailer_hash: u64,
}

/// Header of one metadata record; `len` payload bytes follow, padded to 8.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct RecordHeader {
    /// One of the `REC_*` constants.
    pub kind: u32,
    /// Payload length (before padding).
    pub len: u32,
}

/// Record: [`ProcessRec`], followed by the raw auxv bytes.
pub const REC_PROCESS: u32 = 1;
/// Record: the current working directory path (bytes, no NUL).
pub const REC_CWD: u32 = 2;
/// Record: [`RegionRec`], followed by the mapped path (bytes, may be empty).
pub const REC_REGION: u32 = 3;
/// Record: an array of [`Extent`] belonging to the region record before it.
pub const REC_EXTENTS: u32 = 4;
/// Record: [`FdRec`], followed by the path (bytes).
pub const REC_FD: u32 = 5;
/// Record: [`ThreadRec`].
pub const REC_THREAD: u32 = 6;
/// Record: a warning text for the user (unsupported resource met at checkpoint time).
pub const REC_WARNING: u32 = 7;
/// Record: [`PipeDataRec`], followed by the bytes buffered in that pipe (the rest of the record).
pub const REC_PIPE_DATA: u32 = 8;
/// Record: [`FileDataRec`], followed by the contents of an unlinked open file.
pub const REC_FILE_DATA: u32 = 9;
/// Record (optional): `tree::ShareRec[n]`, open file descriptions shared between the processes
/// of a forwarded checkpoint whose images follow this one back to back (`proc` 0 = this image,
/// then each following image in order); only in the first image. Several records append.
pub const REC_SHARES: u32 = REC_OPTIONAL | 10;
/// Record (optional): [`RegionFsRec`], detail of the region record before it (and its extents):
/// the region's memory belongs to a RAM-backed file system (a tmpfs file, hugetlb memory). A
/// reader that skips it re-creates the region as its `kind` says (shared or private memory of
/// normal pages, with the saved contents).
pub const REC_REGION_FS: u32 = REC_OPTIONAL | 11;
/// Record (optional): [`FdOwnerRec`], the async-I/O owner and signal of a descriptor
/// (`F_GETOWN_EX`, `F_GETSIG`), after its `REC_FD` record; written only when one is set.
pub const REC_FD_OWNER: u32 = REC_OPTIONAL | 12;
/// Record (version 4): [`KobjRec`], then the state of the kernel object behind the
/// [`FdKind::Kernel`] descriptor of the `REC_FD` record just before it (see `crate::kinds`).
pub const REC_KOBJ: u32 = 13;
/// Record (optional): [`SysvShmRec`], after a `SharedContent` region's record (and its extents,
/// and any `REC_REGION_FS`): the region is a whole SysV shared memory segment. A reader that
/// skips it re-creates the region as plain shared memory with the saved contents.
pub const REC_REGION_SYSV: u32 = REC_OPTIONAL | 14;
/// Record (optional): [`RegionThpRec`], after a private anonymous region's record (and its
/// extents, and any other detail): transparent huge pages mapped part of the region at the
/// checkpoint (`PAGEMAP_SCAN`'s `PAGE_IS_HUGE`). The restart advises the region
/// `MADV_HUGEPAGE` before it reads the pages in, so an eager restart gives it huge pages again
/// (and the program the advice it most likely gave: where THP is `madvise`, only advised memory
/// gets them). A reader that skips it restores the region in 4 KiB pages, as before.
pub const REC_REGION_THP: u32 = REC_OPTIONAL | 40;

/// Payload of [`REC_REGION_THP`] (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct RegionThpRec {
    /// Bytes of the region that huge pages mapped at the checkpoint.
    pub huge_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<RegionThpRec>() == 8);
/// Record (optional): [`FdSavedRec`], after the `REC_FD` record of a regular file under a
/// temporary directory (/tmp, /var/tmp, /dev/shm, /run/user/UID, `$TMPDIR`) whose contents are
/// in the `REC_FILE_DATA` record of its device and inode: at restart the file is re-created at
/// its path when it is missing or its size or modification time differ. An older reader skips
/// it (the file is reopened by path as any other).
pub const REC_FD_SAVED: u32 = REC_OPTIONAL | 16;
/// Optional record: [`SavedDirRec`], then the directory's path: a directory between a
/// temporary directory and a file saved by content under it (`REC_FD_SAVED`, a region of
/// [`FS_TEMPDIR`]): re-created with this mode (and owner, as root) when the program's cleanup
/// removed it (Open MPI's session directory). Written once per directory and image. An older
/// reader skips it (it creates missing directories with default modes, or fails).
pub const REC_SAVED_DIR: u32 = REC_OPTIONAL | 22;

/// Optional record: [`CreatedSavedRec`], then the file's path: a regular file under a temporary
/// directory that the process created with `mkstemp` or its kin (noted by the preload stub) and
/// that nobody of the process had open at checkpoint time (gcc's `/tmp/cc*.s` between cc1 and
/// `as`), saved by content (`REC_FILE_SPAN` of its `dev`/`ino`, before this record). Put back
/// at its path at restart as a `REC_FD_SAVED` file is. An older reader skips it.
pub const REC_CREATED_SAVED: u32 = REC_OPTIONAL | 23;

/// Optional record: [`SavedOwnerRec`]: the owner of a file saved by content for a
/// `REC_FD_SAVED` or `REC_CREATED_SAVED` record (of the same `dev`/`ino`), written after the
/// file's `REC_FILE_SPAN`. A file put back at restart is given this owner as far as the
/// restarting user may set it (as root both ids, else the group when the user is in it). An
/// older reader skips it (the restarting user owns the file).
pub const REC_SAVED_OWNER: u32 = REC_OPTIONAL | 24;

/// Payload of [`REC_SAVED_OWNER`] (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct SavedOwnerRec {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Owner at checkpoint time.
    pub uid: u32,
    /// Group at checkpoint time.
    pub gid: u32,
}
const _: () = assert!(core::mem::size_of::<SavedOwnerRec>() == 24);

/// Payload of [`REC_CREATED_SAVED`] (64 bytes), followed by the path.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct CreatedSavedRec {
    /// Size, modification time, mode and why ([`SAVED_TMP`] or [`SAVED_DIR`]); `fd` is -1.
    pub saved: FdSavedRec,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Length of the path after this record.
    pub path_len: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CreatedSavedRec>() == 64);

/// Payload of [`REC_SAVED_DIR`] (16 bytes), followed by the path.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct SavedDirRec {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner (re-applied when cr_restart runs as root).
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length of the path after this record.
    pub path_len: u32,
}
const _: () = assert!(core::mem::size_of::<SavedDirRec>() == 16);
/// Record (version 5, delta images only): [`ParentRec`], then the parent image's path: this
/// image holds only the pages written since its parent was taken; every region followed by a
/// [`REC_REGION_INCR`] record takes its other pages from the parent chain. Required: a reader
/// that does not know it must not restore the image (version 5 makes older readers refuse it).
pub const REC_PARENT: u32 = 32;
/// Record (version 5, delta images only): after a region's records (its extents and any
/// detail), `[start, end)` pairs of `u64` (page aligned): the region is incremental. Its pages
/// in its extents were written since the parent; the pages in these ranges are zero now
/// (dropped, or never populated); every other page is the parent chain's (newest wins).
pub const REC_REGION_INCR: u32 = 33;

/// Fixed part of [`REC_PARENT`] (24 bytes); `path_len` bytes of path follow.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct ParentRec {
    /// The parent's total length (its trailer's `total_len`).
    pub size: u64,
    /// The parent's `trailer_hash` (covers its data hash and length).
    pub trailer_hash: u64,
    /// Links behind this image: 1 when the parent is a full image.
    pub depth: u32,
    /// Bytes of path after this struct: relative to this image's directory, or absolute.
    pub path_len: u32,
}

/// Record (version 6, compressed images only): [`ZFrame`]`[n]`: how the memory pages are
/// stored. The extents keep their `file_off` in the *raw* page data (as if uncompressed, tiling
/// it in order); the frames tile that raw page data in order, none crossing an extent, and say
/// where each piece is in the data area: stored as is (page aligned, so it can be mapped) or as
/// one zstd frame. The saved files' contents follow the stored page data (padded to a page).
/// Required: a reader that does not know it would read frames as pages.
pub const REC_ZFRAMES: u32 = 34;

/// Record (version 6, compressed images, optional): [`ZOrigin`]: the trailer hash and total
/// length of the raw image the agent wrote, of which this image is the compressed form. A
/// delta image names its parent by them (the agent only knows the raw image), so a compressed
/// image can be a parent. Optional: an older reader only cannot follow such a chain.
pub const REC_ZORIGIN: u32 = REC_OPTIONAL | 35;

/// The body of [`REC_ZORIGIN`], 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct ZOrigin {
    /// The raw image's `trailer_hash`.
    pub trailer_hash: u64,
    /// The raw image's `total_len`.
    pub total_len: u64,
}
const _: () = assert!(core::mem::size_of::<ZOrigin>() == 16);

/// Stream record (never in a file): the image stream an agent writes into `cr_checkpoint
/// --compress`'s pipe carries it before `REC_END` when the agent writes part of its page data
/// to the file itself (a split image, see docs/IMAGE-FORMAT.md "Compressed images"):
/// [`ZPlan`], then one bit per piece (pieces as [`crate::image::compress::for_each_piece`]
/// cuts them, least significant bit first; 1: sampled incompressible, always written by the
/// agent). Which other pieces the agent also wrote (the compressor was behind) is only known as
/// the stream goes: each piece in the stream comes after its index (a `u64`), and the page data
/// ends with [`ZPLAN_END`]; every piece not in the stream the agent wrote, back to back from the
/// compressed image's data area on, in file order. `cr_checkpoint` drops the record from the
/// image it writes. (Kind 36 was the plan of agents before 2026-12-07 04:40, with every piece
/// in its bits and no indices in the stream; they sent it only on request flag 0x10000, which
/// no longer asks for it.)
pub const REC_ZPLAN: u32 = 37;

/// The index that ends the page data of a split image's stream (see [`REC_ZPLAN`]).
pub const ZPLAN_END: u64 = u64::MAX;

/// Set in a piece's index in a split image's stream (see [`REC_ZPLAN`]) when the piece's bytes
/// do not follow: `cr_checkpoint` reads them from the stopped process's memory itself
/// (`process_vm_readv`, `protocol::FLAG_ZPULL`) and answers each with a byte on the request's
/// acknowledgement pipe ([`crate::protocol::ZPULL_DONE`]); the first one refused
/// ([`crate::protocol::ZPULL_REFUSED`]) is followed by the piece's bytes after all, and the
/// rest of the stream by bytes as without pulls.
pub const ZPLAN_PULL: u64 = 1 << 62;

/// Set in a piece's index in a split image's stream (see [`REC_ZPLAN`]) when the agent
/// compressed the piece itself (`protocol::FLAG_ZPACK`, `agent::zpack`): a little-endian `u64`,
/// the frame's length (at most [`ZPACK_MAX`]), then that one zstd frame (content size and
/// checksum in it), which `cr_checkpoint` stores as it is (`ZFRAME_ZSTD`). Its bytes, not the
/// piece's, count in the stream's hash ([`ZPLAN_HASH_AT`]).
pub const ZPLAN_PACKED: u64 = 1 << 61;

/// Longest frame a packed piece ([`ZPLAN_PACKED`]) may have: a frame that saves less than 1/16
/// is stored raw instead, so this is far above any real one.
pub const ZPACK_MAX: u64 = 2 << 20;

/// The head of [`REC_ZPLAN`], 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct ZPlan {
    /// Pieces (bits that follow).
    pub npieces: u64,
    /// Bytes of the pieces whose bit is set.
    pub raw_len: u64,
    /// Where the agent wrote them: the compressed image's `data_offset`, as the agent
    /// computed it (`image::compress::compressed_meta_len`); `cr_checkpoint` checks it.
    pub data_offset: u64,
}
const _: () = assert!(core::mem::size_of::<ZPlan>() == 24);

/// Byte of the trailer page of a split image's stream (see [`REC_ZPLAN`]) that holds the xxh3
/// of the page data in the stream (the pieces the agent did not write; of a packed piece,
/// [`ZPLAN_PACKED`], its frame's bytes), in file order.
pub const ZPLAN_HASH_AT: usize = 64;

/// [`ZFrame::method`]: the bytes are stored as they are.
pub const ZFRAME_RAW: u32 = 0;
/// [`ZFrame::method`]: the bytes are one zstd frame (with its content checksum).
pub const ZFRAME_ZSTD: u32 = 1;

/// One piece of the page data of a compressed image (see [`REC_ZFRAMES`]), 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct ZFrame {
    /// Offset of its bytes in the raw page data (as an extent's `file_off`).
    pub raw_off: u64,
    /// Offset of the stored bytes from `FileHeader::data_offset` (page aligned when raw).
    pub stored_off: u64,
    /// Stored length in bytes.
    pub stored_len: u64,
    /// Raw length in bytes (a page multiple).
    pub raw_len: u32,
    /// [`ZFRAME_RAW`] or [`ZFRAME_ZSTD`].
    pub method: u32,
}
const _: () = assert!(core::mem::size_of::<ZFrame>() == 32);

/// Record: [`FileSpanRec`]: the contents of a saved file (unlinked, or under a temporary
/// directory, or open for writing) are in the data area, after the memory pages, instead of in
/// a `REC_FILE_DATA` record. Not optional: a reader that does not know it could not tell the
/// data area's layout (it refuses the image: "unknown record 19").
pub const REC_FILE_SPAN: u32 = 19;
/// Record (optional): [`SysvSemRec`], then `nsems` × `u16` values: a SysV semaphore set this
/// process was the last to operate on (`GETPID`). A reader that skips it does not restore it.
pub const REC_SYSV_SEM: u32 = REC_OPTIONAL | 15;
/// Record (optional): [`SysvMsgRec`], then each queued message in queue order as `len: u64`,
/// `mtype: i64` and `len` bytes of text, padded to 8: a SysV message queue this process was the
/// last to operate on (`lspid`/`lrpid` of the later of `msg_stime`/`msg_rtime`, `lspid` when
/// equal), its messages copied without taking them (`msgrcv` with `MSG_COPY`). A reader that
/// skips it does not restore the queue.
pub const REC_SYSV_MSG: u32 = REC_OPTIONAL | 17;
/// Record (optional): [`KobjRec`], then the state of the socket behind the `Inherited`
/// descriptor (0-2) of the `REC_FD` record just before it, in `REC_KOBJ`'s form. A socket
/// whose other end is in the restart job (a launcher's unix socket pair on a child's standard
/// input) comes back connected to it; one whose other end is not stays cr_restart's own, as
/// without this record (which is what an older reader does).
pub const REC_STDIO_KOBJ: u32 = REC_OPTIONAL | 21;
/// The next `REC_FD` record is not one of the program's descriptors but a descriptor in flight
/// in a unix socket's queue (`SCM_RIGHTS`), recorded so that the restart can send it again
/// (`kinds::unix::InFlight` names it); no payload. Optional: an older reader places it in the
/// process as a descriptor of its number.
pub const REC_FD_IN_FLIGHT: u32 = REC_OPTIONAL | 25;
/// Optional record: [`CredsRec`], then `ngroups` × `u32` supplementary groups: the process's
/// credentials at checkpoint time (those of its main thread). At restart a privileged
/// `cr_restart` (`CAP_SETUID` and `CAP_SETGID`, `setgroups` allowed) gives the process exactly
/// these ids, and at most these capabilities; an unprivileged one only ids among its own
/// (`restore::creds`). An older reader skips it (the process runs with the restarter's ids).
pub const REC_CREDS: u32 = REC_OPTIONAL | 36;

/// Payload of [`REC_CREDS`] (80 bytes), followed by `ngroups` groups (`u32` each).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct CredsRec {
    /// Real, effective, saved and file-system uid.
    pub uid: [u32; 4],
    /// Real, effective, saved and file-system gid.
    pub gid: [u32; 4],
    /// Number of supplementary groups after this record.
    pub ngroups: u32,
    /// Zero.
    pub _pad: u32,
    /// Inheritable capabilities (bit N: capability N).
    pub cap_inh: u64,
    /// Permitted capabilities.
    pub cap_prm: u64,
    /// Effective capabilities.
    pub cap_eff: u64,
    /// Bounding set.
    pub cap_bnd: u64,
    /// Ambient capabilities.
    pub cap_amb: u64,
}
const _: () = assert!(core::mem::size_of::<CredsRec>() == 80);

/// Last record.
pub const REC_END: u32 = 0xffff;

/// Fields of `struct prctl_mm_map` (kernel `PR_SET_MM_MAP`) that the restart re-applies.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub struct MmFields {
    /// Start of the executable's text.
    pub start_code: u64,
    /// End of the executable's text.
    pub end_code: u64,
    /// Start of initialised data.
    pub start_data: u64,
    /// End of initialised data.
    pub end_data: u64,
    /// Start of the brk heap.
    pub start_brk: u64,
    /// Current program break.
    pub brk: u64,
    /// Initial stack pointer area (marks the `[stack]` mapping).
    pub start_stack: u64,
    /// argv strings start.
    pub arg_start: u64,
    /// argv strings end.
    pub arg_end: u64,
    /// environment strings start.
    pub env_start: u64,
    /// environment strings end.
    pub env_end: u64,
}

/// Process-wide state.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct ProcessRec {
    /// Pid at checkpoint time.
    pub pid: i32,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// File mode creation mask.
    pub umask: u32,
    /// Number of thread records.
    pub nthreads: u32,
    /// mm fields for `PR_SET_MM_MAP`.
    pub mm: MmFields,
    /// Address of the agent's restart entry point.
    pub entry: u64,
    /// Top of the agent's restore stack.
    pub restore_stack_top: u64,
    /// `fs` base of the thread the restart loader's thread becomes.
    pub leader_fs: u64,
    /// Soft and hard limit of every `RLIMIT_*` (index = resource).
    pub rlimits: [[u64; 2]; 16],
    /// Length of the auxv bytes after this record.
    pub auxv_len: u32,
    /// Reserved.
    pub _pad: u32,
}

/// A thread (informational for tools; the agent keeps its own copy in restored memory).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct ThreadRec {
    /// Thread id at checkpoint time.
    pub tid: i32,
    /// 1 for the agent's control thread.
    pub is_control: u32,
    /// `fs` base.
    pub fs_base: u64,
    /// Saved stack pointer of its resumable context.
    pub ctx_rsp: u64,
    /// Thread name (`comm`), NUL padded.
    pub comm: [u8; 16],
}

wire_enum! {
    /// How a memory region is stored and re-created.
    pub enum RegionKind {
        /// Private anonymous memory (incl. `[heap]`, thread stacks): saved pages, others zero.
        Anon = 1,
        /// The main thread's `[stack]` (grows down).
        Stack = 2,
        /// Private mapping of a file that still exists: file by reference + modified pages.
        FilePrivate = 3,
        /// Shared mapping of a file that still exists: by reference only (data lives in the
        /// file).
        FileShared = 4,
        /// Shared memory with no file to return to (shared anonymous, memfd, deleted file, SysV):
        /// every resident page saved, restored as a shared memfd mapping.
        SharedContent = 5,
        /// Private mapping of a deleted file: every page saved, restored as private anonymous
        /// memory.
        PrivateContent = 6,
        /// `[vdso]`: moved into place at restart, never saved.
        Vdso = 7,
        /// `[vvar]`: moved together with the vdso.
        Vvar = 8,
        /// `[vvar_vclock]` (kernel 6.13+): moved together with the vdso.
        VvarVclock = 9,
    }
}

impl RegionKind {
    /// Whether this kind is one of the kernel's special mappings.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            RegionKind::Vdso | RegionKind::Vvar | RegionKind::VvarVclock
        )
    }
}

/// One memory region (one line of `/proc/self/maps`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct RegionRec {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// File offset of `start` for file mappings.
    pub offset: u64,
    /// Device of the mapped file (`st_dev`).
    pub dev: u64,
    /// Inode of the mapped file.
    pub ino: u64,
    /// Size of the mapped file at checkpoint time.
    pub file_size: u64,
    /// Modification time of the file, seconds.
    pub mtime_sec: i64,
    /// Modification time of the file, nanoseconds.
    pub mtime_nsec: i64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// [`RegionKind`] as u32.
    pub kind: u32,
    /// Number of extents in the following `REC_EXTENTS` record.
    pub n_extents: u32,
    /// Length of the path after this record.
    pub path_len: u32,
}

/// [`RegionFsRec::fs`]: a file on tmpfs (`TMPFS_MAGIC`): `SharedContent` is re-created as a
/// shared mapping of the file at the region's path (the file re-created there with the saved
/// pages when it is gone), `PrivateContent` as a private mapping of the file when it is still
/// there unchanged (else private memory), the saved pages on top.
pub const FS_TMPFS: u32 = 1;
/// [`RegionFsRec::fs`]: hugetlb memory (`MAP_HUGETLB`, a hugetlbfs file, a `MFD_HUGETLB` memfd):
/// re-created with huge pages of [`RegionFsRec::page_size`].
pub const FS_HUGETLB: u32 = 2;
/// [`RegionFsRec::fs`]: a file shared-mapped under a temporary directory (/tmp, /var/tmp,
/// /run/user/UID, `$TMPDIR`, `--save-dir`) on a file system that is not tmpfs: saved and
/// restored as [`FS_TMPFS`] (a reader that does not know it restores the region as its kind
/// says: shared memory with the saved contents, the file not re-created).
pub const FS_TEMPDIR: u32 = 3;

/// Payload of [`REC_REGION_FS`] (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct RegionFsRec {
    /// [`FS_TMPFS`] or [`FS_HUGETLB`].
    pub fs: u32,
    /// Permission bits of the file (`st_mode & 0o7777`; tmpfs files).
    pub mode: u32,
    /// Owner of the file (tmpfs files; re-applied when cr_restart runs as root).
    pub uid: u32,
    /// Group of the file.
    pub gid: u32,
    /// The region's page size (`KernelPageSize` in smaps; 4096 for tmpfs files).
    pub page_size: u64,
}
const _: () = assert!(core::mem::size_of::<RegionFsRec>() == 24);

/// Payload of [`REC_REGION_SYSV`] (24 bytes), from `/proc/sysvipc/shm`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct SysvShmRec {
    /// Its key (`IPC_PRIVATE` = 0, also once removed with `IPC_RMID`).
    pub key: i32,
    /// Its id (the inode number `/proc/PID/maps` shows).
    pub shmid: i32,
    /// `shm_perm.mode`: permission bits, with `SHM_DEST` (0o1000) once removed with `IPC_RMID`.
    pub mode: u32,
    /// Reserved (0).
    pub _pad: u32,
    /// Size in bytes (`shm_segsz`).
    pub size: u64,
}
const _: () = assert!(core::mem::size_of::<SysvShmRec>() == 24);

/// Head of [`REC_SYSV_SEM`] (16 bytes), from `/proc/sysvipc/sem`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct SysvSemRec {
    /// Its key (`IPC_PRIVATE` = 0).
    pub key: i32,
    /// Its id.
    pub semid: i32,
    /// Permission bits.
    pub mode: u32,
    /// Number of semaphores (values follow).
    pub nsems: u32,
}
const _: () = assert!(core::mem::size_of::<SysvSemRec>() == 16);

/// Head of [`REC_SYSV_MSG`] (32 bytes), from `/proc/sysvipc/msg` and `IPC_STAT`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct SysvMsgRec {
    /// Its key (`IPC_PRIVATE` = 0).
    pub key: i32,
    /// Its id.
    pub msqid: i32,
    /// Permission bits.
    pub mode: u32,
    /// Owner (`msg_perm.uid`).
    pub uid: u32,
    /// Owner group (`msg_perm.gid`).
    pub gid: u32,
    /// Reserved (0).
    pub _pad: u32,
    /// Most bytes the queue may hold (`msg_qbytes`).
    pub qbytes: u64,
}
const _: () = assert!(core::mem::size_of::<SysvMsgRec>() == 32);

/// A run of saved pages: `len` bytes at address `addr`, stored `file_off` bytes after the start
/// of the page data (`FileHeader::data_offset`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Address of the first page.
    pub addr: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
    /// Offset from the start of the page data (page aligned).
    pub file_off: u64,
}

wire_enum! {
    /// What an open file descriptor refers to.
    pub enum FdKind {
        /// Regular file, reopened by path at its offset.
        Regular = 1,
        /// Directory, reopened by path.
        Directory = 2,
        /// Character device (`/dev/null`, `/dev/zero`, …), reopened by path.
        CharDevice = 3,
        /// Terminal, pipe, socket or other on fd 0–2: taken from cr_restart.
        Inherited = 4,
        /// Pipe or FIFO end leading outside the checkpoint: replaced by cr_restart's stdin/stdout.
        Pipe = 5,
        /// Anything else (socket, eventfd, epoll, …): not restored; a warning was recorded.
        Unsupported = 6,
        /// The file this very image was written to (a self-checkpoint's destination): reopened by
        /// path without truncation, positioned at its end.
        CheckpointFile = 7,
        /// A regular file that was unlinked while open: its contents are in a `REC_FILE_DATA`
        /// record; restored as a new unlinked file with that content, at the saved offset.
        Unlinked = 8,
        /// A kernel object with a module in `crate::kinds` (eventfd, timerfd, signalfd, epoll):
        /// its state is in the `REC_KOBJ` record that follows (version 4).
        Kernel = 9,
    }
}

/// One open file descriptor.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct FdRec {
    /// Descriptor number.
    pub fd: i32,
    /// [`FdKind`] as u32.
    pub kind: u32,
    /// File status flags (`F_GETFL`).
    pub flags: i32,
    /// Descriptor flags (`F_GETFD`: close-on-exec).
    pub fd_flags: i32,
    /// File offset.
    pub offset: i64,
    /// File size at checkpoint time (regular files).
    pub size: i64,
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_mode`.
    pub mode: u32,
    /// Length of the path after this record.
    pub path_len: u32,
    /// Lowest descriptor of this process that shares this one's open file description (dup'd or
    /// inherited together): this fd itself when none does.
    pub dup_of: i32,
    /// Capacity of the pipe (`F_GETPIPE_SZ`) for pipes and FIFOs, else 0.
    pub pipe_size: u32,
}

/// Who gets a descriptor's async-I/O signals (`O_ASYNC`), and which signal.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct FdOwnerRec {
    /// Descriptor number (of the `REC_FD` record just before).
    pub fd: i32,
    /// `F_OWNER_TID` (0), `F_OWNER_PID` (1) or `F_OWNER_PGRP` (2).
    pub owner_type: i32,
    /// The owner's id as the process saw it (0: none).
    pub owner_pid: i32,
    /// `F_GETSIG` (0: `SIGIO`).
    pub signal: i32,
}
/// Which kernel object a `REC_KOBJ` record holds; its state follows.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct KobjRec {
    /// The descriptor (that of the `REC_FD` record before it).
    pub fd: i32,
    /// The kind (`crate::kinds::EVENTFD`, …).
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<KobjRec>() == 8);

/// The bytes buffered in one pipe at checkpoint time (copied with `tee`, not consumed).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct PipeDataRec {
    /// Inode of the pipe.
    pub ino: u64,
    /// Capacity of the pipe.
    pub pipe_size: u32,
    /// `PIPE_*` flags (0 in images written before they existed).
    pub flags: u32,
}

/// [`PipeDataRec::flags`]: nobody had the pipe open for writing at checkpoint time (its writers
/// had exited), so a reader gets the saved bytes and then end of file. Such a pipe is restored
/// with its read ends only, although no write end is part of the job.
pub const PIPE_NO_WRITERS: u32 = 1;

/// The contents of an open file that was unlinked (saved once per file).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct FileDataRec {
    /// `st_dev` of the file.
    pub dev: u64,
    /// `st_ino` of the file.
    pub ino: u64,
}

/// A file under a temporary directory saved by content (see [`REC_FD_SAVED`]): what the
/// restart compares with the file it finds at the path, and the mode it re-creates it with.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct FdSavedRec {
    /// Descriptor number (of the `REC_FD` record just before).
    pub fd: i32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size at checkpoint time.
    pub size: i64,
    /// Modification time at checkpoint time: seconds.
    pub mtime_sec: i64,
    /// Modification time at checkpoint time: nanoseconds.
    pub mtime_nsec: i64,
    /// Why it was saved: [`SAVED_TMP`], [`SAVED_DIR`] or [`SAVED_WRITTEN`] (absent in the
    /// first, 32-byte records: [`SAVED_TMP`]).
    pub why: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FdSavedRec>() == 40);

/// [`FdSavedRec::why`]: the file is under a default temporary directory (/tmp, /var/tmp,
/// /dev/shm, /run/user/UID, `$TMPDIR`).
pub const SAVED_TMP: u32 = 0;
/// [`FdSavedRec::why`]: the file is under a directory given with `cr_checkpoint --save-dir`.
pub const SAVED_DIR: u32 = 1;
/// [`FdSavedRec::why`]: the file was open for writing (`cr_checkpoint --save-written`): at
/// restart it is re-created only when it is missing; one that exists is cut back to its
/// checkpoint size as any file being written.
pub const SAVED_WRITTEN: u32 = 2;

/// Most bytes of files under temporary directories one process's image saves by default
/// (`cr_checkpoint --save-tmp-limit`), and of files open for writing with `--save-written`.
pub const MAX_SAVED_TMP_TOTAL: i64 = 1 << 30;

/// Where a saved file's contents lie (see [`REC_FILE_SPAN`]).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct FileSpanRec {
    /// `st_dev` of the file.
    pub dev: u64,
    /// `st_ino` of the file.
    pub ino: u64,
    /// Bytes of contents.
    pub size: u64,
    /// Offset of the contents in the saved-file area (which follows the memory pages in the
    /// data area); page aligned, each file's bytes padded with zeros to a page multiple.
    pub data_off: u64,
    /// xxh3-64 of the `size` bytes of contents.
    pub hash: u64,
}
const _: () = assert!(core::mem::size_of::<FileSpanRec>() == 40);

/// Largest unlinked open file whose contents a checkpoint saves (larger ones are closed at
/// restart, with a warning at checkpoint time).
pub const MAX_UNLINKED_FILE: i64 = 16 << 20;

/// Size of the fixed part of record `kind` as written by format `version` (records grow only by
/// appending fields; this table says where each version's fixed part ends).
pub fn fixed_size(kind: u32, version: u32) -> Option<usize> {
    use core::mem::size_of;
    Some(match kind {
        REC_PROCESS => size_of::<ProcessRec>(),
        REC_REGION => size_of::<RegionRec>(),
        REC_FD => size_of::<FdRec>(),
        REC_THREAD => size_of::<ThreadRec>(),
        REC_PIPE_DATA => size_of::<PipeDataRec>(),
        REC_FILE_DATA => size_of::<FileDataRec>(),
        REC_KOBJ if version >= 4 => size_of::<KobjRec>(),
        _ => return None,
    })
}

/// Rounds `n` up to a page multiple.
pub const fn page_align(n: u64) -> u64 {
    (n + PAGE as u64 - 1) & !(PAGE as u64 - 1)
}

/// Rounds `n` up to a multiple of 8.
pub const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// xxh3-64 of a byte slice (the one hash function of the format).
pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Hash of a whole header or trailer page whose hash field (the struct's last 8 bytes) is taken
/// as zero: padding bytes are covered too.
pub fn page_hash(page: &[u8], struct_size: usize) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&page[..struct_size - 8]);
    h.update(&[0u8; 8]);
    h.update(&page[struct_size..]);
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes docs/IMAGE-FORMAT.md documents.
    #[test]
    fn record_sizes_match_the_documentation() {
        use core::mem::size_of;
        assert_eq!(size_of::<FileHeader>(), 168);
        assert_eq!(size_of::<Trailer>(), 32);
        assert_eq!(size_of::<RecordHeader>(), 8);
        assert_eq!(size_of::<ProcessRec>(), 400);
        assert_eq!(size_of::<RegionRec>(), 80);
        assert_eq!(size_of::<Extent>(), 24);
        assert_eq!(size_of::<FdRec>(), 64);
        assert_eq!(size_of::<PipeDataRec>(), 16);
        assert_eq!(size_of::<FdOwnerRec>(), 16);
        assert_eq!(size_of::<FileDataRec>(), 16);
        assert_eq!(size_of::<ThreadRec>(), 40);
        assert_eq!(size_of::<ParentRec>(), 24);
    }

    #[test]
    fn page_hash_covers_padding() {
        let mut page = vec![0u8; PAGE];
        let h1 = page_hash(&page, 32);
        page[24] = 1; // inside the hash field: ignored
        assert_eq!(page_hash(&page, 32), h1);
        page[4000] = 1; // padding: covered
        assert_ne!(page_hash(&page, 32), h1);
    }
}
