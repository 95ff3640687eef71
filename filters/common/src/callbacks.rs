//! Declaring the stream callbacks a filter implements, so the build can remove the others.
//!
//! The proxy-wasm SDK exports every callback of the ABI, and Envoy enters the VM for every
//! export it finds: a filter that never looks at response bodies still pays a V8 round trip
//! per body chunk, one for the access log and one at the end of the stream. `make wasm` runs
//! `wasm-trim` (tools/wasm-trim) over the built modules; it removes the exports of the stream
//! callbacks a module does not declare here. Envoy answers a missing callback with the ABI's
//! default (`Continue`; `true` for `done`), which is also what the SDK's default
//! implementation answers, so only the cost changes.
//!
//! Declare every callback the module's stream **or root** context overrides (`done` is also
//! the root context's shutdown callback). A name that is not a stream callback fails the
//! build's trim step; forgetting one the filter implements silently disables it, which the
//! filters' tests pin (`tests/tests/it/callbacks.rs` checks each module's exports).

/// Declares the stream callbacks this module implements: any of `request_headers`,
/// `request_body`, `request_trailers`, `request_metadata`, `response_headers`,
/// `response_body`, `response_trailers`, `response_metadata`, `log`, `done`,
/// `new_connection`, `downstream_data`, `upstream_data`, `downstream_connection_close`,
/// `upstream_connection_close`. Use it once per module, at the crate root; an empty list
/// declares a module that implements none.
///
/// ```
/// meshguard_filter_common::stream_callbacks!(request_headers, response_headers, done);
/// ```
#[macro_export]
macro_rules! stream_callbacks {
    ($($callback:ident),* $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            // The comment line keeps the section non-empty (so emitted) when nothing is declared.
            const NAMES: &str = concat!("# implemented stream callbacks\n", $(stringify!($callback), "\n",)*);
            const LEN: usize = NAMES.len();
            #[used]
            #[link_section = "meshguard.stream_callbacks"]
            static DECLARED: [u8; LEN] = {
                let bytes = NAMES.as_bytes();
                let mut out = [0u8; LEN];
                let mut i = 0;
                while i < LEN {
                    out[i] = bytes[i];
                    i += 1;
                }
                out
            };
        };
    };
}
