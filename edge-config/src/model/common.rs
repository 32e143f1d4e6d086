//! Small types shared by several sections: alert levels, location
//! references, daily time windows, polygon points and secrets.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Alert level, from least to most severe (so `Level::Red > Level::Blue`).
///
/// Follows the Chinese four-colour warning scale: 蓝色 blue, 黄色 yellow,
/// 橙色 orange, 红色 red.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Informational (蓝色), e.g. a low battery.
    Blue,
    /// Needs attention (黄色), e.g. a device offline.
    Yellow,
    /// Serious (橙色), e.g. gas above the low alarm threshold.
    Orange,
    /// Danger to life (红色), e.g. smoke, fire, gas above the high threshold.
    Red,
}

impl Level {
    /// The lowercase English name, as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Blue => "blue",
            Level::Yellow => "yellow",
            Level::Orange => "orange",
            Level::Red => "red",
        }
    }

    /// The Chinese name, e.g. `红色`.
    pub fn zh(self) -> &'static str {
        match self {
            Level::Blue => "蓝色",
            Level::Yellow => "黄色",
            Level::Orange => "橙色",
            Level::Red => "红色",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of an alert, as raised by sensors, device health checks and
/// camera rules. Used by `[[rules.linkage]]` `on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Smoke detector in alarm.
    Smoke,
    /// Heat detector: fixed temperature or rate of rise.
    Heat,
    /// Water leak detected.
    WaterLeak,
    /// Combustible gas above a threshold.
    Gas,
    /// Carbon monoxide: the alarm's own flag or a concentration over the EN 50291-1
    /// alarm points.
    CarbonMonoxide,
    /// A smart plug in the charging shed: over-current, overheating, power with a rising
    /// temperature, charging past the limit.
    SmartPlug,
    /// E-bike battery over-temperature, fast rise, thermal runaway, etc.
    EbikeBattery,
    /// SOS / panic button pressed.
    Sos,
    /// A device missed its heartbeats.
    DeviceOffline,
    /// A device reports a low battery.
    BatteryLow,
    /// A device reports tampering.
    Tamper,
    /// An e-bike battery was removed from the charging shed at night (possible theft).
    BatteryRemoved,
    /// A camera stream stopped delivering frames.
    CameraDown,
    /// The outbox is over its disk quota with only alarms left to keep.
    BufferFull,
    /// A stage of the gateway itself stopped or stopped working (red when the alarm path is
    /// affected): the panel's *fault* signal.
    GatewayFault,
    /// A street station no longer hears one of its compounds (no heartbeat and no alert
    /// for `offline_after_s`): that compound's alarms may not be reaching the station.
    CompoundOffline,
    /// Camera: an e-bike entering a lobby or lift.
    EbikeEntry,
    /// Camera: too many people in a zone for too long.
    Crowd,
    /// Camera: a person in a zone during a guarded time window.
    Intrusion,
    /// Camera: a person staying in a zone for too long.
    Loitering,
}

impl AlertKind {
    /// Every kind, in declaration order.
    pub const ALL: [AlertKind; 19] = [
        AlertKind::Smoke,
        AlertKind::Heat,
        AlertKind::WaterLeak,
        AlertKind::Gas,
        AlertKind::CarbonMonoxide,
        AlertKind::SmartPlug,
        AlertKind::EbikeBattery,
        AlertKind::Sos,
        AlertKind::DeviceOffline,
        AlertKind::BatteryLow,
        AlertKind::Tamper,
        AlertKind::BatteryRemoved,
        AlertKind::CameraDown,
        AlertKind::BufferFull,
        AlertKind::GatewayFault,
        AlertKind::EbikeEntry,
        AlertKind::Crowd,
        AlertKind::Intrusion,
        AlertKind::Loitering,
    ];

    /// The name as written in the configuration, e.g. `water_leak`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Smoke => "smoke",
            AlertKind::Heat => "heat",
            AlertKind::WaterLeak => "water_leak",
            AlertKind::Gas => "gas",
            AlertKind::CarbonMonoxide => "carbon_monoxide",
            AlertKind::SmartPlug => "smart_plug",
            AlertKind::EbikeBattery => "ebike_battery",
            AlertKind::Sos => "sos",
            AlertKind::DeviceOffline => "device_offline",
            AlertKind::BatteryLow => "battery_low",
            AlertKind::Tamper => "tamper",
            AlertKind::BatteryRemoved => "battery_removed",
            AlertKind::CameraDown => "camera_down",
            AlertKind::BufferFull => "buffer_full",
            AlertKind::GatewayFault => "gateway_fault",
            AlertKind::CompoundOffline => "compound_offline",
            AlertKind::EbikeEntry => "ebike_entry",
            AlertKind::Crowd => "crowd",
            AlertKind::Intrusion => "intrusion",
            AlertKind::Loitering => "loitering",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a device or camera is: either inside a building
/// (`{ building = "b1", unit = "u1", floor = 12, room = "1201" }`, all but
/// `building` optional) or in a named area (`{ area = "b1-lobby" }`).
///
/// Exactly one of `building` and `area` must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationRef {
    /// Id of a `[[locations.buildings]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    /// Id of a unit (单元) of that building.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Floor number: 1 is the ground floor, -1 the first basement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<i32>,
    /// Free-form room or flat number, e.g. `"1201"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Id of a `[[locations.areas]]` (instead of `building`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<String>,
}

/// A time of day written `"HH:MM"` (24-hour clock), local to the site's
/// time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HhMm {
    /// 0..=23
    pub hour: u8,
    /// 0..=59
    pub minute: u8,
}

impl HhMm {
    /// Parse `"HH:MM"`; `None` unless hour is 0..=23 and minute 0..=59.
    pub fn parse(text: &str) -> Option<Self> {
        let (h, m) = text.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let hour: u8 = h.parse().ok()?;
        let minute: u8 = m.parse().ok()?;
        (hour < 24 && minute < 60).then_some(Self { hour, minute })
    }

    /// Minutes since midnight.
    pub fn minute_of_day(self) -> u16 {
        u16::from(self.hour) * 60 + u16::from(self.minute)
    }

    /// As a `chrono` time.
    pub fn to_naive_time(self) -> chrono::NaiveTime {
        chrono::NaiveTime::from_hms_opt(u32::from(self.hour), u32::from(self.minute), 0)
            .unwrap_or(chrono::NaiveTime::MIN)
    }
}

impl fmt::Display for HhMm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl Serialize for HhMm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HhMm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HhMm::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid time {text:?}: write a 24-hour time \"HH:MM\" such as \"22:00\""
            ))
        })
    }
}

/// A daily time window `{ from = "22:00", to = "06:00" }`; it may wrap past
/// midnight. `from == to` means the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// Start (inclusive), `"HH:MM"`.
    pub from: HhMm,
    /// End (exclusive), `"HH:MM"`.
    pub to: HhMm,
}

impl TimeWindow {
    /// Whether the local time `t` falls inside the window.
    pub fn contains(&self, t: chrono::NaiveTime) -> bool {
        use chrono::Timelike;
        let m = (t.hour() * 60 + t.minute()) as u16;
        let (from, to) = (self.from.minute_of_day(), self.to.minute_of_day());
        match from.cmp(&to) {
            std::cmp::Ordering::Less => from <= m && m < to,
            std::cmp::Ordering::Greater => m >= from || m < to,
            std::cmp::Ordering::Equal => true,
        }
    }
}

/// A point `[x, y]` of a polygon, normalised to the frame: 0.0 is the
/// left/top edge, 1.0 the right/bottom edge.
pub type Point = [f64; 2];

/// Serialize a secret as `"********"` so that showing the configuration
/// (e.g. on the console) never reveals it.
pub(crate) fn redact<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("********"),
        None => s.serialize_none(),
    }
}

/// Like [`redact`] for a required secret.
pub(crate) fn redact_required<S: Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("********")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_from_blue_to_red() {
        assert!(Level::Blue < Level::Yellow);
        assert!(Level::Yellow < Level::Orange);
        assert!(Level::Orange < Level::Red);
    }

    #[test]
    fn time_window_wraps_past_midnight() {
        let w = TimeWindow {
            from: HhMm::parse("22:00").unwrap(),
            to: HhMm::parse("06:00").unwrap(),
        };
        let at = |h, m| chrono::NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert!(w.contains(at(23, 30)));
        assert!(w.contains(at(5, 59)));
        assert!(!w.contains(at(6, 0)));
        assert!(!w.contains(at(12, 0)));
    }

    #[test]
    fn hh_mm_rejects_out_of_range_times() {
        assert_eq!(HhMm::parse("07:05").map(|t| t.minute_of_day()), Some(425));
        assert!(HhMm::parse("24:00").is_none());
        assert!(HhMm::parse("7:05").is_none());
        assert!(HhMm::parse("07:60").is_none());
    }
}
