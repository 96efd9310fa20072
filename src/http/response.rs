//! Building responses: the headers every response carries, and the single place where an
//! [`Error`] becomes an HTTP response (for both listeners).

use crate::error::Error;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

/// A response with `status`, `body` and the headers every response carries (CORS, nosniff).
pub(crate) fn base(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let body: Bytes = body.into();
    let len = body.len();
    let mut resp = Response::new(body);
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

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut r = base(status, body);
    set(&mut r, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    r
}

/// `value` serialised as the JSON body of a 200.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> Response<Bytes> {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            let mut r = base(StatusCode::OK, s);
            set(&mut r, header::CONTENT_TYPE, "application/json");
            r
        }
        Err(e) => error(&Error::Internal(e.to_string())),
    }
}

/// Insert a header whose value was built from server-controlled text. Values that are not valid
/// header text (which would only happen through a bug) are dropped rather than sent.
pub(crate) fn set(resp: &mut Response<Bytes>, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// The answer to a request still waiting when the shutdown grace period ends.
pub(crate) fn shutting_down() -> Response<Bytes> {
    let mut resp = error(&Error::ShuttingDown);
    set(&mut resp, header::CONNECTION, "close");
    resp
}

/// The one mapping from [`Error`] to an HTTP response: the status from [`Error::status`], a
/// plain-text message, and the headers some statuses require (`Retry-After`, `Allow`,
/// `WWW-Authenticate`).
pub(crate) fn error(err: &Error) -> Response<Bytes> {
    let mut resp = text(err.status(), format!("{err}\n"));
    set(&mut resp, header::CACHE_CONTROL, "no-store");
    if let Some(secs) = err.retry_after() {
        set(&mut resp, header::RETRY_AFTER, &secs.to_string());
    }
    match err {
        Error::MethodNotAllowed(allowed) => set(&mut resp, header::ALLOW, allowed),
        Error::Unauthorized => set(&mut resp, header::WWW_AUTHENTICATE, "Bearer"),
        // Images are authorized by the access cookie (IIIF Auth 2.0), which the viewer obtains
        // through the probe's access service.
        Error::AccessDenied => set(
            &mut resp,
            header::WWW_AUTHENTICATE,
            "Cookie realm=\"iiifd\"",
        ),
        _ => {}
    }
    resp
}
