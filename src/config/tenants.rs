//! `[tenants.<name>]`: the customer tenants one proxy serves, each inheriting what it does not
//! set from the top-level section of the same name.
//!
//! A tenant may set `upstream`, `token`, `budget`, `sync` and `cache`. Tables merge key by key
//! (the tenant's value wins), with two exceptions that keep an override from mixing with what it
//! replaces:
//! - `budget.routes.<route>` is replaced whole: a tenant that gives a route its own `quotas`
//!   does not also inherit the top level's `pool` for it (nor the reverse).
//! - `token`'s credentials are one group: a tenant that sets any credential key of its own
//!   (`client_id`, a secret, a certificate, `mode`, a static token) is its own app registration
//!   and inherits none of the top level's; one that sets none (usually only `tenant_id`) uses
//!   the top level's app registration: a service provider's multi-tenant app, consented to once
//!   per customer.
//!
//! Without any `[tenants]` table the top-level sections are the one tenant, named `default`, so
//! a single-tenant configuration keeps working unchanged.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use figment::{
    providers::Serialized,
    value::{Dict, Value},
    Figment,
};
use secrecy::SecretString;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{
    invalid, BudgetConfig, CacheConfig, Config, ConfigError, Dialect, SyncConfig, TokenConfig, TokenMode,
    UpstreamConfig, DEFENDER_BASE_URL, GRAPH_BASE_URL,
};

/// The name of the one tenant of a configuration without `[tenants]`.
pub const DEFAULT_TENANT: &str = "default";

/// What a `[tenants.<name>]` table sets; the rest comes from the top level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantOverrides {
    pub upstream: Option<Dict>,
    pub token: Option<TokenOverrides>,
    pub budget: Option<Dict>,
    pub sync: Option<Dict>,
    pub cache: Option<Dict>,
}

/// A tenant's `token` keys (secrets typed as secrets, so they never print).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenOverrides {
    pub mode: Option<TokenMode>,
    pub authority: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    pub client_certificate_key_file: Option<PathBuf>,
    pub client_certificate_thumbprint: Option<String>,
    pub resource: Option<String>,
    #[serde(with = "humantime_serde")]
    pub refresh_before: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub wait: Option<Duration>,
    pub static_token: Option<SecretString>,
    pub static_token_file: Option<PathBuf>,
}

impl TokenOverrides {
    /// Whether the tenant names credentials of its own (then it inherits none).
    fn has_credentials(&self) -> bool {
        self.mode.is_some()
            || self.client_id.is_some()
            || self.client_secret.is_some()
            || self.client_secret_file.is_some()
            || self.client_certificate_key_file.is_some()
            || self.client_certificate_thumbprint.is_some()
            || self.static_token.is_some()
            || self.static_token_file.is_some()
    }

    fn apply(&self, base: &TokenConfig) -> TokenConfig {
        let mut t = base.clone();
        if self.has_credentials() {
            // Its own credentials: none of the top level's. The mode is its own if it says so,
            // else the one its credentials imply.
            let static_token = self.static_token.is_some() || self.static_token_file.is_some();
            t.mode = self.mode.unwrap_or(if static_token {
                TokenMode::Static
            } else {
                TokenMode::ClientCredentials
            });
            t.client_id = String::new();
            t.client_secret = None;
            t.client_secret_file = None;
            t.client_certificate_key_file = None;
            t.client_certificate_thumbprint = None;
            t.static_token = None;
            t.static_token_file = None;
        }
        fn set<T: Clone>(to: &mut T, from: &Option<T>) {
            if let Some(v) = from {
                *to = v.clone();
            }
        }
        fn set_opt<T: Clone>(to: &mut Option<T>, from: &Option<T>) {
            if from.is_some() {
                to.clone_from(from);
            }
        }
        set(&mut t.mode, &self.mode);
        set(&mut t.authority, &self.authority);
        set(&mut t.tenant_id, &self.tenant_id);
        set(&mut t.client_id, &self.client_id);
        set_opt(&mut t.client_secret, &self.client_secret);
        set_opt(&mut t.client_secret_file, &self.client_secret_file);
        set_opt(&mut t.client_certificate_key_file, &self.client_certificate_key_file);
        set_opt(
            &mut t.client_certificate_thumbprint,
            &self.client_certificate_thumbprint,
        );
        set(&mut t.resource, &self.resource);
        set(&mut t.refresh_before, &self.refresh_before);
        set(&mut t.wait, &self.wait);
        set_opt(&mut t.static_token, &self.static_token);
        set_opt(&mut t.static_token_file, &self.static_token_file);
        t
    }
}

/// One tenant's effective settings: the top level's sections with its own keys laid over them.
#[derive(Debug, Clone, Serialize)]
pub struct TenantConfig {
    pub upstream: UpstreamConfig,
    pub token: TokenConfig,
    pub budget: BudgetConfig,
    pub sync: SyncConfig,
    pub cache: CacheConfig,
}

impl TenantConfig {
    /// The top-level sections as one tenant.
    fn top_level(config: &Config) -> TenantConfig {
        let mut t = TenantConfig {
            upstream: config.upstream.clone(),
            token: config.token.clone(),
            budget: config.budget.clone(),
            sync: config.sync.clone(),
            cache: config.cache.clone(),
        };
        t.resolve_api_defaults();
        t
    }

    /// The top level with `over` laid over it; errors name `tenants.<name>.<section>`.
    fn layered(config: &Config, name: &str, over: &TenantOverrides) -> Result<TenantConfig, ConfigError> {
        let key = |section: &str| format!("tenants.{name}.{section}");
        // Which customer a tenant is must be said in its own table, never inherited: a
        // forgotten id would otherwise silently serve another tenant's incidents under this name.
        let own_id = over.token.as_ref().and_then(|t| t.tenant_id.as_deref());
        let token = over.token.as_ref().map_or_else(
            || TokenConfig {
                tenant_id: String::new(),
                ..config.token.clone()
            },
            |o| o.apply(&config.token),
        );
        // A static token (tests, a lab) names no tenant.
        let static_token = token.mode == TokenMode::Static;
        if !matches!(own_id, Some(id) if !id.trim().is_empty()) && !static_token {
            return Err(invalid(
                key("token.tenant_id"),
                "required: each tenant names its own tenant id (a top-level token.tenant_id is not inherited)",
            ));
        }
        let mut t = TenantConfig {
            upstream: overlay(&config.upstream, over.upstream.as_ref(), &key("upstream"))?,
            token,
            budget: overlay(&config.budget, over.budget.as_ref(), &key("budget"))?,
            sync: overlay(&config.sync, over.sync.as_ref(), &key("sync"))?,
            cache: overlay(&config.cache, over.cache.as_ref(), &key("cache"))?,
        };
        t.resolve_api_defaults();
        Ok(t)
    }

    /// A base URL or token resource left at one API's public default follows the tenant's
    /// `upstream.api` (so a tenant can switch API without restating either); sovereign clouds
    /// set both explicitly.
    pub fn resolve_api_defaults(&mut self) {
        resolve_api_defaults(&mut self.upstream, &mut self.token);
    }

    /// Who this tenant is upstream: the quota key the upstream counts by (its API, the tenant id
    /// and the app registration), as an opaque short hash. Two tenants with the same identity
    /// would spend one quota twice; a tenant whose identity changes is another customer.
    pub fn identity(&self) -> String {
        use sha2::Digest as _;
        let api = match self.upstream.api {
            Dialect::Defender => "defender",
            Dialect::Graph => "graph",
        };
        let text = format!(
            "{api}\n{}\n{}\n{}",
            self.token.tenant_id.trim().to_ascii_lowercase(),
            self.token.client_id.trim().to_ascii_lowercase(),
            self.upstream.base_url.trim_end_matches('/')
        );
        hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6])
    }

    /// Whether two tenants' settings are the same (secrets compared as files and presence:
    /// inline secrets are not read back).
    pub fn same_as(&self, other: &TenantConfig) -> bool {
        toml::to_string(self).ok() == toml::to_string(other).ok()
    }
}

/// `base` with the tenant's keys merged over it; `budget.routes.<route>` entries the tenant sets
/// replace the top level's whole.
fn overlay<T: Clone + Serialize + DeserializeOwned>(
    base: &T,
    over: Option<&Dict>,
    key: &str,
) -> Result<T, ConfigError> {
    let Some(over) = over else {
        return Ok(base.clone());
    };
    let mut value = Value::serialize(base).map_err(|e| invalid(key, e.to_string()))?;
    if let (Value::Dict(_, dict), Some(Value::Dict(_, routes))) = (&mut value, over.get("routes")) {
        if let Some(Value::Dict(_, inherited)) = dict.get_mut("routes") {
            for route in routes.keys() {
                inherited.remove(route);
            }
        }
    }
    Figment::from(Serialized::defaults(value))
        .merge(Serialized::defaults(over))
        .extract()
        .map_err(|e| invalid(key, figment_message(&e)))
}

/// A figment error without its provider's name (which says nothing to an operator).
fn figment_message(e: &figment::Error) -> String {
    let mut out = e.kind.to_string();
    if !e.path.is_empty() {
        out.push_str(&format!(" (at {})", e.path.join(".")));
    }
    out
}

/// A base URL or token resource left at one API's public default follows `upstream.api`.
pub(super) fn resolve_api_defaults(upstream: &mut UpstreamConfig, token: &mut TokenConfig) {
    let (mine, other) = match upstream.api {
        Dialect::Graph => (GRAPH_BASE_URL, DEFENDER_BASE_URL),
        Dialect::Defender => (DEFENDER_BASE_URL, GRAPH_BASE_URL),
    };
    if upstream.base_url.trim_end_matches('/') == other {
        upstream.base_url = mine.into();
    }
    if token.resource.trim_end_matches('/') == other {
        token.resource = mine.into();
    }
}

/// A tenant name: it appears in paths, metric labels and Redis keys.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl Config {
    /// Every tenant's effective settings by name: the `[tenants]` entries, or (without any) one
    /// tenant named `default` made of the top-level sections.
    pub fn tenant_configs(&self) -> Result<BTreeMap<String, TenantConfig>, ConfigError> {
        if self.tenants.is_empty() {
            return Ok(BTreeMap::from([(
                DEFAULT_TENANT.to_string(),
                TenantConfig::top_level(self),
            )]));
        }
        let mut out = BTreeMap::new();
        for (name, over) in &self.tenants {
            if !valid_tenant_name(name) {
                return Err(invalid(
                    format!("tenants.{name}"),
                    "a tenant's name must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
                ));
            }
            out.insert(name.clone(), TenantConfig::layered(self, name, over)?);
        }
        // Two entries for one upstream identity would each spend the whole of its one quota.
        let mut seen: BTreeMap<String, &String> = BTreeMap::new();
        for (name, t) in &out {
            if t.token.mode == TokenMode::Static {
                continue;
            }
            if let Some(first) = seen.insert(t.identity(), name) {
                return Err(invalid(
                    format!("tenants.{name}.token.tenant_id"),
                    format!("tenant '{first}' has the same tenant id, app registration and upstream: one quota cannot be two tenants"),
                ));
            }
        }
        Ok(out)
    }

    /// The Redis hash-tag slot of a tenant's shared state: its name, and for a `[tenants]` entry
    /// also its identity, so a name given to another customer (or a corrected tenant id) never
    /// finds the previous one's cache, watermark or ledger. The one tenant of a configuration
    /// without `[tenants]` keeps `default` (the slot replicas of earlier versions share).
    pub fn tenant_slot(&self, name: &str, tenant: &TenantConfig) -> String {
        if self.tenants.is_empty() {
            name.to_string()
        } else {
            format!("{name}.{}", tenant.identity())
        }
    }

    /// Where a tenant's keys are named in messages: `tenants.<name>.`, or nothing for the one
    /// tenant of a configuration without `[tenants]`.
    pub fn tenant_key_prefix(&self, name: &str) -> String {
        if self.tenants.is_empty() {
            String::new()
        } else {
            format!("tenants.{name}.")
        }
    }

    /// The tenants' effective settings as TOML (secrets redacted), for `config check`.
    pub(super) fn tenants_redacted_toml(&self) -> String {
        #[derive(Serialize)]
        struct Shown<'a> {
            tenants: &'a BTreeMap<String, TenantConfig>,
        }
        if self.tenants.is_empty() {
            return String::new();
        }
        match self.tenant_configs() {
            Ok(tenants) => toml::to_string_pretty(&Shown { tenants: &tenants })
                .unwrap_or_else(|e| format!("# cannot render the tenants: {e}\n")),
            Err(e) => format!("# {e}\n"),
        }
    }
}
