//! The one error type callers ever see, and the one place where HTTP statuses are chosen.
//!
//! Every failure the proxy answers itself (bad input, missing key, spent budget, broken upstream)
//! becomes an [`ApiError`] and is rendered in the Defender error envelope
//! `{"error":{"code","message","target"}}`, so a tool written for Defender parses our errors
//! exactly like the upstream's. `target` carries the request id, as Defender's carries a tracking
//! id. Internal detail (socket errors, parse positions of upstream bodies) goes to the log, never
//! into the body.

use std::{sync::Arc, time::Duration};

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

/// Why the proxy answered a request itself instead of with an upstream answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(Arc<str>),
    #[error("no route for this path: {0}")]
    NotFound(Arc<str>),
    #[error("method {0} is not allowed on this path")]
    MethodNotAllowed(Arc<str>),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The client did not send its whole body within `server.body_read_timeout`.
    #[error("the request body did not arrive within {0:?}")]
    RequestTimeout(Duration),
    #[error("request body must be sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("a valid API key is required (Authorization: Bearer <key> or X-Api-Key)")]
    Unauthenticated,
    #[error("consumer '{0}' may not {1}")]
    Forbidden(Arc<str>, &'static str),
    /// The budget (or a frozen route) cannot give a slot within the caller's allowed wait.
    #[error("{message}")]
    Throttled { retry_after: Duration, message: Arc<str> },
    /// `Cache-Control: only-if-cached` and nothing usable is cached (RFC 9111 §5.2.1.7).
    #[error("the incident is not cached and only-if-cached forbids asking the upstream")]
    NotCached,
    /// The upstream answered something the proxy cannot pass on as valid (5xx, unparseable, wrong id).
    #[error("{0}")]
    BadGateway(Arc<str>),
    /// The request left the proxy but no answer came back: the outcome of a write is unknown.
    #[error("{0}")]
    OutcomeUnknown(Arc<str>),
    #[error("the upstream did not answer within {0:?}")]
    GatewayTimeout(Duration),
    /// Graceful shutdown: the caller should retry (against another instance or after restart).
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// Every `server.max_concurrency` place stayed busy for `server.max_concurrency_wait`.
    #[error("the proxy is at its concurrency limit; retry shortly")]
    Overloaded,
    /// The upstream token cannot be obtained (nothing was sent or spent); details are in the
    /// log. Carries when to try again: the token endpoint's next attempt.
    #[error("the proxy cannot obtain an upstream access token right now; nothing was sent upstream")]
    NoToken(Duration),
    /// A write of several upstream calls (a Graph PATCH, then its comment) stopped part-way:
    /// `applied` says exactly what took effect, `cause` why the rest did not. Always 502 without
    /// `Retry-After`, whatever the cause (a 429 would invite the caller to resend the whole write
    /// and add its comment twice); nothing is retried on the caller's behalf.
    #[error("{applied}: {cause}")]
    PartiallyApplied { applied: Arc<str>, cause: Box<ApiError> },
}

impl ApiError {
    pub fn bad_request(msg: impl Into<Arc<str>>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    /// The only mapping from error to status in the code base.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(..) => StatusCode::FORBIDDEN,
            ApiError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotCached | ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BadGateway(_) | ApiError::OutcomeUnknown(_) => StatusCode::BAD_GATEWAY,
            ApiError::ShuttingDown | ApiError::NoToken(_) | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PartiallyApplied { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The envelope's `code`, in Defender's own vocabulary where it has one.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::NotFound(_) => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::PayloadTooLarge(_) => "RequestEntityTooLarge",
            ApiError::RequestTimeout(_) => "RequestTimeout",
            ApiError::UnsupportedMediaType => "UnsupportedMediaType",
            ApiError::Unauthenticated => "Unauthorized",
            ApiError::Forbidden(..) => "Forbidden",
            ApiError::Throttled { .. } => "TooManyRequests",
            ApiError::NotCached => "NotCached",
            ApiError::BadGateway(_) => "BadGateway",
            ApiError::OutcomeUnknown(_) => "OutcomeUnknown",
            ApiError::GatewayTimeout(_) => "GatewayTimeout",
            ApiError::ShuttingDown => "ServiceUnavailable",
            ApiError::NoToken(_) => "ServiceUnavailable",
            ApiError::Overloaded => "ServiceUnavailable",
            ApiError::PartiallyApplied { .. } => "PartiallyApplied",
        }
    }

    /// `Retry-After` for the answers that have one: whole seconds, rounded up, never 0.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Throttled { retry_after, .. } => Some(retry_after_secs(*retry_after)),
            ApiError::ShuttingDown | ApiError::Overloaded => Some(1),
            ApiError::NoToken(retry_after) => Some(retry_after_secs(*retry_after)),
            _ => None,
        }
    }

    /// Renders the envelope with `target` set to the request id.
    pub fn into_response_with_target(self, target: &str) -> Response {
        let body = envelope(self.code(), &self.to_string(), target);
        self.into_response_with_body(body)
    }

    /// Renders the error with an envelope made by the caller (Graph's, for the Graph facade),
    /// with this error's status and headers.
    pub fn into_response_with_body(self, body: Bytes) -> Response {
        let mut resp = (self.status(), body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthenticated) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with_target("")
    }
}

/// Whole seconds, rounded up, at least 1: a `Retry-After: 0` invites a busy loop.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The Defender error envelope as bytes.
pub fn envelope(code: &str, message: &str, target: &str) -> Bytes {
    let v = serde_json::json!({ "error": { "code": code, "message": message, "target": target } });
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
    }

    #[test]
    fn envelope_has_the_defender_shape() {
        let b = envelope("BadRequest", "bad id", "req-1");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "BadRequest");
        assert_eq!(v["error"]["message"], "bad id");
        assert_eq!(v["error"]["target"], "req-1");
    }
}
