//! `meshguard run` with a real Envoy 1.40 connected over ADS: clusters and endpoints arrive,
//! traffic flows through a meshguard wasm filter configured from the rules file, a registry
//! change reaches Envoy, a config Envoy rejects is NACKed once and not resent, and Envoy keeps
//! serving when the control plane dies.

mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use meshguard_fake_consul::{FakeConsul, Instance};
use meshguard_tests::TestUpstream;
use support::{
    get, registry_yaml, start_envoy, start_envoy_delta, wait_response, ControlPlane, TempDir, WAIT,
};

/// Rules: `orders` limited to 3 requests a minute by the ratelimit filter and behind a breaker
/// of the fallback filter; `inventory` plain.
const RULES: &str = r#"
services:
  orders:
    timeout: 5s
    ratelimit:
      rules:
      - name: all
        limits: [{algorithm: fixed_window, requests: 3, per: 1m}]
    fallback:
      breakers:
      - name: orders
        match: {path: {prefix: /orders}}
        trip: {consecutive_failures: 2}
        fallback: {static: {status: 200, body: "[]"}}
  inventory:
    retries: {attempts: 1, on: [connect-failure]}
"#;

fn node_status<'a>(status: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    &status["nodes"][node]
}

fn acked_everything(status: &serde_json::Value, node: &str) -> bool {
    ["cds", "eds", "lds", "rds"].iter().all(|t| {
        let current = &status["snapshot"]["versions"][t]["version"];
        current.is_string() && node_status(status, node)["acked"][t] == *current
    })
}

#[test]
fn traffic_flows_through_the_rules_filter_and_registry_changes_reach_envoy() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let b = TestUpstream::start_named("b")?;
    let dir = TempDir::new("flow")?;
    dir.write(
        "services.yaml",
        &registry_yaml(&[("orders", a.port()), ("inventory", a.port())]),
    )?;
    dir.write("rules.yaml", RULES)?;
    let cp = ControlPlane::start(&dir)?;
    let envoy = start_envoy(&cp, "flow")?;
    let status = cp.wait_status("Envoy ACKing every type", |s| acked_everything(s, "flow"))?;
    ensure!(status["registry"]["services"] == 2, "{status:#}");
    ensure!(status["nacks"] == 0, "{status:#}");

    // Clusters and endpoints from the registry are in Envoy.
    let clusters = envoy.admin_get("/clusters")?;
    let a_host = format!("orders::127.0.0.1:{}::health_flags::healthy", a.port());
    ensure!(clusters.contains(&a_host), "no {a_host} in {clusters}");

    // Both filters' JSON, converted from the rules, was accepted (no NACK above). The
    // ratelimit filter: 3 requests pass, the 4th gets 429 locally.
    for i in 0..3 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(r.status == 200, "request {i}: {}", r.status);
        ensure!(r.header("x-upstream") == Some("a"));
    }
    let limited = get(&envoy, "orders", "/")?;
    ensure!(limited.status == 429, "4th request: {}", limited.status);
    ensure!(
        limited.header("x-upstream").is_none(),
        "a 429 must not reach the upstream"
    );
    // The filter is enabled on orders only: inventory is never limited.
    for _ in 0..5 {
        ensure!(get(&envoy, "inventory", "/")?.status == 200);
    }

    // A registry change (inventory moves from a to b) reaches Envoy without a restart.
    dir.write(
        "services.yaml",
        &registry_yaml(&[("orders", a.port()), ("inventory", b.port())]),
    )?;
    let started = Instant::now();
    wait_response(&envoy, "inventory", "an answer from b", |r| {
        r.header("x-upstream") == Some("b")
    })?;
    eprintln!(
        "registry change applied by Envoy in {:?}",
        started.elapsed()
    );
    cp.wait_status("Envoy ACKing the new endpoints", |s| {
        acked_everything(s, "flow")
    })?;
    Ok(())
}

#[test]
fn delta_ads_delivers_the_snapshot_and_only_a_changed_service_to_envoy() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let b = TestUpstream::start_named("b")?;
    let dir = TempDir::new("delta")?;
    dir.write(
        "services.yaml",
        &registry_yaml(&[("orders", a.port()), ("inventory", a.port())]),
    )?;
    dir.write("rules.yaml", "services:\n  orders: {timeout: 5s}\n")?;
    let cp = ControlPlane::start(&dir)?;
    let envoy = start_envoy_delta(&cp, "delta")?;
    let status = cp.wait_status("Envoy ACKing every type over delta ADS", |s| {
        acked_everything(s, "delta")
    })?;
    ensure!(status["nacks"] == 0, "{status:#}");
    for service in ["orders", "inventory"] {
        let r = get(&envoy, service, "/")?;
        ensure!(
            r.status == 200 && r.header("x-upstream") == Some("a"),
            "{r:?}"
        );
    }
    let eds_updates = |envoy: &meshguard_tests::Envoy, service: &str| -> Result<u64> {
        let stats = envoy.admin_get(&format!(
            "/stats?filter=^cluster\\.{service}\\.update_success$"
        ))?;
        stats
            .lines()
            .find_map(|l| l.split_once(": "))
            .and_then(|(_, v)| v.trim().parse().ok())
            .with_context(|| format!("no update_success for {service} in {stats:?}"))
    };
    let orders_before = eds_updates(&envoy, "orders")?;

    // inventory moves from a to b: Envoy gets it, and orders' endpoints are not resent.
    dir.write(
        "services.yaml",
        &registry_yaml(&[("orders", a.port()), ("inventory", b.port())]),
    )?;
    wait_response(&envoy, "inventory", "an answer from b", |r| {
        r.header("x-upstream") == Some("b")
    })?;
    cp.wait_status("Envoy ACKing the new endpoints", |s| {
        acked_everything(s, "delta")
    })?;
    ensure!(
        eds_updates(&envoy, "orders")? == orders_before,
        "orders' unchanged endpoints were sent again"
    );
    ensure!(get(&envoy, "orders", "/")?.header("x-upstream") == Some("a"));
    Ok(())
}

#[test]
fn critical_instances_get_no_traffic() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let b = TestUpstream::start_named("b")?;
    let dir = TempDir::new("health")?;
    dir.write(
        "services.yaml",
        &format!(
            "services:\n  orders:\n  - {{address: 127.0.0.1, port: {}}}\n  - {{address: 127.0.0.1, port: {}, health: critical}}\n",
            a.port(),
            b.port()
        ),
    )?;
    dir.write("rules.yaml", "services: {}\n")?;
    let cp = ControlPlane::start(&dir)?;
    let envoy = start_envoy(&cp, "health")?;
    cp.wait_status("ACKs", |s| acked_everything(s, "health"))?;
    for _ in 0..10 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(
            r.status == 200 && r.header("x-upstream") == Some("a"),
            "{r:?}"
        );
    }
    ensure!(b.request_count() == 0, "the critical instance got traffic");
    Ok(())
}

#[test]
fn a_config_envoy_rejects_is_nacked_once_and_the_last_good_one_keeps_serving() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let dir = TempDir::new("nack")?;
    dir.write("services.yaml", &registry_yaml(&[("orders", a.port())]))?;
    dir.write("rules.yaml", "services:\n  orders: {timeout: 5s}\n")?;
    // meshguard checks the filter's JSON itself now; what only Envoy can refuse is a module it
    // cannot load: this directory's ratelimit module is not wasm.
    let wasm = dir.path().join("wasm");
    std::fs::create_dir_all(&wasm)?;
    std::fs::write(wasm.join("meshguard_ratelimit.wasm"), b"not wasm")?;
    let registry = format!("file:{}", dir.path().join("services.yaml").display());
    let wasm_arg = wasm.display().to_string();
    let cp = ControlPlane::start_with(&dir, &registry, &["--wasm-dir", &wasm_arg])?;
    let envoy = start_envoy(&cp, "nack")?;
    cp.wait_status("ACKs", |s| acked_everything(s, "nack"))?;
    ensure!(get(&envoy, "orders", "/")?.status == 200);

    dir.write(
        "rules.yaml",
        "services:\n  orders:\n    ratelimit: {rules: [{name: r, limits: [{algorithm: fixed_window, requests: 1, per: 1m}]}]}\n",
    )?;
    let status = cp.wait_status("an LDS NACK", |s| s["nacks"].as_u64() >= Some(1))?;
    let nack = &node_status(&status, "nack")["nacks"][0];
    ensure!(nack["kind"] == "lds", "{status:#}");
    ensure!(
        nack["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status:#}"
    );
    // No resend loop: within a second Envoy sees the rejected version once.
    std::thread::sleep(Duration::from_secs(1));
    let rejected = envoy
        .stat("listener_manager.lds.update_rejected")
        .context("no lds update_rejected stat")?;
    ensure!(rejected == 1, "Envoy rejected {rejected} LDS updates");
    ensure!(cp.status()?["nacks"] == 1, "{:#}", cp.status()?);
    let metrics = meshguard_tests::send(cp.admin, &meshguard_tests::Request::get("/metrics"))?;
    ensure!(
        metrics
            .body_str()
            .contains("meshguard_xds_nacks_total{node=\"nack\"} 1\n"),
        "{}",
        metrics.body_str()
    );
    // The last good listener keeps serving, without the filter.
    for _ in 0..5 {
        ensure!(get(&envoy, "orders", "/")?.status == 200);
    }

    // The real module, and a filter change (a new listener version: the rejected one is never
    // resent): accepted.
    std::fs::copy(
        meshguard_tests::workspace_root()
            .join("target/wasm32-wasip1/wasm/meshguard_ratelimit.wasm"),
        wasm.join("meshguard_ratelimit.wasm"),
    )?;
    dir.write(
        "rules.yaml",
        "services:\n  orders:\n    ratelimit: {rules: [{name: r, limits: [{algorithm: fixed_window, requests: 2, per: 1m}]}]}\n",
    )?;
    cp.wait_status("the fixed rules ACKed", |s| acked_everything(s, "nack"))?;
    wait_response(&envoy, "orders", "a 429 from the fixed filter", |r| {
        r.status == 429
    })?;
    Ok(())
}

#[test]
fn a_filter_section_its_filter_refuses_never_reaches_envoy() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let dir = TempDir::new("refused")?;
    dir.write("services.yaml", &registry_yaml(&[("orders", a.port())]))?;
    dir.write(
        "rules.yaml",
        "services:\n  orders:\n    ratelimit: {rules: [{name: r, limits: [{algorithm: fixed_window, requests: 1, per: 1m}]}]}\n",
    )?;
    let cp = ControlPlane::start(&dir)?;
    let envoy = start_envoy(&cp, "refused")?;
    let before = cp.wait_status("ACKs", |s| acked_everything(s, "refused"))?;
    // Before, meshguard sent this and Envoy NACKed it (the filter refuses `requests: 0`).
    dir.write(
        "rules.yaml",
        "services:\n  orders:\n    ratelimit:\n      rules:\n      - name: r\n        limits: [{algorithm: fixed_window, requests: 0, per: 1m}]\n",
    )?;
    let status = cp.wait_status("the rules error", |s| s["rules"]["last_error"].is_string())?;
    let error = status["rules"]["last_error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("rules.yaml:6:44: services.orders.ratelimit.rules[0].limits[0].requests: "),
        "{error}"
    );
    ensure!(
        status["snapshot"]["versions"] == before["snapshot"]["versions"],
        "a rejected update changed the snapshot"
    );
    std::thread::sleep(Duration::from_millis(300));
    ensure!(cp.status()?["nacks"] == 0, "{:#}", cp.status()?);
    ensure!(envoy.stat("listener_manager.lds.update_rejected") == Some(0));
    // The last good limit (1 a minute) stays.
    ensure!(get(&envoy, "orders", "/")?.status == 200);
    ensure!(get(&envoy, "orders", "/")?.status == 429);
    Ok(())
}

#[test]
fn native_failover_retries_a_dead_instance_elsewhere_and_failfast_does_not() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let dead = support::free_port()?;
    let dir = TempDir::new("failover")?;
    dir.write(
        "services.yaml",
        &registry_yaml(&[
            ("orders", dead),
            ("orders", a.port()),
            ("pay", dead),
            ("pay", a.port()),
        ]),
    )?;
    dir.write(
        "rules.yaml",
        "services:\n  orders:\n    router: {balancer: round_robin, retries: 2, retry_on: [connect-failure]}\n  pay:\n    router: {mode: failfast}\n",
    )?;
    let cp = ControlPlane::start(&dir)?;
    let envoy = start_envoy(&cp, "failover")?;
    cp.wait_status("ACKs", |s| acked_everything(s, "failover"))?;
    ensure!(cp.status()?["nacks"] == 0, "{:#}", cp.status()?);
    for _ in 0..8 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(
            r.status == 200 && r.header("x-upstream") == Some("a"),
            "{r:?}"
        );
    }
    // Round robin over {dead, a}: without retries some requests hit the dead instance.
    let send = |service: &str, req: meshguard_tests::Request| {
        meshguard_tests::send(envoy.listener_addr(), &req.header("Host", service))
    };
    let mut failed = 0;
    for _ in 0..8 {
        if send("pay", meshguard_tests::Request::get("/"))?.status == 503 {
            failed += 1;
        }
    }
    ensure!(failed > 0, "failfast retried");
    // POST is not retried (the router filter's rule), GET is.
    let mut failed = 0;
    for _ in 0..8 {
        if send("orders", meshguard_tests::Request::post("/"))?.status == 503 {
            failed += 1;
        }
    }
    ensure!(failed > 0, "a POST was retried");
    Ok(())
}

#[test]
fn the_tenant_filter_reads_the_service_tenants_the_router_filter_publishes() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    // The router filter watches (fake) Consul through Envoy's `consul` cluster and publishes
    // orders → acme in shared data; the tenant filter reads it only in the same VM id.
    let consul = FakeConsul::start()?;
    consul.register(Instance::new("o1", "orders", "127.0.0.1", a.port()).meta("tenant", "acme"));
    let dir = TempDir::new("sharedvm")?;
    dir.write(
        "services.yaml",
        &registry_yaml(&[("orders", a.port()), ("consul", consul.port())]),
    )?;
    dir.write(
        "rules.yaml",
        "\
services:
  orders:
    tenant:
      identity: [{trusted_header: {cidrs: [127.0.0.0/8]}}]
      registry_service_tenants: true
      cross_tenant: {destination: cluster_name}
    router: {mode: failsafe, consul: {cluster: consul, wait: 1s, tick: 1s, min_interval: 1s}}
",
    )?;
    let cp = ControlPlane::start(&dir)?;
    let envoy = start_envoy(&cp, "sharedvm")?;
    cp.wait_status("ACKs", |s| acked_everything(s, "sharedvm"))?;
    ensure!(cp.status()?["nacks"] == 0, "{:#}", cp.status()?);
    let as_tenant = |tenant: &str| {
        meshguard_tests::send(
            envoy.listener_addr(),
            &meshguard_tests::Request::get("/")
                .header("Host", "orders")
                .header("x-meshguard-tenant", tenant),
        )
    };
    // Unknown destinations are denied until the router's map arrives.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = as_tenant("acme")?;
        if r.status == 200 {
            ensure!(r.header("x-upstream") == Some("a"), "{r:?}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "acme never reached orders: {r:?}"
        );
        std::thread::sleep(support::POLL);
    }
    let r = as_tenant("other")?;
    ensure!(r.status == 403, "{r:?}");
    Ok(())
}

#[test]
fn a_bad_rules_update_is_rejected_and_the_last_good_rules_stay_live() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let dir = TempDir::new("badrules")?;
    dir.write("services.yaml", &registry_yaml(&[("orders", a.port())]))?;
    dir.write(
        "rules.yaml",
        "services:\n  orders:\n    ratelimit: {rules: [{name: r, limits: [{algorithm: fixed_window, requests: 1, per: 1m}]}]}\n",
    )?;
    let cp = ControlPlane::start(&dir)?;
    let envoy = start_envoy(&cp, "badrules")?;
    let before = cp.wait_status("ACKs", |s| acked_everything(s, "badrules"))?;
    dir.write(
        "rules.yaml",
        "services:\n  orders:\n    retries: {attempts: 0}\n",
    )?;
    let status = cp.wait_status("the rules error", |s| s["rules"]["last_error"].is_string())?;
    let error = status["rules"]["last_error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("rules.yaml:3:")
            && error.contains("services.orders.retries.attempts: must be 1-10"),
        "{error}"
    );
    ensure!(
        status["snapshot"]["versions"] == before["snapshot"]["versions"],
        "a rejected update changed the snapshot"
    );
    ensure!(get(&envoy, "orders", "/")?.status == 200);
    ensure!(
        get(&envoy, "orders", "/")?.status == 429,
        "the last good limit is gone"
    );
    Ok(())
}

#[test]
fn killing_the_control_plane_leaves_envoy_serving() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let dir = TempDir::new("kill")?;
    dir.write("services.yaml", &registry_yaml(&[("orders", a.port())]))?;
    dir.write("rules.yaml", "services: {}\n")?;
    let mut cp = ControlPlane::start(&dir)?;
    let envoy = start_envoy(&cp, "kill")?;
    cp.wait_status("ACKs", |s| acked_everything(s, "kill"))?;
    ensure!(get(&envoy, "orders", "/")?.status == 200);
    cp.kill()?;
    // Envoy notices the broken stream (and retries it) but keeps its config.
    let deadline = Instant::now() + WAIT;
    while envoy.stat("control_plane.connected_state") != Some(0) {
        ensure!(
            Instant::now() < deadline,
            "Envoy never noticed the control plane died"
        );
        std::thread::sleep(support::POLL);
    }
    for _ in 0..10 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(
            r.status == 200 && r.header("x-upstream") == Some("a"),
            "{r:?}"
        );
    }
    ensure!(envoy.is_running());

    // A restarted control plane serves the same content under the same versions, so Envoy,
    // which reconnects and reports what it has, is sent nothing: no config churn.
    let sent_before = cp.log_text().matches("sending").count();
    ensure!(sent_before >= 4, "{}", cp.log_text());
    cp.restart()?;
    let deadline = Instant::now() + WAIT;
    while envoy.stat("control_plane.connected_state") != Some(1) {
        ensure!(Instant::now() < deadline, "Envoy never reconnected");
        std::thread::sleep(support::POLL);
    }
    cp.wait_status("Envoy reporting its versions", |s| {
        acked_everything(s, "kill")
    })?;
    let log = cp.log_text();
    ensure!(log.matches("ads stream opened").count() == 2, "{log}");
    ensure!(
        log.matches("sending").count() == sent_before,
        "the restarted control plane resent what Envoy had: {log}"
    );
    ensure!(get(&envoy, "orders", "/")?.status == 200);
    Ok(())
}

#[test]
fn a_static_render_runs_in_envoy_with_the_same_filters_and_routes() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let b = TestUpstream::start_named("b")?;
    let dir = TempDir::new("static")?;
    let services = dir.write(
        "services.yaml",
        &format!(
            "services:\n  orders:\n  - {{address: 127.0.0.1, port: {a}}}\n  - {{address: 127.0.0.1, port: {b}, health: critical}}\n  inventory:\n  - {{address: 127.0.0.1, port: {a}, zone: z1}}\n",
            a = a.port(),
            b = b.port()
        ),
    )?;
    let rules = dir.write("rules.yaml", RULES)?;
    let listen = format!("127.0.0.1:{}", support::free_port()?);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args([
            "render",
            "--static",
            "--admin-port",
            "0",
            "--listen",
            &listen,
        ])
        .arg("--registry")
        .arg(format!("file:{}", services.display()))
        .arg("--rules")
        .arg(&rules)
        .arg("--wasm-dir")
        .arg(meshguard_tests::workspace_root().join("target/wasm32-wasip1/wasm"))
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout)?;
    let envoy =
        meshguard_tests::Envoy::start(meshguard_tests::EnvoyConfig::from_template_text(yaml))?;
    for i in 0..3 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(
            r.status == 200 && r.header("x-upstream") == Some("a"),
            "request {i}: {r:?}"
        );
    }
    ensure!(get(&envoy, "orders", "/")?.status == 429);
    for _ in 0..5 {
        ensure!(get(&envoy, "inventory", "/")?.status == 200);
    }
    ensure!(b.request_count() == 0, "the critical instance got traffic");
    Ok(())
}

#[test]
fn a_static_render_with_routing_runs_in_envoy() -> Result<()> {
    let a = TestUpstream::start_named("a")?;
    let dead = support::free_port()?;
    let dir = TempDir::new("static-routing")?;
    let services = dir.write(
        "services.yaml",
        &registry_yaml(&[
            ("orders", dead),
            ("orders", a.port()),
            ("pay", a.port()),
            ("consul", dead),
        ]),
    )?;
    // orders: native failover (previous_hosts, the POST route); pay: the router filter
    // (override_host cluster policy, its JSON), which finds no Consul and leaves the pick to
    // the fallback round robin.
    let rules = dir.write(
        "rules.yaml",
        "services:\n  orders:\n    router: {retries: 2, retry_on: [connect-failure]}\n  pay:\n    router: {mode: failsafe, consul: {cluster: consul}}\n",
    )?;
    let listen = format!("127.0.0.1:{}", support::free_port()?);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args([
            "render",
            "--static",
            "--admin-port",
            "0",
            "--listen",
            &listen,
        ])
        .arg("--registry")
        .arg(format!("file:{}", services.display()))
        .arg("--rules")
        .arg(&rules)
        .arg("--wasm-dir")
        .arg(meshguard_tests::workspace_root().join("target/wasm32-wasip1/wasm"))
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout)?;
    let envoy =
        meshguard_tests::Envoy::start(meshguard_tests::EnvoyConfig::from_template_text(yaml))?;
    for i in 0..6 {
        let r = get(&envoy, "orders", "/")?;
        ensure!(
            r.status == 200 && r.header("x-upstream") == Some("a"),
            "request {i}: {r:?}"
        );
        let r = get(&envoy, "pay", "/")?;
        ensure!(r.status == 200, "pay {i}: {r:?}");
    }
    Ok(())
}
