//! Home Assistant MQTT discovery (`[homeassistant] enabled = true`).
//!
//! The gateway announces, with retained discovery configs under `[homeassistant] prefix`
//! on the broker the sensors use (embedded, or `[broker.external]`):
//!
//! - each hazard device: a `binary_sensor` "Alarm" (ON while the gateway has an active
//!   alert of the device's hazard) and `sensor`s for its battery and readings;
//! - each enabled camera: `sensor`s counting people and bicycles/e-bikes in view;
//! - the gateway itself: active alerts, fault, and with an `[uplink]` the platform link and
//!   the outbox backlog.
//!
//! Ids and topics are described in [`discovery`]; the state they read in [`state`]. Every
//! entity's `availability` is the gateway's own topic `shouwang/{site}/ha/availability`
//! (`online` retained at each connection; the client's last will, retained, says `offline`)
//! and, for devices and cameras, their own `available` field.
//!
//! # Life
//!
//! At each start the task subscribes to `{prefix}/+/shouwang_{site}/+/config`, gathers what
//! the broker retains there, and clears (empty retained message) every config that is not
//! configured any more — found retained, or remembered from an earlier run
//! ([`memory`]: the embedded broker keeps nothing over a restart). It then publishes
//! `online`, every config and every state. States are published again on every committed
//! alert event (at once) and every `readings_interval_s` (only those that changed). When
//! Home Assistant announces itself (`{prefix}/status` = `online`) everything is published
//! again, the clears included. A config or state of this gateway published by someone else
//! (possible on an external broker; the embedded broker refuses it, see
//! [`crate::broker::acl`]) is answered by publishing the gateway's own again.
//!
//! # Shutdown and crashes
//!
//! On a clean shutdown (the alert events end) the task publishes `offline` (retained) and
//! disconnects. A crash of the task alone makes the broker publish its last will (`offline`,
//! retained) and the supervisor restarts it, which publishes `online` again. A crash of the
//! whole process takes the embedded broker with it: Home Assistant loses its connection
//! and shows every MQTT entity unavailable until it reconnects to the restarted gateway,
//! which announces everything afresh. On an external broker the last will marks the
//! entities unavailable.

pub mod discovery;
pub mod memory;
pub mod state;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_config::Config;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::alerts::Alert;
use crate::ingest::board::DeviceBoard;
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::supervise::{Health, Severity};
use crate::uplink::UplinkStatus;
use crate::video::CameraSlot;

use discovery::{Entity, Naming, Owner};
use memory::Memory;
use state::{AlertBook, GatewayFigures};

/// How long the start waits for retained configs after the last one arrived.
const SCAN_QUIET: Duration = Duration::from_millis(500);
/// The longest the start waits for retained configs at all.
const SCAN_MAX: Duration = Duration::from_secs(3);
/// Home Assistant's birth message is answered at most this often.
const BIRTH_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The outbox backlog is counted (a walk of its index) at most this often.
const BACKLOG_EVERY: Duration = Duration::from_secs(30);
/// Messages from the broker waiting for the task (more are dropped and counted).
const INBOUND_CAPACITY: usize = 1024;

/// Why something of the Home Assistant publication failed.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("cannot read the active alerts from {path}: {source}")]
    Store {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("active alert {0} in the store is not readable: {1}")]
    Decode(String, serde_json::Error),
    #[error("outbox figures: {0}")]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("announcement memory {path}: {source}")]
    Memory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("publish on {topic} failed: {source}")]
    Publish {
        topic: String,
        source: rumqttc::ClientError,
    },
    #[error("the broker connection task ended")]
    Disconnected,
}

/// Everything the Home Assistant task reads.
pub struct Sources {
    pub config: Arc<Config>,
    /// The gateway's client options on the sensor broker (embedded or external).
    pub options: MqttOptions,
    pub db_path: PathBuf,
    pub board: Arc<DeviceBoard>,
    pub uplink: Arc<UplinkStatus>,
    pub health: Arc<Health>,
    pub cameras: CameraSlot,
    /// The configuration in force: a reload re-announces (entities of removed devices and
    /// cameras cleared, new ones announced).
    pub live: tokio::sync::watch::Receiver<Arc<Config>>,
}

/// Starts the Home Assistant publisher as a supervised stage (if enabled). `events`: the
/// committed alert events, subscribed before the task reads the active alerts from the
/// store, so no event falls between the two.
pub fn spawn(sources: Sources, events: broadcast::Receiver<Alert>, stages: &Stages) {
    if !sources.config.homeassistant.enabled {
        return;
    }
    // The receiver outlives a restart of the stage: events committed meanwhile wait in it.
    let events = Arc::new(tokio::sync::Mutex::new(events));
    let shared = Arc::new(sources);
    stages.supervise(
        Stage::Processing,
        "homeassistant",
        Severity::Degraded,
        move |token| {
            let (shared, events) = (shared.clone(), events.clone());
            async move {
                let mut events = events.lock_owned().await;
                run(&shared, &mut events, token)
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    );
}

/// A message from the broker, or a (re)connection.
#[derive(Debug)]
enum Inbound {
    Connected,
    Message { topic: String, payload: Vec<u8> },
}

/// The task: announce, then follow events, ticks and the broker until the events end.
async fn run(
    s: &Sources,
    events: &mut broadcast::Receiver<Alert>,
    token: CancellationToken,
) -> Result<(), HaError> {
    let naming = Naming::new(&s.config);
    let (client, event_loop) = connect(&s.options, &naming);
    let (in_tx, mut inbound) = mpsc::channel(INBOUND_CAPACITY);
    let stop = CancellationToken::new();
    let driver = tokio::spawn(drive(event_loop, in_tx, stop.clone()));
    let mut p = Publisher::new(s, naming, client);
    p.book = load_active(&s.db_path).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "Home Assistant: active alerts unknown until their next event");
        AlertBook::default()
    });
    let result = p.serve(s, events, &mut inbound, &token).await;
    p.go_offline().await;
    // The driver ends once the DISCONNECT (after the `offline` publish) is written.
    if tokio::time::timeout(Duration::from_secs(2), driver)
        .await
        .is_err()
    {
        stop.cancel();
    }
    result
}

/// The client, with `offline` (retained) as its last will.
fn connect(options: &MqttOptions, naming: &Naming) -> (AsyncClient, EventLoop) {
    let mut o = options.clone();
    o.set_last_will(LastWill::new(
        naming.availability_topic(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    crate::broker::internal_client(&o, "homeassistant")
}

/// Polls the event loop, handing connections and messages to the task, until `stop`.
async fn drive(mut events: EventLoop, out: mpsc::Sender<Inbound>, stop: CancellationToken) {
    let mut dropped = 0u64;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = events.poll() => e,
        };
        let item = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Inbound::Connected,
            Ok(Event::Incoming(Packet::Publish(p))) => Inbound::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "Home Assistant: broker connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if out.try_send(item).is_err() {
            dropped += 1;
            tracing::warn!(
                dropped,
                "Home Assistant: inbound message dropped (task busy)"
            );
        }
    }
}

/// The active alerts in the store (read-only), as an [`AlertBook`].
async fn load_active(db_path: &std::path::Path) -> Result<AlertBook, HaError> {
    let path = db_path.to_owned();
    let bodies = tokio::task::spawn_blocking(move || {
        let store = |source| HaError::Store {
            path: path.clone(),
            source,
        };
        let conn = crate::db::open_reader(&path).map_err(store)?;
        let mut stmt = conn
            .prepare("SELECT id, body FROM alerts WHERE active = 1")
            .map_err(store)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(store)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(store)
    })
    .await
    .map_err(|_| HaError::Disconnected)??;
    let mut book = AlertBook::default();
    for (id, body) in bodies {
        let alert: Alert = serde_json::from_str(&body).map_err(|e| HaError::Decode(id, e))?;
        book.apply(&alert);
    }
    Ok(book)
}

/// The publishing side: what was announced and last published, per topic.
struct Publisher {
    config: Arc<Config>,
    naming: Naming,
    client: AsyncClient,
    book: AlertBook,
    entities: Vec<Entity>,
    /// Config topic → payload, as announced.
    configs: HashMap<String, Vec<u8>>,
    /// State topic → the payload last published.
    states: HashMap<String, Vec<u8>>,
    /// Config topics to keep clear (removed entities).
    removed: Vec<String>,
    memory_path: PathBuf,
    last_birth: Option<tokio::time::Instant>,
    /// Publishes the client refused since start (logged with each failure).
    failures: u64,
    /// The last backlog count and when it was taken (counting is O(backlog): not per event).
    backlog: Option<(tokio::time::Instant, Option<u64>)>,
}

impl Publisher {
    fn new(s: &Sources, naming: Naming, client: AsyncClient) -> Self {
        let config = s.live.borrow().clone();
        let (entities, configs) = Self::entities_of(&config, &naming);
        Publisher {
            config,
            naming,
            client,
            book: AlertBook::default(),
            entities,
            configs,
            states: HashMap::new(),
            removed: Vec::new(),
            memory_path: Memory::path(&s.db_path),
            last_birth: None,
            failures: 0,
            backlog: None,
        }
    }

    /// The entities of `config` and their config payloads by topic.
    fn entities_of(config: &Config, naming: &Naming) -> (Vec<Entity>, HashMap<String, Vec<u8>>) {
        let entities = discovery::entities(config);
        let configs = entities
            .iter()
            .map(|e| {
                let payload = discovery::config_payload(config, naming, e);
                (naming.config_topic(e), payload.to_string().into_bytes())
            })
            .collect();
        (entities, configs)
    }

    /// A reload: announces the entities of `config`, clearing those it no longer has.
    async fn reconfigure(&mut self, s: &Sources, config: Arc<Config>) {
        let announced: BTreeSet<String> = self.configs.keys().cloned().collect();
        (self.entities, self.configs) = Self::entities_of(&config, &self.naming);
        self.config = config;
        self.remember(&announced);
        self.announce(s).await;
    }

    /// Publishes `payload` retained (QoS 1); a refused publish is logged and counted.
    async fn put(&mut self, topic: &str, payload: Vec<u8>) {
        let r = self
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await;
        if let Err(source) = r {
            self.failures += 1;
            let e = HaError::Publish {
                topic: topic.to_owned(),
                source,
            };
            tracing::error!(error = %e, failures = self.failures, "Home Assistant publish failed");
        }
    }

    /// Waits for the first connection, clears stale configs, announces everything, then
    /// follows events, ticks and the broker until the events end or `token` is cancelled.
    async fn serve(
        &mut self,
        s: &Sources,
        events: &mut broadcast::Receiver<Alert>,
        inbound: &mut mpsc::Receiver<Inbound>,
        token: &CancellationToken,
    ) -> Result<(), HaError> {
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                m = inbound.recv() => match m {
                    Some(Inbound::Connected) => break,
                    Some(_) => continue,
                    None => return Err(HaError::Disconnected),
                },
            }
        }
        self.subscribe().await;
        let retained = self.scan(inbound).await;
        self.remember(&retained);
        self.announce(s).await;
        let period = Duration::from_secs(u64::from(s.config.homeassistant.readings_interval_s));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut live = s.live.clone();
        live.mark_unchanged();
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                Ok(()) = live.changed() => {
                    let config = live.borrow_and_update().clone();
                    self.reconfigure(s, config).await;
                }
                e = events.recv() => match e {
                    Ok(alert) => self.on_event(s, &alert).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "Home Assistant lagged; reloading active alerts");
                        if let Ok(book) = load_active(&s.db_path).await { self.book = book; }
                        self.publish_states(s, true).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tick.tick() => self.publish_states(s, true).await,
                m = inbound.recv() => match m {
                    Some(m) => self.on_inbound(s, m).await,
                    None => return Err(HaError::Disconnected),
                },
            }
        }
    }

    async fn subscribe(&mut self) {
        for filter in [
            self.naming.config_filter(),
            self.naming.ha_status_topic(),
            format!("shouwang/{}/ha/#", self.naming.site),
        ] {
            if let Err(e) = self
                .client
                .subscribe(filter.clone(), QoS::AtLeastOnce)
                .await
            {
                tracing::error!(error = %e, %filter, "Home Assistant: subscribe failed");
            }
        }
    }

    /// The config topics the broker retains under this gateway's node (non-empty ones),
    /// gathered until no more arrive for [`SCAN_QUIET`] (at most [`SCAN_MAX`]).
    async fn scan(&mut self, inbound: &mut mpsc::Receiver<Inbound>) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + SCAN_MAX;
        loop {
            let quiet = (tokio::time::Instant::now() + SCAN_QUIET).min(deadline);
            match tokio::time::timeout_at(quiet, inbound.recv()).await {
                Ok(Some(Inbound::Message { topic, payload })) => {
                    if topic.ends_with("/config") && !payload.is_empty() {
                        found.insert(topic);
                    }
                }
                Ok(Some(Inbound::Connected)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        found
    }

    /// Works out the configs to clear and saves the memory for the next start.
    fn remember(&mut self, retained: &BTreeSet<String>) {
        let before = Memory::load(&self.memory_path).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Home Assistant: earlier announcements unknown");
            Memory::default()
        });
        let current: BTreeSet<String> = self.configs.keys().cloned().collect();
        let next = before.next(&current, retained);
        self.removed = next.removed.clone();
        if let Err(e) = next.save(&self.memory_path) {
            tracing::warn!(error = %e, "Home Assistant: announcements not remembered");
        }
    }

    /// Clears removed configs, publishes `online`, every config and every state.
    async fn announce(&mut self, s: &Sources) {
        for topic in self.removed.clone() {
            self.put(&topic, Vec::new()).await;
        }
        self.put(&self.naming.availability_topic(), b"online".to_vec())
            .await;
        let mut configs: Vec<(String, Vec<u8>)> = self.configs.clone().into_iter().collect();
        configs.sort();
        for (topic, payload) in configs {
            self.put(&topic, payload).await;
        }
        self.publish_states(s, false).await;
        tracing::info!(
            entities = self.entities.len(),
            removed = self.removed.len(),
            prefix = %self.naming.prefix,
            "announced to Home Assistant"
        );
    }

    async fn on_event(&mut self, s: &Sources, alert: &Alert) {
        if self.book.apply(alert) {
            self.publish_states(s, true).await;
        }
        crate::supervise::fault_point("homeassistant").await;
    }

    async fn on_inbound(&mut self, s: &Sources, m: Inbound) {
        match m {
            Inbound::Connected => {
                // A new session: subscriptions and (after a will) `online` are gone.
                self.subscribe().await;
                self.announce(s).await;
            }
            Inbound::Message { topic, payload } if topic == self.naming.ha_status_topic() => {
                let due = self
                    .last_birth
                    .is_none_or(|t| t.elapsed() >= BIRTH_MIN_INTERVAL);
                if payload == b"online" && due {
                    self.last_birth = Some(tokio::time::Instant::now());
                    self.announce(s).await;
                }
            }
            Inbound::Message { topic, payload } => self.reassert(&topic, &payload).await,
        }
    }

    /// Someone else's config or state on the gateway's topics: publish the gateway's own
    /// again (or clear a config that is not the gateway's at all).
    async fn reassert(&mut self, topic: &str, payload: &[u8]) {
        let own = if topic == self.naming.availability_topic() {
            Some(b"online".to_vec())
        } else {
            self.configs
                .get(topic)
                .or_else(|| self.states.get(topic))
                .cloned()
        };
        match own {
            Some(own) if own != payload => {
                tracing::warn!(topic, "Home Assistant: foreign message on the gateway's topic; publishing the gateway's own again");
                self.put(topic, own).await;
            }
            None if topic.ends_with("/config") && !payload.is_empty() => {
                tracing::warn!(
                    topic,
                    "Home Assistant: foreign discovery config under the gateway's node; cleared"
                );
                self.put(topic, Vec::new()).await;
            }
            _ => {}
        }
    }

    /// Publishes every owner's state; with `changed_only`, only those that changed.
    async fn publish_states(&mut self, s: &Sources, changed_only: bool) {
        let mut states = self.device_states(s);
        states.extend(self.camera_states(s));
        states.push((
            self.naming.state_topic(&Owner::Gateway),
            state::gateway_state(self.gateway_figures(s).await, &self.book),
        ));
        for (topic, value) in states {
            let payload = value.to_string().into_bytes();
            if changed_only && self.states.get(&topic) == Some(&payload) {
                continue;
            }
            self.states.insert(topic.clone(), payload.clone());
            self.put(&topic, payload).await;
        }
    }

    fn device_states(&self, s: &Sources) -> Vec<(String, Value)> {
        let board = s.board.snapshot();
        state::announced_devices(&self.config)
            .into_iter()
            .map(|(_, id, kind)| {
                let seen = board.get(&id).cloned().unwrap_or_default();
                let owner = Owner::Device {
                    id: id.clone(),
                    kind,
                };
                let value = state::device_state(&id, kind, &seen, &self.book);
                (self.naming.state_topic(&owner), value)
            })
            .collect()
    }

    fn camera_states(&self, s: &Sources) -> Vec<(String, Value)> {
        let running = s.cameras.get();
        self.config
            .cameras
            .iter()
            .filter(|c| c.enabled)
            .map(|c| {
                let counts = running
                    .as_ref()
                    .and_then(|cams| cams.iter().find(|(id, _)| id == &c.id))
                    .map(|(_, st)| {
                        (
                            st.persons_in_view.load(Ordering::Relaxed),
                            st.two_wheelers_in_view.load(Ordering::Relaxed),
                        )
                    });
                let owner = Owner::Camera(c.id.clone());
                let value = state::camera_state(&c.id, counts, &self.book);
                (self.naming.state_topic(&owner), value)
            })
            .collect()
    }

    /// The uplink's state, the outbox backlog (at most every [`BACKLOG_EVERY`]) and the
    /// faulted stages.
    async fn gateway_figures(&mut self, s: &Sources) -> GatewayFigures {
        let now = tokio::time::Instant::now();
        let backlog = match self.backlog {
            Some((at, n)) if now.duration_since(at) < BACKLOG_EVERY => n,
            _ => {
                let n = count_backlog(&s.db_path).await;
                self.backlog = Some((now, n));
                n
            }
        };
        GatewayFigures {
            uplink_connected: s.uplink.state() == crate::uplink::LinkState::Connected,
            backlog,
            faulted_stages: s.health.snapshot().faults().len(),
        }
    }

    /// Publishes `offline` (retained) and disconnects cleanly (no last will).
    async fn go_offline(&mut self) {
        self.put(&self.naming.availability_topic(), b"offline".to_vec())
            .await;
        if let Err(e) = self.client.disconnect().await {
            tracing::warn!(error = %e, "Home Assistant: disconnect failed");
        }
    }
}

/// The outbox backlog, read-only; `None` when the database cannot tell.
async fn count_backlog(db_path: &std::path::Path) -> Option<u64> {
    let path = db_path.to_owned();
    let backlog = tokio::task::spawn_blocking(move || -> Result<u64, HaError> {
        let conn = crate::db::open_reader(&path).map_err(|source| HaError::Store {
            path: path.clone(),
            source,
        })?;
        Ok(crate::outbox::stats(&conn)?.backlog_total)
    })
    .await;
    match backlog {
        Ok(Ok(n)) => Some(n),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "Home Assistant: backlog unknown");
            None
        }
        Err(_) => None,
    }
}
