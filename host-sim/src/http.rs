//! Requests, responses and property values a test hands to the host.

use crate::abi::Headers;

/// A downstream request to drive through the filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Headers including `:method`, `:path`, `:authority` and `:scheme`.
    pub headers: Headers,
    /// Body chunks, delivered one `on_request_body` call each.
    pub body: Vec<Vec<u8>>,
    /// Trailers, if any.
    pub trailers: Option<Headers>,
    /// Properties for this stream (`source.address`, `connection.uri_san_peer_certificate`…).
    pub properties: Vec<(String, PropertyValue)>,
}

impl Request {
    /// A request with the four pseudo-headers Envoy always has.
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            headers: vec![
                (":authority".into(), "example.com".into()),
                (":path".into(), path.into()),
                (":method".into(), method.into()),
                (":scheme".into(), "http".into()),
            ],
            ..Request::default()
        }
    }

    /// A GET request.
    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    /// A POST request.
    pub fn post(path: &str) -> Request {
        Request::new("POST", path)
    }

    /// Adds a header (names are lowercased, as Envoy's codecs do).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Replaces every value of a header (use it to change a pseudo-header).
    pub fn set_header(mut self, name: &str, value: &str) -> Request {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(k, _)| *k != name);
        self.headers.push((name, value.into()));
        self
    }

    /// Appends one body chunk.
    pub fn body(mut self, chunk: impl Into<Vec<u8>>) -> Request {
        self.body.push(chunk.into());
        self
    }

    /// Adds a trailer.
    pub fn trailer(mut self, name: &str, value: &str) -> Request {
        self.trailers
            .get_or_insert_with(Vec::new)
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets a property for this stream.
    pub fn property(mut self, path: &str, value: PropertyValue) -> Request {
        self.properties.push((path.into(), value));
        self
    }
}

/// A response from the upstream (or the test) to drive back through the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code (becomes `:status`).
    pub status: u16,
    /// Headers other than `:status`.
    pub headers: Headers,
    /// Body chunks, one `on_response_body` call each.
    pub body: Vec<Vec<u8>>,
    /// Trailers, if any.
    pub trailers: Option<Headers>,
}

impl Response {
    /// A response with a status and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            trailers: None,
        }
    }

    /// `200` with body `ok`, what host-sim's default upstream answers.
    pub fn ok() -> Response {
        Response::new(200)
            .header("content-type", "text/plain")
            .body("ok")
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Appends one body chunk.
    pub fn body(mut self, chunk: impl Into<Vec<u8>>) -> Response {
        self.body.push(chunk.into());
        self
    }

    /// Adds a trailer.
    pub fn trailer(mut self, name: &str, value: &str) -> Response {
        self.trailers
            .get_or_insert_with(Vec::new)
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// The headers with `:status` first, as Envoy presents them to filters.
    pub fn headers_with_status(&self) -> Headers {
        let mut h = vec![(":status".to_string(), self.status.to_string())];
        h.extend(self.headers.iter().cloned());
        h
    }
}

/// A property value, encoded the way Envoy serializes CEL values for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropertyValue {
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A string (raw UTF-8 bytes).
    String(String),
    /// An integer: 8 bytes little-endian (also durations and timestamps in ns).
    Int(i64),
    /// A boolean: one byte.
    Bool(bool),
    /// A map (e.g. `request.headers`): the proxy-wasm pairs format.
    Map(Headers),
}

impl PropertyValue {
    /// The bytes `proxy_get_property` returns.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PropertyValue::Bytes(b) => b.clone(),
            PropertyValue::String(s) => s.as_bytes().to_vec(),
            PropertyValue::Int(i) => i.to_le_bytes().to_vec(),
            PropertyValue::Bool(b) => vec![u8::from(*b)],
            PropertyValue::Map(m) => crate::abi::encode_pairs(m),
        }
    }
}

impl From<&str> for PropertyValue {
    fn from(s: &str) -> Self {
        PropertyValue::String(s.to_string())
    }
}
