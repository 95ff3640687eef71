//! Trusted source networks: `10.0.0.0/8`, `::1/128`, matched against Envoy's
//! `source.address` (`ip:port`, `[v6]:port` or a bare address).

use std::net::{IpAddr, SocketAddr};

use super::TenantError;

const FIELD: &str = "trusted_cidrs";

/// An IPv4 or IPv6 network; host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Parses `address/prefix_len`; errors name the `trusted_cidrs` field.
    pub fn try_new(cidr: &str) -> Result<Self, TenantError> {
        let bad = |problem| TenantError::invalid(FIELD, problem);
        let (addr, len) = cidr
            .split_once('/')
            .ok_or(bad("entries must be address/prefix_len"))?;
        let network: IpAddr = addr
            .parse()
            .map_err(|_| bad("entries must start with an ipv4 or ipv6 address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = match len.parse() {
            Ok(n) if n <= max && !len.starts_with('+') => n,
            _ => {
                return Err(bad(
                    "prefix_len must be 0..=32 for ipv4 and 0..=128 for ipv6",
                ))
            }
        };
        let cidr = Self {
            network,
            prefix_len,
        };
        if masked(network, prefix_len) != bits(network) {
            return Err(bad("entries must have no host bits set"));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a
    /// dual-stack listener reports it) is matched as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && masked(ip, self.prefix_len) == bits(self.network)
    }
}

impl core::fmt::Display for Cidr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The address of Envoy's `source.address` property (`ip:port`, `[v6]:port` or bare), if
/// it parses.
pub fn parse_source_address(address: &str) -> Option<IpAddr> {
    address
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()
}

/// Whether `source_address` parses and lies in one of `cidrs`.
pub fn is_trusted_source(cidrs: &[Cidr], source_address: &str) -> bool {
    parse_source_address(source_address).is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip)))
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn masked(ip: IpAddr, prefix_len: u8) -> u128 {
    let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let host_bits = width - u32::from(prefix_len).min(width);
    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
    bits(ip) & mask
}
