//! meshguard's rate-limit filter: keyed limits held exactly across Envoy workers through shared
//! data, with reject, delay (pacing) and shadow actions and privileged tiers. README.md
//! documents the JSON configuration; these types are its schema.

mod config;
mod delay;
mod engine;
mod filter;
mod limits;
mod matching;
mod request;
mod table;

pub use crate::config::{
    Action, Algorithm, Config, Duration, HeaderMatch, HeadersMode, KeyPart, Limit, Match,
    OnMissingKey, Response, Rule, StringMatch, Tier, DEFAULT_MAX_KEYS, MAX_MAX_KEYS,
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
