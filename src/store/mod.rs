//! The derivative store: rendered images persisted as files. Since store format 3 each object file
//! is its own and only record ([`files`]: its path names the key, its length is the object's, its
//! modification time its last access, its blake3 in an extended attribute), and the sled index
//! ([`index`]) keeps only what is small and aggregate: a summary per object directory ([`summary`],
//! [`dirs`]), the totals, probes, crawl jobs. So neither memory nor start-up grows with the number
//! of stored objects. The jobs, one file each:
//!
//! - open (here): take the saved summaries and serve at once. If the last process did not close the
//!   store (a crash), the index was lost, or it is of format 2, a background recount
//!   ([`Store::reconcile`], in `recount`) walks the directories at `store.reconcile_rate` files a
//!   second and replaces each summary; until it is done the totals are approximate
//!   (`iiifd_store_totals_approximate`). A format 2 store is upgraded by the same walk: each file
//!   takes its hash and last access from the old per-object record, which is then dropped.
//! - read (here): open the file by its path; its length is checked against its attribute, and the
//!   blake3 of the bytes when `verify_reads` is on. A missing file is a miss; a short or
//!   mismatching one is removed and counted as a repair, never a corrupt response.
//! - write (here): the identifier's list line, the file staged with its attribute, then published
//!   by a rename under its directory's lock, which also moves the directory's summary. Writes are
//!   skipped, not failed, when the disk is nearly full (`min_free_bytes`).
//! - budget (`evict`): in the background, from the directories' summaries a cut-off time is chosen
//!   that frees enough, and each directory with older bytes is walked once, removing its files last
//!   accessed before it: the cost of an evicted object does not depend on the store's size.
//! - verify (`verify`): every file read and hashed against its attribute.
//! - memory ([`hot`]): hot objects are also kept in memory and [`Store::lookup_hot`] answers them
//!   without blocking, so that a hit on them never leaves the async thread.
//! - access: a hit writes nothing; when its file's recorded access is a minute old, the new one is
//!   queued for the background thread, which sets the file's time (and moves its directory's
//!   summary) within seconds.
//!
//! Every other method blocks; the pipeline calls them off the async threads.

pub(crate) mod dirs;
mod evict;
pub(crate) mod files;
pub(crate) mod hot;
pub(crate) mod index;
mod recount;
pub(crate) mod shared;
pub(crate) mod summary;
mod verify;

use crate::key::{content_hash, DerivativeKey};
use bytes::Bytes;
use dirs::Dirs;
use files::{now_secs, read_all, stored_hash, FileMeta, Files, Staged};
use hot::{HotObject, HotTier};
pub use index::IndexError;
pub(crate) use index::ProbeRecord;
use index::{Index, Meta, FORMAT};
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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
    /// Refuse to open on a file system without user extended attributes (no hashes to check).
    pub require_hashes: bool,
    /// fsync objects before they count as stored.
    pub fsync: bool,
    /// Bound of sled's page cache.
    pub index_cache_bytes: u64,
    /// Files a second of the background recount (0: unbounded).
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
    /// Objects found short or corrupt (removed, to be rendered again).
    pub repairs: AtomicU64,
    /// Objects evicted for the budget.
    pub evictions: AtomicU64,
    /// Writes that failed or were skipped for lack of space.
    pub write_errors: AtomicU64,
    /// Files without a hash attribute given one (copied in by hand, or left by a crash of format 2
    /// between a file and its record).
    pub adopted: AtomicU64,
    /// Whether a recount is running (0 or 1).
    pub reconcile_running: AtomicU64,
    /// Recounts completed.
    pub reconcile_passes: AtomicU64,
    /// Files counted by recounts.
    pub reconcile_checked: AtomicU64,
    /// Files removed by recounts: of another length than their format 2 record said.
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
    /// Whether the index was unreadable and set aside (its summaries are recounted in the
    /// background).
    pub rebuilt: bool,
    /// Objects moved from the first layout (`objects/ab/cd/`) to the current one.
    pub migrated: usize,
    /// Whether the store is of format 2, upgraded in place by the background recount.
    pub upgrading: bool,
    /// Whether the summaries need a recount (a crash, a lost index, an upgrade).
    pub reconcile_needed: bool,
    /// Whether objects carry their blake3 (the file system keeps user extended attributes).
    pub hashes: bool,
}

/// Size figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Stats {
    /// Objects stored.
    pub objects: u64,
    /// Their total size.
    pub bytes: u64,
    /// The budget.
    pub max_bytes: u64,
    /// Whether the figures are only approximate (a recount is due or running).
    pub approximate: bool,
}

/// The store.
pub(crate) struct Store {
    settings: StoreSettings,
    files: Files,
    index: Index,
    dirs: Dirs,
    /// Counters for metrics.
    pub counters: StoreCounters,
    kick: Mutex<Option<SyncSender<()>>>,
    /// One recount at a time.
    pass_lock: Mutex<()>,
    /// Set at open when the summaries cannot be trusted; cleared by a complete recount.
    needs_pass: AtomicBool,
    /// Background work stops at its next step, and no file changes once set.
    stopping: AtomicBool,
    /// Shared while an object is noted under its identifier and published, exclusive while a
    /// purge takes an identifier's list, so a purge never misses an object being published.
    ids_lock: std::sync::RwLock<()>,
    /// Held by every save of the summaries: a background save runs before a close's, or not.
    save_lock: Mutex<()>,
    /// The cluster's shared tier, when `store.shared.bucket` is set.
    shared: Option<shared::SharedTier>,
    /// Hot objects in memory.
    hot: HotTier,
    /// Hits whose access is due to be recorded on their file, by the background thread: a hit
    /// never writes (a file's time written on the request's path cost the p99 of hits a journal
    /// wait). At most [`MAX_DUE_TOUCHES`]; past that a hit is recorded by a later one.
    touches: Mutex<HashMap<DerivativeKey, DueTouch>>,
}

/// An access to record on an object's file.
enum DueTouch {
    /// A hit from memory: the object's own last access moves with its file's.
    Hot(Arc<HotObject>),
    /// A hit from disk, on the file as it was read.
    Disk { ext: String, meta: FileMeta },
}

/// Bound of the accesses waiting for the background thread (about 100 bytes each).
const MAX_DUE_TOUCHES: usize = 65_536;

fn io_err(e: IndexError) -> io::Error {
    io::Error::other(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| io::Error::other("store lock poisoned"))
}

/// The directory of an object (the first byte of its key).
fn dir_of(key: &DerivativeKey) -> u8 {
    key.as_bytes()[0]
}

/// Only record an access when the last is older than this, so hits do not turn into writes. It is
/// also eviction's finest resolution: objects hit within one minute of each other are equally old.
const ACCESS_GRANULARITY_SECS: u64 = 60;
/// How often the background thread wakes when no write has woken it (and saves the summaries).
const BACKGROUND_TICK: Duration = Duration::from_secs(5);

impl Store {
    /// Open the store at `settings.path`. Costs the same for any number of stored objects: no
    /// object is read.
    pub(crate) fn open(settings: StoreSettings) -> io::Result<(Store, Recovery)> {
        std::fs::create_dir_all(&settings.path)?;
        let files = Files::open(&settings.path, settings.fsync)?;
        let mut recovery = Recovery {
            hashes: files.xattrs(),
            ..Recovery::default()
        };
        if !files.xattrs() {
            if settings.require_hashes {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the file system does not keep user extended attributes, where stored \
                     objects keep their blake3 (store.verify = \"required\"): use ext4, XFS, \
                     btrfs or ZFS, or mount with user_xattr",
                ));
            }
            tracing::warn!(
                "the store's file system does not keep user extended attributes: objects are \
                 stored without their blake3, and reads check only what the file system \
                 guarantees (set store.fsync = true so a power loss cannot tear a file)"
            );
        }
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
                // Unreadable index: keep it aside for inspection; the files are the truth.
                let aside = settings.path.join(format!("index.broken-{}", now_secs()));
                tracing::warn!(
                    "store index unreadable ({e}); moving it to {} and recounting",
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
        recovery.upgrading = index.has_legacy();
        let meta = index.meta().map_err(io_err)?;
        recovery.reconcile_needed = recovery.rebuilt
            || recovery.upgrading
            || match meta {
                Some(m) => !m.clean,
                // A new store (nothing to count), or files without an index of this format.
                None => files.any_object()?,
            };
        let summaries = index.summaries().map_err(io_err)?;
        // From now on a crash must be noticed by the next open.
        index
            .save_meta(&Meta {
                format: FORMAT,
                clean: false,
            })
            .map_err(io_err)?;
        index.flush().map_err(io_err)?;
        let hot = HotTier::new(settings.memory_bytes, settings.memory_object_max_bytes);
        let store = Store {
            dirs: Dirs::new(summaries, recovery.reconcile_needed),
            settings,
            files,
            index,
            counters: StoreCounters::default(),
            kick: Mutex::new(None),
            pass_lock: Mutex::new(()),
            needs_pass: AtomicBool::new(recovery.reconcile_needed),
            stopping: AtomicBool::new(false),
            ids_lock: std::sync::RwLock::new(()),
            save_lock: Mutex::new(()),
            shared: None,
            hot,
            touches: Mutex::new(HashMap::new()),
        };
        Ok((store, recovery))
    }

    /// Whether [`Store::close`] has begun. File changes check it under their directory's lock:
    /// one that ran after the close's final save would leave a summary that no longer agrees.
    fn closed(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether the summaries still wait for a recount.
    pub(crate) fn needs_reconcile(&self) -> bool {
        self.needs_pass.load(Ordering::Relaxed)
    }

    /// Look up `key` (stored as `ext`). With `read_body`, the file is read (and hash-checked when
    /// `verify_reads`); without, only its length is checked against its attribute (the proxy will
    /// send it). Problems are misses.
    pub(crate) fn lookup(&self, key: &DerivativeKey, ext: &str, read_body: bool) -> Option<Hit> {
        let (file, meta) = match self.files.open_object(key, ext) {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => {
                tracing::warn!(key = %key.to_hex(), "store lookup failed: {e}");
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let expected = match stored_hash(&file) {
            Some(h) => Some(h),
            None => self.upgrade_on_lookup(key, &file, &meta),
        };
        if expected.is_some_and(|(_, len)| len != meta.len) {
            return self.repair(key, ext, &meta);
        }
        // Whether the bytes read were hashed: the memory tier takes only objects that were.
        let mut hashed = false;
        let bytes = if read_body {
            match read_all(&file, meta.len) {
                Ok(b) if b.len() as u64 == meta.len => {
                    if let (true, Some((hash, _))) = (self.settings.verify_reads, expected) {
                        if content_hash(&b) != hash {
                            return self.repair(key, ext, &meta);
                        }
                        hashed = true;
                    }
                    Some(Bytes::from(b))
                }
                _ => return self.repair(key, ext, &meta),
            }
        } else {
            None
        };
        let hot = self.hot.admits(meta.len);
        if hot && !hashed {
            // Checked once more when unchecked (`verify_reads` off), as memory takes only what
            // was hashed on its way in; found corrupt here, it is not served either.
            if let (Some(b), Some((hash, _))) = (&bytes, expected) {
                if content_hash(b) != hash {
                    return self.repair(key, ext, &meta);
                }
            }
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        let now = now_secs();
        let due = now.saturating_sub(meta.access) >= ACCESS_GRANULARITY_SECS;
        if due {
            self.note_access(
                key,
                DueTouch::Disk {
                    ext: ext.to_owned(),
                    meta,
                },
            );
        }
        let relative_path = Files::relative_path(key, ext);
        if hot {
            // Its access is recorded (or due to be): memory starts from that.
            let access = if due { now } else { meta.access };
            self.keep_hot(key, ext, &meta, access, bytes.clone(), &relative_path);
        }
        Some(Hit {
            bytes,
            relative_path,
        })
    }

    /// A file without a hash attribute, found by a lookup: while a format 2 store is upgraded, its
    /// old record says what the file must be (and the file takes the attribute now). Otherwise
    /// there is nothing to check it against.
    fn upgrade_on_lookup(
        &self,
        key: &DerivativeKey,
        file: &std::fs::File,
        meta: &FileMeta,
    ) -> Option<(crate::key::ContentHash, u64)> {
        let old = self.index.legacy_entry(key).ok()??;
        if old.len == meta.len {
            let upgraded = self
                .files
                .set_hash(file, &old.hash, old.len)
                .and_then(|()| match old.last_access > meta.access {
                    true => files::set_access(file, old.last_access),
                    false => Ok(()),
                });
            if let Err(e) = upgraded {
                tracing::warn!(key = %key.to_hex(), "cannot upgrade a stored object: {e}");
            }
        }
        Some((old.hash, old.len))
    }

    /// Queue an access for the background thread to record on the object's file.
    fn note_access(&self, key: &DerivativeKey, touch: DueTouch) {
        if let Ok(mut due) = self.touches.lock() {
            if due.len() < MAX_DUE_TOUCHES {
                due.entry(*key).or_insert(touch);
            }
        }
    }

    /// Take an object just read into the memory tier, under its directory's lock and only if its
    /// file is still the one it was read as: a removal (eviction, repair, purge) or a new write
    /// that ran since the read has already cleared the tier, and must not be undone by this insert.
    fn keep_hot(
        &self,
        key: &DerivativeKey,
        ext: &str,
        meta: &FileMeta,
        access: u64,
        bytes: Option<Bytes>,
        path: &str,
    ) {
        let Some(_dir) = self.dirs.try_lock(dir_of(key)) else {
            return;
        };
        match self.files.meta(key, ext) {
            Ok(Some(now)) if now.ino == meta.ino && now.len == meta.len => {}
            _ => return,
        }
        if self.closed() {
            return;
        }
        self.hot.insert(
            *key,
            HotObject {
                bytes,
                relative_path: path.to_owned(),
                len: meta.len,
                ino: meta.ino,
                last_access: AtomicU64::new(access),
            },
        );
    }

    /// Look `key` up in the memory tier only: no file read, no waiting on a lock held across I/O,
    /// so it may be called on the async threads. When the proxy sends the files (no bytes kept),
    /// the file's length is checked with one `stat` (as nginx itself does before sending it), so
    /// a file truncated or removed behind the store's back is still a miss.
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
            self.note_access(key, DueTouch::Hot(Arc::clone(&object)));
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

    /// Record on their files the hits that are due (so eviction sees them used).
    fn record_touches(&self) {
        let due = match self.touches.lock() {
            Ok(mut due) => std::mem::take(&mut *due),
            Err(_) => return,
        };
        let now = now_secs();
        for (key, touch) in due {
            let (ext, ino) = match &touch {
                DueTouch::Hot(o) => (o.relative_path.rsplit('.').next().unwrap_or(""), o.ino),
                DueTouch::Disk { ext, meta } => (ext.as_str(), meta.ino),
            };
            let Ok(mut dir) = self.dirs.lock(dir_of(&key)) else {
                return;
            };
            if self.closed() {
                return;
            }
            match self.files.touch(&key, ext, ino, now) {
                // The summary moves the file's bytes from the access the file had.
                Ok(Some(before)) => {
                    if let DueTouch::Hot(o) = &touch {
                        o.last_access.store(now, Ordering::Relaxed);
                    }
                    dir.touched(before.len, before.access, now);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(key = %key.to_hex(), "cannot record a hit: {e}"),
            }
        }
    }

    /// [`Store::lookup`] again for a key already looked up and missed (the render worker's check
    /// that no render landed meanwhile): an absent object is not counted a second time, so
    /// `iiifd_store_misses_total` counts each cold render once.
    pub(crate) fn recheck(&self, key: &DerivativeKey, ext: &str) -> Option<Hit> {
        match self.files.meta(key, ext) {
            Ok(None) => None,
            Ok(Some(_)) | Err(_) => self.lookup(key, ext, true),
        }
    }

    /// A stored object opened for reading (a tiled copy, read tile by tile), if its file is there
    /// with the length its attribute says. Only the length is checked: such objects are large, and
    /// a damaged tile is an error the caller survives by rendering from the source.
    pub(crate) fn open_object(
        &self,
        key: &DerivativeKey,
        ext: &str,
    ) -> Option<Arc<dyn crate::source::ObjectReader>> {
        let (file, meta) = self.files.open_object(key, ext).ok()??;
        if stored_hash(&file).is_some_and(|(_, len)| len != meta.len) {
            return None;
        }
        let reader = crate::source::file_reader(file).ok()?;
        (reader.size() == meta.len).then_some(reader)
    }

    /// A bad object: drop it so the caller re-renders and stores a good one.
    fn repair(&self, key: &DerivativeKey, ext: &str, meta: &FileMeta) -> Option<Hit> {
        tracing::warn!(key = %key.to_hex(), "stored object short or corrupt; re-rendering");
        self.counters.repairs.fetch_add(1, Ordering::Relaxed);
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.remove(key, ext, Some(meta.ino)) {
            tracing::warn!(key = %key.to_hex(), "could not remove a bad object: {e}");
        }
        None
    }

    /// Remove one object, if it is still the file `ino` (any file when `None`), under its
    /// directory's lock; returns whether a file was removed.
    fn remove(&self, key: &DerivativeKey, ext: &str, ino: Option<u64>) -> io::Result<bool> {
        let mut dir = self.dirs.lock(dir_of(key))?;
        if self.closed() {
            return Ok(false);
        }
        self.hot.remove(key);
        Ok(match self.files.remove_if(key, ext, ino)? {
            Some(m) => {
                dir.removed(m.len, m.access);
                true
            }
            None => false,
        })
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
    /// seek). Hashed by reading it back, then published like [`Store::put`].
    pub(crate) fn put_with(
        &self,
        key: &DerivativeKey,
        ext: &str,
        identifier: &str,
        fill: &mut dyn FnMut(&mut std::fs::File) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let result = (|| {
            self.check_free(0)?;
            // Filling can take a while (a tiled copy encodes thousands of tiles): under no lock.
            let staged = self.files.stage(key, None, fill)?;
            self.publish(identifier, key, ext, staged)
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
        let staged = self
            .files
            .stage(key, Some(content_hash(bytes)), &mut |f| f.write_all(bytes))?;
        self.publish(identifier, key, ext, staged)
    }

    /// Publish a staged object under its directory's lock, moving the directory's summary, after
    /// noting it under its identifier. The line comes first (a crash between them leaves a line
    /// without an object, harmless, never an object that `purge` cannot find), and both happen
    /// under the shared side of the purge lock: a purge sees the line and its object, or neither.
    fn publish(
        &self,
        identifier: &str,
        key: &DerivativeKey,
        ext: &str,
        staged: Staged,
    ) -> io::Result<()> {
        let published = (|| {
            let _ids = self
                .ids_lock
                .read()
                .map_err(|_| io::Error::other("store lock poisoned"))?;
            self.files.record_identifier(identifier, key, ext)?;
            let mut dir = self.dirs.lock(dir_of(key))?;
            if self.closed() {
                return Err(io::Error::other("the store is closing"));
            }
            // A new file under the key: whatever memory held of the old one is not it.
            self.hot.remove(key);
            if let Some(previous) = self.files.publish(&staged, key, ext)? {
                dir.removed(previous.len, previous.access);
            }
            dir.added(staged.len, now_secs());
            Ok(())
        })();
        match published {
            Ok(()) => self.files.sync_dir(key)?,
            Err(e) => {
                self.files.discard(staged);
                return Err(e);
            }
        }
        if self.dirs.totals().1 > self.settings.max_bytes {
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

    /// Start the background work: the evictor (when a write pushes the store past its budget, and
    /// every few seconds regardless, also saving the summaries) and, if the summaries need it, one
    /// recount at `store.reconcile_rate`. Both stop at [`Store::close`] or when the store is
    /// dropped.
    pub(crate) fn start_background(self: &Arc<Self>) -> io::Result<()> {
        let (tx, rx) = sync_channel::<()>(1);
        if let Ok(mut guard) = self.kick.lock() {
            *guard = Some(tx);
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("iiifd-evictor".into())
            .spawn(move || background(&weak, &rx))?;
        // Opened over its budget (a smaller budget configured): start now, not at the first tick.
        if self.dirs.totals().1 > self.settings.max_bytes {
            self.kick_evictor();
        }
        if self.needs_reconcile() {
            let store = Arc::clone(self);
            std::thread::Builder::new()
                .name("iiifd-recount".into())
                .spawn(move || {
                    let rate = store.settings.reconcile_rate;
                    match store.reconcile(rate) {
                        Ok(r) => tracing::info!(report = ?r, "store recounted"),
                        Err(e) => tracing::warn!("store recount failed: {e}"),
                    }
                })?;
        }
        Ok(())
    }

    /// Remove every object rendered from `identifier` (by its list beside the objects: the cost
    /// is that identifier's objects, whatever else is stored); returns how many.
    pub(crate) fn purge(&self, identifier: &str) -> io::Result<usize> {
        let listed = {
            let _ids = self
                .ids_lock
                .write()
                .map_err(|_| io::Error::other("store lock poisoned"))?;
            self.files.take_identifier(identifier)?
        };
        let mut n = 0;
        for (key, ext) in listed {
            if self.remove(&key, &ext, None)? {
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
        let (objects, bytes) = self.dirs.totals();
        Stats {
            objects,
            bytes,
            max_bytes: self.settings.max_bytes,
            approximate: self.dirs.approximate(),
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

    /// Save the summaries that changed (every one with `all`), and whether this is a clean close.
    fn save_summaries(&self, all: bool, clean: bool) {
        let Ok(_one) = self.save_lock.lock() else {
            return;
        };
        // Once closing, only the close's own save counts: a background save after it must not
        // write older summaries over it, or mark a cleanly closed store as crashed.
        if !clean && self.closed() {
            return;
        }
        for (d, summary) in self.dirs.take_changed(all) {
            if let Err(e) = self.index.save_summary(d, &summary) {
                tracing::warn!("cannot save the store's summaries: {e}");
                return;
            }
        }
        let meta = Meta {
            format: FORMAT,
            clean,
        };
        if let Err(e) = self.index.save_meta(&meta) {
            tracing::warn!("cannot save the store's state: {e}");
        }
    }

    /// Flush the index to disk.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        Ok(self.index.flush()?)
    }

    /// Stop the background work and save the summaries as those of a clean close (unless a
    /// recount is still owed), so the next open trusts them.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        // Every directory taken once after this: no file change is half-way.
        self.stopping.store(true, Ordering::SeqCst);
        for d in 0..=255u8 {
            drop(self.dirs.lock(d)?);
        }
        if let Ok(mut guard) = self.kick.lock() {
            guard.take();
        }
        // A running recount stops at its next step; wait for it, so its summaries are whole.
        let _pass = self.pass_lock.lock();
        self.save_summaries(true, !self.needs_reconcile());
        self.flush()
    }
}

/// Paces a walk at `rate` steps a second (0: unbounded), sleeping between batches.
struct Pace {
    rate: u64,
    started: std::time::Instant,
    done: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate,
            started: std::time::Instant::now(),
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

/// The background thread: hits from memory recorded, the budget kept, the summaries saved.
fn background(store: &std::sync::Weak<Store>, rx: &Receiver<()>) {
    loop {
        match rx.recv_timeout(BACKGROUND_TICK) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(store) = store.upgrade() else { return };
        if store.closed() {
            return;
        }
        store.record_touches();
        let n = store.evict_to_budget();
        if n > 0 {
            tracing::info!(
                evicted = n,
                bytes = store.stats().bytes,
                "store back under its budget"
            );
            crate::memory::release_free_heap();
        }
        store.save_summaries(false, false);
    }
}

#[cfg(test)]
mod tests;
