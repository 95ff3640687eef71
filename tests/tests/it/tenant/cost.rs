//! The tenant filter's host calls per request, pinned on the bench path
//! (`examples/bench/src/tenant.rs`: a trusted tenant header, then the cross-tenant check of the
//! routed cluster) and next to it. Each call is a round trip through Envoy's V8 (a `malloc` is
//! the host calling back into the VM to hand data over), so a change that adds one must show
//! up here and be justified (filters/tenant/README.md, "Cost per request").

use std::collections::BTreeMap;
use std::time::Duration;

use host_sim::{Host, LogLevel, PropertyValue, Request};

use super::hostsim::{counter, send, upstream_values, REGISTRY_KEY, WASM};
use crate::support::{host_calls_during, module};

/// The bench's configuration, verbatim.
const BENCH_CONFIG: &str = r#"{"identity":[{"trusted_header":{"cidrs":["127.0.0.0/8"]}}],"service_tenants":{"upstream":"acme"},"cross_tenant":{"destination":"cluster_name"}}"#;

/// A host like Envoy at `--concurrency 1` at its default log level (debug logging would add
/// `proxy_log` calls).
fn bench_host(config: &str) -> Host {
    let mut host = Host::builder(&module(WASM))
        .plugin_config(config)
        .workers(1)
        .base_vm()
        .log_level(LogLevel::Info)
        .build()
        .unwrap();
    assert!(host.configure().unwrap(), "rejected: {:?}", host.logs());
    host
}

/// A request from a loopback client to `cluster`, as wrk's are after the bench's
/// `header_mutation` filter when `tenant` is given.
fn request(tenant: Option<&str>, cluster: &str) -> Request {
    let request = Request::get("/")
        .property(
            "source.address",
            PropertyValue::String("127.0.0.1:40000".into()),
        )
        .property("xds.cluster_name", PropertyValue::String(cluster.into()));
    match tenant {
        Some(t) => request.header("x-meshguard-tenant", t),
        None => request,
    }
}

fn per_request(calls: &[(&str, u64)], n: u64) -> BTreeMap<String, u64> {
    calls.iter().map(|(k, v)| (k.to_string(), v * n)).collect()
}

/// 20 requests like `request(tenant, cluster)`, each answered with `status`: their host calls.
fn calls_of_20(
    host: &mut Host,
    tenant: Option<&str>,
    cluster: &str,
    status: u16,
) -> BTreeMap<String, u64> {
    host_calls_during(host, |h| {
        for _ in 0..20 {
            assert_eq!(send(h, request(tenant, cluster)).status(), Some(status));
        }
    })
}

#[test]
fn the_bench_path_costs_three_reads_and_their_allocations_per_request() {
    let mut host = bench_host(BENCH_CONFIG);
    let first = send(&mut host, request(Some("acme"), "upstream"));
    assert_eq!(upstream_values(&first, "x-meshguard-tenant"), ["acme"]);
    // The headers, `source.address`, `xds.cluster_name`: no header rewrite (the trusted
    // header already is the tenant), no counter, no log level, no shared data.
    let calls = calls_of_20(&mut host, Some("acme"), "upstream", 200);
    let expected = [
        ("proxy_get_header_map_pairs", 1),
        ("proxy_get_property", 2),
        ("malloc", 3),
    ];
    assert_eq!(calls, per_request(&expected, 20));
    // The tick hands the VM's count to the host in one call and re-reads the log level.
    let calls = host_calls_during(&mut host, |h| h.advance(Duration::from_secs(1)).unwrap());
    assert_eq!(
        calls,
        per_request(
            &[("proxy_get_log_level", 1), ("proxy_increment_metric", 1)],
            1
        )
    );
    assert_eq!(counter(&host, "allowed"), 21);
    // Nothing left to add: an idle tick costs only the log level.
    let calls = host_calls_during(&mut host, |h| h.advance(Duration::from_secs(1)).unwrap());
    assert_eq!(calls, per_request(&[("proxy_get_log_level", 1)], 1));
}

#[test]
fn source_address_is_read_only_when_there_is_a_header_to_trust() {
    let mut host = bench_host(BENCH_CONFIG);
    // No tenant header: nothing to trust, so no `source.address`; denied with a local reply
    // and its counter.
    let calls = calls_of_20(&mut host, None, "upstream", 401);
    let expected = [
        ("proxy_get_header_map_pairs", 1),
        ("malloc", 1),
        ("proxy_increment_metric", 1),
        ("proxy_send_local_response", 1),
    ];
    assert_eq!(calls, per_request(&expected, 20));
    assert_eq!(counter(&host, "denied_no_identity"), 20);
}

#[test]
fn a_header_that_is_not_the_verified_tenant_is_replaced_with_one_call() {
    // Anonymous requests get `public` and may call the shared `directory`; a client's own
    // `acme` (from an untrusted network now) is replaced.
    let config = BENCH_CONFIG
        .replace(
            r#""127.0.0.0/8"]}}]"#,
            r#""10.0.0.0/8"]}}],"no_identity":{"anonymous":{"tenant":"public"}}"#,
        )
        .replace(
            r#""cluster_name"}"#,
            r#""cluster_name","shared_services":["directory"]}"#,
        );
    let mut host = bench_host(&config);
    let view = send(&mut host, request(Some("acme"), "directory"));
    assert_eq!(upstream_values(&view, "x-meshguard-tenant"), ["public"]);
    let calls = calls_of_20(&mut host, Some("acme"), "directory", 200);
    let expected = [
        ("proxy_get_header_map_pairs", 1),
        ("proxy_get_property", 2),
        ("malloc", 3),
        ("proxy_replace_header_map_value", 1),
        // `anonymous` and `tenant_header_removed` (`allowed` waits for the tick).
        ("proxy_increment_metric", 2),
    ];
    assert_eq!(calls, per_request(&expected, 20));
    assert_eq!(counter(&host, "tenant_header_removed"), 21);
}

#[test]
fn the_registry_map_is_read_on_first_need_and_then_only_on_the_tick() {
    let config = BENCH_CONFIG.replace(
        r#""service_tenants""#,
        r#""registry_service_tenants":true,"service_tenants""#,
    );
    let mut host = bench_host(&config);
    host.set_shared_data(REGISTRY_KEY, br#"{"web":"acme"}"#);
    // A statically owned service: no shared data, and nothing for the tick to refresh.
    send(&mut host, request(Some("acme"), "upstream"));
    let calls = calls_of_20(&mut host, Some("acme"), "upstream", 200);
    assert!(!calls.contains_key("proxy_get_shared_data"), "{calls:?}");
    let calls = host_calls_during(&mut host, |h| h.advance(Duration::from_secs(1)).unwrap());
    assert!(!calls.contains_key("proxy_get_shared_data"), "{calls:?}");
    // A service only the registry knows: the first request reads the map (and its copy)...
    let calls = host_calls_during(&mut host, |h| {
        assert_eq!(send(h, request(Some("acme"), "web")).status(), Some(200));
    });
    assert_eq!(calls.get("proxy_get_shared_data"), Some(&1), "{calls:?}");
    // ... later ones cost what the bench path costs,
    let calls = calls_of_20(&mut host, Some("acme"), "web", 200);
    let expected = [
        ("proxy_get_header_map_pairs", 1),
        ("proxy_get_property", 2),
        ("malloc", 3),
    ];
    assert_eq!(calls, per_request(&expected, 20));
    // ... and the tick re-reads it once.
    let calls = host_calls_during(&mut host, |h| h.advance(Duration::from_secs(1)).unwrap());
    assert_eq!(calls.get("proxy_get_shared_data"), Some(&1), "{calls:?}");
}
