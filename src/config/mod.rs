//! Typed configuration: defaults in code (mirrored by `config/default.toml`), then an optional
//! TOML file, then `DPX_SECTION__KEY` environment variables, each layer overriding the last.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a typo in a quota must stop the start, not be
//! silently ignored while the proxy spends the default. [`Config::validate`] checks what serde
//! cannot and names the offending key. Secrets are `secrecy` types: they never print, and
//! `config check` shows them as `[redacted]`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};

pub use crate::dialect::Dialect;

mod tenants;

pub use tenants::{valid_tenant_name, TenantConfig, TenantOverrides, TokenOverrides, DEFAULT_TENANT};

/// The Defender API's public endpoint (also its token resource).
pub const DEFENDER_BASE_URL: &str = "https://api.security.microsoft.com";
/// Microsoft Graph's public endpoint (also its token resource).
pub const GRAPH_BASE_URL: &str = "https://graph.microsoft.com";

/// The proxy's whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub token: TokenConfig,
    pub auth: AuthConfig,
    pub cache: CacheConfig,
    pub budget: BudgetConfig,
    pub sync: SyncConfig,
    pub shared: SharedConfig,
    pub telemetry: TelemetryConfig,
    /// Pools of quotas shared by every tenant (Graph's ceiling per app across tenants): a
    /// tenant's route draws from one with `budget.routes.<route>.pools = ["<name>"]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub app_pools: BTreeMap<String, PoolConfig>,
    /// `[tenants.<name>]`: the tenants served, each inheriting the top-level sections it does
    /// not set (the `tenants` submodule says how). None: one tenant, `default`, made of the top-level sections.
    #[serde(skip_serializing)]
    pub tenants: BTreeMap<String, TenantOverrides>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_concurrency: usize,
    /// How long a request that needs work (not a fresh cache hit) waits for one of the
    /// `max_concurrency` places before it gets 503 with `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub max_concurrency_wait: Duration,
    /// A request body (PATCH) must arrive within this time, else 408 and no quota is spent.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// The proxy's base URL as callers reach it (`https://defender-proxy.example`), for the
    /// Graph facade's `@odata.nextLink`; unset: `http://` and the request's `Host`.
    pub public_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            max_concurrency: 1024,
            max_concurrency_wait: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(20),
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Which API the upstream speaks: `defender` (api.security.microsoft.com/api/incidents) or
    /// `graph` (graph.microsoft.com/v1.0/security/incidents). Callers of either facade are
    /// served either way.
    pub api: Dialect,
    /// Left at the Defender default with `api = "graph"`, it becomes Graph's public endpoint.
    pub base_url: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            api: Dialect::Defender,
            base_url: DEFENDER_BASE_URL.into(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenMode {
    ClientCredentials,
    Static,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    pub mode: TokenMode,
    pub authority: String,
    pub tenant_id: String,
    pub client_id: String,
    #[serde(serialize_with = "redact")]
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    pub client_certificate_key_file: Option<PathBuf>,
    pub client_certificate_thumbprint: Option<String>,
    pub resource: String,
    #[serde(with = "humantime_serde")]
    pub refresh_before: Duration,
    /// How long a caller waits for a token request in flight before getting 503.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    #[serde(serialize_with = "redact")]
    pub static_token: Option<SecretString>,
    pub static_token_file: Option<PathBuf>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            mode: TokenMode::ClientCredentials,
            authority: "https://login.microsoftonline.com".into(),
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            client_certificate_key_file: None,
            client_certificate_thumbprint: None,
            resource: DEFENDER_BASE_URL.into(),
            refresh_before: Duration::from_secs(300),
            wait: Duration::from_millis(1500),
            static_token: None,
            static_token_file: None,
        }
    }
}

/// How urgent a call is: batch calls queue behind interactive ones and leave the reserve alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Interactive,
    Batch,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    Read,
    Write,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub allow_anonymous: bool,
    pub consumers: BTreeMap<String, ConsumerConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// `sha256:<64 hex digits>` of each accepted key.
    pub key_hashes: Vec<String>,
    pub rights: Vec<Right>,
    /// Share of the quota against other consumers with a backlog (weighted fair queuing).
    pub weight: u32,
    /// `interactive` (default) or `batch`: batch calls queue behind interactive ones and never
    /// take the `budget.reserve` slots.
    pub priority: Priority,
    /// Ceiling on this consumer's requests per second to the proxy itself, hits included.
    pub rate_per_second: Option<f64>,
    /// Requests it may send at once above that rate (default: one second's worth).
    pub rate_burst: Option<u32>,
    /// The tenants this consumer may reach (`["*"]`: every tenant); required with `[tenants]`,
    /// and without them empty means the one tenant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Rights for one tenant instead of `rights` (`tenant_rights.contoso = ["read"]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_rights: BTreeMap<String, Vec<Right>>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            key_hashes: Vec::new(),
            rights: Vec::new(),
            weight: 1,
            priority: Priority::Interactive,
            rate_per_second: None,
            rate_burst: None,
            tenants: Vec::new(),
            tenant_rights: BTreeMap::new(),
        }
    }
}

/// The SHA-256 of a consumer's key, configured as `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn parse(s: &str) -> Option<KeyHash> {
        let hex = s.trim().strip_prefix("sha256:")?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).ok()?;
        Some(KeyHash(out))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    #[serde(with = "humantime_serde")]
    pub list_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 256 * 1024 * 1024,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(600),
            list_ttl: Duration::from_secs(15),
        }
    }
}

/// One quota: at most `limit` calls in any sliding window of length `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub limit: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteQuotas {
    /// The route's own pool of quotas (the default: one pool per route)...
    pub quotas: Vec<QuotaConfig>,
    /// ...or the name of a shared pool in `budget.pools` it draws from instead (then its own
    /// quotas, the defaults included, are not used).
    pub pool: Option<String>,
    /// Further `budget.pools` this route draws from on every call, besides the pool above (its
    /// own or `pool`): a call is sent only when every one of them has room, and is counted in
    /// all of them in the same step (the Defender overview's limit for the API as a whole,
    /// beside each method's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
}

/// A named pool of quotas that several routes can draw from (`budget.routes.<route>.pool`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub quotas: Vec<QuotaConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub max_wait_cap: Duration,
    pub max_queue: usize,
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
    #[serde(with = "humantime_serde")]
    pub default_backoff: Duration,
    /// Most callers of one consumer that may wait per route.
    pub max_queue_per_consumer: usize,
    /// Slots of every window of the read routes that batch callers may not take.
    pub reserve: u32,
    /// Weighted fair queuing between consumers (off: one queue, first come first served).
    pub fair_queuing: bool,
    pub routes: BTreeMap<String, RouteQuotas>,
    /// Shared pools, by name (none by default: each route has its own).
    pub pools: BTreeMap<String, PoolConfig>,
}

impl BudgetConfig {
    /// The quotas a route draws from: its shared pool's, or its own. Validation ensures both
    /// exist.
    pub fn quotas_of(&self, route: &str) -> &[QuotaConfig] {
        match self.routes.get(route) {
            Some(RouteQuotas { pool: Some(p), .. }) => self.pools.get(p).map_or(&[], |p| &p.quotas),
            Some(r) => &r.quotas,
            None => &[],
        }
    }

    /// The name of the pool a route draws from: its shared pool, or its own (the route's name).
    pub fn pool_of<'a>(&'a self, route: &'a str) -> &'a str {
        self.routes.get(route).and_then(|r| r.pool.as_deref()).unwrap_or(route)
    }
}

/// The upstream routes the proxy knows, by the names used in `budget.routes` and in metrics.
pub use crate::route::ROUTE_NAMES;

/// A route's default quotas, from the route table.
fn default_quotas(spec: &crate::route::RouteSpec) -> RouteQuotas {
    RouteQuotas {
        quotas: spec
            .quotas
            .iter()
            .map(|&(limit, secs)| QuotaConfig {
                limit,
                window: Duration::from_secs(secs),
            })
            .collect(),
        pool: None,
        pools: Vec::new(),
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            max_wait: Duration::from_secs(30),
            max_wait_cap: Duration::from_secs(120),
            max_queue: 1000,
            safety_margin: Duration::from_millis(500),
            default_backoff: Duration::from_secs(10),
            max_queue_per_consumer: 250,
            reserve: 0,
            fair_queuing: true,
            routes: crate::route::ROUTES
                .iter()
                .map(|r| (r.name.to_string(), default_quotas(r)))
                .collect(),
            pools: BTreeMap::new(),
        }
    }
}

/// The incident sync: follows the List API's changes so cached incidents stay current.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
    pub max_share: f64,
    #[serde(with = "humantime_serde")]
    pub max_entry_age: Duration,
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            enabled: false,
            interval: Duration::from_secs(15),
            min_interval: Duration::from_secs(5),
            lookback: Duration::from_secs(24 * 3600),
            overlap: Duration::from_secs(10),
            max_share: 0.25,
            max_entry_age: Duration::from_secs(24 * 3600),
            max_lag: Duration::from_secs(45),
        }
    }
}

/// State shared by several replicas through Redis (or Valkey): off unless `redis_url` (or
/// `redis_url_file`) is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedConfig {
    /// `redis://[:password@]host:port/db` (or `rediss://` for TLS); a secret, as it may carry a
    /// password.
    #[serde(serialize_with = "redact")]
    pub redis_url: Option<SecretString>,
    /// A file holding the URL (a mounted Kubernetes Secret), read at start.
    pub redis_url_file: Option<PathBuf>,
    /// How many replicas share the quota: while Redis is unreachable each one spends at most
    /// `quota / replicas`. 0: learn it from the replicas' heartbeats in Redis.
    pub replicas: u32,
    /// Bound on every Redis call; past it Redis counts as unreachable for the moment.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often each replica announces itself and checks on Redis.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Prefix of every key (the tenant and a hash tag follow it).
    pub key_prefix: String,
    /// Redis as the second cache tier behind each replica's in-memory one, shared by every
    /// replica, with misses collapsed across replicas (see `shared::cache`).
    pub cache: bool,
    /// Bytes of cached bodies the shared tier holds at most (earliest-expiring evicted first).
    pub cache_max_bytes: u64,
    /// How long a replica's claim to fetch a missing entry for every replica lasts without being
    /// renewed (the holder renews it while it works; a dead holder's claim ends after this).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long a replica waits for another replica's fetch before fetching itself.
    #[serde(with = "humantime_serde")]
    pub lease_wait: Duration,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            redis_url: None,
            redis_url_file: None,
            replicas: 0,
            timeout: Duration::from_millis(150),
            heartbeat: Duration::from_secs(1),
            key_prefix: "dp".into(),
            cache: false,
            cache_max_bytes: 256 * 1024 * 1024,
            lease: Duration::from_secs(2),
            lease_wait: Duration::from_secs(10),
        }
    }
}

impl SharedConfig {
    /// Whether replicas share state through Redis.
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some() || self.redis_url_file.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_level: String,
    /// One JSON line per API request on stdout (the fast path of [`crate::access_log`]).
    pub access_log: bool,
    /// Share of successful requests that get a line (errors always do): 0.0 to 1.0.
    pub access_log_sample: f64,
    /// Bytes of lines waiting for the writer thread at most; beyond that lines are dropped and
    /// counted, never waited for.
    pub access_log_buffer: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Json,
            log_level: "info".into(),
            access_log: true,
            access_log_sample: 1.0,
            access_log_buffer: 1024 * 1024,
        }
    }
}

/// Why a configuration was refused; the message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("configuration error at `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn check_quotas(key: &str, quotas: &[QuotaConfig]) -> Result<(), ConfigError> {
    if quotas.is_empty() {
        return Err(invalid(key, "needs at least one quota"));
    }
    for (i, q) in quotas.iter().enumerate() {
        if q.limit == 0 || q.window.is_zero() {
            return Err(invalid(
                format!("{key}[{i}]"),
                "limit and window must be greater than zero",
            ));
        }
    }
    Ok(())
}

/// A tenant's token settings; `p` is where its keys live.
fn validate_token(p: &str, token: &TokenConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("{p}{k}");
    if token.mode == TokenMode::ClientCredentials {
        for (k, v) in [
            ("token.tenant_id", &token.tenant_id),
            ("token.client_id", &token.client_id),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(key(k), "required when token.mode = \"client_credentials\""));
            }
        }
        reqwest::Url::parse(&token.authority).map_err(|e| invalid(key("token.authority"), e.to_string()))?;
        let has_secret = token.client_secret.is_some() || token.client_secret_file.is_some();
        let has_cert = token.client_certificate_key_file.is_some();
        if !has_secret && !has_cert {
            return Err(invalid(
                key("token.client_secret"),
                format!(
                    "set {p}token.client_secret (DPX_{}TOKEN__CLIENT_SECRET), {p}token.client_secret_file, or a client certificate",
                    p.replace('.', "__").to_uppercase()
                ),
            ));
        }
        if has_cert && token.client_certificate_thumbprint.as_deref().unwrap_or("").is_empty() {
            return Err(invalid(
                key("token.client_certificate_thumbprint"),
                "required with token.client_certificate_key_file",
            ));
        }
    } else if token.static_token.is_none() && token.static_token_file.is_none() {
        return Err(invalid(
            key("token.static_token"),
            "required when token.mode = \"static\"",
        ));
    }
    Ok(())
}

/// A tenant's sync settings (checked only when the sync is on); `p` is where its keys live.
fn validate_sync(p: &str, sync: &SyncConfig, upstream: &UpstreamConfig) -> Result<(), ConfigError> {
    if !sync.enabled {
        return Ok(());
    }
    let key = |k: &str| format!("{p}{k}");
    if !(sync.max_share > 0.0 && sync.max_share <= 1.0) {
        return Err(invalid(key("sync.max_share"), "must be greater than 0 and at most 1"));
    }
    for (k, d) in [
        ("sync.interval", sync.interval),
        ("sync.min_interval", sync.min_interval),
        ("sync.lookback", sync.lookback),
        ("sync.max_lag", sync.max_lag),
    ] {
        if d.is_zero() {
            return Err(invalid(key(k), "must be greater than zero"));
        }
    }
    if sync.min_interval > sync.interval {
        return Err(invalid(key("sync.min_interval"), "must not exceed sync.interval"));
    }
    if sync.overlap < upstream.timeout {
        // A change that lands while a page is in flight (up to the timeout) must still be
        // listed by the next pass, which starts `overlap` before this one's first answer.
        return Err(invalid(
            key("sync.overlap"),
            format!(
                "must be at least upstream.timeout ({})",
                humantime::format_duration(upstream.timeout)
            ),
        ));
    }
    if sync.max_lag < sync.interval {
        return Err(invalid(key("sync.max_lag"), "must be at least sync.interval"));
    }
    Ok(())
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

fn redact<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the `DPX_` environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        Self::figment(file, Env::prefixed("DPX_").split("__"))
    }

    /// Like [`Config::load`] without [`Config::validate`]: for the demo, which fills in the
    /// upstream and credentials itself and validates afterwards.
    pub fn load_unvalidated(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        Self::extract(file, Env::prefixed("DPX_").split("__"))
    }

    /// Same as [`Config::load`] but with the environment given explicitly (tests).
    pub fn figment(file: Option<&std::path::Path>, env: Env) -> Result<Config, ConfigError> {
        let config = Self::extract(file, env)?;
        config.validate()?;
        Ok(config)
    }

    fn extract(file: Option<&std::path::Path>, env: Env) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid("--config", format!("file {} does not exist", path.display())));
            }
            fig = fig.merge(Toml::file(path));
        }
        let mut config: Config = fig.merge(env).extract().map_err(Box::new)?;
        config.resolve_api_defaults();
        Ok(config)
    }

    /// Parses a TOML document on top of the defaults (tests, `config check` of a string).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.resolve_api_defaults();
        config.validate()?;
        Ok(config)
    }

    /// The base URL and token resource still at one API's public default follow `upstream.api`
    /// (with "graph", Graph's; a sovereign cloud sets both explicitly), as each tenant's do.
    pub fn resolve_api_defaults(&mut self) {
        tenants::resolve_api_defaults(&mut self.upstream, &mut self.token);
    }

    /// Checks that serde cannot express; every message names the key (a tenant's keys as
    /// `tenants.<name>.<section>.<key>`, its effective value checked whether it set or inherited
    /// it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(public) = &self.server.public_url {
            let ok = reqwest::Url::parse(public).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            if !ok {
                return Err(invalid(
                    "server.public_url",
                    "must be an http(s) URL with a host and no query or fragment",
                ));
            }
        }
        for (key, d) in [
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("server.body_read_timeout", self.server.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if self.server.max_concurrency == 0 {
            return Err(invalid("server.max_concurrency", "must be at least 1"));
        }
        for (name, pool) in &self.app_pools {
            check_quotas(&format!("app_pools.{name}.quotas"), &pool.quotas)?;
            if ROUTE_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    format!("app_pools.{name}"),
                    "a shared pool may not have a route's name (that is the route's own pool)",
                ));
            }
        }
        let tenants = self.tenant_configs()?;
        for (name, tenant) in &tenants {
            self.validate_tenant(&self.tenant_key_prefix(name), tenant)?;
        }
        self.validate_consumers(&tenants)?;
        self.validate_shared()?;
        if !(0.0..=1.0).contains(&self.telemetry.access_log_sample) {
            return Err(invalid("telemetry.access_log_sample", "must be between 0.0 and 1.0"));
        }
        if self.telemetry.access_log_buffer < 4096 {
            return Err(invalid("telemetry.access_log_buffer", "must be at least 4096 bytes"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level).is_err() {
            return Err(invalid("telemetry.log_level", "not a valid tracing filter"));
        }
        Ok(())
    }

    /// One tenant's effective sections; `p` is where its keys live (`tenants.<name>.` or empty).
    fn validate_tenant(&self, p: &str, t: &TenantConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{p}{k}");
        let url =
            reqwest::Url::parse(&t.upstream.base_url).map_err(|e| invalid(key("upstream.base_url"), e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(key("upstream.base_url"), "must be an http(s) URL with a host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(key("upstream.base_url"), "must not have a query or fragment"));
        }
        for (k, d) in [
            ("upstream.connect_timeout", t.upstream.connect_timeout),
            ("upstream.timeout", t.upstream.timeout),
            ("budget.default_backoff", t.budget.default_backoff),
        ] {
            if d.is_zero() {
                return Err(invalid(key(k), "must be greater than zero"));
            }
        }
        self.validate_budget(p, &t.budget)?;
        if t.cache.max_bytes < 1024 * 1024 {
            return Err(invalid(key("cache.max_bytes"), "must be at least 1 MiB"));
        }
        validate_token(p, &t.token)?;
        validate_sync(p, &t.sync, &t.upstream)
    }

    fn validate_budget(&self, p: &str, budget: &BudgetConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{p}{k}");
        for route in ["get_incident", "list_incidents"] {
            let smallest = budget
                .quotas_of(route)
                .iter()
                .map(|q| q.limit)
                .min()
                .unwrap_or(u32::MAX);
            if budget.reserve >= smallest {
                return Err(invalid(
                    key("budget.reserve"),
                    format!("must be below the smallest quota of budget.routes.{route} ({smallest})"),
                ));
            }
        }
        if budget.max_queue_per_consumer == 0 {
            return Err(invalid(key("budget.max_queue_per_consumer"), "must be at least 1"));
        }
        if budget.max_queue == 0 {
            return Err(invalid(key("budget.max_queue"), "must be at least 1"));
        }
        if budget.max_wait > budget.max_wait_cap {
            return Err(invalid(key("budget.max_wait"), "must not exceed budget.max_wait_cap"));
        }
        for name in budget.routes.keys() {
            if !ROUTE_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    key(&format!("budget.routes.{name}")),
                    format!("unknown route; known routes are {}", ROUTE_NAMES.join(", ")),
                ));
            }
        }
        for name in ROUTE_NAMES {
            let Some(route) = budget.routes.get(name) else {
                return Err(invalid(key(&format!("budget.routes.{name}")), "missing"));
            };
            // A shared pool, when named, replaces the route's own quotas (the defaults included).
            if let Some(pool) = &route.pool {
                if !budget.pools.contains_key(pool) {
                    return Err(invalid(
                        key(&format!("budget.routes.{name}.pool")),
                        format!("no pool named '{pool}' in budget.pools"),
                    ));
                }
                continue;
            }
            check_quotas(&key(&format!("budget.routes.{name}.quotas")), &route.quotas)?;
        }
        for (name, route) in &budget.routes {
            for (i, extra) in route.pools.iter().enumerate() {
                let k = key(&format!("budget.routes.{name}.pools[{i}]"));
                let tenant_pool = budget.pools.contains_key(extra);
                if !tenant_pool && !self.app_pools.contains_key(extra) {
                    return Err(invalid(
                        k,
                        format!("no pool named '{extra}' in budget.pools or app_pools"),
                    ));
                }
                if tenant_pool && self.app_pools.contains_key(extra) {
                    return Err(invalid(
                        k,
                        format!("'{extra}' names both a budget.pools and an app_pools entry: rename one"),
                    ));
                }
                if route.pool.as_deref() == Some(extra.as_str()) || route.pools[..i].contains(extra) {
                    return Err(invalid(k, format!("the route already draws from '{extra}'")));
                }
                // A pool is one ledger: one queue's own pool, or a further pool, never both.
                if let Some((other, _)) = budget
                    .routes
                    .iter()
                    .find(|(_, r)| r.pool.as_deref() == Some(extra.as_str()))
                {
                    return Err(invalid(
                        k,
                        format!(
                            "'{extra}' is budget.routes.{other}.pool: a pool is either routes' own (pool) or a further pool (pools), not both"
                        ),
                    ));
                }
            }
        }
        for (name, pool) in &budget.pools {
            check_quotas(&key(&format!("budget.pools.{name}.quotas")), &pool.quotas)?;
            if ROUTE_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    key(&format!("budget.pools.{name}")),
                    "a shared pool may not have a route's name (that is the route's own pool)",
                ));
            }
        }
        Ok(())
    }

    /// Consumers, their keys and the tenants they are granted.
    fn validate_consumers(&self, tenants: &BTreeMap<String, TenantConfig>) -> Result<(), ConfigError> {
        for (name, c) in &self.auth.consumers {
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(invalid(
                    format!("auth.consumers.{name}"),
                    "name must be 1-64 characters of letters, digits, '-', '_' or '.'",
                ));
            }
            if c.key_hashes.is_empty() {
                return Err(invalid(
                    format!("auth.consumers.{name}.key_hashes"),
                    "needs at least one key hash",
                ));
            }
            for h in &c.key_hashes {
                if KeyHash::parse(h).is_none() {
                    return Err(invalid(
                        format!("auth.consumers.{name}.key_hashes"),
                        "each hash must be `sha256:` followed by 64 hex digits (see `defender-proxy hash-key`)",
                    ));
                }
            }
            if !(1..=1000).contains(&c.weight) {
                return Err(invalid(format!("auth.consumers.{name}.weight"), "must be 1 to 1000"));
            }
            if c.rate_per_second.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                return Err(invalid(
                    format!("auth.consumers.{name}.rate_per_second"),
                    "must be a positive number",
                ));
            }
            if c.rate_burst == Some(0) {
                return Err(invalid(
                    format!("auth.consumers.{name}.rate_burst"),
                    "must be at least 1",
                ));
            }
            if c.rights.is_empty() {
                return Err(invalid(
                    format!("auth.consumers.{name}.rights"),
                    "needs \"read\" and/or \"write\"",
                ));
            }
            if c.tenants.is_empty() && !self.tenants.is_empty() {
                return Err(invalid(
                    format!("auth.consumers.{name}.tenants"),
                    "required with [tenants]: the tenants this consumer may reach (or [\"*\"] for all)",
                ));
            }
            let all = c.tenants.iter().any(|t| t == "*");
            for (i, t) in c.tenants.iter().enumerate() {
                if t != "*" && !tenants.contains_key(t) {
                    return Err(invalid(
                        format!("auth.consumers.{name}.tenants[{i}]"),
                        format!("no tenant named '{t}'"),
                    ));
                }
                if c.tenants[..i].contains(t) {
                    return Err(invalid(
                        format!("auth.consumers.{name}.tenants[{i}]"),
                        format!("'{t}' is listed twice"),
                    ));
                }
            }
            for (t, rights) in &c.tenant_rights {
                let key = format!("auth.consumers.{name}.tenant_rights.{t}");
                let granted = if c.tenants.is_empty() {
                    tenants.contains_key(t)
                } else {
                    (all && tenants.contains_key(t)) || c.tenants.contains(t)
                };
                if !granted {
                    return Err(invalid(key, format!("'{t}' is not among this consumer's tenants")));
                }
                if rights.is_empty() {
                    return Err(invalid(key, "needs \"read\" and/or \"write\""));
                }
            }
        }
        Ok(())
    }

    fn validate_shared(&self) -> Result<(), ConfigError> {
        let shared = &self.shared;
        if shared.redis_url.is_some() && shared.redis_url_file.is_some() {
            return Err(invalid(
                "shared.redis_url",
                "set shared.redis_url or shared.redis_url_file, not both",
            ));
        }
        if let Some(url) = &shared.redis_url {
            use secrecy::ExposeSecret as _;
            // The parser's message could quote the URL (and its password): say only what is wrong.
            let ok = reqwest::Url::parse(url.expose_secret())
                .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    "shared.redis_url",
                    "must be a redis:// or rediss:// URL with a host",
                ));
            }
        }
        for (key, d) in [
            ("shared.timeout", shared.timeout),
            ("shared.heartbeat", shared.heartbeat),
            ("shared.lease", shared.lease),
            ("shared.lease_wait", shared.lease_wait),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if shared.timeout >= shared.heartbeat {
            return Err(invalid("shared.timeout", "must be shorter than shared.heartbeat"));
        }
        if shared.lease <= shared.timeout * 2 {
            return Err(invalid(
                "shared.lease",
                "must be longer than twice shared.timeout (the holder renews it a third of the way through)",
            ));
        }
        if shared.cache && shared.cache_max_bytes < 64 * 1024 {
            return Err(invalid("shared.cache_max_bytes", "must be at least 65536"));
        }
        if shared.key_prefix.is_empty()
            || !shared
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "shared.key_prefix",
                "must be 1 or more letters, digits, '-', '_' or '.'",
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets shown as `[redacted]`.
    pub fn to_redacted_toml(&self) -> String {
        let top = toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"));
        let tenants = self.tenants_redacted_toml();
        if tenants.is_empty() {
            return top;
        }
        format!("{top}\n# Each tenant's effective settings (its own keys over the top level's):\n{tenants}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_matches_defaults_in_code() {
        // The documented file and the code must not drift: parse the file (plus the credentials it
        // leaves out) and compare with the defaults.
        let text = include_str!("../../config/default.toml");
        let parsed: Config = toml::from_str(text).expect("config/default.toml parses");
        let d = Config::default();
        assert_eq!(toml::to_string(&parsed).unwrap(), toml::to_string(&d).unwrap());
    }

    #[test]
    fn shared_pools_are_checked_by_name() {
        let ok = Config::from_toml(
            "[token]\nmode = \"static\"\nstatic_token = \"x\"\n\
             [budget.pools.incidents_api]\nquotas = [{ limit = 50, window = \"60s\" }]\n\
             [budget.routes.get_incident]\npool = \"incidents_api\"\n\
             [budget.routes.list_incidents]\npool = \"incidents_api\"\n",
        );
        let config = ok.expect("routes may share a named pool");
        assert_eq!(config.budget.quotas_of("list_incidents")[0].limit, 50);
        assert_eq!(config.budget.pool_of("get_incident"), "incidents_api");
        assert_eq!(config.budget.pool_of("update_incident"), "update_incident");
        let err = Config::from_toml(
            "[token]\nmode = \"static\"\nstatic_token = \"x\"\n[budget.routes.get_incident]\npool = \"nope\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("budget.routes.get_incident.pool"), "{err}");
    }

    #[test]
    fn further_pools_are_checked_by_name() {
        let base = "[token]\nmode = \"static\"\nstatic_token = \"x\"\n\
                    [budget.pools.incidents_api]\nquotas = [{ limit = 50, window = \"60s\" }]\n";
        let c = Config::from_toml(&format!(
            "{base}[budget.routes.get_incident]\nquotas = [{{ limit = 100, window = \"60s\" }}]\npools = [\"incidents_api\"]\n"
        ))
        .expect("a route may draw from its own quotas and a further pool");
        assert_eq!(c.budget.routes["get_incident"].pools, vec!["incidents_api".to_string()]);
        // Replicas share them through Redis too.
        Config::from_toml(&format!(
            "{base}[budget.routes.get_incident]\nquotas = [{{ limit = 100, window = \"60s\" }}]\npools = [\"incidents_api\"]\n\
             [shared]\nredis_url = \"redis://127.0.0.1:6379\""
        ))
        .expect("further pools with [shared]");
        for (extra, key) in [
            ("pools = [\"nope\"]", "budget.routes.get_incident.pools[0]"),
            (
                "pools = [\"incidents_api\", \"incidents_api\"]",
                "budget.routes.get_incident.pools[1]",
            ),
        ] {
            let err = Config::from_toml(&format!("{base}[budget.routes.get_incident]\n{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[cache]\nttl = \"5s\"\nttll = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttll"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let base = "[token]\nmode = \"static\"\nstatic_token = \"x\"\n";
        let err = Config::from_toml(&format!("{base}[budget.routes.get_incident]\nquotas = []\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("budget.routes.get_incident.quotas"), "{err}");
        let err = Config::from_toml(&format!("{base}[upstream]\nbase_url = \"ftp://x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream.base_url"), "{err}");
        let err = Config::from_toml("").unwrap_err().to_string();
        assert!(err.contains("token.tenant_id"), "{err}");
        let err = Config::from_toml(&format!("{base}[telemetry]\naccess_log_sample = 1.5\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("telemetry.access_log_sample"), "{err}");
        let err = Config::from_toml(&format!("{base}[telemetry]\naccess_log_buffer = 10\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("telemetry.access_log_buffer"), "{err}");
        let err = Config::from_toml(&format!("{base}[server]\nbody_read_timeout = \"0s\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.body_read_timeout"), "{err}");
        let err = Config::from_toml(&format!("{base}[telemetry]\naccess_log_sampel = 1.0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("access_log_sampel"), "{err}");
    }

    #[test]
    fn shared_section_is_checked_and_its_url_redacted() {
        let base = "[token]\nmode = \"static\"\nstatic_token = \"x\"\n";
        let c = Config::from_toml(&format!(
            "{base}[shared]\nredis_url = \"redis://:pa55word@redis:6379/0\"\nreplicas = 3\n"
        ))
        .unwrap();
        assert!(c.shared.enabled());
        assert!(!format!("{c:?}").contains("pa55word"));
        assert!(!c.to_redacted_toml().contains("pa55word"));
        let err = Config::from_toml(&format!("{base}[shared]\nredis_url = \"http://:pa55word@x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shared.redis_url") && !err.contains("pa55word"), "{err}");
        let err = Config::from_toml(&format!("{base}[shared]\ntimeout = \"2s\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shared.timeout"), "{err}");
        let err = Config::from_toml(&format!("{base}[shared]\nreplica = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("replica"), "{err}");
        let err = Config::from_toml(&format!("{base}[shared]\ncache = true\ncache_max_bytes = 10\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shared.cache_max_bytes"), "{err}");
        let err = Config::from_toml(&format!("{base}[shared]\nlease = \"100ms\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shared.lease"), "{err}");
        assert!(!Config::from_toml(base).unwrap().shared.enabled());
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_toml() {
        let c = Config::from_toml(
            "[token]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"hunter2-very-secret\"\n",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    const PROVIDER: &str = r#"
[upstream]
api = "graph"
[token]
client_id = "provider-app"
client_secret = "shared-app-secret-123"
[budget.pools.incidents_api]
quotas = [{ limit = 50, window = "60s" }, { limit = 1500, window = "1h" }]
[budget.routes.get_incident]
pool = "incidents_api"
[app_pools.graph_app]
quotas = [{ limit = 2000, window = "60s" }]

[tenants.contoso.token]
tenant_id = "11111111-1111-1111-1111-111111111111"
[tenants.fabrikam]
upstream = { api = "defender" }
token = { tenant_id = "22222222-2222-2222-2222-222222222222" }
[tenants.fabrikam.budget.routes.get_incident]
quotas = [{ limit = 10, window = "60s" }]
pools = ["graph_app"]
[tenants.northwind.token]
tenant_id = "33333333-3333-3333-3333-333333333333"
client_id = "northwind-own-app"
client_secret_file = "/run/secrets/northwind"
[tenants.northwind.cache]
ttl = "5s"

[auth.consumers.soc]
key_hashes = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
rights = ["read", "write"]
tenants = ["*"]
tenant_rights = { northwind = ["read"] }
"#;

    #[test]
    fn tenants_inherit_the_top_level_and_override_it_key_by_key() {
        let c = Config::from_toml(PROVIDER).expect("a provider's configuration is valid");
        let t = c.tenant_configs().unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["contoso", "fabrikam", "northwind"]);
        let (contoso, fabrikam, northwind) = (&t["contoso"], &t["fabrikam"], &t["northwind"]);
        // The shared multi-tenant app: its id and secret, the tenant's own id.
        assert_eq!(contoso.token.client_id, "provider-app");
        assert_eq!(contoso.token.tenant_id, "11111111-1111-1111-1111-111111111111");
        assert!(contoso.token.client_secret.is_some());
        assert_eq!(contoso.upstream.base_url, GRAPH_BASE_URL);
        assert_eq!(contoso.token.resource, GRAPH_BASE_URL);
        assert_eq!(contoso.budget.pool_of("get_incident"), "incidents_api");
        // Another API: the base URL and resource follow it.
        assert_eq!(fabrikam.upstream.base_url, DEFENDER_BASE_URL);
        assert_eq!(fabrikam.token.resource, DEFENDER_BASE_URL);
        // A route it sets is replaced whole: its own quotas, not the inherited pool.
        let get = &fabrikam.budget.routes["get_incident"];
        assert_eq!((get.pool.as_deref(), get.quotas[0].limit), (None, 10));
        assert_eq!(get.pools, ["graph_app"]);
        assert_eq!(fabrikam.budget.routes["list_incidents"].quotas[0].limit, 50);
        // Its own app registration: nothing of the shared one's credentials.
        assert_eq!(northwind.token.client_id, "northwind-own-app");
        assert!(northwind.token.client_secret.is_none());
        assert!(northwind.token.client_secret_file.is_some());
        assert_eq!(northwind.cache.ttl, Duration::from_secs(5));
        assert_eq!(northwind.cache.max_bytes, CacheConfig::default().max_bytes);
        // Secrets never print, not even the tenants' effective ones.
        for shown in [format!("{c:?}"), format!("{t:?}"), c.to_redacted_toml()] {
            assert!(!shown.contains("shared-app-secret-123"), "{shown}");
        }
        assert!(c.to_redacted_toml().contains("[tenants.northwind.cache]"));
        // Without [tenants]: one tenant, `default`, from the top level.
        let one = Config::from_toml("[token]\nmode = \"static\"\nstatic_token = \"x\"\n").unwrap();
        assert_eq!(one.tenant_configs().unwrap().keys().collect::<Vec<_>>(), ["default"]);
    }

    #[test]
    fn tenant_errors_name_the_tenants_key() {
        let refused = |extra: &str| {
            Config::from_toml(&format!("{PROVIDER}\n{extra}"))
                .unwrap_err()
                .to_string()
        };
        let err = refused("[tenants.adatum]\ntoken = { tenant_id = \"x\" }\ncache = { max_bytes = 10 }");
        assert!(err.contains("tenants.adatum.cache.max_bytes"), "{err}");
        // No tenant id of its own: the top level has none to give.
        let err = refused("[tenants.adatum]\nsync = { enabled = false }");
        assert!(err.contains("tenants.adatum.token.tenant_id"), "{err}");
        let err = refused("[tenants.adatum.token]\ntenant_id = \"x\"\ncliend_id = \"typo\"");
        assert!(err.contains("cliend_id"), "{err}");
        let err = refused(
            "[tenants.adatum]\ntoken = { tenant_id = \"x\" }\nbudget = { routes = { get_incident = { quotaz = [] } } }",
        );
        assert!(err.contains("tenants.adatum.budget") && err.contains("quotaz"), "{err}");
        let err = refused("[tenants.Bad_Name.token]\ntenant_id = \"x\"");
        assert!(err.contains("tenants.Bad_Name"), "{err}");
        let err = refused("[tenants.adatum.token]\ntenant_id = \"x\"\nclient_id = \"own\"");
        assert!(err.contains("tenants.adatum.token.client_secret"), "{err}");
        let err = refused("[tenants.adatum.token]\ntenant_id = \"x\"\n[tenants.adatum.budget.routes.list_incidents]\nquotas = [{ limit = 5, window = \"1m\" }]\npools = [\"nope\"]");
        assert!(
            err.contains("tenants.adatum.budget.routes.list_incidents.pools[0]"),
            "{err}"
        );
    }

    #[test]
    fn a_tenant_names_its_own_customer_and_no_two_tenants_are_one() {
        // A top-level tenant id is never inherited: a forgotten id is an error, not another
        // customer's incidents under this tenant's name.
        let with_top_id = PROVIDER.replace(
            "client_id = \"provider-app\"",
            "client_id = \"provider-app\"\ntenant_id = \"11111111-1111-1111-1111-111111111111\"",
        );
        let err = Config::from_toml(&format!(
            "{with_top_id}\n[tenants.adatum]\nsync = {{ enabled = false }}"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("tenants.adatum.token.tenant_id"), "{err}");
        // Two entries for one customer and app would spend its one quota twice.
        let err = Config::from_toml(&format!(
            "{PROVIDER}\n[tenants.contoso2.token]\ntenant_id = \"11111111-1111-1111-1111-111111111111\""
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tenants.contoso2.token.tenant_id") && err.contains("contoso"),
            "{err}"
        );
        // Its identity (and so its Redis slot) changes with its tenant id.
        let c = Config::from_toml(PROVIDER).unwrap();
        let t = c.tenant_configs().unwrap();
        assert_ne!(t["contoso"].identity(), t["fabrikam"].identity());
        assert!(c.tenant_slot("contoso", &t["contoso"]).starts_with("contoso."));
        // A tenant with a static token of its own is in static mode.
        let c = Config::from_toml(&format!("{PROVIDER}\n[tenants.lab.token]\nstatic_token = \"t\"")).unwrap();
        assert_eq!(c.tenant_configs().unwrap()["lab"].token.mode, TokenMode::Static);
    }

    #[test]
    fn a_pool_is_a_routes_own_or_a_further_one_not_both() {
        let base = "[token]\nmode = \"static\"\nstatic_token = \"x\"\n\
                    [budget.pools.incidents_api]\nquotas = [{ limit = 50, window = \"60s\" }]\n\
                    [budget.routes.get_incident]\npool = \"incidents_api\"\n\
                    [budget.routes.list_incidents]\nquotas = [{ limit = 50, window = \"60s\" }]\npools = [\"incidents_api\"]\n";
        let err = Config::from_toml(base).unwrap_err().to_string();
        assert!(err.contains("budget.routes.list_incidents.pools[0]"), "{err}");
    }

    #[test]
    fn consumers_name_tenants_that_exist() {
        let base = PROVIDER.replace("tenants = [\"*\"]", "tenants = [\"contoso\", \"adatum\"]");
        let err = Config::from_toml(&base).unwrap_err().to_string();
        assert!(err.contains("auth.consumers.soc.tenants[1]"), "{err}");
        let base = PROVIDER.replace("tenants = [\"*\"]\n", "");
        let err = Config::from_toml(&base).unwrap_err().to_string();
        assert!(err.contains("auth.consumers.soc.tenants"), "{err}");
        let base = PROVIDER.replace("tenants = [\"*\"]", "tenants = [\"contoso\"]");
        let err = Config::from_toml(&base).unwrap_err().to_string();
        assert!(err.contains("auth.consumers.soc.tenant_rights.northwind"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail wants its own error type
    fn a_tenants_secret_can_come_from_the_environment() {
        let dir = std::env::temp_dir().join(format!("dpx-tenants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        let text = PROVIDER.replace("client_secret_file = \"/run/secrets/northwind\"\n", "");
        std::fs::write(&file, text).unwrap();
        let without = Config::figment(Some(&file), Env::prefixed("DPX_TEST_NONE_").split("__"));
        assert!(without
            .unwrap_err()
            .to_string()
            .contains("tenants.northwind.token.client_secret"));
        figment::Jail::expect_with(|jail| {
            jail.set_env("DPXT_TENANTS__NORTHWIND__TOKEN__CLIENT_SECRET", "from-the-env-42");
            let c = Config::figment(Some(&file), Env::prefixed("DPXT_").split("__")).expect("valid");
            let t = c.tenant_configs().unwrap();
            assert!(t["northwind"].token.client_secret.is_some());
            assert!(!format!("{c:?}").contains("from-the-env-42"));
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
