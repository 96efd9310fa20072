//! An in-memory backend: objects inserted by name, nothing on disk. For tests and embedding: a
//! server running over it proves that nothing in the pipeline reaches for the file system behind
//! the backend's back.

use super::{check_identifier, identifier_of, Backend, Fingerprint, Object, ObjectReader};
use super::{SourceError, EXTENSIONS};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Objects held in memory, by name (e.g. `"collection/page.jpg"`).
#[derive(Default)]
pub struct MemoryBackend {
    objects: RwLock<BTreeMap<String, Stored>>,
}

#[derive(Clone)]
struct Stored {
    bytes: Arc<[u8]>,
    /// Bumped on every insert, so a replaced object gets a new fingerprint.
    version: u64,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// Add or replace the object `name`.
    pub fn insert(&self, name: &str, bytes: impl Into<Arc<[u8]>>) {
        if let Ok(mut map) = self.objects.write() {
            let version = map.get(name).map_or(1, |s| s.version + 1);
            map.insert(
                name.to_owned(),
                Stored {
                    bytes: bytes.into(),
                    version,
                },
            );
        }
    }

    /// Remove the object `name`.
    pub fn remove(&self, name: &str) {
        if let Ok(mut map) = self.objects.write() {
            map.remove(name);
        }
    }

    fn get(&self, name: &str) -> Option<Object> {
        let map = self.objects.read().ok()?;
        let s = map.get(name)?;
        Some(Object {
            name: name.to_owned(),
            fingerprint: Fingerprint::new(format!("memory:{name}:{}:{}", s.bytes.len(), s.version)),
            len: s.bytes.len() as u64,
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s.version)),
            page: None,
        })
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn locate(&self, identifier: &str) -> Result<Object, SourceError> {
        check_identifier(identifier)?;
        std::iter::once(identifier.to_owned())
            .chain(EXTENSIONS.iter().map(|ext| format!("{identifier}.{ext}")))
            .find_map(|name| self.get(&name))
            .ok_or_else(|| SourceError::NotFound(identifier.to_owned()))
    }

    fn refresh(&self, object: &Object) -> Result<Object, SourceError> {
        self.get(&object.name)
            .ok_or_else(|| SourceError::NotFound(object.name.clone()))
    }

    fn refresh_now(&self, object: &Object) -> Option<Result<Object, SourceError>> {
        Some(self.refresh(object))
    }

    fn list(&self) -> Result<Vec<String>, SourceError> {
        let map = self
            .objects
            .read()
            .map_err(|_| SourceError::Io(io::Error::other("memory backend poisoned")))?;
        let mut out: Vec<String> = map
            .keys()
            .filter_map(|k| identifier_of(k).map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    fn open(&self, object: &Object) -> Result<Arc<dyn ObjectReader>, SourceError> {
        let map = self
            .objects
            .read()
            .map_err(|_| SourceError::Io(io::Error::other("memory backend poisoned")))?;
        let s = map
            .get(&object.name)
            .ok_or_else(|| SourceError::NotFound(object.name.clone()))?;
        Ok(Arc::new(Bytes(Arc::clone(&s.bytes))))
    }
}

struct Bytes(Arc<[u8]>);

/// A reader over bytes already in memory (decoding a buffer, tests).
pub(crate) fn bytes_reader(bytes: impl Into<Arc<[u8]>>) -> Arc<dyn ObjectReader> {
    Arc::new(Bytes(bytes.into()))
}

impl ObjectReader for Bytes {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_locate_replace_remove() -> Result<(), SourceError> {
        let m = MemoryBackend::new();
        m.insert("a/b.jpg", vec![1u8, 2, 3]);
        let o = m.locate("a/b")?;
        assert_eq!((o.name.as_str(), o.len), ("a/b.jpg", 3));
        m.insert("a/b.jpg", vec![9u8]);
        assert_ne!(m.refresh(&o)?.fingerprint, o.fingerprint);
        assert_eq!(m.list()?, vec!["a/b".to_string()]);
        m.remove("a/b.jpg");
        assert!(matches!(m.refresh(&o), Err(SourceError::NotFound(_))));
        assert!(matches!(
            m.locate(".."),
            Err(SourceError::BadIdentifier { .. })
        ));
        Ok(())
    }
}
