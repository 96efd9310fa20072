//! The first half of a request: the identifier located and probed, the request canonicalised
//! against the image's size, keyed, and looked up in the store (no pixels touched).

use super::*;

impl Pipeline {
    /// Locate `identifier` and read its size, from the caches when the object has not changed.
    /// The extra info.json properties of `identifier`: the configured ones, with its sidecar's over
    /// them when sidecars are on. A sidecar that cannot be read or is not valid is logged and left
    /// out: the image keeps its info.json.
    pub(crate) async fn info_extras(self: &Arc<Self>, identifier: &str) -> Extras {
        if !self.settings.sidecars {
            return self.settings.info_extras.clone();
        }
        let p = Arc::clone(self);
        let id = identifier.to_owned();
        let read = blocking(move || p.source.sidecar(&id)).await;
        let parsed = match read {
            Ok(Ok(Some(bytes))) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|v| match v {
                    serde_json::Value::Object(map) => {
                        extra_properties(&map).map_err(|e| e.to_string())
                    }
                    _ => Err("not a JSON object".into()),
                })
                .map(Some),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(Some(own)) => self.settings.info_extras.merged(&own),
            Ok(None) => self.settings.info_extras.clone(),
            Err(e) => {
                tracing::warn!(identifier, "sidecar ignored: {e}");
                self.settings.info_extras.clone()
            }
        }
    }

    pub(crate) async fn locate(self: &Arc<Self>, identifier: &str) -> Result<Located> {
        let p = Arc::clone(self);
        let identifier = identifier.to_owned();
        blocking(move || p.locate_blocking(&identifier)).await?
    }

    pub(super) fn locate_blocking(&self, identifier: &str) -> Result<Located> {
        let located = self.locate_object(identifier)?;
        match self.corrupt.get(located.object.fingerprint.as_str()) {
            Some(why) => Err(RenderError::Corrupt(why).into()),
            None => Ok(located),
        }
    }

    pub(super) fn locate_object(&self, identifier: &str) -> Result<Located> {
        if let Some(cached) = self.located.get(identifier) {
            // One stat (or HEAD) tells whether the cached answer still holds.
            match self.source.refresh(&cached.object) {
                Ok(object) if object.fingerprint == cached.object.fingerprint => {
                    return Ok(Located {
                        object,
                        probe: cached.probe,
                    });
                }
                Ok(object) => {
                    let located = Located {
                        probe: self.probe(&object)?,
                        object,
                    };
                    self.remember_located(identifier, &located);
                    if let Some(tell) = self.on_change.get() {
                        tell(identifier);
                    }
                    return Ok(located);
                }
                // Moved or removed: look for it afresh.
                Err(SourceError::NotFound(_)) => {
                    self.located.remove(identifier);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(at) = self.missing.get(identifier) {
            if at.elapsed() < self.settings.negative {
                self.metrics.negative_hits.fetch_add(1, Ordering::Relaxed);
                return Err(SourceError::NotFound(identifier.to_owned()).into());
            }
            self.missing.remove(identifier);
        }
        let object = self.locate_in_source(identifier)?;
        let located = Located {
            probe: self.probe(&object)?,
            object,
        };
        self.remember_located(identifier, &located);
        Ok(located)
    }

    /// Ask the source for `identifier`, remembering a miss (when the negative cache is on).
    fn locate_in_source(&self, identifier: &str) -> std::result::Result<Object, SourceError> {
        let found = self.source.locate(identifier);
        if matches!(found, Err(SourceError::NotFound(_))) && !self.settings.negative.is_zero() {
            let weight = identifier.len() as u64 + ENTRY_OVERHEAD;
            self.missing
                .insert(identifier.to_owned(), Instant::now(), weight);
        }
        found
    }

    /// Forget that `identifier` named nothing: a crawl or the watch has seen it (an operator's
    /// or the filesystem's word beats the negative cache's window).
    pub(crate) fn forget_missing(&self, identifier: &str) {
        self.missing.remove(identifier);
        self.source.forget(identifier);
    }

    /// The probe of an object version: from the store's probe cache, or read from its header.
    pub(super) fn probe(&self, object: &Object) -> Result<Probe> {
        let fp = object.fingerprint.as_str();
        if let Some(r) = self
            .store
            .probe_get(fp)
            .filter(|r| r.probe == PROBE_VERSION)
        {
            return Ok(Probe {
                size: ImageSize {
                    width: r.width,
                    height: r.height,
                },
                tile: (r.tile > 0).then_some(r.tile),
                reading: match r.reading {
                    1 => Reading::Scaled,
                    2 => Reading::Levels,
                    _ => Reading::Whole,
                },
            });
        }
        let reader = self.source.open(object)?;
        let probe = probe::probe(&*reader, &self.settings.source_limits)?;
        self.store.probe_put(
            fp,
            &ProbeRecord {
                width: probe.size.width,
                height: probe.size.height,
                tile: probe.tile.unwrap_or(0),
                reading: match probe.reading {
                    Reading::Whole => 0,
                    Reading::Scaled => 1,
                    Reading::Levels => 2,
                },
                probe: PROBE_VERSION,
            },
        );
        Ok(probe)
    }

    /// Resolve an image request up to its derivative key, without touching pixels. With `lookup`,
    /// the store is consulted in the same trip to the blocking threads (a hit then costs one hop).
    pub(crate) async fn prepare(
        self: &Arc<Self>,
        identifier: &str,
        request: &ImageRequest,
        degrade: Option<Degrade>,
        lookup: bool,
    ) -> Result<Prepared> {
        let p = Arc::clone(self);
        let (identifier, request) = (identifier.to_owned(), request.clone());
        blocking(move || {
            let (source, canonical, key) = p.key_within(&identifier, &request, degrade)?;
            let lookup = if lookup {
                p.lookup_blocking(&key, canonical.format().extension(), &identifier)
            } else {
                Lookup::Pending
            };
            Ok(Prepared {
                identifier,
                source,
                canonical,
                key,
                lookup,
            })
        })
        .await?
    }

    /// [`Pipeline::prepare`] without leaving the async thread, for a request whose answer is
    /// already in hand: the source located before and unchanged (by [`Backend::refresh_now`]),
    /// and, with `lookup`, the derivative in the store's memory tier. `None` whenever anything
    /// would need to wait (or fails: the blocking way then reports it), so the caller falls back
    /// to [`Pipeline::prepare`].
    pub(crate) fn prepare_now(
        &self,
        identifier: &str,
        request: &ImageRequest,
        degrade: Option<Degrade>,
        lookup: bool,
    ) -> Option<Prepared> {
        let cached = self.located.get(identifier)?;
        let source = Located {
            object: self.unchanged_now(&cached.object)?,
            probe: cached.probe,
        };
        let (canonical, key) = self.canonical_key(&source, request, degrade).ok()?;
        let lookup = if lookup {
            Lookup::Hit(self.store.lookup_hot(&key)?)
        } else {
            Lookup::Pending
        };
        Some(Prepared {
            identifier: identifier.to_owned(),
            source,
            canonical,
            key,
            lookup,
        })
    }

    /// A request resolved before to `object` and `key`, asked again (the hit memo): the hit when
    /// `object` is still the source's version (the same check [`Pipeline::prepare_now`] makes),
    /// was not found corrupt, and the derivative is in the store's memory tier. Never blocks;
    /// `None` sends the request the usual way.
    pub(crate) fn hit_again(&self, object: &Object, key: &DerivativeKey) -> Option<Hit> {
        self.unchanged_now(object)?;
        self.store.lookup_hot(key)
    }

    /// `object` as the backend has it now, when that is without waiting, still the same version,
    /// and not found corrupt; otherwise `None` (the blocking way then finds out what changed).
    pub(super) fn unchanged_now(&self, object: &Object) -> Option<Object> {
        let now = match self.source.refresh_now(object)? {
            Ok(now) if now.fingerprint == object.fingerprint => now,
            _ => return None,
        };
        if self.corrupt.get(now.fingerprint.as_str()).is_some() {
            return None;
        }
        Some(now)
    }

    /// Steps 3 to 5: locate and probe the source, canonicalise, key. Blocks.
    pub(crate) fn key_blocking(
        &self,
        identifier: &str,
        request: &ImageRequest,
    ) -> Result<(Located, CanonicalRequest, DerivativeKey)> {
        self.key_within(identifier, request, None)
    }

    /// [`Pipeline::key_blocking`] for a visitor who may see the image at most as `degrade` allows:
    /// the request is answered at that resolution, under the key of the smaller image.
    pub(super) fn key_within(
        &self,
        identifier: &str,
        request: &ImageRequest,
        degrade: Option<Degrade>,
    ) -> Result<(Located, CanonicalRequest, DerivativeKey)> {
        let source = self.locate_blocking(identifier)?;
        let (canonical, key) = self.canonical_key(&source, request, degrade)?;
        Ok((source, canonical, key))
    }

    /// Steps 4 and 5 for a located source: the canonical request (at most `degrade`'s resolution)
    /// and its key. Pure.
    pub(super) fn canonical_key(
        &self,
        source: &Located,
        request: &ImageRequest,
        degrade: Option<Degrade>,
    ) -> Result<(CanonicalRequest, DerivativeKey)> {
        let size = source.size();
        let limits = &self.settings.limits;
        // The tile info.json advertises for this image (2.1 `w,` heights depend on it).
        let tile = tile_within(source.probe.tile.unwrap_or(self.settings.tile_size), limits);
        let mut canonical = CanonicalRequest::resolve_tiled(request, size, limits, Some(tile))?;
        if let Some(d) = degrade {
            canonical = canonical.degraded(size, d.size(size));
        }
        let encoder = &self.encoders[canonical.format() as usize];
        let key = DerivativeKey::derive(&source.object.fingerprint, &canonical, encoder);
        Ok((canonical, key))
    }

    /// The local store, then the cluster's shared tier (before a render worker is taken).
    pub(super) fn lookup_blocking(
        &self,
        key: &DerivativeKey,
        ext: &str,
        identifier: &str,
    ) -> Lookup {
        let read_body = !self.settings.accel;
        match self.store.lookup(key, ext, read_body) {
            Some(hit) => Lookup::Hit(hit),
            None => match self.store.lookup_shared(key, ext, identifier, read_body) {
                Some(hit) => Lookup::Hit(hit),
                None => Lookup::Miss,
            },
        }
    }
}
