//! Decoded sources, kept in memory between renders: a viewer asks for dozens of tiles of one image at
//! once, and decoding the whole source for each of them is most of the cost of a cold tile. Entries
//! are pyramid levels of a source (level k is 1/2^k of the full size, rounded up), built on demand by
//! the renderer (a JPEG decodes levels 0-3 directly at DCT scale, anything else halves the level
//! above), so coarse tiles are cut from a small level and a thumbnail never holds the full image.
//!
//! Bounded by `render.decoded_cache_bytes` (least recently used levels go first; a level larger than
//! the budget is built, used and dropped). Concurrent renders needing one missing level build it once:
//! the others wait for it.
//!
//! Beside the pixels, the directories of tiled TIFFs ([`Directory`]): a cold tile of a pyramid is
//! one tile read and decode, and parsing the file's directory (every tile's offset, a few hundred
//! kilobytes for a 30,000 px scan) for each one was a large part of it. Bounded by
//! [`DIRECTORY_BUDGET`], within the memory bound's fixed part.

use super::{RenderError, Result};
use crate::bounded::{BoundedCache, CacheReport};
use crate::formats::tiff::Pyramid;
use crate::source::Fingerprint;
use image::DynamicImage;
use std::sync::{Arc, Mutex, OnceLock};

type Slot = Arc<OnceLock<std::result::Result<Arc<DynamicImage>, Arc<RenderError>>>>;

/// What part of a source version an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Part {
    /// Halving level k (1/2^k of the full size): the whole image at that scale.
    Level(usize),
    /// One block of a JPEG 2000 resolution (see `decode::jp2`): the decoder's cost is mostly fixed
    /// per call (packet headers of the whole codestream), so neighbouring tiles share one decode.
    Block { reduce: u32, col: u32, row: u32 },
}

/// Decoder state kept between renders of one source version (an opened JPEG 2000 codestream):
/// taken by one render at a time and given back after it.
pub(crate) type Parked = Box<dyn std::any::Any + Send>;

/// Decoders parked for one source version and slot, with what each weighs: one per render that
/// used one at the same time.
type ParkedList = Arc<Mutex<Vec<(Parked, u64)>>>;

/// What an entry of the cache is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Held {
    Pixels(Fingerprint, Part),
    /// Parked decoders by source version and slot (a JPEG 2000's resolution reduction).
    Parked(Fingerprint, u32),
}

/// What an entry holds: pixels and parked decoders share one budget, least recently used out.
#[derive(Clone)]
enum Value {
    Pixels(Slot),
    Parked(ParkedList),
}

impl Value {
    fn is_slot(&self, slot: &Slot) -> bool {
        matches!(self, Value::Pixels(s) if Arc::ptr_eq(s, slot))
    }

    fn is_list(&self, list: &ParkedList) -> bool {
        matches!(self, Value::Parked(l) if Arc::ptr_eq(l, list))
    }
}

fn lock_list(list: &ParkedList) -> std::sync::MutexGuard<'_, Vec<(Parked, u64)>> {
    // Pushes and pops only: a panic cannot leave the list half changed.
    list.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bytes of TIFF directories kept (offsets and byte counts of every tile, levels, profile).
pub(crate) const DIRECTORY_BUDGET: u64 = 8 << 20;

/// A TIFF's directory as the renderer reads it: its pyramid (`None` for a flat TIFF), and for each
/// level whether its JPEG tiles may be sent as they are (decided once, from the first tile read).
#[derive(Debug)]
pub(crate) struct Directory {
    pub(crate) pyramid: Option<Pyramid>,
    pub(crate) passes: Vec<OnceLock<bool>>,
}

impl Directory {
    fn new(pyramid: Option<Pyramid>) -> Directory {
        let levels = pyramid.as_ref().map_or(0, |p| p.levels.len());
        Directory {
            pyramid,
            passes: (0..levels).map(|_| OnceLock::new()).collect(),
        }
    }

    fn weight(&self) -> u64 {
        let tiles: u64 = self
            .pyramid
            .as_ref()
            .map_or(0, |p| p.levels.iter().map(|l| l.tile_count() as u64).sum());
        let icc = self
            .pyramid
            .as_ref()
            .and_then(|p| p.icc.as_ref())
            .map_or(0, |i| i.len() as u64);
        256 + tiles * 16 + icc
    }
}

/// The cache of decoded sources.
pub(crate) struct DecodedCache {
    budget: u64,
    held: BoundedCache<Held, Value>,
    directories: BoundedCache<Fingerprint, Arc<Directory>>,
}

impl DecodedCache {
    /// A cache holding at most `budget` bytes of pixels (0 disables it).
    pub(crate) fn new(budget: u64) -> DecodedCache {
        DecodedCache {
            budget,
            held: BoundedCache::new("decoded", budget),
            directories: BoundedCache::new("tiff_directories", DIRECTORY_BUDGET),
        }
    }

    /// What its two parts hold against their budgets.
    pub(crate) fn reports(&self) -> [CacheReport; 2] {
        [self.held.report(), self.directories.report()]
    }

    /// The directory of the TIFF version `key`, read with `read` the first time. Two renders that
    /// miss at once both read it (a directory read is milliseconds; the first one kept wins).
    pub(crate) fn directory(
        &self,
        key: &Fingerprint,
        read: impl FnOnce() -> Result<Option<Pyramid>>,
    ) -> Result<Arc<Directory>> {
        if let Some(dir) = self.directories.get(key) {
            return Ok(dir);
        }
        let dir = Arc::new(Directory::new(read()?));
        let weight = dir.weight();
        // A directory over a quarter of the budget would push out several: read it each time.
        if weight > DIRECTORY_BUDGET / 4 {
            return Ok(dir);
        }
        Ok(self
            .directories
            .get_or_insert_with(key, || (Arc::clone(&dir), weight)))
    }

    /// Bytes of pixels and parked decoders held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.held.report().bytes
    }

    /// The budget in bytes.
    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Level `k` of the source version `key` if it is already built.
    pub(crate) fn peek(&self, key: &Fingerprint, k: usize) -> Option<Arc<DynamicImage>> {
        self.peek_part(key, Part::Level(k))
    }

    /// `part` of the source version `key` if it is already built (not counted as a use).
    pub(crate) fn peek_part(&self, key: &Fingerprint, part: Part) -> Option<Arc<DynamicImage>> {
        match self.held.peek(&Held::Pixels(key.clone(), part))? {
            Value::Pixels(slot) => slot.get()?.as_ref().ok().cloned(),
            Value::Parked(_) => None,
        }
    }

    /// Level `k` of the source version `key`, building it with `build` if needed.
    pub(crate) fn get_or_build(
        &self,
        key: &Fingerprint,
        k: usize,
        build: impl FnOnce() -> Result<DynamicImage>,
    ) -> Result<Arc<DynamicImage>> {
        self.get_or_build_part(key, Part::Level(k), build)
    }

    /// `part` of the source version `key`, building it with `build` if needed; concurrent callers
    /// wait for one build.
    pub(crate) fn get_or_build_part(
        &self,
        key: &Fingerprint,
        part: Part,
        build: impl FnOnce() -> Result<DynamicImage>,
    ) -> Result<Arc<DynamicImage>> {
        if self.budget == 0 {
            return build().map(Arc::new);
        }
        let id = Held::Pixels(key.clone(), part);
        // The slot goes in empty (weighing nothing) and is weighed once built.
        let slot: Slot = match self
            .held
            .get_or_insert_with(&id, || (Value::Pixels(Arc::new(OnceLock::new())), 0))
        {
            Value::Pixels(slot) => slot,
            Value::Parked(_) => {
                return Err(RenderError::bug("decoded cache: pixels keyed as parked"))
            }
        };
        // One build per level: concurrent callers block here until the first one finishes.
        let mut build = Some(build);
        let result = slot
            .get_or_init(|| match build.take() {
                Some(b) => b().map(Arc::new).map_err(Arc::new),
                None => Err(Arc::new(RenderError::bug("level built twice"))),
            })
            .clone();
        // Too large for the render that built it is not too large for every render: budgets differ
        // (a reserved thread's is small), so a waiter with its own budget builds the level itself.
        if let (Err(e), Some(b)) = (&result, build.take()) {
            if e.is_too_large() {
                return b().map(Arc::new);
            }
        }
        match &result {
            // Over the budget, the entry is dropped: this render uses the level, the next one
            // builds it again.
            Ok(img) => {
                self.held
                    .reweigh(&id, img.as_bytes().len() as u64, |v| v.is_slot(&slot));
            }
            // Failures are not cached: the file may be fixed or replaced.
            Err(_) => {
                self.held.remove_if(&id, |v| v.is_slot(&slot));
            }
        }
        result.map_err(RenderError::Shared)
    }

    /// A decoder parked for `key`'s `slot`, taken out for one render; `None` when there is none.
    pub(crate) fn unpark(&self, key: &Fingerprint, slot: u32) -> Option<Parked> {
        let id = Held::Parked(key.clone(), slot);
        let Value::Parked(list) = self.held.get(&id)? else {
            return None;
        };
        let (state, left) = {
            let mut l = lock_list(&list);
            let (state, _) = l.pop()?;
            (state, l.iter().map(|(_, b)| b).sum::<u64>())
        };
        if left == 0 {
            self.held.remove_if(&id, |v| v.is_list(&list));
        } else {
            self.held.reweigh(&id, left, |v| v.is_list(&list));
        }
        Some(state)
    }

    /// Keep `state` (weighing about `bytes`) for the next render of `key`'s `slot`, within the
    /// budget shared with the pixels (least recently used first). A state heavier than half the
    /// budget is dropped instead: it would push out more than it saves.
    pub(crate) fn park(&self, key: &Fingerprint, slot: u32, state: Parked, bytes: u64) {
        if bytes > self.budget / 2 {
            return;
        }
        let id = Held::Parked(key.clone(), slot);
        let Value::Parked(list) = self
            .held
            .get_or_insert_with(&id, || (Value::Parked(ParkedList::default()), 0))
        else {
            return;
        };
        let total = {
            let mut l = lock_list(&list);
            l.push((state, bytes));
            l.iter().map(|(_, b)| b).sum::<u64>()
        };
        // If the list was dropped meanwhile (its last decoder taken), this one goes with it.
        self.held.reweigh(&id, total, |v| v.is_list(&list));
    }

    /// Drop every decoder parked for `key` (its tiled copy now serves what they would).
    pub(crate) fn drop_parked(&self, key: &Fingerprint) {
        self.held
            .retain(|id, _| !matches!(id, Held::Parked(k, _) if k == key));
    }

    /// Bytes of parked decoders (for tests).
    #[cfg(test)]
    pub(crate) fn parked_bytes(&self) -> u64 {
        self.held.weight_of(|id| matches!(id, Held::Parked(..)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::ops::halve;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fp(name: &str) -> Fingerprint {
        Fingerprint::new(name)
    }

    fn img(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([9, 9, 9])))
    }

    #[test]
    fn builds_once_evicts_lru_and_retries_failures() {
        let cache = Arc::new(DecodedCache::new(100 * 100 * 3 * 2));
        let builds = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, d) = (Arc::clone(&cache), Arc::clone(&builds));
                std::thread::spawn(move || {
                    c.get_or_build(&fp("a"), 0, || {
                        d.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok(img(100, 100))
                    })
                    .is_ok()
                })
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap_or(false)));
        assert_eq!(
            builds.load(Ordering::SeqCst),
            1,
            "one build for eight concurrent renders"
        );
        assert!(cache.peek(&fp("a"), 0).is_some());
        assert!(cache.peek(&fp("a"), 1).is_none());
        let half = cache.get_or_build(&fp("a"), 1, || {
            let full = cache.peek(&fp("a"), 0).ok_or(RenderError::bug("gone"))?;
            Ok(halve(&full))
        });
        assert_eq!(half.map(|h| (h.width(), h.height())).ok(), Some((50, 50)));
        let _ = cache.get_or_build(&fp("b"), 0, || Ok(img(100, 100)));
        let _ = cache.get_or_build(&fp("c"), 0, || Ok(img(100, 100)));
        assert!(cache.bytes() <= 2 * 100 * 100 * 3);
        assert!(
            cache.peek(&fp("a"), 0).is_none(),
            "least recently used level went first"
        );
        let big = cache.get_or_build(&fp("big"), 0, || Ok(img(300, 300)));
        assert!(big.is_ok());
        assert!(
            cache.peek(&fp("big"), 0).is_none(),
            "a level above the budget is not kept"
        );
        assert!(cache
            .get_or_build(&fp("bad"), 0, || Err(RenderError::Undecodable("x".into())))
            .is_err());
        assert!(
            cache.get_or_build(&fp("bad"), 0, || Ok(img(2, 2))).is_ok(),
            "failures are retried"
        );
    }

    #[test]
    fn parked_decoders_share_the_budget_and_go_least_recently_used_first() {
        let cache = DecodedCache::new(100 * 100 * 3 * 4);
        cache.park(&fp("a"), 3, Box::new(7u32), 20_000);
        cache.park(&fp("a"), 3, Box::new(8u32), 20_000);
        assert!(cache.unpark(&fp("a"), 2).is_none(), "slots are apart");
        let got = cache
            .unpark(&fp("a"), 3)
            .and_then(|p| p.downcast::<u32>().ok());
        assert!(matches!(got.as_deref(), Some(7 | 8)));
        assert_eq!(cache.parked_bytes(), 20_000, "one left after one taken");
        // Too heavy to keep: more than half the budget.
        cache.park(&fp("b"), 0, Box::new(1u32), 20_000);
        cache.park(&fp("huge"), 0, Box::new(1u32), 60_001);
        assert!(cache.unpark(&fp("huge"), 0).is_none());
        // Pixels arriving push out the oldest parked decoder before newer pixels.
        let _ = cache.get_or_build(&fp("c"), 0, || Ok(img(100, 100)));
        let _ = cache.get_or_build(&fp("d"), 0, || Ok(img(100, 100)));
        let _ = cache.get_or_build(&fp("e"), 0, || Ok(img(100, 100)));
        assert!(cache.bytes() <= 100 * 100 * 3 * 4);
        assert!(
            cache.unpark(&fp("a"), 3).is_none(),
            "the least recently used parked decoder went first"
        );
        assert!(cache.peek(&fp("e"), 0).is_some());
        cache.drop_parked(&fp("b"));
        assert_eq!(cache.parked_bytes(), 0);
        assert!(cache.bytes() <= 100 * 100 * 3 * 3);
    }
}
