//! Tests against the documented Consul samples (copied from the project's shared
//! `fixtures/consul/` into `fixtures/` so a clone is self-contained), variations of
//! them, and the index and backoff rules.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::{Instance, SplitMix64};

const HEALTH: &str = include_str!("fixtures/health_service.json");
const CATALOG: &str = include_str!("fixtures/catalog_services.json");

/// The documented health entry.
fn sample() -> Value {
    let all: Value = serde_json::from_str(HEALTH).unwrap();
    all[0].clone()
}

/// The sample with `edit` applied to a copy, under service ID `id`.
fn entry(id: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut e = sample();
    e["Service"]["ID"] = json!(id);
    edit(&mut e);
    e
}

fn parse(entries: &[Value]) -> Result<HealthList, ConsulError> {
    parse_health_service(
        &serde_json::to_vec(entries).unwrap(),
        HealthPolicy::default(),
    )
}

fn reasons(list: &HealthList) -> Vec<(Option<&str>, &SkipReason)> {
    list.skipped
        .iter()
        .map(|s| (s.service_id.as_deref(), &s.reason))
        .collect()
}

#[test]
fn parses_the_documented_health_sample() {
    let list = parse_health_service(HEALTH.as_bytes(), HealthPolicy::default()).unwrap();
    assert!(list.skipped.is_empty());
    let [redis] = &list.instances[..] else {
        unreachable!("one instance: {list:?}")
    };
    let expected = Instance::try_new("foobar/redis", "10.1.10.12", 8000, 10)
        .unwrap()
        .with_datacenter("dc1");
    assert_eq!(redis.instance, expected);
    assert_eq!(redis.instance.authority(), "10.1.10.12:8000");
    assert_eq!(redis.service, "redis");
    assert_eq!(redis.node, "foobar");
    assert_eq!(redis.status, CheckStatus::Passing);
    assert_eq!(redis.tags, ["primary"]);
    assert_eq!(
        redis.meta.get("redis_version").map(String::as_str),
        Some("4.0")
    );
    assert_eq!(
        (
            redis.tenant.as_deref(),
            redis.group.as_deref(),
            redis.secure
        ),
        (None, None, false)
    );
}

#[test]
fn parses_the_documented_catalog_sample() {
    let services = parse_catalog_services(CATALOG.as_bytes()).unwrap();
    assert_eq!(services.len(), 3);
    assert!(services["consul"].is_empty());
    assert_eq!(services["postgresql"], ["primary", "secondary"]);
    let with_null = parse_catalog_services(br#"{"web": null}"#).unwrap();
    assert!(with_null["web"].is_empty());
    for bad in [&b"[]"[..], br#"{"web": "x"}"#, b"{", br#"{"web": [1]}"#] {
        assert!(matches!(
            parse_catalog_services(bad),
            Err(ConsulError::Shape { .. })
        ));
    }
}

#[test]
fn maps_health_to_weights() {
    let warning = entry("warn", |e| e["Checks"][1]["Status"] = json!("warning"));
    let critical = entry("crit", |e| e["Checks"][0]["Status"] = json!("critical"));
    let maintenance = entry("maint", |e| e["Checks"][0]["Status"] = json!("maintenance"));
    let no_checks = entry("none", |e| e["Checks"] = json!(null));
    let list = parse(&[sample(), warning.clone(), critical, maintenance, no_checks]).unwrap();
    let weights: Vec<_> = list
        .instances
        .iter()
        .map(|x| (x.service_id.as_str(), x.instance.weight().get(), x.status))
        .collect();
    assert_eq!(
        weights,
        [
            ("redis", 10, CheckStatus::Passing),
            ("warn", 1, CheckStatus::Warning),
            ("none", 10, CheckStatus::Passing)
        ]
    );
    assert_eq!(
        reasons(&list),
        [
            (Some("crit"), &SkipReason::Critical),
            (Some("maint"), &SkipReason::Critical)
        ]
    );
    assert!(list.skipped.iter().all(|s| !s.reason.is_bad_data()));
    // Passing only: the warning instance is out too.
    let strict = HealthPolicy { passing_only: true };
    let body = serde_json::to_vec(&[sample(), warning.clone()]).unwrap();
    let list = parse_health_service(&body, strict).unwrap();
    assert_eq!(reasons(&list), [(Some("warn"), &SkipReason::Warning)]);
    // A warning weight of 0 takes warning instances out.
    let zero = entry("warn0", |e| {
        e["Checks"][0]["Status"] = json!("warning");
        e["Service"]["Weights"]["Warning"] = json!(0);
    });
    assert_eq!(
        reasons(&parse(&[sample(), zero]).unwrap()),
        [(Some("warn0"), &SkipReason::Warning)]
    );
    // Without Weights, Consul's defaults (1/1).
    let plain = entry("plain", |e| {
        e["Service"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| k != "Weights")
    });
    assert_eq!(
        parse(&[plain]).unwrap().instances[0]
            .instance
            .weight()
            .get(),
        1
    );
}

#[test]
fn falls_back_to_the_node_address() {
    let empty = entry("a", |e| e["Service"]["Address"] = json!(""));
    let missing = entry("b", |e| {
        e["Service"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| k != "Address")
    });
    let own = entry("c", |e| e["Service"]["Address"] = json!("10.9.9.9"));
    let list = parse(&[empty, missing, own]).unwrap();
    let hosts: Vec<_> = list.instances.iter().map(|x| x.instance.host()).collect();
    assert_eq!(hosts, ["10.1.10.12", "10.1.10.12", "10.9.9.9"]);
}

#[test]
fn reads_spring_cloud_consul_metadata() {
    let spring = entry("orders-8080", |e| {
        e["Service"]["Meta"] = json!({
            "tenant": "acme", "zone": "z1", "group": "blue", "secure": "true", "management_port": "8081"
        });
        e["Node"]["Datacenter"] = json!("dc2");
    });
    let list = parse(&[spring]).unwrap();
    let x = &list.instances[0];
    assert_eq!(x.tenant.as_deref(), Some("acme"));
    assert_eq!(x.group.as_deref(), Some("blue"));
    assert!(x.secure);
    assert_eq!(x.instance.zone(), Some("z1"));
    assert_eq!(x.instance.datacenter(), Some("dc2"));
    assert_eq!(x.meta.len(), 5);
}

#[test]
fn skips_bad_entries_with_reasons_and_keeps_the_good_ones() {
    let bad = [
        entry("no-port", |e| {
            e["Service"]
                .as_object_mut()
                .unwrap()
                .retain(|k, _| k != "Port")
        }),
        entry("port-0", |e| e["Service"]["Port"] = json!(0)),
        entry("port-big", |e| e["Service"]["Port"] = json!(70_000)),
        entry("port-neg", |e| e["Service"]["Port"] = json!(-1)),
        entry("port-str", |e| e["Service"]["Port"] = json!("8000")),
        entry("addr", |e| {
            e["Service"]["Address"] = json!("not an address")
        }),
        entry("no-addr", |e| {
            e["Service"]["Address"] = json!("");
            e["Node"]["Address"] = json!("");
        }),
        entry("w-neg", |e| e["Service"]["Weights"]["Passing"] = json!(-3)),
        entry("w-zero", |e| e["Service"]["Weights"]["Passing"] = json!(0)),
        entry("tags", |e| e["Service"]["Tags"] = json!("primary")),
        entry("meta", |e| e["Service"]["Meta"] = json!({"zone": 1})),
        entry("", |_| {}),
        json!({"Node": {"Node": "n", "Address": "10.0.0.1"}}),
        json!(17),
    ];
    let mut all = vec![sample()];
    all.extend(bad.iter().cloned());
    let list = parse(&all).unwrap();
    assert_eq!(list.instances.len(), 1);
    assert_eq!(list.skipped.len(), bad.len());
    assert!(list.skipped.iter().all(|s| s.reason.is_bad_data()));
    let by_id = |id: &str| {
        list.skipped
            .iter()
            .find(|s| s.service_id.as_deref() == Some(id))
            .map(|s| s.reason.clone())
            .unwrap()
    };
    assert_eq!(by_id("no-port"), SkipReason::MissingPort);
    assert_eq!(by_id("port-0"), SkipReason::PortOutOfRange(0));
    assert_eq!(by_id("port-big"), SkipReason::PortOutOfRange(70_000));
    assert_eq!(by_id("port-neg"), SkipReason::PortOutOfRange(-1));
    assert!(matches!(by_id("port-str"), SkipReason::Malformed(m) if m.contains("string")));
    assert!(matches!(by_id("addr"), SkipReason::Invalid(_)));
    assert_eq!(
        by_id("no-addr").to_string(),
        "invalid instance: address must not be empty"
    );
    assert_eq!(
        by_id("w-neg").to_string(),
        "Service.Weights.Passing must be a positive 32-bit integer, got -3"
    );
    assert!(matches!(
        by_id("w-zero"),
        SkipReason::BadWeight { got: 0, .. }
    ));
    assert!(matches!(by_id("tags"), SkipReason::Malformed(_)));
    assert!(matches!(by_id("meta"), SkipReason::Malformed(_)));
    assert_eq!(
        by_id(""),
        SkipReason::Malformed("Service.ID is empty".into())
    );
    assert_eq!(list.skipped[12].position, 13);
    assert_eq!(list.skipped[12].service_id, None);
}

#[test]
fn skips_a_duplicate_instance_id() {
    let list = parse(&[sample(), sample()]).unwrap();
    assert_eq!(list.instances.len(), 1);
    assert_eq!(
        reasons(&list),
        [(Some("redis"), &SkipReason::Duplicate("foobar/redis".into()))]
    );
}

#[test]
fn rejects_whole_responses_that_leave_nothing_usable() {
    let shape = |body: &[u8]| {
        matches!(
            parse_health_service(body, HealthPolicy::default()),
            Err(ConsulError::Shape { .. })
        )
    };
    assert!(shape(b""));
    assert!(shape(b"<html>502</html>"));
    assert!(shape(br#"{"Node": {}}"#));
    assert!(shape(b"null"));
    assert_eq!(parse(&[]), Err(ConsulError::NoInstances));
    let critical = entry("c", |e| e["Checks"][0]["Status"] = json!("critical"));
    let Err(ConsulError::NoUsableInstances { entries, skipped }) = parse(&[critical, json!([])])
    else {
        unreachable!("all unusable")
    };
    assert_eq!((entries, skipped.len()), (2, 2));
    assert_eq!(skipped[0].reason, SkipReason::Critical);
    assert!(skipped[1].reason.is_bad_data());
}

#[test]
fn diffs_lists_by_id() {
    let a = Instance::try_new("a", "10.0.0.1", 80, 1).unwrap();
    let b = Instance::try_new("b", "10.0.0.2", 80, 1).unwrap();
    let b2 = Instance::try_new("b", "10.0.0.2", 80, 5).unwrap();
    let c = Instance::try_new("c", "10.0.0.3", 80, 1).unwrap();
    let old = [a.clone(), b.clone()];
    let new = [c.clone(), b2.clone()];
    let d = diff_by_id(&old, &new, Instance::id);
    assert_eq!(d.added, [&c]);
    assert_eq!(d.removed, [&a]);
    assert_eq!(d.changed, [(&b, &b2)]);
    assert!(!d.is_empty());
    let reordered = [b.clone(), a.clone()];
    assert!(diff_by_id(&old, &reordered, Instance::id).is_empty());
    // Duplicates: only the first occurrence counts.
    let dup = [b.clone(), b2.clone(), a.clone()];
    assert!(diff_by_id(&old, &dup, Instance::id).is_empty());
    // Also over Consul's richer records.
    let list = parse(&[sample()]).unwrap();
    let d = diff_by_id(&[], &list.instances, |x: &ConsulInstance| x.instance.id());
    assert_eq!(d.added.len(), 1);
}

#[test]
fn follows_the_blocking_query_index_rules() {
    assert_eq!(next_index(0, 42), 42); // first read
    assert_eq!(next_index(42, 42), 42); // timeout, nothing changed
    assert_eq!(next_index(42, 50), 50);
    assert_eq!(next_index(50, 7), 0); // went backwards: reset, read without blocking
    assert_eq!(next_index(0, 0), 1); // never block on 0
    assert!(!blocks(0) && blocks(1));
    assert_eq!(next_query_at(1_000, 500), 1_500);
    assert_eq!(next_query_at(u64::MAX, 1), u64::MAX);
    assert_eq!(blocking_timeout_ns(160, 5), 175);
    assert_eq!(blocking_timeout_ns(u64::MAX, 1), u64::MAX);
    assert_eq!(parse_index(Some("1234")), Ok(1234));
    assert_eq!(parse_index(Some(" 7 ")), Ok(7));
    assert_eq!(parse_index(None), Err(ConsulError::BadIndex { got: None }));
    assert_eq!(
        parse_index(Some("-1")).unwrap_err().to_string(),
        "x-consul-index must be an unsigned integer, got Some(\"-1\")"
    );
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let b = Backoff::try_new(100, 1_000).unwrap();
    let caps: Vec<_> = (0..7).map(|n| b.cap_ns(n)).collect();
    assert_eq!(caps, [0, 100, 200, 400, 800, 1_000, 1_000]);
    assert_eq!(b.cap_ns(u32::MAX), 1_000);
    assert_eq!(b.delay_ns(0, &mut SplitMix64::new(1)), 0);
    assert_eq!(
        Backoff::try_new(0, 1).unwrap_err().to_string(),
        "base_ns must be greater than zero"
    );
    assert_eq!(
        Backoff::try_new(5, 4).unwrap_err().to_string(),
        "max_ns must be at least base_ns"
    );
}

/// Any JSON value of a few levels: for throwing shapes at the parser.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-zA-Z0-9.:_ -]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[A-Za-z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths of the sample that the parser reads.
const FIELDS: &[&[&str]] = &[
    &["Node"],
    &["Node", "Node"],
    &["Node", "Address"],
    &["Node", "Datacenter"],
    &["Service"],
    &["Service", "ID"],
    &["Service", "Service"],
    &["Service", "Tags"],
    &["Service", "Address"],
    &["Service", "Port"],
    &["Service", "Meta"],
    &["Service", "Weights"],
    &["Service", "Weights", "Passing"],
    &["Service", "Weights", "Warning"],
    &["Checks"],
    &["Checks", "0", "Status"],
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn backoff_delay_stays_within_half_cap_and_cap(
        base in 1u64..1_000_000,
        extra in 0u64..100_000_000,
        failures in 0u32..100,
        seed in any::<u64>(),
    ) {
        let b = Backoff::try_new(base, base + extra).unwrap();
        let cap = b.cap_ns(failures);
        let d = b.delay_ns(failures, &mut SplitMix64::new(seed));
        prop_assert!(cap / 2 <= d && d <= cap && cap <= base + extra);
        prop_assert!(b.cap_ns(failures + 1) >= cap);
    }

    #[test]
    fn next_index_never_blocks_on_zero_and_resets_only_backwards(prev in any::<u64>(), got in any::<u64>()) {
        let next = next_index(prev, got);
        if got < prev {
            prop_assert_eq!(next, 0);
        } else {
            prop_assert!(next >= 1 && next >= got);
        }
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_health_service(&body, HealthPolicy::default());
        let _ = parse_catalog_services(&body);
    }

    #[test]
    fn a_field_of_any_shape_skips_or_keeps_its_entry_but_never_panics(
        field in 0..FIELDS.len(),
        value in any_json(),
    ) {
        let mut e = sample();
        let path = FIELDS[field];
        let (last, parents) = path.split_last().unwrap();
        let mut target = &mut e;
        for key in parents {
            target = match key.parse::<usize>() {
                Ok(i) => &mut target[i],
                Err(_) => &mut target[*key],
            };
        }
        target[*last] = value;
        let result = parse(&[e, sample()]);
        match result {
            Ok(list) => {
                prop_assert!(!list.instances.is_empty());
                prop_assert_eq!(list.instances.len() + list.skipped.len(), 2);
            }
            Err(err) => prop_assert!(false, "the untouched entry must survive: {err}"),
        }
    }
}
