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

proxy_wasm::main! {{
    filter::start();
}}
