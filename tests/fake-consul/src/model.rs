//! The values tests hand to and get back from the fake: instances, health, faults, options,
//! recorded requests.

use std::collections::BTreeMap;
use std::time::Duration;

/// A check status, as Consul spells it in `Status` (`passing`, `warning`, `critical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// `passing`.
    Passing,
    /// `warning`.
    Warning,
    /// `critical`.
    Critical,
}

impl Health {
    /// Consul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    /// Parses Consul's spelling (`passing`, `warning`, `critical`), case-sensitively.
    pub fn parse(s: &str) -> Option<Health> {
        match s {
            "passing" => Some(Health::Passing),
            "warning" => Some(Health::Warning),
            "critical" => Some(Health::Critical),
            _ => None,
        }
    }
}

/// `Service.Weights`: the DNS/load-balancing weight while passing and while warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Weights {
    /// Weight while every check passes (Consul requires at least 1).
    pub passing: u32,
    /// Weight while some check warns (0 takes the instance out).
    pub warning: u32,
}

impl Default for Weights {
    /// Consul's default: 1/1.
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One service instance in the catalog, with its node and its service check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `Service.ID`; unique in the fake (registering the same id again replaces it).
    pub id: String,
    /// `Service.Service`, the service name.
    pub service: String,
    /// `Service.Address` (may be empty: clients then use `Node.Address`).
    pub address: String,
    /// `Service.Port`.
    pub port: u16,
    /// `Service.Tags`.
    pub tags: Vec<String>,
    /// `Service.Meta`.
    pub meta: BTreeMap<String, String>,
    /// `Service.Weights`.
    pub weights: Weights,
    /// `Node.Node`; default `node-1`.
    pub node: String,
    /// `Node.Address`; default `127.0.0.1`.
    pub node_address: String,
    /// `Node.Datacenter`; empty means the fake's datacenter (filled in on registration).
    /// Instances of a datacenter the fake does not serve ([`Options::datacenters`]) are kept
    /// but not served over HTTP.
    pub datacenter: String,
    /// The status of the instance's service check (`service:<id>`); when read back from
    /// [`crate::FakeConsul::instances`], the worst status of all its service checks.
    pub health: Health,
}

impl Instance {
    /// An instance with no tags or meta, weights 1/1, on `node-1` at `127.0.0.1`, passing.
    pub fn new(id: &str, service: &str, address: &str, port: u16) -> Instance {
        Instance {
            id: id.to_owned(),
            service: service.to_owned(),
            address: address.to_owned(),
            port,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weights: Weights::default(),
            node: "node-1".to_owned(),
            node_address: "127.0.0.1".to_owned(),
            datacenter: String::new(),
            health: Health::Passing,
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, t: &str) -> Self {
        self.tags.push(t.to_owned());
        self
    }

    /// Sets one `Service.Meta` entry.
    pub fn meta(mut self, k: &str, v: &str) -> Self {
        self.meta.insert(k.to_owned(), v.to_owned());
        self
    }

    /// Sets `Service.Weights`.
    pub fn weights(mut self, passing: u32, warning: u32) -> Self {
        self.weights = Weights { passing, warning };
        self
    }

    /// Sets the service check's status.
    pub fn health(mut self, h: Health) -> Self {
        self.health = h;
        self
    }

    /// Places the instance on another node.
    pub fn node(mut self, name: &str, address: &str) -> Self {
        self.node = name.to_owned();
        self.node_address = address.to_owned();
        self
    }

    /// Places the instance in a datacenter.
    pub fn datacenter(mut self, dc: &str) -> Self {
        self.datacenter = dc.to_owned();
        self
    }
}

/// A failure the fake injects into every request until [`crate::FakeConsul::clear_fault`].
/// Requests are recorded before the fault applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a short `text/plain` body (no `X-Consul-Index`).
    Status(u16),
    /// Wait this long, then answer normally (a blocking query then starts blocking).
    Delay(Duration),
    /// Close the connection without answering.
    Reset,
    /// Answer reads with 200, the normal headers and the JSON body cut in half.
    MalformedBody,
    /// Answer reads at once, with an `X-Consul-Index` lower than the request's `index`
    /// (or than the current index when the request has none), as after a snapshot restore.
    IndexGoesBackwards,
    /// Answer reads at once with `X-Consul-Index: 0`.
    IndexZero,
}

/// How a [`crate::FakeConsul`] behaves; every field has a default.
#[derive(Debug, Clone)]
pub struct Options {
    /// The datacenter this agent is in: reads without `?dc=` and HTTP registrations go
    /// there. Default `dc1`.
    pub datacenter: String,
    /// Further datacenters the fake serves, each a separate cluster (its own raft index,
    /// per-service indexes and KV), selected with `?dc=`; `?dc=` naming one neither here nor
    /// `datacenter` answers Consul's 500 `No path to datacenter`. `/v1/catalog/datacenters`
    /// lists `datacenter` first, then these in order. Default empty: just the local one.
    pub datacenters: Vec<String>,
    /// Longest a blocking query waits, whatever its `wait` asks; also the wait when a
    /// query has `index` but no `wait`. Default 10 s.
    pub max_wait: Duration,
    /// Node name of the agent (where `PUT /v1/agent/service/register` puts services).
    /// Default `node-1`.
    pub node: String,
    /// Address of the agent's node. Default `127.0.0.1`.
    pub node_address: String,
    /// Largest request head (request line and headers), in bytes; more answers 431.
    /// Default 64 KiB.
    pub max_header_bytes: usize,
    /// Largest request body, in bytes; more answers 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Most connections served at once; more are closed at once. Default 256 (a Consul
    /// agent's `limits.http_max_conns_per_client` defaults to 200 per client IP; a client
    /// holding one blocking query per service needs it raised above its service count).
    pub max_connections: usize,
    /// Most requests kept for [`crate::FakeConsul::requests`]; the oldest are dropped
    /// first. Default 100 000.
    pub max_recorded_requests: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            datacenter: "dc1".to_owned(),
            datacenters: Vec::new(),
            max_wait: Duration::from_secs(10),
            node: "node-1".to_owned(),
            node_address: "127.0.0.1".to_owned(),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            max_connections: 256,
            max_recorded_requests: 100_000,
        }
    }
}

/// One HTTP request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The percent-decoded path, without the query.
    pub path: String,
    /// The query parameters in order, decoded as Go's `url.ParseQuery` does (`+` is a space).
    pub query: Vec<(String, String)>,
    /// The request target exactly as sent (path and query).
    pub raw_target: String,
    /// The headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (chunked bodies de-chunked).
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
