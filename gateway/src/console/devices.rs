//! The devices panel: every configured device with what it last said (kept by ingest in
//! [`DeviceBoard`]) and its active alerts (all of them, from
//! [`super::store::active_by_device`]).

use chrono::Utc;
use edge_config::Config;
use serde::Serialize;

use std::collections::BTreeMap;

use crate::ingest::board::DeviceBoard;
use crate::ingest::StatsSnapshot;

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
    /// Its messages ingest rejected since the gateway started (invalid, throttled, …).
    pub rejected: u64,
    /// Active alerts of this device: `kind:level`.
    pub active_alerts: Vec<String>,
}

/// Every configured device as `board` has it, with its rejections from `ingest` and its
/// `active` alerts (`kind:level` by device id) folded in.
pub fn rows(
    board: &DeviceBoard,
    ingest: &StatsSnapshot,
    config: &Config,
    active: &BTreeMap<String, Vec<String>>,
) -> Vec<DeviceRow> {
    let seen = board.snapshot();
    let now = Utc::now();
    config
        .devices
        .iter()
        .map(|d| {
            let s = seen.get(&d.id).cloned().unwrap_or_default();
            let alerts = active.get(&d.id).cloned().unwrap_or_default();
            let offline = edge_config::AlertKind::DeviceOffline.as_str();
            let offline_alert = alerts
                .iter()
                .any(|a| a.split_once(':').is_some_and(|(kind, _)| kind == offline));
            let fresh = s
                .at
                .is_some_and(|t| (now - t).num_seconds() <= 3 * i64::from(d.heartbeat_s().max(1)));
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
                battery_pct: s.values.battery_pct,
                reading: serde_json::to_value(&s.values).unwrap_or_default(),
                rejected: ingest.rejected_by_device.get(&d.id).copied().unwrap_or(0),
                active_alerts: alerts,
            }
        })
        .collect()
}
