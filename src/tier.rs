//! The shared cache tier: Redis behind every replica's in-memory cache, for incident and list
//! answers, with one upstream call per cold key across replicas.
//!
//! # What is stored
//!
//! Per key, one hash: the body in **one view only** (an incident's native body, the upstream's
//! own dialect; a list page's single view, and which view it is), the status (200 or 404), when
//! it was fetched (Redis server milliseconds), its freshness lifetime, its `lastUpdateTime`, and
//! the write generation it was filled under. A replica that loads it rebuilds the entry as if the
//! answer had just come from the upstream (`ingest::render_incident`, `ingest::render_error`),
//! so the other views are translated lazily there too; the age comes from the server clock, so
//! `Age` and freshness are the same on every replica. The content type is always JSON and is not
//! stored. No token, key or request header is ever written; only what the upstream answered.
//!
//! # Order across replicas
//!
//! A generation counter in Redis (with a random epoch, so a Redis that restarted empty voids every
//! ticket taken before) orders writes the way the in-memory store's [`crate::cache::Ticket`]s do:
//! a miss takes a shared ticket (the counter) before its upstream call; a write (a PATCH's outcome)
//! increments the counter, marks its key with the new generation and invalidates every list
//! (the list generation becomes the new one) in one script. A fill is stored only if its ticket's
//! epoch is current, no write marked its key (or, for a list, invalidated the lists) after the
//! ticket, and the cached entry is not newer by `lastUpdateTime`: checked and stored in one Lua
//! script, so an older answer never replaces a newer one, whichever replica brings it. Lists are
//! invalidated by versioning (a list filled before the last invalidation is not served), never
//! by scanning.
//!
//! # Invalidation of the first tiers
//!
//! The write script also `PUBLISH`es the key on the tenant's channel; every replica subscribes
//! and drops that incident and every list from its in-memory tier, voids its older tickets and
//! detaches its reads in flight for them (as a local write does), then acknowledges the write's
//! generation in Redis. The writing replica answers its caller only once every live replica that
//! listens (the heartbeat's member set) has acknowledged it, or after two `shared.timeout`s. A replica whose subscription breaks keeps its first
//! tier (it serves through a Redis outage) but skips the shared tier; once subscribed again it
//! reads the writes it missed from a write log in Redis (the last [`WRITE_LOG`] writes, by
//! generation) and drops those incidents and the lists, or drops its whole first tier when the log
//! no longer reaches back that far or Redis restarted (another epoch).
//!
//! # Collapsed misses
//!
//! The lookup script returns the entry if one is stored, else tries `SET NX PX` on the key's lease
//! (`shared.lease`). The holder fetches, fills, and deletes the lease in the fill script; while it
//! works it renews the lease every third of its length, so a dead holder's lease ends within
//! `shared.lease`. The others poll every [`POLL`] for the entry, up to `shared.lease_wait`; if the
//! lease ends without an entry (the holder died, or its answer was not cacheable) one of them
//! takes it over; past the wait they fetch themselves.
//!
//! # Bounds
//!
//! Every entry expires with its freshness lifetime (`PX`), so no stale entry is ever served from
//! Redis. The bodies held are counted (a sorted set of keys by expiry, a hash of sizes, a total),
//! and a fill evicts the earliest-expiring entries until it fits `shared.cache_max_bytes`. Every
//! call is bounded by `shared.timeout`; any Redis trouble makes the read path behave as a single
//! replica does (a miss goes upstream, within the shared budget).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::StatusCode;
use redis::Value;
use tokio::{sync::mpsc, time::Instant};

use crate::shared::{Shared, SharedError};
use crate::{
    body::{Bodies, View},
    cache::{Entry, Key},
    config::SharedConfig,
    dialect::Dialect,
    ingest::{render_error, render_incident},
    outcome::json_content_type,
};

/// How many `shared.timeout`s a writer waits at most for the other replicas to apply its write.
const ACK_WAIT: u32 = 2;

/// How often a replica waiting for another replica's fetch looks for its answer.
pub const POLL: Duration = Duration::from_millis(20);

/// How long a key's write generation is remembered in Redis: no read lives that long (the same
/// bound as the in-memory store's), and a ticket older than this is refused outright.
const WRITE_MEMORY: Duration = Duration::from_secs(30 * 60);

/// Reads the entry, or takes the lease, and hands out a ticket.
///
/// KEYS: order, entry, lease. ARGV: mode ('read' or 'ticket'), is-list, lease ms, replica,
/// fresh epoch. Returns {kind, epoch, gen, now} with kind 0 (ticket only), 2 (lease taken),
/// 3 (lease held by another), or {1, epoch, gen, now, body, view, status, fetched, ttl, update}.
const LOOKUP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'gen', 0, 'lists', 0)
end
local gen = redis.call('HGET', KEYS[1], 'gen') or '0'
local head = {0, epoch, gen, string.format('%.0f', now)}
if ARGV[1] == 'ticket' then return head end
local e = redis.call('HMGET', KEYS[2], 'b', 'v', 's', 'f', 't', 'u', 'g')
if e[1] then
  local valid = true
  if ARGV[2] == '1' then
    local lists = tonumber(redis.call('HGET', KEYS[1], 'lists') or '0')
    if tonumber(e[7] or '0') < lists then valid = false end
  end
  if valid then
    return {1, epoch, gen, head[4], e[1], e[2], e[3], e[4], e[5], e[6] or ''}
  end
end
if redis.call('SET', KEYS[3], ARGV[4], 'NX', 'PX', ARGV[3]) then
  head[1] = 2
else
  head[1] = 3
end
return head
";

/// Shared by the fill and write scripts: stores ARGV-described entry under KEYS[2], within the
/// byte budget. Expects `now` and the arguments at offset `a`: body, view, status, age ms, ttl ms,
/// update, size, max bytes, member, entry key prefix, fill generation.
const STORE: &str = r"
local function newer(x, y)
  if x == nil or x == false or x == '' or y == '' then return false end
  if #x ~= #y then return #x > #y end
  return x > y
end
local function store(now, a, gen)
  local body, view, status = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local age, ttl, update = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), ARGV[a + 5]
  local size, max, member, prefix = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), ARGV[a + 8], ARGV[a + 9]
  local old = redis.call('HMGET', KEYS[2], 's', 'u')
  if old[1] == '200' and newer(old[2], update) then return 0 end
  if size > max then return 2 end
  local idx, sizes, total = KEYS[4], KEYS[5], KEYS[6]
  local expired = redis.call('ZRANGEBYSCORE', idx, '-inf', string.format('%.0f', now), 'LIMIT', 0, 64)
  for _, m in ipairs(expired) do
    redis.call('DECRBY', total, tonumber(redis.call('HGET', sizes, m) or '0'))
    redis.call('HDEL', sizes, m)
    redis.call('ZREM', idx, m)
  end
  local mine = tonumber(redis.call('HGET', sizes, member) or '0')
  redis.call('DECRBY', total, mine)
  redis.call('HDEL', sizes, member)
  redis.call('ZREM', idx, member)
  local used = tonumber(redis.call('GET', total) or '0')
  while used + size > max do
    local victim = redis.call('ZPOPMIN', idx)
    if #victim == 0 then break end
    local m = victim[1]
    used = used - tonumber(redis.call('HGET', sizes, m) or '0')
    redis.call('HDEL', sizes, m)
    redis.call('DEL', prefix .. m)
  end
  if used < 0 then used = 0 end
  redis.call('SET', total, string.format('%.0f', used + size))
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'b', body, 'v', view, 's', status, 'f', string.format('%.0f', now - age),
    't', string.format('%.0f', ttl), 'u', update, 'g', gen)
  redis.call('PEXPIRE', KEYS[2], math.max(ttl - age, 1))
  redis.call('ZADD', idx, string.format('%.0f', now - age + ttl), member)
  redis.call('HSET', sizes, member, size)
  return 1
end
";

/// A read's answer, stored if its ticket is still current (see the module doc).
///
/// KEYS: order, entry, write mark, index, sizes, total, lease. ARGV: epoch, ticket gen, is-list,
/// replica, then the entry (see STORE) from 5. Returns 1 stored, 0 superseded, 2 declined.
const FILL_BODY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = redis.call('GET', KEYS[7])
if lease == ARGV[4] then redis.call('DEL', KEYS[7]) end
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local tgen = tonumber(ARGV[2])
if ARGV[3] == '1' then
  if tonumber(redis.call('HGET', KEYS[1], 'lists') or '0') > tgen then return 0 end
else
  local w = redis.call('GET', KEYS[3])
  if w and tonumber(w) > tgen then return 0 end
end
return store(now, 5, ARGV[2])
";

/// A write's outcome: a new generation for the key and the lists, the entry replaced (unless a
/// newer one is stored) or forgotten, and the news published.
///
/// KEYS: order, entry, write mark, index, sizes, total, write log. ARGV: fresh epoch, write
/// memory ms, channel, message prefix (the replica), has-entry, then the entry (see STORE) from 6,
/// then the incident id (16). The message is `<replica> <id> <generation>`; the write log keeps
/// the last [`WRITE_LOG`] writes for replicas that catch up after a break.
const WRITE_BODY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('HGET', KEYS[1], 'epoch') then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'gen', 0, 'lists', 0)
end
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('HSET', KEYS[1], 'lists', gen)
redis.call('SET', KEYS[3], gen, 'PX', ARGV[2])
if ARGV[5] == '1' then
  store(now, 6, tostring(gen))
else
  local member = ARGV[14]
  redis.call('DECRBY', KEYS[6], tonumber(redis.call('HGET', KEYS[5], member) or '0'))
  redis.call('HDEL', KEYS[5], member)
  redis.call('ZREM', KEYS[4], member)
  redis.call('DEL', KEYS[2])
end
redis.call('ZADD', KEYS[7], gen, gen .. ':' .. ARGV[16])
redis.call('ZREMRANGEBYRANK', KEYS[7], 0, -(tonumber(ARGV[17]) + 1))
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. ARGV[16] .. ' ' .. gen)
return gen
";

/// What a replica missed while it was not subscribed: the incidents written after generation
/// ARGV[2] of epoch ARGV[1], if the write log still reaches back that far.
///
/// KEYS: order, write log. ARGV: known epoch, known generation, fresh epoch. Returns {epoch, gen,
/// complete (1) or not (0), id, id, ...}.
const CATCH_UP: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'gen', 0, 'lists', 0)
end
local gen = redis.call('HGET', KEYS[1], 'gen') or '0'
if epoch ~= ARGV[1] then return {epoch, gen, 0} end
local known = tonumber(ARGV[2])
if tonumber(gen) <= known then return {epoch, gen, 1} end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #oldest == 0 or tonumber(oldest[2]) > known + 1 then return {epoch, gen, 0} end
local out = {epoch, gen, 1}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. known, '+inf')) do
  table.insert(out, string.match(m, ':(.*)$'))
end
return out
";

/// How many live replicas (other than ARGV[2]) that listen have not yet applied generation
/// ARGV[1]. KEYS: applied (replica -> generation), members (the heartbeat's set).
const LAGGING: &str = r"
local n = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local r, g = all[i], tonumber(all[i + 1])
  if r ~= ARGV[2] and g < tonumber(ARGV[1]) then
    if redis.call('ZSCORE', KEYS[2], r) then n = n + 1 else redis.call('HDEL', KEYS[1], r) end
  end
end
return n
";

/// How many writes the write log keeps.
const WRITE_LOG: u64 = 10_000;

/// Renews the lease if this replica still holds it. KEYS: lease. ARGV: replica, lease ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Gives the lease back if this replica still holds it. KEYS: lease. ARGV: replica.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A position in the shared order of writes, taken before an upstream call.
#[derive(Debug, Clone)]
pub struct SharedTicket {
    epoch: String,
    generation: u64,
    taken: Instant,
}

/// What a miss found in the shared tier.
pub enum Found {
    /// Another replica's answer, fresh; rebuilt as if just fetched.
    Hit(Entry),
    /// Nobody has the answer: fetch it (holding the lease, when `lease` is set), and offer it
    /// back with the ticket.
    Fetch { ticket: SharedTicket, lease: Option<Lease> },
    /// The shared tier cannot help now (Redis away, or not subscribed): behave as one replica.
    Unavailable,
}

/// What the other replicas must drop from their first tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A write to this incident (and so every list).
    Incident(i64),
    /// Everything: this replica may have missed writes.
    All,
    /// Every write up to this generation has been applied (sent after the writes it covers, so
    /// the applier acknowledges it to the writers once they are applied).
    Heard(u64),
}

/// The shared tier of one replica.
pub struct SharedCache {
    shared: Arc<Shared>,
    upstream: Dialect,
    max_bytes: u64,
    lease: Duration,
    lease_wait: Duration,
    order_key: String,
    index_key: String,
    sizes_key: String,
    total_key: String,
    channel: String,
    lookup: redis::Script,
    fill: redis::Script,
    write: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    write_log_key: String,
    applied_key: String,
    members_key: String,
    /// The tenant whose entries these are (part of every key).
    tenant: String,
    catch_up: redis::Script,
    lagging: redis::Script,
    /// Subscribed to the invalidation channel (only then is the tier used for reads).
    listening: std::sync::atomic::AtomicBool,
    /// The last write this replica heard of (epoch, generation): where a catch-up starts.
    heard: parking_lot::Mutex<Option<(String, u64)>>,
}

/// A key as it appears in Redis (after the tenant's prefix).
fn member(key: &Key) -> String {
    match key {
        Key::Incident(id) => format!("i:{id}"),
        Key::List(q) => format!("l:{q}"),
        Key::GraphList(q) => format!("g:{q}"),
    }
}

fn view_name(view: View) -> &'static str {
    match view {
        View::Defender => "defender",
        View::Graph => "graph",
        View::GraphAlerts => "graph_alerts",
    }
}

fn view_of(name: &[u8]) -> Option<View> {
    match name {
        b"defender" => Some(View::Defender),
        b"graph" => Some(View::Graph),
        b"graph_alerts" => Some(View::GraphAlerts),
        _ => None,
    }
}

/// The view an incident arrives in from `upstream` (the one stored).
fn native_view(upstream: Dialect) -> View {
    match upstream {
        Dialect::Defender => View::Defender,
        Dialect::Graph => View::GraphAlerts,
    }
}

impl SharedCache {
    pub fn new(shared: Arc<Shared>, tenant: &str, config: &SharedConfig, upstream: Dialect) -> Arc<SharedCache> {
        let key = |rest: &str| shared.key(tenant, rest);
        Arc::new(SharedCache {
            order_key: key("cache:order"),
            index_key: key("cache:index"),
            sizes_key: key("cache:sizes"),
            total_key: key("cache:bytes"),
            channel: key("cache:invalidations"),
            upstream,
            max_bytes: config.cache_max_bytes,
            lease: config.lease,
            lease_wait: config.lease_wait,
            lookup: redis::Script::new(LOOKUP),
            fill: redis::Script::new(&format!("{STORE}\n{FILL_BODY}")),
            write: redis::Script::new(&format!("{STORE}\n{WRITE_BODY}")),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            write_log_key: key("cache:writes"),
            applied_key: key("cache:applied"),
            // The process-wide member set: with several tenants it sits in another hash slot, so
            // the shared tier wants a standalone Redis (or Valkey), not a Cluster.
            members_key: shared.members_key(),
            tenant: tenant.to_string(),
            catch_up: redis::Script::new(CATCH_UP),
            lagging: redis::Script::new(LAGGING),
            listening: std::sync::atomic::AtomicBool::new(false),
            heard: parking_lot::Mutex::new(None),
            shared,
        })
    }

    fn entry_key(&self, key: &Key) -> String {
        self.shared.key(&self.tenant, &format!("cache:e:{}", member(key)))
    }

    fn entry_prefix(&self) -> String {
        self.shared.key(&self.tenant, "cache:e:")
    }

    fn write_mark(&self, key: &Key) -> String {
        self.shared.key(&self.tenant, &format!("cache:w:{}", member(key)))
    }

    fn lease_key(&self, key: &Key) -> String {
        self.shared.key(&self.tenant, &format!("cache:lease:{}", member(key)))
    }

    /// Whether reads may use the shared tier now.
    pub fn usable(&self) -> bool {
        self.shared.is_up() && self.listening.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A miss's look into the shared tier: the entry, or the right to fetch it, or (while
    /// another replica fetches it) a wait of at most `shared.lease_wait` for its answer. `ticket_only`
    /// (a forced refresh) skips the lookup and only takes a ticket. `request_id` goes into the
    /// other dialect's envelope of a 404.
    pub async fn find(&self, key: &Key, ticket_only: bool, request_id: &str) -> Found {
        if !self.usable() {
            return Found::Unavailable;
        }
        let started = Instant::now();
        let mut last_ticket = None;
        loop {
            let reply = match self.run_lookup(key, ticket_only).await {
                Ok(r) => r,
                Err(_) => return Found::Unavailable,
            };
            let ticket = SharedTicket {
                epoch: reply.epoch.clone(),
                generation: reply.generation,
                taken: Instant::now(),
            };
            match reply.kind {
                0 => return Found::Fetch { ticket, lease: None },
                1 => {
                    if let Some(entry) = self.rebuild(key, &reply, request_id) {
                        return Found::Hit(entry);
                    }
                    // Unreadable (another version's format): fetch, without a lease.
                    return Found::Fetch { ticket, lease: None };
                }
                2 => {
                    let lease = Lease::start(self, key);
                    return Found::Fetch {
                        ticket,
                        lease: Some(lease),
                    };
                }
                _ => {
                    // The ticket stays the first one taken: an answer fetched after the wait
                    // must still lose to a write made during it.
                    let first = last_ticket.get_or_insert(ticket).clone();
                    if started.elapsed() >= self.lease_wait {
                        return Found::Fetch {
                            ticket: first,
                            lease: None,
                        };
                    }
                    tokio::time::sleep(POLL).await;
                    if !self.usable() {
                        return Found::Unavailable;
                    }
                }
            }
        }
    }

    async fn run_lookup(&self, key: &Key, ticket_only: bool) -> Result<LookupReply, SharedError> {
        let mut inv = self.lookup.prepare_invoke();
        inv.key(&self.order_key)
            .key(self.entry_key(key))
            .key(self.lease_key(key))
            .arg(if ticket_only { "ticket" } else { "read" })
            .arg(if key.is_list() { "1" } else { "0" })
            .arg(self.lease.as_millis() as u64)
            .arg(self.shared.replica())
            .arg(fresh_epoch());
        let values: Vec<Value> = self
            .shared
            .call(false, |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        LookupReply::parse(values).ok_or_else(|| SharedError::Redis("unexpected reply from the lookup script".into()))
    }

    /// The entry a lookup found, as the upstream's answer would have made it.
    fn rebuild(&self, key: &Key, reply: &LookupReply, request_id: &str) -> Option<Entry> {
        let e = reply.entry.as_ref()?;
        let status = StatusCode::from_u16(e.status).ok()?;
        let age = Duration::from_millis(reply.now.saturating_sub(e.fetched));
        let ttl = Duration::from_millis(e.ttl);
        if age >= ttl {
            return None;
        }
        let (bodies, last_update) = match (key, status) {
            (Key::Incident(id), StatusCode::OK) => {
                let incident = render_incident(self.upstream, &e.body).filter(|i| i.id == *id)?;
                (incident.bodies, incident.last_update)
            }
            (Key::Incident(_), StatusCode::NOT_FOUND) => {
                (Arc::new(render_error(self.upstream, status, &e.body, request_id)), None)
            }
            (Key::List(_) | Key::GraphList(_), StatusCode::OK) => {
                (Arc::new(Bodies::one(view_of(&e.view)?, e.body.clone())), None)
            }
            _ => return None,
        };
        let now = Instant::now();
        Some(Entry {
            status,
            bodies,
            content_type: json_content_type(),
            stored_at: now.checked_sub(age).unwrap_or(now),
            ttl,
            last_update,
        })
    }

    /// The body and view stored for `entry` under `key` (`None`: not storable).
    fn stored_body(&self, key: &Key, entry: &Entry) -> Option<(Bytes, View)> {
        match (key, entry.status) {
            (Key::Incident(_), StatusCode::OK) => {
                let view = native_view(self.upstream);
                Some((entry.bodies.get(view)?.clone(), view))
            }
            // A 404 is kept in the upstream's own envelope; the other is made on load.
            (Key::Incident(_), StatusCode::NOT_FOUND) => {
                let view = match self.upstream {
                    Dialect::Defender => View::Defender,
                    Dialect::Graph => View::Graph,
                };
                Some((entry.bodies.get(view)?.clone(), view))
            }
            (Key::List(_), StatusCode::OK) => Some((entry.bodies.get(View::Defender)?.clone(), View::Defender)),
            (Key::GraphList(_), StatusCode::OK) => [View::GraphAlerts, View::Graph]
                .into_iter()
                .find_map(|v| Some((entry.bodies.get(v)?.clone(), v))),
            _ => None,
        }
    }

    /// Appends the entry's arguments (see the STORE script).
    fn entry_args(&self, inv: &mut redis::ScriptInvocation<'_>, key: &Key, entry: &Entry, body: &Bytes, view: View) {
        let age = entry.age(Instant::now());
        inv.arg(body.as_ref())
            .arg(view_name(view))
            .arg(entry.status.as_u16())
            .arg(age.as_millis() as u64)
            .arg(entry.ttl.as_millis().max(1) as u64)
            .arg(entry.last_update.map(|u| u.to_string()).unwrap_or_default())
            .arg(body.len() + 200)
            .arg(self.max_bytes)
            .arg(member(key))
            .arg(self.entry_prefix());
    }

    /// Offers a read's answer to the shared tier (and gives the lease back). `true` if stored.
    pub async fn fill(&self, key: &Key, entry: &Entry, ticket: &SharedTicket) -> bool {
        if ticket.taken.elapsed() >= WRITE_MEMORY {
            return false;
        }
        let Some((body, view)) = self.stored_body(key, entry) else {
            return false;
        };
        if entry.fresh_for(Instant::now()).is_none() {
            return false;
        }
        let mut inv = self.fill.prepare_invoke();
        inv.key(&self.order_key)
            .key(self.entry_key(key))
            .key(self.write_mark(key))
            .key(&self.index_key)
            .key(&self.sizes_key)
            .key(&self.total_key)
            .key(self.lease_key(key))
            .arg(&ticket.epoch)
            .arg(ticket.generation)
            .arg(if key.is_list() { "1" } else { "0" })
            .arg(self.shared.replica());
        self.entry_args(&mut inv, key, entry, &body, view);
        let stored: Result<i64, _> = self
            .shared
            .call(false, |mut c| async move { inv.invoke_async(&mut c).await })
            .await;
        matches!(stored, Ok(1))
    }

    /// A write's outcome (the entry, or `None` to forget it) for every replica: ordered after
    /// every ticket taken before it, lists invalidated, the other replicas told. Bounded by
    /// `shared.timeout`; a failure is logged (the others then keep their first tier until it
    /// expires: written down in the README).
    pub async fn write(&self, key: &Key, entry: Option<&Entry>) {
        let Key::Incident(id) = key else { return };
        let mut inv = self.write.prepare_invoke();
        inv.key(&self.order_key)
            .key(self.entry_key(key))
            .key(self.write_mark(key))
            .key(&self.index_key)
            .key(&self.sizes_key)
            .key(&self.total_key)
            .key(&self.write_log_key)
            .arg(fresh_epoch())
            .arg(WRITE_MEMORY.as_millis() as u64)
            .arg(&self.channel)
            .arg(self.shared.replica());
        match entry.and_then(|e| Some((e, self.stored_body(key, e)?))) {
            Some((e, (body, view))) => {
                inv.arg("1");
                self.entry_args(&mut inv, key, e, &body, view);
            }
            None => {
                // The STORE arguments are not read, but ARGV[14] is the member either way.
                inv.arg("0");
                for _ in 0..8 {
                    inv.arg("");
                }
                inv.arg(member(key)).arg(self.entry_prefix());
            }
        }
        inv.arg(id).arg(WRITE_LOG);
        let written: Result<u64, _> = self
            .shared
            .call(false, |mut c| async move { inv.invoke_async(&mut c).await })
            .await;
        match written {
            Ok(generation) => self.await_applied(*id, generation).await,
            Err(e) => tracing::warn!(
                incident.id = id,
                error = %e,
                "the write could not be shared: other replicas may serve their cached copy until it expires"
            ),
        }
    }

    /// Waits (at most [`ACK_WAIT`] timeouts) until every live replica that listens has applied
    /// the write: only then is its caller answered, so a read through any replica afterwards sees
    /// the new state.
    async fn await_applied(&self, id: i64, generation: u64) {
        let deadline = Instant::now() + self.shared.timeout() * ACK_WAIT;
        loop {
            let mut inv = self.lagging.prepare_invoke();
            inv.key(&self.applied_key)
                .key(&self.members_key)
                .arg(generation)
                .arg(self.shared.replica());
            let lagging: Result<u64, _> = self
                .shared
                .call(false, |mut c| async move { inv.invoke_async(&mut c).await })
                .await;
            match lagging {
                Ok(0) | Err(_) => return,
                Ok(n) if Instant::now() >= deadline => {
                    tracing::warn!(
                        incident.id = id,
                        replicas = n,
                        "some replicas did not confirm a write in time: they may serve their cached copy a moment longer"
                    );
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// Tells the writers that every write up to `generation` is applied here.
    pub async fn acknowledge(&self, generation: u64) {
        let (key, me) = (self.applied_key.clone(), self.shared.replica().to_string());
        let _: Result<(), _> = self
            .shared
            .call(false, |mut c| async move {
                redis::cmd("HSET")
                    .arg(key)
                    .arg(me)
                    .arg(generation)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    /// Subscribes to the other replicas' writes for as long as the task runs, resubscribing after
    /// each break. Every invalidation goes to `tx`. While the subscription is broken the first
    /// tier is kept (it serves through a Redis outage); once subscribed again, the writes missed
    /// meanwhile are read from the write log, or, when it no longer reaches back that far or Redis
    /// restarted, [`Invalidation::All`] starts the first tier over.
    pub fn listen(self: &Arc<Self>, tx: mpsc::UnboundedSender<Invalidation>) -> tokio::task::JoinHandle<()> {
        use futures_util::StreamExt as _;
        let this = self.clone();
        tokio::spawn(async move {
            let me = this.shared.replica().to_string();
            loop {
                this.shared.first_contact().await;
                let subscribed = async {
                    let mut pubsub = this.shared.pubsub().await?;
                    tokio::time::timeout(this.shared.timeout() * 4, pubsub.subscribe(&this.channel))
                        .await
                        .map_err(|_| SharedError::Timeout(this.shared.timeout() * 4))??;
                    Ok::<_, SharedError>(pubsub)
                }
                .await;
                if let Ok(pubsub) = subscribed {
                    // Subscribed first, then caught up: no write falls between the two.
                    if this.catch_up_on(&tx).await.is_ok() {
                        this.listening.store(true, std::sync::atomic::Ordering::Release);
                        tracing::info!("shared cache: listening for other replicas' writes");
                        let mut messages = pubsub.into_on_message();
                        while let Some(msg) = messages.next().await {
                            let Ok(text) = msg.get_payload::<String>() else {
                                continue;
                            };
                            let mut parts = text.split(' ');
                            let (Some(from), Some(Ok(id)), Some(Ok(generation))) = (
                                parts.next(),
                                parts.next().map(str::parse::<i64>),
                                parts.next().map(str::parse::<u64>),
                            ) else {
                                continue;
                            };
                            if let Some((_, g)) = this.heard.lock().as_mut() {
                                *g = (*g).max(generation);
                            }
                            if from != me {
                                let _ = tx.send(Invalidation::Incident(id));
                            }
                            let _ = tx.send(Invalidation::Heard(generation));
                        }
                        this.listening.store(false, std::sync::atomic::Ordering::Release);
                        tracing::warn!(
                            "shared cache: the invalidation channel broke; the shared tier is skipped until it is back"
                        );
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(this.shared.heartbeat()).await;
            }
        })
    }

    /// Applies the writes made since the last one this replica heard of (none the first time).
    async fn catch_up_on(&self, tx: &mpsc::UnboundedSender<Invalidation>) -> Result<(), SharedError> {
        let known = self.heard.lock().clone();
        let (epoch, generation) = known.clone().unwrap_or_default();
        let mut inv = self.catch_up.prepare_invoke();
        inv.key(&self.order_key)
            .key(&self.write_log_key)
            .arg(&epoch)
            .arg(generation)
            .arg(fresh_epoch());
        let reply: Vec<String> = self
            .shared
            .call(false, |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let [now_epoch, now_gen, complete, ids @ ..] = reply.as_slice() else {
            return Err(SharedError::Redis("unexpected reply from the catch-up script".into()));
        };
        let now_gen: u64 = now_gen.parse().unwrap_or(0);
        if known.is_some() {
            if complete == "1" {
                for id in ids.iter().filter_map(|i| i.parse().ok()) {
                    let _ = tx.send(Invalidation::Incident(id));
                }
            } else {
                let _ = tx.send(Invalidation::All);
            }
        }
        *self.heard.lock() = Some((now_epoch.clone(), now_gen));
        // Registers this replica with the writers (they wait for it from now on).
        let _ = tx.send(Invalidation::Heard(now_gen));
        Ok(())
    }
}

/// The right to fetch a key for every replica, renewed while held; given back when dropped.
pub struct Lease {
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn start(cache: &SharedCache, key: &Key) -> Lease {
        let (shared, script) = (cache.shared.clone(), cache.renew.clone());
        let release = cache.release.clone();
        let (lease_key, ms) = (cache.lease_key(key), cache.lease.as_millis() as u64);
        let every = cache.lease / 3;
        let renewer = tokio::spawn(async move {
            let _give_back = GiveBack {
                shared: shared.clone(),
                script: release,
                key: lease_key.clone(),
            };
            loop {
                tokio::time::sleep(every).await;
                let (k, me) = (lease_key.clone(), shared.replica().to_string());
                let script = &script;
                let renewed: Result<i64, _> = shared
                    .call(false, |mut c| async move {
                        script.key(k).arg(me).arg(ms).invoke_async(&mut c).await
                    })
                    .await;
                if !matches!(renewed, Ok(1)) {
                    return;
                }
            }
        });
        Lease { renewer }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Aborting drops the task's `GiveBack`, which releases the lease.
        self.renewer.abort();
    }
}

/// Deletes the lease (if still ours) when the renewing task ends.
struct GiveBack {
    shared: Arc<Shared>,
    script: redis::Script,
    key: String,
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        let (shared, script, key) = (self.shared.clone(), self.script.clone(), std::mem::take(&mut self.key));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let me = shared.replica().to_string();
                let script = &script;
                let _ = shared
                    .call(false, |mut c| async move {
                        script.key(key).arg(me).invoke_async::<i64>(&mut c).await
                    })
                    .await;
            });
        }
    }
}

struct StoredEntry {
    body: Bytes,
    view: Vec<u8>,
    status: u16,
    fetched: u64,
    ttl: u64,
}

struct LookupReply {
    kind: i64,
    epoch: String,
    generation: u64,
    now: u64,
    entry: Option<StoredEntry>,
}

fn text(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    std::str::from_utf8(&text(v)?).ok()?.parse().ok()
}

impl LookupReply {
    fn parse(values: Vec<Value>) -> Option<LookupReply> {
        let kind = match values.first()? {
            Value::Int(i) => *i,
            other => number(other)? as i64,
        };
        let entry = if kind == 1 {
            Some(StoredEntry {
                body: Bytes::from(text(values.get(4)?)?),
                view: text(values.get(5)?)?,
                status: number(values.get(6)?)? as u16,
                fetched: number(values.get(7)?)?,
                ttl: number(values.get(8)?)?,
            })
        } else {
            None
        };
        Some(LookupReply {
            kind,
            epoch: String::from_utf8(text(values.get(1)?)?).ok()?,
            generation: number(values.get(2)?)?,
            now: number(values.get(3)?)?,
            entry,
        })
    }
}

/// A new random epoch for the order of writes.
fn fresh_epoch() -> String {
    format!("{:016x}", rand::random::<u64>() | 1)
}
