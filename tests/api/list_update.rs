//! List and Update through the proxy: caching, validation, coherence with the per-id cache.

use std::time::Duration;

use crate::common::{cache_status, envelope, fault_on, spawn_app, spawn_app_with, timed};
use defender_proxy::simulator::{FaultKind, SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_answers_are_cached_under_a_canonical_query_and_collapsed() {
    let _timed = timed().await;
    let app = spawn_app().await;
    let a = app
        .get("/api/incidents?$top=5&$filter=status%20eq%20'Active'")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
    let body = a.bytes().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["value"].as_array().unwrap().len() <= 5);
    // Same query, other spelling: option order, operator case, extra spaces, encoded `$`.
    let b = app
        .get("/api/incidents?%24filter=status%20%20EQ%20'Active'&$top=5")
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), 200);
    assert!(cache_status(&b).contains("hit"));
    assert_eq!(b.bytes().await.unwrap(), body);
    assert_eq!(app.calls("list"), 1);

    app.sim
        .set_faults(fault_on("list", FaultKind::Latency { ms: 300 }, None));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let req = app.get("/api/incidents?$top=3");
        tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(app.calls("list"), 2, "50 concurrent identical lists, one upstream call");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_fills_the_per_id_cache() {
    let app = spawn_app().await;
    let r = app.get("/api/incidents?$top=20").send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let ids: Vec<i64> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["incidentId"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 20);
    for id in &ids {
        let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(cache_status(&r).contains("hit"));
        let got: serde_json::Value = r.json().await.unwrap();
        assert_eq!(got["incidentId"], *id);
        assert_eq!(
            got,
            app.sim.incident_json(*id).unwrap(),
            "the list's copy is the incident"
        );
    }
    assert_eq!(app.calls("get"), 0, "list then fetch each: one call, not N+1");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_list_options_are_refused_without_spending() {
    let app = spawn_app().await;
    for q in [
        "$top=0",
        "$top=101",
        "$top=abc",
        "$skip=-1",
        "$orderby=createdTime",
        "$filter=",
        "$filter=severity%20eq%20'High'",
        "$filter=status%20eq%20'Closed'",
        "$filter=lastUpdateTime%20ge%20yesterday",
        "$filter=(status%20eq%20'Active'",
        "$filter=status%20eq%20'Active'%20foo",
        "$top=5&$top=6",
        "top=5",
    ] {
        let r = app.get(&format!("/api/incidents?{q}")).send().await.unwrap();
        let (status, code, message) = envelope(r).await;
        assert_eq!((status, code.as_str()), (400, "BadRequest"), "{q}: {message}");
    }
    assert_eq!(app.calls("list"), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_bodies_are_validated_before_spending() {
    let app = spawn_app().await;
    for body in [
        r#"[]"#,
        r#"{}"#,
        r#"{"status":"Closed"}"#,
        r#"{"severity":"High"}"#,
        r#"{"tags":"a"}"#,
        "not json",
    ] {
        let r = app.patch("/api/incidents/1", body).send().await.unwrap();
        assert_eq!(envelope(r).await.0, 400, "{body}");
    }
    assert_eq!(app.calls("update"), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_write_after_patch() {
    let app = spawn_app().await;
    let id = app.existing_id(3);
    let path = format!("/api/incidents/{id}");
    app.get(&path).send().await.unwrap();
    app.get("/api/incidents?$top=50").send().await.unwrap();
    let r = app
        .patch(
            &path,
            r#"{"status":"Resolved","classification":"TruePositive","comment":"handled"}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated: serde_json::Value = r.json().await.unwrap();
    assert_eq!(updated["status"], "Resolved");
    let r = app.get(&path).send().await.unwrap();
    assert!(cache_status(&r).contains("hit"), "the PATCH answer replaced the entry");
    let got: serde_json::Value = r.json().await.unwrap();
    assert_eq!(got["status"], "Resolved");
    assert_eq!(got["lastUpdateTime"], updated["lastUpdateTime"]);
    let r = app.get("/api/incidents?$top=50").send().await.unwrap();
    assert!(
        !r.headers()["cache-status"].to_str().unwrap().contains("hit"),
        "cached lists were evicted"
    );
    assert_eq!(app.calls("update"), 1);
    assert_eq!(app.calls("get"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_after_sending_a_patch_is_an_unknown_outcome_never_retried() {
    let app = spawn_app().await;
    let id = app.existing_id(8);
    let path = format!("/api/incidents/{id}");
    app.get(&path).send().await.unwrap();
    app.sim.set_faults(fault_on("update", FaultKind::Reset, Some(1)));
    let r = app.patch(&path, r#"{"comment":"once only"}"#).send().await.unwrap();
    let (status, code, message) = envelope(r).await;
    assert_eq!((status, code.as_str()), (502, "OutcomeUnknown"));
    assert!(message.contains("may or may not"), "{message}");
    assert_eq!(app.calls("update"), 1, "never retried");
    let r = app.get(&path).send().await.unwrap();
    assert!(
        !r.headers()["cache-status"].to_str().unwrap().contains("hit"),
        "the entry was evicted"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_spends_its_own_quota() {
    let mut sim = SimConfig::default();
    sim.quotas.get = vec![crate::common::quota(2, 60)];
    sim.quotas.list = vec![crate::common::quota(1, 60)];
    sim.quotas.update = vec![crate::common::quota(1, 60)];
    let app = spawn_app_with(sim, |c| {
        let q = |limit| {
            vec![defender_proxy::config::QuotaConfig {
                limit,
                window: Duration::from_secs(60),
            }]
        };
        c.budget.routes.get_mut("get_incident").unwrap().quotas = q(2);
        c.budget.routes.get_mut("list_incidents").unwrap().quotas = q(1);
        c.budget.routes.get_mut("update_incident").unwrap().quotas = q(1);
    })
    .await;
    // Each call refuses to queue: the answer says at once whether its route had a slot.
    async fn now(r: reqwest::RequestBuilder) -> u16 {
        r.header("prefer", "wait=0").send().await.unwrap().status().as_u16()
    }
    assert_eq!(now(app.get("/api/incidents?$top=1")).await, 200);
    assert_eq!(now(app.get("/api/incidents?$top=2")).await, 429);
    let id = app.existing_id(1);
    assert_eq!(now(app.get(&format!("/api/incidents/{id}"))).await, 200);
    assert_eq!(
        now(app.patch(&format!("/api/incidents/{id}"), r#"{"tags":["a"]}"#)).await,
        200
    );
    assert_eq!(
        now(app.patch(&format!("/api/incidents/{id}"), r#"{"tags":["b"]}"#)).await,
        429
    );
    let id2 = app.existing_id(id + 1);
    assert_eq!(now(app.get(&format!("/api/incidents/{id2}"))).await, 200);
    let stats = app.stats();
    assert_eq!(stats.calls.values().map(|r| r.throttled).sum::<u64>(), 0);
    app.stop().await;
}
