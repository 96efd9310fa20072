//! The header of JPEG 2000 sources (`.jp2` files and raw `.j2k` codestreams): size and number of
//! resolution levels, read from the codestream's SIZ and COD markers without decoding anything (the
//! `jpeg2k` crate only reads headers as part of a decode).
//!
//! Pure: works on the first bytes of the file.

/// What the codestream header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Jp2Header {
    /// Image width: the reference grid's, or when every component is subsampled (all XRsiz >= 2,
    /// as in conformance file p0_02) the finest component's grid, which is what decodes.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Wavelet decomposition levels: the decoder can reduce by up to 2^levels.
    pub levels: u8,
    /// Image origin (XOsiz, YOsiz, divided by `dx`/`dy` rounding up): decode areas are given on
    /// this grid and scaled to the reference grid only at openjpeg's call.
    pub x0: u32,
    /// See `x0`.
    pub y0: u32,
    /// The subsampling every component shares at least (1 but for files with no full-size
    /// component): one pixel of `width` spans `dx` columns of the reference grid.
    pub dx: u32,
    /// See `dx`.
    pub dy: u32,
    /// The reference grid's end (Xsiz, Ysiz): scaled decode areas are clamped to it.
    pub ref_x1: u32,
    /// See `ref_x1`.
    pub ref_y1: u32,
    /// One tile covers the image (an untiled codestream): openjpeg can decode several areas
    /// through one opened codec.
    pub single_tile: bool,
}

/// Parse the header from the start of a `.jp2` or `.j2k` file.
pub(crate) fn read_header(head: &[u8]) -> Option<Jp2Header> {
    let cs = if head.starts_with(&[0xFF, 0x4F]) {
        head
    } else {
        codestream(head)?
    };
    // SOC, then SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz ...
    if cs.get(..4)? != [0xFF, 0x4F, 0xFF, 0x51] {
        return None;
    }
    let u32_at = |at: usize| {
        cs.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u16_at = |at: usize| cs.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (xsiz, ysiz, xo, yo) = (u32_at(8)?, u32_at(12)?, u32_at(16)?, u32_at(20)?);
    xsiz.checked_sub(xo)?;
    ysiz.checked_sub(yo)?;
    // Csiz, then XRsiz/YRsiz per component: openjpeg decodes to the finest component's grid.
    let comps = usize::from(u16_at(40)?);
    let (mut dx, mut dy) = (u32::MAX, u32::MAX);
    for c in 0..comps.min(16_384) {
        dx = dx.min(u32::from(*cs.get(43 + 3 * c)?));
        dy = dy.min(u32::from(*cs.get(44 + 3 * c)?));
    }
    if comps == 0 || dx == 0 || dy == 0 {
        return None;
    }
    let (x0, y0) = (xo.div_ceil(dx), yo.div_ceil(dy));
    let (width, height) = (xsiz.div_ceil(dx) - x0, ysiz.div_ceil(dy) - y0);
    let (xt, yt, xto, yto) = (u32_at(24)?, u32_at(28)?, u32_at(32)?, u32_at(36)?);
    let single_tile = u64::from(xto) + u64::from(xt) >= u64::from(xsiz)
        && u64::from(yto) + u64::from(yt) >= u64::from(ysiz)
        && xto <= xo
        && yto <= yo;
    // Walk the main header's marker segments to COD; its SPcod starts with the level count.
    let mut at = 4 + usize::from(u16_at(4)?);
    let mut levels = 0;
    while let Some(marker) = u16_at(at) {
        let len = usize::from(u16_at(at + 2)?);
        if marker == 0xFF52 {
            levels = *cs.get(at + 9)?;
            break;
        }
        if marker == 0xFF90 || marker == 0xFF93 || len < 2 {
            break; // first tile part: the main header is over
        }
        at += 2 + len;
    }
    (width > 0 && height > 0).then_some(Jp2Header {
        width,
        height,
        levels: levels.min(32),
        x0,
        y0,
        dx,
        dy,
        ref_x1: xsiz,
        ref_y1: ysiz,
        single_tile,
    })
}

/// The boxes directly inside `data` (a file, or a superbox's contents): type, and where its contents
/// start and end. The end may lie past `data` when only the head of a file was read; the walk stops
/// there.
fn box_spans(data: &[u8]) -> impl Iterator<Item = ([u8; 4], usize, usize)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let b = data.get(at..at.checked_add(8)?)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = [b[4], b[5], b[6], b[7]];
        let (header, size) = match len {
            0 => (8, data.len() - at), // to the end of the file
            1 => {
                let x = data.get(at + 8..at + 16)?;
                let mut v = [0u8; 8];
                v.copy_from_slice(x);
                (16, usize::try_from(u64::from_be_bytes(v)).ok()?)
            }
            n => (8, n),
        };
        if size < header {
            return None;
        }
        let span = (kind, at + header, at.checked_add(size)?);
        at = span.2;
        Some(span)
    })
}

/// The boxes inside `data` that lie wholly within it, with their contents.
pub(crate) fn boxes(data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    box_spans(data).map_while(|(kind, start, end)| Some((kind, data.get(start..end)?)))
}

/// The ICC profile of a JP2 file: the `colr` box inside `jp2h` with method 2 (restricted ICC) or 3
/// (any ICC). `None` for raw codestreams, enumerated colour spaces, or a header cut short.
pub(crate) fn icc_profile(file: &[u8]) -> Option<Vec<u8>> {
    let (_, header) = boxes(file).find(|(kind, _)| kind == b"jp2h")?;
    boxes(header)
        .filter(|(kind, _)| kind == b"colr")
        .find_map(|(_, colr)| match colr.first() {
            Some(2 | 3) if colr.len() > 3 + 128 => Some(colr[3..].to_vec()),
            _ => None,
        })
}

/// The contents of the `jp2c` box of a JP2 file, as far as `file` holds them.
fn codestream(file: &[u8]) -> Option<&[u8]> {
    box_spans(file)
        .find(|(kind, _, _)| kind == b"jp2c")
        .and_then(|(_, start, _)| file.get(start..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceKind;

    #[test]
    fn icc_profile_from_the_colr_box() {
        fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
            let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(kind);
            v.extend_from_slice(body);
            v
        }
        let profile: Vec<u8> = (0..200u8).collect();
        let mut colr = vec![2, 0, 0];
        colr.extend(&profile);
        let enumerated = bx(b"colr", &[1, 0, 0, 0, 0, 0, 16]);
        let header = [
            bx(b"ihdr", &[0; 14]),
            enumerated.clone(),
            bx(b"colr", &colr),
        ]
        .concat();
        let file = [
            b"\0\0\0\x0cjP  \r\n\x87\n".to_vec(),
            bx(b"ftyp", b"jp2 \0\0\0\0jp2 "),
            bx(b"jp2h", &header),
            bx(b"jp2c", &[0xFF, 0x4F]),
        ]
        .concat();
        assert_eq!(icc_profile(&file), Some(profile));
        let plain = [bx(b"jp2h", &[bx(b"ihdr", &[0; 14]), enumerated].concat())].concat();
        assert_eq!(icc_profile(&plain), None);
        assert_eq!(icc_profile(&[0xFF, 0x4F, 0xFF, 0x51]), None);
        assert_eq!(icc_profile(&file[..40]), None);
    }

    fn j2k(w: u32, h: u32, levels: u8) -> Vec<u8> {
        j2k_tiles(w, h, levels, 256)
    }

    fn j2k_tiles(w: u32, h: u32, levels: u8, tile: u32) -> Vec<u8> {
        let mut v = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 47, 0, 0];
        for n in [w, h, 0, 0, tile, tile, 0, 0] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&[0, 3, 7, 1, 1, 7, 1, 1, 7, 1, 1]);
        v.extend_from_slice(&[0xFF, 0x52, 0, 12, 0, 0, 0, 1, 1, levels, 4, 4, 0, 0]);
        v.extend_from_slice(&[0xFF, 0x90, 0, 10]);
        v
    }

    #[test]
    fn reads_size_and_levels_from_j2k_and_jp2() {
        let cs = j2k(6000, 4000, 5);
        let want = Some(Jp2Header {
            width: 6000,
            height: 4000,
            levels: 5,
            x0: 0,
            y0: 0,
            dx: 1,
            dy: 1,
            ref_x1: 6000,
            ref_y1: 4000,
            single_tile: false,
        });
        assert_eq!(SourceKind::sniff(&cs), SourceKind::Jp2);
        assert_eq!(read_header(&cs), want);
        let mut jp2 = b"\0\0\0\x0cjP  \r\n\x87\n".to_vec();
        jp2.extend_from_slice(&[0, 0, 0, 20]);
        jp2.extend_from_slice(b"ftypjp2 \0\0\0\0jp2 ");
        jp2.extend_from_slice(&((cs.len() + 8) as u32).to_be_bytes());
        jp2.extend_from_slice(b"jp2c");
        jp2.extend_from_slice(&cs);
        assert_eq!(SourceKind::sniff(&jp2), SourceKind::Jp2);
        assert_eq!(read_header(&jp2), want);
        let tiled = read_header(&j2k_tiles(6000, 4000, 5, 4000)).map(|h| h.single_tile);
        assert_eq!(tiled, Some(false), "4000 px tiles: two columns");
        let untiled = read_header(&j2k_tiles(6000, 4000, 5, 6000)).map(|h| h.single_tile);
        assert_eq!(untiled, Some(true));
    }

    #[test]
    fn a_codestream_with_every_component_subsampled_is_as_big_as_its_finest_component() {
        // p0_02's shape: one component, XRsiz 2, on a 127x126 grid from an odd origin.
        let mut cs = j2k(127, 126, 3);
        cs[16..20].copy_from_slice(&3u32.to_be_bytes());
        cs[40..42].copy_from_slice(&1u16.to_be_bytes());
        cs[43] = 2;
        let h = read_header(&cs).expect("header");
        assert_eq!((h.x0, h.width, h.height, h.dx, h.dy), (2, 62, 126, 2, 1));
        assert_eq!((h.ref_x1, h.ref_y1), (127, 126));
        // Mixed subsampling: the full-size component decides (p0_06).
        let mut mixed = j2k(100, 80, 3);
        mixed[46..48].copy_from_slice(&[2, 2]);
        let mixed = read_header(&mixed).map(|h| (h.dx, h.width));
        assert_eq!(mixed, Some((1, 100)));
        cs[43] = 0;
        assert_eq!(read_header(&cs), None, "XRsiz 0 is no codestream");
    }

    proptest::proptest! {
        /// Any bytes, raw or behind a JP2 signature: an answer, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
                        cut in 0usize..120) {
            let _ = read_header(&bytes);
            let mut cs = j2k(100, 80, 3);
            cs.truncate(cut.min(cs.len()));
            cs.extend_from_slice(&bytes);
            let _ = read_header(&cs);
            let mut jp2 = b"\0\0\0\x0cjP  \r\n\x87\n".to_vec();
            jp2.extend_from_slice(&bytes);
            let _ = read_header(&jp2);
        }
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(read_header(b""), None);
        assert_eq!(read_header(&[0xFF, 0x4F, 0xFF, 0x51, 0, 41]), None);
        let mut cut = j2k(10, 10, 2);
        cut.truncate(20);
        assert_eq!(read_header(&cut), None);
        let mut zero = j2k(0, 10, 2);
        zero.truncate(60);
        assert_eq!(read_header(&zero), None);
        assert_eq!(read_header(b"\0\0\0\x0cjP  \r\n\x87\n\0\0\0\x01jp2c"), None);
    }
}
