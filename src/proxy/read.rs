//! The read path: a fresh hit, or one collapsed upstream call for everyone asking at once.
//!
//! A collapsed read (a *flight*) queues for its budget slot as long as any caller could accept
//! (`budget.max_wait_cap`) and publishes its projected slot. Each caller, leader or follower,
//! holds it against its own deadline: one whose deadline comes before the slot leaves at once
//! with a 429 and the exact `Retry-After` (or an expired entry, when it holds one and did not ask
//! for a fresh answer); one with a longer wait than the others stays until its own deadline.
//! When every caller has left, the flight is dropped and its queued slot is given back.

use std::{sync::Arc, time::Duration};

use http::{Method, StatusCode};
use tokio::{sync::watch, time::Instant};

use super::{Answer, CacheResult, Failure, Outcome, Proxy};
use crate::{
    budget::{Caller, RefuseReason, SlotState},
    cache::{Entry, Filled, Key},
    error::ApiError,
    exchange::{CallError, Retry, Sent},
    flight::Flight,
    outcome::json_content_type,
    route::RouteKind,
    upstream::Request,
};

pub(super) type SlotReceiver = watch::Receiver<SlotState>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct FlightKey {
    pub(super) key: Key,
    /// Forced refreshes (no-cache) collapse among themselves, never onto a cache re-check.
    pub(super) forced: bool,
}

impl Proxy {
    pub(super) async fn read(self: &Arc<Self>, route: RouteKind, key: Key, ctx: super::Ctx) -> Outcome {
        let kind = key.kind();
        let arrived = Instant::now();
        if let Some(answer) = self.lookup(&key, &ctx.directives, arrived) {
            let negative = answer.status == StatusCode::NOT_FOUND;
            self.metrics
                .cache_lookup(kind, if negative { "negative" } else { "hit" });
            return Ok(answer);
        }
        if ctx.directives.only_if_cached {
            self.metrics.cache_lookup(kind, "miss");
            return Err(ApiError::NotCached.into());
        }
        let forced = ctx.directives.no_cache || ctx.directives.max_age.is_some();
        // An expired entry at hand is served rather than queueing for a slot, unless the caller
        // asked for a fresh answer: then it gets one or an honest 429 (stale is for failures).
        let stale = if forced {
            None
        } else {
            self.store
                .get(&key)
                .filter(|e| e.usable_stale(arrived, self.policy.cache.stale_if_error))
        };
        let deadline = arrived + if stale.is_some() { Duration::ZERO } else { ctx.wait };
        let fk = FlightKey { key, forced };
        let this = self.clone();
        // From here on this caller waits (for its slot, or for whoever leads the flight): it
        // gives back its place under `server.max_concurrency`.
        ctx.work.release();
        let (request_id, caller) = (ctx.request_id, ctx.caller);
        let flight = self.flights.join_or_start(fk.clone(), move || {
            let (tx, rx) = watch::channel(SlotState::Unknown);
            (this.fetch(route, fk, request_id, caller, tx), rx)
        });
        let joined = flight.joined;
        self.metrics
            .cache_lookup(kind, if joined { "collapsed" } else { "miss" });
        let mut outcome = self.follow(route, flight, deadline, stale.as_deref()).await;
        if joined {
            if let Ok(Answer {
                cache: CacheResult::Forwarded { collapsed, .. },
                ..
            }) = &mut outcome
            {
                *collapsed = true;
            }
        }
        outcome
    }

    /// Waits for a flight's outcome, leaving at once if its slot comes after `deadline`.
    async fn follow(
        &self,
        route: RouteKind,
        flight: Flight<Outcome, SlotReceiver>,
        deadline: Instant,
        stale: Option<&Entry>,
    ) -> Outcome {
        let Flight {
            mut work,
            meta: mut slot,
            ..
        } = flight;
        loop {
            let state = *slot.borrow_and_update();
            if let SlotState::Queued(at) = state {
                if at > deadline {
                    let now = Instant::now();
                    return match stale {
                        Some(e) => Ok(Self::stale(e, None, "budget", now)),
                        None => {
                            let windows = self.exchange.budget().status(route).windows;
                            Err(self.refusal(route, at - now, RefuseReason::Budget, windows))
                        }
                    };
                }
            }
            tokio::select! {
                outcome = &mut work => return outcome,
                changed = slot.changed() => {
                    if changed.is_err() {
                        // The flight is finishing: no more slot news.
                        return work.await;
                    }
                }
            }
        }
    }

    /// The flight's work for a read miss: token, budget, upstream, store.
    async fn fetch(
        self: Arc<Self>,
        route: RouteKind,
        fk: FlightKey,
        request_id: String,
        caller: Caller,
        slot: watch::Sender<SlotState>,
    ) -> Outcome {
        let now = Instant::now();
        let cached = self
            .store
            .get(&fk.key)
            .filter(|e| e.usable_stale(now, self.policy.cache.stale_if_error));
        if !fk.forced {
            // A flight that finished between the caller's lookup and this one may have stored it.
            if let Some(entry) = &cached {
                if let Some(fresh) = self.freshness(&fk.key, entry, now) {
                    return Ok(Self::hit(entry, fresh));
                }
            }
        }
        let stale = cached.filter(|e| self.freshness(&fk.key, e, now).is_none());
        // Taken before anything is sent: a write that lands after this voids our answer.
        let ticket = self.store.ticket().await;
        let req = Request {
            method: Method::GET,
            path_and_query: upstream_path(&fk.key),
            body: None,
            request_id,
        };
        let admitted = match self
            .exchange
            .admit(route, &caller, self.policy.flight_wait, Some(&slot))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                return match (&stale, &e) {
                    (Some(entry), CallError::Refused(_)) if !fk.forced => {
                        Ok(Self::stale(entry, None, "budget", Instant::now()))
                    }
                    (Some(entry), CallError::NoToken(_)) => {
                        Ok(Self::stale(entry, None, "stale-if-error", Instant::now()))
                    }
                    _ => Err(self.call_failure(route, e)),
                };
            }
        };
        let sent_at = Instant::now();
        let sent = match self.exchange.send(route, &req, admitted, Retry::Read).await {
            Ok(sent) => sent,
            Err(e) => {
                return match &stale {
                    Some(entry) => Ok(Self::stale(entry, None, "stale-if-error", Instant::now())),
                    None => Err(self.call_failure(route, e)),
                }
            }
        };
        self.store_read(route, fk, sent, sent_at, ticket, stale.as_deref())
            .await
    }

    /// What is stored, and for how long: 200s that pass their check, and 404s of incidents.
    async fn store_read(
        &self,
        route: RouteKind,
        fk: FlightKey,
        sent: Sent,
        sent_at: Instant,
        ticket: crate::cache::Ticket,
        stale: Option<&Entry>,
    ) -> Outcome {
        let budget = Some((route, sent.windows.clone()));
        let resp = &sent.response;
        let status = resp.status.as_u16();
        let now = Instant::now();
        let (ttl, last_update) = match resp.status {
            StatusCode::OK => {
                let checked = match &fk.key {
                    Key::Incident(id) => self.ingest.check_incident(*id, &resp.body),
                    Key::List(_) => self.ingest.spread_list(&resp.body, sent_at, ticket).await.map(|_| None),
                };
                let Some(last_update) = checked else {
                    return match stale {
                        Some(entry) => Ok(Self::stale(entry, Some(status), "stale-if-error", now)),
                        None => Err(Failure {
                            error: ApiError::BadGateway("the upstream answered with an invalid body".into()),
                            budget,
                            upstream_status: Some(status),
                        }),
                    };
                };
                let ttl = match fk.key {
                    Key::Incident(_) => self.policy.cache.ttl,
                    Key::List(_) => self.policy.cache.list_ttl,
                };
                (ttl, last_update)
            }
            StatusCode::NOT_FOUND if matches!(fk.key, Key::Incident(_)) => (self.policy.cache.negative_ttl, None),
            _ => return self.non_success(route, sent, stale),
        };
        let resp = sent.response;
        let entry = Entry {
            status: resp.status,
            body: resp.body,
            content_type: resp.content_type.unwrap_or_else(json_content_type),
            stored_at: sent_at,
            ttl,
            last_update,
        };
        let (status, body, content_type) = (entry.status, entry.body.clone(), entry.content_type.clone());
        let fwd = if fk.forced { "request" } else { "miss" };
        let stored = self.ingest.fill(fk.key, entry, ticket).await == Filled::Stored;
        Ok(Answer::forwarded(
            status,
            body,
            content_type,
            fwd,
            stored,
            budget,
            sent.queued,
        ))
    }

    /// Any upstream answer other than 200/404 for a read or a write: throttling (the route is
    /// frozen already), errors, pass-through.
    pub(super) fn non_success(&self, route: RouteKind, sent: Sent, stale: Option<&Entry>) -> Outcome {
        let resp = sent.response;
        let status = resp.status.as_u16();
        let budget = Some((route, sent.windows));
        let now = Instant::now();
        let failure = |error: ApiError| Failure {
            error,
            budget: budget.clone(),
            upstream_status: Some(status),
        };
        match resp.status {
            StatusCode::TOO_MANY_REQUESTS => {
                let pause = sent.freeze.map_or(Duration::ZERO, |f| f.pause);
                match stale {
                    Some(e) => Ok(Self::stale(e, Some(status), "stale-if-error", now)),
                    None => Err(failure(ApiError::Throttled {
                        retry_after: pause,
                        message: format!(
                            "Defender throttled this app registration; try again in {} seconds",
                            crate::error::retry_after_secs(pause)
                        )
                        .into(),
                    })),
                }
            }
            s if s.is_server_error() || s == StatusCode::UNAUTHORIZED || s.is_redirection() => match stale {
                Some(e) => Ok(Self::stale(e, Some(status), "stale-if-error", now)),
                None => Err(failure(ApiError::BadGateway(
                    match s {
                        StatusCode::UNAUTHORIZED => "the upstream rejected the proxy's credentials".to_string(),
                        s if s.is_redirection() => {
                            format!("the upstream answered a redirect ({status}), which is never followed")
                        }
                        _ => format!("the upstream answered {status}"),
                    }
                    .into(),
                ))),
            },
            // Other client errors (400, 403, ...) are the upstream's word on the request: pass them on.
            _ => Ok(Answer::forwarded(
                resp.status,
                resp.body,
                resp.content_type.unwrap_or_else(json_content_type),
                "miss",
                false,
                budget,
                sent.queued,
            )),
        }
    }
}

/// The upstream sees the canonical form of what the key stands for.
fn upstream_path(key: &Key) -> String {
    match key {
        Key::Incident(id) => format!("/api/incidents/{id}"),
        Key::List(q) if q.is_empty() => "/api/incidents".to_string(),
        Key::List(q) => format!("/api/incidents?{q}"),
    }
}
