//! The upstream call budget: who may call Defender, and when.
//!
//! Every upstream call first obtains a [`Grant`] here. [`Budget`] is the interface;
//! [`LocalBudget`] keeps one [`Ledger`] per pool in process memory and a queue of waiters in
//! front of it. With several replicas, a [`Gate`] ([`redis::RedisGate`]) sits behind the queue's
//! head: the local queue orders this replica's callers, the shared ledger decides when the head
//! may send.
//!
//! # Fair queuing between consumers
//!
//! Every call belongs to a [`Caller`]: a flow (the consumer), its weight and its priority. Queued
//! calls are ordered by (priority, virtual finish tag, arrival): interactive before batch, and
//! within a priority by weighted fair queuing: a call's tag is `max(virtual time, its flow's last
//! tag) + 1 / weight`, and the virtual time advances to the tag of each granted call. So a flow
//! alone gets the whole quota (work-conserving), backlogged flows get slots in proportion to
//! their weights, and within a flow calls go first come, first served. A newcomer of a light flow
//! may be placed ahead of a heavy flow's backlog: the heavy flow's projected slots move back (its
//! callers are notified, republish their slot and, if it moved past their own wait, are released
//! with a 429 carrying the exact `Retry-After`).
//!
//! A caller is told at once when its slot would come given the current queues; if that is beyond
//! its allowed wait, or its flow's queue (`budget.max_queue_per_consumer`) or the route's queue
//! (`budget.max_queue`) is full, it is refused with the exact time until a slot frees. A waiter
//! that goes away (client disconnected, future dropped) gives its slot to those behind it. Batch
//! calls never take the last `budget.reserve` slots of any window of a read route.
//! An upstream 429 freezes the route until the time the upstream named, capped at the route's
//! longest window (a hostile or mistaken `Retry-After` cannot close a route for longer than any
//! quota the upstream could be counting).
//!
//! A grant is counted at the moment it is given, so callers take it only when they can send at
//! once (token in hand); one that finds it cannot send gives it back with [`Budget::release`].

pub mod ledger;
pub mod redis;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

pub use ledger::{Ledger, Quota, WindowStatus};

pub use crate::config::Priority;
use crate::{
    config::{BudgetConfig, PoolConfig, QuotaConfig},
    route::RouteKind,
};

/// Permission for one upstream call, already counted.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Time spent queued before the slot came.
    pub queued: Duration,
    /// The route's quotas right after this call was counted.
    pub status: Vec<WindowStatus>,
    /// The send time recorded in the ledger (for [`Budget::release`]).
    pub at: Instant,
    /// The send's id in a shared ledger ([`Gate`]), when there is one.
    pub shared: Option<u64>,
}

/// A ledger shared with other replicas, consulted by the head of this replica's queue.
///
/// The local queue keeps ordering this replica's callers (fair queuing, priorities, the
/// immediate refusal when the projected slot is beyond a caller's wait); for the head, the gate
/// checks every window of the pool as all replicas together spent it and records the send in the
/// same step, or says when to ask again. Implemented over Redis by [`redis::RedisGate`].
pub trait Gate: Send + Sync + 'static {
    /// Checks the shared windows of `pool` and of every pool in `further` (the route's further
    /// pools, numbered after the own pools as [`further_pools`] lists them), and records a send
    /// in all of them now, in one step, or says when one may be possible (nothing recorded).
    /// Dropping the future before it resolves takes back a send it may have recorded.
    fn try_send<'a>(&'a self, pool: usize, further: &'a [usize], batch: bool) -> BoxFuture<'a, GateAnswer>;
    /// A send recorded by [`Gate::try_send`] (in `pool` and `further`) did not leave after all.
    fn release(&self, pool: usize, further: &[usize], id: u64);
    /// The upstream said 429: every replica holds `pool` for `pause`.
    fn freeze(&self, pool: usize, pause: Duration);
    /// The pool's windows as all replicas spent them, as last seen (for `RateLimit` headers).
    fn windows(&self, pool: usize) -> Option<Vec<WindowStatus>>;
    /// What `/readyz` shows about the shared state.
    fn detail(&self) -> serde_json::Value;
    /// The upstream stated stricter limits for `pool` (see [`Budget::learn`]): every replica
    /// keeps to them from its next check of the shared ledger.
    fn learn(&self, pool: usize, quotas: &[Quota]) {
        let _ = (pool, quotas);
    }
}

/// What the shared ledger said to the head of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateAnswer {
    /// Counted: the call may leave now. The id is for [`Gate::release`].
    Sent(u64),
    /// No slot before `at`; `frozen` when an upstream 429 (seen by any replica) is the reason.
    NotBefore { at: Instant, frozen: bool },
}

/// Where a caller stands in the queue, published while it waits so that others sharing its
/// result (collapsed callers) can each apply their own wait to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Not queued yet (or not known).
    Unknown,
    /// Queued; the slot is projected at this instant (it can move later, e.g. after a freeze).
    Queued(Instant),
    /// Granted: the call is on its way.
    Granted,
}

/// The sending half of a [`SlotState`] watch.
pub type SlotWatch = watch::Sender<SlotState>;

/// What an upstream 429 did to a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freeze {
    /// How long the route stays closed.
    pub pause: Duration,
    /// The upstream asked for longer than the cap (the route's longest window).
    pub capped: bool,
}

/// Who a call is for: its flow (a consumer's name), weight and priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub flow: Arc<str>,
    pub weight: u32,
    pub priority: Priority,
}

impl Caller {
    pub fn new(flow: impl Into<Arc<str>>, weight: u32, priority: Priority) -> Caller {
        Caller {
            flow: flow.into(),
            weight: weight.max(1),
            priority,
        }
    }
}

/// Why no slot was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No slot within the allowed wait; one frees up after `retry_after`.
    Throttled {
        retry_after: Duration,
        reason: RefuseReason,
        status: Vec<WindowStatus>,
    },
    /// The proxy is shutting down; queued callers are released.
    Closed,
}

/// What stood in the way of a slot (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The quotas have no slot within the allowed wait.
    Budget,
    /// The upstream said 429 and the freeze outlasts the allowed wait.
    Frozen,
    /// Too many callers already waiting.
    QueueFull,
    /// Too many callers of this consumer already waiting.
    ConsumerQueueFull,
}

impl RefuseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::Budget => "budget",
            RefuseReason::Frozen => "frozen",
            RefuseReason::QueueFull => "queue_full",
            RefuseReason::ConsumerQueueFull => "consumer_queue_full",
        }
    }
}

/// A route's state for metrics and readiness detail.
#[derive(Debug, Clone)]
pub struct RouteStatus {
    pub windows: Vec<WindowStatus>,
    pub queued: usize,
    pub queue_capacity: usize,
    pub frozen_for: Option<Duration>,
    /// Per flow: calls queued now and slots granted so far.
    pub flows: Vec<FlowStatus>,
}

/// One flow's standing on a route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FlowStatus {
    pub flow: String,
    pub queued: usize,
    pub granted: u64,
}

/// The budget as the proxy uses it; implemented in memory by [`LocalBudget`].
///
/// Contract (every implementation):
/// - **Exact.** In every sliding window of every quota, the grants counted are at most the limit;
///   checking all windows and counting the grant is one atomic step.
/// - **Earliest slot, or an immediate refusal.** A caller whose earliest slot (behind everyone
///   queued) is beyond `max_wait`, or who finds the queue full, is refused at once with the exact
///   time until a slot frees.
/// - **Cancellation gives back.** Dropping an `acquire` future before it resolves removes the
///   caller from the queue; nothing is counted for it. [`Budget::release`] takes back a counted
///   grant that was never sent.
pub trait Budget: Send + Sync + 'static {
    /// Waits for a slot on `route` for at most `max_wait`, or refuses at once. While queued, the
    /// projected slot is published on `slot` (if given).
    fn acquire<'a>(
        &'a self,
        route: RouteKind,
        caller: &'a Caller,
        max_wait: Duration,
        slot: Option<&'a SlotWatch>,
    ) -> BoxFuture<'a, Result<Grant, Refusal>>;
    /// A granted call did not leave after all: uncount it.
    fn release(&self, route: RouteKind, grant: &Grant);
    /// The upstream answered 429: no call on `route` until `retry_after` (or a backoff) has passed,
    /// capped at the route's longest window.
    fn upstream_throttled(&self, route: RouteKind, retry_after: Option<Duration>) -> Freeze;
    /// The upstream answered without throttling (resets the backoff).
    fn upstream_ok(&self, route: RouteKind);
    fn status(&self, route: RouteKind) -> RouteStatus;
    /// Releases every queued caller with [`Refusal::Closed`] and refuses new ones.
    fn close(&self);
    /// The shared ledger's state for `/readyz`, when replicas share one.
    fn shared_detail(&self) -> Option<serde_json::Value> {
        None
    }
    /// The upstream stated a limit for `route` (a Defender 429's "Maximum allowed N per
    /// HH:MM:SS"): adopt it at once if it is stricter than the route's pool, never a looser one.
    /// `None` when nothing changed.
    fn learn(&self, route: RouteKind, stated: Quota) -> Option<Learnt> {
        let _ = (route, stated);
        None
    }
    /// Every pool whose quotas were tightened by what the upstream stated, as they stand now.
    fn learnt(&self) -> Vec<Learnt> {
        Vec::new()
    }
    /// The name of the pool `route` draws from first (its own, or its `budget.routes.<route>.pool`).
    fn pool_of(&self, route: RouteKind) -> String {
        route.name().to_string()
    }
}

/// A limit the upstream stated and the budget adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learnt {
    /// The pool it applies to.
    pub pool: String,
    pub before: Vec<Quota>,
    pub after: Vec<Quota>,
}

/// The in-process budget: one ledger and one fair queue per pool of quotas. By default every
/// route has a pool of its own; routes that name the same `budget.pools` entry share one, so
/// their calls count against the same windows (and queue together).
pub struct LocalBudget {
    pools: Vec<RouteBudget>,
    /// Which pool each route draws from.
    route_pool: [usize; crate::route::ROUTE_COUNT],
    gate: Option<Arc<dyn Gate>>,
    /// The further pools routes draw from (`budget.routes.<route>.pools`).
    extras: Arc<Extras>,
    /// Which further pools each route draws from: indices into `extras`, or with a gate, the
    /// gate's numbers of them (the further pools then live in the shared ledger only).
    route_extras: [Vec<usize>; crate::route::ROUTE_COUNT],
    /// What the upstream taught (for `/readyz`).
    learnt: Mutex<Vec<Learnt>>,
}

/// The further pools routes draw from besides their own (`budget.routes.<route>.pools`): plain
/// sliding-window ledgers with no queue of their own, kept in one place for the whole process,
/// so that a pool shared by every tenant (`app_pools`) is one ledger whichever tenant's route
/// draws from it. The head of a route's queue checks every one of its further pools and spends
/// from all of them (and its own) in one step under one lock, so a call refused by one pool
/// spends nothing from any other, and no window of any pool ever holds more calls than its
/// limit. Callers always hold their own pool's lock before this one (never the other way round),
/// so the two locks cannot deadlock.
///
/// **Turns.** Heads of different queues (other routes, other tenants) compete for a further
/// pool. A head that finds one spent takes a turn in it; while older turns are pending, a slot
/// that frees goes to the oldest, not to whichever head or newcomer asks first, so one tenant's
/// steady traffic cannot starve another's queue of a shared pool. A head gives its turns back
/// when it is granted, leaves, or stops being ready on its own pool (it takes a new turn, at the
/// back, when it is ready again), so a turn never holds a pool for a queue that is not about to
/// send.
#[derive(Default)]
pub struct Extras {
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    ledgers: Vec<Ledger>,
    /// Each ledger's key: `<tenant>/<pool>` for a tenant's `budget.pools`, `<pool>` for
    /// `app_pools`.
    keys: Vec<String>,
    /// Per ledger, the heads waiting for it, oldest first (see "Turns").
    turns: Vec<VecDeque<u64>>,
}

/// Why a head may not spend from its further pools now.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// A pool has no room before this instant: the whole queue moves back.
    Spent(Instant),
    /// The pools have room, but an older head's turn comes first: look again then.
    Turn(Instant),
}

/// A queue head's place in the further pools' turns (unique in the process).
fn next_turn() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How soon a head behind an older turn looks again, when the pool itself has room: the older
/// head is due now and takes the slot on its next poll.
const TURN_POLL: Duration = Duration::from_millis(2);

impl Extras {
    /// The ledger for `key` (made on first use; kept while the process runs, so a reload that
    /// keeps a pool keeps what it spent). A pool whose quotas changed gets a new ledger.
    /// `across_tenants` marks a pool every tenant shares (`app_pools`).
    pub fn register(&self, key: &str, name: &str, quotas: &[Quota], margin: Duration, across_tenants: bool) -> usize {
        let mut book = self.book.lock();
        let fresh = || {
            let ledger = Ledger::new(quotas, margin).named(name);
            if across_tenants {
                ledger.across_tenants()
            } else {
                ledger
            }
        };
        if let Some(i) = book.keys.iter().position(|k| k == key) {
            if !book.ledgers[i].quotas().eq(quotas.iter().copied()) {
                book.ledgers[i] = fresh();
            }
            return i;
        }
        book.keys.push(key.to_string());
        book.ledgers.push(fresh());
        book.turns.push(VecDeque::new());
        book.ledgers.len() - 1
    }

    /// If it is `turn`'s turn in every pool in `ids` and each has room at `now`, runs `own`
    /// (which spends from the caller's own pool and says whether it could); when it could,
    /// spends from every pool in `ids` too and gives the turns back. `Err`: look again later
    /// (some pool has no room before then, or an older head goes first); nothing was spent
    /// anywhere, and `turn` now waits in every pool in `ids`.
    fn spend_with(
        &self,
        ids: &[usize],
        turn: Option<u64>,
        now: Instant,
        own: impl FnOnce() -> bool,
    ) -> Result<bool, Wait> {
        if ids.is_empty() {
            return Ok(own());
        }
        let mut book = self.book.lock();
        let at = ids.iter().map(|&i| book.ledgers[i].next_slot(now)).max().unwrap_or(now);
        let behind = ids
            .iter()
            .any(|&i| book.turns[i].front().is_some_and(|&first| Some(first) != turn));
        if at > now || behind {
            if let Some(t) = turn {
                for &i in ids {
                    if !book.turns[i].contains(&t) {
                        book.turns[i].push_back(t);
                    }
                }
            }
            return Err(if at > now {
                Wait::Spent(at)
            } else {
                Wait::Turn(now + TURN_POLL)
            });
        }
        if !own() {
            return Ok(false);
        }
        for &i in ids {
            let spent = book.ledgers[i].try_now(now);
            debug_assert!(spent, "checked under the same lock");
        }
        if let Some(t) = turn {
            Self::drop_turn(&mut book, ids, t);
        }
        Ok(true)
    }

    /// `turn` no longer waits in the pools `ids` (granted elsewhere, gone, or not ready).
    fn forget(&self, ids: &[usize], turn: u64) {
        if ids.is_empty() {
            return;
        }
        Self::drop_turn(&mut self.book.lock(), ids, turn);
    }

    fn drop_turn(book: &mut Book, ids: &[usize], turn: u64) {
        for &i in ids {
            book.turns[i].retain(|&t| t != turn);
        }
    }

    /// Takes back a send at `at` from every pool in `ids` (see [`Budget::release`]).
    fn unspend(&self, ids: &[usize], at: Instant, now: Instant) {
        if ids.is_empty() {
            return;
        }
        let mut book = self.book.lock();
        for &i in ids {
            book.ledgers[i].uncommit(at, now);
        }
    }

    /// The windows of every pool in `ids`, appended to `windows`.
    fn append_status(&self, ids: &[usize], now: Instant, windows: &mut Vec<WindowStatus>) {
        if ids.is_empty() {
            return;
        }
        let book = self.book.lock();
        for &i in ids {
            windows.extend(book.ledgers[i].status(now));
        }
    }
}

/// Configured quotas as the ledgers count them.
fn quotas(configured: &[QuotaConfig]) -> Vec<Quota> {
    configured
        .iter()
        .map(|q| Quota {
            limit: q.limit,
            length: q.window,
        })
        .collect()
}

/// The further pools a tenant's routes draw from (`budget.routes.<route>.pools`), each once,
/// sorted by name: a shared ledger numbers them after the tenant's own pools ([`pools`]), in this
/// order. `true` marks a pool shared by every tenant (`app_pools`), `false` one of the tenant's
/// `budget.pools`.
pub fn further_pools(config: &BudgetConfig, app_pools: &BTreeMap<String, PoolConfig>) -> Vec<(PoolSpec, bool)> {
    let mut names: Vec<&String> = config.routes.values().flat_map(|r| r.pools.iter()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (pool, app) = match config.pools.get(name) {
                Some(p) => (p, false),
                None => (app_pools.get(name)?, true),
            };
            let spec = PoolSpec {
                name: name.clone(),
                quotas: quotas(&pool.quotas),
                reserve: 0,
            };
            Some((spec, app))
        })
        .collect()
}

/// One pool of quotas as configured: what a shared ledger needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool's name (`budget.pools` key, or the route's own name).
    pub name: String,
    pub quotas: Vec<Quota>,
    /// Slots of every window kept from batch calls.
    pub reserve: u32,
}

/// The pools of `config`, in the order [`LocalBudget`] numbers them.
pub fn pools(config: &BudgetConfig) -> (Vec<PoolSpec>, [usize; crate::route::ROUTE_COUNT]) {
    let mut names: Vec<&str> = Vec::new();
    let route_pool = RouteKind::ALL.map(|kind| {
        let pool = config.pool_of(kind.name());
        names.iter().position(|n| *n == pool).unwrap_or_else(|| {
            names.push(pool);
            names.len() - 1
        })
    });
    let specs = names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let users: Vec<RouteKind> = RouteKind::ALL
                .into_iter()
                .filter(|k| route_pool[k.index()] == index)
                .collect();
            // The interactive reserve applies to pools of reads only; writes have their own.
            let reads_only = users.iter().all(|k| !k.spec().writes);
            PoolSpec {
                name: name.to_string(),
                quotas: quotas(config.quotas_of(users[0].name())),
                reserve: if reads_only { config.reserve } else { 0 },
            }
        })
        .collect();
    (specs, route_pool)
}

struct RouteBudget {
    state: Mutex<State>,
    /// The pool's name (for what was learnt).
    name: String,
    /// This pool's number (for the gate).
    index: usize,
    gate: Option<Arc<dyn Gate>>,
    /// `budget.fair_queuing`; when off, every call is one flow (first come, first served).
    fair: bool,
    max_queue: usize,
    max_queue_per_flow: usize,
    default_backoff: Duration,
}

struct State {
    ledger: Ledger,
    /// Same order as the ledger's projected slots: by [`Waiter::order`].
    waiters: VecDeque<Waiter>,
    next_id: u64,
    closed: bool,
    consecutive_429: u32,
    /// The waiter (the head) whose send the gate is deciding right now: nobody may be placed
    /// in front of it meanwhile.
    gating: Option<u64>,
    /// Weighted fair queuing's virtual time: the tag of the latest grant.
    vtime: f64,
    flows: HashMap<Arc<str>, Flow>,
}

#[derive(Debug, Default)]
struct Flow {
    /// The tag of this flow's latest queued or granted call.
    last_tag: f64,
    queued: usize,
    granted: u64,
}

struct Waiter {
    id: u64,
    deadline: Instant,
    notify: Arc<Notify>,
    flow: Arc<str>,
    priority: Priority,
    tag: f64,
}

impl Waiter {
    /// Queue order: priority, then virtual finish tag, then arrival.
    fn goes_before(&self, priority: Priority, tag: f64, id: u64) -> bool {
        (self.priority, self.tag, self.id) < (priority, tag, id)
    }
}

impl State {
    /// The virtual finish tag a new call of `caller` gets.
    fn tag_for(&self, caller: &Caller) -> f64 {
        let last = self.flows.get(&caller.flow).map_or(0.0, |f| f.last_tag);
        self.vtime.max(last) + 1.0 / f64::from(caller.weight)
    }

    /// A waiter left without its slot: its flow's last tag falls back to its newest remaining
    /// call (so abandoned calls do not count against the flow).
    fn forget_waiter(&mut self, w: &Waiter) {
        let newest = self
            .waiters
            .iter()
            .filter(|o| o.flow == w.flow)
            .map(|o| o.tag)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        if let Some(f) = self.flows.get_mut(&w.flow) {
            f.queued = f.queued.saturating_sub(1);
            if (f.last_tag - w.tag).abs() < f64::EPSILON {
                f.last_tag = newest.unwrap_or(self.vtime).max(self.vtime.min(f.last_tag));
            }
        }
    }

    fn notify_from(&self, pos: usize) {
        for w in self.waiters.iter().skip(pos) {
            w.notify.notify_one();
        }
    }

    fn notify_head(&self) {
        if let Some(w) = self.waiters.front() {
            w.notify.notify_one();
        }
    }

    fn notify_all(&self) {
        for w in &self.waiters {
            w.notify.notify_one();
        }
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.waiters.iter().position(|w| w.id == id)
    }

    fn refusal(&self, now: Instant, slot: Instant, reason: RefuseReason) -> Refusal {
        let reason = match reason {
            RefuseReason::Budget if self.ledger.frozen_for(now).is_some_and(|f| now + f >= slot) => {
                RefuseReason::Frozen
            }
            r => r,
        };
        Refusal::Throttled {
            retry_after: slot - now,
            reason,
            status: self.ledger.status(now),
        }
    }
}

/// Where a tenant's budget finds its further pools: the process's book of them ([`Extras`]),
/// the tenant's name (its `budget.pools` are its own) and the pools every tenant shares
/// (`app_pools`).
pub struct PoolScope<'a> {
    pub extras: &'a Arc<Extras>,
    pub tenant: &'a str,
    pub app_pools: &'a BTreeMap<String, PoolConfig>,
}

impl LocalBudget {
    /// A budget of its own (one tenant, no pools shared with others).
    pub fn new(config: &BudgetConfig) -> LocalBudget {
        Self::build(config, None, Self::alone(&Arc::default(), &BTreeMap::new()))
    }

    /// A budget whose ledger is shared with other replicas through `gate` (numbered as
    /// [`pools`] numbers them); the local ledger and queue stay in front of it.
    pub fn with_gate(config: &BudgetConfig, gate: Arc<dyn Gate>) -> LocalBudget {
        Self::build(config, Some(gate), Self::alone(&Arc::default(), &BTreeMap::new()))
    }

    /// One tenant's budget: its further pools in `scope`, and (with several replicas) `gate`.
    pub fn for_tenant(config: &BudgetConfig, scope: PoolScope<'_>, gate: Option<Arc<dyn Gate>>) -> LocalBudget {
        Self::build(config, gate, scope)
    }

    fn alone<'a>(extras: &'a Arc<Extras>, app_pools: &'a BTreeMap<String, PoolConfig>) -> PoolScope<'a> {
        PoolScope {
            extras,
            tenant: crate::config::DEFAULT_TENANT,
            app_pools,
        }
    }

    fn build(config: &BudgetConfig, gate: Option<Arc<dyn Gate>>, scope: PoolScope<'_>) -> LocalBudget {
        let (specs, route_pool) = pools(config);
        // Where each further pool lives: with a shared ledger, there (numbered after the own
        // pools); else in the process's book, one ledger per name (a tenant's own, or one shared
        // by every tenant), whichever routes draw from it.
        let further = further_pools(config, scope.app_pools);
        let place: Vec<usize> = further
            .iter()
            .enumerate()
            .map(|(k, (spec, every_tenant))| match (&gate, every_tenant) {
                (Some(_), _) => specs.len() + k,
                (None, true) => scope
                    .extras
                    .register(&spec.name, &spec.name, &spec.quotas, config.safety_margin, true),
                (None, false) => scope.extras.register(
                    &format!("{}/{}", scope.tenant, spec.name),
                    &spec.name,
                    &spec.quotas,
                    config.safety_margin,
                    false,
                ),
            })
            .collect();
        let route_extras = RouteKind::ALL.map(|kind| {
            let names = config.routes.get(kind.name()).map_or(&[][..], |r| &r.pools[..]);
            names
                .iter()
                .filter_map(|name| Some(place[further.iter().position(|(spec, _)| &spec.name == name)?]))
                .collect()
        });
        let extras = scope.extras.clone();
        let pools = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| RouteBudget {
                state: Mutex::new(State {
                    ledger: Ledger::new(&spec.quotas, config.safety_margin)
                        .named(&spec.name)
                        .with_reserve(spec.reserve),
                    waiters: VecDeque::new(),
                    next_id: 0,
                    closed: false,
                    consecutive_429: 0,
                    gating: None,
                    vtime: 0.0,
                    flows: HashMap::new(),
                }),
                name: spec.name.clone(),
                index,
                gate: gate.clone(),
                fair: config.fair_queuing,
                max_queue: config.max_queue,
                max_queue_per_flow: config.max_queue_per_consumer,
                default_backoff: config.default_backoff,
            })
            .collect();
        LocalBudget {
            pools,
            route_pool,
            gate,
            extras,
            route_extras,
            learnt: Mutex::new(Vec::new()),
        }
    }

    fn route(&self, kind: RouteKind) -> &RouteBudget {
        &self.pools[self.route_pool[kind.index()]]
    }
}

impl RouteBudget {
    /// `extras` are the further pools of the calling route, in `further`.
    async fn acquire(
        &self,
        caller: &Caller,
        max_wait: Duration,
        slot: Option<&SlotWatch>,
        further: &Extras,
        extras: &[usize],
    ) -> Result<Grant, Refusal> {
        let fifo;
        let caller = if self.fair {
            caller
        } else {
            fifo = Caller::new("all", 1, Priority::Interactive);
            &fifo
        };
        let start = Instant::now();
        let publish = |state: SlotState| {
            if let Some(w) = slot {
                w.send_if_modified(|s| std::mem::replace(s, state) != state);
            }
        };
        let batch = caller.priority == Priority::Batch;
        let (id, notify) = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(Refusal::Closed);
            }
            let tag = st.tag_for(caller);
            // With a shared ledger every call goes through the queue's head, which asks it.
            let now_ok = self.gate.is_none()
                && further
                    .spend_with(extras, None, start, || st.ledger.try_now_as(start, batch))
                    .unwrap_or(false);
            if now_ok {
                st.vtime = st.vtime.max(tag);
                let flow = st.flows.entry(caller.flow.clone()).or_default();
                flow.last_tag = flow.last_tag.max(tag);
                flow.granted += 1;
                publish(SlotState::Granted);
                let mut status = st.ledger.status(start);
                further.append_status(extras, start, &mut status);
                return Ok(Grant {
                    queued: Duration::ZERO,
                    status,
                    at: start,
                    shared: None,
                });
            }
            let id = st.next_id;
            let flow_queued = st.flows.get(&caller.flow).map_or(0, |f| f.queued);
            if st.waiters.len() >= self.max_queue || flow_queued >= self.max_queue_per_flow {
                let reason = if flow_queued >= self.max_queue_per_flow {
                    RefuseReason::ConsumerQueueFull
                } else {
                    RefuseReason::QueueFull
                };
                let slot = st.ledger.next_slot(start);
                return Err(st.refusal(start, slot, reason));
            }
            let mut pos = st
                .waiters
                .iter()
                .position(|w| !w.goes_before(caller.priority, tag, id))
                .unwrap_or(st.waiters.len());
            if st.gating.is_some() {
                pos = pos.max(1); // the head is being counted by the shared ledger
            }
            let projected = st.ledger.insert(pos, start, batch);
            if projected - start > max_wait {
                st.ledger.cancel(pos, start);
                return Err(st.refusal(start, projected, RefuseReason::Budget));
            }
            publish(SlotState::Queued(projected));
            st.next_id += 1;
            let flow = st.flows.entry(caller.flow.clone()).or_default();
            flow.last_tag = flow.last_tag.max(tag);
            flow.queued += 1;
            let notify = Arc::new(Notify::new());
            st.waiters.insert(
                pos,
                Waiter {
                    id,
                    deadline: start + max_wait,
                    notify: notify.clone(),
                    flow: caller.flow.clone(),
                    priority: caller.priority,
                    tag,
                },
            );
            // Those behind moved back: let them republish (and leave if past their wait).
            st.notify_from(pos + 1);
            (id, notify)
        };
        // From here on, leaving this future early (the caller went away) must free the slot.
        // Its turn in the further pools (kept only while it is the head, ready to send).
        let turn = next_turn();
        let local_turns = if self.gate.is_none() && !extras.is_empty() {
            Some((further, extras, turn))
        } else {
            None
        };
        let mut guard = QueueGuard {
            route: self,
            id,
            done: false,
            turns: local_turns,
        };
        loop {
            let step = {
                let mut st = self.state.lock();
                let now = Instant::now();
                if st.closed {
                    return Err(Refusal::Closed);
                }
                let Some(pos) = st.position(id) else {
                    return Err(Refusal::Closed);
                };
                let waiter_deadline = st.waiters[pos].deadline;
                let projected = st.ledger.projected(pos).unwrap_or(now);
                publish(SlotState::Queued(projected));
                let slot = projected;
                if slot > waiter_deadline {
                    // A freeze (or a late head) pushed us past what the caller accepted.
                    return Err(st.refusal(now, slot, RefuseReason::Budget));
                }
                let ready = if pos == 0 {
                    Some(st.ledger.head_ready(now))
                } else {
                    None
                };
                // A turn is kept while this is the head (its own pool was ready when it took the
                // turn, and only its own hold or an upstream freeze can make it wait since):
                // frozen or displaced, nobody should wait on its turn.
                if pos != 0 || st.ledger.frozen_for(now).is_some() {
                    if let Some((further, ids, turn)) = guard.turns {
                        further.forget(ids, turn);
                    }
                }
                match (ready, &self.gate) {
                    (Some(Ok(())), Some(_)) => {
                        st.gating = Some(id);
                        Step::Gate
                    }
                    (Some(Ok(())), None) => match further.spend_with(extras, Some(turn), now, || true) {
                        Ok(_) => {
                            guard.done = true;
                            publish(SlotState::Granted);
                            let mut grant = st.grant_head(now, start, Vec::new(), None);
                            further.append_status(extras, now, &mut grant.status);
                            return Ok(grant);
                        }
                        // A further pool is spent until `at` (by another route or tenant): the
                        // whole queue moves back, and those now past their wait leave with a 429.
                        Err(Wait::Spent(at)) => {
                            st.ledger.hold(at, now);
                            st.notify_all();
                            Step::Sleep(Some(at))
                        }
                        // An older head's turn: it takes the slot first.
                        Err(Wait::Turn(at)) => Step::Sleep(Some(at)),
                    },
                    (Some(Err(t)), _) => Step::Sleep(Some(t)),
                    (None, _) => Step::Sleep(None),
                }
            };
            match step {
                Step::Sleep(Some(t)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = notify.notified() => {}
                    }
                }
                Step::Sleep(None) => notify.notified().await,
                Step::Gate => {
                    let Some(gate) = &self.gate else { continue };
                    let answer = gate.try_send(self.index, extras, batch).await;
                    let mut st = self.state.lock();
                    st.gating = None;
                    let now = Instant::now();
                    match answer {
                        GateAnswer::Sent(sent) => {
                            if st.closed || st.position(id) != Some(0) {
                                gate.release(self.index, extras, sent);
                                if st.closed {
                                    return Err(Refusal::Closed);
                                }
                                continue;
                            }
                            let status = gated_windows(gate.as_ref(), self.index, extras, || st.ledger.status(now));
                            guard.done = true;
                            publish(SlotState::Granted);
                            return Ok(st.grant_head(now, start, status, Some(sent)));
                        }
                        GateAnswer::NotBefore { at, frozen } => {
                            // Other replicas took the slots (or froze the pool): everyone here
                            // moves back, and those now past their wait leave with a 429.
                            if frozen {
                                st.ledger.freeze(at, now);
                            } else {
                                st.ledger.hold(at, now);
                            }
                            st.notify_all();
                        }
                    }
                }
            }
        }
    }
}

/// What the head of the queue does next.
enum Step {
    /// Wait until then (or until notified).
    Sleep(Option<Instant>),
    /// Ask the shared ledger.
    Gate,
}

impl State {
    /// Counts the head's send at `now` and hands it its grant.
    fn grant_head(&mut self, now: Instant, start: Instant, status: Vec<WindowStatus>, shared: Option<u64>) -> Grant {
        self.ledger.commit_head(now);
        if let Some(w) = self.waiters.pop_front() {
            self.vtime = self.vtime.max(w.tag);
            if let Some(f) = self.flows.get_mut(&w.flow) {
                f.queued = f.queued.saturating_sub(1);
                f.granted += 1;
            }
        }
        self.notify_head();
        let status = if shared.is_some() {
            status
        } else {
            self.ledger.status(now)
        };
        Grant {
            queued: now - start,
            status,
            at: now,
            shared,
        }
    }
}

/// Removes a waiter that leaves without its slot (refused, or its future dropped).
struct QueueGuard<'a> {
    route: &'a RouteBudget,
    id: u64,
    done: bool,
    /// The waiter's turn in its further pools (without a shared ledger), given back whatever
    /// way it leaves.
    turns: Option<(&'a Extras, &'a [usize], u64)>,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        if let Some((further, ids, turn)) = self.turns {
            further.forget(ids, turn);
        }
        if self.done {
            return;
        }
        let mut st = self.route.state.lock();
        if st.gating == Some(self.id) {
            st.gating = None;
        }
        if let Some(pos) = st.position(self.id) {
            st.ledger.cancel(pos, Instant::now());
            if let Some(w) = st.waiters.remove(pos) {
                st.forget_waiter(&w);
            }
            // Those behind moved forward.
            st.notify_from(pos);
        }
    }
}

impl Budget for LocalBudget {
    fn acquire<'a>(
        &'a self,
        route: RouteKind,
        caller: &'a Caller,
        max_wait: Duration,
        slot: Option<&'a SlotWatch>,
    ) -> BoxFuture<'a, Result<Grant, Refusal>> {
        let extras = &self.route_extras[route.index()];
        Box::pin(self.route(route).acquire(caller, max_wait, slot, &self.extras, extras))
    }

    fn release(&self, route: RouteKind, grant: &Grant) {
        let r = self.route(route);
        let mut st = r.state.lock();
        let now = Instant::now();
        st.ledger.uncommit(grant.at, now);
        let extras = &self.route_extras[route.index()];
        match (&r.gate, grant.shared) {
            (Some(gate), Some(id)) => gate.release(r.index, extras, id),
            (Some(_), None) => {}
            (None, _) => self.extras.unspend(extras, grant.at, now),
        }
        st.notify_head();
    }

    fn upstream_throttled(&self, route: RouteKind, retry_after: Option<Duration>) -> Freeze {
        let r = self.route(route);
        let mut st = r.state.lock();
        let now = Instant::now();
        // Without a stated time, back off exponentially (Graph's guidance), capped at 16x.
        let asked = retry_after.unwrap_or_else(|| r.default_backoff * 2u32.pow(st.consecutive_429.min(4)));
        let cap = st.ledger.longest_window();
        let pause = asked.min(cap);
        st.consecutive_429 = st.consecutive_429.saturating_add(1);
        st.ledger.freeze(now + pause, now);
        st.notify_all();
        if let Some(gate) = &r.gate {
            gate.freeze(r.index, pause);
        }
        Freeze {
            pause,
            capped: asked > cap,
        }
    }

    fn upstream_ok(&self, route: RouteKind) {
        self.route(route).state.lock().consecutive_429 = 0;
    }

    fn learn(&self, route: RouteKind, stated: Quota) -> Option<Learnt> {
        let r = self.route(route);
        let mut st = r.state.lock();
        let before: Vec<Quota> = st.ledger.quotas().collect();
        if !st.ledger.tighten(stated, Instant::now()) {
            return None;
        }
        // Callers already queued have new projected slots; some may now be past their wait.
        st.notify_all();
        if let Some(gate) = &r.gate {
            gate.learn(r.index, &st.ledger.quotas().collect::<Vec<_>>());
        }
        let learnt = Learnt {
            pool: r.name.clone(),
            before,
            after: st.ledger.quotas().collect(),
        };
        let mut all = self.learnt.lock();
        all.retain(|l| l.pool != learnt.pool);
        all.push(learnt.clone());
        Some(learnt)
    }

    fn learnt(&self) -> Vec<Learnt> {
        self.learnt.lock().clone()
    }

    fn pool_of(&self, route: RouteKind) -> String {
        self.route(route).name.clone()
    }

    fn status(&self, route: RouteKind) -> RouteStatus {
        let r = self.route(route);
        let st = r.state.lock();
        let now = Instant::now();
        let mut flows: Vec<FlowStatus> = st
            .flows
            .iter()
            .map(|(name, f)| FlowStatus {
                flow: name.to_string(),
                queued: f.queued,
                granted: f.granted,
            })
            .collect();
        flows.sort_by(|a, b| a.flow.cmp(&b.flow));
        let extras = &self.route_extras[route.index()];
        let windows = match &r.gate {
            Some(gate) => gated_windows(gate.as_ref(), r.index, extras, || st.ledger.status(now)),
            None => {
                let mut w = st.ledger.status(now);
                self.extras.append_status(extras, now, &mut w);
                w
            }
        };
        RouteStatus {
            windows,
            queued: st.waiters.len(),
            queue_capacity: r.max_queue,
            frozen_for: st.ledger.frozen_for(now),
            flows,
        }
    }

    fn shared_detail(&self) -> Option<serde_json::Value> {
        self.gate.as_ref().map(|g| g.detail())
    }

    fn close(&self) {
        for r in &self.pools {
            let mut st = r.state.lock();
            st.closed = true;
            st.notify_all();
        }
    }
}

/// A route's windows as the shared ledger last saw them: its own pool's (`own` until the
/// ledger has said), then each further pool's.
fn gated_windows(
    gate: &dyn Gate,
    pool: usize,
    further: &[usize],
    own: impl FnOnce() -> Vec<WindowStatus>,
) -> Vec<WindowStatus> {
    let mut windows = gate.windows(pool).unwrap_or_else(own);
    for &f in further {
        windows.extend(gate.windows(f).unwrap_or_default());
    }
    windows
}

/// The quota that binds: the one with the fewest calls left (the longest reset on a tie).
pub fn binding<'a>(windows: impl IntoIterator<Item = &'a WindowStatus>) -> Option<&'a WindowStatus> {
    windows
        .into_iter()
        .min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QuotaConfig, RouteQuotas};

    fn budget(limit: u32, window: Duration, max_queue: usize) -> LocalBudget {
        let mut cfg = BudgetConfig {
            max_queue,
            safety_margin: Duration::ZERO,
            ..BudgetConfig::default()
        };
        for name in crate::config::ROUTE_NAMES {
            cfg.routes.insert(
                name.into(),
                RouteQuotas {
                    quotas: vec![QuotaConfig { limit, window }],
                    pool: None,
                    pools: Vec::new(),
                },
            );
        }
        LocalBudget::new(&cfg)
    }

    const G: RouteKind = RouteKind::GetIncident;
    static C: std::sync::LazyLock<Caller> = std::sync::LazyLock::new(|| Caller::new("test", 1, Priority::Interactive));

    #[tokio::test(start_paused = true)]
    async fn queued_callers_are_served_in_order_at_their_slots() {
        let b = Arc::new(budget(2, Duration::from_secs(10), 100));
        let t0 = Instant::now();
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..4 {
            let (b, tx) = (b.clone(), tx.clone());
            tokio::spawn(async move {
                let g = b.acquire(G, &C, Duration::from_secs(60), None).await.unwrap();
                tx.send((i, Instant::now() - t0, g.queued)).unwrap();
            });
            tokio::task::yield_now().await; // fix the arrival order
        }
        drop(tx);
        let mut got = vec![];
        while let Some(x) = rx.recv().await {
            got.push(x);
        }
        let order: Vec<_> = got.iter().map(|x| x.0).collect();
        let at: Vec<_> = got.iter().map(|x| x.1.as_secs()).collect();
        assert_eq!(order, vec![0, 1, 2, 3]);
        assert_eq!(at, vec![10, 10, 20, 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_at_once_with_exact_retry_after_when_the_slot_is_too_far() {
        let b = budget(1, Duration::from_secs(60), 100);
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        tokio::time::advance(Duration::from_secs(15)).await;
        let t = Instant::now();
        let err = b.acquire(G, &C, Duration::from_secs(30), None).await.unwrap_err();
        assert_eq!(Instant::now(), t, "refused without waiting");
        match err {
            Refusal::Throttled {
                retry_after, reason, ..
            } => {
                assert_eq!(retry_after, Duration::from_secs(45));
                assert_eq!(reason, RefuseReason::Budget);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses() {
        let b = Arc::new(budget(1, Duration::from_secs(10), 1));
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        let b2 = b.clone();
        let waiting = tokio::spawn(async move { b2.acquire(G, &C, Duration::from_secs(60), None).await });
        tokio::task::yield_now().await;
        let err = b.acquire(G, &C, Duration::from_secs(60), None).await.unwrap_err();
        assert!(
            matches!(
                err,
                Refusal::Throttled {
                    reason: RefuseReason::QueueFull,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_leaves_gives_its_slot_back() {
        let b = Arc::new(budget(1, Duration::from_secs(10), 100));
        let t0 = Instant::now();
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        let b1 = b.clone();
        let first = tokio::spawn(async move { b1.acquire(G, &C, Duration::from_secs(60), None).await });
        tokio::task::yield_now().await;
        let b2 = b.clone();
        let second = tokio::spawn(async move { b2.acquire(G, &C, Duration::from_secs(60), None).await });
        tokio::task::yield_now().await;
        assert_eq!(b.status(G).queued, 2);
        first.abort(); // the first waiter's client disconnected
        let _ = first.await;
        assert_eq!(b.status(G).queued, 1);
        let g = second.await.unwrap().unwrap();
        assert_eq!(
            Instant::now() - t0,
            Duration::from_secs(10),
            "second took the freed slot"
        );
        assert_eq!(g.queued, Duration::from_secs(10));
        assert_eq!(
            b.status(G).windows[0].remaining,
            0,
            "only one call counted in this window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_429_freezes_the_route_and_refuses_or_delays() {
        let b = Arc::new(budget(100, Duration::from_secs(60), 100));
        let freeze = b.upstream_throttled(G, Some(Duration::from_secs(8)));
        assert_eq!(freeze.pause, Duration::from_secs(8));
        let err = b.acquire(G, &C, Duration::from_secs(2), None).await.unwrap_err();
        assert!(
            matches!(err, Refusal::Throttled { reason: RefuseReason::Frozen, retry_after, .. } if retry_after == Duration::from_secs(8))
        );
        let t = Instant::now();
        b.acquire(G, &C, Duration::from_secs(10), None).await.unwrap();
        assert_eq!(Instant::now() - t, Duration::from_secs(8));
        // No stated time: exponential backoff from the default.
        assert_eq!(b.upstream_throttled(G, None).pause, Duration::from_secs(20));
        b.upstream_ok(G);
        assert_eq!(b.upstream_throttled(G, None).pause, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_freeze_never_outlasts_the_longest_window() {
        let b = budget(100, Duration::from_secs(60), 100);
        let freeze = b.upstream_throttled(G, Some(Duration::MAX));
        assert_eq!(
            freeze,
            Freeze {
                pause: Duration::from_secs(60),
                capped: true
            }
        );
        assert_eq!(b.status(G).frozen_for, Some(Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_grant_is_uncounted() {
        let b = budget(1, Duration::from_secs(60), 100);
        let g = b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        assert!(b.acquire(G, &C, Duration::ZERO, None).await.is_err());
        b.release(G, &g);
        assert!(b.acquire(G, &C, Duration::ZERO, None).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_freeze_refuses_queued_callers_whose_wait_it_exceeds() {
        let b = Arc::new(budget(1, Duration::from_secs(100), 100));
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        tokio::time::advance(Duration::from_secs(90)).await;
        let b1 = b.clone();
        let waiter = tokio::spawn(async move { b1.acquire(G, &C, Duration::from_secs(15), None).await });
        tokio::task::yield_now().await;
        b.upstream_throttled(G, Some(Duration::from_secs(60)));
        let err = waiter.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                Refusal::Throttled {
                    reason: RefuseReason::Frozen,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(b.status(G).queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn close_releases_queued_callers() {
        let b = Arc::new(budget(1, Duration::from_secs(10), 100));
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        let b1 = b.clone();
        let waiter = tokio::spawn(async move { b1.acquire(G, &C, Duration::from_secs(30), None).await });
        tokio::task::yield_now().await;
        b.close();
        assert_eq!(waiter.await.unwrap().unwrap_err(), Refusal::Closed);
        assert_eq!(
            b.acquire(G, &C, Duration::from_secs(30), None).await.unwrap_err(),
            Refusal::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn routes_naming_one_pool_share_its_windows() {
        let mut cfg = BudgetConfig {
            safety_margin: Duration::ZERO,
            ..BudgetConfig::default()
        };
        cfg.pools.insert(
            "incidents_api".into(),
            crate::config::PoolConfig {
                quotas: vec![QuotaConfig {
                    limit: 2,
                    window: Duration::from_secs(60),
                }],
            },
        );
        for route in ["get_incident", "list_incidents"] {
            cfg.routes.insert(
                route.into(),
                RouteQuotas {
                    quotas: vec![],
                    pool: Some("incidents_api".into()),
                    pools: Vec::new(),
                },
            );
        }
        let b = LocalBudget::new(&cfg);
        b.acquire(RouteKind::GetIncident, &C, Duration::ZERO, None)
            .await
            .unwrap();
        b.acquire(RouteKind::ListIncidents, &C, Duration::ZERO, None)
            .await
            .unwrap();
        assert!(
            b.acquire(RouteKind::GetIncident, &C, Duration::ZERO, None)
                .await
                .is_err(),
            "the shared pool is spent by both routes together"
        );
        assert_eq!(b.status(RouteKind::ListIncidents).windows[0].remaining, 0);
        assert!(
            b.acquire(RouteKind::UpdateIncident, &C, Duration::ZERO, None)
                .await
                .is_ok(),
            "a route with its own pool is not affected"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn routes_have_separate_quotas() {
        let b = budget(1, Duration::from_secs(10), 100);
        b.acquire(RouteKind::GetIncident, &C, Duration::ZERO, None)
            .await
            .unwrap();
        b.acquire(RouteKind::ListIncidents, &C, Duration::ZERO, None)
            .await
            .unwrap();
        b.acquire(RouteKind::UpdateIncident, &C, Duration::ZERO, None)
            .await
            .unwrap();
        assert!(b
            .acquire(RouteKind::GetIncident, &C, Duration::ZERO, None)
            .await
            .is_err());
    }

    /// get and list each have their own quota and both draw from `api` too; update draws from
    /// `api` alone besides its own. Limits are small, so the pools overlap and bind in turn.
    fn overlapping(own: [u32; 3], api: u32, window: Duration) -> LocalBudget {
        let mut cfg = BudgetConfig {
            safety_margin: Duration::ZERO,
            ..BudgetConfig::default()
        };
        cfg.pools.insert(
            "api".into(),
            crate::config::PoolConfig {
                quotas: vec![QuotaConfig { limit: api, window }],
            },
        );
        for (route, limit) in crate::config::ROUTE_NAMES.iter().zip(own.iter().chain(&[own[2]])) {
            cfg.routes.insert(
                (*route).into(),
                RouteQuotas {
                    quotas: vec![QuotaConfig { limit: *limit, window }],
                    pool: None,
                    pools: vec!["api".into()],
                },
            );
        }
        LocalBudget::new(&cfg)
    }

    /// Two tenants' budgets drawing from one pool of the app (2 per 10 s).
    fn two_tenants_one_app_pool() -> (Arc<LocalBudget>, Arc<LocalBudget>) {
        let w = Duration::from_secs(10);
        let extras = Arc::new(Extras::default());
        let app_pools = BTreeMap::from([(
            "app".to_string(),
            crate::config::PoolConfig {
                quotas: vec![QuotaConfig { limit: 2, window: w }],
            },
        )]);
        let tenant = |name: &str| {
            let mut cfg = BudgetConfig {
                safety_margin: Duration::ZERO,
                ..BudgetConfig::default()
            };
            cfg.routes.get_mut("get_incident").unwrap().pools = vec!["app".into()];
            let scope = PoolScope {
                extras: &extras,
                tenant: name,
                app_pools: &app_pools,
            };
            Arc::new(LocalBudget::for_tenant(&cfg, scope, None))
        };
        (tenant("a"), tenant("b"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_tenant_gets_the_shared_pools_next_slot_before_a_newcomer_of_another() {
        let (a, b) = two_tenants_one_app_pool();
        let t0 = Instant::now();
        // Tenant B spends the app pool (at 0 s and 5 s); tenant A's caller queues for its next
        // slot (at 10 s, when the first of B's sends leaves the window).
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        let queued = {
            let a = a.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let g = a.acquire(G, &C, Duration::from_secs(60), None).await.unwrap();
                g.at - t0
            })
        };
        // A newcomer of B arrives the moment the slot frees: A's turn comes first.
        tokio::time::sleep_until(t0 + Duration::from_secs(10)).await;
        let newcomer = b.acquire(G, &C, Duration::from_secs(60), None).await.unwrap();
        let a_at = queued.await.unwrap();
        assert_eq!(a_at, Duration::from_secs(10), "the older turn took the freed slot");
        assert_eq!(
            newcomer.at - t0,
            Duration::from_secs(15),
            "B's newcomer got the next one"
        );
        // A waiter that leaves gives its turn back: the pool is not held for it.
        let (a, b) = two_tenants_one_app_pool();
        let t0 = Instant::now();
        for _ in 0..2 {
            b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        }
        let gone = {
            let a = a.clone();
            tokio::spawn(async move { a.acquire(G, &C, Duration::from_secs(60), None).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        gone.abort();
        let _ = gone.await;
        tokio::time::sleep_until(t0 + Duration::from_secs(10)).await;
        assert!(
            b.acquire(G, &C, Duration::ZERO, None).await.is_ok(),
            "nobody's turn is left behind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_refused_by_a_further_pool_spends_nothing_from_its_own() {
        let w = Duration::from_secs(10);
        let b = overlapping([5, 5, 5], 2, w);
        b.acquire(RouteKind::GetIncident, &C, Duration::ZERO, None)
            .await
            .unwrap();
        b.acquire(RouteKind::ListIncidents, &C, Duration::ZERO, None)
            .await
            .unwrap();
        // `api` is spent by the two routes together: get is refused with the exact time...
        match b
            .acquire(RouteKind::GetIncident, &C, Duration::from_secs(3), None)
            .await
        {
            Err(Refusal::Throttled { retry_after, .. }) => assert_eq!(retry_after, w),
            other => panic!("{other:?}"),
        }
        // ...and its own pool was not spent by the refused call (4 of 5 left), while the
        // binding window in its status is `api`'s.
        let st = b.status(RouteKind::GetIncident);
        assert_eq!(st.windows[0].remaining, 4);
        assert_eq!(st.windows[1].remaining, 0);
        assert_eq!(binding(&st.windows).unwrap().quota.limit, 2);
        // A queued caller goes once `api` has room, and a released grant gives `api` back.
        let t = Instant::now();
        let g = b
            .acquire(RouteKind::UpdateIncident, &C, Duration::from_secs(30), None)
            .await
            .unwrap();
        assert_eq!(Instant::now() - t, w);
        b.release(RouteKind::UpdateIncident, &g);
        assert!(b
            .acquire(RouteKind::GetIncident, &C, Duration::ZERO, None)
            .await
            .is_ok());
    }

    /// A shared ledger stand-in: no slot before `free_at`, then one send per call; records
    /// releases and freezes.
    struct FakeGate {
        free_at: Mutex<Instant>,
        next: std::sync::atomic::AtomicU64,
        released: Mutex<Vec<u64>>,
        frozen: Mutex<Vec<Duration>>,
    }

    impl Gate for FakeGate {
        fn try_send<'a>(&'a self, _pool: usize, _further: &'a [usize], _batch: bool) -> BoxFuture<'a, GateAnswer> {
            Box::pin(async move {
                let at = *self.free_at.lock();
                if Instant::now() < at {
                    GateAnswer::NotBefore { at, frozen: false }
                } else {
                    GateAnswer::Sent(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                }
            })
        }
        fn release(&self, _pool: usize, _further: &[usize], id: u64) {
            self.released.lock().push(id);
        }
        fn freeze(&self, _pool: usize, pause: Duration) {
            self.frozen.lock().push(pause);
        }
        fn windows(&self, _pool: usize) -> Option<Vec<WindowStatus>> {
            None
        }
        fn detail(&self) -> serde_json::Value {
            serde_json::json!({"fake": true})
        }
    }

    fn gated(free_in: Duration) -> (Arc<LocalBudget>, Arc<FakeGate>) {
        let gate = Arc::new(FakeGate {
            free_at: Mutex::new(Instant::now() + free_in),
            next: std::sync::atomic::AtomicU64::new(1),
            released: Mutex::new(Vec::new()),
            frozen: Mutex::new(Vec::new()),
        });
        let cfg = BudgetConfig {
            safety_margin: Duration::ZERO,
            ..BudgetConfig::default()
        };
        (Arc::new(LocalBudget::with_gate(&cfg, gate.clone())), gate)
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_that_says_not_before_holds_the_queue_and_refuses_with_the_exact_time() {
        let (b, _gate) = gated(Duration::from_secs(7));
        let t0 = Instant::now();
        // Too short a wait: refused once the shared ledger named its slot, with that time.
        match b.acquire(G, &C, Duration::from_secs(2), None).await.unwrap_err() {
            Refusal::Throttled { retry_after, .. } => assert_eq!(retry_after, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        // Long enough: granted when the shared ledger allows, and counted there.
        let g = b.acquire(G, &C, Duration::from_secs(30), None).await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(7));
        assert_eq!(g.shared, Some(1));
        assert_eq!(b.shared_detail(), Some(serde_json::json!({"fake": true})));
    }

    #[tokio::test(start_paused = true)]
    async fn gated_grants_are_released_and_freezes_shared_through_the_gate() {
        let (b, gate) = gated(Duration::ZERO);
        let g = b.acquire(G, &C, Duration::ZERO, None).await.unwrap();
        b.release(G, &g);
        assert_eq!(*gate.released.lock(), vec![g.shared.unwrap()]);
        b.upstream_throttled(G, Some(Duration::from_secs(3)));
        assert_eq!(*gate.frozen.lock(), vec![Duration::from_secs(3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_behind_a_gated_head_leaves_without_a_trace() {
        let (b, _gate) = gated(Duration::from_secs(5));
        let b1 = b.clone();
        let head = tokio::spawn(async move { b1.acquire(G, &C, Duration::from_secs(30), None).await });
        tokio::task::yield_now().await;
        let b2 = b.clone();
        let second = tokio::spawn(async move { b2.acquire(G, &C, Duration::from_secs(30), None).await });
        tokio::task::yield_now().await;
        assert_eq!(b.status(G).queued, 2);
        second.abort();
        let _ = second.await;
        assert_eq!(b.status(G).queued, 1);
        assert!(head.await.unwrap().is_ok());
        assert_eq!(b.status(G).queued, 0);
    }
}
