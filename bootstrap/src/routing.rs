//! A service's `router` section: its fault-tolerance mode and balancer, turned into native
//! Envoy settings where Envoy does the job with EDS, and into the router filter's JSON for what
//! Envoy lacks.
//!
//! The rule: `failover` and `failfast` with an Envoy balancer (`round_robin`,
//! `weighted_round_robin`, `random`, `least_request`) and no other router field are native
//! (the cluster's `lb_policy`; for `failover` a route retry policy with the `previous_hosts`
//! predicate, and no retries for POST/PATCH/CONNECT unless `retry_non_idempotent`). Anything
//! else (`failsafe`, `failback`, a balancer only the filter has, `hash_on`, `locality`,
//! `outlier`, `tag`, `tenant`, `match`, …) runs the router filter, which needs `consul` and
//! hands its pick to the cluster's `override_host` policy.

use serde_json::{Map, Value};

/// Fields of the router section that are not the filter's per-service entry.
const TOP_LEVEL: [&str; 2] = ["consul", "override_host_header"];
/// Per-service fields Envoy expresses natively (with a native mode and balancer).
const NATIVE_FIELDS: [&str; 6] = [
    "mode",
    "balancer",
    "retries",
    "retry_on",
    "per_try_timeout",
    "retry_non_idempotent",
];
/// The router filter's default request header for override_host.
pub const DEFAULT_OVERRIDE_HOST_HEADER: &str = "x-meshguard-override-host";
/// The router filter's default retries and conditions in `failover`.
const DEFAULT_RETRIES: u32 = 2;
const DEFAULT_RETRY_ON: &str = "5xx,reset,connect-failure";
/// Methods the router does not retry unless `retry_non_idempotent` (its README).
pub const NON_IDEMPOTENT_METHODS: &str = "POST|PATCH|CONNECT";

/// How a service's requests are routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Envoy does it: the cluster's policy and the routes' retries.
    Native(NativeRouting),
    /// The router filter does it.
    Filter {
        /// The router filter's JSON configuration.
        json: String,
        /// The header its pick travels in (the cluster's `override_host` source).
        override_host_header: String,
    },
}

/// Native settings from a `router` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeRouting {
    /// Envoy `lb_policy`: `ROUND_ROBIN`, `RANDOM` or `LEAST_REQUEST`.
    pub lb_policy: &'static str,
    /// `failover`'s retries on other hosts; `None` for `failfast` (or 0 retries).
    pub retries: Option<NativeRetries>,
}

/// A `failover` retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeRetries {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Envoy `retry_on`, comma-separated.
    pub on: String,
    /// Per-try timeout, nanoseconds.
    pub per_try_timeout_ns: Option<u64>,
    /// Also retry POST, PATCH and CONNECT.
    pub non_idempotent: bool,
}

/// The router filter's JSON for `service` from its `router` section: `consul` and
/// `override_host_header` stay at the top, the rest is the service's entry.
pub fn filter_json(service: &str, section: &Map<String, Value>) -> Value {
    let mut top = Map::new();
    let mut entry = Map::new();
    entry.insert("name".into(), Value::from(service));
    for (k, v) in section {
        if TOP_LEVEL.contains(&k.as_str()) {
            top.insert(k.clone(), v.clone());
        } else {
            entry.insert(k.clone(), v.clone());
        }
    }
    top.insert("services".into(), Value::Array(vec![Value::Object(entry)]));
    Value::Object(top)
}

/// Maps an error path of the filter JSON built by [`filter_json`] back into the section:
/// `services[0].retries` → `retries`, `consul.wait` → `consul.wait`.
pub fn section_path(filter_path: &str) -> &str {
    match filter_path.strip_prefix("services[0]") {
        Some(rest) => rest.strip_prefix('.').unwrap_or(rest),
        None => filter_path.strip_prefix("services").unwrap_or(filter_path),
    }
}

fn lb_policy(balancer: &str) -> Option<&'static str> {
    match balancer {
        "round_robin" | "weighted_round_robin" => Some("ROUND_ROBIN"),
        "random" => Some("RANDOM"),
        "least_request" => Some("LEAST_REQUEST"),
        _ => None,
    }
}

/// Why a section needs the router filter (`None`: Envoy does it natively).
pub fn needs_filter(section: &Map<String, Value>) -> Option<String> {
    let mode = section
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("failover");
    if !matches!(mode, "failover" | "failfast") {
        return Some(format!("mode `{mode}`"));
    }
    let balancer = section
        .get("balancer")
        .and_then(Value::as_str)
        .unwrap_or("round_robin");
    if lb_policy(balancer).is_none() {
        return Some(format!("balancer `{balancer}`"));
    }
    section
        .keys()
        .find(|k| !NATIVE_FIELDS.contains(&k.as_str()) && !TOP_LEVEL.contains(&k.as_str()))
        .map(|k| format!("`{k}`"))
}

/// The routing of `service` from a section the router filter's parser accepted.
pub fn plan(service: &str, section: &Map<String, Value>) -> Routing {
    if needs_filter(section).is_some() {
        return Routing::Filter {
            json: filter_json(service, section).to_string(),
            override_host_header: section
                .get("override_host_header")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_OVERRIDE_HOST_HEADER)
                .to_string(),
        };
    }
    let balancer = section
        .get("balancer")
        .and_then(Value::as_str)
        .unwrap_or("round_robin");
    let failover = section.get("mode").and_then(Value::as_str) != Some("failfast");
    let attempts = section
        .get("retries")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_RETRIES, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let on = section.get("retry_on").and_then(Value::as_array).map_or(
        DEFAULT_RETRY_ON.to_string(),
        |conditions| {
            conditions
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        },
    );
    let per_try_timeout_ns = section
        .get("per_try_timeout")
        .and_then(Value::as_str)
        .and_then(|d| meshguard_filter_common::parse_duration(d).ok());
    Routing::Native(NativeRouting {
        lb_policy: lb_policy(balancer).unwrap_or("ROUND_ROBIN"),
        retries: (failover && attempts > 0).then(|| NativeRetries {
            attempts,
            on,
            per_try_timeout_ns,
            non_idempotent: section.get("retry_non_idempotent").and_then(Value::as_bool)
                == Some(true),
        }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn section(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn failover_with_an_envoy_balancer_is_native() {
        let r = plan(
            "orders",
            &section(json!({"balancer": "least_request", "retries": 3, "per_try_timeout": "1s"})),
        );
        assert_eq!(
            r,
            Routing::Native(NativeRouting {
                lb_policy: "LEAST_REQUEST",
                retries: Some(NativeRetries {
                    attempts: 3,
                    on: DEFAULT_RETRY_ON.into(),
                    per_try_timeout_ns: Some(1_000_000_000),
                    non_idempotent: false,
                }),
            })
        );
    }

    #[test]
    fn failfast_is_native_without_retries() {
        let r = plan("orders", &section(json!({"mode": "failfast"})));
        assert_eq!(
            r,
            Routing::Native(NativeRouting {
                lb_policy: "ROUND_ROBIN",
                retries: None
            })
        );
    }

    #[test]
    fn failsafe_and_filter_only_balancers_need_the_filter() {
        for s in [
            json!({"mode": "failsafe"}),
            json!({"mode": "failback"}),
            json!({"balancer": "response_time_weighted"}),
            json!({"tag": "v2"}),
        ] {
            assert!(needs_filter(&section(s.clone())).is_some(), "{s}");
            assert!(matches!(
                plan("orders", &section(s)),
                Routing::Filter { .. }
            ));
        }
    }

    #[test]
    fn filter_json_puts_consul_on_top_and_names_the_service() {
        let j = filter_json(
            "orders",
            &section(json!({"consul": {"cluster": "consul"}, "mode": "failsafe"})),
        );
        assert_eq!(
            j,
            json!({"consul": {"cluster": "consul"}, "services": [{"name": "orders", "mode": "failsafe"}]})
        );
        assert_eq!(section_path("services[0].retries"), "retries");
        assert_eq!(section_path("services[0]"), "");
        assert_eq!(section_path("consul.wait"), "consul.wait");
    }
}
