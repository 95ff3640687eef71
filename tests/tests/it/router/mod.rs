//! The router filter as compiled .wasm: the Consul sync loop and request path in host-sim with
//! scripted Consul answers, end-to-end in real Envoy with the fake Consul and three upstreams,
//! and against hostile input (`hygiene`).

mod envoy;
mod hostsim;
mod hygiene;
