//! EXIF orientation: cameras and phone scans store pixels as the sensor saw them and say in EXIF
//! how to turn them. IIIF sizes and regions are in the turned (displayed) image, so the probe reports
//! the displayed size and the renderer maps regions back to stored pixels before decoding.
//!
//! Pure: parsing works on bytes, geometry on rectangles; only [`Orientation::apply`] touches pixels.

use crate::iiif::canonical::Rect;
use image::DynamicImage;

/// EXIF orientation 1-8 (1 = stored as displayed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Orientation(u8);

impl Orientation {
    /// Stored as displayed.
    pub(crate) const NORMAL: Orientation = Orientation(1);

    /// From the EXIF value; anything outside 1-8 is treated as 1, as browsers do.
    pub(crate) fn from_exif(v: u16) -> Orientation {
        match v {
            1..=8 => Orientation(v as u8),
            _ => Orientation::NORMAL,
        }
    }

    /// The EXIF value.
    #[cfg(test)]
    pub(crate) fn exif(self) -> u8 {
        self.0
    }

    /// Orientations 5-8 turn the image a quarter: width and height swap.
    pub(crate) fn swaps_axes(self) -> bool {
        self.0 >= 5
    }

    /// The displayed size of a stored `w` x `h` image.
    pub(crate) fn display_size(self, w: u32, h: u32) -> (u32, u32) {
        if self.swaps_axes() {
            (h, w)
        } else {
            (w, h)
        }
    }

    /// The stored pixel shown at displayed pixel (`u`, `v`) of a `dw` x `dh` display.
    fn stored_pixel(self, u: u32, v: u32, dw: u32, dh: u32) -> (u32, u32) {
        let (ru, rv) = (dw - 1 - u, dh - 1 - v);
        match self.0 {
            2 => (ru, v),
            3 => (ru, rv),
            4 => (u, rv),
            5 => (v, u),
            6 => (v, ru),
            7 => (rv, ru),
            8 => (rv, u),
            _ => (u, v),
        }
    }

    /// The stored rectangle whose pixels make up displayed rectangle `r` of a `dw` x `dh` display.
    /// Every orientation maps rectangles to rectangles, so two opposite corners are enough.
    pub(crate) fn stored_rect(self, r: Rect, dw: u32, dh: u32) -> Rect {
        let (x0, y0) = self.stored_pixel(r.x, r.y, dw, dh);
        let (x1, y1) = self.stored_pixel(r.x + r.w - 1, r.y + r.h - 1, dw, dh);
        Rect {
            x: x0.min(x1),
            y: y0.min(y1),
            w: x0.abs_diff(x1) + 1,
            h: y0.abs_diff(y1) + 1,
        }
    }

    /// Turn stored pixels into displayed ones.
    pub(crate) fn apply(self, mut img: DynamicImage) -> DynamicImage {
        if let Some(o) = image::metadata::Orientation::from_exif(self.0) {
            img.apply_orientation(o);
        }
        img
    }
}

/// The orientation in a JPEG's EXIF (APP1) segment; [`Orientation::NORMAL`] when there is none or
/// it cannot be read. Scans the markers before the first scan only.
pub(crate) fn jpeg_orientation(data: &[u8]) -> Orientation {
    let mut i = 2usize;
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Orientation::NORMAL;
    }
    while let (Some(&0xFF), Some(&marker)) = (data.get(i), data.get(i + 1)) {
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // start of scan / end of image: no EXIF before the pixels
        }
        let Some(len) = be16(data, i + 2) else { break };
        let body = data.get(i + 4..i + 2 + usize::from(len));
        if marker == 0xE1 {
            if let Some(o) = body
                .and_then(|b| b.strip_prefix(b"Exif\0\0"))
                .and_then(tiff_orientation)
            {
                return o;
            }
        }
        i += 2 + usize::from(len);
    }
    Orientation::NORMAL
}

/// The orientation in an EXIF block as a PNG `eXIf` or WebP `EXIF` chunk holds it: the TIFF
/// structure, or (as several writers of WebP put it) that structure behind JPEG's `Exif\0\0`
/// prefix, which Pillow and browsers accept too.
pub(crate) fn exif_orientation(exif: &[u8]) -> Option<Orientation> {
    tiff_orientation(exif.strip_prefix(b"Exif\0\0").unwrap_or(exif))
}

/// Tag 0x0112 of IFD0 of the TIFF structure inside an EXIF segment.
fn tiff_orientation(t: &[u8]) -> Option<Orientation> {
    let le = match t.get(..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |at: usize| {
        let b = t.get(at..at + 2)?;
        Some(if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |at: usize| {
        let b = t.get(at..at + 4)?;
        Some(if le {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?);
    (0..count.min(512)).find_map(|n| {
        let e = ifd + 2 + n * 12;
        (u16_at(e)? == 0x0112 && u16_at(e + 2)? == 3)
            .then(|| u16_at(e + 8).map(Orientation::from_exif))
            .flatten()
    })
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    data.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A JPEG prefix with an EXIF segment carrying orientation `o` in byte order `le`.
    pub(crate) fn exif_jpeg_prefix(o: u16, le: bool) -> Vec<u8> {
        let mut tiff = Vec::new();
        let w16 = |v: u16, out: &mut Vec<u8>| {
            out.extend(if le { v.to_le_bytes() } else { v.to_be_bytes() })
        };
        let w32 = |v: u32, out: &mut Vec<u8>| {
            out.extend(if le { v.to_le_bytes() } else { v.to_be_bytes() })
        };
        tiff.extend(if le { b"II" } else { b"MM" });
        w16(42, &mut tiff);
        w32(8, &mut tiff);
        w16(1, &mut tiff);
        w16(0x0112, &mut tiff);
        w16(3, &mut tiff);
        w32(1, &mut tiff);
        w16(o, &mut tiff);
        w16(0, &mut tiff);
        w32(0, &mut tiff);
        let mut seg = b"Exif\0\0".to_vec();
        seg.extend(tiff);
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
        out.extend(((seg.len() + 2) as u16).to_be_bytes());
        out.extend(seg);
        out.extend([0xFF, 0xDA, 0, 2]);
        out
    }

    #[test]
    fn reads_exif_orientation_both_byte_orders() {
        for o in 1..=8 {
            assert_eq!(jpeg_orientation(&exif_jpeg_prefix(o, true)).exif(), o as u8);
            assert_eq!(
                jpeg_orientation(&exif_jpeg_prefix(o, false)).exif(),
                o as u8
            );
        }
        assert_eq!(
            jpeg_orientation(&exif_jpeg_prefix(9, true)),
            Orientation::NORMAL
        );
        assert_eq!(jpeg_orientation(b"\xff\xd8"), Orientation::NORMAL);
        assert_eq!(jpeg_orientation(b""), Orientation::NORMAL);
        let mut cut = exif_jpeg_prefix(6, true);
        cut.truncate(20);
        assert_eq!(jpeg_orientation(&cut), Orientation::NORMAL);
    }

    proptest! {
        /// Cropping the displayed image equals orienting the crop of `stored_rect`, for every
        /// orientation: the region mapping agrees with the pixel transform.
        #[test]
        fn stored_rect_agrees_with_pixels(o in 1u16..=8, sw in 1u32..12, sh in 1u32..12,
                                          a in 0u32..100, b in 0u32..100, c in 0u32..100, d in 0u32..100) {
            let stored = DynamicImage::ImageRgb8(image::RgbImage::from_fn(sw, sh, |x, y| {
                image::Rgb([x as u8, y as u8, 7])
            }));
            let o = Orientation::from_exif(o);
            let shown = o.apply(stored.clone());
            let (dw, dh) = o.display_size(sw, sh);
            prop_assert_eq!((shown.width(), shown.height()), (dw, dh));
            let (x, y) = (a % dw, b % dh);
            let r = Rect { x, y, w: 1 + c % (dw - x), h: 1 + d % (dh - y) };
            let s = o.stored_rect(r, dw, dh);
            let want = shown.crop_imm(r.x, r.y, r.w, r.h).to_rgb8();
            let got = o.apply(stored.crop_imm(s.x, s.y, s.w, s.h)).to_rgb8();
            prop_assert_eq!(want, got);
        }
    }
}
