//! Store-and-forward uplink: drains the durable [`outbox`](crate::outbox) to the platform's
//! MQTT broker, in order, and deletes a row only after the broker acknowledged it.
//!
//! ```text
//!   outbox (SQLite) ──next_batch──▶ link task ──QoS 1 PUBLISH──▶ upstream broker
//!        ▲   ▲                          │  ◀──────── PUBACK ──────────┘
//!        │   └──────── ack_batch ───────┘
//!        └── enforce_quota / stats ── housekeeping task ──▶ status.json, buffer_full alert
//! ```
//!
//! Two tasks of [`Stage::Outbox`] share one
//! [`Outbox`] (its own SQLite connection) behind a mutex; every SQLite
//! call runs on a blocking thread (`spawn_blocking`), never on the async workers.
//!
//! # Connection states
//!
//! ```text
//!              ┌──────── error (I/O, TLS, refused login, keep-alive timeout) ────────┐
//!              ▼                                                                      │
//!   Backoff{retry_in} ──delay──▶ Connecting ──CONNACK──▶ Connected ──────────────────┘
//!        ▲                            │ error
//!        └────────────────────────────┘
//! ```
//!
//! [`LinkState`] is what the status API reports (plus `disabled` when there is no `[uplink]`).
//! Every connection is a *fresh* rumqttc `EventLoop` with `clean_session = true`: the outbox,
//! not the broker's session, is the source of truth, so nothing is replayed by rumqttc behind
//! the uplink's back and nothing stale is replayed by the broker. The commands subscription
//! is re-made on every CONNACK (a command sent while the link is down is lost; the platform
//! re-sends it if it got no acknowledged event back).
//!
//! # Backoff
//!
//! After a failed attempt or a dropped connection the link waits
//! `min(cap, base · 2^attempt)` with *equal jitter* (a uniform draw from the upper half), so a
//! whole district of gateways coming back after a WAN outage does not reconnect in lock-step;
//! `cap` is `uplink.outbox.retry_backoff_max_s`, `base` 0.5 s. The attempt counter resets
//! after a CONNACK. A refused login (wrong password) or a refused certificate is logged with
//! a clear reason and retried like any other failure: the gateway never exits because the
//! platform is unreachable or misconfigured.
//!
//! # In-flight window and ack matching
//!
//! At most `uplink.outbox.max_inflight` rows are published and unacknowledged at once (the
//! rumqttc `inflight` limit is set to the same number). Behind the window the link keeps up
//! to `max(batch, max_inflight)` rows *ready*, fetched with `Outbox::next_batch` (which marks
//! them in flight so they are not handed out twice) whenever half of them have gone out: each
//! PUBACK frees a slot that is refilled at once from memory, so the link never pauses to
//! wait for SQLite. (Pausing between batches costs ~10 ms per batch against brokers that
//! leave Nagle on — mosquitto's default — because their PUBACKs then wait for our delayed
//! TCP ACK.) Rows go to the rumqttc client in drain
//! order; rumqttc assigns each QoS 1 publish a packet id and reports it as
//! `Outgoing::Publish(pkid)` in the same FIFO order in which the requests were queued, so the
//! link pops the next queued row id and records `pkid → row`. `PUBACK(pkid)` (QoS 1) or
//! `PUBCOMP(pkid)` (QoS 2) looks the row up. Acknowledged rows are deleted with one
//! `Outbox::ack_batch` (one transaction, one statement) once 256 have gathered, with the next
//! refill, when nothing else is in flight (an idle link deletes at once), when stopping, or
//! at the latest on the next 20 ms tick. One blocking job at a time does the outbox's work:
//! first the deletes, then the refill read, so the acked rows need not be skipped by the read
//! and a batch costs one thread hop. A PUBACK for an unknown packet id is ignored.
//!
//! Where the drain's CPU goes, per message, against a bare rumqttc publisher on the same
//! broker and window (`cargo bench -p gateway --bench uplink_drain`, `perf record`): the
//! MQTT work (one `writev` per PUBLISH, rumqttc flushes each) is the same; on top come the
//! SQLite delete (B-tree delete in the table and both drain indexes, the byte-count trigger,
//! WAL writes and their checkpoints), the read of each row (index walk + rowid lookup + a
//! copy of the payload) and the hop to the blocking thread. Deleting one row per statement
//! cost two fifths of the drain's own CPU; one statement per batch of PUBACKs cut that by a
//! quarter (see the README, issue 18, Drain).
//!
//! # Reconnect and requeue
//!
//! When a connection ends, the link first waits for its outstanding outbox job, deletes the
//! rows whose PUBACK did arrive, then calls `Outbox::requeue_inflight`: every
//! row that was published but not acknowledged is pending again and, because the drain order
//! is a property of the rows (class, seq, id), is re-sent first on the next connection.
//! Upstream therefore sees `5 6 7 | reconnect | 6 7 8`: at-least-once, in order, with
//! duplicates the platform drops on the payload's `id` + `seq` (and the row's key). A crash
//! (SIGKILL, power cut) is the same case: the in-flight set lived only in memory, and rows
//! whose PUBACK came but whose batched delete was not committed yet are pending again too,
//! so they are re-sent in order with the unacknowledged ones. (The
//! outbox's `requeued_total` also counts rows that were ready but not yet published when
//! the connection ended.)
//!
//! # Failover (`[uplink] hosts`)
//!
//! A clustered platform lists its brokers: `hosts = ["a:8883", "b:8883", "c:8883"]`. The link
//! starts with the first; when a connection fails or ends it goes to the next one *at once*
//! (a node that died should not cost a backoff), and only after a whole round of failures
//! waits the backoff before the next round. The broker it is on is in `gateway status`
//! (`link.host`/`port`). Nothing of a session is carried over: the new connection is clean
//! like any other, the rows that were in flight are requeued and re-sent first (see
//! "Reconnect and requeue"), so the platform may get the last window again. **The platform's
//! contract**: deduplicate by the alert event's `id` + `seq` (telemetry by its key); within a
//! site, the first arrival of each `seq` is in order per priority class. A QoS 1 message a
//! dying node acknowledged is the cluster's to keep (NATS JetStream and RabbitMQ persist it
//! before the PUBACK); one it did not acknowledge is re-sent.
//!
//! # Priority
//!
//! The outbox hands rows out by class — red/orange (alarm), yellow, blue, telemetry — then by
//! `seq`; so when a backlog drains after an outage, alarms go first.
//!
//! # Disk quota and `buffer_full`
//!
//! The housekeeping task calls `enforce_quota(storage.quota_mb)` every second, whatever the
//! link state (a backlog grows precisely while the link is down), so the overshoot is bounded
//! by one second of enqueues. Eviction order and counting are the outbox's (telemetry, then
//! blue, then yellow; red/orange never). When only alarm rows remain and they alone exceed
//! the quota, housekeeping raises a local `buffer_full` alert (orange, source
//! `gateway:outbox`) through the alert task — the single database writer — and resolves it
//! once the outbox fits again. It holds only a *weak* sender to the alert task, so the
//! ordered shutdown is not held up by it.
//!
//! # Status
//!
//! The link and housekeeping keep [`UplinkStatus`] (link state, counters, quota,
//! `buffer_full`) up to date; its [`LinkSnapshot`] is the uplink's part of the gateway status
//! ([`crate::status`] writes `status.json` and renders `gateway status`).
//!
//! # Upstream commands
//!
//! The link subscribes (QoS 1) to `{prefix}/{site}/commands/ack`. A payload
//! `{"id":"<alert id>","by":"<who>"}` acknowledges that alert through the alert task, exactly
//! as a staff member on the console would; malformed commands are logged and ignored.

mod backoff;
mod commands;
mod housekeeping;
mod link;
mod status;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_config::Config;
use rumqttc::QoS;
use tokio::sync::broadcast;

use crate::alerts::{Alert, AlertBus};
use crate::outbox::{Outbox, OutboxError};
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::supervise::Severity;

pub use backoff::Backoff;
pub use commands::{parse_ack, AckCommand};
pub use housekeeping::HousekeepingSettings;
pub use link::Link;
pub use status::{now_ms, LinkSnapshot, LinkState, UplinkStatus};

/// First reconnect delay; doubled per failed attempt up to `retry_backoff_max_s`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// How long the link keeps waiting for PUBACKs of rows already published once shutdown
/// reaches the outbox stage (no new rows are published then).
pub const FLUSH_GRACE: Duration = Duration::from_millis(1500);

/// Everything that can go wrong in the uplink module.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink: cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("uplink: {path} contains no PEM certificate ({what})")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("uplink: {path} contains no PEM private key (uplink.tls.key)")]
    NoPrivateKey { path: PathBuf },
    #[error(
        "uplink: no trusted CA certificates: set uplink.tls.ca or install the system CA store"
    )]
    NoTrustAnchors,
    #[error("uplink TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("uplink: outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("uplink: the outbox lock was poisoned by a panic")]
    Poisoned,
    #[error("uplink: a blocking outbox job failed: {0}")]
    Join(String),
    #[error("uplink: the MQTT client's request queue refused a publish: {0}")]
    Client(String),
}

/// Connection settings of the link, resolved from `[uplink]` (files read, defaults applied).
#[derive(Clone)]
pub struct LinkSettings {
    /// The broker of the current attempt: one of `endpoints`.
    pub host: String,
    pub port: u16,
    /// Every broker of `[uplink] host`/`hosts`, in the order they are tried; the link moves
    /// to the next one when a connection fails or ends.
    pub endpoints: Vec<(String, u16)>,
    pub client_id: String,
    /// TLS client configuration (ring provider); `None` = plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// (username, password).
    pub credentials: Option<(String, String)>,
    pub site: String,
    pub topic_prefix: String,
    pub qos: QoS,
    pub keep_alive: Duration,
    /// Unacknowledged publishes at once; also rumqttc's `inflight` limit.
    pub max_inflight: u16,
    /// Rows read from the outbox per fetch.
    pub batch: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often an idle link (empty backlog) looks for new rows when no alert event woke it.
    pub idle_poll: Duration,
    /// TCP + TLS + CONNACK must complete within this time.
    pub connect_timeout: Duration,
    /// Publish `{prefix}/{site}/heartbeat` this often while connected (the station link:
    /// the station tells a silent compound from a quiet one).
    pub heartbeat: Option<Duration>,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("tls", &self.tls.is_some())
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .field("topic_prefix", &self.topic_prefix)
            .field("qos", &self.qos)
            .field("max_inflight", &self.max_inflight)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl LinkSettings {
    /// Resolves `config.uplink`; `Ok(None)` when there is no `[uplink]` or it is disabled.
    /// Reads the TLS files now, so a broken file is a start-up error (edge-config has read
    /// the password file).
    pub fn from_config(config: &Config) -> Result<Option<LinkSettings>, UplinkError> {
        match config.uplink.as_ref().filter(|u| u.enabled) {
            Some(up) => Self::from_upstream(config, up).map(Some),
            None => Ok(None),
        }
    }

    /// Resolves `[station_link]` the same way; `Ok(None)` when absent or disabled.
    pub fn station_from_config(config: &Config) -> Result<Option<LinkSettings>, UplinkError> {
        match config.station_link.as_ref().filter(|u| u.enabled) {
            Some(up) => Self::from_upstream(config, up).map(Some),
            None => Ok(None),
        }
    }

    /// The settings of one upstream section of `config`.
    fn from_upstream(
        config: &Config,
        up: &edge_config::Uplink,
    ) -> Result<LinkSettings, UplinkError> {
        // edge-config has read `password_file` into `password` already.
        let credentials = up
            .username
            .clone()
            .map(|user| (user, up.password.clone().unwrap_or_default()));
        let tls = up.tls.as_ref().map(tls::client_config).transpose()?;
        let endpoints = up.endpoints();
        let (host, port) = endpoints
            .first()
            .cloned()
            .unwrap_or_else(|| (up.host.clone(), up.port()));
        Ok(LinkSettings {
            host,
            port,
            endpoints,
            client_id: up.client_id(&config.site.id),
            tls,
            credentials,
            site: config.site.id.clone(),
            topic_prefix: up.topic_prefix.clone(),
            qos: match up.qos {
                edge_config::Qos::ExactlyOnce => QoS::ExactlyOnce,
                // QoS 0 is refused by validation: alerts are never sent at most once.
                edge_config::Qos::AtLeastOnce | edge_config::Qos::AtMostOnce => QoS::AtLeastOnce,
            },
            keep_alive: Duration::from_secs(u64::from(up.keep_alive_s.max(5))),
            max_inflight: u16::try_from(up.outbox.max_inflight.clamp(1, 65_535)).unwrap_or(64),
            batch: usize::try_from(up.outbox.batch.max(1)).unwrap_or(256),
            backoff_base: BACKOFF_BASE,
            backoff_max: Duration::from_secs(u64::from(up.outbox.retry_backoff_max_s.max(1))),
            idle_poll: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(5),
            heartbeat: None,
        })
    }

    /// Moves to the endpoint after the current one (wrapping); true when that completes a
    /// round, i.e. every endpoint has been tried since the first.
    pub fn next_endpoint(&mut self) -> bool {
        let n = self.endpoints.len();
        if n <= 1 {
            return true;
        }
        let current = (self.host.clone(), self.port);
        let i = self
            .endpoints
            .iter()
            .position(|e| *e == current)
            .unwrap_or(0);
        let next = (i + 1) % n;
        (self.host, self.port) = self.endpoints[next].clone();
        next == 0
    }

    /// `{prefix}/{site}/commands/ack`.
    pub fn ack_command_topic(&self) -> String {
        format!("{}/{}/commands/ack", self.topic_prefix, self.site)
    }
}

/// The outbox shared by the link and housekeeping tasks. Every call runs on a blocking thread.
#[derive(Clone)]
pub struct SharedOutbox {
    /// One `Outbox` (one connection, one in-flight set) for both tasks: the in-flight set
    /// must be the link's, and quota eviction must see the same connection's view. A std
    /// mutex is right here: it is only ever locked on blocking threads, for one SQLite call.
    inner: Arc<Mutex<Outbox>>,
}

impl SharedOutbox {
    pub fn new(outbox: Outbox) -> Self {
        Self {
            inner: Arc::new(Mutex::new(outbox)),
        }
    }

    /// Runs `f` on the outbox on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, UplinkError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Outbox) -> Result<T, OutboxError> + Send + 'static,
    {
        self.spawn(f)
            .await
            .map_err(|e| UplinkError::Join(e.to_string()))?
    }

    /// Like [`SharedOutbox::call`] but returns the join handle, so the caller can keep
    /// polling its MQTT connection while the job runs.
    pub fn spawn<T, F>(&self, f: F) -> tokio::task::JoinHandle<Result<T, UplinkError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Outbox) -> Result<T, OutboxError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut outbox = inner.lock().map_err(|_| UplinkError::Poisoned)?;
            f(&mut outbox).map_err(UplinkError::from)
        })
    }
}

/// The outbox destination of the street station link.
pub const STATION_DEST: u8 = 1;

/// How often the station link says it is alive; a station raises `compound_offline` after
/// `offline_after_s` (90 s by default: a fault shows within 100 s) without one.
pub const STATION_HEARTBEAT: Duration = Duration::from_secs(20);

/// Registers the outbox's destinations for `config` (the platform, and the street station
/// when `[station_link]` is configured): call before any alert can be committed, so every
/// alert gets its station copy.
pub fn register_destinations(config: &Config, db_path: &Path) -> Result<(), UplinkError> {
    let outbox = Outbox::open(db_path)?;
    let station =
        config
            .station_link
            .as_ref()
            .filter(|s| s.enabled)
            .map(|_| crate::outbox::Destination {
                dest: STATION_DEST,
                name: "station".to_owned(),
                streams: vec![crate::outbox::Stream::Alerts],
            });
    crate::outbox::register_destinations(outbox.connection(), station.as_slice())?;
    Ok(())
}

/// Starts the link to the street station (`[station_link]`), if configured: the same link as
/// the platform's, draining the station's own outbox rows (alerts only), so a station that is
/// down holds back nothing of the platform's and the other way round. Staff at the station
/// acknowledge through it (`{prefix}/{site}/commands/ack` on the station's broker).
pub fn start_station(
    config: &Config,
    db_path: &Path,
    stages: &Stages,
    alert_inputs: &AlertBus,
    events: broadcast::Receiver<Alert>,
) -> Result<Option<Arc<UplinkStatus>>, UplinkError> {
    let Some(mut settings) = LinkSettings::station_from_config(config)? else {
        return Ok(None);
    };
    settings.heartbeat = Some(STATION_HEARTBEAT);
    let outbox = SharedOutbox::new(Outbox::open(db_path)?.for_destination(STATION_DEST));
    let status = Arc::new(UplinkStatus::new(Some(&settings)));
    tracing::info!(
        host = %settings.host, port = settings.port, tls = settings.tls.is_some(),
        client_id = %settings.client_id, "station link starting"
    );
    let (link_status, commands) = (status.clone(), alert_inputs.downgrade());
    stages.supervise(
        Stage::Outbox,
        "station_link",
        Severity::AlarmPath,
        move |token| {
            let link = Link::new(settings.clone(), outbox.clone(), link_status.clone())
                .with_commands(commands.clone())
                .with_wake(events.resubscribe());
            async move {
                link.run(token).await;
                Ok(())
            }
        },
    );
    Ok(Some(status))
}

/// Starts the outbox housekeeping (quota, `buffer_full`) and, when `[uplink]` is
/// configured and enabled, the link, as tasks of [`Stage::Outbox`]. Returns the live status.
///
/// `alert_inputs` is only kept as a weak sender (see the module docs); `events` wakes an
/// idle link as soon as a new alert event is committed.
pub fn start(
    config: &Config,
    db_path: &Path,
    stages: &Stages,
    alert_inputs: &AlertBus,
    events: broadcast::Receiver<Alert>,
) -> Result<Arc<UplinkStatus>, UplinkError> {
    let link_settings = LinkSettings::from_config(config)?;
    let outbox = SharedOutbox::new(Outbox::open(db_path)?);
    let status = Arc::new(UplinkStatus::new(link_settings.as_ref()));
    let housekeeping = HousekeepingSettings {
        quota_bytes: config.storage.quota_mb.saturating_mul(1024 * 1024),
        every: Duration::from_secs(1),
    };
    let weak_inputs = alert_inputs.downgrade();
    {
        let (outbox, status) = (outbox.clone(), status.clone());
        stages.supervise(
            Stage::Outbox,
            "housekeeping",
            Severity::Degraded,
            move |token| {
                let run = housekeeping::run(
                    housekeeping.clone(),
                    outbox.clone(),
                    status.clone(),
                    weak_inputs.clone(),
                    token,
                );
                async move {
                    run.await;
                    Ok(())
                }
            },
        );
    }
    match link_settings {
        Some(settings) => {
            tracing::info!(
                host = %settings.host, port = settings.port, tls = settings.tls.is_some(),
                client_id = %settings.client_id, max_inflight = settings.max_inflight,
                qos = settings.qos as u8,
                "uplink starting"
            );
            let (status, commands) = (status.clone(), alert_inputs.downgrade());
            stages.supervise(Stage::Outbox, "uplink", Severity::AlarmPath, move |token| {
                let link = Link::new(settings.clone(), outbox.clone(), status.clone())
                    .with_commands(commands.clone())
                    .with_wake(events.resubscribe());
                async move {
                    link.run(token).await;
                    Ok(())
                }
            });
        }
        None => tracing::info!("no [uplink] configured: alerts stay in the local outbox"),
    }
    Ok(status)
}
