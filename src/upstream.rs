//! Talking to Defender: one HTTP request, with our token, to the configured host, and a
//! classification of what came back.
//!
//! Only paths built here from parsed routes are ever requested, on the one configured base URL;
//! redirects are never followed; no header of the caller is forwarded except the request id (we
//! always ask for JSON, so the cache key needs no `Accept`). Retrying, freezing and caching are
//! decided by the caller of this module ([`crate::exchange`]), which also owns the budget: this
//! module spends nothing by itself.
//!
//! The client keeps a pool of established connections (HTTP/2 where the upstream offers it
//! through ALPN) so that a call sent the instant its budget slot is granted does not first wait
//! for a TCP and TLS handshake: the budget counts sends, and Defender counts arrivals.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use secrecy::ExposeSecret;

use crate::{
    config::UpstreamConfig,
    token::{Token, TokenError, TokenSource},
};

/// Upper bound for an upstream body: a page of 100 large incidents can reach tens of MB.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// A request for the upstream, built from a parsed route.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Path and canonical query, e.g. `/api/incidents/7` or `/api/incidents?$top=10`.
    pub path_and_query: String,
    pub body: Option<Bytes>,
    pub request_id: String,
}

/// What the upstream answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    /// The upstream's clock (`Date`), for the sync's watermark.
    pub date: Option<SystemTime>,
    pub body: Bytes,
}

/// Why no answer came back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing was sent: connecting failed.
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// Sent, but no complete answer in time.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// Sent, then the connection failed: the upstream may or may not have acted.
    #[error("the connection to the upstream failed after the request was sent: {0}")]
    Broken(String),
    /// The answer was larger than we accept.
    #[error("the upstream answer exceeded {MAX_UPSTREAM_BODY} bytes")]
    TooLarge,
    #[error("no upstream token: {0}")]
    Token(#[from] TokenError),
}

impl UpstreamError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect_error",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Broken(_) => "broken",
            UpstreamError::TooLarge => "too_large",
            UpstreamError::Token(_) => "no_token",
        }
    }
}

/// The Defender API client.
pub struct Upstream {
    http: reqwest::Client,
    base: String,
    tokens: Arc<TokenSource>,
    pub timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, tokens: Arc<TokenSource>) -> Result<Upstream, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Upstream {
            http,
            base: config.base_url.trim_end_matches('/').to_string(),
            tokens,
            timeout: config.timeout,
        })
    }

    pub fn tokens(&self) -> &TokenSource {
        &self.tokens
    }

    /// A token to send with, waiting at most `token.wait` for one (see [`crate::token`]).
    pub async fn token(&self) -> Result<Token, UpstreamError> {
        Ok(self.tokens.token().await?)
    }

    /// A replacement for `rejected` (the upstream answered 401), unless someone already got one.
    pub async fn fresh_token(&self, rejected: &Token) -> Result<Token, UpstreamError> {
        Ok(self.tokens.refresh_after_rejection(rejected).await?)
    }

    /// Sends `req` once with `token`, at once: the caller holds its budget slot already.
    pub async fn send_with(&self, req: &Request, token: &Token) -> Result<Response, UpstreamError> {
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::try_from(format!("Bearer {}", token.secret.expose_secret()))
            .map_err(|_| UpstreamError::Token(TokenError::BadAnswer { status: 200 }))?;
        auth.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, auth);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Ok(id) = HeaderValue::try_from(req.request_id.as_str()) {
            headers.insert("x-request-id", id);
        }
        let mut builder = self
            .http
            .request(req.method.clone(), format!("{}{}", self.base, req.path_and_query))
            .headers(headers);
        if let Some(body) = &req.body {
            builder = builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let mut resp = builder.send().await.map_err(classify)?;
        let status = resp.status();
        // hyper parses header values as slices of its read buffer: a clone would keep that whole
        // buffer (often the body too) alive for as long as the cache holds the value. Copy them.
        let owned = |v: &HeaderValue| HeaderValue::from_bytes(v.as_bytes()).ok();
        let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(owned);
        let retry_after = resp.headers().get(header::RETRY_AFTER).and_then(owned);
        let date = resp
            .headers()
            .get(header::DATE)
            .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
        // Size the buffer from the header: reqwest's own `content_length()` is not always known
        // through its body wrappers, and a buffer grown by doubling would keep up to twice the
        // body's size alive in the cache.
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .or(resp.content_length().map(|n| n as usize));
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(MAX_UPSTREAM_BODY));
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_UPSTREAM_BODY {
                return Err(UpstreamError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            content_type,
            retry_after,
            date,
            body: body.freeze(),
        })
    }
}

fn classify(e: reqwest::Error) -> UpstreamError {
    if e.is_connect() {
        UpstreamError::Connect(short(&e))
    } else if e.is_timeout() {
        UpstreamError::Timeout
    } else {
        UpstreamError::Broken(short(&e))
    }
}

/// The innermost cause, without the URL (which is ours and harmless, but noisy).
fn short(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// How long the upstream asked us to stay away after a 429: `Retry-After` (seconds, possibly
/// fractional as Graph sends them, or an HTTP date), else the body's "You can send requests again
/// in N seconds". Hostile values never panic: negative or unparseable ones are ignored, a date in
/// the past means now, and anything too large to represent saturates (the budget caps the
/// freeze it causes).
pub fn throttle_pause(retry_after: Option<&HeaderValue>, body: &[u8]) -> Option<Duration> {
    if let Some(v) = retry_after.and_then(|v| v.to_str().ok()).map(str::trim) {
        if let Some(d) = seconds(v) {
            return Some(d);
        }
        if let Ok(when) = httpdate::parse_http_date(v) {
            return Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
        }
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = v.get("error")?.get("message")?.as_str()?;
    let tail = message.split("again in ").nth(1)?;
    let digits: String = tail.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().unwrap_or(u64::MAX);
    let unit = tail[digits.len()..].trim_start();
    let secs = if unit.starts_with("minute") {
        n.saturating_mul(60)
    } else {
        n
    };
    Some(Duration::from_secs(secs))
}

/// Non-negative decimal seconds (`7`, `2.128`, `1e9`); `None` for anything else.
fn seconds(v: &str) -> Option<Duration> {
    if let Ok(n) = v.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    // Digits of an integer too large for u64: saturate rather than ignore.
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::MAX);
    }
    let f: f64 = v.parse().ok()?;
    if !f.is_finite() || f < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(f).unwrap_or(Duration::MAX))
}

/// The limit a Defender 429 states: "... Maximum allowed N per HH:MM:SS for the key ..."
/// (the period as .NET prints a time span, `[d.]hh:mm:ss`). `None` when the body states none
/// (Graph's 429s never do) or states nonsense (a zero limit or period).
pub fn stated_limit(body: &[u8]) -> Option<(u32, Duration)> {
    let text = std::str::from_utf8(body).ok()?;
    let tail = text.split("Maximum allowed ").nth(1)?;
    let (limit, rest) = tail.split_once(" per ")?;
    let limit: u32 = limit.trim().parse().ok().filter(|n| *n > 0)?;
    let span = rest.split_whitespace().next()?;
    let (days, clock) = match span.split_once('.') {
        Some((d, c)) if !c.contains('.') => (d.parse::<u64>().ok()?, c),
        _ => (0, span),
    };
    let parts: Vec<u64> = clock.split(':').map(|p| p.parse::<u64>().ok()).collect::<Option<_>>()?;
    let [h, m, s] = parts[..] else { return None };
    if m >= 60 || s >= 60 {
        return None;
    }
    let secs = days.checked_mul(86_400)?.checked_add(h * 3600 + m * 60 + s)?;
    (secs > 0 && secs <= 31 * 86_400).then(|| (limit, Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stated_limits_are_read_from_defenders_429_text() {
        let body = br#"{"error":{"code":"429","message":"API calls quota exceeded! Maximum allowed 30 per 00:01:00 for the key Destination+TenantID+AppID. You can send requests again in 8 seconds.","target":"t"}}"#;
        assert_eq!(stated_limit(body), Some((30, Duration::from_secs(60))));
        let hour = b"Maximum allowed 1500 per 01:00:00 for the key x";
        assert_eq!(stated_limit(hour), Some((1500, Duration::from_secs(3600))));
        let day = b"Maximum allowed 5000 per 1.00:00:00 for the key x";
        assert_eq!(stated_limit(day), Some((5000, Duration::from_secs(86_400))));
        for bad in [
            &b"Please retry again later."[..],
            b"Maximum allowed 0 per 00:01:00",
            b"Maximum allowed 30 per 00:00:00",
            b"Maximum allowed 30 per 00:61:00",
            b"Maximum allowed -3 per 00:01:00",
            b"Maximum allowed 99999999999 per 00:01:00",
            b"Maximum allowed 30 per 400.00:00:00",
            b"Maximum allowed 30 per soon",
        ] {
            assert_eq!(stated_limit(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn pause_from_header_seconds_date_and_body() {
        assert_eq!(
            throttle_pause(Some(&HeaderValue::from_static("7")), b""),
            Some(Duration::from_secs(7))
        );
        let body = br#"{"error":{"code":"429","message":"API calls quota exceeded! Maximum allowed 30 per 00:01:00 for the key Destination+TenantID+AppID. You can send requests again in 8 seconds.","target":"t"}}"#;
        assert_eq!(throttle_pause(None, body), Some(Duration::from_secs(8)));
        assert_eq!(
            throttle_pause(Some(&HeaderValue::from_static("soon")), body),
            Some(Duration::from_secs(8))
        );
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(100));
        let d = throttle_pause(Some(&HeaderValue::try_from(later).unwrap()), b"").unwrap();
        assert!(d > Duration::from_secs(95) && d <= Duration::from_secs(100), "{d:?}");
        assert_eq!(throttle_pause(None, b"not json"), None);
    }

    #[test]
    fn hostile_pauses_never_panic() {
        let h = |v: &'static str| throttle_pause(Some(&HeaderValue::from_static(v)), b"");
        assert_eq!(h("2.128"), Some(Duration::from_millis(2128)));
        assert_eq!(h("18446744073709551615"), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(h("99999999999999999999999"), Some(Duration::MAX));
        assert_eq!(h("1e9"), Some(Duration::from_secs(1_000_000_000)));
        assert_eq!(h("1e300"), Some(Duration::MAX));
        assert_eq!(h("-5"), None);
        assert_eq!(h("NaN"), None);
        assert_eq!(h("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert!(h("Fri, 31 Dec 9999 23:59:59 GMT").unwrap() > Duration::from_secs(200 * 365 * 86400));
        let body = br#"{"error":{"message":"You can send requests again in 99999999999999999999999 minutes."}}"#;
        assert_eq!(throttle_pause(None, body), Some(Duration::from_secs(u64::MAX)));
    }
}
