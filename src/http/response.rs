//! Building responses: the shared headers every IIIF response carries, and the single place where an
//! [`Error`] becomes an HTTP response.

use crate::error::Error;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

/// The body type of every response.
pub type Body = Full<Bytes>;

/// A response with `status`, `body` and the headers every response carries (CORS, nosniff).
pub fn base(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    let len = body.len();
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Set explicitly so HEAD responses (whose body hyper drops) still announce the length.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// Insert a header whose value was built from server-controlled text. Values that are not valid
/// header text (which would only happen through a bug) are dropped rather than sent.
pub fn set(resp: &mut Response<Body>, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// The answer to a request still waiting when the shutdown grace period ends.
pub fn shutting_down() -> Response<Body> {
    let mut resp = error(&Error::ShuttingDown);
    set(&mut resp, header::CONNECTION, "close");
    resp
}

/// The one mapping from [`Error`] to an HTTP response: the status from [`Error::status`], a plain-text
/// message, `Retry-After` where a retry can help.
pub fn error(err: &Error) -> Response<Body> {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = base(status, format!("{err}\n"));
    set(&mut resp, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    set(&mut resp, header::CACHE_CONTROL, "no-store");
    if let Some(secs) = err.retry_after() {
        set(&mut resp, header::RETRY_AFTER, &secs.to_string());
    }
    if matches!(err, Error::MethodNotAllowed) {
        set(&mut resp, header::ALLOW, "GET, HEAD, OPTIONS");
    }
    resp
}
