//! Where the harness finds the workspace, the Envoy binary and the built wasm modules.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Environment variable that points the harness at a different Envoy binary.
const ENVOY_ENV: &str = "MESHGUARD_ENVOY";

/// The workspace root (the directory holding the root `Cargo.toml` and the `Makefile`).
pub fn workspace_root() -> PathBuf {
    // This crate lives at `<root>/tests`; the path is fixed at compile time, which is what we
    // want: the harness and the demo always run from a checkout, never from an installed copy.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The Envoy binary: `$MESHGUARD_ENVOY` if set, else the copy `make tools` installs.
pub fn envoy_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ENVOY_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{ENVOY_ENV}={} is not a file; unset it to use the copy installed by `make tools`",
                path.display()
            );
        }
        return Ok(path);
    }
    let path = workspace_root().join(".tools/envoy/envoy/_bin/envoy");
    if !path.is_file() {
        bail!(
            "Envoy is not installed at {}: run `make tools` (or set {ENVOY_ENV} to an Envoy 1.40 binary)",
            path.display()
        );
    }
    Ok(path)
}

/// The directory cargo writes build output to (`$CARGO_TARGET_DIR` or `<root>/target`).
fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The built module `<target>/wasm32-wasip1/wasm/<name>.wasm`; `-` in `name` is read as `_`
/// because that is how cargo names cdylib outputs.
pub fn wasm_artifact(name: &str) -> Result<PathBuf> {
    let file = format!("{}.wasm", name.replace('-', "_"));
    let path = target_dir().join("wasm32-wasip1/wasm").join(file);
    if !path.is_file() {
        bail!(
            "wasm module {} is not built: run `make wasm`",
            path.display()
        );
    }
    Ok(path)
}
