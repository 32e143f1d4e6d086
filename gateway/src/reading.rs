//! What a sensor said, decoded: the neutral types between ingest (which makes them) and the
//! rules (which judge them), so that neither stage imports the other.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A decoded reading from one device, as the ingest stage hands it over.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Index of the device in `Config::devices`.
    pub device: usize,
    /// Gateway receive time (wall clock): what alerts are stamped and ordered with.
    pub at: DateTime<Utc>,
    /// Gateway receive time (monotonic): what durations are measured with.
    pub now: Instant,
    pub decoded: Decoded,
}

/// One decoded message's values. Every field is optional: a message carries what the
/// device measured. Units are in the names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Values {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    /// A heat detector's own alarm (zigbee2mqtt `heat`, `alarm`, or `smoke` on a heat
    /// detector): it trips by its own design (fixed or rate-of-rise), whatever temperature
    /// it reports, so it alarms even below the gateway's fixed threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gas_lel_pct: Option<f64>,
    /// Boolean gas alarm (zigbee2mqtt `gas`): counts as a high alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gas: Option<bool>,
    /// A CO alarm's own flag (zigbee2mqtt `carbon_monoxide`, `co_state: "alarm"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carbon_monoxide: Option<bool>,
    /// Carbon monoxide concentration, ppm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub co_ppm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub water_leak: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_low: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tamper: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_temp_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voltage_v: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_a: Option<f64>,
    /// A smart plug's load, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    /// A smart plug's energy meter, kWh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_kwh: Option<f64>,
    /// A smart plug's own temperature (zigbee2mqtt `device_temperature`), °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plug_temp_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressed: Option<bool>,
    /// Actuator state report, e.g. `closed`, `open`, `on`, `off`, `playing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linkquality: Option<f64>,
}

impl Values {
    /// Takes every field `newer` has; keeps the others.
    pub fn merge(&mut self, newer: &Values) {
        // Destructured without `..`: a new field fails to compile until it is merged too.
        macro_rules! take {
            ($($f:ident),*) => {
                let Values { $($f: _),* } = newer;
                $(
                    if newer.$f.is_some() {
                        self.$f.clone_from(&newer.$f);
                    }
                )*
            };
        }
        take!(
            smoke,
            temperature_c,
            heat,
            gas_lel_pct,
            gas,
            carbon_monoxide,
            co_ppm,
            water_leak,
            battery_pct,
            battery_low,
            tamper,
            battery_temp_c,
            voltage_v,
            current_a,
            power_w,
            energy_kwh,
            plug_temp_c,
            charging,
            present,
            pressed,
            state,
            linkquality
        );
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub values: Values,
    /// The sensor's own timestamp, if it sent one (native `ts`).
    pub sensor_ts: Option<DateTime<FixedOffset>>,
    /// `Some(false)` for an `offline` availability message.
    pub online: Option<bool>,
}

/// A message from a compound gateway to its street station (`[[compounds]]`): one of its
/// alert events, or its link's heartbeat. Ingest checks size and shape; the alert task
/// stores it (see `alerts::remote`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The compound's site id (from the topic, which only its login may publish on).
    pub compound: String,
    pub kind: RemoteKind,
    /// A JSON object.
    pub payload: Vec<u8>,
}

/// What a compound sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    /// `shouwang/{compound}/alerts`: one alert event, as its platform gets it.
    Alert,
    /// `shouwang/{compound}/heartbeat`: its station link is up.
    Heartbeat,
}
