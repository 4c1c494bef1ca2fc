//! The quick start: the built-in Defender simulator as upstream, and a proxy configured to use
//! it, with a freshly made consumer key. No credentials, no Docker, nothing outside this process.

use std::net::SocketAddr;

use secrecy::SecretString;

use crate::{
    auth,
    config::{Config, ConsumerConfig, Right, TenantOverrides, TokenMode, TokenOverrides},
    simulator::{SimConfig, SimHandle, SimTenant, Simulator},
};

/// A running simulator and the configuration that points a proxy at it.
pub struct Demo {
    pub simulator: SimHandle,
    pub config: Config,
    /// A key of the consumer `demo` (read and write).
    pub key: String,
}

/// Starts the simulator on `sim_listen` and returns a proxy configuration for it, based on
/// `base` (listeners, cache, budget as given) with upstream, token and a demo consumer filled in.
pub async fn prepare(mut base: Config, sim: SimConfig, sim_listen: SocketAddr) -> anyhow::Result<Demo> {
    let listener = tokio::net::TcpListener::bind(sim_listen).await?;
    let simulator = Simulator::start(sim.clone(), listener).await?;
    base.upstream.base_url = simulator.base_url();
    base.token.mode = TokenMode::ClientCredentials;
    base.token.authority = simulator.base_url();
    base.token.tenant_id = sim.tenant_id.clone();
    base.token.client_id = sim.client_id.clone();
    base.token.client_secret = Some(SecretString::from(sim.client_secret.clone()));
    base.token.client_secret_file = None;
    let key = auth::generate_key();
    base.auth.consumers.insert(
        "demo".into(),
        ConsumerConfig {
            key_hashes: vec![auth::hash_key(&key)],
            rights: vec![Right::Read, Right::Write],
            // With [tenants], the demo consumer reaches every one of them.
            tenants: if base.tenants.is_empty() {
                Vec::new()
            } else {
                vec!["*".into()]
            },
            ..ConsumerConfig::default()
        },
    );
    base.validate()?;
    Ok(Demo {
        simulator,
        config: base,
        key,
    })
}

/// A service provider's setup in miniature: the simulator serves a tenant per name (its id is
/// the name), each consenting to the demo's app registration, and the proxy serves each as
/// `[tenants.<name>]` with only its `token.tenant_id` set: one multi-tenant app, a token per
/// customer. Call before [`prepare`].
pub fn add_tenants(base: &mut Config, sim: &mut SimConfig, names: &[String]) {
    for name in names {
        let mut tenant = SimTenant::new(name);
        tenant.consented_apps.push(sim.client_id.clone());
        sim.tenants.push(tenant);
        base.tenants.insert(
            name.clone(),
            TenantOverrides {
                token: Some(TokenOverrides {
                    tenant_id: Some(name.clone()),
                    ..TokenOverrides::default()
                }),
                ..TenantOverrides::default()
            },
        );
    }
}
