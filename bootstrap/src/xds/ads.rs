//! The tonic transport: one ADS handler for CDS, EDS, LDS and RDS, state of the world and
//! incremental (delta). It only moves messages between the gRPC stream, [`StreamState`] or
//! [`DeltaStreamState`] and the [`SnapshotCache`]; every protocol decision is in `stream.rs`
//! and `delta.rs`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::cache::{ResourceType, SnapshotCache};
use super::delta::DeltaStreamState;
use super::stream::{RequestKind, StreamState};

/// Responses buffered per stream before the stream task waits for Envoy to read.
const STREAM_BUFFER: usize = 16;
/// NACKs remembered per node for the status endpoint.
const MAX_NACKS_KEPT: usize = 16;

/// What the status endpoint shows about connected Envoys.
#[derive(Debug, Default)]
pub struct XdsStatus {
    nodes: Mutex<BTreeMap<String, NodeStatus>>,
}

/// One node's view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStatus {
    /// Open ADS streams from this node.
    pub streams: u32,
    /// Last ACKed version by type (`cds`, `eds`, `lds`, `rds`).
    pub acked: BTreeMap<&'static str, String>,
    /// NACKs received from this node, total.
    pub nack_count: u64,
    /// The most recent NACKs, oldest first.
    pub nacks: Vec<NackRecord>,
}

/// A NACK as shown on the status endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct NackRecord {
    /// `cds`, `eds`, `lds` or `rds`.
    pub kind: &'static str,
    /// The version Envoy rejected.
    pub rejected_version: String,
    /// The version Envoy kept.
    pub live_version: String,
    /// Envoy's error message.
    pub error: String,
    /// When it arrived, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl XdsStatus {
    fn with_node(&self, node: &str, f: impl FnOnce(&mut NodeStatus)) {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        f(nodes.entry(node.to_string()).or_default());
    }

    /// A copy of every node's status.
    pub fn nodes(&self) -> BTreeMap<String, NodeStatus> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Total NACKs from all nodes.
    pub fn nack_total(&self) -> u64 {
        self.nodes().values().map(|n| n.nack_count).sum()
    }
}

/// The ADS service: serves each node the snapshot the cache holds for it.
#[derive(Debug, Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
    status: Arc<XdsStatus>,
}

impl AdsServer {
    /// A server over `cache`, reporting into `status`.
    pub fn new(cache: Arc<SnapshotCache>, status: Arc<XdsStatus>) -> Self {
        Self { cache, status }
    }

    /// The tonic service to add to a router.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_stream(
            inbound,
            tx,
            Arc::clone(&self.cache),
            Arc::clone(&self.status),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_delta_stream(
            inbound,
            tx,
            Arc::clone(&self.cache),
            Arc::clone(&self.status),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One delta stream's loop: as [`run_stream`], with [`DeltaStreamState`].
async fn run_delta_stream(
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    cache: Arc<SnapshotCache>,
    status: Arc<XdsStatus>,
) {
    let mut state = DeltaStreamState::new();
    let mut generations = cache.subscribe();
    let mut registered: Option<String> = None;
    loop {
        tokio::select! {
            message = inbound.message() => {
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!(error = %err, "delta ads stream error");
                        break;
                    }
                };
                let kind = state.on_request(&request);
                let Some(node) = state.node_id().map(str::to_string) else {
                    let _ = tx.send(Err(Status::invalid_argument("the first request must carry node.id"))).await;
                    break;
                };
                register(&status, &mut registered, &node, "delta ads stream");
                record_kind(&status, &node, &kind, &request.type_url, "");
            }
            changed = generations.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let Some(node) = state.node_id().map(str::to_string) else {
            continue;
        };
        let Some(snapshot) = cache.snapshot_for(&node) else {
            continue;
        };
        let sent = send_all(&tx, state.responses(&snapshot), |response| {
            tracing::debug!(
                node = %node,
                type_url = %response.type_url,
                version = %response.system_version_info,
                nonce = %response.nonce,
                resources = response.resources.len(),
                removed = response.removed_resources.len(),
                "sending delta"
            );
        })
        .await;
        if !sent {
            break;
        }
    }
    unregister(&status, registered, "delta ads stream");
}

/// One stream's loop: read requests, record them, and send what the snapshot requires after
/// every request and every cache change.
async fn run_stream(
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    cache: Arc<SnapshotCache>,
    status: Arc<XdsStatus>,
) {
    let mut state = StreamState::new();
    let mut generations = cache.subscribe();
    let mut registered: Option<String> = None;
    loop {
        tokio::select! {
            message = inbound.message() => {
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!(error = %err, "ads stream error");
                        break;
                    }
                };
                let kind = state.on_request(&request);
                let Some(node) = state.node_id().map(str::to_string) else {
                    let _ = tx.send(Err(Status::invalid_argument("the first request must carry node.id"))).await;
                    break;
                };
                register(&status, &mut registered, &node, "ads stream");
                record(&status, &node, &kind, &request);
            }
            changed = generations.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let Some(node) = state.node_id().map(str::to_string) else {
            continue;
        };
        let Some(snapshot) = cache.snapshot_for(&node) else {
            continue;
        };
        let sent = send_all(&tx, state.responses(&snapshot), |response| {
            tracing::debug!(
                node = %node,
                type_url = %response.type_url,
                version = %response.version_info,
                nonce = %response.nonce,
                resources = response.resources.len(),
                "sending"
            );
        })
        .await;
        if !sent {
            break;
        }
    }
    unregister(&status, registered, "ads stream");
}

/// Counts a stream for `node` on its first request (`registered` remembers it).
fn register(status: &XdsStatus, registered: &mut Option<String>, node: &str, what: &str) {
    if registered.is_none() {
        status.with_node(node, |n| n.streams += 1);
        tracing::info!(node = %node, "{what} opened");
        *registered = Some(node.to_string());
    }
}

/// Uncounts a stream that [`register`] counted.
fn unregister(status: &XdsStatus, registered: Option<String>, what: &str) {
    if let Some(node) = registered {
        status.with_node(&node, |n| n.streams = n.streams.saturating_sub(1));
        tracing::info!(node = %node, "{what} closed");
    }
}

/// Sends `responses` in order, calling `log` on each first; false once the client is gone.
async fn send_all<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    responses: impl IntoIterator<Item = T>,
    log: impl Fn(&T),
) -> bool {
    for response in responses {
        log(&response);
        if tx.send(Ok(response)).await.is_err() {
            return false;
        }
    }
    true
}

fn record(status: &XdsStatus, node: &str, kind: &RequestKind, request: &DiscoveryRequest) {
    record_kind(status, node, kind, &request.type_url, &request.version_info);
}

/// Records what a request meant; `version_info` is what a state-of-the-world subscription
/// says it runs (empty for delta).
fn record_kind(
    status: &XdsStatus,
    node: &str,
    kind: &RequestKind,
    type_url: &str,
    version_info: &str,
) {
    match kind {
        RequestKind::Ack { version } => {
            if let Some(t) = ResourceType::from_type_url(type_url) {
                tracing::debug!(node = %node, kind = t.short(), version = %version, "ack");
                status.with_node(node, |n| {
                    n.acked.insert(t.short(), version.clone());
                });
            }
        }
        RequestKind::Nack(nack) => {
            tracing::warn!(
                node = %node,
                kind = nack.kind.short(),
                rejected_version = %nack.rejected_version,
                live_version = %nack.live_version,
                error = %nack.error,
                "envoy rejected a config (NACK); it keeps the previous version and it is not resent"
            );
            let at_unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            status.with_node(node, |n| {
                n.nack_count += 1;
                n.nacks.push(NackRecord {
                    kind: nack.kind.short(),
                    rejected_version: nack.rejected_version.clone(),
                    live_version: nack.live_version.clone(),
                    error: nack.error.clone(),
                    at_unix_ms,
                });
                if n.nacks.len() > MAX_NACKS_KEPT {
                    n.nacks.remove(0);
                }
            });
        }
        RequestKind::UnknownType(url) => {
            tracing::debug!(node = %node, type_url = %url, "ignoring a request for a type not served");
        }
        RequestKind::Subscribe => {
            // A reconnecting Envoy reports the version it runs.
            if let Some(t) = ResourceType::from_type_url(type_url) {
                if !version_info.is_empty() {
                    status.with_node(node, |n| {
                        n.acked.insert(t.short(), version_info.to_string());
                    });
                }
            }
        }
        RequestKind::Stale => {}
    }
}
