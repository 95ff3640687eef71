//! Stateless and small-state pickers: round robin, smooth weighted round robin, uniform and
//! weighted random, and least request with the power of two choices.
//!
//! Every picker returns the index of an eligible instance, or `None` when there is none.
//! Eligible: `healthy()` and admitted by the caller's `admit(index)` (outlier ejection, zone
//! preference, an already-tried host…). Picks never allocate.

use super::rng::{below, Rng};
use super::Instance;

/// Whether instance `i` exists, is healthy and is admitted by the caller.
#[inline]
pub(crate) fn eligible(instances: &[Instance], admit: &impl Fn(usize) -> bool, i: usize) -> bool {
    instances.get(i).is_some_and(Instance::healthy) && admit(i)
}

/// Cursor of a [`RoundRobinState::pick`]: the index to try first (one u32 per worker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundRobinState {
    next: u32,
}

impl RoundRobinState {
    /// Round robin, ignoring weights: the first eligible instance at or after the cursor
    /// (wrapping), then the cursor moves past it. Ineligible instances are skipped, so their
    /// turns go to the next eligible one.
    pub fn pick(&mut self, instances: &[Instance], admit: impl Fn(usize) -> bool) -> Option<usize> {
        let n = instances.len();
        if n == 0 {
            return None;
        }
        let start = self.next as usize % n;
        let chosen = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| eligible(instances, &admit, i))?;
        self.next = u32::try_from((chosen + 1) % n).unwrap_or(0);
        Some(chosen)
    }
}

/// Current weights of a [`SmoothWeightedState::pick`], one per instance (8 bytes each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmoothWeightedState {
    current: Vec<i64>,
}

impl SmoothWeightedState {
    /// Smooth weighted round robin, nginx's algorithm (ngx_http_upstream_get_peer, 2012):
    /// every eligible instance's current weight grows by its weight, the largest wins (the
    /// first on a tie) and loses the total. Weights {5, 1, 1} give `a a b a c a a`: the
    /// exact shares, spread out instead of bunched. Ineligible instances keep their current
    /// weight. When the list's length changes the state is resized (the only allocation, once
    /// per membership change); a caller that reorders the list should start a fresh state.
    pub fn pick(&mut self, instances: &[Instance], admit: impl Fn(usize) -> bool) -> Option<usize> {
        if self.current.len() != instances.len() {
            self.current.resize(instances.len(), 0);
        }
        let mut total: i64 = 0;
        let mut best = usize::MAX;
        let mut best_current = i64::MIN;
        for (i, (instance, current)) in instances.iter().zip(self.current.iter_mut()).enumerate() {
            if !(instance.healthy() && admit(i)) {
                continue;
            }
            let weight = i64::from(instance.weight().get());
            // |current| stays below the total weight (≤ 2^32 · N), far inside i64.
            *current = current.wrapping_add(weight);
            total = total.wrapping_add(weight);
            // Branch-free maximum (first wins a tie).
            let better = *current > best_current;
            best_current = if better { *current } else { best_current };
            best = if better { i } else { best };
        }
        let chosen = Some(best).filter(|&b| b != usize::MAX)?;
        if let Some(current) = self.current.get_mut(chosen) {
            *current = current.wrapping_sub(total);
        }
        Some(chosen)
    }

    /// The current weights, by instance index.
    pub fn current_weights(&self) -> &[i64] {
        &self.current
    }
}

/// Smooth weighted round robin with the nginx sequence of one instance list computed once:
/// a pick is O(1) instead of O(n) ([`SmoothWeightedState`] walks every instance per pick).
/// Build it when the list changes; `None` when the cycle (the sum of the healthy instances'
/// weights) would exceed [`SmoothWeightedCycle::MAX_CYCLE`] entries, and the caller keeps
/// using [`SmoothWeightedState`].
///
/// With every instance eligible the picks are exactly nginx's sequence. An instance the
/// caller does not admit (ejected, already tried) is skipped and its turn goes to the next in
/// the cycle, so over a cycle the others keep their relative shares (nginx would instead let
/// the skipped instance's current weight wait; both are smooth).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmoothWeightedCycle {
    order: Vec<u32>,
    next: usize,
}

impl SmoothWeightedCycle {
    /// The largest cycle built (entries of 4 bytes: 16 KiB per worker and service).
    pub const MAX_CYCLE: u64 = 4_096;

    /// The cycle of `instances` (unhealthy ones have no turn), or `None` if it is empty or
    /// longer than [`Self::MAX_CYCLE`].
    pub fn new(instances: &[Instance]) -> Option<Self> {
        let total: u64 = instances
            .iter()
            .filter(|i| i.healthy())
            .map(|i| u64::from(i.weight().get()))
            .sum();
        if total == 0 || total > Self::MAX_CYCLE || instances.len() > u32::MAX as usize {
            return None;
        }
        let mut state = SmoothWeightedState::default();
        let order = (0..total)
            .map(|_| {
                state
                    .pick(instances, |_| true)
                    .and_then(|i| u32::try_from(i).ok())
            })
            .collect::<Option<Vec<u32>>>()?;
        Some(Self { order, next: 0 })
    }

    /// The next instance of the cycle that still exists, is healthy and is admitted; `None`
    /// when a whole cycle has none.
    pub fn pick(&mut self, instances: &[Instance], admit: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.order.len();
        for _ in 0..len {
            let i = self.order.get(self.next).copied()? as usize;
            self.next = if self.next + 1 == len {
                0
            } else {
                self.next + 1
            };
            if eligible(instances, &admit, i) {
                return Some(i);
            }
        }
        None
    }

    /// Entries in one cycle (the sum of the healthy weights).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the cycle has no entry (never true for a built cycle).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Uniform random over the eligible instances: a few rejection-sampling draws (exact and
/// O(1) when most instances are eligible), then a uniform draw among the counted eligible.
pub fn pick_random(
    instances: &[Instance],
    admit: impl Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    random_eligible(instances.len(), |i| eligible(instances, &admit, i), rng)
}

/// Tries before [`random_eligible`] falls back to counting.
const REJECTION_TRIES: usize = 4;

fn random_eligible(n: usize, ok: impl Fn(usize) -> bool, rng: &mut impl Rng) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..REJECTION_TRIES {
        let i = below(rng, n as u64) as usize;
        if ok(i) {
            return Some(i);
        }
    }
    let count = (0..n).filter(|&i| ok(i)).count();
    let k = below(rng, count as u64) as usize;
    (0..n).filter(|&i| ok(i)).nth(k)
}

/// Two distinct eligible instances at random (the second `None` when only one is eligible).
pub(crate) fn two_eligible(
    instances: &[Instance],
    admit: &impl Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<(usize, Option<usize>)> {
    let first = pick_random(instances, admit, rng)?;
    let second = random_eligible(
        instances.len(),
        |i| i != first && eligible(instances, admit, i),
        rng,
    );
    Some((first, second))
}

/// Weighted random: an eligible instance with probability weight / total eligible weight.
pub fn pick_weighted_random(
    instances: &[Instance],
    admit: impl Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    let weight = |i: usize, x: &Instance| {
        if x.healthy() && admit(i) {
            u64::from(x.weight().get())
        } else {
            0
        }
    };
    let total: u64 = instances
        .iter()
        .enumerate()
        .map(|(i, x)| weight(i, x))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = below(rng, total);
    for (i, x) in instances.iter().enumerate() {
        let w = weight(i, x);
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

/// Least request by the power of two choices (Mitzenmacher, 2001; Envoy's LEAST_REQUEST):
/// two distinct eligible instances at random, the one with fewer requests in flight per unit
/// of weight wins (`(in_flight + 1) / weight`; the first on a tie). `in_flight[i]` is the
/// caller's count for instance `i` (missing entries count as 0).
pub fn pick_least_request(
    instances: &[Instance],
    in_flight: &[u32],
    admit: impl Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    let (first, second) = two_eligible(instances, &admit, rng)?;
    let Some(second) = second else {
        return Some(first);
    };
    let load = |i: usize| u64::from(in_flight.get(i).copied().unwrap_or(0)) + 1;
    let weight = |i: usize| instances.get(i).map_or(1, |x| u64::from(x.weight().get()));
    // load_a / w_a ≤ load_b / w_b, exactly in integers (u32 × u32 fits u64).
    if load(first) * weight(second) <= load(second) * weight(first) {
        Some(first)
    } else {
        Some(second)
    }
}
