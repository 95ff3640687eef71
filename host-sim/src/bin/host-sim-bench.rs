//! host-sim's benchmark: simulated requests per second through a filter, reported
//! against wasmtime's raw call rate measured in the same process, so the ratio
//! survives a change of machine. Run it with `make bench` (release build).
//!
//! 1. Baseline: a no-op wasm export called through `TypedFunc`, with the engine
//!    settings host-sim uses (fuel metering, canonical NaNs).
//! 2. host-sim: `Host::send` of a GET through fixture_minimal on one reused host,
//!    default upstream (200, body `ok`), one thread.
//!
//! Each phase runs for `--seconds` of wall time, checking the clock once per batch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use host_sim::{Host, Module, Request};

/// The requests/s host-sim should reach on one core (release build).
const TARGET_REQUESTS_PER_S: f64 = 100_000.0;

const DEFAULT_WASM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/wasm32-wasip1/wasm/fixture_minimal.wasm"
);

#[derive(Parser)]
#[command(
    name = "host-sim-bench",
    about = "host-sim requests/s against wasmtime's raw call rate"
)]
struct Args {
    /// The filter to drive (default: fixture_minimal, built by `make wasm`).
    #[arg(long, default_value = DEFAULT_WASM)]
    wasm: PathBuf,
    /// Wall-clock seconds per phase.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

/// One measured phase.
struct Phase {
    count: u64,
    elapsed: Duration,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn ns_per_op(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / (self.count.max(1)) as f64
    }
}

/// Runs `batch` (which does `size` operations) until `budget` has passed.
fn measure(
    budget: Duration,
    size: u64,
    mut batch: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Phase> {
    // Warm-up: caches, branch predictors, lazy initialisation.
    for _ in 0..3 {
        batch()?;
    }
    let start = Instant::now();
    let mut count = 0;
    loop {
        batch()?;
        count += size;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return Ok(Phase { count, elapsed });
        }
    }
}

fn raw_calls(budget: Duration) -> anyhow::Result<Phase> {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    config.cranelift_nan_canonicalization(true);
    let engine = wasmtime::Engine::new(&config)?;
    let module = wasmtime::Module::new(&engine, r#"(module (func (export "noop")))"#)?;
    let mut store = wasmtime::Store::new(&engine, ());
    store.set_fuel(u64::MAX)?;
    let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
    let noop = instance.get_typed_func::<(), ()>(&mut store, "noop")?;
    const BATCH: u64 = 100_000;
    measure(budget, BATCH, || {
        for _ in 0..BATCH {
            noop.call(&mut store, ())?;
        }
        Ok(())
    })
}

/// Times `send` through the module; also returns the guest calls one request makes.
fn requests(budget: Duration, wasm: &PathBuf) -> anyhow::Result<(Phase, u64)> {
    let module = Module::from_file(wasm)
        .with_context(|| "run `make wasm` to build the fixture".to_string())?;
    let mut host = Host::builder(&module).build()?;
    if !host.configure()? {
        bail!("{} rejected an empty configuration", module.name());
    }
    // Check the filter really runs before timing it.
    let before = host.guest_calls();
    let id = host.send(0, Request::get("/"))?;
    let calls_per_request = host.guest_calls() - before;
    let view = host.remove_stream(id)?;
    if view.status() != Some(200) || !view.finished {
        bail!("a GET did not complete with 200: {view:?}");
    }
    const BATCH: u64 = 1_000;
    let phase = measure(budget, BATCH, || {
        for _ in 0..BATCH {
            let id = host.send(0, Request::get("/"))?;
            // Drop the finished stream so memory stays flat over millions of requests.
            host.remove_stream(id)?;
        }
        Ok(())
    })?;
    Ok((phase, calls_per_request))
}

fn run(args: &Args) -> anyhow::Result<()> {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 600.0) {
        bail!("--seconds must be in (0, 600], got {}", args.seconds);
    }
    let budget = Duration::from_secs_f64(args.seconds);
    let raw = raw_calls(budget)?;
    let (req, calls_per_request) = requests(budget, &args.wasm)?;
    let ratio = req.per_second() / raw.per_second();
    // How close host-sim gets to the raw cost of its guest calls (1.0 = no overhead).
    let efficiency = raw.ns_per_op() * calls_per_request as f64 / req.ns_per_op();
    let name = args
        .wasm
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    let rows = [
        ("wasmtime raw call (no-op export)".to_string(), &raw),
        (format!("host-sim GET through {name}"), &req),
    ];
    let w = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    println!(
        "{:<w$} {:>12} {:>8} {:>14} {:>10}",
        "phase", "count", "seconds", "per second", "ns/op"
    );
    for (label, p) in rows {
        println!(
            "{label:<w$} {:>12} {:>8.2} {:>14.0} {:>10.1}",
            p.count,
            p.elapsed.as_secs_f64(),
            p.per_second(),
            p.ns_per_op()
        );
    }
    println!(
        "requests/s ÷ raw calls/s = {ratio:.5}; guest calls per request = {calls_per_request}; \
         raw cost of those calls / request cost = {efficiency:.3}; target {TARGET_REQUESTS_PER_S:.0} requests/s: {}",
        if req.per_second() >= TARGET_REQUESTS_PER_S { "met" } else { "NOT met" }
    );
    let summary = serde_json::json!({
        "module": name,
        "seconds_per_phase": args.seconds,
        "raw_calls_per_s": raw.per_second().round(),
        "requests_per_s": req.per_second().round(),
        "ratio_requests_to_raw_calls": ratio,
        "calls_per_request": calls_per_request,
        "raw_call_ns": raw.ns_per_op(),
        "request_ns": req.ns_per_op(),
        "efficiency": efficiency,
        "target_requests_per_s": TARGET_REQUESTS_PER_S,
        "meets_target": req.per_second() >= TARGET_REQUESTS_PER_S,
        "optimized": !cfg!(debug_assertions),
    });
    println!("{summary}");
    if cfg!(debug_assertions) {
        eprintln!("host-sim-bench: this is a debug build; numbers mean little (use --release or `make bench`)");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host-sim-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
