//! Consul's HTTP API in pure functions: health and catalog responses parsed into the
//! balancers' [`crate::Instance`] model, list diffs, and the blocking-query index and backoff
//! rules. No I/O: the router filter and the bootstrap feed in bodies and headers, and keep the
//! last good list whenever a function here returns an error.

mod diff;
mod error;
mod health;
mod index;

#[cfg(test)]
mod tests;

pub use diff::{diff_by_id, ListDiff};
pub use error::{ConsulError, SkipReason, Skipped};
pub use health::{
    parse_catalog_services, parse_health_service, CheckStatus, ConsulInstance, HealthList,
    HealthPolicy,
};
pub use index::{blocking_timeout_ns, blocks, next_index, next_query_at, parse_index, Backoff};
