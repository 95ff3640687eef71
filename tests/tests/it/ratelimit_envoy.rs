//! The ratelimit filter (`meshguard_ratelimit.wasm`) in a real Envoy 1.40 (V8): rejection and
//! its headers, delay (pacing), shadow, tiers, per-key limits, exactness across worker threads,
//! refused configurations and the counters in `/stats` and `/stats/prometheus`.
//!
//! The decision logic is tested natively and in host-sim with virtual time (`ratelimit.rs`);
//! these tests prove the shell behaves the same in Envoy. Envoy runs on the wall clock, so
//! limits are chosen to keep outcomes independent of scheduling: long windows where counts are
//! asserted, timing assertions only where the paced schedule is the point (with generous
//! tolerances), and every loop and wait bounded in count and time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use meshguard_tests::{
    send, send_raw, send_with_timeout, wasm_artifact, workspace_root, Envoy, EnvoyConfig, Request,
    Response, TestUpstream, WasmFilter,
};

/// Longest wait for a stat or a log line that should already be there.
const WAIT: Duration = Duration::from_secs(10);

/// The counters the filter defines for every rule, in `/stats` order.
const COUNTERS: [&str; 6] = [
    "allowed",
    "contention",
    "delayed",
    "limited",
    "overflow",
    "shadow_limited",
];

// --- Envoy set-up ------------------------------------------------------------------------------

fn ratelimit_filter(config: &str) -> Result<WasmFilter> {
    Ok(WasmFilter::new("ratelimit", wasm_artifact("meshguard_ratelimit")?).configuration(config))
}

/// Envoy on the harness bootstrap with the ratelimit filter configured by `filter_config`,
/// `workers` worker threads and wasm debug logs (one line per decision).
fn start(filter_config: &str, upstream: &TestUpstream, workers: u32) -> Result<Envoy> {
    Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .concurrency(workers)
            .arg("--component-log-level")
            .arg("wasm:debug")
            .wasm_filter(ratelimit_filter(filter_config)?),
    )
}

/// `envoy-configs/harness.yaml.tmpl` with `edit` applied to its text.
fn harness_template(edit: impl FnOnce(&str) -> Result<String>) -> Result<EnvoyConfig> {
    let path = workspace_root().join("envoy-configs/harness.yaml.tmpl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(EnvoyConfig::from_template_text(edit(&text)?))
}

/// The harness template whose `main` listener reads a PROXY protocol v1 line first, so a test
/// chooses the client address Envoy sees as `source.address` (see [`send_from`]).
fn proxy_protocol_template() -> Result<EnvoyConfig> {
    harness_template(|text| {
        let anchor = "    filter_chains:\n";
        ensure!(
            text.matches(anchor).count() == 1,
            "the harness template no longer has exactly one `filter_chains:` at indent 4"
        );
        Ok(text.replacen(
            anchor,
            "    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
    filter_chains:\n",
            1,
        ))
    })
}

/// The harness template with the stats tag extractor the filter's README recommends, which
/// turns the rule name into a Prometheus label.
fn rule_label_template() -> Result<EnvoyConfig> {
    harness_template(|text| {
        Ok(format!(
            "stats_config:
  stats_tags:
  - tag_name: rule
    regex: \"^wasmcustom\\\\.meshguard_ratelimit\\\\.((.+?)\\\\.)[a-z_]+$\"
{text}"
        ))
    })
}

// --- clients -----------------------------------------------------------------------------------

/// Sends `request` on a new connection that starts with a PROXY protocol v1 line declaring
/// `client_ip` as the source: behind [`proxy_protocol_template`] it is the client address.
fn send_from(addr: SocketAddr, client_ip: &str, request: &Request) -> Result<Response> {
    let (family, destination) = if client_ip.contains(':') {
        ("TCP6", "::1")
    } else {
        ("TCP4", "127.0.0.1")
    };
    let mut bytes = format!(
        "PROXY {family} {client_ip} {destination} 40000 {}\r\n",
        addr.port()
    )
    .into_bytes();
    bytes.extend(request.to_bytes(&addr.to_string()));
    send_raw(addr, &bytes)
        .with_context(|| format!("{} {} from {client_ip}", request.method, request.path))
}

/// Sends every request at once, each on its own thread and connection, released together by a
/// barrier. Returns each response with its latency, in the order given.
fn send_all_at_once(addr: SocketAddr, requests: &[Request]) -> Result<Vec<(Response, Duration)>> {
    let barrier = Barrier::new(requests.len());
    std::thread::scope(|scope| {
        let senders: Vec<_> = requests
            .iter()
            .map(|request| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let sent = Instant::now();
                    send(addr, request).map(|response| (response, sent.elapsed()))
                })
            })
            .collect();
        senders
            .into_iter()
            .map(|s| s.join().map_err(|_| anyhow!("a sender thread panicked"))?)
            .collect()
    })
}

fn statuses<'a>(responses: impl IntoIterator<Item = &'a Response>) -> Vec<u16> {
    responses.into_iter().map(|r| r.status).collect()
}

/// How many of `statuses` are `status`.
fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// A header parsed as a number (`None` if absent or not a number).
fn number(response: &Response, header: &str) -> Option<u64> {
    response.header(header)?.parse().ok()
}

// --- observing Envoy ---------------------------------------------------------------------------

fn stat_name(rule: &str, counter: &str) -> String {
    format!("wasmcustom.meshguard_ratelimit.{rule}.{counter}")
}

/// Every counter of `rule` as `/stats` shows it (a missing counter is left out).
fn rule_counters(envoy: &Envoy, rule: &str) -> Result<BTreeMap<&'static str, i64>> {
    let stats = envoy.stats()?;
    Ok(COUNTERS
        .iter()
        .filter_map(|c| stats.get(&stat_name(rule, c)).map(|v| (*c, *v)))
        .collect())
}

/// The six counters with `nonzero` set and every other one 0.
fn expected(nonzero: &[(&'static str, i64)]) -> BTreeMap<&'static str, i64> {
    let mut all: BTreeMap<_, _> = COUNTERS.iter().map(|c| (*c, 0)).collect();
    all.extend(nonzero.iter().copied());
    all
}

/// Waits until `rule`'s counters are exactly `nonzero` (others 0). The decision counters are
/// batched in each worker's VM and reach Envoy on the root's next tick (at most 1 s later).
fn assert_counters(envoy: &Envoy, rule: &str, nonzero: &[(&'static str, i64)]) -> Result<()> {
    let want = expected(nonzero);
    let deadline = Instant::now() + WAIT;
    loop {
        let got = rule_counters(envoy, rule)?;
        if got == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("counters of rule {rule}: got {got:?}, want {want:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until Envoy's log has at least `n` lines containing every one of `needles`; returns
/// how many it has.
fn wait_for_log_lines(envoy: &Envoy, needles: &[&str], n: usize) -> Result<usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = envoy.log();
        let found = log
            .lines()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .count();
        if found >= n {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            bail!("Envoy logged {found} line(s) with {needles:?}, want {n}");
        }
        // Envoy flushes its log file every 100 ms (the harness sets it).
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the Prometheus sample `series` (a name with its labels, e.g. `a{b="c"}`; Envoy
/// writes a series without labels as `a{}`).
fn prometheus_sample(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix("{} ").or_else(|| rest.strip_prefix(' '))
        })
        .find_map(|value| value.trim().parse().ok())
}

/// Connections each of Envoy's `workers` worker threads accepted on the main listener (the
/// harness's only one; its stats are named after the configured address, port 0).
fn connections_per_worker(envoy: &Envoy, workers: u32) -> Result<Vec<i64>> {
    let stats = envoy.stats()?;
    (0..workers)
        .map(|w| {
            let suffix = format!(".worker_{w}.downstream_cx_total");
            let matching: Vec<i64> = stats
                .iter()
                .filter(|(name, _)| {
                    name.starts_with("listener.")
                        && !name.starts_with("listener.admin.")
                        && name.ends_with(&suffix)
                })
                .map(|(_, value)| *value)
                .collect();
            match matching[..] {
                [connections] => Ok(connections),
                _ => Err(anyhow!(
                    "want one listener stat *{suffix}, found {matching:?}"
                )),
            }
        })
        .collect()
}

/// An upstream that answers 200 and records when each request arrived.
fn timed_upstream() -> Result<(TestUpstream, Arc<Mutex<Vec<Instant>>>)> {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&arrivals);
    let upstream = TestUpstream::start_with(move |_| {
        record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Instant::now());
        Response::new(200).with_body("ok")
    })?;
    Ok((upstream, arrivals))
}

// --- 1. reject ---------------------------------------------------------------------------------

/// A token bucket of 2 per 10 s (one token per 5 s) rejects the third request at once with the
/// configured reply and headers that follow from the config: `RateLimit-Limit` is the burst,
/// `RateLimit-Reset` the time until the bucket is full again (10 s after the first request),
/// `Retry-After` the time until the next token (5 s after it). A second rule replies with its
/// own status, body and headers and no `RateLimit-*` headers (`never`); a third sends them on
/// admitted responses too (`always`).
#[test]
fn rejections_carry_retry_after_ratelimit_headers_and_the_configured_reply() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = start(
        r#"{"rules":[
          {"name":"token","match":{"path":{"prefix":"/token"}},
           "limits":[{"algorithm":"token_bucket","requests":2,"per":"10s"}],
           "response":{"body":"slow down","headers":{"x-reason":"quota"}}},
          {"name":"custom","match":{"path":{"prefix":"/custom"}},
           "limits":[{"algorithm":"sliding_window","requests":1,"per":"1m"}],
           "response":{"status":503,"body":"busy, come back later",
                       "headers":{"x-reason":"maintenance","cache-control":"no-store"}},
           "ratelimit_headers":"never"},
          {"name":"always","match":{"path":{"prefix":"/always"}},
           "limits":[{"algorithm":"sliding_window","requests":3,"per":"1m"}],
           "ratelimit_headers":"always"}]}"#,
        &upstream,
        1,
    )?;
    let addr = envoy.listener_addr();

    // token: 200, 200, 429.
    let started = Instant::now();
    let token: Vec<Response> = (0..3)
        .map(|_| send(addr, &Request::get("/token")))
        .collect::<Result<_>>()?;
    let elapsed = started.elapsed();
    assert_eq!(statuses(&token), [200, 200, 429]);
    assert_eq!(token[0].header("ratelimit-limit"), None, "on_reject only");
    let rejected = &token[2];
    assert_eq!(rejected.body_str(), "slow down");
    assert_eq!(rejected.header("x-reason"), Some("quota"));
    assert_eq!(rejected.header("ratelimit-limit"), Some("2"), "the burst");
    assert_eq!(rejected.header("ratelimit-remaining"), Some("0"));
    // Rounded up to whole seconds, less whatever passed between the first and third request.
    let passed = elapsed.as_secs();
    let reset = number(rejected, "ratelimit-reset").context("ratelimit-reset")?;
    assert!(
        (10_u64.saturating_sub(passed + 1)..=10).contains(&reset),
        "reset {reset} after {elapsed:?}"
    );
    let retry = number(rejected, "retry-after").context("retry-after")?;
    assert!(
        (5_u64.saturating_sub(passed + 1)..=5).contains(&retry),
        "retry-after {retry} after {elapsed:?}"
    );
    if elapsed < Duration::from_millis(900) {
        assert_eq!((reset, retry), (10, 5));
    }

    // custom: the configured status, body and headers; Retry-After but no RateLimit-*.
    let started = Instant::now();
    let custom: Vec<Response> = (0..2)
        .map(|_| send(addr, &Request::get("/custom/x")))
        .collect::<Result<_>>()?;
    let passed = started.elapsed().as_secs();
    assert_eq!(statuses(&custom), [200, 503]);
    let rejected = &custom[1];
    assert_eq!(rejected.body_str(), "busy, come back later");
    assert_eq!(rejected.header("x-reason"), Some("maintenance"));
    assert_eq!(rejected.header("cache-control"), Some("no-store"));
    for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert_eq!(rejected.header(name), None, "{name} with `never`");
    }
    // An exact sliding window of 1 per minute frees up no sooner than a minute after the first
    // request and, with 7 sub-windows, no later than 60 s × (1 + 2/7) ≈ 77.2 s.
    let retry = number(rejected, "retry-after").context("retry-after")?;
    assert!(
        (60_u64.saturating_sub(passed + 1)..=78).contains(&retry),
        "retry-after {retry}"
    );

    // always: every admitted response counts down; the rejection says 0.
    let always: Vec<Response> = (0..4)
        .map(|_| send(addr, &Request::get("/always")))
        .collect::<Result<_>>()?;
    assert_eq!(statuses(&always), [200, 200, 200, 429]);
    for (response, remaining) in always.iter().zip(["2", "1", "0", "0"]) {
        assert_eq!(response.header("ratelimit-limit"), Some("3"));
        assert_eq!(response.header("ratelimit-remaining"), Some(remaining));
        let reset = number(response, "ratelimit-reset").context("ratelimit-reset")?;
        assert!((1..=78).contains(&reset), "reset {reset}");
    }
    assert!(always[3].header("retry-after").is_some());

    // Only admitted requests reached the upstream.
    assert_eq!(upstream.request_count(), 2 + 1 + 3);
    assert_counters(&envoy, "token", &[("allowed", 2), ("limited", 1)])?;
    assert_counters(&envoy, "custom", &[("allowed", 1), ("limited", 1)])?;
    assert_counters(&envoy, "always", &[("allowed", 3), ("limited", 1)])?;
    Ok(())
}

// --- 2. delay ----------------------------------------------------------------------------------

/// Pacing interval of [`a_concurrent_burst_is_paced_and_what_would_wait_too_long_is_rejected`].
const PACE: Duration = Duration::from_millis(250);
/// How much earlier than its paced time a request may reach the upstream relative to the
/// previous one: the previous one's release may have been late (timer and scheduling jitter
/// on a loaded 2-core machine), never early.
const PACE_TOLERANCE: Duration = Duration::from_millis(60);

/// A leaky bucket of 4/s (one request per 250 ms) with `max_delay` 1050 ms queues at most 5
/// requests (delays 0, 250, 500, 750, 1000 ms). Eight requests sent at once over two workers:
/// five reach the upstream one pacing interval apart, three are rejected at once with 429 and
/// `Retry-After`. (The count holds as long as the eight are decided within 200 ms of each
/// other: the 6th slot, 1250 ms away, is 200 ms past `max_delay`.)
#[test]
fn a_concurrent_burst_is_paced_and_what_would_wait_too_long_is_rejected() -> Result<()> {
    let (upstream, arrivals) = timed_upstream()?;
    let envoy = start(
        r#"{"rules":[{"name":"paced","action":"delay","max_delay":"1050ms",
            "limits":[{"algorithm":"leaky_bucket","requests":4,"per":"1s"}]}]}"#,
        &upstream,
        2,
    )?;
    let burst = vec![Request::get("/paced"); 8];
    let sent = Instant::now();
    let responses = send_all_at_once(envoy.listener_addr(), &burst)?;
    let statuses: Vec<u16> = responses.iter().map(|(r, _)| r.status).collect();
    assert_eq!(count(&statuses, 200), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 3, "{statuses:?}");

    for (response, latency) in responses.iter().filter(|(r, _)| r.status == 429) {
        // The 6th slot would be at most 1250 ms away: 200 ms past max_delay, rounded up to 1 s.
        assert_eq!(response.header("retry-after"), Some("1"));
        assert_eq!(
            response.header("ratelimit-limit"),
            Some("5"),
            "queue capacity"
        );
        assert_eq!(response.header("ratelimit-remaining"), Some("0"));
        assert!(
            *latency < Duration::from_secs(1),
            "rejected at once, not held: {latency:?}"
        );
    }

    // The admitted ones reach the upstream one interval apart (never early)...
    let arrivals = arrivals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(arrivals.len(), 5);
    let mut offsets: Vec<Duration> = arrivals.iter().map(|a| a.duration_since(sent)).collect();
    offsets.sort();
    println!(
        "paced arrivals, ms after the burst was sent: {:?}",
        offsets.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
    for pair in offsets.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= PACE - PACE_TOLERANCE,
            "arrivals {offsets:?}: gap {gap:?}"
        );
    }
    // ...and on schedule: the k-th no sooner than k intervals after the first, and the whole
    // burst through within 4 intervals plus a generous second.
    for (k, offset) in offsets.iter().enumerate() {
        let paced = PACE * u32::try_from(k)?;
        assert!(
            *offset + PACE_TOLERANCE >= offsets[0] + paced,
            "arrivals {offsets:?}"
        );
    }
    assert!(
        offsets[4] - offsets[0] <= PACE * 4 + Duration::from_secs(1),
        "{offsets:?}"
    );

    // The client sees the same schedule in its latencies.
    let mut latencies: Vec<Duration> = responses
        .iter()
        .filter(|(r, _)| r.status == 200)
        .map(|(_, latency)| *latency)
        .collect();
    latencies.sort();
    for (k, latency) in latencies.iter().enumerate() {
        let paced = PACE * u32::try_from(k)?;
        assert!(
            *latency + PACE_TOLERANCE >= paced,
            "latencies {latencies:?}"
        );
    }

    assert_counters(
        &envoy,
        "paced",
        &[("allowed", 1), ("delayed", 4), ("limited", 3)],
    )?;
    wait_for_log_lines(&envoy, &["ratelimit rule=paced", "decision=delay_ms:"], 4)?;
    Ok(())
}

/// A held POST reaches the upstream with its whole body (Envoy buffers it while the headers
/// are paused) and with the `RateLimit-*` headers on its response (`always`); a client that
/// gives up while held is forgotten: its stream is never resumed, Envoy keeps serving, and the
/// next request is released on schedule.
#[test]
fn a_held_request_keeps_its_body_and_a_client_that_leaves_is_forgotten() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = start(
        r#"{"rules":[{"name":"paced","action":"delay","max_delay":"3s",
            "ratelimit_headers":"always",
            "limits":[{"algorithm":"leaky_bucket","requests":1,"per":"1s"}]}]}"#,
        &upstream,
        1,
    )?;
    let addr = envoy.listener_addr();
    let interval = Duration::from_secs(1);

    let started = Instant::now();
    assert_eq!(send(addr, &Request::get("/first"))?.status, 200);
    let body = vec![b'x'; 256 * 1024];
    let posted = send(addr, &Request::post("/upload").body(body.clone()))?;
    let held = started.elapsed();
    assert_eq!(posted.status, 200);
    assert!(
        held + PACE_TOLERANCE >= interval,
        "released early: {held:?}"
    );
    assert_eq!(
        posted.header("ratelimit-limit"),
        Some("4"),
        "queue capacity"
    );
    assert!(posted.header("ratelimit-remaining").is_some());

    // Held for about one interval; the client gives up long before.
    let gone = send_with_timeout(addr, &Request::get("/gone"), Duration::from_millis(200));
    assert!(gone.is_err(), "the client was meant to time out: {gone:?}");
    let started = Instant::now();
    let next = send(addr, &Request::get("/next"))?;
    assert_eq!(next.status, 200);
    // Its slot is the one after /gone's: about 2 s away.
    let waited = started.elapsed();
    assert!(
        waited + PACE_TOLERANCE >= interval,
        "released early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(4), "released late: {waited:?}");

    let received = upstream.requests();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/first", "/upload", "/next"],
        "/gone was never resumed"
    );
    assert_eq!(received[1].body, body);
    assert!(envoy.is_running());
    assert_counters(&envoy, "paced", &[("allowed", 1), ("delayed", 3)])?;
    let log = envoy.log();
    assert!(
        !log.contains("panicked") && !log.contains("Function: proxy_on"),
        "the VM failed:\n{log}"
    );
    Ok(())
}

// --- 3. shadow ---------------------------------------------------------------------------------

/// A shadow rule of 3 per minute lets all 8 requests through, counts the 5 it would have
/// rejected in `shadow_limited` and logs each of them.
#[test]
fn shadow_never_blocks_but_counts_what_it_would_have_limited() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = start(
        r#"{"rules":[{"name":"trial","action":"shadow",
            "limits":[{"algorithm":"sliding_window","requests":3,"per":"1m"}]}]}"#,
        &upstream,
        2,
    )?;
    let responses: Vec<Response> = (0..8)
        .map(|_| send(envoy.listener_addr(), &Request::get("/")))
        .collect::<Result<_>>()?;
    assert_eq!(statuses(&responses), [200; 8]);
    assert!(responses
        .iter()
        .all(|r| r.header("ratelimit-limit").is_none() && r.header("retry-after").is_none()));
    assert_eq!(upstream.request_count(), 8);
    assert_counters(&envoy, "trial", &[("allowed", 3), ("shadow_limited", 5)])?;
    let logged = wait_for_log_lines(
        &envoy,
        &["ratelimit rule=trial", "decision=shadow_reject"],
        5,
    )?;
    assert_eq!(logged, 5);
    Ok(())
}

// --- 4. tiers ----------------------------------------------------------------------------------

/// A pool of 6 per minute with a gold tier reserving 3: a flood of standard requests takes
/// exactly the pool; then, with the pool dry, gold still gets exactly its reserved 3 while
/// standard requests sent at the same moment all get 429.
#[test]
fn under_pressure_a_privileged_tier_keeps_its_reserved_share() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = start(
        r#"{"rules":[{"name":"api",
            "limits":[{"algorithm":"sliding_window","requests":6,"per":"1m"}],
            "tiers":[{"name":"gold","priority":10,
                      "match":{"headers":[{"name":"x-plan","exact":"gold"}]},
                      "reserved":[{"algorithm":"sliding_window","requests":3,"per":"1m"}]}]}]}"#,
        &upstream,
        2,
    )?;
    let addr = envoy.listener_addr();
    let standard = Request::get("/api");
    let gold = Request::get("/api").header("x-plan", "gold");

    let flood = send_all_at_once(addr, &vec![standard.clone(); 12])?;
    let flood = statuses(flood.iter().map(|(r, _)| r));
    assert_eq!(
        (count(&flood, 200), count(&flood, 429)),
        (6, 6),
        "{flood:?}"
    );

    let mut mixed = vec![gold.clone(); 4];
    mixed.extend(vec![standard; 4]);
    let answers = send_all_at_once(addr, &mixed)?;
    let gold_statuses = statuses(answers[..4].iter().map(|(r, _)| r));
    let standard_statuses = statuses(answers[4..].iter().map(|(r, _)| r));
    assert_eq!(count(&gold_statuses, 200), 3, "gold {gold_statuses:?}");
    assert_eq!(count(&gold_statuses, 429), 1, "gold {gold_statuses:?}");
    assert_eq!(standard_statuses, [429; 4]);

    assert_eq!(upstream.request_count(), 9);
    assert_counters(&envoy, "api", &[("allowed", 9), ("limited", 11)])?;
    wait_for_log_lines(
        &envoy,
        &["ratelimit rule=api", "decision=allow", "quota=gold"],
        3,
    )?;
    Ok(())
}

// --- 5. per key --------------------------------------------------------------------------------

/// Keyed by a header and by the client IP (set per connection with PROXY protocol): a key
/// that is limited does not affect another one; requests without the header share one key.
#[test]
fn each_header_value_and_client_ip_has_its_own_limit() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = Envoy::start(
        proxy_protocol_template()?
            .upstream(upstream.port())
            .concurrency(2)
            .arg("--component-log-level")
            .arg("wasm:debug")
            .wasm_filter(ratelimit_filter(
                r#"{"rules":[
                  {"name":"per-user","match":{"path":{"prefix":"/user"}},"key":[{"header":"x-user"}],
                   "limits":[{"algorithm":"sliding_window","requests":2,"per":"1m"}]},
                  {"name":"per-ip","match":{"path":{"prefix":"/ip"}},"key":["client_ip"],
                   "limits":[{"algorithm":"sliding_window","requests":2,"per":"1m"}]}]}"#,
            )?),
    )?;
    let addr = envoy.listener_addr();
    // The user's requests come from changing addresses: only the header counts.
    let user = |name: &str, ip: &str| {
        send_from(addr, ip, &Request::get("/user").header("x-user", name)).map(|r| r.status)
    };
    let alice: Vec<u16> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        .iter()
        .map(|ip| user("alice", ip))
        .collect::<Result<_>>()?;
    assert_eq!(alice, [200, 200, 429]);
    assert_eq!(user("bob", "10.0.0.1")?, 200, "alice's limit is not bob's");
    assert_eq!(user("bob", "10.0.0.1")?, 200);
    assert_eq!(user("alice", "10.0.0.4")?, 429, "alice is still limited");
    assert_eq!(user("bob", "10.0.0.1")?, 429);
    // Requests without the header share one "unknown" key (`on_missing_key: shared`).
    let anonymous = |ip: &str| send_from(addr, ip, &Request::get("/user")).map(|r| r.status);
    let nameless: Vec<u16> = ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
        .iter()
        .map(|ip| anonymous(ip))
        .collect::<Result<_>>()?;
    assert_eq!(nameless, [200, 200, 429]);

    let ip = |client: &str| send_from(addr, client, &Request::get("/ip")).map(|r| r.status);
    let first: Vec<u16> = (0..3).map(|_| ip("192.0.2.1")).collect::<Result<_>>()?;
    assert_eq!(first, [200, 200, 429]);
    assert_eq!(ip("192.0.2.2")?, 200, "another address has its own limit");
    assert_eq!(ip("192.0.2.2")?, 200);
    assert_eq!(ip("2001:db8::1")?, 200, "IPv6 addresses are keys too");
    assert_eq!(ip("192.0.2.1")?, 429, "the first is still limited");

    assert_eq!(upstream.request_count(), 6 + 5);
    assert_counters(&envoy, "per-user", &[("allowed", 6), ("limited", 4)])?;
    assert_counters(&envoy, "per-ip", &[("allowed", 5), ("limited", 2)])?;
    // One debug line per decision names the rule and the key.
    wait_for_log_lines(
        &envoy,
        &["ratelimit rule=per-user key=alice decision=reject"],
        2,
    )?;
    wait_for_log_lines(
        &envoy,
        &["ratelimit rule=per-ip key=192.0.2.1 decision=reject"],
        2,
    )?;
    wait_for_log_lines(
        &envoy,
        &["ratelimit rule=per-ip key=2001:db8::1 decision=allow"],
        1,
    )?;
    wait_for_log_lines(
        &envoy,
        &["ratelimit rule=per-user key=<unknown> decision=reject"],
        1,
    )?;
    Ok(())
}

// --- 6. exact across workers -------------------------------------------------------------------

/// The limit of the exactness tests: `LIMIT` per window, with 8 × `LIMIT` requests sent.
const LIMIT: usize = 50;
/// Client threads, each with its own connections.
const CLIENTS: usize = 8;
/// Requests per client thread.
const PER_CLIENT: usize = LIMIT * 8 / CLIENTS;
/// The exactness tests' traffic must finish within this (well inside every window used).
const TRAFFIC_BUDGET: Duration = Duration::from_secs(40);

/// `CLIENTS` threads send `PER_CLIENT` requests each, one connection per request, to an Envoy
/// with `workers` workers and one rule `exact` with `limit` (JSON); checks that exactly
/// [`LIMIT`] were admitted by the client's count, the upstream's and Envoy's counters, and that
/// every worker took connections. Returns the 429 responses.
fn exactly_the_limit_passes(limit: &str, workers: u32) -> Result<Vec<Response>> {
    let upstream = TestUpstream::start()?;
    let envoy = start(
        &format!(r#"{{"rules":[{{"name":"exact","limits":[{limit}]}}]}}"#),
        &upstream,
        workers,
    )?;
    let addr = envoy.listener_addr();
    let started = Instant::now();
    let deadline = started + TRAFFIC_BUDGET;
    let barrier = Barrier::new(CLIENTS);
    let per_client: Vec<Vec<Response>> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let barrier = &barrier;
                scope.spawn(move || -> Result<Vec<Response>> {
                    barrier.wait();
                    let mut responses = Vec::with_capacity(PER_CLIENT);
                    for i in 0..PER_CLIENT {
                        ensure!(
                            Instant::now() < deadline,
                            "client {c} sent only {i} requests within {TRAFFIC_BUDGET:?}"
                        );
                        let request = Request::get(format!("/exact/{c}/{i}"));
                        responses.push(send(addr, &request)?);
                    }
                    Ok(responses)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().map_err(|_| anyhow!("a client thread panicked"))?)
            .collect::<Result<_>>()
    })?;
    let traffic = started.elapsed();
    let responses: Vec<Response> = per_client.into_iter().flatten().collect();
    let total = CLIENTS * PER_CLIENT;
    let statuses = statuses(&responses);
    let per_worker = connections_per_worker(&envoy, workers)?;
    println!(
        "{limit}: {} of {total} admitted in {traffic:?}; connections per worker {per_worker:?}",
        count(&statuses, 200)
    );
    assert_eq!(count(&statuses, 200), LIMIT, "client-side 200s");
    assert_eq!(count(&statuses, 429), total - LIMIT, "client-side 429s");
    assert_eq!(
        upstream.request_count(),
        LIMIT,
        "requests the upstream received"
    );
    let (admitted, rejected) = (i64::try_from(LIMIT)?, i64::try_from(total - LIMIT)?);
    assert_counters(
        &envoy,
        "exact",
        &[("allowed", admitted), ("limited", rejected)],
    )?;
    assert_eq!(per_worker.iter().sum::<i64>(), i64::try_from(total)?);
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "every worker must take part: {per_worker:?}"
    );
    Ok(responses.into_iter().filter(|r| r.status == 429).collect())
}

/// A fixed window (whole minutes) whose next boundary is more than `margin` away: windows are
/// aligned to multiples of their length since the Unix epoch on Envoy's wall clock, and a test
/// must not see two of them. Returns the `per` text and the time left until the boundary.
fn window_without_boundary_within(margin: Duration) -> Result<(String, Duration)> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    for minutes in 60..120_u64 {
        let length = u128::from(minutes) * 60 * 1_000_000_000;
        let left = Duration::from_nanos(u64::try_from(length - now % length)?);
        if left > margin {
            return Ok((format!("{minutes}m"), left));
        }
    }
    bail!("every window length from 60 to 119 minutes ends within {margin:?}")
}

/// Fixed window, 2 workers: exactly 50 of 400 concurrent requests pass, and the rejections'
/// `RateLimit-Reset` is the time left until the window's aligned end.
#[test]
fn a_fixed_window_admits_exactly_its_limit_across_two_workers() -> Result<()> {
    let (per, left) = window_without_boundary_within(TRAFFIC_BUDGET + Duration::from_secs(60))?;
    let started = Instant::now();
    let limit = format!(r#"{{"algorithm":"fixed_window","requests":{LIMIT},"per":"{per}"}}"#);
    let rejected = exactly_the_limit_passes(&limit, 2)?;
    let passed = started.elapsed();
    for response in &rejected {
        assert_eq!(response.header("ratelimit-limit"), Some("50"));
        assert_eq!(response.header("ratelimit-remaining"), Some("0"));
        let reset = number(response, "ratelimit-reset").context("ratelimit-reset")?;
        let bounds = left.saturating_sub(passed).as_secs()..=left.as_secs() + 1;
        assert!(bounds.contains(&reset), "reset {reset} not in {bounds:?}");
    }
    Ok(())
}

/// Exact sliding window of 50 per minute, 4 workers (on 2 cores: heavy interleaving).
#[test]
fn a_sliding_window_admits_exactly_its_limit_across_four_workers() -> Result<()> {
    exactly_the_limit_passes(
        &format!(r#"{{"algorithm":"sliding_window","requests":{LIMIT},"per":"1m"}}"#),
        4,
    )?;
    Ok(())
}

/// Token bucket of 50 per hour (a token per 72 s, longer than the traffic), 2 workers.
#[test]
fn a_token_bucket_admits_exactly_its_burst_across_two_workers() -> Result<()> {
    exactly_the_limit_passes(
        &format!(r#"{{"algorithm":"token_bucket","requests":{LIMIT},"per":"1h"}}"#),
        2,
    )?;
    Ok(())
}

// --- 7. bad configuration ----------------------------------------------------------------------

/// Envoy refuses to start with an impossible limit or an unknown field, and its log names the
/// field in the filter's one error line.
#[test]
fn envoy_refuses_a_bad_configuration_and_the_log_names_the_field() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let cases = [
        (
            r#"{"rules":[{"name":"r","limits":[{"algorithm":"fixed_window","requests":0,"per":"1s"}]}]}"#,
            "rules[0].limits[0].requests: must be at least 1",
        ),
        (
            r#"{"rules":[{"name":"r","limits":[{"algorithm":"token_bucket","requests":5,"per":"0s"}]}]}"#,
            "rules[0].limits[0].per: must be longer than 0",
        ),
        (
            r#"{"rules":[{"name":"r","limit":5,"limits":[{"algorithm":"fixed_window","requests":5,"per":"1s"}]}]}"#,
            "rules[0].limit: unknown field `limit`",
        ),
    ];
    for (filter_config, message) in cases {
        let Err(err) = start(filter_config, &upstream, 1) else {
            bail!("Envoy started with {filter_config}");
        };
        let err = format!("{err:#}");
        let line = format!("meshguard_ratelimit: invalid configuration: {message}");
        assert!(err.contains(&line), "no {line:?} in:\n{err}");
        assert!(
            err.contains("Unable to create Wasm plugin ratelimit"),
            "Envoy did not refuse the plugin:\n{err}"
        );
        assert!(err.contains("Envoy exited"), "Envoy kept running:\n{err}");
        // One error line from the filter, naming the field.
        let filter_errors = err
            .lines()
            .filter(|l| l.contains("meshguard_ratelimit: invalid configuration"))
            .count();
        assert_eq!(filter_errors, 1, "{err}");
    }
    assert_eq!(upstream.request_count(), 0);
    Ok(())
}

// --- 8. observability --------------------------------------------------------------------------

/// Per-rule counters in `/stats` (`wasmcustom.meshguard_ratelimit.<rule>.<counter>`) and in
/// `/stats/prometheus` (`meshguard_ratelimit_<rule>_<counter>`, `-` turned into `_`), and with
/// the README's tag extractor as `meshguard_ratelimit_<counter>{rule="<rule>"}`.
#[test]
fn per_rule_counters_appear_in_stats_and_prometheus() -> Result<()> {
    let filter_config = r#"{"rules":[
      {"name":"api-v1","match":{"path":{"prefix":"/api"}},
       "limits":[{"algorithm":"sliding_window","requests":1,"per":"1m"}]},
      {"name":"pacer","match":{"path":{"prefix":"/paced"}},"action":"delay","max_delay":"1s",
       "limits":[{"algorithm":"leaky_bucket","requests":2,"per":"1s"}]},
      {"name":"trial","match":{"path":{"prefix":"/trial"}},"action":"shadow",
       "limits":[{"algorithm":"sliding_window","requests":1,"per":"1m"}]}]}"#;
    // The two paced requests go at once, so one is delayed however slow the machine is.
    let traffic = |envoy: &Envoy| -> Result<Vec<u16>> {
        let addr = envoy.listener_addr();
        let get = |path: &str| send(addr, &Request::get(path)).map(|r| r.status);
        let mut statuses = vec![get("/api")?, get("/api")?];
        let paced = send_all_at_once(addr, &[Request::get("/paced"), Request::get("/paced")])?;
        statuses.extend(paced.iter().map(|(r, _)| r.status));
        statuses.extend([get("/trial")?, get("/trial")?]);
        Ok(statuses)
    };
    let want: [(&str, &[(&'static str, i64)]); 3] = [
        ("api-v1", &[("allowed", 1), ("limited", 1)]),
        ("pacer", &[("allowed", 1), ("delayed", 1)]),
        ("trial", &[("allowed", 1), ("shadow_limited", 1)]),
    ];

    let upstream = TestUpstream::start()?;
    let envoy = start(filter_config, &upstream, 2)?;
    assert_eq!(traffic(&envoy)?, [200, 429, 200, 200, 200, 200]);
    for (rule, nonzero) in want {
        assert_counters(&envoy, rule, nonzero)?;
    }
    let prometheus = envoy.prometheus()?;
    for (rule, nonzero) in want {
        for (counter, value) in expected(nonzero) {
            let series = format!("meshguard_ratelimit_{}_{counter}", rule.replace('-', "_"));
            assert!(
                prometheus.contains(&format!("# TYPE {series} counter\n")),
                "no TYPE line for {series}"
            );
            assert_eq!(
                prometheus_sample(&prometheus, &series),
                Some(value),
                "{series}"
            );
        }
    }
    drop(envoy);

    let tagged = Envoy::start(
        rule_label_template()?
            .upstream(upstream.port())
            .wasm_filter(ratelimit_filter(filter_config)?),
    )?;
    assert_eq!(traffic(&tagged)?, [200, 429, 200, 200, 200, 200]);
    for (rule, nonzero) in want {
        assert_counters(&tagged, rule, nonzero)?;
    }
    let prometheus = tagged.prometheus()?;
    assert!(prometheus.contains("# TYPE meshguard_ratelimit_allowed counter\n"));
    for (rule, nonzero) in want {
        for (counter, value) in expected(nonzero) {
            let series = format!("meshguard_ratelimit_{counter}{{rule=\"{rule}\"}}");
            assert_eq!(
                prometheus_sample(&prometheus, &series),
                Some(value),
                "{series}"
            );
        }
    }
    Ok(())
}

/// A client may send any octet in a header value. A rule keyed on that header reads it
/// lossily (the SDK's `String` reader would trap and take the worker's VM down): the value
/// still has its own limit, and the worker keeps answering.
#[test]
fn a_key_header_that_is_not_utf8_is_limited_and_never_stops_the_worker() -> Result<()> {
    let upstream = TestUpstream::start()?;
    let envoy = start(
        r#"{"rules":[{"name":"per-user","key":[{"header":"x-user"}],
            "limits":[{"algorithm":"fixed_window","requests":2,"per":"1m"}]}]}"#,
        &upstream,
        1,
    )?;
    let raw = |user: &[u8]| {
        let mut bytes = b"GET /x HTTP/1.1\r\nHost: a\r\nx-user: ".to_vec();
        bytes.extend_from_slice(user);
        bytes.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        send_raw(envoy.listener_addr(), &bytes).map(|r| r.status)
    };
    let junk: Vec<u16> = (0..3).map(|_| raw(b"caf\xe9")).collect::<Result<_>>()?;
    ensure!(junk == [200, 200, 429], "{junk:?}\n{}", envoy.log());
    // Another user (and the same junk after it) on the same worker: the VM is alive.
    let alice = send(
        envoy.listener_addr(),
        &Request::get("/x").header("x-user", "alice"),
    )?;
    ensure!(alice.status == 200, "{alice:?}\n{}", envoy.log());
    ensure!(raw(b"caf\xe9")? == 429);
    ensure!(
        !envoy.log().contains("panicked"),
        "the VM trapped:\n{}",
        envoy.log()
    );
    Ok(())
}
