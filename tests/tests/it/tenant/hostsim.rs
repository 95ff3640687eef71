//! The tenant filter (`meshguard_tenant.wasm`) in host-sim: every identity source, header
//! spoofing, cross-tenant denial with the static and the registry map, the Consul API scoping
//! (path, filter, catalog body, registration body, KV, tokens) and refused configurations.

use host_sim::{Host, LogLevel, PropertyValue, Request, Response, StreamId, StreamView};
use serde_json::{json, Value};

use crate::support::{filter_host, module};

pub const WASM: &str = "meshguard_tenant";
pub const JWT_PROPERTY: &str =
    "metadata.filter_metadata.envoy.filters.http.jwt_authn.payload.tenant";
pub const REGISTRY_KEY: &str = "meshguard.registry.service_tenants.v1";

/// A configured host with one worker behind Envoy's base VM.
pub fn tenant_host(config: &str) -> Host {
    filter_host(WASM, config, 1)
}

pub fn send(host: &mut Host, request: Request) -> StreamView {
    let id: StreamId = host.send(1, request).unwrap();
    host.stream(id).unwrap().clone()
}

pub fn counter(host: &Host, name: &str) -> i64 {
    host.metric(&format!("meshguard_tenant.{name}"))
        .map_or(0, |m| m.value)
}

/// The `allowed` counter, which each VM updates on its one-second tick: one tick later.
pub fn allowed(host: &mut Host) -> i64 {
    host.advance(std::time::Duration::from_secs(1)).unwrap();
    counter(host, "allowed")
}

/// The request as the upstream got it (panics when the filter did not forward it).
pub fn forwarded(view: &StreamView) -> &host_sim::UpstreamRequest {
    view.upstream_request
        .as_ref()
        .unwrap_or_else(|| panic!("not forwarded: {:?}", view.local_reply))
}

/// Every value of `name` the upstream got.
pub fn upstream_values(view: &StreamView, name: &str) -> Vec<String> {
    forwarded(view)
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

pub fn from(address: &str, request: Request) -> Request {
    request.property("source.address", PropertyValue::String(address.into()))
}

pub fn reason(view: &StreamView) -> &str {
    view.response_header("x-meshguard-deny-reason")
        .unwrap_or("")
}

const TRUSTED: &str = r#"{"trusted_header":{"cidrs":["10.0.0.0/8"]}}"#;

fn trusted_config(extra: &str) -> String {
    format!(r#"{{"identity":[{TRUSTED}]{extra}}}"#)
}

// --- identity -------------------------------------------------------------------------------

#[test]
fn spiffe_san_names_the_tenant_and_replaces_a_spoofed_header() {
    let mut host = tenant_host(
        r#"{"identity":[{"spiffe":{"pattern":"spiffe://{domain}/tenant/{tenant}/*"}}]}"#,
    );
    let view = send(
        &mut host,
        Request::get("/orders")
            .header("x-meshguard-tenant", "victim")
            .property(
                "connection.uri_san_peer_certificate",
                PropertyValue::String("spiffe://cluster.local/tenant/acme/ns/web/sa/web".into()),
            ),
    );
    assert_eq!(view.status(), Some(200));
    assert_eq!(upstream_values(&view, "x-meshguard-tenant"), ["acme"]);
    assert_eq!(allowed(&mut host), 1);
    assert_eq!(counter(&host, "tenant_header_removed"), 1);
}

#[test]
fn a_spiffe_id_outside_the_pattern_is_no_identity() {
    let mut host = tenant_host(
        r#"{"identity":[{"spiffe":{"pattern":"spiffe://prod.example/tenant/{tenant}/*"}}]}"#,
    );
    for san in [
        "spiffe://other.example/tenant/acme/web",
        "spiffe://prod.example/team/acme/web",
        "spiffe://prod.example/tenant/acme",
    ] {
        let view = send(
            &mut host,
            Request::get("/").property(
                "connection.uri_san_peer_certificate",
                PropertyValue::String(san.into()),
            ),
        );
        assert_eq!(view.status(), Some(401), "{san}");
        assert!(view.upstream_request.is_none(), "{san}");
        assert_eq!(reason(&view), "no verified tenant");
    }
    // A SAN that matches but names an invalid tenant is denied, never passed on.
    let view = send(
        &mut host,
        Request::get("/").property(
            "connection.uri_san_peer_certificate",
            PropertyValue::String("spiffe://prod.example/tenant/Acme/web".into()),
        ),
    );
    assert_eq!(view.status(), Some(403));
    assert!(
        reason(&view).starts_with("spiffe_san carries an invalid tenant"),
        "{}",
        reason(&view)
    );
    assert_eq!(counter(&host, "denied_no_identity"), 3);
    assert_eq!(counter(&host, "denied_invalid_identity"), 1);
}

#[test]
fn a_jwt_claim_from_jwt_authn_metadata_names_the_tenant() {
    let mut host = tenant_host(r#"{"identity":[{"jwt_claim":{"claim":"tenant"}}]}"#);
    let view = send(
        &mut host,
        Request::get("/")
            .header("x-meshguard-tenant", "victim")
            .property(JWT_PROPERTY, PropertyValue::String("globex".into())),
    );
    assert_eq!(upstream_values(&view, "x-meshguard-tenant"), ["globex"]);
    // Without the metadata (no verified JWT) the header alone is worth nothing.
    let view = send(
        &mut host,
        Request::get("/").header("x-meshguard-tenant", "globex"),
    );
    assert_eq!(view.status(), Some(401));
    assert!(view.upstream_request.is_none());
}

#[test]
fn the_tenant_header_is_believed_only_from_trusted_networks() {
    let mut host = tenant_host(&trusted_config(""));
    let view = send(
        &mut host,
        from(
            "10.1.2.3:4000",
            Request::get("/").header("x-meshguard-tenant", "acme"),
        ),
    );
    assert_eq!(upstream_values(&view, "x-meshguard-tenant"), ["acme"]);
    let view = send(
        &mut host,
        from(
            "192.168.1.9:4000",
            Request::get("/").header("x-meshguard-tenant", "acme"),
        ),
    );
    assert_eq!(view.status(), Some(401));
    assert!(view.upstream_request.is_none());
    assert_eq!(counter(&host, "tenant_header_removed"), 1);
    assert_eq!(counter(&host, "denied_no_identity"), 1);
}

#[test]
fn sources_are_tried_in_order_and_the_first_that_applies_wins() {
    let mut host = tenant_host(&format!(
        r#"{{"identity":[{{"spiffe":{{"pattern":"spiffe://{{domain}}/tenant/{{tenant}}/*"}}}},{{"jwt_claim":{{"claim":"tenant"}}}},{TRUSTED}]}}"#
    ));
    let all = || {
        from(
            "10.0.0.1:1",
            Request::get("/").header("x-meshguard-tenant", "header-t"),
        )
        .property(JWT_PROPERTY, PropertyValue::String("jwt-t".into()))
    };
    let view = send(
        &mut host,
        all().property(
            "connection.uri_san_peer_certificate",
            PropertyValue::String("spiffe://d/tenant/san-t/x".into()),
        ),
    );
    assert_eq!(upstream_values(&view, "x-meshguard-tenant"), ["san-t"]);
    let view = send(&mut host, all());
    assert_eq!(upstream_values(&view, "x-meshguard-tenant"), ["jwt-t"]);
}

#[test]
fn no_identity_can_be_an_explicit_anonymous_tenant_or_a_403() {
    let mut host = tenant_host(&trusted_config(
        r#","no_identity":{"anonymous":{"tenant":"public"}}"#,
    ));
    let view = send(
        &mut host,
        from(
            "8.8.8.8:1",
            Request::get("/").header("x-meshguard-tenant", "acme"),
        ),
    );
    assert_eq!(upstream_values(&view, "x-meshguard-tenant"), ["public"]);
    assert_eq!(counter(&host, "anonymous"), 1);
    let mut host = host_403();
    let view = send(&mut host, from("8.8.8.8:1", Request::get("/")));
    assert_eq!(view.status(), Some(403));
}

fn host_403() -> Host {
    tenant_host(&trusted_config(r#","no_identity":{"deny":{"status":403}}"#))
}

// --- cross-tenant ---------------------------------------------------------------------------

fn cross_config(destination: &str, extra: &str) -> String {
    trusted_config(&format!(
        r#","service_tenants":{{"orders":"acme","billing":"globex","auth":"platform"}},"cross_tenant":{{"destination":{destination},"shared_services":["auth"]{extra}}}"#
    ))
}

fn as_tenant(tenant: &str, request: Request) -> Request {
    from(
        "10.0.0.7:1234",
        request.header("x-meshguard-tenant", tenant),
    )
}

fn to_cluster(cluster: &str) -> Request {
    Request::get("/").property("xds.cluster_name", PropertyValue::String(cluster.into()))
}

#[test]
fn a_call_to_another_tenants_service_is_denied_with_a_reason() {
    let mut host = tenant_host(&cross_config(r#""cluster_name""#, ""));
    let view = send(&mut host, as_tenant("acme", to_cluster("orders")));
    assert_eq!(view.status(), Some(200));
    let view = send(&mut host, as_tenant("acme", to_cluster("billing")));
    assert_eq!(view.status(), Some(403));
    assert!(view.upstream_request.is_none());
    assert_eq!(
        reason(&view),
        "cross-tenant call: service billing belongs to tenant globex"
    );
    // Shared services are open to every tenant.
    assert_eq!(
        send(&mut host, as_tenant("acme", to_cluster("auth"))).status(),
        Some(200)
    );
    // Unknown destinations are denied by default...
    let view = send(&mut host, as_tenant("acme", to_cluster("stray")));
    assert_eq!(view.status(), Some(403));
    assert_eq!(
        reason(&view),
        "unknown destination: service stray has no tenant"
    );
    assert_eq!(counter(&host, "denied_cross_tenant"), 1);
    assert_eq!(counter(&host, "denied_unknown_destination"), 1);
    assert_eq!(allowed(&mut host), 2);
    // ... and let through when configured so.
    let mut host = tenant_host(&cross_config(
        r#""cluster_name""#,
        r#","unknown_destination":"allow""#,
    ));
    assert_eq!(
        send(&mut host, as_tenant("acme", to_cluster("stray"))).status(),
        Some(200)
    );
    assert_eq!(
        send(&mut host, as_tenant("acme", to_cluster("billing"))).status(),
        Some(403)
    );
}

#[test]
fn the_destination_can_come_from_the_authority_or_a_header() {
    let mut host = tenant_host(&cross_config(
        r#"{"authority":{"strip_suffixes":[".service.consul"]}}"#,
        "",
    ));
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::get("/").set_header(":authority", "billing.service.consul:8080"),
        ),
    );
    assert_eq!(view.status(), Some(403));
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::get("/").set_header(":authority", "Orders.service.consul"),
        ),
    );
    assert_eq!(view.status(), Some(200));
    let mut host = tenant_host(&cross_config(r#"{"header":"x-destination"}"#, ""));
    let view = send(
        &mut host,
        as_tenant(
            "globex",
            Request::get("/").header("x-destination", "billing"),
        ),
    );
    assert_eq!(view.status(), Some(200));
    let view = send(&mut host, as_tenant("globex", Request::get("/")));
    assert_eq!(view.status(), Some(403));
    assert_eq!(reason(&view), "unknown destination");
}

#[test]
fn the_registry_map_in_shared_data_is_read_and_follows_updates_within_a_tick() {
    let config = trusted_config(
        r#","registry_service_tenants":true,"service_tenants":{"pinned":"acme"},"cross_tenant":{"destination":"cluster_name"}"#,
    );
    let mut host = tenant_host(&config);
    let tick = |host: &mut Host| host.advance(std::time::Duration::from_secs(1)).unwrap();
    // Nothing published yet: unknown.
    assert_eq!(
        send(&mut host, as_tenant("acme", to_cluster("web"))).status(),
        Some(403)
    );
    // Each VM re-reads the map on its one-second tick, not per request.
    host.set_shared_data(REGISTRY_KEY, br#"{"web":"acme","pinned":"globex"}"#);
    tick(&mut host);
    assert_eq!(
        send(&mut host, as_tenant("acme", to_cluster("web"))).status(),
        Some(200)
    );
    // The static map wins over the registry.
    assert_eq!(
        send(&mut host, as_tenant("acme", to_cluster("pinned"))).status(),
        Some(200)
    );
    host.set_shared_data(REGISTRY_KEY, br#"{"web":"globex"}"#);
    tick(&mut host);
    let view = send(&mut host, as_tenant("acme", to_cluster("web")));
    assert_eq!(view.status(), Some(403));
    assert_eq!(
        reason(&view),
        "cross-tenant call: service web belongs to tenant globex"
    );
    // A map that does not parse is ignored (counted), never trusted.
    host.set_shared_data(REGISTRY_KEY, b"{not json");
    tick(&mut host);
    assert_eq!(
        send(&mut host, as_tenant("globex", to_cluster("web"))).status(),
        Some(403)
    );
    assert_eq!(counter(&host, "registry_invalid"), 1);
    // Parsed once per token: later ticks with the same bad map do not count it again.
    tick(&mut host);
    assert_eq!(
        send(&mut host, as_tenant("globex", to_cluster("web"))).status(),
        Some(403)
    );
    assert_eq!(counter(&host, "registry_invalid"), 1);
}

// --- Consul API -----------------------------------------------------------------------------

pub fn consul_config(extra: &str) -> String {
    trusted_config(&format!(
        r#","service_tenants":{{"web":"acme","db":"acme","billing":"globex"}},"consul":{{"kv_prefix":"tenants/{{tenant}}/"{extra}}}"#
    ))
}

pub fn path_of(view: &StreamView) -> String {
    forwarded(view).header(":path").unwrap_or("").to_owned()
}

/// The `filter` parameter the upstream got, decoded.
pub fn filter_of(view: &StreamView) -> String {
    let path = path_of(view);
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let raw = query
        .split('&')
        .find_map(|p| p.strip_prefix("filter="))
        .unwrap_or_else(|| panic!("no filter in {path}"));
    percent_decode(raw)
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn discovery_queries_get_the_tenant_clause_around_the_user_filter() {
    let mut host = tenant_host(&consul_config(""));
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::get("/v1/health/service/web?passing&index=7"),
        ),
    );
    assert_eq!(
        path_of(&view),
        "/v1/health/service/web?passing&index=7&filter=Service.Meta.tenant%20%3D%3D%20%22acme%22"
    );
    assert_eq!(filter_of(&view), r#"Service.Meta.tenant == "acme""#);
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::get("/v1/catalog/service/web?filter=ServiceTags%20contains%20%22v1%22"),
        ),
    );
    assert_eq!(
        filter_of(&view),
        r#"(ServiceMeta.tenant == "acme") and (ServiceTags contains "v1")"#
    );
    assert_eq!(counter(&host, "consul_query_scoped"), 2);
    // A service the tenant does not own is refused before Consul is asked.
    let view = send(
        &mut host,
        as_tenant("acme", Request::get("/v1/health/service/billing")),
    );
    assert_eq!(view.status(), Some(403));
    assert_eq!(reason(&view), "service billing belongs to another tenant");
}

#[test]
fn the_catalog_services_listing_is_cut_to_the_tenant() {
    let mut host = tenant_host(&consul_config(""));
    host.set_upstream(|req| {
        assert_eq!(
            req.header("accept-encoding"),
            None,
            "the body must come back plain"
        );
        Response::new(200)
            .header("content-type", "application/json")
            .header("content-length", "65")
            .body(r#"{"consul":[],"web":["v1"],"db":[],"billing":["x"],"unowned":[]}"#)
    });
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::get("/v1/catalog/services").header("accept-encoding", "gzip"),
        ),
    );
    assert_eq!(view.status(), Some(200));
    let body: Value = serde_json::from_slice(&view.response_body).unwrap();
    assert_eq!(body, json!({"web": ["v1"], "db": []}));
    assert_eq!(view.response_header("content-length"), None);
    assert_eq!(counter(&host, "consul_catalog_filtered"), 1);
    // An error from Consul passes as it is.
    host.set_upstream(|_| Response::new(500).body("rpc error"));
    let view = send(
        &mut host,
        as_tenant("acme", Request::get("/v1/catalog/services")),
    );
    assert_eq!(
        (view.status(), view.body_str().as_str()),
        (Some(500), "rpc error")
    );
    // A 200 the filter cannot read is shown as an empty listing (fail closed).
    host.set_upstream(|_| Response::new(200).body(r#"{"billing":["x"]"#));
    let view = send(
        &mut host,
        as_tenant("acme", Request::get("/v1/catalog/services")),
    );
    assert_eq!(view.body_str(), "{}");
}

#[test]
fn registration_is_forced_into_the_callers_tenant_and_id_namespace() {
    let mut host = tenant_host(&consul_config(""));
    let body = json!({"ID": "web-1", "Name": "web", "Port": 8080, "Meta": {"version": "2"}});
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::new("PUT", "/v1/agent/service/register")
                .header("content-length", &body.to_string().len().to_string())
                .body(body.to_string()),
        ),
    );
    assert_eq!(view.status(), Some(200));
    let up = forwarded(&view);
    assert_eq!(up.header("content-length"), None);
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(
        sent,
        json!({"ID": "acme.web-1", "Name": "web", "Port": 8080, "Meta": {"version": "2", "tenant": "acme"}})
    );
    assert_eq!(counter(&host, "consul_registration_rewritten"), 1);
    // Deregistration is moved into the same namespace: a tenant only reaches its own ids.
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::new("PUT", "/v1/agent/service/deregister/web-1"),
        ),
    );
    assert_eq!(path_of(&view), "/v1/agent/service/deregister/acme.web-1");
    let view = send(
        &mut host,
        as_tenant(
            "globex",
            Request::new("PUT", "/v1/agent/service/deregister/acme.web-1"),
        ),
    );
    assert_eq!(
        path_of(&view),
        "/v1/agent/service/deregister/globex.acme.web-1"
    );
}

#[test]
fn a_registration_claiming_another_tenant_is_refused() {
    let mut host = tenant_host(&consul_config(""));
    let body = json!({"Name": "web", "Meta": {"tenant": "globex"}}).to_string();
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::new("PUT", "/v1/agent/service/register").body(body),
        ),
    );
    assert_eq!(view.status(), Some(403));
    assert_eq!(reason(&view), "the registration claims another tenant");
    let up = view.upstream_request.as_ref();
    assert!(
        up.is_none_or(|u| u.body.is_empty()),
        "no body reached Consul: {up:?}"
    );
    // Without scoped ids deregistration is refused outright.
    let mut host = tenant_host(&consul_config(r#","scope_service_ids":false"#));
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::new("PUT", "/v1/agent/service/deregister/web-1"),
        ),
    );
    assert_eq!(view.status(), Some(403));
    let body = json!({"ID": "web-1", "Name": "web"}).to_string();
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::new("PUT", "/v1/agent/service/register").body(body),
        ),
    );
    let sent: Value = serde_json::from_slice(&forwarded(&view).body).unwrap();
    assert_eq!(sent["ID"], "web-1");
    assert_eq!(sent["Meta"]["tenant"], "acme");
}

#[test]
fn kv_is_confined_to_the_tenant_prefix() {
    let mut host = tenant_host(&consul_config(""));
    let view = send(
        &mut host,
        as_tenant("acme", Request::get("/v1/kv/tenants/acme/app/config?raw")),
    );
    assert_eq!(path_of(&view), "/v1/kv/tenants/acme/app/config?raw");
    for path in [
        "/v1/kv/tenants/globex/app",
        "/v1/kv/tenants/acme",
        "/v1/kv/config",
    ] {
        let view = send(&mut host, as_tenant("acme", Request::get(path)));
        assert_eq!(view.status(), Some(403), "{path}");
        assert_eq!(
            reason(&view),
            "the key is outside the tenant's prefix",
            "{path}"
        );
    }
}

#[test]
fn health_checks_need_a_service_of_the_tenant() {
    let mut host = tenant_host(&consul_config(""));
    let view = send(
        &mut host,
        as_tenant("acme", Request::get("/v1/health/checks/web")),
    );
    assert_eq!(path_of(&view), "/v1/health/checks/web");
    for service in ["billing", "unknown"] {
        let view = send(
            &mut host,
            as_tenant(
                "acme",
                Request::get(&format!("/v1/health/checks/{service}")),
            ),
        );
        assert_eq!(view.status(), Some(403), "{service}");
    }
}

#[test]
fn the_consul_token_is_replaced_by_the_tenants() {
    let mut host = tenant_host(&consul_config(r#","tokens":{"acme":"acme-secret"}"#));
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::get("/v1/kv/tenants/acme/x?token=stolen&raw")
                .header("x-consul-token", "stolen")
                .header("authorization", "Bearer stolen"),
        ),
    );
    assert_eq!(path_of(&view), "/v1/kv/tenants/acme/x?raw");
    assert_eq!(upstream_values(&view, "x-consul-token"), ["acme-secret"]);
    assert!(upstream_values(&view, "authorization").is_empty());
    // A tenant without a token goes without one.
    let view = send(
        &mut host,
        as_tenant(
            "globex",
            Request::get("/v1/kv/tenants/globex/x").header("x-consul-token", "stolen"),
        ),
    );
    assert!(upstream_values(&view, "x-consul-token").is_empty());
}

#[test]
fn consul_mode_applies_only_to_the_configured_clusters() {
    let mut host = tenant_host(&consul_config(r#","clusters":["consul"]"#));
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::get("/v1/acl/tokens")
                .property("xds.cluster_name", PropertyValue::String("consul".into())),
        ),
    );
    assert_eq!(view.status(), Some(403));
    assert_eq!(reason(&view), "the endpoint is not allowed");
    let view = send(
        &mut host,
        as_tenant(
            "acme",
            Request::get("/v1/acl/tokens")
                .property("xds.cluster_name", PropertyValue::String("app".into())),
        ),
    );
    assert_eq!(view.status(), Some(200));
    assert_eq!(counter(&host, "consul_denied"), 1);
}

// --- configuration --------------------------------------------------------------------------

fn rejected(config: &str) -> String {
    let mut host = Host::builder(&module(WASM))
        .plugin_config(config)
        .workers(1)
        .log_level(LogLevel::Debug)
        .build()
        .unwrap();
    assert!(!host.configure().unwrap(), "accepted: {config}");
    host.logs()
        .into_iter()
        .map(|l| l.message)
        .find(|m| m.contains("invalid configuration"))
        .unwrap_or_default()
}

#[test]
fn a_bad_configuration_is_refused_with_one_line_naming_the_field() {
    for (config, expected) in [
        ("", "the configuration is empty"),
        (
            r#"{"identity":[]}"#,
            "identity: must contain at least one source",
        ),
        (
            r#"{"identity":[{"trusted_header":{"cidrs":["10.0.0.0/33"]}}]}"#,
            "identity[0].trusted_header.cidrs[0]: `10.0.0.0/33`: prefix_len must be",
        ),
        (
            r#"{"identity":[{"spiffe":{"pattern":"spiffe://d/x/*"}}]}"#,
            "identity[0].spiffe.pattern: must contain {tenant} exactly once",
        ),
        (
            r#"{"identity":[{"jwt_claim":{"claim":"t"}}],"consul":{"kv_prefix":"x/{tenant}"}}"#,
            "consul.kv_prefix: must end with /",
        ),
        (
            r#"{"identity":[{"jwt_claim":{"claim":"t"}}],"cross_tenant":{"destination":"somewhere"}}"#,
            "cross_tenant.destination: unknown variant `somewhere`",
        ),
    ] {
        let line = rejected(config);
        assert!(
            line.contains(&format!(
                "meshguard_tenant: invalid configuration: {expected}"
            )),
            "{config}: {line}"
        );
    }
}
