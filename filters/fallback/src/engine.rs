//! The compiled configuration and the decisions over shared state, free of proxy-wasm so they
//! are tested natively against a [`MemoryStore`](meshguard_filter_common::MemoryStore).

use std::cell::Cell;

use meshguard_core::{
    Breaker, BreakerError, BreakerMode, BreakerPhase, BreakerState, BreakerWindow, FailurePolicy,
    Outcome, OutcomeKind, Permit, ResponseFacts, Transition, UpstreamFailure, PER_MILLE,
};
use meshguard_filter_common::{ensure, update, CasStore, ConfigError};

use crate::config::{BreakerConfig, BreakerKey, CacheFallback, Config, Fallback, Mode, Window};
use crate::matching::{instance_key, Matcher, RequestHeaders};

/// Retries of one compare-and-swap update before giving up (see [`Compiled::acquire`]).
const MAX_RETRIES: u32 = 16;

/// One breaker, ready to decide.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) name: String,
    matcher: Matcher,
    key: BreakerKey,
    pub(crate) breaker: Breaker,
    policy: FailurePolicy,
    /// Upstream timeout in milliseconds for `x-envoy-upstream-rq-timeout-ms`.
    pub(crate) timeout_ms: Option<u64>,
    /// The fallback steps tried in order (a chain's entries, or the one fallback).
    pub(crate) steps: Vec<Fallback>,
    /// The cache fallback's settings, if a step is a cache.
    pub(crate) cache: Option<CacheFallback>,
    /// A step calls a fallback service (the request headers must be kept for it).
    pub(crate) has_service: bool,
    pub(crate) fallback_on_failure: bool,
    pub(crate) state_header: bool,
    /// The shared-data key of the per-route instance, built once.
    route_key: String,
}

/// The whole configuration, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub(crate) breakers: Vec<Compiled>,
}

/// What `acquire` decided, with the transition this call committed (at most once overall).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acquired {
    pub(crate) permit: Permit,
    pub(crate) transition: Option<Transition>,
    /// The phase after the decision.
    pub(crate) phase: BreakerPhase,
    /// The update lost every CAS race: the request was let through unmeasured.
    pub(crate) contention: bool,
    /// The time read for the decision (`None`: the phase did not need one).
    pub(crate) now: Option<u64>,
}

/// What `record` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) transition: Option<Transition>,
    pub(crate) phase: BreakerPhase,
    pub(crate) contention: bool,
}

/// The shared-data key of one breaker instance.
pub(crate) fn state_key(name: &str, instance: &str) -> String {
    format!("mg:cb:{name}:{instance}")
}

impl Engine {
    /// Compiles a parsed configuration; errors name the field (`breakers[1].open.max: …`).
    pub(crate) fn compile(config: &Config) -> Result<Self, ConfigError> {
        let breakers = config
            .breakers
            .iter()
            .enumerate()
            .map(|(i, b)| Compiled::compile(b).map_err(|e| e.in_index(i).in_field("breakers")))
            .collect::<Result<_, _>>()?;
        Ok(Self { breakers })
    }

    /// The first breaker whose match holds, and the shared-data key of its instance.
    pub(crate) fn find(&self, req: &impl RequestHeaders) -> Option<(usize, String)> {
        self.breakers
            .iter()
            .enumerate()
            .find(|(_, b)| b.matcher.matches(req))
            .map(|(i, b)| {
                let key = match b.key {
                    BreakerKey::Route => b.route_key.clone(),
                    key => state_key(&b.name, &instance_key(key, req)),
                };
                (i, key)
            })
    }

    /// Creates the state of every per-route breaker before traffic flows: Envoy ignores the
    /// CAS token on a missing key, so creating it under load could lose a concurrent update.
    pub(crate) fn create_keys(&self, store: &impl CasStore) {
        for b in &self.breakers {
            if b.key == BreakerKey::Route {
                let key = state_key(&b.name, "route");
                ensure(store, &key, &b.breaker.initial_state().to_bytes());
            }
        }
    }
}

impl Compiled {
    fn compile(c: &BreakerConfig) -> Result<Self, ConfigError> {
        let matcher = Matcher::compile(&c.matches).map_err(|e| e.in_field("match"))?;
        let breaker = build_breaker(c)?;
        let policy = failure_policy(c).map_err(|e| e.in_field("failure"))?;
        Ok(Self {
            name: c.name.clone(),
            matcher,
            key: c.key,
            breaker,
            policy,
            timeout_ms: c.timeout.map(|t| t.as_nanos().div_ceil(1_000_000)),
            steps: c.fallback.steps(),
            cache: c.fallback.cache().cloned(),
            has_service: c
                .fallback
                .steps()
                .iter()
                .any(|s| matches!(s, Fallback::Service(_))),
            fallback_on_failure: c.fallback_on_failure,
            state_header: c.state_header,
            route_key: state_key(&c.name, "route"),
        })
    }

    /// Asks the shared breaker at `key` whether a call may go upstream now. `now` is read at
    /// most once, and only when the phase needs it (OPEN, HALF_OPEN): a closed breaker costs
    /// no clock read. When the CAS retries run out (other workers kept winning) the call is
    /// let through unmeasured: a busy breaker must not turn contention into rejections.
    pub(crate) fn acquire(
        &self,
        store: &impl CasStore,
        key: &str,
        now: impl Fn() -> u64,
    ) -> Acquired {
        let read = Cell::new(None);
        let now = || {
            let t = read.get().unwrap_or_else(&now);
            read.set(Some(t));
            t
        };
        self.create_if_missing(store, key);
        let result = update(store, key, MAX_RETRIES, |stored| {
            let decided = self
                .breaker
                .acquire_bytes_lazy(stored, now)
                // State we cannot read (another version wrote it): start afresh.
                .or_else(|_| self.breaker.acquire_bytes_lazy(None, now));
            match decided {
                Ok((permit, transition, bytes, _)) => {
                    ((permit, transition, phase_of(&bytes)), bytes.to_vec())
                }
                Err(_) => (
                    (Permit::Allowed { probe: false }, None, BreakerPhase::Closed),
                    stored.map(<[u8]>::to_vec).unwrap_or_default(),
                ),
            }
        });
        match result {
            Ok((permit, transition, phase)) => Acquired {
                permit,
                transition,
                phase,
                contention: false,
                now: read.get(),
            },
            Err(_) => Acquired {
                permit: Permit::Allowed { probe: false },
                transition: None,
                phase: BreakerPhase::Closed,
                contention: true,
                now: read.get(),
            },
        }
    }

    /// Records the outcome of a call that `acquire` allowed. Contention drops the outcome.
    pub(crate) fn record(
        &self,
        store: &impl CasStore,
        key: &str,
        now: u64,
        outcome: Outcome,
        probe: bool,
    ) -> Recorded {
        let result = update(store, key, MAX_RETRIES, |stored| {
            let decided = self
                .breaker
                .record_bytes(stored, now, outcome, probe)
                .or_else(|_| self.breaker.record_bytes(None, now, outcome, probe));
            match decided {
                Ok((transition, bytes)) => ((transition, phase_of(&bytes)), bytes.to_vec()),
                Err(_) => (
                    (None, BreakerPhase::Closed),
                    stored.map(<[u8]>::to_vec).unwrap_or_default(),
                ),
            }
        });
        match result {
            Ok((transition, phase)) => Recorded {
                transition,
                phase,
                contention: false,
            },
            Err(_) => Recorded {
                transition: None,
                phase: BreakerPhase::Closed,
                contention: true,
            },
        }
    }

    /// The current phase at `key` (CLOSED when there is no state yet).
    pub(crate) fn phase(&self, store: &impl CasStore, key: &str) -> BreakerPhase {
        store
            .get(key)
            .map_or(self.breaker.initial_state().phase(), |(bytes, _)| {
                phase_of(&bytes)
            })
    }

    /// Success or failure of a response.
    pub(crate) fn classify(&self, facts: &ResponseFacts) -> OutcomeKind {
        self.policy.classify(facts)
    }

    /// Creates a per-method/path or per-authority instance on first use. Two workers creating
    /// the same key at once both write the same initial state; at worst one update made in
    /// between is lost (Envoy does not check the CAS token of a missing key).
    fn create_if_missing(&self, store: &impl CasStore, key: &str) {
        if self.key != BreakerKey::Route && store.get(key).is_none() {
            ensure(store, key, &self.breaker.initial_state().to_bytes());
        }
    }
}

fn phase_of(bytes: &[u8]) -> BreakerPhase {
    BreakerState::phase_of_bytes(bytes).unwrap_or(BreakerPhase::Closed)
}

/// Envoy's response code details (`response.code_details`) that say why no usable upstream
/// response arrived; `via_upstream` and filter details are not failures of their own.
pub(crate) fn upstream_failure(details: &str) -> Option<UpstreamFailure> {
    if details.contains("connection_failure")
        || details.contains("connect_failure")
        || details == "no_healthy_upstream"
    {
        Some(UpstreamFailure::ConnectFailure)
    } else if details.starts_with("upstream_reset") {
        Some(UpstreamFailure::Reset)
    } else if matches!(
        details,
        // Envoy 1.40 says `response_timeout` for the route timeout (verified).
        "response_timeout" | "upstream_response_timeout" | "upstream_per_try_timeout"
    ) {
        Some(UpstreamFailure::Timeout)
    } else {
        None
    }
}

/// A ratio in (0, 1] as per mille; `field` names it in the error.
fn per_mille(ratio: f64, field: &str) -> Result<u32, ConfigError> {
    let scaled = (ratio * f64::from(PER_MILLE)).round();
    if !(ratio > 0.0 && ratio <= 1.0) || scaled < 1.0 {
        return Err(ConfigError::at(
            field,
            format!("must be above 0 and at most 1 (resolution 0.001), got {ratio}"),
        ));
    }
    // In 1..=1000 after the check above.
    Ok(scaled as u32)
}

fn window(w: Window) -> BreakerWindow {
    match w {
        Window::Count { calls } => BreakerWindow::Count { calls },
        Window::Time { duration, buckets } => BreakerWindow::Time {
            window_ns: duration.as_nanos(),
            buckets,
        },
    }
}

fn build_breaker(c: &BreakerConfig) -> Result<Breaker, ConfigError> {
    let mode = match c.mode {
        Mode::Enforce => BreakerMode::Normal,
        Mode::MetricsOnly => BreakerMode::MetricsOnly,
        Mode::ForcedOpen => BreakerMode::ForcedOpen,
        Mode::Disabled => BreakerMode::Disabled,
    };
    let mut b = Breaker::builder().mode(mode);
    let trip = &c.trip;
    if let Some(n) = trip.consecutive_failures {
        b = b.consecutive_failures(n);
    }
    // Which config object the shared window came from, to name it in errors.
    let mut window_field = "failure_ratio";
    if let Some(f) = &trip.failure_ratio {
        let ratio = per_mille(f.ratio, "ratio").map_err(|e| in_trip(e, "failure_ratio"))?;
        b = b.failure_ratio(ratio).window(window(f.window), f.min_calls);
    }
    if let Some(s) = &trip.slow_calls {
        let ratio = per_mille(s.ratio, "ratio").map_err(|e| in_trip(e, "slow_calls"))?;
        if s.threshold.as_nanos() == 0 {
            return Err(in_trip(
                ConfigError::at("threshold", "must be greater than zero"),
                "slow_calls",
            ));
        }
        if let Some(f) = &trip.failure_ratio {
            if f.window != s.window || f.min_calls != s.min_calls {
                return Err(in_trip(
                    ConfigError::at(
                        "window",
                        "must equal failure_ratio's window and min_calls (one window measures both)",
                    ),
                    "slow_calls",
                ));
            }
        } else {
            window_field = "slow_calls";
            b = b.window(window(s.window), s.min_calls);
        }
        b = b.slow_calls(s.threshold.as_nanos(), ratio);
    }
    let open = &c.open;
    if !(open.backoff.is_finite() && open.backoff >= 1.0 && open.backoff <= 1000.0) {
        return Err(ConfigError::at("backoff", "must be within 1 and 1000").in_field("open"));
    }
    // Within 1000..=1_000_000 after the check above.
    let backoff = (open.backoff * f64::from(PER_MILLE)).round() as u32;
    b = b.open(open.duration.as_nanos(), backoff, open.max.as_nanos());
    let h = &c.half_open;
    b = b.half_open(h.probes, h.successes, h.probe_timeout.as_nanos());
    b.build().map_err(|e| breaker_error(e, window_field))
}

fn in_trip(e: ConfigError, condition: &str) -> ConfigError {
    e.in_field(condition).in_field("trip")
}

/// Places core's error at the configuration field it is about.
fn breaker_error(e: BreakerError, window_field: &str) -> ConfigError {
    let message = e.to_string();
    let at = |path: &str| {
        let mut error = ConfigError::new(message.clone());
        for part in path.rsplit('.') {
            error = error.in_field(part);
        }
        error
    };
    let window = format!("trip.{window_field}");
    match e {
        BreakerError::NoTripCondition => at("trip"),
        BreakerError::Zero { field } | BreakerError::TooLarge { field, .. } => match field {
            "consecutive_failures" => at("trip.consecutive_failures"),
            "slow_call_threshold_ns" => at("trip.slow_calls.threshold"),
            "min_calls" => at(&format!("{window}.min_calls")),
            "window.calls" => at(&format!("{window}.window.calls")),
            "window.window_ns" => at(&format!("{window}.window.duration")),
            "window.buckets" => at(&format!("{window}.window.buckets")),
            "open_ns" => at("open.duration"),
            "max_open_ns" => at("open.max"),
            "half_open.probes" => at("half_open.probes"),
            "half_open.successes" => at("half_open.successes"),
            "half_open.probe_timeout_ns" => at("half_open.probe_timeout"),
            _ => at(""),
        },
        BreakerError::MinCallsAboveWindow { .. } => at(&format!("{window}.min_calls")),
        BreakerError::WindowShorterThanBuckets { .. } => at(&format!("{window}.window")),
        BreakerError::MaxOpenBelowOpen { .. } => at("open.max"),
        BreakerError::BackoffBelowOne { .. } => at("open.backoff"),
        BreakerError::SuccessesAboveProbes { .. } => at("half_open.successes"),
        BreakerError::MissingWindow { .. } | BreakerError::RatioOutOfRange { .. } => at("trip"),
        BreakerError::StatusRange { .. } | BreakerError::GrpcCode { .. } => at("failure"),
    }
}

fn failure_policy(c: &BreakerConfig) -> Result<FailurePolicy, ConfigError> {
    let f = &c.failure;
    let mut ranges = Vec::with_capacity(f.statuses.len());
    for (i, s) in f.statuses.iter().enumerate() {
        let (lo, hi) = s
            .range()
            .map_err(|m| ConfigError::new(m).in_index(i).in_field("statuses"))?;
        if lo < 100 || hi > 599 || lo > hi {
            return Err(ConfigError::new(format!(
                "`{lo}-{hi}` must lie within 100-599, low to high"
            ))
            .in_index(i)
            .in_field("statuses"));
        }
        ranges.push((lo, hi));
    }
    let mut upstream = Vec::new();
    if f.reset {
        upstream.extend([UpstreamFailure::Reset, UpstreamFailure::ConnectFailure]);
    }
    if f.timeout {
        upstream.push(UpstreamFailure::Timeout);
    }
    FailurePolicy::try_new(&ranges, &f.grpc_statuses, &upstream).map_err(|e| match e {
        BreakerError::GrpcCode { .. } => ConfigError::at("grpc_statuses", e.to_string()),
        _ => ConfigError::at("statuses", e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use meshguard_filter_common::{parse_config, MemoryStore};

    use super::*;
    use crate::matching::tests::FakeRequest;

    fn engine(json: &str) -> Engine {
        Engine::compile(&parse_config::<Config>(json.as_bytes()).unwrap()).unwrap()
    }

    fn error(json: &str) -> String {
        parse_config::<Config>(json.as_bytes())
            .and_then(|c| Engine::compile(&c))
            .unwrap_err()
            .to_string()
    }

    const MIN: &str = r#"{"breakers":[{"name":"b","trip":{"consecutive_failures":3}}]}"#;

    fn with(extra: &str) -> String {
        format!(r#"{{"breakers":[{{"name":"b","trip":{{"consecutive_failures":3}},{extra}}}]}}"#)
    }

    #[test]
    fn errors_name_the_offending_field() {
        let cases = [
            (r#"{"breakers":[]}"#.to_string(), "breakers: needs at least one breaker"),
            (
                r#"{"breakers":[{"name":"b","trip":{}}]}"#.to_string(),
                "breakers[0].trip: at least one trip condition",
            ),
            (
                r#"{"breakers":[{"name":"b","trip":{"failure_ratio":{"ratio":1.5,"window":{"calls":10}}}}]}"#.to_string(),
                "breakers[0].trip.failure_ratio.ratio: must be above 0 and at most 1",
            ),
            (
                r#"{"breakers":[{"name":"b","trip":{"failure_ratio":{"ratio":0.5,"window":{"calls":0}}}}]}"#.to_string(),
                "breakers[0].trip.failure_ratio.window.calls: window.calls must be greater than zero",
            ),
            (
                r#"{"breakers":[{"name":"b","trip":{"failure_ratio":{"ratio":0.5,"window":{"calls":5},"min_calls":6}}}]}"#.to_string(),
                "breakers[0].trip.failure_ratio.min_calls:",
            ),
            (with(r#""open":{"duration":"10s","max":"5s"}"#), "breakers[0].open.max:"),
            (with(r#""open":{"backoff":0.5}"#), "breakers[0].open.backoff: must be within 1 and 1000"),
            (with(r#""half_open":{"probes":1,"successes":2}"#), "breakers[0].half_open.successes:"),
            (with(r#""failure":{"statuses":["600-700"]}"#), "breakers[0].failure.statuses[0]:"),
            (with(r#""failure":{"statuses":["5xx"]}"#), "breakers[0].failure.statuses[0]: `5xx` is not a status code"),
            (with(r#""failure":{"grpc_statuses":[17]}"#), "breakers[0].failure.grpc_statuses: grpc code 17"),
            (with(r#""fallback":{"static":{"status":99}}"#), "breakers[0].fallback.static.status: must be within 200..=599"),
            (with(r#""fallback":{"teapot":{}}"#), "breakers[0].fallback: unknown variant `teapot`"),
            (with(r#""fallback":{"chain":[{"fail_fast":{}},{"chain":[]}]}"#), "breakers[0].fallback.chain[1]: a chain cannot contain a chain"),
            (with(r#""fallback":{"chain":[]}"#), "breakers[0].fallback.chain: needs at least one fallback"),
            (with(r#""fallback":{"chain":[{"static":{"status":99}}]}"#), "breakers[0].fallback.chain[0].static.status: must be within"),
            (with(r#""fallback":{"cache":{"max_body_bytes":0}}"#), "breakers[0].fallback.cache.max_body_bytes: must be within 1..=1048576"),
            (with(r#""fallback":{"cache":{"ttl":"0s"}}"#), "breakers[0].fallback.cache.ttl: must be longer than 0"),
            (with(r#""fallback":{"service":{"cluster":"f","path":"x"}}"#), "breakers[0].fallback.service.path: must start with `/`"),
            (with(r#""fallback":{"service":{"path":"/x"}}"#), "breakers[0].fallback.service: missing field `cluster`"),
            (with(r#""match":{"path":{"exact":"/a","prefix":"/b"}}"#), "breakers[0].match.path: needs exactly one"),
            (with(r#""match":{"methods":["get"]}"#), "breakers[0].match.methods[0]: must be an upper-case"),
            (with(r#""timeout":"0s""#), "breakers[0].timeout: must be at least 1ms"),
            (with(r#""mode":"sometimes""#), "breakers[0].mode: unknown variant `sometimes`"),
            (with(r#""colour":"red""#), "breakers[0].colour: unknown field"),
            (
                r#"{"breakers":[{"name":"a b","trip":{"consecutive_failures":1}}]}"#.to_string(),
                "breakers[0].name: must be 1 to 64",
            ),
            (
                r#"{"breakers":[{"name":"a","trip":{"consecutive_failures":1}},{"name":"a","trip":{"consecutive_failures":1}}]}"#.to_string(),
                "breakers[1].name: duplicate name `a`",
            ),
            (
                r#"{"breakers":[{"name":"b","trip":{"failure_ratio":{"ratio":0.5,"window":{"calls":10}},"slow_calls":{"threshold":"1s","ratio":0.5,"window":{"calls":20}}}}]}"#.to_string(),
                "breakers[0].trip.slow_calls.window: must equal failure_ratio's window",
            ),
        ];
        for (json, expected) in cases {
            let e = error(&json);
            assert!(
                e.starts_with(expected),
                "{json}\n  got: {e}\n  want: {expected}…"
            );
        }
    }

    #[test]
    fn a_full_configuration_compiles() {
        let e = engine(
            r#"{"breakers":[{"name":"orders","match":{"path":{"prefix":"/orders"},"methods":["GET"]},
            "key":"method_path","mode":"metrics_only",
            "trip":{"consecutive_failures":5,
                    "failure_ratio":{"ratio":0.5,"window":{"duration":"10s","buckets":5},"min_calls":4},
                    "slow_calls":{"threshold":"500ms","ratio":0.8,"window":{"duration":"10s","buckets":5},"min_calls":4}},
            "failure":{"statuses":["500-599",429],"grpc_statuses":[14],"reset":true,"timeout":false},
            "open":{"duration":"5s","backoff":1.5,"max":"1m"},
            "half_open":{"probes":3,"successes":2,"probe_timeout":"10s"},
            "timeout":"1500us","fallback":{"static":{"status":200,"headers":{"content-type":"application/json"},"body":"[]"}},
            "fallback_on_failure":true,"state_header":true}]}"#,
        );
        let b = &e.breakers[0];
        assert_eq!(b.timeout_ms, Some(2));
        assert_eq!(b.breaker.probes().get(), 3);
        assert_eq!(b.breaker.mode(), BreakerMode::MetricsOnly);
        assert!(b.breaker.is_slow(500_000_000));
    }

    #[test]
    fn classification_follows_statuses_grpc_and_details() {
        let e = engine(&with(
            r#""failure":{"statuses":["500-503",429],"grpc_statuses":[14],"timeout":false}"#,
        ));
        let b = &e.breakers[0];
        let facts = |status, grpc, details: &str| ResponseFacts {
            status: Some(status),
            grpc_status: grpc,
            upstream_failure: upstream_failure(details),
        };
        assert_eq!(
            b.classify(&facts(503, None, "via_upstream")),
            OutcomeKind::Failure
        );
        assert_eq!(
            b.classify(&facts(429, None, "via_upstream")),
            OutcomeKind::Failure
        );
        assert_eq!(
            b.classify(&facts(504, None, "upstream_response_timeout")),
            OutcomeKind::Success
        );
        assert_eq!(
            b.classify(&facts(200, Some(14), "via_upstream")),
            OutcomeKind::Failure
        );
        assert_eq!(
            b.classify(&facts(200, Some(5), "via_upstream")),
            OutcomeKind::Success
        );
        let reset = ResponseFacts {
            upstream_failure: upstream_failure(
                "upstream_reset_before_response_started{remote_reset}",
            ),
            ..ResponseFacts::default()
        };
        assert_eq!(b.classify(&reset), OutcomeKind::Failure);
        assert_eq!(
            upstream_failure("upstream_reset_before_response_started{connection_failure}"),
            Some(UpstreamFailure::ConnectFailure)
        );
        assert_eq!(upstream_failure("via_upstream"), None);
        assert_eq!(
            upstream_failure("response_timeout"),
            Some(UpstreamFailure::Timeout)
        );
    }

    #[test]
    fn first_matching_breaker_owns_the_request() {
        let e = engine(
            r#"{"breakers":[
            {"name":"a","match":{"path":{"prefix":"/a"}},"trip":{"consecutive_failures":1}},
            {"name":"any","key":"method_path","trip":{"consecutive_failures":1}}]}"#,
        );
        let (i, key) = e.find(&FakeRequest::new("GET", "/a/1")).unwrap();
        assert_eq!((i, key.as_str()), (0, "mg:cb:a:route"));
        let (i, key) = e.find(&FakeRequest::new("POST", "/b?x")).unwrap();
        assert_eq!((i, key.as_str()), (1, "mg:cb:any:POST /b"));
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_reports_it_once() {
        let e = engine(MIN);
        let store = MemoryStore::new();
        e.create_keys(&store);
        let b = &e.breakers[0];
        let key = "mg:cb:b:route";
        let mut transitions = 0;
        for now in 0..3 {
            let a = b.acquire(&store, key, || now);
            assert_eq!(a.permit, Permit::Allowed { probe: false });
            let r = b.record(&store, key, now, Outcome::failure(1), false);
            transitions += usize::from(r.transition.is_some());
        }
        assert_eq!(transitions, 1);
        assert_eq!(b.phase(&store, key), BreakerPhase::Open);
        assert!(matches!(
            b.acquire(&store, key, || 10).permit,
            Permit::Rejected { .. }
        ));
    }

    #[test]
    fn a_closed_breaker_decides_without_reading_the_clock() {
        let e = engine(MIN);
        let store = MemoryStore::new();
        e.create_keys(&store);
        let b = &e.breakers[0];
        let key = "mg:cb:b:route";
        let reads = Cell::new(0);
        let clock = |now: u64| {
            let reads = &reads;
            move || {
                reads.set(reads.get() + 1);
                now
            }
        };
        let a = b.acquire(&store, key, clock(5));
        assert_eq!(
            (a.permit, a.now, reads.get()),
            (Permit::Allowed { probe: false }, None, 0)
        );
        for _ in 0..3 {
            b.record(&store, key, 5, Outcome::failure(1), false);
        }
        // OPEN compares the time with its deadline: exactly one read, reported back.
        let a = b.acquire(&store, key, clock(6));
        assert!(matches!(a.permit, Permit::Rejected { .. }));
        assert_eq!((a.now, reads.get()), (Some(6), 1));
    }

    #[test]
    fn dynamic_keys_are_created_on_first_use() {
        let e = engine(&with(r#""key":"authority""#));
        let store = MemoryStore::new();
        e.create_keys(&store);
        assert!(store.keys().is_empty());
        let b = &e.breakers[0];
        b.acquire(&store, "mg:cb:b:svc", || 0);
        assert_eq!(store.keys(), vec!["mg:cb:b:svc".to_string()]);
    }
}
