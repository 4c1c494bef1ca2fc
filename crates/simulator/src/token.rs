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

impl Audience {
    /// The `aud` claim of a token for this API.
    fn resource(self) -> &'static str {
        match self {
            Audience::Defender => "https://api.security.microsoft.com",
            Audience::Graph => "https://graph.microsoft.com",
        }
    }
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

/// What the simulator knows of a token it issued. The token's claims say the same (`tid`,
/// `aud`, `appid`, `exp`), but the simulator trusts its own record: a token it did not issue is
/// refused whatever its claims say, so a test cannot be fooled by a forged `tid`.
#[derive(Debug)]
struct Issued {
    expires: Instant,
    audience: Audience,
    tenant: usize,
    app: Arc<str>,
}

/// What a token is good for: the index of the tenant it was issued in and the app it was
/// issued to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bearer {
    pub(crate) tenant: usize,
    pub(crate) app: Arc<str>,
}

/// Why a token was refused, and the tenant it was issued in when the simulator knows it (an
/// expired or wrong-audience token): that tenant's stats count the refused call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) error: AuthError,
    pub(crate) tenant: Option<usize>,
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        Self { error, tenant: None }
    }
}

/// What to issue a token for.
pub(crate) struct Grant<'a> {
    pub(crate) tenant: usize,
    pub(crate) tenant_id: &'a str,
    pub(crate) app: &'a str,
    pub(crate) audience: Audience,
}

/// Live tokens of all tenants, with their expiry, audience, tenant and app.
#[derive(Debug)]
pub(crate) struct Tokens {
    ttl: Duration,
    live: Mutex<HashMap<String, Issued>>,
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

    /// A new token, valid for the configured time, shaped like Entra's app-only access tokens:
    /// a JWT whose claims carry the tenant (`tid`), the API (`aud`) and the app (`appid`). Its
    /// signature is random bytes: only the simulator has to recognise it.
    pub(crate) fn issue(&self, grant: &Grant<'_>) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "kid": "simulator" });
        let claims = serde_json::json!({
            "aud": grant.audience.resource(),
            "iss": format!("https://sts.windows.net/{}/", grant.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl),
            "appid": grant.app,
            "idtyp": "app",
            "tid": grant.tenant_id,
            "uti": uuid::Uuid::new_v4().simple().to_string(),
            "ver": "1.0",
        });
        let signature: Vec<u8> = (0..32).map(|_| rand::thread_rng().gen()).collect();
        let token = format!(
            "{}.{}.{}",
            base64url_encode(header.to_string().as_bytes()),
            base64url_encode(claims.to_string().as_bytes()),
            base64url_encode(&signature)
        );
        let now = Instant::now();
        let mut live = self.live.lock();
        // Keep the map small for long runs: expired tokens can only ever be refused.
        if live.len() > 1_024 {
            live.retain(|_, t| t.expires > now);
        }
        live.insert(
            token.clone(),
            Issued {
                expires: now + self.ttl,
                audience: grant.audience,
                tenant: grant.tenant,
                app: Arc::from(grant.app),
            },
        );
        token
    }

    /// Checks an `Authorization` header value for a route of `audience`'s API.
    pub(crate) fn check(&self, value: Option<&HeaderValue>, audience: Audience) -> Result<Bearer, Refusal> {
        let value = value.and_then(|v| v.to_str().ok()).ok_or(AuthError::Missing)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing.into());
        }
        let live = self.live.lock();
        let issued = live.get(token.trim()).ok_or(AuthError::Unknown)?;
        let refuse = |error| Refusal {
            error,
            tenant: Some(issued.tenant),
        };
        if Instant::now() >= issued.expires {
            return Err(refuse(AuthError::Expired));
        }
        if issued.audience != audience {
            return Err(refuse(AuthError::WrongAudience));
        }
        Ok(Bearer {
            tenant: issued.tenant,
            app: issued.app.clone(),
        })
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
    // The named tenant's fault plan and stats; a request for an unknown tenant is the default
    // tenant's to count (as when the simulator served one tenant only).
    let known = sim.find_tenant(&tenant);
    let home = sim.tenancy(known.unwrap_or(crate::HOME));
    // Token-endpoint faults (rules with `"route": "token"`): a slow, failing or silent Entra.
    let fault = home.faults.lock().pick_token();
    match fault {
        Some(FaultKind::Latency { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(FaultKind::Hang) => {
            sim.stopping().await;
            home.stats.token(false);
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(FaultKind::Status { code }) => {
            home.stats.token(false);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({
                "error": "temporarily_unavailable",
                "error_description": "AADSTS50196: Simulated token endpoint failure.",
            });
            return (status, axum::Json(body)).into_response();
        }
        _ => {}
    }
    let result = match known {
        Some(index) => grant(&sim, index, &body),
        None => Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud."
            ),
        )),
    };
    home.stats.token(result.is_ok());
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

/// The client-credentials grant in the tenant at `index`: the app must be registered (in any
/// tenant) and consented in this one, and prove itself with its home registration's secret or
/// with a client assertion.
fn grant(sim: &Shared, index: usize, body: &[u8]) -> Result<String, EntraError> {
    let tenant = sim.tenancy(index);
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
    // An app not consented here is unknown to this directory, even if registered elsewhere:
    // Entra answers both cases alike.
    let registration = sim.registration(&client_id).filter(|_| tenant.admits_app(&client_id));
    let Some(registration) = registration else {
        return Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant.",
                tenant.id()
            ),
        ));
    };
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
            if secret != registration.client_secret {
                return Err(EntraError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{client_id}'."
                    ),
                ));
            }
        }
    }
    Ok(sim.tokens.issue(&Grant {
        tenant: index,
        tenant_id: tenant.id(),
        app: &client_id,
        audience,
    }))
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

/// Encodes unpadded base64url (JWT segments).
fn base64url_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        // 1, 2 or 3 bytes make 2, 3 or 4 characters.
        for k in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]));
        }
    }
    out
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
        for text in [&b""[..], b"h", b"hi", b"hi!", b"\xff\xfe\xfd\xfc"] {
            assert_eq!(base64url_decode(&base64url_encode(text)).unwrap(), text);
        }
        assert_eq!(base64url_encode(br#"{"a":1}"#), "eyJhIjoxfQ");
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
    }
}
