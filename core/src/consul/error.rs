//! Errors of this module: a Consul response that yields no usable instance list, and why a
//! single entry was left out.

use crate::BalanceError;

/// A whole response rejected: the caller keeps its last good list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsulError {
    /// The body is not JSON of the documented shape.
    #[error("response is not {expected}: {detail}")]
    Shape {
        /// What the endpoint documents (e.g. "a json array").
        expected: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The service has no registered instance at all (`[]`).
    #[error("the service has no registered instances")]
    NoInstances,
    /// Entries were returned, but none is usable (all critical, excluded or malformed).
    #[error("none of the {entries} instances is usable ({} skipped)", skipped.len())]
    NoUsableInstances {
        /// How many entries the response had.
        entries: usize,
        /// Why each was left out.
        skipped: Vec<Skipped>,
    },
    /// The `X-Consul-Index` header is missing or not an unsigned integer.
    #[error("x-consul-index must be an unsigned integer, got {got:?}")]
    BadIndex {
        /// The header's value, if any.
        got: Option<String>,
    },
    /// A backoff setting that cannot work.
    #[error("{field} must be {requirement}")]
    BadSetting {
        /// The field's name.
        field: &'static str,
        /// What it must be.
        requirement: &'static str,
    },
}

/// One entry of a health response left out of the list, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's position in the response array.
    pub position: usize,
    /// `Service.ID`, when it could be read.
    pub service_id: Option<String>,
    /// Why it was left out.
    pub reason: SkipReason,
}

/// Why an entry was left out: bad data, or health that excludes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// The entry does not have the documented shape (a missing field, a wrong type).
    #[error("malformed entry: {0}")]
    Malformed(String),
    /// `Service.Port` is missing.
    #[error("Service.Port is missing")]
    MissingPort,
    /// `Service.Port` is outside 1..=65535.
    #[error("Service.Port must be between 1 and 65535, got {0}")]
    PortOutOfRange(i64),
    /// A `Service.Weights` value is negative, or `Passing` is 0.
    #[error("Service.Weights.{field} must be {requirement}, got {got}")]
    BadWeight {
        /// `Passing` or `Warning`.
        field: &'static str,
        /// What it must be.
        requirement: &'static str,
        /// The value found.
        got: i64,
    },
    /// The address or another instance field is invalid.
    #[error("invalid instance: {0}")]
    Invalid(BalanceError),
    /// Another entry already has this instance id (`Node.Node/Service.ID`).
    #[error("duplicate instance id {0:?}")]
    Duplicate(String),
    /// A check is critical (or in an unknown state): out of rotation.
    #[error("a check is critical")]
    Critical,
    /// A check is warning and the policy takes passing instances only, or
    /// `Service.Weights.Warning` is 0.
    #[error("a check is warning")]
    Warning,
}

impl SkipReason {
    /// Whether the entry was left out for bad data (as opposed to health).
    pub const fn is_bad_data(&self) -> bool {
        !matches!(self, Self::Critical | Self::Warning)
    }
}
