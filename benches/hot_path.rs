//! Criterion benchmarks of the pieces every request goes through: a cache hit through the whole
//! API router (in process, no sockets), the budget's admit decision (the ledger alone, and
//! `LocalBudget::acquire` uncontended and with two threads contending), incident id and request
//! target parsing, the OData `$filter` parser, and one access-log line (formatted alone, and
//! formatted and queued for the writer thread).
//!
//! Inputs are generated from fixed seeds so every run measures the same work. Measurement times
//! are short on purpose: the whole file runs in a few minutes on two shared cores.
//! `bench/criterion-summary.sh` turns the results into the table in `bench/RESULTS.md`.

#![forbid(unsafe_code)]

use std::{
    hint::black_box,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use axum::{body::Body, Router};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use defender_proxy::{
    access_log,
    budget::{Budget, Caller, Ledger, LocalBudget, Priority, Quota},
    config::{BudgetConfig, Config, QuotaConfig, RouteQuotas, TelemetryConfig},
    demo,
    odata::ListQuery,
    route::RouteKind,
    simulator::{SimConfig, SimHandle},
    target, Application,
};
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use prometheus_client::metrics::counter::Counter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tower::ServiceExt as _;

/// Seed of every generated input in this file.
const SEED: u64 = 0x00DE_FE4D;
/// Inputs per batch for the parsers; throughput is reported per input.
const BATCH: usize = 1024;
/// The incident every router iteration asks for (exists in the simulator's default data).
const HOT_ID: i64 = 1;

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

// ---------------------------------------------------------------------------------------------
// Router: a cache hit through auth, target parsing, the proxy's cache lookup, headers, metrics.

struct RouterFixture {
    // Kept alive: dropping the application or the simulator would close their listeners.
    _app: Application,
    _simulator: SimHandle,
    router: Router,
    authorization: String,
}

async fn router_fixture() -> RouterFixture {
    let mut base = Config::default();
    // The router is driven in process; the listeners Application::build binds must not collide.
    base.server.listen = "127.0.0.1:0".parse().expect("literal address");
    base.server.admin_listen = "127.0.0.1:0".parse().expect("literal address");
    // The benchmark outlives the default 60 s: keep the hot entry fresh for the whole run.
    base.cache.ttl = Duration::from_secs(3600);
    let demo = demo::prepare(
        base,
        SimConfig::default(),
        "127.0.0.1:0".parse().expect("literal address"),
    )
    .await
    .expect("simulator starts");
    // The default access log stays on (it is part of a hit's cost) but writes to io::sink: on
    // stdout it would put hundreds of MB into criterion's output.
    let app = Application::build_with_access_log(demo.config.clone(), Box::new(std::io::sink()))
        .await
        .expect("proxy builds");
    let router = app.api_router();
    let authorization = format!("Bearer {}", demo.key);
    let fixture = RouterFixture {
        _app: app,
        _simulator: demo.simulator,
        router,
        authorization,
    };
    // Warm the entry, then check that the next answers really are hits, in both dialects (the
    // Graph facade's view of a Defender upstream's incident is translated on its first read).
    let (status, cache_status) = get_incident(&fixture, &defender_path(HOT_ID)).await;
    assert_eq!(status, StatusCode::OK, "warm-up of incident {HOT_ID}");
    for path in [defender_path(HOT_ID), graph_path(HOT_ID), graph_path(HOT_ID)] {
        let (status, cache_status_hit) = get_incident(&fixture, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            cache_status_hit.contains("hit"),
            "{path} must be a cache hit, got Cache-Status '{cache_status_hit}' (first was '{cache_status}')"
        );
    }
    fixture
}

fn defender_path(id: i64) -> String {
    format!("/api/incidents/{id}")
}

/// The Graph facade's read of the same incident with its alerts, like the Defender body (a
/// bare Graph incident is a much smaller body, which would flatter the translated hit).
fn graph_path(id: i64) -> String {
    format!("/v1.0/security/incidents/{id}?$expand=alerts")
}

/// One GET through the router, body read to the end; returns the status and `Cache-Status`.
async fn get_incident(fixture: &RouterFixture, path: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::AUTHORIZATION, &fixture.authorization)
        .body(Body::empty())
        .expect("valid request");
    let response = fixture
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    black_box(body);
    (status, cache_status)
}

fn bench_router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let fixture = rt.block_on(router_fixture());
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    let (native, translated) = (defender_path(HOT_ID), graph_path(HOT_ID));
    group.bench_function("get_incident_cache_hit", |b| {
        b.to_async(&rt).iter(|| get_incident(&fixture, &native));
    });
    // The same entry read through the Graph facade: a Defender upstream's incident in the
    // Graph dialect (translated once, on its first read), so about the native hit's cost.
    group.bench_function("get_incident_cache_hit_translated", |b| {
        b.to_async(&rt).iter(|| get_incident(&fixture, &translated));
    });
    group.finish();
    drop(fixture);
    rt.shutdown_timeout(Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------------
// Budget: the admit decision.
//
// The ledger alone runs the default Get quotas (100/min, 1,500/h) on a synthetic clock: one call
// every 3 s is 20/min and 1,200/h, so it never binds while the hour window holds 1,200 calls,
// the steady state of a busy proxy. `LocalBudget` reads the real clock itself, so there the
// quotas are huge and the windows microseconds long: never binding, with few calls in a window.

fn default_get_quotas() -> [Quota; 2] {
    [
        Quota {
            limit: 100,
            length: Duration::from_secs(60),
        },
        Quota {
            limit: 1_500,
            length: Duration::from_secs(3600),
        },
    ]
}

/// A ledger with the default quotas after two hours of one call every `STEP`, and the clock.
fn busy_ledger() -> (Ledger, tokio::time::Instant) {
    let mut ledger = Ledger::new(&default_get_quotas(), Duration::from_millis(500));
    let mut now = tokio::time::Instant::now();
    for _ in 0..(2 * 3600 / STEP.as_secs()) {
        now += STEP;
        assert!(
            ledger.try_now(now),
            "one call every {STEP:?} must fit the default quotas"
        );
    }
    (ledger, now)
}

/// Spacing of the synthetic calls: 20/min and 1,200/h stay under 100/min and 1,500/h.
const STEP: Duration = Duration::from_secs(3);

fn never_binding_budget() -> LocalBudget {
    // 100,000 calls within 2 µs would take 20 ps each: out of reach, so never binding.
    let quota = |limit, micros| QuotaConfig {
        limit,
        window: Duration::from_micros(micros),
    };
    let quotas = RouteQuotas {
        quotas: vec![quota(10_000, 1), quota(100_000, 2)],
        pool: None,
        pools: Vec::new(),
    };
    let mut config = BudgetConfig::default();
    for route in RouteKind::ALL {
        config.routes.insert(route.name().to_string(), quotas.clone());
    }
    LocalBudget::new(&config)
}

/// Runs `iters` acquisitions on a current-thread runtime; returns the time taken.
fn acquire_loop(budget: &LocalBudget, iters: u64) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let caller = Caller::new("bench", 1, Priority::Interactive);
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let grant = budget
                .acquire(RouteKind::GetIncident, &caller, Duration::from_secs(1), None)
                .await;
            assert!(grant.is_ok(), "the quota must never bind in this benchmark");
            black_box(grant.ok());
        }
        start.elapsed()
    })
}

fn bench_budget(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget");
    group.throughput(Throughput::Elements(1));

    let (mut ledger, mut now) = busy_ledger();
    group.bench_function("ledger_try_now", |b| {
        b.iter(|| {
            now += STEP;
            let admitted = ledger.try_now(black_box(now));
            assert!(admitted, "the quota must never bind in this benchmark");
        });
    });
    // What every grant also computes for the RateLimit headers: a walk over the calls still in
    // each window (here 1,200 in the hour window).
    let (ledger, now) = busy_ledger();
    group.bench_function("ledger_status", |b| {
        b.iter(|| black_box(ledger.status(black_box(now))));
    });

    let budget = never_binding_budget();
    group.bench_function("acquire_uncontended", |b| {
        b.iter_custom(|iters| acquire_loop(&budget, iters));
    });

    // Two threads acquire on the same route at once, so each admit contends for the route's
    // lock; the time reported is what one thread takes per admit while the other does the same.
    let budget = Arc::new(never_binding_budget());
    group.bench_function("acquire_2_threads", |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(2));
            let other = {
                let (budget, barrier) = (budget.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    acquire_loop(&budget, iters)
                })
            };
            barrier.wait();
            let mine = acquire_loop(&budget, iters);
            let theirs = other.join().expect("contending thread");
            mine.max(theirs)
        });
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Parsing: incident ids, request targets, OData list queries.

/// Ids as callers send them: mostly short decimal ids, some long, some with leading zeros.
fn id_inputs(rng: &mut ChaCha8Rng) -> Vec<String> {
    (0..BATCH)
        .map(|_| {
            let id: i64 = match rng.gen_range(0..10) {
                0 => rng.gen_range(1..=i64::MAX),
                _ => rng.gen_range(1..1_000_000),
            };
            if rng.gen_ratio(1, 20) {
                format!("00{id}")
            } else {
                id.to_string()
            }
        })
        .collect()
}

/// Ids the proxy refuses (400): signs, letters, overflow, empty, non-ASCII digits.
fn bad_id_inputs(rng: &mut ChaCha8Rng) -> Vec<String> {
    (0..BATCH)
        .map(|_| {
            let n: u32 = rng.gen_range(1..1_000_000);
            match rng.gen_range(0..5) {
                0 => format!("-{n}"),
                1 => format!("{n}a"),
                2 => "99999999999999999999".to_string(),
                3 => format!("{n}\u{0663}"),
                _ => "0".to_string(),
            }
        })
        .collect()
}

fn datetime(rng: &mut ChaCha8Rng) -> String {
    format!(
        "2024-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        rng.gen_range(1..=12),
        rng.gen_range(1..=28),
        rng.gen_range(0..24),
        rng.gen_range(0..60),
        rng.gen_range(0..60)
    )
}

fn comparison(rng: &mut ChaCha8Rng) -> String {
    const OPS: [&str; 6] = ["eq", "ne", "gt", "ge", "lt", "le"];
    const STATUSES: [&str; 4] = ["Active", "Resolved", "InProgress", "Redirected"];
    match rng.gen_range(0..4) {
        0 => format!("lastUpdateTime {} {}", OPS[rng.gen_range(2..6)], datetime(rng)),
        1 => format!("createdTime {} {}", OPS[rng.gen_range(2..6)], datetime(rng)),
        2 => format!(
            "status {} '{}'",
            OPS[rng.gen_range(0..2)],
            STATUSES[rng.gen_range(0..4)]
        ),
        _ => format!("assignedTo eq 'analyst{}@contoso.com'", rng.gen_range(0..50)),
    }
}

/// Raw query strings as tools send them: one to four comparisons joined by and/or (sometimes
/// negated or parenthesised), percent-encoded spaces, and usually $top/$skip.
fn list_query_inputs(rng: &mut ChaCha8Rng) -> Vec<String> {
    (0..BATCH)
        .map(|_| {
            let n = rng.gen_range(1..=4);
            let mut filter = comparison(rng);
            for _ in 1..n {
                let joiner = if rng.gen_ratio(3, 4) { "and" } else { "or" };
                let next = comparison(rng);
                filter = match rng.gen_range(0..4) {
                    0 => format!("({filter}) {joiner} not ({next})"),
                    1 => format!("{filter} {joiner} ({next})"),
                    _ => format!("{filter} {joiner} {next}"),
                };
            }
            let mut raw = format!("$filter={}", filter.replace(' ', "%20"));
            if rng.gen_ratio(2, 3) {
                raw.push_str(&format!("&$top={}", rng.gen_range(1..=100)));
            }
            if rng.gen_ratio(1, 3) {
                raw.push_str(&format!("&$skip={}", rng.gen_range(0..1000)));
            }
            raw
        })
        .collect()
}

fn bench_parsing(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let ids = id_inputs(&mut rng);
    let bad_ids = bad_id_inputs(&mut rng);
    let paths: Vec<String> = ids.iter().map(|id| format!("/api/incidents/{id}")).collect();
    let queries = list_query_inputs(&mut rng);
    for q in &queries {
        ListQuery::parse(q).unwrap_or_else(|e| panic!("generated query must be valid: {q}: {e}"));
    }

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("id_valid", |b| {
        b.iter(|| {
            for s in &ids {
                black_box(target::parse_id(black_box(s)).expect("valid id"));
            }
        });
    });
    group.bench_function("id_invalid", |b| {
        b.iter(|| {
            for s in &bad_ids {
                black_box(target::parse_id(black_box(s)).expect_err("invalid id"));
            }
        });
    });
    group.bench_function("target_get", |b| {
        b.iter(|| {
            for p in &paths {
                black_box(target::parse(&Method::GET, black_box(p), None).expect("valid target"));
            }
        });
    });
    group.bench_function("odata_list_query", |b| {
        b.iter(|| {
            for q in &queries {
                black_box(ListQuery::parse(black_box(q)).expect("valid query"));
            }
        });
    });
    // What the list route does with every query: parse, then print the canonical cache key.
    group.bench_function("odata_list_query_canonical", |b| {
        b.iter(|| {
            for q in &queries {
                black_box(ListQuery::parse(black_box(q)).expect("valid query").canonical());
            }
        });
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Access log: one request's line.

fn access_log_line() -> access_log::Line<'static> {
    access_log::Line {
        request_id: "7f0c1e64-2b8e-4c35-9a53-0d0e1f7b9c11",
        method: "GET",
        route: "get_incident",
        consumer: "soar",
        tenant: None,
        cache: "hit",
        status: 200,
        upstream_status: None,
        queued: Duration::ZERO,
        duration: Duration::from_micros(23),
    }
}

fn bench_access_log(c: &mut Criterion) {
    let mut group = c.benchmark_group("access_log");
    group.throughput(Throughput::Elements(1));
    let line = access_log_line();
    let mut buf = Vec::with_capacity(512);
    group.bench_function("format_line", |b| {
        b.iter(|| {
            buf.clear();
            access_log::format_line(&mut buf, black_box(&line), std::time::SystemTime::now());
            black_box(buf.len())
        });
    });
    // Formatting plus the copy into the shared buffer; the writer thread empties it into
    // io::sink, so nothing is dropped for lack of room.
    let log = access_log::AccessLog::new(
        &TelemetryConfig::default(),
        Box::new(std::io::sink()),
        Counter::default(),
        Counter::default(),
    )
    .expect("writer thread starts");
    group.bench_function("record", |b| b.iter(|| log.record(black_box(&line))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = bench_router, bench_budget, bench_parsing, bench_access_log
}
criterion_main!(benches);
