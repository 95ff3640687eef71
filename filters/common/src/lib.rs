//! The proxy-wasm glue shared by meshguard filters.
