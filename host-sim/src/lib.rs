//! host-sim: a deterministic, state-based proxy-wasm ABI 0.2.1 host on wasmtime.

mod abi;
mod error;
mod host;
mod http;
mod imports;
mod memory;
mod module;
mod scenario;
mod shared;
mod vm;
mod wasi;

pub use abi::{Action, Headers, LogLevel, MetricKind, Status};
pub use error::{Error, Result};
pub use host::{
    FailurePolicy, GrpcEvent, Host, HostBuilder, StreamId, StreamView, UpstreamRequest,
};
pub use http::{PropertyValue, Request, Response};
pub use module::{provided_imports, AbiVersion, Module};
pub use scenario::{run_scenario, Report, Scenario, StepReport, Verdict};
pub use shared::{ForeignFunction, GrpcCallout, HttpCallout, LogEntry, Metric};
pub use vm::LocalReply;
pub use wasi::ProcExit;
