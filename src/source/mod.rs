//! Sources: where the images live, behind one trait ([`Backend`]), and the first bytes that tell
//! their kinds apart (`SourceKind`); the format readers are `crate::formats`'.
//!
//! A backend finds the object an identifier names ([`Backend::locate`]), names the object's
//! version with an opaque [`Fingerprint`] (a replaced object gets a new one, and with it new
//! derivative keys), lists identifiers, and reads bytes at offsets ([`ObjectReader`]). Nothing
//! else in iiifd touches a source's storage: the renderer, the format readers and every
//! cache take a reader and a fingerprint, never a path or a file.
//! Backends, one file each: `fs` (a directory, the default), `s3` (an S3-compatible bucket),
//! `http` (a URL template) and [`memory`] (for tests, and to prove nothing reaches for the file
//! system behind a backend's back). The two remote ones share `remote`: version checks at most
//! every `source.revalidate_secs`, a block cache for ranged reads, and a disk cache for objects that
//! are read whole.
//!
//! Every call blocks; callers run them off the async threads.

pub(crate) mod fs;
pub(crate) mod http;
pub mod memory;
pub(crate) mod remote;
pub(crate) mod s3;

use crate::metrics::Histogram;
use std::fmt;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

/// Extensions tried, in order, after the identifier itself.
pub(crate) const EXTENSIONS: [&str; 11] = [
    "jpg", "jpeg", "png", "tif", "tiff", "webp", "gif", "jp2", "j2k", "jph", "j2c",
];

/// Why a source could not be found, read or understood.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No object has this identifier.
    #[error("no image with identifier '{}'", crate::iiif::parse::printable(.0))]
    NotFound(String),
    /// The identifier cannot name an object inside the source (`..`, backslashes, ...).
    #[error("invalid identifier '{}': {reason}", crate::iiif::parse::printable(.identifier))]
    BadIdentifier {
        /// The identifier as decoded.
        identifier: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Reading the backend failed.
    #[error("cannot read the source: {0}")]
    Io(io::Error),
    /// The object exceeds `limits.max_source_pixels` or `limits.max_source_bytes`.
    #[error("the source image is too large for this server: {0}")]
    TooLarge(String),
    /// A valid image in a variant this server does not read.
    #[error("this server cannot render this source image: {0}")]
    Unsupported(String),
    /// Corrupt, truncated, or not an image.
    #[error("the source image could not be decoded: {0}")]
    Undecodable(String),
    /// A remote backend could not be reached, refused the request or answered with an error.
    #[error("the {backend} source is unavailable: {reason}")]
    Unavailable {
        /// The backend's kind (`s3`, `http`).
        backend: &'static str,
        /// What went wrong (never a credential).
        reason: String,
    },
    /// A remote backend did not answer within `source.timeout_secs`.
    #[error("the {backend} source did not answer within {secs} s")]
    Timeout {
        /// The backend's kind.
        backend: &'static str,
        /// The deadline.
        secs: u64,
    },
}

impl From<io::Error> for SourceError {
    /// A remote backend's failure travels through [`ObjectReader::read_at`] inside an I/O error;
    /// it comes out as itself (502, 504), not as a local I/O failure.
    fn from(e: io::Error) -> SourceError {
        if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
            if let Some(Ok(inner)) = e.into_inner().map(|b| b.downcast::<SourceError>()) {
                return *inner;
            }
            return SourceError::Io(io::Error::other("a remote read failed"));
        }
        SourceError::Io(e)
    }
}

impl SourceError {
    /// An I/O error while parsing a source: the remote failure it carries, or `otherwise`.
    pub(crate) fn from_read(
        e: io::Error,
        otherwise: impl FnOnce(io::Error) -> SourceError,
    ) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
            SourceError::from(e)
        } else {
            otherwise(e)
        }
    }
}

/// Request counters of a remote backend (exported by the app as `iiifd_source_*`).
#[derive(Default)]
pub struct SourceCounters {
    /// Version checks (HEAD) made.
    pub heads: AtomicU64,
    /// Reads (ranged or whole GETs) made.
    pub gets: AtomicU64,
    /// Listings made.
    pub lists: AtomicU64,
    /// Writes made (the store's shared tier).
    pub puts: AtomicU64,
    /// Removals made (the store's shared tier).
    pub deletes: AtomicU64,
    /// Body bytes received.
    pub bytes: AtomicU64,
    /// Requests that failed (refused, unreachable, 5xx) or timed out.
    pub errors: AtomicU64,
    /// Requests that passed their deadline.
    pub timeouts: AtomicU64,
    /// Duration of each request.
    pub latency: Histogram,
    /// Blocks of ranged reads found in memory.
    pub block_hits: AtomicU64,
    /// Blocks fetched.
    pub block_misses: AtomicU64,
    /// Whole objects found in the disk cache.
    pub cache_hits: AtomicU64,
    /// Whole objects downloaded.
    pub cache_misses: AtomicU64,
}

/// What identifies one version of an object, opaque to everything but its backend: it names the
/// object inside the backend (never a machine-local detail such as an inode, so nodes serving the
/// same collection agree) and its version (size and modification time, or an ETag).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(Arc<str>);

impl Fingerprint {
    /// A fingerprint from a backend's description of an object version.
    pub fn new(text: impl Into<Arc<str>>) -> Fingerprint {
        Fingerprint(text.into())
    }

    /// The text it was made from (for keys and cache names).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0)
    }
}

/// One object of a backend, at the version it had when it was located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// The backend's name for it (a path below the root, a key below the prefix).
    pub name: String,
    /// Its version.
    pub fingerprint: Fingerprint,
    /// Its length in bytes.
    pub len: u64,
    /// When it last changed, if the backend knows (`Last-Modified`).
    pub modified: Option<SystemTime>,
    /// The page of a multi-page object this is (`crate::pages`): `None` for a whole object, which
    /// is all a backend itself ever returns.
    pub page: Option<Page>,
}

/// One page of a multi-page object, served under an identifier of its own (`crate::pages`). The
/// object's `fingerprint` is the page's (the whole object's plus the page number, so every cache
/// keyed by fingerprint tells pages apart); `whole` is the object's own, for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// 1 for the first page.
    pub number: u32,
    /// The whole object's fingerprint, as its backend gave it.
    pub whole: Fingerprint,
    /// Bytes laid over the whole object's, (offset, bytes), that make it read as this page alone:
    /// found once when the page is located, not at every open.
    pub patches: Vec<(u64, Vec<u8>)>,
}

/// Random-access reads of one object.
pub trait ObjectReader: Send + Sync {
    /// The object's length in bytes.
    fn size(&self) -> u64;

    /// Read up to `buf.len()` bytes at `offset`; fewer only at the end of the object.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl dyn ObjectReader + '_ {
    /// Fill `buf` from `offset`, or fail with `UnexpectedEof`.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the source ended early",
                ));
            }
            done += n;
        }
        Ok(())
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the object).
    pub(crate) fn read_range(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let len = len.min(self.size().saturating_sub(offset) as usize);
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// The whole object, refusing one longer than `max` bytes.
    pub(crate) fn read_all(&self, max: u64) -> Result<Vec<u8>, SourceError> {
        let len = self.size();
        if len > max {
            return Err(SourceError::TooLarge(format!(
                "{len} bytes, above render.max_decode_bytes ({max})"
            )));
        }
        Ok(self.read_range(0, len as usize)?)
    }

    /// A `Read + Seek + BufRead` view, for decoders that want a stream.
    pub(crate) fn stream(&self) -> io::BufReader<Stream<'_>> {
        io::BufReader::with_capacity(
            64 << 10,
            Stream {
                reader: self,
                at: 0,
            },
        )
    }
}

/// A cursor over an [`ObjectReader`].
pub(crate) struct Stream<'a> {
    reader: &'a dyn ObjectReader,
    at: u64,
}

impl io::Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl io::Seek for Stream<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let len = self.reader.size() as i128;
        let to = match pos {
            io::SeekFrom::Start(n) => i128::from(n),
            io::SeekFrom::End(d) => len + i128::from(d),
            io::SeekFrom::Current(d) => i128::from(self.at) + i128::from(d),
        };
        self.at = u64::try_from(to)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.at)
    }
}

/// A reader over a local file (the directory backend's objects, the store's tiled copies).
pub(crate) fn file_reader(file: std::fs::File) -> io::Result<Arc<dyn ObjectReader>> {
    let len = file.metadata()?.len();
    Ok(Arc::new(FileReader { file, len }))
}

struct FileReader {
    file: std::fs::File,
    len: u64,
}

impl ObjectReader for FileReader {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }
}

/// Where source images live.
pub trait Backend: Send + Sync {
    /// A short name for logs, metrics and messages: `fs`, `memory`, `s3`, `http`.
    fn kind(&self) -> &'static str;

    /// The object `identifier` names: the identifier itself, then with each of the known
    /// extensions appended. The identifier has passed `check_identifier`.
    fn locate(&self, identifier: &str) -> Result<Object, SourceError>;

    /// The current version of an object located earlier: its new fingerprint if it changed,
    /// `NotFound` if it is gone.
    fn refresh(&self, object: &Object) -> Result<Object, SourceError>;

    /// [`Backend::refresh`] when the answer needs no waiting (it is called on the async threads,
    /// for hits answered from memory): a local `stat`, or a remote version still inside its
    /// revalidation window. `None` when finding out means waiting (a HEAD due): the caller then
    /// takes the blocking way.
    fn refresh_now(&self, _object: &Object) -> Option<Result<Object, SourceError>> {
        None
    }

    /// Whether the service is failing and answers rest on versions remembered from before (a
    /// remote backend whose last version check failed); a local one never is.
    fn outage(&self) -> bool {
        false
    }

    /// Forget what this backend remembers of `identifier`'s absence (a remote backend's recent
    /// HEAD answers): a crawl or the watch has said it exists, so the next lookup asks again.
    fn forget(&self, _identifier: &str) {}

    /// Every identifier the backend holds (names with a known extension, without it), sorted.
    fn list(&self) -> Result<Vec<String>, SourceError>;

    /// Open an object for reading.
    fn open(&self, object: &Object) -> Result<Arc<dyn ObjectReader>, SourceError>;

    /// The extra info.json properties kept beside an image (`{identifier}.json`), as raw bytes, if
    /// the backend keeps them (the directory backend does; remote ones do not yet).
    fn sidecar(&self, _identifier: &str) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(None)
    }

    /// Drop every local copy of remote objects: called after a crash of the machine or the
    /// process, when a copy written just before it may be torn (copies are not fsynced).
    fn forget_copies(&self) -> io::Result<()> {
        Ok(())
    }

    /// The request counters of a remote backend (`None` for local ones).
    fn counters(&self) -> Option<Arc<SourceCounters>> {
        None
    }

    /// The in-memory caches of the backend (a remote one's blocks).
    fn caches(&self) -> Vec<crate::bounded::CacheReport> {
        Vec::new()
    }
}

/// Check that an identifier can only name an object below the source's root.
pub(crate) fn check_identifier(identifier: &str) -> Result<(), SourceError> {
    let bad = |reason| {
        Err(SourceError::BadIdentifier {
            identifier: identifier.to_owned(),
            reason,
        })
    };
    if identifier.contains('\\') {
        return bad("backslashes are not allowed");
    }
    if identifier.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    for component in identifier.split('/') {
        match component {
            "" => {
                return bad(
                    "empty path components (and leading or doubled slashes) are not allowed",
                )
            }
            "." | ".." => return bad("'.' and '..' components are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// The name a listing gives an object: its name without a known extension, or `None` when it
/// has none (not an image this server serves).
pub(crate) fn identifier_of(name: &str) -> Option<&str> {
    let (stem, ext) = name.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    (EXTENSIONS.contains(&ext.as_str()) && !stem.is_empty() && !stem.ends_with('/')).then_some(stem)
}

/// A source's format, from its first bytes: the one sniff everything uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceKind {
    /// JPEG (SOI and a marker).
    Jpeg,
    /// TIFF or BigTIFF, either byte order.
    Tiff,
    /// JPEG 2000: a JP2 file or a raw codestream.
    Jp2,
    /// PNG.
    Png,
    /// GIF87a or GIF89a.
    Gif,
    /// WebP (RIFF/WEBP).
    Webp,
    /// Anything else (the image crate gets a try).
    Other,
}

impl SourceKind {
    /// Bytes enough to tell every kind apart.
    pub(crate) const SNIFF_LEN: usize = 16;

    /// The kind of a source starting with `head`.
    pub(crate) fn sniff(head: &[u8]) -> SourceKind {
        match head {
            [0xFF, 0xD8, 0xFF, ..] => SourceKind::Jpeg,
            [b'I', b'I', 42, 0, ..]
            | [b'M', b'M', 0, 42, ..]
            | [b'I', b'I', 43, 0, ..]
            | [b'M', b'M', 0, 43, ..] => SourceKind::Tiff,
            // The JP2 signature box, or a raw codestream's SOC + SIZ.
            [0, 0, 0, 0x0c, b'j', b'P', b' ', b' ', 0x0d, 0x0a, 0x87, 0x0a, ..]
            | [0xFF, 0x4F, 0xFF, 0x51, ..] => SourceKind::Jp2,
            [0x89, b'P', b'N', b'G', ..] => SourceKind::Png,
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => SourceKind::Gif,
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => SourceKind::Webp,
            _ => SourceKind::Other,
        }
    }

    /// The kind of an object, from its first bytes.
    pub(crate) fn of(reader: &dyn ObjectReader) -> io::Result<SourceKind> {
        let head = reader.read_range(0, SourceKind::SNIFF_LEN)?;
        Ok(SourceKind::sniff(&head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_cannot_escape() {
        for bad in [
            "..",
            "../x",
            "a/../b",
            "/etc/passwd",
            "a//b",
            "a\\b",
            "./a",
            "a/.",
            "a\0b",
        ] {
            assert!(check_identifier(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b", "a.b", "..a", "a..", "[frob]"] {
            assert!(check_identifier(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn kinds_are_sniffed_from_the_first_bytes() {
        let cases: [(&[u8], SourceKind); 9] = [
            (b"\xff\xd8\xff\xe0", SourceKind::Jpeg),
            (b"II*\0\x08\0\0\0", SourceKind::Tiff),
            (b"MM\0+\0\x08\0\0", SourceKind::Tiff),
            (b"\0\0\0\x0cjP  \r\n\x87\n", SourceKind::Jp2),
            (b"\xff\x4f\xff\x51\0", SourceKind::Jp2),
            (b"\x89PNG\r\n\x1a\n", SourceKind::Png),
            (b"GIF89a\x01\0", SourceKind::Gif),
            (b"RIFF\x10\0\0\0WEBPVP8 ", SourceKind::Webp),
            (b"hello", SourceKind::Other),
        ];
        for (head, kind) in cases {
            assert_eq!(SourceKind::sniff(head), kind, "{head:?}");
        }
    }

    #[test]
    fn listed_names_keep_only_images() {
        assert_eq!(identifier_of("a/b.JPG"), Some("a/b"));
        assert_eq!(identifier_of("a/b.tar.gz"), None);
        assert_eq!(identifier_of("noext"), None);
        assert_eq!(identifier_of(".jpg"), None);
    }

    #[test]
    fn readers_read_ranges_and_streams() -> io::Result<()> {
        use std::io::{Read, Seek};
        let mem = memory::MemoryBackend::new();
        mem.insert("x.png", (0u8..=255).collect::<Vec<u8>>());
        let obj = mem.locate("x").map_err(io::Error::other)?;
        let r = mem.open(&obj).map_err(io::Error::other)?;
        assert_eq!(r.read_range(250, 100)?, vec![250, 251, 252, 253, 254, 255]);
        let mut s = r.stream();
        s.seek(io::SeekFrom::End(-2))?;
        let mut two = Vec::new();
        s.read_to_end(&mut two)?;
        assert_eq!(two, vec![254, 255]);
        assert!(matches!(r.read_all(10), Err(SourceError::TooLarge(_))));
        Ok(())
    }
}
