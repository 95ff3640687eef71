//! The filter's JSON configuration (README.md documents every field) and its validation, which
//! names the offending field (`breakers[0].trip.failure_ratio.ratio: …`).

use std::collections::BTreeMap;

pub use meshguard_filter_common::Duration;
use meshguard_filter_common::{validate_each, ConfigError, Validate};
pub use meshguard_filter_common::{HeaderMatch, StringMatch};
use serde::{Deserialize, Serialize};

/// The root: the breakers, tried in order; the first whose `match` holds owns the request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// At least one breaker.
    pub breakers: Vec<BreakerConfig>,
}

/// One circuit breaker and its fallback.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Unique name: stats are `meshguard_fallback.<name>.<counter>`, shared data
    /// `mg:cb:<name>:<key>`. Letters, digits, `_` and `-`.
    pub name: String,
    /// Which requests this breaker guards (empty: all).
    #[serde(rename = "match", default)]
    pub matches: Match,
    /// What one breaker instance covers.
    #[serde(default)]
    pub key: BreakerKey,
    /// Enforce, only measure, or pin the breaker open / disabled.
    #[serde(default)]
    pub mode: Mode,
    /// When the breaker opens (at least one condition).
    pub trip: Trip,
    /// Which responses count as failures.
    #[serde(default)]
    pub failure: Failure,
    /// How long the breaker stays open.
    #[serde(default)]
    pub open: Open,
    /// How the breaker probes the upstream before closing.
    #[serde(default)]
    pub half_open: HalfOpen,
    /// Upstream timeout set on forwarded requests (`x-envoy-upstream-rq-timeout-ms`), so a
    /// slow upstream becomes a failure (504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What the client gets instead of the upstream's answer.
    #[serde(default)]
    pub fallback: Fallback,
    /// Also serve the fallback when a single response fails while the breaker is closed.
    #[serde(default)]
    pub fallback_on_failure: bool,
    /// Add `x-meshguard-breaker: <name>=<state>` to every fallback response.
    #[serde(default)]
    pub state_header: bool,
}

/// Conditions on a request; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The path without the query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// The request method is one of these (upper case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Every one of these header conditions holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// What one breaker instance covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BreakerKey {
    /// One breaker for every request the entry matches.
    #[default]
    Route,
    /// One breaker per method and path (without the query string).
    MethodPath,
    /// One breaker per `:authority` (the upstream service as the client named it).
    Authority,
    /// One breaker per upstream cluster of the request's route (`xds.cluster_name`).
    Cluster,
}

/// How the breaker acts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Open breakers reject and serve the fallback.
    #[default]
    Enforce,
    /// Shadow: the breaker runs and reports, but never rejects.
    MetricsOnly,
    /// Every request gets the fallback.
    ForcedOpen,
    /// Nothing is measured or rejected.
    Disabled,
}

/// Trip conditions; at least one.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Trip {
    /// Opens after this many failures in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Opens when the failure ratio over a window reaches `ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<FailureRatio>,
    /// Opens when the ratio of slow calls over a window reaches `ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_calls: Option<SlowCalls>,
}

/// Failure ratio over a sliding window.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FailureRatio {
    /// Failures / calls, above 0 and at most 1 (resolution 0.001).
    pub ratio: f64,
    /// The window the ratio is measured over.
    pub window: Window,
    /// The ratio is evaluated once the window holds this many calls.
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
}

/// Slow-call ratio over a sliding window.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SlowCalls {
    /// A call is slow when request start to response headers takes at least this long.
    pub threshold: Duration,
    /// Slow calls / calls, above 0 and at most 1.
    pub ratio: f64,
    /// The window (must equal `failure_ratio.window` when both are set).
    pub window: Window,
    /// The ratio is evaluated once the window holds this many calls.
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
}

fn default_min_calls() -> u32 {
    10
}

/// A sliding window: the last `calls` calls, or the last `duration` split into `buckets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(untagged, deny_unknown_fields)]
pub enum Window {
    /// Count-based: `{"calls": 20}` (1..=128).
    Count {
        /// Window size in calls.
        calls: u32,
    },
    /// Time-based: `{"duration": "10s", "buckets": 10}` (buckets 1..=10).
    Time {
        /// Window length.
        duration: Duration,
        /// Buckets the window is split into.
        #[serde(default = "default_buckets")]
        buckets: u32,
    },
}

fn default_buckets() -> u32 {
    10
}

/// Which responses count as failures.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// HTTP statuses: codes (`429`) or inclusive ranges (`"500-599"`).
    #[serde(default = "default_statuses")]
    pub statuses: Vec<Status>,
    /// gRPC status codes (0..=16) from the `grpc-status` header.
    #[serde(default = "default_grpc")]
    pub grpc_statuses: Vec<u32>,
    /// Upstream resets and connection failures count.
    #[serde(default = "yes")]
    pub reset: bool,
    /// Upstream timeouts count.
    #[serde(default = "yes")]
    pub timeout: bool,
}

impl Default for Failure {
    fn default() -> Self {
        Self {
            statuses: default_statuses(),
            grpc_statuses: default_grpc(),
            reset: true,
            timeout: true,
        }
    }
}

fn default_statuses() -> Vec<Status> {
    vec![Status::Range("500-599".into())]
}

fn default_grpc() -> Vec<u32> {
    vec![4, 13, 14]
}

fn yes() -> bool {
    true
}

/// An HTTP status code or an inclusive range `"lo-hi"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Status {
    /// One code, e.g. `429`.
    Code(u16),
    /// A range, e.g. `"500-599"` (or one code as a string, `"503"`).
    Range(String),
}

impl Status {
    /// The inclusive range, or a message saying what is wrong.
    pub(crate) fn range(&self) -> Result<(u16, u16), String> {
        let parse = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{s}` is not a status code"))
        };
        match self {
            Self::Code(c) => Ok((*c, *c)),
            Self::Range(text) => match text.split_once('-') {
                Some((lo, hi)) => Ok((parse(lo)?, parse(hi)?)),
                None => parse(text).map(|c| (c, c)),
            },
        }
    }
}

/// How long the breaker stays open.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Open {
    /// Open duration after a trip from closed.
    #[serde(default = "default_open")]
    pub duration: Duration,
    /// Multiplier applied on each re-trip from half-open (≥ 1).
    #[serde(default = "default_backoff")]
    pub backoff: f64,
    /// Cap on the grown open duration (≥ `duration`).
    #[serde(default = "default_max_open")]
    pub max: Duration,
}

impl Default for Open {
    fn default() -> Self {
        Self {
            duration: default_open(),
            backoff: default_backoff(),
            max: default_max_open(),
        }
    }
}

fn default_open() -> Duration {
    Duration::from_nanos(30 * SEC)
}

fn default_backoff() -> f64 {
    2.0
}

fn default_max_open() -> Duration {
    Duration::from_nanos(300 * SEC)
}

/// Half-open probing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HalfOpen {
    /// Probe requests admitted in total (across all workers).
    #[serde(default = "one")]
    pub probes: u32,
    /// Successful probes that close the breaker (≤ `probes`).
    #[serde(default = "one")]
    pub successes: u32,
    /// How long to wait for outstanding probes before reopening.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: Duration,
}

impl Default for HalfOpen {
    fn default() -> Self {
        Self {
            probes: 1,
            successes: 1,
            probe_timeout: default_probe_timeout(),
        }
    }
}

fn one() -> u32 {
    1
}

fn default_probe_timeout() -> Duration {
    Duration::from_nanos(60 * SEC)
}

const SEC: u64 = 1_000_000_000;

/// The fallback served when the breaker rejects a request (exactly one kind). Kinds that can
/// miss (`cache`) or fail (`service`) hand over to the next entry of a `chain`, and finally to
/// fail-fast.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fallback {
    /// A fixed response.
    Static(StaticResponse),
    /// 503 with `x-meshguard-fallback-reason`.
    FailFast(FailFast),
    /// The last good response for the same breaker, method and path.
    Cache(CacheFallback),
    /// The answer of a fallback cluster, called with `dispatch_http_call`.
    Service(ServiceFallback),
    /// These fallbacks tried in order (no nested chains); fail-fast when all miss or fail.
    Chain(Vec<Fallback>),
}

impl Default for Fallback {
    fn default() -> Self {
        Self::FailFast(FailFast {})
    }
}

impl Fallback {
    /// The steps tried in order: a chain's entries, or the single fallback.
    pub(crate) fn steps(&self) -> Vec<Fallback> {
        match self {
            Self::Chain(steps) => steps.clone(),
            other => vec![other.clone()],
        }
    }

    /// The cache settings, if any step is a cache.
    pub(crate) fn cache(&self) -> Option<&CacheFallback> {
        match self {
            Self::Cache(c) => Some(c),
            Self::Chain(steps) => steps.iter().find_map(Self::cache),
            _ => None,
        }
    }
}

/// Serve the last good (cacheable 200) response to a GET of the same path and query.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CacheFallback {
    /// How long a stored response may be served.
    #[serde(default = "default_ttl")]
    pub ttl: Duration,
    /// Slots in shared data (1..=10000); a new response takes its path's slot.
    #[serde(default = "default_max_entries")]
    pub max_entries: u32,
    /// Larger responses are not stored (1..=1048576 bytes).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u32,
}

fn default_ttl() -> Duration {
    Duration::from_nanos(300 * SEC)
}

fn default_max_entries() -> u32 {
    100
}

fn default_max_body_bytes() -> u32 {
    65_536
}

/// Call a fallback cluster and answer with its response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceFallback {
    /// An Envoy cluster (static or from CDS).
    pub cluster: String,
    /// The path to call (default: the request's path and query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The call's timeout; then the next fallback is tried.
    #[serde(default = "default_service_timeout")]
    pub timeout: Duration,
}

fn default_service_timeout() -> Duration {
    Duration::from_nanos(SEC)
}

/// `{"fail_fast": {}}` takes no settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FailFast {}

/// A fixed fallback response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StaticResponse {
    /// HTTP status (200..=599).
    #[serde(default = "default_static_status")]
    pub status: u16,
    /// Response headers (lower-case names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Response body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

fn default_static_status() -> u16 {
    200
}

// ---------------------------------------------------------------------------------------------
// Validation of what serde's types cannot say. The breaker's own rules (ratios, windows,
// probes, open durations) are checked by core's builder when the engine compiles; the engine
// maps its errors to these field names.

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.breakers.is_empty() {
            return Err(ConfigError::at("breakers", "needs at least one breaker"));
        }
        validate_each("breakers", &self.breakers)?;
        for (i, b) in self.breakers.iter().enumerate() {
            if self.breakers[..i].iter().any(|o| o.name == b.name) {
                return Err(
                    ConfigError::at("name", format!("duplicate name `{}`", b.name))
                        .in_index(i)
                        .in_field("breakers"),
                );
            }
        }
        Ok(())
    }
}

impl Validate for BreakerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if !name_ok {
            return Err(ConfigError::at(
                "name",
                "must be 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        for (i, m) in self.matches.methods.iter().enumerate() {
            if m.is_empty() || m.bytes().any(|c| !c.is_ascii_uppercase()) {
                return Err(ConfigError::new("must be an upper-case method name")
                    .in_index(i)
                    .in_field("methods")
                    .in_field("match"));
            }
        }
        if let Some(t) = self.timeout {
            if t.as_nanos() < 1_000_000 {
                return Err(ConfigError::at("timeout", "must be at least 1ms"));
            }
        }
        self.fallback.validate().map_err(|e| e.in_field("fallback"))
    }
}

impl Validate for Fallback {
    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Static(s) => s.validate().map_err(|e| e.in_field("static")),
            Self::FailFast(_) => Ok(()),
            Self::Cache(c) => c.validate().map_err(|e| e.in_field("cache")),
            Self::Service(s) => s.validate().map_err(|e| e.in_field("service")),
            Self::Chain(steps) => {
                if steps.is_empty() {
                    return Err(ConfigError::at("chain", "needs at least one fallback"));
                }
                for (i, step) in steps.iter().enumerate() {
                    if matches!(step, Self::Chain(_)) {
                        return Err(ConfigError::new("a chain cannot contain a chain")
                            .in_index(i)
                            .in_field("chain"));
                    }
                    step.validate()
                        .map_err(|e| e.in_index(i).in_field("chain"))?;
                }
                Ok(())
            }
        }
    }
}

impl Validate for StaticResponse {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(200..=599).contains(&self.status) {
            return Err(ConfigError::at("status", "must be within 200..=599"));
        }
        for name in self.headers.keys() {
            if name.is_empty()
                || name.starts_with(':')
                || name.bytes().any(|c| c.is_ascii_uppercase())
            {
                return Err(ConfigError::at(
                    "headers",
                    format!("`{name}` must be a lower-case header name"),
                ));
            }
        }
        Ok(())
    }
}

impl Validate for CacheFallback {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl.as_nanos() == 0 {
            return Err(ConfigError::at("ttl", "must be longer than 0"));
        }
        if !(1..=10_000).contains(&self.max_entries) {
            return Err(ConfigError::at("max_entries", "must be within 1..=10000"));
        }
        if !(1..=1_048_576).contains(&self.max_body_bytes) {
            return Err(ConfigError::at(
                "max_body_bytes",
                "must be within 1..=1048576",
            ));
        }
        Ok(())
    }
}

impl Validate for ServiceFallback {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(ConfigError::at("cluster", "must name a cluster"));
        }
        if self.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            return Err(ConfigError::at("path", "must start with `/`"));
        }
        if self.timeout.as_nanos() < 1_000_000 {
            return Err(ConfigError::at("timeout", "must be at least 1ms"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_as_codes_and_ranges() {
        assert_eq!(Status::Code(429).range(), Ok((429, 429)));
        assert_eq!(Status::Range("500-599".into()).range(), Ok((500, 599)));
        assert_eq!(Status::Range("503".into()).range(), Ok((503, 503)));
        assert!(Status::Range("5xx".into()).range().is_err());
    }

    #[test]
    fn durations_print_in_their_largest_exact_unit() {
        assert_eq!(Duration::from_nanos(1_500_000_000).to_string(), "1500ms");
        assert_eq!(Duration::from_nanos(0).to_string(), "0s");
    }

    /// `config.schema.json` is generated from these types; regenerate it with
    /// `UPDATE_SCHEMA=1 cargo test -p meshguard-fallback schema`.
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
            "{} is stale: run `UPDATE_SCHEMA=1 cargo test -p meshguard-fallback schema`",
            path.display()
        );
    }
}
