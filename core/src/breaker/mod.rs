//! Circuit breaker over compact state that one compare-and-swap can update.
//!
//! Source: the state machine of resilience4j's `CircuitBreaker` (CLOSED → OPEN → HALF_OPEN →
//! CLOSED/OPEN, with FORCED_OPEN, DISABLED and METRICS_ONLY, count- or time-based sliding
//! windows, failure and slow-call ratios with a minimum number of calls), plus Hystrix-style
//! consecutive failures and Envoy outlier detection's growing ejection time. A validated,
//! immutable [`Breaker`] (built with [`Breaker::builder`]) runs over a `Copy`
//! [`BreakerState`] with a fixed little-endian byte layout: `acquire` before a call, `record`
//! after it, each pure and allocation-free, each returning the next state and the
//! [`Transition`] it caused. A filter keeps the bytes in proxy-wasm shared data and commits
//! them with the read's CAS token; on a conflict it re-reads and decides again, so the phase
//! and HALF_OPEN's probe budget hold across all Envoy workers, and only the CAS winner sees
//! (and logs) a transition.
//!
//! Choices:
//! - Trip conditions (at least one): `consecutive_failures` in a row while CLOSED (a success
//!   resets the run); failures / calls ≥ `failure_ratio`; slow calls / calls ≥
//!   `slow_call_ratio` (slow: duration ≥ threshold, success or failure alike). Ratios are
//!   evaluated only once the window holds `min_calls`; they are integers in per mille, and
//!   the comparison is exact (`count · 1000 ≥ ratio · calls`, no floats).
//! - Windows: count-based = the last `calls` (≤ 128) outcomes as two bit rings; time-based =
//!   `buckets` (≤ 10) buckets of `ceil(window_ns / buckets)` ns aligned to multiples of their
//!   length, the current bucket and the `buckets − 1` before it, so the window covers between
//!   `window_ns − bucket` and `window_ns` of history (resilience4j's partial aggregations).
//!   Every trip or close starts a fresh window.
//! - OPEN lasts `open_ns` after a trip from CLOSED; each trip from HALF_OPEN multiplies the
//!   last duration by `backoff` (per mille, ≥ 1000, rounded down) up to `max_open_ns`. Closing
//!   resets the backoff. The first `acquire` at or after the deadline moves to HALF_OPEN and
//!   is the first probe.
//! - HALF_OPEN admits `probes` calls in total (across workers, since the count is in the
//!   shared state), closes after `successes` of them succeed, and reopens on the first probe
//!   that fails or is slow (resilience4j would wait for all probes and compare ratios; one bad
//!   probe is a clearer signal with few probes and reopens sooner). Once all probes are out,
//!   it waits `probe_timeout_ns` after the last one; a probe whose outcome never arrives
//!   (a VM restarted mid-call) then reopens it rather than leaving it stuck.
//! - Modes come from the configuration, so the operator's switch is a config change: the
//!   first `acquire`/`record` under a new mode moves the state to FORCED_OPEN or DISABLED, or
//!   from them back to CLOSED, and returns that transition once. METRICS_ONLY runs the
//!   normal machine but answers [`Permit::ShadowRejected`] where it would reject.
//! - Time: `now` is monotonic nanoseconds from the caller; nothing here reads a clock. A
//!   `now` earlier than times the state has seen (another worker committed a later `now`, or
//!   the clock stepped back) never admits earlier: OPEN stays open until its deadline, and a
//!   call before the time window's newest bucket counts in that bucket. All time arithmetic
//!   saturates at `u64::MAX`; no input, including corrupt state, panics or wraps.
//! - Memory: [`BreakerState::LEN`] = 159 bytes per breaker in shared data, whatever the
//!   window size or traffic (counts saturate at `u32::MAX`).
//! - A state is meaningful only under the breaker that wrote it: a window of another kind is
//!   started afresh, a count ring is read modulo the new size; after a real config change the
//!   caller should prefer a fresh state (key the shared data on the config).

mod classify;
mod config;
mod error;
mod machine;
mod state;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

pub use classify::{FailurePolicy, ResponseFacts, UpstreamFailure, MAX_STATUS_RANGES};
pub use config::{
    Breaker, BreakerBuilder, BreakerMode, BreakerWindow, MAX_WINDOW_BUCKETS, MAX_WINDOW_CALLS,
    PER_MILLE,
};
pub use error::{BreakerError, BreakerStateError};
pub use machine::{Outcome, OutcomeKind, Permit, Transition, TransitionReason};
pub use state::{BreakerPhase, BreakerState};
