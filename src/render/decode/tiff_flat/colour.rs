//! Flat TIFF samples made pixels: palettes expanded, CIELab converted to sRGB, associated alpha
//! divided out. Pure.

use super::*;

/// The palette as 8-bit RGB triples for every index (16-bit entries, high byte kept as Pillow does).
pub(super) fn palette(f: &Flat) -> Vec<u8> {
    let n = 1usize << f.bits;
    let mut lut = vec![0u8; 256 * 3];
    for i in 0..n.min(256) {
        for c in 0..3 {
            lut[i * 3 + c] = (f.colormap.get(c * n + i).copied().unwrap_or(0) >> 8) as u8;
        }
    }
    lut
}

/// CIE L*a*b* (D50, as TIFF stores it: L* 0..=255 for 0..=100, a* and b* offset by 128) to sRGB.
pub(super) fn lab_to_srgb(l: u8, a: u8, b: u8) -> [u8; 3] {
    let l = f64::from(l) * 100.0 / 255.0;
    let (a, b) = (f64::from(a) - 128.0, f64::from(b) - 128.0);
    let fy = (l + 16.0) / 116.0;
    let (fx, fz) = (fy + a / 500.0, fy - b / 200.0);
    let inv = |t: f64| {
        if t > 6.0 / 29.0 {
            t * t * t
        } else {
            3.0 * (6.0f64 / 29.0).powi(2) * (t - 4.0 / 29.0)
        }
    };
    // D50 white.
    let (x, y, z) = (0.964_22 * inv(fx), inv(fy), 0.825_21 * inv(fz));
    // XYZ (D50) to linear sRGB (D65), Bradford-adapted (the matrix ICC v4 sRGB uses).
    let r = 3.133_856 * x - 1.616_867 * y - 0.490_615 * z;
    let g = -0.978_768 * x + 1.916_141 * y + 0.033_454 * z;
    let bl = 0.071_945 * x - 0.228_991 * y + 1.405_243 * z;
    let gamma = |v: f64| {
        let v = v.clamp(0.0, 1.0);
        let e = if v <= 0.003_130_8 {
            12.92 * v
        } else {
            1.055 * v.powf(1.0 / 2.4) - 0.055
        };
        (e * 255.0).round() as u8
    };
    [gamma(r), gamma(g), gamma(bl)]
}

/// Straight alpha from premultiplied (TIFF's associated alpha): each colour sample divided by its
/// alpha, rounded; fully transparent pixels keep their (zero) colour.
pub(super) fn unpremultiply(img: DynamicImage) -> DynamicImage {
    fn divide(px: &mut [u8]) {
        let Some((&mut a, colour)) = px.split_last_mut() else {
            return;
        };
        if a == 0 || a == 255 {
            return;
        }
        for c in colour {
            *c = ((u32::from(*c) * 255 + u32::from(a) / 2) / u32::from(a)).min(255) as u8;
        }
    }
    match img {
        DynamicImage::ImageRgba8(mut buf) => {
            buf.chunks_exact_mut(4).for_each(divide);
            DynamicImage::ImageRgba8(buf)
        }
        DynamicImage::ImageLumaA8(mut buf) => {
            buf.chunks_exact_mut(2).for_each(divide);
            DynamicImage::ImageLumaA8(buf)
        }
        other => other,
    }
}
