//! Tree images: several processes checkpointed together (`cr_checkpoint -T/-g/-s`).
//!
//! ```text
//! offset 0      manifest: TreeHeader, TreeProc[nproc], ShareRec[nshare], ZombieRec[nzombie],
//!               zero padded to a page
//! len           the image of process `first`, then of `first + 1`, … (`count` images), each a
//!               complete single-process image (see format.rs), back to back
//! ```
//! One file holds every image (`count == nproc`), or, with `cr_checkpoint --dir`, each
//! `context.PID` file holds the whole manifest and one image. Single-process checkpoints are
//! written as plain images, without a manifest. The manifest is written by `cr_checkpoint`; the
//! images by each process's agent through the same file description: at once, each at the
//! offset cr_checkpoint gave it (`checkpoint::cut::write_at_once`), or in turn.

use super::format::{hash, page_align, PAGE};
use super::reader::{Image, ImageError};
use bytemuck::{Pod, Zeroable};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// First eight bytes of a tree image.
pub const TREE_MAGIC: [u8; 8] = *b"LIBCRTRE";
/// Manifest version written by this build; readers accept exactly this one.
pub const TREE_VERSION: u32 = 1;
/// Most processes in one tree image.
pub const MAX_PROCS: usize = 256;

/// Start of the manifest.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct TreeHeader {
    /// [`TREE_MAGIC`].
    pub magic: [u8; 8],
    /// [`TREE_VERSION`].
    pub version: u32,
    /// Processes in the checkpoint (entries in the process table).
    pub nproc: u32,
    /// Entries in the share table.
    pub nshare: u32,
    /// Index of the process whose image follows the manifest in this file.
    pub first: u32,
    /// Number of images in this file.
    pub count: u32,
    /// Scope of the checkpoint (`CR_SCOPE_*`).
    pub scope: i32,
    /// Entries in the zombie table.
    pub nzombie: u32,
    /// Reserved.
    pub _pad: u32,
    /// Length of the manifest in bytes (page multiple): where the first image starts.
    pub len: u64,
    /// CLOCK_REALTIME of the checkpoint, nanoseconds.
    pub time_ns: u64,
    /// xxh3-64 of the manifest's used bytes with this field zero.
    pub hash: u64,
}

/// One process of the checkpoint, in image order (parents before their children).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct TreeProc {
    /// Pid recorded in its image (the pid the process itself saw).
    pub pid: i32,
    /// Reserved.
    pub _pad: u32,
}

/// Descriptors with the same `group` share one open file description (offset and status flags),
/// across processes and within one (found with `kcmp(KCMP_FILE)` while all were stopped).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct ShareRec {
    /// Index of the process in the process table.
    pub proc: u32,
    /// Descriptor number in that process.
    pub fd: i32,
    /// Group number (same number: same description).
    pub group: u32,
    /// Reserved.
    pub _pad: u32,
}

/// A child of a checkpointed process that had exited but was not reaped yet (a zombie): restored
/// as a zombie, so its parent can still collect its status. Also the child through which a
/// program checkpointed itself (`system("cr_checkpoint $$")`: the shell or `cr_checkpoint`),
/// which is not saved: it is restored as a child that exited with status 0, its `SIGCHLD`
/// still due ([`ZOMBIE_SIGCHLD_DUE`]).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct ZombieRec {
    /// Its pid (as its parent saw it).
    pub pid: i32,
    /// Its parent's pid (a process of the checkpoint).
    pub ppid: i32,
    /// Its wait status (`waitpid` format).
    pub status: i32,
    /// `ZOMBIE_*` flags (0 in manifests written before they existed).
    pub flags: u32,
}

/// [`ZombieRec::flags`]: the child ended after the checkpoint (it was the requester's chain), so
/// its parent has not had its `SIGCHLD` yet: the restart leaves one pending.
pub const ZOMBIE_SIGCHLD_DUE: u32 = 1;

/// A parsed manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The header.
    pub header: TreeHeader,
    /// Process table.
    pub procs: Vec<TreeProc>,
    /// Share table.
    pub shares: Vec<ShareRec>,
    /// Zombie table.
    pub zombies: Vec<ZombieRec>,
}

fn used_len(nproc: usize, nshare: usize, nzombie: usize) -> usize {
    core::mem::size_of::<TreeHeader>()
        + nproc * core::mem::size_of::<TreeProc>()
        + nshare * core::mem::size_of::<ShareRec>()
        + nzombie * core::mem::size_of::<ZombieRec>()
}

/// Builds the manifest bytes (page padded) for images `first..first + count` of `pids`.
pub fn manifest_bytes(
    pids: &[i32],
    shares: &[ShareRec],
    zombies: &[ZombieRec],
    scope: i32,
    (first, count): (u32, u32),
    time_ns: u64,
) -> Vec<u8> {
    let used = used_len(pids.len(), shares.len(), zombies.len());
    let len = page_align(used as u64).max(PAGE as u64) as usize;
    let header = TreeHeader {
        magic: TREE_MAGIC,
        version: TREE_VERSION,
        nproc: pids.len() as u32,
        nshare: shares.len() as u32,
        first,
        count,
        scope,
        nzombie: zombies.len() as u32,
        _pad: 0,
        len: len as u64,
        time_ns,
        hash: 0,
    };
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(bytemuck::bytes_of(&header));
    for &pid in pids {
        out.extend_from_slice(bytemuck::bytes_of(&TreeProc { pid, _pad: 0 }));
    }
    for s in shares {
        out.extend_from_slice(bytemuck::bytes_of(s));
    }
    for z in zombies {
        out.extend_from_slice(bytemuck::bytes_of(z));
    }
    let h = hash(&out);
    out[core::mem::offset_of!(TreeHeader, hash)..][..8].copy_from_slice(&h.to_le_bytes());
    out.resize(len, 0);
    out
}

/// Reads the manifest at the start of `file`: `Ok(None)` when the file is a plain
/// single-process image.
pub fn read_manifest(file: &File) -> Result<Option<Manifest>, ImageError> {
    let mut head = [0u8; core::mem::size_of::<TreeHeader>()];
    let n = file.read_at(&mut head, 0)?;
    if n < 8 || head[..8] != TREE_MAGIC {
        return Ok(None);
    }
    if n < head.len() {
        return Err(ImageError::Corrupt("tree manifest"));
    }
    let header: TreeHeader = bytemuck::pod_read_unaligned(&head);
    if header.version != TREE_VERSION {
        return Err(ImageError::Version(header.version));
    }
    if header.nproc as usize > MAX_PROCS
        || header.nshare as usize > MAX_PROCS * 1024
        || header.nzombie as usize > MAX_PROCS * 64
        || header
            .first
            .checked_add(header.count)
            .is_none_or(|n| n > header.nproc)
    {
        return Err(ImageError::Malformed("tree manifest out of range".into()));
    }
    let used = used_len(
        header.nproc as usize,
        header.nshare as usize,
        header.nzombie as usize,
    );
    if used as u64 > header.len {
        return Err(ImageError::Malformed("tree manifest length".into()));
    }
    let mut bytes = vec![0u8; used];
    file.read_exact_at(&mut bytes, 0)?;
    bytes[core::mem::offset_of!(TreeHeader, hash)..][..8].fill(0);
    if hash(&bytes) != header.hash {
        return Err(ImageError::Corrupt("tree manifest"));
    }
    let mut at = core::mem::size_of::<TreeHeader>();
    let procs = (0..header.nproc)
        .map(|_| {
            let p: TreeProc = bytemuck::pod_read_unaligned(&bytes[at..at + 8]);
            at += 8;
            p
        })
        .collect();
    let shares = (0..header.nshare)
        .map(|_| {
            let s: ShareRec = bytemuck::pod_read_unaligned(&bytes[at..at + 16]);
            at += 16;
            s
        })
        .collect();
    let zombies = (0..header.nzombie)
        .map(|_| {
            let z: ZombieRec = bytemuck::pod_read_unaligned(&bytes[at..at + 16]);
            at += 16;
            z
        })
        .collect();
    Ok(Some(Manifest {
        header,
        procs,
        shares,
        zombies,
    }))
}

/// Opens every image of `file`: a plain image (followed by the images of the processes its
/// checkpoint was forwarded to, `cr_forward_checkpoint`, if any), or a tree image's `count`
/// images after its manifest (with the manifest).
pub fn open_all(file: &File) -> Result<(Option<Manifest>, Vec<Image>), ImageError> {
    let Some(m) = read_manifest(file)? else {
        let mut images = vec![Image::open(file)?];
        let len = file.metadata()?.len();
        loop {
            let end = images[images.len() - 1].header.trailer_offset + PAGE as u64;
            let mut magic = [0u8; 8];
            if end + PAGE as u64 > len
                || file.read_exact_at(&mut magic, end).is_err()
                || magic != super::format::MAGIC
                || images.len() == MAX_PROCS
            {
                break;
            }
            images.push(Image::open_at(file, end)?);
        }
        return Ok((None, images));
    };
    let mut m = m;
    let mut base = m.header.len;
    let mut images = Vec::new();
    for _ in 0..m.header.count {
        let img = Image::open_at(file, base)?;
        base = img.header.trailer_offset + PAGE as u64;
        images.push(img);
    }
    // A one-process checkpoint with a manifest (`cr_checkpoint -p` of its own caller) may be
    // followed by the images of the processes its callbacks forwarded it to: they join the job.
    if m.header.first + m.header.count == m.header.nproc {
        let len = file.metadata()?.len();
        let mut magic = [0u8; 8];
        while base + PAGE as u64 <= len
            && images.len() < MAX_PROCS
            && file.read_exact_at(&mut magic, base).is_ok()
            && magic == super::format::MAGIC
        {
            let img = Image::open_at(file, base)?;
            base = img.header.trailer_offset + PAGE as u64;
            m.procs.push(TreeProc {
                pid: img.header.pid as i32,
                _pad: 0,
            });
            m.header.nproc += 1;
            m.header.count += 1;
            images.push(img);
        }
    }
    Ok((Some(m), images))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_documentation() {
        assert_eq!(core::mem::size_of::<TreeHeader>(), 64);
        assert_eq!(core::mem::size_of::<ZombieRec>(), 16);
        assert_eq!(core::mem::size_of::<TreeProc>(), 8);
        assert_eq!(core::mem::size_of::<ShareRec>(), 16);
    }

    #[test]
    fn manifest_round_trip() {
        let shares = [ShareRec {
            proc: 1,
            fd: 3,
            group: 7,
            _pad: 0,
        }];
        let zombies = [ZombieRec {
            pid: 12,
            ppid: 10,
            status: 3 << 8,
            flags: ZOMBIE_SIGCHLD_DUE,
        }];
        let bytes = manifest_bytes(&[10, 11], &shares, &zombies, 1, (0, 2), 5);
        assert_eq!(bytes.len(), PAGE);
        let path = std::env::temp_dir().join(format!("libcr-tree-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let f = File::open(&path).unwrap();
        let m = read_manifest(&f).unwrap().unwrap();
        assert_eq!(m.procs.len(), 2);
        assert_eq!(m.procs[1].pid, 11);
        assert_eq!(m.shares, shares);
        assert_eq!(m.zombies, zombies);
        let mut bad = bytes.clone();
        bad[60] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let f = File::open(&path).unwrap();
        assert!(read_manifest(&f).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
