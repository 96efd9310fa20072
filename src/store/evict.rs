//! Eviction: the store back under its budget, least recently used first, at a cost per evicted
//! object that does not depend on how many objects are stored.
//!
//! From the directories' summaries (bytes by last access) a cut-off time is chosen before which
//! enough bytes were last accessed ([`super::summary::cutoff`]); then each directory holding older
//! bytes, oldest first, is read once, one entry at a time, and its files last accessed before the
//! cut-off are removed, until the store is at 90 % of its budget. The cut-off is a guess (bytes are
//! taken as spread evenly within a bucket); a round that freed too little moves it on, at least to
//! the end of its bucket, and after a few rounds anything goes. The walk holds one directory
//! entry, never a list; a directory's lock is taken only to remove a file (and the file is checked
//! again under it, so a write or a hit in between keeps it). What the walk saw of a directory's
//! spread over time replaces its summary's, so a summary that drifted (accesses it missed) is put
//! right by the first eviction that reads the directory.

use super::summary::{cutoff, DirSummary, BUCKET_SECS};
use super::{dir_of, Store};
use std::sync::atomic::Ordering;

/// Rounds of cut-off and walk before eviction takes whatever it meets: a round frees nothing only
/// when the summaries were far off, and the walk corrects them for the next.
const ROUNDS: usize = 4;

impl Store {
    /// Evict least-recently-used objects until the store is at most 90 % of its budget (the
    /// margin keeps a store at its limit from evicting on every write). Returns how many.
    pub(crate) fn evict_to_budget(&self) -> usize {
        let max = self.settings.max_bytes;
        if self.dirs.totals().1 <= max {
            return 0;
        }
        let target = max / 10 * 9;
        let mut evicted = 0;
        // Each round's cut-off is at least the end of the bucket of the last one's: a guess that
        // freed too little (bytes gathered at one end of their bucket) is not repeated.
        let mut floor = 0;
        for round in 0..=ROUNDS {
            let bytes = self.dirs.totals().1;
            if bytes <= target || self.closed() {
                break;
            }
            if round == ROUNDS && self.dirs.approximate() {
                // Totals that may be too high must not make the last round take anything it
                // meets: wait for the recount, which kicks eviction again when it is done.
                break;
            }
            let summaries = self.dirs.snapshot();
            // The last round, or no summary that can say: anything goes.
            let before = match round {
                ROUNDS => None,
                _ => cutoff(summaries.iter().map(|(_, s)| s), bytes - target),
            }
            .map_or(u64::MAX, |t| t.max(floor));
            floor = (before / BUCKET_SECS)
                .saturating_add(1)
                .saturating_mul(BUCKET_SECS);
            let mut order: Vec<(u64, u8)> = summaries
                .iter()
                .filter_map(|(d, s)| Some((s.oldest()?, *d)))
                .filter(|(oldest, _)| *oldest < before)
                .collect();
            if before == u64::MAX {
                // Summaries may be empty where files are not (before a recount): every directory.
                order = (0..=255u8).map(|d| (0, d)).collect();
            }
            order.sort_unstable();
            let freed_before = evicted;
            for (_, d) in order {
                match self.evict_dir(d, before, target) {
                    Ok(n) => evicted += n,
                    Err(e) => {
                        tracing::warn!("eviction failed: {e}");
                        return evicted;
                    }
                }
                if self.dirs.totals().1 <= target || self.closed() {
                    return evicted;
                }
            }
            if evicted == freed_before {
                tracing::debug!(
                    round,
                    "an eviction round freed nothing; its summaries are corrected"
                );
            }
        }
        evicted
    }

    /// Walk directory `d` once, removing its files last accessed before `before` while the store
    /// is above `target`; returns how many. The spread the walk saw becomes the summary's.
    fn evict_dir(&self, d: u8, before: u64, target: u64) -> std::io::Result<usize> {
        let mut evicted = 0;
        let mut seen = DirSummary::default();
        let mut whole = true;
        for item in self.files.list_dir(d)? {
            if self.closed() {
                return Ok(evicted);
            }
            let (found, meta) = item?;
            if self.dirs.totals().1 <= target {
                // Stopped early: what follows was not seen, so the spread is not the directory's.
                whole = false;
                break;
            }
            if meta.access >= before {
                seen.add(meta.len, meta.access);
                continue;
            }
            let mut dir = self.dirs.lock(dir_of(&found.key))?;
            if self.closed() {
                return Ok(evicted);
            }
            // Checked again under the lock: written again or hit meanwhile, it stays.
            match self.files.meta(&found.key, &found.ext)? {
                Some(now) if now.ino == meta.ino && now.access < before => {}
                Some(now) => {
                    seen.add(now.len, now.access);
                    continue;
                }
                None => continue,
            }
            self.hot.remove(&found.key);
            if let Some(removed) = self
                .files
                .remove_if(&found.key, &found.ext, Some(meta.ino))?
            {
                dir.removed(removed.len, removed.access);
                evicted += 1;
                // Counted as it goes: a long pass shows its progress in /metrics.
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        if whole {
            let mut dir = self.dirs.lock(d)?;
            let (count, _) = dir.counts();
            // The summary counts far more than the walk found (files removed behind the store's
            // back, or a crash that lost the last seconds' changes): its counts are wrong, not
            // just its spread, and eviction would chase bytes that are not there.
            if count > seen.count + seen.count / 100 + 16 {
                drop(dir);
                self.count_dir(d)?;
            } else {
                dir.respread(&seen);
            }
        }
        Ok(evicted)
    }
}
