//! iiifd: a fast IIIF Image API server (3.0, 2.1 and 1.1).
//!
//! A request flows through these steps, each in the module named after it:
//!
//! 1. `http` receives it (hyper lives only there) and routes it;
//! 2. [`iiif::parse`] turns the path into an [`iiif::parse::ImageRequest`] (pure syntax);
//! 3. [`source`] finds the object behind the identifier through its [`source::Backend`] and names
//!    its version (the fingerprint); `render::probe` reads its size and tiles from the header;
//! 4. [`iiif::canonical`] resolves the request against that size into its canonical form (pure);
//! 5. `key` names the output: blake3 over the fingerprint, the canonical request and the encoder
//!    settings, sent as the strong `ETag`;
//! 6. `store` answers from the derivative store when the key is there (files are the truth, sled
//!    only indexes them, in `store::index`);
//! 7. `render` otherwise plans the cheapest route to the region's pixels (`render::plan`, pure),
//!    decodes (`render::decode`: libjpeg with DCT scaling and cropping, pyramidal TIFF tiles, JPEG
//!    2000 reduction, a cached decoded level), applies the pixel operations (`render::ops`, pure)
//!    and encodes (`render::encode`), on the bounded worker pool (`render::pool`), when `admission`
//!    says it is the client's turn (its lane by cost, its place by recent use, 429 past its cap);
//! 8. `store` persists the result atomically, and `http` responds with the canonical `Link` header
//!    and caching headers.
//!
//! A repeat of a public request that was answered from the store skips steps 2 to 5: `memo` keeps
//! what its path resolved to and the headers it was sent with, and checks that the source and the
//! stored object are still the same before `http` sends them again.
//!
//! `pipeline` runs steps 3-8 without knowing HTTP (with single flight: one render per key however
//! many wait for it); `crawl` pre-warms the store through the pipeline's low-priority lane; `app` is
//! the composition root that wires them from a [`config::Config`]; `daemon` puts an [`App`] behind
//! the listeners until a signal; [`error`] maps every module's typed error to HTTP statuses in one
//! place. Dependencies point one way, from the top down: `daemon` -> `http` -> `app` -> {`crawl`,
//! `memo`} -> `pipeline` -> {`render`, `store`, `key`} -> {`source`, `admission`} -> `iiif`, which
//! depends on nothing of ours (nor does `bounded`, the small caches' map).
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(unreachable_pub)]

mod access;
mod admission;
mod app;
mod bounded;
mod cdn;
pub mod cli;
pub mod config;
mod crawl;
mod daemon;
pub mod error;
mod formats;
mod http;
pub mod iiif;
#[doc(hidden)]
pub mod internals;
mod key;
mod memo;
mod metrics;
mod pages;
mod pipeline;
mod render;
pub mod source;
mod store;
mod sys;
mod warm;

pub use app::App;
pub use http::{handle, handle_admin};
pub use render::RenderError;
pub use store::{IndexError, StoreError};
