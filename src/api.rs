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
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::Instrument;

use crate::{
    access_log::{AccessLog, Line},
    auth::{Consumer, Consumers, Rights},
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
    metrics::{route_name, RejectLabels, RequestMetrics},
    odata::GraphListQuery,
    proxy::{Answer, CacheResult, Ctx, Failure, Proxy, WorkPermit},
    route::RouteKind,
    target::{self, Directives, Target},
    tenant::{Common, Tenant, Tenants},
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
    /// The tenants served, swapped whole (with the consumers) when a reload adds or removes one.
    pub tenants: RwLock<Arc<Tenants>>,
    /// Swapped whole on SIGHUP.
    pub consumers: RwLock<Arc<Consumers>>,
    /// What a tenant added by a reload is built with.
    pub common: Arc<Common>,
    pub metrics: Arc<Metrics>,
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
    /// Requests that reach no tenant (unauthenticated, unknown tenant) are counted here.
    untenanted: RequestMetrics,
    /// One scrape at a time sets the mirroring gauges (they are cleared first, so a removed
    /// tenant's series go).
    scrape: parking_lot::Mutex<()>,
    hot: HotPath,
}

/// Settings of [`AppState`] that come from the configuration.
pub struct Limits {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub max_concurrency: usize,
    pub max_concurrency_wait: Duration,
    pub public_url: Option<String>,
}

impl AppState {
    pub fn new(
        tenants: Tenants,
        common: Arc<Common>,
        consumers: Consumers,
        limits: Limits,
        access_log: Arc<AccessLog>,
    ) -> AppState {
        let metrics = common.metrics.clone();
        AppState {
            tenants: RwLock::new(Arc::new(tenants)),
            consumers: RwLock::new(Arc::new(consumers)),
            untenanted: RequestMetrics::new(&metrics, Arc::new(String::new())),
            scrape: parking_lot::Mutex::new(()),
            hot: HotPath::new(),
            common,
            metrics,
            max_body_bytes: limits.max_body_bytes,
            body_read_timeout: limits.body_read_timeout,
            work: Arc::new(Semaphore::new(limits.max_concurrency)),
            max_concurrency_wait: limits.max_concurrency_wait,
            public_url: limits.public_url.map(|u| Arc::from(u.trim_end_matches('/'))),
            access_log,
            accepting: true.into(),
        }
    }

    /// A tenant served now, by name.
    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.read().get(name).cloned()
    }
}

/// Header values made once and reused.
struct HotPath {
    unauthenticated: Arc<String>,
    hit_status: Box<[OnceLock<HeaderValue>]>,
    seconds: Box<[OnceLock<HeaderValue>]>,
}

impl HotPath {
    fn new() -> HotPath {
        HotPath {
            unauthenticated: Arc::new("unauthenticated".to_string()),
            hit_status: (0..PRECOMPUTED_SECONDS).map(|_| OnceLock::new()).collect(),
            seconds: (0..PRECOMPUTED_SECONDS).map(|_| OnceLock::new()).collect(),
        }
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
    /// The tenant the request was for, once known.
    tenant: Option<Arc<Tenant>>,
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
            tenant: None,
            resp,
            cache: "none",
            upstream_status: None,
            queued: Duration::ZERO,
        }
    }

    /// The request was for `tenant` (its metrics and access-log line say so).
    fn in_tenant(mut self, tenant: Arc<Tenant>) -> Done {
        self.tenant = Some(tenant);
        self
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
    let elapsed = started.elapsed();
    let counted = done.tenant.as_ref().map_or(&state.untenanted, |t| &t.requests);
    counted.answered(&state.metrics, consumer, route, status, elapsed.as_secs_f64());
    state.access_log.record(&Line {
        request_id: id_str,
        method: method.as_str(),
        route: route_name(route),
        consumer: consumer.as_str(),
        tenant: done.tenant.as_ref().map(|t| t.name.as_str()),
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

/// Where a request names its tenant: `/tenants/{name}` before the facade's path.
const TENANTS_PREFIX: &str = "/tenants/";

/// A request's path split into its tenant (when it names one) and the facade's path.
struct Routed<'a> {
    tenant: Option<&'a str>,
    /// The facade's path: `/api/...` or `/v1.0/...`.
    path: &'a str,
    /// What comes before it (`/tenants/{name}`, or nothing): links the proxy makes keep it.
    prefix: &'a str,
}

fn route_path(path: &str) -> Routed<'_> {
    if let Some(rest) = path.strip_prefix(TENANTS_PREFIX) {
        let (name, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        return Routed {
            tenant: Some(name),
            path: tail,
            prefix: &path[..TENANTS_PREFIX.len() + name.len()],
        };
    }
    Routed {
        tenant: None,
        path,
        prefix: "",
    }
}

/// Parses a request of either facade (`path` without any tenant prefix, which `prefix` holds).
fn parse_target(state: &AppState, parts: &http::request::Parts, path: &str, prefix: &str) -> Result<Target, ApiError> {
    let (method, query) = (&parts.method, parts.uri.query());
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
                base: graph_base(state, &parts.headers, prefix).into(),
            }
        }
        GraphTarget::UpdateIncident(id) => Target::GraphUpdate(id),
        GraphTarget::CommentIncident(id) => Target::GraphComment(id),
    })
}

/// The proxy's Graph collection URL as the caller reaches it: `server.public_url`, else
/// `http://` and the request's `Host` (lowercased) when it is a plain host name or address
/// (never anything that could inject into a link), else `localhost`. Behind a TLS-terminating
/// ingress set `server.public_url`, or tools follow `http://` links. A tenant's prefix
/// (`/tenants/{name}`) stays in the links, so the next page goes to the same tenant.
fn graph_base(state: &AppState, headers: &HeaderMap, prefix: &str) -> String {
    if let Some(url) = &state.public_url {
        return format!("{url}{prefix}{}", graph_target::GRAPH_PREFIX);
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
    format!(
        "http://{}{prefix}{}",
        host.to_ascii_lowercase(),
        graph_target::GRAPH_PREFIX
    )
}

/// Authenticates, finds the tenant, parses and runs one request.
async fn dispatch<B>(state: &AppState, id: &str, req: http::Request<B>, started: Instant) -> Done
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let routed = route_path(parts.uri.path());
    let facade = facade_view(routed.path);
    let (consumer, tenant, rights) = match admit(state, id, &parts.headers, &routed, facade) {
        Ok(admitted) => admitted,
        Err(done) => return *done,
    };
    let name = Some(consumer.name.clone());
    let target = match parse_target(state, &parts, routed.path, routed.prefix) {
        Ok(t) => t,
        Err(e) => return Done::refused(None, name, error_response(e.into(), id, facade)).in_tenant(tenant),
    };
    let view = target.view();
    let route = target.route();
    let spec = route.spec();
    let refused = |what| {
        let e = ApiError::Forbidden(consumer.name.as_str().into(), what);
        Done::refused(Some(route), name.clone(), error_response(e.into(), id, view)).in_tenant(tenant.clone())
    };
    if spec.writes && !rights.write {
        return refused("update incidents");
    }
    if !spec.writes && !rights.read {
        return refused("read incidents");
    }
    let budget = &tenant.config.budget;
    let preferred = if parts.headers.contains_key(&PREFER) {
        target::preferred_wait(&parts.headers, budget.max_wait_cap)
    } else {
        None
    };
    let directives = Directives::from_headers(&parts.headers);
    let mut done = match hit_key(&target)
        .and_then(|(key, kind)| Some((tenant.proxy.lookup(&key, view, &directives, started)?, kind)))
    {
        // A fresh hit needs no place under max_concurrency: it never waits behind other work.
        Some((answer, kind)) => {
            tenant.requests.hit(kind, answer.status == StatusCode::NOT_FOUND);
            Done {
                route: Some(route),
                consumer: name,
                tenant: Some(tenant),
                cache: answer.cache.label(),
                upstream_status: answer.upstream_status,
                queued: answer.queued,
                resp: answer_response(&state.hot, answer),
            }
        }
        None => {
            let req = http::Request::from_parts(parts, body);
            let asked = Asked {
                target,
                directives,
                preferred,
            };
            work(state, id, req, asked, &consumer, tenant).await
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

/// Who is calling and for which tenant, with its rights there; or the answer that refuses it
/// (401, the consumer's own rate ceiling, 404 or 400 for the tenant). The consumers and the
/// tenants are read as one snapshot: a reload swaps both under the same two locks, taken in
/// this order.
fn admit(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    routed: &Routed<'_>,
    facade: View,
) -> Result<(Arc<Consumer>, Arc<Tenant>, Rights), Box<Done>> {
    let consumers = state.consumers.read();
    let consumer = match consumers.authenticate(headers) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = %e, "caller not authenticated");
            let e = ApiError::Unauthenticated.into();
            return Err(Box::new(Done::refused(None, None, error_response(e, id, facade))));
        }
    };
    let name = Some(consumer.name.clone());
    if let Some(rate) = &consumer.rate {
        if let Err(wait) = rate.check() {
            let resp = caller_rate_response(state, &consumer.name, rate, wait, id, facade);
            return Err(Box::new(Done::refused(None, name, resp)));
        }
    }
    match find_tenant(state, &consumer, routed) {
        Ok((tenant, rights)) => Ok((consumer, tenant, rights)),
        Err(e) => Err(Box::new(Done::refused(
            None,
            name,
            error_response(e.into(), id, facade),
        ))),
    }
}

/// The tenant a request is for, and the consumer's rights there: the one its path names
/// (`/tenants/{name}/...`), else the consumer's only tenant. A tenant that does not exist and
/// one the consumer is not granted get the same 404, before anything is parsed or spent, so the
/// answer never tells whether a tenant exists.
fn find_tenant(state: &AppState, consumer: &Consumer, routed: &Routed<'_>) -> Result<(Arc<Tenant>, Rights), ApiError> {
    let tenants = state.tenants.read();
    let not_found = || ApiError::NotFound(format!("{}{}", routed.prefix, routed.path).into());
    let found = match routed.tenant {
        Some(name) => tenants
            .get(name)
            .and_then(|t| Some((t.clone(), consumer.rights_in(name)?)))
            .filter(|_| routed.path.starts_with(API_PREFIX) || routed.path.starts_with(GRAPH_VERSION_PREFIX)),
        None => match consumer.sole_tenant(tenants.names()) {
            Some(name) => tenants
                .get(name)
                .and_then(|t| Some((t.clone(), consumer.rights_in(name)?))),
            None if tenants.names().iter().filter(|t| consumer.rights_in(t).is_some()).count() > 1 => {
                return Err(ApiError::bad_request(
                    "this consumer reaches several tenants: name one in the path, as /tenants/{name}/api/incidents/... \
                     or /tenants/{name}/v1.0/security/incidents/...",
                ))
            }
            None => None,
        },
    };
    found.ok_or_else(|| {
        if let Some(name) = routed.tenant {
            tracing::info!(
                consumer = consumer.name.as_str(),
                tenant = %name.chars().take(64).collect::<String>().escape_debug(),
                "a consumer asked for a tenant that does not exist or that it is not granted"
            );
        }
        not_found()
    })
}

const API_PREFIX: &str = "/api/";

/// A write's body, read, checked and translated into the upstream's dialect: a body we would
/// refuse spends nothing.
async fn write_plan<B>(
    state: &AppState,
    tenant: &Tenant,
    req: http::Request<B>,
    target: &Target,
) -> Result<WritePlan, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let body = read_json_body(req, state.max_body_bytes, state.body_read_timeout).await?;
    let upstream = tenant.proxy.upstream_api();
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

/// What a request asks for, parsed: the target and the caller's cache and wait preferences.
struct Asked {
    target: Target,
    directives: Directives,
    preferred: Option<Duration>,
}

/// Everything but a fresh hit: body, a place under max_concurrency, then the tenant's proxy.
async fn work<B>(
    state: &AppState,
    id: &str,
    req: http::Request<B>,
    asked: Asked,
    consumer: &Consumer,
    tenant: Arc<Tenant>,
) -> Done
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Asked {
        target,
        directives,
        preferred,
    } = asked;
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
        match write_plan(state, &tenant, req, &target).await {
            Ok(p) => Some(p),
            Err(e) => return Done::refused(Some(route), name, error_response(e.into(), id, view)).in_tenant(tenant),
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
                    tenant: tenant.name.clone(),
                    route: route.name(),
                    reason: "overloaded",
                })
                .inc();
            return Done::refused(Some(route), name, error_response(e.into(), id, view)).in_tenant(tenant);
        }
    };
    let ctx = Ctx {
        request_id: id.to_string(),
        caller,
        directives,
        wait: preferred.unwrap_or(tenant.config.budget.max_wait),
        work: WorkPermit::new(permit),
    };
    let proxy = &tenant.proxy;
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
            tenant: Some(tenant),
            cache: answer.cache.label(),
            upstream_status: answer.upstream_status,
            queued: answer.queued,
            resp: answer_response(&state.hot, answer),
        },
        Err(failure) => Done {
            route: Some(route),
            consumer: name,
            tenant: Some(tenant),
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
            tenant: state.untenanted.tenant().clone(),
            route: "any",
            reason: "caller_rate",
        })
        .inc();
    state
        .metrics
        .consumer_rejected
        .get_or_create(&crate::metrics::ConsumerRejectLabels {
            tenant: state.untenanted.tenant().clone(),
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
    if let Some(windows) = &answer.budget {
        rate_limit_headers(h, windows);
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
    if let Some(windows) = &failure.budget {
        rate_limit_headers(h, windows);
    }
    resp.map(Either::Right)
}

/// `RateLimit-Policy` lists every quota the route draws from (its pool's, then any further
/// pool's), each named `<pool>-<window>s` (a route's own pool is named like the route);
/// `RateLimit` reports the one that binds. Pools every tenant shares are left out: their
/// standing tells how much other tenants spend.
fn rate_limit_headers(h: &mut HeaderMap, windows: &[WindowStatus]) {
    let shown = || windows.iter().filter(|w| !w.across_tenants);
    let name = |w: &WindowStatus| format!("\"{}-{}s\"", w.pool, w.quota.length.as_secs());
    let policy: Vec<String> = shown()
        .map(|w| format!("{};q={};w={}", name(w), w.quota.limit, w.quota.length.as_secs()))
        .collect();
    if let Ok(v) = HeaderValue::try_from(policy.join(", ")) {
        h.insert("ratelimit-policy", v);
    }
    if let Some(b) = binding(shown()) {
        let reset = b.reset.as_secs() + u64::from(b.reset.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::try_from(format!("{};r={};t={}", name(b), b.remaining, reset)) {
            h.insert("ratelimit", v);
        }
    }
}

/// Refreshes the state-mirroring gauges, then renders every metric: OpenMetrics when the scraper
/// asks for it (Prometheus does), the classic text format otherwise.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let text = {
        let _one = state.scrape.lock();
        let m = &state.metrics;
        // Mirrors are set afresh: a tenant removed by a reload (or a flow no longer queued)
        // leaves no series behind.
        m.clear_mirrors();
        for tenant in state.tenants.read().iter() {
            tenant.export_gauges();
        }
        m.encode()
    };
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
            text,
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            crate::metrics::to_prometheus_text(&text),
        )
            .into_response()
    }
}

/// Ready while accepting and at least one tenant can reach its upstream: one customer's revoked
/// consent must not take the proxy out of service for every other tenant (its own state is in
/// the detail). With one tenant, its detail is also at the top level, as before tenants.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let accepting = state.accepting.load(Ordering::SeqCst);
    let tenants = state.tenants.read().clone();
    let any_token = tenants.iter().any(|t| t.ready());
    let ready = accepting && any_token;
    let detail: serde_json::Map<String, serde_json::Value> =
        tenants.iter().map(|t| (t.name.to_string(), t.readiness())).collect();
    let mut body = serde_json::json!({
        "ready": ready,
        "accepting": accepting,
        "shared": tenants.iter().find_map(|t| t.budget.shared_detail()),
    });
    if let (Some(serde_json::Value::Object(only)), 1) = (detail.values().next(), detail.len()) {
        if let Some(top) = body.as_object_mut() {
            top.extend(only.clone());
        }
    }
    body["tenants"] = serde_json::Value::Object(detail);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
