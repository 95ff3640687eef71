//! meshguard's fallback filter: circuit breakers whose state is shared by every Envoy worker
//! (shared data + CAS), serving a static or fail-fast response while a breaker is open.
//! README.md documents the JSON configuration; these types are its schema.

mod cache;
mod config;
mod engine;
mod filter;
mod matching;

pub use crate::config::{
    BreakerConfig, BreakerKey, CacheFallback, Config, Duration, FailFast, Failure, FailureRatio,
    Fallback, HalfOpen, HeaderMatch, Match, Mode, Open, ServiceFallback, SlowCalls, StaticResponse,
    Status, StringMatch, Trip, Window,
};

/// Checks a configuration (JSON) as `on_configure` does, without a host, so a control plane
/// can reject it before Envoy sees it; the error starts with the field's path.
pub fn validate_config(json: &[u8]) -> Result<(), String> {
    meshguard_filter_common::parse_config::<Config>(json)
        .and_then(|c| engine::Engine::compile(&c))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

// Natively no `_initialize` is exported: the control plane links every filter (for
// `validate_config`) and the symbol would be defined once per filter.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    filter::start();
}}

/// Keeps the shell compiled (and linted) natively, where nothing starts it.
#[cfg(not(target_arch = "wasm32"))]
#[allow(dead_code)]
fn start() {
    filter::start();
}
