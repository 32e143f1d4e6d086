//! The console's accept loop (in place of `axum::serve`, which has no header-read timeout
//! and no connection cap): idle or slow connections must not take the file descriptors the
//! broker needs for the sensors.
//!
//! - **Connection cap**: at most [`Limits::max_connections`] connections at once (an eighth
//!   of the open-file limit, 16 to 1,024: the broker front budgets most of the rest for the
//!   sensors); beyond it new connections wait in the kernel's backlog, which costs the
//!   process no descriptor.
//! - **Per address**: at most [`Limits::per_address`] connections from one IP address;
//!   more get a bare `503` and are closed at once (a browser needs six or so).
//! - **Header-read timeout** ([`HEADER_TIMEOUT`]): a connection that does not send a whole
//!   request head within it — on connect, or between keep-alive requests — is closed.
//! - Request heads are limited to [`MAX_HEAD`] bytes.
//!
//! Each request carries the peer address as `ConnectInfo<SocketAddr>`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request head (also the keep-alive idle timeout).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read (request line, cookies and all).
pub const MAX_HEAD: usize = 16 * 1024;

/// What a connection over its address's cap gets before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
    Content-Length: 0\r\nConnection: close\r\n\r\n";

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// `None`: no per-address cap (residents behind one NAT share an address).
    pub per_address: Option<usize>,
}

impl Limits {
    /// Limits for a listener given the process's open-file limit: an eighth of it each,
    /// so the broker and SQLite keep three quarters.
    pub fn for_fd_limit(fd_limit: u64, per_address: Option<usize>) -> Limits {
        let eighth = usize::try_from(fd_limit / 8).unwrap_or(usize::MAX);
        Limits {
            max_connections: eighth.clamp(16, 1024),
            per_address,
        }
    }
}

/// Connections of one listener: the cap, the per-address counts and what was refused. It
/// outlives restarts of the server task, so connections of a crashed server still count.
pub struct Gate {
    limits: Limits,
    slots: Arc<Semaphore>,
    /// Open connections per peer address.
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Connections closed at once because their address had too many.
    refused: AtomicU64,
    name: &'static str,
}

/// A connection's place; released when the connection ends.
struct Held {
    _slot: OwnedSemaphorePermit,
    addr: IpAddr,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut map) = self.per_address.lock() {
            if let Some(n) = map.get_mut(&self.addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.addr);
                }
            }
        }
    }
}

impl Gate {
    pub fn new(name: &'static str, limits: Limits) -> Gate {
        Gate {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            per_address: Arc::default(),
            refused: AtomicU64::new(0),
            name,
        }
    }

    /// Connections closed at once because their address had too many.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes `addr`'s place for an accepted connection, or `None` if it has too many.
    fn admit(&self, addr: IpAddr, slot: OwnedSemaphorePermit) -> Option<Held> {
        let mut map = self.per_address.lock().ok()?;
        let n = map.entry(addr).or_insert(0);
        if self.limits.per_address.is_some_and(|max| *n >= max) {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::warn!(listener = self.name, %addr, refused, "too many connections from one address; closing");
            }
            return None;
        }
        *n += 1;
        Some(Held {
            _slot: slot,
            addr,
            per_address: self.per_address.clone(),
        })
    }
}

/// Serves `app` on `listener` within `gate`'s limits until `stop`; then stops accepting,
/// lets open requests finish and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = gate.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(gate.name, &e).await;
                    continue;
                }
            },
        };
        let Some(held) = gate.admit(peer.ip(), slot) else {
            // A best-effort answer (never waited for), then the descriptor is free again.
            let _ = stream.try_write(TOO_MANY);
            drop(stream);
            continue;
        };
        connections.spawn(connection(stream, peer, app.clone(), held, stop.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// A failed `accept`: a vanished client is nothing; running out of descriptors (or memory)
/// is logged and waited out, instead of retried in a busy loop.
async fn accept_failed(name: &str, e: &std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    if LOGGED.fetch_add(1, Ordering::Relaxed).is_power_of_two() {
        tracing::error!(listener = name, error = %e, "accept failed; waiting before the next");
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    held: Held,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        tower_service::Service::call(&mut app, req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    // With upgrades: the live view's WebSockets (console::live).
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "console connection ended");
    }
    drop(held);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_leave_most_descriptors_to_the_rest() {
        assert_eq!(Limits::for_fd_limit(1024, None).max_connections, 128);
        assert_eq!(Limits::for_fd_limit(1 << 20, None).max_connections, 1024);
        assert_eq!(Limits::for_fd_limit(20, None).max_connections, 16);
        assert_eq!(Limits::for_fd_limit(u64::MAX, None).max_connections, 1024);
    }

    #[tokio::test]
    async fn one_address_gets_its_share_and_no_more() {
        let gate = Gate::new(
            "test",
            Limits {
                max_connections: 10,
                per_address: Some(2),
            },
        );
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let slot = || gate.slots.clone().try_acquire_owned().unwrap();
        let first = gate.admit(a, slot()).unwrap();
        let _second = gate.admit(a, slot()).unwrap();
        assert!(gate.admit(a, slot()).is_none());
        assert_eq!(gate.refused(), 1);
        assert!(gate.admit(b, slot()).is_some(), "another address");
        drop(first);
        assert!(gate.admit(a, slot()).is_some(), "a place freed");
        assert_eq!(
            gate.slots.available_permits(),
            10 - 1,
            "only the connection still open holds a slot"
        );
    }
}
