//! The router part of the demo: the router filter (`meshguard_router.wasm`) in Envoy 1.40 in
//! front of three instances of service `orders`, registered in a fake Consul that the filter
//! watches with blocking queries. Traffic spreads round robin over the Consul list; one
//! instance is killed and failover keeps every client answer a 200; Consul goes down and
//! routing continues on the cached list; Consul comes back, the dead instance is deregistered
//! and traffic follows the new list. Fails if any step does not behave like that.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::print_table;
use meshguard_fake_consul::{FakeConsul, Instance};
use meshguard_tests::{send, wasm_artifact, Envoy, EnvoyConfig, Request, TestUpstream, WasmFilter};

/// Build artifact name of the filter under `target/wasm32-wasip1/wasm/`.
const FILTER: &str = "meshguard_router";

/// Service `orders`, round robin, failover with 2 retries on 5xx, resets and refused
/// connections; the watch ticks every 100 ms and blocks up to 2 s per query.
const FILTER_CONFIG: &str = r#"{
  "consul": {"cluster": "consul", "wait": "2s", "min_interval": "50ms", "tick": "100ms",
             "lease_ttl": "1s", "retry_base": "100ms", "retry_max": "500ms"},
  "services": [{"name": "orders", "match": {"path": {"prefix": "/orders"}},
                "balancer": "round_robin", "mode": "failover", "retries": 2}]
}"#;

/// Requests per step.
const REQUESTS: usize = 9;
/// Longest wait for the filter to notice a Consul change or outage.
const WAIT: Duration = Duration::from_secs(10);

/// `lb_endpoints` items for 127.0.0.1 at `ports`.
fn endpoints(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "- endpoint:\n    address:\n      socket_address: {{ address: 127.0.0.1, port_value: {p} }}"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends [`REQUESTS`] GETs; returns how many each instance answered and the non-200 count.
fn burst(envoy: &Envoy) -> Result<(BTreeMap<String, usize>, usize)> {
    let mut by_instance = BTreeMap::new();
    let mut errors = 0;
    for i in 0..REQUESTS {
        let r = send(envoy.listener_addr(), &Request::get(format!("/orders/{i}")))?;
        if r.status != 200 {
            errors += 1;
        }
        let who = r.header("x-upstream").unwrap_or("-").to_string();
        *by_instance.entry(who).or_insert(0) += 1;
    }
    Ok((by_instance, errors))
}

fn describe(by_instance: &BTreeMap<String, usize>) -> String {
    by_instance
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the router part; fails if routing does not survive as described.
pub fn run() -> Result<()> {
    let wasm = wasm_artifact(FILTER).context("the demo needs the router filter")?;
    let consul = FakeConsul::start()?;
    let mut instances: Vec<Option<TestUpstream>> = Vec::new();
    for i in 1..=3 {
        let upstream = TestUpstream::start_named(&format!("orders-{i}"))?;
        consul.register(Instance::new(
            &format!("orders-{i}"),
            "orders",
            "127.0.0.1",
            upstream.port(),
        ));
        instances.push(Some(upstream));
    }
    let ports: Vec<u16> = instances.iter().flatten().map(TestUpstream::port).collect();
    let envoy = Envoy::start(
        EnvoyConfig::new("router")
            .var("BACKEND_ENDPOINTS", endpoints(&ports))
            .cluster("consul", consul.port())
            .wasm_filter(WasmFilter::new("router", &wasm).configuration(FILTER_CONFIG)),
    )?;
    println!();
    println!(
        "part 5: the router filter in Envoy, routing over the instances it syncs from Consul ({})",
        consul.url()
    );
    let stat = |name: &str| format!("wasmcustom.meshguard_router.orders.{name}");
    envoy.wait_for_stat(&stat("sync_changes"), |v| v >= 1, WAIT)?;

    let mut rows = Vec::new();
    let mut surprises = Vec::new();
    let mut step = |label: &str, expect: &[&str], rows: &mut Vec<Vec<String>>| -> Result<()> {
        let retries_before = envoy.stat("cluster.backend.upstream_rq_retry").unwrap_or(0);
        let (by_instance, errors) = burst(&envoy)?;
        let retries = envoy.stat("cluster.backend.upstream_rq_retry").unwrap_or(0) - retries_before;
        let answered: Vec<&str> = by_instance.keys().map(String::as_str).collect();
        if errors > 0 || answered != expect {
            surprises.push(format!(
                "{label}: {errors} errors, answered by {answered:?}, expected {expect:?}"
            ));
        }
        rows.push(vec![
            label.to_string(),
            describe(&by_instance),
            errors.to_string(),
            retries.to_string(),
            envoy.stat(&stat("cache_age_ms")).unwrap_or(0).to_string(),
        ]);
        Ok(())
    };

    step(
        "3 instances in Consul",
        &["orders-1", "orders-2", "orders-3"],
        &mut rows,
    )?;
    drop(instances[1].take());
    step(
        "orders-2 killed (Consul still lists it)",
        &["orders-1", "orders-3"],
        &mut rows,
    )?;
    consul.stop_listening();
    envoy.wait_for_stat(&stat("sync_errors"), |v| v >= 2, WAIT)?;
    envoy.wait_for_stat(&stat("cache_age_ms"), |v| v >= 1000, WAIT)?;
    step(
        "Consul down: cached list",
        &["orders-1", "orders-3"],
        &mut rows,
    )?;
    consul.resume_listening()?;
    consul.deregister("orders-2");
    envoy.wait_for_stat(&stat("sync_changes"), |v| v >= 2, WAIT)?;
    step(
        "Consul back, orders-2 deregistered",
        &["orders-1", "orders-3"],
        &mut rows,
    )?;

    print_table(
        &[
            "step",
            "answered by",
            "client errors",
            "envoy retries",
            "cache age ms",
        ],
        &rows,
    );
    println!();
    for (name, value) in envoy
        .stats()?
        .iter()
        .filter(|(n, _)| n.starts_with("wasmcustom.meshguard_router."))
    {
        println!("  envoy {name} = {value}");
    }
    drop(envoy);
    drop(consul);
    if !surprises.is_empty() {
        bail!("the router surprised the demo: {}", surprises.join("; "));
    }
    println!();
    println!("routing followed Consul, failed over a dead instance and rode out a Consul outage");
    Ok(())
}
