//! What counts as a failure: a pure classifier over the facts a filter sees of a response.

use super::{BreakerError, OutcomeKind};

/// The most HTTP status ranges a [`FailurePolicy`] holds.
pub const MAX_STATUS_RANGES: usize = 16;

/// The largest gRPC status code (`UNAUTHENTICATED`).
const MAX_GRPC_CODE: u32 = 16;

/// A failure without a usable upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamFailure {
    /// The upstream reset the stream or closed the connection mid-response.
    Reset,
    /// No connection could be made (refused, no healthy host, TLS failure).
    ConnectFailure,
    /// The upstream did not answer within the route's timeout.
    Timeout,
}

/// What the filter observed of one call's response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    /// HTTP `:status` of the response, if one arrived.
    pub status: Option<u16>,
    /// `grpc-status` from the headers (trailers-only) or trailers, if present.
    pub grpc_status: Option<u32>,
    /// Why no usable response arrived, if so.
    pub upstream_failure: Option<UpstreamFailure>,
}

/// Which responses count as failures: HTTP status ranges, gRPC status codes and upstream
/// failure kinds. `Copy` and allocation-free to consult.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    ranges: [(u16, u16); MAX_STATUS_RANGES],
    len: usize,
    grpc: u32,
    reset: bool,
    connect_failure: bool,
    timeout: bool,
}

impl Default for FailurePolicy {
    /// 500-599; gRPC DEADLINE_EXCEEDED (4), INTERNAL (13), UNAVAILABLE (14); resets, connect
    /// failures and timeouts.
    fn default() -> Self {
        Self {
            ranges: {
                let mut r = [(0, 0); MAX_STATUS_RANGES];
                r[0] = (500, 599);
                r
            },
            len: 1,
            grpc: (1 << 4) | (1 << 13) | (1 << 14),
            reset: true,
            connect_failure: true,
            timeout: true,
        }
    }
}

impl FailurePolicy {
    /// Validates inclusive HTTP status ranges (each within 100..=599, start ≤ end, at most
    /// [`MAX_STATUS_RANGES`]; a single code is `(429, 429)`), gRPC codes (0..=16) and the
    /// upstream failures that count.
    pub fn try_new(
        status_ranges: &[(u16, u16)],
        grpc_codes: &[u32],
        upstream: &[UpstreamFailure],
    ) -> Result<Self, BreakerError> {
        if status_ranges.len() > MAX_STATUS_RANGES {
            return Err(BreakerError::TooLarge {
                field: "status_ranges",
                got: status_ranges.len() as u64,
                max: MAX_STATUS_RANGES as u64,
            });
        }
        let mut ranges = [(0, 0); MAX_STATUS_RANGES];
        for (slot, &(lo, hi)) in ranges.iter_mut().zip(status_ranges) {
            if lo < 100 || hi > 599 || lo > hi {
                return Err(BreakerError::StatusRange { lo, hi });
            }
            *slot = (lo, hi);
        }
        let mut grpc = 0u32;
        for &code in grpc_codes {
            if code > MAX_GRPC_CODE {
                return Err(BreakerError::GrpcCode { code });
            }
            grpc |= 1 << code;
        }
        Ok(Self {
            ranges,
            len: status_ranges.len(),
            grpc,
            reset: upstream.contains(&UpstreamFailure::Reset),
            connect_failure: upstream.contains(&UpstreamFailure::ConnectFailure),
            timeout: upstream.contains(&UpstreamFailure::Timeout),
        })
    }

    /// A failure when any fact matches the policy: a counted upstream failure, an HTTP status
    /// in a range, or a listed gRPC code; otherwise a success (an upstream failure the policy
    /// does not count is judged by whatever status the filter saw, if any).
    pub fn classify(&self, facts: &ResponseFacts) -> OutcomeKind {
        let upstream = facts.upstream_failure.is_some_and(|f| match f {
            UpstreamFailure::Reset => self.reset,
            UpstreamFailure::ConnectFailure => self.connect_failure,
            UpstreamFailure::Timeout => self.timeout,
        });
        let status = facts.status.is_some_and(|s| {
            self.ranges
                .iter()
                .take(self.len)
                .any(|&(lo, hi)| (lo..=hi).contains(&s))
        });
        let grpc = facts
            .grpc_status
            .is_some_and(|c| c <= MAX_GRPC_CODE && self.grpc & (1 << c) != 0);
        if upstream || status || grpc {
            OutcomeKind::Failure
        } else {
            OutcomeKind::Success
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> ResponseFacts {
        ResponseFacts {
            status: Some(s),
            ..ResponseFacts::default()
        }
    }

    #[test]
    fn server_errors_and_listed_codes_are_failures() {
        let p = FailurePolicy::try_new(&[(500, 599), (429, 429)], &[], &[]).unwrap();
        assert_eq!(p.classify(&status(503)), OutcomeKind::Failure);
        assert_eq!(p.classify(&status(429)), OutcomeKind::Failure);
        assert_eq!(p.classify(&status(404)), OutcomeKind::Success);
        assert_eq!(p.classify(&status(200)), OutcomeKind::Success);
    }

    #[test]
    fn grpc_status_counts_even_behind_http_200() {
        let p = FailurePolicy::try_new(&[], &[14], &[]).unwrap();
        let mut facts = status(200);
        facts.grpc_status = Some(14);
        assert_eq!(p.classify(&facts), OutcomeKind::Failure);
        facts.grpc_status = Some(5);
        assert_eq!(p.classify(&facts), OutcomeKind::Success);
        facts.grpc_status = Some(u32::MAX);
        assert_eq!(p.classify(&facts), OutcomeKind::Success);
    }

    #[test]
    fn upstream_failures_count_only_when_listed() {
        let p = FailurePolicy::try_new(&[], &[], &[UpstreamFailure::Timeout]).unwrap();
        let timeout = ResponseFacts {
            upstream_failure: Some(UpstreamFailure::Timeout),
            ..ResponseFacts::default()
        };
        let reset = ResponseFacts {
            upstream_failure: Some(UpstreamFailure::Reset),
            ..ResponseFacts::default()
        };
        assert_eq!(p.classify(&timeout), OutcomeKind::Failure);
        assert_eq!(p.classify(&reset), OutcomeKind::Success);
    }

    #[test]
    fn default_policy_counts_5xx_resets_and_unavailable() {
        let p = FailurePolicy::default();
        assert_eq!(p.classify(&status(500)), OutcomeKind::Failure);
        assert_eq!(p.classify(&status(499)), OutcomeKind::Success);
        let facts = ResponseFacts {
            upstream_failure: Some(UpstreamFailure::ConnectFailure),
            ..ResponseFacts::default()
        };
        assert_eq!(p.classify(&facts), OutcomeKind::Failure);
        let grpc = ResponseFacts {
            grpc_status: Some(14),
            ..status(200)
        };
        assert_eq!(p.classify(&grpc), OutcomeKind::Failure);
    }

    #[test]
    fn try_new_rejects_impossible_ranges_and_codes() {
        assert_eq!(
            FailurePolicy::try_new(&[(600, 610)], &[], &[]),
            Err(BreakerError::StatusRange { lo: 600, hi: 610 })
        );
        assert_eq!(
            FailurePolicy::try_new(&[(599, 500)], &[], &[]),
            Err(BreakerError::StatusRange { lo: 599, hi: 500 })
        );
        assert_eq!(
            FailurePolicy::try_new(&[], &[17], &[])
                .unwrap_err()
                .to_string(),
            "grpc code 17 is not a gRPC status code (0-16)"
        );
        let many = [(500, 500); MAX_STATUS_RANGES + 1];
        assert!(matches!(
            FailurePolicy::try_new(&many, &[], &[]),
            Err(BreakerError::TooLarge {
                field: "status_ranges",
                ..
            })
        ));
    }
}
