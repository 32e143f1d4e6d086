//! Sensor ingest: MQTT publishes in, decoded [`Reading`]s out.
//!
//! Two ways in, one [`Ingest::handle`]:
//!
//! - **Embedded broker** ([`run_local`]): two in-process links to rumqttd's router. The
//!   *device* link subscribes every device topic exactly, so each device has a broker log of
//!   its own: a device flooding at full speed can only overrun its own log, never push a smoke
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

use crate::broker::{LocalLink, LocalPublish, LocalSubscriber};
use crate::rules::Reading;
use board::DeviceBoard;
use decode::{decode, Reject, Router};
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
    throttle: Throttle,
    /// Shared with the status API: counters are atomics and a small locked map, so reading
    /// them never blocks ingest for long.
    pub stats: Arc<IngestStats>,
    /// Shared with the console's devices panel (last message of every device).
    pub board: Arc<DeviceBoard>,
}

impl Ingest {
    pub fn new(config: Arc<Config>) -> Self {
        Ingest {
            router: Router::new(&config),
            throttle: Throttle::new(config.devices.len()),
            stats: Arc::new(IngestStats::default()),
            board: Arc::new(DeviceBoard::new(config.devices.len())),
            config,
        }
    }

    /// Topic filters to subscribe to.
    pub fn subscriptions(&self) -> Vec<SubscribeFilter> {
        self.router
            .subscriptions()
            .into_iter()
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce))
            .collect()
    }

    /// The embedded broker's in-process subscribers for this ingest: the device link (one
    /// exact filter per device topic) and the watch link (`#`), named by [`local_link_ids`].
    pub fn local_subscribers(&self) -> Vec<LocalSubscriber> {
        let (devices, watch) = local_link_ids(&self.config.site.id);
        vec![
            LocalSubscriber {
                client_id: devices,
                filters: self.router.device_filters(),
            },
            LocalSubscriber {
                client_id: watch,
                filters: self.router.watch_filters(),
            },
        ]
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
        if !self.throttle.admit(device, now) {
            self.stats.reject(Some(&d.id), Reject::Throttled, topic);
            return Err(Reject::Throttled);
        }
        let decoded = match decode(payload, d.format, role, d.kind) {
            Ok(decoded) => decoded,
            Err(reason) => {
                self.stats.reject(Some(&d.id), reason, topic);
                return Err(reason);
            }
        };
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

/// Client ids of the embedded broker's in-process links for site `site`.
pub fn local_link_ids(site: &str) -> (String, String) {
    (
        format!("shouwang-{site}-ingest-devices"),
        format!("shouwang-{site}-ingest-watch"),
    )
}

/// Runs ingest on the embedded broker's in-process links until `token` is cancelled (or a
/// link fails, which only happens if the router is gone).
///
/// The two links are read by two loops joined in one future, never by a `select!` over both:
/// a link's read may be waiting to tell the router it drained its buffer, and dropping that
/// wait whenever the other link had data would starve it (a flood keeps the watch link busy).
pub async fn run_local(
    ingest: Ingest,
    devices: LocalLink,
    watch: LocalLink,
    out: mpsc::Sender<Reading>,
    token: CancellationToken,
) {
    let watcher = ingest.watcher();
    tokio::join!(
        read_devices(ingest, devices, out, token.clone()),
        read_watch(watcher, watch, token),
    );
    tracing::info!("ingest stopped");
}

/// The device link: every publish goes through [`Ingest::handle`].
async fn read_devices(
    mut ingest: Ingest,
    mut link: LocalLink,
    out: mpsc::Sender<Reading>,
    token: CancellationToken,
) {
    while let Some(publish) = next_or_stop(&mut link, &token).await {
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            continue;
        };
        if publish.dropped_before > 0 {
            ingest.broker_overrun(topic, publish.dropped_before);
        }
        if let Ok(Some(reading)) = ingest.handle(topic, &publish.payload, Instant::now()) {
            if out.send(reading).await.is_err() {
                break;
            }
        }
    }
}

/// The watch link: counts what no device owns; device topics are the device link's.
async fn read_watch(watcher: Watcher, mut link: LocalLink, token: CancellationToken) {
    while let Some(publish) = next_or_stop(&mut link, &token).await {
        if let Ok(topic) = std::str::from_utf8(&publish.topic) {
            watcher.observe(topic);
        }
    }
}

/// The link's next publish, or `None` once `token` is cancelled or the link failed.
async fn next_or_stop(link: &mut LocalLink, token: &CancellationToken) -> Option<LocalPublish> {
    tokio::select! {
        _ = token.cancelled() => None,
        p = link.next() => match p {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, link = link.client_id(), "ingest link to the embedded broker failed");
                None
            }
        },
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
    mut ingest: Ingest,
    client: AsyncClient,
    mut events: EventLoop,
    out: mpsc::Sender<Reading>,
    token: CancellationToken,
) {
    let subscriptions = ingest.subscriptions();
    loop {
        let event = tokio::select! {
            _ = token.cancelled() => break,
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
                for chunk in subscriptions.chunks(SUBSCRIBE_CHUNK) {
                    if let Err(e) = client.subscribe_many(chunk.to_vec()).await {
                        tracing::error!(error = %e, "ingest subscribe failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Ok(Some(reading)) = ingest.handle(&p.topic, &p.payload, Instant::now()) {
                    if out.send(reading).await.is_err() {
                        break;
                    }
                }
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
}
