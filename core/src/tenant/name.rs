//! A validated tenant name: what every other filter keys on, so it is kept boring.

use super::TenantError;

/// Longest tenant name, in bytes (a DNS label).
pub const MAX_TENANT_LEN: usize = 63;

/// A tenant name: 1..=[`MAX_TENANT_LEN`] bytes of lowercase ASCII letters, digits, `-` and
/// `_`, starting and ending with a letter or digit. That excludes empty names, `.`/`..`,
/// `/`, whitespace, control characters, non-ASCII and case confusion (`Acme` vs `acme`), and
/// makes the name safe inside a header, a path segment and a bexpr string literal.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct TenantName(String);

impl TenantName {
    /// Validates `value` as a tenant name.
    pub fn try_new(value: &str) -> Result<Self, TenantError> {
        check_tenant(value).map_err(|problem| TenantError::invalid("tenant", problem))?;
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `value` is not a tenant name, phrased to follow "tenant".
pub(crate) fn check_tenant(value: &str) -> Result<(), &'static str> {
    let bytes = value.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err("must not be empty");
    };
    if bytes.len() > MAX_TENANT_LEN {
        return Err("must be at most 63 bytes");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
    {
        return Err("must contain only lowercase ascii letters, digits, '-' and '_'");
    }
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

impl core::fmt::Display for TenantName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TenantName {
    type Error = TenantError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        check_tenant(&value).map_err(|problem| TenantError::invalid("tenant", problem))?;
        Ok(Self(value))
    }
}

impl From<TenantName> for String {
    fn from(name: TenantName) -> Self {
        name.0
    }
}
