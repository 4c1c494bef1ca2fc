//! The access log end to end: every request gets exactly one line under normal load, and a
//! blocked log sink costs lines (counted), never answers.

use std::{
    io::Write,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use crate::common::{spawn_app_logging_to, timed};
use defender_proxy::simulator::SimConfig;

/// An in-memory sink, optionally held shut like a pipe nobody reads.
#[derive(Clone, Default)]
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// While false, every write blocks.
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl Sink {
    fn open() -> Sink {
        let s = Sink::default();
        *s.open.0.lock().unwrap() = true;
        s
    }

    fn release(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.bytes.lock().unwrap().clone();
        String::from_utf8(bytes)
            .expect("the access log is UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (open, cv) = &*self.open;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_line() {
    let sink = Sink::open();
    let app = spawn_app_logging_to(SimConfig::default(), |_| {}, Box::new(sink.clone())).await;
    let id = app.existing_id(1);
    const TASKS: usize = 16;
    const PER_TASK: usize = 125;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (client, url, key) = (
            app.client.clone(),
            app.url(&format!("/api/incidents/{id}")),
            app.key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let r = client
                    .get(&url)
                    .bearer_auth(&key)
                    .header("x-request-id", format!("t{t}-{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // One unauthenticated request and one bad id: errors get lines too.
    assert_eq!(
        app.client
            .get(app.url("/api/incidents/1"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(app.get("/api/incidents/x").send().await.unwrap().status(), 400);
    assert!(app.flush_access_log().await, "the log caught up");
    let requests = TASKS * PER_TASK + 2;
    let lines = sink.lines();
    assert_eq!(lines.len(), requests, "one line per request");
    assert_eq!(
        app.metric("defender_proxy_access_log_lines_total").await,
        requests as f64
    );
    assert_eq!(app.metric("defender_proxy_access_log_dropped_total").await, 0.0);
    let mut ids: Vec<&str> = lines.iter().filter_map(|l| l["request_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), requests, "each request id once");
    let hits = lines.iter().filter(|l| l["cache"] == "hit").count();
    // The first requests of each task may collapse onto the one miss.
    assert!(hits >= requests - TASKS - 2, "{hits} hits");
    let hit = lines.iter().find(|l| l["cache"] == "hit").unwrap();
    assert_eq!(hit["method"], "GET");
    assert_eq!(hit["route"], "get_incident");
    assert_eq!(hit["consumer"], "demo");
    assert_eq!(hit["status"], 200);
    assert!(hit["tenant"] == "default" && hit["upstream_status"].is_null());
    assert!(hit["duration_ms"].as_f64().unwrap() >= 0.0 && hit["queued_ms"] == 0);
    let unauth = lines.iter().find(|l| l["status"] == 401).unwrap();
    assert_eq!(unauth["consumer"], "unauthenticated");
    assert!(unauth["tenant"].is_null(), "no tenant is known before the caller is");
    let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
    assert!(!text.contains(&app.key), "the consumer key is never logged");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_log_sink_never_blocks_requests_and_lost_lines_are_counted() {
    let _timed = timed().await;
    let sink = Sink::default(); // shut until released
    let app = spawn_app_logging_to(
        SimConfig::default(),
        |c| c.telemetry.access_log_buffer = 4096,
        Box::new(sink.clone()),
    )
    .await;
    let id = app.existing_id(1);
    const REQUESTS: usize = 300;
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let r = app.get(&format!("/api/incidents/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let served_in = started.elapsed();
    assert!(
        served_in < Duration::from_secs(20),
        "served while the log is blocked ({served_in:?})"
    );
    let dropped = app.metric("defender_proxy_access_log_dropped_total").await;
    assert!(dropped > 0.0, "a 4 KiB buffer cannot hold {REQUESTS} lines");
    assert_eq!(
        app.metric("defender_proxy_access_log_lines_total").await,
        0.0,
        "nothing written yet"
    );
    sink.release();
    assert!(app.flush_access_log().await);
    let written = sink.lines().len() as f64;
    assert_eq!(app.metric("defender_proxy_access_log_lines_total").await, written);
    let dropped = app.metric("defender_proxy_access_log_dropped_total").await;
    assert_eq!(
        written + dropped,
        REQUESTS as f64,
        "every line written or counted as dropped"
    );
    app.stop().await;
}
