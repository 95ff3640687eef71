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

/// A minimal HTTP/2 client with prior knowledge (h2c): the listener's codec is AUTO, and only
/// HTTP/2 lets a client end a request with trailers that Envoy passes to filters by default
/// (HTTP/1 trailers need `enable_trailers`). Headers go as HPACK literals without indexing
/// or Huffman; the answer is read until the stream ends and its DATA returned (the status
/// would need an HPACK decoder; the tests read Consul's state instead).
mod h2c {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use anyhow::{bail, Result};

    fn int(out: &mut Vec<u8>, prefix_bits: u32, first: u8, value: usize) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    fn block(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in headers {
            out.push(0x00);
            int(&mut out, 7, 0, name.len());
            out.extend_from_slice(name.as_bytes());
            int(&mut out, 7, 0, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Sends `headers`, `body` in one DATA frame, then `trailers` ending the stream; returns
    /// the response DATA.
    pub fn send_with_trailers(
        addr: SocketAddr,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> Result<Vec<u8>> {
        let mut tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        out.extend(frame(1, 0x4, 1, &block(headers)));
        out.extend(frame(0, 0, 1, body));
        out.extend(frame(1, 0x5, 1, &block(trailers)));
        tcp.write_all(&out)?;
        let mut data = Vec::new();
        loop {
            let mut head = [0u8; 9];
            tcp.read_exact(&mut head)?;
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload)?;
            match (kind, stream) {
                (4, 0) if flags & 1 == 0 => tcp.write_all(&frame(4, 1, 0, &[]))?,
                (0, 1) => data.extend_from_slice(&payload),
                (3, 1) => bail!("stream reset: {payload:?}"),
                (7, 0) => bail!("goaway: {payload:?}"),
                _ => {}
            }
            if stream == 1 && matches!(kind, 0 | 1) && flags & 1 == 1 {
                return Ok(data);
            }
        }
    }
}

#[test]
fn a_registration_ended_by_http2_trailers_is_still_rewritten_or_refused() -> Result<()> {
    let s = Setup::start()?;
    let register = |body: Value| {
        let body = body.to_string();
        h2c::send_with_trailers(
            s.envoy.listener_addr(),
            &[
                (":method", "PUT"),
                (":scheme", "http"),
                (":path", "/v1/agent/service/register"),
                (":authority", "consul"),
                ("x-meshguard-tenant", "acme"),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
            &[("x-checksum", "1")],
        )
    };
    let claimed = register(
        json!({"ID": "api-1", "Name": "api", "Port": 9000, "Meta": {"tenant": "globex"}}),
    )?;
    ensure!(
        s.consul.instances("api").is_empty(),
        "registered anyway: {:?}",
        s.consul.instances("api")
    );
    let answer = String::from_utf8_lossy(&claimed).into_owned();
    ensure!(
        answer.contains("the registration claims another tenant"),
        "{answer}\n{}",
        s.envoy.log()
    );
    let plain = register(json!({"ID": "api-1", "Name": "api", "Port": 9000}))?;
    let instances = s.consul.instances("api");
    ensure!(
        instances.len() == 1,
        "{instances:?} {}",
        String::from_utf8_lossy(&plain)
    );
    ensure!(instances[0].id == "acme.api-1", "{instances:?}");
    ensure!(
        instances[0].meta.get("tenant").map(String::as_str) == Some("acme"),
        "{instances:?}"
    );
    Ok(())
}

#[test]
fn squatting_names_and_dangerous_checks_never_reach_consul() -> Result<()> {
    let s = Setup::start()?;
    let register = |body: Value| {
        s.send(
            "acme",
            Request::new("PUT", "/v1/agent/service/register").body(body.to_string()),
        )
    };
    let before = s.consul.requests().len();
    for (attack, body, why) in [
        (
            "another tenant's name, upper case",
            json!({"ID": "b-1", "Name": "BILLING", "Port": 1}),
            "service billing belongs to another tenant",
        ),
        (
            "metadata-service check",
            json!({"Name": "api", "Address": "10.0.0.9", "Port": 80,
                   "Check": {"HTTP": "http://169.254.169.254/latest/meta-data/", "Interval": "10s"}}),
            "the health check is not allowed",
        ),
        (
            "script check",
            json!({"Name": "api", "Check": {"Args": ["/bin/sh", "-c", "id"], "Interval": "10s"}}),
            "the health check is not allowed",
        ),
        (
            "connect proxy",
            json!({"Name": "api", "Kind": "connect-proxy",
                   "Proxy": {"DestinationServiceName": "billing"}}),
            "the registration has a field that is not allowed: Kind",
        ),
    ] {
        let response = register(body)?;
        ensure!(response.status == 403, "{attack}: {response:?}");
        let reason = response.header("x-meshguard-deny-reason").unwrap_or("");
        ensure!(reason.starts_with(why), "{attack}: {reason}");
    }
    ensure!(
        s.consul.requests().len() == before,
        "Consul was asked: {:?}",
        &s.consul.requests()[before..]
    );
    let ok = register(
        json!({"ID": "api-1", "Name": "api", "Address": "10.0.0.9", "Port": 80,
        "Check": {"CheckID": "api-http", "HTTP": "http://10.0.0.9:80/health", "Interval": "10s"}}),
    )?;
    ensure!(ok.status == 200, "{ok:?}\n{}", s.envoy.log());
    ensure!(s.consul.instances("api").len() == 1);
    Ok(())
}
