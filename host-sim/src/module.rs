//! A compiled proxy-wasm module, checked once and instantiated per VM.

use std::path::Path;
use std::sync::Arc;

use wasmtime::{Config, Engine, ExternType, InstancePre, Linker};

use crate::error::{Error, Result};
use crate::imports::{self, ENV_IMPORTS};
use crate::vm::VmState;
use crate::wasi::WASI_IMPORTS;

/// The proxy-wasm ABI version a module was built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_2_0`.
    V0_2_0,
    /// `proxy_abi_version_0_2_1`.
    V0_2_1,
}

struct Inner {
    name: String,
    engine: Engine,
    module: wasmtime::Module,
    pre: InstancePre<VmState>,
    abi: AbiVersion,
}

/// A proxy-wasm module compiled with wasmtime. Compile once, then build as many
/// hosts as you like from it (cloning is cheap and it can be shared across threads).
#[derive(Clone)]
pub struct Module {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.inner.name)
            .field("abi", &self.inner.abi)
            .finish()
    }
}

impl Module {
    /// Reads and compiles a `.wasm` (or `.wat`) file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Module> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Module::from_bytes(&name, &bytes)
    }

    /// Compiles a module from bytes (binary wasm or the text format).
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Module> {
        let mut config = Config::new();
        // Fuel turns a guest that never returns into a deterministic trap, and
        // canonical NaNs keep float results identical across machines.
        config.consume_fuel(true);
        config.cranelift_nan_canonicalization(true);
        let engine = Engine::new(&config).map_err(|e| Error::Runtime(e.to_string()))?;
        let module = wasmtime::Module::new(&engine, bytes).map_err(|e| Error::InvalidWasm {
            name: name.to_string(),
            reason: format!("{e:#}"),
        })?;
        let abi = check_exports(name, &module)?;
        check_imports(name, &module)?;
        let mut linker = Linker::new(&engine);
        imports::link(&mut linker).map_err(|e| Error::Runtime(e.to_string()))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Runtime(format!("{e:#}")))?;
        Ok(Module {
            inner: Arc::new(Inner {
                name: name.to_string(),
                engine,
                module,
                pre,
                abi,
            }),
        })
    }

    /// The module's name (its file name).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The proxy-wasm ABI version the module exports.
    pub fn abi_version(&self) -> AbiVersion {
        self.inner.abi
    }

    /// Every function the module imports, as `(module, name)`.
    pub fn imports(&self) -> Vec<(String, String)> {
        self.inner
            .module
            .imports()
            .map(|i| (i.module().to_string(), i.name().to_string()))
            .collect()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn pre(&self) -> &InstancePre<VmState> {
        &self.inner.pre
    }
}

/// Every import host-sim provides, as `(module, name)`.
pub fn provided_imports() -> Vec<(String, String)> {
    let env = ENV_IMPORTS
        .iter()
        .map(|n| ("env".to_string(), n.to_string()));
    let wasi = WASI_IMPORTS
        .iter()
        .map(|n| ("wasi_snapshot_preview1".to_string(), n.to_string()));
    env.chain(wasi).collect()
}

fn check_exports(name: &str, module: &wasmtime::Module) -> Result<AbiVersion> {
    let has_func = |n: &str| matches!(module.get_export(n), Some(ExternType::Func(_)));
    let abi = if has_func("proxy_abi_version_0_2_1") {
        AbiVersion::V0_2_1
    } else if has_func("proxy_abi_version_0_2_0") {
        AbiVersion::V0_2_0
    } else if has_func("proxy_abi_version_0_1_0") {
        return Err(Error::UnsupportedAbi {
            name: name.to_string(),
            version: "0.1.0".to_string(),
        });
    } else {
        return Err(Error::NotProxyWasm {
            name: name.to_string(),
        });
    };
    let bad = |problem: &str| Error::BadExport {
        name: name.to_string(),
        problem: problem.to_string(),
    };
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err(bad("exports no memory named `memory`"));
    }
    if !has_func("malloc") && !has_func("proxy_on_memory_allocate") {
        return Err(bad(
            "exports neither malloc nor proxy_on_memory_allocate, so the host cannot return data",
        ));
    }
    if !has_func("proxy_on_context_create") {
        return Err(bad("exports no proxy_on_context_create"));
    }
    Ok(abi)
}

fn check_imports(name: &str, module: &wasmtime::Module) -> Result<()> {
    let provided = provided_imports();
    for import in module.imports() {
        let known = provided
            .iter()
            .any(|(m, n)| m == import.module() && n == import.name());
        if !known {
            return Err(Error::UnknownImport {
                name: name.to_string(),
                module: import.module().to_string(),
                field: import.name().to_string(),
            });
        }
    }
    Ok(())
}
