//! A small, bounded HTTP/1.1 server side: request heads, `Content-Length` and chunked
//! bodies, keep-alive, responses with `Content-Length`. Malformed input is an error with the
//! status to answer, never a panic.

use std::io::{self, BufRead, Read, Write};

use crate::model::RecordedRequest;

/// Why a request could not be read, and what to answer (if anything).
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection (or the socket failed): close without answering.
    Closed,
    /// Answer this status and text, then close the connection.
    Reject(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Closed
    }
}

/// A parsed request plus what the connection needs to know.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) recorded: RecordedRequest,
    /// The client asked to close after this request (or spoke HTTP/1.0 without keep-alive).
    pub(crate) close: bool,
}

/// Reads one request, answering `Expect: 100-continue` on `w` before reading the body
/// (curl sends it for larger PUTs). `Ok(None)` means the connection was closed cleanly
/// between requests.
pub(crate) fn read_request(
    r: &mut impl BufRead,
    w: &mut impl Write,
    max_head: usize,
    max_body: usize,
) -> Result<Option<Request>, ReadError> {
    let Some(head) = read_head(r, max_head)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&head).map_err(|_| ReadError::Reject(400, "bad request"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Reject(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Reject(400, "malformed method"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ReadError::Reject(505, "http version not supported")),
    };
    if !target.starts_with('/') {
        return Err(ReadError::Reject(400, "malformed request target"));
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Reject(400, "malformed header"));
        };
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ReadError::Reject(400, "malformed header name"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let header = |n: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let connection = header("connection").collect::<Vec<_>>().join(",");
    let has_token = |t: &str| {
        connection
            .split(',')
            .any(|c| c.trim().eq_ignore_ascii_case(t))
    };
    let close = if http10 {
        !has_token("keep-alive")
    } else {
        has_token("close")
    };
    let chunked = match header("transfer-encoding").collect::<Vec<_>>().as_slice() {
        [] => false,
        [te] if te.eq_ignore_ascii_case("chunked") => true,
        _ => return Err(ReadError::Reject(501, "unsupported transfer-encoding")),
    };
    let lengths: Vec<&str> = header("content-length").collect();
    if header("expect").any(|e| e.eq_ignore_ascii_case("100-continue"))
        && (chunked || lengths.iter().any(|l| *l != "0"))
    {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        w.flush()?;
    }
    let body = match (chunked, lengths.as_slice()) {
        (true, []) => read_chunked(r, max_body)?,
        (true, _) => return Err(ReadError::Reject(400, "both content-length and chunked")),
        (false, []) => Vec::new(),
        (false, [len]) => {
            let len: usize = Some(*len)
                .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|l| l.parse().ok())
                .ok_or(ReadError::Reject(400, "malformed content-length"))?;
            if len > max_body {
                return Err(ReadError::Reject(413, "request body too large"));
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
            body
        }
        (false, _) => return Err(ReadError::Reject(400, "more than one content-length")),
    };
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(raw_path, false)
        .ok_or(ReadError::Reject(400, "invalid URL escape in path"))?;
    let query =
        parse_query(raw_query).ok_or(ReadError::Reject(400, "invalid URL escape in query"))?;
    Ok(Some(Request {
        recorded: RecordedRequest {
            method: method.to_owned(),
            path,
            query,
            raw_target: target.to_owned(),
            headers,
            body,
        },
        close,
    }))
}

/// Reads up to and including the blank line that ends a head, skipping leading empty lines
/// (RFC 9112 §2.2). `Ok(None)` on EOF before the first byte.
fn read_head(r: &mut impl BufRead, max: usize) -> Result<Option<Vec<u8>>, ReadError> {
    let mut head: Vec<u8> = Vec::new();
    loop {
        let mut line = Vec::new();
        let limit = (max + 1).saturating_sub(head.len()) as u64;
        let n = r.by_ref().take(limit).read_until(b'\n', &mut line)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Closed)
            };
        }
        if !line.ends_with(b"\n") {
            return if head.len() + line.len() > max {
                Err(ReadError::Reject(431, "request header fields too large"))
            } else {
                Err(ReadError::Closed)
            };
        }
        let blank = line == b"\n" || line == b"\r\n";
        if blank && head.is_empty() {
            continue;
        }
        head.extend_from_slice(&line);
        if head.len() > max {
            return Err(ReadError::Reject(431, "request header fields too large"));
        }
        if blank {
            return Ok(Some(head));
        }
    }
}

/// De-chunks a `Transfer-Encoding: chunked` body, at most `max` bytes of data.
fn read_chunked(r: &mut impl BufRead, max: usize) -> Result<Vec<u8>, ReadError> {
    const MAX_LINE: u64 = 4096;
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        r.by_ref().take(MAX_LINE).read_until(b'\n', &mut line)?;
        let text = std::str::from_utf8(&line).map_err(|_| ReadError::Reject(400, "bad chunk"))?;
        let size = text.trim_end().split(';').next().unwrap_or_default().trim();
        let size = Some(size)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(ReadError::Reject(400, "malformed chunk size"))?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let mut trailer = Vec::new();
                let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut trailer)?;
                if n == 0 || trailer == b"\r\n" || trailer == b"\n" {
                    return Ok(body);
                }
            }
        }
        if body.len().saturating_add(size) > max {
            return Err(ReadError::Reject(413, "request body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(body.get_mut(start..).unwrap_or_default())?;
        let mut crlf = Vec::new();
        r.by_ref().take(2).read_until(b'\n', &mut crlf)?;
        if crlf != b"\r\n" && crlf != b"\n" {
            return Err(ReadError::Reject(400, "malformed chunk"));
        }
    }
}

/// Go's `url.ParseQuery`: `&`-separated `key=value` pairs, `+` is a space, `%XY` a byte.
/// `None` on a bad escape or invalid UTF-8.
pub(crate) fn parse_query(raw: &str) -> Option<Vec<(String, String)>> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// Percent-decodes `s`; with `plus_is_space`, `+` becomes a space (query encoding).
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|d| d.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// A response with a body and its content type.
    pub(crate) fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body,
        }
    }

    /// `text/plain` with `text` (Consul's errors are plain text).
    pub(crate) fn text(status: u16, text: impl Into<String>) -> Response {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            text.into().into_bytes(),
        )
    }

    /// `application/json` with `value` serialized.
    pub(crate) fn json(value: &serde_json::Value) -> Response {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Response::new(200, "application/json", body)
    }

    /// Adds a header.
    pub(crate) fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of header `name`, if set.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Replaces (or adds) header `name`.
    pub(crate) fn set_header(&mut self, name: &'static str, value: String) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name, value));
    }
}

/// Writes `resp`; `close` adds `Connection: close`.
pub(crate) fn write_response(w: &mut impl Write, resp: &Response, close: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(&resp.body)?;
    w.flush()
}

/// The reason phrase of `status`.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &[u8]) -> Result<Option<Request>, ReadError> {
        read_request(&mut io::BufReader::new(raw), &mut io::sink(), 1024, 64)
    }

    #[test]
    fn parses_a_get_with_query_and_headers() {
        let req = read(b"GET /v1/kv/a%2Fb?recurse&filter=a+%3D%3D+1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.recorded.method, "GET");
        assert_eq!(req.recorded.path, "/v1/kv/a/b");
        assert_eq!(
            req.recorded.query,
            vec![
                ("recurse".to_owned(), String::new()),
                ("filter".to_owned(), "a == 1".to_owned())
            ]
        );
        assert_eq!(req.recorded.header("host"), Some("x"));
        assert!(!req.close);
    }

    #[test]
    fn reads_chunked_and_content_length_bodies() {
        let req = read(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.recorded.body, b"abcde");
        let req = read(b"PUT /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
            .unwrap()
            .unwrap();
        assert_eq!(req.recorded.body, b"hi");
        assert!(req.close, "HTTP/1.0 without keep-alive closes");
    }

    #[test]
    fn answers_expect_100_continue_before_the_body() {
        let mut interim = Vec::new();
        let raw = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi";
        let req = read_request(&mut io::BufReader::new(&raw[..]), &mut interim, 1024, 64)
            .unwrap()
            .unwrap();
        assert_eq!(req.recorded.body, b"hi");
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn rejects_oversized_and_malformed_requests() {
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert!(matches!(
            read(big_head.as_bytes()),
            Err(ReadError::Reject(431, _))
        ));
        assert!(matches!(
            read(b"PUT / HTTP/1.1\r\nContent-Length: 65\r\n\r\n"),
            Err(ReadError::Reject(413, _))
        ));
        assert!(matches!(
            read(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n"),
            Err(ReadError::Reject(413, _))
        ));
        assert!(matches!(
            read(b"GET /x?a=%zz HTTP/1.1\r\n\r\n"),
            Err(ReadError::Reject(400, _))
        ));
        for smuggled in [
            &b"PUT / HTTP/1.1\r\nContent-Length: +2\r\n\r\nhi"[..],
            b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
            b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nhi",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nhi\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(read(smuggled), Err(ReadError::Reject(400, _))),
                "{}",
                String::from_utf8_lossy(smuggled)
            );
        }
        assert!(matches!(
            read(b"GARBAGE\r\n\r\n"),
            Err(ReadError::Reject(400, _))
        ));
        assert!(matches!(
            read(b"GET / HTTP/2.0\r\n\r\n"),
            Err(ReadError::Reject(505, _))
        ));
        assert!(matches!(read(b""), Ok(None)));
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n"),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn never_panics_on_random_bytes() {
        let mut seed: u64 = 7;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet =
            b"GET PUT /v1?=&%+:\r\n 0123456789abcdefHTTP/1.chunkedContent-LengthTransfer-Encoding";
        for _ in 0..20_000 {
            let n = usize::try_from(next() % 200).unwrap();
            let raw: Vec<u8> = (0..n)
                .map(|_| alphabet[usize::try_from(next()).unwrap() % alphabet.len()])
                .collect();
            let _ = read(&raw);
        }
    }
}
