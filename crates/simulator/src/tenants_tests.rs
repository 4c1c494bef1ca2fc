//! Tests of a simulator serving several tenants: data, tokens, quota counters and stats kept
//! apart, and the 429 texts a client learns limits from. Requests go through the simulator's
//! router in process (the accept loop is the proxy's integration tests' business).

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::*;
use crate::token::base64url_decode;

const CONTOSO: &str = "contoso.onmicrosoft.com";
const FABRIKAM: &str = "fabrikam.onmicrosoft.com";
/// A service provider's multi-tenant app, registered in its own tenant.
const MSP_HOME: &str = "msp.onmicrosoft.com";
const MSP_APP: &str = "msp-app";
const MSP_SECRET: &str = "msp-secret";

fn per_minute(limit: u32) -> Vec<SimQuota> {
    vec![SimQuota {
        limit,
        window: Duration::from_secs(60),
    }]
}

/// The default tenant, Contoso and Fabrikam (each with an app of its own), and the MSP's tenant
/// whose app Contoso consented to and Fabrikam did not.
fn config() -> SimConfig {
    let mut msp = SimTenant::new(MSP_HOME);
    msp.client_id = MSP_APP.into();
    msp.client_secret = MSP_SECRET.into();
    msp.incidents = 10;
    let mut contoso = SimTenant::new(CONTOSO);
    contoso.consented_apps = vec![MSP_APP.into()];
    contoso.incidents = 60;
    let mut fabrikam = SimTenant::new(FABRIKAM);
    fabrikam.incidents = 60;
    SimConfig {
        incidents: 60,
        tenants: vec![contoso, fabrikam, msp],
        ..SimConfig::default()
    }
}

async fn start(cfg: SimConfig) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(cfg, listener).await.unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(sim: &SimHandle, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    answer(sim, req.body(body).unwrap()).await
}

async fn answer(sim: &SimHandle, req: Request<Body>) -> Answer {
    let resp = router(sim.shared.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, json }
}

async fn get(sim: &SimHandle, path: &str, token: &str) -> Answer {
    send(sim, Method::GET, path, Some(token), None).await
}

/// The client-credentials grant at `/{tenant}/oauth2/v2.0/token`.
async fn token_request(sim: &SimHandle, tenant: &str, client_id: &str, secret: &str, scope: &str) -> Answer {
    let form = format!(
        "grant_type=client_credentials&client_id={client_id}&client_secret={secret}&scope={}",
        scope.replace(':', "%3A").replace('/', "%2F")
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/{tenant}/oauth2/v2.0/token"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .unwrap();
    answer(sim, req).await
}

const DEFENDER: &str = "https://api.security.microsoft.com/.default";
const GRAPH: &str = "https://graph.microsoft.com/.default";

async fn token(sim: &SimHandle, tenant: &str, client_id: &str, secret: &str) -> String {
    let a = token_request(sim, tenant, client_id, secret, DEFENDER).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    a.json["access_token"].as_str().unwrap().to_string()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64url_decode(payload).unwrap()).unwrap()
}

/// An id both tenants have (ids ranges overlap, as real tenants' do).
fn shared_id(a: &SimTenantHandle, b: &SimTenantHandle) -> i64 {
    (1..)
        .find(|id| a.incident_json(*id).is_some() && b.incident_json(*id).is_some())
        .unwrap()
}

#[tokio::test]
async fn each_tenant_serves_its_own_incidents() {
    let sim = start(config()).await;
    let home = sim.tenant(&sim.cfg_tenant_id()).unwrap();
    let contoso = sim.tenant(CONTOSO).unwrap();
    assert_eq!(sim.tenant_ids()[1], CONTOSO);
    let home_token = home.issue_token();
    let contoso_token = contoso.issue_token();
    let id = shared_id(&home, &contoso);

    // One id, two incidents: each token sees its own tenant's.
    let a = get(&sim, &format!("/api/incidents/{id}"), &home_token).await.json;
    let b = get(&sim, &format!("/api/incidents/{id}"), &contoso_token).await.json;
    assert_eq!(a, sim.incident_json(id).unwrap());
    assert_eq!(b, contoso.incident_json(id).unwrap());
    assert!(a["incidentUri"].as_str().unwrap().ends_with(&sim.cfg_tenant_id()));
    assert!(b["incidentUri"].as_str().unwrap().ends_with(CONTOSO));
    // Seeded from the tenant id: not the same incidents under another tid.
    let names = |t: &SimTenantHandle| {
        (1..=60)
            .filter_map(|i| t.incident_json(i))
            .map(|v| v["incidentName"].clone())
            .collect::<Vec<_>>()
    };
    assert_ne!(names(&home), names(&contoso));

    // Lists and Graph too.
    let list = get(&sim, "/api/incidents?$top=100", &contoso_token).await.json;
    let items = list["value"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items
        .iter()
        .all(|i| i["incidentUri"].as_str().unwrap().ends_with(CONTOSO)));
    let graph = get(&sim, "/v1.0/security/incidents", &contoso.issue_graph_token())
        .await
        .json;
    let items = graph["value"].as_array().unwrap();
    assert!(!items.is_empty() && items.iter().all(|i| i["tenantId"] == CONTOSO));

    // A change in one tenant leaves the other's incident of the same id alone.
    let before = sim.incident_json(id).unwrap();
    let patched = send(
        &sim,
        Method::PATCH,
        &format!("/api/incidents/{id}"),
        Some(&contoso_token),
        Some(serde_json::json!({"comment": "contoso only"})),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(sim.incident_json(id).unwrap(), before);
    assert_eq!(contoso.stats().changes.len(), 1);
    assert!(sim.stats().changes.is_empty());
    let comments = contoso.incident_json(id).unwrap()["comments"].clone();
    let last = comments.as_array().unwrap().last().unwrap();
    assert_eq!(last["createdBy"], format!("API-App:{}", contoso.client_id()));

    // New incidents and touches are per tenant as well.
    let new_id = contoso.create_incident();
    assert!(contoso.incident_json(new_id).is_some());
    assert!(sim.incident_json(new_id).is_none());
    assert!(home.touch(id).is_some());
    assert_eq!(sim.stats().changes.len(), 1);
    assert_eq!(contoso.stats().changes.len(), 2);

    // Calls are counted by the tenant that served them.
    assert_eq!(home.stats().calls["get"].ok, 1);
    assert_eq!(contoso.stats().calls["get"].ok, 1);
    assert_eq!(contoso.stats().calls["list"].ok, 1);
    assert_eq!(contoso.stats().graph_calls["graph_list"].ok, 1);
    assert_eq!(sim.tenant(FABRIKAM).unwrap().stats().calls["get"].total, 0);
    sim.shutdown();
}

#[tokio::test]
async fn a_tenant_refuses_apps_it_did_not_consent_to() {
    let sim = start(config()).await;
    let default_tid = sim.cfg_tenant_id();
    let default_app = SimConfig::default();

    // Each tenant's own app gets tokens there, and only there.
    let t = token(
        &sim,
        FABRIKAM,
        &format!("{FABRIKAM}-app"),
        &format!("{FABRIKAM}-secret"),
    )
    .await;
    let c = claims(&t);
    assert_eq!(c["tid"], FABRIKAM);
    assert_eq!(c["appid"], format!("{FABRIKAM}-app"));
    assert_eq!(c["aud"], "https://api.security.microsoft.com");
    assert_eq!(c["iss"], format!("https://sts.windows.net/{FABRIKAM}/"));
    let refused = token_request(
        &sim,
        CONTOSO,
        &format!("{FABRIKAM}-app"),
        &format!("{FABRIKAM}-secret"),
        DEFENDER,
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json["error"], "unauthorized_client");
    assert_eq!(refused.json["error_codes"][0], 700016);
    assert!(refused.json["error_description"].as_str().unwrap().contains(CONTOSO));
    let refused = token_request(
        &sim,
        FABRIKAM,
        &default_app.client_id,
        &default_app.client_secret,
        DEFENDER,
    )
    .await;
    assert_eq!(refused.json["error_codes"][0], 700016);

    // The multi-tenant app: one secret, tokens in its home and where it was consented to.
    for tenant in [MSP_HOME, CONTOSO] {
        let t = token(&sim, tenant, MSP_APP, MSP_SECRET).await;
        assert_eq!(claims(&t)["tid"], tenant);
        assert_eq!(claims(&t)["appid"], MSP_APP);
    }
    for tenant in [FABRIKAM, default_tid.as_str()] {
        let refused = token_request(&sim, tenant, MSP_APP, MSP_SECRET, DEFENDER).await;
        assert_eq!(refused.json["error_codes"][0], 700016, "{tenant}");
    }
    let wrong = token_request(&sim, CONTOSO, MSP_APP, "contoso-secret", DEFENDER).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json["error_codes"][0], 7000215);
    // Tenant ids are matched as Entra matches them; unknown ones are refused.
    token(&sim, &CONTOSO.to_uppercase(), MSP_APP, MSP_SECRET).await;
    let unknown = token_request(&sim, "nowhere.example", MSP_APP, MSP_SECRET, DEFENDER).await;
    assert_eq!(unknown.json["error_codes"][0], 90002);

    // A Graph token of the consented app reads Contoso through Graph, not Defender.
    let graph = token_request(&sim, CONTOSO, MSP_APP, MSP_SECRET, GRAPH).await;
    let graph = graph.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&graph)["aud"], "https://graph.microsoft.com");
    let contoso = sim.tenant(CONTOSO).unwrap();
    let id = (1..).find(|i| contoso.incident_json(*i).is_some()).unwrap();
    let a = get(&sim, &format!("/v1.0/security/incidents/{id}"), &graph).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["tenantId"], CONTOSO);
    assert_eq!(
        get(&sim, &format!("/api/incidents/{id}"), &graph).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Its changes are attributed to the app that made them.
    let posted = send(
        &sim,
        Method::POST,
        &format!("/v1.0/security/incidents/{id}/comments"),
        Some(&graph),
        Some(serde_json::json!({"comment": "from the provider"})),
    )
    .await;
    assert_eq!(posted.status, StatusCode::OK);
    let last = posted.json["value"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["createdByDisplayName"], format!("API-App:{MSP_APP}"));

    // Token requests are counted by the tenant they named (unknown ones by the default).
    assert_eq!(contoso.stats().token_requests, 5);
    assert_eq!(contoso.stats().token_failures, 2);
    assert_eq!(sim.tenant(MSP_HOME).unwrap().stats().token_requests, 1);
    assert_eq!(sim.stats().token_requests, 2);
    assert_eq!(sim.stats().token_failures, 2);
    sim.shutdown();
}

#[tokio::test]
async fn a_token_the_simulator_did_not_issue_is_refused_whatever_its_claims() {
    let sim = start(config()).await;
    let contoso = sim.tenant(CONTOSO).unwrap();
    let real = contoso.issue_token();
    // Same claims, another signature: a forgery.
    let forged = format!("{}.AAAA", real.rsplit_once('.').unwrap().0);
    let a = get(&sim, "/api/incidents/1", &forged).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // An unknown token names no tenant: the default tenant counts the call.
    assert_eq!(sim.stats().calls["get"].unauthorized, 1);
    assert_eq!(contoso.stats().calls["get"].total, 0);
    // A known token on the wrong API is counted by its own tenant.
    let a = get(&sim, "/v1.0/security/incidents/1", &real).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(contoso.stats().graph_calls["graph_get"].unauthorized, 1);
    sim.shutdown();
}

#[tokio::test]
async fn each_tenant_has_its_own_quota_counters() {
    let mut cfg = config();
    cfg.quotas.get = per_minute(2);
    cfg.tenants[0].quotas.get = per_minute(3);
    let sim = start(cfg).await;
    let home = sim.issue_token();
    let contoso = sim.tenant(CONTOSO).unwrap();
    let contoso_token = contoso.issue_token();
    let fabrikam = sim.tenant(FABRIKAM).unwrap();
    let fabrikam_token = fabrikam.issue_token();

    for _ in 0..2 {
        assert_ne!(
            get(&sim, "/api/incidents/1", &home).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let throttled = get(&sim, "/api/incidents/1", &home).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.json["error"]["target"], sim.cfg_tenant_id());
    assert!(throttled.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Maximum allowed 2 per 00:01:00"));
    // The default tenant's spent quota costs Contoso nothing; Contoso has its own limit.
    for _ in 0..3 {
        assert_ne!(
            get(&sim, "/api/incidents/1", &contoso_token).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let throttled = get(&sim, "/api/incidents/1", &contoso_token).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.json["error"]["target"], CONTOSO);
    assert!(throttled.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Maximum allowed 3 per 00:01:00"));
    // Fabrikam has spent nothing.
    assert_ne!(
        get(&sim, "/api/incidents/1", &fabrikam_token).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(sim.stats().calls["get"].throttled, 1);
    assert_eq!(contoso.stats().calls["get"].throttled, 1);
    assert_eq!(contoso.stats().calls["get"].at_ms.len(), 4);
    assert_eq!(fabrikam.stats().calls["get"].throttled, 0);
    assert_eq!(fabrikam.stats().calls["get"].at_ms.len(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn faults_are_per_tenant_and_a_stated_throttle_says_what_it_is_told() {
    let sim = start(config()).await;
    let contoso = sim.tenant(CONTOSO).unwrap();
    let stated = FaultKind::StatedThrottle {
        limit: 30,
        window_secs: 3_600,
        retry_after_secs: 8,
    };
    contoso.set_faults(Faults {
        rules: vec![FaultRule {
            route: None,
            kind: stated,
            count: Some(2),
            probability: 1.0,
        }],
    });
    // The default tenant is untouched by Contoso's plan.
    assert_ne!(
        get(&sim, "/api/incidents/1", &sim.issue_token()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let a = get(&sim, "/api/incidents/1", &contoso.issue_token()).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    // The documented text, stating a limit the simulator does not enforce (100/min, 1,500/h).
    assert_eq!(
        a.json["error"]["message"],
        "API calls quota exceeded! Maximum allowed 30 per 01:00:00 for the key \
         Destination+TenantID+AppID. You can send requests again in 8 seconds."
    );
    assert_eq!(a.json["error"]["target"], CONTOSO);
    assert_eq!(a.headers[header::RETRY_AFTER], "8");
    // Graph's 429 states no limit: the wait only.
    let g = get(&sim, "/v1.0/security/incidents", &contoso.issue_graph_token()).await;
    assert_eq!(g.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(g.headers[header::RETRY_AFTER], "8");
    assert!(!g.json.to_string().contains("Maximum allowed"));
    assert_eq!(contoso.stats().calls["get"].faults, 1);
    assert_eq!(sim.stats().calls["get"].faults, 0);
    sim.shutdown();
}

#[tokio::test]
async fn a_tightened_quota_is_enforced_and_stated_at_once() {
    let sim = start(config()).await;
    let contoso = sim.tenant(CONTOSO).unwrap();
    let token = contoso.issue_token();
    for _ in 0..5 {
        assert_eq!(get(&sim, "/api/incidents?$top=1", &token).await.status, StatusCode::OK);
    }
    // The upstream now allows 4 lists a minute: the 5 already made count against it.
    contoso.set_quotas(SimQuotas {
        list: per_minute(4),
        ..SimQuotas::default()
    });
    let a = get(&sim, "/api/incidents?$top=1", &token).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let message = a.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("Maximum allowed 4 per 00:01:00"), "{message}");
    let wait: u64 = a.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((55..=60).contains(&wait), "{wait}");
    // Other tenants keep their limits.
    let home = sim.issue_token();
    for _ in 0..6 {
        assert_eq!(get(&sim, "/api/incidents?$top=1", &home).await.status, StatusCode::OK);
    }
    // And loosening works the same way.
    contoso.set_quotas(SimQuotas::default());
    assert_eq!(get(&sim, "/api/incidents?$top=1", &token).await.status, StatusCode::OK);
    sim.shutdown();
}

#[tokio::test]
async fn control_routes_take_a_tenant() {
    let sim = start(config()).await;
    let contoso = sim.tenant(CONTOSO).unwrap();
    let stats = |path: &'static str| {
        let sim = sim.clone();
        async move { send(&sim, Method::GET, path, None, None).await }
    };
    let a = send(
        &sim,
        Method::POST,
        &format!("/_sim/incidents?tenant={CONTOSO}"),
        None,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let id = a.json["incidentId"].as_i64().unwrap();
    assert!(contoso.incident_json(id).is_some());
    assert_eq!(contoso.stats().changes.len(), 1);
    let a = stats("/_sim/stats?tenant=contoso.onmicrosoft.com").await;
    assert_eq!(a.json["changes"][0]["id"], id);
    assert_eq!(stats("/_sim/stats").await.json["changes"], serde_json::json!([]));
    assert_eq!(stats("/_sim/stats?tenant=nowhere").await.status, StatusCode::NOT_FOUND);
    let a = send(
        &sim,
        Method::POST,
        "/_sim/stats/reset?tenant=contoso.onmicrosoft.com",
        None,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(contoso.stats().changes.is_empty());
    sim.shutdown();
}

#[tokio::test]
async fn single_tenant_configs_are_served_as_before() {
    let sim = start(SimConfig {
        incidents: 20,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(sim.tenant_ids(), vec![SimConfig::default().tenant_id]);
    let d = SimConfig::default();
    let t = token(&sim, &d.tenant_id, &d.client_id, &d.client_secret).await;
    assert_eq!(claims(&t)["tid"], d.tenant_id);
    let id = (1..).find(|i| sim.incident_json(*i).is_some()).unwrap();
    assert_eq!(
        get(&sim, &format!("/api/incidents/{id}"), &t).await.json,
        sim.incident_json(id).unwrap()
    );
    assert!(sim.tenant(&d.tenant_id.to_uppercase()).is_some());
    assert!(sim.tenant(CONTOSO).is_none());
    assert!(Simulator::start(
        SimConfig {
            tenants: vec![SimTenant::new(&d.tenant_id)],
            ..SimConfig::default()
        },
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    )
    .await
    .is_err());
    sim.shutdown();
}

impl SimHandle {
    /// The default tenant's id, as configured.
    fn cfg_tenant_id(&self) -> String {
        self.shared.cfg.tenant_id.clone()
    }
}
