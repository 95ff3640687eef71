//! The stream callbacks each module exports after `make wasm` (tools/wasm-trim): exactly the
//! ones its `stream_callbacks!` declares, which are exactly the ones it implements. Envoy
//! enters V8 once per exported callback per stream, so this list is a cost, and a callback the
//! filter implements but does not declare would silently never run: both show up here.

use host_sim::{Host, LogLevel, Request, Response};
use meshguard_tests::wasm_artifact;
use meshguard_wasm_trim::{declared, exports, STREAM_CALLBACKS};

/// The stream callbacks `module` exports (without the `proxy_on_` prefix), sorted.
fn exported_stream_callbacks(module: &str) -> Vec<String> {
    let bytes = std::fs::read(wasm_artifact(module).unwrap()).unwrap();
    let mut out: Vec<String> = exports(&bytes)
        .unwrap()
        .into_iter()
        .filter_map(|e| e.strip_prefix("proxy_on_").map(str::to_string))
        .filter(|cb| STREAM_CALLBACKS.contains(&cb.as_str()))
        .collect();
    out.sort();
    out
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Each filter's implemented callbacks (every `on_*` override of its stream and root contexts
/// that Envoy calls per stream), as read in its source: a change to a filter's callbacks must
/// change this table, its declaration and the module together.
const IMPLEMENTED: &[(&str, &[&str])] = &[
    (
        "meshguard_ratelimit",
        &["request_headers", "response_headers", "done"],
    ),
    (
        "meshguard_fallback",
        &[
            "request_headers",
            "response_headers",
            "response_body",
            "response_trailers",
            "log",
            "done",
        ],
    ),
    (
        "meshguard_tenant",
        &[
            "request_headers",
            "request_body",
            "request_trailers",
            "response_headers",
            "response_body",
            "done",
        ],
    ),
    (
        "meshguard_router",
        &[
            "request_headers",
            "request_body",
            "request_trailers",
            "response_headers",
            "done",
        ],
    ),
    ("fixture_noop", &[]),
    ("fixture_hostcall", &["request_headers"]),
];

#[test]
fn every_filter_exports_exactly_the_stream_callbacks_it_implements() {
    for (module, implemented) in IMPLEMENTED {
        let bytes = std::fs::read(wasm_artifact(module).unwrap()).unwrap();
        let mut decl = declared(&bytes)
            .unwrap()
            .unwrap_or_else(|| panic!("{module} declares no stream callbacks"));
        decl.sort();
        assert_eq!(decl, sorted(implemented), "{module}: declaration");
        assert_eq!(
            exported_stream_callbacks(module),
            sorted(implemented),
            "{module}: exports (a module with every callback exported was built without \
             `make wasm`'s trim step)"
        );
    }
}

/// Modules that declare nothing keep the SDK's full set (the conformance fixture exercises
/// every callback).
#[test]
fn an_undeclared_module_keeps_every_sdk_callback() {
    let bytes = std::fs::read(wasm_artifact("fixture_conformance").unwrap()).unwrap();
    assert_eq!(declared(&bytes).unwrap(), None);
    let exported = exported_stream_callbacks("fixture_conformance");
    for cb in ["request_headers", "response_body", "log", "done"] {
        assert!(exported.iter().any(|e| e == cb), "{cb} in {exported:?}");
    }
}

/// Callbacks entered per request (host-sim counts only exported ones, as Envoy enters only
/// those): context create and delete always, then what the filter declares and the request
/// reaches. A GET answered with a body: the SDK's full set enters 8 times (create, request
/// headers, response headers, the body chunk and the empty end-of-stream frame Envoy's
/// HTTP/1 codec sends after it, log, done, delete).
#[test]
fn requests_enter_the_vm_only_for_declared_callbacks() {
    let cases: &[(&str, &str, u64)] = &[
        ("fixture_noop", "", 2),
        (
            "meshguard_ratelimit",
            r#"{"rules":[{"name":"r","limits":[{"algorithm":"token_bucket","requests":1000,"per":"1s"}]}]}"#,
            5,
        ),
        (
            "meshguard_fallback",
            r#"{"breakers":[{"name":"b","trip":{"consecutive_failures":5},"open":{"duration":"5s"},"fallback":{"fail_fast":{}}}]}"#,
            8,
        ),
        (
            "meshguard_tenant",
            r#"{"identity":[{"trusted_header":{"cidrs":["10.0.0.0/8"]}}],"no_identity":{"anonymous":{"tenant":"public"}}}"#,
            7,
        ),
        ("fixture_conformance", "", 8),
    ];
    for (module, config, per_request) in cases {
        let mut host = Host::builder(&crate::support::module(module))
            .plugin_config(*config)
            .workers(1)
            .log_level(LogLevel::Warn)
            .build()
            .unwrap();
        assert!(host.configure().unwrap(), "{module}");
        host.set_upstream(|_| Response::new(200).body("ok"));
        let before = host.guest_calls();
        for _ in 0..10 {
            let s = host.send(0, Request::get("/x")).unwrap();
            assert_eq!(host.stream(s).unwrap().status(), Some(200), "{module}");
        }
        assert_eq!(
            host.guest_calls() - before,
            10 * per_request,
            "{module}: entries per request"
        );
    }
}

/// The benchmark's host-call fixture makes exactly the calls it is configured for (else the
/// per-call costs `make bench` derives from it would be wrong), and refuses a call it does not
/// know.
#[test]
fn the_host_call_fixture_makes_exactly_the_configured_calls() {
    let cases: &[(&str, &[(&str, u64)])] = &[
        ("none 0", &[]),
        ("clock 4", &[("proxy_get_current_time_nanoseconds", 4)]),
        (
            "header 4",
            &[("proxy_get_header_map_value", 4), ("malloc", 4)],
        ),
        (
            "header_map_pairs 4",
            &[("proxy_get_header_map_pairs", 4), ("malloc", 4)],
        ),
        ("property 4", &[("proxy_get_property", 4), ("malloc", 4)]),
        (
            "shared_data 4",
            &[("proxy_get_shared_data", 4), ("malloc", 4)],
        ),
        ("set_header 4", &[("proxy_replace_header_map_value", 4)]),
        ("metric 4", &[("proxy_increment_metric", 4)]),
    ];
    for (config, expected) in cases {
        let mut host = Host::builder(&crate::support::module("fixture_hostcall"))
            .plugin_config(*config)
            .workers(1)
            .log_level(LogLevel::Warn)
            .build()
            .unwrap();
        assert!(host.configure().unwrap(), "{config}");
        host.set_upstream(|_| Response::new(200));
        let calls = crate::support::host_calls_during(&mut host, |h| {
            let s = h
                .send(0, Request::get("/x").header(":authority", "example"))
                .unwrap();
            assert_eq!(h.stream(s).unwrap().status(), Some(200));
        });
        let expected: std::collections::BTreeMap<String, u64> =
            expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(calls, expected, "{config}");
    }
    let mut host = Host::builder(&crate::support::module("fixture_hostcall"))
        .plugin_config("header_pairs 4")
        .workers(1)
        .build()
        .unwrap();
    assert!(!host.configure().unwrap(), "an unknown call is refused");
}

/// host-sim counts the Wasm instructions the guest runs (wasmtime fuel), in total and per
/// callback. The header map reader of filters/common compares names as bytes and decodes only
/// the value asked for: the same host call decoded by the SDK (a `String` per name, a `Vec` per
/// value) runs several times more instructions.
#[test]
fn guest_instructions_are_counted_per_callback() {
    let run = |module: &'static str, config: &str| {
        let mut host = Host::builder(&crate::support::module(module))
            .plugin_config(config)
            .workers(1)
            .log_level(LogLevel::Info)
            .build()
            .unwrap();
        assert!(host.configure().unwrap(), "{module}");
        host.set_upstream(|_| Response::new(200).body("ok"));
        let request = || {
            Request::get("/x")
                .header("x-meshguard-tenant", "acme")
                .header("user-agent", "wrk")
                .header("accept", "*/*")
                .property(
                    "source.address",
                    host_sim::PropertyValue::String("127.0.0.1:5000".into()),
                )
                .property(
                    "xds.cluster_name",
                    host_sim::PropertyValue::String("upstream".into()),
                )
        };
        let s = host.send(0, request()).unwrap();
        assert_eq!(host.stream(s).unwrap().status(), Some(200), "{module}");
        let (total, by) = (
            host.guest_instructions(),
            host.guest_instructions_by_callback(),
        );
        let s = host.send(0, request()).unwrap();
        assert_eq!(host.stream(s).unwrap().status(), Some(200), "{module}");
        let by_now = host.guest_instructions_by_callback();
        let delta = |k: &str| by_now.get(k).copied().unwrap_or(0) - by.get(k).copied().unwrap_or(0);
        assert_eq!(
            by_now.values().sum::<u64>(),
            host.guest_instructions(),
            "the per-callback counts add up"
        );
        (
            host.guest_instructions() - total,
            delta("proxy_on_request_headers"),
        )
    };
    let (noop, noop_headers) = run("fixture_noop", "");
    assert!(
        noop > 0 && noop_headers == 0,
        "noop: {noop}, {noop_headers}"
    );
    let (_, sdk_map) = run("fixture_hostcall", "header_map_pairs 1");
    let (_, none) = run("fixture_hostcall", "none 0");
    let (_, in_place) = run("fixture_hostcall", "header_map_lookup 1");
    assert!(none < in_place, "{none} < {in_place}");
    assert!(
        (in_place - none) * 3 < sdk_map - none,
        "in place {} vs the SDK's map {}",
        in_place - none,
        sdk_map - none
    );
}
