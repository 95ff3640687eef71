//! What a tenant may put in a `PUT /v1/agent/service/register` body: an allow-list of fields
//! spelled exactly as Consul's API documents them (Go's `encoding/json` matches keys
//! case-insensitively with Unicode folding, `ſ` → `s`, `K` → `k`, and Consul also translates
//! snake_case keys, so any other spelling could reach a field this check never saw), no
//! non-ASCII key anywhere, no Connect/proxy registration, and health checks that are TTL
//! checks or HTTP/TCP/gRPC checks aimed at the registered `Address:Port` only (Consul's agent
//! runs checks from its own network position and shows their `Output`: a check at any other
//! target would be a server-side request forgery; script, docker and OS-service checks run
//! commands).

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::body::{fold, scoped_service_id};
use super::{DenyReason, TenantName};

/// Top-level registration fields a tenant may send (`Kind`, `Proxy` and `Connect` only empty).
const SERVICE_FIELDS: &[&str] = &[
    "ID",
    "Name",
    "Tags",
    "Address",
    "TaggedAddresses",
    "Port",
    "Meta",
    "EnableTagOverride",
    "Weights",
    "Check",
    "Checks",
    "Kind",
    "Proxy",
    "Connect",
];

/// Fields of one health check a tenant may send.
const CHECK_FIELDS: &[&str] = &[
    "CheckID",
    "Name",
    "Notes",
    "Status",
    "Interval",
    "Timeout",
    "TTL",
    "HTTP",
    "Method",
    "Header",
    "Body",
    "TCP",
    "GRPC",
    "GRPCUseTLS",
    "TLSServerName",
    "TLSSkipVerify",
    "DeregisterCriticalServiceAfter",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
];

fn not_allowed(what: impl Into<String>) -> DenyReason {
    DenyReason::FieldNotAllowed(what.into())
}

fn check_denied(why: &'static str) -> DenyReason {
    DenyReason::CheckNotAllowed(why)
}

/// Refuses an object key that is not ASCII anywhere in `value` (Go folds some non-ASCII
/// letters onto ASCII ones when it matches keys to fields).
pub(crate) fn refuse_non_ascii_keys(value: &Value) -> Result<(), DenyReason> {
    match value {
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.is_ascii() {
                refuse_non_ascii_keys(v)
            } else {
                Err(DenyReason::NonAsciiKey)
            }
        }),
        Value::Array(items) => items.iter().try_for_each(refuse_non_ascii_keys),
        _ => Ok(()),
    }
}

/// A key outside `allowed`: ambiguous when it folds onto an allowed one, otherwise unknown.
fn unknown_key(key: &str, allowed: &[&str], prefix: &str) -> DenyReason {
    let folded = fold(key);
    if allowed.iter().any(|a| fold(a) == folded) {
        DenyReason::AmbiguousField(format!("{prefix}{key}"))
    } else {
        not_allowed(format!("{prefix}{key}"))
    }
}

/// Checks the registration `root` against the allow-list and moves its check ids into
/// `tenant`'s namespace. `Meta` itself is handled by the caller.
pub(crate) fn check_registration(
    root: &mut Map<String, Value>,
    tenant: &TenantName,
) -> Result<(), DenyReason> {
    for (key, value) in root.iter() {
        if !SERVICE_FIELDS.contains(&key.as_str()) {
            let folded = fold(key);
            if folded == "connect" || folded == "sidecarservice" {
                return Err(DenyReason::AmbiguousField(format!("{key}.SidecarService")));
            }
            return Err(unknown_key(key, SERVICE_FIELDS, ""));
        }
        let empty = match key.as_str() {
            "Kind" => value.is_null() || value.as_str() == Some(""),
            "Proxy" | "Connect" => value.is_null(),
            _ => true,
        };
        if !empty {
            return Err(not_allowed(key.as_str()));
        }
    }
    if let Some(name) = root.get("Name") {
        match name.as_str() {
            Some(n) if super::route::valid_name(n) => {}
            _ => return Err(DenyReason::BadName("service name")),
        }
    }
    let target = Target::of(root);
    if let Some(check) = root.get_mut("Check").filter(|c| !c.is_null()) {
        scope_check(check, tenant, &target)?;
    }
    if let Some(checks) = root.get_mut("Checks").filter(|c| !c.is_null()) {
        let Value::Array(checks) = checks else {
            return Err(DenyReason::BadBody("Checks must be an array".into()));
        };
        for check in checks {
            scope_check(check, tenant, &target)?;
        }
    }
    Ok(())
}

/// Where a network check may point: the registration's own `Address:Port`, when `Address`
/// is an IP literal that is neither loopback, link-local, unspecified nor multicast (the
/// agent's own host and the cloud metadata service at 169.254.169.254 stay out of reach).
struct Target {
    /// `10.0.0.5:8080` or `[fd00::5]:8080`.
    authority: Option<String>,
}

impl Target {
    fn of(root: &Map<String, Value>) -> Self {
        let address = root.get("Address").and_then(Value::as_str);
        let port = root
            .get("Port")
            .and_then(Value::as_u64)
            .filter(|p| (1..=65_535).contains(p));
        let authority = match (address.map(str::parse::<IpAddr>), port) {
            (Some(Ok(ip)), Some(port)) if reachable(ip) => Some(match ip {
                IpAddr::V4(v4) => format!("{v4}:{port}"),
                IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            }),
            _ => None,
        };
        Self { authority }
    }
}

fn reachable(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            // fe80::/10 link-local; an IPv4-mapped address is judged as IPv4.
            (first & 0xffc0) != 0xfe80
                && v6
                    .to_ipv4_mapped()
                    .is_none_or(|v4| reachable(IpAddr::V4(v4)))
        }
    }
}

/// Validates one check and prefixes its `CheckID` with the tenant.
fn scope_check(check: &mut Value, tenant: &TenantName, target: &Target) -> Result<(), DenyReason> {
    let Value::Object(check) = check else {
        return Err(DenyReason::BadBody("a check must be an object".into()));
    };
    for key in check.keys() {
        if !CHECK_FIELDS.contains(&key.as_str()) {
            return Err(match key.as_str() {
                "Args" | "ScriptArgs" | "Script" | "Shell" | "DockerContainerID" | "OSService" => {
                    check_denied("script, docker and os-service checks run commands")
                }
                _ => unknown_key(key, CHECK_FIELDS, "Check."),
            });
        }
    }
    let set = |k: &str| {
        check
            .get(k)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""))
    };
    let kinds: Vec<&str> = ["TTL", "HTTP", "TCP", "GRPC"]
        .into_iter()
        .filter(|k| set(k))
        .collect();
    match kinds.as_slice() {
        ["TTL"] => {}
        [kind] => {
            let Some(value) = check.get(*kind).and_then(Value::as_str) else {
                return Err(DenyReason::BadBody(format!(
                    "Check.{kind} must be a string"
                )));
            };
            let Some(authority) = &target.authority else {
                return Err(check_denied(
                    "a network check needs an ip Address (not loopback or link-local) and Port",
                ));
            };
            if !aims_at(kind, value, authority) {
                return Err(check_denied(
                    "a network check must target the service's Address:Port",
                ));
            }
        }
        _ => {
            return Err(check_denied(
                "a check must be exactly one of TTL, HTTP, TCP or GRPC",
            ))
        }
    }
    match check.get_mut("CheckID") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) if id.is_empty() => {}
        Some(Value::String(id)) => *id = scoped_service_id(tenant, id),
        Some(_) => return Err(DenyReason::BadBody("CheckID must be a string".into())),
    }
    Ok(())
}

/// Whether the check target `value` of kind `kind` names exactly `authority`.
fn aims_at(kind: &str, value: &str, authority: &str) -> bool {
    if value.bytes().any(|b| !b.is_ascii_graphic()) {
        return false;
    }
    match kind {
        "HTTP" => {
            let Some(rest) = value
                .strip_prefix("http://")
                .or_else(|| value.strip_prefix("https://"))
            else {
                return false;
            };
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            &rest[..end] == authority && !rest.contains('\\')
        }
        "TCP" => value == authority,
        "GRPC" => value
            .strip_prefix(authority)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        _ => false,
    }
}

/// The service name of a registration body (its `Name`), as Consul's service index will
/// compare it: ASCII-lowercased (names are checked to be ASCII by the rewrite).
pub fn registration_service_name(body: &[u8]) -> Result<String, DenyReason> {
    let root: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| DenyReason::BadBody(e.to_string()))?;
    match root.get("Name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => Ok(name.to_ascii_lowercase()),
        _ => Err(DenyReason::BadBody("the registration has no Name".into())),
    }
}
