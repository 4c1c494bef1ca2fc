//! The budget's two promises, checked on simulated hours of random traffic in milliseconds:
//! no sliding window ever holds more calls than its quota, and under saturating demand the
//! binding quota is used to at least 99%.
//!
//! The ledger takes its clock as a parameter, so this drives it exactly as the async budget does
//! (FIFO queue, commit at the head's ready time, refusal beyond the allowed wait) without tasks.
//!
//! Defender counts arrivals, not grants. The proxy takes a slot only once its token is in hand,
//! so grant and send differ by microseconds and arrival lags by network jitter only; a call that
//! cannot leave gives its slot back. The arrival properties below drive random grant-to-arrival
//! delays up to the margin, and random give-backs, and check the windows of arrival times.

use std::{collections::VecDeque, time::Duration};

use defender_proxy::budget::{Ledger, Quota};
use proptest::prelude::*;
use tokio::time::Instant;

const MINUTE: Quota = Quota {
    limit: 100,
    length: Duration::from_secs(60),
};
const HOUR: Quota = Quota {
    limit: 1500,
    length: Duration::from_secs(3600),
};

struct Run {
    t0: Instant,
    sends: Vec<Instant>,
    refused: usize,
}

/// Feeds arrivals (offsets from t0, sorted) through a ledger with a FIFO queue and max wait.
fn run(quotas: &[Quota], margin: Duration, max_wait: Duration, arrivals: &[Duration]) -> Run {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(quotas, margin);
    let mut queue: VecDeque<Instant> = VecDeque::new(); // deadlines of queued callers
    let mut sends = Vec::new();
    let mut refused = 0;
    let mut clock = t0;
    // Commits queued heads whose slot comes at or before `until`.
    let drain = |ledger: &mut Ledger,
                 queue: &mut VecDeque<Instant>,
                 sends: &mut Vec<Instant>,
                 clock: &mut Instant,
                 until: Option<Instant>| {
        while !queue.is_empty() {
            let at = match ledger.head_ready(*clock) {
                Ok(()) => *clock,
                Err(t) => t,
            };
            if until.is_some_and(|u| at > u) {
                break;
            }
            *clock = at;
            ledger.commit_head(at);
            queue.pop_front();
            sends.push(at);
        }
    };
    for &offset in arrivals {
        let now = t0 + offset;
        drain(&mut ledger, &mut queue, &mut sends, &mut clock, Some(now));
        clock = clock.max(now);
        if ledger.try_now(now) {
            sends.push(now);
        } else if ledger.next_slot(now) - now > max_wait {
            refused += 1;
        } else {
            ledger.enqueue(now);
            queue.push_back(now + max_wait);
        }
    }
    drain(&mut ledger, &mut queue, &mut sends, &mut clock, None);
    Run { t0, sends, refused }
}

/// The largest number of sends in any window of `length` (sends are sorted).
fn max_in_window(sends: &[Instant], length: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sends.len() {
        // A window [t, t + length) can hold sends[lo..=hi] iff sends[hi] - sends[lo] < length.
        while sends[hi] - sends[lo] >= length {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Arrivals in random bursts: `(gap to previous burst in ms, burst size)` pairs.
fn bursts(max_gap_ms: u64, max_size: usize, count: usize) -> impl Strategy<Value = Vec<(u64, usize)>> {
    prop::collection::vec((0..max_gap_ms, 1..=max_size), 1..count)
}

fn arrivals(bursts: &[(u64, usize)], spread_ms: u64) -> Vec<Duration> {
    let mut t = 0u64;
    let mut out = Vec::new();
    for (i, &(gap, size)) in bursts.iter().enumerate() {
        t += gap;
        for k in 0..size {
            // Within a burst, arrivals spread a little (deterministically) so ties are not all exact.
            out.push(Duration::from_millis(
                t + ((k as u64 * 7919 + i as u64) % (spread_ms + 1)),
            ));
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any arrival pattern: sparse, bursty, hour-long: never over any window.
    #[test]
    fn never_over_any_sliding_window(b in bursts(120_000, 300, 200), wait_s in 0u64..120, margin_ms in 0u64..1000) {
        let _cpu = crate::common::cpu_bound();
        let quotas = [MINUTE, HOUR];
        let r = run(&quotas, Duration::from_millis(margin_ms), Duration::from_secs(wait_s), &arrivals(&b, 2000));
        for q in quotas {
            let worst = max_in_window(&r.sends, q.length);
            prop_assert!(worst <= q.limit as usize, "{} calls in a {:?} window (limit {})", worst, q.length, q.limit);
        }
        let total: usize = b.iter().map(|x| x.1).sum();
        prop_assert_eq!(r.sends.len() + r.refused, total, "every caller is either sent or refused");
    }

    /// Small quotas, dense traffic: the same guarantee with many window turnovers.
    #[test]
    fn never_over_with_small_quotas(b in bursts(3_000, 40, 400), l1 in 1u32..20, w1 in 1u64..10, l2 in 1u32..60, w2 in 10u64..60) {
        let _cpu = crate::common::cpu_bound();
        let quotas = [Quota { limit: l1, length: Duration::from_secs(w1) }, Quota { limit: l2, length: Duration::from_secs(w2) }];
        let r = run(&quotas, Duration::ZERO, Duration::from_secs(30), &arrivals(&b, 500));
        for q in quotas {
            prop_assert!(max_in_window(&r.sends, q.length) <= q.limit as usize);
        }
    }

    /// Three hours of saturating demand in random bursts: every hour gets at least 99% of the
    /// hourly quota (the binding one), and no window is ever over.
    #[test]
    fn three_hours_of_saturation_use_99_percent(b in bursts(10_000, 200, 4_000), margin_ms in 0u64..=500) {
        let _cpu = crate::common::cpu_bound();
        let mut b = b;
        // Keep demand going for the whole three hours.
        let mut t: u64 = b.iter().map(|x| x.0).sum();
        while t < 3 * 3_600_000 + 60_000 {
            b.push((5_000, 50));
            t += 5_000;
        }
        let r = run(&[MINUTE, HOUR], Duration::from_millis(margin_ms), Duration::from_secs(30), &arrivals(&b, 1000));
        for q in [MINUTE, HOUR] {
            prop_assert!(max_in_window(&r.sends, q.length) <= q.limit as usize);
        }
        for hour in 0..3u32 {
            let start = r.t0 + HOUR.length * hour;
            let end = start + HOUR.length;
            let n = r.sends.iter().filter(|&&s| s >= start && s < end).count();
            prop_assert!(n >= 1485, "hour {}: {} calls, expected at least 1485", hour, n);
        }
    }
}

/// Deterministic jitter in `[0, max]` for the `i`-th call from a seed.
fn jitter(seed: u64, i: usize, max: Duration) -> Duration {
    let x = (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    max.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Grants arrive after a random delay up to the margin (network jitter: the token is already
    /// in hand when the slot is taken): no window of arrival times is ever over.
    #[test]
    fn arrivals_never_over_with_grant_to_send_jitter(b in bursts(30_000, 150, 200), margin_ms in 1u64..=500, wait_s in 0u64..60, seed in any::<u64>()) {
        let _cpu = crate::common::cpu_bound();
        let quotas = [MINUTE, HOUR];
        let margin = Duration::from_millis(margin_ms);
        let r = run(&quotas, margin, Duration::from_secs(wait_s), &arrivals(&b, 1000));
        let mut arrived: Vec<Instant> = r.sends.iter().enumerate().map(|(i, &g)| g + jitter(seed, i, margin)).collect();
        arrived.sort();
        for q in quotas {
            let worst = max_in_window(&arrived, q.length);
            prop_assert!(worst <= q.limit as usize, "{} arrivals in a {:?} window (limit {})", worst, q.length, q.limit);
        }
    }

    /// Calls that cannot leave after their grant give the slot back; the rest arrive with jitter:
    /// still never over, and the slots given back are used by later callers.
    #[test]
    fn given_back_slots_never_push_arrivals_over(gaps in prop::collection::vec(0u64..2_000, 1..2_000), give_back in 0u32..50, margin_ms in 1u64..=500, seed in any::<u64>()) {
        let _cpu = crate::common::cpu_bound();
        let quota = Quota { limit: 20, length: Duration::from_secs(10) };
        let margin = Duration::from_millis(margin_ms);
        let t0 = Instant::now();
        let mut ledger = Ledger::new(&[quota], margin);
        let mut t = t0;
        let mut arrived = Vec::new();
        for (i, gap) in gaps.iter().enumerate() {
            t += Duration::from_millis(*gap);
            if !ledger.try_now(t) {
                continue;
            }
            if (jitter(seed, i, Duration::from_secs(100)).as_secs() as u32) < give_back {
                ledger.uncommit(t, t); // its call could not leave: it never reaches the upstream
            } else {
                arrived.push(t + jitter(seed.rotate_left(7), i, margin));
            }
        }
        arrived.sort();
        prop_assert!(max_in_window(&arrived, quota.length) <= quota.limit as usize);
    }
}

#[test]
fn counting_grants_before_a_slow_token_would_fail_the_arrival_check() {
    // The old order (slot first, then the token): 100 calls granted at t=0 wait 2 s for a token
    // and arrive at 2 s; the next 100 are granted one minute and a margin after the first grants
    // and arrive at once. The checker sees 200 arrivals in one sliding minute.
    let t0 = Instant::now();
    let mut arrived: Vec<Instant> = (0..100).map(|_| t0 + Duration::from_secs(2)).collect();
    arrived.extend((0..100).map(|_| t0 + Duration::from_millis(60_500)));
    assert_eq!(max_in_window(&arrived, MINUTE.length), 200);
}

#[test]
fn a_burst_of_100_after_a_quiet_period_goes_at_once() {
    let arrivals: Vec<Duration> = (0..100).map(|_| Duration::from_secs(7200)).collect();
    let r = run(
        &[MINUTE, HOUR],
        Duration::from_millis(500),
        Duration::from_secs(30),
        &arrivals,
    );
    assert_eq!(r.sends.len(), 100);
    assert!(
        r.sends.iter().all(|&s| s == r.t0 + Duration::from_secs(7200)),
        "all 100 sent at their arrival"
    );
}

#[test]
fn a_token_bucket_with_burst_equal_to_the_quota_would_fail_this_check() {
    // The checker itself must be able to fail: 100 calls at t=0 and 99 refilled over the next
    // minute (a token bucket) put 199 calls in one sliding minute.
    let t0 = Instant::now();
    let mut sends: Vec<Instant> = (0..100).map(|_| t0).collect();
    sends.extend((1..100).map(|i| t0 + Duration::from_millis(600 * i)));
    assert_eq!(max_in_window(&sends, MINUTE.length), 199);
}

// ---- Fair queuing between consumers (the async budget itself, on tokio's paused clock) ----

mod fairness {
    use std::{sync::Arc, time::Duration};

    use defender_proxy::{
        budget::{Budget, Caller, LocalBudget, Priority},
        config::{BudgetConfig, QuotaConfig, RouteQuotas},
        route::RouteKind,
    };
    use proptest::prelude::*;
    use tokio::time::Instant;

    const G: RouteKind = RouteKind::GetIncident;

    /// A runtime on tokio's paused clock: simulated hours pass in milliseconds.
    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn budget(limit: u32, window: Duration) -> Arc<LocalBudget> {
        let mut cfg = BudgetConfig {
            safety_margin: Duration::ZERO,
            max_queue: 10_000,
            max_queue_per_consumer: 10_000,
            ..BudgetConfig::default()
        };
        for name in ["get_incident", "list_incidents", "update_incident"] {
            cfg.routes.insert(
                name.into(),
                RouteQuotas {
                    quotas: vec![QuotaConfig { limit, window }],
                    pool: None,
                    pools: Vec::new(),
                },
            );
        }
        Arc::new(LocalBudget::new(&cfg))
    }

    /// Each consumer keeps `backlog` calls queued for `run` of simulated time; returns the grant
    /// times with the consumer index, in grant order.
    fn saturate(weights: &[u32], limit: u32, window: Duration, run: Duration, backlog: usize) -> Vec<(Instant, usize)> {
        saturate_with_sporadic(weights, limit, window, run, backlog, None).0
    }

    /// [`saturate`], plus (if `sporadic` is `Some((seed, mean gap))`) a light consumer whose
    /// single calls arrive at random; returns also how long each of its calls waited.
    fn saturate_with_sporadic(
        weights: &[u32],
        limit: u32,
        window: Duration,
        run: Duration,
        backlog: usize,
        sporadic: Option<(u64, Duration)>,
    ) -> (Vec<(Instant, usize)>, Vec<Duration>) {
        let rt = paused_runtime();
        rt.block_on(async {
            let b = budget(limit, window);
            let end = Instant::now() + run;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let (wtx, mut wrx) = tokio::sync::mpsc::unbounded_channel();
            if let Some((seed, mean_gap)) = sporadic {
                let (b, tx, idx) = (b.clone(), tx.clone(), weights.len());
                tokio::spawn(async move {
                    use rand::{Rng, SeedableRng};
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    let caller = Caller::new("sporadic", 1, Priority::Interactive);
                    loop {
                        let gap = mean_gap.mul_f64(rng.gen_range(0.1..1.9));
                        tokio::time::sleep(gap).await;
                        if Instant::now() >= end {
                            return;
                        }
                        let (b, tx, wtx, caller) = (b.clone(), tx.clone(), wtx.clone(), caller.clone());
                        tokio::spawn(async move {
                            let t = Instant::now();
                            if b.acquire(G, &caller, Duration::from_secs(3600), None).await.is_ok() {
                                let _ = tx.send((Instant::now(), idx));
                                let _ = wtx.send(t.elapsed());
                            }
                        });
                    }
                });
            }
            // Interleave the consumers' tasks so that none is favoured at the start.
            for _ in 0..backlog {
                for (i, &w) in weights.iter().enumerate() {
                    let caller = Caller::new(format!("c{i}"), w, Priority::Interactive);
                    let (b, tx) = (b.clone(), tx.clone());
                    tokio::spawn(async move {
                        while Instant::now() < end {
                            if b.acquire(G, &caller, Duration::from_secs(3600), None).await.is_ok() {
                                let _ = tx.send((Instant::now(), i));
                            }
                        }
                    });
                }
            }
            drop(tx);
            tokio::time::sleep(run).await;
            b.close();
            let mut got = Vec::new();
            while let Ok(x) = rx.try_recv() {
                got.push(x);
            }
            got.retain(|(t, _)| *t < end);
            let mut waits = Vec::new();
            while let Ok(w) = wrx.try_recv() {
                waits.push(w);
            }
            (got, waits)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Backlogged consumers with random weights over simulated time: no window over quota,
        /// shares within a small tolerance of the weights' shares, and no consumer waits more
        /// than a bounded number of slots between two of its grants.
        #[test]
        fn backlogged_consumers_get_their_weighted_shares(weights in prop::collection::vec(1u32..=5, 2..=4)) {
            let _cpu = crate::common::cpu_bound();
            let (limit, window) = (10, Duration::from_secs(1));
            let grants = saturate(&weights, limit, window, Duration::from_secs(120), 6);
            let times: Vec<Instant> = grants.iter().map(|g| g.0).collect();
            prop_assert!(super::max_in_window(&times, window) <= limit as usize);
            let total = grants.len() as f64;
            prop_assert!(total >= 0.98 * f64::from(limit) * 120.0, "work-conserving: {} grants", total);
            let sum: u32 = weights.iter().sum();
            for (i, &w) in weights.iter().enumerate() {
                let got = grants.iter().filter(|g| g.1 == i).count() as f64 / total;
                let want = f64::from(w) / f64::from(sum);
                prop_assert!((got - want).abs() <= 0.02, "consumer {} (weight {}): {:.3} of slots, weight share {:.3}", i, w, got, want);
                // Between two grants of consumer i, at most about sum/w others go (after the
                // first window, whose slots go to whoever asked first, before any contention).
                let mut since = 0usize;
                let mut worst = 0usize;
                let settled = times[0] + window;
                for g in grants.iter().filter(|g| g.0 >= settled) {
                    if g.1 == i { worst = worst.max(since); since = 0; } else { since += 1; }
                }
                let bound = (f64::from(sum) / f64::from(w)).ceil() as usize + weights.len();
                prop_assert!(worst <= bound, "consumer {} waited {} slots behind others (bound {})", i, worst, bound);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

        /// A simulated hour of the documented Get quota (100 per minute): backlogged consumers with
        /// random weights, 50 calls queued each (a FIFO queue of 150 would hold a newcomer for
        /// 1.5 windows), and a light consumer whose calls arrive at random, well under its fair
        /// share. No minute is ever over; the backlogged consumers share what the light one
        /// leaves by their weights; the light one waits at most until the window after next
        /// (its calls bunch up at random, and a bunch above its share waits like a backlog).
        #[test]
        fn an_hour_of_random_arrivals_beside_backlogged_consumers(weights in prop::collection::vec(1u32..=4, 2..=3), seed in any::<u64>(), gap_s in 10u64..60) {
            let _cpu = crate::common::cpu_bound();
            let (limit, window) = (100, Duration::from_secs(60));
            let (grants, waits) = saturate_with_sporadic(&weights, limit, window, Duration::from_secs(3600), 50, Some((seed, Duration::from_secs(gap_s))));
            let times: Vec<Instant> = grants.iter().map(|g| g.0).collect();
            prop_assert!(super::max_in_window(&times, window) <= limit as usize);
            let backlogged: Vec<_> = grants.iter().filter(|g| g.1 < weights.len()).collect();
            let sum: u32 = weights.iter().sum();
            for (i, &w) in weights.iter().enumerate() {
                let got = backlogged.iter().filter(|g| g.1 == i).count() as f64 / backlogged.len() as f64;
                let want = f64::from(w) / f64::from(sum);
                prop_assert!((got - want).abs() <= 0.02, "consumer {} (weight {}): {:.3} of slots, weight share {:.3}", i, w, got, want);
            }
            prop_assert!(!waits.is_empty());
            let worst = waits.iter().max().unwrap();
            prop_assert!(*worst <= window * 2, "the light consumer waited {:?}", worst);
        }
    }

    /// A consumer alone gets the whole quota; a light newcomer is served within a slot or two
    /// even behind a heavy backlog.
    #[test]
    fn a_light_newcomer_goes_ahead_of_a_heavy_backlog() {
        let rt = paused_runtime();
        rt.block_on(async {
            let b = budget(10, Duration::from_secs(1));
            let heavy = Caller::new("heavy", 1, Priority::Interactive);
            let light = Caller::new("light", 1, Priority::Interactive);
            for _ in 0..200 {
                let (b, heavy) = (b.clone(), heavy.clone());
                tokio::spawn(async move { b.acquire(G, &heavy, Duration::from_secs(3600), None).await });
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let t = Instant::now();
            let g = b.acquire(G, &light, Duration::from_secs(60), None).await.unwrap();
            // The heavy backlog needs 17 s more; the newcomer goes when the next window opens.
            assert!(
                g.queued <= Duration::from_millis(500),
                "waited {:?} behind 170 queued calls",
                Instant::now() - t
            );
            b.close();
        });
    }

    /// Batch calls never take the last `reserve` slots of a window.
    #[test]
    fn batch_calls_leave_the_reserve_to_interactive_ones() {
        let rt = paused_runtime();
        rt.block_on(async {
            let mut cfg = BudgetConfig {
                safety_margin: Duration::ZERO,
                reserve: 3,
                ..BudgetConfig::default()
            };
            cfg.routes.get_mut("get_incident").unwrap().quotas = vec![QuotaConfig {
                limit: 10,
                window: Duration::from_secs(60),
            }];
            let b = LocalBudget::new(&cfg);
            let batch = Caller::new("job", 1, Priority::Batch);
            let console = Caller::new("console", 1, Priority::Interactive);
            let mut sent = 0;
            while b.acquire(G, &batch, Duration::ZERO, None).await.is_ok() {
                sent += 1;
            }
            assert_eq!(sent, 7, "batch stops at limit - reserve");
            for _ in 0..3 {
                assert!(b.acquire(G, &console, Duration::ZERO, None).await.is_ok());
            }
            assert!(b.acquire(G, &console, Duration::ZERO, None).await.is_err());
        });
    }
}

/// Calls drawing from overlapping pools (issue 14, item 4): each route's own pool, a pool its
/// tenant's routes share (the API as a whole) and a pool every tenant shares (the app's ceiling
/// across tenants), on tokio's paused clock. Two tenants' budgets share the process's book of
/// further pools, as the running proxy's do.
mod pools {
    use std::{collections::BTreeMap, sync::Arc, time::Duration};

    use defender_proxy::{
        budget::{Budget, Caller, Extras, LocalBudget, PoolScope, Priority},
        config::{BudgetConfig, PoolConfig, QuotaConfig, RouteQuotas, ROUTE_NAMES},
        route::RouteKind,
    };
    use proptest::prelude::*;
    use tokio::time::Instant;

    use super::max_in_window;

    const WINDOW: Duration = Duration::from_secs(2);

    fn pool(limit: u32) -> PoolConfig {
        PoolConfig {
            quotas: vec![QuotaConfig { limit, window: WINDOW }],
        }
    }

    /// A tenant whose three routes have their own limits `own`, all draw from its pool `api`,
    /// and (with `app`) from the app-wide pool `app` too.
    fn tenant(own: [u32; 3], api: u32, app: bool) -> BudgetConfig {
        let mut cfg = BudgetConfig {
            safety_margin: Duration::ZERO,
            ..BudgetConfig::default()
        };
        cfg.pools.insert("api".into(), pool(api));
        for (route, limit) in ROUTE_NAMES.iter().zip(own.iter().chain(&[own[2]])) {
            let mut pools = vec!["api".to_string()];
            if app {
                pools.push("app".into());
            }
            cfg.routes.insert(
                (*route).into(),
                RouteQuotas {
                    quotas: vec![QuotaConfig {
                        limit: *limit,
                        window: WINDOW,
                    }],
                    pool: None,
                    pools,
                },
            );
        }
        cfg
    }

    /// A call: (tenant, route, arrival ms, wait ms, given back after its grant).
    type Call = (usize, usize, u64, u64, bool);

    /// Runs `calls` through both tenants' budgets; returns every kept grant as (tenant, route,
    /// instant).
    fn run(budgets: Vec<LocalBudget>, calls: Vec<Call>) -> Vec<(usize, usize, Instant)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let budgets: Vec<Arc<LocalBudget>> = budgets.into_iter().map(Arc::new).collect();
        rt.block_on(async move {
            let caller = Arc::new(Caller::new("tool", 1, Priority::Interactive));
            let tasks: Vec<_> = calls
                .into_iter()
                .map(|(t, route, at_ms, wait_ms, give_back)| {
                    let t = t % budgets.len();
                    let (b, caller) = (budgets[t].clone(), caller.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(at_ms)).await;
                        let kind = RouteKind::ALL[route];
                        let g = b
                            .acquire(kind, &caller, Duration::from_millis(wait_ms), None)
                            .await
                            .ok()?;
                        if give_back {
                            b.release(kind, &g);
                            return None;
                        }
                        Some((t, route, g.at))
                    })
                })
                .collect();
            let mut sends = Vec::new();
            for t in tasks {
                if let Some(s) = t.await.unwrap() {
                    sends.push(s);
                }
            }
            sends
        })
    }

    fn most(sends: &[(usize, usize, Instant)], keep: impl Fn(usize, usize) -> bool) -> usize {
        let mut at: Vec<Instant> = sends.iter().filter(|s| keep(s.0, s.1)).map(|s| s.2).collect();
        at.sort();
        max_in_window(&at, WINDOW)
    }

    fn calls(tenants: usize) -> impl Strategy<Value = Vec<Call>> {
        prop::collection::vec(
            (
                0..tenants,
                0usize..3,
                0u64..4_000,
                0u64..6_000,
                prop::bool::weighted(0.1),
            ),
            1..120,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// One tenant, three routes each with its own pool and all drawing from a shared one:
        /// no window of any pool ever holds more grants than its limit.
        #[test]
        fn overlapping_pools_are_never_over(own in prop::array::uniform3(1u32..6), api in 1u32..8, calls in calls(1)) {
            let _busy = crate::common::cpu_bound();
            let sends = run(vec![LocalBudget::new(&tenant(own, api, false))], calls);
            prop_assert!(most(&sends, |_, _| true) <= api as usize, "shared pool over");
            for (route, limit) in own.iter().enumerate() {
                prop_assert!(most(&sends, |_, r| r == route) <= *limit as usize, "route {} over", route);
            }
        }

        /// Two tenants, each with its own route pools and API pool, both drawing from one pool
        /// of the app across tenants: no window of any pool of either tenant, nor of the app's
        /// pool, ever holds more grants than its limit.
        #[test]
        fn pools_across_tenants_are_never_over(
            own in prop::array::uniform2(prop::array::uniform3(1u32..6)),
            api in prop::array::uniform2(1u32..8),
            app in 1u32..10,
            calls in calls(2),
        ) {
            let _busy = crate::common::cpu_bound();
            let extras = Arc::new(Extras::default());
            let app_pools = BTreeMap::from([("app".to_string(), pool(app))]);
            let budgets = ["a", "b"]
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let scope = PoolScope { extras: &extras, tenant: name, app_pools: &app_pools };
                    LocalBudget::for_tenant(&tenant(own[i], api[i], true), scope, None)
                })
                .collect();
            let sends = run(budgets, calls);
            prop_assert!(most(&sends, |_, _| true) <= app as usize, "app pool over");
            for t in 0..2 {
                prop_assert!(most(&sends, |s, _| s == t) <= api[t] as usize, "tenant {} API pool over", t);
                for (route, limit) in own[t].iter().enumerate() {
                    prop_assert!(most(&sends, |s, r| s == t && r == route) <= *limit as usize, "tenant {} route {} over", t, route);
                }
            }
        }
    }
}
