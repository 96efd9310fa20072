//! The hit memo: repeat requests for a public derivative answered without steps 2 to 5.
//!
//! A viewer asks for the same tile URLs again and again (every visitor of an image, every zoom
//! back out), and a stored tile is answered from the memory tier in microseconds, so on a hit the
//! work that remains is the request's own: parsing the path, finding the source, canonicalising,
//! hashing the key and formatting the headers, which cost more than sending the bytes. Each public
//! image request answered 200 leaves here, under its path, what it was resolved to (the source's
//! version and the derivative's key) and the headers it was sent with. A repeat of that path is then
//! checked, not worked out again: the source must still be that version (the one `stat` the usual
//! way makes too), not found corrupt, and the derivative in the memory tier
//! ([`Pipeline::hit_again`]); the headers the answer was built from must be those of this request.
//! Anything else goes the usual way, which leaves a fresh entry.
//!
//! Only answers that are the same for every visitor are kept: public identifiers (a restricted
//! image's answer depends on the visitor's cookie) and no content negotiation (`Accept`).
//! Conditional requests go the usual way, which answers them from the key. Paths are kept as sent,
//! so two spellings of one request are two entries of one derivative.

use crate::bounded::{BoundedCache, CacheReport, ENTRY_OVERHEAD};
use crate::key::DerivativeKey;
use crate::pipeline::Pipeline;
use crate::source::Object;
use crate::store::Hit;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of answers kept. An entry is 2-3 KiB for a viewer's request (the path, the source's name
/// and fingerprint, the request's origin headers, nine response headers) and at most about 8 KiB
/// (longer requests are not kept: [`MAX_KEPT_BYTES`]), so this is about 4,000 answers, within the
/// fixed memory of [`crate::config::MemoryBound::BASE`]. The memory tier, which every answer from
/// here needs, holds about as many tiles at its default size (64 MiB of 5-60 KB tiles).
pub(crate) const BYTES: u64 = 12 << 20;

/// How many [`ORIGIN`] headers there are.
const ORIGIN_LEN: usize = 6;

/// The request headers a public image answer depends on: its `Link` header names the image's
/// public URL, which comes from these when `public_base_url` is not configured. The HTTP edge reads
/// them from this list too (`Forwarded::of`, in this order), so the two cannot drift apart.
pub(crate) static ORIGIN: [HeaderName; ORIGIN_LEN] = [
    header::HOST,
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-port"),
];

/// What one path was answered with.
pub(crate) struct Answer {
    /// The source's version the request was resolved against.
    object: Object,
    /// The derivative.
    key: DerivativeKey,
    /// Copies of the request's [`ORIGIN`] headers.
    origin: [Option<HeaderValue>; ORIGIN_LEN],
    /// The response's headers. Those of its body (`Content-Length`, `X-Accel-Redirect`) are as
    /// they were then: the caller adjusts them to the hit it sends.
    pub(crate) headers: HeaderMap,
}

/// See the module documentation.
pub(crate) struct Memo {
    /// `None` when off: every answer from here comes from the memory tier, so without one the
    /// memo would only add work.
    answers: Option<BoundedCache<String, Arc<Answer>>>,
    /// Requests answered from the memo.
    pub(crate) recalled: AtomicU64,
}

impl Memo {
    /// A memo of at most `bytes` of answers (0: off).
    pub(crate) fn new(bytes: u64) -> Memo {
        Memo {
            answers: (bytes > 0).then(|| BoundedCache::new("memo", bytes)),
            recalled: AtomicU64::new(0),
        }
    }

    /// The answer to a repeat of a GET or HEAD of `path` with these request headers, and its
    /// hit, when everything it was built from still holds. Never blocks.
    pub(crate) fn recall(
        &self,
        pipeline: &Pipeline,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<(Arc<Answer>, Hit)> {
        if headers.contains_key(header::IF_NONE_MATCH)
            || headers.contains_key(header::IF_MODIFIED_SINCE)
        {
            return None;
        }
        let answer = self.answers.as_ref()?.get(path)?;
        if !same_origin(&answer.origin, headers) {
            return None;
        }
        let hit = pipeline.hit_again(&answer.object, &answer.key)?;
        self.recalled.fetch_add(1, Ordering::Relaxed);
        Some((answer, hit))
    }

    /// Keep the answer to a GET or HEAD of `path` (request headers `request`), resolved to
    /// `object` and `key` and sent with `response` headers. The caller vouches that it was a
    /// public answer with status 200 and no content negotiation.
    pub(crate) fn remember(
        &self,
        path: &str,
        request: &HeaderMap,
        object: &Object,
        key: DerivativeKey,
        response: &HeaderMap,
    ) {
        let Some(answers) = &self.answers else {
            return;
        };
        // A path asked again while its entry holds (a large object outside the memory tier is
        // answered the usual way every time): nothing to replace.
        if let Some(a) = answers.get(path) {
            if a.key == key && a.object == *object && same_origin(&a.origin, request) {
                return;
            }
        }
        let Some(origin) = origin_of(path, request) else {
            return;
        };
        let answer = Answer {
            object: object.clone(),
            key,
            origin,
            headers: response.clone(),
        };
        let weight = answer.weight(path);
        answers.insert(path.to_owned(), Arc::new(answer), weight);
    }

    /// What the memo holds against its budget (`None` when off).
    pub(crate) fn report(&self) -> Option<CacheReport> {
        self.answers.as_ref().map(BoundedCache::report)
    }
}

impl Answer {
    /// What it weighs under `path`: the strings and header values it holds (each header counted
    /// with its map slot, about 64 bytes).
    fn weight(&self, path: &str) -> u64 {
        let origin: usize = self.origin.iter().flatten().map(|v| v.len()).sum();
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 64)
            .sum();
        let object = self.object.name.len() + self.object.fingerprint.as_str().len();
        (path.len() + origin + headers + object + std::mem::size_of::<Answer>()) as u64
            + ENTRY_OVERHEAD
    }
}

/// The longest path plus [`ORIGIN`] headers kept. A viewer's tile URL and host are a few hundred
/// bytes; without a bound, requests padded to the header limit (64 KiB) would make each entry that
/// large.
const MAX_KEPT_BYTES: usize = 2048;

/// The [`ORIGIN`] headers of `request`, as copies (a parsed header value is a slice of the whole
/// request head, which it would keep in memory), or `None` when they and `path` are too long to keep.
fn origin_of(path: &str, request: &HeaderMap) -> Option<[Option<HeaderValue>; ORIGIN_LEN]> {
    let values = ORIGIN.each_ref().map(|name| request.get(name));
    let len = values.iter().flatten().map(|v| v.len()).sum::<usize>() + path.len();
    if len > MAX_KEPT_BYTES {
        return None;
    }
    let mut origin: [Option<HeaderValue>; ORIGIN_LEN] = Default::default();
    for (kept, value) in origin.iter_mut().zip(values) {
        if let Some(v) = value {
            // A value that was a valid header stays one; were it not, the entry would never match.
            *kept = Some(HeaderValue::from_bytes(v.as_bytes()).ok()?);
        }
    }
    Some(origin)
}

fn same_origin(origin: &[Option<HeaderValue>; ORIGIN_LEN], headers: &HeaderMap) -> bool {
    ORIGIN
        .iter()
        .zip(origin)
        .all(|(name, value)| headers.get(name) == value.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_answer_holds_only_for_the_origin_it_was_built_for() {
        let sent = headers(&[("host", "a.example"), ("x-forwarded-proto", "https")]);
        let origin = origin_of("/iiif/3/a/full/max/0/default.jpg", &sent).expect("short");
        assert!(same_origin(&origin, &sent));
        // Headers the answer does not depend on do not matter.
        let mut more = sent.clone();
        more.insert(header::USER_AGENT, HeaderValue::from_static("x"));
        assert!(same_origin(&origin, &more));
        for (name, value) in [
            ("host", "b.example"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "c.example"),
            ("x-forwarded-prefix", "/images"),
            ("x-forwarded-port", "8443"),
            ("forwarded", "proto=https;host=d.example"),
        ] {
            let mut other = sent.clone();
            other.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            assert!(!same_origin(&origin, &other), "{name}: {value}");
        }
        let mut fewer = sent.clone();
        fewer.remove(header::HOST);
        assert!(!same_origin(&origin, &fewer), "a header gone");
    }

    #[test]
    fn long_requests_are_not_kept() {
        let host = headers(&[("host", "a.example")]);
        let path = format!("/iiif/3/a/{}/max/0/default.jpg", "0".repeat(MAX_KEPT_BYTES));
        assert!(origin_of(&path, &host).is_none());
        let mut padded = host.clone();
        let long = HeaderValue::from_str(&"p".repeat(MAX_KEPT_BYTES)).expect("value");
        padded.insert(HeaderName::from_static("x-forwarded-prefix"), long);
        assert!(origin_of("/iiif/3/a/full/max/0/default.jpg", &padded).is_none());
        // Just under the bound: kept.
        let path = "/".repeat(MAX_KEPT_BYTES - "a.example".len());
        assert!(origin_of(&path, &host).is_some());
    }
}
