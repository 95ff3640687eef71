//! The router filter as compiled .wasm: the Consul sync loop and request path in host-sim with
//! scripted Consul answers, and end-to-end in real Envoy with the fake Consul and three upstreams.

mod envoy;
mod hostsim;
