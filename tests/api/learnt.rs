//! Limits learnt from the upstream's own words (issue 14, item 5): a Defender 429 states the
//! quota it enforces ("Maximum allowed N per HH:MM:SS"); when that is stricter than the
//! configuration, the proxy adopts it within one call, and the simulator's own arrival times show
//! the traffic after it respecting the learnt limit. A looser statement is never adopted; a 429
//! stating nothing (Graph's) is counted.

use std::time::Duration;

use defender_proxy::simulator::{FaultKind, SimConfig};

use crate::common::{assert_windows, fault_on, quota, route_quota, spawn_app_with, timed, TestApp};

async fn burst(app: &TestApp, first_id: i64, n: i64) -> Vec<u16> {
    let mut tasks = Vec::new();
    for id in first_id..first_id + n {
        let req = app.get(&format!("/api/incidents/{id}")).header("prefer", "wait=20");
        tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_limit_stated_by_the_upstream_is_adopted_at_once_and_respected() {
    let _timed = timed().await;
    // The upstream enforces 5 per 2 s; the proxy was told 10 per 2 s.
    let mut sim = SimConfig {
        missing_share: 0.0,
        ..SimConfig::default()
    };
    sim.quotas.get = vec![quota(5, 2)];
    let app = spawn_app_with(sim, |c| route_quota(c, "get_incident", &[(10, 2)])).await;
    let first = burst(&app, 1, 10).await;
    let throttled_first = first.iter().filter(|s| **s == 429).count();
    assert!(throttled_first >= 1, "the configured limit is too high: {first:?}");
    assert_eq!(
        app.metric("defender_proxy_budget_learnt_limit{tenant=\"default\",pool=\"get_incident\",window_seconds=\"2\"}")
            .await,
        5.0,
        "learnt from the first 429's text"
    );
    let ready = app.readyz().await;
    assert!(
        ready.to_string().contains("\"limit\":5"),
        "readyz shows the learnt quota: {ready}"
    );
    let stats = app.stats();
    let throttled_before = stats.calls["get"].throttled;
    let seen_before = stats.calls["get"].at_ms.len();
    // The traffic that follows respects 5 per 2 s: no further 429.
    let second = burst(&app, 100, 12).await;
    assert!(second.iter().all(|s| *s == 200), "{second:?}");
    let stats = app.stats();
    assert_eq!(
        stats.calls["get"].throttled, throttled_before,
        "no 429 once the limit is learnt"
    );
    let after: Vec<u64> = stats.calls["get"].at_ms[seen_before..].to_vec();
    assert_eq!(after.len(), 12);
    assert_windows(&after, 5, 2_000);
    // `config check --learnt <admin URL>` shows it beside the configured quota.
    let learnt = defender_proxy::learnt::from_admin(&format!("http://{}", app.admin))
        .await
        .unwrap();
    let shown = defender_proxy::learnt::render(&app.config, &learnt, "the proxy");
    assert!(
        shown.contains("tenant default, pool get_incident: 5 per 2s (configured: 10 per 2s)"),
        "{shown}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_looser_stated_limit_is_never_adopted_and_an_unstated_429_is_counted() {
    let app = spawn_app_with(SimConfig::default(), |c| route_quota(c, "get_incident", &[(10, 2)])).await;
    app.sim.set_faults(fault_on(
        "get",
        FaultKind::StatedThrottle {
            limit: 500,
            window_secs: 2,
            retry_after_secs: 1,
        },
        Some(1),
    ));
    let r = app
        .get("/api/incidents/1")
        .header("prefer", "wait=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        app.metric("defender_proxy_budget_learnt_limit{tenant=\"default\",pool=\"get_incident\",window_seconds=\"2\"}")
            .await,
        0.0,
        "never loosened by the upstream's word"
    );
    app.sim.set_faults(fault_on(
        "get",
        FaultKind::RawThrottle {
            retry_after: Some("1".into()),
            message: Some("Please retry again later.".into()),
        },
        Some(1),
    ));
    tokio::time::sleep(Duration::from_millis(1_100)).await; // the first freeze ends
    let r = app
        .get("/api/incidents/2")
        .header("prefer", "wait=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        app.metric("defender_proxy_upstream_throttled_unstated_total{tenant=\"default\",route=\"get_incident\",pool=\"get_incident\"}")
            .await
            >= 1.0
    );
    app.stop().await;
}
