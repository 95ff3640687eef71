//! Consul → Envoy at scale: N services × M instances in the fake Consul, `meshguard run` in a
//! child process (so its memory is its own), and Envoy over ADS. Prints the time to the first
//! full snapshot, the control plane's resident memory, and the time from one instance change
//! in Consul (alternately an instance added and removed, in services spread over the
//! catalog) to Envoy having applied it (`cluster.<service>.membership_total` in Envoy's
//! admin), median and p99 over `--changes` changes.
//!
//! ```sh
//! cargo run --release -p meshguard --example consul_sync_bench -- --services 5000 --instances 10
//! cargo run -p meshguard --example consul_sync_bench -- --services 200 --instances 10 # smoke
//! ```

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meshguard_fake_consul::{FakeConsul, Instance, Options};
use meshguard_tests::{send_with_timeout, Envoy, EnvoyConfig, Request};

/// Longest wait for one phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(5);
/// Appended to the ADS bootstrap: keep only `cluster.<name>.membership_total`.
const STATS_CONFIG: &str = r"stats_config:
  stats_matcher:
    inclusion_list:
      patterns:
      - suffix: .membership_total
";

const USAGE: &str = "usage: consul_sync_bench [--services N (200)] [--instances M (10)] [--changes K (20)] [--xds delta|sotw (delta)]";

/// What to measure.
struct Args {
    services: usize,
    per_service: usize,
    changes: usize,
    /// Envoy's ADS flavour: incremental (`DELTA_GRPC`) or state of the world (`GRPC`).
    delta: bool,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        services: 200,
        per_service: 10,
        changes: 20,
        delta: true,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--xds" => {
                parsed.delta = match it.next().map(String::as_str) {
                    Some("delta") => true,
                    Some("sotw") => false,
                    other => bail!("--xds {other:?}: expected delta or sotw\n{USAGE}"),
                };
                continue;
            }
            "--services" => &mut parsed.services,
            "--instances" => &mut parsed.per_service,
            "--changes" => &mut parsed.changes,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        };
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        *slot = value
            .parse()
            .with_context(|| format!("{flag} {value:?}: not a number\n{USAGE}"))?;
    }
    if parsed.services == 0 || parsed.per_service == 0 || parsed.changes == 0 {
        bail!("--services, --instances and --changes must be at least 1\n{USAGE}");
    }
    Ok(parsed)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--control-plane") {
        return control_plane(&args[2..]);
    }
    bench(&parse_args(&args[1..])?)
}

/// Child mode: `meshguard::run` against Consul at `args[0]`, xDS on `args[1]`, status on
/// `args[2]`, until killed.
fn control_plane(args: &[String]) -> Result<()> {
    let [consul, xds, admin, listen] = args else {
        bail!("--control-plane CONSUL XDS ADMIN LISTEN");
    };
    let mut options = meshguard::ConsulOptions::new(consul.clone());
    options.wait = Duration::from_secs(30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(meshguard::run(
        meshguard::RunOptions {
            registry: meshguard::RegistrySource::Consul(options),
            rules: None,
            xds: xds.parse()?,
            admin: admin.parse()?,
            convert: meshguard::ConvertOptions {
                listen: listen.parse()?,
                wasm_dir: meshguard::default_wasm_dir().to_path_buf(),
            },
            poll_interval: Duration::from_millis(500),
        },
        std::future::pending(),
    ))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn name(i: usize) -> String {
    format!("svc{i:05}")
}

fn status(admin: SocketAddr) -> Result<serde_json::Value> {
    send_with_timeout(admin, &Request::get("/status"), Duration::from_secs(30))?.json()
}

fn rss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn wait_until(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    while !done()? {
        if start.elapsed() > PHASE_TIMEOUT {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
    Ok(start.elapsed())
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn bench(args: &Args) -> Result<()> {
    let Args {
        services,
        per_service,
        changes,
        delta,
    } = *args;
    let consul = FakeConsul::start_with(Options {
        max_wait: Duration::from_secs(30),
        // One blocking query per service plus the catalog watch and the initial fetches
        // (a real agent needs `limits.http_max_conns_per_client` raised the same way).
        max_connections: services + 512,
        max_recorded_requests: 10_000,
        ..Options::default()
    })?;
    let started = Instant::now();
    for s in 0..services {
        for i in 0..per_service {
            let port = u16::try_from(10_000 + i).unwrap_or(u16::MAX);
            consul.register(Instance::new(
                &format!("{}-{i}", name(s)),
                &name(s),
                "127.0.0.1",
                port,
            ));
        }
    }
    let total = services * per_service;
    println!(
        "fake Consul: {services} services, {total} instances registered in {:?}",
        started.elapsed()
    );

    let (xds, admin, listen) = (free_addr()?, free_addr()?, free_addr()?);
    let child = Command::new(std::env::current_exe()?)
        .args(["--control-plane", &consul.addr().to_string()])
        .args([xds.to_string(), admin.to_string(), listen.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("start the control plane")?;
    let child = Killed(child);
    let pid = child.0.id();
    wait_until("the status endpoint", || Ok(status(admin).is_ok()))?;
    let first = wait_until("the first full snapshot", || {
        let s = status(admin)?;
        Ok(s["snapshot"]["published"].as_u64() >= Some(1)
            && s["registry"]["instances"].as_u64() == u64::try_from(total).ok())
    })?;
    println!(
        "first full snapshot: {first:?} after start; control plane RSS {} MiB",
        rss_kib(pid)? / 1024
    );

    // Envoy keeps only the stat the bench reads: with every stat of 5,000 clusters, one
    // `/stats?filter=` poll scans hundreds of thousands of names on Envoy's main thread
    // (~0.25 s), the same thread that applies xDS, and would dominate what is measured.
    let mut template = format!(
        "{}\n{STATS_CONFIG}",
        include_str!("../../envoy-configs/bootstrap-ads.yaml.tmpl")
    );
    if delta {
        template = template.replace("api_type: GRPC", "api_type: DELTA_GRPC");
    }
    println!(
        "Envoy ADS: {}",
        if delta { "delta" } else { "state of the world" }
    );
    let envoy = Envoy::start(
        EnvoyConfig::from_template_text(template)
            .var("NODE_ID", "bench")
            .var("ADMIN_PORT", "0")
            .var("XDS_ADDRESS", xds.ip().to_string())
            .var("XDS_PORT", xds.port().to_string())
            .startup_timeout(PHASE_TIMEOUT),
    )?;
    let membership = |service: &str| -> Result<Option<i64>> {
        let text = envoy.admin_get(&format!(
            "/stats?filter=^cluster\\.{service}\\.membership_total$"
        ))?;
        Ok(text
            .lines()
            .find_map(|l| l.split_once(": "))
            .and_then(|(_, v)| v.trim().parse().ok()))
    };
    let expected = i64::try_from(per_service)?;
    let last = name(services - 1);
    wait_until("Envoy to have every endpoint", || {
        Ok(membership(&last)? == Some(expected))
    })?;
    println!(
        "Envoy ready with {services} clusters; control plane RSS {} MiB",
        rss_kib(pid)? / 1024
    );

    let poll_started = Instant::now();
    membership(&last)?;
    let poll_cost = poll_started.elapsed();

    let published = || -> Result<u64> {
        status(admin)?["snapshot"]["published"]
            .as_u64()
            .context("no snapshot.published in the status")
    };
    let mut samples = Vec::new();
    let mut to_control_plane = Vec::new();
    for change in 0..changes {
        // Alternately add an instance to a service and remove it again, spread over the
        // catalog so consecutive changes hit different services.
        let service = name((change / 2) * services / changes.div_ceil(2));
        let before = membership(&service)?.unwrap_or_default();
        let id = format!("{service}-new");
        let publications = published()?;
        let t = Instant::now();
        let after = if change % 2 == 0 {
            consul.register(Instance::new(&id, &service, "127.0.0.2", 20_000));
            before + 1
        } else {
            consul.deregister(&id);
            before - 1
        };
        wait_until("the control plane to publish the change", || {
            Ok(published()? > publications)
        })?;
        to_control_plane.push(t.elapsed());
        wait_until("Envoy to apply the change", || {
            Ok(membership(&service)? == Some(after))
        })?;
        samples.push(t.elapsed());
    }
    samples.sort();
    to_control_plane.sort();
    println!(
        "  of which Consul → control plane snapshot published: median {:?}, p99 {:?}",
        quantile(&to_control_plane, 0.5),
        quantile(&to_control_plane, 0.99),
    );
    println!(
        "one instance changed in Consul → applied by Envoy ({changes} changes): min {:?}, median {:?}, p99 {:?}, max {:?} (one admin poll costs {poll_cost:?})",
        samples[0],
        quantile(&samples, 0.5),
        quantile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    println!(
        "control plane RSS after the changes: {} MiB",
        rss_kib(pid)? / 1024
    );
    Ok(())
}
