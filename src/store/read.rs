//! Reading: a lookup opens the object's file by its path and checks it against its attribute (its
//! length always, its blake3 when `verify_reads` is on, or on its way into memory); a short or
//! mismatching file is removed and counted as a repair, never served. Hot objects are answered
//! from memory ([`Store::lookup_hot`]) without blocking. A hit writes nothing: when its file's
//! recorded access is a minute old, the new one is queued for the background thread.

use super::files::{self, now_secs, read_all, stored_hash, FileMeta, Files};
use super::hot::{self, HotObject};
use super::{dir_of, DueTouch, Hit, Store};
use crate::key::{content_hash, DerivativeKey};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Only record an access when the last is older than this, so hits do not turn into writes. It is
/// also eviction's finest resolution: objects hit within one minute of each other are equally old.
const ACCESS_GRANULARITY_SECS: u64 = 60;
/// Bound of the accesses waiting for the background thread (about 100 bytes each).
const MAX_DUE_TOUCHES: usize = 65_536;

impl Store {
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
    pub(super) fn record_touches(&self) {
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
    pub(super) fn repair(&self, key: &DerivativeKey, ext: &str, meta: &FileMeta) -> Option<Hit> {
        tracing::warn!(key = %key.to_hex(), "stored object short or corrupt; re-rendering");
        self.counters.repairs.fetch_add(1, Ordering::Relaxed);
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.remove(key, ext, Some(meta.ino)) {
            tracing::warn!(key = %key.to_hex(), "could not remove a bad object: {e}");
        }
        None
    }
}
