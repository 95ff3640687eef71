//! Shared by the host-sim test modules: compiled fixtures and filters, and a configured host.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use host_sim::{Host, LogLevel, Module};
use meshguard_tests::wasm_artifact;

/// The compiled `target/wasm32-wasip1/wasm/<name>.wasm`, compiled once per test binary
/// (`Module` is a cheap handle, so each test gets its own copy).
pub fn module(name: &'static str) -> Module {
    static MODULES: OnceLock<Mutex<HashMap<&'static str, Module>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    modules
        .entry(name)
        .or_insert_with(|| {
            let path = wasm_artifact(name).expect("built by `make wasm`");
            Module::from_file(path).unwrap_or_else(|e| panic!("{name} loads: {e}"))
        })
        .clone()
}

/// A configured host for filter `name` with `workers` worker VMs behind Envoy's base VM
/// (VM 0, no traffic), logging at debug.
pub fn filter_host(name: &'static str, config: &str, workers: usize) -> Host {
    filter_host_with_clusters(name, config, workers, &[])
}

/// Like [`filter_host`], with `clusters` known to `dispatch_http_call`.
pub fn filter_host_with_clusters(
    name: &'static str,
    config: &str,
    workers: usize,
    clusters: &[&str],
) -> Host {
    let builder = Host::builder(&module(name))
        .plugin_config(config)
        .workers(workers)
        .base_vm()
        .log_level(LogLevel::Debug);
    let mut host = clusters
        .iter()
        .fold(builder, |b, c| b.cluster(c))
        .build()
        .unwrap();
    assert!(host.configure().unwrap(), "rejected: {:?}", host.logs());
    host
}

/// The host calls (by import name, `malloc` included; see `Host::import_calls`) that `run`
/// made, e.g. a batch of requests.
pub fn host_calls_during(
    host: &mut Host,
    run: impl FnOnce(&mut Host),
) -> std::collections::BTreeMap<String, u64> {
    let before = host.import_calls();
    run(host);
    host.import_calls()
        .into_iter()
        .map(|(name, n)| {
            let delta = n - before.get(&name).copied().unwrap_or(0);
            (name, delta)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}
