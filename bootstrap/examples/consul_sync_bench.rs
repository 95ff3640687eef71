//! Consul → Envoy at scale: N services × M instances in the fake Consul, `meshguard run` in a
//! child process (so its memory is its own), and Envoy over ADS. Prints the time to the first
//! full snapshot, the control plane's resident memory, and the time from one instance added in
//! Consul to Envoy having it (`cluster.<service>.membership_total` in Envoy's admin).
//!
//! ```sh
//! cargo run --release -p meshguard --example consul_sync_bench -- 5000 10   # the issue's size
//! cargo run -p meshguard --example consul_sync_bench -- 200 10              # a smoke run
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
/// Changes measured after the first sync.
const CHANGES: usize = 5;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--control-plane") {
        return control_plane(&args[2..]);
    }
    let services: usize = args.get(1).map_or(Ok(200), |a| a.parse())?;
    let per_service: usize = args.get(2).map_or(Ok(10), |a| a.parse())?;
    bench(services, per_service)
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

fn bench(services: usize, per_service: usize) -> Result<()> {
    let consul = FakeConsul::start_with(Options {
        max_wait: Duration::from_secs(30),
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

    let envoy = Envoy::start(
        EnvoyConfig::new("bootstrap-ads")
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

    let mut samples = Vec::new();
    for change in 0..CHANGES {
        let service = name(change * services / CHANGES);
        let before = membership(&service)?.unwrap_or_default();
        let t = Instant::now();
        consul.register(Instance::new(
            &format!("{service}-new"),
            &service,
            "127.0.0.2",
            20_000,
        ));
        wait_until("Envoy to apply the change", || {
            Ok(membership(&service)? == Some(before + 1))
        })?;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "one instance added in Consul → applied by Envoy: min {:?}, median {:?}, max {:?} ({CHANGES} changes)",
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    Ok(())
}
