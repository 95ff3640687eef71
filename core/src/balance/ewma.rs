//! Response-time weighted picking over an exponentially weighted moving average of latency.
//!
//! Source: the time-decayed EWMA of linkerd's and Finagle's peak-EWMA balancers (a sample
//! `dt` ns after the previous one gets weight `1 − 2^(−dt / half_life)`, so the average forgets
//! at the same speed whatever the request rate), picked like Ribbon's WeightedResponseTime and
//! Dubbo's shortestresponse: an eligible instance with probability proportional to
//! `weight / latency`. An instance with no sample yet gets a neutral score, the mean
//! `1 / latency` of the eligible instances that have one (or `1 / initial_ns` when none has),
//! i.e. an average share: neither flooded nor starved. The estimate keeps `1 / latency` next
//! to the latency so that a pick multiplies instead of dividing (one pass over the list and a
//! short walk once every instance has a sample, no division). Samples at the same `now` as the
//! previous one carry no weight (as in linkerd); a clock going backwards counts as no time
//! passing.

use core::num::NonZeroU64;

use super::pick::two_eligible;
use super::rng::{unit_f64, Rng};
use super::{BalanceError, Instance};

/// Most blocks of [`ResponseTimeWeighted::pick`]'s pass (fewer for short lists).
const BLOCKS: usize = 16;
/// Fewest instances per block.
const MIN_BLOCK: usize = 16;

/// Settings of response-time weighted picking: a decay half-life and the estimate used when
/// no instance has a sample yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseTimeWeighted {
    half_life: NonZeroU64,
    initial: NonZeroU64,
}

/// One instance's latency estimate (24 bytes; `Default`: no sample yet).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencyEstimate {
    /// Estimated latency in nanoseconds; 0 means no sample yet.
    ewma_ns: f64,
    /// `1 / ewma_ns` (0 without a sample).
    speed: f64,
    /// `now` of the last sample, monotonic nanoseconds.
    updated_at: u64,
}

impl LatencyEstimate {
    /// The estimate in nanoseconds, if the instance has a sample.
    pub fn latency_ns(&self) -> Option<f64> {
        (self.ewma_ns > 0.0).then_some(self.ewma_ns)
    }
}

impl ResponseTimeWeighted {
    /// Validates `half_life_ns` (ns, > 0: after one half-life a sample counts half) and
    /// `initial_ns` (ns, > 0: the estimate of every instance before any has a sample).
    pub fn try_new(half_life_ns: u64, initial_ns: u64) -> Result<Self, BalanceError> {
        Ok(Self {
            half_life: NonZeroU64::new(half_life_ns).ok_or(BalanceError::Zero {
                field: "half_life_ns",
            })?,
            initial: NonZeroU64::new(initial_ns).ok_or(BalanceError::Zero {
                field: "initial_ns",
            })?,
        })
    }

    /// Folds a response that took `latency_ns` (a 0 counts as 1 ns), observed at `now`
    /// (monotonic ns), into `estimate`.
    pub fn observe(&self, estimate: &mut LatencyEstimate, latency_ns: u64, now: u64) {
        let sample = latency_ns.max(1) as f64;
        if estimate.latency_ns().is_none() {
            estimate.ewma_ns = sample;
        } else {
            let dt = now.saturating_sub(estimate.updated_at) as f64;
            let keep = (-dt / self.half_life.get() as f64).exp2();
            estimate.ewma_ns = (estimate.ewma_ns * keep + sample * (1.0 - keep)).max(1.0);
        }
        estimate.speed = 1.0 / estimate.ewma_ns;
        estimate.updated_at = estimate.updated_at.max(now);
    }

    /// An eligible instance with probability ∝ `weight / estimated latency`. `estimates[i]`
    /// belongs to instance `i`; missing entries count as no sample.
    ///
    /// Once every eligible instance has a sample (the steady state) this is one pass over the
    /// list plus a short walk: the pass sums the scores per block of consecutive instances
    /// (short independent chains of additions that the CPU overlaps), the draw walks the
    /// block sums and rescans a single block. No allocation.
    pub fn pick(
        &self,
        instances: &[Instance],
        estimates: &[LatencyEstimate],
        admit: impl Fn(usize) -> bool,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        let n = instances.len();
        if n == 0 || estimates.len() < n {
            return self.pick_with_unsampled(instances, estimates, admit, rng);
        }
        let block = n.div_ceil(BLOCKS).max(MIN_BLOCK);
        // `ends[b]`: the total score of blocks 0..=b (prefix sums, so the draw compares
        // instead of subtracting in a chain).
        let mut ends = [0.0f64; BLOCKS];
        // The smallest speed's bits among the eligible: 0 when one has no sample (a speed is
        // 0.0 until the first sample, then positive, and positive floats order like their
        // bits), found with an integer minimum that costs less than a float test per instance.
        let mut min_speed_bits = u64::MAX;
        let mut total = 0.0f64;
        let blocks = n.div_ceil(block);
        for (b, end) in ends.iter_mut().enumerate().take(blocks) {
            let first = b * block;
            let last = ((b + 1) * block).min(n);
            let xs = instances.get(first..last).unwrap_or_default();
            let es = estimates.get(first..last).unwrap_or_default();
            let mut sum = 0.0f64;
            for (k, (x, e)) in xs.iter().zip(es).enumerate() {
                if x.healthy() && admit(first + k) {
                    min_speed_bits = min_speed_bits.min(e.speed.to_bits());
                    sum += x.weight_f64() * e.speed;
                }
            }
            total += sum;
            *end = total;
        }
        let unsampled = min_speed_bits == 0;
        if unsampled {
            return self.pick_with_unsampled(instances, estimates, admit, rng);
        }
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let r = unit_f64(rng) * total;
        // The block where r falls; rounding may put r at or past the last end: the last block
        // with a score.
        let ends = ends.get(..blocks).unwrap_or_default();
        let b = ends
            .iter()
            .position(|&end| r < end)
            .or_else(|| ends.iter().rposition(|&end| end > 0.0))?;
        let mut start = if b == 0 {
            0.0
        } else {
            ends.get(b - 1).copied().unwrap_or(0.0)
        };
        let mut last = None;
        for i in b * block..((b + 1) * block).min(n) {
            let (x, e) = (&instances[i], &estimates[i]);
            if !(x.healthy() && admit(i)) {
                continue;
            }
            let s = x.weight_f64() * e.speed;
            if s > 0.0 {
                start += s;
                if r < start {
                    return Some(i);
                }
                last = Some(i);
            }
        }
        // Rounding left r just above the block's last score: that instance was drawn.
        last
    }

    /// [`ResponseTimeWeighted::pick`] when some eligible instance has no sample yet (its
    /// neutral score needs the mean of the others first): two full passes.
    fn pick_with_unsampled(
        &self,
        instances: &[Instance],
        estimates: &[LatencyEstimate],
        admit: impl Fn(usize) -> bool,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        let speed = |i: usize| estimates.get(i).map_or(0.0, |e| e.speed);
        // Pass 1: the known scores, and the weight of the instances without a sample.
        let (mut known_total, mut speed_sum, mut known, mut unknown_weight) = (0.0, 0.0, 0u32, 0.0);
        for (i, x) in instances.iter().enumerate() {
            if !(x.healthy() && admit(i)) {
                continue;
            }
            let w = f64::from(x.weight().get());
            match speed(i) {
                s if s > 0.0 => {
                    known_total += w * s;
                    speed_sum += s;
                    known += 1;
                }
                _ => unknown_weight += w,
            }
        }
        let neutral = if known == 0 {
            1.0 / self.initial.get() as f64
        } else {
            speed_sum / f64::from(known)
        };
        let total = known_total + unknown_weight * neutral;
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let score = |i: usize, x: &Instance| {
            if x.healthy() && admit(i) {
                let s = speed(i);
                f64::from(x.weight().get()) * if s > 0.0 { s } else { neutral }
            } else {
                0.0
            }
        };
        let mut r = unit_f64(rng) * total;
        let mut last = None;
        for (i, x) in instances.iter().enumerate() {
            let s = score(i, x);
            if s > 0.0 {
                if r < s {
                    return Some(i);
                }
                r -= s;
                last = Some(i);
            }
        }
        // Rounding left r just above the last score: that instance was drawn.
        last
    }

    /// The O(1) alternative to [`ResponseTimeWeighted::pick`] for large lists (linkerd's
    /// peak-EWMA balancer): two distinct eligible instances at random, the one with the lower
    /// `latency × (in_flight + 1) / weight` wins. Instances without a sample count as
    /// `initial_ns`.
    pub fn pick_two(
        &self,
        instances: &[Instance],
        estimates: &[LatencyEstimate],
        in_flight: &[u32],
        admit: impl Fn(usize) -> bool,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        let (a, b) = two_eligible(instances, &admit, rng)?;
        let Some(b) = b else { return Some(a) };
        let cost = |i: usize| {
            let latency = estimates
                .get(i)
                .and_then(LatencyEstimate::latency_ns)
                .unwrap_or(self.initial.get() as f64);
            let load = f64::from(in_flight.get(i).copied().unwrap_or(0)) + 1.0;
            let weight = instances
                .get(i)
                .map_or(1.0, |x| f64::from(x.weight().get()));
            latency * load / weight
        };
        Some(if cost(a) <= cost(b) { a } else { b })
    }
}
