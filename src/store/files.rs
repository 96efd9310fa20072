//! The object files: the truth of the store. `objects/ab/cd/<key hex>.<ext>`, each written atomically
//! (temp file in `tmp/` on the same file system -> rename; with `store.fsync` also fsync the file
//! before and the directory after), so a file under `objects/` is always complete after a crash of
//! the process: a crash leaves at most a temp file, removed at the next start. Without fsync, a power
//! loss can leave a renamed file with torn content; the blake3 check on read catches it.
//!
//! Blocking I/O only; the store facade runs it off the async threads.

use crate::key::DerivativeKey;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The directories of one store.
#[derive(Clone, Debug)]
pub struct Files {
    objects: PathBuf,
    tmp: PathBuf,
    fsync: bool,
}

/// One object file found on disk.
#[derive(Clone, Debug)]
pub struct FoundObject {
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
    pub fn open(root: &Path, fsync: bool) -> io::Result<Files> {
        let files = Files {
            objects: root.join("objects"),
            tmp: root.join("tmp"),
            fsync,
        };
        fs::create_dir_all(&files.objects)?;
        fs::create_dir_all(&files.tmp)?;
        Ok(files)
    }

    /// Path of an object, relative to `objects/`: `ab/cd/<hex>.<ext>` (also the X-Accel-Redirect tail).
    pub fn relative_path(key: &DerivativeKey, ext: &str) -> String {
        let hex = key.to_hex();
        format!("{}/{}/{hex}.{ext}", &hex[0..2], &hex[2..4])
    }

    /// Absolute path of an object.
    pub fn path(&self, key: &DerivativeKey, ext: &str) -> PathBuf {
        self.objects.join(Files::relative_path(key, ext))
    }

    /// Write `bytes` as the object `key`.`ext`, atomically (and durably with `fsync`).
    pub fn write(&self, key: &DerivativeKey, ext: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        self.write_with(key, ext, &mut |f| f.write_all(bytes))
    }

    /// Write the object `key`.`ext` by letting `fill` write (and seek in) its temp file: for objects
    /// too large to build in memory first. Same atomicity as [`Files::write`].
    pub fn write_with(
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
        fs::create_dir_all(&dir)?;
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
            fs::rename(&tmp, &target)?;
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

    /// Remove an object file; a missing file is not an error.
    pub fn remove(&self, key: &DerivativeKey, ext: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key, ext)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Remove every leftover temp file (from a crash or a failed write); returns how many.
    pub fn remove_temps(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.tmp)? {
            if fs::remove_file(entry?.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every object file on disk. Files whose names are not `<64 hex>.<ext>` are skipped.
    pub fn scan(&self) -> io::Result<Vec<FoundObject>> {
        let mut out = Vec::new();
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
                    let name = f.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let Some((hex, ext)) = name.split_once('.') else {
                        continue;
                    };
                    if let Some(key) = DerivativeKey::from_hex(hex) {
                        out.push(FoundObject {
                            key,
                            ext: ext.to_owned(),
                            path: f.path(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Bytes available to unprivileged writers on the store's file system.
    pub fn available_bytes(&self) -> io::Result<u64> {
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
            "ab/ab/abababababababababababababababababababababababababababababababab.jpg"
        ));
        assert_eq!(fs::read(&path)?, b"hello");
        fs::write(dir.path().join("tmp/leftover.tmp"), b"x")?;
        assert_eq!(files.remove_temps()?, 1);
        let found = files.scan()?;
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].key, found[0].ext.as_str()), (key, "jpg"));
        files.remove(&key, "jpg")?;
        files.remove(&key, "jpg")?;
        assert!(files.scan()?.is_empty());
        assert!(files.available_bytes()? > 0);
        Ok(())
    }
}
