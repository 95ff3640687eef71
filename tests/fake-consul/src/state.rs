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
/// whose answer may have changed are woken.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum WaitKey {
    /// One service name's instances or checks.
    Service(String),
    /// The list of services.
    Catalog,
    /// The KV store.
    Kv,
}

/// Everything behind the fake's one mutex.
#[derive(Debug)]
pub(crate) struct State {
    /// The raft index; starts at 1 and grows on every write.
    pub(crate) index: u64,
    /// Services by service id.
    pub(crate) services: BTreeMap<String, Service>,
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
    /// Keys touched by writes not yet announced to blocked queries.
    pub(crate) touched: Vec<WaitKey>,
    pub(crate) kv: BTreeMap<String, KvEntry>,
    pub(crate) fault: Option<Fault>,
    pub(crate) requests: VecDeque<RecordedRequest>,
    /// Requests received since start (not bounded by `max_recorded_requests`).
    pub(crate) recorded_total: usize,
    /// Bumped by `stop_listening` and on drop: requests of an older epoch are abandoned.
    pub(crate) epoch: u64,
    pub(crate) shutdown: bool,
    /// The datacenter this fake serves.
    pub(crate) datacenter: String,
}

impl State {
    pub(crate) fn new(datacenter: &str) -> State {
        State {
            index: 1,
            services: BTreeMap::new(),
            by_name: HashMap::new(),
            service_index: HashMap::new(),
            extinction_index: 0,
            services_index: 1,
            kv_index: 1,
            touched: Vec::new(),
            kv: BTreeMap::new(),
            fault: None,
            requests: VecDeque::new(),
            recorded_total: 0,
            epoch: 0,
            shutdown: false,
            datacenter: datacenter.to_owned(),
        }
    }

    /// Increases the raft index and returns it.
    pub(crate) fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Registers (or replaces) a service with the given checks; returns the new index.
    pub(crate) fn upsert(&mut self, mut instance: Instance, checks: Vec<Check>) -> u64 {
        if instance.datacenter.is_empty() {
            instance.datacenter = self.datacenter.clone();
        }
        let index = self.bump();
        let create_index = self
            .services
            .get(&instance.id)
            .map_or(index, |s| s.create_index);
        let id = instance.id.clone();
        let name = instance.service.clone();
        let previous = self.services.insert(
            id.clone(),
            Service {
                instance,
                checks,
                create_index,
                modify_index: index,
            },
        );
        if let Some(old) = previous.filter(|old| old.instance.service != name) {
            self.forget_instance(&old.instance.service, &id, index);
        }
        self.by_name.entry(name.clone()).or_default().insert(id);
        self.touch_service(&name, index);
        self.services_index = index;
        self.touched.push(WaitKey::Catalog);
        index
    }

    /// Records a change of service `name` at `index`.
    fn touch_service(&mut self, name: &str, index: u64) {
        self.service_index.insert(name.to_owned(), index);
        self.touched.push(WaitKey::Service(name.to_owned()));
    }

    /// Removes instance `id` from service `name`'s ids; the service goes extinct with its
    /// last instance.
    fn forget_instance(&mut self, name: &str, id: &str, index: u64) {
        let extinct = match self.by_name.get_mut(name) {
            Some(ids) => {
                ids.remove(id);
                ids.is_empty()
            }
            None => false,
        };
        if extinct {
            self.by_name.remove(name);
            self.service_index.remove(name);
            self.extinction_index = index;
            self.touched.push(WaitKey::Service(name.to_owned()));
        } else {
            self.touch_service(name, index);
        }
    }

    /// The `X-Consul-Index` of a read about service `name` (never 0).
    pub(crate) fn index_of_service(&self, name: &str) -> u64 {
        match self.service_index.get(name) {
            Some(&index) => index,
            None if self.extinction_index > 0 => self.extinction_index,
            None => self.services_index,
        }
        .max(1)
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
        let index = self.bump();
        self.forget_instance(&old.instance.service, id, index);
        self.services_index = index;
        self.touched.push(WaitKey::Catalog);
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
        let index = self.bump();
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
            self.touch_service(&name, index);
        }
        true
    }

    /// Sets the status (and output) of the check `check_id`; `false` when there is none.
    pub(crate) fn set_check(&mut self, check_id: &str, status: Health, output: &str) -> bool {
        let found = self
            .services
            .values()
            .find(|s| s.checks.iter().any(|c| c.id == check_id))
            .map(|s| s.instance.id.clone());
        let Some(id) = found else {
            return false;
        };
        let index = self.bump();
        if let Some(svc) = self.services.get_mut(&id) {
            for c in svc.checks.iter_mut().filter(|c| c.id == check_id) {
                c.status = status;
                c.output = output.to_owned();
            }
            svc.modify_index = index;
            let name = svc.instance.service.clone();
            self.touch_service(&name, index);
        }
        true
    }

    /// Stores a KV entry; returns the new index.
    pub(crate) fn kv_put(&mut self, key: &str, value: &[u8], flags: u64) -> u64 {
        let index = self.bump();
        let create_index = self.kv.get(key).map_or(index, |e| e.create_index);
        self.kv.insert(
            key.to_owned(),
            KvEntry {
                value: value.to_vec(),
                flags,
                create_index,
                modify_index: index,
            },
        );
        self.kv_index = index;
        self.touched.push(WaitKey::Kv);
        index
    }

    /// Deletes `key`, or every key under the prefix `key` with `recurse`. Consul answers
    /// `true` either way; the index moves only when something was deleted.
    pub(crate) fn kv_delete(&mut self, key: &str, recurse: bool) {
        let before = self.kv.len();
        if recurse {
            self.kv.retain(|k, _| !k.starts_with(key));
        } else {
            self.kv.remove(key);
        }
        if self.kv.len() != before {
            self.kv_index = self.bump();
            self.touched.push(WaitKey::Kv);
        }
    }

    /// The services of `name` visible in this datacenter, ordered by node then id.
    pub(crate) fn instances_of<'a>(&'a self, name: &'a str) -> Vec<&'a Service> {
        let mut out: Vec<&Service> = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| self.services.get(id))
            .filter(|s| s.instance.datacenter == self.datacenter)
            .collect();
        out.sort_by(|a, b| {
            (&a.instance.node, &a.instance.id).cmp(&(&b.instance.node, &b.instance.id))
        });
        out
    }

    /// `GET /v1/catalog/services`: name → union of tags, over services passing `keep`.
    pub(crate) fn catalog_services(&self, mut keep: impl FnMut(&Service) -> bool) -> Value {
        let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in self
            .services
            .values()
            .filter(|s| s.instance.datacenter == self.datacenter)
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
        assert_eq!(s.index, 1);
        let a = s.register(Instance::new("a", "web", "10.0.0.1", 80));
        let b = s.register(Instance::new("a", "web", "10.0.0.2", 80));
        assert!(b > a);
        assert!(s.set_health("a", Health::Critical));
        let c = s.index;
        assert!(c > b);
        assert!(
            s.set_health("a", Health::Critical),
            "no change still succeeds"
        );
        assert_eq!(s.index, c, "no change, no new index");
        assert!(!s.set_health("nope", Health::Passing));
        assert!(!s.deregister("nope"));
        assert_eq!(s.index, c);
        assert!(s.deregister("a"));
        assert!(s.index > c);
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
