//! `crawl.watch`: thumbnails before the first visitor. When a source image appears or changes, its
//! probe (info.json's size), every `sizes` entry and the configured thumbnails are rendered into the
//! store in the crawl's low-priority lane, so the first viewer's thumbnail is already a hit.
//!
//! How arrivals are noticed:
//! - the image directory (`fs`): the kernel's file notifications (inotify, through `notify`), for
//!   the whole tree. A file is taken once no event has come for it for [`SETTLE`], so a file still
//!   being copied is not probed half-written, and a burst of writes to one file is one arrival.
//! - other backends: a listing every `crawl.watch_interval_secs`; names not in the previous
//!   listing are arrivals (the first listing is the baseline: what was there before is the crawl
//!   endpoint's work).
//!
//! Arrivals are warmed one image at a time by one task; each of its renders goes through
//! [`Pipeline::ensure`], which waits for an idle render worker, so live requests never queue
//! behind a burst of arrivals.

use super::plan::{plan_image, PlanOptions};
use super::warm_one;
use crate::iiif::ApiVersion;
use crate::iiif::Format;
use crate::metrics::Histogram;
use crate::pipeline::{Ensured, Pipeline};
use crate::source::{identifier_of, Backend, Fingerprint};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Quiet time after a file's last event before it is taken as arrived.
const SETTLE: Duration = Duration::from_millis(300);
/// Versions remembered as warmed (forgotten all at once beyond this: a re-warm finds all stored).
const MAX_REMEMBERED: usize = 100_000;

/// What the watch warms.
#[derive(Clone, Debug)]
pub(crate) struct WatchSettings {
    /// Thumbnail sizes in 3.0 syntax (validated with the configuration).
    pub(crate) thumbnails: Vec<String>,
    /// API versions whose `sizes` URL shapes to warm.
    pub(crate) versions: Vec<ApiVersion>,
    /// Listing interval for backends without notifications.
    pub(crate) interval: Duration,
    /// The tile size info.json advertises for sources without tiles of their own.
    pub(crate) tile_size: u32,
}

/// Counters for metrics.
#[derive(Default)]
pub(crate) struct WatchMetrics {
    /// Sources seen arriving or changing.
    pub(crate) arrivals: AtomicU64,
    /// Sources whose sizes and thumbnails are stored.
    pub(crate) warmed: AtomicU64,
    /// Sources that could not be warmed (not an image, unreadable).
    pub(crate) failed: AtomicU64,
    /// Derivatives rendered for arrivals.
    pub(crate) rendered: AtomicU64,
    /// From a source's last change to its thumbnails being stored.
    pub(crate) latency: Histogram,
}

/// A running watch: dropping it stops noticing arrivals.
pub(crate) struct Watch {
    pub(crate) metrics: Arc<WatchMetrics>,
    stop: Arc<AtomicBool>,
    /// The kernel watch (for `fs`); kept alive here.
    _notify: Option<notify::RecommendedWatcher>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Start watching: `root` is the image directory of an `fs` source (notifications), `None` for
/// other backends (listings). Needs a tokio runtime.
pub(crate) fn start(
    pipeline: Arc<Pipeline>,
    root: Option<&Path>,
    settings: WatchSettings,
) -> io::Result<Watch> {
    let metrics = Arc::new(WatchMetrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let notify = match root {
        Some(root) => Some(notify_arrivals(root, tx, Arc::clone(&stop))?),
        None => {
            list_arrivals(
                Arc::clone(pipeline.source()),
                settings.interval,
                tx,
                Arc::clone(&stop),
            )?;
            None
        }
    };
    let m = Arc::clone(&metrics);
    tokio::spawn(async move {
        // The version each identifier was last warmed at: an event that changed nothing (a
        // `touch` with the same time, a second event for one copy) is not an arrival.
        let mut warmed: HashMap<String, Fingerprint> = HashMap::new();
        while let Some((identifier, since)) = rx.recv().await {
            // Seen arriving: not missing any more, whatever a lookup a moment ago found.
            pipeline.forget_missing(&identifier);
            let located = pipeline.locate(&identifier).await;
            let version = located.as_ref().ok().map(|l| l.object.fingerprint.clone());
            if version.is_some() && warmed.get(&identifier) == version.as_ref() {
                continue;
            }
            m.arrivals.fetch_add(1, Ordering::Relaxed);
            if warm_arrival(&pipeline, &settings, &m, &identifier, located, since).await {
                if let Some(v) = version {
                    if warmed.len() >= MAX_REMEMBERED {
                        warmed.clear();
                    }
                    warmed.insert(identifier, v);
                }
            }
        }
    });
    Ok(Watch {
        metrics,
        stop,
        _notify: notify,
    })
}

/// Render what the first viewer of `identifier` (located as `located`) asks for first: its sizes
/// and thumbnails. Returns whether all of it is stored.
async fn warm_arrival(
    pipeline: &Arc<Pipeline>,
    settings: &WatchSettings,
    metrics: &WatchMetrics,
    identifier: &str,
    located: crate::error::Result<crate::pipeline::Located>,
    since: Instant,
) -> bool {
    let source = match located {
        Ok(s) => s,
        Err(e) => {
            metrics.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(identifier, "watch: not warmed: {e}");
            return false;
        }
    };
    let limits = *pipeline.limits();
    let opts = PlanOptions {
        tile: source.probe.tile.unwrap_or(settings.tile_size),
        limits: &limits,
        levels: Some(&[]),
        thumbnails: &settings.thumbnails,
    };
    let mut failed = None;
    for version in &settings.versions {
        for item in plan_image(identifier, source.size(), *version, Format::Jpg, &opts) {
            match warm_one(pipeline, &item).await {
                Ok(Ensured::Rendered(_)) => {
                    metrics.rendered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ensured::Stored) => {}
                Err(e) => failed = Some(e),
            }
        }
    }
    match failed {
        Some(e) => {
            metrics.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(identifier, "watch: not all warmed: {e}");
            false
        }
        None => {
            metrics.latency.observe(since.elapsed());
            metrics.warmed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(identifier, "watch: sizes and thumbnails stored");
            true
        }
    }
}

/// Kernel notifications for the tree under `root`, settled per file, sent as identifiers.
fn notify_arrivals(
    root: &Path,
    tx: UnboundedSender<(String, Instant)>,
    stop: Arc<AtomicBool>,
) -> io::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (events, rx) = channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if changes_content(event.kind) {
                for path in event.paths {
                    let _ = events.send(path);
                }
            }
        }
    })
    .map_err(io::Error::other)?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(io::Error::other)?;
    // Paths as the backend names them: below the root, symbolic links of the root resolved.
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    std::thread::Builder::new()
        .name("iiifd-watch".into())
        .spawn(move || settle(&root, &rx, &tx, &stop))?;
    Ok(watcher)
}

/// Whether an event can mean new content. Opening and reading a file are events too, and iiifd
/// reads every file it warms: counting those would make each warm-up announce the next.
fn changes_content(kind: notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Take a path once it has been quiet for [`SETTLE`]; send its identifier with the time of its
/// first event (the arrival, for the latency figure).
fn settle(
    root: &Path,
    rx: &Receiver<PathBuf>,
    tx: &UnboundedSender<(String, Instant)>,
    stop: &AtomicBool,
) {
    // path -> (first event, last event)
    let mut pending: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(SETTLE / 3) {
            Ok(path) => {
                let now = Instant::now();
                pending.entry(path).or_insert((now, now)).1 = now;
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let ready: Vec<PathBuf> = pending
            .iter()
            .filter(|(_, (_, last))| now.duration_since(*last) >= SETTLE)
            .map(|(p, _)| p.clone())
            .collect();
        for path in ready {
            let Some((first, _)) = pending.remove(&path) else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            let name = path.strip_prefix(root).ok().and_then(Path::to_str);
            if let Some(id) = name.and_then(identifier_of) {
                if tx.send((id.to_owned(), first)).is_err() {
                    return;
                }
            }
        }
    }
}

/// A listing every `interval`; names new since the previous one are arrivals.
fn list_arrivals(
    source: Arc<dyn Backend>,
    interval: Duration,
    tx: UnboundedSender<(String, Instant)>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("iiifd-watch".into())
        .spawn(move || {
            let mut known: Option<HashSet<String>> = None;
            while !stop.load(Ordering::Relaxed) {
                match source.list() {
                    Ok(ids) => {
                        let now: HashSet<String> = ids.into_iter().collect();
                        if let Some(before) = &known {
                            for id in now.difference(before) {
                                if tx.send((id.clone(), Instant::now())).is_err() {
                                    return;
                                }
                            }
                        }
                        known = Some(now);
                    }
                    Err(e) => tracing::warn!("watch: cannot list the source: {e}"),
                }
                std::thread::sleep(interval);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    #[test]
    fn only_events_that_can_change_content_count() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(changes_content(kind), "{kind:?}");
        }
        // What iiifd's own reads of a file cause, and removals.
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(!changes_content(kind), "{kind:?}");
        }
    }
}
