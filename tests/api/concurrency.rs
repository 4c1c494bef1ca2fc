//! `server.max_concurrency` bounds work, not waiting: callers queued for a budget slot never
//! hold up cache hits, and a request body that does not arrive costs a 408, not quota.

use std::time::{Duration, Instant};

use crate::common::{cache_status, envelope, exclusive, quota, spawn_app_with, timed};
use defender_proxy::{
    config::QuotaConfig,
    simulator::{SimConfig, SimQuotas},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_stay_fast_while_a_flood_of_cold_callers_is_queued() {
    let _exclusive = exclusive().await;
    const MAX_CONCURRENCY: usize = 4;
    const FLOOD: i64 = 24;
    const HITS: usize = 100;
    let app = spawn_app_with(
        SimConfig {
            quotas: SimQuotas {
                get: vec![quota(1, 60)],
                ..SimQuotas::default()
            },
            ..SimConfig::default()
        },
        |c| {
            c.server.max_concurrency = MAX_CONCURRENCY;
            // With one call a minute the k-th queued caller waits k minutes: let them all queue.
            c.budget.max_wait_cap = Duration::from_secs(3600);
            c.budget.routes.get_mut("get_incident").unwrap().quotas = vec![QuotaConfig {
                limit: 1,
                window: Duration::from_secs(60),
            }];
        },
    )
    .await;
    // The one slot of the minute warms the hot id.
    let hot = format!("/api/incidents/{}", app.existing_id(1));
    assert_eq!(app.get(&hot).send().await.unwrap().status(), 200);
    // One tool floods cold ids, each willing to wait for its slot (the next is a minute away).
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let req = app
            .get(&format!("/api/incidents/{}", 1000 + i))
            .header("prefer", "wait=3000");
        flood.push(tokio::spawn(req.send()));
    }
    // Until at least max_concurrency of them are queued (the old tower limit let no more in).
    let mut queued = 0.0;
    for _ in 0..200 {
        queued = app
            .metric("defender_proxy_queue_depth{tenant=\"default\",route=\"get_incident\"}")
            .await;
        if queued >= MAX_CONCURRENCY as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(queued >= MAX_CONCURRENCY as f64, "the flood is queued ({queued})");
    let mut times = Vec::with_capacity(HITS);
    for _ in 0..HITS {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), app.get(&hot).send()).await;
        let took = started.elapsed();
        let r = r.expect("a hit is answered while callers are queued").unwrap();
        assert_eq!(r.status(), 200);
        assert!(cache_status(&r).contains("hit"));
        times.push(took);
    }
    times.sort();
    let (p50, p99) = (times[HITS / 2], times[HITS * 99 / 100]);
    eprintln!(
        "hits while {queued} callers queued: p50 {p50:?}, p99 {p99:?}, max {:?}",
        times[HITS - 1]
    );
    assert!(
        times[HITS - 1] < Duration::from_millis(50),
        "every hit under 50 ms (max {:?})",
        times[HITS - 1]
    );
    assert_eq!(
        app.metric("defender_proxy_queue_depth{tenant=\"default\",route=\"get_incident\"}")
            .await,
        FLOOD as f64,
        "every cold caller is queued, none is refused for lack of a place"
    );
    // Shutdown answers the queued callers (503) instead of leaving them to their minute.
    app.stop().await;
    for f in flood {
        let status = f.await.unwrap().map(|r| r.status().as_u16()).unwrap_or(0);
        assert!(status == 503 || status == 0, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_and_spends_nothing() {
    let _timed = timed().await;
    let app = spawn_app_with(SimConfig::default(), |c| {
        c.server.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = TcpStream::connect(app.api).await.unwrap();
    let head = format!(
        "PATCH /api/incidents/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"comm",
        app.existing_id(1),
        app.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // The client stalls; the proxy must answer (then close) on its own.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"}") {
            break;
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"RequestTimeout\""), "{text}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(app.calls("update"), 0, "no quota spent");
    // A body that arrives in time still works.
    let r = app
        .patch(
            &format!("/api/incidents/{}", app.existing_id(1)),
            r#"{"status":"Active"}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", envelope(r).await);
    app.stop().await;
}
