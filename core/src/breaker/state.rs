//! The breaker's shared state and its fixed byte layout.
//!
//! Layout 1 (tag `0x61`), 159 bytes, little-endian:
//!
//! | offset | size | field                                                           |
//! |-------:|-----:|-----------------------------------------------------------------|
//! | 0      | 1    | tag: high nibble 6 = breaker, low nibble 1 = layout version     |
//! | 1      | 1    | phase: 0 CLOSED, 1 OPEN, 2 HALF_OPEN, 3 FORCED_OPEN, 4 DISABLED |
//! | 2      | 1    | window kind: 0 none, 1 count ring, 2 time buckets               |
//! | 3      | 4    | consecutive failures (u32)                                      |
//! | 7      | 4    | probes admitted in this HALF_OPEN period (u32)                  |
//! | 11     | 4    | probe successes in this HALF_OPEN period (u32)                  |
//! | 15     | 8    | deadline ns: OPEN until / HALF_OPEN probe timeout (u64)         |
//! | 23     | 8    | current open duration ns, for the backoff (u64)                 |
//! | 31     | 128  | window: count ring = failure bits (u128), slow bits (u128),     |
//! |        |      | next slot (u8), calls held (u8), zero padding; time buckets =   |
//! |        |      | newest bucket index (u64), then 10 × calls, 10 × failures,      |
//! |        |      | 10 × slow calls (u32 each)                                      |

use super::config::{Window, MAX_WINDOW_BUCKETS, MAX_WINDOW_CALLS};
use super::BreakerStateError;

/// Tag of `BreakerState`, layout 1.
const TAG_BREAKER: u8 = 0x61;
/// Bytes of the window payload.
const WINDOW_LEN: usize = 128;
/// Bucket slots in the state (the largest supported number of buckets).
const SLOTS: usize = MAX_WINDOW_BUCKETS as usize;

/// Where the breaker's state machine is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BreakerPhase {
    /// Calls flow and their outcomes are measured.
    #[default]
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A limited number of probe calls test the upstream.
    HalfOpen,
    /// Calls are rejected until the operator changes the mode.
    ForcedOpen,
    /// Calls flow unmeasured until the operator changes the mode.
    Disabled,
}

impl BreakerPhase {
    /// Upper-case name for logs and metrics (`CLOSED`, `HALF_OPEN`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
            Self::HalfOpen => "HALF_OPEN",
            Self::ForcedOpen => "FORCED_OPEN",
            Self::Disabled => "DISABLED",
        }
    }

    const fn to_byte(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::Disabled => 4,
        }
    }

    fn from_byte(value: u8) -> Result<Self, BreakerStateError> {
        Ok(match value {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::Disabled,
            _ => {
                return Err(BreakerStateError::Field {
                    field: "phase",
                    value,
                })
            }
        })
    }
}

/// The last calls as two bit rings: bit `i` of `failures`/`slow` is call slot `i`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CountRing {
    failures: u128,
    slow: u128,
    next: u8,
    len: u8,
}

/// Per-bucket counts of a time window; slot `b % buckets` holds bucket `b`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Buckets {
    newest: u64,
    calls: [u32; SLOTS],
    failures: [u32; SLOTS],
    slow: [u32; SLOTS],
}

/// The measurement window's data, matching the breaker's configured [`Window`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum WindowState {
    /// No window configured (or not yet used).
    #[default]
    None,
    /// A count-based window.
    Count(CountRing),
    /// A time-based window.
    Time(Buckets),
}

/// Calls, failures and slow calls currently in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) calls: u64,
    pub(super) failures: u64,
    pub(super) slow: u64,
}

impl WindowState {
    /// An empty window of the configured kind.
    pub(super) fn fresh(window: Option<Window>) -> Self {
        match window {
            None => Self::None,
            Some(Window::Count { .. }) => Self::Count(CountRing::default()),
            Some(Window::Time { .. }) => Self::Time(Buckets::default()),
        }
    }

    /// Adds one call at `now` and returns the window's totals afterwards. A window of another
    /// kind (state written under another configuration) starts over.
    pub(super) fn push(&mut self, window: Window, now: u64, failed: bool, slow: bool) -> Totals {
        match (window, &mut *self) {
            (Window::Count { calls }, Self::Count(ring)) => ring.push(calls, failed, slow),
            (Window::Time { bucket_ns, buckets }, Self::Time(b)) => {
                b.push(now / bucket_ns.get(), usize::from(buckets), failed, slow)
            }
            _ => {
                *self = Self::fresh(Some(window));
                self.push(window, now, failed, slow)
            }
        }
    }
}

impl CountRing {
    fn push(&mut self, size: u8, failed: bool, slow: bool) -> Totals {
        let size = size.clamp(1, MAX_WINDOW_CALLS as u8);
        // A corrupt or foreign `next` is brought back into the ring.
        let slot = self.next % size;
        let bit = 1u128 << slot;
        self.failures = if failed {
            self.failures | bit
        } else {
            self.failures & !bit
        };
        self.slow = if slow {
            self.slow | bit
        } else {
            self.slow & !bit
        };
        self.next = (slot + 1) % size;
        self.len = self.len.saturating_add(1).min(size);
        let mask = if size >= 128 {
            u128::MAX
        } else {
            (1u128 << size) - 1
        };
        let calls = u64::from(self.len);
        Totals {
            calls,
            failures: u64::from((self.failures & mask).count_ones()).min(calls),
            slow: u64::from((self.slow & mask).count_ones()).min(calls),
        }
    }
}

impl Buckets {
    fn push(&mut self, bucket: u64, ring: usize, failed: bool, slow: bool) -> Totals {
        let ring = ring.clamp(1, SLOTS);
        // Time going backwards: a call before the newest bucket counts in the newest bucket.
        let b = bucket.max(self.newest);
        let gap = b - self.newest;
        if gap >= ring as u64 {
            *self = Self::default();
        } else {
            for k in 1..=gap {
                let slot = (self.newest.wrapping_add(k) % ring as u64) as usize;
                self.set(slot, 0, 0, 0);
            }
        }
        self.newest = b;
        let slot = (b % ring as u64) as usize;
        if let (Some(c), Some(f), Some(s)) = (
            self.calls.get_mut(slot),
            self.failures.get_mut(slot),
            self.slow.get_mut(slot),
        ) {
            *c = c.saturating_add(1);
            *f = f.saturating_add(u32::from(failed));
            *s = s.saturating_add(u32::from(slow));
        }
        let sum = |a: &[u32; SLOTS]| a.iter().take(ring).map(|&n| u64::from(n)).sum::<u64>();
        let calls = sum(&self.calls);
        Totals {
            calls,
            failures: sum(&self.failures).min(calls),
            slow: sum(&self.slow).min(calls),
        }
    }

    fn set(&mut self, slot: usize, calls: u32, failures: u32, slow: u32) {
        if let (Some(c), Some(f), Some(s)) = (
            self.calls.get_mut(slot),
            self.failures.get_mut(slot),
            self.slow.get_mut(slot),
        ) {
            (*c, *f, *s) = (calls, failures, slow);
        }
    }
}

/// A breaker's changing state: phase, counters, deadline, backoff and measurement window.
/// `Copy`, [`BreakerState::LEN`] bytes encoded, so one CAS of shared data updates it.
/// `Default` is a fresh CLOSED breaker; prefer [`super::Breaker::initial_state`], which
/// starts in the phase the configured mode asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerState {
    pub(super) phase: BreakerPhase,
    pub(super) consecutive: u32,
    pub(super) admitted: u32,
    pub(super) successes: u32,
    pub(super) until: u64,
    pub(super) open_ns: u64,
    pub(super) window: WindowState,
}

impl BreakerState {
    /// Encoded length in bytes.
    pub const LEN: usize = 31 + WINDOW_LEN;

    /// The state machine's phase.
    pub const fn phase(&self) -> BreakerPhase {
        self.phase
    }

    /// The current (last used) open duration in nanoseconds; 0 before the first trip.
    pub const fn open_ns(&self) -> u64 {
        self.open_ns
    }

    /// Monotonic nanoseconds at which OPEN ends (in OPEN), or at which HALF_OPEN stops
    /// waiting for outstanding probes (in HALF_OPEN); 0 in other phases.
    pub const fn deadline_ns(&self) -> u64 {
        self.until
    }

    /// Consecutive failures recorded while CLOSED.
    pub const fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// Encodes the state in layout 1 (see the module docs).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let mut w = Cursor::new(&mut out);
        w.put(&[TAG_BREAKER, self.phase.to_byte()]);
        let kind = match self.window {
            WindowState::None => 0,
            WindowState::Count(_) => 1,
            WindowState::Time(_) => 2,
        };
        w.put(&[kind]);
        w.put(&self.consecutive.to_le_bytes());
        w.put(&self.admitted.to_le_bytes());
        w.put(&self.successes.to_le_bytes());
        w.put(&self.until.to_le_bytes());
        w.put(&self.open_ns.to_le_bytes());
        match &self.window {
            WindowState::None => {}
            WindowState::Count(r) => {
                w.put(&r.failures.to_le_bytes());
                w.put(&r.slow.to_le_bytes());
                w.put(&[r.next, r.len]);
            }
            WindowState::Time(b) => {
                w.put(&b.newest.to_le_bytes());
                for a in [&b.calls, &b.failures, &b.slow] {
                    for n in a {
                        w.put(&n.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// The phase of an encoded state without decoding the rest (one byte; a hot path reads it
    /// after every update). `None` for bytes [`from_bytes`](Self::from_bytes) would reject for
    /// their length, tag or phase.
    pub fn phase_of_bytes(bytes: &[u8]) -> Option<BreakerPhase> {
        match bytes {
            [TAG_BREAKER, phase, ..] if bytes.len() == Self::LEN => {
                BreakerPhase::from_byte(*phase).ok()
            }
            _ => None,
        }
    }

    /// Decodes bytes written by [`BreakerState::to_bytes`]: a wrong length, tag, phase or
    /// window kind is an error, never a panic. Padding bytes are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BreakerStateError> {
        if bytes.len() != Self::LEN {
            return Err(BreakerStateError::Length {
                expected: Self::LEN,
                actual: bytes.len(),
            });
        }
        let mut r = Reader { bytes, pos: 0 };
        let tag = r.array::<1>()[0];
        if tag != TAG_BREAKER {
            return Err(BreakerStateError::Tag {
                expected: TAG_BREAKER,
                found: tag,
            });
        }
        let phase = BreakerPhase::from_byte(r.array::<1>()[0])?;
        let kind = r.array::<1>()[0];
        let consecutive = u32::from_le_bytes(r.array());
        let admitted = u32::from_le_bytes(r.array());
        let successes = u32::from_le_bytes(r.array());
        let until = u64::from_le_bytes(r.array());
        let open_ns = u64::from_le_bytes(r.array());
        let window = match kind {
            0 => WindowState::None,
            1 => {
                let failures = u128::from_le_bytes(r.array());
                let slow = u128::from_le_bytes(r.array());
                let [next, len] = r.array();
                WindowState::Count(CountRing {
                    failures,
                    slow,
                    next,
                    len,
                })
            }
            2 => {
                let newest = u64::from_le_bytes(r.array());
                let calls = core::array::from_fn(|_| u32::from_le_bytes(r.array()));
                let failures = core::array::from_fn(|_| u32::from_le_bytes(r.array()));
                let slow = core::array::from_fn(|_| u32::from_le_bytes(r.array()));
                WindowState::Time(Buckets {
                    newest,
                    calls,
                    failures,
                    slow,
                })
            }
            value => {
                return Err(BreakerStateError::Field {
                    field: "window kind",
                    value,
                })
            }
        };
        Ok(Self {
            phase,
            consecutive,
            admitted,
            successes,
            until,
            open_ns,
            window,
        })
    }
}

/// Writes consecutive fields into a fixed-size buffer; never panics on overrun (it cannot
/// happen: the layout fits, and `to_bytes_round_trip` tests it).
struct Cursor<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        Self { out, pos: 0 }
    }

    fn put(&mut self, src: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.pos..self.pos + src.len()) {
            dst.copy_from_slice(src);
        }
        self.pos += src.len();
    }
}

/// Reads consecutive fields of a byte string whose length was checked; a short read yields
/// zeros rather than a panic.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        if let Some(src) = self.bytes.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }
}
