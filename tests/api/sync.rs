//! The incident sync against the simulator: changes reach the cache without Get calls, new
//! incidents are prefetched, failures fall back to the TTL and recover, the sync keeps to its
//! share, and no change is missed while updates land during paging.

use std::time::{Duration, Instant};

use crate::common::{
    cache_status, eventually, exclusive, fault_on, metric, quota, route_quota, spawn_app_with, timed, TestApp,
};
use defender_proxy::{
    config::{Config, QuotaConfig},
    simulator::{FaultKind, Faults, SimConfig},
};

/// A fast sync for tests: a run every 500 ms, with a List quota (here and in the simulator, see
/// [`small_sim`]) large enough for that pace within the default 25% share.
fn sync_on(c: &mut Config) {
    route_quota(c, "list_incidents", &[(1_000, 60)]);
    c.sync.enabled = true;
    c.sync.interval = Duration::from_millis(500);
    c.sync.min_interval = Duration::from_millis(500);
    c.sync.overlap = Duration::from_secs(2);
    c.upstream.timeout = Duration::from_secs(2); // the overlap must cover a page in flight
    c.sync.max_lag = Duration::from_secs(2);
}

fn small_sim() -> SimConfig {
    SimConfig {
        incidents: 2_000,
        ..SimConfig::default()
    }
}

async fn sync_healthy(app: &TestApp) -> bool {
    app.readyz().await["sync"]["healthy"] == true
}

async fn cached_last_update(app: &TestApp, id: i64) -> Option<String> {
    let r = app
        .get(&format!("/api/incidents/{id}"))
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.unwrap();
    v["lastUpdateTime"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_served_fresh_within_one_interval_without_a_get_call() {
    let _timed = timed().await;
    let app = spawn_app_with(small_sim(), sync_on).await;
    eventually("the first sync run", Duration::from_secs(10), || sync_healthy(&app)).await;
    let id = app.existing_id(5);
    assert_eq!(
        app.get(&format!("/api/incidents/{id}")).send().await.unwrap().status(),
        200
    );
    let gets = app.calls("get");
    let changed = app.sim.touch(id).unwrap();
    let started = Instant::now();
    eventually("the change reaches the cache", Duration::from_secs(5), || async {
        cached_last_update(&app, id).await.as_deref() == Some(changed.as_str())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "within about one interval: {:?}",
        started.elapsed()
    );
    let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    assert!(cache_status(&r).contains("hit"));
    let age: u64 = r.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(
        age <= 2,
        "Age counts from the last confirming sync, not the fetch: {age}"
    );
    assert_eq!(app.calls("get"), gets, "no Get call was spent on the change");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_incidents_are_cached_before_anyone_asks() {
    let _timed = timed().await;
    let app = spawn_app_with(small_sim(), sync_on).await;
    eventually("the first sync run", Duration::from_secs(10), || sync_healthy(&app)).await;
    let id = app.sim.create_incident();
    eventually("the new incident is prefetched", Duration::from_secs(5), || async {
        cached_last_update(&app, id).await.is_some()
    })
    .await;
    assert_eq!(app.calls("get"), 0);
    assert!(metric(&app, "defender_proxy_sync_list_calls_total").await >= 2.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_fall_back_to_the_ttl_and_the_sync_recovers() {
    let _timed = timed().await;
    let app = spawn_app_with(small_sim(), |c| {
        sync_on(c);
        c.cache.ttl = Duration::from_secs(1);
    })
    .await;
    eventually("the first sync run", Duration::from_secs(10), || sync_healthy(&app)).await;
    let id = app.existing_id(7);
    let path = format!("/api/incidents/{id}");
    app.get(&path).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = app.get(&path).send().await.unwrap();
    assert!(
        cache_status(&r).contains("hit"),
        "kept fresh past its 1 s TTL by the sync"
    );
    let gets = app.calls("get");
    app.sim
        .set_faults(fault_on("list", FaultKind::Status { code: 503 }, None));
    eventually("the sync is reported unhealthy", Duration::from_secs(6), || async {
        !sync_healthy(&app).await
    })
    .await;
    let status = app.readyz().await;
    assert!(
        status["sync"]["last_error"].as_str().unwrap().contains("503"),
        "{status}"
    );
    assert!(
        metric(
            &app,
            "defender_proxy_sync_runs_total{tenant=\"default\",result=\"upstream_status\"}"
        )
        .await
            >= 1.0
    );
    // Fallen back to the TTL: an entry last confirmed over a second ago is fetched again.
    let r = app.get(&path).send().await.unwrap();
    assert!(!r.headers()["cache-status"].to_str().unwrap().contains("hit"));
    assert_eq!(app.calls("get"), gets + 1);
    app.sim.set_faults(Faults::default());
    eventually("the sync recovers", Duration::from_secs(6), || sync_healthy(&app)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = app.get(&path).send().await.unwrap();
    assert!(cache_status(&r).contains("hit"), "fresh again through the sync");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_keeps_to_its_share_while_callers_saturate_the_list_quota() {
    let _exclusive = exclusive().await;
    let mut sim = small_sim();
    sim.quotas.list = vec![quota(20, 2)];
    let app = spawn_app_with(sim, |c| {
        sync_on(c);
        route_quota(c, "list_incidents", &[(20, 2)]);
        c.sync.max_share = 0.25; // at most 5 calls per 2 s
    })
    .await;
    let started = Instant::now();
    let mut callers = Vec::new();
    for w in 0..8 {
        let req_base = app.url("/api/incidents");
        let (client, key) = (app.client.clone(), app.key.clone());
        callers.push(tokio::spawn(async move {
            let mut ok = 0u32;
            let mut n = 0u32;
            while started.elapsed() < Duration::from_secs(5) {
                n += 1;
                let url = format!("{req_base}?$top={}&$skip={}", 1 + w, n);
                let r = client
                    .get(url)
                    .bearer_auth(&key)
                    .header("prefer", "wait=0")
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    ok += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ok
        }));
    }
    let mut served = 0;
    for c in callers {
        served += c.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sync_calls = metric(&app, "defender_proxy_sync_list_calls_total").await;
    let stats = app.stats();
    assert_eq!(stats.calls["list"].throttled, 0);
    crate::common::assert_windows(&stats.calls["list"].at_ms, 20, 2_000);
    let allowed = 5.0 * (elapsed / 2.0).ceil() + 5.0;
    assert!(
        sync_calls <= allowed,
        "sync spent {sync_calls} list calls in {elapsed:.1} s (share allows {allowed})"
    );
    assert!(
        served as f64 >= stats.calls["list"].total as f64 - sync_calls - 1.0,
        "callers got the rest"
    );
    assert!(served > 20, "callers were not starved: {served}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_missed_while_updates_land_during_paging() {
    let _timed = timed().await;
    let mut sim = small_sim();
    sim.quotas.list = vec![quota(10_000, 60)];
    let app = spawn_app_with(sim, |c| {
        sync_on(c);
        route_quota(c, "list_incidents", &[(10_000, 60)]);
        c.sync.max_share = 1.0;
    })
    .await;
    eventually("the first sync run", Duration::from_secs(10), || sync_healthy(&app)).await;
    // Slow pages (100 ms each), so that runs take long enough for changes to land mid-run.
    app.sim
        .set_faults(fault_on("list", FaultKind::Latency { ms: 100 }, None));
    // About 2.5 s of changes over the whole id range: each sync run pages through several
    // hundred changed incidents while more changes land.
    let sim = app.sim.clone();
    let toucher = tokio::spawn(async move {
        // 600 distinct ids (7919 is prime to 2000), one change every few milliseconds.
        for i in 1..=600i64 {
            let _ = sim.touch(1 + (i * 7919) % 2000);
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    });
    toucher.await.unwrap();
    let runs = metric(&app, "defender_proxy_sync_runs_total{tenant=\"default\",result=\"ok\"}").await;
    eventually(
        "two complete runs after the last change",
        Duration::from_secs(10),
        || async {
            metric(&app, "defender_proxy_sync_runs_total{tenant=\"default\",result=\"ok\"}").await >= runs + 2.0
        },
    )
    .await;
    let stats = app.stats();
    assert!(
        stats.calls["list"].total > 10,
        "several pages were listed: {}",
        stats.calls["list"].total
    );
    let mut changed: Vec<i64> = stats.changes.iter().map(|c| c.id).collect();
    changed.sort();
    changed.dedup();
    assert!(changed.len() > 500, "{} incidents changed", changed.len());
    for id in changed {
        let truth = app.sim.incident_json(id).unwrap()["lastUpdateTime"]
            .as_str()
            .unwrap()
            .to_string();
        let cached = cached_last_update(&app, id).await;
        assert_eq!(
            cached.as_deref(),
            Some(truth.as_str()),
            "incident {id}: the cache missed a change"
        );
    }
    assert_eq!(app.calls("get"), 0);
    app.stop().await;
}

/// Issue 12, item 9: a change set larger than one run's share of List calls completes over
/// several runs (paging resumes where it stopped) instead of starting again at `$skip=0`.
/// 1,500 changed incidents, the documented List quota shape (50 per window, 1,500 per 60
/// windows) scaled to 6 s windows, the default 25% share: 16 pages, 12 per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_set_larger_than_one_runs_share_completes() {
    let _timed = timed().await;
    let sim = SimConfig {
        incidents: 1_500,
        missing_share: 0.0,
        quotas: defender_proxy::simulator::SimQuotas {
            list: vec![quota(50, 6), quota(1_500, 360)],
            ..Default::default()
        },
        ..SimConfig::default()
    };
    let app = spawn_app_with(sim, |c| {
        c.budget.routes.get_mut("list_incidents").unwrap().quotas = vec![
            QuotaConfig {
                limit: 50,
                window: Duration::from_secs(6),
            },
            QuotaConfig {
                limit: 1_500,
                window: Duration::from_secs(360),
            },
        ];
        c.sync.enabled = true;
        c.sync.interval = Duration::from_secs(2);
        c.sync.min_interval = Duration::from_secs(2);
        c.sync.max_lag = Duration::from_secs(4);
        c.sync.overlap = Duration::from_secs(2);
        c.upstream.timeout = Duration::from_secs(2);
        c.sync.lookback = Duration::from_secs(3650 * 24 * 3600); // every incident is "changed"
    })
    .await;
    let started = Instant::now();
    eventually("the first pass completes", Duration::from_secs(20), || {
        sync_healthy(&app)
    })
    .await;
    let pages = app.calls("list");
    println!(
        "1,500 changes synced in {:?} with {pages} List calls",
        started.elapsed()
    );
    assert!(
        (16..=18).contains(&pages),
        "16 pages, not restarted from $skip=0: {pages} List calls"
    );
    assert_eq!(app.stats().calls["list"].throttled, 0);
    for id in [1, 700, 1_500] {
        assert!(cached_last_update(&app, id).await.is_some(), "incident {id} cached");
    }
    app.stop().await;
}

/// Issue 12, item 8: a 404 keeps `cache.negative_ttl` even while the sync is healthy (a new
/// incident with that id is not announced as a change of anything we hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_keeps_its_negative_ttl_while_the_sync_is_healthy() {
    let _timed = timed().await;
    let app = spawn_app_with(small_sim(), |c| {
        sync_on(c);
        c.cache.negative_ttl = Duration::from_secs(1);
    })
    .await;
    eventually("the first sync run", Duration::from_secs(10), || sync_healthy(&app)).await;
    let id = app.missing_id(3);
    let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(sync_healthy(&app).await);
    let r = app
        .get(&format!("/api/incidents/{id}"))
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        504,
        "the 404 expired: {:?}",
        r.headers().get("cache-status")
    );
    app.stop().await;
}

/// While the sync keeps an incident fresh past its TTL, `Cache-Status` says how long the sync's
/// health guarantees it (not `ttl=0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_shown_reflects_the_sync() {
    let _timed = timed().await;
    let app = spawn_app_with(small_sim(), |c| {
        sync_on(c);
        c.cache.ttl = Duration::from_secs(1);
    })
    .await;
    eventually("the first sync run", Duration::from_secs(10), || sync_healthy(&app)).await;
    let id = app.existing_id(9);
    assert_eq!(
        app.get(&format!("/api/incidents/{id}")).send().await.unwrap().status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    let status = cache_status(&r);
    assert!(status.contains("hit"), "{status}");
    assert!(!status.contains("ttl=0"), "{status}");
    app.stop().await;
}
