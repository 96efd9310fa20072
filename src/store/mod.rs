//! The derivative store: rendered images persisted as files ([`files`], the truth) and indexed in sled
//! ([`index`], a rebuildable cache). No cost here grows with the number of stored objects except the
//! background walks, which run at a bounded rate:
//!
//! - Open: trust the index. Temp files are removed (they are few), the running totals are read from
//!   the index, and the store serves at once. If the last process did not close the store (a crash),
//!   or the index was lost or is of the first format, a background reconcile pass ([`Store::reconcile`],
//!   `store.reconcile_rate` checks a second) drops entries without a file, gives files without an
//!   entry one, and recounts the totals.
//! - Read: index entry -> file; the length is always checked, the blake3 of the bytes when
//!   `verify_reads` is on. A missing, short or mismatching file is a miss (and counted as a repair),
//!   never a corrupt response. A file without an entry (a lost index, a crash between the two
//!   writes) is adopted on the spot: files are the truth.
//! - Write: the identifier's list line, then the file (atomic, durable with `fsync`), then the index
//!   entry. Writes are skipped, not failed, when the disk is nearly full (`min_free_bytes`), because
//!   sled has corrupted itself on full disks.
//! - Budget: `max_bytes`, enforced in the background by evicting from the oldest end of the index's
//!   access order: evicting n objects reads n records, never the whole index.
//! - Counters: running totals, O(1) to read, saved in the index every few seconds and at close (not
//!   with every change: sled replays every write since its last open when it opens, so each write
//!   saved is start-up time). After a crash they are off by the last seconds' writes until the
//!   reconcile pass recounts them.
//!
//! - Memory: hot objects are also kept in memory ([`hot`]) and [`Store::lookup_hot`] answers them
//!   without blocking, so that a hit on them never leaves the async thread.
//!
//! Every other method blocks; the pipeline calls them off the async threads.

pub(crate) mod files;
pub(crate) mod hot;
pub(crate) mod index;
pub(crate) mod shared;

use crate::key::{content_hash, DerivativeKey};
use bytes::Bytes;
use files::{Files, FoundObject};
use hot::{HotObject, HotTier};
pub use index::IndexError;
pub(crate) use index::ProbeRecord;
use index::{Entry, Index, Totals};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Bound of sled's page cache.
    pub index_cache_bytes: u64,
    /// Checks a second of the background reconcile (0: unbounded).
    pub reconcile_rate: u64,
    /// Budget of the memory tier (0: off).
    pub memory_bytes: u64,
    /// Largest object the memory tier keeps.
    pub memory_object_max_bytes: u64,
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
    /// Files without an entry given one (by a lookup or a reconcile pass).
    pub adopted: AtomicU64,
    /// Whether a reconcile pass is running (0 or 1).
    pub reconcile_running: AtomicU64,
    /// Reconcile passes completed.
    pub reconcile_passes: AtomicU64,
    /// Index entries and files checked by reconcile passes.
    pub reconcile_checked: AtomicU64,
    /// Entries dropped by reconcile passes because their file was gone or of another length.
    pub reconcile_dropped: AtomicU64,
}

/// A stored object found by [`Store::lookup`].
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    /// The bytes, when asked for.
    pub bytes: Option<Bytes>,
    /// Path below `objects/` (for `X-Accel-Redirect`).
    pub relative_path: String,
}

/// What opening the store found and did. Nothing here is proportional to the store's size.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Recovery {
    /// Temp files removed.
    pub temps_removed: usize,
    /// Whether the index was unreadable and set aside (the files are indexed again in the
    /// background).
    pub rebuilt: bool,
    /// Objects moved from the first layout (`objects/ab/cd/`) to the current one.
    pub migrated: usize,
    /// Whether the index and the files need a reconcile pass (a crash, a lost index, the first
    /// index format).
    pub reconcile_needed: bool,
}

/// What one reconcile pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct ReconcileReport {
    /// Index entries checked against their files.
    pub entries_checked: u64,
    /// Entries dropped because their file was gone or of another length.
    pub dangling_dropped: u64,
    /// Object files checked for an entry.
    pub files_checked: u64,
    /// Files without an entry given one.
    pub orphans_indexed: u64,
    /// Entries of the first index format carried over.
    pub legacy_migrated: u64,
    /// Whether the pass walked everything (not stopped by shutdown).
    pub complete: bool,
    /// Seconds it took.
    pub seconds: f64,
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

/// Where a reconcile pass's walk over the entries stands, so that writes meanwhile are counted
/// exactly once: the pass sums the entries it reads, and a change to an entry it has already read
/// (key at or before `behind`) is added to `bytes`/`objects` here; a change ahead of it is seen by
/// the walk itself.
struct PassCursor {
    behind: Option<DerivativeKey>,
    bytes: i64,
    objects: i64,
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
    /// Held for every change to an entry, and by the walks while they read a batch: eviction never
    /// races a write of the same key, and totals change in one order.
    write_lock: Mutex<()>,
    /// One reconcile pass at a time.
    pass_lock: Mutex<()>,
    pass: Mutex<Option<PassCursor>>,
    /// Set at open when the index cannot be trusted; cleared by a complete pass.
    needs_pass: AtomicBool,
    /// Background work stops at its next step.
    stopping: AtomicBool,
    /// The cluster's shared tier, when `store.shared.bucket` is set.
    shared: Option<shared::SharedTier>,
    /// Hot objects in memory.
    hot: HotTier,
    /// Hits from memory whose access time is due to be recorded in the index (by the background
    /// thread: a memory hit never writes).
    touches: Mutex<HashMap<DerivativeKey, std::sync::Arc<HotObject>>>,
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

fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| io::Error::other("store lock poisoned"))
}

/// Only touch `last_access` when it is older than this, so hits do not turn into index writes. It
/// is also eviction's resolution: objects hit within one minute of each other are equally old.
const ACCESS_GRANULARITY_SECS: u64 = 60;
/// Entries or files a walk reads per step (and holds, at most). Small in tests, so that they cross
/// many steps.
const WALK_BATCH: usize = if cfg!(test) { 8 } else { 512 };
/// How often the evictor thread wakes when no write has woken it (and saves the totals).
const BACKGROUND_TICK: Duration = Duration::from_secs(5);

impl Store {
    /// Open the store at `settings.path`. Costs the same for any number of stored objects.
    pub(crate) fn open(settings: StoreSettings) -> io::Result<(Store, Recovery)> {
        std::fs::create_dir_all(&settings.path)?;
        let files = Files::open(&settings.path, settings.fsync)?;
        let mut recovery = Recovery::default();
        let index_path = settings.path.join("index");
        let index = match Index::open(&index_path, settings.index_cache_bytes) {
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
                Index::open(&index_path, settings.index_cache_bytes).map_err(io_err)?
            }
        };
        // Only now, holding the index lock (so no server is writing), are temp files leftovers.
        recovery.temps_removed = files.remove_temps()?;
        recovery.migrated = files.migrate_legacy()?;
        let saved = index.totals().map_err(io_err)?;
        // No saved totals: a new store (nothing to reconcile) or files without an index of this
        // format (a lost index, the first format, a store copied without its index).
        recovery.reconcile_needed = recovery.rebuilt
            || match saved {
                Some(t) => !t.clean,
                None => files.any_object()? || index.has_legacy(),
            };
        let saved = saved.unwrap_or_default();
        // From now on a crash must be noticed by the next open.
        index
            .save_totals(&Totals {
                clean: false,
                ..saved
            })
            .map_err(io_err)?;
        index.flush().map_err(io_err)?;
        let hot = HotTier::new(settings.memory_bytes, settings.memory_object_max_bytes);
        let store = Store {
            settings,
            files,
            index,
            bytes: AtomicU64::new(saved.bytes),
            objects: AtomicU64::new(saved.objects),
            counters: StoreCounters::default(),
            kick: Mutex::new(None),
            write_lock: Mutex::new(()),
            pass_lock: Mutex::new(()),
            pass: Mutex::new(None),
            needs_pass: AtomicBool::new(recovery.reconcile_needed),
            stopping: AtomicBool::new(false),
            shared: None,
            hot,
            touches: Mutex::new(HashMap::new()),
        };
        Ok((store, recovery))
    }

    /// Whether [`Store::close`] has begun. Removals check it under the write lock: one that ran
    /// after the close's final flush would delete a file while its entry, never flushed, outlived
    /// the process.
    fn closed(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether the index still waits for a reconcile pass.
    pub(crate) fn needs_reconcile(&self) -> bool {
        self.needs_pass.load(Ordering::Relaxed)
    }

    /// Look up `key` (stored as `ext`). With `read_body`, the file is read (and hash-checked when
    /// `verify_reads`); without, only its length is checked (the proxy will send it). Problems are
    /// misses.
    pub(crate) fn lookup(&self, key: &DerivativeKey, ext: &str, read_body: bool) -> Option<Hit> {
        let entry = match self.index.get(key) {
            Ok(Some(e)) => e,
            Ok(None) => return self.adopt_on_lookup(key, ext, read_body),
            Err(e) => {
                tracing::warn!("store lookup failed: {e}");
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let path = self.files.path(key, &entry.ext);
        // Whether the bytes read were hashed: the memory tier takes only objects that were.
        let mut hashed = false;
        let bytes = if read_body {
            match std::fs::read(&path) {
                Ok(b)
                    if b.len() as u64 == entry.len
                        && (!self.settings.verify_reads || content_hash(&b) == entry.hash) =>
                {
                    hashed = self.settings.verify_reads;
                    Some(Bytes::from(b))
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
            if let Err(e) = self.touch(key, &entry, now) {
                tracing::warn!(key = %key.to_hex(), "cannot record a hit: {e}");
            }
        }
        let relative_path = Files::relative_path(key, &entry.ext);
        if self.hot.admits(entry.len) {
            // Checked once more when unchecked: what memory serves was hashed on its way in.
            let whole = match &bytes {
                Some(b) => hashed || content_hash(b) == entry.hash,
                None => true,
            };
            if whole {
                self.keep_hot(key, &entry, bytes.clone(), &relative_path);
            }
        }
        Some(Hit {
            bytes,
            relative_path,
        })
    }

    /// Take an object just read into the memory tier, under the write lock and only if its file is
    /// still the one it was read as: a removal (eviction, repair, purge) or a new write that ran
    /// since the read has already cleared the tier, and must not be undone by this insert.
    fn keep_hot(&self, key: &DerivativeKey, entry: &Entry, bytes: Option<Bytes>, path: &str) {
        let Ok(_guard) = lock(&self.write_lock) else {
            return;
        };
        // The same file (the hit itself may just have advanced its access time).
        let current = match self.index.get(key) {
            Ok(Some(e)) if e.len == entry.len && e.hash == entry.hash && e.ext == entry.ext => e,
            _ => return,
        };
        if self.closed() {
            return;
        }
        self.hot.insert(
            *key,
            HotObject {
                bytes,
                relative_path: path.to_owned(),
                len: current.len,
                hash: current.hash,
                last_access: AtomicU64::new(current.last_access),
            },
        );
    }

    /// Look `key` up in the memory tier only: no index read, no file read, no waiting on a lock
    /// held across I/O, so it may be called on the async threads. When the proxy sends the files
    /// (no bytes kept), the file's length is checked with one `stat` (as nginx itself does before
    /// sending it), so a file truncated or removed behind the store's back is still a miss.
    pub(crate) fn lookup_hot(&self, key: &DerivativeKey) -> Option<Hit> {
        let object = self.hot.get(key)?;
        if object.bytes.is_none() {
            let ext = object.relative_path.rsplit('.').next().unwrap_or("");
            match std::fs::metadata(self.files.path(key, ext)) {
                Ok(m) if m.len() == object.len => {}
                _ => {
                    // The disk lookup that follows repairs it.
                    self.hot.remove(key);
                    return None;
                }
            }
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        self.hot.counters.hits.fetch_add(1, Ordering::Relaxed);
        let now = now_secs();
        if now.saturating_sub(object.last_access.load(Ordering::Relaxed)) >= ACCESS_GRANULARITY_SECS
        {
            if let Ok(mut due) = self.touches.lock() {
                due.entry(*key)
                    .or_insert_with(|| std::sync::Arc::clone(&object));
            }
        }
        Some(Hit {
            bytes: object.bytes.clone(),
            relative_path: object.relative_path.clone(),
        })
    }

    /// The memory tier's counters and usage (bytes, objects).
    pub(crate) fn hot_figures(&self) -> (&hot::HotCounters, (u64, u64)) {
        (&self.hot.counters, self.hot.usage())
    }

    /// Record in the index the memory tier's hits that are due (so eviction sees them used).
    fn record_hot_touches(&self) {
        let due = match self.touches.lock() {
            Ok(mut due) => std::mem::take(&mut *due),
            Err(_) => return,
        };
        let now = now_secs();
        for (key, object) in due {
            let seen = match self.index.get(&key) {
                Ok(Some(e)) if e.len == object.len && e.hash == object.hash => e,
                _ => continue,
            };
            match self.touch(&key, &seen, now) {
                Ok(()) => object.last_access.store(now, Ordering::Relaxed),
                Err(e) => tracing::warn!(key = %key.to_hex(), "cannot record a hit: {e}"),
            }
        }
    }

    fn touch(&self, key: &DerivativeKey, seen: &Entry, now: u64) -> io::Result<()> {
        let _guard = lock(&self.write_lock)?;
        // Only the entry we read: a write that replaced it meanwhile has its own length and hash.
        if self.index.get(key).map_err(io_err)?.as_ref() == Some(seen) {
            self.index.touch(key, seen, now).map_err(io_err)?;
        }
        Ok(())
    }

    /// [`Store::lookup`] again for a key already looked up and missed (the render worker's check
    /// that no render landed meanwhile): an absent key is not counted a second time, so
    /// `iiifd_store_misses_total` counts each cold render once.
    pub(crate) fn recheck(&self, key: &DerivativeKey, ext: &str) -> Option<Hit> {
        match self.index.contains(key) {
            Ok(false) => None,
            Ok(true) | Err(_) => self.lookup(key, ext, true),
        }
    }

    /// A lookup found no entry: if the object's file is there anyway, it is indexed now and served
    /// (the index was lost, or a crash came between the file and its entry).
    fn adopt_on_lookup(&self, key: &DerivativeKey, ext: &str, read_body: bool) -> Option<Hit> {
        let path = self.files.path(key, ext);
        if !path.exists() {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let found = FoundObject {
            key: *key,
            ext: ext.to_owned(),
            path,
        };
        match self.adopt(&found) {
            Ok(Some(bytes)) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(Hit {
                    bytes: read_body.then(|| Bytes::from(bytes)),
                    relative_path: Files::relative_path(key, ext),
                })
            }
            // An entry appeared meanwhile (a render finished): a miss now, a hit next time.
            Ok(None) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::warn!(key = %key.to_hex(), "cannot index a stored file: {e}");
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Index a file that has no entry; returns its bytes, or `None` when an entry appeared meanwhile.
    fn adopt(&self, found: &FoundObject) -> io::Result<Option<Vec<u8>>> {
        let data = std::fs::read(&found.path)?;
        let created = std::fs::metadata(&found.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(now_secs(), |d| d.as_secs());
        let _guard = lock(&self.write_lock)?;
        if self.index.contains(&found.key).map_err(io_err)? {
            return Ok(None);
        }
        let entry = Entry {
            len: data.len() as u64,
            created,
            last_access: created,
            hash: content_hash(&data),
            ext: found.ext.clone(),
        };
        self.index_entry(&found.key, &entry)?;
        self.counters.adopted.fetch_add(1, Ordering::Relaxed);
        Ok(Some(data))
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
        if let Err(e) = self.remove_if_unchanged(key, entry) {
            tracing::warn!(key = %key.to_hex(), "could not remove a bad object: {e}");
        }
        None
    }

    /// Remove one object (file first, then its entry: an entry without a file is a harmless miss,
    /// never a wrong answer) if its entry is still `seen`. Returns whether it was removed.
    fn remove_if_unchanged(&self, key: &DerivativeKey, seen: &Entry) -> io::Result<bool> {
        let _guard = lock(&self.write_lock)?;
        if self.closed() || self.index.get(key).map_err(io_err)?.as_ref() != Some(seen) {
            return Ok(false);
        }
        self.hot.remove(key);
        self.files.remove(key, &seen.ext)?;
        if let Some(removed) = self.index.remove(key).map_err(io_err)? {
            self.account(key, -(removed.len as i64), -1);
        }
        Ok(true)
    }

    /// Remove one object whatever its entry says; returns whether there was a file or an entry.
    fn remove_object(&self, key: &DerivativeKey, ext: &str) -> io::Result<bool> {
        let _guard = lock(&self.write_lock)?;
        if self.closed() {
            return Ok(false);
        }
        self.hot.remove(key);
        let had_file = self.files.remove(key, ext)?;
        let removed = self.index.remove(key).map_err(io_err)?;
        if let Some(removed) = &removed {
            self.account(key, -(removed.len as i64), -1);
        }
        Ok(had_file || removed.is_some())
    }

    /// Change the running totals (the caller holds the write lock).
    fn account(&self, key: &DerivativeKey, bytes: i64, objects: i64) {
        let apply = |a: &AtomicU64, d: i64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add_signed(d))
            });
        };
        apply(&self.bytes, bytes);
        apply(&self.objects, objects);
        if let Ok(mut pass) = self.pass.lock() {
            if let Some(p) = pass.as_mut() {
                if p.behind.is_some_and(|b| key.as_bytes() <= b.as_bytes()) {
                    p.bytes += bytes;
                    p.objects += objects;
                }
            }
        }
    }

    /// Persist `bytes` as `key`, rendered from `identifier`. Errors are returned for logging and
    /// counting; the caller still serves the bytes it rendered.
    pub(crate) fn put(
        &self,
        key: &DerivativeKey,
        ext: &str,
        bytes: &[u8],
        identifier: &str,
    ) -> Result<(), StoreError> {
        let local = self.count_failure(self.put_inner(key, ext, bytes, identifier));
        // The other nodes' copy too, whatever became of ours (never an error: see `shared`).
        if let Some(tier) = &self.shared {
            tier.put(identifier, key, ext, bytes);
        }
        Ok(local?)
    }

    /// Attach the cluster's shared tier (before the store is shared between threads).
    pub(crate) fn attach_shared(&mut self, tier: shared::SharedTier) {
        self.shared = Some(tier);
    }

    /// The shared tier, when there is one.
    pub(crate) fn shared(&self) -> Option<&shared::SharedTier> {
        self.shared.as_ref()
    }

    /// After a local miss: the derivative from the shared tier, copied into the local store (the
    /// copy failing costs only the next hit). `None` without a tier or when it has nothing.
    pub(crate) fn lookup_shared(
        &self,
        key: &DerivativeKey,
        ext: &str,
        identifier: &str,
        read_body: bool,
    ) -> Option<Hit> {
        let bytes = self.shared.as_ref()?.get(identifier, key, ext)?;
        let copied = match self.count_failure(self.put_inner(key, ext, &bytes, identifier)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(key = %key.to_hex(), "could not copy a shared-tier object: {e}");
                false
            }
        };
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(Hit {
            // A proxy can only be sent to a file that is there.
            bytes: (read_body || !copied).then(|| Bytes::from(bytes)),
            relative_path: Files::relative_path(key, ext),
        })
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
            self.files.record_identifier(identifier, key, ext)?;
            // Filling can take a while (a tiled copy encodes thousands of tiles): not under the write
            // lock, which only guards the index update. The file is complete once renamed in place.
            let path = self.files.write_with(key, ext, fill)?;
            let mut f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            let hash = crate::key::content_hash_reader(&mut f)?;
            let _guard = lock(&self.write_lock)?;
            self.index_new(key, ext, len, hash)
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
        // The line first: a crash after it leaves a line without an object (harmless), never an
        // object that `purge` cannot find.
        self.files.record_identifier(identifier, key, ext)?;
        let _guard = lock(&self.write_lock)?;
        self.files.write(key, ext, bytes)?;
        self.index_new(key, ext, bytes.len() as u64, content_hash(bytes))
    }

    /// Index an object just written (the caller holds the write lock).
    fn index_new(
        &self,
        key: &DerivativeKey,
        ext: &str,
        len: u64,
        hash: crate::key::ContentHash,
    ) -> io::Result<()> {
        let now = now_secs();
        let entry = Entry {
            len,
            created: now,
            last_access: now,
            hash,
            ext: ext.to_owned(),
        };
        self.index_entry(key, &entry)
    }

    /// Insert `entry` and count it (the caller holds the write lock).
    fn index_entry(&self, key: &DerivativeKey, entry: &Entry) -> io::Result<()> {
        // A new file under the key: whatever memory held of the old one is not it.
        self.hot.remove(key);
        let previous = self.index.insert(key, entry).map_err(io_err)?;
        if let Some(prev) = previous {
            self.account(key, -(prev.len as i64), -1);
        }
        self.account(key, entry.len as i64, 1);
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
    /// keeps a store at its limit from evicting on every write). Reads the index's access order from
    /// its oldest end, so the cost is proportional to what is evicted. Returns the number evicted.
    pub(crate) fn evict_to_budget(&self) -> usize {
        let max = self.settings.max_bytes;
        if self.bytes.load(Ordering::Relaxed) <= max {
            return 0;
        }
        let target = max / 10 * 9;
        let mut evicted = 0;
        let mut batches = 0u32;
        'outer: while self.bytes.load(Ordering::Relaxed) > target {
            batches += 1;
            // A long pass frees as much as it allocates (index nodes read, removed, rewritten):
            // hand it back as it goes, so the pass's resident set stays flat.
            if batches % 64 == 0 {
                crate::memory::release_free_heap();
            }
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            let batch = match self.index.oldest(WALK_BATCH) {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!("eviction cannot read the access order: {e}");
                    break;
                }
            };
            for record in batch {
                if self.bytes.load(Ordering::Relaxed) <= target {
                    break 'outer;
                }
                match self.evict_one(&record) {
                    Ok(true) => {
                        evicted += 1;
                        // Counted as it goes: a long pass shows its progress in /metrics.
                        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("eviction failed: {e}");
                        break 'outer;
                    }
                }
            }
        }
        evicted
    }

    /// Evict the object of an access record if the record is current; drop it if stale.
    fn evict_one(&self, record: &index::AccessRecord) -> io::Result<bool> {
        let _guard = lock(&self.write_lock)?;
        if self.closed() {
            return Ok(false);
        }
        match self.index.get(&record.key).map_err(io_err)? {
            Some(entry) if entry.last_access == record.last_access => {
                self.hot.remove(&record.key);
                self.files.remove(&record.key, &entry.ext)?;
                self.index.remove(&record.key).map_err(io_err)?;
                self.account(&record.key, -(entry.len as i64), -1);
                Ok(true)
            }
            _ => {
                self.index.remove_access_record(record).map_err(io_err)?;
                Ok(false)
            }
        }
    }

    /// Start the background work: the evictor (when a write pushes the store past its budget, and
    /// every few seconds regardless, also saving the totals) and, if the index needs it, one
    /// reconcile pass at `store.reconcile_rate`. Both stop at [`Store::close`] or when the store is
    /// dropped.
    pub(crate) fn start_background(self: &Arc<Self>) -> io::Result<()> {
        let (tx, rx) = sync_channel::<()>(1);
        if let Ok(mut guard) = self.kick.lock() {
            *guard = Some(tx);
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("iiifd-evictor".into())
            .spawn(move || evictor(&weak, &rx))?;
        // Opened over its budget (a smaller budget configured): start now, not at the first tick.
        if self.bytes.load(Ordering::Relaxed) > self.settings.max_bytes {
            self.kick_evictor();
        }
        if self.needs_reconcile() {
            let store = Arc::clone(self);
            std::thread::Builder::new()
                .name("iiifd-reconcile".into())
                .spawn(move || {
                    let rate = store.settings.reconcile_rate;
                    match store.reconcile(rate) {
                        Ok(r) => tracing::info!(report = ?r, "store reconciled"),
                        Err(e) => tracing::warn!("store reconcile failed: {e}"),
                    }
                })?;
        }
        Ok(())
    }

    /// One reconcile pass, at most `rate` checks a second (0: unbounded): carry over entries of the
    /// first index format, drop entries whose file is gone or of another length, give entries their
    /// missing access records, recount the totals, then give files without an entry one. Holds at
    /// most one batch in memory. Writes and hits go on meanwhile.
    pub(crate) fn reconcile(&self, rate: u64) -> io::Result<ReconcileReport> {
        let _one = lock(&self.pass_lock)?;
        self.counters.reconcile_running.store(1, Ordering::Relaxed);
        let result = self.reconcile_inner(rate);
        self.counters.reconcile_running.store(0, Ordering::Relaxed);
        if let Ok(mut pass) = self.pass.lock() {
            pass.take();
        }
        let report = result?;
        if report.complete {
            self.needs_pass.store(false, Ordering::Relaxed);
            self.counters
                .reconcile_passes
                .fetch_add(1, Ordering::Relaxed);
            self.save_totals(false);
        }
        Ok(report)
    }

    fn reconcile_inner(&self, rate: u64) -> io::Result<ReconcileReport> {
        let started = Instant::now();
        let mut report = ReconcileReport::default();
        let mut pace = Pace::new(rate);
        let stop = || self.stopping.load(Ordering::Relaxed);
        // 1. The first index format: its identifiers go to the lists, its entries are written anew.
        loop {
            if stop() {
                return Ok(report);
            }
            let batch = self.index.legacy_batch(WALK_BATCH).map_err(io_err)?;
            if batch.is_empty() {
                break;
            }
            for (key, old) in batch {
                if !old.identifier.is_empty() {
                    self.files
                        .record_identifier(&old.identifier, &key, &old.ext)?;
                }
                report.legacy_migrated += 1;
            }
            pace.wait(WALK_BATCH as u64);
        }
        // 2. Every entry against its file, summing as we go.
        {
            let _guard = lock(&self.write_lock)?;
            *lock(&self.pass)? = Some(PassCursor {
                behind: None,
                bytes: 0,
                objects: 0,
            });
        }
        let (mut bytes, mut objects) = (0u64, 0u64);
        let mut cursor: Option<DerivativeKey> = None;
        loop {
            if stop() {
                return Ok(report);
            }
            let batch = {
                let _guard = lock(&self.write_lock)?;
                let batch = self
                    .index
                    .entries_after(cursor.as_ref(), WALK_BATCH)
                    .map_err(io_err)?;
                if let Some((last, _)) = batch.last() {
                    cursor = Some(*last);
                    if let Some(p) = lock(&self.pass)?.as_mut() {
                        p.behind = cursor;
                    }
                }
                for (_, entry) in &batch {
                    if let Some(e) = entry {
                        bytes += e.len;
                        objects += 1;
                    }
                }
                batch
            };
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            for (key, entry) in batch {
                report.entries_checked += 1;
                let Some(entry) = entry else {
                    // Undecodable (not counted above): an object the lookup will re-render.
                    let _guard = lock(&self.write_lock)?;
                    self.index.remove(&key).map_err(io_err)?;
                    continue;
                };
                let on_disk = std::fs::metadata(self.files.path(&key, &entry.ext)).map(|m| m.len());
                if on_disk.ok() != Some(entry.len) {
                    if self.remove_if_unchanged(&key, &entry)? {
                        report.dangling_dropped += 1;
                    }
                } else if !self
                    .index
                    .has_access_record(&key, entry.last_access)
                    .map_err(io_err)?
                {
                    let _guard = lock(&self.write_lock)?;
                    if self.index.get(&key).map_err(io_err)?.as_ref() == Some(&entry) {
                        self.index.put_access_record(&key, &entry).map_err(io_err)?;
                    }
                }
            }
            self.counters
                .reconcile_checked
                .fetch_add(n, Ordering::Relaxed);
            pace.wait(n);
        }
        {
            let _guard = lock(&self.write_lock)?;
            let pass = lock(&self.pass)?.take();
            let (db, dn) = pass.map_or((0, 0), |p| (p.bytes, p.objects));
            self.bytes
                .store(bytes.saturating_add_signed(db), Ordering::Relaxed);
            self.objects
                .store(objects.saturating_add_signed(dn), Ordering::Relaxed);
            self.save_totals_locked(false);
        }
        self.counters
            .reconcile_dropped
            .fetch_add(report.dangling_dropped, Ordering::Relaxed);
        // 3. Every file for an entry.
        for found in self.files.walk() {
            if report.files_checked % WALK_BATCH as u64 == 0 {
                if stop() {
                    return Ok(report);
                }
                self.counters
                    .reconcile_checked
                    .fetch_add(WALK_BATCH as u64, Ordering::Relaxed);
                pace.wait(WALK_BATCH as u64);
            }
            report.files_checked += 1;
            if self.index.contains(&found.key).map_err(io_err)? {
                continue;
            }
            match self.adopt(&found) {
                Ok(Some(_)) => report.orphans_indexed += 1,
                Ok(None) => {}
                // Removed meanwhile (evicted, purged): nothing to index.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if self.bytes.load(Ordering::Relaxed) > self.settings.max_bytes {
            self.kick_evictor();
        }
        report.complete = true;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Check every entry against its file (reading and hashing it), and count files without an
    /// entry. Holds one batch at a time.
    pub(crate) fn verify(&self) -> io::Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut cursor: Option<DerivativeKey> = None;
        loop {
            let batch = self
                .index
                .entries_after(cursor.as_ref(), WALK_BATCH)
                .map_err(io_err)?;
            let Some((last, _)) = batch.last() else { break };
            cursor = Some(*last);
            for (key, entry) in &batch {
                report.checked += 1;
                let ok = entry.as_ref().is_some_and(|e| {
                    std::fs::read(self.files.path(key, &e.ext))
                        .map(|b| b.len() as u64 == e.len && content_hash(&b) == e.hash)
                        .unwrap_or(false)
                });
                if !ok {
                    report.bad += 1;
                    if report.bad_keys.len() < 20 {
                        report.bad_keys.push(key.to_hex());
                    }
                }
            }
        }
        for found in self.files.walk() {
            if !self.index.contains(&found.key).map_err(io_err)? {
                report.unindexed += 1;
            }
        }
        Ok(report)
    }

    /// Garbage-collect now, at full speed: temp files, a reconcile pass, then the budget.
    pub(crate) fn gc(&self) -> io::Result<ReconcileReport> {
        self.files.remove_temps()?;
        let report = self.reconcile(0)?;
        self.evict_to_budget();
        Ok(report)
    }

    /// Rebuild the index from the files, now.
    pub(crate) fn reindex(&self) -> io::Result<ReconcileReport> {
        {
            let _guard = lock(&self.write_lock)?;
            self.index.clear().map_err(io_err)?;
            self.bytes.store(0, Ordering::Relaxed);
            self.objects.store(0, Ordering::Relaxed);
            self.needs_pass.store(true, Ordering::Relaxed);
        }
        self.reconcile(0)
    }

    /// Remove every object rendered from `identifier` (by its list beside the objects, so this
    /// works on a rebuilt index too); returns how many.
    pub(crate) fn purge(&self, identifier: &str) -> io::Result<usize> {
        let listed = {
            let _guard = lock(&self.write_lock)?;
            self.files.take_identifier(identifier)?
        };
        let mut n = 0;
        for (key, ext) in listed {
            if self.remove_object(&key, &ext)? {
                n += 1;
            }
        }
        self.files.purged_identifier(identifier)?;
        if let Some(tier) = &self.shared {
            // Every node's renders of it: they share one folder in the tier.
            match tier.purge(identifier) {
                Ok(k) => tracing::info!(identifier, objects = k, "purged from the shared tier"),
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "purged locally, but not from the shared tier: {e}"
                    )))
                }
            }
        }
        Ok(n)
    }

    /// Current size figures (running totals: O(1)).
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

    fn save_totals(&self, clean: bool) {
        if let Ok(_guard) = self.write_lock.lock() {
            self.save_totals_locked(clean);
        }
    }

    /// [`Store::save_totals`] for a caller that holds the write lock.
    fn save_totals_locked(&self, clean: bool) {
        // Once closing, only the close's own save counts: a background save finishing later must
        // not mark a cleanly closed store as crashed.
        if !clean && self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let totals = Totals {
            objects: self.objects.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            clean,
        };
        if let Err(e) = self.index.save_totals(&totals) {
            tracing::warn!("cannot save the store's totals: {e}");
        }
    }

    /// Flush the index to disk.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        Ok(self.index.flush()?)
    }

    /// Stop the background work and save the totals as those of a clean close (unless a reconcile
    /// pass is still owed), so the next open trusts them.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(mut guard) = self.kick.lock() {
            guard.take();
        }
        // A running pass stops at its next step; wait for it, so its totals are not half-made.
        let _pass = self.pass_lock.lock();
        self.save_totals(!self.needs_reconcile());
        self.flush()
    }
}

/// Paces a walk at `rate` steps a second (0: unbounded), sleeping between batches.
struct Pace {
    rate: u64,
    started: Instant,
    done: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate,
            started: Instant::now(),
            done: 0,
        }
    }

    fn wait(&mut self, steps: u64) {
        self.done += steps;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.done as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead.min(Duration::from_secs(1)));
        }
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
        match rx.recv_timeout(BACKGROUND_TICK) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(store) = store.upgrade() else { return };
        if store.stopping.load(Ordering::Relaxed) {
            return;
        }
        store.record_hot_touches();
        let n = store.evict_to_budget();
        if n > 0 {
            tracing::info!(
                evicted = n,
                bytes = store.stats().bytes,
                "store back under its budget"
            );
            crate::memory::release_free_heap();
        }
        store.save_totals(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn key(n: u8) -> DerivativeKey {
        DerivativeKey::from_slice(&[n; 32]).unwrap_or_else(|| unreachable!())
    }

    fn settings(dir: &Path, max_bytes: u64) -> StoreSettings {
        StoreSettings {
            path: dir.to_path_buf(),
            max_bytes,
            min_free_bytes: 0,
            verify_reads: true,
            fsync: true,
            index_cache_bytes: 1 << 20,
            reconcile_rate: 0,
            memory_bytes: 1 << 20,
            memory_object_max_bytes: 64 << 10,
        }
    }

    /// The totals recounted from the index the slow way.
    fn counted(store: &Store) -> io::Result<(u64, u64)> {
        let (mut objects, mut bytes, mut cursor) = (0, 0, None);
        loop {
            let batch = store
                .index
                .entries_after(cursor.as_ref(), 100)
                .map_err(io_err)?;
            let Some((last, _)) = batch.last() else {
                return Ok((objects, bytes));
            };
            cursor = Some(*last);
            for e in batch.iter().filter_map(|(_, e)| e.as_ref()) {
                objects += 1;
                bytes += e.len;
            }
        }
    }

    #[test]
    fn put_lookup_corrupt_repair() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
        store.put(&key(1), "jpg", b"0123456789", "a")?;
        assert_eq!(
            store.lookup(&key(1), "jpg", true).and_then(|h| h.bytes),
            Some(Bytes::from_static(b"0123456789"))
        );
        // Same length, different bytes: only the hash can tell.
        std::fs::write(store.files.path(&key(1), "jpg"), b"9876543210")?;
        assert!(store.lookup(&key(1), "jpg", true).is_none());
        assert_eq!(store.counters.repairs.load(Ordering::Relaxed), 1);
        assert_eq!(store.stats().objects, 0);
        Ok(())
    }

    #[test]
    fn the_memory_tier_holds_only_what_the_disk_holds() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut set = settings(dir.path(), 1 << 20);
        set.verify_reads = false;
        let (store, _) = Store::open(set)?;
        store.put(&key(1), "jpg", b"0123456789", "a")?;
        assert!(
            store.lookup_hot(&key(1)).is_none(),
            "a render's bytes wait for a read"
        );
        store.lookup(&key(1), "jpg", true).ok_or("hit")?;
        let hot = store.lookup_hot(&key(1)).ok_or("read once: in memory")?;
        assert_eq!(hot.bytes.as_deref(), Some(&b"0123456789"[..]));
        // Changed on disk behind the store: memory still serves the bytes that were verified.
        std::fs::write(store.files.path(&key(1), "jpg"), b"9876543210")?;
        assert_eq!(
            store.lookup_hot(&key(1)).and_then(|h| h.bytes).as_deref(),
            Some(&b"0123456789"[..])
        );
        // A corrupt file is never taken in, even with verify_reads off.
        store.hot.remove(&key(1));
        store
            .lookup(&key(1), "jpg", true)
            .ok_or("unverified disk hit")?;
        assert!(store.lookup_hot(&key(1)).is_none(), "hashed on its way in");
        // Every way an object leaves the disk empties memory too.
        store.put(&key(2), "jpg", b"abc", "b")?;
        store.put(&key(3), "jpg", b"def", "b")?;
        store.put(&key(4), "png", b"ghi", "c")?;
        for n in [2, 3, 4] {
            let ext = if n == 4 { "png" } else { "jpg" };
            store.lookup(&key(n), ext, true).ok_or("hit")?;
            assert!(store.lookup_hot(&key(n)).is_some());
        }
        assert_eq!(store.purge("b")?, 2);
        assert!(store.lookup_hot(&key(2)).is_none() && store.lookup_hot(&key(3)).is_none());
        store.put(&key(4), "png", b"new", "c")?;
        assert!(store.lookup_hot(&key(4)).is_none(), "rewritten");
        // Without bodies (the proxy sends the file), a hit checks the file's length.
        store.lookup(&key(4), "png", false).ok_or("hit")?;
        assert!(store.lookup_hot(&key(4)).is_some_and(|h| h.bytes.is_none()));
        std::fs::write(store.files.path(&key(4), "png"), b"shorter!!")?;
        assert!(
            store.lookup_hot(&key(4)).is_none(),
            "truncated or grown: a miss"
        );
        assert_eq!(store.hot.counters.hits.load(Ordering::Relaxed), 6);
        Ok(())
    }

    #[test]
    fn memory_hits_are_recorded_for_eviction() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
        store.put(&key(1), "jpg", b"0123456789", "a")?;
        store.lookup(&key(1), "jpg", true).ok_or("hit")?;
        // Pretend the last recorded access was long ago.
        let old = Entry {
            last_access: 1,
            ..store.index.get(&key(1))?.ok_or("entry")?
        };
        store.index.insert(&key(1), &old)?;
        store.hot.remove(&key(1));
        store.lookup(&key(1), "jpg", true).ok_or("hit")?;
        let entry = store.index.get(&key(1))?.ok_or("entry")?;
        assert!(entry.last_access > 1, "a disk hit records itself");
        store.index.insert(&key(1), &old)?;
        if let Some(o) = store.hot.get(&key(1)) {
            o.last_access.store(1, Ordering::Relaxed);
        }
        store.lookup_hot(&key(1)).ok_or("memory hit")?;
        assert_eq!(
            store.index.get(&key(1))?.ok_or("entry")?.last_access,
            1,
            "no write on the hit"
        );
        store.record_hot_touches();
        assert!(
            store.index.get(&key(1))?.ok_or("entry")?.last_access > 1,
            "recorded in the background"
        );
        Ok(())
    }

    #[test]
    fn a_clean_close_is_trusted_and_a_crash_is_reconciled() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
            assert!(!rec.reconcile_needed, "a new store owes nothing");
            for n in 0..10 {
                store.put(&key(n), "png", &[n; 100], "img")?;
            }
            std::fs::remove_file(store.files.path(&key(3), "png"))?;
            store.close()?;
        }
        // A file without an entry (as after a crash between rename and index write) and a temp file.
        let orphan = Files::open(dir.path(), true)?;
        orphan.write(&key(42), "jpg", b"orphan")?;
        std::fs::write(dir.path().join("tmp/x.tmp"), b"partial")?;
        let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
        assert_eq!((rec.temps_removed, rec.reconcile_needed), (1, false));
        assert_eq!(store.stats().objects, 10, "the saved totals, trusted");
        let report = store.gc()?;
        assert_eq!((report.dangling_dropped, report.orphans_indexed), (1, 1));
        assert_eq!(store.stats().objects, 10);
        assert_eq!(counted(&store)?, (10, 9 * 100 + 6));
        assert_eq!(store.stats().bytes, 906);
        assert_eq!(store.verify()?.bad, 0);
        drop(store); // no close: a crash
        let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
        assert!(rec.reconcile_needed);
        assert!(store.reconcile(0)?.complete);
        assert!(!store.needs_reconcile());
        assert_eq!(store.stats().objects, 10);
        Ok(())
    }

    #[test]
    fn eviction_takes_the_least_recently_used_and_purge_survives_a_lost_index() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
            for n in 0..10 {
                store.put(&key(n), "png", &[n; 100], "img")?;
            }
            store.put(&key(77), "gif", b"kept", "other")?;
            // Objects 0-4 were hit later than 5-9.
            for n in 0..5 {
                let e = store.index.get(&key(n))?.ok_or("entry")?;
                store.index.touch(&key(n), &e, e.last_access + 3600)?;
            }
            store.close()?;
        }
        // Budget 600: 1004 bytes are stored, eviction goes down to 540: the five never hit.
        let (store, _) = Store::open(settings(dir.path(), 600))?;
        assert_eq!(store.evict_to_budget(), 5);
        assert_eq!(store.stats().bytes, 504);
        for n in 0..10 {
            let kept = store.lookup(&key(n), "png", false).is_some();
            assert_eq!(kept, n < 5, "object {n}: only those hit later are kept");
        }
        assert_eq!(
            counted(&store)?,
            (store.stats().objects, store.stats().bytes)
        );
        store.close()?;
        drop(store);
        // A destroyed index: the files are indexed again, and purge still finds what it needs.
        std::fs::remove_dir_all(dir.path().join("index"))?;
        std::fs::create_dir_all(dir.path().join("index"))?;
        std::fs::write(dir.path().join("index/db"), b"garbage garbage garbage")?;
        let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
        assert!(rec.reconcile_needed);
        store.reconcile(0)?;
        assert_eq!(store.verify()?.bad, 0);
        let on_disk = store.files.walk().count() as u64;
        assert_eq!(store.stats().objects, on_disk);
        assert_eq!(store.purge("img")?, 5);
        assert_eq!(store.purge("img")?, 0);
        assert_eq!(store.stats().objects, on_disk - 5);
        assert_eq!(store.files.walk().count() as u64, on_disk - 5);
        Ok(())
    }

    #[test]
    fn a_background_save_after_close_does_not_mark_a_crash() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
            store.put(&key(1), "jpg", b"x", "a")?;
            store.close()?;
            // The evictor's tick, and an eviction, finishing just after the close.
            store.save_totals(false);
            assert!(!store.remove_object(&key(1), "jpg")?);
            store.flush()?;
        }
        let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
        assert!(!rec.reconcile_needed);
        assert_eq!(store.stats().objects, 1);
        assert_eq!(
            store.verify()?.bad,
            0,
            "the object outlived the close with its entry"
        );
        Ok(())
    }

    #[test]
    fn a_lookup_adopts_a_file_without_an_entry() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
        store.files.write(&key(9), "webp", b"pixels")?;
        assert!(
            store.lookup(&key(9), "jpg", true).is_none(),
            "another format"
        );
        let hit = store.lookup(&key(9), "webp", true).ok_or("adopted")?;
        assert_eq!(hit.bytes.as_deref(), Some(&b"pixels"[..]));
        assert_eq!(store.counters.adopted.load(Ordering::Relaxed), 1);
        assert_eq!(store.stats().objects, 1);
        assert!(store.lookup(&key(9), "webp", true).is_some());
        assert_eq!(store.counters.adopted.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn totals_stay_exact_while_a_pass_runs_beside_writes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut set = settings(dir.path(), 1 << 30);
        set.fsync = false;
        let (store, _) = Store::open(set)?;
        let store = Arc::new(store);
        for n in 0..200u8 {
            store.put(&key(n), "jpg", &vec![n; usize::from(n) + 1], "x")?;
        }
        // Drift the totals as a crash would; recount slowly while a writer changes entries on both
        // sides of the walk's cursor, and check the totals the pass leaves, with no pass after it.
        store.bytes.store(1, Ordering::Relaxed);
        store.objects.store(1, Ordering::Relaxed);
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            std::thread::spawn(move || -> Result<u64, StoreError> {
                while store.counters.reconcile_running.load(Ordering::Relaxed) == 0 {
                    std::thread::yield_now();
                }
                let mut ops = 0;
                for round in 0u64.. {
                    for n in (0..=255u8).rev().step_by(7) {
                        if done.load(Ordering::Relaxed) {
                            return Ok(ops);
                        }
                        if (u64::from(n) + round) % 2 == 0 {
                            let len = 10 + usize::from(n) + (round % 5) as usize;
                            store.put(&key(n), "jpg", &vec![n; len], "x")?;
                        } else {
                            store.remove_object(&key(n), "jpg")?;
                        }
                        ops += 1;
                    }
                }
                Ok(ops)
            })
        };
        let report = store.reconcile(300)?;
        done.store(true, Ordering::Relaxed);
        let ops = writer.join().map_err(|_| "writer panicked")??;
        assert!(
            report.complete && ops > 50,
            "{ops} writes beside {report:?}"
        );
        assert_eq!(
            counted(&store)?,
            (store.stats().objects, store.stats().bytes)
        );
        Ok(())
    }
}
