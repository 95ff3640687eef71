//! The tenant filter as compiled .wasm: in host-sim (identity, cross-tenant, Consul API
//! scoping, the attack table) and end-to-end in real Envoy, also in front of the fake Consul.

mod attacks;
mod consul;
mod cost;
mod envoy;
mod hostsim;
mod identity;
