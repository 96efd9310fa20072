//! Writers for source files the `image` crate cannot make: tiled pyramidal TIFF and BigTIFF (JPEG
//! tiles with or without shared JPEGTables, or raw tiles), JPEGs with an EXIF orientation, and a
//! huge JPEG written straight from its entropy-coded bits.

use image::RgbImage;

/// How the tiles of a test pyramid are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileCoding {
    /// Each tile a complete JPEG.
    Jpeg,
    /// Tiles are abbreviated JPEG streams; the tables sit in the JPEGTables tag (what libtiff writes).
    JpegTables,
    /// [`TileCoding::JpegTables`] at this quality (the others are at 92).
    JpegTablesAt(u8),
    /// Uncompressed RGB.
    Raw,
}

/// Encode RGB as a baseline JPEG (standard Huffman tables, so every tile shares them).
pub fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(
            img.as_raw(),
            img.width() as u16,
            img.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encode jpeg");
    out
}

/// Split a JPEG into (tables-only stream, abbreviated image stream): DQT and DHT move to the first.
pub fn split_tables(full: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut tables = vec![0xFF, 0xD8];
    let mut image = vec![0xFF, 0xD8];
    let mut i = 2;
    while i + 4 <= full.len() {
        let marker = full[i + 1];
        if marker == 0xDA {
            image.extend_from_slice(&full[i..]);
            break;
        }
        let len = usize::from(u16::from_be_bytes([full[i + 2], full[i + 3]]));
        let seg = &full[i..i + 2 + len];
        if marker == 0xDB || marker == 0xC4 {
            tables.extend_from_slice(seg);
        } else {
            image.extend_from_slice(seg);
        }
        i += 2 + len;
    }
    tables.extend_from_slice(&[0xFF, 0xD9]);
    (tables, image)
}

/// Insert an EXIF segment with `orientation` right after the SOI of `jpeg`.
pub fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut seg = b"Exif\0\0".to_vec();
    seg.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
    out.extend(seg);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A tiled TIFF (or BigTIFF) with one IFD per level, `levels[0]` the full image.
pub fn tiled_tiff(levels: &[RgbImage], tile: u32, coding: TileCoding, big: bool) -> Vec<u8> {
    tiled_tiff_with(levels, tile, coding, big, &[])
}

/// [`tiled_tiff`] with `extra` SHORT entries (tag, value) in the first IFD, e.g. Orientation (274).
pub fn tiled_tiff_with(
    levels: &[RgbImage],
    tile: u32,
    coding: TileCoding,
    big: bool,
    extra: &[(u16, u16)],
) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    if big {
        out.extend_from_slice(b"II\x2b\0\x08\0\0\0");
        out.extend_from_slice(&0u64.to_le_bytes());
    } else {
        out.extend_from_slice(b"II\x2a\0");
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut next_ptr_at = if big { 8 } else { 4 };
    for (n, img) in levels.iter().enumerate() {
        let (cols, rows) = (img.width().div_ceil(tile), img.height().div_ceil(tile));
        let mut offsets = Vec::new();
        let mut counts = Vec::new();
        let mut tables = None;
        for row in 0..rows {
            for col in 0..cols {
                // Edge tiles are padded to the full tile size, as TIFF requires.
                let t = RgbImage::from_fn(tile, tile, |x, y| {
                    let (sx, sy) = (
                        (col * tile + x).min(img.width() - 1),
                        (row * tile + y).min(img.height() - 1),
                    );
                    *img.get_pixel(sx, sy)
                });
                let bytes = match coding {
                    TileCoding::Raw => t.into_raw(),
                    TileCoding::Jpeg => jpeg(&t, 92),
                    TileCoding::JpegTables | TileCoding::JpegTablesAt(_) => {
                        let q = match coding {
                            TileCoding::JpegTablesAt(q) => q,
                            _ => 92,
                        };
                        let (tb, abbreviated) = split_tables(&jpeg(&t, q));
                        tables = Some(tb);
                        abbreviated
                    }
                };
                offsets.push(out.len() as u64);
                counts.push(bytes.len() as u64);
                out.extend(bytes);
            }
        }
        let jpeg_coded = coding != TileCoding::Raw;
        let mut entries: Vec<(u16, u16, u64, Vec<u8>)> = Vec::new();
        let long = |v: u64| -> (u16, Vec<u8>) {
            if big {
                (16, v.to_le_bytes().to_vec())
            } else {
                (4, (v as u32).to_le_bytes().to_vec())
            }
        };
        let short = |v: u16| v.to_le_bytes().to_vec();
        if n > 0 {
            entries.push((254, 4, 1, 1u32.to_le_bytes().to_vec()));
        }
        entries.push((256, 4, 1, img.width().to_le_bytes().to_vec()));
        entries.push((257, 4, 1, img.height().to_le_bytes().to_vec()));
        entries.push((258, 3, 3, [short(8), short(8), short(8)].concat()));
        entries.push((259, 3, 1, short(if jpeg_coded { 7 } else { 1 })));
        entries.push((262, 3, 1, short(if jpeg_coded { 6 } else { 2 })));
        entries.push((277, 3, 1, short(3)));
        entries.push((284, 3, 1, short(1)));
        entries.push((322, 4, 1, tile.to_le_bytes().to_vec()));
        entries.push((323, 4, 1, tile.to_le_bytes().to_vec()));
        let (typ, _) = long(0);
        let arr = |v: &[u64]| v.iter().flat_map(|&x| long(x).1).collect::<Vec<u8>>();
        entries.push((324, typ, offsets.len() as u64, arr(&offsets)));
        entries.push((325, typ, counts.len() as u64, arr(&counts)));
        if let Some(t) = tables {
            entries.push((347, 7, t.len() as u64, t));
        }
        if n == 0 {
            for &(tag, value) in extra {
                entries.push((tag, 3, 1, short(value)));
            }
            entries.sort_by_key(|e| e.0);
        }
        // Values too large for the entry go before the IFD.
        let inline = if big { 8 } else { 4 };
        let mut fields = Vec::new();
        for (_, _, _, value) in &entries {
            if value.len() > inline {
                fields.push(Some(out.len() as u64));
                out.extend_from_slice(value);
                if out.len() % 2 == 1 {
                    out.push(0);
                }
            } else {
                fields.push(None);
            }
        }
        let ifd = out.len() as u64;
        if big {
            out[next_ptr_at..next_ptr_at + 8].copy_from_slice(&ifd.to_le_bytes());
            out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        } else {
            out[next_ptr_at..next_ptr_at + 4].copy_from_slice(&(ifd as u32).to_le_bytes());
            out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        }
        for ((tag, typ, count, value), field) in entries.iter().zip(&fields) {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&typ.to_le_bytes());
            let mut slot = vec![0u8; inline];
            match field {
                Some(off) => slot.copy_from_slice(&long(*off).1),
                None => slot[..value.len()].copy_from_slice(value),
            }
            if big {
                out.extend_from_slice(&count.to_le_bytes());
            } else {
                out.extend_from_slice(&(*count as u32).to_le_bytes());
            }
            out.extend(slot);
        }
        next_ptr_at = out.len();
        out.extend(std::iter::repeat_n(0u8, inline));
    }
    out
}

/// A baseline colour JPEG of `w` x `h` (multiples of 8) whose every block is flat mid-grey, written
/// straight from its entropy-coded bits: each block is the DC code "00" (no change) and the AC EOB
/// "1010", so four blocks are the three bytes 0x28 0xA2 0x8A. A 20000x15000 image is ~10 MB and
/// takes no time to make, yet decodes to 900 MB of RGB if a server decodes it whole.
pub fn flat_huge_jpeg(w: u16, h: u16) -> Vec<u8> {
    assert!(w % 8 == 0 && h % 8 == 0);
    let mut out = vec![0xFF, 0xD8];
    // One quantisation table of ones.
    out.extend_from_slice(&[0xFF, 0xDB, 0, 67, 0]);
    out.extend(std::iter::repeat_n(1u8, 64));
    // Baseline frame, three components, 4:4:4, all on table 0.
    out.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8]);
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    out.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]);
    // The standard luminance DC and AC Huffman tables (ITU T.81 K.3).
    let dc_counts = [0u8, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    let dc_values: Vec<u8> = (0..12).collect();
    let ac_counts = [0u8, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    let ac_values: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    let table = |class: u8, counts: &[u8], values: &[u8]| {
        let mut t = vec![0xFF, 0xC4];
        t.extend_from_slice(&((2 + 1 + 16 + values.len()) as u16).to_be_bytes());
        t.push(class << 4);
        t.extend_from_slice(counts);
        t.extend_from_slice(values);
        t
    };
    out.extend(table(0, &dc_counts, &dc_values));
    out.extend(table(1, &ac_counts, &ac_values));
    out.extend_from_slice(&[0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0, 3, 0, 0, 63, 0]);
    let blocks = 3 * (u64::from(w) / 8) * (u64::from(h) / 8);
    for _ in 0..blocks / 4 {
        out.extend_from_slice(&[0x28, 0xA2, 0x8A]);
    }
    // Any remaining blocks (blocks % 4), padded with one bits.
    let mut bits: u32 = 0;
    let mut n = 0;
    for _ in 0..blocks % 4 {
        bits = (bits << 6) | 0b001010;
        n += 6;
    }
    while n % 8 != 0 {
        bits = (bits << 1) | 1;
        n += 1;
    }
    for i in (0..n / 8).rev() {
        out.push((bits >> (8 * i)) as u8);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// Mean absolute difference per sample of two RGB images of one size.
pub fn mean_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64
}
