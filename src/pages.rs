//! Pages of multi-page TIFFs as identifiers of their own: `book;3` is page 3 of `book` (the
//! delimiter is `source.page_delimiter`, as iipsrv's `IIIF_DELIMITER`). Each page has its own
//! info.json, derivatives and caches; the Image API has no page count, so a Presentation manifest
//! lists the pages as canvases (README).
//!
//! A decorator over any [`Backend`]: an identifier the backend finds is served as it is (a file
//! literally named `a;2.tif` wins); one it does not find, ending in the delimiter and a page number,
//! is looked up as the whole object and its page. A page reads as a TIFF of that page alone: the
//! header is pointed at the page's directory and the chain ends after the page's reductions
//! ([`crate::formats::tiff::pages`]), so every decoder and the probe see one image, unchanged.

use crate::formats::tiff;
use crate::source::{
    Backend, Fingerprint, Object, ObjectReader, Page, SourceCounters, SourceError,
};
use std::io;
use std::sync::Arc;

/// A backend whose objects' pages are objects too.
pub(crate) struct Paged {
    inner: Arc<dyn Backend>,
    delimiter: char,
}

impl Paged {
    /// `inner` with page identifiers, or `inner` itself when `delimiter` is `None`.
    pub(crate) fn wrap(inner: Arc<dyn Backend>, delimiter: Option<char>) -> Arc<dyn Backend> {
        match delimiter {
            Some(delimiter) => Arc::new(Paged { inner, delimiter }),
            None => inner,
        }
    }

    /// `identifier` as (the whole object's identifier, page number) when it ends in the
    /// delimiter and a page number (1 or more, digits only).
    fn split<'a>(&self, identifier: &'a str) -> Option<(&'a str, u32)> {
        let (whole, n) = identifier.rsplit_once(self.delimiter)?;
        if whole.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok().filter(|&n| n >= 1).map(|n| (whole, n))
    }

    /// Page `number` of `whole`, `NotFound` (for `identifier`) when it has no such page.
    fn page_of(&self, whole: Object, number: u32, identifier: &str) -> Result<Object, SourceError> {
        let reader = self.inner.open(&whole)?;
        let pages = tiff::pages(&*reader)?;
        let found = (number as usize)
            .checked_sub(1)
            .and_then(|i| pages.into_iter().nth(i));
        let Some(patches) = found else {
            return Err(SourceError::NotFound(identifier.to_owned()));
        };
        Ok(Object {
            fingerprint: Fingerprint::new(format!("{} page {number}", whole.fingerprint.as_str())),
            page: Some(Page {
                number,
                whole: whole.fingerprint,
                patches,
            }),
            ..whole
        })
    }

    /// The whole object a page object is part of, as its backend knows it.
    fn whole(object: &Object, page: &Page) -> Object {
        Object {
            fingerprint: page.whole.clone(),
            page: None,
            ..object.clone()
        }
    }
}

impl Backend for Paged {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn locate(&self, identifier: &str) -> Result<Object, SourceError> {
        match self.inner.locate(identifier) {
            Err(SourceError::NotFound(_)) => {
                let Some((whole, number)) = self.split(identifier) else {
                    return Err(SourceError::NotFound(identifier.to_owned()));
                };
                let object = self.inner.locate(whole).map_err(|e| match e {
                    SourceError::NotFound(_) => SourceError::NotFound(identifier.to_owned()),
                    e => e,
                })?;
                self.page_of(object, number, identifier)
            }
            found => found,
        }
    }

    fn refresh(&self, object: &Object) -> Result<Object, SourceError> {
        match &object.page {
            None => self.inner.refresh(object),
            Some(page) => {
                let whole = self.inner.refresh(&Paged::whole(object, page))?;
                if whole.fingerprint == page.whole {
                    return Ok(object.clone());
                }
                // Changed: the page may be gone or elsewhere in the file.
                self.page_of(whole, page.number, &object.name)
            }
        }
    }

    fn refresh_now(&self, object: &Object) -> Option<Result<Object, SourceError>> {
        match &object.page {
            None => self.inner.refresh_now(object),
            Some(page) => match self.inner.refresh_now(&Paged::whole(object, page))? {
                Ok(whole) if whole.fingerprint == page.whole => Some(Ok(object.clone())),
                // Changed or failed: the blocking way finds the page again.
                _ => None,
            },
        }
    }

    fn outage(&self) -> bool {
        self.inner.outage()
    }

    fn forget(&self, identifier: &str) {
        self.inner.forget(identifier);
        if let Some((whole, _)) = self.split(identifier) {
            self.inner.forget(whole);
        }
    }

    fn list(&self) -> Result<Vec<String>, SourceError> {
        self.inner.list()
    }

    fn open(&self, object: &Object) -> Result<Arc<dyn ObjectReader>, SourceError> {
        let Some(page) = &object.page else {
            return self.inner.open(object);
        };
        let reader = self.inner.open(&Paged::whole(object, page))?;
        Ok(Arc::new(PageReader {
            reader,
            patches: page.patches.clone(),
        }))
    }

    fn sidecar(&self, identifier: &str) -> Result<Option<Vec<u8>>, SourceError> {
        self.inner.sidecar(identifier)
    }

    fn forget_copies(&self) -> io::Result<()> {
        self.inner.forget_copies()
    }

    fn counters(&self) -> Option<Arc<SourceCounters>> {
        self.inner.counters()
    }

    fn caches(&self) -> Vec<crate::bounded::CacheReport> {
        self.inner.caches()
    }
}

/// A whole TIFF read as one of its pages: the whole file's bytes with the page's patches laid
/// over them.
struct PageReader {
    reader: Arc<dyn ObjectReader>,
    patches: tiff::Patches,
}

impl ObjectReader for PageReader {
    fn size(&self) -> u64 {
        self.reader.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.reader.read_at(buf, offset)?;
        let end = offset + n as u64;
        for (at, bytes) in &self.patches {
            let patch_end = at + bytes.len() as u64;
            if *at >= end || patch_end <= offset {
                continue;
            }
            let from = at.max(&offset);
            let to = patch_end.min(end);
            let src = &bytes[(from - at) as usize..(to - at) as usize];
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::memory::{bytes_reader, MemoryBackend};

    /// A TIFF of `pages` gray strips pages, page `i` filled with `i * 40` and `10 + i` pixels wide.
    fn multipage(pages: u8) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc =
                ::tiff::encoder::TiffEncoder::new(std::io::Cursor::new(&mut out)).expect("tiff");
            for i in 0..pages {
                let w = 10 + u32::from(i);
                let px = vec![i * 40; (w * 8) as usize];
                enc.write_image::<::tiff::encoder::colortype::Gray8>(w, 8, &px)
                    .expect("page");
            }
        }
        out
    }

    #[test]
    fn each_page_reads_as_a_tiff_of_that_page_alone() {
        let file = multipage(5);
        let pages = tiff::pages(&*bytes_reader(file.clone())).expect("reads");
        assert_eq!(pages.len(), 5);
        for (i, patches) in pages.into_iter().enumerate() {
            let page = PageReader {
                reader: bytes_reader(file.clone()),
                patches,
            };
            let mut bytes = vec![0; file.len()];
            page.read_at(&mut bytes, 0).expect("reads");
            // Read in odd pieces too: the patches must land the same.
            let mut pieces = vec![0; file.len()];
            for at in (0..file.len()).step_by(3) {
                let end = (at + 3).min(file.len());
                page.read_at(&mut pieces[at..end], at as u64)
                    .expect("reads");
            }
            assert_eq!(bytes, pieces);
            let img = image::load_from_memory(&bytes).expect("decodes").to_luma8();
            assert_eq!(img.dimensions(), (10 + i as u32, 8));
            assert!(
                img.pixels().all(|p| p.0[0] == i as u8 * 40),
                "page {}",
                i + 1
            );
            // One image: the chain ends after the page.
            let mut dec =
                ::tiff::decoder::Decoder::new(std::io::Cursor::new(&bytes)).expect("tiff");
            assert!(!dec.more_images(), "page {} is alone", i + 1);
            assert!(dec.next_image().is_err());
        }
    }

    #[test]
    fn reductions_belong_to_the_page_before_them() {
        // Page 1 (40x30) with a reduction (20x15, NewSubfileType 1), then page 2 (50x10): two pages,
        // and page 1 read alone still has its reduction chained after it.
        let mut file = Vec::new();
        {
            let mut enc =
                ::tiff::encoder::TiffEncoder::new(std::io::Cursor::new(&mut file)).expect("tiff");
            for (w, h, reduced) in [(40u32, 30u32, false), (20, 15, true), (50, 10, false)] {
                let mut image = enc
                    .new_image::<::tiff::encoder::colortype::Gray8>(w, h)
                    .expect("image");
                if reduced {
                    image
                        .encoder()
                        .write_tag(::tiff::tags::Tag::NewSubfileType, 1u32)
                        .expect("tag");
                }
                image
                    .write_data(&vec![if reduced { 9 } else { 200 }; (w * h) as usize])
                    .expect("data");
            }
        }
        let pages = tiff::pages(&*bytes_reader(file.clone())).expect("reads");
        assert_eq!(pages.len(), 2);
        let read = |patches: tiff::Patches| {
            let page = PageReader {
                reader: bytes_reader(file.clone()),
                patches,
            };
            let mut bytes = vec![0; file.len()];
            page.read_at(&mut bytes, 0).expect("reads");
            let mut dec = ::tiff::decoder::Decoder::new(std::io::Cursor::new(bytes)).expect("tiff");
            let mut sizes = vec![dec.dimensions().expect("size")];
            while dec.more_images() {
                dec.next_image().expect("next");
                sizes.push(dec.dimensions().expect("size"));
            }
            sizes
        };
        let mut it = pages.into_iter();
        let (first, second) = (it.next().expect("page 1"), it.next().expect("page 2"));
        assert_eq!(read(first), vec![(40, 30), (20, 15)]);
        assert_eq!(read(second), vec![(50, 10)]);
    }

    #[test]
    fn page_identifiers_resolve_and_the_whole_name_wins() {
        let memory = Arc::new(MemoryBackend::new());
        memory.insert("book.tif", multipage(5));
        memory.insert("odd;2.tif", multipage(1));
        memory.insert("photo.png", {
            let mut png = Vec::new();
            image::DynamicImage::new_rgb8(4, 4)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .expect("png");
            png
        });
        let paged = Paged::wrap(memory, Some(';'));
        let three = paged.locate("book;3").expect("page 3");
        assert_eq!(three.page.as_ref().map(|p| p.number), Some(3));
        let whole = paged.locate("book").expect("book");
        assert!(whole.page.is_none());
        assert_ne!(three.fingerprint, whole.fingerprint);
        assert_eq!(
            three.page.as_ref().map(|p| &p.whole),
            Some(&whole.fingerprint)
        );
        let img = {
            let r = paged.open(&three).expect("opens");
            let mut bytes = vec![0; r.size() as usize];
            r.read_at(&mut bytes, 0).expect("reads");
            image::load_from_memory(&bytes).expect("decodes").to_luma8()
        };
        assert_eq!(img.dimensions(), (12, 8));
        assert_eq!(paged.refresh(&three).expect("same"), three);
        for missing in [
            "book;6",
            "book;0",
            "book;",
            "book;x",
            "nothing;1",
            "photo;2",
        ] {
            assert!(
                matches!(paged.locate(missing), Err(SourceError::NotFound(id)) if id == missing),
                "{missing}"
            );
        }
        // A file named with the delimiter is itself, not page 2 of "odd".
        assert!(paged.locate("odd;2").expect("found").page.is_none());
    }
}
