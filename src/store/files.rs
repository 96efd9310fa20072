//! The object files: the truth of the store. `objects/ab/<key hex>.<ext>`, each written atomically
//! (temp file in `tmp/` on the same file system -> rename; with `store.fsync` also fsync the file
//! before and the directory after), so a file under `objects/` is always complete after a crash of
//! the process: a crash leaves at most a temp file, removed at the next start. Without fsync, a power
//! loss can leave a renamed file with torn content; the blake3 check on read catches it.
//!
//! One level of 256 directories, all made when the store is created: a write never creates a
//! directory. (The first layout, `ab/cd/`, had 65,536 of them, so nearly every write to a young store
//! paid for a `mkdir`, and allocating directory inodes was most of a cold tile's cost on ext4 after
//! a large deletion. 256 directories keep even a 30-million-object store at about 120,000 entries a
//! directory, which ext4's and XFS's hashed directories handle without slowing down.) Stores in the
//! old layout are moved into the new one when opened ([`Files::migrate_legacy`]).
//!
//! Beside the objects, `ids/ab/<identifier hash>.keys` lists, one line each, the objects rendered
//! from one identifier (`<key hex> <ext>`), appended before the object is written. The index does
//! not hold identifiers: a lost index then loses nothing that `purge` needs, and the index's entries
//! stay small. A line whose object was evicted since costs a few bytes until the next purge.
//!
//! Nothing here lists the objects at start-up: [`FileWalk`] visits them one directory entry at a time
//! for the background reconcile, holding one open directory, never a list.
//!
//! Blocking I/O only; the store facade runs it off the async threads.

use crate::key::DerivativeKey;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The directories of one store.
#[derive(Clone, Debug)]
pub(crate) struct Files {
    objects: PathBuf,
    tmp: PathBuf,
    ids: PathBuf,
    layout_marker: PathBuf,
    fsync: bool,
}

/// Beside `objects/`, present once it holds the current layout only (see [`Files::migrate_legacy`]).
const LAYOUT_MARKER: &str = "objects.layout-2";

/// One object file found on disk.
#[derive(Clone, Debug)]
pub(crate) struct FoundObject {
    /// Its key, from the file name.
    pub key: DerivativeKey,
    /// Its extension (the format).
    pub ext: String,
    /// Its path.
    pub path: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Files {
    /// Create (if needed) `objects/` and `tmp/` under `root`.
    pub(crate) fn open(root: &Path, fsync: bool) -> io::Result<Files> {
        let files = Files {
            objects: root.join("objects"),
            tmp: root.join("tmp"),
            ids: root.join("ids"),
            layout_marker: root.join(LAYOUT_MARKER),
            fsync,
        };
        fs::create_dir_all(&files.tmp)?;
        for byte in 0..=255u8 {
            fs::create_dir_all(files.objects.join(format!("{byte:02x}")))?;
            fs::create_dir_all(files.ids.join(format!("{byte:02x}")))?;
        }
        Ok(files)
    }

    /// Path of an object, relative to `objects/`: `ab/<hex>.<ext>` (also the X-Accel-Redirect tail).
    pub(crate) fn relative_path(key: &DerivativeKey, ext: &str) -> String {
        let hex = key.to_hex();
        format!("{}/{hex}.{ext}", &hex[0..2])
    }

    /// Absolute path of an object.
    pub(crate) fn path(&self, key: &DerivativeKey, ext: &str) -> PathBuf {
        self.objects.join(Files::relative_path(key, ext))
    }

    /// Write `bytes` as the object `key`.`ext`, atomically (and durably with `fsync`).
    pub(crate) fn write(
        &self,
        key: &DerivativeKey,
        ext: &str,
        bytes: &[u8],
    ) -> io::Result<PathBuf> {
        self.write_with(key, ext, &mut |f| f.write_all(bytes))
    }

    /// Write the object `key`.`ext` by letting `fill` write (and seek in) its temp file: for objects
    /// too large to build in memory first. Same atomicity as [`Files::write`].
    pub(crate) fn write_with(
        &self,
        key: &DerivativeKey,
        ext: &str,
        fill: &mut dyn FnMut(&mut File) -> io::Result<()>,
    ) -> io::Result<PathBuf> {
        let target = self.path(key, ext);
        let dir = target
            .parent()
            .ok_or_else(|| io::Error::other("object path has no parent"))?
            .to_path_buf();
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{n}.tmp", key.to_hex(), std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            fill(&mut f)?;
            if self.fsync {
                f.sync_all()?;
            }
            drop(f);
            if let Err(e) = fs::rename(&tmp, &target) {
                // Its directory was removed by hand: make it again, once.
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
                fs::create_dir_all(&dir)?;
                fs::rename(&tmp, &target)?;
            }
            if self.fsync {
                // The rename is durable only once the directory entry is.
                File::open(&dir)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| target)
    }

    /// Remove an object file; returns whether it was there (a missing file is not an error).
    pub(crate) fn remove(&self, key: &DerivativeKey, ext: &str) -> io::Result<bool> {
        match fs::remove_file(self.path(key, ext)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn identifier_path(&self, identifier: &str, suffix: &str) -> PathBuf {
        let h = crate::key::identifier_hash(identifier);
        self.ids.join(&h[..2]).join(format!("{h}.{suffix}"))
    }

    /// Note that `key`.`ext` is rendered from `identifier` (before the object is written, so an
    /// object never exists without its line). One `O_APPEND` write: lines of concurrent writers
    /// never interleave.
    pub(crate) fn record_identifier(
        &self,
        identifier: &str,
        key: &DerivativeKey,
        ext: &str,
    ) -> io::Result<()> {
        let path = self.identifier_path(identifier, "keys");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(format!("{} {ext}\n", key.to_hex()).as_bytes())?;
        if self.fsync {
            f.sync_data()?;
        }
        Ok(())
    }

    /// The objects listed for `identifier`, each once, taking the list out of the way of new lines
    /// first (the caller holds the store's write lock for this call, so no line is lost). A list
    /// left by an interrupted purge is read too; [`Files::purged_identifier`] removes it.
    pub(crate) fn take_identifier(
        &self,
        identifier: &str,
    ) -> io::Result<Vec<(DerivativeKey, String)>> {
        let (list, taken) = (
            self.identifier_path(identifier, "keys"),
            self.identifier_path(identifier, "purging"),
        );
        let mut text = match fs::read_to_string(&taken) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        match fs::read_to_string(&list) {
            Ok(t) => {
                text.push_str(&t);
                // Appending the new list to the old one (not renaming over it) keeps both across
                // a crash here.
                fs::write(&taken, &text)?;
                fs::remove_file(&list)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut seen = std::collections::HashSet::new();
        Ok(text
            .lines()
            .filter_map(|line| {
                let (hex, ext) = line.split_once(' ')?;
                let key = DerivativeKey::from_hex(hex)?;
                seen.insert(key).then(|| (key, ext.to_owned()))
            })
            .collect())
    }

    /// Forget the list of a purged identifier.
    pub(crate) fn purged_identifier(&self, identifier: &str) -> io::Result<()> {
        match fs::remove_file(self.identifier_path(identifier, "purging")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Remove every leftover temp file (from a crash or a failed write); returns how many.
    pub(crate) fn remove_temps(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.tmp)? {
            if fs::remove_file(entry?.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether any object file is there: at most one directory entry read in each of the 256
    /// directories, however many objects there are.
    pub(crate) fn any_object(&self) -> io::Result<bool> {
        for byte in 0..=255u8 {
            match fs::read_dir(self.objects.join(format!("{byte:02x}"))) {
                Ok(mut dir) => {
                    if dir.next().is_some() {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Walk every object file on disk, one directory entry at a time.
    pub(crate) fn walk(&self) -> FileWalk {
        FileWalk {
            objects: self.objects.clone(),
            next_dir: 0,
            current: None,
        }
    }

    /// Move objects of the first layout (`objects/ab/cd/<hex>.<ext>`) to `objects/ab/` and remove
    /// the emptied directories; returns how many objects moved. Renames within one file system:
    /// a crash midway leaves every object in one place or the other, and the next open finishes.
    /// Skipped (one `stat`) once done: otherwise it would list every object at every start.
    pub(crate) fn migrate_legacy(&self) -> io::Result<usize> {
        let marker = &self.layout_marker;
        if marker.exists() {
            return Ok(0);
        }
        let mut moved = 0;
        for a in fs::read_dir(&self.objects)? {
            let a = a?;
            if !a.file_type()?.is_dir() {
                continue;
            }
            for b in fs::read_dir(a.path())? {
                let b = b?;
                if !b.file_type()?.is_dir() {
                    continue;
                }
                for f in fs::read_dir(b.path())? {
                    let f = f?;
                    if object_name(&f.file_name(), f.path()).is_some() {
                        fs::rename(f.path(), a.path().join(f.file_name()))?;
                        moved += 1;
                    }
                }
                // Not empty (a stray file): leave it for a person to look at.
                let _ = fs::remove_dir(b.path());
            }
        }
        fs::write(marker, b"objects/ab/<key>.<ext>\n")?;
        Ok(moved)
    }

    /// Bytes available to unprivileged writers on the store's file system.
    pub(crate) fn available_bytes(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.objects.as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized, writable statvfs.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

/// Every object file, one at a time (see [`Files::walk`]). Unreadable directories are skipped: the
/// walk is a repair tool and must get past what it cannot repair.
pub(crate) struct FileWalk {
    objects: PathBuf,
    next_dir: u16,
    current: Option<fs::ReadDir>,
}

impl Iterator for FileWalk {
    type Item = FoundObject;

    fn next(&mut self) -> Option<FoundObject> {
        loop {
            if let Some(dir) = &mut self.current {
                match dir.next() {
                    Some(Ok(f)) => {
                        if f.file_type().is_ok_and(|t| t.is_file()) {
                            if let Some(found) = object_name(&f.file_name(), f.path()) {
                                return Some(found);
                            }
                        }
                        continue;
                    }
                    Some(Err(_)) => continue,
                    None => self.current = None,
                }
            }
            if self.next_dir > 255 {
                return None;
            }
            let dir = self.objects.join(format!("{:02x}", self.next_dir));
            self.next_dir += 1;
            self.current = fs::read_dir(dir).ok();
        }
    }
}

/// The object named by a file name `<64 hex>.<ext>`.
fn object_name(name: &std::ffi::OsStr, path: PathBuf) -> Option<FoundObject> {
    let (hex, ext) = name.to_str()?.split_once('.')?;
    Some(FoundObject {
        key: DerivativeKey::from_hex(hex)?,
        ext: ext.to_owned(),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_scan_remove() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = Files::open(dir.path(), true)?;
        let key =
            DerivativeKey::from_hex(&"ab".repeat(32)).ok_or_else(|| io::Error::other("hex"))?;
        let path = files.write(&key, "jpg", b"hello")?;
        assert!(path.ends_with(
            "objects/ab/abababababababababababababababababababababababababababababababab.jpg"
        ));
        assert_eq!(fs::read(&path)?, b"hello");
        fs::write(dir.path().join("tmp/leftover.tmp"), b"x")?;
        assert_eq!(files.remove_temps()?, 1);
        let found: Vec<_> = files.walk().collect();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].key, found[0].ext.as_str()), (key, "jpg"));
        assert!(files.remove(&key, "jpg")?);
        assert!(!files.remove(&key, "jpg")?);
        assert_eq!(files.walk().count(), 0);
        assert!(files.available_bytes()? > 0);
        Ok(())
    }

    #[test]
    fn legacy_layout_is_migrated() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = Files::open(dir.path(), false)?;
        let key =
            DerivativeKey::from_hex(&"cd".repeat(32)).ok_or_else(|| io::Error::other("hex"))?;
        let old = dir.path().join("objects/cd/cd");
        fs::create_dir_all(&old)?;
        fs::write(old.join(format!("{}.png", key.to_hex())), b"old")?;
        fs::write(old.join("notes.txt"), b"not an object")?;
        assert_eq!(files.migrate_legacy()?, 1);
        assert_eq!(fs::read(files.path(&key, "png"))?, b"old");
        assert!(old.join("notes.txt").exists(), "stray files are left alone");
        assert_eq!(files.walk().count(), 1);
        assert_eq!(files.migrate_legacy()?, 0);
        Ok(())
    }

    #[test]
    fn identifier_lists_survive_an_interrupted_purge() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = Files::open(dir.path(), false)?;
        let k = |n: u8| DerivativeKey::from_slice(&[n; 32]).ok_or_else(|| io::Error::other("key"));
        files.record_identifier("a/b c", &k(1)?, "jpg")?;
        files.record_identifier("a/b c", &k(1)?, "jpg")?;
        files.record_identifier("other", &k(2)?, "png")?;
        assert_eq!(
            files.take_identifier("a/b c")?,
            vec![(k(1)?, "jpg".to_owned())]
        );
        // Interrupted before `purged_identifier`; a new object meanwhile: both are found next time.
        files.record_identifier("a/b c", &k(3)?, "webp")?;
        let again = files.take_identifier("a/b c")?;
        assert_eq!(again.len(), 2);
        files.purged_identifier("a/b c")?;
        assert!(files.take_identifier("a/b c")?.is_empty());
        assert_eq!(files.take_identifier("other")?.len(), 1);
        Ok(())
    }
}
