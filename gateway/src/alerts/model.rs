//! The alert record: one JSON shape for the store, the console and the platform.

use chrono::{DateTime, Utc};
use edge_config::{AlertKind, Config, Level, LinkageAction, LocationRef};
use serde::{Deserialize, Serialize};

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Raised,
    Updated,
    Escalated,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn is_active(self) -> bool {
        self != AlertState::Resolved
    }
}

/// What changed in one event (each event is one outbox message upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Raised,
    Updated,
    Escalated,
    Acknowledged,
    Resolved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Raised => "raised",
            EventKind::Updated => "updated",
            EventKind::Escalated => "escalated",
            EventKind::Acknowledged => "acknowledged",
            EventKind::Resolved => "resolved",
        }
    }
}

/// What raised the alert.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Source {
    Device(String),
    Camera(String),
    /// The gateway itself (e.g. `buffer_full`).
    Gateway(String),
}

impl Source {
    /// `device:ID`, `camera:ID` or `gateway:ID`: the key of "one active alert per
    /// (source, kind)".
    pub fn key(&self) -> String {
        match self {
            Source::Device(id) => format!("device:{id}"),
            Source::Camera(id) => format!("camera:{id}"),
            Source::Gateway(id) => format!("gateway:{id}"),
        }
    }
}

/// The alert's place, with display names resolved from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<String>,
    /// Human-readable, e.g. `1号楼 2单元 12层 1201` or `充电棚`.
    pub label: String,
}

impl Location {
    /// Resolves a configuration location reference.
    pub fn resolve(config: &Config, r: &LocationRef) -> Location {
        let mut loc = Location {
            building: r.building.clone(),
            unit: r.unit.clone(),
            floor: r.floor,
            room: r.room.clone(),
            area: r.area.clone(),
            label: String::new(),
        };
        if let Some(area) = r.area.as_deref().and_then(|a| config.area(a)) {
            loc.building = loc.building.or_else(|| area.building.clone());
            loc.unit = loc.unit.or_else(|| area.unit.clone());
            loc.floor = loc.floor.or(area.floor);
        }
        loc.label = label(config, r);
        loc
    }
}

fn label(config: &Config, r: &LocationRef) -> String {
    let mut parts = Vec::new();
    if let Some(b) = r.building.as_deref() {
        let building = config.building(b);
        parts.push(building.map_or(b.to_owned(), |b| b.name.clone()));
        if let Some(u) = r.unit.as_deref() {
            let unit = building.and_then(|b| b.units.iter().find(|x| x.id == u));
            parts.push(unit.map_or(u.to_owned(), |u| u.name.clone()));
        }
    }
    if let Some(f) = r.floor {
        parts.push(format!("{f}F"));
    }
    if let Some(room) = r.room.as_deref() {
        parts.push(room.to_owned());
    }
    if let Some(a) = r.area.as_deref() {
        parts.push(config.area(a).map_or(a.to_owned(), |a| a.name.clone()));
    }
    parts.join(" ")
}

/// Text in the site's languages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Localized {
    #[serde(rename = "zh-CN")]
    pub zh_cn: String,
    pub en: String,
}

/// One action taken on actuators for this alert (linkage) and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub action: LinkageAction,
    pub target: String,
    #[serde(with = "time_ms")]
    pub sent_at: DateTime<Utc>,
    pub outcome: ActionOutcome,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time_ms::option"
    )]
    pub confirmed_at: Option<DateTime<Utc>>,
}

/// What became of a linkage action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// Sent; the actuator has not confirmed yet.
    Pending,
    /// The actuator's state report confirmed it.
    Confirmed,
    /// No confirmation within `rules.timing.actuator_confirm_s`.
    TimedOut,
}

/// Alert times in JSON: RFC 3339 with milliseconds, UTC (`2026-09-21T14:13:20.000Z`).
pub mod time_ms {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// The same for optional times.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] DateTime<Utc>);
            Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(t)| t))
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An alert, as stored, shown and sent upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id (ULID) for the alert's whole life.
    pub id: String,
    /// Sequence number of this alert's latest event; per site, strictly increasing, no gaps.
    pub seq: u64,
    /// What the latest event was.
    pub event: EventKind,
    pub site: String,
    pub kind: AlertKind,
    pub level: Level,
    pub state: AlertState,
    pub source: Source,
    pub location: Location,
    /// RFC 3339 with milliseconds in JSON ([`time_ms`]).
    #[serde(with = "time_ms")]
    pub raised_at: DateTime<Utc>,
    #[serde(with = "time_ms")]
    pub updated_at: DateTime<Utc>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time_ms::option"
    )]
    pub acknowledged_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time_ms::option"
    )]
    pub escalated_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time_ms::option"
    )]
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// When a rise in level cancelled an earlier acknowledgement (which covers only the
    /// level it was given at): escalation is measured from here instead of `raised_at`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time_ms::option"
    )]
    pub rearmed_at: Option<DateTime<Utc>>,
    /// On a staff resolve: the source still reported the condition at that moment. Residents
    /// are then not told all-clear, and a new alert (`continues` = this one) follows at once.
    #[serde(default, skip_serializing_if = "is_false")]
    pub still_reported: bool,
    /// The first alert of the same hazard that staff resolved while its source still reported
    /// it; residents see both as one notice (see [`crate::residents`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<String>,
    /// The evidence: causes and the source's latest values.
    pub readings: serde_json::Value,
    pub message: Localized,
    pub advice: Localized,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(raised_at: &str) -> serde_json::Value {
        serde_json::json!({
            "id": "01KAV7Q2XK4T5J0ZC3M8W6E1PB", "seq": 1, "event": "raised", "site": "s",
            "kind": "gas", "level": "red", "state": "raised",
            "source": { "type": "device", "id": "d" },
            "location": { "label": "L" },
            "raised_at": raised_at, "updated_at": "2026-01-01T00:00:00.000Z",
            "readings": {}, "message": { "zh-CN": "z", "en": "e" }, "advice": { "zh-CN": "z", "en": "e" },
            "actions": [{ "action": "close_valve", "target": "v", "sent_at": "2026-01-01T00:00:00.500Z",
                          "outcome": "timed_out" }]
        })
    }

    #[test]
    fn alert_times_and_actions_are_typed_and_keep_their_json_form() {
        let v = json("2026-01-01T08:00:00.250+08:00");
        let alert: Alert = serde_json::from_value(v).unwrap();
        assert_eq!(alert.raised_at.timestamp_millis(), 1_767_225_600_250);
        assert_eq!(alert.actions[0].action, LinkageAction::CloseValve);
        assert_eq!(alert.actions[0].outcome, ActionOutcome::TimedOut);
        let back = serde_json::to_value(&alert).unwrap();
        assert_eq!(
            back["raised_at"], "2026-01-01T00:00:00.250Z",
            "UTC, milliseconds"
        );
        assert_eq!(back["actions"][0]["sent_at"], "2026-01-01T00:00:00.500Z");
        assert_eq!(back["actions"][0]["outcome"], "timed_out");
        assert!(back.get("acknowledged_at").is_none());
    }

    #[test]
    fn a_malformed_time_is_an_error_not_an_alert_that_never_escalates() {
        let err = serde_json::from_value::<Alert>(json("yesterday")).unwrap_err();
        assert!(err.to_string().contains("premature end of input"), "{err}");
    }
}
