//! Residents: hazard notices on MQTT and a per-unit web page.
//!
//! - [`spawn_publisher`] turns committed hazard alerts into notices on
//!   `residents/{building}/{unit}/alerts` (the alert's own unit) and `residents/{building}/all`
//!   (building-wide hazards — fire, smoke, heat, gas, e-bike battery — for every building the
//!   location warns, e.g. a charging shed warns its nearest buildings), with zh-CN/en message
//!   and advice, and an "all clear" notice when the hazard is over.
//!
//! # When residents are told all-clear
//!
//! When the sensor ends the alert (`resolved_by = "auto"`), or when staff resolve it while the
//! sensor no longer reports the hazard ("resolved by staff"). Never while the sensor still
//! reports it: such a staff resolve resets the rule, a new alert follows at once
//! ([`crate::alerts::lifecycle`]) and residents see it as the same notice, under the same id
//! (the alert's `continues`), until the sensor ends it.
//! - [`links`]: per-unit secret links (`/r/{token}`), stored as SHA-256 hashes, rotatable.
//! - the resident page and its SSE stream, showing only that unit's alerts, are served by
//!   the console's web stack: [`crate::console::resident_pages`].
//! - [`qr`]: `gateway residents qr` writes one QR code (SVG) per unit plus an index.

pub mod cli;
pub mod links;
pub mod qr;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edge_config::{AlertKind, Config, LocationRef};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::alerts::model::Localized;
use crate::alerts::{Alert, AlertState, EventKind};
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::supervise::Severity;

/// Errors of the resident features.
#[derive(Debug, thiserror::Error)]
pub enum ResidentsError {
    #[error("residents: database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("residents: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("residents: no secure random numbers: {0}")]
    Random(getrandom::Error),
    #[error("residents: {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("residents: QR code: {0}")]
    Qr(#[from] qrcode::types::QrError),
    #[error("residents: unknown unit {0} (expected BUILDING/UNIT from [locations])")]
    UnknownUnit(String),
}

/// Hazards residents are told about.
pub const HAZARDS: [AlertKind; 5] = [
    AlertKind::Smoke,
    AlertKind::Heat,
    AlertKind::Gas,
    AlertKind::EbikeBattery,
    AlertKind::WaterLeak,
];

/// Is `kind` one of the [`HAZARDS`]?
pub fn is_hazard(kind: AlertKind) -> bool {
    HAZARDS.contains(&kind)
}

/// Hazards that concern a whole building (and the buildings the place warns).
pub fn is_building_wide(kind: AlertKind) -> bool {
    matches!(
        kind,
        AlertKind::Smoke | AlertKind::Heat | AlertKind::Gas | AlertKind::EbikeBattery
    )
}

/// The buildings warned of an alert (by the area's `warns`, else its own building).
pub fn warned_buildings(config: &Config, alert: &Alert) -> Vec<String> {
    let loc = LocationRef {
        building: alert.location.building.clone(),
        unit: alert.location.unit.clone(),
        area: alert.location.area.clone(),
        ..LocationRef::default()
    };
    let mut out: Vec<String> = config
        .warned_buildings(&loc)
        .into_iter()
        .map(|b| b.id.clone())
        .collect();
    if out.is_empty() {
        out.extend(alert.location.building.clone());
    }
    out
}

/// The resident topics of an alert.
pub fn topics(config: &Config, alert: &Alert) -> Vec<String> {
    if !is_hazard(alert.kind) {
        return Vec::new();
    }
    let mut t = Vec::new();
    if let (Some(b), Some(u)) = (&alert.location.building, &alert.location.unit) {
        t.push(format!("residents/{b}/{u}/alerts"));
    }
    if is_building_wide(alert.kind) {
        t.extend(
            warned_buildings(config, alert)
                .into_iter()
                .map(|b| format!("residents/{b}/all")),
        );
    }
    t
}

/// Does `alert` concern the residents of `building`/`unit`?
pub fn concerns(config: &Config, alert: &Alert, building: &str, unit: &str) -> bool {
    if !is_hazard(alert.kind) {
        return false;
    }
    let own = alert.location.building.as_deref() == Some(building)
        && alert.location.unit.as_deref() == Some(unit);
    own || (is_building_wide(alert.kind)
        && warned_buildings(config, alert)
            .iter()
            .any(|b| b == building))
}

/// What residents receive (MQTT payload and the page's SSE data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// The hazard's id: the alert's, or the first alert's of a hazard that outlived a staff
    /// resolve (`continues`), so a resident's screen keeps one notice for it.
    pub id: String,
    pub kind: String,
    pub level: String,
    /// `active` or `all_clear`.
    pub status: &'static str,
    /// On an all-clear: `sensor` (the hazard is gone) or `staff` (resolved by staff while
    /// the sensor read normal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<&'static str>,
    pub location: String,
    pub message: Localized,
    pub advice: Localized,
    pub at: String,
}

fn kind_names(kind: AlertKind) -> (&'static str, &'static str) {
    match kind {
        AlertKind::Smoke => ("烟雾", "smoke"),
        AlertKind::Heat => ("高温", "heat"),
        AlertKind::Gas => ("燃气泄漏", "gas leak"),
        AlertKind::EbikeBattery => ("电动车电池", "e-bike battery"),
        AlertKind::WaterLeak => ("漏水", "water leak"),
        _ => ("警报", "alert"),
    }
}

/// Who ended a resolved alert for residents: the sensor, or staff.
fn cleared_by(alert: &Alert) -> &'static str {
    match alert.resolved_by.as_deref() {
        Some("auto") => "sensor",
        _ => "staff",
    }
}

/// The resident notice of an alert's current state.
pub fn notice(alert: &Alert) -> Notice {
    let clear = alert.state == AlertState::Resolved;
    let by = clear.then(|| cleared_by(alert));
    let (message, advice) = if let Some(by) = by {
        let (zh, en) = kind_names(alert.kind);
        let place = &alert.location.label;
        let message = if by == "staff" {
            Localized {
                zh_cn: format!("【解除】{place} 的{zh}警报已由值班人员处置解除。"),
                en: format!("[ALL CLEAR] The {en} alert at {place} was resolved by staff."),
            }
        } else {
            Localized {
                zh_cn: format!("【解除】{place} 的{zh}警报已解除。"),
                en: format!("[ALL CLEAR] The {en} alert at {place} is over."),
            }
        };
        (
            message,
            Localized {
                zh_cn: "险情已解除，可恢复正常活动。如仍闻到异味或看到烟雾，请立即拨打119。".into(),
                en: "The danger is over; you may resume normal activity. If you still smell gas or see smoke, call 119.".into(),
            },
        )
    } else {
        (alert.message.clone(), alert.advice.clone())
    };
    Notice {
        id: alert.continues.as_ref().unwrap_or(&alert.id).clone(),
        kind: alert.kind.as_str().to_owned(),
        level: alert.level.as_str().to_owned(),
        status: if clear { "all_clear" } else { "active" },
        cleared_by: by,
        location: alert.location.label.clone(),
        message,
        advice,
        at: crate::alerts::lifecycle::timestamp(alert.updated_at),
    }
}

/// Decides which events residents hear about: raise, a change of level, and a resolution
/// that ends the hazard (not a staff resolve while the sensor still reported it).
#[derive(Debug, Default)]
pub struct Filter {
    published: HashMap<String, String>,
}

impl Filter {
    pub fn should_publish(&mut self, alert: &Alert) -> bool {
        if !is_hazard(alert.kind) {
            return false;
        }
        let level = alert.level.as_str().to_owned();
        match alert.event {
            EventKind::Resolved => {
                self.published.remove(&alert.id).is_some() && !alert.still_reported
            }
            EventKind::Acknowledged => false,
            _ => self.published.insert(alert.id.clone(), level.clone()) != Some(level),
        }
    }
}

/// Publishes resident notices on the sensor broker (QoS 1) until the events channel closes.
pub fn spawn_publisher(
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    options: MqttOptions,
    events: broadcast::Receiver<Alert>,
    stages: &Stages,
) {
    // The receiver outlives a restart of the stage, so notices raised meanwhile wait in it.
    let events = Arc::new(tokio::sync::Mutex::new(events));
    let filter = Arc::new(std::sync::Mutex::new(Filter::default()));
    stages.supervise(
        Stage::Processing,
        "residents",
        Severity::Degraded,
        move |_token| {
            let (client, event_loop) = crate::broker::internal_client(&options, "residents");
            let (config, events, filter) = (config.clone(), events.clone(), filter.clone());
            async move {
                let mut events = events.lock_owned().await;
                publish_notices(config, client, event_loop, &mut events, &filter).await;
                Ok(())
            }
        },
    );
}

/// Publishes resident notices until the alert events channel closes.
async fn publish_notices(
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    client: AsyncClient,
    mut event_loop: rumqttc::EventLoop,
    events: &mut broadcast::Receiver<Alert>,
    filter: &std::sync::Mutex<Filter>,
) {
    let driver_token = tokio_util::sync::CancellationToken::new();
    let t = driver_token.clone();
    let driver = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = t.cancelled() => break,
                e = event_loop.poll() => if let Err(e) = e {
                    tracing::warn!(error = %e, "resident notices: broker connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    loop {
        let alert = match events.recv().await {
            Ok(a) => a,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "resident notices fell behind");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let publish = filter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .should_publish(&alert);
        if !publish {
            continue;
        }
        let Ok(payload) = serde_json::to_vec(&notice(&alert)) else {
            continue;
        };
        // The buildings and units in force (a reload may have changed them).
        let config = config.borrow().clone();
        for topic in topics(&config, &alert) {
            if let Err(e) = client
                .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                .await
            {
                tracing::warn!(topic, error = %e, "resident notice not published");
            }
        }
        crate::supervise::fault_point("residents").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    driver_token.cancel();
    let _ = driver.await;
    tracing::info!("resident notices stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Config {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../edge-config/examples/demo.toml"
        );
        edge_config::load(std::path::Path::new(path)).unwrap()
    }

    fn alert(
        kind: AlertKind,
        building: Option<&str>,
        unit: Option<&str>,
        area: Option<&str>,
    ) -> Alert {
        serde_json::from_value(serde_json::json!({
            "id": "01KAV7Q2XK4T5J0ZC3M8W6E1PB", "seq": 1, "event": "raised", "site": "s",
            "kind": kind, "level": "red", "state": "raised",
            "source": { "type": "device", "id": "d" },
            "location": { "building": building, "unit": unit, "area": area, "label": "L" },
            "raised_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z",
            "readings": {}, "message": { "zh-CN": "z", "en": "e" }, "advice": { "zh-CN": "z", "en": "e" }
        }))
        .unwrap()
    }

    #[test]
    fn a_gas_alert_goes_to_its_unit_and_its_whole_building() {
        let c = demo();
        let a = alert(AlertKind::Gas, Some("b2"), Some("u2"), None);
        assert_eq!(
            topics(&c, &a),
            ["residents/b2/u2/alerts", "residents/b2/all"]
        );
        assert!(concerns(&c, &a, "b2", "u1"));
        assert!(!concerns(&c, &a, "b1", "u2"));
    }

    #[test]
    fn a_charging_shed_fire_warns_the_configured_buildings() {
        let c = demo();
        let a = alert(AlertKind::EbikeBattery, None, None, Some("charging-shed"));
        assert_eq!(topics(&c, &a), ["residents/b1/all", "residents/b2/all"]);
    }

    #[test]
    fn a_water_leak_stays_in_its_unit_and_sos_is_never_published() {
        let c = demo();
        let leak = alert(AlertKind::WaterLeak, Some("b1"), Some("u1"), None);
        assert_eq!(topics(&c, &leak), ["residents/b1/u1/alerts"]);
        assert!(!concerns(&c, &leak, "b1", "u2"));
        assert!(topics(&c, &alert(AlertKind::Sos, Some("b1"), Some("u1"), None)).is_empty());
    }

    #[test]
    fn residents_hear_the_raise_a_level_change_and_the_all_clear_only() {
        let mut f = Filter::default();
        let mut a = alert(AlertKind::Gas, Some("b2"), Some("u2"), None);
        assert!(f.should_publish(&a));
        a.event = EventKind::Updated;
        assert!(!f.should_publish(&a));
        a.level = edge_config::Level::Orange;
        assert!(f.should_publish(&a));
        a.event = EventKind::Acknowledged;
        assert!(!f.should_publish(&a));
        a.event = EventKind::Resolved;
        a.state = AlertState::Resolved;
        assert!(f.should_publish(&a));
        let n = notice(&a);
        assert_eq!(n.status, "all_clear");
        assert!(n.message.zh_cn.contains("解除") && n.message.en.contains("ALL CLEAR"));
    }

    #[test]
    fn a_staff_resolve_while_the_sensor_still_reports_the_gas_is_no_all_clear_and_the_warning_continues(
    ) {
        let mut f = Filter::default();
        let first = alert(AlertKind::Gas, Some("b2"), Some("u2"), None);
        assert!(f.should_publish(&first));
        let mut resolved = first.clone();
        resolved.event = EventKind::Resolved;
        resolved.state = AlertState::Resolved;
        resolved.resolved_by = Some("duty".into());
        resolved.still_reported = true;
        assert!(
            !f.should_publish(&resolved),
            "no all-clear while the gas persists"
        );

        let mut next = alert(AlertKind::Gas, Some("b2"), Some("u2"), None);
        next.id = "01KAV7Q2XK4T5J0ZC3M8W6E1PC".into();
        next.continues = Some(first.id.clone());
        assert!(f.should_publish(&next));
        let n = notice(&next);
        assert_eq!((n.id.as_str(), n.status), (first.id.as_str(), "active"));

        next.event = EventKind::Resolved;
        next.state = AlertState::Resolved;
        next.resolved_by = Some("auto".into());
        assert!(f.should_publish(&next));
        let n = notice(&next);
        assert_eq!(
            (n.id.as_str(), n.status, n.cleared_by),
            (first.id.as_str(), "all_clear", Some("sensor"))
        );
    }

    #[test]
    fn a_staff_resolve_once_the_sensor_reads_normal_is_an_all_clear_by_staff() {
        let mut f = Filter::default();
        let mut a = alert(AlertKind::Smoke, Some("b2"), Some("u2"), None);
        assert!(f.should_publish(&a));
        a.event = EventKind::Resolved;
        a.state = AlertState::Resolved;
        a.resolved_by = Some("duty".into());
        assert!(f.should_publish(&a));
        let n = notice(&a);
        assert_eq!((n.status, n.cleared_by), ("all_clear", Some("staff")));
        assert!(
            n.message.en.contains("resolved by staff"),
            "{}",
            n.message.en
        );
        assert!(n.message.zh_cn.contains("值班人员"), "{}", n.message.zh_cn);
    }
}
