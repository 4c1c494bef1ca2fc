//! defender-proxy: one app registration for the Microsoft 365 Defender incidents API, shared by
//! many internal tools without ever tripping its quota.
//!
//! # Layout
//!
//! A request flows one way through these modules; each may use only the ones listed after it
//! (the compiler and `python3 ../shared/tools/modgraph.py src` keep the graph free of circles):
//!
//! * [`api`]: HTTP in and out for both facades (`/api/incidents...`, Defender's dialect, and
//!   `/v1.0/security/incidents...`, Graph's); request ids, `RateLimit` headers, each facade's error
//!   envelope, admin endpoints (`/metrics`, `/livez`, `/readyz`). Uses `auth`, `tenant`,
//!   `target`, `dialect` (Graph targets, write plans, Graph's envelope), `proxy`, `outcome`.
//! * [`auth`]: which consumer is calling (API keys stored as hashes), which tenants it may reach
//!   and what it may do in each.
//! * [`tenant`]: one tenant's whole stack (token, upstream client, budget, cache, flights, sync),
//!   built from its effective settings, and the set of tenants served (the request path picks
//!   one: `/tenants/{name}/...`, or the consumer's only tenant). Builds on everything below.
//! * [`target`]: parses the request target (route, incident id) and the caller's cache and wait
//!   preferences; [`odata`] (the `defender-odata` crate, `crates/odata`) parses List query
//!   options.
//! * [`proxy`]: the policy: cache, then budget, then upstream; stale-if-error; what is stored.
//!   Reads collapse into flights in which each caller keeps its own wait; writes finish detached.
//! * [`outcome`]: what a request comes to (answer or failure) and the one `Cache-Status` renderer.
//! * [`sync`]: (optional) follows the List API's changes so cached incidents stay current; it
//!   writes its proof into [`cache::Confirmations`], which the proxy reads. Beside `proxy`, not
//!   above or below it.
//! * [`ingest`]: what an upstream answer puts into the cache (checked, spread, in order), with
//!   its renderings for the other dialect ([`body`]: one answer, three views, each translated
//!   once, on its first read).
//! * [`cache`]: the byte-bounded response store ([`cache::Store`]: ordered writes, moka in
//!   memory) and the sync's confirmations.
//! * [`tier`]: (optional, `shared.cache`) the second cache tier in Redis shared by replicas:
//!   one native body per key, ordered fills and writes across replicas, invalidation of every
//!   replica's first tier by pub/sub, and one fetch per cold key across replicas (a lease).
//!   Used by `proxy` inside a miss's flight; uses `shared`, `ingest`, `cache`.
//! * [`flight`]: collapses concurrent misses for one key into one upstream call.
//! * [`exchange`]: one budgeted upstream call: token first, then a slot, then the request at once;
//!   safe retries; 429s freeze the route (capped).
//! * [`budget`]: the quota-exact scheduler ([`budget::Budget`]; sliding windows in
//!   [`budget::ledger`]).
//! * [`upstream`]: the HTTP client of the upstream (Defender or Graph, `upstream.api`);
//!   [`token`]: its Entra ID access token.
//! * [`shared`]: (optional, `shared.redis_url`) the replicas' Redis connection, its health and
//!   the membership heartbeat; [`budget::redis`] keeps the budget's ledger there.
//!
//! [`dialect`] holds the pure translations between the Defender and Microsoft Graph security
//! dialects (incidents, queries, updates, errors, Graph request targets), used by `api`, `proxy`,
//! `ingest` and `sync`, with [`enums`] (re-exported from `defender-odata`), the one table per enum
//! type where the documents' disagreements are decided (also used by [`odata`]).
//!
//! Around them: [`config`] (typed, layered configuration; [`config::TenantConfig`] is one
//! tenant's sections after inheritance), [`learnt`] (`config check --learnt`), [`route`] (the upstream routes as
//! data), [`error`] (the one error type and its statuses), [`metrics`], [`telemetry`] (diagnostic
//! events), [`access_log`] (the per-request line, off the request path), [`app`] (build, serve,
//! drain) and [`simulator`] (the `defender-simulator` crate, `crates/simulator`: a faithful fake
//! of Defender, Graph security and Entra ID for the quick start, tests and benchmarks).
//!
//! The workspace's two other crates never depend on this one: `crates/odata` (the OData grammar,
//! the enum tables and the update vocabulary, which [`route`] re-exports) and `crates/simulator`
//! (which uses `crates/odata` and evaluates `$filter`s itself).

#![forbid(unsafe_code)]

pub mod access_log;
pub mod api;
pub mod app;
pub mod auth;
pub mod body;
pub mod budget;
pub mod cache;
pub mod config;
pub mod demo;
pub mod dialect;
pub mod error;
pub mod exchange;
pub mod flight;
pub mod ingest;
pub mod learnt;
pub mod metrics;
pub mod odata;
pub mod outcome;
pub mod proxy;
pub mod route;
pub mod shared;
pub mod sync;
pub mod target;
pub mod telemetry;
pub mod tenant;
pub mod tier;
pub mod token;
pub mod upstream;

pub use defender_odata::enums;
pub use defender_simulator as simulator;

pub use app::Application;
pub use config::Config;
pub use metrics::Metrics;
