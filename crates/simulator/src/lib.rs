//! A faithful fake of the Microsoft 365 Defender incidents API, of its successor the Microsoft
//! Graph security incidents API (both dialects over the same incidents), and of the Entra ID
//! token endpoint, served over a real socket: the upstream for the quick-start demo, every
//! integration test and the benchmarks.
//!
//! Submodules, each using only those listed after it: `server` the accept loop; `api`
//! (Defender), `graph` (Graph) and `admin` the HTTP routes, mounted together by this crate
//! root's router; `http` the helpers both dialects share; `store` holds the incidents' current
//! truth (an `IncidentBook`); `graph_render` the Graph rendering and `eval` the
//! `$filter` evaluator; `data` generates incidents from the seed; `quota` enforces the per-route
//! sliding windows, `token` is the Entra endpoint, `faults` the injectable misbehaviour, `stats`
//! what was seen, `clock` the timestamps; `tenant` holds one tenant's share of all that (its
//! incidents, quota counters, faults and stats), for a simulator that serves several tenants.
//!
//! One tenant, described by `SimConfig`'s own fields, is the default: every `SimHandle` method
//! and every `/_sim` route without `?tenant=` means it. Further tenants are declared in
//! `SimConfig::tenants` and reached through `SimHandle::tenant`. A token is issued in one tenant
//! and API calls made with it see that tenant only.
//!
//! Its names are its own (`IncidentBook`, `SimRoute`, `CallOutcome`, `parse_incident_id`): none
//! reuses a type name of the proxy it stands in front of. It depends on `defender-odata` for the
//! query grammar, never on the proxy.

#![forbid(unsafe_code)]

mod admin;
mod api;
mod clock;
mod data;
mod eval;
mod faults;
mod graph;
mod graph_render;
mod http;
mod quota;
mod server;
mod stats;
mod store;
mod tenant;
mod token;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post, put};
use axum::Router;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

pub use eval::Matches;
pub use faults::{FaultKind, FaultRule, Faults};
pub use stats::{Change, RouteStats, Stats};
pub use tenant::SimTenant;

use clock::{now_ticks, TICKS_PER_DAY};
use tenant::Tenancy;
use token::{Audience, Grant, Tokens};

/// How the simulated default tenant looks and behaves (its fields below), and which further
/// tenants the simulator serves beside it (`tenants`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seeds all generated data: same seed (on the same UTC day), same bytes.
    pub seed: u64,
    /// How many ids exist initially (some of them missing, see `missing_share`).
    pub incidents: u64,
    pub first_id: i64,
    /// Share of ids in `[first_id, first_id + incidents)` that do not exist (404).
    pub missing_share: f64,
    pub tenant_id: String,
    pub client_id: String,
    /// A fake credential for a fake tenant.
    pub client_secret: String,
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    pub quotas: SimQuotas,
    /// If set, one random existing incident changes every interval.
    #[serde(with = "humantime_serde")]
    pub change_interval: Option<Duration>,
    /// Graph routes' 429s say `Retry-After` to the millisecond (`2.128`, as Graph's own
    /// documentation shows) instead of whole seconds.
    pub graph_fractional_retry_after: bool,
    /// Client ids of apps registered in other tenants (`tenants`) that were consented to in
    /// the default tenant.
    pub consented_apps: Vec<String>,
    /// Tenants served beside the default one, each with its own app, data, quotas, faults
    /// and stats. Empty (one tenant) by default.
    pub tenants: Vec<SimTenant>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            incidents: 10_000,
            first_id: 1,
            missing_share: 0.05,
            tenant_id: "00000000-0000-0000-0000-00000000d3f0".into(),
            client_id: "defender-proxy-demo".into(),
            client_secret: "demo-secret".into(),
            token_ttl: Duration::from_secs(3599),
            quotas: SimQuotas::default(),
            change_interval: None,
            graph_fractional_retry_after: true,
            consented_apps: Vec::new(),
            tenants: Vec::new(),
        }
    }
}

impl SimConfig {
    /// The default tenant, as its own fields describe it.
    fn default_tenant(&self) -> SimTenant {
        SimTenant {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            consented_apps: self.consented_apps.clone(),
            seed: Some(self.seed),
            incidents: self.incidents,
            first_id: self.first_id,
            missing_share: self.missing_share,
            quotas: self.quotas.clone(),
            change_interval: self.change_interval,
        }
    }

    /// Every tenant, the default one first (at index [`HOME`]).
    fn all_tenants(&self) -> Vec<SimTenant> {
        std::iter::once(self.default_tenant())
            .chain(self.tenants.iter().cloned())
            .collect()
    }
}

/// Per-route quotas; every window of a route must have room for a call to be admitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimQuotas {
    pub get: Vec<SimQuota>,
    pub list: Vec<SimQuota>,
    pub update: Vec<SimQuota>,
    /// The Graph routes count separately from Defender's (Graph's are another service).
    pub graph_get: Vec<SimQuota>,
    pub graph_list: Vec<SimQuota>,
    pub graph_update: Vec<SimQuota>,
    pub graph_comment: Vec<SimQuota>,
}

impl Default for SimQuotas {
    /// The documented limits: get 100/min and 1,500/h, list and update 50/min and 1,500/h.
    fn default() -> Self {
        let pair = |per_minute| {
            vec![
                SimQuota {
                    limit: per_minute,
                    window: Duration::from_secs(60),
                },
                SimQuota {
                    limit: 1_500,
                    window: Duration::from_secs(3_600),
                },
            ]
        };
        // Graph documents no incident limit; its only /security row is 150/min per app and
        // tenant (fact sheet §6.3).
        let graph = || {
            vec![SimQuota {
                limit: 150,
                window: Duration::from_secs(60),
            }]
        };
        Self {
            get: pair(100),
            list: pair(50),
            update: pair(50),
            graph_get: graph(),
            graph_list: graph(),
            graph_update: graph(),
            graph_comment: graph(),
        }
    }
}

impl SimQuotas {
    /// The quotas of one route.
    pub(crate) fn for_route(&self, route: SimRoute) -> &Vec<SimQuota> {
        match route {
            SimRoute::Get => &self.get,
            SimRoute::List => &self.list,
            SimRoute::Update => &self.update,
            SimRoute::GraphGet => &self.graph_get,
            SimRoute::GraphList => &self.graph_list,
            SimRoute::GraphUpdate => &self.graph_update,
            SimRoute::GraphComment => &self.graph_comment,
        }
    }
}

/// At most `limit` calls in any sliding `window`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimQuota {
    pub limit: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// The API routes of both dialects, each with its own quota and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SimRoute {
    Get,
    List,
    Update,
    GraphGet,
    GraphList,
    GraphUpdate,
    GraphComment,
}

impl SimRoute {
    pub(crate) const ALL: [SimRoute; 7] = [
        SimRoute::Get,
        SimRoute::List,
        SimRoute::Update,
        SimRoute::GraphGet,
        SimRoute::GraphList,
        SimRoute::GraphUpdate,
        SimRoute::GraphComment,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SimRoute::Get => "get",
            SimRoute::List => "list",
            SimRoute::Update => "update",
            SimRoute::GraphGet => "graph_get",
            SimRoute::GraphList => "graph_list",
            SimRoute::GraphUpdate => "graph_update",
            SimRoute::GraphComment => "graph_comment",
        }
    }

    /// A route of the Graph dialect (`/v1.0/security/...`).
    pub(crate) fn is_graph(self) -> bool {
        !matches!(self, SimRoute::Get | SimRoute::List | SimRoute::Update)
    }

    pub(crate) fn index(self) -> usize {
        match self {
            SimRoute::Get => 0,
            SimRoute::List => 1,
            SimRoute::Update => 2,
            SimRoute::GraphGet => 3,
            SimRoute::GraphList => 4,
            SimRoute::GraphUpdate => 5,
            SimRoute::GraphComment => 6,
        }
    }
}

/// The index of the default tenant (the one `SimConfig`'s own fields describe).
pub(crate) const HOME: usize = 0;

/// State shared by all requests of one simulator.
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    /// The default tenant first, then `cfg.tenants` in order; tokens refer to them by index.
    tenants: Vec<Tenancy>,
    pub(crate) tokens: Tokens,
    pub(crate) shutdown: watch::Sender<bool>,
    addr: SocketAddr,
}

impl Shared {
    pub(crate) fn tenancy(&self, index: usize) -> &Tenancy {
        &self.tenants[index]
    }

    /// The index of the tenant with this id (compared as Entra compares them: ignoring case).
    pub(crate) fn find_tenant(&self, tenant_id: &str) -> Option<usize> {
        self.tenants.iter().position(|t| t.id().eq_ignore_ascii_case(tenant_id))
    }

    /// The tenant whose own app registration `client_id` is (it holds the secret).
    pub(crate) fn registration(&self, client_id: &str) -> Option<&SimTenant> {
        self.tenants
            .iter()
            .map(|t| &t.spec)
            .find(|spec| spec.client_id == client_id)
    }

    /// Resolves once `shutdown()` has been called.
    pub(crate) async fn stopping(&self) {
        let mut rx = self.shutdown.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// The base URL clients reach this simulator on (for Graph's absolute `@odata.nextLink`).
    pub(crate) fn base_url(&self) -> String {
        base_url(self.addr)
    }
}

fn validate(cfg: &SimConfig) -> anyhow::Result<()> {
    anyhow::ensure!(!cfg.token_ttl.is_zero(), "token_ttl must be positive");
    tenant::validate_directory(&cfg.all_tenants())
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Serves a new simulated tenant on `listener` until [`SimHandle::shutdown`].
    pub async fn start(cfg: SimConfig, listener: TcpListener) -> anyhow::Result<SimHandle> {
        validate(&cfg)?;
        let addr = listener.local_addr()?;
        let anchor = now_ticks().div_euclid(TICKS_PER_DAY) * TICKS_PER_DAY;
        let specs = cfg.all_tenants();
        // Drawing every summary takes a moment for large tenants; keep it off the runtime.
        let books = tokio::task::spawn_blocking(move || {
            specs
                .into_iter()
                .map(|spec| {
                    let book = spec.generate(anchor);
                    (spec, book)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        // The stats' clock starts once the data is there, for every tenant alike.
        let start = Instant::now();
        let tenants = books
            .into_iter()
            .map(|(spec, book)| Tenancy::new(spec, book, start))
            .collect();
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            tokens: Tokens::new(cfg.token_ttl),
            tenants,
            shutdown,
            addr,
            cfg,
        });
        let app = router(shared.clone());
        tokio::spawn(server::serve(listener, app, shared.clone()));
        for (index, tenant) in shared.tenants.iter().enumerate() {
            if let Some(every) = tenant.spec.change_interval {
                tokio::spawn(background_changes(shared.clone(), index, every));
            }
        }
        Ok(SimHandle { shared })
    }
}

/// `http://127.0.0.1:port` (a wildcard bind address is replaced by loopback).
fn base_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Changes one random existing incident of a tenant every `every`, as analysts and automation
/// would.
async fn background_changes(sim: Arc<Shared>, index: usize, every: Duration) {
    let tenant = sim.tenancy(index);
    let mut rng = ChaCha8Rng::seed_from_u64(tenant.spec.effective_seed() ^ 0xC4A4_6E55);
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Some(id) = tenant.store.random_id(&mut rng) {
                    tenant.touch(id, "Automated investigation updated the incident.", "Automation");
                }
            }
            _ = sim.stopping() => break,
        }
    }
}

/// A running simulator. Cheap to clone; all clones control the same simulator.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:port` (a wildcard bind address is replaced by loopback).
    pub fn base_url(&self) -> String {
        base_url(self.shared.addr)
    }

    /// The default tenant's counters (see [`SimHandle::tenant`] for the others).
    pub fn stats(&self) -> Stats {
        self.home().stats()
    }

    /// Clears the default tenant's counters, arrival times and changes (quota logs are
    /// upstream state and stay).
    pub fn reset_stats(&self) {
        self.home().reset_stats();
    }

    /// Replaces the default tenant's fault plan (token-endpoint rules apply to requests that
    /// name this tenant, or no known tenant).
    pub fn set_faults(&self, faults: Faults) {
        self.home().set_faults(faults);
    }

    /// Replaces the default tenant's limits from now on; calls already made count against the
    /// new ones. Tightening them makes the simulator enforce, and state in its 429 text, a
    /// stricter limit than a client was configured with.
    pub fn set_quotas(&self, quotas: SimQuotas) {
        self.home().set_quotas(quotas);
    }

    /// Changes an incident now (new lastUpdateTime, a comment appended); returns the new
    /// lastUpdateTime, or `None` if the incident does not exist.
    pub fn touch(&self, id: i64) -> Option<String> {
        self.home().touch(id)
    }

    /// Creates a brand-new incident with the next id; createdTime = lastUpdateTime = now.
    pub fn create_incident(&self) -> i64 {
        self.home().create_incident()
    }

    /// A valid token of the default tenant, for tests that bypass the token endpoint.
    pub fn issue_token(&self) -> String {
        self.home().issue_token()
    }

    /// A valid token for the Graph routes (audience `https://graph.microsoft.com`).
    pub fn issue_graph_token(&self) -> String {
        self.home().issue_graph_token()
    }

    /// The incident as the API would serve it now.
    pub fn incident_json(&self, id: i64) -> Option<serde_json::Value> {
        self.home().incident_json(id)
    }

    /// The incident as the Graph API would serve it now (`$expand=alerts` when `expand_alerts`),
    /// without `@odata.context`.
    pub fn graph_incident_json(&self, id: i64, expand_alerts: bool) -> Option<serde_json::Value> {
        self.home().graph_incident_json(id, expand_alerts)
    }

    /// The tenant with this id (ignoring case, as Entra does), the default one included.
    pub fn tenant(&self, tenant_id: &str) -> Option<SimTenantHandle> {
        let index = self.shared.find_tenant(tenant_id)?;
        Some(SimTenantHandle {
            shared: self.shared.clone(),
            index,
        })
    }

    /// The ids of all tenants, the default one first.
    pub fn tenant_ids(&self) -> Vec<String> {
        self.shared.tenants.iter().map(|t| t.id().to_string()).collect()
    }

    fn home(&self) -> SimTenantHandle {
        SimTenantHandle {
            shared: self.shared.clone(),
            index: HOME,
        }
    }

    /// Stops accepting connections and closes the open ones gracefully (in the background).
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// One tenant of a running simulator: its counters, faults, quotas, incidents and tokens.
/// Cheap to clone.
#[derive(Clone)]
pub struct SimTenantHandle {
    shared: Arc<Shared>,
    index: usize,
}

impl std::fmt::Debug for SimTenantHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTenantHandle")
            .field("tenant_id", &self.tenancy().id())
            .finish_non_exhaustive()
    }
}

impl SimTenantHandle {
    fn tenancy(&self) -> &Tenancy {
        self.shared.tenancy(self.index)
    }

    pub fn tenant_id(&self) -> &str {
        self.tenancy().id()
    }

    /// The client id of the tenant's own app registration.
    pub fn client_id(&self) -> &str {
        &self.tenancy().spec.client_id
    }

    /// This tenant's counters; `at_ms` counts from the simulator's start, the same origin for
    /// every tenant, so arrivals of different tenants compare.
    pub fn stats(&self) -> Stats {
        self.tenancy().stats.snapshot()
    }

    /// Clears this tenant's counters, arrival times and changes (its quota logs stay).
    pub fn reset_stats(&self) {
        self.tenancy().stats.reset();
    }

    /// Replaces this tenant's fault plan.
    pub fn set_faults(&self, faults: Faults) {
        self.tenancy().faults.lock().replace(faults);
    }

    /// Replaces this tenant's limits from now on; its calls already made count against them.
    pub fn set_quotas(&self, quotas: SimQuotas) {
        self.tenancy().set_quotas(&quotas);
    }

    /// Changes one of this tenant's incidents now; `None` if it has no such incident.
    pub fn touch(&self, id: i64) -> Option<String> {
        self.tenancy().touch(id, "Simulated change.", "Simulator")
    }

    /// Creates a brand-new incident in this tenant with its next id.
    pub fn create_incident(&self) -> i64 {
        self.tenancy().create().0
    }

    /// A valid Defender token of this tenant for its own app.
    pub fn issue_token(&self) -> String {
        self.issue(Audience::Defender)
    }

    /// A valid Graph token of this tenant for its own app.
    pub fn issue_graph_token(&self) -> String {
        self.issue(Audience::Graph)
    }

    fn issue(&self, audience: Audience) -> String {
        let tenancy = self.tenancy();
        self.shared.tokens.issue(&Grant {
            tenant: self.index,
            tenant_id: tenancy.id(),
            app: &tenancy.spec.client_id,
            audience,
        })
    }

    /// One of this tenant's incidents as the Defender API would serve it now.
    pub fn incident_json(&self, id: i64) -> Option<serde_json::Value> {
        let body = self.tenancy().store.body(id)?;
        serde_json::from_slice(&body).ok()
    }

    /// One of this tenant's incidents as the Graph API would serve it now, without
    /// `@odata.context`.
    pub fn graph_incident_json(&self, id: i64, expand_alerts: bool) -> Option<serde_json::Value> {
        let body = self.tenancy().store.graph_body(id, expand_alerts)?;
        serde_json::from_slice(&body).ok()
    }
}

/// Every route of both dialects, the token endpoint and the control endpoints, on one router.
fn router(sim: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/incidents", get(api::list_incidents))
        .route(
            "/api/incidents/{id}",
            get(api::get_incident).patch(api::update_incident),
        )
        .route("/v1.0/security/incidents", get(graph::list_incidents))
        .route(
            "/v1.0/security/incidents/{id}",
            get(graph::get_incident).patch(graph::update_incident),
        )
        .route("/v1.0/security/incidents/{id}/comments", post(graph::post_comment))
        .route("/{tenant}/oauth2/v2.0/token", post(token::token_endpoint))
        .route("/_sim/stats", get(admin::stats))
        .route("/_sim/stats/reset", post(admin::reset_stats))
        .route("/_sim/faults", put(admin::set_faults))
        .route("/_sim/incidents", post(admin::create))
        .route("/_sim/incidents/{id}/touch", post(admin::touch))
        .fallback(api::no_such_route)
        .with_state(sim)
}

/// The data model and its two native renderings, for property tests outside this crate (the
/// proxy's dialect translator is checked against them). Not part of the simulator's API.
#[doc(hidden)]
pub mod fixtures {
    pub use crate::clock::{format_ticks, now_ticks, TICKS_PER_DAY, TICKS_PER_SEC};
    pub use crate::data::{generate_summary, render, Comment, DataParams, IncidentState};
    pub use crate::graph_render::render as render_graph;
}

#[cfg(test)]
mod tenants_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_humantime() {
        let cfg: SimConfig = serde_json::from_str(
            r#"{"seed":1,"token_ttl":"10s","change_interval":"500ms",
                "quotas":{"get":[{"limit":3,"window":"1s"}]}}"#,
        )
        .unwrap();
        assert_eq!(cfg.seed, 1);
        assert_eq!(cfg.token_ttl, Duration::from_secs(10));
        assert_eq!(cfg.change_interval, Some(Duration::from_millis(500)));
        assert_eq!(
            cfg.quotas.get,
            vec![SimQuota {
                limit: 3,
                window: Duration::from_secs(1)
            }]
        );
        assert_eq!(cfg.quotas.list, SimQuotas::default().list);
        assert_eq!(cfg.incidents, 10_000);
        assert!(serde_json::from_str::<SimConfig>(r#"{"seeed":1}"#).is_err());
        assert!(validate(&SimConfig {
            missing_share: 1.5,
            ..SimConfig::default()
        })
        .is_err());
        assert!(validate(&SimConfig::default()).is_ok());
    }
}
