//! A state-based fake of Consul's HTTP API (skeleton; being built).
