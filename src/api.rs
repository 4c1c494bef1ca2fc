//! HTTP in and out: turns a request into a call on [`Proxy`] and its outcome into a response.
//!
//! Order per request: request id, authentication (before anything is looked up, so a cached
//! incident is never shown to an unknown caller), route parsing, rights, then the proxy. Every
//! answer carries `X-Request-Id` and `Cache-Status`; answers that involved the budget carry
//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers). The admin router
//! serves `/metrics`, `/livez` and `/readyz` on its own listener.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use parking_lot::RwLock;
use tokio::time::Instant;
use tracing::{field::Empty, Instrument};

use crate::{
    auth::Consumers,
    budget::{binding, WindowStatus},
    error::ApiError,
    metrics::{RequestLabels, RouteLabels, WindowLabels},
    proxy::{Answer, Ctx, Failure, Proxy},
    route::RouteKind,
    target::{self, Directives, Target},
    Metrics,
};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the handlers share.
pub struct AppState {
    pub proxy: Arc<Proxy>,
    /// The incident sync's state, when it runs (for `/readyz` and metrics).
    pub sync: Option<Arc<crate::sync::SyncState>>,
    /// Swapped whole on SIGHUP.
    pub consumers: RwLock<Arc<Consumers>>,
    pub metrics: Arc<Metrics>,
    pub max_wait: Duration,
    pub max_wait_cap: Duration,
    pub max_body_bytes: usize,
    /// False from the moment shutdown starts.
    pub accepting: AtomicBool,
}

/// The API listener's router: every path goes through [`handle`], which knows the routes.
pub fn api_router(state: Arc<AppState>, max_concurrency: usize) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(state)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max_concurrency))
        .layer(tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ]))
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
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        route = Empty,
        consumer = Empty,
        cache = Empty,
        upstream_status = Empty,
        queued_ms = Empty,
    );
    async move {
        let (route, consumer, mut resp) = dispatch(&state, &id, req).await;
        let status = resp.status().as_u16();
        let route_name = route.map_or("other", RouteKind::name);
        let consumer = consumer.unwrap_or_else(|| Arc::new("unauthenticated".to_string()));
        state
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                route: route_name,
                status,
                consumer,
            })
            .inc();
        state
            .metrics
            .request_duration
            .get_or_create(&RouteLabels { route: route_name })
            .observe(started.elapsed().as_secs_f64());
        if let Ok(v) = HeaderValue::try_from(id.as_str()) {
            resp.headers_mut().insert(REQUEST_ID.clone(), v);
        }
        tracing::info!(
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
        resp
    }
    .instrument(span)
    .await
}

/// Authenticates, parses and runs one request; returns what metrics need to label it.
async fn dispatch(state: &AppState, id: &str, req: Request) -> (Option<RouteKind>, Option<Arc<String>>, Response) {
    let span = tracing::Span::current();
    let consumers = state.consumers.read().clone();
    let consumer = match consumers.authenticate(req.headers()) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = %e, "caller not authenticated");
            return (None, None, error_response(ApiError::Unauthenticated.into(), id));
        }
    };
    span.record("consumer", consumer.name.as_str());
    let name = Some(consumer.name.clone());
    if let Some(rate) = &consumer.rate {
        if let Err(wait) = rate.check() {
            return (None, name, caller_rate_response(state, &consumer.name, rate, wait, id));
        }
    }
    let target = match target::parse(req.method(), req.uri().path(), req.uri().query()) {
        Ok(t) => t,
        Err(e) => return (None, name, error_response(e.into(), id)),
    };
    let route = target.route();
    span.record("route", route.name());
    let spec = route.spec();
    if spec.writes && !consumer.write {
        return (
            Some(route),
            name,
            error_response(
                ApiError::Forbidden(consumer.name.as_str().into(), "update incidents").into(),
                id,
            ),
        );
    }
    if !spec.writes && !consumer.read {
        return (
            Some(route),
            name,
            error_response(
                ApiError::Forbidden(consumer.name.as_str().into(), "read incidents").into(),
                id,
            ),
        );
    }
    let preferred = target::preferred_wait(req.headers(), state.max_wait_cap);
    let mut caller = consumer.caller.clone();
    if target::prefers_batch(req.headers()) {
        // A caller may lower its own priority, never raise it.
        caller.priority = crate::budget::Priority::Batch;
    }
    let ctx = Ctx {
        request_id: id.to_string(),
        caller,
        directives: Directives::from_headers(req.headers()),
        wait: preferred.unwrap_or(state.max_wait),
    };
    let outcome = match target {
        Target::GetIncident(incident) => state.proxy.get_incident(incident, ctx).await,
        Target::ListIncidents(query) => state.proxy.list_incidents(&query, ctx).await,
        Target::UpdateIncident(incident) => match read_json_body(req, state.max_body_bytes).await {
            Ok(body) => state.proxy.update_incident(incident, body, ctx).await,
            Err(e) => Err(e.into()),
        },
    };
    let mut resp = match outcome {
        Ok(answer) => {
            span.record("cache", answer.cache.label());
            if let Some(s) = answer.upstream_status {
                span.record("upstream_status", s);
            }
            span.record("queued_ms", answer.queued.as_millis() as u64);
            answer_response(answer)
        }
        Err(failure) => {
            if let Some(s) = failure.upstream_status {
                span.record("upstream_status", s);
            }
            error_response(failure, id)
        }
    };
    if let Some(d) = preferred {
        if let Ok(v) = HeaderValue::try_from(format!("wait={}", d.as_secs())) {
            resp.headers_mut().insert("preference-applied", v);
        }
    }
    (Some(route), name, resp)
}

/// 429 for a consumer over its own request-rate ceiling, with `RateLimit` headers describing that
/// ceiling (not the upstream quota).
fn caller_rate_response(
    state: &AppState,
    consumer: &str,
    rate: &crate::auth::CallerRate,
    wait: Duration,
    id: &str,
) -> Response {
    state
        .metrics
        .rejected
        .get_or_create(&crate::metrics::RejectLabels {
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
    let mut resp = error_response(error.into(), id);
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

/// PATCH bodies: JSON only, bounded in size; nothing is spent on a body we would refuse.
async fn read_json_body(req: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
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
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge(limit)),
        Err(_) => Err(ApiError::bad_request("the request body could not be read")),
    }
}

fn answer_response(answer: Answer) -> Response {
    let mut resp = Response::new(Body::from(answer.body));
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, answer.content_type);
    if let Ok(v) = HeaderValue::try_from(answer.cache.header()) {
        h.insert(CACHE_STATUS.clone(), v);
    }
    if let Some(age) = answer.age {
        h.insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    if let Some((route, windows)) = &answer.budget {
        rate_limit_headers(h, *route, windows);
    }
    resp
}

fn error_response(failure: Failure, id: &str) -> Response {
    let cache = failure.cache();
    let mut resp = failure.error.into_response_with_target(id);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(cache.header()) {
        h.insert(CACHE_STATUS.clone(), v);
    }
    if let Some((route, windows)) = &failure.budget {
        rate_limit_headers(h, *route, windows);
    }
    resp
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
    let proxy = &state.proxy;
    for route in RouteKind::ALL {
        let status = proxy.budget().status(route);
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
    let usage = proxy.store().usage();
    m.cache_entries.set(usage.entries as i64);
    m.cache_bytes.set(usage.bytes as i64);
    let tokens = proxy.upstream().tokens();
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
    let token = state.proxy.upstream().tokens().ready();
    let frozen: Vec<serde_json::Value> = RouteKind::ALL
        .iter()
        .filter_map(|r| {
            state
                .proxy
                .budget()
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
            let st = state.proxy.budget().status(*r);
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
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
