//! Load balancers over a slice of [`Instance`]s, and passive outlier ejection.
//!
//! Every picker returns the index of the chosen instance in the caller's slice, or `None`
//! when no instance is eligible. Eligible means `healthy()` and admitted by the caller's
//! `admit(index)` closure, which composes the rest: outlier ejection
//! ([`OutlierState::is_ejected`]), zone preference ([`Locality::prefer`]), hosts already tried
//! by a retry. State that must survive between picks is explicit, small and owned by the
//! caller (one per Envoy worker): [`RoundRobinState`] (one u32), [`SmoothWeightedState`] (an
//! i64 per instance), [`LatencyEstimate`] (24 bytes per instance), [`OutlierState`] (16 bytes
//! per instance) and the [`Maglev`] table (rebuilt when the list changes). Randomness comes
//! in as `&mut impl Rng`, time as `now` in monotonic nanoseconds. Picks do not allocate.
//!
//! Cost per pick over 100 instances (release, x86-64): round robin, random, least request,
//! [`ResponseTimeWeighted::pick_two`] and Maglev ≈ 2–15 ns (O(1) unless most instances are
//! ineligible); weighted random ≈ 70 ns, smooth WRR ≈ 105 ns and
//! [`ResponseTimeWeighted::pick`] ≈ 95–100 ns (O(N) by nature: one pass plus a block walk;
//! it was 160–170 ns with two full passes). `cargo bench -p meshguard-core --bench pick`
//! measures them next to each other.

mod error;
mod ewma;
mod instance;
mod maglev;
mod outlier;
mod pick;
mod rng;
mod zone;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

pub use error::BalanceError;
pub use ewma::{LatencyEstimate, ResponseTimeWeighted};
pub use instance::Instance;
pub use maglev::{Maglev, MAX_MAGLEV_INSTANCES};
pub use outlier::{CallResult, OutlierDetection, OutlierState, Recorded};
pub use pick::{
    pick_least_request, pick_random, pick_weighted_random, RoundRobinState, SmoothWeightedCycle,
    SmoothWeightedState,
};
pub(crate) use rng::below_inclusive;
pub use rng::{key_hash, Rng, SplitMix64};
pub use zone::{Locality, LocalityScope};
