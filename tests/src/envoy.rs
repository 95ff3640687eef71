//! Runs a real Envoy on loopback for a test: renders the config, starts the process on free
//! ports, waits until it is LIVE, and kills it on drop.
//!
//! Parallel tests each get their own Envoy: `--disable-hot-restart` keeps them from sharing a
//! hot-restart domain socket or shared-memory region, and port 0 plus discovery (admin from
//! `--admin-address-path`, listeners from `/listeners`) keeps them from sharing ports.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use crate::envoy_config::EnvoyConfig;
use crate::http::{send_with_timeout, Request};
use crate::paths::{envoy_binary, workspace_root};

/// How many trailing log lines an error carries.
const LOG_TAIL_LINES: usize = 60;

/// Interval between polls of Envoy's admin API while waiting for a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Timeout of one admin request: the admin server is local and answers in milliseconds.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Set to keep each Envoy's run directory (config, logs) after the test for inspection.
const KEEP_RUN_ENV: &str = "MESHGUARD_KEEP_RUN";

/// A running Envoy process owned by a test.
#[derive(Debug)]
pub struct Envoy {
    child: Mutex<Child>,
    run_dir: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    config_yaml: String,
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
}

impl Envoy {
    /// Renders `cfg`, starts Envoy and waits until `/ready` says LIVE. On failure the error
    /// carries the last 60 lines of Envoy's log.
    pub fn start(cfg: EnvoyConfig) -> Result<Self> {
        let binary = envoy_binary()?;
        let config_yaml = cfg.render()?;
        let run_dir = new_run_dir()?;
        let config_path = run_dir.join("envoy.yaml");
        std::fs::write(&config_path, &config_yaml)
            .with_context(|| format!("write {}", config_path.display()))?;
        let admin_path = run_dir.join("admin-address");
        let log_path = run_dir.join("envoy.log");
        let stderr_path = run_dir.join("stderr.log");
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("create {}", stderr_path.display()))?;
        let stdout = stderr.try_clone().context("clone stderr file")?;
        let child = Command::new(&binary)
            .arg("--config-path")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(cfg.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg(&cfg.log_level)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            // Envoy buffers its log file for 10 s by default; tests read it while Envoy runs.
            .arg("--file-flush-interval-msec")
            .arg("100")
            .args(&cfg.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let mut envoy = Self {
            child: Mutex::new(child),
            run_dir,
            log_path,
            stderr_path,
            config_yaml,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: Vec::new(),
        };
        // From here on a failure drops `envoy`, which kills the process and cleans up.
        let template = cfg.template_path().map_or_else(
            || "inline template".to_string(),
            |p| p.display().to_string(),
        );
        if let Err(err) = envoy.wait_until_ready(&admin_path, cfg.startup_timeout) {
            let err = err.context(format!("Envoy failed to start ({template})"));
            return Err(envoy.with_log_tail(err));
        }
        Ok(envoy)
    }

    /// Waits for the admin address file, then for `/ready` == LIVE, then reads the listeners.
    fn wait_until_ready(&mut self, admin_path: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if self.admin.port() == 0 {
                if let Some(addr) = read_admin_address(admin_path) {
                    self.admin = addr;
                }
            }
            if self.admin.port() != 0 {
                let ready = send_with_timeout(self.admin, &Request::get("/ready"), ADMIN_TIMEOUT);
                if let Ok(response) = ready {
                    if response.status == 200 && response.body_str().trim() == "LIVE" {
                        break;
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("not LIVE after {timeout:?}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.listeners = self.read_listeners()?;
        if self.listeners.is_empty() {
            bail!("Envoy is LIVE but has no listeners");
        }
        Ok(())
    }

    /// `GET /listeners?format=json` → (name, bound address) for every listener.
    fn read_listeners(&self) -> Result<Vec<(String, SocketAddr)>> {
        let text = self.admin_get("/listeners?format=json")?;
        let json: serde_json::Value = serde_json::from_str(&text).context("parse /listeners")?;
        let statuses = json["listener_statuses"]
            .as_array()
            .ok_or_else(|| anyhow!("/listeners has no listener_statuses: {text}"))?;
        statuses
            .iter()
            .map(|status| {
                let name = status["name"].as_str().unwrap_or_default().to_string();
                let socket = &status["local_address"]["socket_address"];
                let ip = socket["address"].as_str().unwrap_or_default();
                let port = socket["port_value"].as_u64().unwrap_or_default();
                let addr: SocketAddr = format!("{ip}:{port}").parse().with_context(|| {
                    format!("listener {name:?} has no usable address: {status}")
                })?;
                Ok((name, addr))
            })
            .collect()
    }

    /// The main listener: the one named `main`, else the first one.
    pub fn listener_addr(&self) -> SocketAddr {
        // `start` guarantees at least one listener, so the admin fallback is never taken; it
        // only spares callers a Result.
        self.listeners
            .iter()
            .find(|(name, _)| name == "main")
            .or_else(|| self.listeners.first())
            .map_or(self.admin, |(_, addr)| *addr)
    }

    /// The address of the listener named `name`.
    pub fn listener(&self, name: &str) -> Result<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, addr)| *addr)
            .ok_or_else(|| {
                let known: Vec<_> = self.listeners.iter().map(|(n, _)| n.as_str()).collect();
                anyhow!("no listener named {name:?}; Envoy has {known:?}")
            })
    }

    /// The admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `GET` an admin path (e.g. `/clusters`); errors on a non-200 status.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        self.admin_request(Request::get(path))
    }

    /// `POST` an admin path (e.g. `/reset_counters`); errors on a non-200 status.
    pub fn admin_post(&self, path: &str) -> Result<String> {
        self.admin_request(Request::post(path))
    }

    fn admin_request(&self, request: Request) -> Result<String> {
        let response = send_with_timeout(self.admin, &request, ADMIN_TIMEOUT)
            .with_context(|| format!("Envoy admin {} {}", request.method, request.path))?;
        if response.status != 200 {
            bail!(
                "Envoy admin {} {} answered {}: {}",
                request.method,
                request.path,
                response.status,
                response.body_str()
            );
        }
        Ok(response.body_str().into_owned())
    }

    /// Every counter and gauge by name (histograms and text readouts are left out).
    pub fn stats(&self) -> Result<BTreeMap<String, i64>> {
        let text = self.admin_get("/stats?format=json")?;
        let json: serde_json::Value = serde_json::from_str(&text).context("parse /stats")?;
        let entries = json["stats"]
            .as_array()
            .ok_or_else(|| anyhow!("/stats has no stats array"))?;
        let mut stats = BTreeMap::new();
        for entry in entries {
            let (Some(name), Some(value)) = (entry["name"].as_str(), entry.get("value")) else {
                continue;
            };
            // Gauges are u64 in Envoy; saturate rather than drop the rare huge one.
            let value = value
                .as_i64()
                .or_else(|| value.as_u64().map(|v| i64::try_from(v).unwrap_or(i64::MAX)));
            if let Some(value) = value {
                stats.insert(name.to_string(), value);
            }
        }
        Ok(stats)
    }

    /// One counter or gauge; `None` if it does not exist (or the admin API failed).
    pub fn stat(&self, name: &str) -> Option<i64> {
        self.stats().ok()?.get(name).copied()
    }

    /// Waits (bounded by `timeout`) until stat `name` exists and satisfies `predicate`, and
    /// returns its value.
    pub fn wait_for_stat(
        &self,
        name: &str,
        predicate: impl Fn(i64) -> bool,
        timeout: Duration,
    ) -> Result<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running().map_err(|e| self.with_log_tail(e))?;
            let value = self.stat(name);
            if let Some(v) = value.filter(|v| predicate(*v)) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!("stat {name} did not reach the expected value within {timeout:?} (last: {value:?})");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The Prometheus exposition (`/stats/prometheus`).
    pub fn prometheus(&self) -> Result<String> {
        self.admin_get("/stats/prometheus")
    }

    /// The parsed `/config_dump`.
    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let text = self.admin_get("/config_dump")?;
        serde_json::from_str(&text).context("parse /config_dump")
    }

    /// Envoy's log so far (plus anything it wrote to stdout/stderr).
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        if !stderr.trim().is_empty() {
            log.push_str("--- stdout/stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    /// The bootstrap YAML Envoy was started with.
    pub fn config_yaml(&self) -> &str {
        &self.config_yaml
    }

    /// The Envoy process id (e.g. for reading its CPU time under `/proc`).
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Whether the process is still alive (a crash mid-test shows up here).
    pub fn is_running(&self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    fn ensure_running(&self) -> Result<()> {
        match self.child().try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("Envoy exited ({status})"),
            Err(err) => Err(anyhow!(err).context("check Envoy process")),
        }
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `err` followed by the last [`LOG_TAIL_LINES`] lines of Envoy's output, as one message so
    /// that `{}`, `{:#}` and `{:?}` all show the log (a context chain would put it first).
    fn with_log_tail(&self, err: anyhow::Error) -> anyhow::Error {
        // No wait for a final flush: Envoy flushes the log file on exit and every 100 ms.
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        anyhow!(
            "{err:#}\n--- last {LOG_TAIL_LINES} lines of Envoy's log ({}; kept if \
             {KEEP_RUN_ENV}=1) ---\n{tail}",
            self.log_path.display()
        )
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
        drop(child);
        if std::env::var_os(KEEP_RUN_ENV).is_none() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// The admin address Envoy wrote, once the file is complete.
fn read_admin_address(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A fresh directory `<root>/.run/envoy-<pid>-<n>-<nanos>` for one Envoy's config and logs.
fn new_run_dir() -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = workspace_root()
        .join(".run")
        .join(format!("envoy-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}
