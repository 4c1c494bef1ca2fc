//! What an upstream answer puts into the cache: a Get body is stored only if it is the incident
//! asked for, and every incident of a List page refreshes its own entry, in order (never over a
//! newer one, never after a write that started later). Used by the proxy's read path and by the
//! incident sync.
//!
//! This is also where an answer is translated, once, into every view a caller may read
//! ([`Bodies`]): an incident from either upstream dialect becomes its Defender rendering and its
//! two Graph renderings (with and without alerts), so both facades share one entry per incident.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::{
    body::{Bodies, View},
    cache::{Entry, Filled, Key, Store, Ticket},
    config::CacheConfig,
    dialect::{self, incident, Dialect},
    outcome::json_content_type,
};

/// The fields of a Defender incident the proxy checks before storing it.
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

/// One incident, checked, with its renderings (the native one, the others on first read).
#[derive(Debug, Clone)]
pub struct Incident {
    pub id: i64,
    /// `lastUpdateTime` (Graph: `lastUpdateDateTime`) as unix nanoseconds.
    pub last_update: Option<i128>,
    pub bodies: Arc<Bodies>,
}

/// The fields of a Graph incident the proxy checks before storing it.
#[derive(Deserialize)]
struct GraphProbe {
    id: String,
    #[serde(rename = "lastUpdateDateTime")]
    last_update: Option<String>,
}

/// Checks one incident as the upstream sent it (`raw` is its JSON text). A Graph incident must
/// carry its alerts (`$expand=alerts`), or its Defender view would wrongly say it has none.
/// `None` when the text is no incident of that dialect. The other dialect's views are
/// translated when first read ([`Bodies::translated`]).
pub fn render_incident(upstream: Dialect, raw: &[u8]) -> Option<Incident> {
    let body = Bytes::copy_from_slice(raw);
    match upstream {
        Dialect::Defender => {
            let probe: IncidentProbe = serde_json::from_slice(raw).ok()?;
            Some(Incident {
                id: probe.incident_id,
                last_update: probe.last_update_time.as_deref().and_then(parse_time),
                bodies: Arc::new(Bodies::translated(View::Defender, body, from_defender)),
            })
        }
        Dialect::Graph => {
            let probe: GraphProbe = serde_json::from_slice(raw).ok()?;
            Some(Incident {
                id: graph_id(&probe.id)?,
                last_update: probe.last_update.as_deref().and_then(parse_time),
                bodies: Arc::new(Bodies::translated(View::GraphAlerts, body, from_graph)),
            })
        }
    }
}

/// A Defender incident in a Graph view.
fn from_defender(view: View, native: &Bytes) -> Option<Bytes> {
    let expand = match view {
        View::Defender => return Some(native.clone()),
        View::Graph => false,
        View::GraphAlerts => true,
    };
    let value: Value = serde_json::from_slice(native).ok()?;
    match incident::defender_to_graph_with(&value, expand) {
        Ok(g) => Some(to_bytes(&g)),
        Err(e) => {
            tracing::warn!(error = %e, "incident has no Graph rendering");
            None
        }
    }
}

/// A Graph incident (alerts expanded) in the Defender view or without its alerts.
fn from_graph(view: View, native: &Bytes) -> Option<Bytes> {
    let value: Value = serde_json::from_slice(native).ok()?;
    match view {
        View::GraphAlerts => Some(native.clone()),
        View::Graph => {
            let mut bare = value.as_object()?.clone();
            bare.remove("alerts");
            bare.remove("alerts@odata.context");
            Some(to_bytes(&Value::Object(bare)))
        }
        View::Defender => match incident::graph_to_defender(&value) {
            Ok(d) => Some(to_bytes(&d)),
            Err(e) => {
                tracing::warn!(error = %e, "incident has no Defender rendering");
                None
            }
        },
    }
}

/// An upstream error answer (a 404, say) in every view: the upstream's own envelope for its own
/// dialect, translated for the other (`request_id` becomes Defender's `target` or Graph's
/// `request-id`).
pub fn render_error(upstream: Dialect, status: StatusCode, body: &Bytes, request_id: &str) -> Bodies {
    let code = status.as_u16();
    match upstream {
        Dialect::Defender => {
            let date = dialect::error::graph_error_date(time::OffsetDateTime::now_utc());
            let graph = dialect::error::defender_error_to_graph(body, code, request_id, &date);
            Bodies::one(View::Defender, body.clone())
                .with(View::Graph, graph.clone())
                .with(View::GraphAlerts, graph)
        }
        Dialect::Graph => Bodies::one(View::Graph, body.clone())
            .with(View::GraphAlerts, body.clone())
            .with(
                View::Defender,
                dialect::error::graph_error_to_defender(body, code, request_id),
            ),
    }
}

/// A Graph incident id (a string of decimal digits) as Defender's number.
fn graph_id(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|n| *n > 0)
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// A list page of either dialect, as the upstream sent it.
pub struct PageItems {
    /// Each item's JSON text (both dialects keep them in `value`).
    pub items: Vec<Box<serde_json::value::RawValue>>,
    /// `@odata.count`, when the upstream gave it.
    pub count: Option<u64>,
    /// Whether the upstream says more follow (`@odata.nextLink`). A page may be shorter than
    /// asked and still not be the last, so "fewer than `$top`" alone never ends a listing.
    pub next: bool,
}

/// The items of a list page, its count and whether the upstream announced a next page.
pub fn page_items(body: &[u8]) -> Option<PageItems> {
    #[derive(Deserialize)]
    struct PageBody {
        value: Vec<Box<serde_json::value::RawValue>>,
        #[serde(rename = "@odata.count")]
        count: Option<u64>,
        #[serde(rename = "@odata.nextLink")]
        next: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<PageBody>(body) {
        Ok(p) => Some(PageItems {
            items: p.value,
            count: p.count,
            next: p.next.is_some(),
        }),
        Err(_) => {
            tracing::warn!("upstream list body has no `value` array; not cached");
            None
        }
    }
}

/// Writes upstream answers into the store.
pub struct Ingest {
    store: Arc<dyn Store>,
    config: CacheConfig,
    upstream: Dialect,
}

impl Ingest {
    pub fn new(store: Arc<dyn Store>, config: CacheConfig, upstream: Dialect) -> Ingest {
        Ingest {
            store,
            config,
            upstream,
        }
    }

    /// The dialect the upstream speaks.
    pub fn upstream(&self) -> Dialect {
        self.upstream
    }

    /// A Get answer is stored only if it is the incident asked for: it comes back rendered in
    /// every view, or `None` when the body is not that incident.
    pub fn check_incident(&self, id: i64, body: &[u8]) -> Option<Incident> {
        match render_incident(self.upstream, body) {
            Some(i) if i.id == id => Some(i),
            _ => {
                tracing::warn!(
                    incident.id = id,
                    "upstream 200 body is not the requested incident; not cached"
                );
                None
            }
        }
    }

    /// An entry for an incident fetched by a request sent at `sent_at`.
    pub fn incident_entry(&self, incident: Incident, sent_at: Instant) -> Entry {
        Entry {
            status: StatusCode::OK,
            bodies: incident.bodies,
            content_type: json_content_type(),
            stored_at: sent_at,
            ttl: self.config.ttl,
            last_update: incident.last_update,
        }
    }

    /// Every incident in a List page refreshes its own cache entry (unless a newer one is cached
    /// or a write came after `ticket`), so a tool that lists then fetches each incident spends one
    /// call, not N+1. `sent_at` is when the List request left. The incidents must be complete
    /// (a Graph page with its alerts expanded).
    /// Returns the page's figures and the entries offered (for a shared tier, which the caller
    /// fills with the same order rules).
    pub async fn spread(
        &self,
        incidents: Vec<Incident>,
        sent_at: Instant,
        ticket: Ticket,
    ) -> (Page, Vec<(Key, Arc<Entry>)>) {
        let mut out = Page {
            items: incidents.len(),
            newest: None,
        };
        let mut offered = Vec::with_capacity(incidents.len());
        for incident in incidents {
            out.newest = out.newest.max(incident.last_update);
            let key = Key::Incident(incident.id);
            let entry = Arc::new(self.incident_entry(incident, sent_at));
            self.store.fill(key.clone(), entry.clone(), ticket).await;
            offered.push((key, entry));
        }
        (out, offered)
    }

    /// A whole upstream List page (in the upstream's dialect, alerts included) spread into the
    /// per-incident entries. `None` when the body is no page.
    pub async fn spread_list(
        &self,
        body: &[u8],
        sent_at: Instant,
        ticket: Ticket,
    ) -> Option<(Page, Vec<(Key, Arc<Entry>)>)> {
        let items = page_items(body)?.items;
        let total = items.len();
        let incidents: Vec<Incident> = items
            .iter()
            .filter_map(|raw| render_incident(self.upstream, raw.get().as_bytes()))
            .collect();
        let (mut page, offered) = self.spread(incidents, sent_at, ticket).await;
        page.items = total;
        Some((page, offered))
    }

    /// Offers a read's own answer to the store.
    pub async fn fill(&self, key: Key, entry: Entry, ticket: Ticket) -> Filled {
        self.store.fill(key, Arc::new(entry), ticket).await
    }
}
