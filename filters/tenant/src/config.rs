//! The filter's JSON configuration (`PluginConfig.configuration`): serde types that reject
//! unknown fields, their validation, and their compiled form. `config.schema.json` is
//! generated from these types (doc comments become descriptions); README.md documents every
//! field with examples.

use std::collections::{BTreeMap, BTreeSet};

use meshguard_core::{Cidr, IdentitySource, KvPrefix, SpiffePattern, TenantError, TenantName};
use meshguard_filter_common::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// Default of [`Config::tenant_header`].
pub const DEFAULT_TENANT_HEADER: &str = "x-meshguard-tenant";
/// Default of [`Config::reason_header`].
pub const DEFAULT_REASON_HEADER: &str = "x-meshguard-deny-reason";
/// Default of [`Consul::kv_prefix`].
pub const DEFAULT_KV_PREFIX: &str = "tenants/{tenant}/";
/// The shared-data key the router filter publishes the service → tenant map under.
pub const REGISTRY_KEY: &str = "meshguard.registry.service_tenants.v1";

/// The tenant filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header that carries the verified tenant to later filters and the upstream. Every
    /// client-supplied copy is removed; a `trusted_header` identity source reads it.
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
    /// The response header that says why a request was denied.
    #[serde(default = "default_reason_header")]
    pub reason_header: String,
    /// Identity sources, tried in order; the first that applies decides.
    pub identity: Vec<Identity>,
    /// What happens to a request no identity source applies to.
    #[serde(default)]
    pub no_identity: NoIdentity,
    /// Static service → tenant map (service name as the destination and Consul name it).
    /// Wins over the registry map.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_tenants: BTreeMap<String, String>,
    /// Also read the service → tenant map the router filter publishes in shared data under
    /// `meshguard.registry.service_tenants.v1` (the plugins must share a `vm_id`).
    #[serde(default)]
    pub registry_service_tenants: bool,
    /// Deny calls to another tenant's services; absent: no cross-tenant check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_tenant: Option<CrossTenant>,
    /// Guard Consul's HTTP API; absent: requests are not treated as Consul API calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul: Option<Consul>,
}

fn default_tenant_header() -> String {
    DEFAULT_TENANT_HEADER.into()
}

fn default_reason_header() -> String {
    DEFAULT_REASON_HEADER.into()
}

/// One identity source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Identity {
    /// The mTLS peer certificate's URI SAN (`connection.uri_san_peer_certificate`).
    Spiffe {
        /// The SPIFFE ID pattern with one `{tenant}` segment, e.g.
        /// `spiffe://{domain}/tenant/{tenant}/*` (`{domain}`: any trust domain; `*` as the
        /// last segment: one or more segments, elsewhere exactly one).
        pattern: String,
    },
    /// A claim of a JWT verified by Envoy's `jwt_authn` filter, read from its dynamic
    /// metadata `metadata.filter_metadata["envoy.filters.http.jwt_authn"][payload_key][claim]`.
    JwtClaim {
        /// `jwt_authn`'s `payload_in_metadata` name (default `payload`).
        #[serde(default = "default_payload_key")]
        payload_key: String,
        /// The claim holding the tenant (a top-level string claim).
        claim: String,
    },
    /// The tenant header, believed only from a `source.address` inside these networks.
    TrustedHeader {
        /// Networks such as `10.0.0.0/8` or `::1/128`.
        cidrs: Vec<String>,
    },
}

fn default_payload_key() -> String {
    "payload".into()
}

/// The decision for a request without a verified tenant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NoIdentity {
    /// Deny it with this status (401 or 403).
    Deny {
        /// 401 or 403.
        status: u16,
    },
    /// Let it through as this tenant (e.g. `public`).
    Anonymous {
        /// The tenant name to set.
        tenant: String,
    },
}

impl Default for NoIdentity {
    /// Deny with 401.
    fn default() -> Self {
        Self::Deny { status: 401 }
    }
}

/// The cross-tenant check for calls between services.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CrossTenant {
    /// Where the destination service's name comes from.
    pub destination: Destination,
    /// Services every tenant may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_services: Vec<String>,
    /// What to do when the destination is missing or has no known tenant.
    #[serde(default)]
    pub unknown_destination: Unknown,
}

/// The source of the destination service's name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    /// The upstream cluster Envoy's route picked (`xds.cluster_name`): the cluster is named
    /// after the service.
    ClusterName,
    /// The route's name (`xds.route_name`).
    RouteName,
    /// The host of `:authority` without the port, minus the first of these suffixes it ends
    /// with (e.g. `[".service.consul"]`).
    Authority {
        /// Suffixes to strip, e.g. `.service.consul`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        strip_suffixes: Vec<String>,
    },
    /// A request header. Only safe when a trusted filter before this one sets it: a client
    /// can send any header.
    Header(String),
}

/// The decision for an unknown destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// Deny with 403 (the default).
    #[default]
    Deny,
    /// Let it through.
    Allow,
}

/// Consul API isolation: requests are classified against an allow-list and scoped to the
/// caller's tenant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Consul {
    /// Only requests routed to these clusters (`xds.cluster_name`) are Consul API calls;
    /// empty: every request through this filter is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Where a tenant's KV keys live; `{tenant}` exactly once, ending with `/`.
    #[serde(default = "default_kv_prefix")]
    pub kv_prefix: String,
    /// Move registered service ids into the tenant's namespace (`<tenant>.<id>`), and
    /// deregistrations with them, so a tenant can only deregister its own instances. With
    /// `false`, deregistration is denied.
    #[serde(default = "yes")]
    pub scope_service_ids: bool,
    /// Replace the client's Consul token (`X-Consul-Token`, `Authorization`, `?token=`) with
    /// the tenant's token from this map (tenant → token); a tenant without an entry is
    /// forwarded with no token (Consul's anonymous token). Absent: client tokens pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<BTreeMap<String, String>>,
}

fn default_kv_prefix() -> String {
    DEFAULT_KV_PREFIX.into()
}

const fn yes() -> bool {
    true
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }
}

/// The configuration, compiled: what the shell works with.
#[derive(Debug)]
pub(crate) struct Settings {
    pub tenant_header: String,
    pub reason_header: String,
    pub sources: Vec<IdentitySource>,
    /// A `spiffe` source is configured: the peer's URI SAN is read.
    pub reads_uri_san: bool,
    /// A `trusted_header` source is configured: `source.address` is read when the request
    /// carries the tenant header.
    pub reads_source_address: bool,
    /// The JWT claim's property path, if a `jwt_claim` source is configured.
    pub jwt_path: Option<Vec<String>>,
    pub no_identity: NoIdentityPolicy,
    pub service_tenants: BTreeMap<String, TenantName>,
    pub registry: bool,
    pub cross_tenant: Option<CrossTenantPolicy>,
    pub consul: Option<ConsulPolicy>,
}

#[derive(Debug)]
pub(crate) enum NoIdentityPolicy {
    Deny(u16),
    Anonymous(TenantName),
}

#[derive(Debug)]
pub(crate) struct CrossTenantPolicy {
    pub destination: Destination,
    pub shared_services: BTreeSet<String>,
    pub unknown: Unknown,
}

#[derive(Debug)]
pub(crate) struct ConsulPolicy {
    pub clusters: Vec<String>,
    pub kv_prefix: KvPrefix,
    pub scope_service_ids: bool,
    pub tokens: Option<BTreeMap<TenantName, String>>,
}

fn problem(e: TenantError) -> &'static str {
    let TenantError::Invalid { problem, .. } = e;
    problem
}

fn tenant(value: &str) -> Result<TenantName, ConfigError> {
    TenantName::try_new(value)
        .map_err(|e| ConfigError::new(format!("`{value}`: tenant {}", problem(e))))
}

/// A lowercase header name: what Envoy's codecs hand the filter.
fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::at(
            field,
            format!("`{name}` must be a lowercase header name (a-z, 0-9, '-', '_')"),
        ))
    }
}

fn check_service(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= meshguard_core::MAX_CONSUL_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a service name (1 to 256 of A-Z, a-z, 0-9, '-', '_', '.')"
        ))
    }
}

impl Config {
    /// Validates and compiles; errors name the field by its path.
    pub(crate) fn compile(&self) -> Result<Settings, ConfigError> {
        check_header_name("tenant_header", &self.tenant_header)?;
        check_header_name("reason_header", &self.reason_header)?;
        if self.identity.is_empty() {
            return Err(ConfigError::at(
                "identity",
                "must contain at least one source",
            ));
        }
        let mut sources = Vec::with_capacity(self.identity.len());
        let mut jwt_path = None;
        for (i, source) in self.identity.iter().enumerate() {
            let at = |e: ConfigError| e.in_index(i).in_field("identity");
            let compiled = match source {
                Identity::Spiffe { pattern } => {
                    IdentitySource::SpiffeSan(SpiffePattern::try_new(pattern).map_err(|e| {
                        at(ConfigError::at("pattern", problem(e)).in_field("spiffe"))
                    })?)
                }
                Identity::JwtClaim { payload_key, claim } => {
                    if jwt_path.is_some() {
                        return Err(at(ConfigError::new("only one jwt_claim source is allowed")));
                    }
                    for (field, value) in [("payload_key", payload_key), ("claim", claim)] {
                        if value.is_empty() {
                            return Err(at(
                                ConfigError::at(field, "must not be empty").in_field("jwt_claim")
                            ));
                        }
                    }
                    jwt_path = Some(vec![
                        "metadata".to_owned(),
                        "filter_metadata".to_owned(),
                        "envoy.filters.http.jwt_authn".to_owned(),
                        payload_key.clone(),
                        claim.clone(),
                    ]);
                    IdentitySource::JwtClaim
                }
                Identity::TrustedHeader { cidrs } => {
                    if cidrs.is_empty() {
                        return Err(at(ConfigError::at(
                            "cidrs",
                            "must contain at least one network",
                        )
                        .in_field("trusted_header")));
                    }
                    let parsed = cidrs
                        .iter()
                        .enumerate()
                        .map(|(j, c)| {
                            Cidr::try_new(c).map_err(|e| {
                                at(ConfigError::new(format!("`{c}`: {}", problem(e)))
                                    .in_index(j)
                                    .in_field("cidrs")
                                    .in_field("trusted_header"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    IdentitySource::TrustedHeader(parsed)
                }
            };
            sources.push(compiled);
        }
        let no_identity = match &self.no_identity {
            NoIdentity::Deny { status } if matches!(status, 401 | 403) => {
                NoIdentityPolicy::Deny(*status)
            }
            NoIdentity::Deny { .. } => {
                return Err(ConfigError::at("status", "must be 401 or 403")
                    .in_field("deny")
                    .in_field("no_identity"))
            }
            NoIdentity::Anonymous { tenant: t } => {
                NoIdentityPolicy::Anonymous(tenant(t).map_err(|e| {
                    e.in_field("tenant")
                        .in_field("anonymous")
                        .in_field("no_identity")
                })?)
            }
        };
        let mut service_tenants = BTreeMap::new();
        for (service, t) in &self.service_tenants {
            check_service(service).map_err(|m| ConfigError::at("service_tenants", m))?;
            let t = tenant(t).map_err(|e| e.in_field(service).in_field("service_tenants"))?;
            service_tenants.insert(service.clone(), t);
        }
        let cross_tenant = match &self.cross_tenant {
            None => None,
            Some(c) => Some(c.compile().map_err(|e| e.in_field("cross_tenant"))?),
        };
        let consul = match &self.consul {
            None => None,
            Some(c) => Some(c.compile().map_err(|e| e.in_field("consul"))?),
        };
        let reads_uri_san = sources
            .iter()
            .any(|s| matches!(s, IdentitySource::SpiffeSan(_)));
        let reads_source_address = sources
            .iter()
            .any(|s| matches!(s, IdentitySource::TrustedHeader(_)));
        Ok(Settings {
            tenant_header: self.tenant_header.clone(),
            reason_header: self.reason_header.clone(),
            sources,
            reads_uri_san,
            reads_source_address,
            jwt_path,
            no_identity,
            service_tenants,
            registry: self.registry_service_tenants,
            cross_tenant,
            consul,
        })
    }
}

impl CrossTenant {
    fn compile(&self) -> Result<CrossTenantPolicy, ConfigError> {
        match &self.destination {
            Destination::Header(name) => {
                check_header_name("header", name).map_err(|e| e.in_field("destination"))?;
            }
            Destination::Authority { strip_suffixes } => {
                if let Some(i) = strip_suffixes.iter().position(String::is_empty) {
                    return Err(ConfigError::at("strip_suffixes", "must not be empty")
                        .in_index(i)
                        .in_field("authority")
                        .in_field("destination"));
                }
            }
            Destination::ClusterName | Destination::RouteName => {}
        }
        let mut shared_services = BTreeSet::new();
        for (i, service) in self.shared_services.iter().enumerate() {
            check_service(service)
                .map_err(|m| ConfigError::new(m).in_index(i).in_field("shared_services"))?;
            shared_services.insert(service.clone());
        }
        Ok(CrossTenantPolicy {
            destination: self.destination.clone(),
            shared_services,
            unknown: self.unknown_destination,
        })
    }
}

impl Consul {
    fn compile(&self) -> Result<ConsulPolicy, ConfigError> {
        if let Some(i) = self.clusters.iter().position(String::is_empty) {
            return Err(ConfigError::new("must not be empty")
                .in_index(i)
                .in_field("clusters"));
        }
        let kv_prefix = KvPrefix::try_new(&self.kv_prefix)
            .map_err(|e| ConfigError::at("kv_prefix", problem(e)))?;
        let tokens = match &self.tokens {
            None => None,
            Some(map) => {
                let mut out = BTreeMap::new();
                for (t, token) in map {
                    let name = tenant(t).map_err(|e| e.in_field("tokens"))?;
                    let ok = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
                    if !ok {
                        return Err(ConfigError::at(
                            t,
                            "must be a non-empty token of visible ASCII characters",
                        )
                        .in_field("tokens"));
                    }
                    out.insert(name, token.clone());
                }
                Some(out)
            }
        };
        Ok(ConsulPolicy {
            clusters: self.clusters.clone(),
            kv_prefix,
            scope_service_ids: self.scope_service_ids,
            tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use meshguard_filter_common::parse_config;

    use super::*;

    fn error(json: &str) -> String {
        parse_config::<Config>(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_minimal_config_gets_the_defaults() {
        let config: Config =
            parse_config(br#"{"identity":[{"trusted_header":{"cidrs":["127.0.0.0/8"]}}]}"#)
                .unwrap();
        assert_eq!(config.tenant_header, "x-meshguard-tenant");
        assert_eq!(config.reason_header, "x-meshguard-deny-reason");
        assert_eq!(config.no_identity, NoIdentity::Deny { status: 401 });
        assert!(!config.registry_service_tenants);
        let settings = config.compile().unwrap();
        assert!(settings.cross_tenant.is_none() && settings.consul.is_none());
    }

    #[test]
    fn the_jwt_claim_is_read_from_jwt_authn_metadata() {
        let config: Config =
            parse_config(br#"{"identity":[{"jwt_claim":{"claim":"org"}}]}"#).unwrap();
        assert_eq!(
            config.compile().unwrap().jwt_path.unwrap(),
            [
                "metadata",
                "filter_metadata",
                "envoy.filters.http.jwt_authn",
                "payload",
                "org"
            ]
        );
    }

    #[test]
    fn errors_name_the_offending_field() {
        let id = r#""identity":[{"trusted_header":{"cidrs":["10.0.0.0/8"]}}]"#;
        let cases = [
            (r#"{"identity":[]}"#.to_owned(), "identity: must contain at least one source"),
            (
                r#"{"identity":[{"spiffe":{"pattern":"https://x/{tenant}"}}]}"#.to_owned(),
                "identity[0].spiffe.pattern: must start with spiffe://",
            ),
            (
                r#"{"identity":[{"trusted_header":{"cidrs":["10.0.0.1/8"]}}]}"#.to_owned(),
                "identity[0].trusted_header.cidrs[0]: `10.0.0.1/8`: entries must have no host bits set",
            ),
            (
                r#"{"identity":[{"jwt_claim":{"claim":""}}]}"#.to_owned(),
                "identity[0].jwt_claim.claim: must not be empty",
            ),
            (
                format!(r#"{{{id},"no_identity":{{"deny":{{"status":500}}}}}}"#),
                "no_identity.deny.status: must be 401 or 403",
            ),
            (
                format!(r#"{{{id},"no_identity":{{"anonymous":{{"tenant":"Public"}}}}}}"#),
                "no_identity.anonymous.tenant: `Public`: tenant must contain only lowercase ascii letters, digits, '-' and '_'",
            ),
            (
                format!(r#"{{{id},"tenant_header":"X-Tenant"}}"#),
                "tenant_header: `X-Tenant` must be a lowercase header name (a-z, 0-9, '-', '_')",
            ),
            (
                format!(r#"{{{id},"service_tenants":{{"web":"a/b"}}}}"#),
                "service_tenants.web: `a/b`: tenant must contain only lowercase ascii letters, digits, '-' and '_'",
            ),
            (
                format!(r#"{{{id},"cross_tenant":{{"destination":"cluster_name","shared_services":["ok","a b"]}}}}"#),
                "cross_tenant.shared_services[1]: `a b` is not a service name (1 to 256 of A-Z, a-z, 0-9, '-', '_', '.')",
            ),
            (
                format!(r#"{{{id},"consul":{{"kv_prefix":"tenants/"}}}}"#),
                "consul.kv_prefix: must contain {tenant}",
            ),
            (
                format!(r#"{{{id},"consul":{{"tokens":{{"acme":"a b"}}}}}}"#),
                "consul.tokens.acme: must be a non-empty token of visible ASCII characters",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(error(&json), expected, "{json}");
        }
    }

    #[test]
    fn unknown_fields_and_variants_are_rejected_with_their_path() {
        let e = error(r#"{"identity":[{"trusted_header":{"cidrs":[],"header":"x"}}]}"#);
        assert!(e.starts_with("identity[0]"), "{e}");
        assert!(e.contains("unknown field `header`"), "{e}");
        let e = error(r#"{"identity":[{"mtls":{}}]}"#);
        assert!(e.contains("unknown variant `mtls`"), "{e}");
        let e = error(r#"{"identity":[{"jwt_claim":{"claim":"t"}}],"tenants":{}}"#);
        assert!(e.contains("unknown field `tenants`"), "{e}");
    }

    /// `UPDATE_SCHEMA=1 cargo test -p meshguard-tenant schema`.
    #[test]
    fn checked_in_schema_is_up_to_date() {
        let schema = schemars::schema_for!(Config);
        let generated = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.schema.json");
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} is stale: run `UPDATE_SCHEMA=1 cargo test -p meshguard-tenant schema`",
            path.display()
        );
    }
}
