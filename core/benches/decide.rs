//! Nanoseconds per rate-limit decision, natively (target ≤ 50 ns). A plain timing loop with
//! `black_box`, reported next to the cost of an empty loop measured in the same run.

// A benchmark measures wall time; the library itself never reads a clock.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use meshguard_core::{
    ApproxSlidingWindow, FixedWindow, LeakyBucket, RateLimiter, SlidingWindow, TokenBucket,
};

const ROUNDS: u64 = 5_000_000;
const TARGET_NS: f64 = 50.0;

/// Runs `decide` ROUNDS times with time advancing 1 µs per request (so a mix of allowed and
/// limited decisions) and returns nanoseconds per decision.
fn time<L: RateLimiter>(limiter: &L) -> f64 {
    let mut state = L::State::default();
    let start = Instant::now();
    for i in 0..ROUNDS {
        let (decision, next) = limiter.decide(black_box(state), black_box(i * 1_000), 1);
        black_box(decision);
        state = next;
    }
    start.elapsed().as_nanos() as f64 / ROUNDS as f64
}

fn empty_loop() -> f64 {
    let start = Instant::now();
    for i in 0..ROUNDS {
        black_box(i);
    }
    start.elapsed().as_nanos() as f64 / ROUNDS as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let second = 1_000_000_000;
    let rows: Vec<(&str, f64)> = vec![
        ("fixed window", time(&FixedWindow::try_new(100, second)?)),
        (
            "sliding window (exact, 7 sub-windows)",
            time(&SlidingWindow::try_new(100, second, 7)?),
        ),
        (
            "sliding window (approximate)",
            time(&ApproxSlidingWindow::try_new(100, second)?),
        ),
        (
            "token bucket (GCRA)",
            time(&TokenBucket::try_new(100, second, 20)?),
        ),
        (
            "leaky bucket (pacing)",
            time(&LeakyBucket::try_new(100, second, second)?),
        ),
    ];
    let baseline = empty_loop();
    println!("{:<40} {:>10} {:>10}", "decision", "ns/op", "target");
    for (name, ns) in &rows {
        let verdict = if *ns <= TARGET_NS { "met" } else { "MISSED" };
        println!("{name:<40} {ns:>10.1} {verdict:>10}");
    }
    println!("{:<40} {baseline:>10.1}", "empty loop (baseline)");
    Ok(())
}
