//! Part 2 of the demo: the ratelimit filter (`meshguard_ratelimit.wasm`) in Envoy 1.40 with two
//! workers. A burst against a token bucket shows 200s, then 429s, with their `RateLimit-*`
//! headers; a burst sent all at once against a leaky bucket with `action: delay` shows the
//! requests released one pacing interval apart (per-request latency) and the ones that would
//! wait longer than `max_delay` rejected.

use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::print_table;
use meshguard_tests::{
    send, wasm_artifact, Envoy, EnvoyConfig, Request, Response, TestUpstream, WasmFilter,
};

// --- what the filter is asked to do ------------------------------------------------------------

/// Build artifact name of the filter under `target/wasm32-wasip1/wasm/`.
const FILTER: &str = "meshguard_ratelimit";

/// Envoy worker threads: the limits hold across both.
const WORKERS: u32 = 2;

/// Two rules: `burst` (token bucket of 5 per 10 s, headers on every response) on `/api/`, and
/// `shaped` (leaky bucket of 5 per second, i.e. one every 200 ms, holding requests up to 1 s)
/// on `/shaped/`.
const FILTER_CONFIG: &str = r#"{"rules": [
  {"name": "burst", "match": {"path": {"prefix": "/api/"}},
   "limits": [{"algorithm": "token_bucket", "requests": 5, "per": "10s"}],
   "ratelimit_headers": "always",
   "response": {"body": "slow down\n", "headers": {"x-ratelimit-rule": "burst"}}},
  {"name": "shaped", "match": {"path": {"prefix": "/shaped/"}},
   "limits": [{"algorithm": "leaky_bucket", "requests": 5, "per": "1s"}],
   "action": "delay", "max_delay": "1s"}
]}"#;

/// Requests in the token-bucket burst, sent one after the other; the first `BURST_ADMITTED`
/// pass.
const BURST: usize = 8;
const BURST_ADMITTED: usize = 5;

/// Requests in the shaped burst, sent at once; `SHAPED_ADMITTED` fit within `max_delay`
/// (delays 0, 200, …, 1000 ms).
const SHAPED: usize = 8;
const SHAPED_ADMITTED: usize = 6;

/// The leaky bucket's pacing interval (1 s / 5).
const PACE: Duration = Duration::from_millis(200);

/// How much closer than `PACE` two released requests may reach the upstream before the demo
/// calls it a failure: a release can be late (timers, a busy machine), never early.
const PACE_TOLERANCE: Duration = Duration::from_millis(60);

/// Headers shown for the burst.
const BURST_HEADERS: [&str; 4] = [
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
];
// --- end of the filter-specific section --------------------------------------------------------

/// Runs part 2; fails if Envoy or the filter does something the configuration does not say.
pub fn run() -> Result<()> {
    let wasm = wasm_artifact(FILTER).context("the demo needs the ratelimit filter")?;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&arrivals);
    let upstream = TestUpstream::start_with(move |_| {
        lock(&record).push(Instant::now());
        Response::new(200).with_body("ok\n")
    })?;
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .concurrency(WORKERS)
            .wasm_filter(WasmFilter::new("ratelimit", &wasm).configuration(FILTER_CONFIG)),
    )?;

    println!();
    println!("meshguard demo, part 2: the ratelimit filter in Envoy");
    println!("  filter   : {}", wasm.display());
    println!(
        "  envoy    : http://{} (admin http://{}, {WORKERS} workers)",
        envoy.listener_addr(),
        envoy.admin_addr()
    );
    println!("  rules    : burst  /api/*     token_bucket 5 per 10s, RateLimit headers always");
    println!("             shaped /shaped/*  leaky_bucket 5 per 1s (one every 200 ms), delay ≤ 1s");

    // What did not go as configured; reported after everything was shown.
    let mut problems = Vec::new();
    burst(&envoy, &mut problems)?;
    shaped(&envoy, &arrivals, &mut problems)?;

    println!();
    println!("upstream received {} request(s)", upstream.request_count());
    // The filter hands its per-request counters to Envoy on each worker's 1 s tick.
    std::thread::sleep(Duration::from_millis(1_100));
    for (name, value) in envoy
        .stats()?
        .iter()
        .filter(|(n, _)| n.starts_with("wasmcustom.meshguard_ratelimit."))
    {
        println!("  envoy {name} = {value}");
    }
    drop(envoy);
    drop(upstream);
    println!();
    println!("stopped Envoy and the upstream");
    if !problems.is_empty() {
        bail!("the rate limiter misbehaved: {}", problems.join("; "));
    }
    println!("the rate limiter did what its configuration says");
    Ok(())
}

/// The token-bucket burst: one request after the other, a table row each.
fn burst(envoy: &Envoy, problems: &mut Vec<String>) -> Result<()> {
    println!();
    println!("burst: {BURST} requests one after the other to /api/orders");
    let mut rows = Vec::new();
    let mut statuses = Vec::new();
    for i in 1..=BURST {
        let response = send(envoy.listener_addr(), &Request::get("/api/orders"))
            .with_context(|| format!("burst request {i}"))?;
        statuses.push(response.status);
        let mut row = vec![i.to_string(), response.status.to_string()];
        row.extend(
            BURST_HEADERS
                .iter()
                .map(|h| response.header(h).unwrap_or("-").to_string()),
        );
        row.push(response.body_str().trim().to_string());
        rows.push(row);
    }
    let mut header = vec!["#", "status"];
    header.extend(BURST_HEADERS);
    header.push("body");
    print_table(&header, &rows);
    let mut expected = vec![200; BURST_ADMITTED];
    expected.resize(BURST, 429);
    if statuses != expected {
        problems.push(format!(
            "burst: statuses {statuses:?}, expected {expected:?}"
        ));
    }
    Ok(())
}

/// The shaped burst: all requests at once, rows in order of latency; the k-th admitted row
/// shows when the k-th request reached the upstream.
fn shaped(envoy: &Envoy, arrivals: &Mutex<Vec<Instant>>, problems: &mut Vec<String>) -> Result<()> {
    println!();
    println!("shaped: {SHAPED} requests sent at once to /shaped/report");
    lock(arrivals).clear();
    let addr = envoy.listener_addr();
    let barrier = Barrier::new(SHAPED);
    let sent = Instant::now();
    let mut results: Vec<(Response, Duration)> = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..SHAPED)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    send(addr, &Request::get("/shaped/report"))
                        .map(|response| (response, start.elapsed()))
                })
            })
            .collect();
        senders
            .into_iter()
            .map(|s| s.join().map_err(|_| anyhow!("a sender thread panicked"))?)
            .collect::<Result<_>>()
    })?;
    results.sort_by_key(|(_, latency)| *latency);
    let mut arrived: Vec<Duration> = lock(arrivals)
        .iter()
        .map(|a| a.duration_since(sent))
        .collect();
    arrived.sort();

    let mut rows = Vec::new();
    let mut admitted = 0;
    for (i, (response, latency)) in results.iter().enumerate() {
        let upstream = if response.status == 200 {
            admitted += 1;
            arrived
                .get(admitted - 1)
                .map_or("-".to_string(), |a| format!("{} ms", a.as_millis()))
        } else {
            "-".to_string()
        };
        rows.push(vec![
            (i + 1).to_string(),
            response.status.to_string(),
            format!("{} ms", latency.as_millis()),
            upstream,
            response.header("retry-after").unwrap_or("-").to_string(),
        ]);
    }
    print_table(
        &[
            "#",
            "status",
            "latency",
            "reached upstream at",
            "retry-after",
        ],
        &rows,
    );
    let gaps: Vec<u128> = arrived
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    println!(
        "  gaps between releases: {gaps:?} ms (paced at {} ms)",
        PACE.as_millis()
    );

    let rejected = results.iter().filter(|(r, _)| r.status == 429).count();
    if admitted != SHAPED_ADMITTED || rejected != SHAPED - SHAPED_ADMITTED {
        problems.push(format!(
            "shaped: {admitted} admitted and {rejected} rejected, expected {SHAPED_ADMITTED} and {}",
            SHAPED - SHAPED_ADMITTED
        ));
    }
    if arrived.len() != admitted {
        problems.push(format!(
            "shaped: the upstream saw {} requests for {admitted} admitted",
            arrived.len()
        ));
    }
    if arrived
        .windows(2)
        .any(|w| w[1] - w[0] + PACE_TOLERANCE < PACE)
    {
        problems.push(format!(
            "shaped: releases closer than {} ms: gaps {gaps:?} ms",
            PACE.as_millis()
        ));
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
