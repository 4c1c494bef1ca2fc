//! The fake Entra ID token endpoint (client-credentials grant with a secret or a client
//! assertion) and the bearer tokens it hands out, which every API call must present.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use rand::distributions::Alphanumeric;
use rand::Rng;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::clock::format_entra_timestamp;
use crate::{FaultKind, Shared};

const SCOPE: &str = "https://api.security.microsoft.com/.default";
/// Microsoft Graph's scope: a token asked for with it is for Graph routes only (its audience).
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Which API a token was issued for: its scope at the token endpoint decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Audience {
    /// `https://api.security.microsoft.com/.default`: the Defender routes.
    Defender,
    /// `https://graph.microsoft.com/.default`: the Graph security routes.
    Graph,
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Entra's tolerance for clock skew on a client assertion's `nbf`.
const SKEW_SECS: i64 = 300;

/// Why an API call's credentials were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("Authorization header is missing or is not a bearer token.")]
    Missing,
    #[error("The access token is invalid.")]
    Unknown,
    #[error("The access token has expired.")]
    Expired,
    #[error("The access token has been revoked.")]
    Revoked,
    /// Issued for the other API: Defender and Graph each check a token's audience.
    #[error("The access token's audience is not valid for this resource.")]
    WrongAudience,
}

/// Live tokens, their expiry and their audience.
#[derive(Debug)]
pub(crate) struct Tokens {
    ttl: Duration,
    live: Mutex<HashMap<String, (Instant, Audience)>>,
}

impl Tokens {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new opaque Defender-audience token valid for the configured time.
    pub(crate) fn issue(&self) -> String {
        self.issue_for(Audience::Defender)
    }

    /// A new opaque token for `audience`'s API, valid for the configured time.
    pub(crate) fn issue_for(&self, audience: Audience) -> String {
        let token: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(64)
            .map(char::from)
            .collect();
        let now = Instant::now();
        let mut live = self.live.lock();
        // Keep the map small for long runs: expired tokens can only ever be refused.
        if live.len() > 1_024 {
            live.retain(|_, (exp, _)| *exp > now);
        }
        live.insert(token.clone(), (now + self.ttl, audience));
        token
    }

    /// Checks an `Authorization` header value for a route of `audience`'s API.
    pub(crate) fn check(&self, value: Option<&HeaderValue>, audience: Audience) -> Result<(), AuthError> {
        let value = value.and_then(|v| v.to_str().ok()).ok_or(AuthError::Missing)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let live = self.live.lock();
        match live.get(token.trim()) {
            None => Err(AuthError::Unknown),
            Some((exp, _)) if Instant::now() >= *exp => Err(AuthError::Expired),
            Some((_, aud)) if *aud != audience => Err(AuthError::WrongAudience),
            Some(_) => Ok(()),
        }
    }
}

/// An Entra-style error answer.
struct EntraError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

impl EntraError {
    fn new(status: StatusCode, error: &'static str, code: u32, description: String) -> Self {
        Self {
            status,
            error,
            code,
            description,
        }
    }

    fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{param}'."),
        )
    }
}

impl IntoResponse for EntraError {
    fn into_response(self) -> Response {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let timestamp = format_entra_timestamp(OffsetDateTime::now_utc());
        let body = serde_json::json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        no_store(resp.headers_mut());
        resp
    }
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token_endpoint(
    State(sim): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    // Token-endpoint faults (rules with `"route": "token"`): a slow, failing or silent Entra.
    let fault = sim.faults.lock().pick_token();
    match fault {
        Some(FaultKind::Latency { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(FaultKind::Hang) => {
            sim.stopping().await;
            sim.stats.token(false);
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(FaultKind::Status { code }) => {
            sim.stats.token(false);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({
                "error": "temporarily_unavailable",
                "error_description": "AADSTS50196: Simulated token endpoint failure.",
            });
            return (status, axum::Json(body)).into_response();
        }
        _ => {}
    }
    let result = grant(&sim, &tenant, &body);
    sim.stats.token(result.is_ok());
    match result {
        Ok(token) => {
            let secs = sim.tokens.ttl().as_secs();
            let body = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": secs,
                "ext_expires_in": secs,
                "access_token": token,
            });
            let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
            no_store(resp.headers_mut());
            resp
        }
        Err(e) => e.into_response(),
    }
}

fn grant(sim: &Shared, tenant: &str, body: &[u8]) -> Result<String, EntraError> {
    let cfg = &sim.cfg;
    if !tenant.eq_ignore_ascii_case(&cfg.tenant_id) {
        return Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud."
            ),
        ));
    }
    let form = parse_form(body);
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let grant_type = field("grant_type").ok_or_else(|| EntraError::missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let assertion = match field("client_assertion_type") {
        None => None,
        Some(t) if t == ASSERTION_TYPE => {
            Some(field("client_assertion").ok_or_else(|| EntraError::missing("client_assertion"))?)
        }
        Some(t) => {
            return Err(EntraError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                format!("Invalid client_assertion_type '{t}'."),
            ))
        }
    };
    let claims = assertion.map(decode_assertion).transpose()?;
    let client_id = field("client_id")
        .map(str::to_string)
        .or_else(|| claims.as_ref().and_then(|c| c.iss.clone()))
        .ok_or_else(|| EntraError::missing("client_id"))?;
    if client_id != cfg.client_id {
        return Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant.",
                cfg.tenant_id
            ),
        ));
    }
    let scope = field("scope").ok_or_else(|| EntraError::missing("scope"))?;
    let audience = if scope.trim().eq_ignore_ascii_case(GRAPH_SCOPE) {
        Audience::Graph
    } else {
        Audience::Defender
    };
    if !scope.trim().eq_ignore_ascii_case(SCOPE) && audience != Audience::Graph {
        return Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows \
                 must have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        ));
    }
    match claims {
        Some(claims) => check_claims(&claims, &client_id)?,
        None => {
            let secret = field("client_secret").ok_or_else(|| {
                EntraError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: \
                     'client_assertion' or 'client_secret'."
                        .into(),
                )
            })?;
            if secret != cfg.client_secret {
                return Err(EntraError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{}'.",
                        cfg.client_id
                    ),
                ));
            }
        }
    }
    Ok(sim.tokens.issue_for(audience))
}

/// The claims of a client assertion that the simulator checks.
#[derive(Debug, Default)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Vec<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

fn malformed_assertion() -> EntraError {
    EntraError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50027,
        "JWT token is invalid or malformed.".into(),
    )
}

/// Decodes a client assertion's payload. The signature is NOT checked: the simulator has no
/// registered certificate to check it against, and what the proxy must get right (building,
/// sending and renewing the assertion) shows in the claims.
fn decode_assertion(jwt: &str) -> Result<Claims, EntraError> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(malformed_assertion());
    }
    let payload = base64url_decode(parts[1]).ok_or_else(malformed_assertion)?;
    let v: serde_json::Value = serde_json::from_slice(&payload).map_err(|_| malformed_assertion())?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let aud = match v.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    Ok(Claims {
        iss: text("iss"),
        sub: text("sub"),
        aud,
        exp: v.get("exp").and_then(|x| x.as_i64()),
        nbf: v.get("nbf").and_then(|x| x.as_i64()),
    })
}

fn check_claims(claims: &Claims, client_id: &str) -> Result<(), EntraError> {
    if claims.iss.as_deref() != Some(client_id) || claims.sub.as_deref() != Some(client_id) {
        return Err(EntraError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. \
             The iss and sub claims must both be the client id."
                .into(),
        ));
    }
    if !claims.aud.iter().any(|a| a.ends_with("/oauth2/v2.0/token")) {
        return Err(EntraError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700023,
            "Client assertion audience claim does not match Realm issuer.".into(),
        ));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // A missing `exp` counts as expired: Entra requires the claim.
    let expired = claims.exp.map_or(true, |exp| exp <= now);
    let early = claims.nbf.is_some_and(|nbf| nbf > now + SKEW_SECS);
    if expired || early {
        return Err(EntraError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.".into(),
        ));
    }
    Ok(())
}

/// Decodes `application/x-www-form-urlencoded` (the only body the token endpoint accepts).
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let key = it.next().unwrap_or_default();
            let value = it.next().unwrap_or_default();
            (form_decode(key), form_decode(value))
        })
        .collect()
}

fn form_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => match (hex_val(raw[i + 1]), hex_val(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes unpadded or padded base64url (JWT segments).
pub(crate) fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms_and_base64url() {
        let form = parse_form(b"grant_type=client_credentials&scope=https%3A%2F%2Fx%2F.default&a=b+c");
        assert_eq!(form[0], ("grant_type".into(), "client_credentials".into()));
        assert_eq!(form[1].1, "https://x/.default");
        assert_eq!(form[2].1, "b c");
        assert_eq!(form_decode(b"100%"), "100%");
        assert_eq!(base64url_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64url_decode("aGk").unwrap(), b"hi");
        assert!(base64url_decode("a*b").is_none());
    }
}
