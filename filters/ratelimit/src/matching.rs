//! Compiled request conditions and rule keys.

use meshguard_filter_common::{ConfigError, HeaderMatcher, StringMatcher};

use crate::config::{self, KeyPart};
use crate::request::RequestAttributes;

/// A compiled [`config::Match`]: all conditions must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    path: Option<StringMatcher>,
    methods: Vec<String>,
    headers: Vec<HeaderMatcher>,
    tenants: Vec<String>,
}

impl Matcher {
    /// Compiles a validated match; errors name the field relative to the match.
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
            tenants: m.tenants.clone(),
        })
    }

    /// Whether the request meets every condition (cheapest first).
    pub(crate) fn matches(&self, req: &impl RequestAttributes) -> bool {
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
        if !self.tenants.is_empty() {
            match req.tenant() {
                Some(tenant) if self.tenants.contains(&tenant) => {}
                _ => return false,
            }
        }
        self.headers
            .iter()
            .all(|h| h.matches(req.header(h.name()).as_deref()))
    }
}

/// A request's key for one rule: the attribute values, length-prefixed so that no two
/// different value lists encode alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    bytes: Vec<u8>,
}

impl Key {
    /// The key shared by requests that lack a key attribute (`on_missing_key: shared`); no
    /// real key encodes to it (those start with a length prefix).
    pub(crate) fn unknown() -> Self {
        Self {
            bytes: b"\xffunknown".to_vec(),
        }
    }

    /// The encoded key.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A readable form for logs: the values joined by `|` (`<unknown>` for the shared key).
    pub(crate) fn display(&self) -> String {
        if *self == Self::unknown() {
            return "<unknown>".to_string();
        }
        let mut parts = Vec::new();
        let mut rest = self.bytes.as_slice();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = usize::try_from(u32::from_le_bytes(*len)).unwrap_or(usize::MAX);
            let (value, tail) = tail.split_at(len.min(tail.len()));
            parts.push(String::from_utf8_lossy(value).into_owned());
            rest = tail;
        }
        parts.join("|")
    }
}

/// How a rule's key is built from a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyBuilder {
    parts: Vec<KeyPart>,
}

impl KeyBuilder {
    pub(crate) fn new(parts: &[KeyPart]) -> Self {
        Self {
            parts: parts.to_vec(),
        }
    }

    /// The key, or the index of the first attribute the request lacks.
    pub(crate) fn build(&self, req: &impl RequestAttributes) -> Result<Key, usize> {
        let mut bytes = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            let value: Option<Vec<u8>> = match part {
                KeyPart::Header(name) => req
                    .header(name)
                    .filter(|v| !v.is_empty())
                    .map(String::into_bytes),
                KeyPart::ClientIp => req.client_ip().map(String::into_bytes),
                KeyPart::Path => req.path().map(String::into_bytes),
                KeyPart::Method => req.header(":method").map(String::into_bytes),
                KeyPart::Tenant => req.tenant().map(String::into_bytes),
                KeyPart::Property(path) => {
                    let path: Vec<&str> = path.iter().map(String::as_str).collect();
                    req.property(&path)
                }
                KeyPart::Constant(value) => Some(value.clone().into_bytes()),
            };
            let value = value.ok_or(i)?;
            let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&value);
        }
        Ok(Key { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeaderMatch, Match, StringMatch};
    use crate::request::fake::FakeRequest;
    use crate::request::TENANT_HEADER;

    fn matcher(m: Match) -> Matcher {
        Matcher::compile(&m).unwrap()
    }

    fn path(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> Match {
        Match {
            path: Some(StringMatch {
                exact: exact.map(Into::into),
                prefix: prefix.map(Into::into),
                regex: regex.map(Into::into),
            }),
            ..Match::default()
        }
    }

    fn header(name: &str) -> HeaderMatch {
        HeaderMatch {
            name: name.into(),
            ..HeaderMatch::default()
        }
    }

    #[test]
    fn an_empty_match_matches_everything() {
        assert!(matcher(Match::default()).matches(&FakeRequest::new("DELETE", "/x")));
    }

    #[test]
    fn paths_match_exactly_by_prefix_or_regex_without_the_query() {
        let req = FakeRequest::new("GET", "/api/v1/users?page=2");
        assert!(matcher(path(Some("/api/v1/users"), None, None)).matches(&req));
        assert!(!matcher(path(Some("/api/v1"), None, None)).matches(&req));
        assert!(matcher(path(None, Some("/api/"), None)).matches(&req));
        assert!(!matcher(path(None, Some("/admin"), None)).matches(&req));
        assert!(matcher(path(None, None, Some("^/api/v[0-9]+/"))).matches(&req));
        assert!(!matcher(path(None, None, Some("page"))).matches(&req));
    }

    #[test]
    fn methods_headers_and_tenants_must_all_hold() {
        let m = matcher(Match {
            methods: vec!["POST".into(), "PUT".into()],
            headers: vec![
                HeaderMatch {
                    exact: Some("prod".into()),
                    ..header("x-env")
                },
                HeaderMatch {
                    present: Some(false),
                    ..header("x-debug")
                },
                HeaderMatch {
                    regex: Some("^u-[0-9]+$".into()),
                    ..header("x-user")
                },
            ],
            tenants: vec!["acme".into()],
            ..Match::default()
        });
        let good = FakeRequest::new("POST", "/")
            .header("x-env", "prod")
            .header("x-user", "u-42")
            .header(TENANT_HEADER, "acme");
        assert!(m.matches(&good));
        let get = FakeRequest::new("GET", "/")
            .header("x-env", "prod")
            .header("x-user", "u-42")
            .header(TENANT_HEADER, "acme");
        assert!(!m.matches(&get));
        assert!(!m.matches(&FakeRequest::new("GET", "/").header("x-env", "prod")));
        assert!(!m.matches(&good.clone().header("x-debug", "1")));
        let other_tenant = FakeRequest::new("PUT", "/")
            .header("x-env", "prod")
            .header("x-user", "u-1")
            .header(TENANT_HEADER, "globex");
        assert!(!m.matches(&other_tenant));
        let bad_user = FakeRequest::new("PUT", "/")
            .header("x-env", "prod")
            .header("x-user", "admin")
            .header(TENANT_HEADER, "acme");
        assert!(!m.matches(&bad_user));
    }

    #[test]
    fn keys_join_every_attribute() {
        let builder = KeyBuilder::new(&[
            KeyPart::Header("x-user".into()),
            KeyPart::ClientIp,
            KeyPart::Method,
            KeyPart::Path,
            KeyPart::Tenant,
            KeyPart::Property(vec!["metadata".into(), "jwt".into(), "sub".into()]),
            KeyPart::Constant("v1".into()),
        ]);
        let req = FakeRequest::new("GET", "/a?b")
            .header("x-user", "alice")
            .header(TENANT_HEADER, "acme")
            .property("metadata.jwt.sub", "alice@acme");
        let key = builder.build(&req).unwrap();
        assert_eq!(key.display(), "alice|10.0.0.1|GET|/a|acme|alice@acme|v1");
    }

    #[test]
    fn a_missing_attribute_is_reported_by_index() {
        let builder = KeyBuilder::new(&[KeyPart::ClientIp, KeyPart::Header("x-user".into())]);
        assert_eq!(builder.build(&FakeRequest::new("GET", "/")), Err(1));
        let empty = FakeRequest::new("GET", "/").header("x-user", "");
        assert_eq!(builder.build(&empty), Err(1), "an empty header is missing");
        let tenantless = KeyBuilder::new(&[KeyPart::Tenant]);
        assert_eq!(tenantless.build(&FakeRequest::new("GET", "/")), Err(0));
    }

    #[test]
    fn keys_are_unambiguous() {
        let builder = KeyBuilder::new(&[KeyPart::Header("a".into()), KeyPart::Header("b".into())]);
        let one = FakeRequest::new("GET", "/")
            .header("a", "x|y")
            .header("b", "z");
        let two = FakeRequest::new("GET", "/")
            .header("a", "x")
            .header("b", "y|z");
        assert_ne!(builder.build(&one), builder.build(&two));
        assert_ne!(builder.build(&one).unwrap(), Key::unknown());
        assert_eq!(Key::unknown().display(), "<unknown>");
    }
}
