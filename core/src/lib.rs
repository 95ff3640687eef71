//! Pure governance logic for meshguard: time and randomness are parameters, no I/O.

mod ratelimit;

pub use ratelimit::{
    ApproxSlidingWindow, ApproxSlidingWindowState, Decision, FixedWindow, FixedWindowState,
    LeakyBucket, LeakyBucketState, LimitError, LimiterState, RateLimiter, SlidingWindow,
    SlidingWindowState, StateError, TokenBucket, TokenBucketState, Verdict, MAX_SUB_WINDOWS,
};
