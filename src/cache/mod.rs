//! The response cache: what the upstream said, how long it stays fresh, how long it may still be
//! served when the upstream fails, and in which order answers may replace each other.
//!
//! [`Store`] is the interface; [`MokaStore`] is the in-process store (the first tier: the Redis
//! tier shared by replicas, `crate::shared::cache`, sits behind it and is consulted by the read
//! path inside a miss's flight), bounded by bytes through a weigher.
//! Freshness is decided by the proxy with tokio's clock, not by moka's expiry: moka only drops
//! entries once even stale-if-error can no longer use them, and tests can drive freshness with
//! paused time. [`Confirmations`] holds the incident sync's proof that cached incidents are
//! still current: the sync writes it, the proxy reads it.

mod confirm;
mod memory;

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use http::{HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::body::Bodies;
pub use confirm::{Confirmation, Confirmations};
pub use memory::MokaStore;

/// What a cached answer is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// `GET /api/incidents/{id}`, by the parsed id (so `007` and `7` share an entry).
    Incident(i64),
    /// `GET /api/incidents?...`, by the canonical query string.
    List(Arc<str>),
    /// `GET /v1.0/security/incidents?...`: the Graph facade's own pages (another schema and
    /// another paging), by the proxy's own base URL and the canonical Graph query.
    GraphList(Arc<str>),
}

impl Key {
    /// A list page of either facade (all of them go when anything is written).
    pub fn is_list(&self) -> bool {
        matches!(self, Key::List(_) | Key::GraphList(_))
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Incident(_) => "incident",
            Key::List(_) | Key::GraphList(_) => "list",
        }
    }
}

/// One stored upstream answer (200 or 404), in every view it can be served in.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The answer as each facade serves it, translated once when it arrived.
    pub bodies: Arc<Bodies>,
    pub content_type: HeaderValue,
    /// When the upstream request that produced this answer was sent: the answer describes the
    /// incident as of this moment or later, never earlier.
    pub stored_at: Instant,
    /// Freshness lifetime from `stored_at`.
    pub ttl: Duration,
    /// The incident's `lastUpdateTime` (unix nanoseconds), when known: an answer replaces an
    /// entry only with data at least as new.
    pub last_update: Option<i128>,
}

impl Entry {
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// Remaining freshness, `None` once expired.
    pub fn fresh_for(&self, now: Instant) -> Option<Duration> {
        let age = self.age(now);
        (age < self.ttl).then(|| self.ttl - age)
    }

    /// May still be served in place of an upstream error.
    pub fn usable_stale(&self, now: Instant, stale_if_error: Duration) -> bool {
        self.age(now) < self.ttl + stale_if_error
    }

    /// Whether this entry must stay in place of `newer` because it describes a later state.
    fn is_newer_than(&self, other: &Entry) -> bool {
        self.status == StatusCode::OK
            && matches!((self.last_update, other.last_update), (Some(mine), Some(theirs)) if mine > theirs)
    }
}

/// Entry count and stored bytes (for metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
}

/// A position in the store's order of writes, taken before the upstream call whose answer will
/// be filled in: an answer may only land if nothing invalidated its key since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub(crate) u64);

/// What became of an answer offered to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// It is now the cached answer.
    Stored,
    /// A newer answer (by `lastUpdateTime`, or a write after the ticket) is kept instead.
    Superseded,
    /// The store's admission policy declined it (too large, or less popular than what it would
    /// evict).
    Declined,
}

/// A cache backend. Lookups are synchronous: they serve hits and must cost what a local map
/// costs (a shared tier lives behind the in-memory one and is consulted on misses, inside the
/// miss's flight). Everything else is asynchronous, so a remote implementation can do I/O.
///
/// Contract (every implementation):
/// - **Never back in time.** [`Store::fill`] stores an answer only if no [`Store::write`] or
///   [`Store::invalidate_lists`] touched its key after the [`Ticket`] was taken, and only if the
///   cached entry is not newer by `lastUpdateTime`. Check and insert are one atomic step per key.
/// - **Writes win.** [`Store::write`] (the result of a successful update) orders itself after
///   every ticket taken before it, so a read that started before the write can never store its
///   older answer afterwards.
/// - **Cancellation.** A cancelled `fill` stores nothing or the whole entry, never part of it. A
///   `write` and its `invalidate_lists` are never cancelled (the proxy runs them detached from
///   the caller), and a remote tier must bound each call by a short timeout, treating a timeout
///   as a miss for reads and as "forget locally" for writes.
/// - The in-memory store resolves every future at once.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &Key) -> Option<Arc<Entry>>;
    /// Takes a ticket for a read about to be sent upstream.
    fn ticket(&self) -> BoxFuture<'_, Ticket>;
    /// Offers a read's answer; see the contract above.
    fn fill(&self, key: Key, entry: Arc<Entry>, ticket: Ticket) -> BoxFuture<'_, Filled>;
    /// A write's outcome: `Some` replaces the entry (unless a newer one is cached), `None` forgets
    /// it. Either way every earlier ticket for `key` is void.
    fn write(&self, key: Key, entry: Option<Arc<Entry>>) -> BoxFuture<'_, ()>;
    /// Drops every cached list answer and voids earlier tickets of lists (after a write, so
    /// nobody reads their own write stale from a list).
    fn invalidate_lists(&self) -> BoxFuture<'_, ()>;
    /// Drops every entry and voids every earlier ticket (a replica that may have missed other
    /// replicas' writes, its invalidation channel having broken, starts over).
    fn forget_all(&self) -> BoxFuture<'_, ()>;
    fn usage(&self) -> Usage;
}
