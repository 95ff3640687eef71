//! The real clock: proxy-wasm's `proxy_get_current_time_nanoseconds`, the only clock read in
//! the filters (core takes `now` as a parameter).
//!
//! ABI 0.2.1 has no monotonic clock: Envoy answers with its wall clock
//! (`timeSource().systemTime()`), which NTP may step backwards. [`WallClock`] never goes back
//! within one VM (it repeats the highest time it has returned), but other workers' VMs have
//! their own clocks, so state in shared data can still carry a slightly later time than the
//! reader's `now`. The core algorithms treat such a `now` as the state's time (saturating,
//! never underflowing): a step back of Δ can hold a limit at its current level for at most Δ,
//! and never admits more than the later time would have.

use std::cell::Cell;
use std::time::UNIX_EPOCH;

/// Nanoseconds since the Unix epoch from the host, never decreasing within this VM.
#[derive(Debug, Default)]
pub struct WallClock {
    high_water: Cell<u64>,
}

impl WallClock {
    /// A clock that has returned nothing yet.
    pub const fn new() -> Self {
        Self {
            high_water: Cell::new(0),
        }
    }

    /// Nanoseconds since the Unix epoch; the highest value seen so far if the host's wall clock
    /// stepped back; 0 if the host cannot tell the time (it always can in Envoy).
    pub fn now_ns(&self) -> u64 {
        let host = proxy_wasm::hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.observe(host)
    }

    /// Clamps a host reading to the highest one seen.
    fn observe(&self, host_ns: u64) -> u64 {
        let now = host_ns.max(self.high_water.get());
        self.high_water.set(now);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_step_back_repeats_the_last_time() {
        let clock = WallClock::new();
        assert_eq!(clock.observe(100), 100);
        assert_eq!(clock.observe(40), 100);
        assert_eq!(clock.observe(150), 150);
    }
}
