//! The filter's JSON configuration (`PluginConfig.configuration`): serde types that reject
//! unknown fields, and their validation. `config.schema.json` is generated from these types
//! (doc comments become descriptions); README.md documents every field with examples.

use std::collections::BTreeMap;

use meshguard_core::{
    ApproxSlidingWindow, FixedWindow, LeakyBucket, LimitError, SlidingWindow, TokenBucket,
    MAX_SUB_WINDOWS,
};
pub use meshguard_filter_common::Duration;
use meshguard_filter_common::{validate_each, ConfigError, Validate};
pub use meshguard_filter_common::{HeaderMatch, StringMatch};
use serde::{Deserialize, Serialize};

/// Default of [`Rule::max_keys`].
pub const DEFAULT_MAX_KEYS: u32 = 1024;
/// Largest [`Rule::max_keys`]: about 40 MiB of shared data for a rule with two limits.
pub const MAX_MAX_KEYS: u32 = 1 << 20;
/// Default of [`Limit::sub_windows`] for `sliding_window`.
pub const DEFAULT_SUB_WINDOWS: u32 = MAX_SUB_WINDOWS;

/// The ratelimit filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Namespace of this filter's counters in Envoy's shared data: filters (on any listener)
    /// whose plugins share a `vm_id` and use the same domain and rule name share one limit.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// The rules, evaluated in order for every request; see the README for how several
    /// matching rules combine.
    pub rules: Vec<Rule>,
}

fn default_domain() -> String {
    "default".to_string()
}

/// One rate limit: which requests it applies to, how they are grouped, how many may pass.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name (letters, digits, `_`, `-`; at most 64): used in stats names
    /// (`meshguard_ratelimit.<name>.allowed`), shared-data keys and logs.
    pub name: String,
    /// Which requests the rule applies to; absent: every request.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// The request attributes whose values together select a separate limit (one per client
    /// IP, per user, ...); empty: one limit for all matching requests.
    #[serde(default)]
    pub key: Vec<KeyPart>,
    /// What to do with a request that lacks a key attribute.
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    /// Keys with their own state at once (default 1024, at most 1048576, rounded up to a
    /// multiple of 8); only with a `key`. See the README for what happens when they are used up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u32>,
    /// The limits; a request passes only if every one admits it.
    pub limits: Vec<Limit>,
    /// What happens to a request over the limit.
    #[serde(default)]
    pub action: Action,
    /// The longest a request may be held by `action: delay` (e.g. `"500ms"`); required with
    /// `delay`, not allowed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
    /// The reply to a rejected request.
    #[serde(default)]
    pub response: Response,
    /// When to add the `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers.
    #[serde(default)]
    pub ratelimit_headers: HeadersMode,
    /// Privileged classes of requests with a reserved quota of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
}

/// Conditions on a request; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The path without the query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// The request method is one of these (upper case, e.g. `["GET", "HEAD"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Every one of these header conditions holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// The verified tenant (header `x-meshguard-tenant`, set by the tenant filter) is one of
    /// these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
}

/// One request attribute of a rule's key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The value of a request header (`{"header": "x-user-id"}`); missing when absent or empty.
    Header(String),
    /// The client's IP address from `source.address`, without the port (`"client_ip"`).
    ClientIp,
    /// The path without the query string (`"path"`).
    Path,
    /// The request method (`"method"`).
    Method,
    /// The verified tenant, header `x-meshguard-tenant` (`"tenant"`); missing when absent.
    Tenant,
    /// An Envoy attribute by its path segments, e.g. a JWT claim from dynamic metadata:
    /// `{"property": ["metadata", "filter_metadata", "envoy.filters.http.jwt_authn", "sub"]}`.
    Property(Vec<String>),
    /// A fixed string (`{"constant": "v1"}`), e.g. to keep two rules' keys apart.
    Constant(String),
}

/// What a rule does with a request that lacks one of its key attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnMissingKey {
    /// Count it under one shared "unknown" key of the rule (the default: a client cannot
    /// escape a limit by leaving a header out).
    #[default]
    Shared,
    /// The rule does not apply to it.
    Skip,
}

/// One limit: an algorithm and its quota.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Requests per `per` (at least 1).
    pub requests: u32,
    /// The window length (window algorithms), refill period (`token_bucket`) or pacing period
    /// (`leaky_bucket`), e.g. `"1s"`, `"1m"`.
    pub per: Duration,
    /// `token_bucket` only: requests that may pass at once from a full bucket (default:
    /// `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `sliding_window` only: sub-windows per window, 1 to 7 (default 7; more is closer to the
    /// true sliding window, see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_windows: Option<u32>,
}

/// A rate-limit algorithm (see the README for their guarantees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Counts per aligned window; up to 2× `requests` across a window boundary.
    FixedWindow,
    /// Exact sliding window: never more than `requests` in any interval of `per`.
    SlidingWindow,
    /// Two-window weighted counter (Cloudflare's): close to a sliding window, 17-byte state.
    ApproximateSlidingWindow,
    /// Token bucket (GCRA): `requests` per `per` on average, `burst` at once.
    TokenBucket,
    /// Leaky bucket as a pacer: evenly spaced requests; queues them with `action: delay`.
    LeakyBucket,
}

/// What happens to a request over the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Answer with `response` (429 by default).
    #[default]
    Reject,
    /// Hold the request until a `leaky_bucket` limit lets it go (at most `max_delay`), then
    /// forward it; reject it when it would wait longer.
    Delay,
    /// Only count and log what would have been rejected; never block.
    Shadow,
}

/// The local reply to a rejected request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// HTTP status, 400 to 599 (default 429).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response body (default: empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Extra response headers (lower-case names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    429
}

impl Default for Response {
    fn default() -> Self {
        Self {
            status: default_status(),
            body: String::new(),
            headers: BTreeMap::new(),
        }
    }
}

/// When to add the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HeadersMode {
    /// On rejections only (with `Retry-After`).
    #[default]
    OnReject,
    /// Also on the upstream's responses to admitted requests.
    Always,
    /// Never (`Retry-After` is still sent on rejections).
    Never,
}

/// A privileged class of requests: it draws first from its own reserved quota, then from the
/// rule's limits like everyone else, so under pressure other requests are rejected first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Unique name within the rule (letters, digits, `_`, `-`).
    pub name: String,
    /// Which requests belong to the tier (e.g. a header or a tenant).
    #[serde(rename = "match")]
    pub matches: Match,
    /// When a request matches several tiers, the highest priority wins (then the first listed).
    #[serde(default)]
    pub priority: u32,
    /// The tier's own quota, per key like the rule's limits (at least one limit).
    pub reserved: Vec<Limit>,
}

// ---------------------------------------------------------------------------------------------
// Validation: everything serde's types cannot say, with the field named.

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.domain).map_err(|m| ConfigError::at("domain", m))?;
        if self.rules.is_empty() {
            return Err(ConfigError::at("rules", "must contain at least one rule"));
        }
        validate_each("rules", &self.rules)?;
        for (i, rule) in self.rules.iter().enumerate() {
            if self.rules[..i].iter().any(|r| r.name == rule.name) {
                return Err(ConfigError::at(
                    "name",
                    format!("duplicate rule name `{}`", rule.name),
                )
                .in_index(i)
                .in_field("rules"));
            }
        }
        Ok(())
    }
}

impl Validate for Rule {
    fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.name).map_err(|m| ConfigError::at("name", m))?;
        self.matches.validate().map_err(|e| e.in_field("match"))?;
        validate_each("key", &self.key)?;
        match self.max_keys {
            Some(_) if self.key.is_empty() => {
                return Err(ConfigError::at(
                    "max_keys",
                    "only applies to a rule with a key",
                ))
            }
            Some(n) if n == 0 || n > MAX_MAX_KEYS => {
                return Err(ConfigError::at(
                    "max_keys",
                    format!("must be between 1 and {MAX_MAX_KEYS}"),
                ))
            }
            _ => {}
        }
        if self.limits.is_empty() {
            return Err(ConfigError::at("limits", "must contain at least one limit"));
        }
        let max_delay = self.max_delay.map(|d| d.as_nanos());
        for (i, limit) in self.limits.iter().enumerate() {
            limit
                .validate_with(max_delay)
                .map_err(|e| e.in_index(i).in_field("limits"))?;
        }
        match (self.action, self.max_delay) {
            (Action::Delay, None) => {
                return Err(ConfigError::at(
                    "max_delay",
                    "is required with action `delay`",
                ))
            }
            (Action::Reject | Action::Shadow, Some(_)) => {
                return Err(ConfigError::at(
                    "max_delay",
                    "only applies to action `delay`",
                ))
            }
            (Action::Delay, Some(_)) => {
                let paces =
                    |limits: &[Limit]| limits.iter().any(|l| l.algorithm == Algorithm::LeakyBucket);
                if !paces(&self.limits) && !self.tiers.iter().any(|t| paces(&t.reserved)) {
                    return Err(ConfigError::at(
                        "action",
                        "`delay` needs a `leaky_bucket` limit to pace requests with",
                    ));
                }
            }
            _ => {}
        }
        self.response
            .validate()
            .map_err(|e| e.in_field("response"))?;
        for (i, tier) in self.tiers.iter().enumerate() {
            let in_tier = |e: ConfigError| e.in_index(i).in_field("tiers");
            check_name(&tier.name).map_err(|m| in_tier(ConfigError::at("name", m)))?;
            if self.tiers[..i].iter().any(|t| t.name == tier.name) {
                return Err(in_tier(ConfigError::at(
                    "name",
                    format!("duplicate tier name `{}`", tier.name),
                )));
            }
            tier.matches
                .validate()
                .map_err(|e| in_tier(e.in_field("match")))?;
            if tier.reserved.is_empty() {
                return Err(in_tier(ConfigError::at(
                    "reserved",
                    "must contain at least one limit",
                )));
            }
            for (j, limit) in tier.reserved.iter().enumerate() {
                limit
                    .validate_with(max_delay)
                    .map_err(|e| in_tier(e.in_index(j).in_field("reserved")))?;
            }
        }
        Ok(())
    }
}

impl Validate for Match {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.path {
            validate_string_match(path).map_err(|e| e.in_field("path"))?;
        }
        for (i, method) in self.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::new(format!(
                    "`{method}` is not an upper-case HTTP method"
                ))
                .in_index(i)
                .in_field("methods"));
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            validate_header_match(h).map_err(|e| e.in_index(i).in_field("headers"))?;
        }
        for (i, tenant) in self.tenants.iter().enumerate() {
            if tenant.is_empty() {
                return Err(ConfigError::new("must not be empty")
                    .in_index(i)
                    .in_field("tenants"));
            }
        }
        Ok(())
    }
}

/// A path condition: exactly one of `exact`, `prefix`, `regex`, and a regex that compiles.
fn validate_string_match(m: &StringMatch) -> Result<(), ConfigError> {
    let given = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given != 1 {
        return Err(ConfigError::new(
            "needs exactly one of `exact`, `prefix` or `regex`",
        ));
    }
    check_regex(m.regex.as_deref()).map_err(|e| ConfigError::at("regex", e))
}

/// A header condition: a lower-case name, exactly one of `present`, `exact`, `prefix`,
/// `regex`, and a regex that compiles.
fn validate_header_match(h: &HeaderMatch) -> Result<(), ConfigError> {
    check_header_name(&h.name).map_err(|e| ConfigError::at("name", e))?;
    let given = usize::from(h.present.is_some())
        + usize::from(h.exact.is_some())
        + usize::from(h.prefix.is_some())
        + usize::from(h.regex.is_some());
    if given != 1 {
        return Err(ConfigError::new(
            "needs exactly one of `present`, `exact`, `prefix` or `regex`",
        ));
    }
    check_regex(h.regex.as_deref()).map_err(|e| ConfigError::at("regex", e))
}

impl Validate for KeyPart {
    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            KeyPart::Header(name) => {
                check_header_name(name).map_err(|m| ConfigError::at("header", m))
            }
            KeyPart::Property(path) if path.is_empty() || path.iter().any(String::is_empty) => Err(
                ConfigError::at("property", "needs one or more non-empty path segments"),
            ),
            _ => Ok(()),
        }
    }
}

impl Limit {
    /// Validates the limit by building it: `core` owns the rules of each algorithm.
    fn validate_with(&self, max_delay_ns: Option<u64>) -> Result<(), ConfigError> {
        if self.requests == 0 {
            return Err(ConfigError::at("requests", "must be at least 1"));
        }
        if self.per.as_nanos() == 0 {
            return Err(ConfigError::at("per", "must be longer than 0"));
        }
        if self.burst.is_some() && self.algorithm != Algorithm::TokenBucket {
            return Err(ConfigError::at("burst", "only applies to `token_bucket`"));
        }
        if self.sub_windows.is_some() && self.algorithm != Algorithm::SlidingWindow {
            return Err(ConfigError::at(
                "sub_windows",
                "only applies to `sliding_window`",
            ));
        }
        if self.burst == Some(0) {
            return Err(ConfigError::at("burst", "must be at least 1"));
        }
        self.build(max_delay_ns).map(|_| ())
    }

    /// The core limiter this limit describes. `max_delay_ns` is the rule's `max_delay` (action
    /// `delay`); without one a leaky bucket queues nothing and admits only on schedule.
    pub(crate) fn build(&self, max_delay_ns: Option<u64>) -> Result<BuiltLimit, ConfigError> {
        let (requests, per) = (self.requests, self.per.as_nanos());
        let field = |e: LimitError| {
            // Name the JSON field the core error is about.
            let name = match e {
                LimitError::Zero {
                    field: "limit" | "rate",
                }
                | LimitError::RateTooHigh { .. } => "requests",
                LimitError::BurstOverflow { .. } => "burst",
                LimitError::SubWindowsOutOfRange { .. } => "sub_windows",
                LimitError::MaxDelayBelowInterval { .. } => {
                    return ConfigError::new(format!("the rule's `max_delay` is too short: {e}"))
                }
                _ => "per",
            };
            ConfigError::at(name, e.to_string())
        };
        Ok(match self.algorithm {
            Algorithm::FixedWindow => {
                BuiltLimit::Fixed(FixedWindow::try_new(requests, per).map_err(field)?)
            }
            Algorithm::SlidingWindow => BuiltLimit::Sliding(
                SlidingWindow::try_new(
                    requests,
                    per,
                    self.sub_windows.unwrap_or(DEFAULT_SUB_WINDOWS),
                )
                .map_err(field)?,
            ),
            Algorithm::ApproximateSlidingWindow => {
                BuiltLimit::Approx(ApproxSlidingWindow::try_new(requests, per).map_err(field)?)
            }
            Algorithm::TokenBucket => BuiltLimit::Token(
                TokenBucket::try_new(requests, per, self.burst.unwrap_or(requests))
                    .map_err(field)?,
            ),
            Algorithm::LeakyBucket => {
                // Without a queue the pacer may hold nothing: the smallest valid maximum delay
                // (one emission interval) with every positive delay turned into a rejection.
                let interval = per.div_ceil(u64::from(requests));
                let max_delay = max_delay_ns.unwrap_or(interval);
                BuiltLimit::Leaky(LeakyBucket::try_new(requests, per, max_delay).map_err(field)?)
            }
        })
    }
}

/// A validated core limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuiltLimit {
    Fixed(FixedWindow),
    Sliding(SlidingWindow),
    Approx(ApproxSlidingWindow),
    Token(TokenBucket),
    Leaky(LeakyBucket),
}

impl Validate for Response {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(400..=599).contains(&self.status) {
            return Err(ConfigError::at("status", "must be between 400 and 599"));
        }
        for name in self.headers.keys() {
            check_header_name(name).map_err(|m| ConfigError::at(name, m).in_field("headers"))?;
        }
        Ok(())
    }
}

/// Names used in stats and shared-data keys: 1 to 64 of `[A-Za-z0-9_-]`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1 to 64 letters, digits, `_` or `-`"
        ))
    }
}

/// Header names as Envoy's codecs present them: lower case, no pseudo-headers.
fn check_header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a lower-case header name (pseudo-headers are matched with `path`/`methods`)"
        ))
    }
}

fn check_regex(regex: Option<&str>) -> Result<(), String> {
    match regex {
        Some(pattern) => regex_lite::Regex::new(pattern)
            .map(|_| ())
            .map_err(|e| format!("invalid regular expression: {e}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use meshguard_filter_common::parse_config;

    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        parse_config::<Config>(json.as_bytes()).map_err(|e| e.to_string())
    }

    fn error(json: &str) -> String {
        parse(json).unwrap_err()
    }

    /// A config with one rule whose body is `rule` (JSON members without braces).
    fn one_rule(rule: &str) -> String {
        format!(r#"{{"rules":[{{"name":"r",{rule}}}]}}"#)
    }

    const LIMIT: &str = r#""limits":[{"algorithm":"fixed_window","requests":2,"per":"1s"}]"#;

    #[test]
    fn a_full_config_parses() {
        let config = parse(
            r#"{
              "domain": "edge",
              "rules": [{
                "name": "api-per-user",
                "match": {
                  "path": {"prefix": "/api/"},
                  "methods": ["GET", "POST"],
                  "headers": [{"name": "x-env", "exact": "prod"}, {"name": "x-debug", "present": false}],
                  "tenants": ["acme"]
                },
                "key": [{"header": "x-user"}, "client_ip", "method", "path", "tenant",
                        {"property": ["metadata", "filter_metadata", "jwt", "sub"]}, {"constant": "v1"}],
                "on_missing_key": "skip",
                "max_keys": 4096,
                "limits": [
                  {"algorithm": "token_bucket", "requests": 10, "per": "1s", "burst": 20},
                  {"algorithm": "sliding_window", "requests": 1000, "per": "1m", "sub_windows": 6},
                  {"algorithm": "leaky_bucket", "requests": 5, "per": "1s"}
                ],
                "action": "delay",
                "max_delay": "2s",
                "response": {"status": 503, "body": "busy", "headers": {"x-reason": "quota"}},
                "ratelimit_headers": "always",
                "tiers": [{"name": "gold", "match": {"headers": [{"name": "x-plan", "exact": "gold"}]},
                           "priority": 10, "reserved": [{"algorithm": "fixed_window", "requests": 5, "per": "1s"}]}]
              }]
            }"#,
        )
        .unwrap();
        let rule = &config.rules[0];
        assert_eq!(config.domain, "edge");
        assert_eq!(rule.key.len(), 7);
        assert_eq!(rule.key[1], KeyPart::ClientIp);
        assert_eq!(rule.action, Action::Delay);
        assert_eq!(rule.max_delay, Some(Duration::from_nanos(2_000_000_000)));
        assert_eq!(rule.limits[0].burst, Some(20));
        assert_eq!(rule.tiers[0].priority, 10);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = parse(&one_rule(LIMIT)).unwrap();
        let rule = &config.rules[0];
        assert_eq!(config.domain, "default");
        assert_eq!(rule.action, Action::Reject);
        assert_eq!(rule.response.status, 429);
        assert_eq!(rule.on_missing_key, OnMissingKey::Shared);
        assert_eq!(rule.ratelimit_headers, HeadersMode::OnReject);
        assert_eq!(rule.matches, Match::default());
        assert!(rule.key.is_empty() && rule.tiers.is_empty() && rule.max_keys.is_none());
    }

    #[test]
    fn an_impossible_limit_names_its_field() {
        let limits = r#""limits":[{"algorithm":"fixed_window","requests":1,"per":"1s"},
                                  {"algorithm":"fixed_window","requests":0,"per":"1s"}]"#;
        assert_eq!(
            error(&one_rule(limits)),
            "rules[0].limits[1].requests: must be at least 1"
        );
        let zero_window = r#""limits":[{"algorithm":"token_bucket","requests":1,"per":"0s"}]"#;
        assert_eq!(
            error(&one_rule(zero_window)),
            "rules[0].limits[0].per: must be longer than 0"
        );
        let fast = r#""limits":[{"algorithm":"token_bucket","requests":10,"per":"5ns"}]"#;
        assert!(error(&one_rule(fast)).starts_with("rules[0].limits[0].requests: rate (10)"));
        let subs =
            r#""limits":[{"algorithm":"sliding_window","requests":1,"per":"1s","sub_windows":9}]"#;
        assert!(error(&one_rule(subs)).starts_with("rules[0].limits[0].sub_windows: "));
        let burst = r#""limits":[{"algorithm":"fixed_window","requests":1,"per":"1s","burst":3}]"#;
        assert_eq!(
            error(&one_rule(burst)),
            "rules[0].limits[0].burst: only applies to `token_bucket`"
        );
    }

    #[test]
    fn syntax_and_type_errors_name_their_field() {
        let bad_duration = r#""limits":[{"algorithm":"fixed_window","requests":1,"per":"1 sec"}]"#;
        assert!(
            error(&one_rule(bad_duration)).starts_with("rules[0].limits[0].per: invalid duration")
        );
        let bad_algorithm = r#""limits":[{"algorithm":"magic","requests":1,"per":"1s"}]"#;
        assert!(error(&one_rule(bad_algorithm))
            .starts_with("rules[0].limits[0].algorithm: unknown variant `magic`"));
        let unknown = format!(r#"{LIMIT},"limit":3"#);
        assert!(error(&one_rule(&unknown)).starts_with("rules[0].limit: unknown field `limit`"));
        let bad_key = format!(r#"{LIMIT},"key":[{{"cookie":"a"}}]"#);
        assert!(error(&one_rule(&bad_key)).starts_with("rules[0].key[0]: unknown variant `cookie`"));
        assert!(error(r#"{"rules":[]}"#).starts_with("rules: must contain at least one rule"));
        let eof = error("{");
        assert!(eof.contains("EOF while parsing"), "{eof}");
    }

    #[test]
    fn matches_are_validated() {
        let two = format!(r#"{LIMIT},"match":{{"path":{{"exact":"/a","prefix":"/b"}}}}"#);
        assert_eq!(
            error(&one_rule(&two)),
            "rules[0].match.path: needs exactly one of `exact`, `prefix` or `regex`"
        );
        let regex = format!(r#"{LIMIT},"match":{{"headers":[{{"name":"x-a","regex":"("}}]}}"#);
        assert!(error(&one_rule(&regex))
            .starts_with("rules[0].match.headers[0].regex: invalid regular expression"));
        let upper = format!(r#"{LIMIT},"match":{{"headers":[{{"name":"X-A","present":true}}]}}"#);
        assert!(error(&one_rule(&upper))
            .starts_with("rules[0].match.headers[0].name: `X-A` is not a lower-case"));
        let method = format!(r#"{LIMIT},"match":{{"methods":["GET","post"]}}"#);
        assert!(error(&one_rule(&method)).starts_with("rules[0].match.methods[1]: `post`"));
    }

    #[test]
    fn actions_and_tiers_are_validated() {
        let no_delay = format!(r#"{LIMIT},"action":"delay""#);
        assert_eq!(
            error(&one_rule(&no_delay)),
            "rules[0].max_delay: is required with action `delay`"
        );
        let no_pacer = format!(r#"{LIMIT},"action":"delay","max_delay":"1s""#);
        assert!(error(&one_rule(&no_pacer))
            .starts_with("rules[0].action: `delay` needs a `leaky_bucket`"));
        let short = r#""limits":[{"algorithm":"leaky_bucket","requests":1,"per":"1s"}],"action":"delay","max_delay":"1ms""#;
        assert!(error(&one_rule(short))
            .starts_with("rules[0].limits[0]: the rule's `max_delay` is too short"));
        let stray = format!(r#"{LIMIT},"max_delay":"1s""#);
        assert_eq!(
            error(&one_rule(&stray)),
            "rules[0].max_delay: only applies to action `delay`"
        );
        let status = format!(r#"{LIMIT},"response":{{"status":200}}"#);
        assert_eq!(
            error(&one_rule(&status)),
            "rules[0].response.status: must be between 400 and 599"
        );
        let tier = format!(
            r#"{LIMIT},"tiers":[{{"name":"gold","match":{{}},"reserved":[{{"algorithm":"token_bucket","requests":0,"per":"1s"}}]}}]"#
        );
        assert_eq!(
            error(&one_rule(&tier)),
            "rules[0].tiers[0].reserved[0].requests: must be at least 1"
        );
        let max_keys = format!(r#"{LIMIT},"max_keys":10"#);
        assert_eq!(
            error(&one_rule(&max_keys)),
            "rules[0].max_keys: only applies to a rule with a key"
        );
        let dup = format!(r#"{{"rules":[{{"name":"a",{LIMIT}}},{{"name":"a",{LIMIT}}}]}}"#);
        assert_eq!(error(&dup), "rules[1].name: duplicate rule name `a`");
        let name = format!(r#"{{"rules":[{{"name":"a b",{LIMIT}}}]}}"#);
        assert!(error(&name).starts_with("rules[0].name: `a b` must be"));
    }

    #[test]
    fn durations_print_in_their_largest_exact_unit() {
        assert_eq!(Duration::from_nanos(1_500_000_000).to_string(), "1500ms");
        assert_eq!(Duration::from_nanos(120_000_000_000).to_string(), "2m");
        assert_eq!(Duration::from_nanos(0).to_string(), "0s");
    }

    /// `config.schema.json` is generated from these types; regenerate it with
    /// `UPDATE_SCHEMA=1 cargo test -p meshguard-ratelimit schema`.
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
            "{} is stale: run `UPDATE_SCHEMA=1 cargo test -p meshguard-ratelimit schema`",
            path.display()
        );
    }
}
