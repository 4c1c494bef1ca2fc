//! The sliding-window arithmetic of one route's quotas, with the clock passed in.
//!
//! # Why the guarantee holds
//!
//! A route spends from every one of its quotas on every call, so all its windows count the same
//! calls: one log of send times serves them all. For a quota of `L` calls per window `W`, a call
//! at log position `i` may be sent no earlier than `log[i - L] + W + margin`. So any `L + 1`
//! consecutive sends are more than `W` apart, which is the same as "no window of length `W`,
//! wherever it starts, holds more than `L` sends". A call is admitted only when that bound holds
//! for *every* quota at once (one lock, one log), so a call refused by one window can never have
//! spent from another. Unlike a token bucket with burst `L` (which admits up to `2L - 1` calls in
//! one sliding window), nothing here is estimated: the bound is checked against real send times.
//!
//! Waiting calls get *projected* slots appended after the committed sends, computed with the same
//! rule, so the queue position of a newcomer tells exactly when it would go (FIFO). Projections
//! only schedule wake-ups; a call is committed by [`Ledger::commit_head`] only after
//! [`Ledger::head_ready`] re-checked the bound against committed sends and the real `now`.
//!
//! The margin (the smaller of the configured margin and 5% of the window) covers jitter between
//! our send time and the upstream's arrival time. With the default 500 ms it costs under 1% of a
//! one-minute quota and 0.014% of a one-hour one; the 5% cap keeps scaled-down test quotas sane.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::time::Instant;

/// One quota as configured: at most `limit` calls in any window of `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub length: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    quota: Quota,
    /// `length + margin`: the minimum distance between a send and the `limit`-th one after it.
    span: Duration,
}

/// How one quota stands at an instant (for `RateLimit` headers and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowStatus {
    /// The pool the quota belongs to (for a route's own pool, the route's name).
    pub pool: Arc<str>,
    /// The pool is shared by every tenant (`app_pools`): its standing says how much the other
    /// tenants spend, so it is for the operator's metrics, never a caller's headers.
    pub across_tenants: bool,
    pub quota: Quota,
    /// Calls still allowed in the current window, queued calls counted as spent.
    pub remaining: u32,
    /// Time until the oldest call counted in the window leaves it (zero when none is counted).
    pub reset: Duration,
}

/// Committed and projected send times of one route.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// The pool's name, as its windows report it.
    name: Arc<str>,
    /// Shared by every tenant (see [`WindowStatus::across_tenants`]).
    across_tenants: bool,
    windows: Vec<Window>,
    /// The configured safety margin (each window's span adds the smaller of it and 5%).
    margin: Duration,
    /// Committed sends (oldest first) followed by `queued` projected sends; sorted.
    log: VecDeque<Instant>,
    /// Per log entry: whether it is a batch call, which must leave `reserve` slots of every
    /// window free (for interactive calls).
    batch: VecDeque<bool>,
    reserve: u32,
    queued: usize,
    /// Committed entries kept: the largest limit is all any bound ever looks back.
    keep: usize,
    frozen_until: Option<Instant>,
    /// No send before this instant, because the ledger shared with other replicas said so
    /// (like a freeze, but not the upstream's doing).
    held_until: Option<Instant>,
}

impl Ledger {
    /// `quotas` must be non-empty with non-zero limits and lengths (config validation ensures it).
    pub fn new(quotas: &[Quota], margin: Duration) -> Ledger {
        let windows: Vec<Window> = quotas
            .iter()
            .map(|&quota| Window {
                quota,
                span: quota.length + margin.min(quota.length / 20),
            })
            .collect();
        let keep = windows.iter().map(|w| w.quota.limit as usize).max().unwrap_or(1);
        Ledger {
            name: Arc::from(""),
            across_tenants: false,
            windows,
            margin,
            log: VecDeque::with_capacity(keep + 1),
            batch: VecDeque::with_capacity(keep + 1),
            reserve: 0,
            queued: 0,
            keep,
            frozen_until: None,
            held_until: None,
        }
    }

    /// Names the pool, as [`Ledger::status`] reports it.
    pub fn named(mut self, name: &str) -> Ledger {
        self.name = Arc::from(name);
        self
    }

    /// Marks the pool as shared by every tenant.
    pub fn across_tenants(mut self) -> Ledger {
        self.across_tenants = true;
        self
    }

    /// Keeps `reserve` slots of every window (at most all but one) out of reach of batch calls.
    pub fn with_reserve(mut self, reserve: u32) -> Ledger {
        self.reserve = reserve;
        self
    }

    pub fn quotas(&self) -> impl Iterator<Item = Quota> + '_ {
        self.windows.iter().map(|w| w.quota)
    }

    fn committed(&self) -> usize {
        self.log.len() - self.queued
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The earliest time a call at log position `idx` may be sent, given the entries before it.
    /// A batch call counts against `limit - reserve`: it may only go while the window would still
    /// have `reserve` slots left. That bound is stricter than the quota's, so every entry keeps
    /// the quota's own rule. Projections never go before the entry ahead of them (the log stays
    /// sorted and the queue leaves in order).
    fn slot_for(&self, idx: usize, now: Instant, batch: bool) -> Instant {
        let mut t = now;
        if let Some(f) = self.frozen_until {
            t = t.max(f);
        }
        if let Some(h) = self.held_until {
            t = t.max(h);
        }
        if idx > self.committed() {
            t = t.max(self.log[idx - 1]);
        }
        for w in &self.windows {
            let full = w.quota.limit as usize;
            let limit = if batch {
                full.saturating_sub(self.reserve as usize).max(1)
            } else {
                full
            };
            if idx >= limit {
                t = t.max(self.log[idx - limit] + w.span);
            }
        }
        t
    }

    /// When a call arriving now would be sent, behind everything already queued.
    pub fn next_slot(&self, now: Instant) -> Instant {
        self.slot_for(self.log.len(), now, false)
    }

    /// The projected slot of the waiter at queue position `pos`.
    pub fn projected(&self, pos: usize) -> Option<Instant> {
        (pos < self.queued).then(|| self.log[self.committed() + pos])
    }

    /// Sends at once if nobody is queued and every quota allows it.
    pub fn try_now(&mut self, now: Instant) -> bool {
        self.try_now_as(now, false)
    }

    /// [`Ledger::try_now`] for an interactive (`batch = false`) or batch call.
    pub fn try_now_as(&mut self, now: Instant, batch: bool) -> bool {
        if self.queued == 0 && self.slot_for(self.log.len(), now, batch) <= now {
            self.log.push_back(now);
            self.batch.push_back(batch);
            self.prune();
            true
        } else {
            false
        }
    }

    /// Queues a call at the tail and returns its projected slot.
    pub fn enqueue(&mut self, now: Instant) -> Instant {
        self.insert(self.queued, now, false)
    }

    /// Queues a call at queue position `pos` (0 = next to go; fair queuing puts a light flow's
    /// newcomer ahead of a heavy flow's backlog) and returns its projected slot. Those behind it
    /// move back.
    pub fn insert(&mut self, pos: usize, now: Instant, batch: bool) -> Instant {
        let idx = self.committed() + pos.min(self.queued);
        self.log.insert(idx, now);
        self.batch.insert(idx, batch);
        self.queued += 1;
        self.reproject(now);
        self.log[idx]
    }

    /// Whether the head of the queue may be sent now, judged on committed sends only.
    pub fn head_ready(&self, now: Instant) -> Result<(), Instant> {
        debug_assert!(self.queued > 0);
        let idx = self.committed();
        let t = self.slot_for(idx, now, self.batch[idx]);
        if t <= now {
            Ok(())
        } else {
            Err(t)
        }
    }

    /// Records the head's send at the real `now` (which may be later than projected) and moves the
    /// remaining projections accordingly. Call only after [`Ledger::head_ready`] said yes.
    pub fn commit_head(&mut self, now: Instant) {
        let idx = self.committed();
        self.log[idx] = now;
        self.queued -= 1;
        self.prune();
        self.reproject(now);
    }

    /// Removes the waiter at queue position `pos` (it left): its slot goes to those behind it.
    pub fn cancel(&mut self, pos: usize, now: Instant) {
        if pos < self.queued {
            let idx = self.committed() + pos;
            self.log.remove(idx);
            self.batch.remove(idx);
            self.queued -= 1;
            self.reproject(now);
        }
    }

    /// Takes back a committed send made at `at` that never left (its caller could not send within
    /// the bound after its grant). Fewer sends only move later slots earlier, never over a quota.
    pub fn uncommit(&mut self, at: Instant, now: Instant) {
        let committed = self.committed();
        if let Some(idx) = (0..committed).rev().find(|&i| self.log[i] == at) {
            self.log.remove(idx);
            self.batch.remove(idx);
            self.reproject(now);
        }
    }

    /// The longest window: the most any freeze may last (a later call is counted in no window
    /// the upstream could still be counting).
    pub fn longest_window(&self) -> Duration {
        self.windows.iter().map(|w| w.quota.length).max().unwrap_or_default()
    }

    /// Adopts `quota` if it is stricter than what the ledger holds: a window of the same length
    /// with a higher limit is lowered to it, and a window length the ledger lacks is added. Never
    /// loosens. Returns whether anything changed; the sends already logged count at once
    /// against the new limit (a window the ledger did not have counts from the sends it still
    /// remembers).
    pub fn tighten(&mut self, quota: Quota, now: Instant) -> bool {
        if quota.limit == 0 || quota.length.is_zero() {
            return false;
        }
        match self.windows.iter_mut().find(|w| w.quota.length == quota.length) {
            Some(w) if w.quota.limit > quota.limit => w.quota.limit = quota.limit,
            Some(_) => return false,
            None => {
                self.windows.push(Window {
                    quota,
                    span: quota.length + self.margin.min(quota.length / 20),
                });
                self.keep = self.keep.max(quota.limit as usize);
            }
        }
        self.reproject(now);
        true
    }

    /// No call before `until` (the upstream said so). Only ever extends a freeze.
    pub fn freeze(&mut self, until: Instant, now: Instant) {
        self.frozen_until = Some(self.frozen_until.map_or(until, |f| f.max(until)));
        self.reproject(now);
    }

    /// No call before `until`: the shared ledger has no slot earlier. Replaces an earlier hold
    /// (a later answer of the shared ledger knows better).
    pub fn hold(&mut self, until: Instant, now: Instant) {
        self.held_until = Some(until);
        self.reproject(now);
    }

    /// Time left in the current freeze, if any.
    pub fn frozen_for(&self, now: Instant) -> Option<Duration> {
        self.frozen_until.filter(|&f| f > now).map(|f| f - now)
    }

    fn reproject(&mut self, now: Instant) {
        for i in self.committed()..self.log.len() {
            self.log[i] = self.slot_for(i, now, self.batch[i]);
        }
    }

    fn prune(&mut self) {
        while self.committed() > self.keep {
            self.log.pop_front();
            self.batch.pop_front();
        }
    }

    /// Every quota's standing at `now`.
    pub fn status(&self, now: Instant) -> Vec<WindowStatus> {
        let committed = self.committed();
        self.windows
            .iter()
            .map(|w| {
                let limit = w.quota.limit as usize;
                // Committed sends are sorted: the ones still in the window form a suffix.
                let (mut lo, mut hi) = (0, committed);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if self.log[mid] + w.span <= now {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                let used = (committed - lo).min(limit);
                let oldest = (used > 0).then(|| self.log[committed - used]);
                let spent = (used + self.queued).min(limit);
                WindowStatus {
                    pool: self.name.clone(),
                    across_tenants: self.across_tenants,
                    quota: w.quota,
                    remaining: (limit - spent) as u32,
                    reset: oldest.map_or(Duration::ZERO, |t| (t + w.span).saturating_duration_since(now)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(limit: u32, secs: u64) -> Quota {
        Quota {
            limit,
            length: Duration::from_secs(secs),
        }
    }

    #[test]
    fn burst_up_to_the_limit_goes_at_once_then_waits_a_full_window() {
        let t0 = Instant::now();
        let mut l = Ledger::new(&[q(3, 10)], Duration::ZERO);
        for _ in 0..3 {
            assert!(l.try_now(t0));
        }
        assert!(!l.try_now(t0));
        assert_eq!(l.next_slot(t0), t0 + Duration::from_secs(10));
        assert!(l.try_now(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_refused_call_spends_from_no_window() {
        let t0 = Instant::now();
        let mut l = Ledger::new(&[q(2, 1), q(3, 100)], Duration::ZERO);
        assert!(l.try_now(t0));
        assert!(l.try_now(t0));
        assert!(!l.try_now(t0)); // refused by the 1 s window
        let s = l.status(t0);
        assert_eq!(
            s[1].remaining, 1,
            "the 100 s window was not charged for the refused call"
        );
    }

    #[test]
    fn queue_projections_are_fifo_and_cancel_gives_the_slot_back() {
        let t0 = Instant::now();
        let mut l = Ledger::new(&[q(1, 10)], Duration::ZERO);
        assert!(l.try_now(t0));
        let a = l.enqueue(t0);
        let b = l.enqueue(t0);
        assert_eq!(a, t0 + Duration::from_secs(10));
        assert_eq!(b, t0 + Duration::from_secs(20));
        l.cancel(0, t0);
        assert_eq!(
            l.projected(0),
            Some(t0 + Duration::from_secs(10)),
            "b moved up into a's slot"
        );
        assert_eq!(
            l.head_ready(t0 + Duration::from_secs(9)),
            Err(t0 + Duration::from_secs(10))
        );
        assert!(l.head_ready(t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn late_commit_pushes_later_projections() {
        let t0 = Instant::now();
        let mut l = Ledger::new(&[q(1, 10)], Duration::ZERO);
        assert!(l.try_now(t0));
        l.enqueue(t0);
        l.enqueue(t0);
        // The head woke 2 s late: the next one must keep a full window after the real send.
        l.commit_head(t0 + Duration::from_secs(12));
        assert_eq!(l.projected(0), Some(t0 + Duration::from_secs(22)));
    }

    #[test]
    fn freeze_delays_everything_and_status_reports_it() {
        let t0 = Instant::now();
        let mut l = Ledger::new(&[q(100, 60)], Duration::ZERO);
        l.freeze(t0 + Duration::from_secs(8), t0);
        assert!(!l.try_now(t0));
        assert_eq!(l.next_slot(t0), t0 + Duration::from_secs(8));
        assert_eq!(l.frozen_for(t0), Some(Duration::from_secs(8)));
        assert!(l.try_now(t0 + Duration::from_secs(8)));
    }

    #[test]
    fn tightening_lowers_or_adds_windows_and_never_loosens() {
        let t0 = Instant::now();
        let mut l = Ledger::new(&[q(10, 60)], Duration::ZERO);
        for i in 0..6 {
            assert!(l.try_now(t0 + Duration::from_millis(i)));
        }
        assert!(!l.tighten(q(20, 60), t0), "a looser limit is not adopted");
        assert!(l.tighten(q(5, 60), t0), "a stricter one is");
        assert!(
            !l.try_now(t0 + Duration::from_secs(1)),
            "the six sends already count against 5"
        );
        assert!(l.tighten(q(100, 3600), t0), "a window it lacked is added");
        assert_eq!(l.quotas().collect::<Vec<_>>(), vec![q(5, 60), q(100, 3600)]);
        assert!(
            !l.tighten(q(0, 60), t0) && !l.tighten(q(1, 0), t0),
            "nonsense is ignored"
        );
    }

    #[test]
    fn margin_is_capped_at_five_percent_of_the_window() {
        let t0 = Instant::now();
        let mut l = Ledger::new(&[q(1, 2)], Duration::from_secs(1));
        assert!(l.try_now(t0));
        assert_eq!(l.next_slot(t0), t0 + Duration::from_millis(2100));
    }

    #[test]
    fn status_counts_only_the_window() {
        let t0 = Instant::now();
        let mut l = Ledger::new(&[q(5, 10)], Duration::ZERO);
        assert!(l.try_now(t0));
        assert!(l.try_now(t0 + Duration::from_secs(4)));
        let s = l.status(t0 + Duration::from_secs(5));
        assert_eq!(s[0].remaining, 3);
        assert_eq!(s[0].reset, Duration::from_secs(5));
        let s = l.status(t0 + Duration::from_secs(11));
        assert_eq!(s[0].remaining, 4);
    }
}
