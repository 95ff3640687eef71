//! Leaky bucket as a queue: paces requests at exactly `rate` per `period_ns` by telling the
//! caller how long to hold each one, and rejects a request that would wait longer than
//! `max_delay_ns`.
//!
//! Source: GCRA virtual scheduling (ITU-T I.371) used as a shaper rather than a policer — the
//! scheme of Sentinel's `RateLimiterController` ("uniform rate" with `maxQueueingTimeMs`) and
//! nginx `limit_req` with `delay`. The state is the theoretical arrival time (TAT): the
//! earliest time the next request may be forwarded. A request of `cost` at `now` is scheduled
//! at `start = max(TAT, now)`; if `start − now ≤ max_delay_ns` it is admitted with that delay
//! and TAT becomes `start + cost·T`, otherwise it is rejected and nothing changes.
//!
//! Guarantees (property-tested): forwarded requests start at least `cost·T` apart (in order of
//! decision), and no request is delayed more than `max_delay_ns`. At most
//! `floor(max_delay_ns / T) + 1` unit requests fit from an idle state: the queue capacity
//! reported as the decision's `limit`. State: 9 bytes encoded.

use core::num::{NonZeroU32, NonZeroU64};

use super::codec::{Reader, Writer, TAG_LEAKY_BUCKET};
use super::{
    emission_interval, saturate_u32, Decision, LimitError, LimiterState, RateLimiter, StateError,
    Verdict,
};

/// Forward at most `rate` units per `period_ns`, evenly spaced, queueing up to `max_delay_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakyBucket {
    rate: NonZeroU32,
    period: NonZeroU64,
    interval: NonZeroU64,
    max_delay: NonZeroU64,
}

/// State of a [`LeakyBucket`]: the earliest time the next request may go, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeakyBucketState {
    tat: u64,
}

impl LeakyBucket {
    /// Validates `rate` (units per period, > 0, at most one per ns), `period_ns` (ns, > 0) and
    /// `max_delay_ns` (ns, at least one emission interval, or the queue could never hold one).
    pub fn try_new(rate: u32, period_ns: u64, max_delay_ns: u64) -> Result<Self, LimitError> {
        let (rate, period, interval) = emission_interval(rate, period_ns)?;
        let max_delay = NonZeroU64::new(max_delay_ns)
            .filter(|d| *d >= interval)
            .ok_or(LimitError::MaxDelayBelowInterval {
                max_delay_ns,
                interval_ns: interval.get(),
            })?;
        Ok(Self {
            rate,
            period,
            interval,
            max_delay,
        })
    }

    /// Units forwarded per period.
    pub const fn rate(&self) -> NonZeroU32 {
        self.rate
    }

    /// The period of `rate`, in nanoseconds.
    pub const fn period_ns(&self) -> NonZeroU64 {
        self.period
    }

    /// Nanoseconds between unit requests: `ceil(period_ns / rate)`.
    pub const fn interval_ns(&self) -> NonZeroU64 {
        self.interval
    }

    /// The longest a request may be held, in nanoseconds.
    pub const fn max_delay_ns(&self) -> NonZeroU64 {
        self.max_delay
    }

    /// Unit requests admissible back to back from idle: `floor(max_delay / T) + 1`.
    pub fn capacity(&self) -> u32 {
        saturate_u32(self.max_delay.get() / self.interval.get()).saturating_add(1)
    }

    /// Unit requests still admissible at `now` when the next may start at `tat`.
    fn remaining(&self, tat: u64, now: u64) -> u32 {
        let wait = tat.saturating_sub(now);
        match self.max_delay.get().checked_sub(wait) {
            Some(slack) => saturate_u32(slack / self.interval.get()).saturating_add(1),
            None => 0,
        }
    }

    /// Decides `cost` units at `now` (monotonic ns): [`Verdict::Allow`] with no queue,
    /// [`Verdict::Delay`] with the wait, or [`Verdict::Reject`] beyond `max_delay_ns`.
    #[must_use]
    pub fn decide(
        &self,
        state: LeakyBucketState,
        now: u64,
        cost: u32,
    ) -> (Decision, LeakyBucketState) {
        let start = state.tat.max(now);
        let delay = start - now;
        let limit = self.capacity();
        if delay > self.max_delay.get() {
            let decision = Decision {
                verdict: Verdict::Reject,
                limit,
                remaining: 0,
                reset_after_ns: delay,
                retry_after_ns: delay - self.max_delay.get(),
            };
            return (decision, state);
        }
        let tat = start.saturating_add(u64::from(cost).saturating_mul(self.interval.get()));
        let decision = Decision {
            verdict: if delay == 0 {
                Verdict::Allow
            } else {
                Verdict::Delay(delay)
            },
            limit,
            remaining: self.remaining(tat, now),
            reset_after_ns: tat - now,
            retry_after_ns: 0,
        };
        (decision, LeakyBucketState { tat })
    }
}

impl LeakyBucketState {
    /// Encoded length in bytes.
    pub const LEN: usize = 9;

    /// Encodes as tag `0x51`, TAT (u64 LE).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        Writer::new(TAG_LEAKY_BUCKET).u64(self.tat).finish()
    }

    /// Decodes [`LeakyBucketState::to_bytes`]; wrong length or tag is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let mut r = Reader::open(bytes, TAG_LEAKY_BUCKET, Self::LEN)?;
        Ok(Self { tat: r.u64() })
    }
}

impl RateLimiter for LeakyBucket {
    type State = LeakyBucketState;

    fn decide(&self, state: LeakyBucketState, now: u64, cost: u32) -> (Decision, LeakyBucketState) {
        LeakyBucket::decide(self, state, now, cost)
    }
}

impl LimiterState for LeakyBucketState {
    type Bytes = [u8; Self::LEN];

    fn to_bytes(&self) -> Self::Bytes {
        LeakyBucketState::to_bytes(self)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        LeakyBucketState::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// 10 per second (100 ms apart), holding requests up to 250 ms.
    fn pacer() -> LeakyBucket {
        LeakyBucket::try_new(10, 1_000 * MS, 250 * MS).unwrap()
    }

    #[test]
    fn paces_a_burst_one_interval_apart() {
        let lb = pacer();
        let mut st = LeakyBucketState::default();
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            let (d, next) = lb.decide(st, 1_000 * MS, 1);
            verdicts.push(d.verdict);
            st = next;
        }
        assert_eq!(
            verdicts,
            [
                Verdict::Allow,
                Verdict::Delay(100 * MS),
                Verdict::Delay(200 * MS),
                Verdict::Reject
            ]
        );
    }

    #[test]
    fn rejects_when_the_queue_delay_would_exceed_the_maximum() {
        let lb = pacer();
        assert_eq!(lb.capacity(), 3);
        let mut st = LeakyBucketState::default();
        for _ in 0..3 {
            st = lb.decide(st, 0, 1).1;
        }
        let (d, next) = lb.decide(st, 10 * MS, 1);
        assert_eq!(d.verdict, Verdict::Reject);
        assert_eq!(
            (d.remaining, d.retry_after_ns, d.reset_after_ns),
            (0, 40 * MS, 290 * MS)
        );
        assert_eq!(next, st);
        assert_eq!(
            lb.decide(st, 50 * MS, 1).0.verdict,
            Verdict::Delay(250 * MS)
        );
    }

    #[test]
    fn spaced_requests_pass_without_delay() {
        let lb = pacer();
        let (d, st) = lb.decide(LeakyBucketState::default(), 0, 1);
        assert_eq!((d.verdict, d.remaining, d.limit), (Verdict::Allow, 2, 3));
        let (d, _) = lb.decide(st, 100 * MS, 1);
        assert_eq!(d.verdict, Verdict::Allow);
    }

    #[test]
    fn a_costly_request_holds_the_queue_for_cost_intervals() {
        let lb = pacer();
        let (_, st) = lb.decide(LeakyBucketState::default(), 0, 2);
        assert_eq!(lb.decide(st, 0, 1).0.verdict, Verdict::Delay(200 * MS));
    }

    #[test]
    fn try_new_rejects_a_max_delay_below_the_interval() {
        assert_eq!(
            LeakyBucket::try_new(10, 1_000 * MS, 99 * MS)
                .unwrap_err()
                .to_string(),
            "max_delay_ns (99000000) must be at least the emission interval (100000000 ns)"
        );
        assert!(LeakyBucket::try_new(10, 1_000 * MS, 0).is_err());
        assert_eq!(
            LeakyBucket::try_new(0, MS, MS),
            Err(LimitError::Zero { field: "rate" })
        );
    }

    #[test]
    fn huge_costs_and_times_saturate() {
        let lb = pacer();
        let (d, st) = lb.decide(LeakyBucketState::default(), u64::MAX - 1, u32::MAX);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(lb.decide(st, u64::MAX, 1).0.verdict, Verdict::Allow);
    }
}
