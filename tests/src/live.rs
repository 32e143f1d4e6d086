//! Live view clients for the scenarios and the benchmark: the console login, its camera
//! list, WebSocket viewers of `/api/cameras/{id}/live`, the sockets of a TCP port, and the
//! frames inside fragmented MP4.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::http;

/// Logs in to the console at `console` (`host:port`); the `Cookie` header value.
pub fn login(console: &str, username: &str, password: &str) -> String {
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    let r = http::request(
        console,
        "POST",
        "/login",
        &["Content-Type: application/json"],
        &body,
    );
    assert_eq!(r.status, 200, "login: {}", r.raw);
    let cookie = r.header("set-cookie").expect("a session cookie");
    cookie.split(';').next().unwrap_or_default().to_owned()
}

/// `GET /api/cameras` with the session `cookie`.
pub fn cameras(console: &str, cookie: &str) -> Value {
    let r = http::request(
        console,
        "GET",
        "/api/cameras",
        &[&format!("Cookie: {cookie}")],
        "",
    );
    assert_eq!(r.status, 200, "GET /api/cameras: {}", r.raw);
    serde_json::from_str(r.body()).unwrap_or(Value::Null)
}

/// The counters of camera `id` (`stats` of `/api/cameras`; `Null` while it has none).
pub fn camera_stats(console: &str, cookie: &str, id: &str) -> Value {
    let all = cameras(console, cookie);
    all["cameras"]
        .as_array()
        .and_then(|cams| cams.iter().find(|c| c["id"] == id))
        .map(|c| c["stats"].clone())
        .unwrap_or(Value::Null)
}

/// What a viewer receives.
#[derive(Debug)]
pub enum Received {
    /// A text message (`start`, `unsupported`, `busy`).
    Control(Value),
    /// The init segment or a fragment.
    Media(Vec<u8>),
}

/// A WebSocket viewer of one camera.
pub struct Viewer {
    pub ws: WebSocketStream<TcpStream>,
}

/// Opens `/api/cameras/{camera}/live{query}` with `cookie`; `recv_buffer` shrinks the
/// socket's receive buffer (a viewer that will not read fills it sooner).
pub async fn connect(
    console: &str,
    cookie: Option<&str>,
    camera: &str,
    recv_buffer: Option<u32>,
) -> Result<Viewer, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://{console}/api/cameras/{camera}/live");
    let mut request = url.into_client_request()?;
    if let Some(cookie) = cookie {
        let value = HeaderValue::from_str(cookie).expect("a cookie header value");
        request.headers_mut().insert("Cookie", value);
    }
    let addr: std::net::SocketAddr = console.parse().expect("host:port");
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(Viewer { ws })
}

impl Viewer {
    /// The next message within `wait`; `None` when the socket closed or nothing came.
    pub async fn next(&mut self, wait: Duration) -> Option<Received> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next()).await.ok()??;
            match msg.ok()? {
                Message::Text(t) => {
                    return Some(Received::Control(
                        serde_json::from_str(t.as_str()).unwrap_or(Value::Null),
                    ))
                }
                Message::Binary(b) => return Some(Received::Media(b.to_vec())),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }
}

/// Established TCP connections whose local port is `port` (the server side of a
/// listener's clients), from /proc/net/tcp and tcp6.
pub fn established_on(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    let local_port = cols
                        .get(1)
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| u16::from_str_radix(p, 16).ok());
                    local_port == Some(port) && cols.get(3) == Some(&"01")
                })
                .map(|_| ())
                .collect::<Vec<_>>()
        })
        .count()
}

/// The NAL units of an MP4 sample (`mdat` payload: 4-byte big-endian lengths).
pub fn mdat_nals(fragment: &[u8]) -> Vec<&[u8]> {
    let Some(at) = fragment.windows(4).position(|w| w == b"mdat") else {
        return Vec::new();
    };
    let mut data = &fragment[at + 4..];
    let mut out = Vec::new();
    while data.len() >= 4 {
        let n = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if n == 0 || data.len() < 4 + n {
            break;
        }
        out.push(&data[4..4 + n]);
        data = &data[4 + n..];
    }
    out
}

/// The NAL units of an Annex B packet (start codes `00 00 01` / `00 00 00 01`).
pub fn annexb_nals(packet: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= packet.len() {
        if packet[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(packet.len(), |&n| n - 3);
        while end > s && packet[end - 1] == 0 {
            end -= 1;
        }
        out.push(&packet[s..end]);
    }
    out
}

/// A frame's identity: a hash of its largest NAL unit (the slice data), the same whether the
/// frame travels in Annex B (RTSP) or length-prefixed (MP4).
pub fn frame_key(nals: &[&[u8]]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let largest = nals.iter().max_by_key(|n| n.len())?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    largest.hash(&mut h);
    Some(h.finish())
}
