//! The read path: a fresh hit, or one collapsed upstream call for everyone asking at once.
//!
//! A collapsed read (a *flight*) queues for its budget slot as long as any caller could accept
//! (`budget.max_wait_cap`) and publishes its projected slot. Each caller, leader or follower,
//! holds it against its own deadline: one whose deadline comes before the slot leaves at once
//! with a 429 and the exact `Retry-After` (or an expired entry, when it holds one and did not ask
//! for a fresh answer); one with a longer wait than the others stays until its own deadline.
//! When every caller has left, the flight is dropped and its queued slot is given back.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::{sync::watch, time::Instant};

use super::{Answer, CacheResult, Failure, Outcome, Proxy};
use crate::{
    body::{Bodies, View},
    budget::{Caller, RefuseReason, SlotState, WindowStatus},
    cache::{Entry, Filled, Key, Ticket},
    dialect::{
        incident::DEFENDER_LIST_CONTEXT,
        query::{
            defender_list_base, graph_list_over_defender, graph_matches, graph_next_link, graph_next_link_if,
            graph_order, GraphOverDefender, GRAPH_DEFAULT_TOP,
        },
        Dialect,
    },
    error::ApiError,
    exchange::{CallError, Retry, Sent},
    flight::Flight,
    ingest::{page_items, render_error, render_incident, Incident},
    odata::{GraphListQuery, ListQuery, GRAPH_MAX_TOP},
    outcome::json_content_type,
    route::RouteKind,
    tier::{Found, SharedTicket},
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
    pub(super) async fn read(self: &Arc<Self>, route: RouteKind, key: Key, view: View, ctx: super::Ctx) -> Outcome {
        let kind = key.kind();
        let arrived = Instant::now();
        if let Some(answer) = self.lookup(&key, view, &ctx.directives, arrived) {
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
        let mut outcome = self
            .follow(route, flight, deadline, stale.as_deref())
            .await
            .and_then(|a| a.in_view(view));
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
                    return Ok(Self::shared_hit(entry, fresh));
                }
            }
        }
        let stale = cached.filter(|e| self.freshness(&fk.key, e, now).is_none());
        // Taken before anything is sent: a write that lands after this voids our answer.
        let ticket = self.store.ticket().await;
        // The second tier: another replica's answer, or the right to fetch for all of them (the
        // lease is held until this flight ends), or a wait for whoever holds it.
        let (shared_ticket, _lease) = match &self.tier {
            None => (None, None),
            Some(tier) => match tier.find(&fk.key, fk.forced, &request_id).await {
                Found::Hit(entry) => {
                    let entry = Arc::new(entry);
                    let fresh = self.freshness(&fk.key, &entry, Instant::now());
                    // Stored here only if no write reached this replica since `ticket`.
                    self.store.fill(fk.key.clone(), entry.clone(), ticket).await;
                    match fresh {
                        Some(fresh) => return Ok(Self::shared_hit(&entry, fresh)),
                        None => (None, None),
                    }
                }
                Found::Fetch { ticket, lease } => (Some(ticket), lease),
                Found::Unavailable => (None, None),
            },
        };
        let call = Call {
            route,
            caller: &caller,
            slot: &slot,
            request_id: &request_id,
            stale: stale.as_deref(),
            forced: fk.forced,
            shared: shared_ticket.as_ref(),
        };
        let upstream = self.upstream_api();
        match fk.key.clone() {
            Key::Incident(id) => {
                let path = match upstream {
                    Dialect::Defender => format!("/api/incidents/{id}"),
                    // Defender incidents always carry their alerts: one entry serves both facades.
                    Dialect::Graph => format!("/v1.0/security/incidents/{id}?$expand=alerts"),
                };
                let (sent, sent_at) = match self.get(&call, path).await {
                    Ok(s) => s,
                    Err(outcome) => return outcome,
                };
                self.store_incident(&call, fk, id, sent, sent_at, ticket).await
            }
            Key::List(canonical) => {
                let Ok(query) = ListQuery::parse(&canonical) else {
                    return Err(ApiError::bad_request("the list query could not be parsed again").into());
                };
                match upstream {
                    Dialect::Defender => {
                        let path = if canonical.is_empty() {
                            "/api/incidents".to_string()
                        } else {
                            format!("/api/incidents?{canonical}")
                        };
                        let (sent, sent_at) = match self.get(&call, path).await {
                            Ok(s) => s,
                            Err(outcome) => return outcome,
                        };
                        self.store_native_list(&call, fk, sent, sent_at, ticket).await
                    }
                    Dialect::Graph => self.defender_list_over_graph(&call, fk, &query, ticket).await,
                }
            }
            Key::GraphList(k) => {
                let (base, canonical) = k.split_once('?').unwrap_or((&k, ""));
                let Ok(query) = GraphListQuery::parse(canonical) else {
                    return Err(ApiError::bad_request("the list query could not be parsed again").into());
                };
                self.graph_list(&call, fk.clone(), base, &query, ticket).await
            }
        }
    }

    /// One budgeted upstream GET for a flight: its slot within the flight's wait, then the call.
    /// `Err` is what the flight answers instead (an expired entry, or the failure).
    async fn get(&self, call: &Call<'_>, path_and_query: String) -> Result<(Sent, Instant), Outcome> {
        let req = Request {
            method: Method::GET,
            path_and_query,
            body: None,
            request_id: call.request_id.to_string(),
        };
        let admitted = match self
            .exchange
            .admit(call.route, call.caller, self.policy.flight_wait, Some(call.slot))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                return Err(match (call.stale, &e) {
                    (Some(entry), CallError::Refused(_)) if !call.forced => {
                        Ok(Self::stale(entry, None, "budget", Instant::now()))
                    }
                    (Some(entry), CallError::NoToken(_)) => {
                        Ok(Self::stale(entry, None, "stale-if-error", Instant::now()))
                    }
                    _ => Err(self.call_failure(call.route, e)),
                });
            }
        };
        let sent_at = Instant::now();
        match self.exchange.send(call.route, &req, admitted, Retry::Read).await {
            Ok(sent) => Ok((sent, sent_at)),
            Err(e) => Err(match call.stale {
                Some(entry) => Ok(Self::stale(entry, None, "stale-if-error", Instant::now())),
                None => Err(self.call_failure(call.route, e)),
            }),
        }
    }

    /// An answer the proxy cannot use (not the incident asked for, not a list page).
    fn invalid_body(&self, call: &Call<'_>, budget: BudgetNote, status: u16) -> Outcome {
        match call.stale {
            Some(entry) => Ok(Self::stale(entry, Some(status), "stale-if-error", Instant::now())),
            None => Err(Failure {
                error: ApiError::BadGateway("the upstream answered with an invalid body".into()),
                budget,
                upstream_status: Some(status),
            }),
        }
    }

    /// A Get answer: 200s that are the incident asked for, in every view, and 404s.
    async fn store_incident(
        &self,
        call: &Call<'_>,
        fk: FlightKey,
        id: i64,
        sent: Sent,
        sent_at: Instant,
        ticket: Ticket,
    ) -> Outcome {
        let budget = Some(sent.windows.clone());
        let status = sent.response.status;
        let entry = match status {
            StatusCode::OK => match self.ingest.check_incident(id, &sent.response.body) {
                Some(incident) => self.ingest.incident_entry(incident, sent_at),
                None => return self.invalid_body(call, budget, status.as_u16()),
            },
            StatusCode::NOT_FOUND => Entry {
                status,
                bodies: Arc::new(render_error(
                    self.upstream_api(),
                    status,
                    &sent.response.body,
                    call.request_id,
                )),
                content_type: json_content_type(),
                stored_at: sent_at,
                ttl: self.policy.cache.negative_ttl,
                last_update: None,
            },
            _ => return self.non_success(sent, call.stale, call.request_id),
        };
        self.store_entry(call, fk, entry, ticket, budget, sent.queued).await
    }

    /// The incidents of a list page go to the shared tier too (under the page's ticket), so
    /// another replica's Get of one of them is a hit in Redis.
    async fn share_spread(&self, call: &Call<'_>, offered: Vec<(Key, Arc<Entry>)>) {
        if let (Some(tier), Some(shared)) = (&self.tier, call.shared) {
            for (key, entry) in offered {
                tier.fill(&key, &entry, shared).await;
            }
        }
    }

    /// Stores a read's entry and answers every caller of the flight from it.
    async fn store_entry(
        &self,
        call: &Call<'_>,
        fk: FlightKey,
        entry: Entry,
        ticket: Ticket,
        budget: BudgetNote,
        queued: Duration,
    ) -> Outcome {
        let (status, bodies, content_type) = (entry.status, entry.bodies.clone(), entry.content_type.clone());
        let fwd = if fk.forced { "request" } else { "miss" };
        if let (Some(tier), Some(shared)) = (&self.tier, call.shared) {
            tier.fill(&fk.key, &entry, shared).await;
        }
        let stored = self.ingest.fill(fk.key, entry, ticket).await == Filled::Stored;
        let mut answer = Answer::forwarded(status, Bytes::new(), content_type, fwd, stored, budget, queued);
        answer.bodies = Some(bodies);
        Ok(answer)
    }

    fn list_entry(&self, bodies: Bodies, sent_at: Instant) -> Entry {
        Entry {
            status: StatusCode::OK,
            bodies: Arc::new(bodies),
            content_type: json_content_type(),
            stored_at: sent_at,
            ttl: self.policy.cache.list_ttl,
            last_update: None,
        }
    }

    /// A Defender List answer from a Defender upstream: stored as it came, every incident in it
    /// refreshing its own entry.
    async fn store_native_list(
        &self,
        call: &Call<'_>,
        fk: FlightKey,
        sent: Sent,
        sent_at: Instant,
        ticket: Ticket,
    ) -> Outcome {
        let budget = Some(sent.windows.clone());
        if sent.response.status != StatusCode::OK {
            return self.non_success(sent, call.stale, call.request_id);
        }
        let body = sent.response.body.clone();
        let Some((_, offered)) = self.ingest.spread_list(&body, sent_at, ticket).await else {
            return self.invalid_body(call, budget, 200);
        };
        self.share_spread(call, offered).await;
        let entry = self.list_entry(Bodies::one(View::Defender, body), sent_at);
        self.store_entry(call, fk, entry, ticket, budget, sent.queued).await
    }

    /// A Defender List over a Graph upstream: Graph pages (at most 50 each; a Defender page holds
    /// up to 100) from the caller's `$skip`, in Defender's order, each spending a List slot, until
    /// the caller's `$top` is filled or the upstream has no more. The next page starts after what
    /// the previous one returned (a short page followed by a next link is not the last), an
    /// incident seen twice (one created between the two calls shifts the order) is kept once,
    /// and the translation happens here, once.
    async fn defender_list_over_graph(
        &self,
        call: &Call<'_>,
        fk: FlightKey,
        query: &ListQuery,
        ticket: Ticket,
    ) -> Outcome {
        let wanted = query.top.unwrap_or(crate::dialect::query::DEFENDER_DEFAULT_TOP) as usize;
        let mut skip = query.skip.unwrap_or(0);
        let mut incidents: Vec<Incident> = Vec::new();
        let mut first_sent = None;
        let mut queued = Duration::ZERO;
        let mut budget = None;
        let base = defender_list_base(query);
        while incidents.len() < wanted {
            let asked = (wanted - incidents.len()).min(GRAPH_MAX_TOP as usize);
            let page = GraphListQuery {
                top: Some(asked as u32),
                skip: Some(skip),
                ..base.clone()
            };
            let path = format!("/v1.0/security/incidents?{}", page.canonical());
            let (sent, sent_at) = match self.get(call, path).await {
                Ok(s) => s,
                Err(outcome) => return outcome,
            };
            first_sent.get_or_insert(sent_at);
            queued += sent.queued;
            budget = Some(sent.windows.clone());
            if sent.response.status != StatusCode::OK {
                return self.non_success(sent, call.stale, call.request_id);
            }
            let Some(got) = page_items(&sent.response.body) else {
                return self.invalid_body(call, budget, 200);
            };
            let returned = got.items.len();
            for raw in got.items.iter().take(asked) {
                match render_incident(Dialect::Graph, raw.get().as_bytes()) {
                    Some(i) if i.bodies.get(View::Defender).is_some() => {
                        if !incidents.iter().any(|seen| seen.id == i.id) {
                            incidents.push(i);
                        }
                    }
                    _ => return self.invalid_body(call, budget, 200),
                }
            }
            skip = skip.saturating_add(returned as u64);
            if returned == 0 || (returned < asked && !got.next) {
                break;
            }
        }
        let sent_at = first_sent.unwrap_or_else(Instant::now);
        let body = raw_list_body(
            DEFENDER_LIST_CONTEXT,
            incidents.iter().filter_map(|i| i.bodies.get(View::Defender)),
            None,
            None,
        );
        let (_, offered) = self.ingest.spread(incidents, sent_at, ticket).await;
        self.share_spread(call, offered).await;
        let entry = self.list_entry(Bodies::one(View::Defender, body), sent_at);
        self.store_entry(call, fk, entry, ticket, budget, queued).await
    }

    /// A Graph List page for the Graph facade, from either upstream; `@odata.nextLink` points
    /// at the proxy (`base`).
    async fn graph_list(
        &self,
        call: &Call<'_>,
        fk: FlightKey,
        base: &str,
        query: &GraphListQuery,
        ticket: Ticket,
    ) -> Outcome {
        let view = graph_view(query);
        let upstream = self.upstream_api();
        let top = query.top.unwrap_or(GRAPH_DEFAULT_TOP) as usize;
        let path = match upstream {
            // Always an explicit `$top`: Graph documents no default page size.
            Dialect::Graph => {
                let explicit = GraphListQuery {
                    top: Some(top as u32),
                    ..query.clone()
                };
                format!("/v1.0/security/incidents?{}", explicit.canonical())
            }
            Dialect::Defender => match graph_list_over_defender(query) {
                GraphOverDefender::Direct(q) => format!("/api/incidents?{}", q.canonical()),
                GraphOverDefender::Local { upstream } => {
                    return self.graph_list_local(call, fk, base, query, upstream, ticket).await
                }
            },
        };
        let (sent, sent_at) = match self.get(call, path).await {
            Ok(s) => s,
            Err(outcome) => return outcome,
        };
        let budget = Some(sent.windows.clone());
        if sent.response.status != StatusCode::OK {
            return self.non_success(sent, call.stale, call.request_id);
        }
        let Some(got) = page_items(&sent.response.body) else {
            return self.invalid_body(call, budget, 200);
        };
        let returned = got.items.len().min(top);
        let mut rendered = Vec::with_capacity(returned);
        let mut complete = Vec::with_capacity(returned);
        for raw in got.items.iter().take(top) {
            let text = raw.get().as_bytes();
            match upstream {
                // Graph's own items are served as they came; only complete ones (alerts
                // expanded) refresh the per-incident entries, whose Defender view needs alerts.
                Dialect::Graph => {
                    rendered.push(Bytes::copy_from_slice(text));
                    if query.expand_alerts {
                        complete.extend(render_incident(Dialect::Graph, text));
                    }
                }
                Dialect::Defender => {
                    let Some(i) = render_incident(Dialect::Defender, text) else {
                        return self.invalid_body(call, budget, 200);
                    };
                    let Some(b) = i.bodies.get(view) else {
                        return self.invalid_body(call, budget, 200);
                    };
                    rendered.push(b.clone());
                    complete.push(i);
                }
            }
        }
        let total = got.count.filter(|_| upstream == Dialect::Graph);
        let more = match total {
            Some(total) => query.skip.unwrap_or(0).saturating_add(returned as u64) < total,
            None => returned >= top || got.next,
        };
        let next = graph_next_link_if(base, query, returned, more);
        let shown_count = if query.count == Some(true) { total } else { None };
        let body = raw_list_body(graph_context(query), rendered.iter(), shown_count, next.as_deref());
        let (_, offered) = self.ingest.spread(complete, sent_at, ticket).await;
        self.share_spread(call, offered).await;
        let entry = self.list_entry(Bodies::one(view, body), sent_at);
        self.store_entry(call, fk, entry, ticket, budget, sent.queued).await
    }

    /// A Graph query one Defender call cannot answer (another order, `$count`, a Graph-only
    /// filter field) over a Defender upstream: every incident the filter's Defender part matches
    /// (at most [`LOCAL_MAX_MATCHES`], pages of 100, each a List call), then the rest of the query
    /// applied here. The sorted matches are kept for `cache.list_ttl` (until the next write), so
    /// a caller walking the pages by `@odata.nextLink` spends the listing once, not once per
    /// page; a query matching more is refused with a 400 asking for a narrower filter (kept too,
    /// so retries spend nothing), never answered with a wrong page.
    async fn graph_list_local(
        &self,
        call: &Call<'_>,
        fk: FlightKey,
        base: &str,
        query: &GraphListQuery,
        mut upstream: ListQuery,
        ticket: Ticket,
    ) -> Outcome {
        let set_key = GraphListQuery {
            top: None,
            skip: None,
            count: None,
            expand_alerts: false,
            ..query.clone()
        }
        .canonical();
        let (matches, fetched, budget, queued) = match self.local_sets.get(&set_key, self.policy.cache.list_ttl) {
            Some(LocalSet::Matches(m)) => (m, None, None, Duration::ZERO),
            Some(LocalSet::TooBroad) => return Err(too_broad().into()),
            None => {
                let page_size = crate::dialect::query::DEFENDER_DEFAULT_TOP;
                let mut incidents: Vec<Incident> = Vec::new();
                let mut first_sent = None;
                let mut queued = Duration::ZERO;
                let mut budget = None;
                // One page more than the cap allows, of one item: is there anything beyond it?
                let pages = LOCAL_MAX_MATCHES / page_size as usize;
                for page in 0..=pages {
                    let last = page == pages;
                    upstream.top = Some(if last { 1 } else { page_size });
                    upstream.skip = Some((page as u64) * u64::from(page_size));
                    let (sent, sent_at) = match self.get(call, format!("/api/incidents?{}", upstream.canonical())).await
                    {
                        Ok(s) => s,
                        Err(outcome) => return outcome,
                    };
                    first_sent.get_or_insert(sent_at);
                    queued += sent.queued;
                    budget = Some(sent.windows.clone());
                    if sent.response.status != StatusCode::OK {
                        return self.non_success(sent, call.stale, call.request_id);
                    }
                    let Some(got) = page_items(&sent.response.body) else {
                        return self.invalid_body(call, budget, 200);
                    };
                    let returned = got.items.len();
                    if last {
                        if returned > 0 {
                            self.local_sets.put(set_key, LocalSet::TooBroad);
                            return Err(Failure {
                                error: too_broad(),
                                budget,
                                upstream_status: Some(200),
                            });
                        }
                        break;
                    }
                    for raw in &got.items {
                        match render_incident(Dialect::Defender, raw.get().as_bytes()) {
                            Some(i) if i.bodies.get(View::GraphAlerts).is_some() => {
                                if !incidents.iter().any(|seen| seen.id == i.id) {
                                    incidents.push(i);
                                }
                            }
                            _ => return self.invalid_body(call, budget, 200),
                        }
                    }
                    if returned < page_size as usize {
                        break;
                    }
                }
                let mut matching: Vec<(serde_json::Value, Arc<Bodies>)> = incidents
                    .iter()
                    .filter_map(|i| {
                        let full: serde_json::Value = serde_json::from_slice(i.bodies.get(View::GraphAlerts)?).ok()?;
                        let keep = query.filter.as_ref().map_or(true, |f| graph_matches(f, &full));
                        keep.then(|| (full, i.bodies.clone()))
                    })
                    .collect();
                matching.sort_by(|a, b| graph_order(query, &a.0, &b.0));
                let matches: Arc<Vec<Arc<Bodies>>> = Arc::new(matching.into_iter().map(|(_, b)| b).collect());
                self.local_sets.put(set_key, LocalSet::Matches(matches.clone()));
                let sent_at = first_sent.unwrap_or_else(Instant::now);
                let (_, offered) = self.ingest.spread(incidents, sent_at, ticket).await;
                self.share_spread(call, offered).await;
                (matches, Some(sent_at), budget, queued)
            }
        };
        let view = graph_view(query);
        let total = matches.len() as u64;
        let skip = usize::try_from(query.skip.unwrap_or(0)).unwrap_or(usize::MAX);
        let top = query.top.unwrap_or(GRAPH_DEFAULT_TOP) as usize;
        let shown: Vec<Bytes> = matches
            .iter()
            .skip(skip)
            .take(top)
            .filter_map(|b| b.get(view).cloned())
            .collect();
        let next = graph_next_link(base, query, shown.len(), Some(total));
        let count = (query.count == Some(true)).then_some(total);
        let body = raw_list_body(graph_context(query), shown.iter(), count, next.as_deref());
        let entry = self.list_entry(Bodies::one(view, body), fetched.unwrap_or_else(Instant::now));
        self.store_entry(call, fk, entry, ticket, budget, queued).await
    }

    /// Any upstream answer other than 200/404 for a read or a write: throttling (the route is
    /// frozen already), errors, pass-through.
    pub(super) fn non_success(&self, sent: Sent, stale: Option<&Entry>, request_id: &str) -> Outcome {
        let resp = sent.response;
        let status = resp.status.as_u16();
        let budget = Some(sent.windows);
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
                            "the upstream throttled this app registration; try again in {} seconds",
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
            // Other client errors (400, 403, ...) are the upstream's word on the request: pass them
            // on, in the envelope of each caller's dialect.
            _ => {
                let bodies = render_error(self.upstream_api(), resp.status, &resp.body, request_id);
                let mut answer = Answer::forwarded(
                    resp.status,
                    Bytes::new(),
                    json_content_type(),
                    "miss",
                    false,
                    budget,
                    sent.queued,
                );
                answer.bodies = Some(Arc::new(bodies));
                Ok(answer)
            }
        }
    }
}

/// The match sets of Graph queries answered over a Defender upstream (the local plan), kept
/// for `cache.list_ttl` and dropped at every write, so paging through one costs its listing once.
#[derive(Default)]
pub(super) struct LocalSets(parking_lot::Mutex<std::collections::HashMap<String, (Instant, LocalSet)>>);

/// What listing a query's Defender part found.
#[derive(Clone)]
pub(super) enum LocalSet {
    /// The matching incidents, in the query's order.
    Matches(Arc<Vec<Arc<Bodies>>>),
    /// More than [`LOCAL_MAX_MATCHES`]: refused.
    TooBroad,
}

/// Match sets kept at most (a handful of sync tools' queries); beyond, the oldest go.
const LOCAL_SETS_MAX: usize = 32;

impl LocalSets {
    fn get(&self, key: &str, ttl: Duration) -> Option<LocalSet> {
        let sets = self.0.lock();
        let (at, set) = sets.get(key)?;
        (at.elapsed() < ttl).then(|| set.clone())
    }

    fn put(&self, key: String, set: LocalSet) {
        let mut sets = self.0.lock();
        if sets.len() >= LOCAL_SETS_MAX {
            if let Some(oldest) = sets.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) {
                sets.remove(&oldest);
            }
        }
        sets.insert(key, (Instant::now(), set));
    }

    /// After a write: every kept match set may be out of date.
    pub(super) fn clear(&self) {
        self.0.lock().clear();
    }
}

/// The budget note an answer carries: the route and its windows after the call.
type BudgetNote = Option<Vec<WindowStatus>>;

/// What every upstream call of one flight shares.
struct Call<'a> {
    route: RouteKind,
    caller: &'a Caller,
    slot: &'a watch::Sender<SlotState>,
    request_id: &'a str,
    /// An expired entry that may stand in for a failed call.
    stale: Option<&'a Entry>,
    forced: bool,
    /// The flight's place in the shared order of writes (its answer goes to the shared tier).
    shared: Option<&'a SharedTicket>,
}

/// A list page's body from its items' JSON, as they are (no re-serialisation).
fn raw_list_body<'a>(
    context: &str,
    items: impl Iterator<Item = &'a Bytes>,
    count: Option<u64>,
    next_link: Option<&str>,
) -> Bytes {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"@odata.context\":");
    out.extend_from_slice(serde_json::Value::from(context).to_string().as_bytes());
    if let Some(n) = count {
        out.extend_from_slice(format!(",\"@odata.count\":{n}").as_bytes());
    }
    out.extend_from_slice(b",\"value\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    if let Some(link) = next_link {
        out.extend_from_slice(b",\"@odata.nextLink\":");
        out.extend_from_slice(serde_json::Value::from(link).to_string().as_bytes());
    }
    out.push(b'}');
    Bytes::from(out)
}

/// The most incidents one Graph query over a Defender upstream may have to list (the
/// [`GraphOverDefender::Local`] plan): 10 List calls of 100, and one of 1 to see whether more
/// match.
const LOCAL_MAX_MATCHES: usize = 1000;

fn too_broad() -> ApiError {
    ApiError::bad_request(format!(
        "over the Defender API this query is answered by listing every match of its Defender part, and more than {LOCAL_MAX_MATCHES} incidents match; narrow $filter (e.g. lastUpdateDateTime ge ...) or use the default order without $count"
    ))
}

/// The view a Graph list query's items are read in.
pub(super) fn graph_view(query: &GraphListQuery) -> View {
    if query.expand_alerts {
        View::GraphAlerts
    } else {
        View::Graph
    }
}

/// A Graph list page's `@odata.context`.
fn graph_context(query: &GraphListQuery) -> &'static str {
    if query.expand_alerts {
        GRAPH_LIST_CONTEXT_ALERTS
    } else {
        GRAPH_LIST_CONTEXT
    }
}

const GRAPH_LIST_CONTEXT: &str = "https://graph.microsoft.com/v1.0/$metadata#security/incidents";
const GRAPH_LIST_CONTEXT_ALERTS: &str = "https://graph.microsoft.com/v1.0/$metadata#security/incidents(alerts())";
