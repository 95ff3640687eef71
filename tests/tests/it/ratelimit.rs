//! The ratelimit filter (`meshguard_ratelimit.wasm`) in host-sim with virtual time and several
//! worker VMs, and once in a real Envoy.

use std::time::Duration;

use crate::support::{filter_host, module};
use host_sim::{Host, LogLevel, PropertyValue, Request, StreamId};
use meshguard_tests::wasm_artifact;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A configured host with `workers` worker VMs behind Envoy's base VM (VM 0, no traffic).
fn host_with(config: &str, workers: usize) -> Host {
    filter_host("meshguard_ratelimit", config, workers)
}

fn host(config: &str) -> Host {
    host_with(config, 1)
}

/// One rule named `r` with `limits` and extra members (`"action":"shadow"`...).
fn rule(limits: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(r#"{{"rules":[{{"name":"r","limits":[{limits}]{extra}}}]}}"#)
}

fn limit(algorithm: &str, requests: u32, per: &str) -> String {
    format!(r#"{{"algorithm":"{algorithm}","requests":{requests},"per":"{per}"}}"#)
}

fn send(host: &mut Host, request: Request) -> StreamId {
    host.send(1, request).unwrap()
}

/// Status of `n` requests sent one after the other on worker 1.
fn statuses(host: &mut Host, n: usize, request: impl Fn() -> Request) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let s = send(host, request());
            host.stream(s).unwrap().status().unwrap_or(0)
        })
        .collect()
}

fn get() -> Request {
    Request::get("/")
}

/// Lets every worker's root tick once, which hands the batched per-request counters
/// (`allowed`, `delayed`, `limited`, `shadow_limited`) to the host: they lag by at most one
/// flush period (1 s). Advances the virtual clock, so call it where time no longer matters.
fn flush_stats(host: &mut Host) {
    host.advance(SEC).unwrap();
}

fn counter(host: &Host, rule: &str, name: &str) -> i64 {
    host.metric(&format!("meshguard_ratelimit.{rule}.{name}"))
        .map_or(0, |m| m.value)
}

#[test]
fn fixed_window_rejects_over_the_limit_with_ratelimit_headers() {
    let mut host = host(&rule(
        &limit("fixed_window", 2, "10s"),
        r#""response":{"body":"slow down","headers":{"x-reason":"quota"}}"#,
    ));
    assert_eq!(statuses(&mut host, 2, get), [200, 200]);
    host.advance(4 * SEC).unwrap();
    let s = send(&mut host, get());
    let view = host.stream(s).unwrap();
    assert_eq!(view.status(), Some(429));
    assert!(view.upstream_request.is_none());
    assert_eq!(view.body_str(), "slow down");
    assert_eq!(view.response_header("x-reason"), Some("quota"));
    assert_eq!(view.response_header("retry-after"), Some("6"));
    assert_eq!(view.response_header("ratelimit-limit"), Some("2"));
    assert_eq!(view.response_header("ratelimit-remaining"), Some("0"));
    assert_eq!(view.response_header("ratelimit-reset"), Some("6"));
    host.advance(6 * SEC).unwrap();
    assert_eq!(statuses(&mut host, 1, get), [200]);
    assert_eq!(
        counter(&host, "r", "allowed"),
        2,
        "the last one is still in the VM"
    );
    flush_stats(&mut host);
    assert_eq!(counter(&host, "r", "allowed"), 3);
    assert_eq!(counter(&host, "r", "limited"), 1);
}

#[test]
fn sliding_window_holds_across_the_boundary_where_fixed_window_resets() {
    let run = |algorithm: &str| {
        let mut host = host(&rule(&limit(algorithm, 2, "1s"), ""));
        let mut out = statuses(&mut host, 1, get);
        host.advance(900 * MS).unwrap();
        out.extend(statuses(&mut host, 1, get));
        host.advance(100 * MS).unwrap(); // t = 1 s: a new fixed window
        out.extend(statuses(&mut host, 1, get));
        host.advance(200 * MS).unwrap(); // t = 1.2 s: the request at 0 s has slid out
        out.extend(statuses(&mut host, 1, get));
        out
    };
    assert_eq!(run("fixed_window"), [200, 200, 200, 200]);
    assert_eq!(run("sliding_window"), [200, 200, 429, 200]);
}

#[test]
fn approximate_sliding_window_weighs_the_previous_window() {
    let mut host = host(&rule(&limit("approximate_sliding_window", 10, "1s"), ""));
    let first = statuses(&mut host, 11, get);
    assert_eq!(first.iter().filter(|s| **s == 200).count(), 10);
    assert_eq!(first[10], 429);
    // Half-way through the next window half of the previous one still counts: 5 left.
    host.advance(1500 * MS).unwrap();
    let second = statuses(&mut host, 6, get);
    assert_eq!(second, [200, 200, 200, 200, 200, 429]);
}

#[test]
fn token_bucket_allows_a_burst_then_the_rate() {
    let mut host = host(&rule(
        r#"{"algorithm":"token_bucket","requests":1,"per":"1s","burst":3}"#,
        "",
    ));
    assert_eq!(statuses(&mut host, 4, get), [200, 200, 200, 429]);
    let s = send(&mut host, get());
    assert_eq!(
        host.stream(s).unwrap().response_header("retry-after"),
        Some("1")
    );
    assert_eq!(
        host.stream(s).unwrap().response_header("ratelimit-limit"),
        Some("3")
    );
    host.advance(SEC).unwrap();
    assert_eq!(statuses(&mut host, 2, get), [200, 429]);
}

const PACED: &str = r#"{"algorithm":"leaky_bucket","requests":10,"per":"1s"}"#;

#[test]
fn delay_resumes_each_request_at_its_paced_time_and_rejects_past_max_delay() {
    let mut host = host(&rule(PACED, r#""action":"delay","max_delay":"250ms""#));
    let ids: Vec<StreamId> = (0..4).map(|_| send(&mut host, get())).collect();
    let view = |host: &Host, i: usize| host.stream(ids[i]).unwrap().clone();
    assert_eq!(view(&host, 0).status(), Some(200), "the first goes at once");
    for i in [1, 2] {
        assert!(view(&host, i).request_paused, "request {i} is held");
        assert!(view(&host, i).upstream_request.is_none());
    }
    assert_eq!(view(&host, 3).status(), Some(429), "300 ms > max_delay");
    assert_eq!(view(&host, 3).response_header("retry-after"), Some("1"));

    host.advance(99 * MS).unwrap();
    assert!(view(&host, 1).request_paused, "not before 100 ms");
    host.advance(MS).unwrap();
    assert_eq!(view(&host, 1).status(), Some(200), "released at 100 ms");
    assert!(view(&host, 2).request_paused);
    host.advance(99 * MS).unwrap();
    assert!(view(&host, 2).request_paused, "not before 200 ms");
    host.advance(MS).unwrap();
    assert_eq!(view(&host, 2).status(), Some(200), "released at 200 ms");

    // Nothing is held: the tick is back to the stats flush period (never stopped, never longer).
    assert_eq!(host.tick_period(1), Some(SEC));
    flush_stats(&mut host);
    assert_eq!(counter(&host, "r", "allowed"), 1);
    assert_eq!(counter(&host, "r", "delayed"), 2);
    assert_eq!(counter(&host, "r", "limited"), 1);
}

#[test]
fn a_held_request_that_goes_away_is_forgotten() {
    let mut host = host(&rule(PACED, r#""action":"delay","max_delay":"1s""#));
    let _first = send(&mut host, get());
    let gone = send(&mut host, get());
    let kept = send(&mut host, get());
    host.finish(gone).unwrap();
    host.advance(300 * MS).unwrap();
    assert_eq!(host.vm_failure(1), None);
    assert_eq!(host.stream(kept).unwrap().status(), Some(200));
}

#[test]
fn without_delay_a_leaky_bucket_admits_only_on_schedule() {
    let mut host = host(&rule(PACED, ""));
    assert_eq!(statuses(&mut host, 2, get), [200, 429]);
    host.advance(100 * MS).unwrap();
    assert_eq!(statuses(&mut host, 2, get), [200, 429]);
}

#[test]
fn shadow_rules_count_but_never_block() {
    let mut host = host(&rule(
        &limit("token_bucket", 1, "1m"),
        r#""action":"shadow""#,
    ));
    assert_eq!(statuses(&mut host, 5, get), [200; 5]);
    flush_stats(&mut host);
    assert_eq!(counter(&host, "r", "allowed"), 1);
    assert_eq!(counter(&host, "r", "shadow_limited"), 4);
    assert_eq!(counter(&host, "r", "limited"), 0);
    assert!(host
        .logs()
        .iter()
        .any(|l| l.message.contains("rule=r key= decision=shadow_reject")));
}

#[test]
fn tiers_keep_a_reserved_share_for_privileged_requests() {
    let mut host = host(&rule(
        &limit("fixed_window", 4, "1m"),
        r#""tiers":[{"name":"gold","priority":10,
              "match":{"headers":[{"name":"x-plan","exact":"gold"}]},
              "reserved":[{"algorithm":"fixed_window","requests":2,"per":"1m"}]}]"#,
    ));
    let gold = || Request::get("/").header("x-plan", "gold");
    // Standard traffic exhausts the shared pool.
    let standard = statuses(&mut host, 6, get);
    assert_eq!(standard, [200, 200, 200, 200, 429, 429]);
    // Gold still gets its reserved share, and nothing more.
    assert_eq!(statuses(&mut host, 3, gold), [200, 200, 429]);
    host.advance(60 * SEC).unwrap();
    // Gold draws from its reserve first, then from the pool; standard is rejected first.
    assert_eq!(statuses(&mut host, 5, gold), [200, 200, 200, 200, 200]);
    assert_eq!(statuses(&mut host, 2, get), [200, 429]);
}

#[test]
fn each_key_gets_its_own_limit() {
    let mut host = host(&rule(
        &limit("fixed_window", 1, "1m"),
        r#""key":["client_ip",{"header":"x-user"}]"#,
    ));
    fn from(ip: &str, user: &'static str) -> impl Fn() -> Request {
        let ip = PropertyValue::String(format!("{ip}:4242"));
        move || {
            Request::get("/")
                .header("x-user", user)
                .property("source.address", ip.clone())
        }
    }
    assert_eq!(
        statuses(&mut host, 2, from("10.0.0.1", "alice")),
        [200, 429]
    );
    assert_eq!(
        statuses(&mut host, 2, from("10.0.0.2", "alice")),
        [200, 429]
    );
    assert_eq!(statuses(&mut host, 2, from("10.0.0.1", "bob")), [200, 429]);
    assert!(host.logs().iter().any(|l| l
        .message
        .contains("rule=r key=10.0.0.1|bob decision=reject")));
}

#[test]
fn requests_without_the_key_share_one_limit_or_skip_the_rule() {
    let config = |on_missing: &str| {
        rule(
            &limit("fixed_window", 1, "1m"),
            &format!(r#""key":[{{"header":"x-user"}}],"on_missing_key":"{on_missing}""#),
        )
    };
    let mut shared = host(&config("shared"));
    assert_eq!(statuses(&mut shared, 2, get), [200, 429]);
    let mut skip = host(&config("skip"));
    assert_eq!(statuses(&mut skip, 3, get), [200, 200, 200]);
    flush_stats(&mut skip);
    assert_eq!(counter(&skip, "r", "allowed"), 0);
}

#[test]
fn a_full_key_table_shares_one_overflow_limit_and_reuses_idle_slots() {
    let mut host = host(&rule(
        &limit("fixed_window", 1, "1s"),
        r#""key":[{"header":"x-user"}],"max_keys":8"#,
    ));
    let user = |n: u32| move || Request::get("/").header("x-user", &format!("u{n}"));
    for n in 0..8 {
        assert_eq!(
            statuses(&mut host, 1, user(n)),
            [200],
            "user {n} gets a slot"
        );
    }
    assert_eq!(counter(&host, "r", "overflow"), 0);
    // Table full: new keys share the overflow slot; existing keys keep their own limit.
    assert_eq!(statuses(&mut host, 1, user(100)), [200]);
    assert_eq!(statuses(&mut host, 1, user(101)), [429]);
    assert_eq!(counter(&host, "r", "overflow"), 2);
    assert_eq!(statuses(&mut host, 1, user(3)), [429]);
    // A second later every slot is idle and the new key gets one of its own.
    host.advance(SEC).unwrap();
    assert_eq!(statuses(&mut host, 2, user(101)), [200, 429]);
    assert_eq!(counter(&host, "r", "overflow"), 2);
    // The table lives in a bounded set of shared-data keys.
    let keys = host.shared_data_keys();
    assert_eq!(
        keys,
        [
            "meshguard/ratelimit/default/r/0",
            "meshguard/ratelimit/default/r/overflow"
        ]
    );
}

#[test]
fn limits_hold_exactly_across_workers() {
    let limits = [
        limit("fixed_window", 25, "1m"),
        limit("sliding_window", 25, "1m"),
        limit("approximate_sliding_window", 25, "1m"),
        r#"{"algorithm":"token_bucket","requests":25,"per":"1h"}"#.to_string(),
        r#"{"algorithm":"leaky_bucket","requests":1,"per":"1h"}"#.to_string(),
    ];
    for l in limits {
        let expected = if l.contains("leaky") { 1 } else { 25 };
        let mut host = host_with(&rule(&l, ""), 4);
        let mut admitted = 0;
        // 200 requests interleaved over the 4 worker VMs (VM 0 is Envoy's base VM).
        for i in 0..200 {
            let s = host.send(1 + i % 4, get()).unwrap();
            if host.stream(s).unwrap().status() == Some(200) {
                admitted += 1;
            }
            if i % 7 == 0 {
                host.advance(MS).unwrap();
            }
        }
        assert_eq!(admitted, expected, "{l}");
        flush_stats(&mut host);
        assert_eq!(counter(&host, "r", "allowed"), expected as i64, "{l}");
        assert_eq!(counter(&host, "r", "limited"), 200 - expected as i64, "{l}");
    }
}

#[test]
fn ratelimit_headers_can_be_sent_on_every_response() {
    let mut host = host(&rule(
        &limit("fixed_window", 3, "1m"),
        r#""ratelimit_headers":"always""#,
    ));
    let s = send(&mut host, get());
    let view = host.stream(s).unwrap();
    assert_eq!(view.status(), Some(200));
    assert_eq!(view.response_header("ratelimit-limit"), Some("3"));
    assert_eq!(view.response_header("ratelimit-remaining"), Some("2"));
    assert_eq!(view.response_header("ratelimit-reset"), Some("60"));
}

#[test]
fn bad_configs_are_rejected_with_one_line_naming_the_field() {
    let cases = [
        (
            rule(&limit("fixed_window", 0, "1s"), ""),
            "rules[0].limits[0].requests: must be at least 1",
        ),
        (
            rule(&limit("fixed_window", 1, "0s"), ""),
            "rules[0].limits[0].per: must be longer than 0",
        ),
        (
            rule(&limit("fixed_window", 1, "1s"), r#""action":"delay""#),
            "rules[0].max_delay: is required with action `delay`",
        ),
        (
            rule(&limit("fixed_window", 1, "1s"), r#""actoin":"delay""#),
            "rules[0].actoin: unknown field `actoin`",
        ),
        (
            rule(
                &limit("fixed_window", 1, "1s"),
                r#""match":{"path":{"regex":"(["}}"#,
            ),
            "rules[0].match.path.regex: invalid regular expression",
        ),
        (
            r#"{"rules":3}"#.to_string(),
            "rules: invalid type: integer `3`, expected a sequence",
        ),
        (
            "not json".to_string(),
            "invalid configuration: expected ident at line 1 column 2",
        ),
        (String::new(), "the configuration is empty"),
    ];
    for (config, expected) in cases {
        let mut host = Host::builder(&module("meshguard_ratelimit"))
            .plugin_config(config.as_str())
            .build()
            .unwrap();
        assert!(!host.configure().unwrap(), "{config} must be rejected");
        let errors: Vec<_> = host
            .logs()
            .into_iter()
            .filter(|l| l.level >= LogLevel::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .message
                .starts_with("meshguard_ratelimit: invalid configuration: ")
                && errors[0].message.contains(expected),
            "{:?} does not contain {expected:?}",
            errors[0].message
        );
    }
}

/// The filter in Envoy 1.40 (V8), two workers: a limit of 2 per second rejects the third
/// request with the rate-limit headers, and the counters appear in `/stats`.
#[test]
fn envoy_loads_the_filter_and_rejects_the_third_request() -> anyhow::Result<()> {
    use meshguard_tests::{send, Envoy, EnvoyConfig, TestUpstream, WasmFilter};

    let config = r#"{"rules":[{"name":"per-second",
        "limits":[{"algorithm":"token_bucket","requests":2,"per":"1s"}]}]}"#;
    let upstream = TestUpstream::start()?;
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .concurrency(2)
            .wasm_filter(
                WasmFilter::new("ratelimit", wasm_artifact("meshguard_ratelimit")?)
                    .configuration(config),
            ),
    )?;
    // A token comes back every 500 ms; three requests take a few milliseconds.
    let request = meshguard_tests::Request::get("/");
    let responses = (0..3)
        .map(|_| send(envoy.listener_addr(), &request))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    let third = &responses[2];
    assert_eq!(third.header("ratelimit-limit"), Some("2"));
    assert_eq!(third.header("ratelimit-remaining"), Some("0"));
    assert_eq!(third.header("ratelimit-reset"), Some("1"));
    assert_eq!(third.header("retry-after"), Some("1"));
    // Each worker hands its batched counts to Envoy on its own one-second tick: wait for both
    // counters to arrive, then check they are exact (no late extra count either).
    for (counter, expected) in [("limited", 1), ("allowed", 2)] {
        let name = format!("wasmcustom.meshguard_ratelimit.per-second.{counter}");
        envoy.wait_for_stat(&name, |v| v >= expected, Duration::from_secs(10))?;
    }
    std::thread::sleep(Duration::from_millis(1_100));
    for (counter, expected) in [("limited", 1), ("allowed", 2)] {
        let name = format!("wasmcustom.meshguard_ratelimit.per-second.{counter}");
        assert_eq!(envoy.stat(&name), Some(expected), "{counter}");
    }
    Ok(())
}

/// The bench's rule (`examples/bench`): one token bucket, no match, no key.
fn bench_host(requests: u32) -> Host {
    let config = format!(
        r#"{{"rules":[{{"name":"bench","limits":[{{"algorithm":"token_bucket","requests":{requests},"per":"1s"}}]}}]}}"#
    );
    // Envoy's default log level: debug logging would add `proxy_log` calls.
    let mut host = Host::builder(&module("meshguard_ratelimit"))
        .plugin_config(config)
        .workers(1)
        .base_vm()
        .log_level(LogLevel::Info)
        .build()
        .unwrap();
    assert!(host.configure().unwrap());
    host
}

/// Host calls per request on the hot paths, pinned: each one is a round trip through Envoy's
/// V8 (a `malloc` is the host calling back into the VM to hand data over), so a change that
/// adds one must show up here and be justified (see the README's "Cost per request"). The
/// decision counters are not among them: they are summed in the VM and handed to the host on
/// the root's tick (one call per counter per second, whatever the request rate).
#[test]
fn host_calls_per_request_are_pinned_for_admitted_and_rejected_requests() {
    let per_request = |calls: &[(&str, u64)], n: u64| -> std::collections::BTreeMap<String, u64> {
        calls.iter().map(|(k, v)| (k.to_string(), v * n)).collect()
    };
    // Admitted: the clock, one read and one write of the bucket.
    let mut host = bench_host(1_000);
    host.send(1, get()).unwrap();
    let calls = crate::support::host_calls_during(&mut host, |h| {
        assert_eq!(statuses(h, 20, get), [200; 20]);
    });
    let admitted = [
        ("proxy_get_current_time_nanoseconds", 1),
        ("proxy_get_shared_data", 1),
        ("malloc", 1),
        ("proxy_set_shared_data", 1),
    ];
    assert_eq!(calls, per_request(&admitted, 20));
    // The next tick hands the 21 admissions over in one call.
    let calls = crate::support::host_calls_during(&mut host, flush_stats);
    assert_eq!(calls.get("proxy_increment_metric"), Some(&1), "{calls:?}");
    assert_eq!(counter(&host, "bench", "allowed"), 21);

    // Rejected: after the first rejection read the bucket, the VM answers repeats from the
    // states it read (a rejection frees nothing up): the clock and the reply.
    let mut host = bench_host(3);
    assert_eq!(statuses(&mut host, 4, get), [200, 200, 200, 429]);
    let calls = crate::support::host_calls_during(&mut host, |h| {
        for _ in 0..20 {
            let s = send(h, get());
            let view = h.stream(s).unwrap();
            assert_eq!(view.status(), Some(429));
            assert_eq!(view.response_header("ratelimit-remaining"), Some("0"));
            assert_eq!(view.response_header("retry-after"), Some("1"));
        }
    });
    let rejected = [
        ("proxy_get_current_time_nanoseconds", 1),
        ("proxy_send_local_response", 1),
    ];
    assert_eq!(calls, per_request(&rejected, 20));
    // A third of a second later one token is back: shared data decides again and admits.
    host.advance(Duration::from_millis(334)).unwrap();
    assert_eq!(statuses(&mut host, 2, get), [200, 429]);
    flush_stats(&mut host);
    assert_eq!(counter(&host, "bench", "limited"), 22);
    assert_eq!(counter(&host, "bench", "allowed"), 4);
}

#[test]
fn batched_counters_reach_the_host_on_the_tick_or_when_the_vm_shuts_down() {
    let mut host = host(&rule(&limit("token_bucket", 2, "1m"), ""));
    assert_eq!(statuses(&mut host, 3, get), [200, 200, 429]);
    assert_eq!(counter(&host, "r", "allowed"), 0, "still in the VM");
    host.advance(999 * MS).unwrap();
    assert_eq!(
        counter(&host, "r", "allowed"),
        0,
        "the first tick is 1 s away"
    );
    host.advance(MS).unwrap();
    assert_eq!(counter(&host, "r", "allowed"), 2);
    assert_eq!(counter(&host, "r", "limited"), 1);
    assert_eq!(statuses(&mut host, 1, get), [429]);
    assert!(host.shutdown_root(1).unwrap());
    assert_eq!(counter(&host, "r", "limited"), 2, "flushed by on_done");
}

/// What the remembered rejection must not change: another worker's spend is seen as soon as
/// the limit frees up, and the figures match what shared data says.
#[test]
fn a_worker_answering_rejections_from_memory_still_sees_other_workers() {
    let mut host = host_with(&rule(&limit("token_bucket", 2, "1s"), ""), 2);
    let status_on = |host: &mut Host, worker: usize| {
        let s = host.send(worker, get()).unwrap();
        host.stream(s).unwrap().status().unwrap_or(0)
    };
    assert_eq!(status_on(&mut host, 1), 200);
    assert_eq!(status_on(&mut host, 1), 200);
    assert_eq!(status_on(&mut host, 1), 429);
    assert_eq!(status_on(&mut host, 2), 429);
    // Half a second refills one token; worker 2 takes it first.
    host.advance(500 * MS).unwrap();
    assert_eq!(status_on(&mut host, 2), 200);
    assert_eq!(
        status_on(&mut host, 1),
        429,
        "worker 1 sees worker 2's spend"
    );
    assert_eq!(status_on(&mut host, 2), 429);
    host.advance(500 * MS).unwrap();
    assert_eq!(status_on(&mut host, 1), 200);
    flush_stats(&mut host);
    assert_eq!(counter(&host, "r", "allowed"), 4);
    assert_eq!(counter(&host, "r", "limited"), 4);
}
