//! `cr_run --checkpoint-dir DIR --store URL`: a job's generations shipped off the node, and
//! fetched back when a job resumes where DIR has none (the node died, the job starts elsewhere).
//!
//! The store itself is a [`Storage`] (cr_run gives the object-store backend of the
//! `libcr-store` crate: file, S3, GCS, Azure, WebDAV; kept out of this library so that the
//! preloaded agent never carries it). Generation `NAME.NNNNNN.ckpt` of DIR is the object
//! `NAME.NNNNNN.ckpt` under the URL's prefix.
//!
//! [`Shipper`] uploads in a background thread, after the program was released (it waits while a
//! checkpoint is being taken, so shipping never lengthens the time the job is stopped). A failed
//! upload is retried, then reported on stderr; it never ends the job. An upload counts once the
//! store reports the object with the local file's size; until then the local copy is kept even
//! beyond `--keep`. The store keeps the newest `--keep` generations too. Delta generations
//! (`cr_run --incremental`) travel with their chains: a generation's parents are uploaded
//! before it when the store lacks them, kept in the store while a kept generation needs them,
//! and fetched with it.

use super::generations::{self, Generation};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Attempts per upload, and the wait before the second (doubling after).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Where a job's generations are shipped: an object store.
pub trait Storage: Send {
    /// The store's URL, for messages.
    fn url(&self) -> &str;
    /// The objects under the store's prefix: file names and sizes.
    fn list(&self) -> Result<Vec<(String, u64)>, String>;
    /// Uploads the file at `path` as `file`; returns its size once the store reports the object
    /// with that size. `gate` is called (it may block) before the upload and each of its parts.
    fn upload(&self, path: &Path, file: &str, gate: &dyn Fn()) -> Result<u64, String>;
    /// Downloads `file` into `to` (created or truncated, synced); returns its size.
    fn download(&self, file: &str, to: &Path) -> Result<u64, String>;
    /// Removes `file` (absent is fine).
    fn delete(&self, file: &str) -> Result<(), String>;
}

/// Opens the store of a URL (cr_run passes the `libcr-store` backend).
pub type Opener<'a> = &'a dyn Fn(&str) -> Result<Box<dyn Storage>, String>;

/// A generation in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Its sequence number.
    pub seq: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// The generations of job `name` in `store`, newest first.
pub fn list(store: &dyn Storage, name: &str) -> Result<Vec<Remote>, String> {
    let mut out: Vec<Remote> = store
        .list()?
        .into_iter()
        .filter_map(|(file, size)| {
            Some(Remote {
                seq: generations::parse_name(name, &file)?,
                size,
            })
        })
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.seq));
    Ok(out)
}

/// Fetches the newest generation of `name` in `store` that validates into `dir` (as
/// `NAME.NNNNNN.ckpt`, renamed into place only once it validated), with the generations its
/// chain needs, trying older ones when one is damaged; damaged or unreadable ones are reported
/// with `say`.
pub fn fetch_newest_good(
    store: &dyn Storage,
    dir: &Path,
    name: &str,
    remote: &[Remote],
    say: &dyn Fn(&str),
) -> Option<Generation> {
    for r in remote {
        let file = generations::file_name(name, r.seq);
        let started = Instant::now();
        let mut fetched = Vec::new();
        match fetch_chain(store, dir, name, r.seq, &mut fetched, say) {
            Ok(true) => {}
            Ok(false) => {
                // An incomplete chain is no use here.
                for p in fetched {
                    let _ = std::fs::remove_file(p);
                }
                continue;
            }
            Err(()) => return None,
        }
        let path = dir.join(&file);
        if let Err(e) = generations::validate(&path) {
            say(&format!(
                "damaged image chain in {} skipped: {e}; trying an older one",
                store.url()
            ));
            continue;
        }
        say(&format!(
            "fetched {file} ({} bytes) from {} in {:.2} s",
            r.size,
            store.url(),
            started.elapsed().as_secs_f64()
        ));
        return generations::list(dir, name)
            .into_iter()
            .find(|g| g.seq == r.seq);
    }
    None
}

/// Fetches generation `seq` (unless `dir` has it) and, first, the parents it names: `Ok(false)`
/// when one cannot be fetched or is damaged (said), `Err` when a file cannot be put in place.
/// The files it put in place are added to `fetched`.
fn fetch_chain(
    store: &dyn Storage,
    dir: &Path,
    name: &str,
    seq: u64,
    fetched: &mut Vec<PathBuf>,
    say: &dyn Fn(&str),
) -> Result<bool, ()> {
    let mut todo = vec![seq];
    let mut depth = 0;
    while let Some(s) = todo.pop() {
        let file = generations::file_name(name, s);
        let path = dir.join(&file);
        if path.is_file() {
            continue;
        }
        depth += 1;
        if depth > crate::image::chain::MAX_CHAIN {
            say(&format!("{file}: parent chain too long"));
            return Ok(false);
        }
        let part = dir.join(format!(".{file}.part"));
        if let Err(e) = store.download(&file, &part) {
            say(&format!(
                "cannot fetch {file} from {}: {e}; trying an older one",
                store.url()
            ));
            let _ = std::fs::remove_file(&part);
            return Ok(false);
        }
        if let Err(e) = generations::validate_self(&part) {
            say(&format!(
                "damaged image in {} skipped: {e}; trying an older one",
                store.url()
            ));
            let _ = std::fs::remove_file(&part);
            return Ok(false);
        }
        let parents = generations::parents(&part, name);
        if let Err(e) = std::fs::rename(&part, &path) {
            say(&format!("cannot move {} into place: {e}", part.display()));
            let _ = std::fs::remove_file(&part);
            return Err(());
        }
        fetched.push(path);
        match parents {
            Ok(p) => todo.extend(p),
            Err(e) => {
                say(&format!("{e}; trying an older one"));
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Closed while a checkpoint is being taken: uploads wait at it, so shipping never competes
/// with a stopped job for the disk and the CPU.
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        self.cv.notify_all();
    }

    fn wait_open(&self) {
        let mut c = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        while *c {
            c = self.cv.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the shipping thread is asked to do.
enum Msg {
    /// Upload this generation.
    Ship(u64),
    /// The job finished: remove its generations from the store.
    Forget,
}

/// State shared between the supervisor and its shipping thread.
struct Shared {
    gate: Gate,
    /// Generations the store holds (confirmed uploads, or fetched from it).
    stored: Mutex<HashSet<u64>>,
    /// Set when the job finished: queued uploads are dropped.
    abandon: std::sync::atomic::AtomicBool,
}

/// The background thread that ships a job's generations to its store.
pub struct Shipper {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Shipper {
    /// Starts the shipping thread for job `name` of `dir`. `stored` are the generations the
    /// store is known to hold. The thread inherits the caller's signal mask: start it after the
    /// supervisor blocked the signals it waits for.
    pub fn start(
        store: Box<dyn Storage>,
        dir: PathBuf,
        name: String,
        keep: usize,
        stored: impl IntoIterator<Item = u64>,
        verbose: bool,
    ) -> Shipper {
        let shared = Arc::new(Shared {
            gate: Gate::default(),
            stored: Mutex::new(stored.into_iter().collect()),
            abandon: Default::default(),
        });
        let (tx, rx) = mpsc::channel();
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cr_run-store".into())
            .spawn(move || ship_loop(&*store, &dir, &name, keep, verbose, &sh, rx))
            .ok();
        if thread.is_none() {
            say("warning: cannot start the shipping thread: images stay on this node only");
        }
        Shipper {
            tx: thread.as_ref().map(|_| tx),
            thread,
            shared,
        }
    }

    /// Queues generation `seq` for upload.
    pub fn ship(&self, seq: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Ship(seq));
        }
    }

    /// Holds uploads (a checkpoint is being taken) or lets them go on.
    pub fn hold(&self, held: bool) {
        self.shared.gate.set(held);
    }

    /// Whether the store holds generation `seq` (so its local copy may go).
    pub fn stored(&self, seq: u64) -> bool {
        self.shared
            .stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&seq)
    }

    /// Waits until every queued upload is done (or given up).
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The job finished by itself: drops queued uploads, removes the job's generations from
    /// the store, and waits for that.
    pub fn forget(self) {
        self.shared
            .abandon
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Forget);
        }
        self.finish();
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn say(msg: &str) {
    eprintln!("cr_run: {msg}");
}

/// The shipping thread: uploads queued generations with retries, then prunes the store and the
/// local copies.
fn ship_loop(
    store: &dyn Storage,
    dir: &Path,
    name: &str,
    keep: usize,
    verbose: bool,
    shared: &Shared,
    rx: mpsc::Receiver<Msg>,
) {
    use std::sync::atomic::Ordering;
    for msg in rx {
        let seq = match msg {
            Msg::Ship(seq) => seq,
            Msg::Forget => {
                match list(store, name) {
                    Ok(list) => {
                        for r in list {
                            let file = generations::file_name(name, r.seq);
                            if let Err(e) = store.delete(&file) {
                                say(&format!("cannot remove {file} from {}: {e}", store.url()));
                            }
                        }
                    }
                    Err(e) => say(&format!("cannot remove the job's images: {e}")),
                }
                continue;
            }
        };
        if shared.abandon.load(Ordering::SeqCst) {
            continue;
        }
        // A delta's chain first: the store must hold every generation it needs.
        let chain = generations::chain(dir, name, seq).unwrap_or_else(|| vec![seq]);
        let missing: Vec<u64> = chain
            .into_iter()
            .filter(|&s| s == seq || !is_stored(shared, s))
            .collect();
        let mut shipped = true;
        for s in missing {
            shipped = shipped && upload(store, dir, name, s, verbose, shared);
        }
        if !shipped {
            continue;
        }
        prune_store(store, dir, name, keep, verbose);
        let stored = |s: u64| is_stored(shared, s);
        for r in generations::prune_if(dir, name, keep, &stored) {
            if verbose {
                say(&format!("removed old generation {}", r.display()));
            }
        }
    }
}

fn is_stored(shared: &Shared, seq: u64) -> bool {
    shared
        .stored
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&seq)
}

/// Uploads generation `seq` with retries; whether the store holds it now.
fn upload(
    store: &dyn Storage,
    dir: &Path,
    name: &str,
    seq: u64,
    verbose: bool,
    shared: &Shared,
) -> bool {
    use std::sync::atomic::Ordering;
    let file = generations::file_name(name, seq);
    let path = dir.join(&file);
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        if !path.exists() || shared.abandon.load(Ordering::SeqCst) {
            return false;
        }
        let started = Instant::now();
        match store.upload(&path, &file, &|| shared.gate.wait_open()) {
            Ok(size) => {
                shared
                    .stored
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq);
                if verbose {
                    say(&format!(
                        "shipped {file} ({size} bytes) to {} in {:.2} s",
                        store.url(),
                        started.elapsed().as_secs_f64()
                    ));
                }
                return true;
            }
            Err(e) if attempt < ATTEMPTS => {
                say(&format!(
                    "shipping {file} to {} failed (attempt {attempt} of {ATTEMPTS}): {e}; \
                     retrying in {} s",
                    store.url(),
                    wait.as_secs()
                ));
                std::thread::sleep(wait);
                wait *= 2;
            }
            Err(e) => say(&format!(
                "shipping {file} to {} failed (attempt {attempt} of {ATTEMPTS}): {e}; \
                 giving up, the image stays in {} only",
                store.url(),
                dir.display()
            )),
        }
    }
    false
}

/// Removes every generation of `name` in the store but the newest `keep` and those their
/// chains need (read from the local copies in `dir`; see [`generations::kept`]).
fn prune_store(store: &dyn Storage, dir: &Path, name: &str, keep: usize, verbose: bool) {
    let Ok(list) = list(store, name) else {
        return;
    };
    let seqs: Vec<u64> = list.iter().map(|r| r.seq).collect();
    let kept = generations::kept(dir, name, &seqs, keep);
    for r in list.into_iter().filter(|r| !kept.contains(&r.seq)) {
        let file = generations::file_name(name, r.seq);
        match store.delete(&file) {
            Ok(()) if verbose => say(&format!("removed {file} from {}", store.url())),
            Ok(()) => {}
            Err(e) => say(&format!("cannot remove {file} from {}: {e}", store.url())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in memory.
    #[derive(Default)]
    struct Mem(Mutex<Vec<(String, Vec<u8>)>>);

    impl Storage for Arc<Mem> {
        fn url(&self) -> &str {
            "mem:"
        }
        fn list(&self) -> Result<Vec<(String, u64)>, String> {
            let v = self.0.lock().unwrap();
            Ok(v.iter().map(|(n, d)| (n.clone(), d.len() as u64)).collect())
        }
        fn upload(&self, path: &Path, file: &str, gate: &dyn Fn()) -> Result<u64, String> {
            gate();
            let data = std::fs::read(path).map_err(|e| e.to_string())?;
            let n = data.len() as u64;
            let mut v = self.0.lock().unwrap();
            v.retain(|(f, _)| f != file);
            v.push((file.to_string(), data));
            Ok(n)
        }
        fn download(&self, file: &str, to: &Path) -> Result<u64, String> {
            let v = self.0.lock().unwrap();
            let (_, d) = v.iter().find(|(f, _)| f == file).ok_or("absent")?;
            std::fs::write(to, d).map_err(|e| e.to_string())?;
            Ok(d.len() as u64)
        }
        fn delete(&self, file: &str) -> Result<(), String> {
            self.0.lock().unwrap().retain(|(f, _)| f != file);
            Ok(())
        }
    }

    /// A store whose first `fail` uploads fail, counting the attempts.
    struct Flaky {
        mem: Arc<Mem>,
        fail: std::sync::atomic::AtomicU32,
        attempts: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Storage for Flaky {
        fn url(&self) -> &str {
            "flaky:"
        }
        fn list(&self) -> Result<Vec<(String, u64)>, String> {
            self.mem.list()
        }
        fn upload(&self, path: &Path, file: &str, gate: &dyn Fn()) -> Result<u64, String> {
            use std::sync::atomic::Ordering;
            gate();
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("connection refused".into());
            }
            self.mem.upload(path, file, gate)
        }
        fn download(&self, file: &str, to: &Path) -> Result<u64, String> {
            self.mem.download(file, to)
        }
        fn delete(&self, file: &str) -> Result<(), String> {
            self.mem.delete(file)
        }
    }

    fn unit_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cr-{test}-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A failed upload is tried again; until it is confirmed the local copy stays even beyond
    /// --keep; once confirmed, --keep prunes again.
    #[test]
    fn failed_upload_retried_local_copy_kept_until_confirmed() {
        use std::sync::atomic::Ordering;
        let dir = unit_dir("shipper-retry");
        let mem = Arc::new(Mem::default());
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let flaky = Flaky {
            mem: mem.clone(),
            fail: 2.into(),
            attempts: attempts.clone(),
        };
        let sh = Shipper::start(Box::new(flaky), dir.clone(), "j".into(), 1, [], false);
        for seq in 1..=2 {
            std::fs::write(dir.join(generations::file_name("j", seq)), [seq as u8; 10]).unwrap();
        }
        // Generation 1 is not in the store yet: with --keep 1 both local copies must stay.
        let kept = generations::prune_if(&dir, "j", 1, &|s| sh.stored(s));
        assert!(kept.is_empty(), "nothing unconfirmed is removed: {kept:?}");
        sh.ship(1);
        sh.ship(2);
        sh.finish();
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            4,
            "two failures, then two uploads"
        );
        let remote: Vec<u64> = list(&mem, "j").unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(
            remote,
            vec![2],
            "both reached the store, which keeps the newest 1"
        );
        let local: Vec<u64> = generations::list(&dir, "j").iter().map(|g| g.seq).collect();
        assert_eq!(local, vec![2], "the confirmed older copy went");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Uploads wait while a checkpoint is being taken (the job is stopped) and go on after.
    #[test]
    fn uploads_wait_while_a_checkpoint_is_taken() {
        let dir = unit_dir("shipper-gate");
        let mem = Arc::new(Mem::default());
        let sh = Shipper::start(Box::new(mem.clone()), dir.clone(), "j".into(), 2, [], false);
        std::fs::write(dir.join(generations::file_name("j", 1)), [1u8; 10]).unwrap();
        sh.hold(true);
        sh.ship(1);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !sh.stored(1) && list(&mem, "j").unwrap().is_empty(),
            "nothing is shipped while held"
        );
        sh.hold(false);
        sh.finish();
        assert_eq!(list(&mem, "j").unwrap().len(), 1, "shipped once released");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shipper_uploads_prunes_and_forgets() {
        let dir = std::env::temp_dir().join(format!("cr-shipper-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mem = Arc::new(Mem::default());
        mem.0
            .lock()
            .unwrap()
            .push(("other.000001.ckpt".into(), vec![1]));
        let sh = Shipper::start(Box::new(mem.clone()), dir.clone(), "j".into(), 2, [], false);
        for seq in 1..=3 {
            std::fs::write(
                dir.join(generations::file_name("j", seq)),
                vec![seq as u8; 100],
            )
            .unwrap();
            sh.ship(seq);
        }
        sh.finish();
        let remote: Vec<u64> = list(&mem, "j").unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(remote, vec![3, 2], "the store keeps the newest 2");
        let local: Vec<u64> = generations::list(&dir, "j").iter().map(|g| g.seq).collect();
        assert_eq!(local, vec![3, 2], "confirmed local copies beyond --keep go");
        let sh = Shipper::start(
            Box::new(mem.clone()),
            dir.clone(),
            "j".into(),
            2,
            [2, 3],
            false,
        );
        sh.forget();
        assert!(
            list(&mem, "j").unwrap().is_empty(),
            "a finished job leaves the store"
        );
        assert_eq!(list(&mem, "other").unwrap().len(), 1, "other jobs stay");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
