//! Pure governance logic for meshguard: time and randomness are parameters, no I/O.

mod breaker;
mod ratelimit;

pub use crate::{
    breaker::{
        Breaker, BreakerBuilder, BreakerError, BreakerMode, BreakerPhase, BreakerState,
        BreakerStateError, BreakerWindow, FailurePolicy, Outcome, OutcomeKind, Permit,
        ResponseFacts, Transition, TransitionReason, UpstreamFailure, MAX_STATUS_RANGES,
        MAX_WINDOW_BUCKETS, MAX_WINDOW_CALLS, PER_MILLE,
    },
    ratelimit::{
        ApproxSlidingWindow, ApproxSlidingWindowState, Decision, FixedWindow, FixedWindowState,
        LeakyBucket, LeakyBucketState, LimitError, LimiterState, RateLimiter, SlidingWindow,
        SlidingWindowState, StateError, TokenBucket, TokenBucketState, Verdict, MAX_SUB_WINDOWS,
    },
};
