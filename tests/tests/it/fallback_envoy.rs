//! The fallback filter in a real Envoy 1.40 (V8): a flaky upstream opens the breaker, clients
//! get the fallback, a probe after the open time closes it again, the state is shared by the
//! worker threads, upstream timeouts count as failures, and a bad configuration is refused.
//!
//! The state machine is tested natively and in host-sim with virtual time (`fallback.rs`);
//! Envoy runs on the wall clock, so open times are short and every wait is bounded.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use meshguard_tests::{send, wasm_artifact, Envoy, EnvoyConfig, Request, TestUpstream, WasmFilter};

/// Longest wait for a stat or a state change that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);

fn start(filter_config: &str, upstream: &TestUpstream, workers: u32) -> Result<Envoy> {
    Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .concurrency(workers)
            .arg("--component-log-level")
            .arg("wasm:debug")
            .wasm_filter(
                WasmFilter::new("fallback", wasm_artifact("meshguard_fallback")?)
                    .configuration(filter_config),
            ),
    )
}

/// Like [`start`] (one worker), with the upstream at `upstream` and cluster `fallback` at
/// `fallback` (ports on 127.0.0.1).
fn start_with_fallback_service(filter_config: &str, upstream: u16, fallback: u16) -> Result<Envoy> {
    Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream)
            .cluster("fallback", fallback)
            .arg("--component-log-level")
            .arg("wasm:debug")
            .wasm_filter(
                WasmFilter::new("fallback", wasm_artifact("meshguard_fallback")?)
                    .configuration(filter_config),
            ),
    )
}

/// Waits until Envoy's log has at least `n` lines containing `needle`; returns the log.
fn wait_for_log_lines(envoy: &Envoy, needle: &str, n: usize) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = envoy.log();
        let found = log.lines().filter(|line| line.contains(needle)).count();
        if found >= n {
            return Ok(log);
        }
        if Instant::now() >= deadline {
            bail!("Envoy logged {found} line(s) with {needle:?}, want {n}");
        }
        // Envoy flushes its log file every 100 ms (the harness sets it).
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stat(name: &str) -> String {
    format!("wasmcustom.meshguard_fallback.b.{name}")
}

fn failing() -> Request {
    Request::get("/api").header("x-upstream-status", "503")
}

const CONFIG: &str = r#"{"breakers":[{"name":"b","match":{"path":{"prefix":"/api"}},
  "trip":{"consecutive_failures":3},
  "open":{"duration":"1s","backoff":1,"max":"1s"},
  "half_open":{"probes":1,"successes":1},
  "fallback":{"static":{"status":200,"headers":{"content-type":"application/json"},"body":"{\"cached\":false}"}},
  "state_header":true}]}"#;

#[test]
fn a_flaky_upstream_opens_the_breaker_then_a_probe_closes_it() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = start(CONFIG, &upstream, 1)?;
    let addr = envoy.listener_addr();
    for _ in 0..3 {
        assert_eq!(send(addr, &failing())?.status, 503);
    }
    envoy.wait_for_stat(&stat("state"), |v| v == 1, WAIT)?;
    let before = upstream.request_count();
    for _ in 0..5 {
        let r = send(addr, &Request::get("/api"))?;
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), r#"{"cached":false}"#);
        assert_eq!(r.header("x-meshguard-breaker"), Some("b=open"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(
        upstream.request_count(),
        before,
        "an open breaker forwards nothing"
    );
    // Batched in the worker's VM: Envoy has it after the root's next tick (at most 1 s).
    envoy.wait_for_stat(&stat("fallback_static"), |v| v == 5, WAIT)?;

    // After the open time the next request is the probe; its success closes the breaker.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = send(addr, &Request::get("/api"))?;
        if r.header("x-upstream").is_some() {
            assert_eq!(r.status, 200);
            break;
        }
        if Instant::now() >= deadline {
            bail!("no probe reached the upstream within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    envoy.wait_for_stat(&stat("state"), |v| v == 0, WAIT)?;
    let r = send(addr, &Request::get("/api"))?;
    assert!(r.header("x-upstream").is_some(), "closed: forwarded");
    // CLOSED→OPEN, OPEN→HALF_OPEN, HALF_OPEN→CLOSED, each counted once.
    assert_eq!(envoy.stat(&stat("transitions")), Some(3));
    Ok(())
}

#[test]
fn two_workers_share_one_breaker_state() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let config = CONFIG.replace(
        r#""duration":"1s","backoff":1,"max":"1s""#,
        r#""duration":"1m""#,
    );
    let envoy = start(&config, &upstream, 2)?;
    let addr = envoy.listener_addr();
    for _ in 0..3 {
        assert_eq!(send(addr, &failing())?.status, 503);
    }
    // Every later request, whichever worker takes its connection, gets the fallback.
    for _ in 0..20 {
        let r = send(addr, &Request::get("/api"))?;
        assert_eq!(r.header("x-meshguard-breaker"), Some("b=open"));
    }
    assert_eq!(upstream.request_count(), 3);
    assert_eq!(envoy.stat(&stat("transitions")), Some(1));
    // Every decision is logged; once the last one is in the log, so is every transition.
    let log = wait_for_log_lines(&envoy, "decision=Rejected", 20)?;
    let opened = log
        .lines()
        .filter(|l| l.contains("transition=CLOSED->OPEN"))
        .count();
    assert_eq!(opened, 1, "one worker logs the transition");
    // Envoy's log lines carry the thread id: both workers rejected.
    let threads: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("decision=Rejected"))
        .filter_map(|l| l.split("][").nth(1))
        .collect();
    assert_eq!(
        threads.len(),
        2,
        "rejections came from one worker only: {threads:?}"
    );
    Ok(())
}

#[test]
fn an_upstream_timeout_counts_as_a_failure() -> Result<()> {
    let upstream = TestUpstream::start()?;
    // 504 is not a listed status: the timeout counts through Envoy's response details.
    let config = r#"{"breakers":[{"name":"b","trip":{"consecutive_failures":2},
      "failure":{"statuses":[429],"timeout":true},
      "timeout":"200ms","open":{"duration":"1m"},"fallback":{"fail_fast":{}}}]}"#;
    let envoy = start(config, &upstream, 1)?;
    let addr = envoy.listener_addr();
    let slow = || Request::get("/slow").header("x-upstream-delay-ms", "3000");
    for _ in 0..2 {
        let started = Instant::now();
        assert_eq!(send(addr, &slow())?.status, 504);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the 200ms timeout applied"
        );
    }
    let r = send(addr, &Request::get("/fast"))?;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-meshguard-fallback-reason"),
        Some("breaker_open")
    );
    assert_eq!(envoy.stat(&stat("failures")), Some(2));
    Ok(())
}

#[test]
fn envoy_refuses_a_bad_configuration_and_the_log_names_the_field() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let config = r#"{"breakers":[{"name":"b","trip":{"failure_ratio":{"ratio":1.5,"window":{"calls":10}}}}]}"#;
    let Err(err) = start(config, &upstream, 1) else {
        bail!("Envoy started with {config}");
    };
    let err = format!("{err:#}");
    let line = "meshguard_fallback: invalid configuration: breakers[0].trip.failure_ratio.ratio: must be above 0 and at most 1";
    assert!(err.contains(line), "no {line:?} in:\n{err}");
    assert!(
        err.contains("Unable to create Wasm plugin fallback"),
        "{err}"
    );
    assert_eq!(upstream.request_count(), 0);
    Ok(())
}

/// A refused connection is a failure through Envoy's response details, even when its 503 is
/// not a listed status; the breaker is keyed by the route's cluster (`xds.cluster_name`).
#[test]
fn a_refused_connection_counts_as_a_failure_per_cluster() -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = r#"{"breakers":[{"name":"b","key":"cluster","trip":{"consecutive_failures":2},
      "failure":{"statuses":[429],"reset":true},"open":{"duration":"1m"}}]}"#;
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(port)
            .arg("--component-log-level")
            .arg("wasm:debug")
            .wasm_filter(
                WasmFilter::new("fallback", wasm_artifact("meshguard_fallback")?)
                    .configuration(config),
            ),
    )?;
    let addr = envoy.listener_addr();
    for _ in 0..2 {
        assert_eq!(send(addr, &Request::get("/x"))?.status, 503);
    }
    let r = send(addr, &Request::get("/x"))?;
    assert_eq!(
        r.header("x-meshguard-fallback-reason"),
        Some("breaker_open")
    );
    assert_eq!(envoy.stat(&stat("failures")), Some(2));
    wait_for_log_lines(&envoy, "key=mg:cb:b:upstream decision=Rejected", 1)?;
    Ok(())
}

/// The last good response is stored from a real (chunked or sized) upstream body and served
/// once the breaker is open.
#[test]
fn an_open_breaker_serves_the_cached_response() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let config = r#"{"breakers":[{"name":"b","trip":{"consecutive_failures":2},
      "open":{"duration":"1m"},"state_header":true,
      "fallback":{"cache":{"ttl":"1m","max_entries":16,"max_body_bytes":4096}}}]}"#;
    let envoy = start(config, &upstream, 2)?;
    let addr = envoy.listener_addr();
    let good = send(
        addr,
        &Request::get("/items?x=1").header("x-upstream-body", "the good one"),
    )?;
    assert_eq!(good.body_str(), "the good one");
    envoy.wait_for_stat(&stat("cache_stores"), |v| v == 1, WAIT)?;
    for _ in 0..2 {
        let r = send(
            addr,
            &Request::get("/items?x=1").header("x-upstream-status", "503"),
        )?;
        assert_eq!(r.status, 503);
    }
    for _ in 0..4 {
        let r = send(addr, &Request::get("/items?x=1"))?;
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), "the good one");
        assert_eq!(r.header("x-meshguard-fallback"), Some("cache"));
        assert_eq!(r.header("x-meshguard-breaker"), Some("b=open"));
    }
    let miss = send(addr, &Request::get("/items?x=2"))?;
    assert_eq!(miss.status, 503);
    assert_eq!(miss.header("x-meshguard-fallback"), Some("fail_fast"));
    assert_eq!(upstream.request_count(), 3);
    Ok(())
}

/// A fallback cluster answers while the breaker is open; when it is down the chain moves on
/// to its static entry at once instead of hanging.
#[test]
fn the_fallback_service_answers_and_a_dead_one_falls_through_the_chain() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let fallback = TestUpstream::start_named("fallback-svc")?;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = r#"{"breakers":[
      {"name":"b","match":{"path":{"prefix":"/live"}},"trip":{"consecutive_failures":1},
       "open":{"duration":"1m"},
       "fallback":{"service":{"cluster":"fallback","timeout":"2s"}}},
      {"name":"d","match":{"path":{"prefix":"/dead"}},"trip":{"consecutive_failures":1},
       "open":{"duration":"1m"},
       "fallback":{"chain":[{"service":{"cluster":"dead","timeout":"2s"}},{"static":{"status":200,"body":"static"}}]}}]}"#;
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .cluster("fallback", fallback.port())
            .cluster("dead", dead_port)
            .arg("--component-log-level")
            .arg("wasm:debug")
            .wasm_filter(
                WasmFilter::new("fallback", wasm_artifact("meshguard_fallback")?)
                    .configuration(config),
            ),
    )?;
    let addr = envoy.listener_addr();
    assert_eq!(
        send(
            addr,
            &Request::get("/live").header("x-upstream-status", "503")
        )?
        .status,
        503
    );
    let r = send(
        addr,
        &Request::get("/live/x").header("x-upstream-body", "degraded"),
    )?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "degraded");
    assert_eq!(r.header("x-upstream"), Some("fallback-svc"));
    assert_eq!(r.header("x-meshguard-fallback"), Some("service"));
    let called = fallback.requests();
    assert_eq!(called.len(), 1);
    assert_eq!(called[0].path, "/live/x");
    assert_eq!(called[0].header("x-meshguard-fallback-for"), Some("b"));

    assert_eq!(
        send(
            addr,
            &Request::get("/dead").header("x-upstream-status", "503")
        )?
        .status,
        503
    );
    let started = Instant::now();
    let r = send(addr, &Request::get("/dead"))?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "static");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait for the dead service"
    );
    assert_eq!(
        envoy.stat("wasmcustom.meshguard_fallback.d.service_failures"),
        Some(1)
    );
    Ok(())
}

/// Slow responses (request start to response headers) trip the breaker by ratio.
#[test]
fn slow_calls_trip_the_breaker() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let config = r#"{"breakers":[{"name":"b","open":{"duration":"1m"},
      "trip":{"slow_calls":{"threshold":"200ms","ratio":0.5,"window":{"calls":4},"min_calls":4}},
      "fallback":{"fail_fast":{}}}]}"#;
    let envoy = start(config, &upstream, 1)?;
    let addr = envoy.listener_addr();
    for delay in ["0", "400", "0", "400"] {
        let r = send(
            addr,
            &Request::get("/x").header("x-upstream-delay-ms", delay),
        )?;
        assert_eq!(r.status, 200);
    }
    assert_eq!(envoy.stat(&stat("slow_calls")), Some(2));
    let r = send(addr, &Request::get("/x"))?;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-meshguard-fallback-reason"),
        Some("breaker_open")
    );
    Ok(())
}

/// `fallback_on_failure`: a failed response is replaced while the breaker is still closed,
/// from the response path (a local reply and a fallback-service call in Envoy's encoder).
#[test]
fn fallback_on_failure_replaces_failed_responses_in_envoy() -> Result<()> {
    let upstream = TestUpstream::start()?;
    // Answers everything (the steering headers of the failed request reach it too).
    let fallback = TestUpstream::start_with(|_| {
        meshguard_tests::Response::new(200).with_body("from the fallback")
    })?;
    let config = r#"{"breakers":[
      {"name":"b","match":{"path":{"prefix":"/static"}},"trip":{"consecutive_failures":5},
       "fallback_on_failure":true,"state_header":true,
       "fallback":{"static":{"status":200,"body":"replaced"}}},
      {"name":"s","match":{"path":{"prefix":"/service"}},"trip":{"consecutive_failures":5},
       "fallback_on_failure":true,
       "fallback":{"service":{"cluster":"fallback","timeout":"2s"}}}]}"#;
    let envoy = start_with_fallback_service(config, upstream.port(), fallback.port())?;
    let addr = envoy.listener_addr();
    let r = send(
        addr,
        &Request::get("/static").header("x-upstream-status", "500"),
    )?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "replaced");
    assert_eq!(r.header("x-meshguard-breaker"), Some("b=closed"));
    let r = send(
        addr,
        &Request::get("/service")
            .header("x-upstream-status", "500")
            .header("x-upstream-body", "from upstream"),
    )?;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.body_str(), "from the fallback");
    assert_eq!(r.header("x-meshguard-fallback"), Some("service"));
    let called = fallback.requests();
    assert_eq!(called.len(), 1);
    assert_eq!(
        called[0].path, "/service",
        "the request's path, kept from the request"
    );
    assert_eq!(called[0].header("x-meshguard-fallback-for"), Some("s"));
    Ok(())
}

/// With two worker threads, HALF_OPEN admits its probes in total: of eight concurrent requests
/// after the open time, exactly two reach the upstream; their successes close the breaker.
#[test]
fn half_open_admits_its_probes_in_total_across_worker_threads() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let config = r#"{"breakers":[{"name":"b","trip":{"consecutive_failures":1},
      "open":{"duration":"1s","backoff":1,"max":"1s"},
      "half_open":{"probes":2,"successes":2,"probe_timeout":"1m"},
      "fallback":{"static":{"status":200,"body":"fallback"}}}]}"#;
    let envoy = start(config, &upstream, 2)?;
    let addr = envoy.listener_addr();
    assert_eq!(send(addr, &failing())?.status, 503);
    envoy.wait_for_stat(&stat("state"), |v| v == 1, WAIT)?;
    // Wall-clock time must pass for the open time to end; nothing can be polled without
    // spending a probe.
    std::thread::sleep(Duration::from_millis(1200));
    let barrier = Arc::new(Barrier::new(8));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                // The probes stay out for 1s, so all eight arrive while they are.
                send(
                    addr,
                    &Request::get("/api").header("x-upstream-delay-ms", "1000"),
                )
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for client in clients {
        match client.join() {
            Ok(response) => bodies.push(response?.body_str().into_owned()),
            Err(_) => bail!("a client thread panicked"),
        }
    }
    let forwarded = bodies.iter().filter(|b| b.as_str() != "fallback").count();
    assert_eq!(forwarded, 2, "{bodies:?}");
    assert_eq!(upstream.request_count(), 3);
    envoy.wait_for_stat(&stat("state"), |v| v == 0, WAIT)?;
    Ok(())
}

/// A client may send any octet in a header value. A breaker matching on that header and a
/// fallback service that gets the request's headers read it lossily (the SDK's `String`
/// readers would trap and take the worker's VM down): the breaker still trips, the fallback
/// service still answers, and the worker keeps serving.
#[test]
fn a_header_that_is_not_utf8_neither_stops_the_worker_nor_the_breaker() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let fallback = TestUpstream::start_named("fallback-svc")?;
    let config = r#"{"breakers":[
      {"name":"b","match":{"headers":[{"name":"x-user","prefix":"caf"}]},
       "trip":{"consecutive_failures":1},"open":{"duration":"1m"},
       "fallback":{"service":{"cluster":"fallback","timeout":"2s"}}}]}"#;
    let envoy = start_with_fallback_service(config, upstream.port(), fallback.port())?;
    let raw = |status: u16| {
        let bytes = format!(
            "GET /api HTTP/1.1\r\nHost: a\r\nx-upstream-status: {status}\r\nx-user: caf\u{0}\r\nConnection: close\r\n\r\n"
        );
        // The NUL stands for the octet 0xE9, which a Rust string cannot hold.
        let bytes: Vec<u8> = bytes
            .into_bytes()
            .into_iter()
            .map(|b| if b == 0 { 0xe9 } else { b })
            .collect();
        meshguard_tests::send_raw(envoy.listener_addr(), &bytes)
    };
    // The failure trips the breaker (the matcher read the junk value, lossily).
    let first = raw(503)?;
    if first.status != 503 {
        bail!("{first:?}\n{}", envoy.log());
    }
    // Open: the fallback service answers, with the request's headers forwarded.
    let second = raw(200)?;
    if second.status != 200 || fallback.requests().len() != 1 {
        bail!("{second:?}\n{}", envoy.log());
    }
    let forwarded = fallback.requests()[0].header("x-user").map(str::to_string);
    if !forwarded.as_deref().is_some_and(|v| v.starts_with("caf")) {
        bail!("the fallback service got x-user {forwarded:?}");
    }
    // The worker is alive.
    let clean = send(envoy.listener_addr(), &Request::get("/other"))?;
    if clean.status != 200 || envoy.log().contains("panicked") {
        bail!("{clean:?}\n{}", envoy.log());
    }
    Ok(())
}

/// A fallback service whose answer carries a header value that is not UTF-8 (it may pass on
/// whatever its own upstream sent): the answer is still served, the value read lossily,
/// and the worker's VM keeps running (the SDK's `String` reader would trap on it).
#[test]
fn a_fallback_service_header_that_is_not_utf8_is_served_without_stopping_the_worker() -> Result<()>
{
    use std::io::{Read, Write};
    let upstream = TestUpstream::start()?;
    // A raw HTTP/1.1 server: every answer carries `x-junk: caf\xe9`. It serves at most 8
    // connections and stops when told or after 30 s.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < 8
            && Instant::now() < deadline
            && !stopped.load(std::sync::atomic::Ordering::Relaxed)
        {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nx-junk: caf\xe9\r\ncontent-length: 8\r\nconnection: close\r\n\r\nfallback",
            );
            served += 1;
        }
    });
    let config = r#"{"breakers":[
      {"name":"b","match":{"path":{"prefix":"/api"}},"trip":{"consecutive_failures":1},
       "open":{"duration":"1m"},
       "fallback":{"service":{"cluster":"fallback","timeout":"2s"}}}]}"#;
    let envoy = start_with_fallback_service(config, upstream.port(), port)?;
    let addr = envoy.listener_addr();
    if send(addr, &failing())?.status != 503 {
        bail!("the failure did not reach the client\n{}", envoy.log());
    }
    for _ in 0..2 {
        let r = send(addr, &Request::get("/api"))?;
        if r.status != 200 || r.body != b"fallback" {
            bail!("{r:?}\n{}", envoy.log());
        }
        if !r
            .header("x-junk")
            .is_some_and(|v| v.starts_with("caf") && v != "caf")
        {
            bail!("x-junk not passed on: {r:?}");
        }
    }
    if envoy.log().contains("panicked") {
        bail!("the VM trapped:\n{}", envoy.log());
    }
    drop(envoy);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    Ok(())
}
