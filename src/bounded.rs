//! A bounded map for small caches (the pipeline's located sources and probes, the hit memo): at
//! most `capacity` entries, recently used ones kept. Two generations: lookups search the young map,
//! then the old one (moving a hit back to the young); when the young map fills, it becomes the old
//! one and the old one is dropped. Every operation is O(1); what survives a turnover is what was
//! used since the previous one, an approximation of least-recently-used that never scans.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// See the module documentation.
pub(crate) struct BoundedCache<K, V> {
    half: usize,
    inner: Mutex<Generations<K, V>>,
}

struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    /// A cache of at most `capacity` entries (at least 2).
    pub(crate) fn new(capacity: usize) -> BoundedCache<K, V> {
        BoundedCache {
            half: (capacity / 2).max(1),
            inner: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    /// The value for `key`, if cached.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut g = self.inner.lock().ok()?;
        if let Some(v) = g.young.get(key) {
            return Some(v.clone());
        }
        let v = g.old.remove(key)?;
        self.insert_young(&mut g, key.to_owned(), v.clone());
        Some(v)
    }

    /// Cache `value` under `key`.
    pub(crate) fn insert(&self, key: K, value: V) {
        if let Ok(mut g) = self.inner.lock() {
            g.old.remove(&key);
            self.insert_young(&mut g, key, value);
        }
    }

    /// Forget `key`.
    pub(crate) fn remove(&self, key: &K) {
        if let Ok(mut g) = self.inner.lock() {
            g.young.remove(key);
            g.old.remove(key);
        }
    }

    fn insert_young(&self, g: &mut Generations<K, V>, key: K, value: V) {
        if g.young.len() >= self.half && !g.young.contains_key(&key) {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(key, value);
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|g| g.young.len() + g.old.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keeps_what_is_used() {
        let c = BoundedCache::new(4);
        for i in 0..100 {
            c.insert(i, i * 10);
            // Key 0 is used all along: it survives every turnover.
            assert_eq!(c.get(&0), Some(0));
            assert!(c.len() <= 4, "{} entries", c.len());
        }
        assert_eq!(c.get(&99), Some(990));
        assert_eq!(c.get(&50), None, "long unused: gone");
        c.remove(&0);
        assert_eq!(c.get(&0), None);
    }
}
