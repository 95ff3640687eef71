//! The Consul API attack table (each row an attack and the expected decision), the happy
//! paths next to it, and property tests for the filter builder and the path normaliser.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn t(name: &str) -> TenantName {
    TenantName::try_new(name).unwrap()
}

fn get(path: &str) -> ConsulRoute {
    classify_consul_request("GET", path.as_bytes())
}

#[test]
fn allow_listed_endpoints_are_classified() {
    let cases: &[(&str, &str, ConsulRoute)] = &[
        (
            "GET",
            "/v1/health/service/web",
            ConsulRoute::HealthService("web".into()),
        ),
        (
            "GET",
            "/v1/catalog/service/db-1.v2",
            ConsulRoute::CatalogService("db-1.v2".into()),
        ),
        (
            "GET",
            "/v1/health/checks/web",
            ConsulRoute::HealthChecks("web".into()),
        ),
        ("GET", "/v1/catalog/services", ConsulRoute::CatalogServices),
        (
            "PUT",
            "/v1/agent/service/register",
            ConsulRoute::AgentRegister,
        ),
        (
            "PUT",
            "/v1/agent/service/deregister/web-1",
            ConsulRoute::AgentDeregister("web-1".into()),
        ),
        (
            "GET",
            "/v1/kv/tenants/a/app/config",
            ConsulRoute::Kv("tenants/a/app/config".into()),
        ),
        (
            "PUT",
            "/v1/kv/tenants/a/x",
            ConsulRoute::Kv("tenants/a/x".into()),
        ),
        (
            "DELETE",
            "/v1/kv/tenants/a/",
            ConsulRoute::Kv("tenants/a/".into()),
        ),
        (
            "GET",
            "/v1/health/service/w%65b",
            ConsulRoute::HealthService("web".into()),
        ),
    ];
    for (method, path, expected) in cases {
        assert_eq!(
            &classify_consul_request(method, path.as_bytes()),
            expected,
            "{method} {path}"
        );
    }
}

#[test]
fn attack_table_spoofed_and_disallowed_paths_are_denied() {
    use DenyReason as D;
    let cases: &[(&str, &str, DenyReason)] = &[
        (
            "encoded dot segment",
            "/v1/health/service/%2e%2e/x",
            D::EncodedReserved,
        ),
        (
            "encoded dot segment, upper",
            "/v1/health/service/%2E%2E",
            D::EncodedReserved,
        ),
        (
            "encoded slash in a name",
            "/v1/health/service/a%2fb",
            D::EncodedReserved,
        ),
        (
            "encoded slash, upper",
            "/v1/health/service/a%2Fb",
            D::EncodedReserved,
        ),
        (
            "encoded backslash",
            "/v1/health/service/a%5cb",
            D::EncodedReserved,
        ),
        (
            "double encoding",
            "/v1/health/service/%252e%252e",
            D::EncodedReserved,
        ),
        (
            "encoded nul",
            "/v1/health/service/web%00",
            D::EncodedReserved,
        ),
        (
            "encoded newline",
            "/v1/kv/tenants/a/x%0a",
            D::EncodedReserved,
        ),
        (
            "leading double slash",
            "//v1/health/service/web",
            D::EmptySegment,
        ),
        ("inner double slash", "/v1//acl/tokens", D::EmptySegment),
        (
            "dot-dot segment",
            "/v1/health/service/../../acl/tokens",
            D::DotSegment,
        ),
        ("dot segment", "/v1/./acl/tokens", D::DotSegment),
        (
            "kv traversal",
            "/v1/kv/tenants/a/../b/secret",
            D::DotSegment,
        ),
        (
            "backslash",
            "/v1/health/service/a\\..\\b",
            D::MalformedPath("backslash"),
        ),
        (
            "truncated escape",
            "/v1/health/service/a%2",
            D::MalformedPath("bad percent escape"),
        ),
        (
            "non-hex escape",
            "/v1/health/service/a%zz",
            D::MalformedPath("bad percent escape"),
        ),
        (
            "raw nul",
            "/v1/health/service/a\0",
            D::MalformedPath("character outside the path charset"),
        ),
        (
            "raw space",
            "/v1/health/service/a b",
            D::MalformedPath("character outside the path charset"),
        ),
        (
            "fragment",
            "/v1/health/service/a#x",
            D::MalformedPath("character outside the path charset"),
        ),
        (
            "relative path",
            "v1/health/service/web",
            D::MalformedPath("must start with /"),
        ),
        ("acl", "/v1/acl/tokens", D::NotAllowed),
        ("acl bootstrap", "/v1/acl/bootstrap", D::NotAllowed),
        ("agent self", "/v1/agent/self", D::NotAllowed),
        ("agent services", "/v1/agent/services", D::NotAllowed),
        ("operator", "/v1/operator/raft/configuration", D::NotAllowed),
        ("snapshot", "/v1/snapshot", D::NotAllowed),
        ("catalog register", "/v1/catalog/register", D::NotAllowed),
        (
            "trailing slash on a name",
            "/v1/health/service/web/",
            D::NotAllowed,
        ),
        ("extra segment", "/v1/health/service/web/x", D::NotAllowed),
        (
            "name charset",
            "/v1/health/service/web:8080",
            D::BadName("service name"),
        ),
        (
            "encoded quote in a name",
            "/v1/health/service/we%22b",
            D::BadName("service name"),
        ),
        (
            "kv key charset",
            "/v1/kv/tenants/a/x;y",
            D::BadName("kv key"),
        ),
        ("kv root", "/v1/kv/", D::BadName("kv key")),
    ];
    for (attack, path, expected) in cases {
        assert_eq!(
            get(path),
            ConsulRoute::Denied(expected.clone()),
            "{attack}: {path}"
        );
    }
    assert_eq!(
        get(&format!("/v1/kv/{}", "a".repeat(MAX_CONSUL_PATH_LEN))),
        ConsulRoute::Denied(D::PathTooLong)
    );
    assert_eq!(
        get(&format!(
            "/v1/health/service/{}",
            "a".repeat(MAX_CONSUL_NAME_LEN + 1)
        )),
        ConsulRoute::Denied(D::BadName("service name"))
    );
}

#[test]
fn attack_table_wrong_methods_are_denied() {
    for (method, path) in [
        ("PUT", "/v1/health/service/web"),
        ("DELETE", "/v1/catalog/services"),
        ("GET", "/v1/agent/service/register"),
        ("POST", "/v1/agent/service/deregister/x"),
        ("POST", "/v1/kv/tenants/a/x"),
        ("get", "/v1/health/service/web"),
    ] {
        assert_eq!(
            classify_consul_request(method, path.as_bytes()),
            ConsulRoute::Denied(DenyReason::MethodNotAllowed),
            "{method} {path}"
        );
    }
}

#[test]
fn splits_the_query_at_the_first_question_mark() {
    assert_eq!(split_path_query("/v1/x?a=1?b"), ("/v1/x", Some("a=1?b")));
    assert_eq!(split_path_query("/v1/x"), ("/v1/x", None));
}

#[test]
fn tenant_selector_depends_on_the_endpoint() {
    assert_eq!(
        get("/v1/health/service/a").tenant_selector(),
        Some(TenantSelector::HealthServiceMeta)
    );
    assert_eq!(
        get("/v1/catalog/service/a").tenant_selector(),
        Some(TenantSelector::CatalogServiceMeta)
    );
    assert_eq!(get("/v1/health/checks/a").tenant_selector(), None);
    assert_eq!(get("/v1/health/checks/a").service(), Some("a"));
    assert_eq!(get("/v1/catalog/services").service(), None);
}

const H: TenantSelector = TenantSelector::HealthServiceMeta;

#[test]
fn the_filter_is_the_tenant_clause_alone_or_and_the_wrapped_user_filter() {
    let a = t("acme");
    assert_eq!(
        tenant_filter(H, &a, None).unwrap(),
        r#"Service.Meta.tenant == "acme""#
    );
    assert_eq!(
        tenant_filter(H, &a, Some("  ")).unwrap(),
        r#"Service.Meta.tenant == "acme""#
    );
    assert_eq!(
        tenant_filter(
            TenantSelector::CatalogServiceMeta,
            &a,
            Some(r#"ServiceTags contains "v2""#)
        )
        .unwrap(),
        r#"(ServiceMeta.tenant == "acme") and (ServiceTags contains "v2")"#
    );
    for ok in [
        r#"Service.Meta.zone == "a" and not (Checks.Status != "passing")"#,
        r#"Service.Port == 8080 or Service.Port == -1.5"#,
        r#""primary" in Service.Tags"#,
        r#"Service.Meta["version"] matches `^v(1|2)\.`"#,
        r#"Service.Tags is not empty"#,
        r#"Node.Meta.rack == "(r1" and Service.Service == ")""#,
        r#""/Service/Meta/x" == "y""#,
    ] {
        assert!(validate_user_filter(ok).is_ok(), "{ok}");
    }
}

#[test]
fn attack_table_filter_injection_is_rejected_or_neutralised() {
    use DenyReason as D;
    let a = t("acme");
    let rejected: &[(&str, &str, DenyReason)] = &[
        ("close the quote", r#"" or 1==1"#, D::UnterminatedString),
        (
            "close the group",
            r#"Service.Port == 1) or (Service.Meta.tenant != """#,
            D::UnbalancedFilter,
        ),
        ("close the group, bare", r#") or ("#, D::UnbalancedFilter),
        (
            "unbalanced open",
            r#"((Service.Port == 1)"#,
            D::UnbalancedFilter,
        ),
        (
            "unbalanced close",
            r#"Service.Port == 1)"#,
            D::UnbalancedFilter,
        ),
        (
            "close then reopen",
            r#"a == 1)) or ((b == 2"#,
            D::UnbalancedFilter,
        ),
        (
            "backslash before a quote",
            r#"Service.ID == "a\" or 1==1"#,
            D::UnexpectedFilterChar(16),
        ),
        (
            "backslash then a group",
            r#"a == "\" ) or ( "x" == "y""#,
            D::UnexpectedFilterChar(6),
        ),
        (
            "raw string",
            "Service.ID == `a or 1==1",
            D::UnterminatedString,
        ),
        (
            "unbalanced bracket",
            r#"Service.Meta["tenant" == "x""#,
            D::UnbalancedFilter,
        ),
        (
            "unknown character",
            r#"Service.Port == 1 || true"#,
            D::UnexpectedFilterChar(18),
        ),
        (
            "single equals",
            r#"Service.Port = 1"#,
            D::UnexpectedFilterChar(13),
        ),
        ("semicolon", r#"a == 1; b == 2"#, D::UnexpectedFilterChar(6)),
        (
            "non-ascii outside strings",
            "Servіce.Port == 1",
            D::UnexpectedFilterChar(4),
        ),
    ];
    for (attack, user, expected) in rejected {
        assert_eq!(
            tenant_filter(H, &a, Some(user)),
            Err(expected.clone()),
            "{attack}: {user}"
        );
    }
    assert_eq!(
        tenant_filter(H, &a, Some(&"(".repeat(MAX_USER_FILTER_LEN + 1))),
        Err(D::FilterTooLong)
    );
    // Balanced attempts to widen the result stay inside the group, and-ed with the tenant.
    let neutralised = tenant_filter(H, &a, Some(r#"Service.Meta.tenant != "" or 1 == 1"#)).unwrap();
    assert_eq!(
        neutralised,
        r#"(Service.Meta.tenant == "acme") and (Service.Meta.tenant != "" or 1 == 1)"#
    );
    let quoted = tenant_filter(H, &a, Some(r#"Service.ID == ") or (x""#)).unwrap();
    assert_eq!(
        quoted,
        r#"(Service.Meta.tenant == "acme") and (Service.ID == ") or (x")"#
    );
}

#[test]
fn bexpr_strings_refuse_quotes_and_controls_and_double_backslashes() {
    assert_eq!(bexpr_string("a\\b").unwrap(), r#""a\\b""#);
    assert_eq!(bexpr_string("x").unwrap(), r#""x""#);
    assert!(bexpr_string("a\"b").is_err());
    assert!(bexpr_string("a\nb").is_err());
}

#[test]
fn scope_query_keeps_other_parameters_and_replaces_the_filter() {
    let a = t("acme");
    let q = scope_query(
        Some("dc=dc1&index=42&wait=30s&passing&tag=v%202&filter=Service.Port+%3D%3D+80"),
        H,
        &a,
    )
    .unwrap();
    assert_eq!(
        q,
        "dc=dc1&index=42&wait=30s&passing&tag=v%202&filter=%28Service.Meta.tenant%20%3D%3D%20%22acme%22%29%20and%20%28Service.Port%20%3D%3D%2080%29"
    );
    let (_, filter) = q.rsplit_once("filter=").unwrap();
    assert_eq!(
        query_unescape(filter).unwrap(),
        r#"(Service.Meta.tenant == "acme") and (Service.Port == 80)"#
    );
    assert_eq!(
        scope_query(None, H, &a).unwrap(),
        "filter=Service.Meta.tenant%20%3D%3D%20%22acme%22"
    );
    assert_eq!(
        scope_query(Some("passing=1&&"), H, &a).unwrap(),
        "passing=1&filter=Service.Meta.tenant%20%3D%3D%20%22acme%22"
    );
}

#[test]
fn scoped_path_rebuilds_the_normalised_path_with_the_scoped_query() {
    let a = t("acme");
    let (path, query) =
        split_path_query("/v1/health/service/w%65b?passing&filter=Service.Port+%3D%3D+80");
    let route = classify_consul_request("GET", path.as_bytes());
    assert_eq!(
        route.scoped_path(query, &a),
        Some(Ok("/v1/health/service/web?passing&filter=%28Service.Meta.tenant%20%3D%3D%20%22acme%22%29%20and%20%28Service.Port%20%3D%3D%2080%29".to_owned()))
    );
    assert_eq!(
        get("/v1/catalog/service/db").scoped_path(None, &a),
        Some(Ok(
            "/v1/catalog/service/db?filter=ServiceMeta.tenant%20%3D%3D%20%22acme%22".to_owned()
        ))
    );
    assert_eq!(
        get("/v1/health/service/web").scoped_path(Some("filter=)"), &a),
        Some(Err(DenyReason::UnbalancedFilter))
    );
    assert_eq!(get("/v1/health/checks/web").scoped_path(None, &a), None);
    assert_eq!(get("/v1/acl/tokens").scoped_path(None, &a), None);
}

#[test]
fn attack_table_query_tricks_are_denied() {
    use DenyReason as D;
    let a = t("acme");
    let cases: &[(&str, &str, DenyReason)] = &[
        ("two filters", "filter=a==1&filter=b==2", D::DuplicateFilter),
        (
            "encoded name counts as filter",
            "filter=a==1&f%69lter=b==2",
            D::DuplicateFilter,
        ),
        (
            "bad escape in a name",
            "fil%zzter=x",
            D::MalformedQuery("bad escape"),
        ),
        (
            "bad escape in the filter",
            "filter=%zz",
            D::MalformedQuery("bad escape"),
        ),
        (
            "semicolon in a name",
            "a;filter=x",
            D::MalformedQuery("a semicolon in a name"),
        ),
        (
            "injection, url-encoded",
            "filter=%22%20or%201%3D%3D1",
            D::UnterminatedString,
        ),
        (
            "injection, plus as space",
            "filter=a+==+1)+or+(b+==+2",
            D::UnbalancedFilter,
        ),
    ];
    for (attack, query, expected) in cases {
        assert_eq!(
            scope_query(Some(query), H, &a),
            Err(expected.clone()),
            "{attack}: {query}"
        );
    }
    let huge = format!("filter={}", "a".repeat(3 * MAX_USER_FILTER_LEN + 1));
    assert_eq!(scope_query(Some(&huge), H, &a), Err(D::FilterTooLong));
    let long = format!("filter={}", "a".repeat(MAX_USER_FILTER_LEN + 1));
    assert_eq!(scope_query(Some(&long), H, &a), Err(D::FilterTooLong));
}

fn register(body: &Value, tenant: &str) -> Result<Value, DenyReason> {
    rewrite_registration(&serde_json::to_vec(body).unwrap(), &t(tenant))
        .map(|b| serde_json::from_slice(&b).unwrap())
}

#[test]
fn registration_is_forced_into_the_tenant_and_keeps_other_fields() {
    // The HTTP check aims at the registration's own Address:Port, the only place a network
    // check may point (checks elsewhere are refused in the allow-list table below).
    let body = json!({
        "ID": "web-1", "Name": "web", "Tags": ["v1"], "Address": "10.0.0.5", "Port": 8080,
        "Meta": {"version": "1"}, "Check": {"HTTP": "http://10.0.0.5:8080/health", "Interval": "10s"},
        "Weights": {"Passing": 10, "Warning": 1}
    });
    let mut expected = body.clone();
    expected["Meta"]["tenant"] = json!("acme");
    assert_eq!(register(&body, "acme").unwrap(), expected);
    let same = json!({"Name": "web", "Meta": {"tenant": "acme"}});
    assert_eq!(register(&same, "acme").unwrap(), same);
    assert_eq!(
        register(&json!({"Name": "web"}), "acme").unwrap(),
        json!({"Name": "web", "Meta": {"tenant": "acme"}})
    );
    assert_eq!(
        register(&json!({"Name": "web", "Meta": null}), "acme").unwrap(),
        json!({"Name": "web", "Meta": {"tenant": "acme"}})
    );
}

#[test]
fn attack_table_registrations_are_refused() {
    let cases: &[(&str, Value)] = &[
        (
            "claims another tenant",
            json!({"Name": "web", "Meta": {"tenant": "victim"}}),
        ),
        (
            "tenant not a string",
            json!({"Name": "web", "Meta": {"tenant": ["acme"]}}),
        ),
        (
            "meta not an object",
            json!({"Name": "web", "Meta": "tenant=victim"}),
        ),
        (
            "lowercase meta",
            json!({"Name": "web", "meta": {"tenant": "victim"}}),
        ),
        (
            "snake-case service meta",
            json!({"Name": "web", "service_meta": {"tenant": "victim"}}),
        ),
        (
            "upper-case meta",
            json!({"Name": "web", "META": {"tenant": "victim"}}),
        ),
        (
            "sidecar service",
            json!({"Name": "web", "Connect": {"SidecarService": {"Meta": {"tenant": "victim"}}}}),
        ),
        (
            "sidecar, snake case",
            json!({"Name": "web", "connect": {"sidecar_service": {}}}),
        ),
        ("not an object", json!(["Name", "web"])),
    ];
    for (attack, body) in cases {
        assert!(register(body, "acme").is_err(), "{attack}: {body}");
    }
    assert!(matches!(
        register(&json!({"Meta": {"tenant": "victim"}}), "acme"),
        Err(DenyReason::OtherTenant)
    ));
    for bad in [&b"{"[..], b"", b"null", b"{\"Name\": \"web\",}", b"\xff"] {
        assert!(
            matches!(
                rewrite_registration(bad, &t("a")),
                Err(DenyReason::BadBody(_))
            ),
            "{bad:?}"
        );
    }
    let big = format!("{{\"Name\": \"{}\"}}", "x".repeat(MAX_REGISTRATION_LEN));
    assert!(matches!(
        rewrite_registration(big.as_bytes(), &t("a")),
        Err(DenyReason::BadBody(_))
    ));
}

#[test]
fn registration_duplicate_keys_cannot_smuggle_a_tenant() {
    // serde keeps the last duplicate; the body is re-serialised, so Consul sees one Meta.
    let body = br#"{"Name":"web","Meta":{"tenant":"acme"},"Meta":{"tenant":"victim"}}"#;
    assert_eq!(
        rewrite_registration(body, &t("acme")),
        Err(DenyReason::OtherTenant)
    );
    let body = br#"{"Name":"web","Meta":{"tenant":"victim","tenant":"acme"}}"#;
    let out: Value =
        serde_json::from_slice(&rewrite_registration(body, &t("acme")).unwrap()).unwrap();
    assert_eq!(out["Meta"], json!({"tenant": "acme"}));
}

#[test]
fn attack_catalog_services_body_is_cut_to_the_tenant() {
    let body =
        br#"{"consul":[],"web":["v1"],"db":["primary","secondary"],"billing":null,"stray":[]}"#;
    let owners: BTreeMap<String, String> = [
        ("web", "acme"),
        ("db", "acme"),
        ("billing", "victim"),
        ("consul", "infra"),
    ]
    .into_iter()
    .map(|(s, t)| (s.to_owned(), t.to_owned()))
    .collect();
    let out: Value =
        serde_json::from_slice(&filter_catalog_services(body, &t("acme"), &owners).unwrap())
            .unwrap();
    assert_eq!(out, json!({"web": ["v1"], "db": ["primary", "secondary"]}));
    let out: Value =
        serde_json::from_slice(&filter_catalog_services(body, &t("nobody"), &owners).unwrap())
            .unwrap();
    assert_eq!(out, json!({}));
    for bad in [&b"[]"[..], b"{", b""] {
        assert!(matches!(
            filter_catalog_services(bad, &t("acme"), &owners),
            Err(DenyReason::BadBody(_))
        ));
    }
}

#[test]
fn kv_keys_stay_under_the_tenant_prefix() {
    let p = KvPrefix::default();
    let a = t("a");
    assert_eq!(p.for_tenant(&a), "tenants/a/");
    for yes in ["tenants/a/", "tenants/a/x", "tenants/a/x/y/"] {
        assert!(p.allows(&a, yes), "{yes}");
        assert_eq!(p.check(&a, yes), Ok(()));
    }
    for no in [
        "tenants/a",
        "tenants/ab/x",
        "tenants/b/x",
        "tenants/",
        "x/tenants/a/",
        "Tenants/a/x",
        "",
    ] {
        assert!(!p.allows(&a, no), "{no}");
        assert_eq!(p.check(&a, no), Err(DenyReason::KeyOutsidePrefix));
    }
    let custom = KvPrefix::try_new("config/{tenant}/app/").unwrap();
    assert!(custom.allows(&a, "config/a/app/x"));
    assert!(!custom.allows(&a, "config/a/x"));
}

#[test]
fn kv_prefix_errors_name_the_field() {
    for bad in [
        "tenants/",
        "tenants/{tenant}",
        "{tenant}/{tenant}/",
        "/tenants/{tenant}/",
        "a/../{tenant}/",
        "a//{tenant}/",
        "a b/{tenant}/",
        "x{tenant}/",
    ] {
        let TenantError::Invalid { field, .. } = KvPrefix::try_new(bad).unwrap_err();
        assert_eq!(field, "kv_prefix", "{bad}");
    }
}

#[test]
fn percent_encoding_round_trips_through_go_style_unescape() {
    for s in ["", "a b+c", "(x) and \"y\"", "ü/%?&=#"] {
        assert_eq!(query_unescape(&percent_encode(s)).as_deref(), Some(s));
    }
}

/// Where the depth of parentheses in `f[from..]`, outside bexpr strings, first returns to
/// zero, with the minimum depth seen before.
fn group_end(f: &str) -> Option<usize> {
    let mut depth = 0i64;
    let mut quote: Option<char> = None;
    for (i, c) in f.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '`') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn filter_text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "(",
        ")",
        "\"",
        "`",
        "[",
        "]",
        " or ",
        " and ",
        "not ",
        "==",
        "!=",
        "Service.Meta.tenant",
        "x",
        "1",
        "\\",
        "'",
        ",",
        ".",
        "=",
        "|",
        "\n",
        "é",
    ]);
    prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
}

/// Filters bexpr's grammar accepts (selectors, operators, closed strings with parentheses
/// and quotes of the other kind inside, `not`, nested groups): each must be accepted, so the
/// properties below cannot pass by rejecting everything.
fn valid_filter() -> impl Strategy<Value = String> {
    let clause = (
        prop::sample::select(vec![
            "Service.Meta.version",
            "ServiceTags",
            "Service.Tags",
            "Checks.Status",
        ]),
        prop::sample::select(vec![" == ", " != ", " contains ", " in "]),
        prop_oneof![
            "\"[a-z0-9 ()\\[\\]'`.,]{0,8}\"",
            "`[a-z0-9 ()\\[\\]'\".,]{0,8}`",
            "[0-9]{1,3}",
        ],
    )
        .prop_map(|(s, o, v)| format!("{s}{o}{v}"));
    clause.prop_recursive(3, 16, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| format!("not ({e})")),
            (
                inner.clone(),
                prop::sample::select(vec![" and ", " or "]),
                inner
            )
                .prop_map(|(a, op, b)| format!("({a}){op}{b}")),
        ]
    })
}

/// Runs `cases` deterministic cases of `strategy` through `test`, which says whether the
/// case was accepted (and so reached its assertions); fails on a failing case, and when
/// fewer than `min_accepted` cases were accepted, so a property cannot pass vacuously.
fn run_counting<S: Strategy>(
    strategy: S,
    cases: u32,
    min_accepted: u32,
    test: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) {
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let config = ProptestConfig::with_cases(cases);
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |value| {
        if test(value)? {
            accepted.set(accepted.get() + 1);
        }
        Ok(())
    });
    assert!(result.is_ok(), "{}", result.unwrap_err());
    assert!(
        accepted.get() >= min_accepted,
        "only {} of {cases} cases were accepted (at least {min_accepted} expected)",
        accepted.get()
    );
}

/// Checks the built filter for `user`; `Ok(false)` when the filter was refused.
fn check_built_filter(user: &str, tenant: &TenantName) -> Result<bool, TestCaseError> {
    let clause = tenant_clause(H, tenant);
    let Ok(f) = tenant_filter(H, tenant, Some(user)) else {
        return Ok(false);
    };
    if user.trim().is_empty() {
        prop_assert_eq!(f, clause);
    } else {
        let head = format!("({clause}) and (");
        prop_assert!(f.starts_with(&head), "{}", f);
        // The tenant clause is its own group, closed where it was written...
        prop_assert_eq!(group_end(&f), Some(clause.len() + 1));
        // ...and the user's group only closes at the very end.
        let tail = &f[head.len() - 1..];
        prop_assert_eq!(group_end(tail), Some(tail.len() - 1));
    }
    Ok(true)
}

#[test]
fn built_filter_starts_with_the_tenant_clause_and_wraps_the_user_part_in_one_group() {
    let user = prop_oneof![valid_filter(), filter_text(), "\\PC{0,40}"];
    run_counting((user, "[a-z0-9]{1,12}"), 2048, 600, |(user, tenant)| {
        check_built_filter(&user, &t(&tenant))
    });
    // Every grammatical filter is accepted and wrapped.
    run_counting(valid_filter(), 512, 512, |user| {
        check_built_filter(&user, &t("acme"))
    });
}

#[test]
fn scope_query_always_carries_exactly_one_filter_that_starts_with_the_clause() {
    let user = prop_oneof![valid_filter(), filter_text()];
    run_counting(
        (user, "[a-z]{1,5}=[a-z0-9]{0,5}"),
        2048,
        900,
        |(user, other)| {
            let tenant = t("acme");
            let query = format!("{other}&filter={}", percent_encode(&user));
            let Ok(q) = scope_query(Some(&query), H, &tenant) else {
                return Ok(false);
            };
            let filters: Vec<&str> = q.split('&').filter(|p| p.starts_with("filter=")).collect();
            prop_assert_eq!(filters.len(), 1);
            let f = query_unescape(&filters[0]["filter=".len()..]).unwrap();
            let clause = tenant_clause(H, &tenant);
            prop_assert!(
                f == clause || f.starts_with(&format!("({clause}) and (")),
                "{}",
                f
            );
            prop_assert!(q.starts_with(&other));
            Ok(true)
        },
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn normalisation_never_panics_and_its_output_is_clean(raw in any::<Vec<u8>>(), path in "/[a-z%2eEfF./\\\\]{0,30}") {
        for input in [raw.as_slice(), path.as_bytes()] {
            if let Ok(p) = normalize_path(input) {
                prop_assert!(p.starts_with('/'));
                prop_assert!(!p.contains("//") && !p.contains('\\') && !p.contains('%'));
                prop_assert!(p.split('/').all(|s| s != "." && s != ".."));
            }
            let _ = classify_consul_request("GET", input);
        }
    }

    #[test]
    fn classified_names_are_plain_single_segments(raw in "/v1/(health|catalog)/service/[ -~]{0,20}") {
        match get(&raw) {
            ConsulRoute::HealthService(s) | ConsulRoute::CatalogService(s) => {
                prop_assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
                prop_assert!(s != "." && s != "..");
            }
            ConsulRoute::Denied(_) => {}
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

fn scope_id(body: &Value, tenant: &str) -> Result<Value, DenyReason> {
    scope_registration_id(&serde_json::to_vec(body).unwrap(), &t(tenant))
        .map(|b| serde_json::from_slice(&b).unwrap())
}

#[test]
fn service_ids_are_moved_into_the_tenant_namespace_once() {
    assert_eq!(scoped_service_id(&t("acme"), "web-1"), "acme.web-1");
    assert_eq!(scoped_service_id(&t("acme"), "acme.web-1"), "acme.web-1");
    // `acme-corp.` is not `acme.`: tenant names have no dot, so prefixes never overlap.
    assert_eq!(
        scoped_service_id(&t("acme"), "acme-corp.web"),
        "acme.acme-corp.web"
    );
    assert_eq!(scoped_service_id(&t("a"), "b.web"), "a.b.web");
    assert_eq!(
        scope_id(&json!({"ID": "web-1", "Name": "web", "Port": 1}), "acme").unwrap(),
        json!({"ID": "acme.web-1", "Name": "web", "Port": 1})
    );
    assert_eq!(
        scope_id(&json!({"Name": "web"}), "acme").unwrap(),
        json!({"ID": "acme.web", "Name": "web"})
    );
    assert_eq!(
        scope_id(&json!({"ID": "", "Name": "web"}), "acme").unwrap(),
        json!({"ID": "acme.web", "Name": "web"})
    );
}

#[test]
fn attack_table_registration_ids_that_could_escape_the_namespace_are_refused() {
    for (attack, body) in [
        ("lowercase id", json!({"id": "victim.web", "Name": "web"})),
        ("mixed-case id", json!({"Id": "victim.web", "Name": "web"})),
        ("lowercase name", json!({"name": "web"})),
        ("id not a string", json!({"ID": 7, "Name": "web"})),
        ("no id and no name", json!({"Port": 1})),
        ("not an object", json!("web")),
    ] {
        assert!(scope_id(&body, "acme").is_err(), "{attack}: {body}");
    }
}

#[test]
fn removing_a_query_parameter_keeps_the_others_byte_for_byte() {
    assert_eq!(remove_query_param(None, "token"), Ok(None));
    assert_eq!(remove_query_param(Some("token=s3cret"), "token"), Ok(None));
    assert_eq!(
        remove_query_param(Some("recurse&t%6fken=x&token=y&raw=1&a=%20"), "token"),
        Ok(Some("recurse&raw=1&a=%20".into()))
    );
    assert_eq!(
        remove_query_param(Some("tok;en=x"), "token"),
        Err(DenyReason::MalformedQuery("a semicolon in a name"))
    );
    assert_eq!(
        remove_query_param(Some("%zz=1"), "token"),
        Err(DenyReason::MalformedQuery("bad escape"))
    );
}

#[test]
fn attack_table_registration_fields_checks_and_keys_outside_the_allow_list_are_refused() {
    use DenyReason as D;
    let base = |extra: Value| {
        let mut body = json!({"Name": "web", "Address": "10.0.0.5", "Port": 8080});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let check = |c: Value| base(json!({ "Check": c }));
    let denied = D::CheckNotAllowed("a network check must target the service's Address:Port");
    let script = D::CheckNotAllowed("script, docker and os-service checks run commands");
    let cases: Vec<(&str, Value, DenyReason)> = vec![
        (
            "http check at the metadata service",
            check(json!({"HTTP": "http://169.254.169.254/latest/meta-data/", "Interval": "1s"})),
            denied.clone(),
        ),
        (
            "userinfo hides another host",
            check(json!({"HTTP": "http://10.0.0.5:8080@169.254.169.254/", "Interval": "1s"})),
            denied.clone(),
        ),
        (
            "backslash authority trick",
            check(json!({"HTTP": "http://10.0.0.5:8080\\@evil/", "Interval": "1s"})),
            denied.clone(),
        ),
        (
            "another port on the host",
            check(json!({"HTTP": "http://10.0.0.5:22/", "Interval": "1s"})),
            denied.clone(),
        ),
        (
            "tcp check elsewhere",
            base(json!({"Checks": [{"TTL": "10s"}, {"TCP": "10.0.0.6:22", "Interval": "1s"}]})),
            denied.clone(),
        ),
        (
            "grpc check elsewhere",
            check(json!({"GRPC": "10.0.0.5:80801/x", "Interval": "1s"})),
            denied.clone(),
        ),
        (
            "the service itself at the metadata address",
            json!({"Name": "web", "Address": "169.254.169.254", "Port": 80,
                   "Check": {"HTTP": "http://169.254.169.254:80/", "Interval": "1s"}}),
            D::CheckNotAllowed(
                "a network check needs an ip Address (not loopback or link-local) and Port",
            ),
        ),
        (
            "the agent's own loopback",
            json!({"Name": "web", "Address": "127.0.0.1", "Port": 8500,
                   "Check": {"TCP": "127.0.0.1:8500", "Interval": "1s"}}),
            D::CheckNotAllowed(
                "a network check needs an ip Address (not loopback or link-local) and Port",
            ),
        ),
        (
            "a hostname could resolve anywhere",
            json!({"Name": "web", "Address": "metadata.google.internal", "Port": 80,
                   "Check": {"TCP": "metadata.google.internal:80", "Interval": "1s"}}),
            D::CheckNotAllowed(
                "a network check needs an ip Address (not loopback or link-local) and Port",
            ),
        ),
        (
            "script check",
            check(json!({"Args": ["/bin/sh", "-c", "id"], "Interval": "1s"})),
            script.clone(),
        ),
        (
            "old script check",
            check(json!({"Script": "id", "Interval": "1s"})),
            script.clone(),
        ),
        (
            "docker check",
            base(
                json!({"Checks": [{"DockerContainerID": "c", "Shell": "/bin/sh", "Interval": "1s"}]}),
            ),
            script.clone(),
        ),
        (
            "os service check",
            check(json!({"OSService": "sshd", "Interval": "1s"})),
            script,
        ),
        (
            "two kinds in one check",
            check(json!({"TTL": "1s", "HTTP": "http://169.254.169.254/"})),
            D::CheckNotAllowed("a check must be exactly one of TTL, HTTP, TCP or GRPC"),
        ),
        (
            "alias of another tenant's service",
            check(json!({"AliasService": "billing"})),
            D::FieldNotAllowed("Check.AliasService".into()),
        ),
        (
            "snake-case script args",
            check(json!({"script_args": ["id"], "Interval": "1s"})),
            D::FieldNotAllowed("Check.script_args".into()),
        ),
        (
            "lowercase http",
            check(json!({"http": "http://169.254.169.254/", "Interval": "1s"})),
            D::AmbiguousField("Check.http".into()),
        ),
        (
            "connect proxy kind",
            base(json!({"Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "billing"}})),
            D::FieldNotAllowed("Kind".into()),
        ),
        (
            "proxy block",
            base(json!({"Proxy": {"DestinationServiceName": "billing"}})),
            D::FieldNotAllowed("Proxy".into()),
        ),
        (
            "connect native",
            base(json!({"Connect": {"Native": true}})),
            D::FieldNotAllowed("Connect".into()),
        ),
        (
            "enterprise namespace",
            base(json!({"Namespace": "other"})),
            D::FieldNotAllowed("Namespace".into()),
        ),
        (
            "lowercase check",
            base(json!({"check": {"TTL": "1s"}})),
            D::AmbiguousField("check".into()),
        ),
        (
            "long-s sidecar (Go folds U+017F onto s)",
            base(
                json!({"Connect": {"\u{17f}idecar\u{17f}ervice": {"Meta": {"tenant": "victim"}}}}),
            ),
            D::NonAsciiKey,
        ),
        (
            "kelvin-sign kind (Go folds U+212A onto k)",
            base(json!({"\u{212a}ind": "connect-proxy"})),
            D::NonAsciiKey,
        ),
        (
            "non-ascii key deep in a check header",
            check(json!({"TTL": "1s", "Header": {"X-\u{e9}": ["1"]}})),
            D::NonAsciiKey,
        ),
        (
            "non-ascii service name",
            json!({"Name": "\u{212a}afka"}),
            D::BadName("service name"),
        ),
        (
            "service name with a space",
            json!({"Name": "web two"}),
            D::BadName("service name"),
        ),
    ];
    for (attack, body, expected) in cases {
        assert_eq!(register(&body, "acme"), Err(expected), "{attack}: {body}");
    }
}

#[test]
fn registration_keeps_checks_at_the_service_itself_and_scopes_their_ids() {
    let body = json!({
        "ID": "web-1", "Name": "web", "Address": "10.0.0.5", "Port": 8080, "Kind": "",
        "Check": {"CheckID": "alive", "TTL": "30s"},
        "Checks": [
            {"CheckID": "acme.http", "HTTP": "https://10.0.0.5:8080/health?x=1", "Interval": "10s",
             "Header": {"Host": ["web"]}, "TLSSkipVerify": true},
            {"TCP": "10.0.0.5:8080", "Interval": "10s"},
            {"GRPC": "10.0.0.5:8080/grpc.health.v1.Health", "Interval": "10s"},
            {"GRPC": "10.0.0.5:8080", "Interval": "10s", "CheckID": ""}
        ],
        "Proxy": null, "Connect": null
    });
    let out = register(&body, "acme").unwrap();
    assert_eq!(out["Check"]["CheckID"], "acme.alive");
    assert_eq!(out["Checks"][0]["CheckID"], "acme.http");
    assert_eq!(out["Checks"][1].get("CheckID"), None);
    assert_eq!(out["Checks"][2]["GRPC"], body["Checks"][2]["GRPC"]);
    assert_eq!(out["Checks"][3]["CheckID"], "");
    let v6 = json!({"Name": "web", "Address": "fd00::5", "Port": 80,
                    "Check": {"HTTP": "http://[fd00::5]:80/", "Interval": "1s"}});
    assert!(register(&v6, "acme").is_ok());
    let mapped = json!({"Name": "web", "Address": "::ffff:169.254.169.254", "Port": 80,
                        "Check": {"TCP": "[::ffff:169.254.169.254]:80", "Interval": "1s"}});
    assert!(register(&mapped, "acme").is_err());
}

#[test]
fn the_registered_service_name_is_compared_lowercased() {
    assert_eq!(
        registration_service_name(br#"{"Name":"PayMents","ID":"x"}"#),
        Ok("payments".into())
    );
    assert!(registration_service_name(br#"{"ID":"x"}"#).is_err());
    assert!(registration_service_name(br#"{"Name":""}"#).is_err());
    assert!(registration_service_name(b"[]").is_err());
}
