//! The router filter (`meshguard_router.wasm`) in host-sim: the Consul watch against scripted
//! answers on a virtual clock (index rules, errors, timeouts, malformed bodies, the lease
//! across VMs, the client cache), and the request path (picks handed to Envoy's
//! override_host policy, retry headers per mode, outlier ejection, failsafe and failback).
//!
//! `workers(2).base_vm()` is Envoy at `--concurrency 1`: VM 1 (main thread) and VM 2 (the
//! worker) tick; requests go to VM 2.

use std::time::Duration;

use crate::support::filter_host_with_clusters;
use host_sim::{Host, HttpCallout, PropertyValue, Request, Response};

const SEC: Duration = Duration::from_secs(1);
const WORKER: usize = 2;
const OVERRIDE: &str = "x-meshguard-override-host";

/// A config with one service `orders` on `/orders`, and `extra` service fields.
fn config(extra: &str) -> String {
    format!(
        r#"{{"consul":{{"cluster":"consul","wait":"30s","retry_base":"2s","retry_max":"8s","lease_ttl":"3s"}},
            "services":[{{"name":"orders","match":{{"path":{{"prefix":"/orders"}}}}{extra}}}]}}"#
    )
}

fn host(extra: &str) -> Host {
    filter_host_with_clusters(
        "meshguard_router",
        &config(extra),
        2,
        &["consul", "backend"],
    )
}

/// Consul's `/v1/health/service/orders` body for instances on 10.0.0.1 at `ports`.
fn health(ports: &[u16]) -> String {
    let entries: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                r#"{{"Node":{{"ID":"x","Node":"node-1","Address":"10.0.0.1","Datacenter":"dc1"}},
                    "Service":{{"ID":"orders-{p}","Service":"orders","Tags":[],"Address":"10.0.0.1","Port":{p},
                                "Meta":{{"tenant":"acme"}},"Weights":{{"Passing":1,"Warning":1}}}},
                    "Checks":[{{"Node":"node-1","CheckID":"serfHealth","Status":"passing"}}]}}"#
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

fn consul_ok(index: u64, body: &str) -> Response {
    Response::new(200)
        .header("x-consul-index", &index.to_string())
        .header("content-type", "application/json")
        .body(body.as_bytes().to_vec())
}

/// The pending Consul queries.
fn queries(host: &Host) -> Vec<HttpCallout> {
    host.http_callouts()
        .into_iter()
        .filter(|c| c.cluster == "consul")
        .collect()
}

/// The single pending Consul query (fails the test if there are none or several).
fn query(host: &Host) -> HttpCallout {
    let q = queries(host);
    assert_eq!(q.len(), 1, "one query in flight: {q:?}");
    q.into_iter().next().unwrap()
}

/// Ticks once and answers the first (non-blocking) query with `ports` at index 10.
fn synced(extra: &str, ports: &[u16]) -> Host {
    let mut host = host(extra);
    host.advance(SEC).unwrap();
    let q = query(&host);
    host.respond_http_call(q.id, consul_ok(10, &health(ports)))
        .unwrap();
    host
}

/// The override header the upstream saw for one request to `path`.
fn route(host: &mut Host, request: Request) -> Option<String> {
    let s = host.send(WORKER, request).unwrap();
    let view = host.stream(s).unwrap();
    view.upstream_request
        .as_ref()
        .and_then(|u| u.header(OVERRIDE).map(str::to_string))
}

fn first_hosts(host: &mut Host, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let hosts = route(host, Request::get("/orders/1")).unwrap_or_default();
            hosts.split(',').next().unwrap_or_default().to_string()
        })
        .collect()
}

/// The shared-data key of this configuration's `kind` (`lease`, `instances.orders`...): keys
/// carry the configuration's sync scope, `meshguard.router.v1.<scope>.<kind>`.
fn scoped_key(host: &Host, kind: &str) -> String {
    let keys: Vec<String> = host
        .shared_data_keys()
        .into_iter()
        .filter(|k| k.starts_with("meshguard.router.v1.") && k.ends_with(&format!(".{kind}")))
        .collect();
    assert_eq!(keys.len(), 1, "{kind}: {keys:?}");
    keys.into_iter().next().unwrap()
}

fn metric(host: &Host, name: &str) -> i64 {
    host.metric(&format!("meshguard_router.{name}"))
        .map_or(0, |m| m.value)
}

#[test]
fn routes_round_robin_over_the_synced_list_with_failover_order_and_retry_headers() {
    let mut host = synced("", &[8001, 8002, 8003]);
    let s = host
        .send(
            WORKER,
            Request::get("/orders/7").header(OVERRIDE, "6.6.6.6:1"),
        )
        .unwrap();
    let upstream = host.stream(s).unwrap().upstream_request.clone().unwrap();
    let hosts: Vec<&str> = upstream.header(OVERRIDE).unwrap().split(',').collect();
    assert_eq!(hosts[0], "10.0.0.1:8001", "the pick first");
    let mut all = hosts.clone();
    all.sort_unstable();
    assert_eq!(
        all,
        ["10.0.0.1:8001", "10.0.0.1:8002", "10.0.0.1:8003"],
        "then the other instances for Envoy's retries"
    );
    assert_eq!(upstream.header("x-envoy-max-retries"), Some("2"));
    assert_eq!(
        upstream.header("x-envoy-retry-on"),
        Some("5xx,reset,connect-failure")
    );
    assert_eq!(
        first_hosts(&mut host, 3),
        ["10.0.0.1:8002", "10.0.0.1:8003", "10.0.0.1:8001"]
    );
    // `routed` is added up on the worker's ticks (one host call per tick, not per request).
    host.advance(SEC).unwrap();
    assert_eq!(metric(&host, "orders.routed"), 4);
    // Not routed by the filter: the client's value is removed all the same.
    let s = host
        .send(WORKER, Request::get("/other").header(OVERRIDE, "6.6.6.6:1"))
        .unwrap();
    let upstream = host.stream(s).unwrap().upstream_request.clone().unwrap();
    assert_eq!(upstream.header(OVERRIDE), None);
    assert_eq!(upstream.header("x-envoy-max-retries"), None);
}

#[test]
fn non_idempotent_methods_are_not_retried_unless_allowed() {
    let mut host = synced("", &[8001, 8002]);
    let s = host.send(WORKER, Request::post("/orders")).unwrap();
    let upstream = host.stream(s).unwrap().upstream_request.clone().unwrap();
    assert_eq!(upstream.header("x-envoy-max-retries"), Some("0"));
    assert_eq!(upstream.header(OVERRIDE), Some("10.0.0.1:8001"));
    let mut host = synced(r#","retry_non_idempotent":true,"retries":1"#, &[8001, 8002]);
    let s = host.send(WORKER, Request::post("/orders")).unwrap();
    let upstream = host.stream(s).unwrap().upstream_request.clone().unwrap();
    assert_eq!(upstream.header("x-envoy-max-retries"), Some("1"));
    assert_eq!(
        upstream.header(OVERRIDE),
        Some("10.0.0.1:8001,10.0.0.1:8002")
    );
}

#[test]
fn failfast_sends_one_host_and_disables_client_requested_retries() {
    let mut host = synced(
        r#","mode":"failfast","per_try_timeout":"1s""#,
        &[8001, 8002],
    );
    let s = host
        .send(
            WORKER,
            Request::get("/orders")
                .header("x-envoy-retry-on", "5xx")
                .header("x-envoy-max-retries", "9"),
        )
        .unwrap();
    let upstream = host.stream(s).unwrap().upstream_request.clone().unwrap();
    assert_eq!(upstream.header(OVERRIDE), Some("10.0.0.1:8001"));
    assert_eq!(upstream.header("x-envoy-max-retries"), Some("0"));
    assert_eq!(upstream.header("x-envoy-retry-on"), None);
}

#[test]
fn one_vm_polls_and_blocking_queries_follow_consuls_index_rules() {
    let mut host = synced(r#","tag":"v1""#, &[8001]);
    assert!(
        queries(&host).is_empty(),
        "rate-limited: nothing before 1s after the start"
    );
    host.advance(SEC).unwrap();
    let q = query(&host);
    assert_eq!(q.vm, 1, "the main-thread VM took the lease first");
    assert_eq!(q.header(":method"), Some("GET"));
    assert_eq!(q.header(":authority"), Some("consul"));
    assert_eq!(
        q.header(":path"),
        Some("/v1/health/service/orders?passing=1&tag=v1&index=10&wait=30000ms")
    );
    assert_eq!(q.timeout_ms, 30_000 + 1_875 + 5_000);
    // The index goes backwards (a Consul restart): reset, re-read without blocking.
    host.respond_http_call(q.id, consul_ok(4, &health(&[8001])))
        .unwrap();
    host.advance(SEC).unwrap();
    let q = query(&host);
    assert_eq!(
        q.header(":path"),
        Some("/v1/health/service/orders?passing=1&tag=v1")
    );
    // Index 0 is never blocked on.
    host.respond_http_call(q.id, consul_ok(0, &health(&[8001])))
        .unwrap();
    host.advance(SEC).unwrap();
    let q = query(&host);
    assert!(
        q.header(":path")
            .unwrap()
            .ends_with("&index=1&wait=30000ms"),
        "{q:?}"
    );
}

#[test]
fn errors_timeouts_malformed_and_empty_answers_keep_the_cached_list_and_back_off() {
    let mut host = synced("", &[8001, 8002]);
    host.advance(SEC).unwrap();
    // 500 → backoff of 1..2s (base 2s, equal jitter).
    let q = query(&host);
    host.respond_http_call(q.id, Response::new(500).body(b"No cluster leader".to_vec()))
        .unwrap();
    host.advance(Duration::from_millis(999)).unwrap();
    assert!(queries(&host).is_empty(), "backing off");
    host.advance(Duration::from_millis(1001)).unwrap();
    // Connection reset.
    let q = query(&host);
    host.fail_http_call(q.id).unwrap();
    host.advance(4 * SEC).unwrap();
    // Malformed body.
    let q = query(&host);
    host.respond_http_call(q.id, consul_ok(11, "{\"not\": \"an array\"}"))
        .unwrap();
    host.advance(8 * SEC).unwrap();
    // A timeout: nothing answers within wait + wait/16 + margin.
    let q = query(&host);
    host.advance(Duration::from_millis(u64::from(q.timeout_ms) + 1))
        .unwrap();
    assert_eq!(metric(&host, "orders.sync_errors"), 4);
    host.advance(8 * SEC).unwrap();
    // An empty service: never published.
    let q = query(&host);
    host.respond_http_call(q.id, consul_ok(12, "[]")).unwrap();
    assert_eq!(metric(&host, "orders.sync_empty"), 1);
    let warnings: Vec<String> = host
        .logs()
        .into_iter()
        .filter(|l| l.message.contains("keeping the cached list"))
        .map(|l| l.message)
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "logged once per error streak, and the empty answer: {warnings:?}"
    );
    // Requests still go to the cached instances.
    let mut seen = first_hosts(&mut host, 4);
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["10.0.0.1:8001", "10.0.0.1:8002"]);
    // The cache's age grows while Consul has not confirmed the list (last at 1s, now ~61s).
    host.advance(SEC).unwrap();
    let age = metric(&host, "orders.cache_age_ms");
    assert!((55_000..=65_000).contains(&age), "{age}");
}

#[test]
fn a_deregistered_instance_stops_receiving_traffic_after_one_blocking_round() {
    let mut host = synced("", &[8001, 8002, 8003]);
    host.advance(SEC).unwrap();
    let q = query(&host);
    host.respond_http_call(q.id, consul_ok(11, &health(&[8001, 8003])))
        .unwrap();
    let hosts = first_hosts(&mut host, 6);
    assert!(!hosts.contains(&"10.0.0.1:8002".to_string()), "{hosts:?}");
    assert_eq!(metric(&host, "orders.sync_changes"), 2);
    host.advance(SEC).unwrap();
    assert_eq!(metric(&host, "orders.instances"), 2);
}

#[test]
fn a_routing_worker_takes_a_changed_list_at_its_next_tick() {
    let mut host = synced("", &[8001, 8002, 8003]);
    assert_eq!(
        first_hosts(&mut host, 3).len(),
        3,
        "the worker holds the list"
    );
    assert_eq!(metric(&host, "orders.lists_adopted"), 1);
    host.advance(SEC).unwrap();
    let q = query(&host);
    host.respond_http_call(q.id, consul_ok(11, &health(&[8001, 8003])))
        .unwrap();
    // Requests read no shared data once the worker has a list: until its next tick (`tick`,
    // 1 s by default) it routes on the list it holds, ...
    assert!(first_hosts(&mut host, 3).contains(&"10.0.0.1:8002".to_string()));
    // ... and from that tick on, on the new one.
    host.advance(SEC).unwrap();
    let hosts = first_hosts(&mut host, 6);
    assert!(!hosts.contains(&"10.0.0.1:8002".to_string()), "{hosts:?}");
    assert_eq!(metric(&host, "orders.lists_adopted"), 2);
}

#[test]
fn publishes_the_service_tenant_map_for_the_tenant_filter() {
    let host = synced("", &[8001]);
    let (value, _) = host
        .shared_data("meshguard.registry.service_tenants.v1")
        .unwrap();
    assert_eq!(value, br#"{"orders":"acme"}"#);
}

#[test]
fn a_released_lease_passes_to_the_other_vm_which_blocks_at_the_published_index() {
    let mut host = synced("", &[8001]);
    assert!(host.shutdown_root(1).unwrap());
    host.advance(SEC).unwrap();
    let q = query(&host);
    assert_eq!(q.vm, 2);
    assert!(q
        .header(":path")
        .unwrap()
        .ends_with("?passing=1&index=10&wait=30000ms"));
}

#[test]
fn a_lapsed_lease_is_taken_over_and_only_then_is_consul_queried() {
    const EPOCH: u64 = 1_800_000_000_000_000_000;
    let mut host = Host::builder(&crate::support::module("meshguard_router"))
        .plugin_config(config(""))
        .workers(2)
        .base_vm()
        .cluster("consul")
        .epoch_ns(EPOCH)
        .build()
        .unwrap();
    assert!(host.configure().unwrap());
    let lease_key = scoped_key(&host, "lease");
    let (lease, _) = host.shared_data(&lease_key).unwrap();
    assert_eq!(lease, b"0 0", "created before traffic, held by nobody");
    // Another VM holds the lease until 2.5s of virtual time and then stops renewing it.
    host.set_shared_data(
        &lease_key,
        format!("77 {}", EPOCH + 2_500_000_000).as_bytes(),
    );
    host.advance(2 * SEC).unwrap();
    assert!(queries(&host).is_empty(), "the lease is held elsewhere");
    assert_eq!(metric(&host, "lease_takeovers"), 0);
    host.advance(SEC).unwrap();
    let q = query(&host);
    assert_eq!(q.vm, 1);
    assert_eq!(metric(&host, "lease_takeovers"), 1);
    let (lease, _) = host.shared_data(&lease_key).unwrap();
    let lease = String::from_utf8(lease).unwrap();
    let (owner, until) = lease.split_once(' ').unwrap();
    assert_ne!(owner, "77");
    assert_eq!(
        until.parse::<u64>().unwrap(),
        EPOCH + 3_000_000_000 + 3_000_000_000
    );
}

#[test]
fn outlier_ejection_takes_a_failing_instance_out_of_rotation() {
    let mut host = synced(
        r#","outlier":{"consecutive_failures":2,"base_ejection":"30s","max_ejection_percent":50}"#,
        &[8001, 8002, 8003],
    );
    host.set_upstream(|req| {
        let first = req
            .header(OVERRIDE)
            .unwrap_or_default()
            .split(',')
            .next()
            .unwrap_or_default();
        Response::new(if first == "10.0.0.1:8002" { 503 } else { 200 })
    });
    let hosts = first_hosts(&mut host, 9);
    let to_bad = hosts.iter().filter(|h| *h == "10.0.0.1:8002").count();
    assert_eq!(to_bad, 2, "two failures eject it: {hosts:?}");
    assert_eq!(metric(&host, "orders.ejections"), 1);
    // Failover lists skip it too.
    let all = route(&mut host, Request::get("/orders")).unwrap();
    assert!(!all.contains("8002"), "{all}");
    // Back after the ejection time.
    host.advance(31 * SEC).unwrap();
    assert!(first_hosts(&mut host, 3).contains(&"10.0.0.1:8002".to_string()));
}

#[test]
fn failed_tries_before_the_answering_host_count_against_their_instances() {
    let mut host = synced(
        r#","outlier":{"consecutive_failures":1,"max_ejection_percent":50}"#,
        &[8001, 8002, 8003],
    );
    // Envoy retried: 8001 failed, 8002 answered.
    let s = host
        .send(
            WORKER,
            Request::get("/orders").property(
                "upstream.address",
                PropertyValue::String("10.0.0.1:8002".into()),
            ),
        )
        .unwrap();
    assert_eq!(host.stream(s).unwrap().status(), Some(200));
    assert_eq!(metric(&host, "orders.ejections"), 1);
    let hosts = first_hosts(&mut host, 4);
    assert!(!hosts.contains(&"10.0.0.1:8001".to_string()), "{hosts:?}");
}

#[test]
fn consistent_hash_keeps_a_user_on_one_instance() {
    let mut host = synced(
        r#","balancer":"consistent_hash","hash_on":{"header":"X-User"}"#,
        &[8001, 8002, 8003, 8004],
    );
    let pick = |host: &mut Host, user: &str| {
        route(host, Request::get("/orders").header("x-user", user))
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string()
    };
    let alice = pick(&mut host, "alice");
    for _ in 0..5 {
        assert_eq!(pick(&mut host, "alice"), alice);
    }
    let users: Vec<String> = (0..40).map(|u| pick(&mut host, &format!("u{u}"))).collect();
    let mut distinct = users.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "keys spread over every instance");
}

#[test]
fn failsafe_turns_upstream_errors_into_the_configured_answer() {
    let mut host = synced(
        r#","mode":"failsafe","fallback_response":{"status":200,"body":"[]","headers":{"content-type":"application/json"}}"#,
        &[8001],
    );
    host.set_upstream(|_| Response::new(503));
    let s = host.send(WORKER, Request::get("/orders")).unwrap();
    let view = host.stream(s).unwrap();
    assert_eq!(view.status(), Some(200));
    assert_eq!(view.body_str(), "[]");
    assert_eq!(view.response_header("x-meshguard-router"), Some("failsafe"));
    assert_eq!(
        view.response_header("content-type"),
        Some("application/json")
    );
    assert_eq!(metric(&host, "orders.failsafe"), 1);
    host.set_upstream(|_| Response::new(404));
    let s = host.send(WORKER, Request::get("/orders")).unwrap();
    assert_eq!(
        host.stream(s).unwrap().status(),
        Some(404),
        "only errors are swallowed"
    );
}

#[test]
fn failback_answers_at_once_and_resends_in_the_background_until_it_succeeds() {
    let mut host = synced(
        r#","mode":"failback","fallback_response":{"status":202},
           "failback":{"cluster":"backend","queue_size":1,"max_attempts":4,"retry_base":"2s","retry_max":"4s"}"#,
        &[8001],
    );
    host.set_upstream(|_| Response::new(503));
    let s = host
        .send(
            WORKER,
            Request::new("PUT", "/orders/9")
                .header("x-id", "9")
                .body(b"{\"qty\":1}".to_vec()),
        )
        .unwrap();
    let view = host.stream(s).unwrap();
    assert_eq!(view.status(), Some(202));
    assert_eq!(view.response_header("x-meshguard-router"), Some("failback"));
    // The queue holds one: the next failure is dropped and counted. POSTs are never queued.
    host.send(WORKER, Request::get("/orders/10")).unwrap();
    host.send(WORKER, Request::post("/orders")).unwrap();
    assert_eq!(metric(&host, "orders.failback_queued"), 1);
    assert_eq!(metric(&host, "orders.failback_dropped"), 1);
    // Resent after 1..2s from the worker's root, through the service's cluster.
    host.advance(2 * SEC).unwrap();
    let resends: Vec<HttpCallout> = host
        .http_callouts()
        .into_iter()
        .filter(|c| c.cluster == "backend")
        .collect();
    assert_eq!(resends.len(), 1, "{resends:?}");
    let r = &resends[0];
    assert_eq!(r.vm, WORKER);
    assert_eq!(r.header(":method"), Some("PUT"));
    assert_eq!(r.header(":path"), Some("/orders/9"));
    assert_eq!(r.header("x-id"), Some("9"));
    assert_eq!(r.header(OVERRIDE), Some("10.0.0.1:8001"));
    assert_eq!(r.body, b"{\"qty\":1}");
    host.respond_http_call(r.id, Response::new(503)).unwrap();
    host.advance(4 * SEC).unwrap();
    let r = host
        .http_callouts()
        .into_iter()
        .find(|c| c.cluster == "backend")
        .unwrap();
    host.respond_http_call(r.id, Response::ok()).unwrap();
    assert_eq!(metric(&host, "orders.failback_delivered"), 1);
    host.advance(10 * SEC).unwrap();
    assert!(
        host.http_callouts().iter().all(|c| c.cluster != "backend"),
        "delivered once"
    );
}

#[test]
fn bad_config_is_rejected_at_configure_naming_the_field() {
    let module = crate::support::module("meshguard_router");
    let mut host = Host::builder(&module)
        .plugin_config(config(r#","balancer":"consistent_hash""#))
        .build()
        .unwrap();
    assert!(!host.configure().unwrap());
    let logs: Vec<String> = host.logs().into_iter().map(|l| l.message).collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("invalid configuration: services[0].hash_on: is required")),
        "{logs:?}"
    );
}

/// A health entry with a zone, a datacenter, weights and a check status.
fn entry(port: u16, dc: &str, zone: &str, weights: (u32, u32), status: &str) -> String {
    format!(
        r#"{{"Node":{{"Node":"node-{port}","Address":"10.0.0.1","Datacenter":"{dc}"}},
            "Service":{{"ID":"orders-{port}","Service":"orders","Address":"10.0.0.1","Port":{port},
                        "Meta":{{"zone":"{zone}"}},"Weights":{{"Passing":{},"Warning":{}}}}},
            "Checks":[{{"Status":"{status}"}}]}}"#,
        weights.0, weights.1
    )
}

#[test]
fn locality_prefers_the_local_zone_then_the_local_datacenter() {
    let mut host = host(r#","locality":{"datacenter":"dc1","zone":"a"}"#);
    host.advance(SEC).unwrap();
    let body = format!(
        "[{},{},{}]",
        entry(8001, "dc2", "a", (1, 1), "passing"),
        entry(8002, "dc1", "b", (1, 1), "passing"),
        entry(8003, "dc1", "a", (1, 1), "passing"),
    );
    host.respond_http_call(query(&host).id, consul_ok(10, &body))
        .unwrap();
    assert_eq!(first_hosts(&mut host, 4), ["10.0.0.1:8003"; 4]);
    // The local zone's only instance fails and is ejected: the local datacenter takes over
    // before the remote one with the same zone name.
    let mut host = host_with_outlier_locality(&body);
    host.set_upstream(|req| {
        let first = req
            .header(OVERRIDE)
            .unwrap_or_default()
            .split(',')
            .next()
            .unwrap_or_default();
        Response::new(if first == "10.0.0.1:8003" { 503 } else { 200 })
    });
    first_hosts(&mut host, 1);
    assert_eq!(first_hosts(&mut host, 3), ["10.0.0.1:8002"; 3]);
}

fn host_with_outlier_locality(body: &str) -> Host {
    let mut host = host(
        r#","locality":{"datacenter":"dc1","zone":"a"},"outlier":{"consecutive_failures":1,"max_ejection_percent":50}"#,
    );
    host.advance(SEC).unwrap();
    host.respond_http_call(query(&host).id, consul_ok(10, body))
        .unwrap();
    host
}

#[test]
fn warning_instances_keep_their_warning_weight_when_not_passing_only() {
    let config = r#"{"consul":{"cluster":"consul","passing_only":false},
        "services":[{"name":"orders","balancer":"weighted_round_robin"}]}"#;
    let mut host = filter_host_with_clusters("meshguard_router", config, 2, &["consul"]);
    host.advance(SEC).unwrap();
    let q = query(&host);
    assert_eq!(
        q.header(":path"),
        Some("/v1/health/service/orders"),
        "no ?passing"
    );
    let body = format!(
        "[{},{},{}]",
        entry(8001, "dc1", "", (3, 1), "passing"),
        entry(8002, "dc1", "", (3, 1), "warning"),
        entry(8003, "dc1", "", (3, 1), "critical"),
    );
    host.respond_http_call(q.id, consul_ok(10, &body)).unwrap();
    let mut hosts = first_hosts(&mut host, 8);
    hosts.sort();
    assert_eq!(
        hosts,
        [vec!["10.0.0.1:8001"; 6], vec!["10.0.0.1:8002"; 2]].concat(),
        "3:1 by Weights.Passing vs Weights.Warning; the critical one is out"
    );
}

#[test]
fn a_tenant_scoped_service_queries_consul_with_a_filter() {
    let mut host = host(r#","tenant":"acme""#);
    host.advance(SEC).unwrap();
    assert_eq!(
        query(&host).header(":path"),
        Some(
            "/v1/health/service/orders?passing=1&filter=Service.Meta.tenant%20%3D%3D%20%22acme%22"
        )
    );
}

#[test]
fn the_next_datacenter_takes_over_when_the_local_one_has_no_eligible_instance() {
    let config = r#"{"consul":{"cluster":"consul","datacenters":["dc1","dc2"]},
        "services":[{"name":"orders","outlier":{"consecutive_failures":2,"max_ejection_percent":50}}]}"#;
    let mut host = filter_host_with_clusters("meshguard_router", config, 2, &["consul"]);
    host.advance(SEC).unwrap();
    let mut pending = queries(&host);
    pending.sort_by_key(|q| q.header(":path").map(str::to_string));
    let paths: Vec<&str> = pending.iter().filter_map(|q| q.header(":path")).collect();
    assert_eq!(
        paths,
        [
            "/v1/health/service/orders?passing=1&dc=dc1",
            "/v1/health/service/orders?passing=1&dc=dc2"
        ]
    );
    let local = format!("[{}]", entry(8001, "dc1", "", (1, 1), "passing"));
    let remote = format!("[{}]", entry(8002, "dc2", "", (1, 1), "passing"));
    host.respond_http_call(pending[0].id, consul_ok(10, &local))
        .unwrap();
    host.respond_http_call(pending[1].id, consul_ok(20, &remote))
        .unwrap();
    assert_eq!(
        first_hosts(&mut host, 3),
        ["10.0.0.1:8001"; 3],
        "the local datacenter"
    );
    let s = host.send(WORKER, Request::get("/orders")).unwrap();
    let hosts = host.stream(s).unwrap().upstream_request.clone().unwrap();
    assert_eq!(
        hosts.header(OVERRIDE),
        Some("10.0.0.1:8001,10.0.0.1:8002"),
        "dc2 as failover"
    );
    host.set_upstream(|req| {
        let first = req
            .header(OVERRIDE)
            .unwrap_or_default()
            .split(',')
            .next()
            .unwrap_or_default();
        Response::new(if first == "10.0.0.1:8001" { 503 } else { 200 })
    });
    first_hosts(&mut host, 2);
    assert_eq!(metric(&host, "orders.ejections"), 1);
    assert_eq!(
        first_hosts(&mut host, 3),
        ["10.0.0.1:8002"; 3],
        "dc2 while dc1 is ejected"
    );
}

/// The benchmark's configuration (`examples/bench/src/router.rs`): service `orders` on every
/// request, round robin, in `mode`, a 100 ms tick; three synced instances. Envoy's default
/// log level (debug logging would add `proxy_log` calls).
fn bench_host(mode: &str) -> Host {
    let config = format!(
        r#"{{"consul":{{"cluster":"consul","tick":"100ms"}},"services":[{{"name":"orders","mode":"{mode}"}}]}}"#
    );
    let mut host = Host::builder(&crate::support::module("meshguard_router"))
        .plugin_config(config)
        .workers(2)
        .base_vm()
        .cluster("consul")
        .log_level(host_sim::LogLevel::Info)
        .build()
        .unwrap();
    assert!(host.configure().unwrap());
    host.advance(Duration::from_millis(100)).unwrap();
    host.respond_http_call(query(&host).id, consul_ok(10, &health(&[8001, 8002, 8003])))
        .unwrap();
    host
}

/// Host calls per request on the benchmark's path, pinned: each one is a round trip through
/// Envoy's V8 (a `malloc` is the host calling back into the VM to hand data over), so a change
/// that adds one must show up here and be justified (see the README's "Cost per request").
#[test]
fn host_calls_per_request_are_pinned_for_the_benchmark_configuration() {
    let per_request = |calls: &[(&str, u64)], n: u64| -> std::collections::BTreeMap<String, u64> {
        calls.iter().map(|(k, v)| (k.to_string(), v * n)).collect()
    };
    // Failfast: the override header and `x-envoy-max-retries: 0` set, the client's retry-on
    // and per-try timeout removed. No shared data (the list is taken on ticks), no clock (round
    // robin needs none), no counter (`routed` is added up on ticks), no response-path work.
    let failfast: &[(&str, u64)] = &[
        ("proxy_replace_header_map_value", 2),
        ("proxy_remove_header_map_value", 2),
    ];
    // Failover: the method decides on retries, so the request's header map is read (one call
    // and one allocation, which also shows that there is no per-try timeout to remove); then
    // the override, max-retries and retry-on headers are set.
    let failover: &[(&str, u64)] = &[
        ("proxy_get_header_map_pairs", 1),
        ("malloc", 1),
        ("proxy_replace_header_map_value", 3),
    ];
    for (mode, expected) in [("failfast", failfast), ("failover", failover)] {
        let mut host = bench_host(mode);
        // The first request adopts the list (the pool is empty until then).
        route(&mut host, Request::get("/orders")).unwrap();
        let entries = host.guest_calls();
        let calls = crate::support::host_calls_during(&mut host, |h| {
            for _ in 0..20 {
                assert!(route(h, Request::get("/orders")).is_some());
            }
        });
        assert_eq!(calls, per_request(expected, 20), "{mode}");
        // Entries into the VM (tests/tests/it/callbacks.rs): context create, request headers,
        // response headers, done, delete; no body, trailer or access-log callback exported.
        assert_eq!(host.guest_calls() - entries, 5 * 20, "{mode}");
        // The routed requests are counted on the next tick.
        assert_eq!(metric(&host, "orders.routed"), 0);
        host.advance(Duration::from_millis(100)).unwrap();
        assert_eq!(metric(&host, "orders.routed"), 21, "{mode}");
    }
}

/// Failfast in the benchmark's configuration reads no request header and removes the client's
/// retry headers blindly; failover reads the map once and removes only what is there. Either
/// way nothing the client sent survives.
#[test]
fn client_retry_headers_never_survive_whether_or_not_the_map_was_read() {
    for (mode, max_retries) in [("failfast", "0"), ("failover", "2")] {
        let mut host = bench_host(mode);
        let s = host
            .send(
                WORKER,
                Request::get("/orders")
                    .header(OVERRIDE, "6.6.6.6:1")
                    .header("x-envoy-retry-on", "5xx")
                    .header("x-envoy-max-retries", "9")
                    .header("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
            )
            .unwrap();
        let upstream = host.stream(s).unwrap().upstream_request.clone().unwrap();
        assert!(
            upstream
                .header(OVERRIDE)
                .unwrap()
                .starts_with("10.0.0.1:800"),
            "{mode}"
        );
        assert_eq!(upstream.header("x-envoy-max-retries"), Some(max_retries));
        assert_eq!(
            upstream.header("x-envoy-upstream-rq-per-try-timeout-ms"),
            None,
            "{mode}"
        );
        let retry_on = upstream.header("x-envoy-retry-on");
        match mode {
            "failfast" => assert_eq!(retry_on, None),
            _ => assert_eq!(retry_on, Some("5xx,reset,connect-failure")),
        }
    }
}

/// A PUT whose upstream fails before the body is through: resending what was captured would
/// write an incomplete body, so the request is answered but not queued (counted as skipped).
#[test]
fn failback_never_queues_a_request_whose_body_did_not_finish() {
    let mut host = synced(
        r#","mode":"failback","fallback_response":{"status":202},
           "failback":{"cluster":"backend","retry_base":"1s","retry_max":"2s"}"#,
        &[8001],
    );
    let s = host.new_stream(WORKER).unwrap();
    let headers = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    host.request_headers(
        s,
        headers(&[
            (":method", "PUT"),
            (":path", "/orders/9"),
            (":authority", "shop"),
            ("content-length", "20"),
        ]),
        false,
    )
    .unwrap();
    host.request_body(s, b"{\"qty\":", false).unwrap();
    // The upstream answers 503 at once, before the rest of the body.
    host.response_headers(s, headers(&[(":status", "503")]), false)
        .unwrap();
    let view = host.stream(s).unwrap();
    assert_eq!(view.status(), Some(202), "{view:?}");
    assert_eq!(view.response_header("x-meshguard-router"), Some("failback"));
    assert_eq!(metric(&host, "orders.failback_queued"), 0);
    assert_eq!(metric(&host, "orders.failback_skipped"), 1);
    host.finish(s).unwrap();
    host.advance(5 * SEC).unwrap();
    assert!(
        host.http_callouts().iter().all(|c| c.cluster != "backend"),
        "nothing resent"
    );
    // The same request whole is queued and resent with its whole body.
    host.set_upstream(|_| Response::new(503));
    host.send(
        WORKER,
        Request::new("PUT", "/orders/9").body(b"{\"qty\":1}".to_vec()),
    )
    .unwrap();
    assert_eq!(metric(&host, "orders.failback_queued"), 1);
    host.advance(2 * SEC).unwrap();
    let r = host
        .http_callouts()
        .into_iter()
        .find(|c| c.cluster == "backend")
        .unwrap();
    assert_eq!(r.body, b"{\"qty\":1}");
    // Trailers end a request too: then it is whole.
    host.send(
        WORKER,
        Request::new("PUT", "/orders/10")
            .body(b"{\"qty\":2}".to_vec())
            .trailer("x-checksum", "1"),
    )
    .unwrap();
    assert_eq!(metric(&host, "orders.failback_queued"), 2);
    assert_eq!(metric(&host, "orders.failback_skipped"), 1);
}

/// VM 1 holds the lease and blocks on index 10; the lease passes to another VM ("77", as when
/// VM 1 stalled past `lease_ttl`), which publishes index 20. VM 1's answer arriving before its
/// next tick must not overwrite the newer list, nor move the status back.
#[test]
fn a_vm_that_lost_the_lease_does_not_publish_its_late_answer() {
    let mut host = synced("", &[8001]);
    host.advance(SEC).unwrap();
    let q = query(&host);
    assert_eq!(q.vm, 1);
    let lease_key = scoped_key(&host, "lease");
    let list_key = scoped_key(&host, "instances.orders");
    let status_key = scoped_key(&host, "status.orders");
    let far = u64::MAX / 2;
    host.set_shared_data(&lease_key, format!("77 {far}").as_bytes());
    host.set_shared_data(&status_key, b"20 5");
    let (list_before, _) = host.shared_data(&list_key).unwrap();
    host.respond_http_call(q.id, consul_ok(11, &health(&[8002])))
        .unwrap();
    assert_eq!(host.shared_data(&list_key).unwrap().0, list_before);
    assert_eq!(host.shared_data(&status_key).unwrap().0, b"20 5");
    assert_eq!(
        metric(&host, "orders.sync_changes"),
        1,
        "only the first sync"
    );
    assert!(queries(&host).is_empty(), "stopped polling at once");
    host.advance(SEC).unwrap();
    assert!(queries(&host).is_empty(), "held by 77");
    let mut hosts = first_hosts(&mut host, 2);
    hosts.dedup();
    assert_eq!(hosts, ["10.0.0.1:8001"]);
}

/// A health body for `orders` on 10.0.0.1 with one instance per tenant (`""`: no meta).
fn health_with_tenants(tenants: &[&str]) -> String {
    let entries: Vec<String> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let meta = if t.is_empty() {
                String::new()
            } else {
                format!(r#""tenant":"{t}""#)
            };
            format!(
                r#"{{"Node":{{"Node":"node-1","Address":"10.0.0.1","Datacenter":"dc1"}},
                    "Service":{{"ID":"orders-{i}","Service":"orders","Port":{},"Meta":{{{meta}}}}},
                    "Checks":[]}}"#,
                8001 + i
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

#[test]
fn an_instance_under_another_tenant_takes_the_service_out_of_the_tenant_map() {
    let mut host = host("");
    host.advance(SEC).unwrap();
    host.respond_http_call(
        query(&host).id,
        consul_ok(10, &health_with_tenants(&["acme", "acme"])),
    )
    .unwrap();
    let tenants = |host: &Host| {
        String::from_utf8(
            host.shared_data("meshguard.registry.service_tenants.v1")
                .unwrap()
                .0,
        )
        .unwrap()
    };
    assert_eq!(tenants(&host), r#"{"orders":"acme"}"#);
    // Globex registers an instance under `orders` (first in Consul's answer).
    host.advance(SEC).unwrap();
    host.respond_http_call(
        query(&host).id,
        consul_ok(11, &health_with_tenants(&["globex", "acme", "acme"])),
    )
    .unwrap();
    assert_eq!(tenants(&host), "{}", "no owner rather than globex");
    assert_eq!(metric(&host, "orders.tenant_conflicts"), 1);
    let warned = host
        .logs()
        .into_iter()
        .filter(|l| l.message.contains("left out of the tenant map"))
        .count();
    assert_eq!(warned, 1);
}

/// Another router configuration in the same `vm_id` (an older one draining, say) holds its
/// own lease and publishes its own part of the tenant map: this one still syncs, and the
/// tenant filter sees both parts merged.
#[test]
fn another_configuration_in_the_vm_id_neither_blocks_the_sync_nor_loses_its_tenants() {
    let mut host = host("");
    let far = u64::MAX / 2;
    let other = "meshguard.router.v1.00000000deadbeef";
    host.set_shared_data(&format!("{other}.lease"), format!("77 {far}").as_bytes());
    host.set_shared_data(
        "meshguard.registry.service_tenants.v1.00000000deadbeef",
        br#"{"users":"globex","orders":"acme"}"#,
    );
    host.set_shared_data(
        "meshguard.registry.service_tenants.v1.scopes",
        b"00000000deadbeef",
    );
    host.advance(SEC).unwrap();
    let q = query(&host);
    assert_eq!(q.vm, 1, "this configuration's own lease");
    host.respond_http_call(q.id, consul_ok(10, &health(&[8001])))
        .unwrap();
    assert_eq!(
        host.shared_data("meshguard.registry.service_tenants.v1")
            .unwrap()
            .0,
        br#"{"orders":"acme","users":"globex"}"#
    );
    assert_eq!(first_hosts(&mut host, 1), ["10.0.0.1:8001"]);
}

/// A router configuration that is gone (its last VM released the lease long ago and nobody
/// renews it: removed, or replaced by one with other services) must not keep its services in
/// the tenant map: a service it listed may have moved to another tenant since. The next lease
/// holder's tick drops its part (after `lease_ttl` + 60 s of grace, see the README).
#[test]
fn a_configuration_nobody_syncs_any_more_leaves_the_tenant_map() {
    let mut host = host("");
    let gone = "00000000deadbeef";
    host.set_shared_data(&format!("meshguard.router.v1.{gone}.lease"), b"0 1");
    host.set_shared_data(
        &format!("meshguard.registry.service_tenants.v1.{gone}"),
        br#"{"legacy":"acme","users":"globex"}"#,
    );
    host.set_shared_data(
        "meshguard.registry.service_tenants.v1.scopes",
        gone.as_bytes(),
    );
    host.set_shared_data(
        "meshguard.registry.service_tenants.v1",
        br#"{"legacy":"acme","users":"globex"}"#,
    );
    host.advance(SEC).unwrap();
    let tenants = |host: &Host| {
        String::from_utf8(
            host.shared_data("meshguard.registry.service_tenants.v1")
                .unwrap()
                .0,
        )
        .unwrap()
    };
    assert_eq!(tenants(&host), "{}", "dropped on the holder's first tick");
    let q = query(&host);
    host.respond_http_call(q.id, consul_ok(10, &health(&[8001])))
        .unwrap();
    assert_eq!(tenants(&host), r#"{"orders":"acme"}"#);
    assert_eq!(
        host.shared_data("meshguard.registry.service_tenants.v1.scopes")
            .unwrap()
            .0,
        host.shared_data_keys()
            .iter()
            .find_map(|k| k
                .strip_prefix("meshguard.registry.service_tenants.v1.")
                .filter(|s| s.len() == 16 && *s != gone))
            .unwrap()
            .as_bytes()
    );
}
