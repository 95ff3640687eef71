//! Nanoseconds per balancer pick over 100 instances, natively (target ≤ 100 ns), next to an
//! empty loop measured in the same run. A plain timing loop with `black_box`; pass a word to
//! run only the rows whose name contains it (`cargo bench -p meshguard-core --bench pick -- ewma`).

// A benchmark measures wall time; the library itself never reads a clock.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use meshguard_core::{
    key_hash, pick_least_request, pick_random, pick_weighted_random, Instance, LatencyEstimate,
    Maglev, OutlierState, ResponseTimeWeighted, RoundRobinState, SmoothWeightedCycle,
    SmoothWeightedState, SplitMix64,
};

const ROUNDS: u64 = 2_000_000;
const INSTANCES: u32 = 100;
const TARGET_NS: f64 = 100.0;

fn time(mut pick: impl FnMut(u64) -> Option<usize>) -> f64 {
    let start = Instant::now();
    for i in 0..ROUNDS {
        black_box(pick(black_box(i)));
    }
    start.elapsed().as_nanos() as f64 / ROUNDS as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let instances: Vec<Instance> = (0..INSTANCES)
        .map(|i| Instance::try_new(format!("i{i}"), "10.0.0.1", 1000 + i, 1 + i % 5))
        .collect::<Result<_, _>>()?;
    let rtw = ResponseTimeWeighted::try_new(10_000_000_000, 100_000_000)?;
    let mut estimates = vec![LatencyEstimate::default(); instances.len()];
    for (i, e) in estimates.iter_mut().enumerate() {
        rtw.observe(e, 1_000_000 + 10_000 * i as u64, 1);
    }
    let outliers = vec![OutlierState::default(); instances.len()];
    let in_flight: Vec<u32> = (0..INSTANCES).map(|i| i % 7).collect();
    let maglev = Maglev::try_new(&instances)?;
    let admit = |i: usize| outliers.get(i).is_none_or(|o| !o.is_ejected(5));
    let mut rng = SplitMix64::new(1);
    let mut rr = RoundRobinState::default();
    let mut swrr = SmoothWeightedState::default();
    let mut rows: Vec<(&str, f64)> = Vec::new();
    let mut run = |name: &'static str, f: &mut dyn FnMut(u64) -> Option<usize>| {
        if only.as_deref().is_none_or(|o| name.contains(o)) {
            rows.push((name, time(f)));
        }
    };
    run("round robin", &mut |_| rr.pick(&instances, admit));
    run("smooth weighted round robin", &mut |_| {
        swrr.pick(&instances, admit)
    });
    let mut cycle = SmoothWeightedCycle::new(&instances).ok_or("no cycle")?;
    run("smooth weighted round robin (cycle)", &mut |_| {
        cycle.pick(&instances, admit)
    });
    let mut r1 = rng;
    run("random", &mut |_| pick_random(&instances, admit, &mut r1));
    let mut r2 = rng;
    run("weighted random", &mut |_| {
        pick_weighted_random(&instances, admit, &mut r2)
    });
    let mut r3 = rng;
    run("least request (p2c)", &mut |_| {
        pick_least_request(&instances, &in_flight, admit, &mut r3)
    });
    let mut r4 = rng;
    run("response time weighted (ewma)", &mut |_| {
        rtw.pick(&instances, &estimates, admit, &mut r4)
    });
    run("response time weighted (ewma, p2c)", &mut |_| {
        rtw.pick_two(&instances, &estimates, &in_flight, admit, &mut rng)
    });
    run("consistent hash (maglev)", &mut |i| {
        maglev.pick(&instances, key_hash(&i.to_le_bytes()), admit)
    });
    let baseline = time(|i| Some(i as usize));
    println!(
        "{:<40} {:>10} {:>10}",
        format!("pick over {INSTANCES}"),
        "ns/op",
        "target"
    );
    for (name, ns) in &rows {
        println!("{name:<40} {ns:>10.1} {TARGET_NS:>10.0}");
    }
    println!("{:<40} {baseline:>10.1}", "(empty loop)");
    Ok(())
}
