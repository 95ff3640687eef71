//! The embedded file registry: a YAML (or JSON) file listing services and instances, reloaded
//! when its modification time or size changes. A file that fails to parse or validate is
//! rejected and the last good registry stays live.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use super::Registry;

/// Largest registry file read, in bytes; a bigger file is rejected rather than read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A file registry: the path and the fingerprint of the last version read.
#[derive(Debug)]
pub struct FileRegistry {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
}

impl FileRegistry {
    /// A registry read from `path` (not read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            seen: None,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file if it changed since the last call: `Ok(None)` when unchanged, the new
    /// registry when changed and valid, an error when changed and invalid (the next call
    /// retries only after another change).
    pub fn poll(&mut self) -> Result<Option<Registry>> {
        let meta = std::fs::metadata(&self.path)
            .with_context(|| format!("stat {}", self.path.display()))?;
        let fingerprint = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.seen == Some(fingerprint) {
            return Ok(None);
        }
        self.seen = Some(fingerprint);
        if meta.len() > MAX_FILE_BYTES {
            bail!(
                "{}: {} bytes is over the {MAX_FILE_BYTES}-byte limit",
                self.path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("read {}", self.path.display()))?;
        parse(&text)
            .with_context(|| format!("{}", self.path.display()))
            .map(Some)
    }
}

/// Polls `path` every `interval` until `stop` turns true, reporting to `out`.
pub async fn run(
    path: PathBuf,
    interval: std::time::Duration,
    out: tokio::sync::mpsc::Sender<super::RegistryEvent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut registry = FileRegistry::new(path);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
            _ = ticker.tick() => {}
        }
        let event = match registry.poll() {
            Ok(Some(registry)) => super::RegistryEvent::Update {
                registry,
                origin: "file",
            },
            Ok(None) => super::RegistryEvent::Alive,
            Err(err) => super::RegistryEvent::Error(format!("{err:#}")),
        };
        if out.send(event).await.is_err() {
            break;
        }
    }
}

/// Parses and validates a registry document.
pub fn parse(text: &str) -> Result<Registry> {
    let registry: Registry = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(l) => anyhow::anyhow!("{}:{}: {e}", l.line(), l.column()),
        None => anyhow::anyhow!("{e}"),
    })?;
    for (service, endpoints) in &registry.services {
        if !super::super::rules::is_valid_name(service) {
            bail!("services.{service}: a service name is 1-128 characters of [A-Za-z0-9._-]");
        }
        for (i, e) in endpoints.iter().enumerate() {
            if e.address.parse::<std::net::IpAddr>().is_err() {
                bail!(
                    "services.{service}[{i}].address: {:?} is not an IP address",
                    e.address
                );
            }
            if e.port == 0 {
                bail!("services.{service}[{i}].port: must be 1-65535");
            }
            if e.weight == 0 {
                bail!("services.{service}[{i}].weight: must be at least 1");
            }
        }
    }
    Ok(registry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::Health;
    use super::*;

    #[test]
    fn parses_services_with_defaults() {
        let r = parse(
            "services:\n  orders:\n  - {address: 127.0.0.1, port: 8080}\n  - {address: 127.0.0.2, port: 8081, health: warning, weight: 3, warning_weight: 0}\n",
        )
        .unwrap();
        let orders = &r.services["orders"];
        assert_eq!(orders[0].health, Health::Passing);
        assert_eq!(orders[0].weight, 1);
        assert_eq!(orders[1].warning_weight, 0);
        assert_eq!(r.instance_count(), 2);
    }

    #[test]
    fn rejects_bad_instances_naming_the_field() {
        let err = parse("services:\n  orders:\n  - {address: nope, port: 1}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "services.orders[0].address: \"nope\" is not an IP address"
        );
        let err = parse("services:\n  orders:\n  - {address: 127.0.0.1, prot: 1}\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `prot`"), "{err}");
        assert!(err.to_string().starts_with("3:"), "{err}");
    }

    #[test]
    fn polls_only_on_change_and_reports_bad_files() {
        let dir = std::env::temp_dir().join(format!("meshguard-file-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("services.yaml");
        std::fs::write(&path, "services: {a: [{address: 127.0.0.1, port: 1}]}\n").unwrap();
        let mut reg = FileRegistry::new(&path);
        assert_eq!(reg.poll().unwrap().unwrap().instance_count(), 1);
        assert!(reg.poll().unwrap().is_none());
        // A different size, so the change is seen even within one mtime tick.
        std::fs::write(&path, "services: {a: [{address: 127.0.0.1, port: 0}]}  \n").unwrap();
        assert!(reg.poll().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(reg.poll().is_err(), "a missing file is an error");
    }
}
