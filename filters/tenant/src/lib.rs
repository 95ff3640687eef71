//! meshguard's tenant filter: the verified tenant (SPIFFE SAN, `jwt_authn` claim, or a header
//! from trusted networks) replaces any client-supplied one, calls to another tenant's services
//! are denied, and Consul's HTTP API is scoped to the caller's tenant. README.md documents the
//! JSON configuration; these types are its schema.

mod config;
mod filter;
mod policy;

pub use crate::config::{
    Config, Consul, CrossTenant, Destination, Identity, NoIdentity, Unknown, DEFAULT_KV_PREFIX,
    DEFAULT_REASON_HEADER, DEFAULT_TENANT_HEADER, REGISTRY_KEY,
};

/// Checks a configuration (JSON) as `on_configure` does, without a host, so a control plane
/// can reject it before Envoy sees it; the error starts with the field's path.
pub fn validate_config(json: &[u8]) -> Result<(), String> {
    meshguard_filter_common::parse_config::<Config>(json)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

// Natively no `_initialize` is exported: the control plane links every filter (for
// `validate_config`) and the symbol would be defined once per filter.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    filter::start();
}}

/// Keeps the shell compiled (and linted) natively, where nothing starts it.
#[cfg(not(target_arch = "wasm32"))]
#[allow(dead_code)]
fn start() {
    filter::start();
}
