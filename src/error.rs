//! The edge error: everything a request can meet, wrapping each module's own error type
//! ([`ParseError`], [`CanonicalError`], [`SourceError`], [`RenderError`], [`StoreError`]), and the one
//! mapping to HTTP statuses ([`Error::status`]), used by the public and the admin listener alike.
//!
//! The mapping is exhaustive, with no wildcard arm at any level, so a new variant anywhere forces a
//! decision about its status. Messages are plain text for the person who typed the URL; user text
//! in them is shortened and escaped ([`crate::iiif::parse::printable`]).

use crate::iiif::canonical::CanonicalError;
use crate::iiif::parse::ParseError;
use crate::render::RenderError;
use crate::source::SourceError;
use crate::store::StoreError;
use http::StatusCode;
use thiserror::Error;

/// Everything that can go wrong while answering a request.
#[derive(Debug, Error)]
pub enum Error {
    /// The path does not follow the IIIF grammar, or names a format iiifd does not produce.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// A valid request that this image cannot satisfy (region outside, zero size, over limits).
    #[error("{0}")]
    Canonical(#[from] CanonicalError),
    /// The source could not be found, read or understood.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// Rendering failed.
    #[error("{0}")]
    Render(#[from] RenderError),
    /// The store failed (admin operations; a store that cannot write never fails an image).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A malformed admin request (crawl body, parameters).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No route matches the path.
    #[error("not found: expected {0}")]
    NoRoute(&'static str),
    /// No crawl job has this id.
    #[error("no crawl job '{}'", crate::iiif::parse::printable(.0))]
    NoSuchJob(String),
    /// A method the route does not answer; the methods it does (the `Allow` header).
    #[error("method not allowed: use {0}")]
    MethodNotAllowed(&'static str),
    /// The admin listener's token is required and was not given.
    #[error("admin token required")]
    Unauthorized,
    /// The identifier is restricted and the visitor holds no credential its policy accepts (or the
    /// decision service said no).
    #[error("this image is restricted: sign in through the viewer to see it")]
    AccessDenied,
    /// The access decision service did not answer in time or at all: access is never granted by
    /// default.
    #[error("the access decision service did not answer: {0}")]
    AccessUnavailable(String),
    /// The render queue is full; retry later.
    #[error("the server is busy rendering other images; retry in a moment")]
    Busy,
    /// This client has as many renders queued as it may (or the longest queue when it is full):
    /// 429, retry later.
    #[error("too many renders for this client at once; retry in a moment")]
    TooManyRequests,
    /// The server is shutting down and could not finish this request in its grace period.
    #[error("the server is restarting; retry in a moment")]
    ShuttingDown,
    /// A render panicked; the panic was contained.
    #[error("internal error while rendering the image")]
    RenderPanicked,
    /// The failure of a render this request waited on (single flight).
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),
    /// An unexpected failure outside the modules above (a task that could not run).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status for this error. Exhaustive on purpose: no `_ =>` arm.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Parse(ParseError::Invalid { .. }) => StatusCode::BAD_REQUEST,
            Error::Parse(ParseError::UnsupportedFormat(_)) => StatusCode::NOT_IMPLEMENTED,
            Error::Canonical(
                CanonicalError::RegionOutside
                | CanonicalError::ZeroSize
                | CanonicalError::UpscaleWithoutCaret
                | CanonicalError::OverLimits { .. },
            ) => StatusCode::BAD_REQUEST,
            Error::Source(e) => source_status(e),
            Error::Render(e) => render_status(e),
            Error::Store(StoreError::Io(_) | StoreError::Index(_) | StoreError::Full(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NoRoute(_) | Error::NoSuchJob(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthorized | Error::AccessDenied => StatusCode::UNAUTHORIZED,
            Error::Busy | Error::ShuttingDown | Error::AccessUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Error::RenderPanicked | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Shared(inner) => inner.status(),
        }
    }

    /// Whether this is a refusal of the render queue (429 or 503 for load), which a request that
    /// only waited on another's render may try again in its own name.
    pub(crate) fn is_refusal(&self) -> bool {
        match self {
            Error::TooManyRequests | Error::Busy => true,
            Error::Shared(inner) => inner.is_refusal(),
            _ => false,
        }
    }

    /// Seconds a client should wait before retrying, for statuses where a retry can succeed.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Error::Busy
            | Error::TooManyRequests
            | Error::ShuttingDown
            | Error::AccessUnavailable(_) => Some(1),
            Error::Shared(inner) => inner.retry_after(),
            _ => None,
        }
    }
}

fn source_status(e: &SourceError) -> StatusCode {
    match e {
        // Also a source that vanished between its probe and its render.
        SourceError::NotFound(_) => StatusCode::NOT_FOUND,
        SourceError::BadIdentifier { .. } => StatusCode::BAD_REQUEST,
        // The request is valid IIIF; this server declines to process such a source.
        SourceError::TooLarge(_) | SourceError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        SourceError::Undecodable(_) | SourceError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        SourceError::Unavailable { .. } => StatusCode::BAD_GATEWAY,
        SourceError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
    }
}

fn render_status(e: &RenderError) -> StatusCode {
    match e {
        RenderError::Source(s) => source_status(s),
        RenderError::Unsupported(_) | RenderError::TooLarge(_) => StatusCode::NOT_IMPLEMENTED,
        RenderError::Undecodable(_)
        | RenderError::Corrupt(_)
        | RenderError::Encode { .. }
        | RenderError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        RenderError::Shared(inner) => render_status(inner),
    }
}

/// Shorthand for results of the request pipeline.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Error::Busy.status(), 503);
        assert_eq!(Error::Busy.retry_after(), Some(1));
        assert_eq!(Error::TooManyRequests.status(), 429);
        assert_eq!(Error::TooManyRequests.retry_after(), Some(1));
        let shared = Error::Shared(std::sync::Arc::new(Error::TooManyRequests));
        assert!(shared.is_refusal());
        assert_eq!(shared.status(), 429);
        assert_eq!(Error::from(SourceError::NotFound("x".into())).status(), 404);
        assert_eq!(Error::Canonical(CanonicalError::ZeroSize).status(), 400);
        assert_eq!(
            Error::from(RenderError::Undecodable("eof".into())).status(),
            500
        );
        // A source gone between probe and render is a 404, however deep the error sits.
        let vanished = RenderError::Shared(std::sync::Arc::new(RenderError::Source(
            SourceError::NotFound("x".into()),
        )));
        assert_eq!(Error::from(vanished).status(), 404);
        let e = Error::from(SourceError::NotFound("a\nb".into()));
        assert_eq!(e.to_string(), "no image with identifier 'a\\nb'");
        assert_eq!(Error::Unauthorized.status(), 401);
        assert_eq!(Error::AccessDenied.status(), 401);
        let down = Error::AccessUnavailable("timeout".into());
        assert_eq!(
            (down.status(), down.retry_after()),
            (StatusCode::SERVICE_UNAVAILABLE, Some(1))
        );
    }
}
