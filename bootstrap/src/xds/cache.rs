//! The snapshot cache: immutable, consistency-checked resource sets per Envoy node, versioned by
//! a hash of their content (the go-control-plane `SnapshotCache` model). No gRPC types here: the
//! ADS handler reads snapshots and is woken through a generation counter.
//!
//! Scale: resources and whole per-type sets are shared (`Arc`) between snapshots, and a set's
//! version is the sum of its resources' digests, so [`Snapshot::with_updates`] changing one
//! service's endpoints re-hashes and re-checks only that resource (copying the changed type's
//! name index, not the resources).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// The xDS resource types served over ADS, in the order Envoy needs them (CDS before EDS,
/// LDS before RDS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
}

impl ResourceType {
    /// Every type, in sending order.
    pub const ALL: [ResourceType; 4] = [Self::Cluster, Self::Endpoint, Self::Listener, Self::Route];

    /// The `type_url` of this type's resources and discovery messages.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The type for a `type_url`, `None` for types this server does not serve.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name for logs and the status endpoint (`cds`, `eds`, `lds`, `rds`).
    pub fn short(self) -> &'static str {
        match self {
            Self::Cluster => "cds",
            Self::Endpoint => "eds",
            Self::Listener => "lds",
            Self::Route => "rds",
        }
    }

    /// Whether Envoy subscribes to all resources of this type (empty names = wildcard).
    pub fn is_wildcard(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }

    /// The type a resource of this type refers to by name, if any.
    fn referenced(self) -> Option<ResourceType> {
        match self {
            Self::Cluster => Some(Self::Endpoint),
            Self::Listener => Some(Self::Route),
            Self::Route => Some(Self::Cluster),
            Self::Endpoint => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Cluster => 0,
            Self::Endpoint => 1,
            Self::Listener => 2,
            Self::Route => 3,
        }
    }
}

/// One named resource, encoded, with the names of the resources it depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource name (cluster name, listener name, ...).
    pub name: String,
    /// The encoded resource.
    pub body: Any,
    /// Names this resource refers to: a cluster's EDS name, a listener's route configuration,
    /// a route configuration's clusters.
    pub refs: Vec<String>,
}

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A resource was given with another type's `type_url`.
    #[error("{kind} resource {name:?} has type_url {found:?}")]
    WrongType {
        /// The set it was given in.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The type_url it carries.
        found: String,
    },
    /// Two resources of one type share a name.
    #[error("duplicate {kind} resource {name:?}")]
    Duplicate {
        /// The type.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A resource refers to a resource that is not in the snapshot.
    #[error("{kind} resource {name:?} refers to missing {target_kind} resource {target:?}")]
    Dangling {
        /// The referring resource's type.
        kind: &'static str,
        /// The referring resource.
        name: String,
        /// The missing resource's type.
        target_kind: &'static str,
        /// The missing resource's name.
        target: String,
    },
}

/// The resources of one type and their content-hash version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    version: String,
    /// Sum (mod 2^64) of the resources' digests; the version is its hex form.
    digest_sum: u64,
    /// Each resource with its digest.
    resources: BTreeMap<String, (Arc<Resource>, u64)>,
}

impl ResourceSet {
    /// The content-hash version: 16 hex digits of the sum of each resource's digest (SHA-256
    /// over its name, type URL and bytes), so one resource's change is O(1) to re-version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether the set has no resources.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Resource names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// The resource named `name`.
    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.resources.get(name).map(|(r, _)| &**r)
    }

    /// The resource named `name` and its digest (a delta xDS resource version).
    pub fn get_with_digest(&self, name: &str) -> Option<(&Resource, u64)> {
        self.resources.get(name).map(|(r, d)| (&**r, *d))
    }

    /// Every resource with its digest, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&Resource, u64)> {
        self.resources.values().map(|(r, d)| (&**r, *d))
    }

    /// Adds or replaces `resource`, keeping the version in step.
    fn put(&mut self, resource: Resource) {
        let digest = resource_digest(&resource);
        self.digest_sum = self.digest_sum.wrapping_add(digest);
        if let Some((_, old)) = self
            .resources
            .insert(resource.name.clone(), (Arc::new(resource), digest))
        {
            self.digest_sum = self.digest_sum.wrapping_sub(old);
        }
        self.version = format!("{:016x}", self.digest_sum);
    }
}

/// A consistent set of resources for one node: every reference resolves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    sets: [Arc<ResourceSet>; 4],
}

fn check_type(kind: ResourceType, resource: &Resource) -> Result<(), SnapshotError> {
    if resource.body.type_url == kind.type_url() {
        Ok(())
    } else {
        Err(SnapshotError::WrongType {
            kind: kind.short(),
            name: resource.name.clone(),
            found: resource.body.type_url.clone(),
        })
    }
}

impl Snapshot {
    /// Builds a snapshot, computing versions and checking consistency: no duplicate names, every
    /// resource of the right type, every cluster's EDS name, listener's route configuration and
    /// route's cluster present.
    pub fn try_new(
        clusters: Vec<Resource>,
        endpoints: Vec<Resource>,
        listeners: Vec<Resource>,
        routes: Vec<Resource>,
    ) -> Result<Self, SnapshotError> {
        let mut sets: [Arc<ResourceSet>; 4] = Default::default();
        for (kind, list) in ResourceType::ALL
            .into_iter()
            .zip([clusters, endpoints, listeners, routes])
        {
            let mut set = ResourceSet::default();
            for resource in list {
                check_type(kind, &resource)?;
                if set.resources.contains_key(&resource.name) {
                    return Err(SnapshotError::Duplicate {
                        kind: kind.short(),
                        name: resource.name,
                    });
                }
                set.put(resource);
            }
            set.version = format!("{:016x}", set.digest_sum);
            sets[kind.index()] = Arc::new(set);
        }
        let snapshot = Self { sets };
        snapshot.check_references()?;
        Ok(snapshot)
    }

    /// This snapshot with `updates` (resources of `kind`) added or replacing the resources of
    /// the same name; every other type's set is shared, not copied. Only the updated
    /// resources are hashed and checked: their type, and that what they refer to exists.
    /// Nothing is removed, so no other resource's reference can dangle.
    pub fn with_updates(
        &self,
        kind: ResourceType,
        updates: Vec<Resource>,
    ) -> Result<Self, SnapshotError> {
        let targets = kind.referenced().map(|t| self.set(t));
        let mut seen = std::collections::BTreeSet::new();
        for resource in &updates {
            check_type(kind, resource)?;
            if !seen.insert(resource.name.as_str()) {
                return Err(SnapshotError::Duplicate {
                    kind: kind.short(),
                    name: resource.name.clone(),
                });
            }
            if let Some((target_kind, targets)) = kind.referenced().zip(targets) {
                if let Some(missing) = resource.refs.iter().find(|r| targets.get(r).is_none()) {
                    return Err(SnapshotError::Dangling {
                        kind: kind.short(),
                        name: resource.name.clone(),
                        target_kind: target_kind.short(),
                        target: missing.clone(),
                    });
                }
            }
        }
        let mut next = self.clone();
        let set = Arc::make_mut(&mut next.sets[kind.index()]);
        for resource in updates {
            set.put(resource);
        }
        Ok(next)
    }

    fn check_references(&self) -> Result<(), SnapshotError> {
        for kind in ResourceType::ALL {
            let Some(target_kind) = kind.referenced() else {
                continue;
            };
            let targets = self.set(target_kind);
            for (resource, _) in self.set(kind).resources.values() {
                if let Some(missing) = resource.refs.iter().find(|r| targets.get(r).is_none()) {
                    return Err(SnapshotError::Dangling {
                        kind: kind.short(),
                        name: resource.name.clone(),
                        target_kind: target_kind.short(),
                        target: missing.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The resources of one type.
    pub fn set(&self, kind: ResourceType) -> &ResourceSet {
        &self.sets[kind.index()]
    }

    /// The version of one type's resources.
    pub fn version(&self, kind: ResourceType) -> &str {
        self.set(kind).version()
    }

    /// The resources a subscription asks for: all of them for an empty (wildcard) or `*` list,
    /// else the named ones that exist, in name order.
    pub fn select(&self, kind: ResourceType, names: &[String]) -> Vec<&Resource> {
        let set = self.set(kind);
        if names.is_empty() || names.iter().any(|n| n == "*") {
            set.resources.values().map(|(r, _)| &**r).collect()
        } else {
            let mut sorted: Vec<&String> = names.iter().collect();
            sorted.sort();
            sorted.dedup();
            sorted.into_iter().filter_map(|n| set.get(n)).collect()
        }
    }
}

/// The first 8 bytes of SHA-256 over a resource's name, type URL and encoded bytes (each
/// length-prefixed).
fn resource_digest(resource: &Resource) -> u64 {
    let mut hasher = Sha256::new();
    for part in [
        resource.name.as_bytes(),
        resource.body.type_url.as_bytes(),
        &resource.body.value,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Snapshots by node id, with a default for nodes that have none of their own. Every change
/// bumps a generation that stream tasks watch.
#[derive(Debug)]
pub struct SnapshotCache {
    inner: Mutex<CacheInner>,
    generation: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct CacheInner {
    default: Option<Arc<Snapshot>>,
    nodes: HashMap<String, Arc<Snapshot>>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotCache {
    /// An empty cache: nodes get no resources until a snapshot is set.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(CacheInner::default()),
            generation: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Sets the snapshot served to nodes without their own.
    pub fn set_default(&self, snapshot: Snapshot) {
        self.lock().default = Some(Arc::new(snapshot));
        self.bump();
    }

    /// Sets the snapshot of node `node_id` (takes precedence over the default).
    pub fn set_node(&self, node_id: &str, snapshot: Snapshot) {
        self.lock()
            .nodes
            .insert(node_id.to_string(), Arc::new(snapshot));
        self.bump();
    }

    /// Removes node `node_id`'s own snapshot; it falls back to the default.
    pub fn clear_node(&self, node_id: &str) {
        self.lock().nodes.remove(node_id);
        self.bump();
    }

    /// The snapshot node `node_id` is served, if any.
    pub fn snapshot_for(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        let inner = self.lock();
        inner.nodes.get(node_id).or(inner.default.as_ref()).cloned()
    }

    /// The default snapshot, if set.
    pub fn default_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.lock().default.clone()
    }

    /// A receiver that changes whenever any snapshot is set or cleared.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    pub(crate) fn res(kind: ResourceType, name: &str, bytes: &[u8], refs: &[&str]) -> Resource {
        Resource {
            name: name.to_string(),
            body: Any {
                type_url: kind.type_url().to_string(),
                value: bytes.to_vec(),
            },
            refs: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn consistent(cluster_bytes: &[u8]) -> Snapshot {
        Snapshot::try_new(
            vec![res(ResourceType::Cluster, "a", cluster_bytes, &["a"])],
            vec![res(ResourceType::Endpoint, "a", b"e", &[])],
            vec![res(ResourceType::Listener, "main", b"l", &["routes"])],
            vec![res(ResourceType::Route, "routes", b"r", &["a"])],
        )
        .unwrap()
    }

    #[test]
    fn versions_depend_only_on_content() {
        let one = consistent(b"c1");
        let again = consistent(b"c1");
        let changed = consistent(b"c2");
        assert_eq!(
            one.version(ResourceType::Cluster),
            again.version(ResourceType::Cluster)
        );
        assert_ne!(
            one.version(ResourceType::Cluster),
            changed.version(ResourceType::Cluster)
        );
        assert_eq!(
            one.version(ResourceType::Route),
            changed.version(ResourceType::Route)
        );
        assert_eq!(one.version(ResourceType::Cluster).len(), 16);
    }

    #[test]
    fn rejects_a_cluster_without_endpoints() {
        let err = Snapshot::try_new(
            vec![res(ResourceType::Cluster, "a", b"c", &["a"])],
            vec![],
            vec![],
            vec![],
        )
        .unwrap_err();
        assert!(
            matches!(err, SnapshotError::Dangling { ref target, .. } if target == "a"),
            "{err}"
        );
    }

    #[test]
    fn rejects_routes_to_unknown_clusters_and_listeners_without_routes() {
        let err = Snapshot::try_new(
            vec![],
            vec![],
            vec![],
            vec![res(ResourceType::Route, "r", b"r", &["nope"])],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rds resource \"r\" refers to missing cds resource \"nope\""
        );
        let err = Snapshot::try_new(
            vec![],
            vec![],
            vec![res(ResourceType::Listener, "l", b"l", &["r"])],
            vec![],
        )
        .unwrap_err();
        assert!(
            matches!(err, SnapshotError::Dangling { kind: "lds", .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_duplicates_and_wrong_types() {
        let err = Snapshot::try_new(
            vec![
                res(ResourceType::Cluster, "a", b"1", &[]),
                res(ResourceType::Cluster, "a", b"2", &[]),
            ],
            vec![],
            vec![],
            vec![],
        )
        .unwrap_err();
        assert!(matches!(err, SnapshotError::Duplicate { .. }), "{err}");
        let err = Snapshot::try_new(
            vec![res(ResourceType::Route, "a", b"1", &[])],
            vec![],
            vec![],
            vec![],
        )
        .unwrap_err();
        assert!(matches!(err, SnapshotError::WrongType { .. }), "{err}");
    }

    #[test]
    fn select_returns_all_for_wildcards_and_only_known_names_otherwise() {
        let snap = consistent(b"c");
        assert_eq!(snap.select(ResourceType::Cluster, &[]).len(), 1);
        assert_eq!(snap.select(ResourceType::Cluster, &["*".into()]).len(), 1);
        let named = snap.select(
            ResourceType::Endpoint,
            &["a".into(), "zz".into(), "a".into()],
        );
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].name, "a");
    }

    #[test]
    fn an_incremental_update_equals_a_rebuild_and_moves_only_its_types_version() {
        let before = consistent(b"c");
        let updated = before
            .with_updates(
                ResourceType::Endpoint,
                vec![res(ResourceType::Endpoint, "a", b"e2", &[])],
            )
            .unwrap();
        let rebuilt = Snapshot::try_new(
            vec![res(ResourceType::Cluster, "a", b"c", &["a"])],
            vec![res(ResourceType::Endpoint, "a", b"e2", &[])],
            vec![res(ResourceType::Listener, "main", b"l", &["routes"])],
            vec![res(ResourceType::Route, "routes", b"r", &["a"])],
        )
        .unwrap();
        assert_eq!(updated, rebuilt);
        for kind in ResourceType::ALL {
            assert_eq!(updated.version(kind), rebuilt.version(kind), "{kind:?}");
        }
        assert_ne!(
            updated.version(ResourceType::Endpoint),
            before.version(ResourceType::Endpoint)
        );
        assert_eq!(
            updated.version(ResourceType::Cluster),
            before.version(ResourceType::Cluster)
        );
        assert!(
            Arc::ptr_eq(
                &updated.sets[ResourceType::Cluster.index()],
                &before.sets[ResourceType::Cluster.index()]
            ),
            "untouched sets are shared"
        );
        // Updating back restores the old version: it depends only on content.
        let back = updated
            .with_updates(
                ResourceType::Endpoint,
                vec![res(ResourceType::Endpoint, "a", b"e", &[])],
            )
            .unwrap();
        assert_eq!(
            back.version(ResourceType::Endpoint),
            before.version(ResourceType::Endpoint)
        );
    }

    #[test]
    fn an_incremental_update_is_checked() {
        let snap = consistent(b"c");
        let err = snap
            .with_updates(
                ResourceType::Cluster,
                vec![res(ResourceType::Cluster, "b", b"c", &["nope"])],
            )
            .unwrap_err();
        assert!(
            matches!(err, SnapshotError::Dangling { ref target, .. } if target == "nope"),
            "{err}"
        );
        let err = snap
            .with_updates(
                ResourceType::Endpoint,
                vec![res(ResourceType::Cluster, "a", b"c", &[])],
            )
            .unwrap_err();
        assert!(matches!(err, SnapshotError::WrongType { .. }), "{err}");
        let err = snap
            .with_updates(
                ResourceType::Endpoint,
                vec![
                    res(ResourceType::Endpoint, "a", b"1", &[]),
                    res(ResourceType::Endpoint, "a", b"2", &[]),
                ],
            )
            .unwrap_err();
        assert!(matches!(err, SnapshotError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn node_snapshots_override_the_default_and_bump_the_generation() {
        let cache = SnapshotCache::new();
        let rx = cache.subscribe();
        assert!(cache.snapshot_for("n1").is_none());
        cache.set_default(consistent(b"default"));
        cache.set_node("n1", consistent(b"own"));
        assert_eq!(*rx.borrow(), 2);
        let own = cache.snapshot_for("n1").unwrap();
        let other = cache.snapshot_for("n2").unwrap();
        assert_ne!(
            own.version(ResourceType::Cluster),
            other.version(ResourceType::Cluster)
        );
        cache.clear_node("n1");
        assert_eq!(
            cache
                .snapshot_for("n1")
                .unwrap()
                .version(ResourceType::Cluster),
            other.version(ResourceType::Cluster)
        );
    }
}
