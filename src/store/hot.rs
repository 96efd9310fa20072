//! The store's memory tier: hot stored objects kept in memory, so that a hit on them is answered
//! on the async thread that parsed the request, with no trip to a blocking thread and no file read.
//! A profile of the disk hit path put about half of its CPU time in handing the request to a
//! blocking thread and back; a lookup here is one map probe under a mutex.
//!
//! What enters: only objects read back from disk and found whole (length and blake3 checked here
//! even when `verify_reads` is off), so a memory hit is never less checked than a disk hit. A
//! render's own bytes do not enter until they are read back once: what is kept is what is asked for
//! at least twice. Everything that removes or replaces an object on disk (eviction, repair, purge,
//! a new write of the key) removes it here in the same step.
//!
//! Bounded by bytes, in two generations like the pipeline's small caches: lookups search the young
//! map, then the old one (moving a hit back to the young one); when the young map holds half the
//! budget it becomes the old one and the old one is dropped. O(1) per operation, never a scan; what
//! survives a turnover is what was used since the previous one.

use crate::key::DerivativeKey;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a hot object costs beyond its bytes (the map slot, the path, the entry): counted so that
/// a tier of tiny objects is bounded too.
const OVERHEAD: u64 = 160;

/// One hot object.
#[derive(Debug)]
pub(crate) struct HotObject {
    /// The verified bytes (`None` when the proxy sends the file: then only its path is kept).
    pub(crate) bytes: Option<Bytes>,
    /// Path below `objects/`.
    pub(crate) relative_path: String,
    /// The file's length and inode, to record hits against the file they were found as (a file
    /// written again under the same name is another inode).
    pub(crate) len: u64,
    pub(crate) ino: u64,
    /// The file's last recorded access (Unix seconds), advanced when a hit here is recorded.
    pub(crate) last_access: AtomicU64,
}

impl HotObject {
    fn weight(&self) -> u64 {
        self.bytes.as_ref().map_or(0, |b| b.len() as u64)
            + self.relative_path.len() as u64
            + OVERHEAD
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub(crate) struct HotCounters {
    /// Hits answered from memory.
    pub(crate) hits: AtomicU64,
    /// Objects taken in.
    pub(crate) inserts: AtomicU64,
}

/// See the module documentation.
pub(crate) struct HotTier {
    /// Bytes per generation (half the budget); 0 turns the tier off.
    half: u64,
    /// Larger objects are not kept.
    max_object: u64,
    inner: Mutex<Generations>,
    pub(crate) counters: HotCounters,
}

#[derive(Default)]
struct Generations {
    young: HashMap<DerivativeKey, Arc<HotObject>>,
    young_bytes: u64,
    old: HashMap<DerivativeKey, Arc<HotObject>>,
    old_bytes: u64,
}

impl Generations {
    fn take(&mut self, key: &DerivativeKey) -> Option<Arc<HotObject>> {
        if let Some(o) = self.young.remove(key) {
            self.young_bytes -= o.weight();
            return Some(o);
        }
        let o = self.old.remove(key)?;
        self.old_bytes -= o.weight();
        Some(o)
    }
}

impl HotTier {
    /// A tier of at most `budget` bytes holding objects of at most `max_object` bytes.
    pub(crate) fn new(budget: u64, max_object: u64) -> HotTier {
        HotTier {
            half: budget / 2,
            max_object,
            inner: Mutex::new(Generations::default()),
            counters: HotCounters::default(),
        }
    }

    /// Whether objects of `len` bytes are kept.
    pub(crate) fn admits(&self, len: u64) -> bool {
        self.half > 0 && len <= self.max_object && len + OVERHEAD <= self.half
    }

    /// The hot object `key`, if held.
    pub(crate) fn get(&self, key: &DerivativeKey) -> Option<Arc<HotObject>> {
        if self.half == 0 {
            return None;
        }
        let mut g = self.inner.lock().ok()?;
        if let Some(o) = g.young.get(key) {
            return Some(Arc::clone(o));
        }
        let o = g.old.remove(key)?;
        g.old_bytes -= o.weight();
        self.insert_young(&mut g, *key, Arc::clone(&o));
        Some(o)
    }

    /// Keep `object` as `key` (replacing what was there), if it is small enough.
    pub(crate) fn insert(&self, key: DerivativeKey, object: HotObject) {
        if !self.admits(object.len) {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            g.take(&key);
            self.insert_young(&mut g, key, Arc::new(object));
            self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forget `key` (its object left the disk or changed).
    pub(crate) fn remove(&self, key: &DerivativeKey) {
        if self.half == 0 {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            g.take(key);
        }
    }

    /// Bytes and objects held.
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.inner.lock().map_or((0, 0), |g| {
            (
                g.young_bytes + g.old_bytes,
                (g.young.len() + g.old.len()) as u64,
            )
        })
    }

    fn insert_young(&self, g: &mut Generations, key: DerivativeKey, object: Arc<HotObject>) {
        let weight = object.weight();
        if g.young_bytes + weight > self.half {
            g.old = std::mem::take(&mut g.young);
            g.old_bytes = std::mem::take(&mut g.young_bytes);
        }
        g.young_bytes += weight;
        g.young.insert(key, object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u16) -> DerivativeKey {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&n.to_le_bytes());
        DerivativeKey::from_slice(&b).unwrap_or_else(|| unreachable!("32 bytes"))
    }

    fn object(len: usize, tag: u8) -> HotObject {
        HotObject {
            bytes: Some(Bytes::from(vec![tag; len])),
            relative_path: "ab/cd.jpg".into(),
            len: len as u64,
            ino: u64::from(tag),
            last_access: AtomicU64::new(0),
        }
    }

    #[test]
    fn hits_removal_and_the_size_limit() {
        let t = HotTier::new(10_000, 1_000);
        t.insert(key(1), object(500, 1));
        t.insert(key(2), object(2_000, 2));
        assert_eq!(
            t.get(&key(1)).and_then(|o| o.bytes.clone()).map(|b| b[0]),
            Some(1)
        );
        assert!(t.get(&key(2)).is_none(), "larger than max_object");
        t.remove(&key(1));
        assert!(t.get(&key(1)).is_none());
        assert_eq!(t.usage(), (0, 0));
        let off = HotTier::new(0, 1_000);
        off.insert(key(1), object(10, 1));
        assert!(off.get(&key(1)).is_none(), "a zero budget keeps nothing");
    }

    #[test]
    fn what_is_used_survives_a_turnover() {
        let t = HotTier::new(4 * (1_000 + OVERHEAD + 9), 1_000);
        t.insert(key(1), object(1_000, 1));
        t.insert(key(2), object(1_000, 2));
        // The young generation is full: the next insert turns it over.
        t.insert(key(3), object(1_000, 3));
        assert!(
            t.get(&key(1)).is_some(),
            "moved back to the young generation"
        );
        t.insert(key(4), object(1_000, 4));
        t.insert(key(5), object(1_000, 5));
        assert!(t.get(&key(2)).is_none(), "unused for two turnovers");
    }

    proptest! {
        /// Whatever the sequence, the bytes held stay within the budget and the usage figures are
        /// exactly those of the objects held.
        #[test]
        fn usage_is_exact_and_bounded(ops in proptest::collection::vec((0u8..3, 0u16..40, 0usize..3_000), 1..300)) {
            let budget = 20_000;
            let t = HotTier::new(budget, 2_500);
            let mut model: HashMap<u16, usize> = HashMap::new();
            for (op, k, len) in ops {
                match op {
                    0 => { t.insert(key(k), object(len, k as u8)); }
                    1 => { t.remove(&key(k)); model.remove(&k); }
                    _ => {
                        if let Some(o) = t.get(&key(k)) {
                            prop_assert_eq!(o.bytes.as_ref().map(|b| b.len()), Some(o.len as usize));
                            prop_assert!(o.bytes.as_ref().is_some_and(|b| b.iter().all(|&x| x == k as u8)));
                        }
                    }
                }
                let (bytes, objects) = t.usage();
                prop_assert!(bytes <= budget, "{} > {}", bytes, budget);
                let g = t.inner.lock().map_err(|_| TestCaseError::fail("poisoned"))?;
                let weights: u64 = g.young.values().chain(g.old.values()).map(|o| o.weight()).sum();
                prop_assert_eq!(weights, bytes);
                prop_assert_eq!(objects as usize, g.young.len() + g.old.len());
                prop_assert!(g.young.keys().all(|k| !g.old.contains_key(k)), "a key in both generations");
            }
        }
    }
}
