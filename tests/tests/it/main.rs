//! Integration tests: one binary, one module per topic.

// Test code: a failed unwrap or panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod callbacks;
mod conformance;
mod fallback;
mod fallback_envoy;
mod harness;
mod hostsim;
mod ratelimit;
mod ratelimit_envoy;
mod router;
mod support;
mod tenant;
