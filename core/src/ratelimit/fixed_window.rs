//! Fixed window counter: at most `limit` units per window; windows are aligned to multiples of
//! the window length on the `now` clock, so every worker agrees on the boundaries.
//!
//! Source: the counter-per-window scheme of envoyproxy/ratelimit (Redis `INCRBY` + `EXPIRE` on
//! a key naming the window). Known weakness, inherent to the algorithm: up to `2 × limit` can
//! pass around a boundary (end of one window, start of the next); use [`SlidingWindow`] when
//! that matters.
//!
//! State: window start (u64 ns) and units counted in it (u32): 13 bytes encoded.
//!
//! [`SlidingWindow`]: super::SlidingWindow

use core::num::{NonZeroU32, NonZeroU64};

use super::codec::{Reader, Writer, TAG_FIXED_WINDOW};
use super::{Decision, LimitError, LimiterState, RateLimiter, StateError, Verdict};

/// At most `limit` units per aligned window of `window_ns` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindow {
    limit: NonZeroU32,
    window: NonZeroU64,
}

/// State of a [`FixedWindow`]: the current window's start and its count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FixedWindowState {
    window_start: u64,
    count: u32,
}

impl FixedWindow {
    /// A limit of `limit` units per `window` nanoseconds.
    pub const fn new(limit: NonZeroU32, window: NonZeroU64) -> Self {
        Self { limit, window }
    }

    /// Validates `limit` (units, > 0) and `window_ns` (nanoseconds, > 0).
    pub fn try_new(limit: u32, window_ns: u64) -> Result<Self, LimitError> {
        let limit = NonZeroU32::new(limit).ok_or(LimitError::Zero { field: "limit" })?;
        let window = NonZeroU64::new(window_ns).ok_or(LimitError::Zero { field: "window_ns" })?;
        Ok(Self::new(limit, window))
    }

    /// Units admitted per window.
    pub const fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// Window length in nanoseconds.
    pub const fn window_ns(&self) -> NonZeroU64 {
        self.window
    }

    /// Decides `cost` units at `now` (monotonic ns); a `now` before the state's window counts
    /// in that window (see the module docs on time going backwards).
    #[must_use]
    pub fn decide(
        &self,
        state: FixedWindowState,
        now: u64,
        cost: u32,
    ) -> (Decision, FixedWindowState) {
        let limit = self.limit.get();
        let window = self.window.get();
        let aligned = now - now % window;
        let mut st = state;
        if aligned > st.window_start {
            st = FixedWindowState {
                window_start: aligned,
                count: 0,
            };
        }
        let reset = st
            .window_start
            .saturating_add(window)
            .saturating_sub(now.max(st.window_start));
        match st.count.checked_add(cost).filter(|&n| n <= limit) {
            Some(count) => {
                st.count = count;
                let decision = Decision {
                    verdict: Verdict::Allow,
                    limit,
                    remaining: limit - count,
                    reset_after_ns: if count == 0 { 0 } else { reset },
                    retry_after_ns: 0,
                };
                (decision, st)
            }
            None => {
                let decision = Decision {
                    verdict: Verdict::Reject,
                    limit,
                    remaining: limit.saturating_sub(st.count),
                    reset_after_ns: reset,
                    retry_after_ns: if cost > limit { Decision::NEVER } else { reset },
                };
                (decision, st)
            }
        }
    }
}

impl FixedWindowState {
    /// Encoded length in bytes.
    pub const LEN: usize = 13;

    /// Encodes as tag `0x11`, window start (u64 LE), count (u32 LE).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        Writer::new(TAG_FIXED_WINDOW)
            .u64(self.window_start)
            .u32(self.count)
            .finish()
    }

    /// Decodes [`FixedWindowState::to_bytes`]; wrong length or tag is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let mut r = Reader::open(bytes, TAG_FIXED_WINDOW, Self::LEN)?;
        Ok(Self {
            window_start: r.u64(),
            count: r.u32(),
        })
    }
}

impl RateLimiter for FixedWindow {
    type State = FixedWindowState;

    fn decide(&self, state: FixedWindowState, now: u64, cost: u32) -> (Decision, FixedWindowState) {
        FixedWindow::decide(self, state, now, cost)
    }
}

impl LimiterState for FixedWindowState {
    type Bytes = [u8; Self::LEN];

    fn to_bytes(&self) -> Self::Bytes {
        FixedWindowState::to_bytes(self)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        FixedWindowState::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limiter(limit: u32) -> FixedWindow {
        FixedWindow::try_new(limit, SEC).unwrap()
    }

    #[test]
    fn admits_up_to_the_limit_then_rejects() {
        let fw = limiter(3);
        let mut st = FixedWindowState::default();
        for remaining in [2, 1, 0] {
            let (d, next) = fw.decide(st, 100, 1);
            assert_eq!(d.verdict, Verdict::Allow);
            assert_eq!(d.remaining, remaining);
            st = next;
        }
        let (d, next) = fw.decide(st, SEC / 4, 1);
        assert_eq!(d.verdict, Verdict::Reject);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_ns, SEC - SEC / 4);
        assert_eq!(d.reset_after_ns, SEC - SEC / 4);
        assert_eq!(next, st, "a rejection consumes nothing");
    }

    #[test]
    fn fixed_window_resets_at_boundary() {
        let fw = limiter(1);
        let (_, st) = fw.decide(FixedWindowState::default(), SEC - 1, 1);
        assert_eq!(fw.decide(st, SEC - 1, 1).0.verdict, Verdict::Reject);
        let (d, _) = fw.decide(st, SEC, 1);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.reset_after_ns, SEC);
    }

    #[test]
    fn cost_counts_units_and_oversized_cost_is_never_admitted() {
        let fw = limiter(5);
        let (d, st) = fw.decide(FixedWindowState::default(), 0, 4);
        assert_eq!((d.verdict, d.remaining), (Verdict::Allow, 1));
        assert_eq!(fw.decide(st, 0, 2).0.verdict, Verdict::Reject);
        let (d, _) = fw.decide(FixedWindowState::default(), 0, 6);
        assert_eq!(d.retry_after_ns, Decision::NEVER);
    }

    #[test]
    fn earlier_now_counts_in_the_stored_window() {
        let fw = limiter(1);
        let (_, st) = fw.decide(FixedWindowState::default(), 5 * SEC, 1);
        let (d, next) = fw.decide(st, 4 * SEC, 1);
        assert_eq!(d.verdict, Verdict::Reject);
        assert_eq!(
            d.reset_after_ns, SEC,
            "reset measured from the stored window's start"
        );
        assert_eq!(next, st);
    }

    #[test]
    fn extreme_times_saturate_instead_of_overflowing() {
        let fw = FixedWindow::try_new(1, u64::MAX).unwrap();
        let (d, st) = fw.decide(FixedWindowState::default(), u64::MAX, 1);
        assert!(d.is_admitted());
        assert_eq!(fw.decide(st, u64::MAX, 1).0.verdict, Verdict::Reject);
        let fw = limiter(u32::MAX);
        let (_, st) = fw.decide(FixedWindowState::default(), 0, u32::MAX);
        assert_eq!(fw.decide(st, 0, u32::MAX).0.verdict, Verdict::Reject);
    }

    #[test]
    fn try_new_names_the_zero_field() {
        assert_eq!(
            FixedWindow::try_new(0, SEC),
            Err(LimitError::Zero { field: "limit" })
        );
        let err = FixedWindow::try_new(1, 0).unwrap_err();
        assert_eq!(err.to_string(), "window_ns must be greater than zero");
    }
}
