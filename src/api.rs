//! HTTP in and out: turns a request into a call on [`Proxy`] and its outcome into a response.
//!
//! Order per request: request id, authentication (before anything is looked up, so a cached
//! incident is never shown to an unknown caller), route parsing, rights, then a fresh cache hit if
//! there is one, else the proxy. Every answer carries `X-Request-Id` and `Cache-Status`; answers
//! that involved the budget carry `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers). The admin router serves `/metrics`, `/livez` and
//! `/readyz` on its own listener.
//!
//! The cache hit is the hot path, and it is kept as cheap as a bare server's: the API listener is
//! served by [`handle`] directly (no router or tower layers), its headers and metric handles are
//! made once and reused, and its access-log line goes through [`crate::access_log`].
//!
//! `server.max_concurrency` bounds work in progress, not waiting: a fresh hit is answered without
//! taking a place; other requests read their body (within `server.body_read_timeout`), then take
//! a place (waiting at most `server.max_concurrency_wait`, else 503), and the proxy gives it back
//! as soon as they start waiting for a budget slot or for another caller's upstream call.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::get,
    BoxError, Router,
};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use parking_lot::RwLock;
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::Instrument;

use crate::{
    access_log::{AccessLog, Line},
    auth::Consumers,
    body::View,
    budget::{binding, WindowStatus},
    cache::Key,
    dialect::{
        error as dialect_error,
        target::{self as graph_target, GraphTarget},
        update::{self, WritePlan},
        TranslateError,
    },
    error::ApiError,
    metrics::{CacheLabels, RejectLabels, RequestLabels, RouteLabels, WindowLabels},
    odata::GraphListQuery,
    proxy::{Answer, CacheResult, Ctx, Failure, Proxy, WorkPermit},
    route::RouteKind,
    target::{self, Directives, Target},
    Metrics,
};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static PREFER: HeaderName = HeaderName::from_static("prefer");

/// The body of API answers: cached bytes as they are, or anything else (error envelopes).
pub type ApiBody = Either<Full<Bytes>, Body>;

/// Seconds up to which `Cache-Status: ...; ttl=N` and `Age: N` values are made once and reused.
const PRECOMPUTED_SECONDS: usize = 4096;
/// Metric index of requests that matched no route.
const OTHER_ROUTE: usize = RouteKind::ALL.len();

/// What the handlers share.
pub struct AppState {
    pub proxy: Arc<Proxy>,
    /// Handles for the admin endpoints (metrics, readiness): the same objects the proxy uses.
    pub budget: Arc<dyn crate::budget::Budget>,
    pub store: Arc<dyn crate::cache::Store>,
    pub tokens: Arc<crate::token::TokenSource>,
    /// The incident sync's state, when it runs (for `/readyz` and metrics).
    pub sync: Option<Arc<crate::sync::SyncState>>,
    /// Swapped whole on SIGHUP.
    pub consumers: RwLock<Arc<Consumers>>,
    pub metrics: Arc<Metrics>,
    pub max_wait: Duration,
    pub max_wait_cap: Duration,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// Places for requests being worked on (`server.max_concurrency`).
    pub work: Arc<Semaphore>,
    pub max_concurrency_wait: Duration,
    /// `server.public_url`: the proxy's address as callers reach it, for Graph's
    /// `@odata.nextLink` (else the request's `Host`).
    pub public_url: Option<Arc<str>>,
    pub access_log: Arc<AccessLog>,
    /// False from the moment shutdown starts.
    pub accepting: AtomicBool,
    hot: HotPath,
}

/// The shared objects the admin endpoints read (budget, store, tokens).
pub struct Handles {
    pub budget: Arc<dyn crate::budget::Budget>,
    pub store: Arc<dyn crate::cache::Store>,
    pub tokens: Arc<crate::token::TokenSource>,
}

/// Settings of [`AppState`] that come from the configuration.
pub struct Limits {
    pub max_wait: Duration,
    pub max_wait_cap: Duration,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub max_concurrency: usize,
    pub max_concurrency_wait: Duration,
    pub public_url: Option<String>,
}

impl AppState {
    pub fn new(
        proxy: Arc<Proxy>,
        handles: Handles,
        sync: Option<Arc<crate::sync::SyncState>>,
        consumers: Consumers,
        metrics: Arc<Metrics>,
        limits: Limits,
        access_log: Arc<AccessLog>,
    ) -> AppState {
        AppState {
            proxy,
            budget: handles.budget,
            store: handles.store,
            tokens: handles.tokens,
            sync,
            consumers: RwLock::new(Arc::new(consumers)),
            hot: HotPath::new(&metrics),
            metrics,
            max_wait: limits.max_wait,
            max_wait_cap: limits.max_wait_cap,
            max_body_bytes: limits.max_body_bytes,
            body_read_timeout: limits.body_read_timeout,
            work: Arc::new(Semaphore::new(limits.max_concurrency)),
            max_concurrency_wait: limits.max_concurrency_wait,
            public_url: limits.public_url.map(|u| Arc::from(u.trim_end_matches('/'))),
            access_log,
            accepting: true.into(),
        }
    }
}

/// Everything per request that can be made once: metric handles (no label hashing per request)
/// and header values.
struct HotPath {
    durations: Vec<Histogram>,
    /// `cache_lookups_total` for [incident, list] x [hit, negative].
    lookups: [[Counter; 2]; 2],
    /// `requests_total` by (address of the consumer's name, route index, status). The value keeps
    /// the name alive, so its address cannot be reused by another name after a reload.
    requests: RwLock<RequestCounters>,
    unauthenticated: Arc<String>,
    hit_status: Box<[OnceLock<HeaderValue>]>,
    seconds: Box<[OnceLock<HeaderValue>]>,
}

/// `requests_total` handles by (consumer name address, route index, status).
type RequestCounters = HashMap<(usize, usize, u16), (Arc<String>, Counter), BuildHasherDefault<KeyHasher>>;

/// A multiply-rotate hasher for the small integer keys of [`HotPath::requests`]: SipHash's
/// resistance to chosen keys is not needed for keys made of configured consumers, and it costs
/// more than the rest of the lookup.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
}

fn route_name(index: usize) -> &'static str {
    RouteKind::ALL.get(index).map_or("other", |r| r.name())
}

impl HotPath {
    fn new(metrics: &Metrics) -> HotPath {
        let lookup = |kind, result| {
            metrics
                .cache_lookups
                .get_or_create(&CacheLabels { kind, result })
                .clone()
        };
        HotPath {
            durations: (0..=OTHER_ROUTE)
                .map(|i| {
                    metrics
                        .request_duration
                        .get_or_create(&RouteLabels { route: route_name(i) })
                        .clone()
                })
                .collect(),
            lookups: [
                [lookup("incident", "hit"), lookup("incident", "negative")],
                [lookup("list", "hit"), lookup("list", "negative")],
            ],
            requests: RwLock::new(HashMap::default()),
            unauthenticated: Arc::new("unauthenticated".to_string()),
            hit_status: (0..PRECOMPUTED_SECONDS).map(|_| OnceLock::new()).collect(),
            seconds: (0..PRECOMPUTED_SECONDS).map(|_| OnceLock::new()).collect(),
        }
    }

    fn count_request(&self, metrics: &Metrics, consumer: &Arc<String>, route: usize, status: u16) {
        let key = (Arc::as_ptr(consumer) as usize, route, status);
        if let Some((_, c)) = self.requests.read().get(&key) {
            c.inc();
            return;
        }
        let counter = metrics
            .requests
            .get_or_create(&RequestLabels {
                route: route_name(route),
                status,
                consumer: consumer.clone(),
            })
            .clone();
        counter.inc();
        self.requests.write().insert(key, (consumer.clone(), counter));
    }

    fn cache_status(&self, cache: &CacheResult) -> Option<HeaderValue> {
        match cache {
            CacheResult::Hit { ttl } if (*ttl as usize) < PRECOMPUTED_SECONDS => Some(
                self.hit_status[*ttl as usize]
                    .get_or_init(|| HeaderValue::try_from(cache.header()).expect("ASCII"))
                    .clone(),
            ),
            other => HeaderValue::try_from(other.header()).ok(),
        }
    }

    fn seconds(&self, secs: u64) -> HeaderValue {
        match self.seconds.get(secs as usize) {
            Some(cell) => cell.get_or_init(|| HeaderValue::from(secs)).clone(),
            None => HeaderValue::from(secs),
        }
    }
}

/// The API listener's router, for driving requests in process (benchmarks, tests); the listener
/// itself serves [`handle`] directly.
pub fn api_router(state: Arc<AppState>) -> Router {
    Router::new().fallback(move |req: Request| {
        let state = state.clone();
        async move { handle(&state, req).await.map(Body::new) }
    })
}

/// The admin listener's router.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Takes a caller's request id if it is sane (visible ASCII, at most 128 bytes), else makes one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic) {
            return v.clone();
        }
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

/// How a request ended, for the response, the metrics and the access log.
struct Done {
    route: Option<RouteKind>,
    consumer: Option<Arc<String>>,
    resp: Response<ApiBody>,
    cache: &'static str,
    upstream_status: Option<u16>,
    queued: Duration,
}

impl Done {
    fn refused(route: Option<RouteKind>, consumer: Option<Arc<String>>, resp: Response<ApiBody>) -> Done {
        Done {
            route,
            consumer,
            resp,
            cache: "none",
            upstream_status: None,
            queued: Duration::ZERO,
        }
    }
}

/// Serves one API request (any body type: hyper's on the listener, axum's in process).
pub async fn handle<B>(state: &Arc<AppState>, mut req: http::Request<B>) -> Response<ApiBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    // Keys never show in a Debug rendering of the headers.
    for name in [&header::AUTHORIZATION, &X_API_KEY] {
        if let Some(v) = req.headers_mut().get_mut(name) {
            v.set_sensitive(true);
        }
    }
    let id = request_id(req.headers());
    let id_str = id.to_str().unwrap_or_default();
    let method = req.method().clone();
    // A span for diagnostic events at debug level only: at info it would cost more than a hit,
    // and even a disabled one costs something to enter and leave at every poll.
    let mut done = if tracing::enabled!(tracing::Level::DEBUG) {
        let span = tracing::debug_span!("request", request_id = id_str);
        dispatch(state, id_str, req, started).instrument(span).await
    } else {
        dispatch(state, id_str, req, started).await
    };
    let status = done.resp.status().as_u16();
    let route = done.route.map_or(OTHER_ROUTE, RouteKind::index);
    let consumer = done.consumer.as_ref().unwrap_or(&state.hot.unauthenticated);
    state.hot.count_request(&state.metrics, consumer, route, status);
    let elapsed = started.elapsed();
    state.hot.durations[route].observe(elapsed.as_secs_f64());
    state.access_log.record(&Line {
        request_id: id_str,
        method: method.as_str(),
        route: route_name(route),
        consumer: consumer.as_str(),
        tenant: None,
        cache: done.cache,
        status,
        upstream_status: done.upstream_status,
        queued: done.queued,
        duration: elapsed,
    });
    done.resp.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    done.resp
}

/// The cache key a fresh hit for `target` would be stored under ([`Proxy::cache_key`], the
/// one place keys are made), and its metrics kind (0 for incidents, 1 for lists).
fn hit_key(target: &Target) -> Option<(Key, usize)> {
    let key = Proxy::cache_key(target)?;
    let kind = usize::from(key.is_list());
    Some((key, kind))
}

/// Which facade a path belongs to, before it is parsed: its errors use that facade's envelope.
fn facade_view(path: &str) -> View {
    if path.starts_with(GRAPH_VERSION_PREFIX) {
        View::Graph
    } else {
        View::Defender
    }
}

const GRAPH_VERSION_PREFIX: &str = "/v1.0/";

/// Parses a request of either facade.
fn parse_target(state: &AppState, parts: &http::request::Parts) -> Result<Target, ApiError> {
    let (method, path, query) = (&parts.method, parts.uri.path(), parts.uri.query());
    if !path.starts_with(GRAPH_VERSION_PREFIX) {
        return target::parse(method, path, query);
    }
    // Microsoft's Graph SDKs, given a base URL the usual way, send `/v1.0//security/...` (Graph
    // accepts it); that one doubled slash after the version is read as one.
    let single;
    let path = match path.strip_prefix("/v1.0//") {
        Some(rest) if !rest.starts_with('/') => {
            single = format!("/v1.0/{rest}");
            single.as_str()
        }
        _ => path,
    };
    Ok(match graph_target::parse(method, path, query)? {
        GraphTarget::GetIncident { id, expand_alerts } => Target::GraphGet { id, expand_alerts },
        GraphTarget::ListIncidents(raw) => {
            let query = GraphListQuery::parse(&raw).map_err(|e| ApiError::bad_request(e.message))?;
            Target::GraphList {
                query,
                base: graph_base(state, &parts.headers).into(),
            }
        }
        GraphTarget::UpdateIncident(id) => Target::GraphUpdate(id),
        GraphTarget::CommentIncident(id) => Target::GraphComment(id),
    })
}

/// The proxy's Graph collection URL as the caller reaches it: `server.public_url`, else
/// `http://` and the request's `Host` (lowercased) when it is a plain host name or address
/// (never anything that could inject into a link), else `localhost`. Behind a TLS-terminating
/// ingress set `server.public_url`, or tools follow `http://` links.
fn graph_base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return format!("{url}{}", graph_target::GRAPH_PREFIX);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        })
        .unwrap_or("localhost");
    format!("http://{}{}", host.to_ascii_lowercase(), graph_target::GRAPH_PREFIX)
}

/// Authenticates, parses and runs one request.
async fn dispatch<B>(state: &AppState, id: &str, req: http::Request<B>, started: Instant) -> Done
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let facade = facade_view(req.uri().path());
    let consumer = match state.consumers.read().authenticate(req.headers()) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = %e, "caller not authenticated");
            return Done::refused(None, None, error_response(ApiError::Unauthenticated.into(), id, facade));
        }
    };
    let name = Some(consumer.name.clone());
    if let Some(rate) = &consumer.rate {
        if let Err(wait) = rate.check() {
            return Done::refused(
                None,
                name,
                caller_rate_response(state, &consumer.name, rate, wait, id, facade),
            );
        }
    }
    let (parts, body) = req.into_parts();
    let target = match parse_target(state, &parts) {
        Ok(t) => t,
        Err(e) => return Done::refused(None, name, error_response(e.into(), id, facade)),
    };
    let view = target.view();
    let route = target.route();
    let spec = route.spec();
    let refused = |what| {
        let e = ApiError::Forbidden(consumer.name.as_str().into(), what);
        Done::refused(Some(route), name.clone(), error_response(e.into(), id, view))
    };
    if spec.writes && !consumer.write {
        return refused("update incidents");
    }
    if !spec.writes && !consumer.read {
        return refused("read incidents");
    }
    let preferred = if parts.headers.contains_key(&PREFER) {
        target::preferred_wait(&parts.headers, state.max_wait_cap)
    } else {
        None
    };
    let directives = Directives::from_headers(&parts.headers);
    let mut done = match hit_key(&target)
        .and_then(|(key, kind)| Some((state.proxy.lookup(&key, view, &directives, started)?, kind)))
    {
        // A fresh hit needs no place under max_concurrency: it never waits behind other work.
        Some((answer, kind)) => {
            let negative = answer.status == StatusCode::NOT_FOUND;
            state.hot.lookups[kind][usize::from(negative)].inc();
            Done {
                route: Some(route),
                consumer: name,
                cache: answer.cache.label(),
                upstream_status: answer.upstream_status,
                queued: answer.queued,
                resp: answer_response(&state.hot, answer),
            }
        }
        None => {
            let req = http::Request::from_parts(parts, body);
            work(state, id, req, target, directives, preferred, &consumer).await
        }
    };
    if let Some(d) = preferred {
        let mut buf = itoa::Buffer::new();
        let v = format!("wait={}", buf.format(d.as_secs()));
        if let Ok(v) = HeaderValue::try_from(v) {
            done.resp.headers_mut().insert("preference-applied", v);
        }
    }
    done
}

/// A write's body, read, checked and translated into the upstream's dialect: a body we would
/// refuse spends nothing.
async fn write_plan<B>(state: &AppState, req: http::Request<B>, target: &Target) -> Result<WritePlan, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let body = read_json_body(req, state.max_body_bytes, state.body_read_timeout).await?;
    let upstream = state.proxy.upstream_api();
    let bad = |e: TranslateError| ApiError::bad_request(e.to_string());
    match target {
        Target::UpdateIncident(_) => {
            let update = target::Update::parse(body)?;
            update::plan_defender_patch(upstream, &update.into_bytes()).map_err(bad)
        }
        Target::GraphUpdate(_) => update::plan_graph_patch(upstream, &body).map_err(bad),
        Target::GraphComment(_) => update::plan_graph_comment(upstream, &body).map_err(bad),
        _ => Err(ApiError::MethodNotAllowed("this route takes no body".into())),
    }
}

/// Everything but a fresh hit: body, a place under max_concurrency, then the proxy.
async fn work<B>(
    state: &AppState,
    id: &str,
    req: http::Request<B>,
    target: Target,
    directives: Directives,
    preferred: Option<Duration>,
    consumer: &crate::auth::Consumer,
) -> Done
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let route = target.route();
    let view = target.view();
    let name = Some(consumer.name.clone());
    let mut caller = consumer.caller.clone();
    if target::prefers_batch(req.headers()) {
        // A caller may lower its own priority, never raise it.
        caller.priority = crate::budget::Priority::Batch;
    }
    // The body first (read and validated: a body we would refuse spends nothing); waiting for
    // a client is not work, so it takes no place.
    let plan = if route.spec().writes {
        match write_plan(state, req, &target).await {
            Ok(p) => Some(p),
            Err(e) => return Done::refused(Some(route), name, error_response(e.into(), id, view)),
        }
    } else {
        None
    };
    let permit = match take_place(state).await {
        Ok(p) => p,
        Err(e) => {
            state
                .metrics
                .rejected
                .get_or_create(&RejectLabels {
                    route: route.name(),
                    reason: "overloaded",
                })
                .inc();
            return Done::refused(Some(route), name, error_response(e.into(), id, view));
        }
    };
    let ctx = Ctx {
        request_id: id.to_string(),
        caller,
        directives,
        wait: preferred.unwrap_or(state.max_wait),
        work: WorkPermit::new(permit),
    };
    let proxy = &state.proxy;
    let outcome = match (target, plan) {
        (Target::GetIncident(incident), _) => proxy.get_incident(incident, view, ctx).await,
        (Target::GraphGet { id: incident, .. }, _) => proxy.get_incident(incident, view, ctx).await,
        (Target::ListIncidents(query), _) => proxy.list_incidents(&query, ctx).await,
        (Target::GraphList { query, base }, _) => proxy.list_graph(&query, &base, ctx).await,
        (
            Target::UpdateIncident(incident) | Target::GraphUpdate(incident) | Target::GraphComment(incident),
            Some(plan),
        ) => proxy.write(incident, plan, view, ctx).await,
        (_, None) => Err(ApiError::MethodNotAllowed("a write without a body".into()).into()),
    };
    match outcome {
        Ok(answer) => Done {
            route: Some(route),
            consumer: name,
            cache: answer.cache.label(),
            upstream_status: answer.upstream_status,
            queued: answer.queued,
            resp: answer_response(&state.hot, answer),
        },
        Err(failure) => Done {
            route: Some(route),
            consumer: name,
            cache: "none",
            upstream_status: failure.upstream_status,
            queued: Duration::ZERO,
            resp: error_response(failure, id, view),
        },
    }
}

/// A place under `server.max_concurrency`, waiting at most `server.max_concurrency_wait`.
async fn take_place(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    if let Ok(p) = state.work.clone().try_acquire_owned() {
        return Ok(p);
    }
    match tokio::time::timeout(state.max_concurrency_wait, state.work.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ApiError::Overloaded),
    }
}

/// 429 for a consumer over its own request-rate ceiling, with `RateLimit` headers describing that
/// ceiling (not the upstream quota).
fn caller_rate_response(
    state: &AppState,
    consumer: &str,
    rate: &crate::auth::CallerRate,
    wait: Duration,
    id: &str,
    view: View,
) -> Response<ApiBody> {
    state
        .metrics
        .rejected
        .get_or_create(&RejectLabels {
            route: "any",
            reason: "caller_rate",
        })
        .inc();
    state
        .metrics
        .consumer_rejected
        .get_or_create(&crate::metrics::ConsumerRejectLabels {
            route: "any",
            consumer: consumer.to_string(),
            reason: "caller_rate",
        })
        .inc();
    let error = ApiError::Throttled {
        retry_after: wait,
        message: format!(
            "consumer '{consumer}' exceeds its ceiling of {} requests per second to the proxy",
            rate.per_second
        )
        .into(),
    };
    let mut resp = error_response(error.into(), id, view);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(format!("\"consumer\";q={};w=1", rate.burst)) {
        h.insert("ratelimit-policy", v);
    }
    let reset = crate::error::retry_after_secs(wait);
    if let Ok(v) = HeaderValue::try_from(format!("\"consumer\";r=0;t={reset}")) {
        h.insert("ratelimit", v);
    }
    resp
}

/// PATCH bodies: JSON only, bounded in size and in time; nothing is spent on a body we would
/// refuse, nor on one that does not arrive.
async fn read_json_body<B>(req: http::Request<B>, limit: usize, timeout: Duration) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::RequestTimeout(timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge(limit)),
        Ok(Err(_)) => Err(ApiError::bad_request("the request body could not be read")),
    }
}

fn answer_response(hot: &HotPath, answer: Answer) -> Response<ApiBody> {
    let mut resp = Response::new(Either::Left(Full::new(answer.body)));
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, answer.content_type);
    if let Some(v) = hot.cache_status(&answer.cache) {
        h.insert(CACHE_STATUS.clone(), v);
    }
    if let Some(age) = answer.age {
        h.insert(header::AGE, hot.seconds(age.as_secs()));
    }
    if let Some((route, windows)) = &answer.budget {
        rate_limit_headers(h, *route, windows);
    }
    resp
}

/// An error in the caller's dialect: Defender's envelope (`target` = request id), or Graph's
/// (`innerError.request-id`), with the status chosen in [`ApiError::status`].
fn error_response(failure: Failure, id: &str, view: View) -> Response<ApiBody> {
    let cache = failure.cache();
    let mut resp = if view.is_graph() {
        let e = &failure.error;
        let date = dialect_error::graph_error_date(time::OffsetDateTime::now_utc());
        let body = dialect_error::graph_envelope(
            dialect_error::graph_code(e.code(), e.status().as_u16()),
            &e.to_string(),
            id,
            None,
            &date,
        );
        failure.error.into_response_with_body(body)
    } else {
        failure.error.into_response_with_target(id)
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(cache.header()) {
        h.insert(CACHE_STATUS.clone(), v);
    }
    if let Some((route, windows)) = &failure.budget {
        rate_limit_headers(h, *route, windows);
    }
    resp.map(Either::Right)
}

/// `RateLimit-Policy` lists every quota of the route; `RateLimit` reports the one that binds.
fn rate_limit_headers(h: &mut HeaderMap, route: RouteKind, windows: &[WindowStatus]) {
    let name = |w: &WindowStatus| format!("\"{}-{}s\"", route.name(), w.quota.length.as_secs());
    let policy: Vec<String> = windows
        .iter()
        .map(|w| format!("{};q={};w={}", name(w), w.quota.limit, w.quota.length.as_secs()))
        .collect();
    if let Ok(v) = HeaderValue::try_from(policy.join(", ")) {
        h.insert("ratelimit-policy", v);
    }
    if let Some(b) = binding(windows) {
        let reset = b.reset.as_secs() + u64::from(b.reset.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::try_from(format!("{};r={};t={}", name(b), b.remaining, reset)) {
            h.insert("ratelimit", v);
        }
    }
}

/// Refreshes the state-mirroring gauges, then renders every metric: OpenMetrics when the scraper
/// asks for it (Prometheus does), the classic text format otherwise.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let m = &state.metrics;
    for route in RouteKind::ALL {
        let status = state.budget.status(route);
        let labels = RouteLabels { route: route.name() };
        for w in &status.windows {
            let wl = WindowLabels {
                route: route.name(),
                window: format!("{}s", w.quota.length.as_secs()),
            };
            m.budget_remaining.get_or_create(&wl).set(i64::from(w.remaining));
            m.budget_limit.get_or_create(&wl).set(i64::from(w.quota.limit));
        }
        m.queue_depth.get_or_create(&labels).set(status.queued as i64);
        for f in &status.flows {
            m.consumer_queue_depth
                .get_or_create(&crate::metrics::ConsumerLabels {
                    route: route.name(),
                    consumer: f.flow.clone(),
                })
                .set(f.queued as i64);
        }
        m.queue_capacity
            .get_or_create(&labels)
            .set(status.queue_capacity as i64);
        m.frozen_seconds
            .get_or_create(&labels)
            .set(status.frozen_for.map_or(0.0, |d| d.as_secs_f64()));
    }
    if let Some(sync) = &state.sync {
        m.sync_lag
            .set(sync.status(Instant::now()).lag_seconds.unwrap_or(f64::NAN));
    }
    let usage = state.store.usage();
    m.cache_entries.set(usage.entries as i64);
    m.cache_bytes.set(usage.bytes as i64);
    let tokens = &state.tokens;
    if let Some(exp) = tokens.expires_at_unix() {
        m.token_expiry.set(exp as i64);
    }
    for (code, n) in tokens.failures() {
        let c = m
            .token_refresh_failures
            .get_or_create(&crate::metrics::CodeLabels { code });
        let seen = c.get();
        if n > seen {
            c.inc_by(n - seen);
        }
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m.encode(),
        )
            .into_response()
    } else {
        let text = crate::metrics::to_prometheus_text(&m.encode());
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response()
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let accepting = state.accepting.load(Ordering::SeqCst);
    let token = state.tokens.ready();
    let frozen: Vec<serde_json::Value> = RouteKind::ALL
        .iter()
        .filter_map(|r| {
            state
                .budget
                .status(*r)
                .frozen_for
                .map(|d| serde_json::json!({"route": r.name(), "frozen_seconds": d.as_secs_f64()}))
        })
        .collect();
    let ready = accepting && token;
    let sync = state.sync.as_ref().map(|s| s.status(Instant::now()));
    let queues: Vec<serde_json::Value> = RouteKind::ALL
        .iter()
        .map(|r| {
            let st = state.budget.status(*r);
            serde_json::json!({"route": r.name(), "queued": st.queued, "capacity": st.queue_capacity, "consumers": st.flows})
        })
        .collect();
    let body = serde_json::json!({
        "ready": ready,
        "queues": queues,
        "accepting": accepting,
        "upstream_token": if token { "ok" } else { "unavailable" },
        "frozen_routes": frozen,
        "sync": sync,
        "shared": state.budget.shared_detail(),
        // Limits adopted from the upstream's 429 text, stricter than the configuration.
        "learnt_limits": state.budget.learnt().iter().flat_map(|l| l.after.iter().map(|q| serde_json::json!({
            "pool": l.pool, "limit": q.limit, "window_seconds": q.length.as_secs()
        }))).collect::<Vec<_>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
