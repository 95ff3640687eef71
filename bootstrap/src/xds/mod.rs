//! xDS: the snapshot cache, the per-stream protocol state and the ADS transport.

pub mod ads;
pub mod cache;
pub mod delta;
pub mod stream;
