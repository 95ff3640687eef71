//! The validated breaker configuration and its builder.

use core::num::{NonZeroU16, NonZeroU32, NonZeroU64};

use super::BreakerError;

/// Fixed-point denominator of ratios and of the backoff multiplier: 1000 per mille = 1.0.
pub const PER_MILLE: u32 = 1000;

/// The most calls a count-based window remembers (one bit each, in a 128-bit ring).
pub const MAX_WINDOW_CALLS: u32 = 128;

/// The most buckets a time-based window is split into.
pub const MAX_WINDOW_BUCKETS: u32 = 10;

/// How the breaker behaves, set by the operator in the breaker's configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BreakerMode {
    /// The state machine runs and blocks: CLOSED → OPEN → HALF_OPEN → CLOSED/OPEN.
    #[default]
    Normal,
    /// Shadow mode: the state machine runs and reports transitions, but nothing is blocked;
    /// a call that would have been rejected gets [`super::Permit::ShadowRejected`].
    MetricsOnly,
    /// Every call is rejected (FORCED_OPEN) until the mode changes.
    ForcedOpen,
    /// Every call is allowed and nothing is recorded (DISABLED) until the mode changes.
    Disabled,
}

/// The sliding window over which failure and slow-call ratios are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerWindow {
    /// The last `calls` calls (1 ..= [`MAX_WINDOW_CALLS`]).
    Count {
        /// Window size in calls.
        calls: u32,
    },
    /// The calls of the last `window_ns` nanoseconds, kept in `buckets` (1 ..=
    /// [`MAX_WINDOW_BUCKETS`]) buckets of `ceil(window_ns / buckets)` ns each.
    Time {
        /// Window length in nanoseconds.
        window_ns: u64,
        /// Number of buckets the window is split into.
        buckets: u32,
    },
}

/// A validated window: the count ring's size or the time buckets' length and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Window {
    /// Count-based: ring size in calls, 1..=128.
    Count { calls: u8 },
    /// Time-based: bucket length in ns and number of buckets, 1..=10.
    Time { bucket_ns: NonZeroU64, buckets: u8 },
}

/// The ratio conditions and the window they are measured over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ratios {
    pub(super) window: Window,
    pub(super) min_calls: NonZeroU32,
    pub(super) failure: Option<NonZeroU16>,
    pub(super) slow: Option<NonZeroU16>,
}

/// A validated circuit breaker: its mode, trip conditions and timings. Immutable; the
/// changing part lives in a [`super::BreakerState`] passed to [`Breaker::acquire`] and
/// [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    pub(super) mode: BreakerMode,
    pub(super) consecutive: Option<NonZeroU32>,
    pub(super) ratios: Option<Ratios>,
    pub(super) slow_threshold: Option<NonZeroU64>,
    pub(super) open: NonZeroU64,
    pub(super) backoff: u32,
    pub(super) max_open: NonZeroU64,
    pub(super) probes: NonZeroU32,
    pub(super) successes: NonZeroU32,
    pub(super) probe_timeout: NonZeroU64,
}

/// Collects a breaker's settings; [`BreakerBuilder::build`] validates them all at once.
///
/// Defaults: mode [`BreakerMode::Normal`], no trip condition (at least one is required), open
/// 30 s growing ×2 per consecutive trip up to 300 s, HALF_OPEN admitting 1 probe that must
/// succeed, probe timeout 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerBuilder {
    mode: BreakerMode,
    consecutive_failures: Option<u32>,
    window: Option<(BreakerWindow, u32)>,
    failure_ratio: Option<u32>,
    slow_calls: Option<(u64, u32)>,
    open: (u64, u32, u64),
    half_open: (u32, u32, u64),
}

const SEC: u64 = 1_000_000_000;

impl Default for BreakerBuilder {
    fn default() -> Self {
        Self {
            mode: BreakerMode::Normal,
            consecutive_failures: None,
            window: None,
            failure_ratio: None,
            slow_calls: None,
            open: (30 * SEC, 2 * PER_MILLE, 300 * SEC),
            half_open: (1, 1, 60 * SEC),
        }
    }
}

impl BreakerBuilder {
    /// Sets the mode (default [`BreakerMode::Normal`]).
    #[must_use]
    pub const fn mode(mut self, mode: BreakerMode) -> Self {
        self.mode = mode;
        self
    }

    /// Trips after `n` (≥ 1) failures in a row while CLOSED; a success resets the count.
    #[must_use]
    pub const fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Measures the ratio conditions over `window`; they are evaluated only once the window
    /// holds at least `min_calls` (≥ 1) calls.
    #[must_use]
    pub const fn window(mut self, window: BreakerWindow, min_calls: u32) -> Self {
        self.window = Some((window, min_calls));
        self
    }

    /// Trips when failures / calls in the window ≥ `per_mille` / 1000 (1 ..= 1000).
    #[must_use]
    pub const fn failure_ratio(mut self, per_mille: u32) -> Self {
        self.failure_ratio = Some(per_mille);
        self
    }

    /// Trips when slow calls / calls in the window ≥ `ratio_per_mille` / 1000 (1 ..= 1000);
    /// a call is slow when its duration (request start to response headers) ≥ `threshold_ns`.
    #[must_use]
    pub const fn slow_calls(mut self, threshold_ns: u64, ratio_per_mille: u32) -> Self {
        self.slow_calls = Some((threshold_ns, ratio_per_mille));
        self
    }

    /// OPEN lasts `open_ns` after a trip from CLOSED; each further trip from HALF_OPEN
    /// multiplies the last duration by `backoff_per_mille` / 1000 (≥ 1000), capped at
    /// `max_open_ns` (≥ `open_ns`).
    #[must_use]
    pub const fn open(mut self, open_ns: u64, backoff_per_mille: u32, max_open_ns: u64) -> Self {
        self.open = (open_ns, backoff_per_mille, max_open_ns);
        self
    }

    /// HALF_OPEN admits `probes` (≥ 1) probe calls in total and closes after `successes`
    /// (1 ..= `probes`) of them succeed; once all probes are out it waits at most
    /// `probe_timeout_ns` after the last one for their outcomes before reopening.
    #[must_use]
    pub const fn half_open(mut self, probes: u32, successes: u32, probe_timeout_ns: u64) -> Self {
        self.half_open = (probes, successes, probe_timeout_ns);
        self
    }

    /// Validates every setting; the error names the first offending field.
    pub fn build(self) -> Result<Breaker, BreakerError> {
        let consecutive = match self.consecutive_failures {
            Some(n) => Some(nonzero32(n, "consecutive_failures")?),
            None => None,
        };
        let failure = match self.failure_ratio {
            Some(r) => Some(ratio(r, "failure_ratio")?),
            None => None,
        };
        let (slow_threshold, slow) = match self.slow_calls {
            Some((threshold, r)) => (
                Some(nonzero64(threshold, "slow_call_threshold_ns")?),
                Some(ratio(r, "slow_call_ratio")?),
            ),
            None => (None, None),
        };
        if consecutive.is_none() && failure.is_none() && slow.is_none() {
            return Err(BreakerError::NoTripCondition);
        }
        let ratios = match (self.window, failure.is_some() || slow.is_some()) {
            (_, false) => None,
            (None, true) => {
                let field = if failure.is_some() {
                    "failure_ratio"
                } else {
                    "slow_call_ratio"
                };
                return Err(BreakerError::MissingWindow { field });
            }
            (Some((window, min_calls)), true) => {
                let min_calls = nonzero32(min_calls, "min_calls")?;
                let window = validate_window(window, min_calls)?;
                Some(Ratios {
                    window,
                    min_calls,
                    failure,
                    slow,
                })
            }
        };

        let (open_ns, backoff, max_open_ns) = self.open;
        let open = nonzero64(open_ns, "open_ns")?;
        if backoff < PER_MILLE {
            return Err(BreakerError::BackoffBelowOne { got: backoff });
        }
        let max_open = nonzero64(max_open_ns, "max_open_ns")?;
        if max_open < open {
            return Err(BreakerError::MaxOpenBelowOpen {
                open_ns,
                max_open_ns,
            });
        }

        let (probes, successes, probe_timeout_ns) = self.half_open;
        let probes = nonzero32(probes, "half_open.probes")?;
        let successes = nonzero32(successes, "half_open.successes")?;
        if successes > probes {
            return Err(BreakerError::SuccessesAboveProbes {
                successes: successes.get(),
                probes: probes.get(),
            });
        }
        let probe_timeout = nonzero64(probe_timeout_ns, "half_open.probe_timeout_ns")?;

        Ok(Breaker {
            mode: self.mode,
            consecutive,
            ratios,
            slow_threshold,
            open,
            backoff,
            max_open,
            probes,
            successes,
            probe_timeout,
        })
    }
}

fn nonzero32(n: u32, field: &'static str) -> Result<NonZeroU32, BreakerError> {
    NonZeroU32::new(n).ok_or(BreakerError::Zero { field })
}

fn nonzero64(n: u64, field: &'static str) -> Result<NonZeroU64, BreakerError> {
    NonZeroU64::new(n).ok_or(BreakerError::Zero { field })
}

fn ratio(per_mille: u32, field: &'static str) -> Result<NonZeroU16, BreakerError> {
    u16::try_from(per_mille)
        .ok()
        .filter(|&r| u32::from(r) <= PER_MILLE)
        .and_then(NonZeroU16::new)
        .ok_or(BreakerError::RatioOutOfRange {
            field,
            got: per_mille,
        })
}

fn too_large(field: &'static str, got: u32, max: u32) -> BreakerError {
    BreakerError::TooLarge {
        field,
        got: u64::from(got),
        max: u64::from(max),
    }
}

fn validate_window(window: BreakerWindow, min_calls: NonZeroU32) -> Result<Window, BreakerError> {
    match window {
        BreakerWindow::Count { calls } => {
            let n = nonzero32(calls, "window.calls")?;
            let calls_u8 = u8::try_from(n.get())
                .ok()
                .filter(|_| n.get() <= MAX_WINDOW_CALLS)
                .ok_or_else(|| too_large("window.calls", calls, MAX_WINDOW_CALLS))?;
            if min_calls > n {
                return Err(BreakerError::MinCallsAboveWindow {
                    min_calls: min_calls.get(),
                    calls,
                });
            }
            Ok(Window::Count { calls: calls_u8 })
        }
        BreakerWindow::Time { window_ns, buckets } => {
            let w = nonzero64(window_ns, "window.window_ns")?;
            let b = nonzero32(buckets, "window.buckets")?;
            let buckets_u8 = u8::try_from(b.get())
                .ok()
                .filter(|_| b.get() <= MAX_WINDOW_BUCKETS)
                .ok_or_else(|| too_large("window.buckets", buckets, MAX_WINDOW_BUCKETS))?;
            let short = BreakerError::WindowShorterThanBuckets { window_ns, buckets };
            if w.get() < u64::from(b.get()) {
                return Err(short);
            }
            let bucket_ns = NonZeroU64::new(w.get().div_ceil(u64::from(b.get()))).ok_or(short)?;
            Ok(Window::Time {
                bucket_ns,
                buckets: buckets_u8,
            })
        }
    }
}

impl Breaker {
    /// Starts collecting settings with the documented defaults.
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::default()
    }

    /// The configured mode.
    pub const fn mode(&self) -> BreakerMode {
        self.mode
    }

    /// Probe calls HALF_OPEN admits in total per HALF_OPEN period.
    pub const fn probes(&self) -> NonZeroU32 {
        self.probes
    }

    /// Successful probes that close the breaker.
    pub const fn successes_to_close(&self) -> NonZeroU32 {
        self.successes
    }

    /// Open duration in nanoseconds after a trip from CLOSED.
    pub const fn open_ns(&self) -> NonZeroU64 {
        self.open
    }

    /// Cap on the open duration in nanoseconds.
    pub const fn max_open_ns(&self) -> NonZeroU64 {
        self.max_open
    }

    /// True when a call of `duration_ns` counts as slow (a slow-call condition is set and the
    /// duration is at least its threshold).
    pub fn is_slow(&self, duration_ns: u64) -> bool {
        self.slow_threshold.is_some_and(|t| duration_ns >= t.get())
    }

    /// True when recording a successful call depends neither on when it completed nor on how
    /// long it took: no slow-call condition (so no duration) and no ratio window (so no time
    /// bucket and no trip a success could complete). A success then only resets the run of
    /// consecutive failures or counts a probe, so a caller may pass any `now` to
    /// [`Breaker::record`] for it and skip reading its clock (a host call in a filter).
    pub fn success_is_timeless(&self) -> bool {
        self.slow_threshold.is_none() && self.ratios.is_none()
    }
}
