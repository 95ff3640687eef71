//! `meshguard render`: the Envoy bootstrap that points Envoy's ADS at this control plane, from
//! the same template the tests run (`envoy-configs/bootstrap-ads.yaml.tmpl`), or a static
//! bootstrap with the same clusters, endpoints, listener, routes and filters as the xDS
//! snapshot, for people who run no control plane.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::convert::{
    endpoint_health, filter_instance_name, filter_vm_id, pick_retries, ConvertError,
    ConvertOptions, RouteRetries, LISTENER_NAME, ROUTE_CONFIG_NAME,
};
use crate::registry::Registry;
use crate::routing::{Routing, DEFAULT_OVERRIDE_HOST_HEADER, NON_IDEMPOTENT_METHODS};
use crate::rules::{Balancer, Dur, Rules};

/// The template, compiled in so the binary renders it anywhere.
const TEMPLATE: &str = include_str!("../../envoy-configs/bootstrap-ads.yaml.tmpl");

/// Envoy's ADS flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdsApi {
    /// Incremental (`DELTA_GRPC`): only changed resources travel; what this control plane
    /// serves best at scale (one instance change re-sends one ClusterLoadAssignment).
    #[default]
    Delta,
    /// State of the world (`GRPC`): every resource of a type on each change.
    Sotw,
}

/// The bootstrap YAML for node `node_id` talking ADS (`api`) to `xds`, admin on
/// 127.0.0.1:`admin_port`.
pub fn ads_bootstrap(node_id: &str, xds: SocketAddr, admin_port: u16, api: XdsApi) -> String {
    // JSON strings are valid YAML double-quoted scalars: any node id survives.
    let node = serde_json::Value::from(node_id).to_string();
    // The template says `api_type: GRPC` (the demo and tests load it as it is).
    let template = match api {
        XdsApi::Sotw => TEMPLATE.to_string(),
        XdsApi::Delta => TEMPLATE.replace("api_type: GRPC", "api_type: DELTA_GRPC"),
    };
    template
        .replace("{{NODE_ID}}", &node)
        .replace("{{ADMIN_PORT}}", &admin_port.to_string())
        .replace("{{XDS_ADDRESS}}", &xds.ip().to_string())
        .replace("{{XDS_PORT}}", &xds.port().to_string())
}

/// A static Envoy bootstrap (YAML) for `registry` and `rules`: what `run` would serve, inline.
pub fn static_bootstrap(
    registry: &Registry,
    rules: &Rules,
    options: &ConvertOptions,
    admin_port: u16,
) -> Result<String, ConvertError> {
    let services: BTreeSet<&String> = registry
        .services
        .keys()
        .chain(rules.services.keys())
        .collect();
    let mut clusters = Vec::new();
    let mut filters = Vec::new();
    let mut virtual_hosts = Vec::new();
    for service in &services {
        let r = rules.service(service);
        let endpoints: Vec<Value> = registry
            .services
            .get(*service)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let (health, weight) = endpoint_health(e);
                let mut locality = json!({});
                if let Some(zone) = &e.zone {
                    locality = json!({"zone": zone});
                }
                json!({
                    "locality": locality,
                    "lb_endpoints": [{
                        "endpoint": {"address": {"socket_address": {"address": e.address, "port_value": e.port}}},
                        "health_status": health.as_str_name(),
                        "load_balancing_weight": weight,
                    }],
                })
            })
            .collect();
        let mut cluster = json!({
            "name": service,
            "type": "STATIC",
            "connect_timeout": duration(r.connect_timeout.unwrap_or(Dur(1_000_000_000))),
            "lb_policy": match r.balancer.unwrap_or(Balancer::RoundRobin) {
                Balancer::RoundRobin => "ROUND_ROBIN",
                Balancer::LeastRequest => "LEAST_REQUEST",
                Balancer::Random => "RANDOM",
                Balancer::RingHash => "RING_HASH",
                Balancer::Maglev => "MAGLEV",
            },
            "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
            "load_assignment": {"cluster_name": service, "endpoints": endpoints},
        });
        let routing = r.routing(service);
        match &routing {
            Some(Routing::Native(native)) => cluster["lb_policy"] = json!(native.lb_policy),
            Some(Routing::Filter {
                override_host_header,
                ..
            }) => {
                cluster["load_balancing_policy"] = override_host_policy(override_host_header);
            }
            None => {}
        }
        if let Some(o) = &r.outlier_detection {
            let mut od = json!({"consecutive_5xx": o.consecutive_5xx.unwrap_or(5)});
            if let Some(d) = o.interval {
                od["interval"] = duration(d);
            }
            if let Some(d) = o.base_ejection_time {
                od["base_ejection_time"] = duration(d);
            }
            if let Some(p) = o.max_ejection_percent {
                od["max_ejection_percent"] = json!(p);
            }
            cluster["outlier_detection"] = od;
        }
        clusters.push(cluster);

        let mut per_filter = serde_json::Map::new();
        for (filter, config) in r.filters(service) {
            let path = options.wasm_path(filter);
            if !path.is_file() {
                return Err(ConvertError::MissingWasm {
                    service: (*service).clone(),
                    filter,
                    path,
                });
            }
            let filename = path
                .to_str()
                .ok_or_else(|| ConvertError::NonUtf8Path(path.clone()))?;
            let name = filter_instance_name(service, filter);
            filters.push(json!({
                "name": name,
                "disabled": true,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": name,
                        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
                        "failure_policy": "FAIL_CLOSED",
                        "vm_config": {
                            "vm_id": filter_vm_id(service, filter, &r),
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": filename}},
                        },
                    },
                },
            }));
            per_filter.insert(
                name,
                json!({"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}),
            );
        }
        let native = match &routing {
            Some(Routing::Native(native)) => native.retries.clone(),
            _ => None,
        };
        let mut routes: Vec<Value> = r
            .routes
            .iter()
            .filter_map(|route| {
                let m = match (&route.prefix, &route.path) {
                    (Some(p), _) => json!({"prefix": p}),
                    (None, Some(p)) => json!({"path": p}),
                    (None, None) => return None,
                };
                Some(route_json(
                    service,
                    m,
                    route.timeout.or(r.timeout),
                    pick_retries(route.retries.as_ref(), r.retries.as_ref(), native.as_ref()),
                ))
            })
            .flatten()
            .collect();
        routes.extend(route_json(
            service,
            json!({"prefix": "/"}),
            r.timeout,
            pick_retries(None, r.retries.as_ref(), native.as_ref()),
        ));
        virtual_hosts.push(json!({
            "name": service,
            "domains": [service, format!("{service}:*")],
            "routes": routes,
            "typed_per_filter_config": per_filter,
        }));
    }
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": LISTENER_NAME,
                "address": {"socket_address": {
                    "address": options.listen.ip().to_string(),
                    "port_value": options.listen.port(),
                }},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": LISTENER_NAME,
                        "route_config": {"name": ROUTE_CONFIG_NAME, "virtual_hosts": virtual_hosts},
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    });
    Ok(format!(
        "# Static Envoy bootstrap rendered by `meshguard render --static`.\n{}",
        serde_yaml::to_string(&bootstrap).unwrap_or_default()
    ))
}

fn duration(d: Dur) -> Value {
    let (secs, nanos) = d.seconds_nanos();
    json!(format!("{secs}.{nanos:09}s"))
}

fn route_json(
    service: &str,
    m: Value,
    timeout: Option<Dur>,
    retries: RouteRetries<'_>,
) -> Vec<Value> {
    let route = |policy: Option<Value>, headers: Option<Value>| {
        let mut action = json!({"cluster": service});
        if let Some(t) = timeout {
            action["timeout"] = duration(t);
        }
        if let Some(p) = policy {
            action["retry_policy"] = p;
        }
        let mut m = m.clone();
        if let Some(h) = headers {
            m["headers"] = h;
        }
        json!({"match": m, "route": action})
    };
    match retries {
        RouteRetries::None => vec![route(None, None)],
        RouteRetries::Rules(r) => {
            let mut policy = json!({"retry_on": r.on.join(","), "num_retries": r.attempts});
            if let Some(t) = r.per_try_timeout {
                policy["per_try_timeout"] = duration(t);
            }
            vec![route(Some(policy), None)]
        }
        RouteRetries::Native(r) => {
            let mut policy = json!({
                "retry_on": r.on,
                "num_retries": r.attempts,
                "retry_host_predicate": [{
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
                }],
                "host_selection_retry_max_attempts": 3,
            });
            if let Some(ns) = r.per_try_timeout_ns {
                policy["per_try_timeout"] = duration(Dur(ns));
            }
            let retried = route(Some(policy), None);
            if r.non_idempotent {
                vec![retried]
            } else {
                let methods = json!([{
                    "name": ":method",
                    "string_match": {"safe_regex": {"regex": NON_IDEMPOTENT_METHODS}},
                }]);
                vec![route(None, Some(methods)), retried]
            }
        }
    }
}

/// Envoy's `override_host` policy on the router filter's header, round robin without it.
fn override_host_policy(header: &str) -> Value {
    let header = if header.is_empty() {
        DEFAULT_OVERRIDE_HOST_HEADER
    } else {
        header
    };
    json!({"policies": [{"typed_extension_config": {
        "name": "envoy.load_balancing_policies.override_host",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
            "override_host_sources": [{"header": header}],
            "fallback_policy": {"policies": [{"typed_extension_config": {
                "name": "envoy.load_balancing_policies.round_robin",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"},
            }}]},
        },
    }}]})
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder() {
        let yaml = ads_bootstrap(
            "edge \"1\"",
            "127.0.0.1:18000".parse().unwrap(),
            9901,
            XdsApi::Sotw,
        );
        assert!(yaml.contains("api_type: GRPC"), "{yaml}");
        assert!(!yaml.contains("{{"), "{yaml}");
        assert!(yaml.contains("id: \"edge \\\"1\\\"\""), "{yaml}");
        assert!(yaml.contains("port_value: 18000"), "{yaml}");
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(
            doc["admin"]["address"]["socket_address"]["port_value"],
            9901
        );
    }

    #[test]
    fn delta_is_the_default_and_switches_the_api_type() {
        let yaml = ads_bootstrap(
            "n",
            "127.0.0.1:18000".parse().unwrap(),
            9901,
            XdsApi::default(),
        );
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(
            doc["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
    }
}
