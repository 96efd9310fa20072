//! The derivative store: rendered images persisted as files. Since store format 3 each object file
//! is its own and only record ([`files`]: its path names the key, its length is the object's, its
//! modification time its last access, its blake3 in an extended attribute), and the sled index
//! ([`index`]) keeps only what is small and aggregate: a summary per object directory ([`summary`],
//! [`dirs`]), the totals, probes, crawl jobs. So neither memory nor start-up grows with the number
//! of stored objects. The jobs, one file each:
//!
//! - open (here): take the saved summaries and serve at once. If the last process did not close the
//!   store (a crash), the index was lost, or it is of format 2, a background recount (`recount`)
//!   walks the directories at `store.reconcile_rate` files a second and replaces each summary;
//!   until it is done the totals are approximate (`iiifd_store_totals_approximate`). A format 2
//!   store is upgraded by the same walk: each file takes its hash and last access from the old
//!   per-object record, which is then dropped.
//! - read (`read`): open the file by its path; its length is checked against its attribute, and the
//!   blake3 of the bytes when `verify_reads` is on. A missing file is a miss; a short or
//!   mismatching one is removed and counted as a repair, never a corrupt response. Hot objects are
//!   kept in memory ([`hot`]) and answered without blocking. A hit writes nothing: a due access is
//!   queued for the background thread.
//! - write (`write`): the file staged with its attribute, then noted under its identifier and
//!   published by a rename under its directory's lock, which also moves the directory's summary.
//!   Writes are skipped, not failed, when the disk is nearly full (`min_free_bytes`). Purge.
//! - budget (`evict`): from the directories' summaries a cut-off time is chosen that frees enough,
//!   and each directory with older bytes is walked once, removing its files last accessed before
//!   it: the cost of an evicted object does not depend on the store's size.
//! - background and close (`background`): accesses recorded, the budget kept, summaries saved.
//! - verify (`verify`): every file read and hashed against its attribute.
//!
//! Every other method blocks; the pipeline calls them off the async threads.

mod background;
pub(crate) mod dirs;
mod evict;
pub(crate) mod files;
pub(crate) mod hot;
mod ids;
pub(crate) mod index;
pub(crate) mod maintenance;
mod read;
mod recount;
pub(crate) mod shared;
pub(crate) mod summary;
mod verify;
mod write;

use crate::key::DerivativeKey;
use bytes::Bytes;
use dirs::Dirs;
use files::{now_secs, FileMeta, Files};
use hot::{HotObject, HotTier};
pub use index::IndexError;
pub(crate) use index::ProbeRecord;
use index::{Index, Meta, FORMAT};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};

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

#[cfg(test)]
mod tests;
