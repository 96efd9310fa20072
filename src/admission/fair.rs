//! The order in which queued renders get a render thread: pure state, the time passed in, so every
//! rule is tested alone (the threads around it are `crate::render::pool`).
//!
//! Live renders wait in one queue per client. A thread that comes free takes, among the classes
//! with a job it may run, the class that has used the least of its share lately; in that class, the
//! client that has used the least lately; of that client, its oldest job. "Used" is render time,
//! decaying with a half-life of [`HALF_LIFE`], charged with an estimate when a render starts and
//! corrected when it ends. So a client's turn never depends on how long another's backlog is, and a
//! viewer that renders a few tiles now and then goes ahead of a harvester that renders all day.
//!
//! Threads have roles: a reserved thread runs cheap renders only; a general thread runs cheap and
//! heavy ones, and background work (crawl, tiled copies) when no live render waits and fewer than
//! the background limit run. Admission is bounded twice: per client (`cap`: queued plus running),
//! answered with [`Refusal::OverCap`], and in all (`capacity`): when it is full, the client with the
//! longest queue loses its newest job ([`Refusal::Displaced`]) if that evens things out, otherwise
//! the newcomer is refused ([`Refusal::Busy`], or [`Refusal::Displaced`] when it is itself the one
//! with the longest queue).

use super::{ClassId, ClientKey, Lane};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How fast past use is forgotten: after this long a render's time counts half.
pub(crate) const HALF_LIFE: Duration = Duration::from_secs(20);

/// Idle clients are forgotten once their use has decayed below this (seconds of render time).
const FORGET_BELOW: f64 = 1e-3;

/// Clients remembered at most (idle ones past this are forgotten, least used first): about 100
/// bytes each, so a few MiB however many addresses a swarm has.
const MAX_CLIENTS: usize = 50_000;

/// Idle clients are looked for once every this many submissions (a pass is linear in the clients
/// remembered, so its cost per submission stays constant).
const FORGET_EVERY: u64 = 4096;

/// The kind of render thread asking for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Kept for the cheap lane.
    Reserved,
    /// Runs every lane.
    General,
}

/// Why a render was not queued (or was dropped from the queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client has `cap` renders queued or running.
    OverCap,
    /// The queue is full and this client has the longest queue.
    Displaced,
    /// The queue is full of other clients' single renders.
    Busy,
}

/// A class as the scheduler sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClassRule {
    /// Its share of the threads when classes compete.
    pub(crate) share: f64,
    /// Renders each of its clients may have queued or running.
    pub(crate) cap: usize,
}

/// Decaying use: the value at `at`.
#[derive(Clone, Copy, Debug)]
struct Use {
    secs: f64,
    at: Instant,
}

impl Use {
    fn new(now: Instant) -> Use {
        Use { secs: 0.0, at: now }
    }

    fn value(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.secs * 0.5f64.powf(dt / HALF_LIFE.as_secs_f64())
    }

    fn add(&mut self, secs: f64, now: Instant) {
        self.secs = (self.value(now) + secs).max(0.0);
        self.at = now;
    }
}

struct Entry<J> {
    seq: u64,
    lane: Lane,
    estimate: f64,
    enqueued: Instant,
    job: J,
}

struct Client<J> {
    used: Use,
    queue: VecDeque<Entry<J>>,
    running: usize,
}

/// A queued job pushed out to make room for another client's.
#[derive(Debug)]
pub(crate) struct Displaced<J> {
    pub(crate) job: J,
    pub(crate) client: ClientKey,
    pub(crate) lane: Lane,
}

/// A job handed to a thread, and what [`Fair::finish`] needs when it ends.
pub(crate) struct Dispatch<J> {
    pub(crate) job: J,
    pub(crate) started: Started,
}

/// A running job's account.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Started {
    client: Option<ClientKey>,
    pub(crate) lane: Lane,
    estimate: f64,
    /// When it was queued (its wait is `now - enqueued`).
    pub(crate) enqueued: Instant,
}

impl Started {
    /// The class it ran for (background work has none).
    pub(crate) fn class(&self) -> Option<ClassId> {
        self.client.map(|c| c.class)
    }
}

/// Jobs queued and running (queued, running).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Live jobs by class (`[class][0]` cheap, `[class][1]` heavy).
    pub(crate) live: Vec<[(u64, u64); 2]>,
    /// Background jobs.
    pub(crate) background: (u64, u64),
}

/// The scheduler's state.
pub(crate) struct Fair<J> {
    classes: Vec<(ClassRule, Use)>,
    clients: HashMap<ClientKey, Client<J>>,
    /// Clients with a queued live job, in no order.
    waiting: Vec<ClientKey>,
    background: VecDeque<Entry<J>>,
    background_running: usize,
    background_max: usize,
    /// Live jobs running, by class and lane (cheap, heavy).
    running: Vec<[u64; 2]>,
    /// Live jobs queued or running, and the most there may be.
    live: usize,
    capacity: usize,
    seq: u64,
}

impl<J> Fair<J> {
    /// A scheduler for `classes` (indexed by [`ClassId`]), at most `capacity` live jobs queued or
    /// running, at most `background_max` background jobs running.
    pub(crate) fn new(classes: &[ClassRule], capacity: usize, background_max: usize) -> Fair<J> {
        let now = Instant::now();
        Fair {
            classes: classes.iter().map(|c| (*c, Use::new(now))).collect(),
            clients: HashMap::new(),
            waiting: Vec::new(),
            background: VecDeque::new(),
            background_running: 0,
            background_max: background_max.max(1),
            running: vec![[0; 2]; classes.len().max(1)],
            live: 0,
            capacity: capacity.max(1),
            seq: 0,
        }
    }

    fn rule(&self, class: ClassId) -> ClassRule {
        self.classes
            .get(class.0)
            .or_else(|| self.classes.first())
            .map_or(
                ClassRule {
                    share: 1.0,
                    cap: usize::MAX,
                },
                |(r, _)| *r,
            )
    }

    /// Queue `job`, or say why not. `estimate` is its expected render time in seconds. Also returns
    /// the job displaced to make room, if one was, with its client and lane: the caller refuses it
    /// with [`Refusal::Displaced`].
    pub(crate) fn submit(
        &mut self,
        client: ClientKey,
        lane: Lane,
        estimate: f64,
        job: J,
        now: Instant,
    ) -> Result<Option<Displaced<J>>, (J, Refusal)> {
        self.seq += 1;
        let entry = Entry {
            seq: self.seq,
            lane,
            estimate,
            enqueued: now,
            job,
        };
        if lane == Lane::Background {
            self.background.push_back(entry);
            return Ok(None);
        }
        let cap = self.rule(client.class).cap;
        let mine = self
            .clients
            .get(&client)
            .map_or((0, 0), |c| (c.queue.len(), c.running));
        if mine.0 + mine.1 >= cap {
            return Err((entry.job, Refusal::OverCap));
        }
        let mut displaced = None;
        if self.live >= self.capacity {
            // Longest queue drop: the client with the most waiting pays, when that evens things
            // out (its queue is at least two longer than the newcomer's); else the newcomer does.
            let longest = self
                .waiting
                .iter()
                .filter_map(|k| self.clients.get(k).map(|c| (*k, c.queue.len())))
                .max_by_key(|(_, n)| *n);
            match longest {
                Some((victim, n)) if n >= mine.0 + 2 => {
                    displaced = self.take_newest(victim);
                }
                _ if mine.0 > 0 => return Err((entry.job, Refusal::Displaced)),
                _ => return Err((entry.job, Refusal::Busy)),
            }
            if displaced.is_none() {
                return Err((entry.job, Refusal::Busy));
            }
        }
        let c = self.clients.entry(client).or_insert_with(|| Client {
            used: Use::new(now),
            queue: VecDeque::new(),
            running: 0,
        });
        if c.queue.is_empty() {
            self.waiting.push(client);
        }
        c.queue.push_back(entry);
        self.live += 1;
        if self.clients.len() > MAX_CLIENTS || self.seq % FORGET_EVERY == 0 {
            self.forget(now);
        }
        Ok(displaced)
    }

    /// Remove `client`'s newest queued job.
    fn take_newest(&mut self, client: ClientKey) -> Option<Displaced<J>> {
        let c = self.clients.get_mut(&client)?;
        let e = c.queue.pop_back()?;
        if c.queue.is_empty() {
            self.waiting.retain(|k| *k != client);
        }
        self.live -= 1;
        Some(Displaced {
            job: e.job,
            client,
            lane: e.lane,
        })
    }

    /// The next job for a thread of `role`, if there is one it may run. While `reserved_idle`, a
    /// general thread leaves cheap renders to the idle reserved thread (it runs them at the higher
    /// priority, and the general thread stays free for heavy work).
    pub(crate) fn next(
        &mut self,
        role: Role,
        reserved_idle: bool,
        now: Instant,
    ) -> Option<Dispatch<J>> {
        if let Some(d) = self.next_live(role, reserved_idle, now) {
            return Some(d);
        }
        // Background work only on a general thread, and only when no live job waits for one.
        if role == Role::General
            && self.waiting.is_empty()
            && self.background_running < self.background_max
        {
            let e = self.background.pop_front()?;
            self.background_running += 1;
            return Some(Dispatch {
                started: Started {
                    client: None,
                    lane: Lane::Background,
                    estimate: e.estimate,
                    enqueued: e.enqueued,
                },
                job: e.job,
            });
        }
        None
    }

    fn next_live(&mut self, role: Role, reserved_idle: bool, now: Instant) -> Option<Dispatch<J>> {
        let eligible = |lane: Lane| match role {
            Role::Reserved => lane == Lane::Cheap,
            Role::General => lane == Lane::Heavy || !reserved_idle,
        };
        // The class that used least of its share, then its client that used least, then the
        // oldest job (for ties, and within a client).
        let mut best: Option<(f64, f64, u64, ClientKey)> = None;
        for key in &self.waiting {
            let Some(c) = self.clients.get(key) else {
                continue;
            };
            let Some(head) = c.queue.iter().find(|e| eligible(e.lane)) else {
                continue;
            };
            let (rule, class_use) = self
                .classes
                .get(key.class.0)
                .map_or((1.0, 0.0), |(r, u)| (r.share, u.value(now)));
            let rank = (class_use / rule, c.used.value(now), head.seq, *key);
            let better = match &best {
                None => true,
                Some(b) => (rank.0, rank.1, rank.2) < (b.0, b.1, b.2),
            };
            if better {
                best = Some(rank);
            }
        }
        let key = best?.3;
        let c = self.clients.get_mut(&key)?;
        let at = c.queue.iter().position(|e| eligible(e.lane))?;
        let e = c.queue.remove(at)?;
        if c.queue.is_empty() {
            self.waiting.retain(|k| *k != key);
        }
        c.running += 1;
        c.used.add(e.estimate, now);
        if let Some(r) = self.running.get_mut(key.class.0) {
            r[e.lane.live_index()] += 1;
        }
        if let Some((_, u)) = self.classes.get_mut(key.class.0) {
            u.add(e.estimate, now);
        }
        Some(Dispatch {
            started: Started {
                client: Some(key),
                lane: e.lane,
                estimate: e.estimate,
                enqueued: e.enqueued,
            },
            job: e.job,
        })
    }

    /// A job ended after running `took`: its client is charged the difference from its estimate.
    pub(crate) fn finish(&mut self, started: Started, took: Duration, now: Instant) {
        let Some(key) = started.client else {
            self.background_running = self.background_running.saturating_sub(1);
            return;
        };
        self.live = self.live.saturating_sub(1);
        if let Some(r) = self.running.get_mut(key.class.0) {
            let n = &mut r[started.lane.live_index()];
            *n = n.saturating_sub(1);
        }
        let correction = took.as_secs_f64() - started.estimate;
        if let Some(c) = self.clients.get_mut(&key) {
            c.running = c.running.saturating_sub(1);
            c.used.add(correction, now);
        }
        if let Some((_, u)) = self.classes.get_mut(key.class.0) {
            u.add(correction, now);
        }
    }

    /// Forget idle clients whose use has decayed to nothing, and past [`MAX_CLIENTS`] the least
    /// used idle ones.
    fn forget(&mut self, now: Instant) {
        self.clients.retain(|_, c| {
            c.running > 0 || !c.queue.is_empty() || c.used.value(now) >= FORGET_BELOW
        });
        if self.clients.len() > MAX_CLIENTS {
            let mut idle: Vec<(f64, ClientKey)> = self
                .clients
                .iter()
                .filter(|(_, c)| c.running == 0 && c.queue.is_empty())
                .map(|(k, c)| (c.used.value(now), *k))
                .collect();
            idle.sort_by(|a, b| a.0.total_cmp(&b.0));
            let excess = self.clients.len() - MAX_CLIENTS / 2;
            for (_, k) in idle.into_iter().take(excess) {
                self.clients.remove(&k);
            }
        }
    }

    /// Every queued job, taken out (at shutdown).
    pub(crate) fn drain(&mut self) -> Vec<J> {
        let mut out: Vec<J> = self.background.drain(..).map(|e| e.job).collect();
        for c in self.clients.values_mut() {
            self.live -= c.queue.len();
            out.extend(c.queue.drain(..).map(|e| e.job));
        }
        self.waiting.clear();
        out
    }

    /// Jobs queued and running: live ones by class and lane (cheap, heavy), and background ones.
    pub(crate) fn counts(&self) -> Counts {
        let mut live: Vec<[(u64, u64); 2]> = self
            .running
            .iter()
            .map(|r| [(0, r[0]), (0, r[1])])
            .collect();
        for key in &self.waiting {
            let (Some(c), Some(row)) = (self.clients.get(key), live.get_mut(key.class.0)) else {
                continue;
            };
            for e in &c.queue {
                row[e.lane.live_index()].0 += 1;
            }
        }
        Counts {
            live,
            background: (self.background.len() as u64, self.background_running as u64),
        }
    }

    /// Whether any job waits for a thread, in any lane.
    pub(crate) fn has_queued(&self) -> bool {
        !self.waiting.is_empty() || !self.background.is_empty()
    }

    /// Jobs queued or running in every lane.
    pub(crate) fn pending(&self) -> usize {
        self.live + self.background.len() + self.background_running
    }

    /// Clients remembered (for the tests of forgetting).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn key(n: u8, class: usize) -> ClientKey {
        ClientKey {
            addr: IpAddr::V4(Ipv4Addr::new(10, n, 0, 0)),
            class: ClassId(class),
        }
    }

    fn fair(capacity: usize) -> Fair<(u8, u32)> {
        let rule = ClassRule {
            share: 1.0,
            cap: 1000,
        };
        Fair::new(&[rule], capacity, 1)
    }

    /// Run `n` dispatches on `role` threads, each finishing after `took`; the jobs in order.
    fn drain_in_order(
        f: &mut Fair<(u8, u32)>,
        role: Role,
        took: Duration,
        now: &mut Instant,
    ) -> Vec<(u8, u32)> {
        let mut out = Vec::new();
        while let Some(d) = f.next(role, false, *now) {
            out.push(d.job);
            *now += took;
            f.finish(d.started, took, *now);
        }
        out
    }

    #[test]
    fn a_client_with_one_job_goes_before_a_long_backlog() {
        let mut f = fair(10_000);
        let mut now = Instant::now();
        for i in 0..100 {
            assert!(f.submit(key(1, 0), Lane::Heavy, 0.5, (1, i), now).is_ok());
        }
        // The harvester has been running a while.
        for _ in 0..5 {
            let d = f.next(Role::General, false, now).expect("a job");
            now += Duration::from_millis(500);
            f.finish(d.started, Duration::from_millis(500), now);
        }
        assert!(f.submit(key(2, 0), Lane::Heavy, 0.5, (2, 0), now).is_ok());
        let d = f.next(Role::General, false, now).expect("a job");
        assert_eq!(d.job, (2, 0), "the newcomer's only job runs next");
    }

    #[test]
    fn clients_take_turns_whatever_their_backlog() {
        let mut f = fair(10_000);
        let mut now = Instant::now();
        for i in 0..60 {
            f.submit(key(1, 0), Lane::Heavy, 0.1, (1, i), now).ok();
        }
        for i in 0..6 {
            f.submit(key(2, 0), Lane::Heavy, 0.1, (2, i), now).ok();
        }
        let order = drain_in_order(&mut f, Role::General, Duration::from_millis(100), &mut now);
        // Client 2's six jobs are done within the first twelve dispatches: one turn each.
        let last_of_2 = order.iter().rposition(|j| j.0 == 2).expect("client 2 ran");
        assert!(last_of_2 < 12, "client 2 finished at dispatch {last_of_2}");
        // And each client's jobs ran in the order they came.
        for c in [1u8, 2] {
            let seq: Vec<u32> = order.iter().filter(|j| j.0 == c).map(|j| j.1).collect();
            assert!(seq.windows(2).all(|w| w[0] < w[1]), "{c}: {seq:?}");
        }
        assert_eq!(order.len(), 66);
    }

    #[test]
    fn use_is_charged_by_time_taken() {
        // Client 1's renders take 10x as long as client 2's: client 2 gets about 10 turns for each
        // of client 1's while both have work.
        let mut f = fair(10_000);
        let mut now = Instant::now();
        for i in 0..50 {
            f.submit(key(1, 0), Lane::Heavy, 0.01, (1, i), now).ok();
            f.submit(key(2, 0), Lane::Heavy, 0.01, (2, i), now).ok();
        }
        let mut order = Vec::new();
        for _ in 0..33 {
            let d = f.next(Role::General, false, now).expect("a job");
            let took = if d.job.0 == 1 {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(10)
            };
            order.push(d.job.0);
            now += took;
            f.finish(d.started, took, now);
        }
        let ones = order.iter().filter(|c| **c == 1).count();
        assert!((2..=5).contains(&ones), "{order:?}");
    }

    /// `n` dispatches of 50 ms renders; how many went to class 0 and to class 1 (the job's tag).
    fn turns_by_class(f: &mut Fair<(u8, u32)>, n: usize, now: &mut Instant) -> [usize; 2] {
        let mut counts = [0usize; 2];
        for _ in 0..n {
            let d = f.next(Role::General, false, *now).expect("a job");
            counts[usize::from(d.job.0)] += 1;
            *now += Duration::from_millis(50);
            f.finish(d.started, Duration::from_millis(50), *now);
        }
        counts
    }

    #[test]
    fn shares_weight_the_classes() {
        // Class 1 (share 3) against class 0 (share 1), equal renders: about 3 to 1.
        let rules = [
            ClassRule {
                share: 1.0,
                cap: 1000,
            },
            ClassRule {
                share: 3.0,
                cap: 1000,
            },
        ];
        let mut f: Fair<(u8, u32)> = Fair::new(&rules, 10_000, 1);
        let mut now = Instant::now();
        for i in 0..200 {
            f.submit(key(1, 0), Lane::Heavy, 0.05, (0, i), now).ok();
            f.submit(key(2, 1), Lane::Heavy, 0.05, (1, i), now).ok();
        }
        let counts = turns_by_class(&mut f, 100, &mut now);
        assert!((70..=80).contains(&counts[1]), "{counts:?}");
        // Many clients in the low class together still get the class's share, not one per client.
        let mut f: Fair<(u8, u32)> = Fair::new(&rules, 10_000, 1);
        for n in 0..20 {
            for i in 0..10 {
                f.submit(key(100 + n, 0), Lane::Heavy, 0.05, (0, i), now)
                    .ok();
            }
        }
        for i in 0..200 {
            f.submit(key(2, 1), Lane::Heavy, 0.05, (1, i), now).ok();
        }
        let counts = turns_by_class(&mut f, 100, &mut now);
        assert!((70..=80).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn caps_refuse_at_once_and_count_running_renders() {
        let rules = [ClassRule { share: 1.0, cap: 3 }];
        let mut f: Fair<u32> = Fair::new(&rules, 100, 1);
        let now = Instant::now();
        let k = key(1, 0);
        for i in 0..3 {
            assert!(f.submit(k, Lane::Heavy, 0.1, i, now).is_ok());
        }
        assert!(matches!(
            f.submit(k, Lane::Cheap, 0.1, 9, now),
            Err((9, Refusal::OverCap))
        ));
        // Running counts too: one dispatched is still one of the three.
        let d = f.next(Role::General, false, now).expect("a job");
        assert!(matches!(
            f.submit(k, Lane::Heavy, 0.1, 9, now),
            Err((9, Refusal::OverCap))
        ));
        f.finish(d.started, Duration::from_millis(100), now);
        assert!(f.submit(k, Lane::Heavy, 0.1, 3, now).is_ok());
        // Another client is not affected.
        assert!(f.submit(key(2, 0), Lane::Heavy, 0.1, 4, now).is_ok());
    }

    #[test]
    fn reserved_threads_run_only_cheap_renders() {
        let mut f = fair(100);
        let now = Instant::now();
        f.submit(key(1, 0), Lane::Heavy, 1.0, (1, 0), now).ok();
        f.submit(key(1, 0), Lane::Background, 1.0, (9, 0), now).ok();
        assert!(
            f.next(Role::Reserved, false, now).is_none(),
            "heavy and background wait"
        );
        f.submit(key(2, 0), Lane::Cheap, 0.001, (2, 0), now).ok();
        assert_eq!(
            f.next(Role::Reserved, false, now).map(|d| d.job),
            Some((2, 0))
        );
        // A cheap job behind a heavy one of the same client is still found.
        f.submit(key(1, 0), Lane::Cheap, 0.001, (1, 1), now).ok();
        assert_eq!(
            f.next(Role::Reserved, false, now).map(|d| d.job),
            Some((1, 1))
        );
    }

    #[test]
    fn general_threads_leave_cheap_renders_to_an_idle_reserved_thread() {
        let mut f = fair(100);
        let now = Instant::now();
        f.submit(key(2, 0), Lane::Cheap, 0.001, (2, 0), now).ok();
        assert!(f.next(Role::General, true, now).is_none());
        f.submit(key(1, 0), Lane::Heavy, 1.0, (1, 0), now).ok();
        assert_eq!(
            f.next(Role::General, true, now).map(|d| d.job),
            Some((1, 0))
        );
        assert_eq!(
            f.next(Role::Reserved, true, now).map(|d| d.job),
            Some((2, 0))
        );
    }

    #[test]
    fn work_conserving_general_threads_take_every_lane() {
        let mut f = fair(100);
        let now = Instant::now();
        // No viewer waiting: a harvester's heavy renders use every general thread.
        for i in 0..3 {
            f.submit(key(1, 0), Lane::Heavy, 1.0, (1, i), now).ok();
        }
        let a = f.next(Role::General, false, now).map(|d| d.job);
        let b = f.next(Role::General, false, now).map(|d| d.job);
        assert_eq!((a, b), (Some((1, 0)), Some((1, 1))));
        // Cheap work goes to a general thread too when one is free.
        let mut f = fair(100);
        f.submit(key(2, 0), Lane::Cheap, 0.001, (2, 0), now).ok();
        assert_eq!(
            f.next(Role::General, false, now).map(|d| d.job),
            Some((2, 0))
        );
    }

    #[test]
    fn background_runs_only_when_no_live_render_waits_and_within_its_limit() {
        let rules = [ClassRule {
            share: 1.0,
            cap: 100,
        }];
        let mut f: Fair<u32> = Fair::new(&rules, 100, 2);
        let now = Instant::now();
        for i in 0..5 {
            f.submit(key(0, 0), Lane::Background, 0.1, 100 + i, now)
                .ok();
        }
        f.submit(key(1, 0), Lane::Heavy, 0.1, 1, now).ok();
        assert_eq!(f.next(Role::General, false, now).map(|d| d.job), Some(1));
        let b1 = f.next(Role::General, false, now).expect("background");
        let b2 = f.next(Role::General, false, now).expect("background");
        assert_eq!((b1.job, b2.job), (100, 101));
        assert!(
            f.next(Role::General, false, now).is_none(),
            "at most two at once"
        );
        assert_eq!(f.pending(), 1 + 5);
        let counts = f.counts();
        assert_eq!(counts.background, (3, 2));
        assert_eq!(counts.live[0], [(0, 0), (0, 1)]);
        f.finish(b1.started, Duration::from_millis(10), now);
        // A live render that arrives now goes before the next background job.
        f.submit(key(1, 0), Lane::Heavy, 0.1, 2, now).ok();
        assert_eq!(f.next(Role::General, false, now).map(|d| d.job), Some(2));
        assert_eq!(f.next(Role::General, false, now).map(|d| d.job), Some(102));
    }

    #[test]
    fn a_full_queue_sheds_the_longest_backlog_first() {
        let mut f = fair(10);
        let now = Instant::now();
        for i in 0..10 {
            assert!(f.submit(key(1, 0), Lane::Heavy, 0.1, (1, i), now).is_ok());
        }
        // The viewer's tile displaces the harvester's newest render.
        match f.submit(key(2, 0), Lane::Cheap, 0.001, (2, 0), now) {
            Ok(Some(d)) => assert_eq!((d.job, d.client, d.lane), ((1, 9), key(1, 0), Lane::Heavy)),
            other => panic!("expected a displacement, got {:?}", other.map_err(|e| e.1)),
        }
        // The harvester itself, asking for more, is refused as the longest queue.
        assert!(matches!(
            f.submit(key(1, 0), Lane::Heavy, 0.1, (1, 10), now),
            Err((_, Refusal::Displaced))
        ));
        // Ten clients with one render each: a newcomer is refused as busy, nobody displaced.
        let mut f = fair(10);
        for n in 0..10 {
            assert!(f.submit(key(n, 0), Lane::Heavy, 0.1, (n, 0), now).is_ok());
        }
        assert!(matches!(
            f.submit(key(50, 0), Lane::Heavy, 0.1, (50, 0), now),
            Err((_, Refusal::Busy))
        ));
        assert_eq!(f.drain().len(), 10);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn use_decays_and_idle_clients_are_forgotten() {
        let t0 = Instant::now();
        let mut u = Use::new(t0);
        u.add(8.0, t0);
        let later = t0 + HALF_LIFE;
        assert!((u.value(later) - 4.0).abs() < 1e-9);
        assert!((u.value(later + HALF_LIFE) - 2.0).abs() < 1e-9);
        // A correction never leaves negative use.
        u.add(-100.0, later);
        assert_eq!(u.value(later), 0.0);

        let mut f = fair(10_000);
        let mut now = t0;
        for n in 0..50 {
            f.submit(key(n, 0), Lane::Heavy, 0.01, (n, 0), now).ok();
        }
        drain_in_order(&mut f, Role::General, Duration::from_millis(10), &mut now);
        assert_eq!(f.remembered(), 50);
        f.forget(now + HALF_LIFE * 20);
        assert_eq!(f.remembered(), 0);
    }
}
