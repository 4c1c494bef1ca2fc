//! `GET /api/incidents/{id}` end to end: real sockets, the simulator as upstream.

use std::time::Duration;

use crate::common::{
    cache_status, envelope, exclusive, fault_on, quota, route_quota, spawn_app, spawn_app_with, timed,
};
use defender_proxy::simulator::{FaultKind, SimConfig, SimQuotas};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_byte_for_byte_with_cache_status_and_age() {
    let app = spawn_app().await;
    let id = app.existing_id(3);
    let first = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let cs = cache_status(&first);
    assert!(
        cs.starts_with("defender-proxy; fwd=miss") && cs.contains("stored"),
        "{cs}"
    );
    assert!(first.headers().contains_key("ratelimit-policy"));
    assert!(first.headers().contains_key("x-request-id"));
    let ct = first.headers()["content-type"].clone();
    let body1 = first.bytes().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body1).unwrap();
    assert_eq!(v["incidentId"], id);

    let second = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let cs = second.headers()["cache-status"].to_str().unwrap();
    assert!(cs.starts_with("defender-proxy; hit; ttl="), "{cs}");
    assert!(second.headers().contains_key("age"));
    assert_eq!(second.headers()["content-type"], ct, "the upstream's content type");
    assert_eq!(second.bytes().await.unwrap(), body1, "byte for byte");
    assert_eq!(app.calls("get"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_ids_share_an_entry_and_the_upstream_sees_the_canonical_form() {
    let app = spawn_app().await;
    let id = app.existing_id(10);
    for path in [format!("/api/incidents/{id}"), format!("/api/incidents/000{id}")] {
        let r = app.get(&path).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["incidentId"], id);
    }
    assert_eq!(app.calls("get"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_unknown_paths_spend_nothing() {
    let app = spawn_app().await;
    let bad = [
        "/api/incidents/-1",
        "/api/incidents/+1",
        "/api/incidents/0",
        "/api/incidents/9223372036854775808",
        "/api/incidents/%31",
        "/api/incidents/1%2F2",
        "/api/incidents/12abc",
        "/api/incidents/%D9%A1",
        "/api/incidents/..%2F..%2Fmachines",
        "/api/incidents/1?$select=x",
    ];
    for path in bad {
        let r = app.get(path).send().await.unwrap();
        let (status, code, _) = envelope(r).await;
        assert_eq!((status, code.as_str()), (400, "BadRequest"), "{path}");
    }
    for path in [
        "/api/machines",
        "/api/incidents/1/alerts",
        "/",
        "/metrics",
        "/api/incidentsX",
    ] {
        let r = app.get(path).send().await.unwrap();
        let (status, _, _) = envelope(r).await;
        assert_eq!(status, 404, "{path}");
    }
    let r = app
        .client
        .delete(app.url("/api/incidents/1"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(r).await.0, 405);
    let stats = app.stats();
    assert_eq!(
        stats.calls.values().map(|r| r.total).sum::<u64>(),
        0,
        "no upstream call: {stats:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_incident_is_remembered_as_404() {
    let app = spawn_app().await;
    let id = app.missing_id(1);
    for _ in 0..3 {
        let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
    assert_eq!(app.calls("get"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_requests_make_one_upstream_call() {
    let _exclusive = exclusive().await;
    let app = spawn_app().await;
    app.sim
        .set_faults(fault_on("get", FaultKind::Latency { ms: 300 }, None)); // keep the flight open
    let id = app.existing_id(20);
    let path = format!("/api/incidents/{id}");
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let req = app.get(&path);
        tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(app.calls("get"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_directives_no_cache_and_only_if_cached() {
    let app = spawn_app().await;
    let id = app.existing_id(30);
    let path = format!("/api/incidents/{id}");
    let r = app
        .get(&path)
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(r).await.0, 504);
    assert_eq!(app.calls("get"), 0, "only-if-cached never spends budget");
    assert_eq!(app.get(&path).send().await.unwrap().status(), 200);
    let r = app
        .get(&path)
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app.get(&path).header("cache-control", "no-cache").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(cache_status(&r).contains("fwd=request"));
    let r = app
        .get(&path)
        .header("cache-control", "max-age=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.calls("get"), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_when_the_upstream_fails() {
    let _timed = timed().await;
    // ttl 0: every request asks the upstream, but the answer is kept for stale-if-error.
    let app = spawn_app_with(SimConfig::default(), |c| c.cache.ttl = Duration::ZERO).await;
    let id = app.existing_id(40);
    let path = format!("/api/incidents/{id}");
    let fresh = app.get(&path).send().await.unwrap().bytes().await.unwrap();
    for kind in [
        FaultKind::Status { code: 503 },
        FaultKind::Malformed,
        FaultKind::Throttle { retry_after_secs: 1 },
    ] {
        app.sim.set_faults(fault_on("get", kind.clone(), Some(1)));
        let r = app.get(&path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{kind:?}");
        let cs = cache_status(&r);
        assert!(cs.contains("fwd=stale"), "{kind:?}: {cs}");
        assert_eq!(r.bytes().await.unwrap(), fresh);
        tokio::time::sleep(Duration::from_millis(1100)).await; // let the 1 s freeze of the 429 pass
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_and_504_and_are_not_cached() {
    let app = spawn_app_with(SimConfig::default(), |c| {
        c.upstream.timeout = Duration::from_millis(500)
    })
    .await;
    let cases = [
        (FaultKind::Status { code: 500 }, 502),
        (FaultKind::Malformed, 502),
        (FaultKind::WrongId, 502),
        (FaultKind::Hang, 504),
    ];
    for (i, (kind, expected)) in cases.into_iter().enumerate() {
        let id = app.existing_id(100 + 10 * i as i64);
        app.sim.set_faults(fault_on("get", kind.clone(), Some(1)));
        let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
        let (status, _, _) = envelope(r).await;
        assert_eq!(status, expected, "{kind:?}");
        let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{kind:?}: the error was not cached");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_is_retried_once_for_a_read() {
    let app = spawn_app().await;
    let id = app.existing_id(50);
    app.sim.set_faults(fault_on("get", FaultKind::Reset, Some(1)));
    let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.calls("get"), 2, "one failed call, one retry, each spending budget");
    // Two resets in a row: one retry only, then 502.
    let id = app.existing_id(id + 1);
    app.sim.set_faults(fault_on("get", FaultKind::Reset, Some(2)));
    let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    assert_eq!(envelope(r).await.0, 502);
    assert_eq!(app.calls("get"), 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_freezes_the_route_until_the_reset() {
    let _timed = timed().await;
    let app = spawn_app().await;
    app.sim
        .set_faults(fault_on("get", FaultKind::Throttle { retry_after_secs: 3 }, Some(1)));
    let r = app
        .get(&format!("/api/incidents/{}", app.existing_id(60)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let ra: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&ra), "{ra}");
    assert_eq!(app.calls("get"), 1);
    // During the freeze: refused at once when the caller will not wait, with no upstream call.
    let started = std::time::Instant::now();
    let r = app
        .get(&format!("/api/incidents/{}", app.existing_id(70)))
        .header("prefer", "wait=0")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    let ra: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let (status, _, message) = envelope(r).await;
    assert_eq!(status, 429);
    assert!(ra >= 1 && message.contains(&format!("{ra} seconds")), "{message}");
    assert_eq!(app.calls("get"), 1, "no call while frozen");
    // A caller willing to wait is queued until the reset, then served: recovery without restart.
    let r = app
        .get(&format!("/api/incidents/{}", app.existing_id(70)))
        .header("prefer", "wait=10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.calls("get"), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_is_immediate_with_retry_after_and_ratelimit_headers() {
    let _timed = timed().await;
    let sim = SimConfig {
        quotas: SimQuotas {
            get: vec![quota(2, 60)],
            ..SimQuotas::default()
        },
        ..SimConfig::default()
    };
    let app = spawn_app_with(sim, |c| route_quota(c, "get_incident", &[(2, 60)])).await;
    for i in 0..2 {
        assert_eq!(
            app.get(&format!("/api/incidents/{}", app.existing_id(200 + i * 10)))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let started = std::time::Instant::now();
    let r = app
        .get(&format!("/api/incidents/{}", app.existing_id(300)))
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not after waiting"
    );
    assert_eq!(r.status(), 429);
    let ra: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((55..=61).contains(&ra), "{ra}");
    let rl = r.headers()["ratelimit"].to_str().unwrap().to_string();
    assert!(rl.contains("r=0"), "{rl}");
    assert_eq!(app.calls("get"), 2);
    assert_eq!(app.stats().calls["get"].throttled, 0, "the upstream never said 429");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_disconnects_while_queued_spends_nothing() {
    let _timed = timed().await;
    let sim = SimConfig {
        quotas: SimQuotas {
            get: vec![quota(1, 2)],
            ..SimQuotas::default()
        },
        ..SimConfig::default()
    };
    let app = spawn_app_with(sim, |c| route_quota(c, "get_incident", &[(1, 2)])).await;
    assert_eq!(
        app.get(&format!("/api/incidents/{}", app.existing_id(400)))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let queued = app.get(&format!("/api/incidents/{}", app.existing_id(410))).send();
    // Give up after 300 ms: the connection closes while the request waits for its slot.
    assert!(tokio::time::timeout(Duration::from_millis(300), queued).await.is_err());
    let third = app
        .get(&format!("/api/incidents/{}", app.existing_id(420)))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.calls("get"), 2, "the abandoned request never reached the upstream");
    app.stop().await;
}
