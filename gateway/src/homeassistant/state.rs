//! The state Home Assistant's entities read: the gateway's own judgement (is an alert
//! active for this device?) and the readings as ingest accepted them — never the raw
//! sensor topics.

use std::collections::HashMap;

use edge_config::{AlertKind, Config, DeviceKind};
use serde_json::{json, Value};

use crate::alerts::{Alert, Source};
use crate::ingest::board::Seen;

/// The active alerts, as the committed events say: alert id → its latest event.
#[derive(Debug, Default)]
pub struct AlertBook {
    active: HashMap<String, Alert>,
    /// Highest `seq` applied per alert id, so an older event (read from the store before
    /// the live feed caught up) never overrides a newer one.
    seen: HashMap<String, u64>,
}

impl AlertBook {
    /// Applies a committed event; returns whether it changed anything.
    pub fn apply(&mut self, alert: &Alert) -> bool {
        if self.seen.get(&alert.id).is_some_and(|&s| s >= alert.seq) {
            return false;
        }
        self.seen.insert(alert.id.clone(), alert.seq);
        if alert.state.is_active() {
            self.active.insert(alert.id.clone(), alert.clone());
        } else {
            self.active.remove(&alert.id);
        }
        true
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    fn of(&self, source: Source) -> impl Iterator<Item = &Alert> + '_ {
        self.active.values().filter(move |a| a.source == source)
    }

    /// The most severe active hazard alert of a device (its kind's own alert kind).
    pub fn hazard(&self, device: &str, kind: DeviceKind) -> Option<&Alert> {
        let source = Source::Device(device.to_owned());
        let hazard = hazard_kind(kind)?;
        let mut found: Vec<&Alert> = self.of(source).filter(|a| a.kind == hazard).collect();
        found.sort_by_key(|a| std::cmp::Reverse(a.level));
        found.into_iter().next()
    }

    /// Whether an active alert of `kind` exists for `source`.
    pub fn has(&self, source: &Source, kind: AlertKind) -> bool {
        self.of(source.clone()).any(|a| a.kind == kind)
    }

    /// Whether a `gateway_fault` alert is active.
    pub fn gateway_fault(&self) -> bool {
        self.active
            .values()
            .any(|a| a.kind == AlertKind::GatewayFault)
    }
}

/// The alert kind that means "this device's hazard".
pub fn hazard_kind(kind: DeviceKind) -> Option<AlertKind> {
    Some(match kind {
        DeviceKind::Smoke => AlertKind::Smoke,
        DeviceKind::Heat => AlertKind::Heat,
        DeviceKind::WaterLeak => AlertKind::WaterLeak,
        DeviceKind::Gas => AlertKind::Gas,
        DeviceKind::CarbonMonoxide => AlertKind::CarbonMonoxide,
        DeviceKind::EbikeBattery => AlertKind::EbikeBattery,
        DeviceKind::Sos => AlertKind::Sos,
        DeviceKind::SmartPlug => AlertKind::SmartPlug,
        DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker => return None,
    })
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

fn online(on: bool) -> &'static str {
    if on {
        "online"
    } else {
        "offline"
    }
}

/// A device's state JSON: `alarm` ON/OFF, `alert` (the active alert's id, kind and level,
/// `{}` when none), `available`, and the readings of its kind (`null` until first heard).
pub fn device_state(id: &str, kind: DeviceKind, seen: &Seen, book: &AlertBook) -> Value {
    let hazard = book.hazard(id, kind);
    let source = Source::Device(id.to_owned());
    let offline = book.has(&source, AlertKind::DeviceOffline) || seen.available == Some(false);
    let alert = hazard.map_or_else(
        || json!({}),
        |a| json!({ "alert_id": a.id, "kind": a.kind.as_str(), "level": a.level, "state": a.state }),
    );
    let v = &seen.values;
    let mut state = json!({
        "alarm": on_off(hazard.is_some()),
        "alert": alert,
        "available": online(!offline),
    });
    let readings: [(&str, Option<f64>); 10] = [
        ("battery", v.battery_pct),
        ("temperature", v.temperature_c),
        ("lel", v.gas_lel_pct),
        ("co", v.co_ppm),
        ("batterytemp", v.battery_temp_c),
        ("voltage", v.voltage_v),
        ("current", v.current_a),
        ("power", v.power_w),
        ("energy", v.energy_kwh),
        ("plugtemp", v.plug_temp_c),
    ];
    let wanted = super::discovery::measures(kind);
    if let Some(obj) = state.as_object_mut() {
        for (key, value) in readings {
            if wanted.iter().any(|m| m.key == key) {
                obj.insert(key.to_owned(), json!(value.filter(|x| x.is_finite())));
            }
        }
    }
    state
}

/// A camera's state JSON: counts of confirmed tracks in view (`null` while the camera is
/// not analysed) and `available` (offline while `camera_down` is active).
pub fn camera_state(id: &str, counts: Option<(u64, u64)>, book: &AlertBook) -> Value {
    let down = book.has(&Source::Camera(id.to_owned()), AlertKind::CameraDown);
    json!({
        "persons": counts.map(|c| c.0),
        "twowheelers": counts.map(|c| c.1),
        "available": online(counts.is_some() && !down),
    })
}

/// What the gateway's own entities read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayFigures {
    pub uplink_connected: bool,
    pub backlog: Option<u64>,
    pub faulted_stages: usize,
}

/// The gateway's state JSON: `uplink` ON/OFF, `backlog` (outbox rows), `alerts` (active),
/// `fault` ON while a stage is faulted or a `gateway_fault` alert is active.
pub fn gateway_state(figures: GatewayFigures, book: &AlertBook) -> Value {
    json!({
        "uplink": on_off(figures.uplink_connected),
        "backlog": figures.backlog,
        "alerts": book.active_count(),
        "fault": on_off(figures.faulted_stages > 0 || book.gateway_fault()),
    })
}

/// The device kinds of `config` by id (announced devices only).
pub fn announced_devices(config: &Config) -> Vec<(usize, String, DeviceKind)> {
    config
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| hazard_kind(d.kind).is_some())
        .map(|(i, d)| (i, d.id.clone(), d.kind))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(seq: u64, state: &str) -> Alert {
        serde_json::from_value(json!({
            "id": "01KAV7Q2XK4T5J0ZC3M8W6E1PB", "seq": seq, "event": state, "site": "s",
            "kind": "smoke", "level": "red", "state": state,
            "source": { "type": "device", "id": "d" }, "location": { "label": "L" },
            "raised_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z",
            "readings": {}, "message": { "zh-CN": "z", "en": "e" },
            "advice": { "zh-CN": "z", "en": "e" }
        }))
        .unwrap()
    }

    #[test]
    fn an_older_event_read_from_the_store_never_overrides_a_newer_one_from_the_feed() {
        let mut book = AlertBook::default();
        assert!(book.apply(&alert(5, "resolved")));
        assert!(!book.apply(&alert(4, "raised")), "older than what is known");
        assert!(book.hazard("d", DeviceKind::Smoke).is_none());
        assert!(book.apply(&alert(6, "raised")));
        let seen = Seen::default();
        let state = device_state("d", DeviceKind::Smoke, &seen, &book);
        assert_eq!(state["alarm"], "ON");
        assert_eq!(state["alert"]["level"], "red");
        assert_eq!(state["temperature"], Value::Null, "not heard yet");
        assert!(
            state.get("lel").is_none(),
            "a smoke detector has no gas reading"
        );
        assert_eq!(book.active_count(), 1);
    }
}
