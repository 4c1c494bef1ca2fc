//! Tenants: each simulated tenant has its own incidents, quota counters, fault plan and stats,
//! and its own app registration; a token is issued in one tenant and every API call made with
//! it is served from that tenant alone, as the upstream does (it counts quotas per tenant and
//! app, and an app-only token sees exactly one tenant's incidents).
//!
//! An app registration is identified by its client id and lives in one (home) tenant, which
//! holds its secret. Another tenant accepts it only if it lists the client id among its
//! `consented_apps`: that is how a multi-tenant app (one registration a service provider's
//! customers each consent to) is modelled.

use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::data::DataParams;
use crate::faults::FaultPlan;
use crate::quota::RouteQuota;
use crate::stats::Recorder;
use crate::store::{IncidentBook, Update};
use crate::{SimQuotas, SimRoute};

/// A tenant served beside the default one (`SimConfig::tenants`). JSON example:
/// `{"tenant_id":"contoso","client_id":"contoso-app","client_secret":"s",
///   "consented_apps":["defender-proxy-demo"],"incidents":500}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimTenant {
    /// What the token endpoint's path names (`/{tenant_id}/oauth2/v2.0/token`) and what the
    /// data carries (`incidentUri`'s `tid=`, Graph's `tenantId`), so answers show their tenant.
    pub tenant_id: String,
    /// The tenant's own app registration: it is always consented in its home tenant.
    pub client_id: String,
    pub client_secret: String,
    /// Client ids of apps registered in other tenants that were consented to here (a
    /// multi-tenant app): they get tokens for this tenant with their home tenant's secret.
    #[serde(default)]
    pub consented_apps: Vec<String>,
    /// Seeds this tenant's data; `None` derives it from the tenant id, so that two tenants
    /// never serve the same incidents by accident (their ids ranges may still overlap, as real
    /// tenants' do).
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "default_incidents")]
    pub incidents: u64,
    #[serde(default = "default_first_id")]
    pub first_id: i64,
    #[serde(default = "default_missing_share")]
    pub missing_share: f64,
    /// This tenant's limits; its counters are its own.
    #[serde(default)]
    pub quotas: SimQuotas,
    /// If set, one random existing incident of this tenant changes every interval.
    #[serde(default, with = "humantime_serde")]
    pub change_interval: Option<Duration>,
}

fn default_incidents() -> u64 {
    10_000
}

fn default_first_id() -> i64 {
    1
}

fn default_missing_share() -> f64 {
    0.05
}

impl SimTenant {
    /// A tenant with its own app (`{tenant_id}-app`, secret `{tenant_id}-secret`), 1,000 incident
    /// ids from 1, the documented quotas and data seeded from its id.
    pub fn new(tenant_id: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            client_id: format!("{tenant_id}-app"),
            client_secret: format!("{tenant_id}-secret"),
            consented_apps: Vec::new(),
            seed: None,
            incidents: 1_000,
            first_id: 1,
            missing_share: default_missing_share(),
            quotas: SimQuotas::default(),
            change_interval: None,
        }
    }

    /// The seed actually used: the configured one, or one derived from the tenant id (FNV-1a,
    /// stable across runs and platforms, unlike the standard library's hasher).
    pub(crate) fn effective_seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            self.tenant_id
                .to_ascii_lowercase()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                })
        })
    }

    /// Generates the tenant's incidents, their history ending at `anchor` (a moment for large
    /// tenants: call it off the runtime).
    pub(crate) fn generate(&self, anchor: i64) -> IncidentBook {
        let params = DataParams {
            seed: self.effective_seed(),
            anchor,
            missing_share: self.missing_share,
            tenant_id: self.tenant_id.clone(),
        };
        IncidentBook::new(params, self.first_id, self.incidents)
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let id = &self.tenant_id;
        anyhow::ensure!(!id.trim().is_empty(), "a tenant needs a tenant_id");
        anyhow::ensure!(!self.client_id.is_empty(), "tenant {id}: client_id must not be empty");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.missing_share),
            "tenant {id}: missing_share must be between 0 and 1"
        );
        anyhow::ensure!(
            self.change_interval.map_or(true, |d| !d.is_zero()),
            "tenant {id}: change_interval must be positive"
        );
        for route in SimRoute::ALL {
            anyhow::ensure!(
                self.quotas.for_route(route).iter().all(|q| !q.window.is_zero()),
                "tenant {id}: quota windows of {} must be positive",
                route.as_str()
            );
        }
        Ok(())
    }
}

/// Checks what only the whole set of tenants can show: ids and client ids unique, every
/// consented app registered somewhere.
pub(crate) fn validate_directory(tenants: &[SimTenant]) -> anyhow::Result<()> {
    for (i, t) in tenants.iter().enumerate() {
        t.validate()?;
        for other in &tenants[..i] {
            anyhow::ensure!(
                !other.tenant_id.eq_ignore_ascii_case(&t.tenant_id),
                "tenant {} is declared twice",
                t.tenant_id
            );
            // A client id names one registration: two tenants cannot both own it.
            anyhow::ensure!(
                other.client_id != t.client_id,
                "client_id {} is registered in two tenants ({} and {}); consent the app in one \
                 of them instead",
                t.client_id,
                other.tenant_id,
                t.tenant_id
            );
        }
        for app in &t.consented_apps {
            anyhow::ensure!(
                tenants.iter().any(|o| &o.client_id == app),
                "tenant {}: consented app {app} is not registered in any tenant",
                t.tenant_id
            );
        }
    }
    Ok(())
}

/// One tenant's state in a running simulator.
pub(crate) struct Tenancy {
    pub(crate) spec: SimTenant,
    pub(crate) store: IncidentBook,
    quotas: [RouteQuota; 7],
    pub(crate) faults: Mutex<FaultPlan>,
    pub(crate) stats: Recorder,
}

impl Tenancy {
    /// `store` holds the tenant's incidents (from [`SimTenant::generate`]); `start` is shared
    /// by all tenants so that their `at_ms` timestamps compare.
    pub(crate) fn new(spec: SimTenant, store: IncidentBook, start: Instant) -> Self {
        let quotas = SimRoute::ALL.map(|route| RouteQuota::new(spec.quotas.for_route(route).clone()));
        Self {
            faults: Mutex::new(FaultPlan::new(spec.effective_seed())),
            stats: Recorder::new(start),
            store,
            quotas,
            spec,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.spec.tenant_id
    }

    pub(crate) fn quota(&self, route: SimRoute) -> &RouteQuota {
        &self.quotas[route.index()]
    }

    /// New limits from now on; calls already logged count against them, as when the upstream
    /// tightens a quota under a client's feet.
    pub(crate) fn set_quotas(&self, quotas: &SimQuotas) {
        for route in SimRoute::ALL {
            self.quota(route).replace(quotas.for_route(route).clone());
        }
    }

    /// Whether tokens for `client_id` may be issued here: its own app or a consented one.
    pub(crate) fn admits_app(&self, client_id: &str) -> bool {
        self.spec.client_id == client_id || self.spec.consented_apps.iter().any(|a| a == client_id)
    }

    pub(crate) fn touch(&self, id: i64, comment: &str, by: &str) -> Option<String> {
        let stamp = self.store.touch(id, comment, by)?;
        self.stats.change(id, stamp.clone());
        Some(stamp)
    }

    /// Applies an API update on behalf of `app` (the client id the token was issued to).
    pub(crate) fn update(&self, id: i64, update: Update, app: &str) -> Option<String> {
        let by = format!("API-App:{app}");
        let stamp = self.store.update(id, update, &by)?;
        self.stats.change(id, stamp.clone());
        Some(stamp)
    }

    pub(crate) fn create(&self) -> (i64, String) {
        let (id, stamp) = self.store.create();
        self.stats.change(id, stamp.clone());
        (id, stamp)
    }
}

/// Who an authenticated API call is for: the tenant its token was issued in and the app it was
/// issued to (the upstream attributes changes to the app).
#[derive(Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub(crate) tenant: &'a Tenancy,
    pub(crate) app: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_parse_and_validate_as_a_directory() {
        let t: SimTenant = serde_json::from_str(
            r#"{"tenant_id":"contoso","client_id":"c-app","client_secret":"s",
                "consented_apps":["msp"],"incidents":5,"change_interval":"2s",
                "quotas":{"get":[{"limit":3,"window":"1m"}]}}"#,
        )
        .unwrap();
        assert_eq!(t.incidents, 5);
        assert_eq!(t.first_id, 1);
        assert_eq!(t.change_interval, Some(Duration::from_secs(2)));
        assert_eq!(t.quotas.get[0].limit, 3);
        assert_eq!(t.quotas.list, SimQuotas::default().list);
        let mut msp = SimTenant::new("msp-home");
        msp.client_id = "msp".into();
        assert!(validate_directory(&[msp.clone(), t.clone()]).is_ok());
        // The consented app must exist somewhere.
        assert!(validate_directory(std::slice::from_ref(&t)).is_err());
        // Tenant ids are unique whatever their case; client ids name one registration.
        let mut twin = SimTenant::new("CONTOSO");
        assert!(validate_directory(&[msp.clone(), t.clone(), twin.clone()]).is_err());
        twin.tenant_id = "fabrikam".into();
        twin.client_id = "msp".into();
        assert!(validate_directory(&[msp, t, twin]).is_err());
        assert!(serde_json::from_str::<SimTenant>(r#"{"tenant_id":"x"}"#).is_err());
    }

    #[test]
    fn derived_seeds_differ_per_tenant_and_stay_put() {
        let a = SimTenant::new("contoso");
        let b = SimTenant::new("fabrikam");
        assert_ne!(a.effective_seed(), b.effective_seed());
        assert_eq!(a.effective_seed(), SimTenant::new("Contoso").effective_seed());
        assert_eq!(SimTenant { seed: Some(7), ..a }.effective_seed(), 7);
    }
}
