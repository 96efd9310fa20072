//! Prometheus metrics (text exposition format 0.0.4), served on the admin listener at `/metrics`.
//! Plain atomics and fixed-bucket histograms: no registry, no globals; the state lives in `App`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the duration histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Version labels of `iiifd_requests_total`, in slot order.
const VERSIONS: [&str; 4] = ["3", "2", "1", "other"];

/// Counters kept by the service and the HTTP layer.
pub(crate) struct Metrics {
    /// Renders performed.
    pub renders: AtomicU64,
    /// Requests that waited on another request's render.
    pub collapsed: AtomicU64,
    /// Tiled copies of large flat sources written to the store.
    pub tiled_copies: AtomicU64,
    /// Tiled copies asked for by a render (each then waits for the pool to be idle).
    pub tiled_copies_wanted: AtomicU64,
    /// Renders that read their pixels from a tiled copy.
    pub tiled_copy_renders: AtomicU64,
    /// Lookups of an identifier answered 404 by the negative cache, without the source.
    pub negative_hits: AtomicU64,
    render_duration: Histogram,
    /// Requests by version slot (3, 2, 1, other) and status (100..=599): plain atomics, because this is
    /// touched by every request and a shared lock here showed up as contention under load.
    requests: [[AtomicU64; 500]; 4],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            renders: AtomicU64::new(0),
            collapsed: AtomicU64::new(0),
            tiled_copies: AtomicU64::new(0),
            tiled_copies_wanted: AtomicU64::new(0),
            tiled_copy_renders: AtomicU64::new(0),
            negative_hits: AtomicU64::new(0),
            render_duration: Histogram::default(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl Metrics {
    /// Record one render's duration.
    pub(crate) fn observe_render(&self, d: Duration) {
        self.renders.fetch_add(1, Ordering::Relaxed);
        self.render_duration.observe(d);
    }

    /// Count one answered request by API version (`"3"`, `"2"`, `"1"` or `"other"`) and status.
    pub(crate) fn count_request(&self, version: &str, status: u16) {
        let v = VERSIONS.iter().position(|x| *x == version).unwrap_or(3);
        if let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.requests[v].get(usize::from(i)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Append this struct's metrics to `out`.
    pub(crate) fn render_into(&self, out: &mut String) {
        counter(
            out,
            "iiifd_renders_total",
            "Derivatives rendered.",
            self.renders.load(Ordering::Relaxed),
        );
        counter(
            out,
            "iiifd_store_collapsed_total",
            "Requests served by waiting on another request's render.",
            self.collapsed.load(Ordering::Relaxed),
        );
        counter(
            out,
            "iiifd_tiled_copies_total",
            "Tiled copies of large flat sources written to the store.",
            self.tiled_copies.load(Ordering::Relaxed),
        );
        counter(
            out,
            "iiifd_tiled_copies_wanted_total",
            "Tiled copies asked for by a render: each is written once the render pool is idle.",
            self.tiled_copies_wanted.load(Ordering::Relaxed),
        );
        counter(
            out,
            "iiifd_tiled_copy_renders_total",
            "Renders that read their pixels from a tiled copy.",
            self.tiled_copy_renders.load(Ordering::Relaxed),
        );
        counter(
            out,
            "iiifd_source_negative_hits_total",
            "Lookups answered 404 from memory: the identifier named nothing within source.negative_secs.",
            self.negative_hits.load(Ordering::Relaxed),
        );
        self.render_duration.render_into(
            out,
            "iiifd_render_duration_seconds",
            "Time to decode, transform and encode one derivative.",
            "",
        );
        let _ = writeln!(
            out,
            "# HELP iiifd_requests_total Requests answered, by API version and status."
        );
        let _ = writeln!(out, "# TYPE iiifd_requests_total counter");
        for (v, version) in VERSIONS.iter().enumerate() {
            for (i, counter) in self.requests[v].iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    let status = i + 100;
                    let _ = writeln!(
                        out,
                        "iiifd_requests_total{{version=\"{version}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
    }
}

/// Durations in fixed buckets (seconds).
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    micros: AtomicU64,
}

impl Histogram {
    /// Record one duration.
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Append it as `name`, with `labels` (`key="value"` pairs, comma-separated, or empty) on
    /// every line.
    pub(crate) fn render_into(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        self.render_series(out, name, help, labels, true);
    }

    /// [`Histogram::render_into`] for one of several series of `name` (label sets): the `HELP`
    /// and `TYPE` lines only with the `first`.
    pub(crate) fn render_series(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        labels: &str,
        first: bool,
    ) {
        let sep = if labels.is_empty() { "" } else { "," };
        if first {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Append one counter.
pub(crate) fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Append one gauge.
pub(crate) fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.observe_render(Duration::from_millis(30));
        m.count_request("3", 200);
        let mut out = String::new();
        m.render_into(&mut out);
        assert!(out.contains("iiifd_renders_total 1\n"));
        assert!(out.contains("iiifd_render_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(out.contains("iiifd_render_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(out.contains("iiifd_requests_total{version=\"3\",status=\"200\"} 1\n"));
    }
}
