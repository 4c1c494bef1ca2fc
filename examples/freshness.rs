//! The freshness scenario of the incident sync (issue 7), with and without the sync.
//!
//! Twenty tools each fetch the same 300 active incidents every 30 s (200 requests/s of demand)
//! while one of those incidents changes every second. The simulator and the proxy run in this
//! process on 127.0.0.1; the changes are made here, so the exact time each version stopped being
//! current is known, and the staleness of every answer is computed from the version it served.
//!
//! With `--mode flood` (issue 16), the TTL-only scenario runs twice more while a batch tool
//! (another consumer, priority batch) walks the 1,700 other incidents cold with 50 workers:
//! once with fair queuing between consumers and once with one first-come-first-served queue, so
//! the interactive tools' staleness, waits and refusals can be compared side by side.
//!
//! With `--upstream graph` (issue 13) the proxy speaks Microsoft Graph to the simulator (the
//! tools still call the Defender facade): the sync lists Graph's pages of 50 by ascending change
//! time, and the Get and List calls counted are Graph's.
//!
//! `cargo run --release --example freshness -- [--minutes M] [--mode sync|ttl|both|flood]
//! [--upstream defender|graph]` prints a Markdown table (one row per mode) on stdout.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use defender_proxy::{
    auth,
    budget::Priority,
    config::{Config, ConsumerConfig, Right},
    demo,
    simulator::SimConfig,
    Application,
};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOOLS: usize = 20;
const ACTIVE: usize = 300;
const PERIOD: Duration = Duration::from_secs(30);
const CHANGE_EVERY: Duration = Duration::from_secs(1);

/// Every version of each active incident, with the time it was made.
type History = Arc<Mutex<HashMap<i64, Vec<(String, Instant)>>>>;

struct Answer {
    at: Instant,
    id: i64,
    status: u16,
    version: Option<String>,
    took: Duration,
}

struct Row {
    mode: String,
    wait_p50: f64,
    wait_p99: f64,
    batch_served: usize,
    minutes: f64,
    answers: usize,
    refused: usize,
    other_errors: usize,
    get_per_min: f64,
    list_per_min: f64,
    upstream_429: u64,
    p50: f64,
    p99: f64,
    within: f64,
    bound: f64,
    get_quota_share: f64,
}

fn version_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    // The top-level field (alerts carry `lastUpdatedTime`, a different key).
    let at = text.rfind("\"lastUpdateTime\":\"")? + "\"lastUpdateTime\":\"".len();
    Some(text[at..].split('"').next()?.to_string())
}

/// `flood`: a batch tool floods cold ids; `Some(true)` with fair queuing, `Some(false)` without.
async fn run(sync: bool, minutes: f64, flood: Option<bool>, graph: bool) -> anyhow::Result<Row> {
    let sim = SimConfig {
        incidents: 2_000,
        missing_share: 0.0,
        ..SimConfig::default()
    };
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.server.admin_listen = "127.0.0.1:0".parse()?;
    config.sync.enabled = sync;
    if graph {
        config.upstream.api = defender_proxy::config::Dialect::Graph;
        config.token.resource = defender_proxy::config::GRAPH_BASE_URL.into();
    }
    let batch_key = auth::generate_key();
    if let Some(fair) = flood {
        config.budget.fair_queuing = fair;
        config.auth.consumers.insert(
            "batch".into(),
            ConsumerConfig {
                key_hashes: vec![auth::hash_key(&batch_key)],
                rights: vec![Right::Read],
                priority: Priority::Batch,
                ..ConsumerConfig::default()
            },
        );
    }
    // Its stdout is the report (a Markdown table): no access-log lines in it.
    config.telemetry.access_log = false;
    let interval = config.sync.interval;
    let demo = demo::prepare(config, sim, "127.0.0.1:0".parse()?).await?;
    let sim = demo.simulator.clone();
    // The active incidents are the ones being worked on: changed just now, before the run.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut ids: Vec<i64> = (1..=2_000).collect();
    ids.shuffle(&mut rng);
    ids.truncate(ACTIVE);
    let changes: History = Arc::default();
    for &id in &ids {
        let v = sim.touch(id).expect("id exists");
        changes.lock().unwrap().entry(id).or_default().push((v, Instant::now()));
    }
    let app = Application::build(demo.config.clone()).await?;
    let api = app.api_addr();
    let admin = app.admin_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    sim.reset_stats();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(minutes * 60.0);
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let mut tasks = Vec::new();
    for tool in 0..TOOLS {
        let (client, key, answers, mut order) = (client.clone(), demo.key.clone(), answers.clone(), ids.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(tool as u64);
        order.shuffle(&mut rng);
        let offset = Duration::from_millis(rng.gen_range(0..PERIOD.as_millis() as u64));
        tasks.push(tokio::spawn(async move {
            let mut round_start = started + offset;
            while round_start < deadline {
                tokio::time::sleep_until(round_start.into()).await;
                // Spread one round over the period: one request every PERIOD / ACTIVE.
                for (i, &id) in order.iter().enumerate() {
                    let at = round_start + PERIOD.mul_f64(i as f64 / ACTIVE as f64);
                    if at >= deadline {
                        return;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    let sent = Instant::now();
                    let resp = client
                        .get(format!("http://{api}/api/incidents/{id}"))
                        .bearer_auth(&key)
                        .send()
                        .await;
                    let (status, version) = match resp {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.bytes().await.unwrap_or_default();
                            (status, if status == 200 { version_of(&body) } else { None })
                        }
                        Err(_) => (0, None),
                    };
                    answers.lock().unwrap().push(Answer {
                        at: Instant::now(),
                        id,
                        status,
                        version,
                        took: sent.elapsed(),
                    });
                }
                round_start += PERIOD;
            }
        }));
    }
    // The batch tool: 50 workers walking the incidents nobody else reads, cold, as long as the run.
    let batch_served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flooders = Vec::new();
    if flood.is_some() {
        let cold: Vec<i64> = (1..=2_000).filter(|id| !ids.contains(id)).collect();
        let cold = Arc::new(cold);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..50 {
            let (client, key, cold, next, served) = (
                client.clone(),
                batch_key.clone(),
                cold.clone(),
                next.clone(),
                batch_served.clone(),
            );
            flooders.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(id) = cold.get(i % cold.len()) else { return };
                    let r = client
                        .get(format!("http://{api}/api/incidents/{id}"))
                        .bearer_auth(&key)
                        .header("prefer", "wait=120")
                        .header("cache-control", "no-cache")
                        .send();
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Ok(Ok(r)) = tokio::time::timeout(left, r).await {
                        if r.status() == 200 {
                            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        } else {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }));
        }
    }
    let changer = {
        let (sim, ids, changes) = (sim.clone(), ids.clone(), changes.clone());
        tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(99);
            let mut next = started + CHANGE_EVERY;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                let id = *ids.choose(&mut rng).expect("non-empty");
                if let Some(v) = sim.touch(id) {
                    changes.lock().unwrap().entry(id).or_default().push((v, Instant::now()));
                }
                next += CHANGE_EVERY;
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    changer.await?;
    for f in flooders {
        f.await?;
    }
    let elapsed_min = started.elapsed().as_secs_f64() / 60.0;
    let stats = sim.stats();
    let metrics = reqwest::get(format!("http://{admin}/metrics")).await?.text().await?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("defender_proxy_sync_runs_total"))
    {
        eprintln!("{}: {line}", if sync { "with sync" } else { "TTL only" });
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    sim.shutdown();

    // Staleness of an answer: zero if it served the version current when it arrived, otherwise
    // how long that version had already been outdated.
    let changes = changes.lock().unwrap();
    let answers = answers.lock().unwrap();
    let mut staleness: Vec<f64> = Vec::new();
    for a in answers.iter().filter(|a| a.status == 200) {
        let Some(version) = &a.version else { continue };
        let history = &changes[&a.id];
        let served = history.iter().position(|(v, _)| v == version);
        let s = match served {
            Some(i) => match history.get(i + 1) {
                Some((_, replaced_at)) if *replaced_at < a.at => (a.at - *replaced_at).as_secs_f64(),
                _ => 0.0,
            },
            // A version from before the run: outdated since the run's first change of it.
            None => history
                .first()
                .map_or(0.0, |(_, t)| a.at.saturating_duration_since(*t).as_secs_f64()),
        };
        staleness.push(s);
    }
    staleness.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        staleness
            .get(((staleness.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let bound = interval.as_secs_f64() + 5.0;
    let mut waits: Vec<f64> = answers.iter().map(|a| a.took.as_secs_f64()).collect();
    waits.sort_by(|a, b| a.total_cmp(b));
    let wait_pct = |p: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    // The upstream's own routes: Defender's, or Graph's when the proxy speaks Graph.
    let routes = if graph { &stats.graph_calls } else { &stats.calls };
    let calls = |r: &str| {
        let name = if graph { format!("graph_{r}") } else { r.to_string() };
        routes.get(&name).map_or(0, |s| s.total)
    };
    let gets = calls("get") as f64;
    Ok(Row {
        mode: format!(
            "{}{}",
            match (sync, flood) {
                (true, _) => "with sync",
                (false, None) => "TTL only",
                (false, Some(true)) => "TTL only + batch flood, fair queuing",
                (false, Some(false)) => "TTL only + batch flood, one FIFO queue",
            },
            if graph { ", Graph upstream" } else { "" }
        ),
        wait_p50: wait_pct(0.5),
        wait_p99: wait_pct(0.99),
        batch_served: batch_served.load(std::sync::atomic::Ordering::Relaxed),
        minutes: elapsed_min,
        answers: answers.len(),
        refused: answers.iter().filter(|a| a.status == 429).count(),
        other_errors: answers.iter().filter(|a| a.status != 200 && a.status != 429).count(),
        get_per_min: gets / elapsed_min,
        list_per_min: calls("list") as f64 / elapsed_min,
        upstream_429: routes.values().map(|s| s.throttled).sum(),
        p50: pct(0.5),
        p99: pct(0.99),
        within: staleness.iter().filter(|&&s| s <= bound).count() as f64 / staleness.len().max(1) as f64,
        bound,
        // Of the Get incident quota for the run (100 per minute).
        get_quota_share: gets / (100.0 * elapsed_min),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let minutes: f64 = arg("--minutes").map_or(Ok(3.0), |m| m.parse())?;
    let graph = match arg("--upstream").as_deref().unwrap_or("defender") {
        "defender" => false,
        "graph" => true,
        other => anyhow::bail!("--upstream must be defender or graph, not {other}"),
    };
    let modes: Vec<(bool, Option<bool>)> = match arg("--mode").as_deref().unwrap_or("both") {
        "sync" => vec![(true, None)],
        "ttl" => vec![(false, None)],
        "flood" => vec![(false, Some(true)), (false, Some(false))],
        _ => vec![(false, None), (true, None)],
    };
    println!("| mode | minutes | answers | 429 to callers | other errors | Get calls/min | List calls/min | 429 from upstream | staleness p50 (s) | staleness p99 (s) | answers ≤ interval+5 s | Get quota used | interactive wait p50 / p99 (s) | batch answers |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (sync, flood) in modes {
        let r = run(sync, minutes, flood, graph).await?;
        println!(
            "| {} | {:.1} | {} | {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.2}% (≤ {:.0} s) | {:.1}% | {:.3} / {:.3} | {} |",
            r.mode,
            r.minutes,
            r.answers,
            r.refused,
            r.other_errors,
            r.get_per_min,
            r.list_per_min,
            r.upstream_429,
            r.p50,
            r.p99,
            r.within * 100.0,
            r.bound,
            r.get_quota_share * 100.0,
            r.wait_p50,
            r.wait_p99,
            r.batch_served
        );
    }
    Ok(())
}
