//! `sim camera --http-port P`: the same footage as HTTP MPEG-TS streams (`GET /cam0.ts`), the
//! other way IP cameras and encoders are commonly read.
//!
//! Each request starts one FFmpeg process (Debian's `ffmpeg` CLI) that reads the clip in real
//! time (`-re`, looping endlessly), encodes H.264 with a keyframe every second and writes
//! MPEG-TS to its stdout, which is copied to the client until it disconnects; the process is
//! killed with the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Errors of the HTTP MPEG-TS server.
#[derive(Debug, thiserror::Error)]
pub enum HttpTsError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A running server; stops when dropped.
pub struct HttpTsServer {
    pub addr: SocketAddr,
    /// `(path, url)` per stream, e.g. `("/cam0.ts", "http://127.0.0.1:8080/cam0.ts")`.
    pub urls: Vec<(String, String)>,
    stop: CancellationToken,
}

impl Drop for HttpTsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves `streams` (path without `.ts` → footage) on `address:port` (0 = a free port).
pub async fn serve(
    address: &str,
    port: u16,
    streams: Vec<(String, PathBuf)>,
) -> Result<HttpTsServer, HttpTsError> {
    let bind = format!("{address}:{port}");
    let listener = TcpListener::bind(&bind)
        .await
        .map_err(|source| HttpTsError::Bind {
            addr: bind.clone(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| HttpTsError::Bind { addr: bind, source })?;
    let table: Arc<HashMap<String, PathBuf>> = Arc::new(
        streams
            .into_iter()
            .map(|(path, file)| (format!("{}.ts", path.trim_end_matches(".ts")), file))
            .collect(),
    );
    let mut urls: Vec<(String, String)> = table
        .keys()
        .map(|p| (p.clone(), format!("http://{addr}{p}")))
        .collect();
    urls.sort();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                accepted = listener.accept() => if let Ok((conn, _)) = accepted {
                    tokio::spawn(client(conn, table.clone(), token.clone()));
                },
            }
        }
    });
    Ok(HttpTsServer { addr, urls, stop })
}

async fn client(
    mut conn: TcpStream,
    table: Arc<HashMap<String, PathBuf>>,
    stop: CancellationToken,
) {
    let mut request = vec![0u8; 4096];
    let Ok(n) = conn.read(&mut request).await else {
        return;
    };
    let head = String::from_utf8_lossy(&request[..n]);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let Some(file) = table.get(&path) else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    let child = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
        ])
        .arg(file)
        .args([
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-g",
            "15",
            "-f",
            "mpegts",
            "pipe:1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        return;
    };
    let Some(mut out) = child.stdout.take() else {
        return;
    };
    if conn
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::io::copy(&mut out, &mut conn) => {}
    }
    let _ = child.kill().await;
}
