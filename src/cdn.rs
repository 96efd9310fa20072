//! Purging the CDN in front (`cdn.purge_url`): when an image's derivatives are purged here (the
//! admin purge) or its source is seen to have changed, the CDN is asked to drop every answer
//! tagged with the image's tag ([`crate::key::cdn_tag`], the value `cdn.tag_header` carries).
//!
//! A request never waits for it: purges queue (bounded; a full queue counts the purge as failed
//! rather than holding anyone), run a few at a time on a thread of their own, and are retried
//! with backoff before they are given up and counted.

use crate::config::CdnConfig;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Purges waiting to be sent; past this, a purge is counted failed at once.
const QUEUE: usize = 4096;
/// Purge calls in flight at once (CDN APIs rate-limit, and this is background work).
const CONCURRENCY: usize = 4;
/// Attempts per purge: the first and four retries, 250 ms, 0.5 s, 1 s and 2 s apart.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// One call's deadline.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the purges did, for `/metrics`.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    pending: AtomicU64,
}

/// The purge call, as configured.
struct Call {
    url: String,
    method: Method,
    headers: HeaderMap,
    body: String,
}

impl Call {
    fn for_identifier(&self, identifier: &str) -> (String, String) {
        let tag = crate::key::cdn_tag(identifier);
        let encoded: String =
            form_urlencoded::byte_serialize(identifier.as_bytes()).collect::<String>();
        let fill = |t: &str| t.replace("{tag}", &tag).replace("{identifier}", &encoded);
        (fill(&self.url), fill(&self.body))
    }
}

/// The CDN purger: hand it identifiers, it does the rest in the background.
pub(crate) struct Purger {
    tx: mpsc::Sender<String>,
    counters: Arc<Counters>,
}

impl Purger {
    /// The purger `cfg` describes, `None` when `cdn.purge_url` is empty. `env` resolves the
    /// `${NAME}` references in `cdn.purge_headers` (API tokens stay out of the config file).
    pub(crate) fn start(
        cfg: &CdnConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Purger>, String> {
        if cfg.purge_url.is_empty() {
            return Ok(None);
        }
        let call = call_of(cfg, env)?;
        crate::source::remote::install_tls_provider();
        let client = Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("cdn: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("iiifd-cdn".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(run(rx, client, Arc::new(call), c)),
                    Err(e) => tracing::error!("cdn purger not started: {e}"),
                }
            })
            .map_err(|e| format!("cdn: {e}"))?;
        Ok(Some(Purger { tx, counters }))
    }

    /// Ask the CDN to drop every answer for `identifier`; returns at once.
    pub(crate) fn purge(&self, identifier: &str) {
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(identifier.to_owned()).is_err() {
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(identifier, "cdn purge dropped: the queue is full");
        }
    }

    /// The purge counters in the Prometheus text format.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let _ = write!(
            out,
            "# HELP iiifd_cdn_purges_total CDN purge calls by outcome (failed: given up after retries, or dropped).\n\
             # TYPE iiifd_cdn_purges_total counter\n\
             iiifd_cdn_purges_total{{result=\"sent\"}} {}\n\
             iiifd_cdn_purges_total{{result=\"failed\"}} {}\n",
            c.sent.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
        );
        crate::metrics::counter(
            out,
            "iiifd_cdn_purge_retries_total",
            "CDN purge calls repeated after a refusal or an error.",
            c.retries.load(Ordering::Relaxed),
        );
        crate::metrics::gauge(
            out,
            "iiifd_cdn_purges_pending",
            "CDN purges queued or in flight.",
            c.pending.load(Ordering::Relaxed),
        );
    }
}

/// The configured call, its header references resolved.
fn call_of(cfg: &CdnConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Call, String> {
    let method = Method::from_bytes(cfg.purge_method.as_bytes())
        .map_err(|_| format!("cdn.purge_method: {:?} is not a method", cfg.purge_method))?;
    let mut headers = HeaderMap::new();
    for line in &cfg.purge_headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("cdn.purge_headers: {line:?} is not `Name: value`"))?;
        let value = expand(value.trim(), env)?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("cdn.purge_headers: {name:?} is not a header name"))?;
        // The value may be a secret: the message names the header only.
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("cdn.purge_headers: the value of {name} is not a header value"))?;
        headers.insert(name, value);
    }
    Ok(Call {
        url: cfg.purge_url.clone(),
        method,
        headers,
        body: cfg.purge_body.clone(),
    })
}

/// `text` with each `${NAME}` replaced by the variable's value; a missing variable is an error.
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "cdn.purge_headers: `${` without `}`".to_owned())?;
        let name = &after[..end];
        out.push_str(
            &env(name).ok_or_else(|| format!("cdn.purge_headers: ${{{name}}} is not set"))?,
        );
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

async fn run(mut rx: mpsc::Receiver<String>, client: Client, call: Arc<Call>, c: Arc<Counters>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(identifier) = rx.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (client, call, c) = (client.clone(), Arc::clone(&call), Arc::clone(&c));
        tokio::spawn(async move {
            let ok = send(&client, &call, &identifier, &c).await;
            let counter = if ok { &c.sent } else { &c.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            c.pending.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// One purge, retried: whether the CDN accepted it (a 2xx).
async fn send(client: &Client, call: &Call, identifier: &str, c: &Counters) -> bool {
    let (url, body) = call.for_identifier(identifier);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let mut request = client
            .request(call.method.clone(), &url)
            .headers(call.headers.clone());
        if !body.is_empty() {
            request = request.body(body.clone());
        }
        let why = match request.send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{}", e.without_url()),
        };
        if attempt == ATTEMPTS {
            tracing::warn!(
                identifier,
                "cdn purge given up after {ATTEMPTS} attempts: {why}"
            );
            return false;
        }
        c.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_take_secrets_from_the_environment_and_templates_fill_in() {
        let cfg = CdnConfig {
            purge_url: "http://cdn.test/purge/{tag}?p=/iiif/{identifier}".into(),
            purge_method: "POST".into(),
            purge_headers: vec!["Authorization: Bearer ${CDN_TOKEN}".into()],
            purge_body: r#"{"tags":["{tag}"]}"#.into(),
            ..CdnConfig::default()
        };
        let env = |name: &str| (name == "CDN_TOKEN").then(|| "s3cret".to_owned());
        let call = call_of(&cfg, &env).expect("valid");
        assert_eq!(call.headers["authorization"], "Bearer s3cret");
        let (url, body) = call.for_identifier("a b/c");
        let tag = crate::key::cdn_tag("a b/c");
        assert_eq!(url, format!("http://cdn.test/purge/{tag}?p=/iiif/a+b%2Fc"));
        assert_eq!(body, format!(r#"{{"tags":["{tag}"]}}"#));
        // A missing variable or a malformed line is a start-up error that names no secret.
        let none = |_: &str| None;
        let e = call_of(&cfg, &none).err().unwrap_or_default();
        assert!(e.contains("CDN_TOKEN"), "{e}");
        let bad = CdnConfig {
            purge_headers: vec!["no colon".into()],
            ..cfg.clone()
        };
        assert!(call_of(&bad, &env).is_err());
    }
}
