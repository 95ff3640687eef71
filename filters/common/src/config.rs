//! Plugin configuration: JSON parsed with serde, then validated, failing with ONE error that
//! names the offending field by its path (`rules[0].limits[1].requests: must be at least 1`),
//! so the single log line Envoy shows says exactly what to fix.

use std::fmt;

use serde::de::DeserializeOwned;

/// A configuration that can check what serde's types cannot express (ranges, cross-field rules).
pub trait Validate {
    /// Checks the value; an error's path is relative to this value (see [`ConfigError::in_field`]).
    fn validate(&self) -> Result<(), ConfigError>;
}

/// One step of a path into the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Field(String),
    Index(usize),
}

/// A configuration error: where (a path from the root, possibly empty) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: Vec<Segment>,
    message: String,
}

impl ConfigError {
    /// An error about the value being validated itself.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            path: Vec::new(),
            message: message.into(),
        }
    }

    /// An error about the field `name` of the value being validated.
    pub fn at(name: &str, message: impl Into<String>) -> Self {
        Self::new(message).in_field(name)
    }

    /// Places the error inside the field `name` (call it on the way out, innermost first).
    #[must_use]
    pub fn in_field(mut self, name: &str) -> Self {
        self.path.insert(0, Segment::Field(name.to_string()));
        self
    }

    /// Places the error inside element `index` of a list.
    #[must_use]
    pub fn in_index(mut self, index: usize) -> Self {
        self.path.insert(0, Segment::Index(index));
        self
    }

    /// The path, e.g. `rules[0].limits[1].requests` (empty for the root).
    pub fn path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            match segment {
                Segment::Field(name) if out.is_empty() => out.push_str(name),
                Segment::Field(name) => {
                    out.push('.');
                    out.push_str(name);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// What is wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path(), self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Validates every element of the list field `name`, naming the first bad one (`name[i]…`).
pub fn validate_each<T: Validate>(name: &str, items: &[T]) -> Result<(), ConfigError> {
    for (i, item) in items.iter().enumerate() {
        item.validate().map_err(|e| e.in_index(i).in_field(name))?;
    }
    Ok(())
}

/// Parses the plugin configuration (JSON) and validates it. Unknown fields are rejected by the
/// types (`#[serde(deny_unknown_fields)]`); the error names the field's path either way.
pub fn parse_config<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new(
            "the configuration is empty: expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde_path_to_error prints the root as ".".
        let mut error = ConfigError::new(message);
        if path != "." {
            error.path = vec![Segment::Field(path)];
        }
        error
    })?;
    value.validate()?;
    Ok(value)
}

/// Parses a duration such as `250ms`, `1s`, `5m` or `1h` into nanoseconds. Units: `ns`, `us`,
/// `ms`, `s`, `m`, `h`; the number is a whole number (`1500ms`, not `1.5s`).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let expected = || {
        format!("invalid duration `{text}`: expected a whole number and a unit (ns, us, ms, s, m, h), e.g. `500ms`")
    };
    if digits.is_empty() {
        return Err(expected());
    }
    let scale: u64 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(expected()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("duration `{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        rules: Vec<Rule>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        limits: Vec<Limit>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        requests: u32,
    }

    impl Validate for Root {
        fn validate(&self) -> Result<(), ConfigError> {
            validate_each("rules", &self.rules)
        }
    }

    impl Validate for Rule {
        fn validate(&self) -> Result<(), ConfigError> {
            validate_each("limits", &self.limits)
        }
    }

    impl Validate for Limit {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.requests == 0 {
                return Err(ConfigError::at("requests", "must be at least 1"));
            }
            Ok(())
        }
    }

    fn error(json: &str) -> String {
        parse_config::<Root>(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn validation_errors_name_the_field_path() {
        let e = error(r#"{"rules":[{"limits":[]},{"limits":[{"requests":1},{"requests":0}]}]}"#);
        assert_eq!(e, "rules[1].limits[1].requests: must be at least 1");
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let e = error(r#"{"rules":[{"limits":[{"requests":"ten"}]}]}"#);
        assert!(
            e.starts_with("rules[0].limits[0].requests: invalid type: string \"ten\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let e = error(r#"{"rules":[{"limits":[{"requests":1,"burst":2}]}]}"#);
        assert!(
            e.starts_with("rules[0].limits[0].burst: unknown field `burst`"),
            "{e}"
        );
    }

    #[test]
    fn empty_and_malformed_configs_are_errors() {
        assert_eq!(
            error("  "),
            "the configuration is empty: expected a JSON object"
        );
        assert!(error("{").contains("EOF while parsing"), "{}", error("{"));
        assert!(
            error("3").starts_with("invalid type: integer `3`, expected struct Root"),
            "{}",
            error("3")
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(250_000_000));
        assert_eq!(parse_duration("1s"), Ok(1_000_000_000));
        assert_eq!(parse_duration("2m"), Ok(120_000_000_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000_000_000));
        assert_eq!(parse_duration("7us"), Ok(7_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        for bad in ["", "s", "1", "1.5s", "-1s", "1 s", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("99999999999h")
            .unwrap_err()
            .contains("too long"));
    }
}
