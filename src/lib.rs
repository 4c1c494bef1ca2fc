//! defender-proxy: one app registration for the Microsoft 365 Defender incidents API, shared by
//! many internal tools without ever tripping its quota.
//!
//! # Layout
//!
//! A request flows one way through these modules:
//!
//! * [`api`]: HTTP in and out; request ids, `Cache-Status` and `RateLimit` headers, admin
//!   endpoints (`/metrics`, `/livez`, `/readyz`).
//! * [`auth`]: which consumer is calling (API keys stored as hashes) and what it may do.
//! * [`target`]: parses the request target (route, incident id) and the caller's cache and wait
//!   preferences; [`odata`] parses List query options.
//! * [`proxy`]: the policy: cache, then budget, then upstream; stale-if-error; what is stored.
//! * [`cache`]: the byte-bounded response store ([`cache::Store`], moka in memory).
//! * [`flight`]: collapses concurrent misses for one key into one upstream call.
//! * [`budget`]: the quota-exact scheduler ([`budget::Budget`]; sliding windows in
//!   [`budget::ledger`]).
//! * [`upstream`]: the Defender HTTP client; [`token`]: its Entra ID access token.
//! * [`sync`]: (optional) follows the List API's changes so cached incidents stay current.
//!
//! Around them: [`config`] (typed, layered configuration), [`route`] (the upstream routes as
//! data), [`error`] (the one error type and its statuses), [`metrics`], [`telemetry`] (diagnostic
//! events), [`access_log`] (the per-request line, off the request path), [`app`]
//! (build, serve, drain) and [`simulator`] (a faithful fake of Defender and Entra ID for the
//! quick start, tests and benchmarks).

#![forbid(unsafe_code)]

pub mod access_log;
pub mod api;
pub mod app;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod flight;
pub mod metrics;
pub mod odata;
pub mod proxy;
pub mod route;
pub mod simulator;
pub mod sync;
pub mod target;
pub mod telemetry;
pub mod token;
pub mod upstream;

pub use app::Application;
pub use config::Config;
pub use metrics::Metrics;
