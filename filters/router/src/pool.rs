//! One service's instances as this VM routes to them: the decoded list (kept under the shared
//! record's CAS token, decoded again only when it changes) and the per-worker balancer state
//! (round-robin cursor, smooth WRR weights, latency estimates, requests in flight, outlier
//! ejection), carried over by instance id when the list changes.

use std::collections::HashMap;

use meshguard_core::{
    pick_least_request, pick_random, pick_weighted_random, CallResult, Instance, LatencyEstimate,
    Locality, Maglev, OutlierDetection, OutlierState, Recorded, ResponseTimeWeighted, Rng,
    RoundRobinState, SmoothWeightedCycle, SmoothWeightedState,
};

use crate::config::{Balancer, Service};
use crate::registry::decode;

/// A service's compiled balancing settings.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The picker.
    pub balancer: Balancer,
    /// EWMA settings (`response_time_weighted`).
    pub response_time: ResponseTimeWeighted,
    /// Zone/datacenter preference.
    pub locality: Option<Locality>,
    /// Passive outlier ejection.
    pub outlier: Option<OutlierDetection>,
}

impl Policy {
    /// Compiles a validated service's settings; `datacenters` are the watched ones in order
    /// of preference (without a `locality`, several of them prefer the first, then the next).
    pub fn compile(s: &Service, datacenters: &[String]) -> Result<Self, String> {
        let response_time = ResponseTimeWeighted::try_new(
            s.response_time.half_life.as_nanos(),
            s.response_time.initial.as_nanos(),
        )
        .map_err(|e| e.to_string())?;
        let outlier = s
            .outlier
            .map(|o| {
                OutlierDetection::try_new(
                    o.consecutive_failures,
                    o.base_ejection.as_nanos(),
                    o.max_ejection.as_nanos(),
                    o.max_ejection_percent,
                )
            })
            .transpose()
            .map_err(|e| e.to_string())?;
        let locality = match (&s.locality, datacenters) {
            (Some(l), _) => {
                Some(Locality::new(&l.datacenter, &l.zone).with_failover(l.failover.iter()))
            }
            (None, [local, rest @ ..]) if !rest.is_empty() => {
                Some(Locality::new(local, "").with_failover(rest.iter()))
            }
            (None, _) => None,
        };
        Ok(Self {
            balancer: s.balancer,
            response_time,
            locality,
            outlier,
        })
    }
}

/// Smooth weighted round robin for one list: the precomputed cycle (O(1) per pick) when the
/// healthy weights sum to at most `SmoothWeightedCycle::MAX_CYCLE`, else nginx's walk over
/// every instance (O(n) per pick).
#[derive(Debug, Default)]
struct Smooth {
    cycle: Option<SmoothWeightedCycle>,
    walk: SmoothWeightedState,
}

impl Smooth {
    fn pick(&mut self, instances: &[Instance], admit: impl Fn(usize) -> bool) -> Option<usize> {
        match &mut self.cycle {
            Some(cycle) => cycle.pick(instances, admit),
            None => self.walk.pick(instances, admit),
        }
    }
}

/// The instances of one service and this worker's balancing state.
#[derive(Debug, Default)]
pub struct Pool {
    cas: Option<u32>,
    instances: Vec<Instance>,
    authorities: Vec<String>,
    maglev: Option<Maglev>,
    round_robin: RoundRobinState,
    smooth: Smooth,
    latency: Vec<LatencyEstimate>,
    outliers: Vec<OutlierState>,
    in_flight: Vec<u32>,
}

impl Pool {
    /// Takes the shared record `(bytes, cas)` if its token differs from the one held. Returns
    /// `Err` when a new record cannot be decoded (the previous list stays), `Ok(true)` when
    /// the list changed.
    pub fn refresh(&mut self, record: Option<(Vec<u8>, u32)>, policy: &Policy) -> Result<bool, ()> {
        let Some((bytes, cas)) = record else {
            return Ok(false);
        };
        if self.cas == Some(cas) {
            return Ok(false);
        }
        self.cas = Some(cas);
        let list = decode(&bytes)
            .filter(|l| !l.instances.is_empty())
            .ok_or(())?;
        self.replace(list.instances, policy);
        Ok(true)
    }

    /// Replaces the instances, keeping each surviving instance's state by id.
    pub fn replace(&mut self, instances: Vec<Instance>, policy: &Policy) {
        let old: HashMap<&str, usize> = self
            .instances
            .iter()
            .enumerate()
            .map(|(i, x)| (x.id(), i))
            .collect();
        let carry = |i: Option<&usize>| i.copied();
        let mut latency = Vec::with_capacity(instances.len());
        let mut outliers = Vec::with_capacity(instances.len());
        let mut in_flight = Vec::with_capacity(instances.len());
        for x in &instances {
            let before = carry(old.get(x.id()));
            latency.push(
                before
                    .and_then(|i| self.latency.get(i).copied())
                    .unwrap_or_default(),
            );
            outliers.push(
                before
                    .and_then(|i| self.outliers.get(i).copied())
                    .unwrap_or_default(),
            );
            in_flight.push(
                before
                    .and_then(|i| self.in_flight.get(i).copied())
                    .unwrap_or(0),
            );
        }
        let order_kept = instances.len() == self.instances.len()
            && instances
                .iter()
                .zip(&self.instances)
                .all(|(a, b)| a.id() == b.id());
        if !order_kept {
            self.smooth.walk = SmoothWeightedState::default();
        }
        self.smooth.cycle = if policy.balancer == Balancer::WeightedRoundRobin {
            SmoothWeightedCycle::new(&instances)
        } else {
            None
        };
        self.maglev = if policy.balancer == Balancer::ConsistentHash {
            Maglev::try_new(&instances).ok()
        } else {
            None
        };
        self.authorities = instances.iter().map(Instance::authority).collect();
        self.instances = instances;
        self.latency = latency;
        self.outliers = outliers;
        self.in_flight = in_flight;
    }

    /// The instances.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// `host:port` of instance `i`.
    pub fn authority(&self, i: usize) -> Option<&str> {
        self.authorities.get(i).map(String::as_str)
    }

    /// The index of the instance at `authority` (`host:port`).
    pub fn find(&self, authority: &str) -> Option<usize> {
        self.authorities.iter().position(|a| a == authority)
    }

    /// Picks up to `hosts` distinct instances: the balancer's choice first (within the
    /// locality's preferred scope, ejected instances left out unless all are ejected), then
    /// non-ejected instances in list order from a random starting point as failover targets. `key` is the
    /// consistent-hash key (`None`: a random one).
    pub fn pick(
        &mut self,
        policy: &Policy,
        key: Option<u64>,
        hosts: usize,
        now: u64,
        rng: &mut impl Rng,
    ) -> Vec<usize> {
        let n = self.instances.len();
        if n == 0 || hosts == 0 {
            return Vec::new();
        }
        let outliers = &self.outliers;
        let not_ejected = |i: usize| outliers.get(i).is_none_or(|o| !o.is_ejected(now));
        let (instances, maglev) = (&self.instances, self.maglev.as_ref());
        let (round_robin, smooth) = (&mut self.round_robin, &mut self.smooth);
        let (latency, in_flight) = (&self.latency, &self.in_flight);
        let mut pick = |admit: &dyn Fn(usize) -> bool| {
            pick_one(
                policy,
                instances,
                round_robin,
                smooth,
                latency,
                in_flight,
                maglev,
                key,
                rng,
                admit,
            )
        };
        let first = match &policy.locality {
            Some(l) => {
                let admit = l.prefer(instances, not_ejected);
                pick(&admit)
            }
            None => pick(&not_ejected),
        };
        // Every instance ejected: route anyway (Envoy's panic threshold does the same).
        let primary = first.or_else(|| pick(&|_| true));
        let Some(primary) = primary else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(hosts.min(n));
        out.push(primary);
        // The failover targets follow in list order from a random other instance, so the
        // retries of a dead instance spread over the others instead of all hitting its
        // successor.
        let offset = if hosts > 1 && n > 2 {
            usize::try_from(rng.next_u64() % (n as u64 - 1)).unwrap_or(0)
        } else {
            0
        };
        for k in 1..n {
            if out.len() >= hosts {
                break;
            }
            let i = (primary + 1 + (offset + k - 1) % (n - 1)) % n;
            if not_ejected(i) && self.instances.get(i).is_some_and(Instance::healthy) {
                out.push(i);
            }
        }
        out
    }

    /// A request to instance `i` started.
    pub fn started(&mut self, i: usize) {
        if let Some(c) = self.in_flight.get_mut(i) {
            *c = c.saturating_add(1);
        }
    }

    /// A request to the instance with `id` ended (looked up by id: the list may have changed).
    pub fn ended(&mut self, id: &str) {
        if let Some(i) = self.instances.iter().position(|x| x.id() == id) {
            if let Some(c) = self.in_flight.get_mut(i) {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Records a call's result on instance `i` for outlier ejection.
    pub fn record(&mut self, policy: &Policy, i: usize, result: CallResult, now: u64) -> Recorded {
        match &policy.outlier {
            Some(od) => od.record(&mut self.outliers, i, result, now),
            None => Recorded::Ignored,
        }
    }

    /// Folds a latency sample into instance `i`'s estimate.
    pub fn observe_latency(&mut self, policy: &Policy, i: usize, latency_ns: u64, now: u64) {
        if let Some(e) = self.latency.get_mut(i) {
            policy.response_time.observe(e, latency_ns, now);
        }
    }

    /// Whether instance `i` is ejected at `now`.
    #[cfg(test)]
    pub fn is_ejected(&self, i: usize, now: u64) -> bool {
        self.outliers.get(i).is_some_and(|o| o.is_ejected(now))
    }
}

#[allow(clippy::too_many_arguments)]
fn pick_one(
    policy: &Policy,
    instances: &[Instance],
    round_robin: &mut RoundRobinState,
    smooth: &mut Smooth,
    latency: &[LatencyEstimate],
    in_flight: &[u32],
    maglev: Option<&Maglev>,
    key: Option<u64>,
    rng: &mut impl Rng,
    admit: impl Fn(usize) -> bool,
) -> Option<usize> {
    match policy.balancer {
        Balancer::RoundRobin => round_robin.pick(instances, admit),
        Balancer::WeightedRoundRobin => smooth.pick(instances, admit),
        Balancer::Random => pick_random(instances, admit, rng),
        Balancer::WeightedRandom => pick_weighted_random(instances, admit, rng),
        Balancer::LeastRequest => pick_least_request(instances, in_flight, admit, rng),
        Balancer::ResponseTimeWeighted => policy.response_time.pick(instances, latency, admit, rng),
        Balancer::ConsistentHash => {
            let key = key.unwrap_or_else(|| rng.next_u64());
            match maglev {
                Some(m) => m.pick(instances, key, admit),
                None => pick_random(instances, admit, rng),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use meshguard_core::SplitMix64;
    use meshguard_filter_common::parse_config;

    use super::*;
    use crate::config::Config;

    fn policy(service: &str) -> Policy {
        let c: Config = parse_config(
            format!(r#"{{"consul":{{"cluster":"c"}},"services":[{service}]}}"#).as_bytes(),
        )
        .unwrap();
        Policy::compile(&c.services[0], &[]).unwrap()
    }

    fn instances(n: u16) -> Vec<Instance> {
        (1..=n)
            .map(|p| Instance::try_new(format!("i{p}"), "10.0.0.1", u32::from(p), 1).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_spreads_and_lists_every_other_instance_as_failover_targets() {
        let p = policy(r#"{"name":"a"}"#);
        let mut pool = Pool::default();
        pool.replace(instances(4), &p);
        let mut rng = SplitMix64::new(1);
        let picks: Vec<Vec<usize>> = (0..400)
            .map(|_| pool.pick(&p, None, 4, 0, &mut rng))
            .collect();
        for (k, hosts) in picks.iter().enumerate() {
            assert_eq!(hosts[0], k % 4, "round robin");
            let mut sorted = hosts.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3], "distinct: {hosts:?}");
        }
        // The first failover target of instance 0 is spread over the other three.
        let mut second = [0usize; 4];
        for hosts in picks.iter().filter(|h| h[0] == 0) {
            second[hosts[1]] += 1;
        }
        assert!(second[1..].iter().all(|&c| c >= 20), "{second:?}");
    }

    #[test]
    fn ejected_instances_get_no_traffic_and_are_not_failover_targets() {
        let p = policy(
            r#"{"name":"a","outlier":{"consecutive_failures":2,"base_ejection":"10s","max_ejection_percent":50}}"#,
        );
        let mut pool = Pool::default();
        pool.replace(instances(3), &p);
        pool.record(&p, 1, CallResult::Failure, 0);
        assert!(matches!(
            pool.record(&p, 1, CallResult::Failure, 0),
            Recorded::Ejected { .. }
        ));
        let mut rng = SplitMix64::new(1);
        for _ in 0..6 {
            let hosts = pool.pick(&p, None, 3, 1, &mut rng);
            assert!(!hosts.contains(&1), "{hosts:?}");
        }
        // After the ejection time it is back.
        let hosts: Vec<usize> = (0..3)
            .map(|_| pool.pick(&p, None, 1, 10_000_000_001, &mut rng)[0])
            .collect();
        assert!(hosts.contains(&1), "{hosts:?}");
    }

    #[test]
    fn state_is_carried_over_by_id_when_the_list_changes() {
        let p = policy(
            r#"{"name":"a","outlier":{"consecutive_failures":1,"max_ejection_percent":100}}"#,
        );
        let mut pool = Pool::default();
        pool.replace(instances(3), &p);
        pool.record(&p, 2, CallResult::Failure, 0);
        assert!(pool.is_ejected(2, 1));
        let mut shrunk = instances(3);
        shrunk.remove(0);
        pool.replace(shrunk, &p);
        assert_eq!(pool.find("10.0.0.1:3"), Some(1));
        assert!(pool.is_ejected(1, 1), "i3 kept its ejection");
    }

    #[test]
    fn consistent_hash_keeps_a_key_on_one_instance() {
        let p =
            policy(r#"{"name":"a","balancer":"consistent_hash","hash_on":{"header":"x-user"}}"#);
        let mut pool = Pool::default();
        pool.replace(instances(5), &p);
        let mut rng = SplitMix64::new(1);
        let first = pool.pick(&p, Some(42), 1, 0, &mut rng);
        for _ in 0..10 {
            assert_eq!(pool.pick(&p, Some(42), 1, 0, &mut rng), first);
        }
    }
}
