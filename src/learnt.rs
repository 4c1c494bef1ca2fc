//! `config check --learnt`: the limits the upstream stated in its 429s and the proxy adopted
//! (stricter than configured), beside the configured quotas, so an operator can carry them into
//! the configuration.
//!
//! They live where the proxies keep them: with `[shared]` in Redis (every replica's learnt
//! limits, only ever lowered, under `{<prefix>:<tenant>}:budget:<pool>:learnt`), read here with a
//! connection of its own (never the replicas' heartbeat, so this check is not counted as a
//! replica); otherwise in the running proxy's memory, read from its admin listener's `/readyz`.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use secrecy::ExposeSecret as _;

use crate::config::Config;

/// One window of one pool, as the upstream stated it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LearntLimit {
    pub tenant: String,
    pub pool: String,
    pub window: Duration,
    pub limit: u32,
}

/// What every replica learnt, from Redis (`config` must have `[shared]`).
pub async fn from_redis(config: &Config) -> anyhow::Result<Vec<LearntLimit>> {
    let url = match (&config.shared.redis_url, &config.shared.redis_url_file) {
        (Some(url), _) => url.expose_secret().to_string(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("shared.redis_url_file {} cannot be read", file.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!(
            "without [shared] the learnt limits live in the running proxy: pass its admin URL, \
             e.g. --learnt http://127.0.0.1:9090"
        ),
    };
    // The URL may carry a password: errors say what failed, never the URL.
    let client = redis::Client::open(url).map_err(|_| anyhow::anyhow!("shared.redis_url is not a valid Redis URL"))?;
    let wait = config.shared.timeout.max(Duration::from_secs(2));
    let mut conn = tokio::time::timeout(wait, client.get_multiplexed_async_connection())
        .await
        .context("Redis did not answer in time")?
        .context("cannot connect to Redis")?;
    let mut out = Vec::new();
    for (tenant, settings) in config.tenant_configs()? {
        let (pools, _) = crate::budget::pools(&settings.budget);
        for pool in pools {
            let key = format!(
                "{{{}:{}}}:budget:{}:learnt",
                config.shared.key_prefix,
                config.tenant_slot(&tenant, &settings),
                pool.name
            );
            let windows: BTreeMap<u64, u32> =
                tokio::time::timeout(wait, redis::cmd("HGETALL").arg(&key).query_async(&mut conn))
                    .await
                    .context("Redis did not answer in time")??;
            out.extend(windows.into_iter().map(|(ms, limit)| LearntLimit {
                tenant: tenant.clone(),
                pool: pool.name.clone(),
                window: Duration::from_millis(ms),
                limit,
            }));
        }
    }
    out.sort();
    Ok(out)
}

/// What one running proxy learnt, from its admin listener (`http://host:9090`).
pub async fn from_admin(admin: &str) -> anyhow::Result<Vec<LearntLimit>> {
    let url = format!("{}/readyz", admin.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // 503 (not ready) still carries the detail.
    let body: serde_json::Value = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?
        .json()
        .await
        .with_context(|| format!("{url} did not answer JSON"))?;
    let tenants = body["tenants"]
        .as_object()
        .with_context(|| format!("{url} lists no tenants: is it a defender-proxy admin listener?"))?;
    let mut out = Vec::new();
    for (tenant, detail) in tenants {
        for l in detail["learnt_limits"].as_array().into_iter().flatten() {
            let (Some(pool), Some(limit), Some(secs)) =
                (l["pool"].as_str(), l["limit"].as_u64(), l["window_seconds"].as_u64())
            else {
                continue;
            };
            out.push(LearntLimit {
                tenant: tenant.clone(),
                pool: pool.to_string(),
                window: Duration::from_secs(secs),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// The learnt limits as TOML comments, each beside the pool's configured quotas.
pub fn render(config: &Config, learnt: &[LearntLimit], source: &str) -> String {
    let mut out = format!("\n# Limits learnt from the upstream's 429s ({source}):\n");
    if learnt.is_empty() {
        out.push_str("#   none: every configured limit is at or below what the upstream stated\n");
        return out;
    }
    let tenants = config.tenant_configs().unwrap_or_default();
    for l in learnt {
        let configured = tenants
            .get(&l.tenant)
            .map(|t| {
                let (pools, _) = crate::budget::pools(&t.budget);
                pools
                    .iter()
                    .find(|p| p.name == l.pool)
                    .map(|p| {
                        p.quotas
                            .iter()
                            .map(|q| format!("{} per {}", q.limit, humantime::format_duration(q.length)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|| "no such pool now".into())
            })
            .unwrap_or_else(|| "no such tenant now".into());
        out.push_str(&format!(
            "#   tenant {}, pool {}: {} per {} (configured: {})\n",
            l.tenant,
            l.pool,
            l.limit,
            humantime::format_duration(l.window),
            configured
        ));
    }
    out
}
