//! Unit tests of the state machine, one transition or rule each.

use super::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

fn ok() -> Outcome {
    Outcome::success(MS)
}

fn bad() -> Outcome {
    Outcome::failure(MS)
}

/// Opens after 3 consecutive failures for 10 s, ×2 per re-trip up to 35 s, 2 probes / 2
/// successes, probe timeout 5 s.
fn breaker() -> Breaker {
    Breaker::builder()
        .consecutive_failures(3)
        .open(10 * SEC, 2000, 35 * SEC)
        .half_open(2, 2, 5 * SEC)
        .build()
        .unwrap()
}

/// Records `outcomes` at `now` as CLOSED calls; returns the last transition.
fn feed(
    b: &Breaker,
    mut st: BreakerState,
    now: u64,
    outcomes: &[Outcome],
) -> (Option<Transition>, BreakerState) {
    let mut last = None;
    for &o in outcomes {
        let (t, next) = b.record(st, now, o, false);
        last = t.or(last);
        st = next;
    }
    (last, st)
}

fn tripped(b: &Breaker, now: u64) -> BreakerState {
    let (t, st) = feed(b, b.initial_state(), now, &[bad(), bad(), bad()]);
    assert!(t.is_some());
    st
}

#[test]
fn opens_after_consecutive_failures() {
    let b = breaker();
    let (t, st) = feed(&b, b.initial_state(), 0, &[bad(), bad()]);
    assert_eq!((t, st.phase()), (None, BreakerPhase::Closed));
    let (t, st) = b.record(st, 0, bad(), false);
    assert_eq!(
        t,
        Some(Transition {
            from: BreakerPhase::Closed,
            to: BreakerPhase::Open,
            reason: TransitionReason::ConsecutiveFailures,
        })
    );
    assert_eq!(st.phase(), BreakerPhase::Open);
    assert_eq!(st.open_ns(), 10 * SEC);
}

#[test]
fn a_success_resets_the_consecutive_failures() {
    let b = breaker();
    let (t, st) = feed(
        &b,
        b.initial_state(),
        0,
        &[bad(), bad(), ok(), bad(), bad()],
    );
    assert_eq!(t, None);
    assert_eq!(st.consecutive_failures(), 2);
}

#[test]
fn rejects_while_open_with_the_time_left() {
    let b = breaker();
    let st = tripped(&b, SEC);
    let (p, t, _) = b.acquire(st, 4 * SEC);
    assert_eq!(
        p,
        Permit::Rejected {
            retry_after_ns: 7 * SEC
        }
    );
    assert_eq!(t, None);
}

#[test]
fn first_call_after_the_open_duration_is_a_probe_in_half_open() {
    let b = breaker();
    let st = tripped(&b, 0);
    let (p, t, st) = b.acquire(st, 10 * SEC);
    assert_eq!(p, Permit::Allowed { probe: true });
    assert_eq!(
        t.map(|t| (t.from, t.to)),
        Some((BreakerPhase::Open, BreakerPhase::HalfOpen))
    );
    assert_eq!(st.phase(), BreakerPhase::HalfOpen);
}

#[test]
fn half_open_admits_n_probes() {
    let b = breaker();
    let (_, _, st) = b.acquire(tripped(&b, 0), 10 * SEC);
    let (p2, t2, st) = b.acquire(st, 10 * SEC);
    assert_eq!((p2, t2), (Permit::Allowed { probe: true }, None));
    let (p3, _, st) = b.acquire(st, 11 * SEC);
    assert_eq!(
        p3,
        Permit::Rejected {
            retry_after_ns: 4 * SEC
        }
    );
    assert_eq!(st.phase(), BreakerPhase::HalfOpen);
}

#[test]
fn half_open_closes_after_m_successes() {
    let b = breaker();
    let (_, _, st) = b.acquire(tripped(&b, 0), 10 * SEC);
    let (_, _, st) = b.acquire(st, 10 * SEC);
    let (t, st) = b.record(st, 11 * SEC, ok(), true);
    assert_eq!((t, st.phase()), (None, BreakerPhase::HalfOpen));
    let (t, st) = b.record(st, 11 * SEC, ok(), true);
    assert_eq!(
        t,
        Some(Transition {
            from: BreakerPhase::HalfOpen,
            to: BreakerPhase::Closed,
            reason: TransitionReason::ProbesSucceeded,
        })
    );
    assert_eq!(b.acquire(st, 11 * SEC).0, Permit::Allowed { probe: false });
}

#[test]
fn half_open_reopens_on_a_failed_probe() {
    let b = breaker();
    let (_, _, st) = b.acquire(tripped(&b, 0), 10 * SEC);
    let (t, st) = b.record(st, 12 * SEC, bad(), true);
    assert_eq!(t.map(|t| t.reason), Some(TransitionReason::ProbeFailed));
    assert_eq!(st.phase(), BreakerPhase::Open);
    assert_eq!(st.deadline_ns(), 12 * SEC + 20 * SEC);
}

#[test]
fn half_open_ignores_outcomes_of_calls_admitted_while_closed() {
    let b = breaker();
    let (_, _, st) = b.acquire(tripped(&b, 0), 10 * SEC);
    let (t, after) = b.record(st, 11 * SEC, bad(), false);
    assert_eq!((t, after), (None, st));
}

#[test]
fn late_probe_outcomes_beyond_those_admitted_are_ignored() {
    let b = Breaker::builder()
        .consecutive_failures(1)
        .half_open(3, 2, SEC)
        .build()
        .unwrap();
    let st = feed(&b, b.initial_state(), 0, &[bad()]).1;
    let (_, _, st) = b.acquire(st, 30 * SEC);
    let (t, st) = b.record(st, 30 * SEC, ok(), true);
    assert_eq!(t, None);
    // A second success with only one probe admitted comes from an earlier HALF_OPEN period.
    let (t, after) = b.record(st, 30 * SEC, ok(), true);
    assert_eq!((t, after), (None, st));
}

#[test]
fn outstanding_probes_that_never_report_reopen_after_the_probe_timeout() {
    let b = breaker();
    let (_, _, st) = b.acquire(tripped(&b, 0), 10 * SEC);
    let (_, _, st) = b.acquire(st, 11 * SEC);
    assert!(matches!(
        b.acquire(st, 16 * SEC - 1).0,
        Permit::Rejected { retry_after_ns: 1 }
    ));
    let (p, t, st) = b.acquire(st, 16 * SEC);
    assert_eq!(t.map(|t| t.reason), Some(TransitionReason::ProbeTimeout));
    assert_eq!(
        p,
        Permit::Rejected {
            retry_after_ns: 20 * SEC
        }
    );
    assert_eq!(st.phase(), BreakerPhase::Open);
}

#[test]
fn backoff_grows_and_caps() {
    let b = breaker();
    let mut st = tripped(&b, 0);
    let mut seen = vec![st.open_ns()];
    for _ in 0..4 {
        let now = st.deadline_ns();
        let (_, _, half) = b.acquire(st, now);
        st = b.record(half, now, bad(), true).1;
        seen.push(st.open_ns());
    }
    assert_eq!(seen, [10 * SEC, 20 * SEC, 35 * SEC, 35 * SEC, 35 * SEC]);
    // Closing resets the backoff: the next trip opens for the base duration again.
    let now = st.deadline_ns();
    let (_, _, half) = b.acquire(st, now);
    let (_, half) = b.record(half, now, ok(), true);
    let (_, _, half) = b.acquire(half, now);
    let (t, closed) = b.record(half, now, ok(), true);
    assert_eq!(t.map(|t| t.to), Some(BreakerPhase::Closed));
    let st = feed(&b, closed, now, &[bad(), bad(), bad()]).1;
    assert_eq!(st.open_ns(), 10 * SEC);
}

#[test]
fn opens_on_failure_ratio_once_min_calls_are_in_the_window() {
    let b = Breaker::builder()
        .window(BreakerWindow::Count { calls: 10 }, 4)
        .failure_ratio(500)
        .build()
        .unwrap();
    let (t, st) = feed(&b, b.initial_state(), 0, &[bad(), bad(), ok()]);
    assert_eq!(t, None, "2 of 3 is above 50 % but below min_calls");
    let (t, _) = b.record(st, 0, ok(), false);
    assert_eq!(
        t.map(|t| t.reason),
        Some(TransitionReason::FailureRatio),
        "2 of 4 = 50 %"
    );
}

#[test]
fn count_window_forgets_calls_older_than_its_size() {
    let b = Breaker::builder()
        .window(BreakerWindow::Count { calls: 4 }, 4)
        .failure_ratio(750)
        .build()
        .unwrap();
    let (t, st) = feed(
        &b,
        b.initial_state(),
        0,
        &[bad(), bad(), ok(), ok(), ok(), bad()],
    );
    assert_eq!(t, None, "window holds ok ok ok bad");
    let (t, _) = feed(&b, st, 0, &[bad(), bad()]);
    assert_eq!(
        t.map(|t| t.reason),
        Some(TransitionReason::FailureRatio),
        "ok bad bad bad"
    );
}

#[test]
fn time_window_forgets_buckets_older_than_the_window() {
    let b = Breaker::builder()
        .window(
            BreakerWindow::Time {
                window_ns: 10 * SEC,
                buckets: 10,
            },
            3,
        )
        .failure_ratio(1000)
        .build()
        .unwrap();
    let (_, st) = feed(&b, b.initial_state(), 0, &[bad(), ok()]);
    // 10 s later the first bucket has left the window: only failures remain.
    let (t, st) = feed(&b, st, 10 * SEC, &[bad(), bad()]);
    assert_eq!(t, None, "2 calls are below min_calls");
    let (t, _) = b.record(st, 10 * SEC, bad(), false);
    assert_eq!(t.map(|t| t.reason), Some(TransitionReason::FailureRatio));
}

#[test]
fn opens_on_slow_call_ratio() {
    let b = Breaker::builder()
        .window(BreakerWindow::Count { calls: 4 }, 2)
        .slow_calls(500 * MS, 1000)
        .build()
        .unwrap();
    let (t, st) = b.record(b.initial_state(), 0, Outcome::success(500 * MS), false);
    assert_eq!(t, None);
    let (t, _) = b.record(st, 0, Outcome::success(499 * MS), false);
    assert_eq!(t, None, "just under the threshold is not slow");
    let (t, _) = b.record(st, 0, Outcome::success(2 * SEC), false);
    assert_eq!(t.map(|t| t.reason), Some(TransitionReason::SlowCallRatio));
}

#[test]
fn a_slow_probe_fails_the_probe() {
    let b = Breaker::builder()
        .window(BreakerWindow::Count { calls: 2 }, 1)
        .slow_calls(SEC, 1000)
        .build()
        .unwrap();
    let (_, st) = b.record(b.initial_state(), 0, Outcome::success(SEC), false);
    let (_, _, st) = b.acquire(st, st.deadline_ns());
    let (t, _) = b.record(st, 0, Outcome::success(SEC), true);
    assert_eq!(t.map(|t| t.reason), Some(TransitionReason::ProbeFailed));
}

#[test]
fn metrics_only_never_rejects_but_reports_transitions() {
    let b = Breaker::builder()
        .mode(BreakerMode::MetricsOnly)
        .consecutive_failures(1)
        .build()
        .unwrap();
    let (t, st) = b.record(b.initial_state(), 0, bad(), false);
    assert_eq!(t.map(|t| t.to), Some(BreakerPhase::Open));
    let (p, _, _) = b.acquire(st, 1);
    assert_eq!(
        p,
        Permit::ShadowRejected {
            retry_after_ns: 30 * SEC - 1
        }
    );
    assert!(p.forwards() && !p.records());
}

#[test]
fn forced_open_rejects_until_the_mode_changes() {
    let forced = Breaker::builder()
        .mode(BreakerMode::ForcedOpen)
        .consecutive_failures(1)
        .build()
        .unwrap();
    let normal = Breaker::builder().consecutive_failures(1).build().unwrap();
    let (p, t, st) = forced.acquire(normal.initial_state(), 0);
    assert_eq!(
        p,
        Permit::Rejected {
            retry_after_ns: Permit::UNTIL_RELEASED
        }
    );
    assert_eq!(
        t,
        Some(Transition {
            from: BreakerPhase::Closed,
            to: BreakerPhase::ForcedOpen,
            reason: TransitionReason::ModeChanged,
        })
    );
    assert_eq!(
        forced.acquire(st, 0).1,
        None,
        "the transition is reported once"
    );
    let (p, t, _) = normal.acquire(st, 0);
    assert_eq!(p, Permit::Allowed { probe: false });
    assert_eq!(
        t.map(|t| (t.from, t.to)),
        Some((BreakerPhase::ForcedOpen, BreakerPhase::Closed))
    );
}

#[test]
fn disabled_allows_everything_and_records_nothing() {
    let b = Breaker::builder()
        .mode(BreakerMode::Disabled)
        .consecutive_failures(1)
        .build()
        .unwrap();
    let st = b.initial_state();
    assert_eq!(st.phase(), BreakerPhase::Disabled);
    let (t, after) = feed(&b, st, 0, &[bad(), bad(), bad()]);
    assert_eq!((t, after), (None, st));
    assert_eq!(b.acquire(st, 0).0, Permit::Allowed { probe: false });
}

#[test]
fn time_going_backwards_keeps_open_closed_to_calls() {
    let b = breaker();
    let st = tripped(&b, 100 * SEC);
    let (p, t, after) = b.acquire(st, 0);
    assert_eq!(
        p,
        Permit::Rejected {
            retry_after_ns: 110 * SEC
        }
    );
    assert_eq!((t, after), (None, st));
}

#[test]
fn a_deadline_past_the_end_of_time_saturates() {
    let b = breaker();
    let st = tripped(&b, u64::MAX - 1);
    assert_eq!(st.deadline_ns(), u64::MAX);
    assert!(matches!(
        b.acquire(st, u64::MAX - 1).0,
        Permit::Rejected { retry_after_ns: 1 }
    ));
}

#[test]
fn state_bytes_round_trip_and_bad_bytes_are_errors() {
    let b = Breaker::builder()
        .window(
            BreakerWindow::Time {
                window_ns: SEC,
                buckets: 10,
            },
            1,
        )
        .failure_ratio(900)
        .build()
        .unwrap();
    let (_, st) = feed(&b, b.initial_state(), 5 * SEC, &[ok(), bad()]);
    assert_eq!(BreakerState::from_bytes(&st.to_bytes()), Ok(st));
    assert_eq!(
        BreakerState::phase_of_bytes(&st.to_bytes()),
        Some(st.phase())
    );
    assert_eq!(BreakerState::LEN, 159);
    assert_eq!(BreakerState::phase_of_bytes(&[0x61]), None);
    assert_eq!(
        BreakerState::from_bytes(&[0x61]),
        Err(BreakerStateError::Length {
            expected: 159,
            actual: 1
        })
    );
    let mut bytes = st.to_bytes();
    for phase in 0..=4 {
        bytes[1] = phase;
        let decoded = BreakerState::from_bytes(&bytes).map(|s| s.phase());
        assert_eq!(BreakerState::phase_of_bytes(&bytes), decoded.ok());
    }
    bytes[1] = 9;
    assert_eq!(BreakerState::phase_of_bytes(&bytes), None);
    assert_eq!(
        BreakerState::from_bytes(&bytes),
        Err(BreakerStateError::Field {
            field: "phase",
            value: 9
        })
    );
    bytes[0] = 0x11;
    assert!(matches!(
        BreakerState::from_bytes(&bytes),
        Err(BreakerStateError::Tag { .. })
    ));
}

#[test]
fn bytes_api_starts_from_the_initial_state() {
    let b = breaker();
    let (p, t, bytes) = b.acquire_bytes(None, 0).unwrap();
    assert_eq!((p, t), (Permit::Allowed { probe: false }, None));
    let (t, bytes) = b.record_bytes(Some(&bytes), 0, bad(), false).unwrap();
    assert_eq!(t, None);
    assert_eq!(
        BreakerState::from_bytes(&bytes)
            .unwrap()
            .consecutive_failures(),
        1
    );
    assert!(b.acquire_bytes(Some(&[1, 2, 3]), 0).is_err());
}

#[test]
fn builder_rejects_impossible_breakers_naming_the_field() {
    let base = Breaker::builder().consecutive_failures(1);
    let err = |b: BreakerBuilder| b.build().unwrap_err();
    assert_eq!(err(Breaker::builder()), BreakerError::NoTripCondition);
    assert_eq!(
        err(Breaker::builder().consecutive_failures(0)),
        BreakerError::Zero {
            field: "consecutive_failures"
        }
    );
    assert_eq!(
        err(base.failure_ratio(1001)).to_string(),
        "failure_ratio must be above 0 and at most 1 (1 to 1000 per mille), got 1001 per mille"
    );
    assert_eq!(
        err(base.failure_ratio(500)),
        BreakerError::MissingWindow {
            field: "failure_ratio"
        }
    );
    assert_eq!(
        err(base
            .slow_calls(0, 500)
            .window(BreakerWindow::Count { calls: 10 }, 1)),
        BreakerError::Zero {
            field: "slow_call_threshold_ns"
        }
    );
    assert_eq!(
        err(base
            .failure_ratio(500)
            .window(BreakerWindow::Count { calls: 129 }, 1)),
        BreakerError::TooLarge {
            field: "window.calls",
            got: 129,
            max: 128
        }
    );
    assert_eq!(
        err(base
            .failure_ratio(500)
            .window(BreakerWindow::Count { calls: 10 }, 11)),
        BreakerError::MinCallsAboveWindow {
            min_calls: 11,
            calls: 10
        }
    );
    assert_eq!(
        err(base.failure_ratio(500).window(
            BreakerWindow::Time {
                window_ns: 0,
                buckets: 2
            },
            1
        )),
        BreakerError::Zero {
            field: "window.window_ns"
        }
    );
    assert_eq!(
        err(base.failure_ratio(500).window(
            BreakerWindow::Time {
                window_ns: 5,
                buckets: 6
            },
            1
        )),
        BreakerError::WindowShorterThanBuckets {
            window_ns: 5,
            buckets: 6
        }
    );
    assert_eq!(
        err(base.failure_ratio(500).window(
            BreakerWindow::Time {
                window_ns: SEC,
                buckets: 11
            },
            1
        )),
        BreakerError::TooLarge {
            field: "window.buckets",
            got: 11,
            max: 10
        }
    );
    assert_eq!(
        err(base.open(SEC, 999, SEC)),
        BreakerError::BackoffBelowOne { got: 999 }
    );
    assert_eq!(
        err(base.open(2 * SEC, 1000, SEC)),
        BreakerError::MaxOpenBelowOpen {
            open_ns: 2 * SEC,
            max_open_ns: SEC
        }
    );
    assert_eq!(
        err(base.half_open(2, 3, SEC)),
        BreakerError::SuccessesAboveProbes {
            successes: 3,
            probes: 2
        }
    );
    assert_eq!(
        err(base.half_open(1, 1, 0)),
        BreakerError::Zero {
            field: "half_open.probe_timeout_ns"
        }
    );
}

#[test]
fn lazy_acquire_reads_the_clock_only_while_open_or_half_open() {
    let b = breaker();
    let decide = |stored: Option<&[u8]>, now: u64| {
        let mut reads = 0;
        let lazy = b
            .acquire_bytes_lazy(stored, || {
                reads += 1;
                now
            })
            .unwrap();
        let eager = b.acquire_bytes(stored, now).unwrap();
        assert_eq!(
            (lazy.0, lazy.1, lazy.2),
            eager,
            "same decision as acquire_bytes"
        );
        assert_eq!(
            lazy.3,
            (reads == 1).then_some(now),
            "reports the time it read"
        );
        (reads, eager.2)
    };
    // CLOSED: no clock read, however late it is.
    let (reads, closed) = decide(None, 42 * SEC);
    assert_eq!(reads, 0);
    let (_, open) = feed(
        &b,
        BreakerState::from_bytes(&closed).unwrap(),
        SEC,
        &[bad(); 3],
    );
    assert_eq!(open.phase(), BreakerPhase::Open);
    // OPEN before and after its deadline, then HALF_OPEN: the clock decides.
    assert_eq!(decide(Some(&open.to_bytes()), 2 * SEC).0, 1);
    let (reads, half_open) = decide(Some(&open.to_bytes()), 11 * SEC);
    assert_eq!(reads, 1);
    assert_eq!(
        BreakerState::from_bytes(&half_open).unwrap().phase(),
        BreakerPhase::HalfOpen
    );
    assert_eq!(decide(Some(&half_open), 12 * SEC).0, 1);
    // FORCED_OPEN rejects without asking for the time.
    let forced = Breaker::builder()
        .mode(BreakerMode::ForcedOpen)
        .consecutive_failures(3)
        .build()
        .unwrap();
    let mut reads = 0;
    let (permit, ..) = forced
        .acquire_bytes_lazy(Some(&open.to_bytes()), || {
            reads += 1;
            0
        })
        .unwrap();
    assert!(matches!(permit, Permit::Rejected { .. }));
    assert_eq!(reads, 0);
}

#[test]
fn a_success_is_timeless_only_without_slow_calls_and_ratio_windows() {
    let b = breaker();
    assert!(b.success_is_timeless());
    // Its record is the same whatever `now` and duration say, in every phase.
    let closed = feed(&b, b.initial_state(), 0, &[bad(), bad()]).1;
    let open = feed(&b, closed, SEC, &[bad()]).1;
    let (_, _, half_open) = b.acquire(open, 20 * SEC);
    for (state, probe) in [(closed, false), (open, false), (half_open, true)] {
        let early = b.record(state, 0, Outcome::success(0), probe);
        let late = b.record(state, u64::MAX, Outcome::success(u64::MAX), probe);
        assert_eq!(early, late);
    }
    let slow = Breaker::builder()
        .consecutive_failures(3)
        .slow_calls(SEC, 1000)
        .window(BreakerWindow::Count { calls: 10 }, 1)
        .build()
        .unwrap();
    assert!(!slow.success_is_timeless());
    let ratio = Breaker::builder()
        .failure_ratio(500)
        .window(BreakerWindow::Count { calls: 10 }, 10)
        .build()
        .unwrap();
    assert!(!ratio.success_is_timeless());
}
