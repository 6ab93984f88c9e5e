//! The object-store backend of `cr_run --store URL` (libcr-rs): `file:///PATH`,
//! `s3://BUCKET/PREFIX` (any S3-compatible endpoint; credentials and endpoint from the usual
//! `AWS_*` variables), `gs://BUCKET/PREFIX` (`GOOGLE_*`), `az://CONTAINER/PREFIX` (`AZURE_*`)
//! and `http(s)://` WebDAV (PUT, GET, DELETE, and PROPFIND with `Depth: 1` to list), through
//! the `object_store` crate. Object `PREFIX/FILE` holds file `FILE` of a checkpoint directory.
//!
//! A crate of its own so that the object-store stack is linked into `cr_run` only, never into
//! the agent library that is preloaded into every program. The supervisor's shipping logic is
//! `cr::supervise::store`; `cr_run` joins the two.

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, WriteMultipart};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Images larger than this go up in parts where the store supports it (S3 refuses single
/// uploads over 5 GiB).
const MULTIPART_ABOVE: u64 = 1 << 30;
/// Size of one part.
const PART: usize = 64 << 20;

/// An opened store: where the job's objects live, and the runtime that drives its requests.
pub struct Store {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    rt: tokio::runtime::Runtime,
}

impl Store {
    /// Opens the store named by `url`. Credentials and endpoints come from the environment as
    /// each service's own tools read them. Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Store, String> {
        let parsed =
            url::Url::parse(url).map_err(|e| format!("invalid --store URL '{url}': {e}"))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed)
            .map_err(|e| format!("unsupported --store URL '{url}': {e}"))?;
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let http = parsed.scheme() == "http";
        let client = object_store::ClientOptions::new().with_allow_http(http);
        let built: Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
            ObjectStoreScheme::Local => {
                Ok(Arc::new(object_store::local::LocalFileSystem::new()) as _)
            }
            ObjectStoreScheme::AmazonS3 => object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_retry(retry)
                .build()
                .map(|s| Arc::new(s) as _),
            ObjectStoreScheme::GoogleCloudStorage => {
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            ObjectStoreScheme::Http => object_store::http::HttpBuilder::new()
                .with_url(&parsed[..url::Position::BeforePath])
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map(|s| Arc::new(s) as _),
            other => Err(object_store::Error::NotSupported {
                source: format!("{other:?}").into(),
            }),
        };
        let store = built.map_err(|e| format!("cannot use --store '{url}': {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the store's I/O runtime: {e}"))?;
        Ok(Store {
            url: url.trim_end_matches('/').to_string(),
            store,
            prefix,
            rt,
        })
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, file: &str) -> Key {
        self.prefix.clone().join(file)
    }

    /// The objects directly under the prefix: file names and sizes.
    pub fn list(&self) -> Result<Vec<(String, u64)>, String> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listed = self
            .rt
            .block_on(self.store.list_with_delimiter(prefix))
            .map_err(|e| format!("cannot list {}: {e}", self.url))?;
        Ok(listed
            .objects
            .iter()
            .filter_map(|o| Some((o.location.filename()?.to_string(), o.size)))
            .collect())
    }

    /// Uploads the file at `path` as `file`; returns once the store reports the object with
    /// the file's size (the upload is confirmed). `gate` is called (and may block) before the
    /// upload and before each part.
    pub fn upload(&self, path: &Path, file: &str, gate: &dyn Fn()) -> Result<u64, String> {
        let data = map_file(path)?;
        let size = data.len() as u64;
        let key = self.key(file);
        self.rt.block_on(async {
            gate();
            let mut done = false;
            if size > MULTIPART_ABOVE {
                match self.store.put_multipart(&key).await {
                    Ok(up) => {
                        let mut w = WriteMultipart::new_with_chunk_size(up, PART);
                        let mut at = 0;
                        while at < data.len() {
                            let end = (at + PART).min(data.len());
                            gate();
                            w.wait_for_capacity(2).await.map_err(|e| e.to_string())?;
                            w.put(data.slice(at..end));
                            at = end;
                        }
                        w.finish().await.map_err(|e| e.to_string())?;
                        done = true;
                    }
                    Err(object_store::Error::NotImplemented { .. }) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            if !done {
                self.store
                    .put(&key, PutPayload::from(data.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let meta = self.store.head(&key).await.map_err(|e| e.to_string())?;
            if meta.size != size {
                return Err(format!(
                    "the store holds {} bytes of {size} after the upload",
                    meta.size
                ));
            }
            Ok(size)
        })
    }

    /// Downloads `file` into `to` (created or truncated) and syncs it.
    pub fn download(&self, file: &str, to: &Path) -> Result<u64, String> {
        let key = self.key(file);
        let mut out = std::fs::File::create(to)
            .map_err(|e| format!("cannot create {}: {e}", to.display()))?;
        let total = self.rt.block_on(async {
            let got = self.store.get(&key).await.map_err(|e| e.to_string())?;
            let mut stream = got.into_stream();
            let mut total = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                out.write_all(&chunk)
                    .map_err(|e| format!("{}: {e}", to.display()))?;
                total += chunk.len() as u64;
            }
            Ok::<u64, String>(total)
        })?;
        out.sync_all()
            .map_err(|e| format!("{}: {e}", to.display()))?;
        Ok(total)
    }

    /// Removes `file` from the store.
    pub fn delete(&self, file: &str) -> Result<(), String> {
        let key = self.key(file);
        match self.rt.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The file at `path` mapped read-only into memory, as bytes an upload can hold.
fn map_file(path: &Path) -> Result<Bytes, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len() as usize;
    if len == 0 {
        return Ok(Bytes::new());
    }
    use std::os::unix::io::AsRawFd;
    // SAFETY: a private read-only mapping of a whole regular file we opened; generations are
    // never rewritten in place (a new one is a new file), so the bytes stay as mapped.
    let ptr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!(
            "cannot map {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(Bytes::from_owner(Mapping {
        ptr: ptr as *const u8,
        len,
    }))
}

/// A read-only file mapping, unmapped when dropped.
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; reading it from any thread is
// fine.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared read-only access.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is our live mapping.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        let refused = |u: &str| Store::open(u).err().expect("refused");
        assert!(refused("not a url").contains("invalid"));
        assert!(refused("ftp://host/x").contains("unsupported"));
    }

    #[test]
    fn file_store_round_trip() {
        let root = std::env::temp_dir().join(format!("cr-store-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let store = Store::open(&format!("file://{}/remote/jobs", root.display())).unwrap();
        assert!(store.list().unwrap().is_empty(), "an empty store");
        let local = root.join("j.000003.ckpt");
        std::fs::write(&local, vec![7u8; 10_000]).unwrap();
        let gate = || {};
        assert_eq!(store.upload(&local, "j.000003.ckpt", &gate), Ok(10_000));
        std::fs::write(root.join("x"), b"x").unwrap();
        assert_eq!(
            store.upload(&root.join("x"), "other.000009.ckpt", &gate),
            Ok(1)
        );
        let mut listed = store.list().unwrap();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                ("j.000003.ckpt".to_string(), 10_000),
                ("other.000009.ckpt".to_string(), 1)
            ]
        );
        let back = root.join("back");
        assert_eq!(store.download("j.000003.ckpt", &back), Ok(10_000));
        assert_eq!(std::fs::read(&back).unwrap(), vec![7u8; 10_000]);
        store.delete("j.000003.ckpt").unwrap();
        store.delete("j.000003.ckpt").unwrap();
        assert_eq!(
            store.list().unwrap(),
            vec![("other.000009.ckpt".to_string(), 1)]
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
