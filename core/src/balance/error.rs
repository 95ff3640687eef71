//! Errors of this module: an instance or balancer setting that cannot work; the message names
//! the offending field.

/// An invalid instance or balancer setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    /// A count, weight or duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A text field that must not be empty is empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The field's name.
        field: &'static str,
    },
    /// The host is neither an IP address nor a DNS name.
    #[error("address must be an IP address or a DNS name, got {got:?}")]
    BadAddress {
        /// The value found.
        got: String,
    },
    /// A value outside its allowed range.
    #[error("{field} must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The smallest allowed value.
        min: u64,
        /// The largest allowed value.
        max: u64,
        /// The value found.
        got: u64,
    },
}
