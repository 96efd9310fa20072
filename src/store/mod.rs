//! The derivative store: rendered images persisted as files ([`files`], the truth) and indexed in sled
//! ([`index`], a rebuildable cache).
//!
//! - Read: index entry -> file; the length is always checked, the blake3 of the bytes when
//!   `verify_reads` is on. A missing, short or mismatching file is a miss (and counted as a repair), never
//!   a corrupt response.
//! - Write: file first (atomic, durable), index entry second. Writes are skipped, not failed, when the
//!   disk is nearly full (`min_free_bytes`), because sled has corrupted itself on full disks.
//! - Budget: `max_bytes`, enforced by least-recently-used eviction in the background.
//! - Recovery on open: temp files removed; entries without a file dropped; files without an entry
//!   indexed; an index that cannot be opened is moved aside and rebuilt from the files.
//!
//! Every method blocks; the service calls them off the async threads.

pub(crate) mod files;
pub(crate) mod index;

use crate::key::{content_hash, DerivativeKey};
use files::Files;
pub use index::IndexError;
pub(crate) use index::ProbeRecord;
use index::{Entry, Index};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object files: I/O.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The index.
    #[error("{0}")]
    Index(#[from] IndexError),
    /// Not enough free space (`store.min_free_bytes`).
    #[error("{0}")]
    Full(String),
}

/// Store settings (`[store]` in the configuration).
#[derive(Clone, Debug)]
pub(crate) struct StoreSettings {
    /// Root directory.
    pub path: PathBuf,
    /// Size budget in bytes.
    pub max_bytes: u64,
    /// Stop writing when less than this is free on the file system.
    pub min_free_bytes: u64,
    /// Check the blake3 of every file read.
    pub verify_reads: bool,
    /// fsync objects before they count as stored.
    pub fsync: bool,
}

/// Counters kept by the store (exported as Prometheus metrics).
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    /// Objects served from the store.
    pub hits: AtomicU64,
    /// Lookups that found nothing usable.
    pub misses: AtomicU64,
    /// Entries whose file was missing, short or corrupt.
    pub repairs: AtomicU64,
    /// Objects evicted for the budget.
    pub evictions: AtomicU64,
    /// Writes that failed or were skipped for lack of space.
    pub write_errors: AtomicU64,
}

/// A stored object found by [`Store::lookup`].
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    /// The bytes, when asked for.
    pub bytes: Option<Vec<u8>>,
    /// Path below `objects/` (for `X-Accel-Redirect`).
    pub relative_path: String,
}

/// What recovery did when the store was opened.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Recovery {
    /// Temp files removed.
    pub temps_removed: usize,
    /// Entries dropped because their file was gone.
    pub dangling_dropped: usize,
    /// Files indexed that had no entry.
    pub orphans_indexed: usize,
    /// Whether the index was unreadable and rebuilt from the files.
    pub rebuilt: bool,
    /// Objects moved from the first layout (`objects/ab/cd/`) to the current one.
    pub migrated: usize,
}

/// Result of [`Store::verify`].
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct VerifyReport {
    /// Entries checked.
    pub checked: usize,
    /// Entries whose file is missing, short or does not match its hash.
    pub bad: usize,
    /// Keys of the bad entries (at most 20).
    pub bad_keys: Vec<String>,
    /// Files on disk with no entry.
    pub unindexed: usize,
}

/// Size figures.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Stats {
    /// Objects indexed.
    pub objects: u64,
    /// Their total size.
    pub bytes: u64,
    /// The budget.
    pub max_bytes: u64,
}

/// The store.
pub(crate) struct Store {
    settings: StoreSettings,
    files: Files,
    index: Index,
    bytes: AtomicU64,
    objects: AtomicU64,
    /// Counters for metrics.
    pub counters: StoreCounters,
    kick: Mutex<Option<SyncSender<()>>>,
    /// Per-key lock for writes/removals so eviction never races a write of the same key.
    write_lock: Mutex<()>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_err(e: IndexError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Only touch `last_access` when it is older than this, so hits do not turn into index writes.
const ACCESS_GRANULARITY_SECS: u64 = 60;

impl Store {
    /// Open the store at `settings.path`, recovering from whatever a crash left.
    pub(crate) fn open(settings: StoreSettings) -> io::Result<(Store, Recovery)> {
        std::fs::create_dir_all(&settings.path)?;
        let files = Files::open(&settings.path, settings.fsync)?;
        let mut recovery = Recovery::default();
        let index_path = settings.path.join("index");
        let index = match Index::open(&index_path) {
            Ok(i) => i,
            Err(IndexError::Locked(why)) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "the store index is locked ({why}): is an iiifd server using this store? \
                         Use its admin listener instead"
                    ),
                ));
            }
            Err(e) => {
                // Unreadable index: keep it aside for inspection and rebuild from the files.
                let aside = settings.path.join(format!("index.broken-{}", now_secs()));
                tracing::warn!(
                    "store index unreadable ({e}); moving it to {} and rebuilding",
                    aside.display()
                );
                std::fs::rename(&index_path, &aside)?;
                recovery.rebuilt = true;
                Index::open(&index_path).map_err(io_err)?
            }
        };
        // Only now, holding the index lock (so no server is writing), are temp files leftovers.
        recovery.temps_removed = files.remove_temps()?;
        recovery.migrated = files.migrate_legacy()?;
        let store = Store {
            settings,
            files,
            index,
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            counters: StoreCounters::default(),
            kick: Mutex::new(None),
            write_lock: Mutex::new(()),
        };
        let (dropped, indexed) = store.reconcile(recovery.rebuilt)?;
        recovery.dangling_dropped = dropped;
        recovery.orphans_indexed = indexed;
        Ok((store, recovery))
    }

    /// Make the index agree with the files: drop entries without a file, index files without an entry.
    /// With `rebuild`, every entry is recomputed from its file.
    fn reconcile(&self, rebuild: bool) -> io::Result<(usize, usize)> {
        if rebuild {
            self.index.clear().map_err(io_err)?;
        }
        let on_disk = self.files.scan()?;
        let mut disk: HashMap<DerivativeKey, &files::FoundObject> =
            HashMap::with_capacity(on_disk.len());
        for f in &on_disk {
            disk.insert(f.key, f);
        }
        let mut dropped = 0;
        let (mut bytes, mut objects) = (0u64, 0u64);
        let mut indexed: HashMap<DerivativeKey, ()> = HashMap::new();
        for (key, entry) in self.index.entries().map_err(io_err)? {
            let file_len = disk
                .get(&key)
                .filter(|f| f.ext == entry.ext)
                .and_then(|f| std::fs::metadata(&f.path).ok())
                .map(|m| m.len());
            if file_len == Some(entry.len) {
                bytes += entry.len;
                objects += 1;
                indexed.insert(key, ());
            } else {
                self.index.remove(&key).map_err(io_err)?;
                dropped += 1;
            }
        }
        let mut added = 0;
        for f in on_disk.iter().filter(|f| !indexed.contains_key(&f.key)) {
            let Ok(data) = std::fs::read(&f.path) else {
                continue;
            };
            let created = std::fs::metadata(&f.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(now_secs(), |d| d.as_secs());
            let entry = Entry {
                len: data.len() as u64,
                ext: f.ext.clone(),
                hash: content_hash(&data),
                created,
                last_access: created,
                identifier: String::new(),
            };
            self.index.put(&f.key, &entry).map_err(io_err)?;
            bytes += entry.len;
            objects += 1;
            added += 1;
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.objects.store(objects, Ordering::Relaxed);
        self.index.flush().map_err(io_err)?;
        Ok((dropped, added))
    }

    /// Look up `key`. With `read_body`, the file is read (and hash-checked when `verify_reads`);
    /// without, only its length is checked (the proxy will send it). Problems are misses.
    pub(crate) fn lookup(&self, key: &DerivativeKey, read_body: bool) -> Option<Hit> {
        let entry = match self.index.get(key) {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => {
                tracing::warn!("store lookup failed: {e}");
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let path = self.files.path(key, &entry.ext);
        let bytes = if read_body {
            match std::fs::read(&path) {
                Ok(b)
                    if b.len() as u64 == entry.len
                        && (!self.settings.verify_reads || content_hash(&b) == entry.hash) =>
                {
                    Some(b)
                }
                _ => return self.repair(key, &entry),
            }
        } else {
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == entry.len => None,
                _ => return self.repair(key, &entry),
            }
        };
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        let now = now_secs();
        if now.saturating_sub(entry.last_access) >= ACCESS_GRANULARITY_SECS {
            let touched = Entry {
                last_access: now,
                ..entry.clone()
            };
            let _ = self.index.put(key, &touched);
        }
        Some(Hit {
            bytes,
            relative_path: Files::relative_path(key, &entry.ext),
        })
    }

    /// A stored object opened for reading (a tiled copy, read tile by tile), if it is indexed and
    /// its file is there with the indexed length. Only the length is checked: such objects are
    /// large, and a damaged tile is an error the caller survives by rendering from the source.
    pub(crate) fn open_object(
        &self,
        key: &DerivativeKey,
        ext: &str,
    ) -> Option<std::sync::Arc<dyn crate::source::ObjectReader>> {
        let entry = self.index.get(key).ok()??;
        if entry.ext != ext {
            return None;
        }
        let file = std::fs::File::open(self.files.path(key, ext)).ok()?;
        let reader = crate::source::file_reader(file).ok()?;
        (reader.size() == entry.len).then_some(reader)
    }

    /// A bad object: drop it so the caller re-renders and stores a good one.
    fn repair(&self, key: &DerivativeKey, entry: &Entry) -> Option<Hit> {
        tracing::warn!(key = %key.to_hex(), "stored object missing, short or corrupt; re-rendering");
        self.counters.repairs.fetch_add(1, Ordering::Relaxed);
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.remove_object(key, &entry.ext) {
            tracing::warn!(key = %key.to_hex(), "could not remove a bad object: {e}");
        }
        None
    }

    /// Remove one object: the file first, then its entry (an entry without a file is a harmless miss,
    /// never a wrong answer). Returns whether an entry was removed.
    fn remove_object(&self, key: &DerivativeKey, ext: &str) -> io::Result<bool> {
        let _guard = self.write_lock.lock();
        self.files.remove(key, ext)?;
        match self.index.remove(key) {
            Ok(Some(removed)) => {
                self.account_removed(removed.len);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    fn account_removed(&self, len: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(len))
            });
        let _ = self
            .objects
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Persist `bytes` as `key`. Errors are returned for logging and counting; the caller still serves
    /// the bytes it rendered.
    pub(crate) fn put(
        &self,
        key: &DerivativeKey,
        ext: &str,
        bytes: &[u8],
        identifier: &str,
    ) -> Result<(), StoreError> {
        Ok(self.count_failure(self.put_inner(key, ext, bytes, identifier))?)
    }

    fn count_failure(&self, result: io::Result<()>) -> io::Result<()> {
        if result.is_err() {
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Persist an object too large to hold in memory: `fill` writes it into its temp file (it may
    /// seek). Hashed by reading it back, then indexed like [`Store::put`].
    pub(crate) fn put_with(
        &self,
        key: &DerivativeKey,
        ext: &str,
        identifier: &str,
        fill: &mut dyn FnMut(&mut std::fs::File) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let result = (|| {
            self.check_free(0)?;
            // Filling can take a while (a tiled copy encodes thousands of tiles): not under the write
            // lock, which only guards the index update. The file is complete once renamed in place.
            let path = self.files.write_with(key, ext, fill)?;
            let mut f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            let hash = crate::key::content_hash_reader(&mut f)?;
            let _guard = self
                .write_lock
                .lock()
                .map_err(|_| io::Error::other("store lock poisoned"))?;
            self.index_new(key, ext, len, hash, identifier)
        })();
        Ok(self.count_failure(result)?)
    }

    fn check_free(&self, len: u64) -> io::Result<()> {
        let free = self.files.available_bytes()?;
        if free < self.settings.min_free_bytes.saturating_add(len) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "only {free} bytes free, min_free_bytes is {}",
                    self.settings.min_free_bytes
                ),
            ));
        }
        Ok(())
    }

    fn put_inner(
        &self,
        key: &DerivativeKey,
        ext: &str,
        bytes: &[u8],
        identifier: &str,
    ) -> io::Result<()> {
        self.check_free(bytes.len() as u64)?;
        let _guard = self
            .write_lock
            .lock()
            .map_err(|_| io::Error::other("store lock poisoned"))?;
        self.files.write(key, ext, bytes)?;
        self.index_new(
            key,
            ext,
            bytes.len() as u64,
            content_hash(bytes),
            identifier,
        )
    }

    /// Index an object just written (the caller holds the write lock).
    fn index_new(
        &self,
        key: &DerivativeKey,
        ext: &str,
        len: u64,
        hash: String,
        identifier: &str,
    ) -> io::Result<()> {
        let now = now_secs();
        let entry = Entry {
            len,
            ext: ext.to_owned(),
            hash,
            created: now,
            last_access: now,
            identifier: identifier.to_owned(),
        };
        let previous = self.index.put_returning(key, &entry).map_err(io_err)?;
        if let Some(prev) = previous {
            self.account_removed(prev.len);
        }
        self.bytes.fetch_add(entry.len, Ordering::Relaxed);
        self.objects.fetch_add(1, Ordering::Relaxed);
        if self.bytes.load(Ordering::Relaxed) > self.settings.max_bytes {
            self.kick_evictor();
        }
        Ok(())
    }

    fn kick_evictor(&self) {
        if let Ok(guard) = self.kick.lock() {
            if let Some(tx) = guard.as_ref() {
                let _ = tx.try_send(());
            }
        }
    }

    /// Evict least-recently-used objects until the store is at most 90 % of its budget (the margin
    /// keeps a store at its limit from evicting on every write). Returns the number evicted.
    pub(crate) fn evict_to_budget(&self) -> usize {
        let max = self.settings.max_bytes;
        if self.bytes.load(Ordering::Relaxed) <= max {
            return 0;
        }
        let target = max / 10 * 9;
        let Ok(mut entries) = self.index.entries() else {
            return 0;
        };
        entries.sort_by_key(|(_, e)| (e.last_access, e.created));
        let mut evicted = 0;
        for (key, entry) in entries {
            if self.bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            if let Ok(true) = self.remove_object(&key, &entry.ext) {
                evicted += 1;
            }
        }
        self.counters
            .evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Start the background evictor: it runs when a write pushes the store past its budget, and every
    /// few seconds regardless. It stops when the store is dropped or [`Store::stop_evictor`] is called.
    pub(crate) fn start_evictor(self: &Arc<Self>) -> io::Result<std::thread::JoinHandle<()>> {
        let (tx, rx) = sync_channel::<()>(1);
        if let Ok(mut guard) = self.kick.lock() {
            *guard = Some(tx);
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("iiifd-evictor".into())
            .spawn(move || evictor(&weak, &rx))
    }

    /// Stop the background evictor.
    pub(crate) fn stop_evictor(&self) {
        if let Ok(mut guard) = self.kick.lock() {
            guard.take();
        }
    }

    /// Check every entry against its file.
    pub(crate) fn verify(&self) -> io::Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let entries = self.index.entries().map_err(io_err)?;
        let indexed: std::collections::HashSet<DerivativeKey> =
            entries.iter().map(|(k, _)| *k).collect();
        for (key, entry) in &entries {
            report.checked += 1;
            let ok = std::fs::read(self.files.path(key, &entry.ext))
                .map(|b| b.len() as u64 == entry.len && content_hash(&b) == entry.hash)
                .unwrap_or(false);
            if !ok {
                report.bad += 1;
                if report.bad_keys.len() < 20 {
                    report.bad_keys.push(key.to_hex());
                }
            }
        }
        report.unindexed = self
            .files
            .scan()?
            .iter()
            .filter(|f| !indexed.contains(&f.key))
            .count();
        Ok(report)
    }

    /// Garbage-collect: temp files, entries without files, files without entries, then the budget.
    pub(crate) fn gc(&self) -> io::Result<Recovery> {
        let temps = self.files.remove_temps()?;
        let (dropped, indexed) = self.reconcile(false)?;
        self.evict_to_budget();
        Ok(Recovery {
            temps_removed: temps,
            dangling_dropped: dropped,
            orphans_indexed: indexed,
            rebuilt: false,
            migrated: 0,
        })
    }

    /// Rebuild the index from the files.
    pub(crate) fn reindex(&self) -> io::Result<Recovery> {
        let (dropped, indexed) = self.reconcile(true)?;
        Ok(Recovery {
            temps_removed: 0,
            dangling_dropped: dropped,
            orphans_indexed: indexed,
            rebuilt: true,
            migrated: 0,
        })
    }

    /// Remove every object rendered from `identifier`; returns how many.
    pub(crate) fn purge(&self, identifier: &str) -> io::Result<usize> {
        let mut n = 0;
        for (key, entry) in self.index.entries().map_err(io_err)? {
            if entry.identifier == identifier {
                self.remove_object(&key, &entry.ext)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Current size figures.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            objects: self.objects.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            max_bytes: self.settings.max_bytes,
        }
    }

    /// The cached probe of the source version `fingerprint` (best effort: errors read as absent).
    pub(crate) fn probe_get(&self, fingerprint: &str) -> Option<ProbeRecord> {
        self.index.probe_get(fingerprint).ok().flatten()
    }

    /// Cache a source probe (best effort).
    pub(crate) fn probe_put(&self, fingerprint: &str, record: &ProbeRecord) {
        if let Err(e) = self.index.probe_put(fingerprint, record) {
            tracing::warn!("cannot cache a source probe: {e}");
        }
    }

    /// The crawl jobs' persisted states (typed by their owner: `crawl`).
    pub(crate) fn jobs(&self) -> Jobs<'_> {
        Jobs { index: &self.index }
    }

    /// Flush the index to disk.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        Ok(self.index.flush()?)
    }
}

/// The store's crawl-job records: values serialised as JSON by their owner, keyed by job id.
pub(crate) struct Jobs<'a> {
    index: &'a Index,
}

impl Jobs<'_> {
    /// Save a job's state.
    pub(crate) fn put<T: serde::Serialize>(&self, id: &str, state: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).map_err(|e| IndexError::Encode(e.to_string()))?;
        Ok(self.index.job_put(id, &bytes)?)
    }

    /// Every job's state that still reads as a `T` (others are skipped: written by another
    /// version).
    pub(crate) fn all<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        Ok(self
            .index
            .jobs()?
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
            .collect())
    }
}

fn evictor(store: &std::sync::Weak<Store>, rx: &Receiver<()>) {
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(store) = store.upgrade() else { return };
        let n = store.evict_to_budget();
        if n > 0 {
            tracing::info!(
                evicted = n,
                bytes = store.stats().bytes,
                "store back under its budget"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn key(n: u8) -> DerivativeKey {
        DerivativeKey::from_hex(&format!("{n:02x}").repeat(32)).unwrap_or_else(|| unreachable!())
    }

    fn settings(dir: &Path, max_bytes: u64) -> StoreSettings {
        StoreSettings {
            path: dir.to_path_buf(),
            max_bytes,
            min_free_bytes: 0,
            verify_reads: true,
            fsync: true,
        }
    }

    #[test]
    fn put_lookup_corrupt_repair() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
        store.put(&key(1), "jpg", b"0123456789", "a")?;
        assert_eq!(
            store.lookup(&key(1), true).and_then(|h| h.bytes),
            Some(b"0123456789".to_vec())
        );
        // Same length, different bytes: only the hash can tell.
        std::fs::write(store.files.path(&key(1), "jpg"), b"9876543210")?;
        assert!(store.lookup(&key(1), true).is_none());
        assert_eq!(store.counters.repairs.load(Ordering::Relaxed), 1);
        assert_eq!(store.stats().objects, 0);
        Ok(())
    }

    #[test]
    fn recovery_and_budget() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
            for n in 0..10 {
                store.put(&key(n), "png", &[n; 100], "img")?;
            }
            std::fs::remove_file(store.files.path(&key(3), "png"))?;
            store.flush()?;
        }
        // A file without an entry (as after a crash between rename and index write) and a temp file.
        let orphan = Files::open(dir.path(), true)?;
        orphan.write(&key(42), "jpg", b"orphan")?;
        std::fs::write(dir.path().join("tmp/x.tmp"), b"partial")?;
        let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
        assert_eq!(
            (rec.temps_removed, rec.dangling_dropped, rec.orphans_indexed),
            (1, 1, 1)
        );
        assert_eq!(store.stats().objects, 10);
        assert_eq!(store.verify()?.bad, 0);
        drop(store);
        // Budget: 10 objects, ~906 bytes, budget 500 -> evicted to at most 450.
        let (store, _) = Store::open(settings(dir.path(), 500))?;
        assert!(store.evict_to_budget() > 0);
        assert!(store.stats().bytes <= 450);
        let count = |id: &str| -> io::Result<usize> {
            Ok(store
                .index
                .entries()
                .map_err(io_err)?
                .iter()
                .filter(|(_, e)| e.identifier == id)
                .count())
        };
        let remaining = count("img")?;
        assert_eq!(store.purge("img")?, remaining);
        assert_eq!(count("img")?, 0);
        store.put(&key(7), "gif", b"kept", "other")?;
        store.flush()?;
        drop(store);
        // A destroyed index is rebuilt from the files.
        std::fs::remove_dir_all(dir.path().join("index"))?;
        std::fs::create_dir_all(dir.path().join("index"))?;
        std::fs::write(dir.path().join("index/db"), b"garbage garbage garbage")?;
        let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
        assert!(rec.rebuilt || rec.orphans_indexed > 0);
        assert_eq!(store.verify()?.bad, 0);
        assert_eq!(store.stats().objects as usize, store.files.scan()?.len());
        Ok(())
    }
}
