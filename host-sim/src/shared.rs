//! State shared by every VM of one host: the virtual clock, the seeded RNG, shared
//! data, shared queues, metrics, logs and the callouts waiting for the test.
//!
//! In Envoy these live in process-wide singletons (proxy-wasm-cpp-host's
//! `SharedData`/`SharedQueue`, the stats store); here they live in one value per
//! host, reached from each VM's `Store` data, so parallel tests never meet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::{Headers, LogLevel, MetricKind, Status};

/// A guest log line, captured in order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogEntry {
    /// Index of the VM (worker) that logged it.
    pub vm: usize,
    /// Level given by the guest (stdout is `Info`, stderr `Error`, as in Envoy).
    pub level: LogLevel,
    /// The message, lossily decoded as UTF-8.
    pub message: String,
}

/// Current value of a metric, merged across VMs by name as Envoy's stats store does.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Metric {
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Counter or gauge value; for a histogram the number of samples.
    pub value: i64,
    /// Recorded histogram samples, in order.
    pub samples: Vec<u64>,
}

/// An `proxy_http_call` the test has not answered yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCallout {
    /// Host-wide id the test uses to answer it.
    pub id: u64,
    /// VM (worker) that dispatched it.
    pub vm: usize,
    /// Context that was effective when it was dispatched; it gets the response.
    pub context_id: u32,
    /// The token the guest got back.
    pub token: u32,
    /// Target cluster name.
    pub cluster: String,
    /// Request headers, including `:method`, `:path` and `:authority`.
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Headers,
    /// Timeout in milliseconds requested by the guest.
    pub timeout_ms: u32,
    /// Virtual monotonic time (nanoseconds) at which it times out.
    pub deadline_ns: u64,
}

impl HttpCallout {
    /// The first value of a request header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A gRPC call or stream opened by the guest and not yet closed by the test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCallout {
    /// Host-wide id the test uses to answer it.
    pub id: u64,
    /// VM (worker) that opened it.
    pub vm: usize,
    /// Context that gets the callbacks.
    pub context_id: u32,
    /// The token the guest got back.
    pub token: u32,
    /// Target cluster name.
    pub cluster: String,
    /// Fully qualified service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata sent by the guest.
    pub initial_metadata: Headers,
    /// Messages sent so far (the request message of a unary call, or stream sends).
    pub sent: Vec<Vec<u8>>,
    /// True for `proxy_grpc_stream`, false for `proxy_grpc_call`.
    pub streaming: bool,
    /// The guest half-closed the stream (`end_stream` on send, or `proxy_grpc_close`).
    pub local_closed: bool,
    /// Timeout in milliseconds of a unary call (0 for streams).
    pub timeout_ms: u32,
    /// Virtual monotonic deadline of a unary call, if any.
    pub deadline_ns: Option<u64>,
}

pub(crate) fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A queue registered with `proxy_register_shared_queue`.
#[derive(Debug)]
pub(crate) struct Queue {
    pub name: String,
    /// The VM and root context that registered it first: they get `on_queue_ready`.
    pub owner_vm: usize,
    pub owner_context: u32,
    pub items: VecDeque<Vec<u8>>,
}

/// Work the host delivers after the current callback returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    QueueReady {
        vm: usize,
        context_id: u32,
        token: u32,
    },
}

/// A foreign function a test registers (`proxy_call_foreign_function`).
pub type ForeignFunction = Box<dyn FnMut(&[u8]) -> Result<Vec<u8>, Status> + Send>;

/// SplitMix64: tiny, fast and fully specified, so a seed gives the same bytes on
/// every platform and every version of this crate.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[derive(Default)]
pub(crate) struct Shared {
    /// Virtual monotonic time, nanoseconds since the host started.
    pub now_ns: u64,
    /// Wall-clock time at `now_ns == 0`, nanoseconds since the Unix epoch.
    pub epoch_ns: u64,
    pub rng: Option<Rng>,
    pub log_level: Option<LogLevel>,
    pub logs: Vec<LogEntry>,
    /// Shared data by key: value and CAS token.
    pub data: BTreeMap<Vec<u8>, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queues: BTreeMap<u32, Queue>,
    pub queue_tokens: HashMap<(String, String), u32>,
    pub next_queue_token: u32,
    pub events: VecDeque<Event>,
    pub metrics: BTreeMap<String, Metric>,
    pub clusters: Vec<String>,
    pub http_callouts: BTreeMap<u64, HttpCallout>,
    pub grpc_callouts: BTreeMap<u64, GrpcCallout>,
    pub next_callout_id: u64,
    pub foreign: BTreeMap<String, ForeignFunction>,
    /// Every foreign function call, in order: name and argument bytes.
    pub foreign_calls: Vec<(String, Vec<u8>)>,
    /// Host calls by name: each `env` import, and `malloc` for the guest allocations the host
    /// makes to hand data back (a call into the guest in Envoy too).
    pub import_calls: BTreeMap<&'static str, u64>,
}

impl Shared {
    /// proxy-wasm-cpp-host `SharedData::nextCas`: a process-wide counter that skips 0,
    /// because a CAS of 0 means "set unconditionally".
    pub fn next_cas(&mut self) -> u32 {
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        self.next_cas
    }

    pub fn realtime_ns(&self) -> u64 {
        self.epoch_ns.saturating_add(self.now_ns)
    }

    pub fn rng(&mut self) -> &mut Rng {
        self.rng.get_or_insert_with(|| Rng::new(0))
    }

    pub fn next_callout_id(&mut self) -> u64 {
        self.next_callout_id += 1;
        self.next_callout_id
    }
}

/// Handle to the state shared by every VM of a host.
pub(crate) type SharedRef = Arc<Mutex<Shared>>;

/// Locks the shared state. A poisoned lock only means a test thread panicked while
/// holding it; the data is still consistent for reading, so take it.
pub(crate) fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_tokens_skip_zero_when_they_wrap() {
        let mut s = Shared {
            next_cas: u32::MAX - 1,
            ..Shared::default()
        };
        assert_eq!(s.next_cas(), u32::MAX);
        assert_eq!(s.next_cas(), 1);
    }

    #[test]
    fn rng_is_reproducible_from_its_seed() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }
}
