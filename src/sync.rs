//! The incident sync: keeps every cached incident current by following the List API's changes.
//!
//! A *pass* lists `$filter=lastUpdateTime ge <since>` page by page (`$top=100`, `$skip`) and
//! writes each incident into the per-id cache (in order: never over a newer answer). A complete
//! pass proves that nothing else changed between `since` and the pass's start, so every cached
//! incident fetched since the chain of passes began is confirmed current as of that start
//! ([`Confirmations`], in the cache, where the proxy reads it).
//!
//! - `since` comes from the upstream's own clock: the next pass lists from the `Date` of this
//!   pass's first answer minus `sync.overlap` (validated to be at least `upstream.timeout`), so a
//!   change that lands while a pass is paging is caught by the next one, whatever our clock says.
//! - A pass may span several runs: when the sync's share of the List quota runs out mid-pass, the
//!   next run resumes at the page where it stopped instead of starting again at `$skip=0`, so a
//!   change set larger than one run's share (a 24 h lookback over a busy tenant, a backlog after
//!   an outage) completes instead of livelocking. Paging cannot lose an item: the filter only
//!   gains members (an incident that changes again stays in the set), so offsets only shift
//!   items later, never skip them; the pass ends on a page shorter than `$top`.
//!
//! The sync spends List quota through the same budget as callers, but only slots that are free
//! right now (it never queues, so it never delays a caller), and at most `sync.max_share` of each
//! List quota, counted by a ledger of its own.

use std::{sync::Arc, time::Duration};

use http::Method;
use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::{
    budget::{Caller, Ledger, Priority, Quota},
    cache::{Confirmations, Key, Store},
    config::SyncConfig,
    dialect::Dialect,
    exchange::{CallError, Exchange, Retry},
    ingest::{page_items, render_incident, Ingest},
    metrics::TenantMetrics,
    odata::{CompareOp, Field, Filter, GraphField, GraphListQuery, GraphOrderBy, GraphOrderField, ListQuery, Literal},
    route::RouteKind,
    shared::lease::{Holder, Lease},
    tier::{Found, SharedCache},
    upstream::Request,
};

/// Incidents per page (the Defender API's maximum `$top`).
pub const PAGE: usize = 100;
/// Incidents per page on a Graph upstream (Graph's maximum `$top`).
pub const GRAPH_PAGE: usize = 50;

/// Why a run did not complete its pass.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    #[error("the sync's share of the List quota is spent")]
    Share,
    #[error("no List slot is free now (callers come first)")]
    NoSlot,
    #[error("the upstream answered {0}")]
    Upstream(u16),
    #[error("the upstream request failed: {0}")]
    Failed(String),
    #[error("the upstream list answer was not a page of incidents")]
    BadPage,
    #[error("another replica took the sync's lease")]
    LeaseLost,
}

impl SyncError {
    pub fn label(&self) -> &'static str {
        match self {
            SyncError::Share => "share_spent",
            SyncError::NoSlot => "no_slot",
            SyncError::Upstream(_) => "upstream_status",
            SyncError::Failed(_) => "upstream_error",
            SyncError::BadPage => "bad_page",
            SyncError::LeaseLost => "lease_lost",
        }
    }
}

/// A pass in progress.
#[derive(Debug, Clone)]
struct Pass {
    since: OffsetDateTime,
    /// Graph upstream: the pass pages by time, ascending; it has listed everything changed
    /// before this instant (full precision), and `skip` counts the items changed at exactly this
    /// instant already listed.
    cursor: Option<OffsetDateTime>,
    skip: u64,
    /// When its first page was sent (proxy clock) and what the upstream's clock said then.
    started: Option<(Instant, OffsetDateTime)>,
    /// Begun by another replica (taken over with the lease): it moves the watermark on but
    /// vouches for nothing in this replica's cache.
    adopted: bool,
}

/// What one replica's sync hands to the next holder of the lease: the watermark and the pass
/// under way (upstream times as unix nanoseconds).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Watermark {
    since: Option<i128>,
    pass: Option<PassMark>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PassMark {
    since: i128,
    cursor: Option<i128>,
    skip: u64,
    upstream_started: Option<i128>,
}

fn from_nanos(n: i128) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(n).ok()
}

#[derive(Debug, Default)]
struct Inner {
    pass: Option<Pass>,
    /// Where the next pass lists from (upstream time).
    since: Option<OffsetDateTime>,
    /// Entries fetched before this are not covered by the chain of passes.
    chain_start: Option<Instant>,
    last_error: Option<String>,
    /// Start of the last complete pass (for the lag).
    confirmed_at: Option<Instant>,
    /// With `[shared]`: "holder", "standby" (another replica syncs) or "local" (Redis cannot
    /// be asked: this replica syncs on its own).
    role: Option<&'static str>,
}

/// The sync's own state, and what the admin endpoints read about it.
#[derive(Debug)]
pub struct SyncState {
    config: SyncConfig,
    confirmations: Arc<Confirmations>,
    /// The earliest instant any cached entry can have been fetched at (the sync's creation).
    born: Instant,
    inner: Mutex<Inner>,
}

/// A snapshot for `/readyz` and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncStatus {
    pub healthy: bool,
    /// Seconds since the start of the last complete pass.
    pub lag_seconds: Option<f64>,
    pub since: Option<String>,
    /// Where an unfinished pass resumes (`$skip`), if one is under way.
    pub resume_skip: Option<u64>,
    pub last_error: Option<String>,
    /// With several replicas (`[shared]`): whether this one runs the sync ("holder"), leaves it
    /// to another ("standby"), or runs it alone because Redis cannot be asked ("local").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
}

impl SyncState {
    pub fn new(config: SyncConfig, confirmations: Arc<Confirmations>) -> SyncState {
        SyncState {
            config,
            confirmations,
            born: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn status(&self, now: Instant) -> SyncStatus {
        let c = self.confirmations.get(now);
        let inner = self.inner.lock();
        SyncStatus {
            healthy: c.is_some_and(|c| c.healthy),
            lag_seconds: inner
                .confirmed_at
                .map(|at| now.saturating_duration_since(at).as_secs_f64()),
            since: inner.since.map(format_time),
            resume_skip: inner.pass.as_ref().filter(|p| p.skip > 0).map(|p| p.skip),
            last_error: inner.last_error.clone(),
            role: inner.role,
        }
    }

    fn set_role(&self, role: &'static str) {
        self.inner.lock().role = Some(role);
    }

    /// The watermark and the pass under way, for the next holder of the lease.
    fn watermark(&self) -> String {
        let inner = self.inner.lock();
        let mark = Watermark {
            since: inner.since.map(OffsetDateTime::unix_timestamp_nanos),
            pass: inner.pass.as_ref().map(|p| PassMark {
                since: p.since.unix_timestamp_nanos(),
                cursor: p.cursor.map(OffsetDateTime::unix_timestamp_nanos),
                skip: p.skip,
                upstream_started: p.started.map(|(_, u)| u.unix_timestamp_nanos()),
            }),
        };
        serde_json::to_string(&mark).unwrap_or_default()
    }

    /// This replica takes the sync over: it resumes from the watermark another replica saved
    /// (`None`: nobody has; it starts from the lookback). Its own cache missed whatever the
    /// other replica's passes wrote meanwhile, so its chain of confirmations restarts now.
    fn take_over(&self, saved: Option<&str>) {
        let mark: Watermark = saved.and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
        let mut inner = self.inner.lock();
        if let Some(since) = mark.since.and_then(from_nanos) {
            inner.since = Some(since);
        }
        inner.pass = mark.pass.and_then(|p| {
            Some(Pass {
                since: from_nanos(p.since)?,
                cursor: p.cursor.and_then(from_nanos),
                skip: p.skip,
                started: p.upstream_started.and_then(from_nanos).map(|u| (Instant::now(), u)),
                adopted: true,
            })
        });
        inner.chain_start = Some(Instant::now());
    }

    /// The pass to continue, or a new one from the watermark (or the lookback, the first time).
    fn pass(&self, wall_now: OffsetDateTime) -> Pass {
        let mut inner = self.inner.lock();
        let since = inner.since.unwrap_or(wall_now - self.config.lookback);
        inner
            .pass
            .get_or_insert(Pass {
                since,
                cursor: None,
                skip: 0,
                started: None,
                adopted: false,
            })
            .clone()
    }

    fn progressed(&self, pass: &Pass) {
        self.inner.lock().pass = Some(pass.clone());
    }

    fn completed(&self, pass: &Pass) {
        let Some((started, upstream_started)) = pass.started else {
            return;
        };
        let mut inner = self.inner.lock();
        if pass.adopted {
            // Begun elsewhere: its start tells where the next pass lists from, nothing more.
            inner.pass = None;
            inner.since = Some(upstream_started - self.config.overlap);
            inner.last_error = None;
            return;
        }
        let chain_start = *inner.chain_start.get_or_insert_with(|| {
            // The first pass reaches back `lookback`: entries fetched after that are covered.
            started
                .checked_sub(self.config.lookback)
                .unwrap_or(self.born)
                .max(self.born)
        });
        inner.pass = None;
        inner.since = Some(upstream_started - self.config.overlap);
        inner.confirmed_at = Some(started);
        inner.last_error = None;
        self.confirmations.confirm(started, chain_start);
    }

    fn failed(&self, e: &SyncError) {
        self.inner.lock().last_error = Some(e.to_string());
    }
}

/// `2024-05-01T10:11:12Z`: whole seconds, rounded down (the overlap covers the rest).
fn format_time(t: OffsetDateTime) -> String {
    crate::odata::format_datetime(t.replace_nanosecond(0).unwrap_or(t))
}

/// The sync's own cap: each List quota scaled by `max_share` (at least one call per window).
fn share_ledger(list_quotas: &[Quota], share: f64) -> Ledger {
    let scaled: Vec<Quota> = list_quotas
        .iter()
        .map(|q| Quota {
            limit: ((f64::from(q.limit) * share).floor() as u32).max(1),
            length: q.length,
        })
        .collect();
    Ledger::new(&scaled, Duration::ZERO)
}

/// What a sync run needs.
pub struct Syncer {
    pub exchange: Arc<Exchange>,
    pub store: Arc<dyn Store>,
    pub ingest: Ingest,
    pub metrics: TenantMetrics,
    pub state: Arc<SyncState>,
    /// The sync draws on the List quota as a batch flow of its own.
    pub caller: Caller,
    /// With several replicas (`[shared]`): the lease that makes one of them run the sync.
    pub lease: Option<Arc<Lease>>,
    /// With `shared.cache`: what the sync writes goes to the shared tier too, so every replica
    /// serves it (the others do not sync).
    pub tier: Option<Arc<SharedCache>>,
    /// When the first run starts: the tenants' syncs spread their runs over the interval
    /// instead of all listing at once (tenant `i` of `n` starts `interval * i / n` in).
    pub start_after: Duration,
}

impl Syncer {
    /// The flow the sync's calls belong to.
    pub fn caller() -> Caller {
        Caller::new("sync", 1, Priority::Batch)
    }
}

/// Runs the sync until the task is dropped.
pub async fn run(syncer: Syncer) {
    let list = RouteKind::ListIncidents;
    let budget = syncer.exchange.budget().clone();
    let quotas: Vec<Quota> = budget.status(list).windows.iter().map(|w| w.quota).collect();
    let config = syncer.state.config.clone();
    let mut share = share_ledger(&quotas, config.max_share);
    // The fastest pace the share sustains with one page per run (e.g. 375 per hour: 9.6 s).
    let sustainable = share
        .quotas()
        .map(|q| q.length / q.limit.max(1))
        .max()
        .unwrap_or_default();
    let mut delay = syncer.start_after;
    if let Some(lease) = &syncer.lease {
        lease.first_contact().await;
    }
    loop {
        tokio::time::sleep(delay).await;
        if let Some(lease) = &syncer.lease {
            match lease.hold().await {
                Holder::This { taken } => {
                    if taken {
                        let saved = lease.load().await;
                        syncer.state.take_over(saved.as_deref());
                        tracing::info!(resumed = saved.is_some(), "this replica runs the incident sync now");
                    }
                    syncer.state.set_role("holder");
                }
                Holder::Other => {
                    syncer.state.set_role("standby");
                    // Check again well within one interval, so a holder that died is replaced
                    // before its lease (half an interval) has been gone for long.
                    delay = lease.ttl() / 3;
                    continue;
                }
                // Redis cannot be asked: sync alone (within this replica's local share) rather
                // than let cached incidents go stale; the lease sorts it out when Redis returns.
                Holder::Unknown => syncer.state.set_role("local"),
            }
        }
        let started = Instant::now();
        let mut pass = syncer.state.pass(OffsetDateTime::now_utc());
        let result = match &syncer.lease {
            None => syncer.run_once(&mut share, &mut pass, config.interval).await,
            // A run can outlast the lease: renew it meanwhile, and stop if another replica has
            // taken it (the pass so far is saved for it).
            Some(lease) => {
                let renew = async {
                    loop {
                        tokio::time::sleep(lease.ttl() / 3).await;
                        if lease.hold().await == Holder::Other {
                            return;
                        }
                    }
                };
                tokio::select! {
                    r = syncer.run_once(&mut share, &mut pass, config.interval) => r,
                    () = renew => Err(SyncError::LeaseLost),
                }
            }
        };
        let metrics = &syncer.metrics;
        let since = format_time(pass.since);
        match result {
            Ok((pages, refreshed)) => {
                syncer.state.completed(&pass);
                metrics.sync_run("ok");
                metrics
                    .sync_refreshed
                    .get_or_create(&metrics.tenant_labels())
                    .inc_by(refreshed as u64);
                tracing::debug!(%since, pages, refreshed, "incident sync pass complete");
            }
            Err(e) => {
                syncer.state.progressed(&pass);
                syncer.state.failed(&e);
                metrics.sync_run(e.label());
                tracing::warn!(%since, resume_skip = pass.skip, error = %e, "incident sync pass incomplete; it resumes in the next run");
            }
        }
        if let Some(lease) = &syncer.lease {
            lease.save(syncer.state.watermark()).await;
        }
        // Poll faster while the List quota is slack (every window at least half free), but never
        // faster than the sync's own share can sustain.
        let slack = budget
            .status(list)
            .windows
            .iter()
            .all(|w| u64::from(w.remaining) * 2 >= u64::from(w.quota.limit));
        let now = Instant::now();
        delay = if slack {
            config.min_interval.max(sustainable).min(config.interval)
        } else {
            config.interval
        };
        delay = delay.saturating_sub(now - started);
    }
}

impl Syncer {
    /// Lists pages of the pass from where it stands; returns (pages, incidents written) when the
    /// pass completes. Waits for the share to allow the next page if that is less than
    /// `patience` away.
    async fn run_once(
        &self,
        share: &mut Ledger,
        pass: &mut Pass,
        patience: Duration,
    ) -> Result<(u32, usize), SyncError> {
        let mut pages = 0;
        let mut refreshed = 0;
        loop {
            let now = Instant::now();
            let slot = share.next_slot(now);
            if slot - now > patience {
                return Err(SyncError::Share);
            }
            tokio::time::sleep_until(slot).await;
            if !share.try_now(Instant::now()) {
                return Err(SyncError::Share);
            }
            let (n, full) = self.page(pass).await?;
            self.metrics
                .sync_list_calls
                .get_or_create(&self.metrics.tenant_labels())
                .inc();
            pages += 1;
            refreshed += n;
            if !full {
                return Ok((pages, refreshed));
            }
        }
    }

    /// One page of the change set, written into the per-id cache; moves the pass past it.
    /// Returns the incidents written and whether the page was full (more may follow). Takes a
    /// List slot only if one is free right now: the sync never queues in front of callers.
    async fn page(&self, pass: &mut Pass) -> Result<(usize, bool), SyncError> {
        let route = RouteKind::ListIncidents;
        let upstream = self.ingest.upstream();
        let path_and_query = match upstream {
            Dialect::Defender => {
                let query = ListQuery {
                    filter: Some(Filter::Compare {
                        field: Field::LastUpdateTime,
                        op: CompareOp::Ge,
                        value: Literal::DateTime(whole_seconds(pass.since)),
                    }),
                    top: Some(PAGE as u32),
                    skip: Some(pass.skip),
                };
                format!("/api/incidents?{}", query.canonical())
            }
            Dialect::Graph => {
                // Time-boundary paging (ascending, `$skip` only among items changed at the very
                // same instant): `$skip` stays small, where Graph is seen to stop answering past
                // large offsets, and an item that changes again while the pass pages moves past
                // the cursor instead of shifting the items not yet listed.
                let from = pass.cursor.unwrap_or_else(|| whole_seconds(pass.since));
                let query = GraphListQuery {
                    filter: Some(Filter::Compare {
                        field: GraphField::LastUpdateDateTime,
                        op: CompareOp::Ge,
                        value: Literal::DateTime(from),
                    }),
                    top: Some(GRAPH_PAGE as u32),
                    skip: (pass.skip > 0).then_some(pass.skip),
                    orderby: Some(GraphOrderBy {
                        field: GraphOrderField::LastUpdateDateTime,
                        descending: false,
                    }),
                    expand_alerts: true,
                    count: None,
                };
                format!("/v1.0/security/incidents?{}", query.canonical())
            }
        };
        let req = Request {
            method: Method::GET,
            path_and_query,
            body: None,
            request_id: format!("sync-{}", uuid::Uuid::new_v4()),
        };
        let ticket = self.store.ticket().await;
        // A position in the replicas' shared order, taken before the page is asked for: writes
        // that land after it win over what this page says.
        let shared_ticket = match &self.tier {
            Some(tier) => match tier.find(&Key::List("sync".into()), true, &req.request_id).await {
                Found::Fetch { ticket, .. } => Some(ticket),
                _ => None,
            },
            None => None,
        };
        let wall = OffsetDateTime::now_utc();
        let sent_at = Instant::now();
        let sent = self
            .exchange
            .call(route, &self.caller, &req, Duration::ZERO, None, Retry::Read)
            .await
            .map_err(|e| match e {
                CallError::Refused(_) => SyncError::NoSlot,
                CallError::NoToken(t) => SyncError::Failed(t.code()),
                CallError::Upstream(u) => SyncError::Failed(u.label().into()),
            })?;
        let resp = sent.response;
        if resp.status != http::StatusCode::OK {
            // A 429 has frozen the route for callers too; anything else is only the sync's problem.
            return Err(SyncError::Upstream(resp.status.as_u16()));
        }
        let page = page_items(&resp.body).ok_or(SyncError::BadPage)?;
        let returned = page.items.len();
        let incidents: Vec<_> = page
            .items
            .iter()
            .filter_map(|raw| render_incident(upstream, raw.get().as_bytes()))
            .collect();
        // Change times at the upstream's precision (100 ns for Graph), for the cursor.
        let changed: Vec<Option<i128>> = incidents.iter().map(|i| i.last_update).collect();
        let (_, offered) = self.ingest.spread(incidents, sent_at, ticket).await;
        if let (Some(tier), Some(shared)) = (&self.tier, &shared_ticket) {
            for (key, entry) in offered {
                tier.fill(&key, &entry, shared).await;
            }
        }
        if pass.started.is_none() {
            // The upstream's clock, not ours: its `Date`, else our own as a last resort.
            let upstream_now = resp.date.map(OffsetDateTime::from).unwrap_or(wall);
            pass.started = Some((sent_at, upstream_now));
        }
        // More may follow when the page came back full or the upstream announced a next page
        // (a page shorter than asked is not the last if it says so).
        let full = match upstream {
            Dialect::Defender => {
                pass.skip += returned as u64;
                returned >= PAGE || (page.next && returned > 0)
            }
            Dialect::Graph => {
                let from = pass
                    .cursor
                    .unwrap_or_else(|| whole_seconds(pass.since))
                    .unix_timestamp_nanos();
                match changed.iter().flatten().copied().max() {
                    Some(last) if last > from => {
                        pass.cursor = OffsetDateTime::from_unix_timestamp_nanos(last).ok();
                        pass.skip = changed.iter().filter(|t| **t == Some(last)).count() as u64;
                    }
                    _ => pass.skip += returned as u64,
                }
                returned >= GRAPH_PAGE || (page.next && returned > 0)
            }
        };
        Ok((returned, full))
    }
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_whole_seconds_utc() {
        let t = time::macros::datetime!(2024-05-01 10:11:12.987 +02:00);
        assert_eq!(format_time(t), "2024-05-01T08:11:12Z");
    }

    #[test]
    fn the_share_ledger_scales_every_quota() {
        let t0 = Instant::now();
        let mut l = share_ledger(
            &[
                Quota {
                    limit: 50,
                    length: Duration::from_secs(60),
                },
                Quota {
                    limit: 1500,
                    length: Duration::from_secs(3600),
                },
            ],
            0.25,
        );
        let sent = (0..100).filter(|_| l.try_now(t0)).count();
        assert_eq!(sent, 12, "25% of 50 per minute");
    }

    #[tokio::test(start_paused = true)]
    async fn passes_resume_and_confirm_from_the_upstream_clock() {
        let cfg = SyncConfig {
            max_lag: Duration::from_secs(45),
            ..SyncConfig::default()
        };
        let confirmations = Arc::new(Confirmations::new(cfg.max_lag, cfg.max_entry_age));
        let s = SyncState::new(cfg.clone(), confirmations.clone());
        let wall = OffsetDateTime::now_utc();
        let mut pass = s.pass(wall);
        assert_eq!(pass.since, wall - cfg.lookback, "the first pass looks back");
        // Half a pass, then the share runs out: the next run resumes where it stopped.
        let t0 = Instant::now();
        let upstream_clock = wall - Duration::from_secs(30); // the upstream is 30 s behind us
        pass.started = Some((t0, upstream_clock));
        pass.skip = 300;
        s.progressed(&pass);
        s.failed(&SyncError::Share);
        assert!(confirmations.get(t0).is_none(), "an unfinished pass confirms nothing");
        let resumed = s.pass(wall);
        assert_eq!(resumed.skip, 300);
        s.completed(&resumed);
        let c = confirmations.get(t0).unwrap();
        assert_eq!(c.at, t0, "confirmed as of the pass's first send");
        let next = s.pass(wall);
        assert_eq!(next.skip, 0);
        assert_eq!(
            next.since,
            upstream_clock - cfg.overlap,
            "the watermark follows the upstream's clock"
        );
        tokio::time::advance(Duration::from_secs(46)).await;
        assert!(!confirmations.get(Instant::now()).unwrap().healthy);
    }
}
