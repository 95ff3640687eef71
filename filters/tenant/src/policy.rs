//! The shell's own decisions, as plain functions tested natively: the destination service
//! from the request, the cross-tenant verdict, the service → tenant map from shared data,
//! and a deny reason made safe for a header.

use std::collections::{BTreeMap, BTreeSet};

use meshguard_core::TenantName;

use crate::config::Unknown;

/// Largest registry map read from shared data, in bytes; a larger one is ignored (logged).
pub(crate) const MAX_REGISTRY_LEN: usize = 4 << 20;

/// Longest deny reason sent in a header, in bytes.
const MAX_REASON_LEN: usize = 200;

/// The host of an `:authority` value without its port, lowercased, without one trailing
/// dot (`billing.` is the fully-qualified `billing`), minus the first suffix of
/// `strip_suffixes` it ends with (a host that IS the suffix keeps it).
pub(crate) fn authority_service(authority: &str, strip_suffixes: &[String]) -> Option<String> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h)?
    } else {
        authority.split_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    for suffix in strip_suffixes {
        let suffix = suffix.to_ascii_lowercase();
        if let Some(service) = host.strip_suffix(&suffix).filter(|s| !s.is_empty()) {
            return Some(service.to_owned());
        }
    }
    (!host.is_empty()).then_some(host)
}

/// Why a call between services is refused, or that it may pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CrossTenantVerdict {
    /// The destination is the caller's, shared, or unknown and unknown ones are allowed.
    Allow,
    /// The destination belongs to another tenant.
    OtherTenant { service: String, owner: String },
    /// No destination, or no tenant known for it, and unknown ones are denied.
    Unknown { service: Option<String> },
}

/// The cross-tenant verdict for `caller` calling `service`, whose owner `owner_of` knows.
pub(crate) fn cross_tenant(
    caller: &TenantName,
    service: Option<&str>,
    shared: &BTreeSet<String>,
    unknown: Unknown,
    owner_of: impl Fn(&str) -> Option<String>,
) -> CrossTenantVerdict {
    let Some(service) = service else {
        return match unknown {
            Unknown::Allow => CrossTenantVerdict::Allow,
            Unknown::Deny => CrossTenantVerdict::Unknown { service: None },
        };
    };
    if shared.contains(service) {
        return CrossTenantVerdict::Allow;
    }
    match owner_of(service) {
        Some(owner) if owner == caller.as_str() => CrossTenantVerdict::Allow,
        Some(owner) => CrossTenantVerdict::OtherTenant {
            service: service.to_owned(),
            owner,
        },
        None if unknown == Unknown::Allow => CrossTenantVerdict::Allow,
        None => CrossTenantVerdict::Unknown {
            service: Some(service.to_owned()),
        },
    }
}

/// The tenant other than `tenant` that owns the service name `name` (ASCII-lowercased) in
/// `owners` (service → tenant pairs), compared without ASCII case: Consul's service index
/// is case-insensitive, so registering `PAYMENTS` joins the instances of `payments`.
pub(crate) fn other_owner<'a>(
    name: &str,
    tenant: &TenantName,
    owners: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    owners
        .into_iter()
        .find(|(service, owner)| service.eq_ignore_ascii_case(name) && *owner != tenant.as_str())
        .map(|(_, owner)| owner.to_owned())
}

/// Parses the registry's service → tenant map (`{"<service>": "<tenant>"}`); entries whose
/// tenant is not a valid name are dropped (they could never equal a verified tenant).
pub(crate) fn parse_registry(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    if bytes.len() > MAX_REGISTRY_LEN {
        return Err(format!(
            "the map is {} bytes, more than {MAX_REGISTRY_LEN}",
            bytes.len()
        ));
    }
    let map: BTreeMap<String, String> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(map
        .into_iter()
        .filter(|(_, t)| TenantName::try_new(t).is_ok())
        .collect())
}

/// `reason` as a header value: visible ASCII and spaces only, at most 200 bytes.
pub(crate) fn header_safe(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(MAX_REASON_LEN)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TenantName {
        TenantName::try_new(name).unwrap()
    }

    #[test]
    fn authority_gives_the_host_without_port_and_suffix() {
        let suffixes = vec![".service.consul".to_owned(), ".svc".to_owned()];
        for (authority, expected) in [
            ("orders", Some("orders")),
            ("Orders:8080", Some("orders")),
            ("orders.service.consul:8500", Some("orders")),
            ("orders.svc", Some("orders")),
            ("billing.", Some("billing")),
            ("Billing.:8080", Some("billing")),
            ("orders.service.consul.", Some("orders")),
            (".", None),
            (".svc", Some(".svc")),
            ("[::1]:80", Some("::1")),
            ("", None),
            (":80", None),
            ("[::1", None),
        ] {
            assert_eq!(
                authority_service(authority, &suffixes).as_deref(),
                expected,
                "{authority}"
            );
        }
    }

    #[test]
    fn cross_tenant_calls_are_denied_and_shared_or_own_services_pass() {
        let shared: BTreeSet<String> = ["auth".to_owned()].into();
        let owner = |s: &str| match s {
            "orders" => Some("acme".to_owned()),
            "billing" | "auth" => Some("globex".to_owned()),
            _ => None,
        };
        let acme = t("acme");
        let verdict = |service, unknown| cross_tenant(&acme, service, &shared, unknown, owner);
        assert_eq!(
            verdict(Some("orders"), Unknown::Deny),
            CrossTenantVerdict::Allow
        );
        assert_eq!(
            verdict(Some("auth"), Unknown::Deny),
            CrossTenantVerdict::Allow
        );
        assert_eq!(
            verdict(Some("billing"), Unknown::Allow),
            CrossTenantVerdict::OtherTenant {
                service: "billing".into(),
                owner: "globex".into()
            }
        );
        assert_eq!(
            verdict(Some("stray"), Unknown::Deny),
            CrossTenantVerdict::Unknown {
                service: Some("stray".into())
            }
        );
        assert_eq!(
            verdict(Some("stray"), Unknown::Allow),
            CrossTenantVerdict::Allow
        );
        assert_eq!(
            verdict(None, Unknown::Deny),
            CrossTenantVerdict::Unknown { service: None }
        );
        assert_eq!(verdict(None, Unknown::Allow), CrossTenantVerdict::Allow);
    }

    #[test]
    fn a_service_name_owned_by_another_tenant_is_found_without_case() {
        let owners = [("Payments", "globex"), ("web", "acme")];
        let acme = t("acme");
        assert_eq!(
            other_owner("payments", &acme, owners),
            Some("globex".into())
        );
        assert_eq!(other_owner("web", &acme, owners), None);
        assert_eq!(other_owner("new", &acme, owners), None);
        assert_eq!(
            other_owner("web", &t("globex"), owners),
            Some("acme".into())
        );
    }

    #[test]
    fn the_registry_map_drops_invalid_tenants_and_refuses_bad_json() {
        let map = parse_registry(br#"{"web":"acme","db":"Bad Tenant","x":"globex"}"#).unwrap();
        assert_eq!(
            map.into_iter().collect::<Vec<_>>(),
            [
                ("web".to_owned(), "acme".to_owned()),
                ("x".to_owned(), "globex".to_owned())
            ]
        );
        assert!(parse_registry(b"[1]").is_err());
        assert!(parse_registry(br#"{"web":1}"#).is_err());
        assert!(parse_registry(&vec![b' '; MAX_REGISTRY_LEN + 1]).is_err());
    }

    #[test]
    fn reasons_are_made_header_safe() {
        assert_eq!(header_safe("a b\r\nc\u{e9}"), "a b??c?");
        assert_eq!(header_safe(&"x".repeat(500)).len(), 200);
    }
}
