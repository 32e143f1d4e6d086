//! The embedded MQTT broker: sensors connect to the gateway itself, so installers need no
//! extra software.
//!
//! [`EmbeddedBroker::start`] runs [rumqttd] 0.20 inside the gateway process behind a
//! [front](front) of its own, and returns once every listener really accepts MQTT
//! connections, with the addresses actually bound.
//!
//! # What it gives
//!
//! - An MQTT 3.1.1 listener ([`BrokerSettings::bind`]), optionally an MQTT 5 listener
//!   ([`BrokerSettings::v5_bind`]) and an MQTT 3.1.1-over-TLS listener ([`BrokerSettings::tls`]),
//!   all sharing one router: a message published on any of them reaches subscribers on all.
//! - QoS 0, 1 and 2, last wills, retained messages, persistent sessions (in memory).
//! - Every public listener is the [front](front)'s, not rumqttd's: TLS handshakes and
//!   CONNECTs run concurrently under a timeout, accept errors back off, idle connections
//!   cannot crowd sensors out, and rumqttd itself listens on loopback only, accepting only
//!   the gateway's internal login.
//! - Username/password authentication from [`BrokerSettings::credentials`] (compared in
//!   constant time by the front); a refused login gets a CONNACK with a refusal code. Clients
//!   without a login are accepted when no credentials are configured or
//!   [`BrokerSettings::allow_anonymous`] is set. The gateway's own clients log in with an
//!   internal user generated at each start ([`EmbeddedBroker::internal_credentials`]; ingest
//!   reads the router in-process and needs none).
//! - **Topic access rules** ([`acl`], [`BrokerSettings::access`]): who may publish and read
//!   which topics, enforced by the front on every PUBLISH, SUBSCRIBE and delivery.
//! - A packet size limit, a connection limit with slots only the gateway's own clients may
//!   use, per-login connection limits, and a budget for retained messages from clients
//!   ([`BrokerSettings::max_payload_bytes`], [`BrokerSettings::max_connections`],
//!   [`RESERVED_CONNECTIONS`], [`BrokerSettings::max_retained_messages`]).
//!
//! # What it does NOT give
//!
//! - **No persistence**: retained messages, persistent sessions and queued QoS 1 messages
//!   live in memory and vanish when the process exits. Retained alert/state messages must be
//!   republished by the gateway after a restart; sensors must resubscribe.
//! - No client certificate authentication (the TLS listener authenticates the server only;
//!   clients still log in with username/password).
//! - Bounded in-memory logs, sized as buffers, not stores (see "Memory" below). A subscriber
//!   that falls further behind than its filter's log silently skips the oldest messages
//!   (rumqttd logs a warning, "cursor jumped"). Everyone who subscribes one filter shares its
//!   log, so a wildcard subscriber can lose a quiet device's message to a noisy one: the
//!   gateway's own ingest therefore subscribes every device topic exactly, through
//!   in-process links (see [`local`]).
//! - A client beyond the connection limit gets a CONNACK "server unavailable" (MQTT 5:
//!   "server busy"); the [`RESERVED_CONNECTIONS`] on top of it are the gateway's alone.
//!
//! # Memory
//!
//! rumqttd keeps one commit log per subscription filter: a queue of segments. A segment takes
//! packets while it holds fewer bytes than its size (so it overflows by at most one packet),
//! and when the newest is full a new one is started and, past the segment count, the oldest
//! dropped. Nothing else ever drops a message: a log fills to its size and stays full. A log
//! sized for history (rumqttd's examples use 100 × 100 MiB; this module once used 16 × 1 MiB,
//! about 47 MB per filter with ~175-byte sensor messages) therefore makes memory grow with
//! every message until every log is full: devices × gigabytes.
//!
//! Every log here is sized for a burst, because its readers are in-process and read at once:
//!
//! - **Device logs**, [`DEVICE_LOG_SEGMENT_COUNT`] × [`DEVICE_LOG_SEGMENT_BYTES`]: the logs
//!   of the exact topics an in-process subscriber names (ingest: every device topic). A
//!   device log keeps the newest message plus at least one full segment (5–12 typical sensor
//!   messages) for ingest to read; a device that sends more than that in one go, faster than
//!   ingest reads, loses its own oldest ones, and ingest counts them (`broker_overrun`). The
//!   newest message, the device's current state, is always kept. Worst case per log:
//!   2 × (1 KiB + the packet limit).
//! - **Shared logs**, [`LOG_SEGMENT_COUNT`] × [`LOG_SEGMENT_BYTES`] (segments raised to the
//!   packet limit): every other filter — ingest's `#` watch link, consumers of `shouwang/…`
//!   alerts, `residents/…` notices, `zigbee2mqtt/#`. Few, with room for a burst of a few
//!   hundred alerts.
//!
//! rumqttd picks a filter's log size by matching the filter against override patterns one by
//! one, so the exact device topics as patterns would cost devices² matches at start-up. The
//! patterns are instead the *shapes* of the in-process subscribers' exact topics: the first
//! level kept, every other level `+`, a final `#` kept (`sensors/+/+` for `sensors/{id}/+`,
//! `zigbee2mqtt/+/#` for `zigbee2mqtt/{name}/#`, `zigbee2mqtt/+` for an exact topic).
//! Filters of the same shape get a device log too: actuators' command topics
//! (`sensors/ID/set`), and a network client subscribing e.g. `sensors/+/state`, which then
//! shares one small log for all devices; `sensors/#` or `zigbee2mqtt/#` match no shape and
//! get a shared log.
//!
//! A message in a log is a slice of the network read buffer rumqttd parsed it from (10 KiB,
//! larger only while a larger packet is read), and keeps that whole buffer allocated. So a
//! device's topics share one log (ingest's family filters): a log of its own for a quiet
//! topic (heartbeats, availability) would keep ~40 messages spread over many minutes, each
//! holding a different buffer of that device's connection.
//!
//! # Threads and shutdown
//!
//! rumqttd's own `Broker::start()` blocks forever and has no stop API. This module therefore
//! drives rumqttd's public building blocks (`Router` and `Server`) itself:
//!
//! - rumqttd's router runs on its own thread (named `router-0` by rumqttd);
//! - each rumqttd listener (on loopback, for the front only) runs on its own named thread
//!   with a single-threaded tokio runtime, as rumqttd does: `mqtt-broker` (MQTT 3.1.1, also
//!   behind the TLS listener), `mqtt-broker-v5`;
//! - the front serves every public listener from one thread, `mqtt-front`. They are plain OS
//!   threads, so the broker keeps serving sensors whatever happens to the gateway's own
//!   async runtime.
//!
//! [`EmbeddedBroker::shutdown`] (or dropping the handle) stops the listeners: their ports are
//! freed and every client connection is closed (sensors see a dropped connection; their last
//! wills are not published). The **router thread has no stop API**: it stays parked, idle, with
//! its in-memory state until the process exits. For the daemon's graceful shutdown this means:
//! the inputs stage first stops ingest, then drops (or shuts down)
//! the broker handle; nothing is lost that a restart would not lose anyway (see "No
//! persistence").
//!
//! # Port 0 and bind errors
//!
//! The front binds the public listeners itself, before any thread starts: a busy fixed port
//! fails with [`BrokerError::AddressInUse`], and port 0 gets its real port at once. rumqttd
//! binds its loopback listeners inside its listener future and cannot report the port it
//! got, so:
//!
//! 1. each requested address with port 0 is resolved by binding a std `TcpListener` to the
//!    requested IP and port 0, reading the port the OS chose, and closing it just before
//!    rumqttd binds it (all picks are held open together, so two listeners never get the same
//!    port). A requested fixed port is checked the same way, so a busy one fails fast with
//!    [`BrokerError::AddressInUse`] before any thread is started;
//! 2. the listener thread polls rumqttd's `Server::start` future once: rumqttd 0.20 binds
//!    synchronously on that first poll, so an immediate `Ready(Err)` is the bind error (the
//!    OS error is recovered from rumqttd's error chain) and `Pending` means it is listening;
//! 3. if another process took a picked port in between (a lost race), the pick is retried
//!    with a new port, up to [`PORT_PICK_ATTEMPTS`] times;
//! 4. finally `start` **probes** each public listener: an MQTT CONNECT with the internal
//!    credentials must get a successful CONNACK through the front and rumqttd on the MQTT
//!    3.1.1 and MQTT 5 listeners; the TLS listener must accept a TCP connection. Only then
//!    does `start` return.
//!
//! # Clients
//!
//! The gateway's ingest reads the router in-process ([`LocalSubscriber`], attached before any
//! listener opens; see [`local`]). Its other clients (alert publisher, actuator commands,
//! resident notices) are `rumqttc` clients like any sensor: [`EmbeddedBroker::client_options`]
//! fills in host, port, credentials, keep-alive and packet size. Their event loops must have
//! `TCP_NODELAY` set — without it QoS 1 delivery of 1 KB messages stalls at ~5–7 k msg/s —
//! with [`enable_tcp_nodelay`], or use [`EmbeddedBroker::async_client`] which does both.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttd::local::LinkBuilder;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::Protocol;
use rumqttd::{
    ConnectionSettings, LinkType, Router, RouterConfig, SegmentConfig, Server, ServerSettings,
};
use tokio_rustls::rustls;

pub mod acl;
pub mod config;
pub mod front;
pub mod gate;
pub mod local;
pub mod publisher;
pub use acl::{AccessRules, Grants, Principal};
pub use front::FrontSnapshot;
pub use gate::{CommitGate, Mark};
pub use local::{LocalLink, LocalLinkError, LocalPublish, LocalSubscriber};

/// Segment size of a shared log (every filter that is not a device log, see "Memory" in the
/// module docs); raised to the packet limit, so a segment holds at least one max-size packet.
pub const LOG_SEGMENT_BYTES: usize = 64 * 1024;
/// Segments of a shared log: at least three full ones (~190 KiB, a few hundred alert
/// messages) are kept behind the one being written.
pub const LOG_SEGMENT_COUNT: usize = 4;
/// Segment size of a device log (the log of one exact device topic): rumqttd's smallest. Not
/// raised to the packet limit: a segment takes any packet while it holds less than this, so
/// a max-size packet still fits (alone in its segment).
pub const DEVICE_LOG_SEGMENT_BYTES: usize = MIN_LOG_SEGMENT_BYTES;
/// Segments of a device log: two, the fewest that keep a full segment behind the one being
/// written (with one, starting a new segment drops everything ingest has not read yet).
pub const DEVICE_LOG_SEGMENT_COUNT: usize = 2;
/// rumqttd panics on a smaller segment size.
pub const MIN_LOG_SEGMENT_BYTES: usize = 1024;
/// How many fresh ports are tried when a port picked for port 0 was taken by another
/// process before rumqttd could bind it.
pub const PORT_PICK_ATTEMPTS: u32 = 5;
/// Room for the topic and packet headers on top of [`BrokerSettings::max_payload_bytes`]: the
/// rumqttd (and rumqttc) limit applies to the whole MQTT packet body.
pub const PACKET_OVERHEAD_BYTES: usize = 1024;
/// Connections allowed on top of [`BrokerSettings::max_connections`], for the gateway's own
/// clients only (publisher, actuators, residents, self-test probe, the start-up probe, and a
/// reconnect overlapping each): a full house of sensors cannot lock the gateway out.
pub const RESERVED_CONNECTIONS: usize = 8;
/// rumqttd's own connection limit beyond what the front admits: the in-process links.
const ROUTER_LINK_HEADROOM: usize = 16;
/// Default of [`BrokerSettings::max_retained_messages`].
pub const MAX_RETAINED_MESSAGES: usize = 1024;
/// Default of [`BrokerSettings::max_retained_bytes`].
pub const MAX_RETAINED_BYTES: usize = 4 * 1024 * 1024;
/// Keep-alive the [`EmbeddedBroker::client_options`] use (rumqttd refuses keep-alive 0).
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// MQTT's largest encodable packet body (remaining length).
pub(crate) const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;
/// How long `start` waits for a listener thread to report its bind result.
const BIND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` keeps probing a listener that reported it is bound.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a client has between TCP accept and its CONNECT packet (slow-loris guard).
const CONNECT_TIMEOUT_MS: u16 = 5_000;
/// Unacknowledged QoS 1/2 messages per connection (rumqttc's default inflight too).
const MAX_INFLIGHT: usize = 100;
/// QoS 0 messages rumqttd reads from a log for one connection in one go.
const MAX_OUTGOING_PACKETS: u64 = 200;

/// Settings of the embedded broker (mapped from the gateway configuration by the caller).
#[derive(Clone)]
pub struct BrokerSettings {
    /// MQTT 3.1.1 listener; port 0 picks a free port ([`EmbeddedBroker::local_addr`] tells it).
    pub bind: SocketAddr,
    /// Optional MQTT 5 listener (rumqttd serves MQTT 5 only on a listener of its own).
    pub v5_bind: Option<SocketAddr>,
    /// Optional MQTT 3.1.1-over-TLS listener.
    pub tls: Option<TlsFiles>,
    /// Username → password. Empty: anonymous clients are allowed.
    pub credentials: HashMap<String, String>,
    /// Accept clients without a login even though `credentials` are configured.
    pub allow_anonymous: bool,
    /// What each login (and a client without one) may publish and read; the default lets
    /// everyone do everything (see [`AccessRules::from_config`] for the gateway's rules).
    pub access: AccessRules,
    /// Retained messages clients other than the gateway may have stored at once; more are
    /// delivered without being stored.
    pub max_retained_messages: usize,
    /// Bytes (topic plus payload) those retained messages may take.
    pub max_retained_bytes: usize,
    /// Largest payload accepted at the transport; a bigger packet closes the connection.
    /// [`PACKET_OVERHEAD_BYTES`] are added for topic and headers.
    pub max_payload_bytes: usize,
    /// Sensor connections at once ([`RESERVED_CONNECTIONS`] more are kept for the gateway).
    pub max_connections: usize,
    /// In-process subscribers attached (and subscribed) before any listener opens; take
    /// them with [`EmbeddedBroker::take_local_link`].
    pub local_subscribers: Vec<LocalSubscriber>,
    /// Size of one segment of a shared log ([`LOG_SEGMENT_BYTES`]; raised to the packet limit
    /// if smaller). Logs are buffers for readers that read at once, not stores: see "Memory"
    /// in the module docs for why they are this small.
    pub log_segment_bytes: usize,
    /// Segments of a shared log ([`LOG_SEGMENT_COUNT`]).
    pub log_segment_count: usize,
    /// Size of one segment of a device log ([`DEVICE_LOG_SEGMENT_BYTES`], at least
    /// [`MIN_LOG_SEGMENT_BYTES`]): the logs of the local subscribers' exact topics and of any
    /// filter of the same shape (see "Memory" in the module docs).
    pub device_log_segment_bytes: usize,
    /// Segments of a device log ([`DEVICE_LOG_SEGMENT_COUNT`], at least 2).
    pub device_log_segment_count: usize,
    /// Hold each PUBACK (PUBREC) for a publish into one of this gate's logs until the alert
    /// task marks it committed ([`gate`]); `None`: rumqttd's PUBACK is passed on at once.
    pub commit_gate: Option<Arc<CommitGate>>,
}

impl BrokerSettings {
    /// Anonymous MQTT 3.1.1 broker on `bind`, 64 KiB payloads, 1024 connections.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            v5_bind: None,
            tls: None,
            credentials: HashMap::new(),
            allow_anonymous: false,
            access: AccessRules::default(),
            max_retained_messages: MAX_RETAINED_MESSAGES,
            max_retained_bytes: MAX_RETAINED_BYTES,
            max_payload_bytes: 64 * 1024,
            max_connections: 1024,
            local_subscribers: Vec::new(),
            log_segment_bytes: LOG_SEGMENT_BYTES,
            log_segment_count: LOG_SEGMENT_COUNT,
            device_log_segment_bytes: DEVICE_LOG_SEGMENT_BYTES,
            device_log_segment_count: DEVICE_LOG_SEGMENT_COUNT,
            commit_gate: None,
        }
    }
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&String> = self.credentials.keys().collect();
        users.sort();
        f.debug_struct("BrokerSettings")
            .field("bind", &self.bind)
            .field("v5_bind", &self.v5_bind)
            .field("tls", &self.tls)
            .field("users (passwords redacted)", &users)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("access", &self.access)
            .field("max_retained_messages", &self.max_retained_messages)
            .field("max_retained_bytes", &self.max_retained_bytes)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_connections", &self.max_connections)
            .field("local_subscribers", &self.local_subscribers)
            .field("log_segment_bytes", &self.log_segment_bytes)
            .field("log_segment_count", &self.log_segment_count)
            .field("device_log_segment_bytes", &self.device_log_segment_bytes)
            .field("device_log_segment_count", &self.device_log_segment_count)
            .field("commit_gate", &self.commit_gate.is_some())
            .finish()
    }
}

/// The TLS listener: its address and the server certificate and key, as PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Address of the TLS listener (conventionally port 8883); port 0 picks a free port.
    pub bind: SocketAddr,
    /// Server certificate chain, PEM, leaf first.
    pub cert_pem: PathBuf,
    /// Server private key, PEM (PKCS#8, PKCS#1/RSA or SEC1/EC).
    pub key_pem: PathBuf,
}

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The settings cannot work (empty username, zero limits, same address twice, …).
    #[error("invalid MQTT broker settings: {0}")]
    InvalidSettings(String),
    /// Another socket already listens on this fixed address.
    #[error("MQTT broker address {0} is already in use")]
    AddressInUse(SocketAddr),
    /// Listening failed for another reason (permission for ports < 1024, address not local, …).
    #[error("MQTT broker cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Port 0 was asked but every picked port was taken before rumqttd could bind it.
    #[error("no free port for the MQTT broker on {ip} after {attempts} attempts")]
    NoFreePort { ip: IpAddr, attempts: u32 },
    /// A TLS certificate or key file is missing, unreadable or unusable.
    #[error("MQTT broker TLS file {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    /// A broker thread could not be created.
    #[error("cannot start MQTT broker thread {name}: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    /// An in-process subscriber could not be attached to the router.
    #[error(transparent)]
    LocalLink(#[from] LocalLinkError),
    /// The front (public listeners) could not start.
    #[error("MQTT broker front: {0}")]
    Front(#[from] front::FrontError),
    /// A listener was started but does not serve MQTT (timeout, refused probe, thread died).
    #[error("MQTT broker {listener} listener on {addr} is not ready: {reason}")]
    NotReady {
        listener: &'static str,
        addr: SocketAddr,
        reason: String,
    },
}

/// A running embedded broker; see the [module docs](self).
///
/// Dropping it (or [`shutdown`](Self::shutdown)) closes the listeners and client connections.
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    v5_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    internal: Option<(String, String)>,
    max_packet_bytes: usize,
    /// The public listeners; stopped before rumqttd's (see `stop_listeners`).
    front: front::Front,
    listeners: Vec<Listener>,
    /// Links attached before the listeners opened, waiting for their owner to take them.
    local_links: HashMap<String, LocalLink>,
    /// Attaches more in-process links to the running router (a supervised ingest re-links
    /// after its link failed).
    links: LinkFactory,
    /// Shared with the front and the alert task (see [`gate`]).
    commit_gate: Option<Arc<CommitGate>>,
    /// The front's logins and rules, replaced by a config reload.
    access: Arc<acl::AccessSwitch>,
}

/// Builds rumqttd's in-process links; holds the router's sender (rumqttd does not name its
/// channel type, so it is captured in a closure).
type BuildLink = dyn Fn(&str) -> Result<(rumqttd::local::LinkTx, rumqttd::local::LinkRx), LocalLinkError>
    + Send
    + Sync;

/// Attaches in-process subscribers to the running broker's router, at any time.
#[derive(Clone)]
pub struct LinkFactory {
    build: std::sync::Arc<BuildLink>,
}

impl fmt::Debug for LinkFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkFactory")
    }
}

impl LinkFactory {
    /// Attaches `spec` (under a fresh unguessable client id derived from its own) and
    /// subscribes its filters. Messages published before the call are not delivered: the
    /// router starts new subscriptions at the end of each log.
    pub fn attach(&self, spec: &LocalSubscriber) -> Result<LocalLink, LocalLinkError> {
        let spec = LocalSubscriber {
            client_id: internal_client_id(&spec.role),
            ..spec.clone()
        };
        let (tx, rx) = (self.build)(&spec.client_id)?;
        LocalLink::subscribe(&spec, tx, rx, false)
    }

    /// An in-process publisher (under a fresh unguessable client id for `role`).
    pub fn publisher(&self, role: &str) -> Result<publisher::LocalPublisher, LocalLinkError> {
        let client_id = internal_client_id(role);
        let (tx, rx) = (self.build)(&client_id)?;
        Ok(publisher::LocalPublisher::new(client_id, tx, rx))
    }
}

/// A client id for one of the gateway's own clients or links: its role plus 128 random
/// bits, so that no client on the network can take its session over by connecting with the
/// same id (rumqttd drops the *older* connection of a reused id).
pub fn internal_client_id(role: &str) -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No OS randomness: ULIDs still carry 80 random bits from the thread RNG.
        return format!(
            "shouwang-{role}-{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("shouwang-{role}-{hex}")
}

impl fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("local_addr", &self.local_addr)
            .field("v5_addr", &self.v5_addr)
            .field("tls_addr", &self.tls_addr)
            .field("internal_user", &self.internal.as_ref().map(|(u, _)| u))
            .field("max_packet_bytes", &self.max_packet_bytes)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Starts the broker and returns once every listener accepts MQTT connections.
    pub fn start(settings: BrokerSettings) -> Result<EmbeddedBroker, BrokerError> {
        validate(&settings)?;
        let tls = settings.tls.as_ref().map(tls_server_config).transpose()?;
        let max_packet_bytes = settings
            .max_payload_bytes
            .saturating_add(PACKET_OVERHEAD_BYTES)
            .min(MQTT_MAX_PACKET_BYTES);
        let (user, password) = internal_login(&settings.credentials);

        // The public listeners are bound first: a busy fixed port fails before any thread
        // starts. Nothing reads them until the front starts, after the in-process links.
        let publics = Publics {
            v4: reserve(settings.bind)?.1,
            v5: settings.v5_bind.map(reserve).transpose()?.map(|r| r.1),
            tls: match (&settings.tls, tls) {
                (Some(files), Some(config)) => Some((reserve(files.bind)?.1, config)),
                _ => None,
            },
        };

        let router = Router::new(0, router_config(&settings, max_packet_bytes));
        // rumqttd names this thread `router-0`; it has no stop API (see module docs).
        let router_tx = router.spawn();
        let links = {
            let router_tx = router_tx.clone();
            LinkFactory {
                build: std::sync::Arc::new(move |id: &str| {
                    LinkBuilder::new(id, router_tx.clone())
                        .build()
                        .map(|(tx, rx, _connack)| (tx, rx))
                        .map_err(|e| LocalLinkError::router(id, e))
                }),
            }
        };
        let mut local_links = HashMap::new();
        for spec in &settings.local_subscribers {
            let (tx, rx) = (links.build)(&spec.client_id)?;
            local_links.insert(spec.role.clone(), LocalLink::subscribe(spec, tx, rx, true)?);
        }

        // rumqttd's listeners: loopback only, the internal login only.
        let backend_login = HashMap::from([(user.clone(), password.clone())]);
        let connections = connection_settings(max_packet_bytes, Some(backend_login));
        let server_settings =
            |kind, listen| server_settings(kind, listen, None, connections.clone());
        let listeners = start_backends(
            publics.v5.is_some(),
            |addr| Server::new(server_settings(Kind::V4, addr), router_tx.clone(), V4),
            |addr| Server::new(server_settings(Kind::V5, addr), router_tx.clone(), V5),
        )?;

        let internal = (user.clone(), password.clone());
        let front_settings = front_settings(&settings, internal, max_packet_bytes);
        let access = front_settings.access.clone();
        let (front, addrs) = start_front(front_settings, publics, &listeners)?;
        probe(&addrs, (&user, &password))?;

        log_listening(&settings, &addrs);
        Ok(EmbeddedBroker {
            local_addr: addrs.v4,
            v5_addr: addrs.v5,
            tls_addr: addrs.tls,
            internal: Some((user, password)),
            max_packet_bytes,
            front,
            listeners,
            local_links,
            links,
            commit_gate: settings.commit_gate.clone(),
            access,
        })
    }

    /// Where a config reload puts new logins and topic rules in force.
    pub fn access_reloader(&self) -> Option<AccessReloader> {
        Some(AccessReloader {
            switch: self.access.clone(),
            internal: self.internal.clone()?,
        })
    }

    /// The gate that holds sensors' PUBACKs until their commit, if configured.
    pub fn commit_gate(&self) -> Option<Arc<CommitGate>> {
        self.commit_gate.clone()
    }

    /// The front's live counters (for `status.json`).
    pub fn front_counters(&self) -> Arc<front::FrontStats> {
        self.front.counters()
    }

    /// Counters of what the front accepted and refused.
    pub fn front_stats(&self) -> FrontSnapshot {
        self.front.stats()
    }

    /// Takes the in-process link attached for the [`LocalSubscriber`] of `role` (once).
    pub fn take_local_link(&mut self, role: &str) -> Option<LocalLink> {
        self.local_links.remove(role)
    }

    /// Attaches more in-process links to this broker's router (see [`LinkFactory`]).
    pub fn link_factory(&self) -> LinkFactory {
        self.links.clone()
    }

    /// The MQTT 3.1.1 listener's address, with the real port even if port 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The MQTT 5 listener's address, if one was configured.
    pub fn v5_addr(&self) -> Option<SocketAddr> {
        self.v5_addr
    }

    /// The TLS listener's address, if one was configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Username and password of the gateway's own clients (generated at each start, never
    /// written anywhere): the front recognises the gateway by them, anonymous broker or not.
    /// Always `Some`.
    pub fn internal_credentials(&self) -> Option<(String, String)> {
        self.internal.clone()
    }

    /// rumqttc options to reach the MQTT 3.1.1 listener: host and port (loopback if the broker
    /// listens on all interfaces), internal credentials, [`CLIENT_KEEP_ALIVE`], packet limits.
    ///
    /// Remember [`enable_tcp_nodelay`] on the event loop (or use [`Self::async_client`]).
    pub fn client_options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let addr = connect_addr(self.local_addr);
        let host = match addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            // rumqttc joins host and port as "{host}:{port}".
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut options = rumqttc::MqttOptions::new(client_id, host, addr.port());
        options.set_keep_alive(CLIENT_KEEP_ALIVE);
        options.set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes);
        if let Some((user, password)) = &self.internal {
            options.set_credentials(user.clone(), password.clone());
        }
        options
    }

    /// A rumqttc client from [`Self::client_options`] with `TCP_NODELAY` already set.
    /// `cap` is the request channel capacity (see `rumqttc::AsyncClient::new`).
    pub fn async_client(
        &self,
        client_id: &str,
        cap: usize,
    ) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
        let (client, mut event_loop) =
            rumqttc::AsyncClient::new(self.client_options(client_id), cap);
        enable_tcp_nodelay(&mut event_loop);
        (client, event_loop)
    }

    /// Closes the listeners and every client connection and waits for their threads (a few
    /// milliseconds; from async code prefer `spawn_blocking`). Clients see their connection
    /// drop; last wills are not published. The router thread stays parked until the process
    /// exits (rumqttd has no stop for it).
    pub fn shutdown(mut self) {
        self.stop_listeners();
    }

    fn stop_listeners(&mut self) {
        self.front.stop();
        for mut listener in self.listeners.drain(..) {
            listener.stop();
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop_listeners();
    }
}

/// One of the gateway's own clients on the broker `options` point to: an unguessable id for
/// `role` ([`internal_client_id`]), the options' credentials, `TCP_NODELAY`.
pub fn internal_client(
    options: &rumqttc::MqttOptions,
    role: &str,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let mut o = options.clone();
    o.set_client_id(internal_client_id(role));
    let (client, mut event_loop) = rumqttc::AsyncClient::new(o, 256);
    enable_tcp_nodelay(&mut event_loop);
    (client, event_loop)
}

/// Sets `TCP_NODELAY` on a rumqttc event loop's future connections. Without it, QoS 1
/// delivery of ~1 KB messages stalls at ~5–7 k msg/s (Nagle's algorithm delays the acks).
/// Works for any broker, embedded or external.
pub fn enable_tcp_nodelay(event_loop: &mut rumqttc::EventLoop) {
    let mut network = event_loop.network_options();
    network.set_tcp_nodelay(true);
    event_loop.set_network_options(network);
}

/// Per-connection limits and authentication shared by all listeners. Every field is set:
/// rumqttd has no defaults for them.
fn connection_settings(
    max_packet_bytes: usize,
    auth: Option<HashMap<String, String>>,
) -> ConnectionSettings {
    ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: max_packet_bytes,
        max_inflight_count: MAX_INFLIGHT,
        auth,
        external_auth: None,
        // Without dynamic filters rumqttd refuses publishes to topics nobody subscribed to.
        dynamic_filters: true,
    }
}

fn server_settings(
    kind: Kind,
    listen: SocketAddr,
    tls: Option<rumqttd::TlsConfig>,
    connections: ConnectionSettings,
) -> ServerSettings {
    ServerSettings {
        name: kind.thread_name().to_owned(),
        listen,
        tls,
        // Pause after each accept: smooths a reconnect storm of hundreds of sensors.
        next_connection_delay_ms: 1,
        connections,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    V4,
    V5,
}

impl Kind {
    fn thread_name(self) -> &'static str {
        match self {
            Kind::V4 => "mqtt-broker",
            Kind::V5 => "mqtt-broker-v5",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::V4 => "MQTT 3.1.1",
            Kind::V5 => "MQTT 5",
        }
    }
}

/// rumqttd's listeners on loopback ports: MQTT 3.1.1, and MQTT 5 if `v5`.
fn start_backends(
    v5: bool,
    new_v4: impl Fn(SocketAddr) -> Server<V4>,
    new_v5: impl Fn(SocketAddr) -> Server<V5>,
) -> Result<Vec<Listener>, BrokerError> {
    let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let mut listeners = vec![start_listener(
        Kind::V4,
        loopback,
        reserve(loopback)?.0,
        new_v4,
    )?];
    if v5 {
        listeners.push(start_listener(
            Kind::V5,
            loopback,
            reserve(loopback)?.0,
            new_v5,
        )?);
    }
    Ok(listeners)
}

fn log_listening(settings: &BrokerSettings, addrs: &PublicAddrs) {
    tracing::info!(
        addr = %addrs.v4,
        v5_addr = addrs.v5.map(|a| a.to_string()),
        tls_addr = addrs.tls.map(|a| a.to_string()),
        anonymous = settings.credentials.is_empty() || settings.allow_anonymous,
        max_connections = settings.max_connections,
        max_payload_bytes = settings.max_payload_bytes,
        "embedded MQTT broker listening"
    );
}

/// rumqttd's router: room for the front's connections and the in-process links (the front
/// enforces the real limits), logs of the configured size.
fn router_config(settings: &BrokerSettings, max_packet_bytes: usize) -> RouterConfig {
    RouterConfig {
        max_connections: settings
            .max_connections
            .saturating_add(RESERVED_CONNECTIONS)
            .saturating_add(settings.local_subscribers.len() + ROUTER_LINK_HEADROOM),
        max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
        max_segment_size: settings.log_segment_bytes.max(max_packet_bytes),
        max_segment_count: settings.log_segment_count,
        custom_segment: Some(device_logs(settings)),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

/// rumqttd's per-filter log overrides: the shape of every filter (exact, `PREFIX/+` or
/// `PREFIX/#`) of a per-device local subscriber gets a device log (see "Memory" in the
/// module docs).
fn device_logs(settings: &BrokerSettings) -> HashMap<String, SegmentConfig> {
    let log = SegmentConfig {
        max_segment_size: settings.device_log_segment_bytes,
        max_segment_count: settings.device_log_segment_count,
    };
    let plain = |f: &str| !f.contains(['+', '#']);
    // A wildcard filter names one device only below its first level (`zigbee2mqtt/#` is
    // every device's).
    let one_device = |p: &str| plain(p) && p.contains('/');
    settings
        .local_subscribers
        .iter()
        .filter(|s| s.per_device)
        .flat_map(|s| &s.filters)
        .filter(|f| {
            plain(f)
                || f.strip_suffix("/+").is_some_and(one_device)
                || f.strip_suffix("/#").is_some_and(one_device)
        })
        .map(|f| (topic_shape(f), log.clone()))
        .collect()
}

/// `sensors/smoke-1/state` and `sensors/smoke-1/+` → `sensors/+/+`; `zigbee2mqtt/kitchen` →
/// `zigbee2mqtt/+`; `zigbee2mqtt/kitchen/#` → `zigbee2mqtt/+/#` (rumqttd does not match
/// `zigbee2mqtt/#` against it, so that filter keeps a shared log).
fn topic_shape(topic: &str) -> String {
    let mut levels = topic.split('/');
    let first = levels.next().unwrap_or_default();
    std::iter::once(first)
        .chain(levels.map(|l| if l == "#" { "#" } else { "+" }))
        .collect::<Vec<_>>()
        .join("/")
}

/// Puts a reloaded configuration's logins and topic rules in force on the front.
#[derive(Clone)]
pub struct AccessReloader {
    switch: Arc<acl::AccessSwitch>,
    internal: (String, String),
}

impl AccessReloader {
    /// The logins and rules of `config` for every CONNECT from now on; connections already
    /// open keep what they were granted at theirs (unchanged devices stay connected).
    pub fn apply(&self, config: &edge_config::Config) {
        let settings = BrokerSettings::from_config(config);
        self.switch.replace(access_of(&settings, &self.internal));
    }
}

/// The logins and rules of `settings`, with the gateway's own login `internal`.
fn access_of(settings: &BrokerSettings, internal: &(String, String)) -> acl::Access {
    acl::Access {
        logins: acl::Logins::new(
            (&internal.0, &internal.1),
            &settings.credentials,
            settings.credentials.is_empty() || settings.allow_anonymous,
        ),
        rules: settings.access.clone(),
    }
}

/// What the front enforces, from the settings; `internal` is the gateway's login.
fn front_settings(
    settings: &BrokerSettings,
    internal: (String, String),
    max_packet_bytes: usize,
) -> front::FrontSettings {
    front::FrontSettings {
        access: Arc::new(acl::AccessSwitch::new(access_of(settings, &internal))),
        internal,
        max_connections: settings.max_connections,
        reserved: RESERVED_CONNECTIONS,
        max_packet_bytes,
        max_retained_messages: settings.max_retained_messages,
        max_retained_bytes: settings.max_retained_bytes,
        commit_gate: settings.commit_gate.clone(),
    }
}

/// The public listeners, bound and not yet served.
struct Publics {
    v4: TcpListener,
    v5: Option<TcpListener>,
    tls: Option<(TcpListener, std::sync::Arc<rustls::ServerConfig>)>,
}

/// Where the public listeners are.
struct PublicAddrs {
    v4: SocketAddr,
    v5: Option<SocketAddr>,
    tls: Option<SocketAddr>,
}

/// Starts the front on the public listeners, forwarding to rumqttd's `backends` (MQTT
/// 3.1.1 first, then MQTT 5 if any).
fn start_front(
    settings: front::FrontSettings,
    publics: Publics,
    backends: &[Listener],
) -> Result<(front::Front, PublicAddrs), BrokerError> {
    let addr_of = |l: &TcpListener| {
        l.local_addr().map_err(|source| BrokerError::Bind {
            addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            source,
        })
    };
    let backend = |kind| backends.iter().find(|l| l.kind == kind).map(|l| l.addr);
    let v4_backend = backend(Kind::V4)
        .ok_or_else(|| BrokerError::InvalidSettings("no MQTT 3.1.1 backend listener".to_owned()))?;
    let addrs = PublicAddrs {
        v4: addr_of(&publics.v4)?,
        v5: publics.v5.as_ref().map(addr_of).transpose()?,
        tls: publics.tls.as_ref().map(|(l, _)| addr_of(l)).transpose()?,
    };
    let listener = |label, listener, backend, dialect, tls| front::FrontListener {
        label,
        listener,
        backend,
        dialect,
        tls,
    };
    let mut listeners = vec![listener(
        Kind::V4.label(),
        publics.v4,
        v4_backend,
        front::Dialect::V4,
        None,
    )];
    if let (Some(l), Some(b)) = (publics.v5, backend(Kind::V5)) {
        listeners.push(listener(Kind::V5.label(), l, b, front::Dialect::V5, None));
    }
    if let Some((l, config)) = publics.tls {
        listeners.push(listener(
            "MQTT over TLS",
            l,
            v4_backend,
            front::Dialect::V4,
            Some(config),
        ));
    }
    Ok((front::Front::start(settings, listeners)?, addrs))
}

/// An MQTT CONNECT with the internal login must pass the front and rumqttd on the plain
/// listeners; the TLS listener must accept a TCP connection.
fn probe(addrs: &PublicAddrs, login: (&str, &str)) -> Result<(), BrokerError> {
    let checks = [
        (Kind::V4.label(), Some(addrs.v4), 4u8),
        (Kind::V5.label(), addrs.v5, 5),
        ("MQTT over TLS", addrs.tls, 0),
    ];
    for (listener, addr, level) in checks {
        let Some(addr) = addr else { continue };
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let result = match level {
            0 => probe_tcp(addr, deadline).map(drop),
            level => probe_mqtt(addr, level, Some(login), deadline),
        };
        if let Err(reason) = result {
            return Err(BrokerError::NotReady {
                listener,
                addr,
                reason,
            });
        }
    }
    Ok(())
}

/// One listener thread; dropping it stops the listener and joins the thread.
struct Listener {
    kind: Kind,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn stop(&mut self) {
        // Dropping the sender wakes the listener thread, which drops its runtime: the
        // listening socket and every connection task go with it.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(
                    listener = self.kind.label(),
                    "MQTT broker listener thread panicked"
                );
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a listener thread did not start listening.
enum BindFailure {
    Io(io::Error),
    Other(String),
}

/// Starts a listener on `addr` (already reserved); if that port was picked for a requested
/// port 0 and got taken meanwhile, retries with freshly picked ports.
fn start_listener<P, F>(
    kind: Kind,
    requested: SocketAddr,
    mut addr: SocketAddr,
    make_server: F,
) -> Result<Listener, BrokerError>
where
    P: Protocol + Clone + Send + 'static,
    F: Fn(SocketAddr) -> Server<P>,
{
    let mut attempt = 1;
    loop {
        match spawn_listener(kind, addr, make_server(addr))? {
            Ok(listener) => return Ok(listener),
            Err(BindFailure::Io(e)) if e.kind() == io::ErrorKind::AddrInUse => {
                if requested.port() != 0 {
                    return Err(BrokerError::AddressInUse(requested));
                }
                if attempt >= PORT_PICK_ATTEMPTS {
                    return Err(BrokerError::NoFreePort {
                        ip: requested.ip(),
                        attempts: attempt,
                    });
                }
                tracing::debug!(%addr, attempt, "picked MQTT broker port was taken; picking another");
                attempt += 1;
                addr = reserve(requested)?.0;
            }
            Err(BindFailure::Io(source)) => return Err(BrokerError::Bind { addr, source }),
            Err(BindFailure::Other(reason)) => {
                return Err(BrokerError::NotReady {
                    listener: kind.label(),
                    addr,
                    reason,
                })
            }
        }
    }
}

/// Spawns the listener thread and waits for rumqttd's bind result (see module docs).
fn spawn_listener<P>(
    kind: Kind,
    addr: SocketAddr,
    server: Server<P>,
) -> Result<Result<Listener, BindFailure>, BrokerError>
where
    P: Protocol + Clone + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), BindFailure>>(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name(kind.thread_name().to_owned())
        .spawn(move || serve(kind, server, ready_tx, stop_rx))
        .map_err(|source| BrokerError::Thread {
            name: kind.thread_name(),
            source,
        })?;
    let mut listener = Listener {
        kind,
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let outcome = match ready_rx.recv_timeout(BIND_TIMEOUT) {
        Ok(Ok(())) => return Ok(Ok(listener)),
        Ok(Err(failure)) => failure,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // Do not join a thread that did not answer: detach it (it stops when it can).
            listener.thread.take();
            BindFailure::Other(format!("no bind result within {BIND_TIMEOUT:?}"))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            BindFailure::Other("listener thread exited before listening".to_owned())
        }
    };
    drop(listener);
    Ok(Err(outcome))
}

/// Body of a listener thread: binds, reports, serves until stopped.
fn serve<P>(
    kind: Kind,
    mut server: Server<P>,
    ready: mpsc::SyncSender<Result<(), BindFailure>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) where
    P: Protocol + Clone + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(BindFailure::Other(format!("tokio runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let serving = server.start(LinkType::Remote);
        let mut serving = std::pin::pin!(serving);
        // rumqttd 0.20 binds on the first poll: Ready(Err) is the bind error, Pending means
        // it is listening (accept loop).
        let first = std::future::poll_fn(|cx| Poll::Ready(serving.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(result) => {
                let _ = ready.send(Err(bind_failure(result)));
                return;
            }
            Poll::Pending => {
                if ready.send(Ok(())).is_err() {
                    return; // `start` gave up waiting
                }
            }
        }
        tokio::select! {
            result = serving => {
                tracing::error!(
                    listener = kind.label(),
                    error = %bind_failure_text(result),
                    "MQTT broker listener stopped"
                );
            }
            _ = stop => {}
        }
    });
    // Dropping the runtime here closes the listening socket and every connection.
}

/// Recovers the OS error from rumqttd's (unnameable) server error, if there is one.
fn bind_failure<E: std::error::Error + 'static>(result: Result<(), E>) -> BindFailure {
    match result {
        Ok(()) => BindFailure::Other("listener returned without an error".to_owned()),
        Err(e) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if let Some(io_error) = c.downcast_ref::<io::Error>() {
                    return BindFailure::Io(io::Error::new(io_error.kind(), io_error.to_string()));
                }
                cause = c.source();
            }
            BindFailure::Other(e.to_string())
        }
    }
}

fn bind_failure_text<E: std::error::Error + 'static>(result: Result<(), E>) -> String {
    match bind_failure(result) {
        BindFailure::Io(e) => e.to_string(),
        BindFailure::Other(s) => s,
    }
}

/// Resolves `requested` to a free address (port 0 → an OS-picked port) and returns it with the
/// std listener holding it; drop the listener right before rumqttd binds the address.
fn reserve(requested: SocketAddr) -> Result<(SocketAddr, TcpListener), BrokerError> {
    match TcpListener::bind(requested) {
        Ok(listener) => {
            let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
                addr: requested,
                source,
            })?;
            Ok((addr, listener))
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(BrokerError::AddressInUse(requested)),
        Err(source) => Err(BrokerError::Bind {
            addr: requested,
            source,
        }),
    }
}

fn validate(settings: &BrokerSettings) -> Result<(), BrokerError> {
    let invalid = |s: String| Err(BrokerError::InvalidSettings(s));
    if settings.max_connections == 0 {
        return invalid("max_connections must be at least 1".to_owned());
    }
    if settings.log_segment_bytes == 0 || settings.log_segment_count < 2 {
        return invalid(
            "the filter log needs a non-empty segment size and at least 2 segments".to_owned(),
        );
    }
    if settings.device_log_segment_bytes < MIN_LOG_SEGMENT_BYTES
        || settings.device_log_segment_count < 2
    {
        return invalid(format!(
            "a device log needs segments of at least {MIN_LOG_SEGMENT_BYTES} bytes and at least 2 segments"
        ));
    }
    let mut ids: Vec<&str> = settings
        .local_subscribers
        .iter()
        .map(|s| s.client_id.as_str())
        .collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return invalid("two local subscribers share a client id".to_owned());
    }
    if settings.max_payload_bytes == 0 || settings.max_payload_bytes > MQTT_MAX_PACKET_BYTES {
        return invalid(format!(
            "max_payload_bytes must be between 1 and {MQTT_MAX_PACKET_BYTES}"
        ));
    }
    for (user, password) in &settings.credentials {
        if user.is_empty() {
            return invalid("credentials contain an empty username".to_owned());
        }
        if user.len() > usize::from(u16::MAX) || password.len() > usize::from(u16::MAX) {
            return invalid(format!(
                "username or password of {user:?} exceeds 65535 bytes"
            ));
        }
    }
    let mut fixed: Vec<SocketAddr> = Vec::new();
    let addrs = [
        Some(settings.bind),
        settings.v5_bind,
        settings.tls.as_ref().map(|t| t.bind),
    ];
    for addr in addrs.into_iter().flatten().filter(|a| a.port() != 0) {
        if fixed
            .iter()
            .any(|f| f.port() == addr.port() && overlaps(f.ip(), addr.ip()))
        {
            return invalid(format!("two listeners on {addr}"));
        }
        fixed.push(addr);
    }
    Ok(())
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// Loads the certificate and key for the front's TLS listener, so bad files fail `start`.
fn tls_server_config(
    files: &TlsFiles,
) -> Result<std::sync::Arc<rustls::ServerConfig>, BrokerError> {
    let tls_error = |path: &Path, reason: String| BrokerError::Tls {
        path: path.to_owned(),
        reason,
    };
    let open = |path: &Path| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| tls_error(path, format!("cannot open: {e}")))
    };
    let certs = rustls_pemfile::certs(&mut open(&files.cert_pem)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&files.cert_pem, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(
            &files.cert_pem,
            "no CERTIFICATE in the file".to_owned(),
        ));
    }
    let key = rustls_pemfile::private_key(&mut open(&files.key_pem)?)
        .map_err(|e| tls_error(&files.key_pem, format!("not a PEM key file: {e}")))?
        .ok_or_else(|| tls_error(&files.key_pem, "no PRIVATE KEY in the file".to_owned()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(&files.key_pem, format!("unusable key or certificate: {e}")))?;
    Ok(std::sync::Arc::new(config))
}

/// A random internal login not clashing with a configured user. Randomness: ULIDs carry 80
/// bits from `rand`'s thread-local CSPRNG (seeded by the OS); the password takes 160 bits.
fn internal_login(existing: &HashMap<String, String>) -> (String, String) {
    loop {
        let user = format!(
            "shouwang-gateway-{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        if existing.contains_key(&user) {
            continue;
        }
        let password = format!(
            "{:020x}{:020x}",
            ulid::Ulid::generate().random(),
            ulid::Ulid::generate().random()
        );
        return (user, password);
    }
}

/// Where a local client connects to reach a listener bound to `addr`.
pub(crate) fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Connects over TCP, retrying briefly until `deadline`.
fn probe_tcp(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
    let target = connect_addr(addr);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(
            &target,
            remaining
                .min(Duration::from_millis(500))
                .max(Duration::from_millis(50)),
        ) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() + Duration::from_millis(20) < deadline => {
                tracing::debug!(%target, error = %e, "MQTT broker probe: not accepting yet");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("TCP connect to {target}: {e}")),
        }
    }
}

/// An MQTT CONNECT (3.1.1 when `level` is 4, 5 when 5) must get a successful CONNACK. A
/// connection closed before any CONNACK is tried again until `deadline`: the front accepts
/// as soon as its own listener is up, and under load it may reach a rumqttd listener that
/// does not serve yet, closing the client's connection (seen once in a CI run of the whole
/// suite). A refused login still fails at once: the front answers it with a CONNACK code.
fn probe_mqtt(
    addr: SocketAddr,
    level: u8,
    login: Option<(&str, &str)>,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        match probe_mqtt_once(addr, level, login, deadline) {
            Err(ProbeFailure::Closed(reason)) => {
                if Instant::now() + Duration::from_millis(20) >= deadline {
                    return Err(reason);
                }
                tracing::debug!(%addr, %reason, "MQTT broker probe: closed before CONNACK; trying again");
                thread::sleep(Duration::from_millis(20));
            }
            Err(ProbeFailure::Other(reason)) => return Err(reason),
            Ok(()) => return Ok(()),
        }
    }
}

/// Why one probe failed: closed before a CONNACK (not ready yet), or anything else.
enum ProbeFailure {
    Closed(String),
    Other(String),
}

impl From<String> for ProbeFailure {
    fn from(reason: String) -> Self {
        ProbeFailure::Other(reason)
    }
}

fn probe_mqtt_once(
    addr: SocketAddr,
    level: u8,
    login: Option<(&str, &str)>,
    deadline: Instant,
) -> Result<(), ProbeFailure> {
    let mut stream = probe_tcp(addr, deadline)?;
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let io_error = |e: io::Error| format!("MQTT probe: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_nodelay(true).map_err(io_error)?;
    let client_id = format!(
        "shouwang-probe-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    stream
        .write_all(&connect_packet(level, &client_id, login))
        .map_err(io_error)?;
    let mut header = [0u8; 1];
    stream.read_exact(&mut header).map_err(|e| {
        let reason = format!("no CONNACK (login refused?): {e}");
        match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                ProbeFailure::Closed(reason)
            }
            _ => ProbeFailure::Other(reason),
        }
    })?;
    if header[0] != 0x20 {
        return Err(format!("expected CONNACK, got packet type byte {:#04x}", header[0]).into());
    }
    let len = read_remaining_length(&mut stream).map_err(io_error)?;
    if !(2..=1024).contains(&len) {
        return Err(format!("malformed CONNACK of {len} bytes").into());
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(io_error)?;
    if body[1] != 0 {
        return Err(format!("CONNACK refused with code {}", body[1]).into());
    }
    // DISCONNECT (MQTT 5 accepts the 2-byte form: reason 0, no properties).
    let _ = stream.write_all(&[0xE0, 0x00]);
    Ok(())
}

fn connect_packet(level: u8, client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    fn put_str(buf: &mut Vec<u8>, s: &str) {
        // Lengths were validated to fit in u16.
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
    }
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level];
    let flags = 0x02 | if login.is_some() { 0xC0 } else { 0x00 }; // clean session (+ user, pass)
    body.push(flags);
    body.extend_from_slice(&10u16.to_be_bytes()); // keep-alive (rumqttd refuses 0)
    if level == 5 {
        body.push(0x00); // no properties
    }
    put_str(&mut body, client_id);
    if let Some((user, password)) = login {
        put_str(&mut body, user);
        put_str(&mut body, password);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

fn read_remaining_length(stream: &mut impl Read) -> io::Result<usize> {
    let mut value = 0usize;
    for shift in [0, 7, 14, 21] {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        value |= usize::from(byte[0] & 0x7F) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "remaining length over 4 bytes",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_router() -> RouterConfig {
        RouterConfig {
            max_connections: 10,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: LOG_SEGMENT_BYTES,
            max_segment_count: LOG_SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        }
    }

    #[test]
    fn device_log_patterns_are_the_shapes_of_the_exact_topics_only() {
        let mut settings = BrokerSettings::new("127.0.0.1:0".parse().unwrap());
        let local = |role: &str, filters: &[&str]| LocalSubscriber {
            role: role.into(),
            client_id: role.into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
            per_device: role == "devices",
        };
        settings.local_subscribers = vec![
            local(
                "devices",
                &[
                    "sensors/smoke-1/+",
                    "sensors/smoke-2/heartbeat",
                    "zigbee2mqtt/hall/#",
                    "zigbee2mqtt/kitchen",
                    "zigbee2mqtt/kitchen/availability",
                    "legacy-gas",
                ],
            ),
            local("watch", &["#", "sensors/+/state", "zigbee2mqtt/#"]),
        ];
        let mut patterns: Vec<String> = device_logs(&settings).into_keys().collect();
        patterns.sort();
        assert_eq!(
            patterns,
            [
                "legacy-gas",
                "sensors/+/+",
                "zigbee2mqtt/+",
                "zigbee2mqtt/+/#",
                "zigbee2mqtt/+/+"
            ],
            "a few shapes, not one pattern per device (rumqttd matches every new filter \
             against every pattern)"
        );
        use rumqttd::protocol::matches;
        for shared in ["#", "zigbee2mqtt/#", "sensors/#", "shouwang/site/alerts/#"] {
            assert!(
                patterns.iter().all(|p| !matches(shared, p)),
                "{shared} must keep a shared log"
            );
        }
        assert!(matches("zigbee2mqtt/kitchen/#", "zigbee2mqtt/+/#"));
    }

    #[test]
    fn rumqttd_failing_to_bind_a_fixed_port_is_reported_as_address_in_use() {
        // Bypasses `reserve` to hit the race: the port is taken when rumqttd binds it.
        let occupied = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = occupied.local_addr().unwrap();
        let router_tx = Router::new(0, test_router()).spawn();
        let began = Instant::now();
        let result = start_listener(Kind::V4, busy, busy, |addr| {
            let settings = server_settings(Kind::V4, addr, None, connection_settings(4096, None));
            Server::new(settings, router_tx.clone(), V4)
        });
        assert!(began.elapsed() < Duration::from_secs(2));
        match result {
            Err(BrokerError::AddressInUse(addr)) => assert_eq!(addr, busy),
            Err(e) => panic!("expected AddressInUse, got {e}"),
            Ok(_) => panic!("expected AddressInUse, got a listener"),
        }
    }

    #[test]
    fn a_picked_port_taken_before_rumqttd_binds_it_is_replaced_by_another() {
        let occupied = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = occupied.local_addr().unwrap();
        let router_tx = Router::new(0, test_router()).spawn();
        let requested: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = start_listener(Kind::V4, requested, taken, |addr| {
            let settings = server_settings(Kind::V4, addr, None, connection_settings(4096, None));
            Server::new(settings, router_tx.clone(), V4)
        })
        .unwrap_or_else(|e| panic!("retry with a new port failed: {e}"));
        assert_ne!(listener.addr, taken);
        assert_ne!(listener.addr.port(), 0);
        let deadline = Instant::now() + PROBE_TIMEOUT;
        probe_mqtt(listener.addr, 4, None, deadline).unwrap();
    }

    /// A listener that closes its first `closes` connections at once, then answers a CONNACK
    /// (accepted) to each later one.
    fn flaky_listener(closes: usize) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                if i < closes {
                    continue; // dropped: closed before any CONNACK
                }
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(&[0x20, 0x02, 0x00, 0x00]);
                let _ = conn.read(&mut buf);
            }
        });
        addr
    }

    #[test]
    fn a_listener_that_closes_before_its_connack_is_probed_again_until_it_answers() {
        let deadline = Instant::now() + PROBE_TIMEOUT;
        probe_mqtt(flaky_listener(3), 5, Some(("u", "p")), deadline)
            .expect("the fourth connection gets its CONNACK");
        let soon = Instant::now() + Duration::from_millis(200);
        let err = probe_mqtt(flaky_listener(usize::MAX), 5, None, soon).unwrap_err();
        assert!(err.contains("no CONNACK"), "{err}");
    }

    #[test]
    fn connect_packet_encodes_a_long_login_with_a_two_byte_length() {
        let password = "p".repeat(200);
        let packet = connect_packet(4, "id", Some(("user", &password)));
        assert_eq!(packet[0], 0x10);
        let len = read_remaining_length(&mut &packet[1..]).unwrap();
        assert_eq!(len, packet.len() - 3, "two length bytes expected");
        assert_eq!(packet[3..10], [0, 4, b'M', b'Q', b'T', b'T', 4]);
        assert_eq!(packet[10], 0xC2);
    }

    #[test]
    fn settings_with_two_listeners_on_one_port_are_refused() {
        let mut settings = BrokerSettings::new("127.0.0.1:18830".parse().unwrap());
        settings.v5_bind = Some("0.0.0.0:18830".parse().unwrap());
        assert!(matches!(
            validate(&settings),
            Err(BrokerError::InvalidSettings(_))
        ));
        settings.v5_bind = Some("127.0.0.1:0".parse().unwrap());
        assert!(validate(&settings).is_ok());
    }

    #[test]
    fn internal_login_is_random_and_avoids_configured_users() {
        let existing = HashMap::from([("sensor".to_owned(), "pw".to_owned())]);
        let (u1, p1) = internal_login(&existing);
        let (u2, p2) = internal_login(&existing);
        assert_ne!(u1, u2);
        assert_ne!(p1, p2);
        assert_eq!(p1.len(), 40);
        assert!(!existing.contains_key(&u1));
    }

    #[test]
    fn settings_debug_output_hides_passwords() {
        let mut settings = BrokerSettings::new("127.0.0.1:0".parse().unwrap());
        settings
            .credentials
            .insert("sensor-1".to_owned(), "hunter2".to_owned());
        let text = format!("{settings:?}");
        assert!(text.contains("sensor-1"));
        assert!(!text.contains("hunter2"));
    }
}
