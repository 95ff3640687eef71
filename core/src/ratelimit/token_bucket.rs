//! Token bucket (`rate` per `period_ns`, up to `burst` at once) in its GCRA form: the state is
//! one u64, the theoretical arrival time (TAT) of the next unit if the bucket were drained at
//! exactly the rate.
//!
//! Source: the Generic Cell Rate Algorithm, virtual-scheduling form (ITU-T I.371, ATM Forum
//! TM 4.0), as used by the `governor` crate and described in Brandur Leach's "Rate limiting,
//! cells, and GCRA". With emission interval `T = ceil(period_ns / rate)` ns per unit and
//! capacity `τ = burst·T`, a request of `cost` units at `now` is admitted iff
//! `max(TAT, now) + cost·T ≤ now + τ`, and then TAT becomes the left side. An empty state
//! (TAT 0) is a full bucket.
//!
//! Guarantee (property-tested): over any interval `[a, b]`, admitted units ≤
//! `burst + (b − a) / T` ≤ `burst + rate·(b − a)/period_ns`. `T` is rounded up, so the enforced
//! rate is at most 1 ns per unit slower than configured, never faster. A TAT that would pass
//! `u64::MAX` (year 2554) fails closed: rejected with `retry_after_ns == NEVER`. State: 9 bytes.

use core::num::{NonZeroU32, NonZeroU64};

use super::codec::{Reader, Writer, TAG_TOKEN_BUCKET};
use super::{
    emission_interval, saturate_u32, Decision, LimitError, LimiterState, RateLimiter, StateError,
    Verdict,
};

/// `rate` units per `period_ns` on average, with bursts of up to `burst` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    rate: NonZeroU32,
    period: NonZeroU64,
    burst: NonZeroU32,
    interval: NonZeroU64,
    capacity_ns: u64,
}

/// State of a [`TokenBucket`]: the theoretical arrival time in nanoseconds (0: full bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenBucketState {
    tat: u64,
}

impl TokenBucket {
    /// Validates `rate` (units per period, > 0, at most one per ns), `period_ns` (ns, > 0) and
    /// `burst` (units, > 0, with `burst` × the emission interval fitting in u64 ns).
    pub fn try_new(rate: u32, period_ns: u64, burst: u32) -> Result<Self, LimitError> {
        let (rate, period, interval) = emission_interval(rate, period_ns)?;
        let burst = NonZeroU32::new(burst).ok_or(LimitError::Zero { field: "burst" })?;
        let capacity_ns = interval
            .get()
            .checked_mul(u64::from(burst.get()))
            .ok_or(LimitError::BurstOverflow { burst: burst.get() })?;
        Ok(Self {
            rate,
            period,
            burst,
            interval,
            capacity_ns,
        })
    }

    /// Units added per period.
    pub const fn rate(&self) -> NonZeroU32 {
        self.rate
    }

    /// The period of `rate`, in nanoseconds.
    pub const fn period_ns(&self) -> NonZeroU64 {
        self.period
    }

    /// Bucket capacity in units.
    pub const fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// Nanoseconds per unit: `ceil(period_ns / rate)`.
    pub const fn interval_ns(&self) -> NonZeroU64 {
        self.interval
    }

    /// Decides `cost` units at `now` (monotonic ns). A `now` earlier than a previous one just
    /// sees less refill: GCRA needs no special case for time going backwards.
    #[must_use]
    pub fn decide(
        &self,
        state: TokenBucketState,
        now: u64,
        cost: u32,
    ) -> (Decision, TokenBucketState) {
        let t = self.interval.get();
        let burst = self.burst.get();
        let base = state.tat.max(now);
        // The horizon may saturate: a TAT that fits in u64 is then below the true horizon too.
        let horizon = now.saturating_add(self.capacity_ns);
        // cost ≤ burst keeps cost·T ≤ τ in u64; a TAT past u64::MAX fails closed.
        let tat = Some(cost)
            .filter(|&c| c <= burst)
            .and_then(|c| base.checked_add(u64::from(c) * t));
        match tat {
            Some(tat) if tat <= horizon => {
                let decision = Decision {
                    verdict: Verdict::Allow,
                    limit: burst,
                    remaining: saturate_u32((horizon - tat) / t),
                    reset_after_ns: tat - now,
                    retry_after_ns: 0,
                };
                (decision, TokenBucketState { tat })
            }
            _ => {
                let decision = Decision {
                    verdict: Verdict::Reject,
                    limit: burst,
                    remaining: saturate_u32(horizon.saturating_sub(base) / t),
                    reset_after_ns: base - now,
                    retry_after_ns: tat.map_or(Decision::NEVER, |tat| tat - horizon),
                };
                (decision, state)
            }
        }
    }
}

impl TokenBucketState {
    /// Encoded length in bytes.
    pub const LEN: usize = 9;

    /// Encodes as tag `0x41`, TAT (u64 LE).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        Writer::new(TAG_TOKEN_BUCKET).u64(self.tat).finish()
    }

    /// Decodes [`TokenBucketState::to_bytes`]; wrong length or tag is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let mut r = Reader::open(bytes, TAG_TOKEN_BUCKET, Self::LEN)?;
        Ok(Self { tat: r.u64() })
    }
}

impl RateLimiter for TokenBucket {
    type State = TokenBucketState;

    fn decide(&self, state: TokenBucketState, now: u64, cost: u32) -> (Decision, TokenBucketState) {
        TokenBucket::decide(self, state, now, cost)
    }
}

impl LimiterState for TokenBucketState {
    type Bytes = [u8; Self::LEN];

    fn to_bytes(&self) -> Self::Bytes {
        TokenBucketState::to_bytes(self)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        TokenBucketState::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    #[test]
    fn admits_a_full_burst_from_a_fresh_state() {
        let tb = TokenBucket::try_new(10, SEC, 3).unwrap();
        let mut st = TokenBucketState::default();
        for remaining in [2, 1, 0] {
            let (d, next) = tb.decide(st, 5 * SEC, 1);
            assert_eq!(
                (d.verdict, d.remaining, d.limit),
                (Verdict::Allow, remaining, 3)
            );
            st = next;
        }
        let (d, _) = tb.decide(st, 5 * SEC, 1);
        assert_eq!(d.reset_after_ns, 300 * MS);
    }

    #[test]
    fn rejects_when_bucket_empty() {
        let tb = TokenBucket::try_new(10, SEC, 2).unwrap();
        let (_, st) = tb.decide(TokenBucketState::default(), 0, 2);
        let (d, next) = tb.decide(st, 0, 1);
        assert_eq!(d.verdict, Verdict::Reject);
        assert_eq!(
            (d.remaining, d.retry_after_ns, d.reset_after_ns),
            (0, 100 * MS, 200 * MS)
        );
        assert_eq!(next, st, "a rejection consumes nothing");
    }

    #[test]
    fn refills_one_token_per_emission_interval() {
        let tb = TokenBucket::try_new(10, SEC, 1).unwrap();
        let (_, st) = tb.decide(TokenBucketState::default(), 0, 1);
        assert_eq!(tb.decide(st, 100 * MS - 1, 1).0.verdict, Verdict::Reject);
        let (d, _) = tb.decide(st, 100 * MS, 1);
        assert_eq!(d.verdict, Verdict::Allow);
    }

    #[test]
    fn cost_above_burst_is_never_admitted() {
        let tb = TokenBucket::try_new(10, SEC, 2).unwrap();
        let (d, st) = tb.decide(TokenBucketState::default(), 0, 3);
        assert_eq!(
            (d.verdict, d.retry_after_ns, d.remaining),
            (Verdict::Reject, Decision::NEVER, 2)
        );
        assert_eq!(st, TokenBucketState::default());
    }

    #[test]
    fn interval_rounds_up_so_the_rate_is_never_exceeded() {
        let tb = TokenBucket::try_new(3, SEC, 1).unwrap();
        assert_eq!(tb.interval_ns().get(), 333_333_334);
    }

    #[test]
    fn fails_closed_when_the_tat_would_pass_the_end_of_time() {
        let tb = TokenBucket::try_new(1, SEC, 1).unwrap();
        let (d, st) = tb.decide(TokenBucketState::default(), u64::MAX - 1, 1);
        assert_eq!(
            (d.verdict, d.retry_after_ns),
            (Verdict::Reject, Decision::NEVER)
        );
        assert_eq!(st, TokenBucketState::default());
        let (_, st) = tb.decide(st, u64::MAX - SEC, 1);
        assert_eq!(
            tb.decide(st, 0, 1).0.verdict,
            Verdict::Reject,
            "time going back sees no refill"
        );
    }

    #[test]
    fn try_new_rejects_impossible_rates() {
        assert_eq!(
            TokenBucket::try_new(0, SEC, 1),
            Err(LimitError::Zero { field: "rate" })
        );
        assert_eq!(
            TokenBucket::try_new(1, 0, 1),
            Err(LimitError::Zero { field: "period_ns" })
        );
        assert_eq!(
            TokenBucket::try_new(1, SEC, 0),
            Err(LimitError::Zero { field: "burst" })
        );
        assert_eq!(
            TokenBucket::try_new(2_000, 1_000, 1)
                .unwrap_err()
                .to_string(),
            "rate (2000) must not exceed period_ns (1000): at most one unit per nanosecond"
        );
        assert_eq!(
            TokenBucket::try_new(1, u64::MAX, 2),
            Err(LimitError::BurstOverflow { burst: 2 })
        );
    }
}
