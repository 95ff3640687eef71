//! The tenant in an mTLS peer's SPIFFE ID (`connection.uri_san_peer_certificate`).
//!
//! Pattern language, compiled once by [`SpiffePattern::try_new`]:
//! `spiffe://<trust domain or {domain}>/<segment>/.../<segment>`, where a segment is a
//! literal, `{tenant}` (exactly once), `*` (exactly one segment) or, as the last segment
//! only, `*` (one or more segments). `{domain}` accepts any valid trust domain; a literal
//! domain must match exactly. Example: `spiffe://{domain}/tenant/{tenant}/*` matches
//! `spiffe://cluster.local/tenant/acme/ns/default/sa/web` with tenant `acme`.
//! Syntax follows the SPIFFE ID spec: trust domain `[a-z0-9._-]`, path segments
//! `[A-Za-z0-9._-]`, no empty, `.` or `..` segment, no percent-encoding, query or fragment.

use super::{TenantError, TenantName};

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE spec's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe://";
const FIELD: &str = "spiffe_pattern";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Domain {
    Any,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Tenant,
    One,
    Rest,
}

/// A compiled SPIFFE ID pattern with one `{tenant}` capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffePattern {
    domain: Domain,
    segments: Vec<Segment>,
}

/// What a SPIFFE ID says about the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffeMatch {
    /// The ID matches and its tenant segment is a valid name.
    Tenant(TenantName),
    /// The ID matches the pattern but the tenant segment is not a valid name.
    InvalidTenant(&'static str),
    /// The ID is malformed or does not match the pattern: not a tenant identity.
    NoMatch,
}

impl SpiffePattern {
    /// Compiles `pattern`; errors name the `spiffe_pattern` field.
    pub fn try_new(pattern: &str) -> Result<Self, TenantError> {
        let bad = |problem| TenantError::invalid(FIELD, problem);
        let rest = pattern
            .strip_prefix(SCHEME)
            .ok_or(bad("must start with spiffe://"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or(bad("must have a path after the trust domain"))?;
        let domain = if authority == "{domain}" {
            Domain::Any
        } else if valid_trust_domain(authority) {
            Domain::Exact(authority.to_owned())
        } else {
            return Err(bad(
                "trust domain must be {domain} or lowercase letters, digits, '.', '-', '_'",
            ));
        };
        let parts: Vec<&str> = path.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "{tenant}" => Segment::Tenant,
                "*" if i + 1 == parts.len() => Segment::Rest,
                "*" => Segment::One,
                p if valid_segment(p) => Segment::Literal(p.to_owned()),
                _ => {
                    return Err(bad(
                        "path segments must be {tenant}, * or non-empty [A-Za-z0-9._-] other than . and ..",
                    ))
                }
            });
        }
        if segments.iter().filter(|s| **s == Segment::Tenant).count() != 1 {
            return Err(bad("must contain {tenant} exactly once"));
        }
        Ok(Self { domain, segments })
    }

    /// The tenant named by the SPIFFE ID `uri`.
    pub fn tenant_of(&self, uri: &str) -> SpiffeMatch {
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return SpiffeMatch::NoMatch;
        }
        let Some((authority, path)) = uri.strip_prefix(SCHEME).and_then(|r| r.split_once('/'))
        else {
            return SpiffeMatch::NoMatch;
        };
        let domain_ok = match &self.domain {
            Domain::Any => valid_trust_domain(authority),
            Domain::Exact(d) => d == authority,
        };
        let parts: Vec<&str> = path.split('/').collect();
        if !domain_ok || !parts.iter().all(|p| valid_segment(p)) {
            return SpiffeMatch::NoMatch;
        }
        let mut tenant = None;
        let mut at = 0;
        for segment in &self.segments {
            let Some(part) = parts.get(at) else {
                return SpiffeMatch::NoMatch;
            };
            match segment {
                Segment::Literal(l) if l != part => return SpiffeMatch::NoMatch,
                Segment::Literal(_) | Segment::One => {}
                Segment::Tenant => tenant = Some(*part),
                Segment::Rest => at = parts.len() - 1,
            }
            at += 1;
        }
        match tenant {
            Some(t) if at == parts.len() => match TenantName::try_new(t) {
                Ok(name) => SpiffeMatch::Tenant(name),
                Err(TenantError::Invalid { problem, .. }) => SpiffeMatch::InvalidTenant(problem),
            },
            _ => SpiffeMatch::NoMatch,
        }
    }
}

fn valid_trust_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 255
        && d.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}
