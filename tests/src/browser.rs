//! A W3C WebDriver client for the browser scenarios: Debian's `chromium` and
//! `chromium-driver`, headless, driven by a few JSON calls over plain HTTP on loopback (std
//! only). Shared by tests/console_browser.rs and tests/console_live.rs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::upstream::free_port;

/// How long any single "until the page shows it" wait may take (a loaded 2-core CI box).
pub const WAIT: Duration = Duration::from_secs(20);

/// Finds a program on PATH (or a Debian fallback path).
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Minimal HTTP/1.1 over loopback: one request per connection, JSON in and out.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to chromedriver {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        addr.port(),
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    // chromedriver keeps the connection open: read the header, then exactly the body.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut read_more = |raw: &mut Vec<u8>| {
        let n = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
        assert!(n > 0, "{method} {path}: connection closed early");
        raw.extend_from_slice(&buf[..n]);
    };
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        read_more(&mut raw);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let payload = if let Some(length) = length {
        while raw.len() < split + 4 + length {
            read_more(&mut raw);
        }
        raw[split + 4..split + 4 + length].to_vec()
    } else if head.contains("transfer-encoding: chunked") {
        while !raw[split + 4..].windows(5).any(|w| w == b"0\r\n\r\n") {
            read_more(&mut raw);
        }
        dechunk(&raw[split + 4..])
    } else {
        Vec::new()
    };
    let value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
    (status, value)
}

pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver plus one Chromium session; both end on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        Self::start_with(1400, 880, &[])
    }

    /// [`Browser::start`] with a window of `width`×`height` and `extra` Chromium flags (e.g.
    /// `--autoplay-policy=no-user-gesture-required` for the alarm sound).
    pub fn start_with(width: u32, height: u32, extra: &[&str]) -> Browser {
        let chromium = find_program(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!("Chromium is not installed: run `./x deps` (it installs Debian's chromium and chromium-driver)")
        });
        let chromedriver = find_program(&["chromedriver"]).unwrap_or_else(|| {
            panic!("chromedriver is not installed: run `./x deps` (it installs Debian's chromium and chromium-driver)")
        });
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} ({e}); run `./x deps`", chromedriver.display()));
        // Owned by `browser` from here on, so a failure below still ends chromedriver.
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            profile,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let (status, v) = http(addr, "GET", "/status", None);
                if status == 200 && v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let window = format!("--window-size={width},{height}");
        let profile_dir = format!("--user-data-dir={}", browser.profile.path().display());
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--lang=en-US",
            &window,
            &profile_dir,
        ];
        args.extend_from_slice(extra);
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": args,
                        "prefs": { "intl.accept_languages": "en-US,en" },
                    }
                }
            }
        });
        let (status, v) = http(addr, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "chromedriver could not start Chromium: {v}");
        browser.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_owned();
        browser
    }

    /// One WebDriver command on the session; `Err` carries the WebDriver error.
    pub fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let full = format!("/session/{}{path}", self.session);
        let (status, v) = http(self.addr, method, &full, body.as_ref());
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} failed: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn find(&self, css: &str) -> Result<String, Value> {
        let v = self.try_cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        Ok(v[ELEMENT].as_str().expect("element id").to_owned())
    }

    pub fn script(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Polls until an element matches `css` (up to [`WAIT`]); `what` explains a failure.
    pub fn wait_for(&self, css: &str, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(id) = self.find(css) {
                return id;
            }
            if Instant::now() >= deadline {
                let html = self.script("return document.body ? document.body.outerHTML : ''");
                panic!("{what}: nothing matched {css:?} within {WAIT:?}; page:\n{html}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element matching `css`, finding it again if the page re-rendered it.
    pub fn click(&self, css: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let id = self.wait_for(css, what);
            match self.try_cmd("POST", &format!("/element/{id}/click"), Some(json!({}))) {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retrying click on {css}: {}", e["error"]);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{what}: clicking {css:?} failed: {e}"),
            }
        }
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.wait_for(css, "login form");
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.cmd("GET", &format!("/element/{element}/attribute/{name}"), None)
            .as_str()
            .map(str::to_owned)
    }

    pub fn screenshot_png(&self) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None);
        base64_decode(b64.as_str().expect("screenshot is base64"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let full = format!("/session/{}", self.session);
            // Best effort and never panicking (this may run while a failed test unwinds).
            if let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let _ = write!(
                    s,
                    "DELETE {full} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.addr.port()
                );
                let _ = s.read(&mut [0u8; 4096]);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
