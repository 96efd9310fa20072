//! The HTTP backend (`source.kind = "http"`), for repositories that serve their masters over HTTP:
//! an identifier becomes a URL through `source.http.url_template` (`{identifier}` replaced by the
//! identifier, percent-encoded except for `/`), and iiifd fetches only from the hosts listed in
//! `source.http.allowed_hosts`, redirects included, so an identifier can never make it reach
//! elsewhere (an internal service, a cloud metadata address).
//!
//! HEAD gives the version (`ETag`, else `Last-Modified`, and `Content-Length`; a server without
//! HEAD is asked for one byte instead); reads are ranged GETs conditional on the ETag. Connection
//! failures and 5xx answers are retried twice with backoff, within the call's deadline.

use super::remote::{download_with, Fetch, Io, Meta, Op};
use super::{Fingerprint, SourceError, EXTENSIONS};
use crate::config::HttpSourceConfig;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Client, Method, StatusCode, Url};
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Masters behind a URL template.
pub(crate) struct HttpFetch {
    client: Client,
    template: String,
    allowed: Arc<Vec<String>>,
}

/// `host` or `host:port` of a URL, as `allowed_hosts` lists them.
fn host_of(url: &Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

fn is_allowed(allowed: &[String], url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
        && host_of(url).is_some_and(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(&h)))
}

/// Percent-encode everything but unreserved characters and `/`.
fn encode(identifier: &str) -> String {
    let mut out = String::with_capacity(identifier.len());
    for b in identifier.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const ATTEMPTS: u32 = 3;

/// Whether a failed attempt is worth another: the connection failed or the server erred.
fn retryable(r: &Result<reqwest::Response, reqwest::Error>) -> bool {
    match r {
        Ok(resp) => resp.status().is_server_error(),
        Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
    }
}

fn unavailable(reason: impl Into<String>) -> SourceError {
    SourceError::Unavailable {
        backend: "http",
        reason: reason.into(),
    }
}

/// A reqwest error without its URL's query (which may carry a token).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    };
    match e.url() {
        Some(u) => format!(
            "{kind}: {}://{}{}",
            u.scheme(),
            host_of(u).unwrap_or_default(),
            u.path()
        ),
        None => kind.to_owned(),
    }
}

/// Send a request made by `make`, retrying connection failures and 5xx answers.
async fn send(
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, SourceError> {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        let r = make().send().await;
        if attempt < ATTEMPTS && retryable(&r) {
            tokio::time::sleep(delay).await;
            delay *= 2;
            continue;
        }
        return r.map_err(|e| unavailable(describe(&e)));
    }
    Err(unavailable("no attempt made"))
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_owned)
}

impl HttpFetch {
    /// The backend `cfg` describes; `timeout` bounds each attempt.
    pub(crate) fn new(cfg: &HttpSourceConfig, timeout: Duration) -> Result<HttpFetch, String> {
        super::remote::install_tls_provider();
        let allowed: Arc<Vec<String>> = Arc::new(
            cfg.allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        );
        let for_redirects = Arc::clone(&allowed);
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else if is_allowed(&for_redirects, attempt.url()) {
                    attempt.follow()
                } else {
                    attempt.error("a redirect to a host outside source.http.allowed_hosts")
                }
            }))
            .build()
            .map_err(|e| format!("source.http: {e}"))?;
        Ok(HttpFetch {
            client,
            template: cfg.url_template.clone(),
            allowed,
        })
    }

    fn url(&self, name: &str) -> Result<Url, SourceError> {
        let refused = |reason| SourceError::BadIdentifier {
            identifier: name.to_owned(),
            reason,
        };
        let url = Url::parse(&self.template.replace("{identifier}", &encode(name)))
            .map_err(|_| refused("does not make a valid URL with source.http.url_template"))?;
        if !is_allowed(&self.allowed, &url) {
            return Err(refused("leads to a host outside source.http.allowed_hosts"));
        }
        Ok(url)
    }

    fn meta(&self, name: &str, url: &Url, len: u64, headers: &HeaderMap) -> Meta {
        let etag = header_str(headers, header::ETAG);
        let modified_text = header_str(headers, header::LAST_MODIFIED);
        let modified: Option<SystemTime> = modified_text
            .as_deref()
            .and_then(|t| httpdate::parse_http_date(t).ok());
        // Without either, the length alone names the version: say so in the docs, not here.
        let version = etag.clone().or(modified_text).unwrap_or_default();
        Meta {
            name: name.to_owned(),
            len,
            etag,
            modified,
            fingerprint: Fingerprint::new(format!("http:{url}:{len}:{version}")),
        }
    }
}

/// The status of an answer that is not the one asked for, as an error.
fn refused(status: StatusCode, name: &str) -> SourceError {
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => SourceError::NotFound(name.to_owned()),
        StatusCode::PRECONDITION_FAILED => unavailable(format!(
            "'{name}' changed while it was being read; try again"
        )),
        s => unavailable(format!("answered {s} for '{name}'")),
    }
}

impl Fetch for HttpFetch {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn candidates(&self, identifier: &str) -> Result<Vec<String>, SourceError> {
        let names: Vec<String> = std::iter::once(identifier.to_owned())
            .chain(EXTENSIONS.iter().map(|ext| format!("{identifier}.{ext}")))
            .collect();
        // Refuse an identifier whose URL leaves the allowed hosts before any request.
        self.url(identifier)?;
        Ok(names)
    }

    fn head(&self, io: &Io, name: &str) -> Result<Option<Meta>, SourceError> {
        let url = self.url(name)?;
        let client = self.client.clone();
        let u = url.clone();
        let answer = io.run(Op::Head, async move {
            let resp = send(|| client.request(Method::HEAD, u.clone())).await?;
            let status = resp.status();
            if status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_IMPLEMENTED {
                // No HEAD: one byte tells the length (Content-Range) and the validators.
                let resp =
                    send(|| client.get(u.clone()).header(header::RANGE, "bytes=0-0")).await?;
                let total = header_str(resp.headers(), header::CONTENT_RANGE)
                    .and_then(|r| r.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()));
                return Ok((resp.status(), total, resp.headers().clone()));
            }
            // The header, not the body's size hint: a HEAD answer has no body.
            let len = header_str(resp.headers(), header::CONTENT_LENGTH)
                .and_then(|v| v.trim().parse::<u64>().ok());
            Ok((status, len, resp.headers().clone()))
        })?;
        match answer {
            (s, _, _) if s == StatusCode::NOT_FOUND || s == StatusCode::GONE => Ok(None),
            (s, Some(len), headers) if s.is_success() => {
                Ok(Some(self.meta(name, &url, len, &headers)))
            }
            (s, None, _) if s.is_success() => Err(unavailable(format!(
                "no length given for '{name}' (Content-Length)"
            ))),
            (s, _, _) => Err(refused(s, name)),
        }
    }

    fn get_range(&self, io: &Io, meta: &Meta, range: Range<u64>) -> Result<Bytes, SourceError> {
        let url = self.url(&meta.name)?;
        let client = self.client.clone();
        let etag = meta.etag.clone();
        let name = meta.name.clone();
        let bytes = io.run(Op::Get, async move {
            let spec = format!("bytes={}-{}", range.start, range.end - 1);
            let resp = send(|| {
                let r = client.get(url.clone()).header(header::RANGE, spec.as_str());
                match &etag {
                    Some(t) => r.header(header::IF_MATCH, t.as_str()),
                    None => r,
                }
            })
            .await?;
            let status = resp.status();
            let body = match status {
                StatusCode::PARTIAL_CONTENT => resp.bytes().await,
                // A server that ignores Range sends it all: cut the part out.
                StatusCode::OK => resp.bytes().await.map(|all| {
                    let end = (range.end as usize).min(all.len());
                    all.slice((range.start as usize).min(end)..end)
                }),
                s => return Err(refused(s, &name)),
            };
            body.map_err(|e| unavailable(describe(&e)))
        })?;
        io.received(bytes.len() as u64);
        Ok(bytes)
    }

    fn download(&self, io: &Io, meta: &Meta, to: File) -> Result<u64, SourceError> {
        let url = self.url(&meta.name)?;
        let client = self.client.clone();
        let etag = meta.etag.clone();
        let name = meta.name.clone();
        download_with(io, to, |tx| async move {
            let mut resp = send(|| {
                let r = client.get(url.clone());
                match &etag {
                    Some(t) => r.header(header::IF_MATCH, t.as_str()),
                    None => r,
                }
            })
            .await?;
            if resp.status() != StatusCode::OK {
                return Err(refused(resp.status(), &name));
            }
            while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(describe(&e)))? {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn list(&self, _: &Io) -> Result<Vec<String>, SourceError> {
        // HTTP has no listing: crawl by manifest or by identifier.
        Err(SourceError::Unsupported(
            "the http source cannot list its images; crawl by manifest or identifiers".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(template: &str, allowed: &[&str]) -> HttpFetch {
        let cfg = HttpSourceConfig {
            url_template: template.into(),
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
        };
        match HttpFetch::new(&cfg, Duration::from_secs(1)) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn identifiers_are_encoded_and_kept_on_the_allowed_hosts() -> Result<(), SourceError> {
        let f = fetch(
            "https://repo.example.org/m/{identifier}",
            &["repo.example.org"],
        );
        assert_eq!(
            f.url("a b/c?d#e@f")?.as_str(),
            "https://repo.example.org/m/a%20b/c%3Fd%23e%40f"
        );
        // In the host part, the identifier is checked against the list.
        let f = fetch("http://{identifier}.example.org/x", &["a.example.org"]);
        assert!(f.url("a").is_ok());
        assert!(matches!(f.url("b"), Err(SourceError::BadIdentifier { .. })));
        assert!(matches!(
            f.candidates("evil"),
            Err(SourceError::BadIdentifier { .. })
        ));
        let f = fetch("http://127.0.0.1:9/{identifier}", &["127.0.0.1"]);
        assert!(f.url("a").is_err(), "the port is part of the host");
        Ok(())
    }
}
