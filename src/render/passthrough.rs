//! Whether a stored JPEG tile is sent as it is (`render.tile_passthrough`). Pure: reads the tile's
//! markers, never its pixels.
//!
//! Passing a tile through costs nothing and loses nothing, but the tile may be far heavier than
//! iiifd's own encode of the same pixels: vips writes pyramid tiles at Q90 with full-resolution
//! chroma (4:4:4), about 2.6x the bytes of a Q85 4:2:0 re-encode, and every viewer downloads them.
//! The rule under `auto`: a tile passes when it is no finer than what iiifd would send, that is
//! its estimated quality is at most `jpeg_quality` + [`QUALITY_SLACK`] and its chroma is
//! subsampled in both directions (4:2:0, as iiifd's encoder writes) or it has no chroma at all
//! (gray). Anything else is re-encoded once and stored, in the DCT domain
//! (`render/decode/libjpeg/transcode.rs`: no pixel is formed).
//!
//! The quality is estimated as libjpeg's `cjpeg -quality` that best reproduces the tile's
//! luminance quantisation table (the IJG scaling of the standard table, Annex K of the JPEG
//! standard): exact for files written by libjpeg, libjpeg-turbo, mozjpeg (without its own tables),
//! vips and ImageMagick, and a fair reading of finer or coarser tables written by others.

use crate::config::TilePassthrough;

/// How many quality steps finer than ours a passed tile may be: a re-encode that saves under
/// about a tenth of the bytes is not worth its generation loss and its render.
pub(crate) const QUALITY_SLACK: u8 = 5;

/// What a JPEG's headers say about its coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Coding {
    /// Estimated IJG quality, 1-100.
    pub(crate) quality: u8,
    /// Components in the frame (1 gray, 3 colour, 4 CMYK).
    pub(crate) components: u8,
    /// Whether the chroma is stored at half resolution in both directions (4:2:0 or coarser).
    pub(crate) chroma_halved: bool,
}

/// The Annex K luminance quantisation table, in the zigzag order tables are stored in.
const STD_LUMA_ZIGZAG: [u16; 64] = [
    16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49, 35, 37,
    29, 40, 58, 51, 61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109, 81,
    87, 95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99,
];

/// The luminance table libjpeg writes at `quality` (baseline: entries clamped to 1-255).
pub(crate) fn ijg_table(quality: u8) -> [u16; 64] {
    let q = u32::from(quality.clamp(1, 100));
    let scale = if q < 50 { 5000 / q } else { 200 - 2 * q };
    STD_LUMA_ZIGZAG.map(|t| ((u32::from(t) * scale + 50) / 100).clamp(1, 255) as u16)
}

/// The IJG quality whose table is nearest `table` (sum of absolute differences; ties to the lower
/// quality, which passes fewer tiles).
pub(crate) fn estimate_quality(table: &[u16; 64]) -> u8 {
    (1..=100u8)
        .min_by_key(|&q| {
            ijg_table(q)
                .iter()
                .zip(table)
                .map(|(a, b)| u32::from(a.abs_diff(*b)))
                .sum::<u32>()
        })
        .unwrap_or(100)
}

/// Read the coding of a complete JPEG stream (a TIFF tile with its tables spliced in) from its
/// markers up to the first scan. `None` when they cannot be read.
pub(crate) fn coding_of(jpeg: &[u8]) -> Option<Coding> {
    let mut tables: [Option<[u16; 64]>; 4] = [None; 4];
    let mut frame: Option<(u8, bool, usize)> = None;
    let mut at = 2;
    if jpeg.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    loop {
        // Fill bytes (0xFF runs) may precede a marker.
        while *jpeg.get(at)? == 0xFF && *jpeg.get(at + 1)? == 0xFF {
            at += 1;
        }
        if *jpeg.get(at)? != 0xFF {
            return None;
        }
        let marker = *jpeg.get(at + 1)?;
        if marker == 0xD8 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            at += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([*jpeg.get(at + 2)?, *jpeg.get(at + 3)?]));
        let body = jpeg.get(at + 4..(at + 2 + len).max(at + 4))?;
        match marker {
            // DQT: one or more tables, each a precision/id byte and 64 entries.
            0xDB => {
                let mut i = 0;
                while i < body.len() {
                    let (precision, id) = (body[i] >> 4, usize::from(body[i] & 0x0F));
                    let width = if precision == 0 { 1 } else { 2 };
                    let entries = body.get(i + 1..i + 1 + 64 * width)?;
                    let mut t = [0u16; 64];
                    for (k, v) in t.iter_mut().enumerate() {
                        *v = if width == 1 {
                            u16::from(entries[k])
                        } else {
                            u16::from_be_bytes([entries[2 * k], entries[2 * k + 1]])
                        };
                    }
                    *tables.get_mut(id)? = Some(t);
                    i += 1 + 64 * width;
                }
            }
            // SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let n = *body.get(5)?;
                let component = |c: usize| body.get(6 + 3 * c..9 + 3 * c);
                let first = component(0)?;
                let (h0, v0) = (first[1] >> 4, first[1] & 0x0F);
                let mut halved = n >= 3;
                for c in 1..usize::from(n) {
                    let comp = component(c)?;
                    let (h, v) = (comp[1] >> 4, comp[1] & 0x0F);
                    if c < 3 && (h * 2 > h0 || v * 2 > v0) {
                        halved = false;
                    }
                }
                frame = Some((n, halved, usize::from(first[2] & 0x03)));
            }
            // Start of scan: every table the frame needs has been seen.
            0xDA => break,
            0xD9 => return None,
            _ => {}
        }
        at += 2 + len;
    }
    let (components, chroma_halved, luma_table) = frame?;
    let table = tables.get(luma_table).copied().flatten()?;
    Some(Coding {
        quality: estimate_quality(&table),
        components,
        chroma_halved,
    })
}

/// Whether a stored tile of this coding is sent as it is, under `mode`, by a server that encodes
/// JPEG at `jpeg_quality` 4:2:0.
pub(crate) fn passes(mode: TilePassthrough, coding: Option<Coding>, jpeg_quality: u8) -> bool {
    match mode {
        TilePassthrough::Always => true,
        TilePassthrough::Never => false,
        TilePassthrough::Auto => coding.is_some_and(|c| {
            (c.components == 1 || (c.components == 3 && c.chroma_halved))
                && c.quality <= jpeg_quality.saturating_add(QUALITY_SLACK)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A JPEG header (SOI, DQT, SOF0, SOS) with luminance table `luma` and the given sampling.
    fn header(luma: &[u16; 64], components: &[(u8, u8)]) -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xDB, 0, 67, 0x00];
        j.extend(luma.iter().map(|&v| v.min(255) as u8));
        let n = components.len() as u8;
        let len = 8 + 3 * u16::from(n);
        j.extend([0xFF, 0xC0]);
        j.extend(len.to_be_bytes());
        j.extend([8, 0, 16, 0, 16, n]);
        for (i, &(h, v)) in components.iter().enumerate() {
            j.extend([i as u8 + 1, (h << 4) | v, u8::from(i > 0)]);
        }
        j.extend([0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
        j
    }

    #[test]
    fn vips_q90_444_tiles_are_re_encoded_and_q85_420_pass() {
        let q90_444 = header(&ijg_table(90), &[(1, 1), (1, 1), (1, 1)]);
        let c = coding_of(&q90_444).expect("readable");
        assert_eq!((c.quality, c.components, c.chroma_halved), (90, 3, false));
        assert!(!passes(TilePassthrough::Auto, Some(c), 85));
        assert!(passes(TilePassthrough::Always, Some(c), 85));
        let q85_420 = header(&ijg_table(85), &[(2, 2), (1, 1), (1, 1)]);
        assert!(passes(TilePassthrough::Auto, coding_of(&q85_420), 85));
        assert!(!passes(TilePassthrough::Never, coding_of(&q85_420), 85));
        // 4:2:2 keeps full vertical chroma: heavier than ours.
        let q75_422 = header(&ijg_table(75), &[(2, 1), (1, 1), (1, 1)]);
        assert!(!passes(TilePassthrough::Auto, coding_of(&q75_422), 85));
        // Gray at Q90 passes under slack 5; at Q95 it does not.
        let gray = |q| header(&ijg_table(q), &[(1, 1)]);
        assert!(passes(TilePassthrough::Auto, coding_of(&gray(90)), 85));
        assert!(!passes(TilePassthrough::Auto, coding_of(&gray(95)), 85));
        // Unreadable headers are re-encoded under auto.
        assert!(!passes(
            TilePassthrough::Auto,
            coding_of(b"\xFF\xD8\xFF"),
            85
        ));
    }

    proptest! {
        /// Every IJG quality is recognised from its own table, and nearby tables stay nearby.
        #[test]
        fn ijg_qualities_are_recovered(q in 1u8..=100, jitter in proptest::collection::vec(-2i32..=2, 64)) {
            let t = ijg_table(q);
            prop_assert_eq!(ijg_table(estimate_quality(&t)), t);
            let near: [u16; 64] = std::array::from_fn(|i| (i32::from(t[i]) + jitter[i]).clamp(1, 255) as u16);
            let e = estimate_quality(&near);
            prop_assert!(q.abs_diff(e) <= 3 || !(20..=97).contains(&q), "{} read as {}", q, e);
        }

        /// Any bytes: an answer or `None`, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut j = vec![0xFF, 0xD8];
            j.extend(bytes);
            let _ = coding_of(&j);
        }
    }
}
