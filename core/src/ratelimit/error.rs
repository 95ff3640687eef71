//! Errors of this module: an impossible limit, or state bytes that are not ours.

/// A limit that cannot be enforced; the message names the offending field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A count or duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// More than one unit per nanosecond: the emission interval would be below 1 ns.
    #[error(
        "rate ({rate}) must not exceed period_ns ({period_ns}): at most one unit per nanosecond"
    )]
    RateTooHigh {
        /// Units per period.
        rate: u32,
        /// The period in nanoseconds.
        period_ns: u64,
    },
    /// `burst` × the emission interval does not fit in `u64` nanoseconds.
    #[error(
        "burst ({burst}) is too large: burst times the emission interval overflows u64 nanoseconds"
    )]
    BurstOverflow {
        /// The burst in units.
        burst: u32,
    },
    /// The pacer's maximum delay is shorter than one emission interval: it could never queue.
    #[error(
        "max_delay_ns ({max_delay_ns}) must be at least the emission interval ({interval_ns} ns)"
    )]
    MaxDelayBelowInterval {
        /// The configured maximum delay in nanoseconds.
        max_delay_ns: u64,
        /// The emission interval in nanoseconds.
        interval_ns: u64,
    },
    /// The sliding window's number of sub-windows is out of range.
    #[error("sub_windows must be between 1 and {max}, got {got}")]
    SubWindowsOutOfRange {
        /// The configured number.
        got: u32,
        /// The largest supported number.
        max: u32,
    },
    /// A window too short to split into the requested sub-windows of at least 1 ns.
    #[error("window_ns ({window_ns}) must be at least sub_windows ({sub_windows})")]
    WindowShorterThanSubWindows {
        /// The window in nanoseconds.
        window_ns: u64,
        /// The configured number of sub-windows.
        sub_windows: u32,
    },
}

/// State bytes that this version cannot decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The byte string has the wrong length for this algorithm.
    #[error("state must be {expected} bytes, got {actual}")]
    Length {
        /// The encoded length of this algorithm's state.
        expected: usize,
        /// The length found.
        actual: usize,
    },
    /// The tag byte names another algorithm or layout version.
    #[error("state tag must be {expected:#04x}, got {found:#04x}")]
    Tag {
        /// This algorithm's tag.
        expected: u8,
        /// The tag found.
        found: u8,
    },
}
