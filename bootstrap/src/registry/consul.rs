//! Consul registry sync: one blocking watch on `/v1/catalog/services` and one per service on
//! `/v1/health/service/:service`, following Consul's blocking-query rules (index reset when it
//! goes backwards, never 0, a minimum interval between queries, wait + wait/16 timeouts), with
//! capped exponential backoff with jitter on errors, `stale` reads, an ACL token and a
//! datacenter. Non-blocking fetches (first sync, after a reset or an error) run at most
//! `max_concurrency` at a time.
//!
//! Availability rules: an error never changes the registry (the last good instances stay); a
//! service whose health answer has no usable instance keeps its last good list; only a service
//! leaving the catalog is removed. The first complete sync is published (and saved to the
//! last-known-good file, which is served at start until Consul answers) once every service has
//! answered; every later change is published after a short coalescing delay as a delta of the
//! services that changed, and the file is rewritten at most once per `save_interval` by a
//! separate task, so a change among 5,000 services costs O(that service) on its way to Envoy.
//!
//! Why one blocking query per service: Consul's `/v1/health/service/:s` index is that
//! service's own (it moves only when one of its instances or checks changes), so a parked
//! query wakes exactly when its answer changed. Consul has no blocking "which services changed"
//! endpoint: `/v1/catalog/services` moves on registrations but not on health changes, and
//! `/v1/health/state/any` moves on every check change of every service, so watching it means
//! re-reading every check in the datacenter per change. The cost is one parked HTTP connection
//! per service: a Consul agent limits them per client IP (`limits.http_max_conns_per_client`,
//! default 200), which must be raised above the number of services watched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshguard_core::{
    blocking_timeout_ns, blocks, next_index, parse_catalog_services, parse_health_service,
    parse_index, percent_encode, Backoff, CheckStatus, ConsulError, HealthPolicy, SplitMix64,
};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use super::http::{self, HttpResponse};
use super::{disk, Endpoint, Health, Registry, RegistryEvent};

/// Consul connection and sync settings.
#[derive(Debug, Clone)]
pub struct ConsulOptions {
    /// `host:port` of the Consul agent's HTTP API.
    pub authority: String,
    /// ACL token (`X-Consul-Token`).
    pub token: Option<String>,
    /// Datacenter (`dc`); the agent's own when `None`. Its instances get Envoy priority 0.
    pub datacenter: Option<String>,
    /// Further datacenters, in failover order: every service is also watched there
    /// (`?dc=`), and their instances join its endpoints at priority 1, 2, ... so Envoy moves
    /// traffic there only while the local datacenter lacks healthy instances.
    pub failover_datacenters: Vec<String>,
    /// Allow any server to answer (`stale`), spreading load off the leader.
    pub stale: bool,
    /// Only instances whose checks all pass (`passing`).
    pub passing_only: bool,
    /// Blocking query wait.
    pub wait: Duration,
    /// Timeout of a non-blocking request.
    pub request_timeout: Duration,
    /// Non-blocking requests in flight at most.
    pub max_concurrency: usize,
    /// Minimum time between two queries of one watch (a watch whose index changes on every
    /// write cannot spin).
    pub min_interval: Duration,
    /// Backoff after the first failure.
    pub backoff_base: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Least time between two publications: a change after a quiet period is published at
    /// once, changes arriving sooner are batched into the next publication.
    pub coalesce: Duration,
    /// Last-known-good file, if any.
    pub snapshot_path: Option<PathBuf>,
    /// Least time between two rewrites of the last-known-good file after the first sync.
    pub save_interval: Duration,
}

impl ConsulOptions {
    /// Defaults for the agent at `authority`.
    pub fn new(authority: impl Into<String>) -> Self {
        Self {
            authority: authority.into(),
            token: None,
            datacenter: None,
            failover_datacenters: Vec::new(),
            stale: true,
            passing_only: false,
            wait: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_concurrency: 32,
            min_interval: Duration::from_millis(100),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            coalesce: Duration::from_millis(20),
            snapshot_path: None,
            save_interval: Duration::from_secs(1),
        }
    }

    /// Sets the datacenters from a comma-separated list in failover order (`dc1,dc2`): the
    /// first is [`ConsulOptions::datacenter`], the rest [`ConsulOptions::failover_datacenters`].
    /// Empty items are skipped, repeats kept once.
    pub fn set_datacenters(&mut self, list: &str) {
        let mut dcs: Vec<String> = Vec::new();
        for dc in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if !dcs.iter().any(|d| d == dc) {
                dcs.push(dc.to_string());
            }
        }
        let mut dcs = dcs.into_iter();
        self.datacenter = dcs.next();
        self.failover_datacenters = dcs.collect();
    }

    /// Applies a registry URL's query (`dc=dc1,dc2`; `dc` may repeat); an unknown parameter
    /// is an error naming it.
    pub fn apply_query(&mut self, query: &str) -> Result<(), String> {
        let mut dcs: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("dc", value)) => dcs.push(value),
                _ => return Err(format!("unknown parameter {pair:?} (expected dc=DC1,DC2)")),
            }
        }
        if !dcs.is_empty() {
            self.set_datacenters(&dcs.join(","));
        }
        Ok(())
    }

    /// The watched datacenters in priority order (`None`: the agent's own).
    pub fn datacenters(&self) -> Vec<Option<String>> {
        std::iter::once(self.datacenter.clone())
            .chain(self.failover_datacenters.iter().cloned().map(Some))
            .collect()
    }

    /// `consul://HOST:PORT[?dc=...]`.
    pub fn describe(&self) -> String {
        let dcs: Vec<String> = self.datacenters().into_iter().flatten().collect();
        if dcs.is_empty() {
            format!("consul://{}", self.authority)
        } else {
            format!("consul://{}?dc={}", self.authority, dcs.join(","))
        }
    }

    /// Age after which the registry counts as stale: one blocking round plus margin.
    pub fn stale_after(&self) -> Duration {
        self.wait + self.wait / 16 + self.request_timeout
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a watch reports to the aggregator.
#[derive(Debug)]
/// `usize`: the datacenter's position in [`ConsulOptions::datacenters`] (its priority).
enum WatchEvent {
    Catalog(usize, BTreeSet<String>),
    CatalogFailed(usize, String),
    Instances(usize, String, Vec<Endpoint>),
    /// The service answered but has no usable instance: keep the last good list.
    NoUsable(usize, String, String),
    ServiceFailed(usize, String, String),
}

/// Shared by the watches.
#[derive(Debug)]
struct Client {
    options: ConsulOptions,
    permits: Semaphore,
    backoff: Backoff,
}

impl Client {
    fn query(&self, index: u64, dc: Option<&str>) -> String {
        let mut q = Vec::new();
        if blocks(index) {
            q.push(format!("index={index}"));
            q.push(format!("wait={}ms", self.options.wait.as_millis()));
        }
        if self.options.stale {
            q.push("stale=".to_string());
        }
        if let Some(dc) = dc {
            q.push(format!("dc={}", percent_encode(dc)));
        }
        q.join("&")
    }

    /// One query (in datacenter `dc`, the agent's own when `None`): non-blocking ones wait
    /// for a permit.
    async fn get(
        &self,
        path: &str,
        extra: &str,
        index: u64,
        dc: Option<&str>,
    ) -> Result<HttpResponse, String> {
        let mut query = self.query(index, dc);
        if !extra.is_empty() {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(extra);
        }
        let target = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        let token = self.options.token.clone().unwrap_or_default();
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            Vec::new()
        } else {
            vec![("X-Consul-Token", token.as_str())]
        };
        let (timeout, _permit) = if blocks(index) {
            let ns = blocking_timeout_ns(
                nanos(self.options.wait),
                nanos(self.options.request_timeout),
            );
            (Duration::from_nanos(ns), None)
        } else {
            let permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
            (self.options.request_timeout, Some(permit))
        };
        let response = http::get(&self.options.authority, &target, &headers, timeout)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if response.status != 200 {
            let body = String::from_utf8_lossy(&response.body);
            return Err(format!(
                "GET {path}: HTTP {}: {}",
                response.status,
                body.chars().take(200).collect::<String>()
            ));
        }
        Ok(response)
    }
}

/// A blocking watch loop: index rules, minimum interval and backoff, shared by both watches.
async fn watch_loop<F>(client: Arc<Client>, seed: u64, mut step: F)
where
    F: AsyncStep,
{
    let mut index = 0u64;
    let mut failures = 0u32;
    let mut rng = SplitMix64::new(seed);
    loop {
        let started = Instant::now();
        let result = step.run(&client, index).await;
        match result {
            Ok(returned) => {
                failures = 0;
                index = next_index(index, returned);
            }
            Err(()) => {
                failures = failures.saturating_add(1);
                // After an error, re-read without blocking: the index may be meaningless now.
                index = 0;
                let delay = client.backoff.delay_ns(failures, &mut rng);
                tokio::time::sleep(Duration::from_nanos(delay)).await;
            }
        }
        let min = client.options.min_interval;
        let elapsed = started.elapsed();
        if elapsed < min {
            tokio::time::sleep(min - elapsed).await;
        }
    }
}

/// One query of a watch: `Ok(X-Consul-Index)` or `Err(())` after reporting the failure.
trait AsyncStep: Send {
    fn run(
        &mut self,
        client: &Client,
        index: u64,
    ) -> impl std::future::Future<Output = Result<u64, ()>> + Send;
}

struct CatalogStep {
    /// Position of the datacenter in the watched list, and its name.
    dc: usize,
    dc_name: Option<String>,
    events: mpsc::Sender<WatchEvent>,
}

impl AsyncStep for CatalogStep {
    async fn run(&mut self, client: &Client, index: u64) -> Result<u64, ()> {
        let outcome = async {
            let response = client
                .get("/v1/catalog/services", "", index, self.dc_name.as_deref())
                .await?;
            let returned =
                parse_index(response.header("x-consul-index")).map_err(|e| e.to_string())?;
            let services = parse_catalog_services(&response.body).map_err(|e| e.to_string())?;
            Ok::<_, String>((returned, services.into_keys().collect::<BTreeSet<_>>()))
        }
        .await;
        match outcome {
            Ok((returned, services)) => {
                let _ = self
                    .events
                    .send(WatchEvent::Catalog(self.dc, services))
                    .await;
                Ok(returned)
            }
            Err(err) => {
                let _ = self
                    .events
                    .send(WatchEvent::CatalogFailed(self.dc, err))
                    .await;
                Err(())
            }
        }
    }
}

struct ServiceStep {
    service: String,
    /// Position of the datacenter in the watched list (the endpoints' priority), and its name.
    dc: usize,
    dc_name: Option<String>,
    events: mpsc::Sender<WatchEvent>,
}

impl AsyncStep for ServiceStep {
    async fn run(&mut self, client: &Client, index: u64) -> Result<u64, ()> {
        let path = format!("/v1/health/service/{}", percent_encode(&self.service));
        let extra = if client.options.passing_only {
            "passing="
        } else {
            ""
        };
        let dc = self.dc;
        let response = match client
            .get(&path, extra, index, self.dc_name.as_deref())
            .await
        {
            Ok(r) => r,
            Err(err) => {
                let _ = self
                    .events
                    .send(WatchEvent::ServiceFailed(dc, self.service.clone(), err))
                    .await;
                return Err(());
            }
        };
        let returned = match parse_index(response.header("x-consul-index")) {
            Ok(i) => i,
            Err(err) => {
                let _ = self
                    .events
                    .send(WatchEvent::ServiceFailed(
                        dc,
                        self.service.clone(),
                        err.to_string(),
                    ))
                    .await;
                return Err(());
            }
        };
        let policy = HealthPolicy {
            passing_only: client.options.passing_only,
        };
        let event = match parse_health_service(&response.body, policy) {
            Ok(list) => WatchEvent::Instances(
                dc,
                self.service.clone(),
                list.instances
                    .iter()
                    .filter_map(to_endpoint)
                    .map(|e| Endpoint {
                        priority: u32::try_from(dc).unwrap_or(u32::MAX),
                        ..e
                    })
                    .collect(),
            ),
            Err(err @ (ConsulError::NoInstances | ConsulError::NoUsableInstances { .. })) => {
                WatchEvent::NoUsable(dc, self.service.clone(), err.to_string())
            }
            Err(err) => {
                let _ = self
                    .events
                    .send(WatchEvent::ServiceFailed(
                        dc,
                        self.service.clone(),
                        err.to_string(),
                    ))
                    .await;
                return Err(());
            }
        };
        let _ = self.events.send(event).await;
        Ok(returned)
    }
}

/// What the KV watch reports: the value's text, or why there is none.
pub type KvEvent = Result<String, String>;

struct KvStep {
    key: String,
    out: mpsc::Sender<KvEvent>,
}

impl AsyncStep for KvStep {
    async fn run(&mut self, client: &Client, index: u64) -> Result<u64, ()> {
        let path = format!(
            "/v1/kv/{}",
            self.key
                .split('/')
                .map(percent_encode)
                .collect::<Vec<_>>()
                .join("/")
        );
        let outcome = async {
            let response = client
                .get(&path, "raw=", index, client.options.datacenter.as_deref())
                .await?;
            let returned =
                parse_index(response.header("x-consul-index")).map_err(|e| e.to_string())?;
            let text = String::from_utf8(response.body)
                .map_err(|_| format!("{path}: the value is not UTF-8"))?;
            Ok::<_, String>((returned, text))
        }
        .await;
        match outcome {
            Ok((returned, text)) => {
                let _ = self.out.send(Ok(text)).await;
                Ok(returned)
            }
            Err(err) => {
                let _ = self.out.send(Err(err)).await;
                Err(())
            }
        }
    }
}

/// Watches Consul KV `key` (blocking queries, same index and backoff rules as the registry)
/// until `stop` turns true, sending every value read (also unchanged ones after a timeout).
pub async fn watch_kv(
    options: ConsulOptions,
    key: String,
    out: mpsc::Sender<KvEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let backoff = match Backoff::try_new(nanos(options.backoff_base), nanos(options.backoff_max)) {
        Ok(b) => b,
        Err(err) => {
            let _ = out.send(Err(format!("consul backoff: {err}"))).await;
            return;
        }
    };
    let client = Arc::new(Client {
        permits: Semaphore::new(options.max_concurrency.max(1)),
        backoff,
        options,
    });
    let seed = seed_for(&key);
    tokio::select! {
        _ = async { stop.wait_for(|s| *s).await.is_ok() } => {}
        () = watch_loop(client, seed, KvStep { key, out }) => {}
    }
}

/// A usable Consul instance as an endpoint; `None` for a host name (EDS needs an IP).
fn to_endpoint(i: &meshguard_core::ConsulInstance) -> Option<Endpoint> {
    let host = i.instance.host();
    if host.parse::<std::net::IpAddr>().is_err() {
        tracing::warn!(service = %i.service, id = %i.service_id, host = %host, "skipping an instance whose address is not an IP");
        return None;
    }
    let weight = i.instance.weight().get();
    Some(Endpoint {
        address: host.to_string(),
        port: i.instance.port().get(),
        health: match i.status {
            CheckStatus::Passing => Health::Passing,
            CheckStatus::Warning => Health::Warning,
            CheckStatus::Critical => Health::Critical,
        },
        // Core already picked the weight for the instance's status.
        weight,
        warning_weight: weight,
        zone: i
            .instance
            .zone()
            .map(str::to_string)
            .or_else(|| tag_value(&i.tags, "zone")),
        datacenter: i.instance.datacenter().map(str::to_string),
        priority: 0,
        secure: i.secure || tag_value(&i.tags, "secure").is_some_and(|v| v == "true"),
        group: i.group.clone().or_else(|| tag_value(&i.tags, "group")),
    })
}

/// The value of a `key=value` tag: Spring Cloud Consul before metadata support (and with
/// `spring.cloud.consul.discovery.tags`) carries `zone`, `secure` and `group` as tags.
fn tag_value(tags: &[String], key: &str) -> Option<String> {
    tags.iter()
        .filter_map(|t| t.split_once('='))
        .find(|(k, v)| *k == key && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

fn seed_for(name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

/// Writes the registries it receives to the last-known-good file, one at a time.
async fn save_loop(path: PathBuf, mut registries: mpsc::Receiver<Registry>) {
    while let Some(registry) = registries.recv().await {
        let path = path.clone();
        let saved = tokio::task::spawn_blocking(move || disk::save(&path, &registry)).await;
        if let Ok(Err(err)) = saved {
            tracing::warn!(error = %format!("{err:#}"), "could not save the last-known-good registry");
        }
    }
}

/// Runs the sync until `stop` turns true, reporting to `out`.
pub async fn run(
    options: ConsulOptions,
    out: mpsc::Sender<RegistryEvent>,
    mut stop: watch::Receiver<bool>,
) {
    if let Some(path) = &options.snapshot_path {
        match disk::load(path) {
            Ok(registry) => {
                tracing::info!(path = %path.display(), services = registry.services.len(), "serving the last-known-good registry until Consul answers");
                let _ = out
                    .send(RegistryEvent::Update {
                        registry,
                        origin: "disk",
                    })
                    .await;
            }
            Err(err) if path.exists() => {
                tracing::warn!(error = %format!("{err:#}"), "ignoring the last-known-good registry");
            }
            Err(_) => {}
        }
    }
    let backoff = match Backoff::try_new(nanos(options.backoff_base), nanos(options.backoff_max)) {
        Ok(b) => b,
        Err(err) => {
            let _ = out
                .send(RegistryEvent::Error(format!("consul backoff: {err}")))
                .await;
            return;
        }
    };
    let client = Arc::new(Client {
        permits: Semaphore::new(options.max_concurrency.max(1)),
        backoff,
        options,
    });
    let (events_tx, mut events) = mpsc::channel::<WatchEvent>(1024);
    let mut dcs: Vec<Dc> = client
        .options
        .datacenters()
        .into_iter()
        .enumerate()
        .map(|(position, name)| {
            let seed = seed_for(&format!(
                "/v1/catalog/services@{}",
                name.as_deref().unwrap_or("")
            ));
            let catalog = tokio::spawn(watch_loop(
                Arc::clone(&client),
                seed,
                CatalogStep {
                    dc: position,
                    dc_name: name.clone(),
                    events: events_tx.clone(),
                },
            ));
            Dc {
                name,
                catalog,
                watches: HashMap::new(),
                instances: BTreeMap::new(),
            }
        })
        .collect();
    // The merge of every datacenter's instances (local first): what is published.
    let mut services: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    // The local datacenter's services yet to answer the first time; the first sync waits for
    // them only (a failover datacenter that cannot be reached must not hold the local back).
    let mut pending: Option<BTreeSet<String>> = None;
    let mut synced = false;
    let mut published = false;
    let mut dirty = false;
    // Services changed since the last publication.
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut publish_at: Option<tokio::time::Instant> = None;
    let mut last_publish: Option<tokio::time::Instant> = None;
    let mut save_at: Option<tokio::time::Instant> = None;
    let saver = client.options.snapshot_path.clone().map(|path| {
        let (tx, rx) = mpsc::channel::<Registry>(1);
        (tx, tokio::spawn(save_loop(path, rx)))
    });
    loop {
        let deadline = publish_at;
        let save_deadline = save_at;
        tokio::select! {
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                publish_at = None;
                last_publish = Some(tokio::time::Instant::now());
                dirty = false;
                if published {
                    let delta = changed
                        .iter()
                        .map(|name| (name.clone(), services.get(name).cloned()))
                        .collect();
                    changed.clear();
                    let _ = out.send(RegistryEvent::Changed { services: delta, origin: "consul" }).await;
                    if saver.is_some() && save_at.is_none() {
                        save_at = Some(tokio::time::Instant::now() + client.options.save_interval);
                    }
                } else {
                    // The first sync is saved before it is served: a restart right after it
                    // finds it on disk.
                    published = true;
                    changed.clear();
                    let registry = Registry { services: services.clone() };
                    if let Some(path) = client.options.snapshot_path.clone() {
                        let copy = registry.clone();
                        let saved = tokio::task::spawn_blocking(move || disk::save(&path, &copy)).await;
                        if let Ok(Err(err)) = saved {
                            tracing::warn!(error = %format!("{err:#}"), "could not save the last-known-good registry");
                        }
                    }
                    let _ = out.send(RegistryEvent::Update { registry, origin: "consul" }).await;
                }
            }
            () = async {
                match save_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                save_at = None;
                if let Some((tx, _)) = &saver {
                    // Busy saving the previous one: try again after another interval.
                    if tx.try_send(Registry { services: services.clone() }).is_err() {
                        save_at = Some(tokio::time::Instant::now() + client.options.save_interval);
                    }
                }
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                // Services whose merged list must be recomputed.
                let mut touched: BTreeSet<String> = BTreeSet::new();
                match event {
                    WatchEvent::Catalog(position, names) => {
                        let _ = out.send(RegistryEvent::Alive).await;
                        let Some(dc) = dcs.get_mut(position) else { continue };
                        dc.watches.retain(|name, handle| {
                            let keep = names.contains(name);
                            if !keep {
                                handle.abort();
                            }
                            keep
                        });
                        let gone: Vec<String> = dc
                            .instances
                            .keys()
                            .filter(|name| !names.contains(*name))
                            .cloned()
                            .collect();
                        for name in gone {
                            dc.instances.remove(&name);
                            touched.insert(name);
                        }
                        for name in &names {
                            if !dc.watches.contains_key(name) {
                                let handle = tokio::spawn(watch_loop(
                                    Arc::clone(&client),
                                    seed_for(&format!("{name}@{}", dc.name.as_deref().unwrap_or(""))),
                                    ServiceStep {
                                        service: name.clone(),
                                        dc: position,
                                        dc_name: dc.name.clone(),
                                        events: events_tx.clone(),
                                    },
                                ));
                                dc.watches.insert(name.clone(), handle);
                            }
                        }
                        if !synced && position == 0 {
                            let mut waiting = pending.take().unwrap_or_else(|| names.clone());
                            waiting.retain(|n| names.contains(n) && !dc.instances.contains_key(n));
                            pending = Some(waiting);
                        }
                    }
                    WatchEvent::CatalogFailed(position, err) => {
                        let dc = dcs.get(position).and_then(|d| d.name.clone()).unwrap_or_default();
                        tracing::warn!(error = %err, datacenter = %dc, "consul catalog watch failed; keeping the last good registry");
                        let _ = out.send(RegistryEvent::Error(err)).await;
                    }
                    WatchEvent::Instances(position, name, endpoints) => {
                        if let Some(dc) = dcs.get_mut(position) {
                            if dc.watches.contains_key(&name) && dc.instances.get(&name) != Some(&endpoints) {
                                dc.instances.insert(name.clone(), endpoints);
                                touched.insert(name.clone());
                            }
                        }
                        if position == 0 {
                            if let Some(waiting) = pending.as_mut() {
                                waiting.remove(&name);
                            }
                        }
                    }
                    WatchEvent::NoUsable(position, name, reason) => {
                        // With several datacenters, one without a usable instance leaves the
                        // service while another has some (Envoy then fails over to it); the
                        // last one with instances keeps its last good list.
                        let elsewhere = dcs.iter().enumerate().any(|(i, d)| {
                            i != position && d.instances.get(&name).is_some_and(|l| !l.is_empty())
                        });
                        let dc_name = dcs.get(position).and_then(|d| d.name.clone()).unwrap_or_default();
                        match dcs.get_mut(position) {
                            Some(dc) if elsewhere && dc.watches.contains_key(&name) => {
                                tracing::info!(service = %name, datacenter = %dc_name, reason = %reason, "no usable instance; failing over to the other datacenters");
                                if dc.instances.remove(&name).is_some() {
                                    touched.insert(name.clone());
                                }
                            }
                            _ => tracing::warn!(service = %name, datacenter = %dc_name, reason = %reason, "no usable instance; keeping the last good list"),
                        }
                        if position == 0 {
                            if let Some(waiting) = pending.as_mut() {
                                waiting.remove(&name);
                            }
                        }
                    }
                    WatchEvent::ServiceFailed(position, name, err) => {
                        let dc = dcs.get(position).and_then(|d| d.name.clone()).unwrap_or_default();
                        tracing::warn!(service = %name, datacenter = %dc, error = %err, "consul health watch failed; keeping the last good list");
                        let _ = out.send(RegistryEvent::Error(format!("{name}: {err}"))).await;
                    }
                }
                for name in touched {
                    let merged: Vec<Endpoint> = dcs
                        .iter()
                        .filter_map(|d| d.instances.get(&name))
                        .flatten()
                        .cloned()
                        .collect();
                    let now = if merged.is_empty() { None } else { Some(merged) };
                    if services.get(&name) != now.as_ref() {
                        match now {
                            Some(list) => services.insert(name.clone(), list),
                            None => services.remove(&name),
                        };
                        changed.insert(name);
                        dirty = true;
                    }
                }
                if !synced && pending.as_ref().is_some_and(BTreeSet::is_empty) {
                    synced = true;
                    pending = None;
                    dirty = true;
                    tracing::info!(services = services.len(), "consul initial sync complete");
                }
                if synced && dirty && publish_at.is_none() {
                    let now = tokio::time::Instant::now();
                    let earliest = last_publish.map_or(now, |t| t + client.options.coalesce);
                    publish_at = Some(earliest.max(now));
                }
            }
        }
    }
    for dc in &dcs {
        dc.catalog.abort();
        for handle in dc.watches.values() {
            handle.abort();
        }
    }
    if let Some((tx, saving)) = saver {
        if save_at.is_some() {
            let _ = tx.send(Registry { services }).await;
        }
        // Let a save in progress finish (a half-written file is never renamed into place).
        drop(tx);
        let _ = saving.await;
    }
}

/// One watched datacenter in the sync loop.
struct Dc {
    /// `None`: the agent's own.
    name: Option<String>,
    catalog: JoinHandle<()>,
    /// One health watch per service in this datacenter's catalog.
    watches: HashMap<String, JoinHandle<()>>,
    /// The last good instances per service here (a service with no usable instance while
    /// another datacenter has some is absent).
    instances: BTreeMap<String, Vec<Endpoint>>,
}
