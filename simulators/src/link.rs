//! `sim link`: a TCP proxy standing in for the WAN link between the gateway and the
//! platform, cut and restored on a schedule or on command, to show store-and-forward live.
//!
//! While the link is **down**, every proxied connection is closed at once and new
//! connections are accepted and closed immediately (the gateway sees its upstream vanish and
//! keeps alerts in its outbox); when it is **up** again, connections are forwarded to the
//! upstream broker as usual.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Errors of the link proxy.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Counters of a link.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub accepted: AtomicU64,
    /// Connections refused (closed at once) while the link was down.
    pub refused: AtomicU64,
    /// Connections cut by a `down`.
    pub cut: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// A running link; dropping it does not stop it — cancel the token given to [`start`].
#[derive(Clone)]
pub struct Link {
    /// The address the proxy listens on (its real port when asked for port 0).
    pub listen: SocketAddr,
    state: Arc<watch::Sender<bool>>,
    pub stats: Arc<LinkStats>,
}

impl Link {
    /// Cuts the link: closes every proxied connection.
    pub fn down(&self) {
        if self.state.send_replace(false) {
            tracing::info!("link DOWN");
        }
    }

    /// Restores the link.
    pub fn up(&self) {
        if !self.state.send_replace(true) {
            tracing::info!("link UP");
        }
    }

    pub fn is_up(&self) -> bool {
        *self.state.borrow()
    }

    /// Applies a command line: `down`, `up`, `toggle`; returns false for anything else.
    pub fn command(&self, line: &str) -> bool {
        match line.trim() {
            "down" | "cut" => self.down(),
            "up" | "restore" => self.up(),
            "toggle" => {
                if self.is_up() {
                    self.down()
                } else {
                    self.up()
                }
            }
            _ => return false,
        }
        true
    }

    /// Alternates: up for `up`, down for `down`, forever (until `stop`).
    pub fn schedule(&self, up: Duration, down: Duration, stop: CancellationToken) {
        let link = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(up) => link.down(),
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(down) => link.up(),
                }
            }
        });
    }
}

/// Listens on `listen` and forwards to `to` (HOST:PORT) until `stop` is cancelled.
pub async fn start(listen: &str, to: &str, stop: CancellationToken) -> Result<Link, LinkError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| LinkError::Listen {
            addr: listen.to_owned(),
            source,
        })?;
    let listen = listener.local_addr().map_err(|source| LinkError::Listen {
        addr: listen.to_owned(),
        source,
    })?;
    let (state, _) = watch::channel(true);
    let link = Link {
        listen,
        state: Arc::new(state),
        stats: Arc::new(LinkStats::default()),
    };
    let accepting = link.clone();
    let to = to.to_owned();
    tokio::spawn(async move {
        loop {
            let (mut socket, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "link accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let stats = accepting.stats.clone();
            if !accepting.is_up() {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                let _ = socket.shutdown().await;
                continue;
            }
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            let mut state = accepting.state.subscribe();
            let to = to.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut upstream = match TcpStream::connect(&to).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%peer, upstream = %to, error = %e, "link cannot reach upstream");
                        return;
                    }
                };
                let _ = upstream.set_nodelay(true);
                let _ = socket.set_nodelay(true);
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut socket, &mut upstream) => {
                        if let Ok((up, down)) = r {
                            stats.bytes_up.fetch_add(up, Ordering::Relaxed);
                            stats.bytes_down.fetch_add(down, Ordering::Relaxed);
                        }
                    }
                    _ = state.wait_for(|up| !*up) => {
                        stats.cut.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = stop.cancelled() => {}
                }
                // Dropping both sockets closes them.
            });
        }
    });
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on a free port.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await??;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn the_link_forwards_while_up_cuts_connections_when_down_and_recovers() {
        let stop = CancellationToken::new();
        let link = start("127.0.0.1:0", &echo().await.to_string(), stop.clone())
            .await
            .unwrap();
        assert_eq!(round_trip(link.listen).await.unwrap(), b"ping");
        // That connection's relay ends once both sides closed (its bytes counted); only then
        // is `open` below the one connection alive across the cut (else both are cut).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while link.stats.bytes_up.load(Ordering::Relaxed) < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "first relay never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // A connection open across the cut is closed by it.
        let mut open = TcpStream::connect(link.listen).await.unwrap();
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        assert!(link.command("down"));
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "cut connection reads EOF: {n:?}"
        );
        assert!(
            round_trip(link.listen).await.is_err(),
            "no traffic while down"
        );
        assert!(link.stats.refused.load(Ordering::Relaxed) >= 1);
        assert_eq!(link.stats.cut.load(Ordering::Relaxed), 1);

        assert!(link.command("up"));
        assert_eq!(round_trip(link.listen).await.unwrap(), b"ping");
        assert!(!link.command("sideways"));
        stop.cancel();
    }

    /// Paused time: the schedule's own timers are what is tested, so no real time passes.
    #[tokio::test(start_paused = true)]
    async fn a_schedule_alternates_up_and_down() {
        let stop = CancellationToken::new();
        let link = start("127.0.0.1:0", &echo().await.to_string(), stop.clone())
            .await
            .unwrap();
        link.schedule(
            Duration::from_millis(200),
            Duration::from_millis(300),
            stop.clone(),
        );
        assert!(link.is_up());
        tokio::time::sleep(Duration::from_millis(320)).await;
        assert!(!link.is_up(), "down after 200 ms");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(link.is_up(), "up again after 300 ms more");
        stop.cancel();
    }
}
