//! The proxy-wasm shell. The root context parses the configuration once, runs the Consul watch
//! while it holds the sync lease (ticks and `dispatch_http_call`), and resends the failback
//! queue. Each HTTP context matches the request to a service, picks hosts from the shared
//! instance list, hands them to Envoy's override_host policy in a request header together with
//! the retry headers of the service's mode, and on an error answers for `failsafe`/`failback`.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, RandomState};
use std::rc::Rc;
use std::time::Duration;

use log::{debug, error, info, warn};
use meshguard_core::{key_hash, Backoff, CallResult, Recorded, SplitMix64};
use meshguard_filter_common::{
    ensure, init_logging, parse_config, request_header, response_header, send_local_reply,
    sync_log_level, CasStore, Counter, Gauge, HeaderMap, HeaderMatcher, SharedData, StringMatcher,
    WallClock,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

use crate::config::{Config, FallbackResponse, HashOn, Mode};
use crate::failback::{FailbackQueue, Resent};
use crate::pool::{Policy, Pool};
use crate::registry::{list_key, sync_scope, Lease, LeaseOutcome};
use crate::sync::{Answer, Reply, Syncer};

/// Prefix of every stat: Envoy shows `wasmcustom.meshguard_router.<service>.<name>`.
const STATS_PREFIX: &str = "meshguard_router";
/// Response header on answers the filter gives instead of an upstream error.
const ANSWER_HEADER: &str = "x-meshguard-router";
/// Envoy's retry headers, set (or removed) by the filter for every routed request.
const MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";
const RETRY_ON_HEADER: &str = "x-envoy-retry-on";
const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";

// The stream callbacks this module implements; `make wasm` removes the exports of the others
// (filters/common/src/callbacks.rs). Request body and trailers are kept for failback resends; response headers record outcomes;
// `done` ends the picked instance's in-flight count (stream) and
// flushes the counters and hands the sync lease on (root).
meshguard_filter_common::stream_callbacks!(
    request_headers,
    request_body,
    request_trailers,
    response_headers,
    done
);

/// Registers the root context; called from `proxy_wasm::main!`.
pub(crate) fn start() {
    init_logging();
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root {
            context_id,
            state: None,
            syncer: None,
            consul: None,
            resends: Vec::new(),
        })
    });
}

fn bump(counter: Option<Counter>) {
    if let Some(c) = counter {
        c.increment();
    }
}

/// One service's stats.
#[derive(Debug)]
struct Stats {
    routed: Option<Counter>,
    lists_adopted: Option<Counter>,
    no_instances: Option<Counter>,
    ejections: Option<Counter>,
    failsafe: Option<Counter>,
    failback_queued: Option<Counter>,
    failback_dropped: Option<Counter>,
    failback_delivered: Option<Counter>,
    failback_exhausted: Option<Counter>,
    failback_skipped: Option<Counter>,
    tenant_conflicts: Option<Counter>,
    instances_left_out: Option<Counter>,
    sync_changes: Option<Counter>,
    sync_errors: Option<Counter>,
    sync_empty: Option<Counter>,
    instances: Option<Gauge>,
    cache_age_ms: Option<Gauge>,
}

impl Stats {
    fn define(service: &str) -> Self {
        let c = |name: &str| Counter::define(&format!("{STATS_PREFIX}.{service}.{name}"));
        let g = |name: &str| Gauge::define(&format!("{STATS_PREFIX}.{service}.{name}"));
        Self {
            routed: c("routed"),
            lists_adopted: c("lists_adopted"),
            no_instances: c("no_instances"),
            ejections: c("ejections"),
            failsafe: c("failsafe"),
            failback_queued: c("failback_queued"),
            failback_dropped: c("failback_dropped"),
            failback_delivered: c("failback_delivered"),
            failback_exhausted: c("failback_exhausted"),
            failback_skipped: c("failback_skipped"),
            tenant_conflicts: c("tenant_conflicts"),
            instances_left_out: c("instances_left_out"),
            sync_changes: c("sync_changes"),
            sync_errors: c("sync_errors"),
            sync_empty: c("sync_empty"),
            instances: g("instances"),
            cache_age_ms: g("cache_age_ms"),
        }
    }
}

/// A service's compiled request-path settings.
#[derive(Debug)]
struct Route {
    name: String,
    list_key: String,
    authority: Option<StringMatcher>,
    path: Option<StringMatcher>,
    headers: Vec<HeaderMatcher>,
    hash_on: Option<HashOn>,
    mode: Mode,
    retries: u32,
    /// `retries` as the header value.
    max_retries: String,
    retry_on: String,
    per_try_timeout_ms: Option<String>,
    retry_non_idempotent: bool,
    fallback: FallbackResponse,
    failback_cluster: Option<String>,
    failback_timeout: Duration,
    max_body_bytes: usize,
    policy: Policy,
    /// Outlier ejection, latency estimates or failsafe/failback need the response.
    observes_responses: bool,
    /// Outlier ejection, latency estimates or failback need the time of the request.
    needs_clock: bool,
    /// Least request counts requests in flight per instance.
    tracks_in_flight: bool,
    /// Requests routed since `stats.routed` was last flushed (on ticks: one host call per
    /// tick instead of one per request).
    routed_pending: Cell<u64>,
    stats: Stats,
}

impl Route {
    fn compile(
        s: &crate::config::Service,
        datacenters: &[String],
        scope: &str,
    ) -> Result<Self, String> {
        let m = &s.matches;
        let err = |e: meshguard_filter_common::ConfigError| e.to_string();
        Ok(Self {
            name: s.name.clone(),
            list_key: list_key(scope, &s.name),
            authority: m
                .authority
                .as_ref()
                .map(|a| a.compile())
                .transpose()
                .map_err(err)?,
            path: m
                .path
                .as_ref()
                .map(|p| p.compile())
                .transpose()
                .map_err(err)?,
            headers: m
                .headers
                .iter()
                .map(|h| h.compile())
                .collect::<Result<_, _>>()
                .map_err(err)?,
            // Header names in lower case, as the request map holds them.
            hash_on: s.hash_on.clone().map(|h| match h {
                HashOn::Header(name) => HashOn::Header(name.to_ascii_lowercase()),
                other => other,
            }),
            mode: s.mode,
            retries: s.retries,
            max_retries: s.retries.to_string(),
            retry_on: s.retry_on.join(","),
            per_try_timeout_ms: s
                .per_try_timeout
                .map(|d| d.as_nanos().div_ceil(1_000_000).max(1).to_string()),
            retry_non_idempotent: s.retry_non_idempotent,
            fallback: s.fallback_response.clone().unwrap_or_default(),
            failback_cluster: s.failback.as_ref().map(|f| f.cluster.clone()),
            failback_timeout: Duration::from_nanos(
                s.failback
                    .as_ref()
                    .map_or(5_000_000_000, |f| f.timeout.as_nanos()),
            ),
            max_body_bytes: s.failback.as_ref().map_or(0, |f| {
                usize::try_from(f.max_body_bytes).unwrap_or(usize::MAX)
            }),
            policy: Policy::compile(s, datacenters)?,
            observes_responses: s.outlier.is_some()
                || s.balancer == crate::config::Balancer::ResponseTimeWeighted
                || matches!(s.mode, Mode::Failsafe | Mode::Failback),
            needs_clock: s.outlier.is_some()
                || s.balancer == crate::config::Balancer::ResponseTimeWeighted
                || s.mode == Mode::Failback,
            tracks_in_flight: s.balancer == crate::config::Balancer::LeastRequest,
            routed_pending: Cell::new(0),
            stats: Stats::define(&s.name),
        })
    }

    /// Adds the requests routed since the last flush to `routed`.
    fn flush_stats(&self) {
        let n = self.routed_pending.replace(0);
        if n > 0 {
            if let Some(c) = self.stats.routed {
                c.add(n);
            }
        }
    }

    /// Failover with retries for idempotent methods only: the method decides.
    fn needs_method(&self) -> bool {
        self.mode == Mode::Failback
            || (self.mode == Mode::Failover && self.retries > 0 && !self.retry_non_idempotent)
    }

    /// The request headers this route may read, besides `:authority` and `:path`.
    fn header_names(&self) -> impl Iterator<Item = &str> {
        let hashed = match &self.hash_on {
            Some(HashOn::Header(name)) => Some(name.as_str()),
            Some(HashOn::Cookie(_)) => Some("cookie"),
            Some(HashOn::SourceIp) | None => None,
        };
        self.headers
            .iter()
            .map(HeaderMatcher::name)
            .chain(hashed)
            .chain(self.needs_method().then_some(":method"))
    }

    fn matches(&self, authority: &str, path: &str, headers: &Headers) -> bool {
        self.authority.as_ref().is_none_or(|m| m.matches(authority))
            && self.path.as_ref().is_none_or(|m| m.matches(path))
            && self
                .headers
                .iter()
                .all(|h| h.matches(headers.get(h.name()).as_deref()))
    }
}

/// What the root context shares with its HTTP contexts.
#[derive(Debug)]
struct State {
    routes: Vec<Route>,
    /// Some service matches on `:authority` / on `:path`.
    match_authority: bool,
    match_path: bool,
    /// Some request header is read: read the whole map in one call (see [`Headers`]).
    reads_headers: bool,
    override_header: String,
    pools: RefCell<Vec<Pool>>,
    queues: RefCell<Vec<Option<FailbackQueue>>>,
    rng: RefCell<SplitMix64>,
    clock: WallClock,
    lease_takeovers: Option<Counter>,
    bad_records: Option<Counter>,
}

struct Root {
    context_id: u32,
    state: Option<Rc<State>>,
    syncer: Option<Syncer>,
    consul: Option<ConsulTarget>,
    /// Failback resends in flight: token → service.
    resends: Vec<(u32, usize)>,
}

/// A random identity for this VM (WASI `random_get` seeds std's hasher keys).
fn vm_identity(context_id: u32) -> u64 {
    RandomState::new().hash_one(context_id).max(1)
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        if let Some(state) = &self.state {
            for route in &state.routes {
                route.flush_stats();
            }
        }
        // Shutting down: stop polling and hand the lease on at once.
        if let Some(syncer) = self.syncer.take() {
            Lease::release(&SharedData, syncer.lease_key(), syncer.me());
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let now = state.clock.now_ns();
        // Byte readers: the SDK's `String` readers trap on a value that is not UTF-8.
        let status = (num_headers > 0)
            .then(|| self.get_http_call_response_header_bytes(":status"))
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
        if let Some(pos) = self.resends.iter().position(|(t, _)| *t == token) {
            let (_, service) = self.resends.swap_remove(pos);
            let mut queues = state.queues.borrow_mut();
            let mut rng = state.rng.borrow_mut();
            let outcome = queues
                .get_mut(service)
                .and_then(Option::as_mut)
                .and_then(|q| q.answered(token, status, now, &mut *rng));
            if let Some(route) = state.routes.get(service) {
                match outcome {
                    Some(Resent::Delivered) => bump(route.stats.failback_delivered),
                    Some(Resent::Exhausted) => {
                        bump(route.stats.failback_exhausted);
                        warn!("meshguard_router service={} failback resend gave up after its attempts", route.name);
                    }
                    Some(Resent::Retrying) | None => {}
                }
            }
            return;
        }
        let index = (num_headers > 0)
            .then(|| self.get_http_call_response_header_bytes("x-consul-index"))
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let Some(syncer) = self.syncer.as_mut() else {
            return;
        };
        let handled = {
            let mut rng = state.rng.borrow_mut();
            let reply = Reply {
                status,
                index: index.as_deref(),
                body: &body,
            };
            syncer.answer(&SharedData, token, reply, now, &mut *rng)
        };
        let Some(handled) = handled else {
            return;
        };
        if let Some(route) = state.routes.get(handled.service) {
            let name = &route.name;
            if let Some(why) = &handled.tenant_conflict {
                bump(route.stats.tenant_conflicts);
                warn!("meshguard_router service={name} left out of the tenant map: {why}");
            }
            if handled.left_out > 0 {
                if let Some(c) = route.stats.instances_left_out {
                    c.add(handled.left_out as u64);
                }
                warn!(
                    "meshguard_router service={name} {} instances left out: a string longer than 65535 bytes or more than 65535 instances",
                    handled.left_out
                );
            }
            match &handled.answer {
                Answer::Changed { instances } => {
                    bump(route.stats.sync_changes);
                    info!("meshguard_router service={name} synced {instances} instances");
                }
                Answer::Unchanged => debug!("meshguard_router service={name} unchanged"),
                Answer::IndexReset => {
                    info!("meshguard_router service={name} consul index went backwards: re-reading")
                }
                Answer::Empty(e) => {
                    bump(route.stats.sync_empty);
                    warn!("meshguard_router service={name} keeping the cached list: {e}");
                }
                Answer::Failed {
                    error,
                    failures,
                    first,
                } => {
                    bump(route.stats.sync_errors);
                    if *first {
                        warn!("meshguard_router service={name} consul query failed, keeping the cached list: {error}");
                    } else {
                        debug!("meshguard_router service={name} consul query failed ({failures} in a row): {error}");
                    }
                }
            }
        }
        self.update_gauges(&state, now);
        self.dispatch_queries(&state, now);
    }
}

impl Root {
    fn dispatch_queries(&mut self, state: &State, now: u64) {
        let Some(syncer) = self.syncer.as_mut() else {
            return;
        };
        let Some(consul) = self.consul.as_ref() else {
            return;
        };
        for q in syncer.due(now) {
            let mut headers = vec![
                (":method", "GET"),
                (":path", q.path.as_str()),
                (":authority", consul.authority.as_str()),
                ("accept", "application/json"),
            ];
            if let Some(token) = &consul.token {
                headers.push(("x-consul-token", token.as_str()));
            }
            match hostcalls::dispatch_http_call(
                &consul.cluster,
                headers,
                None,
                vec![],
                Duration::from_nanos(q.timeout_ns),
            ) {
                Ok(token) => syncer.sent(q.watch, token, now),
                Err(status) => {
                    let mut rng = state.rng.borrow_mut();
                    let failures = syncer.dispatch_failed(q.watch, now, &mut *rng);
                    if let Some(route) = state.routes.get(q.service) {
                        bump(route.stats.sync_errors);
                        if failures == 1 {
                            warn!(
                                "meshguard_router service={} cannot call consul cluster {}: {status:?}",
                                route.name, consul.cluster
                            );
                        }
                    }
                }
            }
        }
    }

    fn dispatch_resends(&mut self, state: &State, now: u64) {
        let mut queues = state.queues.borrow_mut();
        for (service, queue) in queues.iter_mut().enumerate() {
            let (Some(queue), Some(route)) = (queue.as_mut(), state.routes.get(service)) else {
                continue;
            };
            let Some(cluster) = &route.failback_cluster else {
                continue;
            };
            for mut resend in queue.due(now) {
                // A fresh pick for each resend (the failed host may be ejected by now).
                let hosts = {
                    let mut pools = state.pools.borrow_mut();
                    let mut rng = state.rng.borrow_mut();
                    pools.get_mut(service).map_or_else(Vec::new, |pool| {
                        let _ = pool.refresh(SharedData.get(&route.list_key), &route.policy);
                        let picks = pool.pick(&route.policy, None, 1, now, &mut *rng);
                        picks
                            .iter()
                            .filter_map(|&i| pool.authority(i).map(str::to_string))
                            .collect()
                    })
                };
                resend
                    .headers
                    .retain(|(k, _)| !k.eq_ignore_ascii_case(&state.override_header));
                if !hosts.is_empty() {
                    resend
                        .headers
                        .push((state.override_header.clone(), hosts.join(",")));
                }
                let headers: Vec<(&str, &str)> = resend
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let body = (!resend.body.is_empty()).then_some(resend.body.as_slice());
                match hostcalls::dispatch_http_call(
                    cluster,
                    headers,
                    body,
                    vec![],
                    route.failback_timeout,
                ) {
                    Ok(token) => {
                        queue.sent(token, resend);
                        self.resends.push((token, service));
                    }
                    Err(_) => {
                        let mut rng = state.rng.borrow_mut();
                        if queue.not_sent(resend, now, &mut *rng) == Resent::Exhausted {
                            bump(route.stats.failback_exhausted);
                        }
                    }
                }
            }
        }
    }

    fn update_gauges(&self, state: &State, now: u64) {
        let Some(syncer) = &self.syncer else {
            return;
        };
        for (service, route) in state.routes.iter().enumerate() {
            if let (Some(g), Some(age)) = (
                route.stats.cache_age_ms,
                syncer.cache_age(&SharedData, service, now),
            ) {
                g.set(age / 1_000_000);
            }
            if let Some(g) = route.stats.instances {
                let count = SharedData
                    .get(&route.list_key)
                    .and_then(|(v, _)| crate::registry::decode(&v))
                    .map_or(0, |l| l.instances.len());
                g.set(count as u64);
            }
        }
    }
}

/// Takes `route`'s shared list into `pool` if its CAS token changed (one shared-data read).
fn refresh_pool(state: &State, route: &Route, pool: &mut Pool) {
    match pool.refresh(SharedData.get(&route.list_key), &route.policy) {
        Ok(true) => bump(route.stats.lists_adopted),
        Ok(false) => {}
        Err(()) => {
            bump(state.bad_records);
            warn!(
                "meshguard_router service={} unreadable shared list: keeping the previous one",
                route.name
            );
        }
    }
}

/// On a tick: the pools this VM routes with (those holding a list) take a changed shared list.
/// Requests read shared data only while their pool is empty, so a worker routes on a list at
/// most one tick (`consul.tick`) older than the published one; see the README's "Cost per
/// request" for why that is acceptable.
fn refresh_pools(state: &State) {
    let mut pools = state.pools.borrow_mut();
    for (route, pool) in state.routes.iter().zip(pools.iter_mut()) {
        if !pool.instances().is_empty() {
            refresh_pool(state, route, pool);
        }
    }
}

/// Where the Consul calls go (the root's copy of the config).
#[derive(Debug, Clone)]
struct ConsulTarget {
    cluster: String,
    authority: String,
    token: Option<String>,
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        sync_log_level();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match parse_config::<Config>(&bytes) {
            Ok(c) => c,
            Err(e) => {
                error!("meshguard_router: invalid configuration: {e}");
                return false;
            }
        };
        let scope = sync_scope(&config);
        let routes = match config
            .services
            .iter()
            .map(|s| Route::compile(s, &config.consul.datacenters, &scope))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(r) => r,
            Err(e) => {
                error!("meshguard_router: invalid configuration: {e}");
                return false;
            }
        };
        let me = vm_identity(self.context_id);
        let syncer = match Syncer::new(&config, me) {
            Ok(s) => s,
            Err(e) => {
                error!("meshguard_router: invalid configuration: consul: {e}");
                return false;
            }
        };
        let mut queues = Vec::with_capacity(config.services.len());
        for s in &config.services {
            queues.push(match &s.failback {
                Some(f) => match Backoff::try_new(f.retry_base.as_nanos(), f.retry_max.as_nanos()) {
                    Ok(b) => Some(FailbackQueue::new(f.queue_size, f.max_attempts, b)),
                    Err(e) => {
                        error!("meshguard_router: invalid configuration: services: {}: failback: {e}", s.name);
                        return false;
                    }
                },
                None => None,
            });
        }
        ensure(&SharedData, syncer.lease_key(), &Lease::initial());
        self.consul = Some(ConsulTarget {
            cluster: config.consul.cluster.clone(),
            authority: config
                .consul
                .authority
                .clone()
                .unwrap_or_else(|| config.consul.cluster.clone()),
            token: config.consul.token.clone(),
        });
        let _ = hostcalls::set_tick_period(Duration::from_nanos(config.consul.tick.as_nanos()));
        let pools = routes.iter().map(|_| Pool::default()).collect();
        self.state = Some(Rc::new(State {
            match_authority: routes.iter().any(|r| r.authority.is_some()),
            match_path: routes.iter().any(|r| r.path.is_some()),
            reads_headers: routes.iter().any(|r| {
                r.authority.is_some() || r.path.is_some() || r.header_names().next().is_some()
            }),
            routes,
            override_header: config.override_host_header.clone(),
            pools: RefCell::new(pools),
            queues: RefCell::new(queues),
            rng: RefCell::new(SplitMix64::new(me)),
            clock: WallClock::new(),
            lease_takeovers: Counter::define(&format!("{STATS_PREFIX}.lease_takeovers")),
            bad_records: Counter::define(&format!("{STATS_PREFIX}.bad_records")),
        }));
        // Without `sync`, another plugin (an envoy.bootstrap.wasm singleton) polls.
        self.syncer = config.consul.sync.then_some(syncer);
        debug!(
            "meshguard_router: root {} configured with {} services, sync scope {scope}",
            self.context_id,
            config.services.len()
        );
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let now = state.clock.now_ns();
        if let Some(syncer) = self.syncer.as_mut() {
            let was_holding = syncer.holding();
            match syncer.tick(&SharedData, now) {
                LeaseOutcome::TookOver { from } => {
                    bump(state.lease_takeovers);
                    info!("meshguard_router: took the consul sync lease over from {from:x} (it lapsed)");
                }
                LeaseOutcome::Held if !was_holding => {
                    debug!(
                        "meshguard_router: holding the consul sync lease as {:x}",
                        syncer.me()
                    );
                }
                _ => {}
            }
            if syncer.holding() {
                self.dispatch_queries(&state, now);
                self.update_gauges(&state, now);
            }
        }
        self.dispatch_resends(&state, now);
        refresh_pools(&state);
        for route in &state.routes {
            route.flush_stats();
        }
        sync_log_level();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            state: self.state.clone(),
            routed: None,
            replied: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A request kept for a failback resend: its headers and body.
type Captured = (Vec<(String, String)>, Vec<u8>);

/// What a stream remembers about its routing.
struct Routed {
    service: usize,
    /// The hosts handed to Envoy, in order (authorities); kept only when the response path
    /// observes responses.
    hosts: Vec<String>,
    /// The primary pick's instance id (requests in flight; least request only).
    primary_id: Option<String>,
    started_at: u64,
    /// Request kept for a failback resend (`None`: not resendable).
    resend: Option<Captured>,
    /// A failback route and an idempotent method: a failure that cannot be queued (body too
    /// big or unfinished, a header that is not UTF-8) is counted as skipped.
    resendable: bool,
    /// The request reached its end (end of stream on headers or body, or trailers): only
    /// then is the captured body the whole body.
    complete: bool,
}

struct Stream {
    state: Option<Rc<State>>,
    routed: Option<Routed>,
    replied: bool,
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        if let (Some(state), Some(r)) = (&self.state, &self.routed) {
            if let Some(id) = &r.primary_id {
                if let Some(pool) = state.pools.borrow_mut().get_mut(r.service) {
                    pool.ended(id);
                }
            }
        }
        true
    }
}

/// The request headers for a failback resend, read as bytes; `None` if a value is not UTF-8
/// (the resend could not carry it verbatim, so the request is not resendable).
fn request_headers_for_resend() -> Option<Vec<(String, String)>> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
        .ok()?
        .into_iter()
        .map(|(k, v)| Some((k, String::from_utf8(v).ok()?)))
        .collect()
}

/// The request headers as this stream reads them. A configuration that reads any request
/// header reads the whole map in one call (one round trip and one allocation, like a single
/// value's read) and then also knows which of the headers it would remove are there at all;
/// otherwise nothing is read and every removal is made (a host call each).
enum Headers {
    /// The map, read once.
    Map(HeaderMap),
    /// Nothing read: each value is a host call, and any header may be present.
    Unread,
}

impl Headers {
    fn read(whole_map: bool) -> Self {
        if !whole_map {
            return Self::Unread;
        }
        let map = HeaderMap::request_headers();
        // A map the host refused or sent malformed: nothing can be known absent, and single
        // reads take over. (A value that is not UTF-8 hides nothing: names are compared as
        // bytes, values read lossily as the single reads do.)
        if map.pairs().next().is_some() && map.is_intact() {
            Self::Map(map)
        } else {
            Self::Unread
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        match self {
            Self::Map(map) => map.get(name).map(std::borrow::Cow::into_owned),
            // Lossy, never the SDK's `String` reader (it traps on a value that is not UTF-8).
            Self::Unread => request_header(name),
        }
    }

    /// Whether the request may carry `name` (false only when the map says it does not).
    fn may_have(&self, name: &str) -> bool {
        match self {
            Self::Map(map) => map.contains(name),
            Self::Unread => true,
        }
    }
}

fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

fn cookie(headers: &Headers, name: &str) -> Option<String> {
    let cookies = headers.get("cookie")?;
    cookies.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// The client IP from `source.address` (`ip:port` or `[v6]:port`).
fn source_ip() -> Option<String> {
    let raw = hostcalls::get_property(vec!["source", "address"])
        .ok()
        .flatten()?;
    let text = String::from_utf8(raw).ok()?;
    let ip = match text.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        _ => text,
    };
    Some(ip)
}

impl Stream {
    /// Removes request header `name` unless the read map shows it is absent.
    fn remove_request_header(&self, headers: &Headers, name: &str) {
        if headers.may_have(name) {
            self.set_http_request_header(name, None);
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        // Only what some service needs is read (host calls cost), in one call.
        let headers = Headers::read(state.reads_headers);
        let authority = if state.match_authority {
            headers.get(":authority").unwrap_or_default()
        } else {
            String::new()
        };
        let full_path = if state.match_path {
            headers.get(":path").unwrap_or_default()
        } else {
            String::new()
        };
        let path = full_path
            .split_once('?')
            .map_or(full_path.as_str(), |(p, _)| p);
        let Some(service) = state
            .routes
            .iter()
            .position(|r| r.matches(&authority, path, &headers))
        else {
            // Never client-controlled, routed or not.
            self.remove_request_header(&headers, &state.override_header);
            return Action::Continue;
        };
        let Some(route) = state.routes.get(service) else {
            return Action::Continue;
        };
        let method = if route.needs_method() {
            headers.get(":method").unwrap_or_default()
        } else {
            String::new()
        };
        let may_retry = route.mode == Mode::Failover
            && route.retries > 0
            && (route.retry_non_idempotent || idempotent(&method));
        let wanted = if may_retry {
            usize::try_from(route.retries).unwrap_or(0) + 1
        } else {
            1
        };
        let key = match &route.hash_on {
            Some(HashOn::Header(name)) => headers.get(name),
            Some(HashOn::Cookie(name)) => cookie(&headers, name),
            Some(HashOn::SourceIp) => source_ip(),
            None => None,
        }
        .map(|k| key_hash(k.as_bytes()));
        // The clock is a host call: read it only for ejections, latencies and failback.
        let now = if route.needs_clock {
            state.clock.now_ns()
        } else {
            0
        };
        let (value, hosts, primary_id) = {
            let mut pools = state.pools.borrow_mut();
            let Some(pool) = pools.get_mut(service) else {
                return Action::Continue;
            };
            // Shared data is read here only until this VM has a list; then on ticks.
            if pool.instances().is_empty() {
                refresh_pool(&state, route, pool);
            }
            let mut rng = state.rng.borrow_mut();
            let picks = pool.pick(&route.policy, key, wanted, now, &mut *rng);
            let primary_id = if route.tracks_in_flight {
                picks.first().and_then(|&first| {
                    pool.started(first);
                    pool.instances().get(first).map(|x| x.id().to_string())
                })
            } else {
                None
            };
            // The header value `IP:port,IP:port`; the list itself only for the response path.
            let mut value = String::with_capacity(picks.len() * 22);
            let mut hosts = Vec::new();
            for authority in picks.iter().filter_map(|&i| pool.authority(i)) {
                if !value.is_empty() {
                    value.push(',');
                }
                value.push_str(authority);
                if route.observes_responses {
                    hosts.push(authority.to_string());
                }
            }
            (value, hosts, primary_id)
        };
        if value.is_empty() {
            self.remove_request_header(&headers, &state.override_header);
            bump(route.stats.no_instances);
            debug!(
                "meshguard_router service={} no instance known yet: Envoy's fallback policy picks",
                route.name
            );
        } else {
            route
                .routed_pending
                .set(route.routed_pending.get().saturating_add(1));
            self.set_http_request_header(&state.override_header, Some(&value));
        }
        if may_retry {
            self.set_http_request_header(MAX_RETRIES_HEADER, Some(&route.max_retries));
            self.set_http_request_header(RETRY_ON_HEADER, Some(&route.retry_on));
            match route.per_try_timeout_ms.as_deref() {
                Some(ms) => self.set_http_request_header(PER_TRY_TIMEOUT_HEADER, Some(ms)),
                None => self.remove_request_header(&headers, PER_TRY_TIMEOUT_HEADER),
            }
        } else {
            self.set_http_request_header(MAX_RETRIES_HEADER, Some("0"));
            self.remove_request_header(&headers, RETRY_ON_HEADER);
            self.remove_request_header(&headers, PER_TRY_TIMEOUT_HEADER);
        }
        let resendable = route.mode == Mode::Failback && idempotent(&method);
        let resend = resendable
            .then(|| {
                // Only an all-UTF-8 map can be resent verbatim; unread, read it as bytes
                // (never the SDK's `String` reader, which traps on a value that is not UTF-8).
                let all = match &headers {
                    Headers::Map(map) => map.to_utf8_vec(),
                    Headers::Unread => request_headers_for_resend(),
                }?;
                let headers = all
                    .into_iter()
                    .filter(|(k, _)| {
                        !k.eq_ignore_ascii_case(&state.override_header)
                            && !k.starts_with("x-envoy-")
                            && !matches!(k.as_str(), "content-length" | "transfer-encoding")
                    })
                    .collect::<Vec<_>>();
                Some((headers, Vec::new()))
            })
            .flatten();
        self.routed = Some(Routed {
            service,
            hosts,
            primary_id,
            started_at: now,
            resend,
            resendable,
            complete: end_of_stream,
        });
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        let Some(routed) = self.routed.as_mut() else {
            return Action::Continue;
        };
        routed.complete |= end_of_stream;
        let max = state
            .routes
            .get(routed.service)
            .map_or(0, |r| r.max_body_bytes);
        let too_big = routed
            .resend
            .as_ref()
            .is_some_and(|(_, body)| body.len().saturating_add(body_size) > max);
        if too_big {
            routed.resend = None;
        } else if let Some((_, body)) = routed.resend.as_mut() {
            if let Some(chunk) =
                hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, body_size)
                    .ok()
                    .flatten()
            {
                body.extend_from_slice(&chunk);
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the request (its body chunks all came without end of stream).
        if let Some(routed) = self.routed.as_mut() {
            routed.complete = true;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        if self.replied {
            return Action::Continue;
        }
        let Some(routed) = self.routed.as_mut() else {
            return Action::Continue;
        };
        let Some(route) = state.routes.get(routed.service) else {
            return Action::Continue;
        };
        if !route.observes_responses {
            return Action::Continue;
        }
        let status: Option<u16> = response_header(":status").and_then(|s| s.parse().ok());
        let failed = status.is_none_or(|s| s >= 500);
        let now = state.clock.now_ns();
        if !routed.hosts.is_empty() {
            let upstream = hostcalls::get_property(vec!["upstream", "address"])
                .ok()
                .flatten()
                .and_then(|a| String::from_utf8(a).ok());
            // The host that answered; hosts listed before it failed their tries.
            let answered = upstream
                .as_deref()
                .and_then(|a| routed.hosts.iter().position(|h| h == a))
                .unwrap_or(0);
            let mut pools = state.pools.borrow_mut();
            if let Some(pool) = pools.get_mut(routed.service) {
                for (k, host) in routed.hosts.iter().enumerate().take(answered + 1) {
                    let Some(i) = pool.find(host) else { continue };
                    let result = if k < answered || failed {
                        CallResult::Failure
                    } else {
                        CallResult::Success
                    };
                    if let Recorded::Ejected { until } = pool.record(&route.policy, i, result, now)
                    {
                        bump(route.stats.ejections);
                        info!(
                            "meshguard_router service={} ejected {host} for {} ms",
                            route.name,
                            until.saturating_sub(now) / 1_000_000
                        );
                    }
                    let timed =
                        route.policy.balancer == crate::config::Balancer::ResponseTimeWeighted;
                    if k == answered && !failed && timed {
                        let latency = now.saturating_sub(routed.started_at);
                        pool.observe_latency(&route.policy, i, latency, now);
                    }
                }
            }
        }
        if !failed || !matches!(route.mode, Mode::Failsafe | Mode::Failback) {
            return Action::Continue;
        }
        let mut kind = "failsafe";
        if route.mode == Mode::Failback {
            kind = "failback";
            // Only a request whose end was seen: an upstream may fail before the body is
            // through, and resending part of a PUT's body would write the wrong thing.
            let whole = routed.resend.take().filter(|_| routed.complete);
            let queued = match (whole, state.queues.borrow_mut().get_mut(routed.service)) {
                (Some((headers, body)), Some(Some(queue))) => {
                    let mut rng = state.rng.borrow_mut();
                    Some(queue.push(headers, body, now, &mut *rng))
                }
                _ => None,
            };
            match queued {
                Some(true) => bump(route.stats.failback_queued),
                Some(false) => {
                    bump(route.stats.failback_dropped);
                    debug!(
                        "meshguard_router service={} failback queue full: dropped",
                        route.name
                    );
                }
                None if routed.resendable => {
                    bump(route.stats.failback_skipped);
                    debug!(
                        "meshguard_router service={} failback: not resendable (body unfinished or over max_body_bytes, or a header that is not UTF-8)",
                        route.name
                    );
                }
                None => {}
            }
        } else {
            bump(route.stats.failsafe);
        }
        let r = &route.fallback;
        let mut headers: Vec<(&str, &str)> = vec![(ANSWER_HEADER, kind)];
        headers.extend(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.replied = true;
        send_local_reply(r.status, &headers, r.body.as_bytes());
        Action::Pause
    }
}
