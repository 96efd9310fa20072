//! The one error type of the request pipeline and its one mapping to HTTP statuses.
//!
//! Every failure a request can meet is a variant here; [`Error::status`] is an exhaustive `match` with no
//! wildcard arm, so adding a variant forces a decision about its status. Messages are plain text meant
//! for the person who typed the URL; user-supplied text in them is shortened and escaped
//! ([`crate::iiif::parse::printable`]).

use crate::iiif::canonical::CanonicalError;
use crate::iiif::parse::{printable, ParseError};
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
    /// The identifier cannot be a path inside the image root (`..`, absolute, backslash).
    #[error("invalid identifier '{}': {reason}", printable(.identifier))]
    BadIdentifier {
        /// The identifier as decoded.
        identifier: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A malformed admin request (crawl body, parameters).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No image has this identifier.
    #[error("no image with identifier '{}'", printable(.0))]
    NotFound(String),
    /// No route matches the path.
    #[error("not found: expected {0}")]
    NoRoute(&'static str),
    /// A method other than GET, HEAD and OPTIONS.
    #[error("method not allowed: use GET, HEAD or OPTIONS")]
    MethodNotAllowed,
    /// The source exceeds `limits.max_source_pixels` or `limits.max_source_bytes`.
    #[error("the source image is too large for this server: {0}")]
    SourceTooLarge(String),
    /// The source is a valid image in a variant this server does not render (e.g. a JPEG 2000 in
    /// sYCC or with subsampled components).
    #[error("this server cannot render this source image: {0}")]
    UnsupportedSource(String),
    /// The source file exists but could not be decoded (corrupt, truncated or not an image).
    #[error("the source image could not be decoded: {0}")]
    Undecodable(String),
    /// The render queue is full; retry later.
    #[error("the server is busy rendering other images; retry in a moment")]
    Busy,
    /// The server is shutting down and could not finish this request in its grace period.
    #[error("the server is restarting; retry in a moment")]
    ShuttingDown,
    /// A render panicked; the panic was contained.
    #[error("internal error while rendering the image")]
    RenderPanicked,
    /// The failure of a render this request waited on (single flight).
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),
    /// An I/O or other unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status for this error. Exhaustive on purpose: no `_ =>` arm.
    pub fn status(&self) -> u16 {
        match self {
            Error::Parse(ParseError::Invalid { .. }) => 400,
            Error::Parse(ParseError::UnsupportedFormat(_)) => 501,
            Error::Canonical(
                CanonicalError::RegionOutside
                | CanonicalError::ZeroSize
                | CanonicalError::UpscaleWithoutCaret
                | CanonicalError::OverLimits { .. },
            ) => 400,
            Error::BadIdentifier { .. } | Error::BadRequest(_) => 400,
            Error::NotFound(_) | Error::NoRoute(_) => 404,
            Error::MethodNotAllowed => 405,
            // The request is valid IIIF; this server declines to process such a source.
            Error::SourceTooLarge(_) | Error::UnsupportedSource(_) => 501,
            Error::Undecodable(_) | Error::RenderPanicked | Error::Internal(_) => 500,
            Error::Busy | Error::ShuttingDown => 503,
            Error::Shared(inner) => inner.status(),
        }
    }

    /// Seconds a client should wait before retrying, for statuses where a retry can succeed.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Error::Busy | Error::ShuttingDown => Some(1),
            Error::Shared(inner) => inner.retry_after(),
            _ => None,
        }
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
        assert_eq!(Error::NotFound("x".into()).status(), 404);
        assert_eq!(Error::Canonical(CanonicalError::ZeroSize).status(), 400);
        assert_eq!(Error::Undecodable("eof".into()).status(), 500);
        let e = Error::NotFound("a\nb".into());
        assert_eq!(e.to_string(), "no image with identifier 'a\\nb'");
    }
}
