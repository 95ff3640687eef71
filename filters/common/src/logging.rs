//! Logging through Envoy (`proxy_log`) and a panic hook that leaves a trace before the VM traps.

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

/// Installs the SDK's `log` backend (at `info` until [`sync_log_level`] runs) and
/// [`install_panic_hook`]. Call it first in `proxy_wasm::main!`. It makes no host call: Envoy
/// allows almost none during `_initialize` (`proxy_get_log_level` there fails the VM with
/// "restricted_callback"), so read the host's level later, in `on_configure`.
pub fn init_logging() {
    // The SDK installs its logger (and its own panic hook, replaced below) on the first call.
    proxy_wasm::set_log_level(LogLevel::Info);
    install_panic_hook();
}

/// Filters `log` records in the guest at the level Envoy runs at (`proxy_get_log_level`), so a
/// `debug!` costs nothing unless Envoy would print it. Envoy's level can change at run time
/// (`/logging`): call this again from time to time (e.g. on configure and on ticks).
pub fn sync_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// Replaces the panic hook with one that logs the panic message and location at critical.
///
/// Filters deny `unwrap`/`expect`/`panic` in their own code, but a panic can still come from a
/// dependency (the SDK panics on unexpected host statuses). With `panic = "abort"` the VM traps
/// right after the hook, Envoy marks the plugin failed and its failure policy applies; without
/// the hook the only trace would be a bare "unreachable" trap.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("meshguard: {info}"));
    }));
}
