//! The topology: every channel and task of the sensor side, built in one place.
//!
//! Read it like the diagram in the crate docs ([`crate`]): each arrow below is a bounded
//! channel created in [`start_with_reserve`], each box a supervised task of a shutdown
//! [`Stage`] (stopped inputs → processing → outbox flush → database).
//!
//! ```text
//! Inputs       broker ─▶ ingest ──(readings: Ingested, READINGS_CAPACITY)──┐
//!              self_test_probe ─(MQTT, the sensors' listener)─▶ broker     │
//!                                                                          ▼
//! Processing   rules ──(AlertBus: AlertInput, ALERT_INPUT_CAPACITY)──▶ alerts (thread)
//!                │ └─(telemetry: Record, TELEMETRY_CAPACITY, never waits)─▶ telemetry (thread)
//!              faults ─(AlertBus)─▶ alerts
//!              alerts ─(events: broadcast<Alert>, EVENTS_CAPACITY)─▶ publisher (local MQTT)
//!              alerts ─(commands: Command, COMMANDS_CAPACITY)─▶ actuators (MQTT)
//! Outbox       alerts ─(events)─▶ uplink (wake-up);  housekeeping (quota, buffer_full);
//!              status (every stage's snapshot ─▶ status.json)
//! ```
//!
//! Back edges, named: the uplink (platform `commands/ack`) and housekeeping (`buffer_full`)
//! send into the alert task through a weak [`AlertBus`] (they never keep it alive); the
//! fault reporter through a strong one; a staff resolve resets its rule condition through
//! [`crate::rules::reset`] (alerts → rules); actuator confirmations come back as readings
//! (actuators → broker → ingest → rules → alerts). The daemon adds the cameras, the console
//! and the resident publisher from the handles in [`Running`] (`alert_inputs`, `events`).
//!
//! Channels are bounded: a slow stage back-pressures the one before it instead of growing
//! memory. The alert task is the single writer of alert events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edge_config::{BrokerMode, Config};
use rumqttc::{AsyncClient, EventLoop, MqttOptions};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alerts::linkage::Command;
use crate::alerts::task::{self as alert_task, AlertInput, AlertTask, AlertTaskStats, Trigger};
use crate::alerts::{AlertBus, AlertStore, EventFeed, Lifecycle, Source};
use crate::broker::{self, internal_client_id, BrokerError, BrokerSettings, EmbeddedBroker};
use crate::ingest::{self, Ingest, IngestStats, Ingested};
use crate::publish;
use crate::reserve::Reserve;
use crate::rules::{Engine, Reading};
use crate::selftest::{self, SelfTest};
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::status;
use crate::supervise::{fault_point, Health, Severity, StageResult};
use crate::telemetry::{self, TelemetryError, TelemetryStats};

/// Readings waiting for the rules.
const READINGS_CAPACITY: usize = 4096;
/// Rule edges and staff actions waiting for the alert task.
const ALERT_INPUT_CAPACITY: usize = 1024;
/// Actuator commands waiting to be published.
const COMMANDS_CAPACITY: usize = 256;
/// Readings waiting for the telemetry writer (it commits up to 1000 per transaction).
const TELEMETRY_CAPACITY: usize = 16_384;
/// Committed alert events waiting for publishers (console, residents, local MQTT).
const EVENTS_CAPACITY: usize = 1024;

/// Errors building the topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] crate::alerts::store::StoreError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("external broker: {0}")]
    External(String),
    #[error(transparent)]
    Uplink(#[from] crate::uplink::UplinkError),
}

/// Handles the daemon keeps: where the broker is, counters, the way to send staff actions.
pub struct Running {
    /// Kept alive for the process: dropping it closes the listeners.
    pub broker: Option<EmbeddedBroker>,
    /// Where sensors connect (the embedded broker's real address).
    pub broker_addr: Option<SocketAddr>,
    /// How the gateway's own MQTT clients reach the sensor broker (internal credentials
    /// included); give each client an id from [`crate::broker::internal_client_id`].
    pub internal_options: MqttOptions,
    pub ingest_stats: Arc<IngestStats>,
    /// What every device last said (for the console's devices panel).
    pub device_board: Arc<crate::ingest::board::DeviceBoard>,
    pub telemetry_stats: Arc<TelemetryStats>,
    /// Alert events waiting for a database that refused them (disk full).
    pub alert_stats: Arc<AlertTaskStats>,
    /// The disk reserve, if the daemon keeps one.
    pub reserve: Option<Arc<Reserve>>,
    /// The typed way into the alert task, for the console and cameras. Holding it does not
    /// hold up shutdown: the alert task stops by its stage's token, not when senders go.
    pub alert_inputs: AlertBus,
    /// Committed alert events, for the console and resident notices; it does not keep the
    /// event channel open once the alert task has stopped.
    pub events: EventFeed,
    /// Live uplink state and counters (also written to `status.json` every second).
    pub uplink: Arc<crate::uplink::UplinkStatus>,
    /// The street station link's, when `[station_link]` is configured.
    pub station_link: Option<Arc<crate::uplink::UplinkStatus>>,
    /// Every supervised stage's state and the self-test.
    pub health: Arc<Health>,
    /// Set once the cameras run, so that `status.json` carries their counters.
    pub cameras: crate::video::CameraSlot,
    /// A reloaded configuration sent here reaches ingest, which passes it down the alarm
    /// path in order (ingest → rules → alert task; see [`crate::reload`]).
    pub reload: tokio::sync::watch::Sender<Arc<Config>>,
}

/// Starts broker, ingest, rules, alerts and local publication as tasks of `stages`.
pub fn start(
    config: Arc<Config>,
    db_path: &Path,
    stages: &Stages,
) -> Result<Running, TopologyError> {
    start_with_reserve(config, db_path, stages, None)
}

/// [`start`] with a disk reserve that the alert task gives up when the disk is full.
///
/// Every stage runs supervised (see [`crate::supervise`]): what must outlive a restart —
/// channel ends, the rules' state, counters — is created here and shared with the stage.
pub fn start_with_reserve(
    config: Arc<Config>,
    db_path: &Path,
    stages: &Stages,
    reserve: Option<Arc<Reserve>>,
) -> Result<Running, TopologyError> {
    let health = stages.health();
    let self_test = new_self_test(&config, &health);
    let ingest = Ingest::new(config.clone()).with_self_test(self_test.clone());
    let (mut broker, options) = connect(&config, &ingest)?;
    let broker_addr = broker.as_ref().map(EmbeddedBroker::local_addr);
    let restored = Restored::load(&config, db_path)?;
    // Before the alert task can commit anything: every alert gets its station copy.
    crate::uplink::register_destinations(&config, db_path)?;

    let (reading_tx, reading_rx) = mpsc::channel::<Ingested>(READINGS_CAPACITY);
    let (input_tx, input_rx) = mpsc::channel::<AlertInput>(ALERT_INPUT_CAPACITY);
    let bus = AlertBus::new(input_tx);
    let (events_tx, _) = broadcast::channel(EVENTS_CAPACITY);

    // Processing: alert task (thread), telemetry writer (thread), rules, publishers, faults.
    let processing = ProcessingParts {
        restored,
        readings: reading_rx,
        inputs: input_rx,
        bus: bus.clone(),
        events: events_tx.clone(),
        reserve: reserve.clone(),
        self_test: self_test.clone(),
        gate: broker.as_ref().and_then(EmbeddedBroker::commit_gate),
        // Off until the in-process link's "Channel recv error" (seen once on a restart on a
        // full disk: the alert being published then missed its local topic) is understood;
        // the TCP client has carried every alert so far. `broker::publisher` stays tested.
        links: None,
    };
    let (alert_stats, telemetry_stats) =
        spawn_processing(stages, &config, db_path, &options, processing)?;

    // Outbox: housekeeping (quota, buffer_full), the uplink, and status.json.
    let events = events_tx.subscribe();
    let uplink = crate::uplink::start(&config, db_path, stages, &bus, events)?;
    let station_link =
        crate::uplink::start_station(&config, db_path, stages, &bus, events_tx.subscribe())?;
    let cameras: crate::video::CameraSlot = Arc::default();
    let sources = status::StatusSources {
        link: uplink.clone(),
        station_link: station_link.clone(),
        ingest: Some(ingest.stats.clone()),
        alert_store: Some(alert_stats.clone()),
        reserve: reserve.clone(),
        health: Some(health.clone()),
        cameras: cameras.clone(),
        broker: broker.as_ref().map(EmbeddedBroker::front_counters),
    };
    spawn_status(stages, db_path, sources);

    // Inputs: ingest (in-process links on the embedded broker, a client on an external one)
    // and the self-test's probes, through the listener sensors use.
    let (ingest_stats, device_board) = (ingest.stats.clone(), ingest.board.clone());
    let (reload, reloads) = tokio::sync::watch::channel(config.clone());
    spawn_ingest(
        stages,
        ingest,
        broker.as_mut(),
        &options,
        reading_tx,
        reloads,
    );
    spawn_self_test_probe(stages, &options, self_test);

    Ok(Running {
        broker,
        broker_addr,
        internal_options: options,
        ingest_stats,
        device_board,
        telemetry_stats,
        alert_stats,
        reserve,
        alert_inputs: bus,
        events: EventFeed::new(&events_tx),
        uplink,
        station_link,
        health,
        cameras,
        reload,
    })
}

/// The state and channel ends the processing stage starts from.
struct ProcessingParts {
    restored: Restored,
    readings: mpsc::Receiver<Ingested>,
    inputs: mpsc::Receiver<AlertInput>,
    bus: AlertBus,
    events: broadcast::Sender<crate::alerts::Alert>,
    reserve: Option<Arc<Reserve>>,
    self_test: Arc<SelfTest>,
    /// The embedded broker's commit gate, for the alert task.
    gate: Option<Arc<crate::broker::CommitGate>>,
    /// The embedded broker's router: alert events are published on it in process.
    links: Option<crate::broker::LinkFactory>,
}

/// The processing stage: the alert task (thread), the telemetry writer (thread), rules,
/// local publisher, actuators and fault reporter. Returns the alert task's and the telemetry
/// writer's counters.
fn spawn_processing(
    stages: &Stages,
    config: &Arc<Config>,
    db_path: &Path,
    options: &MqttOptions,
    p: ProcessingParts,
) -> Result<(Arc<AlertTaskStats>, Arc<TelemetryStats>), TopologyError> {
    let (restored, bus, reserve) = (p.restored, p.bus, p.reserve);
    let alert_stats = Arc::new(AlertTaskStats::default());
    let parts = AlertTaskParts {
        first: Some(restored.lifecycle),
        config: Arc::new(std::sync::Mutex::new(config.clone())),
        db_path: db_path.to_owned(),
        commands: restored.commands,
        published: p.events.clone(),
        stats: alert_stats.clone(),
        reserve: reserve.clone(),
        self_test: p.self_test,
        resets: restored.resets,
        gate: p.gate,
    };
    let producers = AlertProducers::new();
    spawn_alert_task(stages, parts, p.inputs, producers.stopped.clone());
    let telemetry_stats = Arc::new(TelemetryStats::default());
    let sink = spawn_telemetry(stages, db_path, &telemetry_stats, &reserve)?;
    let rules = RulesParts {
        engine: restored.engine,
        readings: p.readings,
        out: bus.clone(),
        telemetry: sink,
        producer: producers.guard.clone(),
    };
    spawn_rules(stages, rules);
    let publisher = Publisher {
        links: p.links,
        options: options.clone(),
    };
    spawn_local_publisher(stages, publisher, p.events.subscribe(), restored.republish);
    spawn_commands(stages, options, restored.command_rx);
    spawn_faults(stages, &stages.health(), &bus, producers.guard);
    Ok((alert_stats, telemetry_stats))
}

/// The fault reporter: an in-stage producer of the alert task (it holds `producer`).
fn spawn_faults(
    stages: &Stages,
    health: &Arc<Health>,
    bus: &AlertBus,
    producer: Arc<tokio_util::sync::DropGuard>,
) {
    let (health, inputs) = (health.clone(), bus.clone());
    stages.spawn(Stage::Processing, move |token| async move {
        crate::faults::run(health, inputs, token).await;
        drop(producer);
    });
}

/// `status.json` beside the database, every second.
fn spawn_status(stages: &Stages, db_path: &Path, sources: status::StatusSources) {
    let dir = db_path.parent().unwrap_or(Path::new("."));
    status::spawn(
        stages,
        dir.join(status::STATUS_FILE),
        sources,
        Duration::from_secs(1),
    );
}

fn new_self_test(config: &Config, health: &Arc<Health>) -> Arc<SelfTest> {
    let s = &config.supervision;
    SelfTest::new(
        &config.site.id,
        Duration::from_secs(s.self_test_period_s),
        Duration::from_secs(s.self_test_timeout_s),
        health.clone(),
    )
}

/// The alert and rule state a start continues from: the active alerts in the store, the
/// rule conditions they imply, and the channels that join the two (linkage commands out of
/// the lifecycle, staff resolves back into the rules).
struct Restored {
    lifecycle: Lifecycle,
    engine: Engine,
    /// Active alerts to publish again (the embedded broker keeps no retained messages).
    republish: Vec<crate::alerts::Alert>,
    commands: mpsc::Sender<Command>,
    command_rx: mpsc::Receiver<Command>,
    /// A spare handle of the lifecycle's reset sender, for a restarted alert task.
    resets: crate::rules::reset::ResetSender,
}

impl Restored {
    fn load(config: &Arc<Config>, db_path: &Path) -> Result<Self, TopologyError> {
        let mut lifecycle = Lifecycle::new(config.clone(), AlertStore::open(db_path)?)?;
        let (commands, command_rx) = mpsc::channel::<Command>(COMMANDS_CAPACITY);
        lifecycle.set_command_sink(commands.clone());
        let mut engine = Engine::new(config.clone(), Instant::now());
        let republish: Vec<_> = lifecycle.active().cloned().collect();
        restore_conditions(config, &mut engine, &republish);
        // Staff resolves reset rule conditions (alert task → rules; see rules::reset).
        let (reset_tx, reset_rx) = crate::rules::reset::channel();
        let resets = reset_tx.handle();
        lifecycle.set_rule_resets(reset_tx);
        engine.set_resets(reset_rx);
        Ok(Restored {
            lifecycle,
            engine,
            republish,
            commands,
            command_rx,
            resets,
        })
    }
}

/// The self-test's prober: a client of the gateway's own, on the listener sensors use.
fn spawn_self_test_probe(stages: &Stages, options: &MqttOptions, self_test: Arc<SelfTest>) {
    let options = options.clone();
    stages.supervise(
        Stage::Inputs,
        "self_test_probe",
        Severity::AlarmPath,
        move |token| {
            let (client, events) = broker::internal_client(&options, "selftest");
            selftest::run(self_test.clone(), client, events, token)
        },
    );
}

/// What the alert task needs to start, and to start again after a panic (from the store).
struct AlertTaskParts {
    /// The lifecycle built at start-up (its active alerts were used to restore the rules);
    /// a restart reloads one from the database.
    first: Option<Lifecycle>,
    /// The configuration in force: the task updates it on a reload, a restarted task
    /// starts from it.
    config: Arc<std::sync::Mutex<Arc<Config>>>,
    db_path: std::path::PathBuf,
    commands: mpsc::Sender<Command>,
    published: broadcast::Sender<crate::alerts::Alert>,
    stats: Arc<AlertTaskStats>,
    reserve: Option<Arc<Reserve>>,
    self_test: Arc<SelfTest>,
    /// Staff resolves reach the rules through this (a restarted task gets a handle of it).
    resets: crate::rules::reset::ResetSender,
    /// The embedded broker's commit gate: sensors' PUBACKs wait for the task's commits.
    gate: Option<Arc<crate::broker::CommitGate>>,
}

impl AlertTaskParts {
    fn task(&mut self) -> Result<AlertTask, String> {
        let lifecycle = match self.first.take() {
            Some(l) => l,
            None => {
                let store = AlertStore::open(&self.db_path).map_err(|e| e.to_string())?;
                let config = self
                    .config
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let mut l = Lifecycle::new(config, store).map_err(|e| e.to_string())?;
                l.set_command_sink(self.commands.clone());
                l.set_rule_resets(self.resets.handle());
                l
            }
        };
        Ok(
            AlertTask::new(lifecycle, self.published.clone(), self.stats.clone())
                .with_reserve(self.reserve.clone())
                .with_self_test(Some(self.self_test.clone()))
                .with_commit_gate(self.gate.clone())
                .with_config_cell(self.config.clone()),
        )
    }
}

/// The alert task's in-stage producers (the rules, the fault reporter) each hold `guard`;
/// `stopped` is cancelled once the last of them has ended. They stop with the processing
/// stage, so this is the processing stage's token, ordered after everything that feeds the
/// alert task within the stage.
struct AlertProducers {
    guard: Arc<tokio_util::sync::DropGuard>,
    stopped: CancellationToken,
}

impl AlertProducers {
    fn new() -> Self {
        let stopped = CancellationToken::new();
        AlertProducers {
            guard: Arc::new(stopped.clone().drop_guard()),
            stopped,
        }
    }
}

/// The alert task: the single writer of alert events, on a thread of its own; its input
/// queue outlives a crash of the task. It stops by its stage's token once its in-stage
/// producers have stopped (`stop`, see [`AlertProducers`]), after draining what they queued —
/// not when the last sender goes away: the console, cameras and the uplink may outlive it.
/// Its supervisor holds the only strong senders of the event channel, so the publishers
/// downstream (local MQTT, resident notices) end after it.
fn spawn_alert_task(
    stages: &Stages,
    mut parts: AlertTaskParts,
    inputs: mpsc::Receiver<AlertInput>,
    stop: CancellationToken,
) {
    let inputs = Arc::new(tokio::sync::Mutex::new(inputs));
    stages.supervise_blocking(
        Stage::Processing,
        "alerts",
        Severity::AlarmPath,
        move |_token| {
            let task = parts.task()?;
            alert_task::run(task, &mut inputs.blocking_lock(), &stop);
            Ok(())
        },
    );
}

fn spawn_telemetry(
    stages: &Stages,
    db_path: &Path,
    stats: &Arc<TelemetryStats>,
    reserve: &Option<Arc<Reserve>>,
) -> Result<TelemetrySink, TopologyError> {
    let (tx, records) = mpsc::channel(TELEMETRY_CAPACITY);
    let mut first = Some(telemetry::open(db_path)?);
    let db_path = db_path.to_owned();
    let records = Arc::new(tokio::sync::Mutex::new(records));
    let (writer_stats, reserve) = (stats.clone(), reserve.clone());
    stages.supervise_blocking(
        Stage::Processing,
        "telemetry",
        Severity::Degraded,
        move |_token| {
            let conn = match first.take() {
                Some(c) => c,
                None => telemetry::open(&db_path).map_err(|e| e.to_string())?,
            };
            telemetry::run(
                conn,
                &mut records.blocking_lock(),
                writer_stats.clone(),
                reserve.clone(),
            );
            Ok(())
        },
    );
    Ok(TelemetrySink {
        tx,
        stats: stats.clone(),
    })
}

/// What the rules stage runs on; `producer` is held until the stage has stopped for good.
struct RulesParts {
    engine: Engine,
    readings: mpsc::Receiver<Ingested>,
    out: AlertBus,
    telemetry: TelemetrySink,
    producer: Arc<tokio_util::sync::DropGuard>,
}

fn spawn_rules(stages: &Stages, parts: RulesParts) {
    let RulesParts {
        engine,
        readings,
        out,
        telemetry,
        producer,
    } = parts;
    let engine = Arc::new(std::sync::Mutex::new(engine));
    let readings = Arc::new(tokio::sync::Mutex::new(readings));
    let telemetry = Arc::new(telemetry);
    stages.supervise(
        Stage::Processing,
        "rules",
        Severity::AlarmPath,
        move |_token| {
            let _producer = &producer;
            let (engine, readings, out, telemetry) = (
                engine.clone(),
                readings.clone(),
                out.clone(),
                telemetry.clone(),
            );
            async move {
                let mut readings = readings.lock_owned().await;
                run_rules(&engine, &mut readings, &out, &telemetry).await
            }
        },
    );
}

/// How the local publisher reaches the broker.
struct Publisher {
    /// The embedded broker's router (in process), if the broker is the gateway's own.
    links: Option<crate::broker::LinkFactory>,
    /// An external broker's client options otherwise.
    options: MqttOptions,
}

fn spawn_local_publisher(
    stages: &Stages,
    publisher: Publisher,
    events: broadcast::Receiver<crate::alerts::Alert>,
    republish: Vec<crate::alerts::Alert>,
) {
    let events = Arc::new(tokio::sync::Mutex::new(events));
    let mut republish = Some(republish);
    stages.supervise(
        Stage::Processing,
        "publisher",
        Severity::Degraded,
        move |_token| {
            let (events, republish) = (events.clone(), republish.take().unwrap_or_default());
            let links = publisher.links.clone();
            let options = publisher.options.clone();
            async move {
                let mut events = events.lock_owned().await;
                if let Some(links) = links {
                    let link = links.publisher("publisher").map_err(|e| e.to_string())?;
                    let bus = publish::Bus::Router(link);
                    publish::run(bus, &republish, &mut events)
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok(());
                }
                let (client, event_loop) = broker::internal_client(&options, "publisher");
                let token = tokio_util::sync::CancellationToken::new();
                let driver = tokio::spawn(drive(event_loop, token.clone()));
                let result =
                    publish::run(publish::Bus::Client(client), &republish, &mut events).await;
                // Give the last QoS 1 publishes a moment to be acknowledged.
                tokio::time::sleep(Duration::from_millis(100)).await;
                token.cancel();
                let _ = driver.await;
                result.map(drop).map_err(|e| e.to_string())
            }
        },
    );
}

fn spawn_commands(stages: &Stages, options: &MqttOptions, commands: mpsc::Receiver<Command>) {
    let commands = Arc::new(tokio::sync::Mutex::new(commands));
    let options = options.clone();
    stages.supervise(
        Stage::Processing,
        "actuators",
        Severity::Degraded,
        move |_token| {
            let (client, event_loop) = broker::internal_client(&options, "actuators");
            let commands = commands.clone();
            async move {
                run_commands(client, event_loop, &mut *commands.lock().await).await;
                Ok(())
            }
        },
    );
}

/// Ingest, supervised: on the embedded broker its first links were attached before the
/// listeners opened; a restart attaches fresh ones (new unguessable ids).
fn spawn_ingest(
    stages: &Stages,
    ingest: Ingest,
    broker: Option<&mut EmbeddedBroker>,
    options: &MqttOptions,
    out: mpsc::Sender<Ingested>,
    reloads: ingest::Reloads,
) {
    let specs = ingest.local_subscribers();
    let ingest = Arc::new(tokio::sync::Mutex::new(ingest));
    let reloads = Arc::new(tokio::sync::Mutex::new(reloads));
    match broker {
        Some(b) => {
            let first = b
                .take_local_link(ingest::DEVICES_LINK)
                .zip(b.take_local_link(ingest::WATCH_LINK))
                .map(|(devices, watch)| ingest::Links {
                    devices,
                    watch,
                    extra: Vec::new(),
                });
            // The links outlive a crash of the stage (nothing waiting in the broker's logs is
            // lost); only a link the router dropped is replaced, by fresh ones.
            let links = Arc::new(tokio::sync::Mutex::new(first));
            let factory = b.link_factory();
            stages.supervise(Stage::Inputs, "ingest", Severity::AlarmPath, move |token| {
                let (ingest, out, links) = (ingest.clone(), out.clone(), links.clone());
                let (factory, specs, reloads) = (factory.clone(), specs.clone(), reloads.clone());
                async move {
                    let mut slot = links.lock_owned().await;
                    let mut ingest = ingest.lock_owned().await;
                    let links = match slot.as_mut() {
                        Some(l) => l,
                        None => slot.insert(
                            attach_links(&factory, &specs, &ingest).map_err(|e| e.to_string())?,
                        ),
                    };
                    let mut reloads = reloads.lock_owned().await;
                    let result =
                        ingest::run_local(&mut ingest, links, &factory, &mut reloads, &out, token)
                            .await;
                    if let Err(ingest::IngestError::Link(_)) = &result {
                        *slot = None;
                    }
                    result.map_err(|e| e.to_string())
                }
            });
        }
        None => {
            let options = options.clone();
            stages.supervise(Stage::Inputs, "ingest", Severity::AlarmPath, move |token| {
                let (client, events) = client(&options, options.client_id().as_str());
                let (ingest, out, reloads) = (ingest.clone(), out.clone(), reloads.clone());
                async move {
                    let mut ingest = ingest.lock_owned().await;
                    let mut reloads = reloads.lock_owned().await;
                    ingest::run(&mut ingest, client, events, &mut reloads, &out, token)
                        .await
                        .map_err(|e| e.to_string())
                }
            });
        }
    }
}

/// Fresh links for a restarted ingest: the device and watch links of `specs`, and one link
/// for the device filters reloads added since the start.
fn attach_links(
    factory: &broker::LinkFactory,
    specs: &[broker::LocalSubscriber],
    ingest: &Ingest,
) -> Result<ingest::Links, broker::LocalLinkError> {
    let extra = ingest.extra_filters(&specs[0].filters);
    let mut links = ingest::Links {
        devices: factory.attach(&specs[0])?,
        watch: factory.attach(&specs[1])?,
        extra: Vec::new(),
    };
    if !extra.is_empty() {
        links.extra.push(factory.attach(&broker::LocalSubscriber {
            role: ingest::RELOAD_LINK.to_owned(),
            client_id: internal_client_id(ingest::RELOAD_LINK),
            filters: extra,
            per_device: true,
        })?);
    }
    Ok(links)
}

/// The rules stage: applies readings, ticks once a second, forwards edges (and self-test
/// probes) to the alert task. Ends when ingest has stopped (its sender dropped) — after
/// draining every reading.
async fn run_rules(
    engine: &std::sync::Mutex<Engine>,
    readings: &mut mpsc::Receiver<Ingested>,
    out: &AlertBus,
    telemetry: &TelemetrySink,
) -> StageResult {
    let gone = || Err("the alert task's queue is closed".to_owned());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        fault_point("rules").await;
        let signals = tokio::select! {
            item = readings.recv() => match item {
                Some(Ingested::Reading(r)) => {
                    let config = lock(engine).config().clone();
                    telemetry.offer(&config, &r);
                    if let Some(state) = TelemetrySink::actuator_state(&config, &r) {
                        if out.send(state).await.is_err() { return gone(); }
                    }
                    lock(engine).on_reading(&r)
                }
                Some(Ingested::Remote(r)) => {
                    if out.send(AlertInput::Remote(r)).await.is_err() { return gone(); }
                    Vec::new()
                }
                Some(Ingested::Reload(config)) => {
                    // Every signal of the old device numbering has been sent: the alert
                    // task switches when this reaches it, in order.
                    lock(engine).reconfigure(config.clone(), Instant::now());
                    if out.send(AlertInput::Reload(config)).await.is_err() { return gone(); }
                    Vec::new()
                }
                Some(Ingested::Probe(p)) => {
                    if out.send(AlertInput::Probe(p)).await.is_err() { return gone(); }
                    Vec::new()
                }
                Some(Ingested::Handled(m)) => {
                    if out.send(AlertInput::Handled(m)).await.is_err() { return gone(); }
                    Vec::new()
                }
                None => break,
            },
            _ = tick.tick() => {
                let s = lock(engine).on_tick(Instant::now());
                if out.send(AlertInput::Tick).await.is_err() { return gone(); }
                s
            }
        };
        for s in signals {
            if out
                .send(AlertInput::Trigger(Trigger::Signal(s)))
                .await
                .is_err()
            {
                return gone();
            }
        }
    }
    tracing::info!("rules stopped");
    Ok(())
}

/// The rules' state survives a panic of the stage: a poisoned lock is taken over as is.
fn lock(engine: &std::sync::Mutex<Engine>) -> std::sync::MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes actuator commands (QoS 1) until the alert task is gone.
async fn run_commands(
    client: AsyncClient,
    events: EventLoop,
    commands: &mut mpsc::Receiver<Command>,
) {
    let driver_token = tokio_util::sync::CancellationToken::new();
    let driver = tokio::spawn(drive(events, driver_token.clone()));
    while let Some(c) = commands.recv().await {
        tracing::info!(topic = %c.topic, "actuator command");
        if let Err(e) = client
            .publish(&c.topic, rumqttc::QoS::AtLeastOnce, false, c.payload)
            .await
        {
            tracing::error!(error = %e, "actuator command publish failed");
        }
        fault_point("actuators").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    driver_token.cancel();
    let _ = driver.await;
}

/// The rules stage's hand-over to the telemetry writer: never waits.
#[derive(Clone)]
struct TelemetrySink {
    tx: mpsc::Sender<telemetry::Record>,
    stats: Arc<TelemetryStats>,
}

impl TelemetrySink {
    /// An actuator's state report, as an input for the alert task (linkage confirmation).
    fn actuator_state(config: &Config, r: &Reading) -> Option<AlertInput> {
        let device = config.devices.get(r.device)?;
        let state = r.decoded.values.state.clone()?;
        device.kind.takes_commands().then(|| {
            Trigger::ActuatorState {
                device: device.id.clone(),
                state,
            }
            .into()
        })
    }

    fn offer(&self, config: &Config, r: &Reading) {
        let Some(device) = config.devices.get(r.device) else {
            return;
        };
        let record = telemetry::Record::new(&config.site.id, &device.id, r);
        if self.tx.try_send(record).is_err() {
            self.stats
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn restore_conditions(config: &Config, engine: &mut Engine, active: &[crate::alerts::Alert]) {
    let index: HashMap<&str, usize> = config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    for alert in active {
        if let Source::Device(id) = &alert.source {
            if let Some(&i) = index.get(id.as_str()) {
                engine.restore(i, alert.kind, alert.level);
            }
        }
    }
    if !active.is_empty() {
        tracing::info!(active = active.len(), "reloaded active alerts");
    }
}

/// Starts the embedded broker (with the ingest's in-process links attached before any
/// sensor can connect), or prepares options for the external one.
fn connect(
    config: &Config,
    ingest: &Ingest,
) -> Result<(Option<EmbeddedBroker>, MqttOptions), TopologyError> {
    match config.broker.mode {
        BrokerMode::Embedded => {
            let mut settings = BrokerSettings::from_config(config);
            settings.local_subscribers = ingest.local_subscribers();
            settings.commit_gate = ingest.commit_gate().map(Arc::new);
            let broker = EmbeddedBroker::start(settings)?;
            tracing::info!(addr = %broker.local_addr(), "embedded MQTT broker listening");
            let options = broker.client_options(&internal_client_id("options"));
            Ok((Some(broker), options))
        }
        BrokerMode::External => external_options(config).map(|o| (None, o)),
    }
}

/// Options for the external sensor broker (`[broker.external]`); `gateway doctor` listens
/// for devices with them (under a client id of its own).
pub(crate) fn external_options(config: &Config) -> Result<MqttOptions, TopologyError> {
    let Some(ext) = config.broker.external.as_ref() else {
        return Err(TopologyError::External(
            "broker.mode = \"external\" needs [broker.external]".into(),
        ));
    };
    if ext.tls.is_some() {
        return Err(TopologyError::External(
            "TLS to an external sensor broker is not supported yet; use a plain loopback listener"
                .into(),
        ));
    }
    let mut o = MqttOptions::new(ext.client_id(&config.site.id), ext.host.clone(), ext.port());
    o.set_keep_alive(Duration::from_secs(30));
    // edge-config has read `password_file` into `password` already.
    if let (Some(user), Some(password)) = (&ext.username, &ext.password) {
        o.set_credentials(user.clone(), password.clone());
    }
    Ok(o)
}

/// A client with the given id on the same broker as `options`, with TCP_NODELAY.
fn client(options: &MqttOptions, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = options.clone();
    o.set_client_id(id.to_owned());
    let (client, mut event_loop) = AsyncClient::new(o, 256);
    broker::enable_tcp_nodelay(&mut event_loop);
    (client, event_loop)
}

/// Polls a client's event loop (reconnecting on error) until cancelled.
async fn drive(mut events: EventLoop, token: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            e = events.poll() => if e.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
