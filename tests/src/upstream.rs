//! A steerable HTTP/1.1 test upstream: each request chooses its own response through
//! `x-upstream-*` headers, and every request received is recorded for assertions.
//!
//! Steering headers (all optional):
//! - `x-upstream-status: 503`: response status (100..=599).
//! - `x-upstream-delay-ms: 200`: wait before answering (at most [`MAX_DELAY`]).
//! - `x-upstream-body-size: N`: body of N bytes of `a` (at most [`MAX_BODY_SIZE`]).
//! - `x-upstream-body: text`: body `text`.
//! - `x-upstream-header: name=value`: add a response header (repeatable).
//! - `x-upstream-echo: 1`: body is JSON `{"method","path","headers":[[k,v],..],"body"}` of the
//!   request as received.
//!
//! Without steering the answer is `200`, body `ok`. Every response carries `x-upstream: <name>`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::http::{find_header, read_framed_body, read_head, split_head, Response};

/// Longest `x-upstream-delay-ms` honoured; more is answered with 400 so a typo cannot hang a test.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Largest `x-upstream-body-size` honoured, in bytes (16 MiB).
pub const MAX_BODY_SIZE: usize = 16 * 1024 * 1024;

/// A request as the upstream received it (after Envoy, for tests behind a proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRequest {
    /// Method token.
    pub method: String,
    /// Request target as received (path and query).
    pub path: String,
    /// Headers in the order received; names as sent on the wire.
    pub headers: Vec<(String, String)>,
    /// De-chunked body bytes.
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn body_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// A custom response function for [`TestUpstream::start_with`].
type Handler = dyn Fn(&ReceivedRequest) -> Response + Send + Sync;

/// How responses are produced.
enum Mode {
    /// The `x-upstream-*` header protocol described in the module docs.
    Steered,
    /// A caller-supplied function.
    Custom(Box<Handler>),
}

/// A shutdown flag whose waits end early when it is raised.
#[derive(Default)]
struct ShutdownSignal {
    raised: Mutex<bool>,
    cv: Condvar,
}

impl ShutdownSignal {
    fn raise(&self) {
        *lock(&self.raised) = true;
        self.cv.notify_all();
    }

    fn is_raised(&self) -> bool {
        *lock(&self.raised)
    }

    /// Waits `duration` or until shutdown; true if shutdown was raised.
    fn wait(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut raised = lock(&self.raised);
        while !*raised {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            raised = self
                .cv
                .wait_timeout(raised, remaining)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *raised
    }
}

/// Open connections, so shutdown can unblock their reads, and their threads, so it can join them.
#[derive(Default)]
struct Connections {
    next_id: u64,
    streams: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

/// State shared by the accept thread and the connection threads.
struct Shared {
    name: String,
    mode: Mode,
    requests: Mutex<Vec<ReceivedRequest>>,
    shutdown: ShutdownSignal,
    connections: Mutex<Connections>,
}

/// A loopback HTTP/1.1 server for tests; shuts down (and joins its threads) on drop.
pub struct TestUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TestUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestUpstream")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestUpstream {
    /// Starts a steered upstream named `upstream` on 127.0.0.1 and a free port.
    pub fn start() -> Result<Self> {
        Self::start_named("upstream")
    }

    /// Starts a steered upstream whose responses carry `x-upstream: <name>`.
    pub fn start_named(name: &str) -> Result<Self> {
        Self::spawn(name, Mode::Steered)
    }

    /// Starts an upstream that answers every request with `handler` (no steering, no delay).
    pub fn start_with(
        handler: impl Fn(&ReceivedRequest) -> Response + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::spawn("custom", Mode::Custom(Box::new(handler)))
    }

    fn spawn(name: &str, mode: Mode) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind test upstream")?;
        let addr = listener.local_addr().context("test upstream address")?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            mode,
            requests: Mutex::new(Vec::new()),
            shutdown: ShutdownSignal::default(),
            connections: Mutex::new(Connections::default()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = std::thread::Builder::new()
            .name(format!("upstream-{name}-accept"))
            .spawn(move || accept_loop(&listener, &accept_shared))
            .context("spawn test upstream accept thread")?;
        Ok(Self {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The listening address (127.0.0.1:port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The name sent in the `x-upstream` response header.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests have been received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.shared.shutdown.raise();
        // The accept thread is blocked in accept(): a connection wakes it, it sees the flag and
        // returns. If even that connect fails we leave the thread behind rather than hang drop.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok();
        if let Some(thread) = self.accept_thread.take() {
            if woke {
                let _ = thread.join();
            }
        }
        // No new connections can be registered now; unblock the open ones (Envoy keeps
        // upstream connections alive, so their threads sit in read()) and join them.
        let threads = {
            let mut connections = lock(&self.shared.connections);
            for stream in connections.streams.values() {
                let _ = stream.shutdown(NetShutdown::Both);
            }
            std::mem::take(&mut connections.threads)
        };
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Locks a mutex, ignoring poisoning: a panicking test thread must not hide the recorded state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.shutdown.is_raised() {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Transient (e.g. out of file descriptors): back off briefly instead of spinning.
                if shared.shutdown.wait(Duration::from_millis(10)) {
                    return;
                }
                continue;
            }
        };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let mut connections = lock(&shared.connections);
        connections.threads.retain(|t| !t.is_finished());
        let id = connections.next_id;
        connections.next_id += 1;
        connections.streams.insert(id, clone);
        let conn_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("upstream-{}-conn-{id}", shared.name))
            .spawn(move || {
                serve_connection(stream, &conn_shared);
                lock(&conn_shared.connections).streams.remove(&id);
            });
        match spawned {
            Ok(thread) => connections.threads.push(thread),
            Err(_) => {
                connections.streams.remove(&id);
            }
        }
    }
}

/// Serves requests on one keep-alive connection until the peer closes, asks to close, sends
/// garbage, or the upstream shuts down.
fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let (request, keep_alive) = match read_request(&mut reader, &mut writer) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return,
            Err(err) => {
                let response = Response::new(400).with_body(format!("test upstream: {err:#}\n"));
                let _ = write_response(&mut writer, &shared.name, &response, false, false);
                return;
            }
        };
        lock(&shared.requests).push(request.clone());
        let response = match &shared.mode {
            Mode::Custom(handler) => handler(&request),
            Mode::Steered => match steering(&request) {
                Ok(steer) => {
                    if !steer.delay.is_zero() && shared.shutdown.wait(steer.delay) {
                        return;
                    }
                    steer.response
                }
                Err(err) => Response::new(400)
                    .with_header("x-upstream-error", "bad-steering")
                    .with_body(format!("test upstream: {err:#}\n")),
            },
        };
        let head = request.method == "HEAD";
        if write_response(&mut writer, &shared.name, &response, head, keep_alive).is_err()
            || !keep_alive
            || shared.shutdown.is_raised()
        {
            return;
        }
    }
}

/// Reads one request; `None` on a clean close between requests. The flag says whether the
/// connection stays open afterwards.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<Option<(ReceivedRequest, bool)>> {
    let Some(lines) = read_head(reader)? else {
        return Ok(None);
    };
    let (start, headers) = split_head(&lines)?;
    let mut parts = start.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("malformed request line {start:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("unsupported protocol {version:?}");
    }
    let connection = find_header(&headers, "connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    if find_header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        writer
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .context("write 100 Continue")?;
    }
    // A request without framing headers has no body (RFC 9112 §6.3 rule 7).
    let body = read_framed_body(reader, &headers)?.unwrap_or_default();
    let request = ReceivedRequest {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
    };
    Ok(Some((request, keep_alive)))
}

/// The response and delay one request asked for.
struct Steer {
    response: Response,
    delay: Duration,
}

/// Applies the `x-upstream-*` protocol; a malformed or out-of-range value is an error that the
/// caller turns into a 400, so a broken test shows up as a broken test, not a flaky one.
fn steering(request: &ReceivedRequest) -> Result<Steer> {
    let number = |name: &str| -> Result<Option<u64>> {
        request
            .header(name)
            .map(|v| {
                v.parse::<u64>()
                    .with_context(|| format!("{name}: {v:?} is not a number"))
            })
            .transpose()
    };
    let status = match number("x-upstream-status")? {
        None => 200,
        Some(s @ 100..=599) => s as u16,
        Some(s) => bail!("x-upstream-status: {s} is outside 100..=599"),
    };
    let delay = Duration::from_millis(number("x-upstream-delay-ms")?.unwrap_or(0));
    if delay > MAX_DELAY {
        bail!("x-upstream-delay-ms: {delay:?} exceeds {MAX_DELAY:?}");
    }
    let mut response = Response::new(status);
    if request.header("x-upstream-echo") == Some("1") {
        let echo = serde_json::json!({
            "method": request.method,
            "path": request.path,
            "headers": request.headers.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
            "body": request.body_str(),
        });
        response = response
            .with_header("content-type", "application/json")
            .with_body(serde_json::to_vec(&echo).context("encode echo")?);
    } else if let Some(size) = number("x-upstream-body-size")? {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > MAX_BODY_SIZE {
            bail!("x-upstream-body-size: {size} exceeds {MAX_BODY_SIZE}");
        }
        response = response
            .with_header("content-type", "text/plain")
            .with_body(vec![b'a'; size]);
    } else {
        let body = request.header("x-upstream-body").unwrap_or("ok");
        response = response
            .with_header("content-type", "text/plain")
            .with_body(body);
    }
    for (name, value) in &request.headers {
        if name.eq_ignore_ascii_case("x-upstream-header") {
            let (k, v) = value
                .split_once('=')
                .ok_or_else(|| anyhow!("x-upstream-header: {value:?} is not name=value"))?;
            response = response.with_header(k.trim(), v.trim());
        }
    }
    Ok(Steer { response, delay })
}

/// Writes `response` with an exact `content-length` (handler-supplied framing headers are
/// replaced, so a handler cannot desynchronize a keep-alive connection by accident).
fn write_response(
    writer: &mut TcpStream,
    name: &str,
    response: &Response,
    head: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let status = response.status;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    out.extend_from_slice(format!("x-upstream: {name}\r\n").as_bytes());
    for (k, v) in &response.headers {
        let framing = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|f| k.eq_ignore_ascii_case(f));
        if !framing {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
    }
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    if !bodyless {
        out.extend_from_slice(format!("content-length: {}\r\n", response.body.len()).as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodyless && !head {
        out.extend_from_slice(&response.body);
    }
    writer.write_all(&out)?;
    writer.flush()
}

/// Reason phrase for the status line (informational only; clients ignore it).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
// A failed unwrap is how a test reports failure.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::http::{send, send_raw, Request};

    #[test]
    fn answers_ok_by_default_and_records_the_request() {
        let upstream = TestUpstream::start_named("a").unwrap();
        let r = send(upstream.addr(), &Request::post("/x?q=1").body("hi")).unwrap();
        assert_eq!((r.status, r.body_str().as_ref()), (200, "ok"));
        assert_eq!(r.header("x-upstream"), Some("a"));
        let seen = upstream.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("POST", "/x?q=1")
        );
        assert_eq!(seen[0].body_str(), "hi");
    }

    #[test]
    fn steering_headers_choose_status_body_and_headers() {
        let upstream = TestUpstream::start().unwrap();
        let r = send(
            upstream.addr(),
            &Request::get("/")
                .header("x-upstream-status", "503")
                .header("x-upstream-body", "down")
                .header("x-upstream-header", "retry-after=1")
                .header("x-upstream-header", "x-b=2"),
        )
        .unwrap();
        assert_eq!((r.status, r.body_str().as_ref()), (503, "down"));
        assert_eq!(
            (r.header("retry-after"), r.header("x-b")),
            (Some("1"), Some("2"))
        );
        let r = send(
            upstream.addr(),
            &Request::get("/").header("x-upstream-body-size", "70000"),
        )
        .unwrap();
        assert_eq!(r.body, vec![b'a'; 70000]);
        let r = send(
            upstream.addr(),
            &Request::get("/").header("x-upstream-status", "99"),
        )
        .unwrap();
        assert_eq!(r.status, 400);
        let r = send(
            upstream.addr(),
            &Request::get("/").header("x-upstream-delay-ms", "30001"),
        )
        .unwrap();
        assert_eq!(r.status, 400);
    }

    #[test]
    fn echo_reflects_a_chunked_request_body_and_duplicate_headers() {
        let upstream = TestUpstream::start().unwrap();
        let raw = b"PUT /e HTTP/1.1\r\nHost: x\r\nx-upstream-echo: 1\r\nx-d: 1\r\nx-d: 2\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n";
        let echo = send_raw(upstream.addr(), raw).unwrap().json().unwrap();
        assert_eq!(echo["method"], "PUT");
        assert_eq!(echo["body"], "hello");
        let headers = echo["headers"].as_array().unwrap();
        assert!(headers.contains(&serde_json::json!(["x-d", "1"])));
        assert!(headers.contains(&serde_json::json!(["x-d", "2"])));
    }

    #[test]
    fn serves_several_requests_on_one_keep_alive_connection() {
        let upstream =
            TestUpstream::start_with(|req| Response::new(201).with_body(req.path.clone())).unwrap();
        let raw = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut stream = TcpStream::connect(upstream.addr()).unwrap();
        stream.write_all(raw).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
        assert_eq!(text.matches("HTTP/1.1 201").count(), 2, "{text}");
        assert!(text.ends_with("/2"), "{text}");
        assert_eq!(upstream.request_count(), 2);
    }

    #[test]
    fn drop_returns_while_a_keep_alive_connection_and_a_delay_are_pending() {
        let upstream = TestUpstream::start().unwrap();
        let _idle = TcpStream::connect(upstream.addr()).unwrap();
        let mut slow = TcpStream::connect(upstream.addr()).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nx-upstream-delay-ms: 30000\r\n\r\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while upstream.request_count() == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let started = Instant::now();
        drop(upstream);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
