//! One VM (an Envoy worker's copy of the module): its `Store` data and the typed
//! exports the host calls.

use std::collections::{BTreeMap, HashMap};

use wasmtime::{Memory, Store, TypedFunc};

use crate::abi::{Headers, MetricKind, StreamType};
use crate::shared::SharedRef;

/// A local reply sent by the guest with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LocalReply {
    /// HTTP status code.
    pub status: u16,
    /// Response code details (Envoy's `%RESPONSE_CODE_DETAILS%`).
    pub details: String,
    /// Headers given by the guest.
    pub headers: Headers,
    /// Body given by the guest.
    pub body: Vec<u8>,
    /// gRPC status (`-1`/`u32::MAX` when none).
    pub grpc_status: i64,
}

/// What the guest asked for during a callback; Envoy applies these after the
/// callback returns (`addAfterVmCallAction`), and so does host-sim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Deferred {
    Continue(u32, StreamType),
    Close(u32, StreamType),
    LocalReply(u32, LocalReply),
}

/// Which guest callback is running: it decides which buffers and maps exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Callback {
    None,
    VmStart,
    Configure,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Log,
    HttpCallResponse,
    GrpcReceive,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    ForeignFunction,
    Other,
}

/// The per-stream state the guest can read and change.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamData {
    pub request_headers: Option<Headers>,
    pub request_trailers: Option<Headers>,
    pub response_headers: Option<Headers>,
    pub response_trailers: Option<Headers>,
    /// The request body buffered at this filter (what `HttpRequestBody` shows).
    pub request_body: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
    /// Properties given by the test for this stream, already encoded.
    pub properties: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Debug)]
pub(crate) enum Context {
    Root,
    Stream(Box<StreamData>),
}

/// Buffers and maps that exist only while one callback runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallData {
    pub http_headers: Option<Headers>,
    pub http_body: Option<Vec<u8>>,
    pub http_trailers: Option<Headers>,
    pub grpc_message: Option<Vec<u8>>,
    pub grpc_initial: Option<Headers>,
    pub grpc_trailing: Option<Headers>,
    pub foreign_args: Option<Vec<u8>>,
}

/// A root context's tick timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tick {
    pub period_ns: u64,
    pub next_ns: u64,
}

/// All the state of one VM, kept in its wasmtime `Store`.
pub(crate) struct VmState {
    pub index: usize,
    pub shared: SharedRef,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
    pub vm_id: String,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    /// Host-wide properties (`plugin_name`, …), already encoded.
    pub properties: BTreeMap<String, Vec<u8>>,
    /// Properties set by the guest with `proxy_set_property`, per context.
    pub guest_properties: HashMap<u32, BTreeMap<String, Vec<u8>>>,
    pub contexts: HashMap<u32, Context>,
    pub root_id: u32,
    pub next_context_id: u32,
    pub effective: u32,
    pub callback: Callback,
    pub call: CallData,
    pub deferred: Vec<Deferred>,
    pub ticks: BTreeMap<u32, Tick>,
    pub next_http_token: u32,
    pub next_grpc_call: u32,
    pub next_grpc_stream: u32,
    /// gRPC token → host-wide callout id.
    pub grpc_tokens: HashMap<u32, u64>,
    pub metric_ids: HashMap<u32, (MetricKind, String)>,
    pub metric_by_name: HashMap<(MetricKind, String), u32>,
    /// Per metric kind: how many ids were handed out.
    pub next_metric_ids: [u32; 3],
    /// Status of the last gRPC callback, for `proxy_get_status`.
    pub grpc_status: (u32, Vec<u8>),
    pub done_roots: Vec<u32>,
    pub exit_code: Option<i32>,
    /// The VM is starting: only WASI calls are allowed.
    pub restricted: bool,
    /// Arguments and environment seen through WASI.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl VmState {
    pub fn new(index: usize, shared: SharedRef) -> VmState {
        VmState {
            index,
            shared,
            memory: None,
            alloc: None,
            vm_id: String::new(),
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            properties: BTreeMap::new(),
            guest_properties: HashMap::new(),
            contexts: HashMap::new(),
            root_id: 0,
            next_context_id: 1,
            effective: 0,
            callback: Callback::None,
            call: CallData::default(),
            deferred: Vec::new(),
            ticks: BTreeMap::new(),
            next_http_token: 0,
            next_grpc_call: 1,
            next_grpc_stream: 2,
            grpc_tokens: HashMap::new(),
            metric_ids: HashMap::new(),
            metric_by_name: HashMap::new(),
            next_metric_ids: [0; 3],
            grpc_status: (0, Vec::new()),
            done_roots: Vec::new(),
            exit_code: None,
            restricted: false,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn stream(&self, id: u32) -> Option<&StreamData> {
        match self.contexts.get(&id) {
            Some(Context::Stream(s)) => Some(s),
            _ => None,
        }
    }

    pub fn stream_mut(&mut self, id: u32) -> Option<&mut StreamData> {
        match self.contexts.get_mut(&id) {
            Some(Context::Stream(s)) => Some(s),
            _ => None,
        }
    }

    /// The root context a context belongs to (a root belongs to itself).
    pub fn root_of(&self, id: u32) -> u32 {
        match self.contexts.get(&id) {
            Some(Context::Root) => id,
            _ => self.root_id,
        }
    }
}

type F1 = TypedFunc<u32, ()>;
type F1R = TypedFunc<u32, u32>;
type F2 = TypedFunc<(u32, u32), ()>;
type F2R = TypedFunc<(u32, u32), u32>;
type F3 = TypedFunc<(u32, u32, u32), ()>;
type F3R = TypedFunc<(u32, u32, u32), u32>;
type F5 = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The guest's exports, looked up once per instance.
pub(crate) struct Exports {
    pub initialize: Option<TypedFunc<(), ()>>,
    pub start: Option<TypedFunc<(), ()>>,
    pub main: Option<TypedFunc<(u32, u32), u32>>,
    pub on_context_create: F2,
    pub on_vm_start: Option<F2R>,
    pub on_configure: Option<F2R>,
    pub on_tick: Option<F1>,
    pub on_queue_ready: Option<F2>,
    pub on_foreign_function: Option<F3>,
    pub on_request_headers: Option<F3R>,
    pub on_request_body: Option<F3R>,
    pub on_request_trailers: Option<F2R>,
    pub on_response_headers: Option<F3R>,
    pub on_response_body: Option<F3R>,
    pub on_response_trailers: Option<F2R>,
    pub on_log: Option<F1>,
    pub on_done: Option<F1R>,
    pub on_delete: Option<F1>,
    pub on_http_call_response: Option<F5>,
    pub on_grpc_receive_initial_metadata: Option<F3>,
    pub on_grpc_receive: Option<F3>,
    pub on_grpc_receive_trailing_metadata: Option<F3>,
    pub on_grpc_close: Option<F3>,
}

impl Exports {
    /// Whether the module exports the callback `call` enters (Envoy skips a missing one
    /// without entering the VM; `proxy_on_context_create` is required).
    pub fn has(&self, call: &crate::host::Call) -> bool {
        use crate::host::Call;
        match call {
            Call::ContextCreate(..) => true,
            Call::VmStart(..) => self.on_vm_start.is_some(),
            Call::Configure(..) => self.on_configure.is_some(),
            Call::Tick(..) => self.on_tick.is_some(),
            Call::QueueReady(..) => self.on_queue_ready.is_some(),
            Call::RequestHeaders(..) => self.on_request_headers.is_some(),
            Call::RequestBody(..) => self.on_request_body.is_some(),
            Call::RequestTrailers(..) => self.on_request_trailers.is_some(),
            Call::ResponseHeaders(..) => self.on_response_headers.is_some(),
            Call::ResponseBody(..) => self.on_response_body.is_some(),
            Call::ResponseTrailers(..) => self.on_response_trailers.is_some(),
            Call::Log(..) => self.on_log.is_some(),
            Call::Done(..) => self.on_done.is_some(),
            Call::Delete(..) => self.on_delete.is_some(),
            Call::HttpCallResponse(..) => self.on_http_call_response.is_some(),
            Call::GrpcInitial(..) => self.on_grpc_receive_initial_metadata.is_some(),
            Call::GrpcReceive(..) => self.on_grpc_receive.is_some(),
            Call::GrpcTrailing(..) => self.on_grpc_receive_trailing_metadata.is_some(),
            Call::GrpcClose(..) => self.on_grpc_close.is_some(),
            Call::Foreign(..) => self.on_foreign_function.is_some(),
        }
    }
}

/// A running VM: its store and exports.
pub(crate) struct Vm {
    pub store: Store<VmState>,
    pub exports: Exports,
    /// Set when the guest trapped; a failed VM is never called again.
    pub failed: Option<String>,
}
