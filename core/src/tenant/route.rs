//! Requests to Consul's HTTP API: the path normalised once, then classified against an
//! allow-list. Everything not listed (`/v1/acl/*`, `/v1/agent/*` other than service
//! (de)registration, `/v1/operator/*`, `/v1/snapshot`, …) is denied.
//!
//! Normalisation is strict rather than clever: the raw path may only hold RFC 3986 path
//! characters; it is percent-decoded exactly once, and an escape that decodes to `/`, `\`,
//! `.`, `%` or a control byte is refused (so `%2e%2e`, `%2f` and double encoding cannot
//! reach Consul as something else); empty segments (`//`) and `.`/`..` segments are refused
//! instead of resolved. Only a KV key may end with `/` (a folder).

use super::{scope_query, DenyReason, TenantName};

/// Longest request path accepted, in bytes, query excluded.
pub const MAX_CONSUL_PATH_LEN: usize = 2048;

/// Longest service name, service id or KV key segment, in bytes.
pub const MAX_CONSUL_NAME_LEN: usize = 256;

/// What a request to Consul's HTTP API is, after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsulRoute {
    /// `GET /v1/health/service/:service`.
    HealthService(String),
    /// `GET /v1/catalog/service/:service`.
    CatalogService(String),
    /// `GET /v1/health/checks/:service`.
    HealthChecks(String),
    /// `GET /v1/catalog/services`.
    CatalogServices,
    /// `PUT /v1/agent/service/register`.
    AgentRegister,
    /// `PUT /v1/agent/service/deregister/:service_id`.
    AgentDeregister(String),
    /// `GET`, `PUT` or `DELETE /v1/kv/:key` (the decoded key; may end with `/`).
    Kv(String),
    /// Anything else.
    Denied(DenyReason),
}

impl ConsulRoute {
    /// The service a per-service endpoint names, for the shell's ownership check (the only
    /// check `/v1/health/checks` gets, and a cheap early deny for the others).
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::HealthService(s) | Self::CatalogService(s) | Self::HealthChecks(s) => Some(s),
            _ => None,
        }
    }

    /// The `:path` to forward for an endpoint with a [`Self::tenant_selector`]: the
    /// normalised path (service names need no encoding) and [`scope_query`] of `query`.
    /// `None` for other routes, which are forwarded as they came or denied.
    pub fn scoped_path(
        &self,
        query: Option<&str>,
        tenant: &TenantName,
    ) -> Option<Result<String, DenyReason>> {
        let (prefix, service) = match self {
            Self::HealthService(s) => ("/v1/health/service/", s),
            Self::CatalogService(s) => ("/v1/catalog/service/", s),
            _ => return None,
        };
        let selector = self.tenant_selector()?;
        Some(scope_query(query, selector, tenant).map(|q| format!("{prefix}{service}?{q}")))
    }

    /// The bexpr selector of the tenant meta field for endpoints whose `filter` can express
    /// it. `/v1/health/checks` has no service meta to filter on: the shell must check that
    /// the service belongs to the tenant instead.
    pub const fn tenant_selector(&self) -> Option<TenantSelector> {
        match self {
            Self::HealthService(_) => Some(TenantSelector::HealthServiceMeta),
            Self::CatalogService(_) => Some(TenantSelector::CatalogServiceMeta),
            _ => None,
        }
    }
}

/// Where the tenant lives in an endpoint's filterable fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSelector {
    /// `Service.Meta.tenant` (`/v1/health/service`).
    HealthServiceMeta,
    /// `ServiceMeta.tenant` (`/v1/catalog/service`).
    CatalogServiceMeta,
}

impl TenantSelector {
    /// The selector text.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HealthServiceMeta => "Service.Meta.tenant",
            Self::CatalogServiceMeta => "ServiceMeta.tenant",
        }
    }
}

/// Splits Envoy's `:path` (which includes the query) at the first `?`.
pub fn split_path_query(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// Percent-decodes `raw` (a path without its query) once and checks it; see the module doc.
pub fn normalize_path(raw: &[u8]) -> Result<String, DenyReason> {
    if raw.len() > MAX_CONSUL_PATH_LEN {
        return Err(DenyReason::PathTooLong);
    }
    if raw.first() != Some(&b'/') {
        return Err(DenyReason::MalformedPath("must start with /"));
    }
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let c = if b == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| core::str::from_utf8(h).ok());
            let decoded = hex
                .filter(|h| h.bytes().all(|d| d.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(DenyReason::MalformedPath("bad percent escape"))?;
            if matches!(decoded, b'/' | b'\\' | b'.' | b'%') || !decoded.is_ascii_graphic() {
                return Err(DenyReason::EncodedReserved);
            }
            i += 3;
            decoded
        } else if b == b'\\' {
            return Err(DenyReason::MalformedPath("backslash"));
        } else if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            i += 1;
            b
        } else {
            return Err(DenyReason::MalformedPath(
                "character outside the path charset",
            ));
        };
        out.push(char::from(c));
    }
    let segments: Vec<&str> = out.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (n, s) in segments.iter().enumerate() {
        match *s {
            "" if n == last && n > 0 => {}
            "" => return Err(DenyReason::EmptySegment),
            "." | ".." => return Err(DenyReason::DotSegment),
            _ => {}
        }
    }
    Ok(out)
}

/// Normalises `path` (query excluded) and classifies the request; `method` is the
/// `:method` pseudo-header.
pub fn classify_consul_request(method: &str, path: &[u8]) -> ConsulRoute {
    let path = match normalize_path(path) {
        Ok(p) => p,
        Err(reason) => return ConsulRoute::Denied(reason),
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let route = match segments.as_slice() {
        ["v1", "health", "service", s] => (
            "GET",
            name(s, "service name").map(ConsulRoute::HealthService),
        ),
        ["v1", "catalog", "service", s] => (
            "GET",
            name(s, "service name").map(ConsulRoute::CatalogService),
        ),
        ["v1", "health", "checks", s] => (
            "GET",
            name(s, "service name").map(ConsulRoute::HealthChecks),
        ),
        ["v1", "catalog", "services"] => ("GET", Ok(ConsulRoute::CatalogServices)),
        ["v1", "agent", "service", "register"] => ("PUT", Ok(ConsulRoute::AgentRegister)),
        ["v1", "agent", "service", "deregister", id] => (
            "PUT",
            name(id, "service id").map(ConsulRoute::AgentDeregister),
        ),
        ["v1", "kv", key @ ..] if !key.is_empty() => {
            let allowed = matches!(method, "GET" | "PUT" | "DELETE");
            return match (allowed, kv_key(key)) {
                (false, _) => ConsulRoute::Denied(DenyReason::MethodNotAllowed),
                (true, Ok(k)) => ConsulRoute::Kv(k),
                (true, Err(r)) => ConsulRoute::Denied(r),
            };
        }
        _ => return ConsulRoute::Denied(DenyReason::NotAllowed),
    };
    match route {
        (m, _) if m != method => ConsulRoute::Denied(DenyReason::MethodNotAllowed),
        (_, Ok(r)) => r,
        (_, Err(reason)) => ConsulRoute::Denied(reason),
    }
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CONSUL_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn name(s: &str, what: &'static str) -> Result<String, DenyReason> {
    if valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err(DenyReason::BadName(what))
    }
}

fn kv_key(segments: &[&str]) -> Result<String, DenyReason> {
    let last = segments.len().saturating_sub(1);
    for (n, s) in segments.iter().enumerate() {
        if !(valid_name(s) || (n == last && n > 0 && s.is_empty())) {
            return Err(DenyReason::BadName("kv key"));
        }
    }
    Ok(segments.join("/"))
}
