//! Errors of this module: an impossible breaker or failure policy, or state bytes that are
//! not ours.

/// A breaker or failure policy that cannot work as configured; the message names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    /// A count or duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A ratio outside (0, 1], given in per mille.
    #[error("{field} must be above 0 and at most 1 (1 to 1000 per mille), got {got} per mille")]
    RatioOutOfRange {
        /// The field's name.
        field: &'static str,
        /// The configured ratio in per mille.
        got: u32,
    },
    /// A value above what the compact state can hold.
    #[error("{field} must be at most {max}, got {got}")]
    TooLarge {
        /// The field's name.
        field: &'static str,
        /// The configured value.
        got: u64,
        /// The largest supported value.
        max: u64,
    },
    /// A backoff multiplier below 1.0 would shrink the open duration on every trip.
    #[error("backoff must be at least 1000 per mille (a multiplier of 1.0), got {got}")]
    BackoffBelowOne {
        /// The configured multiplier in per mille.
        got: u32,
    },
    /// The cap on the open duration is below the first open duration.
    #[error("max_open_ns ({max_open_ns}) must be at least open_ns ({open_ns})")]
    MaxOpenBelowOpen {
        /// The first open duration in nanoseconds.
        open_ns: u64,
        /// The cap in nanoseconds.
        max_open_ns: u64,
    },
    /// A time window too short to split into buckets of at least 1 ns.
    #[error("window.window_ns ({window_ns}) must be at least window.buckets ({buckets})")]
    WindowShorterThanBuckets {
        /// The window in nanoseconds.
        window_ns: u64,
        /// The configured number of buckets.
        buckets: u32,
    },
    /// A count window that can never hold `min_calls` calls: its ratios would never trip.
    #[error("min_calls ({min_calls}) must not exceed window.calls ({calls})")]
    MinCallsAboveWindow {
        /// The configured minimum number of calls.
        min_calls: u32,
        /// The count window's size in calls.
        calls: u32,
    },
    /// HALF_OPEN could never see enough successful probes to close.
    #[error("half_open.successes ({successes}) must not exceed half_open.probes ({probes})")]
    SuccessesAboveProbes {
        /// Successful probes needed to close.
        successes: u32,
        /// Probes admitted per HALF_OPEN period.
        probes: u32,
    },
    /// A breaker that could never open.
    #[error(
        "at least one trip condition is required: consecutive_failures, failure_ratio or slow_call_ratio"
    )]
    NoTripCondition,
    /// A ratio condition without a window to measure it over.
    #[error("{field} needs a window (count- or time-based) to be measured over")]
    MissingWindow {
        /// The ratio's field name.
        field: &'static str,
    },
    /// An HTTP status range that is empty or leaves 100..=599.
    #[error("status range {lo}-{hi} must lie within 100-599 with its start not above its end")]
    StatusRange {
        /// First status of the range.
        lo: u16,
        /// Last status of the range (inclusive).
        hi: u16,
    },
    /// A number that is not a gRPC status code.
    #[error("grpc code {code} is not a gRPC status code (0-16)")]
    GrpcCode {
        /// The configured code.
        code: u32,
    },
}

/// Breaker state bytes that this version cannot decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakerStateError {
    /// The byte string has the wrong length.
    #[error("breaker state must be {expected} bytes, got {actual}")]
    Length {
        /// The encoded length of a breaker state.
        expected: usize,
        /// The length found.
        actual: usize,
    },
    /// The tag byte names another kind of state or layout version.
    #[error("breaker state tag must be {expected:#04x}, got {found:#04x}")]
    Tag {
        /// The breaker state's tag.
        expected: u8,
        /// The tag found.
        found: u8,
    },
    /// A field holds a value no breaker writes (an unknown phase or window kind).
    #[error("breaker state field {field} has no meaning for value {value}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
}
