//! The proxy-wasm shell: the root context compiles the configuration once, creates the shared
//! breaker states and the stats, and flushes the per-request counters on its tick; each HTTP
//! context asks its breaker before forwarding, records the response's outcome, and serves the
//! fallback when the breaker rejects.

use std::rc::Rc;

use log::{debug, error, info, log_enabled, Level};
use meshguard_core::{
    BreakerPhase, Outcome, OutcomeKind, Permit, ResponseFacts, Transition, UpstreamFailure,
};
use meshguard_filter_common::{
    init_logging, parse_config, send_local_reply, sync_log_level, BatchedCounter, CasStore,
    Counter, Gauge, HeaderMap, SharedData, WallClock,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::cache::{self, Entry};
use crate::config::{CacheFallback, Config, Fallback, ServiceFallback};
use crate::engine::{upstream_failure, Compiled, Engine};
use crate::matching::RequestHeaders;

/// Prefix of every stat: Envoy shows `wasmcustom.meshguard_fallback.<breaker>.<name>`.
const STATS_PREFIX: &str = "meshguard_fallback";
/// Response header naming the breaker and its state on a fallback (`state_header: true`).
const STATE_HEADER: &str = "x-meshguard-breaker";
/// Response header of a fail-fast answer saying why.
const REASON_HEADER: &str = "x-meshguard-fallback-reason";
/// Response header naming the fallback kind that answered.
const KIND_HEADER: &str = "x-meshguard-fallback";
/// Request headers not passed on to a fallback service (framing, hop-by-hop, Envoy's own).
const NOT_FORWARDED: [&str; 6] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "te",
];
/// Request header Envoy's router reads as the upstream timeout.
const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

// The stream callbacks this module implements; `make wasm` removes the exports of the others
// (filters/common/src/callbacks.rs). The response path records outcomes and fills the cache (body, trailers); `log` records a
// stream that ended without response headers; `done` flushes the root's batched counters.
meshguard_filter_common::stream_callbacks!(
    request_headers,
    response_headers,
    response_body,
    response_trailers,
    log,
    done
);

/// Registers the root context; called from `proxy_wasm::main!`.
pub(crate) fn start() {
    init_logging();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { state: None }) });
}

/// One breaker's stats (absent if the host refused to define one). The counters bumped on
/// every request of a closed or an open breaker are batched in the VM and flushed on the root's
/// tick (they lag by at most [`BatchedCounter::FLUSH_PERIOD`]); the others go out at once.
#[derive(Debug)]
struct Stats {
    calls: BatchedCounter,
    failures: Option<Counter>,
    slow_calls: Option<Counter>,
    rejected: BatchedCounter,
    shadow_rejected: BatchedCounter,
    fallback_static: BatchedCounter,
    fallback_fail_fast: BatchedCounter,
    fallback_cache: Option<Counter>,
    fallback_service: Option<Counter>,
    cache_misses: Option<Counter>,
    cache_stores: Option<Counter>,
    service_failures: Option<Counter>,
    transitions: Option<Counter>,
    contention: Option<Counter>,
    /// 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled (the last transition seen).
    state: Option<Gauge>,
}

impl Stats {
    fn define(breaker: &str) -> Self {
        let counter = |name: &str| Counter::define(&format!("{STATS_PREFIX}.{breaker}.{name}"));
        let batched = |name: &str| BatchedCounter::new(counter(name));
        Self {
            calls: batched("calls"),
            failures: counter("failures"),
            slow_calls: counter("slow_calls"),
            rejected: batched("rejected"),
            shadow_rejected: batched("shadow_rejected"),
            fallback_static: batched("fallback_static"),
            fallback_fail_fast: batched("fallback_fail_fast"),
            fallback_cache: counter("fallback_cache"),
            fallback_service: counter("fallback_service"),
            cache_misses: counter("cache_misses"),
            cache_stores: counter("cache_stores"),
            service_failures: counter("service_failures"),
            transitions: counter("transitions"),
            contention: counter("contention"),
            state: Gauge::define(&format!("{STATS_PREFIX}.{breaker}.state")),
        }
    }

    /// Hands the batched counts to the host (one host call per counter with counts).
    fn flush(&self) {
        self.calls.flush();
        self.rejected.flush();
        self.shadow_rejected.flush();
        self.fallback_static.flush();
        self.fallback_fail_fast.flush();
    }

    fn set_state(&self, phase: BreakerPhase) {
        if let Some(gauge) = self.state {
            gauge.set(gauge_value(phase));
        }
    }
}

const fn gauge_value(phase: BreakerPhase) -> u64 {
    match phase {
        BreakerPhase::Closed => 0,
        BreakerPhase::Open => 1,
        BreakerPhase::HalfOpen => 2,
        BreakerPhase::ForcedOpen => 3,
        BreakerPhase::Disabled => 4,
    }
}

fn bump(counter: Option<Counter>) {
    if let Some(counter) = counter {
        counter.increment();
    }
}

/// Whether a call through `b` may skip reading the clock when it starts and when it succeeds:
/// the breaker never looks at a success's time or duration (`Breaker::success_is_timeless`),
/// and the debug log, which prints the duration, is off.
fn clock_free(b: &Compiled) -> bool {
    b.breaker.success_is_timeless() && !log_enabled!(Level::Debug)
}

fn phase_name(phase: BreakerPhase) -> String {
    phase.as_str().to_ascii_lowercase()
}

/// What the root context shares with its HTTP contexts.
#[derive(Debug)]
struct State {
    engine: Engine,
    stats: Vec<Stats>,
    clock: WallClock,
}

impl State {
    /// Counts and logs a transition; only the call whose CAS committed it gets one, so each
    /// transition is reported once across all workers.
    fn transition(&self, index: usize, key: &str, transition: Option<Transition>) {
        let (Some(t), Some(stats), Some(b)) = (
            transition,
            self.stats.get(index),
            self.engine.breakers.get(index),
        ) else {
            return;
        };
        bump(stats.transitions);
        stats.set_state(t.to);
        info!(
            "meshguard_fallback breaker={} key={key} transition={}->{} reason={:?}",
            b.name,
            t.from.as_str(),
            t.to.as_str(),
            t.reason
        );
    }
}

struct Root {
    state: Option<Rc<State>>,
}

impl Root {
    fn flush_stats(&self) {
        if let Some(state) = &self.state {
            for stats in &state.stats {
                stats.flush();
            }
        }
    }
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        // The VM is going away: the batched counts must not go with it.
        self.flush_stats();
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        sync_log_level();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let engine = match parse_config::<Config>(&bytes).and_then(|c| Engine::compile(&c)) {
            Ok(engine) => engine,
            Err(e) => {
                error!("meshguard_fallback: invalid configuration: {e}");
                return false;
            }
        };
        engine.create_keys(&SharedData);
        let stats: Vec<Stats> = engine
            .breakers
            .iter()
            .map(|b| {
                let stats = Stats::define(&b.name);
                let key = crate::engine::state_key(&b.name, "route");
                stats.set_state(b.phase(&SharedData, &key));
                stats
            })
            .collect();
        debug!(
            "meshguard_fallback: configured with {} breakers",
            engine.breakers.len()
        );
        self.state = Some(Rc::new(State {
            engine,
            stats,
            clock: WallClock::new(),
        }));
        // A tick only to flush the batched counters.
        self.set_tick_period(BatchedCounter::FLUSH_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        self.flush_stats();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            state: self.state.clone(),
            index: None,
            active: None,
            cache_key: None,
            fill: None,
            pending: None,
            request_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The current stream's request headers, read through the host.
struct HostRequest;

impl RequestHeaders for HostRequest {
    fn header(&self, name: &str) -> Option<String> {
        // Never the SDK's `String` reader: it traps on a value that is not UTF-8.
        meshguard_filter_common::request_header(name)
    }

    fn cluster(&self) -> Option<String> {
        hostcalls::get_property(vec!["xds", "cluster_name"])
            .ok()
            .flatten()
            .and_then(|c| String::from_utf8(c).ok())
    }
}

/// A call the breaker let through, whose outcome must be recorded once.
#[derive(Debug)]
struct Active {
    key: String,
    /// When the call started; `None` when nothing needs its duration (see `clock_free`).
    start_ns: Option<u64>,
    probe: bool,
    recorded: bool,
}

/// A response being buffered for the cache.
#[derive(Debug)]
struct Fill {
    status: u16,
    headers: Vec<(String, String)>,
}

/// A fallback service call in flight: what to try next if it fails.
#[derive(Debug, Clone, Copy)]
struct Pending {
    token: u32,
    next: usize,
    phase: BreakerPhase,
    reason: &'static str,
}

struct Stream {
    state: Option<Rc<State>>,
    /// The breaker that owns this request.
    index: Option<usize>,
    active: Option<Active>,
    /// The request's cache key when its breaker has a cache fallback.
    cache_key: Option<String>,
    fill: Option<Fill>,
    pending: Option<Pending>,
    /// The request headers, kept when a service fallback may need them: Envoy does not show
    /// request headers in the response path (verified on 1.40: an empty map).
    request_headers: Vec<(String, String)>,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let Some(p) = self.pending.take().filter(|p| p.token == token) else {
            return;
        };
        let Some((b, stats)) = self.breaker(&state) else {
            return;
        };
        // Lossy, never the SDK's `String` reader: it traps on a value that is not UTF-8, and
        // the fallback service may pass on whatever its own upstream sent.
        let headers = HeaderMap::http_call_response_headers().to_vec();
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse::<u16>().ok());
        let facts = ResponseFacts {
            status,
            ..ResponseFacts::default()
        };
        match status {
            // A reset arrives without headers, a timeout as Envoy's local 504: a 5xx never
            // answers for the fallback, whatever `failure.statuses` says.
            Some(status) if status < 500 && b.classify(&facts) == OutcomeKind::Success => {
                let body = self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default();
                bump(stats.fallback_service);
                debug!(
                    "meshguard_fallback breaker={} fallback=service status={status}",
                    b.name
                );
                let headers = cache::stored_headers(headers);
                Self::reply(b, p.phase, "service", status, &headers, &body);
            }
            _ => {
                bump(stats.service_failures);
                debug!(
                    "meshguard_fallback breaker={} fallback=service failed status={status:?}",
                    b.name
                );
                self.run_fallback(&state, p.next, p.phase, p.reason);
            }
        }
    }
}

impl Stream {
    fn breaker<'a>(&self, state: &'a State) -> Option<(&'a Compiled, &'a Stats)> {
        let index = self.index?;
        Some((state.engine.breakers.get(index)?, state.stats.get(index)?))
    }

    /// Sends a fallback answer with the state and kind headers.
    fn reply(
        b: &Compiled,
        phase: BreakerPhase,
        kind: &str,
        status: u16,
        extra: &[(String, String)],
        body: &[u8],
    ) {
        let state_value = format!("{}={}", b.name, phase_name(phase));
        let mut headers: Vec<(&str, &str)> = vec![(KIND_HEADER, kind)];
        if b.state_header {
            headers.push((STATE_HEADER, &state_value));
        }
        headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        send_local_reply(status, &headers, body);
    }

    /// Tries the breaker's fallback steps from `from` on; ends with fail-fast when all miss.
    /// Returns with a reply sent, or with a service call in flight (`self.pending`).
    fn run_fallback(
        &mut self,
        state: &State,
        from: usize,
        phase: BreakerPhase,
        reason: &'static str,
    ) {
        let Some((b, stats)) = self.breaker(state) else {
            return;
        };
        let now = state.clock.now_ns();
        for (i, step) in b.steps.iter().enumerate().skip(from) {
            match step {
                Fallback::Static(s) => {
                    stats.fallback_static.increment();
                    let headers: Vec<(String, String)> = s
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    Self::reply(b, phase, "static", s.status, &headers, s.body.as_bytes());
                    return;
                }
                Fallback::FailFast(_) => break,
                Fallback::Cache(c) => {
                    if let Some(entry) = self.cached(b, c, now) {
                        bump(stats.fallback_cache);
                        debug!("meshguard_fallback breaker={} fallback=cache hit", b.name);
                        Self::reply(b, phase, "cache", entry.status, &entry.headers, &entry.body);
                        return;
                    }
                    bump(stats.cache_misses);
                }
                Fallback::Service(svc) => match self.call_service(b, svc) {
                    Some(token) => {
                        self.pending = Some(Pending {
                            token,
                            next: i + 1,
                            phase,
                            reason,
                        });
                        return;
                    }
                    None => bump(stats.service_failures),
                },
                // Rejected by validation.
                Fallback::Chain(_) => {}
            }
        }
        stats.fallback_fail_fast.increment();
        let body = format!("circuit breaker {} is {}\n", b.name, phase_name(phase));
        let reason_header = [(REASON_HEADER.to_string(), reason.to_string())];
        Self::reply(b, phase, "fail_fast", 503, &reason_header, body.as_bytes());
    }

    /// The fresh cached response for this request, if any.
    fn cached(&self, b: &Compiled, c: &CacheFallback, now: u64) -> Option<Entry> {
        let key = self.cache_key.as_ref()?;
        let (bytes, _) = SharedData.get(&cache::slot_key(&b.name, key, c.max_entries))?;
        Entry::lookup(&bytes, key, now)
    }

    /// Dispatches the request's method, path (or `svc.path`) and headers, without its body,
    /// to the fallback cluster; `None` when Envoy refuses (unknown cluster).
    fn call_service(&self, b: &Compiled, svc: &ServiceFallback) -> Option<u32> {
        let request = &self.request_headers;
        let get = |name: &str| {
            request
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        let path = svc.path.as_deref().unwrap_or_else(|| get(":path"));
        let method = match get(":method") {
            "" => "GET",
            m => m,
        };
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", method),
            (":path", path),
            (":authority", svc.cluster.as_str()),
            ("x-meshguard-fallback-for", b.name.as_str()),
        ];
        headers.extend(
            request
                .iter()
                .filter(|(k, _)| {
                    !k.starts_with(':')
                        && !k.starts_with("x-envoy-")
                        && !NOT_FORWARDED.contains(&k.as_str())
                })
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let timeout = std::time::Duration::from_nanos(svc.timeout.as_nanos());
        self.dispatch_http_call(&svc.cluster, headers, None, Vec::new(), timeout)
            .ok()
    }

    /// Records the outcome of the active call; returns its kind (None: nothing to record).
    fn record(&mut self, state: &State, facts: &ResponseFacts) -> Option<OutcomeKind> {
        let index = self.index?;
        let active = self.active.as_mut().filter(|a| !a.recorded)?;
        active.recorded = true;
        let (b, stats) = (state.engine.breakers.get(index)?, state.stats.get(index)?);
        let kind = b.classify(facts);
        // A success that neither time nor duration can change is recorded without a clock
        // read (a host call per request); `now` is then any time the state has seen.
        let now = if kind == OutcomeKind::Success && clock_free(b) {
            active.start_ns.unwrap_or(0)
        } else {
            state.clock.now_ns()
        };
        let duration_ns = active.start_ns.map_or(0, |start| now.saturating_sub(start));
        let slow = b.breaker.is_slow(duration_ns);
        if kind == OutcomeKind::Failure {
            bump(stats.failures);
        }
        if slow {
            bump(stats.slow_calls);
        }
        let outcome = Outcome { kind, duration_ns };
        let recorded = b.record(&SharedData, &active.key, now, outcome, active.probe);
        if recorded.contention {
            bump(stats.contention);
        }
        state.transition(index, &active.key, recorded.transition);
        debug!(
            "meshguard_fallback breaker={} key={} outcome={kind:?} status={:?} duration_ms={} slow={slow} probe={} state={}",
            b.name,
            active.key,
            facts.status,
            duration_ns / 1_000_000,
            active.probe,
            phase_name(recorded.phase),
        );
        Some(kind)
    }

    /// Stores the buffered response for the cache fallback.
    fn store(&mut self, state: &State, body: Vec<u8>) {
        let (Some(fill), Some(key), Some((b, stats))) = (
            self.fill.take(),
            self.cache_key.clone(),
            self.breaker(state),
        ) else {
            return;
        };
        let Some(c) = b.cache.as_ref() else {
            return;
        };
        let now = state.clock.now_ns();
        let entry = Entry {
            expires_ns: now.saturating_add(c.ttl.as_nanos()),
            status: fill.status,
            headers: fill.headers,
            body,
            key,
        };
        let slot = cache::slot_key(&b.name, &entry.key, c.max_entries);
        // A plain write: the newest good response wins the slot.
        if SharedData.set(&slot, &entry.encode(), 0).is_ok() {
            bump(stats.cache_stores);
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        let Some((index, key)) = state.engine.find(&HostRequest) else {
            return Action::Continue;
        };
        let (Some(b), Some(stats)) = (state.engine.breakers.get(index), state.stats.get(index))
        else {
            return Action::Continue;
        };
        self.index = Some(index);
        if b.has_service {
            // Lossy, never the SDK's reader (it traps on a value that is not UTF-8).
            self.request_headers = HeaderMap::request_headers().to_vec();
        }
        if b.cache.is_some() {
            self.cache_key = cache::request_key(
                &HostRequest.header(":method").unwrap_or_default(),
                &HostRequest.header(":path").unwrap_or_default(),
            );
        }
        // The start time is read up front only if the duration can matter; otherwise the
        // breaker reads the clock only in the phases that need it (never while CLOSED).
        let start = (!clock_free(b)).then(|| state.clock.now_ns());
        let acquired = b.acquire(&SharedData, &key, || {
            start.unwrap_or_else(|| state.clock.now_ns())
        });
        let start_ns = start.or(acquired.now);
        if acquired.contention {
            bump(stats.contention);
        }
        state.transition(index, &key, acquired.transition);
        debug!(
            "meshguard_fallback breaker={} key={key} decision={:?} state={}",
            b.name,
            acquired.permit,
            phase_name(acquired.phase)
        );
        match acquired.permit {
            Permit::Rejected { .. } => {
                stats.rejected.increment();
                self.run_fallback(&state, 0, acquired.phase, "breaker_open");
                Action::Pause
            }
            Permit::Allowed { probe } => {
                stats.calls.increment();
                if let Some(ms) = b.timeout_ms {
                    self.set_http_request_header(TIMEOUT_HEADER, Some(&ms.to_string()));
                }
                self.active = Some(Active {
                    key,
                    start_ns,
                    probe,
                    recorded: false,
                });
                Action::Continue
            }
            Permit::ShadowRejected { .. } => {
                stats.calls.increment();
                stats.shadow_rejected.increment();
                if let Some(ms) = b.timeout_ms {
                    self.set_http_request_header(TIMEOUT_HEADER, Some(&ms.to_string()));
                }
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        let Some((b, _)) = self.breaker(&state) else {
            return Action::Continue;
        };
        if self.active.as_ref().is_none_or(|a| a.recorded) {
            // Our own fallback reply, or a request this filter did not forward.
            return Action::Continue;
        }
        // One host call for every header this callback may look at.
        let headers = HeaderMap::response_headers();
        let header = |name: &str| headers.get(name);
        let status: Option<u16> = header(":status").and_then(|s| s.parse().ok());
        // Resets, refused connections and timeouts reach the client as Envoy's own 5xx
        // replies: below 500 the details cannot name an upstream failure, so the success path
        // skips the property read (one host call per request).
        let details = if status.is_none_or(|s| s >= 500) {
            hostcalls::get_property(vec!["response", "code_details"])
                .ok()
                .flatten()
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let facts = ResponseFacts {
            status,
            grpc_status: header("grpc-status").and_then(|s| s.parse().ok()),
            upstream_failure: upstream_failure(&details),
        };
        let Some(kind) = self.record(&state, &facts) else {
            return Action::Continue;
        };
        let probe = self.active.as_ref().is_some_and(|a| a.probe);
        if kind == OutcomeKind::Failure && b.fallback_on_failure && !probe {
            let key = self
                .active
                .as_ref()
                .map(|a| a.key.clone())
                .unwrap_or_default();
            let phase = b.phase(&SharedData, &key);
            self.run_fallback(&state, 0, phase, "upstream_failure");
            return Action::Pause;
        }
        let status = facts.status.unwrap_or(0);
        let fits = |c: &CacheFallback| {
            header("content-length")
                .and_then(|l| l.parse::<u64>().ok())
                .is_none_or(|l| l <= u64::from(c.max_body_bytes))
        };
        if kind == OutcomeKind::Success
            && self.cache_key.is_some()
            && cache::cacheable(status, header("cache-control").as_deref())
            && b.cache.as_ref().is_some_and(fits)
        {
            let headers = cache::stored_headers(headers.to_vec());
            self.fill = Some(Fill { status, headers });
            if end_of_stream {
                self.store(&state, Vec::new());
            }
        } else if kind == OutcomeKind::Success && self.cache_key.is_some() {
            debug!(
                "meshguard_fallback breaker={} response not cacheable",
                b.name
            );
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        if self.fill.is_none() {
            return Action::Continue;
        }
        let max = self
            .breaker(&state)
            .and_then(|(b, _)| b.cache.as_ref())
            .map_or(0, |c| c.max_body_bytes as usize);
        if body_size > max {
            // Too large to store: let the buffered part go on.
            self.fill = None;
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffer until the whole body is here (bounded by max_body_bytes).
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        self.store(&state, body);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // A response with trailers is not stored (the entry has no place for them).
        self.fill = None;
        Action::Continue
    }

    fn on_log(&mut self) {
        // A stream that ended without response headers: the upstream reset it (or the client
        // went away, which says nothing about the upstream).
        let Some(state) = self.state.clone() else {
            return;
        };
        if self.active.as_ref().is_none_or(|a| a.recorded) {
            return;
        }
        let details = hostcalls::get_property(vec!["response", "code_details"])
            .ok()
            .flatten()
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_default();
        if details.contains("downstream") {
            return;
        }
        let facts = ResponseFacts {
            upstream_failure: Some(upstream_failure(&details).unwrap_or(UpstreamFailure::Reset)),
            ..ResponseFacts::default()
        };
        // A reset the policy does not count is no outcome at all (not a success): a probe
        // left unrecorded is reclaimed by the probe timeout.
        let counts = self
            .breaker(&state)
            .is_some_and(|(b, _)| b.classify(&facts) == OutcomeKind::Failure);
        if counts {
            self.record(&state, &facts);
        }
    }
}
