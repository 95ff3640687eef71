//! EDS for services that span several Consul datacenters: one Envoy priority level per
//! datacenter, local first. Envoy sends a priority's traffic on to the next one only as far
//! as it lacks healthy endpoints (with the default overprovisioning factor 1.4, P0 keeps
//! everything while at least 5/7 of its weight is healthy), so the local datacenter serves
//! while it can and the others take over by health, without a control-plane round trip.
//!
//! The per-locality grouping (zone) and the health/weight mapping are `convert`'s; this adds
//! the priority and the region (the datacenter). Priorities are dense ranks of the levels
//! present (Envoy expects 0..N): a datacenter with no endpoint left gives its rank to the next.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::{Endpoint, Registry};
use crate::convert::{self, ConvertError, ConvertOptions};
use crate::rules::Rules;
use crate::xds::cache::{Resource, ResourceType, Snapshot};

/// Whether `instances` span several priority levels (several datacenters).
fn multi_level(instances: &[Endpoint]) -> bool {
    instances.iter().any(|e| e.priority > 0)
}

/// The service's endpoints: one priority per datacenter level (dense, local first), one
/// locality per zone within it, the region set to the datacenter.
pub fn load_assignment(service: &str, instances: &[Endpoint]) -> ClusterLoadAssignment {
    let mut levels: BTreeMap<u32, Vec<Endpoint>> = BTreeMap::new();
    for e in instances {
        levels.entry(e.priority).or_default().push(e.clone());
    }
    let mut cla = ClusterLoadAssignment {
        cluster_name: service.to_string(),
        ..Default::default()
    };
    for (rank, group) in (0u32..).zip(levels.into_values()) {
        let region = group
            .iter()
            .find_map(|e| e.datacenter.clone())
            .unwrap_or_default();
        for mut locality in convert::load_assignment(service, &group).endpoints {
            locality.priority = rank;
            locality
                .locality
                .get_or_insert_with(Locality::default)
                .region
                .clone_from(&region);
            cla.endpoints.push(locality);
        }
    }
    cla
}

/// The EDS resource of `service`: `convert`'s for a single-datacenter service, one priority
/// per datacenter otherwise.
pub(crate) fn endpoint_resource(service: &str, instances: &[Endpoint]) -> Resource {
    if !multi_level(instances) {
        return convert::endpoint_resource(service, instances);
    }
    let cla = load_assignment(service, instances);
    Resource {
        name: service.to_string(),
        body: Any {
            type_url: ClusterLoadAssignment::type_url(),
            value: cla.encode_to_vec(),
        },
        refs: Vec::new(),
    }
}

/// `convert::snapshot` with the EDS resources of multi-datacenter services replaced by their
/// prioritized form.
pub(crate) fn snapshot(
    registry: &Registry,
    rules: &Rules,
    options: &ConvertOptions,
) -> Result<Snapshot, ConvertError> {
    let snapshot = convert::snapshot(registry, rules, options)?;
    let eds = snapshot.set(ResourceType::Endpoint);
    let updates: Vec<Resource> = registry
        .services
        .iter()
        .filter(|(name, instances)| multi_level(instances) && eds.get(name).is_some())
        .map(|(name, instances)| endpoint_resource(name, instances))
        .collect();
    if updates.is_empty() {
        return Ok(snapshot);
    }
    Ok(snapshot.with_updates(ResourceType::Endpoint, updates)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::registry::Health;

    fn ep(address: &str, dc: &str, priority: u32, zone: Option<&str>) -> Endpoint {
        Endpoint {
            datacenter: Some(dc.into()),
            priority,
            zone: zone.map(str::to_string),
            ..Endpoint::new(address, 80)
        }
    }

    #[test]
    fn each_datacenter_is_a_priority_level_with_its_region() {
        let cla = load_assignment(
            "orders",
            &[
                ep("10.0.1.1", "dc2", 1, None),
                ep("10.0.0.1", "dc1", 0, Some("a")),
                ep("10.0.0.2", "dc1", 0, Some("b")),
            ],
        );
        let levels: Vec<(u32, String, String, usize)> = cla
            .endpoints
            .iter()
            .map(|l| {
                let loc = l.locality.clone().unwrap_or_default();
                (l.priority, loc.region, loc.zone, l.lb_endpoints.len())
            })
            .collect();
        assert_eq!(
            levels,
            vec![
                (0, "dc1".into(), "a".into(), 1),
                (0, "dc1".into(), "b".into(), 1),
                (1, "dc2".into(), String::new(), 1),
            ]
        );
    }

    #[test]
    fn priorities_stay_dense_when_the_local_datacenter_is_empty() {
        let cla = load_assignment(
            "orders",
            &[
                ep("10.0.2.1", "dc3", 2, None),
                ep("10.0.1.1", "dc2", 1, None),
            ],
        );
        let levels: Vec<(u32, String)> = cla
            .endpoints
            .iter()
            .map(|l| (l.priority, l.locality.clone().unwrap_or_default().region))
            .collect();
        assert_eq!(levels, vec![(0, "dc2".into()), (1, "dc3".into())]);
    }

    #[test]
    fn a_single_datacenter_service_is_converts_own_resource() {
        let instances = [Endpoint {
            health: Health::Warning,
            ..ep("10.0.0.1", "dc1", 0, Some("a"))
        }];
        assert_eq!(
            endpoint_resource("orders", &instances),
            convert::endpoint_resource("orders", &instances)
        );
    }
}
