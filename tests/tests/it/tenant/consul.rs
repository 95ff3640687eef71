//! The tenant filter in a real Envoy 1.40 in front of the fake Consul: every path routes to the
//! cluster `consul` (the filter's `consul.clusters`, so `//v1/…` reaches the filter too). The
//! caller's tenant comes from the header, trusted from 127.0.0.0/8 (the test client).

use anyhow::{ensure, Context, Result};
use meshguard_fake_consul::{FakeConsul, Instance};
use meshguard_tests::{send, Envoy, Request, Response, TestUpstream};
use serde_json::{json, Value};

use crate::tenant::envoy::{route, tenant_envoy, WAIT};

const CONFIG: &str = r#"{"identity":[{"trusted_header":{"cidrs":["127.0.0.0/8"]}}],
  "service_tenants":{"orders":"acme","billing":"globex"},
  "consul":{"clusters":["consul"],"kv_prefix":"tenants/{tenant}/"}}"#;

struct Setup {
    consul: FakeConsul,
    envoy: Envoy,
    _upstream: TestUpstream,
}

impl Setup {
    fn start() -> Result<Self> {
        let consul = FakeConsul::start()?;
        for (id, service, tenant) in [
            ("web-a1", "web", "acme"),
            ("web-a2", "web", "acme"),
            ("web-g1", "web", "globex"),
            ("orders-1", "orders", "acme"),
            ("billing-1", "billing", "globex"),
        ] {
            consul.register(Instance::new(id, service, "10.0.0.1", 8080).meta("tenant", tenant));
        }
        let upstream = TestUpstream::start()?;
        let envoy = tenant_envoy(
            &upstream,
            &[route("/", "consul")],
            &[("consul", consul.port())],
            &[],
            CONFIG,
        )?;
        Ok(Self {
            consul,
            envoy,
            _upstream: upstream,
        })
    }

    fn send(&self, tenant: &str, request: Request) -> Result<Response> {
        send(
            self.envoy.listener_addr(),
            &request.header("x-meshguard-tenant", tenant),
        )
    }

    fn get(&self, tenant: &str, path: &str) -> Result<Response> {
        self.send(tenant, Request::get(path))
    }
}

/// The service ids of a `/v1/health/service` answer.
fn ids(response: &Response) -> Result<Vec<String>> {
    let body = response.json().context("health body")?;
    let entries = body.as_array().context("an array")?;
    let mut ids: Vec<String> = entries
        .iter()
        .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

#[test]
fn a_tenant_discovers_only_its_instances() -> Result<()> {
    let s = Setup::start()?;
    let acme = s.get("acme", "/v1/health/service/web")?;
    ensure!(acme.status == 200, "{acme:?}\n{}", s.envoy.log());
    ensure!(ids(&acme)? == ["web-a1", "web-a2"], "{:?}", ids(&acme)?);
    let globex = s.get("globex", "/v1/health/service/web?passing")?;
    ensure!(ids(&globex)? == ["web-g1"], "{:?}", ids(&globex)?);
    // Consul saw the tenant clause, not the client's query alone.
    let seen = s.consul.requests();
    let last = seen.last().context("consul was asked")?;
    ensure!(
        last.query_param("filter") == Some(r#"Service.Meta.tenant == "globex""#),
        "{last:?}"
    );
    ensure!(last.query.iter().any(|(k, _)| k == "passing"), "{last:?}");
    s.envoy.wait_for_stat(
        "wasmcustom.meshguard_tenant.consul_query_scoped",
        |v| v == 2,
        WAIT,
    )?;
    Ok(())
}

#[test]
fn filter_injection_returns_only_the_tenants_instances_or_is_refused() -> Result<()> {
    let s = Setup::start()?;
    // `or Service.Meta.tenant != ""` is wrapped: it can only narrow the tenant clause. The
    // fake answers 400 if it cannot parse the result, never more instances.
    let widened = s.get(
        "acme",
        "/v1/health/service/web?filter=Service.Meta.tenant%20!%3D%20%22%22%20or%20Service.Service%20%3D%3D%20%22web%22",
    )?;
    ensure!(widened.status == 200, "{widened:?}");
    ensure!(
        ids(&widened)? == ["web-a1", "web-a2"],
        "{:?}",
        ids(&widened)?
    );
    for (attack, path) in [
        ("closing quote", "/v1/health/service/web?filter=%22%20or%201%3D%3D1"),
        (
            "unbalanced parenthesis",
            "/v1/health/service/web?filter=Service.Service%20%3D%3D%20%22web%22)%20or%20(Service.ID%20!%3D%20%22%22",
        ),
        ("encoded dot segments", "/v1/health/service/%2e%2e/%2e%2e/acl/tokens"),
        ("double slash", "//v1/health/service/web"),
        ("acl", "/v1/acl/tokens"),
        ("another tenant's service", "/v1/health/service/billing"),
    ] {
        let before = s.consul.requests().len();
        let response = s.get("acme", path)?;
        ensure!(response.status == 403, "{attack}: {response:?}");
        ensure!(
            response.header("x-meshguard-deny-reason").is_some(),
            "{attack}: {response:?}"
        );
        ensure!(s.consul.requests().len() == before, "{attack}: Consul was asked");
    }
    Ok(())
}

#[test]
fn a_registration_lands_in_the_callers_tenant_or_is_refused() -> Result<()> {
    let s = Setup::start()?;
    let register = |tenant: &str, body: Value| {
        s.send(
            tenant,
            Request::new("PUT", "/v1/agent/service/register").body(body.to_string()),
        )
    };
    let claimed = register(
        "acme",
        json!({"ID": "api-1", "Name": "api", "Port": 9000, "Meta": {"tenant": "globex"}}),
    )?;
    ensure!(claimed.status == 403, "{claimed:?}");
    ensure!(
        claimed.header("x-meshguard-deny-reason") == Some("the registration claims another tenant")
    );
    ensure!(s.consul.instances("api").is_empty(), "registered anyway");
    let plain = register(
        "acme",
        json!({"ID": "api-1", "Name": "api", "Port": 9000, "Meta": {"version": "3"}}),
    )?;
    ensure!(plain.status == 200, "{plain:?}\n{}", s.envoy.log());
    let instances = s.consul.instances("api");
    ensure!(instances.len() == 1, "{instances:?}");
    ensure!(instances[0].id == "acme.api-1", "{instances:?}");
    ensure!(
        instances[0].meta.get("tenant").map(String::as_str) == Some("acme"),
        "{instances:?}"
    );
    ensure!(instances[0].meta.get("version").map(String::as_str) == Some("3"));
    // Another tenant cannot deregister it: its id lands in that tenant's namespace.
    let other = s.send(
        "globex",
        Request::new("PUT", "/v1/agent/service/deregister/acme.api-1"),
    )?;
    ensure!(
        s.consul.instances("api").len() == 1,
        "deregistered by globex: {other:?}"
    );
    let own = s.send(
        "acme",
        Request::new("PUT", "/v1/agent/service/deregister/api-1"),
    )?;
    ensure!(own.status == 200, "{own:?}");
    ensure!(s.consul.instances("api").is_empty(), "still registered");
    Ok(())
}

#[test]
fn the_catalog_services_listing_is_filtered_to_the_tenant() -> Result<()> {
    let s = Setup::start()?;
    let response = s.get("acme", "/v1/catalog/services")?;
    ensure!(response.status == 200, "{response:?}\n{}", s.envoy.log());
    let body = response.json()?;
    let names: Vec<&String> = body.as_object().context("an object")?.keys().collect();
    ensure!(names == ["orders"], "{body}");
    let response = s.get("globex", "/v1/catalog/services")?;
    let body = response.json()?;
    let names: Vec<&String> = body.as_object().context("an object")?.keys().collect();
    ensure!(names == ["billing"], "{body}");
    Ok(())
}

#[test]
fn kv_stays_under_the_tenant_prefix() -> Result<()> {
    let s = Setup::start()?;
    s.consul.kv_put("tenants/globex/secret", b"globex-only");
    let put = s.send(
        "acme",
        Request::new("PUT", "/v1/kv/tenants/acme/config").body("v1"),
    )?;
    ensure!(put.status == 200, "{put:?}");
    ensure!(s.consul.kv_get("tenants/acme/config").as_deref() == Some(&b"v1"[..]));
    let stolen = s.get("acme", "/v1/kv/tenants/globex/secret?raw")?;
    ensure!(stolen.status == 403, "{stolen:?}");
    ensure!(!stolen.body_str().contains("globex-only"));
    Ok(())
}
