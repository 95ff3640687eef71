//! `meshguard run`: watches the registry and the rules, converts them into a snapshot on every
//! change, and serves it over ADS; a status endpoint shows registry age, versions and NACKs.
//! A registry or rules update that fails to load or convert is rejected and the last good
//! state stays live; nothing is published before the registry was read once.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::convert::ConvertOptions;
use crate::registry::consul::{self, ConsulOptions};
use crate::registry::file;
use crate::registry::{Registry, RegistryEvent};
use crate::rules::{self, Rules};
use crate::status;
use crate::xds::ads::{AdsServer, XdsStatus};
use crate::xds::cache::{Resource, ResourceType, SnapshotCache};

/// Where the registry comes from.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "built once at start-up; boxing would only complicate callers"
)]
pub enum RegistrySource {
    /// `file:PATH`: a YAML/JSON file, reloaded on change.
    File(PathBuf),
    /// `consul://HOST:PORT[?dc=DC1,DC2]`: a Consul agent, watched with blocking queries (in
    /// each listed datacenter).
    Consul(ConsulOptions),
}

impl RegistrySource {
    /// Parses `file:PATH` or `consul://HOST:PORT[?dc=DC1,DC2]` (Consul with default options;
    /// `dc` lists the datacenters in failover order, the first being the local one).
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                bail!("--registry file: needs a path");
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("consul://") {
            let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
            let authority = authority.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                bail!("--registry consul://HOST:PORT[?dc=DC1,DC2], got {text:?}");
            }
            let mut options = ConsulOptions::new(authority);
            options
                .apply_query(query)
                .map_err(|e| anyhow::anyhow!("--registry {text:?}: {e}"))?;
            return Ok(Self::Consul(options));
        }
        bail!("unsupported --registry {text:?}: expected file:PATH or consul://HOST:PORT[?dc=DC1,DC2]")
    }

    fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("file:{}", path.display()),
            Self::Consul(options) => options.describe(),
        }
    }
}

/// Where the rules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesSource {
    /// A YAML or JSON file, reloaded on change.
    File(PathBuf),
    /// `consul-kv:KEY`: a Consul KV value, watched with blocking queries on the registry's
    /// Consul agent (so the configuration center is the registry itself).
    ConsulKv(String),
}

impl RulesSource {
    /// `consul-kv:KEY`, else a file path.
    pub fn parse(text: &str) -> Self {
        match text.strip_prefix("consul-kv:") {
            Some(key) => Self::ConsulKv(key.trim_matches('/').to_string()),
            None => Self::File(PathBuf::from(text)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::ConsulKv(key) => format!("consul-kv:{key}"),
        }
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The registry.
    pub registry: RegistrySource,
    /// The rules, if any.
    pub rules: Option<RulesSource>,
    /// Address of the ADS gRPC server.
    pub xds: SocketAddr,
    /// Address of the status endpoint.
    pub admin: SocketAddr,
    /// Conversion settings (Envoy listener address, wasm directory).
    pub convert: ConvertOptions,
    /// How often the rules file (and a file registry) is checked for changes (at least 50 ms).
    pub poll_interval: Duration,
}

/// The live state the status endpoint reports.
#[derive(Debug, Default)]
pub(crate) struct Live {
    registry: Option<Registry>,
    registry_origin: Option<&'static str>,
    registry_changed_at: Option<SystemTime>,
    registry_checked_at: Option<Instant>,
    registry_error: Option<String>,
    rules: Rules,
    rules_loaded_at: Option<SystemTime>,
    rules_error: Option<String>,
    snapshot_error: Option<String>,
    publishes: u64,
    /// The default snapshot was fully built from the live rules and registry (the last full
    /// publication succeeded), so a service's endpoint change may update it in place.
    incremental_base: bool,
}

/// Shared between the watch loop and the status endpoint.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) live: Mutex<Live>,
    pub(crate) cache: Arc<SnapshotCache>,
    pub(crate) xds: Arc<XdsStatus>,
    pub(crate) stale_after: Duration,
    pub(crate) registry_source: String,
    pub(crate) rules_source: Option<String>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live registry (`null` before the first load).
    pub(crate) fn registry_json(&self) -> serde_json::Value {
        let live = self.live();
        json!({
            "origin": live.registry_origin,
            "registry": live.registry,
        })
    }

    /// The status document.
    pub(crate) fn status_json(&self) -> serde_json::Value {
        let live = self.live();
        let age_ms = live
            .registry_checked_at
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        let stale_after = self.stale_after;
        let stale = live.registry_error.is_some()
            || live
                .registry_checked_at
                .is_none_or(|t| t.elapsed() > stale_after);
        let snapshot = self.cache.default_snapshot();
        let versions: serde_json::Map<String, serde_json::Value> = ResourceType::ALL
            .into_iter()
            .map(|t| {
                (
                    t.short().to_string(),
                    snapshot.as_ref().map_or(
                        serde_json::Value::Null,
                        |s| json!({"version": s.version(t), "resources": s.set(t).len()}),
                    ),
                )
            })
            .collect();
        json!({
            "registry": {
                "source": self.registry_source,
                "loaded": live.registry.is_some(),
                "origin": live.registry_origin,
                "services": live.registry.as_ref().map_or(0, |r| r.services.len()),
                "instances": live.registry.as_ref().map_or(0, Registry::instance_count),
                "changed_at_unix_ms": live.registry_changed_at.map(unix_ms),
                "age_ms": age_ms,
                "stale": stale,
                "last_error": live.registry_error,
            },
            "rules": {
                "source": self.rules_source,
                "services": live.rules.services.len(),
                "loaded_at_unix_ms": live.rules_loaded_at.map(unix_ms),
                "last_error": live.rules_error,
            },
            "snapshot": {
                "published": live.publishes,
                "last_error": live.snapshot_error,
                "versions": versions,
            },
            "nacks": self.xds.nack_total(),
            "nodes": self.xds.nodes(),
        })
    }
}

/// A file checked for changes by modification time and size.
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
}

impl Watched {
    fn changed(&mut self) -> std::io::Result<bool> {
        let meta = std::fs::metadata(&self.path)?;
        let fingerprint = (meta.modified().unwrap_or(UNIX_EPOCH), meta.len());
        let changed = self.seen != Some(fingerprint);
        self.seen = Some(fingerprint);
        Ok(changed)
    }
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if matches!(
        (&options.rules, &options.registry),
        (Some(RulesSource::ConsulKv(_)), RegistrySource::File(_))
    ) {
        bail!("--rules consul-kv:KEY needs --registry consul://HOST:PORT");
    }
    let poll_interval = options.poll_interval.max(Duration::from_millis(50));
    let stale_after = match &options.registry {
        RegistrySource::File(_) => poll_interval.saturating_mul(3).max(Duration::from_secs(1)),
        RegistrySource::Consul(consul) => consul.stale_after(),
    };
    let shared = Arc::new(Shared {
        live: Mutex::new(Live::default()),
        cache: Arc::new(SnapshotCache::new()),
        xds: Arc::new(XdsStatus::default()),
        stale_after,
        registry_source: options.registry.describe(),
        rules_source: options.rules.as_ref().map(RulesSource::describe),
    });
    let xds_listener = TcpListener::bind(options.xds)
        .await
        .with_context(|| format!("bind the xDS server on {}", options.xds))?;
    let admin_listener = TcpListener::bind(options.admin)
        .await
        .with_context(|| format!("bind the status endpoint on {}", options.admin))?;
    tracing::info!(
        xds = %xds_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        registry = %shared.registry_source,
        "meshguard control plane started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let ads = AdsServer::new(Arc::clone(&shared.cache), Arc::clone(&shared.xds));
    let mut grpc_stop = stop_rx.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(xds_listener),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                },
            ),
    );
    let admin = tokio::spawn(status::serve(
        admin_listener,
        Arc::clone(&shared),
        stop_rx.clone(),
    ));
    let (events_tx, mut events) = tokio::sync::mpsc::channel(64);
    let source = match options.registry.clone() {
        RegistrySource::File(path) => {
            tokio::spawn(file::run(path, poll_interval, events_tx, stop_rx.clone()))
        }
        RegistrySource::Consul(consul) => {
            tokio::spawn(consul::run(consul, events_tx, stop_rx.clone()))
        }
    };

    let mut rules_file = None;
    let mut kv = None;
    match (&options.rules, &options.registry) {
        (Some(RulesSource::File(path)), _) => {
            rules_file = Some(Watched {
                path: path.clone(),
                seen: None,
            });
        }
        (Some(RulesSource::ConsulKv(key)), RegistrySource::Consul(consul)) => {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tokio::spawn(consul::watch_kv(
                consul.clone(),
                key.clone(),
                tx,
                stop_rx.clone(),
            ));
            kv = Some((rx, None::<String>));
        }
        (Some(RulesSource::ConsulKv(_)), RegistrySource::File(_)) | (None, _) => {}
    }
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failure = None;
    loop {
        let changed = tokio::select! {
            () = &mut shutdown => break,
            event = events.recv() => match event {
                Some(event) => on_registry_event(&shared, event),
                None => {
                    failure = Some("the registry source stopped");
                    break;
                }
            },
            _ = ticker.tick() => match rules_file.as_mut() {
                Some(watched) => poll_rules(&shared, watched).into(),
                None => Change::None,
            },
            Some(value) = async {
                match kv.as_mut() {
                    Some((rx, _)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match (value, kv.as_mut()) {
                (Ok(text), Some((_, last))) if last.as_deref() == Some(text.as_str()) => Change::None,
                (Ok(text), Some((_, last))) => {
                    *last = Some(text.clone());
                    let source = shared.rules_source.clone().unwrap_or_default();
                    apply_rules(&shared, rules::parse(&source, &text)).into()
                }
                (Ok(_), None) => Change::None,
                (Err(message), _) => {
                    let mut live = shared.live();
                    if live.rules_error.as_deref() != Some(&message) {
                        tracing::warn!(error = %message, "rules unreadable; keeping the last good rules");
                    }
                    live.rules_error = Some(message);
                    Change::None
                }
            },
        };
        match changed {
            Change::None => {}
            Change::Full => publish(&shared, &options.convert),
            Change::Services(names) => publish_services(&shared, &options.convert, &names),
        }
    }
    tracing::info!("meshguard control plane stopping");
    let _ = stop_tx.send(true);
    source.await.context("join the registry source")?;
    grpc.await
        .context("join the xDS server")?
        .context("xDS server")?;
    admin.await.context("join the status endpoint")?;
    match failure {
        Some(reason) => bail!("{reason}"),
        None => Ok(()),
    }
}

/// What a change requires of the snapshot.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Nothing changed.
    None,
    /// Rebuild it (rules, the set of services, or a whole new registry changed).
    Full,
    /// Only these services' instances changed: update their endpoints.
    Services(BTreeSet<String>),
}

impl From<bool> for Change {
    fn from(changed: bool) -> Self {
        if changed {
            Self::Full
        } else {
            Self::None
        }
    }
}

/// Applies a registry event and says what it requires.
fn on_registry_event(shared: &Shared, event: RegistryEvent) -> Change {
    let mut live = shared.live();
    match event {
        RegistryEvent::Changed { services, origin } => {
            live.registry_checked_at = Some(Instant::now());
            live.registry_error = None;
            let Some(registry) = live.registry.as_mut() else {
                tracing::warn!(
                    origin,
                    "a registry change without a registry to apply it to"
                );
                return Change::None;
            };
            let mut names = BTreeSet::new();
            let mut reshaped = false;
            for (name, instances) in services {
                match (registry.services.get_mut(&name), instances) {
                    (Some(current), Some(list)) if *current == list => {}
                    (Some(current), Some(list)) => {
                        *current = list;
                        names.insert(name);
                    }
                    (None, Some(list)) => {
                        registry.services.insert(name.clone(), list);
                        names.insert(name);
                        reshaped = true;
                    }
                    (Some(_), None) => {
                        registry.services.remove(&name);
                        names.insert(name);
                        reshaped = true;
                    }
                    (None, None) => {}
                }
            }
            live.registry_origin = Some(origin);
            if names.is_empty() {
                return Change::None;
            }
            live.registry_changed_at = Some(SystemTime::now());
            tracing::debug!(origin, services = names.len(), reshaped, "registry changed");
            if reshaped {
                Change::Full
            } else {
                Change::Services(names)
            }
        }
        RegistryEvent::Update { registry, origin } => {
            live.registry_checked_at = Some(Instant::now());
            live.registry_error = None;
            let changed = live.registry.as_ref() != Some(&registry);
            if changed {
                tracing::info!(
                    origin,
                    services = registry.services.len(),
                    instances = registry.instance_count(),
                    "registry loaded"
                );
                live.registry = Some(registry);
                live.registry_changed_at = Some(SystemTime::now());
            }
            live.registry_origin = Some(origin);
            changed.into()
        }
        RegistryEvent::Alive => {
            live.registry_checked_at = Some(Instant::now());
            live.registry_error = None;
            Change::None
        }
        RegistryEvent::Error(message) => {
            if live.registry_error.as_deref() != Some(&message) {
                tracing::warn!(error = %message, "registry update failed; keeping the last good registry");
            }
            live.registry_error = Some(message);
            Change::None
        }
    }
}

fn poll_rules(shared: &Shared, watched: &mut Watched) -> bool {
    match watched.changed() {
        Ok(false) => return false,
        Ok(true) => {}
        Err(err) => {
            let message = format!("{}: {err}", watched.path.display());
            let mut live = shared.live();
            if live.rules_error.as_deref() != Some(&message) {
                tracing::warn!(error = %message, "rules unreadable; keeping the last good rules");
            }
            live.rules_error = Some(message);
            return false;
        }
    }
    apply_rules(shared, rules::load(&watched.path))
}

/// Makes valid rules live; keeps the last good ones otherwise. True when they changed.
fn apply_rules(shared: &Shared, loaded: Result<Rules, rules::RuleErrors>) -> bool {
    let mut live = shared.live();
    match loaded {
        Ok(new) => {
            tracing::info!(services = new.services.len(), "rules loaded");
            let changed = live.rules != new || live.rules_loaded_at.is_none();
            live.rules = new;
            live.rules_loaded_at = Some(SystemTime::now());
            live.rules_error = None;
            changed
        }
        Err(errors) => {
            tracing::warn!(errors = %errors, "rules update rejected; keeping the last good rules");
            live.rules_error = Some(errors.to_string());
            false
        }
    }
}

fn publish(shared: &Shared, options: &ConvertOptions) {
    let mut live = shared.live();
    let Some(registry) = live.registry.as_ref() else {
        return;
    };
    if shared.rules_source.is_some() && live.rules_loaded_at.is_none() {
        // Publishing without the rules would run services without their limits and breakers.
        live.snapshot_error = Some("waiting for valid rules".to_string());
        return;
    }
    match crate::registry::eds::snapshot(registry, &live.rules, options) {
        Ok(snapshot) => {
            tracing::info!(
                cds = snapshot.version(ResourceType::Cluster),
                eds = snapshot.version(ResourceType::Endpoint),
                lds = snapshot.version(ResourceType::Listener),
                rds = snapshot.version(ResourceType::Route),
                "snapshot published"
            );
            shared.cache.set_default(snapshot);
            live.publishes += 1;
            live.snapshot_error = None;
            live.incremental_base = true;
        }
        Err(err) => {
            tracing::warn!(error = %err, "snapshot rejected; Envoy keeps the last good one");
            live.snapshot_error = Some(err.to_string());
            live.incremental_base = false;
        }
    }
}

/// Publishes a change of `names`' instances by re-encoding only their EDS resources on top of
/// the live snapshot (O(changed services), see `Snapshot::with_updates`); falls back to a full
/// rebuild when the live snapshot is not a full build of the current rules and registry.
fn publish_services(shared: &Shared, options: &ConvertOptions, names: &BTreeSet<String>) {
    let live = shared.live();
    let base = match (live.incremental_base, live.registry.as_ref()) {
        (true, Some(registry)) => shared
            .cache
            .default_snapshot()
            .filter(|base| {
                let eds = base.set(ResourceType::Endpoint);
                names.iter().all(|n| eds.get(n).is_some())
            })
            .map(|base| (base, registry)),
        _ => None,
    };
    let Some((base, registry)) = base else {
        drop(live);
        return publish(shared, options);
    };
    let updates: Vec<Resource> = names
        .iter()
        .map(|name| {
            let instances = registry.services.get(name).map_or(&[][..], Vec::as_slice);
            crate::registry::eds::endpoint_resource(name, instances)
        })
        .collect();
    match base.with_updates(ResourceType::Endpoint, updates) {
        Ok(snapshot) => {
            tracing::info!(
                eds = snapshot.version(ResourceType::Endpoint),
                services = names.len(),
                "snapshot endpoints updated"
            );
            shared.cache.set_default(snapshot);
            let mut live = live;
            live.publishes += 1;
            live.snapshot_error = None;
        }
        Err(err) => {
            tracing::warn!(error = %err, "incremental update rejected; rebuilding the snapshot");
            drop(live);
            publish(shared, options);
        }
    }
}

/// A control plane running on its own thread and runtime, stopped and joined on drop (for the
/// demo and embedding).
#[derive(Debug)]
pub struct ControlPlane {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ControlPlane {
    /// Starts `run(options)` on a new thread.
    pub fn start(options: RunOptions) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("start the tokio runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("meshguard".into())
            .spawn(move || {
                runtime.block_on(run(options, async move {
                    let _ = stopped.await;
                }))
            })
            .context("spawn the control plane thread")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the control plane and returns how its run ended.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the control plane thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::warn!(error = %err, "control plane stopped with an error");
        }
    }
}

/// The default directory of the filters' wasm modules, relative to the working directory.
pub fn default_wasm_dir() -> &'static Path {
    Path::new("target/wasm32-wasip1/wasm")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::convert;
    use crate::registry::Endpoint;

    fn shared() -> Shared {
        Shared {
            live: Mutex::new(Live::default()),
            cache: Arc::new(SnapshotCache::new()),
            xds: Arc::new(XdsStatus::default()),
            stale_after: Duration::from_secs(1),
            registry_source: "test".to_string(),
            rules_source: None,
        }
    }

    fn options() -> ConvertOptions {
        ConvertOptions {
            listen: "127.0.0.1:10000".parse().unwrap(),
            wasm_dir: PathBuf::from("/nonexistent"),
        }
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::new("10.0.0.1", port)
    }

    fn changed(name: &str, instances: Option<Vec<Endpoint>>) -> RegistryEvent {
        RegistryEvent::Changed {
            services: BTreeMap::from([(name.to_string(), instances)]),
            origin: "consul",
        }
    }

    /// A published registry of `a` and `b`.
    fn started() -> (Shared, Registry) {
        let shared = shared();
        let mut registry = Registry::default();
        registry.services.insert("a".into(), vec![ep(1)]);
        registry.services.insert("b".into(), vec![ep(2)]);
        let update = RegistryEvent::Update {
            registry: registry.clone(),
            origin: "consul",
        };
        assert_eq!(on_registry_event(&shared, update), Change::Full);
        publish(&shared, &options());
        (shared, registry)
    }

    #[test]
    fn an_instance_change_updates_only_its_services_endpoints_and_equals_a_rebuild() {
        let (shared, mut registry) = started();
        let before = shared.cache.default_snapshot().unwrap();
        let Change::Services(names) =
            on_registry_event(&shared, changed("b", Some(vec![ep(2), ep(3)])))
        else {
            panic!("an instance change of a known service is incremental");
        };
        assert_eq!(names, BTreeSet::from(["b".to_string()]));
        publish_services(&shared, &options(), &names);
        let after = shared.cache.default_snapshot().unwrap();

        registry.services.insert("b".into(), vec![ep(2), ep(3)]);
        let rebuilt = convert::snapshot(&registry, &Rules::default(), &options()).unwrap();
        assert_eq!(*after, rebuilt);
        for kind in [
            ResourceType::Cluster,
            ResourceType::Listener,
            ResourceType::Route,
        ] {
            assert_eq!(after.version(kind), before.version(kind), "{kind:?}");
        }
        assert_ne!(
            after.version(ResourceType::Endpoint),
            before.version(ResourceType::Endpoint)
        );
        assert_eq!(shared.live().publishes, 2);
        assert_eq!(shared.live().registry.as_ref(), Some(&registry));
    }

    #[test]
    fn a_service_appearing_or_leaving_rebuilds_and_no_change_publishes_nothing() {
        let (shared, _) = started();
        assert_eq!(
            on_registry_event(&shared, changed("a", Some(vec![ep(1)]))),
            Change::None
        );
        assert_eq!(
            on_registry_event(&shared, changed("zz", None)),
            Change::None
        );
        assert_eq!(
            on_registry_event(&shared, changed("c", Some(vec![ep(4)]))),
            Change::Full
        );
        assert_eq!(on_registry_event(&shared, changed("a", None)), Change::Full);
        publish(&shared, &options());
        let snapshot = shared.cache.default_snapshot().unwrap();
        let clusters: Vec<&str> = snapshot.set(ResourceType::Cluster).names().collect();
        assert_eq!(clusters, vec!["b", "c"]);
    }

    #[test]
    fn without_a_full_build_to_start_from_an_instance_change_rebuilds() {
        let shared = shared();
        let mut registry = Registry::default();
        registry.services.insert("a".into(), vec![ep(1)]);
        shared.live().registry = Some(registry);
        publish_services(&shared, &options(), &BTreeSet::from(["a".to_string()]));
        let snapshot = shared.cache.default_snapshot().unwrap();
        assert_eq!(snapshot.set(ResourceType::Endpoint).len(), 1);
        assert!(shared.live().incremental_base);
    }
}
