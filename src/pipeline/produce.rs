//! The second half: the derivative delivered from the store, or rendered once (single flight) when
//! the scheduler gives the client its turn, persisted, and returned; the tiled copy a render asks
//! for written in the background once the pool is idle.

use super::*;

impl Pipeline {
    /// The derivative for `prepared`: from the store when present, else rendered once (however many
    /// requests ask at the same moment) when `client`'s turn comes, persisted, and returned.
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        prepared: Prepared,
        client: ClientKey,
    ) -> Result<Delivered> {
        let hot = match prepared.lookup {
            Lookup::Pending => self.store.lookup_hot(&prepared.key),
            _ => None,
        };
        let lookup = match (hot, &prepared.lookup) {
            (Some(hit), _) => Lookup::Hit(hit),
            (None, Lookup::Pending) => {
                let (p, key) = (Arc::clone(self), prepared.key);
                let ext = prepared.canonical.format().extension();
                let identifier = prepared.identifier.clone();
                blocking(move || p.lookup_blocking(&key, ext, &identifier)).await?
            }
            (None, done) => done.clone(),
        };
        if let Lookup::Hit(hit) = lookup {
            let body = match hit.bytes {
                Some(b) => Body::Bytes(b),
                None => Body::Accel(hit.relative_path),
            };
            return Ok(Delivered {
                body,
                cache: CacheStatus::Hit,
            });
        }
        let (produced, role) = match self.produce_once(prepared.clone(), Some(client)).await {
            // The render this request waited on was another client's, refused for that client's
            // excess: this request asks again in its own name.
            (Err(e), Role::Follower) if e.is_refusal() => {
                let (result, role) = self.produce_once(prepared, Some(client)).await;
                (result?, role)
            }
            (result, role) => (result?, role),
        };
        let cache = match (role, produced.stored || produced.found) {
            (Role::Follower, _) => {
                self.metrics.collapsed.fetch_add(1, Ordering::Relaxed);
                CacheStatus::Collapsed
            }
            (Role::Leader, _) if produced.found => CacheStatus::Hit,
            (Role::Leader, true) => CacheStatus::Stored,
            (Role::Leader, false) => CacheStatus::NotStored,
        };
        Ok(Delivered {
            body: Body::Bytes(produced.bytes),
            cache,
        })
    }

    /// Make sure `prepared` is stored, in the background lane: at most `crawl.max_workers` such
    /// renders at once, each started only when no live render waits for a thread, so live
    /// requests never queue behind crawl work.
    pub(crate) async fn ensure(self: &Arc<Self>, prepared: Prepared) -> Result<Ensured> {
        if matches!(prepared.lookup, Lookup::Hit(_)) {
            return Ok(Ensured::Stored);
        }
        let (produced, role) = self.produce_once(prepared, None).await;
        let produced = produced?;
        Ok(match role {
            Role::Leader if !produced.found => Ensured::Rendered(produced.bytes.len() as u64),
            Role::Leader | Role::Follower => Ensured::Stored,
        })
    }

    /// Single flight around [`Pipeline::produce`]: one render per key however many wait, in the
    /// name of `client` (`None`: the server's own, background work).
    pub(super) async fn produce_once(
        self: &Arc<Self>,
        prepared: Prepared,
        client: Option<ClientKey>,
    ) -> (Result<Produced>, Role) {
        let p = Arc::clone(self);
        let key = prepared.key;
        let flights = match client {
            Some(_) => &self.flights,
            None => &self.background_flights,
        };
        let (result, role) = flights
            .run(key, async move {
                p.produce(prepared, client).await.map_err(Arc::new)
            })
            .await;
        let result = match result {
            None => Err(Error::RenderPanicked),
            Some(Err(e)) => Err(Error::Shared(e)),
            Some(Ok(p)) => Ok(p),
        };
        (result, role)
    }

    /// One trip to a render worker, when the scheduler gives `client` its turn: check the store
    /// once more, render (from the source's tiled copy when it has one and the pixels are not in
    /// memory), persist. A cheap render that needs more memory than a reserved thread may give
    /// goes again, as a heavy one.
    pub(super) async fn produce(
        self: &Arc<Self>,
        prepared: Prepared,
        client: Option<ClientKey>,
    ) -> Result<Produced> {
        let size = prepared.source.size();
        let fingerprint = prepared.source.object.fingerprint.clone();
        let copy_key = tiled_copy::wanted(
            size,
            self.settings.tiled_copy_min_pixels,
            &prepared.canonical,
        )
        .then(|| tiled_copy::key(&fingerprint));
        let fp = fingerprint.as_str().to_owned();
        let job = RenderJob {
            source: Arc::clone(&self.source),
            store: Arc::clone(&self.store),
            cache: Arc::clone(&self.decoded),
            settings: self.settings.clone(),
            copy_key,
            prepared: prepared.clone(),
        };
        let ticket = self.ticket(&prepared, client);
        let mut outcome = self.pool.run(ticket, job.clone().into_fn()).await;
        let too_large_for_a_reserved_thread = matches!(
            &outcome,
            Ok((Err(Error::Render(e)), true)) if e.is_too_large()
        );
        if too_large_for_a_reserved_thread {
            let heavy = Ticket {
                lane: Lane::Heavy,
                ..ticket
            };
            outcome = self.pool.run(heavy, job.into_fn()).await;
        }
        let (produced, used_copy, wants_copy, elapsed) = match outcome.map(|(r, _)| r) {
            Ok(Err(Error::Render(RenderError::Corrupt(why)))) => {
                self.mark_corrupt(fp, why.clone());
                return Err(RenderError::Corrupt(why).into());
            }
            Ok(result) => result?,
            Err(PoolError::Busy) | Err(PoolError::Closed) => return Err(Error::Busy),
            Err(PoolError::TooMany) => return Err(Error::TooManyRequests),
            Err(PoolError::Panicked) => return Err(Error::RenderPanicked),
        };
        if !produced.found {
            self.metrics.observe_render(elapsed);
        }
        if used_copy {
            self.mark_copy(fp);
            self.metrics
                .tiled_copy_renders
                .fetch_add(1, Ordering::Relaxed);
        }
        if let (true, Some(key)) = (wants_copy, copy_key) {
            self.start_tiled_copy(key, prepared);
        }
        Ok(produced)
    }

    /// Where a render of `prepared` for `client` waits its turn: its lane (from what it asks and
    /// what it would decode) and its estimated time.
    pub(super) fn ticket(&self, prepared: &Prepared, client: Option<ClientKey>) -> Ticket {
        /// Render throughput assumed until a render's own time is known (about 100 Mpx/s: decode,
        /// resize and encode of small outputs on one core).
        const SECS_PER_PIXEL: f64 = 1e-8;
        let req = &prepared.canonical;
        let (size, probe) = (prepared.source.size(), prepared.source.probe);
        let fp = prepared.source.object.fingerprint.as_str();
        let in_memory =
            render::level_in_memory(&self.decoded, &prepared.source.object.fingerprint, req);
        // A flat source with a tiled copy is read like a pyramid when its pixels are not in memory.
        let reading = if !in_memory && self.copies_known.get(fp).is_some() {
            Reading::Levels
        } else {
            probe.reading
        };
        let decode = plan::decode_pixels(req, size, reading, in_memory);
        let limits = &self.settings.limits;
        let tile = tile_within(probe.tile.unwrap_or(self.settings.tile_size), limits);
        let lane = match client {
            None => Lane::Background,
            Some(_) => self.admission.lane(req, size, tile, limits, decode),
        };
        let output = u64::from(req.width()) * u64::from(req.height());
        Ticket {
            client: client.unwrap_or(ClientKey::INTERNAL),
            lane,
            estimate: Duration::from_secs_f64((decode + output) as f64 * SECS_PER_PIXEL),
        }
    }

    /// Write the tiled copy of a large flat source in the background, in the crawl's way: only when
    /// a render worker is idle, so no live request waits behind it. One build per source at a time;
    /// a source that cannot have a copy (alpha, 16-bit, too large to decode) stays marked and is not
    /// tried again until the process restarts.
    pub(super) fn start_tiled_copy(self: &Arc<Self>, key: DerivativeKey, prepared: Prepared) {
        let first = self
            .copies_building
            .lock()
            .map(|mut set| set.insert(key))
            .unwrap_or(false);
        if !first {
            return;
        }
        self.metrics
            .tiled_copies_wanted
            .fetch_add(1, Ordering::Relaxed);
        let p = Arc::clone(self);
        tokio::spawn(async move {
            // Wait for the viewer's burst to pass: half a second with no render queued or running.
            // The copy serves later sessions; the one that triggered it has the decoded cache.
            p.pool.idle_for(COPY_AFTER_IDLE).await;
            let (source, store, cache) = (
                Arc::clone(&p.source),
                Arc::clone(&p.store),
                Arc::clone(&p.decoded),
            );
            let identifier = prepared.identifier.clone();
            let fp = prepared.source.object.fingerprint.as_str().to_owned();
            let ticket = Ticket {
                client: ClientKey::INTERNAL,
                lane: Lane::Background,
                estimate: Duration::from_secs(1),
            };
            let job = move |worker: &Worker| -> Result<bool> {
                let max = worker.decode_budget;
                let reader = source.open(&prepared.source.object)?;
                let src = SourceRef::new(&*reader, &prepared.source.object.fingerprint)?;
                let Some(plan) = tiled_copy::plan(src, &cache, max)? else {
                    return Ok(false);
                };
                let icc = render::source_profile(src);
                store.put_with(
                    &key,
                    tiled_copy::EXTENSION,
                    &prepared.identifier,
                    &mut |f| plan.write(src, &cache, icc.as_deref(), f),
                )?;
                Ok(true)
            };
            let keep_marked = match p.pool.run(ticket, job).await {
                Ok(Ok(true)) => {
                    p.metrics.tiled_copies.fetch_add(1, Ordering::Relaxed);
                    p.mark_copy(fp);
                    false
                }
                Ok(Ok(false)) => true,
                Ok(Err(e)) => {
                    tracing::warn!(%identifier, "tiled copy not written: {e}");
                    false
                }
                Err(_) => false,
            };
            if !keep_marked {
                if let Ok(mut set) = p.copies_building.lock() {
                    set.remove(&key);
                }
            }
        });
    }
}

/// What one render on a worker needs; cloned when a render goes round again (see
/// [`Pipeline::produce`]).
#[derive(Clone)]
struct RenderJob {
    source: Arc<dyn Backend>,
    store: Arc<Store>,
    cache: Arc<DecodedCache>,
    settings: Settings,
    copy_key: Option<DerivativeKey>,
    prepared: Prepared,
}

/// A render's result: what was produced, whether a tiled copy was read, whether the source wants
/// one, and how long the render took.
type Rendered = Result<(Produced, bool, bool, Duration)>;

impl RenderJob {
    /// The job for the pool: its result, and whether it ran on a reserved thread.
    fn into_fn(self) -> impl FnOnce(&Worker) -> (Rendered, bool) + Send + 'static {
        move |worker: &Worker| (self.run(worker.decode_budget), worker.reserved)
    }

    /// Check the store once more, render within `budget`, persist.
    fn run(self, budget: u64) -> Rendered {
        let RenderJob {
            source,
            store,
            cache,
            settings,
            copy_key,
            prepared,
        } = self;
        let key = prepared.key;
        if let Some(hit) = store.recheck(&key, prepared.canonical.format().extension()) {
            if let Some(bytes) = hit.bytes {
                let found = Produced {
                    bytes,
                    stored: true,
                    found: true,
                };
                return Ok((found, false, false, Duration::ZERO));
            }
        }
        let started = Instant::now();
        let canonical = &prepared.canonical;
        let copy = copy_key.and_then(|k| store.open_object(&k, tiled_copy::EXTENSION));
        let (bytes, route) = render::render_by_route(
            &|| source.open(&prepared.source.object),
            copy.as_deref(),
            copy_key.is_some(),
            &prepared.source.object.fingerprint,
            &cache,
            canonical,
            &settings.encode,
            budget,
        )?;
        let (used_copy, wants_copy) = match route {
            Route::TiledCopy => (true, false),
            Route::Source { wants_copy } => (false, wants_copy),
        };
        let elapsed = started.elapsed();
        let stored = match store.put(
            &key,
            canonical.format().extension(),
            &bytes,
            &prepared.identifier,
        ) {
            Ok(()) => true,
            Err(e) => {
                // Flask-IIIF's IIIF_CACHE_IGNORE_ERRORS, as the default: the viewer still gets
                // its image.
                tracing::warn!(key = %key.to_hex(), "could not store derivative: {e}");
                false
            }
        };
        let produced = Produced {
            bytes: Bytes::from(bytes),
            stored,
            found: false,
        };
        Ok((produced, used_copy, wants_copy, elapsed))
    }
}
