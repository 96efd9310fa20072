//! Sources: identifier -> a file inside the image root, its fingerprint, and its size read from the
//! header alone (no pixels decoded).
//!
//! Containment is enforced twice: identifiers with `..`, `.`, empty components or backslashes are
//! refused before any file-system call, and every candidate is canonicalised (resolving symlinks) and
//! must still lie under the canonical root, so a symlink pointing out of the root is "not found".
//! All functions here block; callers run them off the async threads.

pub mod jp2;
pub mod orientation;
pub mod tiff;

use crate::error::{Error, Result};
use crate::iiif::canonical::ImageSize;
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Extensions tried, in order, after the identifier itself.
pub const EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "tif", "tiff", "webp", "gif", "jp2", "j2k",
];

/// What identifies one version of a source file: a replaced or rewritten file changes at least one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// File length in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Inode number (a file replaced by rename gets a new one).
    pub inode: u64,
}

impl Fingerprint {
    /// The fingerprint of a file's metadata.
    pub fn of(meta: &fs::Metadata) -> Fingerprint {
        Fingerprint {
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }

    /// Modification time as a `SystemTime` (for `Last-Modified`).
    pub fn modified(&self) -> std::time::SystemTime {
        let secs = (self.mtime_ns.div_euclid(1_000_000_000)).clamp(0, i128::from(u64::MAX)) as u64;
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }
}

/// A located source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Canonical path, inside the root.
    pub path: PathBuf,
    /// Fingerprint at the time it was located.
    pub fingerprint: Fingerprint,
}

/// Limits checked before any pixel is decoded.
#[derive(Clone, Copy, Debug)]
pub struct SourceLimits {
    /// Largest source area in pixels.
    pub max_source_pixels: u64,
    /// Largest source file in bytes.
    pub max_source_bytes: u64,
}

/// The image root.
#[derive(Clone, Debug)]
pub struct Sources {
    root: PathBuf,
}

/// Check that an identifier can only name a path below the root.
pub fn check_identifier(identifier: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::BadIdentifier {
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

impl Sources {
    /// Open the image root (it must exist).
    pub fn new(root: &Path) -> io::Result<Sources> {
        Ok(Sources {
            root: fs::canonicalize(root)?,
        })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Find the file for `identifier`: the identifier itself, else with each of [`EXTENSIONS`].
    pub fn locate(&self, identifier: &str) -> Result<SourceFile> {
        check_identifier(identifier)?;
        let exact = self.root.join(identifier);
        let mut candidates = vec![exact.clone()];
        for ext in EXTENSIONS {
            let mut name = exact.clone().into_os_string();
            name.push(".");
            name.push(ext);
            candidates.push(PathBuf::from(name));
        }
        for candidate in candidates {
            let Ok(path) = fs::canonicalize(&candidate) else {
                continue;
            };
            if !path.starts_with(&self.root) {
                // A symlink out of the root: treated exactly like a missing file.
                continue;
            }
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    return Ok(SourceFile {
                        fingerprint: Fingerprint::of(&meta),
                        path,
                    });
                }
                _ => continue,
            }
        }
        Err(Error::NotFound(identifier.to_owned()))
    }

    /// Every identifier under the root (files with a known extension), sorted.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                let ft = entry.file_type()?;
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let ext = path
                        .extension()
                        .and_then(|e| e.to_str())
                        .map(str::to_ascii_lowercase);
                    if ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
                        if let Ok(rel) = path.with_extension("").strip_prefix(&self.root) {
                            if let Some(s) = rel.to_str() {
                                out.push(s.to_owned());
                            }
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// What the probe learns from a source's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The displayed size (after EXIF orientation).
    pub size: ImageSize,
    /// The file's own tile width for a pyramidal tiled TIFF with square tiles (info.json then
    /// advertises it, so a viewer's tiles are the stored ones), else `None`.
    pub tile: Option<u32>,
}

/// Bumped when the probe learns to read something new, so cached probes of old versions are redone.
pub const PROBE_VERSION: u32 = 2;

/// Read the image's size from its header, then check the source limits; no pixel is decoded.
pub fn probe(file: &SourceFile, limits: &SourceLimits) -> Result<Probe> {
    if file.fingerprint.len > limits.max_source_bytes {
        return Err(Error::SourceTooLarge(format!(
            "{} bytes, above max_source_bytes ({})",
            file.fingerprint.len, limits.max_source_bytes
        )));
    }
    let f = fs::File::open(&file.path)
        .map_err(|e| Error::Internal(format!("cannot read the source: {e}")))?;
    // EXIF sits before the pixels, in the first few kilobytes.
    let mut head = vec![0u8; 128 * 1024];
    let n = f.read_at(&mut head, 0).unwrap_or(0);
    head.truncate(n);
    let mut tile = None;
    let (width, height) = match tiff::read_pyramid(&f)? {
        Some(p) => {
            let l = &p.levels[0];
            if l.tile_width == l.tile_height {
                tile = Some(l.tile_width);
            }
            (l.width, l.height)
        }
        None if jp2::is_jpeg2000(&head) => {
            let h = jp2::read_header(&head)
                .ok_or_else(|| Error::Undecodable("unreadable JPEG 2000 header".into()))?;
            (h.width, h.height)
        }
        None => {
            let reader = image::ImageReader::open(&file.path)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| Error::Internal(format!("cannot read the source: {e}")))?;
            let (w, h) = reader
                .into_dimensions()
                .map_err(|e| Error::Undecodable(e.to_string()))?;
            orientation::jpeg_orientation(&head).display_size(w, h)
        }
    };
    if width == 0 || height == 0 {
        return Err(Error::Undecodable("the image has no pixels".into()));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_source_pixels {
        return Err(Error::SourceTooLarge(format!(
            "{width}x{height} = {pixels} pixels, above max_source_pixels ({})",
            limits.max_source_pixels
        )));
    }
    Ok(Probe {
        size: ImageSize { width, height },
        tile,
    })
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
    fn locate_and_symlinks() -> std::io::Result<()> {
        let outside = tempfile::tempdir()?;
        let root = tempfile::tempdir()?;
        fs::write(outside.path().join("secret.png"), b"x")?;
        fs::create_dir(root.path().join("sub"))?;
        fs::write(root.path().join("sub/img.png"), b"x")?;
        std::os::unix::fs::symlink(
            outside.path().join("secret.png"),
            root.path().join("leak.png"),
        )?;
        let sources = Sources::new(root.path())?;
        assert!(sources.locate("sub/img").is_ok());
        assert!(sources.locate("sub/img.png").is_ok());
        assert!(matches!(sources.locate("leak"), Err(Error::NotFound(_))));
        assert!(matches!(sources.locate("nothing"), Err(Error::NotFound(_))));
        assert_eq!(
            sources.list()?,
            vec!["sub/img".to_string()],
            "symlinks are not listed"
        );
        Ok(())
    }
}
