//! The proxy-wasm shell: the root context compiles the configuration once and shares it with
//! its HTTP contexts; each stream establishes the verified tenant (core's `resolve`), replaces
//! the tenant header, then either checks the cross-tenant call or, on a route to Consul,
//! classifies and scopes the API call (core's route, bexpr and body functions), buffering the
//! registration body and the `/v1/catalog/services` response body where it must rewrite them.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use log::{debug, error, warn};
use meshguard_core::{
    classify_consul_request, filter_catalog_services_by, registration_service_name,
    remove_query_param, resolve, rewrite_registration, scope_registration_id, scoped_service_id,
    split_path_query, ConsulRoute, DenyReason, RequestFacts, Resolution, SourceKind, TenantName,
    MAX_REGISTRATION_LEN,
};
use meshguard_filter_common::{
    init_logging, parse_config, request_header, response_header, send_local_reply, sync_log_level,
    Counter, HeaderMap,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::{Config, ConsulPolicy, Destination, NoIdentityPolicy, Settings, REGISTRY_KEY};
use crate::policy::{
    authority_service, cross_tenant, header_safe, other_owner, parse_registry, CrossTenantVerdict,
};

/// Prefix of every stat: Envoy shows `wasmcustom.meshguard_tenant.<counter>`.
const STATS_PREFIX: &str = "meshguard_tenant";
/// How often each VM re-reads Envoy's log level (it can change at run time) and the registry
/// map, and adds the requests it allowed since the last time to the `allowed` counter: all off
/// the request path.
const TICK: Duration = Duration::from_secs(1);
/// What Envoy calls the mTLS peer's first URI SAN.
const URI_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];
/// The downstream peer address (`ip:port`).
const SOURCE_ADDRESS: [&str; 2] = ["source", "address"];
/// The upstream cluster Envoy's route picked.
const CLUSTER_NAME: [&str; 2] = ["xds", "cluster_name"];
/// The route's name.
const ROUTE_NAME: [&str; 2] = ["xds", "route_name"];

// The stream callbacks this module implements; `make wasm` removes the exports of the others
// (filters/common/src/callbacks.rs). Bodies and trailers: Consul registrations (request) and the filtered `catalog/services`
// answer (response); `done` flushes the root's batched counters.
meshguard_filter_common::stream_callbacks!(
    request_headers,
    request_body,
    request_trailers,
    response_headers,
    response_body,
    done
);

/// Registers the root context; called from `proxy_wasm::main!`.
pub(crate) fn start() {
    init_logging();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { state: None }) });
}

/// The filter's counters (absent if the host refused to define one).
#[derive(Debug)]
struct Stats {
    allowed: Option<Counter>,
    anonymous: Option<Counter>,
    denied_no_identity: Option<Counter>,
    denied_invalid_identity: Option<Counter>,
    denied_cross_tenant: Option<Counter>,
    denied_unknown_destination: Option<Counter>,
    tenant_header_removed: Option<Counter>,
    consul_allowed: Option<Counter>,
    consul_denied: Option<Counter>,
    consul_query_scoped: Option<Counter>,
    consul_registration_rewritten: Option<Counter>,
    consul_catalog_filtered: Option<Counter>,
    registry_invalid: Option<Counter>,
}

impl Stats {
    fn define() -> Self {
        let c = |name: &str| Counter::define(&format!("{STATS_PREFIX}.{name}"));
        Self {
            allowed: c("allowed"),
            anonymous: c("anonymous"),
            denied_no_identity: c("denied_no_identity"),
            denied_invalid_identity: c("denied_invalid_identity"),
            denied_cross_tenant: c("denied_cross_tenant"),
            denied_unknown_destination: c("denied_unknown_destination"),
            tenant_header_removed: c("tenant_header_removed"),
            consul_allowed: c("consul_allowed"),
            consul_denied: c("consul_denied"),
            consul_query_scoped: c("consul_query_scoped"),
            consul_registration_rewritten: c("consul_registration_rewritten"),
            consul_catalog_filtered: c("consul_catalog_filtered"),
            registry_invalid: c("registry_invalid"),
        }
    }
}

fn bump(counter: Option<Counter>) {
    if let Some(counter) = counter {
        counter.increment();
    }
}

/// The registry's map as last read in this VM, with the shared-data CAS token it had.
#[derive(Debug, Default)]
struct RegistryCache {
    /// Shared data was read once: from then on the tick keeps the map fresh.
    loaded: bool,
    cas: Option<u32>,
    map: Rc<BTreeMap<String, String>>,
}

/// What the root context shares with its HTTP contexts.
#[derive(Debug)]
struct State {
    settings: Settings,
    stats: Stats,
    registry: RefCell<RegistryCache>,
    /// Requests allowed since `stats.allowed` was last updated (see [`TICK`]).
    allowed: Cell<u64>,
}

impl State {
    /// The registry map: read from shared data the first time a request needs it, then
    /// refreshed on each tick ([`State::reload_registry`]), so requests never copy it.
    fn registry(&self) -> Rc<BTreeMap<String, String>> {
        if !self.settings.registry {
            return Rc::default();
        }
        if !self.registry.borrow().loaded {
            self.reload_registry();
        }
        Rc::clone(&self.registry.borrow().map)
    }

    /// Reads the registry map from shared data (one host call and a copy of the map) and
    /// parses it only when its CAS token changed; no entry means an empty map.
    fn reload_registry(&self) {
        let read = hostcalls::get_shared_data(REGISTRY_KEY);
        let mut cache = self.registry.borrow_mut();
        cache.loaded = true;
        let (value, cas) = match read {
            Ok((value, Some(cas))) => (value, cas),
            Ok((_, None)) | Err(_) => {
                cache.cas = None;
                cache.map = Rc::default();
                return;
            }
        };
        if cache.cas != Some(cas) {
            let map = match parse_registry(value.as_deref().unwrap_or_default()) {
                Ok(map) => map,
                Err(e) => {
                    bump(self.stats.registry_invalid);
                    warn!("meshguard_tenant: ignoring the registry map {REGISTRY_KEY}: {e}");
                    BTreeMap::new()
                }
            };
            cache.cas = Some(cas);
            cache.map = Rc::new(map);
        }
    }

    /// The tenant owning `service`: the static map first, then the registry's.
    fn owner_of(&self, service: &str) -> Option<String> {
        if let Some(t) = self.settings.service_tenants.get(service) {
            return Some(t.as_str().to_owned());
        }
        self.registry().get(service).cloned()
    }

    /// Whether `tenant` owns `service` (static map first, then the registry's), looked up
    /// in place: a catalog listing never copies the maps.
    fn owns(&self, registry: &BTreeMap<String, String>, tenant: &str, service: &str) -> bool {
        match self.settings.service_tenants.get(service) {
            Some(t) => t.as_str() == tenant,
            None => registry.get(service).is_some_and(|t| t == tenant),
        }
    }

    /// Another tenant owning the service name `name` (ASCII-lowercased), compared without
    /// case in both maps, as Consul's service index compares names.
    fn other_owner_of_name(&self, name: &str, tenant: &TenantName) -> Option<String> {
        let registry = self.registry();
        let statics = self
            .settings
            .service_tenants
            .iter()
            .map(|(s, t)| (s.as_str(), t.as_str()));
        let registered = registry
            .iter()
            .filter(|(s, _)| !self.settings.service_tenants.contains_key(*s))
            .map(|(s, t)| (s.as_str(), t.as_str()));
        other_owner(name, tenant, statics.chain(registered))
    }

    /// Counts an allowed request; [`State::flush`] hands the count to the host.
    fn count_allowed(&self) {
        self.allowed.set(self.allowed.get().saturating_add(1));
    }

    /// Adds the requests allowed since the last flush to `stats.allowed` (one host call).
    fn flush(&self) {
        let n = self.allowed.replace(0);
        if let (Some(counter), true) = (self.stats.allowed, n > 0) {
            counter.add(n);
        }
    }
}

struct Root {
    state: Option<Rc<State>>,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        if let Some(state) = &self.state {
            state.flush();
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        sync_log_level();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let settings = match parse_config::<Config>(&bytes).and_then(|c| c.compile()) {
            Ok(settings) => settings,
            Err(e) => {
                error!("meshguard_tenant: invalid configuration: {e}");
                return false;
            }
        };
        debug!(
            "meshguard_tenant: configured with {} identity sources, cross_tenant={}, consul={}",
            settings.sources.len(),
            settings.cross_tenant.is_some(),
            settings.consul.is_some()
        );
        self.state = Some(Rc::new(State {
            settings,
            stats: Stats::define(),
            registry: RefCell::default(),
            allowed: Cell::new(0),
        }));
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        sync_log_level();
        if let Some(state) = &self.state {
            state.flush();
            // Only a VM whose requests needed the map keeps it fresh.
            if state.registry.borrow().loaded {
                state.reload_registry();
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            state: self.state.clone(),
            tenant: None,
            pending: Pending::None,
            buffered: 0,
            cluster: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A body the stream still has to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// The request body of `PUT /v1/agent/service/register`.
    Registration,
    /// The response of `GET /v1/catalog/services`, if it is a 200.
    CatalogServices,
    /// A 200 `/v1/catalog/services` response whose body is being buffered.
    CatalogBody,
}

/// A request the filter refuses.
struct Deny {
    status: u16,
    reason: String,
    counter: Option<Counter>,
}

impl Deny {
    fn new(status: u16, reason: impl Into<String>, counter: Option<Counter>) -> Self {
        Self {
            status,
            reason: reason.into(),
            counter,
        }
    }
}

struct Stream {
    state: Option<Rc<State>>,
    tenant: Option<TenantName>,
    pending: Pending,
    /// Bytes of the registration body buffered so far.
    buffered: usize,
    /// `xds.cluster_name`, once read (the Consul check and the cross-tenant check share it).
    cluster: Option<Option<String>>,
}

fn property(path: &[&str]) -> Option<String> {
    hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

impl Stream {
    /// The routed cluster's name, read from the host at most once per request.
    fn cluster_name(&mut self) -> Option<&str> {
        self.cluster
            .get_or_insert_with(|| property(&CLUSTER_NAME))
            .as_deref()
    }

    fn deny(&self, state: &State, deny: &Deny) -> Action {
        bump(deny.counter);
        let reason = header_safe(&deny.reason);
        debug!(
            "tenant decision=deny status={} tenant={} reason=\"{reason}\"",
            deny.status,
            self.tenant.as_ref().map_or("-", TenantName::as_str),
        );
        send_local_reply(
            deny.status,
            &[
                (state.settings.reason_header.as_str(), reason.as_str()),
                ("content-type", "text/plain"),
            ],
            format!("meshguard tenant: {reason}\n").as_bytes(),
        );
        Action::Pause
    }

    /// The verified tenant, after the tenant header was replaced; `Err` to deny.
    ///
    /// Host calls on the common path (a trusted header naming a valid tenant): one read of the
    /// request headers and one of `source.address`; the header is left alone when it already
    /// is exactly the verified tenant.
    fn establish_tenant(
        &mut self,
        state: &State,
    ) -> Result<(TenantName, Option<SourceKind>), Deny> {
        let settings = &state.settings;
        let header = settings.tenant_header.as_str();
        // One host call, read in place. Names are compared as bytes, so every copy of the
        // header is seen whatever octets other headers (or its own values) carry; a value
        // that is not UTF-8 is read lossily (and then is no valid tenant). A name that matches
        // the configured one without case is ASCII.
        let headers = HeaderMap::request_headers();
        let copies: Vec<(&str, Cow<'_, str>)> = headers
            .pairs()
            .filter(|(k, _)| k.eq_ignore_ascii_case(header.as_bytes()))
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, String::from_utf8_lossy(v))))
            .collect();
        let values: Vec<&str> = copies.iter().map(|(_, v)| v.as_ref()).collect();
        let uri_san = settings.reads_uri_san.then(|| property(&URI_SAN)).flatten();
        let jwt = settings.jwt_path.as_ref().and_then(|path| {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            property(&path)
        });
        // A trusted-header source only needs the address when there is a header to trust.
        let source = (settings.reads_source_address && !values.is_empty())
            .then(|| property(&SOURCE_ADDRESS))
            .flatten();
        let facts = RequestFacts {
            uri_san: uri_san.as_deref(),
            jwt_tenant: jwt.as_deref(),
            header_tenants: &values,
            source_address: source.as_deref(),
        };
        let resolution = resolve(&settings.sources, &facts);
        let trusted = matches!(
            resolution,
            Resolution::Resolved {
                source: SourceKind::TrustedHeader,
                ..
            }
        );
        if !values.is_empty() && !trusted {
            bump(state.stats.tenant_header_removed);
            debug!(
                "tenant: removed {} untrusted {header} header(s) from {}",
                values.len(),
                source.as_deref().unwrap_or("an unknown address")
            );
        }
        let (tenant, source) = match resolution {
            Resolution::Resolved { tenant, source } => (tenant, Some(source)),
            Resolution::Denied(reason) => {
                return Err(Deny::new(
                    403,
                    reason.to_string(),
                    state.stats.denied_invalid_identity,
                ))
            }
            Resolution::Anonymous => match &settings.no_identity {
                NoIdentityPolicy::Deny(status) => {
                    return Err(Deny::new(
                        *status,
                        "no verified tenant",
                        state.stats.denied_no_identity,
                    ))
                }
                NoIdentityPolicy::Anonymous(t) => {
                    bump(state.stats.anonymous);
                    (t.clone(), None)
                }
            },
        };
        // Every client copy goes (a denied request is answered locally, never forwarded).
        // The one case that needs no call: a single copy, spelled as configured, that already
        // is the verified tenant (a trusted header, or a client that sent its own tenant).
        let in_place = matches!(
            copies.as_slice(),
            [(name, value)] if *name == header && value.as_ref() == tenant.as_str()
        );
        if !in_place {
            // Envoy's codecs lowercase names, so the replace below
            // (`proxy_replace_header_map_value` drops every value) covers them all; another
            // spelling could only come from a host that keeps case: remove it too.
            let mut removed: Vec<&str> = Vec::new();
            for (name, _) in &copies {
                if *name != header && !removed.contains(name) {
                    self.set_http_request_header(name, None);
                    removed.push(name);
                }
            }
            self.set_http_request_header(header, Some(tenant.as_str()));
        }
        Ok((tenant, source))
    }

    fn check_cross_tenant(&mut self, state: &State, tenant: &TenantName) -> Result<(), Deny> {
        let Some(policy) = &state.settings.cross_tenant else {
            return Ok(());
        };
        let service = match &policy.destination {
            Destination::ClusterName => self.cluster_name().map(str::to_owned),
            Destination::RouteName => property(&ROUTE_NAME),
            Destination::Authority { strip_suffixes } => {
                request_header(":authority").and_then(|a| authority_service(&a, strip_suffixes))
            }
            Destination::Header(name) => request_header(name),
        };
        let verdict = cross_tenant(
            tenant,
            service.as_deref(),
            &policy.shared_services,
            policy.unknown,
            |s| state.owner_of(s),
        );
        match verdict {
            CrossTenantVerdict::Allow => Ok(()),
            CrossTenantVerdict::OtherTenant { service, owner } => Err(Deny::new(
                403,
                format!("cross-tenant call: service {service} belongs to tenant {owner}"),
                state.stats.denied_cross_tenant,
            )),
            CrossTenantVerdict::Unknown { service } => Err(Deny::new(
                403,
                match service {
                    Some(s) => format!("unknown destination: service {s} has no tenant"),
                    None => "unknown destination".to_owned(),
                },
                state.stats.denied_unknown_destination,
            )),
        }
    }

    /// Whether this request goes to Consul's API under `policy`.
    fn is_consul_request(&mut self, policy: &ConsulPolicy) -> bool {
        policy.clusters.is_empty()
            || self
                .cluster_name()
                .is_some_and(|c| policy.clusters.iter().any(|p| p == c))
    }

    /// Classifies a Consul API call, checks it against the tenant and rewrites its path, query
    /// and token headers; marks the stream when a body must be rewritten ([`Pending`]).
    fn scope_consul(
        &mut self,
        state: &State,
        policy: &ConsulPolicy,
        tenant: &TenantName,
        end_of_stream: bool,
    ) -> Result<(), Deny> {
        let consul_deny = |reason: String| Deny::new(403, reason, state.stats.consul_denied);
        let deny = |r: DenyReason| consul_deny(r.to_string());
        let method = request_header(":method").unwrap_or_default();
        let full = request_header(":path").unwrap_or_default();
        let (raw_path, query) = split_path_query(&full);
        let route = classify_consul_request(&method, raw_path.as_bytes());
        let query = if policy.tokens.is_some() {
            remove_query_param(query, "token").map_err(deny)?
        } else {
            query.map(str::to_owned)
        };
        let with_query = |path: String| match &query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let path = match &route {
            ConsulRoute::Denied(reason) => return Err(deny(reason.clone())),
            ConsulRoute::HealthService(service) | ConsulRoute::CatalogService(service) => {
                if let Some(owner) = state.owner_of(service) {
                    if owner != tenant.as_str() {
                        return Err(consul_deny(format!(
                            "service {service} belongs to another tenant"
                        )));
                    }
                }
                let scoped = route
                    .scoped_path(query.as_deref(), tenant)
                    .ok_or_else(|| consul_deny("the endpoint is not allowed".into()))?
                    .map_err(deny)?;
                bump(state.stats.consul_query_scoped);
                scoped
            }
            ConsulRoute::HealthChecks(service) => {
                if state.owner_of(service).as_deref() != Some(tenant.as_str()) {
                    return Err(consul_deny(format!(
                        "service {service} does not belong to the tenant"
                    )));
                }
                with_query(format!("/v1/health/checks/{service}"))
            }
            ConsulRoute::CatalogServices => {
                // The body is rewritten: it must come back uncompressed.
                self.set_http_request_header("accept-encoding", None);
                self.pending = Pending::CatalogServices;
                with_query("/v1/catalog/services".to_owned())
            }
            ConsulRoute::AgentRegister => {
                if end_of_stream {
                    return Err(consul_deny("the registration has no body".into()));
                }
                // The body is rewritten: Envoy re-frames it (chunked) without a length.
                self.set_http_request_header("content-length", None);
                self.pending = Pending::Registration;
                with_query("/v1/agent/service/register".to_owned())
            }
            ConsulRoute::AgentDeregister(id) => {
                if !policy.scope_service_ids {
                    return Err(consul_deny(
                        "deregistration needs consul.scope_service_ids".into(),
                    ));
                }
                with_query(format!(
                    "/v1/agent/service/deregister/{}",
                    scoped_service_id(tenant, id)
                ))
            }
            ConsulRoute::Kv(key) => {
                policy.kv_prefix.check(tenant, key).map_err(deny)?;
                with_query(format!("/v1/kv/{key}"))
            }
        };
        if let Some(tokens) = &policy.tokens {
            self.set_http_request_header("x-consul-token", None);
            self.set_http_request_header("authorization", None);
            if let Some(token) = tokens.get(tenant) {
                self.set_http_request_header("x-consul-token", Some(token));
            }
        }
        if path != full {
            self.set_http_request_header(":path", Some(&path));
        }
        bump(state.stats.consul_allowed);
        debug!(
            "tenant decision=consul tenant={tenant} method={method} path={full} forwarded={path}"
        );
        Ok(())
    }

    fn on_request_headers(&mut self, state: &State, end_of_stream: bool) -> Result<(), Deny> {
        let (tenant, source) = self.establish_tenant(state)?;
        self.tenant = Some(tenant.clone());
        match &state.settings.consul {
            Some(policy) if self.is_consul_request(policy) => {
                self.scope_consul(state, policy, &tenant, end_of_stream)?;
            }
            _ => {
                self.check_cross_tenant(state, &tenant)?;
                state.count_allowed();
                debug!(
                    "tenant decision=allow tenant={tenant} source={}",
                    source.map_or_else(|| "anonymous".to_owned(), |s| s.to_string())
                );
            }
        }
        Ok(())
    }

    /// Checks and rewrites the whole buffered registration body (`self.buffered` bytes) and
    /// replaces it, or denies the request; an empty or unreadable body is refused.
    fn finish_registration(&mut self, state: &State, tenant: &TenantName) -> Action {
        self.pending = Pending::None;
        let size = self.buffered;
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let scope_ids = state
            .settings
            .consul
            .as_ref()
            .is_some_and(|c| c.scope_service_ids);
        let rewritten = rewrite_registration(&body, tenant).and_then(|b| {
            if scope_ids {
                scope_registration_id(&b, tenant)
            } else {
                Ok(b)
            }
        });
        let checked = rewritten.map_err(|r| r.to_string()).and_then(|new| {
            let name = registration_service_name(&new).map_err(|r| r.to_string())?;
            match state.other_owner_of_name(&name, tenant) {
                Some(owner) => {
                    debug!("tenant: {tenant} tried to register {name} of tenant {owner}");
                    Err(format!("service {name} belongs to another tenant"))
                }
                None => Ok(new),
            }
        });
        match checked {
            Ok(new) => {
                self.set_http_request_body(0, size, &new);
                bump(state.stats.consul_registration_rewritten);
                debug!(
                    "tenant decision=register tenant={tenant} bytes={}",
                    new.len()
                );
                Action::Continue
            }
            Err(reason) => {
                let deny = Deny::new(403, reason, state.stats.consul_denied);
                self.deny(state, &deny)
            }
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        match self.on_request_headers(&state, end_of_stream) {
            Ok(()) => Action::Continue,
            Err(deny) => self.deny(&state, &deny),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(state), Some(tenant), Pending::Registration) =
            (self.state.clone(), self.tenant.clone(), self.pending)
        else {
            return Action::Continue;
        };
        self.buffered = body_size;
        if body_size > MAX_REGISTRATION_LEN {
            self.pending = Pending::None;
            let deny = Deny::new(
                413,
                "the registration is too large",
                state.stats.consul_denied,
            );
            return self.deny(&state, &deny);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish_registration(&state, &tenant)
    }

    /// Request trailers end the stream without a body callback at end of stream (HTTP/2
    /// DATA then trailers): the buffered registration is still readable here, so it is
    /// checked and rewritten here, or the request is refused. Without this the SDK's
    /// default would continue and the original body would reach Consul.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let (Some(state), Some(tenant), Pending::Registration) =
            (self.state.clone(), self.tenant.clone(), self.pending)
        else {
            return Action::Continue;
        };
        self.finish_registration(&state, &tenant)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.pending == Pending::CatalogServices {
            if response_header(":status").as_deref() == Some("200") {
                // The body shrinks: Envoy re-frames it (chunked) without a length.
                self.set_http_response_header("content-length", None);
                self.pending = Pending::CatalogBody;
            } else {
                self.pending = Pending::None;
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(state), Some(tenant), Pending::CatalogBody) =
            (self.state.clone(), self.tenant.clone(), self.pending)
        else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        self.pending = Pending::None;
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let registry = state.registry();
        let owned = |service: &str| state.owns(&registry, tenant.as_str(), service);
        let filtered = match filter_catalog_services_by(&body, owned) {
            Ok(filtered) => filtered,
            Err(e) => {
                // Fail closed: a listing the filter cannot read is shown as empty.
                warn!("meshguard_tenant: unreadable /v1/catalog/services body, sent {{}}: {e}");
                b"{}".to_vec()
            }
        };
        self.set_http_response_body(0, body_size, &filtered);
        bump(state.stats.consul_catalog_filtered);
        debug!(
            "tenant decision=catalog_services tenant={tenant} bytes_in={} bytes_out={}",
            body.len(),
            filtered.len()
        );
        Action::Continue
    }
}
