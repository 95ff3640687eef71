//! A rule's per-key state: a fixed table of slots in Envoy's shared data, so memory stays
//! bounded however many distinct keys clients send.
//!
//! The table is `buckets` shared-data values of `WAYS` slots each (a set-associative table:
//! linear probing within one bucket). A key's 64-bit hash picks its bucket; a slot holds the
//! hash and the states of the rule's limits and tiers. One compare-and-swap on the bucket
//! finds-or-claims the key's slot AND updates its states, so two workers can never give one key
//! two slots. A slot is free when it was never used or when its states are idle (every limit
//! back to a fresh quota): an idle key loses nothing by losing its slot.
//!
//! When a key finds neither its slot nor a free one (WAYS live keys in its bucket), it is
//! counted in the rule's single overflow slot, which all such keys share: existing keys keep
//! their exact limits, and a flood of new keys cannot evict them (that would reset their
//! limits); the flood competes for one shared limit instead, counted in `overflow`.
//!
//! Bucket value: fingerprint (u32 LE) of the rule's limit layout, then WAYS slots of
//! `hash (u64 LE, 0 = never used) + states`. A bucket whose fingerprint differs (the rule's
//! limits changed) or whose length is wrong is read as empty.
//!
//! Repeated rejections skip shared data. A limit only frees up as time passes (the core
//! property `retry_after_is_exactly_when_the_request_would_pass`), and a rejection writes
//! nothing. So once this VM saw a key rejected from slot states S at `t0`, the key's states
//! stay S until some worker admits a request of it; and a worker deciding at `t ≤ now` on S
//! rejects whenever a decision on S at `now` rejects (another tier's request may still spend
//! its own reserve, which this decision does not read, but never the pool). Until `t0 + retry_after`, a request
//! that the remembered S rejects at `now` is therefore rejected by the shared state too, with
//! the same figures, and is answered from S (a shared-data read, i.e. a host call and a copy
//! into the VM, saved per limited request). A decision on S that admits falls through to
//! shared data. Keys counted in the overflow slot are not remembered (a slot may free up for
//! them), and the memory per rule and VM is bounded ([`REMEMBERED_REJECTIONS`] keys).

use std::borrow::Cow;
use std::cell::RefCell;

use meshguard_core::{Decision, Verdict};
use meshguard_filter_common::{ensure, update, CasStore, Contention};

use crate::limits::{reject_without_figures, LimitGroup};
use crate::matching::Key;

/// Slots per bucket: the probe length.
pub(crate) const WAYS: u32 = 8;
/// Retries after compare-and-swap conflicts before a decision gives up (see the README).
pub(crate) const MAX_CAS_RETRIES: u32 = 8;
/// Rejected keys a rule remembers per VM (the most recent ones; see the module docs).
pub(crate) const REMEMBERED_REJECTIONS: usize = 16;
const HASH_LEN: usize = 8;
const FINGERPRINT_LEN: usize = 4;

/// Where the admitting quota came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The rule's limits (the pool every request of the key shares).
    Pool,
    /// The reserved quota of this tier (index into the rule's tiers).
    Reserved(usize),
}

/// The result of one rule for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Verdict and quota figures.
    pub(crate) decision: Decision,
    /// Which quota decided: a privileged request admitted from its reserve, or the pool.
    pub(crate) source: Source,
    /// The key had no slot and was counted in the overflow slot.
    pub(crate) overflow: bool,
}

/// The limit layout of a rule's entries: the pool and each tier's reserve.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) pool: LimitGroup,
    pub(crate) tiers: Vec<LimitGroup>,
}

impl Layout {
    fn states_len(&self) -> usize {
        self.pool.len() + self.tiers.iter().map(LimitGroup::len).sum::<usize>()
    }

    /// Reserved quota first for a privileged request, then the pool.
    fn decide(&self, states: &mut [u8], tier: Option<usize>, now: u64) -> (Decision, Source) {
        if let Some(t) = tier {
            if let Some(group) = self.tiers.get(t) {
                let d = group.decide(states, now);
                if d.is_admitted() {
                    return (d, Source::Reserved(t));
                }
            }
        }
        (self.pool.decide(states, now), Source::Pool)
    }

    fn is_idle(&self, states: &[u8], now: u64) -> bool {
        self.pool.is_idle(states, now) && self.tiers.iter().all(|g| g.is_idle(states, now))
    }
}

/// A rejection this VM saw: the key's slot states as read, and until when they surely reject.
#[derive(Debug, Clone)]
struct Rejection {
    hash: u64,
    tier: Option<usize>,
    states: Vec<u8>,
    /// The rejection's time plus its `retry_after` (ns).
    until: u64,
}

/// One rule's slot table.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// Shared-data key prefix: `meshguard/ratelimit/<domain>/<rule>/`.
    prefix: String,
    /// The key of bucket 0 and of the overflow slot, built once.
    first_key: String,
    overflow_key: String,
    buckets: u32,
    ways: u32,
    layout: Layout,
    fingerprint: u32,
    seed: u64,
    /// This VM's recent rejections, oldest first.
    rejections: RefCell<Vec<Rejection>>,
}

impl Table {
    /// A table for `max_keys` keys (rounded up to whole buckets); a rule without a key has one
    /// slot. `fingerprint` identifies the layout (it changes when the limits do).
    pub(crate) fn new(
        prefix: String,
        max_keys: Option<u32>,
        layout: Layout,
        fingerprint: u32,
    ) -> Self {
        let (buckets, ways) = match max_keys {
            None => (1, 1),
            Some(n) => (n.div_ceil(WAYS).max(1), WAYS.min(n.max(1))),
        };
        let seed = fnv1a(u64::from(fingerprint), prefix.as_bytes());
        Self {
            first_key: format!("{prefix}0"),
            overflow_key: format!("{prefix}overflow"),
            prefix,
            buckets,
            ways,
            layout,
            fingerprint,
            seed,
            rejections: RefCell::new(Vec::new()),
        }
    }

    fn slot_len(&self) -> usize {
        HASH_LEN + self.layout.states_len()
    }

    fn empty_bucket(&self, ways: u32) -> Vec<u8> {
        let mut bucket = vec![0; FINGERPRINT_LEN + self.slot_len() * ways as usize];
        bucket[..FINGERPRINT_LEN].copy_from_slice(&self.fingerprint.to_le_bytes());
        bucket
    }

    fn bucket_key(&self, index: u32) -> Cow<'_, str> {
        if index == 0 {
            Cow::Borrowed(&self.first_key)
        } else {
            Cow::Owned(format!("{}{index}", self.prefix))
        }
    }

    /// Creates every bucket and the overflow slot that does not exist yet (in `on_configure`,
    /// before traffic: Envoy's shared data ignores the CAS token of a missing key, see
    /// `meshguard_filter_common::ensure`).
    pub(crate) fn create(&self, store: &impl CasStore) {
        let bucket = self.empty_bucket(self.ways);
        for index in 0..self.buckets {
            ensure(store, &self.bucket_key(index), &bucket);
        }
        if self.buckets > 1 || self.ways > 1 {
            ensure(store, &self.overflow_key, &self.empty_bucket(1));
        }
    }

    /// The 64-bit hash a key is stored under (never 0, which marks an unused slot).
    fn hash(&self, key: &Key) -> u64 {
        mix(fnv1a(self.seed, key.as_bytes())).max(1)
    }

    /// Decides one request of `key` (privileged tier `tier`, if any) at `now`.
    pub(crate) fn decide(
        &self,
        store: &impl CasStore,
        key: &Key,
        tier: Option<usize>,
        now: u64,
    ) -> Result<Outcome, Contention> {
        let hash = self.hash(key);
        if let Some(outcome) = self.recall_rejection(hash, tier, now) {
            return Ok(outcome);
        }
        let index = u32::try_from((hash >> 1) % u64::from(self.buckets)).unwrap_or(0);
        let found = update(store, &self.bucket_key(index), MAX_CAS_RETRIES, |stored| {
            let mut bucket = self.read(stored, self.ways);
            let decided = self.find_slot(&bucket, hash, now).map(|slot| {
                let (decision, source) = self.decide_in_slot(&mut bucket, slot, hash, tier, now);
                // A rejection left the states as read (see `LimitGroup::decide`).
                let rejected = (decision.verdict == Verdict::Reject)
                    .then(|| self.slot_states(&bucket, slot).to_vec());
                (decision, source, rejected)
            });
            (decided, bucket)
        })?;
        if let Some((decision, source, rejected)) = found {
            if let Some(states) = rejected {
                self.remember_rejection(hash, tier, states, now, &decision);
            }
            return Ok(Outcome {
                decision,
                source,
                overflow: false,
            });
        }
        let (decision, source) = update(store, &self.overflow_key, MAX_CAS_RETRIES, |stored| {
            let mut bucket = self.read(stored, 1);
            let decided = self.decide_in_slot(&mut bucket, 0, 1, tier, now);
            (decided, bucket)
        })?;
        Ok(Outcome {
            decision,
            source,
            overflow: true,
        })
    }

    /// The answer to a request of `hash` (tier `tier`) at `now` from a remembered rejection,
    /// if it still rejects (see the module docs); forgets a rejection that no longer does.
    fn recall_rejection(&self, hash: u64, tier: Option<usize>, now: u64) -> Option<Outcome> {
        let mut rejections = self.rejections.borrow_mut();
        let i = rejections
            .iter()
            .position(|r| r.hash == hash && r.tier == tier)?;
        let remembered = rejections.get_mut(i)?;
        if now < remembered.until {
            let (decision, source) = self.layout.decide(&mut remembered.states, tier, now);
            if decision.verdict == Verdict::Reject {
                return Some(Outcome {
                    decision,
                    source,
                    overflow: false,
                });
            }
        }
        // Admitted (the states may have moved on): shared data decides from now on.
        rejections.remove(i);
        None
    }

    fn remember_rejection(
        &self,
        hash: u64,
        tier: Option<usize>,
        states: Vec<u8>,
        now: u64,
        decision: &Decision,
    ) {
        // `NEVER` (a cost that can never fit) saturates: such a request is always rejected.
        let until = now.saturating_add(decision.retry_after_ns);
        let mut rejections = self.rejections.borrow_mut();
        rejections.retain(|r| !(r.hash == hash && r.tier == tier));
        if rejections.len() >= REMEMBERED_REJECTIONS {
            rejections.remove(0);
        }
        rejections.push(Rejection {
            hash,
            tier,
            states,
            until,
        });
    }

    /// The stored bucket, or an empty one if it is missing or has another layout.
    fn read(&self, stored: Option<&[u8]>, ways: u32) -> Vec<u8> {
        let len = FINGERPRINT_LEN + self.slot_len() * ways as usize;
        match stored {
            Some(bytes)
                if bytes.len() == len && bytes.starts_with(&self.fingerprint.to_le_bytes()) =>
            {
                bytes.to_vec()
            }
            _ => self.empty_bucket(ways),
        }
    }

    fn slot_hash(&self, bucket: &[u8], slot: usize) -> u64 {
        let at = FINGERPRINT_LEN + slot * self.slot_len();
        bucket
            .get(at..at + HASH_LEN)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }

    fn slot_states<'b>(&self, bucket: &'b [u8], slot: usize) -> &'b [u8] {
        let at = FINGERPRINT_LEN + slot * self.slot_len() + HASH_LEN;
        bucket
            .get(at..at + self.layout.states_len())
            .unwrap_or_default()
    }

    /// The key's slot, else the first never-used slot, else the first idle one.
    fn find_slot(&self, bucket: &[u8], hash: u64, now: u64) -> Option<usize> {
        let slots = 0..bucket.len().saturating_sub(FINGERPRINT_LEN) / self.slot_len();
        slots
            .clone()
            .find(|&s| self.slot_hash(bucket, s) == hash)
            .or_else(|| slots.clone().find(|&s| self.slot_hash(bucket, s) == 0))
            .or_else(|| {
                slots
                    .clone()
                    .find(|&s| self.layout.is_idle(self.slot_states(bucket, s), now))
            })
    }

    /// Decides in `slot`, claiming it for `hash` (with fresh states) if another key had it.
    fn decide_in_slot(
        &self,
        bucket: &mut [u8],
        slot: usize,
        hash: u64,
        tier: Option<usize>,
        now: u64,
    ) -> (Decision, Source) {
        let at = FINGERPRINT_LEN + slot * self.slot_len();
        let states_len = self.layout.states_len();
        let Some(entry) = bucket.get_mut(at..at + HASH_LEN + states_len) else {
            return (reject_without_figures(), Source::Pool);
        };
        let (stored_hash, states) = entry.split_at_mut(HASH_LEN);
        if u64::from_le_bytes(stored_hash.try_into().unwrap_or_default()) != hash {
            stored_hash.copy_from_slice(&hash.to_le_bytes());
            states.fill(0);
        }
        self.layout.decide(states, tier, now)
    }
}

/// FNV-1a over `bytes`, starting from `seed` mixed into the offset basis.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 32-bit fingerprint of `text` (the table layout's description).
pub(crate) fn fingerprint(text: &str) -> u32 {
    let h = mix(fnv1a(0, text.as_bytes()));
    // Fold to 32 bits; the truncation is the point.
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use meshguard_core::{FixedWindow, Verdict};
    use meshguard_filter_common::MemoryStore;

    use super::*;
    use crate::config::BuiltLimit;

    const SEC: u64 = 1_000_000_000;

    fn table(max_keys: Option<u32>, requests: u32, tier_reserve: Option<u32>) -> Table {
        let fixed = |n| BuiltLimit::Fixed(FixedWindow::try_new(n, SEC).unwrap());
        let pool = LimitGroup::new(vec![fixed(requests)], 0, false);
        let tiers = tier_reserve
            .map(|n| vec![LimitGroup::new(vec![fixed(n)], pool.len(), false)])
            .unwrap_or_default();
        let layout = Layout { pool, tiers };
        Table::new("t/".into(), max_keys, layout, 7)
    }

    fn key(s: &str) -> Key {
        use crate::matching::KeyBuilder;
        use crate::request::fake::FakeRequest;
        let builder = KeyBuilder::new(&[crate::config::KeyPart::Header("k".into())]);
        builder
            .build(&FakeRequest::new("GET", "/").header("k", s))
            .unwrap()
    }

    fn verdict(t: &Table, store: &impl CasStore, k: &str, now: u64) -> Verdict {
        t.decide(store, &key(k), None, now)
            .unwrap()
            .decision
            .verdict
    }

    #[test]
    fn each_key_gets_its_own_limit() {
        let t = table(Some(64), 2, None);
        let store = MemoryStore::new();
        t.create(&store);
        for k in ["a", "b"] {
            assert_eq!(verdict(&t, &store, k, 0), Verdict::Allow);
            assert_eq!(verdict(&t, &store, k, 0), Verdict::Allow);
            assert_eq!(verdict(&t, &store, k, 0), Verdict::Reject);
        }
        assert_eq!(verdict(&t, &store, "a", SEC), Verdict::Allow);
    }

    #[test]
    fn create_makes_every_bucket_once() {
        let t = table(Some(20), 1, None);
        let store = MemoryStore::new();
        t.create(&store);
        assert_eq!(
            store.keys(),
            ["t/0", "t/1", "t/2", "t/overflow"],
            "20 keys → 3 buckets of 8"
        );
        assert_eq!(verdict(&t, &store, "a", 0), Verdict::Allow);
        let before = store
            .keys()
            .iter()
            .map(|k| store.get(k))
            .collect::<Vec<_>>();
        t.create(&store);
        let after = store
            .keys()
            .iter()
            .map(|k| store.get(k))
            .collect::<Vec<_>>();
        assert_eq!(before, after, "a second VM's configure changes nothing");
    }

    #[test]
    fn a_full_table_sends_new_keys_to_the_shared_overflow_slot() {
        // One bucket of 8 slots.
        let t = table(Some(8), 1, None);
        let store = MemoryStore::new();
        t.create(&store);
        for i in 0..8 {
            let out = t.decide(&store, &key(&format!("k{i}")), None, 0).unwrap();
            assert!(!out.overflow && out.decision.verdict == Verdict::Allow);
        }
        let first = t.decide(&store, &key("new1"), None, 0).unwrap();
        assert!(first.overflow);
        assert_eq!(first.decision.verdict, Verdict::Allow);
        let second = t.decide(&store, &key("new2"), None, 0).unwrap();
        assert!(second.overflow);
        assert_eq!(
            second.decision.verdict,
            Verdict::Reject,
            "overflow keys share one limit"
        );
        // Existing keys were not evicted: still limited.
        assert_eq!(verdict(&t, &store, "k3", 0), Verdict::Reject);
    }

    #[test]
    fn an_idle_slot_is_reused() {
        let t = table(Some(8), 1, None);
        let store = MemoryStore::new();
        t.create(&store);
        for i in 0..8 {
            t.decide(&store, &key(&format!("k{i}")), None, 0).unwrap();
        }
        // A second later every window has expired: the new key takes an idle slot.
        let out = t.decide(&store, &key("late"), None, SEC).unwrap();
        assert!(!out.overflow);
        assert_eq!(out.decision.verdict, Verdict::Allow);
        assert_eq!(verdict(&t, &store, "late", SEC), Verdict::Reject);
    }

    #[test]
    fn privileged_requests_use_their_reserve_then_the_pool() {
        let t = table(None, 2, Some(1));
        let store = MemoryStore::new();
        t.create(&store);
        let k = Key::unknown();
        let gold = |now| t.decide(&store, &k, Some(0), now).unwrap();
        assert_eq!(gold(0).source, Source::Reserved(0));
        let pooled = gold(0);
        assert_eq!(
            (pooled.source, pooled.decision.verdict),
            (Source::Pool, Verdict::Allow)
        );
        // One pool request left: a standard request takes it, then only nothing is left.
        assert_eq!(
            t.decide(&store, &k, None, 0).unwrap().decision.verdict,
            Verdict::Allow
        );
        assert_eq!(
            t.decide(&store, &k, None, 0).unwrap().decision.verdict,
            Verdict::Reject
        );
        assert_eq!(gold(0).decision.verdict, Verdict::Reject);
        // Next window: gold's reserve is back before the pool is touched.
        assert_eq!(gold(SEC).source, Source::Reserved(0));
    }

    #[test]
    fn a_bucket_of_another_layout_reads_as_empty() {
        let t = table(None, 1, None);
        let store = MemoryStore::new();
        store.set("t/0", b"something else", 0).unwrap();
        assert_eq!(verdict(&t, &store, "a", 0), Verdict::Allow);
        assert_eq!(verdict(&t, &store, "a", 0), Verdict::Reject);
    }

    /// A store that counts its reads.
    #[derive(Default)]
    struct Counting {
        store: MemoryStore,
        reads: std::cell::Cell<u32>,
    }

    impl CasStore for Counting {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.reads.set(self.reads.get() + 1);
            self.store.get(key)
        }

        fn set(
            &self,
            key: &str,
            value: &[u8],
            cas: u32,
        ) -> Result<(), meshguard_filter_common::CasError> {
            self.store.set(key, value, cas)
        }
    }

    #[test]
    fn repeated_rejections_are_answered_without_reading_shared_data() {
        let t = table(Some(64), 2, None);
        let store = Counting::default();
        t.create(&store);
        for _ in 0..2 {
            assert_eq!(verdict(&t, &store, "a", 0), Verdict::Allow);
        }
        let first = t.decide(&store, &key("a"), None, 100).unwrap();
        assert_eq!(first.decision.verdict, Verdict::Reject);
        let reads = store.reads.get();
        let again = t.decide(&store, &key("a"), None, SEC / 2).unwrap();
        assert_eq!(
            store.reads.get(),
            reads,
            "answered from the remembered states"
        );
        // The same figures a VM without the memory computes from shared data.
        let fresh = table(Some(64), 2, None);
        let shared = fresh.decide(&store, &key("a"), None, SEC / 2).unwrap();
        assert_eq!(again, shared);
        assert_eq!(again.decision.retry_after_ns, SEC / 2);
        // Another key is not answered from a's memory.
        assert_eq!(verdict(&t, &store, "b", SEC / 2), Verdict::Allow);
        // Once the window turns, shared data decides again.
        let reads = store.reads.get();
        assert_eq!(verdict(&t, &store, "a", SEC), Verdict::Allow);
        assert!(store.reads.get() > reads);
    }

    #[test]
    fn another_workers_admission_is_seen_when_the_limit_frees_up() {
        let worker1 = table(None, 1, None);
        let worker2 = table(None, 1, None);
        let store = MemoryStore::new();
        worker1.create(&store);
        assert_eq!(verdict(&worker1, &store, "k", 0), Verdict::Allow);
        assert_eq!(verdict(&worker1, &store, "k", 1), Verdict::Reject);
        // The window turns; worker 2 takes the one request of the new window.
        assert_eq!(verdict(&worker2, &store, "k", SEC), Verdict::Allow);
        // Worker 1's memory would admit at SEC, so it reads shared data and sees the spend.
        assert_eq!(verdict(&worker1, &store, "k", SEC + 1), Verdict::Reject);
        assert_eq!(verdict(&worker2, &store, "k", SEC + 2), Verdict::Reject);
    }

    #[test]
    fn overflow_rejections_are_not_remembered() {
        let t = table(Some(8), 1, None);
        let store = Counting::default();
        t.create(&store);
        for i in 0..9 {
            t.decide(&store, &key(&format!("k{i}")), None, 0).unwrap();
        }
        let out = t.decide(&store, &key("k8"), None, 1).unwrap();
        assert!(out.overflow && out.decision.verdict == Verdict::Reject);
        let reads = store.reads.get();
        t.decide(&store, &key("k8"), None, 2).unwrap();
        assert!(store.reads.get() > reads, "decided from shared data again");
    }

    #[test]
    fn the_memory_is_bounded() {
        let t = table(Some(1024), 1, None);
        let store = MemoryStore::new();
        t.create(&store);
        for i in 0..(REMEMBERED_REJECTIONS + 5) {
            let k = format!("k{i}");
            verdict(&t, &store, &k, 0);
            assert_eq!(verdict(&t, &store, &k, 0), Verdict::Reject);
        }
        assert_eq!(t.rejections.borrow().len(), REMEMBERED_REJECTIONS);
    }

    #[test]
    fn hashes_spread_over_buckets() {
        let t = table(Some(8 * 64), 1, None);
        let mut counts = [0u32; 64];
        for i in 0..6400 {
            let h = t.hash(&key(&format!("10.0.{}.{}", i / 256, i % 256)));
            counts[((h >> 1) % 64) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 60 && *max < 140, "{min}..{max}");
    }
}
