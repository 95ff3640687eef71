//! The balancers' view of one upstream instance: where it is, how much traffic it should get,
//! where it runs and whether the registry says it is healthy.

use core::net::IpAddr;
use core::num::{NonZeroU16, NonZeroU32};

use super::BalanceError;

/// One upstream instance, validated: a non-empty id, an IP address or DNS name, a port in
/// 1..=65535 and a weight ≥ 1.
#[derive(Debug, Clone)]
pub struct Instance {
    id: String,
    host: String,
    port: NonZeroU16,
    weight: NonZeroU32,
    /// `weight` as f64, so float-scored picks skip a conversion per instance.
    weight_f64: f64,
    datacenter: Option<String>,
    zone: Option<String>,
    healthy: bool,
}

// `weight_f64` follows from `weight`: equality ignores it (and stays total, `Eq`).
impl PartialEq for Instance {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.host == other.host
            && self.port == other.port
            && self.weight == other.weight
            && self.datacenter == other.datacenter
            && self.zone == other.zone
            && self.healthy == other.healthy
    }
}

impl Eq for Instance {}

impl Instance {
    /// Validates `id` (non-empty, unique within a list), `host` (an IP address or a DNS name),
    /// `port` (1..=65535) and `weight` (≥ 1, relative to the other instances). The instance
    /// starts healthy, with no datacenter or zone.
    pub fn try_new(
        id: impl Into<String>,
        host: impl Into<String>,
        port: u32,
        weight: u32,
    ) -> Result<Self, BalanceError> {
        let id = id.into();
        if id.is_empty() {
            return Err(BalanceError::Empty { field: "id" });
        }
        let host = host.into();
        if host.is_empty() {
            return Err(BalanceError::Empty { field: "address" });
        }
        if host.parse::<IpAddr>().is_err() && !is_dns_name(&host) {
            return Err(BalanceError::BadAddress { got: host });
        }
        let port =
            u16::try_from(port)
                .ok()
                .and_then(NonZeroU16::new)
                .ok_or(BalanceError::OutOfRange {
                    field: "port",
                    min: 1,
                    max: u64::from(u16::MAX),
                    got: u64::from(port),
                })?;
        let weight = NonZeroU32::new(weight).ok_or(BalanceError::Zero { field: "weight" })?;
        Ok(Self {
            id,
            host,
            port,
            weight,
            weight_f64: f64::from(weight.get()),
            datacenter: None,
            zone: None,
            healthy: true,
        })
    }

    /// The same instance in `datacenter` (empty: none).
    #[must_use]
    pub fn with_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into()).filter(|d| !d.is_empty());
        self
    }

    /// The same instance in `zone` (empty: none).
    #[must_use]
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into()).filter(|z| !z.is_empty());
        self
    }

    /// The same instance marked healthy or not (unhealthy instances are never picked).
    #[must_use]
    pub fn with_healthy(mut self, healthy: bool) -> Self {
        self.healthy = healthy;
        self
    }

    /// The instance's id, unique within its list (consistent hashing keys on it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The IP address or DNS name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub const fn port(&self) -> NonZeroU16 {
        self.port
    }

    /// The relative weight (≥ 1).
    pub const fn weight(&self) -> NonZeroU32 {
        self.weight
    }

    /// The weight as a float.
    pub(crate) const fn weight_f64(&self) -> f64 {
        self.weight_f64
    }

    /// The datacenter, if known.
    pub fn datacenter(&self) -> Option<&str> {
        self.datacenter.as_deref()
    }

    /// The zone, if known.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// Whether the registry reports the instance healthy.
    pub const fn healthy(&self) -> bool {
        self.healthy
    }

    /// `host:port`, with an IPv6 address in brackets: the form Envoy's override_host takes.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A DNS name: 1..=253 characters, dot-separated labels of 1..=63 letters, digits and inner
/// hyphens (a trailing dot allowed).
fn is_dns_name(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ips_and_dns_names() {
        for host in [
            "10.1.10.12",
            "::1",
            "redis.service.consul",
            "node-1",
            "a.b.",
        ] {
            assert!(Instance::try_new("i", host, 80, 1).is_ok(), "{host}");
        }
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        let bad = |id: &str, host: &str, port: u32, weight: u32| {
            Instance::try_new(id, host, port, weight)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(bad("", "h", 1, 1), "id must not be empty");
        assert_eq!(bad("i", "", 1, 1), "address must not be empty");
        assert!(bad("i", "bad host", 1, 1).starts_with("address must be"));
        assert!(bad("i", "-x.y", 1, 1).starts_with("address must be"));
        assert_eq!(
            bad("i", "h", 0, 1),
            "port must be between 1 and 65535, got 0"
        );
        assert_eq!(
            bad("i", "h", 70_000, 1),
            "port must be between 1 and 65535, got 70000"
        );
        assert_eq!(bad("i", "h", 1, 0), "weight must be greater than zero");
    }

    #[test]
    fn authority_brackets_ipv6() {
        let v4 = Instance::try_new("a", "10.0.0.1", 8080, 1).unwrap();
        let v6 = Instance::try_new("b", "fe80::1", 8080, 1).unwrap();
        assert_eq!(v4.authority(), "10.0.0.1:8080");
        assert_eq!(v6.authority(), "[fe80::1]:8080");
    }
}
