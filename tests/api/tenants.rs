//! Many tenants behind one proxy (issue 14): one multi-tenant app registration, a token and a
//! budget per tenant, tools choosing the tenant by path. Checked against the simulator's own
//! per-tenant counters and arrival times: quotas of every pool of every tenant hold when both
//! are saturated at once, nothing of one tenant reaches another's consumer (also under
//! concurrency and across reloads that add and remove tenants), a consumer never learns that a
//! tenant it is not granted exists, pools shared by two routes or by two tenants are never over,
//! a learnt limit stays with its tenant, and the tenants' syncs spread over the interval.

use std::{collections::BTreeMap, time::Duration};

use defender_proxy::{
    app,
    auth::hash_key,
    config::{Config, ConsumerConfig, PoolConfig, QuotaConfig, Right},
    simulator::{FaultKind, SimQuotas, SimTenant},
};
use futures_util::future::join_all;

use crate::common::{assert_windows, fault_on, quota, spawn_tenants, timed, TestApp};

const A: &str = "tenant-a";
const B: &str = "tenant-b";
/// The key of consumer `only-a`, granted tenant A alone (read and write).
const ONLY_A: &str = "key-only-a";

/// Consumer `only-a`: tenant A only.
fn only_a(c: &mut Config) {
    c.auth.consumers.insert(
        "only-a".into(),
        ConsumerConfig {
            key_hashes: vec![hash_key(ONLY_A)],
            rights: vec![Right::Read, Right::Write],
            tenants: vec![A.into()],
            ..ConsumerConfig::default()
        },
    );
}

/// Sets `tenants.<name>.budget` from TOML (the tenant keeps its token settings).
fn tenant_budget(c: &mut Config, name: &str, toml: &str) {
    let budget = toml::from_str(toml).expect("budget TOML");
    c.tenants.get_mut(name).expect("tenant configured").budget = Some(budget);
}

/// The tenant an incident body belongs to: the simulator writes it into `incidentUri` (`tid=`).
fn tid_of(body: &serde_json::Value) -> String {
    let uri = body["incidentUri"]
        .as_str()
        .or_else(|| body["incidentWebUrl"].as_str())
        .unwrap_or_default();
    uri.split("tid=").nth(1).unwrap_or_default().to_string()
}

fn sim_quota_get(limit: u32, secs: u64) -> SimQuotas {
    SimQuotas {
        get: vec![quota(limit, secs)],
        ..SimQuotas::default()
    }
}

/// Ids that exist in `tenant`, from `from` on.
fn existing(app: &TestApp, tenant: &str, from: i64, n: usize) -> Vec<i64> {
    let t = app.sim.tenant(tenant).unwrap();
    (from..).filter(|&id| t.incident_json(id).is_some()).take(n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_saturated_at_once_keep_every_window_and_their_own_data() {
    let _timed = timed().await;
    // A: 6 per 3 s; B: 10 per 3 s, in the simulator and in the proxy alike.
    let app = spawn_tenants(
        &[A, B],
        |sim| {
            sim.tenants[0].quotas = sim_quota_get(6, 3);
            sim.tenants[1].quotas = sim_quota_get(10, 3);
        },
        |c| {
            tenant_budget(
                c,
                A,
                "[routes.get_incident]\nquotas = [{ limit = 6, window = \"3s\" }]\n",
            );
            tenant_budget(
                c,
                B,
                "[routes.get_incident]\nquotas = [{ limit = 10, window = \"3s\" }]\n",
            );
        },
    )
    .await;
    // Both tenants have incidents with the same ids: each must get its own.
    let ids_a = existing(&app, A, 1, 30);
    let ids_b = existing(&app, B, 1, 40);
    let mut tasks = Vec::new();
    for (tenant, ids) in [(A, ids_a), (B, ids_b)] {
        for id in ids {
            let req = app
                .get(&format!("/tenants/{tenant}/api/incidents/{id}"))
                .header("prefer", "wait=8");
            tasks.push(tokio::spawn(async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                let headers = format!("{:?}", r.headers());
                let body: serde_json::Value = r.json().await.unwrap();
                (tenant, status, headers, body)
            }));
        }
    }
    let mut served = BTreeMap::new();
    for t in join_all(tasks).await {
        let (tenant, status, headers, body) = t.unwrap();
        *served.entry((tenant, status)).or_insert(0) += 1;
        if status == 200 {
            assert_eq!(
                tid_of(&body),
                tenant,
                "an answer of {tenant} carries {tenant}'s incident"
            );
        } else {
            assert_eq!(status, 429, "{body}");
        }
        let other = if tenant == A { B } else { A };
        assert!(!headers.contains(other) && !body.to_string().contains(&format!("tid={other}")));
    }
    for (tenant, limit) in [(A, 6), (B, 10)] {
        let stats = app.sim.tenant(tenant).unwrap().stats();
        let get = &stats.calls["get"];
        assert_eq!(get.throttled, 0, "{tenant}: no upstream 429");
        assert_windows(&get.at_ms, limit, 3_000);
        // Saturated: within the 8 s the callers accepted, at least two full windows were spent.
        assert!(
            get.at_ms.len() >= 2 * limit,
            "{tenant} spent {} calls: {served:?}",
            get.at_ms.len()
        );
    }
    // The default tenant of the simulator is not served: nothing reached it.
    assert_eq!(app.stats().calls["get"].total, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_not_granted_is_not_found_on_every_route_of_both_facades_and_costs_nothing() {
    let app = spawn_tenants(&[A, B], |_| {}, only_a).await;
    let before = |t: &str| app.sim.tenant(t).unwrap().stats();
    let (a0, b0) = (before(A), before(B));
    let key_only_a = ONLY_A;
    let requests: Vec<(reqwest::Method, &str, Option<&str>)> = vec![
        (reqwest::Method::GET, "/api/incidents/1", None),
        (reqwest::Method::GET, "/api/incidents?$top=5", None),
        (
            reqwest::Method::PATCH,
            "/api/incidents/1",
            Some(r#"{"status":"Active"}"#),
        ),
        (reqwest::Method::GET, "/v1.0/security/incidents/1", None),
        (reqwest::Method::GET, "/v1.0/security/incidents?$top=5", None),
        (
            reqwest::Method::PATCH,
            "/v1.0/security/incidents/1",
            Some(r#"{"status":"active"}"#),
        ),
        (
            reqwest::Method::POST,
            "/v1.0/security/incidents/1/comments",
            Some(r#"{"@odata.type":"microsoft.graph.security.alertComment","comment":"x"}"#),
        ),
    ];
    for (method, path, body) in &requests {
        let graph = path.starts_with("/v1.0/");
        let mut answers = Vec::new();
        // Granted elsewhere but not here, and no such tenant at all: the same answer.
        for tenant in [B, "no-such-tenant"] {
            let mut req = app
                .client
                .request(method.clone(), app.url(&format!("/tenants/{tenant}{path}")))
                .bearer_auth(key_only_a);
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b.to_string());
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 404, "{method} /tenants/{tenant}{path}");
            let v: serde_json::Value = r.json().await.unwrap();
            if graph {
                assert_eq!(v["error"]["code"], "itemNotFound", "Graph's envelope: {v}");
                assert!(v["error"]["innerError"]["request-id"].is_string(), "{v}");
            } else {
                assert_eq!(v["error"]["code"], "NotFound", "Defender's envelope: {v}");
                assert!(v["error"]["target"].is_string(), "{v}");
            }
            let message = v["error"]["message"].as_str().unwrap().replace(tenant, "<tenant>");
            answers.push(message);
        }
        assert_eq!(
            answers[0], answers[1],
            "nothing tells a tenant that exists from one that does not"
        );
    }
    // Its own tenant, by prefix and by the plain path (its only tenant).
    for path in [format!("/tenants/{A}/api/incidents/1"), "/api/incidents/1".to_string()] {
        let r = app
            .client
            .get(app.url(&path))
            .bearer_auth(key_only_a)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(tid_of(&r.json().await.unwrap()), A);
    }
    // A consumer of both tenants must name one.
    let r = app.get("/api/incidents/1").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let (a1, b1) = (before(A), before(B));
    assert_eq!(b1.calls, b0.calls, "nothing reached tenant B");
    assert_eq!(b1.graph_calls, b0.graph_calls);
    assert_eq!(
        a1.calls["get"].total,
        a0.calls["get"].total + 1,
        "A: one Get for two reads"
    );
    // The refusals are logged against no tenant; the metrics name configured tenants only.
    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("no-such-tenant"));
    assert!(metrics.contains("route=\"other\",status=\"404\",consumer=\"only-a\""));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_the_same_id_in_two_tenants_never_cross() {
    let _timed = timed().await;
    let app = spawn_tenants(&[A, B], |_| {}, |_| {}).await;
    let id = (1..)
        .find(|&id| {
            app.sim.tenant(A).unwrap().incident_json(id).is_some()
                && app.sim.tenant(B).unwrap().incident_json(id).is_some()
        })
        .unwrap();
    // Cold, then hot: 40 concurrent reads per tenant and facade, collapsed within each tenant.
    for _round in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..160 {
            let tenant = if i % 2 == 0 { A } else { B };
            let path = if i % 4 < 2 {
                format!("/tenants/{tenant}/api/incidents/{id}")
            } else {
                format!("/tenants/{tenant}/v1.0/security/incidents/{id}")
            };
            let req = app.get(&path);
            tasks.push(tokio::spawn(async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200);
                (tenant, r.json::<serde_json::Value>().await.unwrap())
            }));
        }
        for t in join_all(tasks).await {
            let (tenant, body) = t.unwrap();
            assert_eq!(tid_of(&body), tenant, "{body}");
        }
    }
    for t in [A, B] {
        let stats = app.sim.tenant(t).unwrap().stats();
        assert_eq!(
            stats.calls["get"].total, 1,
            "{t}: one Get, collapsed and cached within the tenant"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_shared_by_two_routes_is_never_over() {
    let _timed = timed().await;
    // The API as a whole: 8 per 3 s over Get and List, each route also keeping its own quota.
    let app = spawn_tenants(
        &[A],
        |_| {},
        |c| {
            tenant_budget(
                c,
                A,
                "[pools.incidents_api]\nquotas = [{ limit = 8, window = \"3s\" }]\n\
                 [routes.get_incident]\nquotas = [{ limit = 100, window = \"60s\" }]\npools = [\"incidents_api\"]\n\
                 [routes.list_incidents]\nquotas = [{ limit = 50, window = \"60s\" }]\npools = [\"incidents_api\"]\n",
            );
        },
    )
    .await;
    let ids = existing(&app, A, 1, 20);
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let get = app
            .get(&format!("/tenants/{A}/api/incidents/{id}"))
            .header("prefer", "wait=7");
        let list = app
            .get(&format!("/tenants/{A}/api/incidents?$top=2&$skip={i}"))
            .header("prefer", "wait=7");
        tasks.push(tokio::spawn(async move { get.send().await.unwrap().status().as_u16() }));
        tasks.push(tokio::spawn(
            async move { list.send().await.unwrap().status().as_u16() },
        ));
    }
    let statuses: Vec<u16> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let stats = app.sim.tenant(A).unwrap().stats();
    let mut both: Vec<u64> = stats.calls["get"]
        .at_ms
        .iter()
        .chain(&stats.calls["list"].at_ms)
        .copied()
        .collect();
    both.sort_unstable();
    assert!(
        stats.calls["get"].total > 0 && stats.calls["list"].total > 0,
        "both routes spent"
    );
    assert!(both.len() >= 16, "the pool was saturated: {} calls", both.len());
    assert_windows(&both, 8, 3_000);
    // The shared pool's window is in the headers of either route.
    let r = app
        .get(&format!("/tenants/{A}/api/incidents?$top=1"))
        .send()
        .await
        .unwrap();
    let policy = r.headers()["ratelimit-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("\"incidents_api-3s\";q=8;w=3"), "{policy}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_shared_by_two_tenants_is_never_over_and_a_learnt_limit_stays_with_its_tenant() {
    let _timed = timed().await;
    // Graph's ceiling per app across tenants, scaled: 8 per 3 s for both tenants' Gets together.
    let app = spawn_tenants(
        &[A, B],
        |_| {},
        |c| {
            c.app_pools.insert(
                "app".into(),
                PoolConfig {
                    quotas: vec![QuotaConfig {
                        limit: 8,
                        window: Duration::from_secs(3),
                    }],
                },
            );
            for t in [A, B] {
                tenant_budget(
                    c,
                    t,
                    "[routes.get_incident]\nquotas = [{ limit = 100, window = \"60s\" }]\npools = [\"app\"]\n",
                );
            }
        },
    )
    .await;
    let mut tasks = Vec::new();
    for t in [A, B] {
        for id in existing(&app, t, 1, 14) {
            let req = app
                .get(&format!("/tenants/{t}/api/incidents/{id}"))
                .header("prefer", "wait=7");
            tasks.push(tokio::spawn(async move {
                let r = req.send().await.unwrap();
                // The app pool's standing would tell a tenant how much the others spend.
                let policy = r
                    .headers()
                    .get("ratelimit-policy")
                    .map(|v| v.to_str().unwrap().to_string());
                assert!(policy.as_deref().is_none_or(|p| !p.contains("\"app-")), "{policy:?}");
                r.status().as_u16()
            }));
        }
    }
    join_all(tasks).await;
    let (sa, sb) = (app.sim.tenant(A).unwrap().stats(), app.sim.tenant(B).unwrap().stats());
    assert!(
        sa.calls["get"].total > 0 && sb.calls["get"].total > 0,
        "both tenants spent"
    );
    let mut both: Vec<u64> = sa.calls["get"]
        .at_ms
        .iter()
        .chain(&sb.calls["get"].at_ms)
        .copied()
        .collect();
    both.sort_unstable();
    assert!(both.len() >= 16, "the pool was saturated: {} calls", both.len());
    assert_windows(&both, 8, 3_000);

    // Tenant A's upstream states a stricter limit: A adopts it, B does not.
    let sim_a = app.sim.tenant(A).unwrap();
    sim_a.set_faults(fault_on(
        "get",
        FaultKind::StatedThrottle {
            limit: 3,
            window_secs: 2,
            retry_after_secs: 1,
        },
        Some(1),
    ));
    let id = existing(&app, A, 200, 1)[0];
    // (It may queue for the shared pool, spent by the burst above, before it goes.)
    let r = app
        .get(&format!("/tenants/{A}/api/incidents/{id}"))
        .header("prefer", "wait=5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(sim_a.stats().calls["get"].throttled, 1, "the upstream's own 429");
    let ready = app.readyz().await;
    let learnt = |t: &str| ready["tenants"][t]["learnt_limits"].to_string();
    assert!(learnt(A).contains("\"limit\":3"), "{ready}");
    assert_eq!(learnt(B), "[]", "{ready}");
    assert_eq!(
        app.metric(&format!(
            "defender_proxy_budget_learnt_limit{{tenant=\"{A}\",pool=\"get_incident\",window_seconds=\"2\"}}"
        ))
        .await,
        3.0
    );
    assert!(!app
        .admin_get("/metrics")
        .await
        .text()
        .await
        .unwrap()
        .contains(&format!("budget_learnt_limit{{tenant=\"{B}\"")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_add_and_remove_tenants_without_crossing_data() {
    const C: &str = "tenant-c";
    const D: &str = "tenant-d";
    let app = spawn_tenants(
        &[A, B],
        |s| {
            // Tenants C and D exist upstream from the start; the proxy learns of them by reloads.
            for name in [C, D] {
                let mut t = SimTenant::new(name);
                t.consented_apps.push(s.client_id.clone());
                s.tenants.push(t);
            }
        },
        only_a,
    )
    .await;
    let read = |tenant: &str, key: &str, id: i64| {
        let req = app
            .client
            .get(app.url(&format!("/tenants/{tenant}/api/incidents/{id}")))
            .bearer_auth(key.to_string());
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let id = existing(&app, A, 1, 1)[0];
    let key = app.key.clone();
    assert_eq!(read(A, &key, id).await.0, 200);
    assert_eq!(tid_of(&read(B, &key, id).await.1), B);
    assert_eq!(read(C, &key, id).await.0, 404, "not served yet");

    // Reload: B goes, C comes; `only-a` is now granted C as well. Reads keep flowing meanwhile.
    let mut next = app.config.clone();
    next.tenants.remove(B);
    let mut c_entry = next.tenants[A].clone();
    if let Some(token) = &mut c_entry.token {
        token.tenant_id = Some(C.into());
    }
    next.tenants.insert(C.into(), c_entry);
    next.auth.consumers.get_mut("only-a").unwrap().tenants.push(C.into());
    next.validate().expect("the new configuration is valid");
    let flowing = {
        let reqs: Vec<_> = (0..60)
            .map(|i| {
                let tenant = [A, B, C][i % 3];
                (tenant, app.get(&format!("/tenants/{tenant}/api/incidents/{id}")))
            })
            .collect();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for (tenant, req) in reqs {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap();
                if status == 200 {
                    assert_eq!(tid_of(&body), tenant, "a reload never crosses tenants");
                }
                seen.push((tenant, status));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    let report = app::reload(&app.state, &next).await.expect("reload applies");
    assert_eq!(report.added, vec![C.to_string()]);
    assert_eq!(report.removed, vec![B.to_string()]);
    let seen = flowing.await.unwrap();
    assert!(seen.iter().all(|(_, s)| *s == 200 || *s == 404), "{seen:?}");

    let (s, v) = read(B, &key, id).await;
    assert_eq!(s, 404, "a removed tenant is gone: {v}");
    let (s, v) = read(C, ONLY_A, id).await;
    assert_eq!(s, 200);
    assert_eq!(tid_of(&v), C);
    // A kept its cache: the read before the reload is still a hit.
    let gets_a = app.sim.tenant(A).unwrap().stats().calls["get"].total;
    assert_eq!(read(A, ONLY_A, id).await.0, 200);
    assert_eq!(app.sim.tenant(A).unwrap().stats().calls["get"].total, gets_a);
    // The removed tenant's gauges are gone; the added one's are there.
    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains(&format!("budget_limit{{tenant=\"{B}\"")));
    assert!(metrics.contains(&format!("budget_limit{{tenant=\"{C}\"")));
    let ready = app.readyz().await;
    assert!(
        ready["tenants"][B].is_null() && ready["tenants"][C].is_object(),
        "{ready}"
    );

    // Removing A leaves `only-a` with C alone: the plain path now means C.
    let mut last = next.clone();
    last.tenants.remove(A);
    last.auth.consumers.get_mut("only-a").unwrap().tenants = vec![C.into()];
    app::reload(&app.state, &last).await.unwrap();
    let r = app
        .client
        .get(app.url(&format!("/api/incidents/{id}")))
        .bearer_auth(ONLY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(tid_of(&r.json().await.unwrap()), C);

    // The name `tenant-c` now points at another customer (a corrected tenant id): the old stack
    // and its cache go, nothing of the previous customer is served under the name.
    let mut moved = last.clone();
    if let Some(token) = &mut moved.tenants.get_mut(C).unwrap().token {
        token.tenant_id = Some(D.into());
    }
    let report = app::reload(&app.state, &moved).await.unwrap();
    assert_eq!(report.replaced, vec![C.to_string()]);
    let (s, v) = read(C, ONLY_A, id).await;
    assert_eq!(s, 200);
    assert_eq!(tid_of(&v), D, "the new customer's incident, fetched afresh");
    assert_eq!(app.sim.tenant(D).unwrap().stats().calls["get"].total, 1);
    // Pools every tenant shares are one ledger: changing them waits for a restart.
    let mut pools = moved.clone();
    pools.app_pools.insert(
        "app".into(),
        PoolConfig {
            quotas: vec![QuotaConfig {
                limit: 5,
                window: Duration::from_secs(1),
            }],
        },
    );
    let err = app::reload(&app.state, &pools).await.unwrap_err().to_string();
    assert!(err.contains("app_pools"), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn graph_next_links_keep_the_tenant() {
    let app = spawn_tenants(&[A, B], |_| {}, |_| {}).await;
    let r = app
        .get(&format!("/tenants/{B}/v1.0/security/incidents?$top=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: serde_json::Value = r.json().await.unwrap();
    let next = page["@odata.nextLink"].as_str().unwrap().to_string();
    assert!(
        next.contains(&format!("/tenants/{B}/v1.0/security/incidents?")),
        "{next}"
    );
    let r = app.client.get(&next).bearer_auth(&app.key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page2: serde_json::Value = r.json().await.unwrap();
    for item in page2["value"].as_array().unwrap() {
        assert_eq!(tid_of(item), B, "{item}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_spread_over_the_interval_and_a_stuck_tenant_delays_no_other() {
    let _timed = timed().await;
    let app = spawn_tenants(
        &[A, B],
        |_| {},
        |c| {
            c.sync.enabled = true;
            c.sync.interval = Duration::from_secs(2);
            c.sync.min_interval = Duration::from_secs(1);
            c.sync.max_lag = Duration::from_secs(4);
            c.sync.lookback = Duration::from_secs(60);
            c.sync.overlap = Duration::from_secs(2);
            c.upstream.timeout = Duration::from_secs(2);
        },
    )
    .await;
    // Tenant A's list hangs (every call until the test ends): B's sync must go on regardless.
    app.sim
        .tenant(A)
        .unwrap()
        .set_faults(fault_on("list", FaultKind::Hang, None));
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let (sa, sb) = (app.sim.tenant(A).unwrap().stats(), app.sim.tenant(B).unwrap().stats());
    let (la, lb) = (&sa.calls["list"].at_ms, &sb.calls["list"].at_ms);
    assert!(!la.is_empty() && !lb.is_empty(), "both syncs listed: {la:?} {lb:?}");
    // B, the second of two, starts half an interval after A.
    assert!(
        lb[0] >= la[0] + 800,
        "fan-out: B's first list at {} ms, A's at {} ms",
        lb[0],
        la[0]
    );
    // B ran every interval (or faster) although A's calls hang.
    assert!(lb.len() >= 3, "B kept syncing: {lb:?}");
    let ready = app.readyz().await;
    assert_eq!(ready["tenants"][B]["sync"]["healthy"], true, "{ready}");
    app.stop().await;
}
