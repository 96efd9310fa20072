//! The sled index: the only module that touches sled. A cache of the object files (key -> entry) plus
//! the info cache (source path -> fingerprint and size). Everything here can be rebuilt from the files,
//! so a lost or corrupt index costs time, never data. Every call blocks; callers run them off the async
//! threads.

use crate::key::DerivativeKey;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// sled failed (I/O, corruption, a lock held by another process).
#[derive(Debug, thiserror::Error)]
#[error("store index: {0}")]
pub struct IndexError(String);

impl From<sled::Error> for IndexError {
    fn from(e: sled::Error) -> Self {
        IndexError(e.to_string())
    }
}

/// Result of index operations.
pub type IndexResult<T> = Result<T, IndexError>;

/// What the index knows about one stored object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File length in bytes.
    pub len: u64,
    /// File extension (the format).
    pub ext: String,
    /// blake3 of the file's bytes, hex.
    pub hash: String,
    /// Unix seconds when stored.
    pub created: u64,
    /// Unix seconds of the last hit (updated at most once a minute).
    pub last_access: u64,
    /// The identifier it was rendered from ("" when rebuilt from files alone).
    pub identifier: String,
}

/// A cached source probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoRecord {
    /// Source length.
    pub len: u64,
    /// Source mtime in ns.
    pub mtime_ns: i128,
    /// Source inode.
    pub inode: u64,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// The source's own tile width (0: none).
    #[serde(default)]
    pub tile: u32,
    /// The probe version that wrote this record; other versions are probed again.
    #[serde(default)]
    pub probe: u32,
}

/// The sled database and its trees.
pub struct Index {
    db: sled::Db,
    objects: sled::Tree,
    info: sled::Tree,
    jobs: sled::Tree,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

fn encode<T: Serialize>(value: &T) -> IndexResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| IndexError(e.to_string()))
}

impl Index {
    /// Open (or create) the index at `path`. Fails if another process holds it.
    pub fn open(path: &Path) -> IndexResult<Index> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            .open()?;
        let objects = db.open_tree("objects")?;
        let info = db.open_tree("info")?;
        let jobs = db.open_tree("jobs")?;
        Ok(Index {
            db,
            objects,
            info,
            jobs,
        })
    }

    /// The entry for `key`. An undecodable entry reads as absent (and is repaired by the next write).
    pub fn get(&self, key: &DerivativeKey) -> IndexResult<Option<Entry>> {
        Ok(self.objects.get(key.to_hex())?.and_then(|v| decode(&v)))
    }

    /// Insert or replace an entry.
    pub fn put(&self, key: &DerivativeKey, entry: &Entry) -> IndexResult<()> {
        self.objects.insert(key.to_hex(), encode(entry)?)?;
        Ok(())
    }

    /// Insert or replace an entry, returning the previous one.
    pub fn put_returning(&self, key: &DerivativeKey, entry: &Entry) -> IndexResult<Option<Entry>> {
        Ok(self
            .objects
            .insert(key.to_hex(), encode(entry)?)?
            .and_then(|v| decode(&v)))
    }

    /// Remove an entry; returns it if it was there.
    pub fn remove(&self, key: &DerivativeKey) -> IndexResult<Option<Entry>> {
        Ok(self.objects.remove(key.to_hex())?.and_then(|v| decode(&v)))
    }

    /// Every entry (undecodable ones are skipped).
    pub fn entries(&self) -> IndexResult<Vec<(DerivativeKey, Entry)>> {
        let mut out = Vec::new();
        for item in self.objects.iter() {
            let (k, v) = item?;
            let key = std::str::from_utf8(&k)
                .ok()
                .and_then(DerivativeKey::from_hex);
            if let (Some(key), Some(entry)) = (key, decode::<Entry>(&v)) {
                out.push((key, entry));
            }
        }
        Ok(out)
    }

    /// Number of object entries.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there are no object entries.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Drop every object entry and the info cache (before a rebuild).
    pub fn clear(&self) -> IndexResult<()> {
        self.objects.clear()?;
        self.info.clear()?;
        Ok(())
    }

    /// Cached probe of the source at `path`.
    pub fn info_get(&self, path: &str) -> IndexResult<Option<InfoRecord>> {
        Ok(self.info.get(path)?.and_then(|v| decode(&v)))
    }

    /// Cache a source probe.
    pub fn info_put(&self, path: &str, record: &InfoRecord) -> IndexResult<()> {
        self.info.insert(path, encode(record)?)?;
        Ok(())
    }

    /// A crawl job's state, by id.
    pub fn job_get(&self, id: &str) -> IndexResult<Option<Vec<u8>>> {
        Ok(self.jobs.get(id)?.map(|v| v.to_vec()))
    }

    /// Store a crawl job's state.
    pub fn job_put(&self, id: &str, state: &[u8]) -> IndexResult<()> {
        self.jobs.insert(id, state)?;
        Ok(())
    }

    /// Every crawl job, by id.
    pub fn jobs(&self) -> IndexResult<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.jobs.iter() {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Write everything to disk now.
    pub fn flush(&self) -> IndexResult<()> {
        self.db.flush()?;
        Ok(())
    }
}
