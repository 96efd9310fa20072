//! The bounded render pool: a fixed set of OS threads taking jobs in the order
//! [`crate::admission::fair`] decides.
//!
//! CPU-heavy work (decode, resize, encode) never runs on the async threads. Two kinds of thread
//! share the queue: `reserved` threads run cheap renders only, at the normal CPU priority;
//! `general` threads run every lane at a lower priority (nice +[`GENERAL_NICE`]), so when both
//! have work the kernel gives the cores to the cheap renders (a viewer's tiles) and the heavy ones
//! (a harvester's arbitrary regions) use whatever is left: all of it when no viewer is waiting.
//! A reserved thread decodes within the cheap budget only; a render that needs more comes back
//! [`Worker::reserved`] with its error, and the pipeline sends it to a general thread.
//!
//! Admission is decided at once: a job is queued, or refused ([`PoolError::TooMany`] for a client
//! over its cap or with the longest queue when the queue is full, [`PoolError::Busy`] when it is
//! full of others' single jobs), never left to wait for a place. A job pushed out of the queue to
//! make room hears [`PoolError::TooMany`] too. A panicking job is caught on its thread
//! ([`PoolError::Panicked`]) and the thread lives on. A job whose requester has gone is not run,
//! and at shutdown the queued jobs are dropped ([`PoolError::Closed`]): by then the HTTP edge has
//! answered or given up on every request, so running them would only delay the exit.

use crate::admission::fair::{ClassRule, Fair, Refusal, Role};
use crate::admission::{ClientKey, Lane};
use crate::metrics::Histogram;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How much lower than the rest of the process general threads run (Linux nice levels: at +10 a
/// thread gets about a tenth of a core that a normal thread also wants).
const GENERAL_NICE: i32 = 10;

/// What a job learns about the thread it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Worker {
    /// A reserved (cheap-lane) thread.
    pub(crate) reserved: bool,
    /// The most one decode may allocate here.
    pub(crate) decode_budget: u64,
}

/// What the pool does with a queued job.
enum Outcome<'a> {
    Run(&'a Worker),
    Refuse(PoolError),
}

/// A queued job. Run, it returns the sending of its result, which the thread does only once the
/// job is accounted as finished: whoever hears back sees the pool (and its own client) one job
/// lighter, so a client's next request is never refused for the one just answered.
type Job = Box<dyn FnOnce(Outcome<'_>) -> Option<Reply> + Send + 'static>;

/// The sending of a job's result.
type Reply = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not produce a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PoolError {
    /// The queue is full of other clients' renders.
    Busy,
    /// The client has too many renders queued or running (or the longest queue when it is full).
    TooMany,
    /// The job panicked (the panic was contained).
    Panicked,
    /// The pool is shutting down.
    Closed,
}

/// One render to schedule: whose it is, its lane, and its estimated render time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    pub(crate) client: ClientKey,
    pub(crate) lane: Lane,
    pub(crate) estimate: Duration,
}

/// How the pool is made.
#[derive(Clone, Debug)]
pub(crate) struct PoolSettings {
    /// Threads for every lane.
    pub(crate) general: usize,
    /// Threads for the cheap lane only.
    pub(crate) reserved: usize,
    /// Live renders that may wait beyond those running.
    pub(crate) queue: usize,
    /// Background renders at once.
    pub(crate) background: usize,
    /// The classes (name and rule), `default` first.
    pub(crate) classes: Vec<(String, ClassRule)>,
    /// The decode budget of general and of reserved threads.
    pub(crate) decode_budget: u64,
    pub(crate) cheap_decode_budget: u64,
}

/// Per class and lane: the wait for a thread, and refusals.
struct LaneStats {
    wait: Histogram,
    refused: AtomicU64,
}

/// The queue, and how many reserved threads wait for work.
struct State {
    fair: Fair<Job>,
    reserved_idle: usize,
}

struct Shared {
    state: Mutex<State>,
    general_ready: Condvar,
    reserved_ready: Condvar,
    closing: AtomicBool,
    /// `[class][lane]`; background work under class 0.
    stats: Vec<[LaneStats; Lane::ALL.len()]>,
    names: Vec<String>,
    /// Jobs queued or running, sent on every change (under the state's lock): what
    /// [`RenderPool::idle_for`] waits on.
    pending: tokio::sync::watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> Option<MutexGuard<'_, State>> {
        self.state.lock().ok()
    }

    /// Tell the watchers how many jobs are pending now (call with the state's lock held).
    fn announce(&self, state: &State) {
        self.pending.send_replace(state.fair.pending());
    }

    fn stats(&self, class: usize, lane: Lane) -> Option<&LaneStats> {
        self.stats.get(class).map(|row| &row[lane as usize])
    }
}

/// The render threads and their queue.
pub(crate) struct RenderPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    general: usize,
    reserved: usize,
}

impl RenderPool {
    /// Start the threads (at least one general one).
    pub(crate) fn new(settings: &PoolSettings) -> RenderPool {
        let general = settings.general.max(1);
        let reserved = settings.reserved;
        let rules: Vec<ClassRule> = settings.classes.iter().map(|(_, r)| *r).collect();
        let capacity = general + reserved + settings.queue;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fair: Fair::new(&rules, capacity, settings.background),
                reserved_idle: 0,
            }),
            general_ready: Condvar::new(),
            reserved_ready: Condvar::new(),
            closing: AtomicBool::new(false),
            stats: (0..rules.len().max(1))
                .map(|_| {
                    std::array::from_fn(|_| LaneStats {
                        wait: Histogram::default(),
                        refused: AtomicU64::new(0),
                    })
                })
                .collect(),
            names: settings.classes.iter().map(|(n, _)| n.clone()).collect(),
            pending: tokio::sync::watch::Sender::new(0),
        });
        let spawn = |i: usize, role: Role, budget: u64| {
            let shared = Arc::clone(&shared);
            let name = match role {
                Role::General => format!("iiifd-render-{i}"),
                Role::Reserved => format!("iiifd-cheap-{i}"),
            };
            let worker = Worker {
                reserved: role == Role::Reserved,
                decode_budget: budget,
            };
            thread::Builder::new()
                .name(name)
                .spawn(move || work(&shared, role, worker))
                .map_err(|e| tracing::error!("cannot start render thread: {e}"))
                .ok()
        };
        let threads = (0..general)
            .map(|i| spawn(i, Role::General, settings.decode_budget))
            .chain((0..reserved).map(|i| spawn(i, Role::Reserved, settings.cheap_decode_budget)))
            .collect::<Vec<_>>()
            .into_iter()
            .flatten()
            .collect();
        RenderPool {
            shared,
            threads: Mutex::new(threads),
            general,
            reserved,
        }
    }

    /// Render threads of both kinds.
    pub(crate) fn size(&self) -> usize {
        self.general + self.reserved
    }

    /// Jobs queued or running in every lane.
    pub(crate) fn pending(&self) -> usize {
        self.shared.lock().map_or(0, |s| s.fair.pending())
    }

    /// Return once no job has been queued or running for `quiet` on end (woken by the pool's
    /// changes, not by polling).
    pub(crate) async fn idle_for(&self, quiet: Duration) {
        let mut rx = self.shared.pending.subscribe();
        loop {
            if rx.wait_for(|&n| n == 0).await.is_err() {
                return;
            }
            match tokio::time::timeout(quiet, rx.changed()).await {
                // Quiet all along, or the pool is gone.
                Err(_) | Ok(Err(_)) => return,
                // Something was queued or finished meanwhile: look again.
                Ok(Ok(())) => {}
            }
        }
    }

    /// Run `f` on a thread when the scheduler says, and await its result.
    pub(crate) async fn run<T, F>(&self, ticket: Ticket, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce(&Worker) -> T + Send + 'static,
    {
        let (job, rx) = job(f);
        self.submit(ticket, job)?;
        match rx.await {
            Ok(result) => result,
            // Dropped unrun: the pool is shutting down.
            Err(_) => Err(PoolError::Closed),
        }
    }

    fn submit(&self, ticket: Ticket, job: Job) -> Result<(), PoolError> {
        if self.shared.closing.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        let class = ticket.client.class.0;
        let submitted = {
            let mut state = self.shared.lock().ok_or(PoolError::Closed)?;
            // Again under the lock: shutdown drains the queue under it after raising the flag, so
            // a job queued after the drain would never run.
            if self.shared.closing.load(Ordering::Relaxed) {
                return Err(PoolError::Closed);
            }
            let submitted = state.fair.submit(
                ticket.client,
                ticket.lane,
                ticket.estimate.as_secs_f64(),
                job,
                Instant::now(),
            );
            self.shared.announce(&state);
            submitted
        };
        let refused = |class: usize, lane: Lane| {
            if let Some(s) = self.shared.stats(class, lane) {
                s.refused.fetch_add(1, Ordering::Relaxed);
            }
        };
        match submitted {
            Ok(displaced) => {
                if let Some(d) = displaced {
                    refused(d.client.class.0, d.lane);
                    let _ = (d.job)(Outcome::Refuse(PoolError::TooMany));
                }
            }
            Err((_job, why)) => {
                refused(class, ticket.lane);
                return Err(match why {
                    Refusal::OverCap | Refusal::Displaced => PoolError::TooMany,
                    Refusal::Busy => PoolError::Busy,
                });
            }
        }
        // Wake a thread that may run it (a thread that finds nothing goes back to sleep, and busy
        // threads look at the queue before they wait again).
        if ticket.lane == Lane::Cheap && self.reserved > 0 {
            self.shared.reserved_ready.notify_one();
        }
        self.shared.general_ready.notify_one();
        Ok(())
    }

    /// Append the admission metrics: per class and lane, jobs queued and running, refusals, and
    /// the wait for a thread.
    pub(crate) fn metrics_into(&self, out: &mut String) {
        use std::fmt::Write as _;
        let counts = self
            .shared
            .lock()
            .map(|s| s.fair.counts())
            .unwrap_or_default();
        let label = |class: usize, lane: Lane| {
            let name = match lane {
                Lane::Background => "-",
                _ => self
                    .shared
                    .names
                    .get(class)
                    .map_or("default", |n| n.as_str()),
            };
            format!("lane=\"{}\",class=\"{name}\"", lane.name())
        };
        // Every class and live lane, and the background lane once.
        let rows: Vec<(usize, Lane)> = (0..self.shared.stats.len())
            .flat_map(|c| [(c, Lane::Cheap), (c, Lane::Heavy)])
            .chain(std::iter::once((0, Lane::Background)))
            .collect();
        let count = |class: usize, lane: Lane| match lane {
            Lane::Background => counts.background,
            _ => counts
                .live
                .get(class)
                .map_or((0, 0), |r| r[lane.live_index()]),
        };
        for (name, help, pick) in [
            (
                "iiifd_admission_queued",
                "Renders waiting for a render thread, by lane and client class.",
                0,
            ),
            (
                "iiifd_admission_running",
                "Renders running, by lane and client class.",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for &(c, lane) in &rows {
                let (q, r) = count(c, lane);
                let v = if pick == 0 { q } else { r };
                let _ = writeln!(out, "{name}{{{}}} {v}", label(c, lane));
            }
        }
        let _ = writeln!(
            out,
            "# HELP iiifd_admission_refused_total Renders refused with 429 or 503 (over a client's cap, the longest queue, or a full queue), by lane and client class.\n# TYPE iiifd_admission_refused_total counter"
        );
        for &(c, lane) in &rows {
            let n = self
                .shared
                .stats(c, lane)
                .map_or(0, |s| s.refused.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "iiifd_admission_refused_total{{{}}} {n}",
                label(c, lane)
            );
        }
        let mut first = true;
        for &(c, lane) in &rows {
            if let Some(s) = self.shared.stats(c, lane) {
                s.wait.render_series(
                    out,
                    "iiifd_admission_wait_seconds",
                    "Time renders waited for a render thread, by lane and client class.",
                    &label(c, lane),
                    first,
                );
                first = false;
            }
        }
    }

    /// Stop taking jobs, drop the queued ones, let the running ones finish, and join the threads.
    pub(crate) fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let queued = self
            .shared
            .lock()
            .map(|mut s| {
                let drained = s.fair.drain();
                self.shared.announce(&s);
                drained
            })
            .unwrap_or_default();
        for job in queued {
            let _ = job(Outcome::Refuse(PoolError::Closed));
        }
        self.shared.general_ready.notify_all();
        self.shared.reserved_ready.notify_all();
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for RenderPool {
    fn drop(&mut self) {
        // Threads exit once they see this; nothing is left to join them.
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.general_ready.notify_all();
        self.shared.reserved_ready.notify_all();
    }
}

/// `f` as a queued job, and where its result arrives.
fn job<T, F>(f: F) -> (Job, oneshot::Receiver<Result<T, PoolError>>)
where
    T: Send + 'static,
    F: FnOnce(&Worker) -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel::<Result<T, PoolError>>();
    let job: Job = Box::new(move |outcome| match outcome {
        Outcome::Run(worker) => {
            // Nobody would read the result of a job whose requester has gone away.
            if tx.is_closed() {
                return None;
            }
            let result =
                catch_unwind(AssertUnwindSafe(|| f(worker))).map_err(|_| PoolError::Panicked);
            Some(Box::new(move || {
                let _ = tx.send(result);
            }))
        }
        Outcome::Refuse(e) => {
            let _ = tx.send(Err(e));
            None
        }
    });
    (job, rx)
}

/// One render thread: take the next job its role may run, run it, account for it.
fn work(shared: &Shared, role: Role, worker: Worker) {
    if role == Role::General {
        lower_priority();
    }
    let ready = match role {
        Role::General => &shared.general_ready,
        Role::Reserved => &shared.reserved_ready,
    };
    loop {
        let dispatch = {
            let Some(mut state) = shared.lock() else {
                return;
            };
            loop {
                if shared.closing.load(Ordering::Relaxed) {
                    return;
                }
                let reserved_idle = state.reserved_idle > 0;
                if let Some(d) = state.fair.next(role, reserved_idle, Instant::now()) {
                    // Pass the baton: work left may be for a thread that looked while this one
                    // was counted idle (and left cheap work to it), or that background work waited
                    // behind the job just taken.
                    if state.fair.has_queued() {
                        shared.general_ready.notify_one();
                        shared.reserved_ready.notify_one();
                    }
                    break d;
                }
                // Counted idle while waiting (and until it has the lock again): a general thread
                // then leaves cheap work to it, and it was woken for that work.
                if role == Role::Reserved {
                    state.reserved_idle += 1;
                }
                state = match ready.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                if role == Role::Reserved {
                    state.reserved_idle -= 1;
                }
            }
        };
        let started = Instant::now();
        let lane = dispatch.started.lane;
        let class = dispatch.started.class().map_or(0, |c| c.0);
        if let Some(s) = shared.stats(class, lane) {
            s.wait
                .observe(started.saturating_duration_since(dispatch.started.enqueued));
        }
        let reply = (dispatch.job)(Outcome::Run(&worker));
        let took = started.elapsed();
        if let Some(mut state) = shared.lock() {
            state.fair.finish(dispatch.started, took, Instant::now());
            shared.announce(&state);
            // A background slot may have come free for another general thread.
            if lane == Lane::Background {
                shared.general_ready.notify_one();
            }
        }
        if let Some(reply) = reply {
            reply();
        }
    }
}

/// Run this thread below the process's CPU priority (see [`GENERAL_NICE`]). Best effort: where
/// the kernel refuses, the lanes still keep their threads apart, only without the kernel's help.
fn lower_priority() {
    if let Err(e) = crate::sys::set_thread_nice(GENERAL_NICE) {
        tracing::warn!("cannot lower the priority of a render thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::ClassId;
    use std::net::{IpAddr, Ipv4Addr};

    fn settings(general: usize, reserved: usize, queue: usize, cap: usize) -> PoolSettings {
        PoolSettings {
            general,
            reserved,
            queue,
            background: 1,
            classes: vec![("default".into(), ClassRule { share: 1.0, cap })],
            decode_budget: 1 << 30,
            cheap_decode_budget: 1 << 20,
        }
    }

    fn ticket(n: u8, lane: Lane) -> Ticket {
        Ticket {
            client: ClientKey {
                addr: IpAddr::V4(Ipv4Addr::new(10, n, 0, 0)),
                class: ClassId(0),
            },
            lane,
            estimate: Duration::from_millis(1),
        }
    }

    /// A job that holds its thread until released, and says when it started.
    fn holder() -> (
        impl FnOnce(&Worker) -> bool + Send + 'static,
        std::sync::mpsc::Sender<()>,
        Arc<AtomicBool>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&started);
        let job = move |_: &Worker| {
            s.store(true, Ordering::SeqCst);
            rx.recv().is_ok()
        };
        (job, tx, started)
    }

    /// The pool's metrics have this line.
    fn assert_metric(pool: &RenderPool, line: &str) {
        let mut text = String::new();
        pool.metrics_into(&mut text);
        assert!(text.contains(line), "no {line} in\n{text}");
    }

    async fn until(flag: &AtomicBool) {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn idle_for_waits_out_running_work_then_a_quiet_spell() {
        let pool = Arc::new(RenderPool::new(&settings(1, 0, 4, 100)));
        let (job, release, started) = holder();
        let p = Arc::clone(&pool);
        let running = tokio::spawn(async move { p.run(ticket(1, Lane::Heavy), job).await });
        until(&started).await;
        let p = Arc::clone(&pool);
        let idle = tokio::spawn(async move { p.idle_for(Duration::from_millis(30)).await });
        // However long the job runs, the pool is not idle.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!idle.is_finished(), "idle while a job runs");
        release.send(()).ok();
        assert_eq!(running.await.ok(), Some(Ok(true)));
        tokio::time::timeout(Duration::from_secs(10), idle)
            .await
            .ok()
            .and_then(|r| r.ok())
            .expect("idle once the job finished");
        pool.shutdown();
    }

    #[tokio::test]
    async fn runs_contains_panics_and_refuses_when_full() {
        let pool = Arc::new(RenderPool::new(&settings(1, 0, 1, 100)));
        assert_eq!(pool.run(ticket(1, Lane::Heavy), |_| 2 + 2).await, Ok(4));
        assert_eq!(
            pool.run(ticket(1, Lane::Heavy), |_| -> u32 { panic!("boom") })
                .await,
            Err(PoolError::Panicked)
        );
        assert_eq!(
            pool.run(ticket(1, Lane::Heavy), |_| 7).await,
            Ok(7),
            "the thread survived the panic"
        );
        let (job, release, started) = holder();
        let p = Arc::clone(&pool);
        let running = tokio::spawn(async move { p.run(ticket(1, Lane::Heavy), job).await });
        until(&started).await;
        let p = Arc::clone(&pool);
        let queued = tokio::spawn(async move { p.run(ticket(2, Lane::Heavy), |_| 1).await });
        while pool.pending() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(ticket(3, Lane::Heavy), |_| 1).await,
            Err(PoolError::Busy),
            "a queue of one is full, of single renders"
        );
        release.send(()).ok();
        assert_eq!(running.await.ok(), Some(Ok(true)));
        assert_eq!(queued.await.ok(), Some(Ok(1)));
        pool.shutdown();
    }

    #[tokio::test]
    async fn a_free_thread_always_takes_the_next_job() {
        let pool = RenderPool::new(&settings(1, 0, 0, 100));
        for i in 0..500 {
            assert_eq!(pool.run(ticket(1, Lane::Heavy), move |_| i).await, Ok(i));
        }
        pool.shutdown();
    }

    #[tokio::test]
    async fn a_reserved_thread_serves_the_cheap_lane_while_heavy_renders_hold_the_others() {
        let pool = Arc::new(RenderPool::new(&settings(1, 1, 8, 100)));
        let (job, release, started) = holder();
        let p = Arc::clone(&pool);
        let heavy = tokio::spawn(async move { p.run(ticket(1, Lane::Heavy), job).await });
        until(&started).await;
        // A second heavy render waits; a cheap one runs at once, on the reserved thread with its
        // own budget.
        let p = Arc::clone(&pool);
        let waiting = tokio::spawn(async move { p.run(ticket(1, Lane::Heavy), |w| *w).await });
        let cheap = pool.run(ticket(2, Lane::Cheap), |w| *w).await;
        assert_eq!(
            cheap,
            Ok(Worker {
                reserved: true,
                decode_budget: 1 << 20
            })
        );
        assert!(!waiting.is_finished());
        release.send(()).ok();
        assert_eq!(heavy.await.ok(), Some(Ok(true)));
        assert_eq!(
            waiting.await.ok(),
            Some(Ok(Worker {
                reserved: false,
                decode_budget: 1 << 30
            }))
        );
        assert_metric(
            &pool,
            "iiifd_admission_wait_seconds_count{lane=\"cheap\",class=\"default\"} 1",
        );
        pool.shutdown();
    }

    #[tokio::test]
    async fn no_job_is_stranded_while_threads_leave_work_to_each_other() {
        // A cheap and a background job queued together while both threads sleep; the general
        // thread looks first and, the reserved one being idle, leaves the cheap job to it and
        // cannot start the background one while a live job waits. When the reserved thread takes
        // the cheap job, the general one must hear of the background job left for it.
        let pool = RenderPool::new(&settings(1, 1, 64, 100));
        while pool.shared.lock().map_or(0, |s| s.reserved_idle) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (background, background_rx) = job(|_| 1);
        let (cheap, cheap_rx) = job(|_| 2);
        if let Some(mut state) = pool.shared.lock() {
            let now = Instant::now();
            let t = ticket(1, Lane::Background);
            assert!(state
                .fair
                .submit(t.client, t.lane, 0.001, background, now)
                .is_ok());
            let t = ticket(2, Lane::Cheap);
            assert!(state
                .fair
                .submit(t.client, t.lane, 0.001, cheap, now)
                .is_ok());
        }
        pool.shared.general_ready.notify_one();
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.shared.reserved_ready.notify_one();
        let both = tokio::time::timeout(Duration::from_secs(10), async {
            (cheap_rx.await.ok(), background_rx.await.ok())
        })
        .await;
        assert_eq!(
            both.ok(),
            Some((Some(Ok(2)), Some(Ok(1)))),
            "a job was stranded"
        );
        pool.shutdown();
    }

    #[tokio::test]
    async fn over_its_cap_a_client_hears_too_many_at_once() {
        let pool = Arc::new(RenderPool::new(&settings(1, 0, 16, 2)));
        let (job, release, started) = holder();
        let p = Arc::clone(&pool);
        let first = tokio::spawn(async move { p.run(ticket(1, Lane::Heavy), job).await });
        until(&started).await;
        let p = Arc::clone(&pool);
        let second = tokio::spawn(async move { p.run(ticket(1, Lane::Heavy), |_| true).await });
        while pool.pending() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(ticket(1, Lane::Heavy), |_| true).await,
            Err(PoolError::TooMany)
        );
        // Another client still gets in.
        let p = Arc::clone(&pool);
        let other = tokio::spawn(async move { p.run(ticket(2, Lane::Heavy), |_| true).await });
        release.send(()).ok();
        assert_eq!(first.await.ok(), Some(Ok(true)));
        assert_eq!(second.await.ok(), Some(Ok(true)));
        assert_eq!(other.await.ok(), Some(Ok(true)));
        assert_metric(
            &pool,
            "iiifd_admission_refused_total{lane=\"heavy\",class=\"default\"} 1",
        );
        pool.shutdown();
    }

    #[tokio::test]
    async fn shutdown_drops_queued_jobs_and_finishes_the_running_one() {
        let pool = Arc::new(RenderPool::new(&settings(1, 0, 8, 100)));
        let (job, release, started) = holder();
        let p = Arc::clone(&pool);
        let running = tokio::spawn(async move { p.run(ticket(1, Lane::Heavy), job).await });
        until(&started).await;
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let queued: Vec<_> = (0..3)
            .map(|i| {
                let (p, ran) = (Arc::clone(&pool), Arc::clone(&ran));
                tokio::spawn(async move {
                    p.run(ticket(2 + i, Lane::Heavy), move |_| {
                        ran.fetch_add(1, Ordering::Relaxed)
                    })
                    .await
                })
            })
            .collect();
        while pool.pending() < 4 {
            tokio::task::yield_now().await;
        }
        let p = Arc::clone(&pool);
        let stopping = std::thread::spawn(move || p.shutdown());
        while !pool.shared.closing.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
        release.send(()).ok();
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
        assert_eq!(
            pool.run(ticket(1, Lane::Heavy), |_| 1).await,
            Err(PoolError::Closed)
        );
    }

    #[tokio::test]
    async fn a_job_whose_requester_left_is_not_run() {
        let pool = Arc::new(RenderPool::new(&settings(1, 0, 8, 100)));
        let (job, release, started) = holder();
        let p = Arc::clone(&pool);
        let running = tokio::spawn(async move { p.run(ticket(1, Lane::Heavy), job).await });
        until(&started).await;
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (p, r) = (Arc::clone(&pool), Arc::clone(&ran));
        let abandoned = tokio::spawn(async move {
            p.run(ticket(2, Lane::Heavy), move |_| {
                r.fetch_add(1, Ordering::Relaxed)
            })
            .await
        });
        while pool.pending() < 2 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        release.send(()).ok();
        assert_eq!(running.await.ok(), Some(Ok(true)));
        assert_eq!(pool.run(ticket(3, Lane::Heavy), |_| 5).await, Ok(5));
        assert_eq!(
            ran.load(Ordering::Relaxed),
            0,
            "the abandoned job never ran"
        );
        assert_eq!(pool.pending(), 0);
        pool.shutdown();
    }
}
