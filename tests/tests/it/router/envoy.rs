//! The router filter in a real Envoy 1.40 (V8) in front of the fake Consul and three test
//! upstreams registered in it as service `orders`: traffic spreads as configured, a killed
//! upstream costs clients nothing under `failover`, routing survives a Consul outage on the
//! cached list, a deregistered instance stops getting traffic within one blocking round, and
//! `failback` resends after the upstream recovers.
//!
//! Envoy runs on the wall clock: the filter gets a 100 ms tick and short blocking waits, every
//! wait is bounded by [`WAIT`] and every loop by a request count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meshguard_fake_consul::{FakeConsul, Instance};
use meshguard_tests::{
    send, wasm_artifact, Envoy, EnvoyConfig, Request, Response, TestUpstream, WasmFilter,
};

/// Longest wait for a stat that should come soon.
const WAIT: Duration = Duration::from_secs(10);

/// The filter configuration for service `orders` with `extra` service fields.
pub fn router_config(extra: &str) -> String {
    format!(
        r#"{{"consul":{{"cluster":"consul","wait":"2s","min_interval":"50ms","tick":"100ms",
                        "lease_ttl":"1s","retry_base":"100ms","retry_max":"500ms"}},
            "services":[{{"name":"orders"{extra}}}]}}"#
    )
}

/// `lb_endpoints` items for 127.0.0.1 at `ports` (the `{{BACKEND_ENDPOINTS}}` fragment).
pub fn endpoints(ports: &[u16]) -> String {
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

/// Envoy on `envoy-configs/router.yaml.tmpl` with the router filter, the `backend` cluster
/// over `ports` and the `consul` cluster pointing at `consul`.
pub fn start_envoy(consul_port: u16, ports: &[u16], filter_config: &str) -> Result<Envoy> {
    Envoy::start(
        EnvoyConfig::new("router")
            .var("BACKEND_ENDPOINTS", endpoints(ports))
            .cluster("consul", consul_port)
            .arg("--component-log-level")
            .arg("wasm:debug")
            .wasm_filter(
                WasmFilter::new("router", wasm_artifact("meshguard_router")?)
                    .configuration(filter_config),
            ),
    )
}

struct Setup {
    consul: FakeConsul,
    upstreams: Vec<Option<TestUpstream>>,
    envoy: Envoy,
}

/// Fake Consul with `orders-1..3` on three steered upstreams `u1..u3`, and Envoy synced.
fn setup(extra: &str) -> Result<Setup> {
    let consul = FakeConsul::start()?;
    let upstreams: Vec<TestUpstream> = (1..=3)
        .map(|i| TestUpstream::start_named(&format!("u{i}")))
        .collect::<Result<_>>()?;
    for (i, u) in upstreams.iter().enumerate() {
        consul.register(Instance::new(
            &format!("orders-{}", i + 1),
            "orders",
            "127.0.0.1",
            u.port(),
        ));
    }
    let ports: Vec<u16> = upstreams.iter().map(TestUpstream::port).collect();
    let envoy = start_envoy(consul.port(), &ports, &router_config(extra))?;
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_changes",
        |v| v >= 1,
        WAIT,
    )?;
    Ok(Setup {
        consul,
        upstreams: upstreams.into_iter().map(Some).collect(),
        envoy,
    })
}

/// Waits until the worker has taken its `n`th instance list: requests read the shared list
/// only until the worker holds one, then the worker takes changes at its next tick (100 ms).
fn adopted(envoy: &Envoy, n: i64) -> Result<()> {
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.lists_adopted",
        |v| v >= n,
        WAIT,
    )?;
    Ok(())
}

/// Sends `n` GETs and counts the answering upstream (`x-upstream`) per status.
fn spread(envoy: &Envoy, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = send(envoy.listener_addr(), &Request::get("/orders"))?;
        let who = format!("{} {}", r.status, r.header("x-upstream").unwrap_or("-"));
        *out.entry(who).or_default() += 1;
    }
    Ok(out)
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

#[test]
fn round_robin_spreads_traffic_evenly_over_the_consul_instances() -> Result<()> {
    let s = setup("")?;
    assert_eq!(
        spread(&s.envoy, 30)?,
        counts(&[("200 u1", 10), ("200 u2", 10), ("200 u3", 10)])
    );
    // The watch then blocks on the index of the first answer.
    let blocking = format!(
        "/v1/health/service/orders?passing=1&index={}&wait=2000ms",
        s.consul.index()
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let paths: Vec<String> = s
            .consul
            .requests()
            .iter()
            .map(|r| r.raw_target.clone())
            .collect();
        if paths.contains(&blocking) {
            ensure!(
                paths[0] == "/v1/health/service/orders?passing=1",
                "{paths:?}"
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no blocking query {blocking}: {paths:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_instance_costs_clients_nothing_under_failover() -> Result<()> {
    let mut s = setup(r#","retries":2"#)?;
    drop(s.upstreams[1].take());
    let seen = spread(&s.envoy, 30)?;
    ensure!(
        seen.keys().all(|k| k.starts_with("200 ")) && !seen.contains_key("200 u2"),
        "every request answered by a live instance: {seen:?}"
    );
    ensure!(
        s.envoy
            .stat("cluster.backend.upstream_rq_retry")
            .unwrap_or(0)
            >= 1,
        "Envoy retried"
    );
    Ok(())
}

#[test]
fn failfast_hands_the_error_of_a_killed_instance_to_the_client() -> Result<()> {
    let mut s = setup(r#","mode":"failfast""#)?;
    drop(s.upstreams[0].take());
    let seen = spread(&s.envoy, 9)?;
    ensure!(
        seen.get("503 -") == Some(&3),
        "one in three fails fast: {seen:?}"
    );
    Ok(())
}

#[test]
fn routing_continues_on_the_cached_list_while_consul_is_down() -> Result<()> {
    let s = setup("")?;
    s.consul.stop_listening();
    s.envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_errors",
        |v| v >= 2,
        WAIT,
    )?;
    assert_eq!(
        spread(&s.envoy, 30)?,
        counts(&[("200 u1", 10), ("200 u2", 10), ("200 u3", 10)])
    );
    // The cache's age grows during the outage; it recovers by itself afterwards.
    let age = s.envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.cache_age_ms",
        |v| v >= 1000,
        WAIT,
    )?;
    ensure!(age >= 1000);
    s.consul.resume_listening()?;
    s.consul.deregister("orders-3");
    s.envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_changes",
        |v| v >= 2,
        WAIT,
    )?;
    adopted(&s.envoy, 2)?;
    assert_eq!(
        spread(&s.envoy, 10)?,
        counts(&[("200 u1", 5), ("200 u2", 5)])
    );
    Ok(())
}

#[test]
fn a_deregistered_instance_gets_no_traffic_after_one_blocking_round() -> Result<()> {
    let s = setup("")?;
    spread(&s.envoy, 3)?;
    let started = Instant::now();
    ensure!(s.consul.deregister("orders-2"));
    s.envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_changes",
        |v| v >= 2,
        WAIT,
    )?;
    // The blocking query returned on the change: well within one `wait` (2 s).
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    adopted(&s.envoy, 2)?;
    assert_eq!(
        spread(&s.envoy, 20)?,
        counts(&[("200 u1", 10), ("200 u3", 10)])
    );
    Ok(())
}

#[test]
fn failback_answers_at_once_and_resends_after_the_upstream_recovers() -> Result<()> {
    let consul = FakeConsul::start()?;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let upstream = TestUpstream::start_with(move |_| {
        if flag.load(Ordering::SeqCst) {
            Response::new(200).with_header("x-upstream", "recovered")
        } else {
            Response::new(503)
        }
    })?;
    consul.register(Instance::new(
        "orders-1",
        "orders",
        "127.0.0.1",
        upstream.port(),
    ));
    let config = router_config(
        r#","mode":"failback","fallback_response":{"status":202,"body":"queued"},
           "failback":{"cluster":"backend","retry_base":"200ms","retry_max":"400ms","max_attempts":50}"#,
    );
    let envoy = start_envoy(consul.port(), &[upstream.port()], &config)?;
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_changes",
        |v| v >= 1,
        WAIT,
    )?;
    let r = send(
        envoy.listener_addr(),
        &Request::new("PUT", "/orders/7")
            .header("x-order", "7")
            .body("qty=1"),
    )?;
    ensure!(
        r.status == 202 && r.body_str() == "queued",
        "fast answer: {} {}",
        r.status,
        r.body_str()
    );
    ensure!(r.header("x-meshguard-router") == Some("failback"));
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.failback_queued",
        |v| v == 1,
        WAIT,
    )?;
    // Still failing: resends keep coming back with 503 and are kept.
    let deadline = Instant::now() + WAIT;
    while upstream.request_count() < 3 {
        if Instant::now() > deadline {
            bail!("no resends: {} requests", upstream.request_count());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    healthy.store(true, Ordering::SeqCst);
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.failback_delivered",
        |v| v == 1,
        WAIT,
    )?;
    let last = upstream.requests().last().cloned().context("a resend")?;
    ensure!(last.method == "PUT" && last.path == "/orders/7", "{last:?}");
    ensure!(
        last.header("x-order") == Some("7") && last.body_str() == "qty=1",
        "{last:?}"
    );
    Ok(())
}

#[test]
fn a_bad_config_is_refused_at_start_naming_the_field() -> Result<()> {
    let consul = FakeConsul::start()?;
    let upstream = TestUpstream::start()?;
    let Err(e) = start_envoy(
        consul.port(),
        &[upstream.port()],
        &router_config(r#","retries":99"#),
    ) else {
        bail!("Envoy accepted a bad config");
    };
    let message = format!("{e:#}");
    ensure!(
        message.contains("services[0].retries: must be at most 10"),
        "{message}"
    );
    Ok(())
}

#[test]
fn outlier_ejection_learns_from_envoys_retries_and_stops_them() -> Result<()> {
    let mut s = setup(
        r#","outlier":{"consecutive_failures":1,"base_ejection":"30s","max_ejection_percent":50}"#,
    )?;
    drop(s.upstreams[2].take());
    // The first request picked for u3 fails over; the filter reads which host answered
    // (`upstream.address`) and counts the refused try against u3, which ejects it.
    let seen = spread(&s.envoy, 6)?;
    ensure!(seen.keys().all(|k| k.starts_with("200 ")), "{seen:?}");
    s.envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.ejections",
        |v| v == 1,
        WAIT,
    )?;
    let retries = s
        .envoy
        .stat("cluster.backend.upstream_rq_retry")
        .unwrap_or(0);
    assert_eq!(
        spread(&s.envoy, 20)?,
        counts(&[("200 u1", 10), ("200 u2", 10)]),
        "u3 is out of rotation"
    );
    assert_eq!(
        s.envoy
            .stat("cluster.backend.upstream_rq_retry")
            .unwrap_or(0),
        retries,
        "no more retries needed"
    );
    Ok(())
}

#[test]
fn a_bootstrap_singleton_can_do_the_polling_for_the_http_filters() -> Result<()> {
    let consul = FakeConsul::start()?;
    let upstreams: Vec<TestUpstream> = (1..=2)
        .map(|i| TestUpstream::start_named(&format!("u{i}")))
        .collect::<Result<_>>()?;
    for (i, u) in upstreams.iter().enumerate() {
        consul.register(Instance::new(
            &format!("orders-{}", i + 1),
            "orders",
            "127.0.0.1",
            u.port(),
        ));
    }
    let ports: Vec<u16> = upstreams.iter().map(TestUpstream::port).collect();
    let wasm = wasm_artifact("meshguard_router")?;
    // The filters' own watch would not ask for `passing`: every query Consul sees must be the
    // singleton's.
    let filter_config = router_config("").replace(
        r#""cluster":"consul","#,
        r#""cluster":"consul","sync":false,"passing_only":false,"#,
    );
    let envoy = Envoy::start(
        EnvoyConfig::new("router-singleton")
            .var(
                "SYNC_CONFIG",
                serde_json::Value::from(router_config("")).to_string(),
            )
            .var("SYNC_VM_ID", "router")
            .var(
                "SYNC_WASM",
                serde_json::Value::from(wasm.to_string_lossy()).to_string(),
            )
            .var("BACKEND_ENDPOINTS", endpoints(&ports))
            .cluster("consul", consul.port())
            .wasm_filter(
                WasmFilter::new("router", &wasm)
                    .vm_id("router")
                    .configuration(filter_config),
            ),
    )?;
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_changes",
        |v| v >= 1,
        WAIT,
    )?;
    assert_eq!(spread(&envoy, 10)?, counts(&[("200 u1", 5), ("200 u2", 5)]));
    let targets: Vec<String> = consul
        .requests()
        .iter()
        .map(|r| r.raw_target.clone())
        .collect();
    ensure!(
        targets
            .iter()
            .all(|t| t.starts_with("/v1/health/service/orders?passing=1")),
        "only the singleton polls: {targets:?}"
    );
    Ok(())
}

/// Sends `n` requests until every one is answered as `expected` (`"200 u3"`), at most
/// [`WAIT`]: a worker takes a new list at its next tick (100 ms) after the sync published it.
fn settles_on(envoy: &Envoy, expected: &[&str], n: usize) -> Result<BTreeMap<String, usize>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = spread(envoy, n)?;
        if seen.keys().all(|k| expected.contains(&k.as_str())) {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!("traffic never settled on {expected:?}: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the sync to publish a change after `before` changes; returns how long it took.
fn next_change(envoy: &Envoy, before: i64) -> Result<Duration> {
    let started = Instant::now();
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_changes",
        |v| v > before,
        WAIT,
    )?;
    Ok(started.elapsed())
}

#[test]
fn traffic_fails_over_to_the_next_datacenter_and_back_with_consul_health() -> Result<()> {
    let consul = FakeConsul::start_with(meshguard_fake_consul::Options {
        datacenters: vec!["dc2".into()],
        ..Default::default()
    })?;
    let upstreams: Vec<TestUpstream> = (1..=3)
        .map(|i| TestUpstream::start_named(&format!("u{i}")))
        .collect::<Result<_>>()?;
    for (i, u) in upstreams.iter().enumerate() {
        let dc = if i < 2 { "dc1" } else { "dc2" };
        consul.register(
            Instance::new(
                &format!("orders-{}", i + 1),
                "orders",
                "127.0.0.1",
                u.port(),
            )
            .datacenter(dc),
        );
    }
    let ports: Vec<u16> = upstreams.iter().map(TestUpstream::port).collect();
    let config = router_config("").replace(
        r#""cluster":"consul","#,
        r#""cluster":"consul","datacenters":["dc1","dc2"],"#,
    );
    let envoy = start_envoy(consul.port(), &ports, &config)?;
    // Both datacenters answered (dc2's list merged behind dc1's).
    let both = |v: i64| v >= 1;
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_changes",
        both,
        WAIT,
    )?;
    let local = settles_on(&envoy, &["200 u1", "200 u2"], 10)?;
    assert_eq!(local, counts(&[("200 u1", 5), ("200 u2", 5)]), "dc1 only");
    let targets: Vec<String> = consul.requests().iter().map(|r| r.path.clone()).collect();
    ensure!(
        consul
            .requests()
            .iter()
            .any(|r| r.query_param("dc") == Some("dc2")),
        "dc2 watched: {targets:?}"
    );

    // dc1 has no healthy instance: dc2 takes the traffic after one blocking round.
    let before = envoy
        .stat("wasmcustom.meshguard_router.orders.sync_changes")
        .unwrap_or(0);
    consul.set_health("orders-1", meshguard_fake_consul::Health::Critical);
    consul.set_health("orders-2", meshguard_fake_consul::Health::Critical);
    let took = next_change(&envoy, before)?;
    ensure!(
        took < Duration::from_secs(2),
        "within one wait (2 s): {took:?}"
    );
    settles_on(&envoy, &["200 u3"], 10)?;

    // dc1 recovers: traffic comes back.
    let before = envoy
        .stat("wasmcustom.meshguard_router.orders.sync_changes")
        .unwrap_or(0);
    consul.set_health("orders-1", meshguard_fake_consul::Health::Passing);
    consul.set_health("orders-2", meshguard_fake_consul::Health::Passing);
    next_change(&envoy, before)?;
    // The two health changes may reach the filter in one blocking round or in two: wait for
    // the round robin over both instances, not just for the first change.
    let wanted = counts(&[("200 u1", 5), ("200 u2", 5)]);
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = settles_on(&envoy, &["200 u1", "200 u2"], 10)?;
        if seen == wanted {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "never back to both dc1 instances: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Deregistered from dc1: dc2 again, and back on registration.
    let before = envoy
        .stat("wasmcustom.meshguard_router.orders.sync_changes")
        .unwrap_or(0);
    ensure!(consul.deregister("orders-1") && consul.deregister("orders-2"));
    let took = next_change(&envoy, before)?;
    ensure!(
        took < Duration::from_secs(2),
        "within one wait (2 s): {took:?}"
    );
    settles_on(&envoy, &["200 u3"], 10)?;
    let before = envoy
        .stat("wasmcustom.meshguard_router.orders.sync_changes")
        .unwrap_or(0);
    consul.register(Instance::new("orders-1", "orders", "127.0.0.1", ports[0]));
    next_change(&envoy, before)?;
    settles_on(&envoy, &["200 u1"], 10)?;
    Ok(())
}
