//! Exact sliding window over a ring of sub-window counters: never more than `limit` units in
//! ANY interval of `window_ns`, whatever its alignment.
//!
//! Source: the bucketed sliding window of Sentinel's `LeapArray` (a ring of sub-window
//! counters), made exact by counting one extra bucket. The window is split into `N`
//! sub-windows of `g = ceil(window_ns / N)` ns, aligned to multiples of `g`. A request at a
//! time in bucket `b = now / g` is admitted iff its cost plus everything admitted in buckets
//! `b-N ..= b` fits the limit. Any interval of `window_ns ≤ N·g` lies within `N + 1`
//! consecutive buckets, and the last request admitted in it saw all the others in its check,
//! so no interval of `window_ns` ever holds more than `limit` units: "exact" is this hard
//! guarantee, with no error term.
//!
//! The price is conservatism, not memory: a request's check looks back between `N·g` and
//! `(N+1)·g` ns (i.e. at most `window_ns + 2g` ns), so units admitted slightly more than one
//! window ago may still count. More sub-windows shrink that slack; memory is fixed at
//! `MAX_SUB_WINDOWS + 1 = 8` u32 counters plus one u64 bucket index (41 bytes encoded),
//! independent of the limit.

use core::num::{NonZeroU32, NonZeroU64};

use super::codec::{Reader, Writer, TAG_SLIDING_WINDOW};
use super::{saturate_u32, Decision, LimitError, LimiterState, RateLimiter, StateError, Verdict};

/// Number of counters in the state's ring (`MAX_SUB_WINDOWS + 1`).
const SLOTS: usize = 8;

/// The largest number of sub-windows a [`SlidingWindow`] can split its window into.
pub const MAX_SUB_WINDOWS: u32 = SLOTS as u32 - 1;

/// At most `limit` units in any interval of `window_ns` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    limit: NonZeroU32,
    window: NonZeroU64,
    sub_windows: NonZeroU32,
    bucket: NonZeroU64,
}

/// State of a [`SlidingWindow`]: the newest bucket's index and a ring of per-bucket counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlidingWindowState {
    newest: u64,
    counts: [u32; SLOTS],
}

impl SlidingWindow {
    /// Validates `limit` (units, > 0), `window_ns` (ns, ≥ `sub_windows`) and `sub_windows`
    /// (1 ..= [`MAX_SUB_WINDOWS`]; more means less conservative, see the module docs).
    pub fn try_new(limit: u32, window_ns: u64, sub_windows: u32) -> Result<Self, LimitError> {
        let limit = NonZeroU32::new(limit).ok_or(LimitError::Zero { field: "limit" })?;
        let window = NonZeroU64::new(window_ns).ok_or(LimitError::Zero { field: "window_ns" })?;
        let sub_windows = NonZeroU32::new(sub_windows)
            .filter(|n| n.get() <= MAX_SUB_WINDOWS)
            .ok_or(LimitError::SubWindowsOutOfRange {
                got: sub_windows,
                max: MAX_SUB_WINDOWS,
            })?;
        let short = LimitError::WindowShorterThanSubWindows {
            window_ns,
            sub_windows: sub_windows.get(),
        };
        if window.get() < u64::from(sub_windows.get()) {
            return Err(short);
        }
        let bucket =
            NonZeroU64::new(window.get().div_ceil(u64::from(sub_windows.get()))).ok_or(short)?;
        Ok(Self {
            limit,
            window,
            sub_windows,
            bucket,
        })
    }

    /// Units admitted per window.
    pub const fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// Window length in nanoseconds.
    pub const fn window_ns(&self) -> NonZeroU64 {
        self.window
    }

    /// Number of sub-windows the window is split into.
    pub const fn sub_windows(&self) -> NonZeroU32 {
        self.sub_windows
    }

    /// Sub-window (bucket) length in nanoseconds: `ceil(window_ns / sub_windows)`.
    pub const fn bucket_ns(&self) -> NonZeroU64 {
        self.bucket
    }

    /// Ring length in use: `sub_windows + 1` buckets.
    fn ring(&self) -> u64 {
        u64::from(self.sub_windows.get()) + 1
    }

    /// Ring slot of the bucket `age` buckets older than `newest`.
    fn slot(&self, newest: u64, age: u64) -> usize {
        let ring = self.ring();
        // < ring ≤ SLOTS, so the cast is lossless.
        ((newest % ring + ring - age % ring) % ring) as usize
    }

    /// Decides `cost` units at `now` (monotonic ns); a `now` before the state's newest bucket
    /// counts in that bucket (see the module docs on time going backwards).
    #[must_use]
    pub fn decide(
        &self,
        state: SlidingWindowState,
        now: u64,
        cost: u32,
    ) -> (Decision, SlidingWindowState) {
        let limit = self.limit.get();
        let ring = self.ring();
        let g = self.bucket.get();
        let b = (now / g).max(state.newest);
        let mut st = state;
        let gap = b - st.newest;
        if gap >= ring {
            st.counts = [0; SLOTS];
        } else {
            for age in 0..gap {
                st.counts[self.slot(b, age)] = 0;
            }
        }
        st.newest = b;
        let used: u64 = st
            .counts
            .iter()
            .take(ring as usize)
            .map(|&c| u64::from(c))
            .sum();

        if used + u64::from(cost) <= u64::from(limit) {
            let slot = self.slot(b, 0);
            st.counts[slot] = st.counts[slot].saturating_add(cost);
            let decision = Decision {
                verdict: Verdict::Allow,
                limit,
                remaining: saturate_u32(u64::from(limit) - used - u64::from(cost)),
                reset_after_ns: self.reset_after(&st, now),
                retry_after_ns: 0,
            };
            return (decision, st);
        }
        let retry_after_ns = if cost > limit {
            Decision::NEVER
        } else {
            // Advance bucket by bucket, dropping the oldest, until the cost fits.
            let mut left = used;
            let mut at = Decision::NEVER;
            for k in 1..=ring {
                left -= u64::from(st.counts[self.slot(b, ring - k)]);
                if left + u64::from(cost) <= u64::from(limit) {
                    at = b.saturating_add(k).saturating_mul(g).saturating_sub(now);
                    break;
                }
            }
            at
        };
        let decision = Decision {
            verdict: Verdict::Reject,
            limit,
            remaining: saturate_u32(u64::from(limit).saturating_sub(used)),
            reset_after_ns: self.reset_after(&st, now),
            retry_after_ns,
        };
        (decision, st)
    }

    /// Nanoseconds until the newest non-empty bucket leaves the counted range.
    fn reset_after(&self, st: &SlidingWindowState, now: u64) -> u64 {
        let ring = self.ring();
        (0..ring)
            .find(|&age| st.counts[self.slot(st.newest, age)] > 0)
            .map_or(0, |age| {
                st.newest
                    .saturating_add(ring - age)
                    .saturating_mul(self.bucket.get())
                    .saturating_sub(now)
            })
    }
}

impl SlidingWindowState {
    /// Encoded length in bytes.
    pub const LEN: usize = 1 + 8 + 4 * SLOTS;

    /// Encodes as tag `0x21`, newest bucket index (u64 LE), 8 counts (u32 LE each).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut w = Writer::new(TAG_SLIDING_WINDOW).u64(self.newest);
        for &c in &self.counts {
            w = w.u32(c);
        }
        w.finish()
    }

    /// Decodes [`SlidingWindowState::to_bytes`]; wrong length or tag is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let mut r = Reader::open(bytes, TAG_SLIDING_WINDOW, Self::LEN)?;
        let newest = r.u64();
        let counts = core::array::from_fn(|_| r.u32());
        Ok(Self { newest, counts })
    }
}

impl RateLimiter for SlidingWindow {
    type State = SlidingWindowState;

    fn decide(
        &self,
        state: SlidingWindowState,
        now: u64,
        cost: u32,
    ) -> (Decision, SlidingWindowState) {
        SlidingWindow::decide(self, state, now, cost)
    }
}

impl LimiterState for SlidingWindowState {
    type Bytes = [u8; Self::LEN];

    fn to_bytes(&self) -> Self::Bytes {
        SlidingWindowState::to_bytes(self)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        SlidingWindowState::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn rejects_a_burst_straddling_the_boundary_that_a_fixed_window_would_admit() {
        // 2 per second, 4 sub-windows of 250 ms.
        let sw = SlidingWindow::try_new(2, SEC, 4).unwrap();
        let (_, st) = sw.decide(SlidingWindowState::default(), 900 * SEC / 1000, 2);
        let (d, _) = sw.decide(st, 1100 * SEC / 1000, 1);
        assert_eq!(d.verdict, Verdict::Reject);
        // The 900 ms bucket [750, 1000) leaves the counted range when bucket 8 ([2000, 2250)) starts.
        assert_eq!(d.retry_after_ns, 2000 * SEC / 1000 - 1100 * SEC / 1000);
        assert_eq!(d.reset_after_ns, d.retry_after_ns);
        assert_eq!(sw.decide(st, 2 * SEC, 2).0.verdict, Verdict::Allow);
    }

    #[test]
    fn retry_after_is_when_enough_old_buckets_expire() {
        let sw = SlidingWindow::try_new(3, 4 * SEC, 4).unwrap();
        let mut st = SlidingWindowState::default();
        for t in [0, SEC, 2 * SEC] {
            st = sw.decide(st, t, 1).1;
        }
        let (d, _) = sw.decide(st, 3 * SEC, 2);
        assert_eq!(d.verdict, Verdict::Reject);
        assert_eq!(d.remaining, 0);
        // Needs two units freed: buckets 0 and 1 expire when buckets 5 and 6 start.
        assert_eq!(d.retry_after_ns, 6 * SEC - 3 * SEC);
        assert_eq!(sw.decide(st, 6 * SEC, 2).0.verdict, Verdict::Allow);
        assert_eq!(sw.decide(st, 6 * SEC - 1, 2).0.verdict, Verdict::Reject);
    }

    #[test]
    fn a_jump_longer_than_the_ring_clears_every_bucket() {
        let sw = SlidingWindow::try_new(1, SEC, 7).unwrap();
        let (_, st) = sw.decide(SlidingWindowState::default(), 0, 1);
        let (d, st) = sw.decide(st, u64::MAX, 1);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(
            sw.decide(st, 0, 1).0.verdict,
            Verdict::Reject,
            "time going back stays in the newest bucket"
        );
    }

    #[test]
    fn bucket_length_rounds_up_so_the_buckets_cover_the_window() {
        let sw = SlidingWindow::try_new(1, 10, 3).unwrap();
        assert_eq!(sw.bucket_ns().get(), 4);
    }

    #[test]
    fn try_new_rejects_impossible_windows() {
        assert_eq!(
            SlidingWindow::try_new(0, SEC, 2),
            Err(LimitError::Zero { field: "limit" })
        );
        assert_eq!(
            SlidingWindow::try_new(1, 0, 2),
            Err(LimitError::Zero { field: "window_ns" })
        );
        assert_eq!(
            SlidingWindow::try_new(1, SEC, 8),
            Err(LimitError::SubWindowsOutOfRange {
                got: 8,
                max: MAX_SUB_WINDOWS
            })
        );
        assert_eq!(
            SlidingWindow::try_new(1, SEC, 0).unwrap_err().to_string(),
            "sub_windows must be between 1 and 7, got 0"
        );
        assert_eq!(
            SlidingWindow::try_new(1, 3, 4),
            Err(LimitError::WindowShorterThanSubWindows {
                window_ns: 3,
                sub_windows: 4
            })
        );
    }
}
