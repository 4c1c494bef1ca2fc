//! What an upstream answer puts into the cache: a Get body is stored only if it is the incident
//! asked for, and every incident of a List page refreshes its own entry, in order (never over a
//! newer one, never after a write that started later). Used by the proxy's read path and by the
//! incident sync.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;

use crate::{
    cache::{Entry, Filled, Key, Store, Ticket},
    config::CacheConfig,
    outcome::json_content_type,
};

/// The fields of an incident the proxy checks before storing it.
#[derive(Deserialize)]
struct IncidentProbe {
    #[serde(rename = "incidentId")]
    incident_id: i64,
    #[serde(rename = "lastUpdateTime")]
    last_update_time: Option<String>,
}

/// Reads `lastUpdateTime` as unix nanoseconds.
pub fn parse_time(s: &str) -> Option<i128> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// A page of a List answer: how many incidents it held and the newest `lastUpdateTime` among them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Page {
    pub items: usize,
    pub newest: Option<i128>,
}

/// Writes upstream answers into the store.
pub struct Ingest {
    store: Arc<dyn Store>,
    config: CacheConfig,
}

impl Ingest {
    pub fn new(store: Arc<dyn Store>, config: CacheConfig) -> Ingest {
        Ingest { store, config }
    }

    /// A Get answer is stored only if it is the incident asked for. Returns its `lastUpdateTime`
    /// (`Some(None)` when the body has none), or `None` when the body is not that incident.
    pub fn check_incident(&self, id: i64, body: &[u8]) -> Option<Option<i128>> {
        match serde_json::from_slice::<IncidentProbe>(body) {
            Ok(p) if p.incident_id == id => Some(p.last_update_time.as_deref().and_then(parse_time)),
            _ => {
                tracing::warn!(
                    incident.id = id,
                    "upstream 200 body is not the requested incident; not cached"
                );
                None
            }
        }
    }

    /// Every incident in a List page refreshes its own cache entry (unless a newer one is cached
    /// or a write came after `ticket`), so a tool that lists then fetches each incident spends one
    /// call, not N+1. `sent_at` is when the List request left. `None` when the body is no page.
    pub async fn spread_list(&self, body: &[u8], sent_at: Instant, ticket: Ticket) -> Option<Page> {
        #[derive(Deserialize)]
        struct Value<'a> {
            #[serde(borrow)]
            value: Vec<&'a serde_json::value::RawValue>,
        }
        let page: Value = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!("upstream list body has no `value` array; not cached");
                return None;
            }
        };
        let mut out = Page {
            items: page.value.len(),
            newest: None,
        };
        // Parsed first, stored after: the borrowed page does not live across an await.
        let mut entries = Vec::with_capacity(page.value.len());
        for raw in page.value {
            let Ok(probe) = serde_json::from_str::<IncidentProbe>(raw.get()) else {
                continue;
            };
            let last_update = probe.last_update_time.as_deref().and_then(parse_time);
            out.newest = out.newest.max(last_update);
            let entry = Entry {
                status: StatusCode::OK,
                body: Bytes::copy_from_slice(raw.get().as_bytes()),
                content_type: json_content_type(),
                stored_at: sent_at,
                ttl: self.config.ttl,
                last_update,
            };
            entries.push((Key::Incident(probe.incident_id), Arc::new(entry)));
        }
        for (key, entry) in entries {
            self.store.fill(key, entry, ticket).await;
        }
        Some(out)
    }

    /// Offers a read's own answer to the store.
    pub async fn fill(&self, key: Key, entry: Entry, ticket: Ticket) -> Filled {
        self.store.fill(key, Arc::new(entry), ticket).await
    }
}
