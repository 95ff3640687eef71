//! The Consul watch run by whichever VM holds the lease: one blocking query per service on
//! `/v1/health/service/:s`, following Consul's index rules (core's `next_index`: reset when the
//! index goes backwards, never block on 0), at most one query start per `min_interval`, and
//! capped exponential backoff with jitter after errors. Answers that yield no usable list
//! (errors, timeouts, malformed or empty bodies) keep the published list: the client cache.
//! An answer is published only while this VM still holds the lease (checked on arrival: a
//! takeover may have happened while the query was blocked), and the status index only
//! moves forward except right after Consul's index went backwards.
//!
//! No proxy-wasm here: the shell hands in `now`, the store, the random source and what Consul
//! answered, and performs the dispatches this returns, so the logic is tested natively.

use meshguard_core::{
    blocking_timeout_ns, blocks, next_index, next_query_at, parse_health_service, parse_index,
    percent_encode, Backoff, ConsulError, HealthPolicy, Rng, TenantName,
};
use meshguard_filter_common::CasStore;

use crate::config::Config;
use crate::registry::{
    agreed, dc_list_key, dc_status_key, lease_key, list_key, merge_lists, publish_list,
    publish_tenants, refresh_tenants, status_key, sync_scope, Lease, LeaseOutcome, ServiceList,
    SyncStatus,
};

/// One service's watch (in one datacenter) in the polling VM.
#[derive(Debug, Clone)]
struct Watch {
    /// Index of the service in the configuration.
    service: usize,
    name: String,
    /// Where this watch's list and status go in shared data.
    list_key: String,
    status_key: String,
    /// The per-datacenter list keys of the service, in preference order, when it is watched
    /// in several datacenters (the service's list is then their merge); empty otherwise.
    merge_from: Vec<String>,
    /// The service's own list key (the merge's target).
    service_list_key: String,
    /// The service's configured `tenant` (then its owner, whatever the instances say).
    tenant: Option<String>,
    /// The last answer's instances disagreed on their tenant (reported once per streak).
    conflicted: bool,
    /// Query string without `index`/`wait` (starts with `?` or is empty).
    query: String,
    index: u64,
    in_flight: Option<u32>,
    /// Earliest wall-clock ns of the next query.
    next_at: u64,
    started_at: u64,
    failures: u32,
    /// The last error was logged (log once per error streak).
    logged: bool,
}

/// What happened to one answer (for stats and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A new list was published.
    Changed {
        /// Instances in it.
        instances: usize,
    },
    /// The list is unchanged (a blocking query that timed out, or the same instances).
    Unchanged,
    /// The index went backwards: reset to a non-blocking read.
    IndexReset,
    /// Consul answered, but with no usable instance: the last list stays.
    Empty(String),
    /// The call failed, timed out, or the answer was malformed: backing off.
    Failed {
        /// What went wrong.
        error: String,
        /// Consecutive failures so far.
        failures: u32,
        /// The first failure of a streak (log it).
        first: bool,
    },
}

/// The result of a Consul answer: which service, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// Index of the service in the configuration.
    pub service: usize,
    /// What happened.
    pub answer: Answer,
    /// The instances started to disagree on their tenant (or name an invalid one): the
    /// service is left out of the tenant map. Reported once per streak.
    pub tenant_conflict: Option<String>,
    /// Instances left out of the published list because a string did not fit the record.
    pub left_out: usize,
}

/// What Consul answered to one query.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The status (`None`: the call failed without a response).
    pub status: Option<u16>,
    /// The `X-Consul-Index` header.
    pub index: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// A query to dispatch: which watch and service, path and timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The watch (pass it to [`Syncer::sent`] or [`Syncer::dispatch_failed`]).
    pub watch: usize,
    /// Index of the service in the configuration.
    pub service: usize,
    /// `:path` with the query string.
    pub path: String,
    /// HTTP timeout, ns.
    pub timeout_ns: u64,
}

/// The watch state of one VM (active only while it holds the lease).
#[derive(Debug)]
pub struct Syncer {
    me: u64,
    holding: bool,
    /// The configuration's sync scope (see `registry`) and its lease key.
    scope: String,
    lease_key: String,
    watches: Vec<Watch>,
    wait_ns: u64,
    min_interval_ns: u64,
    margin_ns: u64,
    lease_ttl_ns: u64,
    backoff: Backoff,
    policy: HealthPolicy,
    /// The configured service names, in order (for the tenant map).
    service_names: Vec<String>,
}

impl Syncer {
    /// A syncer for `config`'s services; `me` is this VM's random identity (non-zero).
    pub fn new(config: &Config, me: u64) -> Result<Self, String> {
        let c = &config.consul;
        let backoff = Backoff::try_new(c.retry_base.as_nanos(), c.retry_max.as_nanos())
            .map_err(|e| e.to_string())?;
        let dcs: Vec<Option<&str>> = if c.datacenters.is_empty() {
            vec![None]
        } else {
            c.datacenters.iter().map(|d| Some(d.as_str())).collect()
        };
        let scope = sync_scope(config);
        let mut watches = Vec::with_capacity(config.services.len() * dcs.len());
        for (service, s) in config.services.iter().enumerate() {
            let merge_from: Vec<String> = c
                .datacenters
                .iter()
                .map(|dc| dc_list_key(&scope, &s.name, dc))
                .collect();
            for dc in &dcs {
                let mut params = Vec::new();
                if c.passing_only {
                    params.push("passing=1".to_string());
                }
                if let Some(dc) = dc {
                    params.push(format!("dc={}", percent_encode(dc)));
                }
                if let Some(tag) = &s.tag {
                    params.push(format!("tag={}", percent_encode(tag)));
                }
                if let Some(tenant) = &s.tenant {
                    // Validated as a tenant name: lowercase letters, digits, `-`, `_` only, so
                    // no quoting issue.
                    let filter = format!("Service.Meta.tenant == \"{tenant}\"");
                    params.push(format!("filter={}", percent_encode(&filter)));
                }
                let query = if params.is_empty() {
                    String::new()
                } else {
                    format!("?{}", params.join("&"))
                };
                let (list_key_, status_key_) = match dc {
                    Some(dc) => (
                        dc_list_key(&scope, &s.name, dc),
                        dc_status_key(&scope, &s.name, dc),
                    ),
                    None => (list_key(&scope, &s.name), status_key(&scope, &s.name)),
                };
                watches.push(Watch {
                    service,
                    name: s.name.clone(),
                    list_key: list_key_,
                    status_key: status_key_,
                    merge_from: merge_from.clone(),
                    service_list_key: list_key(&scope, &s.name),
                    tenant: s.tenant.clone(),
                    conflicted: false,
                    query,
                    index: 0,
                    in_flight: None,
                    next_at: 0,
                    started_at: 0,
                    failures: 0,
                    logged: false,
                });
            }
        }
        Ok(Self {
            service_names: config.services.iter().map(|s| s.name.clone()).collect(),
            me: me.max(1),
            holding: false,
            lease_key: lease_key(&scope),
            scope,
            watches,
            wait_ns: c.wait.as_nanos(),
            min_interval_ns: c.min_interval.as_nanos(),
            margin_ns: c.timeout_margin.as_nanos(),
            lease_ttl_ns: c.lease_ttl.as_nanos(),
            backoff,
            policy: HealthPolicy {
                passing_only: c.passing_only,
            },
        })
    }

    /// This VM's identity in the lease.
    pub fn me(&self) -> u64 {
        self.me
    }

    /// The shared-data key of this configuration's sync lease.
    pub fn lease_key(&self) -> &str {
        &self.lease_key
    }

    /// Whether this VM held the lease at the last tick.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Renews or claims the lease. On gaining it the watches resume from the published
    /// indexes (so a takeover keeps blocking where the previous holder was); on losing it
    /// they stop (answers still in flight are ignored). Returns the lease outcome.
    pub fn tick(&mut self, store: &dyn CasStore, now: u64) -> LeaseOutcome {
        let outcome = Lease::acquire(store, &self.lease_key, self.me, now, self.lease_ttl_ns);
        let holding = !matches!(outcome, LeaseOutcome::HeldBy(_));
        if !holding && self.holding {
            for w in &mut self.watches {
                w.in_flight = None;
            }
        }
        if holding && !self.holding {
            for w in &mut self.watches {
                w.index = SyncStatus::load(store, &w.status_key).index;
                w.in_flight = None;
                w.failures = 0;
                w.next_at = now;
            }
        }
        self.holding = holding;
        if holding {
            // Parts of configurations that are gone leave the tenant map (no VM of theirs is
            // left to do it).
            refresh_tenants(store, now);
        }
        outcome
    }

    /// Nanoseconds since Consul last confirmed `service`'s list at `now` (the oldest of its
    /// datacenters' confirmations); `None` before the first one.
    pub fn cache_age(&self, store: &dyn CasStore, service: usize, now: u64) -> Option<u64> {
        self.watches
            .iter()
            .filter(|w| w.service == service)
            .map(|w| SyncStatus::load(store, &w.status_key).synced_at)
            .filter(|&at| at > 0)
            .min()
            .map(|at| now.saturating_sub(at))
    }

    /// Queries due at `now` (call after [`Syncer::tick`] or an answer); mark each one sent
    /// with [`Syncer::sent`] or failed with [`Syncer::dispatch_failed`].
    pub fn due(&self, now: u64) -> Vec<Query> {
        if !self.holding {
            return Vec::new();
        }
        self.watches
            .iter()
            .enumerate()
            .filter(|(_, w)| w.in_flight.is_none() && now >= w.next_at)
            .map(|(i, w)| {
                let blocking = blocks(w.index);
                let path = match (blocking, w.query.is_empty()) {
                    (false, _) => format!("/v1/health/service/{}{}", w.name, w.query),
                    (true, true) => format!(
                        "/v1/health/service/{}?index={}&wait={}ms",
                        w.name,
                        w.index,
                        self.wait_ns / 1_000_000
                    ),
                    (true, false) => format!(
                        "/v1/health/service/{}{}&index={}&wait={}ms",
                        w.name,
                        w.query,
                        w.index,
                        self.wait_ns / 1_000_000
                    ),
                };
                let timeout_ns = if blocking {
                    blocking_timeout_ns(self.wait_ns, self.margin_ns)
                } else {
                    self.margin_ns
                };
                Query {
                    watch: i,
                    service: w.service,
                    path,
                    timeout_ns,
                }
            })
            .collect()
    }

    /// The query of `watch` went out with `token` at `now`.
    pub fn sent(&mut self, watch: usize, token: u32, now: u64) {
        if let Some(w) = self.watches.get_mut(watch) {
            w.in_flight = Some(token);
            w.started_at = now;
        }
    }

    /// The host refused the dispatch (unknown cluster...): back off like a failed answer.
    pub fn dispatch_failed(&mut self, watch: usize, now: u64, rng: &mut impl Rng) -> u32 {
        let Some(w) = self.watches.get_mut(watch) else {
            return 0;
        };
        w.started_at = now;
        w.failures = w.failures.saturating_add(1);
        w.next_at = now.saturating_add(self.backoff.delay_ns(w.failures, rng));
        w.failures
    }

    /// Handles the answer to `token`. Publishes a changed list (and the tenant map)
    /// into `store`. `None` if the token is not ours, or no longer: the lease was lost, seen
    /// at a tick or now (then every watch stops until this VM holds the lease again).
    pub fn answer(
        &mut self,
        store: &dyn CasStore,
        token: u32,
        reply: Reply<'_>,
        now: u64,
        rng: &mut impl Rng,
    ) -> Option<Handled> {
        let watch = self
            .watches
            .iter()
            .position(|w| w.in_flight == Some(token))?;
        if !Lease::held_by(store, &self.lease_key, self.me) {
            self.holding = false;
            for w in &mut self.watches {
                w.in_flight = None;
            }
            return None;
        }
        let backoff = self.backoff;
        let min_interval = self.min_interval_ns;
        let policy = self.policy;
        let names = &self.service_names;
        let scope = self.scope.as_str();
        let mut tenant_conflict = None;
        let mut left_out = 0;
        let w = self.watches.get_mut(watch)?;
        let service = w.service;
        w.in_flight = None;
        let earliest = next_query_at(w.started_at, min_interval);
        let Reply {
            status,
            index: index_header,
            body,
        } = reply;
        let result = match status {
            None => Err("no response (connection failed or reset)".to_string()),
            Some(200) => parse_index(index_header)
                .map_err(|e| e.to_string())
                .map(|returned| (returned, parse_health_service(body, policy))),
            Some(s) => Err(format!(
                "status {s}: {}",
                String::from_utf8_lossy(body.get(..body.len().min(200)).unwrap_or_default()).trim()
            )),
        };
        let failed = |w: &mut Watch, error: String, rng: &mut dyn FnMut(u32) -> u64| {
            w.failures = w.failures.saturating_add(1);
            let first = !w.logged;
            w.logged = true;
            w.next_at = now.saturating_add(rng(w.failures)).max(earliest);
            Answer::Failed {
                error,
                failures: w.failures,
                first,
            }
        };
        let mut delay = |failures: u32| backoff.delay_ns(failures, rng);
        let answer = match result {
            Err(error) => failed(w, error, &mut delay),
            Ok((_, Err(e @ ConsulError::Shape { .. }))) => failed(w, e.to_string(), &mut delay),
            Ok((returned, parsed)) => {
                let previous = w.index;
                // A fresh read (after a reset or at the start) may lower the stored index.
                let may_lower = previous == 0;
                let next = next_index(previous, returned);
                w.failures = 0;
                w.logged = false;
                w.index = next;
                w.next_at = earliest;
                if next == 0 {
                    // Went backwards: re-read at once (non-blocking), still rate-limited.
                    Answer::IndexReset
                } else {
                    let synced = SyncStatus {
                        index: next,
                        synced_at: now,
                    };
                    match parsed {
                        Ok(list) => {
                            let tenants: Vec<Option<String>> =
                                list.instances.iter().map(|x| x.tenant.clone()).collect();
                            let tenant = match owner(w.tenant.as_deref(), tenants) {
                                Ok(t) => {
                                    w.conflicted = false;
                                    t
                                }
                                Err(why) => {
                                    if !w.conflicted {
                                        tenant_conflict = Some(why);
                                    }
                                    w.conflicted = true;
                                    None
                                }
                            };
                            let instances: Vec<_> =
                                list.instances.into_iter().map(|x| x.instance).collect();
                            let sent = instances.len();
                            let (mut changed, cut) = publish_list(
                                store,
                                &w.list_key,
                                &ServiceList { tenant, instances },
                            );
                            left_out = cut;
                            let count = sent - cut;
                            synced.store(store, &w.status_key, may_lower);
                            if changed && !w.merge_from.is_empty() {
                                changed = merge_lists(store, &w.service_list_key, &w.merge_from);
                            }
                            if changed {
                                publish_tenants(
                                    store,
                                    scope,
                                    names.iter().map(String::as_str),
                                    now,
                                );
                                Answer::Changed { instances: count }
                            } else {
                                Answer::Unchanged
                            }
                        }
                        Err(e) => {
                            // Empty or all unusable: never publish an empty list. Consul did
                            // answer, so the index moves on (no spinning on the same answer),
                            // but the cached list was not confirmed: its age keeps growing.
                            SyncStatus {
                                index: next,
                                synced_at: SyncStatus::load(store, &w.status_key).synced_at,
                            }
                            .store(store, &w.status_key, may_lower);
                            // Several datacenters and another one has instances: this one's
                            // record goes empty so the service fails over to the next
                            // datacenter (the service's own list is still never empty).
                            let others =
                                w.merge_from.iter().filter(|k| **k != w.list_key).any(|k| {
                                    store
                                        .get(k)
                                        .and_then(|(v, _)| crate::registry::decode(&v))
                                        .is_some_and(|l| !l.instances.is_empty())
                                });
                            let empty = ServiceList {
                                tenant: None,
                                instances: Vec::new(),
                            };
                            if others
                                && publish_list(store, &w.list_key, &empty).0
                                && merge_lists(store, &w.service_list_key, &w.merge_from)
                            {
                                publish_tenants(
                                    store,
                                    scope,
                                    names.iter().map(String::as_str),
                                    now,
                                );
                                Answer::Changed { instances: 0 }
                            } else {
                                Answer::Empty(e.to_string())
                            }
                        }
                    }
                }
            }
        };
        Some(Handled {
            service,
            answer,
            tenant_conflict,
            left_out,
        })
    }
}

/// A service's owner from its configured `tenant` or else its instances' tenants: the one
/// they all name; `Err` (why) when they differ, some name none, or one is no tenant name.
fn owner(configured: Option<&str>, tenants: Vec<Option<String>>) -> Result<Option<String>, String> {
    if let Some(t) = configured {
        return Ok(Some(t.to_string()));
    }
    if let Some(bad) = tenants
        .iter()
        .flatten()
        .find(|t| TenantName::try_new(t).is_err())
    {
        return Err(format!("an instance's tenant `{bad}` is not a tenant name"));
    }
    let mut names: Vec<&str> = tenants
        .iter()
        .map(|t| t.as_deref().unwrap_or("(none)"))
        .collect();
    names.sort_unstable();
    names.dedup();
    let why = format!("its instances name different tenants: {}", names.join(", "));
    agreed(tenants.iter().cloned()).map_err(|()| why)
}

#[cfg(test)]
mod tests {
    use meshguard_core::SplitMix64;
    use meshguard_filter_common::{parse_config, MemoryStore};

    use super::*;
    use crate::registry::{decode, lease_key, list_key, TENANTS_KEY};

    const S: u64 = 1_000_000_000;

    impl Syncer {
        #[allow(clippy::too_many_arguments)]
        fn answer_parts(
            &mut self,
            store: &dyn CasStore,
            token: u32,
            status: Option<u16>,
            index: Option<&str>,
            body: &[u8],
            now: u64,
            rng: &mut impl Rng,
        ) -> Option<Handled> {
            let reply = Reply {
                status,
                index,
                body,
            };
            self.answer(store, token, reply, now, rng)
        }
    }

    fn config() -> Config {
        parse_config(
            br#"{"consul":{"cluster":"consul","retry_base":"1s","retry_max":"8s"},
                 "services":[{"name":"orders","tag":"v1"}]}"#,
        )
        .unwrap()
    }

    fn body(ports: &[u16]) -> Vec<u8> {
        let entries: Vec<String> = ports
            .iter()
            .map(|p| {
                format!(
                    r#"{{"Node":{{"Node":"n","Address":"127.0.0.1","Datacenter":"dc1"}},
                        "Service":{{"ID":"s{p}","Service":"orders","Port":{p},"Meta":{{"tenant":"acme"}}}},
                        "Checks":[]}}"#
                )
            })
            .collect();
        format!("[{}]", entries.join(",")).into_bytes()
    }

    fn scope() -> String {
        sync_scope(&config())
    }

    fn setup() -> (MemoryStore, Syncer, SplitMix64) {
        let store = MemoryStore::new();
        store
            .set(&lease_key(&scope()), &Lease::initial(), 0)
            .unwrap();
        (
            store,
            Syncer::new(&config(), 7).unwrap(),
            SplitMix64::new(1),
        )
    }

    fn published(store: &MemoryStore) -> Vec<u16> {
        store
            .get(&list_key(&scope(), "orders"))
            .and_then(|(v, _)| decode(&v))
            .map(|l| l.instances.iter().map(|x| x.port().get()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn first_read_does_not_block_then_queries_block_on_the_index() {
        let (store, mut s, mut rng) = setup();
        s.tick(&store, 0);
        let q = s.due(0);
        assert_eq!(q[0].path, "/v1/health/service/orders?passing=1&tag=v1");
        s.sent(0, 1, 0);
        assert!(s.due(0).is_empty(), "one query in flight per service");
        let h = s.answer_parts(
            &store,
            1,
            Some(200),
            Some("10"),
            &body(&[1, 2]),
            0,
            &mut rng,
        );
        assert_eq!(h.unwrap().answer, Answer::Changed { instances: 2 });
        assert_eq!(published(&store), [1, 2]);
        assert_eq!(store.get(TENANTS_KEY).unwrap().0, br#"{"orders":"acme"}"#);
        assert!(
            s.due(S / 2).is_empty(),
            "rate-limited to one start per second"
        );
        let q = s.due(S);
        assert_eq!(
            q[0].path,
            "/v1/health/service/orders?passing=1&tag=v1&index=10&wait=30000ms"
        );
        assert_eq!(q[0].timeout_ns, 30 * S + 30 * S / 16 + 5 * S);
    }

    #[test]
    fn an_index_going_backwards_resets_and_errors_back_off_keeping_the_list() {
        let (store, mut s, mut rng) = setup();
        s.tick(&store, 0);
        s.sent(0, 1, 0);
        s.answer_parts(&store, 1, Some(200), Some("10"), &body(&[1]), 0, &mut rng);
        s.sent(0, 2, S);
        let h = s.answer_parts(&store, 2, Some(200), Some("3"), &body(&[1]), S, &mut rng);
        assert_eq!(h.unwrap().answer, Answer::IndexReset);
        assert_eq!(
            s.due(2 * S)[0].path,
            "/v1/health/service/orders?passing=1&tag=v1"
        );
        s.sent(0, 3, 2 * S);
        let h = s
            .answer_parts(&store, 3, Some(500), None, b"rpc error", 2 * S, &mut rng)
            .unwrap();
        assert!(
            matches!(
                h.answer,
                Answer::Failed {
                    failures: 1,
                    first: true,
                    ..
                }
            ),
            "{h:?}"
        );
        let retry_at = (0..20 * S)
            .step_by(10_000_000)
            .find(|&t| !s.due(t).is_empty())
            .unwrap();
        assert!((2 * S + S / 2..=3 * S).contains(&retry_at), "{retry_at}");
        s.sent(0, 4, retry_at);
        let h = s.answer_parts(
            &store,
            4,
            Some(200),
            Some("11"),
            b"{not json",
            retry_at,
            &mut rng,
        );
        assert!(matches!(
            h.unwrap().answer,
            Answer::Failed {
                failures: 2,
                first: false,
                ..
            }
        ));
        assert_eq!(
            s.due(retry_at + S / 2 + S / 2 - 1).len(),
            0,
            "cap 2s: at least 1s"
        );
        s.sent(0, 5, retry_at + 3 * S);
        let h = s.answer_parts(
            &store,
            5,
            Some(200),
            Some("12"),
            b"[]",
            retry_at + 3 * S,
            &mut rng,
        );
        assert!(matches!(h.unwrap().answer, Answer::Empty(_)));
        assert_eq!(
            published(&store),
            [1],
            "the cached list survives errors and empties"
        );
        assert_eq!(
            SyncStatus::load(&store, &status_key(&scope(), "orders")).index,
            12
        );
    }

    #[test]
    fn another_vm_takes_over_a_lapsed_lease_at_the_published_index() {
        let (store, mut a, mut rng) = setup();
        let mut b = Syncer::new(&config(), 8).unwrap();
        a.tick(&store, 0);
        assert!(!matches!(b.tick(&store, 0), LeaseOutcome::Held));
        assert!(b.due(0).is_empty());
        a.sent(0, 1, 0);
        a.answer_parts(&store, 1, Some(200), Some("10"), &body(&[1]), 0, &mut rng);
        // A stops ticking (its VM died); the lease lapses after 10s.
        assert!(matches!(b.tick(&store, 9 * S), LeaseOutcome::HeldBy(7)));
        assert_eq!(b.tick(&store, 10 * S), LeaseOutcome::TookOver { from: 7 });
        assert!(b.due(10 * S)[0].path.ends_with("&index=10&wait=30000ms"));
        // A comes back: it lost the lease, and its late answer is ignored.
        a.sent(0, 2, 10 * S);
        assert!(matches!(a.tick(&store, 11 * S), LeaseOutcome::HeldBy(8)));
        assert!(a.due(11 * S).is_empty());
        assert_eq!(
            a.answer_parts(
                &store,
                2,
                Some(200),
                Some("11"),
                &body(&[2]),
                11 * S,
                &mut rng
            ),
            None
        );
        assert_eq!(published(&store), [1]);
    }

    #[test]
    fn several_datacenters_are_watched_separately_and_merged_local_first() {
        let config: Config = parse_config(
            br#"{"consul":{"cluster":"consul","datacenters":["dc1","dc2"]},
                 "services":[{"name":"orders"}]}"#,
        )
        .unwrap();
        let store = MemoryStore::new();
        let mut s = Syncer::new(&config, 7).unwrap();
        store.set(s.lease_key(), &Lease::initial(), 0).unwrap();
        let published = |store: &MemoryStore| -> Vec<u16> {
            store
                .get(&list_key(&sync_scope(&config), "orders"))
                .and_then(|(v, _)| decode(&v))
                .map(|l| l.instances.iter().map(|x| x.port().get()).collect())
                .unwrap_or_default()
        };
        let mut rng = SplitMix64::new(1);
        s.tick(&store, 0);
        let q = s.due(0);
        let paths: Vec<&str> = q.iter().map(|q| q.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/v1/health/service/orders?passing=1&dc=dc1",
                "/v1/health/service/orders?passing=1&dc=dc2"
            ]
        );
        assert_eq!((q[0].service, q[1].service), (0, 0));
        s.sent(q[0].watch, 1, 0);
        s.sent(q[1].watch, 2, 0);
        let h = s.answer_parts(&store, 2, Some(200), Some("5"), &body(&[3]), 10, &mut rng);
        assert_eq!(h.unwrap().answer, Answer::Changed { instances: 1 });
        assert_eq!(published(&store), [3], "dc2 alone so far");
        assert_eq!(s.cache_age(&store, 0, 15), Some(5));
        s.answer_parts(
            &store,
            1,
            Some(200),
            Some("9"),
            &body(&[1, 2]),
            20,
            &mut rng,
        );
        assert_eq!(published(&store), [1, 2, 3], "dc1 first");
        assert_eq!(
            s.cache_age(&store, 0, 25),
            Some(15),
            "the oldest confirmation counts"
        );
    }

    #[test]
    fn a_vm_whose_lease_was_taken_over_publishes_nothing_it_was_still_waiting_for() {
        let (store, mut a, mut rng) = setup();
        let mut b = Syncer::new(&config(), 8).unwrap();
        a.tick(&store, 0);
        a.sent(0, 1, 0);
        a.answer_parts(&store, 1, Some(200), Some("10"), &body(&[1]), 0, &mut rng);
        // A blocks on index 10; its VM stalls past the lease (no tick), B takes over and
        // publishes index 12.
        a.sent(0, 2, S);
        assert_eq!(b.tick(&store, 10 * S), LeaseOutcome::TookOver { from: 7 });
        b.sent(0, 1, 10 * S);
        let h = b.answer_parts(
            &store,
            1,
            Some(200),
            Some("12"),
            &body(&[3]),
            10 * S,
            &mut rng,
        );
        assert_eq!(h.unwrap().answer, Answer::Changed { instances: 1 });
        // A's query comes back before A's next tick: it must not overwrite B's newer list.
        let late = a.answer_parts(
            &store,
            2,
            Some(200),
            Some("11"),
            &body(&[2]),
            11 * S,
            &mut rng,
        );
        assert_eq!(late, None);
        assert!(!a.holding() && a.due(11 * S).is_empty());
        assert_eq!(published(&store), [3]);
        let status = SyncStatus::load(&store, &status_key(&scope(), "orders"));
        assert_eq!(status.index, 12);
    }

    /// A health body for `orders` whose instances carry `tenants` (`None`: no tenant meta).
    fn body_with_tenants(tenants: &[Option<&str>]) -> Vec<u8> {
        let entries: Vec<String> = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let meta = t.map_or(String::new(), |t| format!(r#""tenant":"{t}""#));
                format!(
                    r#"{{"Node":{{"Node":"n","Address":"127.0.0.1"}},
                        "Service":{{"ID":"s{i}","Service":"orders","Port":{},"Meta":{{{meta}}}}},
                        "Checks":[]}}"#,
                    8000 + i
                )
            })
            .collect();
        format!("[{}]", entries.join(",")).into_bytes()
    }

    #[test]
    fn an_instance_registered_under_another_tenant_leaves_the_service_out_of_the_tenant_map() {
        let (store, mut s, mut rng) = setup();
        s.tick(&store, 0);
        let tenants =
            |store: &MemoryStore| String::from_utf8(store.get(TENANTS_KEY).unwrap().0).unwrap();
        let mut answer = |s: &mut Syncer, token, t: &[Option<&str>], at| {
            s.sent(0, token, at);
            s.answer_parts(
                &store,
                token,
                Some(200),
                Some(&(10 + u64::from(token)).to_string()),
                &body_with_tenants(t),
                at,
                &mut rng,
            )
            .unwrap()
        };
        let h = answer(&mut s, 1, &[Some("acme"), Some("acme")], 0);
        assert_eq!(h.tenant_conflict, None);
        assert_eq!(tenants(&store), r#"{"orders":"acme"}"#);
        // Globex registers an instance under `orders`: no owner rather than a flip.
        let h = answer(&mut s, 2, &[Some("acme"), Some("globex")], S);
        assert!(h.tenant_conflict.unwrap().contains("acme, globex"));
        assert_eq!(tenants(&store), "{}");
        // Reported once per streak, even when the list changes again.
        let h = answer(
            &mut s,
            3,
            &[Some("globex"), Some("acme"), Some("acme")],
            2 * S,
        );
        assert_eq!(h.tenant_conflict, None);
        // Even an instance without tenant meta makes the owner unknown.
        let h = answer(&mut s, 4, &[Some("acme"), None], 3 * S);
        assert_eq!(h.tenant_conflict, None, "still the same streak");
        assert_eq!(tenants(&store), "{}");
        let h = answer(&mut s, 5, &[Some("acme")], 4 * S);
        assert_eq!(h.tenant_conflict, None);
        assert_eq!(tenants(&store), r#"{"orders":"acme"}"#);
        let h = answer(&mut s, 6, &[Some("Acme")], 5 * S);
        assert!(h.tenant_conflict.unwrap().contains("not a tenant name"));
        assert_eq!(tenants(&store), "{}");
    }

    #[test]
    fn a_configured_tenant_owns_the_service_whatever_its_instances_say() {
        let config: Config = parse_config(
            br#"{"consul":{"cluster":"consul"},"services":[{"name":"orders","tenant":"acme"}]}"#,
        )
        .unwrap();
        let store = MemoryStore::new();
        let mut s = Syncer::new(&config, 7).unwrap();
        store.set(s.lease_key(), &Lease::initial(), 0).unwrap();
        let mut rng = SplitMix64::new(1);
        s.tick(&store, 0);
        s.sent(0, 1, 0);
        let h = s
            .answer_parts(
                &store,
                1,
                Some(200),
                Some("3"),
                &body_with_tenants(&[None]),
                0,
                &mut rng,
            )
            .unwrap();
        assert_eq!(h.tenant_conflict, None);
        assert_eq!(store.get(TENANTS_KEY).unwrap().0, br#"{"orders":"acme"}"#);
    }
}
