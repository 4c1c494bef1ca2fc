//! The response cache: what the upstream said, how long it stays fresh, and how long it may
//! still be served when the upstream fails.
//!
//! [`Store`] is the interface (a Redis tier shared by replicas is the planned second
//! implementation); [`MokaStore`] is the in-process store, bounded by bytes through a weigher.
//! Freshness is decided here with tokio's clock, not by moka's expiry: moka only drops entries
//! once even stale-if-error can no longer use them, and tests can drive freshness with paused time.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::config::CacheConfig;

/// What a cached answer is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// `GET /api/incidents/{id}`, by the parsed id (so `007` and `7` share an entry).
    Incident(i64),
    /// `GET /api/incidents?...`, by the canonical query string.
    List(Arc<str>),
}

/// One stored upstream answer (200 or 404), body byte for byte.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
    pub stored_at: Instant,
    /// Freshness lifetime from `stored_at`.
    pub ttl: Duration,
    /// The incident's `lastUpdateTime` (unix nanoseconds), when known: a list answer replaces an
    /// entry only with data at least as new.
    pub last_update: Option<i128>,
}

impl Entry {
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// Remaining freshness, `None` once expired.
    pub fn fresh_for(&self, now: Instant) -> Option<Duration> {
        let age = self.age(now);
        (age < self.ttl).then(|| self.ttl - age)
    }

    /// May still be served in place of an upstream error.
    pub fn usable_stale(&self, now: Instant, stale_if_error: Duration) -> bool {
        self.age(now) < self.ttl + stale_if_error
    }
}

/// Entry count and stored bytes (for metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
}

/// A cache backend.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &Key) -> Option<Arc<Entry>>;
    fn insert(&self, key: Key, entry: Arc<Entry>);
    fn remove(&self, key: &Key);
    /// Drops every cached list answer (after a write, so nobody reads their own write stale).
    fn remove_lists(&self);
    fn usage(&self) -> Usage;
}

/// The in-process store.
pub struct MokaStore {
    cache: moka::sync::Cache<Key, Arc<Entry>>,
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
            Key::List(_) => v.ttl,
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
        Key::List(q) => q.len(),
    };
    u32::try_from(entry.body.len() + key_len + 160).unwrap_or(u32::MAX)
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
        MokaStore { cache }
    }
}

impl Store for MokaStore {
    fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    fn insert(&self, key: Key, entry: Arc<Entry>) {
        self.cache.insert(key, entry);
    }

    fn remove(&self, key: &Key) {
        self.cache.invalidate(key);
    }

    fn remove_lists(&self) {
        // Only fails when closures are not enabled, which the builder above does.
        let _ = self.cache.invalidate_entries_if(|k, _| matches!(k, Key::List(_)));
    }

    fn usage(&self) -> Usage {
        self.cache.run_pending_tasks();
        Usage {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(len: usize, ttl: u64) -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            body: Bytes::from(vec![b'x'; len]),
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
            store.insert(Key::Incident(id), entry(100 * 1024, 60));
        }
        let u = store.usage();
        assert!(u.bytes <= cfg.max_bytes, "{u:?}");
        assert!(u.entries <= 10, "{u:?}");
    }

    #[test]
    fn remove_lists_keeps_incidents() {
        let store = MokaStore::new(&CacheConfig::default(), Duration::from_secs(60));
        store.insert(Key::Incident(1), entry(10, 60));
        store.insert(Key::List("$top=5".into()), entry(10, 60));
        store.remove_lists();
        store.usage();
        assert!(store.get(&Key::Incident(1)).is_some());
        assert!(store.get(&Key::List("$top=5".into())).is_none());
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
