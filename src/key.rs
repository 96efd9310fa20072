//! The derivative key: the name of one rendered image in the store and its strong `ETag`.
//!
//! The only blake3 calls in iiifd: the key, [`content_hash`] of stored bytes, and [`identifier_hash`]
//! (the name of an identifier's list of objects in the store). The key covers everything that
//! determines the output bytes: the source
//! file's fingerprint (so a replaced file gets new keys), the version-independent canonical request
//! ([`CanonicalRequest::key_material`]) and the encoder settings. The derive-key context string is
//! versioned: changing what goes into a key means changing the context, which retires every old key.

use crate::iiif::canonical::CanonicalRequest;
use crate::source::Fingerprint;
use std::fmt;

/// blake3 `derive_key` context. Bump the date/version when the key's inputs change meaning.
const CONTEXT: &str = "iiifd 2026-12-01 derivative key v2";
/// blake3 `derive_key` context of tiled copies.
const COPY_CONTEXT: &str = "iiifd 2026-12-01 tiled copy key v2";

/// A 256-bit derivative key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DerivativeKey([u8; 32]);

impl DerivativeKey {
    /// The key of `request` rendered from the source with `fingerprint` by an encoder described by
    /// `encoder` (e.g. `"jpeg q=85"`).
    pub(crate) fn derive(
        fingerprint: &Fingerprint,
        request: &CanonicalRequest,
        encoder: &str,
    ) -> DerivativeKey {
        let mut h = blake3::Hasher::new_derive_key(CONTEXT);
        // Length-prefixed strings: no two inputs share an encoding.
        for part in [
            fingerprint.as_str(),
            request.key_material().as_str(),
            encoder,
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        DerivativeKey(*h.finalize().as_bytes())
    }

    /// The key of the tiled copy of the source version `fingerprint`, made as `description` says
    /// (see `render::tiled_copy`). A separate context, so it can never equal a derivative's key.
    pub(crate) fn tiled_copy(fingerprint: &Fingerprint, description: &str) -> DerivativeKey {
        let mut h = blake3::Hasher::new_derive_key(COPY_CONTEXT);
        for part in [fingerprint.as_str().as_bytes(), description.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        DerivativeKey(*h.finalize().as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub(crate) fn to_hex(self) -> String {
        let mut s = String::with_capacity(64);
        push_hex(&mut s, &self.0);
        s
    }

    /// Parse the 64-character hex form.
    pub(crate) fn from_hex(s: &str) -> Option<DerivativeKey> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(DerivativeKey(out))
    }

    /// The raw 32 bytes (the index's key).
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From the raw 32 bytes.
    #[cfg(test)]
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<DerivativeKey> {
        bytes.try_into().ok().map(DerivativeKey)
    }

    /// The strong entity tag: the quoted hex key.
    pub(crate) fn etag(&self) -> String {
        let mut s = String::with_capacity(66);
        s.push('"');
        push_hex(&mut s, &self.0);
        s.push('"');
        s
    }
}

/// Append `bytes` in lower-case hex. (Per byte `format!` was 32 allocations for every hit's ETag.)
fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
}

/// blake3 of a stored file's bytes: what the store checks a file against on read.
pub(crate) type ContentHash = [u8; 32];

/// [`ContentHash`] of `bytes`.
pub(crate) fn content_hash(bytes: &[u8]) -> ContentHash {
    *blake3::hash(bytes).as_bytes()
}

/// A strong entity tag for a generated document (info.json): the first 128 bits of its blake3, so the
/// tag changes whenever the text does, whatever changed it (source, configuration, request headers).
pub(crate) fn document_etag(bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes);
    let hex = hash.to_hex();
    format!("\"{}\"", &hex.as_str()[..32])
}

/// The CDN cache tag of every answer for `identifier` (`cdn.tag_header`), and the tag a purge of it
/// names: 64 bits of its blake3, in hex, so any identifier makes a short tag of safe characters.
pub(crate) fn cdn_tag(identifier: &str) -> String {
    let hash = blake3::hash(identifier.as_bytes());
    format!("iiif-{}", &hash.to_hex().as_str()[..16])
}

/// [`content_hash`] of everything `reader` yields (for objects written as a stream).
pub(crate) fn content_hash_reader(reader: &mut impl std::io::Read) -> std::io::Result<ContentHash> {
    let mut h = blake3::Hasher::new();
    std::io::copy(reader, &mut h)?;
    Ok(*h.finalize().as_bytes())
}

/// A fixed-length file name for an identifier (128 bits of blake3, hex): identifiers may hold any
/// character and be long, file names may not.
pub(crate) fn identifier_hash(identifier: &str) -> String {
    let h = blake3::Hasher::new_derive_key("iiifd 2026-12-01 identifier file name v1")
        .update(identifier.as_bytes())
        .finalize();
    h.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The file name of a remote source version's local copy (its fingerprint's blake3, hex).
pub(crate) fn source_copy_name(fingerprint: &Fingerprint) -> String {
    blake3::Hasher::new_derive_key("iiifd 2026-12-01 source copy file name v1")
        .update(fingerprint.as_str().as_bytes())
        .finalize()
        .to_hex()
        .to_string()
}

impl fmt::Debug for DerivativeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DerivativeKey({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iiif::canonical::ImageSize;
    use crate::iiif::parse::parse_image_params;
    use crate::iiif::{ApiVersion, Format, Limits};

    #[test]
    fn hex_and_etag_spell_every_byte() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xA5;
        }
        let key = DerivativeKey(bytes);
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key.to_hex(), want);
        assert_eq!(key.etag(), format!("\"{want}\""));
        assert_eq!(DerivativeKey::from_hex(&key.to_hex()), Some(key));
    }

    fn req(v: ApiVersion, size: &str) -> CanonicalRequest {
        let r =
            parse_image_params(v, "full", size, "0", "default.jpg", Format::Jpg).expect("valid");
        CanonicalRequest::resolve(
            &r,
            ImageSize {
                width: 800,
                height: 600,
            },
            &Limits::default(),
        )
        .expect("valid")
    }

    #[test]
    fn keys_follow_pixels_and_source() {
        let fp = Fingerprint::new("fs:a.jpg:10:5");
        let a = DerivativeKey::derive(&fp, &req(ApiVersion::V3, "400,300"), "jpeg q=85");
        let b = DerivativeKey::derive(&fp, &req(ApiVersion::V2, "400,"), "jpeg q=85");
        assert_eq!(a, b, "v2 w, and v3 w,h of the same pixels share a key");
        let replaced = Fingerprint::new("fs:a.jpg:10:6");
        assert_ne!(
            a,
            DerivativeKey::derive(&replaced, &req(ApiVersion::V3, "400,300"), "jpeg q=85")
        );
        assert_ne!(
            a,
            DerivativeKey::derive(&fp, &req(ApiVersion::V3, "400,300"), "jpeg q=90")
        );
        assert_eq!(DerivativeKey::from_hex(&a.to_hex()), Some(a));
        assert_eq!(a.etag().len(), 66);
    }
}
