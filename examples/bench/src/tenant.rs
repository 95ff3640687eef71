//! The tenant filter's benchmark variants: Envoy's native RBAC filter checking the tenant header
//! and the source network, against the meshguard tenant filter trusting the same header from the
//! same network and then checking the cross-tenant map for the routed cluster. Both run behind
//! Envoy's `header_mutation` filter, which sets the tenant header on every request (wrk sends
//! none), so the two variants differ only in the filter measured.

use anyhow::Result;
use meshguard_tests::{wasm_artifact, EnvoyConfig, WasmFilter};

/// Name of the native baseline variant.
pub const RBAC: &str = "native RBAC (header check)";
/// Name of the meshguard variant.
pub const TENANT: &str = "meshguard tenant (trusted header → cross-tenant check)";

/// Sets `x-meshguard-tenant: acme` on every request.
pub const SET_TENANT_HEADER: &str = r#"- name: envoy.filters.http.header_mutation
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
    mutations:
      request_mutations:
      - append:
          header: { key: x-meshguard-tenant, value: acme }
          append_action: OVERWRITE_IF_EXISTS_OR_ADD"#;

/// Allows requests from 127.0.0.0/8 whose `x-meshguard-tenant` is `acme`.
pub const RBAC_FILTER: &str = r#"- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules:
      action: ALLOW
      policies:
        tenant-acme:
          permissions: [{ any: true }]
          principals:
          - and_ids:
              ids:
              - direct_remote_ip: { address_prefix: 127.0.0.0, prefix_len: 8 }
              - header: { name: x-meshguard-tenant, string_match: { exact: acme } }"#;

/// The tenant filter: the header trusted from 127.0.0.0/8, the `upstream` cluster owned by
/// `acme`, unknown destinations denied.
pub const TENANT_CONFIG: &str = r#"{"identity":[{"trusted_header":{"cidrs":["127.0.0.0/8"]}}],"service_tenants":{"upstream":"acme"},"cross_tenant":{"destination":"cluster_name"}}"#;

/// The variants as `(name, compare_with, config)`; `base()` is the harness config with the
/// upstream set. The meshguard variant is left out when its module is not built.
pub fn variants(
    base: impl Fn() -> EnvoyConfig,
) -> Result<Vec<(&'static str, Option<&'static str>, EnvoyConfig)>> {
    let mut out = vec![(
        RBAC,
        None,
        base()
            .http_filter_yaml(SET_TENANT_HEADER)
            .http_filter_yaml(RBAC_FILTER),
    )];
    if let Ok(wasm) = wasm_artifact("meshguard_tenant") {
        out.push((
            TENANT,
            Some(RBAC),
            base()
                .http_filter_yaml(SET_TENANT_HEADER)
                .wasm_filter(WasmFilter::new("tenant", wasm).configuration(TENANT_CONFIG)),
        ));
    }
    Ok(out)
}
