//! The budget's guarantee seen from the upstream's side: scaled-down quotas, many concurrent
//! callers on distinct ids, and the simulator (enforcing the same quotas) never says 429.

use std::time::Duration;

use crate::common::{assert_windows, exclusive, quota, spawn_app_with};
use defender_proxy::{config::QuotaConfig, simulator::SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_quotas_under_load_never_trip_the_upstream() {
    let _exclusive = exclusive().await;
    let mut sim = SimConfig {
        missing_share: 0.0,
        ..SimConfig::default()
    };
    sim.quotas.get = vec![quota(10, 2), quota(30, 10)];
    let app = spawn_app_with(sim, |c| {
        c.budget.routes.get_mut("get_incident").unwrap().quotas = vec![
            QuotaConfig {
                limit: 10,
                window: Duration::from_secs(2),
            },
            QuotaConfig {
                limit: 30,
                window: Duration::from_secs(10),
            },
        ];
        c.budget.max_wait = Duration::from_secs(3);
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut workers = Vec::new();
    for w in 0..40i64 {
        let client = app.client.clone();
        let (url, key) = (app.url(""), app.key.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u32, 0u32);
            let mut id = 1 + w * 1000;
            while tokio::time::Instant::now() < deadline {
                id += 1; // always a cold id: every answer needs the upstream
                let r = client
                    .get(format!("{url}/api/incidents/{id}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 | 404 => ok += 1,
                    429 => {
                        refused += 1;
                        assert!(r.headers().contains_key("retry-after"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    s => panic!("unexpected {s}"),
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for w in workers {
        let (o, r) = w.await.unwrap();
        ok += o;
        refused += r;
    }
    let stats = app.stats();
    let get = &stats.calls["get"];
    assert_eq!(get.throttled, 0, "the simulator never had to say 429");
    assert_windows(&get.at_ms, 10, 2_000);
    assert_windows(&get.at_ms, 30, 10_000);
    assert_eq!(get.total as u32, ok, "every upstream call served a caller");
    // 12 s allow 30 + 2 windows' worth: at least the 10 s quota once plus part of a second.
    assert!(get.total >= 30, "the budget was used: {} calls", get.total);
    assert!(refused > 0, "demand exceeded the quota, so some callers were refused");
    app.stop().await;
}
