//! Property tests for the invariants the module documents, over random call traces in which
//! acquires and records of many outstanding calls interleave.

use proptest::prelude::*;

use super::*;

/// One step of a trace.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Advance time by the gap (ns), then acquire.
    Acquire(u64),
    /// Advance time, then record the outcome of outstanding call `index % outstanding`.
    Record(u64, usize, bool, u64),
    /// Record an outcome for a call that was never admitted here (a stale or foreign report).
    Stray(u64, bool, bool),
    /// Switch the breaker to configuration `index % 4` (Normal, MetricsOnly, ForcedOpen, Disabled).
    Mode(usize),
}

fn op(max_gap: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=max_gap).prop_map(Op::Acquire),
        4 => (0..=max_gap, any::<usize>(), any::<bool>(), 0..3_000u64)
            .prop_map(|(g, i, f, d)| Op::Record(g, i, f, d)),
        1 => (0..=max_gap, any::<bool>(), any::<bool>()).prop_map(|(g, f, p)| Op::Stray(g, f, p)),
    ]
}

fn ops(max_gap: u64) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(max_gap), 1..300)
}

/// A valid breaker in `mode` with random conditions and timings (durations in ns, small so
/// traces cross many phases).
fn breaker(mode: BreakerMode) -> impl Strategy<Value = Breaker> {
    let window = prop_oneof![
        (1u32..=MAX_WINDOW_CALLS).prop_map(|calls| BreakerWindow::Count { calls }),
        (1u64..5_000, 1u32..=MAX_WINDOW_BUCKETS)
            .prop_map(|(window_ns, buckets)| BreakerWindow::Time { window_ns, buckets }),
    ];
    (
        prop::option::of(1u32..6),
        prop::option::of(1u32..=1000),
        prop::option::of((1u64..3_000, 1u32..=1000)),
        window,
        1u32..20,
        (1u64..2_000, 1000u32..4000, 0u64..10_000),
        (1u32..6, 0u32..6, 1u64..3_000),
    )
        .prop_filter_map("invalid breaker", move |(c, f, s, w, min, open, half)| {
            let mut b = Breaker::builder()
                .mode(mode)
                .window(w, min)
                .open(open.0, open.1, open.0 + open.2)
                .half_open(half.0, half.1.min(half.0).max(1), half.2);
            if let Some(n) = c {
                b = b.consecutive_failures(n);
            }
            if let Some(r) = f {
                b = b.failure_ratio(r);
            }
            if let Some((t, r)) = s {
                b = b.slow_calls(t, r);
            }
            b.build().ok()
        })
}

/// What a trace observed, checked as it runs.
struct Run {
    breaker: Breaker,
    state: BreakerState,
    now: u64,
    /// Probe flags of admitted calls whose outcome is not recorded yet.
    outstanding: Vec<bool>,
    /// Probes admitted since the last OPEN → HALF_OPEN.
    probes: u32,
    /// When OPEN began and for how long, if open.
    opened: Option<(u64, u64)>,
    permits: Vec<Permit>,
}

impl Run {
    fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            state: breaker.initial_state(),
            now: 0,
            outstanding: Vec::new(),
            probes: 0,
            opened: None,
            permits: Vec::new(),
        }
    }

    fn step(&mut self, op: Op, modes: &[Breaker; 4]) -> Result<(), TestCaseError> {
        let before = self.state;
        let (transition, after) = match op {
            Op::Acquire(gap) => {
                self.now = self.now.saturating_add(gap);
                let (permit, t, after) = self.breaker.acquire(before, self.now);
                if t.is_some_and(|t| t.to == BreakerPhase::HalfOpen) {
                    self.probes = 0;
                }
                if let Permit::Allowed { probe } = permit {
                    if probe {
                        self.probes += 1;
                        prop_assert_eq!(after.phase(), BreakerPhase::HalfOpen);
                    }
                    self.outstanding.push(probe);
                    if let Some((at, open_ns)) = self.opened {
                        if t.is_none_or(|t| t.reason != TransitionReason::ModeChanged) {
                            prop_assert!(
                                self.now >= at.saturating_add(open_ns),
                                "admitted at {} while open since {at} for {open_ns}",
                                self.now
                            );
                        }
                    }
                }
                prop_assert!(
                    self.probes <= self.breaker.probes().get(),
                    "{} probes admitted, limit {}",
                    self.probes,
                    self.breaker.probes()
                );
                self.permits.push(permit);
                (t, after)
            }
            Op::Record(gap, index, failed, duration) => {
                self.now = self.now.saturating_add(gap);
                if self.outstanding.is_empty() {
                    return Ok(());
                }
                let probe = self.outstanding.swap_remove(index % self.outstanding.len());
                let outcome = Outcome {
                    kind: if failed {
                        OutcomeKind::Failure
                    } else {
                        OutcomeKind::Success
                    },
                    duration_ns: duration,
                };
                self.breaker.record(before, self.now, outcome, probe)
            }
            Op::Stray(gap, failed, probe) => {
                self.now = self.now.saturating_add(gap);
                let outcome = if failed {
                    Outcome::failure(0)
                } else {
                    Outcome::success(0)
                };
                self.breaker.record(before, self.now, outcome, probe)
            }
            Op::Mode(i) => {
                self.breaker = modes[i % 4];
                return Ok(());
            }
        };
        check_transition(before, transition, after)?;
        prop_assert_eq!(BreakerState::from_bytes(&after.to_bytes()), Ok(after));
        if let Some(t) = transition {
            self.opened = (t.to == BreakerPhase::Open).then_some((self.now, after.open_ns()));
            if t.to == BreakerPhase::Open {
                prop_assert!(after.open_ns() >= self.breaker.open_ns().get());
                prop_assert!(after.open_ns() <= self.breaker.max_open_ns().get());
            }
        }
        self.state = after;
        Ok(())
    }
}

/// Every phase change is reported, starts where the state was, and follows an edge of the
/// state machine: no state is skipped.
fn check_transition(
    before: BreakerState,
    transition: Option<Transition>,
    after: BreakerState,
) -> Result<(), TestCaseError> {
    use BreakerPhase::*;
    let Some(t) = transition else {
        prop_assert_eq!(before.phase(), after.phase(), "a silent phase change");
        return Ok(());
    };
    prop_assert_eq!(t.from, before.phase());
    prop_assert_eq!(t.to, after.phase());
    let edge = match (t.from, t.to) {
        (Closed, Open) => matches!(
            t.reason,
            TransitionReason::ConsecutiveFailures
                | TransitionReason::FailureRatio
                | TransitionReason::SlowCallRatio
        ),
        (Open, HalfOpen) => t.reason == TransitionReason::OpenElapsed,
        (HalfOpen, Open) => matches!(
            t.reason,
            TransitionReason::ProbeFailed | TransitionReason::ProbeTimeout
        ),
        (HalfOpen, Closed) => t.reason == TransitionReason::ProbesSucceeded,
        (_, ForcedOpen | Disabled) | (ForcedOpen | Disabled, Closed) => {
            t.reason == TransitionReason::ModeChanged && t.from != t.to
        }
        _ => false,
    };
    prop_assert!(edge, "illegal transition {:?}", t);
    Ok(())
}

fn all_modes(b: Breaker) -> [Breaker; 4] {
    [
        BreakerMode::Normal,
        BreakerMode::MetricsOnly,
        BreakerMode::ForcedOpen,
        BreakerMode::Disabled,
    ]
    .map(|mode| Breaker { mode, ..b })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_transition_skips_a_state_and_probes_and_open_time_hold(
        b in breaker(BreakerMode::Normal),
        trace in ops(1_500),
    ) {
        let modes = all_modes(b);
        let mut run = Run::new(b);
        for op in trace {
            run.step(op, &modes)?;
        }
    }

    #[test]
    fn transitions_stay_legal_when_the_mode_changes_mid_trace(
        b in breaker(BreakerMode::Normal),
        trace in prop::collection::vec(prop_oneof![9 => op(1_500), 1 => any::<usize>().prop_map(Op::Mode)], 1..300),
    ) {
        let modes = all_modes(b);
        let mut run = Run::new(b);
        for op in trace {
            run.step(op, &modes)?;
        }
    }

    #[test]
    fn half_open_never_admits_more_than_n_probes_however_calls_interleave(
        b in breaker(BreakerMode::Normal),
        trace in ops(50),
    ) {
        // Short gaps: many acquires land in each HALF_OPEN period.
        let modes = all_modes(b);
        let mut run = Run::new(b);
        for op in trace {
            run.step(op, &modes)?;
        }
    }

    #[test]
    fn metrics_only_never_rejects(b in breaker(BreakerMode::MetricsOnly), trace in ops(1_500)) {
        let modes = all_modes(b);
        let mut run = Run::new(b);
        for op in trace {
            run.step(op, &modes)?;
        }
        prop_assert!(run.permits.iter().all(Permit::forwards));
    }

    #[test]
    fn backoff_never_shrinks_between_consecutive_trips_and_stays_capped(
        b in breaker(BreakerMode::Normal),
        probes_fail in prop::collection::vec(any::<bool>(), 1..40),
    ) {
        let mut st = b.initial_state();
        let mut now = 0;
        // Trip from CLOSED by feeding slow failures, all at one time (so one bucket holds them).
        for _ in 0..1000 {
            if st.phase() == BreakerPhase::Open { break; }
            st = b.record(st, now, Outcome::failure(u64::MAX), false).1;
        }
        prop_assert_eq!(st.phase(), BreakerPhase::Open);
        let mut last = st.open_ns();
        prop_assert_eq!(last, b.open_ns().get());
        for fail in probes_fail {
            now = st.deadline_ns();
            let (p, _, half) = b.acquire(st, now);
            prop_assert_eq!(p, Permit::Allowed { probe: true });
            if fail {
                st = b.record(half, now, Outcome::failure(0), true).1;
                prop_assert!(st.open_ns() >= last && st.open_ns() <= b.max_open_ns().get());
                last = st.open_ns();
            } else {
                // Let the probes succeed: the breaker closes and the next trip starts over.
                let mut s = half;
                let mut admitted = true;
                while s.phase() == BreakerPhase::HalfOpen {
                    s = if admitted {
                        b.record(s, now, Outcome::success(0), true).1
                    } else {
                        b.acquire(s, now).2
                    };
                    admitted = !admitted;
                }
                prop_assert_eq!(s.phase(), BreakerPhase::Closed);
                for _ in 0..1000 {
                    if s.phase() == BreakerPhase::Open { break; }
                    s = b.record(s, now, Outcome::failure(u64::MAX), false).1;
                }
                prop_assert_eq!(s.open_ns(), b.open_ns().get());
                st = s;
                last = st.open_ns();
            }
        }
    }

    #[test]
    fn state_bytes_round_trip_is_identity(bytes in prop::collection::vec(any::<u8>(), BreakerState::LEN)) {
        let mut bytes = bytes;
        bytes[0] = 0x61;
        bytes[1] %= 5;
        bytes[2] %= 3;
        let st = BreakerState::from_bytes(&bytes).unwrap();
        prop_assert_eq!(BreakerState::from_bytes(&st.to_bytes()), Ok(st));
    }

    #[test]
    fn arbitrary_bytes_never_panic_from_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = BreakerState::from_bytes(&bytes);
    }

    #[test]
    fn arbitrary_states_and_backwards_times_never_panic(
        b in breaker(BreakerMode::Normal),
        mode in 0usize..4,
        bytes in prop::collection::vec(any::<u8>(), BreakerState::LEN),
        times in prop::collection::vec((any::<u64>(), any::<bool>(), any::<u64>(), any::<bool>()), 1..50),
    ) {
        let b = all_modes(b)[mode];
        let mut bytes = bytes;
        bytes[0] = 0x61;
        bytes[1] %= 5;
        bytes[2] %= 3;
        let mut st = BreakerState::from_bytes(&bytes).unwrap();
        for (now, failed, duration, probe) in times {
            let (_, t, next) = b.acquire(st, now);
            check_transition(st, t, next)?;
            let outcome = Outcome {
                kind: if failed { OutcomeKind::Failure } else { OutcomeKind::Success },
                duration_ns: duration,
            };
            let (t, after) = b.record(next, now, outcome, probe);
            check_transition(next, t, after)?;
            st = after;
        }
    }
}
