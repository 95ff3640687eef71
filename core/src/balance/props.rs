//! Property tests: invariants every balancer documents, over random lists and traces.

use proptest::prelude::*;

use super::tests::weighted;
use super::*;

/// Instances with unique ids drawn from `ids`, weight 1.
fn named(ids: &[u32]) -> Vec<Instance> {
    ids.iter()
        .map(|id| Instance::try_new(format!("svc-{id}"), "10.0.0.1", 80, 1).unwrap())
        .collect()
}

/// Share of `keys` whose instance id differs between two tables.
fn moved(a: (&Maglev, &[Instance]), b: (&Maglev, &[Instance]), keys: &[u64]) -> f64 {
    let id = |(t, xs): (&Maglev, &[Instance]), k: u64| {
        t.pick(xs, k, |_| true).map(|i| xs[i].id().to_owned())
    };
    let changed = keys.iter().filter(|&&k| id(a, k) != id(b, k)).count();
    changed as f64 / keys.len() as f64
}

/// Keys sampled to measure how many move.
const KEYS: usize = 20_000;

/// Allowed excess over the ideal share `p` of moved keys: Maglev's own disruption (≤ 0.02 at
/// table size 65537) plus 4 standard deviations of measuring `p` on `KEYS` sampled keys, so
/// the check is about Maglev, not about sampling luck.
fn tolerance(p: f64) -> f64 {
    0.02 + 4.0 * (p * (1.0 - p) / KEYS as f64).sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn maglev_remaps_at_most_one_nth_plus_epsilon_on_a_membership_change(
        ids in prop::collection::btree_set(0u32..100_000, 2..60),
        seed in any::<u64>(),
        newcomer in 100_000u32..200_000,
    ) {
        let ids: Vec<u32> = ids.into_iter().collect();
        let n = ids.len();
        let mut rng = SplitMix64::new(seed);
        let keys: Vec<u64> = (0..KEYS).map(|_| super::Rng::next_u64(&mut rng)).collect();
        let before = named(&ids);
        let t_before = Maglev::try_new(&before).unwrap();
        // One removed (the table size stays when N stays within its power of two).
        let victim = (seed % n as u64) as usize;
        let mut fewer = ids.clone();
        fewer.remove(victim);
        let fewer = named(&fewer);
        let t_fewer = Maglev::try_new(&fewer).unwrap();
        if t_fewer.table_size() == t_before.table_size() {
            let share = moved((&t_before, &before), (&t_fewer, &fewer), &keys);
            let ideal = 1.0 / n as f64;
            prop_assert!(share <= ideal + tolerance(ideal), "removal moved {share} of keys, N={n}");
        }
        // One added.
        let mut more = ids.clone();
        more.push(newcomer);
        let more = named(&more);
        let t_more = Maglev::try_new(&more).unwrap();
        if t_more.table_size() == t_before.table_size() {
            let share = moved((&t_before, &before), (&t_more, &more), &keys);
            let ideal = 1.0 / (n + 1) as f64;
            prop_assert!(share <= ideal + tolerance(ideal), "addition moved {share}, N={n}");
        }
    }

    #[test]
    fn smooth_weighted_gives_each_instance_its_weight_per_cycle(
        weights in prop::collection::vec(1u32..20, 1..12),
        ineligible in prop::collection::vec(any::<bool>(), 12),
    ) {
        let xs = weighted(&weights);
        let admit = |i: usize| !ineligible[i];
        let cycle: u32 = (0..xs.len()).filter(|&i| admit(i)).map(|i| weights[i]).sum();
        let mut swrr = SmoothWeightedState::default();
        let mut counts = vec![0u32; xs.len()];
        for _ in 0..cycle {
            counts[swrr.pick(&xs, admit).unwrap()] += 1;
        }
        for i in 0..xs.len() {
            prop_assert_eq!(counts[i], if admit(i) { weights[i] } else { 0 });
        }
        // A full cycle brings every current weight back to zero.
        prop_assert!(swrr.current_weights().iter().all(|&c| c == 0));
    }

    #[test]
    fn no_balancer_picks_an_ineligible_instance(
        weights in prop::collection::vec(1u32..10, 0..20),
        unhealthy in prop::collection::vec(any::<bool>(), 20),
        refused in prop::collection::vec(any::<bool>(), 20),
        in_flight in prop::collection::vec(0u32..50, 0..20),
        seed in any::<u64>(),
    ) {
        let xs: Vec<Instance> = weighted(&weights)
            .into_iter()
            .enumerate()
            .map(|(i, x)| x.with_healthy(!unhealthy[i]))
            .collect();
        let admit = |i: usize| !refused[i];
        let ok = |i: usize| !unhealthy[i] && !refused[i];
        let any_ok = (0..xs.len()).any(ok);
        let mut rng = SplitMix64::new(seed);
        let rt = ResponseTimeWeighted::try_new(1_000, 1_000).unwrap();
        let est = [LatencyEstimate::default(); 3];
        let mut rr = RoundRobinState::default();
        let mut swrr = SmoothWeightedState::default();
        let maglev = Maglev::try_new(&xs).ok();
        for _ in 0..20 {
            let picks = [
                rr.pick(&xs, admit),
                swrr.pick(&xs, admit),
                pick_random(&xs, admit, &mut rng),
                pick_weighted_random(&xs, admit, &mut rng),
                pick_least_request(&xs, &in_flight, admit, &mut rng),
                rt.pick(&xs, &est, admit, &mut rng),
                rt.pick_two(&xs, &est, &in_flight, admit, &mut rng),
                maglev.as_ref().and_then(|m| m.pick(&xs, super::Rng::next_u64(&mut rng), admit)),
            ];
            for pick in picks {
                prop_assert_eq!(pick.is_some(), any_ok);
                if let Some(i) = pick {
                    prop_assert!(ok(i));
                }
            }
        }
    }

    #[test]
    fn outlier_ejection_never_exceeds_max_percent(
        n in 1usize..30,
        percent in 0u8..=100,
        trace in prop::collection::vec((0usize..30, any::<bool>(), 0u64..5_000), 1..400),
    ) {
        let d = OutlierDetection::try_new(2, 10_000, 40_000, percent).unwrap();
        let mut states = vec![OutlierState::default(); n];
        let cap = n * usize::from(percent) / 100;
        let mut now = 0;
        for (i, ok, gap) in trace {
            now += gap;
            let result = if ok { CallResult::Success } else { CallResult::Failure };
            d.record(&mut states, i % n, result, now);
            prop_assert!(states.iter().filter(|s| s.is_ejected(now)).count() <= cap);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn locality_picks_only_from_the_narrowest_scope_with_an_eligible_instance(
        places in prop::collection::vec((0usize..4, 0usize..3, any::<bool>()), 1..20),
        seed in any::<u64>(),
    ) {
        let dcs = ["dc1", "dc2", "dc3", ""];
        let zones = ["z1", "z2", ""];
        let xs: Vec<Instance> = places
            .iter()
            .enumerate()
            .map(|(i, &(dc, zone, healthy))| {
                Instance::try_new(format!("i{i}"), "10.0.0.1", 80, 1)
                    .unwrap()
                    .with_datacenter(dcs[dc])
                    .with_zone(zones[zone])
                    .with_healthy(healthy)
            })
            .collect();
        let here = Locality::new("dc1", "z1").with_failover(["dc2"]);
        // The preference rank of an instance: 0 local zone, 1 local dc, 2 dc2, 3 anything else.
        let rank = |x: &Instance| match (x.datacenter().unwrap_or("dc1"), x.zone()) {
            ("dc1", Some("z1")) => 0,
            ("dc1", _) => 1,
            ("dc2", _) => 2,
            _ => 3,
        };
        let best = xs.iter().filter(|x| x.healthy()).map(rank).min();
        let mut rng = SplitMix64::new(seed);
        let pick = pick_random(&xs, here.prefer(&xs, |_| true), &mut rng);
        prop_assert_eq!(pick.map(|i| rank(&xs[i])), best);
    }
}
