//! The replicas' common ground: one Redis connection per replica, its health, and the membership
//! heartbeat.
//!
//! Every call is bounded by `shared.timeout`; a call that fails or times out marks Redis down (a
//! warning, `defender_proxy_shared_degraded` = 1, `/readyz` detail), and nothing on the request
//! path tries Redis again until the next heartbeat finds it answering. So a paused or vanished
//! Redis costs one timeout, not one per request. Users of the connection (the shared budget)
//! register a [`Tick`] that runs after each heartbeat, to reconcile when Redis returns.
//!
//! After Redis comes back (or is found restarted empty), the state is *unsettled* for two
//! heartbeats and two timeouts: long enough for every live replica's heartbeat to have found it
//! again and written back what it did meanwhile. Users that need the whole picture (the budget)
//! stay within their local share until then.
//!
//! Keys all start with `{<prefix>:<tenant>}` (a hash tag: one tenant's keys share a Redis Cluster
//! slot, so a script may touch them together). Nothing secret is ever written: no token, no key,
//! no response body of the credentials. The URL (which may carry a password) is never logged.

pub mod lease;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::time::Instant;

use crate::{config::SharedConfig, Metrics};

/// The hash-tag slot of what belongs to the process rather than to a tenant (the member set).
/// It is the implicit tenant's name, so a single-tenant deployment keeps every key in one slot.
const PROCESS_SLOT: &str = "default";

/// Why a shared call gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedError {
    /// Not connected yet, or marked down since the last failure.
    #[error("redis is unavailable")]
    Down,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The command failed (connection refused or broken, script error, ...).
    #[error("redis error: {0}")]
    Redis(String),
    /// The configuration could not be turned into a client (bad URL, unreadable file).
    #[error("shared.redis_url: {0}")]
    Config(String),
}

impl SharedError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SharedError::Down => "down",
            SharedError::Timeout(_) => "timeout",
            SharedError::Redis(_) => "error",
            SharedError::Config(_) => "config",
        }
    }
}

impl From<redis::RedisError> for SharedError {
    fn from(e: redis::RedisError) -> Self {
        // redis-rs errors name the failing operation and the OS error, never the URL's password.
        SharedError::Redis(e.to_string())
    }
}

/// Work that runs after every heartbeat (reconciliation with Redis).
pub trait Tick: Send + Sync + 'static {
    fn tick(&self) -> BoxFuture<'_, ()>;
}

/// One replica's connection to the shared state.
pub struct Shared {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    heartbeat: Duration,
    configured_replicas: u32,
    learnt_replicas: AtomicU32,
    /// This replica's name in Redis (random per process: a restart is a new member).
    replica: String,
    prefix: String,
    up: AtomicBool,
    /// A heartbeat failed too: Redis is away, not just slow for one call. Only then does the
    /// budget fall back to its local share; after one failed call it sends nothing until the
    /// next heartbeat says which it is (a blip on one replica must not add a share on top of
    /// what the others spend through Redis).
    confirmed_down: AtomicBool,
    /// Set once the first heartbeat has finished (reached Redis or not).
    first_beat: tokio::sync::watch::Sender<bool>,
    /// Whether Redis was ever reached by this process.
    ever_up: AtomicBool,
    started: Instant,
    /// Until when reconciliation may still be going on (see the module doc).
    unsettled_until: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    membership: redis::Script,
    /// What runs after each heartbeat (every tenant's shared budget); a tenant removed by a
    /// reload drops its tick, which is then skipped and forgotten.
    ticks: Mutex<Vec<std::sync::Weak<dyn Tick>>>,
}

/// What `/readyz` shows about the shared state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedStatus {
    pub redis: &'static str,
    pub replica: String,
    pub replicas: Option<u32>,
    pub replicas_source: &'static str,
    pub settled: bool,
    pub last_error: Option<String>,
}

/// Keeps this replica's entry in the member set fresh and counts the members whose entry is
/// younger than three heartbeats (server clock, milliseconds).
const MEMBERSHIP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - ttl))
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
";

impl Shared {
    /// Makes the client (no I/O: connecting happens in the background, so a replica starts
    /// even while Redis is away).
    pub fn new(config: &SharedConfig, metrics: Arc<Metrics>) -> Result<Arc<Shared>, SharedError> {
        let url: SecretString = match (&config.redis_url, &config.redis_url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| SecretString::from(s.trim().to_string()))
                .map_err(|e| SharedError::Config(format!("cannot read {}: {e}", path.display())))?,
            (None, None) => return Err(SharedError::Config("not set".into())),
        };
        let client = redis::Client::open(url.expose_secret())
            .map_err(|_| SharedError::Config("not a valid Redis URL".into()))?;
        let replica = format!("{:016x}", rand::random::<u64>());
        Ok(Arc::new(Shared {
            client,
            conn: Mutex::new(None),
            timeout: config.timeout,
            heartbeat: config.heartbeat,
            configured_replicas: config.replicas,
            learnt_replicas: AtomicU32::new(0),
            replica,
            prefix: config.key_prefix.clone(),
            up: AtomicBool::new(false),
            confirmed_down: AtomicBool::new(false),
            first_beat: tokio::sync::watch::channel(false).0,
            ever_up: AtomicBool::new(false),
            started: Instant::now(),
            unsettled_until: Mutex::new(None),
            last_error: Mutex::new(None),
            metrics,
            membership: redis::Script::new(MEMBERSHIP),
            ticks: Mutex::new(Vec::new()),
        }))
    }

    /// A key of `tenant`: `{prefix:tenant}:rest`.
    pub fn key(&self, tenant: &str, rest: &str) -> String {
        format!("{{{}:{}}}:{}", self.prefix, tenant, rest)
    }

    /// The set of live replicas (the heartbeat keeps this replica's entry fresh).
    pub fn members_key(&self) -> String {
        self.key(PROCESS_SLOT, "members")
    }

    /// A dedicated pub/sub connection (a subscribed connection can do nothing else), made within
    /// a few timeouts.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, SharedError> {
        match tokio::time::timeout(self.timeout * 4, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(SharedError::from(e)),
            Err(_) => Err(SharedError::Timeout(self.timeout * 4)),
        }
    }

    /// This replica's member name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Whether the request path may use Redis now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Waits (at most a few timeouts) until the first heartbeat has tried Redis, so the first
    /// calls after a start do not take Redis for unreachable merely because nobody asked yet.
    pub async fn first_contact(&self) {
        let mut rx = self.first_beat.subscribe();
        let _ = tokio::time::timeout(self.timeout * 6, rx.wait_for(|done| *done)).await;
    }

    /// Whether this process ever reached Redis, and when it started: a replica that never did
    /// knows nothing of the sends its previous incarnation made.
    pub fn ever_up(&self) -> (bool, Instant) {
        (self.ever_up.load(Ordering::Acquire), self.started)
    }

    /// Whether a heartbeat, not only a request, found Redis unreachable.
    pub fn confirmed_down(&self) -> bool {
        !self.is_up() && self.confirmed_down.load(Ordering::Acquire)
    }

    /// Whether every live replica has had time to write back what it did while Redis was away.
    pub fn settled(&self, now: Instant) -> bool {
        self.is_up() && self.unsettled_until.lock().map_or(true, |t| now >= t)
    }

    /// Starts a new reconciliation period (Redis came back, or was found restarted empty).
    pub fn unsettle(&self) {
        let until = Instant::now() + 2 * (self.heartbeat + self.timeout);
        let mut u = self.unsettled_until.lock();
        *u = Some(u.map_or(until, |t| t.max(until)));
    }

    /// How many replicas share the quota: configured, else learnt from the heartbeats.
    pub fn replicas(&self) -> Option<u32> {
        if self.configured_replicas > 0 {
            return Some(self.configured_replicas);
        }
        Some(self.learnt_replicas.load(Ordering::Acquire)).filter(|&n| n > 0)
    }

    /// A connection handle, if one was made (cheap clone of a multiplexed connection).
    fn connection(&self) -> Option<ConnectionManager> {
        self.conn.lock().clone()
    }

    /// Runs `op` on the connection within `shared.timeout`. A failure marks Redis down. With
    /// `probe` it runs even while Redis is marked down (the heartbeat's check).
    pub async fn call<T, F, Fut>(&self, probe: bool, op: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !probe && !self.is_up() {
            return Err(SharedError::Down);
        }
        let Some(conn) = self.connection() else {
            return Err(SharedError::Down);
        };
        let result = match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SharedError::from(e)),
            Err(_) => Err(SharedError::Timeout(self.timeout)),
        };
        if let Err(e) = &result {
            if probe {
                self.confirmed_down.store(true, Ordering::Release);
            }
            self.mark_down(e);
        }
        result
    }

    fn mark_down(&self, e: &SharedError) {
        self.metrics
            .shared_errors
            .get_or_create(&crate::metrics::ResultLabels { result: e.label() })
            .inc();
        *self.last_error.lock() = Some(e.to_string());
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.shared_degraded.set(1);
            tracing::warn!(
                error = %e,
                replicas = ?self.replicas(),
                "redis unreachable: each replica now spends at most its share of every quota"
            );
        }
    }

    fn mark_up(&self) {
        self.ever_up.store(true, Ordering::Release);
        self.confirmed_down.store(false, Ordering::Release);
        if !self.up.swap(true, Ordering::AcqRel) {
            self.unsettle();
            self.metrics.shared_degraded.set(0);
            *self.last_error.lock() = None;
            tracing::info!("redis reachable: quotas are shared again once every replica has reconciled");
        }
    }

    /// One heartbeat: connect if needed, announce this replica, learn the member count, and mark
    /// Redis up if it answered.
    pub async fn beat(&self) {
        self.try_beat().await;
        self.first_beat.send_replace(true);
    }

    async fn try_beat(&self) {
        if self.connection().is_none() {
            let made = tokio::time::timeout(
                self.timeout * 4,
                ConnectionManager::new_with_config(
                    self.client.clone(),
                    redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(self.timeout)
                        // Our own bound (`call`) fires first; this one only reaps the connection.
                        .set_response_timeout(self.timeout * 2)
                        .set_number_of_retries(1),
                ),
            )
            .await;
            match made {
                Ok(Ok(conn)) => *self.conn.lock() = Some(conn),
                Ok(Err(e)) => {
                    self.confirmed_down.store(true, Ordering::Release);
                    return self.mark_down(&SharedError::from(e));
                }
                Err(_) => {
                    self.confirmed_down.store(true, Ordering::Release);
                    return self.mark_down(&SharedError::Timeout(self.timeout * 4));
                }
            }
        }
        let key = self.members_key();
        let ttl_ms = (self.heartbeat * 3).as_millis() as u64;
        let script = &self.membership;
        let replica = self.replica.clone();
        let counted: Result<u32, _> = self
            .call(true, |mut c| async move {
                script.key(key).arg(replica).arg(ttl_ms).invoke_async(&mut c).await
            })
            .await;
        if let Ok(n) = counted {
            self.learnt_replicas.store(n, Ordering::Release);
            self.mark_up();
        }
    }

    /// Beats every `shared.heartbeat`, each beat followed by every tick, until the task is
    /// aborted. The first beat (connecting) happens at once.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(this.heartbeat);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                this.beat().await;
                let ticks: Vec<Arc<dyn Tick>> = {
                    let mut all = this.ticks.lock();
                    all.retain(|t| t.strong_count() > 0);
                    all.iter().filter_map(std::sync::Weak::upgrade).collect()
                };
                for t in &ticks {
                    t.tick().await;
                }
            }
        })
    }

    /// Runs `tick` after every heartbeat for as long as it lives.
    pub fn on_heartbeat(&self, tick: &Arc<dyn Tick>) {
        self.ticks.lock().push(Arc::downgrade(tick));
    }

    pub fn status(&self) -> SharedStatus {
        SharedStatus {
            redis: if self.is_up() { "ok" } else { "unreachable" },
            replica: self.replica.clone(),
            replicas: self.replicas(),
            replicas_source: if self.configured_replicas > 0 {
                "configured"
            } else {
                "heartbeat"
            },
            settled: self.settled(Instant::now()),
            last_error: self.last_error.lock().clone(),
        }
    }
}
