//! Prometheus metrics, named `defender_proxy_*`, with bounded labels only (route, status class
//! or code, configured consumer names, fixed reasons): never incident ids, keys or addresses.
//!
//! Counters and histograms are updated where things happen; gauges that mirror state (budget,
//! queue, cache size, token expiry) are read from their owners at scrape time, so there is one
//! source of truth and no background updater.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{atomic::AtomicU64, Arc},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::route::RouteKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: Arc<String>,
    pub route: &'static str,
    pub status: u16,
    pub consumer: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub tenant: Arc<String>,
    pub route: &'static str,
}

/// A route and the pool it draws from (its own, named like it, or a shared one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoutePoolLabels {
    pub tenant: Arc<String>,
    pub route: &'static str,
    pub pool: String,
}

/// A pool of quotas and one of its windows (for limits learnt from the upstream).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolWindowLabels {
    pub tenant: Arc<String>,
    pub pool: String,
    pub window_seconds: u64,
}

/// Per-consumer budget labels: the route and the consumer's flow name (configured names,
/// `anonymous` and `sync` only).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub tenant: Arc<String>,
    pub route: &'static str,
    pub consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerRejectLabels {
    pub tenant: Arc<String>,
    pub route: &'static str,
    pub consumer: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub tenant: Arc<String>,
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub tenant: Arc<String>,
    pub route: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    pub tenant: Arc<String>,
    pub route: &'static str,
    /// The pool the window belongs to (the route's own by default, named like the route).
    pub pool: String,
    pub window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub tenant: Arc<String>,
    pub route: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub tenant: Arc<String>,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A tenant alone (gauges of one tenant's cache, token and sync).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantResultLabels {
    pub tenant: Arc<String>,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

type FGauge = Gauge<f64, AtomicU64>;

/// All metrics of one proxy instance.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histograms<RouteLabels>,
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub cache_entries: Family<TenantLabels, Gauge>,
    pub cache_bytes: Family<TenantLabels, Gauge>,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_duration: Histograms<RouteLabels>,
    pub budget_remaining: Family<WindowLabels, Gauge>,
    pub budget_limit: Family<WindowLabels, Gauge>,
    pub queue_depth: Family<RouteLabels, Gauge>,
    pub queue_capacity: Family<RouteLabels, Gauge>,
    pub queue_wait: Histograms<RouteLabels>,
    pub rejected: Family<RejectLabels, Counter>,
    pub upstream_throttled: Family<RouteLabels, Counter>,
    pub retry_after_capped: Family<RouteLabels, Counter>,
    /// 429s that stated no limit (Graph's carry only `Retry-After`).
    pub upstream_throttled_unstated: Family<RoutePoolLabels, Counter>,
    /// Limits adopted from the upstream's 429 text, by pool and window.
    pub budget_learnt_limit: Family<PoolWindowLabels, Gauge>,
    pub consumer_granted: Family<ConsumerLabels, Counter>,
    pub consumer_wait: Histograms<ConsumerLabels>,
    pub consumer_queue_depth: Family<ConsumerLabels, Gauge>,
    pub consumer_rejected: Family<ConsumerRejectLabels, Counter>,
    pub frozen_seconds: Family<RouteLabels, FGauge>,
    pub token_expiry: Family<TenantLabels, Gauge>,
    pub token_refresh_failures: Family<CodeLabels, Counter>,
    pub sync_runs: Family<TenantResultLabels, Counter>,
    pub sync_refreshed: Family<TenantLabels, Counter>,
    pub sync_list_calls: Family<TenantLabels, Counter>,
    pub sync_lag: Family<TenantLabels, FGauge>,
    pub access_log_lines: Counter,
    pub access_log_dropped: Counter,
    /// 1 while Redis is unreachable and this replica spends only its local share.
    pub shared_degraded: Gauge,
    /// Failed Redis calls, by result (`timeout`, `error`, `down`, `config`).
    pub shared_errors: Family<ResultLabels, Counter>,
}

/// Histogram families with explicit buckets (never summaries: those cannot be aggregated).
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS.iter().copied())
}

fn upstream_histogram() -> Histogram {
    Histogram::new(UPSTREAM_BUCKETS.iter().copied())
}

fn queue_histogram() -> Histogram {
    Histogram::new(QUEUE_BUCKETS.iter().copied())
}

const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const UPSTREAM_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const QUEUE_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("defender_proxy");
        let requests = Family::default();
        registry.register(
            "requests",
            "API requests answered, by route, status and consumer",
            requests.clone(),
        );
        let request_duration = Histograms::new_with_constructor(request_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "request_duration",
            "Time to answer an API request",
            Unit::Seconds,
            request_duration.clone(),
        );
        let cache_lookups = Family::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by kind and result",
            cache_lookups.clone(),
        );
        let cache_entries = Family::default();
        registry.register("cache_entries", "Entries in the cache", cache_entries.clone());
        let cache_bytes = Family::default();
        registry.register_with_unit("cache", "Bytes held by the cache", Unit::Bytes, cache_bytes.clone());
        let upstream_requests = Family::default();
        registry.register(
            "upstream_requests",
            "Calls sent to Defender, by route and answer",
            upstream_requests.clone(),
        );
        let upstream_duration = Histograms::new_with_constructor(upstream_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "upstream_request_duration",
            "Time for Defender to answer",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let budget_remaining = Family::default();
        registry.register(
            "budget_remaining",
            "Calls left in the current sliding window, per route and window",
            budget_remaining.clone(),
        );
        let budget_limit = Family::default();
        registry.register(
            "budget_limit",
            "Quota per sliding window, per route and window",
            budget_limit.clone(),
        );
        let queue_depth = Family::default();
        registry.register(
            "queue_depth",
            "Callers waiting for an upstream slot",
            queue_depth.clone(),
        );
        let queue_capacity = Family::default();
        registry.register(
            "queue_capacity",
            "Most callers that may wait per route",
            queue_capacity.clone(),
        );
        let queue_wait = Histograms::new_with_constructor(queue_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "queue_wait",
            "Time spent waiting for an upstream slot",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let rejected = Family::default();
        registry.register(
            "rejected",
            "Requests the proxy answered 429 itself, by route and reason",
            rejected.clone(),
        );
        let upstream_throttled = Family::default();
        registry.register(
            "upstream_throttled",
            "429 answers received from the upstream",
            upstream_throttled.clone(),
        );
        let upstream_throttled_unstated = Family::default();
        registry.register(
            "upstream_throttled_unstated",
            "Upstream 429s that stated no limit (Graph's): many suggest a configured limit is too high",
            upstream_throttled_unstated.clone(),
        );
        let budget_learnt_limit = Family::default();
        registry.register(
            "budget_learnt_limit",
            "Limits adopted from the upstream's 429 text (stricter than configured), by pool and window",
            budget_learnt_limit.clone(),
        );
        let retry_after_capped = Family::default();
        registry.register(
            "upstream_retry_after_capped",
            "Upstream 429s that asked for a pause longer than the route's longest window (capped)",
            retry_after_capped.clone(),
        );
        let consumer_granted = Family::default();
        registry.register(
            "consumer_slots_granted",
            "Upstream slots granted, by route and consumer (who is using the quota)",
            consumer_granted.clone(),
        );
        let consumer_wait = Histograms::new_with_constructor(queue_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "consumer_queue_wait",
            "Time a consumer's calls waited for an upstream slot",
            Unit::Seconds,
            consumer_wait.clone(),
        );
        let consumer_queue_depth = Family::default();
        registry.register(
            "consumer_queue_depth",
            "A consumer's calls waiting for an upstream slot",
            consumer_queue_depth.clone(),
        );
        let consumer_rejected = Family::default();
        registry.register(
            "consumer_rejected",
            "A consumer's calls refused a slot, by route and reason",
            consumer_rejected.clone(),
        );
        let frozen_seconds = Family::<RouteLabels, FGauge>::default();
        registry.register_with_unit(
            "budget_frozen",
            "Time until the route may call Defender again after a 429",
            Unit::Seconds,
            frozen_seconds.clone(),
        );
        let token_expiry = Family::default();
        registry.register_with_unit(
            "token_expiry_timestamp",
            "Unix time at which the current upstream token expires",
            Unit::Seconds,
            token_expiry.clone(),
        );
        let token_refresh_failures = Family::default();
        registry.register(
            "token_refresh_failures",
            "Failed token requests, by the token endpoint's error code",
            token_refresh_failures.clone(),
        );
        let sync_runs = Family::default();
        registry.register(
            "sync_runs",
            "Incident sync runs, by result (ok or why it did not complete)",
            sync_runs.clone(),
        );
        let sync_refreshed = Family::default();
        registry.register(
            "sync_incidents_refreshed",
            "Incidents written into the cache by the sync",
            sync_refreshed.clone(),
        );
        let sync_list_calls = Family::default();
        registry.register(
            "sync_list_calls",
            "List calls spent by the incident sync",
            sync_list_calls.clone(),
        );
        let sync_lag = Family::<TenantLabels, FGauge>::default();
        registry.register_with_unit(
            "sync_watermark_lag",
            "Time since the start of the last complete sync run (what cached incidents are confirmed up to)",
            Unit::Seconds,
            sync_lag.clone(),
        );
        let access_log_lines = Counter::default();
        registry.register("access_log_lines", "Access log lines written", access_log_lines.clone());
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the log writer could not keep up (or its output failed)",
            access_log_dropped.clone(),
        );
        let shared_degraded = Gauge::default();
        registry.register(
            "shared_degraded",
            "1 while Redis is unreachable (or not configured as reached yet) and this replica spends only its share of each quota",
            shared_degraded.clone(),
        );
        let shared_errors = Family::default();
        registry.register(
            "shared_errors",
            "Redis calls that failed or timed out, by result",
            shared_errors.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information", build_info);
        Metrics {
            registry,
            requests,
            request_duration,
            cache_lookups,
            cache_entries,
            cache_bytes,
            upstream_requests,
            upstream_duration,
            budget_remaining,
            budget_limit,
            queue_depth,
            queue_capacity,
            queue_wait,
            rejected,
            upstream_throttled,
            upstream_throttled_unstated,
            budget_learnt_limit,
            retry_after_capped,
            consumer_granted,
            consumer_wait,
            consumer_queue_depth,
            consumer_rejected,
            frozen_seconds,
            token_expiry,
            token_refresh_failures,
            sync_runs,
            sync_refreshed,
            sync_list_calls,
            sync_lag,
            access_log_lines,
            access_log_dropped,
            shared_degraded,
            shared_errors,
        }
    }

    /// Forgets every gauge that mirrors state read at scrape time, before it is set afresh.
    pub fn clear_mirrors(&self) {
        self.budget_remaining.clear();
        self.budget_limit.clear();
        self.queue_depth.clear();
        self.queue_capacity.clear();
        self.consumer_queue_depth.clear();
        self.frozen_seconds.clear();
        self.budget_learnt_limit.clear();
        self.sync_lag.clear();
        self.cache_entries.clear();
        self.cache_bytes.clear();
        self.token_expiry.clear();
    }

    /// The OpenMetrics text exposition (gauges must have been refreshed by the caller).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The metrics as one tenant's parts record them: every sample they make carries the tenant.
#[derive(Clone)]
pub struct TenantMetrics {
    all: Arc<Metrics>,
    /// The configured tenant name (a bounded label).
    pub tenant: Arc<String>,
}

impl std::ops::Deref for TenantMetrics {
    type Target = Metrics;
    fn deref(&self) -> &Metrics {
        &self.all
    }
}

impl TenantMetrics {
    pub fn new(all: Arc<Metrics>, tenant: Arc<String>) -> TenantMetrics {
        TenantMetrics { all, tenant }
    }

    pub fn route(&self, route: &'static str) -> RouteLabels {
        RouteLabels {
            tenant: self.tenant.clone(),
            route,
        }
    }

    pub fn tenant_labels(&self) -> TenantLabels {
        TenantLabels {
            tenant: self.tenant.clone(),
        }
    }

    pub fn sync_run(&self, result: &'static str) {
        self.sync_runs
            .get_or_create(&TenantResultLabels {
                tenant: self.tenant.clone(),
                result,
            })
            .inc();
    }

    pub fn cache_lookup(&self, kind: &'static str, result: &'static str) {
        self.cache_lookups
            .get_or_create(&CacheLabels {
                tenant: self.tenant.clone(),
                kind,
                result,
            })
            .inc();
    }
}

/// The samples a request itself makes (`requests_total`, its duration, a hit's lookup), as
/// handles made once per tenant: no label hashing per request on the hit path. Requests that
/// reach no tenant (unauthenticated, unknown tenant) count under the empty tenant label.
pub struct RequestMetrics {
    tenant: Arc<String>,
    /// `request_duration_seconds` by route index (the last: no route).
    durations: Vec<Histogram>,
    /// `cache_lookups_total` for [incident, list] x [hit, negative] (none without a tenant: no
    /// cache is looked up).
    lookups: Option<[[Counter; 2]; 2]>,
    /// `requests_total` by (address of the consumer's name, route index, status). The value keeps
    /// the name alive, so its address cannot be reused by another name after a reload.
    requests: parking_lot::RwLock<RequestCounters>,
}

/// `requests_total` handles by (consumer name address, route index, status).
type RequestCounters = HashMap<(usize, usize, u16), (Arc<String>, Counter), BuildHasherDefault<KeyHasher>>;

/// A multiply-rotate hasher for the small integer keys of [`RequestMetrics`]: SipHash's
/// resistance to chosen keys is not needed for keys made of configured consumers, and it costs
/// more than the rest of the lookup.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
}

/// A route's metric name by index; the index past the last route is "other" (no route).
pub fn route_name(index: usize) -> &'static str {
    RouteKind::ALL.get(index).map_or("other", |r| r.name())
}

impl RequestMetrics {
    /// Handles for `tenant`'s requests; the empty name for requests that reach no tenant.
    pub fn new(metrics: &Metrics, tenant: Arc<String>) -> RequestMetrics {
        let lookup = |kind, result| {
            metrics
                .cache_lookups
                .get_or_create(&CacheLabels {
                    tenant: tenant.clone(),
                    kind,
                    result,
                })
                .clone()
        };
        RequestMetrics {
            durations: (0..=RouteKind::ALL.len())
                .map(|i| {
                    metrics
                        .request_duration
                        .get_or_create(&RouteLabels {
                            tenant: tenant.clone(),
                            route: route_name(i),
                        })
                        .clone()
                })
                .collect(),
            lookups: (!tenant.is_empty()).then(|| {
                [
                    [lookup("incident", "hit"), lookup("incident", "negative")],
                    [lookup("list", "hit"), lookup("list", "negative")],
                ]
            }),
            requests: parking_lot::RwLock::new(HashMap::default()),
            tenant,
        }
    }

    /// The tenant label these handles count under (empty: no tenant).
    pub fn tenant(&self) -> &Arc<String> {
        &self.tenant
    }

    /// A fresh hit of `kind` (0 incident, 1 list), `negative` for a remembered 404.
    pub fn hit(&self, kind: usize, negative: bool) {
        if let Some(lookups) = &self.lookups {
            lookups[kind][usize::from(negative)].inc();
        }
    }

    /// One answered request: its count and its duration.
    pub fn answered(&self, metrics: &Metrics, consumer: &Arc<String>, route: usize, status: u16, took: f64) {
        self.durations[route.min(self.durations.len() - 1)].observe(took);
        let key = (Arc::as_ptr(consumer) as usize, route, status);
        if let Some((_, c)) = self.requests.read().get(&key) {
            c.inc();
            return;
        }
        let counter = metrics
            .requests
            .get_or_create(&RequestLabels {
                tenant: self.tenant.clone(),
                route: route_name(route),
                status,
                consumer: consumer.clone(),
            })
            .clone();
        counter.inc();
        self.requests.write().insert(key, (consumer.clone(), counter));
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4, for scrapers and tools (promtool)
/// that do not ask for OpenMetrics: counter families are named with their `_total` suffix, and
/// the `# UNIT` and `# EOF` lines go. Samples are identical in both formats.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let m = TenantMetrics::new(Arc::new(Metrics::new()), Arc::new("default".into()));
        m.cache_lookup("incident", "hit");
        let text = to_prometheus_text(&m.encode());
        assert!(
            text.contains("# TYPE defender_proxy_cache_lookups_total counter"),
            "{text}"
        );
        assert!(text.contains("# HELP defender_proxy_cache_lookups_total "));
        assert!(
            text.contains("defender_proxy_cache_lookups_total{tenant=\"default\",kind=\"incident\",result=\"hit\"} 1")
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(text.contains("# TYPE defender_proxy_cache_bytes gauge"), "{text}");
    }
}
