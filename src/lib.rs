//! iiifd: a fast IIIF Image API server (3.0, 2.1 and 1.1).
//!
//! A request flows through these steps, each in the module named after it:
//!
//! 1. [`http`] receives it (hyper lives only there) and routes it;
//! 2. [`iiif::parse`] turns the path into an [`iiif::parse::ImageRequest`] (pure syntax);
//! 3. [`source`] locates the file inside the image root and reads its size from the header;
//! 4. [`iiif::canonical`] resolves the request against that size into its canonical form (pure);
//! 5. [`key`] names the output: blake3 over the source fingerprint, the canonical request and the
//!    encoder settings, sent as the strong `ETag`;
//! 6. [`store`] answers from the derivative store when the key is there (files are the truth, sled
//!    only indexes them);
//! 7. [`render`] otherwise takes the source's cheapest route to the region's pixels (libjpeg with
//!    DCT scaling and cropping, zune-jpeg at full size, pyramidal TIFF tiles, JPEG 2000 reduction, a cached decoded
//!    level, or the source's tiled copy), then crops, scales, mirrors, rotates, applies the quality and
//!    encodes, on a bounded worker pool; [`flight`] makes concurrent requests for one key share one
//!    render;
//! 8. [`store`] persists the result atomically, and [`http`] responds with the canonical `Link`
//!    header and caching headers.
//!
//! [`service`] runs steps 3-8 without knowing HTTP; [`error`] holds the one error type and its one
//! mapping to statuses; [`config`] the configuration. Dependencies point one way: `http` -> `service` ->
//! {`iiif`, `key`, `source`, `render`, `store`}, `render` -> `source` (format structure, read-only), and
//! `iiif` depends on nothing of ours.
#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod crawl;
pub mod error;
pub mod flight;
pub mod http;
pub mod iiif;
pub mod key;
pub mod metrics;
pub mod render;
pub mod service;
pub mod source;
pub mod store;
pub mod warm;
