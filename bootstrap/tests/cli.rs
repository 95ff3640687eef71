//! The `meshguard validate` and `meshguard render` subcommands as a user runs them.

mod support;

use std::process::Command;

use anyhow::{ensure, Result};
use support::TempDir;

fn meshguard(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn validate_accepts_the_example_rules() -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rules.yaml");
    let (code, stdout, _) = meshguard(&["validate", path])?;
    ensure!(code == 0, "{stdout}");
    ensure!(stdout.trim_end().ends_with("ok (3 services)"), "{stdout}");
    Ok(())
}

#[test]
fn validate_prints_every_error_with_its_location_and_fails() -> Result<()> {
    let dir = TempDir::new("validate")?;
    let path = dir.write(
        "rules.yaml",
        "services:\n  orders:\n    timeout: soon\n    retries: {attempts: 11}\n  pay:\n    balancer: fastest\n",
    )?;
    let file = path.display().to_string();
    let (code, stdout, stderr) = meshguard(&["validate", &file])?;
    ensure!(code == 1, "exit {code}");
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines.len() == 3, "{stdout}");
    ensure!(
        lines[0].starts_with(&format!(
            "{file}:3:5: services.orders.timeout: duration \"soon\""
        )),
        "{stdout}"
    );
    ensure!(
        lines[1] == format!("{file}:4:15: services.orders.retries.attempts: must be 1-10"),
        "{stdout}"
    );
    ensure!(
        lines[2].starts_with(&format!(
            "{file}:6:5: services.pay.balancer: unknown variant `fastest`"
        )),
        "{stdout}"
    );
    ensure!(stderr.contains("3 error(s)"), "{stderr}");
    Ok(())
}

#[test]
fn validate_checks_filter_sections_with_the_filters_own_parsers() -> Result<()> {
    let dir = TempDir::new("validate-filters")?;
    let path = dir.write(
        "rules.yaml",
        "\
services:
  orders:
    ratelimit:
      rules:
      - name: r
        limits:
        - algorithm: fixed_window
          requests: 0
          per: 1m
    fallback: {breakers: [{name: b, trip: {consecutive_failures: 5}, fallback: {static: {status: 99}}}]}
  pay:
    router: {mode: failback, balancer: least_request}
",
    )?;
    let file = path.display().to_string();
    let (code, stdout, stderr) = meshguard(&["validate", &file])?;
    ensure!(code == 1, "exit {code}: {stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines.len() == 3, "{stdout}");
    // The offending key inside the section, named by the filter.
    ensure!(
        lines[0].starts_with(&format!(
            "{file}:8:11: services.orders.ratelimit.rules[0].limits[0].requests: "
        )),
        "{stdout}"
    );
    ensure!(
        lines[1].starts_with(&format!(
            "{file}:10:90: services.orders.fallback.breakers[0].fallback.static.status: "
        )),
        "{stdout}"
    );
    ensure!(
        lines[2].starts_with(&format!("{file}:12:5: services.pay.router.failback: ")),
        "{stdout}"
    );
    ensure!(stderr.contains("3 error(s)"), "{stderr}");

    // The same sections, fixed, pass.
    dir.write(
        "rules.yaml",
        "services:\n  orders:\n    ratelimit: {rules: [{name: r, limits: [{algorithm: fixed_window, requests: 1, per: 1m}]}]}\n  pay:\n    router: {mode: failback, consul: {cluster: consul}, failback: {cluster: pay}}\n",
    )?;
    let (code, stdout, _) = meshguard(&["validate", &file])?;
    ensure!(code == 0, "{stdout}");
    Ok(())
}

#[test]
fn render_defaults_to_delta_ads_and_sotw_is_a_choice() -> Result<()> {
    let api = |args: &[&str]| -> Result<String> {
        let (code, stdout, stderr) = meshguard(args)?;
        ensure!(code == 0, "{stderr}");
        let doc: serde_yaml::Value = serde_yaml::from_str(&stdout)?;
        Ok(doc["dynamic_resources"]["ads_config"]["api_type"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    ensure!(api(&["render"])? == "DELTA_GRPC");
    ensure!(api(&["render", "--xds-api", "delta"])? == "DELTA_GRPC");
    ensure!(api(&["render", "--xds-api", "sotw"])? == "GRPC");
    let (code, _, stderr) = meshguard(&["render", "--xds-api", "rest"])?;
    ensure!(code == 2, "exit {code}: {stderr}");
    Ok(())
}

#[test]
fn render_static_carries_native_routing_and_the_router_filter() -> Result<()> {
    let dir = TempDir::new("render-router")?;
    dir.write(
        "services.yaml",
        "services: {orders: [{address: 127.0.0.1, port: 9}], pay: [{address: 127.0.0.1, port: 10}]}\n",
    )?;
    let rules = dir.write(
        "rules.yaml",
        "services:\n  orders:\n    router: {balancer: least_request, retries: 1}\n  pay:\n    router: {mode: failsafe, consul: {cluster: consul}}\n",
    )?;
    let wasm = dir.path().join("wasm");
    std::fs::create_dir_all(&wasm)?;
    std::fs::write(wasm.join("meshguard_router.wasm"), b"\0asm")?;
    let registry = format!("file:{}", dir.path().join("services.yaml").display());
    let (code, stdout, stderr) = meshguard(&[
        "render",
        "--static",
        "--registry",
        &registry,
        "--rules",
        &rules.display().to_string(),
        "--wasm-dir",
        &wasm.display().to_string(),
    ])?;
    ensure!(code == 0, "{stderr}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&stdout)?;
    let clusters = &doc["static_resources"]["clusters"];
    ensure!(
        clusters[0]["name"] == "orders" && clusters[0]["lb_policy"] == "LEAST_REQUEST",
        "{stdout}"
    );
    ensure!(
        clusters[1]["load_balancing_policy"]["policies"][0]["typed_extension_config"]["name"]
            == "envoy.load_balancing_policies.override_host",
        "{stdout}"
    );
    let hcm =
        &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    ensure!(
        hcm["http_filters"][0]["name"] == "meshguard.router.pay",
        "{stdout}"
    );
    let orders = &hcm["route_config"]["virtual_hosts"][0]["routes"];
    ensure!(
        orders[0]["match"]["headers"][0]["name"] == ":method"
            && orders[1]["route"]["retry_policy"]["num_retries"] == 1,
        "{stdout}"
    );
    Ok(())
}

#[test]
fn render_prints_a_bootstrap_pointing_at_the_control_plane() -> Result<()> {
    let (code, stdout, _) =
        meshguard(&["render", "--xds", "127.0.0.1:18123", "--node-id", "edge-1"])?;
    ensure!(code == 0);
    let doc: serde_yaml::Value = serde_yaml::from_str(&stdout)?;
    ensure!(doc["node"]["id"] == "edge-1", "{stdout}");
    let xds = &doc["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        ["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    ensure!(xds["port_value"] == 18123, "{stdout}");
    Ok(())
}

#[test]
fn run_refuses_an_unknown_registry_scheme() -> Result<()> {
    let (code, _, stderr) = meshguard(&["run", "--registry", "zookeeper://x"])?;
    ensure!(code == 1, "exit {code}");
    ensure!(stderr.contains("unsupported --registry"), "{stderr}");
    Ok(())
}

#[test]
fn run_publishes_nothing_until_the_rules_are_valid() -> Result<()> {
    let dir = TempDir::new("norules")?;
    dir.write(
        "services.yaml",
        "services: {orders: [{address: 127.0.0.1, port: 9}]}\n",
    )?;
    dir.write("rules.yaml", "services: {orders: {timeout: never}}\n")?;
    let cp = support::ControlPlane::start(&dir)?;
    let status = cp.wait_status("the rules error", |s| {
        s["rules"]["last_error"].is_string() && s["registry"]["loaded"] == true
    })?;
    ensure!(status["snapshot"]["published"] == 0, "{status:#}");
    ensure!(
        status["snapshot"]["last_error"] == "waiting for valid rules",
        "{status:#}"
    );
    ensure!(
        status["rules"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("rules.yaml:1:21: services.orders.timeout")),
        "{status:#}"
    );
    dir.write("rules.yaml", "services: {orders: {timeout: 1s}}\n")?;
    cp.wait_status("a publication", |s| s["snapshot"]["published"] == 1)?;
    Ok(())
}

#[test]
fn run_refuses_consul_kv_rules_without_a_consul_registry() -> Result<()> {
    let dir = TempDir::new("kvfile")?;
    let registry = format!("file:{}", dir.path().join("services.yaml").display());
    let (code, _, stderr) = meshguard(&[
        "run",
        "--registry",
        &registry,
        "--rules",
        "consul-kv:meshguard/rules",
        "--xds",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ])?;
    ensure!(code == 1, "exit {code}: {stderr}");
    ensure!(stderr.contains("needs --registry consul://"), "{stderr}");
    Ok(())
}
