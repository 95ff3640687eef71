//! proxy-wasm ABI 0.2.1 constants and the wire format of header maps.
//!
//! Numbers follow the spec (proxy-wasm/spec, abi-versions/v0.2.1) and Envoy's
//! proxy-wasm-cpp-host `include/proxy-wasm/wasm_api_impl.h` / `proxy_wasm_enums.h`.

/// Result of a host call, as the guest sees it (`WasmResult` in proxy-wasm-cpp-host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The key, context, queue or property does not exist.
    NotFound = 1,
    /// An argument was rejected (unknown type, unknown cluster, missing header…).
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// A value could not be parsed.
    ParseFailure = 4,
    /// An expression was malformed.
    BadExpression = 5,
    /// A pointer or length points outside the guest's memory.
    InvalidMemoryAccess = 6,
    /// A shared queue had nothing to dequeue.
    Empty = 7,
    /// The compare-and-swap token did not match the current value's.
    CasMismatch = 8,
    /// A result did not match what was expected.
    ResultMismatch = 9,
    /// The host failed internally.
    InternalFailure = 10,
    /// The connection or stream is gone.
    BrokenConnection = 11,
    /// The host does not implement this call.
    Unimplemented = 12,
}

impl Status {
    /// The raw value returned to the guest.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// What a guest's stream callback returned, after Envoy's conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Iteration continues to the next filter.
    Continue,
    /// Iteration stops until the filter resumes the stream.
    Pause,
}

impl Action {
    pub(crate) fn from_raw(v: u32) -> Action {
        // Envoy treats every non-zero header/data status as a stop of some kind.
        if v == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// Log levels of `proxy_log` / `proxy_get_log_level`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Most verbose.
    Trace = 0,
    /// Debugging detail.
    Debug = 1,
    /// Normal operation (Envoy's default).
    Info = 2,
    /// Something unexpected.
    Warn = 3,
    /// A failure.
    Error = 4,
    /// A failure that stops the module.
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_raw(v: u32) -> Option<LogLevel> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// Buffer types of `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufferType {
    HttpRequestBody,
    HttpResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub(crate) fn from_raw(v: u32) -> Option<BufferType> {
        Some(match v {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// Header map types of the `proxy_*_header_map_*` calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub(crate) fn from_raw(v: u32) -> Option<MapType> {
        Some(match v {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Stream types of `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamType {
    HttpRequest,
    HttpResponse,
    Downstream,
    Upstream,
}

impl StreamType {
    pub(crate) fn from_raw(v: u32) -> Option<StreamType> {
        Some(match v {
            0 => StreamType::HttpRequest,
            1 => StreamType::HttpResponse,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge that goes up and down.
    Gauge,
    /// Histogram of recorded values.
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_raw(v: u32) -> Option<MetricKind> {
        Some(match v {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }
}

/// An ordered list of header (or metadata) pairs, as Envoy keeps them.
pub type Headers = Vec<(String, String)>;

/// Serializes pairs in the proxy-wasm map format: a u32 count, then per pair the
/// u32 key and value lengths, then every key and value followed by a NUL byte.
pub(crate) fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut size = 4 + pairs.len() * 8;
    for (k, v) in pairs {
        size += k.as_ref().len() + v.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses the proxy-wasm map format; `None` when the bytes are not a valid map.
pub(crate) fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let count = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    // Each pair needs at least 10 bytes (two lengths, two NULs): reject absurd counts
    // before allocating.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut lens = Vec::with_capacity(count);
    let mut pos = 4;
    for _ in 0..count {
        let k = u32::from_le_bytes(bytes.get(pos..pos + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(pos + 4..pos + 8)?.try_into().ok()?) as usize;
        lens.push((k, v));
        pos += 8;
    }
    let mut pairs = Vec::with_capacity(count);
    for (k, v) in lens {
        let key = bytes.get(pos..pos.checked_add(k)?)?.to_vec();
        pos += k + 1;
        let value = bytes.get(pos..pos.checked_add(v)?)?.to_vec();
        pos += v + 1;
        if pos > bytes.len() {
            return None;
        }
        pairs.push((key, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_the_spec_format() {
        let pairs = vec![
            (":path".to_string(), "/a".to_string()),
            ("x".into(), "".into()),
        ];
        let bytes = encode_pairs(&pairs);
        assert_eq!(&bytes[0..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &5u32.to_le_bytes());
        assert_eq!(&bytes[20..27], b":path\0/");
        let back = decode_pairs(&bytes).unwrap_or_default();
        assert_eq!(
            back,
            vec![
                (b":path".to_vec(), b"/a".to_vec()),
                (b"x".to_vec(), b"".to_vec())
            ]
        );
    }

    #[test]
    fn truncated_maps_are_rejected() {
        let bytes = encode_pairs(&[("key", "value")]);
        for cut in 0..bytes.len() - 1 {
            assert_eq!(decode_pairs(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_pairs(&u32::MAX.to_le_bytes()), None);
    }
}
