//! `?filter=`: the expressions meshguard's tenant filter emits (built with meshguard-core's
//! own functions), literal comparison of injection-looking strings, and Consul's 400.

use meshguard_core::{scope_query, tenant_filter, TenantName, TenantSelector};
use meshguard_fake_consul::{FakeConsul, Instance};
use serde_json::json;

use crate::client::{enc, get, ids};

fn fake_with_tenants() -> FakeConsul {
    let fake = FakeConsul::start().unwrap();
    fake.register(
        Instance::new("a-1", "db", "10.0.0.1", 5432)
            .meta("tenant", "acme")
            .tag("primary"),
    );
    fake.register(
        Instance::new("a-2", "db", "10.0.0.2", 5432)
            .meta("tenant", "acme")
            .tag("replica"),
    );
    fake.register(Instance::new("e-1", "db", "10.0.0.3", 5432).meta("tenant", "evil"));
    fake.register(Instance::new("n-1", "db", "10.0.0.4", 5432));
    fake.register(Instance::new("odd", "db", "10.0.0.5", 5432).meta("tenant", "x or 1==1"));
    fake
}

fn filtered(fake: &FakeConsul, endpoint: &str, filter: &str) -> Vec<String> {
    let resp = get(fake, &format!("{endpoint}?filter={}", enc(filter)));
    assert_eq!(resp.status, 200, "{filter}: {}", resp.text());
    ids(&resp.json())
}

#[test]
fn meshguards_tenant_filters_select_the_tenant() {
    let fake = fake_with_tenants();
    let acme = TenantName::try_new("acme").unwrap();
    let health = tenant_filter(TenantSelector::HealthServiceMeta, &acme, None).unwrap();
    assert_eq!(
        filtered(&fake, "/v1/health/service/db", &health),
        vec!["a-1", "a-2"]
    );
    let catalog = tenant_filter(TenantSelector::CatalogServiceMeta, &acme, None).unwrap();
    assert_eq!(
        filtered(&fake, "/v1/catalog/service/db", &catalog),
        vec!["a-1", "a-2"]
    );
    let narrowed = tenant_filter(
        TenantSelector::HealthServiceMeta,
        &acme,
        Some(r#""primary" in Service.Tags"#),
    )
    .unwrap();
    assert_eq!(
        filtered(&fake, "/v1/health/service/db", &narrowed),
        vec!["a-1"]
    );
    // A user filter that tries to widen the result only narrows the tenant clause.
    let widened = tenant_filter(
        TenantSelector::HealthServiceMeta,
        &acme,
        Some(r#"Service.Meta.tenant == "evil" or Service.Meta.tenant is empty"#),
    )
    .unwrap();
    assert!(filtered(&fake, "/v1/health/service/db", &widened).is_empty());

    // The whole rewritten query string, as the tenant filter sends it.
    let query = scope_query(
        Some("passing&filter=Service.ID+%21%3D+%22a-2%22"),
        TenantSelector::HealthServiceMeta,
        &acme,
    )
    .unwrap();
    let resp = get(&fake, &format!("/v1/health/service/db?{query}"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(ids(&resp.json()), vec!["a-1"]);
}

#[test]
fn operators_of_the_subset() {
    let fake = fake_with_tenants();
    let h = "/v1/health/service/db";
    let cases: &[(&str, &[&str])] = &[
        (r#"Service.Meta.tenant != "acme""#, &["e-1", "n-1", "odd"]),
        (r#""replica" in Service.Tags"#, &["a-2"]),
        (
            r#""replica" not in Service.Tags"#,
            &["a-1", "e-1", "n-1", "odd"],
        ),
        (r#"Service.Tags contains "primary""#, &["a-1"]),
        ("Service.Meta.tenant is empty", &["n-1"]),
        ("Service.Meta is empty", &["n-1"]),
        ("Service.Tags is not empty", &["a-1", "a-2"]),
        (
            r#"not (Service.Meta.tenant == "acme")"#,
            &["e-1", "n-1", "odd"],
        ),
        (
            r#"Service.ID == "e-1" or Service.ID == "n-1""#,
            &["e-1", "n-1"],
        ),
        (
            r#"Service.Service == "db" and Node.Node == "node-1""#,
            &["a-1", "a-2", "e-1", "n-1", "odd"],
        ),
        (r#"Service.Meta["tenant"] == "evil""#, &["e-1"]),
        (
            r#""passing" in Checks.Status"#,
            &["a-1", "a-2", "e-1", "n-1", "odd"],
        ),
        (
            "Service.Port == 5432 and Service.Address == `10.0.0.3`",
            &["e-1"],
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(filtered(&fake, h, filter), *want, "{filter}");
    }
    assert_eq!(
        filtered(
            &fake,
            "/v1/catalog/service/db",
            r#"ServiceMeta.tenant == "evil""#
        ),
        vec!["e-1"]
    );
    let resp = get(
        &fake,
        &format!(
            "/v1/catalog/services?filter={}",
            enc(r#"ServiceMeta.tenant == "nobody""#)
        ),
    );
    assert_eq!(resp.json(), json!({}));
    let checks = get(
        &fake,
        &format!(
            "/v1/health/checks/db?filter={}",
            enc(r#"ServiceID == "a-1""#)
        ),
    )
    .json();
    assert_eq!(checks.as_array().unwrap().len(), 1);
}

#[test]
fn injection_looking_values_are_compared_literally() {
    let fake = fake_with_tenants();
    let h = "/v1/health/service/db";
    // Inside quotes, `or 1==1` is just text.
    assert_eq!(
        filtered(&fake, h, r#"Service.Meta.tenant == "x or 1==1""#),
        vec!["odd"]
    );
    assert!(filtered(&fake, h, r#"Service.Meta.tenant == "acme) or (1==1""#).is_empty());
    // An escaped backslash is a backslash, compared literally too.
    assert!(filtered(&fake, h, r#"Service.Meta.tenant == "acme\\ or 1==1""#).is_empty());
    // A quote cannot be escaped: the string ends there and the rest does not parse.
    for bad in [
        r#"Service.Meta.tenant == "" or 1==1"#,
        r#"Service.Meta.tenant == "\" or 1==1""#,
        r#"Service.Meta.tenant == "acme" or 1==1"#,
        r#"Service.Meta.tenant == "acme\\" or \\"1\\"==\\"1""#,
    ] {
        let resp = get(&fake, &format!("{h}?filter={}", enc(bad)));
        assert_eq!(resp.status, 400, "{bad}");
        assert!(
            resp.text()
                .starts_with("Failed to create boolean expression evaluator: "),
            "{}",
            resp.text()
        );
    }
}

#[test]
fn unparsable_or_invalid_filters_are_400() {
    let fake = fake_with_tenants();
    for bad in [
        "Service.Meta.tenant ==",
        "(Service.Meta.tenant == a",
        "Service.Meta.tenant == a)",
        "Service.Nope == a",
        "Service.Tags == a",
        "Service.Meta.tenant = a",
        "Service.Meta.tenant == \"unterminated",
    ] {
        let resp = get(&fake, &format!("/v1/health/service/db?filter={}", enc(bad)));
        assert_eq!(resp.status, 400, "{bad}");
        assert!(resp.header("X-Consul-Index").is_none());
    }
    // Parsed before blocking: an invalid filter does not wait.
    let index = fake.index();
    let started = std::time::Instant::now();
    let resp = get(
        &fake,
        &format!(
            "/v1/health/service/db?index={index}&wait=10s&filter={}",
            enc("nope ==")
        ),
    );
    assert_eq!(resp.status, 400);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
