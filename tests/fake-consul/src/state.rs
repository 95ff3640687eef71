//! The fake's state: one catalog (nodes derived from services, services, checks), the KV
//! store and one raft index that every write increases. Responses are rendered from it in
//! Consul's JSON shapes.
//!
//! Like Consul's state store (`agent/consul/state/catalog.go`), reads do not report the raft
//! index itself but the index of the tables they read, so a blocking query wakes only when its
//! own result may have changed:
//! - `/v1/health/service/:s`, `/v1/catalog/service/:s`, `/v1/health/checks/:s`: the service's
//!   own index (Consul's `service.<name>` index entry), moved by a registration,
//!   deregistration or check change of one of its instances. For a service with no instances
//!   Consul answers the index of the last "service extinction" (the last time any service
//!   lost its last instance), else the catalog's services index; so does the fake.
//! - `/v1/catalog/services`: the services table index, moved by registrations and
//!   deregistrations (not by health checks).
//! - `/v1/kv/...`: the KV table index.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::{json, Map, Value};

use crate::model::{Fault, Health, Instance, RecordedRequest};

/// One check of a service.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: Health,
    pub(crate) notes: String,
    pub(crate) output: String,
}

/// A registered service instance with its checks and raft indexes.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) instance: Instance,
    pub(crate) checks: Vec<Check>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

impl Service {
    /// The worst status of the service's checks (passing when there are none).
    fn health(&self) -> Health {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Health::Passing)
    }

    /// The instance as the API user sees it, with the aggregated health.
    pub(crate) fn view(&self) -> Instance {
        Instance {
            health: self.health(),
            ..self.instance.clone()
        }
    }
}

/// One KV entry.
#[derive(Debug, Clone)]
pub(crate) struct KvEntry {
    pub(crate) value: Vec<u8>,
    pub(crate) flags: u64,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// What a blocking query waits on; writes report the keys they touched so only the queries
/// whose answer may have changed are woken. Every key names its datacenter: datacenters are
/// separate clusters, so a write in one never wakes a query of another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum WaitKey {
    /// One service name's instances or checks in a datacenter.
    Service(String, String),
    /// The list of services of a datacenter.
    Catalog(String),
    /// The KV store of a datacenter.
    Kv(String),
}

/// One datacenter's tables and indexes: as in Consul, each datacenter is its own cluster with
/// its own raft index and KV store.
#[derive(Debug)]
pub(crate) struct Dc {
    /// The datacenter's raft index; starts at 1 and grows on every write in it.
    pub(crate) index: u64,
    /// Service ids by service name (so a per-service read does not scan every instance).
    by_name: HashMap<String, BTreeSet<String>>,
    /// Per service name: the highest index of a change to its instances or their checks.
    service_index: HashMap<String, u64>,
    /// The index of the last write that removed a service's last instance (0: none yet).
    extinction_index: u64,
    /// The services table index: the last registration or deregistration.
    pub(crate) services_index: u64,
    /// The KV table index: the last KV write.
    pub(crate) kv_index: u64,
    pub(crate) kv: BTreeMap<String, KvEntry>,
}

impl Dc {
    fn new() -> Dc {
        Dc {
            index: 1,
            by_name: HashMap::new(),
            service_index: HashMap::new(),
            extinction_index: 0,
            services_index: 1,
            kv_index: 1,
            kv: BTreeMap::new(),
        }
    }

    /// Increases the raft index and returns it.
    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// The `X-Consul-Index` of a read about service `name` (never 0).
    fn index_of_service(&self, name: &str) -> u64 {
        match self.service_index.get(name) {
            Some(&index) => index,
            None if self.extinction_index > 0 => self.extinction_index,
            None => self.services_index,
        }
        .max(1)
    }
}

/// A datacenter nothing was ever written to (reads of a served but empty datacenter).
static EMPTY_DC: std::sync::LazyLock<Dc> = std::sync::LazyLock::new(Dc::new);

/// Everything behind the fake's one mutex.
#[derive(Debug)]
pub(crate) struct State {
    /// Services of every datacenter by service id (ids are unique across the fake).
    pub(crate) services: BTreeMap<String, Service>,
    /// Tables and indexes per datacenter, created on the first write.
    dcs: HashMap<String, Dc>,
    /// Keys touched by writes not yet announced to blocked queries.
    pub(crate) touched: Vec<WaitKey>,
    pub(crate) fault: Option<Fault>,
    pub(crate) requests: VecDeque<RecordedRequest>,
    /// Requests received since start (not bounded by `max_recorded_requests`).
    pub(crate) recorded_total: usize,
    /// Bumped by `stop_listening` and on drop: requests of an older epoch are abandoned.
    pub(crate) epoch: u64,
    pub(crate) shutdown: bool,
    /// The agent's own datacenter (instances registered without one go there).
    pub(crate) datacenter: String,
}

impl State {
    pub(crate) fn new(datacenter: &str) -> State {
        State {
            services: BTreeMap::new(),
            dcs: HashMap::new(),
            touched: Vec::new(),
            fault: None,
            requests: VecDeque::new(),
            recorded_total: 0,
            epoch: 0,
            shutdown: false,
            datacenter: datacenter.to_owned(),
        }
    }

    /// Datacenter `dc`'s tables (empty ones when nothing was written there yet).
    pub(crate) fn dc(&self, dc: &str) -> &Dc {
        self.dcs.get(dc).unwrap_or(&EMPTY_DC)
    }

    /// The agent's own datacenter's tables.
    pub(crate) fn local(&self) -> &Dc {
        self.dc(&self.datacenter)
    }

    fn dc_mut(&mut self, dc: &str) -> &mut Dc {
        self.dcs.entry(dc.to_owned()).or_insert_with(Dc::new)
    }

    /// Registers (or replaces) a service with the given checks; returns the new index of its
    /// datacenter.
    pub(crate) fn upsert(&mut self, mut instance: Instance, checks: Vec<Check>) -> u64 {
        if instance.datacenter.is_empty() {
            instance.datacenter = self.datacenter.clone();
        }
        let dc = instance.datacenter.clone();
        let index = self.dc_mut(&dc).bump();
        let id = instance.id.clone();
        let name = instance.service.clone();
        let create_index = self
            .services
            .get(&id)
            .filter(|s| s.instance.datacenter == dc)
            .map_or(index, |s| s.create_index);
        let previous = self.services.insert(
            id.clone(),
            Service {
                instance,
                checks,
                create_index,
                modify_index: index,
            },
        );
        if let Some(old) = previous {
            let (old_dc, old_name) = (old.instance.datacenter, old.instance.service);
            if old_dc != dc {
                // Moved to another datacenter: a deregistration in the old one.
                let old_index = self.dc_mut(&old_dc).bump();
                self.forget_instance(&old_dc, &old_name, &id, old_index);
                self.dc_mut(&old_dc).services_index = old_index;
                self.touched.push(WaitKey::Catalog(old_dc));
            } else if old_name != name {
                self.forget_instance(&dc, &old_name, &id, index);
            }
        }
        self.dc_mut(&dc)
            .by_name
            .entry(name.clone())
            .or_default()
            .insert(id);
        self.touch_service(&dc, &name, index);
        self.dc_mut(&dc).services_index = index;
        self.touched.push(WaitKey::Catalog(dc));
        index
    }

    /// Records a change of service `name` of datacenter `dc` at `index`.
    fn touch_service(&mut self, dc: &str, name: &str, index: u64) {
        self.dc_mut(dc).service_index.insert(name.to_owned(), index);
        self.touched
            .push(WaitKey::Service(dc.to_owned(), name.to_owned()));
    }

    /// Removes instance `id` from service `name`'s ids in `dc`; the service goes extinct
    /// there with its last instance.
    fn forget_instance(&mut self, dc: &str, name: &str, id: &str, index: u64) {
        let tables = self.dc_mut(dc);
        let extinct = match tables.by_name.get_mut(name) {
            Some(ids) => {
                ids.remove(id);
                ids.is_empty()
            }
            None => false,
        };
        if extinct {
            tables.by_name.remove(name);
            tables.service_index.remove(name);
            tables.extinction_index = index;
            self.touched
                .push(WaitKey::Service(dc.to_owned(), name.to_owned()));
        } else {
            self.touch_service(dc, name, index);
        }
    }

    /// The `X-Consul-Index` of a read about service `name` in `dc` (never 0).
    pub(crate) fn index_of_service(&self, dc: &str, name: &str) -> u64 {
        self.dc(dc).index_of_service(name)
    }

    /// Registers `instance` with one service check `service:<id>` in its health.
    pub(crate) fn register(&mut self, instance: Instance) -> u64 {
        let check = Check {
            id: format!("service:{}", instance.id),
            name: format!("Service '{}' check", instance.service),
            status: instance.health,
            notes: String::new(),
            output: String::new(),
        };
        self.upsert(instance, vec![check])
    }

    /// Removes a service; `false` when there was none.
    pub(crate) fn deregister(&mut self, id: &str) -> bool {
        let Some(old) = self.services.remove(id) else {
            return false;
        };
        let dc = old.instance.datacenter;
        let index = self.dc_mut(&dc).bump();
        self.forget_instance(&dc, &old.instance.service, id, index);
        self.dc_mut(&dc).services_index = index;
        self.touched.push(WaitKey::Catalog(dc));
        true
    }

    /// Sets every check of service `id` to `status` (adding `service:<id>` when it has
    /// none); `false` when there is no such service. Bumps the index only on a change.
    pub(crate) fn set_health(&mut self, id: &str, status: Health) -> bool {
        let Some(svc) = self.services.get(id) else {
            return false;
        };
        if !svc.checks.is_empty() && svc.checks.iter().all(|c| c.status == status) {
            return true;
        }
        let dc = svc.instance.datacenter.clone();
        let index = self.dc_mut(&dc).bump();
        if let Some(svc) = self.services.get_mut(id) {
            if svc.checks.is_empty() {
                svc.checks.push(Check {
                    id: format!("service:{id}"),
                    name: format!("Service '{}' check", svc.instance.service),
                    status,
                    notes: String::new(),
                    output: String::new(),
                });
            }
            for c in &mut svc.checks {
                c.status = status;
            }
            svc.instance.health = status;
            svc.modify_index = index;
            let name = svc.instance.service.clone();
            self.touch_service(&dc, &name, index);
        }
        true
    }

    /// Sets the status (and output) of the check `check_id`; `false` when there is none.
    pub(crate) fn set_check(&mut self, check_id: &str, status: Health, output: &str) -> bool {
        let found = self
            .services
            .values()
            .find(|s| s.checks.iter().any(|c| c.id == check_id))
            .map(|s| (s.instance.id.clone(), s.instance.datacenter.clone()));
        let Some((id, dc)) = found else {
            return false;
        };
        let index = self.dc_mut(&dc).bump();
        if let Some(svc) = self.services.get_mut(&id) {
            for c in svc.checks.iter_mut().filter(|c| c.id == check_id) {
                c.status = status;
                c.output = output.to_owned();
            }
            svc.modify_index = index;
            let name = svc.instance.service.clone();
            self.touch_service(&dc, &name, index);
        }
        true
    }

    /// Stores a KV entry in `dc`; returns the new index.
    pub(crate) fn kv_put(&mut self, dc: &str, key: &str, value: &[u8], flags: u64) -> u64 {
        let tables = self.dc_mut(dc);
        let index = tables.bump();
        let create_index = tables.kv.get(key).map_or(index, |e| e.create_index);
        tables.kv.insert(
            key.to_owned(),
            KvEntry {
                value: value.to_vec(),
                flags,
                create_index,
                modify_index: index,
            },
        );
        tables.kv_index = index;
        self.touched.push(WaitKey::Kv(dc.to_owned()));
        index
    }

    /// Deletes `key` in `dc`, or every key under the prefix `key` with `recurse`. Consul
    /// answers `true` either way; the index moves only when something was deleted.
    pub(crate) fn kv_delete(&mut self, dc: &str, key: &str, recurse: bool) {
        let tables = self.dc_mut(dc);
        let before = tables.kv.len();
        if recurse {
            tables.kv.retain(|k, _| !k.starts_with(key));
        } else {
            tables.kv.remove(key);
        }
        if tables.kv.len() != before {
            tables.kv_index = tables.bump();
            self.touched.push(WaitKey::Kv(dc.to_owned()));
        }
    }

    /// The services of `name` in datacenter `dc`, ordered by node then id.
    pub(crate) fn instances_of<'a>(&'a self, dc: &str, name: &str) -> Vec<&'a Service> {
        let mut out: Vec<&Service> = self
            .dc(dc)
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| self.services.get(id))
            .collect();
        out.sort_by(|a, b| {
            (&a.instance.node, &a.instance.id).cmp(&(&b.instance.node, &b.instance.id))
        });
        out
    }

    /// `GET /v1/catalog/services` of `dc`: name → union of tags, over services passing `keep`.
    pub(crate) fn catalog_services(
        &self,
        dc: &str,
        mut keep: impl FnMut(&Service) -> bool,
    ) -> Value {
        let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in self
            .services
            .values()
            .filter(|s| s.instance.datacenter == dc)
            .filter(|s| keep(s))
        {
            let tags = names.entry(&s.instance.service).or_default();
            tags.extend(s.instance.tags.iter().map(String::as_str));
        }
        Value::Object(
            names
                .into_iter()
                .map(|(name, tags)| (name.to_owned(), json!(tags)))
                .collect(),
        )
    }
}

/// A stable, UUID-shaped node ID derived from the node name (FNV-1a).
fn node_id(node: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in node.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    let hex = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8).unwrap_or_default(),
        hex.get(8..12).unwrap_or_default(),
        hex.get(12..16).unwrap_or_default(),
        hex.get(16..20).unwrap_or_default(),
        hex.get(20..32).unwrap_or_default()
    )
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The address a service is reached at: its own, else its node's.
fn effective_address(i: &Instance) -> &str {
    if i.address.is_empty() {
        &i.node_address
    } else {
        &i.address
    }
}

fn node_json(i: &Instance) -> Value {
    json!({
        "ID": node_id(&i.node),
        "Node": i.node,
        "Address": i.node_address,
        "Datacenter": i.datacenter,
        "TaggedAddresses": { "lan": i.node_address, "wan": i.node_address },
        "Meta": { "consul-network-segment": "" },
    })
}

fn service_tagged_addresses(i: &Instance) -> Value {
    let a = effective_address(i);
    json!({
        "lan": { "address": a, "port": i.port },
        "wan": { "address": a, "port": i.port },
    })
}

fn check_json(node: &str, c: &Check, service: Option<&Instance>) -> Value {
    json!({
        "Node": node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": service.map_or("", |s| s.id.as_str()),
        "ServiceName": service.map_or("", |s| s.service.as_str()),
        "ServiceTags": service.map_or(&[][..], |s| s.tags.as_slice()),
        "Namespace": "default",
    })
}

/// The node's own `serfHealth` check (always passing: the fake's nodes never fail).
fn serf_check() -> Check {
    Check {
        id: "serfHealth".to_owned(),
        name: "Serf Health Status".to_owned(),
        status: Health::Passing,
        notes: String::new(),
        output: "Agent alive and reachable".to_owned(),
    }
}

/// The checks of a service (its own, then the node's), as `/v1/health/checks` shows them.
pub(crate) fn service_checks_json(s: &Service) -> Vec<Value> {
    s.checks
        .iter()
        .map(|c| check_json(&s.instance.node, c, Some(&s.instance)))
        .collect()
}

/// One `GET /v1/health/service/:service` entry: Node, Service, Checks.
pub(crate) fn health_entry(s: &Service) -> Value {
    let i = &s.instance;
    let mut checks = service_checks_json(s);
    checks.push(check_json(&i.node, &serf_check(), None));
    json!({
        "Node": node_json(i),
        "Service": {
            "ID": i.id,
            "Service": i.service,
            "Tags": i.tags,
            "Address": i.address,
            "TaggedAddresses": service_tagged_addresses(i),
            "Meta": string_map(&i.meta),
            "Port": i.port,
            "Weights": { "Passing": i.weights.passing, "Warning": i.weights.warning },
            "Namespace": "default",
        },
        "Checks": checks,
    })
}

/// Whether every check of the entry (service's and node's) passes (`?passing`).
pub(crate) fn all_passing(s: &Service) -> bool {
    s.checks.iter().all(|c| c.status == Health::Passing)
}

/// One `GET /v1/catalog/service/:service` entry (Consul's flat `ServiceNode`).
pub(crate) fn catalog_entry(s: &Service) -> Value {
    let i = &s.instance;
    json!({
        "ID": node_id(&i.node),
        "Node": i.node,
        "Address": i.node_address,
        "Datacenter": i.datacenter,
        "TaggedAddresses": { "lan": i.node_address, "wan": i.node_address },
        "NodeMeta": { "consul-network-segment": "" },
        "ServiceKind": "",
        "ServiceID": i.id,
        "ServiceName": i.service,
        "ServiceTags": i.tags,
        "ServiceAddress": i.address,
        "ServiceTaggedAddresses": service_tagged_addresses(i),
        "ServiceWeights": { "Passing": i.weights.passing, "Warning": i.weights.warning },
        "ServiceMeta": string_map(&i.meta),
        "ServicePort": i.port,
        "ServiceEnableTagOverride": false,
        "Namespace": "default",
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// One KV entry as `GET /v1/kv/:key` shows it (`Value` base64, `null` when empty).
pub(crate) fn kv_json(key: &str, e: &KvEntry) -> Value {
    let mut m = Map::new();
    m.insert("LockIndex".into(), json!(0));
    m.insert("Key".into(), json!(key));
    m.insert("Flags".into(), json!(e.flags));
    m.insert(
        "Value".into(),
        if e.value.is_empty() {
            Value::Null
        } else {
            Value::String(crate::base64::encode(&e.value))
        },
    );
    m.insert("CreateIndex".into(), json!(e.create_index));
    m.insert("ModifyIndex".into(), json!(e.modify_index));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_grows_on_every_write_and_only_then() {
        let mut s = State::new("dc1");
        assert_eq!(s.local().index, 1);
        let a = s.register(Instance::new("a", "web", "10.0.0.1", 80));
        let b = s.register(Instance::new("a", "web", "10.0.0.2", 80));
        assert!(b > a);
        assert!(s.set_health("a", Health::Critical));
        let c = s.local().index;
        assert!(c > b);
        assert!(
            s.set_health("a", Health::Critical),
            "no change still succeeds"
        );
        assert_eq!(s.local().index, c, "no change, no new index");
        assert!(!s.set_health("nope", Health::Passing));
        assert!(!s.deregister("nope"));
        assert_eq!(s.local().index, c);
        assert!(s.deregister("a"));
        assert!(s.local().index > c);
    }

    #[test]
    fn each_datacenter_keeps_its_own_indexes_and_kv() {
        let mut s = State::new("dc1");
        s.register(Instance::new("a", "web", "10.0.0.1", 80));
        let dc1 = (s.local().index, s.index_of_service("dc1", "web"));
        let in_dc2 = s.register(Instance::new("b", "web", "10.0.1.1", 80).datacenter("dc2"));
        assert_eq!(
            in_dc2, 2,
            "dc2's raft index starts at 1 like a fresh cluster"
        );
        assert!(s.set_health("b", Health::Critical));
        s.kv_put("dc2", "k", b"v", 0);
        assert_eq!(
            (s.local().index, s.index_of_service("dc1", "web")),
            dc1,
            "writes in dc2 leave dc1's indexes alone"
        );
        assert!(s.local().kv.is_empty());
        assert_eq!(s.instances_of("dc2", "web").len(), 1);
        assert_eq!(s.instances_of("dc1", "web").len(), 1);
        // Moving an instance to another datacenter deregisters it from the first.
        s.register(Instance::new("b", "web", "10.0.1.1", 80));
        assert_eq!(s.instances_of("dc2", "web").len(), 0);
        assert_eq!(s.instances_of("dc1", "web").len(), 2);
    }

    #[test]
    fn node_ids_are_stable_and_uuid_shaped() {
        let id = node_id("node-1");
        assert_eq!(id, node_id("node-1"));
        assert_ne!(id, node_id("node-2"));
        let lens: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(lens, vec![8, 4, 4, 4, 12]);
    }
}
