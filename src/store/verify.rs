//! Verify: every object file read and hashed against the blake3 in its attribute. Read-only, and
//! without any directory lock: an object replaced or removed while it is read was read through its
//! own open file, whose attribute belongs to the same inode, so the check stays sound.

use super::files::{read_all, stored_hash};
use super::Store;
use crate::key::content_hash;
use std::io;

/// Result of [`Store::verify`].
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct VerifyReport {
    /// Object files checked.
    pub checked: usize,
    /// Files shorter or longer than their attribute says, or whose bytes do not match its hash.
    pub bad: usize,
    /// Keys of the bad objects (at most 20).
    pub bad_keys: Vec<String>,
    /// Files without a hash attribute (a file system without user extended attributes, or files
    /// put there by hand that the next recount adopts): their length is all there is to check.
    pub unhashed: usize,
}

impl Store {
    /// Read and hash every stored object. Reports; removes nothing (a lookup of a bad object
    /// repairs it, and `store gc` does not need to).
    pub(crate) fn verify(&self) -> io::Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for d in 0..=255u8 {
            for item in self.files.list_dir(d)? {
                let (found, _) = item?;
                let file = match std::fs::File::open(&found.path) {
                    Ok(f) => f,
                    // Evicted or replaced since the directory was listed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                report.checked += 1;
                let Some((hash, len)) = stored_hash(&file) else {
                    report.unhashed += 1;
                    continue;
                };
                // The open file's own length: the listing's may be of a file since replaced.
                let actual = file.metadata()?.len();
                let whole = len == actual
                    && read_all(&file, len)
                        .is_ok_and(|b| b.len() as u64 == len && content_hash(&b) == hash);
                if !whole {
                    report.bad += 1;
                    if report.bad_keys.len() < 20 {
                        report.bad_keys.push(found.key.to_hex());
                    }
                }
            }
        }
        Ok(report)
    }
}
