//! The Prometheus exposition (`/metrics`): every part's counters and gauges gathered in one text.

use super::*;

impl App {
    /// The Prometheus exposition of every metric.
    pub(crate) fn metrics_text(&self) -> String {
        let mut out = String::new();
        self.metrics.render_into(&mut out);
        let c = &self.store.counters;
        let (hot, (hot_bytes, hot_objects)) = self.store.hot_figures();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            (
                "iiifd_store_hits_total",
                "Derivatives served from the store.",
                &c.hits,
            ),
            (
                "iiifd_store_misses_total",
                "Store lookups that found nothing usable.",
                &c.misses,
            ),
            (
                "iiifd_store_evictions_total",
                "Derivatives evicted for the budget.",
                &c.evictions,
            ),
            (
                "iiifd_store_write_errors_total",
                "Derivatives that could not be stored.",
                &c.write_errors,
            ),
            (
                "iiifd_store_repairs_total",
                "Stored derivatives found missing, short or corrupt.",
                &c.repairs,
            ),
            (
                "iiifd_store_adopted_total",
                "Stored files without a hash attribute given one by a recount (bytes hashed as found).",
                &c.adopted,
            ),
            (
                "iiifd_store_reconcile_passes_total",
                "Recounts of the store's directory summaries completed.",
                &c.reconcile_passes,
            ),
            (
                "iiifd_store_reconcile_checked_total",
                "Object files counted by recounts.",
                &c.reconcile_checked,
            ),
            (
                "iiifd_store_reconcile_dropped_total",
                "Object files removed by recounts (another length than their format 2 record said).",
                &c.reconcile_dropped,
            ),
            (
                "iiifd_store_memory_hits_total",
                "Store hits answered from the memory tier (counted in iiifd_store_hits_total too).",
                &hot.hits,
            ),
            (
                "iiifd_store_memory_inserts_total",
                "Stored objects taken into the memory tier.",
                &hot.inserts,
            ),
            (
                "iiifd_memo_answers_total",
                "Repeat requests answered from the hit memo (counted in iiifd_store_memory_hits_total too).",
                &self.memo.recalled,
            ),
        ];
        for (name, help, value) in counters {
            metrics::counter(&mut out, name, help, load(value));
        }
        let stats = self.store.stats();
        let pool = self.pipeline.pool();
        let gauges = [
            ("iiifd_store_bytes", "Bytes in the store.", stats.bytes),
            (
                "iiifd_store_objects",
                "Derivatives in the store.",
                stats.objects,
            ),
            (
                "iiifd_store_max_bytes",
                "The store's budget.",
                stats.max_bytes,
            ),
            (
                "iiifd_store_memory_bytes",
                "Bytes held by the memory tier (objects and their bookkeeping).",
                hot_bytes,
            ),
            (
                "iiifd_store_memory_objects",
                "Objects held by the memory tier.",
                hot_objects,
            ),
            (
                "iiifd_pool_pending",
                "Renders queued or running.",
                pool.pending() as u64,
            ),
            (
                "iiifd_pool_workers",
                "Render threads (general and reserved for the cheap lane).",
                pool.size() as u64,
            ),
            (
                "iiifd_memory_bound_bytes",
                "The peak resident memory this configuration is bounded by.",
                self.config.memory_bound().total,
            ),
            (
                "iiifd_store_reconcile_running",
                "Whether a recount of the store's directory summaries is running.",
                load(&c.reconcile_running),
            ),
            (
                "iiifd_store_totals_approximate",
                "1 while iiifd_store_bytes and iiifd_store_objects are approximate (after a crash, a lost index or an upgrade, until the recount is done).",
                u64::from(stats.approximate),
            ),
        ];
        for (name, help, value) in gauges {
            metrics::gauge(&mut out, name, help, value);
        }
        pool.metrics_into(&mut out);
        self.memory_into(&mut out);
        if let Some((backend, c)) = &self.source {
            remote_metrics(&mut out, "iiifd_source", backend, c);
        }
        if let Some(w) = self.watch.lock().ok().as_ref().and_then(|w| w.as_ref()) {
            let m = &w.metrics;
            for (name, help, value) in [
                (
                    "iiifd_watch_arrivals_total",
                    "Source images seen arriving or changing (crawl.watch).",
                    &m.arrivals,
                ),
                (
                    "iiifd_watch_warmed_total",
                    "Arrivals whose sizes and thumbnails are stored.",
                    &m.warmed,
                ),
                (
                    "iiifd_watch_failed_total",
                    "Arrivals that could not be warmed (not an image, unreadable).",
                    &m.failed,
                ),
                (
                    "iiifd_watch_rendered_total",
                    "Derivatives rendered for arrivals.",
                    &m.rendered,
                ),
            ] {
                metrics::counter(&mut out, name, help, load(value));
            }
            m.latency.render_into(
                &mut out,
                "iiifd_watch_seconds",
                "From a source's arrival to its sizes and thumbnails being stored.",
                "",
            );
        }
        if let Some(tier) = self.store.shared() {
            remote_metrics(&mut out, "iiifd_shared", "s3", tier.requests());
            let t = tier.counters();
            let shared = [
                (
                    "iiifd_shared_hits_total",
                    "Derivatives found in the shared tier.",
                    &t.hits,
                ),
                (
                    "iiifd_shared_misses_total",
                    "Shared-tier lookups that found nothing.",
                    &t.misses,
                ),
                (
                    "iiifd_shared_corrupt_total",
                    "Shared-tier objects whose bytes did not match their hash.",
                    &t.corrupt,
                ),
                (
                    "iiifd_shared_stored_total",
                    "Renders stored in the shared tier.",
                    &t.stored,
                ),
                (
                    "iiifd_shared_already_there_total",
                    "Renders another node had stored first.",
                    &t.already_there,
                ),
                (
                    "iiifd_shared_skipped_total",
                    "Shared-tier calls skipped while it backed off after a failure.",
                    &t.skipped,
                ),
            ];
            for (name, help, value) in shared {
                metrics::counter(&mut out, name, help, load(value));
            }
            metrics::gauge(
                &mut out,
                "iiifd_shared_pending",
                "Renders queued for the shared tier.",
                load(&t.pending),
            );
        }
        if let Some(purger) = &self.purger {
            purger.render_metrics(&mut out);
        }
        out
    }
}

/// A remote service's request counters (`iiifd_source_*` for the source, `iiifd_shared_*` for
/// the shared tier), labelled by backend.
impl App {
    /// The memory bound's parts, and each in-memory cache's bytes against its budget, named by
    /// the part of the bound that budget counts in.
    fn memory_into(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP iiifd_memory_bound_part_bytes The parts iiifd_memory_bound_bytes adds up.\n# TYPE iiifd_memory_bound_part_bytes gauge"
        );
        for (part, bytes) in self.config.memory_bound().parts() {
            let _ = writeln!(
                out,
                "iiifd_memory_bound_part_bytes{{part=\"{part}\"}} {bytes}"
            );
        }
        let mut caches = self.pipeline.caches();
        caches.extend(self.memo.report());
        caches.extend(self.access.cache());
        type Field = fn(&crate::bounded::CacheReport) -> u64;
        let series: [(&str, &str, Field); 3] = [
            (
                "iiifd_cache_bytes",
                "Bytes held by an in-memory cache (part: the memory bound's part its budget counts in).",
                |c| c.bytes,
            ),
            (
                "iiifd_cache_budget_bytes",
                "The most an in-memory cache holds.",
                |c| c.budget,
            ),
            (
                "iiifd_cache_entries",
                "Entries held by an in-memory cache.",
                |c| c.entries,
            ),
        ];
        for (name, help, field) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for c in &caches {
                let _ = writeln!(
                    out,
                    "{name}{{cache=\"{}\",part=\"{}\"}} {}",
                    c.name,
                    part_of(c.name),
                    field(c)
                );
            }
        }
    }
}

/// The part of the memory bound a cache's budget counts in (see `MemoryBound::parts`).
fn part_of(cache: &str) -> &'static str {
    match cache {
        "decoded" => "decoded_cache",
        "source_blocks" => "source_blocks",
        _ => "base",
    }
}

fn remote_metrics(out: &mut String, prefix: &str, backend: &str, c: &SourceCounters) {
    use std::fmt::Write as _;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut labelled = vec![
        ("bytes_total", "Body bytes received.", &c.bytes),
        (
            "errors_total",
            "Requests that failed or timed out.",
            &c.errors,
        ),
        (
            "timeouts_total",
            "Requests past their deadline.",
            &c.timeouts,
        ),
    ];
    if prefix == "iiifd_source" {
        labelled.extend([
            (
                "block_hits_total",
                "Blocks of ranged reads found in memory.",
                &c.block_hits,
            ),
            (
                "block_misses_total",
                "Blocks of ranged reads fetched.",
                &c.block_misses,
            ),
            (
                "cache_hits_total",
                "Whole sources found in the disk cache.",
                &c.cache_hits,
            ),
            (
                "cache_misses_total",
                "Whole sources downloaded.",
                &c.cache_misses,
            ),
        ]);
    }
    let _ = writeln!(
        out,
        "# HELP {prefix}_requests_total Requests made, by kind.\n# TYPE {prefix}_requests_total counter"
    );
    let ops = [
        ("head", &c.heads),
        ("get", &c.gets),
        ("list", &c.lists),
        ("put", &c.puts),
        ("delete", &c.deletes),
    ];
    for (op, value) in ops {
        let _ = writeln!(
            out,
            "{prefix}_requests_total{{backend=\"{backend}\",op=\"{op}\"}} {}",
            load(value)
        );
    }
    for (name, help, value) in labelled {
        let _ = writeln!(
            out,
            "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} counter\n{prefix}_{name}{{backend=\"{backend}\"}} {}",
            load(value)
        );
    }
    c.latency.render_into(
        out,
        &format!("{prefix}_request_duration_seconds"),
        "Duration of requests.",
        &format!("backend=\"{backend}\""),
    );
}
