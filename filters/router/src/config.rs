//! The filter's JSON configuration (`PluginConfig.configuration`): serde types that reject
//! unknown fields, and their validation. `config.schema.json` is generated from these types
//! (doc comments become descriptions); README.md documents every field with examples.

use std::collections::BTreeMap;

pub use meshguard_filter_common::Duration;
use meshguard_filter_common::{validate_each, ConfigError, Validate};
pub use meshguard_filter_common::{HeaderMatch, StringMatch};
use serde::{Deserialize, Serialize};

/// Default request header that carries the chosen hosts to Envoy's override_host policy.
pub const DEFAULT_OVERRIDE_HOST_HEADER: &str = "x-meshguard-override-host";
/// Most services one filter syncs.
pub const MAX_SERVICES: usize = 64;
/// Most retries of `failover`.
pub const MAX_RETRIES: u32 = 10;
/// Largest failback queue.
pub const MAX_QUEUE_SIZE: u32 = 10_000;

/// The router filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how to watch Consul.
    pub consul: Consul,
    /// The services to route, tried in order: the first whose `match` holds routes the request.
    pub services: Vec<Service>,
    /// The request header that hands the chosen hosts (`IP:port,IP:port`) to Envoy's
    /// `envoy.load_balancing_policies.override_host` (its `override_host_sources`). Any
    /// client-sent value is removed.
    #[serde(default = "default_override_header")]
    pub override_host_header: String,
}

fn default_override_header() -> String {
    DEFAULT_OVERRIDE_HOST_HEADER.to_string()
}

/// The Consul agent or server the root context queries with `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Consul {
    /// The Envoy cluster name of Consul's HTTP API (e.g. `"consul"`).
    pub cluster: String,
    /// Whether this plugin's VMs poll Consul (default `true`). Set `false` on the HTTP filters
    /// when an `envoy.bootstrap.wasm` singleton of this module with the same `vm_id` does the
    /// polling: the filters then only read the lists it publishes.
    #[serde(default = "yes")]
    pub sync: bool,
    /// The `:authority` of the calls (default: the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// An ACL token sent as `X-Consul-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Datacenters to watch, in order of preference (`?dc=` per query; default: only the
    /// agent's own). Every service is watched in each; the local (first) datacenter's
    /// instances are preferred while one is eligible, then the next datacenter's, and so on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    /// Only instances whose checks all pass (`?passing`, default `true`); `false` keeps
    /// `warning` instances with their `Weights.Warning`.
    #[serde(default = "yes")]
    pub passing_only: bool,
    /// The blocking query's `wait` (default `"30s"`, 1s to 10m).
    #[serde(default = "default_wait")]
    pub wait: Duration,
    /// Least time between the starts of two queries of one service (default `"1s"`): a
    /// watch whose index changes on every write cannot spin.
    #[serde(default = "default_min_interval")]
    pub min_interval: Duration,
    /// Added to `wait` (plus Consul's `wait/16` jitter) for the HTTP timeout (default `"5s"`).
    #[serde(default = "default_margin")]
    pub timeout_margin: Duration,
    /// First delay after a failed query (default `"1s"`); it doubles per failure, with
    /// jitter, up to `retry_max`.
    #[serde(default = "default_retry_base")]
    pub retry_base: Duration,
    /// Longest delay after failed queries (default `"30s"`).
    #[serde(default = "default_retry_max")]
    pub retry_max: Duration,
    /// How often every VM checks the sync lease and the schedule (default `"1s"`).
    #[serde(default = "default_tick")]
    pub tick: Duration,
    /// How long the polling VM's lease lasts without renewal (default `"10s"`, at least
    /// 2 × `tick`): then another VM takes over.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Duration,
}

fn yes() -> bool {
    true
}
fn default_wait() -> Duration {
    Duration::from_nanos(30 * SEC)
}
fn default_min_interval() -> Duration {
    Duration::from_nanos(SEC)
}
fn default_margin() -> Duration {
    Duration::from_nanos(5 * SEC)
}
fn default_retry_base() -> Duration {
    Duration::from_nanos(SEC)
}
fn default_retry_max() -> Duration {
    Duration::from_nanos(30 * SEC)
}
fn default_tick() -> Duration {
    Duration::from_nanos(SEC)
}
fn default_lease_ttl() -> Duration {
    Duration::from_nanos(10 * SEC)
}

const SEC: u64 = 1_000_000_000;

/// One Consul service and how requests to it are routed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The Consul service name (letters, digits, `-`, `_`, `.`; at most 128). Also names
    /// the stats: `meshguard_router.<name>.<counter>`.
    pub name: String,
    /// Which requests go to this service; absent: every request.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// Only instances with this tag (`?tag=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Only instances with `Service.Meta.tenant` equal to this (`?filter=`); also the
    /// service's owner in the tenant map. A tenant name: 1 to 63 lowercase ASCII letters,
    /// digits, `-` and `_`, starting and ending with a letter or digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How an instance is picked (default `round_robin`).
    #[serde(default)]
    pub balancer: Balancer,
    /// What `consistent_hash` hashes; required with it, not allowed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// EWMA settings of `response_time_weighted`.
    #[serde(default)]
    pub response_time: ResponseTime,
    /// Prefer instances near this proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityConfig>,
    /// Passive outlier ejection from response statuses; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
    /// The fault-tolerance mode (default `failover`).
    #[serde(default)]
    pub mode: Mode,
    /// `failover`: retries on other instances (default 2, at most 10).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `failover`: Envoy's `x-envoy-retry-on` conditions (default
    /// `["5xx", "reset", "connect-failure"]`).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// `failover`: timeout of each try (`x-envoy-upstream-rq-per-try-timeout-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// `failover`: also retry non-idempotent methods (POST, PATCH, CONNECT); default `false`.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// `failsafe` and `failback`: the answer the client gets instead of an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_response: Option<FallbackResponse>,
    /// `failback`: the queue of requests to resend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<Failback>,
}

fn default_retries() -> u32 {
    2
}
fn default_retry_on() -> Vec<String> {
    ["5xx", "reset", "connect-failure"]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
}

/// Conditions on a request; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The `:authority` (Host) header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// The path without the query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// Every one of these header conditions holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A load balancer (core's pickers; see the README for each one's behaviour).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Each instance in turn, ignoring weights.
    #[default]
    RoundRobin,
    /// nginx's smooth weighted round robin over Consul's `Weights`.
    WeightedRoundRobin,
    /// Uniformly at random.
    Random,
    /// At random with probability ∝ weight.
    WeightedRandom,
    /// Power of two choices over this worker's requests in flight.
    LeastRequest,
    /// Probability ∝ weight / EWMA of latency (Ribbon's WeightedResponseTime).
    ResponseTimeWeighted,
    /// Maglev consistent hashing on `hash_on`.
    ConsistentHash,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// A request header's value (`{"header": "x-user-id"}`).
    Header(String),
    /// A cookie's value (`{"cookie": "session"}`).
    Cookie(String),
    /// The client's IP address, `source.address` without the port (`"source_ip"`).
    SourceIp,
}

/// EWMA settings of `response_time_weighted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResponseTime {
    /// After this long a latency sample counts half (default `"10s"`).
    #[serde(default = "default_half_life")]
    pub half_life: Duration,
    /// The latency assumed before any instance has a sample (default `"100ms"`).
    #[serde(default = "default_initial")]
    pub initial: Duration,
}

impl Default for ResponseTime {
    fn default() -> Self {
        Self {
            half_life: default_half_life(),
            initial: default_initial(),
        }
    }
}

fn default_half_life() -> Duration {
    Duration::from_nanos(10 * SEC)
}
fn default_initial() -> Duration {
    Duration::from_nanos(100_000_000)
}

/// Where this proxy runs: instances in the same zone, then the same datacenter, then the
/// `failover` datacenters in order are preferred while they have an eligible instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LocalityConfig {
    /// This proxy's datacenter (Consul's `Node.Datacenter`).
    #[serde(default)]
    pub datacenter: String,
    /// This proxy's zone (the instances' `Service.Meta.zone`).
    #[serde(default)]
    pub zone: String,
    /// Datacenters to prefer next, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
}

/// Passive outlier ejection (after Envoy's `consecutive_5xx`), per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    /// Failures (5xx, reset, connect failure) in a row that eject an instance (default 5).
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// Ejection time, multiplied by the times ejected in a row (default `"30s"`).
    #[serde(default = "default_base_ejection")]
    pub base_ejection: Duration,
    /// Longest ejection (default `"300s"`).
    #[serde(default = "default_max_ejection")]
    pub max_ejection: Duration,
    /// Most instances ejected at once, in percent (default 50).
    #[serde(default = "default_max_percent")]
    pub max_ejection_percent: u8,
}

fn default_consecutive() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_nanos(30 * SEC)
}
fn default_max_ejection() -> Duration {
    Duration::from_nanos(300 * SEC)
}
fn default_max_percent() -> u8 {
    50
}

/// A service's fault-tolerance mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Retry on other instances (`retries`, `retry_on`, `per_try_timeout`).
    #[default]
    Failover,
    /// No retries: the first error goes to the client.
    Failfast,
    /// Errors become `fallback_response` (an empty answer by default).
    Failsafe,
    /// Errors become `fallback_response` at once; idempotent requests are queued and resent
    /// in the background (`failback`).
    Failback,
}

/// A configured answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FallbackResponse {
    /// The status (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// The body (default empty).
    #[serde(default)]
    pub body: String,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Default for FallbackResponse {
    fn default() -> Self {
        Self {
            status: default_status(),
            body: String::new(),
            headers: BTreeMap::new(),
        }
    }
}

fn default_status() -> u16 {
    200
}

/// The failback queue: failed idempotent requests resent from the root context.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Failback {
    /// The Envoy cluster to resend through (the override_host cluster of this service's route).
    pub cluster: String,
    /// Requests queued per worker at most (default 100, at most 10000); more are dropped and
    /// counted.
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Sends per request at most, the first resend included (default 5).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Delay before the first resend, doubling with jitter (default `"1s"`).
    #[serde(default = "default_retry_base")]
    pub retry_base: Duration,
    /// Longest delay between resends (default `"30s"`).
    #[serde(default = "default_retry_max")]
    pub retry_max: Duration,
    /// Timeout of one resend (default `"5s"`).
    #[serde(default = "default_margin")]
    pub timeout: Duration,
    /// Largest request body kept for a resend (default 65536 bytes); larger requests are not
    /// queued.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u32,
}

fn default_queue_size() -> u32 {
    100
}
fn default_attempts() -> u32 {
    5
}
fn default_max_body() -> u32 {
    65_536
}

fn check_name(field: &str, value: &str, max: usize) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::at(
            field,
            format!("`{value}` must be 1 to {max} letters, digits, `-`, `_` or `.`"),
        ))
    }
}

fn positive(field: &str, d: Duration) -> Result<(), ConfigError> {
    if d.as_nanos() == 0 {
        return Err(ConfigError::at(field, "must be greater than zero"));
    }
    Ok(())
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.consul.validate().map_err(|e| e.in_field("consul"))?;
        if self.services.is_empty() {
            return Err(ConfigError::at(
                "services",
                "must list at least one service",
            ));
        }
        if self.services.len() > MAX_SERVICES {
            return Err(ConfigError::at(
                "services",
                format!("at most {MAX_SERVICES} services"),
            ));
        }
        validate_each("services", &self.services)?;
        for (i, s) in self.services.iter().enumerate() {
            if self.services[..i].iter().any(|o| o.name == s.name) {
                return Err(
                    ConfigError::at("name", format!("duplicate service `{}`", s.name))
                        .in_index(i)
                        .in_field("services"),
                );
            }
        }
        let header = &self.override_host_header;
        let ok = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !header.starts_with("x-envoy-");
        if !ok {
            return Err(ConfigError::at(
                "override_host_header",
                format!("`{header}` must be a lower-case header name (letters, digits, `-`) outside x-envoy-"),
            ));
        }
        Ok(())
    }
}

impl Validate for Consul {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(ConfigError::at("cluster", "must not be empty"));
        }
        let wait = self.wait.as_nanos();
        if !(SEC..=600 * SEC).contains(&wait) {
            return Err(ConfigError::at("wait", "must be between 1s and 10m"));
        }
        positive("min_interval", self.min_interval)?;
        positive("retry_base", self.retry_base)?;
        if self.retry_max.as_nanos() < self.retry_base.as_nanos() {
            return Err(ConfigError::at("retry_max", "must be at least retry_base"));
        }
        if self.tick.as_nanos() < 1_000_000 {
            return Err(ConfigError::at("tick", "must be at least 1ms"));
        }
        if self.lease_ttl.as_nanos() < self.tick.as_nanos().saturating_mul(2) {
            return Err(ConfigError::at("lease_ttl", "must be at least 2 × tick"));
        }
        for (i, dc) in self.datacenters.iter().enumerate() {
            check_name("datacenters", dc, 64).map_err(|e| {
                ConfigError::new(e.message().to_string())
                    .in_index(i)
                    .in_field("datacenters")
            })?;
            if self.datacenters[..i].contains(dc) {
                return Err(ConfigError::new(format!("duplicate datacenter `{dc}`"))
                    .in_index(i)
                    .in_field("datacenters"));
            }
        }
        Ok(())
    }
}

impl Validate for Service {
    fn validate(&self) -> Result<(), ConfigError> {
        check_name("name", &self.name, 128)?;
        self.matches.validate().map_err(|e| e.in_field("match"))?;
        if let Some(tag) = &self.tag {
            if tag.is_empty() {
                return Err(ConfigError::at("tag", "must not be empty"));
            }
        }
        if let Some(tenant) = &self.tenant {
            // Only names the tenant filter can produce (its `TenantName`): a service scoped
            // to any other name would match no request's tenant.
            meshguard_core::TenantName::try_new(tenant)
                .map_err(|e| ConfigError::at("tenant", format!("`{tenant}`: {e}")))?;
        }
        match (self.balancer, &self.hash_on) {
            (Balancer::ConsistentHash, None) => {
                return Err(ConfigError::at(
                    "hash_on",
                    "is required with balancer consistent_hash",
                ))
            }
            (Balancer::ConsistentHash, Some(HashOn::Header(n) | HashOn::Cookie(n)))
                if n.is_empty() =>
            {
                return Err(ConfigError::at("hash_on", "the name must not be empty"))
            }
            (Balancer::ConsistentHash, _) | (_, None) => {}
            (_, Some(_)) => {
                return Err(ConfigError::at(
                    "hash_on",
                    "is only allowed with balancer consistent_hash",
                ))
            }
        }
        positive("half_life", self.response_time.half_life)
            .and_then(|()| positive("initial", self.response_time.initial))
            .map_err(|e| e.in_field("response_time"))?;
        if let Some(o) = &self.outlier {
            meshguard_core::OutlierDetection::try_new(
                o.consecutive_failures,
                o.base_ejection.as_nanos(),
                o.max_ejection.as_nanos(),
                o.max_ejection_percent,
            )
            .map_err(|e| outlier_error(&e.to_string()).in_field("outlier"))?;
        }
        if self.retries > MAX_RETRIES {
            return Err(ConfigError::at(
                "retries",
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        if self.retry_on.is_empty() {
            return Err(ConfigError::at(
                "retry_on",
                "must list at least one condition",
            ));
        }
        for (i, c) in self.retry_on.iter().enumerate() {
            let ok = !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(ConfigError::new(format!(
                    "`{c}` is not an Envoy retry condition (e.g. 5xx, reset, connect-failure)"
                ))
                .in_index(i)
                .in_field("retry_on"));
            }
        }
        if let Some(t) = self.per_try_timeout {
            positive("per_try_timeout", t)?;
        }
        if let Some(r) = &self.fallback_response {
            if !(200..=599).contains(&r.status) {
                return Err(ConfigError::at("status", "must be between 200 and 599")
                    .in_field("fallback_response"));
            }
        }
        match (self.mode, &self.failback) {
            (Mode::Failback, None) => {
                return Err(ConfigError::at(
                    "failback",
                    "is required with mode failback",
                ))
            }
            (Mode::Failback, Some(f)) => f.validate().map_err(|e| e.in_field("failback"))?,
            (_, Some(_)) => {
                return Err(ConfigError::at(
                    "failback",
                    "is only allowed with mode failback",
                ))
            }
            (_, None) => {}
        }
        if self.fallback_response.is_some() && !matches!(self.mode, Mode::Failsafe | Mode::Failback)
        {
            return Err(ConfigError::at(
                "fallback_response",
                "is only allowed with mode failsafe or failback",
            ));
        }
        Ok(())
    }
}

/// Maps core's outlier field names (`base_ejection_ns`) to the config's.
fn outlier_error(message: &str) -> ConfigError {
    for (core, field) in [
        ("consecutive_failures", "consecutive_failures"),
        ("base_ejection_ns", "base_ejection"),
        ("max_ejection_ns", "max_ejection"),
        ("max_ejection_percent", "max_ejection_percent"),
    ] {
        if let Some(rest) = message.strip_prefix(core) {
            return ConfigError::at(field, rest.trim_start().to_string());
        }
    }
    ConfigError::new(message.to_string())
}

impl Validate for Match {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, m) in [("authority", &self.authority), ("path", &self.path)] {
            if let Some(m) = m {
                m.compile().map_err(|e| e.in_field(name))?;
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            if h.name.is_empty() {
                return Err(ConfigError::at("name", "must not be empty")
                    .in_index(i)
                    .in_field("headers"));
            }
            h.compile().map_err(|e| e.in_index(i).in_field("headers"))?;
        }
        Ok(())
    }
}

impl Validate for Failback {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(ConfigError::at("cluster", "must not be empty"));
        }
        if !(1..=MAX_QUEUE_SIZE).contains(&self.queue_size) {
            return Err(ConfigError::at(
                "queue_size",
                format!("must be between 1 and {MAX_QUEUE_SIZE}"),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::at("max_attempts", "must be between 1 and 100"));
        }
        positive("retry_base", self.retry_base)?;
        if self.retry_max.as_nanos() < self.retry_base.as_nanos() {
            return Err(ConfigError::at("retry_max", "must be at least retry_base"));
        }
        positive("timeout", self.timeout)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use meshguard_filter_common::parse_config;

    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        parse_config::<Config>(json.as_bytes()).map_err(|e| e.to_string())
    }

    fn with_service(service: &str) -> String {
        format!(r#"{{"consul":{{"cluster":"consul"}},"services":[{service}]}}"#)
    }

    #[test]
    fn a_minimal_config_gets_the_defaults() {
        let c = parse(&with_service(r#"{"name":"orders"}"#)).unwrap();
        assert_eq!(c.override_host_header, "x-meshguard-override-host");
        assert_eq!(c.consul.wait.as_nanos(), 30 * SEC);
        assert!(c.consul.passing_only && c.consul.sync);
        let s = &c.services[0];
        assert_eq!(
            (s.balancer, s.mode, s.retries),
            (Balancer::RoundRobin, Mode::Failover, 2)
        );
        assert_eq!(s.retry_on, ["5xx", "reset", "connect-failure"]);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#"{"name":"a b"}"#, "services[0].name: `a b` must be"),
            (
                r#"{"name":"a","balancer":"consistent_hash"}"#,
                "services[0].hash_on: is required",
            ),
            (
                r#"{"name":"a","hash_on":"source_ip"}"#,
                "services[0].hash_on: is only allowed",
            ),
            (
                r#"{"name":"a","retries":11}"#,
                "services[0].retries: must be at most 10",
            ),
            (
                r#"{"name":"a","mode":"failback"}"#,
                "services[0].failback: is required",
            ),
            (
                r#"{"name":"a","retry_on":["5XX"]}"#,
                "services[0].retry_on[0]: `5XX` is not",
            ),
            (
                r#"{"name":"a","fallback_response":{}}"#,
                "services[0].fallback_response: is only allowed",
            ),
            (
                r#"{"name":"a","outlier":{"max_ejection_percent":101}}"#,
                "services[0].outlier.max_ejection_percent: must be between 0 and 100",
            ),
            (
                r#"{"name":"a","match":{"path":{"regex":"("}}}"#,
                "services[0].match.path.regex: invalid regular expression",
            ),
            (
                r#"{"name":"a","mode":"failback","failback":{"cluster":"c","queue_size":0}}"#,
                "services[0].failback.queue_size: must be between 1",
            ),
            (
                r#"{"name":"a","balancer":"fastest"}"#,
                "services[0].balancer: unknown variant `fastest`",
            ),
            (
                r#"{"name":"a","tenant":"Acme"}"#,
                "services[0].tenant: `Acme`: tenant must contain only lowercase",
            ),
            (
                r#"{"name":"a","tenant":"acme.eu"}"#,
                "services[0].tenant: `acme.eu`: tenant must contain only lowercase",
            ),
            (
                r#"{"name":"a","tenant":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
                "services[0].tenant: `aaaa",
            ),
            (
                r#"{"name":"a","tenant":"-acme"}"#,
                "services[0].tenant: `-acme`: tenant must start and end",
            ),
        ];
        for (service, want) in cases {
            let e = parse(&with_service(service)).unwrap_err();
            assert!(e.starts_with(want), "{service}: {e}");
        }
        let e = parse(&with_service(r#"{"name":"a"},{"name":"a"}"#)).unwrap_err();
        assert_eq!(e, "services[1].name: duplicate service `a`");
        let e = parse(r#"{"consul":{"cluster":"c","wait":"0s"},"services":[{"name":"a"}]}"#)
            .unwrap_err();
        assert_eq!(e, "consul.wait: must be between 1s and 10m");
        let e =
            parse(r#"{"consul":{"cluster":"c","bogus":1},"services":[{"name":"a"}]}"#).unwrap_err();
        assert!(e.starts_with("consul.bogus: unknown field"), "{e}");
        let e = parse(
            r#"{"consul":{"cluster":"c","datacenters":["dc1","dc1"]},"services":[{"name":"a"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e, "consul.datacenters[1]: duplicate datacenter `dc1`");
        let e = parse(r#"{"consul":{"cluster":"c"},"services":[]}"#).unwrap_err();
        assert_eq!(e, "services: must list at least one service");
        let e = parse(
            r#"{"consul":{"cluster":"c"},"services":[{"name":"a"}],"override_host_header":"x-envoy-x"}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("override_host_header: "), "{e}");
    }

    /// `config.schema.json` is generated from these types; regenerate it with
    /// `UPDATE_SCHEMA=1 cargo test -p meshguard-router schema`.
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
            "{} is stale: run `UPDATE_SCHEMA=1 cargo test -p meshguard-router schema`",
            path.display()
        );
    }
}
