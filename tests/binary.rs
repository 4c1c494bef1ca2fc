//! The `defender-proxy serve` binary as an operator runs it: a config file, SIGHUP to apply new
//! consumer keys, SIGTERM to stop with exit code 0.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use defender_proxy::{
    auth,
    simulator::{SimConfig, Simulator},
};

fn config(sim: &str, key_hashes: &[String]) -> String {
    let hashes: Vec<String> = key_hashes.iter().map(|h| format!("\"{h}\"")).collect();
    let d = SimConfig::default();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
grace_period = "5s"
[upstream]
base_url = "{sim}"
[token]
authority = "{sim}"
tenant_id = "{tenant}"
client_id = "{client}"
client_secret_file = "SECRET_FILE"
[auth.consumers.tool]
key_hashes = [{hashes}]
rights = ["read"]
"#,
        tenant = d.tenant_id,
        client = d.client_id,
        hashes = hashes.join(", ")
    )
}

/// Runs `defender-proxy serve --config file`; returns the process and the API address it bound
/// (from the JSON log line that announces the listeners). Its log keeps being drained.
fn serve(file: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_defender-proxy"))
        .args(["serve", "--config"])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let api = loop {
        let line = lines.next().expect("the proxy logs its start").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
        if v["message"] == "defender-proxy serving" {
            break v["api"].as_str().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, api)
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_keys_and_sigterm_exits_zero() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::start(SimConfig::default(), listener).await.unwrap();
    let dir = std::env::temp_dir().join(format!("dpx-binary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("client-secret");
    std::fs::write(&secret, SimConfig::default().client_secret).unwrap();
    let file = dir.join("config.toml");
    let (old_key, new_key) = (auth::generate_key(), auth::generate_key());
    let write = |hashes: &[String]| {
        let text = config(&sim.base_url(), hashes).replace("SECRET_FILE", secret.to_str().unwrap());
        std::fs::write(&file, text).unwrap();
    };
    write(&[auth::hash_key(&old_key)]);

    let (mut child, api) = serve(&file);
    let pid = child.id();
    let client = reqwest::Client::new();
    let get = |key: &str| {
        client
            .get(format!("http://{api}/api/incidents/1"))
            .bearer_auth(key)
            .send()
    };
    assert_ne!(get(&old_key).await.unwrap().status(), 401);
    assert_eq!(get(&new_key).await.unwrap().status(), 401);

    // Rotation: add the new key, reload, switch the tool over, drop the old key, reload.
    write(&[auth::hash_key(&old_key), auth::hash_key(&new_key)]);
    signal(pid, "-HUP");
    let mut applied = false;
    for _ in 0..50 {
        if get(&new_key).await.unwrap().status() != 401 {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "SIGHUP applied the new key");
    assert_ne!(
        get(&old_key).await.unwrap().status(),
        401,
        "both keys work during rotation"
    );
    write(&[auth::hash_key(&new_key)]);
    signal(pid, "-HUP");
    let mut revoked = false;
    for _ in 0..50 {
        if get(&old_key).await.unwrap().status() == 401 {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(revoked, "the old key stopped working");
    // The cache survived the reloads: incident 1 was fetched once.
    assert_eq!(sim.stats().calls.get("get").map_or(0, |c| c.total), 1);

    signal(pid, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    sim.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// The service provider's example (`deploy/overlays/provider/config.toml`: three tenants, one
/// multi-tenant app registration, one tenant with an app of its own) passes `config check`, which
/// prints every tenant's effective settings with secrets redacted.
#[test]
fn the_providers_example_configuration_passes_config_check() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/overlays/provider/config.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_defender-proxy"))
        .args(["config", "check", "--config", path])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for tenant in ["contoso", "fabrikam", "northwind"] {
        assert!(stdout.contains(&format!("[tenants.{tenant}.token]")), "{stdout}");
    }
    assert!(stdout.contains("client_id = \"55555555-5555-5555-5555-555555555555\""));
}

/// SIGHUP adds and removes tenants in a running proxy, keeping the tenants that stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_tenants() {
    let mut sim_config = SimConfig::default();
    for t in ["alpha", "beta"] {
        let mut tenant = defender_proxy::simulator::SimTenant::new(t);
        tenant.consented_apps.push(sim_config.client_id.clone());
        sim_config.tenants.push(tenant);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::start(sim_config.clone(), listener).await.unwrap();
    let dir = std::env::temp_dir().join(format!("dpx-binary-tenants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("client-secret");
    std::fs::write(&secret, &sim_config.client_secret).unwrap();
    let file = dir.join("config.toml");
    let key = auth::generate_key();
    let write = |tenants: &[&str]| {
        let mut text = config(&sim.base_url(), &[auth::hash_key(&key)])
            .replace("SECRET_FILE", secret.to_str().unwrap())
            .replace("rights = [\"read\"]", "rights = [\"read\"]\ntenants = [\"*\"]");
        for t in tenants {
            text.push_str(&format!("[tenants.{t}.token]\ntenant_id = \"{t}\"\n"));
        }
        std::fs::write(&file, text).unwrap();
    };
    write(&["alpha"]);
    let (mut child, api) = serve(&file);
    let pid = child.id();
    let client = reqwest::Client::new();
    let status = |tenant: &str| {
        client
            .get(format!("http://{api}/tenants/{tenant}/api/incidents/1"))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(status("alpha").await.unwrap().status(), 200);
    assert_eq!(status("beta").await.unwrap().status(), 404);
    write(&["beta"]);
    signal(pid, "-HUP");
    let mut applied = false;
    for _ in 0..100 {
        if status("beta").await.unwrap().status() == 200 {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "SIGHUP added tenant beta");
    assert_eq!(status("alpha").await.unwrap().status(), 404, "and removed alpha");
    signal(pid, "-TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    sim.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
