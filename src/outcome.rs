//! What a request comes to: an [`Answer`] or a [`Failure`], and how each relates to the cache.
//!
//! `Cache-Status` (RFC 9211) is rendered here and nowhere else: [`CacheResult::header`] for every
//! answer and every error, so the vocabulary (`hit`, `fwd=miss`, `fwd=stale`, `detail=...`) has
//! one spelling.

use std::{fmt::Write as _, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::{
    body::{Bodies, View},
    budget::WindowStatus,
    error::ApiError,
};

/// How the answer relates to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache, fresh for `ttl` more seconds.
    Hit { ttl: u64 },
    /// Asked the upstream: `fwd` is `miss` or `request` (the caller's directives forced it).
    Forwarded {
        fwd: &'static str,
        status: u16,
        stored: bool,
        collapsed: bool,
    },
    /// Served an expired entry because the upstream could not be (or must not be) asked.
    Stale { status: Option<u16>, detail: &'static str },
    /// Writes go through the cache untouched.
    Bypass { status: Option<u16> },
    /// The proxy answered an error itself without an upstream answer (`detail` says why).
    Refused { detail: &'static str },
}

impl CacheResult {
    /// The `Cache-Status` field value.
    pub fn header(&self) -> String {
        let mut s = String::from("defender-proxy; ");
        match self {
            CacheResult::Hit { ttl } => {
                let _ = write!(s, "hit; ttl={ttl}");
            }
            CacheResult::Forwarded {
                fwd,
                status,
                stored,
                collapsed,
            } => {
                let _ = write!(s, "fwd={fwd}; fwd-status={status}");
                if *stored {
                    s.push_str("; stored");
                }
                if *collapsed {
                    s.push_str("; collapsed");
                }
            }
            CacheResult::Stale { status, detail } => {
                s.push_str("fwd=stale");
                if let Some(st) = status {
                    let _ = write!(s, "; fwd-status={st}");
                }
                let _ = write!(s, "; detail={detail}");
            }
            CacheResult::Bypass { status } => {
                s.push_str("fwd=method");
                if let Some(st) = status {
                    let _ = write!(s, "; fwd-status={st}");
                }
            }
            CacheResult::Refused { detail } => {
                let fwd = if *detail == "only-if-cached" { "miss" } else { "bypass" };
                let _ = write!(s, "fwd={fwd}; detail={detail}");
            }
        }
        s
    }

    /// A short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            CacheResult::Hit { .. } => "hit",
            CacheResult::Forwarded { collapsed: true, .. } => "collapsed",
            CacheResult::Forwarded { .. } => "miss",
            CacheResult::Stale { .. } => "stale",
            CacheResult::Bypass { .. } => "bypass",
            CacheResult::Refused { .. } => "refused",
        }
    }
}

/// A successful (or passed-through) answer for the caller.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// The body in the caller's view (see [`Answer::in_view`]).
    pub body: Bytes,
    /// Every view of the body, while the answer is shared by callers of several views (a
    /// collapsed read); resolved into `body` before it reaches a caller.
    pub bodies: Option<std::sync::Arc<Bodies>>,
    pub content_type: HeaderValue,
    pub cache: CacheResult,
    /// `Age`, for answers from the cache.
    pub age: Option<Duration>,
    /// The route's quotas, when this answer involved the budget.
    pub budget: Option<Vec<WindowStatus>>,
    pub queued: Duration,
    pub upstream_status: Option<u16>,
}

impl Answer {
    /// An upstream answer passed to the caller as it came (`fwd` is `miss` or `request`).
    pub fn forwarded(
        status: StatusCode,
        body: Bytes,
        content_type: HeaderValue,
        fwd: &'static str,
        stored: bool,
        budget: Option<Vec<WindowStatus>>,
        queued: Duration,
    ) -> Answer {
        Answer {
            status,
            body,
            bodies: None,
            content_type,
            cache: CacheResult::Forwarded {
                fwd,
                status: status.as_u16(),
                stored,
                collapsed: false,
            },
            age: None,
            budget,
            queued,
            upstream_status: Some(status.as_u16()),
        }
    }
}

impl Answer {
    /// The answer as a caller of `view` reads it. An answer that has no rendering in that view
    /// (the upstream's incident holds a value the other dialect cannot express) is a 502.
    pub fn in_view(mut self, view: View) -> Outcome {
        let Some(bodies) = self.bodies.take() else {
            return Ok(self);
        };
        match bodies.get(view) {
            Some(body) => {
                self.body = body.clone();
                Ok(self)
            }
            None => Err(Failure {
                error: ApiError::BadGateway(
                    "the upstream's answer cannot be expressed in this API's dialect (see the log)".into(),
                ),
                budget: self.budget,
                upstream_status: self.upstream_status,
            }),
        }
    }
}

/// An error answer, with the budget state to report alongside it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: ApiError,
    pub budget: Option<Vec<WindowStatus>>,
    pub upstream_status: Option<u16>,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure {
            error,
            budget: None,
            upstream_status: None,
        }
    }
}

impl Failure {
    /// How this error relates to the cache, for its `Cache-Status`.
    pub fn cache(&self) -> CacheResult {
        match (&self.error, self.upstream_status) {
            (ApiError::NotCached, _) => CacheResult::Refused {
                detail: "only-if-cached",
            },
            (_, Some(status)) => CacheResult::Forwarded {
                fwd: "miss",
                status,
                stored: false,
                collapsed: false,
            },
            (ApiError::Throttled { .. }, None) => CacheResult::Refused { detail: "budget" },
            (_, None) => CacheResult::Refused { detail: "error" },
        }
    }
}

pub type Outcome = Result<Answer, Failure>;

/// The content type of answers whose upstream named none.
pub fn json_content_type() -> HeaderValue {
    HeaderValue::from_static("application/json; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_spellings() {
        assert_eq!(CacheResult::Hit { ttl: 5 }.header(), "defender-proxy; hit; ttl=5");
        let fwd = CacheResult::Forwarded {
            fwd: "miss",
            status: 200,
            stored: true,
            collapsed: true,
        };
        assert_eq!(
            fwd.header(),
            "defender-proxy; fwd=miss; fwd-status=200; stored; collapsed"
        );
        let stale = CacheResult::Stale {
            status: Some(503),
            detail: "stale-if-error",
        };
        assert_eq!(
            stale.header(),
            "defender-proxy; fwd=stale; fwd-status=503; detail=stale-if-error"
        );
        let not_cached: Failure = ApiError::NotCached.into();
        assert_eq!(
            not_cached.cache().header(),
            "defender-proxy; fwd=miss; detail=only-if-cached"
        );
        let bad: Failure = ApiError::bad_request("x").into();
        assert_eq!(bad.cache().header(), "defender-proxy; fwd=bypass; detail=error");
    }
}
