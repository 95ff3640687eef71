//! Envoy benchmarks with wrk: every variant runs in this one process, against the same fast
//! upstream, and is reported as a ratio to the baselines measured in the same run (Envoy with no
//! filter; Envoy's native equivalent where one exists). Machines here are noisy: read ratios.
//!
//! Fairness: every variant renders the same listener and route (`harness` template; the
//! outlier-detection baseline differs only in its cluster's `outlier_detection`), runs with the
//! same `--concurrency` (the upstream too), and gets the same warm-up before measuring (V8
//! compiles the hot wasm functions with its optimizing tier in the background during the first
//! requests). Rejections differ in their headers: the meshguard limiter adds `Retry-After` and
//! `RateLimit-*` by default, Envoy's `local_ratelimit` none; the variant "no quota headers"
//! measures the limiter answering like the native one.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshguard_tests::{wasm_artifact, Envoy, EnvoyConfig, WasmFilter};

mod router;
mod tenant;

#[derive(Parser, Debug)]
#[command(about = "Benchmark Envoy variants with wrk and report ratios to baselines")]
struct Args {
    /// Seconds of measurement per variant (after the warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Seconds of warm-up per variant before measuring (V8 tier-up of the wasm code).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Envoy worker threads (`--concurrency`) of every measured Envoy and of the upstream.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Measure only the variants whose name contains one of these (repeatable); their
    /// baselines and "envoy, no filter" always run.
    #[arg(long)]
    only: Vec<String>,
    /// Rounds over all variants, each in a rotated order so no variant always runs last on a
    /// machine whose load drifts; the best round of each variant is reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

/// One Envoy setup to measure.
struct Variant {
    name: &'static str,
    /// Name of the variant this one is compared with besides "no filter", if any.
    compare_with: Option<&'static str>,
    config: EnvoyConfig,
}

/// What wrk measured for one variant.
#[derive(Debug, Clone)]
struct Measured {
    name: &'static str,
    compare_with: Option<&'static str>,
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
    requests: u64,
    /// Envoy's CPU time (all threads) per request, microseconds: unlike req/s, barely moved
    /// by other load on the machine.
    cpu_us: f64,
}

/// Envoy's native token bucket, the baseline for rate limiting; `tokens` per second.
fn local_ratelimit(tokens: u32) -> String {
    format!(
        r#"- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: bench_local_ratelimit
    token_bucket: {{ max_tokens: {tokens}, tokens_per_fill: {tokens}, fill_interval: 1s }}
    filter_enabled:
      runtime_key: bench_enabled
      default_value: {{ numerator: 100, denominator: HUNDRED }}
    filter_enforced:
      runtime_key: bench_enforced
      default_value: {{ numerator: 100, denominator: HUNDRED }}"#
    )
}

/// The module as the linker wrote it, before `make wasm`'s trim step removed the exports of the
/// stream callbacks it does not implement: cargo keeps that copy in `deps/` (the trimmed one
/// replaced only the uplifted file). Measures what trimming saves, in the same run.
fn untrimmed(module: &std::path::Path) -> Result<std::path::PathBuf> {
    let name = module.file_name().context("module path has no file name")?;
    let deps = module
        .parent()
        .context("module path has no directory")?
        .join("deps")
        .join(name);
    if !deps.is_file() {
        bail!("{} is missing: run `make wasm`", deps.display());
    }
    Ok(deps)
}

fn variants(upstream_port: u16, args: &Args, backends: &router::Backends) -> Result<Vec<Variant>> {
    let all = all_variants(upstream_port, args.concurrency, backends)?;
    if args.only.is_empty() {
        return Ok(all);
    }
    let wanted =
        |v: &Variant| v.name == NO_FILTER || args.only.iter().any(|o| v.name.contains(o.as_str()));
    let baselines: Vec<&'static str> = all
        .iter()
        .filter(|v| wanted(v))
        .filter_map(|v| v.compare_with)
        .collect();
    Ok(all
        .into_iter()
        .filter(|v| wanted(v) || baselines.contains(&v.name))
        .collect())
}

const NOOP: &str = "wasm noop (proxy-wasm floor: context create + delete)";
const NOOP_UNTRIMMED: &str = "wasm noop, every SDK callback exported (untrimmed)";
/// Host calls per request in the host-call cost variants.
const HOST_CALL_TIMES: u32 = 4;
const HOST_CALL_NONE: &str = "host call: none (request headers entered)";
/// `fixture_hostcall`'s call names and their variants.
const HOST_CALLS: &[(&str, &str)] = &[
    ("none", HOST_CALL_NONE),
    ("clock", "host call: clock ×4"),
    ("header", "host call: header value ×4"),
    ("header_map_pairs", "host call: header map pairs ×4"),
    ("property", "host call: property source.address ×4"),
    ("shared_data", "host call: shared data (64 B) ×4"),
    ("set_header", "host call: replace request header ×4"),
    ("metric", "host call: increment metric ×4"),
];

/// Envoy CPU per host call and per callback entry, from the variants of this run: a call is
/// (its ×4 variant − the variant without calls) / 4; an entry is (the untrimmed no-op, which
/// Envoy enters 8 times per request, − the trimmed one, entered twice) / 6.
fn host_call_costs(results: &[Measured]) -> Vec<(String, f64)> {
    let cpu = |name: &str| results.iter().find(|r| r.name == name).map(|r| r.cpu_us);
    let mut out = Vec::new();
    if let (Some(all), Some(none)) = (cpu(NOOP_UNTRIMMED), cpu(NOOP)) {
        out.push((
            "callback entry (no host call)".to_string(),
            (all - none) / 6.0,
        ));
    }
    if let Some(none) = cpu(HOST_CALL_NONE) {
        for (_, name) in HOST_CALLS.iter().skip(1) {
            if let Some(c) = cpu(name) {
                let label = name
                    .trim_start_matches("host call: ")
                    .trim_end_matches(" ×4");
                out.push((label.to_string(), (c - none) / f64::from(HOST_CALL_TIMES)));
            }
        }
    }
    out
}

/// The first variant: every ratio's "none" baseline.
const NO_FILTER: &str = "envoy, no filter";

fn all_variants(
    upstream_port: u16,
    concurrency: u32,
    backends: &router::Backends,
) -> Result<Vec<Variant>> {
    let base = || {
        EnvoyConfig::new("harness")
            .upstream(upstream_port)
            .concurrency(concurrency)
    };
    // The floor: a Wasm filter that makes no host call and exports no stream callback (Envoy
    // only creates and deletes its context); then one with every SDK callback exported that
    // makes two host calls.
    let noop = wasm_artifact("fixture_noop")?;
    let minimal = wasm_artifact("fixture_minimal")?;
    let mut out = vec![
        Variant {
            name: NO_FILTER,
            compare_with: None,
            config: base(),
        },
        Variant {
            name: "native local_ratelimit, limit not reached",
            compare_with: None,
            config: base().http_filter_yaml(local_ratelimit(100_000_000)),
        },
        Variant {
            name: "native local_ratelimit, limit reached",
            compare_with: None,
            config: base().http_filter_yaml(local_ratelimit(100)),
        },
        Variant {
            name: "native outlier_detection (5 consecutive 5xx)",
            compare_with: None,
            config: EnvoyConfig::new("harness-outlier")
                .upstream(upstream_port)
                .concurrency(concurrency),
        },
        Variant {
            name: NOOP,
            compare_with: None,
            config: base().wasm_filter(WasmFilter::new("noop", &noop)),
        },
        Variant {
            name: NOOP_UNTRIMMED,
            compare_with: Some(NOOP),
            config: base().wasm_filter(WasmFilter::new("noop", untrimmed(&noop)?)),
        },
        Variant {
            name: "wasm fixture_minimal (every SDK callback, 2 host calls)",
            compare_with: Some(NOOP),
            config: base().wasm_filter(WasmFilter::new("minimal", minimal)),
        },
    ];
    if let Ok(fallback) = wasm_artifact("meshguard_fallback") {
        // The success path: a closed breaker counting outcomes, as outlier detection does.
        let config = r#"{"breakers":[{"name":"bench","trip":{"consecutive_failures":5},"open":{"duration":"5s"},"fallback":{"fail_fast":{}}}]}"#;
        out.push(Variant {
            name: "meshguard fallback, breaker closed",
            compare_with: Some("native outlier_detection (5 consecutive 5xx)"),
            config: base()
                .wasm_filter(WasmFilter::new("fallback", &fallback).configuration(config)),
        });
    }
    if let Ok(ratelimit) = wasm_artifact("meshguard_ratelimit") {
        let config = |requests: u64, extra: &str| {
            format!(
                r#"{{"rules":[{{"name":"bench","limits":[{{"algorithm":"token_bucket","requests":{requests},"per":"1s"}}]{extra}}}]}}"#
            )
        };
        out.push(Variant {
            name: "meshguard ratelimit, limit not reached",
            compare_with: Some("native local_ratelimit, limit not reached"),
            config: base().wasm_filter(
                WasmFilter::new("ratelimit", &ratelimit).configuration(config(100_000_000, "")),
            ),
        });
        out.push(Variant {
            name: "meshguard ratelimit, limit not reached, untrimmed",
            compare_with: Some("native local_ratelimit, limit not reached"),
            config: base().wasm_filter(
                WasmFilter::new("ratelimit", untrimmed(&ratelimit)?)
                    .configuration(config(100_000_000, "")),
            ),
        });
        out.push(Variant {
            name: "meshguard ratelimit, limit reached",
            compare_with: Some("native local_ratelimit, limit reached"),
            config: base().wasm_filter(
                WasmFilter::new("ratelimit", &ratelimit).configuration(config(100, "")),
            ),
        });
        out.push(Variant {
            name: "meshguard ratelimit, limit reached, no quota headers",
            compare_with: Some("native local_ratelimit, limit reached"),
            config: base().wasm_filter(
                WasmFilter::new("ratelimit", &ratelimit)
                    .configuration(config(100, r#","ratelimit_headers":"never""#)),
            ),
        });
    }
    // What each kind of host call costs in Envoy's V8: the same request with four calls of
    // one kind, against none (see `host_call_costs`).
    let hostcall = wasm_artifact("fixture_hostcall")?;
    for (call, name) in HOST_CALLS {
        out.push(Variant {
            name,
            compare_with: (*call != "none").then_some(HOST_CALL_NONE),
            config: base().wasm_filter(WasmFilter::new("hostcall", &hostcall).configuration(
                format!(
                    "{call} {}",
                    if *call == "none" { 0 } else { HOST_CALL_TIMES }
                ),
            )),
        });
    }
    for (name, compare_with, config) in tenant::variants(base)?
        .into_iter()
        .chain(backends.variants(concurrency)?)
    {
        out.push(Variant {
            name,
            compare_with,
            config,
        });
    }
    Ok(out)
}

/// Parses wrk's latency values ("812.00us", "1.20ms", "2.00s") into microseconds.
fn micros(text: &str) -> Option<f64> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))?;
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value,
        "ms" => value * 1_000.0,
        "s" => value * 1_000_000.0,
        _ => return None,
    })
}

fn parse_wrk(
    name: &'static str,
    compare_with: Option<&'static str>,
    out: &str,
) -> Result<Measured> {
    let mut m = Measured {
        name,
        compare_with,
        requests_per_s: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
        non_2xx: 0,
        requests: 0,
        cpu_us: 0.0,
    };
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => m.requests_per_s = v.parse()?,
            ["50%", v] => m.p50_us = micros(v).context("wrk p50")?,
            ["99%", v] => m.p99_us = micros(v).context("wrk p99")?,
            ["Non-2xx", "or", "3xx", "responses:", v] => m.non_2xx = v.parse()?,
            [n, "requests", "in", ..] => m.requests = n.parse()?,
            _ => {}
        }
    }
    if m.requests_per_s <= 0.0 {
        bail!("could not read wrk's output for {name}:\n{out}");
    }
    Ok(m)
}

fn wrk(url: &str, seconds: u32, connections: u32, latency: bool) -> Result<String> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")]);
    if latency {
        cmd.arg("--latency");
    }
    let out = cmd
        .arg(url)
        .output()
        .context("run wrk (`make bench` installs it)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn measure(variant: Variant, args: &Args) -> Result<Measured> {
    let envoy = Envoy::start(variant.config.startup_timeout(Duration::from_secs(60)))
        .with_context(|| format!("start Envoy for {}", variant.name))?;
    let url = format!("http://{}/", envoy.listener_addr());
    wrk(&url, args.warmup, args.connections, false)?;
    let before = cpu_ns(envoy.pid());
    let out = wrk(&url, args.seconds, args.connections, true)?;
    let after = cpu_ns(envoy.pid());
    let mut m = parse_wrk(variant.name, variant.compare_with, &out)?;
    if let (Some(before), Some(after)) = (before, after) {
        if m.requests > 0 {
            m.cpu_us = after.saturating_sub(before) as f64 / 1_000.0 / m.requests as f64;
        }
    }
    Ok(m)
}

/// CPU time of every thread of process `pid` so far, nanoseconds (the first field of each
/// `/proc/<pid>/task/<tid>/schedstat`); `None` where `/proc` does not tell.
fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(1..=120).contains(&args.seconds)
        || !(1..=60).contains(&args.warmup)
        || !(1..=1024).contains(&args.connections)
        || !(1..=10).contains(&args.rounds)
        || !(1..=64).contains(&args.concurrency)
    {
        bail!(
            "--seconds must be 1..=120, --warmup 1..=60, --connections 1..=1024, \
             --rounds 1..=10 and --concurrency 1..=64"
        );
    }
    // The upstream is an Envoy answering by itself, so it is never the bottleneck.
    let upstream = Envoy::start(EnvoyConfig::new("direct").concurrency(args.concurrency))?;
    let port = upstream.listener_addr().port();
    // The router variants route to their own three instances behind a stand-in Consul.
    let backends = router::Backends::start(args.concurrency)?;
    eprintln!(
        "envoy --concurrency {}, wrk -t1 -c{}, {} s warm-up + {} s per variant, {} rounds",
        args.concurrency, args.connections, args.warmup, args.seconds, args.rounds
    );
    let count = variants(port, &args, &backends)?.len();
    let mut best: Vec<Option<Measured>> = vec![None; count];
    for round in 0..args.rounds as usize {
        for offset in 0..count {
            let index = (offset + round) % count;
            let Some(variant) = variants(port, &args, &backends)?.into_iter().nth(index) else {
                continue;
            };
            eprintln!("round {}: {}", round + 1, variant.name);
            let m = measure(variant, &args)?;
            let slot = &mut best[index];
            if slot
                .as_ref()
                .is_none_or(|b| m.requests_per_s > b.requests_per_s)
            {
                *slot = Some(m);
            }
        }
    }
    let results: Vec<Measured> = best.into_iter().flatten().collect();
    let baseline = results
        .first()
        .map(|m| (m.requests_per_s, m.p99_us))
        .unwrap_or((0.0, 0.0));
    println!(
        "{:<54} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8}",
        "variant",
        "req/s",
        "p50 us",
        "p99 us",
        "non-2xx",
        "rps/none",
        "rps/nat",
        "p99/nat",
        "cpu us/rq",
        "cpu/nat"
    );
    let mut json = Vec::new();
    for m in &results {
        let native = m
            .compare_with
            .and_then(|n| results.iter().find(|r| r.name == n));
        let (rps_nat, p99_nat, cpu_nat) = match native {
            Some(n) => (
                ratio(m.requests_per_s, n.requests_per_s),
                ratio(m.p99_us, n.p99_us),
                ratio(m.cpu_us, n.cpu_us),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<54} {:>10.0} {:>9.0} {:>9.0} {:>9} {:>9} {:>8} {:>8} {:>9.2} {:>8}",
            m.name,
            m.requests_per_s,
            m.p50_us,
            m.p99_us,
            m.non_2xx,
            ratio(m.requests_per_s, baseline.0),
            rps_nat,
            p99_nat,
            m.cpu_us,
            cpu_nat
        );
        json.push(serde_json::json!({
            "variant": m.name,
            "requests_per_s": m.requests_per_s,
            "p50_us": m.p50_us,
            "p99_us": m.p99_us,
            "non_2xx": m.non_2xx,
            "requests": m.requests,
            "rps_vs_no_filter": m.requests_per_s / baseline.0,
            "compared_with": m.compare_with,
            "rps_vs_native": native.map(|n| m.requests_per_s / n.requests_per_s),
            "p99_vs_native": native.map(|n| m.p99_us / n.p99_us),
            "cpu_us_per_request": m.cpu_us,
            "cpu_vs_native": native.map(|n| m.cpu_us / n.cpu_us),
        }));
    }
    let costs = host_call_costs(&results);
    if !costs.is_empty() {
        println!("\nEnvoy CPU per host call and per callback entry (this run; noise ±0.2 us):");
        for (what, us) in &costs {
            println!("  {what:<40} {us:>6.2} us");
        }
    }
    println!("{}", serde_json::Value::Array(json));
    drop(upstream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_units() {
        assert_eq!(micros("812.00us"), Some(812.0));
        assert_eq!(micros("1.50ms"), Some(1500.0));
        assert_eq!(micros("2.00s"), Some(2_000_000.0));
        assert_eq!(micros("7.0xs"), None);
    }

    #[test]
    fn reads_a_wrk_report() {
        let out = "Running 5s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  620.00us\n     75%  700.00us\n     90%    0.90ms\n     99%    1.80ms\n  123456 requests in 5.00s, 15.00MB read\n  Non-2xx or 3xx responses: 17\nRequests/sec:  24690.12\nTransfer/sec:      3.00MB\n";
        let m = parse_wrk("x", None, out).unwrap();
        assert_eq!(m.requests, 123456);
        assert_eq!(m.non_2xx, 17);
        assert!((m.p99_us - 1800.0).abs() < 1e-9);
        assert!((m.requests_per_s - 24690.12).abs() < 1e-9);
        assert!(parse_wrk("x", None, "garbage").is_err());
    }
}
