//! Running the proxy: admin endpoints, graceful shutdown, slow clients, configuration errors.

use std::{process::Command, time::Duration};

use crate::common::{envelope, eventually, fault_on, quota, spawn_app, spawn_app_with, timed};
use defender_proxy::simulator::{FaultKind, SimConfig, SimQuotas};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_live_on_the_admin_listener_only() {
    let app = spawn_app().await;
    assert_eq!(app.admin_get("/livez").await.status(), 200);
    eventually(
        "ready once the upstream token is obtained",
        Duration::from_secs(5),
        || app.is_ready(),
    )
    .await;
    let id = app.existing_id(1);
    app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
    let m = app.admin_get("/metrics").await.text().await.unwrap();
    for name in [
        "defender_proxy_requests_total{tenant=\"default\",",
        "defender_proxy_request_duration_seconds_bucket{le=\"0.0005\",tenant=\"default\",",
        "defender_proxy_cache_lookups_total{tenant=\"default\",kind=\"incident\",result=\"hit\"} 1",
        "defender_proxy_cache_lookups_total{tenant=\"default\",kind=\"incident\",result=\"miss\"} 1",
        "defender_proxy_cache_entries{tenant=\"default\"} ",
        "defender_proxy_cache_bytes{tenant=\"default\"} ",
        "defender_proxy_upstream_requests_total{tenant=\"default\",route=\"get_incident\",status=\"200\"} 1",
        "defender_proxy_upstream_request_duration_seconds_bucket{le=\"0.01\",tenant=\"default\",",
        "defender_proxy_budget_remaining{tenant=\"default\",route=\"get_incident\",pool=\"get_incident\",window=\"60s\"} 99",
        "defender_proxy_budget_limit{tenant=\"default\",route=\"get_incident\",pool=\"get_incident\",window=\"3600s\"} 1500",
        "defender_proxy_queue_depth{tenant=\"default\",",
        "defender_proxy_queue_wait_seconds_bucket{le=\"0.01\",tenant=\"default\",",
        "defender_proxy_budget_frozen_seconds{tenant=\"default\",",
        "defender_proxy_token_expiry_timestamp_seconds{tenant=\"default\"} ",
        "defender_proxy_build_info{",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    assert!(m.contains("consumer=\"demo\""));
    let r = app.get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), 404, "the API listener does not serve metrics");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_taken_or_made_and_returned() {
    let app = spawn_app().await;
    let r = app
        .get("/api/incidents/x")
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["target"], "abc-123",
        "the envelope's target is the request id"
    );
    let r = app.get("/api/incidents/x").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 36);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_releases_the_queue() {
    let _timed = timed().await;
    let quotas = SimQuotas {
        get: vec![quota(1, 60)],
        ..SimQuotas::default()
    };
    let app = spawn_app_with(
        SimConfig {
            quotas,
            ..SimConfig::default()
        },
        |c| {
            c.budget.routes.get_mut("get_incident").unwrap().quotas = vec![defender_proxy::config::QuotaConfig {
                limit: 1,
                window: Duration::from_secs(60),
            }];
        },
    )
    .await;
    app.sim
        .set_faults(fault_on("get", FaultKind::Latency { ms: 1500 }, None));
    let in_flight = app.get(&format!("/api/incidents/{}", app.existing_id(1))).send();
    // The next slot is a minute away: this caller accepts to wait that long.
    let queued = app
        .get(&format!("/api/incidents/{}", app.existing_id(10)))
        .header("prefer", "wait=90")
        .send();
    let in_flight = tokio::spawn(in_flight);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = tokio::spawn(queued);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = app.api;
    let admin = app.admin;
    let stopper = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Readiness false at once; new connections refused.
    let ready = reqwest::get(format!("http://{admin}/readyz")).await;
    assert!(ready.map(|r| r.status() != 200).unwrap_or(true));
    assert!(
        TcpStream::connect(api).await.is_err(),
        "no new connections while draining"
    );
    let q = queued.await.unwrap().unwrap();
    assert_eq!(q.status(), 503);
    assert!(q.headers().contains_key("retry-after"));
    let f = in_flight.await.unwrap().unwrap();
    assert_eq!(f.status(), 200, "the in-flight request finished");
    stopper.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_while_others_are_served() {
    let _timed = timed().await;
    let app = spawn_app_with(SimConfig::default(), |c| {
        c.server.header_read_timeout = Duration::from_secs(1)
    })
    .await;
    let mut slow = TcpStream::connect(app.api).await.unwrap();
    slow.write_all(b"GET /api/incidents/1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Meanwhile a normal client is served.
    let r = app
        .get(&format!("/api/incidents/{}", app.existing_id(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Dribble one header byte at a time; the server must close before we finish.
    let mut closed = false;
    for _ in 0..40 {
        if slow.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                closed = true; // it answered (408) and will close
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the slow client was cut off");
    assert!(started.elapsed() < Duration::from_secs(4));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_non_json_patch_bodies_are_refused_without_spending() {
    let app = spawn_app().await;
    let big = format!("{{\"comment\":\"{}\"}}", "x".repeat(70 * 1024));
    let r = app.patch("/api/incidents/1", &big).send().await.unwrap();
    assert_eq!(envelope(r).await.0, 413);
    let r = app
        .client
        .patch(app.url("/api/incidents/1"))
        .bearer_auth(&app.key)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(r).await.0, 415);
    assert_eq!(app.calls("update"), 0);
    app.stop().await;
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_defender-proxy"))
}

#[test]
fn config_errors_name_the_key_and_exit_64() {
    let dir = std::env::temp_dir().join(format!("dpx-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[cache]\nttl = \"5s\"\nttl_typo = 3\n").unwrap();
    let out = bin().args(["config", "check", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ttl_typo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = bin().args(["serve", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));

    std::fs::write(&file, "[token]\ntenant_id = \"t\"\nclient_id = \"c\"\n").unwrap();
    let out = bin().args(["config", "check", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token.client_secret"));

    let out = bin()
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("DPX_TOKEN__CLIENT_SECRET", "s3cr3t-value-do-not-print")
        .env("DPX_BUDGET__MAX_QUEUE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("budget.max_queue"));

    let out = bin()
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("DPX_TOKEN__CLIENT_SECRET", "s3cr3t-value-do-not-print")
        .env("DPX_CACHE__TTL", "2m")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("ttl = \"2m\""), "env override applied: {shown}");
    assert!(shown.contains("[redacted]") && !shown.contains("s3cr3t"), "{shown}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_shipped_configs_are_valid() {
    // The cluster configuration shipped in deploy/ (its secret comes from a mounted file there).
    let file = "deploy/base/config.toml";
    let out = bin()
        .args(["config", "check", "--config"])
        .arg(file)
        .env("DPX_TOKEN__CLIENT_SECRET", "x")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hash_key_prints_a_key_and_its_hash() {
    let out = bin().arg("hash-key").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text.lines().find_map(|l| l.strip_prefix("key:  ")).unwrap();
    let hash = text.lines().find_map(|l| l.strip_prefix("hash: ")).unwrap();
    assert_eq!(hash, defender_proxy::auth::hash_key(key));
}
