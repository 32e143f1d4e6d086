//! Wires the stages of the sensor pipeline together:
//!
//! ```text
//! broker ─▶ ingest ─(readings)─▶ rules ─(signals, ticks)─▶ alerts (SQLite + outbox) ─(events)─▶ local publish
//!  Inputs      Inputs                Processing                Processing                         Processing
//! ```
//!
//! Channels are bounded: a slow stage back-pressures the one before it instead of growing
//! memory. The alert task is the single database writer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edge_config::{BrokerMode, Config};
use rumqttc::{AsyncClient, EventLoop, MqttOptions};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::alerts::linkage::Command;
use crate::alerts::task::{self as alert_task, AlertInput, AlertTask, AlertTaskStats, Trigger};
use crate::alerts::{AlertStore, Lifecycle, Source};
use crate::broker::{self, BrokerError, BrokerSettings, EmbeddedBroker, TlsFiles};
use crate::ingest::{self, Ingest, IngestStats};
use crate::publish;
use crate::reserve::Reserve;
use crate::rules::{Engine, Reading};
use crate::shutdown::{Lifecycle as Stages, Stage};
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

/// Errors starting the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
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
    pub ingest_stats: Arc<IngestStats>,
    /// What every device last said (for the console's devices panel).
    pub device_board: Arc<crate::ingest::board::DeviceBoard>,
    pub telemetry_stats: Arc<TelemetryStats>,
    /// Alert events waiting for a database that refused them (disk full).
    pub alert_stats: Arc<AlertTaskStats>,
    /// The disk reserve, if the daemon keeps one.
    pub reserve: Option<Arc<Reserve>>,
    pub alert_inputs: mpsc::Sender<AlertInput>,
    pub events: broadcast::Sender<crate::alerts::Alert>,
    /// Live uplink state and counters (also written to `status.json` every second).
    pub uplink: Arc<crate::uplink::UplinkStatus>,
}

/// Starts broker, ingest, rules, alerts and local publication as tasks of `stages`.
pub fn start(
    config: Arc<Config>,
    db_path: &Path,
    stages: &Stages,
) -> Result<Running, PipelineError> {
    start_with_reserve(config, db_path, stages, None)
}

/// [`start`] with a disk reserve that the alert task gives up when the disk is full.
pub fn start_with_reserve(
    config: Arc<Config>,
    db_path: &Path,
    stages: &Stages,
    reserve: Option<Arc<Reserve>>,
) -> Result<Running, PipelineError> {
    let ingest = Ingest::new(config.clone());
    let (mut broker, options) = connect(&config, &ingest)?;
    let broker_addr = broker.as_ref().map(EmbeddedBroker::local_addr);

    let mut lifecycle = Lifecycle::new(config.clone(), AlertStore::open(db_path)?)?;
    let (command_tx, command_rx) = mpsc::channel::<Command>(COMMANDS_CAPACITY);
    lifecycle.set_command_sink(command_tx);
    let mut engine = Engine::new(config.clone(), Instant::now());
    let republish: Vec<_> = lifecycle.active().cloned().collect();
    restore_conditions(&config, &mut engine, &republish);
    // Staff resolves reset rule conditions (alert task → rules; see rules::reset).
    let (reset_tx, reset_rx) = crate::rules::reset::channel();
    lifecycle.set_rule_resets(reset_tx);
    engine.set_resets(reset_rx);

    let (reading_tx, reading_rx) = mpsc::channel::<Reading>(READINGS_CAPACITY);
    let (input_tx, input_rx) = mpsc::channel::<AlertInput>(ALERT_INPUT_CAPACITY);
    let (events_tx, _) = broadcast::channel(EVENTS_CAPACITY);

    // Processing: alert task (thread), rules, local publisher.
    let published = events_tx.clone();
    let alert_stats = Arc::new(AlertTaskStats::default());
    let task_stats = alert_stats.clone();
    let task = AlertTask::new(lifecycle, published, task_stats).with_reserve(reserve.clone());
    stages.spawn_blocking(Stage::Processing, move |_token| {
        alert_task::run(task, input_rx)
    });
    let telemetry_stats = Arc::new(TelemetryStats::default());
    let (telemetry_tx, telemetry_rx) = mpsc::channel(TELEMETRY_CAPACITY);
    let telemetry_conn = telemetry::open(db_path)?;
    let writer_stats = telemetry_stats.clone();
    let writer_reserve = reserve.clone();
    stages.spawn_blocking(Stage::Processing, move |_token| {
        telemetry::run(telemetry_conn, telemetry_rx, writer_stats, writer_reserve)
    });
    let rules_inputs = input_tx.clone();
    let to_telemetry = TelemetrySink {
        tx: telemetry_tx,
        stats: telemetry_stats.clone(),
        config: config.clone(),
    };
    stages.spawn(Stage::Processing, move |_token| {
        run_rules(engine, reading_rx, rules_inputs, to_telemetry)
    });
    let (pub_client, pub_loop) =
        client(&options, &format!("shouwang-{}-publisher", config.site.id));
    let events_rx = events_tx.subscribe();
    stages.spawn(Stage::Processing, move |_token| async move {
        let token = tokio_util::sync::CancellationToken::new();
        let driver = tokio::spawn(drive(pub_loop, token.clone()));
        publish::run(pub_client, &republish, events_rx).await;
        // Give the last QoS 1 publishes a moment to be acknowledged.
        tokio::time::sleep(Duration::from_millis(100)).await;
        token.cancel();
        let _ = driver.await;
    });

    let (cmd_client, cmd_loop) =
        client(&options, &format!("shouwang-{}-actuators", config.site.id));
    stages.spawn(Stage::Processing, move |_token| {
        run_commands(cmd_client, cmd_loop, command_rx)
    });

    // Outbox: housekeeping (quota, buffer_full, status.json) and the uplink.
    let uplink = crate::uplink::start(
        &config,
        db_path,
        stages,
        &input_tx,
        events_tx.subscribe(),
        crate::uplink::StatusSources {
            ingest: Some(ingest.stats.clone()),
            alert_store: Some(alert_stats.clone()),
            reserve: reserve.clone(),
        },
    )?;

    // Inputs: ingest (in-process links on the embedded broker, a client on an external one).
    let ingest_stats = ingest.stats.clone();
    let device_board = ingest.board.clone();
    let (devices_id, watch_id) = ingest::local_link_ids(&config.site.id);
    let links = broker.as_mut().and_then(|b| {
        Some((
            b.take_local_link(&devices_id)?,
            b.take_local_link(&watch_id)?,
        ))
    });
    if let Some((devices, watch)) = links {
        stages.spawn(Stage::Inputs, move |token| {
            ingest::run_local(ingest, devices, watch, reading_tx, token)
        });
    } else {
        let (ing_client, ing_loop) =
            client(&options, &format!("shouwang-{}-ingest", config.site.id));
        stages.spawn(Stage::Inputs, move |token| {
            ingest::run(ingest, ing_client, ing_loop, reading_tx, token)
        });
    }

    Ok(Running {
        broker,
        broker_addr,
        ingest_stats,
        device_board,
        telemetry_stats,
        alert_stats,
        reserve,
        alert_inputs: input_tx,
        events: events_tx,
        uplink,
    })
}

/// The rules stage: applies readings, ticks once a second, forwards edges to the alert task.
/// Ends when ingest has stopped (its sender dropped) — after draining every reading.
async fn run_rules(
    mut engine: Engine,
    mut readings: mpsc::Receiver<Reading>,
    out: mpsc::Sender<AlertInput>,
    telemetry: TelemetrySink,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signals = tokio::select! {
            reading = readings.recv() => match reading {
                Some(r) => {
                    telemetry.offer(&r);
                    if let Some(state) = telemetry.actuator_state(&r) {
                        if out.send(state).await.is_err() { break; }
                    }
                    engine.on_reading(&r)
                }
                None => break,
            },
            _ = tick.tick() => {
                let s = engine.on_tick(Instant::now());
                if out.send(AlertInput::Tick).await.is_err() { break; }
                s
            }
        };
        for s in signals {
            if out
                .send(AlertInput::Trigger(Trigger::Signal(s)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    tracing::info!("rules stopped");
}

/// Publishes actuator commands (QoS 1) until the alert task is gone.
async fn run_commands(
    client: AsyncClient,
    events: EventLoop,
    mut commands: mpsc::Receiver<Command>,
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
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    driver_token.cancel();
    let _ = driver.await;
}

/// The rules stage's hand-over to the telemetry writer: never waits.
struct TelemetrySink {
    tx: mpsc::Sender<telemetry::Record>,
    stats: Arc<TelemetryStats>,
    config: Arc<Config>,
}

impl TelemetrySink {
    /// An actuator's state report, as an input for the alert task (linkage confirmation).
    fn actuator_state(&self, r: &Reading) -> Option<AlertInput> {
        let device = self.config.devices.get(r.device)?;
        let state = r.decoded.values.state.clone()?;
        device.kind.is_actuator().then(|| {
            Trigger::ActuatorState {
                device: device.id.clone(),
                state,
            }
            .into()
        })
    }

    fn offer(&self, r: &Reading) {
        let Some(device) = self.config.devices.get(r.device) else {
            return;
        };
        let record = telemetry::Record::new(&self.config.site.id, &device.id, r);
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
) -> Result<(Option<EmbeddedBroker>, MqttOptions), PipelineError> {
    match config.broker.mode {
        BrokerMode::Embedded => {
            let mut settings = broker_settings(config);
            settings.local_subscribers = ingest.local_subscribers();
            let broker = EmbeddedBroker::start(settings)?;
            tracing::info!(addr = %broker.local_addr(), "embedded MQTT broker listening");
            let options = broker.client_options("unused");
            Ok((Some(broker), options))
        }
        BrokerMode::External => external_options(config).map(|o| (None, o)),
    }
}

fn broker_settings(config: &Config) -> BrokerSettings {
    let b = &config.broker;
    let mut s = BrokerSettings::new(b.bind_addr());
    s.v5_bind = b.v5_bind;
    s.tls = b.tls.as_ref().map(|t| TlsFiles {
        bind: SocketAddr::new(b.bind_addr().ip(), 8883),
        cert_pem: t.cert.clone(),
        key_pem: t.key.clone(),
    });
    s.credentials = config
        .devices
        .iter()
        .filter_map(|d| Some((d.username.clone()?, d.password.clone()?)))
        .collect();
    s.max_connections = (config.devices.len() * 2).max(64);
    s
}

fn external_options(config: &Config) -> Result<MqttOptions, PipelineError> {
    let Some(ext) = config.broker.external.as_ref() else {
        return Err(PipelineError::External(
            "broker.mode = \"external\" needs [broker.external]".into(),
        ));
    };
    if ext.tls.is_some() {
        return Err(PipelineError::External(
            "TLS to an external sensor broker is not supported yet; use a plain loopback listener"
                .into(),
        ));
    }
    let mut o = MqttOptions::new(ext.client_id(&config.site.id), ext.host.clone(), ext.port());
    o.set_keep_alive(Duration::from_secs(30));
    let password = match (&ext.password, &ext.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| PipelineError::External(format!("{}: {e}", f.display())))?
                .trim()
                .to_owned(),
        ),
        _ => None,
    };
    if let (Some(user), Some(password)) = (&ext.username, password) {
        o.set_credentials(user.clone(), password);
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
