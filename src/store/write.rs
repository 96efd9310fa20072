//! Writing: an object is staged in a temp file with its attribute (under no lock: filling may
//! take a while), then noted under its identifier and published by a rename under its directory's
//! lock, which also moves the directory's summary. Removal (repair, purge, the recount's drops)
//! goes through the same lock. Writes are skipped, not failed, when the disk is nearly full
//! (`min_free_bytes`). The cluster's shared tier gets a copy of every render.

use super::files::{now_secs, Files, Staged};
use super::{dir_of, shared, Hit, Store, StoreError};
use crate::key::{content_hash, DerivativeKey};
use bytes::Bytes;
use std::io::{self, Write as _};
use std::sync::atomic::Ordering;

impl Store {
    /// Remove one object, if it is still the file `ino` (any file when `None`), under its
    /// directory's lock; returns whether a file was removed.
    pub(super) fn remove(
        &self,
        key: &DerivativeKey,
        ext: &str,
        ino: Option<u64>,
    ) -> io::Result<bool> {
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

    pub(super) fn kick_evictor(&self) {
        if let Ok(guard) = self.kick.lock() {
            if let Some(tx) = guard.as_ref() {
                let _ = tx.try_send(());
            }
        }
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
}
