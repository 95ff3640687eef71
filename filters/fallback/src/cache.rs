//! The `cache` fallback's storage: the last good response per breaker and request, in a fixed
//! number of shared-data slots so memory stays bounded (proxy-wasm cannot delete keys).
//!
//! A request's cache key is its method and full path (query included); it hashes (FNV-1a, the
//! same in every VM) to one of `max_entries` slots `mg:fc:<breaker>:<slot>`. A slot holds one
//! entry with its key, so a colliding request misses instead of getting another path's
//! response; the newest store wins the slot (a plain write: a cache needs no CAS).

/// One stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The request's cache key (method and path).
    pub(crate) key: String,
    /// When the entry stops being served (ns, the filter's clock).
    pub(crate) expires_ns: u64,
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// Response headers not stored: hop-by-hop, framing, per-response and cookies.
const SKIPPED: [&str; 10] = [
    "connection",
    "content-length",
    "date",
    "keep-alive",
    "set-cookie",
    "transfer-encoding",
    "upgrade",
    "x-envoy-upstream-service-time",
    "x-meshguard-breaker",
    "age",
];

/// The cache key of a request, or `None` when its response must not be cached (not a GET).
pub(crate) fn request_key(method: &str, path: &str) -> Option<String> {
    (method == "GET").then(|| format!("GET {path}"))
}

/// Whether a response may be stored: a 200 without `no-store` or `private`.
pub(crate) fn cacheable(status: u16, cache_control: Option<&str>) -> bool {
    status == 200
        && !cache_control.is_some_and(|c| {
            let c = c.to_ascii_lowercase();
            c.contains("no-store") || c.contains("private")
        })
}

/// The headers worth storing.
pub(crate) fn stored_headers(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter(|(name, _)| !name.starts_with(':') && !SKIPPED.contains(&name.as_str()))
        .collect()
}

/// The shared-data key of `key`'s slot.
pub(crate) fn slot_key(breaker: &str, key: &str, max_entries: u32) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mg:fc:{breaker}:{}", hash % u64::from(max_entries.max(1)))
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

impl Entry {
    /// Version byte, expiry, status, key, header count, headers, body; lengths are u32 LE.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend_from_slice(&self.expires_ns.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        put(&mut out, self.key.as_bytes());
        let n = u32::try_from(self.headers.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        for (name, value) in &self.headers {
            put(&mut out, name.as_bytes());
            put(&mut out, value.as_bytes());
        }
        put(&mut out, &self.body);
        out
    }

    /// Decodes an entry; `None` for anything else (an empty slot, another version, garbage).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(1)? != [1] {
            return None;
        }
        let expires_ns = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let key = r.string()?;
        let n = r.u32()?;
        let mut headers = Vec::new();
        for _ in 0..n {
            headers.push((r.string()?, r.string()?));
        }
        let body = r.bytes()?.to_vec();
        r.0.is_empty().then_some(Self {
            key,
            expires_ns,
            status,
            headers,
            body,
        })
    }

    /// The entry for `key` if it is this one and still fresh at `now`.
    pub(crate) fn lookup(bytes: &[u8], key: &str, now: u64) -> Option<Self> {
        Self::decode(bytes).filter(|e| e.key == key && now < e.expires_ns)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            key: "GET /a?b=1".into(),
            expires_ns: 100,
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn entries_round_trip_and_expire() {
        let bytes = entry().encode();
        assert_eq!(Entry::decode(&bytes), Some(entry()));
        assert_eq!(Entry::lookup(&bytes, "GET /a?b=1", 99), Some(entry()));
        assert_eq!(Entry::lookup(&bytes, "GET /a?b=1", 100), None, "expired");
        assert_eq!(Entry::lookup(&bytes, "GET /a?b=2", 0), None, "another key");
        assert_eq!(Entry::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Entry::decode(&[]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), None);
    }

    #[test]
    fn only_get_200s_without_no_store_are_cached() {
        assert_eq!(request_key("GET", "/a?x"), Some("GET /a?x".into()));
        assert_eq!(request_key("POST", "/a"), None);
        assert!(cacheable(200, None));
        assert!(cacheable(200, Some("max-age=60")));
        assert!(!cacheable(200, Some("No-Store")));
        assert!(!cacheable(200, Some("private, max-age=1")));
        assert!(!cacheable(203, None));
    }

    #[test]
    fn slots_are_bounded_and_stable() {
        let a = slot_key("b", "GET /a", 4);
        assert_eq!(a, slot_key("b", "GET /a", 4));
        let slots: std::collections::BTreeSet<String> = (0..100)
            .map(|i| slot_key("b", &format!("GET /{i}"), 4))
            .collect();
        assert_eq!(slots.len(), 4);
        assert!(slots.iter().all(|s| s.starts_with("mg:fc:b:")));
    }

    #[test]
    fn per_response_headers_are_not_stored() {
        let kept = stored_headers(vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "text/plain".into()),
            ("content-length".into(), "2".into()),
            ("set-cookie".into(), "a=b".into()),
            ("x-version".into(), "7".into()),
        ]);
        assert_eq!(
            kept,
            vec![
                ("content-type".to_string(), "text/plain".to_string()),
                ("x-version".to_string(), "7".to_string())
            ]
        );
    }
}
