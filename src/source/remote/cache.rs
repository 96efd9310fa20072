//! The remote backends' two caches: blocks of objects read by parts, in memory ([`BlockCache`]),
//! and objects read whole, on disk ([`DiskCache`]).

use super::{Fingerprint, SourceError};
use crate::bounded::{BoundedCache, CacheReport};
use bytes::Bytes;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Blocks of remote object versions in memory, the least used out first.
pub(crate) struct BlockCache(BoundedCache<(Fingerprint, u64), Bytes>);

impl BlockCache {
    /// A cache of at most `budget` bytes (0: nothing is kept).
    pub(crate) fn new(budget: u64) -> BlockCache {
        BlockCache(BoundedCache::new("source_blocks", budget))
    }

    pub(super) fn get(&self, fp: &Fingerprint, block: u64) -> Option<Bytes> {
        self.0.get(&(fp.clone(), block))
    }

    pub(super) fn insert(&self, fp: &Fingerprint, block: u64, bytes: Bytes) {
        // Blocks are 64 KiB or more: the entry's own overhead is left out, so a budget of exactly
        // N blocks holds N blocks.
        let weight = bytes.len() as u64;
        self.0.insert((fp.clone(), block), bytes, weight);
    }

    /// What it holds against its budget.
    pub(crate) fn report(&self) -> CacheReport {
        self.0.report()
    }

    /// Bytes held.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> u64 {
        self.0.report().bytes
    }
}

/// Whole remote objects on local disk, one file per version: `<dir>/<hash of the fingerprint>`.
pub(crate) struct DiskCache {
    dir: PathBuf,
    name: fn(&Fingerprint) -> String,
    tmp: PathBuf,
    budget: u64,
    bytes: AtomicU64,
    /// One eviction scan at a time.
    evicting: Mutex<()>,
}

/// A cached object used within this long of its last use is not touched again (one `utimensat`
/// per object a minute, not per request); it is also the LRU's resolution.
const TOUCH_SECS: u64 = 60;

impl DiskCache {
    /// The cache in `dir` (created), holding at most `budget` bytes. Leftover temp files (a kill -9
    /// during a download) are removed; the size of what is kept is summed (one file per cached
    /// source, so this is bounded by the budget, not by the collection).
    pub(crate) fn open(
        dir: &Path,
        budget: u64,
        name: fn(&Fingerprint) -> String,
    ) -> io::Result<DiskCache> {
        let tmp = dir.join(".tmp");
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                bytes += entry.metadata()?.len();
            }
        }
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            name,
            tmp,
            budget,
            bytes: AtomicU64::new(bytes),
            evicting: Mutex::new(()),
        })
    }

    /// Remove every copy (after a crash: a copy renamed in place but not yet on disk may be torn).
    pub(super) fn clear(&self) -> io::Result<()> {
        let _one = self.evicting.lock();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.bytes.store(0, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn path(&self, fp: &Fingerprint) -> PathBuf {
        self.dir.join((self.name)(fp))
    }

    /// The cached copy of a version of `len` bytes, if there is a whole one.
    pub(super) fn get(&self, fp: &Fingerprint, len: u64) -> Option<File> {
        let path = self.path(fp);
        let file = File::open(&path).ok()?;
        let meta = file.metadata().ok()?;
        if meta.len() != len {
            // Torn by a power loss (the rename is not fsynced): fetch it again.
            let _ = std::fs::remove_file(&path);
            self.bytes.fetch_sub(
                meta.len().min(self.bytes.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            return None;
        }
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age.as_secs() >= TOUCH_SECS);
        if stale {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(file)
    }

    /// Store a version: `fill` writes it into a temp file, which becomes the cached copy once whole.
    pub(super) fn put(
        &self,
        fp: &Fingerprint,
        fill: impl FnOnce(File) -> Result<u64, SourceError>,
    ) -> Result<File, SourceError> {
        let name = (self.name)(fp);
        let tmp = self.tmp.join(format!("{name}.{}", std::process::id()));
        let file = File::create(&tmp)?;
        let written = match fill(file) {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let path = self.path(fp);
        std::fs::rename(&tmp, &path)?;
        self.bytes.fetch_add(written, Ordering::Relaxed);
        if self.bytes.load(Ordering::Relaxed) > self.budget {
            if let Err(e) = self.evict(&path) {
                tracing::warn!("source cache eviction failed: {e}");
            }
        }
        Ok(File::open(&path)?)
    }

    /// Remove the least recently used copies until the cache is at 90 % of its budget (never
    /// `keep`, the copy just written). Files being read stay readable until closed.
    pub(super) fn evict(&self, keep: &Path) -> io::Result<()> {
        let Ok(_one) = self.evicting.try_lock() else {
            return Ok(());
        };
        let mut files = Vec::new();
        let mut total = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() {
                total += meta.len();
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((used, meta.len(), entry.path()));
            }
        }
        files.sort_unstable();
        let target = self.budget / 10 * 9;
        for (_, len, path) in files {
            if total <= target {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
        // The scan is the truth: it also corrects any drift of the running sum.
        self.bytes.store(total, Ordering::Relaxed);
        Ok(())
    }
}
