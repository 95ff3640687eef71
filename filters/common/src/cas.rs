//! State shared by every Envoy worker: small values behind a compare-and-swap store.
//!
//! Envoy's shared data (proxy-wasm `get/set_shared_data`, one map per `vm_id`) gives every
//! value a CAS token that changes on each write; a write carrying a stale token fails with
//! `CasMismatch`. [`update`] turns that into a bounded optimistic-concurrency loop: read,
//! compute, write with the token, re-read and recompute on a conflict. A conflict means another
//! worker committed in between, so the loop is lock-free (some worker always makes progress).
//!
//! One sharp edge of Envoy's `SharedData::set` (proxy-wasm-cpp-host `shared_data.cc`): the
//! token is only checked against a key that EXISTS. Writing a missing key always succeeds, so
//! two workers that both read "missing" and both create the key lose one of the two writes.
//! Create keys before traffic flows ([`ensure`] in `on_configure`), with a value that every
//! creator agrees on, and [`update`] never has to create.

use std::cell::RefCell;
use std::collections::HashMap;

/// A write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CasError {
    /// The key was written since it was read: re-read and retry.
    #[error("compare-and-swap mismatch: the value changed since it was read")]
    Mismatch,
}

/// [`update`] gave up: every attempt lost the race to another writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gave up after {attempts} conflicting compare-and-swap attempts")]
pub struct Contention {
    /// Attempts made (the first try plus the retries).
    pub attempts: u32,
}

/// A key-value store with compare-and-swap, as Envoy's shared data behaves.
pub trait CasStore {
    /// The value and its CAS token (never 0), or `None` when the key does not exist.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;

    /// Writes `value` if the key's token is still `cas`. A `cas` of 0 writes unconditionally,
    /// and so does any write to a missing key (Envoy's semantics, see the module docs).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasError>;
}

/// Read-modify-write of `key` with up to `max_retries` retries after CAS conflicts.
///
/// `f` gets the current value (`None`: the key does not exist) and returns its result and the
/// value to store; it runs once per attempt, so it must be a pure function of its input. When
/// the value to store equals the value read, nothing is written (a rejected request costs one
/// read and never makes other workers retry). Returns [`Contention`] when the retries ran out;
/// the caller decides what that means (the rate-limit filter denies and counts it).
pub fn update<S, T, F>(store: &S, key: &str, max_retries: u32, mut f: F) -> Result<T, Contention>
where
    S: CasStore + ?Sized,
    F: FnMut(Option<&[u8]>) -> (T, Vec<u8>),
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = store.get(key);
        let (out, next) = f(current.as_ref().map(|(value, _)| value.as_slice()));
        let cas = match &current {
            Some((value, _)) if *value == next => return Ok(out),
            Some((_, cas)) => *cas,
            None => 0,
        };
        match store.set(key, &next, cas) {
            Ok(()) => return Ok(out),
            Err(CasError::Mismatch) if attempts <= max_retries => {}
            Err(CasError::Mismatch) => return Err(Contention { attempts }),
        }
    }
}

/// Creates `key` with `value` unless it exists; returns whether it wrote. Use it before traffic
/// (e.g. in `on_configure`) so that [`update`] never has to create a key (see the module docs).
pub fn ensure<S: CasStore + ?Sized>(store: &S, key: &str, value: &[u8]) -> bool {
    if store.get(key).is_some() {
        return false;
    }
    store.set(key, value, 0).is_ok()
}

/// Envoy's shared data through proxy-wasm (`proxy_get_shared_data`/`proxy_set_shared_data`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SharedData;

impl CasStore for SharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match proxy_wasm::hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            // Envoy hands an empty value back as a null pointer with its token.
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            Ok((_, None)) | Err(_) => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasError> {
        let cas = (cas != 0).then_some(cas);
        proxy_wasm::hostcalls::set_shared_data(key, Some(value), cas)
            .map_err(|_| CasError::Mismatch)
    }
}

/// An in-memory [`CasStore`] with Envoy's semantics, for native tests of filter logic.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RefCell<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    data: HashMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.inner.borrow().data.keys().cloned().collect();
        keys.sort();
        keys
    }
}

impl CasStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.borrow().data.get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasError> {
        let mut inner = self.inner.borrow_mut();
        if let Some((_, current)) = inner.data.get(key) {
            if cas != 0 && cas != *current {
                return Err(CasError::Mismatch);
            }
        }
        inner.last_cas = inner.last_cas.checked_add(1).unwrap_or(1);
        let token = inner.last_cas;
        inner.data.insert(key.to_string(), (value.to_vec(), token));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A store where another "worker" writes the key between our read and our write, the
    /// first `conflicts` times.
    struct Racy {
        store: MemoryStore,
        conflicts: Cell<u32>,
    }

    impl CasStore for Racy {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            let read = self.store.get(key);
            if self.conflicts.get() > 0 {
                self.conflicts.set(self.conflicts.get() - 1);
                let (value, _) = read.clone().unwrap_or_default();
                let bumped = add_one(Some(&value));
                self.store.set(key, &bumped, 0).unwrap();
            }
            read
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasError> {
            self.store.set(key, value, cas)
        }
    }

    fn add_one(value: Option<&[u8]>) -> Vec<u8> {
        let n = value.and_then(|v| v.first().copied()).unwrap_or(0);
        vec![n + 1]
    }

    fn increment(store: &dyn CasStore, retries: u32) -> Result<u8, Contention> {
        update(store, "n", retries, |v| {
            let next = add_one(v);
            (next[0], next)
        })
    }

    #[test]
    fn update_creates_then_increments() {
        let store = MemoryStore::new();
        assert_eq!(increment(&store, 0), Ok(1));
        assert_eq!(increment(&store, 0), Ok(2));
        assert_eq!(store.get("n").unwrap().0, vec![2]);
    }

    #[test]
    fn conflicts_are_retried_and_no_increment_is_lost() {
        let racy = Racy {
            store: MemoryStore::new(),
            conflicts: Cell::new(0),
        };
        racy.store.set("n", &[0], 0).unwrap();
        racy.conflicts.set(3);
        // Three other writers got in first; the fourth attempt wins.
        assert_eq!(increment(&racy, 3), Ok(4));
        assert_eq!(racy.store.get("n").unwrap().0, vec![4]);
    }

    #[test]
    fn retries_are_bounded() {
        let racy = Racy {
            store: MemoryStore::new(),
            conflicts: Cell::new(0),
        };
        racy.store.set("n", &[0], 0).unwrap();
        racy.conflicts.set(10);
        assert_eq!(increment(&racy, 2), Err(Contention { attempts: 3 }));
        // Only the other writers' increments landed.
        assert_eq!(racy.store.get("n").unwrap().0, vec![3]);
    }

    #[test]
    fn an_unchanged_value_is_not_written() {
        let store = MemoryStore::new();
        store.set("k", b"v", 0).unwrap();
        let (_, before) = store.get("k").unwrap();
        let out = update(&store, "k", 0, |v| ((), v.unwrap_or_default().to_vec()));
        assert_eq!(out, Ok(()));
        assert_eq!(
            store.get("k").unwrap().1,
            before,
            "token unchanged: no write"
        );
    }

    #[test]
    fn memory_store_checks_tokens_like_envoy() {
        let store = MemoryStore::new();
        // A missing key accepts any token.
        store.set("k", b"a", 42).unwrap();
        let (_, cas) = store.get("k").unwrap();
        assert_ne!(cas, 0);
        assert_eq!(store.set("k", b"b", cas + 1), Err(CasError::Mismatch));
        store.set("k", b"b", cas).unwrap();
        assert_eq!(store.set("k", b"c", cas), Err(CasError::Mismatch));
        store.set("k", b"c", 0).unwrap();
        assert_eq!(store.get("k").unwrap().0, b"c");
    }

    #[test]
    fn ensure_creates_only_missing_keys() {
        let store = MemoryStore::new();
        assert!(ensure(&store, "k", b"init"));
        store.set("k", b"used", 0).unwrap();
        assert!(!ensure(&store, "k", b"init"));
        assert_eq!(store.get("k").unwrap().0, b"used");
    }
}
