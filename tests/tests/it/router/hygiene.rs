//! The router filter against hostile input in a real Envoy 1.40 (V8): a client may send any
//! octet in a header value, and the SDK's `String` header readers trap on one that is not
//! UTF-8, which would stop the worker's VM (every later request on it failing closed). Every
//! request-path read in the filter is a byte read; these requests prove it on the wire.

use std::time::Duration;

use anyhow::{ensure, Result};
use meshguard_fake_consul::{FakeConsul, Instance};
use meshguard_tests::{send, send_raw, Request, Response, TestUpstream};

use super::envoy::{router_config, start_envoy};

/// Longest wait for a stat that should come soon.
const WAIT: Duration = Duration::from_secs(10);

/// A service that reads the junk header three ways: a header matcher, the `hash_on` key and,
/// on a failed answer, the failback capture (which reads every request header).
const SERVICE: &str = r#","match":{"headers":[{"name":"x-user","prefix":"caf"}]},
    "balancer":"consistent_hash","hash_on":{"header":"x-user"},
    "mode":"failback","fallback_response":{"status":202,"body":"queued"},
    "failback":{"cluster":"backend","retry_base":"200ms","retry_max":"400ms"}"#;

#[test]
fn a_header_value_that_is_not_utf8_neither_traps_the_vm_nor_is_resent_altered() -> Result<()> {
    let consul = FakeConsul::start()?;
    // `/fail...` fails (failback answers), anything else succeeds.
    let upstream = TestUpstream::start_with(|r| {
        if r.path.starts_with("/fail") {
            Response::new(503)
        } else {
            Response::new(200)
        }
    })?;
    consul.register(Instance::new(
        "orders-1",
        "orders",
        "127.0.0.1",
        upstream.port(),
    ));
    let envoy = start_envoy(consul.port(), &[upstream.port()], &router_config(SERVICE))?;
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.sync_changes",
        |v| v >= 1,
        WAIT,
    )?;
    let raw = |path: &str, user: &[u8]| {
        let mut bytes = format!("GET {path} HTTP/1.1\r\nHost: a\r\nx-user: ").into_bytes();
        bytes.extend_from_slice(user);
        bytes.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        send_raw(envoy.listener_addr(), &bytes)
    };
    // Matched (read lossily, `caf\u{fffd}` has the prefix `caf`), hashed, failed, answered by
    // failback; the request is not queued, since it could not be resent verbatim.
    let r = raw("/fail/1", b"caf\xe9")?;
    ensure!(
        r.status == 202 && r.header("x-meshguard-router") == Some("failback"),
        "{r:?}\n{}",
        envoy.log()
    );
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.failback_skipped",
        |v| v == 1,
        WAIT,
    )?;
    // The worker's VM is alive: the same junk on a good path, then clean requests.
    for _ in 0..3 {
        let r = raw("/ok", b"caf\xe9")?;
        ensure!(r.status == 200, "{r:?}\n{}", envoy.log());
    }
    let r = send(
        envoy.listener_addr(),
        &Request::get("/ok").header("x-user", "cafe"),
    )?;
    ensure!(r.status == 200, "{r:?}");
    let r = send(
        envoy.listener_addr(),
        &Request::get("/fail/2").header("x-user", "cafe"),
    )?;
    ensure!(r.status == 202, "{r:?}");
    envoy.wait_for_stat(
        "wasmcustom.meshguard_router.orders.failback_queued",
        |v| v == 1,
        WAIT,
    )?;
    let log = envoy.log();
    ensure!(
        !log.contains("panicked") && !log.contains("wasm trap") && !log.contains("Function: "),
        "{log}"
    );
    Ok(())
}
