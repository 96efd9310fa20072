//! The request pipeline without HTTP: locate -> probe (cached) -> canonicalise -> key -> render.
//!
//! Returns domain types only; [`crate::http`] turns them into responses. Image requests come in two
//! steps so that conditional requests can be answered from the key alone: [`App::prepare`] does
//! everything up to the key (no pixels touched), [`App::render`] produces the bytes.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::iiif::canonical::{CanonicalRequest, ImageSize};
use crate::iiif::info::{info_json, InfoInput};
use crate::iiif::parse::ImageRequest;
use crate::iiif::{ApiVersion, Limits};
use crate::key::DerivativeKey;
use crate::render::pool::{PoolError, RenderPool};
use crate::render::{self, EncodeSettings};
use crate::source::{self, Fingerprint, SourceFile, SourceLimits, Sources};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Entries kept in the in-memory info cache before it is cleared (a crude bound; the store issue
/// replaces it with a persistent cache).
const INFO_CACHE_ENTRIES: usize = 10_000;

/// Everything a request needs, shared by all connections.
pub struct App {
    config: Config,
    sources: Sources,
    pool: RenderPool,
    limits: Limits,
    source_limits: SourceLimits,
    encode: EncodeSettings,
    info_cache: Mutex<HashMap<PathBuf, (Fingerprint, ImageSize)>>,
}

/// A located, probed source.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file.
    pub file: SourceFile,
    /// Its size.
    pub size: ImageSize,
}

/// An image request resolved up to its key.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The source.
    pub source: Source,
    /// The canonical request.
    pub canonical: CanonicalRequest,
    /// The derivative key.
    pub key: DerivativeKey,
}

impl App {
    /// Build the application state from a validated configuration.
    pub fn new(config: Config) -> std::io::Result<App> {
        let sources = Sources::new(&config.images).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("image directory {}: {e}", config.images.display()),
            )
        })?;
        let pool = RenderPool::new(config.render_workers(), config.render.queue);
        Ok(App {
            limits: config.limits(),
            source_limits: SourceLimits {
                max_source_pixels: config.limits.max_source_pixels,
                max_source_bytes: config.limits.max_source_bytes,
            },
            encode: EncodeSettings {
                jpeg_quality: config.render.jpeg_quality,
            },
            sources,
            pool,
            config,
            info_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The render pool.
    pub fn pool(&self) -> &RenderPool {
        &self.pool
    }

    /// Locate the source and read its size, from the info cache when the file has not changed.
    pub async fn source(self: &Arc<Self>, identifier: &str) -> Result<Source> {
        let app = Arc::clone(self);
        let identifier = identifier.to_owned();
        // File-system calls block: run them on tokio's blocking threads, not the async ones.
        tokio::task::spawn_blocking(move || app.source_blocking(&identifier))
            .await
            .map_err(|e| Error::Internal(format!("source lookup failed: {e}")))?
    }

    fn source_blocking(&self, identifier: &str) -> Result<Source> {
        let file = self.sources.locate(identifier)?;
        if let Ok(cache) = self.info_cache.lock() {
            if let Some((fp, size)) = cache.get(&file.path) {
                if *fp == file.fingerprint {
                    return Ok(Source { size: *size, file });
                }
            }
        }
        let size = source::probe(&file, &self.source_limits)?;
        if let Ok(mut cache) = self.info_cache.lock() {
            if cache.len() >= INFO_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(file.path.clone(), (file.fingerprint, size));
        }
        Ok(Source { file, size })
    }

    /// The info.json document of `identifier` for `version`, with `id` = `base`.
    pub async fn info(
        self: &Arc<Self>,
        version: ApiVersion,
        identifier: &str,
        base: &str,
    ) -> Result<(String, Source)> {
        let source = self.source(identifier).await?;
        let input = InfoInput {
            id: base,
            size: source.size,
            limits: self.limits,
            tile: self.config.tile_size,
        };
        Ok((info_json(version, &input), source))
    }

    /// Resolve an image request up to its derivative key, without touching pixels.
    pub async fn prepare(
        self: &Arc<Self>,
        identifier: &str,
        request: &ImageRequest,
    ) -> Result<Prepared> {
        let source = self.source(identifier).await?;
        let canonical = CanonicalRequest::resolve(request, source.size, &self.limits)?;
        let key = DerivativeKey::derive(
            &source.file.fingerprint,
            &canonical,
            &self.encode.describe(canonical.format()),
        );
        Ok(Prepared {
            source,
            canonical,
            key,
        })
    }

    /// Render a prepared request on the pool.
    pub async fn render(&self, prepared: &Prepared) -> Result<Vec<u8>> {
        let path = prepared.source.file.path.clone();
        let canonical = prepared.canonical.clone();
        let encode = self.encode;
        let max_decode = self.config.render.max_decode_bytes;
        match self
            .pool
            .run(move || render::render(&path, &canonical, &encode, max_decode))
            .await
        {
            Ok(result) => result,
            Err(PoolError::Busy) => Err(Error::Busy),
            Err(PoolError::Panicked) => Err(Error::RenderPanicked),
            Err(PoolError::Closed) => Err(Error::Busy),
        }
    }
}
