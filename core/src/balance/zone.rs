//! Zone and datacenter preference: pick within the local zone while it has an eligible
//! instance, else within the local datacenter, else within the next datacenter of an ordered
//! failover list, else anywhere (Envoy's zone-aware routing in its priority form; Spring
//! Cloud's zone preference; Consul's `dc` failover lists).

use super::pick::eligible;
use super::Instance;

/// Where this proxy runs (its datacenter and zone, each optional) and which datacenters to
/// fail over to, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    zone: Option<String>,
    /// The local datacenter first, then the failover order; empty when none is set.
    datacenters: Vec<String>,
}

/// How far a [`Locality::scope`] had to widen to find an eligible instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalityScope {
    /// The local zone (in the local datacenter, if one is set) has an eligible instance.
    Zone,
    /// The narrowest datacenter with an eligible instance: 0 is the local one, 1 the first
    /// failover datacenter, and so on.
    Datacenter(usize),
    /// None of those has one (or no locality is set): any instance.
    Any,
}

impl Locality {
    /// The locality `datacenter`/`zone` (empty strings: not set).
    pub fn new(datacenter: &str, zone: &str) -> Self {
        Self {
            zone: Some(zone.to_owned()).filter(|z| !z.is_empty()),
            datacenters: Some(datacenter.to_owned())
                .filter(|d| !d.is_empty())
                .into_iter()
                .collect(),
        }
    }

    /// The same locality failing over to `datacenters` in order once the local one has no
    /// eligible instance (empty names and repeats are ignored; needs a local datacenter).
    #[must_use]
    pub fn with_failover<S: AsRef<str>>(
        mut self,
        datacenters: impl IntoIterator<Item = S>,
    ) -> Self {
        if self.datacenters.is_empty() {
            return self;
        }
        for dc in datacenters {
            let dc = dc.as_ref();
            if !dc.is_empty() && !self.datacenters.iter().any(|d| d == dc) {
                self.datacenters.push(dc.to_owned());
            }
        }
        self
    }

    /// Whether `x` is in the datacenter of preference `rank` (an instance without a
    /// datacenter is taken to be local: single-DC registries).
    fn in_datacenter(&self, rank: usize, x: &Instance) -> bool {
        match (self.datacenters.get(rank), x.datacenter()) {
            (Some(want), Some(dc)) => want == dc,
            (Some(_), None) => rank == 0,
            (None, _) => rank == 0 && self.datacenters.is_empty(),
        }
    }

    fn in_zone(&self, x: &Instance) -> bool {
        self.zone.is_some() && self.zone.as_deref() == x.zone() && self.in_datacenter(0, x)
    }

    /// 0 for the local zone, `k + 1` for the datacenter of preference `k`, `None` otherwise.
    fn rank(&self, x: &Instance) -> Option<usize> {
        if self.in_zone(x) {
            return Some(0);
        }
        (0..self.datacenters.len())
            .find(|&k| self.in_datacenter(k, x))
            .map(|k| k + 1)
    }

    /// The narrowest scope that has an eligible instance (healthy and admitted). One pass, no
    /// allocation. For large lists compute it once per list or health change and filter with
    /// [`Locality::admits`] instead of calling [`Locality::prefer`] per pick.
    pub fn scope(&self, instances: &[Instance], admit: impl Fn(usize) -> bool) -> LocalityScope {
        if self.zone.is_none() && self.datacenters.is_empty() {
            return LocalityScope::Any;
        }
        let mut best: Option<usize> = None;
        for (i, x) in instances.iter().enumerate() {
            let Some(rank) = self.rank(x) else { continue };
            if best.is_some_and(|b| b <= rank) || !eligible(instances, &admit, i) {
                continue;
            }
            best = Some(rank);
            if rank == 0 {
                break;
            }
        }
        match best {
            Some(0) => LocalityScope::Zone,
            Some(k) => LocalityScope::Datacenter(k - 1),
            None => LocalityScope::Any,
        }
    }

    /// Whether `instance` is inside `scope` as seen from here.
    pub fn admits(&self, scope: LocalityScope, instance: &Instance) -> bool {
        match scope {
            LocalityScope::Zone => self.in_zone(instance),
            LocalityScope::Datacenter(k) => self.in_datacenter(k, instance),
            LocalityScope::Any => true,
        }
    }

    /// `admit` narrowed to the preferred scope: pass the result to any balancer.
    pub fn prefer<'a, F: Fn(usize) -> bool + 'a>(
        &'a self,
        instances: &'a [Instance],
        admit: F,
    ) -> impl Fn(usize) -> bool + 'a {
        let scope = self.scope(instances, &admit);
        move |i| admit(i) && instances.get(i).is_some_and(|x| self.admits(scope, x))
    }
}
