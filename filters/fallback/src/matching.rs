//! Compiled request conditions (the ratelimit filter's matching, without tenants) and the
//! breaker key of a request.

use meshguard_filter_common::{ConfigError, HeaderMatcher, StringMatcher};

use crate::config::{self, BreakerKey};

/// Read access to one request's headers, behind a trait so matching is tested natively.
pub(crate) trait RequestHeaders {
    /// The first value of a request header (lower-case name, pseudo-headers included).
    fn header(&self, name: &str) -> Option<String>;

    /// The upstream cluster of the request's route (Envoy's `xds.cluster_name`, known in
    /// `on_request_headers` since the route is resolved before the filters run).
    fn cluster(&self) -> Option<String>;

    /// The path without the query string.
    fn path(&self) -> Option<String> {
        self.header(":path").map(|mut path| {
            if let Some(query) = path.find('?') {
                path.truncate(query);
            }
            path
        })
    }
}

/// A compiled [`config::Match`]: all conditions must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    path: Option<StringMatcher>,
    methods: Vec<String>,
    headers: Vec<HeaderMatcher>,
}

impl Matcher {
    /// Compiles a match; errors name the field relative to the match.
    pub(crate) fn compile(m: &config::Match) -> Result<Self, ConfigError> {
        let path = m
            .path
            .as_ref()
            .map(|p| {
                StringMatcher::compile(p.exact.as_deref(), p.prefix.as_deref(), p.regex.as_deref())
                    .map_err(|e| e.in_field("path"))
            })
            .transpose()?;
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HeaderMatcher::compile(
                    &h.name,
                    h.present,
                    h.exact.as_deref(),
                    h.prefix.as_deref(),
                    h.regex.as_deref(),
                )
                .map_err(|e| e.in_index(i).in_field("headers"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            methods: m.methods.clone(),
            headers,
        })
    }

    /// Whether the request meets every condition (cheapest first).
    pub(crate) fn matches(&self, req: &impl RequestHeaders) -> bool {
        if !self.methods.is_empty() {
            let method = req.header(":method").unwrap_or_default();
            if !self.methods.contains(&method) {
                return false;
            }
        }
        if let Some(path) = &self.path {
            if !path.matches(&req.path().unwrap_or_default()) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|h| h.matches(req.header(h.name()).as_deref()))
    }
}

/// The part of the shared-data key that tells breaker instances of one entry apart.
pub(crate) fn instance_key(key: BreakerKey, req: &impl RequestHeaders) -> String {
    match key {
        BreakerKey::Route => "route".to_string(),
        BreakerKey::MethodPath => format!(
            "{} {}",
            req.header(":method").unwrap_or_default(),
            req.path().unwrap_or_default()
        ),
        BreakerKey::Authority => req.header(":authority").unwrap_or_default(),
        BreakerKey::Cluster => req.cluster().unwrap_or_default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{HeaderMatch, Match, StringMatch};

    /// Headers set by a test.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct FakeRequest(Vec<(String, String)>);

    impl FakeRequest {
        pub(crate) fn new(method: &str, path: &str) -> Self {
            Self::default()
                .header(":method", method)
                .header(":path", path)
                .header(":authority", "svc.local")
        }

        pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
            self.0.push((name.into(), value.into()));
            self
        }
    }

    impl RequestHeaders for FakeRequest {
        fn header(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }

        fn cluster(&self) -> Option<String> {
            self.header("x-test-cluster")
        }
    }

    fn path(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> Matcher {
        Matcher::compile(&Match {
            path: Some(StringMatch {
                exact: exact.map(Into::into),
                prefix: prefix.map(Into::into),
                regex: regex.map(Into::into),
            }),
            ..Match::default()
        })
        .unwrap()
    }

    #[test]
    fn paths_match_exactly_by_prefix_or_regex_without_the_query() {
        let req = FakeRequest::new("GET", "/api/v1/users?page=2");
        assert!(path(Some("/api/v1/users"), None, None).matches(&req));
        assert!(!path(Some("/api/v1"), None, None).matches(&req));
        assert!(path(None, Some("/api/"), None).matches(&req));
        assert!(!path(None, Some("/admin"), None).matches(&req));
        assert!(path(None, None, Some("^/api/v[0-9]+/")).matches(&req));
        assert!(!path(None, None, Some("page")).matches(&req));
    }

    #[test]
    fn methods_and_headers_must_all_hold() {
        let m = Matcher::compile(&Match {
            methods: vec!["POST".into()],
            headers: vec![
                HeaderMatch {
                    name: "x-env".into(),
                    exact: Some("prod".into()),
                    ..HeaderMatch::default()
                },
                HeaderMatch {
                    name: "x-debug".into(),
                    present: Some(false),
                    ..HeaderMatch::default()
                },
            ],
            ..Match::default()
        })
        .unwrap();
        let good = FakeRequest::new("POST", "/").header("x-env", "prod");
        assert!(m.matches(&good));
        assert!(!m.matches(&FakeRequest::new("GET", "/").header("x-env", "prod")));
        assert!(!m.matches(&good.clone().header("x-debug", "1")));
        assert!(!m.matches(&FakeRequest::new("POST", "/").header("x-env", "dev")));
    }

    #[test]
    fn a_bad_regex_names_its_field() {
        let e = Matcher::compile(&Match {
            headers: vec![HeaderMatch {
                name: "x".into(),
                regex: Some("(".into()),
                ..HeaderMatch::default()
            }],
            ..Match::default()
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("headers[0].regex: invalid regular expression"),
            "{e}"
        );
    }

    #[test]
    fn instance_keys_follow_the_key_kind() {
        let req = FakeRequest::new("GET", "/a/b?x=1");
        assert_eq!(instance_key(BreakerKey::Route, &req), "route");
        assert_eq!(instance_key(BreakerKey::MethodPath, &req), "GET /a/b");
        assert_eq!(instance_key(BreakerKey::Authority, &req), "svc.local");
        let routed = req.header("x-test-cluster", "orders");
        assert_eq!(instance_key(BreakerKey::Cluster, &routed), "orders");
    }
}
