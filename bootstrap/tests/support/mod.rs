//! Shared by the integration tests: the `meshguard` binary as a child process on free loopback
//! ports, its files in a temporary directory, and Envoy connected to it over ADS.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meshguard_tests::{send_with_timeout, workspace_root, Envoy, EnvoyConfig, Request, Response};

/// Longest wait for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(15);
/// Interval between polls.
pub const POLL: Duration = Duration::from_millis(25);

/// A free loopback port (bound then released; good enough for tests on one machine).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshguard-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file atomically (write + rename) so the control plane never reads half of it.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `meshguard run` process.
#[derive(Debug)]
pub struct ControlPlane {
    child: Option<Child>,
    command: Vec<std::ffi::OsString>,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    pub listen: SocketAddr,
    pub log: PathBuf,
}

impl ControlPlane {
    /// Starts `meshguard run` on `dir/services.yaml` and `dir/rules.yaml` and waits for
    /// `/healthz`.
    pub fn start(dir: &TempDir) -> Result<Self> {
        let registry = format!("file:{}", dir.path().join("services.yaml").display());
        Self::start_with(dir, &registry, &[])
    }

    /// Starts `meshguard run --registry REGISTRY ARGS...` with `dir/rules.yaml`.
    pub fn start_with(dir: &TempDir, registry: &str, args: &[&str]) -> Result<Self> {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let log = dir.path().join(format!(
            "meshguard-{}.log",
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_meshguard"));
        command
            .arg("run")
            .arg("--registry")
            .arg(registry)
            .args(args);
        if !args.contains(&"--rules") {
            command.arg("--rules").arg(dir.path().join("rules.yaml"));
        }
        command
            .arg("--xds")
            .arg(xds.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--listen")
            .arg(listen.to_string());
        if !args.contains(&"--wasm-dir") {
            command
                .arg("--wasm-dir")
                .arg(workspace_root().join("target/wasm32-wasip1/wasm"));
        }
        command
            .arg("--poll-ms")
            .arg("50")
            .arg("--log-level")
            .arg("debug");
        let command_line = command.get_args().map(ToOwned::to_owned).collect();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("spawn meshguard")?;
        let mut cp = Self {
            child: Some(child),
            command: command_line,
            xds,
            admin,
            listen,
            log,
        };
        cp.wait_healthy()?;
        Ok(cp)
    }

    /// Kills the process and starts it again with the same arguments (same ports).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        let log_file = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_meshguard"))
            .args(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("respawn meshguard")?;
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let admin = self.admin;
        let cp = self;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = send_with_timeout(admin, &Request::get("/healthz"), WAIT) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if let Some(status) = cp.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("meshguard exited with {status}: {}", cp.log_text());
            }
            if Instant::now() > deadline {
                bail!("meshguard not healthy after {WAIT:?}: {}", cp.log_text());
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /registry` as JSON (`{"origin": ..., "registry": ...}`).
    pub fn registry(&self) -> Result<serde_json::Value> {
        let r = send_with_timeout(self.admin, &Request::get("/registry"), WAIT)?;
        if r.status != 200 {
            bail!("/registry answered {}", r.status);
        }
        r.json()
    }

    /// Waits until `/registry` satisfies `predicate` and returns it.
    pub fn wait_registry(
        &self,
        what: &str,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let registry = self.registry()?;
            if predicate(&registry) {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                bail!(
                    "registry never showed {what}: {registry:#}\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> Result<serde_json::Value> {
        let r = send_with_timeout(self.admin, &Request::get("/status"), WAIT)?;
        if r.status != 200 {
            bail!("/status answered {}", r.status);
        }
        r.json()
    }

    /// Waits until `/status` satisfies `predicate` and returns it.
    pub fn wait_status(
        &self,
        what: &str,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status()?;
            if predicate(&status) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "status never showed {what}: {status:#}\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Envoy started from `envoy-configs/bootstrap-ads.yaml.tmpl`, connected to `cp`.
pub fn start_envoy(cp: &ControlPlane, node_id: &str) -> Result<Envoy> {
    Envoy::start(
        EnvoyConfig::new("bootstrap-ads")
            .var("NODE_ID", node_id)
            .var("ADMIN_PORT", "0")
            .var("XDS_ADDRESS", cp.xds.ip().to_string())
            .var("XDS_PORT", cp.xds.port().to_string()),
    )
}

/// Envoy connected to `cp` over incremental (delta) ADS: the same bootstrap with
/// `api_type: DELTA_GRPC`.
pub fn start_envoy_delta(cp: &ControlPlane, node_id: &str) -> Result<Envoy> {
    let template = include_str!("../../../envoy-configs/bootstrap-ads.yaml.tmpl");
    anyhow::ensure!(
        template.contains("api_type: GRPC"),
        "the ADS bootstrap changed"
    );
    Envoy::start(
        EnvoyConfig::from_template_text(template.replace("api_type: GRPC", "api_type: DELTA_GRPC"))
            .var("NODE_ID", node_id)
            .var("ADMIN_PORT", "0")
            .var("XDS_ADDRESS", cp.xds.ip().to_string())
            .var("XDS_PORT", cp.xds.port().to_string()),
    )
}

/// `GET path` to `service` through Envoy.
pub fn get(envoy: &Envoy, service: &str, path: &str) -> Result<Response> {
    send_with_timeout(
        envoy.listener_addr(),
        &Request::get(path).header("Host", service),
        Duration::from_secs(10),
    )
}

/// Sends until a response satisfies `predicate` (bounded) and returns it.
pub fn wait_response(
    envoy: &Envoy,
    service: &str,
    what: &str,
    predicate: impl Fn(&Response) -> bool,
) -> Result<Response> {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match get(envoy, service, "/") {
            Ok(r) if predicate(&r) => return Ok(r),
            Ok(r) => format!("{} {:?}", r.status, r.header("x-upstream")),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{service}: never got {what}; last: {last}");
        }
        std::thread::sleep(POLL);
    }
}

/// A registry file with one instance per (service, port) on 127.0.0.1.
pub fn registry_yaml(entries: &[(&str, u16)]) -> String {
    let mut out = String::from("services:\n");
    let mut services: Vec<&str> = entries.iter().map(|(s, _)| *s).collect();
    services.dedup();
    for service in services {
        out.push_str(&format!("  {service}:\n"));
        for (_, port) in entries.iter().filter(|(s, _)| *s == service) {
            out.push_str(&format!("  - {{address: 127.0.0.1, port: {port}}}\n"));
        }
    }
    out
}
