//! Rate-limit algorithms over compact state that one compare-and-swap can update.
//!
//! Each algorithm is a validated, immutable limit ([`FixedWindow`], [`SlidingWindow`],
//! [`ApproxSlidingWindow`], [`TokenBucket`], [`LeakyBucket`]) and a `Copy` state of one to five
//! machine words with a fixed little-endian byte layout (first byte: a tag naming the algorithm
//! and layout version). `decide(&limit, state, now, cost)` is pure and allocation-free: it
//! returns the [`Decision`] and the next state. A filter keeps the bytes in proxy-wasm shared
//! data, runs `decide` on what it read and commits the result with the read's CAS token; on a
//! conflict it re-reads and decides again, so the limit holds across all Envoy workers.
//!
//! Conventions shared by every algorithm:
//! - `now` is monotonic nanoseconds chosen by the caller; nothing here reads a clock.
//! - Time going backwards: a `now` earlier than the time the state has already seen (another
//!   worker committed a slightly later `now` first, or the clock stepped back) is treated as
//!   that later time. This never admits more than the later time would have; a clock stepped
//!   back by Δ can at most hold a limit at its current level for Δ. Keeping `now` monotonic is
//!   the clock adapter's job.
//! - Huge jumps forward simply expire the state. All time arithmetic saturates or is checked at
//!   `u64::MAX` (year 2554 in Unix nanoseconds), so no input, including corrupt state, can
//!   panic or wrap; where a time cannot be represented the limit fails closed (rejects).
//! - `cost` is the number of units a request consumes (usually 1). Cost 0 is a probe: always
//!   admitted, consumes nothing. A cost that can never fit (above the limit or burst) is
//!   rejected with `retry_after_ns == Decision::NEVER`.
//! - A state is meaningful only under the limit that wrote it: when a rule's limit changes,
//!   the caller should start from a fresh state (e.g. by keying state on the rule's config).

mod approx_window;
mod codec;
mod decision;
mod error;
mod fixed_window;
mod leaky_bucket;
mod sliding_window;
mod token_bucket;

#[cfg(test)]
mod props;

pub use approx_window::{ApproxSlidingWindow, ApproxSlidingWindowState};
pub use decision::{Decision, Verdict};
pub use error::{LimitError, StateError};
pub use fixed_window::{FixedWindow, FixedWindowState};
pub use leaky_bucket::{LeakyBucket, LeakyBucketState};
pub use sliding_window::{SlidingWindow, SlidingWindowState, MAX_SUB_WINDOWS};
pub use token_bucket::{TokenBucket, TokenBucketState};

use core::fmt::Debug;
use core::num::{NonZeroU32, NonZeroU64};

/// A rate-limit algorithm with its limits: decides one request against a state value.
pub trait RateLimiter {
    /// The algorithm's compact, byte-encodable state.
    type State: LimiterState;

    /// Decides a request of `cost` units at `now` (monotonic nanoseconds) against `state`;
    /// returns the decision and the state to store (unchanged when nothing was consumed).
    fn decide(&self, state: Self::State, now: u64, cost: u32) -> (Decision, Self::State);

    /// [`RateLimiter::decide`] over the stored bytes (`None`: no state yet, a fresh limit);
    /// returns the decision and the bytes to store with the CAS token of the read.
    fn decide_bytes(
        &self,
        stored: Option<&[u8]>,
        now: u64,
        cost: u32,
    ) -> Result<(Decision, <Self::State as LimiterState>::Bytes), StateError> {
        let state = match stored {
            Some(bytes) => Self::State::from_bytes(bytes)?,
            None => Self::State::default(),
        };
        let (decision, next) = self.decide(state, now, cost);
        Ok((decision, next.to_bytes()))
    }
}

/// A rate-limit state: `Default` is a fresh limit; round-trips through a fixed byte layout.
pub trait LimiterState: Copy + Default + PartialEq + Debug {
    /// The encoded form, a fixed-size byte array.
    type Bytes: AsRef<[u8]> + Copy + Debug;

    /// Encodes the state: a tag byte, then the fields in little-endian order.
    fn to_bytes(&self) -> Self::Bytes;

    /// Decodes bytes written by `to_bytes`; a wrong length or tag is an error, never a panic.
    fn from_bytes(bytes: &[u8]) -> Result<Self, StateError>;
}

/// Validates `rate` units per `period_ns` and returns the emission interval in nanoseconds per
/// unit, rounded up to a whole nanosecond (so the enforced rate is never above the configured).
fn emission_interval(
    rate: u32,
    period_ns: u64,
) -> Result<(NonZeroU32, NonZeroU64, NonZeroU64), LimitError> {
    let rate = NonZeroU32::new(rate).ok_or(LimitError::Zero { field: "rate" })?;
    let period = NonZeroU64::new(period_ns).ok_or(LimitError::Zero { field: "period_ns" })?;
    let too_high = LimitError::RateTooHigh {
        rate: rate.get(),
        period_ns,
    };
    if period.get() < u64::from(rate.get()) {
        return Err(too_high);
    }
    let interval = NonZeroU64::new(period.get().div_ceil(u64::from(rate.get()))).ok_or(too_high)?;
    Ok((rate, period, interval))
}

/// Converts a count that may exceed `u32` (from corrupt state) to `u32`, saturating.
fn saturate_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
