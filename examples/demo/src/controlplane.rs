//! Part of the demo: the meshguard control plane (`meshguard run`, here in-process) with the
//! embedded file registry and a rules file, and Envoy 1.40 connected to it over ADS. Shows the
//! clusters and endpoints Envoy received, traffic through the ratelimit wasm filter that the
//! rules configure for `orders` (200s, then 429s), and a registry file change (a second
//! `inventory` instance) reaching Envoy, then stops everything.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meshguard::{ControlPlane, ConvertOptions, RegistrySource, RulesSource, RunOptions};
use meshguard_tests::{
    send_with_timeout, workspace_root, Envoy, EnvoyConfig, Request, Response, TestUpstream,
};

use crate::print_table;

// --- what the control plane is asked to do ----------------------------------------------------

/// `orders` gets the ratelimit filter (3 requests a minute, `RateLimit-*` headers on every
/// response) and native retries; `inventory` only native settings.
const RULES: &str = r#"services:
  orders:
    timeout: 5s
    retries: {attempts: 2, on: [connect-failure, reset]}
    ratelimit:
      rules:
      - name: orders
        limits: [{algorithm: fixed_window, requests: 3, per: 1m}]
        ratelimit_headers: always
  inventory:
    balancer: round_robin
    outlier_detection: {consecutive_5xx: 3, interval: 1s}
"#;

/// Requests sent to `orders`; the first `ORDERS_ADMITTED` pass.
const ORDERS_REQUESTS: usize = 5;
const ORDERS_ADMITTED: usize = 3;

/// Longest wait for the control plane, Envoy's ACKs or a registry change to arrive.
const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);
// --- end of the control-plane-specific section ------------------------------------------------

/// Runs the part; fails if the control plane or Envoy does something the files do not say.
pub fn run() -> Result<()> {
    let orders = TestUpstream::start_named("orders-1")?;
    let inventory_1 = TestUpstream::start_named("inventory-1")?;
    let inventory_2 = TestUpstream::start_named("inventory-2")?;
    let dir = std::env::temp_dir().join(format!("meshguard-demo-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = run_in(&dir, &orders, &inventory_1, &inventory_2);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    dir: &std::path::Path,
    orders: &TestUpstream,
    inventory_1: &TestUpstream,
    inventory_2: &TestUpstream,
) -> Result<()> {
    let services = dir.join("services.yaml");
    let rules = dir.join("rules.yaml");
    write_atomic(
        &services,
        &registry(&[("orders", orders), ("inventory", inventory_1)]),
    )?;
    write_atomic(&rules, RULES)?;
    let admin = free_addr()?;
    let xds = free_addr()?;
    let control_plane = ControlPlane::start(RunOptions {
        registry: RegistrySource::File(services.clone()),
        rules: Some(RulesSource::File(rules)),
        xds,
        admin,
        convert: ConvertOptions {
            listen: free_addr()?,
            wasm_dir: workspace_root().join("target/wasm32-wasip1/wasm"),
        },
        poll_interval: Duration::from_millis(100),
    })?;
    wait_for(admin, "the control plane to publish", |s| {
        s["snapshot"]["published"].as_u64() >= Some(1)
    })?;

    println!();
    println!("part 6: the control plane, `meshguard run` with the file registry, Envoy over ADS");
    let envoy = Envoy::start(
        EnvoyConfig::new("bootstrap-ads")
            .var("NODE_ID", "demo")
            .var("ADMIN_PORT", "0")
            .var("XDS_ADDRESS", xds.ip().to_string())
            .var("XDS_PORT", xds.port().to_string()),
    )?;
    let status = wait_for(admin, "Envoy to ACK every resource type", |s| {
        acked_all(s, "demo")
    })?;
    let rows: Vec<Vec<String>> = ["cds", "eds", "lds", "rds"]
        .iter()
        .map(|t| {
            let v = &status["snapshot"]["versions"][t];
            vec![
                t.to_string(),
                v["resources"].to_string(),
                v["version"].as_str().unwrap_or("").to_string(),
                status["nodes"]["demo"]["acked"][t]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    print_table(&["type", "resources", "version", "acked by Envoy"], &rows);
    println!();
    print_table(&["cluster", "endpoint", "health"], &endpoints(&envoy)?);

    println!();
    println!("-- orders: the ratelimit filter from rules.yaml (3 per minute) --");
    let mut rows = Vec::new();
    let mut statuses = Vec::new();
    for i in 1..=ORDERS_REQUESTS {
        let r = get(&envoy, "orders")?;
        statuses.push(r.status);
        rows.push(vec![
            i.to_string(),
            r.status.to_string(),
            r.header("x-upstream").unwrap_or("-").to_string(),
            r.header("ratelimit-remaining").unwrap_or("-").to_string(),
        ]);
    }
    print_table(&["#", "status", "x-upstream", "ratelimit-remaining"], &rows);
    let expected: Vec<u16> = (0..ORDERS_REQUESTS)
        .map(|i| if i < ORDERS_ADMITTED { 200 } else { 429 })
        .collect();
    ensure!(
        statuses == expected,
        "orders answered {statuses:?}, expected {expected:?}"
    );
    ensure!(
        get(&envoy, "inventory")?.status == 200,
        "inventory was limited too"
    );

    println!();
    println!("-- a registry change: services.yaml gets a second inventory instance --");
    write_atomic(
        &services,
        &registry(&[
            ("orders", orders),
            ("inventory", inventory_1),
            ("inventory", inventory_2),
        ]),
    )?;
    let started = Instant::now();
    let deadline = started + WAIT;
    loop {
        if get(&envoy, "inventory")?.header("x-upstream") == Some("inventory-2") {
            break;
        }
        if Instant::now() > deadline {
            bail!("Envoy never routed to the new inventory instance");
        }
        std::thread::sleep(POLL);
    }
    println!(
        "  Envoy routed to inventory-2 {} ms after the file was written",
        started.elapsed().as_millis()
    );
    let status = wait_for(admin, "Envoy to ACK the new endpoints", |s| {
        acked_all(s, "demo")
    })?;
    print_table(&["cluster", "endpoint", "health"], &endpoints(&envoy)?);
    ensure!(status["nacks"] == 0, "Envoy rejected a config: {status:#}");
    println!(
        "  registry: {} services, {} instances, stale: {}; NACKs: {}",
        status["registry"]["services"],
        status["registry"]["instances"],
        status["registry"]["stale"],
        status["nacks"]
    );

    drop(envoy);
    control_plane
        .stop()
        .context("the control plane stopped with an error")?;
    println!("  stopped Envoy and the control plane");
    Ok(())
}

fn registry(entries: &[(&str, &TestUpstream)]) -> String {
    let mut out = String::from("services:\n");
    let mut names: Vec<&str> = entries.iter().map(|(s, _)| *s).collect();
    names.dedup();
    for name in names {
        out.push_str(&format!("  {name}:\n"));
        for (_, upstream) in entries.iter().filter(|(s, _)| *s == name) {
            out.push_str(&format!(
                "  - {{address: 127.0.0.1, port: {}}}\n",
                upstream.port()
            ));
        }
    }
    out
}

/// Writes through a temporary file and a rename, so the control plane never reads half a file.
fn write_atomic(path: &PathBuf, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn get(envoy: &Envoy, service: &str) -> Result<Response> {
    send_with_timeout(
        envoy.listener_addr(),
        &Request::get("/").header("Host", service),
        Duration::from_secs(10),
    )
}

fn acked_all(status: &serde_json::Value, node: &str) -> bool {
    ["cds", "eds", "lds", "rds"].iter().all(|t| {
        let current = &status["snapshot"]["versions"][t]["version"];
        current.is_string() && status["nodes"][node]["acked"][t] == *current
    })
}

/// Polls the control plane's `/status` until `predicate` holds (bounded by `WAIT`).
fn wait_for(
    admin: SocketAddr,
    what: &str,
    predicate: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status =
            send_with_timeout(admin, &Request::get("/status"), WAIT).and_then(|r| r.json());
        if let Ok(status) = &status {
            if predicate(status) {
                return Ok(status.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}: {status:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// (cluster, endpoint, health) rows from Envoy's `/clusters`, for the meshguard clusters.
fn endpoints(envoy: &Envoy) -> Result<Vec<Vec<String>>> {
    let text = envoy.admin_get("/clusters")?;
    let mut rows: Vec<Vec<String>> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split("::");
            let (cluster, host, key, value) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            (key == "health_flags" && cluster != "meshguard_xds")
                .then(|| vec![cluster.to_string(), host.to_string(), value.to_string()])
        })
        .collect();
    rows.sort();
    Ok(rows)
}
