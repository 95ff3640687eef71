//! Errors of this module: a setting that cannot work (configuration time), and why a request
//! is denied (request time; the filter turns it into a 403 with the reason in a header).

/// A configuration value rejected; the message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// The field's value breaks a rule.
    #[error("{field} {problem}")]
    Invalid {
        /// The field's name (e.g. `spiffe_pattern`, `trusted_cidrs`).
        field: &'static str,
        /// What is wrong, phrased to follow the field's name.
        problem: &'static str,
    },
}

impl TenantError {
    pub(crate) const fn invalid(field: &'static str, problem: &'static str) -> Self {
        Self::Invalid { field, problem }
    }
}

/// Where a tenant identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// The mTLS peer certificate's SPIFFE URI SAN.
    SpiffeSan,
    /// A JWT claim verified by Envoy's `jwt_authn` filter.
    JwtClaim,
    /// A request header sent from a trusted address.
    TrustedHeader,
}

impl core::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::SpiffeSan => "spiffe_san",
            Self::JwtClaim => "jwt_claim",
            Self::TrustedHeader => "trusted_header",
        })
    }
}

/// Why a request is denied. Messages are lowercase and short enough for a response header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// A verified source carried a tenant name that is not valid.
    #[error("{origin} carries an invalid tenant: {problem}")]
    InvalidTenant {
        /// The source.
        origin: SourceKind,
        /// What is wrong with the name.
        problem: &'static str,
    },
    /// The tenant header appears more than once on a trusted request.
    #[error("the tenant header appears more than once")]
    DuplicateTenantHeader,
    /// The path is longer than [`crate::MAX_CONSUL_PATH_LEN`].
    #[error("the path is too long")]
    PathTooLong,
    /// The path is not a well-formed absolute path (raw bytes outside the allowed set, a
    /// backslash, a control or non-ASCII byte, a malformed `%` escape, no leading `/`).
    #[error("malformed path: {0}")]
    MalformedPath(&'static str),
    /// A percent-escape decodes to `/`, `\`, `.`, `%` or a control byte.
    #[error("the path encodes a reserved character")]
    EncodedReserved,
    /// An empty segment (`//`).
    #[error("the path has an empty segment")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("the path has a dot segment")]
    DotSegment,
    /// The endpoint is not on the allow-list.
    #[error("the endpoint is not allowed")]
    NotAllowed,
    /// The endpoint is allowed, but not with this method.
    #[error("the method is not allowed on this endpoint")]
    MethodNotAllowed,
    /// A service name, service id or KV key segment outside the allowed charset.
    #[error("invalid {0}")]
    BadName(&'static str),
    /// A KV key outside the tenant's prefix.
    #[error("the key is outside the tenant's prefix")]
    KeyOutsidePrefix,
    /// The query string has a malformed escape or an ambiguous parameter.
    #[error("malformed query: {0}")]
    MalformedQuery(&'static str),
    /// More than one `filter` parameter.
    #[error("more than one filter parameter")]
    DuplicateFilter,
    /// The user's filter is longer than [`crate::MAX_USER_FILTER_LEN`] bytes.
    #[error("the filter is too long")]
    FilterTooLong,
    /// The user's filter has unbalanced parentheses or brackets.
    #[error("the filter has unbalanced parentheses")]
    UnbalancedFilter,
    /// The user's filter has a string literal that is not closed.
    #[error("the filter has an unterminated string")]
    UnterminatedString,
    /// The user's filter has a character the tokenizer does not accept.
    #[error("the filter has an unexpected character at byte {0}")]
    UnexpectedFilterChar(usize),
    /// A value cannot be written as a bexpr string literal.
    #[error("the value cannot be quoted: {0}")]
    Unquotable(&'static str),
    /// A request or response body is not JSON of the expected shape, or too large.
    #[error("bad body: {0}")]
    BadBody(String),
    /// A registration names another tenant in `Meta.tenant`.
    #[error("the registration claims another tenant")]
    OtherTenant,
    /// A registration uses a spelling of a field that could bypass the tenant rewrite.
    #[error("the registration has an ambiguous field: {0}")]
    AmbiguousField(String),
    /// A registration field outside the allow-list, or one that must stay empty.
    #[error("the registration has a field that is not allowed: {0}")]
    FieldNotAllowed(String),
    /// A registration object key that is not ASCII (Go's decoder folds some onto ASCII).
    #[error("the registration has a non-ascii key")]
    NonAsciiKey,
    /// A health check that is not a TTL check or a network check at the service itself.
    #[error("the health check is not allowed: {0}")]
    CheckNotAllowed(&'static str),
}
