//! The request path after authentication: cache, then budget, then upstream, and back.
//!
//! This is where the policy lives: when a cached answer is good enough, when to wait for a slot,
//! when a stale answer beats an error, what gets stored, and what an upstream answer means for the
//! budget (a 429 freezes the route). Data flows one way: this module calls the cache, the budget
//! and the upstream; none of them call back.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use crate::{
    budget::{Budget, Refusal, WindowStatus},
    cache::{Entry, Key, Store},
    config::CacheConfig,
    error::ApiError,
    flight::Flights,
    metrics::{RejectLabels, RouteLabels, UpstreamLabels},
    odata::ListQuery,
    route::RouteKind,
    sync::{SyncError, SyncState},
    target::Directives,
    upstream::{self, Upstream, UpstreamError},
    Metrics,
};

/// How the answer relates to the cache (rendered as RFC 9211 `Cache-Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache, fresh for `ttl` more seconds.
    Hit { ttl: u64 },
    /// Asked the upstream: `fwd` is `miss` or `request` (the caller's directives forced it).
    Forwarded {
        fwd: &'static str,
        status: u16,
        stored: bool,
        collapsed: bool,
    },
    /// Served an expired entry because the upstream could not be (or must not be) asked.
    Stale { status: Option<u16>, detail: &'static str },
    /// Writes go through the cache untouched.
    Bypass { status: Option<u16> },
}

impl CacheResult {
    pub fn header(&self) -> String {
        let mut s = String::from("defender-proxy; ");
        match self {
            CacheResult::Hit { ttl } => {
                let _ = write!(s, "hit; ttl={ttl}");
            }
            CacheResult::Forwarded {
                fwd,
                status,
                stored,
                collapsed,
            } => {
                let _ = write!(s, "fwd={fwd}; fwd-status={status}");
                if *stored {
                    s.push_str("; stored");
                }
                if *collapsed {
                    s.push_str("; collapsed");
                }
            }
            CacheResult::Stale { status, detail } => {
                s.push_str("fwd=stale");
                if let Some(st) = status {
                    let _ = write!(s, "; fwd-status={st}");
                }
                let _ = write!(s, "; detail={detail}");
            }
            CacheResult::Bypass { status } => {
                s.push_str("fwd=method");
                if let Some(st) = status {
                    let _ = write!(s, "; fwd-status={st}");
                }
            }
        }
        s
    }

    /// A short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            CacheResult::Hit { .. } => "hit",
            CacheResult::Forwarded { collapsed: true, .. } => "collapsed",
            CacheResult::Forwarded { .. } => "miss",
            CacheResult::Stale { .. } => "stale",
            CacheResult::Bypass { .. } => "bypass",
        }
    }
}

/// A successful (or passed-through) answer for the caller.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
    pub cache: CacheResult,
    /// `Age`, for answers from the cache.
    pub age: Option<Duration>,
    /// The route's quotas, when this answer involved the budget.
    pub budget: Option<(RouteKind, Vec<WindowStatus>)>,
    pub queued: Duration,
    pub upstream_status: Option<u16>,
}

/// An error answer, with the budget state to report alongside it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: ApiError,
    pub budget: Option<(RouteKind, Vec<WindowStatus>)>,
    pub upstream_status: Option<u16>,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure {
            error,
            budget: None,
            upstream_status: None,
        }
    }
}

pub type Outcome = Result<Answer, Failure>;

/// Per-request facts the proxy needs (all already validated).
#[derive(Debug, Clone)]
pub struct Ctx {
    pub request_id: String,
    pub accept: Option<HeaderValue>,
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
#[derive(Debug, Clone, Copy)]
struct Fresh {
    ttl_left: Duration,
    age: Duration,
}

impl Ctx {
    /// The upstream request for this caller: only `Accept` and the request id are carried over.
    fn request(&self, method: Method, path_and_query: String, body: Option<Bytes>) -> upstream::Request {
        upstream::Request {
            method,
            path_and_query,
            body,
            accept: self.accept.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct FlightKey {
    key: Key,
    /// Forced refreshes (no-cache) collapse among themselves, never onto a cache re-check.
    forced: bool,
}

/// The proxy's request path.
pub struct Proxy {
    cache_config: CacheConfig,
    store: Arc<dyn Store>,
    budget: Arc<dyn Budget>,
    upstream: Upstream,
    flights: Flights<FlightKey, Outcome>,
    metrics: Arc<Metrics>,
    /// When the incident sync runs: its confirmations extend incidents' freshness.
    sync: Option<Arc<SyncState>>,
}

fn json_content_type() -> HeaderValue {
    HeaderValue::from_static("application/json; charset=utf-8")
}

/// Reads `lastUpdateTime` as unix nanoseconds.
fn parse_time(s: &str) -> Option<i128> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// The fields of an incident the proxy checks before storing it.
#[derive(Deserialize)]
struct IncidentProbe {
    #[serde(rename = "incidentId")]
    incident_id: i64,
    #[serde(rename = "lastUpdateTime")]
    last_update_time: Option<String>,
}

impl Proxy {
    pub fn new(
        cache_config: CacheConfig,
        store: Arc<dyn Store>,
        budget: Arc<dyn Budget>,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        sync: Option<Arc<SyncState>>,
    ) -> Proxy {
        Proxy {
            cache_config,
            store,
            budget,
            upstream,
            flights: Flights::default(),
            metrics,
            sync,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn sync(&self) -> Option<&Arc<SyncState>> {
        self.sync.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn budget(&self) -> &Arc<dyn Budget> {
        &self.budget
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn hit(entry: &Entry, fresh: Fresh) -> Answer {
        Answer {
            status: entry.status,
            body: entry.body.clone(),
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
            body: entry.body.clone(),
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
    /// An incident is current as of the later of its fetch and the sync's last complete run (if
    /// the sync's unbroken chain of runs covers the fetch). While the sync is healthy it is served
    /// for up to `sync.max_entry_age`; otherwise for `cache.ttl` from that point.
    fn freshness(&self, key: &Key, entry: &Entry, now: Instant) -> Option<Fresh> {
        let mut as_of = entry.stored_at;
        if let (Key::Incident(_), Some(sync)) = (key, &self.sync) {
            if let Some(c) = sync.confirmation(now).filter(|c| entry.stored_at >= c.chain_start) {
                as_of = as_of.max(c.at);
                let age = now.saturating_duration_since(as_of);
                if c.healthy && entry.age(now) < sync.max_entry_age() {
                    return Some(Fresh {
                        ttl_left: entry.ttl.saturating_sub(age),
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

    /// A fresh cached answer the caller accepts, if any.
    pub fn lookup(&self, key: &Key, directives: &Directives, now: Instant) -> Option<Answer> {
        if directives.no_cache {
            return None;
        }
        let entry = self.store.get(key)?;
        let fresh = self.freshness(key, &entry, now)?;
        if directives.max_age.is_some_and(|max| fresh.age.as_secs() > max) {
            return None;
        }
        Some(Self::hit(&entry, fresh))
    }

    /// `GET /api/incidents/{id}`.
    pub async fn get_incident(self: &Arc<Self>, id: i64, ctx: Ctx) -> Outcome {
        self.read(RouteKind::GetIncident, Key::Incident(id), ctx).await
    }

    /// `GET /api/incidents?...`: validated and canonicalised before anything else.
    pub async fn list_incidents(self: &Arc<Self>, raw_query: &str, ctx: Ctx) -> Outcome {
        let query =
            ListQuery::parse(raw_query).map_err(|e| ApiError::bad_request(format!("{}: {}", e.option, e.message)))?;
        self.read(RouteKind::ListIncidents, Key::List(query.canonical().into()), ctx)
            .await
    }

    /// A cached read: fresh hit, or one collapsed upstream call for everyone asking at once.
    async fn read(self: &Arc<Self>, route: RouteKind, key: Key, ctx: Ctx) -> Outcome {
        let kind = match key {
            Key::Incident(_) => "incident",
            Key::List(_) => "list",
        };
        let now = Instant::now();
        if let Some(answer) = self.lookup(&key, &ctx.directives, now) {
            let negative = answer.status == StatusCode::NOT_FOUND;
            self.metrics
                .cache_lookup(kind, if negative { "negative" } else { "hit" });
            return Ok(answer);
        }
        if ctx.directives.only_if_cached {
            self.metrics.cache_lookup(kind, "miss");
            return Err(ApiError::NotCached.into());
        }
        let fk = FlightKey {
            key,
            forced: ctx.directives.no_cache || ctx.directives.max_age.is_some(),
        };
        let this = self.clone();
        let leader_ctx = ctx.clone();
        let (work, joined) = self
            .flights
            .join_or_start(fk.clone(), move || this.fetch_read(route, fk, leader_ctx));
        self.metrics
            .cache_lookup(kind, if joined { "collapsed" } else { "miss" });
        if joined {
            ctx.work.release();
        }
        let mut outcome = work.await;
        if joined {
            if let Ok(Answer {
                cache: CacheResult::Forwarded { collapsed, .. },
                ..
            }) = &mut outcome
            {
                *collapsed = true;
            }
        }
        outcome
    }

    /// The leader's work for a read miss: budget, upstream, store.
    async fn fetch_read(self: Arc<Self>, route: RouteKind, fk: FlightKey, ctx: Ctx) -> Outcome {
        let now = Instant::now();
        let cached = self
            .store
            .get(&fk.key)
            .filter(|e| e.usable_stale(now, self.cache_config.stale_if_error));
        if !fk.forced {
            // A flight that finished between the caller's lookup and this one may have stored it.
            if let Some(entry) = &cached {
                if let Some(fresh) = self.freshness(&fk.key, entry, now) {
                    return Ok(Self::hit(entry, fresh));
                }
            }
        }
        // With an expired copy at hand, do not queue: serve it instead of waiting (stale-if-error).
        let stale = cached.filter(|e| self.freshness(&fk.key, e, now).is_none());
        let wait = if stale.is_some() { Duration::ZERO } else { ctx.wait };
        ctx.work.release();
        let grant = match self.acquire(route, wait).await {
            Ok(g) => g,
            Err(failure) => {
                return match &stale {
                    Some(e) => Ok(Self::stale(e, None, "budget", Instant::now())),
                    None => Err(failure),
                };
            }
        };
        // The upstream sees the canonical form of what the key stands for.
        let path = match &fk.key {
            Key::Incident(id) => format!("/api/incidents/{id}"),
            Key::List(q) if q.is_empty() => "/api/incidents".to_string(),
            Key::List(q) => format!("/api/incidents?{q}"),
        };
        let req = ctx.request(Method::GET, path, None);
        let result = self.call_upstream(route, &req, ctx.wait, true).await;
        let budget = Some((route, self.budget.status(route).windows));
        let now = Instant::now();
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                let error = self.upstream_failure(&e);
                return match &stale {
                    Some(entry) => Ok(Self::stale(entry, None, "stale-if-error", now)),
                    None => Err(Failure {
                        error,
                        budget,
                        upstream_status: None,
                    }),
                };
            }
        };
        let status = resp.status.as_u16();
        // What is stored, and for how long: 200s that pass their check, and 404s of incidents.
        let (ttl, last_update) = match resp.status {
            StatusCode::OK => {
                let checked = match &fk.key {
                    Key::Incident(id) => self.check_incident(*id, &resp.body),
                    Key::List(_) => self.spread_list(&resp.body, now).map(|_| None),
                };
                let Some(last_update) = checked else {
                    return match &stale {
                        Some(entry) => Ok(Self::stale(entry, Some(status), "stale-if-error", now)),
                        None => Err(Failure {
                            error: ApiError::BadGateway("the upstream answered with an invalid body".into()),
                            budget,
                            upstream_status: Some(status),
                        }),
                    };
                };
                let ttl = match fk.key {
                    Key::Incident(_) => self.cache_config.ttl,
                    Key::List(_) => self.cache_config.list_ttl,
                };
                (ttl, last_update)
            }
            StatusCode::NOT_FOUND if matches!(fk.key, Key::Incident(_)) => (self.cache_config.negative_ttl, None),
            _ => return self.non_success(route, resp, stale.as_deref(), budget),
        };
        let content_type = resp.content_type.unwrap_or_else(json_content_type);
        let entry = Entry {
            status: resp.status,
            body: resp.body,
            content_type,
            stored_at: now,
            ttl,
            last_update,
        };
        let answer = Answer {
            status: entry.status,
            body: entry.body.clone(),
            content_type: entry.content_type.clone(),
            cache: CacheResult::Forwarded {
                fwd: if fk.forced { "request" } else { "miss" },
                status,
                stored: true,
                collapsed: false,
            },
            age: None,
            budget,
            queued: grant,
            upstream_status: Some(status),
        };
        self.store.insert(fk.key, Arc::new(entry));
        Ok(answer)
    }

    /// A Get answer is stored only if it is the incident asked for. Returns its `lastUpdateTime`.
    fn check_incident(&self, id: i64, body: &[u8]) -> Option<Option<i128>> {
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

    /// Every incident in a list answer refreshes its own cache entry when it is at least as new,
    /// so a tool that lists then fetches each incident spends one call, not N+1.
    /// Returns how many incidents the page held.
    fn spread_list(&self, body: &[u8], now: Instant) -> Option<usize> {
        #[derive(Deserialize)]
        struct Page<'a> {
            #[serde(borrow)]
            value: Vec<&'a serde_json::value::RawValue>,
        }
        let page: Page = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!("upstream list body has no `value` array; not cached");
                return None;
            }
        };
        let n = page.value.len();
        for raw in page.value {
            let Ok(probe) = serde_json::from_str::<IncidentProbe>(raw.get()) else {
                continue;
            };
            let last_update = probe.last_update_time.as_deref().and_then(parse_time);
            self.refresh_incident(
                probe.incident_id,
                Bytes::copy_from_slice(raw.get().as_bytes()),
                last_update,
                now,
            );
        }
        Some(n)
    }

    /// Replaces an incident's entry unless the cached one is known to be newer.
    fn refresh_incident(&self, id: i64, body: Bytes, last_update: Option<i128>, now: Instant) {
        let key = Key::Incident(id);
        if let Some(existing) = self.store.get(&key) {
            let newer = existing.status == StatusCode::OK
                && matches!((existing.last_update, last_update), (Some(old), Some(new)) if old > new);
            if newer {
                return;
            }
        }
        self.store.insert(
            key,
            Arc::new(Entry {
                status: StatusCode::OK,
                body,
                content_type: json_content_type(),
                stored_at: now,
                ttl: self.cache_config.ttl,
                last_update,
            }),
        );
    }

    /// `PATCH /api/incidents/{id}`: never retried (a comment would be added twice); the cache
    /// takes the returned incident, or forgets the id when the outcome is anything else.
    pub async fn update_incident(self: &Arc<Self>, id: i64, body: Bytes, ctx: Ctx) -> Outcome {
        crate::target::validate_update(&body)?;
        let route = RouteKind::UpdateIncident;
        let key = Key::Incident(id);
        ctx.work.release();
        let queued = self.acquire(route, ctx.wait).await?;
        let req = ctx.request(Method::PATCH, format!("/api/incidents/{id}"), Some(body));
        let result = self.call_upstream(route, &req, ctx.wait, false).await;
        let budget = Some((route, self.budget.status(route).windows));
        let now = Instant::now();
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.store.remove(&key);
                self.store.remove_lists();
                let error = match e {
                    UpstreamError::Connect(_) | UpstreamError::Token(_) => self.upstream_failure(&e),
                    _ => {
                        tracing::warn!(incident.id = id, error = %e, "update outcome unknown");
                        ApiError::OutcomeUnknown(
                            "the connection to the upstream failed after the update was sent: it may or may not have been applied; read the incident before retrying".into(),
                        )
                    }
                };
                return Err(Failure {
                    error,
                    budget,
                    upstream_status: None,
                });
            }
        };
        let status = resp.status.as_u16();
        if resp.status == StatusCode::OK {
            if let Some(last_update) = self.check_incident(id, &resp.body) {
                self.store.insert(
                    key.clone(),
                    Arc::new(Entry {
                        status: StatusCode::OK,
                        body: resp.body.clone(),
                        content_type: resp.content_type.clone().unwrap_or_else(json_content_type),
                        stored_at: now,
                        ttl: self.cache_config.ttl,
                        last_update,
                    }),
                );
            } else {
                self.store.remove(&key);
            }
            self.store.remove_lists();
            return Ok(Answer {
                status: resp.status,
                content_type: resp.content_type.unwrap_or_else(json_content_type),
                body: resp.body,
                cache: CacheResult::Bypass { status: Some(status) },
                age: None,
                budget,
                queued,
                upstream_status: Some(status),
            });
        }
        self.store.remove(&key);
        self.store.remove_lists();
        if resp.status.is_server_error() {
            return Err(Failure {
                error: ApiError::OutcomeUnknown(
                    format!("the upstream answered {status}: the update may or may not have been applied").into(),
                ),
                budget,
                upstream_status: Some(status),
            });
        }
        let mut answer = self.non_success(route, resp, None, budget)?;
        answer.cache = CacheResult::Bypass { status: Some(status) };
        Ok(answer)
    }

    /// One page of the incident sync's change set, written into the per-id cache. Takes a List
    /// slot only if one is free right now: the sync never queues in front of callers.
    pub(crate) async fn sync_page(&self, since: &str, skip: u64, top: usize) -> Result<usize, SyncError> {
        let route = RouteKind::ListIncidents;
        match self.budget.acquire(route, Duration::ZERO).await {
            Ok(_) => {}
            Err(Refusal::Closed) | Err(Refusal::Throttled { .. }) => return Err(SyncError::NoSlot),
        }
        let req = upstream::Request {
            method: Method::GET,
            path_and_query: format!("/api/incidents?$filter=lastUpdateTime%20ge%20{since}&$top={top}&$skip={skip}"),
            body: None,
            accept: None,
            request_id: format!("sync-{}", uuid::Uuid::new_v4()),
        };
        let resp = self
            .call_upstream(route, &req, Duration::ZERO, true)
            .await
            .map_err(|e| SyncError::Failed(e.label().into()))?;
        if resp.status != StatusCode::OK {
            let status = resp.status.as_u16();
            // Throttling freezes the route for callers too; anything else is only the sync's problem.
            let _ = self.non_success(route, resp, None, None);
            return Err(SyncError::Upstream(status));
        }
        self.spread_list(&resp.body, Instant::now()).ok_or(SyncError::BadPage)
    }

    /// Waits for a budget slot; a refusal becomes the caller's 429 (or 503 on shutdown).
    async fn acquire(&self, route: RouteKind, wait: Duration) -> Result<Duration, Failure> {
        match self.budget.acquire(route, wait).await {
            Ok(grant) => {
                self.metrics
                    .queue_wait
                    .get_or_create(&RouteLabels { route: route.name() })
                    .observe(grant.queued.as_secs_f64());
                Ok(grant.queued)
            }
            Err(Refusal::Closed) => Err(ApiError::ShuttingDown.into()),
            Err(Refusal::Throttled {
                retry_after,
                reason,
                status,
            }) => {
                self.metrics
                    .rejected
                    .get_or_create(&RejectLabels {
                        route: route.name(),
                        reason: reason.as_str(),
                    })
                    .inc();
                let secs = crate::error::retry_after_secs(retry_after);
                let why = match reason {
                    crate::budget::RefuseReason::Frozen => "Defender throttled this app registration",
                    crate::budget::RefuseReason::QueueFull => {
                        "too many requests are already waiting for the upstream quota"
                    }
                    crate::budget::RefuseReason::Budget => "the upstream quota for this route is spent",
                };
                Err(Failure {
                    error: ApiError::Throttled {
                        retry_after,
                        message: format!("{why}; a slot frees up in {secs} seconds").into(),
                    },
                    budget: Some((route, status)),
                    upstream_status: None,
                })
            }
        }
    }

    /// One upstream call (budget already granted), with at most one retry for reads: after a 401
    /// with a fresh token, or after a connection error. Each retry needs a slot of its own.
    async fn call_upstream(
        &self,
        route: RouteKind,
        req: &upstream::Request,
        wait: Duration,
        may_retry: bool,
    ) -> Result<upstream::Response, UpstreamError> {
        let started = Instant::now();
        let first = self.upstream.send(req).await;
        self.observe(route, started, &first.as_ref().map(|(r, _)| r));
        match first {
            Ok((resp, token)) if resp.status == StatusCode::UNAUTHORIZED && may_retry => {
                tracing::warn!(route = route.name(), "upstream rejected the token; refreshing once");
                if self.budget.acquire(route, wait).await.is_err() {
                    return Ok(resp);
                }
                let started = Instant::now();
                let second = self.upstream.send_with_fresh_token(req, &token).await;
                self.observe(route, started, &second.as_ref());
                second
            }
            // A read is safe to repeat when the connection failed before or after sending.
            Err(e @ (UpstreamError::Connect(_) | UpstreamError::Broken(_))) if may_retry => {
                tracing::warn!(route = route.name(), error = %e, "upstream connection failed; retrying once");
                if self.budget.acquire(route, Duration::ZERO).await.is_err() {
                    return Err(e);
                }
                let started = Instant::now();
                let second = self.upstream.send(req).await;
                self.observe(route, started, &second.as_ref().map(|(r, _)| r));
                second.map(|(r, _)| r)
            }
            other => other.map(|(r, _)| r),
        }
    }

    fn observe(&self, route: RouteKind, started: Instant, result: &Result<&upstream::Response, &UpstreamError>) {
        let status = match result {
            Ok(r) => r.status.as_u16().to_string(),
            Err(e) => e.label().to_string(),
        };
        self.metrics
            .upstream_requests
            .get_or_create(&UpstreamLabels {
                route: route.name(),
                status,
            })
            .inc();
        self.metrics
            .upstream_duration
            .get_or_create(&RouteLabels { route: route.name() })
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => {}
            Ok(_) => self.budget.upstream_ok(route),
            Err(_) => {}
        }
    }

    fn upstream_failure(&self, e: &UpstreamError) -> ApiError {
        tracing::warn!(error = %e, "upstream request failed");
        match e {
            UpstreamError::Timeout => ApiError::GatewayTimeout(self.upstream.timeout),
            UpstreamError::Token(_) => ApiError::NoToken,
            UpstreamError::Connect(_) | UpstreamError::Broken(_) | UpstreamError::TooLarge => {
                ApiError::BadGateway(format!("the upstream request failed: {}", e.label()).into())
            }
        }
    }

    /// Any upstream answer other than 200/404 for a read: throttling, errors, pass-through.
    fn non_success(
        &self,
        route: RouteKind,
        resp: upstream::Response,
        stale: Option<&Entry>,
        budget: Option<(RouteKind, Vec<WindowStatus>)>,
    ) -> Outcome {
        let status = resp.status.as_u16();
        let now = Instant::now();
        let failure = |error: ApiError| Failure {
            error,
            budget: budget.clone(),
            upstream_status: Some(status),
        };
        match resp.status {
            StatusCode::TOO_MANY_REQUESTS => {
                let pause = upstream::throttle_pause(resp.retry_after.as_ref(), &resp.body);
                let pause = self.budget.upstream_throttled(route, pause);
                self.metrics
                    .upstream_throttled
                    .get_or_create(&RouteLabels { route: route.name() })
                    .inc();
                tracing::warn!(
                    route = route.name(),
                    pause_secs = pause.as_secs_f64(),
                    "upstream answered 429; route frozen"
                );
                match stale {
                    Some(e) => Ok(Self::stale(e, Some(status), "stale-if-error", now)),
                    None => Err(failure(ApiError::Throttled {
                        retry_after: pause,
                        message: format!(
                            "Defender throttled this app registration; try again in {} seconds",
                            crate::error::retry_after_secs(pause)
                        )
                        .into(),
                    })),
                }
            }
            s if s.is_server_error() || s == StatusCode::UNAUTHORIZED || s.is_redirection() => match stale {
                Some(e) => Ok(Self::stale(e, Some(status), "stale-if-error", now)),
                None => Err(failure(ApiError::BadGateway(
                    match s {
                        StatusCode::UNAUTHORIZED => "the upstream rejected the proxy's credentials".to_string(),
                        s if s.is_redirection() => {
                            format!("the upstream answered a redirect ({status}), which is never followed")
                        }
                        _ => format!("the upstream answered {status}"),
                    }
                    .into(),
                ))),
            },
            // Other client errors (400, 403, ...) are the upstream's word on the request: pass them on.
            _ => Ok(Answer {
                status: resp.status,
                content_type: resp.content_type.unwrap_or_else(json_content_type),
                body: resp.body,
                cache: CacheResult::Forwarded {
                    fwd: "miss",
                    status,
                    stored: false,
                    collapsed: false,
                },
                age: None,
                budget,
                queued: Duration::ZERO,
                upstream_status: Some(status),
            }),
        }
    }
}
