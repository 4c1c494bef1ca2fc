//! Both facades over both upstream dialects (issue 13): the same Defender-dialect session run
//! against a Defender upstream and a Graph upstream gives the same answers apart from the
//! documented losses; the Graph facade serves the same kind of session from either upstream;
//! bad input on the Graph facade spends nothing; both facades share one cache entry per
//! incident; and the sync follows a Graph upstream.

use std::time::Duration;

use crate::common::{cache_status, eventually, fault_on, route_quota, spawn_app_with, TestApp};
use defender_proxy::{
    config::{Config, Dialect, GRAPH_BASE_URL},
    dialect::incident::{field_differences, DEFENDER_FIELDS_LOST, GRAPH_ONLY_FIELDS},
    simulator::SimConfig,
};
use serde_json::{json, Value};

fn sim() -> SimConfig {
    SimConfig {
        incidents: 400,
        ..SimConfig::default()
    }
}

fn graph_upstream(c: &mut Config) {
    c.upstream.api = Dialect::Graph;
    c.token.resource = GRAPH_BASE_URL.into();
}

async fn defender_app() -> TestApp {
    spawn_app_with(sim(), |_| {}).await
}

async fn graph_app() -> TestApp {
    spawn_app_with(sim(), graph_upstream).await
}

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

fn ids(page: &Value) -> Vec<i64> {
    page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["incidentId"].as_i64().expect("numeric incidentId"))
        .collect()
}

fn graph_ids(page: &Value) -> Vec<String> {
    page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().expect("string id").to_string())
        .collect()
}

/// Upstream calls the simulator counted, all routes of both dialects.
fn upstream_calls(app: &TestApp) -> u64 {
    let stats = app.stats();
    stats
        .calls
        .values()
        .chain(stats.graph_calls.values())
        .map(|r| r.total)
        .sum()
}

/// Calls of one simulator route of either dialect ("get", "graph_list", ...).
fn calls(app: &TestApp, route: &str) -> u64 {
    let stats = app.stats();
    stats
        .calls
        .get(route)
        .or_else(|| stats.graph_calls.get(route))
        .map_or(0, |r| r.total)
}

/// One scripted Defender-dialect session: what a tool written for the Defender API does.
async fn defender_session(app: &TestApp) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    let id = app.existing_id(1);
    let missing = app.missing_id(1);
    let mut step = |name: &str, status: u16, v: Value| out.push((name.to_string(), status, v));
    let (s, v) = json(app.get(&format!("/api/incidents/{id}")).send().await.unwrap()).await;
    step("get", s, v);
    let (s, v) = json(app.get(&format!("/api/incidents/{missing}")).send().await.unwrap()).await;
    step("get missing", s, v["error"]["code"].clone());
    for filter in [
        "status eq 'Active'",
        "status eq 'Resolved' or status eq 'Redirected'",
        "lastUpdateTime ge 2020-01-01T00:00:00Z",
        "createdTime lt 2100-01-01T00:00:00Z and assignedTo eq null",
        "assignedTo ne null",
    ] {
        let path = format!("/api/incidents?$filter={}&$top=30", urlencode(filter));
        let (s, v) = json(app.get(&path).send().await.unwrap()).await;
        step(&format!("list {filter}"), s, v);
    }
    // Paging past 100: a full Defender page is two Graph pages, and $skip keeps its meaning.
    for path in [
        "/api/incidents?$top=100",
        "/api/incidents?$top=100&$skip=100",
        "/api/incidents?$top=7&$skip=195",
    ] {
        let (s, v) = json(app.get(path).send().await.unwrap()).await;
        step(path, s, v);
    }
    let (s, v) = json(app.get("/api/incidents?$top=abc").send().await.unwrap()).await;
    step("bad query", s, v["error"]["code"].clone());
    let body = json!({"status": "InProgress", "assignedTo": "analyst@contoso.com", "classification": "TruePositive", "determination": "Malware", "tags": ["proxy-test"], "comment": "looked at it"});
    let (s, v) = json(
        app.patch(&format!("/api/incidents/{id}"), &body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    step("patch with comment", s, v);
    let (s, v) = json(app.get(&format!("/api/incidents/{id}")).send().await.unwrap()).await;
    step("get after patch", s, v);
    out
}

fn urlencode(s: &str) -> String {
    s.replace(' ', "%20").replace('\'', "%27")
}

#[tokio::test]
async fn a_defender_session_gets_the_same_answers_over_a_graph_upstream() {
    let (a, b) = (defender_app().await, graph_app().await);
    let native = defender_session(&a).await;
    let translated = defender_session(&b).await;
    assert_eq!(native.len(), translated.len());
    for ((name, s1, v1), (_, s2, v2)) in native.iter().zip(&translated) {
        assert_eq!(s1, s2, "{name}: status");
        match name.as_str() {
            "get" => {
                let d = field_differences(v1, v2, DEFENDER_FIELDS_LOST);
                assert!(d.is_empty(), "{name}: {d:?}");
            }
            n if n.starts_with("list") || n.starts_with("/api/incidents?") => {
                assert_eq!(ids(v1), ids(v2), "{name}: same incidents in the same order");
                for (x, y) in v1["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(v2["value"].as_array().unwrap())
                {
                    let d = field_differences(x, y, DEFENDER_FIELDS_LOST);
                    assert!(d.is_empty(), "{name}: incident {}: {d:?}", x["incidentId"]);
                }
            }
            "patch with comment" | "get after patch" => {
                for field in ["status", "assignedTo", "classification", "determination", "tags"] {
                    assert_eq!(v1[field], v2[field], "{name}: {field}");
                }
                let last = |v: &Value| v["comments"].as_array().and_then(|c| c.last().cloned()).unwrap();
                assert_eq!(last(v1)["comment"], "looked at it", "{name}");
                assert_eq!(
                    last(v2)["comment"],
                    "looked at it",
                    "{name}: the comment POST followed the PATCH"
                );
                assert!(
                    v2["alerts"].as_array().is_some(),
                    "{name}: Defender incidents carry alerts"
                );
            }
            _ => assert_eq!(v1, v2, "{name}"),
        }
    }
    // The paging steps: 100 + 100 + 7 items, and the pages join without gap or overlap.
    let page = |n: &str| &translated.iter().find(|(k, ..)| k == n).unwrap().2;
    let first = ids(page("/api/incidents?$top=100"));
    let second = ids(page("/api/incidents?$top=100&$skip=100"));
    assert_eq!((first.len(), second.len()), (100, 100));
    assert!(first.iter().all(|i| !second.contains(i)));
    // Over Graph, the writes went as a PATCH and a comment POST, each on its own route.
    assert_eq!(calls(&b, "graph_update"), 1);
    assert_eq!(calls(&b, "graph_comment"), 1);
    assert_eq!(calls(&b, "update"), 0, "nothing reached the Defender routes");
    // The budget counted them apart.
    assert_eq!(
        b.metric("defender_proxy_upstream_requests_total{tenant=\"default\",route=\"create_comment\",status=\"200\"}")
            .await,
        1.0
    );
    a.stop().await;
    b.stop().await;
}

/// A Graph-dialect session (what an msgraph-sdk tool does) against either upstream.
async fn graph_session(app: &TestApp) {
    let id = app.existing_id(1);
    // Get, with and without alerts, against the simulator's own Graph rendering.
    let (s, with) = json(
        app.get(&format!("/v1.0/security/incidents/{id}?$expand=alerts"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let native = app.sim.graph_incident_json(id, true).unwrap();
    let lossy: &[(&str, &str)] = if app.state.tenant("default").unwrap().proxy.upstream_api() == Dialect::Graph {
        &[("@odata.context", "envelope")]
    } else {
        GRAPH_ONLY_FIELDS
    };
    let mut d = field_differences(&native, &with, lossy);
    d.retain(|p| p != "@odata.context");
    assert!(d.is_empty(), "{d:?}");
    // As Microsoft's SDKs send it with a base URL set the usual way: one doubled slash.
    let (_, bare) = json(
        app.get(&format!("/v1.0//security/incidents/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(bare.get("alerts").is_none(), "no alerts without $expand");
    assert_eq!(bare["id"], with["id"]);
    // List and follow @odata.nextLink (it points at the proxy).
    let (s, page) = json(
        app.get("/v1.0/security/incidents?$top=20&$filter=status%20eq%20'active'")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["value"].as_array().unwrap().len(), 20);
    let next = page["@odata.nextLink"].as_str().expect("a nextLink on a full page");
    assert!(next.starts_with(&app.url("/v1.0/security/incidents?")), "{next}");
    let (s, page2) = json(app.client.get(next).bearer_auth(&app.key).send().await.unwrap()).await;
    assert_eq!(s, 200);
    let (a, b) = (graph_ids(&page), graph_ids(&page2));
    assert!(
        !b.is_empty() && a.iter().all(|i| !b.contains(i)),
        "pages join without overlap"
    );
    assert!(page2["value"][0]["status"] == "active");
    // What Graph-native sync tools send: ascending by change time, with a count. Over a Defender
    // upstream the proxy lists the Defender part and applies the rest itself.
    let (s, asc) = json(
        app.get("/v1.0/security/incidents?$filter=lastUpdateDateTime%20ge%202000-01-01T00:00:00Z%20and%20severity%20ne%20'low'&$orderby=lastUpdateDateTime%20asc&$top=10&$count=true&$expand=alerts")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{asc}");
    let items = asc["value"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    let times: Vec<&str> = items
        .iter()
        .map(|i| i["lastUpdateDateTime"].as_str().unwrap())
        .collect();
    let parse = |t: &str| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    assert!(
        times.windows(2).all(|w| parse(w[0]) <= parse(w[1])),
        "ascending: {times:?}"
    );
    assert!(items.iter().all(|i| i["severity"] != "low" && i["alerts"].is_array()));
    let count = asc["@odata.count"].as_u64().expect("@odata.count");
    assert!(count >= 10, "{count}");
    // Update and comment.
    let resp = app
        .client
        .patch(app.url(&format!("/v1.0/security/incidents/{id}")))
        .bearer_auth(&app.key)
        .json(&json!({"status": "resolved", "classification": "truePositive", "determination": "malware", "customTags": ["graph"]}))
        .send()
        .await
        .unwrap();
    let (s, updated) = json(resp).await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["status"], "resolved");
    assert_eq!(updated["customTags"], json!(["graph"]));
    let resp = app
        .client
        .post(app.url(&format!("/v1.0/security/incidents/{id}/comments")))
        .bearer_auth(&app.key)
        .json(&json!({"@odata.type": "microsoft.graph.security.alertComment", "comment": "from graph"}))
        .send()
        .await
        .unwrap();
    let (s, comments) = json(resp).await;
    assert_eq!(s, 200, "{comments}");
    let last = comments["value"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["comment"], "from graph");
    // Reading it back (the write evicted the entry) shows both.
    let (_, after) = json(app.get(&format!("/v1.0/security/incidents/{id}")).send().await.unwrap()).await;
    assert_eq!(after["status"], "resolved");
    assert!(after["comments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["comment"] == "from graph"));
    // A 404 in Graph's envelope.
    let missing = app.missing_id(1);
    let (s, err) = json(
        app.get(&format!("/v1.0/security/incidents/{missing}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert!(
        err["error"]["code"].is_string() && err["error"]["innerError"]["request-id"].is_string(),
        "{err}"
    );
}

#[tokio::test]
async fn the_graph_facade_serves_a_session_from_a_graph_upstream() {
    let app = graph_app().await;
    graph_session(&app).await;
    assert_eq!(
        calls(&app, "get") + calls(&app, "list") + calls(&app, "update"),
        0,
        "Graph routes only"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_graph_facade_serves_a_session_from_a_defender_upstream() {
    let app = defender_app().await;
    graph_session(&app).await;
    let graph_routes: u64 = ["graph_get", "graph_list", "graph_update", "graph_comment"]
        .iter()
        .map(|r| calls(&app, r))
        .sum();
    assert_eq!(graph_routes, 0, "Defender routes only");
    app.stop().await;
}

#[tokio::test]
async fn bad_graph_requests_get_graphs_error_shape_and_spend_nothing() {
    for app in [graph_app().await, defender_app().await] {
        let before = upstream_calls(&app);
        for path in [
            "/v1.0/security/incidents?$top=51",
            "/v1.0/security/incidents?$top=0",
            "/v1.0/security/incidents?$filter=nosuchfield%20eq%20'x'",
            "/v1.0/security/incidents?$filter=status%20eq%20'Active'",
            "/v1.0/security/incidents?$orderby=displayName",
            "/v1.0/security/incidents?$select=id",
            "/v1.0/security/incidents?$skip=-1",
            "/v1.0/security/incidents?$skip=2147483648",
            "/v1.0/security/incidents?$top=5&$top=6",
            "/v1.0/security/incidents/abc",
            "/v1.0/security/incidents/-1",
            "/v1.0/security/incidents/%37",
            "/v1.0/security/incidents/1?$expand=comments",
            "/v1.0/security/incidents/99999999999999999999",
            "/v1.0/security/alerts_v2",
            "/v1.0/users",
            "/v1.0///security/incidents",
        ] {
            let resp = app.get(path).send().await.unwrap();
            let status = resp.status().as_u16();
            assert!(status == 400 || status == 404, "{path}: {status}");
            let (_, v) = json(resp).await;
            assert!(v["error"]["code"].is_string(), "{path}: {v}");
            assert!(
                v["error"]["innerError"]["request-id"].is_string(),
                "{path}: Graph's envelope: {v}"
            );
            assert!(v["error"].get("target").is_none(), "{path}: not Defender's envelope");
        }
        let id = app.existing_id(1);
        for (method, path, body) in [
            (
                "PATCH",
                format!("/v1.0/security/incidents/{id}"),
                json!({"status": "nonsense"}),
            ),
            ("PATCH", format!("/v1.0/security/incidents/{id}"), json!({"id": "5"})),
            ("PATCH", format!("/v1.0/security/incidents/{id}"), json!({})),
            (
                "POST",
                format!("/v1.0/security/incidents/{id}/comments"),
                json!({"text": "x"}),
            ),
            (
                "POST",
                format!("/v1.0/security/incidents/{id}/comments"),
                json!({"comment": 5}),
            ),
            (
                "POST",
                format!("/v1.0/security/incidents/{id}"),
                json!({"comment": "x"}),
            ),
        ] {
            let resp = app
                .client
                .request(method.parse().unwrap(), app.url(&path))
                .bearer_auth(&app.key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            assert!(status == 400 || status == 405, "{method} {path} {body}: {status}");
            let (_, v) = json(resp).await;
            assert!(v["error"]["innerError"]["request-id"].is_string(), "{v}");
        }
        // Unauthenticated callers of the Graph facade get Graph's envelope too.
        let resp = app
            .client
            .get(app.url("/v1.0/security/incidents/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let (_, v) = json(resp).await;
        assert!(v["error"]["innerError"].is_object(), "{v}");
        assert_eq!(upstream_calls(&app), before, "no bad request reached the upstream");
        app.stop().await;
    }
}

#[tokio::test]
async fn both_facades_share_one_entry_and_one_call_per_incident() {
    for app in [graph_app().await, defender_app().await] {
        let id = app.existing_id(3);
        let first = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
        assert_eq!(first.status(), 200);
        for path in [
            format!("/v1.0/security/incidents/{id}"),
            format!("/v1.0/security/incidents/{id}?$expand=alerts"),
            format!("/api/incidents/{id}"),
        ] {
            let r = app.get(&path).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(cache_status(&r).contains("hit"), "{path}: {}", cache_status(&r));
        }
        assert_eq!(upstream_calls(&app), 1, "one upstream call for both facades");
        // Concurrent cold misses from both facades collapse into one call too.
        let id2 = app.existing_id(id + 1);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let path = if i % 2 == 0 {
                format!("/api/incidents/{id2}")
            } else {
                format!("/v1.0/security/incidents/{id2}?$expand=alerts")
            };
            let req = app.get(&path);
            tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        assert_eq!(upstream_calls(&app), 2);
        app.stop().await;
    }
}

#[tokio::test]
async fn the_sync_follows_a_graph_upstream_in_ascending_time() {
    let small = SimConfig {
        incidents: 150,
        ..SimConfig::default()
    };
    let app = spawn_app_with(small, |c| {
        graph_upstream(c);
        route_quota(c, "list_incidents", &[(1_000, 60)]);
        c.sync.enabled = true;
        c.sync.interval = Duration::from_millis(500);
        c.sync.min_interval = Duration::from_millis(500);
        c.sync.overlap = Duration::from_secs(2);
        c.upstream.timeout = Duration::from_secs(2);
        c.sync.max_lag = Duration::from_secs(3);
        c.sync.lookback = Duration::from_secs(3650 * 24 * 3600); // every incident is "changed"
    })
    .await;
    eventually("a complete sync pass", Duration::from_secs(60), || async {
        app.readyz().await["sync"]["healthy"] == true
    })
    .await;
    assert!(calls(&app, "graph_list") >= 1);
    assert_eq!(calls(&app, "list"), 0);
    // The pass wrote every incident into the cache: a Get of both facades is a hit.
    let id = app.existing_id(10);
    for path in [format!("/api/incidents/{id}"), format!("/v1.0/security/incidents/{id}")] {
        let r = app.get(&path).send().await.unwrap();
        assert!(cache_status(&r).contains("hit"), "{path}: {}", cache_status(&r));
    }
    assert_eq!(calls(&app, "graph_get"), 0);
    // A change on the upstream is followed.
    let before = calls(&app, "graph_list");
    let (_, old) = json(app.get(&format!("/api/incidents/{id}")).send().await.unwrap()).await;
    app.sim.touch(id).expect("incident exists");
    eventually("the sync sees the change", Duration::from_secs(20), || async {
        let (_, v) = json(app.get(&format!("/api/incidents/{id}")).send().await.unwrap()).await;
        v["lastUpdateTime"] != old["lastUpdateTime"]
    })
    .await;
    assert!(calls(&app, "graph_list") > before);
    assert_eq!(calls(&app, "graph_get"), 0, "served by what the sync wrote");
    app.stop().await;
}

#[tokio::test]
async fn a_comment_that_fails_after_the_patch_is_reported_exactly_and_invites_no_retry() {
    let app = graph_app().await;
    let id = app.existing_id(20);
    let before = app.sim.graph_incident_json(id, false).unwrap();
    app.sim.set_faults(fault_on(
        "graph_comment",
        defender_proxy::simulator::FaultKind::Status { code: 503 },
        None,
    ));
    let body = json!({"status": "Resolved", "classification": "TruePositive", "comment": "closing"});
    let resp = app
        .patch(&format!("/api/incidents/{id}"), &body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert!(
        resp.headers().get("retry-after").is_none(),
        "a retry would add the comment twice"
    );
    let (_, v) = json(resp).await;
    assert_eq!(v["error"]["code"], "PartiallyApplied", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("status, classification was applied")
            || message.contains("classification, status was applied"),
        "{message}"
    );
    assert!(message.contains("the comment was not added"), "{message}");
    // The upstream has the update and not the comment.
    let after = app.sim.graph_incident_json(id, false).unwrap();
    assert_eq!(after["status"], "resolved");
    assert_eq!(after["comments"], before["comments"]);
    assert_eq!(calls(&app, "graph_update"), 1);
    assert_eq!(calls(&app, "graph_comment"), 1, "never retried by the proxy");
    app.stop().await;
}

#[tokio::test]
async fn paging_a_locally_answered_graph_query_lists_the_defender_part_once() {
    let app = spawn_app_with(
        SimConfig {
            incidents: 250,
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    let first = "/v1.0/security/incidents?$orderby=lastUpdateDateTime%20asc&$top=20&$count=true";
    let (s, page) = json(app.get(first).send().await.unwrap()).await;
    assert_eq!(s, 200, "{page}");
    let listed = calls(&app, "list");
    assert!(
        (1..=3).contains(&listed),
        "the Defender part listed in pages of 100: {listed}"
    );
    let mut seen = graph_ids(&page);
    let mut next = page["@odata.nextLink"].as_str().map(str::to_string);
    let total = page["@odata.count"].as_u64().unwrap();
    while let Some(link) = next {
        let (s, p) = json(app.client.get(&link).bearer_auth(&app.key).send().await.unwrap()).await;
        assert_eq!(s, 200);
        seen.extend(graph_ids(&p));
        next = p["@odata.nextLink"].as_str().map(str::to_string);
    }
    assert_eq!(seen.len() as u64, total, "every match exactly once");
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    assert_eq!(
        calls(&app, "list"),
        listed,
        "the later pages were cut from the kept match set"
    );
    app.stop().await;
}
