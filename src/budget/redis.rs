//! The ledger shared by replicas: every pool's sliding windows in Redis, checked and spent in one
//! Lua script on the Redis server's clock, and a local share to fall back on when Redis is away.
//!
//! # Why the guarantee still holds
//!
//! * **Redis reachable.** A pool's sends (by every replica) are one sorted set of server times
//!   (microseconds). The script reads `TIME`, and for every quota (`L` per `W`, span
//!   `W + margin`) counts the sends later than `now - span`; only if every count is below `L` does
//!   it add `now`, in the same script: no other replica's check can come between. That is the
//!   local ledger's rule (`log[i - L] + span <= now`) on the shared log. When refused, it returns
//!   the earliest instant the rule allows (the `(count - L + 1)`-th newest send plus the span),
//!   or the pool's shared freeze, so the head of the local queue sleeps until then. A call that
//!   draws from further pools (a tenant's `budget.pools`, or `app_pools` every tenant shares) is
//!   checked and recorded in all of them by the same script run: refused by one, it is recorded
//!   in none.
//! * **Redis unreachable.** Each replica sends at most `floor(L / N)` per window of its *own*
//!   sends, counting those it made through Redis before the outage (`N` = `shared.replicas`, or
//!   the last member count the heartbeats saw). Every send before the outage was made by some
//!   replica, which counts it, so all replicas together, before and during the outage, stay within
//!   `N * floor(L / N) <= L` in every window.
//! * **Redis back.** Each replica writes its own sends back (idempotent: each send has a unique
//!   member), every heartbeat. Until every live replica has had a heartbeat to do so (the shared
//!   state is *unsettled*), a replica needs both the script's yes and its local share's.
//! * **Redis restarted empty.** The script keeps a random epoch in Redis; a replica that finds
//!   another epoch than the one it reconciled with writes back all its sends of the longest span
//!   before asking again, and the state is unsettled as above. So a lost ledger is rebuilt from
//!   the replicas' memory within one heartbeat, and nobody spends past its share meanwhile.
//!
//! Residual risks are written down in the README ("Several replicas"): a replica cut off from
//! Redis while the others reach it, and a Redis restart in the same window as a replica's death.
//!
//! Server and local clocks are mapped at each reply: server times sent to Redis are mapped from
//! the instant *before* the call (never earlier than true), server times received are mapped
//! from the instant *after* it (never earlier than true), so the error only ever delays a send.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Gate, GateAnswer, PoolSpec, Quota, WindowStatus};
use crate::shared::{Shared, SharedError, Tick};

/// Check every window of every pool (KEYS after the epoch: log and freeze key per pool) and record
/// the send (ARGV[1]) at the server's `TIME`, or say when a slot frees.
///
/// ARGV: member, known epoch, fresh epoch (set when Redis has none), batch flag, then per pool:
/// keep (µs), reserve, quota count, then (limit, span µs) per quota.
/// Returns `{1, now, epoch, count, oldest, ...}` (per quota, after the send), `{0, now, epoch,
/// earliest, frozen}`, or `{2, now, epoch}` when the epoch is not the caller's (Redis lost the
/// ledger, or the caller never reconciled): nothing is recorded then.
const ACQUIRE: &str = r"
local function s(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch)
end
if epoch ~= ARGV[2] then
  return {2, now, tonumber(epoch)}
end
local batch = ARGV[4] == '1'
local a = 5
local earliest = 0
local frozen = 0
local pools = {}
for p = 1, (#KEYS - 1) / 2 do
  local log, fz = KEYS[2 * p], KEYS[2 * p + 1]
  local keep, reserve, nq = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. s(now - keep))
  local f = tonumber(redis.call('GET', fz) or '0')
  if f > now then
    frozen = 1
    if f > earliest then earliest = f end
  end
  local qs = {}
  for q = 1, nq do
    local limit, span = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    local lim = limit
    if batch then lim = math.max(limit - reserve, 1) end
    local from = '(' .. s(now - span)
    local c = redis.call('ZCOUNT', log, from, '+inf')
    if c >= lim then
      local e = redis.call('ZRANGEBYSCORE', log, from, '+inf', 'WITHSCORES', 'LIMIT', c - lim, 1)
      local at = tonumber(e[2]) + span
      if at > earliest then earliest = at end
    end
    qs[q] = {from, c}
  end
  pools[p] = {log, keep, qs}
end
if earliest > 0 then
  return {0, now, tonumber(epoch), earliest, frozen}
end
local out = {1, now, tonumber(epoch)}
for _, pool in ipairs(pools) do
  redis.call('ZADD', pool[1], s(now), ARGV[1])
  redis.call('PEXPIRE', pool[1], math.ceil(pool[2] / 1000) + 1000)
  for _, q in ipairs(pool[3]) do
    local o = redis.call('ZRANGEBYSCORE', pool[1], q[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    table.insert(out, q[2] + 1)
    table.insert(out, tonumber(o[2]))
  end
end
return out
";

/// The ledger's epoch (set to ARGV[1] when Redis has none) and the server time.
const EPOCH: &str = r"
local t = redis.call('TIME')
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
return {tonumber(t[1]) * 1000000 + tonumber(t[2]), tonumber(epoch)}
";

/// Extends the pool's shared freeze to `TIME + ARGV[1]` µs (never shortens it).
const FREEZE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + pause > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', now + pause), 'PX', math.ceil(pause / 1000) + 1000)
end
return 1
";

/// What the shared ledger needs to know of one pool, and this replica's own sends to it.
struct Pool {
    spec: PoolSpec,
    /// The quotas the script checks: the configured ones, tightened by limits the upstream
    /// stated (learnt by any replica, shared through `learnt_key`).
    limits: parking_lot::RwLock<Limits>,
    log_key: String,
    /// Limits learnt from the upstream, by window in milliseconds (a hash; only ever lowered).
    learnt_key: String,
    freeze_key: String,
    mine: Mutex<Mine>,
    /// The ledger's sends were taken as this replica's own on first contact (once, even for a
    /// pool every tenant's gate shares).
    adopted: AtomicBool,
    /// Shared by every tenant (`app_pools`).
    across_tenants: bool,
}

impl Pool {
    /// A pool whose keys live in `slot` (a tenant, or [`APP_SLOT`]).
    fn new(shared: &Shared, slot: &str, spec: PoolSpec, margin: Duration) -> Pool {
        Pool {
            log_key: shared.key(slot, &format!("budget:{}:log", spec.name)),
            learnt_key: shared.key(slot, &format!("budget:{}:learnt", spec.name)),
            freeze_key: shared.key(slot, &format!("budget:{}:frozen", spec.name)),
            limits: parking_lot::RwLock::new(Limits::new(spec.quotas.clone(), margin)),
            spec,
            mine: Mutex::new(Mine::default()),
            adopted: AtomicBool::new(false),
            across_tenants: slot == APP_SLOT,
        }
    }
}

/// The hash-tag slot of the pools every tenant shares (`app_pools`): not a valid tenant name.
/// The acquire script then touches keys of two slots (the tenant's and this one), which a
/// standalone Redis or Valkey allows and a Redis Cluster does not.
const APP_SLOT: &str = "_app";

/// The shared ledgers of the pools every tenant draws from (`app_pools`), one per name for the
/// whole process: each tenant's gate checks and records sends in the same one, and this
/// replica's own sends to it are counted once (for its local share while Redis is away).
#[derive(Default)]
pub struct AppPools(Mutex<std::collections::HashMap<String, Arc<Pool>>>);

impl AppPools {
    fn get_or_make(&self, shared: &Shared, spec: PoolSpec, margin: Duration) -> Arc<Pool> {
        let mut all = self.0.lock();
        if let Some(p) = all.get(&spec.name).filter(|p| p.spec == spec) {
            return p.clone();
        }
        let pool = Arc::new(Pool::new(shared, APP_SLOT, spec.clone(), margin));
        all.insert(spec.name, pool.clone());
        pool
    }
}

/// A pool's quotas with their spans.
#[derive(Debug, Clone)]
struct Limits {
    quotas: Vec<Quota>,
    /// `length + margin` per quota, as the local ledger computes it.
    spans: Vec<Duration>,
    /// The longest span: older sends matter to no window.
    keep: Duration,
}

impl Limits {
    fn new(quotas: Vec<Quota>, margin: Duration) -> Limits {
        let spans: Vec<Duration> = quotas.iter().map(|q| q.length + margin.min(q.length / 20)).collect();
        let keep = spans.iter().copied().max().unwrap_or_default();
        Limits { quotas, spans, keep }
    }

    /// Adopts `stated` where stricter (a lower limit for a window, or a window not yet held).
    fn tightened(&self, stated: &[Quota], margin: Duration) -> Option<Limits> {
        let mut quotas = self.quotas.clone();
        let mut changed = false;
        for q in stated.iter().filter(|q| q.limit > 0 && !q.length.is_zero()) {
            match quotas.iter_mut().find(|have| have.length == q.length) {
                Some(have) if have.limit > q.limit => {
                    have.limit = q.limit;
                    changed = true;
                }
                Some(_) => {}
                None => {
                    quotas.push(*q);
                    changed = true;
                }
            }
        }
        changed.then(|| Limits::new(quotas, margin))
    }
}

/// Lowers (never raises) the learnt limit of each window given: ARGV = window_ms, limit, ...
const LEARN: &str = r"
for i = 1, #ARGV, 2 do
  local have = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local limit = tonumber(ARGV[i + 1])
  if have == 0 or limit < have then
    redis.call('HSET', KEYS[1], ARGV[i], limit)
  end
end
return 1
";

#[derive(Default)]
struct Mine {
    /// This replica's sends within `keep`, oldest first.
    sends: VecDeque<OwnSend>,
    /// The pool's windows as the last granted call saw them (all replicas), with when each
    /// resets.
    windows: Option<Vec<(Quota, u32, Instant)>>,
}

#[derive(Debug, Clone, Copy)]
struct OwnSend {
    at: Instant,
    id: u64,
    /// Known to be in the shared ledger (of the epoch last reconciled with).
    written: bool,
}

/// One reply of the acquire script, its server times mapped to local instants.
enum Reply {
    Granted(Vec<(u32, i64)>, i64, Instant),
    Refused { at: Instant, frozen: bool },
    Epoch,
}

/// The shared ledger over Redis, with the local share behind it.
pub struct RedisGate {
    shared: Arc<Shared>,
    /// The tenant's own pools (numbered as [`super::pools`] numbers them), then its further
    /// pools (as [`super::further_pools`] lists them).
    pools: Vec<Arc<Pool>>,
    /// The budget's safety margin (for the spans of learnt windows).
    margin: Duration,
    learn_script: redis::Script,
    epoch_key: String,
    /// The epoch this replica last wrote its sends back under (0: never).
    epoch: AtomicU64,
    /// Some send was made without Redis (or the ledger may have lost some): write back.
    dirty: AtomicBool,
    acquire: redis::Script,
    epoch_script: redis::Script,
    freeze_script: redis::Script,
    reconciling: tokio::sync::Mutex<()>,
}

impl RedisGate {
    /// The gate of `tenant`: its own `pools` (numbered as [`super::pools`] numbers them), then
    /// its `further` pools (as [`super::further_pools`] lists them; those of every tenant come
    /// from `app`), with the budget's safety margin.
    pub fn new(
        shared: Arc<Shared>,
        tenant: &str,
        pools: Vec<PoolSpec>,
        further: Vec<(PoolSpec, bool)>,
        app: &AppPools,
        margin: Duration,
    ) -> Arc<RedisGate> {
        let mut all: Vec<Arc<Pool>> = pools
            .into_iter()
            .map(|spec| Arc::new(Pool::new(&shared, tenant, spec, margin)))
            .collect();
        all.extend(further.into_iter().map(|(spec, every_tenant)| {
            if every_tenant {
                app.get_or_make(&shared, spec, margin)
            } else {
                Arc::new(Pool::new(&shared, tenant, spec, margin))
            }
        }));
        let pools = all;
        Arc::new(RedisGate {
            margin,
            learn_script: redis::Script::new(LEARN),
            epoch_key: shared.key(tenant, "budget:epoch"),
            shared,
            pools,
            epoch: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            acquire: redis::Script::new(ACQUIRE),
            epoch_script: redis::Script::new(EPOCH),
            freeze_script: redis::Script::new(FREEZE),
            reconciling: tokio::sync::Mutex::new(()),
        })
    }

    /// A send's id, unique in this process (every tenant's gate may record in one app pool).
    fn next_id(&self) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn member(&self, id: u64) -> String {
        format!("{}:{id}", self.shared.replica())
    }

    /// Whether this replica's own sends allow one more now: at most `floor(L / N)` in every
    /// window of every quota (see the module doc). `Err` holds when one might.
    fn share_allows(&self, pool: &Pool, batch: bool, now: Instant) -> Result<(), Instant> {
        let retry = now + self.shared.heartbeat();
        let Some(n) = self.shared.replicas() else {
            return Err(retry); // nobody knows how many share the quota: send nothing
        };
        let mine = pool.mine.lock();
        let mut earliest = now;
        let (ever_up, started) = self.shared.ever_up();
        if !ever_up {
            // This process has no memory of what its previous incarnation sent, and Redis could
            // not tell it: it must let one longest window pass first.
            earliest = earliest.max(started + pool.limits.read().keep);
        }
        let limits = pool.limits.read().clone();
        for (q, span) in limits.quotas.iter().zip(&limits.spans) {
            let limit = if batch {
                q.limit.saturating_sub(pool.spec.reserve).max(1)
            } else {
                q.limit
            };
            let share = (limit / n) as usize;
            if share == 0 {
                return Err(retry);
            }
            let mut recent: Vec<Instant> = mine.sends.iter().map(|s| s.at).filter(|&at| at + *span > now).collect();
            recent.sort_unstable();
            if recent.len() >= share {
                earliest = earliest.max(recent[recent.len() - share] + *span);
            }
        }
        if earliest > now {
            Err(earliest)
        } else {
            Ok(())
        }
    }

    fn record(&self, pool: &Pool, id: u64, at: Instant, written: bool) {
        let mut mine = pool.mine.lock();
        let keep = pool.limits.read().keep;
        mine.sends.retain(|s| s.at + keep > at);
        mine.sends.push_back(OwnSend { at, id, written });
        if !written {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// A send on the local share alone (Redis away, or the shared state not yet known). After a
    /// single failed call, nothing until the next heartbeat confirms Redis is away.
    fn fallback(&self, pools: &[Arc<Pool>], batch: bool) -> GateAnswer {
        let now = Instant::now();
        if !self.shared.confirmed_down() {
            return GateAnswer::NotBefore {
                at: now + self.shared.heartbeat(),
                frozen: false,
            };
        }
        match self.shares_allow(pools, batch, now) {
            Ok(()) => {
                let id = self.next_id();
                for pool in pools {
                    self.record(pool, id, now, false);
                }
                GateAnswer::Sent(id)
            }
            Err(at) => GateAnswer::NotBefore { at, frozen: false },
        }
    }

    /// [`RedisGate::share_allows`] for every pool a call draws from: the latest of their
    /// earliest instants.
    fn shares_allow(&self, pools: &[Arc<Pool>], batch: bool, now: Instant) -> Result<(), Instant> {
        let mut latest = None;
        for pool in pools {
            if let Err(at) = self.share_allows(pool, batch, now) {
                latest = Some(latest.map_or(at, |l: Instant| l.max(at)));
            }
        }
        latest.map_or(Ok(()), Err)
    }

    /// The pools a call of pool `index` with further pools `further` draws from.
    fn chosen(&self, index: usize, further: &[usize]) -> Vec<Arc<Pool>> {
        std::iter::once(index)
            .chain(further.iter().copied())
            .filter_map(|i| self.pools.get(i).cloned())
            .collect()
    }

    /// Runs the acquire script over every pool in `pools` at once, with their `limits` (read
    /// once by the caller, which reads the reply with the same ones).
    async fn run_acquire(
        &self,
        pools: &[Arc<Pool>],
        limits: &[Limits],
        batch: bool,
        id: u64,
    ) -> Result<Reply, SharedError> {
        let mut invocation = self.acquire.prepare_invoke();
        invocation.key(&self.epoch_key);
        for pool in pools {
            invocation.key(&pool.log_key).key(&pool.freeze_key);
        }
        invocation
            .arg(self.member(id))
            .arg(self.epoch.load(Ordering::Acquire))
            .arg(fresh_epoch())
            .arg(if batch { 1 } else { 0 });
        for (pool, limits) in pools.iter().zip(limits) {
            invocation
                .arg(limits.keep.as_micros() as u64)
                .arg(pool.spec.reserve)
                .arg(limits.quotas.len());
            for (q, span) in limits.quotas.iter().zip(&limits.spans) {
                invocation.arg(q.limit).arg(span.as_micros() as u64);
            }
        }
        let reply: Vec<i64> = self
            .shared
            .call(false, |mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        let after = Instant::now();
        let bad = || SharedError::Redis("unexpected reply from the acquire script".into());
        let (kind, now) = (*reply.first().ok_or_else(bad)?, *reply.get(1).ok_or_else(bad)?);
        match kind {
            1 => {
                let per_quota = reply[3..]
                    .chunks(2)
                    .map(|c| (c[0].clamp(0, u32::MAX as i64) as u32, c.get(1).copied().unwrap_or(now)))
                    .collect();
                Ok(Reply::Granted(per_quota, now, after))
            }
            0 => {
                let earliest = *reply.get(3).ok_or_else(bad)?;
                Ok(Reply::Refused {
                    at: after + micros(earliest - now),
                    frozen: reply.get(4) == Some(&1),
                })
            }
            _ => Ok(Reply::Epoch),
        }
    }

    /// Brings the shared ledger up to date with this replica's memory: writes back the sends made
    /// without Redis, or all recent sends when the ledger's epoch changed (Redis restarted empty,
    /// or this replica never reconciled). Starts an unsettled period when the epoch changed.
    async fn reconcile(&self) -> Result<(), SharedError> {
        let _one = self.reconciling.lock().await;
        let before = Instant::now();
        let (key, fresh, script) = (self.epoch_key.clone(), fresh_epoch(), &self.epoch_script);
        let (server_now, epoch): (i64, u64) = self
            .shared
            .call(false, |mut c| async move {
                script.key(key).arg(fresh).invoke_async(&mut c).await
            })
            .await?;
        let after = Instant::now();
        let known = self.epoch.load(Ordering::Acquire);
        let changed = epoch != known;
        if known == 0 {
            self.adopt(server_now, after).await?;
        }
        if !changed && !self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        // Snapshot what to write (the lock is not held across the call).
        self.dirty.store(false, Ordering::Release);
        let now = Instant::now();
        let mut pipe = redis::pipe();
        let mut written: Vec<(usize, Vec<u64>)> = Vec::new();
        for (index, pool) in self.pools.iter().enumerate() {
            let keep = pool.limits.read().keep;
            let mine = pool.mine.lock();
            let entries: Vec<(u64, String, u64)> = mine
                .sends
                .iter()
                .filter(|s| s.at + keep > now && (changed || !s.written))
                .map(|s| {
                    // Mapped from `before`: a written-back time is never earlier than the truth.
                    let back = before.saturating_duration_since(s.at).as_micros() as i64;
                    ((server_now - back).max(0) as u64, self.member(s.id), s.id)
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            let items: Vec<(u64, &str)> = entries.iter().map(|(score, m, _)| (*score, m.as_str())).collect();
            pipe.zadd_multiple(&pool.log_key, &items).ignore();
            pipe.pexpire(&pool.log_key, (keep.as_millis() as i64) + 1000).ignore();
            written.push((index, entries.iter().map(|e| e.2).collect()));
        }
        if !written.is_empty() {
            let result: Result<(), SharedError> = self
                .shared
                .call(false, |mut c| async move { pipe.query_async(&mut c).await })
                .await;
            if let Err(e) = result {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
            for (index, ids) in &written {
                let mut mine = self.pools[*index].mine.lock();
                for s in mine.sends.iter_mut().filter(|s| ids.contains(&s.id)) {
                    s.written = true;
                }
            }
            let n: usize = written.iter().map(|(_, ids)| ids.len()).sum();
            tracing::info!(
                sends = n,
                epoch_changed = changed,
                "wrote this replica's sends back to the shared ledger"
            );
        }
        if changed {
            self.epoch.store(epoch, Ordering::Release);
            if known != 0 {
                self.shared.unsettle();
            }
        }
        Ok(())
    }

    /// On first contact, takes every send in the shared ledger as if it were this replica's own
    /// (for its local share only): a replica that just (re)started does not know which of them
    /// its previous incarnation made, and counting too many only makes its share smaller.
    async fn adopt(&self, server_now: i64, after: Instant) -> Result<(), SharedError> {
        // Loaded once here (SCRIPT LOAD); later calls go by SHA, and reload on NOSCRIPT.
        for script in [&self.acquire, &self.freeze_script] {
            self.shared
                .call(false, |mut c| async move { script.load_async(&mut c).await })
                .await?;
        }
        for pool in &self.pools {
            if pool.adopted.load(Ordering::Acquire) {
                continue; // a pool every tenant shares, already adopted through another gate
            }
            let (key, from) = (
                pool.log_key.clone(),
                format!("({}", server_now - pool.limits.read().keep.as_micros() as i64),
            );
            let entries: Vec<(String, f64)> = self
                .shared
                .call(false, |mut c| async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg(from)
                        .arg("+inf")
                        .arg("WITHSCORES")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let mut mine = pool.mine.lock();
            for (_, score) in entries {
                // Mapped from `after`: never earlier than the truth, so counted long enough.
                let at = after.checked_sub(micros(server_now - score as i64)).unwrap_or(after);
                // An id of our own: if Redis loses the ledger, it is written back under this
                // replica's name too (counted twice at worst: conservative).
                mine.sends.push_back(OwnSend {
                    at,
                    id: self.next_id(),
                    written: true,
                });
            }
            pool.adopted.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn send(&self, index: usize, further: &[usize], batch: bool) -> GateAnswer {
        let pools = self.chosen(index, further);
        self.shared.first_contact().await;
        for _ in 0..3 {
            let now = Instant::now();
            if !self.shared.settled(now) {
                // Some replica may not have written its sends back yet: stay within our share.
                if let Err(at) = self.shares_allow(&pools, batch, now) {
                    return GateAnswer::NotBefore { at, frozen: false };
                }
            }
            if !self.shared.is_up() {
                return self.fallback(&pools, batch);
            }
            if self.epoch.load(Ordering::Acquire) == 0 || self.dirty.load(Ordering::Acquire) {
                if self.reconcile().await.is_err() {
                    return self.fallback(&pools, batch);
                }
                continue;
            }
            let id = self.next_id();
            // If this future is dropped while the script runs, the send it may have recorded is
            // taken back.
            let mut undo = Undo {
                shared: self.shared.clone(),
                keys: pools.iter().map(|p| p.log_key.clone()).collect(),
                member: Some(self.member(id)),
            };
            let limits: Vec<Limits> = pools.iter().map(|p| p.limits.read().clone()).collect();
            let reply = self.run_acquire(&pools, &limits, batch, id).await;
            undo.member = None;
            match reply {
                Ok(Reply::Granted(per_quota, server_now, after)) => {
                    let mut per_quota = per_quota.into_iter();
                    for (pool, limits) in pools.iter().zip(&limits) {
                        self.record(pool, id, Instant::now(), true);
                        let windows = limits
                            .quotas
                            .iter()
                            .zip(&limits.spans)
                            .zip(per_quota.by_ref())
                            .map(|((q, span), (count, oldest))| {
                                let reset = after + micros(oldest + span.as_micros() as i64 - server_now);
                                (*q, q.limit.saturating_sub(count), reset)
                            })
                            .collect();
                        pool.mine.lock().windows = Some(windows);
                    }
                    return GateAnswer::Sent(id);
                }
                Ok(Reply::Refused { at, frozen }) => return GateAnswer::NotBefore { at, frozen },
                Ok(Reply::Epoch) => {
                    if self.reconcile().await.is_err() {
                        return self.fallback(&pools, batch);
                    }
                }
                // Redis is now marked down; a send the script may have recorded stays counted
                // (it errs on the safe side).
                Err(_) => return self.fallback(&pools, batch),
            }
        }
        GateAnswer::NotBefore {
            at: Instant::now() + self.shared.timeout(),
            frozen: false,
        }
    }
}

/// Takes back a send the acquire script may have recorded when its caller went away mid-call.
struct Undo {
    shared: Arc<Shared>,
    /// The log of every pool the send was for.
    keys: Vec<String>,
    member: Option<String>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        let Some(member) = self.member.take() else {
            return;
        };
        let (shared, keys) = (self.shared.clone(), std::mem::take(&mut self.keys));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(remove_member(shared, keys, member));
        }
    }
}

/// Takes `member` (one send) out of every log in `keys`.
async fn remove_member(shared: Arc<Shared>, keys: Vec<String>, member: String) {
    let _ = shared
        .call(false, |mut c| async move {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("ZREM").arg(key).arg(&member).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await;
}

fn micros(d: i64) -> Duration {
    Duration::from_micros(d.max(0) as u64)
}

/// A new random epoch (fits a Lua number exactly; never 0, which means "never reconciled").
fn fresh_epoch() -> u64 {
    rand::random::<u32>() as u64 + 1
}

impl Gate for RedisGate {
    fn try_send<'a>(&'a self, pool: usize, further: &'a [usize], batch: bool) -> BoxFuture<'a, GateAnswer> {
        Box::pin(self.send(pool, further, batch))
    }

    fn learn(&self, index: usize, quotas: &[Quota]) {
        let Some(pool) = self.pools.get(index) else { return };
        self.tighten(pool, quotas);
        // Written for the other replicas (they read it after each heartbeat); a failure only
        // delays them until they see a 429 of their own.
        let (script, key) = (self.learn_script.clone(), pool.learnt_key.clone());
        let args: Vec<(u64, u32)> = quotas.iter().map(|q| (q.length.as_millis() as u64, q.limit)).collect();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let _: Result<i64, SharedError> = shared
                .call(false, |mut c| async move {
                    let mut invocation = script.prepare_invoke();
                    invocation.key(key);
                    for (ms, limit) in args {
                        invocation.arg(ms).arg(limit);
                    }
                    invocation.invoke_async(&mut c).await
                })
                .await;
        });
    }

    fn release(&self, pool: usize, further: &[usize], id: u64) {
        let pools = self.chosen(pool, further);
        for pool in &pools {
            pool.mine.lock().sends.retain(|s| s.id != id);
        }
        let keys = pools.iter().map(|p| p.log_key.clone()).collect();
        tokio::spawn(remove_member(self.shared.clone(), keys, self.member(id)));
    }

    fn freeze(&self, pool: usize, pause: Duration) {
        let (shared, key) = (self.shared.clone(), self.pools[pool].freeze_key.clone());
        let script = self.freeze_script.clone();
        let micros = pause.as_micros() as u64;
        tokio::spawn(async move {
            let _ = shared
                .call(false, |mut c| async move {
                    script.key(key).arg(micros).invoke_async::<()>(&mut c).await
                })
                .await;
        });
    }

    fn windows(&self, pool: usize) -> Option<Vec<WindowStatus>> {
        let now = Instant::now();
        let name: Arc<str> = Arc::from(self.pools[pool].spec.name.as_str());
        let across_tenants = self.pools[pool].across_tenants;
        let mine = self.pools[pool].mine.lock();
        mine.windows.as_ref().map(|w| {
            w.iter()
                .map(|&(quota, remaining, reset)| WindowStatus {
                    pool: name.clone(),
                    across_tenants,
                    quota,
                    // Once the oldest counted send left the window, at least one slot is back.
                    remaining: if reset <= now {
                        remaining.max(1).min(quota.limit)
                    } else {
                        remaining
                    },
                    reset: reset.saturating_duration_since(now),
                })
                .collect()
        })
    }

    fn detail(&self) -> serde_json::Value {
        let status = self.shared.status();
        let degraded = !self.shared.settled(Instant::now());
        serde_json::json!({
            "degraded": degraded,
            "redis": status.redis,
            "replica": status.replica,
            "replicas": status.replicas,
            "replicas_source": status.replicas_source,
            "settled": status.settled,
            "last_error": status.last_error,
            "budget": if !self.shared.is_up() {
                "local share (quota / replicas)"
            } else if degraded {
                "shared, and within the local share until every replica has reconciled"
            } else {
                "shared"
            },
        })
    }
}

impl Tick for RedisGate {
    fn tick(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.shared.is_up() {
                let _ = self.reconcile().await;
                self.read_learnt().await;
            }
        })
    }
}

impl RedisGate {
    /// Tightens `pool`'s quotas to what was learnt (never loosens).
    fn tighten(&self, pool: &Pool, stated: &[Quota]) {
        let mut limits = pool.limits.write();
        if let Some(tighter) = limits.tightened(stated, self.margin) {
            tracing::warn!(
                pool = %pool.spec.name,
                quotas = ?tighter.quotas,
                "shared budget keeps to a stricter limit the upstream stated"
            );
            *limits = tighter;
        }
    }

    /// Adopts the limits other replicas learnt from the upstream.
    async fn read_learnt(&self) {
        for pool in &self.pools {
            let key = pool.learnt_key.clone();
            let Ok(learnt) = self
                .shared
                .call(false, |mut c| async move {
                    redis::cmd("HGETALL")
                        .arg(key)
                        .query_async::<std::collections::HashMap<u64, u32>>(&mut c)
                        .await
                })
                .await
            else {
                return;
            };
            let stated: Vec<Quota> = learnt
                .into_iter()
                .map(|(ms, limit)| Quota {
                    limit,
                    length: Duration::from_millis(ms),
                })
                .collect();
            if !stated.is_empty() {
                self.tighten(pool, &stated);
            }
        }
    }
}
