//! The fake's answers against the documented samples in core/src/consul/fixtures: same
//! keys at every level, same value types, same values for what meshguard reads; and
//! meshguard-core's parsers accept them.

use std::path::PathBuf;

use meshguard_core::{parse_catalog_services, parse_health_service, HealthPolicy};
use meshguard_fake_consul::{FakeConsul, Health, Instance};
use serde_json::Value;

use crate::client::get;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../core/src/consul/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Objects at paths ending so are maps whose keys are data (node meta the fake cannot be told).
const DATA_MAPS: &[&str] = &["/Node/Meta"];

/// Asserts `got` has `want`'s structure: the same keys in every object (except data maps,
/// whose values only must have the same type), the same value types, and arrays compared
/// element by element. Returns the differences.
fn shape_diff(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    if type_name(want) != type_name(got) {
        out.push(format!(
            "{path}: type {} != {}",
            type_name(got),
            type_name(want)
        ));
        return;
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            if DATA_MAPS.iter().any(|m| path.ends_with(m)) {
                for v in g.values() {
                    if type_name(v) != "string" {
                        out.push(format!("{path}: map value of type {}", type_name(v)));
                    }
                }
                return;
            }
            for k in w.keys().filter(|k| !g.contains_key(*k)) {
                out.push(format!("{path}/{k}: missing"));
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}/{k}: not in the sample"));
            }
            for (k, wv) in w {
                if let Some(gv) = g.get(k) {
                    shape_diff(wv, gv, &format!("{path}/{k}"), out);
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                out.push(format!(
                    "{path}: {} elements, sample has {}",
                    g.len(),
                    w.len()
                ));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                shape_diff(wv, gv, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The instance the health sample describes.
fn sample_instance() -> Instance {
    Instance::new("redis", "redis", "10.1.10.12", 8000)
        .tag("primary")
        .meta("redis_version", "4.0")
        .weights(10, 1)
        .node("foobar", "10.1.10.12")
}

#[test]
fn health_service_has_the_documented_shape_and_values() {
    let sample = fixture("health_service.json");
    let fake = FakeConsul::start().unwrap();
    fake.register(sample_instance());
    let resp = get(&fake, "/v1/health/service/redis");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    assert_eq!(resp.index(), fake.index());
    assert_eq!(resp.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(resp.header("X-Consul-LastContact"), Some("0"));
    let got = resp.json();

    let mut diff = Vec::new();
    shape_diff(&sample, &got, "", &mut diff);
    assert!(diff.is_empty(), "shape differs from the sample: {diff:#?}");

    for pointer in [
        "/0/Service/ID",
        "/0/Service/Service",
        "/0/Service/Address",
        "/0/Service/Port",
        "/0/Service/Tags",
        "/0/Service/Meta",
        "/0/Service/Weights",
        "/0/Node/Node",
        "/0/Node/Address",
        "/0/Node/Datacenter",
        "/0/Checks/0/Status",
        "/0/Checks/0/CheckID",
        "/0/Checks/0/ServiceID",
        "/0/Checks/1/Status",
        "/0/Checks/1/CheckID",
    ] {
        assert_eq!(got.pointer(pointer), sample.pointer(pointer), "{pointer}");
    }
}

#[test]
fn meshguard_core_parses_the_health_answer() {
    let fake = FakeConsul::start().unwrap();
    fake.register(sample_instance());
    fake.register(
        Instance::new("redis-2", "redis", "", 8001)
            .node("bar", "10.1.10.13")
            .meta("tenant", "acme")
            .health(Health::Warning),
    );
    let body = get(&fake, "/v1/health/service/redis").body;
    let list = parse_health_service(&body, HealthPolicy::default()).unwrap();
    assert!(list.skipped.is_empty(), "{:?}", list.skipped);
    assert_eq!(list.instances.len(), 2);
    let first = &list.instances[0];
    assert_eq!(first.service_id, "redis-2", "ordered by node: bar < foobar");
    assert_eq!(first.node, "bar");
    assert_eq!(
        first.instance.host(),
        "10.1.10.13",
        "no service address: node's"
    );
    assert_eq!(first.tenant.as_deref(), Some("acme"));
    assert_eq!(first.status, meshguard_core::CheckStatus::Warning);
    let second = &list.instances[1];
    assert_eq!(second.service_id, "redis");
    assert_eq!(second.instance.host(), "10.1.10.12");
    assert_eq!(second.instance.port().get(), 8000);
    assert_eq!(second.instance.weight().get(), 10, "Weights.Passing");
    assert_eq!(second.instance.datacenter(), Some("dc1"));
    assert_eq!(second.tags, vec!["primary".to_owned()]);

    let strict = parse_health_service(&body, HealthPolicy { passing_only: true }).unwrap();
    assert_eq!(strict.instances.len(), 1);
    assert_eq!(strict.instances[0].service_id, "redis");
}

#[test]
fn catalog_services_equals_the_documented_sample() {
    let sample = fixture("catalog_services.json");
    let fake = FakeConsul::start().unwrap();
    fake.register(Instance::new("consul", "consul", "127.0.0.1", 8300));
    fake.register(Instance::new("redis", "redis", "10.0.0.1", 6379));
    fake.register(Instance::new("pg-1", "postgresql", "10.0.0.2", 5432).tag("primary"));
    fake.register(Instance::new("pg-2", "postgresql", "10.0.0.3", 5432).tag("secondary"));
    let resp = get(&fake, "/v1/catalog/services");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    assert_eq!(resp.json(), sample);
    let parsed = parse_catalog_services(&resp.body).unwrap();
    assert_eq!(
        parsed.get("postgresql"),
        Some(&vec!["primary".to_owned(), "secondary".to_owned()])
    );
}
