//! The verified identity sources in a real Envoy 1.40, end to end:
//! - SPIFFE: an mTLS listener (`envoy-configs/tenant-mtls.yaml.tmpl`) with certificates made by
//!   `openssl` at run time (a CA, the server's, client certificates whose URI SAN is a SPIFFE
//!   ID), and `curl` as the mTLS client;
//! - JWT: Envoy's `jwt_authn` verifying an HS256 token (signed with `openssl dgst -hmac`) and
//!   storing its payload as metadata, which the filter reads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, ensure, Context, Result};
use meshguard_tests::{Envoy, EnvoyConfig, TestUpstream};

use crate::tenant::envoy::{route, tenant_filter, WAIT};

/// A fresh directory for one test's certificates, removed on drop.
struct CertDir(PathBuf);

impl CertDir {
    fn new() -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshguard-tenant-mtls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl (Debian package `openssl`)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A P-256 key `name.key` and a certificate `name.pem` signed by the CA, with `extensions`
/// (an openssl extension section body).
fn issue(dir: &CertDir, name: &str, extensions: &str) -> Result<()> {
    std::fs::write(dir.0.join(format!("{name}.ext")), extensions)?;
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    let ext = format!("{name}.ext");
    openssl(
        &dir.0,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    )?;
    openssl(
        &dir.0,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ],
    )
}

/// The CA, the server certificate for 127.0.0.1, and one client certificate per SPIFFE ID.
fn certificates(clients: &[(&str, &str)]) -> Result<CertDir> {
    let dir = CertDir::new()?;
    openssl(
        &dir.0,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=meshguard test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    issue(
        &dir,
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    for (name, spiffe_id) in clients {
        issue(
            &dir,
            name,
            &format!("subjectAltName=URI:{spiffe_id}\nextendedKeyUsage=clientAuth\n"),
        )?;
    }
    Ok(dir)
}

/// `GET path` over mTLS with client certificate `client`; the status and the deny reason.
fn get(
    envoy: &Envoy,
    dir: &CertDir,
    client: &str,
    path: &str,
    headers: &[&str],
) -> Result<(u16, String)> {
    let url = format!("https://{}{path}", envoy.listener_addr());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-"])
        .args(["--cacert", &dir.path("ca.pem")])
        .args(["--cert", &dir.path(&format!("{client}.pem"))])
        .args(["--key", &dir.path(&format!("{client}.key"))]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    let out = cmd.arg(&url).output().context("run curl")?;
    ensure!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = String::from_utf8_lossy(&out.stdout);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head}"))?;
    let reason = head
        .lines()
        .find_map(|l| l.strip_prefix("x-meshguard-deny-reason: "))
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok((status, reason))
}

#[test]
fn the_mtls_peers_spiffe_id_names_the_tenant_in_envoy() -> Result<()> {
    let dir = certificates(&[
        ("acme", "spiffe://cluster.local/tenant/acme/ns/web/sa/web"),
        ("stranger", "spiffe://cluster.local/team/acme/web"),
        ("bad-name", "spiffe://cluster.local/tenant/ACME/ns/web"),
    ])?;
    let upstream = TestUpstream::start()?;
    let config = r#"{"identity":[{"spiffe":{"pattern":"spiffe://{domain}/tenant/{tenant}/*"}}]}"#;
    let envoy = Envoy::start(
        EnvoyConfig::new("tenant-mtls")
            .upstream(upstream.port())
            .var("ROUTES", route("/", "upstream"))
            .var("CERT_DIR", dir.0.display().to_string())
            .wasm_filter(tenant_filter(config)?),
    )?;
    let (status, reason) = get(&envoy, &dir, "acme", "/x", &["x-meshguard-tenant: victim"])?;
    ensure!(status == 200, "{status} {reason}\n{}", envoy.log());
    let seen = upstream.requests();
    ensure!(seen.len() == 1, "{seen:?}");
    let tenants: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-meshguard-tenant"))
        .map(|(_, v)| v.as_str())
        .collect();
    ensure!(tenants == ["acme"], "upstream saw {tenants:?}");
    let (status, reason) = get(
        &envoy,
        &dir,
        "stranger",
        "/x",
        &["x-meshguard-tenant: acme"],
    )?;
    ensure!(
        (status, reason.as_str()) == (401, "no verified tenant"),
        "{status} {reason}"
    );
    let (status, reason) = get(&envoy, &dir, "bad-name", "/x", &[])?;
    ensure!(
        status == 403 && reason.starts_with("spiffe_san carries an invalid tenant"),
        "{status} {reason}"
    );
    ensure!(
        upstream.requests().len() == 1,
        "a refused request was forwarded"
    );
    envoy.wait_for_stat(
        "wasmcustom.meshguard_tenant.denied_no_identity",
        |v| v == 1,
        WAIT,
    )?;
    Ok(())
}

// --- a JWT verified by Envoy's jwt_authn --------------------------------------------------------

/// Shared HS256 secret of the test issuer.
const JWT_SECRET: &str = "meshguard-test-secret-0123456789abcdef";

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// An HS256 JWT over `claims`, signed with `secret` by `openssl dgst -hmac`.
fn jwt(claims: &str, secret: &str) -> Result<String> {
    use std::io::Write;
    let input = format!(
        "{}.{}",
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        base64url(claims.as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-hmac", secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run openssl")?;
    child
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success() && out.stdout.len() == 32,
        "openssl dgst failed"
    );
    Ok(format!("{input}.{}", base64url(&out.stdout)))
}

/// `jwt_authn` with one HS256 provider that stores the payload as `payload` metadata; a
/// request without a token passes (the tenant filter then decides), a bad token is a 401.
fn jwt_authn() -> String {
    let k = base64url(JWT_SECRET.as_bytes());
    format!(
        r#"- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
    providers:
      test:
        issuer: meshguard-test
        local_jwks:
          inline_string: '{{"keys":[{{"kty":"oct","alg":"HS256","k":"{k}"}}]}}'
        payload_in_metadata: payload
    rules:
    - match: {{ prefix: "/" }}
      requires:
        requires_any:
          requirements:
          - provider_name: test
          - allow_missing: {{}}"#
    )
}

#[test]
fn a_claim_of_a_jwt_verified_by_jwt_authn_names_the_tenant_in_envoy() -> Result<()> {
    use meshguard_tests::{send, Request};

    assert_eq!(base64url(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw");
    assert_eq!(base64url(b"any carnal pleasu"), "YW55IGNhcm5hbCBwbGVhc3U");
    let upstream = TestUpstream::start()?;
    let envoy = crate::tenant::envoy::tenant_envoy(
        &upstream,
        &[route("/", "upstream")],
        &[],
        &[jwt_authn()],
        r#"{"identity":[{"jwt_claim":{"claim":"tenant"}}]}"#,
    )?;
    let token = jwt(
        r#"{"iss":"meshguard-test","sub":"web","tenant":"acme"}"#,
        JWT_SECRET,
    )?;
    let ok = send(
        envoy.listener_addr(),
        &Request::get("/x")
            .header("authorization", format!("Bearer {token}"))
            .header("x-meshguard-tenant", "victim"),
    )?;
    ensure!(ok.status == 200, "{ok:?}\n{}", envoy.log());
    let seen = upstream.requests();
    ensure!(
        seen.len() == 1 && seen[0].header("x-meshguard-tenant") == Some("acme"),
        "{seen:?}"
    );
    // A token signed with another key never gets past jwt_authn.
    let forged = jwt(
        r#"{"iss":"meshguard-test","tenant":"globex"}"#,
        "not-the-secret",
    )?;
    let refused = send(
        envoy.listener_addr(),
        &Request::get("/x").header("authorization", format!("Bearer {forged}")),
    )?;
    ensure!(refused.status == 401, "{refused:?}");
    // No token: no verified tenant, whatever the header says.
    let missing = send(
        envoy.listener_addr(),
        &Request::get("/x").header("x-meshguard-tenant", "globex"),
    )?;
    ensure!(missing.status == 401, "{missing:?}");
    ensure!(missing.header("x-meshguard-deny-reason") == Some("no verified tenant"));
    ensure!(
        upstream.requests().len() == 1,
        "a refused request was forwarded"
    );
    Ok(())
}
