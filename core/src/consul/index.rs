//! Blocking-query bookkeeping, after Consul's "Blocking Queries" implementation notes:
//! the next index to wait on, and a capped exponential backoff with jitter for errors.

use core::num::NonZeroU64;

use super::ConsulError;
use crate::balance::Rng;

/// Parses an `X-Consul-Index` header value (`None`: the header is missing).
pub fn parse_index(header: Option<&str>) -> Result<u64, ConsulError> {
    header
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| ConsulError::BadIndex {
            got: header.map(str::to_owned),
        })
}

/// The index for the next query, from the one just used (`previous`) and the one returned:
/// an index that went backwards (a Consul restart, a snapshot restore) resets to 0, and 0
/// means a non-blocking read (send no `index`), whose answer gives the new baseline; a
/// returned 0 (a Consul bug the docs warn about, which would make every query return at
/// once) becomes 1, so a blocking query never uses 0.
pub const fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else if returned == 0 {
        1
    } else {
        returned
    }
}

/// Whether a query with `index` blocks (sends `index` and `wait`): every index but 0.
pub const fn blocks(index: u64) -> bool {
    index > 0
}

/// The earliest time for the next query, monotonic ns: at least `min_interval_ns` after the
/// start of the previous one, so a watch whose answers come back at once (an index that
/// changes on every write) cannot spin.
pub const fn next_query_at(previous_start: u64, min_interval_ns: u64) -> u64 {
    previous_start.saturating_add(min_interval_ns)
}

/// The HTTP timeout for a blocking query with `wait_ns`: Consul adds up to `wait / 16` of
/// jitter before answering, so the client waits that long plus `margin_ns` (saturating).
pub const fn blocking_timeout_ns(wait_ns: u64, margin_ns: u64) -> u64 {
    wait_ns
        .saturating_add(wait_ns / 16)
        .saturating_add(margin_ns)
}

/// Capped exponential backoff with "equal jitter" (AWS Architecture Blog, "Exponential Backoff
/// And Jitter", 2015): after `n` consecutive failures the cap is `min(max, base × 2^(n−1))`
/// and the delay is uniform in `[cap/2, cap]`, so clients spread out yet never retry at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: NonZeroU64,
    max: NonZeroU64,
}

impl Backoff {
    /// Validates `base_ns` (ns, > 0, the cap after the first failure) and `max_ns` (ns,
    /// ≥ `base_ns`).
    pub fn try_new(base_ns: u64, max_ns: u64) -> Result<Self, ConsulError> {
        let base = NonZeroU64::new(base_ns).ok_or(ConsulError::BadSetting {
            field: "base_ns",
            requirement: "greater than zero",
        })?;
        let max =
            NonZeroU64::new(max_ns)
                .filter(|m| *m >= base)
                .ok_or(ConsulError::BadSetting {
                    field: "max_ns",
                    requirement: "at least base_ns",
                })?;
        Ok(Self { base, max })
    }

    /// The upper bound of the delay after `failures` consecutive failures (0: no delay).
    pub fn cap_ns(&self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        let doublings = failures - 1;
        let cap = if doublings >= 64 {
            u64::MAX
        } else {
            self.base.get().saturating_mul(1u64 << doublings)
        };
        cap.min(self.max.get())
    }

    /// The delay in ns before retrying after `failures` consecutive failures, uniform in
    /// `[cap/2, cap]` (0 for no failure).
    pub fn delay_ns(&self, failures: u32, rng: &mut impl Rng) -> u64 {
        let cap = self.cap_ns(failures);
        let floor = cap / 2;
        let span = cap - floor;
        floor + crate::balance::below_inclusive(rng, span)
    }
}
