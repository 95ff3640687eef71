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

proxy_wasm::main! {{
    filter::start();
}}
