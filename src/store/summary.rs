//! What the index keeps of one object directory: how many objects, how many bytes, and how those
//! bytes spread over last-access time. Pure: no I/O, no clock.
//!
//! The spread is a short histogram: bytes per [`BUCKET_SECS`] of last access (with the span of the
//! accesses each holds), oldest first, at most [`MAX_BUCKETS`] buckets; past that the two oldest
//! merge, so old data is described coarsely and recent data finely, in constant space. Eviction
//! reads the histograms of every directory to choose a cut-off time ([`cutoff`]) and then removes, directory by directory, the files last accessed
//! before it: the cost of evicting an object does not depend on how many objects are stored.

/// Width of a fresh bucket (seconds of last access).
pub(crate) const BUCKET_SECS: u64 = 600;

/// Buckets a directory keeps at most.
pub(crate) const MAX_BUCKETS: usize = 64;

/// One slice of a directory's bytes by last access: `bytes` last accessed within `[lo, hi]`, all
/// in the [`BUCKET_SECS`] slots from `lo`'s to `hi`'s (one slot, until old buckets merge). The
/// span is that of the accesses added, not of the slot, so a directory filled in one burst says so
/// and a cut-off inside it is guessed well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Earliest access added.
    pub(crate) lo: u64,
    /// Latest access added.
    pub(crate) hi: u64,
    /// Bytes.
    pub(crate) bytes: u64,
}

impl Bucket {
    fn first_slot(&self) -> u64 {
        self.lo - self.lo % BUCKET_SECS
    }

    fn last_slot(&self) -> u64 {
        self.hi - self.hi % BUCKET_SECS
    }
}

/// One directory's objects, as counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DirSummary {
    /// Objects.
    pub(crate) count: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Oldest first; their slots never overlap.
    buckets: Vec<Bucket>,
}

impl DirSummary {
    /// An object of `len` bytes, last accessed at `access`, is added.
    pub(crate) fn add(&mut self, len: u64, access: u64) {
        self.count += 1;
        self.bytes = self.bytes.saturating_add(len);
        let slot = access - access % BUCKET_SECS;
        // The last bucket whose slots start at or before this one.
        let i = self.buckets.partition_point(|b| b.first_slot() <= slot);
        match i.checked_sub(1).map(|j| (j, self.buckets[j])) {
            Some((j, b)) if b.last_slot() >= slot => {
                let b = &mut self.buckets[j];
                b.lo = b.lo.min(access);
                b.hi = b.hi.max(access);
                b.bytes = b.bytes.saturating_add(len);
            }
            _ => self.buckets.insert(
                i,
                Bucket {
                    lo: access,
                    hi: access,
                    bytes: len,
                },
            ),
        }
        if self.buckets.len() > MAX_BUCKETS {
            let second = self.buckets.remove(1);
            let first = &mut self.buckets[0];
            first.hi = first.hi.max(second.hi);
            first.bytes = first.bytes.saturating_add(second.bytes);
        }
    }

    /// An object of `len` bytes, last accessed at `access`, is gone. Counts never go below zero
    /// (a summary that was off is put right by the next recount).
    pub(crate) fn remove(&mut self, len: u64, access: u64) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(len);
        let slot = access - access % BUCKET_SECS;
        let i = self
            .buckets
            .partition_point(|b| b.first_slot() <= slot)
            .saturating_sub(1);
        if let Some(b) = self.buckets.get_mut(i) {
            b.bytes = b.bytes.saturating_sub(len);
            if b.bytes == 0 {
                self.buckets.remove(i);
            }
        }
    }

    /// An object was accessed again: its bytes move from `from`'s bucket to `to`'s.
    pub(crate) fn touched(&mut self, len: u64, from: u64, to: u64) {
        self.remove(len, from);
        self.add(len, to);
    }

    /// Take `seen`'s spread over time, keeping this summary's counts (see `Dirs::respread`).
    pub(crate) fn respread(&mut self, seen: &DirSummary) {
        self.buckets.clone_from(&seen.buckets);
    }

    /// The last access of its oldest bytes.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.buckets.first().map(|b| b.lo)
    }

    /// The buckets, oldest first.
    #[cfg(test)]
    pub(crate) fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// A fixed binary layout: version, count, bytes, then (lo, hi, bytes) triples; little-endian.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + 24 * self.buckets.len());
        out.push(SUMMARY_V1);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.bytes.to_le_bytes());
        for b in &self.buckets {
            out.extend_from_slice(&b.lo.to_le_bytes());
            out.extend_from_slice(&b.hi.to_le_bytes());
            out.extend_from_slice(&b.bytes.to_le_bytes());
        }
        out
    }

    /// The summary [`DirSummary::encode`] wrote; `None` for anything else (then it is recounted).
    pub(crate) fn decode(bytes: &[u8]) -> Option<DirSummary> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        if bytes.first() != Some(&SUMMARY_V1) || bytes.len() < 17 || (bytes.len() - 17) % 24 != 0 {
            return None;
        }
        let mut buckets = Vec::with_capacity((bytes.len() - 17) / 24);
        let mut at = 17;
        while at < bytes.len() {
            buckets.push(Bucket {
                lo: u64_at(at)?,
                hi: u64_at(at + 8)?,
                bytes: u64_at(at + 16)?,
            });
            at += 24;
        }
        let whole = buckets.iter().all(|b| b.lo <= b.hi && b.hi < u64::MAX);
        let ordered = buckets
            .windows(2)
            .all(|w| w[0].last_slot() < w[1].first_slot());
        if !whole || !ordered || buckets.len() > MAX_BUCKETS {
            return None;
        }
        Some(DirSummary {
            count: u64_at(1)?,
            bytes: u64_at(9)?,
            buckets,
        })
    }
}

const SUMMARY_V1: u8 = 1;

/// The last-access time before which about `excess` bytes were last accessed, over `summaries`,
/// taking each bucket's bytes as spread evenly over its accesses' span (`[lo, hi + 1)`): the
/// earliest time by which that many bytes are, by that measure, older. `None` when they hold less
/// than `excess` (then everything goes: the caller evicts without a cut-off). A guess: the caller
/// walks the files and, when it freed too little, moves the cut-off on.
pub(crate) fn cutoff<'a>(
    summaries: impl Iterator<Item = &'a DirSummary>,
    excess: u64,
) -> Option<u64> {
    let buckets: Vec<Bucket> = summaries.flat_map(|s| s.buckets.iter().copied()).collect();
    let total: u128 = buckets.iter().map(|b| u128::from(b.bytes)).sum();
    let excess = u128::from(excess);
    if total < excess {
        return None;
    }
    // Bytes older than `t`, by the even-spread measure.
    let older = |t: u64| -> u128 {
        buckets
            .iter()
            .map(|b| {
                let end = b.hi.saturating_add(1);
                if t <= b.lo {
                    0
                } else if t >= end {
                    u128::from(b.bytes)
                } else {
                    u128::from(b.bytes) * u128::from(t - b.lo) / u128::from(end - b.lo)
                }
            })
            .sum()
    };
    // The smallest t with enough older bytes (`older` grows with t; at the newest end it is all).
    let (mut low, mut high) = (
        buckets.iter().map(|b| b.lo).min()?,
        buckets.iter().map(|b| b.hi.saturating_add(1)).max()?,
    );
    while low < high {
        let mid = low + (high - low) / 2;
        if older(mid) >= excess {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    Some(low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spans(s: &DirSummary) -> Vec<(u64, u64, u64)> {
        s.buckets().iter().map(|b| (b.lo, b.hi, b.bytes)).collect()
    }

    #[test]
    fn counts_buckets_and_the_oldest_access() {
        let mut s = DirSummary::default();
        s.add(100, 10_000);
        s.add(50, 10_100);
        s.add(30, 20_000);
        assert_eq!((s.count, s.bytes), (3, 180));
        assert_eq!(s.oldest(), Some(10_000));
        assert_eq!(spans(&s), [(10_000, 10_100, 150), (20_000, 20_000, 30)]);
        // A hit moves its bytes to the newer bucket; the emptied one goes.
        s.touched(30, 20_000, 30_000);
        s.touched(100, 10_000, 30_000);
        s.touched(50, 10_100, 30_000);
        assert_eq!(spans(&s), [(30_000, 30_000, 180)]);
        assert_eq!(s.oldest(), Some(30_000));
        s.remove(100, 30_000);
        s.remove(50, 30_000);
        s.remove(30, 30_000);
        assert!(s.buckets().is_empty());
        s.remove(1, 1);
        assert_eq!((s.count, s.bytes), (0, 0));
    }

    #[test]
    fn old_buckets_merge_so_a_summary_stays_small() {
        let mut s = DirSummary::default();
        for i in 0..1000u64 {
            s.add(1, i * BUCKET_SECS + 7);
        }
        assert_eq!(s.buckets().len(), MAX_BUCKETS);
        assert_eq!(s.oldest(), Some(7));
        assert_eq!(s.buckets().iter().map(|b| b.bytes).sum::<u64>(), 1000);
        // The newest are still fine-grained; the oldest spans what it merged.
        let newest = 999 * BUCKET_SECS + 7;
        assert_eq!(spans(&s)[MAX_BUCKETS - 1], (newest, newest, 1));
        let first = s.buckets()[0];
        assert_eq!(
            (first.lo, first.hi),
            (7, (1000 - MAX_BUCKETS as u64) * BUCKET_SECS + 7)
        );
        // An object from the merged span is removed from the bucket that holds it.
        s.remove(1, 5 * BUCKET_SECS + 7);
        assert_eq!(s.buckets()[0].bytes, 1000 - MAX_BUCKETS as u64);
    }

    #[test]
    fn the_cutoff_frees_what_is_asked_from_the_oldest_end() {
        let mut a = DirSummary::default();
        let mut b = DirSummary::default();
        // Both directories filled over the same 100 seconds, then one object each later.
        for t in 0..100 {
            a.add(10, 1_000 + t);
            b.add(10, 1_000 + t);
        }
        a.add(500, 6_000);
        b.add(500, 12_000);
        let all = [a, b];
        // Half of the burst (the span of its accesses, not of its slot).
        assert_eq!(cutoff(all.iter(), 1_000), Some(1_050));
        // All of it (`hi + 1`), and some of the next.
        assert_eq!(cutoff(all.iter(), 2_000), Some(1_100));
        assert_eq!(cutoff(all.iter(), 2_250), Some(6_001));
        assert_eq!(cutoff(all.iter(), 3_000), Some(12_001));
        assert_eq!(cutoff(all.iter(), 3_001), None);
        assert_eq!(cutoff([].iter(), 1), None);
    }

    #[test]
    fn the_cutoff_reads_old_merged_buckets_by_their_span() {
        // One directory with a merged old bucket spanning days, another with only recent bytes:
        // a cut-off for a part of the old bytes falls inside the old span, not after it.
        let mut old = DirSummary::default();
        for day in 0..200u64 {
            old.add(100, day * 86_400);
        }
        assert_eq!(old.buckets().len(), MAX_BUCKETS);
        let mut recent = DirSummary::default();
        recent.add(10_000, 200 * 86_400);
        let t = cutoff([old.clone(), recent].iter(), 5_000).unwrap_or(0);
        assert!(t > 0 && t < 137 * 86_400, "{t}");
        // The summary as recorded frees at least what was asked before it.
        let freed: u64 = (0..200u64).filter(|d| d * 86_400 < t).count() as u64 * 100;
        assert!((4_000..=6_000).contains(&freed), "{freed}");
    }

    proptest! {
        /// Encoding round-trips, and anything else decodes to nothing or a valid summary.
        #[test]
        fn summaries_round_trip(ops in prop::collection::vec((1u64..10_000, 0u64..10_000_000), 0..300),
                               garbage in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut s = DirSummary::default();
            for (len, at) in &ops {
                s.add(*len, *at);
            }
            prop_assert!(s.buckets().len() <= MAX_BUCKETS);
            prop_assert_eq!(s.buckets().iter().map(|b| b.bytes).sum::<u64>(), s.bytes);
            prop_assert!(s.buckets().windows(2).all(|w| w[0].last_slot() < w[1].first_slot()));
            prop_assert_eq!(DirSummary::decode(&s.encode()), Some(s.clone()));
            if let Some(d) = DirSummary::decode(&garbage) {
                prop_assert!(d.buckets().len() <= MAX_BUCKETS);
            }
            // Removing everything that was added empties it, in any order.
            for (len, at) in ops.iter().rev() {
                s.remove(*len, *at);
            }
            prop_assert_eq!((s.count, s.bytes), (0, 0));
        }

        /// The cut-off never lies before the data or past it, and grows with what is asked.
        #[test]
        fn cutoffs_free_enough(ops in prop::collection::vec((1u64..10_000, 0u64..100_000), 1..100),
                               frac in 0.0f64..1.0) {
            let mut s = DirSummary::default();
            for (len, at) in &ops {
                s.add(*len, *at);
            }
            let excess = ((s.bytes as f64) * frac) as u64 + 1;
            let t = cutoff(std::iter::once(&s), excess);
            prop_assert!(t.is_some());
            let t = t.unwrap_or(0);
            let newest = ops.iter().map(|o| o.1).max().unwrap_or(0);
            prop_assert!(t <= newest + 1);
            prop_assert!(t >= s.oldest().unwrap_or(0));
            let more = cutoff(std::iter::once(&s), (excess + 1_000).min(s.bytes)).unwrap_or(0);
            prop_assert!(more >= t);
        }
    }
}
