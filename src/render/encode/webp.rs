//! WebP output, lossy (libwebp), like the JPEG it usually replaces: lossless WebP of a
//! photographic tile is several times larger.

use crate::render::{RenderError, Result};
use image::DynamicImage;

/// Encode as lossy WebP at `quality` (1-100), keeping alpha when there is any, with `icc` in an
/// `ICCP` chunk when given.
pub(crate) fn encode(img: &DynamicImage, quality: u8, icc: Option<&[u8]>) -> Result<Vec<u8>> {
    let q = f32::from(quality);
    let (w, h) = (img.width(), img.height());
    let encoded = if img.color().has_alpha() {
        let px = img.to_rgba8();
        webp::Encoder::from_rgba(px.as_raw(), w, h).encode_simple(false, q)
    } else {
        let px = img.to_rgb8();
        webp::Encoder::from_rgb(px.as_raw(), w, h).encode_simple(false, q)
    };
    let bytes = encoded
        .map(|m| m.to_vec())
        .map_err(|e| RenderError::Encode {
            format: "webp",
            reason: format!("{e:?}"),
        })?;
    match icc {
        Some(icc) => with_profile(&bytes, icc, w, h).ok_or_else(|| RenderError::Encode {
            format: "webp",
            reason: "libwebp wrote a container this encoder cannot extend".into(),
        }),
        None => Ok(bytes),
    }
}

fn chunk(fourcc: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 9);
    v.extend_from_slice(fourcc);
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    if body.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// `webp` (as libwebp writes it: `VP8 `, or `VP8X` then `ALPH` and `VP8 `) with an `ICCP` chunk after
/// the `VP8X` header, adding that header when the file is a simple one (WebP container spec: the
/// profile follows `VP8X`, whose flag bit 5 announces it).
fn with_profile(webp: &[u8], icc: &[u8], w: u32, h: u32) -> Option<Vec<u8>> {
    if webp.len() < 20 || &webp[0..4] != b"RIFF" || &webp[8..12] != b"WEBP" {
        return None;
    }
    let chunks = &webp[12..];
    let mut body = b"WEBP".to_vec();
    if &chunks[0..4] == b"VP8X" {
        let len = u32::from_le_bytes(chunks[4..8].try_into().ok()?) as usize;
        let end = 8 + len + len % 2;
        let mut vp8x = chunks.get(..end)?.to_vec();
        vp8x[8] |= 0x20;
        body.extend(vp8x);
        body.extend(chunk(b"ICCP", icc));
        body.extend_from_slice(chunks.get(end..)?);
    } else {
        let mut header = [0u8; 10];
        header[0] = 0x20;
        header[4..7].copy_from_slice(&(w.checked_sub(1)?).to_le_bytes()[..3]);
        header[7..10].copy_from_slice(&(h.checked_sub(1)?).to_le_bytes()[..3]);
        body.extend(chunk(b"VP8X", &header));
        body.extend(chunk(b"ICCP", icc));
        body.extend_from_slice(chunks);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&u32::try_from(body.len()).ok()?.to_le_bytes());
    out.extend(body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageDecoder;

    #[test]
    fn profile_is_embedded_with_and_without_alpha() {
        let icc = (0..=255u8).cycle().take(601).collect::<Vec<u8>>();
        let rgb = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            17,
            9,
            image::Rgb([200, 30, 40]),
        ));
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            17,
            9,
            image::Rgba([200, 30, 40, 100]),
        ));
        for img in [rgb, rgba] {
            let bytes = encode(&img, 80, Some(&icc)).expect("encodes");
            let mut dec = image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(&bytes))
                .expect("parses");
            assert_eq!(dec.icc_profile().expect("reads"), Some(icc.clone()));
            let back = image::load_from_memory(&bytes).expect("decodes");
            assert_eq!((back.width(), back.height()), (17, 9));
            assert_eq!(back.color().has_alpha(), img.color().has_alpha());
        }
    }
}
