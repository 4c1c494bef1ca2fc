//! Building and running the whole proxy: listeners, state, background tasks, graceful shutdown.
//!
//! [`Application::build`] binds both listeners (port 0 works, for tests) and wires the modules
//! together; [`Application::run_until_stopped`] serves until the shutdown future resolves, then
//! drains: readiness goes false, queued callers get 503, new connections are refused, in-flight
//! requests get `server.grace_period` to finish.
//!
//! Connections are served by hyper's HTTP/1 builder with a timer and a header-read timeout: a
//! plain `axum::serve` has none, and one slow client per socket could hold the proxy hostage.
//! The API listener serves [`api::handle`] through a plain `service_fn` (a router and tower layers
//! would cost a cache hit more than they do for it); the admin listener keeps its axum router.

use std::{
    convert::Infallible, future::Future, io::Write, net::SocketAddr, sync::atomic::Ordering, sync::Arc, time::Duration,
};

use anyhow::Context as _;
use axum::{BoxError, Router};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    access_log::AccessLog,
    api::{self, AppState, Handles, Limits},
    auth::Consumers,
    budget::{redis::RedisGate, Budget, LocalBudget},
    cache::{Confirmations, MokaStore, Store},
    config::Config,
    exchange::Exchange,
    ingest::Ingest,
    proxy::{Policy, Proxy},
    shared::{lease::Lease, Shared, Tick},
    sync::{SyncState, Syncer},
    tier::SharedCache,
    token::TokenSource,
    upstream::Upstream,
    Metrics,
};

/// How long shutdown waits for the access log to write its last lines.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);

/// A built proxy, listeners bound, not yet serving.
pub struct Application {
    config: Config,
    api: TcpListener,
    admin: TcpListener,
    state: Arc<AppState>,
    budget: Arc<dyn Budget>,
    syncer: Option<Syncer>,
    /// The replicas' shared state and what runs after each of its heartbeats.
    shared: Option<SharedParts>,
}

/// The replicas' shared state and the work that follows each of its heartbeats.
type SharedParts = (Arc<Shared>, Vec<Arc<dyn Tick>>);

/// The budget: in process memory, or (with `shared.redis_url`) the local queue in front of the
/// ledger shared by every replica through Redis.
fn build_budget(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<(Arc<dyn Budget>, Option<SharedParts>)> {
    if !config.shared.enabled() {
        return Ok((Arc::new(LocalBudget::new(&config.budget)), None));
    }
    let shared = Shared::new(&config.shared, metrics.clone()).context("shared state")?;
    // Degraded until the first heartbeat reaches Redis.
    metrics.shared_degraded.set(1);
    let (pools, _) = crate::budget::pools(&config.budget);
    let gate = RedisGate::new(shared.clone(), pools, config.budget.safety_margin);
    let budget = Arc::new(LocalBudget::with_gate(&config.budget, gate.clone()));
    Ok((budget, Some((shared, vec![gate as Arc<dyn Tick>]))))
}

impl Application {
    /// Builds the proxy with its access log on stdout.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with_access_log(config, Box::new(std::io::stdout())).await
    }

    /// Builds the proxy with its access log written to `sink` (tests capture it this way).
    pub async fn build_with_access_log(config: Config, sink: Box<dyn Write + Send>) -> anyhow::Result<Application> {
        let metrics = Arc::new(Metrics::new());
        let access_log = Arc::new(
            AccessLog::new(
                &config.telemetry,
                sink,
                metrics.access_log_lines.clone(),
                metrics.access_log_dropped.clone(),
            )
            .context("access log")?,
        );
        let tokens = Arc::new(TokenSource::from_config(&config.token).context("upstream token")?);
        let upstream = Upstream::new(&config.upstream, tokens.clone()).context("upstream client")?;
        let confirmations = config
            .sync
            .enabled
            .then(|| Arc::new(Confirmations::new(config.sync.max_lag, config.sync.max_entry_age)));
        let sync = confirmations
            .as_ref()
            .map(|c| Arc::new(SyncState::new(config.sync.clone(), c.clone())));
        let incident_lifetime = if config.sync.enabled {
            config.cache.ttl.max(config.sync.max_entry_age)
        } else {
            config.cache.ttl
        };
        let store: Arc<dyn Store> = Arc::new(MokaStore::new(&config.cache, incident_lifetime));
        let (budget, shared) = build_budget(&config, &metrics)?;
        let exchange = Arc::new(Exchange::new(budget.clone(), upstream, metrics.clone()));
        let policy = Policy {
            cache: config.cache.clone(),
            flight_wait: config.budget.max_wait_cap,
        };
        let tier = shared
            .as_ref()
            .filter(|_| config.shared.cache)
            .map(|(shared, _)| SharedCache::new(shared.clone(), &config.shared, config.upstream.api));
        // With several replicas one of them runs the sync, under a lease that lapses half an
        // interval after its holder stops renewing it (so another takes over within one).
        let lease = match (&shared, config.sync.enabled) {
            (Some((shared, _)), true) => Some(Arc::new(Lease::new(
                shared.clone(),
                "sync",
                (config.sync.interval / 2).max(Duration::from_millis(500)),
            ))),
            _ => None,
        };
        let syncer = sync.clone().map(|state| Syncer {
            exchange: exchange.clone(),
            store: store.clone(),
            ingest: Ingest::new(store.clone(), config.cache.clone(), config.upstream.api),
            metrics: metrics.clone(),
            state,
            caller: Syncer::caller(),
            lease: lease.clone(),
            tier: tier.clone(),
        });
        let handles = Handles {
            budget: budget.clone(),
            store: store.clone(),
            tokens,
        };
        let proxy = Arc::new(
            Proxy::new(
                policy,
                config.upstream.api,
                store,
                exchange,
                metrics.clone(),
                confirmations,
            )
            .with_shared_cache(tier),
        );
        let consumers = Consumers::from_config(&config.auth);
        if consumers.allows_anonymous() {
            tracing::warn!(
                "auth.allow_anonymous is true: anyone who can reach the proxy can read and update every incident"
            );
        }
        let limits = Limits {
            max_wait: config.budget.max_wait,
            max_wait_cap: config.budget.max_wait_cap,
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: config.server.body_read_timeout,
            max_concurrency: config.server.max_concurrency,
            max_concurrency_wait: config.server.max_concurrency_wait,
            public_url: config.server.public_url.clone(),
        };
        let state = Arc::new(AppState::new(
            proxy, handles, sync, consumers, metrics, limits, access_log,
        ));
        let api = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on server.listen = {}", config.server.listen))?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .with_context(|| format!("cannot listen on server.admin_listen = {}", config.server.admin_listen))?;
        Ok(Application {
            config,
            api,
            admin,
            state,
            budget,
            syncer,
            shared,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr().expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener has an address")
    }

    /// The API router, for driving requests in process (benchmarks) without sockets.
    pub fn api_router(&self) -> Router {
        api::api_router(self.state.clone())
    }

    /// A handle for reloading consumers (SIGHUP) while running.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then drains within the grace period.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (api_addr, admin_addr) = (self.api_addr(), self.admin_addr());
        let Application {
            config,
            api,
            admin,
            state,
            budget,
            syncer,
            shared,
        } = self;
        let lease = syncer.as_ref().and_then(|s| s.lease.clone());
        let refresher = state.tokens.spawn_refresher();
        let heartbeat = shared.map(|(shared, ticks)| shared.spawn_heartbeat(ticks));
        let shared_cache = state.proxy.spawn_shared_cache();
        let syncer = syncer.map(|s| tokio::spawn(crate::sync::run(s)));
        // If this future is dropped instead of finishing (a test killing a replica as a crash
        // would), nothing it started outlives it: no sync renewing its lease, no heartbeat.
        let mut background = Background::default();
        background.watch([&refresher, &heartbeat, &syncer]);
        let (stop_tx, stop_rx) = watch::channel(false);
        let header_timeout = config.server.header_read_timeout;
        let grace = config.server.grace_period;
        let api_state = state.clone();
        let api_service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let state = api_state.clone();
            async move { Ok::<_, Infallible>(api::handle(&state, req).await) }
        });
        let api_task = tokio::spawn(serve(api, api_service, header_timeout, stop_rx.clone(), grace));
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(serve(
            admin,
            TowerToHyperService::new(api::admin_router(state.clone())),
            header_timeout,
            admin_stop_rx,
            grace,
        ));
        background
            .0
            .extend([api_task.abort_handle(), admin_task.abort_handle()]);
        tracing::info!(
            api = %api_addr, admin = %admin_addr,
            upstream = %config.upstream.base_url, upstream_api = ?config.upstream.api, "defender-proxy serving"
        );
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs_f64(),
            "shutting down: draining in-flight requests"
        );
        state.accepting.store(false, Ordering::SeqCst);
        if let Some(s) = &syncer {
            s.abort(); // stop spending quota before draining
        }
        if let Some(lease) = &lease {
            lease.release().await; // another replica takes the sync over at once
        }
        budget.close();
        let _ = stop_tx.send(true);
        let _ = api_task.await;
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        for task in [refresher, syncer, heartbeat].into_iter().flatten().chain(shared_cache) {
            task.abort();
        }
        let log = state.access_log.clone();
        let flushed = tokio::task::spawn_blocking(move || log.flush(ACCESS_LOG_FLUSH))
            .await
            .unwrap_or(false);
        if !flushed {
            tracing::warn!("the access log's last lines could not be written in time");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The tasks a running proxy started, aborted when it is dropped.
#[derive(Default)]
struct Background(Vec<tokio::task::AbortHandle>);

impl Background {
    fn watch<'a, T: 'a>(&mut self, tasks: impl IntoIterator<Item = &'a Option<tokio::task::JoinHandle<T>>>) {
        self.0.extend(tasks.into_iter().flatten().map(|t| t.abort_handle()));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Accepts connections until told to stop, then waits up to `grace` for open ones to finish.
async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// On SIGHUP, re-reads the configuration and applies new consumers and keys. Connections and the
/// cache are untouched; other changed keys need a restart and are reported as such.
pub fn spawn_reloader(state: Arc<AppState>, path: Option<std::path::PathBuf>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match Config::load(path.as_deref()) {
                Ok(config) => {
                    let consumers = Consumers::from_config(&config.auth);
                    let n = consumers.names().len();
                    *state.consumers.write() = Arc::new(consumers);
                    tracing::info!(consumers = n, "configuration reloaded: consumers and keys applied");
                }
                Err(e) => tracing::error!(error = %e, "configuration reload refused; keeping the running one"),
            }
        }
    });
}
