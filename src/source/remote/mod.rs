//! What the remote backends (`s3`, `http`) share. Each of them only knows how to ask its service
//! four things ([`Fetch`]: HEAD a name, GET a byte range of one version, download one version,
//! list); this module turns that into a [`Backend`]:
//!
//! - **Versions are checked at most every `source.revalidate_secs`.** The pipeline asks for the
//!   current version of an object on every request (`refresh`); within the window the answer comes
//!   from memory, so a hit costs no backend request, and a replaced object is seen within it.
//! - **Formats that can be read by parts are read by parts.** A pyramidal TIFF or a JPEG 2000 is read
//!   through [`BlockCache`]: blocks of one object version (`source.block_bytes`), fetched as one
//!   ranged GET per run of missing blocks and kept in a bounded memory cache, so the directory is
//!   read once and a cold tile costs at most the GET of its own blocks. Every GET names the version (`If-Match`): an object
//!   replaced while it is read fails the request, never mixes two versions.
//! - **Formats that must be read whole are fetched once** (JPEG, PNG, GIF, WebP) into
//!   [`DiskCache`], a directory under the store named by the version's fingerprint, written to a
//!   temp file and renamed (a kill -9 leaves a temp file, removed at the next start, never a short
//!   object), checked against the version's length when opened, least recently used first out.
//! - **Every call has a deadline** (`source.timeout_secs`): past it the request gets 504; a service
//!   that refuses or fails gets 502 naming the backend. Calls run on a small runtime of their own,
//!   so the blocking callers (render workers, the pipeline's blocking threads) never enter the
//!   server's async threads.

mod cache;
mod client;

pub(crate) use cache::{BlockCache, DiskCache};
pub(crate) use client::{download_with, install_tls_provider, Io, Op};

use super::{check_identifier, identifier_of, Backend, Fingerprint, Object, ObjectReader};
use super::{SourceCounters, SourceError, SourceKind};
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// One version of a remote object, as a HEAD describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The name the backend knows it by (a key, a URL).
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its entity tag, when the service gives one (GETs are made conditional on it).
    pub etag: Option<String>,
    /// `Last-Modified`.
    pub modified: Option<SystemTime>,
    /// The version's fingerprint (made by the backend: its kind, its scope, the name, the version).
    pub fingerprint: Fingerprint,
}

/// What a remote backend asks its service. Implementations build requests and map the service's
/// answers to [`SourceError`]s (missing -> `None` or `NotFound`, refused or failed ->
/// `Unavailable`); deadlines, caching and counting happen here.
pub(crate) trait Fetch: Send + Sync + 'static {
    /// `s3` or `http`.
    fn kind(&self) -> &'static str;
    /// The names `identifier` may have, tried in order (the identifier itself, then with each
    /// known extension). The identifier has passed [`check_identifier`].
    fn candidates(&self, identifier: &str) -> Result<Vec<String>, SourceError>;
    /// The current version of `name`, `None` when there is no such object.
    fn head(&self, io: &Io, name: &str) -> Result<Option<Meta>, SourceError>;
    /// Bytes `range` of the version `meta` (an error if the object is no longer that version).
    fn get_range(&self, io: &Io, meta: &Meta, range: Range<u64>) -> Result<Bytes, SourceError>;
    /// The whole version `meta`, written to `to`; returns the bytes written.
    fn download(&self, io: &Io, meta: &Meta, to: File) -> Result<u64, SourceError>;
    /// Every object name the service holds for this source.
    fn list(&self, io: &Io) -> Result<Vec<String>, SourceError>;
}

/// A version seen by a HEAD, and when.
struct Seen {
    meta: Option<Meta>,
    at: Instant,
}

/// At most this many names' versions are remembered (a few MB); past it, the memory starts over.
const MAX_SEEN: usize = 100_000;

/// What concurrent callers wait on while one of them fetches.
type Gate = Arc<Mutex<()>>;

struct Shared<F: Fetch> {
    fetch: F,
    io: Io,
    revalidate: Duration,
    seen: Mutex<HashMap<String, Seen>>,
    /// The last version check failed and a remembered version stood in for it (cleared by the
    /// next check that succeeds).
    outage: std::sync::atomic::AtomicBool,
    blocks: BlockCache,
    disk: DiskCache,
    /// Objects larger than this are refused before a download (`limits.max_source_bytes`).
    max_whole_bytes: u64,
    /// One download per version at a time; the others wait for it and read the copy.
    downloads: Mutex<HashMap<Fingerprint, Gate>>,
    /// `source.block_bytes`.
    block_bytes: u64,
    /// One GET per block at a time.
    fetching: Mutex<HashMap<(Fingerprint, u64), Gate>>,
    /// Read-aheads running.
    read_aheads: AtomicU64,
}

/// A [`Backend`] over a remote service.
pub(crate) struct RemoteBackend<F: Fetch> {
    shared: Arc<Shared<F>>,
}

/// Settings of a remote backend (from `[source]`).
pub(crate) struct RemoteSettings {
    /// `source.revalidate_secs`.
    pub revalidate: Duration,
    /// `source.timeout_secs`.
    pub timeout: Duration,
    /// `source.block_cache_bytes`.
    pub block_cache_bytes: u64,
    /// `source.block_bytes`.
    pub block_bytes: u64,
    /// Where whole objects are kept (`<store>/sources`).
    pub cache_dir: PathBuf,
    /// `source.cache_bytes`.
    pub cache_bytes: u64,
    /// `limits.max_source_bytes`.
    pub max_whole_bytes: u64,
    /// The file name of a version's local copy (a hash of its fingerprint: `key` names things,
    /// and `key` depends on this module, not the other way round).
    pub copy_name: fn(&Fingerprint) -> String,
}

impl<F: Fetch> RemoteBackend<F> {
    /// The backend over `fetch`.
    pub(crate) fn new(fetch: F, settings: &RemoteSettings) -> io::Result<RemoteBackend<F>> {
        let io = Io::new(fetch.kind(), settings.timeout)?;
        Ok(RemoteBackend {
            shared: Arc::new(Shared {
                io,
                fetch,
                revalidate: settings.revalidate,
                seen: Mutex::new(HashMap::new()),
                outage: std::sync::atomic::AtomicBool::new(false),
                blocks: BlockCache::new(settings.block_cache_bytes),
                disk: DiskCache::open(
                    &settings.cache_dir,
                    settings.cache_bytes,
                    settings.copy_name,
                )?,
                max_whole_bytes: settings.max_whole_bytes,
                downloads: Mutex::new(HashMap::new()),
                block_bytes: settings.block_bytes.max(1),
                fetching: Mutex::new(HashMap::new()),
                read_aheads: AtomicU64::new(0),
            }),
        })
    }
}

impl<F: Fetch> Shared<F> {
    /// The version of `name` seen within the revalidation window, if any (no request).
    fn head_seen(&self, name: &str) -> Option<Option<Meta>> {
        let seen = self.seen.lock().ok()?;
        let s = seen.get(name)?;
        (s.at.elapsed() < self.revalidate).then(|| s.meta.clone())
    }

    /// The version of `name`, from memory within the revalidation window, else by a HEAD. When
    /// the service cannot answer, the last version seen is used for another window (stale if
    /// error, as HTTP caches do): stored derivatives of it stay served through an outage, and only
    /// what needs the service's bytes fails.
    fn head(&self, name: &str) -> Result<Option<Meta>, SourceError> {
        let previous = match self.seen.lock() {
            Ok(seen) => match seen.get(name) {
                Some(s) if s.at.elapsed() < self.revalidate => return Ok(s.meta.clone()),
                Some(s) => s.meta.clone(),
                None => None,
            },
            Err(_) => None,
        };
        let meta = match self.fetch.head(&self.io, name) {
            Ok(meta) => {
                self.outage.store(false, Ordering::Relaxed);
                meta
            }
            Err(e @ (SourceError::Unavailable { .. } | SourceError::Timeout { .. })) => {
                let Some(previous) = previous else {
                    return Err(e);
                };
                tracing::warn!(
                    name,
                    "source version check failed ({e}); using the last one seen"
                );
                self.outage.store(true, Ordering::Relaxed);
                Some(previous)
            }
            Err(e) => return Err(e),
        };
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= MAX_SEEN {
                seen.clear();
            }
            seen.insert(
                name.to_owned(),
                Seen {
                    meta: meta.clone(),
                    at: Instant::now(),
                },
            );
        }
        Ok(meta)
    }

    /// The version an [`Object`] was located at, as a [`Meta`] (with its entity tag).
    fn meta_of(&self, object: &Object) -> Result<Meta, SourceError> {
        match self.head(&object.name)? {
            Some(meta) if meta.fingerprint == object.fingerprint => Ok(meta),
            Some(_) => Err(self.io.unavailable(format!(
                "'{}' changed while it was being read; try again",
                object.name
            ))),
            None => Err(SourceError::NotFound(object.name.clone())),
        }
    }

    /// Bytes `range` of the version `meta` through the block cache: every missing run of blocks
    /// in one GET, each block fetched by one caller at a time (two renders wanting neighbouring
    /// tiles of one block wait for one GET, not make two).
    /// Returns the block after the last one fetched, if any was (where a read-ahead would start).
    fn read(
        &self,
        meta: &Meta,
        range: Range<u64>,
        out: &mut [u8],
    ) -> Result<Option<u64>, SourceError> {
        let size = self.block_bytes;
        let mut fetched_to = None;
        let fp = &meta.fingerprint;
        let first = range.start / size;
        let last = (range.end - 1) / size;
        let mut blocks: Vec<Option<Bytes>> =
            (first..=last).map(|b| self.blocks.get(fp, b)).collect();
        let counters = self.io.counters();
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].is_some() {
                counters.block_hits.fetch_add(1, Ordering::Relaxed);
                i += 1;
                continue;
            }
            let mut j = i;
            while j < blocks.len() && blocks[j].is_none() {
                j += 1;
            }
            let run = first + i as u64..first + j as u64;
            fetched_to = Some(run.end);
            for (k, block) in (i..j).zip(self.fill(meta, run)?) {
                blocks[k] = Some(block);
            }
            i = j;
        }
        let mut written = 0;
        for (k, block) in blocks.iter().enumerate() {
            let Some(block) = block else { continue };
            let block_start = (first + k as u64) * size;
            let from = range.start.max(block_start) - block_start;
            let to = range.end.min(block_start + block.len() as u64) - block_start;
            let piece = &block[from as usize..to as usize];
            out[written..written + piece.len()].copy_from_slice(piece);
            written += piece.len();
        }
        Ok(fetched_to)
    }

    /// Blocks `run` of `meta`, none of which was cached when the caller looked: fetched in one
    /// GET, unless another caller (a read-ahead) fetched them while this one waited for them.
    fn fill(&self, meta: &Meta, run: Range<u64>) -> Result<Vec<Bytes>, SourceError> {
        let fp = &meta.fingerprint;
        // In ascending order, so two callers with overlapping runs cannot deadlock.
        let gates: Vec<Arc<Mutex<()>>> = run.clone().map(|b| self.gate(fp, b)).collect();
        let fetched = {
            let _held: Vec<_> = gates.iter().map(|g| g.lock()).collect();
            let ready: Option<Vec<Bytes>> = run.clone().map(|b| self.blocks.get(fp, b)).collect();
            match ready {
                Some(got) => Ok(got),
                None => self.fetch_run(meta, run.clone()),
            }
        };
        drop(gates);
        self.ungate(fp, run);
        fetched
    }

    /// Fetch the blocks of `run` that are not cached (a read-ahead: errors are the next read's).
    fn read_ahead(&self, meta: &Meta, run: Range<u64>) {
        let last = meta.len.div_ceil(self.block_bytes);
        let run = run.start.min(last)..run.end.min(last);
        let missing: Vec<u64> = run
            .filter(|b| self.blocks.get(&meta.fingerprint, *b).is_none())
            .collect();
        if let (Some(&a), Some(&b)) = (missing.first(), missing.last()) {
            let _ = self.fill(meta, a..b + 1);
        }
    }

    /// GET blocks `run` of `meta` in one request and keep them.
    fn fetch_run(&self, meta: &Meta, run: Range<u64>) -> Result<Vec<Bytes>, SourceError> {
        let size = self.block_bytes;
        let start = run.start * size;
        let end = (run.end * size).min(meta.len);
        let data = self.fetch.get_range(&self.io, meta, start..end)?;
        if data.len() as u64 != end - start {
            return Err(self.io.unavailable(format!(
                "asked for {} bytes of '{}', got {}",
                end - start,
                meta.name,
                data.len()
            )));
        }
        let counters = self.io.counters();
        Ok(run
            .map(|b| {
                let at = ((b * size - start) as usize).min(data.len());
                let block = data.slice(at..(at + size as usize).min(data.len()));
                self.blocks.insert(&meta.fingerprint, b, block.clone());
                counters.block_misses.fetch_add(1, Ordering::Relaxed);
                block
            })
            .collect())
    }

    fn gate(&self, fp: &Fingerprint, block: u64) -> Arc<Mutex<()>> {
        match self.fetching.lock() {
            Ok(mut map) => Arc::clone(map.entry((fp.clone(), block)).or_default()),
            // Poisoned: no sharing, each caller fetches for itself.
            Err(_) => Arc::default(),
        }
    }

    /// Forget the gates of `run` that nobody else holds.
    fn ungate(&self, fp: &Fingerprint, run: Range<u64>) {
        if let Ok(mut map) = self.fetching.lock() {
            for b in run {
                let key = (fp.clone(), b);
                if map.get(&key).is_some_and(|g| Arc::strong_count(g) == 1) {
                    map.remove(&key);
                }
            }
        }
    }

    /// The local copy of a version that must be read whole: from the disk cache, else downloaded
    /// once (concurrent callers wait for the one download).
    fn whole(&self, meta: &Meta) -> Result<File, SourceError> {
        let counters = self.io.counters();
        if let Some(f) = self.disk.get(&meta.fingerprint, meta.len) {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(f);
        }
        if meta.len > self.max_whole_bytes {
            return Err(SourceError::TooLarge(format!(
                "{} bytes (limits.max_source_bytes is {})",
                meta.len, self.max_whole_bytes
            )));
        }
        let gate = {
            let mut downloads = self
                .downloads
                .lock()
                .map_err(|_| self.io.unavailable("download lock poisoned"))?;
            Arc::clone(downloads.entry(meta.fingerprint.clone()).or_default())
        };
        let result = {
            let _one = gate
                .lock()
                .map_err(|_| self.io.unavailable("download lock poisoned"))?;
            match self.disk.get(&meta.fingerprint, meta.len) {
                Some(f) => {
                    counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    Ok(f)
                }
                None => {
                    counters.cache_misses.fetch_add(1, Ordering::Relaxed);
                    self.disk.put(&meta.fingerprint, |file| {
                        let n = self.fetch.download(&self.io, meta, file)?;
                        if n != meta.len {
                            return Err(self.io.unavailable(format!(
                                "'{}' is {} bytes, the download gave {n}",
                                meta.name, meta.len
                            )));
                        }
                        Ok(n)
                    })
                }
            }
        };
        if let Ok(mut downloads) = self.downloads.lock() {
            if Arc::strong_count(&gate) <= 2 {
                downloads.remove(&meta.fingerprint);
            }
        }
        result
    }
}

fn object_of(meta: Meta) -> Object {
    Object {
        name: meta.name,
        fingerprint: meta.fingerprint,
        len: meta.len,
        modified: meta.modified,
        page: None,
    }
}

impl<F: Fetch> Backend for RemoteBackend<F> {
    fn kind(&self) -> &'static str {
        self.shared.fetch.kind()
    }

    fn locate(&self, identifier: &str) -> Result<Object, SourceError> {
        check_identifier(identifier)?;
        for name in self.shared.fetch.candidates(identifier)? {
            if let Some(meta) = self.shared.head(&name)? {
                return Ok(object_of(meta));
            }
        }
        Err(SourceError::NotFound(identifier.to_owned()))
    }

    fn refresh(&self, object: &Object) -> Result<Object, SourceError> {
        match self.shared.head(&object.name)? {
            Some(meta) => Ok(object_of(meta)),
            None => Err(SourceError::NotFound(object.name.clone())),
        }
    }

    fn outage(&self) -> bool {
        self.shared.outage.load(Ordering::Relaxed)
    }

    fn forget(&self, identifier: &str) {
        let Ok(names) = self.shared.fetch.candidates(identifier) else {
            return;
        };
        if let Ok(mut seen) = self.shared.seen.lock() {
            for name in names {
                if seen.get(&name).is_some_and(|s| s.meta.is_none()) {
                    seen.remove(&name);
                }
            }
        }
    }

    fn refresh_now(&self, object: &Object) -> Option<Result<Object, SourceError>> {
        match self.shared.head_seen(&object.name)? {
            Some(meta) => Some(Ok(object_of(meta))),
            None => Some(Err(SourceError::NotFound(object.name.clone()))),
        }
    }

    fn list(&self) -> Result<Vec<String>, SourceError> {
        let mut ids: Vec<String> = self
            .shared
            .fetch
            .list(&self.shared.io)?
            .iter()
            .filter_map(|name| identifier_of(name).map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    fn open(&self, object: &Object) -> Result<Arc<dyn ObjectReader>, SourceError> {
        let shared = &self.shared;
        let meta = shared.meta_of(object)?;
        if let Some(f) = shared.disk.get(&meta.fingerprint, meta.len) {
            shared
                .io
                .counters()
                .cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(super::file_reader(f)?);
        }
        // A name that says JPEG, PNG, GIF or WebP is downloaded straight away (the renderer sniffs
        // the bytes anyway); any other is sniffed first, which costs one block.
        let ext = meta
            .name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase());
        if matches!(
            ext.as_deref(),
            Some("jpg" | "jpeg" | "png" | "gif" | "webp")
        ) {
            return Ok(super::file_reader(shared.whole(&meta)?)?);
        }
        let mut head = vec![0u8; SourceKind::SNIFF_LEN.min(meta.len as usize)];
        if !head.is_empty() {
            shared.read(&meta, 0..head.len() as u64, &mut head)?;
        }
        match SourceKind::sniff(&head) {
            SourceKind::Tiff | SourceKind::Jp2 => Ok(Arc::new(RangeReader {
                shared: Arc::clone(shared),
                meta,
            })),
            _ => Ok(super::file_reader(shared.whole(&meta)?)?),
        }
    }

    fn counters(&self) -> Option<Arc<SourceCounters>> {
        Some(Arc::clone(self.shared.io.counters()))
    }

    fn caches(&self) -> Vec<crate::bounded::CacheReport> {
        vec![self.shared.blocks.report()]
    }

    fn forget_copies(&self) -> io::Result<()> {
        self.shared.disk.clear()
    }
}

/// Reads of one version by range, through the block cache.
struct RangeReader<F: Fetch> {
    shared: Arc<Shared<F>>,
    meta: Meta,
}

impl<F: Fetch> ObjectReader for RangeReader<F> {
    fn size(&self) -> u64 {
        self.meta.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.meta.len || buf.is_empty() {
            return Ok(0);
        }
        let end = (offset + buf.len() as u64).min(self.meta.len);
        let n = (end - offset) as usize;
        let fetched_to = self
            .shared
            .read(&self.meta, offset..end, &mut buf[..n])
            // Carried inside the I/O error, so the caller's error says 502/504, not "undecodable".
            .map_err(io::Error::other)?;
        if let Some(next) = fetched_to {
            read_ahead(&self.shared, &self.meta, next);
        }
        Ok(n)
    }
}

/// Blocks fetched ahead of a read that missed, in the background: tiles of one level of a
/// pyramidal TIFF lie row by row in the file, and a viewer asks for a row's tiles together, so
/// the next block is usually the next requests' (a JPEG 2000 codestream is read forwards too).
/// One block (two made no difference on the peer benchmark's W1), at most two read-aheads at a
/// time; a reader that needs a block being fetched waits for that GET instead of making its own.
const READ_AHEAD_BLOCKS: u64 = 1;
const MAX_READ_AHEADS: u64 = 2;

fn read_ahead<F: Fetch>(shared: &Arc<Shared<F>>, meta: &Meta, from: u64) {
    let running = &shared.read_aheads;
    if running.fetch_add(1, Ordering::AcqRel) >= MAX_READ_AHEADS {
        running.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (shared, meta) = (Arc::clone(shared), meta.clone());
    let spawned = std::thread::Builder::new()
        .name("iiifd-read-ahead".into())
        .spawn(move || {
            shared.read_ahead(&meta, from..from + READ_AHEAD_BLOCKS);
            shared.read_aheads.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A service in memory: objects by name, counting GETs.
    struct Fake {
        objects: Mutex<HashMap<String, (Vec<u8>, u32)>>,
        gets: AtomicU64,
    }

    impl Fake {
        fn meta(name: &str, data: &[u8], version: u32) -> Meta {
            Meta {
                name: name.to_owned(),
                len: data.len() as u64,
                etag: Some(version.to_string()),
                modified: None,
                fingerprint: Fingerprint::new(format!("fake:{name}:{version}")),
            }
        }
    }

    impl Fetch for Arc<Fake> {
        fn kind(&self) -> &'static str {
            "s3"
        }
        fn candidates(&self, identifier: &str) -> Result<Vec<String>, SourceError> {
            Ok(vec![identifier.to_owned(), format!("{identifier}.tif")])
        }
        fn head(&self, _: &Io, name: &str) -> Result<Option<Meta>, SourceError> {
            let objects = self
                .objects
                .lock()
                .map_err(|_| SourceError::NotFound("".into()))?;
            Ok(objects.get(name).map(|(d, v)| Fake::meta(name, d, *v)))
        }
        fn get_range(&self, io: &Io, meta: &Meta, r: Range<u64>) -> Result<Bytes, SourceError> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            let objects = self
                .objects
                .lock()
                .map_err(|_| io.unavailable("poisoned"))?;
            match objects.get(&meta.name) {
                Some((d, v)) if Some(v.to_string()) == meta.etag => {
                    Ok(Bytes::copy_from_slice(&d[r.start as usize..r.end as usize]))
                }
                _ => Err(io.unavailable("precondition failed")),
            }
        }
        fn download(&self, io: &Io, meta: &Meta, to: File) -> Result<u64, SourceError> {
            let data = self.get_range(io, meta, 0..meta.len)?;
            download_with(io, to, |tx| async move {
                // In two chunks, as a service would send them.
                let half = data.len() / 2;
                let _ = tx.send(data.slice(..half)).await;
                let _ = tx.send(data.slice(half..)).await;
                Ok(())
            })
        }
        fn list(&self, _: &Io) -> Result<Vec<String>, SourceError> {
            let objects = self
                .objects
                .lock()
                .map_err(|_| SourceError::NotFound("".into()))?;
            Ok(objects.keys().cloned().collect())
        }
    }

    fn backend(
        fake: &Arc<Fake>,
        dir: &Path,
        revalidate: Duration,
    ) -> io::Result<RemoteBackend<Arc<Fake>>> {
        RemoteBackend::new(
            Arc::clone(fake),
            &RemoteSettings {
                revalidate,
                timeout: Duration::from_secs(5),
                block_cache_bytes: 1 << 20,
                block_bytes: 64 << 10,
                cache_dir: dir.to_path_buf(),
                cache_bytes: 1 << 20,
                max_whole_bytes: 1 << 20,
                copy_name: |fp| fp.as_str().bytes().map(|b| format!("{b:02x}")).collect(),
            },
        )
    }

    /// Wait for the read-aheads to finish.
    fn settle(b: &RemoteBackend<Arc<Fake>>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.shared.read_aheads.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < deadline, "a read-ahead did not finish");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn tiff_like(len: usize) -> Vec<u8> {
        let mut d: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        d[..4].copy_from_slice(b"II*\0");
        d
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn ranged_reads_fetch_each_block_once_and_match_the_object() -> TestResult {
        let data = tiff_like(300_000);
        let fake = Arc::new(Fake {
            objects: Mutex::new(HashMap::from([("a.tif".to_owned(), (data.clone(), 1))])),
            gets: AtomicU64::new(0),
        });
        let dir = tempfile::tempdir()?;
        let b = backend(&fake, dir.path(), Duration::from_secs(60))?;
        let object = b.locate("a")?;
        assert_eq!(object.name, "a.tif");
        let reader = b.open(&object)?;
        assert_eq!(reader.size(), 300_000);
        let after_open = fake.gets.load(Ordering::Relaxed);
        assert_eq!(after_open, 1, "the sniff reads block 0");
        // Across blocks 0-2: blocks 1 and 2 are one run, one GET; then block 3 is read ahead.
        let got = reader.read_range(60_000, 100_000)?;
        assert_eq!(got, &data[60_000..160_000]);
        settle(&b);
        assert_eq!(fake.gets.load(Ordering::Relaxed), 3);
        // Again, and block 3: from memory.
        assert_eq!(reader.read_range(60_000, 100_000)?, &data[60_000..160_000]);
        assert_eq!(reader.read_range(200_000, 1_000)?, &data[200_000..201_000]);
        settle(&b);
        assert_eq!(fake.gets.load(Ordering::Relaxed), 3);
        // The tail (block 4, short at the end of the object): one GET, nothing read past the end.
        let mut tail = vec![0u8; 500];
        assert_eq!(reader.read_at(&mut tail, 299_800)?, 200);
        assert_eq!(&tail[..200], &data[299_800..]);
        settle(&b);
        assert_eq!(fake.gets.load(Ordering::Relaxed), 4);
        assert!(b.shared.blocks.bytes() <= 1 << 20);
        Ok(())
    }

    #[test]
    fn a_replaced_object_is_seen_after_the_window_and_never_mixed() -> TestResult {
        let fake = Arc::new(Fake {
            objects: Mutex::new(HashMap::from([(
                "a.tif".to_owned(),
                (tiff_like(200_000), 1),
            )])),
            gets: AtomicU64::new(0),
        });
        let dir = tempfile::tempdir()?;
        let b = backend(&fake, dir.path(), Duration::from_millis(200))?;
        let old = b.locate("a")?;
        let reader = b.open(&old)?;
        fake.objects
            .lock()
            .map_err(|_| "poisoned")?
            .insert("a.tif".into(), (tiff_like(150_000), 2));
        // Within the window: the old version, from memory.
        assert_eq!(b.refresh(&old)?.fingerprint, old.fingerprint);
        // A block not yet read: the GET names the old version, and the service refuses it.
        let err = reader
            .read_range(100_000, 10)
            .err()
            .ok_or("mixed versions")?;
        assert!(err.to_string().contains("unavailable"), "{err}");
        std::thread::sleep(Duration::from_millis(250));
        let new = b.refresh(&old)?;
        assert_ne!(new.fingerprint, old.fingerprint);
        assert_eq!(new.len, 150_000);
        assert!(b.open(&old).is_err(), "the old version cannot be opened");
        Ok(())
    }

    #[test]
    fn whole_objects_are_downloaded_once_and_evicted_by_age() -> TestResult {
        let jpeg = |n: u8, len: usize| {
            let mut d = vec![n; len];
            d[..3].copy_from_slice(&[0xFF, 0xD8, 0xFF]);
            d
        };
        let fake = Arc::new(Fake {
            objects: Mutex::new(HashMap::from([
                ("a.jpg".to_owned(), (jpeg(1, 400_000), 1)),
                ("b.jpg".to_owned(), (jpeg(2, 400_000), 1)),
                ("c.jpg".to_owned(), (jpeg(3, 400_000), 1)),
            ])),
            gets: AtomicU64::new(0),
        });
        let dir = tempfile::tempdir()?;
        let b = backend(&fake, dir.path(), Duration::from_secs(60))?;
        let a = b.locate("a.jpg")?;
        let r = b.open(&a)?;
        assert_eq!(r.read_range(0, 400_000)?, jpeg(1, 400_000));
        let gets = fake.gets.load(Ordering::Relaxed);
        let r2 = b.open(&a)?;
        assert_eq!(r2.read_range(399_990, 10)?, vec![1; 10]);
        assert_eq!(
            fake.gets.load(Ordering::Relaxed),
            gets,
            "the second open reads the disk"
        );
        // Three of 400 KB in a 1 MiB cache: the oldest goes.
        std::thread::sleep(Duration::from_millis(20));
        b.open(&b.locate("b.jpg")?)?;
        std::thread::sleep(Duration::from_millis(20));
        b.open(&b.locate("c.jpg")?)?;
        let kept = std::fs::read_dir(dir.path())?
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file())
            .count();
        assert_eq!(kept, 2);
        assert!(
            b.shared.disk.get(&a.fingerprint, a.len).is_none(),
            "a was the oldest"
        );
        // A leftover temp file is removed when the cache opens again.
        std::fs::write(dir.path().join(".tmp/x.1"), b"partial")?;
        drop(b);
        let _again = backend(&fake, dir.path(), Duration::from_secs(60))?;
        assert_eq!(std::fs::read_dir(dir.path().join(".tmp"))?.count(), 0);
        Ok(())
    }

    #[test]
    fn a_missing_identifier_is_not_found_and_listing_strips_extensions() -> TestResult {
        let fake = Arc::new(Fake {
            objects: Mutex::new(HashMap::from([
                ("x/b.tif".to_owned(), (tiff_like(10), 1)),
                ("a.jpg".to_owned(), (vec![0xFF, 0xD8, 0xFF, 0], 1)),
                ("notes.txt".to_owned(), (vec![1], 1)),
            ])),
            gets: AtomicU64::new(0),
        });
        let dir = tempfile::tempdir()?;
        let b = backend(&fake, dir.path(), Duration::from_secs(60))?;
        assert!(matches!(b.locate("nope"), Err(SourceError::NotFound(_))));
        assert!(matches!(
            b.locate("../a"),
            Err(SourceError::BadIdentifier { .. })
        ));
        assert_eq!(b.list()?, vec!["a".to_owned(), "x/b".to_owned()]);
        Ok(())
    }

    #[test]
    fn a_call_past_its_deadline_is_a_timeout() {
        let io = match Io::new("s3", Duration::from_millis(50)) {
            Ok(io) => io,
            Err(e) => panic!("runtime: {e}"),
        };
        let r: Result<(), SourceError> = io.run(Op::Get, async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        });
        assert!(matches!(r, Err(SourceError::Timeout { backend: "s3", .. })));
        assert_eq!(io.counters().timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(io.counters().errors.load(Ordering::Relaxed), 1);
    }
}
