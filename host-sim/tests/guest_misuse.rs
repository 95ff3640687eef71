//! host-sim against hand-written guests (WebAssembly text): misuse the Rust SDK
//! never produces — bad pointers, traps, hangs, broken modules — must become a
//! proxy-wasm status, the failure policy, or a clear load error. Never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use host_sim::{Error, FailurePolicy, Host, Module, Request};

/// A guest whose `on_request_headers` behaviour is chosen by the `:path` length…
/// kept simple: the body of `on_request_headers` is spliced in per test.
fn guest(on_request_headers: &str, extra: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (data (i32.const 0) "status")
  (data (i32.const 16) "ticks")
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    local.get $p)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  ;; Records a status code as shared data "status" (4 bytes little-endian).
  (func $record (param $s i32)
    (i32.store (i32.const 200) (local.get $s))
    (drop (call $set (i32.const 0) (i32.const 6) (i32.const 200) (i32.const 4) (i32.const 0))))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    {on_request_headers}
    i32.const 0)
  {extra}
)"#
    )
}

fn host(wat: &str, policy: FailurePolicy) -> Host {
    let module = Module::from_bytes("guest.wat", wat.as_bytes()).unwrap();
    let mut host = Host::builder(&module)
        .failure_policy(policy)
        .build()
        .unwrap();
    assert!(host.configure().unwrap());
    host
}

fn recorded_status(host: &Host) -> u32 {
    let (bytes, _) = host.shared_data("status").expect("guest recorded a status");
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

#[test]
fn out_of_bounds_pointers_return_invalid_memory_access_instead_of_trapping() {
    // Key pointer far past the 2-page memory.
    let wat = guest(
        "(call $record (call $set (i32.const 1000000) (i32.const 4) (i32.const 0) (i32.const 1) (i32.const 0)))",
        "",
    );
    let mut host = host(&wat, FailurePolicy::FailClosed);
    let s = host.send(0, Request::get("/")).unwrap();
    assert_eq!(recorded_status(&host), 6, "InvalidMemoryAccess");
    assert_eq!(host.stream(s).unwrap().status(), Some(200));
    assert!(host.vm_failure(0).is_none());
}

#[test]
fn a_length_that_overflows_the_address_space_is_invalid_memory_access() {
    let wat = guest(
        "(call $record (call $set (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 1) (i32.const 0)))",
        "",
    );
    let mut host = host(&wat, FailurePolicy::FailClosed);
    host.send(0, Request::get("/")).unwrap();
    assert_eq!(recorded_status(&host), 6);
}

#[test]
fn get_shared_data_of_a_missing_key_is_not_found() {
    let wat = guest(
        "(call $record (call $get (i32.const 16) (i32.const 5) (i32.const 300) (i32.const 304) (i32.const 308)))",
        "",
    );
    let mut host = host(&wat, FailurePolicy::FailClosed);
    host.send(0, Request::get("/")).unwrap();
    assert_eq!(recorded_status(&host), 1, "NotFound");
}

#[test]
fn a_trap_fails_closed_with_503_and_the_vm_stays_failed() {
    let wat = guest("unreachable", "");
    let mut host = host(&wat, FailurePolicy::FailClosed);
    let first = host.send(0, Request::get("/")).unwrap();
    let view = host.stream(first).unwrap().clone();
    assert_eq!(view.status(), Some(503));
    assert_eq!(view.local_reply.unwrap().details, "wasm_fail_stream");
    assert!(
        view.upstream_request.is_none(),
        "upstream must not be called"
    );
    assert!(host.vm_failure(0).unwrap().contains("unreachable"));
    // Later requests on the failed VM are refused too, without calling the guest.
    let second = host.send(0, Request::get("/")).unwrap();
    assert_eq!(host.stream(second).unwrap().status(), Some(503));
    assert!(host
        .logs()
        .iter()
        .any(|l| l.message.contains("proxy_on_request_headers")));
}

#[test]
fn a_trap_fails_open_when_configured_and_requests_reach_the_upstream() {
    let wat = guest("unreachable", "");
    let mut host = host(&wat, FailurePolicy::FailOpen);
    for _ in 0..2 {
        let s = host.send(0, Request::get("/a")).unwrap();
        let view = host.stream(s).unwrap();
        assert_eq!(view.status(), Some(200));
        assert_eq!(
            view.upstream_request.as_ref().unwrap().header(":path"),
            Some("/a")
        );
    }
    assert!(host.vm_failure(0).is_some());
}

#[test]
fn a_guest_that_never_returns_runs_out_of_fuel_and_traps() {
    let wat = guest("(loop $l (br $l))", "");
    let module = Module::from_bytes("hang.wat", wat.as_bytes()).unwrap();
    let mut host = Host::builder(&module)
        .fuel_per_callback(1_000_000)
        .build()
        .unwrap();
    assert!(host.configure().unwrap());
    let s = host.send(0, Request::get("/")).unwrap();
    assert_eq!(host.stream(s).unwrap().status(), Some(503));
    assert!(host.vm_failure(0).unwrap().contains("fuel"));
}

#[test]
fn a_failed_worker_does_not_affect_the_others() {
    let wat = guest("unreachable", "");
    let module = Module::from_bytes("guest.wat", wat.as_bytes()).unwrap();
    let mut host = Host::builder(&module).workers(2).build().unwrap();
    assert!(host.configure().unwrap());
    host.send(0, Request::get("/")).unwrap();
    assert!(host.vm_failure(0).is_some());
    assert!(host.vm_failure(1).is_none());
}

#[test]
fn ticks_fire_per_period_as_virtual_time_passes() {
    // on_configure sets a 100 ms tick; each tick appends one byte to "ticks".
    let extra = r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 100)))
    i32.const 1)
  (func (export "proxy_on_tick") (param i32)
    (local $n i32)
    ;; n = current count (0 when missing), stored back as n+1 in one byte
    (if (i32.eqz (call $get (i32.const 16) (i32.const 5) (i32.const 300) (i32.const 304) (i32.const 308)))
      (then (local.set $n (i32.load8_u (i32.load (i32.const 300))))))
    (i32.store8 (i32.const 400) (i32.add (local.get $n) (i32.const 1)))
    (drop (call $set (i32.const 16) (i32.const 5) (i32.const 400) (i32.const 1) (i32.const 0))))
"#;
    let wat = guest("", extra);
    let module = Module::from_bytes("tick.wat", wat.as_bytes()).unwrap();
    let mut host = Host::builder(&module).workers(2).build().unwrap();
    assert!(host.configure().unwrap());
    assert_eq!(host.tick_period(0), Some(Duration::from_millis(100)));
    host.advance(Duration::from_millis(99)).unwrap();
    assert!(
        host.shared_data("ticks").is_none(),
        "no tick before one period"
    );
    host.advance(Duration::from_millis(1)).unwrap();
    // Both workers' root contexts tick: two ticks at t=100ms.
    assert_eq!(host.shared_data("ticks").unwrap().0, vec![2]);
    host.advance(Duration::from_millis(250)).unwrap();
    assert_eq!(host.shared_data("ticks").unwrap().0, vec![6]);
    assert_eq!(host.now(), Duration::from_millis(350));
}

#[test]
fn cas_tokens_change_on_every_set() {
    let mut_host = |wat: &str| host(wat, FailurePolicy::FailClosed);
    let wat = guest("", "");
    let mut host = mut_host(&wat);
    host.set_shared_data("k", b"1");
    let (_, first) = host.shared_data("k").unwrap();
    host.set_shared_data("k", b"1");
    let (_, second) = host.shared_data("k").unwrap();
    assert_ne!(first, 0);
    assert_ne!(first, second);
}

#[test]
fn bytes_that_are_not_wasm_are_rejected_with_a_clear_error() {
    let err = Module::from_bytes("junk.wasm", b"\0asm\x02garbage").unwrap_err();
    assert!(matches!(err, Error::InvalidWasm { .. }), "{err}");
    assert!(err.to_string().contains("junk.wasm"));
}

#[test]
fn a_module_without_the_abi_marker_is_not_proxy_wasm() {
    let err = Module::from_bytes("plain.wat", b"(module (func (export \"f\")))").unwrap_err();
    assert!(matches!(err, Error::NotProxyWasm { .. }), "{err}");
    assert!(err.to_string().contains("proxy_abi_version_0_2_1"));
}

#[test]
fn an_abi_0_1_0_module_is_refused_by_name() {
    let err = Module::from_bytes(
        "old.wat",
        b"(module (func (export \"proxy_abi_version_0_1_0\")))",
    )
    .unwrap_err();
    assert!(err.to_string().contains("0.1.0"), "{err}");
}

#[test]
fn missing_allocator_and_unknown_imports_are_named() {
    let no_malloc = r#"(module (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_context_create") (param i32 i32)))"#;
    let err = Module::from_bytes("m.wat", no_malloc.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("malloc"), "{err}");

    let unknown = r#"(module (import "env" "proxy_teleport" (func))
        (memory (export "memory") 1)
        (func (export "malloc") (param i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_context_create") (param i32 i32)))"#;
    let err = Module::from_bytes("u.wat", unknown.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("env::proxy_teleport"), "{err}");
}

#[test]
fn an_export_with_the_wrong_signature_is_a_load_error() {
    let wat = r#"(module (memory (export "memory") 1)
        (func (export "malloc") (param i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_request_headers") (param i32) (result i32) i32.const 0))"#;
    let module = Module::from_bytes("sig.wat", wat.as_bytes()).unwrap();
    let err = Host::builder(&module).build().unwrap_err();
    assert!(
        err.to_string().contains("proxy_on_request_headers"),
        "{err}"
    );
}

#[test]
fn an_abi_0_2_0_module_is_accepted() {
    let wat = r#"(module (memory (export "memory") 1)
        (func (export "malloc") (param i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_0"))
        (func (export "proxy_on_context_create") (param i32 i32)))"#;
    let module = Module::from_bytes("v020.wat", wat.as_bytes()).unwrap();
    assert_eq!(module.abi_version(), host_sim::AbiVersion::V0_2_0);
    let mut host = Host::builder(&module).build().unwrap();
    assert!(host.configure().unwrap());
    let s = host.send(0, Request::get("/")).unwrap();
    assert_eq!(host.stream(s).unwrap().status(), Some(200));
}

#[test]
fn a_proxy_wasm_call_while_the_vm_starts_fails_like_envoy_restricted_callback() {
    // Envoy allows only WASI during _initialize/_start; proxy_get_log_level there fails the VM.
    let wat = r#"(module
        (import "env" "proxy_get_log_level" (func $level (param i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "malloc") (param i32) (result i32) i32.const 1024)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "_initialize") (drop (call $level (i32.const 0))))
        (func (export "proxy_on_context_create") (param i32 i32)))"#;
    let module = Module::from_bytes("init.wat", wat.as_bytes()).unwrap();
    let mut host = Host::builder(&module).build().unwrap();
    let err = host.configure().unwrap_err();
    assert!(err.to_string().contains("restricted_callback"), "{err}");
    assert!(err.to_string().contains("proxy_get_log_level"), "{err}");
    assert!(host.vm_failure(0).is_some());
}
