//! Ordered tenant resolution: the first source that applies decides; a source that applies
//! but carries a bad value denies (it never falls through to a weaker source).

use super::{is_trusted_source, Cidr, DenyReason, SourceKind, SpiffeMatch, SpiffePattern};
use super::{TenantError, TenantName};

/// One configured identity source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// The peer certificate's URI SAN, matched against a pattern. A SAN that does not match
    /// is not a tenant identity and the next source is tried.
    SpiffeSan(SpiffePattern),
    /// A claim of a JWT that Envoy's `jwt_authn` filter verified (the shell reads it from
    /// the dynamic metadata). Absent: the next source is tried.
    JwtClaim,
    /// The tenant header, only from a source address in these networks. From anywhere else
    /// the header is ignored (and stripped by the shell).
    TrustedHeader(Vec<Cidr>),
}

/// What the shell read from the request, untrusted as given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// `connection.uri_san_peer_certificate`, if the connection has a peer certificate.
    pub uri_san: Option<&'a str>,
    /// The verified JWT's tenant claim, if any.
    pub jwt_tenant: Option<&'a str>,
    /// Every value of the tenant header, in order (several means duplicated headers).
    pub header_tenants: &'a [&'a str],
    /// `source.address` (`ip:port` or `[v6]:port`).
    pub source_address: Option<&'a str>,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A verified tenant.
    Resolved {
        /// The tenant.
        tenant: TenantName,
        /// The source that named it.
        source: SourceKind,
    },
    /// No source applies: the configured anonymous policy decides (deny or a fixed tenant).
    Anonymous,
    /// A source applies but its value is unacceptable.
    Denied(DenyReason),
}

/// Tries `sources` in order against `facts`.
pub fn resolve(sources: &[IdentitySource], facts: &RequestFacts<'_>) -> Resolution {
    for source in sources {
        match source {
            IdentitySource::SpiffeSan(pattern) => match facts.uri_san.map(|s| pattern.tenant_of(s))
            {
                Some(SpiffeMatch::Tenant(tenant)) => {
                    return Resolution::Resolved {
                        tenant,
                        source: SourceKind::SpiffeSan,
                    }
                }
                Some(SpiffeMatch::InvalidTenant(problem)) => {
                    return Resolution::Denied(DenyReason::InvalidTenant {
                        origin: SourceKind::SpiffeSan,
                        problem,
                    })
                }
                Some(SpiffeMatch::NoMatch) | None => {}
            },
            IdentitySource::JwtClaim => {
                if let Some(claim) = facts.jwt_tenant {
                    return named(claim, SourceKind::JwtClaim);
                }
            }
            IdentitySource::TrustedHeader(cidrs) => {
                let trusted = facts
                    .source_address
                    .is_some_and(|a| is_trusted_source(cidrs, a));
                match facts.header_tenants {
                    _ if !trusted => {}
                    [] => {}
                    [one] => return named(one, SourceKind::TrustedHeader),
                    [_, _, ..] => return Resolution::Denied(DenyReason::DuplicateTenantHeader),
                }
            }
        }
    }
    Resolution::Anonymous
}

fn named(value: &str, source: SourceKind) -> Resolution {
    match TenantName::try_new(value) {
        Ok(tenant) => Resolution::Resolved { tenant, source },
        Err(TenantError::Invalid { problem, .. }) => {
            Resolution::Denied(DenyReason::InvalidTenant {
                origin: source,
                problem,
            })
        }
    }
}
