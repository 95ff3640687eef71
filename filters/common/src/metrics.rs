//! Envoy stats defined by a filter: defined once (in the root context, at configure time) by
//! name, then updated by id. Envoy shows them under `wasmcustom.<name>` in `/stats`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// A counter defined with `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    id: u32,
}

impl Counter {
    /// Defines (or finds, when a VM defines the same name again) the counter `name`.
    pub fn define(name: &str) -> Option<Self> {
        hostcalls::define_metric(MetricType::Counter, name)
            .ok()
            .map(|id| Self { id })
    }

    /// Adds `n`; a failure (the host dropped the metric) is ignored: stats never fail requests.
    pub fn add(&self, n: u64) {
        let _ = hostcalls::increment_metric(self.id, i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Adds one.
    pub fn increment(&self) {
        self.add(1);
    }
}

/// A gauge defined with `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge {
    id: u32,
}

impl Gauge {
    /// Defines (or finds) the gauge `name`.
    pub fn define(name: &str) -> Option<Self> {
        hostcalls::define_metric(MetricType::Gauge, name)
            .ok()
            .map(|id| Self { id })
    }

    /// Sets the value.
    pub fn set(&self, value: u64) {
        let _ = hostcalls::record_metric(self.id, value);
    }

    /// Adds `delta` (negative to decrease).
    pub fn add(&self, delta: i64) {
        let _ = hostcalls::increment_metric(self.id, delta);
    }
}
