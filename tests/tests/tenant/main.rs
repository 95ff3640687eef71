//! The tenant filter: as compiled .wasm in host-sim, and end-to-end in real Envoy in front of
//! the fake Consul. A separate test binary from `it` so each filter's tests build on their own.

// Test code: a failed unwrap or panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;
