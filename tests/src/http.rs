//! Plain HTTP/1.1 over a fresh TCP connection (`Connection: close`): enough to talk to the
//! console and the resident pages without an HTTP client crate.

use std::io::{Read, Write};

/// A response: its status code and its raw text (status line, headers, body).
pub struct Response {
    pub status: u16,
    pub raw: String,
}

impl Response {
    /// The body (after the blank line).
    pub fn body(&self) -> &str {
        self.raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self
            .raw
            .split_once("\r\n\r\n")
            .map_or(&*self.raw, |(h, _)| h);
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `method path` with optional `headers` (`Name: value` lines) and `body`.
pub fn request(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> Response {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP server");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send the request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Response { status, raw }
}

/// `GET path`: `(status, body)`.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let r = request(addr, "GET", path, &[], "");
    (r.status, r.body().to_owned())
}
