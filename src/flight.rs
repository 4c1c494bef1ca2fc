//! Collapsing concurrent misses: one upstream call per key, however many callers ask at once.
//!
//! The first caller for a key starts the work as a shared future; later callers join it. The map
//! holds only a weak handle, so when every caller has gone away the work is dropped (and with it
//! any queued budget slot, which is then given back). The entry removes itself from the map when
//! the work finishes or is dropped.
//!
//! Each flight also carries a small value `M` set by its starter (the proxy keeps a watch of the
//! flight's budget slot there, so each caller can apply its own wait). [`Flights::forget_if`] detaches
//! a flight from its key: those already in it keep it, newcomers start afresh (after a write, no
//! reader that arrives later may join a read that started before it).

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
};

use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};
use parking_lot::Mutex;

type Map<K, V, M> = Mutex<HashMap<K, (u64, WeakShared<BoxFuture<'static, V>>, M)>>;

/// In-flight work by key.
pub struct Flights<K, V: Clone, M = ()> {
    map: Arc<Map<K, V, M>>,
    next: AtomicU64,
}

/// A flight as its callers see it.
pub struct Flight<V: Clone, M> {
    pub work: Shared<BoxFuture<'static, V>>,
    pub meta: M,
    /// True when joined rather than started.
    pub joined: bool,
}

impl<K, V, M> Default for Flights<K, V, M>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    M: Clone + Send + 'static,
{
    fn default() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
            next: AtomicU64::new(0),
        }
    }
}

/// Removes a flight's map entry when its work completes or is dropped.
struct Unregister<K: Eq + Hash, V: Clone, M> {
    map: Weak<Map<K, V, M>>,
    key: Option<K>,
    generation: u64,
}

impl<K: Eq + Hash, V: Clone, M> Drop for Unregister<K, V, M> {
    fn drop(&mut self) {
        let (Some(map), Some(key)) = (self.map.upgrade(), self.key.take()) else {
            return;
        };
        let mut map = map.lock();
        if map.get(&key).is_some_and(|(g, _, _)| *g == self.generation) {
            map.remove(&key);
        }
    }
}

impl<K, V, M> Flights<K, V, M>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    M: Clone + Send + 'static,
{
    /// Joins the flight for `key`, or starts one with `start()`, which returns the work and the
    /// flight's value.
    pub fn join_or_start<F>(&self, key: K, start: impl FnOnce() -> (F, M)) -> Flight<V, M>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut map = self.map.lock();
        if let Some((work, meta)) = map
            .get(&key)
            .and_then(|(_, weak, meta)| Some((weak.upgrade()?, meta.clone())))
        {
            return Flight {
                work,
                meta,
                joined: true,
            };
        }
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let unregister = Unregister {
            map: Arc::downgrade(&self.map),
            key: Some(key.clone()),
            generation,
        };
        let (work, meta) = start();
        let boxed: BoxFuture<'static, V> = Box::pin(async move {
            let _unregister = unregister;
            work.await
        });
        let shared = boxed.shared();
        if let Some(weak) = shared.downgrade() {
            map.insert(key, (generation, weak, meta.clone()));
        }
        Flight {
            work: shared,
            meta,
            joined: false,
        }
    }

    /// Detaches every flight whose key matches: its callers keep it, newcomers start a new one.
    pub fn forget_if(&self, mut matches: impl FnMut(&K) -> bool) {
        self.map.lock().retain(|k, _| !matches(k));
    }

    /// Keys with work in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run() {
        let flights: Arc<Flights<u32, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = vec![];
        for _ in 0..100 {
            let (flights, runs) = (flights.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                let flight = flights.join_or_start(7, || {
                    let work = async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        42
                    };
                    (work, ())
                });
                flight.work.await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "the finished flight unregistered itself");
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_work_is_dropped_and_the_next_caller_starts_afresh() {
        let flights: Flights<u32, u32> = Flights::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        struct OnDrop(Arc<AtomicUsize>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let d = dropped.clone();
        let flight = flights.join_or_start(1, || {
            let work = async move {
                let _g = OnDrop(d);
                std::future::pending::<u32>().await
            };
            (work, ())
        });
        assert!(!flight.joined);
        let mut fut = Box::pin(flight.work);
        assert!(futures_util::poll!(fut.as_mut()).is_pending());
        drop(fut); // the only caller went away
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty());
        let flight = flights.join_or_start(1, || (async { 5 }, ()));
        assert!(!flight.joined);
        assert_eq!(flight.work.await, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_flight_keeps_its_callers_but_takes_no_newcomers() {
        let flights: Flights<u32, u32> = Flights::default();
        let old = flights.join_or_start(1, || (async { 1 }, ()));
        flights.forget_if(|k| *k == 1);
        let new = flights.join_or_start(1, || (async { 2 }, ()));
        assert!(!new.joined, "a newcomer starts afresh");
        assert_eq!(old.work.await, 1);
        assert_eq!(new.work.await, 2);
    }
}
