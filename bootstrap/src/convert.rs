//! Pure conversion of the registry and the rules into xDS resources: one EDS cluster per
//! service, its endpoints with health and weights, one listener whose HTTP connection manager
//! carries every service's meshguard wasm filters (disabled by default, enabled on the
//! service's virtual host), and one route configuration with a virtual host per service.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbPolicy},
    load_balancing_policy, Cluster, LoadBalancingPolicy, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, async_data_source, config_source::ConfigSourceSpecifier, data_source,
    socket_address::PortSpecifier, Address, AggregatedConfigSource, ApiVersion, AsyncDataSource,
    ConfigSource, DataSource, HealthStatus, Locality, SocketAddress, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, retry_policy, route, route_action, route_match, FilterConfig, HeaderMatcher,
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::override_host::v3::{
    override_host, OverrideHost,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, FailurePolicy, PluginConfig, VmConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, Duration, StringValue, UInt32Value};
use prost::{Message, Name};

use crate::registry::{Endpoint, Health, Registry};
use crate::routing::{NativeRetries, Routing, NON_IDEMPOTENT_METHODS};
use crate::rules::{Balancer, Dur, Retries, Rules, ServiceRules};
use crate::xds::cache::{Resource, Snapshot, SnapshotError};

/// Name of the listener (and its stats prefix).
pub const LISTENER_NAME: &str = "main";
/// Name of the route configuration the listener loads over RDS.
pub const ROUTE_CONFIG_NAME: &str = "meshguard";
/// Default connect timeout to an instance.
const DEFAULT_CONNECT_TIMEOUT: Dur = Dur(1_000_000_000);

/// What the conversion needs besides registry and rules.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Where Envoy's listener binds.
    pub listen: SocketAddr,
    /// Directory holding `meshguard_<filter>.wasm`.
    pub wasm_dir: PathBuf,
}

impl ConvertOptions {
    /// The module file of a meshguard filter.
    pub fn wasm_path(&self, filter: &str) -> PathBuf {
        self.wasm_dir.join(format!("meshguard_{filter}.wasm"))
    }
}

/// Why the registry and rules could not become a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A filter's module file is missing.
    #[error("service {service:?} uses the {filter} filter but {} does not exist", path.display())]
    MissingWasm {
        /// The service.
        service: String,
        /// The filter.
        filter: &'static str,
        /// The expected module file.
        path: PathBuf,
    },
    /// A path is not UTF-8.
    #[error("path {} is not UTF-8", .0.display())]
    NonUtf8Path(PathBuf),
    /// The snapshot failed its consistency check.
    #[error("inconsistent snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// The Envoy name of a service's filter instance (also its VM id, so state is per service).
pub fn filter_instance_name(service: &str, filter: &str) -> String {
    format!("meshguard.{filter}.{service}")
}

/// The VM id of a service's filter: its instance name, except that the tenant and router
/// filters of one service share `meshguard.tenant-router.<service>` (Envoy scopes shared data
/// by VM id, and the router publishes the service → tenant map there for the tenant filter).
pub fn filter_vm_id(service: &str, filter: &str, rules: &ServiceRules) -> String {
    if matches!(filter, "tenant" | "router") && rules.shares_tenant_vm(service) {
        format!("meshguard.tenant-router.{service}")
    } else {
        filter_instance_name(service, filter)
    }
}

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn duration(d: Dur) -> Duration {
    let (seconds, nanos) = d.seconds_nanos();
    Duration { seconds, nanos }
}

fn ads_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// Builds the snapshot for one node: every service of the registry and of the rules (a service
/// only in the rules gets a cluster with no endpoints).
pub fn snapshot(
    registry: &Registry,
    rules: &Rules,
    options: &ConvertOptions,
) -> Result<Snapshot, ConvertError> {
    let services: BTreeSet<&String> = registry
        .services
        .keys()
        .chain(rules.services.keys())
        .collect();
    let no_endpoints = Vec::new();
    let mut clusters = Vec::new();
    let mut endpoints = Vec::new();
    for service in &services {
        let service_rules = rules.service(service);
        clusters.push(Resource {
            name: (*service).clone(),
            body: any(&cluster(service, &service_rules)),
            refs: vec![(*service).clone()],
        });
        let instances = registry.services.get(*service).unwrap_or(&no_endpoints);
        endpoints.push(endpoint_resource(service, instances));
    }
    let mut filters = Vec::new();
    for service in &services {
        let service_rules = rules.service(service);
        for (filter, config) in service_rules.filters(service) {
            let path = options.wasm_path(filter);
            if !path.is_file() {
                return Err(ConvertError::MissingWasm {
                    service: (*service).clone(),
                    filter,
                    path,
                });
            }
            let vm_id = filter_vm_id(service, filter, &service_rules);
            filters.push(wasm_filter(service, filter, &vm_id, &config, &path)?);
        }
    }
    let listener = listener(options.listen, filters);
    let routes = route_configuration(&services, rules);
    Ok(Snapshot::try_new(
        clusters,
        endpoints,
        vec![Resource {
            name: LISTENER_NAME.to_string(),
            body: any(&listener),
            refs: vec![ROUTE_CONFIG_NAME.to_string()],
        }],
        vec![Resource {
            name: ROUTE_CONFIG_NAME.to_string(),
            body: any(&routes),
            refs: services.iter().map(|s| (*s).clone()).collect(),
        }],
    )?)
}

/// The EDS resource of one service: what an instance change re-encodes (see
/// [`Snapshot::with_updates`]).
pub(crate) fn endpoint_resource(service: &str, instances: &[Endpoint]) -> Resource {
    Resource {
        name: service.to_string(),
        body: any(&load_assignment(service, instances)),
        refs: Vec::new(),
    }
}

/// An EDS cluster over ADS with the service's native settings. Panic threshold 0: a critical
/// instance never gets traffic, even when most instances are critical (Consul's semantics).
pub fn cluster(service: &str, rules: &ServiceRules) -> Cluster {
    let mut lb_policy = match rules.balancer.unwrap_or(Balancer::RoundRobin) {
        Balancer::RoundRobin => LbPolicy::RoundRobin,
        Balancer::LeastRequest => LbPolicy::LeastRequest,
        Balancer::Random => LbPolicy::Random,
        Balancer::RingHash => LbPolicy::RingHash,
        Balancer::Maglev => LbPolicy::Maglev,
    };
    let mut load_balancing_policy = None;
    match rules.routing(service) {
        Some(Routing::Native(native)) => {
            lb_policy = LbPolicy::from_str_name(native.lb_policy).unwrap_or(LbPolicy::RoundRobin);
        }
        Some(Routing::Filter {
            override_host_header,
            ..
        }) => load_balancing_policy = Some(override_host_policy(&override_host_header)),
        None => {}
    }
    Cluster {
        name: service.to_string(),
        connect_timeout: Some(duration(
            rules.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        )),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: service.to_string(),
        }),
        lb_policy: lb_policy as i32,
        load_balancing_policy,
        common_lb_config: Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: 0.0 }),
            ..Default::default()
        }),
        outlier_detection: rules.outlier_detection.as_ref().map(|o| OutlierDetection {
            consecutive_5xx: Some(UInt32Value {
                value: o.consecutive_5xx.unwrap_or(5),
            }),
            interval: o.interval.map(duration),
            base_ejection_time: o.base_ejection_time.map(duration),
            max_ejection_percent: o.max_ejection_percent.map(|value| UInt32Value { value }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Envoy's `override_host` policy on the router filter's header (its pick, then failover
/// targets, all members of the EDS cluster), round robin when the header is absent.
fn override_host_policy(header: &str) -> LoadBalancingPolicy {
    let round_robin = LoadBalancingPolicy {
        policies: vec![load_balancing_policy::Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: "envoy.load_balancing_policies.round_robin".to_string(),
                typed_config: Some(any(&RoundRobin::default())),
            }),
        }],
    };
    LoadBalancingPolicy {
        policies: vec![load_balancing_policy::Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: "envoy.load_balancing_policies.override_host".to_string(),
                typed_config: Some(any(&OverrideHost {
                    override_host_sources: vec![override_host::OverrideHostSource {
                        header: header.to_string(),
                        ..Default::default()
                    }],
                    fallback_policy: Some(round_robin),
                    ..Default::default()
                })),
            }),
        }],
    }
}

/// Health and weight of one instance: passing → healthy at its weight; warning → healthy at
/// the warning weight, or degraded (used only when no healthy instance is left) when that is
/// 0; critical → unhealthy.
pub fn endpoint_health(endpoint: &Endpoint) -> (HealthStatus, u32) {
    match endpoint.health {
        Health::Passing => (HealthStatus::Healthy, endpoint.weight.max(1)),
        Health::Warning if endpoint.warning_weight == 0 => (HealthStatus::Degraded, 1),
        Health::Warning => (HealthStatus::Healthy, endpoint.warning_weight),
        Health::Critical => (HealthStatus::Unhealthy, 1),
    }
}

/// The service's endpoints, one locality per zone.
pub fn load_assignment(service: &str, instances: &[Endpoint]) -> ClusterLoadAssignment {
    let mut by_zone: std::collections::BTreeMap<Option<&str>, Vec<LbEndpoint>> =
        std::collections::BTreeMap::new();
    for instance in instances {
        let (health, weight) = endpoint_health(instance);
        by_zone
            .entry(instance.zone.as_deref())
            .or_default()
            .push(LbEndpoint {
                health_status: health as i32,
                load_balancing_weight: Some(UInt32Value { value: weight }),
                host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(socket_address(&instance.address, instance.port)),
                    ..Default::default()
                })),
                ..Default::default()
            });
    }
    ClusterLoadAssignment {
        cluster_name: service.to_string(),
        endpoints: by_zone
            .into_iter()
            .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
                locality: zone.map(|z| Locality {
                    zone: z.to_string(),
                    ..Default::default()
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn wasm_filter(
    service: &str,
    filter: &str,
    vm_id: &str,
    configuration: &str,
    wasm: &Path,
) -> Result<HttpFilter, ConvertError> {
    let filename = wasm
        .to_str()
        .ok_or_else(|| ConvertError::NonUtf8Path(wasm.to_path_buf()))?
        .to_string();
    let name = filter_instance_name(service, filter);
    let plugin = PluginConfig {
        name: name.clone(),
        root_id: String::new(),
        configuration: Some(any(&StringValue {
            value: configuration.to_string(),
        })),
        failure_policy: FailurePolicy::FailClosed as i32,
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            vm_id: vm_id.to_string(),
            runtime: "envoy.wasm.runtime.v8".to_string(),
            code: Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::Filename(filename)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    Ok(HttpFilter {
        name,
        // Enabled per virtual host, so each service's filters only see its own requests.
        disabled: true,
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Wasm {
            config: Some(plugin),
        }))),
        ..Default::default()
    })
}

/// The listener: an HTTP connection manager loading routes over RDS, the service filters, then
/// the router.
pub fn listener(listen: SocketAddr, mut filters: Vec<HttpFilter>) -> Listener {
    filters.push(HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: LISTENER_NAME.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: ROUTE_CONFIG_NAME.to_string(),
        })),
        http_filters: filters,
        ..Default::default()
    };
    Listener {
        name: LISTENER_NAME.to_string(),
        address: Some(socket_address(&listen.ip().to_string(), listen.port())),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn retry_policy(r: &Retries) -> RetryPolicy {
    RetryPolicy {
        retry_on: r.on.join(","),
        num_retries: Some(UInt32Value { value: r.attempts }),
        per_try_timeout: r.per_try_timeout.map(duration),
        ..Default::default()
    }
}

/// `failover` done by Envoy: retries on hosts not tried yet (`previous_hosts`).
fn native_retry_policy(r: &NativeRetries) -> RetryPolicy {
    RetryPolicy {
        retry_on: r.on.clone(),
        num_retries: Some(UInt32Value { value: r.attempts }),
        per_try_timeout: r.per_try_timeout_ns.map(|ns| duration(Dur(ns))),
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                any(&PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 3,
        ..Default::default()
    }
}

/// The retries of a route: its own, else the service's, else native `failover`'s.
#[derive(Clone, Copy)]
pub(crate) enum RouteRetries<'a> {
    None,
    Rules(&'a Retries),
    Native(&'a NativeRetries),
}

/// A route's retries: its own, else the service's, else native `failover`'s.
pub(crate) fn pick_retries<'a>(
    own: Option<&'a Retries>,
    service: Option<&'a Retries>,
    native: Option<&'a NativeRetries>,
) -> RouteRetries<'a> {
    own.or(service)
        .map(RouteRetries::Rules)
        .or(native.map(RouteRetries::Native))
        .unwrap_or(RouteRetries::None)
}

fn route_to(
    service: &str,
    m: route_match::PathSpecifier,
    timeout: Option<Dur>,
    retries: RouteRetries<'_>,
) -> Vec<Route> {
    let route = |retry_policy: Option<RetryPolicy>, headers: Vec<HeaderMatcher>| Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(m.clone()),
            headers,
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(service.to_string())),
            timeout: timeout.map(duration),
            retry_policy,
            ..Default::default()
        })),
        ..Default::default()
    };
    match retries {
        RouteRetries::None => vec![route(None, Vec::new())],
        RouteRetries::Rules(r) => vec![route(Some(retry_policy(r)), Vec::new())],
        RouteRetries::Native(r) if r.non_idempotent => {
            vec![route(Some(native_retry_policy(r)), Vec::new())]
        }
        // The router filter does not retry non-idempotent methods: neither does Envoy here.
        RouteRetries::Native(r) => vec![
            route(None, vec![non_idempotent_methods()]),
            route(Some(native_retry_policy(r)), Vec::new()),
        ],
    }
}

fn non_idempotent_methods() -> HeaderMatcher {
    HeaderMatcher {
        name: ":method".to_string(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                    regex: NON_IDEMPOTENT_METHODS.to_string(),
                    ..Default::default()
                })),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// One virtual host per service, matched by the `Host` header (`<service>` or
/// `<service>:<port>`), enabling that service's filters.
pub fn route_configuration(services: &BTreeSet<&String>, rules: &Rules) -> RouteConfiguration {
    let virtual_hosts = services
        .iter()
        .map(|service| {
            let r = rules.service(service);
            let native = match r.routing(service) {
                Some(Routing::Native(native)) => native.retries,
                _ => None,
            };
            let mut routes: Vec<Route> = r
                .routes
                .iter()
                .filter_map(|route| {
                    let m = match (&route.prefix, &route.path) {
                        (Some(p), _) => route_match::PathSpecifier::Prefix(p.clone()),
                        (None, Some(p)) => route_match::PathSpecifier::Path(p.clone()),
                        (None, None) => return None,
                    };
                    Some(route_to(
                        service,
                        m,
                        route.timeout.or(r.timeout),
                        pick_retries(route.retries.as_ref(), r.retries.as_ref(), native.as_ref()),
                    ))
                })
                .flatten()
                .collect();
            routes.extend(route_to(
                service,
                route_match::PathSpecifier::Prefix("/".to_string()),
                r.timeout,
                pick_retries(None, r.retries.as_ref(), native.as_ref()),
            ));
            let typed_per_filter_config: HashMap<String, Any> = r
                .filters(service)
                .into_iter()
                .map(|(filter, _)| {
                    (
                        filter_instance_name(service, filter),
                        // A present but empty `config` enables a filter that the HCM
                        // disables by default (Envoy's route-based filter chain).
                        any(&FilterConfig {
                            config: Some(Any::default()),
                            ..Default::default()
                        }),
                    )
                })
                .collect();
            VirtualHost {
                name: (*service).clone(),
                domains: vec![(*service).clone(), format!("{service}:*")],
                routes,
                typed_per_filter_config,
                ..Default::default()
            }
        })
        .collect();
    RouteConfiguration {
        name: ROUTE_CONFIG_NAME.to_string(),
        virtual_hosts,
        ..Default::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::rules;
    use crate::xds::cache::ResourceType;

    fn registry() -> Registry {
        crate::registry::file::parse(
            "services:\n  orders:\n  - {address: 127.0.0.1, port: 8080}\n  - {address: 127.0.0.2, port: 8080, health: critical}\n  - {address: 127.0.0.3, port: 8080, health: warning, warning_weight: 0, zone: b}\n",
        )
        .unwrap()
    }

    fn options(dir: &Path) -> ConvertOptions {
        ConvertOptions {
            listen: "127.0.0.1:10000".parse().unwrap(),
            wasm_dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn maps_health_and_weights_like_consul() {
        let cla = load_assignment("orders", &registry().services["orders"]);
        let eps: Vec<(i32, u32)> = cla
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| (e.health_status, e.load_balancing_weight.unwrap().value))
            .collect();
        assert_eq!(
            eps,
            vec![
                (HealthStatus::Healthy as i32, 1),
                (HealthStatus::Unhealthy as i32, 1),
                (HealthStatus::Degraded as i32, 1)
            ]
        );
        assert_eq!(cla.endpoints[1].locality.as_ref().unwrap().zone, "b");
    }

    #[test]
    fn a_snapshot_has_a_cluster_per_service_and_one_listener() {
        let rules = rules::parse(
            "r",
            "services:\n  payments:\n    timeout: 2s\n    retries: {attempts: 2}\n",
        )
        .unwrap();
        let snap = snapshot(&registry(), &rules, &options(Path::new("/nonexistent"))).unwrap();
        let clusters: Vec<&str> = snap.set(ResourceType::Cluster).names().collect();
        assert_eq!(clusters, vec!["orders", "payments"]);
        let payments = snap.set(ResourceType::Endpoint).get("payments").unwrap();
        let cla = ClusterLoadAssignment::decode(payments.body.value.as_slice()).unwrap();
        assert!(cla.endpoints.is_empty());
        let rc = snap
            .set(ResourceType::Route)
            .get(ROUTE_CONFIG_NAME)
            .unwrap();
        let rc = RouteConfiguration::decode(rc.body.value.as_slice()).unwrap();
        let vh = rc
            .virtual_hosts
            .iter()
            .find(|v| v.name == "payments")
            .unwrap();
        let Some(route::Action::Route(action)) = &vh.routes[0].action else {
            panic!("not a route action");
        };
        assert_eq!(
            action.timeout,
            Some(Duration {
                seconds: 2,
                nanos: 0
            })
        );
        let retry = action.retry_policy.as_ref().unwrap();
        assert_eq!(retry.retry_on, "5xx,connect-failure,reset");
        assert_eq!(retry.num_retries, Some(UInt32Value { value: 2 }));
    }

    #[test]
    fn filters_need_their_module_and_are_enabled_only_on_their_service() {
        let rules = rules::parse(
            "r",
            "services:\n  orders:\n    ratelimit: {rules: [{name: r, limits: [{algorithm: fixed_window, requests: 1, per: 1m}]}]}\n",
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("meshguard-convert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = snapshot(&registry(), &rules, &options(&dir)).unwrap_err();
        assert!(
            matches!(
                err,
                ConvertError::MissingWasm {
                    filter: "ratelimit",
                    ..
                }
            ),
            "{err}"
        );
        std::fs::write(dir.join("meshguard_ratelimit.wasm"), b"\0asm").unwrap();
        let snap = snapshot(&registry(), &rules, &options(&dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let l = snap.set(ResourceType::Listener).get(LISTENER_NAME).unwrap();
        let l = Listener::decode(l.body.value.as_slice()).unwrap();
        let Some(filter::ConfigType::TypedConfig(hcm)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no hcm");
        };
        let hcm = HttpConnectionManager::decode(hcm.value.as_slice()).unwrap();
        let names: Vec<(&str, bool)> = hcm
            .http_filters
            .iter()
            .map(|f| (f.name.as_str(), f.disabled))
            .collect();
        assert_eq!(
            names,
            vec![
                ("meshguard.ratelimit.orders", true),
                ("envoy.filters.http.router", false)
            ]
        );
        let rc = snap
            .set(ResourceType::Route)
            .get(ROUTE_CONFIG_NAME)
            .unwrap();
        let rc = RouteConfiguration::decode(rc.body.value.as_slice()).unwrap();
        assert!(rc.virtual_hosts[0]
            .typed_per_filter_config
            .contains_key("meshguard.ratelimit.orders"));
    }

    fn decode_routes(snap: &Snapshot) -> RouteConfiguration {
        let rc = snap
            .set(ResourceType::Route)
            .get(ROUTE_CONFIG_NAME)
            .unwrap();
        RouteConfiguration::decode(rc.body.value.as_slice()).unwrap()
    }

    fn decode_cluster(snap: &Snapshot, name: &str) -> Cluster {
        let c = snap.set(ResourceType::Cluster).get(name).unwrap();
        Cluster::decode(c.body.value.as_slice()).unwrap()
    }

    #[test]
    fn native_failover_sets_the_lb_policy_and_retries_on_other_hosts_except_for_posts() {
        let rules = rules::parse(
            "r",
            "services:\n  orders:\n    router: {balancer: least_request, retries: 3, per_try_timeout: 1s}\n",
        )
        .unwrap();
        let snap = snapshot(&registry(), &rules, &options(Path::new("/nonexistent"))).unwrap();
        let cluster = decode_cluster(&snap, "orders");
        assert_eq!(cluster.lb_policy, LbPolicy::LeastRequest as i32);
        assert!(cluster.load_balancing_policy.is_none());
        let rc = decode_routes(&snap);
        let vh = &rc.virtual_hosts[0];
        assert_eq!(vh.routes.len(), 2, "{:#?}", vh.routes);
        let action = |r: &Route| match &r.action {
            Some(route::Action::Route(a)) => a.clone(),
            _ => panic!("not a route action"),
        };
        // POST, PATCH and CONNECT first, without retries (the router filter's rule).
        let methods = &vh.routes[0].r#match.as_ref().unwrap().headers;
        assert_eq!(methods[0].name, ":method");
        assert!(action(&vh.routes[0]).retry_policy.is_none());
        let retry = action(&vh.routes[1]).retry_policy.unwrap();
        assert_eq!(retry.num_retries, Some(UInt32Value { value: 3 }));
        assert_eq!(retry.retry_on, "5xx,reset,connect-failure");
        assert_eq!(
            retry.retry_host_predicate[0].name,
            "envoy.retry_host_predicates.previous_hosts"
        );
        assert_eq!(
            retry.per_try_timeout,
            Some(Duration {
                seconds: 1,
                nanos: 0
            })
        );
        assert!(vh.routes[1].r#match.as_ref().unwrap().headers.is_empty());
    }

    #[test]
    fn native_failfast_has_no_retries() {
        let rules = rules::parse(
            "r",
            "services:\n  orders:\n    router: {mode: failfast, balancer: random}\n",
        )
        .unwrap();
        let snap = snapshot(&registry(), &rules, &options(Path::new("/nonexistent"))).unwrap();
        assert_eq!(
            decode_cluster(&snap, "orders").lb_policy,
            LbPolicy::Random as i32
        );
        let rc = decode_routes(&snap);
        assert_eq!(rc.virtual_hosts[0].routes.len(), 1);
        let Some(route::Action::Route(action)) = &rc.virtual_hosts[0].routes[0].action else {
            panic!("not a route action");
        };
        assert!(action.retry_policy.is_none());
    }

    #[test]
    fn the_router_filter_gets_override_host_and_shares_its_vm_with_the_tenant_filter() {
        let rules = rules::parse(
            "r",
            "services:\n  orders:\n    tenant: {identity: [{trusted_header: {cidrs: [10.0.0.0/8]}}], registry_service_tenants: true}\n    router: {mode: failback, consul: {cluster: consul}, failback: {cluster: orders}}\n  pay:\n    tenant: {identity: [{trusted_header: {cidrs: [10.0.0.0/8]}}]}\n",
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("meshguard-router-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["tenant", "router"] {
            std::fs::write(dir.join(format!("meshguard_{f}.wasm")), b"\0asm").unwrap();
        }
        let snap = snapshot(&registry(), &rules, &options(&dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let cluster = decode_cluster(&snap, "orders");
        let policy = &cluster.load_balancing_policy.unwrap().policies[0];
        let ext = policy.typed_extension_config.as_ref().unwrap();
        assert_eq!(ext.name, "envoy.load_balancing_policies.override_host");
        let oh = OverrideHost::decode(ext.typed_config.as_ref().unwrap().value.as_slice()).unwrap();
        assert_eq!(
            oh.override_host_sources[0].header,
            "x-meshguard-override-host"
        );
        let l = snap.set(ResourceType::Listener).get(LISTENER_NAME).unwrap();
        let l = Listener::decode(l.body.value.as_slice()).unwrap();
        let Some(filter::ConfigType::TypedConfig(hcm)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no hcm");
        };
        let hcm = HttpConnectionManager::decode(hcm.value.as_slice()).unwrap();
        let vm_ids: Vec<(String, String)> = hcm
            .http_filters
            .iter()
            .filter_map(|f| match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(any))
                    if f.name.starts_with("meshguard") =>
                {
                    let wasm = Wasm::decode(any.value.as_slice()).unwrap();
                    match wasm.config.unwrap().vm {
                        Some(plugin_config::Vm::VmConfig(vm)) => Some((f.name.clone(), vm.vm_id)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            vm_ids,
            vec![
                (
                    "meshguard.tenant.orders".to_string(),
                    "meshguard.tenant-router.orders".to_string()
                ),
                (
                    "meshguard.router.orders".to_string(),
                    "meshguard.tenant-router.orders".to_string()
                ),
                (
                    "meshguard.tenant.pay".to_string(),
                    "meshguard.tenant.pay".to_string()
                ),
            ]
        );
    }
}
