//! What the filter reads from a request, behind a trait so matching and key building are
//! tested natively.

/// Header carrying the verified tenant, set by the tenant filter (which strips spoofed copies).
pub(crate) const TENANT_HEADER: &str = "x-meshguard-tenant";

/// Read access to one request's attributes.
pub(crate) trait RequestAttributes {
    /// The first value of a request header (lower-case name, pseudo-headers included).
    fn header(&self, name: &str) -> Option<String>;

    /// An Envoy attribute (`["source", "address"]`) as the raw bytes the host returns.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;

    /// The path without the query string.
    fn path(&self) -> Option<String> {
        self.header(":path").map(|mut path| {
            if let Some(query) = path.find('?') {
                path.truncate(query);
            }
            path
        })
    }

    /// The verified tenant; an empty header counts as none.
    fn tenant(&self) -> Option<String> {
        self.header(TENANT_HEADER).filter(|t| !t.is_empty())
    }

    /// The client's IP address: `source.address` without the port.
    fn client_ip(&self) -> Option<String> {
        let address = self.property(&["source", "address"])?;
        let address = String::from_utf8(address).ok()?;
        Some(strip_port(&address).to_string())
    }
}

/// `1.2.3.4:80` → `1.2.3.4`, `[::1]:80` → `::1`; anything else (a pipe path) unchanged.
fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.split_once(':') {
        Some((ip, port)) if !port.contains(':') => ip,
        _ => address,
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A request built in a test.

    use std::collections::HashMap;

    use super::RequestAttributes;

    /// Headers and properties set by the test.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct FakeRequest {
        headers: Vec<(String, String)>,
        properties: HashMap<String, Vec<u8>>,
    }

    impl FakeRequest {
        pub(crate) fn new(method: &str, path: &str) -> Self {
            Self::default()
                .header(":method", method)
                .header(":path", path)
                .property("source.address", "10.0.0.1:5555")
        }

        pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.to_string(), value.to_string()));
            self
        }

        pub(crate) fn property(mut self, dotted: &str, value: &str) -> Self {
            self.properties
                .insert(dotted.to_string(), value.as_bytes().to_vec());
            self
        }
    }

    impl RequestAttributes for FakeRequest {
        fn header(&self, name: &str) -> Option<String> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }

        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            self.properties.get(&path.join(".")).cloned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeRequest;
    use super::*;

    #[test]
    fn client_ip_drops_the_port() {
        assert_eq!(strip_port("1.2.3.4:80"), "1.2.3.4");
        assert_eq!(strip_port("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
        assert_eq!(strip_port("/run/envoy.sock"), "/run/envoy.sock");
        let req = FakeRequest::new("GET", "/").property("source.address", "[::1]:9");
        assert_eq!(req.client_ip().as_deref(), Some("::1"));
    }

    #[test]
    fn path_excludes_the_query_and_empty_tenant_is_none() {
        let req = FakeRequest::new("GET", "/a/b?x=1").header(TENANT_HEADER, "");
        assert_eq!(req.path().as_deref(), Some("/a/b"));
        assert_eq!(req.tenant(), None);
    }
}
