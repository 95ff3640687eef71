//! The status endpoint: a minimal HTTP/1.1 server on loopback answering `GET /status` (JSON:
//! registry age and staleness, snapshot versions, per-node ACKed versions and NACKs),
//! `GET /registry` (the live registry as JSON), `GET /metrics` (the same numbers in Prometheus'
//! text format) and `GET /healthz`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::run::Shared;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `stop` becomes true.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(answer(stream, Arc::clone(&shared)));
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "status endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

async fn answer(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/status") => {
            let body = serde_json::to_string_pretty(&shared.status_json()).unwrap_or_default();
            ("200 OK", "application/json", body)
        }
        ("GET", "/registry") => {
            let body = serde_json::to_string_pretty(&shared.registry_json()).unwrap_or_default();
            ("200 OK", "application/json", body)
        }
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            prometheus(&shared.status_json()),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The status document's numbers as Prometheus metrics.
fn prometheus(status: &serde_json::Value) -> String {
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let flag = |v: &serde_json::Value| if v.as_bool() == Some(true) { 1.0 } else { 0.0 };
    let registry = &status["registry"];
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    metric(
        "meshguard_registry_age_seconds",
        "gauge",
        "Seconds since the registry source last answered.",
        vec![(
            String::new(),
            registry["age_ms"]
                .as_f64()
                .map_or(f64::INFINITY, |ms| ms / 1000.0),
        )],
    );
    metric(
        "meshguard_registry_stale",
        "gauge",
        "1 when the registry is stale (last request failed or no answer in time).",
        vec![(String::new(), flag(&registry["stale"]))],
    );
    metric(
        "meshguard_registry_services",
        "gauge",
        "Services in the live registry.",
        vec![(String::new(), num(&registry["services"]))],
    );
    metric(
        "meshguard_registry_instances",
        "gauge",
        "Instances in the live registry.",
        vec![(String::new(), num(&registry["instances"]))],
    );
    metric(
        "meshguard_rules_error",
        "gauge",
        "1 when the last rules update was rejected.",
        vec![(
            String::new(),
            if status["rules"]["last_error"].is_string() {
                1.0
            } else {
                0.0
            },
        )],
    );
    metric(
        "meshguard_snapshot_publications_total",
        "counter",
        "Snapshots published to the xDS cache.",
        vec![(String::new(), num(&status["snapshot"]["published"]))],
    );
    let nodes = status["nodes"].as_object().cloned().unwrap_or_default();
    metric(
        "meshguard_xds_streams",
        "gauge",
        "Open ADS streams by Envoy node.",
        nodes
            .iter()
            .map(|(node, n)| (format!("{{node=\"{}\"}}", escape(node)), num(&n["streams"])))
            .collect(),
    );
    metric(
        "meshguard_xds_nacks_total",
        "counter",
        "Configurations rejected by Envoy (NACKs) by node.",
        nodes
            .iter()
            .map(|(node, n)| {
                (
                    format!("{{node=\"{}\"}}", escape(node)),
                    num(&n["nack_count"]),
                )
            })
            .collect(),
    );
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn renders_status_numbers_as_prometheus_metrics() {
        let status = serde_json::json!({
            "registry": {"age_ms": 1500, "stale": true, "services": 2, "instances": 5},
            "rules": {"last_error": null},
            "snapshot": {"published": 3},
            "nodes": {"edge \"1\"": {"streams": 1, "nack_count": 2}},
        });
        let text = prometheus(&status);
        assert!(
            text.contains("meshguard_registry_age_seconds 1.5\n"),
            "{text}"
        );
        assert!(text.contains("meshguard_registry_stale 1\n"), "{text}");
        assert!(text.contains("meshguard_rules_error 0\n"), "{text}");
        assert!(
            text.contains("meshguard_snapshot_publications_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("meshguard_xds_nacks_total{node=\"edge \\\"1\\\"\"} 2\n"),
            "{text}"
        );
    }
}
