//! Correct under adversity: slow and failing dependencies, races and hostile values, end to end
//! against the simulator with injected faults. Each test names the promise it holds.

use std::time::{Duration, Instant};

use crate::common::{
    assert_windows, cache_status, envelope, eventually, exclusive, fault_on, metric, quota, route_quota,
    spawn_app_with, start, test_config, timed,
};
use defender_proxy::{
    demo,
    simulator::{FaultKind, Faults, SimConfig, SimQuotas},
};

fn sim_with(get: &[(u32, u64)], list: &[(u32, u64)], update: &[(u32, u64)]) -> SimConfig {
    let q = |v: &[(u32, u64)]| v.iter().map(|&(l, s)| quota(l, s)).collect::<Vec<_>>();
    let d = SimQuotas::default();
    SimConfig {
        quotas: SimQuotas {
            get: if get.is_empty() { d.get.clone() } else { q(get) },
            list: if list.is_empty() { d.list.clone() } else { q(list) },
            update: if update.is_empty() { d.update.clone() } else { q(update) },
            ..d
        },
        ..SimConfig::default()
    }
}

/// Item 1 (and 2): the budget counts arrivals. The first token request takes a second; a burst
/// that arrives meanwhile must not be counted before its token is in hand, or it lands a second
/// late and the next burst, granted one window after the (early) count, lands with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_token_delays_the_count_not_the_arrival() {
    let _exclusive = exclusive().await;
    let (limit, window) = (5, 4);
    let mut config = test_config();
    route_quota(&mut config, "get_incident", &[(limit, window)]);
    let sim = sim_with(&[(limit, window)], &[], &[]);
    let demo = demo::prepare(config, sim, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // The proxy's first token request (from its refresher, at start) is slow.
    demo.simulator
        .set_faults(fault_on("token", FaultKind::Latency { ms: 1000 }, Some(1)));
    let app = start(demo.config, demo.simulator, demo.key).await;
    let burst = |from: i64| {
        let ids: Vec<i64> = (0..limit as i64).map(|i| app.existing_id(from + i * 7)).collect();
        let reqs: Vec<_> = ids
            .iter()
            .map(|id| app.get(&format!("/api/incidents/{id}")).send())
            .collect();
        futures_util::future::join_all(reqs)
    };
    let t0 = tokio::time::Instant::now();
    let first = burst(1000).await;
    assert!(first.iter().all(|r| r.as_ref().unwrap().status() == 200));
    // One window (plus the margin) after the first burst was sent: had its slots been counted
    // before its token came, these would be granted at once and land with the first burst.
    tokio::time::sleep_until(t0 + Duration::from_millis(4300)).await;
    let second = burst(3000).await;
    assert!(second.iter().all(|r| r.as_ref().unwrap().status() == 200));
    let stats = app.stats();
    let get = &stats.calls["get"];
    assert_eq!(get.throttled, 0, "the upstream never had to say 429");
    assert_windows(&get.at_ms, limit as usize, window * 1000);
    // Grant to arrival: the i-th call of the second burst may be granted no earlier than one
    // window plus the margin (5% of 4 s = 200 ms) after the i-th of the first; on the
    // simulator's clock, how much later than that did it arrive?
    let mut at = get.at_ms.clone();
    at.sort_unstable();
    let n = limit as usize;
    let late: Vec<i64> = (0..n)
        .map(|i| at[n + i] as i64 - at[i] as i64 - (window * 1000 + 200) as i64)
        .collect();
    println!("second burst: arrival minus earliest allowed grant, per call (ms): {late:?}");
    assert!(late.iter().all(|&l| l < 100), "{late:?}");
    app.stop().await;
}

/// Item 3: a token outage spends nothing and answers at once: one token request per backoff
/// step however many callers, 503 with Retry-After in the envelope within two seconds, the full
/// budget there when the endpoint recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_outage_answers_503_at_once_and_spends_nothing() {
    let _timed = timed().await;
    let sim = SimConfig::default();
    let app = spawn_app_with(sim, |_| {}).await;
    // The first token request may already be under way; make every one fail from now on.
    app.sim
        .set_faults(fault_on("token", FaultKind::Status { code: 503 }, None));
    // Wait (bounded) until the proxy has no token: readiness turns false.
    eventually("the proxy to notice the outage", Duration::from_secs(10), || async {
        !app.is_ready().await
    })
    .await;
    let before = app.stats().token_requests;
    let started = Instant::now();
    let reqs: Vec<_> = (0..20)
        .map(|i| {
            let id = app.existing_id(100 + i * 3);
            app.get(&format!("/api/incidents/{id}")).send()
        })
        .collect();
    let answers = futures_util::future::join_all(reqs).await;
    let took = started.elapsed();
    for r in answers {
        let r = r.unwrap();
        assert!(r.headers().contains_key("retry-after"));
        let (status, code, _) = envelope(r).await;
        assert_eq!((status, code.as_str()), (503, "ServiceUnavailable"));
    }
    assert!(took < Duration::from_secs(2), "20 callers answered in {took:?}");
    let spent_tokens = app.stats().token_requests - before;
    assert!(
        spent_tokens <= 3,
        "{spent_tokens} token requests for 20 callers in {took:?}: one per backoff step"
    );
    assert_eq!(app.calls("get"), 0, "nothing reached the upstream");
    assert_eq!(
        metric(
            &app,
            "defender_proxy_budget_remaining{tenant=\"default\",route=\"get_incident\",pool=\"get_incident\",window=\"60s\"}"
        )
        .await,
        100.0,
        "no slot was spent"
    );
    // Recovery: the next backoff step gets a token; the full budget is there.
    app.sim.set_faults(Faults::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = app.existing_id(900);
    loop {
        let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.calls("get"), 1);
    assert_eq!(
        metric(
            &app,
            "defender_proxy_budget_remaining{tenant=\"default\",route=\"get_incident\",pool=\"get_incident\",window=\"60s\"}"
        )
        .await,
        99.0
    );
    app.stop().await;
}

/// Item 4: a 401 on PATCH means Defender applied nothing: refresh the token and retry once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_patch_refreshes_the_token_and_retries_once() {
    let app = spawn_app_with(SimConfig::default(), |_| {}).await;
    let id = app.existing_id(40);
    // A first call makes sure the proxy holds its first token before we count.
    assert_eq!(
        app.get(&format!("/api/incidents/{id}")).send().await.unwrap().status(),
        200
    );
    app.sim.set_faults(fault_on("update", FaultKind::Unauthorized, Some(1)));
    let before = app.stats().token_requests;
    let r = app
        .patch(&format!("/api/incidents/{id}"), r#"{"assignedTo":"retry@example.com"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["assignedTo"], "retry@example.com");
    let stats = app.stats();
    assert_eq!(stats.calls["update"].unauthorized, 1);
    assert_eq!(stats.calls["update"].ok, 1);
    assert_eq!(stats.token_requests, before + 1, "one fresh token");
    app.stop().await;
}

/// Item 5: hostile `Retry-After` values never panic (every collapsed caller gets an answer) and
/// never freeze the route for longer than its longest window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_retry_after_values_are_survived_and_capped() {
    let _timed = timed().await;
    let cases: [(Option<&str>, Option<&str>, bool); 6] = [
        (Some("18446744073709551615"), None, true),
        (Some("1e9"), None, true),
        (Some("-5"), None, false),
        (Some("Thu, 01 Jan 1970 00:00:00 GMT"), None, false),
        (Some("Fri, 31 Dec 9999 23:59:59 GMT"), None, true),
        (
            None,
            Some("API calls quota exceeded! You can send requests again in 99999999999 seconds."),
            true,
        ),
    ];
    for (header, message, capped) in cases {
        let app = spawn_app_with(SimConfig::default(), |c| {
            route_quota(c, "get_incident", &[(100, 20), (1000, 60)]);
        })
        .await;
        app.sim.set_faults(fault_on(
            "get",
            FaultKind::RawThrottle {
                retry_after: header.map(str::to_string),
                message: message.map(str::to_string),
            },
            Some(1),
        ));
        let id = app.existing_id(77);
        let reqs: Vec<_> = (0..10)
            .map(|_| {
                app.get(&format!("/api/incidents/{id}"))
                    .header("prefer", "wait=0")
                    .send()
            })
            .collect();
        for r in futures_util::future::join_all(reqs).await {
            let r = r.unwrap_or_else(|e| panic!("{header:?}/{message:?}: a caller's connection failed: {e}"));
            // Callers in the throttled flight get its 429; later ones queue out the freeze.
            assert!([200, 429].contains(&r.status().as_u16()), "{header:?}: {}", r.status());
            if r.status() == 429 {
                let ra: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(ra <= 60, "{header:?}: Retry-After {ra} beyond the longest window");
            }
        }
        let ready = app.readyz().await;
        for route in ready["frozen_routes"].as_array().unwrap() {
            assert!(route["frozen_seconds"].as_f64().unwrap() <= 60.0, "{ready}");
        }
        let counted = metric(&app, "defender_proxy_upstream_retry_after_capped_total").await;
        assert_eq!(counted > 0.0, capped, "{header:?}/{message:?}: capped metric {counted}");
        app.stop().await;
    }
}

/// Item 6: a Get that started before a PATCH and finishes after it never replaces the PATCH's
/// result; a reader who comes after the PATCH gets the new incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_started_before_a_write_never_overwrites_it() {
    let _timed = timed().await;
    let app = spawn_app_with(SimConfig::default(), |_| {}).await;
    let id = app.existing_id(60);
    // The slow read snapshots the incident now and answers 1.5 s later.
    app.sim
        .set_faults(fault_on("get", FaultKind::AppliedThenDelay { ms: 1500 }, Some(1)));
    let slow = tokio::spawn({
        let r = app.get(&format!("/api/incidents/{id}")).send();
        async move { r.await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patched = app
        .patch(&format!("/api/incidents/{id}"), r#"{"assignedTo":"after@example.com"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let slow = slow.await.unwrap();
    let slow_status = cache_status(&slow);
    let old: serde_json::Value = slow.json().await.unwrap();
    assert_ne!(
        old["assignedTo"], "after@example.com",
        "the slow read saw the old state"
    );
    assert!(
        !slow_status.contains("stored"),
        "the old answer was not stored: {slow_status}"
    );
    let later = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    let now: serde_json::Value = later.json().await.unwrap();
    assert_eq!(now["assignedTo"], "after@example.com", "a later reader sees the write");
    app.stop().await;
}

/// Item 7: a PATCH whose caller disconnects still updates the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_whose_caller_leaves_still_invalidates() {
    let _timed = timed().await;
    let app = spawn_app_with(SimConfig::default(), |_| {}).await;
    let id = app.existing_id(80);
    let warm = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    app.sim
        .set_faults(fault_on("update", FaultKind::AppliedThenDelay { ms: 800 }, Some(1)));
    let patch = app
        .patch(&format!("/api/incidents/{id}"), r#"{"assignedTo":"gone@example.com"}"#)
        .send();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), patch).await.is_err(),
        "the caller gives up before the answer"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    let status = cache_status(&r);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["assignedTo"], "gone@example.com", "cache-status: {status}");
    app.stop().await;
}

/// Item 11: a collapsed follower keeps its own wait: `Prefer: wait=0` is refused at once even
/// when the leader is prepared to queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collapsed_follower_keeps_its_own_wait() {
    let _timed = timed().await;
    let sim = sim_with(&[(1, 6)], &[], &[]);
    let app = spawn_app_with(sim, |c| route_quota(c, "get_incident", &[(1, 6)])).await;
    let spend = app.existing_id(10);
    assert_eq!(
        app.get(&format!("/api/incidents/{spend}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let id = app.existing_id(20);
    let leader = tokio::spawn({
        let r = app
            .get(&format!("/api/incidents/{id}"))
            .header("prefer", "wait=30")
            .send();
        async move { r.await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let follower = app
        .get(&format!("/api/incidents/{id}"))
        .header("prefer", "wait=0")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(follower.status(), 429);
    assert!(took < Duration::from_millis(500), "refused after {took:?}");
    let ra: u64 = follower.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((4..=7).contains(&ra), "Retry-After {ra}");
    let leader = leader.await.unwrap();
    assert_eq!(leader.status(), 200, "the leader still gets its answer at its slot");
    assert_eq!(app.calls("get"), 2);
    app.stop().await;
}

/// Item 12: `no-cache` means a fresh answer or an honest refusal, never a stale entry because no
/// slot is free right now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_never_falls_back_to_stale_for_lack_of_a_slot() {
    let _timed = timed().await;
    let sim = sim_with(&[(1, 6)], &[], &[]);
    let app = spawn_app_with(sim, |c| {
        route_quota(c, "get_incident", &[(1, 6)]);
        c.cache.ttl = Duration::from_millis(500);
    })
    .await;
    let id = app.existing_id(30);
    assert_eq!(
        app.get(&format!("/api/incidents/{id}")).send().await.unwrap().status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(700)).await; // expired, still usable as stale
    let r = app
        .get(&format!("/api/incidents/{id}"))
        .header("cache-control", "no-cache")
        .header("prefer", "wait=1")
        .send()
        .await
        .unwrap();
    let status = cache_status(&r);
    assert_eq!(r.status(), 429, "cache-status: {status}");
    assert!(!status.contains("stale"), "{status}");
    // Without no-cache, the same situation serves the expired entry instead of queueing.
    let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        cache_status(&r).contains("fwd=stale; detail=budget"),
        "{}",
        cache_status(&r)
    );
    app.stop().await;
}
