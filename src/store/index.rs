//! The sled index: the only module that touches sled. Three trees: `objects` (key -> entry, a cache
//! of the object files), `probes` (source fingerprint -> size and tiles) and `jobs` (crawl job
//! state, opaque here). Everything in `objects` and `probes` can be rebuilt from the files and the
//! sources, so a lost or corrupt index costs time, never data. Every call blocks; callers run them
//! off the async threads.

use crate::key::DerivativeKey;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What went wrong in the index, by kind (the store decides from the kind, never from a message).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Another process holds the index (a running server, while a CLI command tries to open it).
    #[error("the store index is locked by another process: {0}")]
    Locked(String),
    /// The index files are damaged.
    #[error("the store index is corrupt: {0}")]
    Corrupt(String),
    /// Reading or writing the index failed.
    #[error("store index I/O: {0}")]
    Io(std::io::Error),
    /// A value could not be encoded.
    #[error("store index value: {0}")]
    Encode(String),
    /// sled failed in a way not above (a bug of sled's, or a closed database).
    #[error("store index: {0}")]
    Other(String),
}

impl From<sled::Error> for IndexError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                IndexError::Locked(io.to_string())
            }
            // sled reports a held lock as an I/O error naming the lock (fs2's try_lock_exclusive).
            sled::Error::Io(io) if io.to_string().contains("lock") => {
                IndexError::Locked(io.to_string())
            }
            sled::Error::Io(io) => IndexError::Io(io),
            sled::Error::Corruption { .. } => IndexError::Corrupt(e.to_string()),
            other => IndexError::Other(other.to_string()),
        }
    }
}

/// Result of index operations.
pub(crate) type IndexResult<T> = Result<T, IndexError>;

/// What the index knows about one stored object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
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

/// A cached source probe, by the source's fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProbeRecord {
    /// Image width (displayed).
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// The source's own tile width (0: none).
    pub tile: u32,
    /// The probe version that wrote this record; other versions are probed again.
    pub probe: u32,
}

/// The sled database and its trees.
pub(crate) struct Index {
    db: sled::Db,
    objects: sled::Tree,
    probes: sled::Tree,
    jobs: sled::Tree,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

fn encode<T: Serialize>(value: &T) -> IndexResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| IndexError::Encode(e.to_string()))
}

impl Index {
    /// Open (or create) the index at `path`. Fails if another process holds it.
    pub(crate) fn open(path: &Path) -> IndexResult<Index> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            .open()?;
        let objects = db.open_tree("objects")?;
        // The first probe cache was keyed by local path (with an inode): nothing reads it now.
        let _ = db.drop_tree("info");
        let probes = db.open_tree("probes")?;
        let jobs = db.open_tree("jobs")?;
        Ok(Index {
            db,
            objects,
            probes,
            jobs,
        })
    }

    /// The entry for `key`. An undecodable entry reads as absent (and is repaired by the next write).
    pub(crate) fn get(&self, key: &DerivativeKey) -> IndexResult<Option<Entry>> {
        Ok(self.objects.get(key.to_hex())?.and_then(|v| decode(&v)))
    }

    /// Insert or replace an entry.
    pub(crate) fn put(&self, key: &DerivativeKey, entry: &Entry) -> IndexResult<()> {
        self.objects.insert(key.to_hex(), encode(entry)?)?;
        Ok(())
    }

    /// Insert or replace an entry, returning the previous one.
    pub(crate) fn put_returning(
        &self,
        key: &DerivativeKey,
        entry: &Entry,
    ) -> IndexResult<Option<Entry>> {
        Ok(self
            .objects
            .insert(key.to_hex(), encode(entry)?)?
            .and_then(|v| decode(&v)))
    }

    /// Remove an entry; returns it if it was there.
    pub(crate) fn remove(&self, key: &DerivativeKey) -> IndexResult<Option<Entry>> {
        Ok(self.objects.remove(key.to_hex())?.and_then(|v| decode(&v)))
    }

    /// Every entry (undecodable ones are skipped).
    pub(crate) fn entries(&self) -> IndexResult<Vec<(DerivativeKey, Entry)>> {
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

    /// Drop every object entry and the probe cache (before a rebuild).
    pub(crate) fn clear(&self) -> IndexResult<()> {
        self.objects.clear()?;
        self.probes.clear()?;
        Ok(())
    }

    /// The cached probe of the source version named `fingerprint`.
    pub(crate) fn probe_get(&self, fingerprint: &str) -> IndexResult<Option<ProbeRecord>> {
        Ok(self.probes.get(fingerprint)?.and_then(|v| decode(&v)))
    }

    /// Cache a source probe.
    pub(crate) fn probe_put(&self, fingerprint: &str, record: &ProbeRecord) -> IndexResult<()> {
        self.probes.insert(fingerprint, encode(record)?)?;
        Ok(())
    }

    /// Store a crawl job's state (serialised by its owner).
    pub(crate) fn job_put(&self, id: &str, state: &[u8]) -> IndexResult<()> {
        self.jobs.insert(id, state)?;
        Ok(())
    }

    /// Every crawl job, by id.
    pub(crate) fn jobs(&self) -> IndexResult<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.jobs.iter() {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Write everything to disk now.
    pub(crate) fn flush(&self) -> IndexResult<()> {
        self.db.flush()?;
        Ok(())
    }
}
