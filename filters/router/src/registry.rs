//! What the polling VM writes into Envoy's shared data and every VM reads: per service the
//! instance list (a compact binary record, rewritten only when the list changes) and the sync
//! status (index and time of the last good answer), the sync lease, and the service → tenant
//! map for the tenant filter.
//!
//! Every key but the merged tenant map carries the configuration's *sync scope* (a hash of
//! the Consul cluster, the datacenters and each service's name, tag and tenant): two router
//! configurations in one `vm_id` (e.g. the old and the new one during an LDS drain) each hold
//! their own lease and lists, and each contributes its own part of the tenant map.
//!
//! List record, all integers big-endian, strings as a u16 length and UTF-8 bytes:
//! `"MGR1" tenant:str count:u16 { id:str host:str port:u16 weight:u32 dc:str zone:str }*`.
//! About 40 bytes per instance, decoded once per VM per change (the reader keeps the decoded
//! list under the record's CAS token). A string does not fit in a u16 length only with a
//! Consul answer far beyond any real one: such an instance is left out and counted, never cut.

use std::collections::BTreeMap;

use meshguard_core::Instance;
use meshguard_filter_common::{update, CasStore};

use crate::config::Config;

/// Shared-data key of the service → tenant map (the tenant filter's contract): the merge of
/// every sync scope's part.
pub const TENANTS_KEY: &str = "meshguard.registry.service_tenants.v1";
/// Shared-data key of the space-separated sync scopes that contributed a tenant-map part.
const TENANT_SCOPES_KEY: &str = "meshguard.registry.service_tenants.v1.scopes";
/// How long after its lease lapsed a sync scope's part of the tenant map still counts. A scope
/// whose lease nobody renews is a router configuration that is gone (removed, or replaced by
/// one with other services): its services leave the map `lease_ttl` + this after the last VM
/// that synced it stopped. The grace covers a takeover after a crash (the next VM claims a
/// lapsed lease on its next tick) and a reload (the old VM releases, the new one claims).
pub const SCOPE_GRACE_NS: u64 = 60_000_000_000;
/// CAS retries of the lease, status and list writes (one writer at a time by the lease, so
/// conflicts are rare: a takeover racing a renewal).
const CAS_RETRIES: u32 = 8;

const MAGIC: &[u8; 4] = b"MGR1";

/// The sync scope of a configuration: 16 hex digits of FNV-1a over the Consul cluster, the
/// datacenters and each service's name, tag and tenant, in order. Settings that only shape
/// how the lease holder polls (`passing_only`, `wait`, timeouts, ...) are left out, so an
/// HTTP filter with `sync: false` shares the lists of a singleton that polls for it.
pub fn sync_scope(config: &Config) -> String {
    let mut h = Fnv::default();
    h.field(config.consul.cluster.as_bytes());
    for dc in &config.consul.datacenters {
        h.field(b"dc");
        h.field(dc.as_bytes());
    }
    for s in &config.services {
        h.field(b"service");
        h.field(s.name.as_bytes());
        h.field(s.tag.as_deref().unwrap_or("\0").as_bytes());
        h.field(s.tenant.as_deref().unwrap_or("\0").as_bytes());
    }
    format!("{:016x}", h.0)
}

/// FNV-1a, 64 bits (stable across builds and VMs, unlike std's hasher).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Hashes `bytes` and a separator no field contains (0xff is never UTF-8).
    fn field(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Shared-data key of the sync lease of `scope`.
pub fn lease_key(scope: &str) -> String {
    format!("meshguard.router.v1.{scope}.lease")
}

/// Shared-data key of `service`'s instance list in `scope`.
pub fn list_key(scope: &str, service: &str) -> String {
    format!("meshguard.router.v1.{scope}.instances.{service}")
}

/// Shared-data key of `service`'s sync status in `scope`.
pub fn status_key(scope: &str, service: &str) -> String {
    format!("meshguard.router.v1.{scope}.status.{service}")
}

/// Shared-data key of `scope`'s part of the service → tenant map.
fn tenants_part_key(scope: &str) -> String {
    format!("{TENANTS_KEY}.{scope}")
}

/// Shared-data key of `service`'s instances in datacenter `dc` (watched separately when
/// several datacenters are configured; [`merge_lists`] builds the service's list from them).
pub fn dc_list_key(scope: &str, service: &str, dc: &str) -> String {
    format!("{}@{dc}", list_key(scope, service))
}

/// Shared-data key of the sync status of `service` in datacenter `dc`.
pub fn dc_status_key(scope: &str, service: &str, dc: &str) -> String {
    format!("{}@{dc}", status_key(scope, service))
}

/// Publishes the list at `key` as the concatenation of the per-datacenter records at
/// `dc_keys`, in order (the local datacenter first; an instance id already taken by an
/// earlier datacenter is left out). The tenant is the one every datacenter with instances
/// agrees on (none if they differ). Nothing is written while every record is missing or
/// empty. Returns whether it wrote.
pub fn merge_lists(store: &dyn CasStore, key: &str, dc_keys: &[String]) -> bool {
    let mut merged = ServiceList {
        tenant: None,
        instances: Vec::new(),
    };
    let mut tenants = Vec::new();
    for key in dc_keys {
        let Some(list) = store.get(key).and_then(|(v, _)| decode(&v)) else {
            continue;
        };
        if list.instances.is_empty() {
            continue;
        }
        tenants.push(list.tenant);
        for x in list.instances {
            if !merged.instances.iter().any(|y| y.id() == x.id()) {
                merged.instances.push(x);
            }
        }
    }
    merged.tenant = agreed(tenants).ok().flatten();
    !merged.instances.is_empty() && publish_list(store, key, &merged).0
}

/// The value every item agrees on: `Ok(None)` for no items or all `None`; `Err` when they
/// differ (a `None` next to a `Some` differs too).
pub fn agreed<T: PartialEq>(items: impl IntoIterator<Item = Option<T>>) -> Result<Option<T>, ()> {
    let mut items = items.into_iter();
    let Some(first) = items.next() else {
        return Ok(None);
    };
    for x in items {
        if x != first {
            return Err(());
        }
    }
    Ok(first)
}

/// A service's instances as published, with the tenant its instances declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceList {
    /// The service's owner: its configured `tenant`, else the `Service.Meta.tenant` every
    /// instance carries (none when they disagree or some have none).
    pub tenant: Option<String>,
    /// The usable instances, never empty once published.
    pub instances: Vec<Instance>,
}

/// Whether `s` fits a record string (a u16 length).
fn fits(s: &str) -> bool {
    s.len() <= usize::from(u16::MAX)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Callers check `fits`; a longer string would make a record `decode` rejects.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a list record. Nothing is cut: an instance with a string longer than 65535 bytes
/// and the instances past the 65535th are left out, and so is a tenant that long; the second
/// value counts what was left out.
pub fn encode(list: &ServiceList) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(8 + list.instances.len() * 48);
    out.extend_from_slice(MAGIC);
    let tenant = list.tenant.as_deref().filter(|t| fits(t)).unwrap_or("");
    put_str(&mut out, tenant);
    let kept: Vec<&Instance> = list
        .instances
        .iter()
        .filter(|x| {
            [
                x.id(),
                x.host(),
                x.datacenter().unwrap_or(""),
                x.zone().unwrap_or(""),
            ]
            .iter()
            .all(|s| fits(s))
        })
        .take(usize::from(u16::MAX))
        .collect();
    let left_out = list.instances.len() - kept.len();
    let count = u16::try_from(kept.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for x in kept {
        put_str(&mut out, x.id());
        put_str(&mut out, x.host());
        out.extend_from_slice(&x.port().get().to_be_bytes());
        out.extend_from_slice(&x.weight().get().to_be_bytes());
        put_str(&mut out, x.datacenter().unwrap_or(""));
        put_str(&mut out, x.zone().unwrap_or(""));
    }
    (out, left_out)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = self.u16()?;
        std::str::from_utf8(self.take(usize::from(len))?).ok()
    }
}

/// Decodes a list record; `None` for anything that is not a whole, valid record.
pub fn decode(bytes: &[u8]) -> Option<ServiceList> {
    let mut r = Reader { rest: bytes };
    if r.take(4)? != MAGIC {
        return None;
    }
    let tenant = Some(r.str()?.to_string()).filter(|t| !t.is_empty());
    let count = r.u16()?;
    let mut instances = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let id = r.str()?;
        let host = r.str()?;
        let port = r.u16()?;
        let weight = r.u32()?;
        let dc = r.str()?;
        let zone = r.str()?;
        let x = Instance::try_new(id, host, u32::from(port), weight)
            .ok()?
            .with_datacenter(dc)
            .with_zone(zone);
        instances.push(x);
    }
    r.rest
        .is_empty()
        .then_some(ServiceList { tenant, instances })
}

/// A service's sync status: the Consul index of the published list and when Consul last
/// answered well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// The `X-Consul-Index` to block on next (0: none yet).
    pub index: u64,
    /// Wall-clock ns of the last good answer (0: never).
    pub synced_at: u64,
}

impl SyncStatus {
    /// `index synced_at` as text.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.index, self.synced_at).into_bytes()
    }

    /// Parses [`SyncStatus::encode`]'s text (`None`: anything else).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (index, synced_at) = text.split_once(' ')?;
        Some(Self {
            index: index.parse().ok()?,
            synced_at: synced_at.parse().ok()?,
        })
    }

    /// Reads the status at `key` (default when missing or unreadable).
    pub fn load(store: &dyn CasStore, key: &str) -> Self {
        store
            .get(key)
            .and_then(|(v, _)| Self::decode(&v))
            .unwrap_or_default()
    }

    /// Writes the status at `key` unless the stored index is higher (a VM that lost the lease
    /// answering late cannot move the watch back); `may_lower` allows it after Consul's index
    /// went backwards (a reset re-reads from 0). `false` if refused or the CAS retries ran out.
    pub fn store(&self, store: &dyn CasStore, key: &str, may_lower: bool) -> bool {
        let value = self.encode();
        update(store, key, CAS_RETRIES, |current| {
            let stored = current.and_then(Self::decode).unwrap_or_default();
            if may_lower || stored.index <= self.index {
                (true, value.clone())
            } else {
                (false, current.unwrap_or_default().to_vec())
            }
        })
        .unwrap_or(false)
    }
}

/// The sync lease: which VM polls Consul, until when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    /// The holder's random identity (0: nobody).
    pub owner: u64,
    /// Wall-clock ns when the lease lapses unless renewed.
    pub expires_at: u64,
}

/// What [`Lease::acquire`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// We hold it (renewed, or taken from nobody).
    Held,
    /// We took it over from another VM whose lease had lapsed.
    TookOver {
        /// The previous holder.
        from: u64,
    },
    /// Another VM holds it.
    HeldBy(u64),
}

impl Lease {
    fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.owner, self.expires_at).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (owner, expires_at) = text.split_once(' ')?;
        Some(Self {
            owner: owner.parse().ok()?,
            expires_at: expires_at.parse().ok()?,
        })
    }

    /// The value every VM creates the key with before traffic (nobody, lapsed), so that
    /// claims are compare-and-swaps on an existing key.
    pub fn initial() -> Vec<u8> {
        Self::default().encode()
    }

    /// Whether `me` holds the lease at `key` now (one read): checked before publishing an
    /// answer, so a VM whose lease was taken over since its query went out stays silent.
    pub fn held_by(store: &dyn CasStore, key: &str, me: u64) -> bool {
        store
            .get(key)
            .and_then(|(v, _)| Self::decode(&v))
            .is_some_and(|l| l.owner == me)
    }

    /// Renews the lease at `key` for `me` or claims it if it lapsed at `now` (ns); `ttl` ns
    /// from now. An unreadable value counts as lapsed. CAS contention counts as held by another.
    pub fn acquire(store: &dyn CasStore, key: &str, me: u64, now: u64, ttl: u64) -> LeaseOutcome {
        let result = update(store, key, CAS_RETRIES, |current| {
            let lease = current.and_then(Self::decode).unwrap_or_default();
            let mine = Self {
                owner: me,
                expires_at: now.saturating_add(ttl),
            };
            if lease.owner == me {
                (LeaseOutcome::Held, mine.encode())
            } else if lease.owner == 0 || now >= lease.expires_at {
                let outcome = if lease.owner == 0 {
                    LeaseOutcome::Held
                } else {
                    LeaseOutcome::TookOver { from: lease.owner }
                };
                (outcome, mine.encode())
            } else {
                (LeaseOutcome::HeldBy(lease.owner), lease.encode())
            }
        });
        result.unwrap_or(LeaseOutcome::HeldBy(0))
    }

    /// Gives the lease up if `me` holds it (on shutdown), so another VM need not wait. The
    /// expiry stays: until it (plus [`SCOPE_GRACE_NS`]) passes, the scope still counts as live
    /// for the tenant map, so a reload does not drop its services in between.
    pub fn release(store: &dyn CasStore, key: &str, me: u64) {
        let _ = update(store, key, CAS_RETRIES, |current| {
            let lease = current.and_then(Self::decode).unwrap_or_default();
            if lease.owner == me {
                let released = Self {
                    owner: 0,
                    expires_at: lease.expires_at,
                };
                ((), released.encode())
            } else {
                ((), current.unwrap_or_default().to_vec())
            }
        });
    }
}

/// Writes `list` as the record at `key` if it differs from the stored one; returns whether it
/// wrote (`false`: unchanged, or CAS retries ran out) and how many instances [`encode`] left
/// out.
pub fn publish_list(store: &dyn CasStore, key: &str, list: &ServiceList) -> (bool, usize) {
    let (value, left_out) = encode(list);
    let wrote = update(store, key, CAS_RETRIES, |current| {
        (current != Some(value.as_slice()), value.clone())
    })
    .unwrap_or(false);
    (wrote, left_out)
}

/// Rebuilds `scope`'s part of the service → tenant map from its published lists of
/// `services` and, when the part changed, the merged map the tenant filter reads: the union
/// of every scope's part, leaving out a service two parts give different tenants. Returns
/// whether the merged map was written. Parts of scopes that are gone (see
/// [`SCOPE_GRACE_NS`]) are left out at `now`.
pub fn publish_tenants<'a>(
    store: &dyn CasStore,
    scope: &str,
    services: impl IntoIterator<Item = &'a str>,
    now: u64,
) -> bool {
    let mut part = BTreeMap::new();
    for service in services {
        let tenant = store
            .get(&list_key(scope, service))
            .and_then(|(v, _)| decode(&v))
            .and_then(|l| l.tenant);
        if let Some(tenant) = tenant {
            part.insert(service.to_string(), tenant);
        }
    }
    let value = serde_json::to_vec(&part).unwrap_or_else(|_| b"{}".to_vec());
    let changed = update(store, &tenants_part_key(scope), CAS_RETRIES, |current| {
        (current != Some(value.as_slice()), value.clone())
    })
    .unwrap_or(false);
    let _ = update(store, TENANT_SCOPES_KEY, CAS_RETRIES, |current| {
        let text = current
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("");
        if text.split(' ').any(|s| s == scope) {
            ((), text.as_bytes().to_vec())
        } else if text.is_empty() {
            ((), scope.as_bytes().to_vec())
        } else {
            ((), format!("{text} {scope}").into_bytes())
        }
    });
    if !changed && store.get(TENANTS_KEY).is_some() {
        return false;
    }
    merge_tenants(store, now)
}

/// Drops the tenant-map parts of scopes that are gone at `now` (their lease lapsed more than
/// [`SCOPE_GRACE_NS`] ago) and rewrites the merged map if that changed it; returns whether it
/// wrote. Run by each lease holder on its tick: a removed configuration has no VM left to
/// clean up after it. A few reads per scope; the map is written only when it changes.
pub fn refresh_tenants(store: &dyn CasStore, now: u64) -> bool {
    let scopes = tenant_scopes(store);
    let dead: Vec<&str> = scopes
        .iter()
        .map(String::as_str)
        .filter(|s| !scope_alive(store, s, now))
        .collect();
    if !dead.is_empty() {
        let _ = update(store, TENANT_SCOPES_KEY, CAS_RETRIES, |current| {
            let text = current
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("");
            let kept: Vec<&str> = text
                .split(' ')
                .filter(|s| !s.is_empty() && !dead.contains(s))
                .collect();
            ((), kept.join(" ").into_bytes())
        });
        for scope in &dead {
            let _ = update(store, &tenants_part_key(scope), CAS_RETRIES, |_| {
                ((), b"{}".to_vec())
            });
        }
    }
    merge_tenants(store, now)
}

/// The scopes that contributed a tenant-map part.
fn tenant_scopes(store: &dyn CasStore) -> Vec<String> {
    store
        .get(TENANT_SCOPES_KEY)
        .and_then(|(v, _)| String::from_utf8(v).ok())
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `scope` is still synced by some VM at `now`: its lease was renewed (or released)
/// less than [`SCOPE_GRACE_NS`] before it lapsed. A scope without a readable lease is gone.
fn scope_alive(store: &dyn CasStore, scope: &str, now: u64) -> bool {
    store
        .get(&lease_key(scope))
        .and_then(|(v, _)| Lease::decode(&v))
        .is_some_and(|l| now < l.expires_at.saturating_add(SCOPE_GRACE_NS))
}

/// Writes the merged tenant map from every scope's part (see [`publish_tenants`]), then reads
/// the parts again and rewrites while they changed meanwhile (another scope's VM merging at
/// the same time on another worker thread), at most [`CAS_RETRIES`] times.
fn merge_tenants(store: &dyn CasStore, now: u64) -> bool {
    let mut wrote = false;
    let mut value = merged_tenants(store, now);
    for _ in 0..CAS_RETRIES {
        wrote |= update(store, TENANTS_KEY, CAS_RETRIES, |current| {
            (current != Some(value.as_slice()), value.clone())
        })
        .unwrap_or(false);
        let again = merged_tenants(store, now);
        if again == value {
            break;
        }
        value = again;
    }
    wrote
}

/// The merged tenant map (JSON) from the part of every scope still alive at `now`.
fn merged_tenants(store: &dyn CasStore, now: u64) -> Vec<u8> {
    let mut merged: BTreeMap<String, Option<String>> = BTreeMap::new();
    for scope in tenant_scopes(store) {
        let scope = scope.as_str();
        if !scope_alive(store, scope, now) {
            continue;
        }
        let part: BTreeMap<String, String> = store
            .get(&tenants_part_key(scope))
            .and_then(|(v, _)| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        for (service, tenant) in part {
            merged
                .entry(service)
                .and_modify(|t| {
                    if t.as_deref() != Some(tenant.as_str()) {
                        *t = None;
                    }
                })
                .or_insert(Some(tenant));
        }
    }
    let map: BTreeMap<String, String> = merged
        .into_iter()
        .filter_map(|(s, t)| Some((s, t?)))
        .collect();
    serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use meshguard_filter_common::MemoryStore;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn list() -> ServiceList {
        ServiceList {
            tenant: Some("acme".into()),
            instances: vec![
                Instance::try_new("n1/a", "10.0.0.1", 8080, 3)
                    .unwrap()
                    .with_datacenter("dc1")
                    .with_zone("z1"),
                Instance::try_new("n2/b", "fe80::1", 9090, 1).unwrap(),
            ],
        }
    }

    #[test]
    fn lists_round_trip_and_garbage_is_rejected() {
        let (bytes, left_out) = encode(&list());
        assert_eq!(left_out, 0);
        assert_eq!(decode(&bytes), Some(list()));
        assert!(bytes.len() < 80, "{} bytes", bytes.len());
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode(&extra), None);
        assert_eq!(decode(b"MGR2"), None);
    }

    #[test]
    fn the_lease_is_renewed_by_its_holder_and_taken_over_when_it_lapses() {
        let store = MemoryStore::new();
        const LEASE_KEY: &str = "lease";
        store.set(LEASE_KEY, &Lease::initial(), 0).unwrap();
        assert_eq!(
            Lease::acquire(&store, LEASE_KEY, 1, 100, 50),
            LeaseOutcome::Held
        );
        assert_eq!(
            Lease::acquire(&store, LEASE_KEY, 2, 120, 50),
            LeaseOutcome::HeldBy(1)
        );
        assert_eq!(
            Lease::acquire(&store, LEASE_KEY, 1, 140, 50),
            LeaseOutcome::Held
        );
        assert_eq!(
            Lease::acquire(&store, LEASE_KEY, 2, 189, 50),
            LeaseOutcome::HeldBy(1)
        );
        assert_eq!(
            Lease::acquire(&store, LEASE_KEY, 2, 190, 50),
            LeaseOutcome::TookOver { from: 1 }
        );
        assert_eq!(
            Lease::acquire(&store, LEASE_KEY, 1, 200, 50),
            LeaseOutcome::HeldBy(2)
        );
        Lease::release(&store, LEASE_KEY, 1);
        assert_eq!(
            Lease::acquire(&store, LEASE_KEY, 1, 201, 50),
            LeaseOutcome::HeldBy(2)
        );
        Lease::release(&store, LEASE_KEY, 2);
        assert_eq!(
            Lease::acquire(&store, LEASE_KEY, 1, 202, 50),
            LeaseOutcome::Held
        );
    }

    #[test]
    fn lists_and_tenants_are_written_only_when_they_change() {
        let store = MemoryStore::new();
        assert!(publish_list(&store, &list_key("s", "orders"), &list()).0);
        let (_, cas) = store.get(&list_key("s", "orders")).unwrap();
        assert!(!publish_list(&store, &list_key("s", "orders"), &list()).0);
        assert_eq!(store.get(&list_key("s", "orders")).unwrap().1, cas);
        // Only a lease holder publishes.
        Lease::acquire(&store, &lease_key("s"), 1, 0, SEC);
        assert!(publish_tenants(&store, "s", ["orders", "users"], 0));
        assert_eq!(store.get(TENANTS_KEY).unwrap().0, br#"{"orders":"acme"}"#);
        assert!(!publish_tenants(&store, "s", ["orders", "users"], 0));
    }

    #[test]
    fn datacenter_lists_merge_in_order_without_duplicate_ids() {
        let store = MemoryStore::new();
        let keys = [
            dc_list_key("s", "orders", "dc1"),
            dc_list_key("s", "orders", "dc2"),
        ];
        let key = list_key("s", "orders");
        assert!(!merge_lists(&store, &key, &keys), "nothing to publish yet");
        let one = |id: &str, port: u32, dc: &str| {
            Instance::try_new(id, "10.0.0.1", port, 1)
                .unwrap()
                .with_datacenter(dc)
        };
        let dc2 = ServiceList {
            tenant: Some("acme".into()),
            instances: vec![one("n/a", 1, "dc2"), one("n/b", 2, "dc2")],
        };
        let dc1 = ServiceList {
            tenant: None,
            instances: vec![one("n/a", 3, "dc1")],
        };
        publish_list(&store, &keys[1], &dc2);
        publish_list(&store, &keys[0], &dc1);
        assert!(merge_lists(&store, &key, &keys));
        let merged = decode(&store.get(&key).unwrap().0).unwrap();
        let ports: Vec<u16> = merged.instances.iter().map(|x| x.port().get()).collect();
        assert_eq!(ports, [3, 2], "dc1 first; dc2's n/a is a duplicate id");
        assert_eq!(
            merged.tenant, None,
            "dc1 names no tenant, dc2 acme: no owner"
        );
        let dc1 = ServiceList {
            tenant: Some("acme".into()),
            ..dc1
        };
        publish_list(&store, &keys[0], &dc1);
        assert!(merge_lists(&store, &key, &keys));
        let merged = decode(&store.get(&key).unwrap().0).unwrap();
        assert_eq!(merged.tenant.as_deref(), Some("acme"), "both agree");
    }

    #[test]
    fn status_round_trips() {
        let store = MemoryStore::new();
        let s = SyncStatus {
            index: 42,
            synced_at: 7,
        };
        let key = status_key("s", "orders");
        assert!(s.store(&store, &key, false));
        assert_eq!(SyncStatus::load(&store, &key), s);
        assert_eq!(
            SyncStatus::load(&store, &status_key("s", "users")),
            SyncStatus::default()
        );
    }

    #[test]
    fn status_writes_never_move_the_index_back_unless_after_a_reset() {
        let store = MemoryStore::new();
        let key = status_key("s", "orders");
        let at = |index, synced_at| SyncStatus { index, synced_at };
        assert!(at(42, 7).store(&store, &key, false));
        assert!(
            !at(41, 9).store(&store, &key, false),
            "a late, older answer"
        );
        assert_eq!(SyncStatus::load(&store, &key), at(42, 7));
        assert!(
            at(42, 9).store(&store, &key, false),
            "same index, newer time"
        );
        assert!(at(3, 10).store(&store, &key, true), "Consul's index reset");
        assert_eq!(SyncStatus::load(&store, &key), at(3, 10));
    }

    #[test]
    fn encoding_leaves_out_what_does_not_fit_and_counts_it() {
        let long = "h".repeat(70_000);
        let mut big = list();
        big.instances
            .push(Instance::try_new(long.as_str(), "10.0.0.9", 1, 1).unwrap());
        let (bytes, left_out) = encode(&big);
        assert_eq!(left_out, 1);
        assert_eq!(decode(&bytes), Some(list()), "the rest is whole");
        let many = ServiceList {
            tenant: None,
            instances: (0..70_000u32)
                .map(|i| Instance::try_new(i.to_string(), "10.0.0.1", 1, 1).unwrap())
                .collect(),
        };
        let (bytes, left_out) = encode(&many);
        assert_eq!(left_out, 70_000 - 65_535);
        assert_eq!(decode(&bytes).unwrap().instances.len(), 65_535);
    }

    #[test]
    fn sync_scopes_differ_by_cluster_and_services_but_not_by_polling_settings() {
        let scope = |json: &str| {
            sync_scope(&meshguard_filter_common::parse_config::<Config>(json.as_bytes()).unwrap())
        };
        let a = scope(r#"{"consul":{"cluster":"consul"},"services":[{"name":"orders"}]}"#);
        assert_eq!(a.len(), 16);
        assert_eq!(
            a,
            scope(
                r#"{"consul":{"cluster":"consul","sync":false,"passing_only":false,"wait":"5s"},
                    "services":[{"name":"orders","mode":"failfast"}]}"#
            )
        );
        for other in [
            r#"{"consul":{"cluster":"consul2"},"services":[{"name":"orders"}]}"#,
            r#"{"consul":{"cluster":"consul"},"services":[{"name":"orders"},{"name":"users"}]}"#,
            r#"{"consul":{"cluster":"consul"},"services":[{"name":"orders","tag":"v2"}]}"#,
            r#"{"consul":{"cluster":"consul","datacenters":["dc1"]},"services":[{"name":"orders"}]}"#,
        ] {
            assert_ne!(a, scope(other), "{other}");
        }
    }

    #[test]
    fn tenant_map_parts_of_two_scopes_merge_and_a_disagreement_leaves_the_service_out() {
        let store = MemoryStore::new();
        let list = |tenant: &str| ServiceList {
            tenant: Some(tenant.into()),
            instances: vec![Instance::try_new("n/a", "10.0.0.1", 1, 1).unwrap()],
        };
        Lease::acquire(&store, &lease_key("a"), 1, 0, SEC);
        Lease::acquire(&store, &lease_key("b"), 2, 0, SEC);
        publish_list(&store, &list_key("a", "orders"), &list("acme"));
        publish_list(&store, &list_key("a", "users"), &list("acme"));
        publish_list(&store, &list_key("b", "users"), &list("acme"));
        publish_list(&store, &list_key("b", "billing"), &list("globex"));
        assert!(publish_tenants(&store, "a", ["orders", "users"], 0));
        assert!(publish_tenants(&store, "b", ["users", "billing"], 0));
        assert_eq!(
            store.get(TENANTS_KEY).unwrap().0,
            br#"{"billing":"globex","orders":"acme","users":"acme"}"#
        );
        publish_list(&store, &list_key("b", "users"), &list("globex"));
        assert!(publish_tenants(&store, "b", ["users", "billing"], 0));
        assert_eq!(
            store.get(TENANTS_KEY).unwrap().0,
            br#"{"billing":"globex","orders":"acme"}"#
        );
    }

    /// A configuration that is gone (no VM renews its scope's lease) must not keep its services
    /// in the tenant map: a service it listed may have moved to another tenant since, and the
    /// tenant filter would go on trusting the old owner. A reload (the old VM releases, the new
    /// one claims a tick later) and a takeover after a crash must not drop them in between.
    #[test]
    fn a_scope_nobody_syncs_any_more_leaves_the_tenant_map_after_the_grace() {
        let store = MemoryStore::new();
        let list = |tenant: &str| ServiceList {
            tenant: Some(tenant.into()),
            instances: vec![Instance::try_new("n/a", "10.0.0.1", 1, 1).unwrap()],
        };
        let ttl = 10 * SEC;
        Lease::acquire(&store, &lease_key("old"), 1, 0, ttl);
        Lease::acquire(&store, &lease_key("new"), 2, 0, ttl);
        publish_list(&store, &list_key("old", "legacy"), &list("acme"));
        publish_list(&store, &list_key("old", "orders"), &list("acme"));
        publish_list(&store, &list_key("new", "orders"), &list("acme"));
        publish_tenants(&store, "old", ["legacy", "orders"], 0);
        publish_tenants(&store, "new", ["orders"], 0);
        let map =
            |store: &MemoryStore| String::from_utf8(store.get(TENANTS_KEY).unwrap().0).unwrap();
        assert_eq!(map(&store), r#"{"legacy":"acme","orders":"acme"}"#);
        // The old configuration's VM shuts down (releases); "new" keeps renewing.
        Lease::release(&store, &lease_key("old"), 1);
        let mut now = 0;
        while now < ttl + SCOPE_GRACE_NS - SEC {
            now += SEC;
            Lease::acquire(&store, &lease_key("new"), 2, now, ttl);
            assert!(!refresh_tenants(&store, now), "dropped early at {now}");
        }
        assert_eq!(map(&store), r#"{"legacy":"acme","orders":"acme"}"#);
        now += 2 * SEC;
        Lease::acquire(&store, &lease_key("new"), 2, now, ttl);
        assert!(refresh_tenants(&store, now));
        assert_eq!(map(&store), r#"{"orders":"acme"}"#);
        assert_eq!(store.get(TENANT_SCOPES_KEY).unwrap().0, b"new");
        // The old configuration comes back: its VM claims the lease and publishes again.
        Lease::acquire(&store, &lease_key("old"), 3, now, ttl);
        assert!(publish_tenants(&store, "old", ["legacy", "orders"], now));
        assert_eq!(map(&store), r#"{"legacy":"acme","orders":"acme"}"#);
        // A crashed holder (no release): its lease lapses, another VM takes over within the
        // grace, and nothing left the map meanwhile.
        let crash = now;
        now = crash + ttl + SEC;
        assert!(!refresh_tenants(&store, now));
        assert_eq!(
            Lease::acquire(&store, &lease_key("old"), 4, now, ttl),
            LeaseOutcome::TookOver { from: 3 }
        );
        Lease::acquire(&store, &lease_key("new"), 2, now, ttl);
        now += SEC;
        Lease::acquire(&store, &lease_key("old"), 4, now, ttl);
        Lease::acquire(&store, &lease_key("new"), 2, now, ttl);
        assert!(!refresh_tenants(&store, now));
        assert_eq!(map(&store), r#"{"legacy":"acme","orders":"acme"}"#);
    }
}
