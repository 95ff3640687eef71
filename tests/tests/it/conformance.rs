//! Differential conformance: one probe module (`tests/fixtures/conformance`) runs the
//! same script in host-sim and in real Envoy 1.40, and the two reports must be equal
//! line by line. Where they differ Envoy is right and host-sim gets fixed.
//!
//! A [`Case`] is transport-neutral: ops for the stream (`x-ops`), ops for the root
//! (plugin configuration), one request, and how the upstream answers (the
//! `x-upstream-*` steering headers of [`TestUpstream`], which host-sim's upstream and
//! callouts mirror). The report of each host is: the stream's observation lines (read
//! back through `x-report`), one `client ...` line with what the downstream client got,
//! and, when the case asks, every VM's root lines.
//!
//! Determinism rules for case authors: ops that race with the network (an `http_call`
//! while the stream keeps going) must pause the stream until the callout answers;
//! root-level observations only record the first tick of each VM.

use std::collections::BTreeSet;
use std::sync::OnceLock;
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
/// How long Envoy gets to finish a stream (on_log/on_done/on_delete) after the response.
const REPORT_WAIT: Duration = Duration::from_secs(3);
/// How long Envoy gets for every VM's first tick.
const TICK_WAIT: Duration = Duration::from_secs(10);
/// Poll interval while waiting on Envoy.
const POLL: Duration = Duration::from_millis(20);
/// host-sim VM that plays Envoy's worker thread (VM 0 plays the main thread).
const WORKER: usize = 1;

fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| {
        let path = wasm_artifact("fixture_conformance").expect("fixture built by `make wasm`");
        Module::from_file(path).expect("fixture_conformance loads")
    })
}

/// One script run through both hosts.
#[derive(Clone, Debug)]
struct Case {
    /// Also the `x-run` id under which the stream's lines are stored.
    name: &'static str,
    /// Plugin configuration (root ops, `tick_ms`).
    config: Value,
    /// Stream ops (`x-ops`).
    ops: Value,
    method: &'static str,
    path: &'static str,
    /// Extra request headers, including `x-upstream-*` steering.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Response headers of the client's response to include in the `client` line.
    client_headers: Vec<&'static str>,
    /// Append every VM's root lines (`x-report: root`) to the report.
    root_report: bool,
    /// Wait for (Envoy) / advance to (host-sim) every VM's first tick before the request.
    first_tick: bool,
}

impl Case {
    fn new(name: &'static str) -> Case {
        Case {
            name,
            config: json!({}),
            ops: json!([]),
            method: "GET",
            path: "/conformance",
            headers: Vec::new(),
            body: Vec::new(),
            client_headers: Vec::new(),
            root_report: false,
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

    fn config(mut self, config: Value) -> Case {
        self.config = config;
        self.root_report = true;
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
        self.config.to_string()
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

/// Bound on callout rounds in host-sim (a script that calls out forever fails).
const MAX_CALLOUT_ROUNDS: usize = 100;

fn sim_host(case: &Case) -> Result<Host> {
    Host::builder(module())
        .workers(2)
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
        if callout.timeout_ms > 0 && delay >= Duration::from_millis(u64::from(callout.timeout_ms)) {
            host.advance(Duration::from_millis(u64::from(callout.timeout_ms)))?;
        } else {
            host.respond_http_call(callout.id, response)?;
        }
    }
    bail!("more than {MAX_CALLOUT_ROUNDS} rounds of callouts")
}

fn sim_report(host: &mut Host, run: &str) -> Result<Vec<String>> {
    let s = host.send(
        WORKER,
        host_sim::Request::get("/report").header("x-report", run),
    )?;
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

fn run_host_sim(case: &Case) -> Result<Vec<String>> {
    let mut host = sim_host(case)?;
    if !host.configure()? {
        bail!("host-sim: on_configure returned false");
    }
    if case.first_tick {
        let ms = case.config["tick_ms"]
            .as_u64()
            .context("first_tick needs tick_ms")?;
        host.advance(Duration::from_millis(ms))?;
    }
    host.set_upstream(|up| steered_response(&up.headers).0);
    let mut request =
        host_sim::Request::new(case.method, case.path).set_header(":authority", AUTHORITY);
    for (k, v) in case.request_headers() {
        request = request.header(&k, &v);
    }
    if !case.body.is_empty() {
        request = request.body(case.body.clone());
    }
    let s = host.send(WORKER, request)?;
    sim_answer_callouts(&mut host)?;
    let view = host.stream(s)?.clone();
    let mut report = sim_report(&mut host, case.name)?;
    let headers = view.response_headers.clone().unwrap_or_default();
    report.push(client_line(
        view.status().unwrap_or(0),
        &headers,
        &view.response_body,
        &case.client_headers,
    ));
    if case.root_report {
        report.extend(sim_report(&mut host, "root")?);
    }
    Ok(report)
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
    let r = send(
        envoy.listener_addr(),
        &Request::get("/report")
            .header("host", AUTHORITY)
            .header("x-report", run),
    )?;
    if r.status != 200 {
        bail!("Envoy report {run}: status {}: {}", r.status, r.body_str());
    }
    Ok(lines(&r.body_str()))
}

/// Polls a report until `done` holds or `wait` passes; returns the last one read.
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

/// How many VMs have written root lines (`vm<n> vm_start`).
fn vm_count(root: &[String]) -> usize {
    root.iter()
        .filter(|l| l.ends_with(" vm_start size=0"))
        .count()
}

fn run_envoy(case: &Case) -> Result<(Vec<String>, EnvoyRun)> {
    let run = start_envoy(case)?;
    let envoy = &run.envoy;
    if case.first_tick {
        envoy_report_until(envoy, "root", TICK_WAIT, |r| {
            let ticked = r.iter().filter(|l| l.contains(" tick #1")).count();
            ticked > 0 && ticked == vm_count(r)
        })?;
    }
    let mut request = Request {
        method: case.method.to_string(),
        path: case.path.to_string(),
        headers: vec![("host".to_string(), AUTHORITY.to_string())],
        body: case.body.clone(),
    };
    request.headers.extend(case.request_headers());
    let response = send(envoy.listener_addr(), &request)?;
    // The stream ends (on_log, on_done, on_delete) just after the response went out.
    let mut report = envoy_report_until(envoy, case.name, REPORT_WAIT, |r| {
        r.last().is_some_and(|l| l == "delete")
    })
    .map_err(|e| anyhow!("{e:#}\n--- Envoy log ---\n{}", wasm_log(envoy)))?;
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    report.push(client_line(
        response.status,
        &headers,
        &response.body,
        &case.client_headers,
    ));
    if case.root_report {
        report.extend(envoy_report_once(envoy, "root")?);
    }
    Ok((report, run))
}

/// Envoy's log lines about wasm (the guest's logs, traps, plugin errors).
fn wasm_log(envoy: &Envoy) -> String {
    envoy
        .log()
        .lines()
        .filter(|l| l.contains("wasm") || l.contains("critical") || l.contains("error"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- comparison --------------------------------------------------------------------------

/// A line diff (longest common subsequence): `  ` same, `- ` host-sim only, `+ ` Envoy only.
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

/// Runs a case through both hosts and asserts equal reports; returns the Envoy run for
/// further checks.
fn check(case: &Case) -> EnvoyRun {
    let sim =
        run_host_sim(case).unwrap_or_else(|e| panic!("case {}: host-sim failed: {e:#}", case.name));
    let (envoy, run) =
        run_envoy(case).unwrap_or_else(|e| panic!("case {}: Envoy failed: {e:#}", case.name));
    if std::env::var_os("CONFORMANCE_SHOW").is_some() {
        eprintln!(
            "=== {} (host-sim | Envoy)\n{}",
            case.name,
            diff(&sim, &envoy)
        );
    }
    if sim != envoy {
        panic!(
            "case {}: host-sim and Envoy disagree (- host-sim only, + Envoy only):\n{}\n\
             --- Envoy wasm log ---\n{}",
            case.name,
            diff(&sim, &envoy),
            wasm_log(&run.envoy)
        );
    }
    run
}

// ---- cases -------------------------------------------------------------------------------

#[test]
fn explore() {
    let case = Case::new("explore")
        .request("POST", "/explore?q=1")
        .body("hello")
        .ops(json!([
            {"at": "request_headers", "op": "log", "level": "info", "msg": "hi"},
            {"at": "request_headers", "op": "log", "level": 9, "msg": "bad level"},
            {"at": "request_headers", "op": "get_property", "path": "request.method"},
            {"at": "request_headers", "op": "get_property", "path": "plugin_name"},
            {"at": "request_headers", "op": "get_property", "path": "plugin_root_id"},
            {"at": "request_headers", "op": "get_property", "path": "plugin_vm_id"},
            {"at": "request_headers", "op": "get_property", "path": "no.such.thing"},
            {"at": "request_headers", "op": "get_property", "path": "request.url_path"},
            {"at": "request_headers", "op": "get_property", "path": "request.host"},
            {"at": "request_headers", "op": "get_property", "path": "request.scheme"},
            {"at": "request_headers", "op": "get_property", "path": "request.protocol"},
            {"at": "request_headers", "op": "get_property", "path": "source.port", "as": "int"},
            {"at": "request_headers", "op": "set_property", "path": "my.prop", "value": "v1"},
            {"at": "request_headers", "op": "get_property", "path": "my.prop"},
            {"at": "request_headers", "op": "set_property", "path": ["wasm", "x"], "value": "v2"},
            {"at": "request_headers", "op": "get_property", "path": ["wasm", "x"]},
            {"at": "request_headers", "op": "get_buffer", "buffer": "plugin_configuration"},
            {"at": "request_headers", "op": "get_buffer", "buffer": "vm_configuration"},
            {"at": "request_headers", "op": "get_buffer", "buffer": "request_body"},
            {"at": "request_headers", "op": "get_buffer", "buffer": "http_call_response_body"},
        ]))
        .ops(json!([
            {"at": "request_headers", "op": "get_buffer", "buffer": "call_data"},
            {"at": "request_headers", "op": "get_buffer", "buffer": 42},
            {"at": "request_headers", "op": "set_buffer", "buffer": "request_body", "start": 0, "len": 0, "value": "x"},
            {"at": "request_headers", "op": "get_headers", "map": "request_trailers", "keys": ["a"]},
            {"at": "request_headers", "op": "get_header", "map": "request_trailers", "key": "a"},
            {"at": "request_headers", "op": "get_header", "map": "http_call_response_headers", "key": "a"},
            {"at": "request_headers", "op": "get_header", "map": 99, "key": "a"},
            {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": "X-Run"},
            {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": "missing"},
            {"at": "request_headers", "op": "add_header", "map": "request_headers", "key": "x-dup", "value": "1"},
            {"at": "request_headers", "op": "add_header", "map": "request_headers", "key": "X-Dup", "value": "2"},
            {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": "x-dup"},
            {"at": "request_headers", "op": "get_headers", "map": "request_headers", "keys": ["x-dup", ":path", ":method", ":authority", ":scheme"]},
            {"at": "request_headers", "op": "replace_header", "map": "request_headers", "key": "x-dup", "value": "3"},
            {"at": "request_headers", "op": "get_headers", "map": "request_headers", "keys": ["x-dup"]},
            {"at": "request_headers", "op": "remove_header", "map": "request_headers", "key": "x-dup"},
            {"at": "request_headers", "op": "remove_header", "map": "request_headers", "key": "x-never"},
            {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": "x-dup"},
            {"at": "request_headers", "op": "get_shared", "key": "k"},
            {"at": "request_headers", "op": "set_shared", "key": "k", "value": "v1", "cas": 12345},
        ]))
        .ops(json!([
            {"at": "request_headers", "op": "get_shared", "key": "k"},
            {"at": "request_headers", "op": "set_shared", "key": "k", "value": "v2", "cas": "c1"},
            {"at": "request_headers", "op": "set_shared", "key": "k", "value": "v3", "cas": "c1"},
            {"at": "request_headers", "op": "get_shared", "key": "k"},
            {"at": "request_headers", "op": "set_shared", "key": "empty", "value": ""},
            {"at": "request_headers", "op": "get_shared", "key": "empty"},
            {"at": "request_headers", "op": "register_queue", "name": "qa"},
            {"at": "request_headers", "op": "resolve_queue", "vm_id": "conformance", "name": "qa"},
            {"at": "request_headers", "op": "resolve_queue", "vm_id": "", "name": "qa"},
            {"at": "request_headers", "op": "resolve_queue", "vm_id": "other", "name": "qa"},
            {"at": "request_headers", "op": "resolve_queue", "vm_id": "conformance", "name": "nope"},
            {"at": "request_headers", "op": "dequeue", "queue": "q1"},
            {"at": "request_headers", "op": "dequeue", "queue": 999999},
            {"at": "request_headers", "op": "enqueue", "queue": 999999, "value": "x"},
            {"at": "request_headers", "op": "define_metric", "kind": "counter", "name": "c_total"},
            {"at": "request_headers", "op": "define_metric", "kind": "counter", "name": "c_total"},
            {"at": "request_headers", "op": "define_metric", "kind": "gauge", "name": "g"},
            {"at": "request_headers", "op": "define_metric", "kind": "histogram", "name": "h"},
            {"at": "request_headers", "op": "define_metric", "kind": 7, "name": "bad"},
            {"at": "request_headers", "op": "increment_metric", "metric": "m1", "offset": 2},
        ]))
        .ops(json!([
            {"at": "request_headers", "op": "increment_metric", "metric": "m2", "offset": 3},
            {"at": "request_headers", "op": "increment_metric", "metric": "m1", "offset": -1},
            {"at": "request_headers", "op": "increment_metric", "metric": "m1", "offset": 0},
            {"at": "request_headers", "op": "get_metric", "metric": "m1"},
            {"at": "request_headers", "op": "get_metric", "metric": "m2"},
            {"at": "request_headers", "op": "increment_metric", "metric": "m3", "offset": -5},
            {"at": "request_headers", "op": "get_metric", "metric": "m3"},
            {"at": "request_headers", "op": "record_metric", "metric": "m3", "value": 7},
            {"at": "request_headers", "op": "record_metric", "metric": "m1", "value": 7},
            {"at": "request_headers", "op": "get_metric", "metric": "m1"},
            {"at": "request_headers", "op": "record_metric", "metric": "m4", "value": 9},
            {"at": "request_headers", "op": "get_metric", "metric": "m4"},
            {"at": "request_headers", "op": "increment_metric", "metric": "m4", "offset": 1},
            {"at": "request_headers", "op": "get_metric", "metric": 999999},
            {"at": "request_headers", "op": "call_foreign_function", "name": "no_such_fn", "args": ""},
            {"at": "request_headers", "op": "set_effective_context", "context": 999999},
            {"at": "request_headers", "op": "set_effective_context", "context": "root"},
            {"at": "request_headers", "op": "get_header", "map": "request_headers", "key": ":path"},
            {"at": "request_headers", "op": "set_effective_context", "context": "self"},
            {"at": "request_headers", "op": "done"},
        ]))
        .ops(json!([
            {"at": "request_headers", "op": "get_status"},
            {"at": "request_headers", "op": "grpc_call", "cluster": "nope", "service": "s", "method": "m"},
            {"at": "request_headers", "op": "grpc_stream", "cluster": "nope", "service": "s", "method": "m"},
            {"at": "request_headers", "op": "grpc_send", "token": 999999, "message": "x"},
            {"at": "request_headers", "op": "grpc_send", "token": 999998, "message": "x"},
            {"at": "request_headers", "op": "grpc_cancel", "token": 999999},
            {"at": "request_headers", "op": "grpc_close", "token": 999999},
            {"at": "request_headers", "op": "continue_stream", "stream": "downstream"},
            {"at": "request_headers", "op": "continue_stream", "stream": 9},
            {"at": "request_headers", "op": "close_stream", "stream": 9},
            {"at": "request_headers", "op": "wasi_time"},
            {"at": "request_headers", "op": "wasi_random"},
            {"at": "request_headers", "op": "wasi_env", "name": "HOME"},
            {"at": "request_headers", "op": "wasi_args"},
            {"at": "request_headers", "op": "print", "msg": "to stdout"},
            {"at": "request_headers", "op": "set_tick_period", "ms": 0},
            {"at": "request_body", "op": "set_buffer", "buffer": "request_body", "start": 0, "len": 0, "value": ">"},
            {"at": "request_body", "op": "get_buffer", "buffer": "request_body"},
            {"at": "request_body", "op": "set_buffer", "buffer": "request_body", "start": 100, "len": 0, "value": "<"},
            {"at": "request_body", "op": "get_buffer", "buffer": "request_body"},
        ]))
        .ops(json!([
            {"at": "request_body", "op": "set_buffer", "buffer": "request_body", "start": 2, "len": 1, "value": "?"},
            {"at": "request_body", "op": "set_buffer", "buffer": "request_body", "start": 0, "len": 3, "value": "X"},
            {"at": "request_body", "op": "get_buffer", "buffer": "request_body"},
            {"at": "request_body", "op": "get_buffer", "buffer": "request_body", "start": 2, "max": 2},
            {"at": "request_body", "op": "get_buffer", "buffer": "request_body", "start": 50, "max": 2},
            {"at": "request_body", "op": "get_buffer", "buffer": "response_body"},
            {"at": "request_body", "op": "set_buffer", "buffer": "response_body", "start": 0, "len": 0, "value": "r"},
            {"at": "request_body", "op": "set_buffer", "buffer": "plugin_configuration", "start": 0, "len": 0, "value": "r"},
            {"at": "response_headers", "op": "get_headers", "map": "response_headers", "keys": [":status", "x-upstream", "content-type", "content-length"]},
            {"at": "response_headers", "op": "get_header", "map": "request_trailers", "key": "a"},
            {"at": "response_body", "op": "get_buffer", "buffer": "response_body"},
            {"at": "response_body", "op": "get_buffer", "buffer": "request_body"},
            {"at": "log", "op": "get_property", "path": "response.code", "as": "int"},
            {"at": "log", "op": "get_headers", "map": "response_headers", "keys": [":status", "x-upstream"]},
            {"at": "log", "op": "get_header", "map": "request_trailers", "key": "a"},
            {"at": "log", "op": "get_header", "map": "response_trailers", "key": "a"},
            {"at": "log", "op": "get_property", "path": "my.prop"},
            {"at": "log", "op": "get_buffer", "buffer": "request_body"},
            {"at": "log", "op": "get_shared", "key": "k"},
        ]));
    check(&case);
}

#[test]
fn explore2() {
    let case = Case::new("explore2")
        .config(json!({
            "on_configure": [
                {"op": "get_buffer", "buffer": "plugin_configuration", "max": 12},
                {"op": "get_buffer", "buffer": "vm_configuration"},
                {"op": "set_buffer", "buffer": "plugin_configuration", "start": 0, "len": 0, "value": "x"},
                {"op": "set_property", "path": "p", "value": "v"},
                {"op": "get_property", "path": "plugin_name"},
                {"op": "get_property", "path": "request.path"},
                {"op": "register_queue", "name": "rootq"},
                {"op": "get_header", "map": "request_headers", "key": ":path"},
                {"op": "send_local_response", "status": 200},
                {"op": "continue_stream", "stream": "request"},
                {"op": "done"},
                {"op": "http_call", "cluster": "callout", "headers": [[":method", "GET"], [":path", "/root"], [":authority", "x"]], "timeout_ms": 1000}
            ],
            "on_http_call_response": [
                {"op": "get_header", "map": "http_call_response_headers", "key": ":status"},
                {"op": "get_buffer", "buffer": "http_call_response_body"}
            ],
            "on_queue_ready": [
                {"op": "dequeue", "queue": "q1"},
                {"op": "dequeue", "queue": "q1"}
            ]
        }))
        .ops(json!([
            {"at": "request_headers", "op": "set_property", "raw": true, "path": "rawp", "value": "v"},
            {"at": "request_headers", "op": "set_buffer", "buffer": "vm_configuration", "start": 0, "len": 0, "value": "x"},
            {"at": "request_headers", "op": "set_buffer", "buffer": "call_data", "start": 0, "len": 0, "value": "x"},
            {"at": "request_headers", "op": "set_buffer", "buffer": "http_call_response_body", "start": 0, "len": 0, "value": "x"},
            {"at": "request_headers", "op": "set_buffer", "buffer": "downstream_data", "start": 0, "len": 0, "value": "x"},
            {"at": "request_headers", "op": "get_buffer", "buffer": "downstream_data"},
            {"at": "request_headers", "op": "get_buffer", "buffer": "grpc_receive_buffer"},
            {"at": "request_headers", "op": "set_buffer", "buffer": "grpc_receive_buffer", "start": 0, "len": 0, "value": "x"},
            {"at": "request_headers", "op": "get_metric", "metric": 999996},
            {"at": "request_headers", "op": "get_metric", "metric": 999997},
            {"at": "request_headers", "op": "get_metric", "metric": 999998},
            {"at": "request_headers", "op": "record_metric", "metric": 999996, "value": 1},
            {"at": "request_headers", "op": "record_metric", "metric": 999998, "value": 1},
            {"at": "request_headers", "op": "record_metric", "metric": 999999, "value": 1},
            {"at": "request_headers", "op": "increment_metric", "metric": 999996, "offset": 1},
            {"at": "request_headers", "op": "increment_metric", "metric": 999997, "offset": 1},
            {"at": "request_headers", "op": "increment_metric", "metric": 999999, "offset": 1},
            {"at": "request_headers", "op": "grpc_send", "token": 999996, "message": "x"},
            {"at": "request_headers", "op": "grpc_send", "token": 999997, "message": "x"},
            {"at": "request_headers", "op": "grpc_cancel", "token": 999996},
            {"at": "request_headers", "op": "grpc_cancel", "token": 999997},
            {"at": "request_headers", "op": "grpc_cancel", "token": 999998},
            {"at": "request_headers", "op": "grpc_close", "token": 999997},
            {"at": "request_headers", "op": "grpc_close", "token": 999998},
            {"at": "request_headers", "op": "grpc_call", "cluster": "callout", "service": "s", "method": "m", "timeout_ms": 100},
            {"at": "request_headers", "op": "call_foreign_function", "name": "clear_route_cache"},
            {"at": "request_headers", "op": "continue_stream", "stream": "upstream"},
            {"at": "request_headers", "op": "resolve_queue", "vm_id": "conformance", "name": "rootq"},
            {"at": "request_headers", "op": "enqueue", "queue": "q1", "value": "item1"},
            {"at": "request_headers", "op": "http_call", "cluster": "nope", "headers": [[":method", "GET"], [":path", "/x"], [":authority", "x"]]},
            {"at": "request_headers", "op": "http_call", "cluster": "callout", "headers": [[":method", "GET"], [":path", "/x"]]},
            {"at": "request_headers", "op": "http_call", "cluster": "callout", "headers": [[":method", "GET"], [":path", "/x"], [":authority", "x"], ["x-upstream-status", "201"], ["x-upstream-body", "called"]], "timeout_ms": 2000},
            {"at": "request_headers", "op": "return", "action": "pause"},
            {"at": "http_call_response", "op": "get_headers", "map": "http_call_response_headers", "keys": [":status", "x-upstream", "content-length"]},
            {"at": "http_call_response", "op": "get_buffer", "buffer": "http_call_response_body"},
            {"at": "http_call_response", "op": "get_headers", "map": "http_call_response_trailers", "keys": ["a"]},
            {"at": "http_call_response", "op": "get_header", "map": "request_headers", "key": ":path"},
            {"at": "http_call_response", "op": "add_header", "map": "request_headers", "key": "x-upstream-status", "value": "202"},
            {"at": "http_call_response", "op": "get_property", "path": "rawp", "raw": true},
            {"at": "http_call_response", "op": "continue_stream", "stream": "request"},
            {"at": "response_headers", "op": "get_header", "map": "response_headers", "key": ":status"},
            {"at": "log", "op": "get_property", "path": "response.code_details"}
        ]));
    check(&case);
}

#[test]
fn explore3() {
    let case = Case::new("explore3")
        .client_header("x-local")
        .client_header("content-type")
        .ops(json!([
            {"at": "request_headers", "op": "send_local_response", "status": 403, "body": "denied", "headers": [["x-local", "1"]], "details": "my details here"},
            {"at": "request_headers", "op": "get_header", "map": "response_headers", "key": ":status"},
            {"at": "request_headers", "op": "send_local_response", "status": 404, "body": "second"},
            {"at": "response_headers", "op": "get_headers", "map": "response_headers", "keys": [":status", "x-local", "content-type", "content-length"]},
            {"at": "response_body", "op": "get_buffer", "buffer": "response_body"},
            {"at": "log", "op": "get_property", "path": "response.code_details"},
            {"at": "log", "op": "get_property", "path": "response.code", "as": "int"}
        ]));
    check(&case);
}

#[test]
fn explore4() {
    let case = Case::new("explore4")
        .header("x-upstream-delay-ms", "0")
        .ops(json!([
            {"at": "request_headers", "op": "http_call", "cluster": "callout", "headers": [[":method", "GET"], [":path", "/slow"], [":authority", "x"], ["x-upstream-delay-ms", "1500"]], "timeout_ms": 200},
            {"at": "request_headers", "op": "return", "action": "pause"},
            {"at": "http_call_response", "op": "get_headers", "map": "http_call_response_headers", "keys": [":status", "content-type", "content-length"]},
            {"at": "http_call_response", "op": "get_buffer", "buffer": "http_call_response_body"},
            {"at": "http_call_response", "op": "continue_stream", "stream": "request"}
        ]));
    check(&case);
}

#[test]
fn explore5() {
    let case = Case::new("explore5")
        .config(json!({"tick_ms": 100, "on_tick": [
            {"op": "get_current_time"},
            {"op": "set_tick_period", "ms": 0},
            {"op": "get_shared", "key": "vm:count"}
        ]}))
        .first_tick()
        .ops(json!([
            {"at": "request_headers", "op": "close_stream", "stream": "downstream"}
        ]));
    check(&case);
}

#[allow(dead_code)]
fn unused() -> BTreeSet<()> {
    BTreeSet::new()
}
