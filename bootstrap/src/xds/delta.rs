//! Per-stream incremental (delta) xDS protocol logic, free of any transport: what Envoy
//! subscribed to per type (wildcard and/or names), which version of each resource it has, and
//! which responses are outstanding. After a snapshot change only the resources whose digest
//! differs from what Envoy has are sent, and resources gone from the snapshot are named in
//! `removed_resources`: one service's endpoint change among 5,000 is one resource on the wire
//! and one cluster update in Envoy (state of the world resends every EDS resource).
//!
//! A NACKed response is not resent: its resources count as delivered, so they go out again
//! only when their content changes (as a NACKed version in state of the world).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};

use super::cache::{ResourceType, Snapshot};
use super::stream::{Nack, RequestKind};

/// Outstanding responses remembered per type (older nonces are forgotten).
const MAX_PENDING: usize = 64;

#[derive(Debug, Clone, Default)]
struct TypeState {
    /// Envoy asked for every resource of the type (`*`, or an empty first request for a
    /// wildcard type).
    wildcard: bool,
    /// Names Envoy asked for explicitly.
    names: BTreeSet<String>,
    /// What Envoy has (or was sent): resource name → digest.
    known: HashMap<String, u64>,
    /// Sent and not yet answered: nonce → the type's snapshot version then.
    pending: BTreeMap<u64, String>,
    acked_version: Option<String>,
    nack: Option<Nack>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// The protocol state of one delta ADS stream.
#[derive(Debug, Default)]
pub struct DeltaStreamState {
    node_id: Option<String>,
    next_nonce: u64,
    types: BTreeMap<ResourceType, TypeState>,
}

fn version_of(digest: u64) -> String {
    format!("{digest:016x}")
}

impl DeltaStreamState {
    /// A fresh stream with no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node id from the first request that carried one.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The snapshot version of `kind` Envoy last ACKed.
    pub fn acked_version(&self, kind: ResourceType) -> Option<&str> {
        self.types.get(&kind)?.acked_version.as_deref()
    }

    /// The last NACK for `kind` (cleared by a later ACK).
    pub fn last_nack(&self, kind: ResourceType) -> Option<&Nack> {
        self.types.get(&kind)?.nack.as_ref()
    }

    /// Records a request from Envoy (subscription changes, ACK or NACK) and says what it
    /// meant.
    pub fn on_request(&mut self, request: &DeltaDiscoveryRequest) -> RequestKind {
        if self.node_id.is_none() {
            if let Some(node) = request.node.as_ref().filter(|n| !n.id.is_empty()) {
                self.node_id = Some(node.id.clone());
            }
        }
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            return RequestKind::UnknownType(request.type_url.clone());
        };
        let first = !self.types.contains_key(&kind);
        let state = self.types.entry(kind).or_default();
        if first {
            if kind.is_wildcard() && request.resource_names_subscribe.is_empty() {
                state.wildcard = true;
            }
            // A reconnecting Envoy says what it has: versions are content digests, so an
            // unchanged resource is not sent again.
            for (name, version) in &request.initial_resource_versions {
                if let Ok(digest) = u64::from_str_radix(version, 16) {
                    state.known.insert(name.clone(), digest);
                }
            }
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
            }
            if !state.wants(name) {
                state.known.remove(name);
            }
        }
        if request.response_nonce.is_empty() {
            return RequestKind::Subscribe;
        }
        let Some(version) = request
            .response_nonce
            .parse::<u64>()
            .ok()
            .and_then(|n| state.pending.remove(&n))
        else {
            return RequestKind::Stale;
        };
        match &request.error_detail {
            Some(status) => {
                let nack = Nack {
                    kind,
                    rejected_version: version,
                    live_version: state.acked_version.clone().unwrap_or_default(),
                    error: status.message.clone(),
                };
                state.nack = Some(nack.clone());
                RequestKind::Nack(nack)
            }
            None => {
                state.acked_version = Some(version.clone());
                state.nack = None;
                RequestKind::Ack { version }
            }
        }
    }

    /// The responses to send now for `snapshot`: per subscribed type, the wanted resources
    /// whose digest differs from what Envoy has, and the ones it has that are gone.
    pub fn responses(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        for kind in ResourceType::ALL {
            let Some(state) = self.types.get_mut(&kind) else {
                continue;
            };
            let set = snapshot.set(kind);
            let mut resources = Vec::new();
            let mut send = |state: &mut TypeState, resource: &super::cache::Resource, digest| {
                if state.known.get(&resource.name) != Some(&digest) {
                    state.known.insert(resource.name.clone(), digest);
                    resources.push(DeltaResource {
                        name: resource.name.clone(),
                        version: version_of(digest),
                        resource: Some(resource.body.clone()),
                        ..Default::default()
                    });
                }
            };
            if state.wildcard {
                for (resource, digest) in set.entries() {
                    send(state, resource, digest);
                }
            } else {
                let names: Vec<String> = state.names.iter().cloned().collect();
                for name in &names {
                    if let Some((resource, digest)) = set.get_with_digest(name) {
                        send(state, resource, digest);
                    }
                }
            }
            let mut removed: Vec<String> = state
                .known
                .keys()
                .filter(|name| set.get(name).is_none())
                .cloned()
                .collect();
            removed.sort();
            for name in &removed {
                state.known.remove(name);
            }
            if resources.is_empty() && removed.is_empty() {
                continue;
            }
            self.next_nonce += 1;
            let nonce = self.next_nonce;
            state.pending.insert(nonce, set.version().to_string());
            while state.pending.len() > MAX_PENDING {
                state.pending.pop_first();
            }
            out.push(DeltaDiscoveryResponse {
                system_version_info: set.version().to_string(),
                resources,
                type_url: kind.type_url().to_string(),
                removed_resources: removed,
                nonce: nonce.to_string(),
                ..Default::default()
            });
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;

    use super::*;
    use crate::xds::cache::Resource;

    fn res(kind: ResourceType, name: &str, bytes: &[u8], refs: &[&str]) -> Resource {
        Resource {
            name: name.to_string(),
            body: Any {
                type_url: kind.type_url().to_string(),
                value: bytes.to_vec(),
            },
            refs: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// Clusters and endpoints for `services`; endpoint bytes carry `tag` for `changed`.
    fn snapshot(services: &[&str], changed: &str, tag: &[u8]) -> Snapshot {
        let eds = |s: &str| {
            let bytes = if s == changed { tag } else { b"e" };
            res(ResourceType::Endpoint, s, bytes, &[])
        };
        Snapshot::try_new(
            services
                .iter()
                .map(|s| res(ResourceType::Cluster, s, b"c", &[s]))
                .collect(),
            services.iter().map(|s| eds(s)).collect(),
            vec![],
            vec![],
        )
        .unwrap()
    }

    fn request(kind: ResourceType, subscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: "n".into(),
                ..Default::default()
            }),
            type_url: kind.type_url().to_string(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn sends_everything_once_then_only_what_changed() {
        let mut stream = DeltaStreamState::new();
        let snap = snapshot(&["a", "b", "c"], "", b"");
        assert_eq!(
            stream.on_request(&request(ResourceType::Cluster, &[], "")),
            RequestKind::Subscribe
        );
        stream.on_request(&request(ResourceType::Endpoint, &["a", "b", "c"], ""));
        let sent = stream.responses(&snap);
        assert_eq!(sent.len(), 2);
        assert_eq!(names(&sent[0]), vec!["a", "b", "c"], "wildcard CDS");
        assert_eq!(names(&sent[1]), vec!["a", "b", "c"]);
        assert!(stream.responses(&snap).is_empty(), "nothing new");

        let changed = snapshot(&["a", "b", "c"], "b", b"e2");
        let sent = stream.responses(&changed);
        assert_eq!(sent.len(), 1, "CDS did not change");
        assert_eq!(sent[0].type_url, ResourceType::Endpoint.type_url());
        assert_eq!(names(&sent[0]), vec!["b"]);
        assert_eq!(
            sent[0].system_version_info,
            changed.version(ResourceType::Endpoint)
        );
        let kind = stream.on_request(&request(ResourceType::Endpoint, &[], &sent[0].nonce));
        assert_eq!(
            kind,
            RequestKind::Ack {
                version: changed.version(ResourceType::Endpoint).to_string()
            }
        );
    }

    #[test]
    fn removed_resources_are_named_and_unsubscribed_ones_are_not_sent() {
        let mut stream = DeltaStreamState::new();
        stream.on_request(&request(ResourceType::Cluster, &[], ""));
        stream.on_request(&request(ResourceType::Endpoint, &["a", "b"], ""));
        stream.responses(&snapshot(&["a", "b"], "", b""));
        let sent = stream.responses(&snapshot(&["a"], "", b""));
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].removed_resources, vec!["b"]);
        assert_eq!(sent[1].removed_resources, vec!["b"]);
        assert!(sent.iter().all(|r| r.resources.is_empty()));

        let mut unsubscribe = request(ResourceType::Endpoint, &[], "");
        unsubscribe.resource_names_unsubscribe = vec!["a".into()];
        stream.on_request(&unsubscribe);
        assert!(stream
            .responses(&snapshot(&["a"], "a", b"new"))
            .iter()
            .all(|r| r.type_url != ResourceType::Endpoint.type_url()));
    }

    #[test]
    fn a_nacked_response_is_not_resent_but_a_newer_change_is() {
        let mut stream = DeltaStreamState::new();
        stream.on_request(&request(ResourceType::Cluster, &[], ""));
        let sent = stream.responses(&snapshot(&["a"], "", b""));
        let mut nack = request(ResourceType::Cluster, &[], &sent[0].nonce);
        nack.error_detail = Some(Status {
            message: "bad cluster".into(),
            ..Default::default()
        });
        let RequestKind::Nack(n) = stream.on_request(&nack) else {
            panic!("not a nack");
        };
        assert_eq!(n.error, "bad cluster");
        assert_eq!(stream.last_nack(ResourceType::Cluster), Some(&n));
        assert!(stream.responses(&snapshot(&["a"], "", b"")).is_empty());
        let sent = stream.responses(&snapshot(&["a", "b"], "", b""));
        assert_eq!(names(&sent[0]), vec!["b"]);
    }

    #[test]
    fn a_reconnecting_envoy_gets_only_what_it_lacks() {
        let snap = snapshot(&["a", "b"], "", b"");
        let mut stream = DeltaStreamState::new();
        let mut first = request(ResourceType::Cluster, &[], "");
        let digest = |n: &str| {
            snap.set(ResourceType::Cluster)
                .get_with_digest(n)
                .unwrap()
                .1
        };
        first.initial_resource_versions =
            HashMap::from([("a".to_string(), version_of(digest("a")))]);
        stream.on_request(&first);
        let sent = stream.responses(&snap);
        assert_eq!(names(&sent[0]), vec!["b"]);
    }
}
