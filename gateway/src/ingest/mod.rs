//! Sensor ingest: MQTT publishes in, decoded [`Reading`]s out.
//!
//! Two ways in, one [`Ingest::handle`]:
//!
//! - **Embedded broker** ([`run_local`]): two in-process links to rumqttd's router. The
//!   *device* link subscribes one filter per device (`sensors/{id}/+`, or the device's topics
//!   exactly; see [`decode::Router::device_filters`]), so each device has broker logs of its
//!   own: a device flooding at full speed can only overrun its own log, never push a smoke
//!   detector's alarm out of a shared one (see `broker::local`). The *watch* link subscribes
//!   to everything (`#`, which also spares rumqttd from matching a foreign topic against every
//!   device filter on each publish) and counts sensor-family topics no device owns
//!   (`unknown_device`); it has its own loop, so however busy it is, device topics never wait
//!   for it.
//! - **External broker** ([`run`]): one rumqttc client subscribes (QoS 1) to the families
//!   with wildcards plus any custom device topics. Flood isolation is then up to that broker.
//!
//! Each publish is routed to its device, rate-limited per device, size-checked and decoded;
//! whatever is rejected is counted per reason and per device and logged at a limited rate.
//! A flooding device is throttled on its own bucket, so other devices' alarms pass.

pub mod board;
pub mod decode;
mod stats;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use edge_config::Config;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    internal_client_id, CommitGate, LinkFactory, LocalLink, LocalPublish, LocalSubscriber, Mark,
};
use crate::reading::Reading;
use crate::selftest::{Probe, SelfTest};
use crate::supervise::fault_point;
use board::DeviceBoard;
use decode::{decode_on, Reject, Router, Spec};
pub use stats::{IngestStats, StatsSnapshot};
use throttle::Throttle;

/// Topic filters per SUBSCRIBE packet.
const SUBSCRIBE_CHUNK: usize = 64;

/// A sensor clock further off than this is logged (the gateway's time is used anyway).
const CLOCK_SKEW_WARN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Turns raw MQTT publishes into readings. Separate from the network loop so it can be fed
/// directly by tests and benchmarks.
pub struct Ingest {
    config: Arc<Config>,
    router: Router,
    /// How each device's payloads are read (kind, profile, `fields`), by device index.
    specs: Vec<Spec>,
    throttle: Throttle,
    /// Shared with the status API: counters are atomics and a small locked map, so reading
    /// them never blocks ingest for long.
    pub stats: Arc<IngestStats>,
    /// Shared with the console's devices panel (last message of every device).
    pub board: Arc<DeviceBoard>,
    /// The end-to-end self-test whose probes ingest lets through (see [`crate::selftest`]).
    self_test: Option<Arc<SelfTest>>,
    /// Every topic filter subscribed for devices so far, on any link or connection: a
    /// reload subscribes only filters not in here (a filter subscribed twice would deliver
    /// each message twice). Filters of removed devices stay subscribed; their messages are
    /// no longer routed to a device.
    subscribed: std::collections::HashSet<String>,
    /// Devices are read through the embedded broker's in-process links (their filters are
    /// [`Router::device_filters`]), not through a client of an external broker.
    local: bool,
    /// A street station's compounds: topic → (compound id, what it carries). Their topics
    /// are on the device link like a device's (a log each, PUBACK after commit).
    compounds: std::collections::HashMap<String, (String, crate::reading::RemoteKind)>,
}

/// Largest compound message accepted (an alert event with its readings and evidence).
pub const MAX_REMOTE_BYTES: usize = 64 * 1024;

/// The topics of `config`'s compounds.
fn compound_topics(
    config: &Config,
) -> std::collections::HashMap<String, (String, crate::reading::RemoteKind)> {
    use crate::reading::RemoteKind;
    config
        .compounds
        .iter()
        .flat_map(|c| {
            [
                (
                    format!("shouwang/{}/alerts", c.id),
                    (c.id.clone(), RemoteKind::Alert),
                ),
                (
                    format!("shouwang/{}/heartbeat", c.id),
                    (c.id.clone(), RemoteKind::Heartbeat),
                ),
            ]
        })
        .collect()
}

/// What ingest hands to the rules.
#[derive(Debug)]
// Nearly every message is a `Reading`: boxing it would allocate per message to shrink the
// rare variants.
#[allow(clippy::large_enum_variant)]
pub enum Ingested {
    /// A sensor reading.
    Reading(Reading),
    /// A self-test probe on its way to the alert store.
    Probe(Probe),
    /// A message of a device log is handled (whatever became of it): the alert task marks
    /// it committed once everything before it is, which releases its PUBACK (see
    /// `broker::gate`). Sent after the message's reading, on the same ordered path.
    Handled(Mark),
    /// The configuration was reloaded: readings after this carry its device indexes (see
    /// [`crate::reload`]). The rules switch on it and pass it on to the alert task.
    Reload(Arc<Config>),
    /// A compound gateway's alert event or heartbeat (street station), for the alert task.
    Remote(crate::reading::Remote),
}

/// The role of the embedded broker's in-process link that reads every device topic.
pub const DEVICES_LINK: &str = "ingest-devices";
/// The role of the in-process link that watches every other topic.
pub const WATCH_LINK: &str = "ingest-watch";

impl Ingest {
    pub fn new(config: Arc<Config>) -> Self {
        let router = Router::new(&config);
        let local = config.broker.mode == edge_config::BrokerMode::Embedded;
        let subscribed = match local {
            true => router.device_filters(),
            false => router.subscriptions(),
        };
        Ingest {
            subscribed: subscribed.into_iter().collect(),
            local,
            compounds: compound_topics(&config),
            router,
            specs: config.devices.iter().map(Spec::for_device).collect(),
            throttle: Throttle::new(config.devices.len()),
            stats: Arc::new(IngestStats::default()),
            board: Arc::new(DeviceBoard::new(
                config.devices.iter().map(|d| d.id.as_str()),
            )),
            self_test: None,
            config,
        }
    }

    /// Lets this self-test's probes through (their topic is subscribed like a device's).
    pub fn with_self_test(mut self, self_test: Arc<SelfTest>) -> Self {
        self.self_test = Some(self_test);
        self
    }

    /// Topic filters to subscribe to.
    pub fn subscriptions(&self) -> Vec<SubscribeFilter> {
        let mut topics = self.router.subscriptions();
        topics.extend(self.compound_filters());
        topics.extend(self.self_test.as_ref().map(|s| s.topic().to_owned()));
        topics
            .into_iter()
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce))
            .collect()
    }

    /// The embedded broker's in-process subscribers for this ingest: the device link (one
    /// exact filter per device topic, and the self-test's) and the watch link (`#`), with the
    /// roles [`DEVICES_LINK`] and [`WATCH_LINK`] and unguessable client ids.
    pub fn local_subscribers(&self) -> Vec<LocalSubscriber> {
        let mut device_filters = self.router.device_filters();
        device_filters.extend(self.self_test.as_ref().map(|s| s.topic().to_owned()));
        device_filters.extend(self.compound_filters());
        vec![
            LocalSubscriber {
                role: DEVICES_LINK.to_owned(),
                client_id: internal_client_id(DEVICES_LINK),
                filters: device_filters,
                per_device: true,
            },
            LocalSubscriber {
                role: WATCH_LINK.to_owned(),
                client_id: internal_client_id(WATCH_LINK),
                filters: self.router.watch_filters(),
                per_device: false,
            },
        ]
    }

    /// Handles one publish of any kind: a self-test probe, or a sensor message through
    /// [`Ingest::handle`] (rejections are counted there).
    pub fn ingest(&mut self, topic: &str, payload: &[u8], now: Instant) -> Option<Ingested> {
        if let Some((compound, kind)) = self.compounds.get(topic) {
            return self.remote(topic, compound.clone(), *kind, payload);
        }
        if let Some(st) = self.self_test.as_ref().filter(|s| s.topic() == topic) {
            let probe = st.accept(payload);
            if probe.is_none() {
                tracing::debug!("self-test probe with an unknown nonce ignored");
            }
            return probe.map(Ingested::Probe);
        }
        self.handle(topic, payload, now)
            .ok()
            .flatten()
            .map(Ingested::Reading)
    }

    /// The compounds' topics, sorted.
    fn compound_filters(&self) -> Vec<String> {
        let mut t: Vec<String> = self.compounds.keys().cloned().collect();
        t.sort();
        t
    }

    /// A compound's message, if it is a JSON object of sane size (else counted under the
    /// compound's id).
    fn remote(
        &self,
        topic: &str,
        compound: String,
        kind: crate::reading::RemoteKind,
        payload: &[u8],
    ) -> Option<Ingested> {
        let reject = |reason| {
            self.stats.reject(Some(&compound), reason, topic);
            None
        };
        if payload.len() > MAX_REMOTE_BYTES {
            return reject(Reject::Oversized);
        }
        match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return reject(Reject::NotAnObject),
            Err(_) => return reject(Reject::InvalidJson),
        }
        self.stats.accept();
        Some(Ingested::Remote(crate::reading::Remote {
            compound,
            kind,
            payload: payload.to_vec(),
        }))
    }

    /// The gate over this ingest's device logs, which holds sensors' PUBACKs until the
    /// alert task has committed their messages (see `broker::gate`).
    pub fn commit_gate(&self) -> Option<CommitGate> {
        self.local_subscribers()
            .into_iter()
            .find(|s| s.role == DEVICES_LINK)
            .and_then(|s| CommitGate::new(&s.filters))
    }

    /// Whether `topic` is read from the device link: a device's own topic or the self-test
    /// probe's.
    fn on_device_link(&self, topic: &str) -> bool {
        self.router.route(topic).is_some()
            || self.compounds.contains_key(topic)
            || self.self_test.as_ref().is_some_and(|s| s.topic() == topic)
    }

    /// Counts `n` messages of `topic` the embedded broker dropped before ingest could read
    /// them (see [`Reject::BrokerOverrun`]).
    pub fn broker_overrun(&self, topic: &str, n: u64) {
        let device = self
            .router
            .route(topic)
            .map(|(i, _)| self.config.devices[i].id.as_str());
        self.stats
            .reject_many(device, Reject::BrokerOverrun, topic, n);
    }

    /// A counter of unowned topics sharing this ingest's statistics, for the watch link.
    pub fn watcher(&self) -> Watcher {
        Watcher {
            router: self.router.clone(),
            stats: self.stats.clone(),
        }
    }

    /// The configuration ingest routes by.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Switches to a reloaded `config`: routes, decoders, throttle buckets and the devices
    /// board follow the new device list (state kept by id). Returns the topic filters the
    /// new devices need that nothing subscribed yet — subscribe them before the next read.
    /// Send [`Ingested::Reload`] downstream right after: every reading before it carries the
    /// old configuration's device indexes, every one after the new one's.
    pub fn reconfigure(&mut self, config: Arc<Config>) -> Vec<String> {
        let old: std::collections::HashMap<&str, usize> = self
            .config
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i))
            .collect();
        let from: Vec<Option<usize>> = config
            .devices
            .iter()
            .map(|d| old.get(d.id.as_str()).copied())
            .collect();
        self.throttle.remap(&from);
        self.board
            .reconfigure(config.devices.iter().map(|d| d.id.as_str()));
        self.router = Router::new(&config);
        self.specs = config.devices.iter().map(Spec::for_device).collect();
        self.config = config;
        let wanted = if self.local {
            self.router.device_filters()
        } else {
            self.router.subscriptions()
        };
        wanted
            .into_iter()
            .filter(|f| self.subscribed.insert(f.clone()))
            .collect()
    }

    /// Device filters subscribed beyond the device link's first ones (by reloads): a
    /// re-attached set of links subscribes them on a link of their own.
    pub fn extra_filters(&self, first: &[String]) -> Vec<String> {
        let first: std::collections::HashSet<&String> = first.iter().collect();
        let mut extra: Vec<String> = self
            .subscribed
            .iter()
            .filter(|f| !first.contains(f))
            .cloned()
            .collect();
        extra.sort();
        extra
    }

    /// Handles one publish; `Ok` carries the reading to hand to the rules. `Ok(None)` for
    /// traffic that is not sensor data (bridge topics, commands) and is skipped uncounted.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: Instant,
    ) -> Result<Option<Reading>, Reject> {
        if self.router.is_ignorable(topic) {
            return Ok(None);
        }
        let Some((device, role)) = self.router.route(topic) else {
            self.stats.reject(None, Reject::UnknownDevice, topic);
            return Err(Reject::UnknownDevice);
        };
        let d = &self.config.devices[device];
        // Decoded before the bucket is consulted: invalid messages spend none of it, and a
        // change of hazard state passes even an empty one (see `throttle`).
        let decoded = match decode_on(topic, payload, d.format, role, &self.specs[device]) {
            Ok(decoded) => decoded,
            Err(reason) => {
                self.stats.reject(Some(&d.id), reason, topic);
                return Err(reason);
            }
        };
        if !self.throttle.admit_decoded(device, &decoded, now) {
            self.stats.reject(Some(&d.id), Reject::Throttled, topic);
            return Err(Reject::Throttled);
        }
        let at = Utc::now();
        if let Some(ts) = decoded.sensor_ts {
            if (ts.with_timezone(&Utc) - at).abs() > CLOCK_SKEW_WARN {
                self.stats.clock_skew(&d.id, ts, at);
            }
        }
        self.stats.accept();
        self.board.record(device, &decoded, at);
        Ok(Some(Reading {
            device,
            at,
            now,
            decoded,
        }))
    }
}

/// The embedded broker's in-process links ingest reads: the device link its filters were
/// first subscribed on (the one the commit gate knows), the watch link, and one more link
/// per reload that added device filters.
pub struct Links {
    pub devices: LocalLink,
    pub watch: LocalLink,
    /// Links of filters added by reloads. Their logs are not in the commit gate: their
    /// messages carry no mark, and the front does not hold their PUBACKs until a restart
    /// puts them on the device link (the reload's outcome says so).
    pub extra: Vec<LocalLink>,
}

/// Where a reload reaches ingest: the latest configuration (see [`crate::reload`]).
pub type Reloads = tokio::sync::watch::Receiver<Arc<Config>>;

/// Runs ingest on the embedded broker's in-process links until `token` is cancelled, or a
/// link fails (the router dropped it): then it returns the error, and its supervisor attaches
/// new links and runs it again. A reload in `reloads` is applied between two messages: new
/// device filters get a link of their own from `factory`.
///
/// The watch link is read by a loop of its own, joined with the device loop in one future,
/// never by a `select!` over both: a link's read may be waiting to tell the router it drained
/// its buffer, and dropping that wait whenever the other link had data would starve it (a
/// flood keeps the watch link busy).
pub async fn run_local(
    ingest: &mut Ingest,
    links: &mut Links,
    factory: &LinkFactory,
    reloads: &mut Reloads,
    out: &mpsc::Sender<Ingested>,
    token: CancellationToken,
) -> Result<(), IngestError> {
    let watcher = ingest.watcher();
    let watch = &mut links.watch;
    let mut device_links = DeviceLinks {
        first: &mut links.devices,
        extra: &mut links.extra,
        factory,
    };
    // Either loop ending (a failed link, or shutdown) ends the other.
    let stop = token.child_token();
    let (devices, watch) = tokio::join!(
        async {
            let r = read_devices(ingest, &mut device_links, reloads, out, &stop).await;
            stop.cancel();
            r
        },
        async {
            let r = read_watch(&watcher, watch, &stop).await;
            stop.cancel();
            r
        },
    );
    devices.and(watch)
}

/// The device links of one run, and where a reload gets a new one.
struct DeviceLinks<'a> {
    first: &'a mut LocalLink,
    extra: &'a mut Vec<LocalLink>,
    factory: &'a LinkFactory,
}

impl DeviceLinks<'_> {
    /// The next publish of any device link (marks only from the first: see [`Links`]).
    async fn next(&mut self) -> Result<LocalPublish, crate::broker::LocalLinkError> {
        if self.extra.is_empty() {
            return self.first.next().await;
        }
        let extra =
            futures_util::future::select_all(self.extra.iter_mut().map(|l| Box::pin(l.next())));
        tokio::select! {
            p = self.first.next() => p,
            (p, _, _) = extra => p.map(|p| LocalPublish { mark: None, ..p }),
        }
    }

    /// Subscribes `filters` on a new link of their own.
    fn add(&mut self, filters: Vec<String>) -> Result<(), crate::broker::LocalLinkError> {
        if filters.is_empty() {
            return Ok(());
        }
        let spec = LocalSubscriber {
            role: RELOAD_LINK.to_owned(),
            client_id: internal_client_id(RELOAD_LINK),
            filters,
            per_device: true,
        };
        self.extra.push(self.factory.attach(&spec)?);
        Ok(())
    }
}

/// The role of the in-process links of device filters added by reloads.
pub const RELOAD_LINK: &str = "ingest-reload";

/// The next configuration a reload published; never resolves once nobody can reload.
async fn next_reload(reloads: &mut Reloads) -> Arc<Config> {
    match reloads.changed().await {
        Ok(()) => reloads.borrow_and_update().clone(),
        Err(_) => std::future::pending().await,
    }
}

/// Why ingest stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The router dropped an in-process link: attach new ones.
    #[error(transparent)]
    Link(#[from] crate::broker::LocalLinkError),
    /// The rules stage's queue is closed.
    #[error("the rules stage is gone")]
    RulesGone,
}

/// The device links: every publish goes through [`Ingest::ingest`]. A crash (a panic in a
/// step) leaves the links intact for the restarted stage: only the message being handled is
/// lost, none of those waiting in the broker's logs.
async fn read_devices(
    ingest: &mut Ingest,
    links: &mut DeviceLinks<'_>,
    reloads: &mut Reloads,
    out: &mpsc::Sender<Ingested>,
    token: &CancellationToken,
) -> Result<(), IngestError> {
    loop {
        fault_point("ingest").await;
        let publish = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            config = next_reload(reloads) => {
                let filters = ingest.reconfigure(config.clone());
                links.add(filters)?;
                out.send(Ingested::Reload(config)).await.map_err(|_| IngestError::RulesGone)?;
                continue;
            }
            p = links.next() => p.map_err(|e| {
                tracing::error!(error = %e, "ingest link to the embedded broker failed");
                IngestError::Link(e)
            })?,
        };
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            continue;
        };
        if publish.dropped_before > 0 {
            ingest.broker_overrun(topic, publish.dropped_before);
        }
        // A device's filter also brings other topics under it (actuator commands): not
        // readings, and the watch link's to count if anyone's.
        let item = ingest
            .on_device_link(topic)
            .then(|| ingest.ingest(topic, &publish.payload, Instant::now()))
            .flatten();
        for item in item.into_iter().chain(publish.mark.map(Ingested::Handled)) {
            out.send(item).await.map_err(|_| IngestError::RulesGone)?;
        }
    }
}

/// The watch link: counts what no device owns; device topics are the device link's.
async fn read_watch(
    watcher: &Watcher,
    link: &mut LocalLink,
    token: &CancellationToken,
) -> Result<(), IngestError> {
    while let Some(publish) = next_or_stop(link, token).await? {
        if let Ok(topic) = std::str::from_utf8(&publish.topic) {
            watcher.observe(topic);
        }
    }
    Ok(())
}

/// The link's next publish, `None` once `token` is cancelled, or why the link failed.
async fn next_or_stop(
    link: &mut LocalLink,
    token: &CancellationToken,
) -> Result<Option<LocalPublish>, IngestError> {
    tokio::select! {
        _ = token.cancelled() => Ok(None),
        p = link.next() => p.map(Some).map_err(|e| {
            tracing::error!(error = %e, "ingest link to the embedded broker failed");
            IngestError::Link(e)
        }),
    }
}

/// Counts publishes on topics no device owns (see [`Ingest::watcher`]).
pub struct Watcher {
    router: Router,
    stats: Arc<IngestStats>,
}

impl Watcher {
    /// Counts `topic` as `unknown_device` if it is in a sensor family, no device owns it and
    /// it is not bridge/command traffic.
    pub fn observe(&self, topic: &str) {
        if self.router.route(topic).is_none()
            && self.router.counts_as_sensor_traffic(topic)
            && !self.router.is_ignorable(topic)
        {
            self.stats.reject(None, Reject::UnknownDevice, topic);
        }
    }
}

/// Runs the MQTT side of ingest until `token` is cancelled: (re)subscribes on every
/// connection, feeds publishes through [`Ingest::handle`] and sends readings to `out`.
pub async fn run(
    ingest: &mut Ingest,
    client: AsyncClient,
    mut events: EventLoop,
    reloads: &mut Reloads,
    out: &mpsc::Sender<Ingested>,
    token: CancellationToken,
) -> Result<(), IngestError> {
    let mut subscriptions = ingest.subscriptions();
    // SUBACKs still to come for this connection's SUBSCRIBE packets.
    let mut unacknowledged = 0usize;
    loop {
        let event = tokio::select! {
            _ = token.cancelled() => break,
            config = next_reload(reloads) => {
                let added = ingest.reconfigure(config.clone());
                subscriptions = ingest.subscriptions();
                let added: Vec<_> = added.into_iter().map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce)).collect();
                for chunk in added.chunks(SUBSCRIBE_CHUNK) {
                    if let Err(e) = client.subscribe_many(chunk.to_vec()).await {
                        tracing::error!(error = %e, "ingest subscribe failed");
                    }
                }
                out.send(Ingested::Reload(config)).await.map_err(|_| IngestError::RulesGone)?;
                continue;
            }
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(
                    topics = subscriptions.len(),
                    "ingest connected, subscribing"
                );
                // Many small SUBSCRIBE packets: one packet for thousands of devices would
                // exceed the broker's packet size limit and get the connection closed.
                unacknowledged = 0;
                for chunk in subscriptions.chunks(SUBSCRIBE_CHUNK) {
                    match client.subscribe_many(chunk.to_vec()).await {
                        Ok(()) => unacknowledged += 1,
                        Err(e) => tracing::error!(error = %e, "ingest subscribe failed"),
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) if unacknowledged > 0 => {
                unacknowledged -= 1;
                if unacknowledged == 0 {
                    // From here on, sensor messages reach the gateway.
                    tracing::info!(topics = subscriptions.len(), "ingest subscribed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(item) = ingest.ingest(&p.topic, &p.payload, Instant::now()) {
                    if out.send(item).await.is_err() {
                        break;
                    }
                }
                fault_point("ingest").await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ingest MQTT connection lost; retrying in 1 s");
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let _ = client.disconnect().await;
    tracing::info!("ingest stopped");
    Ok(())
}
