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
    ensure!(stdout.trim_end().ends_with("ok (2 services)"), "{stdout}");
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
