//! The proxy-wasm shell: the root context parses the configuration once, creates the shared
//! tables and the stats, releases held requests on its timer and flushes the per-request
//! counters on it; each HTTP context turns the engine's verdict into Continue, a pause or a
//! local reply.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use log::{debug, error, log_enabled, Level};
use meshguard_filter_common::{
    init_logging, parse_config, send_local_reply, sync_log_level, BatchedCounter, Counter,
    SharedData, WallClock,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::Config;
use crate::delay::{DelayQueue, Timer};
use crate::engine::{CompiledRule, Effect, Engine, Event, Quota, StreamVerdict};
use crate::request::RequestAttributes;

/// Prefix of every stat: Envoy shows `wasmcustom.meshguard_ratelimit.<rule>.<counter>`.
const STATS_PREFIX: &str = "meshguard_ratelimit";
/// Decisions between two reads of Envoy's log level (it can change at run time).
const LOG_LEVEL_REFRESH: u32 = 256;

// The stream callbacks this module implements; `make wasm` removes the exports of the others
// (filters/common/src/callbacks.rs). Request headers decide; response headers carry the quota headers; `done` releases a held
// stream and flushes the root's batched counters.
meshguard_filter_common::stream_callbacks!(request_headers, response_headers, done);

/// Registers the root context; called from `proxy_wasm::main!`.
pub(crate) fn start() {
    init_logging();
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root {
            context_id,
            state: None,
        })
    });
}

/// A rule's counters (absent if the host refused to define one). The decision counters are
/// bumped on every request, so they are batched in the VM and flushed on the root's tick (a
/// stat lags by at most [`BatchedCounter::FLUSH_PERIOD`]); the rare ones go out at once.
#[derive(Debug)]
struct RuleStats {
    allowed: BatchedCounter,
    delayed: BatchedCounter,
    limited: BatchedCounter,
    shadow_limited: BatchedCounter,
    contention: Option<Counter>,
    overflow: Option<Counter>,
}

impl RuleStats {
    fn define(rule: &str) -> Self {
        let name = |name: &str| format!("{STATS_PREFIX}.{rule}.{name}");
        let batched = |n: &str| BatchedCounter::define(&name(n));
        Self {
            allowed: batched("allowed"),
            delayed: batched("delayed"),
            limited: batched("limited"),
            shadow_limited: batched("shadow_limited"),
            contention: Counter::define(&name("contention")),
            overflow: Counter::define(&name("overflow")),
        }
    }

    /// Hands the batched counts to the host (one host call per counter with counts).
    fn flush(&self) {
        self.allowed.flush();
        self.delayed.flush();
        self.limited.flush();
        self.shadow_limited.flush();
    }
}

fn bump(counter: Option<Counter>) {
    if let Some(counter) = counter {
        counter.increment();
    }
}

/// What the root context shares with its HTTP contexts.
#[derive(Debug)]
struct State {
    engine: Engine,
    stats: Vec<RuleStats>,
    clock: WallClock,
    queue: RefCell<DelayQueue>,
    decisions: Cell<u32>,
}

impl State {
    /// Counts and logs one rule's event.
    fn observe(&self, index: usize, rule: &CompiledRule, event: &Event) {
        let Some(stats) = self.stats.get(index) else {
            return;
        };
        match event {
            Event::Skipped { part } => {
                debug!(
                    "ratelimit rule={} skipped: no value for key[{part}]",
                    rule.name
                );
            }
            Event::Contention { key } => {
                bump(stats.contention);
                if rule.action != crate::config::Action::Shadow {
                    stats.limited.increment();
                }
                debug!(
                    "ratelimit rule={} key={} contention: compare-and-swap retries ran out",
                    rule.name,
                    key.display()
                );
            }
            Event::Decided {
                key,
                outcome,
                effect,
            } => {
                match effect {
                    Effect::Allowed => &stats.allowed,
                    Effect::Delayed(_) => &stats.delayed,
                    Effect::Limited => &stats.limited,
                    Effect::ShadowLimited => &stats.shadow_limited,
                }
                .increment();
                if outcome.overflow {
                    bump(stats.overflow);
                }
                if log_enabled!(Level::Debug) {
                    let d = &outcome.decision;
                    debug!(
                        "ratelimit rule={} key={} decision={} quota={} limit={} remaining={} reset_ms={} retry_after_ms={}{}",
                        rule.name,
                        key.display(),
                        match effect {
                            Effect::Allowed => "allow".to_string(),
                            Effect::Delayed(ns) => format!("delay_ms:{}", ns.div_ceil(1_000_000)),
                            Effect::Limited => "reject".to_string(),
                            Effect::ShadowLimited => "shadow_reject".to_string(),
                        },
                        rule.source_name(outcome.source),
                        d.limit,
                        d.remaining,
                        d.reset_after_ns / 1_000_000,
                        d.retry_after_ns.div_ceil(1_000_000),
                        if outcome.overflow { " overflow=true" } else { "" },
                    );
                }
            }
        }
    }

    /// Hands every rule's batched counts to the host.
    fn flush_stats(&self) {
        for stats in &self.stats {
            stats.flush();
        }
    }

    /// Re-reads Envoy's log level every [`LOG_LEVEL_REFRESH`] decisions.
    fn refresh_log_level(&self) {
        let n = self.decisions.get().wrapping_add(1);
        self.decisions.set(n);
        if n.is_multiple_of(LOG_LEVEL_REFRESH) {
            sync_log_level();
        }
    }
}

/// Sets the root's tick period as the delay queue asks, but never longer than the stats flush
/// period: the same tick flushes the batched counters, so it never stops.
fn apply(timer: Timer) {
    if let Timer::Set(ms) = timer {
        let flush = BatchedCounter::FLUSH_PERIOD;
        let period = match Duration::from_millis(ms) {
            d if d.is_zero() => flush,
            d => d.min(flush),
        };
        let _ = hostcalls::set_tick_period(period);
    }
}

struct Root {
    context_id: u32,
    state: Option<Rc<State>>,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        // The VM is going away: the batched counts must not go with it.
        if let Some(state) = &self.state {
            state.flush_stats();
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        sync_log_level();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let engine = parse_config::<Config>(&bytes).and_then(|config| Engine::compile(&config));
        let engine = match engine {
            Ok(engine) => engine,
            Err(e) => {
                error!("meshguard_ratelimit: invalid configuration: {e}");
                return false;
            }
        };
        engine.create_tables(&SharedData);
        let stats = engine
            .rules
            .iter()
            .map(|rule| RuleStats::define(&rule.name))
            .collect();
        debug!(
            "meshguard_ratelimit: root {} configured with {} rules",
            self.context_id,
            engine.rules.len()
        );
        self.state = Some(Rc::new(State {
            engine,
            stats,
            clock: WallClock::new(),
            queue: RefCell::new(DelayQueue::default()),
            decisions: Cell::new(0),
        }));
        // The tick flushes the batched counters; the delay queue only ever shortens it.
        apply(Timer::Set(0));
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = &self.state else {
            return;
        };
        let now = state.clock.now_ns();
        let (due, timer) = state.queue.borrow_mut().due(now);
        // Re-arm while the root is still the effective context.
        apply(timer);
        for id in due {
            // A stream that went away has no context any more: nothing to resume.
            if hostcalls::set_effective_context(id).is_ok() {
                let _ = hostcalls::resume_http_request();
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
        state.flush_stats();
        sync_log_level();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            context_id,
            state: self.state.clone(),
            held_until: None,
            quota: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The current stream's request, read through the host.
struct HostRequest;

impl RequestAttributes for HostRequest {
    fn header(&self, name: &str) -> Option<String> {
        // Never the SDK's `String` reader: it traps on a value that is not UTF-8.
        meshguard_filter_common::request_header(name)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
}

struct Stream {
    context_id: u32,
    state: Option<Rc<State>>,
    /// Release time (ns) while the request is held.
    held_until: Option<u64>,
    /// Headers for the response (`ratelimit_headers: always`).
    quota: Option<Quota>,
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        if let (Some(state), Some(release)) = (&self.state, self.held_until.take()) {
            state.queue.borrow_mut().remove(self.context_id, release);
        }
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        state.refresh_log_level();
        let now = state.clock.now_ns();
        let verdict = state
            .engine
            .check(&HostRequest, &SharedData, now, |i, rule, event| {
                state.observe(i, rule, event);
            });
        match verdict {
            StreamVerdict::Forward { quota } => {
                self.quota = quota;
                Action::Continue
            }
            StreamVerdict::Delay { ns, quota } => {
                self.quota = quota;
                let release = now.saturating_add(ns);
                self.held_until = Some(release);
                apply(state.queue.borrow_mut().push(self.context_id, release, now));
                Action::Pause
            }
            StreamVerdict::Reject(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_ref(), v.as_str()))
                    .collect();
                send_local_reply(reply.status, &headers, &reply.body);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(quota) = self.quota {
            for (name, value) in quota.headers() {
                self.set_http_response_header(name, Some(&value));
            }
        }
        Action::Continue
    }
}
