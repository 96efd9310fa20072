//! The shared tier: derivatives in an S3-compatible bucket that every node of a cluster reads and
//! writes (`store.shared.*`), so a render made on one node is a hit on all of them, and a node
//! that starts with an empty store does not start cold.
//!
//! Keyed by the same derivative key as the local store, below a folder per identifier
//! (`<identifier hash>/<key>.<ext>` below the prefix), so that one listing finds every object of an
//! identifier for a purge, whichever node rendered it. Objects
//! are created only if absent: two nodes storing one key at once leave one object, and since a key
//! names its bytes (same source version, same canonical request, same encoder), either would do.
//! Each object carries the blake3 of its bytes; a read that does not match is a miss, and the
//! object is removed so the next render replaces it.
//!
//! Renders are written in the background (a bounded queue and one writer thread), so a response
//! never waits for the tier; a render that finds the queue full is not shared (counted as skipped).
//! The tier is an optimisation, never a dependency: a failure (down, slow, full, refusing) is
//! counted and the request goes on with the local store and the renderer. After a failure the tier
//! is left alone for a few seconds, so an outage costs one deadline now and then, not one per
//! request.

use crate::key::{content_hash, identifier_hash, ContentHash, DerivativeKey};
use crate::source::remote::Io;
use crate::source::s3::SharedBucket;
use crate::source::{SourceCounters, SourceError};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the tier is skipped after a failure.
const BACK_OFF: Duration = Duration::from_secs(5);

/// Counters of the tier beyond its requests (those are in [`SourceCounters`]).
#[derive(Default)]
pub(crate) struct SharedCounters {
    /// Derivatives found in the tier (and copied into the local store).
    pub hits: AtomicU64,
    /// Lookups that found nothing.
    pub misses: AtomicU64,
    /// Objects whose bytes did not match their hash (removed).
    pub corrupt: AtomicU64,
    /// Renders stored in the tier.
    pub stored: AtomicU64,
    /// Renders another node had stored first.
    pub already_there: AtomicU64,
    /// Lookups and writes skipped while the tier was backing off after a failure, or because
    /// the write queue was full.
    pub skipped: AtomicU64,
    /// Writes queued and not yet done.
    pub pending: AtomicU64,
}

/// A render waiting to be written.
struct Write {
    identifier: String,
    key: DerivativeKey,
    ext: String,
    bytes: Bytes,
}

/// Renders that may wait for the writer; beyond that, they are not shared.
const QUEUE: usize = 256;

/// The shared tier of a store.
pub(crate) struct SharedTier {
    inner: Arc<Inner>,
    queue: std::sync::mpsc::SyncSender<Write>,
}

struct Inner {
    bucket: SharedBucket,
    io: Io,
    /// Unix milliseconds until which the tier is left alone.
    resting_until: AtomicU64,
    counters: SharedCounters,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn folder(identifier: &str) -> String {
    identifier_hash(identifier)
}

fn name(identifier: &str, key: &DerivativeKey, ext: &str) -> String {
    format!("{}/{}.{ext}", folder(identifier), key.to_hex())
}

fn hex(hash: &ContentHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl SharedTier {
    /// A tier over `bucket`, every call bounded by `deadline`.
    pub(crate) fn new(bucket: SharedBucket, deadline: Duration) -> std::io::Result<SharedTier> {
        let inner = Arc::new(Inner {
            bucket,
            io: Io::new("s3", deadline)?,
            resting_until: AtomicU64::new(0),
            counters: SharedCounters::default(),
        });
        let (queue, writes) = std::sync::mpsc::sync_channel::<Write>(QUEUE);
        let writer = Arc::clone(&inner);
        // Ends when the tier (its sender) is dropped.
        std::thread::Builder::new()
            .name("iiifd-shared-writer".into())
            .spawn(move || {
                for w in writes {
                    writer.put(&w.identifier, &w.key, &w.ext, w.bytes);
                    writer.counters.pending.fetch_sub(1, Ordering::Relaxed);
                }
            })?;
        Ok(SharedTier { inner, queue })
    }

    /// The request counters.
    pub(crate) fn requests(&self) -> &Arc<SourceCounters> {
        self.inner.io.counters()
    }

    /// The tier's own counters.
    pub(crate) fn counters(&self) -> &SharedCounters {
        &self.inner.counters
    }

    /// The derivative `key` of `identifier`, if the tier has it with the right bytes.
    pub(crate) fn get(&self, identifier: &str, key: &DerivativeKey, ext: &str) -> Option<Vec<u8>> {
        self.inner.get(identifier, key, ext)
    }

    /// Queue a render of `identifier` for the tier (written unless another node stored the key
    /// first); never waits.
    pub(crate) fn put(&self, identifier: &str, key: &DerivativeKey, ext: &str, bytes: &[u8]) {
        let c = &self.inner.counters;
        c.pending.fetch_add(1, Ordering::Relaxed);
        let write = Write {
            identifier: identifier.to_owned(),
            key: *key,
            ext: ext.to_owned(),
            bytes: Bytes::copy_from_slice(bytes),
        };
        if self.queue.try_send(write).is_err() {
            c.pending.fetch_sub(1, Ordering::Relaxed);
            c.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remove every object of `identifier`, whichever node stored it (a purge); returns how many.
    pub(crate) fn purge(&self, identifier: &str) -> Result<usize, SourceError> {
        self.inner.purge(identifier)
    }
}

impl Inner {
    fn resting(&self) -> bool {
        if now_ms() < self.resting_until.load(Ordering::Relaxed) {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn failed(&self, what: &str, e: &SourceError) {
        tracing::warn!("shared tier {what} failed ({e}); leaving it alone for {BACK_OFF:?}");
        self.resting_until
            .store(now_ms() + BACK_OFF.as_millis() as u64, Ordering::Relaxed);
    }

    fn get(&self, identifier: &str, key: &DerivativeKey, ext: &str) -> Option<Vec<u8>> {
        if self.resting() {
            return None;
        }
        let name = name(identifier, key, ext);
        match self.bucket.get(&self.io, &name) {
            Ok(Some((bytes, hash))) => {
                if hash.as_deref() == Some(hex(&content_hash(&bytes)).as_str()) {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Some(bytes.to_vec());
                }
                tracing::warn!(key = %key.to_hex(), "shared tier object does not match its hash; removing it");
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.bucket.delete(&self.io, &name) {
                    self.failed("delete", &e);
                }
                None
            }
            Ok(None) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.failed("read", &e);
                None
            }
        }
    }

    /// Store a render of `identifier` (unless another node stored the key first).
    fn put(&self, identifier: &str, key: &DerivativeKey, ext: &str, bytes: Bytes) {
        if self.resting() {
            return;
        }
        let hash = hex(&content_hash(&bytes));
        match self
            .bucket
            .put_if_absent(&self.io, &name(identifier, key, ext), bytes, hash)
        {
            Ok(true) => {
                self.counters.stored.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                self.counters.already_there.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed("write", &e),
        }
    }

    fn purge(&self, identifier: &str) -> Result<usize, SourceError> {
        let names = self.bucket.list(&self.io, &folder(identifier))?;
        for name in &names {
            self.bucket.delete(&self.io, name)?;
        }
        Ok(names.len())
    }
}
