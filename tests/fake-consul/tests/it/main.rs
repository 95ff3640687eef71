//! Integration tests of the fake Consul over real sockets, one module per topic.

// Test code: a failed unwrap or panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod blocking;
mod catalog;
mod client;
mod datacenters;
mod faults;
mod filter;
mod indexes;
mod kv;
mod listening;
mod samples;
