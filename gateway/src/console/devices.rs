//! The devices board: what every configured device last said, seen by a read-only MQTT
//! subscriber of the console on the sensor broker (it never publishes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_config::Config;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, Source};
use crate::ingest::decode::{self, Role};

#[derive(Debug, Clone, Default)]
struct Seen {
    at: Option<DateTime<Utc>>,
    values: serde_json::Map<String, serde_json::Value>,
    available: Option<bool>,
}

/// Last-seen state per device id.
#[derive(Debug, Default)]
pub struct Board {
    seen: Mutex<HashMap<String, Seen>>,
}

/// One row of `GET /api/devices`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    pub id: String,
    pub kind: String,
    pub location: crate::alerts::Location,
    /// `online`, `offline` or `unknown` (nothing heard since the gateway started).
    pub status: &'static str,
    pub last_seen: Option<String>,
    pub battery_pct: Option<f64>,
    /// The latest values (merged over messages), as in the alert's `readings.values`.
    pub reading: serde_json::Value,
    /// Active alerts of this device: `kind:level`.
    pub active_alerts: Vec<String>,
}

impl Board {
    fn record(&self, id: &str, values: serde_json::Value, available: Option<bool>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let e = seen.entry(id.to_owned()).or_default();
        e.at = Some(Utc::now());
        if let serde_json::Value::Object(m) = values {
            for (k, v) in m.into_iter().filter(|(_, v)| !v.is_null()) {
                e.values.insert(k, v);
            }
        }
        if available.is_some() {
            e.available = available;
        }
    }

    /// Every configured device, with `active` alerts folded in.
    pub fn rows(&self, config: &Config, active: &[Alert]) -> Vec<DeviceRow> {
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let now = Utc::now();
        config
            .devices
            .iter()
            .map(|d| {
                let s = seen.get(&d.id).cloned().unwrap_or_default();
                let alerts: Vec<&Alert> = active
                    .iter()
                    .filter(|a| a.source == Source::Device(d.id.clone()))
                    .collect();
                let offline_alert = alerts
                    .iter()
                    .any(|a| a.kind == edge_config::AlertKind::DeviceOffline);
                let fresh = s.at.is_some_and(|t| {
                    (now - t).num_seconds() <= 3 * i64::from(d.heartbeat_s().max(1))
                });
                let status = match (offline_alert, s.available, s.at) {
                    (true, _, _) | (_, Some(false), _) => "offline",
                    (false, _, Some(_)) if fresh => "online",
                    (false, _, Some(_)) => "offline",
                    (false, _, None) => "unknown",
                };
                DeviceRow {
                    id: d.id.clone(),
                    kind: serde_json::to_value(d.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    location: crate::alerts::Location::resolve(config, &d.location),
                    status,
                    last_seen: s
                        .at
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    battery_pct: s.values.get("battery_pct").and_then(|v| v.as_f64()),
                    reading: serde_json::Value::Object(s.values),
                    active_alerts: alerts
                        .iter()
                        .map(|a| format!("{}:{}", a.kind.as_str(), a.level.as_str()))
                        .collect(),
                }
            })
            .collect()
    }
}

/// Subscribes to the sensor topics on `broker` and keeps `board` current until `token`.
pub async fn observe(
    config: Arc<Config>,
    broker: SocketAddr,
    board: Arc<Board>,
    token: CancellationToken,
) {
    let router = decode::Router::new(&config);
    let mut o = MqttOptions::new(
        format!("shouwang-{}-console", config.site.id),
        broker.ip().to_string(),
        broker.port(),
    );
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 64);
    let filters = router.subscriptions();
    loop {
        let event = tokio::select! {
            _ = token.cancelled() => break,
            e = events.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for f in &filters {
                    let _ = client.try_subscribe(f.clone(), QoS::AtMostOnce);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some((i, role)) = router.route(&p.topic) else {
                    continue;
                };
                let Some(d) = config.devices.get(i) else {
                    continue;
                };
                if let Ok(dec) = decode::decode(&p.payload, d.format, role, d.kind) {
                    let values = serde_json::to_value(&dec.values).unwrap_or_default();
                    let available = match role {
                        Role::Availability => dec.online,
                        _ => Some(true),
                    };
                    board.record(&d.id, values, available);
                }
            }
            Ok(_) => {}
            Err(_) => {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}
