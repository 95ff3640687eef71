//! Unit tests: each balancer's distribution over many seeded picks, exact sequences, locality
//! fallback and the outlier-ejection rules.

use super::*;

const NS_PER_MS: u64 = 1_000_000;

/// Instances `i0`, `i1`, … with the given weights, all healthy.
pub(super) fn weighted(weights: &[u32]) -> Vec<Instance> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Instance::try_new(format!("i{i}"), format!("10.0.0.{i}"), 8080, w).unwrap())
        .collect()
}

fn all(_: usize) -> bool {
    true
}

/// Counts picks per index over `rounds` calls of `pick`.
fn histogram(n: usize, rounds: usize, mut pick: impl FnMut() -> Option<usize>) -> Vec<u64> {
    let mut counts = vec![0u64; n];
    for _ in 0..rounds {
        counts[pick().expect("an eligible instance")] += 1;
    }
    counts
}

/// Asserts the counts fit the expected shares by Pearson's chi-square: the statistic must
/// stay below `dof + 5·sqrt(2·dof)` (five standard deviations above its mean).
fn assert_chi_square(counts: &[u64], shares: &[f64]) {
    let total: u64 = counts.iter().sum();
    let share_sum: f64 = shares.iter().sum();
    let mut chi = 0.0;
    let mut dof = 0.0_f64;
    for (&c, &s) in counts.iter().zip(shares) {
        let expected = total as f64 * s / share_sum;
        if expected == 0.0 {
            assert_eq!(c, 0, "picked an instance with share 0: {counts:?}");
            continue;
        }
        chi += (c as f64 - expected).powi(2) / expected;
        dof += 1.0;
    }
    dof -= 1.0;
    let limit = dof + 5.0 * (2.0 * dof).sqrt();
    assert!(
        chi <= limit,
        "chi-square {chi:.1} > {limit:.1}: {counts:?} vs {shares:?}"
    );
}

#[test]
fn round_robin_cycles_through_instances_in_order() {
    let xs = weighted(&[1, 5, 1]);
    let mut rr = RoundRobinState::default();
    let seq: Vec<_> = (0..6).map(|_| rr.pick(&xs, all).unwrap()).collect();
    assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn round_robin_skips_ineligible_instances() {
    let mut xs = weighted(&[1, 1, 1, 1]);
    xs[1] = xs[1].clone().with_healthy(false);
    let mut rr = RoundRobinState::default();
    let seq: Vec<_> = (0..6).map(|_| rr.pick(&xs, |i| i != 3).unwrap()).collect();
    assert_eq!(seq, [0, 2, 0, 2, 0, 2]);
    assert_eq!(rr.pick(&xs, |_| false), None);
    assert_eq!(rr.pick(&[], all), None);
}

#[test]
fn round_robin_spreads_evenly() {
    let xs = weighted(&[1; 7]);
    let mut rr = RoundRobinState::default();
    let counts = histogram(7, 7000, || rr.pick(&xs, all));
    assert!(counts.iter().all(|&c| c == 1000), "{counts:?}");
}

#[test]
fn smooth_weighted_gives_nginx_sequence_for_5_1_1() {
    let xs = weighted(&[5, 1, 1]);
    let mut swrr = SmoothWeightedState::default();
    let seq: String = (0..14)
        .map(|_| ["a", "b", "c"][swrr.pick(&xs, all).unwrap()])
        .collect();
    assert_eq!(seq, "aabacaaaabacaa");
}

#[test]
fn smooth_weighted_cycle_repeats_the_nginx_sequence() {
    let xs = weighted(&[5, 1, 1]);
    let mut cycle = SmoothWeightedCycle::new(&xs).unwrap();
    assert_eq!(cycle.len(), 7);
    let seq: String = (0..14)
        .map(|_| ["a", "b", "c"][cycle.pick(&xs, all).unwrap()])
        .collect();
    assert_eq!(seq, "aabacaaaabacaa");
}

#[test]
fn smooth_weighted_cycle_equals_the_walk_over_many_cycles() {
    let xs = weighted(&[3, 2, 9, 1, 7, 7, 4]);
    let mut cycle = SmoothWeightedCycle::new(&xs).unwrap();
    let mut walk = SmoothWeightedState::default();
    for _ in 0..(33 * 5) {
        assert_eq!(cycle.pick(&xs, all), walk.pick(&xs, all));
    }
}

#[test]
fn smooth_weighted_cycle_gives_skipped_turns_to_the_others_in_proportion() {
    let xs = weighted(&[3, 2, 9, 1]);
    let mut cycle = SmoothWeightedCycle::new(&xs).unwrap();
    let counts = histogram(4, 600, || cycle.pick(&xs, |i| i != 2));
    assert_eq!(counts, [300, 200, 0, 100]);
    assert_eq!(cycle.pick(&xs, |_| false), None, "nothing admitted");
}

#[test]
fn smooth_weighted_cycle_is_not_built_when_too_long_or_empty() {
    let heavy = weighted(&[4_000, 97]);
    assert!(SmoothWeightedCycle::new(&heavy).is_none());
    assert!(SmoothWeightedCycle::new(&[]).is_none());
    let mut sick = weighted(&[5, 1, 1]);
    sick[0] = sick[0].clone().with_healthy(false);
    let mut cycle = SmoothWeightedCycle::new(&sick).unwrap();
    assert_eq!(cycle.len(), 2, "an unhealthy instance has no turn");
    assert_eq!(histogram(3, 10, || cycle.pick(&sick, all)), [0, 5, 5]);
    let fits = weighted(&[4_000, 96]);
    assert_eq!(
        SmoothWeightedCycle::new(&fits).map(|c| c.len()),
        Some(4_096)
    );
}

#[test]
fn smooth_weighted_follows_weights_and_skips_ineligible() {
    let xs = weighted(&[3, 2, 9, 1]);
    let mut swrr = SmoothWeightedState::default();
    let counts = histogram(4, 1500, || swrr.pick(&xs, all));
    assert_eq!(counts, [300, 200, 900, 100]);
    let mut swrr = SmoothWeightedState::default();
    let counts = histogram(4, 1200, || swrr.pick(&xs, |i| i != 2));
    assert_eq!(counts, [600, 400, 0, 200]);
}

#[test]
fn random_is_uniform_over_eligible_instances() {
    let mut xs = weighted(&[1; 10]);
    let mut rng = SplitMix64::new(42);
    let counts = histogram(10, 100_000, || pick_random(&xs, all, &mut rng));
    assert_chi_square(&counts, &[1.0; 10]);
    xs[3] = xs[3].clone().with_healthy(false);
    // Mostly ineligible: exercises the counting fallback.
    let counts = histogram(10, 50_000, || pick_random(&xs, |i| i >= 2, &mut rng));
    assert_chi_square(&counts, &[0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    assert_eq!(pick_random(&xs, |_| false, &mut rng), None);
}

#[test]
fn weighted_random_follows_weights() {
    let xs = weighted(&[1, 2, 3, 10, 4]);
    let mut rng = SplitMix64::new(7);
    let counts = histogram(5, 200_000, || pick_weighted_random(&xs, all, &mut rng));
    assert_chi_square(&counts, &[1.0, 2.0, 3.0, 10.0, 4.0]);
    let counts = histogram(5, 100_000, || {
        pick_weighted_random(&xs, |i| i != 3, &mut rng)
    });
    assert_chi_square(&counts, &[1.0, 2.0, 3.0, 0.0, 4.0]);
}

#[test]
fn least_request_is_uniform_when_loads_are_equal() {
    let xs = weighted(&[1; 8]);
    let mut rng = SplitMix64::new(3);
    let counts = histogram(8, 80_000, || {
        pick_least_request(&xs, &[5; 8], all, &mut rng)
    });
    assert_chi_square(&counts, &[1.0; 8]);
}

#[test]
fn least_request_picks_the_less_loaded_of_two() {
    // Distinct loads: the instance of rank r (0 = least loaded) wins iff it is drawn with a
    // worse one: probability 2·(n−1−r) / (n·(n−1)).
    let xs = weighted(&[1; 5]);
    let in_flight = [40, 0, 30, 10, 20]; // ranks 4, 0, 3, 1, 2
    let mut rng = SplitMix64::new(11);
    let counts = histogram(5, 100_000, || {
        pick_least_request(&xs, &in_flight, all, &mut rng)
    });
    assert_chi_square(&counts, &[0.0, 8.0, 2.0, 6.0, 4.0]);
    // One eligible instance: it is the pick.
    assert_eq!(
        pick_least_request(&xs, &in_flight, |i| i == 0, &mut rng),
        Some(0)
    );
}

#[test]
fn response_time_weighting_prefers_faster_instances() {
    let rt = ResponseTimeWeighted::try_new(1_000 * NS_PER_MS, 10 * NS_PER_MS).unwrap();
    let xs = weighted(&[1, 1, 1]);
    let mut est = [LatencyEstimate::default(); 3];
    rt.observe(&mut est[0], 10 * NS_PER_MS, 0);
    rt.observe(&mut est[1], 20 * NS_PER_MS, 0);
    rt.observe(&mut est[2], 40 * NS_PER_MS, 0);
    let mut rng = SplitMix64::new(5);
    let counts = histogram(3, 70_000, || rt.pick(&xs, &est, all, &mut rng));
    assert_chi_square(&counts, &[4.0, 2.0, 1.0]);
}

#[test]
fn response_time_weighting_is_proportional_across_blocks_and_skips_ineligible() {
    // 40 instances: three blocks of the one-pass path; weights and latencies vary, every
    // third instance is not admitted and one is unhealthy.
    let rt = ResponseTimeWeighted::try_new(1_000 * NS_PER_MS, 10 * NS_PER_MS).unwrap();
    let weights: Vec<u32> = (0..40).map(|i| 1 + i % 3).collect();
    let mut xs = weighted(&weights);
    xs[7] = xs[7].clone().with_healthy(false);
    let mut est = vec![LatencyEstimate::default(); 40];
    for (i, e) in est.iter_mut().enumerate() {
        rt.observe(e, (5 + i as u64 % 4 * 5) * NS_PER_MS, 0);
    }
    let admit = |i: usize| !i.is_multiple_of(3);
    let shares: Vec<f64> = (0..40)
        .map(|i| {
            if admit(i) && i != 7 {
                f64::from(weights[i]) / (5 + i as u64 % 4 * 5) as f64
            } else {
                0.0
            }
        })
        .collect();
    let mut rng = SplitMix64::new(11);
    let counts = histogram(40, 200_000, || rt.pick(&xs, &est, admit, &mut rng));
    assert_chi_square(&counts, &shares);
}

#[test]
fn response_time_weighting_gives_new_instances_the_mean_score() {
    let rt = ResponseTimeWeighted::try_new(NS_PER_MS, 5 * NS_PER_MS).unwrap();
    let xs = weighted(&[1, 1, 1]);
    let mut est = vec![LatencyEstimate::default(); 2]; // the third has none at all
    rt.observe(&mut est[0], 10 * NS_PER_MS, 0);
    rt.observe(&mut est[1], 30 * NS_PER_MS, 0);
    let mut rng = SplitMix64::new(8);
    let counts = histogram(3, 60_000, || rt.pick(&xs, &est, all, &mut rng));
    // Scores 1/10, 1/30 and their mean 1/15 → shares 3 : 1 : 2.
    assert_chi_square(&counts, &[3.0, 1.0, 2.0]);
    // Nobody measured yet: all equal.
    let counts = histogram(3, 30_000, || rt.pick(&xs, &[], all, &mut rng));
    assert_chi_square(&counts, &[1.0; 3]);
}

#[test]
fn response_time_weighting_shifts_traffic_toward_an_instance_that_became_faster() {
    let rt = ResponseTimeWeighted::try_new(500 * NS_PER_MS, 10 * NS_PER_MS).unwrap();
    let xs = weighted(&[1, 1]);
    let mut est = [LatencyEstimate::default(); 2];
    let mut rng = SplitMix64::new(9);
    let mut now = 0;
    let mut run = |est: &mut [LatencyEstimate; 2], latency: [u64; 2], now: &mut u64| {
        let mut picked = [0u32; 2];
        for _ in 0..5_000 {
            let i = rt.pick(&xs, est, all, &mut rng).unwrap();
            picked[i] += 1;
            *now += NS_PER_MS;
            rt.observe(&mut est[i], latency[i], *now);
        }
        picked
    };
    // Both at 20 ms: an even split.
    let even = run(&mut est, [20 * NS_PER_MS, 20 * NS_PER_MS], &mut now);
    assert!((2_300..=2_700).contains(&even[0]), "{even:?}");
    // Instance 0 slows to 100 ms: within a few seconds nearly all traffic goes to 1.
    let _ = run(&mut est, [100 * NS_PER_MS, 20 * NS_PER_MS], &mut now);
    let shifted = run(&mut est, [100 * NS_PER_MS, 20 * NS_PER_MS], &mut now);
    assert!(shifted[1] > 4 * shifted[0], "{shifted:?}");
    let e0 = est[0].latency_ns().unwrap();
    assert!(e0 > 90.0 * NS_PER_MS as f64, "{e0}");
}

#[test]
fn ewma_halves_the_distance_after_one_half_life() {
    let rt = ResponseTimeWeighted::try_new(1_000, 1).unwrap();
    let mut e = LatencyEstimate::default();
    rt.observe(&mut e, 100, 0);
    rt.observe(&mut e, 300, 1_000);
    assert!((e.latency_ns().unwrap() - 200.0).abs() < 1e-9);
    // No time passed: the sample has no weight; time going backwards counts as none.
    rt.observe(&mut e, 10_000, 1_000);
    rt.observe(&mut e, 10_000, 500);
    assert!((e.latency_ns().unwrap() - 200.0).abs() < 1e-9);
}

#[test]
fn maglev_spreads_keys_by_weight() {
    let xs = weighted(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    let table = Maglev::try_new(&xs).unwrap();
    let mut rng = SplitMix64::new(1);
    let counts = histogram(10, 100_000, || table.pick(&xs, rng.next_u64(), all));
    assert_chi_square(&counts, &[1.0; 10]);
    let xs = weighted(&[1, 2, 4]);
    let table = Maglev::try_new(&xs).unwrap();
    let counts = histogram(3, 70_000, || table.pick(&xs, rng.next_u64(), all));
    assert_chi_square(&counts, &[1.0, 2.0, 4.0]);
    // Keys that differ in one character (user ids, client IPs) spread as well.
    let xs = weighted(&[1; 5]);
    let table = Maglev::try_new(&xs).unwrap();
    let mut n = 0;
    let counts = histogram(5, 50_000, || {
        n += 1;
        table.pick(
            &xs,
            key_hash(format!("10.0.{}.{}", n / 256, n % 256).as_bytes()),
            all,
        )
    });
    assert_chi_square(&counts, &[1.0; 5]);
}

#[test]
fn maglev_is_stable_per_key_and_moves_only_an_ineligible_instances_keys() {
    let xs = weighted(&[1; 6]);
    let table = Maglev::try_new(&xs).unwrap();
    let key = key_hash(b"user-42");
    assert_eq!(table.pick(&xs, key, all), table.pick(&xs, key, all));
    let mut rng = SplitMix64::new(2);
    for _ in 0..10_000 {
        let key = rng.next_u64();
        let before = table.pick(&xs, key, all).unwrap();
        let after = table.pick(&xs, key, |i| i != 4).unwrap();
        assert_ne!(after, 4);
        if before != 4 {
            assert_eq!(before, after);
        }
    }
    assert_eq!(table.pick(&xs, key, |_| false), None);
}

fn located(id: &str, dc: &str, zone: &str) -> Instance {
    Instance::try_new(id, "10.0.0.1", 80, 1)
        .unwrap()
        .with_datacenter(dc)
        .with_zone(zone)
}

#[test]
fn locality_prefers_zone_then_datacenter_then_anywhere() {
    let xs = vec![
        located("a", "dc1", "z1"),
        located("b", "dc1", "z2"),
        located("c", "dc2", "z1"),
    ];
    let here = Locality::new("dc1", "z1");
    assert_eq!(here.scope(&xs, all), LocalityScope::Zone);
    let mut rng = SplitMix64::new(4);
    for _ in 0..100 {
        assert_eq!(pick_random(&xs, here.prefer(&xs, all), &mut rng), Some(0));
    }
    // The zone's only instance is ejected: the datacenter's other zone takes over.
    let not_a = |i: usize| i != 0;
    assert_eq!(here.scope(&xs, not_a), LocalityScope::Datacenter(0));
    for _ in 0..100 {
        assert_eq!(pick_random(&xs, here.prefer(&xs, not_a), &mut rng), Some(1));
    }
    // The whole local datacenter is gone: fall back to the other one.
    let only_c = |i: usize| i == 2;
    assert_eq!(here.scope(&xs, only_c), LocalityScope::Any);
    assert_eq!(
        pick_random(&xs, here.prefer(&xs, only_c), &mut rng),
        Some(2)
    );
    // No locality set: anything.
    assert_eq!(Locality::default().scope(&xs, all), LocalityScope::Any);
}

#[test]
fn locality_fails_over_through_the_datacenter_list_in_order() {
    let xs = vec![
        located("a", "dc1", "z1"),
        located("b", "dc2", "z1"),
        located("c", "dc3", "z1"),
        located("d", "dc4", "z1"),
    ];
    let here = Locality::new("dc1", "z1").with_failover(["dc3", "", "dc1", "dc2"]);
    assert_eq!(here.scope(&xs, all), LocalityScope::Zone);
    assert_eq!(here.scope(&xs, |i| i != 0), LocalityScope::Datacenter(1));
    let mut rr = RoundRobinState::default();
    assert_eq!(rr.pick(&xs, here.prefer(&xs, |i| i != 0)), Some(2));
    assert_eq!(
        here.scope(&xs, |i| i == 1 || i == 3),
        LocalityScope::Datacenter(2)
    );
    assert_eq!(here.scope(&xs, |i| i == 3), LocalityScope::Any);
    // Without a zone the local datacenter is the first scope.
    let dc_only = Locality::new("dc2", "");
    assert_eq!(dc_only.scope(&xs, all), LocalityScope::Datacenter(0));
    assert_eq!(
        pick_random(&xs, dc_only.prefer(&xs, all), &mut SplitMix64::new(1)),
        Some(1)
    );
}

#[test]
fn locality_counts_unhealthy_instances_as_absent() {
    let xs = vec![
        located("a", "dc1", "z1").with_healthy(false),
        located("b", "dc1", "z2"),
    ];
    let here = Locality::new("dc1", "z1");
    assert_eq!(here.scope(&xs, all), LocalityScope::Datacenter(0));
    let mut rr = RoundRobinState::default();
    assert_eq!(rr.pick(&xs, here.prefer(&xs, all)), Some(1));
}

fn detector(percent: u8) -> OutlierDetection {
    OutlierDetection::try_new(3, 10 * NS_PER_MS, 25 * NS_PER_MS, percent).unwrap()
}

#[test]
fn outlier_ejects_after_consecutive_failures_and_recovers() {
    let d = detector(100);
    let mut s = [OutlierState::default(); 4];
    let fail = CallResult::Failure;
    assert_eq!(d.record(&mut s, 0, fail, 0), Recorded::Counted);
    assert_eq!(
        d.record(&mut s, 0, CallResult::Success, 0),
        Recorded::Counted
    );
    assert_eq!(d.record(&mut s, 0, fail, 1), Recorded::Counted);
    assert_eq!(d.record(&mut s, 0, fail, 2), Recorded::Counted);
    assert_eq!(
        d.record(&mut s, 0, fail, 3),
        Recorded::Ejected {
            until: 3 + 10 * NS_PER_MS
        }
    );
    assert!(s[0].is_ejected(3) && s[0].is_ejected(3 + 10 * NS_PER_MS - 1));
    assert_eq!(d.record(&mut s, 0, fail, 4), Recorded::Ignored);
    assert!(!s[0].is_ejected(3 + 10 * NS_PER_MS));
    assert_eq!(d.record(&mut s, 9, fail, 4), Recorded::Ignored);
}

#[test]
fn outlier_ejection_time_grows_with_each_ejection_up_to_the_max() {
    let d = detector(100);
    let mut s = [OutlierState::default(); 2];
    let mut now = 0;
    let mut durations = vec![];
    for _ in 0..4 {
        for _ in 0..2 {
            d.record(&mut s, 0, CallResult::Failure, now);
        }
        let recorded = d.record(&mut s, 0, CallResult::Failure, now);
        let Recorded::Ejected { until } = recorded else {
            unreachable!("not ejected: {recorded:?}");
        };
        durations.push((until - now) / NS_PER_MS);
        now = until;
    }
    assert_eq!(durations, [10, 20, 25, 25]);
    // After staying un-ejected for max_ejection the multiplier starts over.
    now += 25 * NS_PER_MS;
    for _ in 0..2 {
        d.record(&mut s, 0, CallResult::Failure, now);
    }
    assert_eq!(
        d.record(&mut s, 0, CallResult::Failure, now),
        Recorded::Ejected {
            until: now + 10 * NS_PER_MS
        }
    );
}

#[test]
fn outlier_never_ejects_more_than_max_percent() {
    let d = detector(50);
    let mut s = [OutlierState::default(); 5]; // 50 % of 5 → at most 2
    let mut results = vec![];
    for i in 0..5 {
        for _ in 0..3 {
            results.push(d.record(&mut s, i, CallResult::Failure, 100));
        }
    }
    let ejected = results
        .iter()
        .filter(|r| matches!(r, Recorded::Ejected { .. }))
        .count();
    assert_eq!(ejected, 2);
    assert_eq!(results.last(), Some(&Recorded::Capped));
    assert_eq!(s.iter().filter(|x| x.is_ejected(100)).count(), 2);
    // Once the ejections expire the capped instance's next failure ejects it.
    let later = 100 + 10 * NS_PER_MS;
    assert!(matches!(
        d.record(&mut s, 4, CallResult::Failure, later),
        Recorded::Ejected { .. }
    ));
}

#[test]
fn outlier_settings_are_validated() {
    let err = |r: Result<OutlierDetection, BalanceError>| r.unwrap_err().to_string();
    assert_eq!(
        err(OutlierDetection::try_new(0, 1, 1, 10)),
        "consecutive_failures must be greater than zero"
    );
    assert_eq!(
        err(OutlierDetection::try_new(1, 0, 1, 10)),
        "base_ejection_ns must be greater than zero"
    );
    assert!(err(OutlierDetection::try_new(1, 5, 4, 10)).starts_with("max_ejection_ns must be"));
    assert!(
        err(OutlierDetection::try_new(1, 5, 5, 101)).starts_with("max_ejection_percent must be")
    );
    assert_eq!(
        ResponseTimeWeighted::try_new(0, 1).unwrap_err().to_string(),
        "half_life_ns must be greater than zero"
    );
}

#[test]
fn response_time_pick_two_prefers_lower_latency_times_load() {
    let rt = ResponseTimeWeighted::try_new(NS_PER_MS, 5 * NS_PER_MS).unwrap();
    let xs = weighted(&[1, 1]);
    let mut est = [LatencyEstimate::default(); 2];
    rt.observe(&mut est[0], 10 * NS_PER_MS, 0);
    rt.observe(&mut est[1], 30 * NS_PER_MS, 0);
    let mut rng = SplitMix64::new(12);
    for _ in 0..50 {
        assert_eq!(rt.pick_two(&xs, &est, &[0, 0], all, &mut rng), Some(0));
        // Four times the requests in flight outweigh a third of the latency.
        assert_eq!(rt.pick_two(&xs, &est, &[3, 0], all, &mut rng), Some(1));
    }
    assert_eq!(rt.pick_two(&xs, &est, &[], |i| i == 1, &mut rng), Some(1));
    assert_eq!(rt.pick_two(&xs, &est, &[], |_| false, &mut rng), None);
}
