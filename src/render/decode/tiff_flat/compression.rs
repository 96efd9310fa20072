//! The compressions of flat TIFF strips and tiles this decoder undoes itself: none, LZW and
//! Deflate (through `weezl`/`flate2`), PackBits and CCITT fax (T.4 and T.6, through `fax`), each
//! capped at what the image can hold.

use super::*;

/// A chunk's stored bytes decompressed: `rows` rows of `row_bytes`, or fewer when the data ends
/// early. Never more than the chunk holds (a decompression bomb stops there).
pub(super) fn decompress(
    f: &Flat,
    mut raw: Vec<u8>,
    row_bytes: usize,
    rows: usize,
    max: u64,
) -> Result<Vec<u8>> {
    if f.lsb_first {
        raw.iter_mut().for_each(|b| *b = b.reverse_bits());
    }
    let want = row_bytes * rows;
    if want as u64 > max {
        return Err(RenderError::TooLarge(format!(
            "a TIFF chunk of {want} bytes would exceed render.max_decode_bytes ({max})"
        )));
    }
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        RenderError::Undecodable(format!("TIFF {what} data: {e}"))
    };
    let mut out = Capped::new(want);
    match f.compression {
        1 => {
            raw.truncate(want);
            return Ok(raw);
        }
        2..=4 => return ccitt(f, &raw, rows),
        5 => {
            // TIFF's LZW grows its code width one code early ("early change"). Files from
            // libtiff before 1991 ("compat" LZW) put codes LSB first and grow the width as GIF
            // does; libtiff tells them by their first code, a clear (256), read in that order:
            // a zero byte, then a byte with its low bit set.
            let compat = raw.len() >= 2 && raw[0] == 0 && raw[1] & 1 == 1;
            let mut lzw = if compat {
                weezl::decode::Decoder::new(weezl::BitOrder::Lsb, 8)
            } else {
                weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
            };
            let result = lzw.into_stream(&mut out).decode_all(&raw[..]);
            if let Err(e) = result.status {
                // Data past the chunk's size is what `Capped` refuses: what came before is kept.
                if out.buf.len() < want {
                    return Err(corrupt("LZW", &e));
                }
            }
        }
        8 | 32946 => {
            let mut z = flate2::write::ZlibDecoder::new(&mut out);
            if let Err(e) = z.write_all(&raw).and_then(|()| z.finish().map(|_| ())) {
                if out.buf.is_empty() {
                    return Err(corrupt("Deflate", &e));
                }
            }
        }
        32773 => packbits(&raw, &mut out.buf, want),
        34925 => {
            let mut xz = lzma_rust2::XzReader::new(&raw[..], true);
            if let Err(e) = std::io::copy(&mut xz, &mut out) {
                if out.buf.is_empty() {
                    return Err(corrupt("LZMA", &e));
                }
            }
        }
        c => return Err(RenderError::Unsupported(format!("TIFF compression {c}"))),
    }
    Ok(out.buf)
}

/// A writer that keeps at most `cap` bytes and fails after: decompressors stop at the chunk's size.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped {
            buf: Vec::with_capacity(cap),
            cap,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.cap - self.buf.len();
        if room == 0 && !data.is_empty() {
            return Err(std::io::Error::other("more data than the chunk holds"));
        }
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// PackBits (Apple's run-length coding), up to `want` bytes.
pub(super) fn packbits(mut data: &[u8], out: &mut Vec<u8>, want: usize) {
    while out.len() < want {
        let Some((&n, rest)) = data.split_first() else {
            return;
        };
        let n = n as i8;
        data = rest;
        if n >= 0 {
            let len = (n as usize + 1).min(data.len());
            out.extend_from_slice(&data[..len]);
            data = &data[len..];
        } else if n != -128 {
            let Some((&b, rest)) = data.split_first() else {
                return;
            };
            data = rest;
            out.extend(std::iter::repeat_n(b, (1 - isize::from(n)) as usize));
        }
    }
    out.truncate(want);
}

/// CCITT bilevel coding (modified Huffman, Group 3 one-dimensional, Group 4) to rows of packed bits,
/// 1 where the stored sample is 1: black under WhiteIsZero, white under BlackIsZero.
fn ccitt(f: &Flat, raw: &[u8], rows: usize) -> Result<Vec<u8>> {
    use fax::Color;
    let width = f.width as usize;
    let row_bytes = width.div_ceil(8);
    let mut out = vec![0u8; row_bytes * rows];
    // The fax decoders name colours; the sample value of black depends on the interpretation.
    let one = if f.photometric == 1 {
        Color::White
    } else {
        Color::Black
    };
    let mut y = 0usize;
    let mut put = |pels: &mut dyn Iterator<Item = Color>| {
        if y >= rows {
            return;
        }
        let row = &mut out[y * row_bytes..(y + 1) * row_bytes];
        for (x, c) in pels.enumerate().take(width) {
            if c == one {
                row[x / 8] |= 0x80 >> (x % 8);
            }
        }
        y += 1;
    };
    let w16 = u16::try_from(width)
        .map_err(|_| RenderError::Unsupported("CCITT image wider than 65535 pixels".into()))?;
    if f.compression == 4 {
        let h16 = u16::try_from(rows).unwrap_or(u16::MAX);
        fax::decoder::decode_g4(raw.iter().copied(), w16, Some(h16), |t| {
            put(&mut fax::decoder::pels(t, w16));
        });
    } else {
        let mut runs = Vec::with_capacity(64);
        let mut bits = BitCursor { data: raw, at: 0 };
        for _ in 0..rows {
            if f.compression == 2 {
                // Modified Huffman: every row starts on a byte boundary, no end-of-line codes.
                bits.at = bits.at.div_ceil(8) * 8;
            } else {
                bits.skip_eol();
            }
            if !one_dimensional_row(&mut bits, width, &mut runs) {
                break;
            }
            put(&mut fax::decoder::pels(&runs, w16));
        }
    }
    Ok(out)
}

/// A bit position in a byte slice, for the one-dimensional CCITT codes; reads past the end as 0.
struct BitCursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl BitCursor<'_> {
    fn bit(&self, k: usize) -> u16 {
        self.data
            .get(k / 8)
            .map_or(0, |b| u16::from((b >> (7 - k % 8)) & 1))
    }

    fn left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.at)
    }

    /// Skip fill bits and an end-of-line code (eleven or more zeros, then a one) if one is next.
    fn skip_eol(&mut self) {
        let zeros = (self.at..self.data.len() * 8)
            .take_while(|&k| self.bit(k) == 0)
            .count();
        if zeros >= 11 && self.at + zeros < self.data.len() * 8 {
            self.at += zeros + 1;
        }
    }
}

impl fax::BitReader for BitCursor<'_> {
    type Error = ();

    fn peek(&self, bits: u8) -> Option<u16> {
        // The last code of a row may be shorter than the table's look-up width: past the end reads
        // as zeros (no code is all zeros, so nothing is invented there).
        if self.left() == 0 {
            return None;
        }
        Some((0..usize::from(bits)).fold(0, |v, k| v << 1 | self.bit(self.at + k)))
    }

    fn consume(&mut self, bits: u8) -> std::result::Result<(), ()> {
        self.at += usize::from(bits);
        Ok(())
    }

    fn bits_to_byte_boundary(&self) -> u8 {
        ((8 - self.at % 8) % 8) as u8
    }
}

/// One row of one-dimensional CCITT runs (white first, alternating), as the positions where the
/// colour changes (what `fax::decoder::pels` reads). `false` when the data ends or breaks first.
fn one_dimensional_row(bits: &mut BitCursor<'_>, width: usize, changes: &mut Vec<u16>) -> bool {
    changes.clear();
    let mut x = 0usize;
    let mut white = true;
    while x < width {
        // A run is any number of make-up codes (64 and up) and one terminating code (below 64).
        let mut run = 0usize;
        loop {
            let code = if white {
                fax::maps::white::decode(bits)
            } else {
                fax::maps::black::decode(bits)
            };
            let Some(code) = code else {
                return false;
            };
            run += usize::from(code);
            if code < 64 {
                break;
            }
        }
        x = (x + run).min(width);
        changes.push(x as u16);
        white = !white;
    }
    true
}
