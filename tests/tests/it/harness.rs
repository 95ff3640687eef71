//! Self-tests of the real-Envoy harness: Envoy in front of the test upstream, no wasm.

use std::time::{Duration, Instant};

use anyhow::Result;
use meshguard_tests::{
    send, send_raw, Envoy, EnvoyConfig, FailurePolicy, Request, TestUpstream, WasmFilter,
};

const STAT_TIMEOUT: Duration = Duration::from_secs(10);

fn envoy_for(upstream: &TestUpstream) -> Result<Envoy> {
    Envoy::start(EnvoyConfig::new("harness").upstream(upstream.port()))
}

#[test]
fn envoy_proxies_to_the_test_upstream_and_counts_the_request() -> Result<()> {
    let upstream = TestUpstream::start_named("a")?;
    let envoy = envoy_for(&upstream)?;
    let response = send(envoy.listener_addr(), &Request::get("/hello?x=1"))?;
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "ok");
    assert_eq!(response.header("x-upstream"), Some("a"));
    assert_eq!(upstream.request_count(), 1);
    assert_eq!(upstream.requests()[0].path, "/hello?x=1");
    envoy.wait_for_stat("cluster.upstream.upstream_rq_200", |v| v == 1, STAT_TIMEOUT)?;
    assert_eq!(envoy.stat("http.main.downstream_rq_2xx"), Some(1));
    assert!(envoy.prometheus()?.contains("envoy_cluster_upstream_rq"));
    assert!(envoy.config_dump()?["configs"].is_array());
    Ok(())
}

#[test]
fn steering_headers_pass_through_envoy() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = envoy_for(&upstream)?;
    let addr = envoy.listener_addr();

    let r = send(addr, &Request::get("/").header("x-upstream-status", "503"))?;
    assert_eq!(r.status, 503);

    let started = Instant::now();
    let r = send(
        addr,
        &Request::get("/").header("x-upstream-delay-ms", "200"),
    )?;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let r = send(
        addr,
        &Request::get("/").header("x-upstream-body-size", "1048576"),
    )?;
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r.body.iter().all(|b| *b == b'a'));

    let r = send(
        addr,
        &Request::get("/")
            .header("x-upstream-body", "custom")
            .header("x-upstream-header", "x-one=1"),
    )?;
    assert_eq!(
        (r.body_str().as_ref(), r.header("x-one")),
        ("custom", Some("1"))
    );
    envoy.wait_for_stat("cluster.upstream.upstream_rq_503", |v| v == 1, STAT_TIMEOUT)?;
    Ok(())
}

#[test]
fn echo_shows_the_headers_envoy_added() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = envoy_for(&upstream)?;
    let r = send(
        envoy.listener_addr(),
        &Request::post("/echo")
            .header("x-upstream-echo", "1")
            .body("payload"),
    )?;
    let echo = r.json()?;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["body"], "payload");
    let names: Vec<&str> = echo["headers"]
        .as_array()
        .map(|h| h.iter().filter_map(|kv| kv[0].as_str()).collect())
        .unwrap_or_default();
    for added in [
        "x-request-id",
        "x-forwarded-proto",
        "x-envoy-expected-rq-timeout-ms",
    ] {
        assert!(names.contains(&added), "{added} missing from {names:?}");
    }
    Ok(())
}

#[test]
fn odd_paths_and_duplicate_headers_reach_the_upstream_verbatim() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = envoy_for(&upstream)?;
    let r = send(
        envoy.listener_addr(),
        &Request::get("//v1/x")
            .header("x-dup", "1")
            .header("x-dup", "2"),
    )?;
    assert_eq!(r.status, 200);
    let raw = b"GET /a/%2e%2e/b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    assert_eq!(send_raw(envoy.listener_addr(), raw)?.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen[0].path, "//v1/x");
    let dups: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "x-dup")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(dups.concat().replace([',', ' '], ""), "12");
    assert_eq!(seen[1].path, "/a/%2e%2e/b");
    Ok(())
}

#[test]
fn a_broken_config_fails_start_with_envoys_own_log_lines() -> Result<()> {
    let upstream = TestUpstream::start()?;
    for policy in [FailurePolicy::FailClosed, FailurePolicy::FailOpen] {
        let missing = "/nonexistent/meshguard-missing.wasm";
        let cfg = EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .wasm_filter(WasmFilter::new("broken", missing).failure_policy(policy));
        let Err(err) = Envoy::start(cfg) else {
            panic!("Envoy started with a missing wasm file ({policy:?})");
        };
        let message = format!("{err:#}");
        assert!(
            message.contains("last 60 lines of Envoy's log"),
            "{message}"
        );
        // Envoy's own critical line names the file: the proto (failure_policy and all) parsed.
        assert!(message.contains("[critical]"), "{message}");
        assert!(message.contains(missing), "{message}");
        assert!(!message.contains("unknown field"), "{message}");
    }
    Ok(())
}

#[test]
fn two_envoys_run_in_parallel_without_colliding() -> Result<()> {
    let start = |name: &'static str| {
        std::thread::spawn(move || -> Result<(TestUpstream, Envoy)> {
            let upstream = TestUpstream::start_named(name)?;
            let envoy = envoy_for(&upstream)?;
            Ok((upstream, envoy))
        })
    };
    let (a, b) = (start("a"), start("b"));
    let join = |h: std::thread::JoinHandle<Result<(TestUpstream, Envoy)>>| {
        h.join()
            .map_err(|_| anyhow::anyhow!("start thread panicked"))?
    };
    let (up_a, envoy_a) = join(a)?;
    let (up_b, envoy_b) = join(b)?;
    assert_ne!(envoy_a.listener_addr(), envoy_b.listener_addr());
    assert_ne!(envoy_a.admin_addr(), envoy_b.admin_addr());
    let ra = send(envoy_a.listener_addr(), &Request::get("/"))?;
    let rb = send(envoy_b.listener_addr(), &Request::get("/"))?;
    assert_eq!(
        (ra.header("x-upstream"), rb.header("x-upstream")),
        (Some("a"), Some("b"))
    );
    assert_eq!((up_a.request_count(), up_b.request_count()), (1, 1));
    Ok(())
}

#[test]
fn extra_clusters_and_named_listeners_are_discoverable() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let side = TestUpstream::start_named("side")?;
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .cluster("side", side.port()),
    )?;
    assert_eq!(envoy.listener("main")?, envoy.listener_addr());
    let err = envoy.listener("nope").unwrap_err().to_string();
    assert!(err.contains("main"), "{err}");
    let clusters = envoy.admin_get("/clusters")?;
    assert!(
        clusters.contains(&format!("side::127.0.0.1:{}", side.port())),
        "{clusters}"
    );
    Ok(())
}

#[test]
fn a_dead_envoy_is_detected_and_waits_stay_bounded() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = envoy_for(&upstream)?;
    assert!(envoy.is_running());
    let started = Instant::now();
    let waited = envoy.wait_for_stat("no.such.stat", |_| true, Duration::from_millis(300));
    assert!(waited.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));

    envoy.admin_post("/quitquitquit")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while envoy.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!envoy.is_running());
    let err = envoy
        .wait_for_stat("server.live", |_| true, STAT_TIMEOUT)
        .unwrap_err();
    assert!(format!("{err:#}").contains("Envoy exited"), "{err:#}");
    Ok(())
}
