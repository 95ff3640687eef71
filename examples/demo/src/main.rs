//! meshguard demo: one wasm module, two hosts. The conformance module runs in Envoy 1.40 in
//! front of a test upstream and, for the same requests, in host-sim; the table shows that both
//! hosts give the same answer.
//!
//! Starts the upstream and Envoy on free loopback ports, sends a few requests through Envoy,
//! replays them in host-sim, prints both outcomes and the module's `wasmcustom.` stats, then
//! stops everything (exit 0; exit 1 if a step fails or the hosts disagree).
//!
//! Part 2 (`ratelimit.rs`) runs the ratelimit filter in a second Envoy: a burst answered with
//! 200s then 429s and their `RateLimit-*` headers, and a burst shaped to a fixed pace (exit 1
//! if the filter does not do what its configuration says).
//!
//! Part 3 (`fallback.rs`) opens a circuit breaker and serves its fallback; part 4 (`tenant.rs`)
//! denies a cross-tenant call and scopes Consul discovery per tenant; part 5 (`router.rs`) routes
//! over a Consul-synced list through an instance kill and a Consul outage; part 6
//! (`controlplane.rs`) drives Envoy from `meshguard run` over xDS.

mod controlplane;
mod fallback;
mod ratelimit;
mod router;
mod tenant;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use meshguard_tests::{
    wasm_artifact, Envoy, EnvoyConfig, Request, Response, TestUpstream, WasmFilter,
};

// --- what the conformance module is asked to do ----------------------------------------------

/// Build artifact name of the module under `target/wasm32-wasip1/wasm/`.
const MODULE: &str = "fixture_conformance";

/// Plugin configuration handed to the module's `on_configure`: count requests in a metric.
const MODULE_CONFIG: &str =
    r#"{"on_configure": [{"op": "define_metric", "kind": "counter", "name": "demo_requests"}]}"#;

/// Name the upstream answers with (`x-upstream: <name>`), mirrored by host-sim's upstream.
const UPSTREAM: &str = "demo-backend";

/// Response headers shown in the table besides the status.
const SHOWN_HEADERS: &[&str] = &["x-upstream", "x-meshguard", "x-reason"];

/// Stats whose names start with this prefix are printed (plugin-defined metrics).
const STATS_PREFIX: &str = "wasmcustom.";

/// The requests the demo sends: a label, the path, and the module's operations (`x-ops`).
fn demo_requests() -> Vec<(&'static str, &'static str, &'static str)> {
    let count =
        r#"{"at": "request_headers", "op": "increment_metric", "metric": "m1", "offset": 1}"#;
    vec![
        ("pass through", "/", ""),
        (
            "add a response header",
            "/api/users?id=7",
            r#"{"at": "response_headers", "op": "add_header", "map": "response_headers", "key": "x-meshguard", "value": "demo"}"#,
        ),
        (
            "answer locally (403)",
            "/admin",
            r#"{"at": "request_headers", "op": "send_local_response", "status": 403, "body": "denied by the filter", "headers": [["x-reason", "demo-policy"]]}"#,
        ),
        (
            "rewrite the path upstream sees",
            "/old",
            r#"{"at": "request_headers", "op": "replace_header", "map": "request_headers", "key": ":path", "value": "/new"}"#,
        ),
        ("count in a metric", "/counted", count),
    ]
}
// --- end of the module-specific section ------------------------------------------------------

fn main() -> ExitCode {
    match run()
        .and_then(|()| ratelimit::run())
        .and_then(|()| fallback::run())
        .and_then(|()| tenant::run())
        .and_then(|()| router::run())
        .and_then(|()| controlplane::run())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("meshguard-demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What one host answered: status and the shown headers.
#[derive(PartialEq, Eq)]
struct Outcome {
    status: u16,
    headers: Vec<String>,
    upstream_path: String,
}

fn run() -> Result<()> {
    let wasm = wasm_artifact(MODULE).context("the demo needs the conformance module")?;
    let upstream = TestUpstream::start_named(UPSTREAM)?;
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .wasm_filter(WasmFilter::new("conformance", &wasm).configuration(MODULE_CONFIG)),
    )?;
    let module = host_sim::Module::from_file(&wasm)?;
    let mut sim = host_sim::Host::builder(&module)
        .plugin_config(MODULE_CONFIG)
        .plugin_name("conformance")
        .build()?;
    if !sim.configure()? {
        bail!("host-sim: the module rejected its configuration");
    }
    sim.set_upstream(|req| {
        host_sim::Response::ok()
            .header("x-upstream", UPSTREAM)
            .header("x-seen-path", req.header(":path").unwrap_or(""))
    });

    println!("meshguard demo: one wasm module, two hosts");
    println!("  module   : {}", wasm.display());
    println!(
        "  envoy    : http://{} (admin http://{})",
        envoy.listener_addr(),
        envoy.admin_addr()
    );
    println!("  upstream : http://{} ({UPSTREAM})", upstream.addr());
    println!();

    let mut rows = Vec::new();
    let mut disagreements = 0;
    for (label, path, ops) in demo_requests() {
        let ops = if ops.is_empty() {
            String::new()
        } else {
            format!("[{ops}]")
        };
        let mut request = Request::get(path);
        let mut sim_request = host_sim::Request::get(path);
        if !ops.is_empty() {
            request = request.header("x-ops", &ops);
            sim_request = sim_request.header("x-ops", &ops);
        }
        let seen_before = upstream.request_count();
        let response = meshguard_tests::send(envoy.listener_addr(), &request)
            .with_context(|| format!("send {label}"))?;
        let upstream_path = if upstream.request_count() > seen_before {
            upstream
                .requests()
                .last()
                .map(|r| r.path.clone())
                .unwrap_or_default()
        } else {
            "-".to_string()
        };
        let in_envoy = envoy_outcome(&response, upstream_path);
        let s = sim.send(0, sim_request)?;
        let in_sim = sim_outcome(sim.stream(s)?);
        let same = in_envoy == in_sim;
        if !same {
            disagreements += 1;
        }
        rows.push(row(label, &in_envoy, &in_sim, same));
    }
    let mut header = vec!["request", "envoy", "upstream saw"];
    header.extend(SHOWN_HEADERS);
    header.extend(["host-sim", "same"]);
    print_table(&header, &rows);

    println!();
    println!("upstream received {} request(s)", upstream.request_count());
    let stats = envoy.stats()?;
    for (name, value) in stats.iter().filter(|(n, _)| n.starts_with(STATS_PREFIX)) {
        let sim_value = sim
            .metric(name.trim_start_matches(STATS_PREFIX))
            .map(|m| m.value.to_string())
            .unwrap_or_else(|| "-".into());
        println!("  envoy {name} = {value}   host-sim {sim_value}");
    }

    // Dropping stops Envoy (kill + wait) and the upstream (threads joined).
    drop(envoy);
    drop(upstream);
    println!();
    println!("stopped Envoy and the upstream");
    if disagreements > 0 {
        bail!("host-sim and Envoy disagreed on {disagreements} request(s)");
    }
    println!("host-sim and Envoy agreed on every request");
    Ok(())
}

fn envoy_outcome(response: &Response, upstream_path: String) -> Outcome {
    Outcome {
        status: response.status,
        headers: SHOWN_HEADERS
            .iter()
            .map(|n| response.header(n).unwrap_or("-").to_string())
            .collect(),
        upstream_path,
    }
}

fn sim_outcome(view: &host_sim::StreamView) -> Outcome {
    Outcome {
        status: view.status().unwrap_or(0),
        headers: SHOWN_HEADERS
            .iter()
            .map(|n| view.response_header(n).unwrap_or("-").to_string())
            .collect(),
        upstream_path: view
            .upstream_request
            .as_ref()
            .filter(|u| u.complete)
            .and_then(|u| u.header(":path"))
            .unwrap_or("-")
            .to_string(),
    }
}

/// One table row: label, Envoy's status, path seen upstream and headers, host-sim's status.
fn row(label: &str, envoy: &Outcome, sim: &Outcome, same: bool) -> Vec<String> {
    let mut cells = vec![
        label.to_string(),
        envoy.status.to_string(),
        envoy.upstream_path.clone(),
    ];
    cells.extend(envoy.headers.iter().cloned());
    cells.push(sim.status.to_string());
    cells.push(if same { "yes" } else { "NO" }.to_string());
    cells
}

/// Prints rows under a header line, columns padded to their widest cell.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
}
