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
    api::{self, AppState, Limits},
    auth::Consumers,
    budget::Extras,
    config::Config,
    shared::Shared,
    tenant::{Common, Tenant, Tenants},
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
        let shared = if config.shared.enabled() {
            let shared = Shared::new(&config.shared, metrics.clone()).context("shared state")?;
            // Degraded until the first heartbeat reaches Redis.
            metrics.shared_degraded.set(1);
            Some(shared)
        } else {
            None
        };
        let common = Arc::new(Common {
            metrics: metrics.clone(),
            shared,
            shared_config: config.shared.clone(),
            extras: Arc::new(Extras::default()),
            app_pools: config.app_pools.clone(),
            gate_app_pools: Default::default(),
        });
        let mut tenants = Vec::new();
        for (name, tenant) in config.tenant_configs()? {
            let slot = config.tenant_slot(&name, &tenant);
            tenants.push(Arc::new(Tenant::build(&name, &slot, &tenant, &common)?));
        }
        let consumers = Consumers::from_config(&config.auth);
        if consumers.allows_anonymous() {
            tracing::warn!(
                "auth.allow_anonymous is true: anyone who can reach the proxy can read and update every incident of every tenant"
            );
        }
        let limits = Limits {
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: config.server.body_read_timeout,
            max_concurrency: config.server.max_concurrency,
            max_concurrency_wait: config.server.max_concurrency_wait,
            public_url: config.server.public_url.clone(),
        };
        let state = Arc::new(AppState::new(
            Tenants::new(tenants),
            common,
            consumers,
            limits,
            access_log,
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
        } = self;
        // If this future is dropped instead of finishing (a test killing a replica as a crash
        // would), nothing it started outlives it: no sync renewing its lease, no heartbeat.
        let mut background = Background {
            handles: Vec::new(),
            state: state.clone(),
        };
        let tenants = state.tenants.read().clone();
        for tenant in tenants.iter() {
            tenant.start(tenants.sync_offset(&tenant.name, tenant.config.sync.interval));
        }
        let heartbeat = state.common.shared.as_ref().map(|s| s.spawn_heartbeat());
        background.handles.extend(heartbeat.iter().map(|t| t.abort_handle()));
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
            .handles
            .extend([api_task.abort_handle(), admin_task.abort_handle()]);
        for tenant in tenants.iter() {
            tracing::info!(
                tenant = tenant.name.as_str(),
                upstream = %tenant.config.upstream.base_url,
                upstream_api = ?tenant.config.upstream.api,
                "serving tenant"
            );
        }
        drop(tenants);
        tracing::info!(api = %api_addr, admin = %admin_addr, "defender-proxy serving");
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs_f64(),
            "shutting down: draining in-flight requests"
        );
        state.accepting.store(false, Ordering::SeqCst);
        // Stop spending quota before draining: syncs stop (another replica takes their leases at
        // once) and queued callers are released.
        let tenants = state.tenants.read().clone();
        for tenant in tenants.iter() {
            tenant.stop_spending().await;
        }
        let _ = stop_tx.send(true);
        let _ = api_task.await;
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        drop(background); // the heartbeat and every tenant's background work
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

/// What a running proxy started, stopped when it is dropped: its own tasks, and every tenant's
/// background work (tenants added by reloads included).
struct Background {
    handles: Vec<tokio::task::AbortHandle>,
    state: Arc<AppState>,
}

impl Drop for Background {
    fn drop(&mut self) {
        for t in &self.handles {
            t.abort();
        }
        for tenant in self.state.tenants.read().iter() {
            tenant.stop_tasks();
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

/// On SIGHUP, re-reads the configuration and applies it with [`reload`].
pub fn spawn_reloader(state: Arc<AppState>, path: Option<std::path::PathBuf>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let applied = match Config::load(path.as_deref()) {
                Ok(config) => reload(&state, &config).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = applied {
                tracing::error!(error = %format!("{e:#}"), "configuration reload refused; keeping the running one");
            }
        }
    });
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Tenants now another customer or app registration under the same name (a changed tenant
    /// id, client id, API or upstream): the old stack removed, a new one built, nothing kept.
    pub replaced: Vec<String>,
    /// Tenants whose other settings changed: they keep running as they were until a restart.
    pub unchanged_until_restart: Vec<String>,
    pub consumers: usize,
}

/// Applies a new configuration to a running proxy: consumers and keys, tenants added (built and
/// started), removed (their queued callers released, their sync and token refresh stopped, their
/// cache dropped) and replaced (a new identity under an old name: removed, then added). Tenants
/// and consumers change in one step (both locks, in the order requests take them), so no request
/// sees one without the other. Connections and kept tenants' caches are untouched; a kept
/// tenant whose other settings changed, and other sections, need a restart and are reported as
/// such. Nothing changes when any new tenant cannot be built, when `app_pools` changed (one
/// ledger for every tenant: a restart), or once shutdown has begun.
pub async fn reload(state: &AppState, config: &Config) -> anyhow::Result<Reloaded> {
    anyhow::ensure!(
        state.accepting.load(Ordering::SeqCst),
        "the proxy is shutting down: nothing is reloaded"
    );
    anyhow::ensure!(
        config.app_pools == state.common.app_pools,
        "app_pools changed: they are one ledger for every tenant, and change at the next restart"
    );
    let wanted = config.tenant_configs()?;
    let current = state.tenants.read().clone();
    let mut report = Reloaded::default();
    let mut next = Vec::new();
    for (name, settings) in &wanted {
        let kept = current
            .get(name)
            .filter(|kept| kept.config.identity() == settings.identity());
        match kept {
            Some(kept) => {
                if !kept.config.same_as(settings) {
                    report.unchanged_until_restart.push(name.clone());
                }
                next.push(kept.clone());
            }
            None => {
                let slot = config.tenant_slot(name, settings);
                next.push(Arc::new(Tenant::build(name, &slot, settings, &state.common)?));
                if current.get(name).is_some() {
                    report.replaced.push(name.clone());
                } else {
                    report.added.push(name.clone());
                }
            }
        }
    }
    report.removed = current
        .names()
        .iter()
        .filter(|n| !wanted.contains_key(*n))
        .cloned()
        .collect();
    let next = Arc::new(Tenants::new(next));
    for name in report.added.iter().chain(&report.replaced) {
        if let Some(t) = next.get(name) {
            t.start(next.sync_offset(name, t.config.sync.interval));
        }
    }
    let consumers = Consumers::from_config(&config.auth);
    report.consumers = consumers.names().len();
    {
        let mut who = state.consumers.write();
        let mut tenants = state.tenants.write();
        *who = Arc::new(consumers);
        *tenants = next;
    }
    for name in report.removed.iter().chain(&report.replaced) {
        if let Some(gone) = current.get(name) {
            gone.stop_spending().await;
            gone.stop_tasks();
        }
    }
    if !report.unchanged_until_restart.is_empty() {
        tracing::warn!(
            tenants = ?report.unchanged_until_restart,
            "changed tenant settings take effect at the next restart"
        );
    }
    tracing::info!(
        consumers = report.consumers,
        added = ?report.added,
        removed = ?report.removed,
        replaced = ?report.replaced,
        "configuration reloaded: consumers, keys and tenants applied"
    );
    Ok(report)
}
