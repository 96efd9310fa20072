//! Pre-warming: expand what viewers will ask for (every tile of every scale factor in info.json, every
//! `sizes` entry, the thumbnails asked for) into canonical requests, and render the missing ones into
//! the store ahead of the first visitor.
//!
//! Jobs run through the same pipeline and store as live requests but in a low-priority lane: at most
//! `crawl.max_workers` crawl renders at once, and a crawl render only enters the pool when a worker is
//! idle, so a live request never queues behind crawl work. Job state lives in the sled index; a job
//! interrupted by a restart (even `kill -9`) resumes where it stopped, skipping what is stored.

use crate::error::{Error, Result};
use crate::iiif::canonical::ImageSize;
use crate::iiif::info::{scale_factors, sizes};
use crate::iiif::parse::{decode_segment, parse_image_params, Part};
use crate::iiif::{ApiVersion, Format, Limits};
use crate::service::App;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a crawl request asks for (the JSON body of `POST /admin/crawl`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrawlSpec {
    /// Identifiers to warm.
    #[serde(default)]
    pub identifiers: Vec<String>,
    /// Warm every image under the root.
    #[serde(default)]
    pub all: bool,
    /// A IIIF Presentation 2 or 3 manifest or collection: warm every image service of this server it
    /// references.
    #[serde(default, skip_serializing)]
    pub manifest: Option<serde_json::Value>,
    /// API versions whose URL shapes to warm (default `[3]`).
    #[serde(default)]
    pub versions: Vec<u8>,
    /// `"all"` (default) or a list of scale factors.
    #[serde(default)]
    pub levels: Option<serde_json::Value>,
    /// Formats (default `["jpg"]`).
    #[serde(default)]
    pub formats: Vec<String>,
    /// Extra thumbnail sizes, e.g. `["!256,256", ",120"]`.
    #[serde(default)]
    pub thumbnails: Vec<String>,
}

/// A job's persisted state (also the body of `GET /admin/crawl/{id}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobState {
    /// Job id.
    pub id: String,
    /// queued, running, done, cancelled or failed.
    pub state: String,
    /// The request, with a manifest already resolved into identifiers.
    pub spec: CrawlSpec,
    /// Requests planned.
    pub planned: u64,
    /// Requests before this index are finished (the resume point).
    pub next: u64,
    /// Rendered by this job.
    pub rendered: u64,
    /// Found already stored.
    pub already_stored: u64,
    /// Failed (including unknown identifiers).
    pub failed: u64,
    /// The first errors.
    pub errors: Vec<String>,
    /// Bytes of the derivatives this job rendered.
    pub bytes_written: u64,
    /// Seconds spent running (summed over restarts).
    pub elapsed_secs: f64,
    /// Estimated seconds left.
    pub eta_secs: Option<f64>,
    /// Unix seconds of submission.
    pub created: u64,
}

/// One planned request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Ordering class: 0 = sizes and thumbnails, then coarse levels before fine ones.
    pub priority: u32,
    /// Identifier.
    pub identifier: String,
    /// API version.
    pub version: ApiVersion,
    /// `{region}/{size}/0/{quality}.{format}`.
    pub params: String,
}

/// Most errors kept in a job's state.
const MAX_ERRORS: usize = 10;

/// What is the same for every image of a job.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions<'a> {
    /// Tile edge (info.json `tiles`).
    pub tile: u32,
    /// Server limits (info.json `sizes` respect them).
    pub limits: &'a Limits,
    /// Scale factors to warm; `None` = all.
    pub levels: Option<&'a [u32]>,
    /// Extra thumbnail sizes.
    pub thumbnails: &'a [String],
}

/// Plan the requests that warm one image, in the URL shapes OpenSeadragon sends for each version
/// (tiles `x,y,w,h` clipped at the edges with sizes `w,h` in 3.0 and `w,` in 2.1 and 1.1).
pub fn plan_image(
    identifier: &str,
    size: ImageSize,
    version: ApiVersion,
    format: Format,
    opts: &PlanOptions<'_>,
) -> Vec<Planned> {
    let PlanOptions {
        tile,
        limits,
        levels,
        thumbnails,
    } = *opts;
    let quality = if version == ApiVersion::V1 {
        "native"
    } else {
        "default"
    };
    let mut out = Vec::new();
    let mut push = |priority: u32, region: String, size: String| {
        out.push(Planned {
            priority,
            identifier: identifier.to_owned(),
            version,
            params: format!("{region}/{size}/0/{quality}.{}", format.extension()),
        });
    };
    for t in thumbnails {
        push(0, "full".into(), t.clone());
    }
    for (w, h) in sizes(size, tile, limits) {
        push(
            0,
            "full".into(),
            if version == ApiVersion::V3 {
                format!("{w},{h}")
            } else {
                format!("{w},")
            },
        );
    }
    let factors = scale_factors(size, tile);
    let n = factors.len() as u32;
    for (i, s) in factors.iter().enumerate().rev() {
        if levels.is_some_and(|l| !l.contains(s)) {
            continue;
        }
        let span = u64::from(tile) * u64::from(*s);
        let (iw, ih) = (u64::from(size.width), u64::from(size.height));
        for y in (0..ih).step_by(span as usize) {
            for x in (0..iw).step_by(span as usize) {
                let (w, h) = (span.min(iw - x), span.min(ih - y));
                let (sw, sh) = (w.div_ceil(u64::from(*s)), h.div_ceil(u64::from(*s)));
                let size_param = if version == ApiVersion::V3 {
                    format!("{sw},{sh}")
                } else {
                    format!("{sw},")
                };
                // Coarse levels (large scale factors) first: priority grows towards full resolution.
                push(1 + n - i as u32, format!("{x},{y},{w},{h}"), size_param);
            }
        }
    }
    out
}

/// Identifiers of this server's image services referenced by a Presentation manifest or collection:
/// every `id`/`@id` whose path contains `{prefix}/{1|2|3}/{identifier}`. With `public_base`, only URLs
/// under it count.
pub fn manifest_identifiers(
    manifest: &serde_json::Value,
    prefix: &str,
    public_base: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![manifest];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if let (true, Some(url)) = (k == "id" || k == "@id", v.as_str()) {
                        if let Some(id) = service_identifier(url, prefix, public_base) {
                            if !out.contains(&id) {
                                out.push(id);
                            }
                        }
                    }
                    stack.push(v);
                }
            }
            serde_json::Value::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
    out
}

fn service_identifier(url: &str, prefix: &str, public_base: &str) -> Option<String> {
    if !public_base.is_empty() && !url.starts_with(public_base) {
        return None;
    }
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
    let path = format!("/{path}");
    let after = path.split_once(&format!("{prefix}/"))?.1;
    let (version, rest) = after.split_once('/')?;
    ApiVersion::from_path_segment(version)?;
    let encoded = rest.split('/').next()?;
    decode_segment(encoded, Part::Identifier)
        .ok()
        .filter(|s| !s.is_empty())
}

/// A running or finished job.
struct Job {
    state: Mutex<JobState>,
    cancel: AtomicBool,
}

/// The crawl jobs of one server.
#[derive(Default)]
pub struct Crawler {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Crawler {
    /// Validate `spec`, persist a queued job and start it. Returns the job id.
    pub async fn submit(&self, app: &Arc<App>, mut spec: CrawlSpec) -> Result<String> {
        let bad = |m: String| Error::BadRequest(m);
        if let Some(manifest) = spec.manifest.take() {
            let ids = manifest_identifiers(
                &manifest,
                &app.config().prefix,
                &app.config().public_base_url,
            );
            if ids.is_empty() {
                return Err(bad(
                    "the manifest references no image service of this server".into(),
                ));
            }
            spec.identifiers.extend(ids);
        }
        if spec.all {
            let sources = app.sources().clone();
            let all = tokio::task::spawn_blocking(move || sources.list())
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(|e| Error::Internal(e.to_string()))?;
            spec.identifiers.extend(all);
            spec.all = false;
        }
        if spec.identifiers.is_empty() {
            return Err(bad(
                "nothing to crawl: give identifiers, all or a manifest".into()
            ));
        }
        if spec.versions.is_empty() {
            spec.versions = vec![3];
        }
        if let Some(v) = spec
            .versions
            .iter()
            .find(|v| ApiVersion::from_path_segment(&v.to_string()).is_none())
        {
            return Err(bad(format!("unknown version {v}: use 1, 2 or 3")));
        }
        if spec.formats.is_empty() {
            spec.formats = vec!["jpg".into()];
        }
        for f in &spec.formats {
            if !Format::from_extension(f).is_some_and(Format::is_rendered) {
                return Err(bad(format!("format {f} cannot be rendered")));
            }
        }
        levels_of(&spec)?;
        for t in &spec.thumbnails {
            parse_image_params(ApiVersion::V3, "full", t, "0", "default.jpg", Format::Jpg)?;
        }
        // All identifiers unknown is a client error; some unknown are reported by the job.
        let mut known = 0;
        for id in &spec.identifiers {
            if app.source(id).await.is_ok() {
                known += 1;
            }
        }
        if known == 0 {
            return Err(Error::NotFound(spec.identifiers.join(", ")));
        }
        let created = now_secs();
        let id = format!(
            "{:x}{:04x}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            rand_suffix()
        );
        let state = JobState {
            id: id.clone(),
            state: "queued".into(),
            spec,
            created,
            ..JobState::default()
        };
        self.start(app, state);
        Ok(id)
    }

    fn start(&self, app: &Arc<App>, state: JobState) {
        let id = state.id.clone();
        persist(app, &state);
        // The job must survive a crash from its first moment (progress need not: a resumed crawl
        // skips what is stored). One fsync per job, on the admin path only.
        if let Err(e) = app.store().flush() {
            tracing::warn!("cannot flush crawl job {id}: {e}");
        }
        let job = Arc::new(Job {
            state: Mutex::new(state),
            cancel: AtomicBool::new(false),
        });
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id, Arc::clone(&job));
        }
        let app = Arc::clone(app);
        tokio::spawn(async move { run(app, job).await });
    }

    /// Resume the jobs a previous process left queued or running.
    pub fn resume(&self, app: &Arc<App>) {
        let Ok(jobs) = app.store().index().jobs() else {
            return;
        };
        for (_, bytes) in jobs {
            let Ok(state) = serde_json::from_slice::<JobState>(&bytes) else {
                continue;
            };
            if state.state == "queued" || state.state == "running" {
                tracing::info!(job = %state.id, next = state.next, "resuming crawl job");
                self.start(app, state);
            } else if let Ok(mut map) = self.jobs.lock() {
                map.insert(
                    state.id.clone(),
                    Arc::new(Job {
                        state: Mutex::new(state),
                        cancel: AtomicBool::new(false),
                    }),
                );
            }
        }
    }

    /// A job's state.
    pub fn get(&self, id: &str) -> Option<JobState> {
        let job = self.jobs.lock().ok()?.get(id).cloned()?;
        let state = job.state.lock().ok()?.clone();
        Some(state)
    }

    /// Every job's state, newest first.
    pub fn list(&self) -> Vec<JobState> {
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut out: Vec<JobState> = jobs
            .iter()
            .filter_map(|j| j.state.lock().ok().map(|s| s.clone()))
            .collect();
        out.sort_by(|a, b| b.id.cmp(&a.id));
        out
    }

    /// Ask a job to stop; returns whether it exists.
    pub fn cancel(&self, id: &str) -> bool {
        match self.jobs.lock().ok().and_then(|m| m.get(id).cloned()) {
            Some(job) => {
                job.cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

fn rand_suffix() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (std::process::id() << 7)) as u16
}

fn levels_of(spec: &CrawlSpec) -> Result<Option<Vec<u32>>> {
    match &spec.levels {
        None => Ok(None),
        Some(serde_json::Value::String(s)) if s == "all" => Ok(None),
        Some(v) => serde_json::from_value::<Vec<u32>>(v.clone())
            .map(Some)
            .map_err(|_| {
                Error::BadRequest("levels must be \"all\" or a list of scale factors".into())
            }),
    }
}

fn persist(app: &App, state: &JobState) {
    match serde_json::to_vec(state) {
        Ok(bytes) => {
            if let Err(e) = app.store().index().job_put(&state.id, &bytes) {
                tracing::warn!("cannot persist crawl job {}: {e}", state.id);
            }
        }
        Err(e) => tracing::warn!("cannot serialise crawl job: {e}"),
    }
}

fn update(job: &Job, f: impl FnOnce(&mut JobState)) -> JobState {
    match job.state.lock() {
        Ok(mut s) => {
            f(&mut s);
            s.clone()
        }
        Err(_) => JobState::default(),
    }
}

fn note_error(s: &mut JobState, message: String) {
    s.failed += 1;
    if s.errors.len() < MAX_ERRORS {
        s.errors.push(message);
    }
}

/// Build the whole plan: per image and version, then ordered by priority (stable, so images keep
/// their order within a priority class).
async fn plan(app: &Arc<App>, job: &Job, spec: &CrawlSpec) -> Vec<Planned> {
    let levels = levels_of(spec).ok().flatten();
    let limits = app.config().limits();
    let opts = PlanOptions {
        tile: app.config().tile_size,
        limits: &limits,
        levels: levels.as_deref(),
        thumbnails: &spec.thumbnails,
    };
    let mut all = Vec::new();
    for id in &spec.identifiers {
        let source = match app.source(id).await {
            Ok(s) => s,
            Err(e) => {
                update(job, |s| note_error(s, format!("{id}: {e}")));
                continue;
            }
        };
        for v in &spec.versions {
            let Some(version) = ApiVersion::from_path_segment(&v.to_string()) else {
                continue;
            };
            for f in &spec.formats {
                let Some(format) = Format::from_extension(f) else {
                    continue;
                };
                // The crawl warms the tiles info.json advertises: the file's own when it has them.
                let opts = PlanOptions {
                    tile: source.tile.unwrap_or(opts.tile),
                    ..opts
                };
                all.extend(plan_image(id, source.size, version, format, &opts));
            }
        }
    }
    all.sort_by_key(|p| p.priority);
    all
}

async fn run(app: Arc<App>, job: Arc<Job>) {
    let spec = update(&job, |s| s.state = "running".into()).spec;
    let started = Instant::now();
    let base_elapsed = update(&job, |_| {}).elapsed_secs;
    let items = plan(&app, &job, &spec).await;
    let resume_at = update(&job, |s| s.planned = items.len() as u64).next as usize;
    let chunk = app.config().crawl_workers() * 4;
    let mut index = resume_at.min(items.len());
    let mut last_persist = Instant::now();
    while index < items.len() {
        if job.cancel.load(Ordering::Relaxed) {
            let s = update(&job, |s| s.state = "cancelled".into());
            persist(&app, &s);
            return;
        }
        let end = (index + chunk).min(items.len());
        let mut tasks = Vec::new();
        for item in &items[index..end] {
            let app = Arc::clone(&app);
            let item = item.clone();
            tasks.push(tokio::spawn(async move {
                warm_one(&app, &item).await.map_err(|e| (item, e))
            }));
        }
        for t in tasks {
            match t.await {
                Ok(Ok(Warmed::Stored)) => {
                    update(&job, |s| s.already_stored += 1);
                }
                Ok(Ok(Warmed::Rendered(bytes))) => {
                    update(&job, |s| {
                        s.rendered += 1;
                        s.bytes_written += bytes;
                    });
                }
                Ok(Err((item, e))) => {
                    update(&job, |s| {
                        note_error(s, format!("{} {}: {e}", item.identifier, item.params))
                    });
                }
                Err(e) => {
                    update(&job, |s| note_error(s, format!("crawl task failed: {e}")));
                }
            }
        }
        index = end;
        let elapsed = started.elapsed().as_secs_f64();
        let done_here = (index - resume_at) as f64;
        let state = update(&job, |s| {
            s.next = index as u64;
            s.elapsed_secs = base_elapsed + elapsed;
            s.eta_secs =
                (done_here > 0.0).then(|| elapsed / done_here * (items.len() - index) as f64);
        });
        if last_persist.elapsed() > Duration::from_millis(500) || index == items.len() {
            persist(&app, &state);
            last_persist = Instant::now();
        }
    }
    let s = update(&job, |s| {
        s.state = "done".into();
        s.eta_secs = Some(0.0);
        s.elapsed_secs = base_elapsed + started.elapsed().as_secs_f64();
    });
    persist(&app, &s);
    tracing::info!(job = %s.id, rendered = s.rendered, stored = s.already_stored, failed = s.failed, "crawl job done");
}

enum Warmed {
    Stored,
    Rendered(u64),
}

async fn warm_one(app: &Arc<App>, item: &Planned) -> Result<Warmed> {
    let (region, rest) = item
        .params
        .split_once('/')
        .ok_or_else(|| Error::Internal("bad plan".into()))?;
    let (size, rest) = rest
        .split_once('/')
        .ok_or_else(|| Error::Internal("bad plan".into()))?;
    let (rotation, qf) = rest
        .split_once('/')
        .ok_or_else(|| Error::Internal("bad plan".into()))?;
    let request = parse_image_params(item.version, region, size, rotation, qf, Format::Jpg)?;
    let prepared = app.prepare(&item.identifier, &request, true).await?;
    if prepared.hit.is_some() {
        return Ok(Warmed::Stored);
    }
    let rendered = app.render_low_priority(prepared).await?;
    Ok(Warmed::Rendered(rendered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_levels_coarse_first() {
        let size = ImageSize {
            width: 6000,
            height: 4000,
        };
        let limits = Limits::default();
        let thumbs = [",120".to_string()];
        let opts = PlanOptions {
            tile: 512,
            limits: &limits,
            levels: None,
            thumbnails: &thumbs,
        };
        let p = plan_image("a", size, ApiVersion::V3, Format::Jpg, &opts);
        // 96 + 24 + 6 + 2 + 1 tiles, 5 sizes, 1 thumbnail.
        assert_eq!(p.len(), 129 + 5 + 1);
        assert_eq!(p[0].params, "full/,120/0/default.jpg");
        assert!(
            p.windows(2).all(|w| w[0].priority <= w[1].priority),
            "sorted by construction"
        );
        assert_eq!(
            p.last().map(|x| x.params.as_str()),
            Some("5632,3584,368,416/368,416/0/default.jpg")
        );
        let opts = PlanOptions {
            tile: 512,
            limits: &limits,
            levels: Some(&[8]),
            thumbnails: &[],
        };
        let v2 = plan_image("a", size, ApiVersion::V2, Format::Jpg, &opts);
        assert_eq!(v2.len(), 5 + 2);
        assert!(v2
            .iter()
            .any(|x| x.params == "4096,0,1904,4000/238,/0/default.jpg"));
    }

    #[test]
    fn manifests_name_our_services_only() {
        let m = serde_json::json!({
            "items": [{"items": [{"items": [{"body": {"service": [
                {"id": "https://img.example.org/iiif/3/book%2Fp1", "type": "ImageService3"},
                {"@id": "https://img.example.org/iiif/2/p2/info.json"},
                {"id": "https://elsewhere.org/images/x"}
            ]}}]}]}]
        });
        let ids = manifest_identifiers(&m, "/iiif", "");
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"book/p1".to_string()) && ids.contains(&"p2".to_string()));
        assert!(manifest_identifiers(&m, "/iiif", "https://other.org/iiif").is_empty());
    }
}
