//! Tenant isolation in pure functions: who the caller is (SPIFFE SAN, verified JWT claim, or
//! a header from a trusted network, tried in order), and what a tenant may do through
//! Consul's HTTP API (an allow-listed, normalised path; a `filter` that always starts with
//! the tenant clause; registrations forced into the tenant; catalog listings and KV keys
//! confined to it). The tenant filter's shell reads the request, calls these, and acts.

mod bexpr;
mod body;
mod cidr;
mod error;
mod name;
mod registration;
mod resolve;
mod route;
mod spiffe;

#[cfg(test)]
mod attacks;
#[cfg(test)]
mod tests;

pub use bexpr::{
    bexpr_string, percent_encode, query_unescape, remove_query_param, scope_query, tenant_clause,
    tenant_filter, validate_user_filter, MAX_USER_FILTER_LEN,
};
pub use body::{
    filter_catalog_services, filter_catalog_services_by, rewrite_registration,
    scope_registration_id, scoped_service_id, KvPrefix, MAX_REGISTRATION_LEN, SERVICE_ID_SEPARATOR,
    TENANT_META_KEY,
};
pub use cidr::{is_trusted_source, parse_source_address, Cidr};
pub use error::{DenyReason, SourceKind, TenantError};
pub use name::{TenantName, MAX_TENANT_LEN};
pub use registration::registration_service_name;
pub use resolve::{resolve, IdentitySource, RequestFacts, Resolution};
pub use route::{
    classify_consul_request, normalize_path, split_path_query, ConsulRoute, TenantSelector,
    MAX_CONSUL_NAME_LEN, MAX_CONSUL_PATH_LEN,
};
pub use spiffe::{SpiffeMatch, SpiffePattern, MAX_SPIFFE_ID_LEN};
