//! The request path after authentication: cache, then budget, then upstream, and back.
//!
//! This is where the policy lives: when a cached answer is good enough (`Proxy::freshness`),
//! when to wait for a slot, when a stale answer beats an error, and what a failed call means for
//! the caller. Reads are in `read` (collapsed flights in which each caller keeps its own wait),
//! writes in `write` (run to completion even if the caller leaves). Data flows one way: this
//! module calls the cache, the flights and the [`Exchange`]; none of them call back.

mod read;
mod write;

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

pub use crate::outcome::{Answer, CacheResult, Failure, Outcome};
use crate::{
    body::View,
    budget::{Caller, Refusal, RefuseReason, WindowStatus},
    cache::{Confirmations, Entry, Key, Store},
    config::CacheConfig,
    dialect::{update::WritePlan, Dialect},
    error::{retry_after_secs, ApiError},
    exchange::{CallError, Exchange},
    flight::Flights,
    ingest::Ingest,
    metrics::{RejectLabels, TenantMetrics},
    odata::{GraphListQuery, ListQuery},
    route::RouteKind,
    target::{Directives, Target},
    tier::{Invalidation, SharedCache},
    upstream::UpstreamError,
};

/// Per-request facts the proxy needs (all already validated).
#[derive(Debug, Clone)]
pub struct Ctx {
    pub request_id: String,
    /// Whose quota share the call draws on (fair queuing between consumers).
    pub caller: Caller,
    pub directives: Directives,
    /// How long this caller accepts to wait for an upstream slot.
    pub wait: Duration,
    /// The caller's place among the requests being worked on; given back when it starts waiting.
    pub work: WorkPermit,
}

/// A place under `server.max_concurrency`, held while a request is worked on and released
/// (for good) when it starts waiting for a budget slot or another caller's flight: the limit
/// bounds work in progress, not waiting, so queued callers never hold up others.
#[derive(Debug, Clone, Default)]
pub struct WorkPermit(Arc<parking_lot::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl WorkPermit {
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit) -> WorkPermit {
        WorkPermit(Arc::new(parking_lot::Mutex::new(Some(permit))))
    }

    /// Gives the place back (idempotent).
    pub fn release(&self) {
        self.0.lock().take();
    }
}

/// A servable entry's remaining freshness and its age (seconds since it was last known current).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fresh {
    ttl_left: Duration,
    age: Duration,
}

/// A Graph list page's cache key: the proxy's collection URL (its `@odata.nextLink`s point
/// there) and the canonical query.
fn graph_list_key(base: &str, query: &GraphListQuery) -> String {
    format!("{base}?{}", query.canonical())
}

/// How the proxy is set up.
#[derive(Debug, Clone)]
pub struct Policy {
    pub cache: CacheConfig,
    /// The longest any caller may wait for a slot (`budget.max_wait_cap`): a collapsed read
    /// waits this long at most, and each of its callers leaves at its own deadline.
    pub flight_wait: Duration,
}

/// The proxy's request path.
pub struct Proxy {
    policy: Policy,
    store: Arc<dyn Store>,
    exchange: Arc<Exchange>,
    ingest: Ingest,
    flights: Flights<read::FlightKey, Outcome, read::SlotReceiver>,
    /// Graph queries answered over a Defender upstream: their match sets, kept briefly.
    local_sets: read::LocalSets,
    metrics: TenantMetrics,
    /// When the incident sync runs: its confirmations extend incidents' freshness.
    confirmations: Option<Arc<Confirmations>>,
    /// The second tier shared by replicas (`shared.cache`), consulted inside a miss's flight.
    tier: Option<Arc<SharedCache>>,
}

impl Proxy {
    pub fn new(
        policy: Policy,
        upstream: Dialect,
        store: Arc<dyn Store>,
        exchange: Arc<Exchange>,
        metrics: TenantMetrics,
        confirmations: Option<Arc<Confirmations>>,
    ) -> Proxy {
        Proxy {
            ingest: Ingest::new(store.clone(), policy.cache.clone(), upstream),
            policy,
            store,
            exchange,
            flights: Flights::default(),
            local_sets: read::LocalSets::default(),
            metrics,
            confirmations,
            tier: None,
        }
    }

    /// Puts the shared tier behind the in-memory one.
    pub fn with_shared_cache(mut self, tier: Option<Arc<SharedCache>>) -> Proxy {
        self.tier = tier;
        self
    }

    /// Starts listening for other replicas' writes (when the shared tier is on): the listener
    /// and the task that applies what it hears to this replica's first tier and flights.
    pub fn spawn_shared_cache(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(tier) = self.tier.clone() else {
            return Vec::new();
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let listener = tier.listen(tx);
        let weak = Arc::downgrade(self);
        let applier = tokio::spawn(async move {
            while let Some(news) = rx.recv().await {
                let Some(proxy) = weak.upgrade() else { return };
                proxy.invalidated(news).await;
            }
        });
        vec![listener, applier]
    }

    /// Another replica's write (or a gap in what this replica heard): drop what it makes stale
    /// from the first tier, void older tickets, and let no newcomer join a read that started
    /// before it (as a local write does).
    async fn invalidated(&self, news: Invalidation) {
        match news {
            Invalidation::Incident(id) => {
                let key = Key::Incident(id);
                self.store.write(key.clone(), None).await;
                self.store.invalidate_lists().await;
                self.local_sets.clear();
                self.flights
                    .forget_if(|fk: &read::FlightKey| fk.key == key || fk.key.is_list());
            }
            Invalidation::All => {
                self.store.forget_all().await;
                self.local_sets.clear();
                self.flights.forget_if(|_| true);
            }
            Invalidation::Heard(generation) => {
                if let Some(tier) = &self.tier {
                    tier.acknowledge(generation).await;
                }
            }
        }
    }

    pub fn metrics(&self) -> &TenantMetrics {
        &self.metrics
    }

    /// The dialect the upstream speaks.
    pub fn upstream_api(&self) -> Dialect {
        self.ingest.upstream()
    }

    /// `GET /api/incidents/{id}` or `GET /v1.0/security/incidents/{id}`: one entry per incident
    /// for both facades, read in the caller's `view`.
    pub async fn get_incident(self: &Arc<Self>, id: i64, view: View, ctx: Ctx) -> Outcome {
        self.read(RouteKind::GetIncident, Key::Incident(id), view, ctx).await
    }

    /// `GET /api/incidents?...`, by the query's canonical form.
    pub async fn list_incidents(self: &Arc<Self>, query: &ListQuery, ctx: Ctx) -> Outcome {
        self.read(
            RouteKind::ListIncidents,
            Key::List(query.canonical().into()),
            View::Defender,
            ctx,
        )
        .await
    }

    /// `GET /v1.0/security/incidents?...`; `base` is the proxy's own collection URL, which
    /// `@odata.nextLink` points at.
    pub async fn list_graph(self: &Arc<Self>, query: &GraphListQuery, base: &str, ctx: Ctx) -> Outcome {
        let view = read::graph_view(query);
        let key = Key::GraphList(graph_list_key(base, query).into());
        self.read(RouteKind::ListIncidents, key, view, ctx).await
    }

    /// An update of incident `id` (either facade's PATCH, or a Graph comment POST), already
    /// translated into the upstream's dialect; the answer is rendered in the caller's `view`.
    pub async fn write(self: &Arc<Self>, id: i64, plan: WritePlan, view: View, ctx: Ctx) -> Outcome {
        self.update(id, plan, view, ctx).await
    }

    /// The cache key a read of `target` is stored under (`None` for writes): the one place keys
    /// are made, for the HTTP layer's hit path and for this module.
    pub fn cache_key(target: &Target) -> Option<Key> {
        match target {
            Target::GetIncident(id) | Target::GraphGet { id, .. } => Some(Key::Incident(*id)),
            Target::ListIncidents(q) => Some(Key::List(q.canonical().into())),
            Target::GraphList { query, base } => Some(Key::GraphList(graph_list_key(base, query).into())),
            Target::UpdateIncident(_) | Target::GraphUpdate(_) | Target::GraphComment(_) => None,
        }
    }

    /// A fresh hit, in one caller's view (`None` when the entry has no such rendering).
    fn hit(entry: &Entry, fresh: Fresh, view: View) -> Option<Answer> {
        Some(Answer {
            status: entry.status,
            body: entry.bodies.get(view)?.clone(),
            bodies: None,
            content_type: entry.content_type.clone(),
            cache: CacheResult::Hit {
                ttl: fresh.ttl_left.as_secs(),
            },
            age: Some(fresh.age),
            budget: None,
            queued: Duration::ZERO,
            upstream_status: None,
        })
    }

    /// A fresh hit for everyone sharing a flight (each picks its view).
    fn shared_hit(entry: &Entry, fresh: Fresh) -> Answer {
        Answer {
            status: entry.status,
            body: bytes::Bytes::new(),
            bodies: Some(entry.bodies.clone()),
            content_type: entry.content_type.clone(),
            cache: CacheResult::Hit {
                ttl: fresh.ttl_left.as_secs(),
            },
            age: Some(fresh.age),
            budget: None,
            queued: Duration::ZERO,
            upstream_status: None,
        }
    }

    fn stale(entry: &Entry, status: Option<u16>, detail: &'static str, now: Instant) -> Answer {
        Answer {
            status: entry.status,
            body: bytes::Bytes::new(),
            bodies: Some(entry.bodies.clone()),
            content_type: entry.content_type.clone(),
            cache: CacheResult::Stale { status, detail },
            age: Some(entry.age(now)),
            budget: None,
            queued: Duration::ZERO,
            upstream_status: status,
        }
    }

    /// Whether `entry` may be served without asking the upstream, and its age.
    ///
    /// An incident (200) is current as of the later of its fetch and the sync's last complete
    /// pass, if the sync's unbroken chain of passes covers the fetch. While the sync is healthy it
    /// is served for up to `sync.max_entry_age`, and its remaining freshness is what the sync's
    /// health guarantees from now on; otherwise `cache.ttl` from that point. A 404 is never
    /// extended by the sync (a new incident with that id would not be announced as a change of
    /// one we hold), so it keeps `cache.negative_ttl`.
    fn freshness(&self, key: &Key, entry: &Entry, now: Instant) -> Option<Fresh> {
        let mut as_of = entry.stored_at;
        let confirmable = matches!(key, Key::Incident(_)) && entry.status == http::StatusCode::OK;
        if let (true, Some(confirmations)) = (confirmable, &self.confirmations) {
            if let Some(c) = confirmations.get(now).filter(|c| entry.stored_at >= c.chain_start) {
                as_of = as_of.max(c.at);
                let age = now.saturating_duration_since(as_of);
                let max_age = confirmations.max_entry_age();
                if c.healthy && entry.age(now) < max_age {
                    let by_sync = c.healthy_for.min(max_age - entry.age(now));
                    return Some(Fresh {
                        ttl_left: entry.ttl.saturating_sub(age).max(by_sync),
                        age,
                    });
                }
            }
        }
        let age = now.saturating_duration_since(as_of);
        (age < entry.ttl).then(|| Fresh {
            ttl_left: entry.ttl - age,
            age,
        })
    }

    /// A fresh cached answer the caller accepts, if any (the HTTP layer answers hits with it
    /// before taking any place under `server.max_concurrency`).
    pub fn lookup(&self, key: &Key, view: View, directives: &Directives, now: Instant) -> Option<Answer> {
        if directives.no_cache {
            return None;
        }
        let entry = self.store.get(key)?;
        let fresh = self.freshness(key, &entry, now)?;
        if directives.max_age.is_some_and(|max| fresh.age.as_secs() > max) {
            return None;
        }
        Self::hit(&entry, fresh, view)
    }

    /// What a call that brought back no answer means for the caller.
    fn call_failure(&self, route: RouteKind, e: CallError) -> Failure {
        match e {
            CallError::NoToken(t) => {
                tracing::warn!(route = route.name(), error = %t, "no upstream token; nothing sent");
                ApiError::NoToken(t.retry_after()).into()
            }
            CallError::Refused(Refusal::Closed) => ApiError::ShuttingDown.into(),
            CallError::Refused(Refusal::Throttled {
                retry_after,
                reason,
                status,
            }) => self.refusal(route, retry_after, reason, status),
            CallError::Upstream(e) => self.upstream_failure(&e).into(),
        }
    }

    /// A caller's 429 from the budget: no slot within its wait.
    fn refusal(
        &self,
        route: RouteKind,
        retry_after: Duration,
        reason: RefuseReason,
        windows: Vec<WindowStatus>,
    ) -> Failure {
        self.metrics
            .rejected
            .get_or_create(&RejectLabels {
                tenant: self.metrics.tenant.clone(),
                route: route.name(),
                reason: reason.as_str(),
            })
            .inc();
        let secs = retry_after_secs(retry_after);
        let why = match reason {
            RefuseReason::Frozen => "the upstream throttled this app registration",
            RefuseReason::QueueFull => "too many requests are already waiting for the upstream quota",
            RefuseReason::ConsumerQueueFull => "this consumer's queue for the upstream quota is full",
            RefuseReason::Budget => "the upstream quota for this route has no slot within this caller's wait",
        };
        Failure {
            error: ApiError::Throttled {
                retry_after,
                message: format!("{why}; a slot frees up in {secs} seconds").into(),
            },
            budget: Some(windows),
            upstream_status: None,
        }
    }

    fn upstream_failure(&self, e: &UpstreamError) -> ApiError {
        tracing::warn!(error = %e, "upstream request failed");
        match e {
            UpstreamError::Timeout => ApiError::GatewayTimeout(self.exchange.upstream().timeout),
            UpstreamError::Token(t) => ApiError::NoToken(t.retry_after()),
            UpstreamError::Connect(_) | UpstreamError::Broken(_) | UpstreamError::TooLarge => {
                ApiError::BadGateway(format!("the upstream request failed: {}", e.label()).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The policy's decisions, directly: freshness with and without the sync's confirmations,
    //! the caller's directives, and what an upstream answer other than 200/404 becomes. The
    //! in-memory store and budget are the real ones; the upstream is never called.
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    use super::*;
    use crate::{
        budget::{Budget, LocalBudget},
        cache::MokaStore,
        config::{BudgetConfig, UpstreamConfig},
        exchange::Sent,
        token::TokenSource,
        upstream::Response,
        upstream::Upstream,
    };

    fn proxy(confirmations: Option<Arc<Confirmations>>) -> Proxy {
        let cache = CacheConfig::default();
        let store: Arc<dyn Store> = Arc::new(MokaStore::new(&cache, Duration::from_secs(3600)));
        let budget: Arc<dyn Budget> = Arc::new(LocalBudget::new(&BudgetConfig::default()));
        let upstream = Upstream::new(
            &UpstreamConfig::default(),
            Arc::new(TokenSource::Static(secrecy::SecretString::from("unused".to_string()))),
        )
        .unwrap();
        let metrics = TenantMetrics::new(Arc::new(crate::Metrics::new()), Arc::new("default".into()));
        let exchange = Arc::new(Exchange::new(budget, upstream, metrics.clone()));
        let policy = Policy {
            cache,
            flight_wait: Duration::from_secs(120),
        };
        Proxy::new(policy, Dialect::Defender, store, exchange, metrics, confirmations)
    }

    fn entry(status: StatusCode, ttl: u64, stored_at: Instant) -> Entry {
        Entry {
            status,
            bodies: Arc::new(crate::body::Bodies::same(Bytes::from_static(b"{}"))),
            content_type: HeaderValue::from_static("application/json"),
            stored_at,
            ttl: Duration::from_secs(ttl),
            last_update: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_is_fresh_for_its_ttl_then_not() {
        let p = proxy(None);
        let t0 = Instant::now();
        let e = entry(StatusCode::OK, 60, t0);
        let f = p
            .freshness(&Key::Incident(1), &e, t0 + Duration::from_secs(20))
            .unwrap();
        assert_eq!(
            f,
            Fresh {
                ttl_left: Duration::from_secs(40),
                age: Duration::from_secs(20)
            }
        );
        assert!(p
            .freshness(&Key::Incident(1), &e, t0 + Duration::from_secs(60))
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_sync_extends_incidents_but_never_404s() {
        let confirmations = Arc::new(Confirmations::new(Duration::from_secs(45), Duration::from_secs(3600)));
        let p = proxy(Some(confirmations.clone()));
        let t0 = Instant::now();
        let ok = entry(StatusCode::OK, 60, t0);
        let missing = entry(StatusCode::NOT_FOUND, 10, t0);
        tokio::time::advance(Duration::from_secs(100)).await;
        let now = Instant::now();
        confirmations.confirm(now - Duration::from_secs(5), t0 - Duration::from_secs(1));
        let f = p
            .freshness(&Key::Incident(1), &ok, now)
            .expect("confirmed past its TTL");
        assert_eq!(f.age, Duration::from_secs(5), "age counts from the confirmation");
        assert_eq!(
            f.ttl_left,
            Duration::from_secs(55),
            "its TTL counts from the confirmation (longer than the 40 s the sync's health guarantees)"
        );
        assert!(
            p.freshness(&Key::Incident(2), &missing, now).is_none(),
            "a 404 keeps its own TTL"
        );
        // An entry fetched before the chain of passes began is not vouched for.
        let older = entry(StatusCode::OK, 60, t0 - Duration::from_secs(10));
        assert!(p.freshness(&Key::Incident(3), &older, now).is_none());
        // Lists are never extended.
        let list = entry(StatusCode::OK, 15, t0);
        assert!(p.freshness(&Key::List("q".into()), &list, now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn directives_decide_what_a_hit_may_be() {
        let p = proxy(None);
        let t0 = Instant::now();
        let ticket = p.store.ticket().await;
        p.store
            .fill(Key::Incident(7), Arc::new(entry(StatusCode::OK, 60, t0)), ticket)
            .await;
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        let none = Directives::default();
        assert!(p.lookup(&Key::Incident(7), View::Defender, &none, now).is_some());
        let no_cache = Directives {
            no_cache: true,
            ..Directives::default()
        };
        assert!(p.lookup(&Key::Incident(7), View::Defender, &no_cache, now).is_none());
        let young = Directives {
            max_age: Some(10),
            ..Directives::default()
        };
        assert!(
            p.lookup(&Key::Incident(7), View::Defender, &young, now).is_none(),
            "older than max-age"
        );
        let old_enough = Directives {
            max_age: Some(30),
            ..Directives::default()
        };
        assert!(p.lookup(&Key::Incident(7), View::Defender, &old_enough, now).is_some());
    }

    impl Proxy {
        fn non_success_for_test(&self, sent: Sent, stale: Option<&Entry>) -> Outcome {
            self.non_success(sent, stale, "req-1")
                .and_then(|a| a.in_view(View::Defender))
        }
    }

    fn sent(status: u16, retry_after: Option<&'static str>) -> Sent {
        Sent {
            response: Response {
                status: StatusCode::from_u16(status).unwrap(),
                content_type: None,
                retry_after: retry_after.map(HeaderValue::from_static),
                date: None,
                body: Bytes::from_static(br#"{"error":{"code":"X","message":"m","target":"t"}}"#),
            },
            queued: Duration::ZERO,
            windows: Vec::new(),
            freeze: (status == 429).then_some(crate::budget::Freeze {
                pause: Duration::from_secs(8),
                capped: false,
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_failures_map_to_statuses_or_stale() {
        let p = proxy(None);
        let status = |o: &Outcome| match o {
            Ok(a) => a.status.as_u16(),
            Err(f) => f.error.status().as_u16(),
        };
        assert_eq!(status(&p.non_success_for_test(sent(429, Some("8")), None)), 429);
        assert_eq!(status(&p.non_success_for_test(sent(503, None), None)), 502);
        assert_eq!(
            status(&p.non_success_for_test(sent(401, None), None)),
            502,
            "never the caller's 401"
        );
        assert_eq!(
            status(&p.non_success_for_test(sent(302, None), None)),
            502,
            "redirects are not followed"
        );
        assert_eq!(
            status(&p.non_success_for_test(sent(400, None), None)),
            400,
            "the upstream's word on the request"
        );
        match p.non_success_for_test(sent(429, Some("8")), None) {
            Err(f) => assert_eq!(f.error.retry_after(), Some(8)),
            Ok(a) => panic!("{a:?}"),
        }
        // With an expired entry at hand, failures and throttling serve it, marked stale.
        let stale = entry(StatusCode::OK, 1, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        for code in [429, 500, 503] {
            let a = p.non_success_for_test(sent(code, None), Some(&stale)).unwrap();
            assert_eq!(
                a.cache,
                CacheResult::Stale {
                    status: Some(code),
                    detail: "stale-if-error"
                }
            );
        }
    }
}
