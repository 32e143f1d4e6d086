//! Sensor ingest: MQTT publishes in, decoded [`Reading`]s out.
//!
//! One rumqttc client — to the embedded broker, or to an external one — subscribes (QoS 1) to
//! the sensor topic families with wildcards plus any custom device topics, so a publish on a
//! topic no device owns is seen, rejected and counted (`unknown_device`).
//! Each publish is routed to its device, rate-limited per device, size-checked and decoded;
//! whatever is rejected is counted per reason and per device and logged at a limited rate.
//! A flooding device is throttled on its own bucket, so other devices' alarms pass.

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

use crate::rules::Reading;
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
}

impl Ingest {
    pub fn new(config: Arc<Config>) -> Self {
        Ingest {
            router: Router::new(&config),
            throttle: Throttle::new(config.devices.len()),
            stats: Arc::new(IngestStats::default()),
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
        Ok(Some(Reading {
            device,
            at,
            now,
            decoded,
        }))
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
