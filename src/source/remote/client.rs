//! How the remote backends talk to their services: each request on the backend's own small
//! runtime under the deadline, counted ([`Io`]), and whole downloads written to disk off that
//! runtime ([`download_with`]).

use super::{SourceCounters, SourceError};
use bytes::Bytes;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write as _};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Install rustls's ring provider as the process default, once (reqwest is built without one, to
/// keep aws-lc, whose build needs cmake, out of the build).
pub(crate) fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a request asks, for the counters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// A version check.
    Head,
    /// A read.
    Get,
    /// A listing.
    List,
    /// A write (the store's shared tier).
    Put,
    /// A removal (the store's shared tier).
    Delete,
}

/// Runs a backend's requests on its own small runtime, each under the deadline, and counts them.
pub(crate) struct Io {
    runtime: Option<tokio::runtime::Runtime>,
    deadline: Duration,
    backend: &'static str,
    counters: Arc<SourceCounters>,
}

impl Io {
    /// A runtime of two threads for `backend`'s requests.
    pub(crate) fn new(backend: &'static str, deadline: Duration) -> io::Result<Io> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("iiifd-{backend}"))
            .enable_all()
            .build()?;
        Ok(Io {
            runtime: Some(runtime),
            deadline,
            backend,
            counters: Arc::default(),
        })
    }

    /// The counters.
    pub(crate) fn counters(&self) -> &Arc<SourceCounters> {
        &self.counters
    }

    /// Count `n` body bytes received.
    pub(crate) fn received(&self, n: u64) {
        self.counters.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The error of a service that failed: counted, and named after the backend.
    pub(crate) fn unavailable(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Unavailable {
            backend: self.backend,
            reason: reason.into(),
        }
    }

    /// Run one request (`fut`, which may retry inside) to its end or its deadline, from a blocking
    /// thread.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        op: Op,
        fut: impl Future<Output = Result<T, SourceError>> + Send + 'static,
    ) -> Result<T, SourceError> {
        let Some(runtime) = &self.runtime else {
            return Err(self.unavailable("shutting down"));
        };
        let started = Instant::now();
        let c = &self.counters;
        match op {
            Op::Head => &c.heads,
            Op::Get => &c.gets,
            Op::List => &c.lists,
            Op::Put => &c.puts,
            Op::Delete => &c.deletes,
        }
        .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let deadline = self.deadline;
        runtime.spawn(async move {
            let _ = tx.send(tokio::time::timeout(deadline, fut).await);
        });
        let result = match rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(_elapsed)) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(SourceError::Timeout {
                    backend: self.backend,
                    secs: deadline.as_secs(),
                })
            }
            Err(_) => Err(self.unavailable("its runtime stopped")),
        };
        self.counters.latency.observe(started.elapsed());
        if matches!(
            result,
            Err(SourceError::Unavailable { .. } | SourceError::Timeout { .. })
        ) {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which panics inside an async context (the
        // server drops its App there): let them go in the background instead.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A whole download: `produce` runs on the backend's runtime under the deadline and sends the
/// body's chunks; this thread writes them to `to` (disk writes stay off the runtime's threads).
/// Returns the bytes written.
pub(crate) fn download_with<Fut>(
    io: &Io,
    mut to: File,
    produce: impl FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
) -> Result<u64, SourceError>
where
    Fut: Future<Output = Result<(), SourceError>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let counters = Arc::clone(io.counters());
    let (ran, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<u64, SourceError> {
            let mut n = 0;
            while let Some(chunk) = rx.blocking_recv() {
                counters
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                to.write_all(&chunk)?;
                n += chunk.len() as u64;
            }
            // Not fsynced: a torn copy can only come from a power loss or a kernel crash, after
            // which the store opens unclean and the app drops every copy (`forget_copies`).
            Ok(n)
        });
        // When the producer ends (done, failed or past its deadline) it drops its sender, and
        // the writer's loop ends.
        let ran = io.run(Op::Get, produce(tx));
        (ran, writer.join())
    });
    match (ran, written) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(written)) => written,
        (Ok(()), Err(_)) => Err(io.unavailable("the download's writer panicked")),
    }
}
