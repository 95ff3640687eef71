//! meshguard's tenant filter: verified tenant identity, cross-tenant denial, tenant-scoped Consul API.
//! (Skeleton: the filter is being built; until then it refuses every configuration.)

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        log::error!("meshguard-tenant: not implemented yet");
        false
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}
