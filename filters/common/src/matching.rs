//! Compiled request conditions shared by the filters' `match` blocks: a string condition
//! (exact, prefix or regular expression) and a condition on one request header. Each filter
//! assembles these into its own matcher, since their `match` blocks differ (tenants).

use regex_lite::Regex;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// A string condition: exactly one of `exact`, `prefix` or `regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Equal to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Matches this regular expression (`regex-lite` syntax, unanchored: use `^…$` for the
    /// whole value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl StringMatch {
    /// The compiled condition; errors are relative to this condition.
    pub fn compile(&self) -> Result<StringMatcher, ConfigError> {
        StringMatcher::compile(
            self.exact.as_deref(),
            self.prefix.as_deref(),
            self.regex.as_deref(),
        )
    }
}

/// A condition on one request header: exactly one of `present`, `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// The header name as Envoy presents it (lower case; the ratelimit filter rejects other
    /// spellings, the others match case-insensitively).
    pub name: String,
    /// `true`: the header is present; `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// The header's value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The header's value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The header's value matches this regular expression (unanchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl HeaderMatch {
    /// The compiled condition (the name matched case-insensitively); errors are relative to
    /// this condition.
    pub fn compile(&self) -> Result<HeaderMatcher, ConfigError> {
        HeaderMatcher::compile(
            &self.name,
            self.present,
            self.exact.as_deref(),
            self.prefix.as_deref(),
            self.regex.as_deref(),
        )
    }
}

/// A compiled string condition: equal to, starting with, or matching a regular expression.
#[derive(Debug, Clone)]
pub struct StringMatcher(StringCondition);

#[derive(Debug, Clone)]
enum StringCondition {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StringMatcher {
    /// Compiles a condition given as exactly one of `exact`, `prefix` or `regex`; errors are
    /// relative to the condition (a bad pattern names the `regex` field).
    pub fn compile(
        exact: Option<&str>,
        prefix: Option<&str>,
        regex: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let condition = match (exact, prefix, regex) {
            (Some(exact), None, None) => StringCondition::Exact(exact.to_string()),
            (None, Some(prefix), None) => StringCondition::Prefix(prefix.to_string()),
            (None, None, Some(pattern)) => Regex::new(pattern)
                .map(StringCondition::Regex)
                .map_err(|e| {
                    ConfigError::at("regex", format!("invalid regular expression: {e}"))
                })?,
            _ => {
                return Err(ConfigError::new(
                    "needs exactly one of `exact`, `prefix` or `regex`",
                ))
            }
        };
        Ok(Self(condition))
    }

    /// Whether `value` meets the condition (a regular expression is unanchored).
    pub fn matches(&self, value: &str) -> bool {
        match &self.0 {
            StringCondition::Exact(exact) => value == exact,
            StringCondition::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringCondition::Regex(regex) => regex.is_match(value),
        }
    }
}

/// A compiled condition on one request header: present, absent, or a value condition.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    name: String,
    condition: HeaderCondition,
}

#[derive(Debug, Clone)]
enum HeaderCondition {
    Present(bool),
    Value(StringMatcher),
}

impl HeaderMatcher {
    /// Compiles a condition on header `name` (matched case-insensitively) given as exactly one
    /// of `present`, `exact`, `prefix` or `regex`; errors are relative to the condition.
    pub fn compile(
        name: &str,
        present: Option<bool>,
        exact: Option<&str>,
        prefix: Option<&str>,
        regex: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let condition = match (present, exact, prefix, regex) {
            (Some(present), None, None, None) => HeaderCondition::Present(present),
            (Some(_), ..) => {
                return Err(ConfigError::new(
                    "needs exactly one of `present`, `exact`, `prefix` or `regex`",
                ))
            }
            (None, exact, prefix, regex) => {
                HeaderCondition::Value(StringMatcher::compile(exact, prefix, regex)?)
            }
        };
        Ok(Self {
            name: name.to_ascii_lowercase(),
            condition,
        })
    }

    /// The header's name, in lower case as proxy-wasm reports request headers.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the header's first value (`None`: the header is absent) meets the condition.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match &self.condition {
            HeaderCondition::Present(present) => value.is_some() == *present,
            HeaderCondition::Value(m) => value.is_some_and(|v| m.matches(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_conditions_match_exactly_by_prefix_or_by_regex() {
        let exact = StringMatcher::compile(Some("/a"), None, None).unwrap();
        assert!(exact.matches("/a") && !exact.matches("/ab"));
        let prefix = StringMatcher::compile(None, Some("/a"), None).unwrap();
        assert!(prefix.matches("/ab") && !prefix.matches("/b"));
        let regex = StringMatcher::compile(None, None, Some("v[0-9]+")).unwrap();
        assert!(regex.matches("/api/v2/x") && !regex.matches("/api/vx"));
    }

    #[test]
    fn a_string_condition_needs_exactly_one_form() {
        for (exact, prefix, regex) in [(None, None, None), (Some("a"), Some("b"), None)] {
            let e = StringMatcher::compile(exact, prefix, regex).unwrap_err();
            assert_eq!(
                e.to_string(),
                "needs exactly one of `exact`, `prefix` or `regex`"
            );
        }
    }

    #[test]
    fn a_bad_regex_names_its_field() {
        let e = HeaderMatcher::compile("x", None, None, None, Some("(")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("regex: invalid regular expression"),
            "{e}"
        );
    }

    #[test]
    fn header_conditions_test_presence_or_value() {
        let present = HeaderMatcher::compile("X-Debug", Some(true), None, None, None).unwrap();
        assert_eq!(present.name(), "x-debug");
        assert!(present.matches(Some("")) && !present.matches(None));
        let absent = HeaderMatcher::compile("x-debug", Some(false), None, None, None).unwrap();
        assert!(absent.matches(None) && !absent.matches(Some("1")));
        let value = HeaderMatcher::compile("x-env", None, Some("prod"), None, None).unwrap();
        assert!(value.matches(Some("prod")) && !value.matches(Some("dev")) && !value.matches(None));
    }

    #[test]
    fn presence_excludes_value_conditions() {
        let e = HeaderMatcher::compile("x", Some(true), Some("a"), None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "needs exactly one of `present`, `exact`, `prefix` or `regex`"
        );
    }
}
