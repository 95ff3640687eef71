//! The one error type of host-sim's API.

/// What went wrong loading a module, driving it, or replaying a scenario.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid WebAssembly module.
    #[error("{name} is not a valid WebAssembly module: {reason}")]
    InvalidWasm {
        /// Module name (usually its file name).
        name: String,
        /// Why wasmtime rejected it.
        reason: String,
    },
    /// The module exports no proxy-wasm ABI version marker.
    #[error("{name} is not a proxy-wasm module: it exports no proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0 function")]
    NotProxyWasm {
        /// Module name.
        name: String,
    },
    /// The module targets an ABI host-sim does not implement.
    #[error("{name} uses proxy-wasm ABI {version}, host-sim implements 0.2.0 and 0.2.1")]
    UnsupportedAbi {
        /// Module name.
        name: String,
        /// The ABI version the module exports.
        version: String,
    },
    /// A required export is missing or has the wrong type.
    #[error("{name}: {problem}")]
    BadExport {
        /// Module name.
        name: String,
        /// What is missing or wrong.
        problem: String,
    },
    /// The module imports a function host-sim does not provide.
    #[error("{name} imports {module}::{field}, which host-sim does not provide")]
    UnknownImport {
        /// Module name.
        name: String,
        /// Import module (`env`, `wasi_snapshot_preview1`).
        module: String,
        /// Import name.
        field: String,
    },
    /// The guest trapped (panicked, ran out of fuel, called proc_exit…).
    #[error("worker {vm} trapped in {callback}: {reason}")]
    Trap {
        /// VM index.
        vm: usize,
        /// The export that was running.
        callback: String,
        /// wasmtime's description.
        reason: String,
    },
    /// The test used the API wrongly (unknown stream, worker, callout…).
    #[error("{0}")]
    Usage(String),
    /// A scenario file is malformed.
    #[error("scenario {path}: {reason}")]
    Scenario {
        /// The file.
        path: String,
        /// What is wrong, naming the step or field.
        reason: String,
    },
    /// wasmtime failed for a reason that is not the guest's fault.
    #[error("wasmtime: {0}")]
    Runtime(String),
}

/// host-sim's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
