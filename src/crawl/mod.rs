//! Pre-warming: render what viewers will ask for into the store before the first visitor.
//!
//! A job's [`CrawlSpec`] is validated by serde when it arrives (versions, formats, levels); [`plan`]
//! expands it into typed requests; the [`Crawler`] runs them through the pipeline's low-priority
//! lane ([`Pipeline::ensure`]: at most `crawl.max_workers` renders, each only when a render worker is
//! idle). Job state is persisted in the store's job records: a job interrupted by a restart (even
//! `kill -9`) resumes where it stopped, skipping what is stored.

pub(crate) mod plan;
pub(crate) mod watch;

use crate::error::{Error, Result};
use crate::iiif::parse::parse_image_params;
use crate::iiif::{ApiVersion, Format, Limits};
use crate::pipeline::{Ensured, Pipeline};
use crate::store::Store;
use plan::{manifest_identifiers, plan_image, PlanOptions, Planned};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An API version in a crawl request: `1`, `2` or `3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version(pub(crate) ApiVersion);

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u8(self.0.path_segment().parse().unwrap_or(3))
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let n = u8::deserialize(d)?;
        ApiVersion::from_path_segment(&n.to_string())
            .map(Version)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown version {n}: use 1, 2 or 3")))
    }
}

/// An output format in a crawl request: its extension, one iiifd renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutputFormat(pub(crate) Format);

impl Serialize for OutputFormat {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0.extension())
    }
}

impl<'de> Deserialize<'de> for OutputFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Format::from_extension(&s)
            .filter(|f| f.is_rendered())
            .map(OutputFormat)
            .ok_or_else(|| serde::de::Error::custom(format!("format {s} cannot be rendered")))
    }
}

/// The scale factors to warm: `"all"` or a list.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) enum Levels {
    /// Every scale factor info.json lists.
    #[default]
    All,
    /// These.
    Only(Vec<u32>),
}

impl Serialize for Levels {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Levels::All => s.serialize_str("all"),
            Levels::Only(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Levels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<u32>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("levels must be \"all\" or a list of scale factors")
        })? {
            Raw::Word(w) if w == "all" => Ok(Levels::All),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "levels must be \"all\" or a list of scale factors, not \"{w}\""
            ))),
            Raw::List(v) => Ok(Levels::Only(v)),
        }
    }
}

fn default_versions() -> Vec<Version> {
    vec![Version(ApiVersion::V3)]
}

fn default_formats() -> Vec<OutputFormat> {
    vec![OutputFormat(Format::Jpg)]
}

/// What a crawl request asks for (the JSON body of `POST /admin/crawl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CrawlSpec {
    /// Identifiers to warm.
    #[serde(default)]
    pub(crate) identifiers: Vec<String>,
    /// Warm every image the source holds.
    #[serde(default)]
    pub(crate) all: bool,
    /// A IIIF Presentation 2 or 3 manifest or collection: warm every image service of this server
    /// it references.
    #[serde(default, skip_serializing)]
    pub(crate) manifest: Option<serde_json::Value>,
    /// API versions whose URL shapes to warm (default `[3]`).
    #[serde(default = "default_versions")]
    pub(crate) versions: Vec<Version>,
    /// `"all"` (default) or a list of scale factors.
    #[serde(default)]
    pub(crate) levels: Levels,
    /// Formats (default `["jpg"]`).
    #[serde(default = "default_formats")]
    pub(crate) formats: Vec<OutputFormat>,
    /// Extra thumbnail sizes in 3.0 syntax, e.g. `["!256,256", ",120"]`.
    #[serde(default)]
    pub(crate) thumbnails: Vec<String>,
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JobStatus {
    /// Accepted, not started.
    Queued,
    /// Rendering.
    Running,
    /// Every planned request was tried (some may have failed: see `failed`).
    Done,
    /// Stopped on request.
    Cancelled,
    /// It could not go on: nothing could be planned, every request failed, or too many failed in
    /// a row (the source or the store is broken).
    Failed,
}

impl JobStatus {
    /// Whether the job still has work to do (and resumes after a restart).
    fn unfinished(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// A job's persisted state (also the body of `GET /admin/crawl/{id}`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobState {
    /// Job id.
    pub(crate) id: String,
    /// Where it stands.
    pub(crate) state: JobStatus,
    /// The request, with a manifest already resolved into identifiers.
    pub(crate) spec: CrawlSpec,
    /// Requests planned.
    pub(crate) planned: u64,
    /// Requests before this index are finished (the resume point).
    pub(crate) next: u64,
    /// Rendered by this job.
    pub(crate) rendered: u64,
    /// Found already stored.
    pub(crate) already_stored: u64,
    /// Failed (including unknown identifiers).
    pub(crate) failed: u64,
    /// The first errors.
    pub(crate) errors: Vec<String>,
    /// Bytes of the derivatives this job rendered.
    pub(crate) bytes_written: u64,
    /// Seconds spent running (summed over restarts).
    pub(crate) elapsed_secs: f64,
    /// Estimated seconds left.
    pub(crate) eta_secs: Option<f64>,
    /// Unix seconds of submission.
    pub(crate) created: u64,
}

/// Most errors kept in a job's state.
const MAX_ERRORS: usize = 10;
/// A job fails after this many requests in a row failed.
const MAX_FAILURES_IN_A_ROW: u64 = 200;

/// What a crawler needs to know of the server.
#[derive(Clone, Debug)]
pub(crate) struct CrawlSettings {
    /// The IIIF prefix (for manifests).
    pub(crate) prefix: String,
    /// The public base URL (for manifests).
    pub(crate) public_base_url: String,
    /// The tile size info.json advertises for sources without tiles of their own.
    pub(crate) tile_size: u32,
    /// Requests in flight at once.
    pub(crate) workers: usize,
}

/// A running or finished job.
struct Job {
    state: Mutex<JobState>,
    cancel: AtomicBool,
}

/// The crawl jobs of one server.
pub(crate) struct Crawler {
    pipeline: Arc<Pipeline>,
    store: Arc<Store>,
    settings: CrawlSettings,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Crawler {
    /// A crawler over `pipeline`, persisting its jobs in `store`.
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        store: Arc<Store>,
        settings: CrawlSettings,
    ) -> Crawler {
        Crawler {
            pipeline,
            store,
            settings,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// Validate `spec` further (identifiers, thumbnails), persist a queued job and start it.
    /// Returns the job id.
    pub(crate) async fn submit(self: &Arc<Self>, mut spec: CrawlSpec) -> Result<String> {
        let bad = |m: String| Error::BadRequest(m);
        if let Some(manifest) = spec.manifest.take() {
            let ids = manifest_identifiers(
                &manifest,
                &self.settings.prefix,
                &self.settings.public_base_url,
            );
            if ids.is_empty() {
                return Err(bad(
                    "the manifest references no image service of this server".into(),
                ));
            }
            spec.identifiers.extend(ids);
        }
        if spec.all {
            let source = Arc::clone(self.pipeline.source());
            let all = crate::pipeline::blocking(move || source.list()).await??;
            spec.identifiers.extend(all);
            spec.all = false;
        }
        if spec.identifiers.is_empty() {
            return Err(bad(
                "nothing to crawl: give identifiers, all or a manifest".into()
            ));
        }
        if spec.versions.is_empty() || spec.formats.is_empty() {
            return Err(bad("versions and formats must not be empty".into()));
        }
        for t in &spec.thumbnails {
            parse_image_params(ApiVersion::V3, "full", t, "0", "default.jpg", Format::Jpg)?;
        }
        // All identifiers unknown is a client error; some unknown are reported by the job.
        let mut known = 0;
        for id in &spec.identifiers {
            // A crawl asks the source itself: an image added since a 404 is found at once.
            self.pipeline.forget_missing(id);
            if self.pipeline.locate(id).await.is_ok() {
                known += 1;
            }
        }
        if known == 0 {
            return Err(crate::source::SourceError::NotFound(spec.identifiers.join(", ")).into());
        }
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
            state: JobStatus::Queued,
            spec,
            planned: 0,
            next: 0,
            rendered: 0,
            already_stored: 0,
            failed: 0,
            errors: Vec::new(),
            bytes_written: 0,
            elapsed_secs: 0.0,
            eta_secs: None,
            created: now_secs(),
        };
        self.start(state);
        Ok(id)
    }

    fn start(self: &Arc<Self>, state: JobState) {
        let id = state.id.clone();
        self.persist(&state);
        // The job must survive a crash from its first moment (progress need not: a resumed crawl
        // skips what is stored). One fsync per job, on the admin path only.
        if let Err(e) = self.store.flush() {
            tracing::warn!("cannot flush crawl job {id}: {e}");
        }
        let job = Arc::new(Job {
            state: Mutex::new(state),
            cancel: AtomicBool::new(false),
        });
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id, Arc::clone(&job));
        }
        let crawler = Arc::clone(self);
        tokio::spawn(async move { crawler.run(job).await });
    }

    /// Resume the jobs a previous process left queued or running; load the others for listing.
    pub(crate) fn resume(self: &Arc<Self>) {
        let states: Vec<JobState> = match self.store.jobs().all() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot read crawl jobs: {e}");
                return;
            }
        };
        for state in states {
            if state.state.unfinished() {
                tracing::info!(job = %state.id, next = state.next, "resuming crawl job");
                self.start(state);
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
    pub(crate) fn get(&self, id: &str) -> Option<JobState> {
        let job = self.jobs.lock().ok()?.get(id).cloned()?;
        let state = job.state.lock().ok()?.clone();
        Some(state)
    }

    /// Every job's state, newest first.
    pub(crate) fn list(&self) -> Vec<JobState> {
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
    pub(crate) fn cancel(&self, id: &str) -> bool {
        match self.jobs.lock().ok().and_then(|m| m.get(id).cloned()) {
            Some(job) => {
                job.cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn persist(&self, state: &JobState) {
        if let Err(e) = self.store.jobs().put(&state.id, state) {
            tracing::warn!("cannot persist crawl job {}: {e}", state.id);
        }
    }

    /// Build the whole plan: per image and version, then ordered by priority (stable, so images
    /// keep their order within a priority class).
    async fn plan(&self, job: &Job, spec: &CrawlSpec) -> Vec<Planned> {
        let limits: Limits = *self.pipeline.limits();
        let levels = match &spec.levels {
            Levels::All => None,
            Levels::Only(v) => Some(v.as_slice()),
        };
        let mut all = Vec::new();
        for id in &spec.identifiers {
            let source = match self.pipeline.locate(id).await {
                Ok(s) => s,
                Err(e) => {
                    update(job, |s| note_error(s, format!("{id}: {e}")));
                    continue;
                }
            };
            // The crawl warms the tiles info.json advertises: the file's own when it has them.
            let opts = PlanOptions {
                tile: source.probe.tile.unwrap_or(self.settings.tile_size),
                limits: &limits,
                levels,
                thumbnails: &spec.thumbnails,
            };
            for v in &spec.versions {
                for f in &spec.formats {
                    all.extend(plan_image(id, source.size(), v.0, f.0, &opts));
                }
            }
        }
        all.sort_by_key(|p| p.priority);
        all
    }

    async fn run(self: Arc<Self>, job: Arc<Job>) {
        let spec = update(&job, |s| s.state = JobStatus::Running).spec;
        let started = Instant::now();
        let base_elapsed = update(&job, |_| {}).elapsed_secs;
        let items = self.plan(&job, &spec).await;
        let resume_at = update(&job, |s| s.planned = items.len() as u64).next as usize;
        if items.is_empty() {
            let s = update(&job, |s| {
                s.state = JobStatus::Failed;
                s.eta_secs = Some(0.0);
            });
            self.persist(&s);
            tracing::warn!(job = %s.id, "crawl job failed: nothing could be planned");
            return;
        }
        let chunk = self.settings.workers.max(1) * 4;
        let mut index = resume_at.min(items.len());
        let mut last_persist = Instant::now();
        let mut failed_in_a_row = 0u64;
        while index < items.len() {
            if job.cancel.load(Ordering::Relaxed) {
                let s = update(&job, |s| s.state = JobStatus::Cancelled);
                self.persist(&s);
                return;
            }
            let end = (index + chunk).min(items.len());
            let mut tasks = Vec::new();
            for item in &items[index..end] {
                let pipeline = Arc::clone(&self.pipeline);
                let item = item.clone();
                tasks.push(tokio::spawn(async move {
                    warm_one(&pipeline, &item).await.map_err(|e| (item, e))
                }));
            }
            for t in tasks {
                let outcome = t.await;
                failed_in_a_row = match outcome {
                    Ok(Ok(_)) => 0,
                    _ => failed_in_a_row + 1,
                };
                update(&job, |s| match outcome {
                    Ok(Ok(Ensured::Stored)) => s.already_stored += 1,
                    Ok(Ok(Ensured::Rendered(bytes))) => {
                        s.rendered += 1;
                        s.bytes_written += bytes;
                    }
                    Ok(Err((item, e))) => note_error(
                        s,
                        format!("{} {:?}: {e}", item.identifier, item.request.region),
                    ),
                    Err(e) => note_error(s, format!("crawl task failed: {e}")),
                });
            }
            index = end;
            let elapsed = started.elapsed().as_secs_f64();
            let done_here = (index - resume_at) as f64;
            let state = update(&job, |s| {
                s.next = index as u64;
                s.elapsed_secs = base_elapsed + elapsed;
                s.eta_secs =
                    (done_here > 0.0).then(|| elapsed / done_here * (items.len() - index) as f64);
                if failed_in_a_row >= MAX_FAILURES_IN_A_ROW {
                    s.state = JobStatus::Failed;
                }
            });
            if state.state == JobStatus::Failed {
                self.persist(&state);
                tracing::warn!(job = %state.id, "crawl job failed: {failed_in_a_row} requests in a row failed");
                return;
            }
            if last_persist.elapsed() > Duration::from_millis(500) || index == items.len() {
                self.persist(&state);
                last_persist = Instant::now();
            }
        }
        let s = update(&job, |s| {
            s.state = if s.failed > 0 && s.failed == s.planned {
                JobStatus::Failed
            } else {
                JobStatus::Done
            };
            s.eta_secs = Some(0.0);
            s.elapsed_secs = base_elapsed + started.elapsed().as_secs_f64();
        });
        self.persist(&s);
        tracing::info!(job = %s.id, state = ?s.state, rendered = s.rendered, stored = s.already_stored, failed = s.failed, "crawl job ended");
    }
}

fn rand_suffix() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (std::process::id() << 7)) as u16
}

fn update(job: &Job, f: impl FnOnce(&mut JobState)) -> JobState {
    match job.state.lock() {
        Ok(mut s) => {
            f(&mut s);
            s.clone()
        }
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn note_error(s: &mut JobState, message: String) {
    s.failed += 1;
    if s.errors.len() < MAX_ERRORS {
        s.errors.push(message);
    }
}

async fn warm_one(pipeline: &Arc<Pipeline>, item: &Planned) -> Result<Ensured> {
    let prepared = pipeline
        .prepare(&item.identifier, &item.request, None, true)
        .await?;
    pipeline.ensure(prepared).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_validated_when_parsed() {
        let ok: CrawlSpec = serde_json::from_str(
            r#"{"identifiers": ["a"], "versions": [3, 2], "levels": [8, 4], "formats": ["jpg", "webp"]}"#,
        )
        .expect("valid");
        assert_eq!(
            ok.versions,
            vec![Version(ApiVersion::V3), Version(ApiVersion::V2)]
        );
        assert_eq!(ok.levels, Levels::Only(vec![8, 4]));
        let defaults: CrawlSpec = serde_json::from_str(r#"{"all": true}"#).expect("valid");
        assert_eq!(defaults.versions, vec![Version(ApiVersion::V3)]);
        assert_eq!(defaults.formats, vec![OutputFormat(Format::Jpg)]);
        assert_eq!(defaults.levels, Levels::All);
        for bad in [
            r#"{"versions": [4]}"#,
            r#"{"formats": ["pdf"]}"#,
            r#"{"levels": "some"}"#,
            r#"{"levels": [-1]}"#,
            r#"{"colour": true}"#,
        ] {
            assert!(serde_json::from_str::<CrawlSpec>(bad).is_err(), "{bad}");
        }
        // A persisted state reads back.
        let state = serde_json::json!({"id": "x", "state": "failed", "spec": ok, "planned": 1, "next": 0,
            "rendered": 0, "already_stored": 0, "failed": 1, "errors": [], "bytes_written": 0,
            "elapsed_secs": 0.0, "eta_secs": null, "created": 0});
        let back: JobState = serde_json::from_value(state).expect("state");
        assert_eq!(back.state, JobStatus::Failed);
    }
}
