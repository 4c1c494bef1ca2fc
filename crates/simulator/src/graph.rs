//! The simulated Microsoft Graph security incidents API (`/v1.0/security/incidents`): the same
//! incidents as the Defender routes, rendered natively in Graph's schema, with Graph's paging,
//! errors, token audience, quotas (429 with a possibly fractional `Retry-After`) and faults.
//!
//! The Graph rendering lives in `graph_render`; the update body's enum spellings are read here,
//! from the fact sheet, on purpose independently of the proxy's `dialect`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::faults::FaultKind;
use crate::graph_render::{comments, render_value};
use crate::http::{close_connection, ok_json, parse_incident_id};
use crate::quota::Admission;
use crate::stats::CallOutcome;
use crate::store::Update;
use crate::tenant::{Caller, Tenancy};
use crate::token::Audience;
use crate::token::AuthError;
use crate::{Shared, SimRoute, HOME};
use defender_odata::GraphListQuery;

const CONTEXT_BASE: &str = "https://graph.microsoft.com/v1.0/$metadata#security/incidents";
const ERROR_JSON: &str = "application/json; charset=utf-8";
/// Graph's default page size when `$top` is absent (fact sheet §2.1, inferred).
const DEFAULT_TOP: usize = 50;

// ----- HTTP ------------------------------------------------------------------------------------

/// One Graph call, as received.
enum Call {
    Get { id: String, query: String },
    List { query: String },
    Update { id: String, json: bool, body: Bytes },
    Comment { id: String, json: bool, body: Bytes },
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) async fn get_incident(
    State(sim): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    handle(sim, SimRoute::GraphGet, &headers, Call::Get { id, query }).await
}

pub(crate) async fn list_incidents(
    State(sim): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    handle(sim, SimRoute::GraphList, &headers, Call::List { query }).await
}

pub(crate) async fn update_incident(
    State(sim): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = is_json(&headers);
    handle(sim, SimRoute::GraphUpdate, &headers, Call::Update { id, json, body }).await
}

pub(crate) async fn post_comment(
    State(sim): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = is_json(&headers);
    handle(sim, SimRoute::GraphComment, &headers, Call::Comment { id, json, body }).await
}

/// Same order as the Defender routes: token (with audience) before quota, every authenticated
/// call logged against the route's quota, faults after that; the token's tenant serves it.
async fn handle(sim: Arc<Shared>, route: SimRoute, headers: &HeaderMap, call: Call) -> Response {
    let arrived = Instant::now();
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(64).collect::<String>());
    let cid = client_request_id.as_deref();
    let bearer = match sim.tokens.check(headers.get(header::AUTHORIZATION), Audience::Graph) {
        Ok(bearer) => bearer,
        Err(refusal) => {
            let tenant = sim.tenancy(refusal.tenant.unwrap_or(HOME));
            tenant.stats.arrive(route, false);
            let resp = unauthorized(refusal.error, cid);
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
        Some(FaultKind::Unauthorized) => unauthorized(AuthError::Revoked, cid),
        fault => {
            let admission = tenant.quota(route).admit(arrived);
            match fault {
                None => answer(&sim, caller, &admission, &call, false, cid),
                Some(kind) => apply_fault(&sim, caller, kind, &admission, &call, cid).await,
            }
        }
    };
    let outcome = if resp.extensions().get::<crate::http::CloseConnection>().is_some() {
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
    admission: &Admission,
    call: &Call,
    cid: Option<&str>,
) -> Response {
    match kind {
        FaultKind::Latency { ms } => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => answer(sim, caller, admission, call, false, cid),
                _ = sim.stopping() => close_connection(),
            }
        }
        FaultKind::Hang => {
            sim.stopping().await;
            close_connection()
        }
        FaultKind::Status { code } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = match status.as_u16() {
                500 => "generalException",
                503 | 504 => "serviceNotAvailable",
                _ => "UnknownError",
            };
            graph_error(status, code, "Simulated upstream failure.", cid)
        }
        FaultKind::Malformed => {
            let real = answer(sim, caller, admission, call, false, cid);
            let body = axum::body::to_bytes(real.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            ok_json(body.slice(..body.len() / 2))
        }
        FaultKind::WrongId => answer(sim, caller, admission, call, true, cid),
        // Graph's 429 states no limit: only the wait survives of a stated throttle.
        FaultKind::Throttle { retry_after_secs } | FaultKind::StatedThrottle { retry_after_secs, .. } => {
            throttled(&retry_after_secs.to_string(), cid)
        }
        FaultKind::Reset => close_connection(),
        FaultKind::Unauthorized => unauthorized(AuthError::Revoked, cid),
        // Graph's 429 body never carries a wait; only the header (possibly hostile) does.
        FaultKind::RawThrottle { retry_after, .. } => throttled(retry_after.as_deref().unwrap_or(""), cid),
        FaultKind::AppliedThenDelay { ms } => {
            let resp = answer(sim, caller, admission, call, false, cid);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => resp,
                _ = sim.stopping() => close_connection(),
            }
        }
    }
}

/// Graph's error envelope (fact sheet §6.1): code, message, innerError with date, request-id
/// and client-request-id (echoed when the client sent one).
pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str, cid: Option<&str>) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = error_body(code, message, &request_id, cid.unwrap_or(&request_id), None);
    with_request_id(
        (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(ERROR_JSON))],
            body,
        )
            .into_response(),
        &request_id,
        cid,
    )
}

fn error_body(code: &str, message: &str, request_id: &str, client_request_id: &str, details: Option<Value>) -> String {
    let date = OffsetDateTime::now_utc();
    let date = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        date.year(),
        u8::from(date.month()),
        date.day(),
        date.hour(),
        date.minute(),
        date.second()
    );
    let s = |v: &str| Value::String(v.to_string()).to_string();
    let details = details.map_or(String::new(), |d| format!(",\"details\":{d}"));
    format!(
        r#"{{"error":{{"code":{},"message":{}{details},"innerError":{{"date":{},"request-id":{},"client-request-id":{}}}}}}}"#,
        s(code),
        s(message),
        s(&date),
        s(request_id),
        s(client_request_id)
    )
}

fn with_request_id(mut resp: Response, request_id: &str, cid: Option<&str>) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("request-id", v);
    }
    if let Some(Ok(v)) = cid.map(HeaderValue::from_str) {
        resp.headers_mut().insert("client-request-id", v);
    }
    resp
}

fn unauthorized(e: AuthError, cid: Option<&str>) -> Response {
    let message = match e {
        AuthError::Missing => "Access token is empty.",
        AuthError::WrongAudience => "Access token validation failure. Invalid audience.",
        AuthError::Expired => "Lifetime validation failed, the token is expired.",
        AuthError::Unknown | AuthError::Revoked => "Access token validation failure.",
    };
    let mut resp = graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", message, cid);
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Graph's 429 as documented (fact sheet §6.2), `Retry-After` as given.
fn throttled(retry_after: &str, cid: Option<&str>) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let now = OffsetDateTime::now_utc();
    let date = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let body = format!(
        r#"{{"error":{{"code":"TooManyRequests","innerError":{{"code":"429","date":"{date}","message":"Please retry after","request-id":"{request_id}","status":"429"}},"message":"Please retry again later."}}}}"#
    );
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ERROR_JSON))],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(retry_after)
        .map_err(drop)
        .and_then(|v| if v.is_empty() { Err(()) } else { Ok(v) })
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    with_request_id(resp, &request_id, cid)
}

/// `Retry-After` for a quota wait: milliseconds as a decimal (`2.128`) or whole seconds.
fn retry_after_text(sim: &Shared, wait: Duration, whole_secs: u64) -> String {
    if sim.cfg.graph_fractional_retry_after {
        let ms = wait.as_millis().max(1);
        format!("{}.{:03}", ms / 1000, ms % 1000)
    } else {
        whole_secs.to_string()
    }
}

fn not_found(id: &str, cid: Option<&str>) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        &format!(
            "Resource '{}' does not exist or one of its queried reference-property objects are not present.",
            truncate(id)
        ),
        cid,
    )
}

fn bad_request(message: &str, cid: Option<&str>) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", message, cid)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn answer(
    sim: &Shared,
    caller: Caller<'_>,
    admission: &Admission,
    call: &Call,
    wrong_id: bool,
    cid: Option<&str>,
) -> Response {
    let tenant = caller.tenant;
    if let Admission::Throttled {
        retry_after_secs, wait, ..
    } = admission
    {
        return throttled(&retry_after_text(sim, *wait, *retry_after_secs), cid);
    }
    match call {
        Call::Get { id, query } => {
            let expand = match query.as_str() {
                "" => false,
                q if q == "$expand=alerts" || q == "%24expand=alerts" => true,
                q => {
                    return bad_request(
                        &format!(
                            "Query option '{}' is not allowed on a single incident; only $expand=alerts is.",
                            truncate(q)
                        ),
                        cid,
                    )
                }
            };
            let Some(n) = parse_incident_id(id) else {
                return bad_request(&format!("Invalid incident id '{}'.", truncate(id)), cid);
            };
            serve(tenant, n, id, expand, wrong_id, cid)
        }
        Call::List { query } => list(sim, tenant, query, wrong_id, cid),
        Call::Update { id, json, body } => {
            let Some(n) = parse_incident_id(id) else {
                return bad_request(&format!("Invalid incident id '{}'.", truncate(id)), cid);
            };
            if !json {
                return graph_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "The request body must be JSON (Content-Type: application/json).",
                    cid,
                );
            }
            let update = match parse_update(body) {
                Ok(u) => u,
                Err(message) => return bad_request(&message, cid),
            };
            if tenant.update(n, update, caller.app).is_none() {
                return not_found(id, cid);
            }
            serve(tenant, n, id, false, wrong_id, cid)
        }
        Call::Comment { id, json, body } => {
            let Some(n) = parse_incident_id(id) else {
                return bad_request(&format!("Invalid incident id '{}'.", truncate(id)), cid);
            };
            if !json {
                return graph_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "The request body must be JSON (Content-Type: application/json).",
                    cid,
                );
            }
            let comment = match parse_comment(body) {
                Ok(c) => c,
                Err(message) => return bad_request(&message, cid),
            };
            let update = Update {
                comment: Some(comment),
                ..Update::default()
            };
            if tenant.update(n, update, caller.app).is_none() {
                return not_found(id, cid);
            }
            let Some(state) = tenant.store.state(n) else {
                return not_found(id, cid);
            };
            let body = json!({
                "@odata.context": format!("{CONTEXT_BASE}('{n}')/comments"),
                "value": comments(&state),
            });
            ok_json(Bytes::from(body.to_string()))
        }
    }
}

/// The incident's Graph body with `@odata.context`; with the WrongId fault, another incident's.
fn serve(tenant: &Tenancy, id: i64, raw_id: &str, expand: bool, wrong_id: bool, cid: Option<&str>) -> Response {
    let serve = if wrong_id {
        tenant.store.other_id(id).unwrap_or(id)
    } else {
        id
    };
    let Some(state) = tenant.store.state(serve) else {
        return not_found(raw_id, cid);
    };
    let mut v = render_value(tenant.store.params(), &state, expand);
    let context = if expand {
        format!("{CONTEXT_BASE}(alerts())/$entity")
    } else {
        format!("{CONTEXT_BASE}/$entity")
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("@odata.context".into(), Value::String(context));
    }
    ok_json(Bytes::from(v.to_string()))
}

fn list(sim: &Shared, tenant: &Tenancy, raw_query: &str, wrong_id: bool, cid: Option<&str>) -> Response {
    let query = match GraphListQuery::parse(raw_query) {
        Ok(q) => q,
        Err(e) if e.option == "$top" && e.message.starts_with("The query specified in the URI is not valid.") => {
            // Graph's observed answer to `$top` over 50: an empty code and `details` (§2.1).
            let request_id = uuid::Uuid::new_v4().to_string();
            let body = error_body("", &e.message, &request_id, cid.unwrap_or(&request_id), Some(json!([])));
            return with_request_id(
                (
                    StatusCode::BAD_REQUEST,
                    [(header::CONTENT_TYPE, HeaderValue::from_static(ERROR_JSON))],
                    body,
                )
                    .into_response(),
                &request_id,
                cid,
            );
        }
        Err(e) => return bad_request(&format!("Invalid query: {}", e.message), cid),
    };
    let top = query.top.map_or(DEFAULT_TOP, |t| t as usize);
    let skip = query.skip.unwrap_or(0);
    let (mut ids, total) = tenant
        .store
        .select_graph(query.filter.as_ref(), query.orderby, skip, top);
    if wrong_id {
        ids = ids.into_iter().filter_map(|id| tenant.store.other_id(id)).collect();
    }
    let params = tenant.store.params();
    let items: Vec<Value> = ids
        .iter()
        .filter_map(|id| tenant.store.state(*id))
        .map(|s| render_value(params, &s, query.expand_alerts))
        .collect();
    let mut page = Map::new();
    let context = if query.expand_alerts {
        format!("{CONTEXT_BASE}(alerts())")
    } else {
        CONTEXT_BASE.to_string()
    };
    page.insert("@odata.context".into(), Value::String(context));
    if query.count == Some(true) {
        page.insert("@odata.count".into(), Value::from(total));
    }
    let returned = items.len() as u64;
    page.insert("value".into(), Value::Array(items));
    let next_skip = skip.saturating_add(returned);
    if returned > 0 && next_skip < total {
        let next = GraphListQuery {
            top: Some(top as u32),
            skip: Some(next_skip),
            ..query.clone()
        };
        page.insert(
            "@odata.nextLink".into(),
            Value::String(format!(
                "{}/v1.0/security/incidents?{}",
                sim.base_url(),
                next.canonical()
            )),
        );
    }
    ok_json(Bytes::from(Value::Object(page).to_string()))
}

/// The data model's spelling of a Graph enum input: metadata camelCase, the documents'
/// aliases, or any ASCII case of them (the update page's example sends PascalCase, §5.1).
fn member(value: &str, members: &[(&'static str, &'static str)]) -> Option<&'static str> {
    members
        .iter()
        .find(|(g, _)| g.eq_ignore_ascii_case(value))
        .map(|(_, d)| *d)
}

const STATUS_IN: &[(&str, &str)] = &[
    ("active", "Active"),
    ("resolved", "Resolved"),
    ("inProgress", "InProgress"),
    ("redirected", "Redirected"),
];
const CLASSIFICATION_IN: &[(&str, &str)] = &[
    ("unknown", "Unknown"),
    ("falsePositive", "FalsePositive"),
    ("truePositive", "TruePositive"),
    ("informationalExpectedActivity", "InformationalExpectedActivity"),
];
const DETERMINATION_IN: &[(&str, &str)] = &[
    ("unknown", "NotAvailable"),
    ("apt", "Apt"),
    ("malware", "Malware"),
    ("securityPersonnel", "SecurityPersonnel"),
    ("securityTesting", "SecurityTesting"),
    ("unwantedSoftware", "UnwantedSoftware"),
    ("other", "Other"),
    ("multiStagedAttack", "MultiStagedAttack"),
    ("compromisedAccount", "CompromisedAccount"),
    ("compromisedUser", "CompromisedAccount"),
    ("phishing", "Phishing"),
    ("maliciousUserActivity", "MaliciousUserActivity"),
    ("notMalicious", "Clean"),
    ("clean", "Clean"),
    ("notEnoughDataToValidate", "NoEnoughDataToValidate"),
    ("insufficientData", "NoEnoughDataToValidate"),
    ("confirmedActivity", "ConfirmedActivity"),
    ("confirmedUserActivity", "ConfirmedActivity"),
    ("lineOfBusinessApplication", "LineOfBusinessApplication"),
];
const SEVERITY_IN: &[(&str, &str)] = &[
    ("unknown", "UnSpecified"),
    ("informational", "Informational"),
    ("low", "Low"),
    ("medium", "Medium"),
    ("high", "High"),
];

/// Validates a Graph PATCH body (the writable properties the simulator keeps; sheet §5.1).
fn parse_update(body: &[u8]) -> Result<Update, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("Request body is not valid JSON: {e}."))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "Request body must be a JSON object.".to_string())?;
    let mut update = Update::default();
    let text = |key: &str, v: &Value| -> Result<String, String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("Property '{key}' must be a string."))
    };
    let pick = |key: &str, v: &Value, members: &[(&'static str, &'static str)]| -> Result<&'static str, String> {
        let s = text(key, v)?;
        member(&s, members).ok_or_else(|| format!("Invalid value '{}' for property '{key}'.", truncate(&s)))
    };
    for (key, v) in obj {
        match key.as_str() {
            "status" => update.status = Some(pick(key, v, STATUS_IN)?),
            "classification" => update.classification = Some(pick(key, v, CLASSIFICATION_IN)?),
            "determination" => update.determination = Some(pick(key, v, DETERMINATION_IN)?),
            "severity" => update.severity = Some(pick(key, v, SEVERITY_IN)?),
            "displayName" => update.name = Some(text(key, v)?),
            "assignedTo" => {
                update.assigned_to = Some(match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    _ => return Err("Property 'assignedTo' must be a string.".into()),
                })
            }
            "customTags" => {
                let tags = v
                    .as_array()
                    .and_then(|a| a.iter().map(|t| t.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| "Property 'customTags' must be a list of strings.".to_string())?;
                update.tags = Some(tags);
            }
            other => {
                return Err(format!(
                    "Property '{}' cannot be updated. Writable properties: assignedTo, classification, customTags, determination, displayName, severity, status.",
                    truncate(other)
                ))
            }
        }
    }
    Ok(update)
}

/// Validates a comment POST body: `comment` (a string) and optionally `@odata.type`.
fn parse_comment(body: &[u8]) -> Result<String, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("Request body is not valid JSON: {e}."))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "Request body must be a JSON object.".to_string())?;
    let mut comment = None;
    for (key, v) in obj {
        match key.as_str() {
            "comment" => comment = Some(v.as_str().ok_or("Property 'comment' must be a string.")?.to_string()),
            "@odata.type" => {
                if v.as_str().map(|t| t.trim_start_matches('#')) != Some("microsoft.graph.security.alertComment") {
                    return Err("'@odata.type' must be microsoft.graph.security.alertComment.".into());
                }
            }
            other => return Err(format!("Property '{}' is not part of a comment.", truncate(other))),
        }
    }
    comment.ok_or_else(|| "Property 'comment' is required.".to_string())
}
