//! The upstream's per-route call quotas (each tenant has its own set): several sliding windows
//! over one log of call times, where calls answered 429 are logged too (a client that keeps
//! calling stays throttled). The limits can be replaced while the log stays, as when the
//! upstream tightens a quota.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::SimQuota;

/// What the quota says about one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
    Throttled {
        /// Whole seconds until a call made now would be admitted, if no other call is made.
        retry_after_secs: u64,
        /// The binding quota (the one that frees last), for the message text.
        limit: u32,
        window: Duration,
        /// The exact wait behind `retry_after_secs` (Graph says it to the millisecond).
        wait: Duration,
    },
}

/// One route's quotas and call log.
#[derive(Debug)]
pub(crate) struct RouteQuota {
    ledger: Mutex<Ledger>,
}

/// The limits and the log under one lock: a call is checked against the limits in force when
/// it arrives, even while a test replaces them.
#[derive(Debug)]
struct Ledger {
    quotas: Vec<SimQuota>,
    longest: Duration,
    log: VecDeque<Instant>,
}

fn longest(quotas: &[SimQuota]) -> Duration {
    quotas.iter().map(|q| q.window).max().unwrap_or(Duration::ZERO)
}

impl RouteQuota {
    pub(crate) fn new(quotas: Vec<SimQuota>) -> Self {
        Self {
            ledger: Mutex::new(Ledger {
                longest: longest(&quotas),
                quotas,
                log: VecDeque::new(),
            }),
        }
    }

    /// The limits in force now.
    pub(crate) fn quotas(&self) -> Vec<SimQuota> {
        self.ledger.lock().quotas.clone()
    }

    /// Replaces the limits and keeps the log: calls already made count against the new ones.
    /// The log was trimmed to the old longest window, so a longer new window sees only the
    /// calls of the old one at first (the simulator never kept more).
    pub(crate) fn replace(&self, quotas: Vec<SimQuota>) {
        let mut ledger = self.ledger.lock();
        ledger.longest = longest(&quotas).max(ledger.longest);
        ledger.quotas = quotas;
    }

    /// Records a call arriving at `now` and says whether it is admitted: it is throttled if any
    /// window already held `limit` calls before it. Check and record happen under one lock so
    /// that stacked windows cannot race.
    pub(crate) fn admit(&self, now: Instant) -> Admission {
        let mut ledger = self.ledger.lock();
        let Ledger { quotas, longest, log } = &mut *ledger;
        // Calls older than the longest window can never matter again.
        while let Some(&oldest) = log.front() {
            if now.saturating_duration_since(oldest) >= *longest {
                log.pop_front();
            } else {
                break;
            }
        }
        let mut binding: Option<(Duration, &SimQuota)> = None;
        for quota in quotas.iter() {
            // A call at t is inside the window at `now` while now - t < window.
            let start = log.partition_point(|&t| now.saturating_duration_since(t) >= quota.window);
            let count = log.len() - start;
            if count >= quota.limit as usize {
                // Including this call the window holds count + 1 calls; a later call is
                // admitted once at most limit - 1 remain, i.e. once the call at index
                // count + 1 - limit (oldest first) has left the window.
                let k = start + count + 1 - quota.limit as usize;
                let frees_at = log.get(k).copied().unwrap_or(now) + quota.window;
                let wait = frees_at.saturating_duration_since(now);
                if binding.map_or(true, |(w, _)| wait > w) {
                    binding = Some((wait, quota));
                }
            }
        }
        log.push_back(now);
        match binding {
            None => Admission::Allowed,
            Some((wait, quota)) => Admission::Throttled {
                retry_after_secs: ceil_secs(wait).max(1),
                limit: quota.limit,
                window: quota.window,
                wait,
            },
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The window as the upstream prints it in the 429 message: `00:01:00`.
pub(crate) fn format_window(window: Duration) -> String {
    let secs = window.as_secs();
    format!("{:02}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// The upstream's 429 message text.
pub(crate) fn throttle_message(limit: u32, window: Duration, retry_after_secs: u64) -> String {
    format!(
        "API calls quota exceeded! Maximum allowed {limit} per {} for the key \
         Destination+TenantID+AppID. You can send requests again in {retry_after_secs} seconds.",
        format_window(window)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(limit: u32, secs: u64) -> SimQuota {
        SimQuota {
            limit,
            window: Duration::from_secs(secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_at_limit_plus_one_and_counts_throttled_calls() {
        let q = RouteQuota::new(vec![quota(3, 10)]);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(q.admit(Instant::now()), Admission::Allowed);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Calls at 0, 1, 2 s; the 4th at 3 s must wait until the call at 1 s leaves (11 s).
        match q.admit(Instant::now()) {
            Admission::Throttled { retry_after_secs, .. } => assert_eq!(retry_after_secs, 8),
            other => panic!("expected throttle, got {other:?}"),
        }
        // Calling again while throttled keeps the client throttled: calls at 0,1,2,3 s and
        // now at 4 s; admission needs the call at 2 s gone (12 s).
        tokio::time::advance(Duration::from_secs(1)).await;
        match q.admit(Instant::now()) {
            Admission::Throttled { retry_after_secs, .. } => assert_eq!(retry_after_secs, 8),
            other => panic!("expected throttle, got {other:?}"),
        }
        // At 12 s the window (2, 12] holds the calls at 3 and 4 s only.
        tokio::time::advance(t0 + Duration::from_secs(12) - Instant::now()).await;
        assert_eq!(q.admit(Instant::now()), Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_longer_window_binds_when_it_frees_later() {
        let q = RouteQuota::new(vec![quota(2, 1), quota(3, 60)]);
        assert_eq!(q.admit(Instant::now()), Admission::Allowed);
        assert_eq!(q.admit(Instant::now()), Admission::Allowed);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(q.admit(Instant::now()), Admission::Allowed);
        tokio::time::advance(Duration::from_secs(2)).await;
        match q.admit(Instant::now()) {
            Admission::Throttled {
                retry_after_secs,
                limit,
                window,
                wait,
            } => {
                assert_eq!((limit, window), (3, Duration::from_secs(60)));
                assert_eq!(wait, Duration::from_secs(56));
                // Calls at 0, 0, 2, 4 s: the one at index 1 (0 s) frees at 60 s.
                assert_eq!(retry_after_secs, 56);
            }
            other => panic!("expected throttle, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replaced_limits_count_the_calls_already_made() {
        let q = RouteQuota::new(vec![quota(10, 60)]);
        for _ in 0..4 {
            assert_eq!(q.admit(Instant::now()), Admission::Allowed);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Tightened to 3 a minute with calls at 0..3 s: the call at 4 s waits for the one at
        // 2 s to leave (62 s), and the text states the new limit.
        q.replace(vec![quota(3, 60)]);
        match q.admit(Instant::now()) {
            Admission::Throttled {
                retry_after_secs,
                limit,
                ..
            } => assert_eq!((retry_after_secs, limit), (58, 3)),
            other => panic!("expected throttle, got {other:?}"),
        }
        assert_eq!(q.quotas(), vec![quota(3, 60)]);
        q.replace(vec![quota(10, 60)]);
        assert_eq!(q.admit(Instant::now()), Admission::Allowed);
    }

    #[test]
    fn message_matches_upstream_text() {
        assert_eq!(
            throttle_message(100, Duration::from_secs(60), 8),
            "API calls quota exceeded! Maximum allowed 100 per 00:01:00 for the key \
             Destination+TenantID+AppID. You can send requests again in 8 seconds."
        );
        assert_eq!(format_window(Duration::from_secs(3600)), "01:00:00");
    }
}
