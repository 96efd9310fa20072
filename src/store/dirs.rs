//! The 256 object directories' summaries, in memory. Each is behind its own lock, and that lock is
//! also the one for changing the directory's files (publishing, removing, recording an access), so
//! a summary moves in step with the changes made under it and two changes of one object never
//! interleave. Running totals beside them, O(1) to read, always the sum of the summaries.
//!
//! Saved to the index in the background every few seconds (only the directories that changed) and
//! at close; after a crash the saved ones are a few seconds old and the totals are marked
//! approximate until a recount from the files has replaced every summary.

use super::summary::DirSummary;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// One directory's summary and whether it changed since it was last saved.
#[derive(Default)]
struct DirState {
    summary: DirSummary,
    dirty: bool,
}

/// The directories and the totals.
pub(crate) struct Dirs {
    dirs: Vec<Mutex<DirState>>,
    bytes: AtomicU64,
    objects: AtomicU64,
    /// The totals are a few seconds old, or of an index being recounted.
    approximate: AtomicBool,
}

/// A directory, locked: change its files, then say so here.
pub(crate) struct DirGuard<'a> {
    state: MutexGuard<'a, DirState>,
    dirs: &'a Dirs,
}

impl DirGuard<'_> {
    /// An object of `len` bytes, last accessed at `access`, was added.
    pub(crate) fn added(&mut self, len: u64, access: u64) {
        self.state.summary.add(len, access);
        self.state.dirty = true;
        self.dirs.bytes.fetch_add(len, Ordering::Relaxed);
        self.dirs.objects.fetch_add(1, Ordering::Relaxed);
    }

    /// An object of `len` bytes, last accessed at `access`, was removed.
    pub(crate) fn removed(&mut self, len: u64, access: u64) {
        let before = (self.state.summary.count, self.state.summary.bytes);
        self.state.summary.remove(len, access);
        self.state.dirty = true;
        // What the summary really lost (it never goes below zero).
        let after = (self.state.summary.count, self.state.summary.bytes);
        sub(&self.dirs.objects, before.0 - after.0);
        sub(&self.dirs.bytes, before.1 - after.1);
    }

    /// An object was accessed again.
    pub(crate) fn touched(&mut self, len: u64, from: u64, to: u64) {
        self.state.summary.touched(len, from, to);
        self.state.dirty = true;
    }

    /// The directory was counted afresh: its summary is `counted` from now on.
    pub(crate) fn replace(&mut self, counted: DirSummary) {
        let (count, bytes) = (counted.count, counted.bytes);
        let old = std::mem::replace(&mut self.state.summary, counted);
        self.state.dirty = true;
        self.dirs.objects.fetch_add(count, Ordering::Relaxed);
        self.dirs.bytes.fetch_add(bytes, Ordering::Relaxed);
        sub(&self.dirs.objects, old.count);
        sub(&self.dirs.bytes, old.bytes);
    }

    /// Its objects and bytes, as summarised.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.state.summary.count, self.state.summary.bytes)
    }

    /// Replace the spread of its bytes over time (what an eviction walk saw), keeping its counts:
    /// those follow every change exactly, the spread only steers eviction.
    pub(crate) fn respread(&mut self, seen: &DirSummary) {
        self.state.summary.respread(seen);
        self.state.dirty = true;
    }
}

fn sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

impl Dirs {
    /// The directories with the summaries saved in the index (the others empty); `approximate`
    /// when those may not agree with the files.
    pub(crate) fn new(saved: Vec<(u8, DirSummary)>, approximate: bool) -> Dirs {
        let dirs: Vec<Mutex<DirState>> = (0..256).map(|_| Mutex::default()).collect();
        let (mut bytes, mut objects) = (0u64, 0u64);
        for (d, summary) in saved {
            bytes = bytes.saturating_add(summary.bytes);
            objects = objects.saturating_add(summary.count);
            if let Ok(mut s) = dirs[usize::from(d)].lock() {
                s.summary = summary;
            }
        }
        Dirs {
            dirs,
            bytes: AtomicU64::new(bytes),
            objects: AtomicU64::new(objects),
            approximate: AtomicBool::new(approximate),
        }
    }

    /// Lock directory `d`.
    pub(crate) fn lock(&self, d: u8) -> io::Result<DirGuard<'_>> {
        let state = self.dirs[usize::from(d)]
            .lock()
            .map_err(|_| io::Error::other("store directory lock poisoned"))?;
        Ok(DirGuard { state, dirs: self })
    }

    /// Lock directory `d` if nobody holds it (for what may be skipped: recording an access).
    pub(crate) fn try_lock(&self, d: u8) -> Option<DirGuard<'_>> {
        match self.dirs[usize::from(d)].try_lock() {
            Ok(state) => Some(DirGuard { state, dirs: self }),
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => None,
        }
    }

    /// (objects, bytes).
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.objects.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether the totals may be off (see the field).
    pub(crate) fn approximate(&self) -> bool {
        self.approximate.load(Ordering::Relaxed)
    }

    /// Mark the totals exact (a recount replaced every summary) or not.
    pub(crate) fn set_approximate(&self, approximate: bool) {
        self.approximate.store(approximate, Ordering::Relaxed);
    }

    /// A copy of every summary, by directory (for eviction's cut-off).
    pub(crate) fn snapshot(&self) -> Vec<(u8, DirSummary)> {
        (0..=255u8)
            .filter_map(|d| {
                let s = self.dirs[usize::from(d)].lock().ok()?;
                Some((d, s.summary.clone()))
            })
            .collect()
    }

    /// The summaries changed since the last call (`all`: every one), marked saved.
    pub(crate) fn take_changed(&self, all: bool) -> Vec<(u8, DirSummary)> {
        (0..=255u8)
            .filter_map(|d| {
                let mut s = self.dirs[usize::from(d)].lock().ok()?;
                let changed = all || s.dirty;
                s.dirty = false;
                changed.then(|| (d, s.summary.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_follow_every_change() -> io::Result<()> {
        let mut saved = DirSummary::default();
        saved.add(100, 1000);
        let dirs = Dirs::new(vec![(3, saved)], true);
        assert_eq!(dirs.totals(), (1, 100));
        assert!(dirs.approximate());
        {
            let mut g = dirs.lock(3)?;
            g.added(50, 2000);
            g.removed(100, 1000);
            // More removed than was there: the totals stay what the summaries hold.
            g.removed(999, 1000);
        }
        assert_eq!(dirs.totals(), (0, 0));
        {
            let mut g = dirs.lock(9)?;
            g.added(7, 10);
            assert!(dirs.try_lock(9).is_none(), "held");
            let mut counted = DirSummary::default();
            counted.add(70, 10);
            counted.add(30, 20);
            g.replace(counted);
        }
        assert_eq!(dirs.totals(), (2, 100));
        let changed = dirs.take_changed(false);
        assert_eq!(changed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![3, 9]);
        assert!(dirs.take_changed(false).is_empty());
        assert_eq!(dirs.take_changed(true).len(), 256);
        Ok(())
    }
}
