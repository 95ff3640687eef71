//! meshguard demo: Envoy 1.40 running the conformance wasm module in front of a test upstream.
//!
//! Starts the upstream and Envoy on free loopback ports, sends a few requests through Envoy,
//! prints what came back and the module's `wasmcustom.` stats, then stops both (exit 0).

use std::process::ExitCode;

use anyhow::{Context, Result};
use meshguard_tests::{
    wasm_artifact, Envoy, EnvoyConfig, Request, Response, TestUpstream, WasmFilter,
};

// --- the conformance module reports … ---------------------------------------------------
// Everything specific to the module lives in this section; adapt it as the module grows.

/// Build artifact name of the module under `target/wasm32-wasip1/wasm/`.
const MODULE: &str = "fixture_conformance";

/// Plugin configuration handed to the module's `on_configure`.
const MODULE_CONFIG: &str = "{}";

/// Response headers shown in the table besides the status (the module's own headers go here).
const SHOWN_HEADERS: &[&str] = &["x-upstream", "x-envoy-upstream-service-time"];

/// Stats whose names start with this prefix are printed (plugin-defined metrics).
const STATS_PREFIX: &str = "wasmcustom.";

/// The requests the demo sends: a label for the table and the request itself.
fn demo_requests() -> Vec<(&'static str, Request)> {
    vec![
        ("GET /", Request::get("/")),
        ("GET /api/users?id=7", Request::get("/api/users?id=7")),
        (
            "POST /api/orders (json)",
            Request::post("/api/orders")
                .header("content-type", "application/json")
                .body(r#"{"item":"book","qty":1}"#),
        ),
        (
            "GET /flaky (upstream 503)",
            Request::get("/flaky").header("x-upstream-status", "503"),
        ),
        (
            "GET /slow (upstream +150 ms)",
            Request::get("/slow").header("x-upstream-delay-ms", "150"),
        ),
    ]
}
// --- end of the module-specific section --------------------------------------------------

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("meshguard-demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let wasm = wasm_artifact(MODULE).context("the demo needs the conformance module")?;
    let upstream = TestUpstream::start_named("demo-backend")?;
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .wasm_filter(WasmFilter::new("conformance", &wasm).configuration(MODULE_CONFIG)),
    )?;
    println!("meshguard demo");
    println!("  module   : {}", wasm.display());
    println!(
        "  envoy    : http://{} (admin http://{})",
        envoy.listener_addr(),
        envoy.admin_addr()
    );
    println!(
        "  upstream : http://{} ({})",
        upstream.addr(),
        upstream.name()
    );
    println!();

    let mut rows = Vec::new();
    for (label, request) in demo_requests() {
        let response = meshguard_tests::send(envoy.listener_addr(), &request)
            .with_context(|| format!("send {label}"))?;
        rows.push(row(label, &response));
    }
    print_table(&rows);

    println!();
    println!("upstream received {} request(s)", upstream.request_count());
    let stats = envoy.stats()?;
    let plugin_stats: Vec<_> = stats
        .iter()
        .filter(|(name, _)| name.starts_with(STATS_PREFIX))
        .collect();
    if plugin_stats.is_empty() {
        println!("no {STATS_PREFIX}* stats reported by the module");
    } else {
        println!("{STATS_PREFIX}* stats:");
        for (name, value) in plugin_stats {
            println!("  {name} = {value}");
        }
    }

    // Dropping stops Envoy (kill + wait) and the upstream (threads joined).
    drop(envoy);
    drop(upstream);
    println!();
    println!("stopped Envoy and the upstream");
    Ok(())
}

/// One table row: label, status, then each of [`SHOWN_HEADERS`] (`-` when absent).
fn row(label: &str, response: &Response) -> Vec<String> {
    let mut cells = vec![label.to_string(), response.status.to_string()];
    cells.extend(
        SHOWN_HEADERS
            .iter()
            .map(|name| response.header(name).unwrap_or("-").to_string()),
    );
    cells
}

/// Prints rows under a header line, columns padded to their widest cell.
fn print_table(rows: &[Vec<String>]) {
    let mut header = vec!["request".to_string(), "status".to_string()];
    header.extend(SHOWN_HEADERS.iter().map(|h| h.to_string()));
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(&header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&rule);
    for row in rows {
        line(row);
    }
}
