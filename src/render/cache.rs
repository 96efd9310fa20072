//! Decoded sources, kept in memory between renders: a viewer asks for dozens of tiles of one image at
//! once, and decoding the whole source for each of them is most of the cost of a cold tile. Each entry
//! holds the full-resolution pixels and, built on demand, its halvings (a pyramid), so coarse tiles are
//! cut from a small level instead of shrinking the whole image every time.
//!
//! Bounded by `render.decoded_cache_bytes` (least recently used entries go first; an image larger than
//! the budget is decoded, used and dropped). Concurrent renders of one uncached source decode it once:
//! the others wait for that decode.

use crate::error::{Error, Result};
use image::DynamicImage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One decoded source and the halvings built so far (level k is 1/2^k of the full size).
pub struct Decoded {
    levels: Mutex<Vec<Arc<DynamicImage>>>,
    bytes: u64,
}

impl Decoded {
    fn new(img: DynamicImage) -> Decoded {
        // Budget for the whole pyramid up front: 1 + 1/4 + 1/16 + ... < 4/3 of level 0.
        let bytes = img.as_bytes().len() as u64 * 4 / 3;
        Decoded {
            levels: Mutex::new(vec![Arc::new(img)]),
            bytes,
        }
    }

    /// Level `k`, building the missing halvings.
    pub fn level(&self, k: usize) -> Arc<DynamicImage> {
        // A poisoned lock only means a halving panicked before its push: the levels present are whole.
        let mut levels = self
            .levels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while levels.len() <= k {
            let Some(last) = levels.last().cloned() else {
                break;
            };
            levels.push(Arc::new(halve(&last)));
        }
        let i = k.min(levels.len().saturating_sub(1));
        Arc::clone(&levels[i])
    }
}

/// Half the size (rounded up) by averaging 2x2 blocks. Written out rather than using the image crate's
/// resize, whose f32 intermediate for a 12000 px source costs over a gigabyte; this one allocates only
/// the output. Works on the 8-bit layouts the decoder produces.
fn halve(img: &DynamicImage) -> DynamicImage {
    fn go(src: &[u8], w: usize, h: usize, c: usize) -> (Vec<u8>, usize, usize) {
        let (ow, oh) = (w.div_ceil(2).max(1), h.div_ceil(2).max(1));
        let mut out = vec![0u8; ow * oh * c];
        for oy in 0..oh {
            let (y0, y1) = (2 * oy, (2 * oy + 1).min(h - 1));
            for ox in 0..ow {
                let (x0, x1) = (2 * ox, (2 * ox + 1).min(w - 1));
                for ch in 0..c {
                    let px = |x: usize, y: usize| u32::from(src[(y * w + x) * c + ch]);
                    let sum = px(x0, y0) + px(x1, y0) + px(x0, y1) + px(x1, y1);
                    out[(oy * ow + ox) * c + ch] = ((sum + 2) / 4) as u8;
                }
            }
        }
        (out, ow, oh)
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let half = |c: usize| go(img.as_bytes(), w, h, c);
    let fallback = || {
        img.resize_exact(
            img.width().div_ceil(2),
            img.height().div_ceil(2),
            image::imageops::FilterType::Triangle,
        )
    };
    match img {
        DynamicImage::ImageLuma8(_) => {
            let (d, ow, oh) = half(1);
            image::GrayImage::from_raw(ow as u32, oh as u32, d)
                .map_or_else(fallback, DynamicImage::ImageLuma8)
        }
        DynamicImage::ImageLumaA8(_) => {
            let (d, ow, oh) = half(2);
            image::GrayAlphaImage::from_raw(ow as u32, oh as u32, d)
                .map_or_else(fallback, DynamicImage::ImageLumaA8)
        }
        DynamicImage::ImageRgb8(_) => {
            let (d, ow, oh) = half(3);
            image::RgbImage::from_raw(ow as u32, oh as u32, d)
                .map_or_else(fallback, DynamicImage::ImageRgb8)
        }
        DynamicImage::ImageRgba8(_) => {
            let (d, ow, oh) = half(4);
            image::RgbaImage::from_raw(ow as u32, oh as u32, d)
                .map_or_else(fallback, DynamicImage::ImageRgba8)
        }
        _ => fallback(),
    }
}

type Slot = Arc<OnceLock<std::result::Result<Arc<Decoded>, Arc<Error>>>>;

struct Entry {
    slot: Slot,
    last_used: u64,
    bytes: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    bytes: u64,
    tick: u64,
}

/// The cache of decoded sources.
pub struct DecodedCache {
    budget: u64,
    inner: Mutex<Inner>,
}

impl DecodedCache {
    /// A cache holding at most `budget` bytes of pixels (0 disables it).
    pub fn new(budget: u64) -> DecodedCache {
        DecodedCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Bytes of pixels held.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().map(|i| i.bytes).unwrap_or(0)
    }

    /// The decoded source named `key` (path and fingerprint), decoding it with `decode` if needed.
    pub fn get_or_decode(
        &self,
        key: &str,
        decode: impl FnOnce() -> Result<DynamicImage>,
    ) -> Result<Arc<Decoded>> {
        if self.budget == 0 {
            return decode().map(|img| Arc::new(Decoded::new(img)));
        }
        let slot: Slot = {
            let mut inner = self
                .inner
                .lock()
                .map_err(|_| Error::Internal("decoded cache poisoned".into()))?;
            inner.tick += 1;
            let tick = inner.tick;
            let entry = inner.map.entry(key.to_owned()).or_insert_with(|| Entry {
                slot: Arc::new(OnceLock::new()),
                last_used: tick,
                bytes: 0,
            });
            entry.last_used = tick;
            Arc::clone(&entry.slot)
        };
        // One decode per key: concurrent callers block here until the first one finishes.
        let result = slot
            .get_or_init(|| {
                decode()
                    .map(|img| Arc::new(Decoded::new(img)))
                    .map_err(Arc::new)
            })
            .clone();
        if let Ok(mut inner) = self.inner.lock() {
            match &result {
                Ok(decoded) => {
                    let newly_accounted = match inner.map.get_mut(key) {
                        Some(e) if e.bytes == 0 && Arc::ptr_eq(&e.slot, &slot) => {
                            e.bytes = decoded.bytes;
                            true
                        }
                        _ => false,
                    };
                    if newly_accounted {
                        inner.bytes += decoded.bytes;
                    }
                    self.evict(&mut inner);
                }
                // Failures are not cached: the file may be fixed or replaced.
                Err(_) => {
                    if inner
                        .map
                        .get(key)
                        .is_some_and(|e| Arc::ptr_eq(&e.slot, &slot))
                    {
                        inner.map.remove(key);
                    }
                }
            }
        }
        result.map_err(Error::Shared)
    }

    fn evict(&self, inner: &mut Inner) {
        while inner.bytes > self.budget {
            let Some(oldest) = inner
                .map
                .iter()
                .filter(|(_, e)| e.bytes > 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.bytes = inner.bytes.saturating_sub(e.bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn img(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([9, 9, 9])))
    }

    #[test]
    fn decodes_once_evicts_lru_and_builds_levels() {
        let cache = Arc::new(DecodedCache::new(100 * 100 * 3 * 4 / 3 * 2));
        let decodes = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, d) = (Arc::clone(&cache), Arc::clone(&decodes));
                std::thread::spawn(move || {
                    c.get_or_decode("a", || {
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
            decodes.load(Ordering::SeqCst),
            1,
            "one decode for eight concurrent renders"
        );
        let a = cache
            .get_or_decode("a", || Ok(img(1, 1)))
            .map_err(|e| e.to_string());
        assert_eq!(a.as_ref().map(|d| d.level(2).width()).ok(), Some(25));
        assert_eq!(
            a.as_ref().map(|d| d.level(40).width()).ok(),
            Some(1),
            "levels stop at one pixel"
        );
        let _ = cache.get_or_decode("b", || Ok(img(100, 100)));
        let _ = cache.get_or_decode("c", || Ok(img(100, 100)));
        assert!(cache.bytes() <= 2 * 100 * 100 * 3 * 4 / 3);
        assert!(cache
            .get_or_decode("bad", || Err(Error::Undecodable("x".into())))
            .is_err());
        assert!(
            cache.get_or_decode("bad", || Ok(img(2, 2))).is_ok(),
            "failures are retried"
        );
    }
}
