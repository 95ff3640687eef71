//! The state machine: `acquire` before a call, `record` after it.

use core::num::NonZeroU16;

use super::config::{Breaker, BreakerMode, Ratios, PER_MILLE};
use super::state::{BreakerPhase, BreakerState, Totals, WindowState};
use super::BreakerStateError;

/// Whether a call may go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Forward the call and [`Breaker::record`] its outcome with `was_probe = probe`.
    Allowed {
        /// True when this call is one of HALF_OPEN's probes.
        probe: bool,
    },
    /// Do not forward: serve the fallback. `retry_after_ns` is when the breaker may admit
    /// again ([`Permit::UNTIL_RELEASED`] in FORCED_OPEN).
    Rejected {
        /// Nanoseconds until the state may change (OPEN ends / outstanding probes time out).
        retry_after_ns: u64,
    },
    /// METRICS_ONLY: the call would have been rejected, but is forwarded. Count it; do not
    /// record its outcome (a rejected call would not have produced one).
    ShadowRejected {
        /// What `Rejected` would have said.
        retry_after_ns: u64,
    },
}

impl Permit {
    /// `retry_after_ns` of FORCED_OPEN: nothing but a mode change will admit calls.
    pub const UNTIL_RELEASED: u64 = u64::MAX;

    /// True when the call goes to the upstream (allowed, or shadow-rejected).
    pub const fn forwards(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }

    /// True when the call's outcome must be passed to [`Breaker::record`].
    pub const fn records(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }

    /// True for a HALF_OPEN probe.
    pub const fn is_probe(&self) -> bool {
        matches!(self, Self::Allowed { probe: true })
    }
}

/// Success or failure of one call, as the filter's [`super::FailurePolicy`] classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// The upstream answered acceptably.
    Success,
    /// The call counts against the upstream.
    Failure,
}

/// The outcome of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Success or failure.
    pub kind: OutcomeKind,
    /// Nanoseconds from request start to response headers (or to the failure).
    pub duration_ns: u64,
}

impl Outcome {
    /// A successful call of `duration_ns` ns.
    pub const fn success(duration_ns: u64) -> Self {
        Self {
            kind: OutcomeKind::Success,
            duration_ns,
        }
    }

    /// A failed call of `duration_ns` ns.
    pub const fn failure(duration_ns: u64) -> Self {
        Self {
            kind: OutcomeKind::Failure,
            duration_ns,
        }
    }
}

/// Why the breaker changed phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionReason {
    /// CLOSED → OPEN: `consecutive_failures` failures in a row.
    ConsecutiveFailures,
    /// CLOSED → OPEN: the window's failure ratio reached `failure_ratio`.
    FailureRatio,
    /// CLOSED → OPEN: the window's slow-call ratio reached `slow_call_ratio`.
    SlowCallRatio,
    /// OPEN → HALF_OPEN: the open duration passed.
    OpenElapsed,
    /// HALF_OPEN → OPEN: a probe failed (or was slow).
    ProbeFailed,
    /// HALF_OPEN → OPEN: all probes were out and none reported within the probe timeout.
    ProbeTimeout,
    /// HALF_OPEN → CLOSED: enough probes succeeded.
    ProbesSucceeded,
    /// Any phase → FORCED_OPEN / DISABLED, or back to CLOSED: the configured mode changed.
    ModeChanged,
}

/// A phase change, returned exactly once: by the call whose state the CAS committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// Phase before.
    pub from: BreakerPhase,
    /// Phase after.
    pub to: BreakerPhase,
    /// Why.
    pub reason: TransitionReason,
}

impl Breaker {
    /// A fresh state in the phase the mode asks for (CLOSED, FORCED_OPEN or DISABLED).
    pub fn initial_state(&self) -> BreakerState {
        let mut st = BreakerState::default();
        self.reset(&mut st, self.mode_phase().unwrap_or(BreakerPhase::Closed));
        st
    }

    /// Decides whether a call at `now` (monotonic ns) may go upstream. Returns the permit, the
    /// transition it caused (OPEN → HALF_OPEN, HALF_OPEN → OPEN on probe timeout, or a mode
    /// change), and the state to store.
    #[must_use]
    pub fn acquire(
        &self,
        state: BreakerState,
        now: u64,
    ) -> (Permit, Option<Transition>, BreakerState) {
        let mut st = state;
        let mut transition = self.follow_mode(&mut st);
        let permit = match st.phase {
            BreakerPhase::Disabled | BreakerPhase::Closed => Permit::Allowed { probe: false },
            BreakerPhase::ForcedOpen => Permit::Rejected {
                retry_after_ns: Permit::UNTIL_RELEASED,
            },
            BreakerPhase::Open if now >= st.until => {
                st.phase = BreakerPhase::HalfOpen;
                st.admitted = 1;
                st.successes = 0;
                st.until = now.saturating_add(self.probe_timeout.get());
                transition = Some(Transition {
                    from: BreakerPhase::Open,
                    to: BreakerPhase::HalfOpen,
                    reason: TransitionReason::OpenElapsed,
                });
                Permit::Allowed { probe: true }
            }
            BreakerPhase::Open => self.reject(st.until - now),
            BreakerPhase::HalfOpen if st.admitted < self.probes.get() => {
                st.admitted += 1;
                st.until = now.saturating_add(self.probe_timeout.get());
                Permit::Allowed { probe: true }
            }
            BreakerPhase::HalfOpen if now >= st.until => {
                transition = Some(self.trip(&mut st, now, TransitionReason::ProbeTimeout));
                self.reject(st.until - now)
            }
            BreakerPhase::HalfOpen => self.reject(st.until - now),
        };
        (permit, transition, st)
    }

    /// Records the outcome of a call admitted by [`Breaker::acquire`] (only for
    /// [`Permit::Allowed`]; `was_probe` is its `probe` flag), completed at `now`. Returns the
    /// transition it caused (CLOSED → OPEN, HALF_OPEN → OPEN/CLOSED, or a mode change) and the
    /// state to store.
    ///
    /// Outcomes that no longer matter are ignored: any outcome while OPEN, FORCED_OPEN or
    /// DISABLED; a non-probe outcome while HALF_OPEN (the call was admitted while CLOSED);
    /// and a probe outcome beyond the number of probes admitted in this HALF_OPEN period (a
    /// late probe from an earlier one). A probe outcome arriving after the breaker closed is
    /// measured like any CLOSED call.
    #[must_use]
    pub fn record(
        &self,
        state: BreakerState,
        now: u64,
        outcome: Outcome,
        was_probe: bool,
    ) -> (Option<Transition>, BreakerState) {
        let mut st = state;
        if let Some(t) = self.follow_mode(&mut st) {
            // The call was admitted under the previous mode: its outcome is not measured.
            return (Some(t), st);
        }
        let failed = outcome.kind == OutcomeKind::Failure;
        let slow = self.is_slow(outcome.duration_ns);
        let transition = match st.phase {
            BreakerPhase::Open | BreakerPhase::ForcedOpen | BreakerPhase::Disabled => None,
            BreakerPhase::Closed => self.measure(&mut st, now, failed, slow),
            BreakerPhase::HalfOpen if !was_probe || st.successes >= st.admitted => None,
            // A slow probe means the upstream is still slow: it fails the probe.
            BreakerPhase::HalfOpen if failed || slow => {
                Some(self.trip(&mut st, now, TransitionReason::ProbeFailed))
            }
            BreakerPhase::HalfOpen => {
                st.successes += 1;
                (st.successes >= self.successes.get()).then(|| {
                    self.reset(&mut st, BreakerPhase::Closed);
                    Transition {
                        from: BreakerPhase::HalfOpen,
                        to: BreakerPhase::Closed,
                        reason: TransitionReason::ProbesSucceeded,
                    }
                })
            }
        };
        (transition, st)
    }

    /// [`Breaker::acquire`] over the stored bytes (`None`: no state yet, the
    /// [`Breaker::initial_state`]); returns the bytes to store with the read's CAS token.
    pub fn acquire_bytes(
        &self,
        stored: Option<&[u8]>,
        now: u64,
    ) -> Result<(Permit, Option<Transition>, [u8; BreakerState::LEN]), BreakerStateError> {
        let state = self.decode(stored)?;
        let (permit, transition, next) = self.acquire(state, now);
        Ok((permit, transition, next.to_bytes()))
    }

    /// [`Breaker::acquire_bytes`] that asks for the time only when the decision depends on
    /// it: OPEN and HALF_OPEN compare `now` with their deadline, while CLOSED, DISABLED and
    /// FORCED_OPEN (after the mode is applied) decide without it. Returns what
    /// `acquire_bytes(stored, now())` returns, and the time it read (`None`: `now` was not
    /// called), so a filter's hot path of a closed breaker costs no clock read.
    #[allow(clippy::type_complexity)]
    pub fn acquire_bytes_lazy(
        &self,
        stored: Option<&[u8]>,
        now: impl FnOnce() -> u64,
    ) -> Result<
        (
            Permit,
            Option<Transition>,
            [u8; BreakerState::LEN],
            Option<u64>,
        ),
        BreakerStateError,
    > {
        let state = self.decode(stored)?;
        let mut probe = state;
        let _ = self.follow_mode(&mut probe);
        let read = matches!(probe.phase, BreakerPhase::Open | BreakerPhase::HalfOpen).then(now);
        // CLOSED, DISABLED and FORCED_OPEN never look at `now`: 0 stands in for it.
        let (permit, transition, next) = self.acquire(state, read.unwrap_or(0));
        Ok((permit, transition, next.to_bytes(), read))
    }

    /// [`Breaker::record`] over the stored bytes (`None`: no state yet, the
    /// [`Breaker::initial_state`]); returns the bytes to store with the read's CAS token.
    pub fn record_bytes(
        &self,
        stored: Option<&[u8]>,
        now: u64,
        outcome: Outcome,
        was_probe: bool,
    ) -> Result<(Option<Transition>, [u8; BreakerState::LEN]), BreakerStateError> {
        let state = self.decode(stored)?;
        let (transition, next) = self.record(state, now, outcome, was_probe);
        Ok((transition, next.to_bytes()))
    }

    fn decode(&self, stored: Option<&[u8]>) -> Result<BreakerState, BreakerStateError> {
        match stored {
            Some(bytes) => BreakerState::from_bytes(bytes),
            None => Ok(self.initial_state()),
        }
    }

    /// The phase a forcing mode pins the breaker to.
    fn mode_phase(&self) -> Option<BreakerPhase> {
        match self.mode {
            BreakerMode::ForcedOpen => Some(BreakerPhase::ForcedOpen),
            BreakerMode::Disabled => Some(BreakerPhase::Disabled),
            BreakerMode::Normal | BreakerMode::MetricsOnly => None,
        }
    }

    /// Brings a state written under another mode into this one's phases.
    fn follow_mode(&self, st: &mut BreakerState) -> Option<Transition> {
        let forced = matches!(st.phase, BreakerPhase::ForcedOpen | BreakerPhase::Disabled);
        let to = match self.mode_phase() {
            Some(p) if p != st.phase => p,
            None if forced => BreakerPhase::Closed,
            _ => return None,
        };
        let from = st.phase;
        self.reset(st, to);
        Some(Transition {
            from,
            to,
            reason: TransitionReason::ModeChanged,
        })
    }

    /// Enters `phase` with a fresh window, counters and backoff.
    fn reset(&self, st: &mut BreakerState, phase: BreakerPhase) {
        *st = BreakerState {
            phase,
            window: WindowState::fresh(self.ratios.map(|r| r.window)),
            ..BreakerState::default()
        };
    }

    /// Rejects, or only reports the rejection in METRICS_ONLY.
    fn reject(&self, retry_after_ns: u64) -> Permit {
        if self.mode == BreakerMode::MetricsOnly {
            Permit::ShadowRejected { retry_after_ns }
        } else {
            Permit::Rejected { retry_after_ns }
        }
    }

    /// Measures a CLOSED call; trips when a condition is met.
    fn measure(
        &self,
        st: &mut BreakerState,
        now: u64,
        failed: bool,
        slow: bool,
    ) -> Option<Transition> {
        st.consecutive = if failed {
            st.consecutive.saturating_add(1)
        } else {
            0
        };
        let totals = match self.ratios {
            Some(r) => st.window.push(r.window, now, failed, slow),
            None => Totals::default(),
        };
        let reason = if self.consecutive.is_some_and(|n| st.consecutive >= n.get()) {
            TransitionReason::ConsecutiveFailures
        } else if self.ratio_reached(totals, totals.failures, |r| r.failure) {
            TransitionReason::FailureRatio
        } else if self.ratio_reached(totals, totals.slow, |r| r.slow) {
            TransitionReason::SlowCallRatio
        } else {
            return None;
        };
        Some(self.trip(st, now, reason))
    }

    /// `count / calls ≥ threshold` once the window holds `min_calls` calls.
    fn ratio_reached(
        &self,
        totals: Totals,
        count: u64,
        threshold: impl Fn(&Ratios) -> Option<NonZeroU16>,
    ) -> bool {
        self.ratios.is_some_and(|r| {
            totals.calls >= u64::from(r.min_calls.get())
                && threshold(&r).is_some_and(|t| {
                    u128::from(count) * u128::from(PER_MILLE)
                        >= u128::from(t.get()) * u128::from(totals.calls)
                })
        })
    }

    /// Opens the breaker at `now`: for the base duration from CLOSED, for the last duration
    /// times the backoff (capped) from HALF_OPEN.
    fn trip(&self, st: &mut BreakerState, now: u64, reason: TransitionReason) -> Transition {
        let from = st.phase;
        let open_ns = if from == BreakerPhase::HalfOpen {
            let grown = u128::from(st.open_ns) * u128::from(self.backoff) / u128::from(PER_MILLE);
            u64::try_from(grown)
                .unwrap_or(u64::MAX)
                .clamp(self.open.get(), self.max_open.get())
        } else {
            self.open.get()
        };
        self.reset(st, BreakerPhase::Open);
        st.open_ns = open_ns;
        st.until = now.saturating_add(open_ns);
        Transition {
            from,
            to: BreakerPhase::Open,
            reason,
        }
    }
}
