//! Pure governance logic for meshguard: time and randomness are parameters, no I/O.

mod balance;
mod breaker;
mod consul;
mod ratelimit;
mod tenant;

pub use crate::{
    balance::{
        key_hash, pick_least_request, pick_random, pick_weighted_random, BalanceError, CallResult,
        Instance, LatencyEstimate, Locality, LocalityScope, Maglev, OutlierDetection, OutlierState,
        Recorded, ResponseTimeWeighted, Rng, RoundRobinState, SmoothWeightedCycle,
        SmoothWeightedState, SplitMix64, MAX_MAGLEV_INSTANCES,
    },
    breaker::{
        Breaker, BreakerBuilder, BreakerError, BreakerMode, BreakerPhase, BreakerState,
        BreakerStateError, BreakerWindow, FailurePolicy, Outcome, OutcomeKind, Permit,
        ResponseFacts, Transition, TransitionReason, UpstreamFailure, MAX_STATUS_RANGES,
        MAX_WINDOW_BUCKETS, MAX_WINDOW_CALLS, PER_MILLE,
    },
    consul::{
        blocking_timeout_ns, blocks, diff_by_id, next_index, next_query_at, parse_catalog_services,
        parse_health_service, parse_index, Backoff, CheckStatus, ConsulError, ConsulInstance,
        HealthList, HealthPolicy, ListDiff, SkipReason, Skipped,
    },
    ratelimit::{
        ApproxSlidingWindow, ApproxSlidingWindowState, Decision, FixedWindow, FixedWindowState,
        LeakyBucket, LeakyBucketState, LimitError, LimiterState, RateLimiter, SlidingWindow,
        SlidingWindowState, StateError, TokenBucket, TokenBucketState, Verdict, MAX_SUB_WINDOWS,
    },
    tenant::{
        bexpr_string, classify_consul_request, filter_catalog_services, filter_catalog_services_by,
        is_trusted_source, normalize_path, parse_source_address, percent_encode, query_unescape,
        registration_service_name, remove_query_param, resolve, rewrite_registration, scope_query,
        scope_registration_id, scoped_service_id, split_path_query, tenant_clause, tenant_filter,
        validate_user_filter, Cidr, ConsulRoute, DenyReason, IdentitySource, KvPrefix,
        RequestFacts, Resolution, SourceKind, SpiffeMatch, SpiffePattern, TenantError, TenantName,
        TenantSelector, MAX_CONSUL_NAME_LEN, MAX_CONSUL_PATH_LEN, MAX_REGISTRATION_LEN,
        MAX_SPIFFE_ID_LEN, MAX_TENANT_LEN, MAX_USER_FILTER_LEN, SERVICE_ID_SEPARATOR,
        TENANT_META_KEY,
    },
};
