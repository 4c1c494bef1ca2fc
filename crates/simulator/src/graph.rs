//! The simulated Microsoft Graph security incidents API (`/v1.0/security/incidents`): the same
//! incidents as the Defender routes, rendered natively in Graph's schema, with Graph's paging,
//! errors, token audience, quotas (429 with a possibly fractional `Retry-After`) and faults.
//!
//! The Graph rendering and its enum spellings are written here from the fact sheet, on purpose
//! independently of `crate::dialect`: the translation property tests compare the translator's
//! output with this rendering, which is only a test if the two were not derived from each other.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::api::{close_connection, ok_json, parse_id};
use crate::clock::format_ticks;
use crate::data::{self, Alert, DataParams, Device, Entity, IncidentState};
use crate::faults::FaultKind;
use crate::quota::Admission;
use crate::stats::Outcome;
use crate::store::Update;
use crate::token::Audience;
use crate::token::AuthError;
use crate::{Route, Shared};
use defender_odata::GraphListQuery;

const TYPE_PREFIX: &str = "#microsoft.graph.security.";
const CONTEXT_BASE: &str = "https://graph.microsoft.com/v1.0/$metadata#security/incidents";
const ERROR_JSON: &str = "application/json; charset=utf-8";
/// Graph's default page size when `$top` is absent (fact sheet §2.1, inferred).
const DEFAULT_TOP: usize = 50;

// ----- Graph spellings of the data model's (Defender-spelled) values ---------------------------

/// PascalCase → camelCase, which is Graph's spelling of most members (fact sheet §7.3).
fn camel(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn severity(s: &str) -> String {
    match s {
        "UnSpecified" => "unknown".into(),
        other => camel(other),
    }
}

/// Metadata spellings (fact sheet §3) for the data model's determinations.
fn determination(s: &str) -> String {
    match s {
        "NotAvailable" => "unknown".into(),
        "Clean" | "NotMalicious" => "notMalicious".into(),
        "NoEnoughDataToValidate" | "InsufficientData" => "notEnoughDataToValidate".into(),
        "CompromisedUser" => "compromisedAccount".into(),
        "ConfirmedUserActivity" => "confirmedActivity".into(),
        other => camel(other),
    }
}

fn service_source(s: &str) -> String {
    match s {
        "MicrosoftCloudAppSecurity" => "microsoftDefenderForCloudApps".into(),
        other => camel(other),
    }
}

fn detection_source(s: &str) -> String {
    match s {
        "WindowsDefenderAtp" => "microsoftDefenderForEndpoint".into(),
        "WindowsDefenderAv" => "antivirus".into(),
        "CustomerTI" => "customTi".into(),
        "OfficeATP" => "microsoftDefenderForOffice365".into(),
        "MCAS" => "cloudAppSecurity".into(),
        "AzureAtp" => "microsoftDefenderForIdentity".into(),
        other => camel(other),
    }
}

fn product_name(service: &str) -> &'static str {
    match service {
        "MicrosoftDefenderForEndpoint" => "Microsoft Defender for Endpoint",
        "MicrosoftDefenderForOffice365" => "Microsoft Defender for Office 365",
        "MicrosoftDefenderForIdentity" => "Microsoft Defender for Identity",
        "MicrosoftCloudAppSecurity" => "Microsoft Defender for Cloud Apps",
        "AzureAdIdentityProtection" => "Microsoft Entra ID Protection",
        _ => "Microsoft Defender XDR",
    }
}

/// The incident fields Graph `$filter` looks at, in Graph's names and spellings.
pub(crate) fn filter_doc(state: &IncidentState) -> Value {
    json!({
        "assignedTo": state.assigned_to,
        "classification": camel(state.classification),
        "createdDateTime": format_ticks(state.created),
        "determination": determination(state.determination),
        "lastUpdateDateTime": format_ticks(state.last_update),
        "severity": severity(state.severity),
        "status": camel(state.status),
    })
}

// ----- rendering -------------------------------------------------------------------------------

fn comments(state: &IncidentState) -> Vec<Value> {
    state
        .comments
        .iter()
        .map(|c| {
            json!({
                "comment": c.comment,
                "createdByDisplayName": c.created_by,
                "createdDateTime": c.created_time,
            })
        })
        .collect()
}

/// The incident as Graph serializes it (without `@odata.context`); alerts only when expanded.
pub fn render(params: &DataParams, state: &IncidentState, expand_alerts: bool) -> Bytes {
    Bytes::from(serde_json::to_vec(&render_value(params, state, expand_alerts)).unwrap_or_default())
}

fn render_value(params: &DataParams, state: &IncidentState, expand_alerts: bool) -> Value {
    let web_url = format!(
        "https://security.microsoft.com/incidents/{}?tid={}",
        state.id, params.tenant_id
    );
    let last_modified_by = state
        .comments
        .last()
        .map_or("Microsoft 365 Defender-IncidentCreation".to_string(), |c| {
            c.created_by.clone()
        });
    let mut incident = json!({
        "id": state.id.to_string(),
        "tenantId": params.tenant_id,
        "status": camel(state.status),
        "incidentWebUrl": web_url,
        "redirectIncidentId": state.redirect_incident_id.map(|id| id.to_string()),
        "displayName": state.name,
        "description": Value::Null,
        "summary": Value::Null,
        "createdDateTime": format_ticks(state.created),
        "lastUpdateDateTime": format_ticks(state.last_update),
        "lastModifiedBy": last_modified_by,
        "assignedTo": state.assigned_to,
        "classification": camel(state.classification),
        "determination": determination(state.determination),
        "severity": severity(state.severity),
        "priorityScore": (state.id.unsigned_abs() % 101),
        "resolvingComment": Value::Null,
        "customTags": state.tags,
        "systemTags": [],
        "comments": comments(state),
    });
    if expand_alerts {
        let model = data::build(params, state);
        let alerts: Vec<Value> = model.alerts.iter().map(|a| render_alert(params, &web_url, a)).collect();
        if let Some(o) = incident.as_object_mut() {
            o.insert("alerts".into(), Value::Array(alerts));
        }
    }
    incident
}

fn render_alert(params: &DataParams, incident_url: &str, a: &Alert) -> Value {
    let mut evidence: Vec<Value> = a
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| render_device(&a.creation_time, d, i == 0))
        .collect();
    evidence.extend(a.entities.iter().map(|e| render_entity(&a.creation_time, e)));
    json!({
        "id": a.alert_id,
        "providerAlertId": a.alert_id.get(2..).unwrap_or(&a.alert_id),
        "incidentId": a.incident_id.to_string(),
        "status": camel(a.status),
        "severity": severity(a.severity),
        "classification": a.classification.map_or("unknown".to_string(), camel),
        "determination": a.determination.map_or("unknown".to_string(), determination),
        "serviceSource": service_source(a.service_source),
        "detectionSource": detection_source(a.detection_source),
        "productName": product_name(a.service_source),
        "detectorId": Value::Null,
        "tenantId": params.tenant_id,
        "title": a.title,
        "description": a.description,
        "recommendedActions": Value::Null,
        "category": a.category,
        "categories": [a.category],
        "assignedTo": a.assigned_to,
        "alertWebUrl": format!("https://security.microsoft.com/alerts/{}?tid={}", a.alert_id, params.tenant_id),
        "incidentWebUrl": incident_url,
        "actorDisplayName": a.actor_name,
        "threatDisplayName": a.threat_family_name,
        "threatFamilyName": a.threat_family_name,
        "mitreTechniques": a.mitre_techniques,
        "createdDateTime": a.creation_time,
        "lastUpdateDateTime": a.last_updated_time,
        "resolvedDateTime": a.resolved_time,
        "firstActivityDateTime": a.first_activity,
        "lastActivityDateTime": a.last_activity,
        "investigationState": camel(a.investigation_state),
        "alertPolicyId": Value::Null,
        "systemTags": [],
        "comments": [],
        "customDetails": {},
        "additionalData": {},
        "evidence": evidence,
    })
}

/// The base fields of every evidence object (fact sheet §4.1).
fn base(kind: &str, created: &str, verdict: &str, detailed_roles: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("@odata.type".into(), json!(format!("{TYPE_PREFIX}{kind}")));
    m.insert("createdDateTime".into(), json!(created));
    m.insert("verdict".into(), json!(verdict));
    m.insert("remediationStatus".into(), json!("none"));
    m.insert("remediationStatusDetails".into(), Value::Null);
    m.insert("roles".into(), json!([]));
    m.insert("detailedRoles".into(), json!(detailed_roles));
    m.insert("tags".into(), json!([]));
    m
}

fn extend(mut m: Map<String, Value>, more: Value) -> Value {
    if let Value::Object(more) = more {
        m.extend(more);
    }
    Value::Object(m)
}

fn render_device(created: &str, d: &Device, primary: bool) -> Value {
    let roles: &[&str] = if primary { &["PrimaryDevice"] } else { &[] };
    let mut m = base("deviceEvidence", created, "suspicious", roles);
    m.insert("tags".into(), json!(d.tags));
    let (host, domain) = d
        .device_dns_name
        .split_once('.')
        .map_or((d.device_dns_name.as_str(), None), |(h, rest)| (h, Some(rest)));
    let users: Vec<Value> = d
        .logged_on_users
        .iter()
        .map(|u| json!({ "accountName": u.account_name, "domainName": u.domain_name }))
        .collect();
    extend(
        m,
        json!({
            "firstSeenDateTime": d.first_seen,
            "mdeDeviceId": d.mdatp_device_id,
            "azureAdDeviceId": d.aad_device_id,
            "deviceDnsName": d.device_dns_name,
            "hostName": host,
            "ntDomain": Value::Null,
            "dnsDomain": domain,
            "osPlatform": d.os_platform,
            "osBuild": d.os_build,
            "version": d.version,
            "healthStatus": camel(d.health_status),
            "riskScore": camel(d.risk_score),
            "rbacGroupId": d.rbac_group_id,
            "rbacGroupName": d.rbac_group_name,
            "onboardingStatus": camel(d.onboarding_status),
            "defenderAvStatus": camel(d.defender_av_status),
            "lastIpAddress": Value::Null,
            "lastExternalIpAddress": Value::Null,
            "ipInterfaces": [],
            "vmMetadata": Value::Null,
            "loggedOnUsers": users,
            "resourceAccessEvents": [],
        }),
    )
}

fn file_details(e: &Entity) -> Value {
    json!({
        "sha1": e.sha1,
        "sha256": e.sha256,
        "md5": Value::Null,
        "sha256Ac": Value::Null,
        "fileName": e.file_name,
        "filePath": e.file_path,
        "fileSize": Value::Null,
        "filePublisher": Value::Null,
        "signer": Value::Null,
        "issuer": Value::Null,
    })
}

fn user_account(e: &Entity) -> Value {
    json!({
        "accountName": e.account_name,
        "domainName": e.domain_name,
        "userSid": e.user_sid,
        "azureAdUserId": e.aad_user_id,
        "userPrincipalName": e.user_principal_name,
        "displayName": Value::Null,
        "activeDirectoryObjectGuid": Value::Null,
        "resourceAccessEvents": [],
    })
}

fn render_entity(created: &str, e: &Entity) -> Value {
    let (kind, verdict, own) = match e.entity_type {
        "User" => (
            "userEvidence",
            "suspicious",
            json!({ "stream": Value::Null, "userAccount": user_account(e) }),
        ),
        "Ip" => (
            "ipEvidence",
            "unknown",
            json!({ "ipAddress": e.ip_address, "countryLetterCode": Value::Null, "stream": Value::Null, "location": Value::Null }),
        ),
        "Url" => ("urlEvidence", "malicious", json!({ "url": e.url })),
        "File" => (
            "fileEvidence",
            "malicious",
            json!({ "detectionStatus": "detected", "mdeDeviceId": e.device_id, "fileDetails": file_details(e) }),
        ),
        "Process" => (
            "processEvidence",
            "suspicious",
            json!({
                "processId": e.process_id,
                "parentProcessId": e.parent_process_id,
                "processCommandLine": e.process_command_line,
                "processCreationDateTime": e.process_creation_time,
                "parentProcessCreationDateTime": e.parent_process_creation_time,
                "detectionStatus": "detected",
                "mdeDeviceId": e.device_id,
                "imageFile": file_details(e),
                "parentProcessImageFile": Value::Null,
                "userAccount": user_account(e),
            }),
        ),
        "MailBox" => (
            "mailboxEvidence",
            "unknown",
            json!({
                "displayName": e.mailbox_display_name,
                "primaryAddress": e.mailbox_address,
                "upn": e.user_principal_name,
                "userAccount": user_account(e),
            }),
        ),
        "MailMessage" => {
            let domain = e.sender.as_deref().and_then(|s| s.split_once('@')).map(|(_, d)| d);
            (
                "analyzedMessageEvidence",
                "malicious",
                json!({
                    "subject": e.subject,
                    "recipientEmailAddress": e.recipient,
                    "p1Sender": { "displayName": Value::Null, "domainName": domain, "emailAddress": e.sender },
                    "p2Sender": Value::Null,
                    "deliveryAction": e.delivery_action,
                    "deliveryLocation": Value::Null,
                    "networkMessageId": Value::Null,
                    "urls": [],
                }),
            )
        }
        "MailCluster" => (
            "mailClusterEvidence",
            "unknown",
            json!({ "clusterBy": e.cluster_by, "clusterByValue": Value::Null, "emailCount": Value::Null, "networkMessageIds": [], "query": Value::Null, "urn": Value::Null }),
        ),
        "Registry" => (
            "registryValueEvidence",
            "suspicious",
            json!({
                "registryHive": e.registry_hive,
                "registryKey": e.registry_key,
                "registryValueType": e.registry_value_type,
                "registryValue": e.registry_value,
                "registryValueName": Value::Null,
                "mdeDeviceId": e.device_id,
            }),
        ),
        _ => (
            "securityGroupEvidence",
            "unknown",
            json!({
                "securityGroupId": e.security_group_id,
                "displayName": e.security_group_name,
                "sid": e.security_group_id,
                "activeDirectoryObjectGuid": Value::Null,
                "distinguishedName": Value::Null,
                "friendlyName": Value::Null,
            }),
        ),
    };
    extend(base(kind, created, verdict, &[]), own)
}

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
    handle(sim, Route::GraphGet, &headers, Call::Get { id, query }).await
}

pub(crate) async fn list_incidents(
    State(sim): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    handle(sim, Route::GraphList, &headers, Call::List { query }).await
}

pub(crate) async fn update_incident(
    State(sim): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = is_json(&headers);
    handle(sim, Route::GraphUpdate, &headers, Call::Update { id, json, body }).await
}

pub(crate) async fn post_comment(
    State(sim): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = is_json(&headers);
    handle(sim, Route::GraphComment, &headers, Call::Comment { id, json, body }).await
}

/// Same order as the Defender routes: token (with audience) before quota, every authenticated
/// call logged against the route's quota, faults after that.
async fn handle(sim: Arc<Shared>, route: Route, headers: &HeaderMap, call: Call) -> Response {
    let arrived = Instant::now();
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(64).collect::<String>());
    let cid = client_request_id.as_deref();
    if let Err(e) = sim.tokens.check(headers.get(header::AUTHORIZATION), Audience::Graph) {
        sim.stats.arrive(route, false);
        let resp = unauthorized(e, cid);
        sim.stats.finish(route, Outcome::Answered(resp.status()), false);
        return resp;
    }
    sim.stats.arrive(route, true);
    let fault = sim.faults.lock().pick(route);
    let faulted = fault.is_some();
    let resp = match fault {
        Some(FaultKind::Unauthorized) => unauthorized(AuthError::Revoked, cid),
        fault => {
            let admission = sim.quota(route).admit(arrived);
            match fault {
                None => answer(&sim, &admission, &call, false, cid),
                Some(kind) => apply_fault(&sim, kind, &admission, &call, cid).await,
            }
        }
    };
    let outcome = if resp.extensions().get::<crate::api::CloseConnection>().is_some() {
        Outcome::NoAnswer
    } else {
        Outcome::Answered(resp.status())
    };
    sim.stats.finish(route, outcome, faulted);
    resp
}

async fn apply_fault(sim: &Shared, kind: FaultKind, admission: &Admission, call: &Call, cid: Option<&str>) -> Response {
    match kind {
        FaultKind::Latency { ms } => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => answer(sim, admission, call, false, cid),
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
            let real = answer(sim, admission, call, false, cid);
            let body = axum::body::to_bytes(real.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            ok_json(body.slice(..body.len() / 2))
        }
        FaultKind::WrongId => answer(sim, admission, call, true, cid),
        FaultKind::Throttle { retry_after_secs } => throttled(&retry_after_secs.to_string(), cid),
        FaultKind::Reset => close_connection(),
        FaultKind::Unauthorized => unauthorized(AuthError::Revoked, cid),
        // Graph's 429 body never carries a wait; only the header (possibly hostile) does.
        FaultKind::RawThrottle { retry_after, .. } => throttled(retry_after.as_deref().unwrap_or(""), cid),
        FaultKind::AppliedThenDelay { ms } => {
            let resp = answer(sim, admission, call, false, cid);
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

fn answer(sim: &Shared, admission: &Admission, call: &Call, wrong_id: bool, cid: Option<&str>) -> Response {
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
            let Some(n) = parse_id(id) else {
                return bad_request(&format!("Invalid incident id '{}'.", truncate(id)), cid);
            };
            serve(sim, n, id, expand, wrong_id, cid)
        }
        Call::List { query } => list(sim, query, wrong_id, cid),
        Call::Update { id, json, body } => {
            let Some(n) = parse_id(id) else {
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
            if sim.update(n, update).is_none() {
                return not_found(id, cid);
            }
            serve(sim, n, id, false, wrong_id, cid)
        }
        Call::Comment { id, json, body } => {
            let Some(n) = parse_id(id) else {
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
            if sim.update(n, update).is_none() {
                return not_found(id, cid);
            }
            let Some(state) = sim.store.state(n) else {
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
fn serve(sim: &Shared, id: i64, raw_id: &str, expand: bool, wrong_id: bool, cid: Option<&str>) -> Response {
    let serve = if wrong_id {
        sim.store.other_id(id).unwrap_or(id)
    } else {
        id
    };
    let Some(state) = sim.store.state(serve) else {
        return not_found(raw_id, cid);
    };
    let mut v = render_value(sim.store.params(), &state, expand);
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

fn list(sim: &Shared, raw_query: &str, wrong_id: bool, cid: Option<&str>) -> Response {
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
    let (mut ids, total) = sim.store.select_graph(query.filter.as_ref(), query.orderby, skip, top);
    if wrong_id {
        ids = ids.into_iter().filter_map(|id| sim.store.other_id(id)).collect();
    }
    let params = sim.store.params();
    let items: Vec<Value> = ids
        .iter()
        .filter_map(|id| sim.store.state(*id))
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
