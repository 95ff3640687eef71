//! Held requests of one VM, released by the root context's timer.
//!
//! ABI 0.2.1 has no per-stream timer, only one tick timer per root context. The queue keeps the
//! paused streams ordered by release time and arms the timer for the earliest one (whole
//! milliseconds, rounded up, so a request is never released early); each tick resumes the due
//! streams and re-arms for the next, or says it needs no timer when the queue is empty (the
//! filter then keeps the tick at its stats flush period, never longer). The pacing
//! itself was decided in shared data when the request arrived, so this queue is per VM and
//! needs no coordination.

use std::collections::BTreeSet;

const NANOS_PER_MS: u64 = 1_000_000;

/// Paused streams by release time.
#[derive(Debug, Default)]
pub(crate) struct DelayQueue {
    waiting: BTreeSet<(u64, u32)>,
    /// When the armed timer fires (nanoseconds), if it is armed.
    armed_for: Option<u64>,
}

/// What to do with the tick timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Leave it as it is.
    Keep,
    /// Set the tick period to this many milliseconds (0: the queue needs no timer).
    Set(u64),
}

impl DelayQueue {
    /// Holds stream `context_id` until `release` (ns); says how to arm the timer.
    pub(crate) fn push(&mut self, context_id: u32, release: u64, now: u64) -> Timer {
        self.waiting.insert((release, context_id));
        match self.armed_for {
            Some(at) if at <= release => Timer::Keep,
            _ => self.arm(now),
        }
    }

    /// Forgets a stream that went away while held (client reset, timeout).
    pub(crate) fn remove(&mut self, context_id: u32, release: u64) {
        self.waiting.remove(&(release, context_id));
    }

    /// Streams due at `now` (in release order), and how to re-arm the timer.
    pub(crate) fn due(&mut self, now: u64) -> (Vec<u32>, Timer) {
        let mut due = Vec::new();
        while let Some(&(release, id)) = self.waiting.first() {
            if release > now {
                break;
            }
            self.waiting.pop_first();
            due.push(id);
        }
        (due, self.arm(now))
    }

    /// Held streams.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Arms the timer for the earliest release (at least 1 ms away) or stops it.
    fn arm(&mut self, now: u64) -> Timer {
        match self.waiting.first() {
            Some(&(release, _)) => {
                let ms = release.saturating_sub(now).div_ceil(NANOS_PER_MS).max(1);
                self.armed_for = Some(now.saturating_add(ms * NANOS_PER_MS));
                Timer::Set(ms)
            }
            None => {
                self.armed_for = None;
                Timer::Set(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = NANOS_PER_MS;

    #[test]
    fn releases_in_order_and_never_early() {
        let mut q = DelayQueue::default();
        assert_eq!(q.push(7, 250 * MS, 0), Timer::Set(250));
        assert_eq!(
            q.push(8, 100 * MS + 1, 0),
            Timer::Set(101),
            "earlier: re-armed, rounded up"
        );
        assert_eq!(q.push(9, 300 * MS, 0), Timer::Keep);
        assert_eq!(q.due(100 * MS), (vec![], Timer::Set(1)));
        assert_eq!(q.due(101 * MS), (vec![8], Timer::Set(149)));
        assert_eq!(q.due(400 * MS), (vec![7, 9], Timer::Set(0)));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_removed_stream_is_not_resumed() {
        let mut q = DelayQueue::default();
        q.push(1, 10 * MS, 0);
        q.push(2, 20 * MS, 0);
        q.remove(1, 10 * MS);
        assert_eq!(q.due(30 * MS), (vec![2], Timer::Set(0)));
    }
}
