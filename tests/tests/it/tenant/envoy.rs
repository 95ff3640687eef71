//! The tenant filter in a real Envoy 1.40 (V8): the properties it reads exist where the
//! host-sim tests assume them (`xds.cluster_name` at request headers, `source.address`, the
//! `jwt_authn` metadata path), spoofed headers are replaced, cross-tenant calls get a 403, and
//! a bad configuration stops Envoy with a line naming the field.
//!
//! Here the identity a `jwt_authn` filter would verify is put in its metadata namespace by
//! Envoy's `set_metadata` filter (the same dynamic metadata at the same path); `identity.rs`
//! runs the real `jwt_authn` and an mTLS listener for SPIFFE.

use std::time::Duration;

use anyhow::{ensure, Result};
use meshguard_tests::{
    send, send_raw, wasm_artifact, Envoy, EnvoyConfig, Request, TestUpstream, WasmFilter,
};

/// Longest wait for a stat that should already be there.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn tenant_filter(config: &str) -> Result<WasmFilter> {
    Ok(WasmFilter::new("tenant", wasm_artifact("meshguard_tenant")?).configuration(config))
}

/// One route list item: `prefix` → `cluster`.
pub fn route(prefix: &str, cluster: &str) -> String {
    format!("- match: {{ prefix: \"{prefix}\" }}\n  route: {{ cluster: {cluster}, timeout: 30s }}")
}

/// Envoy's `set_metadata` filter writing `{"payload": {"tenant": <tenant>}}` into the
/// `envoy.filters.http.jwt_authn` namespace, as `jwt_authn` with `payload_in_metadata:
/// payload` does for a verified token.
pub fn jwt_metadata(tenant: &str) -> String {
    format!(
        r#"- name: envoy.filters.http.set_metadata
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config
    metadata:
    - metadata_namespace: envoy.filters.http.jwt_authn
      value:
        payload:
          tenant: {tenant}"#
    )
}

/// Envoy on `envoy-configs/tenant.yaml.tmpl` with `routes`, the `upstream` cluster and
/// `clusters`, and the filters (YAML items and the tenant filter) in order.
pub fn tenant_envoy(
    upstream: &TestUpstream,
    routes: &[String],
    clusters: &[(&str, u16)],
    before: &[String],
    config: &str,
) -> Result<Envoy> {
    let mut cfg = EnvoyConfig::new("tenant")
        .upstream(upstream.port())
        .var("ROUTES", routes.join("\n"))
        .arg("--component-log-level")
        .arg("wasm:debug");
    for (name, port) in clusters {
        cfg = cfg.cluster(*name, *port);
    }
    for item in before {
        cfg = cfg.http_filter_yaml(item.clone());
    }
    Envoy::start(cfg.wasm_filter(tenant_filter(config)?))
}

const CROSS: &str = r#"{"identity":[{"trusted_header":{"cidrs":["127.0.0.0/8"]}}],
  "service_tenants":{"orders":"acme","billing":"globex"},
  "cross_tenant":{"destination":"cluster_name"}}"#;

#[test]
fn a_cross_tenant_call_is_denied_by_the_cluster_envoy_routed_to() -> Result<()> {
    let orders = TestUpstream::start_named("orders")?;
    let billing = TestUpstream::start_named("billing")?;
    let fallback = TestUpstream::start()?;
    let envoy = tenant_envoy(
        &fallback,
        &[
            route("/orders", "orders"),
            route("/billing", "billing"),
            route("/", "upstream"),
        ],
        &[("orders", orders.port()), ("billing", billing.port())],
        &[],
        CROSS,
    )?;
    let as_acme = |path: &str| Request::get(path).header("x-meshguard-tenant", "acme");
    let ok = send(envoy.listener_addr(), &as_acme("/orders/1"))?;
    ensure!(ok.status == 200, "own service: {ok:?}\n{}", envoy.log());
    let seen = orders.requests();
    ensure!(seen.len() == 1 && seen[0].header("x-meshguard-tenant") == Some("acme"));
    let denied = send(envoy.listener_addr(), &as_acme("/billing/1"))?;
    ensure!(denied.status == 403, "{denied:?}");
    ensure!(
        denied.header("x-meshguard-deny-reason")
            == Some("cross-tenant call: service billing belongs to tenant globex"),
        "{denied:?}"
    );
    ensure!(billing.requests().is_empty(), "billing was reached");
    // The catch-all route goes to the `upstream` cluster: no tenant known, denied by default.
    let unknown = send(envoy.listener_addr(), &as_acme("/other"))?;
    ensure!(unknown.status == 403, "{unknown:?}");
    envoy.wait_for_stat(
        "wasmcustom.meshguard_tenant.denied_cross_tenant",
        |v| v == 1,
        WAIT,
    )?;
    envoy.wait_for_stat(
        "wasmcustom.meshguard_tenant.denied_unknown_destination",
        |v| v == 1,
        WAIT,
    )?;
    envoy.wait_for_stat("wasmcustom.meshguard_tenant.allowed", |v| v == 1, WAIT)?;
    Ok(())
}

#[test]
fn a_spoofed_header_from_an_untrusted_source_is_replaced_by_the_verified_tenant() -> Result<()> {
    let upstream = TestUpstream::start()?;
    // 127.0.0.1 (the test client) is not trusted: the header is only ever stripped.
    let config = r#"{"identity":[{"jwt_claim":{"claim":"tenant"}},{"trusted_header":{"cidrs":["10.0.0.0/8"]}}]}"#;
    let envoy = tenant_envoy(
        &upstream,
        &[route("/", "upstream")],
        &[],
        &[jwt_metadata("acme")],
        config,
    )?;
    let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Meshguard-Tenant: victim\r\nx-meshguard-tenant: victim2\r\nX-MESHGUARD-TENANT: victim3\r\nConnection: close\r\n\r\n";
    let response = send_raw(envoy.listener_addr(), raw)?;
    ensure!(response.status == 200, "{response:?}\n{}", envoy.log());
    let seen = upstream.requests();
    ensure!(seen.len() == 1);
    let tenants: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-meshguard-tenant"))
        .map(|(_, v)| v.as_str())
        .collect();
    ensure!(tenants == ["acme"], "upstream saw {tenants:?}");
    envoy.wait_for_stat(
        "wasmcustom.meshguard_tenant.tenant_header_removed",
        |v| v == 1,
        WAIT,
    )?;
    Ok(())
}

/// A client may send any octet in a header value: one that is not UTF-8 neither stops the
/// worker's VM nor hides a tenant header that comes after it.
#[test]
fn a_header_value_that_is_not_utf8_hides_no_tenant_header() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let config = r#"{"identity":[{"trusted_header":{"cidrs":["127.0.0.0/8"]}}]}"#;
    let envoy = tenant_envoy(&upstream, &[route("/", "upstream")], &[], &[], config)?;
    let request = |headers: &[u8]| {
        let mut raw = b"GET /x HTTP/1.1\r\nHost: a\r\n".to_vec();
        raw.extend_from_slice(headers);
        raw.extend_from_slice(b"Connection: close\r\n\r\n");
        send_raw(envoy.listener_addr(), &raw)
    };
    let response = request(b"x-junk: caf\xe9\r\nx-meshguard-tenant: acme\r\n")?;
    ensure!(response.status == 200, "{response:?}\n{}", envoy.log());
    let seen = upstream.requests();
    ensure!(seen.len() == 1 && seen[0].header("x-meshguard-tenant") == Some("acme"));
    // Envoy passed the octet on (the SDK's `String` header reader would have trapped on it).
    ensure!(seen[0]
        .header("x-junk")
        .is_some_and(|v| v.starts_with("caf") && v != "caf"));
    // A second copy behind the junk is seen: duplicated trusted headers are refused.
    let response =
        request(b"x-meshguard-tenant: acme\r\nx-junk: caf\xe9\r\nx-meshguard-tenant: globex\r\n")?;
    ensure!(response.status == 403, "{response:?}\n{}", envoy.log());
    ensure!(
        response.header("x-meshguard-deny-reason")
            == Some("the tenant header appears more than once"),
        "{response:?}"
    );
    // A tenant that is not UTF-8 is an invalid one.
    let response = request(b"x-junk: caf\xe9\r\nx-meshguard-tenant: ac\xe9me\r\n")?;
    ensure!(response.status == 403, "{response:?}\n{}", envoy.log());
    ensure!(
        upstream.requests().len() == 1,
        "only the first was forwarded"
    );
    Ok(())
}

#[test]
fn without_a_verified_tenant_the_spoofed_header_gets_a_401() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let config = r#"{"identity":[{"jwt_claim":{"claim":"tenant"}},{"trusted_header":{"cidrs":["10.0.0.0/8"]}}]}"#;
    let envoy = tenant_envoy(&upstream, &[route("/", "upstream")], &[], &[], config)?;
    let response = send(
        envoy.listener_addr(),
        &Request::get("/x").header("x-meshguard-tenant", "acme"),
    )?;
    ensure!(response.status == 401, "{response:?}");
    ensure!(response.header("x-meshguard-deny-reason") == Some("no verified tenant"));
    ensure!(upstream.requests().is_empty());
    Ok(())
}

#[test]
fn envoy_refuses_a_bad_configuration_naming_the_field() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let config = r#"{"identity":[{"trusted_header":{"cidrs":["10.0.0.1/8"]}}]}"#;
    let started = tenant_envoy(&upstream, &[route("/", "upstream")], &[], &[], config);
    let Err(error) = started else {
        anyhow::bail!("Envoy started with a bad configuration");
    };
    let text = format!("{error:#}");
    ensure!(
        text.contains(
            "meshguard_tenant: invalid configuration: identity[0].trusted_header.cidrs[0]: `10.0.0.1/8`: entries must have no host bits set"
        ),
        "{text}"
    );
    Ok(())
}

#[allow(dead_code)]
#[path = "../../../../examples/bench/src/tenant.rs"]
mod bench_variants;

#[test]
fn the_benchmark_variants_let_the_tenants_requests_through() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let variants =
        bench_variants::variants(|| EnvoyConfig::new("harness").upstream(upstream.port()))?;
    ensure!(variants.len() == 2, "the tenant module is built");
    for (name, _, config) in variants {
        let envoy = Envoy::start(config)?;
        let response = send(envoy.listener_addr(), &Request::get("/bench"))?;
        ensure!(
            response.status == 200,
            "{name}: {response:?}\n{}",
            envoy.log()
        );
        let stat = if name == bench_variants::RBAC {
            "http.main.rbac.allowed"
        } else {
            "wasmcustom.meshguard_tenant.allowed"
        };
        envoy.wait_for_stat(stat, |v| v == 1, WAIT)?;
    }
    Ok(())
}

#[path = "../../../../examples/demo/src/tenant.rs"]
mod demo_tenant;

#[test]
fn the_demo_part_runs_and_checks_itself() -> Result<()> {
    demo_tenant::run()
}
