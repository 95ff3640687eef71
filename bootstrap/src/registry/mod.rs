//! The registry model (services and their instances) and the sources that fill it.

pub mod consul;
pub mod disk;
pub mod eds;
pub mod file;
pub mod http;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An instance's aggregated health, as Consul reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Every check passes: full traffic at the passing weight.
    #[default]
    Passing,
    /// A check warns: traffic at the warning weight.
    Warning,
    /// A check fails: no traffic.
    Critical,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// IP address Envoy connects to.
    pub address: String,
    /// TCP port.
    pub port: u16,
    /// Aggregated health.
    #[serde(default)]
    pub health: Health,
    /// Weight while passing (Consul `Weights.Passing`), at least 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Weight while warning (Consul `Weights.Warning`); 0 means "no traffic while warning".
    #[serde(default = "one")]
    pub warning_weight: u32,
    /// Zone (Spring Cloud Consul `Meta.zone`, or a `zone=<z>` tag), mapped to the Envoy
    /// locality zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Datacenter (Consul `Node.Datacenter`), mapped to the Envoy locality region when the
    /// service spans several datacenters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// Envoy priority: 0 for the local (first) datacenter, 1, 2, ... for the failover ones in
    /// order. Envoy sends traffic to a lower priority only when the higher ones lack healthy
    /// endpoints.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    /// Spring Cloud Consul's `Meta.secure` (or a `secure=true` tag): the instance serves TLS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub secure: bool,
    /// Spring Cloud Consul's `Meta.group` (or a `group=<g>` tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Endpoint {
    /// A passing endpoint at weight 1 with no zone, datacenter or Spring Cloud metadata.
    pub fn new(address: impl Into<String>, port: u16) -> Self {
        Self {
            address: address.into(),
            port,
            health: Health::Passing,
            weight: 1,
            warning_weight: 1,
            zone: None,
            datacenter: None,
            priority: 0,
            secure: false,
            group: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> u32 {
    1
}

/// Every service and its instances, by service name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Instances by service name.
    #[serde(default)]
    pub services: BTreeMap<String, Vec<Endpoint>>,
}

impl Registry {
    /// Total number of instances.
    pub fn instance_count(&self) -> usize {
        self.services.values().map(Vec::len).sum()
    }
}

/// What a registry source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A complete registry.
    Update {
        /// The registry.
        registry: Registry,
        /// Where it came from: `file`, `consul` or `disk` (the last-known-good file).
        origin: &'static str,
    },
    /// Some services changed, from a source that sent a complete registry before: each named
    /// service's instances now, `None` for a service that left the registry. Lets a change of
    /// one service among thousands cost O(that service), not O(registry).
    Changed {
        /// New instances by service name; `None`: the service is gone.
        services: BTreeMap<String, Option<Vec<Endpoint>>>,
        /// Where it came from (as in `Update`).
        origin: &'static str,
    },
    /// The source answered; nothing changed.
    Alive,
    /// The source failed; the last good registry stays.
    Error(String),
}
