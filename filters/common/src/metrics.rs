//! Envoy stats defined by a filter: defined once (in the root context, at configure time) by
//! name, then updated by id. Envoy shows them under `wasmcustom.<name>` in `/stats`. A
//! [`BatchedCounter`] keeps a hot path's increments in the VM until the root's next tick.

use std::cell::Cell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// A counter defined with `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    id: u32,
}

impl Counter {
    /// Defines (or finds, when a VM defines the same name again) the counter `name`.
    pub fn define(name: &str) -> Option<Self> {
        hostcalls::define_metric(MetricType::Counter, name)
            .ok()
            .map(|id| Self { id })
    }

    /// Adds `n`; a failure (the host dropped the metric) is ignored: stats never fail requests.
    pub fn add(&self, n: u64) {
        let _ = hostcalls::increment_metric(self.id, i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Adds one.
    pub fn increment(&self) {
        self.add(1);
    }
}

/// A gauge defined with `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge {
    id: u32,
}

impl Gauge {
    /// Defines (or finds) the gauge `name`.
    pub fn define(name: &str) -> Option<Self> {
        hostcalls::define_metric(MetricType::Gauge, name)
            .ok()
            .map(|id| Self { id })
    }

    /// Sets the value.
    pub fn set(&self, value: u64) {
        let _ = hostcalls::record_metric(self.id, value);
    }

    /// Adds `delta` (negative to decrease).
    pub fn add(&self, delta: i64) {
        let _ = hostcalls::increment_metric(self.id, delta);
    }
}

/// A counter bumped on a hot path: increments are summed in the VM (no host call) and handed to
/// the host by [`BatchedCounter::flush`], which the root context calls on its tick (every
/// [`BatchedCounter::FLUSH_PERIOD`] at the latest) and when the VM shuts down. Envoy's stat
/// therefore lags this worker's requests by at most one tick. Each Envoy worker runs its own
/// VM, so "batched per worker".
#[derive(Debug, Default)]
pub struct BatchedCounter {
    counter: Option<Counter>,
    pending: Cell<u64>,
}

impl BatchedCounter {
    /// The longest a filter lets counts wait in the VM before handing them to the host.
    pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

    /// Defines (or finds) the counter `name`; without it (the host refused) counts are dropped.
    pub fn define(name: &str) -> Self {
        Self::new(Counter::define(name))
    }

    /// Batches increments of `counter` (`None`: counts are dropped).
    pub fn new(counter: Option<Counter>) -> Self {
        Self {
            counter,
            pending: Cell::new(0),
        }
    }

    /// Adds one in the VM (no host call).
    pub fn increment(&self) {
        self.add(1);
    }

    /// Adds `n` in the VM (no host call).
    pub fn add(&self, n: u64) {
        if self.counter.is_some() {
            self.pending.set(self.pending.get().saturating_add(n));
        }
    }

    /// Counts not yet handed to the host.
    pub fn pending(&self) -> u64 {
        self.pending.get()
    }

    /// Hands the pending counts to the host: one host call, none when nothing is pending.
    pub fn flush(&self) {
        let n = self.pending.replace(0);
        if let (Some(counter), true) = (self.counter, n > 0) {
            counter.add(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batched_counter_sums_in_the_vm_until_flushed() {
        // Flushing calls the host (which a native test binary cannot even link), so only the
        // in-VM part is tested here; the filters' host-sim tests check the flushed stats.
        let batched = BatchedCounter::new(Some(Counter { id: 7 }));
        batched.increment();
        batched.add(4);
        assert_eq!(batched.pending(), 5);
    }

    #[test]
    fn a_batched_counter_without_a_metric_drops_counts() {
        let batched = BatchedCounter::new(None);
        batched.add(3);
        assert_eq!(batched.pending(), 0);
    }
}
