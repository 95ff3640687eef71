//! Property tests for the invariants each algorithm documents, over random request traces.

use proptest::prelude::*;

use super::*;

/// One request of a trace: nanoseconds since the previous request, and its cost in units.
type Step = (u64, u32);

/// A trace of up to 200 requests, `max_gap` ns apart at most, costing 0..=`max_cost` each.
fn trace(max_gap: u64, max_cost: u32) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec((0..=max_gap, 0..=max_cost), 1..200)
}

/// Runs a trace from a fresh state; returns `(now, cost, decision)` for every request.
fn run<L: RateLimiter>(limiter: &L, start: u64, steps: &[Step]) -> Vec<(u64, u32, Decision)> {
    let mut state = L::State::default();
    let mut now = start;
    steps
        .iter()
        .map(|&(gap, cost)| {
            now = now.saturating_add(gap);
            let (decision, next) = limiter.decide(state, now, cost);
            // Every state a decision produces survives the trip through shared data.
            assert_eq!(L::State::from_bytes(next.to_bytes().as_ref()), Ok(next));
            state = next;
            (now, cost, decision)
        })
        .collect()
}

/// Admitted `(time, cost)` pairs of a run.
fn admitted(log: &[(u64, u32, Decision)]) -> Vec<(u64, u64)> {
    log.iter()
        .filter(|(_, _, d)| d.is_admitted())
        .map(|&(t, c, _)| (t, u64::from(c)))
        .collect()
}

/// Units admitted in `[from, from + len)`.
fn units_in(adm: &[(u64, u64)], from: u64, len: u64) -> u64 {
    adm.iter()
        .filter(|(t, _)| *t >= from && *t - from < len)
        .map(|(_, c)| c)
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn sliding_window_never_admits_more_than_the_limit_in_any_window(
        limit in 1u32..20,
        window in 1u64..5_000,
        sub_windows in 1u32..=MAX_SUB_WINDOWS,
        start in 0u64..10_000,
        steps in trace(400, 5),
    ) {
        prop_assume!(window >= u64::from(sub_windows));
        let sw = SlidingWindow::try_new(limit, window, sub_windows).unwrap();
        let adm = admitted(&run(&sw, start, &steps));
        // The busiest window of length `window` starts at an admitted request.
        for &(t, _) in &adm {
            prop_assert!(units_in(&adm, t, window) <= u64::from(limit), "window at {t}");
        }
    }

    #[test]
    fn fixed_window_never_admits_more_than_the_limit_per_aligned_window(
        limit in 1u32..20,
        window in 1u64..5_000,
        steps in trace(400, 5),
    ) {
        let fw = FixedWindow::try_new(limit, window).unwrap();
        let adm = admitted(&run(&fw, 0, &steps));
        for &(t, _) in &adm {
            prop_assert!(units_in(&adm, t - t % window, window) <= u64::from(limit));
        }
    }

    #[test]
    fn approx_sliding_window_stays_within_its_documented_bound(
        limit in 1u32..20,
        window in 1u64..5_000,
        steps in trace(400, 5),
    ) {
        let aw = ApproxSlidingWindow::try_new(limit, window).unwrap();
        let adm = admitted(&run(&aw, 0, &steps));
        let l = u64::from(limit);
        // Intervals starting at, and ending just after, each admitted request.
        let starts = adm.iter().flat_map(|&(t, _)| [t, (t + 1).saturating_sub(window)]);
        for s in starts {
            let end = s + window; // exclusive
            let k_start = (end - 1) - (end - 1) % window; // aligned window holding the last ns
            let x = end - k_start; // 1..=window
            let prev = k_start.checked_sub(window).map_or(0, |p| units_in(&adm, p, window));
            let count = units_in(&adm, s, window);
            prop_assert!(units_in(&adm, k_start, window) <= l);
            prop_assert!(count <= l + prev * x / window, "[{s}, {end}): {count} > {l} + {prev}·{x}/{window}");
            prop_assert!(count <= 2 * l);
        }
    }

    #[test]
    fn approx_sliding_window_admits_when_two_windows_hold_room(
        limit in 1u32..20,
        window in 1u64..5_000,
        steps in trace(400, 5),
    ) {
        let aw = ApproxSlidingWindow::try_new(limit, window).unwrap();
        let log = run(&aw, 0, &steps);
        let adm = admitted(&log);
        for &(t, cost, d) in &log {
            let prev_start = (t - t % window).saturating_sub(window);
            let before: u64 = adm.iter().filter(|(at, _)| *at >= prev_start && *at < t).map(|(_, c)| c).sum();
            let same_time: u64 = log.iter().filter(|(at, _, dd)| *at == t && dd.is_admitted()).count() as u64;
            // Only requests strictly before `t` are known to have been decided first; skip ties.
            if same_time == 0 && before + u64::from(cost) <= u64::from(limit) {
                prop_assert!(d.is_admitted(), "rejected at {t} with {before} in two windows");
            }
        }
    }

    #[test]
    fn token_bucket_never_admits_more_than_burst_plus_rate_times_t(
        rate in 1u32..50,
        period in 1_000u64..100_000,
        burst in 1u32..20,
        start in 0u64..1_000_000,
        steps in trace(2_000, 4),
    ) {
        let tb = TokenBucket::try_new(rate, period, burst).unwrap();
        let adm = admitted(&run(&tb, start, &steps));
        for (i, &(a, _)) in adm.iter().enumerate() {
            let mut units = 0;
            for &(b, c) in &adm[i..] {
                units += c;
                let allowance = u64::from(burst) + (b - a) * u64::from(rate) / period;
                prop_assert!(units <= allowance, "[{a}, {b}]: {units} > {allowance}");
            }
        }
    }

    #[test]
    fn token_bucket_admits_whenever_tokens_remain(
        rate in 1u32..50,
        burst in 1u32..20,
        steps in trace(2_000, 4),
    ) {
        // Every decision's `remaining` is exact: a unit request right after one with
        // remaining > 0 is admitted.
        let tb = TokenBucket::try_new(rate, 100_000, burst).unwrap();
        let mut state = TokenBucketState::default();
        let mut now = 0;
        for (gap, cost) in steps {
            now += gap;
            let (d, next) = tb.decide(state, now, cost);
            if d.remaining > 0 {
                prop_assert!(tb.decide(next, now, 1).0.is_admitted());
            } else {
                prop_assert!(!tb.decide(next, now, 1).0.is_admitted());
            }
            state = next;
        }
    }

    #[test]
    fn pacing_never_schedules_two_requests_closer_than_the_interval_or_delays_past_max(
        rate in 1u32..50,
        period in 1_000u64..100_000,
        queue in 1u64..8,
        start in 0u64..1_000_000,
        steps in trace(5_000, 3),
    ) {
        let lb = LeakyBucket::try_new(rate, period, queue * period.div_ceil(u64::from(rate))).unwrap();
        let t = lb.interval_ns().get();
        let mut last: Option<(u64, u64)> = None; // (start, cost) of the previous forwarded request
        for (now, cost, d) in run(&lb, start, &steps) {
            let delay = match d.verdict {
                Verdict::Allow => 0,
                Verdict::Delay(ns) => ns,
                Verdict::Reject => {
                    prop_assert!(d.retry_after_ns > 0);
                    continue;
                }
            };
            prop_assert!(delay <= lb.max_delay_ns().get());
            let begin = now + delay;
            if let Some((prev, prev_cost)) = last {
                prop_assert!(begin >= prev + prev_cost * t, "{begin} too close to {prev}");
            }
            last = Some((begin, u64::from(cost)));
        }
    }

    #[test]
    fn retry_after_is_exactly_when_the_request_would_pass(
        limit in 1u32..10,
        // ≥ limit: the leaky bucket refuses an emission interval under 1 ns.
        window in 10u64..2_000,
        sub_windows in 1u32..=MAX_SUB_WINDOWS,
        steps in trace(300, 3),
    ) {
        let sw = SlidingWindow::try_new(limit, window, sub_windows).unwrap();
        let aw = ApproxSlidingWindow::try_new(limit, window).unwrap();
        let fw = FixedWindow::try_new(limit, window).unwrap();
        let tb = TokenBucket::try_new(limit, window, limit).unwrap();
        let lb = LeakyBucket::try_new(limit, window, window).unwrap();
        check_retry(&sw, &steps)?;
        check_retry(&aw, &steps)?;
        check_retry(&fw, &steps)?;
        check_retry(&tb, &steps)?;
        check_retry(&lb, &steps)?;
    }

    #[test]
    fn time_going_backwards_or_jumping_never_panics(
        limit in 1u32..=u32::MAX,
        window in 1u64..=u64::MAX,
        nows in prop::collection::vec((any::<u64>(), any::<u32>()), 1..50),
    ) {
        let sub = u32::try_from(window.min(u64::from(MAX_SUB_WINDOWS))).unwrap();
        let sw = SlidingWindow::try_new(limit, window, sub).unwrap();
        let aw = ApproxSlidingWindow::try_new(limit, window).unwrap();
        let fw = FixedWindow::try_new(limit, window).unwrap();
        let rate = u32::try_from(window.min(u64::from(limit))).unwrap();
        let tb = TokenBucket::try_new(rate, window, 1).unwrap();
        let lb = LeakyBucket::try_new(rate, window, u64::MAX).unwrap();
        let (mut s1, mut s2, mut s3, mut s4, mut s5) = Default::default();
        for (now, cost) in nows {
            (_, s1) = sw.decide(s1, now, cost);
            (_, s2) = aw.decide(s2, now, cost);
            (_, s3) = fw.decide(s3, now, cost);
            (_, s4) = tb.decide(s4, now, cost);
            (_, s5) = lb.decide(s5, now, cost);
        }
    }

    #[test]
    fn decisions_on_arbitrary_states_never_panic(bytes in prop::collection::vec(any::<u8>(), 41), now: u64, cost: u32) {
        let sw = SlidingWindow::try_new(3, 1_000, 7).unwrap();
        let aw = ApproxSlidingWindow::try_new(3, 1_000).unwrap();
        let fw = FixedWindow::try_new(3, 1_000).unwrap();
        let tb = TokenBucket::try_new(3, 1_000, 3).unwrap();
        let lb = LeakyBucket::try_new(3, 1_000, 1_000).unwrap();
        let tagged = |tag: u8, len: usize| {
            let mut b = bytes[..len].to_vec();
            b[0] = tag;
            b
        };
        let _ = sw.decide_bytes(Some(&tagged(0x21, SlidingWindowState::LEN)), now, cost).unwrap();
        let _ = aw.decide_bytes(Some(&tagged(0x31, ApproxSlidingWindowState::LEN)), now, cost).unwrap();
        let _ = fw.decide_bytes(Some(&tagged(0x11, FixedWindowState::LEN)), now, cost).unwrap();
        let _ = tb.decide_bytes(Some(&tagged(0x41, TokenBucketState::LEN)), now, cost).unwrap();
        let _ = lb.decide_bytes(Some(&tagged(0x51, LeakyBucketState::LEN)), now, cost).unwrap();
    }

    #[test]
    fn state_bytes_round_trip_is_identity(bytes in prop::collection::vec(any::<u8>(), 41)) {
        round_trip::<FixedWindowState>(&bytes, 0x11)?;
        round_trip::<SlidingWindowState>(&bytes, 0x21)?;
        round_trip::<ApproxSlidingWindowState>(&bytes, 0x31)?;
        round_trip::<TokenBucketState>(&bytes, 0x41)?;
        round_trip::<LeakyBucketState>(&bytes, 0x51)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_from_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        // Ok exactly when length and tag match; an error otherwise.
        check_decode::<FixedWindowState>(&bytes, 0x11)?;
        check_decode::<SlidingWindowState>(&bytes, 0x21)?;
        check_decode::<ApproxSlidingWindowState>(&bytes, 0x31)?;
        check_decode::<TokenBucketState>(&bytes, 0x41)?;
        check_decode::<LeakyBucketState>(&bytes, 0x51)?;
    }
}

/// A rejected request retried exactly `retry_after_ns` later (from the same state) passes,
/// and at no time before that does it (the filters rely on this to answer repeated rejections
/// from a state they read earlier: while nothing is admitted, nothing changes).
fn check_retry<L: RateLimiter>(limiter: &L, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut state = L::State::default();
    let mut now = 0u64;
    for &(gap, cost) in steps {
        now += gap;
        let (d, next) = limiter.decide(state, now, cost);
        if !d.is_admitted() && d.retry_after_ns != Decision::NEVER {
            prop_assert!(d.retry_after_ns > 0);
            prop_assert!(limiter
                .decide(state, now + d.retry_after_ns, cost)
                .0
                .is_admitted());
            let r = d.retry_after_ns;
            for wait in [1, r / 3, r / 2, r - r / 4, r - 1] {
                let before = wait.min(r - 1);
                prop_assert!(
                    !limiter.decide(state, now + before, cost).0.is_admitted(),
                    "admitted {before} ns after a rejection that said {r}"
                );
            }
        }
        state = next;
    }
    Ok(())
}

fn round_trip<S: LimiterState>(bytes: &[u8], tag: u8) -> Result<(), TestCaseError> {
    let len = S::default().to_bytes().as_ref().len();
    let mut b = bytes[..len].to_vec();
    b[0] = tag;
    let state = S::from_bytes(&b).unwrap();
    let encoded = state.to_bytes();
    prop_assert_eq!(encoded.as_ref(), &b[..]);
    prop_assert_eq!(S::from_bytes(state.to_bytes().as_ref()), Ok(state));
    Ok(())
}

fn check_decode<S: LimiterState>(bytes: &[u8], tag: u8) -> Result<(), TestCaseError> {
    let len = S::default().to_bytes().as_ref().len();
    let ok = bytes.len() == len && bytes.first() == Some(&tag);
    prop_assert_eq!(S::from_bytes(bytes).is_ok(), ok);
    Ok(())
}

#[test]
fn decide_bytes_starts_fresh_without_state_and_refuses_another_algorithms_state() {
    let tb = TokenBucket::try_new(1, 1_000, 1).unwrap();
    let (d, bytes) = tb.decide_bytes(None, 0, 1).unwrap();
    assert!(d.is_admitted());
    assert!(!tb.decide_bytes(Some(&bytes), 0, 1).unwrap().0.is_admitted());
    let lb = LeakyBucket::try_new(1, 1_000, 1_000).unwrap();
    assert_eq!(
        lb.decide_bytes(Some(&bytes), 0, 1).unwrap_err(),
        StateError::Tag {
            expected: 0x51,
            found: 0x41
        }
    );
    assert_eq!(
        lb.decide_bytes(Some(&[]), 0, 1).unwrap_err().to_string(),
        "state must be 9 bytes, got 0"
    );
}
