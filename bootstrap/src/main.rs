//! `meshguard`: the control plane binary (`run`, `validate`, `render`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meshguard::{ConvertOptions, RegistrySource, RunOptions};

#[derive(Parser)]
#[command(
    name = "meshguard",
    version,
    about = "meshguard control plane: registry → xDS for Envoy, with unified governance rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve xDS (ADS) to Envoy from a registry and a rules file.
    Run(Box<RunArgs>),
    /// Check a rules file; prints every error as FILE:LINE:COLUMN: FIELD: MESSAGE.
    Validate {
        /// The rules file.
        rules: PathBuf,
    },
    /// Print an Envoy bootstrap: one that connects Envoy's ADS to a meshguard control plane,
    /// or with `--static` one holding the clusters, routes and filters itself.
    Render {
        /// Render a static config from `--registry file:PATH` and `--rules` instead.
        #[arg(long = "static", requires = "registry")]
        static_config: bool,
        /// The registry for `--static`: `file:PATH`.
        #[arg(long)]
        registry: Option<String>,
        /// The rules for `--static`.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Envoy's listener address for `--static`.
        #[arg(long, default_value = "127.0.0.1:10000")]
        listen: SocketAddr,
        /// Directory of the filters' modules for `--static`.
        #[arg(long)]
        wasm_dir: Option<PathBuf>,
        /// The control plane's ADS address.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds: SocketAddr,
        /// Envoy's node id.
        #[arg(long, default_value = "envoy")]
        node_id: String,
        /// Envoy's admin port on 127.0.0.1.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Envoy's ADS flavour: `delta` (incremental, `DELTA_GRPC`; what this control plane
        /// serves best at scale) or `sotw` (state of the world, `GRPC`).
        #[arg(long, value_enum, default_value_t = XdsApiArg::Delta)]
        xds_api: XdsApiArg,
    },
}

/// `--xds-api`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum XdsApiArg {
    Delta,
    Sotw,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Registry: `file:services.yaml` (reloaded on change) or `consul://HOST:PORT[?dc=DC1,DC2]`.
    #[arg(long)]
    registry: String,
    /// Consul ACL token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    consul_token: Option<String>,
    /// Consul datacenter(s), comma-separated in failover order (default: the agent's, or the
    /// registry URL's `?dc=`).
    #[arg(long)]
    consul_dc: Option<String>,
    /// Last-known-good registry file: written after every Consul change, served at start
    /// until Consul answers.
    #[arg(long)]
    consul_snapshot: Option<PathBuf>,
    /// Blocking-query wait, in seconds.
    #[arg(long, default_value_t = 60)]
    consul_wait_s: u64,
    /// Non-blocking Consul requests in flight at most.
    #[arg(long, default_value_t = 32)]
    consul_max_concurrency: usize,
    /// Only instances whose checks all pass.
    #[arg(long)]
    consul_passing_only: bool,
    /// Read from the Consul leader only (no `stale`).
    #[arg(long)]
    consul_consistent: bool,
    /// Unified rules: a YAML or JSON file (reloaded on change), or `consul-kv:KEY` (watched
    /// on the registry's Consul agent).
    #[arg(long)]
    rules: Option<String>,
    /// Address of the ADS gRPC server.
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds: SocketAddr,
    /// Address of the status endpoint (`GET /status`, `GET /healthz`).
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin: SocketAddr,
    /// Address Envoy's listener binds (sent over LDS).
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    /// Directory of the filters' modules (`meshguard_<filter>.wasm`).
    #[arg(long)]
    wasm_dir: Option<PathBuf>,
    /// How often the registry and rules files are checked, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            let RunArgs {
                registry,
                consul_token,
                consul_dc,
                consul_snapshot,
                consul_wait_s,
                consul_max_concurrency,
                consul_passing_only,
                consul_consistent,
                rules,
                xds,
                admin,
                listen,
                wasm_dir,
                poll_ms,
                log_level,
            } = *args;
            tracing_subscriber::fmt()
                .with_max_level(log_level)
                .with_writer(std::io::stderr)
                .init();
            RegistrySource::parse(&registry).and_then(|mut registry| {
                if let RegistrySource::Consul(consul) = &mut registry {
                    consul.token = consul_token;
                    if let Some(dcs) = &consul_dc {
                        consul.set_datacenters(dcs);
                    }
                    consul.snapshot_path = consul_snapshot;
                    consul.wait = Duration::from_secs(consul_wait_s.max(1));
                    consul.max_concurrency = consul_max_concurrency.max(1);
                    consul.passing_only = consul_passing_only;
                    consul.stale = !consul_consistent;
                }
                run(RunOptions {
                    registry,
                    rules: rules.as_deref().map(meshguard::RulesSource::parse),
                    xds,
                    admin,
                    convert: ConvertOptions {
                        listen,
                        wasm_dir: wasm_dir
                            .unwrap_or_else(|| meshguard::default_wasm_dir().to_path_buf()),
                    },
                    poll_interval: Duration::from_millis(poll_ms),
                })
            })
        }
        Command::Validate { rules } => match meshguard::load_rules(&rules) {
            Ok(parsed) => {
                println!(
                    "{}: ok ({} services)",
                    rules.display(),
                    parsed.services.len()
                );
                Ok(())
            }
            Err(errors) => {
                for error in &errors.0 {
                    println!("{error}");
                }
                eprintln!(
                    "meshguard: {} error(s) in {}",
                    errors.0.len(),
                    rules.display()
                );
                return ExitCode::FAILURE;
            }
        },
        Command::Render {
            static_config: true,
            registry,
            rules,
            listen,
            wasm_dir,
            admin_port,
            ..
        } => render_static(registry, rules, listen, wasm_dir, admin_port),
        Command::Render {
            xds,
            node_id,
            admin_port,
            xds_api,
            ..
        } => {
            let api = match xds_api {
                XdsApiArg::Delta => meshguard::XdsApi::Delta,
                XdsApiArg::Sotw => meshguard::XdsApi::Sotw,
            };
            print!(
                "{}",
                meshguard::ads_bootstrap(&node_id, xds, admin_port, api)
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshguard: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn render_static(
    registry: Option<String>,
    rules: Option<PathBuf>,
    listen: SocketAddr,
    wasm_dir: Option<PathBuf>,
    admin_port: u16,
) -> Result<()> {
    let Some(RegistrySource::File(path)) =
        registry.as_deref().map(RegistrySource::parse).transpose()?
    else {
        anyhow::bail!("render --static needs --registry file:PATH");
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let registry =
        meshguard::parse_registry(&text).with_context(|| format!("{}", path.display()))?;
    let rules = match rules {
        Some(path) => meshguard::load_rules(&path).map_err(|errors| anyhow::anyhow!("{errors}"))?,
        None => meshguard::Rules::default(),
    };
    let options = ConvertOptions {
        listen,
        wasm_dir: wasm_dir.unwrap_or_else(|| meshguard::default_wasm_dir().to_path_buf()),
    };
    print!(
        "{}",
        meshguard::static_bootstrap(&registry, &rules, &options, admin_port)?
    );
    Ok(())
}

fn run(options: RunOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(meshguard::run(options, async {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = interrupt => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = interrupt.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = interrupt.await;
        }
    }))
}
