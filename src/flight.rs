//! Collapsing concurrent misses: one upstream call per key, however many callers ask at once.
//!
//! The first caller for a key starts the work as a shared future; later callers join it. The map
//! holds only a weak handle, so when every caller has gone away the work is dropped (and with it
//! any queued budget slot, which is then given back). The entry removes itself from the map when
//! the work finishes or is dropped.

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

type Map<K, V> = Mutex<HashMap<K, (u64, WeakShared<BoxFuture<'static, V>>)>>;

/// In-flight work by key.
pub struct Flights<K, V: Clone> {
    map: Arc<Map<K, V>>,
    next: AtomicU64,
}

impl<K, V> Default for Flights<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
            next: AtomicU64::new(0),
        }
    }
}

/// Removes a flight's map entry when its work completes or is dropped.
struct Unregister<K: Eq + Hash, V: Clone> {
    map: Weak<Map<K, V>>,
    key: Option<K>,
    generation: u64,
}

impl<K: Eq + Hash, V: Clone> Drop for Unregister<K, V> {
    fn drop(&mut self) {
        let (Some(map), Some(key)) = (self.map.upgrade(), self.key.take()) else {
            return;
        };
        let mut map = map.lock();
        if map.get(&key).is_some_and(|(g, _)| *g == self.generation) {
            map.remove(&key);
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the flight for `key`, or starts one with `start()`. Returns the shared work and
    /// whether it was joined (true) rather than started.
    pub fn join_or_start<F>(&self, key: K, start: impl FnOnce() -> F) -> (Shared<BoxFuture<'static, V>>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut map = self.map.lock();
        if let Some(shared) = map.get(&key).and_then(|(_, weak)| weak.upgrade()) {
            return (shared, true);
        }
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let unregister = Unregister {
            map: Arc::downgrade(&self.map),
            key: Some(key.clone()),
            generation,
        };
        let work = start();
        let boxed: BoxFuture<'static, V> = Box::pin(async move {
            let _unregister = unregister;
            work.await
        });
        let shared = boxed.shared();
        if let Some(weak) = shared.downgrade() {
            map.insert(key, (generation, weak));
        }
        (shared, false)
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
                let (fut, _) = flights.join_or_start(7, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    42
                });
                fut.await
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
        let (fut, joined) = flights.join_or_start(1, || async move {
            let _g = OnDrop(d);
            std::future::pending::<u32>().await
        });
        assert!(!joined);
        let mut fut = Box::pin(fut);
        assert!(futures_util::poll!(fut.as_mut()).is_pending());
        drop(fut); // the only caller went away
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty());
        let (fut, joined) = flights.join_or_start(1, || async { 5 });
        assert!(!joined);
        assert_eq!(fut.await, 5);
    }
}
