//! The incident sync's proof that cached incidents are still current.
//!
//! A complete sync pass lists every incident that changed since the start of its unbroken chain
//! of passes and writes each into the cache (in order: never over a newer answer). So an incident
//! entry fetched after the chain began and not rewritten since is current as of the start of the
//! last complete pass. The sync writes that proof here; the proxy reads it when deciding freshness.
//! Neither knows the other.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Proof from the last complete pass: nothing cached changed between `chain_start` and `at`
/// without the sync writing it.
#[derive(Debug, Clone, Copy)]
pub struct Confirmation {
    /// When the last complete pass started (its first request was sent no earlier).
    pub at: Instant,
    /// Entries fetched before this are not covered: the chain cannot vouch for them.
    pub chain_start: Instant,
    /// The pass is recent enough (`sync.max_lag`) for entries to be served up to `max_entry_age`.
    pub healthy: bool,
    /// How long the entry stays fresh from now on if no further pass completes: until the
    /// confirmation stops being healthy.
    pub healthy_for: Duration,
}

/// Written by the sync, read by the proxy.
#[derive(Debug)]
pub struct Confirmations {
    max_lag: Duration,
    max_entry_age: Duration,
    last: Mutex<Option<(Instant, Instant)>>,
}

impl Confirmations {
    pub fn new(max_lag: Duration, max_entry_age: Duration) -> Confirmations {
        Confirmations {
            max_lag,
            max_entry_age,
            last: Mutex::new(None),
        }
    }

    /// Oldest an incident entry may be (since its fetch) and still be served on a confirmation.
    pub fn max_entry_age(&self) -> Duration {
        self.max_entry_age
    }

    /// A pass that started at `at` completed; its chain of passes began at `chain_start`.
    pub fn confirm(&self, at: Instant, chain_start: Instant) {
        let mut last = self.last.lock();
        // Passes complete in order; never move the proof backwards.
        if !matches!(*last, Some((prev, _)) if at < prev) {
            *last = Some((at, chain_start.min(at)));
        }
    }

    /// The chain broke (the sync restarted from scratch): nothing is vouched for any more.
    pub fn revoke(&self) {
        *self.last.lock() = None;
    }

    /// The last complete pass's proof, if any.
    pub fn get(&self, now: Instant) -> Option<Confirmation> {
        let (at, chain_start) = (*self.last.lock())?;
        let since = now.saturating_duration_since(at);
        Some(Confirmation {
            at,
            chain_start,
            healthy: since <= self.max_lag,
            healthy_for: self.max_lag.saturating_sub(since),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn health_follows_the_last_pass() {
        let c = Confirmations::new(Duration::from_secs(45), Duration::from_secs(3600));
        let t0 = Instant::now();
        assert!(c.get(t0).is_none());
        c.confirm(t0, t0 - Duration::from_secs(10));
        let got = c.get(t0 + Duration::from_secs(5)).unwrap();
        assert!(got.healthy);
        assert_eq!(got.healthy_for, Duration::from_secs(40));
        c.confirm(t0 - Duration::from_secs(1), t0);
        assert_eq!(c.get(t0).unwrap().at, t0, "an older pass never replaces a newer proof");
        assert!(!c.get(t0 + Duration::from_secs(46)).unwrap().healthy);
        c.revoke();
        assert!(c.get(t0).is_none());
    }
}
