//! The sled index: the only module that touches sled. Everything in it but the crawl jobs can be
//! rebuilt from the object files and the sources, so a lost or corrupt index costs time, never data.
//! Every call blocks; callers run them off the async threads.
//!
//! Trees, chosen so that no operation has to read the whole index:
//!
//! - `entries`: derivative key (32 raw bytes) -> [`Entry`] (a fixed binary layout of about 60 bytes;
//!   the JSON entries of the first format took about 377 bytes with sled's overhead);
//! - `by_access`: last access (8 bytes, big-endian seconds) ++ key -> extension: the store's objects
//!   in least-recently-used order, read from the oldest end by eviction, so evicting n objects reads
//!   n records. Kept beside `entries` without a transaction (sled's cross-tree transactions cost
//!   more than the check they save): a record whose entry has moved on or gone is *stale* and is
//!   dropped when met; an entry without its record is given one by the reconcile pass;
//! - `probes`: source fingerprint -> size and tiles;
//! - `jobs`: crawl job states, opaque here;
//! - `meta`: the running totals and whether the last process closed the store cleanly.
//!
//! The first format's `objects` tree (hex key -> JSON entry) is read once by the migration
//! ([`Index::legacy_batch`]) and dropped.

use crate::key::{ContentHash, DerivativeKey};
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// File length in bytes.
    pub len: u64,
    /// Unix seconds when stored.
    pub created: u64,
    /// Unix seconds of the last hit (updated at a coarse granularity, see the store).
    pub last_access: u64,
    /// blake3 of the file's bytes.
    pub hash: ContentHash,
    /// File extension (the format).
    pub ext: String,
}

/// The binary layout's version byte. Anything else reads as absent (and is repaired by a write).
const ENTRY_V1: u8 = 1;
const ENTRY_FIXED: usize = 1 + 8 + 8 + 8 + 32;

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_FIXED + self.ext.len());
        out.push(ENTRY_V1);
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.created.to_le_bytes());
        out.extend_from_slice(&self.last_access.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(self.ext.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        if bytes.len() < ENTRY_FIXED || bytes[0] != ENTRY_V1 {
            return None;
        }
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Entry {
            len: u64_at(1)?,
            created: u64_at(9)?,
            last_access: u64_at(17)?,
            hash: bytes.get(25..57)?.try_into().ok()?,
            ext: std::str::from_utf8(bytes.get(ENTRY_FIXED..)?)
                .ok()?
                .to_owned(),
        })
    }
}

/// The `by_access` record of an entry.
fn access_key(last_access: u64, key: &DerivativeKey) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&last_access.to_be_bytes());
    out[8..].copy_from_slice(key.as_bytes());
    out
}

/// One `by_access` record: an object as of its last access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AccessRecord {
    /// When it was last accessed (as the record says).
    pub last_access: u64,
    /// The object.
    pub key: DerivativeKey,
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
    /// How its pixels are reached: 0 whole, 1 DCT-scaled (JPEG), 2 by levels (absent before
    /// probe version 5).
    #[serde(default)]
    pub reading: u8,
    /// The probe version that wrote this record; other versions are probed again.
    pub probe: u32,
}

/// The store's running totals as last saved, and whether the process that saved them closed the
/// store (if it did not, they may have drifted and a reconcile pass recounts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Totals {
    /// Objects indexed.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Saved by a clean close, with nothing left to reconcile.
    pub clean: bool,
}

/// What the migration keeps of an entry of the first format: the identifier, for `purge`. (Its
/// object is indexed again from its file, by the reconcile pass or the first lookup.)
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct LegacyEntry {
    /// Extension.
    pub ext: String,
    /// The identifier it was rendered from.
    pub identifier: String,
}

/// The sled database and its trees.
pub(crate) struct Index {
    db: sled::Db,
    entries: sled::Tree,
    by_access: sled::Tree,
    probes: sled::Tree,
    jobs: sled::Tree,
    meta: sled::Tree,
}

fn decode_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

fn encode_json<T: Serialize>(value: &T) -> IndexResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| IndexError::Encode(e.to_string()))
}

const TOTALS: &str = "totals";
const LEGACY_TREE: &str = "objects";

impl Index {
    /// Open (or create) the index at `path`, with sled's page cache bounded to `cache_bytes`. Fails
    /// if another process holds it.
    pub(crate) fn open(path: &Path, cache_bytes: u64) -> IndexResult<Index> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500));
        // sled's file lock is released when the last of its threads lets go of the file, which on a
        // busy machine can be a moment after the index that held it was dropped in this process (a
        // store reopened by a test or a CLI command). A lock still held after a second belongs to
        // someone else.
        let mut waited = 0;
        let db = loop {
            match config.open().map_err(IndexError::from) {
                Ok(db) => break db,
                Err(IndexError::Locked(_)) if waited < 50 => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    waited += 1;
                }
                Err(e) => return Err(e),
            }
        };
        // The first probe cache was keyed by local path (with an inode): nothing reads it now.
        let _ = db.drop_tree("info");
        Ok(Index {
            entries: db.open_tree("entries")?,
            by_access: db.open_tree("by_access")?,
            probes: db.open_tree("probes")?,
            jobs: db.open_tree("jobs")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// The entry for `key`. An undecodable entry reads as absent (and is repaired by the next write).
    pub(crate) fn get(&self, key: &DerivativeKey) -> IndexResult<Option<Entry>> {
        Ok(self
            .entries
            .get(key.as_bytes())?
            .and_then(|v| Entry::decode(&v)))
    }

    /// Whether `key` has an entry.
    pub(crate) fn contains(&self, key: &DerivativeKey) -> IndexResult<bool> {
        Ok(self.entries.contains_key(key.as_bytes())?)
    }

    /// Insert or replace an entry (and its access record), returning the previous entry.
    pub(crate) fn insert(&self, key: &DerivativeKey, entry: &Entry) -> IndexResult<Option<Entry>> {
        let previous = self
            .entries
            .insert(key.as_bytes(), entry.encode())?
            .and_then(|v| Entry::decode(&v));
        if let Some(prev) = &previous {
            if prev.last_access != entry.last_access {
                self.by_access.remove(access_key(prev.last_access, key))?;
            }
        }
        self.by_access
            .insert(access_key(entry.last_access, key), entry.ext.as_bytes())?;
        Ok(previous)
    }

    /// Record a hit: the entry's `last_access` becomes `now`, and its access record moves.
    pub(crate) fn touch(&self, key: &DerivativeKey, entry: &Entry, now: u64) -> IndexResult<()> {
        self.insert(
            key,
            &Entry {
                last_access: now,
                ..entry.clone()
            },
        )?;
        Ok(())
    }

    /// Remove an entry and its access record; returns the entry if it was there.
    pub(crate) fn remove(&self, key: &DerivativeKey) -> IndexResult<Option<Entry>> {
        let removed = self
            .entries
            .remove(key.as_bytes())?
            .and_then(|v| Entry::decode(&v));
        if let Some(e) = &removed {
            self.by_access.remove(access_key(e.last_access, key))?;
        }
        Ok(removed)
    }

    /// Up to `n` entries with keys after `after` (from the first with `None`), in key order: one
    /// step of a walk over the index that holds nothing between steps but its cursor.
    pub(crate) fn entries_after(
        &self,
        after: Option<&DerivativeKey>,
        n: usize,
    ) -> IndexResult<Vec<(DerivativeKey, Option<Entry>)>> {
        let range = match after {
            Some(k) => self.entries.range::<&[u8], _>((
                std::ops::Bound::Excluded(&k.as_bytes()[..]),
                std::ops::Bound::Unbounded,
            )),
            None => self.entries.iter(),
        };
        let mut out = Vec::with_capacity(n.min(4096));
        for item in range.take(n) {
            let (k, v) = item?;
            // A key of another length is not ours: skip it (the walk must still move on).
            if let Some(key) = DerivativeKey::from_slice(&k) {
                out.push((key, Entry::decode(&v)));
            }
        }
        Ok(out)
    }

    /// Whether the access record of `key` as of `last_access` is there.
    pub(crate) fn has_access_record(
        &self,
        key: &DerivativeKey,
        last_access: u64,
    ) -> IndexResult<bool> {
        Ok(self.by_access.contains_key(access_key(last_access, key))?)
    }

    /// Give an entry its access record (the reconcile pass, after a crash between the two writes).
    pub(crate) fn put_access_record(&self, key: &DerivativeKey, entry: &Entry) -> IndexResult<()> {
        self.by_access
            .insert(access_key(entry.last_access, key), entry.ext.as_bytes())?;
        Ok(())
    }

    /// The `n` oldest access records.
    pub(crate) fn oldest(&self, n: usize) -> IndexResult<Vec<AccessRecord>> {
        let mut out = Vec::with_capacity(n);
        for item in self.by_access.iter().take(n) {
            let (k, _) = item?;
            let parsed = k
                .get(..8)
                .and_then(|t| t.try_into().ok())
                .map(u64::from_be_bytes)
                .zip(k.get(8..).and_then(DerivativeKey::from_slice));
            match parsed {
                Some((last_access, key)) => out.push(AccessRecord { last_access, key }),
                // Not ours: drop it, or eviction would meet it first forever.
                None => {
                    self.by_access.remove(k)?;
                }
            }
        }
        Ok(out)
    }

    /// Drop a stale access record.
    pub(crate) fn remove_access_record(&self, record: &AccessRecord) -> IndexResult<()> {
        self.by_access
            .remove(access_key(record.last_access, &record.key))?;
        Ok(())
    }

    /// Drop every object entry, access record and cached probe (before a rebuild from the files).
    pub(crate) fn clear(&self) -> IndexResult<()> {
        self.entries.clear()?;
        self.by_access.clear()?;
        self.probes.clear()?;
        Ok(())
    }

    /// The totals as last saved (`None` for a new index, or one of the first format).
    pub(crate) fn totals(&self) -> IndexResult<Option<Totals>> {
        Ok(self.meta.get(TOTALS)?.and_then(|v| decode_json(&v)))
    }

    /// Save the totals.
    pub(crate) fn save_totals(&self, totals: &Totals) -> IndexResult<()> {
        self.meta.insert(TOTALS, encode_json(totals)?)?;
        Ok(())
    }

    /// Whether entries of the first format wait for the migration.
    pub(crate) fn has_legacy(&self) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|t| &t[..] == LEGACY_TREE.as_bytes())
    }

    /// Up to `n` entries of the first format's tree, removed from it as they are returned (so a
    /// migration interrupted by a crash resumes); the tree is dropped once empty.
    pub(crate) fn legacy_batch(&self, n: usize) -> IndexResult<Vec<(DerivativeKey, LegacyEntry)>> {
        if !self.has_legacy() {
            return Ok(Vec::new());
        }
        let legacy = self.db.open_tree(LEGACY_TREE)?;
        let mut out = Vec::new();
        for item in legacy.iter().take(n) {
            let (k, v) = item?;
            legacy.remove(&k)?;
            let key = std::str::from_utf8(&k)
                .ok()
                .and_then(DerivativeKey::from_hex);
            if let (Some(key), Some(entry)) = (key, decode_json::<LegacyEntry>(&v)) {
                out.push((key, entry));
            }
        }
        if legacy.is_empty() {
            drop(legacy);
            self.db.drop_tree(LEGACY_TREE)?;
        }
        Ok(out)
    }

    /// The cached probe of the source version named `fingerprint`.
    pub(crate) fn probe_get(&self, fingerprint: &str) -> IndexResult<Option<ProbeRecord>> {
        Ok(self.probes.get(fingerprint)?.and_then(|v| decode_json(&v)))
    }

    /// Cache a source probe.
    pub(crate) fn probe_put(&self, fingerprint: &str, record: &ProbeRecord) -> IndexResult<()> {
        self.probes.insert(fingerprint, encode_json(record)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> DerivativeKey {
        DerivativeKey::from_slice(&[n; 32]).unwrap_or_else(|| unreachable!())
    }

    fn entry(last_access: u64) -> Entry {
        Entry {
            len: 10,
            created: 1,
            last_access,
            hash: [7; 32],
            ext: "jpg".into(),
        }
    }

    proptest! {
        #[test]
        fn entries_round_trip(len: u64, created: u64, last: u64, hash: [u8; 32], ext in "[a-z0-9]{0,8}") {
            let e = Entry { len, created, last_access: last, hash, ext };
            prop_assert_eq!(Entry::decode(&e.encode()), Some(e));
        }

        #[test]
        fn garbage_never_panics(bytes: Vec<u8>) {
            let _ = Entry::decode(&bytes);
        }
    }

    #[test]
    fn access_order_follows_touches_and_removals() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let index = Index::open(dir.path(), 1 << 20)?;
        for (n, t) in [(1, 300), (2, 100), (3, 200)] {
            index.insert(&key(n), &entry(t))?;
        }
        let order = |n| -> IndexResult<Vec<u8>> {
            Ok(index
                .oldest(n)?
                .iter()
                .map(|r| r.key.as_bytes()[0])
                .collect())
        };
        assert_eq!(order(10)?, vec![2, 3, 1]);
        index.touch(&key(2), &entry(100), 400)?;
        assert_eq!(order(10)?, vec![3, 1, 2], "a touch moves the record");
        assert_eq!(index.remove(&key(3))?.map(|e| e.last_access), Some(200));
        assert_eq!(order(2)?, vec![1, 2]);
        // The walk visits every entry once, in key order, by cursor.
        let first = index.entries_after(None, 1)?;
        let rest = index.entries_after(Some(&first[0].0), 10)?;
        assert_eq!((first.len(), rest.len()), (1, 1));
        assert!(first[0].0.as_bytes() < rest[0].0.as_bytes());
        Ok(())
    }
}
