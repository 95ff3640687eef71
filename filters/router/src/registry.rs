//! What the polling VM writes into Envoy's shared data and every VM reads: per service the
//! instance list (a compact binary record, rewritten only when the list changes) and the sync
//! status (index and time of the last good answer), the sync lease, and the service → tenant
//! map for the tenant filter.
//!
//! List record, all integers big-endian, strings as a u16 length and UTF-8 bytes:
//! `"MGR1" tenant:str count:u16 { id:str host:str port:u16 weight:u32 dc:str zone:str }*`.
//! About 40 bytes per instance, decoded once per VM per change (the reader keeps the decoded
//! list under the record's CAS token).

use std::collections::BTreeMap;

use meshguard_core::Instance;
use meshguard_filter_common::{update, CasStore};

/// Shared-data key of the sync lease.
pub const LEASE_KEY: &str = "meshguard.router.v1.lease";
/// Shared-data key of the service → tenant map (the tenant filter's contract).
pub const TENANTS_KEY: &str = "meshguard.registry.service_tenants.v1";
/// CAS retries of the lease, status and list writes (one writer at a time by the lease, so
/// conflicts are rare: a takeover racing a renewal).
const CAS_RETRIES: u32 = 8;

const MAGIC: &[u8; 4] = b"MGR1";

/// Shared-data key of `service`'s instance list.
pub fn list_key(service: &str) -> String {
    format!("meshguard.router.v1.instances.{service}")
}

/// Shared-data key of `service`'s sync status.
pub fn status_key(service: &str) -> String {
    format!("meshguard.router.v1.status.{service}")
}

/// Shared-data key of `service`'s instances in datacenter `dc` (watched separately when
/// several datacenters are configured; [`merge_lists`] builds the service's list from them).
pub fn dc_list_key(service: &str, dc: &str) -> String {
    format!("{}@{dc}", list_key(service))
}

/// Shared-data key of the sync status of `service` in datacenter `dc`.
pub fn dc_status_key(service: &str, dc: &str) -> String {
    format!("{}@{dc}", status_key(service))
}

/// Publishes `service`'s list as the concatenation of its per-datacenter records at
/// `dc_keys`, in order (the local datacenter first; an instance id already taken by an
/// earlier datacenter is left out; the first tenant found wins). Nothing is written while
/// every record is missing or empty. Returns whether it wrote.
pub fn merge_lists(store: &dyn CasStore, service: &str, dc_keys: &[String]) -> bool {
    let mut merged = ServiceList {
        tenant: None,
        instances: Vec::new(),
    };
    for key in dc_keys {
        let Some(list) = store.get(key).and_then(|(v, _)| decode(&v)) else {
            continue;
        };
        merged.tenant = merged.tenant.or(list.tenant);
        for x in list.instances {
            if !merged.instances.iter().any(|y| y.id() == x.id()) {
                merged.instances.push(x);
            }
        }
    }
    !merged.instances.is_empty() && publish_list(store, &list_key(service), &merged)
}

/// A service's instances as published, with the tenant its instances declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceList {
    /// `Service.Meta.tenant` of the first instance that has one.
    pub tenant: Option<String>,
    /// The usable instances, never empty once published.
    pub instances: Vec<Instance>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
}

/// Encodes a list record (strings longer than 65535 bytes are cut, which `decode` rejects).
pub fn encode(list: &ServiceList) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + list.instances.len() * 48);
    out.extend_from_slice(MAGIC);
    put_str(&mut out, list.tenant.as_deref().unwrap_or(""));
    let count = u16::try_from(list.instances.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for x in list.instances.iter().take(usize::from(count)) {
        put_str(&mut out, x.id());
        put_str(&mut out, x.host());
        out.extend_from_slice(&x.port().get().to_be_bytes());
        out.extend_from_slice(&x.weight().get().to_be_bytes());
        put_str(&mut out, x.datacenter().unwrap_or(""));
        put_str(&mut out, x.zone().unwrap_or(""));
    }
    out
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

    /// Writes the status at `key`; `false` if the CAS retries ran out.
    pub fn store(&self, store: &dyn CasStore, key: &str) -> bool {
        let value = self.encode();
        update(store, key, CAS_RETRIES, |_| ((), value.clone())).is_ok()
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

    /// Renews the lease for `me` or claims it if it lapsed at `now` (ns); `ttl` ns from now.
    /// An unreadable value counts as lapsed. CAS contention counts as held by another.
    pub fn acquire(store: &dyn CasStore, me: u64, now: u64, ttl: u64) -> LeaseOutcome {
        let result = update(store, LEASE_KEY, CAS_RETRIES, |current| {
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

    /// Gives the lease up if `me` holds it (on shutdown), so another VM need not wait.
    pub fn release(store: &dyn CasStore, me: u64) {
        let _ = update(store, LEASE_KEY, CAS_RETRIES, |current| {
            let lease = current.and_then(Self::decode).unwrap_or_default();
            if lease.owner == me {
                ((), Self::default().encode())
            } else {
                ((), current.unwrap_or_default().to_vec())
            }
        });
    }
}

/// Writes `list` as the record at `key` if it differs from the stored one; returns whether it
/// wrote (`false`: unchanged, or CAS retries ran out).
pub fn publish_list(store: &dyn CasStore, key: &str, list: &ServiceList) -> bool {
    let value = encode(list);
    update(store, key, CAS_RETRIES, |current| {
        (current != Some(value.as_slice()), value.clone())
    })
    .unwrap_or(false)
}

/// Rebuilds the service → tenant map from the published lists of `services` and writes it
/// when it changed (JSON object, services without a tenant absent).
pub fn publish_tenants<'a>(
    store: &dyn CasStore,
    services: impl IntoIterator<Item = &'a str>,
) -> bool {
    let mut map = BTreeMap::new();
    for service in services {
        let tenant = store
            .get(&list_key(service))
            .and_then(|(v, _)| decode(&v))
            .and_then(|l| l.tenant);
        if let Some(tenant) = tenant {
            map.insert(service.to_string(), tenant);
        }
    }
    let value = serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec());
    update(store, TENANTS_KEY, CAS_RETRIES, |current| {
        (current != Some(value.as_slice()), value.clone())
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use meshguard_filter_common::MemoryStore;

    use super::*;

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
        let bytes = encode(&list());
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
        store.set(LEASE_KEY, &Lease::initial(), 0).unwrap();
        assert_eq!(Lease::acquire(&store, 1, 100, 50), LeaseOutcome::Held);
        assert_eq!(Lease::acquire(&store, 2, 120, 50), LeaseOutcome::HeldBy(1));
        assert_eq!(Lease::acquire(&store, 1, 140, 50), LeaseOutcome::Held);
        assert_eq!(Lease::acquire(&store, 2, 189, 50), LeaseOutcome::HeldBy(1));
        assert_eq!(
            Lease::acquire(&store, 2, 190, 50),
            LeaseOutcome::TookOver { from: 1 }
        );
        assert_eq!(Lease::acquire(&store, 1, 200, 50), LeaseOutcome::HeldBy(2));
        Lease::release(&store, 1);
        assert_eq!(Lease::acquire(&store, 1, 201, 50), LeaseOutcome::HeldBy(2));
        Lease::release(&store, 2);
        assert_eq!(Lease::acquire(&store, 1, 202, 50), LeaseOutcome::Held);
    }

    #[test]
    fn lists_and_tenants_are_written_only_when_they_change() {
        let store = MemoryStore::new();
        assert!(publish_list(&store, &list_key("orders"), &list()));
        let (_, cas) = store.get(&list_key("orders")).unwrap();
        assert!(!publish_list(&store, &list_key("orders"), &list()));
        assert_eq!(store.get(&list_key("orders")).unwrap().1, cas);
        assert!(publish_tenants(&store, ["orders", "users"]));
        assert_eq!(store.get(TENANTS_KEY).unwrap().0, br#"{"orders":"acme"}"#);
        assert!(!publish_tenants(&store, ["orders", "users"]));
    }

    #[test]
    fn datacenter_lists_merge_in_order_without_duplicate_ids() {
        let store = MemoryStore::new();
        let keys = [dc_list_key("orders", "dc1"), dc_list_key("orders", "dc2")];
        assert!(
            !merge_lists(&store, "orders", &keys),
            "nothing to publish yet"
        );
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
        assert!(merge_lists(&store, "orders", &keys));
        let merged = decode(&store.get(&list_key("orders")).unwrap().0).unwrap();
        let ports: Vec<u16> = merged.instances.iter().map(|x| x.port().get()).collect();
        assert_eq!(ports, [3, 2], "dc1 first; dc2's n/a is a duplicate id");
        assert_eq!(merged.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn status_round_trips() {
        let store = MemoryStore::new();
        let s = SyncStatus {
            index: 42,
            synced_at: 7,
        };
        assert!(s.store(&store, &status_key("orders")));
        assert_eq!(SyncStatus::load(&store, &status_key("orders")), s);
        assert_eq!(
            SyncStatus::load(&store, &status_key("users")),
            SyncStatus::default()
        );
    }
}
