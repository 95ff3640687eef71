//! The proxy-wasm glue shared by meshguard filters: config parsing with clear errors, the
//! config's duration type, compiled request conditions, the shared-data compare-and-swap store,
//! the clock adapter, metrics, local replies, logging, a one-call header map reader and the
//! declaration of the stream callbacks a module implements (`stream_callbacks!`).

mod callbacks;
mod cas;
mod clock;
mod config;
mod duration;
mod headers;
mod logging;
mod matching;
mod metrics;
mod reply;

pub use crate::{
    cas::{ensure, update, CasError, CasStore, Contention, MemoryStore, SharedData},
    clock::WallClock,
    config::{parse_config, parse_duration, validate_each, ConfigError, Validate},
    duration::Duration,
    headers::{request_header, response_header, HeaderMap},
    logging::{init_logging, install_panic_hook, sync_log_level},
    matching::{HeaderMatch, HeaderMatcher, StringMatch, StringMatcher},
    metrics::{BatchedCounter, Counter, Gauge},
    reply::send_local_reply,
};
