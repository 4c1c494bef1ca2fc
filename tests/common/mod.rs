//! Test harness: a simulator and a proxy in front of it, both on 127.0.0.1 port 0, and the
//! helpers the tests share (faults, quotas, polling, headers, metrics, the timing lock).

use std::{
    future::Future,
    io::Write,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use defender_proxy::{
    api::AppState,
    config::Config,
    demo,
    simulator::{SimConfig, SimHandle, SimQuota, Stats},
    Application,
};
use tokio::{
    sync::{oneshot, RwLock, RwLockReadGuard, RwLockWriteGuard},
    task::JoinHandle,
};

pub struct TestApp {
    /// The configuration the proxy runs with (for reloads).
    pub config: Config,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub sim: SimHandle,
    /// The key of consumer `demo` (read + write).
    pub key: String,
    pub client: reqwest::Client,
    /// The running proxy's shared state (its access log, metrics, work places).
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Tests that measure time, quota windows or latency hold one of these two guards for their whole
/// run (and CPU-bound tests one of the first kind). Each test binary used to run alone; in one binary on two cores, a flood next door would
/// skew what they measure. Short tests that measure nothing take neither and run beside anything.
static TIMING: RwLock<()> = RwLock::const_new(());

/// For a test that creates heavy load (floods of concurrent connections) or whose measurement
/// would not survive one: it runs alone among the tests that measure time.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    TIMING.write().await
}

/// For a test that measures time, windows or latency with light load of its own: it may run
/// beside other such tests (as it did within its own binary), never beside an [`exclusive`] one.
pub async fn timed() -> RwLockReadGuard<'static, ()> {
    TIMING.read().await
}

/// For a test that keeps a core busy for seconds without measuring time (property tests over
/// simulated hours): it may run beside [`timed`] tests, never beside an [`exclusive`] one, whose
/// flood would lose the core it needs. Blocking: for plain `#[test]` functions.
pub fn cpu_bound() -> RwLockReadGuard<'static, ()> {
    TIMING.blocking_read()
}

/// Waits (bounded) until `check` holds, polling every 50 ms; fails the test with `what` if not.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn quota(limit: u32, secs: u64) -> SimQuota {
    SimQuota {
        limit,
        window: Duration::from_secs(secs),
    }
}

/// A config with both listeners on port 0; tests adjust the rest.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    c.server.grace_period = Duration::from_secs(5);
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(SimConfig::default(), |_| {}).await
}

/// The access log is formatted and written as in production, into `io::sink()` (tests that read
/// it use [`spawn_app_logging_to`]), so test output stays readable.
pub async fn spawn_app_with(sim: SimConfig, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_logging_to(sim, tweak, Box::new(std::io::sink())).await
}

/// Like [`spawn_app_with`], with the access log written to `sink`.
pub async fn spawn_app_logging_to(
    sim: SimConfig,
    tweak: impl FnOnce(&mut Config),
    sink: Box<dyn Write + Send>,
) -> TestApp {
    let mut base = test_config();
    tweak(&mut base);
    let demo = demo::prepare(base, sim, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    start_logging_to(demo.config, demo.simulator, demo.key, sink).await
}

/// A simulator serving a tenant per name (besides its default tenant, which the proxy does not
/// serve), each consenting to the demo's app, and a proxy serving exactly those as
/// `[tenants.<name>]` through that one multi-tenant app registration (`demo::add_tenants`).
/// `sim_tweak` adjusts the simulator (its `tenants[i]` are the names in order), `tweak` the proxy.
pub async fn spawn_tenants(
    names: &[&str],
    sim_tweak: impl FnOnce(&mut SimConfig),
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let mut sim = SimConfig::default();
    let mut base = test_config();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    demo::add_tenants(&mut base, &mut sim, &names);
    sim_tweak(&mut sim);
    tweak(&mut base);
    let demo = demo::prepare(base, sim, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    start(demo.config, demo.simulator, demo.key).await
}

/// Builds and runs a proxy with `config` (listeners on port 0) in front of `sim`.
pub async fn start(config: Config, sim: SimHandle, key: String) -> TestApp {
    start_logging_to(config, sim, key, Box::new(std::io::sink())).await
}

async fn start_logging_to(config: Config, sim: SimHandle, key: String, sink: Box<dyn Write + Send>) -> TestApp {
    let app = Application::build_with_access_log(config.clone(), sink)
        .await
        .expect("proxy builds");
    let (api, admin) = (app.api_addr(), app.admin_addr());
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    TestApp {
        config,
        api,
        admin,
        sim,
        key,
        client,
        state,
        stop: Some(tx),
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(&self.key)
    }

    pub fn patch(&self, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.client
            .patch(self.url(path))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{}", self.admin, path))
            .send()
            .await
            .unwrap()
    }

    /// Waits (at most 10 s) until every access-log line so far has reached its sink.
    pub async fn flush_access_log(&self) -> bool {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.access_log.flush(Duration::from_secs(10)))
            .await
            .unwrap()
    }

    /// A sample's value from the admin listener's /metrics (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Whether the admin listener's /readyz answers 200.
    pub async fn is_ready(&self) -> bool {
        self.admin_get("/readyz").await.status() == 200
    }

    /// The admin listener's /readyz body.
    pub async fn readyz(&self) -> serde_json::Value {
        self.admin_get("/readyz").await.json().await.unwrap()
    }

    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }

    pub fn calls(&self, route: &str) -> u64 {
        self.stats().calls.get(route).map_or(0, |r| r.total)
    }

    /// An id that exists in the simulator (the data set has a share of missing ids).
    pub fn existing_id(&self, from: i64) -> i64 {
        (from..).find(|&id| self.sim.incident_json(id).is_some()).unwrap()
    }

    pub fn missing_id(&self, from: i64) -> i64 {
        (from..).find(|&id| self.sim.incident_json(id).is_none()).unwrap()
    }

    /// Stops the proxy (graceful) and leaves the simulator running (for others in front of it).
    pub async fn stop_proxy(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Kills the proxy as a crash would: its tasks are dropped mid-flight, nothing is handed
    /// over or given back (the simulator keeps running).
    pub async fn kill_proxy(mut self) {
        self.stop.take();
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Stops the proxy (graceful) and the simulator.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.sim.shutdown();
    }
}

/// Parses a Defender error envelope, failing the test if the body is not one.
pub async fn envelope(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.expect("error body is JSON");
    let e = &v["error"];
    assert!(
        e["code"].is_string() && e["message"].is_string() && e["target"].is_string(),
        "envelope: {v}"
    );
    (
        status,
        e["code"].as_str().unwrap().to_string(),
        e["message"].as_str().unwrap().to_string(),
    )
}

/// Checks, from the simulator's own timestamps, that no sliding window held more than `limit`.
pub fn assert_windows(at_ms: &[u64], limit: usize, window_ms: u64) {
    let mut lo = 0;
    for hi in 0..at_ms.len() {
        while at_ms[hi] - at_ms[lo] >= window_ms {
            lo += 1;
        }
        assert!(
            hi - lo < limit,
            "{} calls within {window_ms} ms (limit {limit}) ending at {} ms",
            hi - lo + 1,
            at_ms[hi]
        );
    }
}

/// A fault plan of one rule for `route` ("get", "list", "update" or "token").
pub fn fault_on(
    route: &str,
    kind: defender_proxy::simulator::FaultKind,
    count: Option<u64>,
) -> defender_proxy::simulator::Faults {
    defender_proxy::simulator::Faults {
        rules: vec![defender_proxy::simulator::FaultRule {
            route: Some(route.into()),
            kind,
            count,
            probability: 1.0,
        }],
    }
}

/// Sets one quota on a proxy route (`get_incident`, `list_incidents`, `update_incident`).
pub fn route_quota(c: &mut Config, route: &str, limits: &[(u32, u64)]) {
    c.budget.routes.get_mut(route).unwrap().quotas = limits
        .iter()
        .map(|&(limit, secs)| defender_proxy::config::QuotaConfig {
            limit,
            window: Duration::from_secs(secs),
        })
        .collect();
}

/// The value of a `Cache-Status` header ("" when absent).
pub fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Sums the samples of a metric on the admin listener.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.admin_get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
