//! JPEG through libjpeg-turbo 3: the only `unsafe` in the renderer.
//!
//! Why not the safe `turbojpeg::Decompressor`: it does not expose `tj3SetCroppingRegion`, and decoding
//! only the rows and columns a tile needs (at the coarsest DCT scale that still covers it) is what
//! makes a cold tile of a large JPEG cheap. So decoding talks to `turbojpeg::raw` through the small
//! [`Handle`] below; encoding uses the crate's safe `Compressor`.
//!
//! Scales are powers of two: `scale_log2` 0..=3 means 1, 1/2, 1/4, 1/8, the factors libjpeg-turbo
//! computes inside its IDCT. A scaled dimension is `ceil(d / 2^k)`, the same rounding as the
//! renderer's pyramid, so a DCT-scaled decode and a halving of the full image have the same size.

use crate::error::{Error, Result};
use crate::iiif::canonical::Rect;
use image::DynamicImage;
use turbojpeg::raw;

/// The largest DCT scale-down (log2): 1/8.
pub const MAX_SCALE_LOG2: u32 = 3;

/// What the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegInfo {
    /// Stored width (before EXIF orientation).
    pub width: u32,
    /// Stored height.
    pub height: u32,
    /// Gray (1 channel) or colour (3).
    pub channels: u8,
    /// CMYK and YCCK: libjpeg-turbo cannot convert them to RGB, the caller decodes them elsewhere.
    pub cmyk: bool,
    /// Lossless JPEG: no DCT, so no scaling and no cropping.
    pub lossless: bool,
    /// Width of an iMCU in full-size pixels (8, 16 or 32), or 0 when the subsampling is unusual.
    mcu_width: u32,
}

/// One TurboJPEG instance; freed on drop.
struct Handle(raw::tjhandle);

impl Handle {
    fn new(init: raw::TJINIT) -> Result<Handle> {
        // SAFETY: tj3Init has no preconditions; a null return is checked.
        let ptr = unsafe { raw::tj3Init(init as libc::c_int) };
        if ptr.is_null() {
            return Err(Error::Internal(
                "libjpeg-turbo could not be initialised".into(),
            ));
        }
        Ok(Handle(ptr))
    }

    fn error(&self) -> String {
        // SAFETY: the handle is live; tj3GetErrorStr returns a NUL-terminated static or per-handle
        // string that stays valid until the next call on this handle, and we copy it at once.
        unsafe { std::ffi::CStr::from_ptr(raw::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .into_owned()
    }

    /// `Ok` for success, and for warnings: a truncated or slightly damaged file still yields the
    /// rows it has (the rest grey), as every other JPEG viewer shows it.
    fn check(&self, rc: libc::c_int) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: live handle.
        let code = unsafe { raw::tj3GetErrorCode(self.0) };
        if code == raw::TJERR_TJERR_WARNING as libc::c_int {
            return Ok(());
        }
        Err(Error::Undecodable(format!("JPEG: {}", self.error())))
    }

    fn get(&self, param: raw::TJPARAM) -> libc::c_int {
        // SAFETY: live handle; tj3Get only reads.
        unsafe { raw::tj3Get(self.0, param as libc::c_int) }
    }

    fn set(&self, param: raw::TJPARAM, value: libc::c_int) -> Result<()> {
        // SAFETY: live handle.
        let rc = unsafe { raw::tj3Set(self.0, param as libc::c_int, value) };
        if rc != 0 {
            return Err(Error::Internal(format!("libjpeg-turbo: {}", self.error())));
        }
        Ok(())
    }

    fn read_header(&self, data: &[u8]) -> Result<JpegInfo> {
        // SAFETY: live handle; the pointer and length describe `data`, which outlives the call.
        let rc =
            unsafe { raw::tj3DecompressHeader(self.0, data.as_ptr(), data.len() as raw::size_t) };
        if rc != 0 {
            return Err(Error::Undecodable(format!("JPEG: {}", self.error())));
        }
        let width = self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH);
        let height = self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT);
        if width <= 0 || height <= 0 {
            return Err(Error::Undecodable("the image has no pixels".into()));
        }
        let colorspace = self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS;
        let subsamp = self.get(raw::TJPARAM_TJPARAM_SUBSAMP);
        // turbojpeg.h's tjMCUWidth, indexed by TJSAMP (a static in the header, so not linkable).
        const MCU_WIDTH: [u32; 7] = [8, 16, 16, 8, 8, 32, 8];
        let mcu_width = usize::try_from(subsamp)
            .ok()
            .and_then(|i| MCU_WIDTH.get(i).copied())
            .unwrap_or(0);
        Ok(JpegInfo {
            width: width as u32,
            height: height as u32,
            channels: if colorspace == raw::TJCS_TJCS_GRAY {
                1
            } else {
                3
            },
            cmyk: colorspace == raw::TJCS_TJCS_CMYK || colorspace == raw::TJCS_TJCS_YCCK,
            lossless: self.get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0,
            mcu_width,
        })
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.0) }
    }
}

/// Read the header only.
pub fn read_info(data: &[u8]) -> Result<JpegInfo> {
    Handle::new(raw::TJINIT_TJINIT_DECOMPRESS)?.read_header(data)
}

/// `ceil(d / 2^k)`: a dimension after DCT scaling (and after `k` pyramid halvings).
pub fn scaled(d: u32, k: u32) -> u32 {
    d.div_ceil(1 << k).max(1)
}

/// Decode `data` at 1/2^`scale_log2` of its size, only the region `crop` (in scaled pixels; `None`
/// for all of it). The result has exactly the crop's size. `max_bytes` bounds both the output and
/// libjpeg-turbo's own buffers (a progressive JPEG keeps every coefficient in memory).
pub fn decode(
    data: &[u8],
    scale_log2: u32,
    crop: Option<Rect>,
    max_bytes: u64,
) -> Result<DynamicImage> {
    let h = Handle::new(raw::TJINIT_TJINIT_DECOMPRESS)?;
    let info = h.read_header(data)?;
    if info.cmyk {
        return Err(Error::Internal(
            "CMYK JPEG must be decoded by the fallback".into(),
        ));
    }
    // Lossless JPEG has no IDCT to scale or crop in: decode all of it and cut afterwards.
    let k = if info.lossless {
        0
    } else {
        scale_log2.min(MAX_SCALE_LOG2)
    };
    let (sw, sh) = (scaled(info.width, k), scaled(info.height, k));
    let want = crop.unwrap_or(Rect {
        x: 0,
        y: 0,
        w: sw,
        h: sh,
    });
    let want = clamp_rect(want, sw, sh);
    // libjpeg-turbo crops from a left edge on the scaled iMCU grid; decode from there and drop the
    // extra columns. An unknown subsampling or lossless file cannot be cropped: decode everything.
    let mcu = scaled(info.mcu_width, k);
    let region = if info.lossless || info.mcu_width == 0 {
        Rect {
            x: 0,
            y: 0,
            w: sw,
            h: sh,
        }
    } else {
        let x = want.x / mcu * mcu;
        Rect {
            x,
            y: want.y,
            w: want.x + want.w - x,
            h: want.h,
        }
    };
    let channels = u64::from(info.channels);
    let out_bytes = u64::from(region.w) * u64::from(region.h) * channels;
    if out_bytes > max_bytes {
        return Err(Error::SourceTooLarge(format!(
            "decoding {}x{} pixels would exceed render.max_decode_bytes ({max_bytes})",
            region.w, region.h
        )));
    }
    let mem_mb = (max_bytes.saturating_sub(out_bytes) >> 20).clamp(1, i32::MAX as u64);
    h.set(raw::TJPARAM_TJPARAM_MAXMEMORY, mem_mb as libc::c_int)?;
    if k > 0 {
        // SAFETY: live handle, header read; the factor is one of libjpeg-turbo's supported ones.
        let rc = unsafe {
            raw::tj3SetScalingFactor(
                h.0,
                raw::tjscalingfactor {
                    num: 1,
                    denom: 1 << k,
                },
            )
        };
        if rc != 0 {
            return Err(Error::Internal(format!("libjpeg-turbo: {}", h.error())));
        }
    }
    let full = region.x == 0 && region.y == 0 && region.w == sw && region.h == sh;
    if !full {
        // SAFETY: live handle with the header read and the scale set, as the function requires; the
        // region lies inside the scaled image and its left edge is on the scaled iMCU grid.
        let rc = unsafe {
            raw::tj3SetCroppingRegion(
                h.0,
                raw::tjregion {
                    x: region.x as libc::c_int,
                    y: region.y as libc::c_int,
                    w: region.w as libc::c_int,
                    h: region.h as libc::c_int,
                },
            )
        };
        if rc != 0 {
            return Err(Error::Internal(format!(
                "libjpeg-turbo crop: {}",
                h.error()
            )));
        }
    }
    let (pf, ch) = if info.channels == 1 {
        (raw::TJPF_TJPF_GRAY, 1usize)
    } else {
        (raw::TJPF_TJPF_RGB, 3usize)
    };
    let pitch = region.w as usize * ch;
    let mut buf = vec![0u8; pitch * region.h as usize];
    // SAFETY: live handle; `buf` holds exactly region.h rows of `pitch` bytes, the size libjpeg-turbo
    // writes for this scale and cropping region in this pixel format.
    let rc = unsafe {
        raw::tj3Decompress8(
            h.0,
            data.as_ptr(),
            data.len() as raw::size_t,
            buf.as_mut_ptr(),
            pitch as libc::c_int,
            pf,
        )
    };
    h.check(rc)?;
    let img = super::from_samples(region.w, region.h, ch, buf)
        .ok_or_else(|| Error::Internal("JPEG buffer size mismatch".into()))?;
    if (region.x, region.y, region.w, region.h) == (want.x, want.y, want.w, want.h) {
        Ok(img)
    } else {
        Ok(img.crop_imm(want.x - region.x, want.y - region.y, want.w, want.h))
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

/// Encode 8-bit gray or RGB as a baseline JPEG (4:2:0 for colour, as every IIIF server does).
pub fn encode(img: &DynamicImage, quality: u8) -> Result<Vec<u8>> {
    encode_with(img, quality, turbojpeg::Subsamp::Sub2x2)
}

/// [`encode`] keeping full chroma resolution (4:4:4), for intermediates that are decoded again.
pub fn encode_full_chroma(img: &DynamicImage, quality: u8) -> Result<Vec<u8>> {
    encode_with(img, quality, turbojpeg::Subsamp::None)
}

fn encode_with(img: &DynamicImage, quality: u8, subsamp: turbojpeg::Subsamp) -> Result<Vec<u8>> {
    let err = |e: turbojpeg::Error| Error::Internal(format!("JPEG encoding failed: {e}"));
    let mut c = turbojpeg::Compressor::new().map_err(err)?;
    c.set_quality(i32::from(quality.clamp(1, 100)))
        .map_err(err)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    match img {
        DynamicImage::ImageLuma8(buf) => {
            c.set_subsamp(turbojpeg::Subsamp::Gray).map_err(err)?;
            c.compress_to_vec(turbojpeg::Image {
                pixels: buf.as_raw().as_slice(),
                width: w,
                pitch: w,
                height: h,
                format: turbojpeg::PixelFormat::GRAY,
            })
            .map_err(err)
        }
        DynamicImage::ImageRgb8(buf) => {
            c.set_subsamp(subsamp).map_err(err)?;
            c.compress_to_vec(turbojpeg::Image {
                pixels: buf.as_raw().as_slice(),
                width: w,
                pitch: w * 3,
                height: h,
                format: turbojpeg::PixelFormat::RGB,
            })
            .map_err(err)
        }
        other => encode_with(&DynamicImage::ImageRgb8(other.to_rgb8()), quality, subsamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        encode(&DynamicImage::ImageRgb8(img), 95).expect("encode")
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
        let mut worst = 0i32;
        for (x, y, p) in part.enumerate_pixels() {
            let q = full.get_pixel(x + r.x, y + r.y);
            for c in 0..3 {
                worst = worst.max((i32::from(p[c]) - i32::from(q[c])).abs());
            }
        }
        // Cropped IDCT rows are the same computation; allow for upsampling at the crop edge.
        assert!(worst <= 8, "max difference {worst}");
    }

    #[test]
    fn budget_and_garbage_are_errors() {
        let data = sample(64, 64);
        assert!(matches!(
            decode(&data, 0, None, 100),
            Err(Error::SourceTooLarge(_))
        ));
        assert!(decode(b"\xff\xd8\xff\xe0garbage", 0, None, 1 << 20).is_err());
        assert!(read_info(b"").is_err());
    }
}
