//! The incident sync: keeps every cached incident current by following the List API's changes.
//!
//! Every run lists `$filter=lastUpdateTime ge <since>` page by page (`$top=100`, `$skip`) and
//! writes each incident into the per-id cache. A complete run proves that nothing else changed
//! between `since` and the run's start, so every cached incident is confirmed current as of that
//! start. `since` is the previous complete run's start minus `sync.overlap`: a change that lands
//! while a run is paging has a `lastUpdateTime` after that run's start, so the next run sees it
//! (and paging cannot lose an item: the filter only ever gains members, newest first by
//! creation). A failed run confirms nothing and leaves `since` where it was.
//!
//! The sync spends List quota through the same budget as callers, but only slots that are free
//! right now (it never queues, so it never delays a caller), and at most `sync.max_share` of each
//! List quota, counted by a ledger of its own. [`SyncState`] is what the proxy consults to decide
//! freshness.

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::{
    budget::{Ledger, Quota},
    config::SyncConfig,
    proxy::Proxy,
};

/// Incidents per page (the API's maximum `$top`).
pub const PAGE: usize = 100;

/// Why a run did not complete.
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
}

impl SyncError {
    pub fn label(&self) -> &'static str {
        match self {
            SyncError::Share => "share_spent",
            SyncError::NoSlot => "no_slot",
            SyncError::Upstream(_) => "upstream_status",
            SyncError::Failed(_) => "upstream_error",
            SyncError::BadPage => "bad_page",
        }
    }
}

/// Proof from the last complete run: nothing cached changed between `chain_start` and `at`
/// without the sync writing it.
#[derive(Debug, Clone, Copy)]
pub struct Confirmation {
    pub at: Instant,
    pub chain_start: Instant,
    /// The run is recent enough (`sync.max_lag`) for entries to be served up to `max_entry_age`.
    pub healthy: bool,
}

#[derive(Debug, Default)]
struct Inner {
    confirmed_at: Option<Instant>,
    chain_start: Option<Instant>,
    /// Where the next run lists from (upstream time).
    since: Option<OffsetDateTime>,
    last_error: Option<String>,
}

/// What the proxy and the admin endpoints read about the sync.
#[derive(Debug)]
pub struct SyncState {
    config: SyncConfig,
    inner: Mutex<Inner>,
}

/// A snapshot for `/readyz` and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncStatus {
    pub healthy: bool,
    /// Seconds since the start of the last complete run.
    pub lag_seconds: Option<f64>,
    pub since: Option<String>,
    pub last_error: Option<String>,
}

impl SyncState {
    pub fn new(config: SyncConfig) -> SyncState {
        SyncState {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn max_entry_age(&self) -> Duration {
        self.config.max_entry_age
    }

    /// The last complete run's proof, if any.
    pub fn confirmation(&self, now: Instant) -> Option<Confirmation> {
        let inner = self.inner.lock();
        let at = inner.confirmed_at?;
        Some(Confirmation {
            at,
            chain_start: inner.chain_start.unwrap_or(at),
            healthy: now.saturating_duration_since(at) <= self.config.max_lag,
        })
    }

    pub fn status(&self, now: Instant) -> SyncStatus {
        let c = self.confirmation(now);
        let inner = self.inner.lock();
        SyncStatus {
            healthy: c.is_some_and(|c| c.healthy),
            lag_seconds: c.map(|c| now.saturating_duration_since(c.at).as_secs_f64()),
            since: inner.since.map(format_time),
            last_error: inner.last_error.clone(),
        }
    }

    fn since(&self, run_start: OffsetDateTime) -> OffsetDateTime {
        self.inner.lock().since.unwrap_or(run_start - self.config.lookback)
    }

    fn succeeded(&self, started: Instant, started_wall: OffsetDateTime) {
        let mut inner = self.inner.lock();
        if inner.chain_start.is_none() {
            inner.chain_start = Some(started.checked_sub(self.config.lookback).unwrap_or(started));
        }
        inner.confirmed_at = Some(started);
        inner.since = Some(started_wall - self.config.overlap);
        inner.last_error = None;
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

/// Runs the sync until the task is dropped.
pub async fn run(proxy: Arc<Proxy>, state: Arc<SyncState>) {
    let list = crate::route::RouteKind::ListIncidents;
    let quotas: Vec<Quota> = proxy.budget().status(list).windows.iter().map(|w| w.quota).collect();
    let mut share = share_ledger(&quotas, state.config.max_share);
    // The fastest pace the share sustains with one page per run (e.g. 375 per hour: 9.6 s).
    let sustainable = share
        .quotas()
        .map(|q| q.length / q.limit.max(1))
        .max()
        .unwrap_or_default();
    let mut delay = Duration::ZERO;
    loop {
        tokio::time::sleep(delay).await;
        let started = Instant::now();
        let started_wall = OffsetDateTime::now_utc();
        let since = format_time(state.since(started_wall));
        let result = run_once(&proxy, &mut share, &since, state.config.interval).await;
        let metrics = proxy.metrics();
        match result {
            Ok((pages, refreshed)) => {
                state.succeeded(started, started_wall);
                metrics.sync_run("ok");
                metrics.sync_refreshed.inc_by(refreshed as u64);
                tracing::debug!(%since, pages, refreshed, "incident sync complete");
            }
            Err(e) => {
                state.failed(&e);
                metrics.sync_run(e.label());
                tracing::warn!(%since, error = %e, "incident sync incomplete; entries fall back to their TTL if it stays so");
            }
        }
        // Poll faster while the List quota is slack (every window at least half free), but never
        // faster than the sync's own share can sustain.
        let slack = proxy
            .budget()
            .status(list)
            .windows
            .iter()
            .all(|w| u64::from(w.remaining) * 2 >= u64::from(w.quota.limit));
        let now = Instant::now();
        let interval = state.config.interval;
        delay = if slack {
            state.config.min_interval.max(sustainable).min(interval)
        } else {
            interval
        };
        delay = delay.saturating_sub(now - started);
    }
}

/// Lists every page of the change set; returns (pages, incidents written). Waits for the share
/// to allow the next page if that is less than `patience` away.
async fn run_once(
    proxy: &Proxy,
    share: &mut Ledger,
    since: &str,
    patience: Duration,
) -> Result<(u32, usize), SyncError> {
    let mut skip = 0u64;
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
        let n = proxy.sync_page(since, skip, PAGE).await?;
        proxy.metrics().sync_list_calls.inc();
        pages += 1;
        refreshed += n;
        if n < PAGE {
            return Ok((pages, refreshed));
        }
        skip += PAGE as u64;
    }
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
    async fn confirmation_tracks_runs_and_health() {
        let cfg = SyncConfig {
            max_lag: Duration::from_secs(45),
            ..SyncConfig::default()
        };
        let s = SyncState::new(cfg);
        let now = Instant::now();
        assert!(s.confirmation(now).is_none());
        let wall = OffsetDateTime::now_utc();
        assert_eq!(
            s.since(wall),
            wall - Duration::from_secs(24 * 3600),
            "the first run looks back"
        );
        s.succeeded(now, wall);
        assert_eq!(
            s.since(wall),
            wall - SyncConfig::default().overlap,
            "then from the last start minus the overlap"
        );
        assert!(s.confirmation(now).unwrap().healthy);
        s.failed(&SyncError::NoSlot);
        assert_eq!(
            s.since(wall),
            wall - SyncConfig::default().overlap,
            "a failure does not move the watermark"
        );
        tokio::time::advance(Duration::from_secs(46)).await;
        let c = s.confirmation(Instant::now()).unwrap();
        assert!(!c.healthy, "too long since the last complete run");
        assert_eq!(c.at, now);
    }
}
