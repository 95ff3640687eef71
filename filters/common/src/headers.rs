//! A whole header map read with ONE host call and looked up in place.
//!
//! Each `proxy_get_header_map_value` is a round trip through Envoy's V8 (plus a call back into
//! the guest's allocator when the header exists). A filter that needs several headers of one
//! map (`:status`, `grpc-status`, `content-length`...) pays that per header; reading the map's
//! pairs once (`proxy_get_header_map_pairs`) costs one round trip and one allocation, and the
//! SDK's own `get_http_*_headers` would then allocate two strings per header, which this
//! parser does not.
//!
//! Wire format (proxy-wasm ABI): a u32 pair count, then per pair the u32 lengths of name and
//! value, then per pair the name bytes, NUL, the value bytes, NUL; all little-endian.

use std::borrow::Cow;

use proxy_wasm::types::{MapType, Status};

extern "C" {
    // The SDK's own declaration (proxy-wasm 0.2.5 `hostcalls.rs`), with the same types.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// A header map as the host serialized it; lookups walk it in place. Names are compared as
/// bytes and only the value asked for is decoded, so a lookup costs a scan of the lengths and
/// one comparison per pair (no UTF-8 validation of the rest: in a Wasm VM without SIMD that
/// validation was most of a lookup's cost).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    bytes: Vec<u8>,
}

impl HeaderMap {
    /// The current stream's response headers (empty when the host has none or refuses).
    pub fn response_headers() -> Self {
        Self::read(MapType::HttpResponseHeaders)
    }

    /// The current stream's request headers (empty when the host has none or refuses).
    pub fn request_headers() -> Self {
        Self::read(MapType::HttpRequestHeaders)
    }

    /// The headers of the `dispatch_http_call` answer being handled (in
    /// `on_http_call_response`; empty otherwise).
    pub fn http_call_response_headers() -> Self {
        Self::read(MapType::HttpCallResponseHeaders)
    }

    fn read(map: MapType) -> Self {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer to `size` bytes it allocated through this module's
        // allocator (or a null pointer), exactly as for the SDK's `get_map`, which frees the
        // buffer the same way; on any other status nothing was allocated.
        let bytes = unsafe {
            match proxy_get_header_map_pairs(map, &mut data, &mut size) {
                Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
                _ => Vec::new(),
            }
        };
        Self { bytes }
    }

    /// A map from the ABI's serialized form (for tests; filters use the readers above).
    pub fn from_serialized(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// Every pair in order as bytes; stops at the first malformed one (a host bug, never a
    /// panic).
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        Pairs::new(&self.bytes)
    }

    /// Every pair in order, read as text: a name or value that is not UTF-8 (a client can send
    /// any octet in a value) is read lossily, each invalid sequence becoming U+FFFD.
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        self.pairs()
            .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
    }

    /// The first value of header `name` (Envoy stores names in lower case), read as text
    /// (lossily when it is not UTF-8), if present.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get_bytes(name).map(String::from_utf8_lossy)
    }

    /// The first value of header `name` as bytes, if present.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        self.pairs().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Whether header `name` is present (whatever its value's bytes).
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// Whether [`pairs`](Self::pairs) reads every pair the host declared: false only for a
    /// malformed map (a host bug), so a caller that must see every copy of a header, or know
    /// one absent, can fall back to single reads.
    pub fn is_intact(&self) -> bool {
        self.pairs().count() == read_u32(&self.bytes, 0).unwrap_or(0)
    }

    /// Every pair as owned strings, or `None` when a name or value is not UTF-8 (for a copy
    /// that must carry every byte verbatim, which a `String` cannot).
    pub fn to_utf8_vec(&self) -> Option<Vec<(String, String)>> {
        self.pairs()
            .map(|(k, v)| {
                Some((
                    String::from_utf8(k.to_vec()).ok()?,
                    String::from_utf8(v.to_vec()).ok()?,
                ))
            })
            .collect()
    }

    /// Every pair as owned strings, like the SDK's `get_http_*_headers` but never trapping:
    /// a name or value that is not UTF-8 is read lossily.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// One request header's first value, read as bytes and then as text: a value that is not
/// UTF-8 is read lossily (each invalid sequence becoming U+FFFD). Use it instead of the SDK's
/// `get_http_request_header`, whose `String` reader traps on such a value, and a client can
/// send any octet (the trap would take the worker's VM down).
pub fn request_header(name: &str) -> Option<String> {
    header_value(MapType::HttpRequestHeaders, name)
}

/// Like [`request_header`], for the response headers.
pub fn response_header(name: &str) -> Option<String> {
    header_value(MapType::HttpResponseHeaders, name)
}

fn header_value(map: MapType, name: &str) -> Option<String> {
    proxy_wasm::hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(|v| match String::from_utf8(v) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
}

/// Walks the serialized pairs.
struct Pairs<'a> {
    /// The lengths table still to read.
    sizes: &'a [u8],
    /// The names and values still to read.
    data: &'a [u8],
    left: usize,
}

impl<'a> Pairs<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let count = read_u32(bytes, 0).unwrap_or(0);
        let end = count.checked_mul(8).and_then(|table| table.checked_add(4));
        match end.and_then(|end| Some((bytes.get(4..end)?, bytes.get(end..)?))) {
            Some((sizes, data)) => Self {
                sizes,
                data,
                left: count,
            },
            _ => Self {
                sizes: &[],
                data: &[],
                left: 0,
            },
        }
    }

    /// `len` bytes and the NUL after them.
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let text = self.data.get(..len)?;
        if self.data.get(len) != Some(&0) {
            return None;
        }
        self.data = self.data.get(len + 1..)?;
        Some(text)
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let pair = (|| {
            let name_len = read_u32(self.sizes, 0)?;
            let value_len = read_u32(self.sizes, 4)?;
            self.sizes = self.sizes.get(8..)?;
            Some((self.take(name_len)?, self.take(value_len)?))
        })();
        if pair.is_none() {
            self.left = 0;
        }
        pair
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(v.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn finds_the_first_value_of_a_header() {
        let map = HeaderMap::from_serialized(serialize(&[
            (":status", "200"),
            ("set-cookie", "a"),
            ("set-cookie", "b"),
            ("x-empty", ""),
        ]));
        assert_eq!(map.get(":status").as_deref(), Some("200"));
        assert_eq!(map.get("set-cookie").as_deref(), Some("a"));
        assert_eq!(map.get("x-empty").as_deref(), Some(""));
        assert_eq!(map.get("grpc-status"), None);
        assert!(map.contains("x-empty") && !map.contains("grpc-status"));
        assert_eq!(map.iter().count(), 4);
        assert_eq!(map.to_vec()[2], ("set-cookie".into(), "b".into()));
        assert!(map.is_intact() && HeaderMap::default().is_intact());
    }

    #[test]
    fn empty_and_malformed_maps_read_as_what_is_intact() {
        assert_eq!(HeaderMap::default().iter().count(), 0);
        assert_eq!(HeaderMap::from_serialized(vec![1, 0]).iter().count(), 0);
        // A count larger than the table: nothing is trusted.
        let mut lying = serialize(&[("a", "1")]);
        lying[0] = 9;
        assert_eq!(HeaderMap::from_serialized(lying).get("a"), None);
        // A truncated second pair: the first still reads, the rest is dropped.
        let mut cut = serialize(&[("a", "1"), ("bb", "22")]);
        cut.truncate(cut.len() - 2);
        let cut = HeaderMap::from_serialized(cut);
        assert_eq!(
            cut.pairs().collect::<Vec<_>>(),
            vec![(&b"a"[..], &b"1"[..])]
        );
        assert!(!cut.is_intact());
        // A missing NUL terminator.
        let mut no_nul = serialize(&[("a", "1")]);
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert_eq!(HeaderMap::from_serialized(no_nul).get("a"), None);
    }

    /// A client can send any octet in a value: such a value is still found (as bytes, and as
    /// text with U+FFFD), and the pairs after it still read, so a header is never taken for
    /// absent because another one is not UTF-8.
    #[test]
    fn a_value_that_is_not_utf8_hides_nothing() {
        let mut bytes = serialize(&[("x-bin", "ab"), ("x-after", "1")]);
        // The value "ab" starts after the count, the table (2 pairs) and "x-bin\0".
        let at = 4 + 16 + 6;
        bytes[at] = 0xff;
        let map = HeaderMap::from_serialized(bytes);
        assert!(map.is_intact());
        assert_eq!(map.get_bytes("x-bin"), Some(&[0xff, b'b'][..]));
        assert_eq!(map.get("x-bin").as_deref(), Some("\u{fffd}b"));
        assert_eq!(map.get("x-after").as_deref(), Some("1"));
        assert!(map.contains("x-after"));
        assert_eq!(map.to_utf8_vec(), None, "not carried verbatim");
        assert_eq!(map.to_vec()[0].1, "\u{fffd}b");
        let clean = HeaderMap::from_serialized(serialize(&[("a", "1")]));
        assert_eq!(clean.to_utf8_vec(), Some(vec![("a".into(), "1".into())]));
    }
}
