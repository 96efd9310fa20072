//! Single flight: N concurrent requests for one missing derivative cause one render; the others wait for
//! it and receive the same result (the "collapsed" requests of `Cache-Status`).
//!
//! The leader's work runs in its own task, so a leader whose client disconnects does not strand the
//! followers; and the in-flight entry is removed by a drop guard, so even a panicking render releases
//! its followers (they see [`None`]) instead of leaving them waiting forever.

use crate::key::DerivativeKey;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Waiters<T> = Vec<oneshot::Sender<T>>;

/// The renders in flight, by key.
pub(crate) struct Flights<T> {
    inflight: Arc<Mutex<HashMap<DerivativeKey, Waiters<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Whether a caller ran the work or waited for another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// This caller started the work.
    Leader,
    /// This caller joined work already in flight.
    Follower,
}

struct Release<T> {
    inflight: Arc<Mutex<HashMap<DerivativeKey, Waiters<T>>>>,
    key: DerivativeKey,
}

impl<T> Release<T> {
    fn take(&self) -> Waiters<T> {
        self.inflight
            .lock()
            .map(|mut m| m.remove(&self.key).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl<T> Drop for Release<T> {
    fn drop(&mut self) {
        // Normal completion has already taken the waiters; after a panic this drops their senders.
        drop(self.take());
    }
}

impl<T: Clone + Send + 'static> Flights<T> {
    /// Number of keys in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is in flight.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Run `work` for `key` unless it is already running; either way, await its result. `None` means the
    /// work panicked.
    pub(crate) async fn run<F>(&self, key: DerivativeKey, work: F) -> (Option<T>, Role)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let role = match self.inflight.lock() {
            Ok(mut map) => match map.get_mut(&key) {
                Some(waiters) => {
                    waiters.push(tx);
                    Role::Follower
                }
                None => {
                    map.insert(key, vec![tx]);
                    Role::Leader
                }
            },
            Err(_) => return (None, Role::Leader),
        };
        if role == Role::Leader {
            let release = Release {
                inflight: Arc::clone(&self.inflight),
                key,
            };
            tokio::spawn(async move {
                let out = work.await;
                for waiter in release.take() {
                    let _ = waiter.send(out.clone());
                }
            });
        }
        (rx.await.ok(), role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(n: u8) -> DerivativeKey {
        DerivativeKey::from_hex(&format!("{n:02x}").repeat(32)).unwrap_or_else(|| unreachable!())
    }

    #[tokio::test]
    async fn one_run_many_waiters_and_panics_release() {
        let flights = Arc::new(Flights::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let (f, r) = (Arc::clone(&flights), Arc::clone(&runs));
            handles.push(tokio::spawn(async move {
                f.run(key(1), async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    7
                })
                .await
            }));
        }
        let mut leaders = 0;
        for h in handles {
            let (v, role) = h.await.unwrap_or((None, Role::Follower));
            assert_eq!(v, Some(7));
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!((runs.load(Ordering::SeqCst), leaders), (1, 1));
        assert!(flights.is_empty());

        let (v, _) = flights.run(key(2), async { panic!("render bug") }).await;
        assert_eq!(v, None);
        assert!(flights.is_empty(), "a panic releases the key");
        assert_eq!(flights.run(key(2), async { 3 }).await.0, Some(3));
    }
}
