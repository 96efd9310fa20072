//! The ICC profile embedded in a JPEG: `APP2` segments named `ICC_PROFILE`, each carrying a sequence
//! number, the count of segments and a piece of the profile (ICC.1 Annex B.4). Read through the
//! backend, segment by segment, up to the start of the scan: the entropy-coded data is never read.
//! (PNG, WebP and flat TIFF profiles come from their decoders; pyramidal TIFF's from its directory.)

use crate::source::ObjectReader;

/// Segments before the scan are at most this many; a file with more is not worth reading further.
const MAX_SEGMENTS: usize = 512;
/// Profiles larger than this are ignored (real ones are kilobytes, LUT-based ones below 1 MiB).
const MAX_PROFILE: usize = 4 << 20;

/// The profile in the JPEG `file`, or `None` when it has none or its pieces do not add up (a bad ICC
/// marker is ignored, as browsers do: the image is shown untagged rather than refused).
pub(crate) fn jpeg_profile(file: &dyn ObjectReader) -> Option<Vec<u8>> {
    let mut pieces: Vec<(u8, u8, Vec<u8>)> = Vec::new();
    let mut at = 2u64;
    let mut head = [0u8; 4];
    let mut soi = [0u8; 2];
    if file.read_at(&mut soi, 0).ok()? != 2 || soi != [0xFF, 0xD8] {
        return None;
    }
    let mut total = 0usize;
    for _ in 0..MAX_SEGMENTS {
        if file.read_at(&mut head, at).ok()? < 4 || head[0] != 0xFF {
            break;
        }
        let marker = head[1];
        if marker == 0xFF {
            // Fill byte before a marker.
            at += 1;
            continue;
        }
        // Start of scan, end of image, or a frame that begins entropy-coded data: no more headers.
        if matches!(marker, 0xDA | 0xD9) {
            break;
        }
        let len = u16::from_be_bytes([head[2], head[3]]) as u64;
        if len < 2 {
            break;
        }
        if marker == 0xE2 && len >= 2 + 14 {
            let mut body = vec![0u8; len as usize - 2];
            if file.read_at(&mut body, at + 4).ok()? == body.len()
                && body.starts_with(b"ICC_PROFILE\0")
            {
                total += body.len() - 14;
                if total > MAX_PROFILE {
                    return None;
                }
                pieces.push((body[12], body[13], body[14..].to_vec()));
            }
        }
        at += 2 + len;
    }
    assemble(pieces)
}

/// The profile from its numbered pieces (1-based sequence numbers, `count` in every piece): `None`
/// unless exactly pieces 1..=count are present once each.
fn assemble(mut pieces: Vec<(u8, u8, Vec<u8>)>) -> Option<Vec<u8>> {
    let count = pieces.first()?.1;
    if count == 0 || pieces.len() != usize::from(count) || pieces.iter().any(|p| p.1 != count) {
        return None;
    }
    pieces.sort_by_key(|p| p.0);
    if pieces
        .iter()
        .enumerate()
        .any(|(i, p)| usize::from(p.0) != i + 1)
    {
        return None;
    }
    Some(pieces.into_iter().flat_map(|p| p.2).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::memory::bytes_reader;

    fn app2(seq: u8, count: u8, data: &[u8]) -> Vec<u8> {
        let mut body = b"ICC_PROFILE\0".to_vec();
        body.extend([seq, count]);
        body.extend_from_slice(data);
        let mut seg = vec![0xFF, 0xE2];
        seg.extend(((body.len() + 2) as u16).to_be_bytes());
        seg.extend(body);
        seg
    }

    fn jpeg(segments: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        // An APP0 before, as JFIF files have.
        v.extend([0xFF, 0xE0, 0x00, 0x04, 0x4A, 0x46]);
        for s in segments {
            v.extend(s);
        }
        v.extend([0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9]);
        v
    }

    #[test]
    fn pieces_are_joined_in_sequence_order() {
        let file = jpeg(&[app2(2, 2, b"world"), app2(1, 2, b"hello ")]);
        assert_eq!(
            jpeg_profile(&*bytes_reader(file)),
            Some(b"hello world".to_vec())
        );
    }

    #[test]
    fn broken_markers_are_ignored() {
        // A missing piece, a duplicated piece, a count of zero, no profile, not a JPEG.
        for segments in [
            vec![app2(1, 2, b"a")],
            vec![app2(1, 2, b"a"), app2(1, 2, b"b")],
            vec![app2(1, 0, b"a")],
            vec![],
        ] {
            assert_eq!(jpeg_profile(&*bytes_reader(jpeg(&segments))), None);
        }
        assert_eq!(jpeg_profile(&*bytes_reader(b"\x89PNG\r\n".to_vec())), None);
        // A segment length running past the end of the file.
        let mut truncated = jpeg(&[app2(1, 1, b"abc")]);
        truncated.truncate(12);
        assert_eq!(jpeg_profile(&*bytes_reader(truncated)), None);
    }
}
