//! Passive outlier ejection per instance, after Envoy's outlier detection
//! (`consecutive_5xx`, `base_ejection_time`, `max_ejection_time`, `max_ejection_percent`).
//!
//! `consecutive_failures` failures in a row eject an instance until `now + base × k` (capped
//! at `max_ejection_ns`), where `k` counts its ejections; `k` starts over once the instance has
//! stayed un-ejected for `max_ejection_ns`. No ejection happens that would make more than
//! `max_ejection_percent` of the instances ejected at once (rounded down: with 10 % of 5
//! instances none is ever ejected, as in Envoy); the failure run then stays counted, so the
//! next failure retries once an ejection has expired. Outcomes reported while ejected (late
//! responses) neither extend nor end the ejection. The state is per instance and 16 bytes.

use core::num::{NonZeroU32, NonZeroU64};

use super::BalanceError;

/// Outlier-ejection settings, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    consecutive_failures: NonZeroU32,
    base_ejection: NonZeroU64,
    max_ejection: NonZeroU64,
    max_ejection_percent: u8,
}

/// One instance's outlier state (`Default`: never failed, never ejected).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutlierState {
    failures: u32,
    times_ejected: u32,
    /// Monotonic ns until which the instance is ejected (0: never ejected).
    ejected_until: u64,
}

/// The result of a call to an instance, as far as outlier detection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The call succeeded: the failure run ends.
    Success,
    /// The call failed (5xx, reset, connect failure, timeout…).
    Failure,
}

/// What [`OutlierDetection::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted; no ejection.
    Counted,
    /// The instance is now ejected until this monotonic ns.
    Ejected {
        /// End of the ejection, monotonic nanoseconds.
        until: u64,
    },
    /// The run reached the threshold but the ejection cap is reached.
    Capped,
    /// The instance is ejected (or the index is out of range): ignored.
    Ignored,
}

impl OutlierState {
    /// Whether the instance is ejected at `now` (monotonic ns).
    pub const fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until
    }

    /// Consecutive failures counted so far.
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    /// How many times in a row (see the module doc) the instance has been ejected.
    pub const fn times_ejected(&self) -> u32 {
        self.times_ejected
    }
}

impl OutlierDetection {
    /// Validates `consecutive_failures` (> 0), `base_ejection_ns` (ns, > 0),
    /// `max_ejection_ns` (ns, ≥ `base_ejection_ns`) and `max_ejection_percent` (0..=100).
    pub fn try_new(
        consecutive_failures: u32,
        base_ejection_ns: u64,
        max_ejection_ns: u64,
        max_ejection_percent: u8,
    ) -> Result<Self, BalanceError> {
        let consecutive_failures =
            NonZeroU32::new(consecutive_failures).ok_or(BalanceError::Zero {
                field: "consecutive_failures",
            })?;
        let base_ejection = NonZeroU64::new(base_ejection_ns).ok_or(BalanceError::Zero {
            field: "base_ejection_ns",
        })?;
        if max_ejection_ns < base_ejection_ns {
            return Err(BalanceError::OutOfRange {
                field: "max_ejection_ns",
                min: base_ejection_ns,
                max: u64::MAX,
                got: max_ejection_ns,
            });
        }
        let max_ejection = NonZeroU64::new(max_ejection_ns).ok_or(BalanceError::Zero {
            field: "max_ejection_ns",
        })?;
        if max_ejection_percent > 100 {
            return Err(BalanceError::OutOfRange {
                field: "max_ejection_percent",
                min: 0,
                max: 100,
                got: u64::from(max_ejection_percent),
            });
        }
        Ok(Self {
            consecutive_failures,
            base_ejection,
            max_ejection,
            max_ejection_percent,
        })
    }

    /// Records `result` of a call to instance `index` at `now` (monotonic ns). `states` holds
    /// one state per instance of the list (the cap is a share of `states.len()`).
    pub fn record(
        &self,
        states: &mut [OutlierState],
        index: usize,
        result: CallResult,
        now: u64,
    ) -> Recorded {
        let total = states.len() as u64;
        let ejected_now = states.iter().filter(|s| s.is_ejected(now)).count() as u64;
        let Some(state) = states.get_mut(index) else {
            return Recorded::Ignored;
        };
        if state.is_ejected(now) {
            return Recorded::Ignored;
        }
        match result {
            CallResult::Success => {
                state.failures = 0;
                return Recorded::Counted;
            }
            CallResult::Failure => state.failures = state.failures.saturating_add(1),
        }
        if state.failures < self.consecutive_failures.get() {
            return Recorded::Counted;
        }
        let allowed = total * u64::from(self.max_ejection_percent) / 100;
        if ejected_now + 1 > allowed {
            return Recorded::Capped;
        }
        let rested = state.ejected_until == 0
            || now.saturating_sub(state.ejected_until) >= self.max_ejection.get();
        state.times_ejected = if rested {
            1
        } else {
            state.times_ejected.saturating_add(1)
        };
        let duration = self
            .base_ejection
            .get()
            .saturating_mul(u64::from(state.times_ejected))
            .min(self.max_ejection.get());
        state.failures = 0;
        state.ejected_until = now.saturating_add(duration);
        Recorded::Ejected {
            until: state.ejected_until,
        }
    }
}
