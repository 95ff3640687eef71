//! meshguard's router filter: Consul-synced instances, load balancers, failover/failfast/
//! failsafe/failback, and a client cache that survives Consul outages. README.md documents the
//! JSON configuration; these types are its schema.

mod config;
mod failback;
mod filter;
mod pool;
mod registry;
mod sync;

pub use crate::config::{
    Balancer, Config, Consul, Duration, Failback, FallbackResponse, HashOn, HeaderMatch,
    LocalityConfig, Match, Mode, Outlier, ResponseTime, Service, StringMatch,
    DEFAULT_OVERRIDE_HOST_HEADER, MAX_QUEUE_SIZE, MAX_RETRIES, MAX_SERVICES,
};
pub use crate::registry::{lease_key, list_key, status_key, sync_scope, TENANTS_KEY};

/// Checks a configuration (JSON) as `on_configure` does, without a host, so a control plane
/// can reject it before Envoy sees it; the error starts with the field's path.
pub fn validate_config(json: &[u8]) -> Result<(), String> {
    let config =
        meshguard_filter_common::parse_config::<Config>(json).map_err(|e| e.to_string())?;
    for (i, s) in config.services.iter().enumerate() {
        let at = |field: &str, e: String| format!("services[{i}]{field}: {e}");
        pool::Policy::compile(s, &config.consul.datacenters).map_err(|e| at("", e))?;
        if let Some(f) = &s.failback {
            meshguard_core::Backoff::try_new(f.retry_base.as_nanos(), f.retry_max.as_nanos())
                .map_err(|e| at(".failback", e.to_string()))?;
        }
    }
    sync::Syncer::new(&config, 1).map_err(|e| format!("consul: {e}"))?;
    Ok(())
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
