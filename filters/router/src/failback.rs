//! The failback queue of one service in one VM: failed idempotent requests waiting to be
//! resent from the root context, bounded (a full queue drops the newest and counts it), each
//! resent with capped exponential backoff and jitter until it succeeds or runs out of attempts.

use std::collections::{HashMap, VecDeque};

use meshguard_core::{Backoff, Rng};

/// A request to resend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resend {
    /// Request headers, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Sends so far (the original included).
    pub attempts: u32,
    /// Earliest wall-clock ns of the next send.
    pub next_at: u64,
}

/// What became of a resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resent {
    /// It succeeded (a status below 500).
    Delivered,
    /// It failed and is queued again.
    Retrying,
    /// It failed and has no attempt left: dropped.
    Exhausted,
}

/// One service's queue.
#[derive(Debug)]
pub struct FailbackQueue {
    waiting: VecDeque<Resend>,
    in_flight: HashMap<u32, Resend>,
    capacity: usize,
    max_attempts: u32,
    backoff: Backoff,
}

impl FailbackQueue {
    /// An empty queue of `capacity` requests (waiting and in flight together).
    pub fn new(capacity: u32, max_attempts: u32, backoff: Backoff) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: HashMap::new(),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            max_attempts,
            backoff,
        }
    }

    /// Requests waiting or in flight.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.in_flight.len()
    }

    /// Queues a request that failed once at `now`; `false` if the queue is full (dropped).
    pub fn push(
        &mut self,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        now: u64,
        rng: &mut impl Rng,
    ) -> bool {
        if self.len() >= self.capacity {
            return false;
        }
        self.waiting.push_back(Resend {
            headers,
            body,
            attempts: 1,
            next_at: now.saturating_add(self.backoff.delay_ns(1, rng)),
        });
        true
    }

    /// Takes the requests due at `now`, oldest first.
    pub fn due(&mut self, now: u64) -> Vec<Resend> {
        let (due, later): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|r| r.next_at <= now);
        self.waiting = later.into();
        due
    }

    /// `resend` went out with `token`.
    pub fn sent(&mut self, token: u32, mut resend: Resend) {
        resend.attempts = resend.attempts.saturating_add(1);
        self.in_flight.insert(token, resend);
    }

    /// `resend` could not be dispatched at `now`: it counts as a failed attempt.
    pub fn not_sent(&mut self, mut resend: Resend, now: u64, rng: &mut impl Rng) -> Resent {
        resend.attempts = resend.attempts.saturating_add(1);
        self.retry_or_drop(resend, now, rng)
    }

    /// The resend `token` got `status` (`None`: no response) at `now`.
    pub fn answered(
        &mut self,
        token: u32,
        status: Option<u16>,
        now: u64,
        rng: &mut impl Rng,
    ) -> Option<Resent> {
        let resend = self.in_flight.remove(&token)?;
        if status.is_some_and(|s| s < 500) {
            return Some(Resent::Delivered);
        }
        Some(self.retry_or_drop(resend, now, rng))
    }

    fn retry_or_drop(&mut self, mut resend: Resend, now: u64, rng: &mut impl Rng) -> Resent {
        if resend.attempts >= self.max_attempts {
            return Resent::Exhausted;
        }
        resend.next_at = now.saturating_add(self.backoff.delay_ns(resend.attempts, rng));
        self.waiting.push_back(resend);
        Resent::Retrying
    }
}

#[cfg(test)]
mod tests {
    use meshguard_core::SplitMix64;

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_full_queue_drops_and_resends_back_off_until_they_run_out() {
        let mut q = FailbackQueue::new(1, 3, Backoff::try_new(S, 4 * S).unwrap());
        let mut rng = SplitMix64::new(3);
        assert!(q.push(vec![], vec![], 0, &mut rng));
        assert!(!q.push(vec![], vec![], 0, &mut rng), "capacity 1");
        assert!(q.due(S / 2 - 1).is_empty(), "first delay at least base/2");
        let r = q.due(S).pop().unwrap();
        q.sent(1, r);
        assert_eq!(
            q.answered(1, Some(503), S, &mut rng),
            Some(Resent::Retrying)
        );
        let r = q.due(3 * S).pop().unwrap();
        assert_eq!(r.attempts, 2);
        q.sent(2, r);
        assert_eq!(
            q.answered(2, None, 3 * S, &mut rng),
            Some(Resent::Exhausted)
        );
        assert_eq!(q.len(), 0);
        assert!(q.push(vec![], vec![], 0, &mut rng));
        let r = q.due(S).pop().unwrap();
        q.sent(3, r);
        assert_eq!(
            q.answered(3, Some(200), S, &mut rng),
            Some(Resent::Delivered)
        );
        assert_eq!(q.answered(3, Some(200), S, &mut rng), None);
    }
}
