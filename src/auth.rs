//! Who is calling: consumers identified by API keys, and what they may do in which tenant.
//!
//! defender-proxy holds app-only tokens that read every incident of each tenant it serves, so it
//! is the access-control boundary: a consumer reaches only the tenants it is granted, with the
//! rights it has there. Keys are configured only as SHA-256 hashes (keys are random 256-bit
//! values made by `defender-proxy hash-key`, so a fast hash is enough); a presented key is hashed
//! and compared with every configured hash in constant time, without early exit.

use std::{collections::BTreeMap, sync::Arc};

use http::{header, HeaderMap};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    budget::{Caller, Priority},
    config::{AuthConfig, KeyHash, Right, DEFAULT_TENANT},
};

/// What a consumer may do in one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
}

impl Rights {
    fn of(rights: &[Right]) -> Rights {
        Rights {
            read: rights.contains(&Right::Read),
            write: rights.contains(&Right::Write),
        }
    }
}

/// The tenants a consumer is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    /// Every tenant (`tenants = ["*"]`, and anonymous access), now and after reloads.
    All,
    /// These tenants only.
    Only(Vec<String>),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Configured name; a bounded metrics label.
    pub name: Arc<String>,
    /// Its rights where no per-tenant rights are configured.
    pub rights: Rights,
    pub grants: Grants,
    /// Rights per tenant (`tenant_rights`), instead of `rights` there.
    pub tenant_rights: BTreeMap<String, Rights>,
    /// Its flow in the budget's fair queuing: name, weight, configured priority.
    pub caller: Caller,
    /// Its ceiling on requests to the proxy itself (GCRA), if configured.
    pub rate: Option<Arc<CallerRate>>,
}

/// A consumer's own request-rate ceiling (governor's GCRA): contains a tool stuck in a loop
/// before it costs CPU or queue space. The budget towards the upstream stays the exact ledger.
pub struct CallerRate {
    limiter: governor::DefaultDirectRateLimiter,
    clock: governor::clock::DefaultClock,
    /// The configured rate and burst, for the `RateLimit` headers.
    pub per_second: f64,
    pub burst: u32,
}

impl std::fmt::Debug for CallerRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallerRate({}/s, burst {})", self.per_second, self.burst)
    }
}

impl PartialEq for CallerRate {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for CallerRate {}

impl Consumer {
    /// Its rights in `tenant`; `None` when it is not granted that tenant.
    pub fn rights_in(&self, tenant: &str) -> Option<Rights> {
        let granted = match &self.grants {
            Grants::All => true,
            Grants::Only(names) => names.iter().any(|n| n == tenant),
        };
        granted.then(|| self.tenant_rights.get(tenant).copied().unwrap_or(self.rights))
    }

    /// The tenant a request without `/tenants/{name}` is for: the consumer's only one, among
    /// `configured` (the tenants served now).
    pub fn sole_tenant<'a>(&'a self, configured: &'a [String]) -> Option<&'a str> {
        let mut reachable = configured.iter().filter(|t| self.rights_in(t).is_some());
        let one = reachable.next()?;
        reachable.next().is_none().then_some(one.as_str())
    }
}

impl CallerRate {
    fn new(per_second: f64, burst: Option<u32>) -> Option<CallerRate> {
        use std::num::NonZeroU32;
        let burst = burst.unwrap_or_else(|| (per_second.ceil() as u32).max(1));
        let period = std::time::Duration::from_secs_f64(1.0 / per_second);
        let quota = governor::Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?);
        Some(CallerRate {
            limiter: governor::RateLimiter::direct(quota),
            clock: governor::clock::DefaultClock::default(),
            per_second,
            burst,
        })
    }

    /// `Err(wait)` when this request is over the ceiling: try again after `wait`.
    pub fn check(&self) -> Result<(), std::time::Duration> {
        use governor::clock::Clock;
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Why a caller was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key presented")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
}

/// The configured consumers, ready for lookups. Replaced whole on reload.
#[derive(Debug)]
pub struct Consumers {
    keys: Vec<([u8; 32], Arc<Consumer>)>,
    anonymous: Option<Arc<Consumer>>,
}

/// The configured form of a key's hash.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A new random key (`dpx_` + 43 base64url characters, 256 bits).
pub fn generate_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("dpx_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Consumers {
    /// Config validation has already checked every hash.
    pub fn from_config(config: &AuthConfig) -> Consumers {
        let mut keys = Vec::new();
        for (name, c) in &config.consumers {
            let grants = if c.tenants.iter().any(|t| t == "*") {
                Grants::All
            } else if c.tenants.is_empty() {
                // Without [tenants] there is one tenant, and it is this consumer's.
                Grants::Only(vec![DEFAULT_TENANT.to_string()])
            } else {
                Grants::Only(c.tenants.clone())
            };
            let consumer = Arc::new(Consumer {
                name: Arc::new(name.clone()),
                rights: Rights::of(&c.rights),
                grants,
                tenant_rights: c
                    .tenant_rights
                    .iter()
                    .map(|(t, r)| (t.clone(), Rights::of(r)))
                    .collect(),
                caller: Caller::new(name.as_str(), c.weight, c.priority),
                rate: c
                    .rate_per_second
                    .and_then(|r| CallerRate::new(r, c.rate_burst))
                    .map(Arc::new),
            });
            for h in &c.key_hashes {
                if let Some(KeyHash(hash)) = KeyHash::parse(h) {
                    keys.push((hash, consumer.clone()));
                }
            }
        }
        let anonymous = config.allow_anonymous.then(|| {
            Arc::new(Consumer {
                name: Arc::new("anonymous".into()),
                rights: Rights {
                    read: true,
                    write: true,
                },
                grants: Grants::All,
                tenant_rights: BTreeMap::new(),
                caller: Caller::new("anonymous", 1, Priority::Interactive),
                rate: None,
            })
        });
        Consumers { keys, anonymous }
    }

    pub fn allows_anonymous(&self) -> bool {
        self.anonymous.is_some()
    }

    /// Names of all consumers (to pre-register metrics label values).
    pub fn names(&self) -> BTreeMap<Arc<String>, ()> {
        self.keys.iter().map(|(_, c)| (c.name.clone(), ())).collect()
    }

    /// Identifies the caller from `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Consumer>, AuthError> {
        let presented = match presented_key(headers) {
            Ok(k) => k,
            Err(AuthError::Missing) if self.anonymous.is_some() => {
                return Ok(self.anonymous.clone().expect("checked"));
            }
            Err(e) => return Err(e),
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found: Option<&Arc<Consumer>> = None;
        for (hash, consumer) in &self.keys {
            // Every hash is compared; the branch below depends only on the (secret-free) match.
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(consumer);
            }
        }
        // With anonymous access on, a wrong key is still an error: it is a misconfigured tool.
        found.cloned().ok_or(AuthError::Unknown)
    }
}

fn presented_key(headers: &HeaderMap) -> Result<&str, AuthError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, key) = v.split_once(' ').ok_or(AuthError::Malformed)?;
        let key = key.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
            return Err(AuthError::Malformed);
        }
        return Ok(key);
    }
    if let Some(v) = headers.get("x-api-key") {
        let key = v.to_str().map_err(|_| AuthError::Malformed)?.trim();
        return if key.is_empty() {
            Err(AuthError::Malformed)
        } else {
            Ok(key)
        };
    }
    Err(AuthError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsumerConfig;
    use http::HeaderValue;

    fn consumers(anon: bool) -> (Consumers, String) {
        let key = generate_key();
        let mut cfg = AuthConfig {
            allow_anonymous: anon,
            ..Default::default()
        };
        cfg.consumers.insert(
            "soar".into(),
            ConsumerConfig {
                key_hashes: vec![hash_key("old-key"), hash_key(&key)],
                rights: vec![Right::Read],
                ..ConsumerConfig::default()
            },
        );
        (Consumers::from_config(&cfg), key)
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::try_from(value).unwrap());
        h
    }

    #[test]
    fn bearer_and_x_api_key_and_rotation() {
        let (c, key) = consumers(false);
        let who = c
            .authenticate(&headers("authorization", &format!("Bearer {key}")))
            .unwrap();
        assert_eq!(who.name.as_str(), "soar");
        assert_eq!(
            who.rights_in("default"),
            Some(Rights {
                read: true,
                write: false
            })
        );
        assert_eq!(who.rights_in("other"), None);
        assert_eq!(c.authenticate(&headers("x-api-key", &key)).unwrap().name, who.name);
        assert_eq!(c.authenticate(&headers("x-api-key", "old-key")).unwrap().name, who.name);
    }

    #[test]
    fn missing_malformed_unknown() {
        let (c, _) = consumers(false);
        assert_eq!(c.authenticate(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(
            c.authenticate(&headers("authorization", "Basic abc")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            c.authenticate(&headers("authorization", "Bearer")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            c.authenticate(&headers("authorization", "Bearer nope")),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn anonymous_only_when_configured() {
        let (c, _) = consumers(true);
        assert_eq!(c.authenticate(&HeaderMap::new()).unwrap().name.as_str(), "anonymous");
        assert_eq!(c.authenticate(&headers("x-api-key", "nope")), Err(AuthError::Unknown));
    }

    #[test]
    fn grants_and_rights_per_tenant() {
        let mut cfg = AuthConfig::default();
        let consumer = |tenants: &[&str], rights: &[(&str, &[Right])]| ConsumerConfig {
            key_hashes: vec![hash_key("k")],
            rights: vec![Right::Read, Right::Write],
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            tenant_rights: rights.iter().map(|(t, r)| (t.to_string(), r.to_vec())).collect(),
            ..ConsumerConfig::default()
        };
        cfg.consumers
            .insert("soc".into(), consumer(&["a", "b"], &[("b", &[Right::Read])]));
        let c = Consumers::from_config(&cfg);
        let soc = c.authenticate(&headers("x-api-key", "k")).unwrap();
        let rw = Rights {
            read: true,
            write: true,
        };
        assert_eq!(soc.rights_in("a"), Some(rw));
        assert_eq!(
            soc.rights_in("b"),
            Some(Rights {
                read: true,
                write: false
            })
        );
        assert_eq!(soc.rights_in("c"), None);
        let served: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(soc.sole_tenant(&served), None, "two tenants: the path must name one");
        assert_eq!(soc.sole_tenant(&served[1..]), Some("b"));
        let mut cfg = AuthConfig::default();
        cfg.consumers.insert("all".into(), consumer(&["*"], &[]));
        let all = Consumers::from_config(&cfg)
            .authenticate(&headers("x-api-key", "k"))
            .unwrap();
        assert_eq!(all.rights_in("anything"), Some(rw));
        assert_eq!(all.sole_tenant(&served[2..]), Some("c"));
    }

    #[test]
    fn hashes_round_trip() {
        let h = hash_key("abc");
        assert_eq!(
            h,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(KeyHash::parse(&h).is_some());
        assert!(KeyHash::parse("sha256:xyz").is_none());
        assert!(generate_key().starts_with("dpx_"));
    }
}
