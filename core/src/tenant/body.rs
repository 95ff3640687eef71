//! Bodies through the Consul proxy: agent registrations forced into the caller's tenant,
//! `/v1/catalog/services` listings cut down to the tenant's services, and KV keys confined
//! to the tenant's prefix.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::registration::{check_registration, refuse_non_ascii_keys};
use super::{DenyReason, TenantError, TenantName};

/// Largest registration body accepted, in bytes.
pub const MAX_REGISTRATION_LEN: usize = 64 * 1024;

/// The meta key that carries a service's tenant (`Service.Meta.tenant`).
pub const TENANT_META_KEY: &str = "tenant";

/// Rewrites a `PUT /v1/agent/service/register` body so that `Meta.tenant` is `tenant` and
/// every `CheckID` is in the tenant's namespace, keeping every other field. Refused:
/// malformed or oversized JSON, a body that is not an object, a `Meta` that is not an
/// object, a `Meta.tenant` naming another tenant, other spellings of `Meta` that Consul's
/// decoder would also accept (`meta`, `service_meta`, …, since Go's JSON decoding ignores
/// case), a `Connect.SidecarService` (it registers a second service whose `Meta` this
/// rewrite does not cover), any non-ASCII object key, and everything the registration
/// allow-list refuses: unknown fields, a non-empty `Kind`, `Proxy` or `Connect`, a `Name`
/// outside `[A-Za-z0-9._-]`, and checks other than TTL or HTTP/TCP/gRPC at the service's
/// own `Address:Port`.
pub fn rewrite_registration(body: &[u8], tenant: &TenantName) -> Result<Vec<u8>, DenyReason> {
    if body.len() > MAX_REGISTRATION_LEN {
        return Err(DenyReason::BadBody("the registration is too large".into()));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DenyReason::BadBody(e.to_string()))?;
    let Value::Object(mut root) = value else {
        return Err(DenyReason::BadBody(
            "the registration must be an object".into(),
        ));
    };
    for (key, value) in &root {
        let folded = fold(key);
        if key != "Meta" && matches!(folded.as_str(), "meta" | "servicemeta") {
            return Err(DenyReason::AmbiguousField(key.clone()));
        }
        if folded == "connect"
            && value
                .as_object()
                .is_some_and(|c| c.keys().any(|k| fold(k) == "sidecarservice"))
        {
            return Err(DenyReason::AmbiguousField(format!("{key}.SidecarService")));
        }
    }
    for value in root.values() {
        refuse_non_ascii_keys(value)?;
    }
    if root.keys().any(|k| !k.is_ascii()) {
        return Err(DenyReason::NonAsciiKey);
    }
    check_registration(&mut root, tenant)?;
    let meta = root
        .entry("Meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(meta) = meta else {
        return Err(DenyReason::BadBody("Meta must be an object".into()));
    };
    match meta.get(TENANT_META_KEY) {
        None => {}
        Some(Value::String(claimed)) if claimed == tenant.as_str() => {}
        Some(_) => return Err(DenyReason::OtherTenant),
    }
    meta.insert(
        TENANT_META_KEY.into(),
        Value::String(tenant.as_str().into()),
    );
    serde_json::to_vec(&root).map_err(|e| DenyReason::BadBody(e.to_string()))
}

/// Keeps the entries of a `/v1/catalog/services` body (an object of service name → tags)
/// whose service `owners` maps to `tenant`; services missing from `owners` are dropped.
pub fn filter_catalog_services(
    body: &[u8],
    tenant: &TenantName,
    owners: &BTreeMap<String, String>,
) -> Result<Vec<u8>, DenyReason> {
    filter_catalog_services_by(body, |name| {
        owners.get(name).is_some_and(|t| t == tenant.as_str())
    })
}

/// [`filter_catalog_services`] with the ownership test as a function: keeps the services
/// for which `is_tenants(name)` holds, so a caller with several maps needs no merged copy.
pub fn filter_catalog_services_by(
    body: &[u8],
    is_tenants: impl Fn(&str) -> bool,
) -> Result<Vec<u8>, DenyReason> {
    let services: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| DenyReason::BadBody(e.to_string()))?;
    let kept: Map<String, Value> = services
        .into_iter()
        .filter(|(name, _)| is_tenants(name))
        .collect();
    serde_json::to_vec(&kept).map_err(|e| DenyReason::BadBody(e.to_string()))
}

/// The KV prefix template a tenant's keys must live under, e.g. `tenants/{tenant}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPrefix {
    before: String,
    after: String,
}

impl KvPrefix {
    /// Compiles `template`: relative, `{tenant}` exactly once, ending with `/`, segments of
    /// `[A-Za-z0-9._-]` other than `.`/`..`. Errors name the `kv_prefix` field.
    pub fn try_new(template: &str) -> Result<Self, TenantError> {
        let bad = |problem| TenantError::invalid("kv_prefix", problem);
        let (before, after) = template
            .split_once("{tenant}")
            .ok_or(bad("must contain {tenant}"))?;
        if after.contains("{tenant}") {
            return Err(bad("must contain {tenant} exactly once"));
        }
        let Some(body) = template.strip_suffix('/') else {
            return Err(bad("must end with /"));
        };
        let valid = body.split('/').all(|s| {
            s == "{tenant}"
                || (!s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
        });
        if !valid {
            return Err(bad(
                "segments must be {tenant} or non-empty [A-Za-z0-9._-] other than . and ..",
            ));
        }
        Ok(Self {
            before: before.to_owned(),
            after: after.to_owned(),
        })
    }

    /// The prefix of `tenant`'s keys (ends with `/`).
    pub fn for_tenant(&self, tenant: &TenantName) -> String {
        format!("{}{}{}", self.before, tenant.as_str(), self.after)
    }

    /// Whether `key` (as [`crate::ConsulRoute::Kv`] gives it) is strictly under `tenant`'s
    /// prefix. The prefix itself without its `/` is refused: with `?recurse` it would also
    /// list other tenants whose names extend this one.
    pub fn allows(&self, tenant: &TenantName, key: &str) -> bool {
        key.strip_prefix(&self.before)
            .and_then(|k| k.strip_prefix(tenant.as_str()))
            .and_then(|k| k.strip_prefix(&self.after))
            .is_some()
    }

    /// [`Self::allows`] as a decision.
    pub fn check(&self, tenant: &TenantName, key: &str) -> Result<(), DenyReason> {
        if self.allows(tenant, key) {
            Ok(())
        } else {
            Err(DenyReason::KeyOutsidePrefix)
        }
    }
}

impl Default for KvPrefix {
    /// `tenants/{tenant}/`.
    fn default() -> Self {
        Self {
            before: "tenants/".into(),
            after: "/".into(),
        }
    }
}

/// A JSON key as Consul's decoders may match it: lowercase, without `_` or `-`.
pub(crate) fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, '_' | '-'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The separator between a tenant and a service id in [`scoped_service_id`]; tenant names
/// cannot contain it, so `<tenant>.` prefixes never overlap (`a.` vs `a-b.`).
pub const SERVICE_ID_SEPARATOR: char = '.';

/// `id` in `tenant`'s id namespace: `<tenant>.<id>`, or `id` unchanged when it already
/// starts with `<tenant>.` (so re-registering an id Consul returned keeps it).
pub fn scoped_service_id(tenant: &TenantName, id: &str) -> String {
    let prefixed = id
        .strip_prefix(tenant.as_str())
        .is_some_and(|rest| rest.starts_with(SERVICE_ID_SEPARATOR));
    if prefixed {
        id.to_owned()
    } else {
        format!("{}{SERVICE_ID_SEPARATOR}{id}", tenant.as_str())
    }
}

/// Moves a registration's service id into `tenant`'s namespace ([`scoped_service_id`] of its
/// `ID`, or of its `Name` when there is no `ID`, as Consul defaults the id to the name), so
/// a tenant can only ever deregister (or overwrite) its own instances. Refused: a body that
/// is not an object, an `ID`/`Name` that is not a string, other spellings of them that Go's
/// case-insensitive decoding would also match (`id`, `Id`, `name`, …), and a body with
/// neither.
pub fn scope_registration_id(body: &[u8], tenant: &TenantName) -> Result<Vec<u8>, DenyReason> {
    if body.len() > MAX_REGISTRATION_LEN {
        return Err(DenyReason::BadBody("the registration is too large".into()));
    }
    let mut root: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| DenyReason::BadBody(e.to_string()))?;
    for key in root.keys() {
        let folded = fold(key);
        let canonical = match folded.as_str() {
            "id" => "ID",
            "name" => "Name",
            _ => continue,
        };
        if key != canonical {
            return Err(DenyReason::AmbiguousField(key.clone()));
        }
    }
    let id = match (root.get("ID"), root.get("Name")) {
        (Some(Value::String(id)), _) if !id.is_empty() => id.clone(),
        (Some(Value::String(_)) | None, Some(Value::String(name))) if !name.is_empty() => {
            name.clone()
        }
        (Some(Value::String(_)) | None, None | Some(Value::String(_))) => {
            return Err(DenyReason::BadBody(
                "the registration has no ID or Name".into(),
            ))
        }
        _ => return Err(DenyReason::BadBody("ID and Name must be strings".into())),
    };
    root.insert("ID".into(), Value::String(scoped_service_id(tenant, &id)));
    serde_json::to_vec(&root).map_err(|e| DenyReason::BadBody(e.to_string()))
}
