//! Several replicas, one budget (issue 15): three proxies in front of one simulator share their
//! ledger through a Redis server each test starts itself (on a free port, nothing on disk), and
//! kills, pauses or restarts as the test needs. The simulator enforces the same scaled quotas
//! (10 per 2 s and 30 per 10 s) and its own arrival timestamps are the judge.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use defender_proxy::{config::Config, demo, simulator::SimConfig};
use parking_lot::Mutex;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::common::{assert_windows, eventually, exclusive, quota, route_quota, start, test_config, TestApp};

/// A `redis-server` of the test's own, on a free port of 127.0.0.1, keeping nothing on disk.
struct RedisProc {
    port: u16,
    child: Option<Child>,
}

fn redis_server() -> String {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("redis-server")
        .to_string()
}

impl RedisProc {
    fn start() -> RedisProc {
        // A port the OS just handed out and took back: free unless someone grabs it meanwhile.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = RedisProc { port, child: None };
        r.restart();
        r
    }

    /// (Re)starts the server on the same port, empty, and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new(redis_server())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--dir", &std::env::temp_dir().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (the CI installs the redis-server package)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap().success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// A key's value, read with redis-cli.
    fn get(&self, key: &str) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw", "GET", key])
            .output()
            .expect("redis-cli runs");
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!v.is_empty()).then_some(v)
    }

    /// Runs one redis-cli command; its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused server ignores SIGKILL until continued on some systems: continue it first.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// The scaled quotas on both sides, three replicas sharing `redis`.
fn replica_config(redis: &RedisProc) -> (SimConfig, Config) {
    let mut sim = SimConfig {
        missing_share: 0.0,
        ..SimConfig::default()
    };
    sim.quotas.get = vec![quota(10, 2), quota(30, 10)];
    let mut c = test_config();
    route_quota(&mut c, "get_incident", &[(10, 2), (30, 10)]);
    c.budget.max_wait = Duration::from_secs(3);
    c.shared.redis_url = Some(SecretString::from(redis.url()));
    c.shared.replicas = 3;
    c.shared.timeout = Duration::from_millis(250);
    c.shared.heartbeat = Duration::from_millis(300);
    (sim, c)
}

/// The simulator and `n` proxies in front of it, all sharing `redis`.
async fn replicas(redis: &RedisProc, n: usize) -> (Vec<TestApp>, Config) {
    replicas_with(redis, n, |_| {}).await
}

/// The same, with the shared cache tier on, and generous quotas for every route (the cache is
/// under test, not the budget).
async fn cached_replicas(redis: &RedisProc, n: usize) -> (Vec<TestApp>, Config) {
    replicas_with(redis, n, |c| {
        c.shared.cache = true;
        route_quota(c, "get_incident", &[(100, 2)]);
    })
    .await
}

async fn replicas_with(redis: &RedisProc, n: usize, adjust: impl FnOnce(&mut Config)) -> (Vec<TestApp>, Config) {
    let (sim, mut config) = replica_config(redis);
    adjust(&mut config);
    let demo = demo::prepare(config, sim, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    (start_replicas(&demo, n).await, demo.config)
}

/// `n` proxies of `demo`'s configuration in front of its simulator, once each reached Redis.
async fn start_replicas(demo: &demo::Demo, n: usize) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(start(demo.config.clone(), demo.simulator.clone(), demo.key.clone()).await);
    }
    for app in &apps {
        eventually("the replica reached redis", Duration::from_secs(5), || async {
            app.readyz().await["shared"]["redis"] == "ok"
        })
        .await;
    }
    apps
}

/// One answer seen by a caller: which replica, when (since the run's start), what status (0: no
/// answer within the client's timeout).
#[derive(Debug, Clone, Copy)]
struct Seen {
    replica: usize,
    at: Duration,
    status: u16,
}

/// `callers` workers spread over the replicas, each asking for cold ids for `run`; 429s back off
/// 200 ms. Every request is bounded by a 10 s client timeout, which counts as status 0.
async fn drive(apps: &[TestApp], callers: usize, run: Duration, first_id: i64) -> Vec<Seen> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..callers {
        let replica = w % apps.len();
        let (url, key) = (apps[replica].url(""), apps[replica].key.clone());
        let (client, seen) = (client.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            let mut id = first_id + w as i64 * 1_000;
            while start.elapsed() < run {
                id += 1; // always a cold id: every answer needs the upstream
                let status = match client
                    .get(format!("{url}/api/incidents/{id}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                seen.lock().push(Seen {
                    replica,
                    at: start.elapsed(),
                    status,
                });
                if status == 429 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let seen = seen.lock().clone();
    let mut statuses = std::collections::BTreeMap::new();
    for s in &seen {
        *statuses.entry(s.status).or_insert(0) += 1;
    }
    println!("answers by status: {statuses:?}");
    seen
}

/// Calls the quotas allow in `span` at most (every window of every quota that fits in it full).
fn allowed(span: Duration) -> u64 {
    [(10u64, 2u64), (30, 10)]
        .iter()
        .map(|&(limit, secs)| limit * span.as_secs().div_ceil(secs))
        .min()
        .unwrap()
}

/// Arrivals at the simulator within `span` of the first one.
fn arrivals_within(at_ms: &[u64], span: Duration) -> u64 {
    let Some(&first) = at_ms.first() else { return 0 };
    at_ms.iter().filter(|&&t| t - first < span.as_millis() as u64).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_spend_one_budget_exactly_and_fully() {
    let _exclusive = exclusive().await;
    let redis = RedisProc::start();
    let (apps, _) = replicas(&redis, 3).await;
    // The issue's run: 60 concurrent callers on cold ids for 30 s.
    let run = Duration::from_secs(30);
    let seen = drive(&apps, 60, run, 1).await;
    for app in &apps {
        let errors = crate::common::metric(app, "defender_proxy_shared_errors_total").await;
        println!("redis errors seen by a replica: {}", errors as u64);
    }
    let stats = apps[0].stats();
    let get = &stats.calls["get"];
    assert_eq!(get.throttled, 0, "the simulator never had to say 429");
    assert_windows(&get.at_ms, 10, 2_000);
    assert_windows(&get.at_ms, 30, 10_000);
    let ok = seen.iter().filter(|s| matches!(s.status, 200 | 404)).count() as u64;
    assert_eq!(get.total, ok, "every upstream call served a caller");
    assert!(
        seen.iter().all(|s| matches!(s.status, 200 | 404 | 429)),
        "only answers and honest refusals"
    );
    for r in 0..3 {
        assert!(
            seen.iter().any(|s| s.replica == r && matches!(s.status, 200 | 404)),
            "replica {r} got slots"
        );
    }
    let used = arrivals_within(&get.at_ms, run);
    let utilisation = used as f64 / allowed(run) as f64;
    println!(
        "three replicas, 60 callers, {} s: {used} upstream calls of {} allowed ({:.0}%), {} refusals, 0 upstream 429s",
        run.as_secs(),
        allowed(run),
        utilisation * 100.0,
        seen.iter().filter(|s| s.status == 429).count()
    );
    assert!(utilisation >= 0.9, "utilisation {utilisation:.2}");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_and_restarted_never_breaks_the_quota_nor_stops_serving() {
    let _exclusive = exclusive().await;
    let mut redis = RedisProc::start();
    let (apps, _) = replicas(&redis, 3).await;
    // The issue's run: Redis killed at 10 s and restarted at 20 s of 30 s.
    let (kill_at, restart_at, run) = (
        Duration::from_secs(10),
        Duration::from_secs(20),
        Duration::from_secs(30),
    );
    let driving = drive(&apps, 60, run, 1);
    let chaos = async {
        tokio::time::sleep(kill_at).await;
        redis.kill();
        // Every replica notices within a heartbeat and a timeout, says so, and stays ready.
        for app in &apps {
            eventually(
                "the replica reports redis unreachable",
                Duration::from_secs(3),
                || async {
                    let r = app.admin_get("/readyz").await;
                    let status = r.status();
                    let body: serde_json::Value = r.json().await.unwrap();
                    status == 200 && body["shared"]["redis"] == "unreachable" && body["shared"]["degraded"] == true
                },
            )
            .await;
            assert_eq!(app.metric("defender_proxy_shared_degraded").await, 1.0);
        }
        tokio::time::sleep(restart_at.saturating_sub(kill_at + Duration::from_secs(3))).await;
        tokio::task::block_in_place(|| redis.restart());
        for app in &apps {
            eventually("the replica is back on redis", Duration::from_secs(5), || async {
                app.readyz().await["shared"]["redis"] == "ok"
            })
            .await;
        }
    };
    let (seen, ()) = tokio::join!(driving, chaos);
    let stats = apps[0].stats();
    let get = &stats.calls["get"];
    assert_eq!(get.throttled, 0, "the simulator never had to say 429");
    assert_windows(&get.at_ms, 10, 2_000);
    assert_windows(&get.at_ms, 30, 10_000);
    assert!(
        seen.iter().all(|s| s.status != 0),
        "no caller left hanging ({} timed out)",
        seen.iter().filter(|s| s.status == 0).count()
    );
    assert!(seen.iter().all(|s| matches!(s.status, 200 | 404 | 429)));
    let phases = [
        ("before", Duration::ZERO, kill_at),
        ("without redis", kill_at, restart_at),
        ("after", restart_at, run),
    ];
    for (name, from, to) in phases {
        for r in 0..3 {
            let served = seen
                .iter()
                .filter(|s| s.replica == r && matches!(s.status, 200 | 404) && s.at >= from && s.at < to)
                .count();
            println!("replica {r} {name}: {served} answers from upstream");
            assert!(served > 0, "replica {r} served upstream answers {name}");
        }
    }
    let used = arrivals_within(&get.at_ms, run);
    println!(
        "redis killed at {} s, back at {} s: {used} upstream calls in {} s ({} allowed at most), 0 upstream 429s, no window over",
        kill_at.as_secs(),
        restart_at.as_secs(),
        run.as_secs(),
        allowed(run)
    );
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_replica_within_a_window_spends_nothing_twice() {
    let _exclusive = exclusive().await;
    let redis = RedisProc::start();
    let (apps, config) = replicas(&redis, 3).await;
    let (sim, key) = (apps[0].sim.clone(), apps[0].key.clone());
    // The 2 s window's 10 calls, spread over the replicas.
    let mut first = Vec::new();
    for i in 0..10 {
        first.push(apps[i % 3].get(&format!("/api/incidents/{}", 1000 + i)).send());
    }
    for r in futures_util::future::join_all(first).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let restarted_at = Instant::now();
    for app in apps {
        app.stop_proxy().await;
    }
    let apps = [
        start(config.clone(), sim.clone(), key.clone()).await,
        start(config.clone(), sim.clone(), key.clone()).await,
        start(config.clone(), sim.clone(), key.clone()).await,
    ];
    // The new processes remember nothing; the ledger in Redis does.
    let mut refused = 0;
    for (i, app) in apps.iter().enumerate() {
        let r = app
            .get(&format!("/api/incidents/{}", 2000 + i))
            .header("prefer", "wait=0")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused += 1;
        }
    }
    let elapsed = restarted_at.elapsed();
    assert!(
        elapsed < Duration::from_millis(1800),
        "restarted within the window: {elapsed:?}"
    );
    assert_eq!(refused, 3, "the window spent before the restart is still spent");
    let get = &sim.stats().calls["get"];
    assert_eq!(get.total, 10);
    assert_eq!(get.throttled, 0);
    assert_windows(&get.at_ms, 10, 2_000);
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_seen_by_one_replica_freezes_the_pool_for_all() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (apps, _) = replicas(&redis, 2).await;
    apps[0].sim.set_faults(crate::common::fault_on(
        "get",
        defender_proxy::simulator::FaultKind::Throttle { retry_after_secs: 5 },
        Some(1),
    ));
    let r = apps[0].get("/api/incidents/7").send().await.unwrap();
    assert_eq!(r.status(), 429);
    // The freeze is written to Redis as the 429 is handed on (a round trip later).
    eventually("the freeze is in redis", Duration::from_secs(2), || async {
        redis.get("{dp:default}:budget:get_incident:frozen").is_some()
    })
    .await;
    // The other replica never saw the 429, yet holds its calls: the freeze is in Redis.
    let r = apps[1]
        .get("/api/incidents/8")
        .header("prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "frozen for every replica");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((4..=5).contains(&retry), "retry-after {retry}");
    assert_eq!(apps[0].calls("get"), 1, "only the throttled call reached the upstream");
    let frozen = &apps[1].readyz().await["frozen_routes"];
    assert_eq!(frozen[0]["route"], "get_incident", "{frozen}");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_one_timeout_then_the_local_share_serves() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (apps, _) = replicas(&redis, 1).await;
    let app = &apps[0];
    assert_eq!(app.get("/api/incidents/1").send().await.unwrap().status(), 200);
    redis.signal("-STOP");
    let t = Instant::now();
    let r = app.get("/api/incidents/2").send().await.unwrap();
    assert_eq!(r.status(), 200, "served on the local share");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "bounded by shared.timeout: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(app.get("/api/incidents/3").send().await.unwrap().status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "no second timeout: {:?}",
        t.elapsed()
    );
    let ready = app.admin_get("/readyz").await;
    assert_eq!(ready.status(), 200, "still ready: it still serves");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["shared"]["redis"], "unreachable", "{body}");
    assert!(crate::common::metric(app, "defender_proxy_shared_errors_total").await >= 1.0);
    redis.signal("-CONT");
    eventually("back on redis and settled", Duration::from_secs(5), || async {
        let b = app.readyz().await;
        b["shared"]["redis"] == "ok" && b["shared"]["settled"] == true
    })
    .await;
    assert_eq!(app.get("/api/incidents/4").send().await.unwrap().status(), 200);
    for app in apps {
        app.stop().await;
    }
}

/// The sync runs on one replica only (the lease holder); when that replica dies without a word,
/// another takes the lease over within one sync interval and resumes from the watermark the
/// holder saved, so no change the simulator made meanwhile is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_runs_once_and_another_replica_resumes_it_when_its_holder_dies() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (mut sim, mut config) = replica_config(&redis);
    sim.incidents = 300;
    sim.quotas.list = vec![quota(1_000, 60)];
    route_quota(&mut config, "list_incidents", &[(1_000, 60)]);
    let interval = Duration::from_secs(2);
    config.sync.enabled = true;
    config.sync.interval = interval;
    config.sync.min_interval = Duration::from_secs(1);
    config.sync.overlap = Duration::from_secs(2);
    config.upstream.timeout = Duration::from_secs(2);
    config.sync.max_lag = Duration::from_secs(4);
    config.sync.lookback = Duration::from_secs(3650 * 24 * 3600);
    // A loaded machine must not make Redis look away (the lease would change hands for that
    // reason, not the one under test).
    config.shared.timeout = Duration::from_secs(1);
    config.shared.heartbeat = Duration::from_millis(1_500);
    config.shared.lease = Duration::from_secs(3);
    // With the shared tier, what the holder's sync writes is served by every replica.
    config.shared.cache = true;
    let demo = demo::prepare(config, sim, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(start(demo.config.clone(), demo.simulator.clone(), demo.key.clone()).await);
    }
    eventually("one holder and one standby", Duration::from_secs(15), || async {
        let (a, b) = (sync_role(&apps[0]).await, sync_role(&apps[1]).await);
        (a == "holder" && b == "standby") || (a == "standby" && b == "holder")
    })
    .await;
    eventually("the holder completes a pass", Duration::from_secs(30), || async {
        for app in &apps {
            let r = app.readyz().await;
            if r["sync"]["role"] == "holder" && r["sync"]["healthy"] == true {
                return true;
            }
        }
        false
    })
    .await;
    let holder = if sync_role(&apps[0]).await == "holder" { 0 } else { 1 };
    let metric = "defender_proxy_sync_list_calls_total{tenant=\"default\"}";
    assert!(apps[holder].metric(metric).await > 0.0);
    // The standby serves what the holder's sync wrote, from Redis: no Get upstream.
    listening(&redis, 2).await;
    let gets = apps[0].stats().calls["get"].total;
    for id in [10, 120, 240] {
        let id = apps[0].existing_id(id);
        let r = apps[1 - holder]
            .get(&format!("/api/incidents/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        apps[0].stats().calls["get"].total,
        gets,
        "served from the sync's writes in Redis"
    );
    assert_eq!(
        apps[1 - holder].metric(metric).await,
        0.0,
        "the standby replica lists nothing"
    );
    let survivor = apps.remove(1 - holder);
    let dead = apps.remove(0);
    dead.kill_proxy().await;
    let killed = Instant::now();
    // Changes the dead replica never saw.
    let mut changed = Vec::new();
    for id in [3, 77, 150, 299] {
        let id = survivor.existing_id(id);
        changed.push((id, survivor.sim.touch(id).expect("exists")));
    }
    eventually("the survivor takes the sync over", Duration::from_secs(10), || async {
        sync_role(&survivor).await == "holder"
    })
    .await;
    let took = killed.elapsed();
    println!("sync taken over {took:?} after its holder died (interval {interval:?})");
    assert!(
        took <= interval + Duration::from_millis(500),
        "taken over within one interval: {took:?}"
    );
    for (id, version) in changed {
        eventually(
            &format!("incident {id}'s change is synced"),
            Duration::from_secs(15),
            || async {
                let r = survivor
                    .get(&format!("/api/incidents/{id}"))
                    .header("cache-control", "only-if-cached")
                    .send()
                    .await
                    .unwrap();
                if r.status() != 200 {
                    return false;
                }
                let v: serde_json::Value = r.json().await.unwrap();
                v["lastUpdateTime"] == version.as_str()
            },
        )
        .await;
    }
    assert!(survivor.metric(metric).await > 0.0);
    survivor.stop().await;
}

/// The sync's role on one replica: "holder", "standby" or "local".
async fn sync_role(app: &TestApp) -> String {
    app.readyz().await["sync"]["role"].as_str().unwrap_or("").to_string()
}

/// Waits until every replica listens for the others' writes (the shared tier is used from then).
async fn listening(redis: &RedisProc, n: usize) {
    eventually("every replica subscribed", Duration::from_secs(5), || async {
        redis
            .cli(&["PUBSUB", "NUMSUB", "{dp:default}:cache:invalidations"])
            .lines()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            == Some(n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_cold_requests_for_one_id_over_three_replicas_make_one_upstream_call() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (apps, _) = cached_replicas(&redis, 3).await;
    listening(&redis, 3).await;
    // A slow upstream answer: every request arrives while the one fetch is still out.
    apps[0].sim.set_faults(crate::common::fault_on(
        "get",
        defender_proxy::simulator::FaultKind::Latency { ms: 300 },
        Some(1),
    ));
    let id = apps[0].existing_id(4242);
    let path = format!("/api/incidents/{id}");
    let t = Instant::now();
    let requests = (0..300).map(|i| apps[i % 3].get(&path).send());
    let answers = futures_util::future::join_all(requests).await;
    let elapsed = t.elapsed();
    let mut statuses = std::collections::BTreeMap::new();
    for a in answers {
        *statuses.entry(a.unwrap().status().as_u16()).or_insert(0) += 1;
    }
    let calls = apps[0].calls("get");
    println!("300 cold requests for one id over three replicas: {statuses:?}, {calls} upstream call(s), {elapsed:?}");
    assert_eq!(statuses.get(&200), Some(&300), "{statuses:?}");
    assert_eq!(calls, 1, "one upstream call for all three replicas");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_one_replica_is_a_hit_in_redis_for_the_others() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (apps, _) = cached_replicas(&redis, 3).await;
    listening(&redis, 3).await;
    let id = apps[0].existing_id(10);
    let missing = apps[0].missing_id(500);
    let path = format!("/api/incidents/{id}");
    let first: serde_json::Value = apps[0].get(&path).send().await.unwrap().json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = apps[1].get(&path).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let age: u64 = r.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age >= 1, "the age counts from the first replica's fetch: {age}");
    assert!(
        crate::common::cache_status(&r).contains("hit"),
        "{}",
        crate::common::cache_status(&r)
    );
    let second: serde_json::Value = r.json().await.unwrap();
    assert_eq!(first, second);
    // The other dialect is translated from the native body on load.
    let graph = apps[2]
        .get(&format!("/v1.0/security/incidents/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(graph.status(), 200);
    assert_eq!(apps[0].calls("get"), 1, "one upstream call for three replicas");
    // 404s are shared too, in each caller's envelope.
    assert_eq!(
        apps[0]
            .get(&format!("/api/incidents/{missing}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = apps[1]
        .get(&format!("/v1.0/security/incidents/{missing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    assert_eq!(apps[0].calls("get"), 2);
    // Lists: one call for every replica, then a write anywhere invalidates them everywhere.
    for app in &apps {
        assert_eq!(app.get("/api/incidents?$top=5").send().await.unwrap().status(), 200);
    }
    assert_eq!(apps[0].calls("list"), 1);
    // Nothing secret in Redis: only cache, budget and membership keys, no token.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(!keys.contains("token"), "{keys}");
    let stored = redis.cli(&["HGETALL", &format!("{{dp:default}}:cache:e:i:{id}")]);
    assert!(
        !stored.contains("Bearer") && !stored.contains(&apps[0].key),
        "no credential stored"
    );
    let r = apps[2]
        .patch(&path, r#"{"assignedTo":"shared@example.com"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(apps[1].get("/api/incidents?$top=5").send().await.unwrap().status(), 200);
    assert_eq!(
        apps[0].calls("list"),
        2,
        "the write invalidated the list on the other replicas"
    );
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_through_one_replica_is_what_every_other_replica_reads_next() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (apps, _) = cached_replicas(&redis, 3).await;
    listening(&redis, 3).await;
    let id = apps[0].existing_id(20);
    let path = format!("/api/incidents/{id}");
    for round in 0..10 {
        // Every replica holds the incident in its first tier.
        for app in &apps {
            assert_eq!(app.get(&path).send().await.unwrap().status(), 200);
        }
        let writer = round % 3;
        let who = format!("analyst{round}@example.com");
        let r = apps[writer]
            .patch(&path, &format!(r#"{{"assignedTo":"{who}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        for (i, app) in apps.iter().enumerate() {
            let got: serde_json::Value = app.get(&path).send().await.unwrap().json().await.unwrap();
            assert_eq!(
                got["assignedTo"],
                who.as_str(),
                "round {round}: replica {i} after a write through {writer}"
            );
        }
    }
    println!(
        "10 PATCHes through rotating replicas, each read back through all three: always the new state ({} upstream GETs)",
        apps[0].calls("get")
    );
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_fetchers_lease_ends_and_another_replica_fetches() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (apps, _) = cached_replicas(&redis, 2).await;
    listening(&redis, 2).await;
    let id = apps[0].existing_id(30);
    // A replica took the lease and died: nobody renews it.
    redis.cli(&[
        "SET",
        &format!("{{dp:default}}:cache:lease:i:{id}"),
        "dead-replica",
        "PX",
        "800",
    ]);
    let t = Instant::now();
    let r = apps[1].get(&format!("/api/incidents/{id}")).send().await.unwrap();
    let waited = t.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "waited for the lease to end, then fetched: {waited:?}"
    );
    assert_eq!(apps[1].calls("get"), 1);
    // Redis away: the shared tier is skipped, misses go upstream as on one replica.
    redis.signal("-STOP");
    let r = apps[0].get(&format!("/api/incidents/{}", id + 1)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    redis.signal("-CONT");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_subscription_broke_catches_up_on_the_writes_it_missed() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (apps, _) = cached_replicas(&redis, 2).await;
    listening(&redis, 2).await;
    let id = apps[0].existing_id(40);
    let path = format!("/api/incidents/{id}");
    assert_eq!(apps[1].get(&path).send().await.unwrap().status(), 200);
    // Every subscription dropped: the write below is published to nobody.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let r = apps[0]
        .patch(&path, r#"{"assignedTo":"missed@example.com"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    listening(&redis, 2).await;
    eventually(
        "replica 1 caught up from the write log",
        Duration::from_secs(3),
        || async {
            let got: serde_json::Value = apps[1].get(&path).send().await.unwrap().json().await.unwrap();
            got["assignedTo"] == "missed@example.com"
        },
    )
    .await;
    for app in apps {
        app.stop().await;
    }
}

/// A limit one replica learns from the upstream's 429 text is kept by every replica: the shared
/// ledger's script checks the learnt limit for all of them (issue 15, item 3, with issue 14's
/// learnt limits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_learnt_by_one_replica_binds_them_all() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (mut sim, mut config) = replica_config(&redis);
    sim.quotas.get = vec![quota(5, 2)];
    route_quota(&mut config, "get_incident", &[(10, 2)]);
    config.shared.replicas = 2;
    let demo = demo::prepare(config, sim, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let apps = start_replicas(&demo, 2).await;
    // Once Redis is settled (every replica reconciled), the shared ledger allows the whole
    // configured quota; replica A alone then runs into the upstream's real limit and learns it
    // from the 429's text.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut first = Vec::new();
    for id in 1..=10 {
        let req = apps[0].get(&format!("/api/incidents/{id}")).header("prefer", "wait=1");
        first.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    for t in first {
        t.await.unwrap();
    }
    let stats = apps[0].stats();
    assert!(stats.calls["get"].throttled >= 1, "the configured limit was too high");
    let throttled = stats.calls["get"].throttled;
    let seen = stats.calls["get"].at_ms.len();
    // Replica B has seen no 429 of its own; it keeps to what A learnt once its heartbeat has
    // read it. Both replicas then send together.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut tasks = Vec::new();
    for id in 100..116 {
        let req = apps[(id % 2) as usize]
            .get(&format!("/api/incidents/{id}"))
            .header("prefer", "wait=30");
        tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let stats = apps[0].stats();
    assert_eq!(
        stats.calls["get"].throttled, throttled,
        "no 429 once the limit was learnt"
    );
    let after: Vec<u64> = stats.calls["get"].at_ms[seen..].to_vec();
    assert_eq!(after.len(), 16);
    assert_windows(&after, 5, 2_000);
    // `config check --learnt` reads what every replica learnt from Redis.
    let learnt = defender_proxy::learnt::from_redis(&demo.config).await.unwrap();
    assert_eq!(learnt.len(), 1, "{learnt:?}");
    assert_eq!((learnt[0].pool.as_str(), learnt[0].limit), ("get_incident", 5));
    let shown = defender_proxy::learnt::render(&demo.config, &learnt, "Redis");
    assert!(
        shown.contains("tenant default, pool get_incident: 5 per 2s (configured: 10 per 2s)"),
        "{shown}"
    );
    for app in apps {
        app.stop().await;
    }
}

/// Tenants and pools across replicas (issue 14 with issue 15): two replicas serve two tenants
/// through one Redis. Both tenants' Gets and Lists draw from one pool of the app across tenants
/// (10 per 3 s), and tenant A's from its own API-wide pool too (6 per 3 s), in the same script
/// step as each route's own quota. The simulator's arrival times show no window of either pool
/// over, and no upstream 429; each tenant's keys are its own (`{dp:<tenant>}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_shared_by_routes_and_tenants_hold_across_replicas() {
    let _timed = crate::common::timed().await;
    let redis = RedisProc::start();
    let (_, mut config) = replica_config(&redis);
    config.shared.replicas = 2;
    config.budget.max_wait = Duration::from_secs(8);
    let pool = |limit| defender_proxy::config::PoolConfig {
        quotas: vec![defender_proxy::config::QuotaConfig {
            limit,
            window: Duration::from_secs(3),
        }],
    };
    config.app_pools.insert("app".into(), pool(10));
    let mut sim = SimConfig::default();
    let names = ["tenant-a".to_string(), "tenant-b".to_string()];
    demo::add_tenants(&mut config, &mut sim, &names);
    for route in ["get_incident", "list_incidents"] {
        let r = config.budget.routes.get_mut(route).unwrap();
        r.quotas = vec![defender_proxy::config::QuotaConfig {
            limit: 100,
            window: Duration::from_secs(60),
        }];
        r.pools = vec!["app".into()];
    }
    let a_budget: figment::value::Dict = toml::from_str(
        "[pools.api]\nquotas = [{ limit = 6, window = \"3s\" }]\n\
         [routes.get_incident]\nquotas = [{ limit = 100, window = \"60s\" }]\npools = [\"app\", \"api\"]\n\
         [routes.list_incidents]\nquotas = [{ limit = 100, window = \"60s\" }]\npools = [\"app\", \"api\"]\n",
    )
    .unwrap();
    config.tenants.get_mut("tenant-a").unwrap().budget = Some(a_budget);
    let demo = demo::prepare(config, sim, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let apps = start_replicas(&demo, 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // settled: every replica reconciled
    let mut tasks = Vec::new();
    for i in 0..48usize {
        let tenant = &names[i % 2];
        let path = if i % 4 < 2 {
            format!("/tenants/{tenant}/api/incidents/{}", 10 + i)
        } else {
            format!("/tenants/{tenant}/api/incidents?$top=1&$skip={i}")
        };
        let req = apps[(i / 2) % 2].get(&path);
        tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 200 || s == 404 || s == 429, "{s}");
    }
    let arrivals = |tenant: &str| {
        let stats = demo.simulator.tenant(tenant).unwrap().stats();
        assert_eq!(
            stats.calls["get"].throttled + stats.calls["list"].throttled,
            0,
            "{tenant}: no 429"
        );
        let mut at: Vec<u64> = stats.calls["get"]
            .at_ms
            .iter()
            .chain(&stats.calls["list"].at_ms)
            .copied()
            .collect();
        at.sort_unstable();
        at
    };
    let (a, b) = (arrivals("tenant-a"), arrivals("tenant-b"));
    assert!(!a.is_empty() && !b.is_empty(), "both tenants were served");
    assert_windows(&a, 6, 3_000);
    let mut both: Vec<u64> = a.iter().chain(&b).copied().collect();
    both.sort_unstable();
    assert!(both.len() >= 20, "the app pool was saturated: {} calls", both.len());
    assert_windows(&both, 10, 3_000);
    // Each tenant's ledger is under its own hash tag (its name and identity); the app pool under
    // one of its own.
    let keys: Vec<String> = redis.cli(&["KEYS", "*"]).lines().map(String::from).collect();
    for (slot, rest) in [
        ("{dp:tenant-a.", "}:budget:api:log"),
        ("{dp:tenant-b.", "}:budget:get_incident:log"),
        ("{dp:_app", "}:budget:app:log"),
    ] {
        assert!(
            keys.iter().any(|k| k.starts_with(slot) && k.ends_with(rest)),
            "{slot}...{rest} in {keys:?}"
        );
    }
    for app in apps {
        app.stop().await;
    }
}
