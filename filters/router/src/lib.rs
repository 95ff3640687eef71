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
pub use crate::registry::{list_key, status_key, LEASE_KEY, TENANTS_KEY};

proxy_wasm::main! {{
    filter::start();
}}
