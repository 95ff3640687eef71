//! Builds an Envoy bootstrap from a template in `envoy-configs/`.
//!
//! Templates use `{{NAME}}` placeholders, replaced in one pass (inserted text is never scanned
//! again, so a filter's JSON may contain braces). A placeholder alone on its line takes a
//! multi-line YAML fragment, re-indented to the placeholder's column, which keeps fragments
//! independent of where a template nests them. Every placeholder must get a value and every
//! value must be used: a typo fails the render instead of starting a half-configured Envoy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::paths::workspace_root;

/// Placeholder for the wasm filters, rendered before the router filter.
const HTTP_FILTERS: &str = "HTTP_FILTERS";
/// Placeholder for the clusters added with [`EnvoyConfig::cluster`].
const EXTRA_CLUSTERS: &str = "EXTRA_CLUSTERS";
/// Placeholder for the port of the `upstream` cluster's single endpoint.
const UPSTREAM_PORT: &str = "UPSTREAM_PORT";

/// What Envoy does with a plugin whose VM failed (`PluginConfig.failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Requests through the failed plugin get a 503 (`FAIL_CLOSED`).
    #[default]
    FailClosed,
    /// The failed plugin is bypassed (`FAIL_OPEN`).
    FailOpen,
}

impl FailurePolicy {
    /// The enum value name in `envoy.extensions.wasm.v3.FailurePolicy`.
    fn as_proto(self) -> &'static str {
        match self {
            Self::FailClosed => "FAIL_CLOSED",
            Self::FailOpen => "FAIL_OPEN",
        }
    }
}

/// One `envoy.filters.http.wasm` filter running a module on the V8 runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmFilter {
    /// `PluginConfig.name` (also used in Envoy's logs).
    pub name: String,
    /// `PluginConfig.root_id`; empty selects the module's default root context.
    pub root_id: String,
    /// The `.wasm` file (`vm_config.code.local.filename`).
    pub wasm: PathBuf,
    /// Plugin configuration, passed to `on_configure` verbatim (normally JSON; not validated
    /// here so tests can hand a filter a broken config).
    pub configuration: String,
    /// `vm_config.vm_id`: plugins with the same id and code share a VM.
    pub vm_id: String,
    /// Behaviour after a VM failure.
    pub failure_policy: FailurePolicy,
}

impl WasmFilter {
    /// A fail-closed filter named `name` running `wasm` with configuration `{}`, its own VM
    /// (`vm_id` = `name`) and the default root context.
    pub fn new(name: impl Into<String>, wasm: impl Into<PathBuf>) -> Self {
        let name = name.into();
        Self {
            vm_id: name.clone(),
            name,
            root_id: String::new(),
            wasm: wasm.into(),
            configuration: "{}".to_string(),
            failure_policy: FailurePolicy::FailClosed,
        }
    }

    /// Sets the plugin configuration string.
    pub fn configuration(mut self, configuration: impl Into<String>) -> Self {
        self.configuration = configuration.into();
        self
    }

    /// Sets the root id.
    pub fn root_id(mut self, root_id: impl Into<String>) -> Self {
        self.root_id = root_id.into();
        self
    }

    /// Sets the VM id.
    pub fn vm_id(mut self, vm_id: impl Into<String>) -> Self {
        self.vm_id = vm_id.into();
        self
    }

    /// Sets the failure policy.
    pub fn failure_policy(mut self, failure_policy: FailurePolicy) -> Self {
        self.failure_policy = failure_policy;
        self
    }

    /// The filter as a YAML list item at indent 0.
    fn render(&self) -> Result<String> {
        let wasm = self
            .wasm
            .to_str()
            .ok_or_else(|| anyhow!("wasm path {} is not UTF-8", self.wasm.display()))?;
        Ok(format!(
            "- name: envoy.filters.http.wasm
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: {name}
      root_id: {root_id}
      configuration:
        \"@type\": type.googleapis.com/google.protobuf.StringValue
        value: {configuration}
      vm_config:
        vm_id: {vm_id}
        runtime: envoy.wasm.runtime.v8
        code:
          local:
            filename: {wasm}
      failure_policy: {policy}",
            name = yaml_str(&self.name),
            root_id = yaml_str(&self.root_id),
            configuration = yaml_str(&self.configuration),
            vm_id = yaml_str(&self.vm_id),
            wasm = yaml_str(wasm),
            policy = self.failure_policy.as_proto(),
        ))
    }
}

/// A YAML double-quoted scalar. JSON string escapes are valid YAML double-quoted escapes, so
/// any text (quotes, newlines, braces) survives unchanged.
fn yaml_str(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// A STATIC cluster with one endpoint on 127.0.0.1, as a YAML list item at indent 0.
fn render_cluster(name: &str, port: u16) -> String {
    format!(
        "- name: {name}
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {{ address: 127.0.0.1, port_value: {port} }}",
        name = yaml_str(name),
    )
}

/// One HTTP filter in the chain before the router.
#[derive(Debug, Clone)]
enum HttpFilter {
    Wasm(WasmFilter),
    /// A native filter as a YAML list item at indent 0.
    Yaml(String),
}

/// Where the template text comes from.
#[derive(Debug, Clone)]
enum Template {
    /// A file under `envoy-configs/`.
    File(PathBuf),
    /// Text given directly (ad-hoc configs in tests).
    Text(String),
}

/// Everything needed to render a bootstrap and run Envoy on it.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    template: Template,
    upstream_port: Option<u16>,
    filters: Vec<HttpFilter>,
    clusters: Vec<(String, u16)>,
    vars: BTreeMap<String, String>,
    pub(crate) concurrency: u32,
    pub(crate) log_level: String,
    pub(crate) extra_args: Vec<String>,
    pub(crate) startup_timeout: Duration,
}

impl EnvoyConfig {
    /// A config from `envoy-configs/<name>.yaml.tmpl` (or `envoy-configs/<name>` if `name`
    /// already ends in `.tmpl`), with 1 worker and log level `info`.
    pub fn new(name: &str) -> Self {
        let file = if name.ends_with(".tmpl") {
            name.to_string()
        } else {
            format!("{name}.yaml.tmpl")
        };
        Self::with_template(Template::File(
            workspace_root().join("envoy-configs").join(file),
        ))
    }

    /// A config from template text given inline (same placeholder rules as a file).
    pub fn from_template_text(text: impl Into<String>) -> Self {
        Self::with_template(Template::Text(text.into()))
    }

    fn with_template(template: Template) -> Self {
        Self {
            template,
            upstream_port: None,
            filters: Vec::new(),
            clusters: Vec::new(),
            vars: BTreeMap::new(),
            concurrency: 1,
            log_level: "info".to_string(),
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(30),
        }
    }

    /// Points the `upstream` cluster (`{{UPSTREAM_PORT}}`) at 127.0.0.1:`port`.
    pub fn upstream(mut self, port: u16) -> Self {
        self.upstream_port = Some(port);
        self
    }

    /// Adds a wasm filter; filters run in the order added, before the router.
    pub fn wasm_filter(mut self, filter: WasmFilter) -> Self {
        self.filters.push(HttpFilter::Wasm(filter));
        self
    }

    /// Adds a native Envoy HTTP filter given as one YAML list item at indent 0
    /// (`- name: envoy.filters.http.local_ratelimit` …), in order with the wasm filters.
    /// Benchmarks use it to compare meshguard with Envoy's own filters.
    pub fn http_filter_yaml(mut self, item: impl Into<String>) -> Self {
        self.filters.push(HttpFilter::Yaml(item.into()));
        self
    }

    /// Adds a STATIC cluster `name` → 127.0.0.1:`port` (e.g. an `http_call` target).
    pub fn cluster(mut self, name: impl Into<String>, port: u16) -> Self {
        self.clusters.push((name.into(), port));
        self
    }

    /// Sets the value of a custom `{{NAME}}` placeholder (multi-line values must stand alone
    /// on their template line).
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Number of Envoy worker threads (`--concurrency`), default 1.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// Envoy's `--log-level` (trace, debug, info, warning, error, critical, off), default info.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// Appends a raw command-line argument (e.g. `--component-log-level`, `wasm:debug`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// How long [`crate::Envoy::start`] waits for `/ready` to say LIVE, default 30 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// The rendered bootstrap YAML.
    pub fn render(&self) -> Result<String> {
        let (origin, text) = match &self.template {
            Template::File(path) => (
                path.display().to_string(),
                std::fs::read_to_string(path)
                    .with_context(|| format!("read Envoy template {}", path.display()))?,
            ),
            Template::Text(text) => ("inline template".to_string(), text.clone()),
        };
        let mut values = BTreeMap::new();
        for (name, value) in &self.vars {
            if [HTTP_FILTERS, EXTRA_CLUSTERS, UPSTREAM_PORT].contains(&name.as_str()) {
                bail!("{{{{{name}}}}} is set by the harness; use the matching builder method");
            }
            values.insert(name.clone(), Value::required(value.clone()));
        }
        if let Some(port) = self.upstream_port {
            values.insert(UPSTREAM_PORT.into(), Value::required(port.to_string()));
        }
        let filters = self
            .filters
            .iter()
            .map(|f| match f {
                HttpFilter::Wasm(w) => w.render(),
                HttpFilter::Yaml(item) => Ok(item.trim_end().to_string()),
            })
            .collect::<Result<Vec<_>>>()?;
        // Lists are always defined so a template can hold the placeholder unconditionally, but
        // a non-empty list whose placeholder is missing is an error like any unused value.
        values.insert(HTTP_FILTERS.into(), Value::list(filters.join("\n")));
        let clusters: Vec<String> = self
            .clusters
            .iter()
            .map(|(name, port)| render_cluster(name, *port))
            .collect();
        values.insert(EXTRA_CLUSTERS.into(), Value::list(clusters.join("\n")));
        substitute(&text, &values).with_context(|| format!("render {origin}"))
    }

    /// The template path, for messages (`None` for inline templates).
    pub(crate) fn template_path(&self) -> Option<&Path> {
        match &self.template {
            Template::File(path) => Some(path),
            Template::Text(_) => None,
        }
    }
}

/// A placeholder value and whether leaving it unused is an error.
struct Value {
    text: String,
    must_use: bool,
}

impl Value {
    fn required(text: String) -> Self {
        Self {
            text,
            must_use: true,
        }
    }

    /// A list fragment: only an error to leave unused when it has entries.
    fn list(text: String) -> Self {
        Self {
            must_use: !text.is_empty(),
            text,
        }
    }
}

/// One-pass `{{NAME}}` substitution with fragment re-indentation (see the module docs).
fn substitute(template: &str, values: &BTreeMap<String, Value>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut used = std::collections::BTreeSet::new();
    let mut missing = std::collections::BTreeSet::new();
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(name) = whole_placeholder(trimmed.trim_end()) {
            match values.get(name) {
                Some(value) => {
                    used.insert(name.to_string());
                    for fragment_line in value.text.lines() {
                        if !fragment_line.is_empty() {
                            out.push_str(indent);
                        }
                        out.push_str(fragment_line);
                        out.push('\n');
                    }
                }
                None => {
                    missing.insert(name.to_string());
                }
            }
            continue;
        }
        let mut rest = line;
        while let Some((before, name, after)) = next_placeholder(rest) {
            out.push_str(before);
            match values.get(name) {
                Some(value) if value.text.contains('\n') => {
                    bail!(
                        "{{{{{name}}}}} has a multi-line value but shares its line with other text"
                    );
                }
                Some(value) => {
                    used.insert(name.to_string());
                    out.push_str(&value.text);
                }
                None => {
                    missing.insert(name.to_string());
                }
            }
            rest = after;
        }
        out.push_str(rest);
        out.push('\n');
    }
    if !missing.is_empty() {
        let names: Vec<_> = missing.iter().map(|n| format!("{{{{{n}}}}}")).collect();
        bail!(
            "no value for placeholder(s) {} (set them with .upstream(), .var(), ...)",
            names.join(", ")
        );
    }
    let unused: Vec<_> = values
        .iter()
        .filter(|(name, value)| value.must_use && !used.contains(*name))
        .map(|(name, _)| format!("{{{{{name}}}}}"))
        .collect();
    if !unused.is_empty() {
        bail!(
            "the template has no {} for the value(s) given",
            unused.join(", ")
        );
    }
    Ok(out)
}

/// `{{NAME}}` → `NAME` when `text` is exactly one placeholder.
fn whole_placeholder(text: &str) -> Option<&str> {
    let (before, name, after) = next_placeholder(text)?;
    (before.is_empty() && after.is_empty()).then_some(name)
}

/// Finds the next `{{NAME}}` (NAME: ASCII letters, digits, `_`) → (text before, NAME, text after).
fn next_placeholder(text: &str) -> Option<(&str, &str, &str)> {
    let mut from = 0;
    while let Some(offset) = text[from..].find("{{") {
        let start = from + offset;
        let name_start = start + 2;
        let name_len = text[name_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len() - name_start);
        let name_end = name_start + name_len;
        if name_len > 0 && text[name_end..].starts_with("}}") {
            return Some((
                &text[..start],
                &text[name_start..name_end],
                &text[name_end + 2..],
            ));
        }
        from = start + 2;
    }
    None
}

#[cfg(test)]
// A failed unwrap is how a test reports failure.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::required(v.to_string())))
            .collect()
    }

    #[test]
    fn standalone_placeholder_takes_an_indented_fragment() {
        let out = substitute(
            "a:\n    {{F}}\nb: {{P}}\n",
            &vars(&[("F", "- x: 1\n  y: 2"), ("P", "7")]),
        )
        .unwrap();
        assert_eq!(out, "a:\n    - x: 1\n      y: 2\nb: 7\n");
    }

    #[test]
    fn inserted_text_is_not_scanned_again() {
        let out = substitute("v: {{A}}\n", &vars(&[("A", "{{B}}")])).unwrap();
        assert_eq!(out, "v: {{B}}\n");
    }

    #[test]
    fn missing_and_unused_placeholders_are_errors() {
        let err = substitute("v: {{NOPE}}\n", &vars(&[])).unwrap_err();
        assert!(err.to_string().contains("{{NOPE}}"), "{err}");
        let err = substitute("v: 1\n", &vars(&[("EXTRA", "1")])).unwrap_err();
        assert!(err.to_string().contains("{{EXTRA}}"), "{err}");
        assert!(substitute("v: {{M}} x\n", &vars(&[("M", "a\nb")])).is_err());
    }

    #[test]
    fn non_placeholder_braces_are_left_alone() {
        let out = substitute("v: '{{ not one }}' {{}}\n", &vars(&[])).unwrap();
        assert_eq!(out, "v: '{{ not one }}' {{}}\n");
    }

    #[test]
    fn harness_template_renders_filters_before_the_router_and_extra_clusters() {
        let cfg = EnvoyConfig::new("harness")
            .upstream(8080)
            .wasm_filter(
                WasmFilter::new("f1", "/m.wasm")
                    .configuration(r#"{"a":"x\"y"}"#)
                    .failure_policy(FailurePolicy::FailOpen),
            )
            .wasm_filter(WasmFilter::new("f2", "/m.wasm"))
            .cluster("consul", 8500);
        let yaml = cfg.render().unwrap();
        let f1 = yaml.find("name: \"f1\"").unwrap();
        let f2 = yaml.find("name: \"f2\"").unwrap();
        let router = yaml.find("envoy.filters.http.router").unwrap();
        assert!(f1 < f2 && f2 < router, "{yaml}");
        assert!(yaml.contains(r#"value: "{\"a\":\"x\\\"y\"}""#), "{yaml}");
        assert!(yaml.contains("failure_policy: FAIL_OPEN"), "{yaml}");
        assert!(yaml.contains("failure_policy: FAIL_CLOSED"), "{yaml}");
        assert!(yaml.contains("port_value: 8500"), "{yaml}");
        assert!(!yaml.contains("{{"), "{yaml}");
    }

    #[test]
    fn harness_template_needs_an_upstream_port() {
        let err = format!("{:#}", EnvoyConfig::new("harness").render().unwrap_err());
        assert!(err.contains("{{UPSTREAM_PORT}}"), "{err}");
    }
}
