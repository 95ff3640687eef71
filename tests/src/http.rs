//! A raw HTTP/1.1 client over `std::net::TcpStream`, plus the wire helpers the test upstream
//! shares. Tests control the exact bytes on the wire: duplicate headers, odd paths such as
//! `//v1/x` or `/%2e%2e/`, or a hand-written request through [`send_raw`].

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long [`send`] and [`send_raw`] wait for a complete response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request/status line plus headers we accept, in bytes; more means a broken peer.
const MAX_HEAD_BYTES: usize = 256 * 1024;

/// Largest body we accept, in bytes: above the upstream's 16 MiB steering limit, so that limit
/// is what tests hit, while a runaway peer still cannot exhaust memory.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// An HTTP/1.1 request exactly as it will be written (plus `Host`, `Connection: close` and
/// `Content-Length` when the caller did not set them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token, e.g. `GET`.
    pub method: String,
    /// Request target, written verbatim (no normalization or escaping).
    pub path: String,
    /// Headers in order; duplicates are kept and sent as separate lines.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with the given method and target, no headers and no body.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `GET` request for `path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }

    /// A `POST` request for `path`.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new("POST", path)
    }

    /// Appends a header line (repeat the call to send a header twice).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body; `Content-Length` is added on the wire unless a length or
    /// `Transfer-Encoding` header was set, in which case the body is written as given.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The bytes written for this request when sent to `host` (`Host` header value).
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        if !has("host") {
            out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        // Requests with a body method get an explicit length even when empty: some proxies
        // answer 411 to a POST without one.
        let body_method = matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if (!self.body.is_empty() || body_method)
            && !has("content-length")
            && !has("transfer-encoding")
        {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        if !has("connection") {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// An HTTP response: what the client received, or what the test upstream sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in the order received; names keep their case.
    pub headers: Vec<(String, String)>,
    /// Body bytes, already de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends a header (builder form, for upstream handlers).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (builder form, for upstream handlers).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of header `name`, in order, compared case-insensitively.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text; invalid UTF-8 is replaced rather than failing the test here.
    pub fn body_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.body_str()))
    }
}

/// First value of `name` in `headers`, case-insensitively.
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sends `request` to `addr` and reads the response, within [`DEFAULT_TIMEOUT`].
pub fn send(addr: SocketAddr, request: &Request) -> Result<Response> {
    send_with_timeout(addr, request, DEFAULT_TIMEOUT)
}

/// Sends `request` to `addr` and reads the response, within `timeout` overall.
pub fn send_with_timeout(
    addr: SocketAddr,
    request: &Request,
    timeout: Duration,
) -> Result<Response> {
    let bytes = request.to_bytes(&addr.to_string());
    exchange(addr, &bytes, request.method == "HEAD", timeout)
        .with_context(|| format!("{} {} to {addr}", request.method, request.path))
}

/// Writes `bytes` verbatim to `addr` and reads one response, within [`DEFAULT_TIMEOUT`].
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<Response> {
    send_raw_with_timeout(addr, bytes, DEFAULT_TIMEOUT)
}

/// Writes `bytes` verbatim to `addr` and reads one response, within `timeout` overall.
pub fn send_raw_with_timeout(
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Response> {
    let head = bytes.starts_with(b"HEAD ");
    exchange(addr, bytes, head, timeout).with_context(|| format!("raw request to {addr}"))
}

/// One connection: write the request, read one response (framed by its headers).
fn exchange(addr: SocketAddr, bytes: &[u8], head: bool, timeout: Duration) -> Result<Response> {
    let deadline = Instant::now() + timeout;
    let stream = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    stream
        .set_write_timeout(Some(timeout))
        .context("set write timeout")?;
    stream.set_nodelay(true).context("set nodelay")?;
    // A proxy may reject the request and close before reading all of it (e.g. a 400 on a bad
    // header); its response is still what the test wants, so a write error only matters when
    // no response can be read afterwards.
    let written = (&stream).write_all(bytes);
    let mut reader = BufReader::new(DeadlineReader { stream, deadline });
    match read_response(&mut reader, head) {
        Ok(response) => Ok(response),
        Err(read_err) => match written {
            Err(write_err) => {
                Err(anyhow!(write_err).context(format!("write failed; read: {read_err:#}")))
            }
            Ok(()) => Err(read_err),
        },
    }
}

/// A reader that fails with `TimedOut` once `deadline` passes, so a trickling peer cannot
/// stretch a per-read socket timeout into an unbounded wait.
struct DeadlineReader {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response deadline passed",
            ));
        }
        self.stream.set_read_timeout(Some(remaining))?;
        self.stream.read(buf)
    }
}

/// Reads one final response (skipping interim 1xx responses such as `100 Continue`).
fn read_response<R: BufRead>(reader: &mut R, head: bool) -> Result<Response> {
    loop {
        let Some(lines) = read_head(reader)? else {
            bail!("connection closed before a response arrived");
        };
        let (status_line, headers) = split_head(&lines)?;
        let status = parse_status_line(status_line)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let body = if head || status == 204 || status == 304 || status == 101 {
            Vec::new()
        } else if let Some(body) = read_framed_body(reader, &headers)? {
            body
        } else {
            // No framing: the body runs to the end of the connection (HTTP/1.1 §6.3 rule 8).
            read_to_close(reader)?
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &str) -> Result<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {line:?}");
    }
    parts
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("bad status code in {line:?}"))
}

/// Reads a message head (start line + headers) up to the blank line. `None` on a clean EOF
/// before the first byte, which for a keep-alive connection means "no more messages".
pub(crate) fn read_head<R: BufRead>(reader: &mut R) -> Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD_BYTES - total) as u64 + 1)
            .read_until(b'\n', &mut line)
            .context("read message head")?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            bail!("connection closed in the middle of the message head");
        }
        total += n;
        if total > MAX_HEAD_BYTES {
            bail!("message head exceeds {MAX_HEAD_BYTES} bytes");
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        // Tolerate blank lines before the start line (RFC 9112 §2.2).
        if text.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(lines));
        }
        lines.push(text.to_string());
    }
}

/// Splits head lines into the start line and `(name, value)` headers.
pub(crate) fn split_head(lines: &[String]) -> Result<(&str, Vec<(String, String)>)> {
    let (start, rest) = lines
        .split_first()
        .ok_or_else(|| anyhow!("empty message head"))?;
    let mut headers = Vec::with_capacity(rest.len());
    for line in rest {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("malformed header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok((start.as_str(), headers))
}

/// Reads a body framed by `Transfer-Encoding: chunked` or `Content-Length`; `None` when the
/// headers carry neither.
pub(crate) fn read_framed_body<R: BufRead>(
    reader: &mut R,
    headers: &[(String, String)],
) -> Result<Option<Vec<u8>>> {
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        return read_chunked(reader).map(Some);
    }
    let Some(length) = find_header(headers, "content-length") else {
        return Ok(None);
    };
    let length: usize = length
        .parse()
        .with_context(|| format!("bad content-length {length:?}"))?;
    if length > MAX_BODY_BYTES {
        bail!("content-length {length} exceeds {MAX_BODY_BYTES}");
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .with_context(|| format!("read {length}-byte body"))?;
    Ok(Some(body))
}

/// Decodes a chunked body, discarding chunk extensions and trailers.
fn read_chunked<R: BufRead>(reader: &mut R) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_short_line(reader).context("read chunk size")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailer section: header lines until an empty one.
            while !read_short_line(reader).context("read trailer")?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY_BYTES {
            bail!("chunked body exceeds {MAX_BODY_BYTES} bytes");
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(&mut body[start..])
            .context("read chunk data")?;
        if !read_short_line(reader)
            .context("read chunk end")?
            .is_empty()
        {
            bail!("chunk data not followed by CRLF");
        }
    }
}

/// One CRLF-terminated line of at most a few KiB (chunk sizes, trailers), without the CRLF.
fn read_short_line<R: BufRead>(reader: &mut R) -> Result<String> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(8 * 1024)
        .read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        bail!("connection closed or line too long");
    }
    Ok(String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_string())
}

/// Reads until the peer closes, bounded by [`MAX_BODY_BYTES`].
fn read_to_close<R: BufRead>(reader: &mut R) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    reader
        .by_ref()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .context("read body until close")?;
    if body.len() > MAX_BODY_BYTES {
        bail!("body exceeds {MAX_BODY_BYTES} bytes");
    }
    Ok(body)
}

#[cfg(test)]
// A failed unwrap is how a test reports failure.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Response {
        read_response(&mut &bytes[..], false).unwrap()
    }

    #[test]
    fn decodes_content_length_body() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nokEXTRA");
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), "ok");
        assert_eq!(r.header("X-a"), Some("1"));
        assert_eq!(r.header_all("x-A"), vec!["1", "2"]);
    }

    #[test]
    fn decodes_chunked_body_with_extensions_and_trailers() {
        let r = parse(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
        );
        assert_eq!(r.status, 201);
        assert_eq!(r.body_str(), "abc0123456789");
    }

    #[test]
    fn skips_interim_responses_and_reads_unframed_body_to_close() {
        let r = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 503 Unavailable\r\n\r\nbye");
        assert_eq!(r.status, 503);
        assert_eq!(r.body_str(), "bye");
    }

    #[test]
    fn head_and_no_content_responses_have_no_body() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let r = read_response(&mut &bytes[..], true).unwrap();
        assert!(r.body.is_empty());
        assert!(parse(b"HTTP/1.1 204 No Content\r\n\r\n").body.is_empty());
    }

    #[test]
    fn rejects_garbage_and_early_close() {
        assert!(read_response(&mut &b"SSH-2.0\r\n\r\n"[..], false).is_err());
        assert!(read_response(&mut &b""[..], false).is_err());
        assert!(read_response(
            &mut &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab"[..],
            false
        )
        .is_err());
    }

    #[test]
    fn request_bytes_add_defaults_but_keep_duplicates_and_odd_paths() {
        let bytes = Request::post("//v1/x")
            .header("x-a", "1")
            .header("x-a", "2")
            .body("hi")
            .to_bytes("h:1");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "POST //v1/x HTTP/1.1\r\nHost: h:1\r\nx-a: 1\r\nx-a: 2\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        let bytes = Request::get("/%2e%2e/")
            .header("HOST", "x")
            .header("connection", "keep-alive")
            .to_bytes("h:1");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "GET /%2e%2e/ HTTP/1.1\r\nHOST: x\r\nconnection: keep-alive\r\n\r\n"
        );
    }
}
