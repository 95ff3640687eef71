//! The host: VMs of one module sharing state, streams driven through them with
//! Envoy's filter semantics, and a virtual clock.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use wasmtime::Store;

use crate::abi::{Action, Headers, LogLevel, StreamType};
use crate::error::{Error, Result};
use crate::http::{PropertyValue, Request, Response};
use crate::module::Module;
use crate::shared::{
    lock, Event, ForeignFunction, GrpcCallout, HttpCallout, LogEntry, Metric, Rng, Shared,
    SharedRef,
};
use crate::vm::{
    CallData, Callback, Context, Deferred, Exports, LocalReply, StreamData, Vm, VmState,
};

/// What Envoy does with a stream when the VM has failed (`failure_policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Answer 503 (`wasm_fail_stream`) — Envoy's default.
    #[default]
    FailClosed,
    /// Skip the filter and let the request through.
    FailOpen,
}

/// Identifies a stream driven through the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

/// The request as the upstream saw it once the filter let it through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// Headers after the filter changed them.
    pub headers: Headers,
    /// The body bytes forwarded so far.
    pub body: Vec<u8>,
    /// Trailers, if forwarded.
    pub trailers: Option<Headers>,
    /// The whole request (end of stream) has been forwarded.
    pub complete: bool,
}

impl UpstreamRequest {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::shared::find_header(&self.headers, name)
    }
}

/// The state of a stream as the test can observe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamView {
    /// Worker (VM index) running the stream.
    pub worker: usize,
    /// The stream's context id inside its VM.
    pub context_id: u32,
    /// What reached the upstream, if the request got that far.
    pub upstream_request: Option<UpstreamRequest>,
    /// Response headers as the downstream client got them.
    pub response_headers: Option<Headers>,
    /// Response body as the downstream client got it.
    pub response_body: Vec<u8>,
    /// Response trailers as the downstream client got them.
    pub response_trailers: Option<Headers>,
    /// The response is complete on the downstream side.
    pub response_complete: bool,
    /// The local reply the filter (or the failure policy) sent, if any.
    pub local_reply: Option<LocalReply>,
    /// The filter paused the request and has not resumed it.
    pub request_paused: bool,
    /// The filter paused the response and has not resumed it.
    pub response_paused: bool,
    /// The filter reset the stream (`proxy_close_stream`).
    pub reset: bool,
    /// on_log, on_done and on_delete have run.
    pub finished: bool,
}

impl StreamView {
    /// The status the downstream client got, if any.
    pub fn status(&self) -> Option<u16> {
        self.response_header(":status").and_then(|s| s.parse().ok())
    }

    /// First value of a response header as the downstream client got it.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .as_ref()
            .and_then(|h| crate::shared::find_header(h, name))
    }

    /// The response body as text (lossy).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.response_body).into_owned()
    }
}

/// A gRPC event the test delivers to a call or stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcEvent {
    /// `on_grpc_receive_initial_metadata`.
    InitialMetadata(Headers),
    /// `on_grpc_receive` with one message.
    Message(Vec<u8>),
    /// `on_grpc_receive_trailing_metadata`.
    TrailingMetadata(Headers),
    /// `on_grpc_close` with a status code and message (for `proxy_get_status`).
    Close {
        /// gRPC status code.
        status: u32,
        /// Status message.
        message: String,
    },
}

/// One direction of a stream: the request (Envoy's decoder path) or the response
/// (the encoder path). Both run the same state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Request => "request",
            Dir::Response => "response",
        }
    }

    fn headers_call(self, ctx: u32, n: u32, eos: bool) -> Call {
        match self {
            Dir::Request => Call::RequestHeaders(ctx, n, eos),
            Dir::Response => Call::ResponseHeaders(ctx, n, eos),
        }
    }

    fn body_call(self, ctx: u32, size: u32, eos: bool) -> Call {
        match self {
            Dir::Request => Call::RequestBody(ctx, size, eos),
            Dir::Response => Call::ResponseBody(ctx, size, eos),
        }
    }

    fn trailers_call(self, ctx: u32, n: u32) -> Call {
        match self {
            Dir::Request => Call::RequestTrailers(ctx, n),
            Dir::Response => Call::ResponseTrailers(ctx, n),
        }
    }
}

/// A part of a message on its way through the filter.
enum Part {
    Headers(Headers, bool),
    Body(Vec<u8>, bool),
    Trailers(Headers),
}

impl StreamData {
    fn headers(&mut self, dir: Dir) -> &mut Option<Headers> {
        match dir {
            Dir::Request => &mut self.request_headers,
            Dir::Response => &mut self.response_headers,
        }
    }

    fn body(&mut self, dir: Dir) -> &mut Option<Vec<u8>> {
        match dir {
            Dir::Request => &mut self.request_body,
            Dir::Response => &mut self.response_body,
        }
    }

    fn trailers(&mut self, dir: Dir) -> &mut Option<Headers> {
        match dir {
            Dir::Request => &mut self.request_trailers,
            Dir::Response => &mut self.response_trailers,
        }
    }
}

/// Which side of the stream a filter stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Headers,
    Body,
    Trailers,
}

#[derive(Clone, Debug, Default)]
struct Direction {
    /// Where the filter stopped iteration, if it did.
    stopped: Option<Stop>,
    /// Data that arrived while the filter stopped at headers (StopAll: held back).
    held_body: Option<Vec<u8>>,
    held_end: bool,
    held_trailers: Option<Headers>,
    /// Everything up to end of stream went past the filter.
    complete: bool,
    started: bool,
}

struct StreamCtl {
    vm: usize,
    ctx: u32,
    /// The filter takes no part (fail-open VM failure, or a VM that failed to start).
    bypass: bool,
    auto: bool,
    response_for_auto: Option<Response>,
    req: Direction,
    resp: Direction,
    view: StreamView,
    local_reply_in_progress: bool,
    /// Response code details Envoy's router gives its own replies (`route_not_found`).
    router_details: Option<String>,
}

impl StreamCtl {
    fn side(&mut self, dir: Dir) -> &mut Direction {
        match dir {
            Dir::Request => &mut self.req,
            Dir::Response => &mut self.resp,
        }
    }

    /// Nothing more can reach the filter on this side: the request after a local
    /// reply or reset, the response once complete or reset.
    fn ended(&self, dir: Dir) -> bool {
        match dir {
            Dir::Request => self.view.local_reply.is_some() || self.view.reset,
            Dir::Response => self.view.reset || self.view.response_complete,
        }
    }
}

type Upstream = Box<dyn FnMut(&UpstreamRequest) -> Response + Send>;

/// Builds a [`Host`]: the module, its configuration and the simulated environment.
pub struct HostBuilder {
    module: Module,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    workers: usize,
    seed: u64,
    clusters: Vec<String>,
    failure_policy: FailurePolicy,
    log_level: LogLevel,
    plugin_name: String,
    root_id: String,
    vm_id: String,
    epoch_ns: u64,
    fuel: u64,
    properties: BTreeMap<String, Vec<u8>>,
    base_vm: bool,
}

impl HostBuilder {
    /// The plugin configuration (`PluginConfig.configuration`), usually JSON.
    pub fn plugin_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.plugin_config = config.into();
        self
    }

    /// The VM configuration (`VmConfig.configuration`).
    pub fn vm_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.vm_config = config.into();
        self
    }

    /// Number of VMs, one per Envoy worker thread (at least 1). Envoy also runs one
    /// on the main thread; add one here to model it (it matters for `on_tick`).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Adds Envoy's base VM as VM 0, in front of the workers. Envoy 1.40 starts and
    /// configures one VM more than it has threads: the one the per-thread clones are
    /// made from. It runs `on_vm_start` and `on_configure` first, then never ticks, gets
    /// no streams and never hears back from its callouts (conformance cases
    /// `root_callouts_reach_every_vm_but_the_base_vm` and `ticks_reach_every_ticking_vm`:
    /// 3 VMs configured at `--concurrency 1`, 2 ticking, 2 callout responses).
    /// So `workers(2).base_vm()` models Envoy at `--concurrency 1`: VM 1 is the
    /// main-thread clone, VM 2 the worker.
    pub fn base_vm(mut self) -> Self {
        self.base_vm = true;
        self
    }

    /// Seed of the RNG behind WASI `random_get`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// A cluster name `proxy_http_call` / `proxy_grpc_call` may target.
    pub fn cluster(mut self, name: &str) -> Self {
        self.clusters.push(name.to_string());
        self
    }

    /// What happens to streams when a VM traps.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Lowest level kept from `proxy_log` (Envoy's default is `info`).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// The plugin's name (`plugin_name` property).
    pub fn plugin_name(mut self, name: &str) -> Self {
        self.plugin_name = name.to_string();
        self
    }

    /// The plugin's root id (`plugin_root_id` property).
    pub fn root_id(mut self, root_id: &str) -> Self {
        self.root_id = root_id.to_string();
        self
    }

    /// The VM id: shared data and queues are scoped by it, as in Envoy.
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.to_string();
        self
    }

    /// Wall-clock time at the start, nanoseconds since the Unix epoch.
    pub fn epoch_ns(mut self, ns: u64) -> Self {
        self.epoch_ns = ns;
        self
    }

    /// Instructions (fuel) one callback may run before it traps as a hang.
    pub fn fuel_per_callback(mut self, fuel: u64) -> Self {
        self.fuel = fuel;
        self
    }

    /// A property every context sees (e.g. `node.id`).
    pub fn property(mut self, path: &str, value: PropertyValue) -> Self {
        self.properties.insert(path.to_string(), value.encode());
        self
    }

    /// Instantiates the VMs. Call [`Host::configure`] next, as Envoy would.
    pub fn build(self) -> Result<Host> {
        let mut shared = Shared {
            epoch_ns: self.epoch_ns,
            rng: Some(Rng::new(self.seed)),
            log_level: Some(self.log_level),
            clusters: self.clusters,
            ..Shared::default()
        };
        shared.clusters.sort();
        let shared = SharedRef::new(std::sync::Mutex::new(shared));
        let mut properties = self.properties;
        for (k, v) in [
            ("plugin_name", &self.plugin_name),
            ("plugin_root_id", &self.root_id),
            ("plugin_vm_id", &self.vm_id),
        ] {
            properties
                .entry(k.to_string())
                .or_insert_with(|| v.as_bytes().to_vec());
        }
        let count = self.workers + usize::from(self.base_vm);
        let mut vms = Vec::with_capacity(count);
        for index in 0..count {
            let mut state = VmState::new(index, shared.clone());
            state.vm_id = self.vm_id.clone();
            state.plugin_config = self.plugin_config.clone();
            state.vm_config = self.vm_config.clone();
            state.properties = properties.clone();
            vms.push(instantiate(&self.module, state)?);
        }
        Ok(Host {
            module: self.module,
            vms,
            shared,
            streams: BTreeMap::new(),
            by_ctx: HashMap::new(),
            live: std::collections::BTreeSet::new(),
            next_stream: 0,
            failure_policy: self.failure_policy,
            fuel: self.fuel,
            upstream: Box::new(|_| Response::ok()),
            configured: false,
            guest_calls: 0,
            guest_instructions: 0,
            instructions_by_callback: BTreeMap::new(),
            base_vm: self.base_vm,
        })
    }
}

fn runtime(e: impl std::fmt::Display) -> Error {
    Error::Runtime(e.to_string())
}

fn instantiate(module: &Module, state: VmState) -> Result<Vm> {
    let mut store = Store::new(module.engine(), state);
    store.set_fuel(u64::MAX).map_err(runtime)?;
    let instance = module
        .pre()
        .instantiate(&mut store)
        .map_err(|e| Error::Runtime(format!("{e:#}")))?;
    let memory = instance.get_memory(&mut store, "memory");
    let bad = |problem: String| Error::BadExport {
        name: module.name().to_string(),
        problem,
    };
    macro_rules! opt {
        ($name:literal) => {
            match instance.get_func(&mut store, $name) {
                None => None,
                Some(f) => Some(
                    f.typed(&store)
                        .map_err(|e| bad(format!("export {} has the wrong type: {e}", $name)))?,
                ),
            }
        };
    }
    let alloc = match opt!("malloc") {
        Some(f) => Some(f),
        None => opt!("proxy_on_memory_allocate"),
    };
    let on_context_create = opt!("proxy_on_context_create")
        .ok_or_else(|| bad("exports no proxy_on_context_create".into()))?;
    let exports = Exports {
        initialize: opt!("_initialize"),
        start: opt!("_start"),
        main: opt!("main"),
        on_context_create,
        on_vm_start: opt!("proxy_on_vm_start"),
        on_configure: opt!("proxy_on_configure"),
        on_tick: opt!("proxy_on_tick"),
        on_queue_ready: opt!("proxy_on_queue_ready"),
        on_foreign_function: opt!("proxy_on_foreign_function"),
        on_request_headers: opt!("proxy_on_request_headers"),
        on_request_body: opt!("proxy_on_request_body"),
        on_request_trailers: opt!("proxy_on_request_trailers"),
        on_response_headers: opt!("proxy_on_response_headers"),
        on_response_body: opt!("proxy_on_response_body"),
        on_response_trailers: opt!("proxy_on_response_trailers"),
        on_log: opt!("proxy_on_log"),
        on_done: opt!("proxy_on_done"),
        on_delete: opt!("proxy_on_delete"),
        on_http_call_response: opt!("proxy_on_http_call_response"),
        on_grpc_receive_initial_metadata: opt!("proxy_on_grpc_receive_initial_metadata"),
        on_grpc_receive: opt!("proxy_on_grpc_receive"),
        on_grpc_receive_trailing_metadata: opt!("proxy_on_grpc_receive_trailing_metadata"),
        on_grpc_close: opt!("proxy_on_grpc_close"),
    };
    let state = store.data_mut();
    state.memory = memory;
    state.alloc = alloc;
    Ok(Vm {
        store,
        exports,
        failed: None,
    })
}

/// Upper bound on events (ticks, timeouts, queue deliveries) handled by one call,
/// so a guest that re-arms itself forever cannot hang a test.
const MAX_EVENTS_PER_CALL: usize = 1_000_000;

/// A proxy-wasm host: one module, several VMs sharing state, a virtual clock.
///
/// ```no_run
/// use host_sim::{Host, Module, Request};
/// let module = Module::from_file("filter.wasm")?;
/// let mut host = Host::builder(&module).plugin_config(r#"{"limit":1}"#).build()?;
/// assert!(host.configure()?);
/// let s = host.send(0, Request::get("/"))?;
/// assert_eq!(host.stream(s)?.status(), Some(200));
/// # Ok::<(), host_sim::Error>(())
/// ```
pub struct Host {
    module: Module,
    vms: Vec<Vm>,
    shared: SharedRef,
    streams: BTreeMap<StreamId, StreamCtl>,
    by_ctx: HashMap<(usize, u32), StreamId>,
    /// Streams not finished yet: their paused flags are refreshed after each step.
    live: std::collections::BTreeSet<StreamId>,
    next_stream: u64,
    failure_policy: FailurePolicy,
    fuel: u64,
    upstream: Upstream,
    configured: bool,
    guest_calls: u64,
    /// Wasm instructions (fuel) the guests ran in callbacks, allocations included.
    guest_instructions: u64,
    instructions_by_callback: BTreeMap<&'static str, u64>,
    /// VM 0 is Envoy's base VM (see [`HostBuilder::base_vm`]).
    base_vm: bool,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("module", &self.module)
            .field("workers", &self.vms.len())
            .field("streams", &self.streams.len())
            .finish()
    }
}

/// Which export to call, with its arguments.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Call {
    ContextCreate(u32, u32),
    VmStart(u32, u32),
    Configure(u32, u32),
    Tick(u32),
    QueueReady(u32, u32),
    RequestHeaders(u32, u32, bool),
    RequestBody(u32, u32, bool),
    RequestTrailers(u32, u32),
    ResponseHeaders(u32, u32, bool),
    ResponseBody(u32, u32, bool),
    ResponseTrailers(u32, u32),
    Log(u32),
    Done(u32),
    Delete(u32),
    HttpCallResponse(u32, u32, u32, u32, u32),
    GrpcInitial(u32, u32, u32),
    GrpcReceive(u32, u32, u32),
    GrpcTrailing(u32, u32, u32),
    GrpcClose(u32, u32, u32),
    Foreign(u32, u32, u32),
}

impl Call {
    fn name(&self) -> &'static str {
        match self {
            Call::ContextCreate(..) => "proxy_on_context_create",
            Call::VmStart(..) => "proxy_on_vm_start",
            Call::Configure(..) => "proxy_on_configure",
            Call::Tick(..) => "proxy_on_tick",
            Call::QueueReady(..) => "proxy_on_queue_ready",
            Call::RequestHeaders(..) => "proxy_on_request_headers",
            Call::RequestBody(..) => "proxy_on_request_body",
            Call::RequestTrailers(..) => "proxy_on_request_trailers",
            Call::ResponseHeaders(..) => "proxy_on_response_headers",
            Call::ResponseBody(..) => "proxy_on_response_body",
            Call::ResponseTrailers(..) => "proxy_on_response_trailers",
            Call::Log(..) => "proxy_on_log",
            Call::Done(..) => "proxy_on_done",
            Call::Delete(..) => "proxy_on_delete",
            Call::HttpCallResponse(..) => "proxy_on_http_call_response",
            Call::GrpcInitial(..) => "proxy_on_grpc_receive_initial_metadata",
            Call::GrpcReceive(..) => "proxy_on_grpc_receive",
            Call::GrpcTrailing(..) => "proxy_on_grpc_receive_trailing_metadata",
            Call::GrpcClose(..) => "proxy_on_grpc_close",
            Call::Foreign(..) => "proxy_on_foreign_function",
        }
    }

    fn context(&self) -> u32 {
        match *self {
            Call::ContextCreate(c, _)
            | Call::VmStart(c, _)
            | Call::Configure(c, _)
            | Call::Tick(c)
            | Call::QueueReady(c, _)
            | Call::RequestHeaders(c, ..)
            | Call::RequestBody(c, ..)
            | Call::RequestTrailers(c, _)
            | Call::ResponseHeaders(c, ..)
            | Call::ResponseBody(c, ..)
            | Call::ResponseTrailers(c, _)
            | Call::Log(c)
            | Call::Done(c)
            | Call::Delete(c)
            | Call::HttpCallResponse(c, ..)
            | Call::GrpcInitial(c, ..)
            | Call::GrpcReceive(c, ..)
            | Call::GrpcTrailing(c, ..)
            | Call::GrpcClose(c, ..)
            | Call::Foreign(c, ..) => c,
        }
    }

    fn callback(&self) -> Callback {
        match self {
            Call::VmStart(..) => Callback::VmStart,
            Call::Configure(..) => Callback::Configure,
            Call::RequestHeaders(..) => Callback::RequestHeaders,
            Call::RequestBody(..) => Callback::RequestBody,
            Call::RequestTrailers(..) => Callback::RequestTrailers,
            Call::ResponseHeaders(..) => Callback::ResponseHeaders,
            Call::ResponseBody(..) => Callback::ResponseBody,
            Call::ResponseTrailers(..) => Callback::ResponseTrailers,
            Call::Log(..) => Callback::Log,
            Call::HttpCallResponse(..) => Callback::HttpCallResponse,
            Call::GrpcReceive(..) => Callback::GrpcReceive,
            Call::GrpcInitial(..) => Callback::GrpcInitialMetadata,
            Call::GrpcTrailing(..) => Callback::GrpcTrailingMetadata,
            Call::Foreign(..) => Callback::ForeignFunction,
            _ => Callback::Other,
        }
    }
}

fn b(v: bool) -> u32 {
    u32::from(v)
}

impl Host {
    /// Starts building a host for `module`.
    pub fn builder(module: &Module) -> HostBuilder {
        HostBuilder {
            module: module.clone(),
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            workers: 1,
            seed: 0,
            clusters: Vec::new(),
            failure_policy: FailurePolicy::FailClosed,
            log_level: LogLevel::Info,
            plugin_name: String::new(),
            root_id: String::new(),
            vm_id: String::new(),
            // 2026-01-01T00:00:00Z: a fixed, recognisable start for the wall clock.
            epoch_ns: 1_767_225_600_000_000_000,
            fuel: 10_000_000_000,
            properties: BTreeMap::new(),
            base_vm: false,
        }
    }

    /// Number of VMs (workers).
    pub fn workers(&self) -> usize {
        self.vms.len()
    }

    /// Starts every VM and configures its root context, in Envoy's order:
    /// `_initialize` (then `main`) or `_start`; `proxy_on_context_create(root, 0)`;
    /// `proxy_on_vm_start`; `proxy_on_configure`. Returns `Ok(false)` when any VM's
    /// `on_vm_start` or `on_configure` returned false (Envoy then rejects the config).
    /// A trap is an `Err` naming the callback.
    pub fn configure(&mut self) -> Result<bool> {
        if self.configured {
            return Err(Error::Usage("configure() was already called".into()));
        }
        self.configured = true;
        for vm in 0..self.vms.len() {
            self.start_vm(vm)?;
            // Root context ids start at 1: 0 is the VM context.
            let root = self.alloc_context(vm, true);
            self.vms[vm].store.data_mut().root_id = root;
            self.call_checked(vm, Call::ContextCreate(root, 0))?;
            let vm_config_len = self.vms[vm].store.data().vm_config.len() as u32;
            if self.call_checked(vm, Call::VmStart(root, vm_config_len))? == Some(0) {
                return Ok(false);
            }
            let config_len = self.vms[vm].store.data().plugin_config.len() as u32;
            if self.call_checked(vm, Call::Configure(root, config_len))? == Some(0) {
                return Ok(false);
            }
            if vm == 0 && self.base_vm {
                // Envoy never answers the base VM's callouts.
                let mut sh = lock(&self.shared);
                sh.http_callouts.retain(|_, c| c.vm != 0);
                sh.grpc_callouts.retain(|_, c| c.vm != 0);
            }
        }
        self.pump()?;
        Ok(true)
    }

    fn start_vm(&mut self, vm: usize) -> Result<()> {
        let v = &mut self.vms[vm];
        let set = |store: &mut Store<VmState>, fuel| store.set_fuel(fuel).map_err(runtime);
        let trap = |e: wasmtime::Error, name: &str| Error::Trap {
            vm,
            callback: name.to_string(),
            reason: format!("{e:#}"),
        };
        set(&mut v.store, self.fuel)?;
        // Only WASI is allowed until the start functions return (see imports::guard).
        v.store.data_mut().restricted = true;
        let result: Result<()> = (|| {
            if let Some(init) = v.exports.initialize.clone() {
                init.call(&mut v.store, ())
                    .map_err(|e| trap(e, "_initialize"))?;
                if let Some(main) = v.exports.main.clone() {
                    main.call(&mut v.store, (0, 0))
                        .map_err(|e| trap(e, "main"))?;
                }
            } else if let Some(start) = v.exports.start.clone() {
                start
                    .call(&mut v.store, ())
                    .map_err(|e| trap(e, "_start"))?;
            }
            Ok(())
        })();
        v.store.data_mut().restricted = false;
        if let Err(e) = &result {
            v.failed = Some(e.to_string());
        }
        result
    }

    fn alloc_context(&mut self, vm: usize, root: bool) -> u32 {
        let st = self.vms[vm].store.data_mut();
        let id = st.next_context_id;
        st.next_context_id += 1;
        st.contexts.insert(
            id,
            if root {
                Context::Root
            } else {
                Context::Stream(Box::default())
            },
        );
        id
    }

    /// Calls an export; a trap fails the VM and is returned as `Err`.
    fn call_checked(&mut self, vm: usize, call: Call) -> Result<Option<u32>> {
        match self.call(vm, call) {
            Ok(r) => Ok(r),
            Err(reason) => Err(Error::Trap {
                vm,
                callback: call.name().to_string(),
                reason,
            }),
        }
    }

    /// Calls one export with Envoy's per-call setup (effective context, buffers).
    /// Returns the raw result (`None` when the export is missing or returns
    /// nothing) or the trap message. Deferred actions stay queued in the VM.
    fn call(&mut self, vm: usize, call: Call) -> std::result::Result<Option<u32>, String> {
        let v = &mut self.vms[vm];
        if let Some(reason) = &v.failed {
            return Err(format!("VM already failed: {reason}"));
        }
        if v.exports.has(&call) {
            self.guest_calls += 1;
        }
        let st = v.store.data_mut();
        st.effective = call.context();
        st.callback = call.callback();
        if v.store.set_fuel(self.fuel).is_err() {
            return Err("cannot set fuel".into());
        }
        let e = &v.exports;
        let s = &mut v.store;
        let r: wasmtime::Result<Option<u32>> = match call {
            Call::ContextCreate(c, p) => e.on_context_create.call(&mut *s, (c, p)).map(|()| None),
            Call::VmStart(c, n) => opt2r(&e.on_vm_start, s, (c, n), 1),
            Call::Configure(c, n) => opt2r(&e.on_configure, s, (c, n), 1),
            Call::Tick(c) => opt1(&e.on_tick, s, c),
            Call::QueueReady(c, q) => opt2(&e.on_queue_ready, s, (c, q)),
            Call::RequestHeaders(c, n, eos) => opt3r(&e.on_request_headers, s, (c, n, b(eos))),
            Call::RequestBody(c, n, eos) => opt3r(&e.on_request_body, s, (c, n, b(eos))),
            Call::RequestTrailers(c, n) => opt2r(&e.on_request_trailers, s, (c, n), 0),
            Call::ResponseHeaders(c, n, eos) => opt3r(&e.on_response_headers, s, (c, n, b(eos))),
            Call::ResponseBody(c, n, eos) => opt3r(&e.on_response_body, s, (c, n, b(eos))),
            Call::ResponseTrailers(c, n) => opt2r(&e.on_response_trailers, s, (c, n), 0),
            Call::Log(c) => opt1(&e.on_log, s, c),
            Call::Done(c) => match &e.on_done {
                Some(f) => f.call(&mut *s, c).map(Some),
                None => Ok(Some(1)),
            },
            Call::Delete(c) => opt1(&e.on_delete, s, c),
            Call::HttpCallResponse(c, t, h, bd, tr) => match &e.on_http_call_response {
                Some(f) => f.call(&mut *s, (c, t, h, bd, tr)).map(|()| None),
                None => Ok(None),
            },
            Call::GrpcInitial(c, t, n) => opt3(&e.on_grpc_receive_initial_metadata, s, (c, t, n)),
            Call::GrpcReceive(c, t, n) => opt3(&e.on_grpc_receive, s, (c, t, n)),
            Call::GrpcTrailing(c, t, n) => opt3(&e.on_grpc_receive_trailing_metadata, s, (c, t, n)),
            Call::GrpcClose(c, t, n) => opt3(&e.on_grpc_close, s, (c, t, n)),
            Call::Foreign(c, f, n) => opt3(&e.on_foreign_function, s, (c, f, n)),
        };
        if let Ok(left) = v.store.get_fuel() {
            let used = self.fuel.saturating_sub(left);
            self.guest_instructions += used;
            *self
                .instructions_by_callback
                .entry(call.name())
                .or_default() += used;
        }
        let st = v.store.data_mut();
        st.callback = Callback::None;
        st.call = CallData::default();
        match r {
            Ok(r) => Ok(r),
            Err(e) => {
                // One line for the test (the root cause); the full trace goes to the log.
                let reason = e.root_cause().to_string();
                let full = format!("{e:#}");
                v.failed = Some(reason.clone());
                let level = LogLevel::Critical;
                crate::imports::log_line(
                    v.store.data(),
                    level,
                    format!("wasm trap in {}: {full}", call.name()),
                );
                Err(reason)
            }
        }
    }

    // ---- streams -------------------------------------------------------------

    /// Creates a stream on `worker` that the test drives phase by phase
    /// (`request_headers`, …, `finish`). Nothing is answered automatically.
    pub fn new_stream(&mut self, worker: usize) -> Result<StreamId> {
        self.create_stream(worker, false, Vec::new())
    }

    fn create_stream(
        &mut self,
        worker: usize,
        auto: bool,
        properties: Vec<(String, PropertyValue)>,
    ) -> Result<StreamId> {
        if !self.configured {
            return Err(Error::Usage(
                "call configure() before driving streams".into(),
            ));
        }
        if worker >= self.vms.len() {
            return Err(Error::Usage(format!(
                "worker {worker} does not exist (the host has {})",
                self.vms.len()
            )));
        }
        if worker == 0 && self.base_vm {
            return Err(Error::Usage(
                "VM 0 is Envoy's base VM, which runs no streams".into(),
            ));
        }
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        let failed = self.vms[worker].failed.is_some();
        let mut ctl = StreamCtl {
            vm: worker,
            ctx: 0,
            bypass: failed,
            auto,
            response_for_auto: None,
            req: Direction::default(),
            resp: Direction::default(),
            view: StreamView {
                worker,
                ..StreamView::default()
            },
            local_reply_in_progress: false,
            router_details: None,
        };
        if !failed {
            let ctx = self.alloc_context(worker, false);
            ctl.ctx = ctx;
            ctl.view.context_id = ctx;
            if let Some(s) = self.vms[worker].store.data_mut().stream_mut(ctx) {
                for (k, v) in properties {
                    s.properties.insert(k, v.encode());
                }
            }
            self.by_ctx.insert((worker, ctx), id);
            self.streams.insert(id, ctl);
            self.live.insert(id);
            let root = self.vms[worker].store.data().root_id;
            if let Err(reason) = self.call(worker, Call::ContextCreate(ctx, root)) {
                self.on_trap(id, &reason);
            }
        } else {
            self.streams.insert(id, ctl);
            self.live.insert(id);
        }
        Ok(id)
    }

    /// What the stream looks like now.
    pub fn stream(&self, id: StreamId) -> Result<&StreamView> {
        self.streams
            .get(&id)
            .map(|s| &s.view)
            .ok_or_else(|| Error::Usage(format!("unknown stream {id:?}")))
    }

    /// Removes a stream from the host and returns its final view (long runs use
    /// it to keep memory flat).
    pub fn remove_stream(&mut self, id: StreamId) -> Result<StreamView> {
        let ctl = self
            .streams
            .remove(&id)
            .ok_or_else(|| Error::Usage(format!("unknown stream {id:?}")))?;
        self.live.remove(&id);
        if !ctl.view.finished {
            self.by_ctx.remove(&(ctl.vm, ctl.ctx));
            let st = self.vms[ctl.vm].store.data_mut();
            st.contexts.remove(&ctl.ctx);
        }
        Ok(ctl.view)
    }

    /// Refreshes the paused flags of unfinished streams after a step.
    fn sync_live(&mut self) {
        for id in &self.live {
            if let Some(ctl) = self.streams.get_mut(id) {
                let replied = ctl.view.local_reply.is_some();
                ctl.view.request_paused = ctl.req.stopped.is_some() && !replied;
                ctl.view.response_paused = ctl.resp.stopped.is_some();
            }
        }
    }

    /// Every stream the host has driven, in creation order.
    pub fn streams(&self) -> Vec<StreamId> {
        self.streams.keys().copied().collect()
    }

    fn ctl(&mut self, id: StreamId) -> Result<&mut StreamCtl> {
        self.streams
            .get_mut(&id)
            .ok_or_else(|| Error::Usage(format!("unknown stream {id:?}")))
    }

    /// Sends a whole request on `worker` and lets host-sim play the upstream (see
    /// [`Host::set_upstream`]) and the end of the stream. Stops where the filter
    /// pauses; answering its callouts or advancing time picks up from there.
    pub fn send(&mut self, worker: usize, request: Request) -> Result<StreamId> {
        self.send_inner(worker, request, None)
    }

    /// Like [`Host::send`], with the upstream answering `response` for this stream.
    pub fn send_with_response(
        &mut self,
        worker: usize,
        request: Request,
        response: Response,
    ) -> Result<StreamId> {
        self.send_inner(worker, request, Some(response))
    }

    fn send_inner(
        &mut self,
        worker: usize,
        request: Request,
        response: Option<Response>,
    ) -> Result<StreamId> {
        let mut request = request;
        // Envoy's connection manager adds x-forwarded-proto to every request from a
        // client before any filter runs (the router needs it, see maybe_call_upstream).
        if crate::shared::find_header(&request.headers, "x-forwarded-proto").is_none() {
            let scheme = crate::shared::find_header(&request.headers, ":scheme")
                .unwrap_or("http")
                .to_string();
            request
                .headers
                .push(("x-forwarded-proto".to_string(), scheme));
        }
        let mut properties = derived_properties(&request.headers);
        properties.extend(request.properties.iter().cloned());
        let id = self.create_stream(worker, true, properties)?;
        self.ctl(id)?.response_for_auto = response;
        let chunks = request.body.len();
        let no_body = chunks == 0 && request.trailers.is_none();
        self.request_headers(id, request.headers, no_body)?;
        // Envoy's HTTP/1 codec passes each body chunk on without end of stream and ends
        // the stream with an empty data frame: conformance case `buffers_match_envoy`
        // saw `request_body size=5 eos=false` then `request_body size=0 eos=true`.
        for chunk in request.body {
            self.request_body(id, &chunk, false)?;
        }
        if let Some(trailers) = request.trailers {
            self.request_trailers(id, trailers)?;
        } else if chunks > 0 {
            self.request_body(id, &[], true)?;
        }
        self.pump()?;
        Ok(id)
    }

    /// Sets what host-sim's upstream answers for streams started with `send`.
    pub fn set_upstream(&mut self, f: impl FnMut(&UpstreamRequest) -> Response + Send + 'static) {
        self.upstream = Box::new(f);
    }

    /// Delivers request headers (`on_request_headers`).
    pub fn request_headers(
        &mut self,
        id: StreamId,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action> {
        self.headers_in(id, Dir::Request, headers, end_of_stream)
    }

    /// Delivers a request body chunk (`on_request_body`).
    pub fn request_body(
        &mut self,
        id: StreamId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.body_in(id, Dir::Request, chunk, end_of_stream)
    }

    /// Delivers request trailers (`on_request_trailers`).
    pub fn request_trailers(&mut self, id: StreamId, trailers: Headers) -> Result<Action> {
        self.trailers_in(id, Dir::Request, trailers)
    }

    /// Delivers response headers (`on_response_headers`); `:status` comes first.
    pub fn response_headers(
        &mut self,
        id: StreamId,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action> {
        self.headers_in(id, Dir::Response, headers, end_of_stream)
    }

    /// Delivers a response body chunk (`on_response_body`).
    pub fn response_body(
        &mut self,
        id: StreamId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.body_in(id, Dir::Response, chunk, end_of_stream)
    }

    /// Delivers response trailers (`on_response_trailers`).
    pub fn response_trailers(&mut self, id: StreamId, trailers: Headers) -> Result<Action> {
        self.trailers_in(id, Dir::Response, trailers)
    }

    fn headers_in(
        &mut self,
        id: StreamId,
        dir: Dir,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action> {
        let headers = lower(headers);
        let policy = self.failure_policy;
        let ctl = self.ctl(id)?;
        let side = ctl.side(dir);
        if side.started {
            return Err(Error::Usage(format!(
                "{} headers were already sent",
                dir.name()
            )));
        }
        side.started = true;
        if dir == Dir::Request {
            ctl.view.upstream_request = None;
        }
        if ctl.bypass {
            if dir == Dir::Request && policy == FailurePolicy::FailClosed {
                self.fail_stream(id)?;
                return Ok(Action::Pause);
            }
            self.emit(id, dir, Part::Headers(headers, end_of_stream))?;
            return Ok(Action::Continue);
        }
        let action = self.deliver(id, dir, Part::Headers(headers, end_of_stream))?;
        self.pump()?;
        Ok(action)
    }

    fn body_in(&mut self, id: StreamId, dir: Dir, chunk: &[u8], eos: bool) -> Result<Action> {
        let ctl = self.ctl(id)?;
        if ctl.ended(dir) {
            return Ok(Action::Pause);
        }
        if ctl.bypass {
            self.emit(id, dir, Part::Body(chunk.to_vec(), eos))?;
            return Ok(Action::Continue);
        }
        let side = ctl.side(dir);
        if side.stopped == Some(Stop::Headers) {
            // StopAllIterationAndWatermark: the body waits in front of the filter.
            side.held_body
                .get_or_insert_with(Vec::new)
                .extend_from_slice(chunk);
            side.held_end |= eos;
            return Ok(Action::Pause);
        }
        let action = self.deliver(id, dir, Part::Body(chunk.to_vec(), eos))?;
        self.pump()?;
        Ok(action)
    }

    fn trailers_in(&mut self, id: StreamId, dir: Dir, trailers: Headers) -> Result<Action> {
        let trailers = lower(trailers);
        let ctl = self.ctl(id)?;
        if ctl.ended(dir) {
            return Ok(Action::Pause);
        }
        if ctl.bypass {
            self.emit(id, dir, Part::Trailers(trailers))?;
            return Ok(Action::Continue);
        }
        let side = ctl.side(dir);
        // Only StopAllIteration (a pause in the headers callback) holds trailers in front of
        // the filter. A filter buffering the body (StopIterationAndBuffer) gets its trailers
        // callback as in Envoy: with trailers, the body never arrives with end_of_stream, so
        // the trailers callback is where it sees the whole body.
        if matches!(side.stopped, Some(Stop::Headers | Stop::Trailers)) {
            side.held_trailers = Some(trailers);
            side.held_end = true;
            return Ok(Action::Pause);
        }
        let action = self.deliver(id, dir, Part::Trailers(trailers))?;
        self.pump()?;
        Ok(action)
    }

    /// Hands one part of a message to the filter's callback and acts on its answer:
    /// Continue passes it on, Pause stops that side of the stream where it is.
    fn deliver(&mut self, id: StreamId, dir: Dir, part: Part) -> Result<Action> {
        let ctl = self.ctl(id)?;
        let (vm, ctx) = (ctl.vm, ctl.ctx);
        let buffering = ctl.side(dir).stopped == Some(Stop::Body);
        // Envoy's stream info knows the response code and its details from the response
        // headers on: `via_upstream` for an upstream answer, the filter's details for a
        // local reply (conformance case `properties_match_envoy`).
        let details = match (&ctl.view.local_reply, &ctl.router_details) {
            (Some(reply), _) => reply.details.clone(),
            (None, Some(details)) => details.clone(),
            (None, None) => "via_upstream".to_string(),
        };
        let data = self.vms[vm].store.data_mut().stream_mut(ctx);
        let (call, stop, eos) = match part {
            Part::Headers(headers, eos) => {
                let n = headers.len() as u32;
                if let Some(s) = data {
                    if dir == Dir::Response {
                        let code = crate::shared::find_header(&headers, ":status")
                            .and_then(|s| s.parse::<i64>().ok());
                        if let Some(code) = code {
                            s.properties
                                .insert("response.code".into(), PropertyValue::Int(code).encode());
                        }
                        s.properties.insert(
                            "response.code_details".into(),
                            PropertyValue::String(details).encode(),
                        );
                    }
                    *s.headers(dir) = Some(headers);
                }
                (dir.headers_call(ctx, n, eos), Stop::Headers, eos)
            }
            Part::Body(chunk, eos) => {
                // While the filter buffers (StopIterationAndBuffer) it sees the
                // accumulated body; otherwise just this chunk.
                let size = match data {
                    Some(s) => {
                        let buf = s.body(dir).get_or_insert_with(Vec::new);
                        if !buffering {
                            buf.clear();
                        }
                        buf.extend_from_slice(&chunk);
                        buf.len() as u32
                    }
                    None => 0,
                };
                (dir.body_call(ctx, size, eos), Stop::Body, eos)
            }
            Part::Trailers(trailers) => {
                let n = trailers.len() as u32;
                if let Some(s) = data {
                    *s.trailers(dir) = Some(trailers);
                }
                (dir.trailers_call(ctx, n), Stop::Trailers, true)
            }
        };
        let r = self.call(vm, call);
        self.after_stream_call(id, r, |h, id, action| {
            if action == Action::Pause {
                let side = h.ctl(id)?.side(dir);
                side.stopped = Some(stop);
                side.held_end = eos;
                Ok(())
            } else {
                h.forward(id, dir, stop, eos)
            }
        })
    }

    /// Ends the stream: `on_log`, `on_done` and `on_delete`, as Envoy does when
    /// the stream is destroyed (access log first, then the filter's destruction).
    pub fn finish(&mut self, id: StreamId) -> Result<()> {
        let ctl = self.ctl(id)?;
        if ctl.view.finished {
            return Ok(());
        }
        ctl.view.finished = true;
        ctl.view.request_paused = ctl.req.stopped.is_some() && ctl.view.local_reply.is_none();
        ctl.view.response_paused = ctl.resp.stopped.is_some();
        self.live.remove(&id);
        let ctl = self.ctl(id)?;
        let (vm, ctx, bypass) = (ctl.vm, ctl.ctx, ctl.bypass);
        if bypass || self.vms[vm].failed.is_some() {
            return Ok(());
        }
        // on_log reads Envoy's access-log copies: the request headers and trailers as
        // the filter left them, the response headers and trailers as the client got
        // them. on_done sees none of them (conformance case `properties_match_envoy`).
        let ctl = self.ctl(id)?;
        let upstream = ctl.view.upstream_request.clone();
        let (response_headers, response_trailers) = (
            ctl.view.response_headers.clone(),
            ctl.view.response_trailers.clone(),
        );
        if let Some(s) = self.vms[vm].store.data_mut().stream_mut(ctx) {
            if s.request_headers.is_none() {
                s.request_headers = upstream.as_ref().map(|u| u.headers.clone());
            }
            if s.request_trailers.is_none() {
                s.request_trailers = upstream.and_then(|u| u.trailers);
            }
            s.response_headers = response_headers;
            s.response_trailers = response_trailers;
        }
        let _ = self.call(vm, Call::Log(ctx));
        if let Some(s) = self.vms[vm].store.data_mut().stream_mut(ctx) {
            s.request_headers = None;
            s.request_trailers = None;
            s.response_headers = None;
            s.response_trailers = None;
        }
        let _ = self.call(vm, Call::Done(ctx));
        let _ = self.call(vm, Call::Delete(ctx));
        let st = self.vms[vm].store.data_mut();
        st.contexts.remove(&ctx);
        st.guest_properties.remove(&ctx);
        st.deferred.retain(|d| !matches!(d, Deferred::Continue(c, _) | Deferred::Close(c, _) | Deferred::LocalReply(c, _) if *c == ctx));
        self.by_ctx.remove(&(vm, ctx));
        Ok(())
    }

    /// Runs after a stream callback: applies the trap policy or the returned action,
    /// then the deferred actions, exactly once.
    fn after_stream_call(
        &mut self,
        id: StreamId,
        r: std::result::Result<Option<u32>, String>,
        on_action: impl FnOnce(&mut Host, StreamId, Action) -> Result<()>,
    ) -> Result<Action> {
        let raw = match r {
            Ok(raw) => raw,
            Err(reason) => {
                self.on_trap(id, &reason);
                if self.failure_policy == FailurePolicy::FailOpen {
                    // Fail open: the stream goes on as if the filter had continued.
                    on_action(self, id, Action::Continue)?;
                    return Ok(Action::Continue);
                }
                return Ok(Action::Pause);
            }
        };
        let vm = self.ctl(id)?.vm;
        let deferred = std::mem::take(&mut self.vms[vm].store.data_mut().deferred);
        // A local reply sent during the callback stops iteration whatever the
        // callback returned (cpp-host's stopNextIteration).
        let ctx = self.ctl(id)?.ctx;
        let replied = deferred
            .iter()
            .any(|d| matches!(d, Deferred::LocalReply(c, _) if *c == ctx));
        let mut action = raw.map(Action::from_raw).unwrap_or(Action::Continue);
        if replied {
            action = Action::Pause;
        }
        on_action(self, id, action)?;
        self.apply_deferred(vm, deferred)?;
        Ok(action)
    }

    fn on_trap(&mut self, id: StreamId, _reason: &str) {
        let policy = self.failure_policy;
        let Some(ctl) = self.streams.get_mut(&id) else {
            return;
        };
        ctl.bypass = true;
        match policy {
            FailurePolicy::FailOpen => {
                ctl.req.stopped = None;
                ctl.resp.stopped = None;
            }
            FailurePolicy::FailClosed => {
                let _ = self.fail_stream(id);
            }
        }
    }

    /// Envoy's failStream: `sendLocalReply(503, "", grpc Unavailable, "wasm_fail_stream")`.
    fn fail_stream(&mut self, id: StreamId) -> Result<()> {
        let ctl = self.ctl(id)?;
        if ctl.view.response_headers.is_some() {
            ctl.view.reset = true;
            return self.maybe_finish(id);
        }
        let reply = LocalReply {
            status: 503,
            details: "wasm_fail_stream".into(),
            headers: Vec::new(),
            body: Vec::new(),
            grpc_status: 14,
        };
        ctl.view.response_headers = Some(local_reply_headers(&reply));
        ctl.view.response_body = Vec::new();
        ctl.view.response_complete = true;
        ctl.view.local_reply = Some(reply);
        ctl.resp.complete = true;
        ctl.resp.started = true;
        self.maybe_finish(id)
    }

    fn apply_deferred(&mut self, vm: usize, deferred: Vec<Deferred>) -> Result<()> {
        // Envoy answers with the first local reply a callback asked for; a later one in
        // the same callback only overwrites the response code details (conformance case
        // `local_reply_matches_envoy`: 403 "denied" reached the client, and on_log read
        // the second call's empty details).
        let mut deferred = deferred;
        let mut i = 0;
        while i < deferred.len() {
            let later = match &deferred[i] {
                Deferred::LocalReply(c, r) => deferred[..i]
                    .iter()
                    .position(|d| matches!(d, Deferred::LocalReply(first, _) if first == c))
                    .map(|first| (first, r.details.clone())),
                _ => None,
            };
            match later {
                Some((first, details)) => {
                    if let Deferred::LocalReply(_, r) = &mut deferred[first] {
                        r.details = details;
                    }
                    deferred.remove(i);
                }
                None => i += 1,
            }
        }
        for d in deferred {
            let (ctx, action) = match d {
                Deferred::Continue(c, t) => (c, (Some(t), None, None)),
                Deferred::Close(c, t) => (c, (None, Some(t), None)),
                Deferred::LocalReply(c, r) => (c, (None, None, Some(r))),
            };
            let Some(&id) = self.by_ctx.get(&(vm, ctx)) else {
                continue;
            };
            match action {
                (Some(StreamType::HttpRequest), _, _) => self.resume(id, Dir::Request)?,
                (Some(StreamType::HttpResponse), _, _) => self.resume(id, Dir::Response)?,
                (_, Some(_), _) => {
                    let ctl = self.ctl(id)?;
                    ctl.view.reset = true;
                    self.maybe_finish(id)?;
                }
                (_, _, Some(reply)) => self.send_local_reply(id, reply)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn send_local_reply(&mut self, id: StreamId, reply: LocalReply) -> Result<()> {
        let ctl = self.ctl(id)?;
        if ctl.view.finished || ctl.view.reset {
            return Ok(());
        }
        if ctl.view.response_headers.is_some() || ctl.local_reply_in_progress {
            // Headers already went downstream: Envoy can only reset the stream.
            ctl.view.reset = true;
            return self.maybe_finish(id);
        }
        ctl.local_reply_in_progress = true;
        ctl.req.stopped = None;
        ctl.req.complete = true;
        ctl.view.local_reply = Some(reply.clone());
        // The local reply goes through the encoder path, this filter included.
        let headers = local_reply_headers(&reply);
        let body = reply.body.clone();
        ctl.resp.started = true;
        ctl.resp.stopped = None;
        let end = body.is_empty();
        self.deliver(id, Dir::Response, Part::Headers(headers, end))?;
        if !end {
            let ctl = self.ctl(id)?;
            if ctl.resp.stopped == Some(Stop::Headers) {
                ctl.resp.held_body = Some(body);
                ctl.resp.held_end = true;
            } else if !ctl.view.reset {
                self.deliver(id, Dir::Response, Part::Body(body, true))?;
            }
        }
        self.maybe_finish(id)
    }

    /// Passes on what the filter holds for one part (the filter continued): Envoy
    /// drops its pointer to the headers, body or trailers once the filter continues.
    fn forward(&mut self, id: StreamId, dir: Dir, what: Stop, eos: bool) -> Result<()> {
        let ctl = self.ctl(id)?;
        let (vm, ctx) = (ctl.vm, ctl.ctx);
        ctl.side(dir).stopped = None;
        let data = self.vms[vm].store.data_mut().stream_mut(ctx);
        let part = match what {
            Stop::Headers => Part::Headers(
                data.and_then(|s| s.headers(dir).take()).unwrap_or_default(),
                eos,
            ),
            Stop::Body => Part::Body(
                data.and_then(|s| s.body(dir).take()).unwrap_or_default(),
                eos,
            ),
            Stop::Trailers => {
                // A body the filter buffered before its trailers came leaves first.
                let (body, trailers) = match data {
                    Some(s) => (s.body(dir).take(), s.trailers(dir).take()),
                    None => (None, None),
                };
                if let Some(body) = body.filter(|b| !b.is_empty()) {
                    self.emit(id, dir, Part::Body(body, false))?;
                }
                Part::Trailers(trailers.unwrap_or_default())
            }
        };
        self.emit(id, dir, part)
    }

    /// A part leaves the filter: the request goes to the upstream, the response to
    /// the client. At end of stream the upstream is played (`send` streams) or the
    /// stream ends.
    fn emit(&mut self, id: StreamId, dir: Dir, part: Part) -> Result<()> {
        let ctl = self.ctl(id)?;
        let end = match &part {
            Part::Headers(_, eos) | Part::Body(_, eos) => *eos,
            Part::Trailers(_) => true,
        };
        match (dir, part) {
            (Dir::Request, Part::Headers(headers, eos)) => {
                ctl.view.upstream_request = Some(UpstreamRequest {
                    headers,
                    complete: eos,
                    ..UpstreamRequest::default()
                });
            }
            (Dir::Request, Part::Body(body, eos)) => {
                if let Some(up) = ctl.view.upstream_request.as_mut() {
                    up.body.extend_from_slice(&body);
                    up.complete = eos;
                }
            }
            (Dir::Request, Part::Trailers(trailers)) => {
                if let Some(up) = ctl.view.upstream_request.as_mut() {
                    up.trailers = Some(trailers);
                    up.complete = true;
                }
            }
            (Dir::Response, Part::Headers(headers, _)) => ctl.view.response_headers = Some(headers),
            (Dir::Response, Part::Body(body, _)) => ctl.view.response_body.extend_from_slice(&body),
            (Dir::Response, Part::Trailers(trailers)) => {
                ctl.view.response_trailers = Some(trailers);
            }
        }
        if !end {
            return Ok(());
        }
        ctl.side(dir).complete = true;
        match dir {
            Dir::Request => self.maybe_call_upstream(id),
            Dir::Response => {
                ctl.view.response_complete = true;
                self.maybe_finish(id)
            }
        }
    }

    /// The filter resumed one side (`proxy_continue_stream`): pass on what it held,
    /// then hand it what arrived meanwhile (after StopAll, the held data reaches this
    /// filter first).
    fn resume(&mut self, id: StreamId, dir: Dir) -> Result<()> {
        let side = self.ctl(id)?.side(dir);
        let (stopped, held_end) = (side.stopped, side.held_end);
        match stopped {
            Some(Stop::Headers) => {
                let body = side.held_body.take();
                let trailers = side.held_trailers.take();
                let headers_end = held_end && body.is_none() && trailers.is_none();
                self.forward(id, dir, Stop::Headers, headers_end)?;
                let mut paused = false;
                if let Some(body) = body {
                    let end = held_end && trailers.is_none();
                    paused = self.deliver(id, dir, Part::Body(body, end))? == Action::Pause;
                }
                if let Some(t) = trailers {
                    if paused {
                        self.ctl(id)?.side(dir).held_trailers = Some(t);
                    } else {
                        self.deliver(id, dir, Part::Trailers(t))?;
                    }
                }
            }
            Some(Stop::Body) => {
                let trailers = side.held_trailers.take();
                self.forward(id, dir, Stop::Body, held_end && trailers.is_none())?;
                if let Some(t) = trailers {
                    self.deliver(id, dir, Part::Trailers(t))?;
                }
            }
            Some(Stop::Trailers) => self.forward(id, dir, Stop::Trailers, true)?,
            None => {}
        }
        Ok(())
    }

    /// For `send` streams: once the whole request is upstream, play the upstream.
    fn maybe_call_upstream(&mut self, id: StreamId) -> Result<()> {
        let ctl = self.ctl(id)?;
        if !ctl.auto
            || !ctl.req.complete
            || ctl.resp.started
            || ctl.view.local_reply.is_some()
            || ctl.view.reset
        {
            return Ok(());
        }
        let Some(upstream) = ctl.view.upstream_request.clone() else {
            return Ok(());
        };
        // Envoy 1.40's router finds no route for a request the filters left without
        // x-forwarded-proto and answers 404 itself: conformance case
        // `setting_all_request_headers_needs_x_forwarded_proto` replaced the request
        // headers without it and got `404 route_not_found`, with it the upstream's answer.
        let response = if upstream.header("x-forwarded-proto").is_none() {
            ctl.router_details = Some("route_not_found".to_string());
            Response::new(404)
        } else {
            match ctl.response_for_auto.take() {
                Some(r) => r,
                None => (self.upstream)(&upstream),
            }
        };
        let chunks = response.body.len();
        let no_body = chunks == 0 && response.trailers.is_none();
        let headers = response.headers_with_status();
        self.response_headers(id, headers, no_body)?;
        // As for requests: chunks without end of stream, then an empty end-of-stream
        // frame, as Envoy's HTTP/1 upstream codec delivers them.
        for chunk in &response.body {
            self.response_body(id, chunk, false)?;
        }
        if let Some(t) = response.trailers {
            self.response_trailers(id, t)?;
        } else if chunks > 0 {
            self.response_body(id, &[], true)?;
        }
        Ok(())
    }

    /// For `send` streams: end the stream once the response is complete.
    fn maybe_finish(&mut self, id: StreamId) -> Result<()> {
        let ctl = self.ctl(id)?;
        if ctl.auto && !ctl.view.finished && (ctl.view.response_complete || ctl.view.reset) {
            self.finish(id)?;
        }
        Ok(())
    }

    // ---- events, time and callouts ---------------------------------------------

    /// Delivers queued events (on_queue_ready) until none is left.
    fn pump(&mut self) -> Result<()> {
        for _ in 0..MAX_EVENTS_PER_CALL {
            let event = lock(&self.shared).events.pop_front();
            let Some(event) = event else {
                self.sync_live();
                return Ok(());
            };
            match event {
                Event::QueueReady {
                    vm,
                    context_id,
                    token,
                } => {
                    if vm < self.vms.len() && self.vms[vm].failed.is_none() {
                        self.root_call(vm, Call::QueueReady(context_id, token))?;
                    }
                }
            }
        }
        Err(Error::Usage(format!(
            "more than {MAX_EVENTS_PER_CALL} events in one step: does on_queue_ready enqueue forever?"
        )))
    }

    /// Calls a root-context callback and applies its deferred actions. A trap fails
    /// the VM (it is reported by `vm_failure`), as it would in Envoy.
    fn root_call(&mut self, vm: usize, call: Call) -> Result<()> {
        let _ = self.call(vm, call);
        let deferred = std::mem::take(&mut self.vms[vm].store.data_mut().deferred);
        self.apply_deferred(vm, deferred)
    }

    /// How many times the host has entered a guest through a callback export (all VMs): a
    /// callback the module does not export is answered without entering it, as Envoy does,
    /// and not counted. Allocations the host makes in the guest are counted by
    /// [`Host::import_calls`] as `malloc`.
    pub fn guest_calls(&self) -> u64 {
        self.guest_calls
    }

    /// Wasm instructions the guests (all VMs) have run in callbacks since the host started,
    /// counted by wasmtime's fuel (allocations the host makes in a guest included): the
    /// filter's own work, deterministic, without the host's cost.
    pub fn guest_instructions(&self) -> u64 {
        self.guest_instructions
    }

    /// [`Host::guest_instructions`] by callback export (`proxy_on_request_headers`...).
    pub fn guest_instructions_by_callback(&self) -> BTreeMap<&'static str, u64> {
        self.instructions_by_callback.clone()
    }

    /// How many times the guests (all VMs) called each host function since the host started,
    /// by import name (`proxy_get_shared_data`...), plus `malloc`: the allocations the host made
    /// in a guest to return data (Envoy makes the same call into the guest). For pinning a
    /// filter's host-call cost per request, the dominant cost of a filter in Envoy's V8.
    pub fn import_calls(&self) -> BTreeMap<String, u64> {
        lock(&self.shared)
            .import_calls
            .iter()
            .map(|(name, n)| ((*name).to_string(), *n))
            .collect()
    }

    /// Virtual time since the host started.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(lock(&self.shared).now_ns)
    }

    /// Advances the virtual clock, firing ticks and callout timeouts in time
    /// order (ties: VM order, then context id, then callout id).
    pub fn advance(&mut self, by: Duration) -> Result<()> {
        let target = lock(&self.shared)
            .now_ns
            .saturating_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX));
        for _ in 0..MAX_EVENTS_PER_CALL {
            match self.next_timer(target) {
                None => {
                    lock(&self.shared).now_ns = target;
                    return self.pump();
                }
                Some((at, timer)) => {
                    lock(&self.shared).now_ns = at;
                    match timer {
                        Timer::Tick(vm, root) => {
                            if let Some(t) = self.vms[vm].store.data_mut().ticks.get_mut(&root) {
                                t.next_ns = at + t.period_ns;
                            }
                            // Envoy stops re-arming when the module has no on_tick.
                            if self.vms[vm].exports.on_tick.is_none() {
                                self.vms[vm].store.data_mut().ticks.remove(&root);
                            }
                            self.root_call(vm, Call::Tick(root))?;
                        }
                        Timer::HttpTimeout(id) => self.time_out_http_call(id)?,
                        Timer::GrpcTimeout(id) => self.deliver_grpc(
                            id,
                            GrpcEvent::Close {
                                status: 4,
                                message: "Request timeout".into(),
                            },
                        )?,
                    }
                    self.pump()?;
                }
            }
        }
        Err(Error::Usage(format!(
            "more than {MAX_EVENTS_PER_CALL} timers fired in one advance(): use smaller steps"
        )))
    }

    fn next_timer(&self, target: u64) -> Option<(u64, Timer)> {
        let mut best: Option<(u64, Timer)> = None;
        let mut consider = |at: u64, t: Timer| {
            if at <= target && best.as_ref().is_none_or(|(b, _)| at < *b) {
                best = Some((at, t));
            }
        };
        for (vm, v) in self.vms.iter().enumerate() {
            // Envoy's base VM never ticks.
            if v.failed.is_some() || (vm == 0 && self.base_vm) {
                continue;
            }
            for (root, tick) in &v.store.data().ticks {
                consider(tick.next_ns, Timer::Tick(vm, *root));
            }
        }
        let sh = lock(&self.shared);
        for (id, c) in &sh.http_callouts {
            consider(c.deadline_ns, Timer::HttpTimeout(*id));
        }
        for (id, c) in &sh.grpc_callouts {
            if let Some(at) = c.deadline_ns {
                consider(at, Timer::GrpcTimeout(*id));
            }
        }
        best
    }

    /// HTTP callouts waiting for an answer, oldest first.
    pub fn http_callouts(&self) -> Vec<HttpCallout> {
        lock(&self.shared).http_callouts.values().cloned().collect()
    }

    /// gRPC calls and streams still open, oldest first.
    pub fn grpc_callouts(&self) -> Vec<GrpcCallout> {
        lock(&self.shared).grpc_callouts.values().cloned().collect()
    }

    /// Answers an HTTP callout: `on_http_call_response` runs with this response.
    pub fn respond_http_call(&mut self, id: u64, response: Response) -> Result<()> {
        let body: Vec<u8> = response.body.concat();
        self.deliver_http_response(
            id,
            Some((
                response.headers_with_status(),
                body,
                response.trailers.unwrap_or_default(),
            )),
        )
    }

    /// Fails an HTTP callout as a reset connection: the guest sees no headers, no
    /// body (Envoy's onFailure → `on_http_call_response(token, 0, 0, 0)`).
    pub fn fail_http_call(&mut self, id: u64) -> Result<()> {
        self.deliver_http_response(id, None)
    }

    fn time_out_http_call(&mut self, id: u64) -> Result<()> {
        // Envoy's async client times out through the router, which answers a
        // local 504 "upstream request timeout".
        let body = b"upstream request timeout".to_vec();
        let headers = vec![
            (":status".to_string(), "504".to_string()),
            ("content-length".to_string(), body.len().to_string()),
            ("content-type".to_string(), "text/plain".to_string()),
        ];
        self.deliver_http_response(id, Some((headers, body, Vec::new())))
    }

    fn deliver_http_response(
        &mut self,
        id: u64,
        response: Option<(Headers, Vec<u8>, Headers)>,
    ) -> Result<()> {
        let callout = lock(&self.shared)
            .http_callouts
            .remove(&id)
            .ok_or_else(|| Error::Usage(format!("no pending HTTP callout {id}")))?;
        let vm = callout.vm;
        if self.vms[vm].failed.is_some()
            || !self.vms[vm]
                .store
                .data()
                .contexts
                .contains_key(&callout.context_id)
        {
            return Ok(());
        }
        let (nh, nb, nt) = match &response {
            Some((h, b, t)) => (h.len() as u32, b.len() as u32, t.len() as u32),
            None => (0, 0, 0),
        };
        let st = self.vms[vm].store.data_mut();
        if let Some((h, b, t)) = response {
            st.call.http_headers = Some(h);
            st.call.http_body = Some(b);
            st.call.http_trailers = Some(t);
        } else {
            st.call.http_headers = Some(Vec::new());
            st.call.http_body = Some(Vec::new());
            st.call.http_trailers = Some(Vec::new());
        }
        self.root_call_keep(
            vm,
            Call::HttpCallResponse(callout.context_id, callout.token, nh, nb, nt),
        )?;
        self.pump()
    }

    /// Like `root_call`, but the call data prepared by the caller stays in place.
    fn root_call_keep(&mut self, vm: usize, call: Call) -> Result<()> {
        let saved = std::mem::take(&mut self.vms[vm].store.data_mut().call);
        let v = &mut self.vms[vm];
        // `call` resets call data after the callback; set it right before.
        v.store.data_mut().call = saved;
        let _ = self.call(vm, call);
        let deferred = std::mem::take(&mut self.vms[vm].store.data_mut().deferred);
        self.apply_deferred(vm, deferred)
    }

    /// Delivers a gRPC event to a call or stream. `Close` ends it; a `Message` on a
    /// unary call ends it too (Envoy sends only `on_grpc_receive` on success).
    pub fn deliver_grpc(&mut self, id: u64, event: GrpcEvent) -> Result<()> {
        let callout = lock(&self.shared)
            .grpc_callouts
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Usage(format!("no open gRPC callout {id}")))?;
        let vm = callout.vm;
        let ends = matches!(event, GrpcEvent::Close { .. })
            || (!callout.streaming && matches!(event, GrpcEvent::Message(_)));
        if ends {
            lock(&self.shared).grpc_callouts.remove(&id);
            self.vms[vm]
                .store
                .data_mut()
                .grpc_tokens
                .remove(&callout.token);
        }
        if self.vms[vm].failed.is_some() {
            return Ok(());
        }
        let (ctx, token) = (callout.context_id, callout.token);
        let st = self.vms[vm].store.data_mut();
        let call = match event {
            GrpcEvent::InitialMetadata(h) => {
                let n = h.len() as u32;
                st.call.grpc_initial = Some(lower(h));
                Call::GrpcInitial(ctx, token, n)
            }
            GrpcEvent::Message(m) => {
                let n = m.len() as u32;
                st.call.grpc_message = Some(m);
                Call::GrpcReceive(ctx, token, n)
            }
            GrpcEvent::TrailingMetadata(h) => {
                let n = h.len() as u32;
                st.call.grpc_trailing = Some(lower(h));
                Call::GrpcTrailing(ctx, token, n)
            }
            GrpcEvent::Close { status, message } => {
                st.grpc_status = (status, message.into_bytes());
                Call::GrpcClose(ctx, token, status)
            }
        };
        self.root_call_keep(vm, call)?;
        self.pump()
    }

    /// Calls the guest's `proxy_on_foreign_function` on a worker's root context
    /// (how Envoy delivers foreign-function events to a plugin).
    pub fn call_guest_foreign_function(
        &mut self,
        worker: usize,
        function_id: u32,
        data: &[u8],
    ) -> Result<()> {
        let v = self
            .vms
            .get_mut(worker)
            .ok_or_else(|| Error::Usage(format!("no worker {worker}")))?;
        let st = v.store.data_mut();
        let root = st.root_id;
        st.call.foreign_args = Some(data.to_vec());
        self.root_call_keep(worker, Call::Foreign(root, function_id, data.len() as u32))?;
        self.pump()
    }

    // ---- shared state -------------------------------------------------------------

    /// A shared-data entry: value and CAS token.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.shared).data.get(key.as_bytes()).cloned()
    }

    /// Every shared-data key, sorted.
    pub fn shared_data_keys(&self) -> Vec<String> {
        lock(&self.shared)
            .data
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    /// Sets a shared-data entry from outside (like another plugin would).
    pub fn set_shared_data(&mut self, key: &str, value: &[u8]) {
        let mut sh = lock(&self.shared);
        let cas = sh.next_cas();
        sh.data
            .insert(key.as_bytes().to_vec(), (value.to_vec(), cas));
    }

    /// Enqueues onto a registered shared queue from outside and delivers
    /// `on_queue_ready` to its owner.
    pub fn enqueue(&mut self, queue: &str, value: &[u8]) -> Result<()> {
        {
            let vm_id = self
                .vms
                .first()
                .map(|v| v.store.data().vm_id.clone())
                .unwrap_or_default();
            let mut sh = lock(&self.shared);
            let token = *sh
                .queue_tokens
                .get(&(vm_id, queue.to_string()))
                .ok_or_else(|| Error::Usage(format!("no shared queue named {queue:?}")))?;
            let q = sh
                .queues
                .get_mut(&token)
                .ok_or_else(|| Error::Usage("queue vanished".into()))?;
            q.items.push_back(value.to_vec());
            let event = Event::QueueReady {
                vm: q.owner_vm,
                context_id: q.owner_context,
                token,
            };
            sh.events.push_back(event);
        }
        self.pump()
    }

    /// Items waiting in a shared queue (by name).
    pub fn queue_items(&self, queue: &str) -> Vec<Vec<u8>> {
        let sh = lock(&self.shared);
        sh.queues
            .values()
            .find(|q| q.name == queue)
            .map(|q| q.items.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A metric by the name the guest defined (Envoy shows it as `wasmcustom.<name>`).
    pub fn metric(&self, name: &str) -> Option<Metric> {
        lock(&self.shared).metrics.get(name).cloned()
    }

    /// Every metric, sorted by name.
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        lock(&self.shared).metrics.clone()
    }

    /// Every log line kept so far.
    pub fn logs(&self) -> Vec<LogEntry> {
        lock(&self.shared).logs.clone()
    }

    /// Returns and clears the log.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut lock(&self.shared).logs)
    }

    /// Why a worker's VM failed, if it did.
    pub fn vm_failure(&self, worker: usize) -> Option<&str> {
        self.vms.get(worker).and_then(|v| v.failed.as_deref())
    }

    /// The tick period a worker's root context set, if any.
    pub fn tick_period(&self, worker: usize) -> Option<Duration> {
        let v = self.vms.get(worker)?;
        let st = v.store.data();
        st.ticks
            .get(&st.root_id)
            .map(|t| Duration::from_nanos(t.period_ns))
    }

    /// Registers a foreign function the guest can call by name.
    pub fn register_foreign_function(
        &mut self,
        name: &str,
        f: impl FnMut(&[u8]) -> std::result::Result<Vec<u8>, crate::abi::Status> + Send + 'static,
    ) {
        let f: ForeignFunction = Box::new(f);
        lock(&self.shared).foreign.insert(name.to_string(), f);
    }

    /// Every foreign function call the guest made: name and arguments.
    pub fn foreign_calls(&self) -> Vec<(String, Vec<u8>)> {
        lock(&self.shared).foreign_calls.clone()
    }

    /// Marks the module's root context on `worker` as shutting down: `on_done`
    /// runs and, if it returns false, the guest must call `proxy_done`.
    /// Returns whether the root finished at once.
    pub fn shutdown_root(&mut self, worker: usize) -> Result<bool> {
        let root = self
            .vms
            .get(worker)
            .ok_or_else(|| Error::Usage(format!("no worker {worker}")))?
            .store
            .data()
            .root_id;
        crate::imports::expect_done(self.vms[worker].store.data_mut(), root);
        let r = self.call(worker, Call::Done(root));
        let done = matches!(r, Ok(Some(v)) if v != 0);
        if done {
            let st = self.vms[worker].store.data_mut();
            st.done_roots.retain(|r| *r != root);
        }
        Ok(done)
    }

    /// Whether the guest called `proxy_done` for a root that was shutting down.
    pub fn root_done(&self, worker: usize) -> bool {
        self.vms
            .get(worker)
            .map(|v| {
                let st = v.store.data();
                crate::imports::is_root(st, st.root_id) && !st.done_roots.contains(&st.root_id)
            })
            .unwrap_or(false)
    }
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    Tick(usize, u32),
    HttpTimeout(u64),
    GrpcTimeout(u64),
}

fn opt1(
    f: &Option<wasmtime::TypedFunc<u32, ()>>,
    s: &mut Store<VmState>,
    a: u32,
) -> wasmtime::Result<Option<u32>> {
    match f {
        Some(f) => f.call(s, a).map(|()| None),
        None => Ok(None),
    }
}

fn opt2(
    f: &Option<wasmtime::TypedFunc<(u32, u32), ()>>,
    s: &mut Store<VmState>,
    a: (u32, u32),
) -> wasmtime::Result<Option<u32>> {
    match f {
        Some(f) => f.call(s, a).map(|()| None),
        None => Ok(None),
    }
}

fn opt3(
    f: &Option<wasmtime::TypedFunc<(u32, u32, u32), ()>>,
    s: &mut Store<VmState>,
    a: (u32, u32, u32),
) -> wasmtime::Result<Option<u32>> {
    match f {
        Some(f) => f.call(s, a).map(|()| None),
        None => Ok(None),
    }
}

fn opt2r(
    f: &Option<wasmtime::TypedFunc<(u32, u32), u32>>,
    s: &mut Store<VmState>,
    a: (u32, u32),
    missing: u32,
) -> wasmtime::Result<Option<u32>> {
    match f {
        Some(f) => f.call(s, a).map(Some),
        None => Ok(Some(missing)),
    }
}

fn opt3r(
    f: &Option<wasmtime::TypedFunc<(u32, u32, u32), u32>>,
    s: &mut Store<VmState>,
    a: (u32, u32, u32),
) -> wasmtime::Result<Option<u32>> {
    match f {
        Some(f) => f.call(s, a).map(Some),
        None => Ok(Some(0)),
    }
}

fn lower(headers: Headers) -> Headers {
    headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// Headers of a local reply as Envoy builds them: `:status`, the guest's headers,
/// and `content-length`/`content-type` for a body.
fn local_reply_headers(reply: &LocalReply) -> Headers {
    // Envoy adds the guest's headers before the body's: conformance case
    // `local_reply_matches_envoy` saw `:status, x-local, content-length, content-type`.
    let mut h = vec![(":status".to_string(), reply.status.to_string())];
    h.extend(reply.headers.iter().cloned());
    if !reply.body.is_empty() {
        h.push(("content-length".into(), reply.body.len().to_string()));
        h.push(("content-type".into(), "text/plain".into()));
    }
    h
}

/// The stream properties Envoy derives from the request (`request.*`) plus the
/// connection defaults a test can override.
fn derived_properties(headers: &Headers) -> Vec<(String, PropertyValue)> {
    let get = |n: &str| {
        crate::shared::find_header(headers, n)
            .unwrap_or("")
            .to_string()
    };
    let path = get(":path");
    let url_path = path.split('?').next().unwrap_or("").to_string();
    let mut props = vec![
        ("request.path".to_string(), PropertyValue::String(path)),
        (
            "request.url_path".to_string(),
            PropertyValue::String(url_path),
        ),
        (
            "request.method".to_string(),
            PropertyValue::String(get(":method")),
        ),
        (
            "request.host".to_string(),
            PropertyValue::String(get(":authority")),
        ),
        (
            "request.scheme".to_string(),
            PropertyValue::String(get(":scheme")),
        ),
        (
            "request.protocol".to_string(),
            PropertyValue::String("HTTP/1.1".into()),
        ),
        (
            "source.address".to_string(),
            PropertyValue::String("127.0.0.1:50000".into()),
        ),
        ("source.port".to_string(), PropertyValue::Int(50000)),
        (
            "destination.address".to_string(),
            PropertyValue::String("127.0.0.1:10000".into()),
        ),
        ("destination.port".to_string(), PropertyValue::Int(10000)),
    ];
    let id = get("x-request-id");
    if !id.is_empty() {
        props.push(("request.id".to_string(), PropertyValue::String(id)));
    }
    props
}
