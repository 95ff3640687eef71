//! `meshguard run --registry consul://…` against the fake Consul: initial sync, health and
//! deregistration, the blocking-query index rules, errors and outages that keep the last good
//! registry, the last-known-good file served after a restart while Consul is down, and Envoy
//! routing on when Consul dies.

mod support;

use std::time::Duration;

use anyhow::{ensure, Result};
use meshguard_fake_consul::{FakeConsul, Fault, Health, Instance, Options};
use meshguard_tests::TestUpstream;
use serde_json::Value;
use support::{get, start_envoy, ControlPlane, TempDir};

/// Instances of `service` in a `/registry` document as (address, port, health, weight).
fn instances(doc: &Value, service: &str) -> Vec<(String, u64, String, u64)> {
    doc["registry"]["services"][service]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["address"].as_str().unwrap_or_default().to_string(),
                        e["port"].as_u64().unwrap_or_default(),
                        e["health"].as_str().unwrap_or_default().to_string(),
                        e["weight"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn start(dir: &TempDir, consul: &FakeConsul, extra: &[&str]) -> Result<ControlPlane> {
    dir.write("rules.yaml", "services: {}\n")?;
    let registry = format!("consul://127.0.0.1:{}", consul.port());
    let mut args = vec!["--consul-wait-s", "1"];
    args.extend_from_slice(extra);
    ControlPlane::start_with(dir, &registry, &args)
}

#[test]
fn syncs_services_health_weights_and_deregistrations() -> Result<()> {
    let consul = FakeConsul::start()?;
    consul.register(Instance::new("o1", "orders", "127.0.0.1", 8081));
    consul.register(
        Instance::new("o2", "orders", "127.0.0.1", 8082)
            .weights(3, 2)
            .health(Health::Warning),
    );
    consul.register(Instance::new("i1", "inventory", "127.0.0.2", 9000));
    let dir = TempDir::new("consul-sync")?;
    let cp = start(&dir, &consul, &[])?;
    let doc = cp.wait_registry("both services", |d| {
        instances(d, "orders").len() == 2 && instances(d, "inventory").len() == 1
    })?;
    ensure!(doc["origin"] == "consul", "{doc:#}");
    ensure!(
        instances(&doc, "orders").contains(&("127.0.0.1".into(), 8082, "warning".into(), 2)),
        "the warning weight applies: {doc:#}"
    );

    consul.set_health("o1", Health::Critical);
    cp.wait_registry("o1 gone as critical", |d| {
        instances(d, "orders")
            .iter()
            .map(|i| i.1)
            .collect::<Vec<_>>()
            == vec![8082]
    })?;
    consul.deregister("i1");
    cp.wait_registry("inventory gone", |d| {
        d["registry"]["services"]["inventory"].is_null()
    })?;

    // Every query is a stale read; blocking ones carry index and wait, and no index is 0.
    let requests = consul.requests();
    let health: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/v1/health/service/orders")
        .collect();
    ensure!(health.len() >= 2, "{} health queries", health.len());
    ensure!(
        requests.iter().all(|r| r.query_param("stale").is_some()),
        "a query without stale"
    );
    ensure!(
        health
            .iter()
            .any(|r| r.query_param("index").is_some() && r.query_param("wait") == Some("1000ms")),
        "no blocking query"
    );
    ensure!(requests.iter().all(|r| r.query_param("index") != Some("0")));
    Ok(())
}

#[test]
fn an_index_going_backwards_resets_to_a_full_read_and_zero_is_never_used() -> Result<()> {
    let consul = FakeConsul::start()?;
    consul.register(Instance::new("o1", "orders", "127.0.0.1", 8081));
    let dir = TempDir::new("consul-index")?;
    let cp = start(&dir, &consul, &[])?;
    cp.wait_registry("orders", |d| instances(d, "orders").len() == 1)?;
    let before = consul.requests().len();
    consul.set_fault(Fault::IndexGoesBackwards);
    consul.register(Instance::new("o2", "orders", "127.0.0.1", 8082));
    cp.wait_registry("o2", |d| instances(d, "orders").len() == 2)?;
    std::thread::sleep(Duration::from_millis(300));
    consul.set_fault(Fault::IndexZero);
    consul.register(Instance::new("o3", "orders", "127.0.0.1", 8083));
    cp.wait_registry("o3", |d| instances(d, "orders").len() == 3)?;
    std::thread::sleep(Duration::from_millis(300));
    consul.clear_fault();
    let after: Vec<_> = consul.requests().into_iter().skip(before).collect();
    ensure!(
        after
            .iter()
            .any(|r| r.path == "/v1/health/service/orders" && r.query_param("index").is_none()),
        "no full (non-blocking) read after the index went backwards"
    );
    ensure!(
        after.iter().all(|r| r.query_param("index") != Some("0")),
        "index=0 was sent"
    );
    // The loop is rate limited: bounded queries while the index misbehaved (~0.6 s at ≥100 ms).
    let health = after
        .iter()
        .filter(|r| r.path == "/v1/health/service/orders")
        .count();
    ensure!(health < 60, "{health} health queries: the watch spun");
    Ok(())
}

#[test]
fn consul_errors_keep_the_last_good_registry_and_mark_it_stale() -> Result<()> {
    let consul = FakeConsul::start()?;
    consul.register(Instance::new("o1", "orders", "127.0.0.1", 8081));
    let dir = TempDir::new("consul-errors")?;
    let cp = start(&dir, &consul, &[])?;
    let good = cp.wait_registry("orders", |d| instances(d, "orders").len() == 1)?;
    for fault in [Fault::Status(500), Fault::MalformedBody, Fault::Reset] {
        consul.set_fault(fault);
        // A change wakes the blocking queries, which then hit the fault.
        consul.register(Instance::new("tmp", "orders", "127.0.0.1", 9999));
        let status = cp.wait_status("the error", |s| s["registry"]["last_error"].is_string())?;
        ensure!(status["registry"]["stale"] == true, "{status:#}");
        ensure!(
            cp.registry()?["registry"] == good["registry"],
            "an error changed the registry"
        );
        consul.deregister("tmp");
        consul.clear_fault();
        cp.wait_status("recovery", |s| s["registry"]["last_error"].is_null())?;
    }
    cp.wait_registry("still one instance", |d| instances(d, "orders").len() == 1)?;
    Ok(())
}

#[test]
fn an_outage_keeps_endpoints_and_a_restart_serves_the_disk_snapshot() -> Result<()> {
    let consul = FakeConsul::start()?;
    consul.register(Instance::new("o1", "orders", "127.0.0.1", 8081));
    consul.register(Instance::new("o2", "orders", "127.0.0.1", 8082));
    let dir = TempDir::new("consul-outage")?;
    let snapshot = dir.path().join("registry.snapshot");
    let snapshot_arg = snapshot.display().to_string();
    let mut cp = start(&dir, &consul, &["--consul-snapshot", &snapshot_arg])?;
    let good = cp.wait_registry("orders", |d| instances(d, "orders").len() == 2)?;
    ensure!(snapshot.is_file(), "no last-known-good file");

    consul.stop_listening();
    cp.wait_status("the outage", |s| s["registry"]["last_error"].is_string())?;
    ensure!(
        cp.registry()?["registry"] == good["registry"],
        "the outage changed the registry"
    );

    // Restart with Consul still down: the disk snapshot is served.
    cp.kill()?;
    let cp = start(&dir, &consul, &["--consul-snapshot", &snapshot_arg])?;
    let from_disk = cp.wait_registry("the disk snapshot", |d| d["origin"] == "disk")?;
    ensure!(from_disk["registry"] == good["registry"], "{from_disk:#}");

    // Consul comes back with a change: the live registry replaces the snapshot.
    consul.register(Instance::new("o3", "orders", "127.0.0.1", 8083));
    consul.resume_listening()?;
    cp.wait_registry("consul again", |d| {
        d["origin"] == "consul" && instances(d, "orders").len() == 3
    })?;
    Ok(())
}

#[test]
fn a_corrupted_disk_snapshot_is_not_served() -> Result<()> {
    let consul = FakeConsul::start()?;
    consul.stop_listening();
    let dir = TempDir::new("consul-corrupt")?;
    let snapshot = dir.write(
        "registry.snapshot",
        "meshguard-registry-v1 0000\n{\"services\":{\"orders\":[]}}",
    )?;
    let cp = start(
        &dir,
        &consul,
        &["--consul-snapshot", &snapshot.display().to_string()],
    )?;
    cp.wait_status("the outage", |s| s["registry"]["last_error"].is_string())?;
    ensure!(cp.registry()?["registry"].is_null(), "{:#}", cp.registry()?);
    ensure!(
        cp.log_text().contains("checksum mismatch"),
        "{}",
        cp.log_text()
    );
    Ok(())
}

#[test]
fn envoy_keeps_routing_when_consul_dies() -> Result<()> {
    let upstream = TestUpstream::start_named("orders-1")?;
    let consul = FakeConsul::start()?;
    consul.register(Instance::new("o1", "orders", "127.0.0.1", upstream.port()));
    let dir = TempDir::new("consul-envoy")?;
    let cp = start(&dir, &consul, &[])?;
    cp.wait_registry("orders", |d| instances(d, "orders").len() == 1)?;
    let envoy = start_envoy(&cp, "consul-envoy")?;
    support::wait_response(&envoy, "orders", "an answer", |r| r.status == 200)?;
    consul.stop_listening();
    cp.wait_status("the outage", |s| s["registry"]["last_error"].is_string())?;
    for _ in 0..10 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(
            r.status == 200 && r.header("x-upstream") == Some("orders-1"),
            "{r:?}"
        );
    }
    Ok(())
}

#[test]
fn rules_from_consul_kv_are_watched_and_a_bad_value_keeps_the_last_good_rules() -> Result<()> {
    let consul = FakeConsul::start()?;
    consul.register(Instance::new("o1", "orders", "127.0.0.1", 8081));
    consul.kv_put("meshguard/rules", b"services:\n  orders: {timeout: 2s}\n");
    let dir = TempDir::new("consul-kv")?;
    let cp = start(&dir, &consul, &["--rules", "consul-kv:meshguard/rules"])?;
    let status = cp.wait_status("rules from KV", |s| {
        s["rules"]["services"] == 1 && s["snapshot"]["published"].as_u64() >= Some(1)
    })?;
    ensure!(
        status["rules"]["source"] == "consul-kv:meshguard/rules",
        "{status:#}"
    );
    let published = status["snapshot"]["published"].as_u64().unwrap_or_default();

    consul.kv_put(
        "meshguard/rules",
        b"services:\n  orders: {timeout: 2s, balancer: fastest}\n",
    );
    let status = cp.wait_status("the KV rules error", |s| {
        s["rules"]["last_error"].is_string()
    })?;
    let error = status["rules"]["last_error"].as_str().unwrap_or_default();
    ensure!(
        error.starts_with(
            "consul-kv:meshguard/rules:2:25: services.orders.balancer: unknown variant"
        ),
        "{error}"
    );
    ensure!(
        status["snapshot"]["published"] == published,
        "a bad value was published"
    );

    consul.kv_put(
        "meshguard/rules",
        b"services:\n  orders: {timeout: 2s}\n  inventory: {timeout: 1s}\n",
    );
    cp.wait_status("the fixed KV rules", |s| {
        s["rules"]["services"] == 2 && s["rules"]["last_error"].is_null()
    })?;
    Ok(())
}

/// The control plane against a fake Consul serving `dc1` (local) and `dc2`, with the
/// registry URL listing both.
fn start_two_dcs(dir: &TempDir, consul: &FakeConsul) -> Result<ControlPlane> {
    dir.write("rules.yaml", "services: {}\n")?;
    let registry = format!("consul://127.0.0.1:{}?dc=dc1,dc2", consul.port());
    ControlPlane::start_with(dir, &registry, &["--consul-wait-s", "1"])
}

fn two_dc_consul() -> Result<FakeConsul> {
    FakeConsul::start_with(Options {
        datacenters: vec!["dc2".into()],
        ..Options::default()
    })
}

/// `(port, datacenter, priority)` of `service`'s endpoints in a `/registry` document.
fn placements(doc: &Value, service: &str) -> Vec<(u64, String, u64)> {
    let mut out: Vec<(u64, String, u64)> = doc["registry"]["services"][service]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["port"].as_u64().unwrap_or_default(),
                        e["datacenter"].as_str().unwrap_or_default().to_string(),
                        e["priority"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn syncs_every_datacenter_local_first_with_spring_cloud_metadata() -> Result<()> {
    let consul = two_dc_consul()?;
    // Spring Cloud Consul 2+ puts zone/secure/group in Meta; 1.x (or `discovery.tags`) in tags.
    consul.register(
        Instance::new("orders-8081", "orders", "127.0.0.1", 8081)
            .meta("secure", "true")
            .meta("zone", "zone-a")
            .meta("group", "blue"),
    );
    consul.register(
        Instance::new("orders-8082", "orders", "127.0.0.1", 8082)
            .tag("secure=false")
            .tag("zone=zone-b"),
    );
    consul.register(Instance::new("orders-9081", "orders", "127.0.0.2", 9081).datacenter("dc2"));
    consul.register(Instance::new("billing-9", "billing", "127.0.0.2", 9090).datacenter("dc2"));
    let dir = TempDir::new("consul-dcs")?;
    let cp = start_two_dcs(&dir, &consul)?;
    let doc = cp.wait_registry("both datacenters", |d| {
        placements(d, "orders").len() == 3 && placements(d, "billing").len() == 1
    })?;
    ensure!(
        placements(&doc, "orders")
            == vec![
                (8081, "dc1".into(), 0),
                (8082, "dc1".into(), 0),
                (9081, "dc2".into(), 1)
            ],
        "{doc:#}"
    );
    ensure!(
        placements(&doc, "billing") == vec![(9090, "dc2".into(), 1)],
        "a service only in dc2 is synced too: {doc:#}"
    );
    let orders = doc["registry"]["services"]["orders"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let by_port = |p: u64| orders.iter().find(|e| e["port"] == p).cloned();
    let meta = by_port(8081).unwrap_or_default();
    ensure!(
        meta["zone"] == "zone-a" && meta["secure"] == true && meta["group"] == "blue",
        "Spring Cloud Meta: {meta}"
    );
    let tags = by_port(8082).unwrap_or_default();
    ensure!(
        tags["zone"] == "zone-b" && tags.get("secure").is_none() && tags.get("group").is_none(),
        "Spring Cloud tags: {tags}"
    );
    let status = cp.status()?;
    ensure!(
        status["registry"]["source"] == format!("consul://127.0.0.1:{}?dc=dc1,dc2", consul.port()),
        "{status:#}"
    );
    let requests = consul.requests();
    for (path, dc) in [
        ("/v1/catalog/services", "dc1"),
        ("/v1/catalog/services", "dc2"),
        ("/v1/health/service/orders", "dc1"),
        ("/v1/health/service/orders", "dc2"),
    ] {
        ensure!(
            requests
                .iter()
                .any(|r| r.path == path && r.query_param("dc") == Some(dc)),
            "no {path}?dc={dc}"
        );
    }

    // dc1 loses every healthy instance: dc2's remain, still at their priority; dc1 returns.
    consul.set_health("orders-8081", Health::Critical);
    consul.set_health("orders-8082", Health::Critical);
    cp.wait_registry("only dc2", |d| {
        placements(d, "orders") == vec![(9081, "dc2".into(), 1)]
    })?;
    consul.set_health("orders-8081", Health::Passing);
    consul.set_health("orders-8082", Health::Passing);
    cp.wait_registry("dc1 back", |d| placements(d, "orders").len() == 3)?;
    // The last datacenter with instances keeps its last good list (never an empty service).
    consul.set_health("orders-9081", Health::Critical);
    cp.wait_registry("dc2's instance out", |d| placements(d, "orders").len() == 2)?;
    Ok(())
}

#[test]
fn a_registry_url_with_an_unknown_parameter_is_refused() -> Result<()> {
    let Err(e) = meshguard::RegistrySource::parse("consul://127.0.0.1:8500?zone=a") else {
        anyhow::bail!("accepted an unknown parameter");
    };
    ensure!(
        format!("{e:#}").contains("unknown parameter \"zone=a\""),
        "{e:#}"
    );
    let Ok(meshguard::RegistrySource::Consul(options)) =
        meshguard::RegistrySource::parse("consul://127.0.0.1:8500?dc=dc1,dc2,dc1")
    else {
        anyhow::bail!("refused a dc list");
    };
    ensure!(options.datacenter.as_deref() == Some("dc1"));
    ensure!(options.failover_datacenters == vec!["dc2".to_string()]);
    Ok(())
}

#[test]
fn envoy_prefers_the_local_datacenter_fails_over_to_the_next_and_back() -> Result<()> {
    let local = TestUpstream::start_named("dc1-orders")?;
    let remote = TestUpstream::start_named("dc2-orders")?;
    let consul = two_dc_consul()?;
    consul.register(Instance::new("o1", "orders", "127.0.0.1", local.port()));
    consul.register(Instance::new("o2", "orders", "127.0.0.1", remote.port()).datacenter("dc2"));
    let dir = TempDir::new("consul-dcs-envoy")?;
    let cp = start_two_dcs(&dir, &consul)?;
    cp.wait_registry("both", |d| placements(d, "orders").len() == 2)?;
    let envoy = start_envoy(&cp, "consul-dcs")?;
    support::wait_response(&envoy, "orders", "dc1", |r| {
        r.header("x-upstream") == Some("dc1-orders")
    })?;
    let clusters = envoy.admin_get("/clusters")?;
    for (port, priority) in [(local.port(), 0), (remote.port(), 1)] {
        let line = format!("orders::127.0.0.1:{port}::priority::{priority}");
        ensure!(clusters.contains(&line), "no {line} in:\n{clusters}");
    }
    for _ in 0..10 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(
            r.header("x-upstream") == Some("dc1-orders"),
            "dc1 while healthy: {r:?}"
        );
    }
    consul.set_health("o1", Health::Critical);
    support::wait_response(&envoy, "orders", "dc2", |r| {
        r.header("x-upstream") == Some("dc2-orders")
    })?;
    for _ in 0..10 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(
            r.header("x-upstream") == Some("dc2-orders"),
            "dc2 only: {r:?}"
        );
    }
    consul.set_health("o1", Health::Passing);
    support::wait_response(&envoy, "orders", "dc1 again", |r| {
        r.header("x-upstream") == Some("dc1-orders")
    })?;
    Ok(())
}
