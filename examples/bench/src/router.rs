//! The router filter's benchmark variants: Envoy's native ROUND_ROBIN cluster over three
//! instances, against the meshguard router picking round robin over the same three instances
//! from its Consul-synced list and handing the pick to the `override_host` policy. Both use the
//! same listener, route and `backend` cluster (`envoy-configs/router*.yaml.tmpl`); they differ
//! only in the cluster's load-balancing policy and the filter.
//!
//! The instances are one extra Envoy answering by itself on three listeners; the same process
//! plays Consul on a fourth listener (every health query answers at once with the three
//! instances, so the filter's watch costs one query per `min_interval`).

use anyhow::{Context, Result};
use meshguard_tests::{wasm_artifact, Envoy, EnvoyConfig, WasmFilter};

/// Name of the native baseline variant.
pub const NATIVE: &str = "native ROUND_ROBIN over 3 instances";
/// Name of the meshguard variant without retries (what the native cluster does).
pub const ROUTER: &str = "meshguard router, round_robin, failfast";
/// Name of the meshguard variant with the default failover (2 retries through Envoy).
pub const ROUTER_FAILOVER: &str = "meshguard router, round_robin, failover (2 retries)";
/// Name of the native equivalent of failover: ROUND_ROBIN and a route retry policy that
/// retries twice on other hosts on the router's default conditions.
pub const NATIVE_RETRY: &str = "native ROUND_ROBIN + retry_policy (2 retries)";

/// The route retry policy of [`NATIVE_RETRY`] (the router's failover defaults).
const NATIVE_RETRY_POLICY: &str = r#"retry_policy:
  retry_on: 5xx,reset,connect-failure
  num_retries: 2
  retry_host_predicate:
  - name: envoy.retry_host_predicates.previous_hosts
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
  host_selection_retry_max_attempts: 3"#;

/// The filter: service `orders` on every request, round robin, in `mode`, watching the
/// stand-in Consul.
fn router_config(mode: &str) -> String {
    format!(
        r#"{{"consul":{{"cluster":"consul","tick":"100ms"}},"services":[{{"name":"orders","mode":"{mode}"}}]}}"#
    )
}

/// The three instances and the stand-in Consul; keep it alive while the variants run.
pub struct Backends {
    /// Serves the instances and the Consul stand-in until dropped.
    _envoy: Envoy,
    ports: Vec<u16>,
    consul_port: u16,
}

impl Backends {
    /// Starts the instances and Consul stand-in with `concurrency` worker threads.
    pub fn start(concurrency: u32) -> Result<Self> {
        // The Consul stand-in's answer lists the instances' ports, so they are chosen here.
        let ports = free_ports(4)?;
        let (instances, consul_port) = (&ports[..3], ports[3]);
        let mut config = EnvoyConfig::new("router-bench-backends")
            .var(
                "HEALTH_BODY",
                serde_json::Value::from(health_body(instances)).to_string(),
            )
            .var("CONSUL_PORT", consul_port.to_string())
            .concurrency(concurrency);
        for (name, port) in ["B1_PORT", "B2_PORT", "B3_PORT"].iter().zip(instances) {
            config = config.var(*name, port.to_string());
        }
        let envoy = Envoy::start(config)?;
        Ok(Self {
            _envoy: envoy,
            ports: instances.to_vec(),
            consul_port,
        })
    }

    /// The variants as `(name, compare_with, config)`; fails if the router module is not built.
    pub fn variants(
        &self,
        concurrency: u32,
    ) -> Result<Vec<(&'static str, Option<&'static str>, EnvoyConfig)>> {
        let endpoints = endpoints(&self.ports);
        let native = |retry: &str| {
            EnvoyConfig::new("router-native")
                .var("BACKEND_ENDPOINTS", endpoints.clone())
                .var("ROUTE_RETRY", retry.to_string())
                .concurrency(concurrency)
        };
        let mut out = vec![
            (NATIVE, None, native("")),
            (NATIVE_RETRY, None, native(NATIVE_RETRY_POLICY)),
        ];
        let wasm = wasm_artifact("meshguard_router")?;
        for (name, mode, baseline) in [
            (ROUTER, "failfast", NATIVE),
            (ROUTER_FAILOVER, "failover", NATIVE_RETRY),
        ] {
            out.push((
                name,
                Some(baseline),
                EnvoyConfig::new("router")
                    .var("BACKEND_ENDPOINTS", endpoints.clone())
                    .cluster("consul", self.consul_port)
                    .concurrency(concurrency)
                    .wasm_filter(
                        WasmFilter::new("router", &wasm).configuration(router_config(mode)),
                    ),
            ));
        }
        Ok(out)
    }
}

/// `n` distinct free loopback ports (bound and released; another process could take one in
/// between, in which case Envoy fails to start and says so).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("find free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Consul's `/v1/health/service/orders` body for instances on 127.0.0.1 at `ports`.
fn health_body(ports: &[u16]) -> String {
    let entries: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                r#"{{"Node":{{"Node":"node-1","Address":"127.0.0.1","Datacenter":"dc1"}},"Service":{{"ID":"orders-{i}","Service":"orders","Port":{p}}},"Checks":[]}}"#
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// `lb_endpoints` items for 127.0.0.1 at `ports` (the `BACKEND_ENDPOINTS` fragment).
fn endpoints(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "- endpoint:\n    address:\n      socket_address: {{ address: 127.0.0.1, port_value: {p} }}"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
