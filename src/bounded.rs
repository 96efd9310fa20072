//! The one cache type of the process: a map bounded by the bytes its entries weigh, used for every
//! cache held in memory (decoded pixels and parked decoders, TIFF directories, remote blocks,
//! located sources and probes, the hit memo, access decisions). One type means one eviction policy
//! and one report: each cache has a name, a budget and the bytes it holds, which `/metrics` exports
//! beside the memory bound's parts.
//!
//! Least recently used out first, exactly, at O(1) per operation: the entries are a doubly linked
//! list threaded through a slab (indices, not pointers), so a lookup moves its entry to the front
//! without allocating, and eviction takes from the back. [`BoundedCache::peek`] looks without
//! counting as a use (a render planning what to read is not using it).
//!
//! The caller weighs each entry (its heap bytes plus [`ENTRY_OVERHEAD`]; the types are too varied
//! for the cache to guess). An entry heavier than the whole budget is not kept: the caller uses it
//! and lets it go. An entry's weight may change after it is inserted ([`BoundedCache::reweigh`]):
//! a decoded level's slot is put in the map empty, so concurrent renders wait for one build, and
//! weighed when the build is done. An entry weighing nothing is never evicted (dropping it would
//! free nothing, and a slot being filled must stay findable).
//!
//! A panic while the lock is held cannot leave the map half changed (each method's changes are
//! made between statements that each leave it whole), so a poisoned lock is taken over, not
//! treated as an empty cache.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// What an entry costs beside the bytes its caller counts: its map slot, queue item and allocation
/// headers. Callers add it to their entries' weights.
pub(crate) const ENTRY_OVERHEAD: u64 = 96;

/// See the module documentation.
pub(crate) struct BoundedCache<K, V> {
    name: &'static str,
    budget: u64,
    inner: Mutex<Lru<K, V>>,
}

/// What a cache reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// `pub` because the public `source::Backend` trait returns it; the module itself is private.
pub struct CacheReport {
    /// The cache's name in `/metrics` (`cache="…"`).
    pub name: &'static str,
    /// Bytes its entries weigh now.
    pub bytes: u64,
    /// The most they may weigh.
    pub budget: u64,
    /// Entries held.
    pub entries: u64,
}

/// No slot: the end of the list.
const NIL: usize = usize::MAX;

struct Node<K, V> {
    key: K,
    value: V,
    weight: u64,
    /// Towards the most recently used.
    prev: usize,
    /// Towards the least recently used.
    next: usize,
}

struct Lru<K, V> {
    index: HashMap<K, usize>,
    /// `None`: a free slot (listed in `free`).
    slots: Vec<Option<Node<K, V>>>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
    bytes: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    /// A cache named `name` of at most `budget` bytes (0: nothing is kept).
    pub(crate) fn new(name: &'static str, budget: u64) -> BoundedCache<K, V> {
        BoundedCache {
            name,
            budget,
            inner: Mutex::new(Lru {
                index: HashMap::new(),
                slots: Vec::new(),
                free: Vec::new(),
                head: NIL,
                tail: NIL,
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value for `key`, if cached (now the most recently used).
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut c = self.lock();
        let i = *c.index.get(key)?;
        c.touch(i);
        c.node(i).map(|n| n.value.clone())
    }

    /// The value for `key`, if cached, without counting as a use.
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let c = self.lock();
        let i = *c.index.get(key)?;
        c.node(i).map(|n| n.value.clone())
    }

    /// Cache `value` under `key`, weighing `weight` bytes, replacing what was there; whether it is
    /// kept (not when it alone is over the budget).
    pub(crate) fn insert(&self, key: K, value: V, weight: u64) -> bool {
        let mut c = self.lock();
        c.remove(&key);
        if weight > self.budget {
            return false;
        }
        c.push(key, value, weight);
        c.evict(self.budget);
        true
    }

    /// The value for `key` (a use); when there is none, `make` gives one and its weight, which is
    /// cached (if it fits the budget) before anyone else can look. One lock for both: concurrent
    /// callers get one value.
    pub(crate) fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> (V, u64)) -> V {
        let mut c = self.lock();
        if let Some(&i) = c.index.get(key) {
            c.touch(i);
            if let Some(n) = c.node(i) {
                return n.value.clone();
            }
        }
        let (value, weight) = make();
        if weight <= self.budget {
            c.push(key.clone(), value.clone(), weight);
            c.evict(self.budget);
        }
        value
    }

    /// Weigh `key`'s entry again (not a use), if it is there and `still` says it is the one the
    /// caller means; less recently used entries make room for it, and it is dropped when it alone
    /// is over the budget. Whether it is still held.
    pub(crate) fn reweigh<Q>(&self, key: &Q, weight: u64, still: impl FnOnce(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut c = self.lock();
        let Some(&i) = c.index.get(key) else {
            return false;
        };
        let Some(n) = c.node_mut(i) else {
            return false;
        };
        if !still(&n.value) {
            return false;
        }
        let before = std::mem::replace(&mut n.weight, weight);
        c.bytes = c.bytes - before + weight;
        if weight > self.budget {
            c.remove(key);
            return false;
        }
        c.evict(self.budget);
        c.index.contains_key(key)
    }

    /// Forget `key` if `still` says its entry is the one the caller means; the value, if it was.
    pub(crate) fn remove_if<Q>(&self, key: &Q, still: impl FnOnce(&V) -> bool) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut c = self.lock();
        let i = *c.index.get(key)?;
        if !still(&c.node(i)?.value) {
            return None;
        }
        c.remove(key)
    }

    /// Forget `key`.
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(key)
    }

    /// Keep only the entries `keep` is true of (a scan: for rare events such as a purge).
    pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        let mut c = self.lock();
        let gone: Vec<K> = c
            .slots
            .iter()
            .flatten()
            .filter(|n| !keep(&n.key, &n.value))
            .map(|n| n.key.clone())
            .collect();
        for key in gone {
            c.remove(&key);
        }
    }

    /// The bytes of the entries `which` is true of (a scan).
    #[cfg(test)]
    pub(crate) fn weight_of(&self, mut which: impl FnMut(&K) -> bool) -> u64 {
        let c = self.lock();
        c.slots
            .iter()
            .flatten()
            .filter(|n| which(&n.key))
            .map(|n| n.weight)
            .sum()
    }

    /// What the cache holds against its budget.
    pub(crate) fn report(&self) -> CacheReport {
        let c = self.lock();
        CacheReport {
            name: self.name,
            bytes: c.bytes,
            budget: self.budget,
            entries: c.index.len() as u64,
        }
    }
}

impl<K: Eq + Hash + Clone, V> Lru<K, V> {
    fn node(&self, i: usize) -> Option<&Node<K, V>> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, i: usize) -> Option<&mut Node<K, V>> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    /// Take slot `i` out of the list (it stays in the slab).
    fn unlink(&mut self, i: usize) {
        let Some((prev, next)) = self.node(i).map(|n| (n.prev, n.next)) else {
            return;
        };
        match self.node_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.node_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    /// Put slot `i` at the front of the list.
    fn link_front(&mut self, i: usize) {
        let head = self.head;
        if let Some(n) = self.node_mut(i) {
            n.prev = NIL;
            n.next = head;
        }
        match self.node_mut(head) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    fn push(&mut self, key: K, value: V, weight: u64) {
        let node = Node {
            key: key.clone(),
            value,
            weight,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(node);
                i
            }
            None => {
                self.slots.push(Some(node));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, i);
        self.bytes += weight;
        self.link_front(i);
    }

    fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.index.remove(key)?;
        self.unlink(i);
        let node = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.bytes -= node.weight;
        Some(node.value)
    }

    /// Drop entries, least recently used first, until the bytes are within `budget`; entries
    /// weighing nothing are passed over.
    fn evict(&mut self, budget: u64) {
        let mut at = self.tail;
        while self.bytes > budget {
            let Some(n) = self.node(at) else {
                break;
            };
            let (prev, weight) = (n.prev, n.weight);
            if weight > 0 {
                let key = n.key.clone();
                self.remove(&key);
            }
            at = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounded_by_bytes_least_recently_used_out_first() {
        let c = BoundedCache::new("test", 400);
        for i in 0..100u64 {
            assert!(c.insert(i, i * 10, 100));
            // Key 0 is used all along: it survives every eviction.
            assert_eq!(c.get(&0), Some(0));
            let r = c.report();
            assert!(r.bytes <= 400 && r.entries <= 4, "{r:?}");
        }
        assert_eq!(c.get(&99), Some(990));
        assert_eq!(c.get(&50), None, "long unused: gone");
        // 97 is the least recently used now (98 was inserted after it, 99 and 0 looked up);
        // a peek does not save it.
        assert_eq!(c.peek(&97), Some(970));
        assert!(c.insert(100, 1000, 100));
        assert_eq!(c.peek(&97), None);
        assert_eq!(c.remove(&0), Some(0));
        assert_eq!(c.get(&0), None);
        assert_eq!(c.report().bytes, 300);
    }

    #[test]
    fn heavier_than_the_budget_is_not_kept_and_reweighing_evicts() {
        let c = BoundedCache::new("test", 1000);
        assert!(!c.insert("big", 1, 1001));
        assert_eq!(c.get("big"), None);
        assert!(c.insert("other", 3, 600));
        assert_eq!(c.get_or_insert_with(&"slot", || (2, 0)), 2);
        // A slot weighing nothing is passed over; weighed at last, it pushes out the older entry.
        assert!(c.insert("third", 5, 400));
        assert_eq!(c.peek("slot"), Some(2));
        assert!(c.reweigh("slot", 500, |v| *v == 2));
        assert_eq!(c.get("other"), None);
        assert_eq!(c.report().bytes, 900);
        // Not the entry the caller means: untouched.
        assert!(!c.reweigh("slot", 10, |v| *v == 9));
        assert!(c.remove_if("slot", |v| *v == 9).is_none());
        assert_eq!(c.remove_if("slot", |v| *v == 2), Some(2));
        // Weighed over the budget: dropped.
        assert_eq!(c.get_or_insert_with(&"slot", || (4, 0)), 4);
        assert!(!c.reweigh("slot", 2000, |_| true));
        c.retain(|k, _| *k != "third");
        assert_eq!(
            c.report(),
            CacheReport {
                name: "test",
                bytes: 0,
                budget: 1000,
                entries: 0
            }
        );
    }

    #[test]
    fn a_poisoned_lock_is_taken_over() {
        let c = std::sync::Arc::new(BoundedCache::new("test", 100));
        c.insert(1, 1, 10);
        let c2 = std::sync::Arc::clone(&c);
        let _ = std::thread::spawn(move || {
            let _g = c2.inner.lock();
            panic!("poison it");
        })
        .join();
        assert_eq!(c.get(&1), Some(1));
    }

    proptest! {
        /// Whatever the operations, the bytes held are the sum of the entries' weights and within
        /// the budget, the list holds exactly the indexed entries, and evictions follow the order
        /// of use of a plain model.
        #[test]
        fn the_books_balance(ops in proptest::collection::vec((0u8..6, 0u16..40, 1u64..300), 1..400)) {
            let c = BoundedCache::new("prop", 1000);
            // The model: (key, weight) from least to most recently used.
            let mut model: Vec<(u16, u64)> = Vec::new();
            for (op, key, weight) in ops {
                let at = model.iter().position(|(k, _)| *k == key);
                match op {
                    0 => {
                        c.insert(key, weight, weight);
                        if let Some(i) = at { model.remove(i); }
                        model.push((key, weight));
                    }
                    1 => {
                        c.get(&key);
                        if let Some(i) = at { let e = model.remove(i); model.push(e); }
                    }
                    2 => {
                        c.remove(&key);
                        if let Some(i) = at { model.remove(i); }
                    }
                    3 => {
                        c.reweigh(&key, weight, |_| true);
                        if let Some(i) = at { model[i].1 = weight; }
                    }
                    4 => {
                        c.peek(&key);
                    }
                    _ => {
                        c.retain(|k, _| k % 3 != 0);
                        model.retain(|(k, _)| k % 3 != 0);
                    }
                }
                while model.iter().map(|(_, w)| w).sum::<u64>() > 1000 {
                    model.remove(0);
                }
                let g = c.lock();
                let sum: u64 = model.iter().map(|(_, w)| w).sum();
                prop_assert_eq!(g.bytes, sum);
                // Walk the list from the least recently used: the model's order.
                let mut walked = Vec::new();
                let mut at = g.tail;
                while let Some(n) = g.node(at) {
                    walked.push((n.key, n.weight));
                    at = n.prev;
                }
                prop_assert_eq!(&walked, &model);
                prop_assert_eq!(g.index.len(), model.len());
            }
        }
    }
}
