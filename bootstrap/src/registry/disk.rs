//! The last-known-good registry on disk: written atomically (temporary file, fsync, rename) with
//! a SHA-256 checksum, so a crash mid-write or a corrupted file is detected and never served.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::Registry;

/// First token of the file's header line.
const MAGIC: &str = "meshguard-registry-v1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `registry` to `path` atomically: `MAGIC SHA256\n` then the JSON it covers.
pub fn save(path: &Path, registry: &Registry) -> Result<()> {
    let body = serde_json::to_vec(registry).context("encode the registry")?;
    let digest = hex(&Sha256::digest(&body));
    let tmp = path.with_extension("tmp");
    {
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(format!("{MAGIC} {digest}\n").as_bytes())?;
        file.write_all(&body)?;
        file.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename durable; not every platform can open a directory, hence best effort.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Reads a registry written by [`save`], verifying its checksum.
pub fn load(path: &Path) -> Result<Registry> {
    let raw = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let newline = raw
        .iter()
        .position(|b| *b == b'\n')
        .context("no header line")?;
    let header = std::str::from_utf8(&raw[..newline]).context("header is not UTF-8")?;
    let Some((MAGIC, digest)) = header.split_once(' ') else {
        bail!("{}: not a meshguard registry snapshot", path.display());
    };
    let body = &raw[newline + 1..];
    if hex(&Sha256::digest(body)) != digest {
        bail!("{}: checksum mismatch (corrupted snapshot)", path.display());
    }
    serde_json::from_slice(body).with_context(|| format!("decode {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::Endpoint;
    use super::*;

    #[test]
    fn round_trips_and_detects_corruption() {
        let dir = std::env::temp_dir().join(format!("meshguard-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.snapshot");
        let mut registry = Registry::default();
        registry.services.insert(
            "orders".into(),
            vec![Endpoint {
                address: "10.0.0.1".into(),
                port: 80,
                health: Default::default(),
                weight: 3,
                warning_weight: 1,
                zone: Some("a".into()),
                datacenter: Some("dc2".into()),
                priority: 1,
                secure: true,
                group: Some("blue".into()),
            }],
        );
        save(&path, &registry).unwrap();
        assert_eq!(load(&path).unwrap(), registry);
        assert!(!path.with_extension("tmp").exists());
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 2;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
