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

proxy_wasm::main! {{
    filter::start();
}}
