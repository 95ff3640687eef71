//! host-sim driving a compiled filter: the few lines a filter author writes.

use crate::support::module;
use host_sim::{Action, Host, Module, Request, Response};

fn minimal() -> Module {
    module("fixture_minimal")
}

#[test]
fn a_filter_is_tested_in_a_few_lines() {
    let mut host = Host::builder(&minimal()).build().unwrap();
    assert!(host.configure().unwrap());
    let s = host
        .send(0, Request::get("/hello").header("x-tag", "1"))
        .unwrap();
    let view = host.stream(s).unwrap();
    assert_eq!(view.status(), Some(200));
    assert_eq!(view.response_header("x-minimal"), Some("tagged"));
    assert_eq!(view.body_str(), "ok");
    assert!(view.finished);
}

#[test]
fn phases_can_be_driven_one_by_one() {
    let mut host = Host::builder(&minimal()).workers(2).build().unwrap();
    assert!(host.configure().unwrap());
    let s = host.new_stream(1).unwrap();
    let headers = Request::post("/upload").headers;
    assert_eq!(
        host.request_headers(s, headers, false).unwrap(),
        Action::Continue
    );
    assert_eq!(
        host.request_body(s, b"part1", false).unwrap(),
        Action::Continue
    );
    assert_eq!(
        host.request_body(s, b"part2", true).unwrap(),
        Action::Continue
    );
    let up = host.stream(s).unwrap().upstream_request.clone().unwrap();
    assert_eq!(up.body, b"part1part2");
    assert!(up.complete);
    let response = Response::new(201).header("x-up", "1");
    host.response_headers(s, response.headers_with_status(), true)
        .unwrap();
    host.finish(s).unwrap();
    let view = host.stream(s).unwrap();
    assert_eq!(view.status(), Some(201));
    assert_eq!(view.response_header("x-minimal"), Some("seen"));
    assert_eq!(view.worker, 1);
}

#[test]
fn the_same_script_and_seed_give_identical_results() {
    let run = || {
        let mut host = Host::builder(&minimal())
            .workers(2)
            .seed(7)
            .build()
            .unwrap();
        assert!(host.configure().unwrap());
        let mut out = Vec::new();
        for i in 0..20 {
            let req = Request::get(&format!("/r{i}"));
            let req = if i % 3 == 0 {
                req.header("x-tag", "y")
            } else {
                req
            };
            let s = host.send(i % 2, req).unwrap();
            out.push(format!("{:?}", host.stream(s).unwrap()));
            host.advance(std::time::Duration::from_millis(10)).unwrap();
        }
        out.push(format!("{:?}", host.logs()));
        out.push(format!("{:?}", host.metrics()));
        out.join("\n")
    };
    assert_eq!(run(), run());
}

#[test]
fn a_module_built_for_wasm32_unknown_unknown_loads_and_runs() {
    let path = meshguard_tests::workspace_root()
        .join("target/wasm32-unknown-unknown/wasm/fixture_minimal.wasm");
    let module = Module::from_file(&path)
        .unwrap_or_else(|e| panic!("{e} (built by `make wasm` into {})", path.display()));
    assert!(
        module.imports().iter().all(|(m, _)| m == "env"),
        "no WASI imports"
    );
    let mut host = Host::builder(&module).build().unwrap();
    assert!(host.configure().unwrap());
    let s = host
        .send(0, Request::get("/").header("x-tag", "1"))
        .unwrap();
    assert_eq!(
        host.stream(s).unwrap().response_header("x-minimal"),
        Some("tagged")
    );
}

#[test]
fn host_calls_are_counted_by_import_name() {
    let mut host = Host::builder(&minimal()).build().unwrap();
    assert!(host.configure().unwrap());
    let before = host.import_calls();
    host.send(0, Request::get("/").header("x-tag", "1"))
        .unwrap();
    host.send(0, Request::get("/")).unwrap();
    let after = host.import_calls();
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    // The fixture reads one request header and sets one response header per request; only the
    // header that exists is handed over through the guest's allocator.
    assert_eq!(delta("proxy_get_header_map_value"), 2);
    assert_eq!(delta("proxy_replace_header_map_value"), 2);
    assert_eq!(delta("malloc"), 1);
    let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    assert_eq!(total, 5, "{after:?}");
}

#[test]
fn a_filter_buffering_the_body_gets_the_trailers_callback_and_forwards_both() {
    // As Envoy: a pause in the body callback is StopIterationAndBuffer, which does not hold the
    // trailers; with trailers the body never comes with end_of_stream, so the filter sees the
    // trailers and the buffered body goes upstream before them when it continues.
    let mut host = Host::builder(&module("fixture_conformance"))
        .build()
        .unwrap();
    assert!(host.configure().unwrap());
    let s = host.new_stream(0).unwrap();
    let ops = r#"[{"at": "request_body", "op": "return", "action": "pause"},
                  {"at": "request_trailers", "op": "set_buffer", "buffer": "request_body",
                   "start": 0, "len": 5, "value": "PART1"}]"#;
    let headers = Request::post("/upload").header("x-ops", ops).headers;
    assert_eq!(
        host.request_headers(s, headers, false).unwrap(),
        Action::Continue
    );
    assert_eq!(
        host.request_body(s, b"part1", false).unwrap(),
        Action::Pause
    );
    assert_eq!(
        host.request_body(s, b"part2", false).unwrap(),
        Action::Pause
    );
    let up = host.stream(s).unwrap().upstream_request.clone().unwrap();
    assert!(up.body.is_empty(), "the buffered body waited: {up:?}");
    let trailers = vec![("x-checksum".to_string(), "1".to_string())];
    assert_eq!(
        host.request_trailers(s, trailers).unwrap(),
        Action::Continue
    );
    let up = host.stream(s).unwrap().upstream_request.clone().unwrap();
    // The trailers callback saw the whole buffered body and rewrote its start.
    assert_eq!(up.body, b"PART1part2");
    assert_eq!(
        up.trailers.as_deref(),
        Some(&[("x-checksum".to_string(), "1".to_string())][..])
    );
    assert!(up.complete);
}
