//! The tenant filter (`meshguard_tenant.wasm`) in Envoy 1.40, two scenes:
//!
//! 1. Service calls: routes to the clusters `orders` (tenant acme) and `billing` (tenant
//!    globex). acme calls its own service (200), then globex's (403 with the reason); a client
//!    on an untrusted network sends a forged tenant header and is refused (401).
//! 2. Consul discovery through the filter, in front of the project's fake Consul: the service
//!    `web` has instances of both tenants; each tenant sees only its own, a filter-injection
//!    attempt still returns only acme's, and a registration claiming globex is refused.
//!
//! Everything listens on 127.0.0.1 and stops when `run` returns; `Err` if the filter does not
//! do what its configuration says.

use anyhow::{bail, ensure, Context, Result};
use meshguard_fake_consul::{FakeConsul, Instance};
use meshguard_tests::{
    send, wasm_artifact, Envoy, EnvoyConfig, Request, Response, TestUpstream, WasmFilter,
};

/// Build artifact name of the filter under `target/wasm32-wasip1/wasm/`.
const FILTER: &str = "meshguard_tenant";

/// Scene 1: loopback stands for the trusted gateway network, so its tenant header is believed;
/// the destination's tenant comes from the cluster Envoy routed to.
const CALLS_CONFIG: &str = r#"{"identity":[{"trusted_header":{"cidrs":["127.0.0.0/8"]}}],
  "service_tenants":{"orders":"acme","billing":"globex"},
  "cross_tenant":{"destination":"cluster_name"}}"#;

/// Scene 1b: the same filter trusting only 10.0.0.0/8, so the loopback client is untrusted.
const UNTRUSTED_CONFIG: &str = r#"{"identity":[{"trusted_header":{"cidrs":["10.0.0.0/8"]}}]}"#;

/// Scene 2: every request through this listener is a Consul API call.
const CONSUL_CONFIG: &str = r#"{"identity":[{"trusted_header":{"cidrs":["127.0.0.0/8"]}}],
  "consul":{"kv_prefix":"tenants/{tenant}/"}}"#;

fn routes(items: &[(&str, &str)]) -> String {
    items
        .iter()
        .map(|(prefix, cluster)| {
            format!(
                "- match: {{ prefix: \"{prefix}\" }}\n  route: {{ cluster: {cluster}, timeout: 30s }}"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn envoy(
    upstream: &TestUpstream,
    routes: String,
    clusters: &[(&str, u16)],
    config: &str,
) -> Result<Envoy> {
    let mut cfg = EnvoyConfig::new("tenant")
        .upstream(upstream.port())
        .var("ROUTES", routes);
    for (name, port) in clusters {
        cfg = cfg.cluster(*name, *port);
    }
    let wasm = wasm_artifact(FILTER)?;
    Envoy::start(cfg.wasm_filter(WasmFilter::new("tenant", wasm).configuration(config)))
        .context("start Envoy with the tenant filter")
}

fn show(label: &str, request: &str, response: &Response, note: &str) {
    let reason = response.header("x-meshguard-deny-reason").unwrap_or("");
    println!(
        "  {label:<38} {request:<44} -> {} {reason}{note}",
        response.status
    );
}

/// Runs both scenes.
pub fn run() -> Result<()> {
    println!("\npart 4: the tenant filter in Envoy\n== verified tenant, cross-tenant denial ==");
    calls()?;
    println!("\n== tenant filter: Consul discovery scoped to the tenant (fake Consul) ==");
    discovery()
}

fn calls() -> Result<()> {
    let orders = TestUpstream::start_named("orders")?;
    let billing = TestUpstream::start_named("billing")?;
    let fallback = TestUpstream::start()?;
    let proxy = envoy(
        &fallback,
        routes(&[
            ("/orders", "orders"),
            ("/billing", "billing"),
            ("/", "upstream"),
        ]),
        &[("orders", orders.port()), ("billing", billing.port())],
        CALLS_CONFIG,
    )?;
    let as_acme = |path: &str| Request::get(path).header("x-meshguard-tenant", "acme");
    let own = send(proxy.listener_addr(), &as_acme("/orders/42"))?;
    show(
        "acme calls its own service",
        "GET /orders/42 (orders: acme)",
        &own,
        "",
    );
    let cross = send(proxy.listener_addr(), &as_acme("/billing/7"))?;
    show(
        "acme calls globex's service",
        "GET /billing/7 (billing: globex)",
        &cross,
        "",
    );
    ensure!(
        own.status == 200,
        "own service: expected 200, got {}",
        own.status
    );
    ensure!(
        cross.status == 403 && billing.requests().is_empty(),
        "cross-tenant call: expected 403 without reaching billing, got {}",
        cross.status
    );
    let seen = orders.requests();
    ensure!(
        seen.first().and_then(|r| r.header("x-meshguard-tenant")) == Some("acme"),
        "orders did not get the verified tenant"
    );

    let upstream = TestUpstream::start()?;
    let strict = envoy(
        &upstream,
        routes(&[("/", "upstream")]),
        &[],
        UNTRUSTED_CONFIG,
    )?;
    let forged = send(
        strict.listener_addr(),
        &Request::get("/orders/42").header("x-meshguard-tenant", "acme"),
    )?;
    show(
        "forged header, untrusted network",
        "GET /orders/42 x-meshguard-tenant: acme",
        &forged,
        "",
    );
    ensure!(
        forged.status == 401 && upstream.requests().is_empty(),
        "forged header: expected 401, got {}",
        forged.status
    );
    let denied = proxy
        .stat("wasmcustom.meshguard_tenant.denied_cross_tenant")
        .unwrap_or(0);
    println!("  wasmcustom.meshguard_tenant.denied_cross_tenant = {denied}");
    Ok(())
}

/// The service ids in a `/v1/health/service` answer.
fn ids(response: &Response) -> Result<Vec<String>> {
    let body = response.json().context("a JSON health answer")?;
    let Some(entries) = body.as_array() else {
        bail!("expected an array, got {body}");
    };
    let mut ids: Vec<String> = entries
        .iter()
        .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

fn discovery() -> Result<()> {
    let consul = FakeConsul::start()?;
    for (id, tenant) in [("web-a1", "acme"), ("web-a2", "acme"), ("web-g1", "globex")] {
        consul.register(Instance::new(id, "web", "10.0.0.1", 8080).meta("tenant", tenant));
    }
    let upstream = TestUpstream::start()?;
    let proxy = envoy(
        &upstream,
        routes(&[("/", "consul")]),
        &[("consul", consul.port())],
        CONSUL_CONFIG,
    )?;
    let get = |tenant: &str, path: &str| {
        send(
            proxy.listener_addr(),
            &Request::get(path).header("x-meshguard-tenant", tenant),
        )
    };
    println!("  Consul has web-a1, web-a2 (tenant acme) and web-g1 (tenant globex)");
    for tenant in ["acme", "globex"] {
        let response = get(tenant, "/v1/health/service/web")?;
        let seen = ids(&response)?;
        show(
            &format!("{tenant} discovers web"),
            "GET /v1/health/service/web",
            &response,
            &format!(" {seen:?}"),
        );
        let expected: &[&str] = if tenant == "acme" {
            &["web-a1", "web-a2"]
        } else {
            &["web-g1"]
        };
        ensure!(
            seen == expected,
            "{tenant} saw {seen:?}, expected {expected:?}"
        );
    }
    let injection = get(
        "acme",
        "/v1/health/service/web?filter=Service.Meta.tenant%20!%3D%20%22%22%20or%20Service.Service%20%3D%3D%20%22web%22",
    )?;
    let seen = ids(&injection)?;
    show(
        "acme tries to widen the filter",
        "?filter=Service.Meta.tenant != \"\" or ...",
        &injection,
        &format!(" {seen:?}"),
    );
    ensure!(
        seen == ["web-a1", "web-a2"],
        "the injection widened the result: {seen:?}"
    );
    if let Some(last) = consul.requests().last() {
        println!(
            "  Consul received filter: {}",
            last.query_param("filter").unwrap_or("(none)")
        );
    }
    let register = send(
        proxy.listener_addr(),
        &Request::new("PUT", "/v1/agent/service/register")
            .header("x-meshguard-tenant", "acme")
            .body(r#"{"ID":"web-x","Name":"web","Port":9000,"Meta":{"tenant":"globex"}}"#),
    )?;
    show(
        "acme registers into globex",
        "PUT /v1/agent/service/register",
        &register,
        "",
    );
    ensure!(
        register.status == 403 && consul.instances("web").len() == 3,
        "the registration into another tenant was not refused ({})",
        register.status
    );
    Ok(())
}
