//! The directory backend (`source.kind = "fs"`, the default): identifiers are paths below one
//! directory, with or without their extension.
//!
//! Containment is enforced twice: identifiers with `..`, `.`, empty components or backslashes are
//! refused before any file-system call ([`super::check_identifier`]), and every candidate is
//! canonicalised (resolving symlinks) and must still lie under the canonical root, so a symlink
//! pointing out of the root is "not found". A located file is later re-checked without following
//! symlinks (`lstat`, `O_NOFOLLOW`), so swapping it for a symlink sends it back through `locate`.

use super::{check_identifier, identifier_of, Backend, Fingerprint, Object, ObjectReader};
use super::{SourceError, EXTENSIONS};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory of source images.
#[derive(Debug)]
pub(crate) struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    /// The backend over `root` (it must exist).
    pub(crate) fn new(root: &Path) -> io::Result<FsBackend> {
        Ok(FsBackend {
            root: fs::canonicalize(root)?,
        })
    }

    fn object(&self, name: String, meta: &fs::Metadata) -> Object {
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        Object {
            // The path below the root, size and modification time: the same on every node that
            // holds a copy of the collection (an inode would differ).
            fingerprint: Fingerprint::new(format!("fs:{name}:{}:{mtime_ns}", meta.len())),
            len: meta.len(),
            modified: meta.modified().ok(),
            name,
            page: None,
        }
    }
}

/// Largest sidecar read.
const SIDECAR_MAX: u64 = 64 << 10;

impl Backend for FsBackend {
    fn kind(&self) -> &'static str {
        "fs"
    }

    fn locate(&self, identifier: &str) -> Result<Object, SourceError> {
        check_identifier(identifier)?;
        let exact = self.root.join(identifier);
        let candidates = std::iter::once(exact.clone()).chain(EXTENSIONS.iter().map(|ext| {
            let mut name = exact.clone().into_os_string();
            name.push(".");
            name.push(ext);
            PathBuf::from(name)
        }));
        for candidate in candidates {
            let Ok(path) = fs::canonicalize(&candidate) else {
                continue;
            };
            // A symlink out of the root is treated exactly like a missing file.
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let Some(name) = rel.to_str() else { continue };
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => return Ok(self.object(name.to_owned(), &meta)),
                _ => continue,
            }
        }
        Err(SourceError::NotFound(identifier.to_owned()))
    }

    fn sidecar(&self, identifier: &str) -> Result<Option<Vec<u8>>, SourceError> {
        check_identifier(identifier)?;
        let Ok(path) = fs::canonicalize(self.root.join(format!("{identifier}.json"))) else {
            return Ok(None);
        };
        // Inside the root only, as for images; and small: it is a handful of properties.
        if !path.starts_with(&self.root) {
            return Ok(None);
        }
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() <= SIDECAR_MAX => Ok(Some(fs::read(&path)?)),
            Ok(meta) if meta.is_file() => Err(SourceError::TooLarge(format!(
                "{identifier}.json is {} bytes; a sidecar may have {SIDECAR_MAX}",
                meta.len()
            ))),
            _ => Ok(None),
        }
    }

    fn refresh(&self, object: &Object) -> Result<Object, SourceError> {
        match fs::symlink_metadata(self.root.join(&object.name)) {
            // Unchanged (the fingerprint is made of these two): the object as it was, without
            // formatting its fingerprint again on every hit.
            Ok(meta)
                if meta.is_file()
                    && meta.len() == object.len
                    && object.modified.is_some()
                    && meta.modified().ok() == object.modified =>
            {
                Ok(object.clone())
            }
            Ok(meta) if meta.is_file() => Ok(self.object(object.name.clone(), &meta)),
            _ => Err(SourceError::NotFound(object.name.clone())),
        }
    }

    /// One `stat` of a file the server has just read: answered from the kernel's inode cache in a
    /// microsecond or two, much less than a trip to a blocking thread, and what nginx itself does
    /// on its event loop before sending a file.
    fn refresh_now(&self, object: &Object) -> Option<Result<Object, SourceError>> {
        Some(self.refresh(object))
    }

    fn list(&self) -> Result<Vec<String>, SourceError> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let ft = entry.file_type()?;
                if ft.is_dir() {
                    stack.push(entry.path());
                } else if ft.is_file() {
                    let path = entry.path();
                    let rel = path.strip_prefix(&self.root).ok().and_then(Path::to_str);
                    if let Some(id) = rel.and_then(identifier_of) {
                        out.push(id.to_owned());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn open(&self, object: &Object) -> Result<Arc<dyn ObjectReader>, SourceError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.root.join(&object.name))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => SourceError::NotFound(object.name.clone()),
                // ELOOP: it became a symlink since it was located.
                _ if e.raw_os_error() == Some(libc::ELOOP) => {
                    SourceError::NotFound(object.name.clone())
                }
                _ => SourceError::Io(e),
            })?;
        Ok(super::file_reader(file)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_list_and_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        let root = tempfile::tempdir()?;
        fs::write(outside.path().join("secret.png"), b"x")?;
        fs::create_dir(root.path().join("sub"))?;
        fs::write(root.path().join("sub/img.png"), b"xyz")?;
        std::os::unix::fs::symlink(
            outside.path().join("secret.png"),
            root.path().join("leak.png"),
        )?;
        let b = FsBackend::new(root.path())?;
        let obj = b.locate("sub/img")?;
        assert_eq!((obj.name.as_str(), obj.len), ("sub/img.png", 3));
        assert_eq!(b.locate("sub/img.png")?, obj);
        assert!(!obj
            .fingerprint
            .as_str()
            .contains(&*root.path().to_string_lossy()));
        assert!(matches!(b.locate("leak"), Err(SourceError::NotFound(_))));
        assert!(matches!(b.locate("nothing"), Err(SourceError::NotFound(_))));
        assert!(matches!(
            b.locate("../x"),
            Err(SourceError::BadIdentifier { .. })
        ));
        assert_eq!(
            b.list()?,
            vec!["sub/img".to_string()],
            "symlinks are not listed"
        );
        let r = b.open(&obj)?;
        assert_eq!(r.read_range(1, 10)?, b"yz");
        // Replaced: a new fingerprint. Swapped for a symlink: gone.
        fs::write(root.path().join("sub/img.png"), b"longer")?;
        assert_ne!(b.refresh(&obj)?.fingerprint, obj.fingerprint);
        fs::remove_file(root.path().join("sub/img.png"))?;
        std::os::unix::fs::symlink(
            outside.path().join("secret.png"),
            root.path().join("sub/img.png"),
        )?;
        assert!(matches!(b.refresh(&obj), Err(SourceError::NotFound(_))));
        assert!(matches!(b.open(&obj), Err(SourceError::NotFound(_))));
        assert!(matches!(b.locate("sub/img"), Err(SourceError::NotFound(_))));
        Ok(())
    }
}
