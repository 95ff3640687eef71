//! `GET /v1/health/service/:service` → instances.
//!
//! Tolerant of fields we do not use (Consul adds fields between versions), strict on those we
//! need: an entry with a missing or ill-typed `Service.ID`, `Service.Port`, or `Node.Address`,
//! an out-of-range port, a bad address or bad weights is skipped with a reason; the response
//! as a whole is rejected only when it is not a JSON array or nothing usable is left.
//!
//! Health: the worst status among the entry's checks (node and service) decides, as Consul's
//! own `?passing` does: `critical` (or any unknown status, maintenance included) takes the
//! instance out; `warning` gives it `Service.Weights.Warning` (out when that is 0, or when the
//! policy takes passing instances only); `passing` (or no checks) gives `Weights.Passing`.
//! Missing `Weights` default to Consul's 1/1.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{ConsulError, SkipReason, Skipped};
use crate::Instance;

/// Which health states make an instance usable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Only instances whose checks all pass (`warning` counts as out).
    pub passing_only: bool,
}

/// The aggregated state of an instance's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckStatus {
    /// All checks pass (or there are none).
    Passing,
    /// At least one check warns, none is critical.
    Warning,
    /// At least one check is critical or unknown.
    Critical,
}

/// One usable instance of a service, with what Consul says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulInstance {
    /// The balancers' view: id `Node.Node/Service.ID`, address (`Service.Address`, else
    /// `Node.Address`), port, weight from health and `Weights`, `Node.Datacenter`,
    /// `Service.Meta.zone`.
    pub instance: Instance,
    /// `Service.Service`, the service name.
    pub service: String,
    /// `Service.ID`.
    pub service_id: String,
    /// `Node.Node`, the node name.
    pub node: String,
    /// The aggregated check status (`Passing` or `Warning`).
    pub status: CheckStatus,
    /// `Service.Tags`.
    pub tags: Vec<String>,
    /// `Service.Meta.tenant`.
    pub tenant: Option<String>,
    /// `Service.Meta.group`.
    pub group: Option<String>,
    /// `Service.Meta.secure == "true"` (Spring Cloud Consul's TLS flag).
    pub secure: bool,
    /// All of `Service.Meta`.
    pub meta: BTreeMap<String, String>,
}

/// The usable instances of a health response and the entries left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthList {
    /// Usable instances, in response order, with unique ids; never empty.
    pub instances: Vec<ConsulInstance>,
    /// Entries left out, with reasons.
    pub skipped: Vec<Skipped>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
    #[serde(default)]
    checks: Option<Vec<Check>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(rename = "Node")]
    name: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Service")]
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: i64,
    warning: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    status: String,
}

/// Parses a `/v1/health/service/:service` body under `policy`. `Err` means: keep the last
/// good list ([`ConsulError::NoInstances`] and [`ConsulError::NoUsableInstances`] tell an
/// empty or all-unhealthy service apart from a malformed response).
pub fn parse_health_service(body: &[u8], policy: HealthPolicy) -> Result<HealthList, ConsulError> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| ConsulError::Shape {
            expected: "a json array",
            detail: e.to_string(),
        })?;
    if entries.is_empty() {
        return Err(ConsulError::NoInstances);
    }
    let mut instances = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    let mut seen = BTreeSet::new();
    let total = entries.len();
    for (position, value) in entries.into_iter().enumerate() {
        let service_id = value
            .get("Service")
            .and_then(|s| s.get("ID"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let result = serde_json::from_value::<Entry>(value)
            .map_err(|e| SkipReason::Malformed(e.to_string()))
            .and_then(|entry| convert(entry, policy));
        match result {
            Ok(found) if !seen.insert(found.instance.id().to_owned()) => skipped.push(Skipped {
                position,
                service_id,
                reason: SkipReason::Duplicate(found.instance.id().to_owned()),
            }),
            Ok(found) => instances.push(found),
            Err(reason) => skipped.push(Skipped {
                position,
                service_id,
                reason,
            }),
        }
    }
    if instances.is_empty() {
        return Err(ConsulError::NoUsableInstances {
            entries: total,
            skipped,
        });
    }
    Ok(HealthList { instances, skipped })
}

fn status_of(checks: &[Check]) -> CheckStatus {
    checks
        .iter()
        .map(|c| match c.status.as_str() {
            "passing" => CheckStatus::Passing,
            "warning" => CheckStatus::Warning,
            _ => CheckStatus::Critical,
        })
        .max()
        .unwrap_or(CheckStatus::Passing)
}

fn convert(entry: Entry, policy: HealthPolicy) -> Result<ConsulInstance, SkipReason> {
    let Entry {
        node,
        service,
        checks,
    } = entry;
    if service.id.is_empty() {
        return Err(SkipReason::Malformed("Service.ID is empty".to_owned()));
    }
    let port = service.port.ok_or(SkipReason::MissingPort)?;
    let port = u32::try_from(port)
        .ok()
        .filter(|p| (1..=u32::from(u16::MAX)).contains(p))
        .ok_or(SkipReason::PortOutOfRange(port))?;
    let (passing, warning) = service
        .weights
        .as_ref()
        .map_or((1, 1), |w| (w.passing, w.warning));
    let passing = u32::try_from(passing)
        .ok()
        .filter(|&p| p > 0)
        .ok_or(SkipReason::BadWeight {
            field: "Passing",
            requirement: "a positive 32-bit integer",
            got: passing,
        })?;
    let warning = u32::try_from(warning).map_err(|_| SkipReason::BadWeight {
        field: "Warning",
        requirement: "a non-negative 32-bit integer",
        got: warning,
    })?;
    let status = status_of(checks.as_deref().unwrap_or_default());
    let weight = match status {
        CheckStatus::Passing => passing,
        CheckStatus::Warning if policy.passing_only || warning == 0 => {
            return Err(SkipReason::Warning)
        }
        CheckStatus::Warning => warning,
        CheckStatus::Critical => return Err(SkipReason::Critical),
    };
    let address = service
        .address
        .filter(|a| !a.is_empty())
        .unwrap_or(node.address);
    let meta = service.meta.unwrap_or_default();
    let meta_str = |key: &str| meta.get(key).filter(|v| !v.is_empty()).cloned();
    let mut instance = Instance::try_new(
        format!("{}/{}", node.name, service.id),
        address,
        port,
        weight,
    )
    .map_err(SkipReason::Invalid)?;
    if let Some(dc) = node.datacenter {
        instance = instance.with_datacenter(dc);
    }
    if let Some(zone) = meta_str("zone") {
        instance = instance.with_zone(zone);
    }
    Ok(ConsulInstance {
        instance,
        service: service.name,
        service_id: service.id,
        node: node.name,
        status,
        tags: service.tags.unwrap_or_default(),
        tenant: meta_str("tenant"),
        group: meta_str("group"),
        secure: meta
            .get("secure")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        meta,
    })
}

/// Parses a `/v1/catalog/services` body: service name → tags (a `null` tag list is empty).
pub fn parse_catalog_services(body: &[u8]) -> Result<BTreeMap<String, Vec<String>>, ConsulError> {
    let services: BTreeMap<String, Option<Vec<String>>> =
        serde_json::from_slice(body).map_err(|e| ConsulError::Shape {
            expected: "a json object of service name to tag list",
            detail: e.to_string(),
        })?;
    Ok(services
        .into_iter()
        .map(|(name, tags)| (name, tags.unwrap_or_default()))
        .collect())
}
