//! `ids/ab/<identifier hash>.keys`: the objects rendered from one identifier, a line each
//! (`<key hex> <ext>`), appended before the object is written, so that a purge touches only that
//! identifier's objects, however many others are stored.

use super::files::Files;
use crate::key::DerivativeKey;
use std::fs;
use std::io::{self, Write as _};
use std::path::PathBuf;

impl Files {
    pub(super) fn identifier_path(&self, identifier: &str, suffix: &str) -> PathBuf {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
