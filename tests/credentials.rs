//! The upstream token broker and the callers' keys, end to end. The whole binary runs with a
//! TRACE-level log capture (a global subscriber, hence a binary of its own), so a test can prove
//! that no secret, token or key was logged.

// This binary uses the harness part of the shared helpers (spawning, envelopes, faults), not the
// quota and cache-header ones the API binary uses.
#[allow(dead_code)]
mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use common::{envelope, eventually, fault_on, spawn_app_logging_to, spawn_app_with, test_config};
use defender_proxy::{
    auth,
    config::{ConsumerConfig, Right},
    simulator::{FaultKind, SimConfig, Simulator},
};
use secrecy::SecretString;

/// Everything logged by this test binary, at every level.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .init();
        buf
    })
    .clone()
}

fn logs() -> String {
    String::from_utf8_lossy(&capture_logs().lock().unwrap()).to_string()
}

const SECRET: &str = "sim-client-secret-0123456789abcdef";

fn sim_config() -> SimConfig {
    SimConfig {
        client_secret: SECRET.into(),
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_request_for_200_concurrent_first_requests() {
    capture_logs();
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        // 50 distinct ids (within the 100/min quota), four callers each.
        let req = app.get(&format!("/api/incidents/{}", 1 + i % 50));
        tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 200 || s == 404, "{s}");
    }
    assert_eq!(app.stats().token_requests, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_before_expiry_without_a_failed_caller() {
    capture_logs();
    let sim = SimConfig {
        token_ttl: Duration::from_secs(4),
        ..sim_config()
    };
    let app = spawn_app_with(sim, |c| {
        c.token.refresh_before = Duration::from_secs(2);
        c.cache.ttl = Duration::ZERO; // every request reaches the upstream with the current token
    })
    .await;
    let id = app.existing_id(1);
    let deadline = std::time::Instant::now() + Duration::from_millis(5500);
    let mut n = 0;
    while std::time::Instant::now() < deadline {
        let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = app.stats();
    assert!(
        stats.token_requests >= 2,
        "refreshed at least once: {}",
        stats.token_requests
    );
    assert_eq!(
        stats.calls["get"].unauthorized, 0,
        "no call ever carried an expired token ({n} calls)"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_causes_one_refresh_and_one_retry() {
    capture_logs();
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let id = app.existing_id(5);
    assert_eq!(
        app.get(&format!("/api/incidents/{id}")).send().await.unwrap().status(),
        200
    );
    let before = app.stats().token_requests;
    app.sim.set_faults(fault_on("get", FaultKind::Unauthorized, Some(1)));
    let id2 = app.existing_id(id + 1);
    assert_eq!(
        app.get(&format!("/api/incidents/{id2}")).send().await.unwrap().status(),
        200
    );
    assert_eq!(app.stats().token_requests, before + 1);
    // Always 401: one refresh, one retry, then an error for the caller; never a loop.
    app.sim.set_faults(fault_on("get", FaultKind::Unauthorized, None));
    let id3 = app.existing_id(id2 + 1);
    let r = app.get(&format!("/api/incidents/{id3}")).send().await.unwrap();
    assert_eq!(envelope(r).await.0, 502);
    assert_eq!(app.stats().token_requests, before + 2);
    app.stop().await;
}

/// A proxy whose client secret is read from `secret_file`, in front of a fresh simulator.
async fn proxy_with_secret_file(secret_file: &std::path::Path) -> (String, common::TestApp) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::start(sim_config(), listener).await.unwrap();
    let key = auth::generate_key();
    let mut c = test_config();
    c.upstream.base_url = sim.base_url();
    c.token.authority = sim.base_url();
    c.token.tenant_id = SimConfig::default().tenant_id;
    c.token.client_id = SimConfig::default().client_id;
    c.token.client_secret_file = Some(secret_file.to_path_buf());
    c.auth.consumers.insert(
        "t".into(),
        ConsumerConfig {
            key_hashes: vec![auth::hash_key(&key)],
            rights: vec![Right::Read],
            ..ConsumerConfig::default()
        },
    );
    c.validate().unwrap();
    let app = common::start(c, sim, key.clone()).await;
    (key, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_means_not_ready_and_a_logged_error_code_then_rotation_fixes_it() {
    capture_logs();
    let dir = std::env::temp_dir().join(format!("dpx-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("client-secret");
    std::fs::write(&file, "wrong-secret-value\n").unwrap();
    let (_, app) = proxy_with_secret_file(&file).await;
    let mut saw_not_ready = false;
    for _ in 0..50 {
        if app.stats().token_failures > 0 {
            saw_not_ready = !app.is_ready().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_not_ready, "readiness is false while no token can be had");
    assert!(
        logs().contains("invalid_client"),
        "the log names the endpoint's error code"
    );
    let r = app.get("/api/incidents/1").send().await.unwrap();
    assert_eq!(envelope(r).await.0, 503);
    // Rotate the mounted secret: the broker re-reads the file on its next attempt.
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    eventually(
        "ready after rotation, without a restart",
        Duration::from_secs(10),
        || app.is_ready(),
    )
    .await;
    assert_eq!(
        app.get(&format!("/api/incidents/{}", app.existing_id(1)))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_credential_gets_tokens_with_a_signed_client_assertion() {
    capture_logs();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let thumbprint = std::fs::read_to_string(fixtures.join("test-client-cert.sha1")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::start(sim_config(), listener).await.unwrap();
    let key = auth::generate_key();
    let mut c = test_config();
    c.upstream.base_url = sim.base_url();
    c.token.authority = sim.base_url();
    c.token.tenant_id = SimConfig::default().tenant_id;
    c.token.client_id = SimConfig::default().client_id;
    // No secret anywhere: only the certificate's private key.
    c.token.client_certificate_key_file = Some(fixtures.join("test-client-key.pem"));
    c.token.client_certificate_thumbprint = Some(thumbprint.trim().to_string());
    c.auth.consumers.insert(
        "t".into(),
        ConsumerConfig {
            key_hashes: vec![auth::hash_key(&key)],
            rights: vec![Right::Read],
            ..ConsumerConfig::default()
        },
    );
    c.validate().unwrap();
    let app = common::start(c, sim, key).await;
    let r = app
        .get(&format!("/api/incidents/{}", app.existing_id(3)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stats = app.stats();
    assert_eq!((stats.token_requests, stats.token_failures), (1, 0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_see_nothing_even_on_a_warm_cache() {
    capture_logs();
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let id = app.existing_id(7);
    let path = format!("/api/incidents/{id}");
    assert_eq!(app.get(&path).send().await.unwrap().status(), 200); // warm
    let cases: Vec<(&str, Option<(&str, String)>)> = vec![
        ("missing", None),
        ("malformed", Some(("authorization", "Basic Zm9vOmJhcg==".to_string()))),
        ("empty bearer", Some(("authorization", "Bearer ".to_string()))),
        (
            "unknown bearer",
            Some(("authorization", "Bearer dpx_not-a-key".to_string())),
        ),
        ("unknown x-api-key", Some(("x-api-key", "dpx_not-a-key".to_string()))),
    ];
    for (what, header) in cases {
        let mut req = app.client.get(app.url(&path));
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("incidentName") && !body.contains("incidentId"),
            "{what}: {body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "Unauthorized");
    }
    // X-Api-Key works as well as Bearer.
    let r = app
        .client
        .get(app.url(&path))
        .header("x-api-key", &app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.calls("get"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_consumer_cannot_patch() {
    capture_logs();
    let reader_key = auth::generate_key();
    let hash = auth::hash_key(&reader_key);
    let app = spawn_app_with(sim_config(), move |c| {
        c.auth.consumers.insert(
            "reader".into(),
            ConsumerConfig {
                key_hashes: vec![hash],
                rights: vec![Right::Read],
                ..ConsumerConfig::default()
            },
        );
    })
    .await;
    let id = app.existing_id(9);
    let r = app
        .client
        .patch(app.url(&format!("/api/incidents/{id}")))
        .bearer_auth(&reader_key)
        .header("content-type", "application/json")
        .body(r#"{"status":"Resolved"}"#)
        .send()
        .await
        .unwrap();
    let (status, code, _) = envelope(r).await;
    assert_eq!((status, code.as_str()), (403, "Forbidden"));
    let r = app
        .client
        .get(app.url(&format!("/api/incidents/{id}")))
        .bearer_auth(&reader_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.calls("update"), 0);
    app.stop().await;
}

/// Independent of the other tests and of their order: every secret, token and key it looks for,
/// and every path that handles them (first token, a 401 that forces a refresh and a retry, reads
/// and a write), comes from its own traffic. It checks all that was captured by then, its own
/// lines included, whatever else ran before or alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_key_in_logs_or_metrics() {
    // The access log goes to the same capture as the diagnostic events.
    let app = spawn_app_logging_to(sim_config(), |_| {}, Box::new(Capture(capture_logs()))).await;
    let token = app.sim.issue_token(); // a token of the same shape as the proxy's
    for i in 0..20 {
        let _ = app.get(&format!("/api/incidents/{}", 1 + i)).send().await.unwrap();
    }
    // An upstream 401: the proxy refreshes its token and retries, with the secret in hand.
    let before = app.stats().token_requests;
    app.sim.set_faults(fault_on("get", FaultKind::Unauthorized, Some(1)));
    let id = app.existing_id(21);
    assert_eq!(
        app.get(&format!("/api/incidents/{id}")).send().await.unwrap().status(),
        200
    );
    assert_eq!(app.stats().token_requests, before + 1, "a refresh was logged about");
    let _ = app
        .patch("/api/incidents/1", r#"{"comment":"x"}"#)
        .send()
        .await
        .unwrap();
    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    assert!(app.flush_access_log().await);
    let logs = logs();
    assert!(logs.len() > 10_000, "TRACE logs were captured ({} bytes)", logs.len());
    assert!(
        logs.matches("\"message\":\"request\"").count() >= 22,
        "every request's access-log line was captured"
    );
    // The upstream tokens the proxy used are the simulator's; any of them in the logs would show
    // as the bearer scheme followed by a token. Check the secret, the consumer key, and tokens.
    for (what, needle) in [("client secret", SECRET), ("consumer key", app.key.as_str())] {
        assert!(!logs.contains(needle), "{what} found in logs");
        assert!(!metrics.contains(needle), "{what} found in metrics");
    }
    assert!(!logs.contains(&token));
    assert!(!logs.to_lowercase().contains("bearer ey") && !logs.contains(&format!("Bearer {}", &token[..8])));
    assert!(!logs.contains("access_token"), "a token answer was logged");
    let secret = SecretString::from(SECRET.to_string());
    assert!(!format!("{secret:?}").contains(SECRET));
    app.stop().await;
}
