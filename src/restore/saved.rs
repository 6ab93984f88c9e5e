//! Files under temporary directories that travel in the image (`REC_FD_SAVED`): put back at
//! their path before the descriptor is reopened, when the program's own cleanup (or a new node)
//! took them away.

use super::RestoreError;
use crate::image::format::{FdSavedRec, SAVED_WRITTEN};
use crate::image::reader::{Fd, Image, SavedContents};
use std::ffi::OsStr;
use std::fs::{File, FileTimes, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Files up to this size that match the checkpoint's size and modification time are compared by
/// content too (the hash of their saved contents): a small file rewritten in place keeps its size,
/// and its modification time can be set back (`touch -d`, `tar -x`, a copy with `cp -p`).
pub const HASH_COMPARE_MAX: u64 = 1 << 20;

/// Whether the file at `path` is the one the checkpoint saw: a regular file of the same size and
/// modification time and, when it is at most [`HASH_COMPARE_MAX`] bytes and an image holds its
/// saved contents (`key`), of the same contents (their xxh3-64).
fn matches(images: &[&Image], path: &Path, key: (u64, u64), s: &FdSavedRec) -> bool {
    let same_stat = std::fs::metadata(path).is_ok_and(|m| {
        m.is_file()
            && m.size() as i64 == s.size
            && m.mtime() == s.mtime_sec
            && m.mtime_nsec() == s.mtime_nsec
    });
    if !same_stat || s.size < 0 || s.size as u64 > HASH_COMPARE_MAX {
        return same_stat;
    }
    let Some(want) = images
        .iter()
        .find_map(|img| match img.saved_contents(key)? {
            SavedContents::Bytes(d) => Some(xxhash_rust::xxh3::xxh3_64(d)),
            SavedContents::Span { size, hash, .. } => (size == s.size as u64).then_some(hash),
        })
    else {
        return true; // contents not in the image: size and time are all there is
    };
    std::fs::read(path).is_ok_and(|d| xxhash_rust::xxh3::xxh3_64(&d) == want)
}

/// Writes the saved contents of the file `key` (from the image of the job that holds them:
/// `images[i]` is read from `files[i]`) into `out` from its start, checking their hash; returns
/// false when no image holds them. `name` names the file in errors.
pub fn write_contents(
    images: &[&Image],
    files: &[&File],
    key: (u64, u64),
    out: &File,
    name: &str,
) -> Result<bool, RestoreError> {
    let Some((c, file)) = images
        .iter()
        .zip(files)
        .find_map(|(img, file)| img.saved_contents(key).map(|c| (c, file)))
    else {
        return Ok(false);
    };
    let io = |what: &str, e: std::io::Error| {
        RestoreError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot re-create the saved file {name}: {what}: {e}"),
        )
    };
    match c {
        SavedContents::Bytes(d) => out.write_all_at(d, 0).map_err(|e| io("write", e))?,
        SavedContents::Span { offset, size, hash } => {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            let mut buf = vec![0u8; (4 << 20).min(size as usize)];
            let mut done = 0u64;
            while done < size {
                let n = ((size - done) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], offset + done)
                    .map_err(|e| io("read the image", e))?;
                h.update(&buf[..n]);
                out.write_all_at(&buf[..n], done)
                    .map_err(|e| io("write", e))?;
                done += n as u64;
            }
            if h.digest() != hash {
                return Err(RestoreError::new(
                    libc::EINVAL,
                    format!("corrupt image: saved contents of {name}: checksum mismatch"),
                ));
            }
        }
    }
    Ok(true)
}

/// Creates the missing directories above `path`, top down, each with the mode (and, as root, the
/// owner) an image recorded for it (`REC_SAVED_DIR`), else with the default mode (0777 less the
/// umask): the program's cleanup (Open MPI's session directory under /tmp) or a new node took
/// them away.
pub fn make_parents(images: &[&Image], path: &Path) -> std::io::Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err())
        .collect();
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let bytes = d.as_os_str().as_bytes();
        let Some((r, _)) = images
            .iter()
            .flat_map(|img| &img.saved_dirs)
            .find(|(_, p)| p.as_slice() == bytes)
        else {
            continue;
        };
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // Best effort: else the restarting user owns it.
            let _ = std::os::unix::fs::lchown(d, Some(r.uid), Some(r.gid));
        }
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(r.mode & 0o7777))?;
    }
    Ok(())
}

/// Re-creates the saved file of `f` at its path (one saved for being written only when it is
/// missing) (parent directories created, saved contents,
/// mode and modification time) unless a file matching the checkpoint's is there: that one is
/// reused untouched. The new file is written beside it and renamed into place, so a reader never
/// sees it half written. Returns whether the file was re-created.
pub fn put_back(
    images: &[&Image],
    files: &[&File],
    f: &Fd,
    s: &FdSavedRec,
) -> Result<bool, RestoreError> {
    let label = format!("fd {}", f.rec.fd);
    put_back_at(images, files, &f.path, (f.rec.dev, f.rec.ino), s, &label)
}

/// Puts back every file of `images` saved without a descriptor (`REC_CREATED_SAVED`: made with
/// `mkstemp` & co. and closed, as gcc's `/tmp/cc*.s` between cc1 and `as`), as [`put_back`].
pub fn put_back_created(images: &[&Image], files: &[&File]) -> Result<(), RestoreError> {
    for img in images {
        let _fs = super::creds::FsGuard::assume(img);
        for (c, path) in &img.created {
            put_back_at(images, files, path, (c.dev, c.ino), &c.saved, "created")?;
        }
    }
    Ok(())
}

/// Gives the re-created file of `key` the owner an image recorded for it (`REC_SAVED_OWNER`) as
/// far as the restarting user may: as root its owner and group, else its group when that is one
/// of the user's (the kernel refuses others). Best effort: else the restarting user owns it.
fn set_owner(images: &[&Image], file: &File, key: (u64, u64)) {
    let Some(o) = images
        .iter()
        .flat_map(|img| &img.saved_owners)
        .find(|o| (o.dev, o.ino) == key)
    else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let uid = (unsafe { libc::geteuid() } == 0).then_some(o.uid);
    let _ = std::os::unix::fs::fchown(file, uid, Some(o.gid));
}

fn put_back_at(
    images: &[&Image],
    files: &[&File],
    path: &[u8],
    key: (u64, u64),
    s: &FdSavedRec,
    label: &str,
) -> Result<bool, RestoreError> {
    let path = Path::new(OsStr::from_bytes(path));
    if matches(images, path, key, s) {
        return Ok(false);
    }
    // A file saved for being written that still exists keeps BLCR's rule: reopened and cut
    // back to its checkpoint size (`open_file`), not replaced.
    if s.why == SAVED_WRITTEN && std::fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    if !images.iter().any(|img| img.saved_contents(key).is_some()) {
        return Ok(false); // contents not in the image: reopened by path as any file
    }
    let fail = |what: &str, e: std::io::Error| {
        RestoreError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!(
                "cannot re-create the saved temporary file {} ({label}): {what}: {e}",
                path.display(),
            ),
        )
    };
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => {
            return Err(fail(
                "path",
                std::io::Error::from_raw_os_error(libc::EINVAL),
            ))
        }
    };
    make_parents(images, path).map_err(|e| fail("create its directory", e))?;
    let mut tmp_name = b".".to_vec();
    tmp_name.extend_from_slice(name.as_bytes());
    tmp_name.extend_from_slice(format!(".cr-restore.{}", std::process::id()).as_bytes());
    let tmp = dir.join(OsStr::from_bytes(&tmp_name));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> Result<(), RestoreError> {
        let file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("create", e))?;
        write_contents(images, files, key, &file, &path.display().to_string())?;
        file.set_len(s.size.max(0) as u64)
            .map_err(|e| fail("set its size", e))?;
        set_owner(images, &file, key);
        file.set_permissions(std::fs::Permissions::from_mode(s.mode & 0o7777))
            .map_err(|e| fail("set its mode", e))?;
        let mtime = if s.mtime_sec >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(s.mtime_sec as u64, s.mtime_nsec as u32)
        } else {
            SystemTime::UNIX_EPOCH
        };
        file.set_times(FileTimes::new().set_modified(mtime))
            .map_err(|e| fail("set its modification time", e))?;
        std::fs::rename(&tmp, path).map_err(|e| fail("rename into place", e))
    };
    let res = write();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|_| true)
}
