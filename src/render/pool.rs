//! The bounded render pool: a fixed set of OS threads fed by a bounded queue.
//!
//! CPU-heavy work (decode, resize, encode) never runs on the async threads. A job is admitted while
//! fewer than `workers + queue` jobs are pending (counted, not inferred from the channel: with a
//! queue of 0 a rendezvous channel would refuse a job that arrives while a free worker is between
//! two `recv`s). When the pool is full a job is refused at once ([`PoolError::Busy`], answered 503 with `Retry-After`) rather than piling up
//! memory and latency. A panicking job is caught on its worker, reported as [`PoolError::Panicked`], and
//! the worker lives on. A job whose requester has gone is not run, and at shutdown the queued jobs are
//! dropped (their requesters see [`PoolError::Closed`]): by then the HTTP edge has answered or given up
//! on every request, so running them would only delay the exit (by minutes, on a loaded machine).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use tokio::sync::oneshot;

/// A queued job: called with `true` to run it, `false` to drop it unrun.
type Job = Box<dyn FnOnce(bool) + Send + 'static>;

/// Counts a job as pending from queueing until it has run or been dropped, whichever way it goes.
struct Pending(Arc<AtomicUsize>);

impl Pending {
    /// Count one more job, unless `capacity` are already pending.
    fn admit(count: &Arc<AtomicUsize>, capacity: usize) -> Option<Pending> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()?;
        Some(Pending(Arc::clone(count)))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a job did not produce a value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PoolError {
    /// The queue is full.
    Busy,
    /// The job panicked (the panic was contained).
    Panicked,
    /// The pool is shutting down.
    Closed,
}

/// A fixed-size pool of render threads with a bounded queue.
pub(crate) struct RenderPool {
    sender: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<thread::JoinHandle<()>>>,
    size: usize,
    /// Workers plus queue: how many jobs may be pending at once.
    capacity: usize,
    pending: Arc<AtomicUsize>,
    /// Set at shutdown: workers drop what is still queued instead of running it.
    closing: Arc<AtomicBool>,
}

impl RenderPool {
    /// Start `workers` threads (at least one) with room for `queue` waiting jobs.
    pub(crate) fn new(workers: usize, queue: usize) -> RenderPool {
        let size = workers.max(1);
        // Admission is counted (see the module doc), so the channel never fills.
        let capacity = size + queue;
        let (sender, receiver) = sync_channel::<Job>(capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let closing = Arc::new(AtomicBool::new(false));
        let handles = (0..size)
            .map(|i| {
                let (receiver, closing) = (Arc::clone(&receiver), Arc::clone(&closing));
                thread::Builder::new()
                    .name(format!("iiifd-render-{i}"))
                    .spawn(move || worker(&receiver, &closing))
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
            capacity,
            pending: Arc::new(AtomicUsize::new(0)),
            closing,
        }
    }

    /// Number of worker threads.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Jobs queued or running.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Run `f` on a worker and await its result.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let pending = Pending::admit(&self.pending, self.capacity).ok_or(PoolError::Busy)?;
        let job: Job = Box::new(move |run| {
            // Nobody would read the result of a job whose requester has gone away.
            let result = (run && !tx.is_closed()).then(|| catch_unwind(AssertUnwindSafe(f)));
            // Uncounted before the requester hears back, so whoever sees a result also sees the
            // pool one job lighter (the crawl lane waits for idle workers by this count).
            drop(pending);
            if let Some(result) = result {
                let _ = tx.send(result);
            }
        });
        {
            let guard = self.sender.lock().map_err(|_| PoolError::Closed)?;
            let sender = guard.as_ref().ok_or(PoolError::Closed)?;
            match sender.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(PoolError::Busy),
                Err(TrySendError::Disconnected(_)) => return Err(PoolError::Closed),
            }
        }
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(PoolError::Panicked),
            // Dropped unrun: the pool is shutting down.
            Err(_) => Err(PoolError::Closed),
        }
    }

    /// Stop taking jobs, drop the queued ones, let the running ones finish, and join the workers.
    pub(crate) fn shutdown(&self) {
        self.closing.store(true, Ordering::Relaxed);
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

fn worker(receiver: &Mutex<Receiver<Job>>, closing: &AtomicBool) {
    loop {
        // Hold the lock only to take one job, never while running it.
        let job = match receiver.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(!closing.load(Ordering::Relaxed)),
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

    #[tokio::test]
    async fn without_a_queue_a_free_worker_always_takes_the_next_job() {
        // The requester hears back before its worker is waiting again: the job that follows at
        // once must still be admitted (a rendezvous channel refused it now and then).
        let pool = RenderPool::new(1, 0);
        for i in 0..500 {
            assert_eq!(pool.run(move || i).await, Ok(i), "job {i}");
        }
        pool.shutdown();
    }

    #[tokio::test]
    async fn shutdown_drops_queued_jobs_and_finishes_the_running_one() {
        let pool = Arc::new(RenderPool::new(1, 8));
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&pool), Arc::clone(&started));
        let running = tokio::spawn(async move {
            p.run(move || {
                s.store(true, Ordering::SeqCst);
                hold_rx.recv().is_ok()
            })
            .await
        });
        // Queued is not running: `pending` counts a job from the moment it is queued, so wait until
        // the worker has really taken it, or shutdown could (rightly) drop it unrun.
        while !started.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let (p, ran) = (Arc::clone(&pool), Arc::clone(&ran));
                tokio::spawn(
                    async move { p.run(move || ran.fetch_add(1, Ordering::Relaxed)).await },
                )
            })
            .collect();
        while pool.pending() < 4 {
            tokio::task::yield_now().await;
        }
        let p = Arc::clone(&pool);
        let stopping = std::thread::spawn(move || p.shutdown());
        while !pool.closing.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
        hold_tx.send(()).ok();
        assert_eq!(
            running.await.ok(),
            Some(Ok(true)),
            "the running job finished"
        );
        for q in queued {
            assert_eq!(q.await.ok(), Some(Err(PoolError::Closed)));
        }
        assert!(stopping.join().is_ok());
        assert_eq!(ran.load(Ordering::Relaxed), 0, "no queued job ran");
        assert_eq!(pool.pending(), 0);
        assert_eq!(pool.run(|| 1).await, Err(PoolError::Closed));
    }

    #[tokio::test]
    async fn a_job_whose_requester_left_is_not_run() {
        let pool = Arc::new(RenderPool::new(1, 8));
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let p = Arc::clone(&pool);
        let running = tokio::spawn(async move { p.run(move || hold_rx.recv().is_ok()).await });
        while pool.pending() == 0 {
            tokio::task::yield_now().await;
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let (p, r) = (Arc::clone(&pool), Arc::clone(&ran));
        let abandoned =
            tokio::spawn(async move { p.run(move || r.fetch_add(1, Ordering::Relaxed)).await });
        while pool.pending() < 2 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        hold_tx.send(()).ok();
        assert_eq!(running.await.ok(), Some(Ok(true)));
        assert_eq!(pool.run(|| 5).await, Ok(5), "later jobs still run");
        assert_eq!(
            ran.load(Ordering::Relaxed),
            0,
            "the abandoned job never ran"
        );
        assert_eq!(pool.pending(), 0);
    }
}
