//! The attack table of issue 5 run through the compiled filter in host-sim, one test per row:
//! the filter (JWT identity, header trusted only from 10.0.0.0/8, Consul mode) must deny the
//! request or forward a neutralised one. The same rows are replayed against real Envoy and
//! the fake Consul in `envoy.rs` where a proxy could change them (path and header handling).

use host_sim::{Host, PropertyValue, Request, Response, StreamView};
use serde_json::{json, Value};

use crate::tenant::hostsim::{
    consul_config, filter_of, forwarded, path_of, reason, tenant_host, upstream_values,
    JWT_PROPERTY,
};

/// What a row expects.
enum Expect {
    /// A local reply with this status and deny reason; nothing reaches Consul.
    Denied(u16, &'static str),
    /// Forwarded; the check gets the stream.
    Forwarded(fn(&StreamView)),
}

fn host() -> Host {
    let identity = r#"{"identity":[{"jwt_claim":{"claim":"tenant"}},{"trusted_header":{"cidrs":["10.0.0.0/8"]}}]"#;
    let config = consul_config("").replacen(
        r#"{"identity":[{"trusted_header":{"cidrs":["10.0.0.0/8"]}}]"#,
        identity,
        1,
    );
    let mut host = tenant_host(&config);
    host.set_upstream(|req| {
        if req.header(":path") == Some("/v1/catalog/services") {
            Response::new(200)
                .body(r#"{"consul":[],"web":[],"db":["primary"],"billing":[],"victim-svc":[]}"#)
        } else {
            Response::new(200).body("[]")
        }
    });
    host
}

/// A request from an untrusted address (192.0.2.1) whose verified JWT says `acme`.
fn acme(request: Request) -> Request {
    request
        .property(
            "source.address",
            PropertyValue::String("192.0.2.1:5000".into()),
        )
        .property(JWT_PROPERTY, PropertyValue::String("acme".into()))
}

fn run(request: Request, expect: Expect) {
    let mut host = host();
    let id = host.send(1, request).unwrap();
    let view = host.stream(id).unwrap().clone();
    match expect {
        Expect::Denied(status, why) => {
            assert_eq!(view.status(), Some(status), "{:?}", view.upstream_request);
            assert!(reason(&view).starts_with(why), "reason: {}", reason(&view));
            let reached = view.upstream_request.as_ref();
            assert!(
                reached.is_none_or(|u| u.body.is_empty() && !u.complete),
                "reached Consul: {reached:?}"
            );
        }
        Expect::Forwarded(check) => {
            assert_eq!(view.status(), Some(200), "{:?}", view.local_reply);
            check(&view);
        }
    }
}

macro_rules! attacks {
    ($($name:ident: $request:expr => $expect:expr;)*) => {$(
        #[test]
        fn $name() {
            run($request, $expect);
        }
    )*};
}

fn only_acme_tenant(view: &StreamView) {
    assert_eq!(upstream_values(view, "x-meshguard-tenant"), ["acme"]);
}

fn scoped_to_acme(view: &StreamView) {
    assert!(
        filter_of(view).starts_with(r#"(Service.Meta.tenant == "acme") and ("#)
            || filter_of(view) == r#"Service.Meta.tenant == "acme""#,
        "{}",
        filter_of(view)
    );
}

fn header_named(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

attacks! {
    spoofed_tenant_header_from_an_untrusted_address_is_replaced:
        acme(Request::get("/v1/health/service/web").header("x-meshguard-tenant", "victim"))
        => Expect::Forwarded(only_acme_tenant);
    spoofed_tenant_header_alone_from_an_untrusted_address_is_no_identity:
        Request::get("/v1/health/service/web")
            .header("x-meshguard-tenant", "victim")
            .property("source.address", PropertyValue::String("192.0.2.1:5000".into()))
        => Expect::Denied(401, "no verified tenant");
    mixed_case_and_duplicate_tenant_headers_are_all_removed:
        {
            let mut r = acme(Request::get("/v1/health/service/web"));
            r.headers.push(header_named("X-Meshguard-Tenant", "victim"));
            r.headers.push(header_named("x-meshguard-tenant", "victim2"));
            r.headers.push(header_named("X-MESHGUARD-TENANT", "victim3"));
            r
        }
        => Expect::Forwarded(only_acme_tenant);
    duplicate_tenant_headers_from_a_trusted_address_are_refused:
        Request::get("/v1/health/service/web")
            .header("x-meshguard-tenant", "acme")
            .header("x-meshguard-tenant", "victim")
            .property("source.address", PropertyValue::String("10.0.0.9:5000".into()))
        => Expect::Denied(403, "the tenant header appears more than once");
    an_invalid_tenant_claim_is_refused:
        Request::get("/v1/health/service/web")
            .property(JWT_PROPERTY, PropertyValue::String("Acme\r\nx-evil: 1".into()))
        => Expect::Denied(403, "jwt_claim carries an invalid tenant");
    an_oversized_tenant_claim_is_refused:
        Request::get("/v1/health/service/web")
            .property(JWT_PROPERTY, PropertyValue::String("a".repeat(64)))
        => Expect::Denied(403, "jwt_claim carries an invalid tenant");
    encoded_dot_segments_are_refused:
        acme(Request::get("/v1/health/service/%2e%2e/%2e%2e/acl/tokens"))
        => Expect::Denied(403, "the path encodes a reserved character");
    plain_dot_segments_are_refused:
        acme(Request::get("/v1/kv/tenants/acme/../globex/secret"))
        => Expect::Denied(403, "the path has a dot segment");
    a_double_slash_prefix_is_refused:
        acme(Request::get("//v1/health/service/web"))
        => Expect::Denied(403, "the path has an empty segment");
    an_encoded_slash_in_a_service_name_is_refused:
        acme(Request::get("/v1/health/service/web%2f..%2fbilling"))
        => Expect::Denied(403, "the path encodes a reserved character");
    a_double_encoded_dot_is_refused:
        acme(Request::get("/v1/health/service/%252e%252e"))
        => Expect::Denied(403, "the path encodes a reserved character");
    acl_endpoints_are_refused:
        acme(Request::get("/v1/acl/tokens"))
        => Expect::Denied(403, "the endpoint is not allowed");
    agent_endpoints_other_than_register_are_refused:
        acme(Request::new("PUT", "/v1/agent/check/register"))
        => Expect::Denied(403, "the endpoint is not allowed");
    operator_endpoints_are_refused:
        acme(Request::get("/v1/operator/raft/configuration"))
        => Expect::Denied(403, "the endpoint is not allowed");
    snapshots_are_refused:
        acme(Request::get("/v1/snapshot"))
        => Expect::Denied(403, "the endpoint is not allowed");
    writes_to_discovery_endpoints_are_refused:
        acme(Request::new("PUT", "/v1/health/service/web"))
        => Expect::Denied(403, "the method is not allowed on this endpoint");
    an_or_true_injection_is_wrapped_and_can_only_narrow:
        acme(Request::get("/v1/health/service/web?filter=Service.Service%20%3D%3D%20%22web%22%20or%201%3D%3D1"))
        => Expect::Forwarded(scoped_to_acme);
    a_closing_quote_injection_is_refused:
        acme(Request::get("/v1/health/service/web?filter=%22%20or%201%3D%3D1"))
        => Expect::Denied(403, "the filter has an unterminated string");
    an_unbalanced_parenthesis_is_refused:
        acme(Request::get("/v1/health/service/web?filter=Service.Service%20%3D%3D%20%22web%22)%20or%20(Service.Service%20!%3D%20%22%22"))
        => Expect::Denied(403, "the filter has unbalanced parentheses");
    or_tenant_not_empty_can_only_narrow:
        acme(Request::get("/v1/health/service/web?filter=or%20Service.Meta.tenant%20!%3D%20%22%22"))
        => Expect::Forwarded(|view| {
            assert_eq!(
                filter_of(view),
                r#"(Service.Meta.tenant == "acme") and (or Service.Meta.tenant != "")"#
            );
        });
    a_second_filter_parameter_is_refused:
        acme(Request::get("/v1/health/service/web?filter=a&filter=b"))
        => Expect::Denied(403, "more than one filter parameter");
    an_encoded_filter_parameter_name_is_still_scoped:
        acme(Request::get("/v1/health/service/web?f%69lter=Service.Service%20%3D%3D%20%22web%22"))
        => Expect::Forwarded(|view| {
            assert!(!path_of(view).contains("f%69lter"), "{}", path_of(view));
            scoped_to_acme(view);
        });
    an_oversized_filter_is_refused:
        acme(Request::get(&format!("/v1/health/service/web?filter={}", "a".repeat(5000))))
        => Expect::Denied(403, "the filter is too long");
    an_oversized_path_is_refused:
        acme(Request::get(&format!("/v1/kv/tenants/acme/{}", "a/".repeat(1100))))
        => Expect::Denied(403, "the path is too long");
    a_registration_claiming_another_tenant_is_refused:
        acme(Request::new("PUT", "/v1/agent/service/register")
            .body(json!({"Name": "web", "Meta": {"tenant": "victim"}}).to_string()))
        => Expect::Denied(403, "the registration claims another tenant");
    a_registration_smuggling_meta_in_another_spelling_is_refused:
        acme(Request::new("PUT", "/v1/agent/service/register")
            .body(json!({"Name": "web", "meta": {"tenant": "victim"}}).to_string()))
        => Expect::Denied(403, "the registration has an ambiguous field");
    an_oversized_registration_is_refused:
        acme(Request::new("PUT", "/v1/agent/service/register")
            .body(format!("{{\"Name\":\"{}\"}}", "x".repeat(70_000))))
        => Expect::Denied(413, "the registration is too large");
    a_catalog_listing_with_other_tenants_is_cut_to_the_callers:
        acme(Request::get("/v1/catalog/services"))
        => Expect::Forwarded(|view| {
            let body: Value = serde_json::from_slice(&view.response_body).unwrap();
            assert_eq!(body, json!({"web": [], "db": ["primary"]}));
        });
    kv_outside_the_prefix_is_refused:
        acme(Request::get("/v1/kv/tenants/victim/secret"))
        => Expect::Denied(403, "the key is outside the tenant's prefix");
    kv_recursing_on_a_prefix_of_other_tenants_is_refused:
        acme(Request::get("/v1/kv/tenants/acme?recurse"))
        => Expect::Denied(403, "the key is outside the tenant's prefix");
}

#[test]
fn a_forwarded_registration_is_the_rewritten_one() {
    // The Forwarded rows above check what the downstream sees; this checks Consul's side.
    let mut host = host();
    let id = host
        .send(
            1,
            acme(
                Request::new("PUT", "/v1/agent/service/register")
                    .body(json!({"Name": "web", "Port": 1}).to_string()),
            ),
        )
        .unwrap();
    let view = host.stream(id).unwrap().clone();
    let sent: Value = serde_json::from_slice(&forwarded(&view).body).unwrap();
    assert_eq!(
        sent,
        json!({"ID": "acme.web", "Name": "web", "Port": 1, "Meta": {"tenant": "acme"}})
    );
}

// --- review findings: trailers, squatting, health checks, Unicode keys ----------------------

fn register_request(body: &Value) -> Request {
    acme(Request::new("PUT", "/v1/agent/service/register").body(body.to_string()))
}

#[test]
fn a_tenant_cannot_register_a_service_name_another_tenant_owns() {
    // `billing` is globex's; Consul's service index ignores case, so `BILLING` is the same.
    for name in ["billing", "BILLING", "Billing"] {
        run(
            register_request(&json!({"ID": "x", "Name": name, "Port": 1})),
            Expect::Denied(403, "service billing belongs to another tenant"),
        );
    }
    // Its own services and unowned names still register.
    for name in ["web", "WEB", "new-svc"] {
        let mut host = host();
        let id = host
            .send(1, register_request(&json!({"Name": name, "Port": 1})))
            .unwrap();
        let view = host.stream(id).unwrap().clone();
        assert_eq!(view.status(), Some(200), "{name}: {:?}", view.local_reply);
        assert!(forwarded(&view).complete, "{name}");
    }
}

#[test]
fn registrations_with_dangerous_checks_or_kinds_are_refused() {
    let base = |extra: Value| {
        let mut body = json!({"Name": "web", "Address": "10.0.0.5", "Port": 8080});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (attack, extra) in [
        (
            "metadata ssrf",
            json!({"Check": {"HTTP": "http://169.254.169.254/latest/meta-data/", "Interval": "10s"}}),
        ),
        (
            "other host",
            json!({"Checks": [{"TCP": "10.0.0.6:22", "Interval": "10s"}]}),
        ),
        (
            "script",
            json!({"Check": {"Args": ["/bin/sh", "-c", "id"], "Interval": "10s"}}),
        ),
        (
            "docker",
            json!({"Check": {"DockerContainerID": "x", "Shell": "/bin/sh", "Args": ["id"], "Interval": "10s"}}),
        ),
        (
            "connect proxy",
            json!({"Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "billing"}}),
        ),
        ("connect", json!({"Connect": {"Native": true}})),
        (
            "unicode sidecar",
            json!({"Connect": {"\u{17f}idecar\u{17f}ervice": {}}}),
        ),
    ] {
        let mut host = host();
        let id = host.send(1, register_request(&base(extra))).unwrap();
        let view = host.stream(id).unwrap().clone();
        assert_eq!(
            view.status(),
            Some(403),
            "{attack}: {:?}",
            view.upstream_request
        );
        let reached = view.upstream_request.as_ref();
        assert!(
            reached.is_none_or(|u| u.body.is_empty() && !u.complete),
            "{attack}: reached Consul: {reached:?}"
        );
    }
    // A check at the service's own address and port passes; its id joins the namespace.
    let mut host = host();
    let body = base(
        json!({"Check": {"CheckID": "web-alive", "HTTP": "http://10.0.0.5:8080/health", "Interval": "10s"}}),
    );
    let id = host.send(1, register_request(&body)).unwrap();
    let view = host.stream(id).unwrap().clone();
    let sent: Value = serde_json::from_slice(&forwarded(&view).body).unwrap();
    assert_eq!(sent["Check"]["CheckID"], "acme.web-alive");
    assert_eq!(sent["Check"]["HTTP"], "http://10.0.0.5:8080/health");
}
