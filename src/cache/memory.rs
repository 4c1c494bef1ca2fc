//! The in-process store: moka, bounded by bytes, with a small ledger of write generations so
//! that answers land in the order the upstream produced them.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio::time::Instant;

use futures_util::future::BoxFuture;

use super::{Entry, Filled, Key, Store, Ticket, Usage};
use crate::config::CacheConfig;

/// How long a write's generation is remembered. Any read whose ticket is older than this when it
/// tries to fill is refused outright (see [`Order::floor`]); no read lives that long (its wait
/// and its upstream call are both bounded far below).
const WRITE_MEMORY: Duration = Duration::from_secs(30 * 60);

/// The order of writes: which generation last touched each key.
#[derive(Debug, Default)]
struct Order {
    /// The next ticket; every write moves it on.
    next: u64,
    /// The generation of the last write per incident key, with when it happened.
    writes: HashMap<Key, (u64, Instant)>,
    /// The generation of the last list invalidation.
    lists: u64,
    /// Tickets below this are void: a write they might predate was forgotten.
    floor: u64,
}

impl Order {
    fn void(&self, key: &Key, ticket: Ticket) -> bool {
        if ticket.0 < self.floor {
            return true;
        }
        match key {
            Key::List(_) | Key::GraphList(_) => self.lists > ticket.0,
            Key::Incident(_) => self.writes.get(key).is_some_and(|(g, _)| *g > ticket.0),
        }
    }

    fn bump(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn forget_old(&mut self, now: Instant) {
        if self.writes.len() < 1024 {
            return;
        }
        let mut floor = self.floor;
        self.writes.retain(|_, (g, at)| {
            let keep = now.saturating_duration_since(*at) < WRITE_MEMORY;
            if !keep {
                floor = floor.max(*g);
            }
            keep
        });
        self.floor = floor;
    }
}

/// The in-process store.
pub struct MokaStore {
    cache: moka::sync::Cache<Key, Arc<Entry>>,
    order: Mutex<Order>,
}

/// Per-entry lifetime in moka: freshness plus the stale-if-error allowance. Incidents may be kept
/// fresh longer than their TTL (by the incident sync), so they live at least `incident_lifetime`.
struct Lifetime {
    stale_if_error: Duration,
    incident_lifetime: Duration,
}

impl Lifetime {
    fn of(&self, k: &Key, v: &Entry) -> Duration {
        let fresh = match k {
            Key::Incident(_) => v.ttl.max(self.incident_lifetime),
            Key::List(_) | Key::GraphList(_) => v.ttl,
        };
        fresh + self.stale_if_error
    }
}

impl moka::Expiry<Key, Arc<Entry>> for Lifetime {
    fn expire_after_create(&self, k: &Key, v: &Arc<Entry>, _: std::time::Instant) -> Option<Duration> {
        Some(self.of(k, v))
    }

    fn expire_after_update(
        &self,
        k: &Key,
        v: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.of(k, v))
    }
}

/// Bytes an entry costs: its body plus a fixed overhead for the key, headers and bookkeeping.
fn weight(key: &Key, entry: &Entry) -> u32 {
    let key_len = match key {
        Key::Incident(_) => 8,
        Key::List(q) | Key::GraphList(q) => q.len(),
    };
    u32::try_from(entry.bodies.byte_len() + key_len + 160).unwrap_or(u32::MAX)
}

impl MokaStore {
    /// `incident_lifetime`: how long an incident may stay fresh at most (its TTL, or the sync's
    /// `max_entry_age` when the sync runs).
    pub fn new(config: &CacheConfig, incident_lifetime: Duration) -> MokaStore {
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &Key, v: &Arc<Entry>| weight(k, v))
            .expire_after(Lifetime {
                stale_if_error: config.stale_if_error,
                incident_lifetime,
            })
            .support_invalidation_closures()
            .build();
        MokaStore {
            cache,
            order: Mutex::new(Order::default()),
        }
    }
}

impl Store for MokaStore {
    fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    fn ticket(&self) -> BoxFuture<'_, Ticket> {
        Box::pin(std::future::ready(self.ticket_now()))
    }

    fn fill(&self, key: Key, entry: Arc<Entry>, ticket: Ticket) -> BoxFuture<'_, Filled> {
        Box::pin(std::future::ready(self.fill_now(key, entry, ticket)))
    }

    fn write(&self, key: Key, entry: Option<Arc<Entry>>) -> BoxFuture<'_, ()> {
        self.write_now(key, entry);
        Box::pin(std::future::ready(()))
    }

    fn invalidate_lists(&self) -> BoxFuture<'_, ()> {
        self.invalidate_lists_now();
        Box::pin(std::future::ready(()))
    }

    fn forget_all(&self) -> BoxFuture<'_, ()> {
        {
            let mut order = self.order.lock();
            order.floor = order.bump();
            self.cache.invalidate_all();
        }
        Box::pin(std::future::ready(()))
    }

    fn usage(&self) -> Usage {
        self.cache.run_pending_tasks();
        Usage {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
        }
    }
}

/// The same operations, synchronously (the trait's futures are these, already resolved).
impl MokaStore {
    pub fn ticket_now(&self) -> Ticket {
        Ticket(self.order.lock().next)
    }

    pub fn fill_now(&self, key: Key, entry: Arc<Entry>, ticket: Ticket) -> Filled {
        {
            // Check and insert under one lock: a write cannot slip in between.
            let order = self.order.lock();
            if order.void(&key, ticket) {
                return Filled::Superseded;
            }
            if self.cache.get(&key).is_some_and(|old| old.is_newer_than(&entry)) {
                return Filled::Superseded;
            }
            self.cache.insert(key.clone(), entry);
        }
        // moka admits (or declines) in its housekeeping; run it so `Cache-Status: stored` is true.
        self.cache.run_pending_tasks();
        if self.cache.contains_key(&key) {
            Filled::Stored
        } else {
            Filled::Declined
        }
    }

    pub fn write_now(&self, key: Key, entry: Option<Arc<Entry>>) {
        let mut order = self.order.lock();
        let now = Instant::now();
        order.forget_old(now);
        let generation = order.bump();
        order.writes.insert(key.clone(), (generation, now));
        match entry {
            // Two concurrent updates: the one describing the later state stays.
            Some(e) if !self.cache.get(&key).is_some_and(|old| old.is_newer_than(&e)) => {
                self.cache.insert(key, e);
            }
            Some(_) => {}
            None => self.cache.invalidate(&key),
        }
    }

    pub fn invalidate_lists_now(&self) {
        let mut order = self.order.lock();
        order.lists = order.bump();
        // Only fails when closures are not enabled, which the builder does.
        let _ = self.cache.invalidate_entries_if(|k, _| k.is_list());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    fn entry(len: usize, ttl: u64) -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            bodies: Arc::new(crate::body::Bodies::same(Bytes::from(vec![b'x'; len]))),
            content_type: HeaderValue::from_static("application/json"),
            stored_at: Instant::now(),
            ttl: Duration::from_secs(ttl),
            last_update: None,
        })
    }

    #[test]
    fn bounded_by_bytes() {
        let cfg = CacheConfig {
            max_bytes: 1024 * 1024,
            ..CacheConfig::default()
        };
        let store = MokaStore::new(&cfg, cfg.ttl);
        for id in 0..100 {
            fill(&store, Key::Incident(id), entry(100 * 1024, 60));
        }
        let huge = entry(2 * 1024 * 1024, 60);
        assert_eq!(fill(&store, Key::Incident(1000), huge), Filled::Declined);
        let u = store.usage();
        assert!(u.bytes <= cfg.max_bytes, "{u:?}");
        assert!(u.entries <= 10, "{u:?}");
    }

    fn fill(store: &MokaStore, key: Key, e: Arc<Entry>) -> Filled {
        let t = store.ticket_now();
        store.fill_now(key, e, t)
    }

    fn versioned(last_update: i128) -> Arc<Entry> {
        Arc::new(Entry {
            last_update: Some(last_update),
            ..Arc::try_unwrap(entry(10, 60)).unwrap()
        })
    }

    #[test]
    fn invalidating_lists_keeps_incidents() {
        let store = MokaStore::new(&CacheConfig::default(), Duration::from_secs(60));
        fill(&store, Key::Incident(1), entry(10, 60));
        fill(&store, Key::List("$top=5".into()), entry(10, 60));
        store.invalidate_lists_now();
        store.usage();
        assert!(store.get(&Key::Incident(1)).is_some());
        assert!(store.get(&Key::List("$top=5".into())).is_none());
    }

    #[test]
    fn a_read_that_started_before_a_write_cannot_store_its_answer() {
        let store = MokaStore::new(&CacheConfig::default(), Duration::from_secs(60));
        let before = store.ticket_now();
        store.write_now(Key::Incident(1), Some(versioned(20)));
        assert_eq!(
            store.fill_now(Key::Incident(1), versioned(10), before),
            Filled::Superseded
        );
        assert_eq!(store.get(&Key::Incident(1)).unwrap().last_update, Some(20));
        // Lists: a list flight older than the invalidation stores nothing either.
        let list_ticket = store.ticket_now();
        store.invalidate_lists_now();
        assert_eq!(
            store.fill_now(Key::List("q".into()), entry(1, 60), list_ticket),
            Filled::Superseded
        );
        let after = store.ticket_now();
        assert_eq!(
            store.fill_now(Key::List("q".into()), entry(1, 60), after),
            Filled::Stored
        );
    }

    #[test]
    fn an_older_answer_never_replaces_a_newer_one() {
        let store = MokaStore::new(&CacheConfig::default(), Duration::from_secs(60));
        assert_eq!(fill(&store, Key::Incident(1), versioned(30)), Filled::Stored);
        assert_eq!(fill(&store, Key::Incident(1), versioned(20)), Filled::Superseded);
        // Two concurrent updates finishing in the wrong order: the later state stays.
        store.write_now(Key::Incident(1), Some(versioned(50)));
        store.write_now(Key::Incident(1), Some(versioned(40)));
        assert_eq!(store.get(&Key::Incident(1)).unwrap().last_update, Some(50));
        assert_eq!(
            fill(&store, Key::Incident(1), versioned(50)),
            Filled::Stored,
            "same state"
        );
    }

    #[tokio::test]
    async fn forgetting_all_drops_every_entry_and_voids_earlier_tickets() {
        let store = MokaStore::new(&CacheConfig::default(), Duration::from_secs(60));
        fill(&store, Key::Incident(1), entry(10, 60));
        fill(&store, Key::List("q".into()), entry(10, 60));
        let before = store.ticket_now();
        store.forget_all().await;
        store.usage();
        assert!(store.get(&Key::Incident(1)).is_none());
        assert!(store.get(&Key::List("q".into())).is_none());
        assert_eq!(
            store.fill_now(Key::Incident(2), entry(1, 60), before),
            Filled::Superseded,
            "a read that started before may have missed a write"
        );
        assert_eq!(fill(&store, Key::Incident(2), entry(1, 60)), Filled::Stored);
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_then_stale_window() {
        let e = entry(1, 60);
        let t0 = e.stored_at;
        assert_eq!(e.fresh_for(t0 + Duration::from_secs(20)), Some(Duration::from_secs(40)));
        assert_eq!(e.fresh_for(t0 + Duration::from_secs(60)), None);
        assert!(e.usable_stale(t0 + Duration::from_secs(600), Duration::from_secs(600)));
        assert!(!e.usable_stale(t0 + Duration::from_secs(660), Duration::from_secs(600)));
    }
}
