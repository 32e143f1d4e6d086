//! `sim sensors`: one MQTT client per configured device, realistic normal behaviour, and
//! hazard scenarios.
//!
//! [`run`] connects every device of a gateway configuration (native and zigbee2mqtt
//! formats) to a broker, keeps them behaving normally — heartbeats, noisy temperatures,
//! draining batteries, charging cycles in the e-bike shed, actuators answering commands on
//! [`edge_config::Device::command_topic`] — and plays one [`Scenario`] on the devices it
//! needs.
//!
//! # Time
//!
//! The gateway measures time itself, on receive, so a scenario really takes its time.
//! `speed` compresses the *development of a hazard* (a fire that heats a kitchen at
//! 12 °C/min heats it at 120 °C/min with `speed = 10`, and its phases last a tenth as
//! long); heartbeats, normal behaviour and events that are seconds-scale in reality (thermal
//! runaway, a button press) run in real time. A test gives the gateway short rule windows
//! (`[rules.heat] rate_window_s = 10`, `[rules.timing] debounce_s = 1, clear_hold_s = 1`)
//! and a speed of 10–30, so every scenario finishes in seconds.
//!
//! # Scenarios and the alerts they must cause (default rules)
//!
//! | scenario | devices used | alerts |
//! |---|---|---|
//! | `normal` | all | none |
//! | `kitchen_fire` | a heat detector, a smoke detector (same room if any) | heat red (rate of rise, then fixed), smoke red |
//! | `gas_leak` | a gas detector, its valve | gas orange → red; after the valve closes: orange → resolved |
//! | `water_leak` | a leak sensor | water_leak orange, resolved; leaks again: water_leak red (repeat), resolved |
//! | `ebike_thermal_runaway` | a charging battery, a smoke detector in its area | ebike_battery orange (rise) → red (runaway); smoke red |
//! | `battery_theft` | a battery | battery_removed yellow (inside the theft window) |
//! | `sos` | an SOS button | sos red |
//! | `device_offline` | one sensor | device_offline yellow, resolved when it is back |
//! | `malformed` | a native and a zigbee2mqtt sensor | none: rejections only |
//! | `flood` | one device at 10,000 msg/s, a smoke detector | smoke red from the bystander; the flooder throttled |
//! | `soak` | all, at `rate` msg/s each | none |
//! | `demo` | all | every `every` (default 30 s) the next hazard of kitchen_fire, gas_leak, water_leak, ebike_thermal_runaway, battery_theft, sos; its devices then recover |

mod device;
mod scenarios;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_config::Config;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use device::{rng_for, stable_hash, SimDevice};
pub use scenarios::flood_messages;

use crate::mqtt::{self, Endpoint};

/// Errors of the sensor simulator.
#[derive(Debug, thiserror::Error)]
pub enum SensorsError {
    #[error("unknown scenario {0:?}; one of: {list}", list = Scenario::names().join(", "))]
    UnknownScenario(String),
    #[error("scenario {scenario} needs a {kind} device in the configuration")]
    MissingDevice {
        scenario: Scenario,
        kind: &'static str,
    },
    #[error("no device {0:?} in the configuration")]
    NoSuchDevice(String),
    #[error("the configuration has no devices")]
    NoDevices,
    #[error("could not connect to the broker at {broker} within {seconds} s ({budget}): {reason}")]
    Connect {
        broker: String,
        seconds: f64,
        /// How the time was given: `10 s + 10 ms × 150 devices`.
        budget: String,
        reason: String,
    },
    #[error("speed must be a positive number, not {0}")]
    BadSpeed(f64),
    #[error("rate must be a positive number of messages per second, not {0}")]
    BadRate(f64),
    #[error("MQTT client error: {0}")]
    Client(#[from] rumqttc::ClientError),
}

/// A scenario played on the simulated devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    Normal,
    KitchenFire,
    GasLeak,
    WaterLeak,
    EbikeThermalRunaway,
    BatteryTheft,
    Sos,
    /// A CO alarm: a blocked gas water heater flue, CO past the alarm points, then aired.
    CoLeak,
    /// A smart plug whose charger fails: the plug overheats while charging (linkage should
    /// switch it off).
    ChargerOverheat,
    DeviceOffline,
    Malformed,
    Flood,
    Soak,
    /// Normal behaviour with a hazard every [`Options::every`], cycling through
    /// [`Scenario::DEMO_CYCLE`]; after each, its devices return to normal.
    Demo,
}

impl Scenario {
    /// The hazards `demo` plays in turn.
    pub const DEMO_CYCLE: [Scenario; 8] = [
        Scenario::KitchenFire,
        Scenario::GasLeak,
        Scenario::WaterLeak,
        Scenario::EbikeThermalRunaway,
        Scenario::BatteryTheft,
        Scenario::Sos,
        Scenario::CoLeak,
        Scenario::ChargerOverheat,
    ];

    pub const ALL: [Scenario; 14] = [
        Scenario::Normal,
        Scenario::KitchenFire,
        Scenario::GasLeak,
        Scenario::WaterLeak,
        Scenario::EbikeThermalRunaway,
        Scenario::BatteryTheft,
        Scenario::Sos,
        Scenario::CoLeak,
        Scenario::ChargerOverheat,
        Scenario::DeviceOffline,
        Scenario::Malformed,
        Scenario::Flood,
        Scenario::Soak,
        Scenario::Demo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::KitchenFire => "kitchen_fire",
            Scenario::GasLeak => "gas_leak",
            Scenario::WaterLeak => "water_leak",
            Scenario::EbikeThermalRunaway => "ebike_thermal_runaway",
            Scenario::BatteryTheft => "battery_theft",
            Scenario::Sos => "sos",
            Scenario::CoLeak => "co_leak",
            Scenario::ChargerOverheat => "charger_overheat",
            Scenario::DeviceOffline => "device_offline",
            Scenario::Malformed => "malformed",
            Scenario::Flood => "flood",
            Scenario::Soak => "soak",
            Scenario::Demo => "demo",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Scenario::ALL.iter().map(|s| s.as_str()).collect()
    }

    /// Whether the scenario runs until its duration ends (or forever) rather than to the end
    /// of a script.
    pub fn is_open_ended(self) -> bool {
        matches!(self, Scenario::Normal | Scenario::Soak | Scenario::Demo)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scenario {
    type Err = SensorsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().replace('-', "_");
        Scenario::ALL
            .into_iter()
            .find(|x| x.as_str() == wanted)
            .ok_or_else(|| SensorsError::UnknownScenario(s.to_owned()))
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker the devices connect to (the gateway's embedded broker).
    pub broker: Endpoint,
    pub scenario: Scenario,
    /// Hazard development speed-up (see the module docs). Default 1.
    pub speed: f64,
    /// Messages per second per device for normal reports (`soak`: default 1; others:
    /// default one every 10 s); `flood`: the flooder's rate (default 10,000).
    pub rate: Option<f64>,
    /// Total run time. Default: `normal` until stopped, `soak` 4 h, `flood` 10 s, other
    /// scenarios to the end of their script.
    pub duration: Option<Duration>,
    pub seed: u64,
    /// The device a scenario acts on, instead of the first suitable one.
    pub device: Option<String>,
    /// `demo`: the pause before each hazard. Default 30 s.
    pub every: Duration,
}

impl Options {
    pub fn new(broker: Endpoint, scenario: Scenario) -> Options {
        Options {
            broker,
            scenario,
            speed: 1.0,
            rate: None,
            duration: None,
            seed: 0,
            device: None,
            every: Duration::from_secs(30),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Messages published, all devices.
    pub published: u64,
    /// Messages published per device id.
    pub by_device: BTreeMap<String, u64>,
    /// The devices the scenario acted on.
    pub targets: Vec<String>,
    /// `malformed`: (device id, or `-` for a foreign topic; the gateway's reject reason) →
    /// how many were sent.
    pub malformed: BTreeMap<(String, String), u64>,
    /// Free-form notes on what happened (e.g. "valve b1-valve closed").
    pub notes: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "published {} messages from {} devices",
            self.published,
            self.by_device.len()
        )?;
        if !self.targets.is_empty() {
            writeln!(f, "scenario devices: {}", self.targets.join(", "))?;
        }
        for ((device, reason), n) in &self.malformed {
            writeln!(f, "malformed sent: {device} {reason} x{n}")?;
        }
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        Ok(())
    }
}

/// What the normal loop of a device does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// Drifts and reports on its own.
    Normal = 0,
    /// A scenario sets its values and publishes them; only heartbeats run on their own.
    Scripted = 1,
    /// Offline: publishes nothing.
    Muted = 2,
    /// Reports its current values without drifting (after a script ended).
    Frozen = 3,
}

/// A running simulated device: its state, its client and its counters.
pub(crate) struct Handle {
    pub dev: Mutex<SimDevice>,
    pub client: AsyncClient,
    mode: AtomicU8,
    published: AtomicU64,
    connected: AtomicBool,
    connected_note: Notify,
    last_error: Mutex<Option<String>>,
}

impl Handle {
    pub fn id(&self) -> String {
        self.lock().id.clone()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, SimDevice> {
        self.dev.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Scripted,
            2 => Mode::Muted,
            3 => Mode::Frozen,
            _ => Mode::Normal,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Applies `f` to the state, then publishes the state (QoS 1).
    pub async fn update(&self, f: impl FnOnce(&mut SimDevice)) -> Result<(), SensorsError> {
        let (topic, payload) = {
            let mut d = self.lock();
            f(&mut d);
            (d.state_topic.clone(), d.payload())
        };
        self.publish(topic, QoS::AtLeastOnce, false, payload).await
    }

    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), SensorsError> {
        self.client.publish(topic, qos, retain, payload).await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A native heartbeat or, for zigbee2mqtt, an availability message.
    pub async fn heartbeat(&self) -> Result<(), SensorsError> {
        let (hb, avail) = {
            let d = self.lock();
            (d.heartbeat_topic.clone(), d.availability_topic.clone())
        };
        if let Some(topic) = hb {
            let body = serde_json::json!({ "ts": device::now_rfc3339() }).to_string();
            self.publish(topic, QoS::AtMostOnce, false, body.into_bytes())
                .await?;
        } else if let Some(topic) = avail {
            self.publish(topic, QoS::AtLeastOnce, true, b"online".to_vec())
                .await?;
        }
        Ok(())
    }

    /// zigbee2mqtt: announce `online`/`offline` (retained); nothing for native devices.
    pub async fn availability(&self, online: bool) -> Result<(), SensorsError> {
        let topic = self.lock().availability_topic.clone();
        if let Some(topic) = topic {
            let body = if online { "online" } else { "offline" };
            self.publish(topic, QoS::AtLeastOnce, true, body.as_bytes().to_vec())
                .await?;
        }
        Ok(())
    }
}

/// All devices of a run.
pub(crate) struct Fleet {
    pub handles: Vec<Arc<Handle>>,
    pub config: Arc<Config>,
}

/// Default period of normal reports.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long the devices have to connect: [`CONNECT_TIMEOUT_BASE`] plus
/// [`CONNECT_TIMEOUT_PER_DEVICE`] for each device, because connecting takes time per device
/// (a 2,000-device soak on a busy 2-core box needs more than 10 s; it gets 30 s).
const CONNECT_TIMEOUT_BASE: Duration = Duration::from_secs(10);
/// See [`CONNECT_TIMEOUT_BASE`].
const CONNECT_TIMEOUT_PER_DEVICE: Duration = Duration::from_millis(10);

/// How long a fleet of `devices` has to connect.
fn connect_timeout(devices: usize) -> Duration {
    let devices = u32::try_from(devices).unwrap_or(u32::MAX);
    CONNECT_TIMEOUT_BASE.saturating_add(CONNECT_TIMEOUT_PER_DEVICE.saturating_mul(devices))
}

/// Runs `options.scenario` against the broker until it ends, its duration elapses or `stop`
/// is cancelled; then disconnects every device.
pub async fn run(
    config: &Config,
    options: &Options,
    stop: CancellationToken,
) -> Result<Report, SensorsError> {
    check(config, options)?;
    let config = Arc::new(config.clone());
    let plan = scenarios::plan(&config, options)?;
    let started = Instant::now();
    let (fleet, pollers, command_rx) = connect_fleet(&config, options, &plan);
    let result = drive(&fleet, options, plan, stop, started, command_rx).await;
    // Disconnect everyone; the pollers end when their DISCONNECT went out.
    for h in &fleet.handles {
        let _ = h.client.try_disconnect();
    }
    for p in pollers {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    let mut report = result?;
    for h in &fleet.handles {
        let n = h.published.load(Ordering::Relaxed);
        report.published += n;
        report.by_device.insert(h.id(), n);
    }
    Ok(report)
}

/// The options and configuration a run can start with.
fn check(config: &Config, options: &Options) -> Result<(), SensorsError> {
    if !(options.speed.is_finite() && options.speed > 0.0) {
        return Err(SensorsError::BadSpeed(options.speed));
    }
    if let Some(rate) = options.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(SensorsError::BadRate(rate));
        }
    }
    if config.devices.is_empty() {
        return Err(SensorsError::NoDevices);
    }
    Ok(())
}

/// Commands received by actuators: (device index, payload).
type Commands = mpsc::UnboundedReceiver<(usize, Vec<u8>)>;

/// One client per device, each with its poller (connecting starts at once).
fn connect_fleet(
    config: &Arc<Config>,
    options: &Options,
    plan: &scenarios::Plan,
) -> (Arc<Fleet>, Vec<JoinHandle<()>>, Commands) {
    let mut handles = Vec::new();
    let mut pollers = Vec::new();
    let (command_tx, command_rx) = mpsc::unbounded_channel::<(usize, Vec<u8>)>();
    for (i, d) in config.devices.iter().enumerate() {
        let mut at = options.broker.clone();
        at.username = d.username.clone();
        at.password = d.password.clone();
        let flooder = plan.flooder.as_deref() == Some(d.id.as_str());
        let capacity = if flooder { 20_000 } else { 256 };
        let (client, events) = mqtt::client(&format!("sim-{}", d.id), &at, capacity);
        let handle = Arc::new(Handle {
            dev: Mutex::new(SimDevice::new(config, d, options.seed)),
            client,
            mode: AtomicU8::new(Mode::Normal as u8),
            published: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            connected_note: Notify::new(),
            last_error: Mutex::new(None),
        });
        let command_topic = d.kind.takes_commands().then(|| d.command_topic());
        pollers.push(tokio::spawn(poll(
            i,
            handle.clone(),
            events,
            command_topic,
            command_tx.clone(),
        )));
        handles.push(handle);
    }
    let fleet = Arc::new(Fleet {
        handles,
        config: config.clone(),
    });
    (fleet, pollers, command_rx)
}

/// Once every device is connected: normal behaviour on every device, actuator commands,
/// and the scenario's script; then the hold until the run's end.
async fn drive(
    fleet: &Arc<Fleet>,
    options: &Options,
    plan: scenarios::Plan,
    stop: CancellationToken,
    started: Instant,
    command_rx: Commands,
) -> Result<Report, SensorsError> {
    wait_connected(fleet, &options.broker).await?;
    tracing::info!(devices = fleet.handles.len(), scenario = %options.scenario, "simulated devices connected");
    let devices_stop = stop.child_token();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for h in &fleet.handles {
        let normal = normal_loop(h.clone(), options.rate, devices_stop.clone());
        tasks.push(tokio::spawn(normal));
    }
    let commands = commands(fleet.clone(), command_rx, devices_stop.clone());
    tasks.push(tokio::spawn(commands));
    let mut report = Report {
        targets: plan.targets.clone(),
        ..Report::default()
    };
    let script = script(fleet, options, plan, &stop, &mut report).await;
    // Scripted devices keep reporting their last values for the rest of the run.
    for h in &fleet.handles {
        if h.mode() == Mode::Scripted {
            h.set_mode(Mode::Frozen);
        }
    }
    let outcome = match script {
        Ok(()) => {
            hold(options, started, &stop).await;
            Ok(())
        }
        Err(scenarios::Halt::Stopped) => Ok(()),
        Err(scenarios::Halt::Failed(e)) => Err(e),
    };
    devices_stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    outcome.map(|()| report)
}

/// Plays the scenario (the demo cycles until stopped or, with a duration, until that
/// elapsed).
async fn script(
    fleet: &Arc<Fleet>,
    options: &Options,
    plan: scenarios::Plan,
    stop: &CancellationToken,
    report: &mut Report,
) -> Result<(), scenarios::Halt> {
    if options.scenario != Scenario::Demo {
        return scenarios::play(fleet.clone(), options.clone(), plan, stop.clone(), report).await;
    }
    let script_stop = stop.child_token();
    if let Some(d) = options.duration {
        let t = script_stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            t.cancel();
        });
    }
    scenarios::demo(fleet.clone(), options.clone(), script_stop, report).await
}

/// After the script: keeps the devices running for `--duration` from the start (soak: 4 h;
/// normal: until stopped; other scenarios: not at all), or until `stop`.
async fn hold(options: &Options, started: Instant, stop: &CancellationToken) {
    let hold = match (options.duration, options.scenario) {
        (Some(d), _) => Some(d),
        (None, Scenario::Soak) => Some(Duration::from_secs(4 * 3600)),
        (None, Scenario::Normal) => None,
        (None, _) => Some(Duration::ZERO),
    };
    match hold.and_then(|d| started.checked_add(d)) {
        Some(until) => tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep_until(until) => {}
        },
        None => stop.cancelled().await,
    }
}

/// Waits until every device is connected, within [`connect_timeout`] of the fleet's size.
async fn wait_connected(fleet: &Fleet, broker: &Endpoint) -> Result<(), SensorsError> {
    let timeout = connect_timeout(fleet.handles.len());
    let deadline = Instant::now() + timeout;
    for h in &fleet.handles {
        loop {
            let notified = h.connected_note.notified();
            if h.connected.load(Ordering::Acquire) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let reason = h
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_else(|| "no CONNACK".to_owned());
                return Err(SensorsError::Connect {
                    broker: broker.to_string(),
                    seconds: timeout.as_secs_f64(),
                    budget: format!(
                        "{} s + {} ms × {} devices",
                        CONNECT_TIMEOUT_BASE.as_secs(),
                        CONNECT_TIMEOUT_PER_DEVICE.as_millis(),
                        fleet.handles.len()
                    ),
                    reason: format!("device {}: {reason}", h.id()),
                });
            }
        }
    }
    Ok(())
}

/// Drives one client's network: reconnects, subscribes actuators to their command topic,
/// forwards commands.
async fn poll(
    index: usize,
    handle: Arc<Handle>,
    mut events: EventLoop,
    command_topic: Option<String>,
    commands: mpsc::UnboundedSender<(usize, Vec<u8>)>,
) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(topic) = &command_topic {
                    let _ = handle.client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                }
                handle.connected.store(true, Ordering::Release);
                handle.connected_note.notify_waiters();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if command_topic.as_deref() == Some(p.topic.as_str()) {
                    let _ = commands.send((index, p.payload.to_vec()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                if let Ok(mut last) = handle.last_error.lock() {
                    *last = Some(e.to_string());
                }
                if handle.connected.swap(false, Ordering::AcqRel) {
                    tracing::warn!(device = %handle.id(), error = %e, "device lost its broker connection; reconnecting");
                }
                if matches!(e, rumqttc::ConnectionError::RequestsDone) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Normal behaviour of one device: periodic reports and heartbeats.
async fn normal_loop(h: Arc<Handle>, rate: Option<f64>, stop: CancellationToken) {
    let every = rate.map_or(REPORT_EVERY, |r| Duration::from_secs_f64(1.0 / r));
    let heartbeat_every = h.lock().heartbeat / 3;
    // Announce the device at once, then spread the devices' reports over the period.
    let _ = h.heartbeat().await;
    if h.mode() == Mode::Normal {
        let _ = h.update(|_| {}).await;
    }
    let phase = {
        use rand::Rng;
        let mut d = h.lock();
        every.mul_f64(d.rng.gen_range(0.0..1.0))
    };
    let mut next_report = Instant::now() + phase;
    let mut next_heartbeat = Instant::now() + heartbeat_every;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next_report) => {
                next_report += every;
                let now = Instant::now();
                let dt = now - last;
                last = now;
                match h.mode() {
                    Mode::Normal => { let _ = h.update(|d| d.step_normal(dt)).await; }
                    Mode::Frozen => { let _ = h.update(|_| {}).await; }
                    Mode::Scripted | Mode::Muted => {}
                }
                // A slow broker must not make the loop run behind forever.
                if next_report < Instant::now() {
                    next_report = Instant::now() + every;
                }
            }
            _ = tokio::time::sleep_until(next_heartbeat) => {
                next_heartbeat += heartbeat_every;
                if h.mode() != Mode::Muted {
                    let _ = h.heartbeat().await;
                }
            }
        }
    }
}

/// Actuators: apply commands and report the new state.
async fn commands(
    fleet: Arc<Fleet>,
    mut rx: mpsc::UnboundedReceiver<(usize, Vec<u8>)>,
    stop: CancellationToken,
) {
    loop {
        let (index, payload) = tokio::select! {
            _ = stop.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        let h = &fleet.handles[index];
        let changed = h.lock().command(&payload);
        match changed {
            Some(state) => {
                tracing::info!(device = %h.id(), %state, "actuator command applied");
                let _ = h.update(|_| {}).await;
                if state == "playing" {
                    // An announcement lasts a few seconds, then the speaker is idle again.
                    let h = h.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(8)).await;
                        if h.lock().actuator == "playing" {
                            let _ = h.update(|d| d.actuator = "idle".to_owned()).await;
                        }
                    });
                }
            }
            None => {
                tracing::warn!(device = %h.id(), payload = %String::from_utf8_lossy(&payload), "actuator ignored an unknown command")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_can_be_spawned_on_a_multithreaded_runtime() {
        fn is_send<T: Send>(_: &T) {}
        let config = edge_config::parse(
            "[site]\nid = \"t\"\nname = \"T\"\nkind = \"compound\"\n",
            "t.toml",
            std::path::Path::new("."),
        )
        .unwrap();
        let options = Options::new(Endpoint::parse("127.0.0.1:1").unwrap(), Scenario::Normal);
        is_send(&run(&config, &options, CancellationToken::new()));
    }

    #[test]
    fn the_connect_timeout_grows_by_10_ms_per_device_from_10_s() {
        assert_eq!(connect_timeout(0), Duration::from_secs(10));
        assert_eq!(connect_timeout(150), Duration::from_millis(11_500));
        assert_eq!(connect_timeout(2_000), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn devices_that_never_connect_fail_after_the_fleets_timeout_and_say_so() {
        let config = edge_config::parse(
            "[site]\nid = \"t\"\nname = \"T\"\nkind = \"compound\"\n\
             [[locations.areas]]\nid = \"a\"\nname = \"A\"\nkind = \"lobby\"\n\
             [[devices]]\nid = \"d0\"\nkind = \"smoke\"\nlocation = { area = \"a\" }\n",
            "t.toml",
            std::path::Path::new("."),
        )
        .unwrap();
        // Nothing listens there, and no poller drives the client: nobody ever connects.
        let broker = Endpoint::parse("127.0.0.1:1").unwrap();
        let (client, _events) = mqtt::client("sim-never", &broker, 4);
        let handle = || {
            Arc::new(Handle {
                dev: Mutex::new(SimDevice::new(&config, &config.devices[0], 1)),
                client: client.clone(),
                mode: AtomicU8::new(Mode::Normal as u8),
                published: AtomicU64::new(0),
                connected: AtomicBool::new(false),
                connected_note: Notify::new(),
                last_error: Mutex::new(None),
            })
        };
        let fleet = Fleet {
            handles: (0..150).map(|_| handle()).collect(),
            config: Arc::new(config.clone()),
        };
        let started = Instant::now();
        let err = wait_connected(&fleet, &broker).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(11_500));
        let text = err.to_string();
        assert!(
            text.contains("within 11.5 s (10 s + 10 ms × 150 devices)"),
            "{text}"
        );
    }

    #[test]
    fn scenario_names_round_trip_and_accept_dashes() {
        for s in Scenario::ALL {
            assert_eq!(s.as_str().parse::<Scenario>().unwrap(), s);
        }
        assert_eq!(
            "kitchen-fire".parse::<Scenario>().unwrap(),
            Scenario::KitchenFire
        );
        let err = "volcano".parse::<Scenario>().unwrap_err().to_string();
        assert!(err.contains("kitchen_fire"), "{err}");
    }
}
