//! Integration tests of the built-in Defender simulator over real sockets (127.0.0.1:0).

use std::time::{Duration, Instant};

use crate::common::{quota, timed};
use defender_proxy::simulator::{FaultKind, FaultRule, Faults, SimConfig, SimHandle, SimQuotas, Simulator, Stats};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;

const SCOPE: &str = "https://api.security.microsoft.com/.default";

async fn start(cfg: SimConfig) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(cfg, listener).await.unwrap()
}

fn cfg(incidents: u64) -> SimConfig {
    SimConfig {
        incidents,
        ..SimConfig::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn rule(route: Option<&str>, kind: FaultKind, count: Option<u64>) -> FaultRule {
    FaultRule {
        route: route.map(str::to_string),
        kind,
        count,
        probability: 1.0,
    }
}

/// An id that exists in the simulator.
fn existing_id(sim: &SimHandle) -> i64 {
    (1..).find(|id| sim.incident_json(*id).is_some()).unwrap()
}

async fn get(sim: &SimHandle, token: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn json(resp: reqwest::Response) -> Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

fn token_form<'a>(id: &'a str, secret: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret),
        ("scope", SCOPE),
    ]
}

async fn post_token(sim: &SimHandle, tenant: &str, form: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(format!("{}/{tenant}/oauth2/v2.0/token", sim.base_url()))
        .form(form)
        .send()
        .await
        .unwrap()
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn jwt(claims: Value) -> String {
    let header = b64url(br#"{"alg":"RS256","typ":"JWT","x5t":"AAAA"}"#);
    let payload = b64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.c2lnbmF0dXJl")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn is_upstream_timestamp(s: &str) -> bool {
    // 2024-05-01T10:11:12.1234567Z
    s.len() == 28
        && s.as_bytes()[10] == b'T'
        && s.as_bytes()[19] == b'.'
        && s.ends_with('Z')
        && s[20..27].bytes().all(|b| b.is_ascii_digit())
}

#[tokio::test]
async fn token_endpoint_issues_tokens_and_refuses_bad_requests() {
    let sim = start(cfg(20)).await;
    let c = SimConfig::default();

    let resp = post_token(&sim, &c.tenant_id, &token_form(&c.client_id, &c.client_secret)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store, no-cache");
    let body = json(resp).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let token = body["access_token"].as_str().unwrap().to_string();
    assert!(token.len() >= 32);
    let id = existing_id(&sim);
    assert_eq!(
        get(&sim, &token, &format!("/api/incidents/{id}")).await.status(),
        StatusCode::OK
    );

    // Wrong secret: Entra's 401 invalid_client with AADSTS7000215.
    let resp = post_token(&sim, &c.tenant_id, &token_form(&c.client_id, "nope")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body = json(resp).await;
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], serde_json::json!([7000215]));
    let description = body["error_description"].as_str().unwrap();
    assert!(description.starts_with("AADSTS7000215: Invalid client secret provided."));
    for key in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[key].is_string(), "{key}");
    }

    // Unknown client, wrong tenant, unsupported grant, bad scope.
    let resp = post_token(&sim, &c.tenant_id, &token_form("other-app", &c.client_secret)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(resp).await["error"], "unauthorized_client");
    let resp = post_token(&sim, "contoso.example", &token_form(&c.client_id, &c.client_secret)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(resp).await["error_codes"], serde_json::json!([90002]));
    let mut form = token_form(&c.client_id, &c.client_secret);
    form[0].1 = "password";
    let resp = post_token(&sim, &c.tenant_id, &form).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(resp).await["error"], "unsupported_grant_type");
    let mut form = token_form(&c.client_id, &c.client_secret);
    form[3].1 = "https://graph.microsoft.com/User.Read";
    let resp = post_token(&sim, &c.tenant_id, &form).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(resp).await["error"], "invalid_scope");

    let stats = sim.stats();
    assert_eq!((stats.token_requests, stats.token_failures), (6, 5));
    sim.shutdown();
}

#[tokio::test]
async fn token_endpoint_accepts_a_client_assertion() {
    let sim = start(cfg(20)).await;
    let c = SimConfig::default();
    let aud = format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", c.tenant_id);
    let assertion_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    let send = |assertion: String| {
        let sim = sim.clone();
        let c = c.clone();
        async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", c.client_id.as_str()),
                ("client_assertion_type", assertion_type),
                ("client_assertion", assertion.as_str()),
                ("scope", SCOPE),
            ];
            post_token(&sim, &c.tenant_id, &form).await
        }
    };
    let now = unix_now();
    let good = jwt(serde_json::json!({
        "iss": c.client_id, "sub": c.client_id, "aud": aud,
        "exp": now + 600, "nbf": now, "jti": "1"
    }));
    let resp = send(good).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let token = json(resp).await["access_token"].as_str().unwrap().to_string();
    let id = existing_id(&sim);
    assert_eq!(
        get(&sim, &token, &format!("/api/incidents/{id}")).await.status(),
        StatusCode::OK
    );

    let expired = jwt(serde_json::json!({
        "iss": c.client_id, "sub": c.client_id, "aud": aud, "exp": now - 10
    }));
    let resp = send(expired).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(resp).await["error_codes"], serde_json::json!([700024]));

    let wrong_issuer = jwt(serde_json::json!({
        "iss": "someone-else", "sub": c.client_id, "aud": aud, "exp": now + 600
    }));
    let resp = send(wrong_issuer).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(resp).await["error"], "invalid_client");

    let wrong_audience = jwt(serde_json::json!({
        "iss": c.client_id, "sub": c.client_id, "aud": "https://example.com", "exp": now + 600
    }));
    assert_eq!(send(wrong_audience).await.status(), StatusCode::UNAUTHORIZED);

    let resp = send("not-a-jwt".into()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    sim.shutdown();
}

#[tokio::test]
async fn api_needs_a_valid_unexpired_token_and_refusals_spend_no_quota() {
    let _timed = timed().await;
    let sim = start(SimConfig {
        incidents: 20,
        token_ttl: Duration::from_secs(1),
        quotas: SimQuotas {
            get: vec![quota(1, 60)],
            ..SimQuotas::default()
        },
        ..SimConfig::default()
    })
    .await;
    let id = existing_id(&sim);
    let url = format!("{}/api/incidents/{id}", sim.base_url());

    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body = json(resp).await;
    assert_eq!(body["error"]["code"], "Unauthorized");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"]["target"].is_string());

    let resp = client().get(&url).bearer_auth("forged").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));

    // The quota is 1 per minute: had the refused calls counted, this would be a 429.
    let token = sim.issue_token();
    assert_eq!(
        get(&sim, &token, &format!("/api/incidents/{id}")).await.status(),
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let resp = get(&sim, &token, &format!("/api/incidents/{id}")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "expired token");

    let stats = sim.stats();
    let g = &stats.calls["get"];
    assert_eq!((g.total, g.ok, g.unauthorized), (4, 1, 3));
    assert_eq!(g.at_ms.len(), 1, "only the authenticated call is logged");
    sim.shutdown();
}

#[tokio::test]
async fn get_answers_200_404_and_400() {
    let sim = start(SimConfig {
        incidents: 60,
        missing_share: 0.5,
        ..SimConfig::default()
    })
    .await;
    let token = sim.issue_token();
    let id = existing_id(&sim);
    let missing = (1..=60).find(|i| sim.incident_json(*i).is_none()).unwrap();

    let resp = get(&sim, &token, &format!("/api/incidents/{id}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json") && ct.contains("odata.metadata=minimal"));
    let body = json(resp).await;
    assert_eq!(body["incidentId"], id);
    assert_eq!(Some(&body), sim.incident_json(id).as_ref());
    assert!(is_upstream_timestamp(body["lastUpdateTime"].as_str().unwrap()));
    assert!(is_upstream_timestamp(body["createdTime"].as_str().unwrap()));
    assert!(!body["alerts"].as_array().unwrap().is_empty());

    for path in [format!("/api/incidents/{missing}"), "/api/incidents/999999".to_string()] {
        let resp = get(&sim, &token, &path).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json(resp).await["error"]["code"], "NotFound");
    }
    let resp = get(&sim, &token, "/api/incidents/abc").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(json(resp).await["error"]["code"].is_string());

    let g = &sim.stats().calls["get"];
    assert_eq!((g.total, g.ok, g.not_found), (4, 1, 2));
    sim.shutdown();
}

#[tokio::test]
async fn quota_answers_429_at_limit_plus_one_with_the_upstream_body() {
    let _timed = timed().await;
    let sim = start(SimConfig {
        incidents: 20,
        quotas: SimQuotas {
            get: vec![quota(3, 1)],
            ..SimQuotas::default()
        },
        ..SimConfig::default()
    })
    .await;
    let token = sim.issue_token();
    let path = format!("/api/incidents/{}", existing_id(&sim));
    for _ in 0..3 {
        assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);
    }
    let resp = get(&sim, &token, &path).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 1);
    let expected = format!(
        "{{\"error\":{{\"code\":\"429\",\"message\":\"API calls quota exceeded! Maximum allowed 3 \
         per 00:00:01 for the key Destination+TenantID+AppID. You can send requests again in \
         {retry} seconds.\",\"target\":\"{}\"}}}}",
        SimConfig::default().tenant_id
    );
    assert_eq!(resp.text().await.unwrap(), expected);

    // Calling while throttled stays throttled; other routes have their own quota.
    let resp = get(&sim, &token, &path).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        get(&sim, &token, "/api/incidents?$top=1").await.status(),
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(50)).await;
    assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);

    let g = &sim.stats().calls["get"];
    assert_eq!((g.total, g.ok, g.throttled), (6, 4, 2));
    assert_eq!(g.at_ms.len(), 6);
    sim.shutdown();
}

#[tokio::test]
async fn stacked_windows_name_the_binding_quota() {
    let _timed = timed().await;
    let sim = start(SimConfig {
        incidents: 20,
        quotas: SimQuotas {
            get: vec![quota(5, 1), quota(6, 3_600)],
            ..SimQuotas::default()
        },
        ..SimConfig::default()
    })
    .await;
    let token = sim.issue_token();
    let path = format!("/api/incidents/{}", existing_id(&sim));
    for _ in 0..5 {
        assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);
    }
    // The 6th: the one-second window is full.
    let resp = get(&sim, &token, &path).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(json(resp).await["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Maximum allowed 5 per 00:00:01"));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Six calls (one of them throttled) are in the hour: the hour window binds now.
    let resp = get(&sim, &token, &path).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3_590..=3_600).contains(&retry), "{retry}");
    let message = json(resp).await["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("Maximum allowed 6 per 01:00:00"), "{message}");
    assert!(message.ends_with(&format!("again in {retry} seconds.")));
    sim.shutdown();
}

#[tokio::test]
async fn list_filters_pages_and_orders_newest_first() {
    let sim = start(cfg(300)).await;
    let token = sim.issue_token();

    let resp = get(&sim, &token, "/api/incidents").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json(resp).await;
    assert_eq!(
        body["@odata.context"],
        "https://api.security.microsoft.com/api/$metadata#Incidents"
    );
    let first_page = body["value"].as_array().unwrap().clone();
    assert_eq!(first_page.len(), 100, "default page size");
    let key = |v: &Value| {
        (
            v["createdTime"].as_str().unwrap().to_string(),
            v["incidentId"].as_i64().unwrap(),
        )
    };
    assert!(first_page.windows(2).all(|w| key(&w[0]) > key(&w[1])), "newest first");

    // $skip pages over the same order; all pages together are every existing incident.
    let page = json(get(&sim, &token, "/api/incidents?$top=10&$skip=5").await).await;
    assert_eq!(page["value"].as_array().unwrap()[..], first_page[5..15]);
    let mut seen = Vec::new();
    for skip in (0..400).step_by(100) {
        let page = json(get(&sim, &token, &format!("/api/incidents?$skip={skip}")).await).await;
        seen.extend(
            page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["incidentId"].as_i64().unwrap()),
        );
    }
    seen.sort_unstable();
    let existing: Vec<i64> = (1..=300).filter(|i| sim.incident_json(*i).is_some()).collect();
    assert_eq!(seen, existing);

    let active = json(get(&sim, &token, "/api/incidents?$filter=status%20eq%20'Active'&$top=100").await).await;
    let active = active["value"].as_array().unwrap();
    assert!(!active.is_empty());
    assert!(active.iter().all(|v| v["status"] == "Active"));

    // Polling by lastUpdateTime finds exactly what changed since.
    let created = sim.create_incident();
    let id = existing[7];
    let stamp = sim.touch(id).unwrap();
    let changed = json(
        get(
            &sim,
            &token,
            &format!("/api/incidents?$filter=lastUpdateTime%20ge%20{stamp}"),
        )
        .await,
    )
    .await;
    let ids: Vec<i64> = changed["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["incidentId"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![id]);
    let newest = json(get(&sim, &token, "/api/incidents?$top=1").await).await;
    assert_eq!(newest["value"][0]["incidentId"], created);

    for bad in [
        "/api/incidents?$filter=severity%20eq%20'High'",
        "/api/incidents?$filter=status%20eq",
        "/api/incidents?$top=500",
        "/api/incidents?$orderby=createdTime",
    ] {
        let resp = get(&sim, &token, bad).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body = json(resp).await;
        assert_eq!(body["error"]["code"], "BadRequest");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let empty = json(get(&sim, &token, "/api/incidents?$skip=100000").await).await;
    assert_eq!(empty["value"], serde_json::json!([]));
    sim.shutdown();
}

#[tokio::test]
async fn patch_validates_updates_and_appends_comments() {
    let sim = start(cfg(30)).await;
    let token = sim.issue_token();
    let id = existing_id(&sim);
    let before = sim.incident_json(id).unwrap();
    let url = format!("{}/api/incidents/{id}", sim.base_url());
    let patch = |body: Value| {
        client()
            .patch(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };

    let resp = patch(serde_json::json!({
        "status": "InProgress",
        "assignedTo": "secop9@contoso.com",
        "classification": "TruePositive",
        "determination": "Phishing",
        "tags": ["proxy-test"],
        "comment": "Looked at it."
    }))
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let after = json(resp).await;
    assert_eq!(after["incidentId"], id);
    assert_eq!(after["status"], "InProgress");
    assert_eq!(after["assignedTo"], "secop9@contoso.com");
    assert_eq!(after["classification"], "TruePositive");
    assert_eq!(after["determination"], "Phishing");
    assert_eq!(after["tags"], serde_json::json!(["proxy-test"]));
    let comments = after["comments"].as_array().unwrap();
    assert_eq!(comments.len(), before["comments"].as_array().unwrap().len() + 1);
    let last = comments.last().unwrap();
    assert_eq!(last["comment"], "Looked at it.");
    assert_eq!(last["createdBy"], "API-App:defender-proxy-demo");
    assert_eq!(last["createdTime"], after["lastUpdateTime"]);
    assert!(after["lastUpdateTime"].as_str().unwrap() > before["lastUpdateTime"].as_str().unwrap());
    assert_eq!(after["alerts"], before["alerts"]);
    assert_eq!(sim.incident_json(id).unwrap(), after);
    let fetched = json(get(&sim, &token, &format!("/api/incidents/{id}")).await).await;
    assert_eq!(fetched, after);

    // A second comment is appended, not replacing the first (PATCH with a comment is not idempotent).
    let again = json(patch(serde_json::json!({"comment": "Looked at it."})).await.unwrap()).await;
    assert_eq!(again["comments"].as_array().unwrap().len(), comments.len() + 1);

    for bad in [
        serde_json::json!({"severity": "High"}),
        serde_json::json!({"status": "Closed"}),
        serde_json::json!({"determination": "Apt"}),
        serde_json::json!({"tags": "one"}),
        serde_json::json!({"comment": 5}),
        serde_json::json!(["status"]),
    ] {
        let resp = patch(bad.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(json(resp).await["error"]["code"], "InvalidRequestBody");
    }
    let resp = client()
        .patch(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(r#"{"status":"Active"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = client()
        .patch(format!("{}/api/incidents/999999", sim.base_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"status": "Resolved"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let stats = sim.stats();
    let u = &stats.calls["update"];
    assert_eq!((u.total, u.ok, u.not_found), (10, 2, 1));
    assert_eq!(stats.changes.len(), 2);
    assert!(stats.changes.iter().all(|c| c.id == id));
    assert_eq!(
        stats.changes[0].last_update_time,
        after["lastUpdateTime"].as_str().unwrap()
    );
    sim.shutdown();
}

#[tokio::test]
async fn fault_latency_delays_a_normal_answer() {
    let _timed = timed().await;
    let sim = start(cfg(20)).await;
    let token = sim.issue_token();
    let path = format!("/api/incidents/{}", existing_id(&sim));
    sim.set_faults(Faults {
        rules: vec![rule(Some("get"), FaultKind::Latency { ms: 300 }, Some(1))],
    });
    let t = Instant::now();
    assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);
    let g = &sim.stats().calls["get"];
    assert_eq!((g.total, g.ok, g.faults), (2, 2, 1));
    sim.shutdown();
}

#[tokio::test]
async fn fault_hang_never_answers_until_shutdown() {
    let sim = start(cfg(20)).await;
    let token = sim.issue_token();
    let id = existing_id(&sim);
    sim.set_faults(Faults {
        rules: vec![rule(None, FaultKind::Hang, None)],
    });
    let err = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .get(format!("{}/api/incidents/{id}", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // A hanging call must not block shutdown; afterwards nothing accepts connections.
    sim.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = tokio::net::TcpStream::connect(sim.addr()).await.is_err();
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let g = &sim.stats().calls["get"];
    assert_eq!((g.total, g.ok), (1, 0));
}

#[tokio::test]
async fn fault_status_answers_with_an_envelope_for_count_calls() {
    let sim = start(cfg(20)).await;
    let token = sim.issue_token();
    let path = format!("/api/incidents/{}", existing_id(&sim));
    sim.set_faults(Faults {
        rules: vec![
            rule(Some("list"), FaultKind::Reset, None),
            rule(Some("get"), FaultKind::Status { code: 503 }, Some(2)),
        ],
    });
    for _ in 0..2 {
        let resp = get(&sim, &token, &path).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = json(resp).await;
        assert_eq!(body["error"]["code"], "ServiceUnavailable");
        assert!(body["error"]["target"].is_string());
    }
    assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);
    let g = &sim.stats().calls["get"];
    assert_eq!((g.total, g.ok, g.faults), (3, 1, 2));
    sim.shutdown();
}

#[tokio::test]
async fn fault_malformed_sends_truncated_json_with_200() {
    let sim = start(cfg(20)).await;
    let token = sim.issue_token();
    let path = format!("/api/incidents/{}", existing_id(&sim));
    sim.set_faults(Faults {
        rules: vec![rule(None, FaultKind::Malformed, Some(2))],
    });
    for p in [path.as_str(), "/api/incidents?$top=3"] {
        let resp = get(&sim, &token, p).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let bytes = resp.bytes().await.unwrap();
        assert!(!bytes.is_empty());
        assert!(serde_json::from_slice::<Value>(&bytes).is_err(), "{p}");
    }
    assert!(serde_json::from_slice::<Value>(&get(&sim, &token, &path).await.bytes().await.unwrap()).is_ok());
    sim.shutdown();
}

#[tokio::test]
async fn fault_wrong_id_answers_with_another_incident() {
    let sim = start(cfg(20)).await;
    let token = sim.issue_token();
    let id = existing_id(&sim);
    let real_list = json(get(&sim, &token, "/api/incidents?$top=5").await).await;
    sim.set_faults(Faults {
        rules: vec![rule(None, FaultKind::WrongId, Some(2))],
    });
    let resp = get(&sim, &token, &format!("/api/incidents/{id}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json(resp).await;
    assert_ne!(body["incidentId"], id);
    assert!(body["incidentId"].is_i64());
    let wrong_list = json(get(&sim, &token, "/api/incidents?$top=5").await).await;
    assert_eq!(wrong_list["value"].as_array().unwrap().len(), 5);
    assert_ne!(wrong_list["value"], real_list["value"]);
    let body = json(get(&sim, &token, &format!("/api/incidents/{id}")).await).await;
    assert_eq!(body["incidentId"], id);
    sim.shutdown();
}

#[tokio::test]
async fn fault_throttle_sends_the_real_429() {
    let sim = start(cfg(20)).await;
    let token = sim.issue_token();
    let path = format!("/api/incidents/{}", existing_id(&sim));
    sim.set_faults(Faults {
        rules: vec![rule(Some("get"), FaultKind::Throttle { retry_after_secs: 7 }, Some(1))],
    });
    let resp = get(&sim, &token, &path).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body = json(resp).await;
    assert_eq!(body["error"]["code"], "429");
    assert_eq!(
        body["error"]["message"],
        "API calls quota exceeded! Maximum allowed 100 per 00:01:00 for the key \
         Destination+TenantID+AppID. You can send requests again in 7 seconds."
    );
    assert_eq!(body["error"]["target"], SimConfig::default().tenant_id);
    assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);
    let g = &sim.stats().calls["get"];
    assert_eq!((g.total, g.ok, g.throttled, g.faults), (2, 1, 1, 1));
    sim.shutdown();
}

#[tokio::test]
async fn fault_reset_closes_the_connection_without_an_answer() {
    let sim = start(cfg(20)).await;
    let token = sim.issue_token();
    let path = format!("/api/incidents/{}", existing_id(&sim));
    sim.set_faults(Faults {
        rules: vec![rule(Some("get"), FaultKind::Reset, Some(1))],
    });
    let err = client()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout() && !err.is_status(), "{err}");
    assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);
    let g = &sim.stats().calls["get"];
    assert_eq!((g.ok, g.faults), (1, 1));
    sim.shutdown();
}

#[tokio::test]
async fn fault_unauthorized_answers_401_without_spending_quota() {
    let sim = start(SimConfig {
        incidents: 20,
        quotas: SimQuotas {
            get: vec![quota(1, 60)],
            ..SimQuotas::default()
        },
        ..SimConfig::default()
    })
    .await;
    let token = sim.issue_token();
    let path = format!("/api/incidents/{}", existing_id(&sim));
    sim.set_faults(Faults {
        rules: vec![
            rule(Some("get"), FaultKind::Unauthorized, Some(1)),
            FaultRule {
                probability: 0.0,
                ..rule(None, FaultKind::Reset, None)
            },
        ],
    });
    let resp = get(&sim, &token, &path).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(json(resp).await["error"]["code"], "Unauthorized");
    assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::OK);
    assert_eq!(get(&sim, &token, &path).await.status(), StatusCode::TOO_MANY_REQUESTS);
    let g = &sim.stats().calls["get"];
    assert_eq!((g.ok, g.unauthorized, g.throttled, g.faults), (1, 1, 1, 1));
    sim.shutdown();
}

#[tokio::test]
async fn admin_endpoints_stats_and_changes() {
    let sim = start(cfg(50)).await;
    let token = sim.issue_token();
    let id = existing_id(&sim);
    let base = sim.base_url();
    let c = client();

    for _ in 0..3 {
        get(&sim, &token, &format!("/api/incidents/{id}")).await;
    }
    get(&sim, &token, "/api/incidents?$top=2").await;

    // Faults over HTTP.
    let resp = c
        .put(format!("{base}/_sim/faults"))
        .json(&serde_json::json!({"rules":[{"route":"get","kind":{"type":"status","code":500},"count":1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&sim, &token, &format!("/api/incidents/{id}")).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // Changes over HTTP and through the handle; timestamps strictly increase.
    let t1 = sim.touch(id).unwrap();
    let resp = c
        .post(format!("{base}/_sim/incidents/{id}/touch"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let t2 = json(resp).await["lastUpdateTime"].as_str().unwrap().to_string();
    assert!(is_upstream_timestamp(&t1) && is_upstream_timestamp(&t2));
    assert!(t2 > t1);
    assert_eq!(sim.incident_json(id).unwrap()["lastUpdateTime"], t2.as_str());
    assert_eq!(
        c.post(format!("{base}/_sim/incidents/999999/touch"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(sim.touch(999_999), None);
    let resp = c.post(format!("{base}/_sim/incidents")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created = json(resp).await["incidentId"].as_i64().unwrap();
    assert_eq!(created, 51);
    assert_eq!(sim.create_incident(), 52);
    let fresh = sim.incident_json(52).unwrap();
    assert_eq!(fresh["createdTime"], fresh["lastUpdateTime"]);
    assert_eq!(fresh["status"], "Active");

    let stats_json = json(c.get(format!("{base}/_sim/stats")).send().await.unwrap()).await;
    let stats: Stats = serde_json::from_value(stats_json).unwrap();
    assert_eq!(stats, sim.stats());
    let g = &stats.calls["get"];
    assert_eq!((g.total, g.ok, g.faults), (4, 3, 1));
    assert_eq!(g.at_ms.len(), 4);
    assert!(g.at_ms.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(stats.calls["list"].total, 1);
    assert_eq!(stats.calls["update"].total, 0);
    let changed: Vec<i64> = stats.changes.iter().map(|c| c.id).collect();
    assert_eq!(changed, vec![id, id, 51, 52]);
    assert_eq!(stats.changes[1].last_update_time, t2);
    assert!(stats.changes.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));

    let resp = c.post(format!("{base}/_sim/stats/reset")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let stats = sim.stats();
    assert!(stats.changes.is_empty());
    assert_eq!(stats.calls.len(), 3);
    assert!(stats.calls.values().all(|r| r.total == 0 && r.at_ms.is_empty()));
    sim.reset_stats();
    sim.shutdown();
}

#[tokio::test]
async fn background_changes_bump_last_update_time() {
    let sim = start(SimConfig {
        incidents: 50,
        change_interval: Some(Duration::from_millis(50)),
        ..SimConfig::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats().changes.len() < 3 {
        assert!(Instant::now() < deadline, "no background changes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for change in sim.stats().changes {
        let current = sim.incident_json(change.id).unwrap();
        assert!(current["lastUpdateTime"].as_str().unwrap() >= change.last_update_time.as_str());
        assert!(is_upstream_timestamp(&change.last_update_time));
    }
    sim.shutdown();
}

#[tokio::test]
async fn same_seed_same_bytes() {
    /// Status and body of a few answers; error bodies carry a random tracking id, so only
    /// their status is compared.
    async fn snapshot(seed: u64) -> Vec<(StatusCode, bytes::Bytes)> {
        let sim = start(SimConfig {
            seed,
            incidents: 200,
            ..SimConfig::default()
        })
        .await;
        let token = sim.issue_token();
        let mut out = Vec::new();
        for path in [
            "/api/incidents/1",
            "/api/incidents/2",
            "/api/incidents/3",
            "/api/incidents/150",
            "/api/incidents/151",
            "/api/incidents/152",
            "/api/incidents?$top=50&$skip=10",
        ] {
            let resp = get(&sim, &token, path).await;
            let status = resp.status();
            let body = resp.bytes().await.unwrap();
            out.push((
                status,
                if status == StatusCode::OK {
                    body
                } else {
                    bytes::Bytes::new()
                },
            ));
        }
        sim.shutdown();
        out
    }
    // Generated history is anchored at the start of the UTC day; retry if a day boundary
    // fell between the two runs.
    for _ in 0..2 {
        let day = time::OffsetDateTime::now_utc().date();
        let a = snapshot(7).await;
        let b = snapshot(7).await;
        let c = snapshot(8).await;
        if time::OffsetDateTime::now_utc().date() != day {
            continue;
        }
        assert_eq!(a, b);
        assert_ne!(a, c);
        return;
    }
    panic!("the UTC day changed twice during the test");
}
