//! Consul's HTTP endpoints over the state: routing, query parameters (`dc`, `index`, `wait`,
//! `passing`, `tag`, `filter`, `recurse`, `raw`, `keys`, `cas`, `flags`), blocking reads,
//! agent registration, KV. Error statuses and texts follow Consul's.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::bexpr::{Filter, Schema};
use crate::duration::parse_go_duration;
use crate::http::Response;
use crate::model::{Fault, Health, Instance, RecordedRequest, Weights};
use crate::server::Shared;
use crate::state::{self, Check, State, WaitKey};

/// Answers `req`. `None`: the request was abandoned (the fake stopped listening).
pub(crate) fn route(
    sh: &Shared,
    req: &RecordedRequest,
    epoch: u64,
    fault: Option<&Fault>,
) -> Option<Response> {
    let path = req.path.as_str();
    let method = req.method.as_str();
    let ctx = Ctx {
        sh,
        req,
        epoch,
        fault,
    };
    if let Some(name) = path.strip_prefix("/v1/health/service/") {
        return only(method, &["GET"]).or_else(|| ctx.health_service(name));
    }
    if let Some(name) = path.strip_prefix("/v1/health/checks/") {
        return only(method, &["GET"]).or_else(|| ctx.health_checks(name));
    }
    if let Some(name) = path.strip_prefix("/v1/catalog/service/") {
        return only(method, &["GET"]).or_else(|| ctx.catalog_service(name));
    }
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        return match method {
            "GET" => ctx.kv_get(key),
            "PUT" => Some(ctx.kv_put(key)),
            "DELETE" => Some(ctx.kv_delete(key)),
            _ => only(method, &["GET", "PUT", "DELETE"]),
        };
    }
    if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
        return only(method, &["PUT"]).or_else(|| Some(ctx.deregister(id)));
    }
    for (prefix, status) in [
        ("/v1/agent/check/pass/", Health::Passing),
        ("/v1/agent/check/warn/", Health::Warning),
        ("/v1/agent/check/fail/", Health::Critical),
    ] {
        if let Some(id) = path.strip_prefix(prefix) {
            return only(method, &["PUT"]).or_else(|| Some(ctx.update_check(id, status)));
        }
    }
    match path {
        "/v1/catalog/datacenters" => {
            only(method, &["GET"]).or_else(|| Some(Response::json(&json!(sh.datacenters()))))
        }
        "/v1/catalog/services" => only(method, &["GET"]).or_else(|| ctx.catalog_services()),
        "/v1/agent/service/register" => only(method, &["PUT"]).or_else(|| Some(ctx.register())),
        "/v1/status/leader" => {
            only(method, &["GET"]).or_else(|| Some(Response::json(&json!(LEADER))))
        }
        "/v1/status/peers" => {
            only(method, &["GET"]).or_else(|| Some(Response::json(&json!([LEADER]))))
        }
        // Go's ServeMux answer for a path no handler claims.
        _ => Some(Response::text(404, "404 page not found\n")),
    }
}

/// The raft address the fake claims as leader and only peer.
const LEADER: &str = "127.0.0.1:8300";

/// `Some(405)` unless `method` is one of `allowed` (Consul's `MethodNotAllowedError`).
fn only(method: &str, allowed: &[&str]) -> Option<Response> {
    if allowed.contains(&method) {
        None
    } else {
        Some(
            Response::text(405, format!("method {method} not allowed"))
                .with("Allow", allowed.join(",")),
        )
    }
}

/// Whether the flag `name` is on: present with no value, or a value Go's `ParseBool` reads
/// as true. `Err` for a value it cannot read.
fn flag(req: &RecordedRequest, name: &str) -> Result<bool, Response> {
    match req.query_param(name) {
        None => Ok(false),
        Some("") => Ok(true),
        Some(v) => match v {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            _ => Err(Response::text(400, format!("Invalid value for ?{name}"))),
        },
    }
}

/// One request being answered.
struct Ctx<'a> {
    sh: &'a Shared,
    req: &'a RecordedRequest,
    epoch: u64,
    fault: Option<&'a Fault>,
}

/// What a read renders: the body, or an error response (no index headers).
type Rendered = Result<Response, Response>;

impl Ctx<'_> {
    /// The datacenter `?dc=` selects (the agent's own without it); one the fake does not
    /// serve is Consul's 500.
    fn dc(&self) -> Result<&str, Response> {
        match self.req.query_param("dc") {
            None | Some("") => Ok(&self.sh.opts.datacenter),
            Some(dc) if self.sh.serves(dc) => Ok(dc),
            Some(_) => Err(Response::text(500, "No path to datacenter")),
        }
    }

    /// `?filter=` parsed for `schema` (`None` when absent or empty).
    fn filter(&self, schema: Schema) -> Result<Option<Filter>, Response> {
        match self.req.query_param("filter") {
            None | Some("") => Ok(None),
            Some(text) => Filter::parse(text, schema).map(Some).map_err(|e| {
                Response::text(
                    400,
                    format!("Failed to create boolean expression evaluator: {e}"),
                )
            }),
        }
    }

    /// A read of what `index_of` measures (woken by writes touching `key`): validates
    /// `index` and `wait`, blocks while that index is not past the request's `index`,
    /// renders, and adds Consul's index and leader headers.
    fn read(
        &self,
        key: &WaitKey,
        index_of: impl Fn(&State) -> u64,
        render: impl FnOnce(&State) -> Rendered,
    ) -> Option<Response> {
        let min_index = match self.req.query_param("index") {
            None | Some("") => 0,
            Some(i) => match i.parse::<u64>() {
                Ok(i) => i,
                Err(_) => return Some(Response::text(400, "Invalid index")),
            },
        };
        let max_wait = self.sh.opts.max_wait;
        let wait = match self.req.query_param("wait") {
            None | Some("") => max_wait,
            Some(w) => match parse_go_duration(w) {
                Some(w) => w.min(max_wait),
                None => return Some(Response::text(400, "Invalid wait time")),
            },
        };
        let index_fault = matches!(
            self.fault,
            Some(Fault::IndexGoesBackwards | Fault::IndexZero)
        );
        let state = if min_index > 0 && !index_fault {
            self.sh
                .block(wait, self.epoch, Some(key), |s| index_of(s) > min_index)?
        } else {
            self.sh.lock()
        };
        let index = index_of(&state);
        let rendered = render(&state);
        drop(state);
        Some(match rendered {
            Ok(resp) => resp
                .with("X-Consul-Index", index.to_string())
                .with("X-Consul-KnownLeader", "true")
                .with("X-Consul-LastContact", "0")
                .with("X-Consul-Effective-Consistency", "leader"),
            Err(resp) => resp,
        })
    }

    fn health_service(&self, name: &str) -> Option<Response> {
        if name.is_empty() {
            return Some(Response::text(400, "Missing service name"));
        }
        let dc = match self.dc() {
            Ok(dc) => dc,
            Err(e) => return Some(e),
        };
        let passing = match flag(self.req, "passing") {
            Ok(p) => p,
            Err(e) => return Some(e),
        };
        let filter = match self.filter(Schema::HealthEntry) {
            Ok(f) => f,
            Err(e) => return Some(e),
        };
        let tags = self.tags();
        self.read(
            &service_key(dc, name),
            |st| st.index_of_service(dc, name),
            |st| {
                let mut out = Vec::new();
                for s in st.instances_of(dc, name) {
                    if (passing && !state::all_passing(s)) || !has_tags(&s.instance, &tags) {
                        continue;
                    }
                    let entry = state::health_entry(s);
                    if keep(filter.as_ref(), &entry)? {
                        out.push(entry);
                    }
                }
                Ok(Response::json(&Value::Array(out)))
            },
        )
    }

    fn health_checks(&self, name: &str) -> Option<Response> {
        if name.is_empty() {
            return Some(Response::text(400, "Missing service name"));
        }
        let dc = match self.dc() {
            Ok(dc) => dc,
            Err(e) => return Some(e),
        };
        let filter = match self.filter(Schema::Check) {
            Ok(f) => f,
            Err(e) => return Some(e),
        };
        self.read(
            &service_key(dc, name),
            |st| st.index_of_service(dc, name),
            |st| {
                let mut out = Vec::new();
                for s in st.instances_of(dc, name) {
                    for check in state::service_checks_json(s) {
                        if keep(filter.as_ref(), &check)? {
                            out.push(check);
                        }
                    }
                }
                Ok(Response::json(&Value::Array(out)))
            },
        )
    }

    fn catalog_service(&self, name: &str) -> Option<Response> {
        if name.is_empty() {
            return Some(Response::text(400, "Missing service name"));
        }
        let dc = match self.dc() {
            Ok(dc) => dc,
            Err(e) => return Some(e),
        };
        let filter = match self.filter(Schema::CatalogEntry) {
            Ok(f) => f,
            Err(e) => return Some(e),
        };
        let tags = self.tags();
        self.read(
            &service_key(dc, name),
            |st| st.index_of_service(dc, name),
            |st| {
                let mut out = Vec::new();
                for s in st.instances_of(dc, name) {
                    if !has_tags(&s.instance, &tags) {
                        continue;
                    }
                    let entry = state::catalog_entry(s);
                    if keep(filter.as_ref(), &entry)? {
                        out.push(entry);
                    }
                }
                Ok(Response::json(&Value::Array(out)))
            },
        )
    }

    fn catalog_services(&self) -> Option<Response> {
        let dc = match self.dc() {
            Ok(dc) => dc,
            Err(e) => return Some(e),
        };
        let filter = match self.filter(Schema::CatalogEntry) {
            Ok(f) => f,
            Err(e) => return Some(e),
        };
        self.read(
            &WaitKey::Catalog(dc.to_owned()),
            |st| st.dc(dc).services_index,
            |st| {
                let mut error = None;
                // The entry is rendered only to evaluate a filter: without one, listing 50,000
                // instances stays cheap (it runs under the state lock).
                let body = st.catalog_services(dc, |s| match filter.as_ref() {
                    None => true,
                    Some(f) => match keep(Some(f), &state::catalog_entry(s)) {
                        Ok(k) => k,
                        Err(e) => {
                            error.get_or_insert(e);
                            false
                        }
                    },
                });
                match error {
                    Some(e) => Err(e),
                    None => Ok(Response::json(&body)),
                }
            },
        )
    }

    /// Every `?tag=` value (all must be present on an instance).
    fn tags(&self) -> Vec<String> {
        self.req
            .query
            .iter()
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn kv_get(&self, key: &str) -> Option<Response> {
        let dc = match self.dc() {
            Ok(dc) => dc,
            Err(e) => return Some(e),
        };
        let recurse = flag(self.req, "recurse");
        let raw = flag(self.req, "raw");
        let keys = flag(self.req, "keys");
        let (Ok(recurse), Ok(raw), Ok(keys)) = (recurse, raw, keys) else {
            return Some(Response::text(400, "Invalid value for a flag"));
        };
        let separator = self.req.query_param("separator").unwrap_or_default();
        self.read(
            &WaitKey::Kv(dc.to_owned()),
            |st| st.dc(dc).kv_index,
            |st| {
                if keys {
                    let mut listed: Vec<String> = Vec::new();
                    for k in st.dc(dc).kv.keys().filter(|k| k.starts_with(key)) {
                        let rest = k.get(key.len()..).unwrap_or_default();
                        let shown = match (!separator.is_empty())
                            .then(|| rest.find(separator))
                            .flatten()
                        {
                            Some(at) => {
                                format!("{key}{}", rest.get(..at + separator.len()).unwrap_or(rest))
                            }
                            None => k.clone(),
                        };
                        if listed.last() != Some(&shown) {
                            listed.push(shown);
                        }
                    }
                    return found(!listed.is_empty(), || Response::json(&json!(listed)));
                }
                if recurse {
                    let entries: Vec<Value> = st
                        .dc(dc)
                        .kv
                        .iter()
                        .filter(|(k, _)| k.starts_with(key))
                        .map(|(k, e)| state::kv_json(k, e))
                        .collect();
                    return found(!entries.is_empty(), || {
                        Response::json(&Value::Array(entries.clone()))
                    });
                }
                let Some(entry) = st.dc(dc).kv.get(key) else {
                    return found(false, || Response::text(404, ""));
                };
                if raw {
                    Ok(Response::new(
                        200,
                        "text/plain; charset=utf-8",
                        entry.value.clone(),
                    ))
                } else {
                    Ok(Response::json(&json!([state::kv_json(key, entry)])))
                }
            },
        )
    }

    fn kv_put(&self, key: &str) -> Response {
        let dc = match self.dc() {
            Ok(dc) => dc,
            Err(e) => return e,
        };
        if key.is_empty() {
            return Response::text(400, "Missing key name");
        }
        let parse_u64 = |name: &str| match self.req.query_param(name) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| Response::text(400, format!("Invalid {name} index"))),
        };
        let (flags, cas) = match (parse_u64("flags"), parse_u64("cas")) {
            (Ok(f), Ok(c)) => (f.unwrap_or(0), c),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        let body = &self.req.body;
        let ok = self.sh.write(|st| {
            let current = st.dc(dc).kv.get(key).map_or(0, |e| e.modify_index);
            if cas.is_some_and(|c| c != current) {
                return false;
            }
            st.kv_put(dc, key, body, flags);
            true
        });
        Response::json(&json!(ok))
    }

    fn kv_delete(&self, key: &str) -> Response {
        let dc = match self.dc() {
            Ok(dc) => dc,
            Err(e) => return e,
        };
        let recurse = match flag(self.req, "recurse") {
            Ok(r) => r,
            Err(e) => return e,
        };
        if key.is_empty() && !recurse {
            return Response::text(400, "Missing key name");
        }
        self.sh.write(|st| st.kv_delete(dc, key, recurse));
        Response::json(&json!(true))
    }

    fn register(&self) -> Response {
        let body: Value = match serde_json::from_slice(&self.req.body) {
            Ok(v) => v,
            Err(e) => return Response::text(400, format!("Request decode failed: {e}")),
        };
        match registration(&body, &self.sh.opts) {
            Ok((instance, checks)) => {
                self.sh.write(|st| st.upsert(instance, checks));
                Response::text(200, "")
            }
            Err(e) => Response::text(400, e),
        }
    }

    fn deregister(&self, id: &str) -> Response {
        if self.sh.write(|st| st.deregister(id)) {
            Response::text(200, "")
        } else {
            Response::text(
                404,
                format!(
                    "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                ),
            )
        }
    }

    fn update_check(&self, id: &str, status: Health) -> Response {
        let note = self.req.query_param("note").unwrap_or_default();
        if self.sh.write(|st| st.set_check(id, status, note)) {
            Response::text(200, "")
        } else {
            Response::text(404, format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."))
        }
    }
}

fn service_key(dc: &str, name: &str) -> WaitKey {
    WaitKey::Service(dc.to_owned(), name.to_owned())
}

/// A 404 (with the index headers, as Consul sends) when nothing was found.
fn found(any: bool, ok: impl FnOnce() -> Response) -> Rendered {
    Ok(if any { ok() } else { Response::text(404, "") })
}

fn has_tags(i: &Instance, tags: &[String]) -> bool {
    tags.iter().all(|t| i.tags.contains(t))
}

/// Whether `entry` passes `filter`; an evaluation error is Consul's 400.
fn keep(filter: Option<&Filter>, entry: &Value) -> Result<bool, Response> {
    match filter {
        None => Ok(true),
        Some(f) => f.matches(entry).map_err(|e| {
            Response::text(
                400,
                format!("Failed to create boolean expression evaluator: {e}"),
            )
        }),
    }
}

/// A field of a JSON object, matched case-insensitively as Consul's decoder does.
fn field<'v>(obj: &'v Value, name: &str) -> Option<&'v Value> {
    obj.as_object()?
        .iter()
        .find(|(k, _)| {
            k.eq_ignore_ascii_case(name) || k.replace('_', "").eq_ignore_ascii_case(name)
        })
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn string_field(obj: &Value, name: &str) -> Result<String, String> {
    match field(obj, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("Request decode failed: {name} must be a string")),
    }
}

/// A `PUT /v1/agent/service/register` body as an instance on the agent's node and its
/// checks. Check types the fake cannot run (HTTP, TCP, gRPC, script) start `passing`
/// unless they give `Status`; TTL checks start `critical`, as in Consul.
fn registration(
    body: &Value,
    opts: &crate::model::Options,
) -> Result<(Instance, Vec<Check>), String> {
    if !body.is_object() {
        return Err("Request decode failed: body must be a JSON object".into());
    }
    let name = string_field(body, "Name")?;
    if name.is_empty() {
        return Err("Missing service name".into());
    }
    let id = match string_field(body, "ID")? {
        id if id.is_empty() => name.clone(),
        id => id,
    };
    let address = string_field(body, "Address")?;
    let port = match field(body, "Port") {
        None => 0,
        Some(p) => p
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("Request decode failed: Port must be an integer in 0..=65535")?,
    };
    let tags = match field(body, "Tags") {
        None => Vec::new(),
        Some(Value::Array(tags)) => tags
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or("Request decode failed: Tags must be strings")?,
        Some(_) => return Err("Request decode failed: Tags must be a list".into()),
    };
    let meta = match field(body, "Meta") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect::<Option<BTreeMap<_, _>>>()
            .ok_or("Request decode failed: Meta values must be strings")?,
        Some(_) => return Err("Request decode failed: Meta must be an object".into()),
    };
    let weights = match field(body, "Weights") {
        None => Weights::default(),
        Some(w) => {
            let get = |n: &str| {
                field(w, n)
                    .map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                    .unwrap_or(Some(1))
            };
            let (Some(passing), Some(warning)) = (get("Passing"), get("Warning")) else {
                return Err("Request decode failed: Weights must be integers".into());
            };
            if passing == 0 {
                return Err("Invalid Weights: Passing must be greater than 0".into());
            }
            Weights { passing, warning }
        }
    };
    let mut defs: Vec<&Value> = Vec::new();
    if let Some(c) = field(body, "Check") {
        defs.push(c);
    }
    match field(body, "Checks") {
        None => {}
        Some(Value::Array(cs)) => defs.extend(cs.iter()),
        Some(_) => return Err("Request decode failed: Checks must be a list".into()),
    }
    let numbered = defs.len() > 1;
    let mut checks = Vec::with_capacity(defs.len());
    for (n, def) in defs.into_iter().enumerate() {
        if !def.is_object() {
            return Err("Request decode failed: a check must be an object".into());
        }
        let check_id = match string_field(def, "CheckID")? {
            c if !c.is_empty() => c,
            _ if numbered => format!("service:{id}:{}", n + 1),
            _ => format!("service:{id}"),
        };
        let check_name = match string_field(def, "Name")? {
            c if !c.is_empty() => c,
            _ => format!("Service '{name}' check"),
        };
        let status = match string_field(def, "Status")?.as_str() {
            "" if field(def, "TTL").is_some() => Health::Critical,
            "" => Health::Passing,
            s => Health::parse(s).ok_or_else(|| format!("Invalid check status: \"{s}\""))?,
        };
        checks.push(Check {
            id: check_id,
            name: check_name,
            status,
            notes: string_field(def, "Notes")?,
            output: String::new(),
        });
    }
    let health = checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Health::Passing);
    let instance = Instance {
        id,
        service: name,
        address,
        port,
        tags,
        meta,
        weights,
        node: opts.node.clone(),
        node_address: opts.node_address.clone(),
        datacenter: opts.datacenter.clone(),
        health,
    };
    Ok((instance, checks))
}
