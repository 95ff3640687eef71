//! meshguard control plane: registry sync, unified rules and an xDS (ADS) server for Envoy.

mod convert;
mod registry;
mod render;
mod routing;
mod rules;
mod run;
mod status;
mod xds;

pub use crate::{
    convert::{
        filter_instance_name, filter_vm_id, snapshot, ConvertError, ConvertOptions, LISTENER_NAME,
        ROUTE_CONFIG_NAME,
    },
    registry::{
        consul::ConsulOptions, file::parse as parse_registry, file::FileRegistry, Endpoint, Health,
        Registry, RegistryEvent,
    },
    render::{ads_bootstrap, static_bootstrap, XdsApi},
    routing::{NativeRetries, NativeRouting, Routing},
    rules::{load as load_rules, parse as parse_rules, RuleError, RuleErrors, Rules, ServiceRules},
    run::{default_wasm_dir, run, ControlPlane, RegistrySource, RulesSource, RunOptions},
    xds::{
        ads::{AdsServer, NackRecord, NodeStatus, XdsStatus},
        cache::{Resource, ResourceSet, ResourceType, Snapshot, SnapshotCache, SnapshotError},
        delta::DeltaStreamState,
        stream::{Nack, RequestKind, StreamState},
    },
};
