//! A rule's limits over their encoded states: every limit of a group must admit a request,
//! and a group's states change only when it admits (so a rejection consumes nothing).
//!
//! One key's entry holds the states of the rule's limits (the shared pool) and of each tier's
//! reserved limits, back to back: one compare-and-swap updates them together, so "reserved
//! first, then the pool" is decided atomically.

use meshguard_core::{
    ApproxSlidingWindowState, Decision, FixedWindowState, LeakyBucketState, LimiterState,
    RateLimiter, SlidingWindowState, TokenBucketState, Verdict,
};

use crate::config::BuiltLimit;

impl BuiltLimit {
    /// Bytes of this limit's encoded state.
    pub(crate) const fn state_len(&self) -> usize {
        match self {
            Self::Fixed(_) => FixedWindowState::LEN,
            Self::Sliding(_) => SlidingWindowState::LEN,
            Self::Approx(_) => ApproxSlidingWindowState::LEN,
            Self::Token(_) => TokenBucketState::LEN,
            Self::Leaky(_) => LeakyBucketState::LEN,
        }
    }

    /// Decides `cost` at `now` against `stored` (all zeros or undecodable: a fresh limit) and
    /// writes the next state into `next` (same length).
    fn decide(&self, stored: &[u8], now: u64, cost: u32, next: &mut [u8]) -> Decision {
        match self {
            Self::Fixed(l) => run(l, stored, now, cost, next),
            Self::Sliding(l) => run(l, stored, now, cost, next),
            Self::Approx(l) => run(l, stored, now, cost, next),
            Self::Token(l) => run(l, stored, now, cost, next),
            Self::Leaky(l) => run(l, stored, now, cost, next),
        }
    }
}

fn run<L: RateLimiter>(
    limiter: &L,
    stored: &[u8],
    now: u64,
    cost: u32,
    next: &mut [u8],
) -> Decision {
    // A slot that was never written (zeros) fails the tag check and starts fresh; so does state
    // from an incompatible build, which the table's fingerprint normally rules out.
    let state = L::State::from_bytes(stored).unwrap_or_default();
    let (decision, after) = limiter.decide(state, now, cost);
    for (dst, src) in next.iter_mut().zip(after.to_bytes().as_ref()) {
        *dst = *src;
    }
    decision
}

/// Limits that all must admit a request, with their states' places in an entry.
#[derive(Debug, Clone)]
pub(crate) struct LimitGroup {
    limits: Vec<BuiltLimit>,
    /// Offset of the group's first state within the entry's states.
    offset: usize,
    len: usize,
    /// `action: delay`: a pacer's `Delay` holds the request. Otherwise a request that would have
    /// to wait is rejected, so a leaky bucket admits only on schedule.
    can_delay: bool,
}

impl LimitGroup {
    pub(crate) fn new(limits: Vec<BuiltLimit>, offset: usize, can_delay: bool) -> Self {
        let len = limits.iter().map(BuiltLimit::state_len).sum();
        Self {
            limits,
            offset,
            len,
            can_delay,
        }
    }

    /// Bytes of the group's states.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Decides one request against the group's states within `states` (the whole entry's
    /// states), committing the next states only when every limit admits it.
    ///
    /// The combined decision: rejected if any limit rejects (figures of the one that frees up
    /// last); else delayed by the longest delay; its figures are those of the limit with the
    /// fewest remaining requests (the one a client runs into first).
    pub(crate) fn decide(&self, states: &mut [u8], now: u64) -> Decision {
        let Some(mine) = states.get_mut(self.offset..self.offset + self.len) else {
            return reject_without_figures();
        };
        let mut next = mine.to_vec();
        let mut binding: Option<Decision> = None;
        let mut rejected: Option<Decision> = None;
        let mut delay = 0;
        let mut at = 0;
        for limit in &self.limits {
            let end = at + limit.state_len();
            let (Some(stored), Some(out)) = (mine.get(at..end), next.get_mut(at..end)) else {
                return reject_without_figures();
            };
            let mut d = limit.decide(stored, now, 1, out);
            if !self.can_delay {
                d = strict(limit, d);
            }
            at = end;
            match d.verdict {
                Verdict::Reject => {
                    if rejected.is_none_or(|r| d.retry_after_ns > r.retry_after_ns) {
                        rejected = Some(d);
                    }
                }
                Verdict::Delay(ns) => delay = delay.max(ns),
                Verdict::Allow => {}
            }
            let tighter = binding.is_none_or(|b| {
                (d.remaining, std::cmp::Reverse(d.reset_after_ns))
                    < (b.remaining, std::cmp::Reverse(b.reset_after_ns))
            });
            if tighter {
                binding = Some(d);
            }
        }
        if let Some(rejected) = rejected {
            return rejected;
        }
        mine.copy_from_slice(&next);
        let mut decision = binding.unwrap_or_else(reject_without_figures);
        decision.verdict = if delay > 0 {
            Verdict::Delay(delay)
        } else {
            Verdict::Allow
        };
        decision
    }

    /// Whether every limit in the group is back to a fresh state at `now` (a cost-0 probe sees
    /// the whole quota available), so the entry may be given to another key.
    pub(crate) fn is_idle(&self, states: &[u8], now: u64) -> bool {
        let Some(mine) = states.get(self.offset..self.offset + self.len) else {
            return true;
        };
        let mut scratch = vec![0; self.len];
        let mut at = 0;
        self.limits.iter().all(|limit| {
            let end = at + limit.state_len();
            let idle = match (mine.get(at..end), scratch.get_mut(at..end)) {
                (Some(stored), Some(out)) => limit.decide(stored, now, 0, out).reset_after_ns == 0,
                _ => true,
            };
            at = end;
            idle
        })
    }
}

/// Without a queue, a request a pacer would hold is rejected until its turn: the figures say
/// one request per emission interval, and `Retry-After` is the wait.
fn strict(limit: &BuiltLimit, d: Decision) -> Decision {
    if !matches!(limit, BuiltLimit::Leaky(_)) {
        return d;
    }
    match d.verdict {
        Verdict::Allow => Decision {
            limit: 1,
            remaining: 0,
            ..d
        },
        Verdict::Delay(wait) => Decision {
            verdict: Verdict::Reject,
            limit: 1,
            remaining: 0,
            retry_after_ns: wait,
            ..d
        },
        // Beyond the pacer's minimal queue: its reset is when the schedule frees up.
        Verdict::Reject => Decision {
            limit: 1,
            remaining: 0,
            retry_after_ns: d.reset_after_ns,
            ..d
        },
    }
}

/// A rejection that carries no quota figures (a state that does not fit its layout; never
/// happens with entries built by this crate).
pub(crate) fn reject_without_figures() -> Decision {
    Decision {
        verdict: Verdict::Reject,
        limit: 0,
        remaining: 0,
        reset_after_ns: 0,
        retry_after_ns: 0,
    }
}

#[cfg(test)]
mod tests {
    use meshguard_core::{FixedWindow, LeakyBucket, TokenBucket};

    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn fixed(n: u32, per: u64) -> BuiltLimit {
        BuiltLimit::Fixed(FixedWindow::try_new(n, per).unwrap())
    }

    fn group(limits: Vec<BuiltLimit>, can_delay: bool) -> (LimitGroup, Vec<u8>) {
        let g = LimitGroup::new(limits, 0, can_delay);
        let states = vec![0; g.len()];
        (g, states)
    }

    #[test]
    fn every_limit_must_admit_and_a_rejection_consumes_nothing() {
        let (g, mut states) = group(vec![fixed(3, SEC), fixed(2, 10 * SEC)], false);
        let first = g.decide(&mut states, 0);
        assert_eq!(first.verdict, Verdict::Allow);
        assert_eq!(
            (first.limit, first.remaining),
            (2, 1),
            "the tighter limit's figures"
        );
        assert_eq!(g.decide(&mut states, 1).verdict, Verdict::Allow);
        let before = states.clone();
        let third = g.decide(&mut states, 2);
        assert_eq!(third.verdict, Verdict::Reject);
        assert_eq!(third.limit, 2);
        assert_eq!(states, before, "the 1 s window kept its unused request");
        // The 10 s window frees up at 10 s; the 1 s window admits again at 1 s but not the group.
        assert_eq!(g.decide(&mut states, SEC).verdict, Verdict::Reject);
        assert_eq!(g.decide(&mut states, 10 * SEC).verdict, Verdict::Allow);
    }

    #[test]
    fn a_pacer_delays_only_when_the_group_may_delay() {
        let pacer = BuiltLimit::Leaky(LeakyBucket::try_new(10, SEC, 500 * MS).unwrap());
        let (queueing, mut states) = group(vec![pacer], true);
        assert_eq!(queueing.decide(&mut states, 0).verdict, Verdict::Allow);
        assert_eq!(
            queueing.decide(&mut states, 0).verdict,
            Verdict::Delay(100 * MS)
        );
        assert_eq!(
            queueing.decide(&mut states, 0).verdict,
            Verdict::Delay(200 * MS)
        );

        let strict_pacer = BuiltLimit::Leaky(LeakyBucket::try_new(10, SEC, 100 * MS).unwrap());
        let (strict, mut states) = group(vec![strict_pacer], false);
        assert_eq!(strict.decide(&mut states, 0).verdict, Verdict::Allow);
        let early = strict.decide(&mut states, 30 * MS);
        assert_eq!(early.verdict, Verdict::Reject);
        assert_eq!(early.retry_after_ns, 70 * MS);
        assert_eq!(strict.decide(&mut states, 100 * MS).verdict, Verdict::Allow);
    }

    #[test]
    fn idle_means_the_whole_quota_is_back() {
        let bucket = BuiltLimit::Token(TokenBucket::try_new(1, SEC, 2).unwrap());
        let (g, mut states) = group(vec![fixed(5, SEC), bucket], false);
        assert!(g.is_idle(&states, 0), "never written");
        g.decide(&mut states, 100);
        assert!(!g.is_idle(&states, 200));
        assert!(
            !g.is_idle(&states, SEC),
            "the bucket refills one token per second"
        );
        assert!(g.is_idle(&states, SEC + 100));
    }
}
