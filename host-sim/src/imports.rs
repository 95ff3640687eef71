//! The one table that registers every `env` import of proxy-wasm ABI 0.2.1 (and
//! the 0.2.0 names the Rust SDK 0.2.x may emit), with Envoy's semantics.
//!
//! Sources for the behaviour: Envoy `source/extensions/common/wasm/context.cc`
//! and proxy-wasm-cpp-host `src/exports.cc`, `src/shared_data.cc`,
//! `src/shared_queue.cc`. Where a choice is not obvious the comment says why.

use wasmtime::{Caller, Linker};

use crate::abi::{
    decode_pairs, encode_pairs, BufferType, Headers, LogLevel, MapType, MetricKind, Status,
    StreamType,
};
use crate::memory::{read, read_string, write_alloc, write_u32, write_u64, HostResult};
use crate::shared::{lock, Event, GrpcCallout, HttpCallout, LogEntry, Metric, Queue};
use crate::vm::{Callback, Context, Deferred, LocalReply, Tick, VmState};

type C<'a> = Caller<'a, VmState>;

/// Envoy starts a VM (`_initialize`, `main`, `_start`) with callbacks restricted to WASI
/// (proxy-wasm-cpp-host `setRestrictedCallback`): a proxy-wasm call then fails the VM.
fn guard(c: &C, name: &'static str) -> wasmtime::Result<()> {
    *lock(&c.data().shared).import_calls.entry(name).or_default() += 1;
    if c.data().restricted {
        return Err(wasmtime::Error::msg(format!(
            "restricted_callback: {name} called while the VM was starting \
             (_initialize/_start); proxy-wasm calls are only allowed in proxy_on_* callbacks"
        )));
    }
    Ok(())
}

fn code(r: HostResult) -> u32 {
    match r {
        Ok(()) => Status::Ok.code(),
        Err(s) => s.code(),
    }
}

/// Every `env` function name host-sim provides, for the import-coverage check.
pub const ENV_IMPORTS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_header_map_size",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_send_local_response",
    "proxy_clear_route_cache",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_call_foreign_function",
    "proxy_done",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
];

pub(crate) fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    link_logging_and_time(linker)?;
    link_buffers(linker)?;
    link_header_maps(linker)?;
    link_properties(linker)?;
    link_shared_data(linker)?;
    link_shared_queues(linker)?;
    link_stream_control(linker)?;
    link_http_calls(linker)?;
    link_grpc(linker)?;
    link_metrics(linker)?;
    link_misc(linker)?;
    crate::wasi::link(linker)?;
    Ok(())
}

pub(crate) fn log_line(st: &VmState, level: LogLevel, message: String) {
    let mut sh = lock(&st.shared);
    if level >= sh.log_level.unwrap_or(LogLevel::Info) {
        sh.logs.push(LogEntry {
            vm: st.index,
            level,
            message,
        });
    }
}

fn link_logging_and_time(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |c: C, level: u32, ptr: u32, len: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_log")?;
            Ok({
                code((|| {
                    // Envoy rejects levels above critical before reading the message.
                    let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
                    let message = read_string(&c, ptr, len)?;
                    log_line(c.data(), level, message);
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C, ret: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_log_level")?;
            Ok({
                let level = lock(&c.data().shared).log_level.unwrap_or(LogLevel::Info);
                code(write_u32(&mut c, ret, level as u32))
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C, ret: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_current_time_nanoseconds")?;
            Ok({
                // Envoy answers with the wall clock (timeSource().systemTime()).
                let now = lock(&c.data().shared).realtime_ns();
                code(write_u64(&mut c, ret, now))
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C, period: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_set_tick_period_milliseconds")?;
            Ok({
                // One timer per root context; a stream context sets its root's timer.
                // The first tick comes one period after the call (enableTimer(period)).
                let now = lock(&c.data().shared).now_ns;
                let st = c.data_mut();
                let root = st.root_of(st.effective);
                if period == 0 {
                    st.ticks.remove(&root);
                } else {
                    let period_ns = u64::from(period) * 1_000_000;
                    st.ticks.insert(
                        root,
                        Tick {
                            period_ns,
                            next_ns: now + period_ns,
                        },
                    );
                }
                Status::Ok.code()
            })
        },
    )?;
    Ok(())
}

/// The bytes a buffer type shows in the current callback, or `None` where Envoy
/// has no buffer at all (NotFound).
fn buffer_view(st: &VmState, t: BufferType) -> Option<Vec<u8>> {
    let stream = st.stream(st.effective);
    match t {
        // Envoy always hands out a body buffer; outside a body callback it is empty.
        BufferType::HttpRequestBody => Some(
            stream
                .and_then(|s| s.request_body.clone())
                .unwrap_or_default(),
        ),
        BufferType::HttpResponseBody => Some(
            stream
                .and_then(|s| s.response_body.clone())
                .unwrap_or_default(),
        ),
        BufferType::DownstreamData | BufferType::UpstreamData => Some(Vec::new()),
        BufferType::HttpCallResponseBody => st.call.http_body.clone(),
        BufferType::GrpcReceiveBuffer => Some(st.call.grpc_message.clone().unwrap_or_default()),
        BufferType::VmConfiguration => Some(st.vm_config.clone()),
        // Only while the plugin is being configured (Envoy's temp_plugin_).
        BufferType::PluginConfiguration => {
            matches!(st.callback, Callback::Configure | Callback::VmStart)
                .then(|| st.plugin_config.clone())
        }
        BufferType::CallData => Some(st.call.foreign_args.clone().unwrap_or_default()),
    }
}

/// Envoy's `Buffer::copyFrom`: `start == 0` drains `length` bytes then prepends,
/// `start >= size` appends, anything else is BadArgument.
pub(crate) fn copy_from(buf: &mut Vec<u8>, start: usize, length: usize, data: &[u8]) -> HostResult {
    if start == 0 {
        let drain = length.min(buf.len());
        let mut out = Vec::with_capacity(buf.len() - drain + data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(&buf[drain..]);
        *buf = out;
        Ok(())
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

fn link_buffers(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C,
         t: u32,
         start: u32,
         max: u32,
         ret_ptr: u32,
         ret_len: u32|
         -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_buffer_bytes")?;
            let t = match BufferType::from_raw(t) {
                Some(t) => t,
                None => return Ok(Status::BadArgument.code()),
            };
            let Some(bytes) = buffer_view(c.data(), t) else {
                return Ok(Status::NotFound.code());
            };
            if start.checked_add(max).is_none() {
                return Ok(Status::BadArgument.code());
            }
            let start = (start as usize).min(bytes.len());
            let end = start.saturating_add(max as usize).min(bytes.len());
            Ok(code(write_alloc(
                &mut c,
                &bytes[start..end],
                ret_ptr,
                ret_len,
            )?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C, t: u32, start: u32, len: u32, ptr: u32, size: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_set_buffer_bytes")?;
            Ok({
                code((|| {
                    let t = BufferType::from_raw(t).ok_or(Status::BadArgument)?;
                    let data = read(&c, ptr, size)?;
                    // A buffer Envoy does not have right now is NotFound; one it has but
                    // that is read-only is BadArgument (conformance case
                    // `buffers_match_envoy`: plugin configuration outside on_configure,
                    // http_call response body outside on_http_call_response).
                    let body = matches!(
                        t,
                        BufferType::HttpRequestBody | BufferType::HttpResponseBody
                    );
                    if !body && buffer_view(c.data(), t).is_none() {
                        return Err(Status::NotFound);
                    }
                    let st = c.data_mut();
                    let id = st.effective;
                    let stream = st.stream_mut(id).ok_or(Status::BadArgument)?;
                    let buf = match t {
                        BufferType::HttpRequestBody => stream.request_body.as_mut(),
                        BufferType::HttpResponseBody => stream.response_body.as_mut(),
                        // Configuration, call and gRPC buffers are read-only views.
                        _ => None,
                    }
                    .ok_or(Status::BadArgument)?;
                    copy_from(buf, start as usize, len as usize, &data)
                })())
            })
        },
    )?;
    Ok(())
}

/// The status for reading a map Envoy does not have: BadArgument, except in on_log,
/// where Envoy reads its access-log copies and a missing one is NotFound (conformance
/// case `header_maps_match_envoy`: request trailers in on_log of a stream without any).
fn missing_map(st: &VmState) -> Status {
    if st.callback == Callback::Log {
        Status::NotFound
    } else {
        Status::BadArgument
    }
}

fn map_view(st: &VmState, t: MapType) -> Option<&Headers> {
    let stream = st.stream(st.effective);
    match t {
        MapType::RequestHeaders => stream?.request_headers.as_ref(),
        MapType::RequestTrailers => stream?.request_trailers.as_ref(),
        MapType::ResponseHeaders => stream?.response_headers.as_ref(),
        MapType::ResponseTrailers => stream?.response_trailers.as_ref(),
        MapType::HttpCallResponseHeaders => st.call.http_headers.as_ref(),
        MapType::HttpCallResponseTrailers => st.call.http_trailers.as_ref(),
        MapType::GrpcInitialMetadata => st.call.grpc_initial.as_ref(),
        MapType::GrpcTrailingMetadata => st.call.grpc_trailing.as_ref(),
    }
}

/// A map the guest may change; callout and gRPC maps are read-only (BadArgument,
/// as Envoy's `getMap` returns null for them).
fn map_mut(st: &mut VmState, t: MapType) -> HostResult<&mut Headers> {
    let id = st.effective;
    let stream = st.stream_mut(id).ok_or(Status::BadArgument)?;
    match t {
        MapType::RequestHeaders => stream.request_headers.as_mut(),
        MapType::RequestTrailers => stream.request_trailers.as_mut(),
        MapType::ResponseHeaders => stream.response_headers.as_mut(),
        MapType::ResponseTrailers => stream.response_trailers.as_mut(),
        _ => None,
    }
    .ok_or(Status::BadArgument)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn link_header_maps(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C, t: u32, ret_ptr: u32, ret_len: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_header_map_pairs")?;
            let Some(t) = MapType::from_raw(t) else {
                return Ok(Status::BadArgument.code());
            };
            // A missing map reads as no pairs (cpp-host writes a null pointer).
            let bytes = map_view(c.data(), t).map(|m| encode_pairs(m));
            Ok(code(write_alloc(
                &mut c,
                &bytes.unwrap_or_default(),
                ret_ptr,
                ret_len,
            )?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C, t: u32, ptr: u32, len: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_set_header_map_pairs")?;
            Ok({
                code((|| {
                    let t = MapType::from_raw(t).ok_or(Status::BadArgument)?;
                    let bytes = read(&c, ptr, len)?;
                    let pairs = decode_pairs(&bytes).ok_or(Status::BadArgument)?;
                    let map = map_mut(c.data_mut(), t)?;
                    // Envoy removes every existing key, then adds each pair.
                    map.clear();
                    for (k, v) in pairs {
                        map.push((lossy(&k).to_ascii_lowercase(), lossy(&v)));
                    }
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C, t: u32, kp: u32, kl: u32, ret_ptr: u32, ret_len: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_header_map_value")?;
            let r: HostResult<String> = (|| {
                let t = MapType::from_raw(t).ok_or(Status::BadArgument)?;
                let key = read_string(&c, kp, kl)?.to_ascii_lowercase();
                let map = map_view(c.data(), t).ok_or_else(|| missing_map(c.data()))?;
                // Envoy returns the first value only (a TODO there says so).
                map.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .ok_or(Status::NotFound)
            })();
            match r {
                Ok(v) => Ok(code(write_alloc(&mut c, v.as_bytes(), ret_ptr, ret_len)?)),
                Err(s) => Ok(s.code()),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_replace_header_map_value")?;
            Ok({
                code((|| {
                    let t = MapType::from_raw(t).ok_or(Status::BadArgument)?;
                    let key = read_string(&c, kp, kl)?.to_ascii_lowercase();
                    let value = read_string(&c, vp, vl)?;
                    let map = map_mut(c.data_mut(), t)?;
                    // HeaderMapImpl::setCopy: remove every value, then add one.
                    match map.iter().position(|(k, _)| *k == key) {
                        Some(first) => {
                            map[first].1 = value;
                            let mut i = first + 1;
                            while i < map.len() {
                                if map[i].0 == key {
                                    map.remove(i);
                                } else {
                                    i += 1;
                                }
                            }
                        }
                        None => map.push((key, value)),
                    }
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C, t: u32, kp: u32, kl: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_remove_header_map_value")?;
            Ok({
                code((|| {
                    let t = MapType::from_raw(t).ok_or(Status::BadArgument)?;
                    let key = read_string(&c, kp, kl)?.to_ascii_lowercase();
                    map_mut(c.data_mut(), t)?.retain(|(k, _)| *k != key);
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_add_header_map_value")?;
            Ok({
                code((|| {
                    let t = MapType::from_raw(t).ok_or(Status::BadArgument)?;
                    let key = read_string(&c, kp, kl)?.to_ascii_lowercase();
                    let value = read_string(&c, vp, vl)?;
                    map_mut(c.data_mut(), t)?.push((key, value));
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C, t: u32, ret: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_header_map_size")?;
            Ok({
                code((|| {
                    let t = MapType::from_raw(t).ok_or(Status::BadArgument)?;
                    let map = map_view(c.data(), t).ok_or(Status::BadArgument)?;
                    let size: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
                    write_u32(&mut c, ret, size as u32)
                })())
            })
        },
    )?;
    Ok(())
}

fn property_key(path: &[u8]) -> String {
    // The SDK joins path segments with NUL; host-sim keys properties by the dotted
    // name Envoy documents (`request.path`). The SDK also ends the last segment with a
    // NUL (`request\0path\0`), which Envoy ignores: conformance case
    // `properties_match_envoy` saw `request.path` read through the SDK answer Ok there.
    let path = path.strip_suffix(&[0]).unwrap_or(path);
    path.split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s))
        .collect::<Vec<_>>()
        .join(".")
}

fn link_properties(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C, pp: u32, pl: u32, ret_ptr: u32, ret_len: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_property")?;
            let r: HostResult<Vec<u8>> = (|| {
                let raw_path = read(&c, pp, pl)?;
                let key = property_key(&raw_path);
                let st = c.data();
                let stream = st.stream(st.effective);
                // Built-in attributes first, then what the guest set (Envoy's
                // filter-state fallback under "wasm.<name>").
                if let Some(v) = stream.and_then(|s| s.properties.get(&key)) {
                    return Ok(v.clone());
                }
                if let Some(v) = st.properties.get(&key) {
                    return Ok(v.clone());
                }
                // Envoy looks filter state up by the first path segment only, and a
                // bytes value has no fields: so only a one-segment path finds it.
                let mut segments = raw_path.splitn(2, |b| *b == 0);
                let first = segments.next().unwrap_or_default();
                if segments.next().is_some_and(|rest| !rest.is_empty()) {
                    return Err(Status::NotFound);
                }
                st.guest_properties
                    .get(&st.effective)
                    .and_then(|m| m.get(&lossy(first)))
                    .cloned()
                    .ok_or(Status::NotFound)
            })();
            match r {
                Ok(v) => Ok(code(write_alloc(&mut c, &v, ret_ptr, ret_len)?)),
                Err(s) => Ok(s.code()),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C, pp: u32, pl: u32, vp: u32, vl: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_set_property")?;
            Ok({
                code((|| {
                    // Envoy stores the value under "wasm." + the raw path, NULs included,
                    // but reads by the first segment: so a value set through the SDK (whose
                    // path always ends in NUL) is never found again. Conformance case
                    // `properties_match_envoy` saw set_property(["my","prop"]) then
                    // get_property answer NotFound in Envoy; only a raw one-segment path
                    // without the trailing NUL round-trips.
                    let key = lossy(&read(&c, pp, pl)?);
                    let value = read(&c, vp, vl)?;
                    let st = c.data_mut();
                    let id = st.effective;
                    // Filter state needs stream info: a root context has none.
                    if st.stream(id).is_none() {
                        return Err(Status::NotFound);
                    }
                    st.guest_properties
                        .entry(id)
                        .or_default()
                        .insert(key, value);
                    Ok(())
                })())
            })
        },
    )?;
    Ok(())
}

fn link_shared_data(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C,
         kp: u32,
         kl: u32,
         ret_ptr: u32,
         ret_len: u32,
         ret_cas: u32|
         -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_shared_data")?;
            let key = match read(&c, kp, kl) {
                Ok(k) => k,
                Err(s) => return Ok(s.code()),
            };
            let found = lock(&c.data().shared).data.get(&key).cloned();
            let Some((value, cas)) = found else {
                return Ok(Status::NotFound.code());
            };
            if let Err(s) = write_u32(&mut c, ret_cas, cas) {
                return Ok(s.code());
            }
            Ok(code(write_alloc(&mut c, &value, ret_ptr, ret_len)?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |c: C, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_set_shared_data")?;
            Ok({
                code((|| {
                    let key = read(&c, kp, kl)?;
                    let value = read(&c, vp, vl)?;
                    let mut sh = lock(&c.data().shared);
                    // SharedData::set: a CAS is checked only against an existing key;
                    // every write gets a fresh token.
                    if let Some((_, current)) = sh.data.get(&key) {
                        if cas != 0 && cas != *current {
                            return Err(Status::CasMismatch);
                        }
                    }
                    let token = sh.next_cas();
                    sh.data.insert(key, (value, token));
                    Ok(())
                })())
            })
        },
    )?;
    Ok(())
}

fn link_shared_queues(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C, np: u32, nl: u32, ret: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_register_shared_queue")?;
            Ok({
                code((|| {
                    let name = read_string(&c, np, nl)?;
                    let st = c.data();
                    let (vm, context, vm_id) =
                        (st.index, st.root_of(st.effective), st.vm_id.clone());
                    let token = {
                        let mut sh = lock(&st.shared);
                        let key = (vm_id, name.clone());
                        match sh.queue_tokens.get(&key).copied() {
                            Some(token) => {
                                // Registering again keeps the data; the last registrant
                                // receives on_queue_ready (SharedQueue::registerQueue).
                                if let Some(q) = sh.queues.get_mut(&token) {
                                    q.owner_vm = vm;
                                    q.owner_context = context;
                                }
                                token
                            }
                            None => {
                                sh.next_queue_token += 1;
                                let token = sh.next_queue_token;
                                sh.queue_tokens.insert(key, token);
                                sh.queues.insert(
                                    token,
                                    Queue {
                                        name,
                                        owner_vm: vm,
                                        owner_context: context,
                                        items: Default::default(),
                                    },
                                );
                                token
                            }
                        }
                    };
                    write_u32(&mut c, ret, token)
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C, vp: u32, vl: u32, np: u32, nl: u32, ret: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_resolve_shared_queue")?;
            Ok({
                code((|| {
                    let mut vm_id = read_string(&c, vp, vl)?;
                    let name = read_string(&c, np, nl)?;
                    if vm_id.is_empty() {
                        vm_id = c.data().vm_id.clone();
                    }
                    let token = lock(&c.data().shared)
                        .queue_tokens
                        .get(&(vm_id, name))
                        .copied()
                        .ok_or(Status::NotFound)?;
                    write_u32(&mut c, ret, token)
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |c: C, token: u32, vp: u32, vl: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_enqueue_shared_queue")?;
            Ok({
                code((|| {
                    let value = read(&c, vp, vl)?;
                    let mut sh = lock(&c.data().shared);
                    let q = sh.queues.get_mut(&token).ok_or(Status::NotFound)?;
                    q.items.push_back(value);
                    let event = Event::QueueReady {
                        vm: q.owner_vm,
                        context_id: q.owner_context,
                        token,
                    };
                    // One on_queue_ready per enqueue, posted to the owner's thread.
                    sh.events.push_back(event);
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C, token: u32, ret_ptr: u32, ret_len: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_dequeue_shared_queue")?;
            let item = {
                let mut sh = lock(&c.data().shared);
                match sh.queues.get_mut(&token) {
                    None => Err(Status::NotFound),
                    Some(q) => q.items.pop_front().ok_or(Status::Empty),
                }
            };
            match item {
                Ok(v) => Ok(code(write_alloc(&mut c, &v, ret_ptr, ret_len)?)),
                Err(s) => Ok(s.code()),
            }
        },
    )?;
    Ok(())
}

fn defer_stream(c: &mut C, t: u32, close: bool) -> HostResult {
    let t = StreamType::from_raw(t).ok_or(Status::BadArgument)?;
    let st = c.data_mut();
    let id = st.effective;
    match t {
        // Envoy acts only when the context has the filter callbacks, and answers Ok
        // either way: conformance cases `stream_control_matches_envoy` and
        // `root_context_calls_match_envoy` saw Ok for request/response from a root
        // context and for downstream from an HTTP context, without any effect.
        StreamType::HttpRequest | StreamType::HttpResponse => {
            if st.stream(id).is_some() {
                st.deferred.push(if close {
                    Deferred::Close(id, t)
                } else {
                    Deferred::Continue(id, t)
                });
            }
            Ok(())
        }
        StreamType::Downstream => Ok(()),
        // Envoy 1.40 answers Unimplemented for continuing the upstream side, Ok for
        // closing it (conformance case `stream_control_matches_envoy`).
        StreamType::Upstream if close => Ok(()),
        StreamType::Upstream => Err(Status::Unimplemented),
    }
}

fn link_stream_control(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C, t: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_continue_stream")?;
            Ok(code(defer_stream(&mut c, t, false)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C, t: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_close_stream")?;
            Ok(code(defer_stream(&mut c, t, true)))
        },
    )?;
    // ABI 0.2.0 names.
    l.func_wrap(
        "env",
        "proxy_continue_request",
        |mut c: C| -> wasmtime::Result<u32> {
            guard(&c, "proxy_continue_request")?;
            Ok(code(defer_stream(&mut c, 0, false)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_continue_response",
        |mut c: C| -> wasmtime::Result<u32> {
            guard(&c, "proxy_continue_response")?;
            Ok(code(defer_stream(&mut c, 1, false)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_clear_route_cache",
        |c: C| -> wasmtime::Result<u32> {
            guard(&c, "proxy_clear_route_cache")?;
            Ok(Status::Ok.code())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C,
         status: u32,
         dp: u32,
         dl: u32,
         bp: u32,
         bl: u32,
         hp: u32,
         hl: u32,
         grpc: i32|
         -> wasmtime::Result<u32> {
            guard(&c, "proxy_send_local_response")?;
            Ok(code((|| {
                let details = read_string(&c, dp, dl)?;
                let body = read(&c, bp, bl)?;
                // An empty buffer means no headers, as in Envoy.
                let headers = decode_headers(&read(&c, hp, hl)?)?;
                let st = c.data_mut();
                let id = st.effective;
                // Envoy answers Ok without an HTTP stream (nothing to reply to):
                // conformance case `root_context_calls_match_envoy` from on_configure.
                if st.stream(id).is_none() {
                    return Ok(());
                }
                let reply = LocalReply {
                    status: u16::try_from(status).unwrap_or(500),
                    // Envoy replaces white space in details with underscores (conformance
                    // case `local_reply_details_with_white_space_become_underscores`).
                    details: details
                        .chars()
                        .map(|ch| if ch.is_whitespace() { '_' } else { ch })
                        .collect(),
                    headers,
                    body,
                    grpc_status: i64::from(grpc),
                };
                st.deferred.push(Deferred::LocalReply(id, reply));
                Ok(())
            })()))
        },
    )?;
    Ok(())
}

fn decode_headers(bytes: &[u8]) -> HostResult<Headers> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let pairs = decode_pairs(bytes).ok_or(Status::BadArgument)?;
    Ok(pairs
        .into_iter()
        .map(|(k, v)| (lossy(&k).to_ascii_lowercase(), lossy(&v)))
        .collect())
}

fn link_http_calls(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C,
         up: u32,
         ul: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         tp: u32,
         tl: u32,
         timeout: u32,
         ret: u32|
         -> wasmtime::Result<u32> {
            guard(&c, "proxy_http_call")?;
            Ok({
                code((|| {
                    let cluster = read_string(&c, up, ul)?;
                    let headers = decode_headers(&read(&c, hp, hl)?)?;
                    let body = read(&c, bp, bl)?;
                    let trailers = decode_headers(&read(&c, tp, tl)?)?;
                    // Envoy's timeout is a signed int: values above i32::MAX are negative.
                    if i32::try_from(timeout).is_err() {
                        return Err(Status::BadArgument);
                    }
                    let has = |name: &str| headers.iter().any(|(k, _)| k == name);
                    if !has(":path") || !has(":method") || !has(":authority") {
                        return Err(Status::BadArgument);
                    }
                    let st = c.data_mut();
                    // The response goes to the root context (Envoy makes the call on
                    // contextOrEffectiveContext()->root_context()).
                    let context_id = st.root_of(st.effective);
                    let vm = st.index;
                    let mut sh = lock(&st.shared);
                    if !sh.clusters.contains(&cluster) {
                        return Err(Status::BadArgument);
                    }
                    // Envoy: next_http_call_id_ += 4 per VM, so 4, 8, 12…
                    st.next_http_token = st.next_http_token.wrapping_add(4);
                    let token = st.next_http_token;
                    let id = sh.next_callout_id();
                    let deadline_ns = if timeout == 0 {
                        u64::MAX
                    } else {
                        sh.now_ns + u64::from(timeout) * 1_000_000
                    };
                    sh.http_callouts.insert(
                        id,
                        HttpCallout {
                            id,
                            vm,
                            context_id,
                            token,
                            cluster,
                            headers,
                            body,
                            trailers,
                            timeout_ms: timeout,
                            deadline_ns,
                        },
                    );
                    drop(sh);
                    write_u32(&mut c, ret, token)
                })())
            })
        },
    )?;
    Ok(())
}

struct GrpcOpen {
    cluster: String,
    service: String,
    method: String,
    metadata: Headers,
    message: Option<Vec<u8>>,
    timeout_ms: u32,
}

fn open_grpc(c: &mut C, open: GrpcOpen, ret: u32) -> HostResult {
    let st = c.data_mut();
    let context_id = st.root_of(st.effective);
    let vm = st.index;
    let streaming = open.message.is_none();
    let mut sh = lock(&st.shared);
    if !sh.clusters.contains(&open.cluster) {
        // Envoy: an unknown cluster name is a ParseFailure for gRPC.
        return Err(Status::ParseFailure);
    }
    // Envoy numbers unary calls 5, 9, 13… and streams 6, 10, 14… per VM.
    let token = if streaming {
        st.next_grpc_stream = st.next_grpc_stream.wrapping_add(4);
        st.next_grpc_stream
    } else {
        st.next_grpc_call = st.next_grpc_call.wrapping_add(4);
        st.next_grpc_call
    };
    let id = sh.next_callout_id();
    let deadline_ns = (!streaming && open.timeout_ms > 0)
        .then(|| sh.now_ns + u64::from(open.timeout_ms) * 1_000_000);
    sh.grpc_callouts.insert(
        id,
        GrpcCallout {
            id,
            vm,
            context_id,
            token,
            cluster: open.cluster,
            service: open.service,
            method: open.method,
            initial_metadata: open.metadata,
            sent: open.message.into_iter().collect(),
            streaming,
            local_closed: false,
            timeout_ms: open.timeout_ms,
            deadline_ns,
        },
    );
    drop(sh);
    st.grpc_tokens.insert(token, id);
    crate::memory::write_u32(c, ret, token)
}

/// Envoy tells call tokens (`token & 3 == 1`) from stream tokens (`== 2`) by their low
/// bits before looking them up: any other token is BadArgument, an unknown one of the
/// right shape NotFound (conformance case `grpc_errors_match_envoy`).
fn grpc_callout_id(st: &VmState, token: u32) -> HostResult<u64> {
    if token & 3 != 1 && token & 3 != 2 {
        return Err(Status::BadArgument);
    }
    st.grpc_tokens.get(&token).copied().ok_or(Status::NotFound)
}

fn link_grpc(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C,
         up: u32,
         ul: u32,
         sp: u32,
         sl: u32,
         mp: u32,
         ml: u32,
         hp: u32,
         hl: u32,
         msgp: u32,
         msgl: u32,
         timeout: u32,
         ret: u32|
         -> wasmtime::Result<u32> {
            guard(&c, "proxy_grpc_call")?;
            Ok({
                code((|| {
                    let open = GrpcOpen {
                        cluster: read_string(&c, up, ul)?,
                        service: read_string(&c, sp, sl)?,
                        method: read_string(&c, mp, ml)?,
                        metadata: decode_headers(&read(&c, hp, hl)?)?,
                        message: Some(read(&c, msgp, msgl)?),
                        timeout_ms: timeout,
                    };
                    open_grpc(&mut c, open, ret)
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C,
         up: u32,
         ul: u32,
         sp: u32,
         sl: u32,
         mp: u32,
         ml: u32,
         hp: u32,
         hl: u32,
         ret: u32|
         -> wasmtime::Result<u32> {
            guard(&c, "proxy_grpc_stream")?;
            Ok({
                code((|| {
                    let open = GrpcOpen {
                        cluster: read_string(&c, up, ul)?,
                        service: read_string(&c, sp, sl)?,
                        method: read_string(&c, mp, ml)?,
                        metadata: decode_headers(&read(&c, hp, hl)?)?,
                        message: None,
                        timeout_ms: 0,
                    };
                    open_grpc(&mut c, open, ret)
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |c: C, token: u32, mp: u32, ml: u32, end: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_grpc_send")?;
            Ok({
                code((|| {
                    let message = read(&c, mp, ml)?;
                    let st = c.data();
                    // Only stream tokens (`token & 3 == 2`) can send.
                    if token & 3 != 2 {
                        return Err(Status::BadArgument);
                    }
                    let id = grpc_callout_id(st, token)?;
                    let mut sh = lock(&st.shared);
                    let call = sh.grpc_callouts.get_mut(&id).ok_or(Status::NotFound)?;
                    call.sent.push(message);
                    if end != 0 {
                        call.local_closed = true;
                    }
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut c: C, token: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_grpc_cancel")?;
            Ok({
                code((|| {
                    let st = c.data_mut();
                    let id = grpc_callout_id(st, token)?;
                    st.grpc_tokens.remove(&token);
                    // A cancelled call or reset stream gets no further callbacks.
                    lock(&st.shared).grpc_callouts.remove(&id);
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut c: C, token: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_grpc_close")?;
            Ok({
                code((|| {
                    let st = c.data_mut();
                    let id = grpc_callout_id(st, token)?;
                    let mut sh = lock(&st.shared);
                    let streaming = sh
                        .grpc_callouts
                        .get(&id)
                        .map(|g| g.streaming)
                        .ok_or(Status::NotFound)?;
                    if streaming {
                        // closeStream: a local half-close; the remote side may still answer.
                        if let Some(g) = sh.grpc_callouts.get_mut(&id) {
                            g.local_closed = true;
                        }
                    } else {
                        // Closing a unary call cancels it.
                        sh.grpc_callouts.remove(&id);
                        drop(sh);
                        st.grpc_tokens.remove(&token);
                    }
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C, code_ptr: u32, mp: u32, ml: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_status")?;
            let (status, message) = c.data().grpc_status.clone();
            if let Err(s) = write_u32(&mut c, code_ptr, status) {
                return Ok(s.code());
            }
            Ok(code(write_alloc(&mut c, &message, mp, ml)?))
        },
    )?;
    Ok(())
}

fn link_metrics(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C, t: u32, np: u32, nl: u32, ret: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_define_metric")?;
            Ok({
                code((|| {
                    let kind = MetricKind::from_raw(t).ok_or(Status::BadArgument)?;
                    let name = read_string(&c, np, nl)?;
                    let st = c.data_mut();
                    // Envoy: kMetricIdIncrement = 4, the low two bits hold the type, so
                    // the first ids are 4 (counter), 5 (gauge), 6 (histogram). Every
                    // define gets a new id; one name maps to one stat.
                    let n = &mut st.next_metric_ids[t as usize];
                    *n += 1;
                    let id = *n * 4 + t;
                    st.metric_ids.insert(id, (kind, name.clone()));
                    st.metric_by_name.insert((kind, name.clone()), id);
                    lock(&st.shared).metrics.entry(name).or_insert(Metric {
                        kind,
                        value: 0,
                        samples: Vec::new(),
                    });
                    write_u32(&mut c, ret, id)
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C, id: u32, ret: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_get_metric")?;
            Ok({
                code((|| {
                    // Envoy dispatches on the id's type bits first: only counters and gauges
                    // can be read, so an unknown id with histogram (or invalid) type bits is
                    // BadArgument, not NotFound (conformance case `metrics_match_envoy`).
                    if id & 3 >= 2 {
                        return Err(Status::BadArgument);
                    }
                    let (kind, name) = c
                        .data()
                        .metric_ids
                        .get(&id)
                        .cloned()
                        .ok_or(Status::NotFound)?;
                    if kind == MetricKind::Histogram {
                        return Err(Status::BadArgument);
                    }
                    let value = lock(&c.data().shared)
                        .metrics
                        .get(&name)
                        .map(|m| m.value)
                        .ok_or(Status::NotFound)?;
                    write_u64(&mut c, ret, value as u64)
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C, id: u32, value: u64| -> wasmtime::Result<u32> {
            guard(&c, "proxy_record_metric")?;
            Ok({
                code((|| {
                    let (kind, name) = c
                        .data()
                        .metric_ids
                        .get(&id)
                        .cloned()
                        .ok_or(Status::NotFound)?;
                    let mut sh = lock(&c.data().shared);
                    let m = sh.metrics.get_mut(&name).ok_or(Status::NotFound)?;
                    match kind {
                        // Envoy: counter.add(value), gauge.set(value), histogram.recordValue.
                        MetricKind::Counter => m.value = m.value.saturating_add(value as i64),
                        MetricKind::Gauge => m.value = value as i64,
                        MetricKind::Histogram => {
                            m.samples.push(value);
                            m.value = m.samples.len() as i64;
                        }
                    }
                    Ok(())
                })())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C, id: u32, offset: i64| -> wasmtime::Result<u32> {
            guard(&c, "proxy_increment_metric")?;
            Ok({
                code((|| {
                    let (kind, name) = match c.data().metric_ids.get(&id).cloned() {
                        Some(m) => m,
                        // An unknown histogram-typed id is BadArgument before lookup.
                        None if id & 3 >= 2 => return Err(Status::BadArgument),
                        None => return Err(Status::NotFound),
                    };
                    let mut sh = lock(&c.data().shared);
                    let m = sh.metrics.get_mut(&name).ok_or(Status::NotFound)?;
                    match kind {
                        // Counters only go up: a zero or negative offset is refused.
                        MetricKind::Counter if offset > 0 => {
                            m.value = m.value.saturating_add(offset)
                        }
                        MetricKind::Counter => return Err(Status::BadArgument),
                        MetricKind::Gauge => m.value = m.value.saturating_add(offset),
                        MetricKind::Histogram => return Err(Status::BadArgument),
                    }
                    Ok(())
                })())
            })
        },
    )?;
    Ok(())
}

fn link_misc(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C, id: u32| -> wasmtime::Result<u32> {
            guard(&c, "proxy_set_effective_context")?;
            Ok({
                let st = c.data_mut();
                if st.contexts.contains_key(&id) {
                    st.effective = id;
                    Status::Ok.code()
                } else {
                    Status::BadArgument.code()
                }
            })
        },
    )?;
    l.func_wrap("env", "proxy_done", |mut c: C| -> wasmtime::Result<u32> {
        guard(&c, "proxy_done")?;
        Ok({
            let st = c.data_mut();
            let root = st.root_of(st.effective);
            // Envoy: NotFound unless the root is waiting to be done (on_done said false).
            match st.done_roots.iter().position(|r| *r == root) {
                Some(i) => {
                    st.done_roots.remove(i);
                    Status::Ok.code()
                }
                None => Status::NotFound.code(),
            }
        })
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C,
         np: u32,
         nl: u32,
         ap: u32,
         al: u32,
         ret_ptr: u32,
         ret_len: u32|
         -> wasmtime::Result<u32> {
            guard(&c, "proxy_call_foreign_function")?;
            let r: HostResult<Vec<u8>> = (|| {
                let name = read_string(&c, np, nl)?;
                let args = read(&c, ap, al)?;
                let mut sh = lock(&c.data().shared);
                sh.foreign_calls.push((name.clone(), args.clone()));
                match sh.foreign.get_mut(&name) {
                    Some(f) => f(&args),
                    // Envoy's built-in clear_route_cache takes no arguments and
                    // returns nothing; host-sim has no route cache to clear.
                    None if name == "clear_route_cache" => Ok(Vec::new()),
                    None => Err(Status::NotFound),
                }
            })();
            match r {
                Ok(v) => Ok(code(write_alloc(&mut c, &v, ret_ptr, ret_len)?)),
                Err(s) => Ok(s.code()),
            }
        },
    )?;
    Ok(())
}

/// Marks that a root context may call `proxy_done` (its on_done returned false).
pub(crate) fn expect_done(st: &mut VmState, root: u32) {
    if !st.done_roots.contains(&root) {
        st.done_roots.push(root);
    }
}

/// Whether a context id names a live root context.
pub(crate) fn is_root(st: &VmState, id: u32) -> bool {
    matches!(st.contexts.get(&id), Some(Context::Root))
}
