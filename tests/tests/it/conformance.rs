//! Differential conformance: one probe module (`tests/fixtures/conformance`) runs the
//! same script in host-sim and in real Envoy 1.40, and the two reports must be equal
//! line by line. Where they differ Envoy is right and host-sim gets fixed.
//!
//! A [`Case`] is transport-neutral: ops for the stream (`x-ops`), ops for the root
//! (plugin configuration), one request, and how the upstream answers (the
//! `x-upstream-*` steering headers of [`TestUpstream`], which host-sim's upstream and
//! callouts mirror). A report has three parts: the stream's observation lines (read
//! back through `x-report`), one `client ...` line with what the downstream client got,
//! and, when the case has a configuration, every VM's root lines.
//!
//! Determinism rules for case authors: an `http_call` must pause the stream until the
//! callout answers (else the callout races the upstream); a stream must not dequeue what
//! it enqueued on a root queue (the owner VM's `on_queue_ready` races it); root-level
//! lines only record the first tick of each VM. The op language is documented in the
//! fixture (`tests/fixtures/conformance/src/ops.rs`) and summed up in each case.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use host_sim::{Host, Module};
use meshguard_tests::{send, wasm_artifact, Envoy, EnvoyConfig, Request, TestUpstream, WasmFilter};
use serde_json::{json, Value};

/// Name of the filter, its VM id and plugin name, in both hosts.
const PLUGIN: &str = "conformance";
/// The cluster `http_call` ops target; it points at the test upstream.
const CALLOUT_CLUSTER: &str = "callout";
/// The `:authority` of every case request (the client would otherwise send its address).
const AUTHORITY: &str = "conformance.test";
/// How long Envoy gets to finish a stream (on_log, on_done, on_delete) and to deliver
/// root callbacks (queue_ready, callout responses) before its report is taken as final.
const REPORT_WAIT: Duration = Duration::from_secs(3);
/// How long Envoy gets for every ticking VM's first tick.
const TICK_WAIT: Duration = Duration::from_secs(10);
/// Poll interval while waiting on Envoy.
const POLL: Duration = Duration::from_millis(20);
/// host-sim VM that plays Envoy's worker thread. Envoy 1.40 at `--concurrency 1` runs
/// three VMs: the base VM (host-sim VM 0, see `HostBuilder::base_vm`), the main-thread
/// clone (VM 1) and the worker clone (VM 2).
const WORKER: usize = 2;
/// Bound on callout rounds in host-sim (a script that calls out forever fails).
const MAX_CALLOUT_ROUNDS: usize = 100;

fn module() -> Module {
    crate::support::module("fixture_conformance")
}

/// One script run through both hosts.
#[derive(Clone, Debug)]
struct Case {
    /// Also the `x-run` id under which the stream's lines are stored.
    name: &'static str,
    /// Plugin configuration (root ops, `tick_ms`); `None`: `{}` and no root report.
    config: Option<Value>,
    /// Stream ops (`x-ops`).
    ops: Value,
    method: &'static str,
    path: &'static str,
    /// Extra request headers, including `x-upstream-*` steering.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Response headers of the client's response to include in the `client` line.
    client_headers: Vec<&'static str>,
    /// Wait for (Envoy) / advance to (host-sim) every VM's first tick before the request.
    first_tick: bool,
}

impl Case {
    fn new(name: &'static str) -> Case {
        Case {
            name,
            config: None,
            ops: json!([]),
            method: "GET",
            path: "/conformance",
            headers: Vec::new(),
            body: Vec::new(),
            client_headers: Vec::new(),
            first_tick: false,
        }
    }

    /// Appends stream ops (a JSON array); call it again to add more (large `json!`
    /// literals hit the macro recursion limit).
    fn ops(mut self, ops: Value) -> Case {
        if let (Some(all), Some(more)) = (self.ops.as_array_mut(), ops.as_array()) {
            all.extend(more.iter().cloned());
        }
        self
    }

    /// Sets the plugin configuration and adds the root report to the comparison.
    fn config(mut self, config: Value) -> Case {
        self.config = Some(config);
        self
    }

    fn request(mut self, method: &'static str, path: &'static str) -> Case {
        self.method = method;
        self.path = path;
        self
    }

    fn header(mut self, name: &str, value: &str) -> Case {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    fn body(mut self, body: &str) -> Case {
        self.body = body.as_bytes().to_vec();
        self
    }

    fn client_header(mut self, name: &'static str) -> Case {
        self.client_headers.push(name);
        self
    }

    fn first_tick(mut self) -> Case {
        self.first_tick = true;
        self
    }

    /// The request headers besides the pseudo-headers, in order: run id, ops, extras.
    fn request_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("x-run".to_string(), self.name.to_string()),
            ("x-ops".to_string(), self.ops.to_string()),
        ];
        h.extend(self.headers.iter().cloned());
        h
    }

    fn config_text(&self) -> String {
        self.config
            .as_ref()
            .map_or_else(|| "{}".to_string(), Value::to_string)
    }
}

/// What one host reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Report {
    stream: Vec<String>,
    client: String,
    /// Normalized (see [`normalize_root`]); empty when the case has no configuration.
    root: Vec<String>,
}

impl Report {
    fn lines(&self) -> Vec<String> {
        let mut all = self.stream.clone();
        all.push(self.client.clone());
        all.extend(self.root.iter().cloned());
        all
    }
}

/// What the downstream client got, as one comparable line.
fn client_line(status: u16, headers: &[(String, String)], body: &[u8], keep: &[&str]) -> String {
    let mut line = format!("client status={status}");
    for name in keep {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        line.push_str(&format!(" {name}={values:?}"));
    }
    line.push_str(&format!(" body={:?}", String::from_utf8_lossy(body)));
    line
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

/// How many VMs ran their first tick.
fn first_ticks(root: &[String]) -> usize {
    root.iter().filter(|l| l.ends_with(" tick #1")).count()
}

/// The root report with each VM's lines as one block, blocks sorted, and VMs renumbered
/// in that order: which clone claims which ordinal (and so which clone the last queue
/// registration makes the owner) races between Envoy's threads.
fn normalize_root(root: &[String]) -> Vec<String> {
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for line in root {
        let (vm, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match blocks.iter_mut().find(|(v, _)| v == vm) {
            Some((_, lines)) => lines.push(rest.to_string()),
            None => blocks.push((vm.to_string(), vec![rest.to_string()])),
        }
    }
    let mut blocks: Vec<Vec<String>> = blocks.into_iter().map(|(_, lines)| lines).collect();
    blocks.sort();
    blocks
        .iter()
        .enumerate()
        .flat_map(|(i, lines)| lines.iter().map(move |l| format!("vm{i} {l}")))
        .collect()
}

// ---- the upstream, as host-sim plays it ------------------------------------------------

/// What [`TestUpstream`] answers to a request with these headers (its steering protocol,
/// minus echo), and how long it waits first.
fn steered_response(headers: &[(String, String)]) -> (host_sim::Response, Duration) {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    let status = number("x-upstream-status").map_or(200, |s| s as u16);
    let delay = Duration::from_millis(number("x-upstream-delay-ms").unwrap_or(0));
    let body: Vec<u8> = match number("x-upstream-body-size") {
        Some(n) => vec![b'a'; n as usize],
        None => get("x-upstream-body").unwrap_or("ok").as_bytes().to_vec(),
    };
    // TestUpstream writes x-upstream first, then the handler's headers, then the length.
    let mut response = host_sim::Response::new(status)
        .header("x-upstream", "upstream")
        .header("content-type", "text/plain");
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("x-upstream-header") {
            if let Some((name, value)) = v.split_once('=') {
                response = response.header(name.trim(), value.trim());
            }
        }
    }
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    if !bodyless {
        response = response.header("content-length", &body.len().to_string());
        if !body.is_empty() {
            response = response.body(body);
        }
    }
    (response, delay)
}

// ---- host-sim ----------------------------------------------------------------------------

fn sim_host(case: &Case) -> Result<Host> {
    Host::builder(&module())
        .workers(2)
        .base_vm()
        .plugin_config(case.config_text())
        .vm_id(PLUGIN)
        .plugin_name(PLUGIN)
        .cluster("upstream")
        .cluster(CALLOUT_CLUSTER)
        .build()
        .map_err(|e| anyhow!("{e}"))
}

/// Answers every pending callout as the test upstream would, timing out the ones the
/// upstream answers too late, until none is left.
fn sim_answer_callouts(host: &mut Host) -> Result<()> {
    for _ in 0..MAX_CALLOUT_ROUNDS {
        let Some(callout) = host.http_callouts().into_iter().next() else {
            return Ok(());
        };
        let (response, delay) = steered_response(&callout.headers);
        let timeout = Duration::from_millis(u64::from(callout.timeout_ms));
        if callout.timeout_ms > 0 && delay >= timeout {
            host.advance(timeout)?;
        } else {
            host.respond_http_call(callout.id, response)?;
        }
    }
    bail!("more than {MAX_CALLOUT_ROUNDS} rounds of callouts")
}

fn sim_report(host: &mut Host, run: &str) -> Result<Vec<String>> {
    let request = host_sim::Request::get("/report").header("x-report", run);
    let s = host.send(WORKER, request)?;
    let view = host.stream(s)?;
    if view.status() != Some(200) {
        bail!(
            "host-sim report {run}: status {:?}: {}",
            view.status(),
            view.body_str()
        );
    }
    Ok(lines(&view.body_str()))
}

/// Runs the case in host-sim; returns the report and the host for further checks.
/// Callouts made while configuring are answered before the request, as Envoy's
/// upstream answers them long before the test's request arrives.
fn run_host_sim(case: &Case) -> Result<(Report, Host)> {
    let mut host = sim_host(case)?;
    if !host.configure()? {
        bail!("host-sim: on_configure returned false");
    }
    sim_answer_callouts(&mut host)?;
    if case.first_tick {
        let ms = case
            .config
            .as_ref()
            .and_then(|c| c["tick_ms"].as_u64())
            .context("first_tick needs tick_ms")?;
        host.advance(Duration::from_millis(ms))?;
    }
    host.set_upstream(|up| steered_response(&up.headers).0);
    // The headers in the order Envoy shows them: pseudo-headers, then the client's.
    let mut request = host_sim::Request::new(case.method, case.path);
    for (k, v) in request.headers.iter_mut() {
        if k == ":authority" {
            *v = AUTHORITY.to_string();
        }
    }
    for (k, v) in case.request_headers() {
        request = request.header(&k, &v);
    }
    // The test client sends a length for a body, and for every POST/PUT/PATCH.
    if !case.body.is_empty() || matches!(case.method, "POST" | "PUT" | "PATCH") {
        request = request.header("content-length", &case.body.len().to_string());
    }
    if !case.body.is_empty() {
        request = request.body(case.body.clone());
    }
    let s = host.send(WORKER, request)?;
    sim_answer_callouts(&mut host)?;
    let view = host.stream(s)?.clone();
    let headers = view.response_headers.clone().unwrap_or_default();
    let report = Report {
        stream: sim_report(&mut host, case.name)?,
        client: client_line(
            view.status().unwrap_or(0),
            &headers,
            &view.response_body,
            &case.client_headers,
        ),
        root: match case.config {
            Some(_) => normalize_root(&sim_report(&mut host, "root")?),
            None => Vec::new(),
        },
    };
    Ok((report, host))
}

// ---- Envoy -------------------------------------------------------------------------------

/// A running Envoy for one case, kept for checks beyond the report (stats, logs).
struct EnvoyRun {
    envoy: Envoy,
    _upstream: TestUpstream,
}

fn start_envoy(case: &Case) -> Result<EnvoyRun> {
    let upstream = TestUpstream::start()?;
    let wasm = wasm_artifact("fixture_conformance")?;
    let filter = WasmFilter::new(PLUGIN, wasm).configuration(case.config_text());
    let envoy = Envoy::start(
        EnvoyConfig::new("harness")
            .upstream(upstream.port())
            .cluster(CALLOUT_CLUSTER, upstream.port())
            .wasm_filter(filter),
    )?;
    Ok(EnvoyRun {
        envoy,
        _upstream: upstream,
    })
}

fn envoy_report_once(envoy: &Envoy, run: &str) -> Result<Vec<String>> {
    let request = Request::get("/report")
        .header("host", AUTHORITY)
        .header("x-report", run);
    let r = send(envoy.listener_addr(), &request)?;
    if r.status != 200 {
        bail!("Envoy report {run}: status {}: {}", r.status, r.body_str());
    }
    Ok(lines(&r.body_str()))
}

/// Polls a report until `done` holds or `wait` passes; returns the last one read. The
/// caller compares what it gets: the wait only gives Envoy's asynchronous callbacks
/// (on_delete after the response, on_queue_ready, ticks) time to happen.
fn envoy_report_until(
    envoy: &Envoy,
    run: &str,
    wait: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + wait;
    loop {
        let report = envoy_report_once(envoy, run);
        let finished = matches!(&report, Ok(r) if done(r));
        if finished || Instant::now() >= deadline {
            return report;
        }
        std::thread::sleep(POLL);
    }
}

/// Runs the case in Envoy, giving its asynchronous parts a bounded time to reach what
/// host-sim reported (`expected`).
fn run_envoy(case: &Case, expected: &Report) -> Result<(Report, EnvoyRun)> {
    let run = start_envoy(case)?;
    let envoy = &run.envoy;
    if case.first_tick {
        let ticks = first_ticks(&expected.root);
        envoy_report_until(envoy, "root", TICK_WAIT, |r| first_ticks(r) >= ticks)?;
    }
    let mut request = Request {
        method: case.method.to_string(),
        path: case.path.to_string(),
        headers: vec![("host".to_string(), AUTHORITY.to_string())],
        body: case.body.clone(),
    };
    request.headers.extend(case.request_headers());
    let response = send(envoy.listener_addr(), &request)?;
    let stream = envoy_report_until(envoy, case.name, REPORT_WAIT, |r| r == expected.stream)
        .map_err(|e| anyhow!("{e:#}\n--- Envoy wasm log ---\n{}", wasm_log(envoy)))?;
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let root = match case.config {
        Some(_) => normalize_root(&envoy_report_until(envoy, "root", REPORT_WAIT, |r| {
            normalize_root(r) == expected.root
        })?),
        None => Vec::new(),
    };
    let report = Report {
        stream,
        client: client_line(
            response.status,
            &headers,
            &response.body,
            &case.client_headers,
        ),
        root,
    };
    Ok((report, run))
}

/// Envoy's log lines about wasm (the guest's logs, traps, plugin errors).
fn wasm_log(envoy: &Envoy) -> String {
    envoy
        .log()
        .lines()
        .filter(|l| l.contains("wasm") || l.contains("critical") || l.contains("error"))
        .filter(|l| !l.contains("server.cc"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- comparison --------------------------------------------------------------------------

/// A line diff (longest common subsequence): `    ` same, `  - ` host-sim only, `  + `
/// Envoy only.
fn diff(sim: &[String], envoy: &[String]) -> String {
    let (n, m) = (sim.len(), envoy.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if sim[i] == envoy[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && sim[i] == envoy[j] {
            out.push_str(&format!("    {}\n", sim[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("  + {}\n", envoy[j]));
            j += 1;
        } else {
            out.push_str(&format!("  - {}\n", sim[i]));
            i += 1;
        }
    }
    out
}

/// Both hosts after a case ran, for checks beyond the report.
struct Checked {
    host: Host,
    envoy: EnvoyRun,
}

/// Runs a case through both hosts and asserts equal reports (set `CONFORMANCE_SHOW=1`
/// to print them side by side even when they agree).
fn check(case: &Case) -> Checked {
    let (sim, host) =
        run_host_sim(case).unwrap_or_else(|e| panic!("case {}: host-sim failed: {e:#}", case.name));
    let (envoy, run) =
        run_envoy(case, &sim).unwrap_or_else(|e| panic!("case {}: Envoy failed: {e:#}", case.name));
    let (sim, envoy) = (sim.lines(), envoy.lines());
    if std::env::var_os("CONFORMANCE_SHOW").is_some() {
        eprintln!(
            "=== {} (- host-sim only, + Envoy only)\n{}",
            case.name,
            diff(&sim, &envoy)
        );
    }
    assert!(
        sim == envoy,
        "case {}: host-sim and Envoy disagree (- host-sim only, + Envoy only):\n{}\n\
         --- Envoy wasm log ---\n{}",
        case.name,
        diff(&sim, &envoy),
        wasm_log(&run.envoy)
    );
    Checked { host, envoy: run }
}

/// An `http_call` op to the callout cluster with the pseudo-headers and extra headers.
fn callout(extra: &[(&str, &str)], timeout_ms: u64) -> Value {
    let mut headers = vec![
        json!([":method", "GET"]),
        json!([":path", "/callout"]),
        json!([":authority", "callout.test"]),
    ];
    headers.extend(extra.iter().map(|(k, v)| json!([k, v])));
    json!({"at": "request_headers", "op": "http_call", "cluster": CALLOUT_CLUSTER,
           "headers": headers, "timeout_ms": timeout_ms})
}

// ---- cases -------------------------------------------------------------------------------
//
// Each case is named after the host-call family it covers; `check` asserts the two
// reports are equal, so every expectation is Envoy's own behaviour.

#[test]
fn logging_time_and_wasi_match_envoy() {
    check(&Case::new("logging_time_and_wasi").ops(json!([
        {"at": "request_headers", "op": "log", "level": "info", "msg": "hello from the probe"},
        {"at": "request_headers", "op": "log", "level": "critical", "msg": "loud"},
        {"at": "request_headers", "op": "log", "level": 6, "msg": "no such level"},
        {"at": "request_headers", "op": "get_log_level"},
        {"at": "request_headers", "op": "get_current_time"},
        {"at": "request_headers", "op": "set_tick_period", "ms": 0},
        {"at": "request_headers", "op": "wasi_time"},
        {"at": "request_headers", "op": "wasi_random"},
        {"at": "request_headers", "op": "wasi_env", "name": "HOME"},
        {"at": "request_headers", "op": "wasi_args"},
        {"at": "request_headers", "op": "print", "msg": "to stdout"},
        {"at": "request_headers", "op": "print", "stream": "stderr", "msg": "to stderr"},
        {"at": "log", "op": "get_current_time"}
    ])));
}

#[test]
fn ticks_reach_every_ticking_vm() {
    let checked = check(
        &Case::new("ticks")
            .config(json!({"tick_ms": 100, "on_tick": [
                {"op": "get_current_time"},
                {"op": "get_property", "path": "plugin_name"},
                {"op": "get_header", "map": "request_headers", "key": ":path"}
            ]}))
            .first_tick(),
    );
    // The module counts every tick in a counter: both ticking VMs (not the base VM).
    assert_eq!(
        checked.host.metric("conformance_ticks").map(|m| m.value),
        Some(2)
    );
    let ticks =
        checked
            .envoy
            .envoy
            .wait_for_stat("wasmcustom.conformance_ticks", |v| v >= 2, TICK_WAIT);
    assert!(ticks.is_ok(), "{ticks:?}");
}

#[test]
fn buffers_match_envoy() {
    check(
        &Case::new("buffers")
            .request("POST", "/upload")
            .body("hello")
            .ops(json!([
                {"at": "request_headers", "op": "get_buffer", "buffer": "request_body"},
                {"at": "request_headers", "op": "set_buffer", "buffer": "request_body", "start": 0, "len": 0, "value": "x"},
                {"at": "request_headers", "op": "get_buffer", "buffer": "plugin_configuration"},
                {"at": "request_headers", "op": "set_buffer", "buffer": "plugin_configuration", "start": 0, "len": 0, "value": "x"},
                {"at": "request_headers", "op": "get_buffer", "buffer": "vm_configuration"},
                {"at": "request_headers", "op": "set_buffer", "buffer": "vm_configuration", "start": 0, "len": 0, "value": "x"},
                {"at": "request_headers", "op": "get_buffer", "buffer": "http_call_response_body"},
                {"at": "request_headers", "op": "set_buffer", "buffer": "http_call_response_body", "start": 0, "len": 0, "value": "x"},
                {"at": "request_headers", "op": "get_buffer", "buffer": "call_data"},
                {"at": "request_headers", "op": "set_buffer", "buffer": "call_data", "start": 0, "len": 0, "value": "x"},
                {"at": "request_headers", "op": "get_buffer", "buffer": "downstream_data"},
                {"at": "request_headers", "op": "get_buffer", "buffer": "grpc_receive_buffer"},
                {"at": "request_headers", "op": "get_buffer", "buffer": 42},
                {"at": "request_headers", "op": "set_buffer", "buffer": 42, "start": 0, "len": 0, "value": "x"}
            ]))
            .ops(json!([
                {"at": "request_body", "nth": 1, "op": "get_buffer", "buffer": "request_body"},
                {"at": "request_body", "nth": 1, "op": "set_buffer", "buffer": "request_body", "start": 0, "len": 0, "value": ">"},
                {"at": "request_body", "nth": 1, "op": "set_buffer", "buffer": "request_body", "start": 100, "len": 0, "value": "<"},
                {"at": "request_body", "nth": 1, "op": "get_buffer", "buffer": "request_body"},
                {"at": "request_body", "nth": 1, "op": "set_buffer", "buffer": "request_body", "start": 2, "len": 1, "value": "?"},
                {"at": "request_body", "nth": 1, "op": "set_buffer", "buffer": "request_body", "start": 0, "len": 3, "value": "X"},
                {"at": "request_body", "nth": 1, "op": "get_buffer", "buffer": "request_body"},
                {"at": "request_body", "nth": 1, "op": "set_buffer", "buffer": "request_body", "start": 0, "len": 99, "value": "replaced"},
                {"at": "request_body", "nth": 1, "op": "get_buffer", "buffer": "request_body", "start": 2, "max": 3},
                {"at": "request_body", "nth": 1, "op": "get_buffer", "buffer": "request_body", "start": 50, "max": 2},
                {"at": "request_body", "nth": 1, "op": "get_buffer", "buffer": "response_body"},
                {"at": "request_body", "nth": 1, "op": "set_buffer", "buffer": "response_body", "start": 0, "len": 0, "value": "r"},
                {"at": "request_body", "nth": 2, "op": "get_buffer", "buffer": "request_body"},
                {"at": "response_body", "nth": 1, "op": "get_buffer", "buffer": "response_body"},
                {"at": "response_body", "nth": 1, "op": "set_buffer", "buffer": "response_body", "start": 0, "len": 2, "value": "OK"},
                {"at": "response_body", "nth": 1, "op": "get_buffer", "buffer": "response_body"},
                {"at": "response_body", "nth": 2, "op": "get_buffer", "buffer": "response_body"},
                {"at": "log", "op": "get_buffer", "buffer": "request_body"}
            ])),
    );
}

#[test]
fn a_paused_body_is_buffered_until_end_of_stream() {
    check(
        &Case::new("paused_body")
            .request("POST", "/upload")
            .body("hello")
            .ops(json!([
                {"at": "request_body", "nth": 1, "op": "return", "action": "pause"},
                {"at": "request_body", "nth": 2, "op": "get_buffer", "buffer": "request_body"},
                {"at": "response_body", "nth": 1, "op": "return", "action": "pause"},
                {"at": "response_body", "nth": 2, "op": "get_buffer", "buffer": "response_body"}
            ])),
    );
}

#[test]
fn header_maps_match_envoy() {
    check(
        &Case::new("header_maps")
            .request("GET", "/headers?x=1")
            .header("x-dup", "1")
            .header("x-dup", "2")
            .client_header("x-added")
            .client_header("x-upstream")
            .ops(json!([
                {"at": "request_headers", "op": "get_headers", "map": "request_headers", "keys": [":authority", ":path", ":method", ":scheme", "x-dup"]},
                {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": "X-Dup"},
                {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": "missing"},
                {"at": "request_headers", "op": "add_header", "map": "request_headers", "key": "X-New", "value": "a"},
                {"at": "request_headers", "op": "add_header", "map": "request_headers", "key": "x-new", "value": "b"},
                {"at": "request_headers", "op": "get_headers", "map": "request_headers", "keys": ["x-new"]},
                {"at": "request_headers", "op": "replace_header", "map": "request_headers", "key": "x-new", "value": "c"},
                {"at": "request_headers", "op": "replace_header", "map": "request_headers", "key": "x-fresh", "value": "d"},
                {"at": "request_headers", "op": "get_headers", "map": "request_headers", "keys": ["x-new", "x-fresh"]},
                {"at": "request_headers", "op": "remove_header", "map": "request_headers", "key": "x-new"},
                {"at": "request_headers", "op": "remove_header", "map": "request_headers", "key": "x-never"},
                {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": "x-new"},
                {"at": "request_headers", "op": "add_header", "map": "request_headers", "key": "x-upstream-status", "value": "203"},
                {"at": "request_headers", "op": "get_headers", "map": "response_headers", "keys": [":status"]},
                {"at": "request_headers", "op": "get_header", "map": "response_headers", "key": ":status"},
                {"at": "request_headers", "op": "add_header", "map": "response_headers", "key": "x-early", "value": "1"},
                {"at": "request_headers", "op": "get_headers", "map": "request_trailers", "keys": ["a"]},
                {"at": "request_headers", "op": "get_header", "map": "request_trailers", "key": "a"},
                {"at": "request_headers", "op": "get_header", "map": "http_call_response_headers", "key": "a"},
                {"at": "request_headers", "op": "get_header", "map": 99, "key": "a"}
            ]))
            .ops(json!([
                {"at": "response_headers", "op": "get_headers", "map": "response_headers", "keys": [":status", "x-upstream", "content-type", "content-length"]},
                {"at": "response_headers", "op": "add_header", "map": "response_headers", "key": "x-added", "value": "yes"},
                {"at": "response_headers", "op": "get_header", "map": "request_headers", "key": ":path"},
                {"at": "response_headers", "op": "add_header", "map": "request_headers", "key": "x-late", "value": "1"},
                {"at": "response_body", "nth": 1, "op": "get_header", "map": "response_headers", "key": ":status"},
                {"at": "log", "op": "get_headers", "map": "request_headers", "keys": [":path", "x-fresh", "x-upstream-status"]},
                {"at": "log", "op": "get_headers", "map": "response_headers", "keys": [":status", "x-added"]},
                {"at": "log", "op": "get_header", "map": "request_trailers", "key": "a"},
                {"at": "log", "op": "get_header", "map": "response_trailers", "key": "a"},
                {"at": "done", "op": "get_header", "map": "request_headers", "key": ":path"}
            ])),
    );
}

#[test]
fn request_headers_in_the_response_path_match_envoy() {
    // What a filter reading the request headers while the response passes gets, for an
    // upstream answer and for its own local reply (the fallback filter needs the request
    // headers there to call a fallback service).
    check(
        &Case::new("request_headers_in_response_path").ops(json!([
            {"at": "response_headers", "op": "get_headers", "map": "request_headers", "keys": [":path", ":method", "x-run"]},
            {"at": "response_body", "nth": 1, "op": "get_headers", "map": "request_headers", "keys": [":path"]}
        ])),
    );
    check(
        &Case::new("request_headers_after_local_reply").ops(json!([
            {"at": "request_headers", "op": "send_local_response", "status": 403, "body": "no"},
            {"at": "response_headers", "op": "get_headers", "map": "request_headers", "keys": [":path", ":method", "x-run"]},
            {"at": "response_headers", "op": "get_header", "map": "request_headers", "key": ":path"}
        ])),
    );
}

#[test]
fn setting_all_request_headers_needs_x_forwarded_proto() {
    // Envoy adds x-forwarded-proto before the filters run; a filter that replaces the
    // request headers without it leaves the router without a route: 404.
    check(
                &Case::new("set_header_pairs_no_proto").ops(json!([
                {"at": "request_headers", "op": "set_headers", "map": "request_headers", "pairs": [
                    [":authority", "conformance.test"], [":path", "/rewritten"], [":method", "GET"],
                    [":scheme", "http"]]},
                {"at": "response_headers", "op": "get_headers", "map": "response_headers", "keys": [":status", "content-length"]},
                {"at": "log", "op": "get_property", "path": "response.code_details"}
            ])),
    );
}

#[test]
fn setting_all_headers_replaces_the_maps() {
    check(
        &Case::new("set_header_pairs")
            .client_header("x-set")
            .client_header("x-upstream")
            .ops(json!([
                {"at": "request_headers", "op": "set_headers", "map": "request_headers", "pairs": [
                    [":authority", "conformance.test"], [":path", "/rewritten"], [":method", "GET"],
                    [":scheme", "http"], ["x-forwarded-proto", "http"], ["x-upstream-status", "201"]]},
                {"at": "request_headers", "op": "get_headers", "map": "request_headers", "keys": [":path", "x-run", "x-forwarded-proto", "x-upstream-status"]},
                {"at": "response_headers", "op": "set_headers", "map": "response_headers", "pairs": [[":status", "202"], ["x-set", "1"]]},
                {"at": "response_headers", "op": "get_headers", "map": "response_headers", "keys": [":status", "x-set", "x-upstream"]}
            ])),
    );
}

#[test]
fn properties_match_envoy() {
    check(
        &Case::new("properties")
            .request("POST", "/props?q=1")
            .config(json!({"on_configure": [
                {"op": "get_property", "path": "plugin_name"},
                {"op": "get_property", "path": "request.path"},
                {"op": "set_property", "path": "p", "value": "v"}
            ]}))
            .ops(json!([
                {"at": "request_headers", "op": "get_property", "path": "request.path"},
                {"at": "request_headers", "op": "get_property", "path": "request.url_path"},
                {"at": "request_headers", "op": "get_property", "path": "request.method"},
                {"at": "request_headers", "op": "get_property", "path": "request.host"},
                {"at": "request_headers", "op": "get_property", "path": "request.scheme"},
                {"at": "request_headers", "op": "get_property", "path": "request.protocol"},
                {"at": "request_headers", "op": "get_property", "path": "source.port", "as": "len"},
                {"at": "request_headers", "op": "get_property", "path": "plugin_name"},
                {"at": "request_headers", "op": "get_property", "path": "plugin_root_id"},
                {"at": "request_headers", "op": "get_property", "path": "plugin_vm_id"},
                {"at": "request_headers", "op": "get_property", "path": "no.such.thing"},
                {"at": "request_headers", "op": "get_property", "path": "request.no_such_field"},
                {"at": "request_headers", "op": "set_property", "path": "my.prop", "value": "v1"},
                {"at": "request_headers", "op": "get_property", "path": "my.prop"},
                {"at": "request_headers", "op": "set_property", "path": "single", "value": "v2"},
                {"at": "request_headers", "op": "get_property", "path": "single"},
                {"at": "request_headers", "op": "set_property", "path": "rawp", "raw": true, "value": "v3"},
                {"at": "request_headers", "op": "get_property", "path": "rawp", "raw": true},
                {"at": "request_headers", "op": "get_property", "path": "rawp"},
                {"at": "response_headers", "op": "get_property", "path": "response.code", "as": "int"},
                {"at": "response_headers", "op": "get_property", "path": "response.code_details"},
                {"at": "log", "op": "get_property", "path": "response.code", "as": "int"},
                {"at": "log", "op": "get_property", "path": "response.code_details"},
                {"at": "log", "op": "get_property", "path": "request.path"},
                {"at": "log", "op": "get_property", "path": "rawp"}
            ])),
    );
}

#[test]
fn shared_data_matches_envoy() {
    check(&Case::new("shared_data").ops(json!([
        {"at": "request_headers", "op": "get_shared", "key": "k"},
        {"at": "request_headers", "op": "set_shared", "key": "k", "value": "v1", "cas": 12345},
        {"at": "request_headers", "op": "get_shared", "key": "k"},
        {"at": "request_headers", "op": "set_shared", "key": "k", "value": "v2", "cas": "c1"},
        {"at": "request_headers", "op": "set_shared", "key": "k", "value": "stale", "cas": "c1"},
        {"at": "request_headers", "op": "get_shared", "key": "k"},
        {"at": "request_headers", "op": "set_shared", "key": "k", "value": "v3"},
        {"at": "request_headers", "op": "get_shared", "key": "k"},
        {"at": "request_headers", "op": "set_shared", "key": "empty", "value": ""},
        {"at": "request_headers", "op": "get_shared", "key": "empty"},
        {"at": "log", "op": "get_shared", "key": "k"}
    ])));
}

#[test]
fn shared_queues_match_envoy() {
    check(
        &Case::new("shared_queues")
            .config(json!({
                "on_configure": [{"op": "register_queue", "name": "jobs"}],
                "on_queue_ready": [
                    {"op": "dequeue", "queue": "q1"},
                    {"op": "dequeue", "queue": "q1"}
                ]
            }))
            .ops(json!([
                {"at": "request_headers", "op": "resolve_queue", "vm_id": "conformance", "name": "jobs"},
                {"at": "request_headers", "op": "resolve_queue", "vm_id": "", "name": "jobs"},
                {"at": "request_headers", "op": "resolve_queue", "vm_id": "other", "name": "jobs"},
                {"at": "request_headers", "op": "resolve_queue", "vm_id": "conformance", "name": "nope"},
                {"at": "request_headers", "op": "enqueue", "queue": "q1", "value": "job-1"},
                {"at": "request_headers", "op": "enqueue", "queue": 999999, "value": "x"},
                {"at": "request_headers", "op": "dequeue", "queue": 999999},
                {"at": "request_headers", "op": "register_queue", "name": "local"},
                {"at": "request_headers", "op": "dequeue", "queue": "q2"}
            ])),
    );
}

#[test]
fn local_reply_matches_envoy() {
    check(
        &Case::new("local_reply")
            .client_header("x-local")
            .client_header("content-type")
            .ops(json!([
                {"at": "request_headers", "op": "send_local_response", "status": 403, "body": "denied",
                 "headers": [["x-local", "1"]], "details": "denied_by_probe"},
                {"at": "request_headers", "op": "get_header", "map": "response_headers", "key": ":status"},
                {"at": "request_headers", "op": "send_local_response", "status": 404, "body": "second"},
                {"at": "response_headers", "op": "get_headers", "map": "response_headers",
                 "keys": [":status", "x-local", "content-type", "content-length"]},
                {"at": "response_body", "op": "get_buffer", "buffer": "response_body"},
                {"at": "log", "op": "get_property", "path": "response.code_details"},
                {"at": "log", "op": "get_property", "path": "response.code", "as": "int"}
            ])),
    );
}

#[test]
fn local_reply_details_with_white_space_become_underscores() {
    check(&Case::new("local_reply_details").ops(json!([
        {"at": "request_headers", "op": "send_local_response", "status": 429, "details": "too many requests"},
        {"at": "response_headers", "op": "get_property", "path": "response.code_details"},
        {"at": "log", "op": "get_property", "path": "response.code_details"}
    ])));
}

#[test]
fn a_paused_request_resumes_from_an_http_call_response() {
    check(
        &Case::new("pause_resume")
            .ops(json!([
                callout(&[("x-upstream-status", "201"), ("x-upstream-body", "called")], 2000),
                {"at": "request_headers", "op": "return", "action": "pause"}
            ]))
            .ops(json!([
                {"at": "http_call_response", "op": "get_headers", "map": "http_call_response_headers",
                 "keys": [":status", "x-upstream", "content-length"]},
                {"at": "http_call_response", "op": "get_buffer", "buffer": "http_call_response_body"},
                {"at": "http_call_response", "op": "get_headers", "map": "http_call_response_trailers", "keys": ["a"]},
                {"at": "http_call_response", "op": "get_header", "map": "request_headers", "key": ":path"},
                {"at": "http_call_response", "op": "add_header", "map": "request_headers", "key": "x-upstream-status", "value": "202"},
                {"at": "http_call_response", "op": "continue_stream", "stream": "request"},
                {"at": "response_headers", "op": "get_header", "map": "response_headers", "key": ":status"},
                {"at": "log", "op": "get_buffer", "buffer": "http_call_response_body"}
            ])),
    );
}

#[test]
fn http_call_errors_match_envoy() {
    let missing = |drop: &str| {
        let headers: Vec<Value> = [(":method", "GET"), (":path", "/x"), (":authority", "x")]
            .iter()
            .filter(|(k, _)| *k != drop)
            .map(|(k, v)| json!([k, v]))
            .collect();
        json!({"at": "request_headers", "op": "http_call", "cluster": CALLOUT_CLUSTER, "headers": headers})
    };
    check(&Case::new("http_call_errors").ops(json!([
        {"at": "request_headers", "op": "http_call", "cluster": "no_such_cluster",
         "headers": [[":method", "GET"], [":path", "/x"], [":authority", "x"]]},
        missing(":authority"),
        missing(":path"),
        missing(":method")
    ])));
}

#[test]
fn an_http_call_past_its_timeout_gets_a_504() {
    check(&Case::new("http_call_timeout").ops(json!([
        callout(&[("x-upstream-delay-ms", "1500")], 200),
        {"at": "request_headers", "op": "return", "action": "pause"},
        {"at": "http_call_response", "op": "get_headers", "map": "http_call_response_headers",
         "keys": [":status", "content-type", "content-length"]},
        {"at": "http_call_response", "op": "get_buffer", "buffer": "http_call_response_body"},
        {"at": "http_call_response", "op": "continue_stream", "stream": "request"}
    ])));
}

#[test]
fn metrics_match_envoy() {
    let checked = check(
        &Case::new("metrics")
            .ops(json!([
                {"at": "request_headers", "op": "define_metric", "kind": "counter", "name": "probe_total"},
                {"at": "request_headers", "op": "define_metric", "kind": "counter", "name": "probe_total"},
                {"at": "request_headers", "op": "define_metric", "kind": "gauge", "name": "probe_gauge"},
                {"at": "request_headers", "op": "define_metric", "kind": "histogram", "name": "probe_hist"},
                {"at": "request_headers", "op": "define_metric", "kind": 7, "name": "bad_kind"},
                {"at": "request_headers", "op": "increment_metric", "metric": "m1", "offset": 2},
                {"at": "request_headers", "op": "increment_metric", "metric": "m2", "offset": 3},
                {"at": "request_headers", "op": "increment_metric", "metric": "m1", "offset": -1},
                {"at": "request_headers", "op": "increment_metric", "metric": "m1", "offset": 0},
                {"at": "request_headers", "op": "get_metric", "metric": "m1"},
                {"at": "request_headers", "op": "record_metric", "metric": "m1", "value": 7},
                {"at": "request_headers", "op": "get_metric", "metric": "m2"},
                {"at": "request_headers", "op": "increment_metric", "metric": "m3", "offset": 10},
                {"at": "request_headers", "op": "increment_metric", "metric": "m3", "offset": -4},
                {"at": "request_headers", "op": "get_metric", "metric": "m3"},
                {"at": "request_headers", "op": "record_metric", "metric": "m3", "value": 42},
                {"at": "request_headers", "op": "get_metric", "metric": "m3"},
                {"at": "request_headers", "op": "record_metric", "metric": "m4", "value": 9},
                {"at": "request_headers", "op": "get_metric", "metric": "m4"},
                {"at": "request_headers", "op": "increment_metric", "metric": "m4", "offset": 1}
            ]))
            .ops(json!([
                {"at": "request_headers", "op": "get_metric", "metric": 999996},
                {"at": "request_headers", "op": "get_metric", "metric": 999997},
                {"at": "request_headers", "op": "get_metric", "metric": 999998},
                {"at": "request_headers", "op": "get_metric", "metric": 999999},
                {"at": "request_headers", "op": "record_metric", "metric": 999996, "value": 1},
                {"at": "request_headers", "op": "record_metric", "metric": 999998, "value": 1},
                {"at": "request_headers", "op": "record_metric", "metric": 999999, "value": 1},
                {"at": "request_headers", "op": "increment_metric", "metric": 999996, "offset": 1},
                {"at": "request_headers", "op": "increment_metric", "metric": 999997, "offset": 1},
                {"at": "request_headers", "op": "increment_metric", "metric": 999998, "offset": 1},
                {"at": "request_headers", "op": "increment_metric", "metric": 999999, "offset": 1},
                {"at": "log", "op": "get_metric", "metric": "m1"}
            ])),
    );
    // The same values outside the module: host-sim's API and Envoy's /stats.
    let sim = |name: &str| checked.host.metric(name).map(|m| m.value);
    assert_eq!(
        (sim("probe_total"), sim("probe_gauge")),
        (Some(12), Some(42))
    );
    let stats = checked.envoy.envoy.stats().unwrap();
    assert_eq!(stats.get("wasmcustom.probe_total"), Some(&12), "{stats:?}");
    assert_eq!(stats.get("wasmcustom.probe_gauge"), Some(&42));
}

#[test]
fn grpc_errors_match_envoy() {
    check(&Case::new("grpc_errors").ops(json!([
        {"at": "request_headers", "op": "grpc_call", "cluster": "no_such_cluster", "service": "s", "method": "m"},
        {"at": "request_headers", "op": "grpc_stream", "cluster": "no_such_cluster", "service": "s", "method": "m"},
        {"at": "request_headers", "op": "grpc_send", "token": 999996, "message": "x"},
        {"at": "request_headers", "op": "grpc_send", "token": 999997, "message": "x"},
        {"at": "request_headers", "op": "grpc_send", "token": 999998, "message": "x"},
        {"at": "request_headers", "op": "grpc_send", "token": 999999, "message": "x"},
        {"at": "request_headers", "op": "grpc_cancel", "token": 999996},
        {"at": "request_headers", "op": "grpc_cancel", "token": 999997},
        {"at": "request_headers", "op": "grpc_cancel", "token": 999998},
        {"at": "request_headers", "op": "grpc_cancel", "token": 999999},
        {"at": "request_headers", "op": "grpc_close", "token": 999996},
        {"at": "request_headers", "op": "grpc_close", "token": 999997},
        {"at": "request_headers", "op": "grpc_close", "token": 999998},
        {"at": "request_headers", "op": "grpc_close", "token": 999999},
        {"at": "request_headers", "op": "get_status"}
    ])));
}

#[test]
fn stream_control_matches_envoy() {
    check(&Case::new("stream_control").ops(json!([
        {"at": "request_headers", "op": "continue_stream", "stream": "downstream"},
        {"at": "request_headers", "op": "continue_stream", "stream": "upstream"},
        {"at": "request_headers", "op": "continue_stream", "stream": 9},
        {"at": "request_headers", "op": "close_stream", "stream": "downstream"},
        {"at": "request_headers", "op": "close_stream", "stream": "upstream"},
        {"at": "request_headers", "op": "close_stream", "stream": 9}
    ])));
}

#[test]
fn root_context_calls_match_envoy() {
    check(&Case::new("root_context").config(json!({"on_configure": [
        {"op": "get_buffer", "buffer": "plugin_configuration", "max": 12},
        {"op": "set_buffer", "buffer": "plugin_configuration", "start": 0, "len": 0, "value": "x"},
        {"op": "get_buffer", "buffer": "vm_configuration"},
        {"op": "get_property", "path": "plugin_vm_id"},
        {"op": "get_header", "map": "request_headers", "key": ":path"},
        {"op": "get_headers", "map": "request_headers", "keys": [":path"]},
        {"op": "send_local_response", "status": 200},
        {"op": "continue_stream", "stream": "request"},
        {"op": "close_stream", "stream": "request"},
        {"op": "close_stream", "stream": "upstream"},
        {"op": "continue_stream", "stream": "upstream"},
        {"op": "set_effective_context", "context": "self"},
        {"op": "set_effective_context", "context": 999999},
        {"op": "done"},
        {"op": "define_metric", "kind": "counter", "name": "root_total"},
        {"op": "get_shared", "key": "never_set"}
    ]})));
}

#[test]
fn root_callouts_reach_every_vm_but_the_base_vm() {
    // Envoy configures three VMs at --concurrency 1; the base VM's callout is never
    // answered, the main-thread and worker clones get theirs.
    check(&Case::new("root_callouts").config(json!({
        "on_configure": [{"op": "http_call", "cluster": CALLOUT_CLUSTER, "timeout_ms": 2000,
            "headers": [[":method", "GET"], [":path", "/root"], [":authority", "callout.test"],
                        ["x-upstream-body", "for the root"]]}],
        "on_http_call_response": [
            {"op": "get_headers", "map": "http_call_response_headers", "keys": [":status", "x-upstream"]},
            {"op": "get_buffer", "buffer": "http_call_response_body"},
            {"op": "get_header", "map": "request_headers", "key": ":path"}
        ]
    })));
}

#[test]
fn foreign_functions_and_effective_context_match_envoy() {
    check(&Case::new("foreign_and_context").ops(json!([
        {"at": "request_headers", "op": "call_foreign_function", "name": "no_such_function", "args": "x"},
        {"at": "request_headers", "op": "call_foreign_function", "name": "clear_route_cache"},
        {"at": "request_headers", "op": "set_effective_context", "context": 999999},
        {"at": "request_headers", "op": "set_effective_context", "context": "root"},
        {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": ":path"},
        {"at": "request_headers", "op": "set_effective_context", "context": "self"},
        {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": ":path"},
        {"at": "request_headers", "op": "done"}
    ])));
}

#[test]
fn callbacks_run_in_envoys_order() {
    // The unprompted callback lines are the subject: request headers and body (HTTP/1
    // delivers the body, then an empty end-of-stream frame), response, then log, done
    // and delete.
    check(
        &Case::new("callback_order")
            .request("PUT", "/order")
            .body("0123456789")
            .header("x-upstream-body", "response-body"),
    );
}

#[test]
fn bad_ops_are_reported_instead_of_trapping() {
    let mut case = Case::new("bad_ops");
    case.ops = json!([{"at": "request_headers", "op": "frobnicate"}]);
    check(&case);
    let mut case = Case::new("bad_ops_callback");
    case.ops = json!([{"at": "on_request", "op": "log", "level": "info", "msg": "x"}]);
    check(&case);
    let mut case = Case::new("bad_ops_not_an_array");
    case.ops = json!({"op": "done"});
    check(&case);
    check(&Case::new("bad_config").config(json!({"on_nothing": []})));
}

#[test]
fn a_rejecting_configure_stops_both_hosts() {
    let case = Case::new("reject").config(json!({"reject": true}));
    let mut host = sim_host(&case).unwrap();
    assert!(!host.configure().unwrap());
    let Err(err) = start_envoy(&case) else {
        panic!("Envoy started with a plugin whose on_configure returned false");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("Unable to create Wasm plugin"),
        "{message}"
    );
}

// ---- import coverage ---------------------------------------------------------------------

/// The proxy-wasm SDK version the workspace pins (`proxy-wasm = "=0.2.5"`).
const SDK_DIR: &str = "proxy-wasm-0.2.5";

/// The SDK's `hostcalls.rs` in cargo's registry (it is there: the fixtures depend on it).
fn sdk_hostcalls_source() -> Result<String> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let registry = cargo_home.join("registry/src");
    for index in
        std::fs::read_dir(&registry).with_context(|| format!("read {}", registry.display()))?
    {
        let file = index?.path().join(SDK_DIR).join("src/hostcalls.rs");
        if file.is_file() {
            return std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()));
        }
    }
    bail!(
        "{SDK_DIR} is not in {}: run a cargo build first",
        registry.display()
    )
}

/// Every `proxy_*` function the SDK declares (its `extern "C"` blocks name each import).
fn sdk_host_calls() -> Vec<String> {
    let source = sdk_hostcalls_source().unwrap();
    let mut names: Vec<String> = source
        .split("fn proxy_")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest[name.len()..]
                .starts_with('(')
                .then(|| format!("proxy_{name}"))
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_fixture_imports_only_what_host_sim_provides() {
    let provided = host_sim::provided_imports();
    for fixture in ["fixture_conformance", "fixture_minimal"] {
        let path = wasm_artifact(fixture).unwrap();
        let module = Module::from_file(&path).unwrap();
        let missing: Vec<_> = module
            .imports()
            .into_iter()
            .filter(|i| !provided.contains(i))
            .collect();
        assert!(
            missing.is_empty(),
            "{fixture} imports what host-sim lacks: {missing:?}"
        );
    }
}

#[test]
fn the_conformance_module_imports_every_sdk_host_call() {
    let sdk = sdk_host_calls();
    // A sanity floor: proxy-wasm 0.2.5 declares 37 host calls.
    assert!(sdk.len() >= 37, "parsed only {sdk:?} from the SDK");
    let imports = module().imports();
    let env: Vec<&str> = imports
        .iter()
        .filter(|(m, _)| m == "env")
        .map(|(_, n)| n.as_str())
        .collect();
    let missing: Vec<&String> = sdk.iter().filter(|n| !env.contains(&n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "the conformance module does not import {missing:?}"
    );
    // And WASI through std: output, clocks, randomness, environment, arguments.
    for wasi in [
        "fd_write",
        "clock_time_get",
        "random_get",
        "environ_get",
        "args_get",
    ] {
        let import = ("wasi_snapshot_preview1".to_string(), wasi.to_string());
        assert!(imports.contains(&import), "no WASI {wasi} import");
    }
}

// ---- open discrepancies ------------------------------------------------------------------
//
// Envoy 1.40 misbehaves on these scripts; host-sim does not imitate a crash or a corrupted
// response. Kept (ignored) so the discrepancy stays visible and re-checkable with
// `cargo test -p meshguard-tests --test it conformance -- --ignored`.

#[test]
#[ignore = "open discrepancy: Envoy 1.40 sends body \"HT\" instead of the upstream's \"ok\"; host-sim ignores the call"]
fn continuing_an_unpaused_response_corrupts_envoys_response() {
    check(&Case::new("continue_unpaused_response").ops(json!([
        {"at": "response_headers", "op": "continue_stream", "stream": "response"}
    ])));
}

#[test]
#[ignore = "open discrepancy: Envoy 1.40 segfaults; host-sim ignores the call"]
fn continuing_the_response_from_an_http_call_response_crashes_envoy() {
    check(&Case::new("continue_response_from_callout").ops(json!([
        callout(&[], 2000),
        {"at": "request_headers", "op": "return", "action": "pause"},
        {"at": "http_call_response", "op": "continue_stream", "stream": "request"},
        {"at": "http_call_response", "op": "continue_stream", "stream": "response"}
    ])));
}
