//! The configuration's duration type: JSON strings such as `"500ms"` or `"1m"`, parsed by
//! [`parse_duration`] and printed back in the largest unit that divides them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::parse_duration;

/// A duration written as a whole number and a unit: `ns`, `us`, `ms`, `s`, `m`, `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration {
    nanos: u64,
}

impl Duration {
    /// A duration of `nanos` nanoseconds.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self { nanos }
    }

    /// Nanoseconds.
    pub const fn as_nanos(&self) -> u64 {
        self.nanos
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 6] = [
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let (scale, unit) = UNITS
            .iter()
            .find(|(scale, _)| self.nanos.is_multiple_of(*scale) && self.nanos != 0)
            .copied()
            .unwrap_or((1_000_000_000, "s"));
        write!(f, "{}{unit}", self.nanos / scale)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(Self::from_nanos)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ns|us|ms|s|m|h)$",
            "description": "A whole number and a unit (ns, us, ms, s, m, h), e.g. \"500ms\", \"1s\", \"1m\".",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        assert_eq!(Duration::from_nanos(1_500_000_000).to_string(), "1500ms");
        assert_eq!(Duration::from_nanos(120_000_000_000).to_string(), "2m");
        assert_eq!(Duration::from_nanos(7_000).to_string(), "7us");
        assert_eq!(Duration::from_nanos(0).to_string(), "0s");
    }

    #[test]
    fn durations_round_trip_through_json() {
        let d: Duration = serde_json::from_str(r#""250ms""#).unwrap();
        assert_eq!(d.as_nanos(), 250_000_000);
        assert_eq!(serde_json::to_string(&d).unwrap(), r#""250ms""#);
        let e = serde_json::from_str::<Duration>(r#""1.5s""#).unwrap_err();
        assert!(e.to_string().starts_with("invalid duration `1.5s`"), "{e}");
    }
}
