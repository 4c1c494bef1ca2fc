//! One tenant's whole stack (token, upstream client, budget, cache, flights, sync), and the set
//! of tenants a running proxy serves.
//!
//! Isolation holds by construction: every object that holds a tenant's data or spends its quota
//! (token source, HTTP client, budget and its freezes, cache, flights, sync state, shared-tier
//! keys, metric labels) is built here for that tenant alone, and a request resolved to a tenant
//! can only reach that tenant's objects. What tenants share is the process: listeners, consumers,
//! the access log, the Redis connection, and the pools every tenant draws from (`app_pools`,
//! counted once for all of them, as the upstream counts its per-app ceiling).
//!
//! A tenant's background work (token refresh, sync, shared-tier listener) belongs to it: dropping
//! the tenant (a reload that removes it, or the proxy stopping) aborts it. Its first sync run
//! starts at its own offset into the interval, so many tenants' syncs spread out instead of
//! listing together, and a slow or throttled tenant delays nobody else's (each sync is a task of
//! its own, spending its own tenant's budget).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use parking_lot::Mutex;
use tokio::{task::AbortHandle, time::Instant};

use crate::{
    budget::{
        redis::{AppPools, RedisGate},
        Budget, Extras, LocalBudget, PoolScope,
    },
    cache::{Confirmations, MokaStore, Store},
    config::{PoolConfig, SharedConfig, TenantConfig},
    exchange::Exchange,
    ingest::Ingest,
    metrics::{CodeLabels, ConsumerLabels, PoolWindowLabels, RequestMetrics, TenantMetrics, WindowLabels},
    proxy::{Policy, Proxy},
    route::RouteKind,
    shared::{lease::Lease, Shared, Tick},
    sync::{SyncState, Syncer},
    tier::SharedCache,
    token::TokenSource,
    upstream::Upstream,
    Metrics,
};

/// What every tenant is built with besides its own settings.
pub struct Common {
    pub metrics: Arc<Metrics>,
    /// The replicas' Redis connection (`shared.redis_url`), when configured.
    pub shared: Option<Arc<Shared>>,
    pub shared_config: SharedConfig,
    /// Every further pool of every tenant, and the pools they all share.
    pub extras: Arc<Extras>,
    pub app_pools: BTreeMap<String, PoolConfig>,
    /// With `[shared]`: the shared ledgers of `app_pools`, one per name for every tenant.
    pub gate_app_pools: AppPools,
}

/// One tenant, ready to serve.
pub struct Tenant {
    pub name: Arc<String>,
    /// Its effective settings (to tell whether a reload changed them).
    pub config: TenantConfig,
    pub proxy: Arc<Proxy>,
    pub budget: Arc<dyn Budget>,
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenSource>,
    /// The incident sync's state, when it runs (for `/readyz` and metrics).
    pub sync: Option<Arc<SyncState>>,
    /// Handles for the samples each request makes, labelled with this tenant.
    pub requests: RequestMetrics,
    pub metrics: TenantMetrics,
    /// Built but not started yet: the sync (taken by [`Tenant::start`]).
    syncer: Mutex<Option<Syncer>>,
    lease: Option<Arc<Lease>>,
    /// Keeps the shared budget's reconciliation running after each heartbeat.
    _tick: Option<Arc<dyn Tick>>,
    tasks: Mutex<Vec<AbortHandle>>,
    sync_task: Mutex<Option<AbortHandle>>,
    started: std::sync::atomic::AtomicBool,
}

impl Tenant {
    /// Builds `name`'s stack from its settings, its shared state (with `[shared]`) under the
    /// Redis slot `slot` ([`crate::config::Config::tenant_slot`]); nothing runs until
    /// [`Tenant::start`].
    pub fn build(name: &str, slot: &str, config: &TenantConfig, common: &Common) -> anyhow::Result<Tenant> {
        let name = Arc::new(name.to_string());
        let context = |what: &str| format!("tenant '{name}': {what}");
        let metrics = TenantMetrics::new(common.metrics.clone(), name.clone());
        let tokens = Arc::new(TokenSource::from_config(&config.token).with_context(|| context("upstream token"))?);
        let upstream = Upstream::new(&config.upstream, tokens.clone()).with_context(|| context("upstream client"))?;
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
        let scope = PoolScope {
            extras: &common.extras,
            tenant: &name,
            app_pools: &common.app_pools,
        };
        let (budget, tick): (Arc<dyn Budget>, Option<Arc<dyn Tick>>) = match &common.shared {
            None => (Arc::new(LocalBudget::for_tenant(&config.budget, scope, None)), None),
            Some(shared) => {
                let (pools, _) = crate::budget::pools(&config.budget);
                let further = crate::budget::further_pools(&config.budget, &common.app_pools);
                let gate = RedisGate::new(
                    shared.clone(),
                    slot,
                    pools,
                    further,
                    &common.gate_app_pools,
                    config.budget.safety_margin,
                );
                let tick: Arc<dyn Tick> = gate.clone();
                shared.on_heartbeat(&tick);
                let budget = LocalBudget::for_tenant(&config.budget, scope, Some(gate));
                (Arc::new(budget), Some(tick))
            }
        };
        let exchange = Arc::new(Exchange::new(budget.clone(), upstream, metrics.clone()));
        let policy = Policy {
            cache: config.cache.clone(),
            flight_wait: config.budget.max_wait_cap,
        };
        let tier = common
            .shared
            .as_ref()
            .filter(|_| common.shared_config.cache)
            .map(|shared| SharedCache::new(shared.clone(), slot, &common.shared_config, config.upstream.api));
        // With several replicas one of them runs the sync, under a lease that lapses half an
        // interval after its holder stops renewing it (so another takes over within one).
        let lease = match (&common.shared, config.sync.enabled) {
            (Some(shared), true) => Some(Arc::new(Lease::new(
                shared.clone(),
                slot,
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
            start_after: Duration::ZERO,
        });
        let proxy = Arc::new(
            Proxy::new(
                policy,
                config.upstream.api,
                store.clone(),
                exchange,
                metrics.clone(),
                confirmations,
            )
            .with_shared_cache(tier),
        );
        Ok(Tenant {
            requests: RequestMetrics::new(&common.metrics, name.clone()),
            name,
            config: config.clone(),
            proxy,
            budget,
            store,
            tokens,
            sync,
            metrics,
            syncer: Mutex::new(syncer),
            lease,
            _tick: tick,
            tasks: Mutex::new(Vec::new()),
            sync_task: Mutex::new(None),
            started: false.into(),
        })
    }

    /// Starts the tenant's background work: token refresh, the shared tier's listener, and the
    /// sync, whose first run waits `sync_after` (its place in the fan-out). Idempotent.
    pub fn start(&self, sync_after: Duration) {
        if self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let mut tasks = self.tasks.lock();
        tasks.extend(self.tokens.spawn_refresher().map(|t| t.abort_handle()));
        tasks.extend(self.proxy.spawn_shared_cache().iter().map(|t| t.abort_handle()));
        if let Some(mut syncer) = self.syncer.lock().take() {
            syncer.start_after = sync_after;
            *self.sync_task.lock() = Some(tokio::spawn(crate::sync::run(syncer)).abort_handle());
        }
    }

    /// Stops spending this tenant's quota: the sync stops (another replica takes its lease at
    /// once) and queued callers are released with 503. Callers in flight finish.
    pub async fn stop_spending(&self) {
        let sync = self.sync_task.lock().take();
        if let Some(s) = sync {
            s.abort();
        }
        if let Some(lease) = &self.lease {
            lease.release().await;
        }
        self.budget.close();
    }

    /// Stops the tenant's background work (token refresh, sync, shared-tier listener).
    pub fn stop_tasks(&self) {
        for t in self.tasks.lock().drain(..).chain(self.sync_task.lock().take()) {
            t.abort();
        }
    }

    /// Whether this tenant can send upstream now (it has a token, or needs none).
    pub fn ready(&self) -> bool {
        self.tokens.ready()
    }

    /// Sets the gauges that mirror this tenant's state (scrape time: one source of truth).
    pub fn export_gauges(&self) {
        let m = &self.metrics;
        let tenant = &self.name;
        for route in RouteKind::ALL {
            let status = self.budget.status(route);
            let labels = m.route(route.name());
            for w in &status.windows {
                let wl = WindowLabels {
                    tenant: tenant.clone(),
                    route: route.name(),
                    pool: w.pool.to_string(),
                    window: format!("{}s", w.quota.length.as_secs()),
                };
                m.budget_remaining.get_or_create(&wl).set(i64::from(w.remaining));
                m.budget_limit.get_or_create(&wl).set(i64::from(w.quota.limit));
            }
            m.queue_depth.get_or_create(&labels).set(status.queued as i64);
            for f in &status.flows {
                m.consumer_queue_depth
                    .get_or_create(&ConsumerLabels {
                        tenant: tenant.clone(),
                        route: route.name(),
                        consumer: f.flow.clone(),
                    })
                    .set(f.queued as i64);
            }
            m.queue_capacity
                .get_or_create(&labels)
                .set(status.queue_capacity as i64);
            m.frozen_seconds
                .get_or_create(&labels)
                .set(status.frozen_for.map_or(0.0, |d| d.as_secs_f64()));
        }
        for learnt in self.budget.learnt() {
            for q in &learnt.after {
                m.budget_learnt_limit
                    .get_or_create(&PoolWindowLabels {
                        tenant: tenant.clone(),
                        pool: learnt.pool.clone(),
                        window_seconds: q.length.as_secs(),
                    })
                    .set(i64::from(q.limit));
            }
        }
        let one = m.tenant_labels();
        if let Some(sync) = &self.sync {
            m.sync_lag
                .get_or_create(&one)
                .set(sync.status(Instant::now()).lag_seconds.unwrap_or(f64::NAN));
        }
        let usage = self.store.usage();
        m.cache_entries.get_or_create(&one).set(usage.entries as i64);
        m.cache_bytes.get_or_create(&one).set(usage.bytes as i64);
        if let Some(exp) = self.tokens.expires_at_unix() {
            m.token_expiry.get_or_create(&one).set(exp as i64);
        }
        for (code, n) in self.tokens.failures() {
            let c = m.token_refresh_failures.get_or_create(&CodeLabels {
                tenant: tenant.clone(),
                code,
            });
            let seen = c.get();
            if n > seen {
                c.inc_by(n - seen);
            }
        }
    }

    /// This tenant's part of `/readyz`.
    pub fn readiness(&self) -> serde_json::Value {
        let (mut frozen, mut queues) = (Vec::new(), Vec::new());
        for r in RouteKind::ALL {
            let st = self.budget.status(r);
            if let Some(d) = st.frozen_for {
                frozen.push(serde_json::json!({"route": r.name(), "frozen_seconds": d.as_secs_f64()}));
            }
            queues.push(serde_json::json!({"route": r.name(), "queued": st.queued, "capacity": st.queue_capacity, "consumers": st.flows}));
        }
        serde_json::json!({
            "upstream_token": if self.ready() { "ok" } else { "unavailable" },
            "upstream_api": self.config.upstream.api,
            "queues": queues,
            "frozen_routes": frozen,
            "sync": self.sync.as_ref().map(|s| s.status(Instant::now())),
            // Limits adopted from the upstream's 429 text, stricter than the configuration.
            "learnt_limits": self.budget.learnt().iter().flat_map(|l| l.after.iter().map(|q| serde_json::json!({
                "pool": l.pool, "limit": q.limit, "window_seconds": q.length.as_secs()
            }))).collect::<Vec<_>>(),
        })
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

/// The tenants a running proxy serves, by name; replaced whole when a reload adds or removes
/// one.
#[derive(Default)]
pub struct Tenants {
    by_name: BTreeMap<String, Arc<Tenant>>,
    /// The names, sorted (for the consumers' sole-tenant rule and fan-out offsets).
    names: Vec<String>,
}

impl Tenants {
    pub fn new(tenants: impl IntoIterator<Item = Arc<Tenant>>) -> Tenants {
        let by_name: BTreeMap<String, Arc<Tenant>> = tenants.into_iter().map(|t| (t.name.to_string(), t)).collect();
        let names = by_name.keys().cloned().collect();
        Tenants { by_name, names }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Where tenant `name`'s first sync run falls in the interval: tenant `i` of `n` (by name)
    /// starts `interval * i / n` in.
    pub fn sync_offset(&self, name: &str, interval: Duration) -> Duration {
        let n = self.names.len().max(1) as u32;
        let i = self.names.iter().position(|t| t == name).unwrap_or(0) as u32;
        interval * i / n
    }
}
