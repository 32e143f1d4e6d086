//! The broker's front: the only thing sensors on the network talk to.
//!
//! rumqttd 0.20 cannot be made safe on a hostile LAN by configuration: it performs the TLS
//! handshake inside its accept loop without a timeout (one idle socket on the TLS port
//! blocks every TLS sensor), spins and logs on `EMFILE`, shares one connection limit between
//! everyone, and has no authorisation hook. The gateway therefore never exposes rumqttd:
//!
//! ```text
//! sensors ──TCP / TLS──▶ front (this module) ──loopback TCP, internal login──▶ rumqttd
//!                         accept, TLS, CONNECT,                                 listeners
//!                         logins, slots, ACLs,                                  (127.0.0.1)
//!                         retained budget
//! ```
//!
//! # Accepting
//!
//! - Each public listener's accept loop only accepts: TLS handshakes, CONNECT reads and
//!   everything after run in a task per connection, concurrently.
//! - An accept error (e.g. `EMFILE`: out of file descriptors) backs off from 10 ms up to
//!   1 s, logs once when the trouble starts and once when accepting works again.
//! - A connection has [`CONNECT_TIMEOUT`] from accept to a complete CONNECT (TLS handshake
//!   included); then it is closed. At most [`MAX_PENDING`] connections may be at that stage:
//!   a new one evicts the oldest, so idle sockets cannot keep a sensor out.
//! - Open connections (each costs three descriptors: client, front→rumqttd, rumqttd's end)
//!   are kept within a budget taken from `RLIMIT_NOFILE` at start, so rumqttd's own accept
//!   loop (which still spins on `EMFILE`) never runs out of descriptors because of sensors.
//!
//! # CONNECT
//!
//! The login is checked here ([`super::acl::Logins`]): a refused one gets a CONNACK with a refusal code
//! and the connection is closed. The client then needs a slot: sensors and other clients
//! share `max_connections`, each login at most its [`Grants::max_connections`], and
//! `reserved` more are kept for the gateway's own clients, which nothing else can take. The
//! will topic must be one the client may publish on. The CONNECT is then re-encoded with
//! rumqttd's own codec for rumqttd: the internal login replaces the client's (rumqttd accepts
//! no other, so a local process cannot bypass the front on the loopback port), the client id
//! is prefixed with the login (a device cannot take over another login's session by reusing
//! its client id), and MQTT 5 topic aliases from the broker are switched off (every
//! delivery carries its topic, so it can be checked).
//!
//! # After CONNECT
//!
//! Packets are framed with rumqttd's codec (`rumqttd::protocol::v4` / `v5`) in both
//! directions and forwarded unchanged unless a rule applies ([`super::acl`]):
//!
//! - PUBLISH on a topic the client may not publish on: dropped, and acknowledged (PUBACK /
//!   PUBREC, "not authorized" in MQTT 5) so the client does not retry it forever.
//! - SUBSCRIBE: filters that can match nothing the client may read are refused in the
//!   SUBACK (0x80, 0x87 in MQTT 5); the others go to rumqttd.
//! - Deliveries (PUBLISH from rumqttd, retained ones included) on a topic the client may not
//!   read are dropped and acknowledged to rumqttd in the client's place.
//! - A retained PUBLISH (or will) from a client other than the gateway is stored only while
//!   the clients' retained messages stay within `max_retained_messages` and
//!   `max_retained_bytes` (topic plus payload); beyond that it is delivered without the
//!   retain flag, so memory stays bounded.
//!
//! Every refusal is counted ([`FrontSnapshot`]) and logged for the first few and then every
//! hundredth of its kind, never once per packet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Login, Packet, Protocol, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, SubAck, SubscribeReasonCode,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::acl::{AccessSwitch, Grants, LoginRefusal, Principal};
use super::gate::{CommitGate, HOLD_MAX};

/// Time from accept to a complete CONNECT (TLS handshake included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections at most between accept and CONNECT; a new one evicts the oldest.
pub const MAX_PENDING: usize = 256;
/// First and longest pause of an accept loop after an accept error.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// Descriptors left for the rest of the gateway (database, cameras, console, …).
const FD_HEADROOM: usize = 64;
/// Descriptors one bridged connection costs in this process.
const FDS_PER_CONNECTION: usize = 3;
/// Packets queued from one direction of a connection to the other (acknowledgements the
/// front writes itself); rumqttd's and the clients' in-flight windows keep it far lower.
const SIDE_CHANNEL: usize = 1024;
/// MQTT 5 topic aliases remembered per connection.
const MAX_TOPIC_ALIASES: usize = 256;
/// Characters of an untrusted topic shown in a log line.
const LOGGED_TOPIC_CHARS: usize = 120;

/// Why the front could not start, or why one connection ended.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("MQTT: {0}")]
    Protocol(String),
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("the other side of the connection is gone")]
    Closed,
    #[error("MQTT front thread: {0}")]
    Thread(String),
}

impl From<rumqttd::protocol::Error> for FrontError {
    fn from(e: rumqttd::protocol::Error) -> Self {
        FrontError::Protocol(e.to_string())
    }
}

/// The MQTT version a listener speaks (rumqttd serves each on a listener of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    V4,
    V5,
}

impl Dialect {
    /// Where the first complete packet in `buf` is (`None`: more bytes needed, `need` set).
    /// MQTT 3.1.1 and 5 share the fixed header, so rumqttd's v4 framing serves both.
    fn frame(self, buf: &[u8], max: usize, need: &mut usize) -> Result<Option<Frame>, FrontError> {
        match rumqttd::protocol::v4::check(buf.iter(), max) {
            Ok(h) => Ok(Some(Frame {
                header_len: h.fixed_header_len,
                len: h.frame_length(),
            })),
            Err(rumqttd::protocol::Error::InsufficientBytes(n)) => {
                *need = n;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn decode(self, frame: &[u8], max: usize) -> Result<Packet, FrontError> {
        let mut bytes = BytesMut::from(frame);
        Ok(match self {
            Dialect::V4 => V4.read_mut(&mut bytes, max)?,
            Dialect::V5 => V5.read_mut(&mut bytes, max)?,
        })
    }

    fn encode(self, packet: Packet) -> Result<Bytes, FrontError> {
        let mut bytes = BytesMut::new();
        match self {
            Dialect::V4 => V4.write(packet, &mut bytes)?,
            Dialect::V5 => V5.write(packet, &mut bytes)?,
        };
        Ok(bytes.freeze())
    }

    /// A CONNACK refusing the connection, with a code this MQTT version has.
    fn refusal(self, why: Refusal) -> Packet {
        let code = match (self, why) {
            (_, Refusal::Login(LoginRefusal::Wrong)) => ConnectReturnCode::BadUserNamePassword,
            (_, Refusal::Login(LoginRefusal::Missing)) | (_, Refusal::Will) => {
                ConnectReturnCode::NotAuthorized
            }
            (Dialect::V4, Refusal::Busy) => ConnectReturnCode::ServiceUnavailable,
            (Dialect::V5, Refusal::Busy) => ConnectReturnCode::ServerBusy,
        };
        let ack = ConnAck {
            session_present: false,
            code,
        };
        Packet::ConnAck(ack, None)
    }

    fn subscribe_refused(self) -> SubscribeReasonCode {
        match self {
            Dialect::V4 => SubscribeReasonCode::Failure,
            Dialect::V5 => SubscribeReasonCode::NotAuthorized,
        }
    }
}

/// Where one packet sits at the start of a buffer.
#[derive(Debug, Clone, Copy)]
struct Frame {
    header_len: usize,
    len: usize,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Login(LoginRefusal),
    Will,
    Busy,
}

/// Counters of the front; see [`FrontSnapshot`] for their meaning.
#[derive(Debug, Default)]
pub struct FrontStats {
    accepted: AtomicU64,
    accept_errors: AtomicU64,
    tls_failed: AtomicU64,
    connect_timeouts: AtomicU64,
    evicted: AtomicU64,
    over_budget: AtomicU64,
    refused_login: AtomicU64,
    refused_will: AtomicU64,
    refused_busy: AtomicU64,
    denied_publish: AtomicU64,
    denied_subscribe: AtomicU64,
    denied_delivery: AtomicU64,
    retained_capped: AtomicU64,
    protocol_errors: AtomicU64,
    acks_held: AtomicU64,
    acks_released_uncommitted: AtomicU64,
}

/// What the front has refused so far (since start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FrontSnapshot {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Failed accepts (e.g. out of file descriptors), each followed by a back-off.
    pub accept_errors: u64,
    /// TLS handshakes that failed.
    pub tls_failed: u64,
    /// Connections closed for not sending a CONNECT within [`CONNECT_TIMEOUT`].
    pub connect_timeouts: u64,
    /// Connections still without CONNECT closed to make room for a new one.
    pub evicted: u64,
    /// Connections closed at once because the descriptor budget was spent.
    pub over_budget: u64,
    /// CONNECTs refused for their login.
    pub refused_login: u64,
    /// CONNECTs refused for a will on a topic the client may not publish on.
    pub refused_will: u64,
    /// CONNECTs refused for want of a free connection slot.
    pub refused_busy: u64,
    /// PUBLISHes dropped by the access rules.
    pub denied_publish: u64,
    /// SUBSCRIBE filters refused by the access rules.
    pub denied_subscribe: u64,
    /// Deliveries withheld by the access rules.
    pub denied_delivery: u64,
    /// Retained PUBLISHes (or wills) stored without retain: the retained budget was spent.
    pub retained_capped: u64,
    /// Connections closed for malformed MQTT.
    pub protocol_errors: u64,
    /// PUBACKs (PUBRECs) that waited for their message's commit ([`super::gate`]).
    pub acks_held: u64,
    /// Of those, released after [`HOLD_MAX`] without a commit (alarm path broken or slow).
    pub acks_released_uncommitted: u64,
}

impl FrontStats {
    /// The counters now.
    pub fn snapshot(&self) -> FrontSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FrontSnapshot {
            accepted: get(&self.accepted),
            accept_errors: get(&self.accept_errors),
            tls_failed: get(&self.tls_failed),
            connect_timeouts: get(&self.connect_timeouts),
            evicted: get(&self.evicted),
            over_budget: get(&self.over_budget),
            refused_login: get(&self.refused_login),
            refused_will: get(&self.refused_will),
            refused_busy: get(&self.refused_busy),
            denied_publish: get(&self.denied_publish),
            denied_subscribe: get(&self.denied_subscribe),
            denied_delivery: get(&self.denied_delivery),
            retained_capped: get(&self.retained_capped),
            protocol_errors: get(&self.protocol_errors),
            acks_held: get(&self.acks_held),
            acks_released_uncommitted: get(&self.acks_released_uncommitted),
        }
    }
}

/// Counts one event; `Some(count)` when this one is worth a log line (the first five, then
/// every hundredth), so a flood of refusals cannot flood the log.
fn count(counter: &AtomicU64) -> Option<u64> {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    (n <= 5 || n.is_multiple_of(100)).then_some(n)
}

/// An untrusted topic, shortened for a log line.
fn shown(topic: &str) -> String {
    topic.chars().take(LOGGED_TOPIC_CHARS).collect()
}

/// What the front enforces; see the [module docs](self).
#[derive(Debug)]
pub struct FrontSettings {
    /// Logins and topic rules; a config reload replaces them (see [`AccessSwitch`]).
    pub access: Arc<AccessSwitch>,
    /// The gateway's login, also the only one rumqttd accepts.
    pub internal: (String, String),
    /// Connections of clients other than the gateway's own.
    pub max_connections: usize,
    /// Further connections only the gateway's own clients may use.
    pub reserved: usize,
    /// Largest MQTT packet from a client (whole packet body).
    pub max_packet_bytes: usize,
    /// Retained messages clients other than the gateway may have stored at once.
    pub max_retained_messages: usize,
    /// Bytes (topic plus payload) of those retained messages.
    pub max_retained_bytes: usize,
    /// PUBACKs for publishes into these logs wait for their commit ([`super::gate`]).
    pub commit_gate: Option<Arc<CommitGate>>,
}

/// One public listener of the front.
pub struct FrontListener {
    /// For logs (`MQTT 3.1.1`, `MQTT 5`, `MQTT over TLS`).
    pub label: &'static str,
    /// Bound already (so its port is known); served from the front's thread.
    pub listener: std::net::TcpListener,
    /// The rumqttd listener on loopback its clients are forwarded to.
    pub backend: SocketAddr,
    pub dialect: Dialect,
    /// Terminate TLS with this server configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The running front: one thread (`mqtt-front`) serving every public listener.
pub struct Front {
    stats: Arc<FrontStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").finish_non_exhaustive()
    }
}

impl Front {
    /// Starts serving `listeners` on a thread of its own; returns once they are served.
    pub fn start(
        settings: FrontSettings,
        listeners: Vec<FrontListener>,
    ) -> Result<Front, FrontError> {
        let shared = Arc::new(Shared::new(settings));
        let stats = shared.stats.clone();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), FrontError>>(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("mqtt-front".to_owned())
            .spawn(move || serve(shared, listeners, ready_tx, stop_rx))
            .map_err(FrontError::Io)?;
        let mut front = Front {
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(front),
            Ok(Err(e)) => {
                front.stop();
                Err(e)
            }
            Err(_) => {
                front.stop();
                Err(FrontError::Thread("exited before serving".to_owned()))
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> FrontSnapshot {
        self.stats.snapshot()
    }

    /// The live counters, for `status.json`.
    pub fn counters(&self) -> Arc<FrontStats> {
        self.stats.clone()
    }

    /// Closes the listeners and every connection, and joins the thread.
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("MQTT front thread panicked");
            }
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Body of the front's thread.
fn serve(
    shared: Arc<Shared>,
    listeners: Vec<FrontListener>,
    ready: std_mpsc::SyncSender<Result<(), FrontError>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(FrontError::Thread(format!("tokio runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        for l in listeners {
            let listener = match l
                .listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(l.listener))
            {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = ready.send(Err(FrontError::Io(e)));
                    return;
                }
            };
            let info = Arc::new(ListenerInfo {
                label: l.label,
                backend: l.backend,
                dialect: l.dialect,
                tls: l.tls.map(tokio_rustls::TlsAcceptor::from),
            });
            let shared = shared.clone();
            let stats = shared.stats.clone();
            tokio::spawn(accept_loop(listener, l.label, stats, move |tcp, peer| {
                tokio::spawn(handle(shared.clone(), info.clone(), tcp, peer));
            }));
        }
        if ready.send(Ok(())).is_err() {
            return;
        }
        let _ = stop.await;
    });
    // Dropping the runtime closes the listening sockets and every connection.
}

/// Accepts connections for ever, handing each to `on_accept`; backs off on errors (see the
/// [module docs](self)).
pub async fn accept_loop(
    listener: TcpListener,
    label: &'static str,
    stats: Arc<FrontStats>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    let mut failures: u64 = 0;
    let mut pause = ACCEPT_BACKOFF.0;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if failures > 0 {
                    tracing::info!(
                        listener = label,
                        failures,
                        "MQTT listener accepting connections again"
                    );
                    failures = 0;
                    pause = ACCEPT_BACKOFF.0;
                }
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                on_accept(tcp, peer);
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if failures == 0 {
                    let hint = if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE)
                    {
                        "out of file descriptors"
                    } else {
                        "accept failed"
                    };
                    tracing::warn!(listener = label, error = %e, "MQTT listener: {hint}; backing off (logged once until it recovers)");
                }
                failures += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

/// A listener's part of a connection's context.
struct ListenerInfo {
    label: &'static str,
    backend: SocketAddr,
    dialect: Dialect,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// State shared by every connection of the front.
struct Shared {
    settings: FrontSettings,
    stats: Arc<FrontStats>,
    /// Connection slots; a std mutex held for a few instructions, never across an await.
    slots: Mutex<Slots>,
    /// Connections between accept and CONNECT, oldest first (evicted first).
    pending: Mutex<Pending>,
    /// Retained messages stored on behalf of clients other than the gateway.
    retained: Mutex<RetainedBudget>,
    /// Connections open in the front now, and the most it may hold (descriptor budget).
    open: AtomicUsize,
    fd_budget: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is counters only: a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn new(settings: FrontSettings) -> Shared {
        let retained =
            RetainedBudget::new(settings.max_retained_messages, settings.max_retained_bytes);
        Shared {
            settings,
            stats: Arc::new(FrontStats::default()),
            slots: Mutex::new(Slots::default()),
            pending: Mutex::new(Pending::default()),
            retained: Mutex::new(retained),
            open: AtomicUsize::new(0),
            fd_budget: fd_budget(),
        }
    }
}

/// How many connections the front may hold open: what `RLIMIT_NOFILE` leaves after the
/// descriptors open now and [`FD_HEADROOM`], three per connection. Raises the soft limit to
/// the hard one first.
fn fd_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    let open_now = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
    (soft.saturating_sub(open_now + FD_HEADROOM) / FDS_PER_CONNECTION).max(8)
}

/// Held while a connection is open in the front.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections waiting for their CONNECT.
#[derive(Default)]
struct Pending {
    next_id: u64,
    queue: VecDeque<(u64, CancellationToken)>,
}

/// A connection's place in [`Pending`]; leaving it (drop) removes it.
struct PendingTicket {
    shared: Arc<Shared>,
    id: u64,
    token: CancellationToken,
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        if let Some(i) = pending.queue.iter().position(|(id, _)| *id == self.id) {
            pending.queue.remove(i);
        }
    }
}

fn register_pending(shared: &Arc<Shared>) -> PendingTicket {
    let token = CancellationToken::new();
    let mut pending = lock(&shared.pending);
    if pending.queue.len() >= MAX_PENDING {
        if let Some((_, oldest)) = pending.queue.pop_front() {
            oldest.cancel();
        }
    }
    let id = pending.next_id;
    pending.next_id += 1;
    pending.queue.push_back((id, token.clone()));
    PendingTicket {
        shared: shared.clone(),
        id,
        token,
    }
}

/// Evicts the oldest connection still waiting for its CONNECT, if any.
fn evict_oldest_pending(shared: &Shared) {
    if let Some((_, oldest)) = lock(&shared.pending).queue.pop_front() {
        oldest.cancel();
    }
}

/// Connection slots in use.
#[derive(Default)]
struct Slots {
    /// Connections of clients other than the gateway.
    others: usize,
    /// All connections.
    total: usize,
    per_principal: HashMap<Principal, usize>,
}

/// A connection slot, released on drop.
struct Slot {
    shared: Arc<Shared>,
    principal: Principal,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = lock(&self.shared.slots);
        slots.total = slots.total.saturating_sub(1);
        if self.principal != Principal::Gateway {
            slots.others = slots.others.saturating_sub(1);
        }
        if let Some(n) = slots.per_principal.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.per_principal.remove(&self.principal);
            }
        }
    }
}

/// A slot for `principal`, if one is free: the gateway may use every slot (the reserved
/// ones only it); everyone else shares `max_connections`, each within its own limit.
fn acquire_slot(
    shared: &Arc<Shared>,
    principal: &Principal,
    grants: Option<&Grants>,
) -> Option<Slot> {
    let s = &shared.settings;
    let mut slots = lock(&shared.slots);
    if slots.total >= s.max_connections.saturating_add(s.reserved) {
        return None;
    }
    if let Some(g) = grants {
        let mine = slots.per_principal.get(principal).copied().unwrap_or(0);
        if slots.others >= s.max_connections || mine >= g.max_connections {
            return None;
        }
        slots.others += 1;
    }
    slots.total += 1;
    *slots.per_principal.entry(principal.clone()).or_insert(0) += 1;
    Some(Slot {
        shared: shared.clone(),
        principal: principal.clone(),
    })
}

/// Retained messages stored for clients other than the gateway: topic → bytes.
struct RetainedBudget {
    topics: HashMap<String, usize>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

impl RetainedBudget {
    fn new(max_messages: usize, max_bytes: usize) -> Self {
        RetainedBudget {
            topics: HashMap::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// Whether a retained message of `payload_len` bytes on `topic` may be stored (an empty
    /// payload deletes the retained message, and is always admitted).
    fn admit(&mut self, topic: &str, payload_len: usize) -> bool {
        let old = self.topics.get(topic).copied();
        if payload_len == 0 {
            self.bytes -= old.unwrap_or(0);
            self.topics.remove(topic);
            return true;
        }
        let size = topic.len() + payload_len;
        let bytes = self.bytes - old.unwrap_or(0) + size;
        let messages = self.topics.len() + usize::from(old.is_none());
        if bytes > self.max_bytes || messages > self.max_messages {
            return false;
        }
        self.bytes = bytes;
        self.topics.insert(topic.to_owned(), size);
        true
    }
}

/// Anything a client connection can be: TCP or TLS over TCP.
trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// One accepted connection, from accept to close.
async fn handle(shared: Arc<Shared>, info: Arc<ListenerInfo>, tcp: TcpStream, peer: SocketAddr) {
    if shared.open.fetch_add(1, Ordering::Relaxed) >= shared.fd_budget {
        let _open = OpenGuard(shared.clone());
        evict_oldest_pending(&shared);
        if let Some(n) = count(&shared.stats.over_budget) {
            tracing::warn!(listener = info.label, %peer, count = n, budget = shared.fd_budget,
                "MQTT connection closed at once: the front's descriptor budget is spent");
        }
        return;
    }
    let _open = OpenGuard(shared.clone());
    let ticket = register_pending(&shared);
    let token = ticket.token.clone();
    let opened = tokio::select! {
        _ = token.cancelled() => {
            if let Some(n) = count(&shared.stats.evicted) {
                tracing::info!(listener = info.label, %peer, count = n,
                    "MQTT connection without CONNECT closed to make room for a new one");
            }
            return;
        }
        r = tokio::time::timeout(CONNECT_TIMEOUT, open(&shared, &info, tcp)) => r,
    };
    drop(ticket);
    match opened {
        Ok(Ok((io, buf, connect))) => {
            if let Err(e) = session(&shared, &info, io, buf, connect, peer).await {
                ended(&shared, &info, peer, &e);
            }
        }
        Ok(Err(e)) => ended(&shared, &info, peer, &e),
        Err(_) => {
            if let Some(n) = count(&shared.stats.connect_timeouts) {
                tracing::info!(listener = info.label, %peer, count = n,
                    "MQTT connection closed: no CONNECT within {} s", CONNECT_TIMEOUT.as_secs());
            }
        }
    }
}

/// Counts and logs (rate-limited) why a connection ended, if that is worth noting.
fn ended(shared: &Shared, info: &ListenerInfo, peer: SocketAddr, e: &FrontError) {
    let counter = match e {
        FrontError::Tls(_) => &shared.stats.tls_failed,
        FrontError::Protocol(_) | FrontError::NotConnect => &shared.stats.protocol_errors,
        _ => {
            tracing::debug!(listener = info.label, %peer, error = %e, "MQTT connection ended");
            return;
        }
    };
    if let Some(n) = count(counter) {
        tracing::info!(listener = info.label, %peer, error = %e, count = n, "MQTT connection closed");
    }
}

/// TLS handshake (if any) and the CONNECT: returns the stream, what was read after the
/// CONNECT, and the CONNECT.
async fn open(
    shared: &Shared,
    info: &ListenerInfo,
    tcp: TcpStream,
) -> Result<(Box<dyn ClientIo>, BytesMut, Packet), FrontError> {
    tcp.set_nodelay(true)?;
    let mut io: Box<dyn ClientIo> = match &info.tls {
        Some(acceptor) => Box::new(acceptor.accept(tcp).await.map_err(|e| {
            // A peer that connects and leaves (a port scan, the start-up probe) is no failure.
            if e.kind() == io::ErrorKind::UnexpectedEof {
                FrontError::Closed
            } else {
                FrontError::Tls(e)
            }
        })?),
        None => Box::new(tcp),
    };
    let mut buf = BytesMut::with_capacity(512);
    let max = shared.settings.max_packet_bytes;
    let frame = loop {
        if buf.first().is_some_and(|b| b >> 4 != 1) {
            return Err(FrontError::NotConnect);
        }
        let mut need = 1;
        if let Some(frame) = info.dialect.frame(&buf, max, &mut need)? {
            break frame;
        }
        buf.reserve(need);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(FrontError::Closed);
        }
    };
    let raw = buf.split_to(frame.len);
    let packet = info.dialect.decode(&raw, max)?;
    if !matches!(packet, Packet::Connect(..)) {
        return Err(FrontError::NotConnect);
    }
    Ok((io, buf, packet))
}

/// From a CONNECT to the end of the connection: login, will, slot, then the bridge.
async fn session(
    shared: &Arc<Shared>,
    info: &ListenerInfo,
    mut io: Box<dyn ClientIo>,
    buf: BytesMut,
    connect: Packet,
    peer: SocketAddr,
) -> Result<(), FrontError> {
    let Packet::Connect(c, props, mut will, will_props, login) = connect else {
        return Err(FrontError::NotConnect);
    };
    let presented = login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_str()));
    let access = shared.settings.access.current();
    let principal = match access.logins.authenticate(presented) {
        Ok(p) => p,
        Err(why) => {
            if let Some(n) = count(&shared.stats.refused_login) {
                let user = login.as_ref().map(|l| shown(&l.username));
                tracing::warn!(listener = info.label, %peer, user, count = n, reason = ?why,
                    "MQTT login refused");
            }
            return refuse(&mut io, info.dialect, Refusal::Login(why)).await;
        }
    };
    let grants = access.rules.grants(&principal).cloned();
    if let Some(w) = will.as_mut() {
        if !will_allowed(shared, info, peer, &principal, grants.as_ref(), w) {
            return refuse(&mut io, info.dialect, Refusal::Will).await;
        }
    }
    let Some(slot) = acquire_slot(shared, &principal, grants.as_ref()) else {
        if let Some(n) = count(&shared.stats.refused_busy) {
            tracing::warn!(listener = info.label, %peer, principal = principal.label(), count = n,
                "MQTT connection refused: no free connection slot for this client");
        }
        return refuse(&mut io, info.dialect, Refusal::Busy).await;
    };
    let mut props = props;
    if let Some(p) = props.as_mut() {
        // No broker topic aliases: every delivery carries its topic, so it can be checked.
        p.topic_alias_max = None;
    }
    let will_log = will_log(shared, will.as_ref());
    let (user, password) = &shared.settings.internal;
    let upstream = Packet::Connect(
        rumqttd::protocol::Connect {
            client_id: backend_client_id(&principal, &c.client_id),
            ..c
        },
        props,
        will,
        will_props,
        Some(Login {
            username: user.clone(),
            password: password.clone(),
        }),
    );
    let mut backend = TcpStream::connect(info.backend).await?;
    backend.set_nodelay(true)?;
    backend.write_all(&info.dialect.encode(upstream)?).await?;
    let conn = Conn {
        shared: shared.clone(),
        dialect: info.dialect,
        principal,
        grants,
        masks: Mutex::new(HashMap::new()),
        gated: Mutex::new(HashMap::new()),
        held: Mutex::new(VecDeque::new()),
        will_log,
        disconnected: std::sync::atomic::AtomicBool::new(false),
        _slot: slot,
    };
    let ended = bridge(&conn, io, buf, backend).await;
    conn.count_will();
    ended
}

/// The gated log the client's will would be appended to, if any (see [`super::gate`]).
fn will_log(shared: &Shared, will: Option<&rumqttd::protocol::LastWill>) -> Option<usize> {
    let gate = shared.settings.commit_gate.as_ref()?;
    gate.log_of(std::str::from_utf8(&will?.topic).ok()?)
}

/// Whether the client may leave this will (its topic is one it may publish on); a retained
/// will beyond the clients' retained budget loses its retain flag.
fn will_allowed(
    shared: &Shared,
    info: &ListenerInfo,
    peer: SocketAddr,
    principal: &Principal,
    grants: Option<&Grants>,
    will: &mut rumqttd::protocol::LastWill,
) -> bool {
    let Some(grants) = grants else {
        return true;
    };
    let topic = String::from_utf8_lossy(&will.topic).into_owned();
    if !grants.may_publish(&topic) {
        if let Some(n) = count(&shared.stats.refused_will) {
            tracing::warn!(listener = info.label, %peer, principal = principal.label(),
                topic = shown(&topic), count = n,
                "MQTT will on a topic the client may not publish on; CONNECT refused");
        }
        return false;
    }
    if will.retain && !retain_admitted(shared, principal, &topic, will.message.len()) {
        will.retain = false;
    }
    true
}

/// Sends a refusing CONNACK and ends the connection.
async fn refuse(
    io: &mut Box<dyn ClientIo>,
    dialect: Dialect,
    why: Refusal,
) -> Result<(), FrontError> {
    let ack = dialect.encode(dialect.refusal(why))?;
    io.write_all(&ack).await?;
    io.flush().await?;
    let _ = io.shutdown().await;
    Ok(())
}

/// The client id rumqttd sees: the gateway's own unchanged (already unguessable), others
/// prefixed with their login, so that no client can reuse another login's client id (rumqttd
/// drops the older connection of a reused id). An empty id stays empty: rumqttd assigns one.
fn backend_client_id(principal: &Principal, id: &str) -> String {
    if id.is_empty() {
        return String::new();
    }
    match principal {
        Principal::Gateway => id.to_owned(),
        Principal::User(user) => format!("u{}:{user}:{id}", user.len()),
        Principal::Anonymous => format!("anon:{id}"),
    }
}

/// Whether a retained message from a client other than the gateway may be stored.
fn retain_admitted(
    shared: &Shared,
    principal: &Principal,
    topic: &str,
    payload_len: usize,
) -> bool {
    if lock(&shared.retained).admit(topic, payload_len) {
        return true;
    }
    if let Some(n) = count(&shared.stats.retained_capped) {
        let (messages, bytes) = (
            shared.settings.max_retained_messages,
            shared.settings.max_retained_bytes,
        );
        tracing::warn!(
            principal = principal.label(),
            topic = shown(topic),
            count = n,
            messages,
            bytes,
            "retained MQTT message delivered but not stored: the clients' retained budget is spent"
        );
    }
    false
}

/// One bridged connection's context.
struct Conn {
    shared: Arc<Shared>,
    dialect: Dialect,
    principal: Principal,
    /// `None` for the gateway's own clients (nothing is checked).
    grants: Option<Grants>,
    /// SUBSCRIBE packet id → which of its filters were granted, until rumqttd's SUBACK.
    /// Written by the client side, read by the rumqttd side; never held across an await.
    masks: Mutex<HashMap<u16, Vec<bool>>>,
    /// Packet id of a QoS 1/2 publish forwarded into a gated log → that log, until rumqttd's
    /// PUBACK (PUBREC). Written by the client side, read by the rumqttd side.
    gated: Mutex<HashMap<u16, usize>>,
    /// Acknowledgements for the client waiting for a commit, in the order rumqttd sent them
    /// (MQTT wants PUBACKs in publish order, so once one waits, all later ones queue too).
    /// Used by the rumqttd side only.
    held: Mutex<VecDeque<Held>>,
    /// The gated log the client's will goes to; rumqttd appends the will there if the
    /// connection ends without a DISCONNECT ([`Conn::disconnected`] stays false).
    will_log: Option<usize>,
    /// The client sent DISCONNECT (its will is not published).
    disconnected: std::sync::atomic::AtomicBool,
    _slot: Slot,
}

/// An acknowledgement for the client, held back.
struct Held {
    raw: Bytes,
    /// The log and the committed mark it waits for; `None`: it only keeps its place.
    wait: Option<(usize, u64)>,
    since: tokio::time::Instant,
}

/// What one packet turns into.
#[derive(Default)]
struct Step {
    forward: Option<Bytes>,
    reply: Option<Bytes>,
}

impl Step {
    fn forward(b: Bytes) -> Step {
        Step {
            forward: Some(b),
            reply: None,
        }
    }
    fn reply(b: Bytes) -> Step {
        Step {
            forward: None,
            reply: Some(b),
        }
    }
}

/// Copies packets both ways until either side closes.
async fn bridge(
    conn: &Conn,
    io: Box<dyn ClientIo>,
    buf: BytesMut,
    backend: TcpStream,
) -> Result<(), FrontError> {
    let (client_rd, client_wr) = tokio::io::split(io);
    let (backend_rd, backend_wr) = backend.into_split();
    let (to_client, for_client) = mpsc::channel::<Bytes>(SIDE_CHANNEL);
    let (to_backend, for_backend) = mpsc::channel::<Bytes>(SIDE_CHANNEL);
    let up = pump(
        conn,
        Side::Client,
        (client_rd, buf),
        backend_wr,
        (to_client, for_backend),
        None,
    );
    let commits = conn
        .shared
        .settings
        .commit_gate
        .as_ref()
        .map(|g| g.subscribe());
    let down = pump(
        conn,
        Side::Backend,
        (backend_rd, BytesMut::new()),
        client_wr,
        (to_backend, for_client),
        commits,
    );
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// Which side a pump reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

/// Per-direction state kept by one pump.
#[derive(Default)]
struct PumpState {
    /// Client side, MQTT 5: topic alias → topic.
    aliases: HashMap<u16, String>,
    /// QoS 2 packet ids the front answered itself (a PUBREL for them gets its PUBCOMP here).
    answered_qos2: HashSet<u16>,
}

/// Reads packets from one side (`rd` and what was already read of it), writes what passes
/// to the other; replies the front makes go back through the first channel (the other pump
/// owns that writer) and the other pump's come in on the second. `commits` (rumqttd side,
/// with a commit gate): wakes held acknowledgements.
async fn pump(
    conn: &Conn,
    side: Side,
    (mut rd, mut buf): (impl AsyncRead + Unpin, BytesMut),
    mut wr: impl AsyncWrite + Unpin,
    (replies, mut from_other): (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>),
    mut commits: Option<watch::Receiver<u64>>,
) -> Result<(), FrontError> {
    let max = match side {
        Side::Client => conn.shared.settings.max_packet_bytes,
        Side::Backend => super::MQTT_MAX_PACKET_BYTES,
    };
    let mut state = PumpState::default();
    loop {
        let mut need = 1;
        while let Some(frame) = conn.dialect.frame(&buf, max, &mut need)? {
            let raw = buf.split_to(frame.len).freeze();
            let step = match side {
                Side::Client => conn.client_packet(&mut state, raw, frame)?,
                Side::Backend => conn.backend_packet(&mut state, raw, frame)?,
            };
            if let Some(b) = step.forward {
                wr.write_all(&b).await?;
                wr.flush().await?;
            }
            if let Some(b) = step.reply {
                replies.send(b).await.map_err(|_| FrontError::Closed)?;
            }
            need = 1;
        }
        if let Some(commits) = commits.as_mut() {
            commits.borrow_and_update();
            conn.release_held(&mut wr).await?;
        }
        let holding = match side {
            Side::Backend => conn.held_since(),
            Side::Client => None,
        };
        buf.reserve(need.max(1024));
        tokio::select! {
            n = rd.read_buf(&mut buf) => if n? == 0 { return Ok(()) },
            Some(b) = from_other.recv() => {
                if holding.is_some() {
                    conn.hold(b, None);
                } else {
                    wr.write_all(&b).await?;
                    wr.flush().await?;
                }
            }
            () = commit_or_deadline(&mut commits, holding), if holding.is_some() => {}
        }
    }
}

/// Returns on the next commit anywhere, or once the oldest held acknowledgement has waited
/// [`HOLD_MAX`].
async fn commit_or_deadline(
    commits: &mut Option<watch::Receiver<u64>>,
    oldest: Option<tokio::time::Instant>,
) {
    let deadline =
        tokio::time::sleep_until(oldest.map_or_else(tokio::time::Instant::now, |t| t + HOLD_MAX));
    match commits {
        Some(rx) => {
            tokio::select! {
                _ = rx.changed() => {}
                () = deadline => {}
            }
        }
        None => deadline.await,
    }
}

/// Packet type (upper nibble of the first byte).
mod kind {
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const CONNECT: u8 = 1;
    pub const DISCONNECT: u8 = 14;
}

/// QoS, packet id (0 for QoS 0) and topic of a PUBLISH, read from the raw packet (rumqttd's
/// `Publish` keeps QoS and packet id private).
fn publish_header(raw: &[u8], frame: Frame) -> Result<(u8, u16, &[u8]), FrontError> {
    let malformed = || FrontError::Protocol("malformed PUBLISH".to_owned());
    let qos = (raw[0] >> 1) & 0b11;
    let body = raw.get(frame.header_len..).ok_or_else(malformed)?;
    let topic_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(malformed)?,
        *body.get(1).ok_or_else(malformed)?,
    ]));
    let topic = body.get(2..2 + topic_len).ok_or_else(malformed)?;
    let pkid = if qos > 0 {
        let id = body
            .get(2 + topic_len..4 + topic_len)
            .ok_or_else(malformed)?;
        u16::from_be_bytes([id[0], id[1]])
    } else {
        0
    };
    Ok((qos, pkid, topic))
}

/// The packet id right after the fixed header (PUBREL, SUBSCRIBE, SUBACK, …).
fn packet_id(raw: &[u8], frame: Frame) -> Option<u16> {
    let id = raw.get(frame.header_len..frame.header_len + 2)?;
    Some(u16::from_be_bytes([id[0], id[1]]))
}

impl Conn {
    fn stats(&self) -> &FrontStats {
        &self.shared.stats
    }

    /// A packet from the client.
    fn client_packet(
        &self,
        st: &mut PumpState,
        raw: Bytes,
        frame: Frame,
    ) -> Result<Step, FrontError> {
        match raw[0] >> 4 {
            kind::PUBLISH => {
                let (step, topic) = self.client_publish(st, raw, frame)?;
                if step.forward.is_some() {
                    self.forwarded(&step, frame, topic.as_deref())?;
                }
                Ok(step)
            }
            kind::SUBSCRIBE if self.grants.is_some() => self.client_subscribe(raw),
            kind::PUBREL => match packet_id(&raw, frame) {
                Some(id) if st.answered_qos2.remove(&id) => {
                    let comp = PubComp {
                        pkid: id,
                        reason: PubCompReason::Success,
                    };
                    Ok(Step::reply(
                        self.dialect.encode(Packet::PubComp(comp, None))?,
                    ))
                }
                _ => Ok(Step::forward(raw)),
            },
            kind::CONNECT => Err(FrontError::Protocol("a second CONNECT".to_owned())),
            kind::DISCONNECT => {
                self.disconnected.store(true, Ordering::Relaxed);
                Ok(Step::forward(raw))
            }
            _ => Ok(Step::forward(raw)),
        }
    }

    /// What becomes of a client's PUBLISH, and its topic with any MQTT 5 alias resolved
    /// (`None` for the gateway's own clients, whose packets are not decoded).
    fn client_publish(
        &self,
        st: &mut PumpState,
        raw: Bytes,
        frame: Frame,
    ) -> Result<(Step, Option<String>), FrontError> {
        // The gateway's own clients are not checked (nor decoded: the hot path of alerts).
        let Some(grants) = &self.grants else {
            return Ok((Step::forward(raw), None));
        };
        let (qos, pkid, _) = publish_header(&raw, frame)?;
        let max = self.shared.settings.max_packet_bytes;
        let Packet::Publish(publish, props) = self.dialect.decode(&raw, max)? else {
            return Err(FrontError::Protocol("malformed PUBLISH".to_owned()));
        };
        let mut topic = std::str::from_utf8(&publish.topic)
            .map_err(|_| FrontError::Protocol("topic is not UTF-8".to_owned()))?
            .to_owned();
        if let Some(alias) = props.as_ref().and_then(|p| p.topic_alias) {
            if topic.is_empty() {
                topic =
                    st.aliases.get(&alias).cloned().ok_or_else(|| {
                        FrontError::Protocol(format!("unknown topic alias {alias}"))
                    })?;
            } else if st.aliases.len() < MAX_TOPIC_ALIASES || st.aliases.contains_key(&alias) {
                st.aliases.insert(alias, topic.clone());
            } else {
                return Err(FrontError::Protocol("too many topic aliases".to_owned()));
            }
        }
        if !grants.may_publish(&topic) {
            return Ok((self.deny_publish(st, &topic, qos, pkid)?, None));
        }
        if publish.retain
            && !retain_admitted(&self.shared, &self.principal, &topic, publish.payload.len())
        {
            let mut cleared = BytesMut::from(&raw[..]);
            cleared[0] &= !1;
            return Ok((Step::forward(cleared.freeze()), Some(topic)));
        }
        Ok((Step::forward(raw), Some(topic)))
    }

    /// A PUBLISH went to rumqttd: counted for its log if gated, its acknowledgement to be
    /// held ([`super::gate`]). `topic`: resolved already, else read from the packet.
    fn forwarded(&self, step: &Step, frame: Frame, topic: Option<&str>) -> Result<(), FrontError> {
        let (Some(gate), Some(raw)) = (&self.shared.settings.commit_gate, &step.forward) else {
            return Ok(());
        };
        let (qos, pkid, raw_topic) = publish_header(raw, frame)?;
        let log = match topic {
            Some(t) => gate.log_of(t),
            None => std::str::from_utf8(raw_topic)
                .ok()
                .and_then(|t| gate.log_of(t)),
        };
        if let Some(log) = log {
            gate.forwarded(log);
            if qos > 0 {
                lock(&self.gated).insert(pkid, log);
            }
        }
        Ok(())
    }

    /// Drops a PUBLISH the client may not make, acknowledging it so it is not retried.
    fn deny_publish(
        &self,
        st: &mut PumpState,
        topic: &str,
        qos: u8,
        pkid: u16,
    ) -> Result<Step, FrontError> {
        if let Some(n) = count(&self.stats().denied_publish) {
            tracing::warn!(
                principal = self.principal.label(),
                topic = shown(topic),
                count = n,
                "MQTT publish refused by the broker's access rules"
            );
        }
        self.answer(st, qos, pkid, false)
    }

    /// The PUBACK (QoS 1) or PUBREC (QoS 2, remembered for its PUBREL) that ends a publish
    /// the front took out of the flow; nothing for QoS 0.
    fn answer(
        &self,
        st: &mut PumpState,
        qos: u8,
        pkid: u16,
        authorized: bool,
    ) -> Result<Step, FrontError> {
        let reply = match qos {
            1 => Packet::PubAck(
                PubAck {
                    pkid,
                    reason: if authorized {
                        PubAckReason::Success
                    } else {
                        PubAckReason::NotAuthorized
                    },
                },
                None,
            ),
            2 => {
                st.answered_qos2.insert(pkid);
                Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: if authorized {
                            PubRecReason::Success
                        } else {
                            PubRecReason::NotAuthorized
                        },
                    },
                    None,
                )
            }
            _ => return Ok(Step::default()),
        };
        Ok(Step::reply(self.dialect.encode(reply)?))
    }

    fn client_subscribe(&self, raw: Bytes) -> Result<Step, FrontError> {
        let Some(grants) = &self.grants else {
            return Ok(Step::forward(raw));
        };
        let max = self.shared.settings.max_packet_bytes;
        let Packet::Subscribe(mut sub, props) = self.dialect.decode(&raw, max)? else {
            return Err(FrontError::Protocol("malformed SUBSCRIBE".to_owned()));
        };
        let mask: Vec<bool> = sub
            .filters
            .iter()
            .map(|f| grants.may_subscribe(&f.path))
            .collect();
        if mask.iter().all(|ok| *ok) {
            return Ok(Step::forward(raw));
        }
        for f in sub.filters.iter().zip(&mask).filter(|(_, ok)| !**ok) {
            if let Some(n) = count(&self.stats().denied_subscribe) {
                tracing::warn!(
                    principal = self.principal.label(),
                    filter = shown(&f.0.path),
                    count = n,
                    "MQTT subscription refused by the broker's access rules"
                );
            }
        }
        if !mask.iter().any(|ok| *ok) {
            let codes = vec![self.dialect.subscribe_refused(); mask.len()];
            let ack = SubAck {
                pkid: sub.pkid,
                return_codes: codes,
            };
            return Ok(Step::reply(self.dialect.encode(Packet::SubAck(ack, None))?));
        }
        let mut granted = mask.iter();
        sub.filters
            .retain(|_| granted.next().copied().unwrap_or(false));
        lock(&self.masks).insert(sub.pkid, mask);
        Ok(Step::forward(
            self.dialect.encode(Packet::Subscribe(sub, props))?,
        ))
    }

    /// The connection is over: rumqttd publishes the client's will into a gated log unless
    /// the client said DISCONNECT, so the front counts it there (see [`super::gate`]).
    fn count_will(&self) {
        if let (Some(gate), Some(log)) = (&self.shared.settings.commit_gate, self.will_log) {
            if !self.disconnected.load(Ordering::Relaxed) {
                gate.forwarded(log);
            }
        }
    }

    /// A packet from rumqttd for the client.
    fn backend_packet(
        &self,
        st: &mut PumpState,
        raw: Bytes,
        frame: Frame,
    ) -> Result<Step, FrontError> {
        match raw[0] >> 4 {
            kind::PUBLISH => match &self.grants {
                None => Ok(Step::forward(raw)),
                Some(grants) => {
                    let (qos, pkid, topic) = publish_header(&raw, frame)?;
                    let topic = String::from_utf8_lossy(topic);
                    if grants.may_read(&topic) {
                        return Ok(Step::forward(raw));
                    }
                    self.withhold(st, &topic, qos, pkid)
                }
            },
            kind::PUBREL => match packet_id(&raw, frame) {
                Some(id) if st.answered_qos2.remove(&id) => {
                    let comp = PubComp {
                        pkid: id,
                        reason: PubCompReason::Success,
                    };
                    Ok(Step::reply(
                        self.dialect.encode(Packet::PubComp(comp, None))?,
                    ))
                }
                _ => Ok(Step::forward(raw)),
            },
            kind::PUBACK | kind::PUBREC => Ok(self.acknowledgement(raw, frame)),
            kind::SUBACK => {
                let mask = packet_id(&raw, frame).and_then(|id| lock(&self.masks).remove(&id));
                match mask {
                    Some(mask) => self.merge_suback(raw, &mask),
                    None => Ok(Step::forward(raw)),
                }
            }
            _ => Ok(Step::forward(raw)),
        }
    }

    /// rumqttd's PUBACK (PUBREC) for the client: passed on, or held until its message is
    /// committed (or behind one that is held).
    fn acknowledgement(&self, raw: Bytes, frame: Frame) -> Step {
        let Some(gate) = &self.shared.settings.commit_gate else {
            return Step::forward(raw);
        };
        let log = packet_id(&raw, frame).and_then(|id| lock(&self.gated).remove(&id));
        let wait = log.map(|log| (log, gate.threshold(log)));
        let queued = !lock(&self.held).is_empty();
        match wait {
            Some((log, mark)) if queued || !gate.is_committed(log, mark) => {
                self.stats().acks_held.fetch_add(1, Ordering::Relaxed);
                self.hold(raw, wait);
                Step::default()
            }
            None if queued => {
                self.hold(raw, None);
                Step::default()
            }
            _ => Step::forward(raw),
        }
    }

    /// Queues an acknowledgement (or anything else for the client that must not pass one).
    fn hold(&self, raw: Bytes, wait: Option<(usize, u64)>) {
        lock(&self.held).push_back(Held {
            raw,
            wait,
            since: tokio::time::Instant::now(),
        });
    }

    /// When the oldest held acknowledgement was queued, if one is.
    fn held_since(&self) -> Option<tokio::time::Instant> {
        lock(&self.held).front().map(|h| h.since)
    }

    /// Writes the held acknowledgements that may go now, in order.
    async fn release_held(&self, wr: &mut (impl AsyncWrite + Unpin)) -> Result<(), FrontError> {
        let ready = self.ready_held();
        for b in &ready {
            wr.write_all(b).await?;
        }
        if !ready.is_empty() {
            wr.flush().await?;
        }
        Ok(())
    }

    /// Takes the held acknowledgements from the front of the queue whose message is
    /// committed, or that waited [`HOLD_MAX`] (counted and logged).
    fn ready_held(&self) -> Vec<Bytes> {
        let Some(gate) = &self.shared.settings.commit_gate else {
            return Vec::new();
        };
        let mut held = lock(&self.held);
        let mut ready = Vec::new();
        while let Some(h) = held.front() {
            let committed = h
                .wait
                .is_none_or(|(log, mark)| gate.is_committed(log, mark));
            if !committed && h.since.elapsed() < HOLD_MAX {
                break;
            }
            if let (false, Some((log, _))) = (committed, h.wait) {
                self.uncommitted_release();
                gate.resync(log);
            }
            ready.extend(held.pop_front().map(|h| h.raw));
        }
        ready
    }

    fn uncommitted_release(&self) {
        if let Some(n) = count(&self.stats().acks_released_uncommitted) {
            tracing::warn!(
                principal = self.principal.label(),
                count = n,
                waited_s = HOLD_MAX.as_secs(),
                "MQTT acknowledgement sent before its message was committed: the alarm path \
                 did not commit it in time"
            );
        }
    }

    /// Drops a delivery the client may not read; acknowledges it to rumqttd in its place.
    fn withhold(
        &self,
        st: &mut PumpState,
        topic: &str,
        qos: u8,
        pkid: u16,
    ) -> Result<Step, FrontError> {
        if let Some(n) = count(&self.stats().denied_delivery) {
            tracing::info!(
                principal = self.principal.label(),
                topic = shown(topic),
                count = n,
                "MQTT delivery withheld by the broker's access rules"
            );
        }
        self.answer(st, qos, pkid, true)
    }

    /// rumqttd's SUBACK for the granted filters, with the refused ones put back in place.
    fn merge_suback(&self, raw: Bytes, mask: &[bool]) -> Result<Step, FrontError> {
        let Packet::SubAck(ack, props) = self.dialect.decode(&raw, super::MQTT_MAX_PACKET_BYTES)?
        else {
            return Err(FrontError::Protocol(
                "malformed SUBACK from rumqttd".to_owned(),
            ));
        };
        let mut codes = ack.return_codes.into_iter();
        let refused = self.dialect.subscribe_refused();
        let return_codes = mask
            .iter()
            .map(|ok| {
                if *ok {
                    codes.next().unwrap_or(refused)
                } else {
                    refused
                }
            })
            .collect();
        let merged = SubAck {
            pkid: ack.pkid,
            return_codes,
        };
        Ok(Step::forward(
            self.dialect.encode(Packet::SubAck(merged, props))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retained_budget_counts_topics_and_bytes_and_frees_on_delete() {
        let mut b = RetainedBudget::new(2, 100);
        assert!(b.admit("a", 40));
        assert!(b.admit("a", 50), "replacing a topic reuses its place");
        assert!(b.admit("b", 10));
        assert!(!b.admit("c", 1), "a third topic is over the count");
        assert!(b.admit("a", 0), "an empty payload deletes");
        assert!(b.admit("c", 1));
        assert!(!b.admit("d", 1));
        assert!(!b.admit("b", 200), "over the bytes");
        assert_eq!(b.bytes, "b".len() + 10 + "c".len() + 1);
    }

    #[test]
    fn client_ids_are_kept_apart_per_login() {
        let user = |u: &str| Principal::User(u.to_owned());
        assert_eq!(
            backend_client_id(&Principal::Gateway, "shouwang-x-1"),
            "shouwang-x-1"
        );
        assert_ne!(
            backend_client_id(&user("a/b"), "c"),
            backend_client_id(&user("a"), "b/c")
        );
        assert_ne!(
            backend_client_id(&Principal::Anonymous, "shouwang-x-1"),
            "shouwang-x-1"
        );
        assert_eq!(backend_client_id(&user("a"), ""), "");
    }

    #[test]
    fn publish_headers_are_read_from_the_raw_packet() {
        // QoS 1, topic "a/b", packet id 7, payload "x".
        let raw = [0x32, 8, 0, 3, b'a', b'/', b'b', 0, 7, b'x'];
        let frame = Dialect::V4.frame(&raw, 1024, &mut 0).unwrap().unwrap();
        let (qos, pkid, topic) = publish_header(&raw, frame).unwrap();
        assert_eq!((qos, pkid, topic), (1, 7, &b"a/b"[..]));
        let truncated = [0x32, 3, 0, 9, b'a'];
        let frame = Dialect::V4
            .frame(&truncated, 1024, &mut 0)
            .unwrap()
            .unwrap();
        assert!(publish_header(&truncated, frame).is_err());
    }

    const EMFILE_CHILD: &str = "SHOUWANG_EMFILE_CHILD";

    #[test]
    fn an_accept_loop_out_of_file_descriptors_backs_off_and_logs_once() {
        if std::env::var_os(EMFILE_CHILD).is_some() {
            emfile_child();
            return;
        }
        // RLIMIT_NOFILE is per process: lower it in a child running only this test.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "broker::front::tests::an_accept_loop_out_of_file_descriptors_backs_off_and_logs_once",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(EMFILE_CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(
            text.contains("1 passed"),
            "the child ran the scenario:\n{text}"
        );
    }

    /// A tracing writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Lowers RLIMIT_NOFILE so that `room` more descriptors can be opened. New descriptors
    /// take the lowest free numbers: the limit is where exactly `room` numbers below it are
    /// free.
    fn limit_descriptors(room: u64) {
        let open: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .collect();
        let (mut free, mut end) = (0, 0);
        while free < room {
            if !open.contains(&end) {
                free += 1;
            }
            end += 1;
        }
        let limit = libc::rlimit {
            rlim_cur: end,
            rlim_max: end,
        };
        // SAFETY: setrlimit reads the struct we pass; this child process is ours.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }

    fn emfile_child() {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // The runtime first: its epoll and wake-up descriptors are needed later.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // Twenty clients wait in the backlog before the loop runs.
            let _clients: Vec<std::net::TcpStream> = (0..20)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            let room = 4;
            limit_descriptors(room);

            let stats = Arc::new(FrontStats::default());
            let held = Arc::new(Mutex::new(Vec::new()));
            let keep = held.clone();
            tokio::spawn(accept_loop(
                listener,
                "test",
                stats.clone(),
                move |tcp, _| {
                    lock(&keep).push(tcp);
                },
            ));
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let accepted = stats.accepted.load(Ordering::Relaxed);
            let errors = stats.accept_errors.load(Ordering::Relaxed);
            // (+1: the directory listing's own descriptor was open while counting.)
            assert!(
                accepted <= room + 1,
                "accepted {accepted} with room for {room}"
            );
            assert!(
                (1..=12).contains(&errors),
                "{errors} failed accepts in 1.5 s: a back-off from 10 ms to 1 s makes 7 or 8"
            );
            let text = String::from_utf8_lossy(&lock(&logs.0)).into_owned();
            assert_eq!(
                text.matches("out of file descriptors").count(),
                1,
                "logged once:\n{text}"
            );

            // Descriptors come back: the loop accepts the rest and says so once.
            lock(&held).clear();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while stats.accepted.load(Ordering::Relaxed) <= accepted {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the loop never accepted again"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let text = String::from_utf8_lossy(&lock(&logs.0)).into_owned();
            assert!(text.contains("accepting connections again"), "{text}");
        });
    }
}
