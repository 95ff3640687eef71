//! Consistent hashing with a Maglev lookup table.
//!
//! Source: Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer"
//! (NSDI 2016), §3.4, with Envoy's weighted table population (an instance of weight `w` takes
//! a turn in every `max_weight / w`-th round). Each instance id gives a permutation of the
//! table's `M` slots (`offset`, `skip` from two hashes of the id); instances take turns
//! claiming their next free slot until the table is full. A key hash maps to slot
//! `hash % M`, so a pick is one array read. Because an instance's permutation depends only on
//! its id and `M`, adding or removing one of `N` instances moves about `1/N` of the keys.
//!
//! `M` is the smallest prime ≥ the smallest power of two ≥ `100 × N`, and at least 65537
//! (Envoy's default; 128 KiB of u16 slots): it stays fixed for up to 655 instances and then
//! while `N` moves within a power of two, so ordinary membership changes remap minimally;
//! crossing a power of two rebuilds the table at the next size (a one-off full remap). Smaller
//! tables were measured to remap far more than `1/N` for some id pairs (55 % for 2 → 3
//! instances at M = 1031, against 34 % at 65537). When the slot's instance is ineligible (unhealthy, ejected), the following slots
//! are tried in order: the slots of an instance are spread pseudo-randomly, so its keys spread
//! over the others while every other key stays where it was.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::pick::eligible;
use super::rng::seeded_hash;
use super::{BalanceError, Instance};

/// Most instances a table can be built for (keeps `M` ≤ 1048583 slots of u16, 2 MiB).
pub const MAX_MAGLEV_INSTANCES: usize = 10_000;

/// A Maglev lookup table over one instance list (rebuild it when the list changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u16>,
    instances: usize,
}

impl Maglev {
    /// Builds the table for `instances` (1..=[`MAX_MAGLEV_INSTANCES`], healthy or not; ids
    /// should be unique). O(M log N); allocates the table once.
    pub fn try_new(instances: &[Instance]) -> Result<Self, BalanceError> {
        let n = instances.len();
        if n == 0 {
            return Err(BalanceError::Empty { field: "instances" });
        }
        if n > MAX_MAGLEV_INSTANCES {
            return Err(BalanceError::OutOfRange {
                field: "instances",
                min: 1,
                max: MAX_MAGLEV_INSTANCES as u64,
                got: n as u64,
            });
        }
        let m = table_size(n);
        let max_weight = instances
            .iter()
            .map(|x| u64::from(x.weight().get()))
            .max()
            .unwrap_or(1);
        struct Entry {
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            target: u64,
        }
        let mut entries: Vec<Entry> = instances
            .iter()
            .map(|x| Entry {
                offset: seeded_hash(x.id().as_bytes(), 1) % m,
                skip: seeded_hash(x.id().as_bytes(), 2) % (m - 1) + 1,
                next: 0,
                weight: u64::from(x.weight().get()),
                target: 0,
            })
            .collect();
        // Envoy fills round by round, each round visiting the instances in order and letting
        // those with `round × weight ≥ target` take a slot. The same order comes from a heap
        // keyed by (the round an instance is next due, its index), without visiting the light
        // instances in every round: O(M log N) however skewed the weights.
        let mut due: BinaryHeap<Reverse<(u64, usize)>> = (0..n).map(|i| Reverse((1, i))).collect();
        const FREE: u16 = u16::MAX;
        let mut table = vec![FREE; m as usize];
        let mut filled: u64 = 0;
        while filled < m {
            let Some(Reverse((round, i))) = due.pop() else {
                break;
            };
            let Some(e) = entries.get_mut(i) else {
                break;
            };
            // A permutation visits every slot and a free slot exists, so this ends.
            loop {
                let slot = ((e.offset + e.next * e.skip) % m) as usize;
                e.next += 1;
                if let Some(s) = table.get_mut(slot) {
                    if *s == FREE {
                        *s = i as u16; // i < MAX_MAGLEV_INSTANCES < FREE
                        filled += 1;
                        break;
                    }
                }
            }
            e.target += max_weight;
            // Next due: a later round in which `round × weight ≥ target` holds.
            due.push(Reverse(((round + 1).max(e.target.div_ceil(e.weight)), i)));
        }
        Ok(Self {
            table,
            instances: n,
        })
    }

    /// The table size `M` (a prime).
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The number of instances the table was built for.
    pub const fn instances(&self) -> usize {
        self.instances
    }

    /// The instance for `key_hash` (e.g. [`super::key_hash`] of a header, cookie or client
    /// IP): the slot's instance, or if it is ineligible the first eligible instance in the
    /// following slots. `instances` must be the list the table was built from.
    pub fn pick(
        &self,
        instances: &[Instance],
        key_hash: u64,
        admit: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let start = (key_hash % m as u64) as usize;
        let (wrapped, from_start) = self.table.split_at(start);
        from_start
            .iter()
            .chain(wrapped)
            .map(|&i| i as usize)
            .find(|&i| eligible(instances, &admit, i))
    }
}

/// The smallest prime ≥ the smallest power of two ≥ `max(100 × n, 65536)`.
fn table_size(n: usize) -> u64 {
    let want = (n as u64)
        .saturating_mul(100)
        .max(65536)
        .next_power_of_two();
    (want..).find(|&c| is_prime(c)).unwrap_or(want + 1)
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_are_primes_of_at_least_100_per_instance() {
        assert_eq!(table_size(1), 65_537);
        assert_eq!(table_size(655), 65_537);
        assert_eq!(table_size(656), 131_101);
        for n in [1, 7, 100, 1000, MAX_MAGLEV_INSTANCES] {
            let m = table_size(n);
            assert!(is_prime(m) && m >= 100 * n as u64, "{n} → {m}");
        }
    }

    #[test]
    fn rejects_an_empty_list() {
        assert_eq!(
            Maglev::try_new(&[]).unwrap_err().to_string(),
            "instances must not be empty"
        );
    }
}
