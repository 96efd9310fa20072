//! JPEG: headers, decodes at any DCT scale and over any region, and encodes; the libjpeg calls
//! themselves are in `decode::libjpeg`, the SIMD kernels in `decode::jpeg_simd`.
//!
//! Built with nothing but a Rust toolchain and a C compiler (no cmake, no nasm), at the speed of
//! libjpeg-turbo with its SIMD code. Measured on this project's 2-core machines, Q90 4:2:0
//! photographs and a 256 px tile of a vips pyramidal TIFF (RGB-coded, 4:4:4, Q90):
//!
//! | work                      | libjpeg-turbo 3 + NASM SIMD (before) | libjpeg C | zune-jpeg | this module |
//! |---------------------------|--------|-----------|-----------|--------|
//! | decode 8000x6000 full     | 279 ms | 454-600 ms | 269-324 ms | 238 ms |
//! | decode 4000x3000 full     | 55 ms  | 110-148 ms | 63 ms      | 62 ms  |
//! | decode 4000x3000 at 1/8   | 25 ms  | 26-32 ms   | -          | 26-32 ms |
//! | decode the 256 px tile    | -      | 0.72 ms    | 0.47 ms    | 0.42 ms |
//! | encode 256 px, Q85 4:2:0  | 0.14 ms | 0.83 ms   | -          | 0.40 ms (jpeg-encoder) |
//!
//! - **libjpeg** (libjpeg-turbo 2.1's decoder, as shipped by mozjpeg 4, compiled from C by the
//!   `mozjpeg-sys` crate with the `cc` crate) parses every file and does the entropy decoding (its
//!   Huffman decoder is the fastest available: it is most of a decode's cost), DCT scaling (1/2,
//!   1/4, 1/8 inside the IDCT), cropping (`jpeg_crop_scanline`, `jpeg_skip_scanlines`), CMYK,
//!   arithmetic coding and odd colour transforms, and shows damaged files as browsers do.
//! - Its SIMD code is NASM assembly, compiled in only when `nasm` is on `PATH` at build time
//!   ([`simd`] tells). Without it, our AVX2 kernels (`jpeg_simd.rs`, bit-exact with the C they
//!   replace) take libjpeg's inverse DCT and colour conversion through two method hooks
//!   (`jpeg_hooks.c`), and whole images at full size skip libjpeg's C upsampler: its raw output is
//!   upsampled (libjpeg's own triangle filter, exactly) and converted here.
//! - **jpeg-encoder** (pure Rust, AVX2 chosen at run time) encodes every output, so a derivative's
//!   bytes do not depend on the tools the server was built with.
//!
//! Scales are powers of two: `scale_log2` 0..=3 means 1, 1/2, 1/4, 1/8. A scaled dimension is
//! `ceil(d / 2^k)`, the same rounding as the renderer's pyramid, so a DCT-scaled decode and a halving
//! of the full image have the same size.

use super::libjpeg;
pub(crate) use super::libjpeg::{scaled, JpegInfo};
use crate::formats::orientation::{self, Orientation};
use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::render::cache::DecodedCache;
use crate::render::ops::halve;
use crate::render::{plan, RenderError, Result, SourceRef};
use crate::source::ObjectReader;
use image::DynamicImage;
use std::sync::Arc;

/// The largest DCT scale-down (log2): 1/8.
pub(crate) const MAX_SCALE_LOG2: u32 = 3;

/// Up to this many decoded bytes, a region at full size is decoded whole and cut out (a 1024 px RGB
/// tile is 3 MiB): cheaper than libjpeg's cropping path.
const RAW_CROP_MAX_BYTES: u64 = 4 << 20;

/// Read the header only.
pub(crate) fn read_info(data: &[u8]) -> Result<JpegInfo> {
    libjpeg::header(data)
}

/// `data` (a stored tile) re-encoded at `quality` without forming its pixels, cropped to its
/// top-left `w` x `h`: see [`libjpeg::requantize`]. `Ok(None)` when its layout is not one that
/// route takes.
pub(crate) fn requantize(
    data: &[u8],
    (w, h): (u32, u32),
    quality: u8,
    rgb_coded: bool,
) -> Result<Option<Vec<u8>>> {
    libjpeg::requantize(data, w, h, quality, rgb_coded)
}

/// Whether libjpeg's SIMD code is compiled in and usable on this CPU.
pub(crate) fn simd() -> bool {
    libjpeg::simd()
}

/// One line naming the JPEG code in use, for `iiifd --version` and the start-up log.
pub(crate) fn codec_description() -> String {
    let kernels = super::jpeg_simd::kernels().is_some();
    let pixels = match (simd(), kernels) {
        (true, _) => "libjpeg's own SIMD code (nasm was on PATH at build time)",
        (false, true) => "iiifd's AVX2 kernels for the IDCT, upsampling and colour conversion",
        (false, false) => {
            "plain C for the IDCT and colour conversion (no AVX2 on this CPU and no nasm at build \
             time): full-size JPEG decodes are about 2x slower"
        }
    };
    format!(
        "JPEG: libjpeg {} (mozjpeg-sys) decodes, with {pixels}; jpeg-encoder encodes{}",
        libjpeg::VERSION,
        if avx2() { " (AVX2)" } else { "" },
    )
}

fn avx2() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

/// Decode `data` at 1/2^`scale_log2` of its size, only the region `crop` (in scaled pixels; `None`
/// for all of it). The result has exactly the crop's size. `max_bytes` bounds both the output and
/// the decoder's own buffers (a progressive JPEG keeps every coefficient in memory).
pub(crate) fn decode(
    data: &[u8],
    scale_log2: u32,
    crop: Option<Rect>,
    max_bytes: u64,
) -> Result<DynamicImage> {
    decode_coded(data, scale_log2, crop, max_bytes, false)
}

/// [`decode`], with `rgb_coded` saying the three components are R, G and B whatever the file's own
/// markers suggest: the JPEG tiles of a TIFF whose Photometric tag is RGB (Aperio SVS and other
/// slide scanners write them without a JFIF or Adobe marker, so libjpeg would take them for YCbCr and
/// show a magenta/green cast).
pub(crate) fn decode_coded(
    data: &[u8],
    scale_log2: u32,
    crop: Option<Rect>,
    max_bytes: u64,
    rgb_coded: bool,
) -> Result<DynamicImage> {
    let info = libjpeg::header(data)?;
    if info.cmyk {
        return Err(RenderError::bug(
            "CMYK JPEG must be decoded by the fallback",
        ));
    }
    let k = scale_log2.min(MAX_SCALE_LOG2);
    let (sw, sh) = (scaled(info.width, k), scaled(info.height, k));
    let whole = Rect {
        x: 0,
        y: 0,
        w: sw,
        h: sh,
    };
    let want = clamp_rect(crop.unwrap_or(whole), sw, sh);
    let whole_bytes = u64::from(sw) * u64::from(sh) * u64::from(info.channels);
    // Full size: the whole image through libjpeg's raw output and our pixel stage, then the region
    // cut out, when that costs little memory (a tile of a pyramidal TIFF, a small source) or the
    // region is all of it. A region of a large image, or a scaled decode, takes libjpeg's own
    // cropping and DCT scaling.
    if k == 0 && (want == whole || whole_bytes <= RAW_CROP_MAX_BYTES) {
        let kernels = super::jpeg_simd::kernels();
        if let Some(img) = libjpeg::decode_raw(data, want, max_bytes, kernels, rgb_coded)? {
            return Ok(img);
        }
    }
    libjpeg::decode(
        data,
        &info,
        k,
        want,
        max_bytes,
        super::jpeg_simd::kernels(),
        rgb_coded,
    )
}

/// The inks of a CMYK (or YCCK) JPEG as stored, with its width and height: zune-jpeg reads them, as
/// libjpeg's route here converts to RGB. Adobe's inversion is the caller's to undo (TIFF's JPEG
/// chunks are not inverted; Photoshop's files are, and say so in APP14).
pub(crate) fn cmyk_inks(stream: &[u8], max: u64) -> Result<(usize, usize, Vec<u8>)> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let bad =
        |e: zune_jpeg::errors::DecodeErrors| RenderError::Undecodable(format!("CMYK JPEG: {e:?}"));
    let options = |out: ColorSpace| {
        DecoderOptions::default()
            .jpeg_set_out_colorspace(out)
            .set_max_width(1 << 16)
            .set_max_height(1 << 16)
    };
    let mut decoder =
        zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(stream), options(ColorSpace::CMYK));
    decoder.decode_headers().map_err(bad)?;
    let (iw, ih) = decoder
        .dimensions()
        .ok_or_else(|| RenderError::Undecodable("CMYK JPEG without a frame".into()))?;
    if (iw * ih * 4) as u64 > max {
        return Err(RenderError::TooLarge(format!(
            "a CMYK JPEG of {iw}x{ih} would exceed render.max_decode_bytes ({max})"
        )));
    }
    // YCCK (Adobe transform 2): zune-jpeg hands the components on as they are; the colour part is
    // YCbCr of the inverted C, M, Y, as libjpeg's YCCK-to-CMYK conversion takes it.
    let ycck = decoder.input_colorspace() == Some(ColorSpace::YCCK);
    if ycck {
        decoder.set_options(options(ColorSpace::YCCK));
    }
    let mut inks = decoder.decode().map_err(bad)?;
    match decoder.output_colorspace() {
        Some(ColorSpace::CMYK) => {}
        Some(ColorSpace::YCCK) if ycck => {
            for px in inks.chunks_exact_mut(4) {
                let [r, g, b] = crate::render::ops::ycbcr_to_rgb([px[0], px[1], px[2]]);
                px[..3].copy_from_slice(&[255 - r, 255 - g, 255 - b]);
            }
        }
        _ => {
            return Err(RenderError::Unsupported(
                "a four-component JPEG that is neither CMYK nor YCCK".into(),
            ))
        }
    }
    Ok((iw, ih, inks))
}

/// Whether a JPEG carries Adobe's APP14 segment (before its first scan): Photoshop's CMYK files
/// store inverted inks and say so this way.
pub(crate) fn has_adobe_marker(data: &[u8]) -> bool {
    let mut i = 2usize;
    while let (Some(&0xFF), Some(&m)) = (data.get(i), data.get(i + 1)) {
        if m == 0xFF {
            i += 1;
            continue;
        }
        if m == 0xDA || m == 0xD9 {
            break;
        }
        let Some(len) = data
            .get(i + 2..i + 4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            break;
        };
        if m == 0xEE && data.get(i + 4..i + 9) == Some(b"Adobe") {
            return true;
        }
        i += 2 + len;
    }
    false
}

/// The region of a JPEG: from a cached level when the level fits the cache (a viewer will ask for
/// its neighbours next), otherwise decoded alone, cropped and DCT-scaled, so a tile or thumbnail of
/// a 20000 px scan never holds the full image. `None` for JPEGs the JPEG route does not convert to RGB
/// (CMYK, YCCK), which take the whole-image route.
pub(crate) fn region(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    max: u64,
) -> Result<Option<(Arc<DynamicImage>, Rect)>> {
    let jpg = JpegFile::new(src.reader, max);
    let (info, orient) = jpg.header()?;
    if info.cmyk {
        return Ok(None);
    }
    let (dw, dh) = orient.display_size(info.width, info.height);
    let (k, region) = plan::pick_level(req);
    let bytes_at = |k: usize| {
        u64::from(scaled(dw, k as u32)) * u64::from(scaled(dh, k as u32)) * u64::from(info.channels)
    };
    let fits = |bytes: u64| bytes <= cache.budget() && bytes <= max;
    // Every decode of a JPEG pays for entropy-decoding the whole file, whatever the scale: that is
    // most of its cost. A part of the image means a viewer is zooming and more levels will follow,
    // so decode it once at full size and halve; the whole image (a thumbnail) is usually asked for
    // once, so decode just its level at DCT scale.
    let whole = req.region()
        == Rect {
            x: 0,
            y: 0,
            w: dw,
            h: dh,
        };
    if !whole && fits(bytes_at(0)) {
        let img = jpeg_level(src.fingerprint, &jpg, orient, cache, k, true)?;
        return Ok(Some((img, region)));
    }
    if fits(bytes_at(k)) {
        let img = jpeg_level(src.fingerprint, &jpg, orient, cache, k, false)?;
        return Ok(Some((img, region)));
    }
    let kd = (k as u32).min(MAX_SCALE_LOG2);
    let at = plan::level_rect(req.region(), kd as usize);
    let stored = orient.stored_rect(at, scaled(dw, kd), scaled(dh, kd));
    let img = orient.apply(decode(jpg.data()?, kd, Some(stored), max)?);
    let whole = Rect {
        x: 0,
        y: 0,
        w: img.width(),
        h: img.height(),
    };
    Ok(Some((Arc::new(img), whole)))
}

/// Level `k` of a JPEG, in displayed orientation. `via_full`: halve down from a full-size decode;
/// otherwise levels 0-3 come straight from the IDCT (or are halved from the level above when that is
/// already in memory: cheaper than decoding again) and coarser ones are halved.
fn jpeg_level(
    key: &crate::source::Fingerprint,
    jpg: &JpegFile<'_>,
    orient: Orientation,
    cache: &DecodedCache,
    k: usize,
    via_full: bool,
) -> Result<Arc<DynamicImage>> {
    cache.get_or_build(key, k, || {
        if k > 0 {
            let above = if via_full || k as u32 > MAX_SCALE_LOG2 {
                Some(jpeg_level(key, jpg, orient, cache, k - 1, via_full)?)
            } else {
                cache.peek(key, k - 1)
            };
            if let Some(above) = above {
                return Ok(halve(&above));
            }
        }
        Ok(orient.apply(decode(jpg.data()?, k as u32, None, jpg.max)?))
    })
}

/// Level 0 of a JPEG through the decoded cache, or `None` for CMYK and YCCK files (the `image`
/// crate decodes those).
pub(crate) fn full_level(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    max: u64,
) -> Result<Option<Arc<DynamicImage>>> {
    let jpg = JpegFile::new(src.reader, max);
    let (info, orient) = jpg.header()?;
    if info.cmyk {
        return Ok(None);
    }
    jpeg_level(src.fingerprint, &jpg, orient, cache, 0, true).map(Some)
}

/// A JPEG source read lazily: the header from the first bytes, the whole file only when a decode
/// needs it, so a render cut from a cached level never reads the (possibly 100 MB) file.
struct JpegFile<'a> {
    file: &'a dyn ObjectReader,
    max: u64,
    whole: std::cell::OnceCell<Vec<u8>>,
}

impl<'a> JpegFile<'a> {
    fn new(file: &'a dyn ObjectReader, max: u64) -> JpegFile<'a> {
        JpegFile {
            file,
            max,
            whole: std::cell::OnceCell::new(),
        }
    }

    fn data(&self) -> Result<&[u8]> {
        if let Some(d) = self.whole.get() {
            return Ok(d);
        }
        let d = self.file.read_all(self.max)?;
        Ok(self.whole.get_or_init(|| d))
    }

    /// Frame header and EXIF orientation. 256 KiB holds them for practically every JPEG; one with
    /// larger metadata in front (big ICC profiles, XMP) is read whole.
    fn header(&self) -> Result<(JpegInfo, Orientation)> {
        let head = self
            .file
            .read_range(0, 256 << 10)
            .map_err(|e| RenderError::Source(e.into()))?;
        match read_info(&head) {
            Ok(info) => Ok((info, orientation::jpeg_orientation(&head))),
            Err(_) => {
                let data = self.data()?;
                Ok((read_info(data)?, orientation::jpeg_orientation(data)))
            }
        }
    }
}

/// `r` cut to a `w` x `h` image, at least one pixel.
fn clamp_rect(r: Rect, w: u32, h: u32) -> Rect {
    let x = r.x.min(w - 1);
    let y = r.y.min(h - 1);
    Rect {
        x,
        y,
        w: r.w.min(w - x).max(1),
        h: r.h.min(h - y).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::decode::libjpeg::frame_marker;
    use crate::render::encode::jpeg::{encode, encode_full_chroma, encode_with};

    fn sample(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        encode(&DynamicImage::ImageRgb8(img), 95, None).expect("encode")
    }

    fn max_diff(a: &image::RgbImage, b: &image::RgbImage, dx: u32, dy: u32) -> i32 {
        let mut worst = 0i32;
        for (x, y, p) in a.enumerate_pixels() {
            let q = b.get_pixel(x + dx, y + dy);
            for c in 0..3 {
                worst = worst.max((i32::from(p[c]) - i32::from(q[c])).abs());
            }
        }
        worst
    }

    #[test]
    fn header_and_scaled_sizes() {
        let data = sample(301, 203);
        let info = read_info(&data).expect("header");
        assert_eq!((info.width, info.height, info.channels), (301, 203, 3));
        for k in 0..=3 {
            let img = decode(&data, k, None, 1 << 30).expect("decode");
            assert_eq!(
                (img.width(), img.height()),
                (scaled(301, k), scaled(203, k))
            );
        }
    }

    #[test]
    fn crop_matches_full_decode() {
        let data = sample(400, 300);
        let full = decode(&data, 1, None, 1 << 30).expect("full").to_rgb8();
        let r = Rect {
            x: 37,
            y: 21,
            w: 90,
            h: 55,
        };
        let part = decode(&data, 1, Some(r), 1 << 30).expect("crop").to_rgb8();
        assert_eq!(part.dimensions(), (90, 55));
        // Cropped IDCT rows are the same computation; allow for upsampling at the crop edge.
        let worst = max_diff(&part, &full, r.x, r.y);
        assert!(worst <= 8, "max difference {worst}");
    }

    /// `data` with its three components renamed 'R', 'G', 'B' (libjpeg then reads them as RGB, not
    /// YCbCr) or with an Adobe APP14 marker saying "no transform".
    fn as_rgb_jpeg(data: &[u8], adobe: bool) -> Vec<u8> {
        let mut out = data.to_vec();
        // Without JFIF's APP0, which says YCbCr whatever the ids are.
        if out[2..4] == [0xFF, 0xE0] {
            let len = usize::from(u16::from_be_bytes([out[4], out[5]]));
            out.drain(2..4 + len);
        }
        if adobe {
            let app14 = [
                0xFF, 0xEE, 0, 14, b'A', b'd', b'o', b'b', b'e', 0, 100, 0, 0, 0, 0, 0,
            ];
            out.splice(2..2, app14);
        } else {
            // The three component ids become 'R', 'G', 'B', in the frame header and in every scan
            // header that names them.
            let sof = out
                .windows(2)
                .position(|w| w == [0xFF, 0xC0])
                .expect("SOF0");
            let old: Vec<u8> = (0..3).map(|i| out[sof + 10 + 3 * i]).collect();
            let rename = |id: u8| {
                old.iter()
                    .position(|&o| o == id)
                    .map_or(id, |i| [b'R', b'G', b'B'][i])
            };
            for i in 0..3 {
                out[sof + 10 + 3 * i] = rename(out[sof + 10 + 3 * i]);
            }
            let mut at = 0;
            while let Some(p) = out[at..].windows(2).position(|w| w == [0xFF, 0xDA]) {
                let sos = at + p;
                let n = usize::from(out[sos + 4]);
                for i in 0..n {
                    out[sos + 5 + 2 * i] = rename(out[sos + 5 + 2 * i]);
                }
                at = sos + 2;
            }
        }
        out
    }

    #[test]
    fn rgb_coded_jpegs_are_read_as_rgb() {
        let data = sample(120, 90);
        let ycc = decode(&data, 0, None, 1 << 30).expect("ycc").to_rgb8();
        for adobe in [false, true] {
            let rgb = as_rgb_jpeg(&data, adobe);
            let info = read_info(&rgb).expect("header");
            let fast = decode(&rgb, 0, None, 1 << 30).expect("raw path").to_rgb8();
            let whole = Rect {
                x: 0,
                y: 0,
                w: 120,
                h: 90,
            };
            let c = libjpeg::decode(&rgb, &info, 0, whole, 1 << 30, None, false)
                .expect("libjpeg")
                .to_rgb8();
            assert_eq!(fast.as_raw(), c.as_raw(), "adobe={adobe}");
            // The stored YCbCr samples read as RGB: nothing like the YCbCr reading.
            assert!(max_diff(&fast, &ycc, 0, 0) > 40, "adobe={adobe}");
        }
    }

    /// Aperio-style tiles: three components coded as R, G, B, with neither JFIF nor Adobe marker nor
    /// telling ids. libjpeg alone takes them for YCbCr; told by the TIFF, they are read as RGB.
    #[test]
    fn tiles_said_to_be_rgb_are_read_as_rgb() {
        let data = sample(64, 48);
        let mut unmarked = data.clone();
        if unmarked[2..4] == [0xFF, 0xE0] {
            let len = usize::from(u16::from_be_bytes([unmarked[4], unmarked[5]]));
            unmarked.drain(2..4 + len);
        }
        // What the samples are when read as R, G, B (the ids renamed so libjpeg itself says RGB).
        let as_rgb = decode(&as_rgb_jpeg(&data, false), 0, None, 1 << 30)
            .expect("rgb")
            .to_rgb8();
        assert!(
            read_info(&as_rgb_jpeg(&data, false))
                .expect("header")
                .marked_rgb
        );
        assert!(
            read_info(&as_rgb_jpeg(&data, true))
                .expect("header")
                .marked_rgb
        );
        assert!(!read_info(&unmarked).expect("header").marked_rgb);
        let guessed = decode(&unmarked, 0, None, 1 << 30)
            .expect("guess")
            .to_rgb8();
        assert!(
            max_diff(&guessed, &as_rgb, 0, 0) > 40,
            "libjpeg's guess is YCbCr"
        );
        let told = decode_coded(&unmarked, 0, None, 1 << 30, true)
            .expect("told")
            .to_rgb8();
        assert_eq!(told.as_raw(), as_rgb.as_raw());
        // Cropped and scaled alike.
        let part = Rect {
            x: 8,
            y: 8,
            w: 16,
            h: 8,
        };
        let told = decode_coded(&unmarked, 1, Some(part), 1 << 30, true)
            .expect("told")
            .to_rgb8();
        let want = decode(&as_rgb_jpeg(&data, false), 1, Some(part), 1 << 30)
            .expect("rgb")
            .to_rgb8();
        assert_eq!(told.as_raw(), want.as_raw());
    }

    #[test]
    fn small_regions_at_full_size_match_libjpeg_crops() {
        let data = sample(300, 200);
        let info = read_info(&data).expect("header");
        let r = Rect {
            x: 41,
            y: 17,
            w: 100,
            h: 80,
        };
        let whole_then_cut = decode(&data, 0, Some(r), 1 << 30).expect("raw").to_rgb8();
        assert_eq!(whole_then_cut.dimensions(), (100, 80));
        let cropped = libjpeg::decode(&data, &info, 0, r, 1 << 30, None, false)
            .expect("libjpeg")
            .to_rgb8();
        // libjpeg's cropped decode upsamples chroma from the crop's edge: a few levels there.
        let worst = max_diff(&whole_then_cut, &cropped, 0, 0);
        assert!(worst <= 8, "max difference {worst}");
    }

    #[test]
    fn simd_kernels_decode_exactly_as_libjpeg_c() {
        let Some(kernels) = super::super::jpeg_simd::kernels() else {
            return;
        };
        // 4:2:0 YCbCr (IDCT and colour conversion replaced), 4:4:4, gray and RGB-coded (IDCT only),
        // whole and cropped, odd sizes.
        let ycc = sample(301, 203);
        let gray = encode(
            &DynamicImage::ImageLuma8(image::GrayImage::from_fn(77, 45, |x, y| {
                image::Luma([((x * 7 + y * 3) % 256) as u8])
            })),
            90,
            None,
        )
        .expect("gray");
        let full_chroma = encode_full_chroma(
            &DynamicImage::ImageRgb8(image::RgbImage::from_fn(99, 70, |x, y| {
                image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x ^ y) * 5) as u8])
            })),
            92,
        )
        .expect("444");
        let rgb = as_rgb_jpeg(&full_chroma, true);
        for data in [&ycc, &gray, &full_chroma, &rgb] {
            let info = read_info(data).expect("header");
            let whole = Rect {
                x: 0,
                y: 0,
                w: info.width,
                h: info.height,
            };
            let part = Rect {
                x: 19,
                y: 11,
                w: info.width / 2,
                h: info.height / 3,
            };
            for r in [whole, part] {
                let c = libjpeg::decode(data, &info, 0, r, 1 << 30, None, false).expect("C");
                let s = libjpeg::decode(data, &info, 0, r, 1 << 30, Some(kernels), false)
                    .expect("SIMD");
                assert_eq!(c.as_bytes(), s.as_bytes(), "{info:?} {r:?}");
            }
        }
    }

    #[test]
    fn raw_path_decodes_exactly_as_libjpeg() {
        use jpeg_encoder::SamplingFactor as S;
        let kernels = super::super::jpeg_simd::kernels();
        let picture = |w: u32, h: u32| {
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 255 / w.max(2)) as u8,
                    (y * 255 / h.max(2)) as u8,
                    ((x * 7 + y * 13) % 256) as u8,
                ])
            }))
        };
        for (w, h) in [(301, 203), (64, 48), (17, 9), (3, 3), (1, 1), (2, 5)] {
            for sampling in [S::F_2_2, S::F_2_1, S::F_1_1] {
                let data = encode_with(&picture(w, h), 90, sampling, None).expect("encode");
                let info = read_info(&data).expect("header");
                let whole = Rect { x: 0, y: 0, w, h };
                for k in [None, kernels] {
                    let reference =
                        libjpeg::decode(&data, &info, 0, whole, 1 << 30, k, false).expect("C");
                    let raw = libjpeg::decode_raw(&data, whole, 1 << 30, k, false)
                        .expect("raw")
                        .expect("this layout takes the raw path");
                    assert_eq!(
                        reference.as_bytes(),
                        raw.as_bytes(),
                        "{w}x{h} {sampling:?} kernels={}",
                        k.is_some()
                    );
                    // Regions: the same pixels as the whole image's, whatever the window.
                    let full = reference.to_rgb8();
                    for (x, y, rw, rh) in [
                        (0, 0, w, 1),
                        (w / 3, h / 2, w - w / 3, h - h / 2),
                        (w - 1, h - 1, 1, 1),
                    ] {
                        let r = Rect {
                            x,
                            y,
                            w: rw.max(1),
                            h: rh.max(1),
                        };
                        let part = libjpeg::decode_raw(&data, r, 1 << 30, k, false)
                            .expect("raw")
                            .expect("raw path")
                            .to_rgb8();
                        assert_eq!(part.dimensions(), (r.w, r.h));
                        assert_eq!(
                            max_diff(&part, &full, r.x, r.y),
                            0,
                            "{w}x{h} {sampling:?} {r:?}"
                        );
                    }
                }
            }
        }
        // Gray and RGB-coded files too.
        let gray = encode(
            &DynamicImage::ImageLuma8(picture(45, 31).to_luma8()),
            90,
            None,
        )
        .expect("gray");
        let rgb = as_rgb_jpeg(
            &encode_full_chroma(&picture(45, 31), 90).expect("444"),
            true,
        );
        for data in [gray, rgb] {
            let info = read_info(&data).expect("header");
            let whole = Rect {
                x: 0,
                y: 0,
                w: 45,
                h: 31,
            };
            let reference =
                libjpeg::decode(&data, &info, 0, whole, 1 << 30, None, false).expect("C");
            let raw = libjpeg::decode_raw(&data, whole, 1 << 30, kernels, false)
                .expect("raw")
                .expect("raw path");
            assert_eq!(reference.as_bytes(), raw.as_bytes(), "{info:?}");
        }
    }

    #[test]
    fn gray_round_trip() {
        let img =
            image::GrayImage::from_fn(70, 50, |x, y| image::Luma([((x * 3 + y) % 256) as u8]));
        let data = encode(&DynamicImage::ImageLuma8(img.clone()), 95, None).expect("encode");
        let info = read_info(&data).expect("header");
        assert_eq!(info.channels, 1);
        for k in [0, 1] {
            let out = decode(&data, k, None, 1 << 30).expect("decode");
            assert!(matches!(out, DynamicImage::ImageLuma8(_)));
            assert_eq!(out.width(), scaled(70, k));
        }
    }

    #[test]
    fn budget_and_garbage_are_errors() {
        let data = sample(64, 64);
        assert!(matches!(
            decode(&data, 0, None, 100),
            Err(RenderError::TooLarge(_))
        ));
        assert!(matches!(
            decode(b"\xff\xd8\xff\xe0garbage", 0, None, 1 << 20),
            Err(RenderError::Undecodable(_))
        ));
        assert!(read_info(b"").is_err());
        // A truncated file is a warning, not an error: the rows it has, the rest grey.
        let cut = &data[..data.len() / 2];
        let img = decode(cut, 0, None, 1 << 20).expect("truncated files decode");
        assert_eq!((img.width(), img.height()), (64, 64));
    }

    #[test]
    fn error_messages_are_readable() {
        let e = read_info(b"\xff\xd8\xff\xe0garbage").expect_err("garbage");
        let text = e.to_string();
        assert!(text.contains("JPEG"), "{text}");
        assert!(!text.contains('%'), "parameters are filled in: {text}");
    }

    #[test]
    fn lossless_jpeg_is_unsupported_not_corrupt() {
        let mut data = sample(16, 16);
        let sof = data
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("baseline SOF0");
        data[sof + 1] = 0xC3;
        assert_eq!(frame_marker(&data), Some(0xC3));
        assert!(matches!(read_info(&data), Err(RenderError::Unsupported(_))));
        assert_eq!(frame_marker(b"\xff\xd8\xff"), None);
    }

    #[test]
    fn codec_is_described() {
        let d = codec_description();
        assert!(d.contains("libjpeg") && d.contains("jpeg-encoder"), "{d}");
        assert!(
            d.contains("SIMD") || d.contains("AVX2") || d.contains("plain C"),
            "{d}"
        );
    }
}
