//! Talking to Defender: one HTTP request, with our token, to the configured host, and a
//! classification of what came back.
//!
//! Only paths built here from parsed routes are ever requested, on the one configured base URL;
//! redirects are never followed; no header of the caller is forwarded except `Accept` and the
//! request id. Retrying, freezing and caching are decided by the caller of this module
//! ([`crate::proxy`]), which also owns the budget: this module spends nothing by itself.

use std::time::Duration;

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
    pub accept: Option<HeaderValue>,
    pub request_id: String,
}

/// What the upstream answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
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
    tokens: TokenSource,
    pub timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, tokens: TokenSource) -> Result<Upstream, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
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

    /// Sends `req` once with the current token. On a 401 the caller may call
    /// [`Upstream::send_with_fresh_token`] once.
    pub async fn send(&self, req: &Request) -> Result<(Response, Token), UpstreamError> {
        let token = self.tokens.token().await?;
        let resp = self.send_with(req, &token).await?;
        Ok((resp, token))
    }

    /// Refreshes the token `rejected` (unless already refreshed) and sends again.
    pub async fn send_with_fresh_token(&self, req: &Request, rejected: &Token) -> Result<Response, UpstreamError> {
        let token = self.tokens.refresh_after_rejection(rejected).await?;
        self.send_with(req, &token).await
    }

    async fn send_with(&self, req: &Request, token: &Token) -> Result<Response, UpstreamError> {
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::try_from(format!("Bearer {}", token.secret.expose_secret()))
            .map_err(|_| UpstreamError::Token(TokenError::BadAnswer { status: 200 }))?;
        auth.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, auth);
        headers.insert(
            header::ACCEPT,
            req.accept
                .clone()
                .unwrap_or(HeaderValue::from_static("application/json")),
        );
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

/// How long the upstream asked us to stay away after a 429: `Retry-After` (seconds or an
/// HTTP date), else the body's "You can send requests again in N seconds".
pub fn throttle_pause(retry_after: Option<&HeaderValue>, body: &[u8]) -> Option<Duration> {
    if let Some(v) = retry_after.and_then(|v| v.to_str().ok()).map(str::trim) {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(when) = httpdate::parse_http_date(v) {
            return Some(
                when.duration_since(std::time::SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            );
        }
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = v.get("error")?.get("message")?.as_str()?;
    let tail = message.split("again in ").nth(1)?;
    let n: String = tail.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = n.parse().ok()?;
    let unit = tail[n.to_string().len()..].trim_start();
    Some(if unit.starts_with("minute") {
        Duration::from_secs(n * 60)
    } else {
        Duration::from_secs(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
