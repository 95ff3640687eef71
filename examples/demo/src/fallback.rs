//! Part 3 of the demo: the fallback filter (`meshguard_fallback.wasm`) in Envoy 1.40 with two
//! workers. The upstream starts failing; after three consecutive failures the breaker opens and
//! clients get the static fallback instead of errors (without reaching the upstream). After the
//! open time one probe goes through to the recovered upstream and the breaker closes again.

use std::thread::sleep;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::print_table;
use meshguard_tests::{send, wasm_artifact, Envoy, EnvoyConfig, Request, TestUpstream, WasmFilter};

// --- what the filter is asked to do ------------------------------------------------------------

/// Build artifact name of the filter under `target/wasm32-wasip1/wasm/`.
const FILTER: &str = "meshguard_fallback";

/// Envoy worker threads: the breaker's state is shared by both.
const WORKERS: u32 = 2;

/// One breaker on `/orders`: opens after 3 consecutive failures for 1 s, then admits one probe
/// that closes it on success; while open, clients get a static fallback.
const FILTER_CONFIG: &str = r#"{"breakers": [
  {"name": "orders", "match": {"path": {"prefix": "/orders"}},
   "trip": {"consecutive_failures": 3},
   "open": {"duration": "1s"},
   "half_open": {"probes": 1, "successes": 1},
   "fallback": {"static": {"status": 200, "headers": {"content-type": "application/json"},
                           "body": "{\"orders\": [], \"degraded\": true}"}},
   "state_header": true}
]}"#;

/// How long the breaker stays open (plus a margin for the demo's clock).
const OPEN_FOR: Duration = Duration::from_millis(1_200);
// --- end of the filter-specific section --------------------------------------------------------

/// One step: a label, whether the upstream fails it, and what the client must get.
struct Step {
    label: &'static str,
    upstream_fails: bool,
    expect_status: u16,
    expect_fallback: bool,
}

const STEPS: [Step; 7] = [
    step("upstream fails (1)", true, 503, false),
    step("upstream fails (2)", true, 503, false),
    step("upstream fails (3): breaker opens", true, 503, false),
    step("breaker open", true, 200, true),
    step("breaker open", false, 200, true),
    // After OPEN_FOR: the next request is the probe; the upstream has recovered.
    step("after 1 s: probe succeeds, closes", false, 200, false),
    step("closed again", false, 200, false),
];

const fn step(
    label: &'static str,
    upstream_fails: bool,
    expect_status: u16,
    expect_fallback: bool,
) -> Step {
    Step {
        label,
        upstream_fails,
        expect_status,
        expect_fallback,
    }
}

/// Runs part 3; fails if the breaker does not behave as configured.
pub fn run() -> Result<()> {
    let wasm = wasm_artifact(FILTER).context("the demo needs the fallback filter")?;
    let upstream = TestUpstream::start_named("orders-backend")?;
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .concurrency(WORKERS)
            .wasm_filter(WasmFilter::new("fallback", &wasm).configuration(FILTER_CONFIG)),
    )?;
    println!();
    println!("part 3: the fallback filter (circuit breaker) in Envoy, {WORKERS} workers");

    let mut rows = Vec::new();
    let mut surprises = Vec::new();
    for (i, s) in STEPS.iter().enumerate() {
        if i == 5 {
            sleep(OPEN_FOR);
        }
        let before = upstream.request_count();
        let mut request = Request::get("/orders/42");
        if s.upstream_fails {
            request = request.header("x-upstream-status", "503");
        }
        let response = send(envoy.listener_addr(), &request)?;
        let reached = upstream.request_count() > before;
        let fallback = response.header("x-meshguard-fallback").is_some();
        if response.status != s.expect_status || fallback != s.expect_fallback {
            surprises.push(format!(
                "{}: got {} (fallback {fallback}), expected {} (fallback {})",
                s.label, response.status, s.expect_status, s.expect_fallback
            ));
        }
        rows.push(vec![
            (i + 1).to_string(),
            s.label.to_string(),
            if s.upstream_fails { "503" } else { "200" }.to_string(),
            response.status.to_string(),
            if reached { "yes" } else { "no" }.to_string(),
            response
                .header("x-meshguard-breaker")
                .unwrap_or("-")
                .to_string(),
            response.body_str().trim().to_string(),
        ]);
    }
    print_table(
        &[
            "#",
            "step",
            "upstream would say",
            "client got",
            "reached upstream",
            "x-meshguard-breaker",
            "body",
        ],
        &rows,
    );
    println!();
    // The filter hands its per-request counters to Envoy on each worker's 1 s tick.
    sleep(Duration::from_millis(1_100));
    let stats = envoy.stats()?;
    for (name, value) in stats
        .iter()
        .filter(|(n, _)| n.starts_with("wasmcustom.meshguard_fallback.orders."))
    {
        println!("  envoy {name} = {value}");
    }
    drop(envoy);
    drop(upstream);
    if !surprises.is_empty() {
        bail!("the breaker surprised the demo: {}", surprises.join("; "));
    }
    println!();
    println!("the breaker opened, served the fallback, probed and closed as configured");
    Ok(())
}
