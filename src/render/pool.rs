//! The bounded render pool: a fixed set of OS threads fed by a bounded queue.
//!
//! CPU-heavy work (decode, resize, encode) never runs on the async threads. When the queue is full a job
//! is refused at once ([`PoolError::Busy`], answered 503 with `Retry-After`) rather than piling up
//! memory and latency. A panicking job is caught on its worker, reported as [`PoolError::Panicked`], and
//! the worker lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not produce a value.
#[derive(Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The queue is full.
    Busy,
    /// The job panicked (the panic was contained).
    Panicked,
    /// The pool is shutting down.
    Closed,
}

/// A fixed-size pool of render threads with a bounded queue.
pub struct RenderPool {
    sender: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<thread::JoinHandle<()>>>,
    size: usize,
    pending: Arc<AtomicUsize>,
}

impl RenderPool {
    /// Start `workers` threads (at least one) with room for `queue` waiting jobs.
    pub fn new(workers: usize, queue: usize) -> RenderPool {
        let size = workers.max(1);
        let (sender, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let handles = (0..size)
            .map(|i| {
                let receiver = Arc::clone(&receiver);
                thread::Builder::new()
                    .name(format!("iiifd-render-{i}"))
                    .spawn(move || worker(&receiver))
                    .map_err(|e| tracing::error!("cannot start render thread: {e}"))
                    .ok()
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flatten()
            .collect();
        RenderPool {
            sender: Mutex::new(Some(sender)),
            workers: Mutex::new(handles),
            size,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Jobs queued or running.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Run `f` on a worker and await its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let pending = Arc::clone(&self.pending);
        let job: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(f));
            pending.fetch_sub(1, Ordering::Relaxed);
            // The requester may have gone away; then nobody needs the result.
            let _ = tx.send(result);
        });
        {
            let guard = self.sender.lock().map_err(|_| PoolError::Closed)?;
            let sender = guard.as_ref().ok_or(PoolError::Closed)?;
            self.pending.fetch_add(1, Ordering::Relaxed);
            match sender.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    return Err(PoolError::Busy);
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    return Err(PoolError::Closed);
                }
            }
        }
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) | Err(_) => Err(PoolError::Panicked),
        }
    }

    /// Stop taking jobs, let queued and running jobs finish, and join the workers.
    pub fn shutdown(&self) {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
        let handles = self
            .workers
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for RenderPool {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
    }
}

fn worker(receiver: &Mutex<Receiver<Job>>) {
    loop {
        // Hold the lock only to take one job, never while running it.
        let job = match receiver.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_contains_panics_and_refuses_when_full() {
        let pool = RenderPool::new(1, 1);
        assert_eq!(pool.run(|| 2 + 2).await, Ok(4));
        assert_eq!(
            pool.run(|| -> u32 { panic!("boom") }).await,
            Err(PoolError::Panicked)
        );
        assert_eq!(pool.run(|| 7).await, Ok(7), "the worker survived the panic");

        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let hold_rx = Arc::new(Mutex::new(hold_rx));
        let h = Arc::clone(&hold_rx);
        let pool = Arc::new(pool);
        let p = Arc::clone(&pool);
        let running = tokio::spawn(async move {
            p.run(move || h.lock().map(|r| r.recv().is_ok()).unwrap_or(false))
                .await
        });
        while pool.pending() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let p = Arc::clone(&pool);
        let queued = tokio::spawn(async move { p.run(|| 1).await });
        while pool.pending() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(|| 1).await,
            Err(PoolError::Busy),
            "queue of one is full"
        );
        hold_tx.send(()).ok();
        assert_eq!(running.await.ok(), Some(Ok(true)));
        assert_eq!(queued.await.ok(), Some(Ok(1)));
        pool.shutdown();
    }
}
