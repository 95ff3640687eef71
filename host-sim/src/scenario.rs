//! Scenario files: a YAML (or JSON) script of requests, clock steps, callout
//! answers and expectations, replayed against a module in one deterministic host.
//!
//! The format is documented with a full example in `host-sim/scenarios/README.md`.
//! Parsing is strict (`deny_unknown_fields`, exactly one action per step) so a typo
//! is an error naming the step and field, never a silently skipped check.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::abi::{Headers, LogLevel};
use crate::error::{Error, Result};
use crate::host::{FailurePolicy, GrpcEvent, Host, StreamId, StreamView};
use crate::http::{PropertyValue, Request, Response};
use crate::module::Module;

/// Most VMs a scenario may ask for: each one is a full wasmtime instance.
const MAX_WORKERS: usize = 64;

/// Longest response body quoted in a failure message, in characters.
const MAX_QUOTED: usize = 80;

// ---- the file format --------------------------------------------------------------

/// A scalar read as text. YAML plain scalars keep their spelling (`1.10` stays
/// `1.10`); numbers and booleans from other formats are printed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Header-like pairs, in file order: a map `{name: value}` or a list whose items
/// are `[name, value]` or `{name: value}` (a list allows repeated names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pairs(Headers);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of name: value, or a list of [name, value] pairs")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some((Text(k), Text(v))) = map.next_entry::<Text, Text>()? {
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(Pair(k, v)) = seq.next_element::<Pair>()? {
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// One item of a pair list: `[name, value]` or `{name: value}`.
struct Pair(String, String);

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pair;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [name, value] pair or a one-entry map {name: value}")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Pair, A::Error> {
                let k: Text = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let v: Text = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Pair(k.0, v.0))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Pair, A::Error> {
                let (k, v) = map
                    .next_entry::<Text, Text>()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(2, &self));
                }
                Ok(Pair(k.0, v.0))
            }
        }
        d.deserialize_any(V)
    }
}

/// A body: one string, or a list of strings delivered as separate chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Chunks(Vec<Vec<u8>>);

impl<'de> Deserialize<'de> for Chunks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Chunks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings (one per body chunk)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Chunks, E> {
                Ok(Chunks(vec![v.as_bytes().to_vec()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Chunks, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Chunks, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Chunks, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Chunks, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Chunks, A::Error> {
                let mut out = Vec::new();
                while let Some(Text(chunk)) = seq.next_element::<Text>()? {
                    out.push(chunk.into_bytes());
                }
                Ok(Chunks(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A stream property: a string, an integer, a boolean or a map of strings.
struct Prop(PropertyValue);

impl<'de> Deserialize<'de> for Prop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Prop;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer, a boolean or a map of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Prop, E> {
                Ok(Prop(PropertyValue::String(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Prop, E> {
                Ok(Prop(PropertyValue::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Prop, E> {
                i64::try_from(v)
                    .map(|v| Prop(PropertyValue::Int(v)))
                    .map_err(|_| E::custom(format!("integer {v} does not fit in an i64")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Prop, E> {
                Ok(Prop(PropertyValue::Bool(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Prop, A::Error> {
                let pairs = Pairs::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Prop(PropertyValue::Map(pairs.0)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Stream properties in file order.
#[derive(Clone, Debug, Default)]
struct Props(Vec<(String, PropertyValue)>);

impl<'de> Deserialize<'de> for Props {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Props;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of property path: value")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Props, A::Error> {
                let mut out = Vec::new();
                while let Some((Text(k), Prop(v))) = map.next_entry::<Text, Prop>()? {
                    out.push((k, v));
                }
                Ok(Props(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A map in file order with values of type `T`.
#[derive(Clone, Debug)]
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((Text(k), v)) = map.next_entry::<Text, T>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A configuration: a string used verbatim, or any YAML value rendered as JSON.
#[derive(Clone, Debug)]
struct ConfigBytes(Vec<u8>);

impl<'de> Deserialize<'de> for ConfigBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Null => Ok(ConfigBytes(Vec::new())),
            serde_yaml::Value::String(s) => Ok(ConfigBytes(s.into_bytes())),
            other => serde_json::to_vec(&other).map(ConfigBytes).map_err(|e| {
                de::Error::custom(format!("cannot render the configuration as JSON: {e}"))
            }),
        }
    }
}

/// A duration with a unit: `250ms`, `2s`, `1.5s`, `1m`, `100us`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DurationSpec(Duration);

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, like 1500ms, 2s or 1m")
            }
            // Parsing inside the visitor lets the error carry the value's position.
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<DurationSpec, E> {
                parse_duration(v).map(DurationSpec).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Deserializes `Raw` from a map and converts it to `T` while the map's
/// deserializer is still active, so a conversion error carries the map's path
/// (`steps[3]`) and position, which `#[serde(try_from)]` loses.
fn via_map<'de, D, Raw, T>(d: D, expecting: &'static str) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    Raw: Deserialize<'de>,
    T: TryFrom<Raw, Error = String>,
{
    struct V<Raw, T>(std::marker::PhantomData<(Raw, T)>, &'static str);
    impl<'de, Raw: Deserialize<'de>, T: TryFrom<Raw, Error = String>> Visitor<'de> for V<Raw, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.1)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<T, A::Error> {
            let raw = Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
            T::try_from(raw).map_err(de::Error::custom)
        }
    }
    d.deserialize_map(V(std::marker::PhantomData, expecting))
}

/// Parses `<number><unit>` exactly (no floating point): units ns, us, ms, s, m, h.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit_ns: u128 = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            return Err(format!(
                "duration {s:?} has no unit (use ns, us, ms, s, m or h)"
            ))
        }
        other => {
            return Err(format!(
                "duration {s:?} has unknown unit {other:?} (use ns, us, ms, s, m or h)"
            ))
        }
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let bad = || format!("duration {s:?} is not a number followed by a unit");
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(bad());
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut total = int.checked_mul(unit_ns).ok_or_else(bad)?;
    let mut scale = unit_ns;
    for digit in frac.chars() {
        scale /= 10;
        let digit = u128::from(digit.to_digit(10).ok_or_else(bad)?);
        total = total.checked_add(digit * scale).ok_or_else(bad)?;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| format!("duration {s:?} is too long"))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    plugin_config: Option<ConfigBytes>,
    #[serde(default)]
    vm_config: Option<ConfigBytes>,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    clusters: Vec<String>,
    #[serde(default)]
    failure_policy: FailurePolicy,
    #[serde(default = "default_log_level")]
    log_level: LogLevel,
    #[serde(default = "yes")]
    expect_config_accepted: bool,
    steps: Vec<Step>,
}

fn default_log_level() -> LogLevel {
    LogLevel::Info
}

fn yes() -> bool {
    true
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_path() -> String {
    "/".to_string()
}

fn default_status() -> u16 {
    200
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default)]
    worker: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    headers: Pairs,
    #[serde(default)]
    body: Chunks,
    #[serde(default)]
    trailers: Option<Pairs>,
    #[serde(default)]
    properties: Props,
    #[serde(default)]
    upstream: Option<ResponseSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseSpec {
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: Pairs,
    #[serde(default)]
    body: Chunks,
    #[serde(default)]
    trailers: Option<Pairs>,
}

impl ResponseSpec {
    fn to_response(&self) -> Response {
        Response {
            status: self.status,
            headers: lower(&self.headers.0),
            body: self.body.0.clone(),
            trailers: self.trailers.as_ref().map(|t| lower(&t.0)),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectSpec {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    headers: Pairs,
    #[serde(default)]
    headers_absent: Vec<String>,
    #[serde(default)]
    body: Option<Text>,
    #[serde(default)]
    body_contains: Option<Text>,
    #[serde(default)]
    upstream_called: Option<bool>,
    #[serde(default)]
    upstream_headers: Pairs,
    #[serde(default)]
    upstream_headers_absent: Vec<String>,
    #[serde(default)]
    local_reply: Option<bool>,
    #[serde(default)]
    paused: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selector {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    index: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RespondSpec {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    index: usize,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: Pairs,
    #[serde(default)]
    body: Chunks,
    #[serde(default)]
    trailers: Option<Pairs>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcCloseSpec {
    status: u32,
    #[serde(default)]
    message: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrpc {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    index: usize,
    #[serde(default)]
    message: Option<Text>,
    #[serde(default)]
    initial_metadata: Option<Pairs>,
    #[serde(default)]
    trailing_metadata: Option<Pairs>,
    #[serde(default)]
    close: Option<GrpcCloseSpec>,
}

#[derive(Clone, Debug)]
struct GrpcSpec {
    select: Selector,
    event: GrpcEvent,
}

impl<'de> Deserialize<'de> for GrpcSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        via_map::<D, RawGrpc, GrpcSpec>(d, "a grpc event: a map with cluster, index and one event")
    }
}

impl TryFrom<RawGrpc> for GrpcSpec {
    type Error = String;
    fn try_from(raw: RawGrpc) -> std::result::Result<Self, String> {
        let mut events = Vec::new();
        if let Some(Text(m)) = raw.message {
            events.push(GrpcEvent::Message(m.into_bytes()));
        }
        if let Some(h) = raw.initial_metadata {
            events.push(GrpcEvent::InitialMetadata(h.0));
        }
        if let Some(h) = raw.trailing_metadata {
            events.push(GrpcEvent::TrailingMetadata(h.0));
        }
        if let Some(c) = raw.close {
            events.push(GrpcEvent::Close {
                status: c.status,
                message: c.message,
            });
        }
        if events.len() != 1 {
            return Err(format!(
                "a grpc step needs exactly one of message, initial_metadata, trailing_metadata, close; found {}",
                events.len()
            ));
        }
        let event = events.remove(0);
        Ok(GrpcSpec {
            select: Selector {
                cluster: raw.cluster,
                index: raw.index,
            },
            event,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueSpec {
    queue: String,
    value: Text,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalloutCount {
    count: usize,
    #[serde(default)]
    cluster: Option<String>,
}

/// The keys a step may have; exactly one action (or `expect` alone, on a stream).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    request: Option<RequestSpec>,
    expect: Option<ExpectSpec>,
    advance: Option<DurationSpec>,
    respond_http_call: Option<RespondSpec>,
    fail_http_call: Option<Selector>,
    grpc: Option<GrpcSpec>,
    enqueue: Option<EnqueueSpec>,
    set_shared_data: Option<Ordered<Text>>,
    expect_shared_data: Option<Ordered<Option<Text>>>,
    expect_metric: Option<Ordered<i64>>,
    expect_log: Option<Text>,
    expect_callouts: Option<CalloutCount>,
}

#[derive(Clone, Debug)]
enum Step {
    Request(Box<RequestSpec>, Option<ExpectSpec>),
    Expect(ExpectSpec),
    Advance(Duration),
    RespondHttpCall(RespondSpec),
    FailHttpCall(Selector),
    Grpc(GrpcSpec),
    Enqueue(EnqueueSpec),
    SetSharedData(Vec<(String, String)>),
    ExpectSharedData(Vec<(String, Option<String>)>),
    ExpectMetric(Vec<(String, i64)>),
    ExpectLog(String),
    ExpectCallouts(CalloutCount),
}

const ACTIONS: &str =
    "request, expect, advance, respond_http_call, fail_http_call, grpc, enqueue, \
set_shared_data, expect_shared_data, expect_metric, expect_log, expect_callouts";

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        via_map::<D, RawStep, Step>(d, "a step: a map with one action")
    }
}

impl TryFrom<RawStep> for Step {
    type Error = String;
    fn try_from(raw: RawStep) -> std::result::Result<Self, String> {
        let mut found: Vec<(&str, Step)> = Vec::new();
        let RawStep {
            request,
            mut expect,
            advance,
            respond_http_call,
            fail_http_call,
            grpc,
            enqueue,
            set_shared_data,
            expect_shared_data,
            expect_metric,
            expect_log,
            expect_callouts,
        } = raw;
        if let Some(r) = request {
            if let Some(e) = &expect {
                if e.stream.is_some() {
                    return Err(
                        "expect.stream is for a standalone expect step; on a request step, \
                         expect checks that request"
                            .into(),
                    );
                }
            }
            found.push(("request", Step::Request(Box::new(r), expect.take())));
        }
        if let Some(d) = advance {
            found.push(("advance", Step::Advance(d.0)));
        }
        if let Some(r) = respond_http_call {
            found.push(("respond_http_call", Step::RespondHttpCall(r)));
        }
        if let Some(s) = fail_http_call {
            found.push(("fail_http_call", Step::FailHttpCall(s)));
        }
        if let Some(g) = grpc {
            found.push(("grpc", Step::Grpc(g)));
        }
        if let Some(e) = enqueue {
            found.push(("enqueue", Step::Enqueue(e)));
        }
        if let Some(m) = set_shared_data {
            let m = m.0.into_iter().map(|(k, v)| (k, v.0)).collect();
            found.push(("set_shared_data", Step::SetSharedData(m)));
        }
        if let Some(m) = expect_shared_data {
            let m = m.0.into_iter().map(|(k, v)| (k, v.map(|t| t.0))).collect();
            found.push(("expect_shared_data", Step::ExpectSharedData(m)));
        }
        if let Some(m) = expect_metric {
            found.push(("expect_metric", Step::ExpectMetric(m.0)));
        }
        if let Some(t) = expect_log {
            found.push(("expect_log", Step::ExpectLog(t.0)));
        }
        if let Some(c) = expect_callouts {
            found.push(("expect_callouts", Step::ExpectCallouts(c)));
        }
        if let Some(e) = expect {
            if !found.is_empty() {
                return Err("expect goes with a request step, or alone with expect.stream naming an earlier request".into());
            }
            if e.stream.is_none() {
                return Err(
                    "a standalone expect step needs stream: the id of an earlier request".into(),
                );
            }
            found.push(("expect", Step::Expect(e)));
        }
        match found.len() {
            1 => Ok(found.remove(0).1),
            0 => Err(format!("a step needs one action: {ACTIONS}")),
            _ => {
                let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
                Err(format!(
                    "a step has exactly one action, found {}",
                    names.join(" and ")
                ))
            }
        }
    }
}

// ---- the scenario -----------------------------------------------------------------

/// A scenario file, parsed and checked: host settings and the steps to replay.
#[derive(Clone, Debug)]
pub struct Scenario {
    name: String,
    description: Option<String>,
    plugin_config: Option<Vec<u8>>,
    vm_config: Option<Vec<u8>>,
    workers: usize,
    seed: u64,
    clusters: Vec<String>,
    failure_policy: FailurePolicy,
    log_level: LogLevel,
    expect_config_accepted: bool,
    steps: Vec<Step>,
}

impl Scenario {
    /// Reads and checks a scenario file (YAML, or JSON, which YAML includes).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Scenario::parse(&name, &text).map_err(|e| match e {
            Error::Scenario { reason, .. } => Error::Scenario {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and checks scenario text; `name` appears in errors and in the report.
    pub fn parse(name: &str, text: &str) -> Result<Scenario> {
        let fail = |reason: String| Error::Scenario {
            path: name.to_string(),
            reason,
        };
        let file: File = serde_yaml::from_str(text).map_err(|e| fail(describe_yaml_error(&e)))?;
        let workers = file.workers.unwrap_or(1);
        if workers == 0 || workers > MAX_WORKERS {
            return Err(fail(format!(
                "workers: must be between 1 and {MAX_WORKERS}, got {workers}"
            )));
        }
        let mut ids: Vec<&str> = Vec::new();
        for (i, step) in file.steps.iter().enumerate() {
            match step {
                Step::Request(r, _) => {
                    if let Some(id) = r.id.as_deref() {
                        if ids.contains(&id) {
                            return Err(fail(format!(
                                "step {}, field request.id: id {id:?} is already used",
                                i + 1
                            )));
                        }
                        ids.push(id);
                    }
                    if http_status(r.upstream.as_ref().map_or(200, |u| u.status)).is_none() {
                        return Err(fail(format!(
                            "step {}, field request.upstream.status: not an HTTP status (100-999)",
                            i + 1
                        )));
                    }
                }
                Step::Expect(e) => {
                    let id = e.stream.as_deref().unwrap_or_default();
                    if !ids.contains(&id) {
                        return Err(fail(format!(
                            "step {}, field expect.stream: no earlier request has id {id:?}",
                            i + 1
                        )));
                    }
                }
                Step::RespondHttpCall(r) if http_status(r.status).is_none() => {
                    return Err(fail(format!(
                        "step {}, field respond_http_call.status: not an HTTP status (100-999)",
                        i + 1
                    )));
                }
                _ => {}
            }
        }
        Ok(Scenario {
            name: name.to_string(),
            description: file.description,
            plugin_config: file.plugin_config.map(|c| c.0),
            vm_config: file.vm_config.map(|c| c.0),
            workers,
            seed: file.seed.unwrap_or(0),
            clusters: file.clusters,
            failure_policy: file.failure_policy,
            log_level: file.log_level,
            expect_config_accepted: file.expect_config_accepted,
            steps: file.steps,
        })
    }

    /// The scenario's name (its file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The free-text description, if the file has one.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when the scenario has no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Seed of the host's RNG (the file's `seed`, default 0).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of workers (VMs).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Replaces the seed (the CLI's `--seed`).
    pub fn with_seed(mut self, seed: u64) -> Scenario {
        self.seed = seed;
        self
    }

    /// Replaces the number of workers (the CLI's `--workers`), clamped to 1..=64.
    pub fn with_workers(mut self, workers: usize) -> Scenario {
        self.workers = workers.clamp(1, MAX_WORKERS);
        self
    }

    /// Replaces the plugin configuration (the CLI's `--config`).
    pub fn with_plugin_config(mut self, config: impl Into<Vec<u8>>) -> Scenario {
        self.plugin_config = Some(config.into());
        self
    }
}

fn http_status(status: u16) -> Option<u16> {
    (100..=999).contains(&status).then_some(status)
}

/// serde_yaml's message with its `steps[i]` path turned into a 1-based step number.
fn describe_yaml_error(e: &serde_yaml::Error) -> String {
    let mut msg = e.to_string();
    if let Some(loc) = e.location() {
        if !msg.contains(" at line ") {
            msg.push_str(&format!(" at line {} column {}", loc.line(), loc.column()));
        }
    }
    let Some(rest) = msg.strip_prefix("steps[") else {
        return msg;
    };
    let Some((index, rest)) = rest.split_once(']') else {
        return msg;
    };
    let Ok(index) = index.parse::<usize>() else {
        return msg;
    };
    let step = index + 1;
    match rest.strip_prefix('.') {
        Some(field) => match field.split_once(": ") {
            Some((field, reason)) => format!("step {step}, field {field}: {reason}"),
            None => format!("step {step}: {field}"),
        },
        None => format!("step {step}{rest}"),
    }
}

// ---- the report -------------------------------------------------------------------

/// Whether a step's expectations held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every expectation of the step held.
    Pass,
    /// These expectations failed (or the step could not run), one message each.
    Fail(Vec<String>),
    /// The step has no expectations.
    Unchecked,
    /// The step did not run because the configuration was rejected.
    Skipped,
}

/// One row of a report: a step, what happened and whether it was as expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// Step number: 0 is configuration, 1 the file's first step.
    pub step: usize,
    /// What the step did (`request tagged`, `advance 2s`…).
    pub action: String,
    /// What happened (`GET /x → 429 (local reply)`).
    pub outcome: String,
    /// The expectations' result.
    pub verdict: Verdict,
}

/// The result of replaying a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Scenario name (file name).
    pub scenario: String,
    /// Module name (file name).
    pub module: String,
    /// RNG seed used.
    pub seed: u64,
    /// Number of workers used.
    pub workers: usize,
    /// One row per step, configuration first.
    pub steps: Vec<StepReport>,
}

#[derive(serde::Serialize)]
struct JsonRow<'a> {
    step: usize,
    action: &'a str,
    outcome: &'a str,
    result: &'a str,
    failures: &'a [String],
}

#[derive(serde::Serialize)]
struct JsonReport<'a> {
    scenario: &'a str,
    module: &'a str,
    seed: u64,
    workers: usize,
    steps: Vec<JsonRow<'a>>,
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Report {
    /// Steps whose expectations all held.
    pub fn passed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Pass))
    }

    /// Steps with a failed expectation or that could not run.
    pub fn failed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Fail(_)))
    }

    /// Steps skipped because configuration failed.
    pub fn skipped(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Skipped))
    }

    /// True when no step failed.
    pub fn success(&self) -> bool {
        self.failed() == 0
    }

    fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.steps.iter().filter(|s| f(&s.verdict)).count()
    }

    /// The `N passed, M failed` line.
    pub fn summary(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed(), self.failed());
        if self.skipped() > 0 {
            s.push_str(&format!(", {} skipped", self.skipped()));
        }
        s
    }

    /// A plain-text table, one row per step, then the summary line.
    pub fn render_table(&self) -> String {
        let mut rows: Vec<[String; 4]> = vec![[
            "step".into(),
            "action".into(),
            "outcome".into(),
            "result".into(),
        ]];
        for s in &self.steps {
            rows.push([
                s.step.to_string(),
                s.action.clone(),
                s.outcome.clone(),
                verdict_text(&s.verdict),
            ]);
        }
        let mut widths = [0usize; 3];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let workers = if self.workers == 1 {
            "1 worker".to_string()
        } else {
            format!("{} workers", self.workers)
        };
        let mut out = format!(
            "scenario {}, module {}, seed {}, {workers}\n",
            self.scenario, self.module, self.seed
        );
        for row in &rows {
            let mut line = String::new();
            for (cell, w) in row.iter().zip(widths) {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
            line.push_str(&row[3]);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The report as one JSON document (pretty-printed, stable field order).
    pub fn render_json(&self) -> String {
        let steps = self
            .steps
            .iter()
            .map(|s| JsonRow {
                step: s.step,
                action: &s.action,
                outcome: &s.outcome,
                result: match &s.verdict {
                    Verdict::Pass => "ok",
                    Verdict::Fail(_) => "fail",
                    Verdict::Unchecked => "none",
                    Verdict::Skipped => "skipped",
                },
                failures: match &s.verdict {
                    Verdict::Fail(f) => f,
                    _ => &[],
                },
            })
            .collect();
        let report = JsonReport {
            scenario: &self.scenario,
            module: &self.module,
            seed: self.seed,
            workers: self.workers,
            steps,
            passed: self.passed(),
            failed: self.failed(),
            skipped: self.skipped(),
        };
        let mut s = serde_json::to_string_pretty(&report)
            .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
        s.push('\n');
        s
    }
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Pass => "ok".into(),
        Verdict::Fail(f) => format!("FAIL: {}", f.join("; ")),
        Verdict::Unchecked => "-".into(),
        Verdict::Skipped => "skipped".into(),
    }
}

// ---- the runner -------------------------------------------------------------------

/// Replays `scenario` against `module` in a fresh host. Expectation failures, guest
/// traps and steps that cannot run are rows of the report; `Err` only when the host
/// cannot be built (the module cannot be instantiated).
pub fn run_scenario(module: &Module, scenario: &Scenario) -> Result<Report> {
    let mut builder = Host::builder(module)
        .workers(scenario.workers)
        .seed(scenario.seed)
        .failure_policy(scenario.failure_policy)
        .log_level(scenario.log_level);
    if let Some(c) = &scenario.plugin_config {
        builder = builder.plugin_config(c.clone());
    }
    if let Some(c) = &scenario.vm_config {
        builder = builder.vm_config(c.clone());
    }
    for c in &scenario.clusters {
        builder = builder.cluster(c);
    }
    let host = builder.build()?;
    let mut runner = Runner {
        host,
        streams: HashMap::new(),
        failed_vms: vec![false; scenario.workers],
        workers: scenario.workers,
    };
    let mut steps = Vec::with_capacity(scenario.steps.len() + 1);
    let configured = runner.configure(scenario.expect_config_accepted);
    let proceed = configured.outcome.starts_with("accepted");
    steps.push(configured);
    for (i, step) in scenario.steps.iter().enumerate() {
        let mut row = if proceed {
            runner.run(step)
        } else {
            Row::new(
                action_name(step),
                "not run: the configuration was rejected".into(),
                Verdict::Skipped,
            )
        };
        if proceed {
            runner.note_vm_failures(&mut row.outcome);
        }
        steps.push(StepReport {
            step: i + 1,
            action: row.action,
            outcome: row.outcome,
            verdict: row.verdict,
        });
    }
    Ok(Report {
        scenario: scenario.name.clone(),
        module: module.name().to_string(),
        seed: scenario.seed,
        workers: scenario.workers,
        steps,
    })
}

struct Row {
    action: String,
    outcome: String,
    verdict: Verdict,
}

impl Row {
    fn new(action: String, outcome: String, verdict: Verdict) -> Row {
        Row {
            action,
            outcome,
            verdict,
        }
    }

    /// A step that could not run: counts as a failure.
    fn error(action: String, e: impl fmt::Display) -> Row {
        Row::new(action, "error".into(), Verdict::Fail(vec![e.to_string()]))
    }
}

fn checked(failures: Vec<String>) -> Verdict {
    if failures.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(failures)
    }
}

fn action_name(step: &Step) -> String {
    match step {
        Step::Request(r, _) => match &r.id {
            Some(id) => format!("request {id}"),
            None => "request".into(),
        },
        Step::Expect(e) => format!("expect {}", e.stream.as_deref().unwrap_or_default()),
        Step::Advance(d) => format!("advance {}", fmt_duration(*d)),
        Step::RespondHttpCall(_) => "respond_http_call".into(),
        Step::FailHttpCall(_) => "fail_http_call".into(),
        Step::Grpc(_) => "grpc".into(),
        Step::Enqueue(e) => format!("enqueue {}", e.queue),
        Step::SetSharedData(_) => "set_shared_data".into(),
        Step::ExpectSharedData(_) => "expect_shared_data".into(),
        Step::ExpectMetric(_) => "expect_metric".into(),
        Step::ExpectLog(_) => "expect_log".into(),
        Step::ExpectCallouts(_) => "expect_callouts".into(),
    }
}

/// A duration in the largest unit that shows it exactly.
fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns >= size && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
}

/// Virtual time as seconds with millisecond precision (`t=1.500s`).
fn fmt_time(d: Duration) -> String {
    format!("t={}.{:03}s", d.as_secs(), d.subsec_millis())
}

fn lower(headers: &Headers) -> Headers {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

fn quote(s: &str) -> String {
    if s.chars().count() > MAX_QUOTED {
        let cut: String = s.chars().take(MAX_QUOTED).collect();
        format!("{cut:?}…")
    } else {
        format!("{s:?}")
    }
}

fn got(v: Option<&str>) -> String {
    v.map_or_else(|| "absent".to_string(), quote)
}

struct Runner {
    host: Host,
    /// Request ids: the stream and its `METHOD path` for outcomes.
    streams: HashMap<String, (StreamId, String)>,
    failed_vms: Vec<bool>,
    workers: usize,
}

impl Runner {
    fn configure(&mut self, expect_accepted: bool) -> StepReport {
        let (outcome, accepted) = match self.host.configure() {
            Ok(true) => (
                format!(
                    "accepted ({} worker{})",
                    self.workers,
                    if self.workers == 1 { "" } else { "s" }
                ),
                true,
            ),
            Ok(false) => (
                "rejected (on_vm_start or on_configure returned false)".to_string(),
                false,
            ),
            Err(e) => (format!("rejected: {}", one_line(&e.to_string())), false),
        };
        let verdict = if accepted == expect_accepted {
            Verdict::Pass
        } else {
            Verdict::Fail(vec![format!(
                "configuration: expected {}, got {}",
                if expect_accepted {
                    "accepted"
                } else {
                    "rejected"
                },
                if accepted { "accepted" } else { "rejected" }
            )])
        };
        for (w, known) in self.failed_vms.iter_mut().enumerate() {
            *known = self.host.vm_failure(w).is_some();
        }
        StepReport {
            step: 0,
            action: "configure".into(),
            outcome,
            verdict,
        }
    }

    /// Appends a note for every VM that failed during the last step.
    fn note_vm_failures(&mut self, outcome: &mut String) {
        for (w, known) in self.failed_vms.iter_mut().enumerate() {
            if *known {
                continue;
            }
            if let Some(reason) = self.host.vm_failure(w) {
                *known = true;
                outcome.push_str(&format!(" [worker {w} VM failed: {}]", one_line(reason)));
            }
        }
    }

    fn run(&mut self, step: &Step) -> Row {
        let action = action_name(step);
        match step {
            Step::Request(r, expect) => self.request(action, r, expect.as_ref()),
            Step::Expect(e) => {
                let id = e.stream.as_deref().unwrap_or_default();
                let Some((sid, label)) = self.streams.get(id).cloned() else {
                    return Row::error(action, format!("no request has id {id:?}"));
                };
                match self.host.stream(sid) {
                    Ok(view) => Row::new(
                        action,
                        describe(&label, view),
                        checked(check_stream(view, e)),
                    ),
                    Err(e) => Row::error(action, e),
                }
            }
            Step::Advance(d) => match self.host.advance(*d) {
                Ok(()) => Row::new(action, fmt_time(self.host.now()), Verdict::Unchecked),
                Err(e) => Row::error(action, e),
            },
            Step::RespondHttpCall(r) => {
                let select = Selector {
                    cluster: r.cluster.clone(),
                    index: r.index,
                };
                let callout = match self.pick_http(&select) {
                    Ok(c) => c,
                    Err(e) => return Row::error(action, e),
                };
                let response = Response {
                    status: r.status,
                    headers: lower(&r.headers.0),
                    body: r.body.0.clone(),
                    trailers: r.trailers.as_ref().map(|t| lower(&t.0)),
                };
                match self.host.respond_http_call(callout.0, response) {
                    Ok(()) => Row::new(
                        action,
                        format!(
                            "callout {} to {} answered {}",
                            callout.0, callout.1, r.status
                        ),
                        Verdict::Unchecked,
                    ),
                    Err(e) => Row::error(action, e),
                }
            }
            Step::FailHttpCall(select) => {
                let callout = match self.pick_http(select) {
                    Ok(c) => c,
                    Err(e) => return Row::error(action, e),
                };
                match self.host.fail_http_call(callout.0) {
                    Ok(()) => Row::new(
                        action,
                        format!("callout {} to {} failed", callout.0, callout.1),
                        Verdict::Unchecked,
                    ),
                    Err(e) => Row::error(action, e),
                }
            }
            Step::Grpc(g) => {
                let open: Vec<_> = self
                    .host
                    .grpc_callouts()
                    .into_iter()
                    .filter(|c| {
                        g.select
                            .cluster
                            .as_ref()
                            .is_none_or(|want| *want == c.cluster)
                    })
                    .collect();
                let Some(c) = open.get(g.select.index) else {
                    return Row::error(action, no_callout("gRPC call", &g.select, open.len()));
                };
                let what = match &g.event {
                    GrpcEvent::InitialMetadata(h) => {
                        format!("initial metadata ({} entries)", h.len())
                    }
                    GrpcEvent::Message(m) => format!("message ({} bytes)", m.len()),
                    GrpcEvent::TrailingMetadata(h) => {
                        format!("trailing metadata ({} entries)", h.len())
                    }
                    GrpcEvent::Close { status, .. } => format!("close {status}"),
                };
                let outcome = format!(
                    "grpc {} {}/{}.{} ← {what}",
                    c.id, c.cluster, c.service, c.method
                );
                match self.host.deliver_grpc(c.id, g.event.clone()) {
                    Ok(()) => Row::new(action, outcome, Verdict::Unchecked),
                    Err(e) => Row::error(action, e),
                }
            }
            Step::Enqueue(e) => match self.host.enqueue(&e.queue, e.value.0.as_bytes()) {
                Ok(()) => Row::new(
                    action,
                    format!("{} bytes enqueued", e.value.0.len()),
                    Verdict::Unchecked,
                ),
                Err(err) => Row::error(action, err),
            },
            Step::SetSharedData(entries) => {
                for (k, v) in entries {
                    self.host.set_shared_data(k, v.as_bytes());
                }
                let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
                Row::new(
                    action,
                    format!("set {}", keys.join(", ")),
                    Verdict::Unchecked,
                )
            }
            Step::ExpectSharedData(entries) => {
                let mut seen = Vec::new();
                let mut failures = Vec::new();
                for (k, want) in entries {
                    let have = self
                        .host
                        .shared_data(k)
                        .map(|(v, _)| String::from_utf8_lossy(&v).into_owned());
                    seen.push(format!("{k}={}", got(have.as_deref())));
                    if have != *want {
                        failures.push(format!(
                            "shared data {k}: expected {}, got {}",
                            got(want.as_deref()),
                            got(have.as_deref())
                        ));
                    }
                }
                Row::new(action, seen.join(", "), checked(failures))
            }
            Step::ExpectMetric(entries) => {
                let mut seen = Vec::new();
                let mut failures = Vec::new();
                for (name, want) in entries {
                    let have = self.host.metric(name).map(|m| m.value);
                    let shown = have.map_or_else(|| "undefined".to_string(), |v| v.to_string());
                    seen.push(format!("{name}={shown}"));
                    if have != Some(*want) {
                        failures.push(format!("metric {name}: expected {want}, got {shown}"));
                    }
                }
                Row::new(action, seen.join(", "), checked(failures))
            }
            Step::ExpectLog(needle) => {
                let logs = self.host.logs();
                match logs
                    .iter()
                    .position(|l| l.message.contains(needle.as_str()))
                {
                    Some(i) => Row::new(
                        action,
                        format!("found in log line {} of {}", i + 1, logs.len()),
                        Verdict::Pass,
                    ),
                    None => Row::new(
                        action,
                        format!("not found in {} log lines", logs.len()),
                        Verdict::Fail(vec![format!(
                            "log: expected a line containing {}, got none of {} lines",
                            quote(needle),
                            logs.len()
                        )]),
                    ),
                }
            }
            Step::ExpectCallouts(c) => {
                let n = self
                    .host
                    .http_callouts()
                    .iter()
                    .filter(|h| c.cluster.as_ref().is_none_or(|want| *want == h.cluster))
                    .count();
                let to = c
                    .cluster
                    .as_ref()
                    .map(|c| format!(" to {c}"))
                    .unwrap_or_default();
                let verdict = if n == c.count {
                    Verdict::Pass
                } else {
                    Verdict::Fail(vec![format!(
                        "callouts{to}: expected {} pending, got {n}",
                        c.count
                    )])
                };
                Row::new(action, format!("{n} pending{to}"), verdict)
            }
        }
    }

    fn request(&mut self, action: String, r: &RequestSpec, expect: Option<&ExpectSpec>) -> Row {
        let mut req = Request::new(&r.method, &r.path);
        for (k, v) in &r.headers.0 {
            req = if k.starts_with(':') {
                req.set_header(k, v)
            } else {
                req.header(k, v)
            };
        }
        req.body = r.body.0.clone();
        req.trailers = r.trailers.as_ref().map(|t| lower(&t.0));
        req.properties = r.properties.0.clone();
        let label = format!("{} {}", r.method, r.path);
        let action = if self.workers > 1 {
            format!("{action} @w{}", r.worker)
        } else {
            action
        };
        let sent = match &r.upstream {
            Some(u) => self.host.send_with_response(r.worker, req, u.to_response()),
            None => self.host.send(r.worker, req),
        };
        let id = match sent {
            Ok(id) => id,
            Err(e) => return Row::error(action, e),
        };
        if let Some(name) = &r.id {
            self.streams.insert(name.clone(), (id, label.clone()));
        }
        match self.host.stream(id) {
            Ok(view) => {
                let verdict = match expect {
                    Some(e) => checked(check_stream(view, e)),
                    None => Verdict::Unchecked,
                };
                Row::new(action, describe(&label, view), verdict)
            }
            Err(e) => Row::error(action, e),
        }
    }

    /// The pending HTTP callout a selector names: id and cluster.
    fn pick_http(&self, select: &Selector) -> std::result::Result<(u64, String), String> {
        let pending: Vec<_> = self
            .host
            .http_callouts()
            .into_iter()
            .filter(|c| {
                select
                    .cluster
                    .as_ref()
                    .is_none_or(|want| *want == c.cluster)
            })
            .collect();
        pending
            .get(select.index)
            .map(|c| (c.id, c.cluster.clone()))
            .ok_or_else(|| no_callout("HTTP callout", select, pending.len()))
    }
}

fn no_callout(kind: &str, select: &Selector, pending: usize) -> String {
    let to = select
        .cluster
        .as_ref()
        .map(|c| format!(" to {c}"))
        .unwrap_or_default();
    format!(
        "expected a pending {kind}{to} at index {}, got {pending} pending",
        select.index
    )
}

/// One line from a multi-line wasmtime trap: the context before the backtrace and
/// the cause after it (`worker 0 trapped in proxy_on_configure: wasm trap: …`).
fn one_line(s: &str) -> String {
    let mut lines = s.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or_default();
    let Some(last) = lines.next_back() else {
        return first.to_string();
    };
    let cause = last.find("wasm trap:").map_or(last.trim(), |i| &last[i..]);
    let head = first
        .strip_suffix("error while executing at wasm backtrace:")
        .unwrap_or(first);
    format!("{head}{cause}")
}

/// The stream is still waiting on the filter. `StreamView::request_paused` is only
/// filled in when a stream finishes, so an unfinished stream counts as paused.
fn is_paused(view: &StreamView) -> bool {
    !view.finished || view.request_paused || view.response_paused
}

/// `GET /x → 200`, `GET /x → 429 (local reply)`, `GET /x → paused`, `GET /x → reset`.
fn describe(label: &str, view: &StreamView) -> String {
    let result = if view.reset {
        "reset".to_string()
    } else {
        match view.status() {
            Some(status) if view.local_reply.is_some() => format!("{status} (local reply)"),
            Some(status) if is_paused(view) => format!("{status} (response paused)"),
            Some(status) => status.to_string(),
            None if view.upstream_request.is_some() => "paused (upstream has headers)".to_string(),
            None => "paused".to_string(),
        }
    };
    format!("{label} → {result}")
}

fn check_stream(view: &StreamView, e: &ExpectSpec) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(want) = e.status {
        let have = view.status();
        if have != Some(want) {
            let shown = have.map_or_else(|| "no response".to_string(), |s| s.to_string());
            failures.push(format!("status: expected {want}, got {shown}"));
        }
    }
    for (name, want) in &e.headers.0 {
        let have = view.response_header(name);
        if have != Some(want.as_str()) {
            failures.push(format!(
                "header {name}: expected {}, got {}",
                quote(want),
                got(have)
            ));
        }
    }
    for name in &e.headers_absent {
        if let Some(have) = view.response_header(name) {
            failures.push(format!(
                "header {name}: expected absent, got {}",
                quote(have)
            ));
        }
    }
    let body = view.body_str();
    if let Some(Text(want)) = &e.body {
        if body != *want {
            failures.push(format!(
                "body: expected {}, got {}",
                quote(want),
                quote(&body)
            ));
        }
    }
    if let Some(Text(want)) = &e.body_contains {
        if !body.contains(want.as_str()) {
            failures.push(format!(
                "body: expected to contain {}, got {}",
                quote(want),
                quote(&body)
            ));
        }
    }
    let upstream = view.upstream_request.as_ref();
    if let Some(want) = e.upstream_called {
        let have = upstream.is_some();
        if have != want {
            failures.push(format!("upstream_called: expected {want}, got {have}"));
        }
    }
    for (name, want) in &e.upstream_headers.0 {
        let have = upstream.and_then(|u| u.header(name));
        if have != Some(want.as_str()) {
            let shown = if upstream.is_none() {
                "no upstream request".to_string()
            } else {
                got(have)
            };
            failures.push(format!(
                "upstream header {name}: expected {}, got {shown}",
                quote(want)
            ));
        }
    }
    for name in &e.upstream_headers_absent {
        if let Some(have) = upstream.and_then(|u| u.header(name)) {
            failures.push(format!(
                "upstream header {name}: expected absent, got {}",
                quote(have)
            ));
        }
    }
    if let Some(want) = e.local_reply {
        let have = view.local_reply.is_some();
        if have != want {
            failures.push(format!("local_reply: expected {want}, got {have}"));
        }
    }
    if let Some(want) = e.paused {
        let have = is_paused(view);
        if have != want {
            failures.push(format!("paused: expected {want}, got {have}"));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn reason(text: &str) -> String {
        match Scenario::parse("t.yaml", text) {
            Err(Error::Scenario { reason, .. }) => reason,
            other => format!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn durations_parse_exactly_with_units() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
        assert_eq!(fmt_duration(Duration::ZERO), "0ns");
    }

    #[test]
    fn headers_accept_a_map_or_a_list_of_pairs() {
        let s = Scenario::parse(
            "t.yaml",
            "steps:\n- request: {headers: {a: 1, b: x}}\n- request: {headers: [[a, '1'], {a: 2}]}\n",
        )
        .unwrap();
        let heads: Vec<Headers> = s
            .steps
            .iter()
            .map(|st| match st {
                Step::Request(r, _) => r.headers.0.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(
            heads[0],
            vec![("a".into(), "1".into()), ("b".into(), "x".into())]
        );
        assert_eq!(
            heads[1],
            vec![("a".into(), "1".into()), ("a".into(), "2".into())]
        );
    }

    #[test]
    fn yaml_scalars_keep_their_spelling() {
        let s = Scenario::parse("t.yaml", "steps:\n- set_shared_data: {v: 1.10}\n").unwrap();
        assert!(matches!(&s.steps[0], Step::SetSharedData(e) if e[0].1 == "1.10"));
    }

    #[test]
    fn json_scenarios_parse_too() {
        let s = Scenario::parse(
            "t.json",
            r#"{"plugin_config":{"limit":1},"steps":[{"request":{"path":"/a"},"expect":{"status":200}}]}"#,
        )
        .unwrap();
        assert_eq!(s.plugin_config.as_deref(), Some(&br#"{"limit":1}"#[..]));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn unknown_fields_name_the_step_field_and_line() {
        let r = reason("steps:\n- advance: 1s\n- request:\n    methd: GET\n");
        assert!(
            r.starts_with("step 2, field request: unknown field `methd`"),
            "{r}"
        );
        assert!(r.contains("line 4 column"), "{r}");
    }

    #[test]
    fn a_step_with_two_actions_is_rejected() {
        let r = reason("steps:\n- advance: 1s\n  expect_log: x\n");
        assert!(r.starts_with("step 1"), "{r}");
        assert!(r.contains("advance and expect_log"), "{r}");
    }

    #[test]
    fn bad_durations_name_the_step() {
        let r = reason("steps:\n- advance: 10 parsecs\n");
        assert!(r.starts_with("step 1, field advance: duration"), "{r}");
    }

    #[test]
    fn standalone_expect_needs_an_earlier_request_id() {
        let r = reason("steps:\n- expect: {stream: a, status: 200}\n");
        assert!(r.contains("step 1, field expect.stream"), "{r}");
    }

    #[test]
    fn inline_config_values_become_json() {
        let s = Scenario::parse(
            "t.yaml",
            "plugin_config:\n  limit: 3\n  name: x\nsteps: []\n",
        )
        .unwrap();
        assert_eq!(
            s.plugin_config.as_deref(),
            Some(&br#"{"limit":3,"name":"x"}"#[..])
        );
        let s = Scenario::parse("t.yaml", "plugin_config: 'raw text'\nsteps: []\n").unwrap();
        assert_eq!(s.plugin_config.as_deref(), Some(&b"raw text"[..]));
    }

    #[test]
    fn a_grpc_step_takes_exactly_one_event() {
        let s = Scenario::parse(
            "t.yaml",
            "steps:\n- grpc: {cluster: c, close: {status: 14}}\n",
        )
        .unwrap();
        assert!(matches!(
            &s.steps[0],
            Step::Grpc(g) if g.event == GrpcEvent::Close { status: 14, message: String::new() }
        ));
        let r = reason("steps:\n- advance: 1s\n- grpc: {message: x, close: {status: 0}}\n");
        assert!(
            r.starts_with("step 2, field grpc: a grpc step needs exactly one of"),
            "{r}"
        );
        assert!(r.contains("line 3"), "{r}");
    }

    #[test]
    fn zero_workers_is_rejected() {
        assert!(reason("workers: 0\nsteps: []\n").starts_with("workers:"));
    }
}
