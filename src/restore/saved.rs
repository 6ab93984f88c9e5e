//! Files under temporary directories that travel in the image (`REC_FD_SAVED`): put back at
//! their path before the descriptor is reopened, when the program's own cleanup (or a new node)
//! took them away.

use super::RestoreError;
use crate::image::format::FdSavedRec;
use crate::image::reader::{Fd, Image};
use std::ffi::OsStr;
use std::fs::{File, FileTimes, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Whether the file at `path` is the one the checkpoint saw: a regular file of the same size and
/// modification time.
fn matches(path: &Path, s: &FdSavedRec) -> bool {
    std::fs::metadata(path).is_ok_and(|m| {
        m.is_file()
            && m.size() as i64 == s.size
            && m.mtime() == s.mtime_sec
            && m.mtime_nsec() == s.mtime_nsec
    })
}

/// Re-creates the saved file of `f` at its path (parent directories created, saved contents,
/// mode and modification time) unless a file matching the checkpoint's is there: that one is
/// reused untouched. The new file is written beside it and renamed into place, so a reader never
/// sees it half written. Returns whether the file was re-created.
pub fn put_back(images: &[&Image], f: &Fd, s: &FdSavedRec) -> Result<bool, RestoreError> {
    let path = Path::new(OsStr::from_bytes(&f.path));
    if matches(path, s) {
        return Ok(false);
    }
    let Some(data) = images.iter().find_map(|img| {
        img.file_data
            .iter()
            .find(|(k, _)| *k == (f.rec.dev, f.rec.ino))
            .map(|(_, d)| d.as_slice())
    }) else {
        return Ok(false); // contents not in the image: reopened by path as any file
    };
    let fail = |what: &str, e: std::io::Error| {
        RestoreError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!(
                "cannot re-create the saved temporary file {} (fd {}): {what}: {e}",
                path.display(),
                f.rec.fd
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
    std::fs::create_dir_all(dir).map_err(|e| fail("create its directory", e))?;
    let mut tmp_name = b".".to_vec();
    tmp_name.extend_from_slice(name.as_bytes());
    tmp_name.extend_from_slice(format!(".cr-restore.{}", std::process::id()).as_bytes());
    let tmp = dir.join(OsStr::from_bytes(&tmp_name));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> Result<(), RestoreError> {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("create", e))?;
        file.write_all(data).map_err(|e| fail("write", e))?;
        file.set_len(s.size.max(0) as u64)
            .map_err(|e| fail("set its size", e))?;
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
