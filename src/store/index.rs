//! The sled index: the only module that touches sled. It holds what is small and aggregate, never
//! a record per stored object (those are the object files themselves, see `files`): at most a few
//! hundred records whatever the number of objects, so opening it costs the same for a store of ten
//! objects or a hundred million. Everything in it but the crawl jobs can be rebuilt from the object
//! files and the sources, so a lost or corrupt index costs time, never data. Every call blocks;
//! callers run them off the async threads.
//!
//! Trees:
//!
//! - `summaries`: object directory (one byte) -> [`DirSummary`] (count, bytes, bytes by last
//!   access), saved every few seconds and at close;
//! - `probes`: source fingerprint -> size and tiles;
//! - `jobs`: crawl job states, opaque here;
//! - `meta`: the schema version, and whether the last process closed the store cleanly (if not,
//!   the summaries may have drifted and are recounted in the background).
//!
//! Store format 2 kept one record per object (`entries`: key -> length, times, hash, extension;
//! `by_access`: the least-recently-used order). An index of that format is upgraded in place: its
//! entries are read once by the background recount ([`Index::legacy_entry`]), which gives each
//! file its hash attribute and its last access, and then dropped.

use super::summary::DirSummary;
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

/// What an index of store format 2 knew about one stored object: read once, by the upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LegacyEntry {
    /// File length in bytes.
    pub len: u64,
    /// Unix seconds of the last hit.
    pub last_access: u64,
    /// blake3 of the file's bytes.
    pub hash: ContentHash,
}

/// Format 2's binary layout: version, length, created, last access, hash, extension.
const ENTRY_V1: u8 = 1;
const ENTRY_FIXED: usize = 1 + 8 + 8 + 8 + 32;

impl LegacyEntry {
    fn decode(bytes: &[u8]) -> Option<LegacyEntry> {
        if bytes.len() < ENTRY_FIXED || bytes[0] != ENTRY_V1 {
            return None;
        }
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(LegacyEntry {
            len: u64_at(1)?,
            last_access: u64_at(17)?,
            hash: bytes.get(25..57)?.try_into().ok()?,
        })
    }

    /// Format 2's encoding of this entry (for the upgrade's tests).
    #[cfg(test)]
    fn encode(&self, ext: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_FIXED + ext.len());
        out.push(ENTRY_V1);
        out.extend_from_slice(&self.len.to_le_bytes());
        // Created: unused since format 3.
        out.extend_from_slice(&self.last_access.to_le_bytes());
        out.extend_from_slice(&self.last_access.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(ext.as_bytes());
        out
    }
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

/// The store's format, and whether the process that last opened it closed it (if not, the
/// summaries may have drifted and are recounted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// The store format ([`FORMAT`]).
    pub format: u32,
    /// Saved by a clean close, with no recount owed.
    pub clean: bool,
}

/// The store format this code writes: 3, the object files are the per-object records.
pub(crate) const FORMAT: u32 = 3;

/// The sled database and its trees.
pub(crate) struct Index {
    db: sled::Db,
    summaries: sled::Tree,
    probes: sled::Tree,
    jobs: sled::Tree,
    meta: sled::Tree,
    /// Format 2's per-object records while an upgrade needs them. Opened once: opening a tree by
    /// name creates it, so a lookup racing the drop must never open it again.
    legacy: std::sync::RwLock<Option<sled::Tree>>,
}

fn decode_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

fn encode_json<T: Serialize>(value: &T) -> IndexResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| IndexError::Encode(e.to_string()))
}

/// `meta` key of [`Meta`] (format 2 kept its totals under "totals", read as no meta: a recount).
const STATE: &str = "state";
/// Format 2's trees: per-object records, and their least-recently-used order.
const LEGACY_ENTRIES: &str = "entries";
const LEGACY_BY_ACCESS: &str = "by_access";

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
        // The first format's trees (per-object JSON records, and a probe cache keyed by local
        // path): its objects are adopted from their files by the recount.
        let _ = db.drop_tree("objects");
        let _ = db.drop_tree("info");
        // Format 2's order of access is not needed by the upgrade (its records say the same).
        let _ = db.drop_tree(LEGACY_BY_ACCESS);
        let has_legacy = db
            .tree_names()
            .iter()
            .any(|t| &t[..] == LEGACY_ENTRIES.as_bytes());
        let legacy = match has_legacy {
            true => Some(db.open_tree(LEGACY_ENTRIES)?),
            false => None,
        };
        Ok(Index {
            legacy: std::sync::RwLock::new(legacy),
            summaries: db.open_tree("summaries")?,
            probes: db.open_tree("probes")?,
            jobs: db.open_tree("jobs")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// The format and state last saved (`None` for a new index, or one of an older format).
    pub(crate) fn meta(&self) -> IndexResult<Option<Meta>> {
        Ok(self
            .meta
            .get(STATE)?
            .and_then(|v| decode_json::<Meta>(&v))
            .filter(|m| m.format == FORMAT))
    }

    /// Save the format and state.
    pub(crate) fn save_meta(&self, meta: &Meta) -> IndexResult<()> {
        self.meta.insert(STATE, encode_json(meta)?)?;
        Ok(())
    }

    /// Every saved directory summary (undecodable ones are left out: the recount replaces them).
    pub(crate) fn summaries(&self) -> IndexResult<Vec<(u8, DirSummary)>> {
        let mut out = Vec::new();
        for item in self.summaries.iter() {
            let (k, v) = item?;
            if let (&[d], Some(s)) = (&k[..], DirSummary::decode(&v)) {
                out.push((d, s));
            }
        }
        Ok(out)
    }

    /// Save directory `d`'s summary.
    pub(crate) fn save_summary(&self, d: u8, summary: &DirSummary) -> IndexResult<()> {
        self.summaries.insert([d], summary.encode())?;
        Ok(())
    }

    /// Drop every summary and cached probe (before a recount from the files).
    pub(crate) fn clear(&self) -> IndexResult<()> {
        self.summaries.clear()?;
        self.probes.clear()?;
        self.meta.remove(STATE)?;
        Ok(())
    }

    /// Whether format 2's per-object records are still there (an upgrade is owed).
    pub(crate) fn has_legacy(&self) -> bool {
        self.legacy.read().is_ok_and(|t| t.is_some())
    }

    /// Format 2's record of `key`, while the upgrade needs it.
    pub(crate) fn legacy_entry(&self, key: &DerivativeKey) -> IndexResult<Option<LegacyEntry>> {
        let Ok(legacy) = self.legacy.read() else {
            return Ok(None);
        };
        let Some(entries) = legacy.as_ref() else {
            return Ok(None);
        };
        Ok(entries
            .get(key.as_bytes())?
            .and_then(|v| LegacyEntry::decode(&v)))
    }

    /// Write a format 2 record (to test the upgrade).
    #[cfg(test)]
    pub(crate) fn put_legacy(
        &self,
        key: &DerivativeKey,
        entry: &LegacyEntry,
        ext: &str,
    ) -> IndexResult<()> {
        let tree = self.db.open_tree(LEGACY_ENTRIES)?;
        tree.insert(key.as_bytes(), entry.encode(ext))?;
        if let Ok(mut legacy) = self.legacy.write() {
            *legacy = Some(tree);
        }
        Ok(())
    }

    /// Drop format 2's records, once every file has what it needed from them.
    pub(crate) fn drop_legacy(&self) -> IndexResult<()> {
        let mut legacy = self
            .legacy
            .write()
            .map_err(|_| IndexError::Other("index lock poisoned".into()))?;
        if legacy.take().is_some() {
            self.db.drop_tree(LEGACY_ENTRIES)?;
        }
        Ok(())
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

    proptest! {
        #[test]
        fn legacy_entries_round_trip(len: u64, last: u64, hash: [u8; 32], ext in "[a-z0-9]{0,8}") {
            let e = LegacyEntry { len, last_access: last, hash };
            prop_assert_eq!(LegacyEntry::decode(&e.encode(&ext)), Some(e));
        }

        #[test]
        fn garbage_never_panics(bytes: Vec<u8>) {
            let _ = LegacyEntry::decode(&bytes);
        }
    }

    #[test]
    fn summaries_meta_and_the_legacy_records() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let index = Index::open(dir.path(), 1 << 20)?;
        assert_eq!(index.meta()?, None);
        index.save_meta(&Meta {
            format: FORMAT,
            clean: true,
        })?;
        assert_eq!(index.meta()?.map(|m| m.clean), Some(true));
        let mut s = DirSummary::default();
        s.add(10, 1000);
        index.save_summary(7, &s)?;
        assert_eq!(index.summaries()?, vec![(7, s)]);
        assert!(!index.has_legacy());
        let old = LegacyEntry {
            len: 5,
            last_access: 99,
            hash: [3; 32],
        };
        index.put_legacy(&key(1), &old, "jpg")?;
        assert!(index.has_legacy());
        assert_eq!(index.legacy_entry(&key(1))?, Some(old));
        assert_eq!(index.legacy_entry(&key(2))?, None);
        index.drop_legacy()?;
        assert!(!index.has_legacy());
        assert_eq!(index.legacy_entry(&key(1))?, None);
        Ok(())
    }
}
