//! A tiny raw HTTP/1.1 client: one request per call, or several on a kept-alive connection.
//! Every read is bounded by a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use meshguard_fake_consul::FakeConsul;
use serde_json::Value;

/// Longest any test waits for a response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not json ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `X-Consul-Index` as a number.
    pub fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .expect("X-Consul-Index header")
            .parse()
            .expect("numeric X-Consul-Index")
    }
}

/// A kept-alive connection (one descriptor: writes go through the reader's stream).
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Sends a request with a `Content-Length` body.
    pub fn send(&mut self, method: &str, target: &str, body: &[u8]) -> std::io::Result<()> {
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: consul\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let writer = self.reader.get_mut();
        writer.write_all(head.as_bytes())?;
        writer.write_all(body)
    }

    /// Reads one response.
    pub fn read(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            headers.push((k.to_owned(), v.trim().to_owned()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// Whether any response bytes have arrived (without waiting for them).
    pub fn answered_yet(&mut self) -> std::io::Result<bool> {
        if !self.reader.buffer().is_empty() {
            return Ok(true);
        }
        let stream = self.reader.get_ref();
        stream.set_nonblocking(true)?;
        let mut byte = [0u8; 1];
        let peeked = stream.peek(&mut byte);
        stream.set_nonblocking(false)?;
        match peeked {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn request(&mut self, method: &str, target: &str, body: &[u8]) -> std::io::Result<Resp> {
        self.send(method, target, body)?;
        self.read()
    }
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    Conn::open(addr)?.request(method, target, body)
}

pub fn get(fake: &FakeConsul, target: &str) -> Resp {
    try_request(fake.addr(), "GET", target, b"").expect("GET")
}

pub fn put(fake: &FakeConsul, target: &str, body: &[u8]) -> Resp {
    try_request(fake.addr(), "PUT", target, body).expect("PUT")
}

pub fn delete(fake: &FakeConsul, target: &str) -> Resp {
    try_request(fake.addr(), "DELETE", target, b"").expect("DELETE")
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn enc(s: &str) -> String {
    meshguard_core::percent_encode(s)
}

/// The `Service.ID`s of a health or catalog response, in order.
pub fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| {
            e.pointer("/Service/ID")
                .or_else(|| e.get("ServiceID"))
                .and_then(Value::as_str)
                .expect("service id")
                .to_owned()
        })
        .collect()
}
