//! One budgeted exchange with the upstream: a token in hand first, then a budget slot, then the
//! request at once; the retries that are safe; and what an answer means for the budget.
//!
//! The order matters. The budget counts a call when it grants the slot, and Defender counts it
//! when it arrives. Taking the slot only once the token is at hand keeps those two instants
//! microseconds apart, so the sliding-window guarantee holds for arrivals, not just for grants:
//! a slow token endpoint delays callers before they are counted, never between count and send.
//! A token that went stale while its caller queued is replaced from the cache or the slot is
//! given back ([`Budget::release`]). A call refused for lack of a token spends nothing.
//!
//! Every 429 seen here freezes the route (capped at its longest window, with a warning and a
//! metric when the upstream asked for more), whoever made the call: callers and the sync alike.

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use tokio::time::Instant;

use crate::{
    budget::{Budget, Caller, Freeze, Grant, Quota, Refusal, SlotWatch, WindowStatus},
    metrics::{ConsumerLabels, ConsumerRejectLabels, TenantMetrics, UpstreamLabels},
    route::RouteKind,
    token::{Token, TokenError},
    upstream::{self, Request, Response, Upstream, UpstreamError},
};

/// Which retries a call allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: once after a 401 (with a fresh token) or after a connection failure.
    Read,
    /// Writes: once after a 401 only (Defender did not apply a request it refused); never after a
    /// broken connection, whose outcome is unknown.
    Write,
}

/// Why a call brought back no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No token could be had: nothing was sent and nothing was spent.
    #[error("no upstream token: {0}")]
    NoToken(TokenError),
    /// The budget gave no slot.
    #[error("no budget slot")]
    Refused(Refusal),
    /// The request was sent (or sending was attempted) and no answer came.
    #[error(transparent)]
    Upstream(UpstreamError),
}

/// A token and a counted slot: the call may leave now.
pub struct Admitted {
    token: Token,
    grant: Grant,
    caller: Caller,
}

impl Admitted {
    pub fn queued(&self) -> Duration {
        self.grant.queued
    }
}

/// An upstream answer and what it did to the budget.
#[derive(Debug)]
pub struct Sent {
    pub response: Response,
    /// Time the caller spent queued for its (first) slot.
    pub queued: Duration,
    /// The route's quotas after the call.
    pub windows: Vec<WindowStatus>,
    /// Set when the answer was a 429: how long the route is now frozen.
    pub freeze: Option<Freeze>,
}

/// The budgeted upstream call of one tenant, shared by its proxy and its sync.
pub struct Exchange {
    budget: Arc<dyn Budget>,
    upstream: Upstream,
    metrics: TenantMetrics,
}

impl Exchange {
    pub fn new(budget: Arc<dyn Budget>, upstream: Upstream, metrics: TenantMetrics) -> Exchange {
        Exchange {
            budget,
            upstream,
            metrics,
        }
    }

    pub fn budget(&self) -> &Arc<dyn Budget> {
        &self.budget
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Admits and sends in one step (see [`Exchange::admit`] and [`Exchange::send`]).
    pub async fn call(
        &self,
        route: RouteKind,
        caller: &Caller,
        req: &Request,
        wait: Duration,
        slot: Option<&SlotWatch>,
        retry: Retry,
    ) -> Result<Sent, CallError> {
        let admitted = self.admit(route, caller, wait, slot).await?;
        self.send(route, req, admitted, retry).await
    }

    /// A token first (bounded by `token.wait`), then a slot within `wait`. Cancelling this future
    /// gives the slot back if it was still queued.
    pub async fn admit(
        &self,
        route: RouteKind,
        caller: &Caller,
        wait: Duration,
        slot: Option<&SlotWatch>,
    ) -> Result<Admitted, CallError> {
        let token = self.upstream.token().await.map_err(no_token)?;
        let labels = ConsumerLabels {
            tenant: self.metrics.tenant.clone(),
            route: route.name(),
            consumer: caller.flow.to_string(),
        };
        let grant = match self.budget.acquire(route, caller, wait, slot).await {
            Ok(g) => g,
            Err(refusal) => {
                if let Refusal::Throttled { reason, .. } = &refusal {
                    self.metrics
                        .consumer_rejected
                        .get_or_create(&ConsumerRejectLabels {
                            tenant: self.metrics.tenant.clone(),
                            route: route.name(),
                            consumer: labels.consumer,
                            reason: reason.as_str(),
                        })
                        .inc();
                }
                return Err(CallError::Refused(refusal));
            }
        };
        self.metrics
            .queue_wait
            .get_or_create(&self.metrics.route(route.name()))
            .observe(grant.queued.as_secs_f64());
        self.metrics
            .consumer_wait
            .get_or_create(&labels)
            .observe(grant.queued.as_secs_f64());
        self.metrics.consumer_granted.get_or_create(&labels).inc();
        let now = Instant::now();
        let caller = caller.clone();
        if token.usable(now) {
            return Ok(Admitted { token, grant, caller });
        }
        // The token aged out while we queued; the refresher has usually replaced it already.
        match self.upstream.tokens().cached() {
            Some(token) => Ok(Admitted { token, grant, caller }),
            None => {
                self.budget.release(route, &grant);
                Err(CallError::NoToken(TokenError::Slow { waited: Duration::ZERO }))
            }
        }
    }

    /// Sends an admitted call at once, with at most one retry as `retry` allows (each retry
    /// takes a slot of its own, and a fresh token before it).
    pub async fn send(
        &self,
        route: RouteKind,
        req: &Request,
        admitted: Admitted,
        retry: Retry,
    ) -> Result<Sent, CallError> {
        let Admitted { token, grant, caller } = admitted;
        let first = self.send_once(route, req, &token).await;
        let result = match first {
            Ok(resp) if resp.status == StatusCode::UNAUTHORIZED => {
                tracing::warn!(route = route.name(), "upstream rejected the token; refreshing once");
                match self.readmit_fresh(route, &caller, &token).await {
                    Some(again) => self.send_once(route, req, &again.token).await,
                    None => Ok(resp),
                }
            }
            // A read is safe to repeat when the connection failed before or after sending.
            Err(e @ (UpstreamError::Connect(_) | UpstreamError::Broken(_))) if retry == Retry::Read => {
                tracing::warn!(route = route.name(), error = %e, "upstream connection failed; retrying once");
                match self.budget.acquire(route, &caller, Duration::ZERO, None).await {
                    Ok(_) => self.send_once(route, req, &token).await,
                    Err(_) => Err(e),
                }
            }
            other => other,
        };
        let response = result.map_err(CallError::Upstream)?;
        let freeze = (response.status == StatusCode::TOO_MANY_REQUESTS).then(|| self.throttled(route, &response));
        Ok(Sent {
            response,
            queued: grant.queued,
            windows: self.budget.status(route).windows,
            freeze,
        })
    }

    /// After a 401: a replacement token, then a slot for the retry (no waiting: the caller
    /// already waited once).
    async fn readmit_fresh(&self, route: RouteKind, caller: &Caller, rejected: &Token) -> Option<Admitted> {
        let token = self.upstream.fresh_token(rejected).await.ok()?;
        let grant = self.budget.acquire(route, caller, Duration::ZERO, None).await.ok()?;
        Some(Admitted {
            token,
            grant,
            caller: caller.clone(),
        })
    }

    async fn send_once(&self, route: RouteKind, req: &Request, token: &Token) -> Result<Response, UpstreamError> {
        let started = Instant::now();
        let result = self.upstream.send_with(req, token).await;
        let status = match &result {
            Ok(r) => r.status.as_u16().to_string(),
            Err(e) => e.label().to_string(),
        };
        self.metrics
            .upstream_requests
            .get_or_create(&UpstreamLabels {
                tenant: self.metrics.tenant.clone(),
                route: route.name(),
                status,
            })
            .inc();
        self.metrics
            .upstream_duration
            .get_or_create(&self.metrics.route(route.name()))
            .observe(started.elapsed().as_secs_f64());
        if let Ok(r) = &result {
            if r.status != StatusCode::TOO_MANY_REQUESTS {
                self.budget.upstream_ok(route);
            }
        }
        result
    }

    /// A 429: believe it, freeze the route for what it asked (capped), and say so.
    fn throttled(&self, route: RouteKind, resp: &Response) -> Freeze {
        self.learn(route, &resp.body);
        let asked = upstream::throttle_pause(resp.retry_after.as_ref(), &resp.body);
        let freeze = self.budget.upstream_throttled(route, asked);
        let labels = self.metrics.route(route.name());
        self.metrics.upstream_throttled.get_or_create(&labels).inc();
        if freeze.capped {
            self.metrics.retry_after_capped.get_or_create(&labels).inc();
            tracing::warn!(
                route = route.name(),
                asked_secs = asked.map_or(f64::NAN, |d| d.as_secs_f64()),
                capped_secs = freeze.pause.as_secs_f64(),
                "upstream asked for a pause longer than the route's longest window; capped"
            );
        }
        tracing::warn!(
            route = route.name(),
            pause_secs = freeze.pause.as_secs_f64(),
            "upstream answered 429; route frozen"
        );
        freeze
    }
}

impl Exchange {
    /// A 429 that states the upstream's limit ("Maximum allowed N per HH:MM:SS") teaches the
    /// budget, if it is stricter than configured (the upstream counts for everyone using the
    /// registration, and it is the judge); a looser one is never adopted without an operator.
    /// A 429 that states none (Graph's) is counted, so an operator can see a configured limit is
    /// too high.
    fn learn(&self, route: RouteKind, body: &[u8]) {
        let Some((limit, length)) = upstream::stated_limit(body) else {
            self.metrics
                .upstream_throttled_unstated
                .get_or_create(&crate::metrics::RoutePoolLabels {
                    tenant: self.metrics.tenant.clone(),
                    route: route.name(),
                    pool: self.budget.pool_of(route),
                })
                .inc();
            return;
        };
        let Some(learnt) = self.budget.learn(route, Quota { limit, length }) else {
            return;
        };
        let show = |q: &[Quota]| {
            q.iter()
                .map(|q| format!("{}/{}s", q.limit, q.length.as_secs()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::warn!(
            route = route.name(),
            pool = %learnt.pool,
            before = %show(&learnt.before),
            after = %show(&learnt.after),
            "the upstream stated a stricter limit than configured; adopted (raise it only in the configuration)"
        );
    }
}

fn no_token(e: UpstreamError) -> CallError {
    match e {
        UpstreamError::Token(t) => CallError::NoToken(t),
        other => CallError::Upstream(other),
    }
}
