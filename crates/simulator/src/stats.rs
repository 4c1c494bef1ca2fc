//! What the simulated upstream saw and answered, for tests and benchmarks to check the proxy
//! against: per-route counters, the arrival time of every authenticated call, every change.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::SimRoute;

/// A snapshot of the simulator's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Keyed "get", "list", "update" (always all three): the Defender routes.
    pub calls: BTreeMap<String, RouteStats>,
    /// Keyed "graph_get", "graph_list", "graph_update", "graph_comment" (always all four): the
    /// Graph routes, kept apart so Defender-only users of `calls` see what they always saw.
    #[serde(default)]
    pub graph_calls: BTreeMap<String, RouteStats>,
    pub token_requests: u64,
    pub token_failures: u64,
    /// Every change to an incident, in the order made.
    pub changes: Vec<Change>,
}

/// Counters of one API route. `total` counts every call that arrived (also unauthenticated and
/// still unanswered ones); `ok` (2xx), `not_found`, `throttled` (429) and `unauthorized` count
/// answers by status, whatever produced them; `faults` counts calls a fault rule applied to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    pub total: u64,
    pub ok: u64,
    pub not_found: u64,
    pub throttled: u64,
    pub unauthorized: u64,
    pub faults: u64,
    /// Arrival of every authenticated call (valid token), ms since the simulator started.
    pub at_ms: Vec<u64>,
}

/// One change to an incident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub id: i64,
    pub last_update_time: String,
    pub at_ms: u64,
}

/// How a call ended, for the counters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CallOutcome {
    Answered(StatusCode),
    /// Connection closed without an answer (Reset, or Hang cut short by shutdown).
    NoAnswer,
}

#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    inner: Mutex<Stats>,
}

fn empty() -> Stats {
    let mut stats = Stats::default();
    for route in SimRoute::ALL {
        stats
            .route_map(route)
            .insert(route.as_str().to_string(), RouteStats::default());
    }
    stats
}

impl Stats {
    fn route_map(&mut self, route: SimRoute) -> &mut BTreeMap<String, RouteStats> {
        if route.is_graph() {
            &mut self.graph_calls
        } else {
            &mut self.calls
        }
    }
}

impl Recorder {
    pub(crate) fn new(start: Instant) -> Self {
        Self {
            start,
            inner: Mutex::new(empty()),
        }
    }

    fn ms_since_start(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn snapshot(&self) -> Stats {
        self.inner.lock().clone()
    }

    pub(crate) fn reset(&self) {
        *self.inner.lock() = empty();
    }

    /// A call arrived; `authenticated` calls get their arrival time logged. The time is taken
    /// under the lock so that `at_ms` is in order even with concurrent calls.
    pub(crate) fn arrive(&self, route: SimRoute, authenticated: bool) {
        let mut stats = self.inner.lock();
        let at = self.ms_since_start(Instant::now());
        if let Some(r) = stats.route_map(route).get_mut(route.as_str()) {
            r.total += 1;
            if authenticated {
                r.at_ms.push(at);
            }
        }
    }

    pub(crate) fn finish(&self, route: SimRoute, outcome: CallOutcome, faulted: bool) {
        let mut stats = self.inner.lock();
        let Some(r) = stats.route_map(route).get_mut(route.as_str()) else {
            return;
        };
        if faulted {
            r.faults += 1;
        }
        if let CallOutcome::Answered(status) = outcome {
            match status.as_u16() {
                200..=299 => r.ok += 1,
                401 => r.unauthorized += 1,
                404 => r.not_found += 1,
                429 => r.throttled += 1,
                _ => {}
            }
        }
    }

    pub(crate) fn token(&self, ok: bool) {
        let mut stats = self.inner.lock();
        stats.token_requests += 1;
        if !ok {
            stats.token_failures += 1;
        }
    }

    pub(crate) fn change(&self, id: i64, last_update_time: String) {
        let mut stats = self.inner.lock();
        let at_ms = self.ms_since_start(Instant::now());
        stats.changes.push(Change {
            id,
            last_update_time,
            at_ms,
        });
    }
}
