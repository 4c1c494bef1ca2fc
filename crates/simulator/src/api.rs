//! The simulated Defender API routes: authentication, fault injection, quota and the three
//! incident methods, answered with the upstream's bodies, headers and error envelopes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::faults::FaultKind;
use crate::http::{close_connection, ok_json, parse_incident_id, CloseConnection};
use crate::quota::{throttle_message, Admission};
use crate::stats::CallOutcome;
use crate::store::parse_update;
use crate::tenant::{Caller, Tenancy};
use crate::token::Audience;
use crate::token::AuthError;
use crate::{Shared, SimRoute, HOME};
use defender_odata::ListQuery;

const ERROR_JSON: &str = "application/json; charset=utf-8";
const LIST_CONTEXT: &str = "https://api.security.microsoft.com/api/$metadata#Incidents";
/// The documented maximum (and default) page size of the list method.
const MAX_TOP: u32 = 100;

/// One API call, as received.
enum Call {
    Get { id: String },
    List { query: String },
    Update { id: String, json: bool, body: Bytes },
}

pub(crate) async fn get_incident(
    State(sim): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle(sim, SimRoute::Get, &headers, Call::Get { id }).await
}

pub(crate) async fn list_incidents(
    State(sim): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    handle(sim, SimRoute::List, &headers, Call::List { query }).await
}

pub(crate) async fn update_incident(
    State(sim): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    handle(sim, SimRoute::Update, &headers, Call::Update { id, json, body }).await
}

pub(crate) async fn no_such_route() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "NotFound",
        "The requested resource does not exist.",
        &tracking_id(),
    )
}

/// The order matters and follows the upstream: a call without a valid token is refused before
/// it reaches the quota; every authenticated call is logged against the quota (even one that
/// is then throttled, and even one a fault spoils), except a simulated token revocation.
///
/// The token decides the tenant: its data, quota, faults and stats serve the call. A refused
/// call is counted by the tenant its token names if the simulator issued it, else by the
/// default tenant.
async fn handle(sim: Arc<Shared>, route: SimRoute, headers: &HeaderMap, call: Call) -> Response {
    let arrived = Instant::now();
    let bearer = match sim.tokens.check(headers.get(header::AUTHORIZATION), Audience::Defender) {
        Ok(bearer) => bearer,
        Err(refusal) => {
            let tenant = sim.tenancy(refusal.tenant.unwrap_or(HOME));
            tenant.stats.arrive(route, false);
            let resp = unauthorized(refusal.error);
            tenant.stats.finish(route, CallOutcome::Answered(resp.status()), false);
            return resp;
        }
    };
    let tenant = sim.tenancy(bearer.tenant);
    let caller = Caller {
        tenant,
        app: &bearer.app,
    };
    tenant.stats.arrive(route, true);
    let fault = tenant.faults.lock().pick(route);
    let faulted = fault.is_some();
    let resp = match fault {
        Some(FaultKind::Unauthorized) => unauthorized(AuthError::Revoked),
        fault => {
            let admission = tenant.quota(route).admit(arrived);
            match fault {
                None => answer(caller, &admission, &call, false),
                Some(kind) => apply_fault(&sim, caller, kind, route, &admission, &call).await,
            }
        }
    };
    let outcome = if resp.extensions().get::<CloseConnection>().is_some() {
        CallOutcome::NoAnswer
    } else {
        CallOutcome::Answered(resp.status())
    };
    tenant.stats.finish(route, outcome, faulted);
    resp
}

async fn apply_fault(
    sim: &Shared,
    caller: Caller<'_>,
    kind: FaultKind,
    route: SimRoute,
    admission: &Admission,
    call: &Call,
) -> Response {
    let tenant = caller.tenant;
    match kind {
        FaultKind::Latency { ms } => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => answer(caller, admission, call, false),
                _ = sim.stopping() => close_connection(),
            }
        }
        FaultKind::Hang => {
            sim.stopping().await;
            close_connection()
        }
        FaultKind::Status { code } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            envelope(
                status,
                &status_code_name(status),
                "Simulated upstream failure.",
                &tracking_id(),
            )
        }
        FaultKind::Malformed => {
            let real = answer(caller, admission, call, false);
            let body = axum::body::to_bytes(real.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            // Half a JSON document is never valid JSON.
            let cut = body.slice(..body.len() / 2);
            ok_json(cut)
        }
        FaultKind::WrongId => answer(caller, admission, call, true),
        FaultKind::Throttle { retry_after_secs } => {
            let (limit, window) = tenant
                .quota(route)
                .quotas()
                .first()
                .map_or((100, Duration::from_secs(60)), |q| (q.limit, q.window));
            throttled(tenant, limit, window, retry_after_secs)
        }
        FaultKind::StatedThrottle {
            limit,
            window_secs,
            retry_after_secs,
        } => throttled(tenant, limit, Duration::from_secs(window_secs), retry_after_secs),
        FaultKind::Reset => close_connection(),
        FaultKind::Unauthorized => unauthorized(AuthError::Revoked),
        FaultKind::RawThrottle { retry_after, message } => {
            let message = message.unwrap_or_else(|| "API calls quota exceeded!".to_string());
            let mut resp = envelope(StatusCode::TOO_MANY_REQUESTS, "429", &message, tenant.id());
            if let Some(v) = retry_after.and_then(|v| HeaderValue::try_from(v).ok()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        FaultKind::AppliedThenDelay { ms } => {
            let resp = answer(caller, admission, call, false);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => resp,
                _ = sim.stopping() => close_connection(),
            }
        }
    }
}

/// The real answer, from the caller's tenant; with `wrong_id` a successful answer carries other
/// incidents.
fn answer(caller: Caller<'_>, admission: &Admission, call: &Call, wrong_id: bool) -> Response {
    let tenant = caller.tenant;
    if let Admission::Throttled {
        retry_after_secs,
        limit,
        window,
        ..
    } = admission
    {
        return throttled(tenant, *limit, *window, *retry_after_secs);
    }
    match call {
        Call::Get { id } => {
            let Some(id) = parse_incident_id(id) else {
                return bad_id(id);
            };
            serve_incident(tenant, id, wrong_id)
        }
        Call::List { query } => list(tenant, query, wrong_id),
        Call::Update { id, json, body } => {
            let Some(id) = parse_incident_id(id) else {
                return bad_id(id);
            };
            if !json {
                return envelope(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "The request body must be JSON (Content-Type: application/json).",
                    &tracking_id(),
                );
            }
            let update = match parse_update(body) {
                Ok(u) => u,
                Err(message) => {
                    return envelope(StatusCode::BAD_REQUEST, "InvalidRequestBody", &message, &tracking_id())
                }
            };
            if tenant.update(id, update, caller.app).is_none() {
                return not_found(id);
            }
            serve_incident(tenant, id, wrong_id)
        }
    }
}

/// The incident's current body; with the WrongId fault, another incident's.
fn serve_incident(tenant: &Tenancy, id: i64, wrong_id: bool) -> Response {
    let serve = if wrong_id {
        tenant.store.other_id(id).unwrap_or(id)
    } else {
        id
    };
    match tenant.store.body(serve) {
        Some(body) => ok_json(body),
        None => not_found(id),
    }
}

fn list(tenant: &Tenancy, raw_query: &str, wrong_id: bool) -> Response {
    let query = match ListQuery::parse(raw_query) {
        Ok(q) => q,
        Err(e) => return envelope(StatusCode::BAD_REQUEST, "BadRequest", &e.message, &tracking_id()),
    };
    let top = query.top.map_or(MAX_TOP, |t| t.min(MAX_TOP)) as usize;
    let mut ids = tenant.store.select(query.filter.as_ref(), query.skip.unwrap_or(0), top);
    if wrong_id {
        ids = ids.into_iter().filter_map(|id| tenant.store.other_id(id)).collect();
    }
    let bodies = tenant.store.bodies(&ids);
    let mut out = Vec::with_capacity(bodies.iter().flatten().map(Bytes::len).sum::<usize>() + 128);
    out.extend_from_slice(b"{\"@odata.context\":\"");
    out.extend_from_slice(LIST_CONTEXT.as_bytes());
    out.extend_from_slice(b"\",\"value\":[");
    for (i, body) in bodies.iter().flatten().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(body);
    }
    out.extend_from_slice(b"]}");
    ok_json(Bytes::from(out))
}

fn bad_id(raw: &str) -> Response {
    envelope(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!("The value '{raw}' is not a valid incident id: it must be a 64-bit integer."),
        &tracking_id(),
    )
}

/// A fresh tracking id, as the upstream puts in an error's `target`.
pub(crate) fn tracking_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The upstream's error envelope.
pub(crate) fn envelope(status: StatusCode, code: &str, message: &str, target: &str) -> Response {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "target": target }
    });
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ERROR_JSON))],
        body.to_string(),
    )
        .into_response()
}

fn not_found(id: i64) -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("Incident {id} was not found."),
        &tracking_id(),
    )
}

fn unauthorized(e: AuthError) -> Response {
    let mut resp = envelope(StatusCode::UNAUTHORIZED, "Unauthorized", &e.to_string(), &tracking_id());
    let challenge = match e {
        AuthError::Missing => "Bearer",
        AuthError::Unknown | AuthError::Expired | AuthError::Revoked | AuthError::WrongAudience => {
            "Bearer error=\"invalid_token\""
        }
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

/// The upstream's 429: its body names the quota and the wait, its target is the tenant id.
fn throttled(tenant: &Tenancy, limit: u32, window: Duration, retry_after_secs: u64) -> Response {
    let mut resp = envelope(
        StatusCode::TOO_MANY_REQUESTS,
        "429",
        &throttle_message(limit, window, retry_after_secs),
        tenant.id(),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

pub(crate) fn status_code_name(status: StatusCode) -> String {
    match status.as_u16() {
        400 => "BadRequest".into(),
        500 => "InternalServerError".into(),
        502 => "BadGateway".into(),
        503 => "ServiceUnavailable".into(),
        504 => "GatewayTimeout".into(),
        _ => status
            .canonical_reason()
            .map(|r| r.split_whitespace().collect::<String>())
            .unwrap_or_else(|| status.as_u16().to_string()),
    }
}
