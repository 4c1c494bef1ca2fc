//! Integration tests of the simulator's Microsoft Graph security routes over real sockets
//! (127.0.0.1:0): token audience, Graph's schema, paging and errors, its own quotas and faults,
//! and one store behind both dialects.

use std::time::Duration;

use crate::common::timed;
use defender_proxy::simulator::{
    FaultKind, FaultRule, Faults, Matches, SimConfig, SimHandle, SimQuota, SimQuotas, Simulator,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const DEFENDER_SCOPE: &str = "https://api.security.microsoft.com/.default";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

async fn start(cfg: SimConfig) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(cfg, listener).await.unwrap()
}

fn small() -> SimConfig {
    SimConfig {
        incidents: 200,
        ..SimConfig::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn existing_id(sim: &SimHandle) -> i64 {
    (1..).find(|id| sim.incident_json(*id).is_some()).unwrap()
}

fn missing_id(sim: &SimHandle) -> i64 {
    (1..).find(|id| sim.incident_json(*id).is_none()).unwrap()
}

async fn get(sim: &SimHandle, token: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn send_json(
    sim: &SimHandle,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: Value,
) -> reqwest::Response {
    client()
        .request(method, format!("{}{path}", sim.base_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn json_body(resp: reqwest::Response) -> Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

/// Asserts Graph's error envelope and returns (status, code, message).
async fn graph_error(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v = json_body(resp).await;
    let e = &v["error"];
    assert!(e["code"].is_string() && e["message"].is_string(), "{v}");
    let inner = &e["innerError"];
    for key in ["date", "request-id", "client-request-id"] {
        assert!(inner[key].is_string(), "innerError.{key} missing: {v}");
    }
    assert!(e.get("target").is_none(), "Graph errors have no target: {v}");
    (
        status,
        e["code"].as_str().unwrap().to_string(),
        e["message"].as_str().unwrap().to_string(),
    )
}

async fn token(sim: &SimHandle, scope: &str) -> reqwest::Response {
    client()
        .post(format!(
            "{}/00000000-0000-0000-0000-00000000d3f0/oauth2/v2.0/token",
            sim.base_url()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "defender-proxy-demo"),
            ("client_secret", "demo-secret"),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_are_bound_to_their_audience() {
    let sim = start(small()).await;
    let id = existing_id(&sim);
    let graph = json_body(token(&sim, GRAPH_SCOPE).await).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let defender = json_body(token(&sim, DEFENDER_SCOPE).await).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = token(&sim, "https://example.com/.default").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    assert_eq!(
        get(&sim, &graph, &format!("/v1.0/security/incidents/{id}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&sim, &defender, &format!("/api/incidents/{id}")).await.status(),
        200
    );

    // A Graph token on a Defender route: Defender's 401 envelope.
    let resp = get(&sim, &graph, &format!("/api/incidents/{id}")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "Unauthorized");
    assert!(v["error"]["message"].as_str().unwrap().contains("audience"));

    // A Defender token on a Graph route: Graph's 401 envelope.
    let resp = get(&sim, &defender, &format!("/v1.0/security/incidents/{id}")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (_, code, message) = graph_error(resp).await;
    assert_eq!(code, "InvalidAuthenticationToken");
    assert!(message.contains("Invalid audience"), "{message}");
    let resp = get(&sim, "", "/v1.0/security/incidents").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let stats = sim.stats();
    assert_eq!(stats.graph_calls["graph_get"].unauthorized, 1);
    assert_eq!(stats.graph_calls["graph_list"].unauthorized, 1);
    assert_eq!(stats.calls["get"].unauthorized, 1);
    assert_eq!(stats.calls.len(), 3, "Defender route counters are unchanged");
    sim.shutdown();
}

#[tokio::test]
async fn get_serves_graphs_schema_and_errors() {
    let sim = start(small()).await;
    let t = sim.issue_graph_token();
    let id = existing_id(&sim);
    let v = json_body(get(&sim, &t, &format!("/v1.0/security/incidents/{id}")).await).await;
    assert_eq!(v["id"], id.to_string());
    assert!(v["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("#security/incidents/$entity"));
    assert!(v.get("alerts").is_none(), "alerts only with $expand");
    let defender = sim.incident_json(id).unwrap();
    assert_eq!(v["displayName"], defender["incidentName"]);
    assert_eq!(v["createdDateTime"], defender["createdTime"]);
    assert_eq!(v["customTags"], defender["tags"]);
    let status = v["status"].as_str().unwrap();
    assert!(
        ["active", "resolved", "inProgress", "redirected"].contains(&status),
        "{status}"
    );

    let v = json_body(get(&sim, &t, &format!("/v1.0/security/incidents/{id}?$expand=alerts")).await).await;
    assert!(v["@odata.context"].as_str().unwrap().contains("(alerts())"));
    let alerts = v["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), defender["alerts"].as_array().unwrap().len());
    assert_eq!(alerts[0]["incidentId"], id.to_string());
    let evidence = alerts[0]["evidence"].as_array().unwrap();
    assert!(!evidence.is_empty());
    assert!(evidence.iter().all(|e| e["@odata.type"]
        .as_str()
        .unwrap()
        .starts_with("#microsoft.graph.security.")));
    assert!(
        !v.to_string().contains("\"createdBy\""),
        "Graph comments use createdByDisplayName"
    );

    let missing = missing_id(&sim);
    let (status, code, _) = graph_error(get(&sim, &t, &format!("/v1.0/security/incidents/{missing}")).await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
    let (status, code, _) = graph_error(get(&sim, &t, "/v1.0/security/incidents/abc").await).await;
    assert_eq!((status, code.as_str()), (400, "BadRequest"));
    let (status, _, _) = graph_error(get(&sim, &t, &format!("/v1.0/security/incidents/{id}?$select=id")).await).await;
    assert_eq!(status, 400);
    // The client's request id comes back in innerError.
    let resp = client()
        .get(format!("{}/v1.0/security/incidents/{missing}", sim.base_url()))
        .bearer_auth(&t)
        .header("client-request-id", "my-id-1")
        .send()
        .await
        .unwrap();
    let v = json_body(resp).await;
    assert_eq!(v["error"]["innerError"]["client-request-id"], "my-id-1");
    sim.shutdown();
}

#[tokio::test]
async fn list_pages_with_next_links_filters_orders_and_counts() {
    let sim = start(small()).await;
    let t = sim.issue_graph_token();

    // $top over 50: Graph's observed 400 (empty code, details array).
    let resp = get(&sim, &t, "/v1.0/security/incidents?$top=100").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "");
    assert_eq!(v["error"]["details"], json!([]));
    assert_eq!(
        v["error"]["message"],
        "The query specified in the URI is not valid. The limit of '50' for Top query has been exceeded. The value from the incoming request is '100'."
    );
    let (status, _, message) = graph_error(get(&sim, &t, "/v1.0/security/incidents?$select=id").await).await;
    assert_eq!(status, 400);
    assert!(message.contains("$select"), "{message}");
    let (status, _, _) = graph_error(get(&sim, &t, "/v1.0/security/incidents?$filter=status eq 'Active'").await).await;
    assert_eq!(status, 400, "enum literals are camelCase");

    // Paging: follow nextLink to the end; it is absolute on the simulator's own host.
    let mut url = format!("{}/v1.0/security/incidents?$top=40&$count=true", sim.base_url());
    let mut seen = Vec::new();
    let mut count = None;
    for _ in 0..20 {
        let resp = client().get(&url).bearer_auth(&t).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let page = json_body(resp).await;
        assert_eq!(
            page["@odata.context"],
            "https://graph.microsoft.com/v1.0/$metadata#security/incidents"
        );
        count = page["@odata.count"].as_u64();
        let items = page["value"].as_array().unwrap();
        assert!(items.len() <= 40);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        match page["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("{}/v1.0/security/incidents?", sim.base_url())),
                    "{next}"
                );
                url = next.to_string();
            }
            None => break,
        }
    }
    let total = count.expect("@odata.count with $count=true") as usize;
    assert_eq!(seen.len(), total);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), total, "no incident twice across pages");
    let defender_total = (1..=200).filter(|id| sim.incident_json(*id).is_some()).count();
    assert_eq!(total, defender_total);

    // Default page size is 50.
    let page = json_body(get(&sim, &t, "/v1.0/security/incidents").await).await;
    assert_eq!(page["value"].as_array().unwrap().len(), 50);
    assert!(page.get("@odata.count").is_none());

    // Filter on a Graph-only field, with the documented spelling.
    let page = json_body(
        get(
            &sim,
            &t,
            "/v1.0/security/incidents?$filter=severity%20eq%20'high'%20and%20status%20ne%20'resolved'&$top=50",
        )
        .await,
    )
    .await;
    let items = page["value"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items
        .iter()
        .all(|i| i["severity"] == "high" && i["status"] != "resolved"));

    // Order by lastUpdateDateTime ascending.
    let page = json_body(
        get(
            &sim,
            &t,
            "/v1.0/security/incidents?$orderby=lastUpdateDateTime%20asc&$top=30",
        )
        .await,
    )
    .await;
    let stamps: Vec<&str> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["lastUpdateDateTime"].as_str().unwrap())
        .collect();
    assert_eq!(stamps.len(), 30);
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");

    // $expand=alerts on a list.
    let page = json_body(get(&sim, &t, "/v1.0/security/incidents?$top=2&$expand=alerts").await).await;
    assert!(page["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("incidents(alerts())"));
    assert!(page["value"][0]["alerts"].is_array());
    sim.shutdown();
}

#[tokio::test]
async fn changes_through_one_dialect_show_in_the_other() {
    let sim = start(small()).await;
    let gt = sim.issue_graph_token();
    let dt = sim.issue_token();
    let id = existing_id(&sim);

    // Graph PATCH: 200 with the full incident; Defender sees it.
    let resp = send_json(
        &sim,
        reqwest::Method::PATCH,
        &gt,
        &format!("/v1.0/security/incidents/{id}"),
        json!({"status": "resolved", "classification": "truePositive", "determination": "compromisedAccount", "customTags": ["graph"], "assignedTo": "g@contoso.com", "severity": "high"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let g = json_body(resp).await;
    assert_eq!(g["status"], "resolved");
    assert_eq!(g["determination"], "compromisedAccount");
    assert_eq!(g["id"], id.to_string());
    let d = json_body(get(&sim, &dt, &format!("/api/incidents/{id}")).await).await;
    assert_eq!(d["status"], "Resolved");
    assert_eq!(d["classification"], "TruePositive");
    assert_eq!(d["determination"], "CompromisedAccount");
    assert_eq!(d["tags"], json!(["graph"]));
    assert_eq!(d["assignedTo"], "g@contoso.com");
    assert_eq!(d["severity"], "High");
    assert_eq!(d["lastUpdateTime"], g["lastUpdateDateTime"]);

    // Defender PATCH with a comment: Graph sees both.
    let resp = send_json(
        &sim,
        reqwest::Method::PATCH,
        &dt,
        &format!("/api/incidents/{id}"),
        json!({"status": "Active", "comment": "from defender"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let g = json_body(get(&sim, &gt, &format!("/v1.0/security/incidents/{id}")).await).await;
    assert_eq!(g["status"], "active");
    let last = g["comments"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["comment"], "from defender");
    assert!(last["createdDateTime"].is_string() && last["createdByDisplayName"].is_string());

    // Graph comment POST: 200 with every comment; Defender sees it.
    let before = g["comments"].as_array().unwrap().len();
    let resp = send_json(
        &sim,
        reqwest::Method::POST,
        &gt,
        &format!("/v1.0/security/incidents/{id}/comments"),
        json!({"@odata.type": "microsoft.graph.security.alertComment", "comment": "from graph"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let c = json_body(resp).await;
    let all = c["value"].as_array().unwrap();
    assert_eq!(all.len(), before + 1);
    assert_eq!(all.last().unwrap()["comment"], "from graph");
    let d = json_body(get(&sim, &dt, &format!("/api/incidents/{id}")).await).await;
    assert_eq!(
        d["comments"].as_array().unwrap().last().unwrap()["comment"],
        "from graph"
    );

    // Bad bodies: 400 in Graph's shape, nothing changed; unknown id: 404.
    for body in [
        json!({"status": "Closed"}),
        json!({"status": "awaitingAction"}),
        json!({"comment": "not on PATCH"}),
        json!({"customTags": "x"}),
    ] {
        let resp = send_json(
            &sim,
            reqwest::Method::PATCH,
            &gt,
            &format!("/v1.0/security/incidents/{id}"),
            body,
        )
        .await;
        let (status, code, _) = graph_error(resp).await;
        assert_eq!((status, code.as_str()), (400, "BadRequest"));
    }
    let resp = send_json(
        &sim,
        reqwest::Method::POST,
        &gt,
        &format!("/v1.0/security/incidents/{id}/comments"),
        json!({"text": "x"}),
    )
    .await;
    assert_eq!(graph_error(resp).await.0, 400);
    let missing = missing_id(&sim);
    let resp = send_json(
        &sim,
        reqwest::Method::PATCH,
        &gt,
        &format!("/v1.0/security/incidents/{missing}"),
        json!({"status": "active"}),
    )
    .await;
    assert_eq!(graph_error(resp).await.0, 404);
    let d2 = json_body(get(&sim, &dt, &format!("/api/incidents/{id}")).await).await;
    assert_eq!(d2["lastUpdateTime"], d["lastUpdateTime"]);

    let stats = sim.stats();
    assert_eq!(stats.graph_calls["graph_update"].total, 6);
    assert_eq!(stats.graph_calls["graph_update"].ok, 1);
    assert_eq!(stats.graph_calls["graph_update"].not_found, 1);
    assert_eq!(stats.graph_calls["graph_comment"].total, 2);
    assert_eq!(stats.calls["update"].total, 1);
    assert_eq!(stats.changes.len(), 3);
    sim.shutdown();
}

fn quota(limit: u32, millis: u64) -> SimQuota {
    SimQuota {
        limit,
        window: Duration::from_millis(millis),
    }
}

#[tokio::test]
async fn graph_routes_have_their_own_quotas_and_fractional_retry_after() {
    let _timed = timed().await;
    let sim = start(SimConfig {
        quotas: SimQuotas {
            graph_get: vec![quota(2, 10_000)],
            get: vec![quota(100, 60_000)],
            ..SimQuotas::default()
        },
        ..small()
    })
    .await;
    let t = sim.issue_graph_token();
    let id = existing_id(&sim);
    let path = format!("/v1.0/security/incidents/{id}");
    assert_eq!(get(&sim, &t, &path).await.status(), 200);
    assert_eq!(get(&sim, &t, &path).await.status(), 200);
    let resp = get(&sim, &t, &path).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = resp.headers()["retry-after"].to_str().unwrap().to_string();
    let secs: f64 = retry.parse().unwrap();
    assert!(retry.contains('.'), "fractional Retry-After: {retry}");
    assert!(secs > 0.0 && secs <= 10.0, "{secs}");
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "TooManyRequests");
    assert_eq!(v["error"]["innerError"]["status"], "429");
    // The Defender route and other Graph routes count separately.
    assert_eq!(
        get(&sim, &sim.issue_token(), &format!("/api/incidents/{id}"))
            .await
            .status(),
        200
    );
    assert_eq!(get(&sim, &t, "/v1.0/security/incidents?$top=1").await.status(), 200);
    let stats = sim.stats();
    assert_eq!(stats.graph_calls["graph_get"].throttled, 1);
    assert_eq!(stats.graph_calls["graph_get"].at_ms.len(), 3);
    assert_eq!(stats.calls["get"].throttled, 0);
    sim.shutdown();

    // Whole seconds when configured so.
    let sim = start(SimConfig {
        graph_fractional_retry_after: false,
        quotas: SimQuotas {
            graph_list: vec![quota(1, 5_000)],
            ..SimQuotas::default()
        },
        ..small()
    })
    .await;
    let t = sim.issue_graph_token();
    assert_eq!(get(&sim, &t, "/v1.0/security/incidents?$top=1").await.status(), 200);
    let resp = get(&sim, &t, "/v1.0/security/incidents?$top=1").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry));
    sim.shutdown();
}

#[tokio::test]
async fn faults_apply_to_graph_routes_by_name() {
    let sim = start(small()).await;
    let t = sim.issue_graph_token();
    let id = existing_id(&sim);
    sim.set_faults(Faults {
        rules: vec![
            FaultRule {
                route: Some("graph_get".into()),
                kind: FaultKind::Status { code: 503 },
                count: Some(1),
                probability: 1.0,
            },
            FaultRule {
                route: Some("graph_list".into()),
                kind: FaultKind::Throttle { retry_after_secs: 7 },
                count: Some(1),
                probability: 1.0,
            },
            FaultRule {
                route: Some("graph_update".into()),
                kind: FaultKind::Malformed,
                count: Some(1),
                probability: 1.0,
            },
        ],
    });
    let path = format!("/v1.0/security/incidents/{id}");
    let (status, code, _) = graph_error(get(&sim, &t, &path).await).await;
    assert_eq!((status, code.as_str()), (503, "serviceNotAvailable"));
    assert_eq!(get(&sim, &t, &path).await.status(), 200, "count spent");
    let resp = get(&sim, &t, "/v1.0/security/incidents").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    let resp = send_json(&sim, reqwest::Method::PATCH, &t, &path, json!({"assignedTo": "x"})).await;
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "truncated body");
    // The PATCH was applied although its answer was spoiled.
    assert_eq!(sim.incident_json(id).unwrap()["assignedTo"], "x");
    // Defender routes are untouched by Graph rules.
    assert_eq!(
        get(&sim, &sim.issue_token(), &format!("/api/incidents/{id}"))
            .await
            .status(),
        200
    );
    let stats = sim.stats();
    assert_eq!(stats.graph_calls["graph_get"].faults, 1);
    assert_eq!(stats.graph_calls["graph_list"].faults, 1);
    assert_eq!(stats.graph_calls["graph_update"].faults, 1);
    assert_eq!(stats.calls["get"].faults, 0);
    sim.shutdown();
}

async fn bytes(sim: &SimHandle, token: &str, path_and_query: &str) -> Vec<u8> {
    let resp = get(sim, token, path_and_query).await;
    assert_eq!(resp.status(), 200, "{path_and_query}");
    resp.bytes().await.unwrap().to_vec()
}

/// The Defender facade's list path, end to end over the simulator: a Defender page assembled
/// from (up to two) translated Graph pages equals the Defender page, field by field.
#[tokio::test]
async fn a_defender_page_from_graph_pages_equals_the_defender_page() {
    use defender_proxy::dialect::incident::{field_differences, graph_page_to_defender, DEFENDER_FIELDS_LOST};
    use defender_proxy::dialect::query::{defender_list_plan, needs_next_page};
    use defender_proxy::odata::ListQuery;

    let sim = start(SimConfig {
        incidents: 300,
        ..SimConfig::default()
    })
    .await;
    let (dt, gt) = (sim.issue_token(), sim.issue_graph_token());
    let some = sim.incident_json(existing_id(&sim)).unwrap();
    let since = some["lastUpdateTime"].as_str().unwrap().to_string();
    for raw in [
        "$top=100&$skip=30&$filter=status eq 'Active' or status eq 'InProgress'".to_string(),
        "$top=70".to_string(),
        String::new(),
        format!("$skip=5&$top=3&$filter=lastUpdateTime ge {since}"),
        "$skip=280".to_string(),
        "$filter=assignedTo eq null and not (status eq 'Resolved')&$top=60&$skip=1".to_string(),
    ] {
        let query = ListQuery::parse(&raw).unwrap();
        let expected: Value =
            serde_json::from_slice(&bytes(&sim, &dt, &format!("/api/incidents?{}", query.canonical())).await).unwrap();
        let expected = expected["value"].as_array().unwrap().clone();
        let mut got = Vec::new();
        let mut calls = 0;
        for graph_query in defender_list_plan(&query) {
            calls += 1;
            let body = bytes(
                &sim,
                &gt,
                &format!("/v1.0/security/incidents?{}", graph_query.canonical()),
            )
            .await;
            let (items, _) = graph_page_to_defender(&body).unwrap();
            let n = items.len();
            got.extend(items);
            if !needs_next_page(&graph_query, n) {
                break;
            }
        }
        assert!(calls <= 2, "{raw}");
        let ids = |v: &[Value]| v.iter().map(|i| i["incidentId"].as_i64().unwrap()).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&expected), "{raw}: same incidents in the same order");
        for (e, g) in expected.iter().zip(&got) {
            let d = field_differences(e, g, DEFENDER_FIELDS_LOST);
            assert!(d.is_empty(), "{raw}: incident {}: {d:?}", e["incidentId"]);
        }
    }
    sim.shutdown();
}

/// The Graph facade over a Defender upstream, end to end over the simulator: a direct plan
/// (one Defender call) and a local plan (Graph-only filter field, applied to translated
/// incidents) both give the Graph page the simulator's Graph route gives.
#[tokio::test]
async fn a_graph_page_from_a_defender_upstream_equals_the_graph_page() {
    use defender_proxy::dialect::incident::{defender_page_to_graph, field_differences, GRAPH_ONLY_FIELDS};
    use defender_proxy::dialect::query::{graph_list_over_defender, GraphOverDefender};
    use defender_proxy::odata::GraphListQuery;

    let sim = start(SimConfig {
        incidents: 300,
        ..SimConfig::default()
    })
    .await;
    let (dt, gt) = (sim.issue_token(), sim.issue_graph_token());
    for raw in [
        "$filter=status eq 'active'&$top=20&$skip=40",
        "$top=50",
        "$filter=severity eq 'unknown' or (severity eq 'high' and determination ne 'unknown')&$top=50",
        "$filter=classification eq 'truePositive'&$orderby=lastUpdateDateTime asc&$top=10&$skip=3&$count=true",
    ] {
        let query = GraphListQuery::parse(raw).unwrap();
        let expected: Value =
            serde_json::from_slice(&bytes(&sim, &gt, &format!("/v1.0/security/incidents?{}", query.canonical())).await)
                .unwrap();
        let expected = expected["value"].as_array().unwrap().clone();
        let got: Vec<Value> = match graph_list_over_defender(&query) {
            GraphOverDefender::Direct(defender) => {
                let body = bytes(&sim, &dt, &format!("/api/incidents?{}", defender.canonical())).await;
                defender_page_to_graph(&body, query.expand_alerts).unwrap()
            }
            GraphOverDefender::Local { upstream } => {
                // Every Defender page of the upstream filter, then the Graph query locally.
                let mut all = Vec::new();
                for page in 0..10u64 {
                    let mut q = upstream.clone();
                    q.top = Some(100);
                    q.skip = Some(page * 100);
                    let body = bytes(&sim, &dt, &format!("/api/incidents?{}", q.canonical())).await;
                    let items = defender_page_to_graph(&body, query.expand_alerts).unwrap();
                    let n = items.len();
                    all.extend(items);
                    if n < 100 {
                        break;
                    }
                }
                let mut matching: Vec<Value> = all
                    .into_iter()
                    .filter(|i| query.filter.as_ref().map_or(true, |f| f.matches(i)))
                    .collect();
                if let Some(order) = query.orderby {
                    let key = order.field.name();
                    matching.sort_by(|a, b| {
                        let k = |v: &Value| {
                            (
                                v[key].as_str().unwrap_or("").to_string(),
                                v["id"].as_str().unwrap().parse::<i64>().unwrap(),
                            )
                        };
                        if order.descending {
                            k(b).cmp(&k(a))
                        } else {
                            k(a).cmp(&k(b))
                        }
                    });
                }
                let skip = query.skip.unwrap_or(0) as usize;
                let top = query.top.unwrap_or(50) as usize;
                matching.into_iter().skip(skip).take(top).collect()
            }
        };
        let ids = |v: &[Value]| {
            v.iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert!(!expected.is_empty(), "{raw}: a test over an empty page proves little");
        assert_eq!(ids(&got), ids(&expected), "{raw}");
        for (e, g) in expected.iter().zip(&got) {
            let d = field_differences(e, g, GRAPH_ONLY_FIELDS);
            assert!(d.is_empty(), "{raw}: incident {}: {d:?}", e["id"]);
        }
    }
    sim.shutdown();
}

/// Drops what legitimately differs between two simulators applying the same change at
/// different moments: the change's timestamp, in both dialects' spellings.
fn without_change_times(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    for key in ["lastUpdateTime", "lastUpdateDateTime"] {
        o.remove(key);
    }
    if let Some(Value::Array(comments)) = o.get_mut("comments") {
        for c in comments {
            let c = c.as_object_mut().unwrap();
            c.remove("createdTime");
            c.remove("createdDateTime");
        }
    }
    v
}

/// Updates, end to end: a Defender PATCH sent as Graph PATCH + comment POST leaves the incident
/// exactly as the Defender PATCH itself does, and a Graph PATCH + comment sent as one Defender
/// PATCH leaves it exactly as the Graph calls do (two simulators with one seed).
#[tokio::test]
async fn updates_translated_either_way_change_the_same_things() {
    use defender_proxy::dialect::update::{defender_update_to_graph, graph_comment_body, graph_update_to_defender};

    let (a, b) = (start(small()).await, start(small()).await);
    let id = existing_id(&a);
    assert_eq!(a.incident_json(id), b.incident_json(id), "one seed, one data set");

    let defender_patch = json!({"status": "Resolved", "assignedTo": "x@contoso.com", "classification": "FalsePositive",
        "determination": "Clean", "tags": ["a", "b"], "comment": "closing"});
    let resp = send_json(
        &a,
        reqwest::Method::PATCH,
        &a.issue_token(),
        &format!("/api/incidents/{id}"),
        defender_patch.clone(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let translated = defender_update_to_graph(&defender_patch).unwrap();
    let gt = b.issue_graph_token();
    let resp = send_json(
        &b,
        reqwest::Method::PATCH,
        &gt,
        &format!("/v1.0/security/incidents/{id}"),
        translated.patch.unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = send_json(
        &b,
        reqwest::Method::POST,
        &gt,
        &format!("/v1.0/security/incidents/{id}/comments"),
        graph_comment_body(translated.comment.as_deref().unwrap()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        without_change_times(a.incident_json(id).unwrap()),
        without_change_times(b.incident_json(id).unwrap())
    );

    let other = (id + 1..).find(|i| a.incident_json(*i).is_some()).unwrap();
    let graph_patch = json!({"status": "inProgress", "classification": "informationalExpectedActivity",
        "determination": "confirmedUserActivity", "customTags": ["z"], "assignedTo": null});
    let gt = a.issue_graph_token();
    let resp = send_json(
        &a,
        reqwest::Method::PATCH,
        &gt,
        &format!("/v1.0/security/incidents/{other}"),
        graph_patch.clone(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = send_json(
        &a,
        reqwest::Method::POST,
        &gt,
        &format!("/v1.0/security/incidents/{other}/comments"),
        graph_comment_body("why"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let defender = graph_update_to_defender(Some(&graph_patch), Some("why")).unwrap();
    let resp = send_json(
        &b,
        reqwest::Method::PATCH,
        &b.issue_token(),
        &format!("/api/incidents/{other}"),
        defender,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (ga, gb) = (
        a.graph_incident_json(other, true).unwrap(),
        b.graph_incident_json(other, true).unwrap(),
    );
    assert_eq!(ga["determination"], "confirmedActivity");
    assert_eq!(without_change_times(ga), without_change_times(gb));
    a.shutdown();
    b.shutdown();
}
