//! The `defender-proxy` command: parse the command line, load configuration, start logging, run.
//! Everything else lives in the library.

#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use defender_proxy::{app, auth, config::Config, demo, learnt, simulator, telemetry, Application};

#[derive(Parser)]
#[command(
    version,
    about = "A caching, quota-exact proxy for the Microsoft 365 Defender incidents API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// TOML configuration file (defaults apply to missing keys; DPX_* variables override).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the proxy in front of the built-in Defender simulator (no credentials needed).
    Demo {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the simulator listens.
        #[arg(long, default_value = "127.0.0.1:0")]
        simulator_listen: SocketAddr,
        /// Which API the proxy speaks to the simulator: `defender` or `graph` (the simulator
        /// serves both over the same incidents; callers may use either facade either way).
        #[arg(long, default_value = "defender")]
        upstream: String,
        /// Serve several simulated customer tenants through one multi-tenant app registration
        /// (comma-separated names, e.g. `contoso,fabrikam,northwind`), each reached under
        /// `/tenants/{name}/...`.
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<String>,
    },
    /// Run only the built-in Defender simulator (for benchmarks and manual tests).
    Simulate {
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// Simulator settings as TOML (seed, incidents, quotas, ...).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make a new consumer API key and print it with the hash to put in the configuration.
    HashKey {
        /// Hash this key instead of making a new one.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and print the effective result, secrets redacted.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also print the limits the upstream stated and the proxies adopted: from Redis with
        /// `[shared]`, or from a running proxy's admin listener given as a URL
        /// (`--learnt http://127.0.0.1:9090`).
        #[arg(long, num_args = 0..=1, value_name = "ADMIN_URL")]
        learnt: Option<Option<String>>,
    },
}

/// sysexits' EX_USAGE / EX_CONFIG family: the configuration was refused.
const EXIT_CONFIG: u8 = 64;

fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("defender-proxy: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("defender-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve { config } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(&cfg.telemetry);
            runtime.block_on(async move {
                let application = Application::build(cfg).await?;
                app::spawn_reloader(application.state(), config);
                application.run_until_stopped(app::shutdown_signal()).await
            })
        }
        Command::Demo {
            config,
            simulator_listen,
            upstream,
            tenants,
        } => {
            // The demo fills in upstream and credentials itself, so the base config may lack them.
            let mut base = match Config::load_unvalidated(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("defender-proxy: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match upstream.as_str() {
                "defender" => {}
                "graph" => {
                    base.upstream.api = defender_proxy::config::Dialect::Graph;
                    base.token.resource = defender_proxy::config::GRAPH_BASE_URL.into();
                }
                other => {
                    eprintln!("defender-proxy: --upstream must be defender or graph, not '{other}'");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            telemetry::init(&base.telemetry);
            let mut sim = simulator::SimConfig::default();
            demo::add_tenants(&mut base, &mut sim, &tenants);
            runtime.block_on(async move {
                let demo = demo::prepare(base, sim, simulator_listen).await?;
                let application = Application::build(demo.config.clone()).await?;
                let (api, admin) = (application.api_addr(), application.admin_addr());
                println!(
                    "defender-proxy demo: proxy on http://{api}, admin on http://{admin}, simulated Defender on {}",
                    demo.simulator.base_url()
                );
                println!("consumer key (read+write): {}", demo.key);
                let prefix = tenants.first().map(|t| format!("/tenants/{t}")).unwrap_or_default();
                if !tenants.is_empty() {
                    println!(
                        "tenants: {} (each under http://{api}/tenants/<name>/...)",
                        tenants.join(", ")
                    );
                }
                println!(
                    "try:\n  curl -si -H 'Authorization: Bearer {}' http://{api}{prefix}/api/incidents/1",
                    demo.key
                );
                println!(
                    "  curl -si -H 'Authorization: Bearer {}' 'http://{api}{prefix}/v1.0/security/incidents?$top=5'",
                    demo.key
                );
                println!("  curl -s http://{admin}/metrics | grep defender_proxy_cache_lookups");
                application.run_until_stopped(app::shutdown_signal()).await
            })
        }
        Command::Simulate { listen, config } => {
            let sim: simulator::SimConfig = match config {
                Some(path) => match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
                {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("defender-proxy: simulator config {}: {e}", path.display());
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                None => simulator::SimConfig::default(),
            };
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                let handle = simulator::Simulator::start(sim, listener).await?;
                println!("simulated Defender on {}", handle.base_url());
                app::shutdown_signal().await;
                handle.shutdown();
                Ok(())
            })
        }
        Command::Config {
            command: ConfigCommand::Check { config, learnt },
        } => match load(config.as_deref()) {
            Ok(cfg) => {
                println!("# configuration is valid; effective values (secrets redacted):");
                print!("{}", cfg.to_redacted_toml());
                match learnt {
                    None => Ok(()),
                    Some(admin) => runtime.block_on(async {
                        let (found, source) = match &admin {
                            Some(url) => (learnt::from_admin(url).await?, format!("the proxy at {url}")),
                            None => (learnt::from_redis(&cfg).await?, "every replica, from Redis".to_string()),
                        };
                        print!("{}", learnt::render(&cfg, &found, &source));
                        Ok(())
                    }),
                }
            }
            Err(code) => return code,
        },
        Command::HashKey { key } => {
            let (key, made) = match key {
                Some(k) => (k, false),
                None => (auth::generate_key(), true),
            };
            if made {
                println!("key:  {key}");
            }
            println!("hash: {}", auth::hash_key(&key));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("defender-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
