//! Integration-test support: a real-Envoy harness, a steerable test upstream and a raw HTTP client.

mod envoy;
mod envoy_config;
mod http;
mod paths;
mod upstream;

pub use crate::{
    envoy::Envoy,
    envoy_config::{EnvoyConfig, FailurePolicy, WasmFilter},
    http::{
        send, send_raw, send_raw_with_timeout, send_with_timeout, Request, Response,
        DEFAULT_TIMEOUT,
    },
    paths::{envoy_binary, wasm_artifact, workspace_root},
    upstream::{ReceivedRequest, TestUpstream, MAX_BODY_SIZE, MAX_DELAY},
};
