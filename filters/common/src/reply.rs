//! Local replies: the filter answers the downstream itself instead of forwarding.

/// Sends a local reply with `status`, `headers` and `body` (empty: no body). Call it from a
/// request callback and return `Action::Pause`; Envoy sends the reply after the callback.
pub fn send_local_reply(status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let body = (!body.is_empty()).then_some(body);
    // The SDK answers Ok or traps on a host bug; there is nothing a filter can do about either.
    let _ = proxy_wasm::hostcalls::send_http_response(u32::from(status), headers.to_vec(), body);
}
