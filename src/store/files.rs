//! The object files: the truth of the store, and since store format 3 its only per-object record.
//! `objects/ab/<key hex>.<ext>`: the path names the key, the file's length is the object's length,
//! its modification time is its last access (advanced at most once a minute by a hit), and the user
//! extended attribute `user.iiifd.b3` holds its blake3 and length (40 bytes: the hash, then the
//! length, little-endian), set on the temp file before the rename that publishes it. Nothing about
//! one object is kept anywhere else, so the store's memory and start-up do not grow with it.
//!
//! Each file is written atomically (a temp file beside it, `objects/ab/.<key>.<session>.<n>.tmp`,
//! then a rename; with `store.fsync` also fsync the file before and the directory after), so an
//! object under `objects/` is always complete after a crash of the process: a crash leaves at most
//! a temp file, which the next recount (every start after an unclean close runs one) or an eviction
//! walk through its directory removes. The temp file sits in its object's directory, not in one
//! shared `tmp/`: creating and renaming files in one directory serialised the render workers on
//! its lock (on the shared benchmark's cold tiles 8 % of their CPU went to spinning on it, and a
//! rename across directories takes two directory locks). Without fsync, a power loss can leave a renamed file with torn content; the blake3
//! check on read catches it. On a file system without user extended attributes (detected when the
//! store opens) there is no hash to check: reads then trust the atomic rename, and `store.fsync`
//! is what keeps a power loss from tearing a file.
//!
//! One level of 256 directories, all made when the store is created: a write never creates a
//! directory. (The first layout, `ab/cd/`, had 65,536 of them, so nearly every write to a young store
//! paid for a `mkdir`.) Stores in that layout are moved into this one when opened
//! ([`Files::migrate_legacy`]).
//!
//! Beside the objects, `ids/ab/<identifier hash>.keys` lists, one line each, the objects rendered
//! from one identifier (`<key hex> <ext>`), appended before the object is written: a purge reads
//! that identifier's list and touches only its objects, whatever else is stored. A line whose
//! object was evicted since costs a few bytes until the next purge.
//!
//! Nothing here lists the objects at start-up: [`Files::list_dir`] reads one
//! directory entry at a time, holding one open directory, never a list.
//!
//! Blocking I/O only; the store facade runs it off the async threads.

use crate::key::{content_hash_reader, ContentHash, DerivativeKey};
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The extended attribute that holds an object's blake3 and length.
const HASH_XATTR: &std::ffi::CStr = c"user.iiifd.b3";

/// What the file system says of one object file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileMeta {
    /// Its length.
    pub(crate) len: u64,
    /// Its last access (the file's modification time), Unix seconds.
    pub(crate) access: u64,
    /// Its inode: a file written again under the same name is another inode.
    pub(crate) ino: u64,
}

impl FileMeta {
    /// What an open file's metadata says.
    pub(crate) fn of_file(f: &File) -> io::Result<FileMeta> {
        Ok(FileMeta::of(&f.metadata()?))
    }

    fn of(m: &fs::Metadata) -> FileMeta {
        FileMeta {
            len: m.len(),
            access: u64::try_from(m.mtime()).unwrap_or(0),
            ino: m.ino(),
        }
    }
}

/// An object written to its temp file, not yet published: its hash and length are known.
#[derive(Debug)]
pub(crate) struct Staged {
    tmp: PathBuf,
    /// Its length.
    pub(crate) len: u64,
}

/// The directories of one store.
#[derive(Clone, Debug)]
pub(crate) struct Files {
    objects: PathBuf,
    tmp: PathBuf,
    pub(super) ids: PathBuf,
    layout_marker: PathBuf,
    pub(super) fsync: bool,
    /// Whether the file system keeps user extended attributes (the objects' hashes).
    xattrs: bool,
    /// This process's temp file names carry it: a temp file with another one is a leftover (the
    /// store's sled database lets one process at a time open it, and a process id can repeat, as
    /// pid 1 in every container start does).
    session: u64,
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
    /// Create (if needed) `objects/` and `tmp/` under `root`, and find out whether the file
    /// system keeps user extended attributes.
    pub(crate) fn open(root: &Path, fsync: bool) -> io::Result<Files> {
        let mut files = Files {
            objects: root.join("objects"),
            tmp: root.join("tmp"),
            ids: root.join("ids"),
            layout_marker: root.join(LAYOUT_MARKER),
            fsync,
            xattrs: false,
            session: session_nonce(),
        };
        fs::create_dir_all(&files.tmp)?;
        for byte in 0..=255u8 {
            fs::create_dir_all(files.objects.join(format!("{byte:02x}")))?;
            fs::create_dir_all(files.ids.join(format!("{byte:02x}")))?;
        }
        let probe = files
            .tmp
            .join(format!("xattr-probe.{}.tmp", std::process::id()));
        let f = File::create(&probe)?;
        files.xattrs = set_hash(&f, &[0; 32], 0).is_ok();
        drop(f);
        let _ = fs::remove_file(&probe);
        Ok(files)
    }

    /// Whether objects carry their hash (the file system keeps user extended attributes).
    pub(crate) fn xattrs(&self) -> bool {
        self.xattrs
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

    /// Write an object into a temp file (hash and length in its attribute, synced with `fsync`),
    /// ready for [`Files::publish`]: `fill` writes it (and may seek); `hash` is its blake3 when the
    /// caller has it, else it is read back and hashed.
    pub(crate) fn stage(
        &self,
        key: &DerivativeKey,
        hash: Option<ContentHash>,
        fill: &mut dyn FnMut(&mut File) -> io::Result<()>,
    ) -> io::Result<Staged> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir(key);
        let tmp = dir.join(format!(".{}.{:016x}.{n}.tmp", key.to_hex(), self.session));
        let create = || {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
        };
        let result = (|| {
            let mut f = match create() {
                // Its directory was removed by hand: make it again, once.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)?;
                    create()?
                }
                other => other?,
            };
            fill(&mut f)?;
            let len = f.metadata()?.len();
            let hash = match hash {
                Some(h) => h,
                None => {
                    f.rewind()?;
                    content_hash_reader(&mut f)?
                }
            };
            if self.xattrs {
                set_hash(&f, &hash, len)?;
            }
            if self.fsync {
                f.sync_all()?;
            }
            Ok(Staged {
                tmp: tmp.clone(),
                len,
            })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Publish a staged object as `key`.`ext` (the caller holds its directory's lock): what was
    /// stored under that name before, if anything, is replaced, and returned.
    pub(crate) fn publish(
        &self,
        staged: &Staged,
        key: &DerivativeKey,
        ext: &str,
    ) -> io::Result<Option<FileMeta>> {
        let target = self.path(key, ext);
        let previous = self.meta(key, ext)?;
        // Within one directory: only that directory's lock is taken.
        fs::rename(&staged.tmp, &target)?;
        Ok(previous)
    }

    /// Make a publish durable (with `fsync`: the rename is durable only once the directory entry
    /// is). Outside the directory's lock.
    pub(crate) fn sync_dir(&self, key: &DerivativeKey) -> io::Result<()> {
        if self.fsync {
            File::open(self.dir(key))?.sync_all()?;
        }
        Ok(())
    }

    /// Drop a staged object that will not be published.
    pub(crate) fn discard(&self, staged: Staged) {
        let _ = fs::remove_file(&staged.tmp);
    }

    /// The directory of `key`'s objects.
    fn dir(&self, key: &DerivativeKey) -> PathBuf {
        self.objects.join(format!("{:02x}", key.as_bytes()[0]))
    }

    /// Write `bytes` as the object `key`.`ext` and publish it at once (for tests and tools that
    /// hold no lock to respect).
    #[cfg(test)]
    pub(crate) fn write(
        &self,
        key: &DerivativeKey,
        ext: &str,
        bytes: &[u8],
    ) -> io::Result<PathBuf> {
        let staged = self.stage(key, Some(crate::key::content_hash(bytes)), &mut |f| {
            std::io::Write::write_all(f, bytes)
        })?;
        self.publish(&staged, key, ext)?;
        Ok(self.path(key, ext))
    }

    /// What the file system says of an object, or `None` when it is not there.
    pub(crate) fn meta(&self, key: &DerivativeKey, ext: &str) -> io::Result<Option<FileMeta>> {
        match fs::symlink_metadata(self.path(key, ext)) {
            Ok(m) if m.is_file() => Ok(Some(FileMeta::of(&m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Open an object for reading, with what the file system says of it; `None` when absent.
    pub(crate) fn open_object(
        &self,
        key: &DerivativeKey,
        ext: &str,
    ) -> io::Result<Option<(File, FileMeta)>> {
        match File::open(self.path(key, ext)) {
            Ok(f) => {
                let meta = FileMeta::of(&f.metadata()?);
                Ok(Some((f, meta)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Record an access now (the file's modification time), if the object is still the file
    /// `ino`; returns what the file said before, when it was.
    pub(crate) fn touch(
        &self,
        key: &DerivativeKey,
        ext: &str,
        ino: u64,
        now: u64,
    ) -> io::Result<Option<FileMeta>> {
        let Some((f, meta)) = self.open_object(key, ext)? else {
            return Ok(None);
        };
        if meta.ino != ino {
            return Ok(None);
        }
        set_access(&f, now)?;
        Ok(Some(meta))
    }

    /// Remove an object file if it is still the file `ino` (any file when `None`); returns what
    /// was removed.
    pub(crate) fn remove_if(
        &self,
        key: &DerivativeKey,
        ext: &str,
        ino: Option<u64>,
    ) -> io::Result<Option<FileMeta>> {
        let Some(meta) = self.meta(key, ext)? else {
            return Ok(None);
        };
        if ino.is_some_and(|i| i != meta.ino) {
            return Ok(None);
        }
        match fs::remove_file(self.path(key, ext)) {
            Ok(()) => Ok(Some(meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Set an object's hash attribute (an object of an older store, checked another way).
    pub(crate) fn set_hash(&self, file: &File, hash: &ContentHash, len: u64) -> io::Result<()> {
        if self.xattrs {
            set_hash(file, hash, len)?;
        }
        Ok(())
    }

    /// The objects of directory `d` (`0..=255`), one directory entry at a time, with what the
    /// file system says of each. A missing directory is empty; a file removed while listed is
    /// left out; any other failure is an error, so that a count never takes a failed listing for
    /// an empty directory. Files not named as an object of this directory are left out.
    pub(crate) fn list_dir(&self, d: u8) -> io::Result<DirListing> {
        let entries = match fs::read_dir(self.objects.join(format!("{d:02x}"))) {
            Ok(rd) => Some(rd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(DirListing { d, entries })
    }

    /// Remove the temp files of earlier processes from directory `d` (left by a crash); returns
    /// how many. This process's own are writes in flight and stay.
    pub(crate) fn sweep_temps(&self, d: u8) -> io::Result<usize> {
        let mine = format!(".{:016x}.", self.session);
        let entries = match fs::read_dir(self.objects.join(format!("{d:02x}"))) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut n = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") && !name.contains(&mine) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }

    /// Remove every leftover temp file of `tmp/` (the xattr probe's, and stores written before
    /// temp files moved beside their objects); returns how many.
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
            let name = a.file_name();
            let dir_byte = name.to_str().and_then(|n| {
                u8::from_str_radix(n, 16)
                    .ok()
                    .filter(|d| format!("{d:02x}") == n)
            });
            let Some(d) = dir_byte else { continue };
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
                    if object_name(&f.file_name(), f.path(), d).is_some() {
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
        crate::sys::available_bytes(&self.objects)
    }
}

/// The objects of one directory (see [`Files::list_dir`]).
pub(crate) struct DirListing {
    d: u8,
    entries: Option<fs::ReadDir>,
}

impl Iterator for DirListing {
    type Item = io::Result<(FoundObject, FileMeta)>;

    fn next(&mut self) -> Option<Self::Item> {
        let entries = self.entries.as_mut()?;
        loop {
            let entry = match entries.next()? {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            let m = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Some(Err(e)),
            };
            if !m.is_file() {
                continue;
            }
            if let Some(found) = object_name(&entry.file_name(), entry.path(), self.d) {
                return Some(Ok((found, FileMeta::of(&m))));
            }
        }
    }
}

/// The object named by a file name `<64 lower-case hex>.<ext>` in directory `d`: exactly the name
/// the store gives it, so that every object counted can also be found, evicted and purged by name.
fn object_name(name: &std::ffi::OsStr, path: PathBuf, d: u8) -> Option<FoundObject> {
    let (hex, ext) = name.to_str()?.split_once('.')?;
    let key = DerivativeKey::from_hex(hex)?;
    if key.to_hex() != hex || key.as_bytes()[0] != d || ext.is_empty() || ext.contains('.') {
        return None;
    }
    Some(FoundObject {
        key,
        ext: ext.to_owned(),
        path,
    })
}

/// A number this process's temp names carry (see `Files::session`): the clock and the process id
/// through std's randomly keyed hasher (its keys come from the operating system's randomness).
fn session_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// The blake3 and length an object's attribute holds, or `None` when it has none (or it cannot
/// be read: then the object is as unverifiable as on a file system without attributes).
pub(crate) fn stored_hash(file: &File) -> Option<(ContentHash, u64)> {
    let mut buf = [0u8; 40];
    let n = crate::sys::get_xattr(file, HASH_XATTR, &mut buf).ok()?;
    if n != 40 {
        return None;
    }
    let hash: ContentHash = buf[..32].try_into().ok()?;
    let len = u64::from_le_bytes(buf[32..].try_into().ok()?);
    Some((hash, len))
}

/// Write the hash attribute of an open file.
fn set_hash(file: &File, hash: &ContentHash, len: u64) -> io::Result<()> {
    let mut value = [0u8; 40];
    value[..32].copy_from_slice(hash);
    value[32..].copy_from_slice(&len.to_le_bytes());
    crate::sys::set_xattr(file, HASH_XATTR, &value)
}

/// Set an open object's last access (its modification time) to `at`, Unix seconds.
pub(crate) fn set_access(file: &File, at: u64) -> io::Result<()> {
    let time = UNIX_EPOCH
        .checked_add(Duration::from_secs(at))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "access time out of range"))?;
    file.set_modified(time)
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Read a whole open object.
pub(crate) fn read_all(mut file: &File, len: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_scan_touch_remove() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = Files::open(dir.path(), true)?;
        let key =
            DerivativeKey::from_hex(&"ab".repeat(32)).ok_or_else(|| io::Error::other("hex"))?;
        let path = files.write(&key, "jpg", b"hello")?;
        assert!(path.ends_with(
            "objects/ab/abababababababababababababababababababababababababababababababab.jpg"
        ));
        assert_eq!(fs::read(&path)?, b"hello");
        // The hash travels with the file (on file systems that keep attributes: tmpfs and ext4 do).
        let (f, meta) = files
            .open_object(&key, "jpg")?
            .ok_or_else(|| io::Error::other("gone"))?;
        assert_eq!(meta.len, 5);
        if files.xattrs() {
            assert_eq!(
                stored_hash(&f),
                Some((crate::key::content_hash(b"hello"), 5))
            );
        }
        // An access is the modification time, for this file only.
        assert_eq!(files.touch(&key, "jpg", meta.ino, 1_000_000)?, Some(meta));
        assert_eq!(files.meta(&key, "jpg")?.map(|m| m.access), Some(1_000_000));
        assert_eq!(files.touch(&key, "jpg", meta.ino + 1, 2_000_000)?, None);
        fs::write(dir.path().join("tmp/leftover.tmp"), b"x")?;
        assert_eq!(files.remove_temps()?, 1);
        // A write in flight: its temp file sits beside the object, is no object, and only a
        // later process sweeps it.
        let staged = files.stage(&key, None, &mut |f| {
            std::io::Write::write_all(f, b"in flight")
        })?;
        assert_eq!(staged.tmp.parent(), files.path(&key, "jpg").parent());
        assert_eq!(files.sweep_temps(0xab)?, 0, "this process's write stays");
        let listed = files.list_dir(0xab)?.collect::<io::Result<Vec<_>>>()?;
        assert_eq!(listed.len(), 1);
        assert_eq!(Files::open(dir.path(), false)?.sweep_temps(0xab)?, 1);
        assert!(!staged.tmp.exists());
        assert_eq!((listed[0].0.key, listed[0].1.len), (key, 5));
        assert_eq!(listed[0].0.ext, "jpg");
        assert!(files.any_object()?);
        // Removed only while it is the file that was looked at.
        assert_eq!(files.remove_if(&key, "jpg", Some(meta.ino + 1))?, None);
        assert_eq!(
            files.remove_if(&key, "jpg", Some(meta.ino))?.map(|m| m.len),
            Some(5)
        );
        assert_eq!(files.remove_if(&key, "jpg", None)?, None);
        assert!(!files.any_object()?);
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
        assert_eq!(files.list_dir(0xcd)?.count(), 1);
        assert_eq!(files.migrate_legacy()?, 0);
        Ok(())
    }
}
