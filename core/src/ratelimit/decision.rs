//! The outcome of one rate-limit decision, with what the `RateLimit-*` and `Retry-After`
//! headers need.

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What to do with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the request now.
    Allow,
    /// Hold the request for this many nanoseconds, then forward it (pacing only).
    Delay(u64),
    /// Over the limit: reject the request (or only count it, in shadow mode).
    Reject,
}

/// A rate-limit decision and the quota figures for response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Allow, delay or reject.
    pub verdict: Verdict,
    /// The quota in units: requests per window, the token bucket's burst, or the pacer's
    /// queue capacity (`RateLimit-Limit`).
    pub limit: u32,
    /// Units still admissible right now after this decision (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Nanoseconds until the whole quota is available again if no more requests arrive
    /// (`RateLimit-Reset`); 0 when it already is.
    pub reset_after_ns: u64,
    /// Nanoseconds until a request of the same cost would be admitted (`Retry-After`): 0 when
    /// admitted, [`Decision::NEVER`] when the cost exceeds the quota.
    pub retry_after_ns: u64,
}

impl Decision {
    /// `retry_after_ns` of a request whose cost can never fit the quota.
    pub const NEVER: u64 = u64::MAX;

    /// True when the request goes on, now or after a delay.
    pub const fn is_admitted(&self) -> bool {
        !matches!(self.verdict, Verdict::Reject)
    }

    /// `reset_after_ns` in whole seconds, rounded up (for `RateLimit-Reset`).
    pub const fn reset_after_secs(&self) -> u64 {
        self.reset_after_ns.div_ceil(NANOS_PER_SEC)
    }

    /// `retry_after_ns` in whole seconds, rounded up (for `Retry-After`).
    pub const fn retry_after_secs(&self) -> u64 {
        self.retry_after_ns.div_ceil(NANOS_PER_SEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_seconds_round_up() {
        let d = Decision {
            verdict: Verdict::Reject,
            limit: 10,
            remaining: 0,
            reset_after_ns: 1,
            retry_after_ns: 2 * NANOS_PER_SEC + 1,
        };
        assert_eq!(d.reset_after_secs(), 1);
        assert_eq!(d.retry_after_secs(), 3);
        assert!(!d.is_admitted());
    }

    #[test]
    fn never_stays_huge_in_seconds() {
        let d = Decision {
            verdict: Verdict::Reject,
            limit: 1,
            remaining: 1,
            reset_after_ns: 0,
            retry_after_ns: Decision::NEVER,
        };
        assert_eq!(d.retry_after_secs(), u64::MAX / NANOS_PER_SEC + 1);
    }
}
