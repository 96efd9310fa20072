//! The institution's own rules: one HTTP call to a configured decision service, as Cantaloupe's
//! delegate script or SIPI's pre-flight function decide, but in the institution's own service and
//! language rather than a scripting engine inside iiifd.
//!
//! `GET {url}?identifier={identifier}&name={name}&user={user}` (the identifier as requested, the
//! source's own name for the file it resolved to, which aliases share; user empty for an anonymous
//! visitor) answers
//! `{"decision": "allow" | "deny" | "degrade", "max_width": n, "max_area": n}` (the sizes only with
//! `degrade`, each optional: the rule's or 0). Answers are kept for the configured time per
//! identifier and user. A slow, failing or unintelligible service is an error that the edge answers
//! 503: access is never granted by default.

use super::{Decision, Degrade};
use crate::bounded::{BoundedCache, CacheReport, ENTRY_OVERHEAD};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// Bytes of answers kept (about 30,000 visitor-image pairs); past it the least used go.
const CACHED_BYTES: u64 = 8 << 20;

/// Why no decision could be had.
#[derive(Debug, thiserror::Error)]
#[error("the access decision service did not answer: {0}")]
pub(crate) struct Unavailable(pub(crate) String);

/// The service's answer.
#[derive(Deserialize)]
struct Answer {
    decision: String,
    #[serde(default)]
    max_width: u32,
    #[serde(default)]
    max_area: u64,
}

/// A client of the decision service with its cache.
pub(crate) struct DecisionService {
    client: reqwest::Client,
    url: String,
    keep: Duration,
    cache: BoundedCache<Asked, (Instant, Decision)>,
}

/// What a decision is about: identifier, file name, user.
type Asked = (String, String, String);

impl std::fmt::Debug for DecisionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionService")
            .field("url", &self.url)
            .finish()
    }
}

impl DecisionService {
    /// A client of `url`, each call bounded by `timeout`, answers kept for `keep`.
    pub(crate) fn new(url: &str, timeout: Duration, keep: Duration) -> Result<Self, String> {
        crate::source::remote::install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("access.decision_url: {e}"))?;
        reqwest::Url::parse(url).map_err(|e| format!("access.decision_url: {e}"))?;
        Ok(DecisionService {
            client,
            url: url.to_owned(),
            keep,
            cache: BoundedCache::new("decisions", CACHED_BYTES),
        })
    }

    /// The decision for `user` (empty: anonymous) about `identifier`, which names the file `name`.
    pub(crate) async fn decide(
        &self,
        identifier: &str,
        name: &str,
        user: &str,
    ) -> Result<Decision, Unavailable> {
        let key = (identifier.to_owned(), name.to_owned(), user.to_owned());
        if let Some((at, d)) = self.cache.get(&key) {
            if at.elapsed() < self.keep {
                return Ok(d);
            }
        }
        let decision = self.ask(identifier, name, user).await?;
        // An expired answer stays until it is asked again or pushed out by newer ones.
        let weight = (identifier.len() + name.len() + user.len()) as u64
            + std::mem::size_of::<(Asked, Instant, Decision)>() as u64
            + ENTRY_OVERHEAD;
        self.cache.insert(key, (Instant::now(), decision), weight);
        Ok(decision)
    }

    /// What the cache of answers holds against its budget.
    pub(crate) fn report(&self) -> CacheReport {
        self.cache.report()
    }

    async fn ask(&self, identifier: &str, name: &str, user: &str) -> Result<Decision, Unavailable> {
        let fail = |e: reqwest::Error| Unavailable(e.without_url().to_string());
        let mut url =
            reqwest::Url::parse(&self.url).map_err(|e| Unavailable(format!("bad URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("identifier", identifier)
            .append_pair("name", name)
            .append_pair("user", user);
        let resp = self.client.get(url).send().await.map_err(fail)?;
        if !resp.status().is_success() {
            return Err(Unavailable(format!("HTTP {}", resp.status().as_u16())));
        }
        let body = resp.bytes().await.map_err(fail)?;
        parse(&body)
    }
}

/// The decision in an answer body.
fn parse(body: &[u8]) -> Result<Decision, Unavailable> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| Unavailable(format!("not a decision ({e})")))?;
    match a.decision.as_str() {
        "allow" => Ok(Decision::Allow),
        "deny" => Ok(Decision::Deny),
        "degrade" if a.max_width > 0 || a.max_area > 0 => Ok(Decision::Degrade(Degrade {
            max_width: a.max_width,
            max_area: a.max_area,
        })),
        "degrade" => Err(Unavailable(
            "`degrade` without max_width or max_area".into(),
        )),
        other => Err(Unavailable(format!(
            "unknown decision '{}'",
            crate::iiif::parse::printable(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        assert_eq!(
            parse(br#"{"decision":"allow"}"#).ok(),
            Some(Decision::Allow)
        );
        assert_eq!(parse(br#"{"decision":"deny"}"#).ok(), Some(Decision::Deny));
        assert_eq!(
            parse(br#"{"decision":"degrade","max_width":300}"#).ok(),
            Some(Decision::Degrade(Degrade {
                max_width: 300,
                max_area: 0
            }))
        );
        for bad in [
            &br#"{"decision":"degrade"}"#[..],
            br#"{"decision":"maybe"}"#,
            br#"{"allow":true}"#,
            b"<html>",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
