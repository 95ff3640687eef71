//! The unified rules file: per service, native Envoy settings (timeouts, retries, outlier
//! detection, balancer), the meshguard filters' JSON (ratelimit, fallback, tenant), which is
//! passed to the filter verbatim, and routing (`router`, see [`crate::routing`]). Loading
//! collects every error with its file, line, column and field path; each filter section is
//! checked by the filter's own parser (linked natively), so a section the filter would refuse
//! never reaches Envoy.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::routing::{self, Routing};

/// The meshguard filters whose section is the filter's JSON, in request order (the router
/// filter, when a service needs it, runs after them).
pub const FILTERS: [&str; 3] = ["tenant", "ratelimit", "fallback"];

/// Allowed `retries.on` conditions (Envoy `x-envoy-retry-on` values).
pub const RETRY_ON: [&str; 8] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "envoy-ratelimited",
];

/// The whole rules document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Rules by service name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRules>,
}

impl Rules {
    /// The rules of `service` (defaults when it has none).
    pub fn service(&self, service: &str) -> ServiceRules {
        self.services.get(service).cloned().unwrap_or_default()
    }
}

/// Governance for one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceRules {
    /// TCP connect timeout to an instance (default 1s).
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// Whole-request timeout of the default route (Envoy default 15s).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Retry policy of the default route.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Passive health checking (Envoy outlier detection).
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Load-balancing policy.
    #[serde(default)]
    pub balancer: Option<Balancer>,
    /// meshguard ratelimit filter configuration, passed verbatim (filters/ratelimit/config.schema.json).
    #[serde(default)]
    pub ratelimit: Option<serde_json::Value>,
    /// meshguard fallback (circuit breaker) filter configuration, passed verbatim
    /// (filters/fallback/config.schema.json).
    #[serde(default)]
    pub fallback: Option<serde_json::Value>,
    /// meshguard tenant filter configuration, passed verbatim (filters/tenant).
    #[serde(default)]
    pub tenant: Option<serde_json::Value>,
    /// Routing: `mode` (failover, failfast, failsafe, failback), `balancer` and the router
    /// filter's other per-service fields, plus its `consul` section when the filter is needed
    /// (see the README for when Envoy routes natively).
    #[serde(default)]
    #[cfg_attr(test, schemars(schema_with = "router_schema"))]
    pub router: Option<serde_json::Value>,
    /// Extra routes before the default `/` route, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
}

impl ServiceRules {
    /// The filters `service` carries: (filter name, JSON configuration), in request order.
    pub fn filters(&self, service: &str) -> Vec<(&'static str, String)> {
        let mut filters: Vec<(&'static str, String)> = FILTERS
            .into_iter()
            .zip([&self.tenant, &self.ratelimit, &self.fallback])
            .filter_map(|(name, config)| config.as_ref().map(|c| (name, c.to_string())))
            .collect();
        if let Some(Routing::Filter { json, .. }) = self.routing(service) {
            filters.push(("router", json));
        }
        filters
    }

    /// How `service` is routed, when it has a `router` section.
    pub fn routing(&self, service: &str) -> Option<Routing> {
        let section = self.router.as_ref()?.as_object()?;
        Some(routing::plan(service, section))
    }

    /// Whether the tenant and router filters both run, and so share one VM id (the router
    /// publishes the service → tenant map in shared data, which Envoy scopes by VM id).
    pub fn shares_tenant_vm(&self, service: &str) -> bool {
        self.tenant.is_some() && matches!(self.routing(service), Some(Routing::Filter { .. }))
    }
}

#[cfg(test)]
fn router_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "Routing: the router filter's per-service fields (filters/router/config.schema.json `Service`, without `name`) plus its `consul` and `override_host_header`. failover/failfast with round_robin, weighted_round_robin, random or least_request and only retries, retry_on, per_try_timeout, retry_non_idempotent are native Envoy settings; anything else runs the router filter and needs `consul`.",
        "properties": {
            "mode": {"enum": ["failover", "failfast", "failsafe", "failback"]},
            "balancer": {"enum": ["round_robin", "weighted_round_robin", "random", "weighted_random", "least_request", "response_time_weighted", "consistent_hash"]},
            "retries": {"type": "integer", "minimum": 0, "maximum": 10},
            "retry_on": {"type": "array", "items": {"type": "string"}},
            "per_try_timeout": {"type": "string"},
            "retry_non_idempotent": {"type": "boolean"},
            "consul": {"type": "object"},
            "override_host_header": {"type": "string"}
        }
    })
}

/// A route of a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Path prefix to match (exactly one of `prefix` and `path`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Exact path to match.
    #[serde(default)]
    pub path: Option<String>,
    /// Request timeout on this route.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Retry policy on this route.
    #[serde(default)]
    pub retries: Option<Retries>,
}

/// A retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt, 1-10.
    pub attempts: u32,
    /// Conditions (see [`RETRY_ON`]); default `5xx`, `connect-failure`, `reset`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    /// Timeout of each attempt.
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
}

fn default_retry_on() -> Vec<String> {
    ["5xx", "connect-failure", "reset"]
        .map(String::from)
        .to_vec()
}

/// Passive health checking: eject instances that keep failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection (default 5).
    #[serde(default)]
    pub consecutive_5xx: Option<u32>,
    /// Analysis interval (default 10s).
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Base ejection time, multiplied by the number of ejections (default 30s).
    #[serde(default)]
    pub base_ejection_time: Option<Dur>,
    /// Most instances ejected at once, percent 0-100 (default 10).
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Weighted round robin (default).
    RoundRobin,
    /// Power of two choices on active requests.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing, ring.
    RingHash,
    /// Consistent hashing, Maglev table.
    Maglev,
}

/// A positive duration written as `250ms`, `2s`, `1m`, `1h` (also `us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Dur(
    /// Nanoseconds.
    pub u64,
);

impl Dur {
    /// Parses `<integer><unit>`, unit one of `us`, `ms`, `s`, `m`, `h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {text:?} has no unit (us, ms, s, m, h)"))?;
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("duration {text:?} does not start with a number"))?;
        let scale: u64 = match unit {
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("duration {text:?} has an unknown unit {unit:?}")),
        };
        let nanos = value
            .checked_mul(scale)
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
        if nanos == 0 {
            return Err(format!("duration {text:?} must be greater than zero"));
        }
        Ok(Self(nanos))
    }

    /// As a protobuf duration (seconds, nanos).
    pub fn seconds_nanos(self) -> (i64, i32) {
        let secs = i64::try_from(self.0 / 1_000_000_000).unwrap_or(i64::MAX);
        let nanos = i32::try_from(self.0 % 1_000_000_000).unwrap_or(0);
        (secs, nanos)
    }
}

#[cfg(test)]
impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(us|ms|s|m|h)$",
            "description": "A positive duration: an integer and a unit (us, ms, s, m, h), e.g. `250ms`."
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Dur::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One problem in a rules file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The file as given.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// Field path, e.g. `services.orders.retries.attempts`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error of a rules file, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// Whether `name` can be a service (and Envoy cluster) name: 1-128 of `[A-Za-z0-9._-]`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads and validates a rules file.
pub fn load(path: &Path) -> Result<Rules, RuleErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&file, &text),
        Err(err) => Err(RuleErrors(vec![RuleError {
            file,
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {err}"),
        }])),
    }
}

/// Parses and validates rules text (YAML, or JSON, which YAML reads too); `file` names it in
/// errors.
pub fn parse(file: &str, text: &str) -> Result<Rules, RuleErrors> {
    let mut errors = Vec::new();
    let at = |path: &[Seg], message: String| {
        let (line, column) = locate(text, path);
        RuleError {
            file: file.to_string(),
            line,
            column,
            field: render_path(path),
            message,
        }
    };
    let doc: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(doc) => doc,
        Err(err) => {
            let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
            return Err(RuleErrors(vec![RuleError {
                file: file.to_string(),
                line,
                column,
                field: String::new(),
                message: err.to_string(),
            }]));
        }
    };
    let mut rules = Rules::default();
    let top = match doc {
        serde_yaml::Value::Null => return Ok(rules),
        serde_yaml::Value::Mapping(m) => m,
        _ => {
            return Err(RuleErrors(vec![at(
                &[],
                "the rules must be a mapping with `services`".into(),
            )]))
        }
    };
    for (key, value) in top {
        let Some(key) = key.as_str().map(str::to_string) else {
            errors.push(at(&[], "top-level keys must be strings".into()));
            continue;
        };
        if key != "services" {
            errors.push(at(
                &[Seg::Key(key.clone())],
                format!("unknown field `{key}`, expected `services`"),
            ));
            continue;
        }
        let services = match value {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => continue,
            _ => {
                errors.push(at(
                    &[Seg::Key(key)],
                    "must be a mapping of service name to rules".into(),
                ));
                continue;
            }
        };
        for (name, value) in services {
            let Some(name) = name.as_str().map(str::to_string) else {
                errors.push(at(
                    &[Seg::Key(key.clone())],
                    "service names must be strings".into(),
                ));
                continue;
            };
            let base = vec![Seg::Key("services".into()), Seg::Key(name.clone())];
            if !is_valid_name(&name) {
                errors.push(at(
                    &base,
                    "a service name is 1-128 characters of [A-Za-z0-9._-]".into(),
                ));
            }
            // Each field on its own first (every field is optional), so one bad field does
            // not hide the errors of the others; the fields that parse are then validated.
            let mut good = serde_yaml::Mapping::new();
            if let serde_yaml::Value::Mapping(fields) = value {
                for (k, v) in fields {
                    let mut single = serde_yaml::Mapping::new();
                    single.insert(k.clone(), v.clone());
                    match typed::<ServiceRules>(serde_yaml::Value::Mapping(single)) {
                        Ok(_) => {
                            good.insert(k, v);
                        }
                        Err((path, message)) => {
                            let full: Vec<Seg> = base.iter().cloned().chain(path).collect();
                            errors.push(at(&full, message));
                        }
                    }
                }
            } else if !value.is_null() {
                errors.push(at(&base, "must be a mapping of rule fields".into()));
            }
            match typed::<ServiceRules>(serde_yaml::Value::Mapping(good)) {
                Ok(service) => {
                    for (path, message) in validate_service(&name, &service) {
                        let full: Vec<Seg> = base.iter().cloned().chain(path).collect();
                        errors.push(at(&full, message));
                    }
                    rules.services.insert(name, service);
                }
                Err((path, message)) => {
                    let full: Vec<Seg> = base.iter().cloned().chain(path).collect();
                    errors.push(at(&full, message));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(RuleErrors(errors))
    }
}

/// A step in a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Deserializes with the path of the first error (an unknown field's path ends in its name).
fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (Vec<Seg>, String)> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let mut path: Vec<Seg> = err
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = err.inner().to_string();
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            if path.last() != Some(&Seg::Key(unknown.to_string())) {
                path.push(Seg::Key(unknown.to_string()));
            }
        }
        (path, message)
    })
}

fn validate_service(service: &str, s: &ServiceRules) -> Vec<(Vec<Seg>, String)> {
    let key = |k: &str| Seg::Key(k.to_string());
    let mut errors = Vec::new();
    for (name, config) in FILTERS
        .into_iter()
        .zip([&s.tenant, &s.ratelimit, &s.fallback])
    {
        if let Some(config) = config {
            if !config.is_object() {
                errors.push((
                    vec![key(name)],
                    "must be the filter's JSON configuration object".to_string(),
                ));
            } else if let Err((path, message)) = check_filter(name, config) {
                errors.push((std::iter::once(key(name)).chain(path).collect(), message));
            }
        }
    }
    if let Some(router) = &s.router {
        errors.extend(
            check_router(service, router)
                .into_iter()
                .map(|(p, m)| (std::iter::once(key("router")).chain(p).collect(), m)),
        );
        for field in ["balancer", "retries"] {
            let set = match field {
                "balancer" => s.balancer.is_some(),
                _ => s.retries.is_some(),
            };
            if set {
                errors.push((
                    vec![key(field)],
                    format!(
                        "conflicts with `router`: set the service's {field} in `router.{field}`"
                    ),
                ));
            }
        }
    }
    if let Some(r) = &s.retries {
        errors.extend(
            validate_retries(r)
                .into_iter()
                .map(|(p, m)| (std::iter::once(key("retries")).chain(p).collect(), m)),
        );
    }
    if let Some(o) = &s.outlier_detection {
        if o.consecutive_5xx == Some(0) {
            errors.push((
                vec![key("outlier_detection"), key("consecutive_5xx")],
                "must be at least 1".into(),
            ));
        }
        if o.max_ejection_percent.is_some_and(|p| p > 100) {
            errors.push((
                vec![key("outlier_detection"), key("max_ejection_percent")],
                "must be 0-100".into(),
            ));
        }
    }
    for (i, route) in s.routes.iter().enumerate() {
        let base = [key("routes"), Seg::Index(i)];
        match (&route.prefix, &route.path) {
            (Some(p), None) | (None, Some(p)) if p.starts_with('/') => {}
            (Some(_), None) | (None, Some(_)) => {
                let field = if route.prefix.is_some() {
                    "prefix"
                } else {
                    "path"
                };
                errors.push((
                    base.iter().cloned().chain([key(field)]).collect(),
                    "must start with `/`".into(),
                ));
            }
            _ => errors.push((
                base.to_vec(),
                "needs exactly one of `prefix` and `path`".into(),
            )),
        }
        if let Some(r) = &route.retries {
            errors.extend(validate_retries(r).into_iter().map(|(p, m)| {
                (
                    base.iter()
                        .cloned()
                        .chain([key("retries")])
                        .chain(p)
                        .collect(),
                    m,
                )
            }));
        }
    }
    errors
}

/// Checks a filter section with the filter's own parser and compiler (what its
/// `on_configure` runs), returning the error's path inside the section.
fn check_filter(filter: &str, config: &serde_json::Value) -> Result<(), (Vec<Seg>, String)> {
    let validate: fn(&[u8]) -> Result<(), String> = match filter {
        "tenant" => meshguard_tenant::validate_config,
        "ratelimit" => meshguard_ratelimit::validate_config,
        "fallback" => meshguard_fallback::validate_config,
        _ => meshguard_router::validate_config,
    };
    validate(config.to_string().as_bytes()).map_err(|e| split_filter_error(&e, |p| p))
}

/// The router section, checked by the router filter's parser on the JSON the section becomes
/// (with a placeholder `consul` when Envoy routes natively and none is given).
fn check_router(service: &str, section: &serde_json::Value) -> Vec<(Vec<Seg>, String)> {
    let Some(section) = section.as_object() else {
        return vec![(
            Vec::new(),
            "must be a mapping (mode, balancer, … of the router filter)".into(),
        )];
    };
    let mut section = section.clone();
    // Without `consul` a placeholder lets the filter's parser check everything else first.
    let needs_consul = !section.contains_key("consul");
    if needs_consul {
        section.insert("consul".into(), serde_json::json!({"cluster": "consul"}));
    }
    let json = routing::filter_json(service, &section).to_string();
    if let Err(e) = meshguard_router::validate_config(json.as_bytes()) {
        return vec![split_filter_error(&e, routing::section_path)];
    }
    match routing::needs_filter(&section) {
        Some(reason) if needs_consul => vec![(
            Vec::new(),
            format!(
                "needs `consul` (the router filter's Consul section): {reason} is done by the \
                 router filter, which watches Consul itself"
            ),
        )],
        _ => Vec::new(),
    }
}

/// Splits a filter's `path: message` error into path segments (mapped by `map` first) and the
/// message; a message without a path stays whole. An unknown field's name joins the path.
fn split_filter_error(error: &str, map: impl Fn(&str) -> &str) -> (Vec<Seg>, String) {
    let (mut path, message) = match error.split_once(": ") {
        Some((p, m)) => match parse_path(map(p)) {
            Some(path) => (path, m.to_string()),
            None => (Vec::new(), error.to_string()),
        },
        None => (Vec::new(), error.to_string()),
    };
    if let Some(unknown) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        if path.last() != Some(&Seg::Key(unknown.to_string())) {
            path.push(Seg::Key(unknown.to_string()));
        }
    }
    (path, strip_json_position(message))
}

/// Drops serde_json's ` at line L column C`: it points into the JSON meshguard made from the
/// section, not into the rules file.
fn strip_json_position(message: String) -> String {
    if let Some(at) = message.rfind(" at line ") {
        let rest = &message[at + " at line ".len()..];
        let mut words = rest.split(' ');
        let position = matches!(
            (words.next(), words.next(), words.next(), words.next()),
            (Some(l), Some("column"), Some(c), None)
                if l.bytes().all(|b| b.is_ascii_digit()) && c.bytes().all(|b| b.is_ascii_digit())
        );
        if position {
            return message[..at].to_string();
        }
    }
    message
}

/// Parses `a.b[2].c` (or an empty string) into segments; `None` when it is not a path.
fn parse_path(text: &str) -> Option<Vec<Seg>> {
    let mut path = Vec::new();
    for part in text.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        let is_name = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        };
        if !name.is_empty() {
            if !is_name(name) {
                return None;
            }
            path.push(Seg::Key(name.to_string()));
        }
        while !rest.is_empty() {
            let end = rest.find(']')?;
            let index = rest.get(1..end)?.parse().ok()?;
            if !rest.starts_with('[') {
                return None;
            }
            path.push(Seg::Index(index));
            rest = &rest[end + 1..];
        }
    }
    Some(path)
}

fn validate_retries(r: &Retries) -> Vec<(Vec<Seg>, String)> {
    let mut errors = Vec::new();
    if !(1..=10).contains(&r.attempts) {
        errors.push((vec![Seg::Key("attempts".into())], "must be 1-10".into()));
    }
    if r.on.is_empty() {
        errors.push((
            vec![Seg::Key("on".into())],
            "needs at least one condition".into(),
        ));
    }
    for (i, cond) in r.on.iter().enumerate() {
        if !RETRY_ON.contains(&cond.as_str()) {
            errors.push((
                vec![Seg::Key("on".into()), Seg::Index(i)],
                format!(
                    "unknown retry condition {cond:?}, expected one of {}",
                    RETRY_ON.join(", ")
                ),
            ));
        }
    }
    errors
}

/// Finds the 1-based (line, column) of a field path in YAML or JSON text, by scanning forward
/// for each key in turn and counting list items for indexes. Best effort: (0, 0) when nothing
/// is found, the deepest found ancestor otherwise.
fn locate(text: &str, path: &[Seg]) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let mut pos = (0usize, 0usize); // (line index, byte column)
    let mut found = None;
    for seg in path {
        let next = match seg {
            Seg::Key(key) => find_key(&lines, pos, key),
            Seg::Index(index) => find_item(&lines, pos, *index),
        };
        match next {
            Some(p) => {
                pos = p;
                found = Some(p);
            }
            // A flow (`[{…}]`) or JSON list: its first element's keys come next.
            None if *seg == Seg::Index(0) => {}
            None => break,
        }
    }
    found.map_or((0, 0), |(l, c)| (l + 1, c + 1))
}

fn find_key(lines: &[&str], from: (usize, usize), key: &str) -> Option<(usize, usize)> {
    for (i, line) in lines.iter().enumerate().skip(from.0) {
        let start = if i == from.0 { from.1 } else { 0 };
        let mut search = start;
        while let Some(off) = line.get(search..).and_then(|rest| rest.find(key)) {
            let at = search + off;
            let before = line[..at].trim_end_matches(['"', '\'']);
            let after = line[at + key.len()..].trim_start_matches(['"', '\'']);
            let boundary_before = before
                .chars()
                .last()
                .is_none_or(|c| c.is_whitespace() || matches!(c, '{' | ',' | '-'));
            if boundary_before && after.trim_start().starts_with(':') {
                let quoted = line[..at].ends_with(['"', '\'']);
                return Some((i, if quoted { at - 1 } else { at }));
            }
            search = at + key.len();
        }
    }
    None
}

fn find_item(lines: &[&str], from: (usize, usize), index: usize) -> Option<(usize, usize)> {
    let parent_indent = lines
        .get(from.0)
        .map_or(0, |l| l.len() - l.trim_start().len());
    let mut seen = 0;
    for (i, line) in lines.iter().enumerate().skip(from.0 + 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent < parent_indent || (indent == parent_indent && !trimmed.starts_with('-')) {
            return None;
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            if seen == index {
                return Some((i, indent + 2));
            }
            seen += 1;
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const GOOD: &str = "\
services:
  orders:
    connect_timeout: 250ms
    timeout: 2s
    retries: {attempts: 2, on: [5xx, connect-failure], per_try_timeout: 500ms}
    outlier_detection: {consecutive_5xx: 3, interval: 1s}
    balancer: least_request
    ratelimit: {rules: [{name: all, limits: [{algorithm: fixed_window, requests: 3, per: 1m}]}]}
    routes:
    - prefix: /slow
      timeout: 10s
";

    #[test]
    fn parses_a_complete_service() {
        let rules = parse("rules.yaml", GOOD).unwrap();
        let orders = &rules.services["orders"];
        assert_eq!(orders.timeout, Some(Dur(2_000_000_000)));
        assert_eq!(orders.retries.as_ref().unwrap().attempts, 2);
        assert_eq!(orders.balancer, Some(Balancer::LeastRequest));
        let filters = orders.filters("orders");
        assert_eq!(filters.len(), 1);
        assert_eq!(filters[0].0, "ratelimit");
        assert!(filters[0].1.starts_with("{\"rules\":"), "{}", filters[0].1);
        assert_eq!(orders.routes[0].prefix.as_deref(), Some("/slow"));
    }

    #[test]
    fn reports_every_error_with_line_column_and_field() {
        let text = "\
services:
  orders:
    retries:
      attempts: 0
      on: [5xx, sometimes]
    routes:
    - prefix: /a
    - path: nope
  payments:
    timeout: 3 seconds
  bad name:
    ratelimit: [1]
";
        let errors = parse("rules.yaml", text).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        assert!(
            lines.contains(
                &"rules.yaml:4:7: services.orders.retries.attempts: must be 1-10".to_string()
            ),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("rules.yaml:5:7: services.orders.retries.on[1]: unknown retry condition \"sometimes\"")),
            "{lines:#?}"
        );
        assert!(
            lines.contains(
                &"rules.yaml:8:7: services.orders.routes[1].path: must start with `/`".to_string()
            ),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l
                .starts_with("rules.yaml:10:5: services.payments.timeout: duration \"3 seconds\"")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("rules.yaml:11:3: services.bad name: a service name")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with(
                "rules.yaml:12:5: services.bad name.ratelimit: must be the filter's JSON"
            )),
            "{lines:#?}"
        );
        assert_eq!(lines.len(), 6, "{lines:#?}");
    }

    #[test]
    fn unknown_fields_point_at_the_field() {
        let text = "services:\n  orders:\n    timeout: 1s\n    retrys: {attempts: 1}\n";
        let errors = parse("r.yaml", text).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        let e = &errors.0[0];
        assert_eq!((e.line, e.column), (4, 5));
        assert_eq!(e.field, "services.orders.retrys");
        assert!(e.message.starts_with("unknown field `retrys`"), "{e}");
    }

    #[test]
    fn json_rules_are_read_and_located() {
        let text =
            "{\n  \"services\": {\n    \"orders\": {\n      \"timeout\": \"0s\"\n    }\n  }\n}\n";
        let errors = parse("r.json", text).unwrap_err();
        assert_eq!(
            errors.0[0].to_string(),
            "r.json:4:7: services.orders.timeout: duration \"0s\" must be greater than zero"
        );
        let ok = "{\"services\": {\"orders\": {\"timeout\": \"1s\"}}}";
        assert!(parse("r.json", ok).is_ok());
    }

    #[test]
    fn syntax_errors_carry_the_parser_location() {
        let errors = parse("r.yaml", "services:\n  orders: {timeout: 1s\n").unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(errors.0[0].line >= 2, "{}", errors.0[0]);
    }

    #[test]
    fn a_bad_filter_section_is_reported_at_the_offending_key_with_the_filters_message() {
        let text = "\
services:
  orders:
    ratelimit:
      rules:
      - name: all
        limits:
        - {algorithm: fixed_window, requests: 0, per: 1m}
";
        let errors = parse("r.yaml", text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        let e = &errors.0[0];
        assert_eq!(
            e.field, "services.orders.ratelimit.rules[0].limits[0].requests",
            "{e}"
        );
        assert_eq!((e.line, e.column), (7, 37), "{e}");
        // The filter's own message, byte for byte what its on_configure would log.
        let json = r#"{"rules":[{"name":"all","limits":[{"algorithm":"fixed_window","requests":0,"per":"1m"}]}]}"#;
        let filter = meshguard_ratelimit::validate_config(json.as_bytes()).unwrap_err();
        assert_eq!(
            filter,
            format!("rules[0].limits[0].requests: {}", e.message)
        );
    }

    #[test]
    fn every_filter_section_is_checked_by_its_filter() {
        let text = "\
services:
  a:
    fallback:
      breakers:
      - name: b
        trip: {consecutive_failures: 5}
        fallback: {static: {status: 200}}
        surprise: 1
  b:
    tenant: {identity: [{trusted_header: {cidrs: [10.0.0.1/8]}}]}
  c:
    ratelimit: {rules: []}
";
        let errors = parse("r.yaml", text).unwrap_err();
        let fields: Vec<(&str, usize)> = errors
            .0
            .iter()
            .map(|e| (e.field.as_str(), e.line))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("services.a.fallback.breakers[0].surprise", 8),
                ("services.b.tenant.identity[0].trusted_header.cidrs[0]", 10),
                ("services.c.ratelimit.rules", 12),
            ],
            "{errors}"
        );
        assert!(
            errors.0[0].message.starts_with("unknown field `surprise`"),
            "{errors}"
        );
        assert!(errors.0[1].message.contains("host bits"), "{errors}");
    }

    #[test]
    fn a_json_filter_section_is_located_inside_the_section() {
        let text = "{\"services\": {\"orders\": {\n  \"fallback\": {\"breakers\": [{\"name\": \"b\",\n    \"trip\": {\"consecutive_failures\": 0}}]}}}}\n";
        let errors = parse("r.json", text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        let e = &errors.0[0];
        assert!(
            e.field
                .starts_with("services.orders.fallback.breakers[0].trip"),
            "{e}"
        );
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn a_native_router_section_becomes_envoy_settings() {
        let text = "services:\n  orders:\n    router: {mode: failover, balancer: least_request, retries: 3}\n";
        let rules = parse("r.yaml", text).unwrap();
        let orders = &rules.services["orders"];
        assert!(matches!(
            orders.routing("orders"),
            Some(Routing::Native(routing::NativeRouting {
                lb_policy: "LEAST_REQUEST",
                retries: Some(_)
            }))
        ));
        assert!(orders.filters("orders").is_empty());
    }

    #[test]
    fn a_router_section_envoy_cannot_do_runs_the_router_filter_and_shares_the_tenant_vm() {
        let text = "\
services:
  orders:
    tenant: {identity: [{trusted_header: {cidrs: [10.0.0.0/8]}}], registry_service_tenants: true}
    router:
      mode: failsafe
      consul: {cluster: consul}
      fallback_response: {status: 202}
";
        let rules = parse("r.yaml", text).unwrap();
        let orders = &rules.services["orders"];
        let filters = orders.filters("orders");
        let names: Vec<&str> = filters.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec!["tenant", "router"]);
        let router: serde_json::Value = serde_json::from_str(&filters[1].1).unwrap();
        assert_eq!(router["services"][0]["name"], "orders");
        assert_eq!(router["consul"]["cluster"], "consul");
        assert!(meshguard_router::validate_config(filters[1].1.as_bytes()).is_ok());
        assert!(orders.shares_tenant_vm("orders"));
    }

    #[test]
    fn router_errors_name_the_field_inside_the_router_section() {
        let text = "\
services:
  orders:
    balancer: random
    router:
      mode: failover
      retries: 11
  pay:
    router: {mode: failsafe}
  ship:
    router: {mode: sometimes}
";
        let errors = parse("r.yaml", text).unwrap_err();
        let found: Vec<(String, usize, usize)> = errors
            .0
            .iter()
            .map(|e| (e.field.clone(), e.line, e.column))
            .collect();
        assert_eq!(
            found,
            vec![
                ("services.orders.balancer".to_string(), 3, 5),
                ("services.orders.router.retries".to_string(), 6, 7),
                ("services.pay.router".to_string(), 8, 5),
                ("services.ship.router.mode".to_string(), 10, 14),
            ],
            "{errors}"
        );
        assert!(errors.0[2].message.contains("needs `consul`"), "{errors}");
        assert!(
            errors.0[3].message.contains("unknown variant `sometimes`"),
            "{errors}"
        );
    }

    #[test]
    fn filter_error_paths_parse_and_plain_messages_stay_whole() {
        assert_eq!(
            parse_path("rules[0].limits[12].requests"),
            Some(vec![
                Seg::Key("rules".into()),
                Seg::Index(0),
                Seg::Key("limits".into()),
                Seg::Index(12),
                Seg::Key("requests".into())
            ])
        );
        assert_eq!(parse_path("invalid duration `x`"), None);
        let (path, message) = split_filter_error("the configuration is empty: expected", |p| p);
        assert!(path.is_empty());
        assert_eq!(message, "the configuration is empty: expected");
        let (path, message) = split_filter_error(
            "rules[0].limits[0]: missing field `algorithm` at line 1 column 46",
            |p| p,
        );
        assert_eq!(path.len(), 4);
        assert_eq!(message, "missing field `algorithm`");
    }

    /// The checked-in `rules.schema.json` matches the types; regenerate with
    /// `UPDATE_SCHEMA=1 cargo test -p meshguard schema`.
    #[test]
    fn checked_in_schema_is_up_to_date() {
        let schema = schemars::schema_for!(Rules);
        let generated = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.schema.json");
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} is stale: run `UPDATE_SCHEMA=1 cargo test -p meshguard schema`",
            path.display()
        );
    }

    #[test]
    fn durations_parse_units_and_reject_nonsense() {
        assert_eq!(
            Dur::parse("250ms").unwrap().seconds_nanos(),
            (0, 250_000_000)
        );
        assert_eq!(Dur::parse("2m").unwrap().0, 120_000_000_000);
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("5d").is_err());
        assert!(Dur::parse("ms").is_err());
    }
}
