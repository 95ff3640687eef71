//! A state-based fake of Consul's HTTP API for tests, demos and benchmarks: catalog, health,
//! agent registration, KV, blocking queries with `X-Consul-Index`, the `filter` language
//! subset meshguard emits, and fault injection. std threads only, on 127.0.0.1.

mod api;
mod base64;
mod bexpr;
mod duration;
mod http;
mod model;
mod server;
mod state;

pub use crate::{
    model::{Fault, Health, Instance, Options, RecordedRequest, Weights},
    server::FakeConsul,
};
