//! Per-stream state-of-the-world xDS protocol logic, free of any transport: which resource types
//! Envoy subscribed to (and which names), what was sent with which nonce, what was ACKed, and
//! what was NACKed. A NACKed version is never sent again; a newer snapshot or a changed
//! subscription is.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::cache::{ResourceType, Snapshot};

/// What a request meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// The first request for a type (no nonce): a subscription.
    Subscribe,
    /// Envoy applied the response with this nonce; `version` is now live.
    Ack {
        /// The applied version.
        version: String,
    },
    /// Envoy rejected the response with this nonce.
    Nack(Nack),
    /// A request answering an older response than the last one sent: ignored, as the protocol
    /// requires (Envoy will answer the newer one).
    Stale,
    /// A type this server does not serve: ignored.
    UnknownType(String),
}

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The resource type.
    pub kind: ResourceType,
    /// The version Envoy rejected.
    pub rejected_version: String,
    /// The version Envoy keeps using (empty if none yet).
    pub live_version: String,
    /// Envoy's error message.
    pub error: String,
}

#[derive(Debug, Clone, Default)]
struct Sent {
    version: String,
    nonce: String,
    names: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct TypeState {
    /// Requested names, sorted and deduplicated; empty = wildcard for CDS/LDS.
    names: Vec<String>,
    sent: Option<Sent>,
    acked_version: Option<String>,
    nack: Option<Nack>,
}

/// The protocol state of one ADS stream.
#[derive(Debug, Default)]
pub struct StreamState {
    node_id: Option<String>,
    next_nonce: u64,
    types: BTreeMap<ResourceType, TypeState>,
}

impl StreamState {
    /// A fresh stream with no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node id from the first request that carried one.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The version Envoy last ACKed for `kind`.
    pub fn acked_version(&self, kind: ResourceType) -> Option<&str> {
        self.types.get(&kind)?.acked_version.as_deref()
    }

    /// The last NACK for `kind` (cleared by a later ACK).
    pub fn last_nack(&self, kind: ResourceType) -> Option<&Nack> {
        self.types.get(&kind)?.nack.as_ref()
    }

    /// Records a request from Envoy and says what it meant.
    pub fn on_request(&mut self, request: &DiscoveryRequest) -> RequestKind {
        if self.node_id.is_none() {
            if let Some(node) = request.node.as_ref().filter(|n| !n.id.is_empty()) {
                self.node_id = Some(node.id.clone());
            }
        }
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            return RequestKind::UnknownType(request.type_url.clone());
        };
        let state = self.types.entry(kind).or_default();
        if !request.response_nonce.is_empty() {
            let current = state.sent.as_ref().map(|s| s.nonce.as_str());
            if current != Some(request.response_nonce.as_str()) {
                return RequestKind::Stale;
            }
        }
        let mut names = request.resource_names.clone();
        names.sort();
        names.dedup();
        state.names = names;
        if request.response_nonce.is_empty() {
            if !request.version_info.is_empty() && state.sent.is_none() {
                // A reconnecting Envoy says what it already has. Versions are content hashes,
                // so if the snapshot still has that version there is nothing to send: a
                // control-plane restart causes no config churn.
                state.sent = Some(Sent {
                    version: request.version_info.clone(),
                    nonce: String::new(),
                    names: state.names.clone(),
                });
                state.acked_version = Some(request.version_info.clone());
            }
            return RequestKind::Subscribe;
        }
        match &request.error_detail {
            Some(status) => {
                let nack = Nack {
                    kind,
                    rejected_version: state
                        .sent
                        .as_ref()
                        .map(|s| s.version.clone())
                        .unwrap_or_default(),
                    live_version: request.version_info.clone(),
                    error: status.message.clone(),
                };
                state.nack = Some(nack.clone());
                RequestKind::Nack(nack)
            }
            None => {
                state.acked_version = Some(request.version_info.clone());
                state.nack = None;
                RequestKind::Ack {
                    version: request.version_info.clone(),
                }
            }
        }
    }

    /// The responses to send now for `snapshot`: for every subscribed type whose version or
    /// requested names differ from what was last sent. Sending the same version for the same
    /// names again never happens, so a NACKed version is not resent.
    pub fn responses(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        for kind in ResourceType::ALL {
            let Some(state) = self.types.get_mut(&kind) else {
                continue;
            };
            let version = snapshot.version(kind);
            if let Some(sent) = &state.sent {
                if sent.version == version && sent.names == state.names {
                    continue;
                }
            }
            self.next_nonce += 1;
            let nonce = self.next_nonce.to_string();
            let resources = snapshot
                .select(kind, &state.names)
                .into_iter()
                .map(|r| r.body.clone())
                .collect();
            state.sent = Some(Sent {
                version: version.to_string(),
                nonce: nonce.clone(),
                names: state.names.clone(),
            });
            out.push(DiscoveryResponse {
                version_info: version.to_string(),
                resources,
                type_url: kind.type_url().to_string(),
                nonce,
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

    use super::super::cache::Resource;
    use super::*;

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

    fn snapshot(services: &[&str], tag: &[u8]) -> Snapshot {
        Snapshot::try_new(
            services
                .iter()
                .map(|s| res(ResourceType::Cluster, s, tag, &[s]))
                .collect(),
            services
                .iter()
                .map(|s| res(ResourceType::Endpoint, s, tag, &[]))
                .collect(),
            vec![],
            vec![],
        )
        .unwrap()
    }

    fn request(kind: ResourceType, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.to_string(),
            node: Some(Node {
                id: "envoy-1".into(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: kind.type_url().to_string(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    fn nack(kind: ResourceType, version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad config".into(),
                ..Default::default()
            }),
            ..request(kind, version, nonce, &[])
        }
    }

    #[test]
    fn subscribes_then_sends_once_per_version() {
        let mut stream = StreamState::new();
        let snap = snapshot(&["a"], b"1");
        assert_eq!(
            stream.on_request(&request(ResourceType::Cluster, "", "", &[])),
            RequestKind::Subscribe
        );
        assert_eq!(stream.node_id(), Some("envoy-1"));
        let sent = stream.responses(&snap);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].resources.len(), 1);
        assert_eq!(sent[0].version_info, snap.version(ResourceType::Cluster));
        let ack = request(
            ResourceType::Cluster,
            &sent[0].version_info,
            &sent[0].nonce,
            &[],
        );
        assert!(matches!(stream.on_request(&ack), RequestKind::Ack { .. }));
        assert!(
            stream.responses(&snap).is_empty(),
            "same version is not resent"
        );
        assert_eq!(
            stream.acked_version(ResourceType::Cluster),
            Some(snap.version(ResourceType::Cluster))
        );
        let newer = snapshot(&["a", "b"], b"2");
        let sent = stream.responses(&newer);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].resources.len(), 2);
    }

    #[test]
    fn a_nacked_version_is_not_resent_but_a_newer_one_is() {
        let mut stream = StreamState::new();
        let bad = snapshot(&["a"], b"bad");
        stream.on_request(&request(ResourceType::Cluster, "", "", &[]));
        let sent = stream.responses(&bad);
        let kind = stream.on_request(&nack(ResourceType::Cluster, "", &sent[0].nonce));
        let RequestKind::Nack(n) = kind else {
            panic!("expected a NACK, got {kind:?}");
        };
        assert_eq!(n.rejected_version, bad.version(ResourceType::Cluster));
        assert_eq!(n.error, "bad config");
        assert_eq!(stream.last_nack(ResourceType::Cluster), Some(&n));
        for _ in 0..3 {
            assert!(stream.responses(&bad).is_empty(), "no resend loop");
        }
        let good = snapshot(&["a"], b"good");
        let sent = stream.responses(&good);
        assert_eq!(sent.len(), 1);
        let ack = request(
            ResourceType::Cluster,
            &sent[0].version_info,
            &sent[0].nonce,
            &[],
        );
        stream.on_request(&ack);
        assert!(stream.last_nack(ResourceType::Cluster).is_none());
    }

    #[test]
    fn a_reconnecting_envoy_that_has_the_current_version_gets_nothing() {
        let snap = snapshot(&["a"], b"1");
        let mut stream = StreamState::new();
        let version = snap.version(ResourceType::Cluster).to_string();
        stream.on_request(&request(ResourceType::Cluster, &version, "", &[]));
        assert!(stream.responses(&snap).is_empty());
        assert_eq!(
            stream.acked_version(ResourceType::Cluster),
            Some(version.as_str())
        );
        // One with an older version gets the current one.
        let mut stream = StreamState::new();
        stream.on_request(&request(ResourceType::Cluster, "old", "", &[]));
        assert_eq!(stream.responses(&snap).len(), 1);
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let mut stream = StreamState::new();
        stream.on_request(&request(ResourceType::Endpoint, "", "", &["a"]));
        let first = stream.responses(&snapshot(&["a", "b"], b"1"));
        let _second = stream.responses(&snapshot(&["a", "b"], b"2"));
        let late = request(ResourceType::Endpoint, "", &first[0].nonce, &["a", "b"]);
        assert_eq!(stream.on_request(&late), RequestKind::Stale);
        assert!(stream.responses(&snapshot(&["a", "b"], b"2")).is_empty());
    }

    #[test]
    fn changed_names_get_the_same_version_again_filtered() {
        let mut stream = StreamState::new();
        let snap = snapshot(&["a", "b"], b"1");
        stream.on_request(&request(ResourceType::Endpoint, "", "", &["a"]));
        let sent = stream.responses(&snap);
        assert_eq!(sent[0].resources.len(), 1);
        let more = request(
            ResourceType::Endpoint,
            &sent[0].version_info,
            &sent[0].nonce,
            &["a", "b"],
        );
        stream.on_request(&more);
        let sent = stream.responses(&snap);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].resources.len(), 2);
    }

    #[test]
    fn unknown_types_and_unsubscribed_types_send_nothing() {
        let mut stream = StreamState::new();
        let mut req = request(ResourceType::Cluster, "", "", &[]);
        req.type_url =
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into();
        assert!(matches!(
            stream.on_request(&req),
            RequestKind::UnknownType(_)
        ));
        assert!(stream.responses(&snapshot(&["a"], b"1")).is_empty());
    }
}
