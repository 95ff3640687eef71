//! A minimal async HTTP/1.1 GET client for Consul's API: one connection per request
//! (`Connection: close`), a deadline over the whole exchange, a bounded body, and
//! `Content-Length`, chunked and read-to-close bodies.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read (head and body), in bytes.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// A response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The deadline passed.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The response is not HTTP/1.x as expected.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The response exceeds [`MAX_RESPONSE_BYTES`].
    #[error("response over {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// `GET target` from `authority` (`host:port`) with extra headers, within `timeout`.
pub async fn get(
    authority: &str,
    target: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    tokio::time::timeout(timeout, exchange(authority, target, headers))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn exchange(
    authority: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, HttpError> {
    let mut stream = TcpStream::connect(authority).await?;
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nUser-Agent: meshguard\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    // A blocking query parks here for up to its wait: allocate the buffers only once the
    // answer starts, so 5,000 parked watches do not hold 5,000 × 80 KiB.
    stream.readable().await?;
    let mut raw = Vec::with_capacity(16 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if raw.len() + n > MAX_RESPONSE_BYTES {
            return Err(HttpError::TooLarge);
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(done) = complete(&raw)? {
            return Ok(done);
        }
    }
    parse(&raw, true)?.ok_or(HttpError::Malformed("connection closed mid-response"))
}

/// A full response if `raw` holds one (by length or chunking), else `None`.
fn complete(raw: &[u8]) -> Result<Option<HttpResponse>, HttpError> {
    parse(raw, false)
}

/// Parses `raw`; `eof` says the peer closed (a body without length then ends here).
fn parse(raw: &[u8], eof: bool) -> Result<Option<HttpResponse>, HttpError> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof {
            Err(HttpError::Malformed("no header terminator"))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| HttpError::Malformed("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = &raw[head_end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let decoded = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        match dechunk(body)? {
            Some(b) => b,
            None if eof => return Err(HttpError::Malformed("truncated chunked body")),
            None => return Ok(None),
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| HttpError::Malformed("bad content-length"))?;
        if body.len() < len {
            return if eof {
                Err(HttpError::Malformed("truncated body"))
            } else {
                Ok(None)
            };
        }
        body[..len].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status,
        headers,
        body: decoded,
    }))
}

/// Decodes a chunked body; `None` while incomplete.
fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&body[..line_end])
            .map_err(|_| HttpError::Malformed("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed("bad chunk size"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if body.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn decodes_length_chunked_and_close_delimited_bodies() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Consul-Index: 7\r\n\r\n[]",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-consul-index")),
            (200, &b"[]"[..], Some("7"))
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n";
        assert!(parse(&chunked[..chunked.len() - 7], false)
            .unwrap()
            .is_none());
        assert_eq!(parse(chunked, false).unwrap().unwrap().body, b"[1,2]");
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\nabc", false)
            .unwrap()
            .is_none());
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\nabc", true)
                .unwrap()
                .unwrap()
                .body,
            b"abc"
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", true).is_err());
        assert!(parse(b"SSH-2.0\r\n\r\n", true).is_err());
    }
}
